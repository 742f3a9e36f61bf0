"""Fetching an image URL of an allowlisted host without letting the URL reach anything else (SSRF).

``http(s)://`` URLs are fetched only for hosts in the allowlist (exact, case-insensitive; an entry
``*.example.com`` also allows its subdomains). The host is resolved once (``getaddrinfo`` in a thread)
and refused if any address is private, loopback, link-local, multicast, reserved, unspecified or
otherwise not global, including IPv4 hidden in IPv6 (mapped, 6to4, Teredo, NAT64). The request then
goes to that checked address, with the original Host header and TLS server name, so a second DNS
answer cannot rebind it. Redirects are followed by hand, at most 3, and only within the same origin
(scheme, host and port). Environment proxies are ignored: a proxy would do its own resolution. The
download is streamed and aborted once it passes ``max_bytes``; the whole fetch shares one deadline.

Errors name the request field in ``param``: 400 ``image_url_not_allowed`` (host or address refused,
redirect to another origin), 400 ``image_fetch_failed`` (network, HTTP status, timeout), 413
``payload_too_large``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urljoin, urlsplit

import httpx

from app.core.errors import InvalidRequest, PayloadTooLarge

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_MAX_REDIRECTS = 3
_NAT64_PREFIX = ipaddress.ip_network("64:ff9b::/96")


class UnsafeAddress(ValueError):
    """A host resolved to an address the gateway must not connect to."""


def too_many_bytes(param: str, max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The image is larger than the limit of {max_bytes} bytes.", param=param)


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


def host_allowed(host: str, allowlist: tuple[str, ...]) -> bool:
    host = host.lower().rstrip(".")
    for entry in allowlist:
        entry = entry.lower().rstrip(".")
        if host == entry or (entry.startswith("*.") and host.endswith(entry[1:])):
            return True
    return False


async def fetch_image(
    url: str,
    *,
    param: str,
    max_bytes: int,
    allowlist: tuple[str, ...],
    timeout_s: float,
    client: httpx.AsyncClient | None = None,
) -> bytes:
    """The bytes at `url`, an http(s) URL, if its host is allowlisted and public (see above)."""
    parsed = urlsplit(url)
    host = (parsed.hostname or "").lower()
    if not host or not host_allowed(host, allowlist):
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
        async with asyncio.timeout(timeout_s):
            return await _download(url, host, addresses[0], param, max_bytes, timeout_s, client)
    except TimeoutError as exc:
        raise InvalidRequest(
            f"Fetching the image took longer than {timeout_s:g} s.",
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
    url: str,
    host: str,
    address: IPAddress,
    param: str,
    max_bytes: int,
    timeout_s: float,
    client: httpx.AsyncClient,
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
            timeout=timeout_s,
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
            if declared.isdigit() and int(declared) > max_bytes:
                raise too_many_bytes(param, max_bytes)
            body = bytearray()
            async for piece in response.aiter_bytes():
                body += piece
                if len(body) > max_bytes:
                    raise too_many_bytes(param, max_bytes)
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
