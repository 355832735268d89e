"""The dev IdP's token endpoint logic: client authentication and the three grants.

``authenticate_client`` accepts ``client_secret_post``, ``client_secret_basic`` or
``private_key_jwt`` (exactly one of them) and answers the client id it authenticated: the
registered relying party (any method) or a service of the IdP's directory (a secret, in its
own tenant only).
Every grant then checks that what it redeems was issued to that client. A client assertion
(RFC 7523 §3, RFC 7521 §4.2) is judged as Entra does: header ``alg`` exactly PS256 and
``x5t#S256`` naming the registered certificate before any signature check, the signature
verified with that certificate's key only, then ``iss == sub ==`` the client, ``aud`` the
token endpoint of the tenant in the URL, integer ``exp``/``nbf``/``iat`` within 60 s skew
and ten minutes, and a ``jti`` never accepted before. ``code_grant`` redeems an
authorization code once, checking expiry, client, redirect URI and the PKCE verifier, and
revokes the whole refresh family on replay; ``refresh_grant`` rotates a refresh token within
its family; ``client_credentials_grant`` (RFC 6749 §4.4) issues one app-only access token
for exactly one ``{resource}/.default`` scope at a tenant-specific authority, never a
refresh or ID token. Failures raise ``OAuthError``, which renders the Entra-shaped JSON
error body.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import time
import uuid
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from joserfc import jwt
from joserfc.errors import JoseError

from iap.dev.idp.pages import NO_STORE, text_param
from iap.dev.idp.state import ClientCertificateKey, DevIdP
from iap.dev.idp.users import MULTI_TENANT
from iap.domain.client_auth import ALGORITHM, JWT_BEARER, MAX_LIFETIME

_VERIFIER = re.compile(r"[A-Za-z0-9\-._~]{43,128}")
#: clock skew tolerated on a client assertion's ``nbf`` and ``iat``
ASSERTION_SKEW = 60
MAX_ASSERTION_LENGTH = 16 * 1024
DEFAULT_SCOPE_SUFFIX = "/.default"
MAX_RESOURCE_LENGTH = 512
#: an app ID URI (``api://edge``, ``https://contoso.example/api``) or an application id
_RESOURCE = re.compile(
    r"[A-Za-z][A-Za-z0-9+.\-]*:[!-~]+|[0-9A-Fa-f]{8}(?:-[0-9A-Fa-f]{4}){3}-[0-9A-Fa-f]{12}"
)


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


def authenticate_client(
    idp: DevIdP, request: web.Request, form: Mapping[str, Any], *, tenant: str
) -> str:
    """Authenticate the caller of ``tenant``'s token endpoint; returns its client id.

    The registered client may use any method; a demo service only its secret.
    """
    if "client_assertion" in form or "client_assertion_type" in form:
        authenticate_assertion(idp, request, form, idp.token_endpoint(tenant))
        return idp.client_id
    client_id, secret = _secret_credentials(request, form)
    expected = _registered_secret(idp, client_id, tenant)
    if not secret:
        raise OAuthError(
            401, "invalid_client", 7000218, "The request must contain 'client_secret'."
        )
    if not hmac.compare_digest(secret.encode(), expected.encode()):
        raise OAuthError(401, "invalid_client", 7000215, "Invalid client secret provided.")
    return client_id


def _secret_credentials(request: web.Request, form: Mapping[str, Any]) -> tuple[str, str]:
    """``client_id`` and secret from the form (post) or the Authorization header (basic)."""
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
    return client_id, secret


def _registered_secret(idp: DevIdP, client_id: str, tenant: str) -> str:
    """The secret of ``client_id``; a service is found in its own tenant (or a multi one)."""
    if client_id == idp.client_id:
        return idp.client_secret
    service = idp.directory.service(client_id)
    if service is None:
        raise OAuthError(400, "unauthorized_client", 700016, f"Application '{client_id}' unknown.")
    if service.tid != tenant and tenant not in MULTI_TENANT:
        raise OAuthError(
            400,
            "unauthorized_client",
            700016,
            f"Application '{client_id}' was not found in the directory '{tenant}'.",
        )
    return service.secret


def authenticate_assertion(
    idp: DevIdP, request: web.Request, form: Mapping[str, Any], token_endpoint: str
) -> None:
    """``private_key_jwt``: a PS256 JWT signed by the registered certificate's key."""
    basic = request.headers.get("Authorization", "")[:6].lower() == "basic "
    if basic or "client_secret" in form:
        raise OAuthError(400, "invalid_request", 90023, "Multiple client credentials.")
    if text_param(form, "client_assertion_type") != JWT_BEARER:
        raise OAuthError(400, "invalid_request", 70002, "Unsupported client_assertion_type.")
    client_id = text_param(form, "client_id")
    if idp.directory.service(client_id) is not None and client_id != idp.client_id:
        raise _invalid_client(700027, "No certificate is registered for the application.")
    if client_id and client_id != idp.client_id:
        raise OAuthError(400, "unauthorized_client", 700016, f"Application '{client_id}' unknown.")
    if idp.client_certificate is None:
        raise _invalid_client(700027, "No certificate is registered for the application.")
    claims = verified_assertion(idp.client_certificate, text_param(form, "client_assertion"))
    _accept_claims(idp, claims, token_endpoint)
    idp.client_assertions += 1


def _accept_claims(idp: DevIdP, claims: Mapping[str, Any], token_endpoint: str) -> None:
    """RFC 7523 §3: issuer and subject, audience, validity window, then the ``jti`` once."""
    if not claims.get("iss") == claims.get("sub") == idp.client_id:
        raise _invalid_client(700021, "Client assertion application identifier doesn't match.")
    audience = claims.get("aud")
    if token_endpoint not in (audience if isinstance(audience, list) else [audience]):
        raise _invalid_client(70002, "Client assertion audience is not this token endpoint.")
    expires = _check_times(claims, idp.clock())
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti:
        raise _invalid_client(70002, "Client assertion must contain 'jti'.")
    if not idp.first_use(jti, expires):
        raise _invalid_client(70002, "Client assertion has been used before (jti).")


def _invalid_client(code: int, description: str) -> OAuthError:
    return OAuthError(401, "invalid_client", code, description)


def verified_assertion(registered: ClientCertificateKey, assertion: str) -> dict[str, Any]:
    """The claims of ``assertion`` once its header and PS256 signature are accepted.

    The header is judged before any key is touched: ``alg`` must be exactly PS256 (no
    ``none``, no HMAC keyed with the public key: RFC 8725 §2.1) and ``x5t#S256`` must name
    the registered certificate; joserfc then gets that one key and only PS256.
    """
    header = _assertion_header(assertion)
    if header.get("alg") != ALGORITHM:
        raise _invalid_client(700027, "Client assertion failed signature validation (alg).")
    if header.get("x5t#S256") != registered.x5t_s256:
        raise _invalid_client(700027, "Client assertion failed signature validation (key).")
    try:
        return jwt.decode(assertion, registered.key, algorithms=[ALGORITHM]).claims
    except JoseError:
        raise _invalid_client(700027, "Client assertion failed signature validation.") from None


def _assertion_header(assertion: str) -> dict[str, Any]:
    segments = assertion.split(".")
    if len(assertion) > MAX_ASSERTION_LENGTH or len(segments) != 3:
        raise _invalid_client(70002, "Client assertion is not a compact JWS.")
    encoded = segments[0] + "=" * (-len(segments[0]) % 4)
    try:
        header = json.loads(base64.urlsafe_b64decode(encoded.encode("ascii")))
    except (ValueError, binascii.Error, RecursionError):
        raise _invalid_client(70002, "Client assertion header is not valid.") from None
    if not isinstance(header, dict):
        raise _invalid_client(70002, "Client assertion header is not valid.")
    return header


def _check_times(claims: Mapping[str, Any], now: float) -> int:
    """``exp`` (returned) in the future, ``nbf``/``iat`` not ahead, ten minutes at most."""
    exp = _int_claim(claims, "exp")
    starts = [_int_claim(claims, "nbf")]
    if "iat" in claims:
        starts.append(_int_claim(claims, "iat"))
    if exp <= now or any(
        start > now + ASSERTION_SKEW or exp - start > MAX_LIFETIME for start in starts
    ):
        raise _invalid_client(700024, "Client assertion is not within its valid time range.")
    return exp


def _int_claim(claims: Mapping[str, Any], name: str) -> int:
    value = claims.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise _invalid_client(70002, f"Client assertion needs an integer '{name}'.")
    return value


def code_grant(idp: DevIdP, form: Mapping[str, Any], client_id: str) -> dict[str, Any]:
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
    if code.client_id != client_id:
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


def refresh_grant(idp: DevIdP, form: Mapping[str, Any], client_id: str) -> dict[str, Any]:
    value = text_param(form, "refresh_token")
    grant = idp.refresh_tokens.pop(value, None) if value else None
    if grant is None or grant.expires < idp.clock():
        raise OAuthError(400, "invalid_grant", 700082, "The refresh token is not valid.")
    if grant.client_id != client_id:
        raise OAuthError(400, "invalid_grant", 70000, "Refresh token of another client.")
    idp.refresh_grants += 1
    return idp.issue_tokens(
        grant.user, scopes=grant.scopes, nonce=None, sid=grant.sid, family=grant.family
    )


def client_credentials_grant(
    idp: DevIdP, form: Mapping[str, Any], *, client_id: str, tenant: str
) -> dict[str, Any]:
    """An app-only access token for ``client_id`` (RFC 6749 §4.4), Entra-shaped.

    Entra needs a tenant-specific authority for it. A demo service gets its own principal
    and app roles; the registered client is a principal of the tenant in the URL, no roles.
    """
    if tenant in MULTI_TENANT:
        raise OAuthError(
            400, "invalid_request", 50059, "No tenant-identifying information found in the request."
        )
    resource = default_scope_resource(text_param(form, "scope"))
    if client_id == idp.client_id:
        principal = idp.relying_party_principal(tenant)
    elif (service := idp.directory.service(client_id)) is not None:
        principal = service
    else:  # authenticate_client let through only the relying party and the services
        raise OAuthError(400, "unauthorized_client", 700016, f"Application '{client_id}' unknown.")
    idp.client_credentials_grants += 1
    return idp.issue_app_token(principal, resource)


def default_scope_resource(scope: str) -> str:
    """The resource of a client-credentials ``scope``: exactly one ``{resource}/.default``.

    The resource is an app ID URI (``api://edge``) or an application id (a GUID).
    """
    scopes = scope.split()
    if not scopes:
        raise OAuthError(
            400, "invalid_scope", 70011, "The request must include a 'scope' input parameter."
        )
    if len(scopes) > 1:
        raise OAuthError(400, "invalid_scope", 70011, "The 'scope' must name exactly one resource.")
    [value] = scopes
    if not value.endswith(DEFAULT_SCOPE_SUFFIX):
        raise OAuthError(
            400,
            "invalid_scope",
            1002012,
            f"The scope '{value[:64]}' is not valid. Client credential flows must have a scope"
            " value with /.default suffixed to the resource identifier.",
        )
    resource = value.removesuffix(DEFAULT_SCOPE_SUFFIX)
    if len(resource) > MAX_RESOURCE_LENGTH or not _RESOURCE.fullmatch(resource):
        raise OAuthError(
            400, "invalid_scope", 70011, f"The scope '{value[:64]}' is not a valid resource."
        )
    return resource
