"""iap as a real child process, as operators run it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


def write_config(directory: Path, document: dict[str, Any]) -> Path:
    path = directory / "iap.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


@dataclass
class IapProcess:
    proc: asyncio.subprocess.Process
    public_url: str = ""
    admin_url: str = ""
    stdout_lines: list[str] = field(default_factory=list)
    stderr_lines: list[str] = field(default_factory=list)
    _readers: list[asyncio.Task[None]] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait_for_stderr(self, text: str, count: int = 1) -> None:
        """Until ``text`` has appeared on ``count`` lines of the child's stderr."""
        async with asyncio.timeout(60):  # a hang guard, not a performance bound
            while sum(text in line for line in self.stderr_lines) < count:
                self._changed.clear()
                await self._changed.wait()

    async def wait_for_stdout(self, text: str) -> None:
        """Until ``text`` has appeared on a line of the child's stdout."""
        async with asyncio.timeout(60):  # a hang guard, not a performance bound
            while not any(text in line for line in self.stdout_lines):
                self._changed.clear()
                await self._changed.wait()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def memory_kib(self, field_name: str) -> int:
        """``VmRSS`` (now) or ``VmHWM`` (peak) of the process, in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
        raise LookupError(field_name)

    def children(self) -> list[int]:
        path = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        return [int(pid) for pid in path.read_text().split()]

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        try:
            async with asyncio.timeout(60):  # a hang guard, not a performance bound
                code = await self.proc.wait()
                await asyncio.gather(*self._readers)
        finally:
            if self.proc.returncode is None:  # it hung: take its workers down with it
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
        return code


_started: list[asyncio.subprocess.Process] = []


def kill_leftovers() -> None:
    """Kill every iap this test started that is still running (a failed test must not leave
    a proxy and its workers behind, holding ports)."""
    while _started:
        proc = _started.pop()
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)


async def _pump(stream: asyncio.StreamReader, sink: list[str], changed: asyncio.Event) -> None:
    async for line in stream:
        sink.append(line.decode(errors="replace").rstrip("\n"))
        changed.set()


async def start_iap(*args: str, ready_marker: str = "iap listening: ") -> IapProcess:
    """Run ``python -m iap ARGS``; return once it says it is listening (or has exited)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "iap", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
        start_new_session=True,  # its own process group: workers go with it in kill_leftovers
    )  # fmt: skip
    _started.append(proc)
    assert proc.stdout is not None
    assert proc.stderr is not None
    process = IapProcess(proc)
    stream = proc.stderr if ready_marker.startswith("iap listening") else proc.stdout
    sink = process.stderr_lines if stream is proc.stderr else process.stdout_lines
    async with asyncio.timeout(60):  # a hang guard, not a performance bound
        async for raw in stream:
            line = raw.decode().rstrip("\n")
            sink.append(line)
            if line.startswith(ready_marker):
                _read_addresses(process, line.removeprefix(ready_marker))
                break
    assert process.public_url, f"iap did not start: {sink}"
    process._readers = [
        asyncio.ensure_future(_pump(proc.stdout, process.stdout_lines, process._changed)),
        asyncio.ensure_future(_pump(proc.stderr, process.stderr_lines, process._changed)),
    ]
    return process


async def start_iap_dev(*args: str, port: int | None = None) -> IapProcess:
    """``iap dev`` on free ports (``port`` for the public one when given), once it is ready."""
    from tests.conftest import free_port  # here: tests.conftest imports this module

    public = port if port is not None else free_port()
    return await start_iap(
        "dev", "--port", str(public), "--admin-port", str(free_port()), *args,
        ready_marker="iap dev ready: ",
    )  # fmt: skip


def _read_addresses(process: IapProcess, text: str) -> None:
    if text.startswith("{"):
        where = json.loads(text)
        process.public_url, process.admin_url = where["public"], where["admin"]
    else:
        process.public_url = text.strip().rstrip("/")
