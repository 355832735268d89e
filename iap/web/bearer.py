"""Callers with a token: ``Authorization: Bearer`` on protected routes and the RFC 8693 token
exchange at ``POST /.iap/token`` (SPEC §2 step 6, §3; issue 4).

Two kinds of bearer token are believed: Entra ID access tokens whose ``aud`` is one of
``bearer.entra_audiences`` (``iap.domain.bearer``), and iap's own minted tokens
(``iap.domain.tokens.verify``). An iap token is accepted on a route only for that route's
audience, and is then forwarded as it came; for another audience a service exchanges it.

Invariants:
- Verified tokens are cached by the SHA-256 of the token together with the key set they were
  verified against (iap's key set version, or the Entra JWKS seen last), and never past their
  ``exp``; a cached iap token still has its audience compared with the route's on every use.
- A token that fails any check answers 401 with ``WWW-Authenticate: Bearer
  error="invalid_token"``; the reason goes to the audit line only.
- An exchanged token names who asked in ``act`` (RFC 8693 §4.1): the ``actor_token``'s
  subject when one is given, otherwise the party the subject token was issued to (an Entra
  token's client application, an iap token's audience); an earlier ``act`` nests inside.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from iap.adapters.idp import IdpUnavailable
from iap.adapters.jwks import verify_with_refetch
from iap.config import Config
from iap.domain import bearer, tokens
from iap.domain import claims as read
from iap.errors import RequestError, ServiceUnavailable, Unauthenticated
from iap.model import Identity
from iap.web.minting import Minter
from iap.web.signin import SignIn

CACHE_SIZE = 8192
# RFC 8693 §2.1, §3 identifiers and RFC 6750 §3.1 challenge: names, not secrets.
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
_MAX_TOKEN = 16 * 1024
INVALID_TOKEN = 'Bearer realm="iap", error="invalid_token"'  # noqa: S105


@dataclass(frozen=True, slots=True)
class Verified:
    """A believed bearer token: who it names, until when, and what kind it was."""

    identity: Identity
    exp: int
    method: str  # "entra" or "iap"
    audience: str | None  # an iap token's ``aud``; None for Entra tokens
    claims: Mapping[str, Any]
    client: str | None = None  # the application that obtained an Entra token (azp, appid)


class Refused(Exception):
    """The bearer token is not believed; ``reason`` is for the audit line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def bearer_token(request: web.BaseRequest) -> str | None:
    """The token of ``Authorization: Bearer <token>``, if that is what the request carries."""
    value = request.headers.get("Authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class BearerAuth:
    """Verifies bearer tokens (with a cache) and answers the token exchange."""

    def __init__(
        self,
        config: Config,
        *,
        signin: SignIn | None,
        minter: Minter,
        clock: Callable[[], float] = time.time,
    ) -> None:
        assert config.tokens is not None
        self._signin = signin
        self._minter = minter
        self._issuer = config.tokens.issuer
        self._audiences = frozenset(config.bearer.entra_audiences)
        self._allowed_tenants = frozenset(config.oidc.allowed_tenants) if config.oidc else ()
        self._roles_map = dict(config.tokens.roles)
        self._clock = clock
        self._entra_version = ""
        self._cache: OrderedDict[tuple[bytes, str], Verified] = OrderedDict()
        self.apply(config)

    def apply(self, config: Config) -> None:
        """The settings a SIGHUP reload changes: accepted Entra audiences, the audiences
        routes declare and who may exchange for each. Verified tokens are forgotten: an Entra
        token was believed for audiences that may no longer be accepted."""
        self._cache.clear()
        self._audiences = frozenset(config.bearer.entra_audiences)
        self._route_audiences = frozenset(r.audience or r.name for r in config.routes)
        self._exchange_from: dict[str, frozenset[str]] = {}
        for route in config.routes:
            if route.exchange is not None:
                audience = route.audience or route.name
                allowed = self._exchange_from.get(audience, frozenset())
                self._exchange_from[audience] = allowed | frozenset(route.exchange.from_)

    async def verify(self, token: str) -> Verified:
        """The caller ``token`` names; :class:`Refused` when it is not believed."""
        now = int(self._clock())
        if len(token) > _MAX_TOKEN:
            raise Refused("bearer_malformed")
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        iap_version = self._minter.keys.current.version(now)
        for version in (iap_version, self._entra_version):
            hit = self._cache.get((digest, version))
            if hit is not None and hit.exp > now:
                self._cache.move_to_end((digest, version))
                return hit
        verified, version = await self._verify(token, now, iap_version)
        self._cache[(digest, version)] = verified
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return verified

    async def _verify(self, token: str, now: int, iap_version: str) -> tuple[Verified, str]:
        # The unverified ``iss`` only picks which verification runs; each checks everything.
        if _claimed_issuer(token) != self._issuer:
            return await self._entra(token, now), self._entra_version
        keys = tokens.public_keys(self._minter.keys.current.jwks(now)["keys"])
        try:
            claims = tokens.verify(token, keys, issuer=self._issuer, now=now)
        except tokens.InvalidToken as exc:
            raise Refused(f"bearer_{exc.reason}") from None
        return self._iap(claims), iap_version

    def _iap(self, claims: Mapping[str, Any]) -> Verified:
        try:
            identity = tokens.identity_of(claims)
            audience = read.audiences(claims)
        except tokens.InvalidToken as exc:
            raise Refused(f"bearer_{exc.reason}") from None
        except read.InvalidClaim as exc:
            raise Refused(f"bearer_{exc.reason('claims')}") from None
        return Verified(
            identity,
            claims["exp"],
            "iap",
            audience[0] if len(audience) == 1 else None,  # iap mints one audience per token
            claims,
        )

    async def _entra(self, token: str, now: int) -> Verified:
        if self._signin is None or not self._audiences:
            raise Refused("bearer_issuer")
        signin = self._signin
        try:
            keys = await signin.entra_keys()
            assert keys is not None  # without unknown_kid there is always a JWKS or an error
            return await verify_with_refetch(
                lambda jwks: self._entra_with(token, jwks, now),
                keys,
                lambda: signin.entra_keys(unknown_kid=True),
                refused=bearer.InvalidBearer,
            )
        except bearer.InvalidBearer as exc:
            raise Refused(f"bearer_{exc.reason}") from None
        except IdpUnavailable as exc:
            raise ServiceUnavailable(
                "identity provider unavailable", reason="idp_unavailable"
            ) from exc

    def _entra_with(self, token: str, keys: Mapping[str, Any], now: int) -> Verified:
        assert self._signin is not None
        self._entra_version = ",".join(sorted(str(k.get("kid")) for k in keys.get("keys", ())))
        identity, exp, client, claims = bearer.entra_identity(
            token,
            jwks=keys,
            authority=self._signin.authority,
            audiences=self._audiences,
            allowed_tenants=self._allowed_tenants,
            roles_map=self._roles_map,
            now=now,
        )
        return Verified(identity, exp, "entra", None, claims, client)

    # --- RFC 8693 token exchange ---------------------------------------------------------

    async def exchange(self, request: web.BaseRequest) -> web.StreamResponse:
        """``POST /.iap/token``: an iap token for ``audience`` in place of ``subject_token``."""
        values = await _exchange_form(request)
        subject, audience = str(values["subject_token"]), str(values["audience"])
        allowed = self._exchange_rule(audience)
        try:
            verified = await self.verify(subject)
            actor, party = await self._actor(values["actor_token"], verified)
        except Refused as exc:
            raise InvalidGrant(reason=f"exchange_{exc.reason}") from None
        if party not in allowed:  # RFC 8693 §2.2.2, RFC 6749 §4.1.2.1 access_denied
            raise AccessDenied(reason="exchange_party_not_allowed")
        try:
            token, ttl = self._minter.exchanged(
                verified.identity, audience=audience, act=_act(actor, verified), until=verified.exp
            )
        except ValueError:
            raise InvalidGrant(reason="exchange_subject_expired") from None
        body = {
            "access_token": token,
            "issued_token_type": JWT_TYPE,
            "token_type": "Bearer",
            "expires_in": ttl,
        }
        return web.Response(
            text=json.dumps(body),
            content_type="application/json",
            headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
        )

    def _exchange_rule(self, audience: str) -> frozenset[str]:
        """Who may obtain a token for ``audience`` (``routes[].exchange.from``)."""
        if audience not in self._route_audiences:
            raise InvalidTarget("no route declares this audience")
        allowed = self._exchange_from.get(audience)
        if allowed is None:
            raise InvalidTarget(
                "no route allows exchanges for this audience", reason="exchange_not_allowed"
            )
        return allowed

    async def _actor(self, actor_token: object, subject: Verified) -> tuple[str, str | None]:
        """Who asks (``act.sub``), and the party that ``exchange.from`` is checked against:
        the actor token's when one is given, else the subject token's."""
        if isinstance(actor_token, str) and actor_token:
            actor = await self.verify(actor_token)
            return actor.identity.subject, _party(actor)
        party = _party(subject)
        if subject.method == "iap" and subject.audience is not None:
            return f"{self._issuer}#{subject.audience}", party  # the service it was minted for
        if subject.client is None:
            raise Refused("bearer_no_client")
        return f"{subject.identity.tid}:{subject.client}", party  # the app that obtained it


def _party(verified: Verified) -> str | None:
    """An iap token's audience (the service holding it), an Entra token's client app."""
    return verified.audience if verified.method == "iap" else verified.client


_FORM = ("grant_type", "subject_token", "subject_token_type", "audience", "actor_token")


def _claimed_issuer(token: str) -> object:
    """The ``iss`` a compact JWS claims, before any check; None when it cannot be read."""
    return read.unverified(token).get("iss")


class OAuthRequestError(RequestError):
    """RFC 6749 §5.2 errors of the token endpoint; the JSON body's ``error`` is the code."""

    status = 400
    public = "The token request is not valid."
    reason = "invalid_request"


class UnsupportedGrantType(OAuthRequestError):
    reason = "unsupported_grant_type"


class InvalidTarget(OAuthRequestError):
    public = "No route declares this audience."
    reason = "invalid_target"  # RFC 8693 §2.2.2


class AccessDenied(OAuthRequestError):
    status = 403
    public = "This caller may not obtain a token for this audience."
    reason = "access_denied"


class InvalidGrant(OAuthRequestError):
    public = "The subject token is not valid."
    reason = "invalid_grant"


class InvalidToken(Unauthenticated):
    """RFC 6750 §3.1 ``invalid_token`` (expired, revoked, malformed or otherwise not
    believed): the JSON body's ``error`` is the header's, so a client reads one code."""

    reason = "invalid_token"


def refused(reason: str) -> Unauthenticated:
    """401 for a bearer token that is not believed (RFC 6750 §3.1)."""
    return InvalidToken(reason=reason, headers=[("WWW-Authenticate", INVALID_TOKEN)])


async def _exchange_form(request: web.BaseRequest) -> dict[str, object]:
    """The RFC 8693 form of ``POST /.iap/token``, its required fields checked."""
    if request.content_type != "application/x-www-form-urlencoded":
        raise OAuthRequestError("token exchange without a form body")
    form = await request.post()
    values: dict[str, object] = {name: form.get(name) for name in _FORM}
    if values["grant_type"] != TOKEN_EXCHANGE:
        raise UnsupportedGrantType(f"grant_type {str(values['grant_type'])[:60]!r}")
    subject, audience = values["subject_token"], values["audience"]
    if not isinstance(subject, str) or not isinstance(audience, str) or not subject:
        raise OAuthRequestError("subject_token and audience are required")
    if values["subject_token_type"] not in (ACCESS_TOKEN, JWT_TYPE):
        raise OAuthRequestError("unsupported subject_token_type")
    return values


def _act(actor: str, verified: Verified) -> dict[str, Any]:
    """The minted token's ``act``: who asks, nesting the subject token's own ``act``."""
    act: dict[str, Any] = {"sub": actor}
    earlier = read.actor(verified.claims)  # type-checked when the token was verified
    if earlier is not None:
        if read.actor_depth(earlier) >= read.MAX_ACT_DEPTH:  # each exchange nests one more
            raise InvalidGrant(reason="exchange_act_too_deep")
        act["act"] = earlier
    return act
