"""The route table of one gateway, each route prepared at startup for request handling.

Invariants:
- Everything a request needs from its route (upstream, timeouts, quota, audience) is
  built here once, before a socket is bound; request handling builds none of it.
- Routes that point at the same origin with the same TLS settings share one upstream
  (its pool and circuit breaker).
- Routes that share an upstream agree on its ``pool``: a route that sets another is a
  :class:`~iap.errors.ConfigError` naming ``routes[i].pool``, never silently ignored.
- TLS material that cannot be loaded is a :class:`~iap.errors.ConfigError` naming
  ``routes[i].upstream_tls``; every such route is reported, not only the first.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from iap.adapters.tls import load_problem
from iap.adapters.upstream import Timeouts, Upstream, Upstreams
from iap.config import Config, Route
from iap.domain import ratelimit
from iap.domain.routing import RouteTable
from iap.errors import ConfigError


@dataclass(frozen=True, slots=True)
class PreparedRoute:
    """A route with everything request handling needs, prepared at startup."""

    name: str
    config: Route
    upstream: Upstream
    timeouts: Timeouts
    quota: ratelimit.Quota | None
    audience: str
    """The audience of the tokens minted for this route (``audience``, else its name)."""


def route_table(config: Config, upstreams: Upstreams) -> RouteTable[PreparedRoute]:
    """Every route of ``config``, prepared; raises :class:`ConfigError` listing each route
    whose upstream TLS material cannot be loaded or whose pool differs from a route sharing
    its upstream."""
    prepared, problems = [], _pool_conflicts(config.routes)
    for index, route in enumerate(config.routes):
        try:
            prepared.append((route.match, prepare(route, upstreams)))
        except (OSError, ssl.SSLError) as exc:
            reason = load_problem(exc)
            problems.append(f"routes[{index}].upstream_tls: cannot load TLS material ({reason})")
    if problems:
        raise ConfigError(problems)
    return RouteTable(prepared)


def _pool_conflicts(routes: list[Route]) -> list[str]:
    first: dict[tuple[str, str], int] = {}
    problems = []
    for index, route in enumerate(routes):
        shared = first.setdefault((route.upstream, repr(route.upstream_tls)), index)
        if routes[shared].pool != route.pool:
            problems.append(
                f"routes[{index}].pool: differs from routes[{shared}].pool, which shares "
                "its upstream and upstream_tls (one pool per upstream)"
            )
    return problems


def prepare(route: Route, upstreams: Upstreams) -> PreparedRoute:
    """One route, with its upstream taken from (or added to) ``upstreams``."""
    timeouts = Timeouts(route.timeouts.connect, route.timeouts.read, route.timeouts.total)
    limit = route.rate_limit
    quota = ratelimit.Quota(limit.requests, limit.per, limit.burst) if limit else None
    upstream = upstreams.for_route(route)
    return PreparedRoute(route.name, route, upstream, timeouts, quota, route.audience or route.name)
