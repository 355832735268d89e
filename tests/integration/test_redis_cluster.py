"""Redis Cluster mode (``redis.cluster: true``, issue 15 point 2) against a real 3-master
cluster that only an ACL user limited to ``iap:*`` keys may use, its password in a
``password_file``: sessions, sid indexes and refresh locks spread over the masters' slots,
a sign-in and a signed-in request through iap, a rate limit shared by two edges, and the
store failing closed (503 with ``Retry-After``, nothing forwarded) when the cluster is down.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio
import trustme

from iap import config
from iap.adapters import redis_client
from iap.adapters.ratelimit import RateLimiter
from iap.adapters.ratelimit_redis import RedisWindows
from iap.adapters.redis_store import RedisStore
from iap.adapters.store import StoreUnavailable
from iap.app import secrets
from iap.domain.ratelimit import Quota
from tests.conftest import StartEdge, Upstream, edge_config, free_port
from tests.support.process import start_iap, write_config
from tests.support.redis_server import (
    ClusterTLS,
    RedisClusterNodes,
    cluster_ok,
    start_redis_cluster,
)
from tests.support.signin import http, running_stack

__all__ = ["http"]

ADMIN = "cluster-admin-pw"
PASSWORD = "cluster-iap-pw"
JSON = {"Accept": "application/json"}
ACL = (
    *("--user", "default", "on", f">{ADMIN}", "~*", "&*", "+@all"),
    *("--user", "iap", "on", f">{PASSWORD}", "~iap:*", "+@all"),
)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[RedisClusterNodes]:
    nodes = await start_redis_cluster(tmp_path, *ACL, admin_password=ADMIN)
    try:
        yield nodes
    finally:
        await nodes.stop()


def cluster_block(nodes: RedisClusterNodes, directory: Path) -> dict[str, Any]:
    return {
        "url": nodes.url,
        "cluster": True,
        "username": "iap",
        "password_file": str(password_file(directory, PASSWORD)),
    }


def password_file(directory: Path, password: str) -> Path:
    path = directory / f"redis-{len(password)}.password"
    path.write_text(password + "\n")
    return path


def client_of(block: dict[str, Any]) -> redis_client.Client:
    settings = config.Redis.model_validate(block)
    problems: list[str] = []
    passwords = secrets.redis_passwords(settings, problems)
    assert problems == []
    return redis_client.connect(settings, passwords)


async def keys_per_node(nodes: RedisClusterNodes) -> list[list[bytes]]:
    found = []
    for server in nodes.servers:
        direct = redis.asyncio.Redis(port=server.port, password=ADMIN)
        try:
            found.append(sorted(await direct.keys("iap:*")))
        finally:
            await direct.aclose()
    return found


async def test_the_store_and_the_limiter_use_every_master(
    cluster: RedisClusterNodes, tmp_path: Path
) -> None:
    client = client_of(cluster_block(cluster, tmp_path))
    store = RedisStore(client, backend="redis-cluster")
    limiter = RateLimiter(RedisWindows(client))
    quota = Quota(requests=2, per=86400)  # a day: no window boundary mid-test
    try:
        handles = [f"handle-{n}" for n in range(12)]
        for handle in handles:
            await store.put(handle, handle.encode(), ttl=60)
            await store.index_sid("sid-1", handle, ttl=60)
        assert [await store.get(handle) for handle in handles] == [h.encode() for h in handles]
        assert await store.handles_for_sid("sid-1") == sorted(handles)
        lock = await store.acquire_lock("refresh", ttl=60)
        assert lock is not None
        assert await store.acquire_lock("refresh", ttl=60) is None  # held
        assert await lock.release()
        verdicts = [await limiter.hit(f"k{n}", quota, on_store_error="deny") for n in range(3)]
        assert [(v.allowed, v.store_error) for v in verdicts] == [(True, False)] * 3
        counted = [await limiter.hit("k0", quota, on_store_error="deny") for _ in range(2)]
        assert [(v.allowed, v.store_error) for v in counted] == [(True, False), (False, False)]
        assert await store.ping()
        assert store.state() == {"backend": "redis-cluster", "answers": True}
        # The keys really are sharded: every master holds some of them.
        assert all(keys for keys in await keys_per_node(cluster))
    finally:
        await limiter.close()
        await store.close()


async def test_a_tls_cluster_with_the_ca_file(tmp_path: Path) -> None:
    """``rediss://`` with ``cluster: true``: every node, found through the seed's slot map, is
    reached over TLS and verified against ``ca_file``; a client without that CA fails closed."""
    ca = trustme.CA()
    files = ClusterTLS(tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem")
    ca.cert_pem.write_to_path(str(files.ca_file))
    issued = ca.issue_cert("127.0.0.1")
    issued.cert_chain_pems[0].write_to_path(str(files.cert_file))
    issued.private_key_pem.write_to_path(str(files.key_file))
    nodes = await start_redis_cluster(tmp_path, *ACL, admin_password=ADMIN, tls=files)
    block = cluster_block(nodes, tmp_path) | {"ca_file": str(files.ca_file)}
    store = RedisStore(client_of(block), backend="redis-cluster-tls")
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    untrusting = RedisStore(client_of(block | {"ca_file": str(other)}))
    try:
        handles = [f"handle-{n}" for n in range(12)]
        for handle in handles:
            await store.put(handle, handle.encode(), ttl=60)
        assert [await store.get(handle) for handle in handles] == [h.encode() for h in handles]
        assert all(keys for keys in await keys_per_node(nodes))  # over every master
        assert await store.ping()
        with pytest.raises(StoreUnavailable):
            await untrusting.get("handle-0")
    finally:
        await untrusting.close()
        await store.close()
        await nodes.stop()


async def test_a_wrong_password_fails_closed(cluster: RedisClusterNodes, tmp_path: Path) -> None:
    block = cluster_block(cluster, tmp_path)
    block["password_file"] = str(password_file(tmp_path, "not-the-password"))
    store = RedisStore(client_of(block), backend="redis-cluster")
    try:
        assert not await store.ping()
        assert store.state() == {
            "backend": "redis-cluster",
            "answers": False,
            "error": "RedisClusterException",  # redis-py's wrapper of the AUTH refusal
        }
        with pytest.raises(StoreUnavailable):
            await store.get("handle")
    finally:
        await store.close()


async def test_sign_in_through_the_cluster_then_fail_closed_when_it_is_down(
    cluster: RedisClusterNodes,
    upstream: Upstream,
    start_edge: StartEdge,
    tmp_path: Path,
    http: aiohttp.ClientSession,
) -> None:
    block = cluster_block(cluster, tmp_path)
    async with running_stack(
        upstream, start_edge, tmp_path, session={"store": "redis"}, redis=block
    ) as stack:
        alice = stack.visitor(http)
        assert (await alice.sign_in()).status == 302
        assert (await alice.get("/app/before", headers=JSON)).status == 200
        assert "Authorization" in stack.upstream.seen.requests[-1].headers  # alice's identity
        stored = [k for keys in await keys_per_node(cluster) for k in keys if b":session:" in k]
        # the session lives in the cluster, beside where its spent login state was going
        # (kept for a reload of the callback)
        sessions = [k for k in stored if b":login-state:" not in k]
        assert len(sessions) == 1, stored
        async with http.get(f"{stack.edge.admin_url}/readyz") as ready:
            body = json.loads(await ready.read())
        assert ready.status == 200, body
        assert body["stores"]["session"] == {"backend": "redis-cluster", "answers": True}
        forwarded = len(stack.upstream.seen.requests)

        await cluster.stop()
        answer = await alice.get("/app/during", headers=JSON)
        assert answer.status == 503
        assert answer.header("Retry-After") == "5"
        bob = stack.visitor(http)
        signed = await bob.sign_in(user="bob")
        assert (signed.status, signed.header("Retry-After")) == (503, "5")
        assert "iap_session" not in bob.cookies
        assert len(stack.upstream.seen.requests) == forwarded  # nothing went upstream
        async with http.get(f"{stack.edge.admin_url}/readyz") as ready:
            body = json.loads(await ready.read())
        assert ready.status == 503
        assert body["stores"]["session"]["answers"] is False
        assert PASSWORD not in json.dumps(body)
        assert PASSWORD not in stack.edge.audit.getvalue()

        # Back on the same ports (the nodes keep their nodes.conf, not their data): sign-in
        # works again with no restart of iap.
        cluster.servers = [await server.restart() for server in cluster.servers]
        for server in cluster.servers:
            await cluster_ok(server.port, ADMIN)
        async with asyncio.timeout(20):  # a hang guard, not a performance bound
            while (signed := await bob.sign_in(user="bob")).status != 302:
                assert signed.status == 503
        assert (await bob.get("/app/bob", headers=JSON)).status == 200
        assert stack.upstream.seen.requests[-1].path == "/app/bob"
        await stack.edge.edge.stop()


async def test_two_worker_processes_share_a_rate_limit_through_the_cluster(
    cluster: RedisClusterNodes, upstream: Upstream, tmp_path: Path
) -> None:
    """``iap run --workers 2``: exactly ``requests`` pass in all, whichever worker process
    each new connection lands on (counting per worker would let about twice through)."""
    document = edge_config(
        upstream.url,
        listen={"address": f"127.0.0.1:{free_port()}"},
        admin={"address": f"127.0.0.1:{free_port()}"},
        route={"rate_limit": {"requests": 10, "per": "60s", "key": "route"}},
    )
    document["redis"] = cluster_block(cluster, tmp_path)
    iap = await start_iap("run", "-c", str(write_config(tmp_path, document)), "--workers", "2")
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
    assert PASSWORD not in "\n".join(iap.stderr_lines + iap.stdout_lines)


async def test_two_edges_share_a_rate_limit_through_the_cluster(
    cluster: RedisClusterNodes, upstream: Upstream, start_edge: StartEdge, tmp_path: Path
) -> None:
    route = {"rate_limit": {"requests": 2, "per": "24h"}, "timeouts": {"read": "5s"}}
    document = edge_config(upstream.url, route=route) | {"redis": cluster_block(cluster, tmp_path)}
    first, second = await start_edge(document), await start_edge(document)
    statuses = []
    async with aiohttp.ClientSession() as client:
        for edge in (first, second, first, second):
            async with client.get(f"{edge.url}/x") as answer:
                await answer.read()
                statuses.append(answer.status)
    assert statuses == [200, 200, 429, 429]
    assert len(upstream.seen.requests) == 2
    counters = [k for keys in await keys_per_node(cluster) for k in keys]
    assert counters
    assert all(key.startswith(b"iap:ratelimit:") for key in counters)
