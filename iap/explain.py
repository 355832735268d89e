"""``iap policy explain``: the decision iap would make for one request, and why (SPEC §5.1).

Runs the same route table and :func:`iap.domain.policy.decide` as the gateway, over a caller
given as ID-token claims (a JSON file) or a dev IdP demo user, so that operators can test a
policy change in CI before a reload. Reads the config only: no key files, no ports, no IdP.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from iap.config import Config
from iap.domain import policy
from iap.domain.login import LoginRefused, identity_from_claims
from iap.domain.paths import normalise
from iap.domain.routing import RouteTable
from iap.errors import BadRequest, ConfigError
from iap.model import Identity


def explain(
    config: Config,
    *,
    method: str,
    url: str,
    claims: Mapping[str, Any] | None,
    auth: str = "session",
    client: str = "",
) -> tuple[bool, list[str]]:
    """Whether the request is allowed, and the lines that say why. Raises ConfigError for
    arguments that are not a request (they are operator input, like the file)."""
    parts = urlsplit(url)
    try:
        target = normalise((parts.path or "/") + (f"?{parts.query}" if parts.query else ""))
    except BadRequest as exc:
        raise ConfigError([f"--url: {exc.detail}"]) from None
    method = method.upper()
    table = RouteTable([(route.match, route) for route in config.routes])
    route = table.match(parts.hostname or "", target.path, method)
    if route is None:
        return False, [f"route: none matches {method} {parts.hostname or ''}{target.path} (404)"]
    identity = _identity(config, claims) if claims is not None else None
    facts = policy.Facts(
        method=method,
        path=target.path,
        identity=identity,
        auth="bearer" if auth == "bearer" else "session",
        client=client,
        claims=claims or {},
    )
    decision = policy.decide(route.policy, facts)
    lines = [f"route: {route.name}", f"decision: {decision.outcome} ({decision.reason})"]
    if identity is not None:
        lines.insert(1, f"caller: {identity.subject} roles={','.join(identity.roles) or '-'}")
    if not decision.allow:
        for name, failed in policy.explain(route.policy, facts):
            lines.append(f"  {name}: " + (f"failed on {', '.join(failed)}" if failed else "held"))
    return decision.allow, lines


def _identity(config: Config, claims: Mapping[str, Any]) -> Identity:
    roles = dict(config.tokens.roles) if config.tokens else {}
    try:
        return identity_from_claims(claims, roles_map=roles)
    except LoginRefused:
        raise ConfigError(["--claims: the claims name no user (tid and oid are needed)"]) from None


def claims_of(*, file: str | None, user: str | None) -> dict[str, Any] | None:
    """The caller's claims from ``--claims FILE`` or ``--user NAME`` (a dev IdP demo user)."""
    if file is not None:
        try:
            value = json.loads(Path(file).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise ConfigError([f"--claims: {file}: not a readable JSON file"]) from None
        if not isinstance(value, dict):
            raise ConfigError([f"--claims: {file}: expected a JSON object of claims"])
        return value
    if user is not None:
        from iap.dev.idp import USERS

        found = USERS.get(user)
        if found is None:
            raise ConfigError([f"--user: no demo user {user!r} (one of {', '.join(USERS)})"])
        return {
            "tid": found.tid,
            "oid": found.oid,
            "name": found.name,
            "email": found.email,
            "roles": list(found.roles),
            "groups": list(found.groups),
        }
    return None
