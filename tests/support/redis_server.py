"""A real redis-server on a free loopback port, started and stopped by a test fixture.

Never the shared server on 6379: every fixture gets its own, with persistence off. Extra
arguments (``--requirepass``, ``--user``, ``--tls-port`` ...) are passed on, and
:meth:`RedisServer.restart` starts the same server again on the same port.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
from dataclasses import dataclass

import pytest

REDIS_SERVER = "redis-server"


def redis_server_binary() -> str:
    """The path of redis-server; skips the test when it is missing, but fails under CI."""
    path = shutil.which(REDIS_SERVER) or (
        "/usr/bin/redis-server" if os.access("/usr/bin/redis-server", os.X_OK) else None
    )
    if path is None:
        reason = "redis-server not found (install the Debian package `redis-server`)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RedisServer:
    proc: asyncio.subprocess.Process
    port: int
    extra: tuple[str, ...] = ()

    async def restart(self) -> RedisServer:
        """Stop this server and start it again on the same port, with the same arguments."""
        await self.stop()
        return await start_redis_server(*self.extra, port=self.port)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def stop(self) -> None:
        """Terminate the server and wait for it; kill it if it lingers."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                async with asyncio.timeout(10):  # a hang guard, not a performance bound
                    await self.proc.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()


async def _answers_ping(port: int) -> bool:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    try:
        writer.write(b"PING\r\n")
        await writer.drain()
        # +PONG, or -NOAUTH from a server with a password: either way it is serving.
        return (await reader.readline()).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def start_redis_server(*extra: str, port: int | None = None) -> RedisServer:
    """Start redis-server on ``port`` (a free loopback port by default), with ``extra``
    arguments, and wait until it answers PING."""
    binary = redis_server_binary()
    port = port or _free_port()
    proc = await asyncio.create_subprocess_exec(
        *(binary, "--port", str(port), "--bind", "127.0.0.1"),
        *("--save", "", "--appendonly", "no"),
        *extra,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    server = RedisServer(proc, port, extra)
    try:
        async with asyncio.timeout(10):  # a hang guard, not a performance bound
            while not await _answers_ping(port):
                if proc.returncode is not None:
                    raise RuntimeError(f"redis-server exited with {proc.returncode}")
                await asyncio.sleep(0.02)
    except BaseException:
        await server.stop()
        raise
    return server


@dataclass
class Sentinel:
    proc: asyncio.subprocess.Process
    port: int

    async def stop(self) -> None:
        await RedisServer(self.proc, self.port).stop()


def sentinel_config(master: str, master_port: int, port: int, directory: str, password: str) -> str:
    """A sentinel's config file (sentinel rewrites it, so each sentinel has its own)."""
    conf = os.path.join(directory, f"sentinel-{port}.conf")
    with open(conf, "w", encoding="utf-8") as file:
        file.write(
            f"port {port}\nbind 127.0.0.1\ndir {directory}\n"
            f"sentinel monitor {master} 127.0.0.1 {master_port} 1\n"
            f"sentinel auth-pass {master} {password}\n"
            f"sentinel down-after-milliseconds {master} 1000\n"
            f"sentinel failover-timeout {master} 10000\n"
        )
    return conf


async def start_sentinel(master: str, master_port: int, directory: str, password: str) -> Sentinel:
    """``redis-server --sentinel`` (what Debian's ``redis-sentinel`` runs) on a free port,
    watching ``master`` on ``master_port`` with a quorum of one; waits until it answers."""
    binary = redis_server_binary()
    port = _free_port()
    conf = sentinel_config(master, master_port, port, directory, password)
    proc = await asyncio.create_subprocess_exec(
        binary,
        conf,
        "--sentinel",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    sentinel = Sentinel(proc, port)
    try:
        async with asyncio.timeout(10):  # a hang guard, not a performance bound
            while not await _answers_ping(port):
                if proc.returncode is not None:
                    raise RuntimeError(f"redis sentinel exited with {proc.returncode}")
                await asyncio.sleep(0.02)
    except BaseException:
        await sentinel.stop()
        raise
    return sentinel
