"""Traces that join the mesh (SPEC §2 step 3, §8), against a real OTLP/HTTP receiver."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from tests.conftest import (
    RunningEdge,
    RunningReceiver,
    StartEdge,
    Upstream,
    closed_port_url,
    edge_config,
)

SERVER, CLIENT = 2, 3  # opentelemetry.proto.trace.v1.Span.SpanKind
CANARIES = ("tok-canary-3f9a", "cookie-canary-77b1", "alice.canary@contoso.com", "q-canary-1c2d")
INCOMING = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def traced_config(upstream: Upstream, endpoint: str, **overrides: Any) -> dict[str, Any]:
    return edge_config(upstream.url, telemetry={"otlp_endpoint": endpoint}, **overrides)


async def flush(edge: RunningEdge) -> None:
    await asyncio.get_running_loop().run_in_executor(None, edge.edge.tracing.flush)


def sent_headers(upstream: Upstream) -> dict[str, str]:
    return {name.lower(): value for name, value in upstream.seen.last.headers.items()}


async def get(edge: RunningEdge, path: str, headers: dict[str, str]) -> aiohttp.ClientResponse:
    async with aiohttp.ClientSession() as client, client.get(edge.url + path, headers=headers) as r:
        await r.read()
        return r


async def test_server_and_client_spans_join_the_upstream_trace(
    upstream: Upstream, otlp_receiver: RunningReceiver, start_edge: StartEdge
) -> None:
    edge = await start_edge(traced_config(upstream, otlp_receiver.url))
    sent = {
        "Authorization": f"Bearer {CANARIES[0]}",
        "Cookie": f"__Host-iap={CANARIES[1]}",
        "X-Email": CANARIES[2],
        "traceparent": INCOMING,
    }
    resp = await get(edge, f"/orders?code={CANARIES[3]}", sent)
    assert resp.status == 200
    await flush(edge)

    [server] = otlp_receiver.received.by_kind(SERVER)
    [client] = otlp_receiver.received.by_kind(CLIENT)
    assert server.service == "iap"
    assert server.name == "GET app"
    assert client.trace_id == server.trace_id
    assert client.parent_span_id == server.span_id
    # The client is untrusted: a new trace, linked to the one it claimed.
    assert server.trace_id != INCOMING.split("-")[1]
    assert server.parent_span_id == ""
    assert server.links == [(INCOMING.split("-")[1], INCOMING.split("-")[2])]

    upstream_sees = sent_headers(upstream)
    _version, trace_id, parent_id, _flags = upstream_sees["traceparent"].split("-")
    assert (trace_id, parent_id) == (server.trace_id, client.span_id)
    assert upstream_sees["x-b3-traceid"] == server.trace_id
    assert upstream_sees["x-b3-spanid"] == client.span_id
    assert upstream_sees["x-b3-sampled"] == "1"

    attributes = server.attributes
    assert attributes["iap.route"] == "app"
    assert attributes["iap.authz.decision"] == "allow"
    assert attributes["iap.authz.reason"] == "public"
    assert attributes["iap.correlation_id"] == resp.headers["X-Correlation-ID"]
    assert attributes["http.response.status_code"] == 200
    assert attributes["url.path"] == "/orders"
    assert client.attributes["http.response.status_code"] == 200
    assert [name for name, _ in server.events] == ["iap.authz"]

    exported = json.dumps([span.__dict__ for span in otlp_receiver.received.spans])
    for canary in CANARIES:
        assert canary not in exported

    [line] = edge.audit_lines()
    assert (line["trace_id"], line["span_id"]) == (server.trace_id, server.span_id)


async def test_trusted_proxy_context_is_continued(
    upstream: Upstream, otlp_receiver: RunningReceiver, start_edge: StartEdge
) -> None:
    document = traced_config(upstream, otlp_receiver.url, trusted_proxies=["127.0.0.0/8"])
    edge = await start_edge(document)
    await get(edge, "/", {"traceparent": INCOMING})
    await flush(edge)
    [server] = otlp_receiver.received.by_kind(SERVER)
    _, incoming_trace, incoming_span, _ = INCOMING.split("-")
    assert (server.trace_id, server.parent_span_id) == (incoming_trace, incoming_span)
    assert sent_headers(upstream)["traceparent"].split("-")[1] == incoming_trace


async def test_refused_requests_are_traced_without_a_client_span(
    upstream: Upstream, otlp_receiver: RunningReceiver, start_edge: StartEdge
) -> None:
    document = traced_config(upstream, otlp_receiver.url)
    document["routes"].append(
        {"name": "down", "upstream": closed_port_url(), "policy": {"public": True},
         "match": {"path_prefix": "/down/"}}
    )  # fmt: skip
    edge = await start_edge(document)
    assert (await get(edge, "/.iap/nope", {})).status == 404
    assert (await get(edge, "/down/x", {})).status == 502
    await flush(edge)
    servers = otlp_receiver.received.by_kind(SERVER)
    assert sorted(span.attributes["http.response.status_code"] for span in servers) == [404, 502]
    [client] = otlp_receiver.received.by_kind(CLIENT)
    assert client.attributes["error.type"] == "upstream_unreachable"


async def test_client_sent_trace_headers_never_reach_the_upstream_as_sent(
    upstream: Upstream, start_edge: StartEdge
) -> None:
    edge = await start_edge(edge_config(upstream.url))
    spoofed = {"traceparent": INCOMING, "x-b3-traceid": "f" * 32, "baggage": "user=admin"}
    await get(edge, "/", spoofed)
    seen = sent_headers(upstream)
    # Tracing is off here (no exporter) and the client is untrusted: nothing to propagate.
    for name in ("traceparent", "x-b3-traceid", "baggage"):
        assert name not in seen


async def test_tracing_off_passes_a_trusted_context_through(
    upstream: Upstream, start_edge: StartEdge
) -> None:
    edge = await start_edge(edge_config(upstream.url, trusted_proxies=["127.0.0.0/8"]))
    await get(edge, "/", {"traceparent": INCOMING})
    seen = sent_headers(upstream)
    assert seen["traceparent"] == INCOMING
    assert seen["x-b3-traceid"] == INCOMING.split("-")[1]


async def test_exporter_down_never_fails_requests_and_drops_are_counted(
    upstream: Upstream, start_edge: StartEdge
) -> None:
    document = edge_config(
        upstream.url, telemetry={"otlp_endpoint": closed_port_url(), "export_timeout": "1s"}
    )
    edge = await start_edge(document)
    for _ in range(5):
        assert (await get(edge, "/", {})).status == 200
    await flush(edge)
    async with aiohttp.ClientSession() as client, client.get(f"{edge.admin_url}/metrics") as r:
        metrics = await r.text()
    [dropped] = [
        line for line in metrics.splitlines() if line.startswith("iap_spans_dropped_total")
    ]
    assert float(dropped.split()[1]) == 10.0  # five SERVER and five CLIENT spans


async def test_failed_exports_are_counted_while_running(
    upstream: Upstream, start_edge: StartEdge
) -> None:
    document = edge_config(
        upstream.url, telemetry={"otlp_endpoint": closed_port_url(), "export_timeout": "1s"}
    )
    edge = await start_edge(document)
    for _ in range(3):
        assert (await get(edge, "/", {})).status == 200
    async with aiohttp.ClientSession() as client, asyncio.timeout(60):  # a hang guard
        while True:  # no flush: the exporter reports failures on its own
            async with client.get(f"{edge.admin_url}/metrics") as r:
                metrics = await r.text()
            if "iap_spans_dropped_total 6.0" in metrics:
                break
