"""The bundled web UI's files, checked without a browser: no inline scripts or handlers, every
file the page and its modules load exists, vendored libraries keep their licences, and the CSP
the gateway sends forbids inline code and other hosts."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

UI = Path(__file__).resolve().parents[2] / "app" / "ui"
VENDOR = UI / "vendor"

# `import ... from "./x.js"`, `import "./x.js"`, `export ... from "./x.js"`, `import("./x.js")`.
IMPORT_RE = re.compile(r"""(?:\bfrom\s*|\bimport\s*\(?\s*)["'](\.{1,2}/[^"']+)["']""")


class PageScan(HTMLParser):
    """Collects what index.html loads and anything inline that a strict CSP would block."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.inline_scripts = 0
        self.module_scripts: list[str] = []
        self.handlers: list[str] = []
        self.style_attrs: list[str] = []
        self.style_elements = 0
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.handlers += [f"<{tag} {name}>" for name, _ in attrs if name.startswith("on")]
        if "style" in a:
            self.style_attrs.append(tag)
        if tag == "script":
            self._in_script = True
            if a.get("src"):
                self.refs.append(a["src"] or "")
                if a.get("type") == "module":
                    self.module_scripts.append(a["src"] or "")
            else:
                self.inline_scripts += 1
        elif tag == "style":
            self.style_elements += 1
        elif tag == "link" and a.get("href"):
            self.refs.append(a["href"] or "")
        elif tag in ("img", "source") and a.get("src"):
            self.refs.append(a["src"] or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False


@pytest.fixture(scope="module")
def page() -> PageScan:
    scan = PageScan()
    scan.feed((UI / "index.html").read_text(encoding="utf-8"))
    return scan


def local_path(ref: str, base: Path) -> Path:
    assert not re.match(r"^[a-z]+:|^//", ref), f"{ref} points to another host"
    return (base / ref.split("?")[0].split("#")[0]).resolve()


def test_page_has_no_inline_code(page: PageScan) -> None:
    assert page.inline_scripts == 0
    assert page.handlers == []
    assert page.style_attrs == []
    assert page.style_elements == 0


def test_every_file_the_page_loads_exists(page: PageScan) -> None:
    assert any("vendor/" in ref for ref in page.refs)
    for ref in page.refs:
        assert local_path(ref, UI).is_file(), f"index.html loads {ref}, which is missing"


def test_every_module_import_resolves(page: PageScan) -> None:
    """Walks the ES-module graph from the page's entry points (vendored libraries included)."""
    todo = [local_path(ref, UI) for ref in page.module_scripts]
    assert todo, "index.html has no module entry point"
    seen: set[Path] = set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        assert module.is_file(), f"missing module {module.relative_to(UI)}"
        for spec in IMPORT_RE.findall(module.read_text(encoding="utf-8")):
            todo.append(local_path(spec, module.parent))
    vendored = {p.relative_to(VENDOR).parts[0] for p in seen if VENDOR in p.parents}
    assert vendored == {"marked", "dompurify", "katex", "highlight"}


def test_katex_fonts_referenced_by_its_css_exist() -> None:
    css = (VENDOR / "katex" / "katex.min.css").read_text(encoding="utf-8")
    fonts = set(re.findall(r"url\((fonts/[^)]+\.woff2)\)", css))
    assert fonts
    for font in fonts:
        assert (VENDOR / "katex" / font).is_file(), font


def test_vendored_libraries_keep_licences_and_pinned_versions() -> None:
    script = (UI.parents[1] / "scripts" / "vendor-ui.sh").read_text(encoding="utf-8")
    readme = (VENDOR / "README.md").read_text(encoding="utf-8")
    for name in ("marked", "dompurify", "katex", "highlight"):
        assert (VENDOR / name / "LICENSE").is_file(), f"{name} has no LICENSE"
    for package, version in re.findall(r"=(@?[\w.\-/]+)@(\d+\.\d+\.\d+)", script):
        assert f"| {version} |" in readme, f"vendor README does not list {package} {version}"


def test_csp_forbids_inline_code_and_other_hosts() -> None:
    csp = (UI / "csp.txt").read_text(encoding="utf-8").strip()
    assert "\n" not in csp
    directives = {d.split()[0]: d.split()[1:] for d in csp.split(";") if d.strip()}
    assert directives["default-src"] == ["'none'"]
    assert directives["script-src"] == ["'self'"]
    assert directives["connect-src"] == ["'self'"]
    for name, sources in directives.items():
        assert "'unsafe-inline'" not in sources and "'unsafe-eval'" not in sources, name
        assert all(s.startswith("'") or s in ("data:", "blob:") for s in sources), f"{name} allows a host"


def test_modules_build_no_html_with_handlers_or_styles() -> None:
    """The views build DOM with calls, never HTML strings carrying handlers or style attributes."""
    for module in (UI / "js").rglob("*.js"):
        text = module.read_text(encoding="utf-8")
        assert not re.search(r"""\son[a-z]+\s*=\s*["']""", text), f"inline handler markup in {module.name}"
        assert not re.search(r"""style\s*=\s*\\?["']""", text), f"style attribute markup in {module.name}"
        assert "eval(" not in text and "new Function" not in text, module.name


def test_gateway_serves_the_page_with_the_csp() -> None:
    """The real application (its lifespan not started: no engine or database needed) serves
    index.html and the modules at relative paths, with the policy from csp.txt."""
    from fastapi.testclient import TestClient

    from app.api.app import create_app
    from app.core.config import Settings

    settings = Settings(upstreams=["http://127.0.0.1:9"], database_url="sqlite+aiosqlite:///:memory:")
    client = TestClient(create_app(settings))
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == (UI / "csp.txt").read_text(encoding="utf-8").strip()
    scan = PageScan()
    scan.feed(page.text)
    assert scan.inline_scripts == 0 and scan.handlers == []
    for ref in scan.refs:
        asset = client.get("/" + ref.removeprefix("./"))
        assert asset.status_code == 200, ref
    module = client.get("/js/app.js")
    assert module.headers["content-type"].split(";")[0] in ("text/javascript", "application/javascript")
