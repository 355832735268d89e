"""``iap policy explain``: the gateway's decision for one request, from the command line;
exit 0 allow, 1 deny, 2 config error (SPEC §5.1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from iap import cli
from iap.dev.idp import STAFF_GROUP_ID, TENANT_A


def write(tmp_path: Path, **overrides: object) -> str:
    (tmp_path / "secret").write_text("not-used\n")
    (tmp_path / "session-keys").write_text("not-used\n")
    document = {
        "public_url": "https://edge.test",
        "oidc": {
            "issuer": f"https://login.microsoftonline.com/{TENANT_A}/v2.0",
            "allowed_tenants": [TENANT_A],
            "client_id": "edge",
            "client_secret_file": str(tmp_path / "secret"),
        },
        "session": {"keys_file": str(tmp_path / "session-keys")},
        "tokens": {
            "issuer": "https://edge.test/.iap",
            "keys_dir": str(tmp_path / "keys"),
            "roles": {"Edge.Admin": "admin", STAFF_GROUP_ID: "staff"},
        },
        "routes": [
            {
                "name": "ops",
                "upstream": "https://gw:443",
                "match": {"path_prefix": "/ops/"},
                "policy": {
                    "allow": [
                        {"roles": ["admin"]},
                        {"roles": ["staff"], "methods": ["GET"], "paths": ["/ops/reports/"]},
                    ],
                    "deny": [{"paths": ["/ops/reports/secret/"]}],
                },
            },
            {"name": "public", "upstream": "https://gw:443", "policy": {"public": True}},
        ],
        **overrides,
    }
    path = tmp_path / "iap.yaml"
    path.write_text(yaml.safe_dump(document))
    return str(path)


def explain(path: str, *args: str) -> int:
    return cli.main(["policy", "explain", "-c", path, *args])


@pytest.fixture(autouse=True)
def _no_secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IAP_OIDC_CLIENT_SECRET", raising=False)


def test_allow_prints_the_rule_and_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path)
    assert explain(path, "--url", "https://edge.test/ops/reports/q", "--user", "bob") == 0
    out = capsys.readouterr().out
    assert "route: ops" in out
    assert "decision: allow (allow[1])" in out


def test_deny_says_why_each_rule_failed_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path)
    url = "https://edge.test/ops/reports/q"
    assert explain(path, "--method", "POST", "--url", url, "--user", "bob") == 1
    out = capsys.readouterr().out
    assert "decision: deny (no_rule_matched)" in out
    assert "allow[0]: failed on roles" in out
    assert "allow[1]: failed on methods" in out
    claims = tmp_path / "claims.json"
    claims.write_text(json.dumps({"tid": TENANT_A, "oid": "o", "roles": ["Edge.Admin"]}))
    secret = "https://edge.test/ops/reports/secret/x"
    assert explain(path, "--url", secret, "--claims", str(claims)) == 1
    assert "decision: deny (deny[0])" in capsys.readouterr().out
    assert explain(path, "--url", "https://edge.test/ops/x") == 1  # anonymous
    assert "decision: sign_in (unauthenticated)" in capsys.readouterr().out


def test_a_config_error_exits_2_and_names_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path, routes=[{"name": "x", "upstream": "https://gw", "policy": {"allow": [{}]}}]
    )
    assert explain(path, "--url", "https://edge.test/") == 2
    assert "routes[0].policy.allow[0]" in capsys.readouterr().err
    good = write(tmp_path)
    assert explain(good, "--url", "https://edge.test/", "--user", "mallory") == 2
    assert explain(good, "--url", "https://edge.test/a%2fb") == 2
