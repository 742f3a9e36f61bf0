"""Image inputs: validate, fetch (carefully) and re-encode `image_url` parts before the engine sees them.

Accepted:
- ``data:image/(png|jpeg|webp|gif);base64,…``. The declared type only has to be one of those; the
  real format is sniffed from the bytes (a JPEG sent as ``image/png`` is fine, a text file or a BMP
  is not). GIF and animated WebP: the first frame.
- ``http(s)://`` URLs only for hosts in ``ImageLimits.allowlist``, fetched so that the URL cannot
  reach anything else (app/pipeline/image_fetch.py). Every other scheme is refused.

Checks, in order, so that nothing expensive happens before the cheap refusals:
1. size: the base64 length, then the decoded (or downloaded) bytes, against ``max_bytes`` (413);
2. pixels: width × height from the header, before decoding, against ``max_pixels`` (413). Pillow's
   own decompression-bomb warning is turned into an error for this call only;
3. full decode in a worker thread; EXIF orientation applied; converted to RGB, or RGBA when the
   image has transparency; downscaled (LANCZOS, aspect kept) so the longest side ≤ ``max_side``;
4. for a model whose profile names an image layout, redrawn by that layout's registered step
   (app/profiles/steps.py; the bundled model's glyph grid: app/profiles/thinkgate_arith.py), then
   always PNG;
5. re-encoded, which drops EXIF, ICC, text chunks and every other piece of metadata. PNG when the
   image has transparency or the source was PNG/GIF (screenshots, diagrams and handwritten digits
   suffer from JPEG artefacts); JPEG quality 90 otherwise.

Errors name the request field in ``param``: 400 ``invalid_image`` (unreadable, not an allowed
format, bad base64), 400 ``image_url_not_allowed`` (host or address refused, redirect to another origin),
400 ``invalid_image_url`` (scheme), 400 ``image_fetch_failed`` (network, HTTP status, timeout),
413 ``payload_too_large`` (bytes or pixels).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import struct
import threading
import warnings
from dataclasses import dataclass

import httpx
from PIL import Image, ImageOps, UnidentifiedImageError

from app.core.errors import InvalidRequest, PayloadTooLarge
from app.pipeline.image_fetch import fetch_image, too_many_bytes
from app.profiles.steps import AS_IS, ImageStep, image_step

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
_DECLARED_TYPES = frozenset({"image/png", "image/jpeg", "image/jpg", "image/webp", "image/gif"})
_LOSSLESS_SOURCES = frozenset({"PNG", "GIF"})
_JPEG_QUALITY = 90
_EXIF_ORIENTATION = 0x0112
_TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})  # the ones that swap width and height

# Pillow reports malformed input through many exception types, not one hierarchy.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError, struct.error)

# `warnings.catch_warnings` swaps process-wide state; serialising the header read keeps concurrent
# decodes from restoring each other's filters. Only the cheap header parse runs under it.
_header_lock = threading.Lock()


@dataclass(frozen=True)
class ImageLimits:
    """What one image may cost; built from the settings."""

    max_bytes: int
    max_pixels: int
    max_side: int
    allowlist: tuple[str, ...] = ()
    fetch_timeout_s: float = 10.0


@dataclass(frozen=True)
class NormalizedImage:
    """A re-encoded image ready for the engine; width and height are the final (oriented, scaled) ones."""

    data_url: str
    width: int
    height: int
    format: str  # what the source really was: "PNG", "JPEG", "WEBP" or "GIF"


async def normalize_image_url(
    url: str,
    limits: ImageLimits,
    *,
    param: str,
    client: httpx.AsyncClient | None = None,
    layout: str = AS_IS,
) -> NormalizedImage:
    """Validate one `image_url`, fetch it if it is remote, and return it re-encoded as a data URL
    (redrawn first in `layout`, the model profile's)."""
    redraw = image_step(layout)
    url = url.strip()
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        raw = _decode_data_url(url, limits, param)
    elif scheme in ("http", "https"):
        raw = await fetch_image(
            url,
            param=param,
            max_bytes=limits.max_bytes,
            allowlist=limits.allowlist,
            timeout_s=limits.fetch_timeout_s,
            client=client,
        )
    else:
        raise InvalidRequest(
            "Image URLs must be data:image/...;base64 URLs or http(s) URLs of an allowed host.",
            param=param,
            code="invalid_image_url",
        )
    return await asyncio.to_thread(_reencode, raw, limits, param, redraw)


def _decode_data_url(url: str, limits: ImageLimits, param: str) -> bytes:
    header, sep, payload = url.partition(",")
    parts = [part.strip().lower() for part in header[len("data:") :].split(";")]
    if not sep or "base64" not in parts[1:]:
        raise InvalidRequest("Image data URLs must be base64-encoded.", param=param, code="invalid_image")
    if parts[0] not in _DECLARED_TYPES:
        raise InvalidRequest(
            f"Unsupported image type {parts[0]!r}; use PNG, JPEG, WebP or GIF.",
            param=param,
            code="invalid_image",
        )
    payload = "".join(payload.split())  # some clients wrap base64 at 76 columns
    # Refuse before decoding: 4 base64 characters carry 3 bytes.
    if len(payload) > (limits.max_bytes + 2) // 3 * 4:
        raise too_many_bytes(param, limits.max_bytes)
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest(
            f"The image data is not valid base64: {exc}.", param=param, code="invalid_image"
        ) from exc
    if len(raw) > limits.max_bytes:
        raise too_many_bytes(param, limits.max_bytes)
    return raw


def _too_many_pixels(param: str, limits: ImageLimits, size: tuple[int, int] | None) -> PayloadTooLarge:
    declared = f" ({size[0]}×{size[1]})" if size else ""
    return PayloadTooLarge(
        f"The image{declared} has more than the limit of {limits.max_pixels} pixels.", param=param
    )


def _reencode(raw: bytes, limits: ImageLimits, param: str, redraw: ImageStep | None) -> NormalizedImage:
    """Decode, orient, convert, downscale and re-encode; runs in a worker thread."""
    image = _open_checked(raw, limits, param)
    source_format = str(image.format)
    try:
        # The final size comes from the header's size, not the decoded one: draft decoding below
        # rounds up, and must not change the result by a pixel.
        width, height = image.size
        if image.getexif().get(_EXIF_ORIENTATION, 1) in _TRANSPOSING_ORIENTATIONS:
            width, height = height, width
        target = _fitted_size(width, height, limits.max_side)
        if source_format == "JPEG" and target != (width, height):
            # libjpeg can decode at 1/2, 1/4 or 1/8 scale: far less CPU when we shrink anyway.
            image.draft("RGB", (image.width * target[0] // width + 1, image.height * target[1] // height + 1))
        image.load()
        image = ImageOps.exif_transpose(image)
        image = image.convert("RGBA" if image.has_transparency_data else "RGB")
        if image.size != target:
            image = image.resize(target, Image.Resampling.LANCZOS)
        if redraw is not None:
            image = redraw(image)
        encoded = io.BytesIO()
        if image.mode == "RGBA" or source_format in _LOSSLESS_SOURCES or redraw is not None:
            image.save(encoded, format="PNG")
            mime = "image/png"
        else:
            image.save(encoded, format="JPEG", quality=_JPEG_QUALITY)
            mime = "image/jpeg"
    except Image.DecompressionBombError as exc:
        raise _too_many_pixels(param, limits, None) from exc
    except _DECODE_ERRORS as exc:
        raise InvalidRequest(
            f"The image could not be decoded: {exc}.", param=param, code="invalid_image"
        ) from exc
    data_url = f"data:{mime};base64,{base64.b64encode(encoded.getvalue()).decode('ascii')}"
    return NormalizedImage(data_url=data_url, width=image.width, height=image.height, format=source_format)


def _open_checked(raw: bytes, limits: ImageLimits, param: str) -> Image.Image:
    """Parse only the header, and refuse anything that is not an allowed format or has too many pixels."""
    try:
        with _header_lock, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw), formats=ALLOWED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _too_many_pixels(param, limits, None) from exc
    except UnidentifiedImageError as exc:
        raise InvalidRequest(
            "The image is not a PNG, JPEG, WebP or GIF file.", param=param, code="invalid_image"
        ) from exc
    except _DECODE_ERRORS as exc:
        raise InvalidRequest(
            f"The image could not be read: {exc}.", param=param, code="invalid_image"
        ) from exc
    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidRequest("The image has no pixels.", param=param, code="invalid_image")
    if width * height > limits.max_pixels:
        raise _too_many_pixels(param, limits, image.size)
    return image


def _fitted_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """The size with the longest side at most `max_side`, aspect ratio kept; never upscaled."""
    longest = max(width, height)
    if longest <= max_side:
        return width, height
    scale = max_side / longest
    return max(1, round(width * scale)), max(1, round(height * scale))
