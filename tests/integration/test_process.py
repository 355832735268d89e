"""iap as operators run it: the CLI, exit codes, memory under large bodies, drain, workers."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import redis.asyncio

from iap.adapters.signing_keys import write_new_key
from iap.config import Address
from iap.web.server import bind
from tests.conftest import Upstream, edge_config, free_port
from tests.support.process import IapProcess, start_iap, start_iap_dev, write_config
from tests.support.redis_server import start_redis_server
from tests.support.signin import Visitor

MB = 10**6


def iap_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "iap", *args], capture_output=True, text=True, timeout=60, env=env
    )


def test_check_reports_every_problem_and_exits_2(tmp_path: Path) -> None:
    document = edge_config("http://127.0.0.1:1")
    document["trusted_proxies"] = ["10.0.0.1/8"]
    document["routes"][0]["timeouts"] = {"connect": "soon"}
    document["listen"]["adress"] = "0.0.0.0:1"
    result = iap_cli("check", "-c", str(write_config(tmp_path, document)))
    assert result.returncode == 2
    problems = [line for line in result.stderr.splitlines() if line.startswith("config error: ")]
    assert len(problems) == 3, result.stderr
    joined = "\n".join(problems)
    assert "trusted_proxies" in joined
    assert "routes[0].timeouts.connect" in joined
    assert "listen.adress: unknown key" in joined


def test_check_accepts_a_valid_config(tmp_path: Path) -> None:
    result = iap_cli("check", "-c", str(write_config(tmp_path, edge_config("http://127.0.0.1:1"))))
    assert (result.returncode, result.stderr) == (0, "")


def test_check_takes_both_secrets_from_the_environment(tmp_path: Path) -> None:
    write_new_key(tmp_path / "signing")
    document = edge_config("http://127.0.0.1:1")
    document["oidc"] = {
        "issuer": "https://login.microsoftonline.com/organizations/v2.0",
        "allowed_tenants": ["t1"],
        "client_id": "c1",
    }
    document["tokens"] = {"issuer": "https://edge/.iap", "keys_dir": str(tmp_path / "signing")}
    path = str(write_config(tmp_path, document))
    clean = {k: v for k, v in os.environ.items() if not k.startswith("IAP_")}
    refused = iap_cli("check", "-c", path, env=clean)
    assert refused.returncode == 2
    assert "IAP_OIDC_CLIENT_SECRET" in refused.stderr
    assert "IAP_SESSION_KEYS" in refused.stderr
    variables = {"IAP_OIDC_CLIENT_SECRET": "canary-secret", "IAP_SESSION_KEYS": "A" * 43}
    result = iap_cli("check", "-c", path, env=clean | variables)
    assert (result.returncode, result.stderr) == (0, "")


def test_run_with_bad_config_exits_2_before_binding(tmp_path: Path) -> None:
    port = free_port()
    document = edge_config("http://127.0.0.1:1", listen={"address": f"127.0.0.1:{port}"})
    document["routes"][0]["policy"] = {"allow": {"roles": ["staff"]}}
    result = iap_cli("run", "-c", str(write_config(tmp_path, document)))
    assert result.returncode == 2
    assert "routes[0].policy" in result.stderr
    assert "listening" not in result.stderr


def test_run_on_a_taken_port_exits_1(tmp_path: Path) -> None:
    with bind(Address("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        document = edge_config("http://127.0.0.1:1", listen={"address": f"127.0.0.1:{port}"})
        result = iap_cli("run", "-c", str(write_config(tmp_path, document)))
    assert result.returncode == 1
    assert "cannot listen" in result.stderr


def test_usage_errors_exit_2() -> None:
    assert iap_cli("run").returncode == 2
    assert iap_cli("frobnicate").returncode == 2


async def test_large_bodies_stream_with_bounded_memory(tmp_path: Path, upstream: Upstream) -> None:
    size = 200 * MB
    document = edge_config(upstream.url, route={"max_body": "300MB"})
    iap = await start_iap("run", "-c", str(write_config(tmp_path, document)))
    try:
        baseline_kib = iap.memory_kib("VmRSS")
        async with aiohttp.ClientSession() as client:
            received = 0
            async with client.get(f"{iap.public_url}/big?n={size}") as resp:
                assert resp.status == 200
                async for chunk in resp.content.iter_any():
                    received += len(chunk)
            assert received == size

            async def upload() -> AsyncIterator[bytes]:
                block = b"u" * 2**16
                for _ in range(size // len(block)):
                    yield block
                yield b"u" * (size % len(block))

            async with client.post(f"{iap.public_url}/upload", data=upload()) as resp:
                assert (await resp.json())["bytes"] == size
        growth_mb = (iap.memory_kib("VmHWM") - baseline_kib) * 1024 / MB
        assert growth_mb < 50, f"RSS grew by {growth_mb:.1f} MB"
    finally:
        assert await iap.stop() == 0, iap.stderr_lines


async def test_sigterm_drains_in_flight_requests(tmp_path: Path, upstream: Upstream) -> None:
    iap = await start_iap("run", "-c", str(write_config(tmp_path, edge_config(upstream.url))))
    async with aiohttp.ClientSession() as client:
        pending = asyncio.ensure_future(client.get(f"{iap.public_url}/hold"))
        await upstream.seen.arrived.wait()
        iap.proc.send_signal(signal.SIGTERM)
        await iap.wait_for_stderr("iap: draining")
        upstream.seen.release.set()
        async with await pending as resp:
            assert resp.status == 200
            assert await resp.text() == "released"
    assert await iap.stop() == 0
    assert sum('"status":200' in line for line in iap.stdout_lines) == 1


async def test_workers_share_the_port_and_aggregate_metrics(
    tmp_path: Path, upstream: Upstream
) -> None:
    document = edge_config(
        upstream.url,
        listen={"address": f"127.0.0.1:{free_port()}"},
        admin={"address": f"127.0.0.1:{free_port()}"},
    )
    iap = await start_iap("run", "-c", str(write_config(tmp_path, document)), "--workers", "2")
    try:
        async with aiohttp.ClientSession() as client:
            await iap.wait_for_stderr("iap listening: ", count=2)
            assert len(iap.children()) == 2
            for _ in range(20):
                async with client.get(iap.public_url, headers={"Connection": "close"}) as resp:
                    assert resp.status == 200
            async with client.get(f"{iap.admin_url}/metrics") as resp:
                text = await resp.text()
        assert 'iap_requests_total{code="200",method="GET",route="app"} 20.0' in text, text
    finally:
        assert await iap.stop() == 0, iap.stderr_lines


def exists(path: Path) -> bool:
    return path.exists()


async def stdout_line(iap: IapProcess, prefix: str) -> str:
    """The first line of the child's stdout that starts with ``prefix``, once it is there."""
    async with asyncio.timeout(60):  # a hang guard, not a performance bound
        while not (lines := [line for line in iap.stdout_lines if line.startswith(prefix)]):
            iap._changed.clear()
            await iap._changed.wait()
    return lines[0]


async def test_dev_serves_the_demo_page(tmp_path: Path) -> None:
    port = free_port()
    iap = await start_iap_dev(port=port)
    try:
        assert iap.public_url == f"http://127.0.0.1:{port}"
        async with (
            aiohttp.ClientSession() as client,
            client.get(iap.public_url + "/public/", headers={"Accept": "text/html"}) as resp,
        ):
            assert resp.status == 200
            page = await resp.text()
        assert "Hello from the demo upstream" in page
        # The hop to the demo upstream is mutual TLS: it saw iap's SPIFFE ID.
        spiffe = '<code id="client-certificate">spiffe://cluster.local/ns/iap/sa/iap</code>'
        assert spiffe in page
        line = await stdout_line(iap, "  dev certificates: ")
        certs = Path(line.removeprefix("  dev certificates: ").split(" (")[0])
        assert exists(certs / "edge-client.crt")
    finally:
        assert await iap.stop() == 0, iap.stderr_lines
    assert not exists(certs)  # the temporary material is removed at exit


async def test_dev_keeps_sessions_in_redis_when_given_one() -> None:
    """`iap dev --redis URL` (deploy/compose): the session a sign-in makes is kept in that
    Redis, the cookie holds only its handle, and the next request finds it there."""
    server = await start_redis_server()
    client = redis.asyncio.Redis.from_url(server.url)
    iap = await start_iap_dev("--redis", server.url)
    try:
        async with aiohttp.ClientSession() as http:
            visitor = Visitor(http, iap.public_url)
            assert await client.dbsize() == 0
            answer = await visitor.sign_in("alice", rd="/")
            assert answer.status == 302, answer
            assert await client.dbsize() > 0
            page = await visitor.get("/", headers={"Accept": "text/html"})
            assert page.status == 200, page
            await client.flushdb()  # the session is gone from Redis: signed out
            again = await visitor.get("/", headers={"Accept": "text/html"})
            assert again.status == 302, again
            assert "/.iap/login" in again.location
    finally:
        assert await iap.stop() == 0, iap.stderr_lines
        await client.aclose()
        await server.stop()


def test_dev_refuses_a_redis_url_that_is_not_one() -> None:
    result = iap_cli(
        "dev", "--port", str(free_port()), "--admin-port", str(free_port()),
        "--redis", "http://127.0.0.1:1",
    )  # fmt: skip
    assert result.returncode == 2
    assert "config error: redis.url: expected a redis://" in result.stderr


async def test_sighup_reloads_routes_and_refuses_a_bad_config(
    tmp_path: Path, upstream: Upstream
) -> None:
    path = write_config(tmp_path, edge_config(upstream.url))
    iap = await start_iap("run", "-c", str(path))
    try:
        async with aiohttp.ClientSession() as client:
            async with client.get(f"{iap.public_url}/old") as resp:
                assert resp.status == 200
            write_config(
                tmp_path, edge_config(upstream.url, route={"match": {"path_prefix": "/new/"}})
            )
            iap.proc.send_signal(signal.SIGHUP)
            await iap.wait_for_stderr("iap: reloaded routes and policies")
            async with client.get(f"{iap.public_url}/old") as resp:
                assert resp.status == 404
            async with client.get(f"{iap.public_url}/new/x") as resp:
                assert resp.status == 200
            path.write_text("routes: [}", encoding="utf-8")
            iap.proc.send_signal(signal.SIGHUP)
            await iap.wait_for_stderr("iap: reload refused")
            async with client.get(f"{iap.public_url}/new/x") as resp:
                assert resp.status == 200  # the last good routes keep serving
    finally:
        assert await iap.stop() == 0, iap.stderr_lines


def test_check_loads_tls_material_and_names_every_key(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate", encoding="utf-8")
    document = edge_config("https://127.0.0.1:1")
    document["listen"]["tls"] = {"cert_file": str(garbage), "key_file": str(garbage)}
    document["routes"][0]["upstream_tls"] = {"ca_file": str(garbage)}
    result = iap_cli("check", "-c", str(write_config(tmp_path, document)))
    assert result.returncode == 2
    assert "listen.tls" in result.stderr
    assert "routes[0].upstream_tls" in result.stderr


async def test_workers_share_a_rate_limit_through_redis(tmp_path: Path, upstream: Upstream) -> None:
    """``--workers 2`` on one redis-server: exactly ``requests`` pass in all, whichever
    worker each new connection lands on (counting per worker would let about twice through)."""
    redis = await start_redis_server()
    document = edge_config(
        upstream.url,
        listen={"address": f"127.0.0.1:{free_port()}"},
        admin={"address": f"127.0.0.1:{free_port()}"},
        route={"rate_limit": {"requests": 10, "per": "60s", "key": "route"}},
    )
    iap = await start_iap(
        "run",
        "-c",
        str(write_config(tmp_path, document | {"redis": {"url": redis.url}})),
        "--workers",
        "2",
    )
    try:
        await iap.wait_for_stderr("iap listening: ", count=2)
        statuses = []
        async with aiohttp.ClientSession() as client:
            for _ in range(40):  # a new connection each: SO_REUSEPORT spreads them
                async with client.get(iap.public_url, headers={"Connection": "close"}) as resp:
                    statuses.append(resp.status)
        assert statuses == [200] * 10 + [429] * 30
        assert len(upstream.seen.requests) == 10
    finally:
        assert await iap.stop() == 0, iap.stderr_lines
        await redis.stop()
