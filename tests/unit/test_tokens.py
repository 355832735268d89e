"""Minted tokens and their keys (SPEC §6): ES256, RFC 7638 kids, publish-before-use, retention."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given
from hypothesis import strategies as st
from jwt.algorithms import ECAlgorithm
from jwt.types import Options

from iap.domain.tokens import (
    KeySet,
    NoSigningKey,
    SigningKey,
    load_key,
    mint,
    new_key_pem,
    public_jwk,
    user_claims,
)
from iap.model import Identity
from tests.support.identities import ALICE

ISSUER = "https://edge.contoso.com/.iap"
AUDIENCE = "orders"
PBU = 1500.0  # publish_before_use
TTL = 300.0
T0 = 1_700_000_000.0
JWK_MEMBERS = {"kty", "crv", "x", "y", "kid", "alg", "use"}
#: PyJWT reads the wall clock; the tests judge times against their own clock instead.
NO_CLOCK: Options = {"verify_exp": False, "verify_nbf": False, "verify_iat": False}

# Keys are made once: generating one per Hypothesis example would only measure EC keygen.
PEMS = [new_key_pem() for _ in range(4)]


def key(index: int = 0, *, created: float = T0) -> SigningKey:
    return load_key(PEMS[index], created=created)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def rfc7638(signing_key: SigningKey) -> str:
    """The thumbprint computed without joserfc: the required members, sorted, no spaces."""
    private = serialization.load_pem_private_key(
        signing_key.key.as_pem(private=True), password=None
    )
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    numbers = private.public_key().public_numbers()
    members = {
        "crv": "P-256",
        "kty": "EC",
        "x": b64(numbers.x.to_bytes(32, "big")),
        "y": b64(numbers.y.to_bytes(32, "big")),
    }
    canonical = json.dumps(members, sort_keys=True, separators=(",", ":"))
    return b64(hashlib.sha256(canonical.encode("ascii")).digest())


def claims(now: int = int(T0), **overrides: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "sid": "sid-1",
        "now": now,
        "ttl": int(TTL),
        "jti": "jti-1",
    }
    return user_claims(ALICE, **(arguments | overrides))


def independent_jwk(index: int) -> dict[str, Any]:
    """The public JWK of ``PEMS[index]``, built by PyJWT and cryptography from the private key:
    no iap code, so a wrong JWKS or a wrong signing key cannot agree with it."""
    private = serialization.load_pem_private_key(PEMS[index], password=None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    return ECAlgorithm.to_jwk(private.public_key(), as_dict=True)


def public_members(jwk: dict[str, Any]) -> dict[str, Any]:
    return {name: jwk[name] for name in ("kty", "crv", "x", "y")}


def decode_at(token: str, jwks: dict[str, Any], now: float) -> dict[str, Any]:
    """Verified with the key of ``jwks`` that the token's ``kid`` names (see :func:`verify_at`)."""
    return verify_at(
        token, jwt.PyJWKSet.from_dict(jwks)[jwt.get_unverified_header(token)["kid"]], now
    )


def verify_at(token: str, public: jwt.PyJWK, now: float) -> dict[str, Any]:
    """PyJWT reads the wall clock; judge expiry against ``now`` by hand, the signature by PyJWT."""
    payload = jwt.decode(
        token,
        public,
        algorithms=["ES256"],
        audience=AUDIENCE,
        issuer=ISSUER,
        options=NO_CLOCK,
    )
    assert payload["nbf"] <= now < payload["exp"]
    return dict(payload)


def segments(token: str) -> list[dict[str, Any]]:
    parts = token.split(".")
    assert len(parts) == 3
    return [
        json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))) for part in parts[:2]
    ]


# keys -------------------------------------------------------------------------------


def test_kid_is_the_rfc7638_thumbprint() -> None:
    for index in range(len(PEMS)):
        signing_key = key(index)
        assert signing_key.kid == rfc7638(signing_key)
    assert len({key(index).kid for index in range(len(PEMS))}) == len(PEMS)


def test_new_key_pem_is_unencrypted_pkcs8_p256() -> None:
    pem = new_key_pem()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")
    private = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert isinstance(private.curve, ec.SECP256R1)


def test_key_repr_and_equality_leave_the_private_key_out() -> None:
    signing_key = key(0)
    assert "key=" not in repr(signing_key)
    assert signing_key == load_key(PEMS[0], created=T0)
    assert signing_key != load_key(PEMS[0], created=T0 + 1)


def _pem(private: Any) -> bytes:
    pem: bytes = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return pem


@pytest.mark.parametrize(
    ("pem", "problem"),
    [
        (_pem(ec.generate_private_key(ec.SECP384R1())), "not a P-256 key"),
        (_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)), "not an EC"),
        (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "not a readable"),
        (b"", "not a readable"),
        (
            ec.generate_private_key(ec.SECP256R1()).private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"pw"),
            ),
            "unencrypted",
        ),
    ],
)
def test_load_key_refuses_anything_but_an_ec_p256_private_key(pem: bytes, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as raised:
        load_key(pem, created=T0)
    assert "PRIVATE" not in str(raised.value)
    # the parser's exception, which could describe the key, is not chained
    assert raised.value.__cause__ is None
    assert raised.value.__context__ is None or raised.value.__suppress_context__


def test_load_key_refuses_a_public_key() -> None:
    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(ValueError, match="not a readable"):
        load_key(pem, created=T0)


# JWKS -------------------------------------------------------------------------------


def test_each_jwk_has_exactly_the_public_members() -> None:
    keys = KeySet([key(0), key(1)], publish_before_use=PBU, ttl=TTL)
    document = keys.jwks(T0)
    assert set(document) == {"keys"}
    assert len(document["keys"]) == 2
    for jwk in document["keys"]:
        assert set(jwk) == JWK_MEMBERS
        assert "d" not in jwk
        assert (jwk["kty"], jwk["crv"], jwk["alg"], jwk["use"]) == ("EC", "P-256", "ES256", "sig")
    assert {jwk["kid"] for jwk in document["keys"]} == {key(0).kid, key(1).kid}


def test_retired_jwks_have_no_private_member_either() -> None:
    keys = KeySet([key(0)], publish_before_use=PBU, ttl=TTL).replaced([key(1)], T0)
    (retained,) = [jwk for jwk in keys.jwks(T0)["keys"] if jwk["kid"] == key(0).kid]
    assert set(retained) == JWK_MEMBERS
    assert "key=" not in repr(keys.retired[0])


def test_jwks_cannot_be_changed_through_what_it_returns() -> None:
    keys = KeySet([key(0)], publish_before_use=PBU, ttl=TTL)
    keys.jwks(T0)["keys"][0]["d"] = "leak"
    assert "d" not in keys.jwks(T0)["keys"][0]
    assert public_jwk(key(0)) == keys.jwks(T0)["keys"][0]


def test_an_empty_set_has_no_signing_key() -> None:
    keys = KeySet([], publish_before_use=PBU, ttl=TTL)
    with pytest.raises(NoSigningKey):
        keys.signing_key(T0)
    assert keys.jwks(T0) == {"keys": []}
    assert keys.version(T0) != KeySet([key(0)], publish_before_use=PBU, ttl=TTL).version(T0)


@pytest.mark.parametrize(("pbu", "ttl"), [(-1.0, TTL), (PBU, 0.0), (PBU, -5.0)])
def test_bad_durations_are_refused(pbu: float, ttl: float) -> None:
    with pytest.raises(ValueError, match="publish_before_use"):
        KeySet([key(0)], publish_before_use=pbu, ttl=ttl)


def test_the_same_key_twice_is_one_key_with_the_earlier_time() -> None:
    keys = KeySet([key(0, created=T0 + 9), key(0, created=T0)], publish_before_use=PBU, ttl=TTL)
    assert keys.keys == (key(0, created=T0),)
    assert len(keys.jwks(T0)["keys"]) == 1


# minting ----------------------------------------------------------------------------


def test_a_minted_token_verifies_with_pyjwt_against_the_jwks() -> None:
    keys = KeySet([key(0)], publish_before_use=PBU, ttl=TTL)
    now = int(T0 + PBU)
    token = mint(keys.signing_key(now), claims(now))
    assert verify_at(token, jwt.PyJWK(independent_jwk(0)), now) == claims(now)
    [published] = keys.jwks(now)["keys"]
    assert public_members(published) == independent_jwk(0)  # the JWKS names the same key
    assert decode_at(token, keys.jwks(now), now) == claims(now)
    assert jwt.get_unverified_header(token)["kid"] == key(0).kid


def test_pyjwt_refuses_a_wrong_audience_issuer_or_key() -> None:
    token = mint(key(0), claims())
    public = jwt.PyJWK(independent_jwk(0))
    assert verify_at(token, public, T0)["aud"] == AUDIENCE  # the key is right: only aud is not
    with pytest.raises(jwt.InvalidAudienceError):
        jwt.decode(token, public, algorithms=["ES256"], audience="other", options=NO_CLOCK)
    with pytest.raises(jwt.InvalidIssuerError):
        jwt.decode(
            token, public, algorithms=["ES256"], audience=AUDIENCE, issuer="x", options=NO_CLOCK
        )
    other = jwt.PyJWK(independent_jwk(1))
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, other, algorithms=["ES256"], audience=AUDIENCE, options=NO_CLOCK)


def test_header_is_exactly_alg_kid_typ() -> None:
    token = mint(key(0), claims())
    header, _ = segments(token)
    assert header == {"alg": "ES256", "kid": key(0).kid, "typ": "JWT"}


def test_claims_follow_spec_section_6() -> None:
    now = int(T0)
    token_claims = claims(now)
    assert token_claims == {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "tid-1:oid-alice",
        "iat": now,
        "nbf": now,
        "exp": now + int(TTL),
        "jti": "jti-1",
        "tid": "tid-1",
        "oid": "oid-alice",
        "name": "Alice",
        "email": "alice@contoso.com",
        "preferred_username": "alice@contoso.com",
        "roles": ["admin", "reader"],
        "sid": "sid-1",
    }
    _, payload = segments(mint(key(0), token_claims))
    assert payload == token_claims
    for name in ("iat", "nbf", "exp"):
        assert type(payload[name]) is int


def test_optional_claims_appear_only_when_present() -> None:
    bare = Identity(
        subject="t:o",
        tid="t",
        oid="o",
        name=None,
        email="",
        preferred_username=None,
        roles=(),
        groups=("g-1", "g-2"),
    )
    token_claims = user_claims(
        bare, issuer=ISSUER, audience=AUDIENCE, sid=None, now=10, ttl=5, jti="j"
    )
    assert set(token_claims) == {
        "iss",
        "aud",
        "sub",
        "iat",
        "nbf",
        "exp",
        "jti",
        "tid",
        "oid",
        "roles",
    }
    assert token_claims["roles"] == []
    with_groups = user_claims(
        bare, issuer=ISSUER, audience=AUDIENCE, sid=None, now=10, ttl=5, jti="j", groups=True
    )
    assert with_groups["groups"] == ["g-1", "g-2"]


@pytest.mark.parametrize(
    "overrides", [{"now": 1.5}, {"ttl": 300.0}, {"now": True}, {"ttl": 0}, {"ttl": -1}]
)
def test_times_must_be_positive_integers(overrides: dict[str, Any]) -> None:
    with pytest.raises((TypeError, ValueError)):
        claims(**overrides)


# rotation (the issue's acceptance) ------------------------------------------------------


def test_rotation_publish_before_use_then_retention() -> None:
    t0, t1 = T0, T0 + 3600
    k1, k2 = key(0, created=t0), key(1, created=t1)
    kids = {k1.kid, k2.kid}
    versions: list[str] = []

    def published(keys: KeySet, now: float) -> set[str]:
        return {jwk["kid"] for jwk in keys.jwks(now)["keys"]}

    before = KeySet([k1], publish_before_use=PBU, ttl=TTL)
    assert before.signing_key(t1 - 1) == k1
    versions.append(before.version(t1 - 1))

    # K2 appears at t1: published at once, K1 still signs until K2 is PBU old.
    rotated = before.replaced([k1, k2], t1)
    for now in (t1, t1 + 1, t1 + PBU - 1):
        assert published(rotated, now) == kids
        assert rotated.signing_key(now) == k1
        assert rotated.version(now) == rotated.version(t1)
    versions.append(rotated.version(t1))

    # From t1 + PBU on, K2 signs; K1 is still published.
    for now in (t1 + PBU, t1 + PBU + 1, t1 + 10 * PBU):
        assert rotated.signing_key(now) == k2
        assert published(rotated, now) == kids
        assert rotated.version(now) == rotated.version(t1 + PBU)
    versions.append(rotated.version(t1 + PBU))

    # A token K1 signed just before its file disappears at t2 ...
    t2 = t1 + PBU + 100.5
    late = mint(k1, claims(int(t2)))  # half a second before t2
    # ... K1 is retained, public part only, until t2 + ttl.
    after = rotated.replaced([k2], t2)
    assert after.keys == (k2,)
    for now in (t2, t2 + TTL - 1, t2 + TTL):
        assert published(after, now) == kids
        assert after.signing_key(now) == k2
        assert after.version(now) == after.version(t2)
    assert decode_at(late, after.jwks(t2 + TTL - 1), t2 + TTL - 1)["jti"] == "jti-1"
    [retained] = [jwk for jwk in after.jwks(t2 + TTL - 1)["keys"] if jwk["kid"] == k1.kid]
    assert public_members(retained) == independent_jwk(0)  # K1's own public key, kept
    versions.append(after.version(t2))

    # ... and gone after that.
    gone = t2 + TTL + 1
    assert published(after, gone) == {k2.kid}
    versions.append(after.version(gone))
    assert after.replaced([k2], gone).retired == ()
    assert after.replaced([k2], gone).version(gone) == versions[-1]

    assert len(set(versions)) == len(versions)


def test_a_rewritten_file_keeps_the_age_of_its_key() -> None:
    """A Kubernetes Secret update rewrites every file: known keys must not restart."""
    k1, k2 = key(0, created=T0), key(1, created=T0 + 3600)
    now = T0 + 3600
    keys = KeySet([k1], publish_before_use=PBU, ttl=TTL).replaced(
        [key(0, created=now), key(1, created=now)], now
    )
    assert keys.keys == (k1, k2)
    assert keys.signing_key(now) == k1
    again = keys.replaced([key(0, created=now + 5), key(1, created=now + 5)], now + 5)
    assert again.keys == keys.keys
    assert again.version(now + 5) == keys.version(now + 5)


def test_a_key_that_comes_back_leaves_the_retired_list() -> None:
    k1, k2 = key(0, created=T0), key(1, created=T0 + 10)
    keys = KeySet([k1, k2], publish_before_use=PBU, ttl=TTL)
    gone = keys.replaced([k2], T0 + 20)
    back = gone.replaced([k1, k2], T0 + 30)
    assert back.retired == ()
    assert back.keys == (k1, k2)
    assert len(back.jwks(T0 + 30)["keys"]) == 2


def test_a_fresh_install_signs_with_its_oldest_key() -> None:
    k1, k2 = key(0, created=T0), key(1, created=T0 + 10)
    keys = KeySet([k2, k1], publish_before_use=PBU, ttl=TTL)
    assert keys.signing_key(T0 + 10) == k1
    assert keys.signing_key(T0 + 10 + PBU) == k2


def test_ties_go_to_the_smaller_kid_whether_ready_or_not() -> None:
    tied = [key(index, created=T0) for index in range(3)]
    keys = KeySet(tied, publish_before_use=PBU, ttl=TTL)
    smallest = min(tied, key=lambda k: k.kid)
    assert keys.signing_key(T0) == smallest
    assert keys.signing_key(T0 + PBU) == smallest


@given(
    created=st.lists(st.integers(min_value=0, max_value=10_000), min_size=1, max_size=4),
    now=st.integers(min_value=0, max_value=12_000),
    pbu=st.integers(min_value=0, max_value=3_000),
)
def test_signing_key_is_published_and_old_enough_unless_none_is(
    created: list[int], now: int, pbu: int
) -> None:
    keys = KeySet(
        [key(index, created=float(at)) for index, at in enumerate(created)],
        publish_before_use=float(pbu),
        ttl=TTL,
    )
    signing = keys.signing_key(now)
    assert signing.kid in {jwk["kid"] for jwk in keys.jwks(now)["keys"]}
    old_enough = [k for k in keys.keys if k.created + pbu <= now]
    if old_enough:
        assert signing.created + pbu <= now
        assert signing.created == max(k.created for k in old_enough)
    else:
        assert signing.created == min(k.created for k in keys.keys)


@given(
    steps=st.lists(
        st.tuples(st.sets(st.integers(0, 3), min_size=1), st.integers(1, 2_000)),
        min_size=1,
        max_size=6,
    )
)
def test_a_key_stays_published_for_ttl_after_it_last_signed(
    steps: list[tuple[set[int], int]],
) -> None:
    """Whatever the directory does, a key that signed at t is in the JWKS until t + ttl."""
    now = T0
    keys = KeySet([key(0)], publish_before_use=PBU, ttl=TTL)
    last_signed: dict[str, float] = {}
    for present, delay in steps:
        end = now + delay
        # The signing key only moves to newer keys between re-reads; both ends cover all.
        for at in (now, end - 1):
            last_signed[keys.signing_key(at).kid] = end - 1
        keys = keys.replaced([key(index, created=T0 + delay * index) for index in present], end)
        now = end
        for kid, last in last_signed.items():
            if now <= last + TTL:
                assert kid in keys.published(last + TTL)
                assert kid in {jwk["kid"] for jwk in keys.jwks(now)["keys"]}
