"""Route policies: may this caller pass? (SPEC §2 step 7, §5.1 ``routes[].policy``).

One pure function from a route's policy and the facts of one request to a :class:`Decision`,
in the manner of Pomerium's evaluator: transport-neutral inputs, a result that names the rule.
The gateway, forward-auth and ``iap policy explain`` all decide through :func:`decide`.

Invariants:
- Deny by default: a caller passes only when an ``allow`` rule holds for them, and no input
  makes :func:`decide` raise (property-tested).
- A ``deny`` rule that holds always wins, whatever ``allow`` says, and is read first. Deny
  rules also apply to anonymous callers (their identity conditions simply do not hold).
- ``public: true`` is the only way an anonymous caller passes; every ``allow`` rule,
  ``authenticated: true`` included, needs a signed-in identity.
- A rule of the list form is an AND of its conditions; the single-mapping form
  ``allow: {roles: [...], ...}`` is one rule whose conditions are ORed, as before.
- Roles are iap's internal roles (after ``tokens.roles`` mapping), groups are Entra group
  object ids, tenants are ``tid``; all compared exactly. Claims compare exactly with a string
  claim or any string of a list claim; dotted names reach nested objects. Emails and domains
  are read with the strict parser of ``iap.addresses`` and compare ASCII-case-insensitively
  on the whole address or the whole domain; an ``email`` claim that does not parse matches
  neither (``email_malformed``). Entra's ``email`` claim is not proof of ownership: prefer
  roles, groups and tenants, which the IdP asserts.
- Equal facts give equal decisions: nothing here reads a clock, a random source or state.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from iap import addresses
from iap.config import Allow, Policy, Rule
from iap.model import Identity

Outcome = Literal["allow", "deny", "sign_in"]


@dataclass(frozen=True, slots=True)
class Facts:
    """What a decision may depend on, for one request."""

    method: str
    path: str
    """Normalised (``iap.domain.paths``): the path that is decided is the path forwarded."""
    identity: Identity | None
    auth: Literal["session", "bearer"] | None = None
    client: str = ""
    """The client address after trusted-proxy resolution."""
    claims: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    """The caller's token claims, for ``claims`` conditions (empty when none are read)."""


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome and why; ``reason`` names the rule and goes to the audit log, spans and
    metrics. ``sign_in``: no identity, and signing in could change the answer."""

    allow: bool
    reason: str
    outcome: Outcome = "deny"

    def __post_init__(self) -> None:
        if self.allow != (self.outcome == "allow"):
            raise ValueError("allow and outcome disagree")


PUBLIC = Decision(True, "public", "allow")
UNAUTHENTICATED = Decision(False, "unauthenticated", "sign_in")
NO_RULE = Decision(False, "no_rule_matched")
EMAIL_MALFORMED = Decision(False, "email_malformed")
"""An ``emails`` or ``domains`` rule met an ``email`` claim that is not a strict address."""


def decide(policy: Policy, facts: Facts) -> Decision:
    """May the caller of ``facts`` use a route with ``policy``?"""
    if policy.public:
        return PUBLIC
    for index, rule in enumerate(policy.deny):
        if _holds(rule, facts):
            return Decision(False, f"deny[{index}]")
    identity = facts.identity
    if identity is None:
        return UNAUTHENTICATED
    if isinstance(policy.allow, Allow):
        return _mapping(policy.allow, identity, facts.claims)
    for index, rule in enumerate(policy.rules):
        if _holds(rule, facts):
            return Decision(True, f"allow[{index}]", "allow")
    if _malformed_email(policy, identity):
        return EMAIL_MALFORMED
    return NO_RULE


def explain(policy: Policy, facts: Facts) -> list[tuple[str, list[str]]]:
    """For each rule (``deny[i]``, then ``allow[i]``), the conditions that did not hold."""
    rules = [(f"deny[{i}]", rule) for i, rule in enumerate(policy.deny)]
    rules += [(f"allow[{i}]", rule) for i, rule in enumerate(policy.rules)]
    return [
        (name, [key for key, test in _CONDITIONS.items() if not _condition(rule, key, test, facts)])
        for name, rule in rules
    ]


# --- the list form: every condition of a rule holds ------------------------------------


def _holds(rule: Rule, facts: Facts) -> bool:
    return all(_condition(rule, key, test, facts) for key, test in _CONDITIONS.items())


def _condition(rule: Rule, key: str, test: _Test, facts: Facts) -> bool:
    wanted = getattr(rule, key)
    return wanted is None or test(wanted, facts)


_Test = Callable[[Any, Facts], bool]


def _identity_test(check: Callable[[Any, Identity, Facts], bool]) -> _Test:
    """A condition on the caller: never holds for an anonymous one."""
    return lambda wanted, facts: facts.identity is not None and check(wanted, facts.identity, facts)


def _email_in(wanted: list[str], identity: Identity) -> bool:
    address = addresses.email(identity.email or "")
    return address is not None and str(address).lower() in {e.lower() for e in wanted}


def _domain_in(wanted: list[str], identity: Identity) -> bool:
    address = addresses.email(identity.email or "")
    return address is not None and address.domain in {d.lower().removeprefix("@") for d in wanted}


def _source_in(wanted: list[Any], facts: Facts) -> bool:
    try:
        client = ipaddress.ip_address(facts.client)
    except ValueError:
        return False
    if isinstance(client, ipaddress.IPv6Address) and client.ipv4_mapped is not None:
        client = client.ipv4_mapped
    return any(client in network for network in wanted)


_CONDITIONS: dict[str, _Test] = {
    "authenticated": _identity_test(lambda _, identity, facts: True),
    "roles": _identity_test(lambda wanted, identity, _: bool(set(wanted) & set(identity.roles))),
    "groups": _identity_test(lambda wanted, identity, _: bool(set(wanted) & set(identity.groups))),
    "tenants": _identity_test(lambda wanted, identity, _: identity.tid in wanted),
    "emails": _identity_test(lambda wanted, identity, _: _email_in(wanted, identity)),
    "domains": _identity_test(lambda wanted, identity, _: _domain_in(wanted, identity)),
    "claims": _identity_test(lambda wanted, _, facts: _claims_match(wanted, facts.claims)),
    "methods": lambda wanted, facts: facts.method in wanted,
    "paths": lambda wanted, facts: facts.path.startswith(tuple(wanted)),
    "auth": lambda wanted, facts: facts.auth in wanted,
    "source": _source_in,
}


def _claims_match(wanted: Mapping[str, list[str]], claims: Mapping[str, Any]) -> bool:
    """Every named claim holds one of its values: a string equal to one, or a list holding
    one as a string member. Dotted names reach nested objects."""
    return all(_claim_holds(_claim(claims, name), values) for name, values in wanted.items())


def _claim(claims: Mapping[str, Any], name: str) -> object:
    value: object = claims
    for part in name.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _claim_holds(value: object, wanted: list[str]) -> bool:
    if isinstance(value, str):
        return value in wanted
    if isinstance(value, list):
        return any(isinstance(item, str) and item in wanted for item in value)
    return False


def _malformed_email(policy: Policy, identity: Identity) -> bool:
    """An email or domain rule could not be judged: the ``email`` claim is no address."""
    reads_email = any(rule.emails or rule.domains for rule in policy.rules)
    email = identity.email or ""
    return reads_email and bool(email) and addresses.email(email) is None


# --- the single-mapping form: any condition holds ---------------------------------------


def _mapping(allow: Allow, identity: Identity, claims: Mapping[str, Any]) -> Decision:
    if allow.authenticated:
        return Decision(True, "authenticated", "allow")
    if set(allow.roles).intersection(identity.roles):
        return Decision(True, "role", "allow")
    if set(allow.groups).intersection(identity.groups):
        return Decision(True, "group", "allow")
    if identity.tid in allow.tenants:
        return Decision(True, "tenant", "allow")
    if any(_claim_holds(_claim(claims, name), v) for name, v in allow.claims.items()):
        return Decision(True, "claim", "allow")
    if not (allow.emails or allow.domains):
        return NO_RULE
    if addresses.email(identity.email or "") is None:
        return EMAIL_MALFORMED if identity.email else NO_RULE
    if _email_in(allow.emails, identity):
        return Decision(True, "email", "allow")
    if _domain_in(allow.domains, identity):
        return Decision(True, "domain", "allow")
    return NO_RULE
