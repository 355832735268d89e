"""Route policies: may this caller pass? (SPEC §2 step 7, §5 ``routes[].policy``).

A pure function from a route's policy and the caller's identity to a :class:`Decision`,
in the manner of Pomerium's evaluator: transport-neutral inputs, a result with a reason.

Invariants:
- Deny by default: an ``allow`` rule with nothing in it lets no one through, and a caller
  passes only when at least one listed condition holds for them.
- ``public: true`` is the only way an anonymous caller passes; every ``allow`` condition,
  ``authenticated: true`` included, needs a signed-in identity.
- Roles are iap's internal roles (after ``tokens.roles`` mapping), groups are Entra group
  object ids, tenants are ``tid``; all compared exactly. Emails and domains compare
  ASCII-case-insensitively on the whole address or the whole domain after the last ``@``,
  never as a suffix. Entra's ``email`` claim is not proof of ownership: prefer roles, groups and
  tenants, which the IdP asserts (and ``allowed_tenants`` bounds whose emails are seen).
"""

from __future__ import annotations

from dataclasses import dataclass

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
    email = _ascii_lower(identity.email or "")
    if email and email in {_ascii_lower(entry) for entry in allow.emails}:
        return Decision(True, "email")
    domain = email.rpartition("@")[2] if "@" in email else ""
    if domain and domain in {_ascii_lower(entry).lstrip("@") for entry in allow.domains}:
        return Decision(True, "domain")
    return NO_RULE


def _ascii_lower(text: str) -> str:
    """Lower-case ASCII letters only: Unicode folding would merge distinct addresses
    (``straße.de`` folds to ``strasse.de``), so non-ASCII text compares exactly."""
    return text.lower() if text.isascii() else text
