"""Requests the HTTP parser refuses are counted like any other (docs/operations.md, Metrics):
``iap_requests_total`` under route ``_none``, with their method when the request line said it,
and their audit line carries the bytes that arrived and were sent."""

from __future__ import annotations

import aiohttp

from tests.conftest import RunningEdge
from tests.support.http import raw_request, request_head


async def scrape(edge: RunningEdge) -> str:
    async with aiohttp.ClientSession() as client, client.get(f"{edge.admin_url}/metrics") as resp:
        return await resp.text()


async def test_oversized_header_is_counted_as_a_431_of_its_method(edge: RunningEdge) -> None:
    head = request_head("/", "X-Big: " + "a" * 40_000, method="POST")
    answer = await raw_request(edge.port, head)
    assert answer.status == 431
    text = await scrape(edge)
    assert 'iap_requests_total{code="431",method="POST",route="_none"} 1.0' in text
    assert 'iap_request_duration_seconds_count{route="_none"} 1.0' in text
    [line] = edge.audit_lines()
    assert (line["status"], line["method"], line["reason"]) == (431, "POST", "malformed_request")
    assert line["bytes_in"] >= 40_000
    assert line["bytes_out"] == len(answer.body) > 0


async def test_garbage_request_line_is_counted_as_a_400_without_a_method(
    edge: RunningEdge,
) -> None:
    answer = await raw_request(edge.port, b"GARBAGE\x01 / HTTP/1.1\r\n")
    assert answer.status == 400
    text = await scrape(edge)
    assert 'iap_requests_total{code="400",method="OTHER",route="_none"} 1.0' in text
    [line] = edge.audit_lines()
    assert (line["status"], line["method"]) == (400, "")
    assert line["bytes_in"] == len(b"GARBAGE\x01 / HTTP/1.1\r\n\r\n")  # with the blank line


async def test_a_refusal_after_a_good_request_is_counted_once_with_its_own_method(
    edge: RunningEdge,
) -> None:
    async with aiohttp.ClientSession() as client, client.get(f"{edge.url}/ok") as resp:
        assert resp.status == 200
    answer = await raw_request(edge.port, request_head("/", "X-Big: " + "a" * 40_000))
    assert answer.status == 431
    text = await scrape(edge)
    assert 'iap_requests_total{code="200",method="GET",route="app"} 1.0' in text
    assert 'iap_requests_total{code="431",method="GET",route="_none"} 1.0' in text
    assert [line["status"] for line in edge.audit_lines()] == [200, 431]
