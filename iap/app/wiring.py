"""Build one process's parts from the config, the environment and the secrets, and the
:class:`~iap.web.server.Edge` that serves with them.

Invariants:
- Everything that can fail from configuration is built here, before a socket is bound;
  every problem of every part is collected into one :class:`ConfigError`, so a bad config
  names all its bad keys at once (a part that failed is left out, and the parts after it
  are still built to find their problems too).
- The choices between implementations are made here and only here: the session store
  (Redis when ``redis`` is configured, else process memory), the rate-limit counters
  (likewise, on the same Redis client: one pool per process), and whether sign-in,
  minting and bearer tokens exist at all.
- Each call builds fresh parts: a worker forked by ``--workers`` builds its own after
  the fork, so no connection pool, thread or lock crosses a fork.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

from iap.adapters.audit import AuditLog
from iap.adapters.metrics import Metrics
from iap.adapters.ratelimit import RateLimiter, SharedWindows
from iap.adapters.store import MemoryStore, SessionStore
from iap.adapters.telemetry import Tracing
from iap.adapters.tls import Material, listener_material, load_problem
from iap.app import secrets
from iap.config import Config
from iap.environment import Environment
from iap.errors import ConfigError
from iap.web.bearer import BearerAuth
from iap.web.minting import Minter
from iap.web.server import Edge, Parts
from iap.web.signin import SignIn

if TYPE_CHECKING:
    from iap.adapters.redis_client import Client


def build_edge(config: Config, environment: Environment, *, audit: AuditLog | None = None) -> Edge:
    """The edge of ``config``, or :class:`ConfigError` naming every problem."""
    problems: list[str] = []
    listener_tls = _listener_tls(config, problems)
    metrics = Metrics(multiprocess_dir=environment.metrics_dir)
    tracing = Tracing(config.telemetry, dropped=metrics.spans_dropped.inc, environment=environment)
    store, counts = _stores(config, problems)
    signin = _signin(config, environment, metrics, tracing, store, problems)
    minter = bearer = None
    try:
        if config.tokens is not None:
            minter = Minter(config)
            metrics.before_scrape.append(lambda: _publish_key_age(metrics, minter))
            bearer = BearerAuth(config, signin=signin, minter=minter)
    except ConfigError as exc:
        problems += exc.problems
    parts = Parts(
        metrics=metrics,
        audit=audit or AuditLog(),
        tracing=tracing,
        limiter=RateLimiter(counts, on_store_error_count=metrics.rate_limit_store_errors.inc),
        listener_tls=listener_tls,
        signin=signin,
        minter=minter,
        bearer=bearer,
    )
    try:
        edge = Edge(config, parts)
    except ConfigError as exc:
        problems += exc.problems
    if problems:
        raise ConfigError(problems)
    return edge


def _stores(config: Config, problems: list[str]) -> tuple[SessionStore, SharedWindows | None]:
    """The session store and the shared rate-limit counters: both on the one Redis client
    of this process with ``redis``, else process memory (and no shared counters)."""
    shared = _redis(config, problems)
    if shared is None or config.redis is None:
        return MemoryStore(), None
    # Imported here, not at the top: a config without Redis never loads redis-py or
    # limits (about 8 MiB of each worker's memory).
    from iap.adapters.ratelimit_redis import RedisWindows
    from iap.adapters.redis_client import backend
    from iap.adapters.redis_store import RedisStore

    return RedisStore(shared, backend=backend(config.redis)), RedisWindows(shared)


def _redis(config: Config, problems: list[str]) -> Client | None:
    """The one Redis client of this process (sessions and rate limits), or None without
    ``redis``; its passwords are read here, once."""
    if config.redis is None:
        return None
    # Imported here, not at the top: see _stores.
    from iap.adapters import redis_client

    passwords = secrets.redis_passwords(config.redis, problems)
    try:
        return redis_client.connect(config.redis, passwords)
    except ValueError as exc:  # names the key, never the URL
        problems.append(str(exc))
        return None


def _listener_tls(config: Config, problems: list[str]) -> Material | None:
    tls = config.listen.tls
    try:
        return listener_material(tls.cert_file, tls.key_file) if tls else None
    except (OSError, ssl.SSLError, ValueError) as exc:
        problems.append(f"listen.tls: cannot load certificate or key ({load_problem(exc)})")
        return None


def _signin(
    config: Config,
    environment: Environment,
    metrics: Metrics,
    tracing: Tracing,
    store: SessionStore,
    problems: list[str],
) -> SignIn | None:
    """Sign-in with the keyring, the client credential and the session store, or None
    (no ``oidc``, or a problem, which is appended)."""
    if config.oidc is None:
        return None
    found: list[str] = []
    keyring = secrets.session_keyring(config.session, environment, found)
    credential = secrets.client_credential(config.oidc, environment, found)

    def observe_idp(endpoint: str, method: str, result: str, start: int, end: int) -> None:
        """Each IdP call: a metric, and a CLIENT span under the request that made it."""
        metrics.observe_idp(endpoint, result)
        span = tracing.current.get()
        if span.recording:
            attributes = {"http.request.method": method, "iap.idp.endpoint": endpoint}
            span.client_call(f"{method} idp {endpoint}", attributes, start, end, result == "error")

    try:
        signin = SignIn(
            config,
            keyring=keyring,
            credential=credential,
            store=store,
            observe=observe_idp,
            on_grace=metrics.refresh_grace.inc,
        )
    except ConfigError as exc:
        found += exc.problems
    else:
        metrics.before_scrape.append(lambda: _publish_ages(metrics, signin))
    problems += found
    return None if found else signin


def _publish_key_age(metrics: Metrics, minter: Minter | None) -> None:
    """``iap_signing_key_age_seconds`` of this process, as of now."""
    age = minter.signing_key_age() if minter is not None else None
    if age is not None:
        metrics.signing_key_age.set(age)


def _publish_ages(metrics: Metrics, signin: SignIn) -> None:
    """``iap_idp_metadata_age_seconds`` of this process, as of now."""
    for document, age in signin.metadata_ages().items():
        metrics.idp_metadata_age.labels(document).set(age)
