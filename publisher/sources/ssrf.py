"""Keep remote sources on the public internet: no loopback, private, link-local or otherwise internal address.

Two layers, both needed:

* :func:`check_url` before every request and every redirect hop: the scheme is http(s), the host resolves,
  and *every* address it resolves to is public. It gives the clear error message.
* :func:`guarded_pool_classes`: urllib3 connection classes that resolve the host themselves, check every
  address again and connect to exactly the addresses they checked. A DNS answer that changes between the
  check and the connect (DNS rebinding) can therefore not smuggle in an internal address: the socket is
  opened to the checked IP, while TLS (SNI and certificate) and the Host header still use the name.

``allow_private=True`` (config ``[ingest].allow_private_addresses``) turns the address check off; the scheme
check stays.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any
from urllib.parse import urlsplit

from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # well-known NAT64 prefix: the last 32 bits are an IPv4 address
_V4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated IPv4-compatible IPv6 (::a.b.c.d)
_CATEGORIES = (
    ("is_unspecified", "unspecified"),
    ("is_loopback", "loopback"),
    ("is_link_local", "link-local"),
    ("is_multicast", "multicast"),
    ("is_reserved", "reserved"),
    ("is_private", "private"),
)
ALLOW_HINT = "set [ingest].allow_private_addresses = true only if internal sources are intended"


class UnsafeURLError(ValueError):
    """The URL must not be fetched: wrong scheme, no host, or an address that is not public."""


def blocked_reason(ip: IPAddress | str) -> str | None:
    """Why a remote source may not connect to ``ip`` (e.g. "loopback"), or None when it is a public address."""
    if isinstance(ip, str):
        ip = ipaddress.ip_address(ip)
    if isinstance(ip, ipaddress.IPv6Address):
        embedded: list[tuple[str, ipaddress.IPv4Address]] = []
        if ip.ipv4_mapped is not None:
            embedded.append(("IPv4-mapped", ip.ipv4_mapped))
        if ip.sixtofour is not None:
            embedded.append(("6to4", ip.sixtofour))
        if ip.teredo is not None:
            embedded.extend((("Teredo server", ip.teredo[0]), ("Teredo client", ip.teredo[1])))
        if ip in _NAT64:
            embedded.append(("NAT64", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)))
        if ip in _V4_COMPATIBLE and int(ip) > 1:
            embedded.append(("IPv4-compatible", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)))
        for label, v4 in embedded:
            inner = blocked_reason(v4)
            if inner:
                return f"{label} {inner}"
        if ip.ipv4_mapped is not None:
            return None  # judged by the IPv4 address it stands for
    for attr, label in _CATEGORIES:
        if getattr(ip, attr):
            return label
    if not ip.is_global:  # shared address space 100.64/10, benchmarking, documentation ...
        return "non-public"
    return None


def resolve(host: str, port: int, allow_private: bool) -> list[tuple[Any, ...]]:
    """getaddrinfo for a TCP connection; with ``allow_private`` False every address must be public."""
    host = host.strip("[]").rstrip(".") or host
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UnsafeURLError(f"cannot resolve host {host!r}: {exc.strerror or exc}") from None
    except UnicodeError:
        raise UnsafeURLError(f"invalid host name {host!r}") from None
    if not infos:
        raise UnsafeURLError(f"host {host!r} resolves to no address")
    if not allow_private:
        for info in infos:
            address = str(info[4][0])
            try:
                reason = blocked_reason(address.split("%", 1)[0])
            except ValueError:
                reason = "unparseable"
            if reason:
                shown = host if host == address else f"{host!r} resolves to {address}, which"
                raise UnsafeURLError(f"{shown} is a {reason} address; remote sources may only reach public addresses ({ALLOW_HINT})")
    return infos


def check_url(url: str, allow_private: bool) -> None:
    """Raise :class:`UnsafeURLError` unless ``url`` is http(s) with a host whose every address is public.

    Resolution goes through the system resolver (socket.getaddrinfo), so every spelling of an address
    (``127.1``, ``2130706433``, ``[::ffff:7f00:1]``, a name pointing at 10.0.0.5) is judged by what it resolves to.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeURLError(f"invalid URL {url!r}: {exc}") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise UnsafeURLError(f"only http and https URLs can be fetched, not {parts.scheme or 'a relative URL'!r}")
    if not parts.hostname:
        raise UnsafeURLError(f"URL {url!r} has no host")
    if not allow_private:
        resolve(parts.hostname, port or (443 if parts.scheme.lower() == "https" else 80), allow_private)


class _Guarded:
    """Mixin for urllib3's connections: resolve, check every address, connect to a checked address."""

    allow_private = False
    # from urllib3's HTTPConnection
    _dns_host: str
    port: int
    timeout: Any
    source_address: Any
    socket_options: Any

    def _new_conn(self) -> socket.socket:
        try:
            infos = resolve(self._dns_host, self.port, self.allow_private)
        except UnsafeURLError as exc:
            if "cannot resolve" in str(exc):
                raise NameResolutionError(self._dns_host, self, socket.gaierror(str(exc))) from None  # type: ignore[arg-type]
            raise
        error: OSError | None = None
        for family, socktype, proto, _name, sockaddr in infos:
            sock = None
            try:
                sock = socket.socket(family, socktype, proto)
                for opt in self.socket_options or ():
                    sock.setsockopt(*opt)
                if isinstance(self.timeout, (int, float)):
                    sock.settimeout(self.timeout)
                if self.source_address:
                    sock.bind(self.source_address)
                sock.connect(sockaddr)  # the address just checked: no second lookup
                return sock
            except TimeoutError as exc:
                error = exc
            except OSError as exc:
                error = exc
            if sock is not None:
                sock.close()
        if isinstance(error, TimeoutError):
            raise ConnectTimeoutError(self, f"Connection to {self._dns_host} timed out. (connect timeout={self.timeout})") from error
        raise NewConnectionError(self, f"Failed to establish a new connection: {error}") from error  # type: ignore[arg-type]


def guarded_pool_classes(allow_private: bool) -> dict[str, type]:
    """``{"http": pool class, "https": pool class}`` for ``PoolManager.pool_classes_by_scheme``."""
    http_conn = type("GuardedHTTPConnection", (_Guarded, HTTPConnection), {"allow_private": allow_private})
    https_conn = type("GuardedHTTPSConnection", (_Guarded, HTTPSConnection), {"allow_private": allow_private})
    return {
        "http": type("GuardedHTTPConnectionPool", (HTTPConnectionPool,), {"ConnectionCls": http_conn}),
        "https": type("GuardedHTTPSConnectionPool", (HTTPSConnectionPool,), {"ConnectionCls": https_conn}),
    }
