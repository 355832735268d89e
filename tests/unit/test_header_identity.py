"""iap.domain.headers: iap's cookies never reach the upstream; identity headers cannot split."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iap.domain.headers import IAP_COOKIE, identity_headers, without_iap_cookies
from iap.model import Identity
from tests.support.identities import ALICE


def _names(cookie_header: str) -> list[str]:
    return [pair.partition("=")[0].strip() for pair in cookie_header.split(";") if pair.strip()]


def _is_iap(name: str) -> bool:
    return name == IAP_COOKIE or name.startswith(IAP_COOKIE + "-")


# --- without_iap_cookies --------------------------------------------------------------------


def test_iap_cookie_name_is_the_host_prefixed_one() -> None:
    assert IAP_COOKIE == "__Host-iap"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("__Host-iap=sealed", ""),
        ("__Host-iap=sealed; theme=dark", "theme=dark"),
        ("theme=dark; __Host-iap=sealed", "theme=dark"),
        ("a=1; __Host-iap=~2~x; __Host-iap-1=y; b=2", "a=1; b=2"),
        ("__Host-iap-login=state; lang=en", "lang=en"),
        ("__Host-iap-7=chunk", ""),
        ("__Host-iap", ""),  # a name without a value
        ("__Host-iap=", ""),
        ("__Host-iapx=keep", "__Host-iapx=keep"),
        ("__Host-iap_x=keep", "__Host-iap_x=keep"),
        ("__host-iap=keep", "__host-iap=keep"),  # cookie names are case-sensitive
        ("__Secure-iap=keep", "__Secure-iap=keep"),
        ("x__Host-iap=keep", "x__Host-iap=keep"),
        ("theme=__Host-iap=v", "theme=__Host-iap=v"),  # iap's name in a value is only text
        ("note=__Host-iap-1", "note=__Host-iap-1"),
        ("theme=dark", "theme=dark"),
        ("", ""),
    ],
)
def test_without_iap_cookies(value: str, expected: str) -> None:
    assert without_iap_cookies(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "a=1;__Host-iap=s;b=2",
        "a=1 ;  __Host-iap=s  ; b=2",
        "a=1;\t__Host-iap=s;\tb=2",
        "a=1; __Host-iap =s; b=2",
        "a=1; __Host-iap\t=s; b=2",
        ";a=1;;__Host-iap=s;;b=2;",
        "  a=1;  __Host-iap-1=s;  b=2  ",
    ],
)
def test_without_iap_cookies_whatever_the_spacing(value: str) -> None:
    assert without_iap_cookies(value) == "a=1; b=2"


def test_without_iap_cookies_keeps_other_values_byte_for_byte() -> None:
    value = 'sid=abc=="; pref=a b c; q="quoted; x"'
    # split on ";" inside a quoted value is what browsers do too (cookie-octets exclude ";")
    assert without_iap_cookies(value) == value


cookie_names = st.sampled_from(
    [
        IAP_COOKIE,
        IAP_COOKIE + "-1",
        IAP_COOKIE + "-login",
        IAP_COOKIE + "-",
        IAP_COOKIE + "x",
        "theme",
        "__Host-other",
        "",
    ]
) | st.text(st.characters(codec="ascii", exclude_characters=";="), max_size=12)
cookie_values = st.text(st.characters(codec="ascii", exclude_characters=";"), max_size=16)
spaces = st.text(" \t", max_size=2)
pairs = st.tuples(spaces, cookie_names, spaces, st.sampled_from(["=", ""]), cookie_values)


@given(st.lists(pairs, max_size=8), st.sampled_from([";", "; ", " ; "]))
def test_no_iap_pair_survives(parts: list[tuple[str, str, str, str, str]], separator: str) -> None:
    texts = [f"{a}{name}{b}{eq}{value}" for a, name, b, eq, value in parts]
    result = without_iap_cookies(separator.join(texts))
    assert not any(_is_iap(name) for name in _names(result))
    # every other non-empty pair survives, in order
    kept = [
        text.strip()
        for text in texts
        if text.strip() and not _is_iap(text.partition("=")[0].strip())
    ]
    assert result == "; ".join(kept)


@given(st.text(max_size=80))
def test_no_iap_pair_survives_any_text(header: str) -> None:
    result = without_iap_cookies(header)
    assert not any(_is_iap(name) for name in _names(result))
    assert without_iap_cookies(result) == result


# --- identity_headers -----------------------------------------------------------------------


def test_identity_headers_for_a_plain_identity() -> None:
    assert list(identity_headers(ALICE)) == [
        ("X-IAP-Subject", "tid-1:oid-alice"),
        ("X-IAP-Email", "alice@contoso.com"),
        ("X-IAP-Roles", "admin,reader"),
    ]


def test_identity_headers_leave_out_empty_values() -> None:
    identity = replace(ALICE, email=None, roles=())
    assert list(identity_headers(identity)) == [("X-IAP-Subject", "tid-1:oid-alice")]
    assert list(identity_headers(replace(ALICE, email=""))) == [
        ("X-IAP-Subject", "tid-1:oid-alice"),
        ("X-IAP-Roles", "admin,reader"),
    ]


def test_identity_headers_roles_are_comma_joined_in_order() -> None:
    identity = replace(ALICE, roles=("one",))
    assert dict(identity_headers(identity))["X-IAP-Roles"] == "one"
    identity = replace(ALICE, roles=("z", "a", "m"))
    assert dict(identity_headers(identity))["X-IAP-Roles"] == "z,a,m"


@pytest.mark.parametrize(
    "bad",
    [
        "evil\r\nX-IAP-Subject: admin",
        "evil\nX-Injected: 1",
        "evil\r",
        "nul\x00byte",
        "tab\there",
        "del\x7f",
        "bell\x07",
        "caf\u00e9@contoso.com",
        "\u2028line-separator",
        "\uff41dmin",  # fullwidth a
        "\ud800",  # lone surrogate
    ],
)
def test_identity_headers_drop_values_that_are_not_printable_ascii(bad: str) -> None:
    assert "X-IAP-Email" not in dict(identity_headers(replace(ALICE, email=bad)))
    assert "X-IAP-Subject" not in dict(identity_headers(replace(ALICE, subject=bad)))
    headers = dict(identity_headers(replace(ALICE, roles=("admin", bad))))
    assert "X-IAP-Roles" not in headers  # one bad role drops the whole header
    assert headers["X-IAP-Subject"] == ALICE.subject  # the others still go


def test_identity_headers_keep_every_printable_ascii_character() -> None:
    printable = "".join(chr(c) for c in range(0x20, 0x7F))
    identity = replace(ALICE, subject=printable, email=printable, roles=(printable,))
    assert list(identity_headers(identity)) == [
        ("X-IAP-Subject", printable),
        ("X-IAP-Email", printable),
        ("X-IAP-Roles", printable),
    ]


identities = st.builds(
    Identity,
    subject=st.text(max_size=20),
    tid=st.text(max_size=5),
    oid=st.text(max_size=5),
    name=st.none() | st.text(max_size=5),
    email=st.none() | st.text(max_size=20),
    preferred_username=st.none() | st.text(max_size=5),
    roles=st.lists(st.text(max_size=8), max_size=4).map(tuple),
    groups=st.lists(st.text(max_size=8), max_size=4).map(tuple),
)


@given(identities)
def test_identity_header_values_are_always_printable_ascii(identity: Identity) -> None:
    headers = identity_headers(identity)
    assert {name for name, _ in headers} <= {"X-IAP-Subject", "X-IAP-Email", "X-IAP-Roles"}
    for _, value in headers:
        assert value
        assert all(0x20 <= ord(char) < 0x7F for char in value)
    expected = {
        "X-IAP-Subject": identity.subject,
        "X-IAP-Email": identity.email or "",
        "X-IAP-Roles": ",".join(identity.roles),
    }
    for name, value in headers:
        assert value == expected[name]
