"""The Istio resources that make the mesh trust and enforce iap's tokens (SPEC §4, §10).

:func:`render` is a pure function from a :class:`~iap.config.Config` to Kubernetes documents:
one ``RequestAuthentication`` (the gateway verifies minted tokens against iap's admin JWKS)
and one ``AuthorizationPolicy`` per route (the route's policy, declared once in iap.yaml,
enforced again at the ingress gateway). ``iap mesh render`` prints them as YAML.

Invariants:
- The mesh never allows more than iap. A rule of a protected route requires a token from
  ``tokens.issuer`` for the route's audience and matches only the requests iap sends to that
  route: its host, prefix and methods, minus what routes that iap consults first take
  (:mod:`iap.domain.routing`: named hosts before any host, longest prefix first, a method
  mismatch falls through to the next route).
- What the mesh cannot check is left out and reported as a warning, never replaced by
  something broader: ``groups`` and ``claims`` are not in the minted token, so the mesh then
  refuses more than iap, not less. A value Istio would read as a wildcard (``*``) or a path
  template (``{``) is a problem, not a warning.
- Istio ORs the ALLOW policies of a workload and, once one exists, denies every request that
  none matches. A public route therefore gets a policy that asks for no token: without it
  the gateway would refuse the route's anonymous requests.
- Deterministic output: routes in file order, unordered values sorted, and no shared
  sub-objects (PyYAML would write anchors for them).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from iap.config import Address, Allow, Config, Rule
from iap.errors import ConfigError
from iap.mesh_render.authz import (
    Scope,
    compile_denials,
    compile_rules,
    operations_of,
    plain_tree,
)

API_VERSION = "security.istio.io/v1"
DEFAULT_NAMESPACE = "istio-system"
DEFAULT_SELECTOR: Mapping[str, str] = {"istio": "ingressgateway"}
# The Service in front of the admin listener (deploy/k8s/service.yaml); the Service `iap`
# carries the public port only.
ADMIN_SERVICE = "iap-admin.iap.svc.cluster.local"
LABELS: Mapping[str, str] = {"app.kubernetes.io/managed-by": "iap-mesh-render"}

Document = dict[str, Any]
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def render(
    config: Config, *, namespace: str, selector: Mapping[str, str], jwks_uri: str | None
) -> tuple[list[Document], list[str]]:
    """The documents (a RequestAuthentication, then an AuthorizationPolicy per route) and
    warnings about what the mesh cannot enforce. ``jwks_uri`` None means the admin
    listener's ``/jwks.json`` through the ``iap-admin`` Service. Raises :class:`ConfigError`
    with every problem that keeps the config or the options from being rendered."""
    problems = option_problems(namespace, selector, jwks_uri) + policy_problems(config)
    if problems:
        raise ConfigError(problems)
    documents, warnings = authentication(config, namespace, selector, jwks_uri)
    policies, notes = authorization(config, namespace, selector)
    return documents + policies, warnings + notes


def authentication(
    config: Config, namespace: str, selector: Mapping[str, str], jwks_uri: str | None
) -> tuple[list[Document], list[str]]:
    """The RequestAuthentication ``iap`` (for a config without problems)."""
    assert config.tokens is not None
    warnings = _admin_warnings(config.admin.address) if jwks_uri is None else []
    jwks_uri = default_jwks_uri(config.admin.address) if jwks_uri is None else jwks_uri
    authentication = {"jwtRules": [_jwt_rule(config, jwks_uri)]}
    document = _document("RequestAuthentication", "iap", namespace, selector, authentication)
    return [plain_tree(document)], warnings


def authorization(
    config: Config, namespace: str, selector: Mapping[str, str]
) -> tuple[list[Document], list[str]]:
    """An AuthorizationPolicy per route, and one more per route with deny rules."""
    assert config.tokens is not None
    documents, warnings = [], []
    scopes = [Scope.of(index, route) for index, route in enumerate(config.routes)]
    for scope, route in zip(scopes, config.routes, strict=True):
        operations = operations_of(scope, scopes)
        rules, notes = compile_rules(route, config.tokens.issuer, operations)
        policy = {"action": "ALLOW", "rules": rules}
        name = policy_name(route.name)
        documents.append(_document("AuthorizationPolicy", name, namespace, selector, policy))
        denials, deny_notes = compile_denials(route, operations) if operations else ([], [])
        notes += deny_notes
        if denials:
            deny = {"action": "DENY", "rules": denials}
            name = policy_name(f"{route.name}-deny")
            documents.append(_document("AuthorizationPolicy", name, namespace, selector, deny))
        warnings += [
            f"routes[{scope.index}]{key} (route {route.name}): {text}" for key, text in notes
        ]
    return [plain_tree(document) for document in documents], warnings


def default_jwks_uri(admin: Address) -> str:
    """The admin listener's JWKS as istiod reaches it inside the cluster (SPEC §3)."""
    return f"http://{ADMIN_SERVICE}:{admin.port}/jwks.json"


def policy_name(route: str) -> str:
    """``iap-<route>``, or for a route name that is not an RFC 1123 label, a readable form
    with a hash of the name, so that distinct routes keep distinct policies."""
    name = f"iap-{route}"
    if _DNS_LABEL.fullmatch(name):
        return name
    readable = re.sub(r"[^a-z0-9-]+", "-", route.lower()).strip("-")[:40].rstrip("-")
    digest = hashlib.sha256(route.encode()).hexdigest()[:8]
    return f"iap-{readable}-{digest}" if readable else f"iap-{digest}"


# ---------------------------------------------------------------- problems and warnings


def option_problems(namespace: str, selector: Mapping[str, str], jwks_uri: str | None) -> list[str]:
    problems = []
    if not _DNS_LABEL.fullmatch(namespace):
        problems.append("--namespace: expected a Kubernetes namespace name (an RFC 1123 label)")
    if not selector or any(not key or "*" in key + value for key, value in selector.items()):
        problems.append("--selector: expected KEY=VALUE labels, without wildcards")
    parts = urlsplit(jwks_uri) if jwks_uri is not None else None
    if parts is not None and (parts.scheme not in ("http", "https") or not parts.hostname):
        problems.append("--jwks-uri: expected an absolute http or https URL")
    return problems


def policy_problems(config: Config) -> list[str]:
    """Values the Istio policies cannot carry as iap compares them."""
    problems = []
    if config.tokens is None:
        problems.append(
            "tokens: required by `iap mesh render`: the mesh verifies the tokens iap mints"
            " (the authn and authz parts; --only without them needs no tokens)"
        )
    for index, route in enumerate(config.routes):
        if "*" in route.match.path_prefix or "{" in route.match.path_prefix:
            problems.append(
                f"routes[{index}].match.path_prefix: `*` and `{{` are wildcards in Istio paths"
            )
        if any("*" in method for method in route.match.methods or ()):
            problems.append(f"routes[{index}].match.methods: `*` is a wildcard in Istio")
        policy = route.policy
        named: list[tuple[str, Allow | Rule]] = (
            [("allow", policy.allow)] if isinstance(policy.allow, Allow) else []
        )
        named += [(f"allow[{i}]", rule) for i, rule in enumerate(policy.rules)]
        for where, rule in named:
            for key in ("roles", "tenants", "emails", "domains", "methods", "paths"):
                if any("*" in value for value in getattr(rule, key, None) or ()):
                    problems.append(
                        f"routes[{index}].policy.{where}.{key}: `*` is a wildcard in Istio"
                    )
    return problems


def _admin_warnings(admin: Address) -> list[str]:
    try:
        loopback = ipaddress.ip_address(admin.host).is_loopback
    except ValueError:
        loopback = admin.host.lower() == "localhost"
    if not loopback:
        return []
    return [
        f"admin.address: {admin} is a loopback address, so istiod cannot fetch "
        f"{default_jwks_uri(admin)}; listen on 0.0.0.0 (as deploy/k8s does) or pass --jwks-uri"
    ]


# ---------------------------------------------------------------- documents


def _document(
    kind: str, name: str, namespace: str, selector: Mapping[str, str], spec: dict[str, Any]
) -> Document:
    metadata = {"name": name, "namespace": namespace, "labels": dict(LABELS)}
    spec = {"selector": {"matchLabels": dict(selector)}, **spec}
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": metadata, "spec": spec}


def _jwt_rule(config: Config, jwks_uri: str) -> dict[str, Any]:
    """The minted tokens as istiod should verify them: issuer, keys, every route audience."""
    assert config.tokens is not None
    header = config.tokens.header
    where = (
        {"name": "Authorization", "prefix": "Bearer "}
        if header == "authorization"
        else {"name": header}
    )
    return {
        "issuer": config.tokens.issuer,
        "jwksUri": jwks_uri,
        "audiences": sorted({route.audience or route.name for route in config.routes}),
        "forwardOriginalToken": True,
        "fromHeaders": [where],
    }
