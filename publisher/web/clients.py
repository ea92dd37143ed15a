"""Who is asking: the client's address (X-Forwarded-For believed only from [web].trusted_proxies) and its network.

Rate limits are keyed by network, not by address: one machine on IPv6 holds a whole /64, and an IPv4 abuser usually
has neighbours in the same /24. Without a trusted proxy in front, the connecting peer is the client and the header,
which anyone can send, is ignored.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(entries: Iterable[str]) -> tuple[IPNetwork, ...]:
    """[web].trusted_proxies as networks (a bare address is its own /32 or /128). Checked when the config loads."""
    return tuple(ipaddress.ip_network(e.strip(), strict=False) for e in entries)


def _address(text: str) -> IPAddress | None:
    """An address as proxies write it: bare, 'a.b.c.d:port' or '[v6]:port'; None when it is not one."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    return addr.ipv4_mapped or addr if isinstance(addr, ipaddress.IPv6Address) else addr


def _trusted(addr: IPAddress, trusted: Sequence[IPNetwork]) -> bool:
    return any(addr.version == net.version and addr in net for net in trusted)


def client_address(peer: str | None, forwarded_for: Sequence[str], trusted: Sequence[IPNetwork]) -> str:
    """The peer, unless it is a trusted proxy: then X-Forwarded-For read right to left, the first hop not trusted.

    A hop that is not an address stops the walk (nothing left of it can be believed): the last trusted hop is the client.
    """
    addr = _address(peer or "")
    if addr is None:
        return (peer or "unknown")[:60]
    if not _trusted(addr, trusted):
        return str(addr)
    hops = [hop for value in forwarded_for for hop in value.split(",") if hop.strip()]
    for hop in reversed(hops):
        parsed = _address(hop)
        if parsed is None:
            break
        addr = parsed
        if not _trusted(addr, trusted):
            break
    return str(addr)


def network_of(address: str) -> str:
    """The rate-limit key for a client: its IPv4 /24 or IPv6 /64 ('203.0.113.0/24'); a non-IP peer stands alone."""
    addr = _address(address)
    if addr is None:
        return f"host:{address[:60]}"
    prefix = 24 if addr.version == 4 else 64
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))


def peer_is_trusted(peer: str | None, trusted: Sequence[IPNetwork]) -> bool:
    addr = _address(peer or "")
    return addr is not None and _trusted(addr, trusted)
