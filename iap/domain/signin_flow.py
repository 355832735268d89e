"""The browser sign-in as a pure OIDC flow: values in, values out (SPEC §7 Login, Sessions).

The web layer drives it the way httpx drives an auth flow: each step says what to do next,
the driver does that I/O (the token endpoint, the JWKS, Graph, the store, the cookies) and
hands the answer to the next step.

    start_login(rp, rd, pending, now, random)  -> LoginStarted(url, pending)
    callback(params, pending, now)             -> RedeemCode | Refused | Malformed
    id_token_of(tokens)                        -> the ID token | Refused
    identity(rp, tokens, claims, groups)       -> NeedGroups | Identity | Refused
    signed_in(rp, redeem, tokens, claims, identity, now, random) -> SignedIn(session, target)
    session_check(policy, session, now)        -> Ended | Refresh | Touch | Keep
    refreshed(session, tokens, identity, now)  -> Session
    logout(rp, params, session, end_session)   -> the location to redirect to

Invariants:
- No I/O, no clock and no randomness of its own: ``now`` and ``random`` are arguments.
- A callback is redeemed only for a pending login whose ``state`` matches: any other query is
  refused or malformed, whatever else it holds. The login it names is taken out of the
  pending logins it returns, and :attr:`RedeemCode.replay_key` names the state for the
  store, so a state that was spent once never redeems again (login.take_pending).
- A callback with ``error`` (the user cancelled, the IdP refused) spends its login too.
- Redirect targets pass ``RedirectPolicy.target`` when a login starts, again before the
  browser is sent there, and for a logout.
- Groups overage (Entra's ``_claim_names.groups``) is resolved from Graph, or refused with
  ``groups_overage`` when configured to deny or no access token came; past
  :data:`MAX_SESSION_GROUPS` groups a session keeps only those a decision can use.
- Refusal reasons are short codes for the audit line; no step returns a token in one.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urljoin

from iap.domain import idtoken
from iap.domain import login as logins
from iap.domain import session as sessions
from iap.domain.login import LoginRefused, PendingLogin
from iap.domain.redirects import RedirectPolicy
from iap.domain.session import Session
from iap.model import Identity

CALLBACK_PATH = "/.iap/callback"
MAX_PARAM = 4096
"""Longest query or form value a sign-in endpoint reads; longer ones read as absent."""
MAX_SESSION_GROUPS = 200
"""Past this many groups a session keeps only those named in ``tokens.roles`` or a policy."""
_SID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


@dataclass(frozen=True)
class RelyingParty:
    """What the flow needs to know about iap as an OIDC client; built once at startup."""

    client_id: str
    public_url: str  # without a trailing slash
    scopes: tuple[str, ...]
    response_mode: str
    allowed_tenants: Collection[str]
    clock_skew: int
    groups_overage: str
    roles_map: Mapping[str, str]
    relevant_groups: frozenset[str]
    redirects: RedirectPolicy

    @property
    def redirect_uri(self) -> str:
        """The callback URL registered with the IdP."""
        return self.public_url + CALLBACK_PATH

    @property
    def scope(self) -> str:
        """The ``scope`` parameter of token requests."""
        return " ".join(self.scopes)


@dataclass(frozen=True)
class TokenResponse:
    """What a successful code or refresh grant returned."""

    id_token: str | None
    access_token: str | None
    refresh_token: str | None
    expires_in: int


# --- the steps' values ---------------------------------------------------------------------


@dataclass(frozen=True)
class LoginStarted:
    """Send the browser to ``url``; remember ``pending`` in the login-state cookie."""

    url: str
    pending: list[PendingLogin]


@dataclass(frozen=True)
class RedeemCode:
    """Write ``remaining`` back, take the store lock ``replay_key``, then redeem ``code``
    with ``login.verifier``."""

    code: str
    login: PendingLogin
    remaining: list[PendingLogin]
    replay_key: str


@dataclass(frozen=True)
class Refused:
    """No session: ``reason`` is for the audit line. ``remaining``, when not None, are the
    pending logins to write back (the refused login is spent)."""

    reason: str
    remaining: list[PendingLogin] | None = None

    @property
    def audit(self) -> str:
        """The audit line's reason (``login_refused:<reason>``)."""
        return f"login_refused:{self.reason}"


@dataclass(frozen=True)
class Malformed:
    """Not a callback at all: 400."""

    detail: str


@dataclass(frozen=True)
class NeedGroups:
    """Ask Graph for the user's groups with ``access_token``, then call the step again."""

    access_token: str


@dataclass(frozen=True)
class SignedIn:
    """Save ``session``, set its cookie and send the browser to ``target``."""

    session: Session
    target: str


@dataclass(frozen=True)
class SessionPolicy:
    """When sessions end (``session.lifetime`` and ``session.idle_timeout``)."""

    lifetime: float
    idle_timeout: float


@dataclass(frozen=True)
class Ended:
    """The session is over: clear its cookie; ``reason`` is the audit line's."""

    reason: str


@dataclass(frozen=True)
class Refresh:
    """The IdP's tokens are due: refresh the session before it counts."""


@dataclass(frozen=True)
class Touch:
    """The session counts; write back ``session`` (its ``seen`` moved)."""

    session: Session


@dataclass(frozen=True)
class Keep:
    """The session counts as it is; nothing to write."""


KEEP, REFRESH = Keep(), Refresh()
"""The steps without fields, made once: the session check runs on every signed-in request."""


# --- login and callback --------------------------------------------------------------------


def param(values: Mapping[str, Any], name: str) -> str:
    """A query or form value as text; "" when absent, not text or over :data:`MAX_PARAM`."""
    value = values.get(name, "")
    if not isinstance(value, str) or len(value) > MAX_PARAM:
        return ""
    return value


def start_login(
    rp: RelyingParty,
    *,
    authorize_endpoint: str,
    rd: str,
    pending: Sequence[PendingLogin],
    now: int,
    random: Callable[[int], bytes],
) -> LoginStarted:
    """A new login to the validated ``rd``, added to the logins already in flight."""
    url, login = logins.new_login(
        authorize_endpoint=authorize_endpoint,
        client_id=rp.client_id,
        redirect_uri=rp.redirect_uri,
        scopes=rp.scopes,
        rd=rp.redirects.target(rd or "/"),
        now=now,
        response_mode=rp.response_mode,
        random=random,
    )
    return LoginStarted(url, logins.add_pending(pending, login))


def callback(
    params: Mapping[str, Any], pending: Sequence[PendingLogin], *, now: int
) -> RedeemCode | Refused | Malformed:
    """What the redirect URI's ``params`` lead to, given the logins in flight."""
    state, code = param(params, "state"), param(params, "code")
    if "error" in params:  # the user cancelled, or the IdP refused: spend the login
        try:
            _, rest = logins.take_pending(pending, state=state, now=now)
        except LoginRefused:
            return Refused("idp_error")
        return Refused("idp_error", rest)
    if not state or not code:
        return Malformed("callback without state or code")
    try:
        login, rest = logins.take_pending(pending, state=state, now=now)
    except LoginRefused as exc:
        return Refused(exc.reason)
    return RedeemCode(code, login, rest, logins.state_key(state))


def id_token_of(tokens: TokenResponse) -> str | Refused:
    """The ID token a code grant must return (OIDC Core §3.1.3.3)."""
    return Refused("no_id_token") if tokens.id_token is None else tokens.id_token


def id_token_check(
    rp: RelyingParty, token: str, *, issuer: str, nonce: str | None, now: int
) -> Callable[[Mapping[str, Any]], idtoken.Claims]:
    """Validation of ``token`` against a JWKS (the driver may refetch on an unknown kid);
    ``nonce`` is the login's, None for a refresh grant's ID token (OIDC Core §12.2)."""

    def check(jwks: Mapping[str, Any]) -> idtoken.Claims:
        return idtoken.validate(
            token,
            jwks=jwks,
            issuer=issuer,
            client_id=rp.client_id,
            nonce=nonce,
            allowed_tenants=rp.allowed_tenants,
            now=now,
            skew=rp.clock_skew,
        )

    return check


def identity(
    rp: RelyingParty,
    tokens: TokenResponse,
    claims: idtoken.Claims,
    groups: Sequence[str] | None = None,
) -> NeedGroups | Identity | Refused:
    """The identity of validated ``claims``; Graph's ``groups`` when the token had too many."""
    raw = dict(claims.raw)
    names = raw.get("_claim_names")
    if isinstance(names, Mapping) and "groups" in names:
        if groups is None:
            if rp.groups_overage == "deny" or tokens.access_token is None:
                return Refused("groups_overage")
            return NeedGroups(tokens.access_token)
        raw["groups"] = list(groups)
    try:
        found = logins.identity_from_claims(raw, roles_map=rp.roles_map)
    except LoginRefused as exc:
        return Refused(exc.reason)
    if len(found.groups) > MAX_SESSION_GROUPS:
        # Keep what a decision can use: the session must fit its cookie (SPEC §6: bounded).
        kept = tuple(g for g in found.groups if g in rp.relevant_groups)
        found = dataclasses.replace(found, groups=kept)
    return found


def signed_in(
    rp: RelyingParty,
    redeem: RedeemCode,
    tokens: TokenResponse,
    claims: idtoken.Claims,
    found: Identity,
    *,
    now: int,
    random: Callable[[int], bytes],
) -> SignedIn:
    """A new session (a new id: no fixation) and where the browser goes next."""
    assert tokens.id_token is not None  # the claims were validated from it
    session = sessions.new_session(
        found,
        sid=claims.sid,
        id_token=tokens.id_token,
        refresh_token=tokens.refresh_token,
        expires_in=tokens.expires_in,
        now=now,
        random=random,
    )
    return SignedIn(session, rp.redirects.target(redeem.login.rd))


# --- the session on each request, and its refresh -----------------------------------------


def session_check(
    policy: SessionPolicy, session: Session, *, now: int
) -> Ended | Refresh | Touch | Keep:
    """What a request carrying ``session`` at ``now`` needs done (``sessions.state``)."""
    status = sessions.state(
        session, now=now, lifetime=policy.lifetime, idle_timeout=policy.idle_timeout
    )
    if status in ("expired", "idle"):
        return Ended(f"session_{status}")
    if status == "stale":
        return REFRESH
    touched = sessions.touched(session, now=now, idle_timeout=policy.idle_timeout)
    return KEEP if touched is None else Touch(touched)


def refresh_token(session: Session) -> str:
    """The refresh token to redeem; ValueError when the session has none."""
    if session.refresh_token is None:
        raise ValueError("no refresh token")
    return session.refresh_token


def refreshed(session: Session, tokens: TokenResponse, found: Identity, *, now: int) -> Session:
    """``session`` after a refresh grant (ValueError when it names another user)."""
    return sessions.refreshed(
        session,
        identity=found,
        id_token=tokens.id_token,
        refresh_token=tokens.refresh_token,
        expires_in=tokens.expires_in,
        now=now,
    )


# --- logout and what a signed-in user may see ---------------------------------------------


def logout(
    rp: RelyingParty,
    params: Mapping[str, Any],
    *,
    session: Session | None,
    end_session_endpoint: object,
    default: str = "/",
) -> str:
    """Where a logout sends the browser: the IdP's end-session endpoint when it has one
    (OIDC RP-Initiated Logout §2), with the validated target to come back to."""
    target = rp.redirects.target(
        param(params, "post_logout_redirect_uri") or param(params, "rd") or default
    )
    if not isinstance(end_session_endpoint, str):
        return target
    query = {"post_logout_redirect_uri": urljoin(rp.public_url + "/", target)}
    if session is not None:
        query["id_token_hint"] = session.id_token
    query["client_id"] = rp.client_id
    separator = "&" if "?" in end_session_endpoint else "?"
    return end_session_endpoint + separator + urlencode(query)


def frontchannel_sid(params: Mapping[str, Any]) -> str | None:
    """The IdP session a front-channel logout ends, or None when ``sid`` is not one."""
    sid = param(params, "sid")
    return sid if _SID.fullmatch(sid) else None


def userinfo(found: Identity, session: Session, *, lifetime: float) -> dict[str, Any]:
    """``/.iap/userinfo``: the identity and when the session ends; never a token."""
    return {
        "sub": found.subject,
        "tid": found.tid,
        "oid": found.oid,
        "name": found.name,
        "email": found.email,
        "preferred_username": found.preferred_username,
        "roles": list(found.roles),
        "groups": list(found.groups),
        "session_expires_at": sessions.expires_at(session, lifetime=lifetime),
    }
