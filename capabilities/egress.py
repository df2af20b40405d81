"""Where a URL from an API caller may make the server connect: hosts on an allow-list, and only
over public addresses, checked as each connection opens.

A host checked once (when a batch is submitted) can resolve elsewhere by the time the server
connects (DNS rebinding, or a record changed in between), so `PublicAddressTransport` resolves
the name itself on every request, refuses if any address is loopback, private, link-local or
otherwise not globally routable, and connects to the address it checked: no second lookup is
left for an attacker to answer differently.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
DEFAULT_PORTS = {"http": 80, "https": 443}


class EgressRefusedError(httpx.TransportError):
    """The destination is not one the server may connect to for a caller; retrying cannot help."""


def ascii_host(url: httpx.URL) -> str:
    """The host of `url` as names compare: lower case, IDNA-encoded, no trailing dot."""
    return url.raw_host.decode("ascii").rstrip(".")


class HostAllowList:
    """Host names a caller's URL may name: exact names, or `*.example.com` for every subdomain
    of example.com (not example.com itself)."""

    def __init__(self, patterns: Sequence[str]) -> None:
        names = [(p.startswith("*."), _host_name(p.removeprefix("*."))) for p in patterns]
        self._exact = frozenset(name for wildcard, name in names if not wildcard)
        self._suffixes = tuple(f".{name}" for wildcard, name in names if wildcard)

    def allows(self, url: httpx.URL) -> bool:
        host = ascii_host(url)
        return host in self._exact or host.endswith(self._suffixes)


def _host_name(pattern: str) -> str:
    try:
        url = httpx.URL(f"http://{pattern.strip()}")
    except httpx.InvalidURL:
        url = None
    if url is None or not url.host or ":" in pattern or url.raw_path != b"/":
        raise ValueError(f"{pattern!r} is not a host name (no scheme, port or path)")
    return ascii_host(url)


def is_public(address: IPAddress) -> bool:
    """True for an address routable on the internet: not loopback, private (RFC 1918, unique
    local), link-local (169.254/16, which holds cloud metadata services), shared (100.64/10),
    reserved, unspecified or multicast. An IPv4-mapped IPv6 address is judged as its IPv4."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


async def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to, through the system resolver, without blocking the loop."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class PublicAddressTransport(httpx.AsyncBaseTransport):
    """An httpx transport that connects only to public addresses, resolved as it connects.

    Each request resolves its host, is refused with `EgressRefusedError` if any address is not
    public, and goes to the first checked address; TLS still verifies the certificate against the
    host name (sent as SNI), and the Host header keeps the name. Connections are not kept alive,
    so every request is checked anew and none opened for one name carries another's request."""

    def __init__(self, resolver: Resolver | None = None) -> None:
        self._resolver = resolver or resolve
        self._transport = httpx.AsyncHTTPTransport(
            limits=httpx.Limits(max_keepalive_connections=0), trust_env=False
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        host = ascii_host(request.url)
        port = request.url.port or DEFAULT_PORTS[request.url.scheme]
        address = await self._checked_address(host, port)
        # The Host header was set from the URL when the request was built, so it keeps the name.
        request.url = request.url.copy_with(host=address)
        request.extensions = {**request.extensions, "sni_hostname": host}
        return await self._transport.handle_async_request(request)

    async def _checked_address(self, host: str, port: int) -> str:
        try:
            addresses = [ipaddress.ip_address(host)]
        except ValueError:
            try:
                addresses = [ipaddress.ip_address(a) for a in await self._resolver(host, port)]
            except OSError as error:
                raise httpx.ConnectError(f"cannot resolve {host}: {error}") from None
        blocked = sorted(str(address) for address in addresses if not is_public(address))
        if blocked or not addresses:
            raise EgressRefusedError(
                f"{host} resolves to {blocked or 'no address'}, which is not a public address"
            )
        return str(addresses[0])

    async def aclose(self) -> None:
        await self._transport.aclose()
