"""The pages of ``/.iap/`` that are not errors: who is signed in (``/.iap/``, in the manner of
Pomerium's user page) and "You are signed out" (``/.iap/signed-out``).

Invariants:
- The routes listed are those the route policy (``iap.domain.policy.decide``) would let
  this identity reach with a ``GET`` of the route's prefix, by a session: the same function
  that decides every request, never a second copy of the rules.
- Every value is escaped (:mod:`iap.web.pages`); no token is shown.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from iap.config import Route
from iap.domain.policy import Facts, decide
from iap.domain.session import Session, expires_at
from iap.model import Identity
from iap.web import pages
from iap.web.cookies import NO_STORE
from iap.web.pages import Link, esc

SIGNED_OUT_PATH = "/.iap/signed-out"


def reachable(
    routes: Sequence[Route], identity: Identity, client: str, claims: Mapping[str, Any]
) -> list[Route]:
    """The routes whose policy allows ``identity`` a ``GET`` of their prefix."""
    found = []
    for route in routes:
        facts = Facts(
            method="GET",
            path=route.match.path_prefix,
            identity=identity,
            auth="session",
            client=client,
            claims=claims if route.policy.reads_claims else {},
        )
        if decide(route.policy, facts).allow:
            found.append(route)
    return found


def _when(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: int) -> str:
    hours, rest = divmod(max(0, seconds), 3600)
    return f"{hours} h {rest // 60} min" if hours else f"{rest // 60} min {rest % 60} s"


def _row(label: str, key: str, value: str) -> str:
    return f"<tr><th>{esc(label)}</th><td id='{key}'>{value}</td></tr>"


def _listed(values: Sequence[str]) -> str:
    return ", ".join(esc(value) for value in values) or "<i>none</i>"


def user_page(
    identity: Identity,
    session: Session,
    routes: Sequence[Route],
    *,
    lifetime: float,
    now: int,
    correlation_id: str,
) -> str:
    """``/.iap/``: the identity as iap sees it, the session's times, the routes allowed."""
    ends = expires_at(session, lifetime=lifetime)
    rows = [
        _row("Name", "name", esc(identity.name or "")),
        _row("Email", "email", esc(identity.email or "")),
        _row("Subject", "subject", esc(identity.subject)),
        _row("Tenant", "tenant", esc(identity.tid)),
        _row("Roles", "roles", _listed(identity.roles)),
        _row("Groups", "groups", _listed(identity.groups)),
        _row("Signed in", "session-age", f"{_duration(now - session.created)} ago"),
        _row("Session ends", "session-expiry", f"{_when(ends)} (in {_duration(ends - now)})"),
    ]
    items = "".join(
        f"<li><code>{esc(route.match.host or '')}{esc(route.match.path_prefix)}</code>"
        f" ({esc(route.name)})</li>"
        for route in routes
    )
    body = (
        f"<table>{''.join(rows)}</table><h2>Routes you may reach</h2>"
        f"<ul id='routes'>{items or '<li>none</li>'}</ul>"
    )
    return pages.render(
        "Your identity", body, viewer=identity, correlation_id=correlation_id, heading="iap"
    )


def signed_out_page(correlation_id: str) -> str:
    """After ``/.iap/logout`` and the IdP's logout: a way to sign in again."""
    body = "<p id='message'>Your session here has ended. Close the window, or sign in again.</p>"
    return pages.render(
        "You are signed out",
        body,
        links=[Link("Sign in again", pages.sign_in("/"), "sign-in-again")],
        correlation_id=correlation_id,
    )


def html(text: str, cookies: Sequence[tuple[str, str]] = ()) -> web.Response:
    """A page iap shows, never cached."""
    response = web.Response(text=text, content_type="text/html", charset="utf-8")
    for name, value in (*NO_STORE, *cookies):
        response.headers.add(name, value)
    return response
