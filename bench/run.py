"""``make bench``: requests/s and p50/p99 latency of iap against baselines, in one run.

Every target is measured with the same wrk settings, one after another, each after a short
warm-up, against one shared fast upstream (bench/upstream.py). The results table, the ratios of
each iap row to each naive-proxy row, the cost of tracing (each ``baseline`` row against the row
it names, with its target) and a description of the machine are printed and written between the
markers in docs/PERFORMANCE.md.

Adding a scenario is one entry in :data:`SCENARIOS`. A scenario's ``start`` is a context manager
factory: given the :class:`Env` it starts its target, yields the URL to load and cleans up on
exit; it may leave facts for the report in ``env.notes`` (an OTLP sink's span count, iap's
``iap_spans_dropped_total``). For another iap configuration, ``iap_target(config)`` does the work;
``config`` maps the upstream URL to the config keys besides ``public_url``, ``listen`` and
``admin``. ``traced_target(ratio)`` runs the public route with tracing exported to
bench/otlp_sink.py at that sample ratio.

Environment: BENCH_DURATION (seconds per target, default 10), BENCH_CONNECTIONS (default 32),
BENCH_WARMUP (seconds, default 2), BENCH_THREADS (wrk threads, default 1), BENCH_ONLY
(comma-separated parts of scenario names: run only those, for a quick look; such a partial run
prints its tables but leaves docs/PERFORMANCE.md alone), BENCH_PROFILE (a directory: run every
iap target under bench/profiled_iap.py, cProfile on every thread, one subdirectory per scenario;
the figures of such a run are distorted and the doc is left alone), BENCH_BASELINE (the
directory of another checkout, e.g. a ``git worktree`` of the commit before a change: every iap
row is also run from that checkout in the same rounds, and a table compares the two; the doc is
left alone).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, NoReturn

import dev_idp
import peers
import yaml
from procs import (
    HOST,
    BenchError,
    free_port,
    http_status,
    metric,
    spawn,
    tail,
    tree_cpu,
    tree_rss,
    wait_ready,
)

from iap.adapters.signing_keys import write_new_key
from iap.dev.idp import SERVICES, TENANT_A

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
DOC = ROOT / "docs" / "PERFORMANCE.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
BENCH_API = "api://edge"


# --------------------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class Env:
    """What every scenario gets: the shared upstream, a scratch directory and its own notes."""

    upstream: str
    workdir: Path
    notes: dict[str, int] = field(default_factory=dict)  # filled by the scenario, for the report
    scenario: str = ""
    headers: dict[str, str] = field(default_factory=dict)  # sent by wrk, set by the scenario
    code: str = ""  # another checkout whose iap to run (BENCH_BASELINE); empty: this one
    pids: list[int] = field(default_factory=list)  # the target's processes, for CPU and RSS


Start = Callable[[Env], contextlib.AbstractContextManager[str]]
Kind = Literal["direct", "naive", "peer", "iap"]


@dataclass(frozen=True)
class Scenario:
    """A row of the table. ``kind`` picks the ratios: each iap row against each naive row.

    A row with a ``baseline`` (another row's name) is also compared with that row alone, for
    the cost of one feature: requests/s of this row over the baseline's must reach ``target``.
    """

    name: str
    start: Start
    kind: Kind = "iap"
    ratio_label: str = ""  # naive rows: the column header "iap / <ratio_label>"
    baseline: str = ""
    target: float | None = None
    label: str = ""  # short name in the cost table, e.g. "tracing 0.1"
    baseline_label: str = ""  # e.g. "tracing off"
    code: str = ""  # BENCH_BASELINE twins: the checkout whose iap this row runs
    missing: Callable[[], str] = lambda: ""  # why this row cannot run here; empty: it can


@contextlib.contextmanager
def direct_target(env: Env) -> Iterator[str]:
    yield f"{env.upstream}/"


def naive_target(loop: Literal["asyncio", "uvloop"]) -> Start:
    return script_target("naive_proxy.py", "--loop", loop)


def script_target(script: str, *args: str) -> Start:
    """A proxy in bench/ started as ``script --port P --upstream URL *args``."""

    @contextlib.contextmanager
    def start(env: Env) -> Iterator[str]:
        port = free_port()
        log = env.workdir / f"{script}-{port}.log"
        argv = [sys.executable, str(BENCH / script), "--port", str(port)]
        argv += ["--upstream", env.upstream, *args]
        with spawn(argv, log) as proc:
            url = f"http://{HOST}:{port}/"
            wait_ready(url, proc, log)
            env.pids.append(proc.pid)
            yield url

    return start


def iap_command(env: Env) -> list[str]:
    """``iap``, or with BENCH_PROFILE iap under cProfile writing to a directory per scenario."""
    profile = os.environ.get("BENCH_PROFILE", "").strip()
    if env.code:  # the baseline checkout's package first on the path, this venv's libraries
        start = f"import sys, runpy; sys.path.insert(0, {env.code!r}); "
        return [sys.executable, "-c", start + "runpy.run_module('iap', run_name='__main__')"]
    if profile:
        out = Path(profile).resolve() / re.sub(r"[^A-Za-z0-9_.-]+", "_", env.scenario or "iap")
        return [sys.executable, str(BENCH / "profiled_iap.py"), str(out)]
    beside = Path(sys.executable).parent / "iap"
    return [str(beside) if beside.exists() else str(ROOT / ".venv" / "bin" / "iap")]


def iap_target(
    config: Callable[[str], dict[str, Any]], *, port: int = 0, workers: int = 1, path: str = "/"
) -> Start:
    """``iap run`` (one process, or a supervisor and ``workers``) with ``config(upstream_url)``
    plus listen/admin/public_url; the URL to load is ``path`` on its public listener."""

    @contextlib.contextmanager
    def start(env: Env) -> Iterator[str]:
        public, admin = port or free_port(), free_port()
        url = f"http://{HOST}:{public}"
        document = {
            "public_url": url,
            "listen": {"address": f"{HOST}:{public}"},
            "admin": {"address": f"{HOST}:{admin}"},
            **config(env.upstream),
        }
        document_path = env.workdir / f"iap-{public}.yaml"
        document_path.write_text(yaml.safe_dump(document, sort_keys=False))
        log = env.workdir / f"iap-{public}.log"
        argv = [*iap_command(env), "run", "-c", str(document_path)]
        argv += ["--workers", str(workers)] if workers > 1 else []
        with spawn(argv, log) as proc:
            wait_ready(f"http://{HOST}:{admin}/readyz", proc, log)
            env.pids.append(proc.pid)  # for the CPU of its threads and its memory
            yield f"{url}{path}"
            dropped = metric(f"http://{HOST}:{admin}/metrics", "iap_spans_dropped_total")
            if dropped is not None:
                env.notes["spans_dropped"] = round(dropped)

    return start


def public_route(upstream: str) -> dict[str, Any]:
    return {"routes": [{"name": "bench", "upstream": upstream, "policy": {"public": True}}]}


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _step(
    url: str, *, cookie: str = "", form: dict[str, str] | None = None
) -> tuple[str, list[str]]:
    """One request of the sign-in, redirects not followed: its Location and Set-Cookies."""
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    request = urllib.request.Request(url, data=data, headers={"Cookie": cookie} if cookie else {})
    opener = urllib.request.build_opener(_NoRedirects)
    try:
        opener.open(request, timeout=10)
    except urllib.error.HTTPError as answer:
        if answer.code != 302:
            raise BenchError(f"sign-in step {url} answered {answer.code}") from None
        return answer.headers["Location"], answer.headers.get_all("Set-Cookie") or []
    raise BenchError(f"sign-in step {url} did not redirect")


def _cookie_pairs(set_cookies: list[str]) -> str:
    return "; ".join(header.split(";", 1)[0] for header in set_cookies)


def sign_in(public_url: str) -> str:
    """Sign in as alice through iap and the dev IdP; the Cookie header of her session."""
    authorize, login_cookies = _step(f"{public_url}/.iap/login?rd=/")
    endpoint, _, query = authorize.partition("?")
    form = dict(urllib.parse.parse_qsl(query)) | {"user": "alice"}
    callback, _ = _step(endpoint, form=form)
    _, session = _step(callback, cookie=_cookie_pairs(login_cookies))
    cookie = _cookie_pairs([c for c in session if c.startswith("__Host-iap=")])
    if not cookie:
        raise BenchError("sign-in set no session cookie")
    return cookie


def signed_in_target(
    credential: Literal["cookie", "bearer"],
    *,
    redis: bool | None = None,
    workers: int = 1,
    path: str = "/",
) -> Start:
    """A route for any authenticated caller, behind iap signing in with the dev IdP.

    ``cookie``: requests carry alice's sealed session cookie (a browser). ``bearer``: they
    carry a client-credentials access token of the dev IdP's ``orders-service`` (a service).
    ``redis``: the route has a rate limit that the run never exceeds, counted in process
    memory (False) or in a redis-server of its own (True). ``path`` ``/.iap/auth``: wrk asks
    forward-auth about ``GET /`` as nginx's ``auth_request`` does (header mode).
    """

    @contextlib.contextmanager
    def start(env: Env) -> Iterator[str]:
        with _signed_in(env, limit=redis, workers=workers, path=path) as (url, public, idp_url):
            if path.startswith("/.iap/auth"):
                env.headers.update(FORWARD_AUTH_HEADERS)
            if credential == "cookie":
                env.headers["Cookie"] = sign_in(public)
            else:
                env.headers["Authorization"] = f"Bearer {service_token(idp_url)}"
            yield url

    return start


FORWARD_AUTH_HEADERS = {
    "X-Original-URI": "/",
    "X-Original-Method": "GET",
    "X-Forwarded-Host": HOST,
}

# The offload pattern: nginx forwards, iap decides. As docs/forward-auth.md's block, with
# keep-alive connections to iap and to the application (what a high-scale edge would run).
OFFLOAD_LOCATIONS = """\
        location = /.iap/auth {
            internal;
            proxy_pass http://iap/.iap/auth;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Original-URI $request_uri;
            proxy_set_header X-Original-Method $request_method;
            proxy_set_header X-Forwarded-Host $host;
            proxy_set_header X-Forwarded-Uri "";
            proxy_set_header X-Original-URL "";
            proxy_set_header X-Envoy-Original-Path "";
            proxy_set_header X-Forwarded-Method "";
            proxy_set_header X-Original-Host "";
            proxy_set_header X-Forwarded-For $remote_addr;
        }
        location / {
            auth_request /.iap/auth;
            auth_request_set $iap_subject $upstream_http_x_iap_subject;
            auth_request_set $iap_token $upstream_http_authorization;
            proxy_set_header X-IAP-Subject $iap_subject;
            proxy_set_header Authorization $iap_token;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://app;
        }"""


@contextlib.contextmanager
def offload_target(env: Env) -> Iterator[str]:
    """nginx in front, asking a signed-in iap through ``auth_request`` for every request."""
    with _signed_in(env, path="/.iap/auth") as (_url, public, _idp_url):
        cookie = sign_in(public)
        upstreams = f"    upstream iap {{ server {peers.address(public)}; keepalive 32; }}"
        offload = peers.run_nginx(env, "offload", OFFLOAD_LOCATIONS, upstreams, ready=(401,))
        with offload as url:  # 401: nginx asked iap about a request without a session
            env.headers["Cookie"] = cookie
            yield url


def service_token(idp_url: str) -> str:
    """An app-only access token for ``api://edge`` from the dev IdP (client credentials)."""
    client = SERVICES["orders-service"]
    form = {
        "grant_type": "client_credentials",
        "client_id": client.client_id,
        "client_secret": client.secret,
        "scope": f"{BENCH_API}/.default",
    }
    request = urllib.request.Request(
        f"{idp_url}/{client.tid}/oauth2/v2.0/token", data=urllib.parse.urlencode(form).encode()
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return str(json.loads(answer.read())["access_token"])


@contextlib.contextmanager
def _redis(env: Env, wanted: bool) -> Iterator[str | None]:
    """A redis-server on a free port for the run, when ``wanted``."""
    if not wanted:
        yield None
        return
    port = free_port()
    argv = ["redis-server", "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"]
    with spawn(argv, env.workdir / f"redis-{port}.log"):
        for _ in range(200):
            with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1):
                break
            time.sleep(0.05)
        yield f"redis://{HOST}:{port}/0"


@contextlib.contextmanager
def _signed_in(
    env: Env, *, limit: bool | None = None, workers: int = 1, path: str = "/"
) -> Iterator[tuple[str, str, str]]:
    port, idp_port = free_port(), free_port()
    public = f"http://{HOST}:{port}"
    log = env.workdir / f"dev-idp-{idp_port}.log"
    argv = [sys.executable, str(BENCH / "dev_idp.py"), "--port", str(idp_port)]
    argv += ["--redirect", f"{public}/.iap/callback"]
    keys = env.workdir / "session.keys"
    keys.write_text(base64.urlsafe_b64encode(os.urandom(32)).decode() + "\n")
    secret = env.workdir / "client.secret"
    secret.write_text(dev_idp.CLIENT_SECRET)
    signing = env.workdir / f"signing-keys-{port}"
    write_new_key(signing)
    with spawn(argv, log) as idp, _redis(env, bool(limit)) as redis_url:
        idp_url = f"http://{HOST}:{idp_port}"
        wait_ready(f"{idp_url}/organizations/v2.0/.well-known/openid-configuration", idp, log)

        def config(upstream: str) -> dict[str, Any]:
            route = {"name": "bench", "upstream": upstream}
            settings: dict[str, Any] = {
                "oidc": {
                    "issuer": f"{idp_url}/organizations/v2.0",
                    "allowed_tenants": [TENANT_A],
                    "client_id": dev_idp.CLIENT_ID,
                    "client_secret_file": str(secret),
                },
                "session": {"keys_file": str(keys)},
                "tokens": {"issuer": f"{public}/.iap", "keys_dir": str(signing)},
                "bearer": {"entra_audiences": [BENCH_API]},
                "routes": [{**route, "policy": {"allow": {"authenticated": True}}}],
            }
            if limit is not None:  # far above what one run sends: counted, never exceeded
                settings["routes"][0]["rate_limit"] = {"requests": 10**6, "per": "1s"}
            if redis_url is not None:
                settings["redis"] = {"url": redis_url}
            if path.startswith("/.iap/auth"):  # forward-auth answers only trusted proxies
                settings["trusted_proxies"] = ["127.0.0.0/8"]
            return settings

        with iap_target(config, port=port, workers=workers, path=path)(env) as url:
            yield url, public, idp_url


_SINK_LINE = re.compile(r"otlp_sink: spans=(\d+) exports=(\d+) rejected=(\d+) bytes=(\d+)")


def traced_target(sample_ratio: float) -> Start:
    """The public route with spans exported over OTLP/HTTP to bench/otlp_sink.py.

    Notes ``spans``, ``exports`` and ``rejected`` as counted by the sink after iap has stopped
    (iap flushes its queue on SIGTERM), and iap's ``spans_dropped``.
    """

    @contextlib.contextmanager
    def start(env: Env) -> Iterator[str]:
        port = free_port()
        log = env.workdir / f"otlp-sink-{port}.log"
        argv = [sys.executable, str(BENCH / "otlp_sink.py"), "--port", str(port)]
        with spawn(argv, log) as sink:
            wait_ready(f"http://{HOST}:{port}/healthz", sink, log)

            def config(upstream: str) -> dict[str, Any]:
                telemetry = {"otlp_endpoint": f"http://{HOST}:{port}", "sample_ratio": sample_ratio}
                return {**public_route(upstream), "telemetry": telemetry}

            with iap_target(config)(env) as url:
                yield url
        found = _SINK_LINE.search(log.read_text(errors="replace"))
        if found is None:
            raise BenchError(f"the OTLP sink printed no counts:\n{tail(log)}")
        spans, exports, rejected, _bytes = (int(n) for n in found.groups())
        env.notes.update(spans=spans, exports=exports, rejected=rejected)

    return start


def tracing(ratio: float, target: float) -> Scenario:
    """Issue 6: tracing at ``ratio`` keeps at least ``target`` of the requests/s without it."""
    return Scenario(
        f"iap tracing {ratio}",
        traced_target(ratio),
        baseline="iap public route",  # no otlp_endpoint: iap makes no spans at all
        target=target,
        label=f"tracing {ratio}",
        baseline_label="tracing off",
    )


SCENARIOS: list[Scenario] = [
    Scenario("direct", direct_target, kind="direct"),
    Scenario(
        "nginx proxy_pass",
        peers.nginx_target,
        kind="peer",
        missing=lambda: peers.missing(peers.NGINX, "nginx"),
    ),
    Scenario(
        "haproxy",
        peers.haproxy_target,
        kind="peer",
        missing=lambda: peers.missing(peers.HAPROXY, "haproxy"),
    ),
    Scenario(
        "caddy reverse_proxy (GOMAXPROCS=1)",
        peers.caddy_target,
        kind="peer",
        missing=lambda: peers.missing(peers.CADDY, "caddy"),
    ),
    Scenario("naive (asyncio loop)", naive_target("asyncio"), "naive", "naive (asyncio)"),
    Scenario("naive (uvloop)", naive_target("uvloop"), "naive", "naive (uvloop)"),
    Scenario(
        "floor: aiohttp web.Server + iap's upstream client",
        script_target("floor_proxy.py"),
        "naive",
        "floor",
    ),
    Scenario("iap public route", iap_target(public_route)),
    Scenario("iap --workers 2, public route", iap_target(public_route, workers=2)),
    Scenario("iap cookie session", signed_in_target("cookie")),
    Scenario("iap bearer token", signed_in_target("bearer")),
    Scenario(
        "iap forward-auth decision (/.iap/auth, cookie)",
        signed_in_target("cookie", path="/.iap/auth"),
    ),
    Scenario(
        "nginx + iap auth_request (cookie)",
        offload_target,
        kind="peer",
        missing=lambda: peers.missing(peers.NGINX, "nginx"),
    ),
    Scenario(
        "iap cookie session, rate limited (memory)",
        signed_in_target("cookie", redis=False),
        baseline="iap cookie session",
        target=0.95,
        label="limit (memory)",
        baseline_label="no limit",
    ),
    Scenario(
        "iap cookie session, rate limited (redis)",
        signed_in_target("cookie", redis=True),
        baseline="iap cookie session",
        label="limit (redis)",
        baseline_label="no limit",
    ),
    tracing(0.1, target=0.90),
    tracing(1.0, target=0.65),
]


# --------------------------------------------------------------------------- wrk


@dataclass(frozen=True)
class Settings:
    duration: int
    connections: int
    warmup: int
    threads: int
    rounds: int

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            duration=_env_int("BENCH_DURATION", 8),
            connections=_env_int("BENCH_CONNECTIONS", 32),
            warmup=_env_int("BENCH_WARMUP", 2, minimum=0),
            threads=_env_int("BENCH_THREADS", 1),
            rounds=_env_int("BENCH_ROUNDS", 3),
        )

    def wrk_args(self, duration: int) -> list[str]:
        return [f"-t{self.threads}", f"-c{self.connections}", f"-d{duration}s", "--latency"]

    def describe(self) -> str:
        args = " ".join(self.wrk_args(self.duration))
        return (
            f"`wrk {args} URL`, after a {self.warmup}s warm-up with the same settings; "
            f"{self.rounds} rounds with the targets in turn, each row the round with the "
            "median requests/s (machine noise moves single runs by several percent)"
        )


def _env_int(name: str, default: int, minimum: int = 1) -> int:
    text = os.environ.get(name, "").strip().removesuffix("s")
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise BenchError(f"{name}={text!r}: expected a whole number") from None
    if value < minimum:
        raise BenchError(f"{name}={value}: must be at least {minimum}")
    return value


@dataclass(frozen=True)
class Result:
    name: str
    kind: Kind
    ratio_label: str
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx_3xx: int
    socket_errors: int
    socket_detail: str
    served: int = 0  # every request the target answered: warm-up, check and measured
    notes: dict[str, int] = field(default_factory=dict)


_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_PERCENTILE = re.compile(r"^\s*(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.MULTILINE)
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_TOTAL = re.compile(r"^\s*(\d+) requests in ", re.MULTILINE)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKET = re.compile(r"Socket errors: (connect \d+, read \d+, write \d+, timeout \d+)")


def run_wrk(
    settings: Settings, url: str, duration: int, headers: dict[str, str] | None = None
) -> str:
    extra = [arg for name, value in (headers or {}).items() for arg in ("-H", f"{name}: {value}")]
    argv = ["wrk", *settings.wrk_args(duration), *extra, url]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BenchError(f"{' '.join(argv)} exited with {done.returncode}:\n{done.stderr}")
    return done.stdout


def parse_wrk(output: str, scenario: Scenario) -> Result:
    percentiles = {m[0]: float(m[1]) * _UNIT_MS[m[2]] for m in _PERCENTILE.findall(output)}
    rps, total = _RPS.search(output), _TOTAL.search(output)
    if rps is None or total is None or set(percentiles) != {"50", "99"}:
        raise BenchError(f"cannot parse wrk output for {scenario.name}:\n{output}")
    non_2xx = _NON_2XX.search(output)
    sockets = _SOCKET.search(output)
    socket_detail = sockets.group(1) if sockets else ""
    return Result(
        name=scenario.name,
        kind=scenario.kind,
        ratio_label=scenario.ratio_label,
        rps=float(rps.group(1)),
        p50_ms=percentiles["50"],
        p99_ms=percentiles["99"],
        requests=int(total.group(1)),
        non_2xx_3xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in re.findall(r"\d+", socket_detail)),
        socket_detail=socket_detail,
    )


def measure(scenario: Scenario, env: Env, settings: Settings) -> Result:
    print(f"== {scenario.name}", file=sys.stderr, flush=True)
    env = replace(env, notes={}, headers={}, pids=[], scenario=scenario.name, code=scenario.code)
    warmup = 0
    with scenario.start(env) as url:
        status = http_status(url, headers=env.headers)
        if status != 200:
            print(f"   warning: GET {url} answered {status}", file=sys.stderr)
        if settings.warmup:
            warm = _TOTAL.search(run_wrk(settings, url, settings.warmup, env.headers))
            warmup = int(warm.group(1)) if warm else 0
        before = tree_cpu(env.pids)
        output = run_wrk(settings, url, settings.duration, env.headers)
        after = tree_cpu(env.pids)
        rss, processes = tree_rss(env.pids)
    result = parse_wrk(output, scenario)
    notes = dict(env.notes)
    if env.pids and after:
        spent = {tid: cpu - before.get(tid, 0.0) for tid, cpu in after.items()}
        notes["cpu_main_us"] = round(spent.pop(env.pids[0], 0.0) * 1e6)
        notes["cpu_other_us"] = round(sum(spent.values()) * 1e6)
        notes["rss_kib"], notes["processes"] = round(rss * 1024), processes
    result = replace(result, served=1 + warmup + result.requests, notes=notes)
    print(
        f"   {result.rps:,.0f} req/s, p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms",
        file=sys.stderr,
    )
    if result.non_2xx_3xx or result.socket_errors:
        print(f"   errors: {result.non_2xx_3xx} non-2xx/3xx", file=sys.stderr, end="")
        print(f"; socket errors: {result.socket_detail or 'none'}", file=sys.stderr)
    if "spans" in result.notes:
        print(f"   OTLP sink: {result.notes['spans']:,} spans", file=sys.stderr, end="")
        print(f", iap dropped {result.notes.get('spans_dropped', 'n/a')}", file=sys.stderr)
    return result


# --------------------------------------------------------------------------- report


def machine() -> list[tuple[str, str]]:
    return [
        ("CPU", _cpu_model()),
        ("Cores", _cores()),
        ("Memory", _memory()),
        ("Kernel", f"{platform.system()} {platform.release()} ({platform.machine()})"),
        ("Python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("aiohttp", _version("aiohttp")),
        ("uvloop", _version("uvloop")),
        ("wrk", _wrk_version()),
        ("iap", f"{_version('iap')}, commit {_git_commit()}"),
        ("Date", dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")),
    ]


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Hardware", "cpu model") and value.strip():
                return value.strip()
    return platform.processor() or "unknown"


def _cores() -> str:
    total = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else total
    text = f"{total} logical CPUs"
    return text if usable == total else f"{text} ({usable} usable by this process)"


def _memory() -> str:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    return "unknown"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _wrk_version() -> str:
    done = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    first = (done.stdout or done.stderr).splitlines()[:1]
    return first[0].split(" Copyright")[0].strip() if first else "unknown"


def _git_commit() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return (
        f"{commit} + uncommitted changes" if git("status", "--porcelain", "--", "iap") else commit
    )


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right_from: int = 1) -> str:
    align = ["---" if i < right_from else "---:" for i in range(len(header))]
    lines = [header, align, *rows]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def results_table(results: Sequence[Result]) -> str:
    header = ["Target", "Requests/s", "p50 (ms)", "p99 (ms)", "CPU µs/request", "RSS MiB"]
    header += ["Requests", "Non-2xx/3xx", "Socket errors"]
    rows = [
        [
            r.name,
            f"{r.rps:,.0f}",
            f"{r.p50_ms:.2f}",
            f"{r.p99_ms:.2f}",
            f"{_cpu_per_request(r):.0f}" if "cpu_main_us" in r.notes else "n/a",
            _rss(r),
            f"{r.requests:,}",
            f"{r.non_2xx_3xx:,}",
            f"{r.socket_errors:,}",
        ]
        for r in results
    ]
    return _table(header, rows)


def _rss(result: Result) -> str:
    processes = result.notes.get("processes", 0)
    if not processes:
        return "n/a"
    mib = result.notes.get("rss_kib", 0) / 1024
    return f"{mib:.0f}" if processes == 1 else f"{mib:.0f} ({processes} processes)"


@dataclass(frozen=True)
class Goal:
    """A target of issue 17: ``row``'s ``metric`` over ``other``'s (or alone) against ``bound``."""

    text: str
    row: str
    metric: Literal["rps", "cpu", "rss", "tail"]
    bound: float
    other: str = ""
    at_most: bool = False


GOALS = [
    Goal("CPU µs/request, public route", "iap public route", "cpu", 70, at_most=True),
    Goal("CPU µs/request, cookie session", "iap cookie session", "cpu", 95, at_most=True),
    Goal("CPU µs/request, bearer token", "iap bearer token", "cpu", 95, at_most=True),
    Goal("public / caddy", "iap public route", "rps", 1.0, "caddy reverse_proxy (GOMAXPROCS=1)"),
    Goal("public / nginx", "iap public route", "rps", 0.25, "nginx proxy_pass"),
    Goal("public / naive (uvloop)", "iap public route", "rps", 2.0, "naive (uvloop)"),
    Goal("cookie / nginx", "iap cookie session", "rps", 0.2, "nginx proxy_pass"),
    Goal("--workers 2 / 1 worker", "iap --workers 2, public route", "rps", 1.6, "iap public route"),
    Goal("p99 / p50, public route", "iap public route", "tail", 2.5, at_most=True),
    Goal("p99 / p50, cookie session", "iap cookie session", "tail", 2.5, at_most=True),
    Goal("RSS MiB per process, public route", "iap public route", "rss", 60, at_most=True),
]


def _goal_value(goal: Goal, by_name: dict[str, Result]) -> float | None:
    row, other = by_name.get(goal.row), by_name.get(goal.other)
    if row is None or (goal.other and (other is None or not other.rps)):
        return None
    if goal.metric == "cpu":
        return _cpu_per_request(row) if "cpu_main_us" in row.notes else None
    if goal.metric == "rss":
        processes = row.notes.get("processes", 0)
        return row.notes.get("rss_kib", 0) / 1024 / processes if processes else None
    if goal.metric == "tail":
        return row.p99_ms / row.p50_ms if row.p50_ms else None
    return row.rps / other.rps if other is not None else None


def goals_table(results: Sequence[Result]) -> str:
    """Each goal of issue 17 with the figure of this run and whether it is met."""
    by_name = {r.name: r for r in results}
    rows = []
    for goal in GOALS:
        value = _goal_value(goal, by_name)
        target = f"{'<=' if goal.at_most else '>='} {goal.bound:g}"
        if value is None:
            rows.append([goal.text, "not run", target, ""])
            continue
        met = value <= goal.bound if goal.at_most else round(value, 2) >= goal.bound
        figure = f"{value:.0f}" if goal.metric in ("cpu", "rss") else f"{value:.2f}"
        rows.append([goal.text, figure, target, "met" if met else "NOT met"])
    return _table(["Goal", "This run", "Target", "Met"], rows)


def ratios_table(results: Sequence[Result]) -> str:
    naive = [r for r in results if r.kind == "naive"]
    iap = [r for r in results if r.kind == "iap"]
    if not naive or not iap:
        return "(no iap or no naive rows in this run)"
    header = ["Target", "Metric", *(f"iap / {n.ratio_label or n.name}" for n in naive)]
    rows = []
    for row in iap:
        for label, value in (("Requests/s", "rps"), ("p50", "p50_ms"), ("p99", "p99_ms")):
            mine = getattr(row, value)
            cells = [_ratio(mine, getattr(n, value)) for n in naive]
            rows.append([row.name, label, *cells])
    return _table(header, rows, right_from=2)


def peers_table(results: Sequence[Result]) -> str:
    """Each iap row's requests/s over each real proxy's and the naive passthrough's."""
    others = [
        r for r in results if r.kind in ("peer", "naive") and not r.name.startswith("nginx +")
    ]
    iap = [r for r in results if r.kind == "iap"]
    if not others or not iap:
        return "(no iap or no proxy rows in this run)"
    header = ["Target", *(f"/ {o.ratio_label or o.name}" for o in others)]
    rows = [[row.name, *(_ratio(row.rps, o.rps) for o in others)] for row in iap]
    return _table(header, rows)


def cost_table(scenarios: Sequence[Scenario], results: Sequence[Result]) -> str:
    """Each row with a baseline against that row: requests/s ratio, target, met or not."""
    by_name = {r.name: r for r in results}
    header = ["Ratio", "Requests/s", "Target", "Met", "p50", "p99"]
    rows = []
    for scenario in scenarios:
        mine, base = by_name.get(scenario.name), by_name.get(scenario.baseline)
        if not scenario.baseline or mine is None or base is None:
            continue
        ratio = mine.rps / base.rps if base.rps else 0.0
        target, met = "", ""
        if scenario.target is not None:
            target = f">= {scenario.target:.2f}"
            met = "pass" if base.rps and round(ratio, 2) >= scenario.target else "FAIL"
        label = f"{scenario.label or scenario.name} / {scenario.baseline_label or base.name}"
        p50, p99 = _ratio(mine.p50_ms, base.p50_ms), _ratio(mine.p99_ms, base.p99_ms)
        rows.append([label, f"{ratio:.2f}", target, met, p50, p99])
    if not rows:
        return "(no rows with a baseline in this run)"
    return _table(header, rows)


def exporter_table(results: Sequence[Result]) -> str:
    """What the OTLP sink received: proof that the exporter ran, and how much it dropped."""
    header = ["Target", "Requests served", "Spans received", "Spans / request", "Exports"]
    header += ["Rejected by sink", "iap_spans_dropped_total"]
    rows = []
    for r in results:
        if "spans" not in r.notes:
            continue
        notes = r.notes
        dropped = notes.get("spans_dropped")
        rows.append(
            [
                r.name,
                f"{r.served:,}",
                f"{notes['spans']:,}",
                f"{notes['spans'] / r.served:.3f}" if r.served else "n/a",
                f"{notes.get('exports', 0):,}",
                f"{notes.get('rejected', 0):,}",
                f"{dropped:,}" if dropped is not None else "n/a",
            ]
        )
    return _table(header, rows) if rows else "(no tracing rows in this run)"


def cpu_table(results: Sequence[Result], settings: Settings) -> str:
    """CPU of the iap process per measured request, split by thread (Linux /proc)."""
    header = ["Target", "Event loop thread", "Other threads", "Total", "Cores busy"]
    rows = []
    for r in results:
        if "cpu_main_us" not in r.notes or not r.requests:
            continue
        main, other = r.notes["cpu_main_us"], r.notes["cpu_other_us"]
        cores = (main + other) / 1e6 / settings.duration
        rows.append(
            [
                r.name,
                f"{main / r.requests:.0f} µs",
                f"{other / r.requests:.0f} µs",
                f"{(main + other) / r.requests:.0f} µs",
                f"{cores:.2f}",
            ]
        )
    return _table(header, rows) if rows else "(no per-thread CPU figures on this system)"


BASELINE_SUFFIX = " [baseline]"


def with_baseline(scenarios: Sequence[Scenario], code: str) -> list[Scenario]:
    """Each iap row followed by its twin running the checkout at ``code`` (BENCH_BASELINE), so
    that every round measures the change and what came before it side by side."""
    paired: list[Scenario] = []
    for scenario in scenarios:
        paired.append(scenario)
        if scenario.kind == "iap":
            twin = replace(scenario, name=scenario.name + BASELINE_SUFFIX, code=code)
            paired.append(replace(twin, baseline="", target=None))
    return paired


def change_table(results: Sequence[Result], limit: float = 0.03) -> str:
    """Each iap row over its BENCH_BASELINE twin: requests/s and CPU per request, and whether
    the change stays within ``limit`` (3%) of what came before."""
    by_name = {r.name: r for r in results}
    header = ["Target", "Requests/s ratio", "CPU µs/request (baseline → now)", "Within 3%"]
    rows = []
    for now in results:
        before = by_name.get(now.name + BASELINE_SUFFIX)
        if before is None or not before.rps:
            continue
        ratio = now.rps / before.rps
        cpu = [
            r.notes.get("cpu_main_us", 0) + r.notes.get("cpu_other_us", 0) for r in (before, now)
        ]
        per = [
            c / r.requests if r.requests else 0.0 for c, r in zip(cpu, (before, now), strict=True)
        ]
        ok = "yes" if ratio >= 1 - limit else "NO"
        rows.append([now.name, f"{ratio:.3f}", f"{per[0]:.0f} → {per[1]:.0f}", ok])
    return _table(header, rows) if rows else "(no BENCH_BASELINE rows in this run)"


def _cpu_per_request(result: Result) -> float:
    spent = result.notes.get("cpu_main_us", 0) + result.notes.get("cpu_other_us", 0)
    return spent / result.requests if result.requests else 0.0


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "n/a"


def report(
    results: Sequence[Result],
    settings: Settings,
    scenarios: Sequence[Scenario] = (),
    skipped: Sequence[str] = (),
) -> str:
    machine_rows = [[key, value.replace("|", "\\|")] for key, value in machine()]
    parts = [
        "<!-- Generated by bench/run.py (`make bench`); edits between the markers are lost. -->",
        "### Machine",
        _table(["Property", "Value"], machine_rows, right_from=2),
        "### Settings",
        f"{settings.describe()}; targets run one after another against one upstream "
        "(bench/upstream.py) answering every request with a fixed 200 and a 100-byte body.",
        "### Results",
        "CPU µs/request is the CPU time (user + system, from /proc) of the target's processes "
        "and all their threads during the measured run over the requests wrk completed; RSS is "
        "read at its end. The `nginx + iap auth_request` row counts nginx and iap together.",
        results_table(results),
        *(["Not run on this machine: " + "; ".join(skipped) + "."] if skipped else []),
        "### Goals of issue 17",
        goals_table(results),
        "### iap relative to real proxies",
        "Requests/s of each iap row over each proxy's, in the same run (above 1: iap is faster).",
        peers_table(results),
        "### iap relative to the naive proxy",
        "Requests/s below 1 and latency above 1 mean iap is slower than the naive proxy.",
        ratios_table(results),
        "### Cost of tracing",
        "Each tracing row over `iap public route` of the same run, which has no `otlp_endpoint` "
        "(tracing off: iap makes no spans). The tracing rows export every sampled span over "
        "OTLP/HTTP to bench/otlp_sink.py, which decodes each `ExportTraceServiceRequest` and "
        "counts its spans. Targets from issue 6: requests/s at sample ratio 0.1 at least 0.90 of "
        "tracing off, at ratio 1.0 at least 0.65. p50 and p99 are latency ratios (above 1: "
        "slower).",
        cost_table(scenarios, results),
        "Spans the sink received while each tracing row ran (warm-up included; a proxied request "
        "makes a SERVER and a CLIENT span, so spans per request is about 2 x the sample ratio):",
        exporter_table(results),
        "### CPU of the iap process per request",
        "CPU time (user + system, from /proc) of iap's threads during the measured run, divided "
        "by the requests wrk completed. The event loop thread handles every request; the other "
        "threads are, with tracing on, mainly the feeder that hands spans to the exporter "
        "process (whose own CPU is not counted here). All threads share one GIL, so their sum "
        "is what bounds one process at about one busy core.",
        cpu_table(results, settings),
    ]
    if any(r.name.endswith(BASELINE_SUFFIX) for r in results):
        parts += [
            "### This checkout against BENCH_BASELINE",
            "Each iap row over the same row run from the baseline checkout in the same rounds "
            "(requests/s above 1: faster now).",
            change_table(results),
        ]
    return "\n\n".join(parts)


INTRO = "# Performance\n\n"  # when docs/PERFORMANCE.md is missing; its prose lives there


def write_doc(section: str, path: Path = DOC) -> None:
    block = f"{BEGIN}\n{section}\n{END}"
    text = path.read_text() if path.exists() else INTRO
    start, end = text.find(BEGIN), text.find(END)
    if start >= 0 and end > start:
        text = text[:start] + block + text[end + len(END) :]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# --------------------------------------------------------------------------- main


def _terminate(signum: int, _frame: object) -> NoReturn:
    raise SystemExit(128 + signum)


def run(scenarios: Sequence[Scenario], settings: Settings) -> list[Result]:
    with tempfile.TemporaryDirectory(prefix="iap-bench-") as tmp:
        workdir = Path(tmp)
        port = free_port()
        log = workdir / "upstream.log"
        argv = [sys.executable, str(BENCH / "upstream.py"), "--port", str(port)]
        with spawn(argv, log) as upstream:
            env = Env(upstream=f"http://{HOST}:{port}", workdir=workdir)
            wait_ready(f"{env.upstream}/", upstream, log)
            rounds = [
                [measure(scenario, env, settings) for scenario in scenarios]
                for _ in range(settings.rounds)
            ]
            return [median_round([r[i] for r in rounds]) for i in range(len(scenarios))]


def median_round(results: Sequence[Result]) -> Result:
    """The round with the median requests/s: every column of a row comes from one run."""
    return sorted(results, key=lambda result: result.rps)[len(results) // 2]


def main() -> int:
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with INT ignored
    only = [part.strip() for part in os.environ.get("BENCH_ONLY", "").split(",") if part.strip()]
    scenarios = [s for s in SCENARIOS if not only or any(part in s.name for part in only)]
    baseline = os.environ.get("BENCH_BASELINE", "").strip()
    if baseline:
        scenarios = with_baseline(scenarios, str(Path(baseline).resolve()))
    try:
        if not scenarios:
            raise BenchError(f"BENCH_ONLY={os.environ['BENCH_ONLY']!r} matches no scenario")
        settings = Settings.from_env()
        skipped = [f"{s.name} ({why})" for s in scenarios if (why := s.missing())]
        scenarios = [s for s in scenarios if not s.missing()]
        for line in skipped:
            print(f"bench: skipping {line}", file=sys.stderr)
        results = run(scenarios, settings)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    section = report(results, settings, scenarios, skipped)
    print(section)
    if only or baseline or os.environ.get("BENCH_PROFILE", "").strip():
        print(
            f"\npartial, baseline or profiled run: {DOC.relative_to(ROOT)} left alone",
            file=sys.stderr,
        )
        return 0
    write_doc(section)
    print(f"\nwrote {DOC.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
