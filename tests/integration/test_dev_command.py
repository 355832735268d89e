"""`iap dev` as a person starts it: a stable admin URL, its ports named when taken, the admin
listener's index, and `--otlp`, which makes each audit line's trace_id the id of a trace."""

from __future__ import annotations

import json
import subprocess
import sys

import aiohttp

from iap.config import Address
from iap.web.server import bind
from tests.conftest import RunningReceiver, free_port
from tests.support.process import IapProcess, start_iap


def iap_dev(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "iap", "dev", *args], capture_output=True, text=True, timeout=60
    )


def test_a_taken_port_is_named_with_the_option_that_changes_it() -> None:
    taken = bind(Address("127.0.0.1", 0))
    try:
        port = taken.getsockname()[1]
        result = iap_dev("--port", str(port), "--admin-port", str(free_port()))
    finally:
        taken.close()
    assert result.returncode == 2
    assert result.stderr == f"iap dev: port {port} is in use; choose another with --port\n"
    assert "iap dev ready" not in result.stdout


def test_a_taken_admin_port_is_named_with_admin_port() -> None:
    taken = bind(Address("127.0.0.1", 0))
    try:
        port = taken.getsockname()[1]
        result = iap_dev("--port", str(free_port()), "--admin-port", str(port))
    finally:
        taken.close()
    assert result.returncode == 2
    assert result.stderr == (
        f"iap dev: admin port {port} is in use; choose another with --admin-port\n"
    )


async def start_dev(*args: str) -> tuple[IapProcess, str]:
    admin = free_port()
    iap = await start_iap(
        "dev", "--port", str(free_port()), "--admin-port", str(admin), *args,
        ready_marker="iap dev ready: ",
    )  # fmt: skip
    return iap, f"http://127.0.0.1:{admin}"


def audit_lines(iap: IapProcess) -> list[dict[str, object]]:
    return [json.loads(line) for line in iap.stdout_lines if line.startswith("{")]


async def test_the_ready_block_names_the_admin_url_whose_index_lists_the_endpoints() -> None:
    iap, admin = await start_dev()
    try:
        await iap.wait_for_stdout("  tracing ")
        block = "\n".join(iap.stdout_lines)
        assert f"  admin       {admin}/   (metrics, healthz, readyz, jwks.json)" in block
        assert "  tracing     off (turn on with --otlp" in block
        async with aiohttp.ClientSession() as client:
            async with client.get(admin + "/") as resp:
                assert resp.status == 200
                assert resp.content_type == "text/plain"
                text = await resp.text()
            async with client.get(admin + "/", headers={"Accept": "text/html"}) as resp:
                assert resp.content_type == "text/html"
                page = await resp.text()
            for path in ("/metrics", "/healthz", "/readyz", "/jwks.json"):
                assert f"  {path}  " in text
                assert f'<a href="{path}"><code>{path}</code></a>' in page
                async with client.get(admin + path) as resp:
                    assert resp.status == 200, path  # every listed endpoint is served
    finally:
        assert await iap.stop() == 0, iap.stderr_lines


async def test_otlp_makes_the_audit_trace_id_the_exported_trace(
    otlp_receiver: RunningReceiver,
) -> None:
    iap, _admin = await start_dev("--otlp", otlp_receiver.url)
    try:
        await iap.wait_for_stdout("  tracing ")
        assert f"  tracing     spans to {otlp_receiver.url}" in "\n".join(iap.stdout_lines)
        async with aiohttp.ClientSession() as client:
            async with client.get(iap.public_url + "/public/") as resp:
                assert resp.status == 200
        await iap.wait_for_stdout('"/public/"')  # its audit line
    finally:
        assert await iap.stop() == 0, iap.stderr_lines  # the drain flushes the spans
    [line] = [line for line in audit_lines(iap) if line["route"] == "public"]
    assert isinstance(line["trace_id"], str)
    assert len(line["trace_id"]) == 32
    server = [span for span in otlp_receiver.received.spans if span.name == "GET public"]
    assert [span.trace_id for span in server] == [line["trace_id"]]
