"""Fixtures: real loopback servers for the upstream and for iap itself."""

from __future__ import annotations

import asyncio
import io
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web

from iap import config
from iap.adapters.audit import AuditLog
from iap.app.wiring import build_edge
from iap.environment import Environment
from iap.web.server import Edge
from tests.support.otlp import Receiver, receiver_app
from tests.support.process import kill_leftovers
from tests.support.upstream import Seen, upstream_app


@dataclass
class Upstream:
    url: str
    seen: Seen


class AuditSink(io.StringIO):
    """The audit stream of an in-process iap; tests can wait for lines to arrive."""

    def __init__(self) -> None:
        super().__init__()
        self.written = asyncio.Event()

    def write(self, text: str) -> int:
        self.written.set()
        return super().write(text)


@dataclass
class RunningEdge:
    edge: Edge
    audit: AuditSink

    @property
    def url(self) -> str:
        return self.edge.public_url

    @property
    def port(self) -> int:
        assert self.edge.public_address is not None
        return self.edge.public_address[1]

    @property
    def admin_url(self) -> str:
        assert self.edge.admin_address is not None
        return f"http://127.0.0.1:{self.edge.admin_address[1]}"

    def audit_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.audit.getvalue().splitlines()]

    async def wait_audit_lines(self, count: int) -> list[dict[str, Any]]:
        """Audit lines once there are ``count``; for exchanges that finish after the client."""
        async with asyncio.timeout(30):  # a hang guard, not a performance bound
            while len(lines := self.audit_lines()) < count:
                self.audit.written.clear()
                await self.audit.written.wait()
        return lines


@pytest.fixture(autouse=True)
def _no_leftover_processes() -> Iterator[None]:
    yield
    kill_leftovers()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def closed_port_url() -> str:
    """An http URL where nothing listens: connections are refused."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    seen = Seen()
    runner = web.AppRunner(upstream_app(seen), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield Upstream(f"http://127.0.0.1:{port}", seen)
    seen.release.set()
    await runner.cleanup()


def edge_config(upstream_url: str, **overrides: Any) -> dict[str, Any]:
    """A minimal valid config document: one public route to ``upstream_url``."""
    route = {"name": "app", "upstream": upstream_url, "policy": {"public": True}}
    route.update(overrides.pop("route", {}))
    document: dict[str, Any] = {
        "public_url": "http://edge.test",
        "listen": {"address": "127.0.0.1:0"},
        "admin": {"address": "127.0.0.1:0"},
        "routes": [route],
    }
    document.update(overrides)
    return document


StartEdge = Callable[..., Awaitable[RunningEdge]]


@pytest.fixture
async def start_edge() -> AsyncIterator[StartEdge]:
    started: list[Edge] = []

    async def start(document: dict[str, Any]) -> RunningEdge:
        audit = AuditSink()
        edge = build_edge(config.parse(document), Environment(), audit=AuditLog(audit))
        await edge.start()
        started.append(edge)
        return RunningEdge(edge, audit)

    yield start
    for edge in started:
        await edge.stop()


@pytest.fixture
async def edge(upstream: Upstream, start_edge: StartEdge) -> RunningEdge:
    """iap in front of the test upstream with one public route."""
    return await start_edge(edge_config(upstream.url, route={"timeouts": {"read": "1s"}}))


@dataclass
class RunningReceiver:
    url: str
    received: Receiver


@pytest.fixture
async def otlp_receiver() -> AsyncIterator[RunningReceiver]:
    received = Receiver()
    runner = web.AppRunner(receiver_app(received), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield RunningReceiver(f"http://127.0.0.1:{runner.addresses[0][1]}", received)
    await runner.cleanup()
