#!/usr/bin/env bash
# Installs the API clients the tests drive as real programs (tests/clients/*/: Claude Code, ...):
# `npm ci` in every folder there with a package-lock.json, skipped when its node_modules already
# matches the lock. Without npm it says so and does nothing (those tests then skip; CI has npm).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
if ! command -v npm >/dev/null 2>&1; then
    echo "npm not found: the tests that drive npm clients (tests/clients/) will be skipped" >&2
    exit 0
fi
for lock in "$root"/tests/clients/*/package-lock.json; do
    [ -e "$lock" ] || continue
    dir="$(dirname "$lock")"
    installed="$dir/node_modules/.package-lock.json"
    if [ -e "$installed" ] && [ "$installed" -nt "$lock" ]; then
        continue
    fi
    printf '\n==> [%s] npm ci in %s\n' "$(date +%H:%M:%S)" "${dir#"$root"/}"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
done
