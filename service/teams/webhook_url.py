"""Which URLs a team may name as its webhook.

A webhook makes the control worker POST wherever a team says, from inside the deployment: a URL
naming a loopback, private, link-local or otherwise non-public address could reach services that
only the deployment can (a cloud metadata endpoint, a database's HTTP port, caddie's own API).
Such URLs are refused unless CADDIE_WEBHOOK_ALLOW_PRIVATE is on. The check runs when the URL is
set and again at every send. At a send the host is resolved once (``pin``): every address is
checked and the connection goes to a checked one, with the original name in the Host header and
the TLS SNI, so a name whose answer changes between the check and the connect (DNS rebinding)
cannot lead the POST inside.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

MAX_URL_CHARS = 2000
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Sequence[str]]


class BadWebhookUrl(ValueError):
    """Why a URL cannot be a webhook (the message is shown to the team admin)."""


def resolve(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to (every family)."""
    return sorted({str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)})


def is_public(address: IPAddress) -> bool:
    """Routable on the public internet: not loopback, private, link-local, shared, reserved or multicast."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def check_url(url: str, *, allow_private: bool, resolver: Resolver = resolve) -> str:
    """``url`` stripped, if it may be a webhook; else BadWebhookUrl saying why.

    http or https only, a host, no user:password part (it would be sent on every POST and shown
    in logs). Unless ``allow_private``, every address the host resolves to must be public."""
    url = url.strip()
    if len(url) > MAX_URL_CHARS:
        raise BadWebhookUrl(f"longer than {MAX_URL_CHARS} characters")
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise BadWebhookUrl("contains spaces or control characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise BadWebhookUrl("must start with http:// or https://")
    try:
        host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:  # a port that is not a number or out of range
        raise BadWebhookUrl(f"bad port: {exc}") from None
    if not host:
        raise BadWebhookUrl("names no host")
    if parts.username is not None or parts.password is not None:
        raise BadWebhookUrl("must not carry a user or password (put the endpoint's secret in its path, as Slack and Discord do)")
    if not allow_private:
        check_addresses(host, port, resolver)
    return url


def check_addresses(host: str, port: int, resolver: Resolver = resolve) -> None:
    """Refuse a host that is, or resolves to, an address that is not public."""
    _refuse_inside(host, _addresses(host, port, resolver))


def _addresses(host: str, port: int, resolver: Resolver) -> list[IPAddress]:
    """``host`` itself if it is an address, else what it resolves to now (one resolution)."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        addresses = [ipaddress.ip_address(a.split("%")[0]) for a in resolver(host, port)]
    except OSError as exc:
        raise BadWebhookUrl(f"host {host!r} does not resolve: {exc}") from None
    if not addresses:
        raise BadWebhookUrl(f"host {host!r} resolves to no address")
    return addresses


def _refuse_inside(host: str, addresses: Sequence[IPAddress]) -> None:
    inside = [str(a) for a in addresses if not is_public(a)]
    if inside:
        raise BadWebhookUrl(f"host {host!r} is a loopback, private or internal address ({', '.join(inside)}): a webhook may not reach "
                            "inside the deployment (an operator may allow it with CADDIE_WEBHOOK_ALLOW_PRIVATE)")


@dataclass(frozen=True)
class Pinned:
    """Where one POST goes: ``url`` names the checked address itself; ``host_header`` and
    ``sni_hostname`` carry the name the team gave (virtual hosts and the certificate check need it)."""

    url: str
    host: str  # the name (or address) the team's URL gave, for messages
    address: str  # the address connected to
    host_header: str
    sni_hostname: str | None  # https to a name: the certificate must be this name's


def pin(url: str, *, allow_private: bool, resolver: Resolver = resolve) -> Pinned:
    """Check ``url`` and resolve its host once; BadWebhookUrl if it may not be sent to.

    Every resolved address is checked (unless ``allow_private``), then one of them is written into
    the URL: the HTTP client never resolves the name again, so its answer cannot change in between."""
    url = check_url(url, allow_private=True)  # the URL's shape; its addresses are checked below, on the one resolution
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    addresses = _addresses(host, port, resolver)
    if not allow_private:
        _refuse_inside(host, addresses)
    # IPv4 first: a deployment without an IPv6 route would fail where the name also has an A record.
    chosen = sorted(addresses, key=lambda a: (a.version, int(a)))[0]
    literal = f"[{chosen}]" if chosen.version == 6 else str(chosen)
    netloc = literal if parts.port is None else f"{literal}:{parts.port}"
    is_name = _is_name(host)
    return Pinned(url=urlunsplit((parts.scheme, netloc, parts.path, parts.query, "")), host=host, address=str(chosen),
                  host_header=parts.netloc, sni_hostname=host if parts.scheme == "https" and is_name else None)  # fmt: skip


def _is_name(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return True
    return False


def masked(url: str | None) -> str | None:
    """The URL as shown to members: scheme and host only, since a chat webhook's path is its secret."""
    if not url:
        return None
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/…" if parts.path not in ("", "/") or parts.query else f"{parts.scheme}://{parts.netloc}/"
