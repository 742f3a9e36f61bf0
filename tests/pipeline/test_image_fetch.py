"""Image URLs: the host allowlist, the address policy (no private, loopback or tunnelled addresses),
pinned connections, same-origin redirects, byte limits and the fetch deadline."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import AsyncIterator

import httpx
import pytest
from PIL import Image

from app.core.errors import PayloadTooLarge
from app.pipeline.image_fetch import UnsafeAddress, check_public_address, host_allowed
from app.pipeline.media import ImageLimits, normalize_image_url
from tests.pipeline.test_media import PARAM, PUBLIC_IP, encode, refused


async def test_http_url_of_a_host_not_in_the_allowlist_is_refused() -> None:
    error = await refused(
        "https://evil.example/cat.png", ImageLimits(1000, 1000, 10, allowlist=("good.example",))
    )
    assert error.code == "image_url_not_allowed"


async def test_allowlisted_host_resolving_to_loopback_is_refused() -> None:
    limits = ImageLimits(1000, 1000, 10, allowlist=("localhost", "127.0.0.1"))
    for url in ("http://localhost:8000/x.png", "http://127.0.0.1/x.png"):
        error = await refused(url, limits)
        assert error.code == "image_url_not_allowed"
        assert "non-public" in error.message


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # carrier-grade NAT
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "::1",
        "[::1]",
        "::",
        "fe80::1",
        "fc00::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "2002:7f00:1::",  # 6to4 around 127.0.0.1
        "2001:0:4136:e378:8000:63bf:f5ff:fffe",  # Teredo around 10.0.0.1
        "64:ff9b::a00:1",  # NAT64 around 10.0.0.1
        "localhost",
    ],
)
def test_non_public_addresses_are_refused(host: str) -> None:
    with pytest.raises(UnsafeAddress):
        check_public_address(host)


@pytest.mark.parametrize("host", ["93.184.215.14", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_pass(host: str) -> None:
    assert check_public_address(host) == [ipaddress.ip_address(host)]


def test_allowlist_matches_exact_hosts_and_wildcard_subdomains() -> None:
    allow = ("images.example.com", "*.cdn.example")
    assert host_allowed("IMAGES.example.com.", allow)
    assert host_allowed("a.b.cdn.example", allow)
    assert not host_allowed("cdn.example", allow)
    assert not host_allowed("evilcdn.example", allow)
    assert not host_allowed("images.example.com.evil.net", allow)


# --- fetching (httpx.MockTransport stands in for the network, which tests cannot reach) ---------------


FETCH_LIMITS = ImageLimits(max_bytes=50_000, max_pixels=10**6, max_side=64, allowlist=(PUBLIC_IP,))
PNG_BYTES = encode(Image.new("RGB", (100, 50), "green"), "PNG")


def client_for(handler: httpx.MockTransport) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=handler)


async def test_fetch_connects_to_the_checked_address_and_normalizes() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=PNG_BYTES, headers={"Content-Type": "text/plain"})

    async with client_for(httpx.MockTransport(handler)) as client:
        result = await normalize_image_url(
            f"http://{PUBLIC_IP}:8080/a.png", FETCH_LIMITS, param=PARAM, client=client
        )
    assert (result.width, result.height, result.format) == (64, 32, "PNG")
    assert [str(r.url) for r in seen] == [f"http://{PUBLIC_IP}:8080/a.png"]
    assert seen[0].headers["Host"] == f"{PUBLIC_IP}:8080"


async def test_fetch_aborts_once_the_stream_passes_the_byte_limit() -> None:
    produced = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal produced
        for _ in range(10_000):
            produced += 1
            yield b"\x00" * 1000

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=endless())  # no Content-Length: must count while reading

    async with client_for(httpx.MockTransport(handler)) as client:
        error = await refused(f"http://{PUBLIC_IP}/big.png", FETCH_LIMITS, client=client)
    assert isinstance(error, PayloadTooLarge)
    assert produced <= FETCH_LIMITS.max_bytes // 1000 + 2


async def test_fetch_refuses_a_declared_oversize_body_without_reading_it() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"x" * 60_000)

    async with client_for(httpx.MockTransport(handler)) as client:
        assert isinstance(
            await refused(f"https://{PUBLIC_IP}/a.png", FETCH_LIMITS, client=client), PayloadTooLarge
        )


async def test_redirect_to_another_host_is_refused() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(302, headers={"Location": "http://169.254.169.254/latest/meta-data"})

    async with client_for(httpx.MockTransport(handler)) as client:
        error = await refused(f"http://{PUBLIC_IP}/a.png", FETCH_LIMITS, client=client)
    assert error.code == "image_url_not_allowed"
    assert seen == [f"http://{PUBLIC_IP}/a.png"]


async def test_same_host_redirects_are_followed_up_to_three() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        step = int(request.url.params.get("step", "0"))
        if step < 3:
            return httpx.Response(301, headers={"Location": f"/img?step={step + 1}"})
        return httpx.Response(200, content=PNG_BYTES)

    async with client_for(httpx.MockTransport(handler)) as client:
        result = await normalize_image_url(
            f"http://{PUBLIC_IP}/img", FETCH_LIMITS, param=PARAM, client=client
        )
    assert result.format == "PNG"


async def test_a_fourth_redirect_is_refused() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(307, headers={"Location": "/again"})

    async with client_for(httpx.MockTransport(handler)) as client:
        error = await refused(f"http://{PUBLIC_IP}/img", FETCH_LIMITS, client=client)
    assert error.code == "image_fetch_failed"


async def test_http_error_status_is_reported() -> None:
    async with client_for(httpx.MockTransport(lambda request: httpx.Response(404))) as client:
        error = await refused(f"http://{PUBLIC_IP}/missing.png", FETCH_LIMITS, client=client)
    assert error.code == "image_fetch_failed"
    assert "404" in error.message


async def test_slow_server_hits_the_fetch_deadline() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)
        return httpx.Response(200, content=PNG_BYTES)

    limits = ImageLimits(50_000, 10**6, 64, allowlist=(PUBLIC_IP,), fetch_timeout_s=0.05)
    async with client_for(httpx.MockTransport(handler)) as client:
        error = await refused(f"http://{PUBLIC_IP}/slow.png", limits, client=client)
    assert error.code == "image_fetch_failed"


async def test_fetched_non_image_is_refused() -> None:
    async with client_for(httpx.MockTransport(lambda request: httpx.Response(200, text="<html>"))) as client:
        error = await refused(f"http://{PUBLIC_IP}/page", FETCH_LIMITS, client=client)
    assert error.code == "invalid_image"


# DNS cannot be reached from the tests, so a stand-in resolver answers for made-up names.
def fake_resolver(answers: dict[str, list[str]]) -> object:
    def getaddrinfo(host: str, *args: object, **kwargs: object) -> list[tuple[object, ...]]:
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, 0))
            for a in answers[host]
        ]

    return getaddrinfo


async def test_named_host_is_fetched_from_its_checked_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", fake_resolver({"img.example.com": [PUBLIC_IP]}))
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=PNG_BYTES)

    limits = ImageLimits(50_000, 10**6, 64, allowlist=("img.example.com",))
    async with client_for(httpx.MockTransport(handler)) as client:
        result = await normalize_image_url(
            "https://img.example.com/a.png?x=1", limits, param=PARAM, client=client
        )
    assert result.format == "PNG"
    assert str(seen[0].url) == f"https://{PUBLIC_IP}/a.png?x=1"
    assert seen[0].headers["Host"] == "img.example.com"
    assert seen[0].extensions["sni_hostname"] == "img.example.com"


async def test_named_host_with_any_private_answer_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", fake_resolver({"img.example.com": [PUBLIC_IP, "10.0.0.7"]}))
    limits = ImageLimits(50_000, 10**6, 64, allowlist=("img.example.com",))
    error = await refused("https://img.example.com/a.png", limits)
    assert error.code == "image_url_not_allowed"
    assert "10.0.0.7" in error.message


async def test_unresolvable_host_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", fake_resolver({}))
    limits = ImageLimits(50_000, 10**6, 64, allowlist=("img.example.com",))
    error = await refused("https://img.example.com/a.png", limits)
    assert error.code == "image_url_not_allowed"
    assert "cannot resolve" in error.message
