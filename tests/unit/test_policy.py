"""iap.domain.policy: deny by default; a caller passes only when a listed condition holds."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iap.config import Allow, Policy
from iap.domain import policy as evaluator
from iap.domain.policy import Decision, Facts
from iap.model import Identity

ALICE = Identity(
    subject="tid-contoso:oid-alice",
    tid="tid-contoso",
    oid="oid-alice",
    name="Alice",
    email="Alice@Contoso.com",
    preferred_username="alice@contoso.com",
    roles=("reader",),
    groups=("group-eng",),
)
NOBODY = Identity(
    subject="tid-x:oid-x",
    tid="tid-x",
    oid="oid-x",
    name=None,
    email=None,
    preferred_username=None,
    roles=(),
    groups=(),
)


def decide(policy: Policy, identity: Identity | None) -> Decision:
    """The decision for ``identity`` on a GET of ``/`` (these tests are about who)."""
    return evaluator.decide(policy, Facts(method="GET", path="/", identity=identity))


DENY_NO_RULE = Decision(False, "no_rule_matched")
DENY_MALFORMED = Decision(False, "email_malformed")
DENY_ANONYMOUS = Decision(False, "unauthenticated", "sign_in")


def allow(**rule: Any) -> Policy:
    return Policy(allow=Allow(**rule))


def with_email(email: str | None) -> Identity:
    return replace(NOBODY, email=email)


# --- public and anonymous -------------------------------------------------------------------


@pytest.mark.parametrize("identity", [None, ALICE, NOBODY])
def test_public_passes_anyone(identity: Identity | None) -> None:
    assert decide(Policy(public=True), identity) == Decision(True, "public", "allow")


@pytest.mark.parametrize(
    "policy",
    [
        Policy(),
        allow(),
        allow(authenticated=True),
        allow(roles=["reader"]),
        allow(groups=["group-eng"]),
        allow(tenants=["tid-contoso"]),
        allow(emails=["alice@contoso.com"]),
        allow(domains=["contoso.com"]),
        Policy.model_validate({"allow": {"authenticated": True, "roles": ["r"]}}),
    ],
)
def test_anything_but_public_refuses_anonymous(policy: Policy) -> None:
    assert decide(policy, None) == DENY_ANONYMOUS


def test_public_and_allow_together_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="either public"):
        Policy.model_validate({"public": True, "allow": {"authenticated": True}})


# --- deny by default ------------------------------------------------------------------------


@pytest.mark.parametrize("identity", [ALICE, NOBODY])
def test_empty_allow_denies_everyone(identity: Identity) -> None:
    assert decide(allow(), identity) == DENY_NO_RULE
    assert decide(Policy.model_validate({"allow": {}}), identity) == DENY_NO_RULE


@pytest.mark.parametrize("identity", [ALICE, NOBODY])
def test_no_allow_rule_denies_everyone(identity: Identity) -> None:
    assert decide(Policy(), identity) == DENY_NO_RULE


def test_authenticated_false_grants_nothing() -> None:
    assert decide(allow(authenticated=False), ALICE) == DENY_NO_RULE


# --- each condition -------------------------------------------------------------------------


def test_authenticated_allows_any_signed_in_identity() -> None:
    assert decide(allow(authenticated=True), NOBODY) == Decision(True, "authenticated", "allow")
    assert decide(allow(authenticated=True), ALICE) == Decision(True, "authenticated", "allow")


@pytest.mark.parametrize(
    ("roles", "identity_roles", "allowed"),
    [
        (["reader"], ("reader",), True),
        (["admin", "reader"], ("reader", "writer"), True),
        (["admin"], ("reader",), False),
        (["Reader"], ("reader",), False),  # exact
        (["read"], ("reader",), False),
        (["reader "], ("reader",), False),
        (["reader"], (), False),
    ],
)
def test_roles_match_exactly(
    roles: list[str], identity_roles: tuple[str, ...], allowed: bool
) -> None:
    identity = replace(NOBODY, roles=identity_roles)
    expected = Decision(True, "role", "allow") if allowed else DENY_NO_RULE
    assert decide(allow(roles=roles), identity) == expected


@pytest.mark.parametrize(
    ("groups", "identity_groups", "allowed"),
    [
        (["g-1"], ("g-0", "g-1"), True),
        (["g-1"], ("g-10",), False),
        (["G-1"], ("g-1",), False),
        (["g-1"], (), False),
    ],
)
def test_groups_match_exactly(
    groups: list[str], identity_groups: tuple[str, ...], allowed: bool
) -> None:
    identity = replace(NOBODY, groups=identity_groups)
    expected = Decision(True, "group", "allow") if allowed else DENY_NO_RULE
    assert decide(allow(groups=groups), identity) == expected


def test_roles_rule_ignores_groups_and_groups_rule_ignores_roles() -> None:
    identity = replace(NOBODY, roles=("x",), groups=("y",))
    assert decide(allow(roles=["y"]), identity) == DENY_NO_RULE
    assert decide(allow(groups=["x"]), identity) == DENY_NO_RULE


@pytest.mark.parametrize(
    ("tenants", "tid", "allowed"),
    [
        (["tid-a"], "tid-a", True),
        (["tid-b", "tid-a"], "tid-a", True),
        (["tid-a"], "tid-ab", False),
        (["tid-ab"], "tid-a", False),
        (["TID-A"], "tid-a", False),
        ([], "tid-a", False),
    ],
)
def test_tenants_match_exactly(tenants: list[str], tid: str, allowed: bool) -> None:
    identity = replace(NOBODY, tid=tid)
    expected = Decision(True, "tenant", "allow") if allowed else DENY_NO_RULE
    assert decide(allow(tenants=tenants), identity) == expected


@pytest.mark.parametrize(
    ("emails", "email", "allowed"),
    [
        (["alice@contoso.com"], "alice@contoso.com", True),
        (["ALICE@Contoso.COM"], "alice@contoso.com", True),
        (["alice@contoso.com"], "Alice@CONTOSO.com", True),
        (["alice@contoso.com"], "malice@contoso.com", False),
        (["alice@contoso.com"], "alice@contoso.com.evil.com", False),
        (["alice@contoso.com"], "alice@contoso.co", False),
        (["alice@contoso.com"], "alice@sub.contoso.com", False),
        (["alice@contoso.com"], "bob@contoso.com", False),
        (["alice@contoso.com"], None, False),
        (["alice@contoso.com"], "", False),
    ],
)
def test_emails_match_whole_address_case_insensitively(
    emails: list[str], email: str | None, allowed: bool
) -> None:
    expected = Decision(True, "email", "allow") if allowed else DENY_NO_RULE
    assert decide(allow(emails=emails), with_email(email)) == expected


@pytest.mark.parametrize(
    ("domains", "email", "allowed"),
    [
        (["contoso.com"], "alice@contoso.com", True),
        (["Contoso.COM"], "alice@CONTOSO.com", True),
        (["@contoso.com"], "alice@contoso.com", True),
        (["fabrikam.com", "contoso.com"], "alice@contoso.com", True),
        (["contoso.com"], "alice@evilcontoso.com", False),  # never a suffix
        (["contoso.com"], "alice@contoso.com.evil.com", False),  # never a prefix
        (["contoso.com"], "alice@sub.contoso.com", False),  # subdomains are other domains
        (["contoso.com"], None, False),
    ],
)
def test_domains_match_the_whole_domain(
    domains: list[str], email: str | None, allowed: bool
) -> None:
    expected = Decision(True, "domain", "allow") if allowed else DENY_NO_RULE
    assert decide(allow(domains=domains), with_email(email)) == expected


@pytest.mark.parametrize(
    "email",
    [
        "attacker@evil.test@contoso.test",  # the finding (oauth2-proxy CVE-2026-40574's class)
        '"a@b"@contoso.test',  # quoted local parts are refused, not parsed
        "a%contoso.test@evil.test",
        "attacker%40evil.test@contoso.test",
        "alice@contoso.test\x00",
        "alice\x00@contoso.test",
        "alice @contoso.test",
        "alice@contoso.test ",
        "alice@contoso.test.",
        "alice@contoso..test",
        "alice@-contoso.test",
        "alice@contoso.test\n",
        ".alice@contoso.test",
        "alice@",
        "@contoso.test",
        "contoso.test",
        "eve@straße.test",
        "\u0430lice@contoso.test",  # a Cyrillic letter a
    ],
)
def test_an_address_a_strict_parser_refuses_matches_no_email_or_domain_rule(email: str) -> None:
    email = email.encode().decode("unicode_escape")
    policy = allow(domains=["contoso.test"], emails=["alice@contoso.test", "a@b.test"])
    assert decide(policy, with_email(email)) == DENY_MALFORMED


@pytest.mark.parametrize(
    ("key", "entry"),
    [
        ("domains", ""),
        ("domains", "@"),
        ("domains", "contoso.com."),
        ("domains", "*.contoso.com"),
        ("domains", "evil.test@contoso.test"),
        ("emails", ""),
        ("emails", "alice"),
        ("emails", "a@b@contoso.test"),
    ],
)
def test_entries_that_are_no_address_or_domain_are_configuration_errors(
    key: str, entry: str
) -> None:
    with pytest.raises(ValueError, match=key):
        Policy.model_validate({"allow": {key: [entry]}})


@pytest.mark.parametrize(
    ("rule", "email"),
    [
        pytest.param({"domains": ["strasse.de"]}, "eve@straße.de", id="domain"),
        pytest.param({"emails": ["admin@strasse.de"]}, "admin@straße.de", id="email"),
    ],
)
def test_case_folding_never_merges_distinct_addresses(rule: dict[str, Any], email: str) -> None:
    assert decide(allow(**rule), with_email(email)) == DENY_MALFORMED  # non-ASCII: no address


def test_email_and_domain_rules_read_email_not_preferred_username() -> None:
    identity = replace(NOBODY, email=None, preferred_username="alice@contoso.com")
    assert decide(allow(domains=["contoso.com"]), identity) == DENY_NO_RULE
    assert decide(allow(emails=["alice@contoso.com"]), identity) == DENY_NO_RULE


def test_one_matching_condition_is_enough() -> None:
    policy = allow(roles=["admin"], groups=["nope"], tenants=["tid-other"], domains=["contoso.com"])
    assert decide(policy, ALICE) == Decision(True, "domain", "allow")
    assert decide(policy, replace(ALICE, email="alice@fabrikam.com")) == DENY_NO_RULE


def test_model_validate_builds_the_same_policy() -> None:
    policy = Policy.model_validate({"allow": {"roles": ["reader"], "domains": ["contoso.com"]}})
    assert decide(policy, ALICE) == Decision(True, "role", "allow")
    assert decide(policy, NOBODY) == DENY_NO_RULE


# --- property: deny unless a rule allows ---------------------------------------------------

texts = st.text(max_size=12)
labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
domains_ = st.lists(labels, min_size=1, max_size=3).map(".".join)
locals_ = st.from_regex(r"[A-Za-z0-9._%+-]{1,10}", fullmatch=True)
emailish = st.builds(lambda local, domain: f"{local}@{domain}", texts | locals_, texts | domains_)
identities = st.builds(
    Identity,
    subject=texts,
    tid=texts,
    oid=texts,
    name=st.none() | texts,
    email=st.none() | texts | emailish,
    preferred_username=st.none() | texts | emailish,
    roles=st.lists(texts, max_size=4).map(tuple),
    groups=st.lists(texts, max_size=4).map(tuple),
)
entries = st.lists(texts, max_size=4)


def reference_domain(text: str) -> str | None:
    """An independent strict reading: exactly one ``@``, a local part of dot-separated atoms
    (RFC 5322 atext without ``%``), a domain of LDH labels; the domain, lower-cased."""
    if text.count("@") != 1:
        return None
    local, domain = text.split("@")
    atext = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$&'*+/=?^_`{|}~-")
    if len(local) > 64 or any(not atom or set(atom) - atext for atom in local.split(".")):
        return None
    ldh = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")
    for label in domain.split("."):
        if not 0 < len(label) <= 63 or set(label) - ldh or label[0] == "-" or label[-1] == "-":
            return None
    return domain.lower() if len(domain) <= 253 else None


# Random text against random domains, and near misses of addresses in the rule's domain.
near_misses = domains_.flatmap(
    lambda domain: st.tuples(
        st.builds(
            lambda prefix, local, suffix: f"{prefix}{local}@{domain}{suffix}",
            st.sampled_from(["", "x@", '"', "%", " "]),
            texts | locals_,
            st.sampled_from(["", ".", "@x.test", " ", "\x00", "\n", "%"]),
        ),
        st.just(domain),
    )
)


@given(st.tuples(st.text(max_size=40) | emailish, domains_) | near_misses)
def test_a_domain_rule_admits_only_what_a_strict_parser_places_in_that_domain(
    case: tuple[str, str],
) -> None:
    email, domain = case
    decision = decide(allow(domains=[domain]), with_email(email))
    if decision.allow:
        assert reference_domain(email) == domain
    elif reference_domain(email) == domain:
        raise AssertionError(f"{email!r} is in {domain!r} but was refused: {decision}")


@given(identities, entries, entries, entries, st.lists(emailish, max_size=3), st.lists(domains_))
def test_a_rule_disjoint_from_the_identity_denies(
    identity: Identity,
    roles: list[str],
    groups: list[str],
    tenants: list[str],
    emails: list[str],
    domains: list[str],
) -> None:
    email = (identity.email or "").lower()
    rule = Allow(
        roles=[r for r in roles if r not in identity.roles],
        groups=[g for g in groups if g not in identity.groups],
        tenants=[t for t in tenants if t != identity.tid],
        emails=[e for e in emails if reference_domain(e) and e.lower() != email],
        domains=[d for d in domains if d != reference_domain(email)],
        authenticated=False,
    )
    decision = decide(Policy(allow=rule), identity)
    assert not decision.allow
    assert decision in (DENY_NO_RULE, DENY_MALFORMED)
    assert decide(Policy(allow=rule), None) == DENY_ANONYMOUS


@given(identities)
def test_a_rule_naming_one_of_the_identitys_values_allows(identity: Identity) -> None:
    for value in identity.roles:
        assert decide(allow(roles=[value]), identity) == Decision(True, "role", "allow")
    for value in identity.groups:
        assert decide(allow(groups=[value]), identity) == Decision(True, "group", "allow")
    assert decide(allow(tenants=[identity.tid]), identity) == Decision(True, "tenant", "allow")
