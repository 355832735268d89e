"""Rate limits as values: the counting key, the quota and the response headers
(SPEC §2 step 8, §5.1 ``rate_limit``). No IO; the counting itself is
:mod:`iap.adapters.ratelimit`.

Invariants:
- A key names exactly one (route, kind, value): the route is length-prefixed and the
  kind is a fixed tag, so no route name, subject or client address, whatever
  characters it holds, can make two different buckets share a key.
- ``subject`` (the default) keys by the caller's subject when there is one, else by the
  client address (after trusted-proxy resolution, done by the caller); ``client``
  always keys by the address; ``route`` shares one bucket between all callers.
- Burst is capacity, not a second rate: a route allows ``requests + burst`` requests in
  any ``per`` window (the ``limits`` library has no token bucket, and a moving window
  of ``requests + burst`` is the closest honest reading of "N per window, M extra").
- Windows are whole seconds, rounded up (never looser than configured): the draft's
  ``w`` is an Integer of seconds and ``limits`` counts expiries in whole seconds.
- Headers follow draft-ietf-httpapi-ratelimit-headers-11 (May 2026): one policy named
  ``"default"``, ``RateLimit-Policy: "default";q=<requests+burst>;w=<window>`` (§3.1)
  and ``RateLimit: "default";r=<remaining>;t=<seconds>`` (§4.1), Integers only. No
  ``pk`` partition key: it would echo the caller's identity or address (§6.1, §8.2).
  A refusal adds ``Retry-After`` (RFC 9110 §10.2.3) of at least 1 s and never earlier
  than the end of the effective window ``t`` (draft §6).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Literal, NamedTuple

KeyKind = Literal["subject", "client", "route"]

POLICY_NAME = "default"

_KINDS: frozenset[str | None] = frozenset({None, "subject", "client", "route"})


@dataclass(frozen=True)
class Quota:
    """A route's limit: ``requests + burst`` requests in any ``per``-second window."""

    requests: int
    per: float
    burst: int = 0

    def __post_init__(self) -> None:
        if self.requests <= 0 or self.burst < 0 or not self.per > 0:
            raise ValueError("a quota needs requests > 0, burst >= 0 and per > 0")

    @cached_property
    def capacity(self) -> int:
        """Requests allowed per window: the rate plus the burst allowance."""
        return self.requests + self.burst

    @cached_property
    def window(self) -> int:
        """The window in whole seconds, rounded up and at least 1."""
        return max(1, math.ceil(self.per))

    @cached_property
    def policy_field(self) -> tuple[str, str]:
        """The ``RateLimit-Policy`` field: the same for every response."""
        return ("RateLimit-Policy", f'"{POLICY_NAME}";q={self.capacity};w={self.window}')


class Verdict(NamedTuple):
    """The outcome of counting one request (a tuple: built on every limited request).

    ``remaining`` requests are left in the current window; ``reset_after`` seconds
    until a slot frees (for a refusal: when a retry can succeed). ``store_error``
    means the counter could not be reached and ``allowed`` is the route's
    ``on_store_error`` choice; ``remaining`` and ``reset_after`` are then 0.
    """

    allowed: bool
    remaining: int
    reset_after: float
    store_error: bool = False


def key_for(kind: KeyKind | None, *, route: str, subject: str | None, client: str) -> str:
    """The counting key of one request on ``route`` under the route's key ``kind``.

    ``kind`` None is ``subject``. An empty subject counts as anonymous.
    """
    if kind not in _KINDS:
        raise ValueError(f"unknown rate-limit key kind {kind!r}")
    if kind == "route":
        tag, value = "r", ""
    elif kind == "client" or not subject:
        tag, value = "c", client
    else:
        tag, value = "s", subject
    return f"{len(route)}:{route}:{tag}:{value}"


def headers(
    *, limit: Quota, remaining: int, reset_after: float, refused: bool = False
) -> list[tuple[str, str]]:
    """``RateLimit-Policy`` and ``RateLimit`` for a response, plus ``Retry-After`` when
    the request was ``refused`` (429)."""
    left = 0 if remaining < 0 else min(remaining, limit.capacity)
    reset = math.ceil(reset_after) if reset_after > 0 else 0
    fields = [limit.policy_field, ("RateLimit", f'"{POLICY_NAME}";r={left};t={reset}')]
    if refused:
        fields.append(("Retry-After", str(max(1, reset))))
    return fields
