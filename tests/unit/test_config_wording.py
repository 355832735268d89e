"""`iap check` speaks iap's words: each problem with its exact message, never pydantic's or
PyYAML's phrasing, a Python type name or the value given."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from iap import config
from iap.environment import Environment
from iap.errors import ConfigError
from tests.unit.test_config import CANARY, minimal, problems_of

LIBRARY_WORDS = ("frozenset", "Input should", "instance of", "Field required", "Path does not")


def routed(**route: Any) -> dict[str, Any]:
    return minimal(route=route)


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        (
            routed(policy={"public": "yes"}),
            "routes[0].policy.public: expected true or false, got a string",
        ),
        (
            routed(policy={"public": 1}),
            "routes[0].policy.public: expected true or false, got a number",
        ),
        (
            routed(match={"methods": "GET"}),
            "routes[0].match.methods: expected a list, got a string",
        ),
        (routed(policy=[1]), "routes[0].policy: expected a mapping of keys, got a list"),
        (routed(name=5), "routes[0].name: expected text, got a number"),
        (
            routed(preserve_host="no"),
            "routes[0].preserve_host: expected true or false, got a string",
        ),
        (minimal(listen=5), "listen: expected a mapping of keys, got a number"),
        (minimal(limits=None), "limits: expected a mapping of keys, got nothing (null)"),
        (
            minimal(limits={"max_headers": "many"}),
            "limits.max_headers: expected a whole number, got a string",
        ),
        (
            minimal(limits={"max_headers": 1.5}),
            "limits.max_headers: expected a whole number, got a fractional number",
        ),
        (minimal(limits={"max_headers": 0}), "limits.max_headers: must be greater than 0"),
        (minimal(limits={"max_headers": 5000}), "limits.max_headers: must be at most 1000"),
        (minimal(routes="x"), "routes: expected a list, got a string"),
        (minimal(routes=[]), "routes: must not be empty"),
        (
            minimal(telemetry={"protocol": "udp"}),
            "telemetry.protocol: expected http/protobuf or grpc",
        ),
        ({"routes": minimal()["routes"]}, "public_url: required"),
        (routed(name="a b"), "routes[0].name: use only letters, digits and _ . -"),
        (
            minimal(redis={"url": "redis://r:6379/0"}, session={"store": "memcached"}),
            "session.store: expected cookie or redis",
        ),
    ],
)
def test_each_problem_in_iaps_words(document: dict[str, Any], problem: str) -> None:
    problems = problems_of(document)
    assert problems == [problem]
    assert not any(word in problem for word in LIBRARY_WORDS)


def test_a_literal_true_is_written_as_yaml_writes_it() -> None:
    problems = problems_of(routed(policy={"allow": [{"authenticated": False}]}))
    assert "routes[0].policy.allow[0].authenticated: expected true" in problems


def test_public_given_as_a_string_is_a_type_error_not_a_missing_oidc() -> None:
    """``public: "yes"`` was read as true by pydantic's lax bools, or, without oidc, as a
    protected route asking for oidc: now it is the type error it is, with or without oidc."""
    problems = problems_of(routed(policy={"public": "yes"}))
    assert problems == ["routes[0].policy.public: expected true or false, got a string"]
    assert not any("oidc" in problem for problem in problems)


def test_every_missing_file_is_named_in_one_run(tmp_path: Path) -> None:
    absent = tmp_path / "absent"
    document = minimal(
        listen={"tls": {"cert_file": str(absent / "c.pem"), "key_file": str(absent / "k.pem")}},
        tokens={"issuer": "https://edge.contoso.com", "keys_dir": str(absent / "keys")},
        session={"keys_file": str(absent / "session.keys")},
        route={
            "upstream": "https://127.0.0.1:8081",
            "upstream_tls": {"ca_file": str(absent / "ca.pem")},
        },
    )
    with pytest.raises(ConfigError) as info:
        config.parse(document, serving=True)  # as iap check and iap run read it
    assert sorted(info.value.problems) == [
        "listen.tls.cert_file: no such file",
        "listen.tls.key_file: no such file",
        "routes[0].upstream_tls.ca_file: no such file",
        "session.keys_file: no such file",
        "tokens.keys_dir: no such directory",
    ]
    # iap mesh render and iap policy explain never read the signing keys.
    assert "tokens.keys_dir: no such directory" not in problems_of(document)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("a: 1\n\tb: 2\n", "at line 2, column 1: found a tab; indent YAML with spaces"),
        ('a: "abc\n', "at line 2, column 1: found unexpected end of stream"),
        ("a: 1\nb: x: y\n", "at line 2, column 5: mapping values are not allowed here"),
        (f"a: !{CANARY} x\n", "at line 1, column 4: found a tag (!name) that iap does not read"),
        (f"a: !<{CANARY}> x\n", "at line 1, column 4: found a tag (!name) that iap does not read"),
    ],
)
def test_yaml_errors_name_the_problem_and_the_position(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = tmp_path / "iap.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert info.value.problems == [f"{path}: not valid YAML {problem}"]
    assert CANARY not in info.value.problems[0]


def test_tls_files_that_do_not_load_are_explained_in_iaps_words(tmp_path: Path) -> None:
    from iap.app.wiring import build_edge
    from iap.certs import issue_dev_material

    material = issue_dev_material(tmp_path / "dev")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    document = minimal(
        listen={"tls": {"cert_file": str(garbage), "key_file": str(garbage)}},
        route={"upstream": "https://127.0.0.1:8081", "upstream_tls": {"ca_file": str(garbage)}},
    )
    document["routes"].append(
        {
            "name": "mismatched",
            "match": {"path_prefix": "/m/"},
            "upstream": "https://127.0.0.1:8082",
            "upstream_tls": {
                "cert_file": str(material.edge_client_cert),
                "key_file": str(material.ingress_server_key),
            },
            "policy": {"public": True},
        }
    )
    with pytest.raises(ConfigError) as info:
        build_edge(config.parse(document, serving=True), Environment())
    assert info.value.problems == [
        "listen.tls: cannot load certificate or key "
        "(not a PEM certificate, or not an unencrypted PEM private key)",
        "routes[0].upstream_tls: cannot load TLS material (no PEM certificate in the file)",
        "routes[1].upstream_tls: cannot load TLS material "
        "(the private key does not match the certificate)",
    ]
    assert not any("_ssl.c" in problem or "[SSL" in problem for problem in info.value.problems)
