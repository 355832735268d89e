"""The browser login: authorization request, pending-login state, identity (SPEC §6, §7 Login).

Pure functions over plain values; the web layer does the redirects, the cookie and the token
call, and :mod:`iap.domain.idtoken` validates the ID token in between.

Invariants:
- Every login uses PKCE S256 (RFC 7636 §4.2); ``plain`` is never sent. The verifier is 32
  random bytes from the OS CSPRNG, base64url-encoded to 43 characters (RFC 7636 §4.1).
- ``state`` and ``nonce`` are 32 random bytes each, fresh per login (OIDC Core §3.1.2.1,
  §15.5.2). They are kept only in the login-state cookie, which the caller seals with
  ``sealing.seal(..., purpose=LOGIN_STATE_PURPOSE)``; this binds them to the browser.
- The cookie holds at most ``max_pending`` logins so parallel tabs work; the oldest is
  dropped first. :func:`take_pending` removes the login it returns, so a state is
  single-use once the caller writes back the remainder; a replayed callback finds nothing.
- States are compared with :func:`hmac.compare_digest` over UTF-8 bytes (a non-ASCII
  ``state`` from the query string must not raise), against every pending login.
- ``rd`` is stored as given: the caller passes it through ``RedirectPolicy.target`` before
  :func:`new_login` and again before redirecting to it.
- Users are keyed by ``tid`` and ``oid`` (``sub = "<tid>:<oid>"``), never by email; the
  identity is read by ``iap.domain.claims``, the one claims reader.
- :class:`LoginRefused` carries one generic message; ``reason`` is for the log only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from authlib.oauth2.rfc6749.parameters import prepare_grant_uri
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from iap.domain import claims as read
from iap.model import Identity

LOGIN_STATE_PURPOSE = b"login-state"
"""The ``purpose`` the caller seals :func:`encode_pending` output with."""
MAX_PENDING = 5
"""Logins in flight per browser (parallel tabs) before the oldest is dropped."""
MAX_AGE = 600
"""Seconds a login may take from the authorization redirect to the callback."""

_RANDOM_BYTES = 32
_FIELDS = ("state", "nonce", "verifier", "rd", "issued")


class LoginRefused(ValueError):
    """A callback or identity that must not log anyone in. The message never says why.

    ``reason`` is ``state`` (no pending login has this state: unknown, replayed, or the
    cookie is gone), ``expired`` (the login took longer than ``max_age``) or ``claims``
    (the ID token lacks ``tid``/``oid`` or carries malformed claims).
    """

    def __init__(self, reason: str) -> None:
        super().__init__("login refused")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class PendingLogin:
    """One login between the authorization redirect and the callback."""

    state: str
    nonce: str
    verifier: str
    rd: str
    issued: int


# --- Authorization request -----------------------------------------------------------------


def new_login(
    *,
    authorize_endpoint: str,
    client_id: str,
    redirect_uri: str,
    scopes: Sequence[str],
    rd: str,
    now: int,
    response_mode: str = "query",
    random: Callable[[int], bytes],
) -> tuple[str, PendingLogin]:
    """Start a login: the authorization URL to redirect to and the login to remember.

    The URL is an OIDC authorization code request with PKCE S256, built by authlib;
    ``response_mode`` is ``query`` or ``form_post``.
    ``rd`` must already have passed ``RedirectPolicy.target``; ``now`` is Unix seconds.
    """
    pending = PendingLogin(
        state=_token(random),
        nonce=_token(random),
        verifier=_token(random),
        rd=rd,
        issued=now,
    )
    url = prepare_grant_uri(
        authorize_endpoint,
        client_id,
        "code",
        redirect_uri=redirect_uri,
        scope=" ".join(scopes),
        state=pending.state,
        nonce=pending.nonce,
        code_challenge=s256_challenge(pending.verifier),
        code_challenge_method="S256",
        response_mode=response_mode,
    )
    return url, pending


def s256_challenge(verifier: str) -> str:
    """``BASE64URL(SHA256(ASCII(verifier)))`` without padding (RFC 7636 §4.2)."""
    return str(create_s256_code_challenge(verifier))  # type: ignore[no-untyped-call]


def _token(random: Callable[[int], bytes]) -> str:
    data = random(_RANDOM_BYTES)
    if len(data) != _RANDOM_BYTES:
        raise ValueError(f"random source returned {len(data)} bytes, not {_RANDOM_BYTES}")
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


# --- Pending logins (the login-state cookie) -----------------------------------------------


def add_pending(
    existing: Sequence[PendingLogin], new: PendingLogin, *, max_pending: int = MAX_PENDING
) -> list[PendingLogin]:
    """``existing`` plus ``new``, keeping only the newest ``max_pending`` (oldest dropped)."""
    if max_pending < 1:
        raise ValueError("max_pending must be at least 1")
    return [*existing, new][-max_pending:]


def take_pending(
    pending: Sequence[PendingLogin], *, state: str, now: int, max_age: int = MAX_AGE
) -> tuple[PendingLogin, list[PendingLogin]]:
    """The pending login whose ``state`` matches, and the others (write those back).

    Raises :class:`LoginRefused` (``state``) when none matches and (``expired``) when the
    match is older than ``max_age`` seconds.
    """
    wanted = state.encode("utf-8", "surrogatepass")
    found: PendingLogin | None = None
    rest: list[PendingLogin] = []
    for login in pending:  # no early exit: every entry is compared
        if hmac.compare_digest(login.state.encode("utf-8", "surrogatepass"), wanted):
            found = login
        else:
            rest.append(login)
    if found is None or not state:
        raise LoginRefused("state")
    if now - found.issued > max_age:
        raise LoginRefused("expired")
    return found, rest


def state_key(state: str) -> str:
    """The store key that spends ``state`` (a digest: the state itself is never stored)."""
    return "login-state:" + hashlib.sha256(state.encode("utf-8", "surrogatepass")).hexdigest()


def encode_pending(pending: Iterable[PendingLogin]) -> bytes:
    """Serialise pending logins as JSON, for the caller to seal."""
    return json.dumps([asdict(login) for login in pending], separators=(",", ":")).encode()


def decode_pending(data: bytes) -> list[PendingLogin]:
    """Parse :func:`encode_pending` output; raises ValueError on anything else."""
    try:
        items = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise ValueError("malformed login state") from None
    if not isinstance(items, list):
        raise ValueError("malformed login state")
    return [_pending_from(item) for item in items]


def _pending_from(item: Any) -> PendingLogin:
    if not isinstance(item, dict) or sorted(item) != sorted(_FIELDS):
        raise ValueError("malformed login state")
    strings = [item[name] for name in _FIELDS[:-1]]
    issued = item["issued"]
    if not all(isinstance(value, str) and value for value in strings):
        raise ValueError("malformed login state")
    if not isinstance(issued, int) or isinstance(issued, bool) or issued < 0:
        raise ValueError("malformed login state")
    return PendingLogin(**item)


# --- Identity ------------------------------------------------------------------------------


def identity_from_claims(claims: Mapping[str, Any], *, roles_map: Mapping[str, str]) -> Identity:
    """The :class:`Identity` in validated ID token ``claims`` (SPEC §6), read by
    :func:`iap.domain.claims.user`.

    Entra app roles (``roles``) and group ids (``groups``) found in ``roles_map``
    (``tokens.roles``) become internal roles; unmapped ones grant nothing.
    Raises :class:`LoginRefused` (``claims``) without ``tid`` or ``oid``, or for a claim of
    the wrong type.
    """
    try:
        return read.user(claims, roles_map=roles_map)
    except read.InvalidClaim:
        raise LoginRefused("claims") from None
