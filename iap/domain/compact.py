"""Strict parsing of JWS compact serialisation, shared by every token iap reads (ID tokens,
Entra access tokens, its own minted tokens; RFC 7515 §7.1, RFC 8725).

Invariants:
- A token is exactly three segments of canonical base64url: no padding, no stray bits, so a
  token has one spelling and a changed byte of the signature cannot verify.
- The header and the claims are JSON objects with unique member names (RFC 7515 §5.2,
  RFC 7519 §4); anything else is :class:`Malformed`, whose message never holds the token.
- Nothing here verifies a signature or believes a claim: callers do, with the one key they
  chose from the ``kid`` of a header they judged first.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

MAX_TOKEN_LENGTH = 64 * 1024
"""Large enough for Entra tokens with 200 groups, small enough to bound the work."""
_SEGMENT = re.compile(r"[A-Za-z0-9_-]*")


class Malformed(ValueError):
    """Not a well-formed compact JWS (or not a JSON object where one belongs)."""

    def __init__(self) -> None:
        super().__init__("malformed token")


def segments(token: str) -> tuple[str, str, str]:
    """The three segments of ``token``, each checked to be canonical base64url."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
        raise Malformed
    parts = token.split(".")
    if len(parts) != 3:
        raise Malformed
    for part in parts:
        b64decode(part)
    return parts[0], parts[1], parts[2]


def header(token: str) -> dict[str, Any]:
    """The protected header of ``token``, unverified: only for judging it before any key."""
    return json_object(b64decode(segments(token)[0]))


def b64decode(segment: str) -> bytes:
    """Strict base64url without padding; non-canonical trailing bits are refused."""
    if not _SEGMENT.fullmatch(segment) or len(segment) % 4 == 1:
        raise Malformed
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise Malformed from None
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != segment:
        raise Malformed
    return raw


def json_object(raw: bytes) -> dict[str, Any]:
    """A JSON object with unique member names."""

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result = dict(pairs)
        if len(result) != len(pairs):
            raise Malformed
        return result

    try:
        value = json.loads(raw.decode("utf-8"), object_pairs_hook=unique)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise Malformed from None
    if not isinstance(value, dict):
        raise Malformed
    return value
