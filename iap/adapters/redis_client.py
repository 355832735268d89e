"""The one place that builds iap's Redis client from the ``redis`` block (SPEC §9): a
server by URL (``redis://``, ``rediss://`` with a CA and an optional client certificate,
``unix://``), the primary that Sentinel names (a ``sentinel`` block or a
``redis+sentinel://`` url), or a Redis Cluster (``cluster: true``, redis-py's
``RedisCluster``). The session store and the rate-limit counters share the client it
returns (one pool per process; per node in a cluster).

Invariants:
- Every connect and every reply is bounded by ``redis.timeout`` (redis-py's socket
  timeouts). A refused or reset connection is retried once at once, to step over a pooled
  connection that died with a Redis restart or a failover; a timeout is not retried.
- Passwords arrive as :class:`~iap.adapters.redis_passwords.RedisPasswords`, read once by
  the composition root; its ``repr`` masks them, and nothing here logs or formats them.
  Errors raised while building name the key, never the URL (which redis-py may quote).
- Through Sentinel, the pool asks the sentinels for the primary on each new connection and
  drops connections to a former primary (redis-py's ``SentinelConnectionPool``), so a
  failover needs no restart.
- A cluster client learns the slots from the seed node in ``redis.url`` on its first
  command and follows ``MOVED``/``ASK`` redirections itself; every key iap writes is
  touched alone or, for ``limits``' two-window scripts, under one ``{hash tag}``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import redis.asyncio
import redis.exceptions
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff

from iap.adapters.redis_passwords import RedisPasswords
from iap.config import Redis as RedisConfig

Client = redis.asyncio.Redis | RedisCluster
"""The client types, for annotations (the composition root names them only when type
checking)."""


def backend(config: RedisConfig) -> str:
    """What ``/readyz`` calls this Redis: ``redis``, ``redis-tls``, ``redis-unix``,
    ``redis-sentinel``, ``redis-cluster`` or ``redis-cluster-tls``."""
    if config.sentinels is not None:
        return "redis-sentinel"
    if config.cluster:
        return "redis-cluster-tls" if config.tls else "redis-cluster"
    scheme = urlsplit(config.url or "").scheme
    return {"rediss": "redis-tls", "unix": "redis-unix"}.get(scheme, "redis")


def _retry() -> Retry:
    return Retry(NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,))


def _bounds(timeout: float) -> dict[str, Any]:
    return {"socket_timeout": timeout, "socket_connect_timeout": timeout, "retry": _retry()}


def connect_url(url: str, *, timeout: float = 0.5, **options: Any) -> redis.asyncio.Redis:
    """A client for one server at ``url``; ``ValueError`` naming ``redis.url`` if bad."""
    try:
        pool = redis.asyncio.ConnectionPool.from_url(url, **_bounds(timeout), **options)
    except ValueError:
        # redis-py's message may quote the URL, password included.
        raise ValueError("redis.url is not a valid Redis URL") from None
    return redis.asyncio.Redis.from_pool(pool)


def connect(config: RedisConfig, passwords: RedisPasswords) -> Client:
    """The client of ``config``: its pool connects lazily, so this does no I/O."""
    credentials: dict[str, Any] = {"username": config.username, "password": passwords.password}
    sentinel = config.sentinels
    if config.cluster:
        return _cluster(config, credentials)
    if sentinel is None:
        assert config.url is not None  # config validation: url or sentinel
        return connect_url(config.url, timeout=config.timeout, **credentials, **_tls(config))
    sentinels = Sentinel(
        [(address.host, address.port) for address in sentinel.addresses],
        sentinel_kwargs={
            "socket_timeout": config.timeout,
            "socket_connect_timeout": config.timeout,
            "username": sentinel.username,
            "password": passwords.sentinel_password,
        },
        db=config.database,
        **credentials,
        **_bounds(config.timeout),
    )
    client: redis.asyncio.Redis = sentinels.master_for(sentinel.master)
    return client


def _cluster(config: RedisConfig, credentials: dict[str, Any]) -> RedisCluster:
    """A Redis Cluster client seeded by ``redis.url``'s node, with the same bounds, TLS and
    credentials as one server. A refused connection is retried once (as for one server);
    redis-py re-reads the slots after a ``MOVED`` or a failed node."""
    assert config.url is not None  # config validation: cluster needs a url
    parts = urlsplit(config.url)
    tls = _tls(config)
    if tls:
        tls["ssl"] = True
    return RedisCluster(
        host=parts.hostname,
        port=parts.port or 6379,
        **credentials,
        **_bounds(config.timeout),
        **tls,
    )


async def close(client: Client) -> None:
    """Close ``client``, its pool and, through Sentinel, the clients of the sentinels (which
    redis-py leaves open); closing twice is harmless, so the store and the limiter both may."""
    await client.aclose()
    if isinstance(client, RedisCluster):
        return
    pool = client.connection_pool
    if isinstance(pool, SentinelConnectionPool):
        for sentinel in pool.sentinel_manager.sentinels:
            await sentinel.aclose()


def _tls(config: RedisConfig) -> dict[str, Any]:
    """redis-py's TLS options for a ``rediss://`` URL (the system CAs without ``ca_file``)."""
    if not config.tls:
        return {}
    options: dict[str, Any] = {"ssl_cert_reqs": "required", "ssl_check_hostname": True}
    if config.ca_file is not None:
        options["ssl_ca_certs"] = str(config.ca_file)
    if config.cert_file is not None and config.key_file is not None:
        options["ssl_certfile"] = str(config.cert_file)
        options["ssl_keyfile"] = str(config.key_file)
    return options
