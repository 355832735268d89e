"""iap.config: every problem at once, each naming its key; nothing echoed."""

from __future__ import annotations

import copy
import ipaddress
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from iap import config
from iap.environment import Environment
from iap.errors import ConfigError

CANARY = "s3cr3t-canary-value"


@pytest.fixture(autouse=True)
def _no_secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IAP_OIDC_CLIENT_SECRET", raising=False)


def minimal(**overrides: Any) -> dict[str, Any]:
    route: dict[str, Any] = {
        "name": "app",
        "upstream": "http://127.0.0.1:8081",
        "policy": {"public": True},
    }
    route.update(overrides.pop("route", {}))
    document: dict[str, Any] = {"public_url": "https://edge.contoso.com", "routes": [route]}
    document.update(overrides)
    return document


def problems_of(document: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config.parse(document)
    assert info.value.problems, "a ConfigError must carry at least one problem"
    return info.value.problems


# ---------------------------------------------------------------- valid documents


def test_minimal_document_parses_with_defaults() -> None:
    parsed = config.parse(minimal())
    assert parsed.public_url == "https://edge.contoso.com"
    assert str(parsed.listen.address) == "0.0.0.0:8443"
    assert str(parsed.admin.address) == "127.0.0.1:9090"
    assert parsed.trusted_proxies == []
    route = parsed.routes[0]
    assert route.name == "app"
    assert route.policy.public is True
    assert route.match.path_prefix == "/"
    assert route.timeouts.connect == 2.0
    assert route.max_body == 10 * 2**20


def test_spec_shaped_route_and_proxies() -> None:
    parsed = config.parse(
        minimal(
            trusted_proxies=["10.0.0.0/8", "2001:db8::/32"],
            listen={"address": "[::1]:8443"},
            identity_headers=["X_Remote_User", "X-Email"],
            route={
                "match": {
                    "host": "API.Contoso.com",
                    "path_prefix": "/orders/",
                    "methods": ["get", "Post"],
                },
                "rate_limit": {"requests": 100, "per": "1m", "burst": 20},
                "timeouts": {"connect": "250ms", "read": "30s"},
            },
        )
    )
    assert parsed.trusted_proxies == [
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("2001:db8::/32"),
    ]
    assert parsed.listen.address.host == "::1"
    assert parsed.listen.address.port == 8443
    assert parsed.identity_headers == ["x-remote-user", "x-email"]
    match = parsed.routes[0].match
    assert match.host == "api.contoso.com"
    assert match.methods == frozenset({"GET", "POST"})
    assert parsed.routes[0].rate_limit is not None
    assert parsed.routes[0].rate_limit.per == 60.0
    assert parsed.routes[0].timeouts.connect == 0.25


def test_config_is_immutable() -> None:
    parsed = config.parse(minimal())
    with pytest.raises(ValidationError, match="frozen"):
        parsed.public_url = "https://other"  # type: ignore[misc]


# ---------------------------------------------------------------- durations and sizes


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("250ms", 0.25),
        ("2s", 2.0),
        ("5m", 300.0),
        ("8h", 28800.0),
        ("1d", 86400.0),
        ("1.5s", 1.5),
        (" 3s ", 3.0),
        (7, 7.0),
        (0.5, 0.5),
        ("12", 12.0),
    ],
)
def test_durations(value: object, seconds: float) -> None:
    parsed = config.parse(minimal(route={"timeouts": {"read": value}}))
    assert parsed.routes[0].timeouts.read == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value", ["", "soon", "5 minutes", "-1s", "1w", "5M", "s", 0, -3, "0s", True]
)
def test_bad_durations(value: object) -> None:
    problems = problems_of(minimal(route={"timeouts": {"read": value}}))
    assert len(problems) == 1
    assert problems[0].startswith("routes[0].timeouts.read: ")


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("10MiB", 10 * 2**20),
        ("200MB", 200 * 10**6),
        ("512KiB", 512 * 1024),
        ("1GiB", 2**30),
        ("2KB", 2000),
        ("100B", 100),
        ("4096", 4096),
        (4096, 4096),
    ],
)
def test_sizes(value: object, size: int) -> None:
    assert config.parse(minimal(route={"max_body": value})).routes[0].max_body == size


@pytest.mark.parametrize("value", ["big", "1.5MiB", "10mib", "-1", 0, -5, "10 TiB", True])
def test_bad_sizes(value: object) -> None:
    problems = problems_of(minimal(route={"max_body": value}))
    assert len(problems) == 1
    assert problems[0].startswith("routes[0].max_body: ")


# ---------------------------------------------------------------- problems


def test_three_independent_errors_are_all_reported_with_their_keys() -> None:
    document = minimal(
        trusted_proxies=["10.0.0.0/8", "not-a-cidr"],
        route={"timeouts": {"connect": "fast"}, "upstrem": "http://typo"},
    )
    problems = problems_of(document)
    assert len(problems) == 3, problems
    assert any(p.startswith("routes[0].timeouts.connect: ") for p in problems)
    assert any(p.startswith("routes[0].upstrem: unknown key") for p in problems)
    assert any(p.startswith("trusted_proxies") and "CIDR" in p for p in problems)


def test_cidr_with_host_bits_set_is_refused() -> None:
    problems = problems_of(minimal(trusted_proxies=["10.0.0.1/8"]))
    assert len(problems) == 1
    assert problems[0].startswith("trusted_proxies")


def test_errors_in_several_routes_name_each_index() -> None:
    document = minimal()
    second = copy.deepcopy(document["routes"][0]) | {"name": "two", "max_body": "huge"}
    third = copy.deepcopy(document["routes"][0]) | {"name": "three", "upstream": "ftp://x"}
    document["routes"] += [second, third]
    assert sorted(problems_of(document)) == [
        "routes[1].max_body: expected a size such as 512KiB, 10MiB or 200MB",
        "routes[2].upstream: expected an absolute http or https URL",
    ]


UNKNOWN_KEY_PLACES = [
    ((), ""),
    (("listen",), "listen"),
    (("listen", "tls"), "listen.tls"),
    (("admin",), "admin"),
    (("limits",), "limits"),
    (("oidc",), "oidc"),
    (("oidc", "client_certificate"), "oidc.client_certificate"),
    (("session",), "session"),
    (("redis",), "redis"),
    (("tokens",), "tokens"),
    (("bearer",), "bearer"),
    (("telemetry",), "telemetry"),
    (("routes", 0), "routes[0]"),
    (("routes", 0, "match"), "routes[0].match"),
    (("routes", 0, "upstream_tls"), "routes[0].upstream_tls"),
    (("routes", 0, "policy"), "routes[0].policy"),
    (("routes", 0, "policy", "allow"), "routes[0].policy.allow"),
    (("routes", 0, "rate_limit"), "routes[0].rate_limit"),
    (("routes", 0, "timeouts"), "routes[0].timeouts"),
    (("routes", 0, "circuit"), "routes[0].circuit"),
]


def _container(document: dict[str, Any], where: tuple[str | int, ...]) -> dict[str, Any]:
    node: Any = document
    for step in where:
        if isinstance(step, str) and step not in node:
            node[step] = {}
        node = node[step]
    assert isinstance(node, dict)
    return node


@pytest.mark.parametrize(("where", "prefix"), UNKNOWN_KEY_PLACES)
def test_unknown_keys_rejected_at_every_level(where: tuple[str | int, ...], prefix: str) -> None:
    document = minimal()
    _container(document, where)["bogus_key"] = CANARY
    problems = problems_of(document)
    expected = f"{prefix}.bogus_key" if prefix else "bogus_key"
    assert f"{expected}: unknown key" in problems, problems
    assert not any(CANARY in problem for problem in problems)


@pytest.mark.parametrize("policy", [{}, {"public": False}, {"allow": {"roles": ["staff"]}}])
def test_non_public_route_without_oidc_is_refused_naming_its_policy(
    policy: dict[str, Any],
) -> None:
    document = minimal()
    document["routes"].append(
        {"name": "orders", "upstream": "http://127.0.0.1:1", "policy": policy}
    )
    problems = problems_of(document)
    assert len(problems) == 1
    assert problems[0].startswith("routes[1].policy: ")
    assert "configure oidc" in problems[0]


def _with_oidc(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    secret = tmp_path / "secret"
    secret.write_text(CANARY)
    keys = tmp_path / "keys"
    keys.write_text("A" * 43 + "\n")
    oidc = {
        "issuer": "https://login.microsoftonline.com/organizations/v2.0",
        "allowed_tenants": ["t1"],
        "client_id": "c1",
        "client_secret_file": str(secret),
    }
    tokens = {"issuer": "https://edge.contoso.com/.iap", "keys_dir": str(tmp_path)}
    return minimal(oidc=oidc, session={"keys_file": str(keys)}, tokens=tokens, **overrides)


def test_protected_routes_parse_with_oidc(tmp_path: Path) -> None:
    policy = {"allow": {"roles": ["staff"], "authenticated": False}}
    parsed = config.parse(_with_oidc(tmp_path, route={"policy": policy}))
    assert parsed.routes[0].policy.allow is not None
    assert parsed.routes[0].policy.allow.roles == ["staff"]
    assert parsed.oidc is not None
    assert parsed.oidc.response_mode == "query"


def test_policy_rules_load_and_each_bad_one_is_named(tmp_path: Path) -> None:
    good = {
        "allow": [
            {"roles": ["admin"]},
            {"roles": ["staff"], "methods": ["get", "HEAD"], "paths": ["/reports/"]},
            {"auth": ["bearer"], "claims": {"azp": ["svc"], "org.unit": ["x"]}},
        ],
        "deny": [{"tenants": ["t"], "paths": ["/admin/"]}, {"source": ["10.0.0.0/8"]}],
    }
    route = config.parse(_with_oidc(tmp_path, route={"policy": good})).routes[0]
    assert route.policy.rules[1].methods == ["GET", "HEAD"]
    assert route.policy.reads_claims
    bad = {
        "allow": [
            {"roles": []},
            {},
            {"auth": ["browser"]},
            {"paths": ["reports/"]},
            {"claims": {"azp": []}},
            {"colour": ["red"]},
        ],
        "deny": [{"source": ["10.0.0.1/8"]}],
    }
    problems = problems_of(_with_oidc(tmp_path, route={"policy": bad}))
    assert [problem.partition(":")[0] for problem in problems] == [
        "routes[0].policy.allow[0].roles",
        "routes[0].policy.allow[1]",
        "routes[0].policy.allow[2].auth[0]",
        "routes[0].policy.allow[3].paths",
        "routes[0].policy.allow[4].claims.azp",
        "routes[0].policy.allow[5].colour",
        "routes[0].policy.deny[0].source",
    ]


def test_the_single_mapping_form_keeps_its_meaning(tmp_path: Path) -> None:
    mapping = {"allow": {"roles": ["admin"], "claims": {"dept": ["x"]}}}
    policy = config.parse(_with_oidc(tmp_path, route={"policy": mapping})).routes[0].policy
    assert isinstance(policy.allow, config.Allow)
    assert policy.rules == ()


def test_oidc_needs_session_keys(tmp_path: Path) -> None:
    document = _with_oidc(tmp_path)
    del document["session"]
    [problem] = problems_of(document)
    assert problem.startswith("session.keys_file: required with oidc")
    environment = Environment.from_mapping({"IAP_SESSION_KEYS": "A" * 43})
    assert config.parse(document, environment).oidc is not None


def test_redis_store_needs_redis(tmp_path: Path) -> None:
    document = _with_oidc(tmp_path)
    document["session"]["store"] = "redis"
    assert problems_of(document) == ["session.store: `redis` needs the redis key (redis.url)"]


@pytest.mark.parametrize(
    ("oidc", "problem"),
    [
        ({"issuer": "https://login.microsoftonline.com/t1"}, "oidc.issuer: expected an Entra"),
        ({"scopes": ["profile"]}, "oidc.scopes: must include openid"),
        ({"response_mode": "fragment"}, "oidc.response_mode: "),
    ],
)
def test_bad_oidc_keys(tmp_path: Path, oidc: dict[str, Any], problem: str) -> None:
    document = _with_oidc(tmp_path)
    document["oidc"].update(oidc)
    problems = problems_of(document)
    assert len(problems) == 1
    assert problems[0].startswith(problem), problems


def test_route_without_policy_is_refused() -> None:
    document = minimal()
    del document["routes"][0]["policy"]
    problems = problems_of(document)
    assert any(p.startswith("routes[0].policy: ") for p in problems), problems


def test_public_and_allow_together_are_refused() -> None:
    problems = problems_of(minimal(route={"policy": {"public": True, "allow": {"roles": ["a"]}}}))
    assert len(problems) == 1
    assert problems[0].startswith("routes[0].policy: ")


def test_non_public_route_reported_together_with_other_problems() -> None:
    # SPEC §4 `iap check`: print every problem; STYLE: report them together.
    document = minimal(route={"policy": {"allow": {"roles": ["staff"]}}}, bogus=1)
    problems = problems_of(document)
    assert any(p.startswith("bogus: unknown key") for p in problems), problems
    assert any(p.startswith("routes[0].policy: ") for p in problems), problems


def test_duplicate_route_names_are_refused() -> None:
    document = minimal()
    document["routes"].append(copy.deepcopy(document["routes"][0]))
    problems = problems_of(document)
    assert problems == ["routes[1].name: duplicates routes[0].name"]


def test_duplicate_route_problem_names_the_routes_key() -> None:
    document = minimal()
    document["routes"].append(copy.deepcopy(document["routes"][0]))
    problems = problems_of(document)
    assert problems[0].startswith("routes"), problems


def test_no_routes_is_refused() -> None:
    problems = problems_of(minimal(routes=[]))
    assert len(problems) == 1
    assert problems[0].startswith("routes: ")


def test_missing_required_keys_are_named() -> None:
    problems = problems_of({"routes": [{"policy": {"public": True}}]})
    assert {p.split(":")[0] for p in problems} >= {
        "public_url",
        "routes[0].name",
        "routes[0].upstream",
    }


@pytest.mark.parametrize("document", [None, [], "text", 3])
def test_non_mapping_document(document: object) -> None:
    assert problems_of(document) == ["(top level): expected a mapping of keys"]


# ---------------------------------------------------------------- never echo input


def test_problems_never_echo_bad_values() -> None:
    document = minimal(
        public_url=CANARY,
        listen={"address": CANARY},
        trusted_proxies=[CANARY],
        identity_headers=[CANARY + " :"],
        session={"store": CANARY, "lifetime": CANARY},
        telemetry={"otlp_endpoint": f"https://user:{CANARY}@collector", "sample_ratio": CANARY},
        redis={"url": f"redis://:{CANARY}@host/0"},
        route={
            "name": CANARY + "!",
            "upstream": f"http://{CANARY}:x@/",
            "match": {"host": CANARY + "/", "path_prefix": CANARY, "methods": CANARY},
            "timeouts": {"connect": CANARY},
            "max_body": CANARY,
            "rate_limit": {"requests": CANARY, "per": CANARY, "on_store_error": CANARY},
        },
    )
    problems = problems_of(document)
    assert len(problems) >= 15, problems
    for problem in problems:
        assert CANARY not in problem


def test_duplicate_route_name_problem_does_not_echo_the_name() -> None:
    document = minimal(route={"name": CANARY})
    document["routes"].append(copy.deepcopy(document["routes"][0]))
    problems = problems_of(document)
    assert not any(CANARY in problem for problem in problems), problems


def test_secret_file_problems_do_not_echo_secret_contents(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text(CANARY)
    document = minimal(
        oidc={
            "issuer": "https://login.microsoftonline.com/t/v2.0",
            "allowed_tenants": ["t"],
            "client_id": "c",
            "client_secret_file": str(secret),
            "client_certificate": {"cert_file": str(secret), "key_file": str(secret)},
        }
    )
    problems = problems_of(document)
    assert any(p.startswith("oidc: ") and "exactly one" in p for p in problems), problems
    assert not any(CANARY in problem for problem in problems)


# ---------------------------------------------------------------- load


def test_load_reads_yaml(tmp_path: Path) -> None:
    path = tmp_path / "iap.yaml"
    path.write_text(
        "public_url: https://edge.contoso.com\n"
        "routes:\n"
        "  - name: app\n"
        "    upstream: http://127.0.0.1:8081\n"
        "    policy: {public: true}\n"
        "    timeouts: {connect: 250ms}\n"
    )
    parsed = config.load(path)
    assert parsed.routes[0].name == "app"
    assert parsed.routes[0].timeouts.connect == 0.25
    assert config.load(str(path)) == parsed


def test_load_reports_validation_problems(tmp_path: Path) -> None:
    path = tmp_path / "iap.yaml"
    path.write_text("public_url: https://edge\nroutes: []\nlisten: {adress: x}\n")
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert sorted(info.value.problems) == [
        "listen.adress: unknown key",
        "routes: must not be empty",
    ]


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("public_url: https://e\nroutes:\n\t- name: a\n", 3),
        ("public_url: https://e\nroutes: [a, b\nfoo: bar\n", 3),
        (f'a: 1\nb: 2\nc: "{CANARY}\n', 4),
        (f"a: 1\nb: {CANARY}: x\n", 2),
    ],
)
def test_invalid_yaml_reports_a_line(tmp_path: Path, text: str, line: int) -> None:
    path = tmp_path / "iap.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert len(info.value.problems) == 1
    problem = info.value.problems[0]
    assert "not valid YAML" in problem
    assert f"line {line}" in problem
    assert CANARY not in problem


def test_empty_file_is_a_problem(tmp_path: Path) -> None:
    path = tmp_path / "iap.yaml"
    path.write_text("")
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert info.value.problems == ["(top level): expected a mapping of keys"]


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith(f"{path}: cannot read")


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        config.load(tmp_path)
    assert info.value.problems[0].startswith(f"{tmp_path}: cannot read")
