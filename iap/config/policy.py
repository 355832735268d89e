"""``routes[].policy``: ``public: true``, or ``allow`` rules (a list, ANDed within a rule and
ORed across, or the single-mapping form, ORed) and ``deny`` rules (SPEC §5.1). The meaning is
:mod:`iap.domain.policy`'s; this module only says what a well-formed policy is.

Invariants:
- An empty rule, an empty condition list, an unknown condition and a wrong type are errors
  naming their key; emails and domains must parse with :mod:`iap.addresses`' strict parser.
- Methods are upper-case, paths are normalised absolute prefixes, sources are CIDRs.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Discriminator,
    Field,
    StrictBool,
    Tag,
    field_validator,
    model_validator,
)

from iap import addresses
from iap.config.fields import Model, absolute_prefix, cidrs


def _strict_emails(value: list[str]) -> list[str]:
    if not all(addresses.email(entry) for entry in value):
        raise ValueError("expected addresses such as alice@contoso.com (one @, DNS labels)")
    return value


def _strict_domains(value: list[str]) -> list[str]:
    if not all(addresses.domain(entry.removeprefix("@")) for entry in value):
        raise ValueError("expected domain names such as contoso.com")
    return value


def _path_prefixes(value: list[str]) -> list[str]:
    for prefix in value:
        absolute_prefix(prefix)
    return value


def _upper(value: object) -> object:
    return [str(item).upper() for item in value] if isinstance(value, list) else value


Emails = Annotated[list[str], AfterValidator(_strict_emails)]
Domains = Annotated[list[str], AfterValidator(_strict_domains)]
Values = Annotated[list[str], Field(min_length=1)]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Allow(Model):
    """The single-mapping form ``allow: {roles: [...], ...}``: its conditions are ORed."""

    roles: list[str] = []
    groups: list[str] = []
    emails: Emails = []
    domains: Domains = []
    tenants: list[str] = []
    claims: dict[str, list[str]] = {}
    authenticated: StrictBool = False


class Rule(Model):
    """One rule of ``allow: [...]`` or ``deny: [...]``: every condition given must hold (AND).

    Unset conditions do not constrain; a given list must not be empty (SPEC §5.1).
    """

    authenticated: Literal[True] | None = None
    roles: Values | None = None
    groups: Values | None = None
    tenants: Values | None = None
    emails: Annotated[Emails, Field(min_length=1)] | None = None
    domains: Annotated[Domains, Field(min_length=1)] | None = None
    claims: Annotated[dict[str, Values], Field(min_length=1)] | None = None
    methods: Annotated[Values, BeforeValidator(_upper)] | None = None
    paths: Annotated[Values, AfterValidator(_path_prefixes)] | None = None
    auth: Annotated[list[Literal["session", "bearer"]], Field(min_length=1)] | None = None
    source: Annotated[list[Network], Field(min_length=1)] | None = None

    @field_validator("source", mode="before")
    @classmethod
    def _networks(cls, value: object) -> object:
        return cidrs(value)

    @model_validator(mode="after")
    def _not_empty(self) -> Rule:
        if not self.model_fields_set:
            raise ValueError("a rule needs at least one condition")
        return self


def _kind(value: object) -> str | None:
    if isinstance(value, list):
        return "rules"
    if isinstance(value, Mapping | Allow):
        return "mapping"
    return None


class Policy(Model):
    """``public: true``, or ``allow`` (a list of rules, or the single-mapping form) and ``deny``
    (a list of rules that refuse before ``allow`` is read)."""

    public: StrictBool = False
    allow: (
        Annotated[
            Annotated[list[Rule], Tag("rules")] | Annotated[Allow, Tag("mapping")],
            Discriminator(_kind),
        ]
        | None
    ) = None
    deny: list[Rule] = []

    @model_validator(mode="after")
    def _public_or_allow(self) -> Policy:
        if self.public and (self.allow is not None or self.deny):
            raise ValueError("a policy is either public: true or allow and deny rules, not both")
        return self

    @property
    def rules(self) -> tuple[Rule, ...]:
        """The allow rules of the list form; empty for the single-mapping form."""
        return tuple(self.allow) if isinstance(self.allow, list) else ()

    @property
    def reads_claims(self) -> bool:
        """Whether deciding needs the caller's token claims (a ``claims`` condition)."""
        mapping = self.allow if isinstance(self.allow, Allow) else None
        return bool(mapping and mapping.claims) or any(
            rule.claims for rule in (*self.rules, *self.deny)
        )

    @property
    def groups(self) -> frozenset[str]:
        """Every group id a rule names (a session keeps these when it must drop groups)."""
        mapping = self.allow if isinstance(self.allow, Allow) else None
        named = [*(mapping.groups if mapping else ())]
        for rule in (*self.rules, *self.deny):
            named += rule.groups or ()
        return frozenset(named)
