"""iap.domain.headers: strip, then inject; trust forwarded headers only from proxies."""

from __future__ import annotations

import ipaddress
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iap.domain.headers import (
    HeaderFilter,
    TrustedProxies,
    connection_nominated,
    fold,
    forwarded,
)

HOP_BY_HOP_NAMES = {
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


def _names(headers: list[tuple[str, str]]) -> list[str]:
    return [name for name, _ in headers]


# ---------------------------------------------------------------- fold


@pytest.mark.parametrize(
    ("name", "folded"),
    [
        ("X-IAP-Subject", "x-iap-subject"),
        ("x_iap_subject", "x-iap-subject"),
        ("X_Forwarded-For", "x-forwarded-for"),
        ("content-type", "content-type"),
    ],
)
def test_fold(name: str, folded: str) -> None:
    assert fold(name) == folded


# ---------------------------------------------------------------- Connection


def test_connection_nominated_collects_tokens_from_every_connection_header() -> None:
    headers = [
        ("Connection", "keep-alive, X-Secret ,x_other"),
        ("connection", "Upgrade"),
        ("X-Not-Connection", "x-ignored"),
    ]
    assert connection_nominated(headers) == {"keep-alive", "x-secret", "x-other", "upgrade"}


def test_connection_nominated_ignores_empty_tokens() -> None:
    assert connection_nominated([("Connection", " , ,close,")]) == {"close"}


@pytest.mark.parametrize("value", ["Content-Length", "content_length", "Host", "HOST, x-a"])
def test_content_length_and_host_can_never_be_nominated(value: str) -> None:
    nominated = connection_nominated([("Connection", value)])
    assert "content-length" not in nominated
    assert "host" not in nominated


def test_nominating_content_length_does_not_strip_it() -> None:
    headers = [("Connection", "Content-Length, X-Drop"), ("Content-Length", "5"), ("X-Drop", "1")]
    assert HeaderFilter([]).request(headers, trusted=False) == [("Content-Length", "5")]


# ---------------------------------------------------------------- request filter

IDENTITY = ["X-Remote-User", "x_auth_request_email", "X-MS-CLIENT-PRINCIPAL"]


@pytest.fixture
def header_filter() -> HeaderFilter:
    return HeaderFilter(IDENTITY)


@pytest.mark.parametrize(
    "name",
    [
        "Connection",
        "Keep-Alive",
        "Proxy-Authorization",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "transfer_encoding",
    ],
)
@pytest.mark.parametrize("trusted", [True, False])
def test_request_drops_hop_by_hop(header_filter: HeaderFilter, name: str, trusted: bool) -> None:
    kept = header_filter.request([(name, "x"), ("Accept", "*/*")], trusted=trusted)
    assert kept == [("Accept", "*/*")]


@pytest.mark.parametrize(
    "name",
    [
        "X-IAP-Subject",
        "x-iap-email",
        "X-Iap-Roles",
        "x_iap_subject",
        "X_IAP_Anything_Else",
        "x-IAP_roles",
    ],
)
@pytest.mark.parametrize("trusted", [True, False])
def test_request_drops_every_client_x_iap_header(
    header_filter: HeaderFilter, name: str, trusted: bool
) -> None:
    kept = header_filter.request([(name, "admin"), ("Accept", "*/*")], trusted=trusted)
    assert kept == [("Accept", "*/*")]


def test_x_iap_prefix_requires_the_dash() -> None:
    kept = HeaderFilter([]).request([("X-IAPX", "1"), ("X-IA-P", "2")], trusted=False)
    assert kept == [("X-IAPX", "1"), ("X-IA-P", "2")]


@pytest.mark.parametrize(
    "name",
    [
        "X-Remote-User",
        "x-remote-user",
        "X_REMOTE_USER",
        "X-Auth-Request-Email",
        "x_auth_request_email",
        "x-ms-client-principal",
        "X_Ms_Client_Principal",
    ],
)
@pytest.mark.parametrize("trusted", [True, False])
def test_request_drops_configured_identity_headers(
    header_filter: HeaderFilter, name: str, trusted: bool
) -> None:
    kept = header_filter.request([(name, "alice"), ("Accept", "*/*")], trusted=trusted)
    assert kept == [("Accept", "*/*")]


def test_identity_headers_not_configured_pass() -> None:
    kept = HeaderFilter([]).request([("X-Remote-User", "alice")], trusted=False)
    assert kept == [("X-Remote-User", "alice")]


@pytest.mark.parametrize(
    "name",
    [
        "X-Forwarded-For",
        "X-Forwarded-Proto",
        "X-Forwarded-Host",
        "x_forwarded_for",
        "X-Correlation-ID",
        "X-Request-ID",
        "x_request_id",
        "Host",
        "Expect",
    ],
)
@pytest.mark.parametrize("trusted", [True, False])
def test_request_always_drops_edge_set_headers(
    header_filter: HeaderFilter, name: str, trusted: bool
) -> None:
    kept = header_filter.request([(name, "v"), ("Accept", "*/*")], trusted=trusted)
    assert kept == [("Accept", "*/*")]


PROXY_ONLY = [
    "Forwarded",
    "X-Real-IP",
    "X-Forwarded-Port",
    "X-Forwarded-Prefix",
    "X-Forwarded-Uri",
    "X-Original-URI",
    "X-Original-URL",
    "X-Envoy-External-Address",
    "X-Envoy-Original-Path",
    "x_original_uri",
]


@pytest.mark.parametrize("name", PROXY_ONLY)
def test_proxy_only_headers_dropped_when_untrusted(header_filter: HeaderFilter, name: str) -> None:
    kept = header_filter.request([(name, "/admin"), ("Accept", "*/*")], trusted=False)
    assert kept == [("Accept", "*/*")]


@pytest.mark.parametrize("name", PROXY_ONLY)
def test_proxy_only_headers_kept_when_trusted(header_filter: HeaderFilter, name: str) -> None:
    kept = header_filter.request([(name, "/admin"), ("Accept", "*/*")], trusted=True)
    assert kept == [(name, "/admin"), ("Accept", "*/*")]


def test_request_drops_names_nominated_by_connection(header_filter: HeaderFilter) -> None:
    headers = [
        ("Connection", "X-Secret, x_internal"),
        ("X-Secret", "1"),
        ("X-Internal", "2"),
        ("X-Kept", "3"),
    ]
    assert header_filter.request(headers, trusted=True) == [("X-Kept", "3")]


def test_request_keeps_ordinary_headers_in_order_with_duplicates(
    header_filter: HeaderFilter,
) -> None:
    headers = [
        ("Accept", "text/html"),
        ("Cookie", "a=1"),
        ("X-Custom", "1"),
        ("x-custom", "2"),
        ("Authorization", "Bearer t"),
        ("Content-Type", "application/json"),
    ]
    assert header_filter.request(headers, trusted=False) == headers


# Token characters of RFC 9110 §5.6.2, biased towards names that matter here.
_TOKEN = st.text(alphabet=string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~", min_size=1)
_DANGEROUS = st.sampled_from(
    [
        *sorted(HOP_BY_HOP_NAMES),
        "x-iap-subject",
        "x-iap-",
        "x-iap-roles",
        "x-forwarded-for",
        "host",
        "x-remote-user",
    ]
)


def _mangle(name: str, choices: list[int]) -> str:
    """Vary the case of ``name`` and swap ``-`` for ``_`` as directed by ``choices``."""
    out = []
    for index, char in enumerate(name):
        choice = choices[index % len(choices)]
        if char == "-" and choice & 1:
            out.append("_")
        elif choice & 2:
            out.append(char.upper())
        else:
            out.append(char)
    return "".join(out)


_NAME = st.one_of(
    _TOKEN,
    st.builds(_mangle, _DANGEROUS, st.lists(st.integers(0, 3), min_size=1, max_size=4)),
    st.builds(lambda a, b: a + b, st.sampled_from(["X-IAP-", "x_iap_", "X-Iap_"]), _TOKEN),
)
_HEADERS = st.lists(st.tuples(_NAME, st.text(max_size=20)), max_size=12)


@given(headers=_HEADERS, trusted=st.booleans(), identity=st.lists(_TOKEN, max_size=3))
def test_request_never_passes_iap_or_hop_by_hop(
    headers: list[tuple[str, str]], trusted: bool, identity: list[str]
) -> None:
    kept = HeaderFilter(identity).request(headers, trusted=trusted)
    configured = {name.lower().replace("_", "-") for name in identity}
    for name, _ in kept:
        folded = name.lower().replace("_", "-")
        assert not folded.startswith("x-iap-")
        assert folded not in HOP_BY_HOP_NAMES
        assert folded not in configured
    # Nothing is invented: what is kept is a sub-sequence of what was sent.
    remaining = iter(headers)
    assert all(any(pair == sent for sent in remaining) for pair in kept)


# ---------------------------------------------------------------- response filter


def test_response_drops_hop_by_hop_nominated_and_content_length() -> None:
    headers = [
        ("Content-Type", "text/plain"),
        ("Content-Length", "12"),
        ("Transfer-Encoding", "chunked"),
        ("Connection", "keep-alive, X-Internal"),
        ("Keep-Alive", "timeout=5"),
        ("X-Internal", "secret"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
        ("Upgrade", "h2c"),
    ]
    assert HeaderFilter.response(headers) == [
        ("Content-Type", "text/plain"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
    ]


def test_upstream_cannot_set_iap_cookies() -> None:
    # Planting or overwriting iap's session (fixation, forced logout) is not the upstream's.
    headers = [
        ("Set-Cookie", "__Host-iap=forged; Path=/; Secure"),
        ("set-cookie", " __Host-iap-1=x"),
        ("Set-Cookie", "__Host-iap-login=x"),
        ("Set-Cookie", "__Host-iapp=kept"),
        ("Set-Cookie", "app=1; Comment=__Host-iap"),
    ]
    assert HeaderFilter.response(headers) == [
        ("Set-Cookie", "__Host-iapp=kept"),
        ("Set-Cookie", "app=1; Comment=__Host-iap"),
    ]


def test_response_keeps_ordinary_headers() -> None:
    headers = [("ETag", '"x"'), ("Cache-Control", "no-store"), ("X-IAP-Debug", "1")]
    assert HeaderFilter.response(headers) == headers


# ---------------------------------------------------------------- trusted proxies


@pytest.fixture
def proxies() -> TrustedProxies:
    return TrustedProxies(
        [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8:ffff::/48")]
    )


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("10.0.0.1", True),
        ("10.255.255.255", True),
        ("11.0.0.1", False),
        ("2001:db8:ffff::1", True),
        ("2001:db8:fffe::1", False),
        ("garbage", False),
        ("", False),
        ("10.0.0.1:443", False),
    ],
)
def test_contains(proxies: TrustedProxies, address: str, expected: bool) -> None:
    assert proxies.contains(address) is expected


def test_no_trusted_proxies_trusts_nobody() -> None:
    none = TrustedProxies([])
    assert none.contains("10.0.0.1") is False
    assert none.client_ip("10.0.0.1", "198.51.100.7") == "10.0.0.1"


@pytest.mark.parametrize(
    ("peer", "xff", "expected"),
    [
        # An untrusted peer cannot speak for anyone: its X-Forwarded-For is ignored.
        ("203.0.113.9", "198.51.100.7", "203.0.113.9"),
        ("203.0.113.9", "10.0.0.2", "203.0.113.9"),
        # A trusted peer: walk from the right to the first untrusted hop.
        ("10.0.0.1", "198.51.100.7", "198.51.100.7"),
        ("10.0.0.1", "198.51.100.7, 10.0.0.2", "198.51.100.7"),
        ("10.0.0.1", "6.6.6.6, 198.51.100.7, 10.0.0.2", "198.51.100.7"),
        ("10.0.0.1", " 198.51.100.7 ,10.0.0.2 ", "198.51.100.7"),
        ("10.0.0.1", "2001:db8::7, 2001:db8:ffff::2", "2001:db8::7"),
        # Every hop trusted: the leftmost is the client.
        ("10.0.0.1", "10.0.0.3, 10.0.0.2", "10.0.0.3"),
        # Garbage as the first untrusted hop: fall back to the peer, never skip past it.
        ("10.0.0.1", "garbage", "10.0.0.1"),
        ("10.0.0.1", "198.51.100.7, garbage, 10.0.0.2", "10.0.0.1"),
        ("10.0.0.1", "unknown", "10.0.0.1"),
        ("10.0.0.1", ",", "10.0.0.1"),
        ("10.0.0.1", "198.51.100.7:1234", "10.0.0.1"),
        # No header at all.
        ("10.0.0.1", None, "10.0.0.1"),
        ("10.0.0.1", "", "10.0.0.1"),
    ],
)
def test_client_ip(proxies: TrustedProxies, peer: str, xff: str | None, expected: str) -> None:
    assert proxies.client_ip(peer, xff) == expected


# ---------------------------------------------------------------- X-Forwarded-*


def test_forwarded_from_untrusted_peer_ignores_incoming() -> None:
    incoming = [
        ("X-Forwarded-For", "6.6.6.6"),
        ("X-Forwarded-Proto", "http"),
        ("X-Forwarded-Host", "evil.example"),
    ]
    result = forwarded(
        peer="203.0.113.9", trusted=False, incoming=incoming, scheme="https", host="edge.test"
    )
    assert result == [
        ("X-Forwarded-For", "203.0.113.9"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "edge.test"),
    ]


def test_forwarded_from_trusted_peer_appends_to_chain() -> None:
    incoming = [
        ("x-forwarded-for", "198.51.100.7"),
        ("X_Forwarded_For", "10.0.0.3"),
        ("X-Forwarded-Proto", "http"),
        ("X-Forwarded-Host", "public.example"),
    ]
    result = forwarded(
        peer="10.0.0.2", trusted=True, incoming=incoming, scheme="https", host="edge.test"
    )
    assert result == [
        ("X-Forwarded-For", "198.51.100.7, 10.0.0.3, 10.0.0.2"),
        ("X-Forwarded-Proto", "http"),
        ("X-Forwarded-Host", "public.example"),
    ]


def test_forwarded_from_trusted_peer_without_prior_headers() -> None:
    result = forwarded(peer="10.0.0.2", trusted=True, incoming=[], scheme="http", host="h:8080")
    assert result == [
        ("X-Forwarded-For", "10.0.0.2"),
        ("X-Forwarded-Proto", "http"),
        ("X-Forwarded-Host", "h:8080"),
    ]
