"""Image inputs: validate, fetch (carefully) and re-encode `image_url` parts before the engine sees them.

Accepted:
- ``data:image/(png|jpeg|webp|gif);base64,…``. The declared type only has to be one of those; the
  real format is sniffed from the bytes (a JPEG sent as ``image/png`` is fine, a text file or a BMP
  is not). GIF and animated WebP: the first frame.
- ``http(s)://`` URLs only for hosts in ``ImageLimits.allowlist`` (exact, case-insensitive; an entry
  ``*.example.com`` also allows its subdomains). Every other scheme is refused.

Checks, in order, so that nothing expensive happens before the cheap refusals:
1. size: the base64 length, then the decoded (or downloaded) bytes, against ``max_bytes`` (413);
2. pixels: width × height from the header, before decoding, against ``max_pixels`` (413). Pillow's
   own decompression-bomb warning is turned into an error for this call only;
3. full decode in a worker thread; EXIF orientation applied; converted to RGB, or RGBA when the
   image has transparency; downscaled (LANCZOS, aspect kept) so the longest side ≤ ``max_side``;
4. for a model whose profile asks for it, redrawn in the glyph-grid layout (app/profiles/glyphs.py: one
   glyph per image token, 256 px square, always PNG);
5. re-encoded, which drops EXIF, ICC, text chunks and every other piece of metadata. PNG when the
   image has transparency or the source was PNG/GIF (screenshots, diagrams and handwritten digits
   suffer from JPEG artefacts); JPEG quality 90 otherwise.

Fetching, for allowlisted hosts: the host is resolved once (``getaddrinfo`` in a thread) and refused
if any address is private, loopback, link-local, multicast, reserved, unspecified or otherwise not
global, including IPv4 hidden in IPv6 (mapped, 6to4, Teredo, NAT64). The request then goes to that
checked address, with the original Host header and TLS server name, so a second DNS answer cannot
rebind it. Redirects are followed by hand, at most 3, and only within the same origin (scheme, host
and port). Environment proxies are ignored: a proxy would do its own resolution. The download is
streamed and aborted once it passes ``max_bytes``; the whole fetch shares one ``fetch_timeout_s``
deadline.

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
import ipaddress
import socket
import struct
import threading
import warnings
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx
from PIL import Image, ImageOps, UnidentifiedImageError

from app.core.errors import InvalidRequest, PayloadTooLarge
from app.profiles.glyphs import glyph_grid
from app.profiles.profile import ImageLayout

__all__ = [
    "ImageLimits",
    "NormalizedImage",
    "UnsafeAddress",
    "check_public_address",
    "normalize_image_url",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
_DECLARED_TYPES = frozenset({"image/png", "image/jpeg", "image/jpg", "image/webp", "image/gif"})
_LOSSLESS_SOURCES = frozenset({"PNG", "GIF"})
_JPEG_QUALITY = 90
_MAX_REDIRECTS = 3
_EXIF_ORIENTATION = 0x0112
_TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})  # the ones that swap width and height
_NAT64_PREFIX = ipaddress.ip_network("64:ff9b::/96")

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


class UnsafeAddress(ValueError):
    """A host resolved to an address the gateway must not connect to."""


async def normalize_image_url(
    url: str,
    limits: ImageLimits,
    *,
    param: str,
    client: httpx.AsyncClient | None = None,
    layout: ImageLayout = "as-is",
) -> NormalizedImage:
    """Validate one `image_url`, fetch it if it is remote, and return it re-encoded as a data URL
    (redrawn first in `layout`, the model profile's)."""
    url = url.strip()
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        raw = _decode_data_url(url, limits, param)
    elif scheme in ("http", "https"):
        raw = await _fetch(url, limits, param, client)
    else:
        raise InvalidRequest(
            "Image URLs must be data:image/...;base64 URLs or http(s) URLs of an allowed host.",
            param=param,
            code="invalid_image_url",
        )
    return await asyncio.to_thread(_reencode, raw, limits, param, layout)


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
        raise _too_many_bytes(param, limits)
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest(
            f"The image data is not valid base64: {exc}.", param=param, code="invalid_image"
        ) from exc
    if len(raw) > limits.max_bytes:
        raise _too_many_bytes(param, limits)
    return raw


def _too_many_bytes(param: str, limits: ImageLimits) -> PayloadTooLarge:
    return PayloadTooLarge(f"The image is larger than the limit of {limits.max_bytes} bytes.", param=param)


def _too_many_pixels(param: str, limits: ImageLimits, size: tuple[int, int] | None) -> PayloadTooLarge:
    declared = f" ({size[0]}×{size[1]})" if size else ""
    return PayloadTooLarge(
        f"The image{declared} has more than the limit of {limits.max_pixels} pixels.", param=param
    )


def _reencode(raw: bytes, limits: ImageLimits, param: str, layout: ImageLayout = "as-is") -> NormalizedImage:
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
        if layout == "glyph-grid":
            image = glyph_grid(image)[0]
        encoded = io.BytesIO()
        if image.mode == "RGBA" or source_format in _LOSSLESS_SOURCES or layout == "glyph-grid":
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


def check_public_address(host: str) -> list[IPAddress]:
    """Resolve `host` (blocking) and return its addresses, or raise UnsafeAddress if any is not public.

    Any bad address refuses the host: a name with both public and private answers is exactly
    what a rebinding attacker would publish.
    """
    host = host.strip("[]")
    try:
        addresses: list[IPAddress] = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise UnsafeAddress(f"cannot resolve {host!r}: {exc}") from exc
        addresses = []
        for info in infos:
            address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
            if address not in addresses:
                addresses.append(address)
    if not addresses:
        raise UnsafeAddress(f"{host!r} has no addresses")
    for address in addresses:
        if not _is_public(address):
            raise UnsafeAddress(f"{host!r} resolves to the non-public address {address}")
    return addresses


def _is_public(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            # The socket really talks IPv4 to the mapped address; ::ffff:0:0/96 itself is "private".
            return _is_public(address.ipv4_mapped)
        embedded = _embedded_ipv4(address)
        if embedded is not None and not _is_public(embedded):
            return False
    return not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or not address.is_global
    )


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address tunnels to, for the forms a router would honour."""
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64_PREFIX:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _host_allowed(host: str, allowlist: tuple[str, ...]) -> bool:
    host = host.lower().rstrip(".")
    for entry in allowlist:
        entry = entry.lower().rstrip(".")
        if host == entry or (entry.startswith("*.") and host.endswith(entry[1:])):
            return True
    return False


async def _fetch(url: str, limits: ImageLimits, param: str, client: httpx.AsyncClient | None) -> bytes:
    parsed = urlsplit(url)
    host = (parsed.hostname or "").lower()
    if not host or not _host_allowed(host, limits.allowlist):
        raise InvalidRequest(
            "Image URLs from this host are not allowed; send the image as a base64 data URL.",
            param=param,
            code="image_url_not_allowed",
        )
    try:
        addresses = await asyncio.to_thread(check_public_address, host)
    except UnsafeAddress as exc:
        raise InvalidRequest(
            f"The image host is not allowed: {exc}.", param=param, code="image_url_not_allowed"
        ) from exc
    owned = client is None
    if client is None:
        client = httpx.AsyncClient(trust_env=False)
    try:
        async with asyncio.timeout(limits.fetch_timeout_s):
            return await _download(url, host, addresses[0], limits, param, client)
    except TimeoutError as exc:
        raise InvalidRequest(
            f"Fetching the image took longer than {limits.fetch_timeout_s:g} s.",
            param=param,
            code="image_fetch_failed",
        ) from exc
    except httpx.HTTPError as exc:
        raise InvalidRequest(
            f"Fetching the image failed: {type(exc).__name__}.", param=param, code="image_fetch_failed"
        ) from exc
    finally:
        if owned:
            await client.aclose()


async def _download(
    url: str, host: str, address: IPAddress, limits: ImageLimits, param: str, client: httpx.AsyncClient
) -> bytes:
    for _ in range(_MAX_REDIRECTS + 1):
        target = httpx.URL(url)
        pinned = target.copy_with(host=str(address))
        bracketed = f"[{host}]" if ":" in host else host
        host_header = bracketed if target.port is None else f"{bracketed}:{target.port}"
        async with client.stream(
            "GET",
            pinned,
            headers={"Host": host_header, "Accept": "image/*"},
            extensions={"sni_hostname": host},
            follow_redirects=False,
            timeout=limits.fetch_timeout_s,
        ) as response:
            if response.is_redirect:
                url = _same_host_redirect(url, host, response, param)
                continue
            if response.status_code != 200:
                raise InvalidRequest(
                    f"Fetching the image returned HTTP {response.status_code}.",
                    param=param,
                    code="image_fetch_failed",
                )
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > limits.max_bytes:
                raise _too_many_bytes(param, limits)
            body = bytearray()
            async for piece in response.aiter_bytes():
                body += piece
                if len(body) > limits.max_bytes:
                    raise _too_many_bytes(param, limits)
            return bytes(body)
    raise InvalidRequest(
        f"The image URL redirected more than {_MAX_REDIRECTS} times.", param=param, code="image_fetch_failed"
    )


def _origin(url: str) -> tuple[str, str, int | None] | None:
    """(scheme, host, port) with the scheme's default port filled in; None for a malformed URL."""
    parsed = urlsplit(url)
    scheme = parsed.scheme.lower()
    try:
        port = parsed.port
    except ValueError:
        return None
    return scheme, (parsed.hostname or "").lower(), port or {"http": 80, "https": 443}.get(scheme)


def _same_host_redirect(url: str, host: str, response: httpx.Response, param: str) -> str:
    """The redirect's target, if it stays within the origin (scheme, host and port) that was checked.

    The allowlist and the address check are about one host, but the same host on another port is
    another service (an admin panel, a metadata proxy), and another scheme another port or a downgrade.
    """
    location = str(response.headers.get("Location", ""))
    following = urljoin(url, location)
    target = _origin(following)
    if target is None or target[0] not in ("http", "https") or target != _origin(url) or target[1] != host:
        raise InvalidRequest(
            "The image URL redirected to another origin (scheme, host or port), "
            "which the gateway does not follow.",
            param=param,
            code="image_url_not_allowed",
        )
    return following
