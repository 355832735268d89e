"""iap.domain.jose: the one importer of joserfc (outside the dev IdP), one algorithm and one
key per call, failures as its own ValueErrors that name neither token nor key."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from iap.domain import jose

IAP = Path(__file__).resolve().parents[2] / "iap"
OWNER = IAP / "domain" / "jose.py"


def imports_joserfc(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import) and any(
            alias.name.split(".")[0] == "joserfc" for alias in node.names
        ):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "joserfc":
            return True
    return False


def test_only_the_jose_module_imports_joserfc() -> None:
    importers = {
        path.relative_to(IAP).as_posix()
        for path in IAP.rglob("*.py")
        if imports_joserfc(path) and not path.is_relative_to(IAP / "dev")
    }
    assert importers == {OWNER.relative_to(IAP).as_posix()}


def test_a_signed_payload_verifies_only_with_its_key_and_algorithm() -> None:
    key = jose.ec_key(ec.generate_private_key(ec.SECP256R1()))
    other = jose.ec_key(ec.generate_private_key(ec.SECP256R1()))
    token = jose.sign({"alg": "ES256", "typ": "JWT"}, {"sub": "alice"}, key, "ES256")
    assert jose.verified_payload(token, key, "ES256") == b'{"sub":"alice"}'
    for wrong_key, algorithm in ((other, "ES256"), (key, "ES384"), (key, "HS256")):
        with pytest.raises(jose.BadSignature) as refused:
            jose.verified_payload(token, wrong_key, algorithm)
        assert token not in str(refused.value)


def test_public_keys_that_do_not_import_are_refused() -> None:
    with pytest.raises(jose.KeyRefused):
        jose.ec_public_key("P-256", "AAAA", "AAAA")
    with pytest.raises(jose.KeyRefused):
        jose.rsa_public_key({"kty": "RSA", "n": "not base64!", "e": "AQAB"})
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = jose.rsa_key(private).as_dict(private=False)
    assert jose.rsa_public_key(public).as_dict(private=False) == public
