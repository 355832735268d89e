"""The Redis client of ``iap.adapters.redis_client`` against real servers: TLS with a
private CA and a client certificate, a unix socket, and Sentinel in front of a primary and
a replica (Debian's ``redis-sentinel``, named by a ``sentinel`` block or a
``redis+sentinel://`` url) with a ``SENTINEL FAILOVER`` mid-test (issue 15, point 2)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio
import trustme

from iap import config
from iap.adapters import redis_client
from iap.adapters.ratelimit import RateLimiter
from iap.adapters.ratelimit_redis import RedisWindows
from iap.adapters.redis_passwords import RedisPasswords
from iap.adapters.redis_store import RedisStore
from iap.adapters.store import StoreUnavailable
from iap.domain.ratelimit import Quota
from iap.errors import ConfigError
from tests.conftest import StartEdge, Upstream, free_port
from tests.support.redis_server import (
    RedisServer,
    start_redis_server,
    start_sentinel,
)
from tests.support.signin import running_stack, signin_config

MASTER = "iapmaster"


def store_for(block: dict[str, Any], passwords: RedisPasswords | None = None) -> RedisStore:
    settings = config.Redis.model_validate(block)
    client = redis_client.connect(settings, passwords or RedisPasswords())
    return RedisStore(client, backend=redis_client.backend(settings))


@pytest.fixture
async def tls_redis(tmp_path: Path) -> AsyncIterator[tuple[RedisServer, int, dict[str, Path]]]:
    ca = trustme.CA()
    files = {name: tmp_path / f"{name}.pem" for name in ("ca", "cert", "key", "ccert", "ckey")}
    ca.cert_pem.write_to_path(str(files["ca"]))
    server_cert = ca.issue_cert("127.0.0.1")
    server_cert.cert_chain_pems[0].write_to_path(str(files["cert"]))
    server_cert.private_key_pem.write_to_path(str(files["key"]))
    client_cert = ca.issue_cert("iap-client")
    client_cert.cert_chain_pems[0].write_to_path(str(files["ccert"]))
    client_cert.private_key_pem.write_to_path(str(files["ckey"]))
    tls_port = free_port()
    server = await start_redis_server(
        *("--tls-port", str(tls_port), "--tls-auth-clients", "yes"),
        *("--tls-cert-file", str(files["cert"]), "--tls-key-file", str(files["key"])),
        *("--tls-ca-cert-file", str(files["ca"])),
    )
    try:
        yield server, tls_port, files
    finally:
        await server.stop()


async def test_tls_with_a_client_certificate(
    tls_redis: tuple[RedisServer, int, dict[str, Path]],
) -> None:
    _, port, files = tls_redis
    url = f"rediss://127.0.0.1:{port}/0"
    store = store_for(
        {
            "url": url,
            "ca_file": str(files["ca"]),
            "cert_file": str(files["ccert"]),
            "key_file": str(files["ckey"]),
        }
    )
    try:
        await store.put("handle", b"sealed", ttl=60)
        assert await store.get("handle") == b"sealed"
        assert await store.ping()
        assert store.state() == {"backend": "redis-tls", "answers": True}
    finally:
        await store.close()


async def test_tls_without_the_client_certificate_fails_closed(
    tls_redis: tuple[RedisServer, int, dict[str, Path]],
) -> None:
    _, port, files = tls_redis
    store = store_for({"url": f"rediss://127.0.0.1:{port}/0", "ca_file": str(files["ca"])})
    try:
        assert not await store.ping()
        assert store.state()["answers"] is False
        with pytest.raises(StoreUnavailable):
            await store.get("handle")
    finally:
        await store.close()


async def test_tls_refuses_a_server_outside_the_ca(
    tls_redis: tuple[RedisServer, int, dict[str, Path]], tmp_path: Path
) -> None:
    _, port, files = tls_redis
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    block = {"url": f"rediss://127.0.0.1:{port}/0", "ca_file": str(other)}
    store = store_for(block | {"cert_file": str(files["ccert"]), "key_file": str(files["ckey"])})
    try:
        with pytest.raises(StoreUnavailable):
            await store.put("handle", b"sealed", ttl=60)
    finally:
        await store.close()


async def test_a_unix_socket(tmp_path: Path) -> None:
    socket_path = tmp_path / "redis.sock"
    server = await start_redis_server("--unixsocket", str(socket_path))
    store = store_for({"url": f"unix://{socket_path}"})
    try:
        await store.put("handle", b"sealed", ttl=60)
        assert await store.get("handle") == b"sealed"
        assert store.state() == {
            "backend": "redis-unix",
            "answers": False,
            "error": "not checked yet",
        }
        assert await store.ping()
        assert store.state() == {"backend": "redis-unix", "answers": True}
    finally:
        await store.close()
        await server.stop()


@contextlib.asynccontextmanager
async def sentinel_pair(
    directory: Path, password: str
) -> AsyncIterator[tuple[RedisServer, RedisServer, int]]:
    """A primary, its replica in sync (both with ``requirepass``) and one sentinel that has
    found the replica."""
    auth = ("--requirepass", password, "--masterauth", password, "--repl-diskless-sync-delay", "0")
    # A directory each: a full sync writes dump.rdb there, never in the working directory.
    dirs = [directory / name for name in ("primary", "replica")]
    for path in dirs:
        path.mkdir()
    primary = await start_redis_server(*auth, "--dir", str(dirs[0]))
    replica = await start_redis_server(
        *auth, "--dir", str(dirs[1]), "--replicaof", "127.0.0.1", str(primary.port)
    )
    sentinel = None
    try:
        await replicated(primary, password)  # the replica is in sync
        sentinel = await start_sentinel(MASTER, primary.port, str(directory), password)
        async with sentinel_events(sentinel.port) as (watcher, events):
            if not await watcher.execute_command("SENTINEL", "REPLICAS", MASTER):
                await next_event(events, "+slave")
            # Sentinel promotes only a replica it has connected to and read INFO from; no
            # event says so, so ask (as redis_server's start does for PING).
            async with asyncio.timeout(30):  # a hang guard, not a performance bound
                while not await promotable(watcher):
                    if sentinel.proc.returncode is not None:
                        raise RuntimeError("the sentinel exited")
                    await asyncio.sleep(0.05)
        yield primary, replica, sentinel.port
    finally:
        if sentinel is not None:
            await sentinel.stop()
        await replica.stop()
        await primary.stop()


async def promotable(watcher: redis.asyncio.Redis) -> bool:
    """Whether the sentinel sees the replica up, linked to the primary and INFO-refreshed."""
    [replica] = await watcher.execute_command("SENTINEL", "REPLICAS", MASTER)
    return bool(replica[b"flags"] == b"slave" and replica[b"master-link-status"] == b"ok")


@contextlib.asynccontextmanager
async def sentinel_events(port: int) -> AsyncIterator[tuple[redis.asyncio.Redis, Any]]:
    """A client of the sentinel, and its event stream (subscribed before anything is asked)."""
    watcher = redis.asyncio.Redis(port=port)
    events = watcher.pubsub()
    await events.psubscribe("*")
    try:
        yield watcher, events
    finally:
        await events.aclose()
        await watcher.aclose()


async def next_event(events: Any, channel: str) -> bytes:
    """The payload of the sentinel's next ``channel`` event (``+switch-master`` ...)."""
    async with asyncio.timeout(30):  # a hang guard, not a performance bound
        async for message in events.listen():
            if message["type"] == "pmessage" and message["channel"] == channel.encode():
                return bytes(message["data"])
    raise AssertionError(f"the sentinel closed before {channel}")


def sentinel_settings(form: str, port: int) -> config.Redis:
    """The same Sentinel setup, written as a ``sentinel`` block or a ``redis+sentinel://``
    url (the form of ``limits``' sentinel storage)."""
    if form == "url":
        return config.Redis.model_validate({"url": f"redis+sentinel://127.0.0.1:{port}/{MASTER}/0"})
    block = {"master": MASTER, "addresses": [f"127.0.0.1:{port}"]}
    return config.Redis.model_validate({"sentinel": block})


@pytest.mark.parametrize("form", ["block", "url"])
async def test_sentinel_failover_keeps_sessions_and_takes_new_writes(
    tmp_path: Path, form: str
) -> None:
    password = "sentinel-data-pw"
    async with sentinel_pair(tmp_path, password) as (primary, replica, sentinel_port):
        settings = sentinel_settings(form, sentinel_port)
        client = redis_client.connect(settings, RedisPasswords(password=password))
        store = RedisStore(client, backend=redis_client.backend(settings))
        limiter = RateLimiter(RedisWindows(client))  # the same client, as build_edge wires it
        quota = Quota(requests=100, per=86400)  # a day: no window boundary mid-test
        on_replica = redis.asyncio.Redis(port=replica.port, password=password)
        try:
            await store.put("before", b"sealed-before", ttl=600)
            assert store.state()["backend"] == "redis-sentinel"
            counted = await limiter.hit("k", quota, on_store_error="deny")
            assert (counted.allowed, counted.store_error) == (True, False)
            await replicated(primary, password)
            async with sentinel_events(sentinel_port) as (watcher, events):
                assert await watcher.execute_command("SENTINEL", "FAILOVER", MASTER)
                switched = await next_event(events, "+switch-master")
            assert switched.split()[-1] == str(replica.port).encode()  # the replica leads
            assert await store.get("before") == b"sealed-before"
            await first_write_on(store, on_replica)
            assert await store.ping()
            counted = await limiter.hit("k", quota, on_store_error="deny")
            assert (counted.allowed, counted.store_error) == (True, False)
            assert counted.remaining == 98  # the count from before the failover replicated
        finally:
            await on_replica.aclose()
            await limiter.close()
            await store.close()


async def replicated(primary: RedisServer, password: str) -> None:
    """Wait until the replica has every write made so far: one more write on the primary,
    then ``WAIT`` for its acknowledgement (replication keeps the primary's order)."""
    direct = redis.asyncio.Redis(port=primary.port, password=password)
    try:
        await direct.set("fence", "1")
        assert await direct.execute_command("WAIT", 1, 20000) == 1
    finally:
        await direct.aclose()


async def first_write_on(store: RedisStore, primary: redis.asyncio.Redis) -> None:
    """Write through the store until a write lands on ``primary``: until the sentinel
    demotes the old primary (its next INFO, up to 10 s after a manual failover), a pooled
    connection may still reach it, and a write there is lost (docs/operations.md)."""
    async with asyncio.timeout(30):  # a hang guard, not a performance bound
        while True:
            with contextlib.suppress(StoreUnavailable):
                await store.put("after", b"sealed-after", ttl=600)
                if await primary.get("iap:session:after") == b"sealed-after":
                    return


async def test_sessions_and_rate_limits_share_one_client_and_reload_refuses_redis(
    tmp_path: Path, upstream: Upstream, start_edge: StartEdge
) -> None:
    """One pool per process; a changed ``redis`` block on SIGHUP is refused by name."""
    server = await start_redis_server()
    try:
        async with running_stack(
            upstream, start_edge, tmp_path, redis={"url": server.url}
        ) as stack:
            edge = stack.edge.edge
            assert edge.signin is not None
            shared = edge.limiter._shared  # type: ignore[attr-defined]
            assert shared._client is edge.signin.store._client  # type: ignore[attr-defined]
            document = signin_config(upstream.url, stack.idp, stack.edge.port, tmp_path)
            changed = document | {"redis": {"url": server.url, "timeout": "2s"}}
            with pytest.raises(ConfigError) as refused:
                edge.reload(config.parse(changed))
            assert refused.value.problems == ["redis: changes need a restart, not a reload"]
            assert edge.config.redis is not None
            assert edge.config.redis.timeout == 0.5  # the running value stays
            await edge.stop()
    finally:
        await server.stop()
