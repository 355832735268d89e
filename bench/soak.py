"""``make soak``: mixed traffic for SOAK_MINUTES (default 10) against ``iap run --workers 2``,
to show that nothing grows without bound.

The parts are real processes as in bench/run.py (whose helpers this reuses): the dev IdP
(bench/dev_idp.py), an upstream with echo, large-body, upload and WebSocket handlers
(bench/soak_upstream.py) and iap. The load, about SOAK_RATE requests/s (default 200) over
SOAK_CONNECTIONS keep-alive connections (default 8), takes turns over: a public GET, a GET
with alice's session cookie, a GET with a service's bearer token, and every 20th turn a 1 MiB
upload (cookie), a 1 MiB download (public) or a WebSocket (cookie; 10 echoed messages).

Each minute (and once before the first) it records every worker's RSS and open fds, and the
minute's requests, errors, p50 and p99 latency. The table and a verdict (:func:`verdict`: the
least-squares slope of each worker's RSS and fds over the last half of the samples, against
SOAK_RSS_SLOPE MiB/min, default 1.0, SOAK_FD_SLOPE fds/min, default 1.0, and a rise beyond
SOAK_RSS_NOISE MiB, default 4) are printed and written between the soak markers of
docs/PERFORMANCE.md (a shortened run too: the table says how many minutes it ran). Exit
status 1 when something grows or a request failed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import statistics
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import dev_idp
import run
import yaml

from iap.adapters.signing_keys import write_new_key
from iap.dev.idp import TENANT_A

BEGIN, END = "<!-- soak:begin -->", "<!-- soak:end -->"
MIB = 2**20
HOST = run.HOST


@dataclass(frozen=True)
class Settings:
    minutes: int
    rate: int
    connections: int
    rss_slope: float
    fd_slope: float
    rss_noise: float

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            run._env_int("SOAK_MINUTES", 10),
            run._env_int("SOAK_RATE", 200),
            run._env_int("SOAK_CONNECTIONS", 8),
            float(os.environ.get("SOAK_RSS_SLOPE", "1.0")),
            float(os.environ.get("SOAK_FD_SLOPE", "1.0")),
            float(os.environ.get("SOAK_RSS_NOISE", "4.0")),
        )


@dataclass
class Minute:
    index: int
    requests: int
    errors: int
    p50_ms: float
    p99_ms: float
    workers: list[tuple[float, int]]  # (RSS MiB, fds) per worker, in pid order


@dataclass
class Traffic:
    base: str
    cookie: str
    bearer: str
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)  # requests sent, per kind
    turn: int = 0

    async def one(self, http: aiohttp.ClientSession) -> None:
        self.turn += 1
        kind = ("public", "cookie", "bearer")[self.turn % 3]
        if self.turn % 20 == 0:
            kind = ("upload", "download", "websocket")[(self.turn // 20) % 3]
        self.kinds[kind] += 1
        start = asyncio.get_running_loop().time()
        try:
            await getattr(self, f"send_{kind}")(http)
        except (aiohttp.ClientError, TimeoutError, AssertionError) as exc:
            self.errors[f"{kind}: {type(exc).__name__} {exc}"[:120]] += 1
        self.latencies.append(asyncio.get_running_loop().time() - start)

    async def _get(self, http: aiohttp.ClientSession, path: str, **headers: str) -> bytes:
        async with http.get(self.base + path, headers=headers, allow_redirects=False) as answer:
            body = await answer.read()
            assert answer.status == 200, f"{path} answered {answer.status}"
            return body

    async def send_public(self, http: aiohttp.ClientSession) -> None:
        await self._get(http, "/public/ping")

    async def send_cookie(self, http: aiohttp.ClientSession) -> None:
        await self._get(http, "/app/ping", Cookie=self.cookie)

    async def send_bearer(self, http: aiohttp.ClientSession) -> None:
        await self._get(http, "/app/ping", Authorization=f"Bearer {self.bearer}")

    async def send_download(self, http: aiohttp.ClientSession) -> None:
        assert len(await self._get(http, f"/public/big?n={MIB}")) == MIB

    async def send_upload(self, http: aiohttp.ClientSession) -> None:
        headers = {"Cookie": self.cookie}
        async with http.post(f"{self.base}/app/upload", data=b"u" * MIB, headers=headers) as r:
            assert r.status == 200, f"upload answered {r.status}"
            assert (await r.json())["bytes"] == MIB

    async def send_websocket(self, http: aiohttp.ClientSession) -> None:
        async with http.ws_connect(f"{self.base}/ws/echo", headers={"Cookie": self.cookie}) as ws:
            for n in range(10):
                await ws.send_str(f"soak {n}")
                assert (await ws.receive_str()) == f"soak {n}"


def worker_samples(supervisor: int) -> list[tuple[float, int]]:
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    samples = []
    for pid in sorted(int(child) for child in children):
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
        samples.append((rss / 1024, len(os.listdir(f"/proc/{pid}/fd"))))
    return samples


def _percentile(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] * 1000 if values else 0.0
    return statistics.quantiles(values, n=100)[q - 1] * 1000


async def soak(traffic: Traffic, supervisor: int, settings: Settings) -> list[Minute]:
    """Send for ``settings.minutes``; one :class:`Minute` per minute, after minute 0."""
    loop = asyncio.get_running_loop()
    minutes = [Minute(0, 0, 0, 0.0, 0.0, worker_samples(supervisor))]
    connector = aiohttp.TCPConnector(limit=settings.connections)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        pacer = _Pacer(settings.rate)
        stop = loop.time() + 60 * settings.minutes

        async def sender() -> None:
            while loop.time() < stop:
                await pacer.take()
                await traffic.one(http)

        senders = [asyncio.ensure_future(sender()) for _ in range(settings.connections)]
        for index in range(1, settings.minutes + 1):
            await asyncio.sleep(max(0.0, stop - 60 * (settings.minutes - index) - loop.time()))
            latencies, traffic.latencies = traffic.latencies, []
            errors = sum(traffic.errors.values()) - sum(m.errors for m in minutes)
            p50, p99 = _percentile(latencies, 50), _percentile(latencies, 99)
            minutes.append(
                Minute(index, len(latencies), errors, p50, p99, worker_samples(supervisor))
            )
            print(f"soak: {_row(minutes[-1])}", file=sys.stderr, flush=True)
        await asyncio.gather(*senders)
    return minutes


class _Pacer:
    """A token bucket on the loop clock (the drills' pacer: tests/drills/load.py)."""

    def __init__(self, rate: float, burst: int = 10) -> None:
        self.interval, self.burst = 1 / rate, burst
        self.next = asyncio.get_running_loop().time()

    async def take(self) -> None:
        now = asyncio.get_running_loop().time()
        slot = max(self.next, now - self.burst * self.interval)
        self.next = slot + self.interval
        await asyncio.sleep(max(0.0, slot - now))


def slope(values: list[float]) -> float:
    """Least-squares slope per sample (per minute) of ``values``; 0 for fewer than 2."""
    if len(values) < 2:
        return 0.0
    return statistics.linear_regression(range(len(values)), values).slope


def _grows(values: list[float], per_minute: float, noise: float) -> tuple[bool, float]:
    """Growing: a slope of at least ``per_minute`` *and* a rise of more than ``noise`` from
    the first to the last value (two samples' difference alone is not a trend)."""
    rate = slope(values)
    return rate >= per_minute and values[-1] - values[0] > noise, rate


def verdict(minutes: list[Minute], settings: Settings) -> tuple[bool, str]:
    """Bounded unless a worker's RSS or fds rise steadily over the last half of the samples.

    Noise allowed: SOAK_RSS_NOISE MiB (default 4) of RSS, and as many fds as the load has
    connections (its keep-alives may move from one worker to the other).
    """
    half = minutes[len(minutes) // 2 :]
    if len(half) < 2:  # a one-minute run: both samples
        half = minutes
    parts, bounded = [], True
    for worker in range(len(minutes[0].workers)):
        alive = [m.workers[worker] for m in half if len(m.workers) > worker]
        rss_up, rss = _grows([r for r, _ in alive], settings.rss_slope, settings.rss_noise)
        fds_up, fds = _grows([float(f) for _, f in alive], settings.fd_slope, settings.connections)
        bounded &= not (rss_up or fds_up)
        parts.append(f"worker {worker + 1}: RSS {rss:+.2f} MiB/min, fds {fds:+.2f}/min")
    limits = (
        f"growing means at least {settings.rss_slope} MiB/min and over {settings.rss_noise} MiB,"
        f" or {settings.fd_slope} fds/min and over {settings.connections} fds"
    )
    word = "bounded" if bounded else "GROWING"
    detail = "; ".join([*parts, limits])
    return bounded, f"Verdict: **{word}** over the last {len(half)} samples ({detail})."


def _row(minute: Minute) -> str:
    workers = " | ".join(f"{rss:.1f} | {fds}" for rss, fds in minute.workers)
    return (
        f"| {minute.index} | {minute.requests} | {minute.errors} | {minute.p50_ms:.1f} "
        f"| {minute.p99_ms:.1f} | {workers} |"
    )


def section(minutes: list[Minute], settings: Settings, traffic: Traffic) -> str:
    errors = traffic.errors
    mix = ", ".join(f"{kind} {count}" for kind, count in sorted(traffic.kinds.items()))
    workers = len(minutes[0].workers)
    head = "| minute | requests | errors | p50 ms | p99 ms | " + " | ".join(
        f"w{n} RSS MiB | w{n} fds" for n in range(1, workers + 1)
    )
    rule = "|" + " --- |" * (5 + 2 * workers)
    _, line = verdict(minutes, settings)
    failures = "; ".join(f"{k} x{v}" for k, v in errors.most_common(5)) or "none"
    return "\n".join(
        [
            "<!-- Generated by bench/soak.py (`make soak`); edits between markers are lost. -->",
            "",
            f"{settings.minutes} minutes at {settings.rate} requests/s over "
            f"{settings.connections} connections, `iap run --workers 2` (commit "
            f"{run._git_commit()}). Minute 0 is the sample before the load.",
            "",
            head + " |",
            rule,
            *(_row(minute) for minute in minutes),
            "",
            f"Sent: {mix}. Errors: {failures}.",
            "",
            line,
        ]
    )


def write_doc(text: str, path: Path = run.DOC) -> None:
    block = f"{BEGIN}\n{text}\n{END}"
    doc = path.read_text()
    start, end = doc.find(BEGIN), doc.find(END)
    if start >= 0 and end > start:
        doc = doc[:start] + block + doc[end + len(END) :]
    else:
        doc = doc.rstrip("\n") + "\n\n## Soak\n\n" + block + "\n"
    path.write_text(doc)


def iap_config(upstream: str, idp_url: str, public: str, admin: int, work: Path) -> dict[str, Any]:
    keys, secret, signing = work / "session.keys", work / "client.secret", work / "signing"
    keys.write_text(base64.urlsafe_b64encode(os.urandom(32)).decode() + "\n")
    secret.write_text(dev_idp.CLIENT_SECRET)
    write_new_key(signing)
    signed_in = {"allow": {"authenticated": True}}
    return {
        "public_url": public,
        "listen": {"address": public.removeprefix("http://")},
        "admin": {"address": f"{HOST}:{admin}"},
        "oidc": {
            "issuer": f"{idp_url}/organizations/v2.0",
            "allowed_tenants": [TENANT_A],
            "client_id": dev_idp.CLIENT_ID,
            "client_secret_file": str(secret),
        },
        "session": {"keys_file": str(keys)},
        "tokens": {"issuer": f"{public}/.iap", "keys_dir": str(signing)},
        "bearer": {"entra_audiences": [run.BENCH_API]},
        "routes": [
            {"name": "app", "upstream": upstream, "match": {"path_prefix": "/app/"},
             "policy": signed_in, "max_body": "2MB"},
            {"name": "ws", "upstream": upstream, "match": {"path_prefix": "/ws/"},
             "policy": signed_in},
            {"name": "public", "upstream": upstream, "policy": {"public": True}},
        ],
    }  # fmt: skip


@contextlib.contextmanager
def parts(work: Path) -> Iterator[tuple[str, str, int]]:
    """Upstream, dev IdP and ``iap run --workers 2``; the public URL, the IdP's, iap's pid."""
    up, idp_port, port, admin = (run.free_port() for _ in range(4))
    public, idp_url = f"http://{HOST}:{port}", f"http://{HOST}:{idp_port}"
    upstream = [sys.executable, str(run.BENCH / "soak_upstream.py"), "--port", str(up)]
    idp = [sys.executable, str(run.BENCH / "dev_idp.py"), "--port", str(idp_port)]
    idp += ["--redirect", f"{public}/.iap/callback"]
    with (
        run.spawn(upstream, work / "upstream.log") as up_proc,
        run.spawn(idp, work / "idp.log") as idp_proc,
    ):
        run.wait_ready(f"http://{HOST}:{up}/public/ping", up_proc, work / "upstream.log")
        discovery = f"{idp_url}/organizations/v2.0/.well-known/openid-configuration"
        run.wait_ready(discovery, idp_proc, work / "idp.log")
        path = work / "iap.yaml"
        document = iap_config(f"http://{HOST}:{up}", idp_url, public, admin, work)
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        argv = [*run.iap_command(run.Env("", work)), "run", "-c", str(path), "--workers", "2"]
        with run.spawn(argv, work / "iap.log") as iap:
            run.wait_ready(f"http://{HOST}:{admin}/readyz", iap, work / "iap.log")
            yield public, idp_url, iap.pid


def main() -> int:
    settings = Settings.from_env()
    with tempfile.TemporaryDirectory(prefix="iap-soak-") as tmp, parts(Path(tmp)) as where:
        public, idp_url, pid = where
        traffic = Traffic(public, run.sign_in(public), run.service_token(idp_url))
        minutes = asyncio.run(soak(traffic, pid, settings))
    text = section(minutes, settings, traffic)
    print(text)
    write_doc(text)
    print(f"\nwrote {run.DOC.relative_to(run.ROOT)}", file=sys.stderr)
    bounded, _ = verdict(minutes, settings)
    return 0 if bounded and not traffic.errors else 1


if __name__ == "__main__":
    sys.exit(main())
