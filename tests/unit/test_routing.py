"""iap.domain.routing: host, then longest prefix, then methods (SPEC §2 step 5)."""

from __future__ import annotations

from dataclasses import dataclass

from iap.domain.routing import RouteTable


@dataclass(frozen=True)
class M:
    path_prefix: str = "/"
    host: str | None = None
    methods: frozenset[str] | None = None


def table(*routes: tuple[M, str]) -> RouteTable[str]:
    return RouteTable(routes)


def test_longest_prefix_wins_whatever_the_order() -> None:
    routes = table((M("/"), "root"), (M("/orders/"), "orders"), (M("/orders/admin/"), "admin"))
    assert routes.match("h", "/orders/admin/x", "GET") == "admin"
    assert routes.match("h", "/orders/1", "GET") == "orders"
    assert routes.match("h", "/other", "GET") == "root"
    reverse = table((M("/orders/admin/"), "admin"), (M("/orders/"), "orders"), (M("/"), "root"))
    assert reverse.match("h", "/orders/admin/x", "GET") == "admin"
    assert reverse.match("h", "/orders/1", "GET") == "orders"


def test_prefix_is_a_plain_string_prefix() -> None:
    routes = table((M("/orders/"), "orders"))
    assert routes.match("h", "/orders", "GET") is None
    assert routes.match("h", "/orders/", "GET") == "orders"


def test_host_specific_routes_before_any_host() -> None:
    routes = table(
        (M("/api/long/prefix/"), "any-host"),
        (M("/", host="api.contoso.com"), "host"),
    )
    assert routes.match("api.contoso.com", "/api/long/prefix/x", "GET") == "host"
    assert routes.match("other.contoso.com", "/api/long/prefix/x", "GET") == "any-host"


def test_port_in_host_header_is_ignored() -> None:
    routes = table((M("/", host="api.contoso.com"), "host"))
    assert routes.match("api.contoso.com:8443", "/", "GET") == "host"
    assert routes.match("api.contoso.com:443", "/", "GET") == "host"


def test_host_is_case_insensitive() -> None:
    routes = table((M("/", host="API.Contoso.com"), "host"))
    assert routes.match("api.CONTOSO.com", "/", "GET") == "host"
    assert routes.match("API.CONTOSO.COM:8443", "/", "GET") == "host"


def test_ipv6_host_with_port() -> None:
    routes = table((M("/", host="[::1]"), "v6"))
    assert routes.match("[::1]:8443", "/", "GET") == "v6"
    assert routes.match("[::1]", "/", "GET") == "v6"


def test_other_host_does_not_match_host_route() -> None:
    routes = table((M("/", host="api.contoso.com"), "host"))
    assert routes.match("evil.com", "/", "GET") is None
    assert routes.match("api.contoso.com.evil.com", "/", "GET") is None
    assert routes.match("xapi.contoso.com", "/", "GET") is None


def test_methods_filter_falls_through_to_next_candidate() -> None:
    routes = table(
        (M("/orders/", methods=frozenset({"GET"})), "read"),
        (M("/"), "fallback"),
    )
    assert routes.match("h", "/orders/1", "GET") == "read"
    assert routes.match("h", "/orders/1", "POST") == "fallback"


def test_methods_filter_falls_through_from_host_to_any_host() -> None:
    routes = table(
        (M("/", host="api.contoso.com", methods=frozenset({"GET", "HEAD"})), "host-read"),
        (M("/"), "any"),
    )
    assert routes.match("api.contoso.com", "/x", "HEAD") == "host-read"
    assert routes.match("api.contoso.com", "/x", "DELETE") == "any"


def test_method_not_allowed_anywhere_is_no_match() -> None:
    routes = table((M("/", methods=frozenset({"GET"})), "read"))
    assert routes.match("h", "/", "POST") is None


def test_no_match_is_none() -> None:
    assert table((M("/orders/"), "orders")).match("h", "/users/", "GET") is None
    assert table().match("h", "/", "GET") is None


def test_equal_prefixes_first_declared_wins() -> None:
    routes = table((M("/a/"), "first"), (M("/x/"), "other"), (M("/a/"), "second"))
    assert routes.match("h", "/a/b", "GET") == "first"
    hosted = table((M("/a/", host="h.example"), "first"), (M("/a/", host="H.EXAMPLE"), "second"))
    assert hosted.match("h.example", "/a/", "GET") == "first"
