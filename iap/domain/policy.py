"""Route policies: may this caller pass? (SPEC §2 step 7, §5 ``routes[].policy``).

A pure function from a route's policy and the caller's identity to a :class:`Decision`,
in the manner of Pomerium's evaluator: transport-neutral inputs, a result with a reason.

Invariants:
- Deny by default: an ``allow`` rule with nothing in it lets no one through, and a caller
  passes only when at least one listed condition holds for them.
- ``public: true`` is the only way an anonymous caller passes; every ``allow`` condition,
  ``authenticated: true`` included, needs a signed-in identity.
- Roles are iap's internal roles (after ``tokens.roles`` mapping), groups are Entra group
  object ids, tenants are ``tid``; all compared exactly. Emails and domains are read with the
  strict parser of ``iap.addresses`` (exactly one ``@``, a dot-atom local part, DNS labels) and
  compare ASCII-case-insensitively on the whole address or the whole domain, never as a
  suffix; an ``email`` claim that does not parse matches neither (``email_malformed``).
  Entra's ``email`` claim is not proof of ownership: prefer roles, groups and tenants, which
  the IdP asserts (and ``allowed_tenants`` bounds whose emails are seen).
"""

from __future__ import annotations

from dataclasses import dataclass

from iap import addresses
from iap.config import Allow, Policy
from iap.model import Identity


@dataclass(frozen=True, slots=True)
class Decision:
    """``allow`` and why; ``reason`` goes to the audit log, spans and metrics."""

    allow: bool
    reason: str


PUBLIC = Decision(True, "public")
UNAUTHENTICATED = Decision(False, "unauthenticated")
NO_RULE = Decision(False, "no_rule_matched")
EMAIL_MALFORMED = Decision(False, "email_malformed")
"""An ``emails`` or ``domains`` rule met an ``email`` claim that is not a strict address."""


def decide(policy: Policy, identity: Identity | None) -> Decision:
    """May ``identity`` (None: anonymous) use a route with ``policy``?"""
    if policy.public:
        return PUBLIC
    if identity is None:
        return UNAUTHENTICATED
    if policy.allow is None:
        return NO_RULE
    return _allowed_by(policy.allow, identity)


def _allowed_by(allow: Allow, identity: Identity) -> Decision:
    if allow.authenticated:
        return Decision(True, "authenticated")
    if set(allow.roles).intersection(identity.roles):
        return Decision(True, "role")
    if set(allow.groups).intersection(identity.groups):
        return Decision(True, "group")
    if identity.tid in allow.tenants:
        return Decision(True, "tenant")
    if not (allow.emails or allow.domains):
        return NO_RULE
    address = addresses.email(identity.email or "")
    if address is None:  # no address, or one a strict parser refuses: no email or domain rule
        return EMAIL_MALFORMED if identity.email else NO_RULE
    if str(address).lower() in {entry.lower() for entry in allow.emails}:
        return Decision(True, "email")
    if address.domain in {entry.lower().removeprefix("@") for entry in allow.domains}:
        return Decision(True, "domain")
    return NO_RULE
