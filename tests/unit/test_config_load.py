"""The load keys of iap.config (issue 15 point 5): their defaults, and bad values refused by
key path."""

from __future__ import annotations

import pytest

from iap import config
from tests.unit.test_config import minimal, problems_of


def test_defaults() -> None:
    parsed = config.parse(minimal())
    limits, route = parsed.limits, parsed.routes[0]
    assert (limits.max_in_flight, limits.header_timeout, limits.keepalive_timeout) == (
        1000,
        10.0,
        75.0,
    )
    assert route.timeouts.total is None
    assert (route.pool.max_connections, route.pool.max_idle) == (1000, 100)


def test_values_parse() -> None:
    parsed = config.parse(
        minimal(
            limits={"max_in_flight": 50, "header_timeout": "500ms", "keepalive_timeout": "5s"},
            route={"timeouts": {"total": "5m"}, "pool": {"max_connections": 8, "max_idle": 0}},
        )
    )
    assert (parsed.limits.max_in_flight, parsed.limits.header_timeout) == (50, 0.5)
    assert parsed.limits.keepalive_timeout == 5.0
    assert parsed.routes[0].timeouts.total == 300.0
    assert (parsed.routes[0].pool.max_connections, parsed.routes[0].pool.max_idle) == (8, 0)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"limits": {"max_in_flight": 0}}, "limits.max_in_flight"),
        ({"limits": {"max_in_flight": "many"}}, "limits.max_in_flight"),
        ({"limits": {"header_timeout": "0s"}}, "limits.header_timeout"),
        ({"limits": {"keepalive_timeout": "soon"}}, "limits.keepalive_timeout"),
        ({"route": {"timeouts": {"total": "-1s"}}}, "routes[0].timeouts.total"),
        ({"route": {"pool": {"max_connections": 0}}}, "routes[0].pool.max_connections"),
        ({"route": {"pool": {"max_idle": -1}}}, "routes[0].pool.max_idle"),
        ({"route": {"pool": {"size": 3}}}, "routes[0].pool.size"),
    ],
)
def test_bad_values_are_refused_by_key(overrides: dict[str, object], key: str) -> None:
    problems = problems_of(minimal(**overrides))
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{key}: "), problems
