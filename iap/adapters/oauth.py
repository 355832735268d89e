"""The relying party's back-channel calls: the token endpoint and Microsoft Graph
(SPEC §7 Login; Entra "groups overage").

Invariants:
- Calls go through :class:`iap.adapters.idp.Fetcher` rules: https (http on loopback only),
  no redirects followed, no cookies or trace headers, bodies bounded.
- The client authenticates with ``client_secret_post`` or a certificate (``private_key_jwt``,
  a fresh assertion per call); the form body is built by authlib, never logged.
- A token endpoint that answers with an OAuth error raises :class:`TokenRefused` (the grant
  is bad: the login or session ends); no connection, a timeout or a 5xx raises
  :class:`~iap.adapters.idp.IdpUnreachable` (the IdP is down: a session may ride it out);
  anything else that goes wrong raises :class:`~iap.adapters.idp.IdpUnavailable`. No
  message carries a token or secret.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
from authlib.oauth2.rfc6749.parameters import prepare_token_request

from iap.adapters.idp import Fetcher, IdpUnavailable, IdpUnreachable, require_https
from iap.domain.client_auth import ClientCertificate, assertion_form
from iap.domain.signin_flow import TokenResponse
from iap.errors import IapError

__all__ = ["ClientCredential", "OAuthClient", "TokenRefused", "TokenResponse"]

_OAUTH_ERROR = {400, 401}
MAX_GROUPS = 2000
"""Groups accepted from Graph for one user; more is refused rather than truncated."""


class TokenRefused(IapError):
    """The token endpoint refused the grant; ``error`` is its OAuth error code."""

    def __init__(self, error: str) -> None:
        super().__init__("The identity provider refused the grant.")
        self.error = error


@dataclass(frozen=True, repr=False)
class ClientCredential:
    """How iap authenticates to the token endpoint: a secret or a certificate."""

    client_id: str
    secret: str | None = None
    certificate: ClientCertificate | None = None

    def form(self, token_endpoint: str) -> dict[str, str]:
        if self.certificate is not None:
            return assertion_form(
                self.certificate,
                client_id=self.client_id,
                token_endpoint=token_endpoint,
                now=int(time.time()),
                jti=secrets.token_urlsafe(32),  # 256 bits: a fresh assertion per call
            )
        return {"client_id": self.client_id, "client_secret": self.secret or ""}


class OAuthClient:
    """Code redemption, refresh and Graph ``getMemberObjects`` for one registered client."""

    def __init__(self, fetcher: Fetcher, credential: ClientCredential) -> None:
        self._fetcher = fetcher
        self._credential = credential

    async def redeem_code(
        self, token_endpoint: str, *, code: str, redirect_uri: str, verifier: str, scopes: str
    ) -> TokenResponse:
        """The authorization code grant with the PKCE verifier (RFC 6749 §4.1.3, RFC 7636)."""
        body = prepare_token_request(
            "authorization_code",
            code=code,
            redirect_uri=redirect_uri,
            code_verifier=verifier,
            scope=scopes,
        )
        return await self._fetcher.observed(
            "token", "POST", lambda: self._grant(token_endpoint, body)
        )

    async def refresh(
        self, token_endpoint: str, *, refresh_token: str, scopes: str
    ) -> TokenResponse:
        """The refresh token grant (RFC 6749 §6)."""
        body = prepare_token_request("refresh_token", refresh_token=refresh_token, scope=scopes)
        # Its own endpoint label, so sign-ins (``token``) and refreshes count apart.
        return await self._fetcher.observed(
            "refresh", "POST", lambda: self._grant(token_endpoint, body)
        )

    async def _grant(self, token_endpoint: str, body: str) -> TokenResponse:
        form = dict(parse_qsl(body, keep_blank_values=True)) | self._credential.form(token_endpoint)
        status, document = await self._post(token_endpoint, data=form)
        if status in _OAUTH_ERROR and isinstance(document.get("error"), str):
            raise TokenRefused(document["error"][:64])
        if status != 200:
            raise IdpUnavailable
        return _token_response(document)

    async def member_groups(self, graph_url: str, access_token: str) -> tuple[str, ...]:
        """The signed-in user's group ids from Graph ``/me/getMemberObjects``."""
        return await self._fetcher.observed(
            "graph", "POST", lambda: self._member_groups(graph_url, access_token)
        )

    async def _member_groups(self, graph_url: str, access_token: str) -> tuple[str, ...]:
        url = f"{graph_url.rstrip('/')}/v1.0/me/getMemberObjects"
        status, document = await self._post(
            url,
            json_body={"securityEnabledOnly": False},
            headers={"Authorization": f"Bearer {access_token}"},
        )
        values = document.get("value")
        if status != 200 or not isinstance(values, list) or len(values) > MAX_GROUPS:
            raise IdpUnavailable
        if not all(isinstance(value, str) and 0 < len(value) <= 64 for value in values):
            raise IdpUnavailable
        return tuple(values)

    async def _post(
        self,
        url: str,
        *,
        data: dict[str, str] | None = None,
        json_body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        require_https(url)
        fetcher = self._fetcher
        try:
            async with fetcher.session.post(
                url,
                data=data,
                json=json_body,
                headers={"Accept": "application/json", **(headers or {})},
                allow_redirects=False,
                timeout=fetcher.timeout,
            ) as response:
                status = response.status
                if status >= 500:
                    raise IdpUnreachable
                raw = await fetcher.read(response)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise IdpUnreachable from exc
        try:
            document = json.loads(raw)
        except ValueError as exc:
            raise IdpUnavailable from exc
        if not isinstance(document, dict):
            raise IdpUnavailable
        return status, document


def _token_response(document: dict[str, Any]) -> TokenResponse:
    def text(name: str) -> str | None:
        value = document.get(name)
        if value is not None and (not isinstance(value, str) or not value):
            raise IdpUnavailable
        return value

    expires_in = document.get("expires_in", 3600)
    if isinstance(expires_in, str) and expires_in.isdigit():  # some IdPs send a string
        expires_in = int(expires_in)
    if not isinstance(expires_in, int) or isinstance(expires_in, bool) or expires_in <= 0:
        raise IdpUnavailable
    return TokenResponse(
        id_token=text("id_token"),
        access_token=text("access_token"),
        refresh_token=text("refresh_token"),
        expires_in=expires_in,
    )
