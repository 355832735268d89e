"""The streaming reverse proxy over real loopback sockets (SPEC §2 steps 1, 2, 4, 5, 10)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.conftest import RunningEdge, StartEdge, Upstream, closed_port_url, edge_config
from tests.support.http import raw_request, request_head
from tests.unit.test_audit import FIELDS as AUDIT_FIELDS  # SPEC §8, written out once

FORBIDDEN_IN_ERRORS = ("Traceback", "aiohttp", "Python", 'File "', "Error(")


def upstream_headers(payload: dict[str, object]) -> dict[str, list[str]]:
    seen: dict[str, list[str]] = {}
    for name, value in payload["headers"]:  # type: ignore[union-attr]
        seen.setdefault(name.lower(), []).append(value)
    return seen


async def test_forwards_and_correlates(edge: RunningEdge, upstream: Upstream) -> None:
    async with aiohttp.ClientSession() as client, client.get(f"{edge.url}/hello?x=1") as resp:
        assert resp.status == 200
        payload = await resp.json()
        correlation_id = resp.headers["X-Correlation-ID"]
        assert resp.headers["Server"] == "iap"
    assert payload["path"] == "/hello?x=1"
    headers = upstream_headers(payload)
    assert headers["x-correlation-id"] == [correlation_id]
    assert headers["x-request-id"] == [correlation_id]
    assert headers["x-forwarded-proto"] == ["http"]
    assert headers["host"] == [f"127.0.0.1:{edge.port}"]
    [line] = edge.audit_lines()
    assert line["correlation_id"] == correlation_id
    assert (line["status"], line["route"], line["path"]) == (200, "app", "/hello")


async def test_untrusted_correlation_id_is_replaced(edge: RunningEdge) -> None:
    async with (
        aiohttp.ClientSession() as client,
        client.get(f"{edge.url}/", headers={"X-Correlation-ID": "chosen-by-client"}) as resp,
    ):
        payload = await resp.json()
    assert resp.headers["X-Correlation-ID"] != "chosen-by-client"
    assert upstream_headers(payload)["x-correlation-id"] == [resp.headers["X-Correlation-ID"]]


async def test_trusted_proxy_correlation_id_and_forwarded_for_are_kept(
    upstream: Upstream, start_edge: StartEdge
) -> None:
    edge = await start_edge(edge_config(upstream.url, trusted_proxies=["127.0.0.0/8"]))
    sent = {"X-Correlation-ID": "lb-1234", "X-Forwarded-For": "203.0.113.9"}
    async with aiohttp.ClientSession() as client, client.get(edge.url, headers=sent) as resp:
        payload = await resp.json()
    headers = upstream_headers(payload)
    assert resp.headers["X-Correlation-ID"] == "lb-1234"
    assert headers["x-correlation-id"] == ["lb-1234"]
    assert headers["x-forwarded-for"] == ["203.0.113.9, 127.0.0.1"]
    assert edge.audit_lines()[0]["client_ip"] == "203.0.113.9"


async def test_spoofed_forwarded_headers_from_untrusted_peer_are_replaced(
    edge: RunningEdge,
) -> None:
    sent = {
        "X-Forwarded-For": "10.9.9.9",
        "X-Forwarded-Host": "admin.internal",
        "X-Forwarded-Proto": "https",
        "X-Real-IP": "10.9.9.9",
        "X-Original-URI": "/admin",
        "Forwarded": "for=10.9.9.9",
    }
    async with aiohttp.ClientSession() as client, client.get(edge.url, headers=sent) as resp:
        headers = upstream_headers(await resp.json())
    assert headers["x-forwarded-for"] == ["127.0.0.1"]
    assert headers["x-forwarded-host"] == [f"127.0.0.1:{edge.port}"]
    assert headers["x-forwarded-proto"] == ["http"]
    for name in ("x-real-ip", "x-original-uri", "forwarded"):
        assert name not in headers
    assert edge.audit_lines()[0]["client_ip"] == "127.0.0.1"


async def test_connection_nominated_and_hop_by_hop_headers_are_removed(edge: RunningEdge) -> None:
    head = request_head(
        "/", "Connection: X-Foo, keep-alive", "X-Foo: secret", "Keep-Alive: 5", "X-Bar: kept"
    )
    answer = await raw_request(edge.port, head)
    headers = upstream_headers(json.loads(answer.body))
    assert "x-foo" not in headers
    assert "keep-alive" not in headers
    assert headers["x-bar"] == ["kept"]


async def test_client_identity_headers_never_reach_upstream(edge: RunningEdge) -> None:
    head = request_head(
        "/",
        "X-IAP-Subject: admin",
        "x_iap_subject: admin",
        "X-Iap-Roles: admin",
        "X-Forwarded-User: admin",
        "X_Auth_Request_Email: ceo@contoso.com",
    )
    headers = upstream_headers(json.loads((await raw_request(edge.port, head)).body))
    assert not [name for name in headers if name.replace("_", "-").startswith("x-iap-")]
    assert "x-forwarded-user" not in headers
    assert "x_auth_request_email" not in headers


@pytest.mark.parametrize(
    ("target", "forwarded_path"),
    [("/a/../b", "/b"), ("/%2e%2e/b", "/b"), ("/x/%2E/y//z", "/x/y/z"), ("/%7Euser", "/~user")],
)
async def test_paths_are_forwarded_normalised(
    edge: RunningEdge, target: str, forwarded_path: str
) -> None:
    answer = await raw_request(edge.port, request_head(target))
    assert answer.status == 200
    assert json.loads(answer.body)["path"] == forwarded_path


@pytest.mark.parametrize("target", ["/a%2fb", "/a%5Cb", "/a\\b", "/a/..;/b", "/a%00b", "/%C0%AF"])
async def test_ambiguous_paths_are_refused(
    edge: RunningEdge, upstream: Upstream, target: str
) -> None:
    answer = await raw_request(edge.port, request_head(target))
    assert answer.status == 400
    assert json.loads(answer.body)["error"] == "bad_request"
    assert upstream.seen.requests == []


async def test_reserved_prefix_and_unrouted_paths_are_not_forwarded(
    upstream: Upstream, start_edge: StartEdge
) -> None:
    edge = await start_edge(edge_config(upstream.url, route={"match": {"path_prefix": "/api/"}}))
    async with aiohttp.ClientSession() as client:
        for path in ("/.iap/anything", "/other", "/api/../.iap/x"):
            async with client.get(edge.url + path) as resp:
                assert resp.status == 404, path
                assert (await resp.json())["error"] == "no_route"
    assert upstream.seen.requests == []


async def test_routes_by_host_longest_prefix_and_method(
    upstream: Upstream, start_edge: StartEdge
) -> None:
    closed = closed_port_url()
    document = edge_config(upstream.url, route={"match": {"path_prefix": "/"}})
    document["routes"] += [
        {
            "name": "writes",
            "upstream": closed,
            "policy": {"public": True},
            "match": {"path_prefix": "/api/", "methods": ["POST"]},
        },
        {
            "name": "other-host",
            "upstream": closed,
            "policy": {"public": True},
            "match": {"host": "other.test", "path_prefix": "/"},
        },
    ]
    edge = await start_edge(document)
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{edge.url}/api/x") as resp:
            assert resp.status == 200  # GET falls through to "/"
        async with client.post(f"{edge.url}/api/x") as resp:
            assert resp.status == 502  # the POST-only route, whose upstream is down
    routes = [line["route"] for line in edge.audit_lines()]
    assert routes == ["app", "writes"]


async def test_header_count_limit_gives_431(edge: RunningEdge, upstream: Upstream) -> None:
    head = request_head("/", *(f"X-H{i}: v" for i in range(200)))
    answer = await raw_request(edge.port, head)
    assert answer.status == 431
    assert json.loads(answer.body)["error"] == "headers_too_large"
    assert upstream.seen.requests == []


async def test_oversized_header_gives_431(edge: RunningEdge) -> None:
    answer = await raw_request(edge.port, request_head("/", "X-Big: " + "a" * 40_000))
    assert answer.status == 431
    assert answer.headers["server"] == "iap"


async def test_upstream_refused_gives_generic_502(start_edge: StartEdge) -> None:
    edge = await start_edge(edge_config(closed_port_url()))
    async with aiohttp.ClientSession() as client, client.get(edge.url) as resp:
        text = await resp.text()
        assert resp.status == 502
        assert resp.headers["Server"] == "iap"
    body = json.loads(text)
    assert body["error"] == "upstream_unreachable"
    assert body["correlation_id"] == resp.headers["X-Correlation-ID"]
    assert not any(marker in text for marker in FORBIDDEN_IN_ERRORS)
    assert edge.audit_lines()[0]["status"] == 502


async def test_upstream_hung_gives_generic_504(edge: RunningEdge, upstream: Upstream) -> None:
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{edge.url}/hold", headers={"Accept": "text/html"}) as resp:
            text = await resp.text()
    assert resp.status == 504
    assert resp.content_type == "text/html"
    assert resp.headers["X-Correlation-ID"] in text
    assert not any(marker in text for marker in FORBIDDEN_IN_ERRORS)
    assert upstream.seen.arrived.is_set()
    [line] = edge.audit_lines()
    assert (line["status"], line["reason"]) == (504, "upstream_timeout")


async def test_circuit_opens_after_repeated_connect_failures(start_edge: StartEdge) -> None:
    document = edge_config(closed_port_url(), route={"circuit": {"failures": 2, "cooldown": "1h"}})
    edge = await start_edge(document)
    async with aiohttp.ClientSession() as client:
        statuses, retry_after = [], []
        for _ in range(3):
            async with client.get(edge.url) as resp:
                statuses.append(resp.status)
                retry_after.append(resp.headers.get("Retry-After"))
    assert statuses == [502, 502, 503]
    assert edge.audit_lines()[-1]["reason"] == "circuit_open"
    # The open circuit says when it lets a trial through: the rest of its 1 h cool-down.
    assert retry_after[:2] == [None, None]
    assert retry_after[2] is not None
    assert 3000 < int(retry_after[2]) <= 3600


async def test_body_limit_by_content_length(upstream: Upstream, start_edge: StartEdge) -> None:
    edge = await start_edge(edge_config(upstream.url, route={"max_body": "1KiB"}))
    async with aiohttp.ClientSession() as client:
        async with client.post(f"{edge.url}/upload", data=b"x" * 2048) as resp:
            assert resp.status == 413
        async with client.post(f"{edge.url}/upload", data=b"x" * 1024) as resp:
            assert resp.status == 200
    assert len(upstream.seen.requests) == 1


async def test_body_limit_on_chunked_upload(upstream: Upstream, start_edge: StartEdge) -> None:
    edge = await start_edge(edge_config(upstream.url, route={"max_body": "100KiB"}))

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"y" * 20_000

    async with aiohttp.ClientSession() as client:
        async with client.post(f"{edge.url}/upload", data=chunks()) as resp:
            assert resp.status == 413
    [line] = edge.audit_lines()
    assert line["reason"] == "body_too_large"


async def test_chunked_bodies_both_ways(edge: RunningEdge) -> None:
    blocks = [bytes([i]) * 70_000 for i in range(5)]

    async def chunks() -> AsyncIterator[bytes]:
        for block in blocks:
            yield block

    async with aiohttp.ClientSession() as client:
        async with client.post(f"{edge.url}/upload", data=chunks()) as resp:
            result = await resp.json()
        assert result["transfer_encoding"] == "chunked"
        assert result["bytes"] == sum(map(len, blocks))
        assert result["sha256"] == hashlib.sha256(b"".join(blocks)).hexdigest()
        async with client.get(f"{edge.url}/big?n=300000&chunked=1") as resp:
            body = await resp.read()
            assert resp.headers.get("Transfer-Encoding") == "chunked"
            assert "Content-Length" not in resp.headers
    assert body == b"x" * 300_000


async def test_expect_continue_is_answered(edge: RunningEdge) -> None:
    async with aiohttp.ClientSession() as client:
        async with client.post(f"{edge.url}/upload", data=b"z" * 100_000, expect100=True) as resp:
            assert (await resp.json())["bytes"] == 100_000


async def test_head_keeps_content_length_without_body(edge: RunningEdge) -> None:
    answer = await raw_request(edge.port, request_head("/big?n=12345", method="HEAD"))
    assert answer.status == 200
    assert answer.headers["content-length"] == "12345"
    assert answer.body == b""


async def test_websocket_echo(edge: RunningEdge, upstream: Upstream) -> None:
    async with (
        aiohttp.ClientSession() as client,
        client.ws_connect(f"{edge.url}/ws", protocols=("chat",)) as ws,
    ):
        assert ws.protocol == "chat"
        await ws.send_str("hello")
        assert json.loads(await ws.receive_str()) == {"echo": "hello"}
        await ws.send_bytes(b"abc")
        assert await ws.receive_bytes() == b"cba"
    headers = {name.lower() for name in upstream.seen.last.headers}
    assert "x-correlation-id" in headers
    [line] = await edge.wait_audit_lines(1)
    assert line["status"] == 101
    assert line["bytes_in"] == 8


async def test_html_error_page_for_browsers(edge: RunningEdge) -> None:
    async with (
        aiohttp.ClientSession() as client,
        client.get(f"{edge.url}/.iap/nothing", headers={"Accept": "text/html,*/*;q=0.8"}) as resp,
    ):
        text = await resp.text()
    assert resp.status == 404
    assert resp.content_type == "text/html"
    assert f"<code id='correlation-id'>{resp.headers['X-Correlation-ID']}</code>" in text


async def test_malformed_request_gets_generic_error_and_audit_line(edge: RunningEdge) -> None:
    answer = await raw_request(edge.port, b"GARBAGE\x01 / HTTP/1.1\r\n")
    assert answer.status == 400
    assert answer.headers["server"] == "iap"
    assert b"aiohttp" not in answer.body
    [line] = edge.audit_lines()
    assert line["reason"] == "malformed_request"


async def test_admin_endpoints(edge: RunningEdge) -> None:
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{edge.url}/x") as resp:
            assert resp.status == 200
        async with client.get(f"{edge.admin_url}/healthz") as resp:
            assert resp.status == 200
        async with client.get(f"{edge.admin_url}/readyz") as resp:
            assert resp.status == 200
            assert (await resp.json())["status"] == "ready"
        async with client.get(f"{edge.admin_url}/metrics") as resp:
            text = await resp.text()
    assert 'iap_requests_total{code="200",method="GET",route="app"} 1.0' in text
    assert 'iap_request_duration_seconds_count{route="app"} 1.0' in text
    assert 'iap_upstream_duration_seconds_count{route="app"} 1.0' in text
    edge.edge.gateway.draining = True
    async with aiohttp.ClientSession() as client, client.get(f"{edge.admin_url}/readyz") as resp:
        assert resp.status == 503


async def test_one_audit_line_per_request_of_every_kind(
    upstream: Upstream, start_edge: StartEdge
) -> None:
    document = edge_config(upstream.url, route={"timeouts": {"read": "0.2s"}})
    document["routes"].insert(
        0,
        {
            "name": "down",
            "upstream": closed_port_url(),
            "policy": {"public": True},
            "match": {"path_prefix": "/down/"},
        },
    )
    edge = await start_edge(document)
    async with aiohttp.ClientSession() as client:
        for path in ("/ok", "/.iap/x", "/down/x", "/hold"):
            async with client.get(edge.url + path) as resp:
                await resp.read()
    await raw_request(edge.port, request_head("/", *(f"X-H{i}: v" for i in range(200))))
    lines = edge.audit_lines()
    assert [line["status"] for line in lines] == [200, 404, 502, 504, 431]
    assert all(set(line) == AUDIT_FIELDS for line in lines)
    assert len({line["correlation_id"] for line in lines}) == 5


@pytest.mark.parametrize("length", [9000, 20_000, 100_000])
async def test_overlong_request_target_gives_414(edge: RunningEdge, length: int) -> None:
    answer = await raw_request(edge.port, request_head("/" + "a" * length))
    assert answer.status == 414
    assert answer.headers["server"] == "iap"


@pytest.mark.parametrize("value", ["/" + "a" * 70_000, "a" * 70_000])
async def test_overlong_header_gives_431_whatever_it_starts_with(
    edge: RunningEdge, value: str
) -> None:
    answer = await raw_request(edge.port, request_head("/", f"X-Big: {value}"))
    assert answer.status == 431


async def test_websocket_messages_are_bounded_by_max_body(
    upstream: Upstream, start_edge: StartEdge
) -> None:
    edge = await start_edge(edge_config(upstream.url, route={"max_body": "1KiB"}))
    async with aiohttp.ClientSession() as client, client.ws_connect(f"{edge.url}/ws") as ws:
        await ws.send_str("small")
        assert json.loads(await ws.receive_str()) == {"echo": "small"}
        await ws.send_str("x" * 4096)
        closing = await ws.receive()
        assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG


async def test_websocket_handshake_headers_belong_to_each_hop(
    edge: RunningEdge, upstream: Upstream
) -> None:
    """The client's key and extension offer are for iap, not the upstream: forwarding them
    would duplicate the key and let the upstream agree to compression iap never negotiated."""
    async with (
        aiohttp.ClientSession() as client,
        client.ws_connect(f"{edge.url}/ws", protocols=("chat",), compress=15) as ws,
    ):
        await ws.send_str("hello")
        assert json.loads(await ws.receive_str()) == {"echo": "hello"}
    seen = upstream.seen.last.headers
    assert len(seen.getall("Sec-WebSocket-Key")) == 1
    assert len(seen.getall("Sec-WebSocket-Version")) == 1
    assert "Sec-WebSocket-Extensions" not in seen
    assert seen.getall("Sec-WebSocket-Protocol") == ["chat"]
