"""Image inputs: size and pixel limits, format sniffing, orientation, scaling, URL and address policy."""

from __future__ import annotations

import asyncio
import base64
import io
import ipaddress
import socket
import struct
import warnings
import zlib
from collections.abc import AsyncIterator

import httpx
import pytest
from PIL import Image, ImageDraw, ImageFont

from app.core.errors import APIError, InvalidRequest, PayloadTooLarge
from app.pipeline.media import (
    ImageLimits,
    NormalizedImage,
    UnsafeAddress,
    _host_allowed,
    check_public_address,
    normalize_image_url,
)
from app.profiles.glyphs import SIDE
from tests.support import inked_cells

LIMITS = ImageLimits(max_bytes=2_000_000, max_pixels=4_000_000, max_side=512)
PARAM = "messages[0].content[1].image_url.url"
PUBLIC_IP = "93.184.215.14"  # a literal public address: the fetch tests need no DNS


def encode(image: Image.Image, fmt: str, **save: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **save)
    return out.getvalue()


def data_url(raw: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(raw).decode()}"


def decode(result: NormalizedImage) -> Image.Image:
    header, _, payload = result.data_url.partition(",")
    image = Image.open(io.BytesIO(base64.b64decode(payload)))
    assert header == f"data:image/{image.format.lower()};base64"  # type: ignore[union-attr]
    return image


def png_header_only(width: int, height: int) -> bytes:
    """A valid-looking PNG that declares a huge canvas but carries almost no data (a bomb)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


async def refused(url: str, limits: ImageLimits = LIMITS, **kwargs: httpx.AsyncClient) -> APIError:
    with pytest.raises(APIError) as caught:
        await normalize_image_url(url, limits, param=PARAM, **kwargs)
    assert caught.value.param == PARAM
    return caught.value


# --- data URLs: accepted shapes ---------------------------------------------------------------


async def test_png_round_trips_as_png_with_its_size() -> None:
    source = Image.new("RGB", (40, 30), (10, 200, 30))
    result = await normalize_image_url(data_url(encode(source, "PNG")), LIMITS, param=PARAM)
    assert (result.width, result.height, result.format) == (40, 30, "PNG")
    image = decode(result)
    assert image.format == "PNG"
    assert image.getpixel((5, 5)) == (10, 200, 30)


def problem_image(ink: tuple[int, ...], paper: tuple[int, ...], mode: str = "RGB") -> Image.Image:
    """'345 x 67 = ?' (8 glyphs) drawn off-centre on a wide canvas."""
    image = Image.new(mode, (230, 90), paper)
    ImageDraw.Draw(image).text((37, 41), "345 x 67 = ?", fill=ink, font=ImageFont.load_default(size=22))
    return image


@pytest.mark.parametrize(
    ("ink", "paper", "mode", "fmt", "mime"),
    [
        ((0, 0, 0), (255, 255, 255), "RGB", "PNG", "image/png"),
        ((0, 0, 0), (255, 255, 255), "RGB", "JPEG", "image/jpeg"),
        ((250, 250, 250), (20, 20, 30), "RGB", "PNG", "image/png"),  # dark mode
        ((0, 0, 0, 255), (0, 0, 0, 0), "RGBA", "PNG", "image/png"),  # black ink on transparent black
    ],
)
async def test_glyph_grid_layout_draws_one_glyph_per_cell(
    ink: tuple[int, ...], paper: tuple[int, ...], mode: str, fmt: str, mime: str
) -> None:
    """A profile's `image_layout = "glyph-grid"` (app/profiles/glyphs.py): whatever the source's format,
    polarity or transparency, the engine gets a lossless square with glyph k in cell k."""
    raw = encode(problem_image(ink, paper, mode), fmt)
    result = await normalize_image_url(data_url(raw, mime), LIMITS, param=PARAM, layout="glyph-grid")
    image = decode(result)
    assert image.format == "PNG" and image.mode == "RGB"
    assert (result.width, result.height) == image.size == (SIDE, SIDE)
    assert inked_cells(image) == list(range(8))


async def test_as_is_layout_keeps_the_picture() -> None:
    result = await normalize_image_url(
        data_url(encode(problem_image((0, 0, 0), (255, 255, 255)), "PNG")), LIMITS, param=PARAM
    )
    assert decode(result).size == (230, 90)


async def test_glyph_grid_of_a_blank_image_is_blank() -> None:
    raw = encode(Image.new("RGB", (50, 40), "white"), "PNG")
    image = decode(await normalize_image_url(data_url(raw), LIMITS, param=PARAM, layout="glyph-grid"))
    assert image.size == (SIDE, SIDE) and inked_cells(image) == []


async def test_real_format_wins_over_declared_type() -> None:
    jpeg = encode(Image.new("RGB", (16, 16), "white"), "JPEG")
    result = await normalize_image_url(data_url(jpeg, "image/png"), LIMITS, param=PARAM)
    assert result.format == "JPEG"
    assert decode(result).format == "JPEG"


async def test_webp_is_accepted_and_reencoded_as_jpeg() -> None:
    webp = encode(Image.new("RGB", (20, 10), "red"), "WEBP")
    result = await normalize_image_url(data_url(webp, "image/webp"), LIMITS, param=PARAM)
    assert result.format == "WEBP"
    assert decode(result).format == "JPEG"


async def test_transparency_is_kept_as_png() -> None:
    source = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    webp = encode(source, "WEBP", lossless=True)
    image = decode(await normalize_image_url(data_url(webp, "image/webp"), LIMITS, param=PARAM))
    assert image.format == "PNG"
    assert image.mode == "RGBA"
    assert image.getpixel((0, 0))[3] == 0  # type: ignore[index]


async def test_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (10, 10), "red"), Image.new("RGB", (10, 10), "blue")]
    gif = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert Image.open(io.BytesIO(gif)).n_frames == 2  # type: ignore[attr-defined]
    image = decode(await normalize_image_url(data_url(gif, "image/gif"), LIMITS, param=PARAM))
    assert image.format == "PNG"
    assert image.convert("RGB").getpixel((5, 5)) == (255, 0, 0)


async def test_base64_wrapped_over_lines_is_accepted() -> None:
    encoded = base64.encodebytes(encode(Image.new("L", (30, 30), 128), "PNG")).decode()
    assert "\n" in encoded
    result = await normalize_image_url(f"data:image/png;base64,{encoded}", LIMITS, param=PARAM)
    assert result.width == 30


# --- orientation, scaling, metadata ---------------------------------------------------------------


async def test_exif_orientation_is_applied_and_metadata_stripped() -> None:
    # Stored 40×20: left half red, right half blue; orientation 6 means "rotate 90° clockwise to show".
    source = Image.new("RGB", (40, 20), "blue")
    source.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "SecretCam"
    jpeg = encode(source, "JPEG", exif=exif.tobytes(), quality=95)
    result = await normalize_image_url(data_url(jpeg, "image/jpeg"), LIMITS, param=PARAM)
    assert (result.width, result.height) == (20, 40)
    image = decode(result)
    top = image.getpixel((10, 5))
    bottom = image.getpixel((10, 35))
    assert isinstance(top, tuple) and isinstance(bottom, tuple)
    assert top[0] > 200 and top[2] < 60
    assert bottom[2] > 200 and bottom[0] < 60
    assert not image.getexif()
    assert "exif" not in image.info


async def test_large_png_is_downscaled_keeping_aspect() -> None:
    source = Image.new("RGB", (3000, 1000), "white")
    result = await normalize_image_url(data_url(encode(source, "PNG")), LIMITS, param=PARAM)
    assert (result.width, result.height) == (512, 171)
    assert decode(result).size == (512, 171)


async def test_large_jpeg_is_downscaled_exactly_despite_draft_decoding() -> None:
    source = Image.new("RGB", (1999, 1001), "gray")
    result = await normalize_image_url(data_url(encode(source, "JPEG"), "image/jpeg"), LIMITS, param=PARAM)
    assert (result.width, result.height) == (512, 256)


async def test_small_images_are_not_upscaled() -> None:
    result = await normalize_image_url(data_url(encode(Image.new("RGB", (3, 2)), "PNG")), LIMITS, param=PARAM)
    assert (result.width, result.height) == (3, 2)


# --- data URLs: refusals --------------------------------------------------------------------------


async def test_bad_base64_is_a_400_naming_the_field() -> None:
    error = await refused("data:image/png;base64,iVBOR!!!not base64***")
    assert isinstance(error, InvalidRequest)
    assert error.code == "invalid_image"
    assert "base64" in error.message


async def test_data_url_without_base64_is_refused() -> None:
    error = await refused("data:image/png,rawbytes")
    assert error.code == "invalid_image"


async def test_declared_type_outside_the_allowed_set_is_refused() -> None:
    bmp = encode(Image.new("RGB", (4, 4)), "BMP")
    error = await refused(data_url(bmp, "image/bmp"))
    assert error.code == "invalid_image"
    assert "image/bmp" in error.message


async def test_text_declared_as_png_is_refused() -> None:
    error = await refused(data_url(b"hello, I am definitely a picture\n" * 10))
    assert error.status == 400
    assert error.code == "invalid_image"


@pytest.mark.parametrize("fmt", ["BMP", "TIFF", "ICO"])
async def test_real_formats_outside_the_allowlist_are_refused(fmt: str) -> None:
    raw = encode(Image.new("RGB", (16, 16), "red"), fmt)
    error = await refused(data_url(raw, "image/png"))
    assert error.code == "invalid_image"


async def test_truncated_png_is_refused() -> None:
    raw = encode(Image.effect_noise((200, 200), 50).convert("RGB"), "PNG")
    error = await refused(data_url(raw[: len(raw) // 2]))
    assert error.code == "invalid_image"


async def test_too_many_bytes_is_413_before_decoding() -> None:
    limits = ImageLimits(max_bytes=1000, max_pixels=10**6, max_side=64)
    error = await refused("data:image/png;base64," + "A" * 2000, limits)
    assert isinstance(error, PayloadTooLarge)
    assert error.status == 413


async def test_byte_limit_is_exact() -> None:
    raw = encode(Image.effect_noise((64, 64), 80).convert("RGB"), "PNG")
    at_limit = ImageLimits(max_bytes=len(raw), max_pixels=10**6, max_side=64)
    assert (await normalize_image_url(data_url(raw), at_limit, param=PARAM)).width == 64
    one_under = ImageLimits(max_bytes=len(raw) - 1, max_pixels=10**6, max_side=64)
    assert isinstance(await refused(data_url(raw), one_under), PayloadTooLarge)


async def test_png_bomb_is_refused_from_its_header() -> None:
    bomb = png_header_only(30_000, 30_000)
    assert len(bomb) < 200
    error = await refused(data_url(bomb), ImageLimits(max_bytes=10**6, max_pixels=10**12, max_side=512))
    assert isinstance(error, PayloadTooLarge)


async def test_pixel_limit_uses_declared_dimensions() -> None:
    error = await refused(data_url(png_header_only(5000, 5000)))
    assert isinstance(error, PayloadTooLarge)
    assert "5000×5000" in error.message


async def test_pillow_bomb_warning_is_an_error_here_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1000 < 40×40 ≤ 2000: Pillow only warns
    raw = encode(Image.new("RGB", (40, 40)), "PNG")
    generous = ImageLimits(max_bytes=10**6, max_pixels=10**6, max_side=64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # as in production, where warnings are not errors
        filters_before = list(warnings.filters)
        error = await refused(data_url(raw), generous)
        assert warnings.filters == filters_before
    assert isinstance(error, PayloadTooLarge)


# --- URL policy ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://example.com/a.png",
        "gopher://x/",
        "javascript:alert(1)",
        "/etc/passwd",
        "",
    ],
)
async def test_other_schemes_are_refused(url: str) -> None:
    error = await refused(url, ImageLimits(1000, 1000, 10, allowlist=("example.com",)))
    assert error.code == "invalid_image_url"


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
    assert _host_allowed("IMAGES.example.com.", allow)
    assert _host_allowed("a.b.cdn.example", allow)
    assert not _host_allowed("cdn.example", allow)
    assert not _host_allowed("evilcdn.example", allow)
    assert not _host_allowed("images.example.com.evil.net", allow)


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
