"""The mesh SDK's errors: one root, two kinds of refusal.

    MeshError
    ├── InvalidToken     the token is refused (answer 401); ``reason`` says why
    └── KeysUnavailable  no usable JWKS (answer 503)

Invariant: messages never contain the token or its claims, only the short ``reason``.
"""

from __future__ import annotations


class MeshError(Exception):
    """Root of this package's errors: :class:`InvalidToken`, :class:`KeysUnavailable`."""


class InvalidToken(MeshError):
    """The token is refused; ``reason`` is a short code for logs and metrics (``alg``,
    ``header``, ``malformed``, ``kid``, ``signature``, ``iss``, ``aud``, ``exp``, ``nbf``,
    ``iat``, ``missing``, ``scheme``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"token refused ({reason})")
        self.reason = reason


class KeysUnavailable(MeshError):
    """No usable JWKS: never fetched, or the last-known-good one is too old (answer 503)."""

    def __init__(self) -> None:
        super().__init__("iap signing keys unavailable")
