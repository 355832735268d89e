"""Plain values shared by the layers."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Identity:
    """A caller: a signed-in user keyed by ``tid`` + ``oid``, never by email, or a service
    keyed by ``tid`` + its client application id (``azp``) (SPEC §6)."""

    subject: str
    tid: str
    oid: str
    name: str | None
    email: str | None
    preferred_username: str | None
    roles: tuple[str, ...]
    groups: tuple[str, ...]
    azp: str | None = None
    """The client application, for services calling with their own token (SPEC §6)."""


@dataclass(slots=True)
class Exchange:
    """What is known about one request as it moves through the edge; becomes its audit line."""

    started: float
    correlation_id: str
    client_ip: str
    method: str
    host: str
    path: str
    route: str | None = None
    status: int = 0
    reason: str | None = None
    decision: str | None = None
    authn_method: str | None = None
    subject: str | None = None
    tenant: str | None = None
    identity: Identity | None = None
    """Who is signed in, for the pages iap shows (never written to the audit line)."""
    upstream: str | None = None
    trace_id: str | None = None
    span_id: str | None = None
    bytes_in: int = 0
    bytes_out: int = 0
