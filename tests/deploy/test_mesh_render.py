"""`iap mesh render`: the Istio resources that make the mesh trust and enforce iap's tokens.

Every document must validate against the Istio CRD schemas in ``../shared/schemas/`` (made
strict by adding ``additionalProperties: false``, as the schemas' README says), and the
operations of each AuthorizationPolicy must match exactly the requests that iap's own route
table sends to that route.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from iap import cli, config
from iap.certs import INGRESS_CREDENTIAL_NAME, ingress_secret_manifest
from iap.domain.headers import identity_headers
from iap.domain.routing import RouteTable
from iap.errors import ConfigError
from iap.mesh.client import FORWARDED_HEADERS
from iap.mesh_render import DEFAULT_SELECTOR, policy_name, render
from iap.mesh_render.parts import PARTS, parse_parts, render_mesh
from iap.mesh_render.wiring import Wiring
from iap.model import Identity
from tests.deploy.istio_crds import Schemas, load_schemas, schema_errors

Doc = dict[str, Any]

ISSUER = "https://edge.contoso.com/.iap"
TENANT = "11111111-1111-1111-1111-111111111111"
FROM_IAP = [{"source": {"requestPrincipals": [f"{ISSUER}/*"]}}]

ROUTES: list[Doc] = [
    {"name": "home", "policy": {"public": True}},
    {
        "name": "orders",
        "match": {"host": "api.contoso.com", "path_prefix": "/orders/", "methods": ["post", "GET"]},
        "audience": "orders-api",
        "policy": {"allow": {"roles": ["staff", "admin"]}},
    },
    {
        "name": "partners",
        "match": {"path_prefix": "/partners/"},
        "policy": {
            "allow": {
                "tenants": ["t2", "t1"],
                "emails": ["bob@fabrikam.com"],
                "domains": ["@contoso.com"],
            }
        },
    },
    {"name": "me", "match": {"path_prefix": "/me/"}, "policy": {"allow": {"authenticated": True}}},
    {
        "name": "admins",
        "match": {"path_prefix": "/admin/"},
        "policy": {"allow": {"groups": ["0c1f-admins"]}},
    },
]


@pytest.fixture(autouse=True)
def _no_secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IAP_OIDC_CLIENT_SECRET", raising=False)
    monkeypatch.delenv("IAP_SESSION_KEYS", raising=False)


def write_config(directory: Path, routes: list[Doc], **overrides: Any) -> Path:
    """An iap.yaml with sign-in; ``tokens.keys_dir`` does not exist: render never reads it."""
    (directory / "client-secret").write_text("not-used\n")
    (directory / "session-keys").write_text("not-used\n")
    document: Doc = {
        "public_url": "https://edge.contoso.com",
        "admin": {"address": "0.0.0.0:9090"},
        "oidc": {
            "issuer": f"https://login.microsoftonline.com/{TENANT}/v2.0",
            "allowed_tenants": [TENANT],
            "client_id": "edge",
            "client_secret_file": str(directory / "client-secret"),
        },
        "session": {"keys_file": str(directory / "session-keys")},
        "tokens": {"issuer": ISSUER, "keys_dir": str(directory / "no-keys-here")},
        "routes": [
            {"upstream": "https://istio-ingressgateway.istio-system.svc:443"} | r for r in routes
        ],
    }
    document.update(overrides)
    path = directory / "iap.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def rendered(
    directory: Path, routes: list[Doc] = ROUTES, **overrides: Any
) -> tuple[list[Doc], list[str]]:
    cfg = config.load(write_config(directory, routes, **overrides))
    return render(cfg, namespace="istio-system", selector=DEFAULT_SELECTOR, jwks_uri=None)


def policy(documents: list[Doc], route: str) -> Doc:
    found = [
        d
        for d in documents
        if d["kind"] == "AuthorizationPolicy" and d["metadata"]["name"] == f"iap-{route}"
    ]
    assert len(found) == 1, f"expected one policy iap-{route}"
    spec: Doc = found[0]["spec"]
    return spec


def token_when(audience: str) -> list[Doc]:
    return [
        {"key": "request.auth.claims[iss]", "values": [ISSUER]},
        {"key": "request.auth.claims[aud]", "values": [audience]},
    ]


# ---------------------------------------------------------------- Istio CRD schemas


@pytest.fixture(scope="module")
def crd_schemas() -> Schemas:
    return load_schemas()


def test_every_document_validates_against_the_istio_crds(
    tmp_path: Path, crd_schemas: Schemas
) -> None:
    documents, _ = rendered(tmp_path)
    assert [d["kind"] for d in documents] == ["RequestAuthentication"] + [
        "AuthorizationPolicy"
    ] * len(ROUTES)
    for document in documents:
        where = f"{document['kind']}/{document['metadata']['name']}"
        assert schema_errors(crd_schemas, document) == [], where


def test_the_strict_schemas_catch_a_misspelt_field(tmp_path: Path, crd_schemas: Schemas) -> None:
    documents, _ = rendered(tmp_path)
    rule = documents[0]["spec"]["jwtRules"][0]
    rule["forwardOriginalTokens"] = rule.pop("forwardOriginalToken")
    assert schema_errors(crd_schemas, documents[0])


# ---------------------------------------------------------------- RequestAuthentication


def test_request_authentication_trusts_the_minted_tokens(tmp_path: Path) -> None:
    documents, _ = rendered(tmp_path)
    authn = documents[0]
    assert authn["apiVersion"] == "security.istio.io/v1"
    assert authn["kind"] == "RequestAuthentication"
    assert authn["metadata"]["name"] == "iap"
    assert authn["metadata"]["namespace"] == "istio-system"
    assert authn["spec"]["selector"] == {"matchLabels": {"istio": "ingressgateway"}}
    assert authn["spec"]["jwtRules"] == [
        {
            "issuer": ISSUER,
            "jwksUri": "http://iap-admin.iap.svc.cluster.local:9090/jwks.json",
            # route.audience, else the route name: what iap mints (and exchanges) for
            "audiences": ["admins", "home", "me", "orders-api", "partners"],
            "forwardOriginalToken": True,
            "fromHeaders": [{"name": "Authorization", "prefix": "Bearer "}],
        }
    ]


def test_a_custom_token_header_carries_the_bare_token(tmp_path: Path) -> None:
    tokens = {"issuer": ISSUER, "keys_dir": str(tmp_path / "keys"), "header": "X-IAP-Token"}
    documents, _ = rendered(tmp_path, tokens=tokens)
    assert documents[0]["spec"]["jwtRules"][0]["fromHeaders"] == [{"name": "x-iap-token"}]


def test_namespace_selector_and_jwks_uri_are_options(tmp_path: Path) -> None:
    cfg = config.load(write_config(tmp_path, ROUTES))
    selector = {"app": "istio-ingressgateway", "tier": "edge"}
    documents, _ = render(
        cfg, namespace="gateways", selector=selector, jwks_uri="https://keys.example/jwks.json"
    )
    for document in documents:
        assert document["metadata"]["namespace"] == "gateways"
        assert document["spec"]["selector"] == {"matchLabels": selector}
    assert documents[0]["spec"]["jwtRules"][0]["jwksUri"] == "https://keys.example/jwks.json"


@pytest.mark.parametrize("address", ["127.0.0.1:9191", "localhost:9191", "[::1]:9191"])
def test_a_loopback_admin_listener_is_a_warning_unless_jwks_uri_is_given(
    tmp_path: Path, address: str
) -> None:
    cfg = config.load(write_config(tmp_path, ROUTES, admin={"address": address}))
    documents, warnings = render(
        cfg, namespace="istio-system", selector=DEFAULT_SELECTOR, jwks_uri=None
    )
    assert documents[0]["spec"]["jwtRules"][0]["jwksUri"].endswith(":9191/jwks.json")
    assert [w for w in warnings if w.startswith("admin.address:")]
    _, warnings = render(
        cfg, namespace="istio-system", selector=DEFAULT_SELECTOR, jwks_uri="http://k/jwks.json"
    )
    assert not [w for w in warnings if w.startswith("admin.address:")]


# ---------------------------------------------------------------- AuthorizationPolicies


def test_a_public_route_asks_for_no_token(tmp_path: Path) -> None:
    """Istio denies what no ALLOW policy of the gateway matches: a public route needs one."""
    spec = policy(rendered(tmp_path)[0], "home")
    assert spec["action"] == "ALLOW"
    assert spec["selector"] == {"matchLabels": {"istio": "ingressgateway"}}
    assert [sorted(rule) for rule in spec["rules"]] == [["to"]]
    operations = [entry["operation"] for entry in spec["rules"][0]["to"]]
    assert all(op["paths"] == ["/*"] for op in operations)
    # Longer prefixes belong to the routes iap sends them to, with their own policies.
    assert all({"/me/*", "/admin/*", "/partners/*"} <= set(op["notPaths"]) for op in operations)


def test_a_roles_route(tmp_path: Path) -> None:
    spec = policy(rendered(tmp_path)[0], "orders")
    assert spec["rules"] == [
        {
            "from": FROM_IAP,
            "to": [
                {
                    "operation": {
                        "hosts": [
                            "api.contoso.com",
                            "api.contoso.com.",
                            "api.contoso.com.:*",
                            "api.contoso.com:*",
                        ],
                        "methods": ["GET", "POST"],
                        "paths": ["/orders/*"],
                    }
                }
            ],
            "when": [
                *token_when("orders-api"),
                {"key": "request.auth.claims[roles]", "values": ["admin", "staff"]},
            ],
        }
    ]


def test_tenants_and_emails_are_separate_rules(tmp_path: Path) -> None:
    """iap ORs the allow conditions; Istio ORs rules and ANDs the entries of a rule."""
    spec = policy(rendered(tmp_path)[0], "partners")
    to = [{"operation": {"paths": ["/partners/*"]}}]
    assert spec["rules"] == [
        {
            "from": FROM_IAP,
            "to": to,
            "when": [
                *token_when("partners"),
                {"key": "request.auth.claims[tid]", "values": ["t1", "t2"]},
            ],
        },
        {
            "from": FROM_IAP,
            "to": to,
            "when": [
                *token_when("partners"),
                {
                    "key": "request.auth.claims[email]",
                    "values": ["*@contoso.com", "bob@fabrikam.com"],
                },
            ],
        },
    ]


def test_an_authenticated_route_asks_for_a_token_only(tmp_path: Path) -> None:
    routes = [
        {
            "name": "me",
            "match": {"path_prefix": "/me/"},
            "policy": {"allow": {"authenticated": True, "roles": ["x"], "groups": ["g"]}},
        }
    ]
    documents, warnings = rendered(tmp_path, routes)
    assert policy(documents, "me")["rules"] == [
        {"from": FROM_IAP, "to": [{"operation": {"paths": ["/me/*"]}}], "when": token_when("me")}
    ]
    assert warnings == []  # `authenticated` makes the groups redundant: nothing is lost


def test_a_groups_route_warns_and_the_mesh_allows_nothing(tmp_path: Path) -> None:
    documents, warnings = rendered(tmp_path)
    assert policy(documents, "admins")["rules"] == []
    assert warnings == [
        "routes[4].policy.allow.groups (route admins): not enforced in the mesh: minted tokens "
        "carry no groups claim; map the groups to roles in tokens.roles and allow those roles",
        "routes[4] (route admins): nothing else to check in the mesh: it refuses every request",
    ]


def test_groups_beside_roles_keep_the_roles(tmp_path: Path) -> None:
    routes = [{"name": "ops", "policy": {"allow": {"roles": ["ops"], "groups": ["g"]}}}]
    documents, warnings = rendered(tmp_path, routes)
    rules = policy(documents, "ops")["rules"]
    assert [rule["when"][-1] for rule in rules] == [
        {"key": "request.auth.claims[roles]", "values": ["ops"]}
    ]
    assert [w.split(":")[0] for w in warnings] == ["routes[0].policy.allow.groups (route ops)"]


def test_claims_are_not_enforced_either(tmp_path: Path) -> None:
    """`iap check` refuses allow.claims today; if a build accepts them, render must warn."""
    document = yaml.safe_load(write_config(tmp_path, ROUTES[:1]).read_text(encoding="utf-8"))
    document["routes"][0]["policy"] = {"allow": {"claims": {"dept": ["x"]}}}
    cfg = config.Config.model_validate(document)
    documents, warnings = render(
        cfg, namespace="istio-system", selector=DEFAULT_SELECTOR, jwks_uri=None
    )
    assert policy(documents, "home")["rules"] == []
    assert warnings[0].startswith("routes[0].policy.allow.claims (route home): not enforced")


@pytest.mark.parametrize("closed", [{"allow": {}}, {}])
def test_a_protected_route_without_allow_allows_nothing_quietly(
    tmp_path: Path, closed: Doc
) -> None:
    documents, warnings = rendered(tmp_path, [{"name": "closed", "policy": closed}])
    assert policy(documents, "closed")["rules"] == []
    assert warnings == []  # iap refuses everyone too


def test_a_route_no_request_reaches_allows_nothing(tmp_path: Path) -> None:
    routes = [
        {"name": "first", "match": {"path_prefix": "/a/"}, "policy": {"public": True}},
        {"name": "second", "match": {"path_prefix": "/a/"}, "policy": {"public": True}},
    ]
    documents, warnings = rendered(tmp_path, routes)
    assert policy(documents, "second")["rules"] == []
    assert warnings == [
        "routes[1] (route second): no request reaches this route (routes before it take them all)"
    ]


def test_preserve_host_false_matches_the_upstream_host(tmp_path: Path) -> None:
    routes = [
        {
            "name": "legacy",
            "match": {"host": "old.contoso.com"},
            "preserve_host": False,
            "upstream": "https://legacy.internal:8443",
            "policy": {"public": True},
        }
    ]
    operation = policy(rendered(tmp_path, routes)[0], "legacy")["rules"][0]["to"][0]["operation"]
    assert operation["hosts"][0] == "legacy.internal"


def test_output_is_deterministic_and_shares_nothing(tmp_path: Path) -> None:
    first, _ = rendered(tmp_path)
    second, _ = rendered(tmp_path)
    assert first == second
    text = yaml.safe_dump_all(first)
    assert "&id" not in text
    assert "*id" not in text


@pytest.mark.parametrize(
    ("name", "expected"),
    [("orders", "iap-orders"), ("orders-v2", "iap-orders-v2")],
)
def test_policy_names_are_iap_dash_route(name: str, expected: str) -> None:
    assert policy_name(name) == expected


def test_route_names_that_are_not_dns_labels_get_distinct_valid_names() -> None:
    names = ["Orders", "orders_v2", "orders.v2", "_", "x" * 70]
    rendered_names = [policy_name(name) for name in names]
    assert len(set(rendered_names)) == len(names)
    for name in rendered_names:
        assert len(name) <= 63
        assert name.startswith("iap-")
        assert name.replace("-", "").isalnum()
        assert name == name.lower()
        assert not name.endswith("-")


@pytest.mark.parametrize(
    ("route", "key"),
    [
        ({"policy": {"allow": {"roles": ["*"]}}}, "routes[0].policy.allow.roles"),
        ({"policy": {"allow": {"emails": ["*@x.com"]}}}, "routes[0].policy.allow.emails"),
        ({"match": {"path_prefix": "/a*/"}}, "routes[0].match.path_prefix"),
        ({"match": {"path_prefix": "/{x}/"}}, "routes[0].match.path_prefix"),
        ({"match": {"methods": ["*"]}}, "routes[0].match.methods"),
    ],
)
def test_istio_wildcards_in_values_are_problems(tmp_path: Path, route: Doc, key: str) -> None:
    base: Doc = {"name": "r", "policy": {"public": True}}
    with pytest.raises(ConfigError) as info:
        rendered(tmp_path, [base | route])
    assert [problem.split(":")[0] for problem in info.value.problems] == [key]


def test_tokens_and_the_options_are_checked_together(tmp_path: Path) -> None:
    document = yaml.safe_load(write_config(tmp_path, ROUTES[:1]).read_text(encoding="utf-8"))
    del document["tokens"], document["oidc"], document["session"]
    cfg = config.parse(document)
    with pytest.raises(ConfigError) as info:
        render(cfg, namespace="Bad_NS", selector={"": "x"}, jwks_uri="ftp://k/jwks.json")
    assert [problem.split(":")[0] for problem in info.value.problems] == [
        "--namespace",
        "--selector",
        "--jwks-uri",
        "tokens",
    ]


# ---------------------------------------------------------------- the routing order


def operation_matches(operation: Doc, host: str, path: str, method: str) -> bool:
    """Istio's matching of one operation: strings exact, ``x*`` prefix, ``*x`` suffix, ``*``
    any; hosts compared ignoring case; positive fields ORed inside, all fields ANDed."""

    def one(pattern: str, value: str) -> bool:
        if pattern == "*":
            return True
        if pattern.endswith("*"):
            return value.startswith(pattern[:-1])
        if pattern.startswith("*"):
            return value.endswith(pattern[1:])
        return value == pattern

    values = {"hosts": host.lower(), "paths": path, "methods": method}
    for field, value in values.items():
        if field in operation and not any(
            one(p.lower() if field == "hosts" else p, value) for p in operation[field]
        ):
            return False
        negative = "not" + field[0].upper() + field[1:]
        if negative in operation and any(
            one(p.lower() if field == "hosts" else p, value) for p in operation[negative]
        ):
            return False
    return True


HOSTS = st.sampled_from([None, "a.example", "b.example"])
PREFIXES = st.sampled_from(["/", "/a", "/a/", "/a/b/", "/b/"])
METHODS = st.sampled_from([None, ["GET"], ["POST"], ["GET", "POST"]])
REQUESTS = [
    (host, path, method)
    for host in ("a.example", "A.example:8443", "a.example.", "b.example", "c.example")
    for path in ("/", "/a", "/a/", "/a/b/x", "/b/", "/c")
    for method in ("GET", "POST", "PUT")
]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(HOSTS, PREFIXES, METHODS), min_size=1, max_size=6))
def test_each_request_matches_the_policy_of_the_route_iap_picks(
    specs: list[tuple[str | None, str, list[str] | None]],
) -> None:
    routes = []
    for index, (host, prefix, methods) in enumerate(specs):
        match: Doc = {"path_prefix": prefix} | ({"host": host} if host else {})
        match |= {"methods": methods} if methods else {}
        routes.append(
            {
                "name": f"r{index}",
                "match": match,
                "upstream": "https://gw:443",
                "policy": {"public": True},
            }
        )
    cfg = config.parse(
        {
            "public_url": "https://edge",
            "tokens": {"issuer": ISSUER, "keys_dir": "k"},
            "routes": routes,
        }
    )
    documents, _ = render(
        cfg, namespace="istio-system", selector=DEFAULT_SELECTOR, jwks_uri="http://k"
    )
    table = RouteTable((route.match, route.name) for route in cfg.routes)
    operations = {
        d["metadata"]["name"]: [
            entry["operation"] for rule in d["spec"]["rules"] for entry in rule["to"]
        ]
        for d in documents[1:]
    }
    for host, path, method in REQUESTS:
        picked = table.match(host, path, method)
        matching = {
            name
            for name, ops in operations.items()
            if any(operation_matches(op, host, path, method) for op in ops)
        }
        assert matching == ({f"iap-{picked}"} if picked else set()), (host, path, method)


# ---------------------------------------------------------------- the command


def test_cli_prints_parseable_yaml_and_warnings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, ROUTES)
    argv = ["mesh", "render", "-c", str(path), "--selector", "app=istio-ingressgateway"]
    assert cli.main([*argv, "--namespace", "gateways", "--only", "authz,authn"]) == 0
    captured = capsys.readouterr()
    documents = list(yaml.safe_load_all(captured.out))
    expected, warnings = render(
        config.load(path),
        namespace="gateways",
        selector={"app": "istio-ingressgateway"},
        jwks_uri=None,
    )
    assert documents == expected
    assert captured.out.startswith("---\n")
    assert "&id" not in captured.out
    assert captured.err.splitlines() == [f"iap mesh render: warning: {w}" for w in warnings]
    assert not (tmp_path / "no-keys-here").exists()  # signing keys are never needed


def test_cli_defaults(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, ROUTES[:1])
    jwks = "https://edge.contoso.com/.iap/jwks.json"
    argv = ["mesh", "render", "-c", str(path), "--jwks-uri", jwks, "--only", "authn,authz"]
    assert cli.main(argv) == 0
    documents = list(yaml.safe_load_all(capsys.readouterr().out))
    assert {d["metadata"]["namespace"] for d in documents} == {"istio-system"}
    assert {str(d["spec"]["selector"]) for d in documents} == {
        str({"matchLabels": {"istio": "ingressgateway"}})
    }
    assert documents[0]["spec"]["jwtRules"][0]["jwksUri"] == jwks


def test_cli_exits_2_with_every_config_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    routes = [
        {"name": "a", "policy": {"public": True, "allow": {"roles": ["x"]}}},
        {"name": "a", "policy": {"public": True}, "timeouts": {"read": "soon"}},
    ]
    path = write_config(tmp_path, routes)
    assert cli.main(["mesh", "render", "-c", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    problems = captured.err.splitlines()
    assert len(problems) == 3
    assert all(line.startswith("config error: routes[") for line in problems)


def test_cli_exits_2_without_tokens(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "iap.yaml"
    routes = [{"name": "r", "upstream": "https://gw:443", "policy": {"public": True}}]
    path.write_text(yaml.safe_dump({"public_url": "https://edge", "routes": routes}))
    assert cli.main(["mesh", "render", "-c", str(path)]) == 2
    assert capsys.readouterr().err.startswith("config error: tokens: required by `iap mesh render`")


@pytest.mark.parametrize(
    "argv",
    [
        ["mesh", "render"],
        ["mesh", "render", "-c", "x.yaml", "--selector", "no-equals-sign"],
        ["mesh"],
    ],
)
def test_cli_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_list_rules_compile_to_one_istio_rule_each_narrowed_by_methods_and_paths(
    tmp_path: Path, crd_schemas: Schemas
) -> None:
    """A rule is an AND: its roles and its methods and paths meet in one Istio rule. A rule
    with a condition the mesh cannot check is left out whole; deny rules become a DENY
    policy, but one the mesh cannot check is left out and warned."""
    ops = {
        "name": "ops",
        "match": {"path_prefix": "/ops/"},
        "policy": {
            "allow": [
                {"roles": ["admin"]},
                {"roles": ["staff"], "methods": ["GET"], "paths": ["/ops/reports/"]},
                {"roles": ["staff"], "source": ["10.0.0.0/8"]},
            ],
            "deny": [
                {"paths": ["/ops/secret/"]},
                {"tenants": ["t-banned"], "methods": ["DELETE"]},
                {"source": ["10.0.0.0/8"]},
            ],
        },
    }
    documents, warnings = rendered(tmp_path, [ops])
    spec = policy(documents, "ops")
    assert [rule["to"] for rule in spec["rules"]] == [
        [{"operation": {"paths": ["/ops/*"]}}],
        [{"operation": {"methods": ["GET"], "paths": ["/ops/reports/*"]}}],
    ]
    assert [rule["when"][2:] for rule in spec["rules"]] == [
        [{"key": "request.auth.claims[roles]", "values": ["admin"]}],
        [{"key": "request.auth.claims[roles]", "values": ["staff"]}],
    ]
    assert any("policy.allow[2]" in w and "not enforced in the mesh" in w for w in warnings)
    [deny] = [
        d["spec"]
        for d in documents
        if d["kind"] == "AuthorizationPolicy" and d["metadata"]["name"] == "iap-ops-deny"
    ]
    assert deny["action"] == "DENY"
    assert [rule["to"] for rule in deny["rules"]] == [
        [{"operation": {"paths": ["/ops/secret/*"]}}],
        [{"operation": {"methods": ["DELETE"], "paths": ["/ops/*"]}}],
    ]
    assert deny["rules"][1]["when"] == [{"key": "request.auth.claims[tid]", "values": ["t-banned"]}]
    assert "when" not in deny["rules"][0]  # anyone, token or not
    assert any("policy.deny[2]" in w and "not denied in the mesh" in w for w in warnings)
    for document in documents:
        assert schema_errors(crd_schemas, document) == [], document["kind"]


# ---------------------------------------------------------------- the whole wiring (#14)


def wired(directory: Path, routes: list[Doc] = ROUTES, **options: Any) -> list[Doc]:
    cfg = config.load(write_config(directory, routes))
    documents, _ = render_mesh(cfg, Wiring(**options), jwks_uri=None)
    return documents


def kind(documents: list[Doc], name: str) -> list[Doc]:
    return [d for d in documents if d["kind"] == name]


def test_every_part_validates_against_the_istio_crds(tmp_path: Path, crd_schemas: Schemas) -> None:
    documents = wired(tmp_path)
    assert [d["kind"] for d in documents] == [
        "Gateway",
        "VirtualService",
        "VirtualService",
        "PeerAuthentication",
        "RequestAuthentication",
        *["AuthorizationPolicy"] * len(ROUTES),
        "Telemetry",
    ]
    for document in documents:
        where = f"{document['kind']}/{document['metadata']['name']}"
        assert schema_errors(crd_schemas, document) == [], where
        assert document["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "iap-mesh-render"}


@pytest.mark.parametrize(
    ("name", "path", "misspelt"),
    [
        ("Gateway", ["spec", "servers", 0, "tls"], "credentialname"),
        ("VirtualService", ["spec", "http", 0, "match", 0, "uri"], "prefx"),
        ("PeerAuthentication", ["spec", "mtls"], "mod"),
        ("Telemetry", ["spec", "tracing", 0], "customTag"),
    ],
)
def test_the_strict_schemas_catch_a_misspelt_field_of_each_new_kind(
    tmp_path: Path, crd_schemas: Schemas, name: str, path: list[Any], misspelt: str
) -> None:
    document = kind(wired(tmp_path), name)[0]
    node = document
    for step in path:
        node = node[step]
    node[misspelt] = node.pop(next(iter(node)))
    assert schema_errors(crd_schemas, document)


def test_the_gateway_takes_iaps_client_certificate_from_the_dev_secret(tmp_path: Path) -> None:
    (gateway,) = kind(wired(tmp_path), "Gateway")
    secret = yaml.safe_load(ingress_secret_manifest(tls_crt=b"c", tls_key=b"k", ca_crt=b"a"))
    assert gateway["metadata"] == {
        "name": "iap",
        "namespace": secret["metadata"]["namespace"],  # istiod reads the Secret beside it
        "labels": {"app.kubernetes.io/managed-by": "iap-mesh-render"},
    }
    assert gateway["spec"]["selector"] == {"istio": "ingressgateway"}
    (server,) = gateway["spec"]["servers"]
    assert server["tls"] == {
        "mode": "MUTUAL",
        "credentialName": secret["metadata"]["name"],
        "minProtocolVersion": "TLSV1_2",
    }
    assert server["tls"]["credentialName"] == INGRESS_CREDENTIAL_NAME == "iap-ingress-mtls"
    assert server["port"] == {"number": 443, "name": "https", "protocol": "HTTPS"}
    assert server["hosts"] == ["*", "api.contoso.com"]


def destination(host: str, port: int = 80) -> list[Doc]:
    return [{"destination": {"host": host, "port": {"number": port}}}]


def test_a_virtual_service_per_host_in_iaps_order(tmp_path: Path) -> None:
    named, anywhere = kind(wired(tmp_path), "VirtualService")
    assert named["metadata"]["name"] == "iap-api.contoso.com"
    assert named["spec"]["hosts"] == ["api.contoso.com"]
    assert named["spec"]["gateways"] == ["istio-system/iap"]
    # The host's routes first, then the routes for any host, longest prefix first.
    assert [h["name"] for h in named["spec"]["http"]] == [
        "orders",
        "partners",
        "admins",
        "me",
        "home",
    ]
    orders = named["spec"]["http"][0]
    assert orders["match"] == [
        {"uri": {"prefix": "/orders/"}, "method": {"exact": "GET"}},
        {"uri": {"prefix": "/orders/"}, "method": {"exact": "POST"}},
    ]
    assert orders["route"] == destination("orders.default.svc.cluster.local")
    assert anywhere["metadata"]["name"] == "iap"
    assert anywhere["spec"]["hosts"] == ["*"]
    assert [h["name"] for h in anywhere["spec"]["http"]] == ["partners", "admins", "me", "home"]
    assert anywhere["spec"]["http"][-1]["match"] == [{"uri": {"prefix": "/"}}]


def test_peer_authentication_is_strict_for_the_workload_namespace(tmp_path: Path) -> None:
    (peer,) = kind(wired(tmp_path, workloads="shop"), "PeerAuthentication")
    assert peer["metadata"]["namespace"] == "shop"
    assert peer["metadata"]["name"] == "default"
    assert peer["spec"] == {"mtls": {"mode": "STRICT"}}  # no selector: every workload


def test_telemetry_tags_are_iaps_span_keys_read_from_the_headers_iap_sends(
    tmp_path: Path,
) -> None:
    (telemetry,) = kind(wired(tmp_path, sampling=12.5, provider="otel"), "Telemetry")
    (tracing,) = telemetry["spec"]["tracing"]
    assert tracing["providers"] == [{"name": "otel"}]
    assert tracing["randomSamplingPercentage"] == 12.5
    tags = {tag: value["header"]["name"] for tag, value in tracing["customTags"].items()}
    # The headers iap sets upstream: the identity's subject (SPEC §6) and the correlation id.
    caller = Identity("tid:oid", "tid", "oid", None, None, None, ("staff",), ())
    subject = [name for name, value in identity_headers(caller) if value == caller.subject]
    assert [name.lower() for name in subject] == [tags["iap.subject"]]
    assert "X-Correlation-ID".lower() == tags["iap.correlation_id"]
    assert "X-Correlation-ID" in FORWARDED_HEADERS  # and what iap.mesh passes on east-west
    # The tag names are iap's span attribute names (docs/observability.md).
    assert set(tags) == {"iap.correlation_id", "iap.subject"}
    assert all(set(value) == {"header"} for value in tracing["customTags"].values())


def test_options_name_the_gateway_ports_and_destinations(
    tmp_path: Path, crd_schemas: Schemas
) -> None:
    documents = wired(
        tmp_path,
        namespace="edge",
        selector={"app": "gw"},
        gateway="edge-gw",
        port=8443,
        credential="my-mtls",
        workloads="shop",
        destinations={"orders": ("orders-v2.shop.svc.cluster.local", 8080)},
        destination_port=9000,
    )
    (gateway,) = kind(documents, "Gateway")
    assert gateway["metadata"]["name"] == "edge-gw"
    assert gateway["spec"]["selector"] == {"app": "gw"}
    assert gateway["spec"]["servers"][0]["port"]["number"] == 8443
    assert gateway["spec"]["servers"][0]["tls"]["credentialName"] == "my-mtls"
    named = kind(documents, "VirtualService")[0]
    assert named["spec"]["gateways"] == ["edge/edge-gw"]
    routes = {h["name"]: h["route"] for h in named["spec"]["http"]}
    assert routes["orders"] == destination("orders-v2.shop.svc.cluster.local", 8080)
    assert routes["home"] == destination("home.shop.svc.cluster.local", 9000)
    for document in documents:
        assert schema_errors(crd_schemas, document) == []


VS_HOSTS = st.sampled_from([None, "a.example", "b.example"])


def istio_route(services: list[Doc], host: str, path: str, method: str) -> str | None:
    """Istio's choice: the VirtualService of the host (port and case aside), else ``*``;
    then the first http entry with a matching prefix and method."""
    bare = host.lower().rpartition(":")[0] if ":" in host else host.lower()
    chosen = [s for s in services if s["spec"]["hosts"] == [bare]] or [
        s for s in services if s["spec"]["hosts"] == ["*"]
    ]
    for entry in chosen[0]["spec"]["http"] if chosen else []:
        for match in entry["match"]:
            if (
                path.startswith(match["uri"]["prefix"])
                and match.get("method", {}).get("exact", method) == method
            ):
                return str(entry["name"])
    return None


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(VS_HOSTS, PREFIXES, METHODS), min_size=1, max_size=6))
def test_each_request_reaches_the_route_iap_picks_through_the_virtual_services(
    specs: list[tuple[str | None, str, list[str] | None]],
) -> None:
    routes = []
    for index, (host, prefix, methods) in enumerate(specs):
        match: Doc = {"path_prefix": prefix} | ({"host": host} if host else {})
        match |= {"methods": methods} if methods else {}
        routes.append(
            {
                "name": f"r{index}",
                "match": match,
                "upstream": "https://gw:443",
                "policy": {"public": True},
            }
        )
    cfg = config.parse({"public_url": "https://edge", "routes": routes})
    documents, _ = render_mesh(cfg, Wiring(), parts=["virtualservice"])
    table = RouteTable((route.match, route.name) for route in cfg.routes)
    for host, path, method in REQUESTS:
        if host.endswith("."):
            continue  # Envoy keeps a trailing dot unless the mesh strips it
        picked = table.match(host, path, method)
        assert istio_route(documents, host, path, method) == picked, (host, path, method)


def test_only_selects_parts_in_printing_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, ROUTES)
    argv = ["mesh", "render", "-c", str(path), "--only", "telemetry,gateway"]
    assert cli.main(argv) == 0
    assert [d["kind"] for d in yaml.safe_load_all(capsys.readouterr().out)] == [
        "Gateway",
        "Telemetry",
    ]
    assert parse_parts("authz, virtualservice") == ("virtualservice", "authz")
    assert cli.main(["mesh", "render", "-c", str(path)]) == 0
    kinds = {d["kind"] for d in yaml.safe_load_all(capsys.readouterr().out)}
    assert len(kinds) == len(PARTS)


@pytest.mark.parametrize("only", ["gateway,authx", "", "gateway,,telemetry"])
def test_an_unknown_part_is_a_usage_error_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], only: str
) -> None:
    path = write_config(tmp_path, ROUTES)
    with pytest.raises(SystemExit) as info:
        cli.main(["mesh", "render", "-c", str(path), "--only", only])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --only: unknown part" in err
    assert "'authx'" in err if "authx" in only else "expected a comma-separated list" in err


def test_the_wiring_needs_no_tokens_but_the_policies_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "iap.yaml"
    routes = [{"name": "r", "upstream": "https://gw:443", "policy": {"public": True}}]
    path.write_text(yaml.safe_dump({"public_url": "https://edge", "routes": routes}))
    wiring = "gateway,virtualservice,peerauthentication,telemetry"
    assert cli.main(["mesh", "render", "-c", str(path), "--only", wiring]) == 0
    assert len(list(yaml.safe_load_all(capsys.readouterr().out))) == 4
    for part in ("authn", "authz"):
        assert cli.main(["mesh", "render", "-c", str(path), "--only", f"gateway,{part}"]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err.startswith("config error: tokens: required by `iap mesh render`")


@pytest.mark.parametrize(
    ("route", "field"),
    [
        ({"match": {"host": "-dash.example"}}, "routes[0].match.host"),
        ({"match": {"host": "a..b.example"}}, "routes[0].match.host"),
        ({"match": {"host": f"{'x' * 64}.example"}}, "routes[0].match.host"),
        ({"match": {"host": "10.1.2.3"}, "name": "r"}, None),  # an IP is a DNS-name-like label
        (
            {"preserve_host": False, "upstream": "https://[2001:db8::1]:443"},
            "routes[0].upstream",
        ),
        ({"match": {"path_prefix": "/a?b"}}, "routes[0].match.path_prefix"),
        ({"match": {"path_prefix": "/a#b"}}, "routes[0].match.path_prefix"),
        ({"match": {"path_prefix": "/caf\u00e9/"}}, "routes[0].match.path_prefix"),
        ({"match": {"path_prefix": "/a b/"}}, "routes[0].match.path_prefix"),
        ({"name": "Orders_API"}, "routes[0].name"),
    ],
)
def test_what_a_gateway_cannot_express_names_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], route: Doc, field: str | None
) -> None:
    base: Doc = {"name": "r", "policy": {"public": True}}
    path = write_config(tmp_path, [base | route])
    code = cli.main(["mesh", "render", "-c", str(path), "--only", "gateway,virtualservice"])
    captured = capsys.readouterr()
    if field is None:
        assert code == 0
        return
    assert code == 2
    assert captured.out == ""
    assert [line.split(": ")[1] for line in captured.err.splitlines()] == [field]
    # The policies alone do not need a DNS host or a Service name.
    if field != "routes[0].match.path_prefix":
        assert cli.main(["mesh", "render", "-c", str(path), "--only", "authz"]) == 0


def test_a_route_name_that_is_not_a_service_takes_a_destination(tmp_path: Path) -> None:
    routes = [{"name": "Orders_API", "policy": {"public": True}}]
    documents = wired(tmp_path, routes, destinations={"Orders_API": ("orders.shop.svc", 8080)})
    (service,) = kind(documents, "VirtualService")
    assert service["spec"]["http"][0]["route"] == destination("orders.shop.svc", 8080)


@pytest.mark.parametrize(
    ("flags", "flag"),
    [
        (["--sampling", "100.5"], "--sampling"),
        (["--sampling", "-1"], "--sampling"),
        (["--workload-namespace", "Shop"], "--workload-namespace"),
        (["--workload-namespace", "shop.prod"], "--workload-namespace"),
        (["--gateway-name", "edge_gw"], "--gateway-name"),
        (["--credential-name", "My Secret"], "--credential-name"),
        (["--destination", "nosuch=svc.ns:80"], "--destination nosuch=..."),
        (["--destination", "home=bad_host:80"], "--destination home=..."),
        (["--tracing-provider", ""], "--tracing-provider"),
    ],
)
def test_bad_wiring_options_exit_2_naming_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], flag: str
) -> None:
    path = write_config(tmp_path, ROUTES)
    assert cli.main(["mesh", "render", "-c", str(path), *flags]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert [
        line.removeprefix("config error: ").split(":")[0] for line in captured.err.splitlines()
    ] == [flag]


@pytest.mark.parametrize(
    "flags",
    [["--destination", "home"], ["--destination", "home=svc:port"], ["--gateway-port", "0"]],
)
def test_malformed_wiring_options_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["mesh", "render", "-c", str(write_config(tmp_path, ROUTES)), *flags])
    assert info.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_help_shows_the_parts_and_the_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["mesh", "render", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for part in PARTS:
        assert part in text
    for default in (  # the form every subcommand's --help uses (tests/unit/test_cli_help.py)
        "(default: iap)",
        "(default: 443)",
        "(default: iap-ingress-mtls)",
        "(default: default)",
        "(default: 80)",
        "(default: 100.0)",
        "(default: jaeger)",
    ):
        assert default in text


def test_out_dir_writes_a_kustomize_component(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, ROUTES)
    out = tmp_path / "istio"
    out.mkdir()
    (out / "authn.yaml").write_text("stale\n")
    argv = ["mesh", "render", "-c", str(path), "--only"]
    assert cli.main([*argv, "gateway,authz", "--out-dir", str(out)]) == 0
    assert capsys.readouterr().out.split() == [
        str(out / name) for name in ("gateway.yaml", "authz.yaml", "kustomization.yaml")
    ]
    names = sorted(p.name for p in out.iterdir())
    assert names == ["authn.yaml", "authz.yaml", "gateway.yaml", "kustomization.yaml"]
    assert (out / "authn.yaml").read_text() == "stale\n"  # authn was not selected
    kustomization = yaml.safe_load((out / "kustomization.yaml").read_text())
    assert kustomization == {
        "apiVersion": "kustomize.config.k8s.io/v1alpha1",
        "kind": "Component",
        "resources": ["gateway.yaml", "authz.yaml"],
    }
    assert cli.main([*argv, "gateway,authz"]) == 0
    printed = list(yaml.safe_load_all(capsys.readouterr().out))
    written = [
        document
        for name in kustomization["resources"]
        for document in yaml.safe_load_all((out / name).read_text())
    ]
    assert written == printed


def test_iap_istio_crds_names_the_schema_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("IAP_ISTIO_CRDS", str(tmp_path / "absent.yaml"))
    with pytest.raises(pytest.skip.Exception) as info:
        load_schemas()
    assert f"{tmp_path / 'absent.yaml'}: set IAP_ISTIO_CRDS" in str(info.value)
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "spec": {
            "group": "networking.istio.io",
            "names": {"kind": "Gateway"},
            "versions": [
                {
                    "name": "v1",
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {"type": "object", "properties": {"servers": {}}}
                            },
                        }
                    },
                }
            ],
        },
    }
    (tmp_path / "crds.yaml").write_text(yaml.safe_dump(crd))
    monkeypatch.setenv("IAP_ISTIO_CRDS", str(tmp_path / "crds.yaml"))
    schemas = load_schemas()
    assert list(schemas) == [("networking.istio.io/v1", "Gateway")]
    document = {"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "spec": {"servers": []}}
    assert schema_errors(schemas, document) == []
    document["spec"]["server"] = document["spec"].pop("servers")
    assert schema_errors(schemas, document)  # strict: additionalProperties false below the root
