"""Route policies compiled to Istio ``AuthorizationPolicy`` rules (SPEC §10): the rules,
their request scopes (host, prefix, methods, minus what earlier routes take) and the notes on
what the mesh cannot check. The invariants are those of :mod:`iap.mesh_render`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from iap.config import Allow, Route, Rule

# Claims of the minted token (SPEC §6) that the policy keys compare, and the keys that
# compare something the token does not carry.
CLAIMS = (("roles", "roles"), ("tenants", "tid"), ("emails", "email"))
UNCHECKABLE = {
    "groups": "minted tokens carry no groups claim; map the groups to roles in tokens.roles "
    "and allow those roles",
    "claims": "minted tokens carry only the claims of SPEC §6",
}


def compile_rules(
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
    **UNCHECKABLE,
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


def compile_denials(
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
    when = [_when(claim, sorted(getattr(rule, key))) for key, claim in CLAIMS if getattr(rule, key)]
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
        for key, why in UNCHECKABLE.items()
        if getattr(allow, key)
    ]
    values = {claim: set(getattr(allow, key)) for key, claim in CLAIMS}
    # Domains compare the whole part after the last `@`: a suffix match on `@domain`.
    values["email"] |= {f"*@{domain.lstrip('@')}" for domain in allow.domains}
    return [[_when(claim, sorted(found))] for claim, found in values.items() if found], notes


def _when(claim: str, values: list[str]) -> dict[str, Any]:
    return {"key": f"request.auth.claims[{claim}]", "values": values}


# ---------------------------------------------------------------- which requests a route gets


@dataclass(frozen=True, slots=True)
class Scope:
    """The requests a route matches, as the gateway sees them: with ``preserve_host: false``
    the gateway sees the upstream's host name, not the client's."""

    index: int
    host: str | None
    prefix: str
    methods: frozenset[str] | None

    @classmethod
    def of(cls, index: int, route: Route) -> Scope:
        host = route.match.host if route.preserve_host else urlsplit(route.upstream).hostname
        return cls(index, host, route.match.path_prefix, route.match.methods)

    def before(self, other: Scope) -> bool:
        """Among routes of one host group, does iap consult this one first?"""
        return (len(self.prefix), -self.index) > (len(other.prefix), -other.index)

    def overlaps(self, other: Scope) -> bool:
        return self.prefix.startswith(other.prefix) or other.prefix.startswith(self.prefix)


def operations_of(target: Scope, scopes: Sequence[Scope]) -> list[dict[str, Any]]:
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
    target: Scope, base: dict[str, Any], earlier: Sequence[Scope]
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


def plain_tree(value: Any) -> Any:
    """A copy that shares no dict or list with itself."""
    if isinstance(value, dict):
        return {key: plain_tree(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain_tree(item) for item in value]
    return value
