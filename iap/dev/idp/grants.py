"""The dev IdP's token endpoint logic: client authentication and the two grants.

``authenticate_client`` accepts ``client_secret_post`` or ``client_secret_basic`` (never
both); ``code_grant`` redeems an authorization code once, checking expiry, client,
redirect URI and the PKCE verifier, and revokes the whole refresh family on replay;
``refresh_grant`` rotates a refresh token within its family. Failures raise ``OAuthError``,
which renders the Entra-shaped JSON error body.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
import uuid
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from iap.dev.idp.pages import NO_STORE, text_param
from iap.dev.idp.state import DevIdP

_VERIFIER = re.compile(r"[A-Za-z0-9\-._~]{43,128}")


def pkce_challenge(verifier: str) -> str:
    """The S256 code challenge for ``verifier`` (RFC 7636 §4.2)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class OAuthError(Exception):
    """An Entra-shaped token endpoint error: ``{error, error_description, error_codes}``."""

    def __init__(self, status: int, error: str, code: int, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.code = code
        self.description = description

    def response(self) -> web.Response:
        body = {
            "error": self.error,
            "error_description": f"AADSTS{self.code}: {self.description}",
            "error_codes": [self.code],
            "timestamp": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()),
            "trace_id": str(uuid.uuid4()),
            "correlation_id": str(uuid.uuid4()),
        }
        headers = dict(NO_STORE)
        if self.status == 401:
            headers["WWW-Authenticate"] = 'Basic realm="dev-idp"'
        return web.json_response(body, status=self.status, headers=headers)


def authenticate_client(idp: DevIdP, request: web.Request, form: Mapping[str, Any]) -> None:
    client_id = text_param(form, "client_id")
    secret = text_param(form, "client_secret")
    authorization = request.headers.get("Authorization", "")
    if authorization[:6].lower() == "basic ":
        try:
            decoded = base64.b64decode(authorization[6:], validate=True).decode()
        except ValueError:
            raise OAuthError(401, "invalid_client", 7000216, "Malformed credentials.") from None
        basic_id, _, basic_secret = decoded.partition(":")
        if (client_id and client_id != basic_id) or secret:
            raise OAuthError(400, "invalid_request", 90023, "Multiple client credentials.")
        client_id, secret = basic_id, basic_secret
    if not client_id:
        raise OAuthError(400, "invalid_request", 900144, "The request must contain 'client_id'.")
    if client_id != idp.client_id:
        raise OAuthError(400, "unauthorized_client", 700016, f"Application '{client_id}' unknown.")
    if not secret:
        raise OAuthError(
            401, "invalid_client", 7000218, "The request must contain 'client_secret'."
        )
    if not hmac.compare_digest(secret.encode(), idp.client_secret.encode()):
        raise OAuthError(401, "invalid_client", 7000215, "Invalid client secret provided.")


def code_grant(idp: DevIdP, form: Mapping[str, Any]) -> dict[str, Any]:
    value = text_param(form, "code")
    if not value:
        raise OAuthError(400, "invalid_request", 900144, "The request must contain 'code'.")
    if value in idp.redeemed_codes:
        # replay: refuse, and revoke what the first redemption produced (RFC 6749 §4.1.2)
        idp.revoke_family(idp.redeemed_codes[value])
        raise OAuthError(400, "invalid_grant", 54005, "Authorization code already redeemed.")
    code = idp.codes.pop(value, None)
    if code is None:
        raise OAuthError(400, "invalid_grant", 9002313, "Invalid authorization code.")
    family = str(uuid.uuid4())
    idp.redeemed_codes[value] = family
    if code.expires < idp.clock():
        raise OAuthError(400, "invalid_grant", 70008, "The authorization code has expired.")
    if code.client_id != idp.client_id:
        raise OAuthError(400, "invalid_grant", 70000, "Code issued to another client.")
    if text_param(form, "redirect_uri") != code.redirect_uri:
        raise OAuthError(400, "invalid_grant", 500112, "redirect_uri does not match.")
    verifier = text_param(form, "code_verifier")
    if not _VERIFIER.fullmatch(verifier):
        raise OAuthError(400, "invalid_grant", 501481, "Invalid code_verifier.")
    if not hmac.compare_digest(pkce_challenge(verifier), code.code_challenge):
        raise OAuthError(400, "invalid_grant", 501481, "The code_verifier does not match.")
    idp.code_grants += 1
    return idp.issue_tokens(
        code.user, scopes=code.scopes, nonce=code.nonce, sid=code.sid, family=family
    )


def refresh_grant(idp: DevIdP, form: Mapping[str, Any]) -> dict[str, Any]:
    value = text_param(form, "refresh_token")
    grant = idp.refresh_tokens.pop(value, None) if value else None
    if grant is None or grant.expires < idp.clock():
        raise OAuthError(400, "invalid_grant", 700082, "The refresh token is not valid.")
    if grant.client_id != idp.client_id:
        raise OAuthError(400, "invalid_grant", 70000, "Refresh token of another client.")
    idp.refresh_grants += 1
    return idp.issue_tokens(
        grant.user, scopes=grant.scopes, nonce=None, sid=grant.sid, family=grant.family
    )
