"""iap.domain.redirects: only local paths and allowed hosts survive (SPEC §7 Redirects)."""

from __future__ import annotations

import string
from urllib.parse import urlsplit

import pytest
import yarl
from hypothesis import example, given
from hypothesis import strategies as st

from iap.domain.redirects import DEFAULT, MAX_LENGTH, RedirectPolicy
from iap.errors import ConfigError

PUBLIC = "https://edge.contoso.com"
POLICY = RedirectPolicy(PUBLIC, ["good.com", ".partner.example", "10.0.0.7", "[2001:db8::1]"])
ALLOWED_SUFFIXES = ("good.com", "partner.example", "contoso.com")

ACCEPTED = [
    "/",
    "/orders",
    "/orders?x=1#f",
    "/orders/?q=a%20b&r=%0A#frag//x",  # encoded controls are fine in the query
    "/a/b.c/..d/",
    "/caf%C3%A9",
    "https://good.com/x",
    "https://good.com",
    "https://good.com:443/x",
    "https://GOOD.com/x",
    "https://api.good.com/x",
    "https://a.b.api.good.com/x?y=1#z",
    "https://partner.example/",
    "https://www.partner.example/",
    "https://edge.contoso.com/after-login",
    "https://edge.contoso.com:443/",
    "https://10.0.0.7/x",
    "https://[2001:db8::1]/x",
    "https://[2001:0db8:0::1]/x",
    "https://xn--bcher-kva.good.com/",  # IDNA in its ASCII form
]

REFUSED = [
    # The payloads.
    "//evil.com",
    "/\\evil.com",
    "https://evil.com",
    "https://good.com.evil.com",
    "https://evil.com\\@good.com",
    "/%09/evil.com",
    # Scheme-relative and backslash variants (CVE-2020-5233).
    "///evil.com",
    "//good.com",
    "\\\\evil.com",
    "\\/evil.com",
    "/\\/evil.com",
    "/x\\y",
    "https://good.com\\x",
    "https:\\\\evil.com",
    # Whitespace and control characters, raw or encoded (CVE-2020-11053).
    "/\t/evil.com",
    "/\n/evil.com",
    "/\r/evil.com",
    "/ /evil.com",
    " /orders",
    "/orders ",
    "/%0a/evil.com",
    "/%0D/evil.com",
    "/%00/x",
    "/%7f/x",
    "/x/%09/evil.com",
    "/\x00",
    "/\x7f",
    "/\u00a0/evil.com",
    "/\u3000/evil.com",
    "https://good.com/\tx",
    # Encoded slashes and backslashes; empty and dot segments.
    "/%2f%2fevil.com",
    "/%2F/evil.com",
    "/%5cevil.com",
    "/%5C%5Cevil.com",
    "/x/%2fy",
    "/..//evil.com",
    "/./evil.com",
    "/x/../y",
    "/%2e%2e/x",
    "/.%2E/x",
    "/a//b",
    "https://good.com//evil.com",
    "https://good.com/../x",
    "/%",
    "/%zz",
    "/%2",
    # Userinfo.
    "https://good.com@evil.com",
    "https://user@good.com/",
    "https://user:pass@good.com/",
    "https://:@good.com/",
    "https://evil.com#@good.com",
    "https://evil.com?@good.com",
    "https://evil.com%40good.com/",
    # Other schemes and malformed absolute forms.
    "javascript:alert(1)",
    "JavaScript:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "ftp://good.com/",
    "http://good.com/x",  # http only when public_url is http
    "http://edge.contoso.com/",
    "https:evil.com",
    "https:/evil.com",
    "https:///evil.com",
    "https:good.com",
    "https://",
    "https:",
    "orders",
    "?x=1",
    "#f",
    "",
    None,
    # Host look-alikes and dot-boundary tricks (CVE-2021-21291).
    "https://evilgood.com/",
    "https://good.com.evil.com/",
    "https://good.comevil.com/",
    "https://good.com./",
    "https://api.good.com./",
    "https://.good.com/",
    "https://api..good.com/",
    "https://-x.good.com/",
    "https://api_x.good.com/",
    "https://\uff47ood.com/",  # full-width g
    "https://good\u3002com/",  # ideographic full stop
    "https://bücher.good.com/",
    "https://edge.contoso.com.evil.com/",
    "https://contoso.com/",  # public host only, not its parent
    "https://x.edge.contoso.com/",
    # Ports.
    "https://good.com:8443/",
    "https://good.com:/",
    "https://good.com:0443/",
    "https://good.com:+443/",
    "https://good.com:99999/",
    "https://good.com:x/",
    "https://edge.contoso.com:8443/",
    # IP literals.
    "https://10.0.0.8/",
    "https://010.0.0.7/",
    "https://10.0.0.07/",
    "https://167772167/",
    "https://0xa.0.0.7/",
    "https://x.10.0.0.7/",
    "https://127.0.0.1/",
    "https://[::1]/",
    "https://[2001:db8::2]/",
    "https://[2001:db8::1%25eth0]/",
    "https://[2001:db8::1/",
    "https://[evil.com]/",
    "https://[2001:db8::1]x/",
    "https://2001:db8::1/",
    "/x" * MAX_LENGTH,
]


@pytest.mark.parametrize("value", ACCEPTED)
def test_accepted(value: str) -> None:
    assert POLICY.target(value) == value


@pytest.mark.parametrize("value", REFUSED)
def test_refused(value: str | None) -> None:
    assert POLICY.target(value) == DEFAULT


def test_default_is_root() -> None:
    assert DEFAULT == "/"


def test_result_is_the_urlunsplit_form() -> None:
    assert POLICY.target("/orders?") == "/orders"
    assert POLICY.target("https://good.com/x#") == "https://good.com/x"
    assert POLICY.target("HTTPS://good.com/x") == "https://good.com/x"


def test_an_entry_with_or_without_leading_dot_is_one_rule() -> None:
    for entry in ("contoso.com", ".contoso.com", "Contoso.COM"):
        policy = RedirectPolicy("https://edge.example", [entry])
        assert policy.target("https://contoso.com/") == "https://contoso.com/"
        assert policy.target("https://a.contoso.com/") == "https://a.contoso.com/"
        assert policy.target("https://evilcontoso.com/") == DEFAULT
        assert policy.target("https://contoso.com.evil.com/") == DEFAULT


def test_no_allowed_hosts_means_public_host_only() -> None:
    policy = RedirectPolicy("https://edge.example/")
    assert policy.target("https://edge.example/x") == "https://edge.example/x"
    assert policy.target("https://a.edge.example/x") == DEFAULT
    assert policy.target("/x") == "/x"


def test_public_host_needs_the_public_port() -> None:
    policy = RedirectPolicy("https://edge.example:8443")
    assert policy.target("https://edge.example:8443/x") == "https://edge.example:8443/x"
    assert policy.target("https://edge.example/x") == DEFAULT
    assert policy.target("https://edge.example:443/x") == DEFAULT


def test_http_only_when_public_url_is_http() -> None:
    policy = RedirectPolicy("http://127.0.0.1:8080", ["good.com"])
    assert policy.target("http://127.0.0.1:8080/x") == "http://127.0.0.1:8080/x"
    assert policy.target("http://good.com/x") == "http://good.com/x"
    assert policy.target("https://good.com/x") == "https://good.com/x"
    assert policy.target("https://127.0.0.1:8080/x") == DEFAULT  # scheme is part of the origin
    assert policy.target("http://127.0.0.1:8081/x") == DEFAULT
    assert policy.target("http://good.com:8080/x") == DEFAULT


def test_ipv6_entries_with_or_without_brackets() -> None:
    for entry in ("2001:db8::1", "[2001:DB8:0::1]"):
        policy = RedirectPolicy("https://edge.example", [entry])
        assert policy.target("https://[2001:db8::1]/") == "https://[2001:db8::1]/"
        assert policy.target("https://[2001:db8::2]/") == DEFAULT


@pytest.mark.parametrize(
    "public_url",
    [
        "edge.contoso.com",
        "ftp://edge.contoso.com",
        "https://",
        "https://user@edge.contoso.com",
        "https://edge.contoso.com.",
        "https://edge.contoso.com:99999",
        "https://bücher.example",
        "https://[::1",
    ],
)
def test_bad_public_url_is_a_config_error(public_url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        RedirectPolicy(public_url)
    assert caught.value.problems[0].startswith("public_url:")


def test_bad_allowed_hosts_are_reported_together() -> None:
    with pytest.raises(ConfigError) as caught:
        RedirectPolicy(PUBLIC, ["good.com", "*.evil.com", "", "bad..com", "x.com."])
    assert caught.value.problems == [
        "allowed_redirect_hosts[1]: not a host name or IP literal",
        "allowed_redirect_hosts[2]: not a host name or IP literal",
        "allowed_redirect_hosts[3]: not a host name or IP literal",
        "allowed_redirect_hosts[4]: not a host name or IP literal",
    ]


# Properties ---------------------------------------------------------------------------

URL_ALPHABET = string.ascii_letters + string.digits + "/\\:@.%?#&=+-_~[] \t\r\n\x00\x7f"
_LABEL = st.from_regex(r"\A[a-z0-9](?:[a-z0-9-]{0,8}[a-z0-9])?\Z")
HOSTS = st.lists(_LABEL, min_size=1, max_size=4).map(".".join)


PREFIXES = [
    "",
    "/",
    "//",
    "/\\",
    "https:",
    "https://",
    "https:///",
    "http://",
    "https://good.com",
    "https://api.good.com",
    "https://edge.contoso.com",
    "https://[2001:db8::1]",
    "https://evil.com",
]


def _host_allowed(host: str) -> bool:
    return host == "edge.contoso.com" or any(
        host == suffix or host.endswith("." + suffix) for suffix in ("good.com", "partner.example")
    )


def _browser_preprocess(value: str) -> str:
    """What a WHATWG URL parser does before parsing an http(s) URL: trim C0 controls and
    spaces, drop tab/CR/LF, and read ``\\`` as ``/``."""
    trimmed = value.strip("".join(map(chr, range(0x21))))
    return trimmed.translate({0x09: None, 0x0A: None, 0x0D: None, 0x5C: "/"})


def _check_safe(result: str) -> None:
    assert _browser_preprocess(result) == result
    assert all(0x21 <= ord(char) <= 0x7E for char in result)
    if result.startswith("/"):
        assert result == "/" or result[1] not in "/\\"
        assert yarl.URL(PUBLIC).join(yarl.URL(result)).host == "edge.contoso.com"
        return
    parts = urlsplit(result)
    assert parts.scheme == "https"
    assert parts.username is None
    assert "@" not in parts.netloc
    assert parts.hostname is not None
    assert _host_allowed(parts.hostname) or parts.hostname in ("10.0.0.7", "2001:db8::1")
    assert yarl.URL(result).host == parts.hostname  # a second parser agrees on the host


@given(st.text(max_size=60) | st.text(alphabet=URL_ALPHABET, max_size=60))
@example("/\\evil.com")
@example("//evil.com")
@example("https://evil.com\\@good.com")
def test_any_text_is_default_or_safe(value: str) -> None:
    result = POLICY.target(value)
    if result != DEFAULT:
        _check_safe(result)


@given(
    st.sampled_from(PREFIXES),
    st.text(alphabet=URL_ALPHABET, max_size=40),
)
def test_url_shaped_text_is_default_or_safe(prefix: str, rest: str) -> None:
    result = POLICY.target(prefix + rest)
    if result != DEFAULT:
        _check_safe(result)


@given(st.text(alphabet=URL_ALPHABET, max_size=60))
def test_target_is_idempotent(value: str) -> None:
    result = POLICY.target(value)
    assert POLICY.target(result) == result


@given(HOSTS, st.sampled_from(["", "/", "/x?y=1"]))
@example("good.com", "/")
@example("evilgood.com", "/")
@example("good.com.evil.com", "/")
@example("api.good.com", "/")
def test_host_decision_is_a_dot_boundary_match(host: str, path: str) -> None:
    value = f"https://{host}{path}"
    expected = value if _host_allowed(host) else DEFAULT
    assert POLICY.target(value) == expected


@given(HOSTS, st.sampled_from(ALLOWED_SUFFIXES), st.sampled_from(["@", "\\@", "\\", "#@", ":@"]))
def test_allowed_host_after_a_separator_never_lends_its_trust(
    evil: str, good: str, separator: str
) -> None:
    value = f"https://{evil}{separator}{good}/"
    result = POLICY.target(value)
    if result != DEFAULT:
        assert _host_allowed(evil)
        _check_safe(result)
