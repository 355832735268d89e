"""The configuration tree: parsed once at startup, immutable afterwards.

Invariants:
- Every problem in a file is reported at once, each naming its key path
  (``routes[0].match.path_prefix: ...``); nothing is served from a config with problems.
- Unknown keys are errors: a misspelt security setting must not silently fall back to a default.
- Secrets stay out of this tree: keys name files (``*_file``) or ``IAP_*`` variables, and
  no error message repeats an input value (``hide_input_in_errors``).
- Request handling never parses config: durations are seconds, sizes are bytes,
  CIDRs are :mod:`ipaddress` networks by the time a :class:`Config` exists.

The value types are in :mod:`iap.config.fields`, policies in :mod:`iap.config.policy`, routes
in :mod:`iap.config.routes` and the other sections in :mod:`iap.config.tree`; this module
collects every problem (:func:`parse`), worded by :mod:`iap.config.wording`, and re-exports
the names the rest of iap imports.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import yaml
from pydantic import ValidationError

from iap.config import wording
from iap.config.fields import Address, Duration, HeaderName, HttpUrl, Size, TLSFiles
from iap.config.policy import Allow, Policy, Rule
from iap.config.redis import Redis, RedisSentinel
from iap.config.routes import (
    Circuit,
    Exchange,
    Match,
    RateLimit,
    Route,
    Timeouts,
    UpstreamTLS,
)
from iap.config.tree import (
    DEFAULT_IDENTITY_HEADERS,
    OIDC,
    Admin,
    AuthFailures,
    Bearer,
    ClientCertificate,
    Config,
    ForwardAuth,
    Limits,
    Listen,
    Session,
    Telemetry,
    Tokens,
)
from iap.environment import SESSION_KEYS_VAR, Environment
from iap.errors import ConfigError

SESSION_KEYS_ENV = SESSION_KEYS_VAR

__all__ = [
    "DEFAULT_IDENTITY_HEADERS",
    "OIDC",
    "SESSION_KEYS_ENV",
    "Address",
    "Admin",
    "Allow",
    "AuthFailures",
    "Bearer",
    "Circuit",
    "ClientCertificate",
    "Config",
    "Duration",
    "Exchange",
    "ForwardAuth",
    "HeaderName",
    "HttpUrl",
    "Limits",
    "Listen",
    "Match",
    "Policy",
    "RateLimit",
    "Redis",
    "RedisSentinel",
    "Route",
    "Rule",
    "Session",
    "Size",
    "TLSFiles",
    "Telemetry",
    "Timeouts",
    "Tokens",
    "UpstreamTLS",
    "load",
    "parse",
]


def _location(loc: tuple[int | str, ...]) -> str:
    text, previous = "", None
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif previous == "allow" and part in ("rules", "mapping"):
            pass  # the two forms of ``policy.allow``: a tag, not a key
        elif not part.startswith(("function-", "json-or-python", "lax-", "tagged-union")):
            text += f".{part}" if text else part
        previous = part
    return text or "(top level)"


def _problems(error: ValidationError) -> list[str]:
    problems = []
    # The input is read for its kind only ("got a string"); no message repeats it.
    for item in error.errors(include_url=False):
        problems.append(f"{_location(item['loc'])}: {wording.message(item)}")
    return problems


def _route_problems(document: Mapping[str, object]) -> list[str]:
    """Checks across routes, on the raw document so they are reported with the field errors."""
    routes = document.get("routes")
    if not isinstance(routes, list):
        return []
    problems: list[str] = []
    first_seen: dict[str, int] = {}
    for index, route in enumerate(routes):
        if not isinstance(route, Mapping):
            continue
        name = route.get("name")
        if isinstance(name, str) and name in first_seen:
            problems.append(f"routes[{index}].name: duplicates routes[{first_seen[name]}].name")
        elif isinstance(name, str):
            first_seen[name] = index
        problems += _policy_problems(f"routes[{index}].policy", route.get("policy"), document)
    return problems


def _session_problems(document: Mapping[str, object], environment: Environment) -> list[str]:
    session = document.get("session")
    session = session if isinstance(session, Mapping) else {}
    problems = []
    if session.get("store") == "redis" and document.get("redis") is None:
        problems.append("session.store: `redis` needs the redis key (redis.url)")
    if document.get("oidc") is not None and document.get("tokens") is None:
        problems.append(
            "tokens: required with oidc: signed-in requests go upstream with a minted token "
            "(tokens.issuer, tokens.keys_dir; see `iap keys new`)"
        )
    has_keys = session.get("keys_file") is not None or environment.session_keys is not None
    if document.get("oidc") is not None and not has_keys:
        problems.append(
            f"session.keys_file: required with oidc (or the {SESSION_KEYS_ENV} variable), "
            "so every replica and restart opens the same cookies"
        )
    return problems


def _policy_problems(key: str, policy: object, document: Mapping[str, object]) -> list[str]:
    """Refuse what this build cannot enforce rather than serve it openly."""
    if not isinstance(policy, Mapping) or policy.get("public") is True:
        return []
    if not isinstance(policy.get("public", False), bool):
        return []  # a type error, which the model reports in its own words
    if document.get("oidc") is None:
        return [f"{key}: a route that is not `public: true` needs sign-in; configure oidc"]
    return []


def parse(
    document: object, environment: Environment | None = None, *, serving: bool = False
) -> Config:
    """Build a :class:`Config` from a parsed YAML document, or raise :class:`ConfigError`.

    ``environment`` says which secrets come from variables (none when omitted); ``serving``
    also checks the files only serving reads (``tokens.keys_dir``), with the others."""
    if not isinstance(document, Mapping):
        raise ConfigError(["(top level): expected a mapping of keys"])
    environment = environment or Environment()
    problems = _route_problems(document) + _session_problems(document, environment)
    try:
        context = {"environment": environment, "serving": serving}
        config = Config.model_validate(document, context=context)
    except ValidationError as exc:
        problems = _problems(exc) + problems
    if problems:
        raise ConfigError(problems)
    return config


def load(
    path: str | os.PathLike[str], environment: Environment | None = None, *, serving: bool = False
) -> Config:
    """Read and validate ``path``; every problem is collected into one :class:`ConfigError`.
    ``serving``: as for :func:`parse`."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read ({exc.strerror})"]) from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = wording.yaml_problem(getattr(exc, "problem", None))
        raise ConfigError([f"{path}: not valid YAML{where}: {problem}"]) from None
    return parse(document, environment, serving=serving)
