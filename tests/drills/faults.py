"""The dependencies of a drill, each one a real server that a test can break and mend.

- :class:`DrillRedis`: a redis-server on a fixed port with an fsync'ed append-only file, so
  SIGKILL and a restart on the same port keep the sessions (a crash, not a wipe).
- :class:`DrillIdP`: the dev IdP in this process; ``stop`` closes its listener *and* every
  connection iap holds to it, ``start`` serves the same state (keys, clients) again.
- :class:`DrillUpstream`: the test upstream (``tests.support.upstream``, recording every
  request) with a switch that sends the response headers and the start of the body, then
  aborts the connection (a reset mid-response): by turns a 4 KiB body cut after 12 bytes and
  a 256 KiB one cut after 64 KiB.
- :class:`DrillCollector`: the OTLP receiver of ``tests.support.otlp``, or on the same port a
  black hole that accepts connections and reads, but never answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from iap.dev.idp import DEV_IDP, RunningDevIdP, start_dev_idp
from iap.dev.idp.app import dev_idp_app
from tests.conftest import free_port
from tests.support.otlp import Receiver, receiver_app
from tests.support.redis_server import _answers_ping, redis_server_binary
from tests.support.upstream import CHUNK, Seen, upstream_app

HANG_GUARD = 30  # seconds: only against a hang, never a performance bound

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class DrillRedis:
    directory: Path
    port: int = field(default_factory=free_port)
    proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        """Start (or restart) on the same port; returns once it answers PING."""
        self.proc = await asyncio.create_subprocess_exec(
            *(redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "yes", "--appendfsync", "always"),
            *("--dir", str(self.directory)),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        async with asyncio.timeout(HANG_GUARD):
            while not await _answers_ping(self.port):
                if self.proc.returncode is not None:
                    raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
                await asyncio.sleep(0.02)

    async def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill: no shutdown, no goodbye to the clients."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            await self.kill()


@dataclass
class DrillIdP:
    running: RunningDevIdP
    port: int

    @classmethod
    async def start_new(cls, client_id: str, secret: str, public: str) -> DrillIdP:
        running = await start_dev_idp(
            client_id=client_id,
            client_secret=secret,
            redirect_uris=[f"{public}/.iap/callback"],
            post_logout_redirect_uris=[f"{public}/"],
        )
        return cls(running, running.runner.addresses[0][1])

    @property
    def url(self) -> str:
        return self.running.url

    async def stop(self) -> None:
        """Close the listener and every open connection: the IdP is gone."""
        await self.running.runner.cleanup()

    async def start(self) -> None:
        """Serve the same IdP state on the same port again."""
        state = self.running.idp
        app = dev_idp_app(
            state.base_url,
            client_id=state.client_id,
            client_secret=state.client_secret,
            redirect_uris=state.redirect_uris,
        )
        app[DEV_IDP] = state  # the same keys, codes and refresh tokens as before the outage
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        self.running = RunningDevIdP(runner, state)


@dataclass
class DrillUpstream:
    seen: Seen = field(default_factory=Seen)
    resetting: bool = False
    resets: int = 0
    runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        assert self.runner is not None
        return f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    async def start(self) -> None:
        app = upstream_app(self.seen)
        app.middlewares.append(self._maybe_reset)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()

    @web.middleware
    async def _maybe_reset(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not self.resetting:
            return await handler(request)
        self.seen.requests.append(request)  # recorded like every other request
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        large = self.resets % 2 == 1  # every other one: iap streams it rather than reads it
        response.content_length = 4 * CHUNK if large else 4096
        await response.prepare(request)
        await response.write(b"x" * (CHUNK if large else 12))
        self.resets += 1
        assert request.transport is not None
        request.transport.abort()  # RST, not FIN: the body stops short of Content-Length
        return response

    async def stop(self) -> None:
        self.seen.release.set()
        if self.runner is not None:
            await self.runner.cleanup()


@dataclass
class DrillCollector:
    received: Receiver = field(default_factory=Receiver)
    port: int = field(default_factory=free_port)
    runner: web.AppRunner | None = None
    hole: asyncio.Server | None = None
    swallowed: int = 0  # connections the black hole accepted
    _held: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.runner = web.AppRunner(receiver_app(self.received), access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def black_hole(self) -> None:
        """Stop answering: the receiver goes, a listener that reads and never writes comes."""
        assert self.runner is not None
        await self.runner.cleanup()
        self.hole = await asyncio.start_server(self._swallow, "127.0.0.1", self.port)

    async def _swallow(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.swallowed += 1
        self._held.add(writer)
        with contextlib.suppress(OSError):
            while await reader.read(65536):
                pass
        self._held.discard(writer)
        writer.close()

    def _close_hole(self) -> None:
        assert self.hole is not None
        self.hole.close()
        for writer in list(self._held):
            writer.transport.abort()

    async def mend(self) -> None:
        """The black hole closes (with its connections); the receiver answers again."""
        assert self.hole is not None
        self._close_hole()
        await self.hole.wait_closed()
        self.hole = None
        await self.start()

    async def stop(self) -> None:
        if self.hole is not None:
            self._close_hole()
        if self.runner is not None:
            await self.runner.cleanup()
