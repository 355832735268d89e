"""iap.domain.policy.decide over the list form of SPEC §5.1: rules are ANDs, the list an OR,
deny rules first; every condition kind; and the evaluator's properties."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iap.config import Policy
from iap.domain.policy import Decision, Facts, decide, explain
from iap.model import Identity

STAFF = Identity(
    subject="t1:o1",
    tid="t1",
    oid="o1",
    name="Sam",
    email="sam@contoso.test",
    preferred_username=None,
    roles=("staff",),
    groups=("g-eng",),
)
SERVICE_CLAIMS = {"azp": "svc-client", "org": {"unit": "billing"}, "tags": ["a", "b"]}


def policy(**document: Any) -> Policy:
    return Policy.model_validate(document)


def facts(identity: Identity | None = STAFF, **changes: Any) -> Facts:
    base = Facts(method="GET", path="/reports/q", identity=identity, auth="session", client="")
    return replace(base, **changes)


ADMINS_READONLY_SERVICE = policy(
    allow=[
        {"roles": ["admin"]},
        {"roles": ["staff"], "methods": ["GET", "HEAD"], "paths": ["/reports/"]},
        {"auth": ["bearer"], "claims": {"azp": ["svc-client"]}, "methods": ["POST"]},
    ],
    deny=[{"tenants": ["t-banned"]}, {"paths": ["/reports/secret/"], "source": ["0.0.0.0/0"]}],
)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, Decision(True, "allow[1]", "allow")),
        ({"method": "POST"}, Decision(False, "no_rule_matched")),  # staff read only
        ({"path": "/orders/"}, Decision(False, "no_rule_matched")),  # outside /reports/
        (
            {"identity": replace(STAFF, roles=("admin",)), "method": "DELETE"},
            Decision(True, "allow[0]", "allow"),
        ),
        (
            {"auth": "bearer", "method": "POST", "claims": SERVICE_CLAIMS},
            Decision(True, "allow[2]", "allow"),
        ),
        (
            {"auth": "session", "method": "POST", "claims": SERVICE_CLAIMS},
            Decision(False, "no_rule_matched"),
        ),
        ({"identity": replace(STAFF, tid="t-banned")}, Decision(False, "deny[0]")),
        (
            {
                "identity": replace(STAFF, roles=("admin",)),
                "path": "/reports/secret/x",
                "client": "10.1.2.3",
            },
            Decision(False, "deny[1]"),
        ),
        ({"identity": None}, Decision(False, "unauthenticated", "sign_in")),
        (
            {"identity": None, "path": "/reports/secret/", "client": "::ffff:10.0.0.1"},
            Decision(False, "deny[1]"),
        ),
    ],
)
def test_the_worked_example(changes: dict[str, Any], expected: Decision) -> None:
    assert decide(ADMINS_READONLY_SERVICE, facts(**changes)) == expected


@pytest.mark.parametrize(
    ("rule", "holds", "fails"),
    [
        ({"authenticated": True}, {}, {"identity": None}),
        ({"roles": ["staff"]}, {}, {"identity": replace(STAFF, roles=())}),
        ({"groups": ["g-eng"]}, {}, {"identity": replace(STAFF, groups=("g-x",))}),
        ({"tenants": ["t1"]}, {}, {"identity": replace(STAFF, tid="t2")}),
        (
            {"emails": ["SAM@contoso.test"]},
            {},
            {"identity": replace(STAFF, email="x@contoso.test")},
        ),
        (
            {"domains": ["contoso.test"]},
            {},
            {"identity": replace(STAFF, email="sam@evil.test@contoso.test")},
        ),
        (
            {"claims": {"org.unit": ["billing"]}},
            {"claims": SERVICE_CLAIMS},
            {"claims": {"org": "billing"}},
        ),
        ({"claims": {"tags": ["b"]}}, {"claims": SERVICE_CLAIMS}, {"claims": {"tags": [["b"]]}}),
        ({"claims": {"level": ["7"]}}, {"claims": {"level": "7"}}, {"claims": {"level": [7]}}),
        ({"claims": {"level": ["7"]}}, {"claims": {"level": ["7"]}}, {"claims": {"level": 7}}),
        (
            {"claims": {"azp": ["svc-client"], "tags": ["z"]}},
            {"claims": {"azp": "svc-client", "tags": "z"}},
            {"claims": SERVICE_CLAIMS},
        ),
        ({"methods": ["get"]}, {}, {"method": "POST"}),
        ({"paths": ["/reports/"]}, {}, {"path": "/reportsX"}),
        ({"auth": ["session"]}, {}, {"auth": "bearer"}),
        ({"source": ["10.0.0.0/8"]}, {"client": "10.9.9.9"}, {"client": "11.0.0.1"}),
        ({"source": ["10.0.0.0/8"]}, {"client": "::ffff:10.0.0.1"}, {"client": "garbage"}),
    ],
)
def test_every_condition_kind(
    rule: dict[str, Any], holds: dict[str, Any], fails: dict[str, Any]
) -> None:
    allow = policy(allow=[rule])
    assert decide(allow, facts(**holds)) == Decision(True, "allow[0]", "allow")
    assert not decide(allow, facts(**{**holds, **fails})).allow
    # the same rule as a deny refuses exactly where it would have allowed
    both = policy(allow=[{"authenticated": True}], deny=[rule])
    assert decide(both, facts(**holds)) == Decision(False, "deny[0]")
    if fails.get("identity", STAFF) is not None:
        assert decide(both, facts(**{**holds, **fails})).allow


def test_a_deny_rule_wins_over_the_single_mapping_form_too() -> None:
    """``deny`` is read first whichever form ``allow`` takes."""
    both = policy(allow={"roles": ["staff"]}, deny=[{"methods": ["DELETE"]}])
    assert decide(both, facts(method="DELETE")) == Decision(False, "deny[0]")
    assert decide(both, facts()) == Decision(True, "role", "allow")


def test_explain_says_which_conditions_failed() -> None:
    reasons = dict(explain(ADMINS_READONLY_SERVICE, facts(method="POST")))
    assert reasons == {
        "deny[0]": ["tenants"],
        "deny[1]": ["paths", "source"],
        "allow[0]": ["roles"],
        "allow[1]": ["methods"],
        "allow[2]": ["claims", "auth"],
    }


# --- properties -----------------------------------------------------------------------

texts = st.sampled_from(["a", "b", "staff", "t1", "", "/x/", "GET"]) | st.text(max_size=6)
identities = st.none() | st.builds(
    Identity,
    subject=texts,
    tid=texts,
    oid=texts,
    name=st.none(),
    email=st.none() | st.sampled_from(["a@b.test", "x@y@b.test", "bad"]),
    preferred_username=st.none(),
    roles=st.lists(texts, max_size=3).map(tuple),
    groups=st.lists(texts, max_size=3).map(tuple),
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=6,
)
any_facts = st.builds(
    Facts,
    method=st.sampled_from(["GET", "POST", "get", ""]),
    path=st.sampled_from(["/", "/x/", "/x/y", "/reports/"]) | st.text(max_size=6),
    identity=identities,
    auth=st.sampled_from([None, "session", "bearer"]),
    client=st.sampled_from(["", "10.0.0.1", "::1", "::ffff:10.0.0.1", "x"]),
    claims=st.dictionaries(st.sampled_from(["azp", "org", "a.b", "a"]), JSON, max_size=3),
)
values = st.lists(st.sampled_from(["a", "b", "staff", "t1"]), min_size=1, max_size=2)
conditions = st.fixed_dictionaries(
    {},
    optional={
        "authenticated": st.just(True),
        "roles": values,
        "groups": values,
        "tenants": values,
        "domains": st.just(["b.test"]),
        "claims": st.dictionaries(st.sampled_from(["azp", "org", "a.b"]), values, min_size=1),
        "methods": st.lists(st.sampled_from(["GET", "POST"]), min_size=1),
        "paths": st.lists(st.sampled_from(["/", "/x/", "/reports/"]), min_size=1),
        "auth": st.lists(st.sampled_from(["session", "bearer"]), min_size=1),
        "source": st.just(["10.0.0.0/8"]),
    },
).filter(bool)
policies = st.builds(
    lambda allow, deny: Policy.model_validate({"allow": allow, "deny": deny}),
    st.lists(conditions, max_size=3),
    st.lists(conditions, max_size=2),
)


@given(policies, any_facts)
def test_no_input_raises_and_equal_facts_decide_equally(policy: Policy, facts: Facts) -> None:
    first = decide(policy, facts)
    assert decide(policy, replace(facts)) == first
    assert first.allow == (first.outcome == "allow")


@given(policies, any_facts)
def test_a_deny_rule_that_holds_always_wins(policy: Policy, facts: Facts) -> None:
    rules = [{"authenticated": True}, *[r.model_dump(exclude_none=True) for r in policy.rules]]
    denied = Policy.model_validate({"allow": rules, "deny": [{"methods": [facts.method or "GET"]}]})
    if facts.method and facts.method == facts.method.upper():  # as iap hands methods over
        assert decide(denied, facts) == Decision(False, "deny[0]")


@given(policies, any_facts)
def test_deny_by_default(policy: Policy, facts: Facts) -> None:
    """A pass needs an allow rule whose every condition holds (read independently)."""
    decision = decide(policy, facts)
    if decision.allow:
        index = int(decision.reason.removeprefix("allow[").removesuffix("]"))
        assert facts.identity is not None
        assert not any(reason for name, reason in explain(policy, facts) if name == decision.reason)
        assert index < len(policy.rules)
    if not policy.rules:
        assert not decision.allow
