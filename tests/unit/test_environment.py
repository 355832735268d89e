"""The environment as a value: read once by the composition root, secrets masked, and the
only way variables reach config validation, the secrets and tracing."""

from __future__ import annotations

import ast
import os
from pathlib import Path
from typing import Any

import pytest

from iap import config
from iap.adapters.telemetry import _endpoint
from iap.app import secrets
from iap.domain import sealing
from iap.environment import Environment
from iap.errors import ConfigError

CANARY = "s3cr3t-env-canary"
KEY = "A" * 43  # one base64url-encoded 32-byte key


def _signed_in(tmp_path: Path, **oidc: Any) -> dict[str, Any]:
    return {
        "public_url": "https://edge.contoso.com",
        "listen": {"address": "127.0.0.1:0"},
        "admin": {"address": "127.0.0.1:0"},
        "oidc": {
            "issuer": "https://login.microsoftonline.com/organizations/v2.0",
            "allowed_tenants": ["t1"],
            "client_id": "c1",
            **oidc,
        },
        "tokens": {"issuer": "https://edge.contoso.com/.iap", "keys_dir": str(tmp_path)},
        "routes": [{"name": "r", "upstream": "http://127.0.0.1:1", "policy": {"public": True}}],
    }


def test_empty_and_missing_variables_are_unset() -> None:
    environment = Environment.from_mapping({"IAP_OIDC_CLIENT_SECRET": "", "OTEL_SERVICE_NAME": ""})
    assert environment == Environment()


def test_repr_says_whether_a_secret_is_set_never_what_it_is() -> None:
    environment = Environment.from_mapping(
        {"IAP_OIDC_CLIENT_SECRET": CANARY, "IAP_SESSION_KEYS": CANARY, "OTEL_SERVICE_NAME": "x"}
    )
    text = repr(environment)
    assert CANARY not in text
    assert text.startswith("Environment(client_secret=set, session_keys=set, ")
    assert "service_name='x'" in text


def test_secrets_from_variables_satisfy_the_config_and_load(tmp_path: Path) -> None:
    document = _signed_in(tmp_path)
    with pytest.raises(ConfigError) as refused:
        config.parse(document)  # no variables: both secrets are missing
    assert any(p.startswith("oidc: ") for p in refused.value.problems)
    assert any(p.startswith("session.keys_file: required") for p in refused.value.problems)

    environment = Environment.from_mapping(
        {"IAP_OIDC_CLIENT_SECRET": f" {CANARY}\n", "IAP_SESSION_KEYS": f"{KEY},{'B' * 43}"}
    )
    parsed = config.parse(document, environment)
    assert parsed.oidc is not None
    problems: list[str] = []
    credential = secrets.client_credential(parsed.oidc, environment, problems)
    keyring = secrets.session_keyring(parsed.session, environment, problems)
    assert problems == []
    assert credential.secret == CANARY
    older = sealing.seal(
        sealing.Keyring.parse("B" * 43), b"v", purpose=b"p", now=1, random=os.urandom
    )
    assert sealing.open(keyring, older, purpose=b"p", now=1, max_age=10) == b"v"  # both keys


def test_a_secret_given_twice_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("from-file")
    document = _signed_in(tmp_path, client_secret_file=str(secret))
    document["session"] = {"keys_file": str(secret)}
    environment = Environment(client_secret=CANARY)
    with pytest.raises(ConfigError) as refused:
        config.parse(document, environment)
    assert any("set exactly one of client_secret_file" in p for p in refused.value.problems)
    assert CANARY not in str(refused.value.problems)


def test_missing_keys_variable_is_named_not_echoed(tmp_path: Path) -> None:
    document = config.parse(
        _signed_in(tmp_path, client_secret_file=__file__), Environment(session_keys=KEY)
    )
    problems: list[str] = []
    secrets.session_keyring(document.session, Environment(), problems)
    assert problems == ["session.keys_file: cannot read (KeyError)"]


def test_tracing_endpoint_comes_from_the_config_first_then_the_variables() -> None:
    telemetry = config.Telemetry()
    assert _endpoint(telemetry, Environment()) is None
    base = Environment(otlp_endpoint="http://collector:4318/")
    assert _endpoint(telemetry, base) == "http://collector:4318/v1/traces"
    both = Environment(otlp_endpoint="http://a:4318", otlp_traces_endpoint="http://b/t")
    assert _endpoint(telemetry, both) == "http://b/t"
    configured = config.Telemetry(otlp_endpoint="http://c:4318")
    assert _endpoint(configured, both) == "http://c:4318/v1/traces"


ROOT = Path(__file__).resolve().parents[2] / "iap"
READERS = {"cli.py", "supervisor/__init__.py"}
"""``iap.cli`` reads the environment once; the supervisor sets PROMETHEUS_MULTIPROC_DIR for
prometheus-client, which reads it at import."""


def test_only_the_entry_points_touch_the_process_environment() -> None:
    touching = []
    for path in sorted(ROOT.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            name = node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", None)
            if name in {"environ", "getenv", "putenv", "environb"}:
                touching.append(str(path.relative_to(ROOT)))
    assert sorted(set(touching)) == sorted(READERS)
