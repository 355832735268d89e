"""``iap run --workers N`` kept up by its parent: a worker that dies is started again (with
growing delays while it keeps dying, counted in ``iap_worker_restarts_total``), replacements
serve the config of the last accepted SIGHUP, and SIGTERM drains every worker, killing what
is still there after ``drain_timeout`` plus the margin. Real iap processes throughout."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from iap.certs import issue_dev_material
from tests.conftest import Upstream, edge_config, free_port
from tests.support.process import IapProcess, start_iap, write_config

LISTENING = "iap listening: "


def fixed_ports(upstream: Upstream, **overrides: Any) -> dict[str, Any]:
    """Workers share SO_REUSEPORT listeners, so the ports must be fixed (not 0)."""
    return edge_config(
        upstream.url,
        listen={"address": f"127.0.0.1:{free_port()}"},
        admin={"address": f"127.0.0.1:{free_port()}"},
        **overrides,
    )


async def start_workers(path: Path, workers: int = 2) -> IapProcess:
    iap = await start_iap("run", "-c", str(path), "--workers", str(workers))
    await iap.wait_for_stderr(LISTENING, count=workers)
    return iap


async def statuses(iap: IapProcess, path: str, count: int = 20) -> list[int]:
    """``count`` requests, each on a new connection, so SO_REUSEPORT spreads them."""
    seen = []
    async with aiohttp.ClientSession() as client:
        for _ in range(count):
            async with client.get(iap.public_url + path, headers={"Connection": "close"}) as resp:
                seen.append(resp.status)
    return seen


async def kill_and_wait_for_replacement(iap: IapProcess, pid: int, listening: int) -> int:
    """SIGKILL worker ``pid``; once its replacement listens (line number ``listening``),
    the replacement's pid."""
    before = set(iap.children())
    os.kill(pid, signal.SIGKILL)
    await iap.wait_for_stderr(f"iap: worker {pid} exited with -9; restarting in ")
    await iap.wait_for_stderr(LISTENING, count=listening)
    (replacement,) = set(iap.children()) - (before - {pid})
    return replacement


async def metrics(iap: IapProcess) -> str:
    async with (
        aiohttp.ClientSession() as client,
        client.get(f"{iap.admin_url}/metrics") as resp,
    ):
        return await resp.text()


def restart_delays(iap: IapProcess) -> list[float]:
    found = (re.search(r"; restarting in ([0-9.]+)s$", line) for line in iap.stderr_lines)
    return [float(match.group(1)) for match in found if match]


async def test_a_killed_worker_is_replaced_and_counted(tmp_path: Path, upstream: Upstream) -> None:
    iap = await start_workers(write_config(tmp_path, fixed_ports(upstream)))
    try:
        assert await statuses(iap, "/") == [200] * 20
        assert "\niap_worker_restarts_total 0.0\n" in await metrics(iap)
        victim, survivor = iap.children()
        replacement = await kill_and_wait_for_replacement(iap, victim, listening=3)
        assert sorted(iap.children()) == sorted([survivor, replacement])
        assert victim not in iap.children()
        assert await statuses(iap, "/") == [200] * 20
        text = await metrics(iap)
        assert "\niap_worker_restarts_total 1.0\n" in text, text
        # The dead worker's requests stay in the totals: 40 were answered in all.
        assert 'iap_requests_total{code="200",method="GET",route="app"} 40.0' in text
    finally:
        assert await iap.stop() == 0, iap.stderr_lines


async def test_a_worker_that_keeps_dying_waits_longer_each_time(
    tmp_path: Path, upstream: Upstream
) -> None:
    iap = await start_workers(write_config(tmp_path, fixed_ports(upstream)))
    try:
        victim = iap.children()[0]
        for listening in (3, 4, 5):  # each replacement dies as soon as it listens
            victim = await kill_and_wait_for_replacement(iap, victim, listening)
        assert restart_delays(iap) == [0.5, 1.0, 2.0]
        assert await statuses(iap, "/") == [200] * 20
    finally:
        assert await iap.stop() == 0, iap.stderr_lines


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT])
async def test_sigterm_drains_every_worker_and_the_parent_exits(
    tmp_path: Path, upstream: Upstream, number: signal.Signals
) -> None:
    iap = await start_workers(write_config(tmp_path, fixed_ports(upstream)))
    async with aiohttp.ClientSession() as client:
        pending = asyncio.ensure_future(client.get(f"{iap.public_url}/hold"))
        await upstream.seen.arrived.wait()
        iap.proc.send_signal(number)
        await iap.wait_for_stderr("iap: draining", count=2)
        upstream.seen.release.set()
        async with await pending as resp:
            assert resp.status == 200
            assert await resp.text() == "released"
    assert await iap.stop() == 0, iap.stderr_lines
    assert not [line for line in iap.stderr_lines if "restarting" in line or "killing" in line]


async def test_a_worker_that_cannot_drain_is_killed_after_the_deadline(
    tmp_path: Path, upstream: Upstream
) -> None:
    iap = await start_workers(write_config(tmp_path, fixed_ports(upstream, drain_timeout="1s")))
    stuck, healthy = iap.children()
    os.kill(stuck, signal.SIGSTOP)  # it cannot act on SIGTERM
    code = await iap.stop()  # the process group is killed if the parent hangs
    assert code == 1, iap.stderr_lines
    # drain_timeout 1s + the 5s margin; then the stuck one is killed, the healthy one drained.
    assert f"iap: worker {stuck} did not drain within 6s; killing it" in iap.stderr_lines
    assert f"iap: worker {stuck} exited with -9" in iap.stderr_lines
    assert not [line for line in iap.stderr_lines if f"worker {healthy}" in line]
    assert not [line for line in iap.stderr_lines if "restarting" in line]


async def test_replacements_serve_the_last_accepted_reload(
    tmp_path: Path, upstream: Upstream
) -> None:
    document = fixed_ports(upstream)
    path = write_config(tmp_path, document)
    iap = await start_workers(path)
    try:
        write_config(tmp_path, document | {"routes": [document["routes"][0] | new_prefix()]})
        iap.proc.send_signal(signal.SIGHUP)
        await iap.wait_for_stderr("iap: reloaded routes and policies", count=2)
        await iap.wait_for_stderr("iap: new workers will serve the reloaded config")
        # Two refused reloads: a broken file, then a key that needs a restart.
        path.write_text("routes: [}", encoding="utf-8")
        iap.proc.send_signal(signal.SIGHUP)
        await iap.wait_for_stderr("iap: new workers keep the last good config: config error:")
        write_config(tmp_path, document | {"drain_timeout": "3s"})
        iap.proc.send_signal(signal.SIGHUP)
        await iap.wait_for_stderr(
            "iap: new workers keep the last good config: config error: drain_timeout: changes"
            " need a restart"
        )
        first, second = iap.children()
        os.kill(first, signal.SIGKILL)
        os.kill(second, signal.SIGKILL)
        await iap.wait_for_stderr("; restarting in ", count=2)
        await iap.wait_for_stderr(LISTENING, count=4)
        assert not {first, second} & set(iap.children())
        assert await statuses(iap, "/new/x") == [200] * 20  # the reloaded routes, not the file's
        assert await statuses(iap, "/old", count=5) == [404] * 5
    finally:
        assert await iap.stop() == 0, iap.stderr_lines


def new_prefix() -> dict[str, Any]:
    return {"match": {"path_prefix": "/new/"}}


async def test_a_worker_failing_on_its_config_is_retried_with_backoff_not_in_a_loop(
    tmp_path: Path, upstream: Upstream
) -> None:
    """The parent checked the files before forking; a replacement finds one gone, exits 2
    naming the key, and is tried again later and later until the file is back."""
    ca_file = issue_dev_material(tmp_path / "certs").ca_cert
    document = fixed_ports(upstream)
    document["routes"].append(
        {
            "name": "tls",
            "match": {"path_prefix": "/tls/"},
            "upstream": "https://127.0.0.1:1",
            "upstream_tls": {"ca_file": str(ca_file)},
            "policy": {"public": True},
        }
    )
    iap = await start_workers(write_config(tmp_path, document))
    try:
        ca_file.rename(tmp_path / "moved.crt")
        victim = iap.children()[0]
        os.kill(victim, signal.SIGKILL)
        await iap.wait_for_stderr("; restarting in ", count=3)
        assert restart_delays(iap)[:3] == [0.5, 1.0, 2.0]  # a 4th may come, 4s later
        assert "exited with 2; restarting in 1s" in "\n".join(iap.stderr_lines)
        assert [line for line in iap.stderr_lines if line.startswith("config error: routes[1]")]
        (tmp_path / "moved.crt").rename(ca_file)
        await iap.wait_for_stderr(LISTENING, count=3)  # the next try finds the file again
        assert len(iap.children()) == 2
        assert await statuses(iap, "/") == [200] * 20
    finally:
        assert await iap.stop() == 0, iap.stderr_lines
