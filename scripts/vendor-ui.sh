#!/usr/bin/env bash
# Re-fetches the web UI's third-party libraries into app/ui/vendor/ at the pinned versions below,
# with `npm pack` (the npm registry only; no Node build, nothing runs from the packages).
# The files are committed: `thinkgate serve` never needs npm. Run this only to change a version,
# then update app/ui/vendor/README.md and check the UI (pytest -m browser tests/test_ui_browser.py).
set -euo pipefail
cd "$(dirname "$0")/.."

MARKED=marked@18.2.1
DOMPURIFY=dompurify@3.5.0
KATEX=katex@0.19.1
# highlight.js's own npm package ships CommonJS under es/; the cdn-assets package of the same
# release has a real ES-module build of the core plus its "common" languages.
HIGHLIGHT=@highlightjs/cdn-assets@11.12.0

VENDOR=app/ui/vendor
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# unpack SPEC DIR: npm pack SPEC into $work and unpack it into $work/DIR/package.
unpack() {
    local spec=$1 dir=$2 tarball
    tarball=$(cd "$work" && npm pack --silent "$spec" | tail -n 1)
    mkdir -p "$work/$dir"
    tar -xzf "$work/$tarball" -C "$work/$dir"
}

unpack "$MARKED" marked
unpack "$DOMPURIFY" dompurify
unpack "$KATEX" katex
unpack "$HIGHLIGHT" highlight

rm -rf "$VENDOR/marked" "$VENDOR/dompurify" "$VENDOR/katex" "$VENDOR/highlight"
mkdir -p "$VENDOR/marked" "$VENDOR/dompurify" "$VENDOR/katex/fonts" "$VENDOR/highlight"

cp "$work/marked/package/lib/marked.esm.js" "$work/marked/package/LICENSE" "$VENDOR/marked/"

cp "$work/dompurify/package/dist/purify.es.mjs" "$work/dompurify/package/LICENSE" \
    "$work/dompurify/package/LICENSE-MPL" "$VENDOR/dompurify/"

cp "$work/katex/package/dist/katex.mjs" "$work/katex/package/dist/katex.min.css" \
    "$work/katex/package/LICENSE" "$VENDOR/katex/"
# Every browser the UI supports takes woff2, the first source in KaTeX's @font-face rules.
cp "$work/katex/package/dist/fonts/"*.woff2 "$VENDOR/katex/fonts/"

cp "$work/highlight/package/es/highlight.min.js" "$work/highlight/package/LICENSE" \
    "$work/highlight/package/styles/github.min.css" "$work/highlight/package/styles/github-dark.min.css" \
    "$VENDOR/highlight/"

echo "vendored into $VENDOR:"
find "$VENDOR" -type f ! -name README.md | sort
