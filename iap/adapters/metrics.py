"""Prometheus metrics (SPEC §8), served on the admin listener.

With ``--workers N`` the parent sets ``PROMETHEUS_MULTIPROC_DIR`` before any worker
imports prometheus-client (the library reads it at import); the composition root passes the
same directory as ``multiprocess_dir``, and ``/metrics`` then aggregates every worker's samples.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """The request metrics; one instance per process."""

    def __init__(self, multiprocess_dir: str | None = None) -> None:
        self._multiprocess_dir = multiprocess_dir
        self.registry = CollectorRegistry(auto_describe=True)
        # labels() takes a lock and builds a key on every call; the label sets are few.
        self._children: dict[tuple[str, str, int], tuple[Any, Any, Any]] = {}
        self._labelled: dict[tuple[Any, ...], Any] = {}
        self.before_scrape: list[Callable[[], None]] = []
        """Called at each :meth:`exposition`, to set gauges read from their source then."""
        self._traffic()
        self._certificates()
        self._decisions()
        self._dependencies()
        self._load()

    def _traffic(self) -> None:
        """Requests and their durations (SPEC §8)."""
        self.requests = Counter(
            "iap_requests_total",
            "Requests answered, by route, method and status code.",
            ["route", "method", "code"],
            registry=self.registry,
        )
        self.request_duration = Histogram(
            "iap_request_duration_seconds",
            "Time from the first byte of a request to its last response byte.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.upstream_duration = Histogram(
            "iap_upstream_duration_seconds",
            "Time from sending a request upstream until its response headers arrived.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )

    def _certificates(self) -> None:
        """TLS material and signing keys: reload failures, time to expiry, key age."""
        self.tls_reload_failures = Counter(
            "iap_tls_reload_failures_total",
            "Reloads of changed TLS files that failed; the previous material stayed in use.",
            ["name"],
            registry=self.registry,
        )
        self.certificate_expiry = Gauge(
            "iap_certificate_expiry_seconds",
            "Seconds until the certificate in use expires.",
            ["name"],
            registry=self.registry,
            multiprocess_mode="min",
        )
        self.signing_key_age = Gauge(
            "iap_signing_key_age_seconds",
            "Seconds since the key that signs minted tokens was made (its file's mtime in "
            "tokens.keys_dir); signing keys do not expire, so alert when rotation is overdue.",
            registry=self.registry,
            multiprocess_mode="livemax",
        )

    def _decisions(self) -> None:
        """Authentication, authorization, rate limits and reloads."""
        self.authn = Counter(
            "iap_authn_total",
            "Authentication attempts on protected routes, by method and result.",
            ["method", "result"],
            registry=self.registry,
        )
        self.authz = Counter(
            "iap_authz_total",
            "Authorization decisions, by route and decision (allow or deny).",
            ["route", "decision"],
            registry=self.registry,
        )
        self.authn_internal_errors = Counter(
            "iap_authn_internal_errors_total",
            "Unexpected errors while authenticating or authorizing; each request was refused "
            "(401, or 302 to sign-in), never forwarded. Should stay at 0: alert on any.",
            registry=self.registry,
        )
        self.reload_refusals = Counter(
            "iap_reload_refusals_total",
            "SIGHUP reloads refused (a key that needs a restart changed, or a bad file); "
            "the running configuration kept serving.",
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "iap_rate_limited_total",
            "Requests refused with 429 by their route's rate limit.",
            ["route"],
            registry=self.registry,
        )
        self.rate_limit_store_errors = Counter(
            "iap_rate_limit_store_errors_total",
            "Rate-limit checks the store could not answer; on_store_error decided them.",
            registry=self.registry,
        )

    def _dependencies(self) -> None:
        """The IdP and the span exporter."""
        self.idp_requests = Counter(
            "iap_idp_requests_total",
            "Calls to the IdP and Graph, by endpoint and result (ok, refused, error).",
            ["endpoint", "result"],
            registry=self.registry,
        )
        self.refresh_grace = Counter(
            "iap_session_refresh_grace_total",
            "Requests let in by a session whose refresh failed because the IdP could not be "
            "reached (session.refresh_grace); each retried the refresh first.",
            registry=self.registry,
        )
        self.idp_metadata_age = Gauge(
            "iap_idp_metadata_age_seconds",
            "Seconds since the IdP's discovery document or JWKS was last fetched; past "
            "oidc.metadata_max_stale it is no longer used.",
            ["document"],
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self.spans_dropped = Counter(
            "iap_spans_dropped_total",
            "Spans lost because the export queue was full or the export failed.",
            registry=self.registry,
        )

    def _load(self) -> None:
        """Load shedding and slow clients (docs/operations.md, "Load shedding")."""
        self.shed = Counter(
            "iap_requests_shed_total",
            "Requests answered 503 at once because limits.max_in_flight were in flight.",
            registry=self.registry,
        )
        self.header_timeouts = Counter(
            "iap_header_timeouts_total",
            "Connections closed (408) because a request head took longer than "
            "limits.header_timeout to arrive.",
            registry=self.registry,
        )

    def observe_request(self, route: str, method: str, code: int, seconds: float) -> None:
        key = (route, method if method in _METHODS else "OTHER", code)  # bounded: no raw methods
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.requests.labels(route, key[1], str(code)),
                self.request_duration.labels(route),
                self.upstream_duration.labels(route),
            )
        children[0].inc()
        children[1].observe(seconds)

    def observe_upstream(self, route: str, method: str, code: int, seconds: float) -> None:
        """After :meth:`observe_request` for the same request (it prepares the children)."""
        self._children[(route, method if method in _METHODS else "OTHER", code)][2].observe(seconds)

    def observe_authn(self, method: str, result: str) -> None:
        """``result`` is ``ok`` or a short reason from a fixed set (never client input)."""
        self._child(self.authn, method, result).inc()

    def observe_idp(self, endpoint: str, result: str) -> None:
        self._child(self.idp_requests, endpoint, result).inc()

    def observe_authz(self, route: str, decision: str) -> None:
        self._child(self.authz, route, decision).inc()

    def _child(self, counter: Counter, *labels: str) -> Any:
        key = (counter, *labels)
        child = self._labelled.get(key)
        if child is None:
            child = self._labelled[key] = counter.labels(*labels)
        return child

    def exposition(self) -> tuple[bytes, str]:
        """The Prometheus text format, across all workers when there are several."""
        for update in self.before_scrape:
            update()
        if self._multiprocess_dir:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=self._multiprocess_dir)  # type: ignore[no-untyped-call]
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class WorkerMetrics:
    """The ``--workers`` parent's own samples. They land in the multiprocess directory, so
    every worker's ``/metrics`` (which aggregates that directory) shows them."""

    def __init__(self, multiprocess_dir: str) -> None:
        self._multiprocess_dir = multiprocess_dir
        self.restarts = Counter(
            "iap_worker_restarts_total",
            "Workers the --workers parent started again after one exited unexpectedly.",
            registry=None,  # the parent serves no /metrics; the directory carries the samples
        )

    def worker_gone(self, pid: int) -> None:
        """A worker exited: drop its live-gauge files (its counters stay in the totals)."""
        mark_process_dead(pid, self._multiprocess_dir)  # type: ignore[no-untyped-call]
