"""Image inputs: size and pixel limits, format sniffing, orientation, scaling, URL and address policy."""

from __future__ import annotations

import base64
import io
import struct
import warnings
import zlib

import httpx
import pytest
from PIL import Image, ImageDraw, ImageFont

from app.core.errors import APIError, InvalidRequest, PayloadTooLarge
from app.pipeline.media import ImageLimits, NormalizedImage, normalize_image_url
from app.profiles.thinkgate_arith import IMAGE_SIDE
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
    """A profile's `image_layout = "glyph-grid"` (app/profiles/thinkgate_arith.py): whatever the
    source's format, polarity or transparency, the engine gets a lossless square with glyph k in cell k."""
    raw = encode(problem_image(ink, paper, mode), fmt)
    result = await normalize_image_url(data_url(raw, mime), LIMITS, param=PARAM, layout="glyph-grid")
    image = decode(result)
    assert image.format == "PNG" and image.mode == "RGB"
    assert (result.width, result.height) == image.size == (IMAGE_SIDE, IMAGE_SIDE)
    assert inked_cells(image) == list(range(8))


async def test_as_is_layout_keeps_the_picture() -> None:
    result = await normalize_image_url(
        data_url(encode(problem_image((0, 0, 0), (255, 255, 255)), "PNG")), LIMITS, param=PARAM
    )
    assert decode(result).size == (230, 90)


async def test_glyph_grid_of_a_blank_image_is_blank() -> None:
    raw = encode(Image.new("RGB", (50, 40), "white"), "PNG")
    image = decode(await normalize_image_url(data_url(raw), LIMITS, param=PARAM, layout="glyph-grid"))
    assert image.size == (IMAGE_SIDE, IMAGE_SIDE) and inked_cells(image) == []


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
