"""Item 11: an image URL may redirect only within its own origin (scheme, host and port).

The allowlisted, public host is checked before the fetch; a redirect to the same host on another
port (an admin panel, the engine, a metadata service behind a port-forward) or to another scheme
would reach a service the allowlist never named. The network is replaced by httpx.MockTransport, as
in tests/test_media.py: the gateway refuses non-public addresses, so a real fetch needs a public host.
"""

from __future__ import annotations

import io
import socket

import httpx
import pytest
from PIL import Image

from app.core.errors import APIError
from app.pipeline.media import ImageLimits, NormalizedImage, normalize_image_url

PUBLIC_IP = "93.184.215.14"
LIMITS = ImageLimits(
    max_bytes=50_000, max_pixels=10**6, max_side=64, allowlist=(PUBLIC_IP, "img.example.com")
)
PARAM = "messages[0].content[0].image_url.url"


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(out, format="PNG")
    return out.getvalue()


async def fetch(start: str, location: str) -> tuple[list[str], NormalizedImage | APIError]:
    """Fetch `start`, which redirects once to `location`; the URLs asked for, and the outcome."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.url.scheme}://{request.headers['Host']}{request.url.raw_path.decode()}")
        if len(seen) == 1:
            return httpx.Response(302, headers={"Location": location})
        return httpx.Response(200, content=png())

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        try:
            result: NormalizedImage | APIError = await normalize_image_url(
                start, LIMITS, param=PARAM, client=client
            )
        except APIError as exc:
            result = exc
    return seen, result


@pytest.mark.parametrize(
    ("start", "location"),
    [
        (f"http://{PUBLIC_IP}/a.png", f"http://{PUBLIC_IP}:8080/admin"),  # another port
        (f"http://{PUBLIC_IP}:8080/a.png", f"http://{PUBLIC_IP}/a.png"),  # back to the default port
        (f"https://{PUBLIC_IP}/a.png", f"http://{PUBLIC_IP}/a.png"),  # a TLS downgrade
        (f"http://{PUBLIC_IP}/a.png", f"https://{PUBLIC_IP}/a.png"),  # another scheme (port 443)
        (f"http://{PUBLIC_IP}/a.png", f"//{PUBLIC_IP}:22/"),  # scheme-relative, another port
        ("https://img.example.com/a.png", "https://img.example.com:8443/a.png"),
    ],
)
async def test_a_redirect_that_changes_the_origin_is_refused(
    start: str, location: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _resolve_img_example(monkeypatch)
    seen, result = await fetch(start, location)
    assert isinstance(result, APIError), result
    assert result.code == "image_url_not_allowed" and result.param == PARAM
    assert len(seen) == 1  # the second origin is never contacted


@pytest.mark.parametrize(
    ("start", "location"),
    [
        (f"http://{PUBLIC_IP}/a.png", "/b.png"),
        (f"http://{PUBLIC_IP}/a.png", f"http://{PUBLIC_IP}:80/b.png"),  # the default port, spelt out
        (f"https://{PUBLIC_IP}:443/a.png", f"https://{PUBLIC_IP}/b.png"),
        (f"http://{PUBLIC_IP}:8080/a.png", f"HTTP://{PUBLIC_IP}:8080/b.png"),
        ("https://img.example.com/a.png", "https://IMG.example.com/b.png"),
    ],
)
async def test_a_redirect_within_the_origin_is_followed(
    start: str, location: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _resolve_img_example(monkeypatch)
    seen, result = await fetch(start, location)
    assert not isinstance(result, APIError), result
    assert len(seen) == 2 and seen[1].endswith("/b.png")


def _resolve_img_example(monkeypatch: pytest.MonkeyPatch) -> None:
    """DNS cannot be reached from the tests: img.example.com resolves to the public address."""

    def resolver(host: str, *args: object, **kwargs: object) -> list[tuple[object, ...]]:
        if host != "img.example.com":
            raise socket.gaierror(socket.EAI_NONAME, "unknown")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (PUBLIC_IP, 0))]

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
