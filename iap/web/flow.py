"""The I/O driver of the sign-in flow (``iap.domain.signin_flow``): the token endpoint, the
ID token's keys and Graph, each called when a step of the flow asks (SPEC §7 Login).

Invariants:
- Every decision is the flow's; this module only calls the IdP through
  :class:`iap.adapters.provider.Provider` and hands the answers back.
- A refusal of the flow raises :class:`~iap.domain.login.LoginRefused`, an ID token that
  fails validation :class:`~iap.domain.idtoken.InvalidIdToken` and a refused grant
  :class:`~iap.adapters.oauth.TokenRefused`; each carries its audit reason. An IdP that does
  not answer raises :class:`~iap.adapters.idp.IdpUnavailable`. Nothing here logs a token.
- An ID token from a refresh grant is validated like a login's, without a nonce.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from iap.adapters.provider import Provider
from iap.domain import idtoken
from iap.domain import signin_flow as flow
from iap.domain.login import LoginRefused
from iap.domain.session import Session
from iap.domain.signin_flow import RelyingParty, TokenResponse
from iap.model import Identity


class FlowDriver:
    """Runs the flow's IdP steps for one relying party."""

    def __init__(
        self, rp: RelyingParty, provider: Provider, *, graph_url: str, clock: Callable[[], int]
    ) -> None:
        self._rp = rp
        self._provider = provider
        self._graph_url = graph_url
        self._clock = clock

    async def redeem(self, redeem: flow.RedeemCode, *, now: int) -> flow.SignedIn:
        """The code grant with the login's PKCE verifier, then a new session."""
        metadata = await self._provider.metadata()
        tokens = await self._provider.oauth.redeem_code(
            metadata["token_endpoint"],
            code=redeem.code,
            redirect_uri=self._rp.redirect_uri,
            verifier=redeem.login.verifier,
            scopes=self._rp.scope,
        )
        token = flow.id_token_of(tokens)
        if isinstance(token, flow.Refused):
            raise LoginRefused(token.reason)
        claims = await self._validated(token, nonce=redeem.login.nonce, now=now)
        found = await self._identity(tokens, claims)
        return flow.signed_in(self._rp, redeem, tokens, claims, found, now=now, random=os.urandom)

    async def refresh(self, session: Session) -> Session:
        """One refresh-token grant (the ``Refresh`` step); raises when it cannot be done."""
        refresh_token = flow.refresh_token(session)
        metadata = await self._provider.metadata()
        tokens = await self._provider.oauth.refresh(
            metadata["token_endpoint"], refresh_token=refresh_token, scopes=self._rp.scope
        )
        now = self._clock()
        found = session.identity
        if tokens.id_token is not None:
            claims = await self._validated(tokens.id_token, nonce=None, now=now)
            found = await self._identity(tokens, claims)
        return flow.refreshed(session, tokens, found, now=now)

    async def _validated(self, token: str, *, nonce: str | None, now: int) -> idtoken.Claims:
        issuer = (await self._provider.metadata())["issuer"]
        check = flow.id_token_check(self._rp, token, issuer=issuer, nonce=nonce, now=now)
        return await self._provider.verified(check, refused=idtoken.InvalidIdToken)

    async def _identity(self, tokens: TokenResponse, claims: idtoken.Claims) -> Identity:
        """The flow's identity step, with Graph's groups when it asks for them."""
        step = flow.identity(self._rp, tokens, claims)
        if isinstance(step, flow.NeedGroups):
            groups = await self._provider.oauth.member_groups(self._graph_url, step.access_token)
            step = flow.identity(self._rp, tokens, claims, groups)
        assert not isinstance(step, flow.NeedGroups)  # the groups were given
        if isinstance(step, flow.Refused):
            raise LoginRefused(step.reason)
        return step
