"""A real redis-server on a free loopback port, started and stopped by a test fixture;
Debian's ``redis-sentinel`` in front of one; and a real 3-master Redis Cluster.

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
from pathlib import Path

import pytest
import redis.asyncio

REDIS_SERVER = "redis-server"


def _binary(name: str, package: str) -> str:
    """The path of ``name``; skips the test when it is missing, but fails under CI."""
    path = shutil.which(name) or (
        f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None
    )
    if path is None:
        reason = f"{name} not found (install the Debian package `{package}`)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def redis_server_binary() -> str:
    """The path of redis-server; skips the test when it is missing, but fails under CI."""
    return _binary(REDIS_SERVER, "redis-server")


def redis_sentinel_binary() -> str:
    """Debian's ``redis-sentinel`` (/usr/bin/redis-sentinel, package ``redis-sentinel``)."""
    return _binary("redis-sentinel", "redis-sentinel")


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
    """Debian's ``redis-sentinel`` on a free port, watching ``master`` on ``master_port``
    with a quorum of one; waits until it answers."""
    binary = redis_sentinel_binary()
    port = _free_port()
    conf = sentinel_config(master, master_port, port, directory, password)
    proc = await asyncio.create_subprocess_exec(
        binary,
        conf,
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


@dataclass(frozen=True)
class ClusterTLS:
    """PEM files for a TLS cluster: clients and the cluster bus speak TLS (``tls-cluster``)."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    def server_args(self) -> tuple[str, ...]:
        return (
            *("--tls-port", str(_free_port()), "--tls-cluster", "yes"),
            *("--tls-cert-file", str(self.cert_file), "--tls-key-file", str(self.key_file)),
            *("--tls-ca-cert-file", str(self.ca_file), "--tls-auth-clients", "no"),
        )


@dataclass
class RedisClusterNodes:
    """The masters of a Redis Cluster, each a :class:`RedisServer` with its own directory
    (and, with TLS, a TLS port beside the plain one the fixture polls)."""

    servers: list[RedisServer]
    tls: ClusterTLS | None = None

    def client_port(self, server: RedisServer) -> int:
        """The port clients use: the TLS port with TLS, else the plain one."""
        if self.tls is None:
            return server.port
        return int(server.extra[server.extra.index("--tls-port") + 1])

    @property
    def url(self) -> str:
        """A seed node, as ``redis.url`` names it with ``cluster: true``."""
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://127.0.0.1:{self.client_port(self.servers[0])}/0"

    async def stop(self) -> None:
        for server in self.servers:
            await server.stop()


async def start_redis_cluster(
    directory: Path,
    *extra: str,
    admin_password: str | None = None,
    masters: int = 3,
    tls: ClusterTLS | None = None,
) -> RedisClusterNodes:
    """``masters`` redis-servers with ``--cluster-enabled yes`` joined by
    ``redis-cli --cluster create`` (no replicas), returned once every node reports
    ``cluster_state:ok``. ``admin_password`` is the ``default`` user's, for redis-cli."""
    nodes = RedisClusterNodes([], tls)
    try:
        for index in range(masters):
            home = directory / f"cluster-node-{index}"
            home.mkdir()
            # Its own bus port: the default, port + 10000, may be taken or past 65535.
            bus = ("--cluster-port", str(_free_port()))
            enabled = ("--cluster-enabled", "yes", "--cluster-node-timeout", "2000", *bus)
            conf = ("--cluster-config-file", str(home / "nodes.conf"), "--dir", str(home))
            tls_args = tls.server_args() if tls else ()
            nodes.servers.append(await start_redis_server(*enabled, *conf, *tls_args, *extra))
        await _create(nodes, admin_password)
        for server in nodes.servers:
            await cluster_ok(server.port, admin_password)
    except BaseException:
        await nodes.stop()
        raise
    return nodes


async def _create(nodes: RedisClusterNodes, admin_password: str | None) -> None:
    """``redis-cli --cluster create`` over the nodes' client ports (TLS with TLS)."""
    cli = _binary("redis-cli", "redis-tools")
    addresses = [f"127.0.0.1:{nodes.client_port(server)}" for server in nodes.servers]
    tls = ("--tls", "--cacert", str(nodes.tls.ca_file)) if nodes.tls else ()
    env = os.environ | ({"REDISCLI_AUTH": admin_password} if admin_password else {})
    create = await asyncio.create_subprocess_exec(
        *(cli, *tls, "--cluster", "create", *addresses),
        *("--cluster-replicas", "0", "--cluster-yes"),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    async with asyncio.timeout(30):  # a hang guard, not a performance bound
        output, _ = await create.communicate()
    if create.returncode != 0:
        raise RuntimeError(f"redis-cli --cluster create failed: {output.decode()[-2000:]}")


async def cluster_ok(port: int, password: str | None) -> None:
    """Poll ``CLUSTER INFO`` on the node at ``port`` until it says ``cluster_state:ok``."""
    client = redis.asyncio.Redis(port=port, password=password)
    try:
        async with asyncio.timeout(30):  # a hang guard, not a performance bound
            while True:
                info = await client.execute_command("CLUSTER INFO")
                state = info.get("cluster_state") if isinstance(info, dict) else None
                if state == "ok" or (isinstance(info, bytes) and b"cluster_state:ok" in info):
                    return
                await asyncio.sleep(0.05)
    finally:
        await client.aclose()
