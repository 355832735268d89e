"""The drills' load: about 200 requests/s over a fixed set of keep-alive connections.

A fixed number of sender tasks share one aiohttp session (one connection each at most) and a
token bucket paced by the event loop's clock; each sender takes a token, sends the next
request of the round robin over the routes and records what came back. When answers are
slow the rate drops instead of a backlog building up (at most ``burst`` tokens are saved).
Every response is recorded with its loop-clock times, its route and its status (0 when no
HTTP answer came: refused, reset, timed out) and, when the body stopped short, ``error``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field

import aiohttp


@dataclass(frozen=True)
class Route:
    name: str  # public, cookie or bearer
    path: str
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    route: str
    sent: float  # loop clock
    done: float
    status: int  # 0: no HTTP answer
    error: str = ""  # the exception's class name, or "" when the whole body arrived
    retry_after: bool = False

    @property
    def ok(self) -> bool:
        return self.status == 200 and not self.error

    def overlaps(self, start: float, end: float) -> bool:
        return self.sent <= end and self.done >= start


class Pacer:
    """A token bucket on the loop clock: ``rate`` tokens a second, at most ``burst`` saved."""

    def __init__(self, rate: float, burst: int = 10) -> None:
        self.interval = 1 / rate
        self.burst = burst
        self.next = asyncio.get_running_loop().time()

    async def take(self) -> None:
        now = asyncio.get_running_loop().time()
        slot = max(self.next, now - self.burst * self.interval)
        self.next = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)  # pacing the load generator, not waiting on state


@dataclass
class Load:
    base: str
    routes: Sequence[Route]
    rate: float = 200.0
    connections: int = 8
    outcomes: list[Outcome] = field(default_factory=list)
    _running: bool = True
    _order: itertools.cycle[Route] | None = None

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def hold(self, seconds: float) -> None:
        """Let the load run for ``seconds`` of loop time (a phase of the drill)."""
        await asyncio.sleep(seconds)  # the length of a load phase, not a wait for a condition

    def since(self, start: float) -> list[Outcome]:
        return [outcome for outcome in self.outcomes if outcome.sent >= start]

    async def _send(self, http: aiohttp.ClientSession, route: Route) -> None:
        sent, status, error, retry_after = self.now(), 0, "", False
        try:
            async with http.get(
                self.base + route.path, headers=dict(route.headers), allow_redirects=False
            ) as answer:
                status, retry_after = answer.status, "Retry-After" in answer.headers
                await answer.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            error = type(exc).__name__
        self.outcomes.append(Outcome(route.name, sent, self.now(), status, error, retry_after))

    async def _sender(self, http: aiohttp.ClientSession, pacer: Pacer) -> None:
        assert self._order is not None
        while self._running:
            await pacer.take()
            if self._running:
                await self._send(http, next(self._order))


@contextlib.asynccontextmanager
async def running_load(load: Load) -> AsyncIterator[Load]:
    """``load`` sending from entry to exit; in-flight requests finish before it returns."""
    connector = aiohttp.TCPConnector(limit=load.connections)
    timeout = aiohttp.ClientTimeout(total=15)  # an unanswered request ends as status 0
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, cookie_jar=aiohttp.DummyCookieJar()
    ) as http:
        load._order = itertools.cycle(load.routes)
        pacer = Pacer(load.rate)
        senders = [
            asyncio.ensure_future(load._sender(http, pacer)) for _ in range(load.connections)
        ]
        try:
            yield load
        finally:
            load._running = False
            await asyncio.gather(*senders, return_exceptions=True)
