"""Header hygiene between the client and the upstream (SPEC §2 step 4, §6, §7 Headers).

Invariants:
- Strip, then inject: every header iap sets is first removed from what the client
  sent, so a client can never pre-set, duplicate or shadow one of them.
- Names compare case-insensitively with ``_`` folded to ``-`` (servers such as
  Django and many CGI stacks fold them together, so ``X_IAP_Subject`` would arrive
  as ``X-IAP-Subject``).
- Hop-by-hop headers (RFC 9110 §7.6.1) and every header named in ``Connection`` are
  removed; ``Connection`` cannot be used to remove the headers that frame the body.
- ``X-Forwarded-*``, ``Forwarded`` and the original-URI headers are believed only from
  trusted proxies; from anyone else they are replaced or dropped.
- iap's own cookies (``__Host-iap``, its chunks and the login state) never reach the
  upstream, and an upstream cannot set them; the rest passes unchanged (SPEC §6).
- Identity headers carry printable ASCII only; a value with anything else (CR, LF, NUL,
  non-ASCII) is left out rather than escaped, so a claim can never split a header.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from functools import lru_cache

from iap.model import Identity

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Set (or, for Expect, answered) by iap on every forwarded request; the client's are discarded.
EDGE_SET = frozenset(
    {
        "host",
        "expect",
        "x-correlation-id",
        "x-request-id",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
    }
)
# Believed from trusted proxies only.
PROXY_ONLY = frozenset(
    {
        "forwarded",
        "x-real-ip",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "x-forwarded-uri",
        "x-original-uri",
        "x-original-url",
        "x-envoy-external-address",
        "x-envoy-original-path",
    }
)
# WebSocket handshake headers belong to one connection; the upstream handshake makes its own.
WEBSOCKET_HANDSHAKE = frozenset(
    {
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-accept",
    }
)
_NEVER_NOMINATED = frozenset({"content-length", "host"})
_IAP_PREFIX = "x-iap-"
IAP_COOKIE = "__Host-iap"

Headers = Sequence[tuple[str, str]]


def fold(name: str) -> str:
    """The comparison form of a header name."""
    return name.lower().replace("_", "-")


def connection_nominated(headers: Iterable[tuple[str, str]]) -> frozenset[str]:
    """Names listed in ``Connection`` (RFC 9110 §7.6.1), folded."""
    names: set[str] = set()
    for name, value in headers:
        if name.lower() == "connection":
            names.update(fold(token.strip()) for token in value.split(",") if token.strip())
    return frozenset(names - _NEVER_NOMINATED)


class HeaderFilter:
    """Removes what must not pass from the client to the upstream; built once at startup."""

    def __init__(self, identity_headers: Iterable[str], propagation: Iterable[str] = ()) -> None:
        """``propagation``: trace headers iap writes itself (``traceparent``, ``x-b3-*``...)."""
        base = HOP_BY_HOP | EDGE_SET | {fold(name) for name in (*identity_headers, *propagation)}
        self._trusted = frozenset(base)
        self._untrusted = frozenset(base | PROXY_ONLY)

    def request(self, headers: Headers, *, trusted: bool) -> list[tuple[str, str]]:
        """Client headers that may reach the upstream."""
        drop = self._trusted if trusted else self._untrusted
        nominated = connection_nominated(headers)
        kept = []
        for name, value in headers:
            folded = fold(name)
            if folded in drop or folded in nominated or folded.startswith(_IAP_PREFIX):
                continue
            if folded == "cookie" and IAP_COOKIE in value:
                value = without_iap_cookies(value)
                if not value:
                    continue
            kept.append((name, value))
        return kept

    @staticmethod
    def response(
        headers: Iterable[tuple[str, str]], replaced: frozenset[str] = frozenset()
    ) -> list[tuple[str, str]]:
        """Upstream response headers that may reach the client: framing is iap's own, and
        ``replaced`` (folded names) are dropped because the caller sets them."""
        headers = list(headers)
        nominated = connection_nominated(headers)
        return [
            (name, value)
            for name, value in headers
            if (folded := fold(name)) not in HOP_BY_HOP
            and folded not in nominated
            and folded != "content-length"
            and folded not in replaced
            and not (folded == "set-cookie" and _sets_iap_cookie(value))
        ]


def _sets_iap_cookie(value: str) -> bool:
    """An upstream's Set-Cookie for one of iap's cookie names: never passed to the browser."""
    name = value.partition("=")[0].strip()
    return name == IAP_COOKIE or name.startswith(IAP_COOKIE + "-")


def iap_cookies(values: Iterable[str]) -> dict[str, str]:
    """iap's own pairs (``__Host-iap``, ``__Host-iap-*``) from ``Cookie`` header values.

    Only these names are read, so a large application cookie costs a substring search and
    nothing more. A name sent twice keeps its first value (RFC 6265 §5.4 orders the more
    specific cookie first; ``__Host-`` cookies all have ``Path=/``).
    """
    found: dict[str, str] = {}
    for value in values:
        if IAP_COOKIE not in value:
            continue
        for pair in value.split(";"):
            name, sep, text = pair.partition("=")
            name = name.strip()
            if sep and (name == IAP_COOKIE or name.startswith(IAP_COOKIE + "-")):
                found.setdefault(name, text.strip())
    return found


def without_iap_cookies(value: str) -> str:
    """A ``Cookie`` header value without ``__Host-iap`` and ``__Host-iap-*`` pairs."""
    kept = []
    for pair in value.split(";"):
        name = pair.partition("=")[0].strip()
        if name != IAP_COOKIE and not name.startswith(IAP_COOKIE + "-"):
            kept.append(pair.strip())
    return "; ".join(pair for pair in kept if pair)


@lru_cache(maxsize=4096)
def identity_headers(identity: Identity) -> tuple[tuple[str, str], ...]:
    """The informational ``X-IAP-*`` headers (SPEC §6); the minted token is the truth."""
    values = [
        ("X-IAP-Subject", identity.subject),
        ("X-IAP-Email", identity.email or ""),
        ("X-IAP-Roles", ",".join(identity.roles)),
    ]
    return tuple((name, value) for name, value in values if value and _printable(value))


def _printable(value: str) -> bool:
    return value.isascii() and value.isprintable()


class TrustedProxies:
    """The ``trusted_proxies`` CIDRs: who may speak for the client."""

    def __init__(self, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> None:
        self._networks = tuple(networks)
        self.contains = lru_cache(maxsize=4096)(self._contains)

    def _contains(self, address: str) -> bool:
        if not self._networks:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:  # dual-stack sockets
            ip = ip.ipv4_mapped
        return any(ip in network for network in self._networks)

    def client_ip(self, peer: str, forwarded_for: str | None) -> str:
        """The first untrusted address walking ``X-Forwarded-For`` from the right."""
        if not forwarded_for or not self.contains(peer):
            return peer
        hops = [hop.strip() for hop in forwarded_for.split(",")]
        for hop in reversed(hops):
            if not self.contains(hop):
                return hop if _is_ip(hop) else peer
        return hops[0] if _is_ip(hops[0]) else peer


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def forwarded(
    *, peer: str, trusted: bool, incoming: Headers, scheme: str, host: str
) -> list[tuple[str, str]]:
    """``X-Forwarded-For``/``-Proto``/``-Host`` for the upstream (de-facto standard)."""
    prior_for = prior_proto = prior_host = None
    if trusted:
        for name, value in incoming:
            folded = fold(name)
            if folded == "x-forwarded-for":
                prior_for = f"{prior_for}, {value}" if prior_for else value
            elif folded == "x-forwarded-proto":
                prior_proto = value
            elif folded == "x-forwarded-host":
                prior_host = value
    return [
        ("X-Forwarded-For", f"{prior_for}, {peer}" if prior_for else peer),
        ("X-Forwarded-Proto", prior_proto or scheme),
        ("X-Forwarded-Host", prior_host or host),
    ]
