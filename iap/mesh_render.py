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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from iap.config import Address, Allow, Config, Route, Rule
from iap.errors import ConfigError

API_VERSION = "security.istio.io/v1"
DEFAULT_NAMESPACE = "istio-system"
DEFAULT_SELECTOR: Mapping[str, str] = {"istio": "ingressgateway"}
# The Service in front of the admin listener (deploy/k8s/service.yaml); the Service `iap`
# carries the public port only.
ADMIN_SERVICE = "iap-admin.iap.svc.cluster.local"
LABELS: Mapping[str, str] = {"app.kubernetes.io/managed-by": "iap-mesh-render"}

Document = dict[str, Any]
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
# Claims of the minted token (SPEC §6) that the policy keys compare, and the keys that
# compare something the token does not carry.
_CLAIMS = (("roles", "roles"), ("tenants", "tid"), ("emails", "email"))
_UNCHECKABLE = {
    "groups": "minted tokens carry no groups claim; map the groups to roles in tokens.roles "
    "and allow those roles",
    "claims": "minted tokens carry only the claims of SPEC §6",
}


def render(
    config: Config, *, namespace: str, selector: Mapping[str, str], jwks_uri: str | None
) -> tuple[list[Document], list[str]]:
    """The documents (a RequestAuthentication, then an AuthorizationPolicy per route) and
    warnings about what the mesh cannot enforce. ``jwks_uri`` None means the admin
    listener's ``/jwks.json`` through the ``iap-admin`` Service. Raises :class:`ConfigError`
    with every problem that keeps the config or the options from being rendered."""
    problems = _option_problems(namespace, selector, jwks_uri) + _config_problems(config)
    if problems or config.tokens is None:
        raise ConfigError(problems)
    warnings = _admin_warnings(config.admin.address) if jwks_uri is None else []
    jwks_uri = default_jwks_uri(config.admin.address) if jwks_uri is None else jwks_uri
    authentication = {"jwtRules": [_jwt_rule(config, jwks_uri)]}
    documents = [_document("RequestAuthentication", "iap", namespace, selector, authentication)]
    scopes = [_Scope.of(index, route) for index, route in enumerate(config.routes)]
    for scope, route in zip(scopes, config.routes, strict=True):
        operations = _operations(scope, scopes)
        rules, notes = _rules(route, config.tokens.issuer, operations)
        policy = {"action": "ALLOW", "rules": rules}
        name = policy_name(route.name)
        documents.append(_document("AuthorizationPolicy", name, namespace, selector, policy))
        denials, deny_notes = _deny_rules(route, operations) if operations else ([], [])
        notes += deny_notes
        if denials:
            deny = {"action": "DENY", "rules": denials}
            name = policy_name(f"{route.name}-deny")
            documents.append(_document("AuthorizationPolicy", name, namespace, selector, deny))
        warnings += [
            f"routes[{scope.index}]{key} (route {route.name}): {text}" for key, text in notes
        ]
    return [_tree(document) for document in documents], warnings


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


def _option_problems(
    namespace: str, selector: Mapping[str, str], jwks_uri: str | None
) -> list[str]:
    problems = []
    if not _DNS_LABEL.fullmatch(namespace):
        problems.append("--namespace: expected a Kubernetes namespace name (an RFC 1123 label)")
    if not selector or any(not key or "*" in key + value for key, value in selector.items()):
        problems.append("--selector: expected KEY=VALUE labels, without wildcards")
    parts = urlsplit(jwks_uri) if jwks_uri is not None else None
    if parts is not None and (parts.scheme not in ("http", "https") or not parts.hostname):
        problems.append("--jwks-uri: expected an absolute http or https URL")
    return problems


def _config_problems(config: Config) -> list[str]:
    """Values the Istio resources cannot carry as iap compares them."""
    problems = []
    if config.tokens is None:
        problems.append(
            "tokens: required by `iap mesh render`: the mesh verifies the tokens iap mints"
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


def _rules(
    route: Route, issuer: str, operations: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """The route's policy as Istio rules, which are ORed as iap ORs the allow conditions;
    with notes (key, text) about what the mesh leaves out."""
    if not operations:
        return [], [("", "no request reaches this route (routes before it take them all)")]
    to = [{"operation": operation} for operation in operations]
    if route.policy.public:
        return [{"to": to}], []
    if isinstance(route.policy.allow, list):
        return _rule_list(route, issuer, operations)
    conditions, notes = _conditions(route.policy.allow)
    token = _token(route, issuer, to)
    rules = [{**token, "when": token["when"] + condition} for condition in conditions]
    if notes and not rules:
        notes.append(("", "nothing else to check in the mesh: it refuses every request"))
    return rules, notes


def _token(route: Route, issuer: str, to: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "from": [{"source": {"requestPrincipals": [f"{issuer}/*"]}}],
        "to": to,
        "when": [_when("iss", [issuer]), _when("aud", [route.audience or route.name])],
    }


_MESH_UNCHECKABLE = {
    **_UNCHECKABLE,
    "auth": "the mesh does not know how the caller signed in at the edge",
    "source": "the mesh sees iap's address, not the client's",
}


def _rule_list(
    route: Route, issuer: str, operations: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """The list form: each rule is an AND, so a rule with a condition the mesh cannot check
    is left out whole (the mesh then refuses more than iap, never less)."""
    rules: list[dict[str, Any]] = []
    notes: list[tuple[str, str]] = []
    for index, rule in enumerate(route.policy.rules):
        compiled, note = _compiled(rule, operations)
        if compiled is None:
            notes.append((f".policy.allow[{index}]", note))
            continue
        to, when = compiled
        token = _token(route, issuer, to)
        rules.append({**token, "when": token["when"] + when})
    return rules, notes


def _deny_rules(
    route: Route, operations: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Deny rules for a DENY policy, which Istio reads before any ALLOW policy. One with a
    condition the mesh cannot check is left out (iap still enforces it): dropping only that
    condition would deny more than iap, often the whole route."""
    rules: list[dict[str, Any]] = []
    notes: list[tuple[str, str]] = []
    for index, rule in enumerate(route.policy.deny):
        compiled, note = _compiled(rule, operations)
        if compiled is None:
            notes.append((f".policy.deny[{index}]", note.replace("enforced", "denied")))
            continue
        to, when = compiled
        rules.append({"to": to, "when": when} if when else {"to": to})
    return rules, notes


def _compiled(
    rule: Rule, operations: list[dict[str, Any]]
) -> tuple[tuple[list[dict[str, Any]], list[dict[str, Any]]] | None, str]:
    """A rule's operations (``to``) and claim conditions (``when``), or None and why not."""
    unchecked = [key for key in _MESH_UNCHECKABLE if getattr(rule, key) is not None]
    if unchecked:
        why = "; ".join(_MESH_UNCHECKABLE[key] for key in unchecked)
        return None, f"not enforced in the mesh: {why}"
    to = [{"operation": op} for op in _narrowed(operations, rule.methods, rule.paths)]
    if not to:
        return None, "matches no request of this route"
    when = [
        _when(claim, sorted(getattr(rule, key))) for key, claim in _CLAIMS if getattr(rule, key)
    ]
    if rule.domains:
        when.append(_when("email", sorted(f"*@{d.removeprefix('@')}" for d in rule.domains)))
    return (to, when), ""


def _narrowed(
    operations: list[dict[str, Any]], methods: list[str] | None, paths: list[str] | None
) -> list[dict[str, Any]]:
    """The route's operations restricted to a rule's methods and path prefixes."""
    narrowed = []
    for operation in operations:
        op = {key: list(value) for key, value in operation.items()}
        if methods is not None:
            kept = [m for m in op.get("methods", methods) if m in methods]
            if not kept:
                continue
            op["methods"] = sorted(kept)
        if paths is not None:
            prefixes = [p.removesuffix("*") for p in op.get("paths", ["*"])]
            inside = sorted(
                {f"{p}*" for p in paths for prefix in prefixes if p.startswith(prefix)}
                | {f"{prefix}*" for p in paths for prefix in prefixes if prefix.startswith(p)}
            )
            if not inside:
                continue
            op["paths"] = inside
        narrowed.append(op)
    return narrowed


def _conditions(allow: Allow | None) -> tuple[list[list[dict[str, Any]]], list[tuple[str, str]]]:
    """One list of `when` entries per allow condition; `authenticated` needs none and makes
    every other condition redundant."""
    if allow is None:
        return [], []
    if allow.authenticated:
        return [[]], []
    notes = [
        (f".policy.allow.{key}", f"not enforced in the mesh: {why}")
        for key, why in _UNCHECKABLE.items()
        if getattr(allow, key)
    ]
    values = {claim: set(getattr(allow, key)) for key, claim in _CLAIMS}
    # Domains compare the whole part after the last `@`: a suffix match on `@domain`.
    values["email"] |= {f"*@{domain.lstrip('@')}" for domain in allow.domains}
    return [[_when(claim, sorted(found))] for claim, found in values.items() if found], notes


def _when(claim: str, values: list[str]) -> dict[str, Any]:
    return {"key": f"request.auth.claims[{claim}]", "values": values}


# ---------------------------------------------------------------- which requests a route gets


@dataclass(frozen=True, slots=True)
class _Scope:
    """The requests a route matches, as the gateway sees them: with ``preserve_host: false``
    the gateway sees the upstream's host name, not the client's."""

    index: int
    host: str | None
    prefix: str
    methods: frozenset[str] | None

    @classmethod
    def of(cls, index: int, route: Route) -> _Scope:
        host = route.match.host if route.preserve_host else urlsplit(route.upstream).hostname
        return cls(index, host, route.match.path_prefix, route.match.methods)

    def before(self, other: _Scope) -> bool:
        """Among routes of one host group, does iap consult this one first?"""
        return (len(self.prefix), -self.index) > (len(other.prefix), -other.index)

    def overlaps(self, other: _Scope) -> bool:
        return self.prefix.startswith(other.prefix) or other.prefix.startswith(self.prefix)


def _operations(target: _Scope, scopes: Sequence[_Scope]) -> list[dict[str, Any]]:
    """Istio operations that match exactly the requests iap routes to ``target``."""
    if target.host is not None:
        earlier = [s for s in scopes if s.host == target.host and s.before(target)]
        return _by_method(target, {"hosts": _host_values(target.host)}, earlier)
    anywhere = [s for s in scopes if s.host is None and s.before(target)]
    hosts = sorted({s.host for s in scopes if s.host is not None and s.overlaps(target)})
    operations = []
    for host in hosts:
        named = [s for s in scopes if s.host == host]  # consulted before any host-agnostic route
        operations += _by_method(target, {"hosts": _host_values(host)}, named + anywhere)
    others = {"notHosts": [value for host in hosts for value in _host_values(host)]}
    return operations + _by_method(target, others if hosts else {}, anywhere)


def _by_method(
    target: _Scope, base: dict[str, Any], earlier: Sequence[_Scope]
) -> list[dict[str, Any]]:
    """Split by method where earlier routes that take some methods only leave the target
    different paths; one operation per set of methods with the same paths left."""
    earlier = [s for s in earlier if s.overlaps(target)]
    named = sorted({method for s in earlier for method in s.methods or ()})
    # None stands for every method that no earlier route names.
    keys: list[str | None] = [*named, None] if target.methods is None else [*sorted(target.methods)]
    groups: dict[tuple[str, ...], list[str | None]] = {}
    for key in keys:
        taken = [s for s in earlier if s.methods is None or key in s.methods]
        if not any(target.prefix.startswith(s.prefix) for s in taken):  # else nothing is left
            groups.setdefault(tuple(sorted({s.prefix for s in taken})), []).append(key)
    operations = []
    for excluded, group in groups.items():
        operation = {**base, "paths": [f"{target.prefix}*"]}
        if excluded:
            operation["notPaths"] = [f"{prefix}*" for prefix in excluded]
        if None not in group:
            operation["methods"] = sorted(method for method in group if method is not None)
        elif rest := sorted(set(named).difference(group)):
            operation["notMethods"] = rest
        operations.append(operation)
    return operations


def _host_values(host: str) -> list[str]:
    """Istio compares hosts with the whole Host header (case aside); iap ignores the port
    and a trailing dot."""
    host = f"[{host}]" if ":" in host else host
    return [host, f"{host}.", f"{host}.:*", f"{host}:*"]


def _tree(value: Any) -> Any:
    """A copy that shares no dict or list with itself."""
    if isinstance(value, dict):
        return {key: _tree(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_tree(item) for item in value]
    return value
