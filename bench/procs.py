"""Processes of a benchmark run: start, wait for, stop, and read the CPU and memory of a
target from /proc (Linux), its child processes included (``iap run --workers 2``)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

HOST = "127.0.0.1"
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it if this runner dies, even by SIGKILL."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@contextlib.contextmanager
def spawn(
    argv: Sequence[str], log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``argv`` in its own session (stdout discarded, stderr to ``log``); stop it on exit.

    ``env`` adds to (or overrides) this runner's environment."""
    with log.open("wb") as stderr:
        proc = subprocess.Popen(
            argv,
            env={**os.environ, **env} if env else None,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,  # Ctrl-C reaches only this runner, which stops children
            preexec_fn=_die_with_parent,
        )
    try:
        yield proc
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def http_status(url: str, timeout: float = 2.0, headers: dict[str, str] | None = None) -> int:
    try:
        request = urllib.request.Request(url, headers=headers or {})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code


def wait_ready(
    url: str, proc: subprocess.Popen[bytes], log: Path, ready: tuple[int, ...] = (200,)
) -> None:
    """Poll ``url`` until it answers a status in ``ready``; fail early if ``proc`` exits."""
    deadline = time.monotonic() + READY_TIMEOUT
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{proc.args!r} exited with {proc.returncode}:\n{tail(log)}")
        try:
            status = http_status(url, timeout=1.0)
            if status in ready:
                return
            last = f"HTTP {status}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.05)
    raise BenchError(f"{url} not ready after {READY_TIMEOUT:.0f}s ({last}):\n{tail(log)}")


def metric(url: str, name: str) -> float | None:
    """One unlabelled sample from a Prometheus text page; None when absent or unreachable."""
    try:
        with urllib.request.urlopen(url, timeout=5.0) as response:
            text = response.read().decode(errors="replace")
    except OSError:
        return None
    found = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else None


def tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class BenchError(Exception):
    pass


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each thread of ``pid``; empty where /proc is missing.

    A thread that ended between two readings is missed, which the long-lived threads of iap
    (event loop, span export) never do.
    """
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    cpu = {}
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
                fields = stat[stat.rindex(")") + 2 :].split()
                cpu[int(tid)] = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return cpu


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (a supervisor's workers), from /proc children."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{current}/task"):
                with contextlib.suppress(OSError, ValueError):
                    children = Path(f"/proc/{current}/task/{tid}/children").read_text()
                    todo += [int(child) for child in children.split()]
    return found


def tree_cpu(pids: Sequence[int]) -> dict[int, float]:
    """CPU seconds of each thread, keyed by thread id, of ``pids`` and their descendants."""
    return {
        tid: cpu
        for pid in pids
        for process in descendants(pid)
        for tid, cpu in thread_cpu(process).items()
    }


def tree_rss(pids: Sequence[int]) -> tuple[float, int]:
    """Resident memory (MiB) of ``pids`` and their descendants, and how many processes."""
    total, count = 0, 0
    for process in {p for pid in pids for p in descendants(pid)}:
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{process}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                    count += 1
    return total / 1024, count
