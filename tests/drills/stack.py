"""A drill's stack: ``iap run --workers 2`` as a real process, in front of the drill upstream,
signing in with the dev IdP, exporting spans to the OTLP receiver and, for the Redis drill,
keeping sessions in a real redis-server. Signed in once (alice's cookie) and holding one
service's Entra access token, for the load's cookie and bearer routes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from iap.dev.idp import SERVICES
from tests.conftest import free_port
from tests.drills.faults import DrillCollector, DrillIdP, DrillRedis, DrillUpstream
from tests.drills.load import Load, Route
from tests.support.process import IapProcess, start_iap, write_config
from tests.support.signin import CLIENT_ID, CLIENT_SECRET, Visitor, signin_config

EDGE_API = "api://edge"
WORKERS = 2


@dataclass(frozen=True)
class WorkerSample:
    fds: int
    rss_kib: int


def sample(pid: int) -> WorkerSample:
    """Open file descriptors (``/proc/PID/fd``) and ``VmRSS`` of one worker."""
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return WorkerSample(fds, int(line.split()[1]))
    raise LookupError("VmRSS")


@dataclass
class Stack:
    iap: IapProcess
    idp: DrillIdP
    upstream: DrillUpstream
    collector: DrillCollector
    redis: DrillRedis | None
    jwks: dict[str, Any] = field(default_factory=dict)
    cookie: str = ""
    bearer: str = ""

    @property
    def issuer(self) -> str:
        return f"{self.iap.public_url}/.iap"

    def workers(self) -> dict[int, WorkerSample]:
        return {pid: sample(pid) for pid in self.iap.children()}

    def load(self) -> Load:
        return Load(
            self.iap.public_url,
            [
                Route("public", "/public/ping"),
                Route("cookie", "/app/ping", {"Cookie": self.cookie}),
                Route("bearer", "/api/ping", {"Authorization": f"Bearer {self.bearer}"}),
            ],
        )

    async def metrics(self) -> str:
        async with aiohttp.ClientSession() as http, http.get(f"{self.iap.admin_url}/metrics") as r:
            return await r.text()

    async def prepare(self) -> None:
        """Sign alice in, get the service's token and iap's JWKS (all before any fault)."""
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
            visitor = Visitor(http, self.iap.public_url)
            answer = await visitor.sign_in(rd="/app/")
            assert answer.status == 302, answer
            self.cookie = "; ".join(f"{k}={v}" for k, v in visitor.cookies.items())
            self.bearer = await service_token(http, self.idp.url)
            async with http.get(f"{self.issuer}/jwks.json") as jwks:
                self.jwks = await jwks.json()


async def service_token(http: aiohttp.ClientSession, idp_url: str) -> str:
    """A client-credentials access token of the dev IdP's ``orders-service`` for api://edge."""
    client = SERVICES["orders-service"]
    form = {
        "grant_type": "client_credentials",
        "client_id": client.client_id,
        "client_secret": client.secret,
        "scope": f"{EDGE_API}/.default",
    }
    async with http.post(f"{idp_url}/{client.tid}/oauth2/v2.0/token", data=form) as answer:
        assert answer.status == 200, await answer.text()
        return str((await answer.json())["access_token"])


def drill_config(
    port: int, idp: DrillIdP, upstream: str, otlp: str, directory: Path, redis: str | None
) -> dict[str, Any]:
    api = {
        "name": "api",
        "upstream": upstream,
        "match": {"path_prefix": "/api/"},
        "policy": {"allow": {"authenticated": True}},
    }
    overrides: dict[str, Any] = {
        "admin": {"address": f"127.0.0.1:{free_port()}"},
        "bearer": {"entra_audiences": [EDGE_API]},
        "telemetry": {"otlp_endpoint": otlp, "export_timeout": "2s"},
    }
    if redis is not None:
        overrides["redis"] = {"url": redis}
    session = {"store": "redis"} if redis is not None else {}
    return signin_config(
        upstream, idp.running, port, directory, session=session, extra_routes=[api], **overrides
    )


@contextlib.asynccontextmanager
async def running_stack(directory: Path, *, redis: bool = False) -> AsyncIterator[Stack]:
    """Every part started, alice signed in; everything stopped on the way out."""
    async with contextlib.AsyncExitStack() as parts:
        port = free_port()
        idp = await DrillIdP.start_new(CLIENT_ID, CLIENT_SECRET, f"http://127.0.0.1:{port}")
        parts.push_async_callback(lambda: idp.stop())
        upstream, collector = DrillUpstream(), DrillCollector()
        for part in (upstream, collector):
            await part.start()
            parts.push_async_callback(part.stop)
        store = DrillRedis(directory) if redis else None
        if store is not None:
            await store.start()
            parts.push_async_callback(store.stop)
        document = drill_config(
            port, idp, upstream.url, collector.url, directory, store.url if store else None
        )
        iap = await start_iap(
            "run", "-c", str(write_config(directory, document)), "--workers", str(WORKERS)
        )
        parts.push_async_callback(iap.stop)
        await iap.wait_for_stderr("iap listening: ", count=WORKERS)
        stack = Stack(iap, idp, upstream, collector, store)
        await stack.prepare()
        yield stack
