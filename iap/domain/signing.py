"""The keys that sign iap's tokens (SPEC §5 ``tokens.keys_dir``, §6): loading, ``kid``s,
published JWKs, and the set that rotates them. The tokens themselves are :mod:`iap.domain.tokens`.

Invariants:
- ES256 only: a signing key is an EC P-256 private key (:func:`load_key` refuses anything
  else), and every published JWK says ``alg: ES256``, ``use: sig``.
- ``kid`` is the RFC 7638 JWK thumbprint (SHA-256, base64url) of the public key: every
  replica derives the same ``kid`` from the same file, and a ``kid`` names one key only.
- Publish before use: a key signs only once it is at least ``publish_before_use`` old (its
  ``created`` time), so verifiers that cache the JWKS (istiod refreshes every 20 minutes)
  know it before its first token. The one exception is a set in which no key is that old.
- Retention: a key that leaves the set stays published, public part only, for ``ttl``
  after it left, so every token it signed expires before its key disappears from the JWKS.
- No private member ever reaches a JWK: published JWKs are built member by member
  (``kty``, ``crv``, ``x``, ``y``, ``kid``, ``alg``, ``use``), never filtered from a full key.
- Pure: no IO; the clock is an argument. Errors name the problem, never key material.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from iap.domain import jose
from iap.domain.jose import ECKey

ALGORITHM = "ES256"
CURVE = "P-256"


class NoSigningKey(LookupError):
    """The key set holds no key that can sign."""

    def __init__(self) -> None:
        super().__init__("no signing key")


@dataclass(frozen=True)
class SigningKey:
    """An ES256 private key, its RFC 7638 ``kid`` and when it was made (Unix seconds)."""

    kid: str
    key: ECKey = field(repr=False, compare=False)
    created: float


def load_key(pem: bytes, *, created: float) -> SigningKey:
    """Load an unencrypted PEM EC P-256 private key made at ``created`` (Unix seconds).

    Raises ValueError naming the problem (unreadable, not EC, not P-256); the parser's own
    exception is dropped, as it could describe the key.
    """
    try:
        private = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ValueError("not a readable unencrypted PEM private key") from None
    if not isinstance(private, ec.EllipticCurvePrivateKey):
        raise ValueError(f"not an EC private key ({ALGORITHM} needs EC {CURVE})")
    if not isinstance(private.curve, ec.SECP256R1):
        raise ValueError(f"not a {CURVE} key ({ALGORITHM} needs {CURVE})")
    key = jose.ec_key(private)
    return SigningKey(kid=key.thumbprint(), key=key, created=created)


def new_key_pem() -> bytes:
    """A fresh EC P-256 private key as unencrypted PKCS#8 PEM."""
    private = ec.generate_private_key(ec.SECP256R1())
    return private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_jwk(key: SigningKey) -> dict[str, str]:
    """The JWK that verifies ``key``'s tokens: exactly the public members and our usage."""
    full = key.key.as_dict(private=False)
    return {
        "kty": "EC",
        "crv": CURVE,
        "x": str(full["x"]),
        "y": str(full["y"]),
        "kid": key.kid,
        "alg": ALGORITHM,
        "use": "sig",
    }


@dataclass(frozen=True)
class Retired:
    """A key that left the set: published (public part only) until ``until``, never signing."""

    kid: str
    jwk: Mapping[str, str] = field(repr=False, compare=False)
    created: float
    until: float


class KeySet:
    """The signing keys found in ``tokens.keys_dir`` plus the retired keys still published.

    Immutable: :meth:`replaced` returns the set after a re-read of the directory. (The one
    memo, of the last :meth:`version` answer, is a pure function's cache.)
    """

    __slots__ = ("_jwks", "_keys", "_retired", "_version", "publish_before_use", "ttl")

    def __init__(
        self,
        keys: Iterable[SigningKey],
        *,
        publish_before_use: float,
        ttl: float,
        retired: Iterable[Retired] = (),
    ) -> None:
        if publish_before_use < 0 or ttl <= 0:
            raise ValueError("publish_before_use must not be negative and ttl must be positive")
        self.publish_before_use = publish_before_use
        self.ttl = ttl
        self._keys = _oldest_per_kid(keys)
        self._retired = tuple(r for r in retired if r.kid not in self._keys)
        self._jwks = {kid: public_jwk(key) for kid, key in self._keys.items()}
        self._version: tuple[float, str] = (-1.0, "")  # the last answer of version()

    @property
    def keys(self) -> tuple[SigningKey, ...]:
        """The keys that may sign, oldest first."""
        return tuple(self._keys.values())

    @property
    def retired(self) -> tuple[Retired, ...]:
        """Keys that left the set, with the time until which they stay published."""
        return self._retired

    def signing_key(self, now: float) -> SigningKey:
        """The newest key published at least ``publish_before_use`` ago.

        When no key is that old (a fresh install), the oldest key signs: no verifier can
        have cached a JWKS older than the first one, so the first JWKS it fetches already
        holds that key. (The same fallback applies when an operator swaps the only ready
        key for a new one in one step; verifiers then refuse tokens until they refetch.)
        Ties go to the smaller ``kid`` so that replicas agree. Raises :class:`NoSigningKey`
        when the set is empty.
        """
        if not self._keys:
            raise NoSigningKey
        keys = self.keys  # oldest first, ties by kid
        ready = [key for key in keys if self.ready(key, now)]
        return max(ready, key=lambda key: key.created) if ready else keys[0]

    def ready(self, key: SigningKey, now: float) -> bool:
        """Whether ``key`` has been published long enough to sign at ``now``."""
        return key.created + self.publish_before_use <= now

    def jwks(self, now: float) -> dict[str, list[dict[str, str]]]:
        """The JWK Set to publish at ``now`` (RFC 7517 §5): current keys, then retained ones."""
        published = [dict(jwk) for jwk in self._jwks.values()]
        published += [dict(r.jwk) for r in self._retired if now <= r.until]
        return {"keys": published}

    def published(self, now: float) -> frozenset[str]:
        """The ``kid`` of every key in :meth:`jwks` at ``now``."""
        retained = (r.kid for r in self._retired if now <= r.until)
        return frozenset(self._keys).union(retained)

    def version(self, now: float) -> str:
        """A cache key for what was minted or published at ``now``.

        It changes whenever the signing key or the published kids change, and when a key
        moves from the directory to retention, and at no other time.
        """
        if self._version[0] == now:  # asked on every request, at whole seconds
            return self._version[1]
        signing = self.signing_key(now).kid if self._keys else ""
        retained = sorted(r.kid for r in self._retired if now <= r.until)
        text = "|".join((signing, ",".join(sorted(self._keys)), ",".join(retained)))
        version = hashlib.sha256(text.encode("ascii")).hexdigest()[:32]
        self._version = (now, version)
        return version

    def replaced(self, keys: Iterable[SigningKey], now: float) -> KeySet:
        """The set after the directory was re-read at ``now`` and held ``keys``.

        A key seen before keeps its earlier ``created`` (a rewritten file, such as every
        file of an updated Kubernetes Secret, must not restart its clock). Every key that
        disappeared is retained until ``now + ttl``: it may have signed tokens that live
        that long. Retained keys past their time are dropped.
        """
        fresh = _oldest_per_kid(keys)
        seen = {kid: key.created for kid, key in self._keys.items()}
        seen.update((r.kid, r.created) for r in self._retired if r.kid not in seen)
        current = [
            SigningKey(key.kid, key.key, min(key.created, seen.get(kid, key.created)))
            for kid, key in fresh.items()
        ]
        retired = [r for r in self._retired if now <= r.until and r.kid not in fresh]
        retired += [
            Retired(kid, MappingProxyType(self._jwks[kid]), key.created, now + self.ttl)
            for kid, key in self._keys.items()
            if kid not in fresh
        ]
        return KeySet(
            current, publish_before_use=self.publish_before_use, ttl=self.ttl, retired=retired
        )

    def __repr__(self) -> str:
        return f"KeySet(kids=[{', '.join(self._keys)}], retired={len(self._retired)})"


def _oldest_per_kid(keys: Iterable[SigningKey]) -> dict[str, SigningKey]:
    """One key per ``kid`` (a copied file is the same key), the earliest ``created`` kept;
    ordered oldest first, ties by ``kid``."""
    by_kid: dict[str, SigningKey] = {}
    for key in keys:
        known = by_kid.get(key.kid)
        if known is None or key.created < known.created:
            by_kid[key.kid] = key
    ordered = sorted(by_kid.values(), key=lambda key: (key.created, key.kid))
    return {key.kid: key for key in ordered}
