"""The dev IdP: a real OpenID Connect provider on loopback, shaped like Entra ID v2.0.

URL shapes follow ``https://login.microsoftonline.com``: ``/{tenant}/v2.0/.well-known/
openid-configuration``, ``/{tenant}/oauth2/v2.0/{authorize,token,logout}`` and
``/{tenant}/discovery/v2.0/keys``, where ``{tenant}`` is a tenant id, ``organizations`` or
``common``. For the multi-tenant authorities the issuer is the literal template
``{base}/{tenantid}/v2.0`` and every published key carries its own ``issuer``, as Entra does.
A small Microsoft Graph stand-in answers ``getMemberObjects`` for groups overage.

It serves demo users only, keeps everything in memory and refuses every peer that is not
a loopback address. Never expose it: it signs in anyone who clicks a button.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import html
import ipaddress
import json
import re
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, RSAKey
from yarl import URL

TENANT_A = "6f0e8e7a-3c2b-4d1a-9e8f-1a2b3c4d5e6f"
TENANT_B = "0b1c2d3e-4f50-4a6b-8c7d-9e0f1a2b3c4d"
STAFF_GROUP_ID = "5d2c1b0a-9e8f-4a7b-8c6d-3e2f1a0b9c8d"
TENANT_NAMES = {TENANT_A: "Contoso (tenant A)", TENANT_B: "Fabrikam (tenant B)"}
MULTI_TENANT = ("organizations", "common")
TENANT_TEMPLATE = "{tenantid}"
GRAPH_AUDIENCE = "https://graph.microsoft.com"
#: Entra's limit is 200 groups in a JWT; the demo keeps a lower one so that a user with
#: 150 groups exercises the overage path (``_claim_names``) without a huge fixture.
GROUPS_CLAIM_LIMIT = 100

_GROUPS_NAMESPACE = uuid.UUID("2b1f8f4e-7c55-4b8e-a6a1-2f0f6a9d1c11")
_VERIFIER = re.compile(r"[A-Za-z0-9\-._~]{43,128}")
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


@dataclass(frozen=True)
class DemoUser:
    key: str
    name: str
    tid: str
    oid: str
    email: str
    roles: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()


def _many_groups(count: int) -> tuple[str, ...]:
    others = (str(uuid.uuid5(_GROUPS_NAMESPACE, f"group-{n}")) for n in range(count - 1))
    return (STAFF_GROUP_ID, *others)


DEMO_USERS: tuple[DemoUser, ...] = (
    DemoUser(
        "alice",
        "Alice Admin",
        TENANT_A,
        "a11ce000-0000-4000-8000-00000000000a",
        "alice@contoso.example",
        roles=("Edge.Admin",),
    ),
    DemoUser(
        "bob",
        "Bob Staff",
        TENANT_A,
        "b0b00000-0000-4000-8000-00000000000b",
        "bob@contoso.example",
        groups=(STAFF_GROUP_ID,),
    ),
    DemoUser(
        "eve",
        "Eve Outsider",
        TENANT_B,
        "e7e00000-0000-4000-8000-00000000000e",
        "eve@fabrikam.example",
    ),
    DemoUser(
        "olivia",
        "Olivia Overage",
        TENANT_A,
        "011a1a00-0000-4000-8000-000000000010",
        "olivia@contoso.example",
        groups=_many_groups(150),
    ),
)
USERS = {user.key: user for user in DEMO_USERS}


def is_loopback(remote: str | None) -> bool:
    """True for 127.0.0.0/8, ``::1`` and IPv4-mapped loopback; False for anything else."""
    if not remote:
        return False
    try:
        address = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def pkce_challenge(verifier: str) -> str:
    """The S256 code challenge for ``verifier`` (RFC 7636 §4.2)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


@dataclass
class _Code:
    client_id: str
    redirect_uri: str
    code_challenge: str
    nonce: str
    user: DemoUser
    scopes: tuple[str, ...]
    sid: str
    expires: float


@dataclass
class _Grant:
    client_id: str
    user: DemoUser
    scopes: tuple[str, ...]
    sid: str
    family: str
    expires: float


@dataclass
class _AccessToken:
    user: DemoUser
    client_id: str
    expires: float


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
        headers = dict(_NO_STORE)
        if self.status == 401:
            headers["WWW-Authenticate"] = 'Basic realm="dev-idp"'
        return web.json_response(body, status=self.status, headers=headers)


IdTokenHook = Callable[[dict[str, Any], dict[str, Any]], str]


@dataclass
class DevIdP:
    """The IdP's state; tests read its counters and may rotate keys or shift the clock."""

    base_url: str
    client_id: str
    client_secret: str
    redirect_uris: tuple[str, ...]
    post_logout_redirect_uris: tuple[str, ...] = ()
    id_token_ttl: int = 3600
    access_token_ttl: int = 3600
    refresh_token_ttl: int = 90 * 24 * 3600
    code_ttl: int = 600
    #: seconds the token endpoint waits before answering a refresh grant (widens races)
    refresh_delay: float = 0.0
    clock: Callable[[], float] = time.time
    #: when set, builds the compact ID token from (header, claims) instead of signing them;
    #: relying-party tests use it to forge bad tokens (``sign`` is available to it)
    id_token_hook: IdTokenHook | None = None
    # counters
    discovery_fetches: int = 0
    jwks_fetches: int = 0
    authorizations: int = 0
    code_grants: int = 0
    refresh_grants: int = 0
    graph_calls: int = 0
    logouts: list[str] = field(default_factory=list)
    # key material and grants
    keys: list[RSAKey] = field(default_factory=list)
    unpublished: set[str] = field(default_factory=set)
    signing_kid: str = ""
    codes: dict[str, _Code] = field(default_factory=dict)
    redeemed_codes: dict[str, str] = field(default_factory=dict)
    refresh_tokens: dict[str, _Grant] = field(default_factory=dict)
    access_tokens: dict[str, _AccessToken] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.keys:
            self.rotate()

    # keys ---------------------------------------------------------------------------

    def rotate(self, *, publish: bool = True) -> str:
        """Add a new RS256 key and sign with it from now on; returns its ``kid``.

        ``publish=False`` keeps the key out of the JWKS (an "unknown kid" for tests).
        """
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        key = RSAKey.import_key(private, {"use": "sig", "alg": "RS256"})
        kid = key.thumbprint()
        key = RSAKey.import_key(private, {"use": "sig", "alg": "RS256", "kid": kid})
        self.keys.append(key)
        if not publish:
            self.unpublished.add(kid)
        self.signing_kid = kid
        return kid

    def issuer(self, tenant: str) -> str:
        """``{base}/{tid}/v2.0``; the ``{tenantid}`` template for organizations/common."""
        tid = TENANT_TEMPLATE if tenant in MULTI_TENANT else tenant
        return f"{self.base_url}/{tid}/v2.0"

    def jwks(self, tenant: str) -> dict[str, Any]:
        published = [key for key in self.keys if key.kid not in self.unpublished]
        return {
            "keys": [
                key.as_dict(private=False, issuer=self.issuer(tenant), x5t=key.kid)
                for key in published
            ]
        }

    def sign(self, header: Mapping[str, Any], claims: Mapping[str, Any]) -> str:
        """Sign ``claims`` with the current key (RS256) unless ``header`` names another kid."""
        kid = header.get("kid", self.signing_kid)
        [key] = [key for key in self.keys if key.kid == kid]
        full_header = {"alg": "RS256", "typ": "JWT", **header, "kid": kid}
        return jwt.encode(full_header, dict(claims), key, algorithms=["RS256"])

    def verify(self, token: str) -> dict[str, Any]:
        """Claims of a token this IdP signed (any key, published or not); raises JoseError."""
        return jwt.decode(token, KeySet(list(self.keys)), algorithms=["RS256"]).claims

    # tokens -------------------------------------------------------------------------

    def subject(self, user: DemoUser) -> str:
        """Entra's ``sub`` is pairwise: stable per user and application."""
        digest = hashlib.sha256(f"{self.client_id}:{user.tid}:{user.oid}".encode()).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    def id_token_claims(self, user: DemoUser, *, nonce: str | None, sid: str) -> dict[str, Any]:
        now = int(self.clock())
        claims: dict[str, Any] = {
            "ver": "2.0",
            "iss": f"{self.base_url}/{user.tid}/v2.0",
            "aud": self.client_id,
            "iat": now,
            "nbf": now,
            "exp": now + self.id_token_ttl,
            "tid": user.tid,
            "oid": user.oid,
            "sub": self.subject(user),
            "name": user.name,
            "preferred_username": user.email,
            "email": user.email,
            "sid": sid,
            "uti": secrets.token_urlsafe(16),
        }
        if nonce is not None:
            claims["nonce"] = nonce
        if user.roles:
            claims["roles"] = list(user.roles)
        if len(user.groups) > GROUPS_CLAIM_LIMIT:
            claims["_claim_names"] = {"groups": "src1"}
            endpoint = f"{self.base_url}/graph/v1.0/users/{user.oid}/getMemberObjects"
            claims["_claim_sources"] = {"src1": {"endpoint": endpoint}}
        elif user.groups:
            claims["groups"] = list(user.groups)
        return claims

    def issue_tokens(
        self,
        user: DemoUser,
        *,
        scopes: tuple[str, ...],
        nonce: str | None,
        sid: str,
        family: str,
    ) -> dict[str, Any]:
        now = self.clock()
        access_claims = {
            "ver": "2.0",
            "iss": f"{self.base_url}/{user.tid}/v2.0",
            "aud": GRAPH_AUDIENCE,
            "iat": int(now),
            "nbf": int(now),
            "exp": int(now) + self.access_token_ttl,
            "tid": user.tid,
            "oid": user.oid,
            "sub": self.subject(user),
            "azp": self.client_id,
            "scp": " ".join(s for s in scopes if s not in ("openid", "offline_access")),
            "uti": secrets.token_urlsafe(16),
        }
        access_token = self.sign({}, access_claims)
        self.access_tokens[access_token] = _AccessToken(
            user, self.client_id, now + self.access_token_ttl
        )
        response: dict[str, Any] = {
            "token_type": "Bearer",
            "scope": " ".join(scopes),
            "expires_in": self.access_token_ttl,
            "ext_expires_in": self.access_token_ttl,
            "access_token": access_token,
        }
        if "openid" in scopes:
            header: dict[str, Any] = {"alg": "RS256", "typ": "JWT", "kid": self.signing_kid}
            claims = self.id_token_claims(user, nonce=nonce, sid=sid)
            hook = self.id_token_hook
            response["id_token"] = hook(header, claims) if hook else self.sign(header, claims)
        if "offline_access" in scopes:
            refresh_token = secrets.token_urlsafe(48)
            self.refresh_tokens[refresh_token] = _Grant(
                self.client_id, user, scopes, sid, family, now + self.refresh_token_ttl
            )
            response["refresh_token"] = refresh_token
        return response

    def revoke_family(self, family: str) -> None:
        for token in [t for t, g in self.refresh_tokens.items() if g.family == family]:
            del self.refresh_tokens[token]


DEV_IDP = web.AppKey("dev_idp", DevIdP)


# helpers ----------------------------------------------------------------------------


def _tenant(request: web.Request) -> str:
    tenant = request.match_info["tenant"]
    if tenant in MULTI_TENANT or tenant in TENANT_NAMES:
        return tenant
    body = {
        "error": "invalid_tenant",
        "error_description": f"AADSTS90002: Tenant '{tenant[:64]}' not found.",
        "error_codes": [90002],
    }
    raise web.HTTPBadRequest(text=json.dumps(body), content_type="application/json")


def _users_for(tenant: str) -> list[DemoUser]:
    return [u for u in DEMO_USERS if tenant in MULTI_TENANT or u.tid == tenant]


def _text(values: Mapping[str, Any], name: str) -> str:
    value = values.get(name, "")
    return value if isinstance(value, str) else ""


def _error_page(status: int, title: str, detail: str) -> web.Response:
    body = (
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>Sign in</title></head>"
        f"<body><h1>{html.escape(title)}</h1><p>{html.escape(detail)}</p></body></html>"
    )
    return web.Response(status=status, text=body, content_type="text/html", headers=_NO_STORE)


def _respond_to_client(
    redirect_uri: str, response_mode: str, params: dict[str, str]
) -> web.Response:
    """Deliver ``params`` to the client: 302 with a query, or an auto-submitted form_post."""
    if response_mode == "form_post":
        fields = "".join(
            f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
            for k, v in params.items()
        )
        body = (
            "<!doctype html><html lang=en><head><meta charset=utf-8><title>Working...</title>"
            '</head><body onload="document.forms[0].submit()">'
            f'<form method="post" action="{html.escape(redirect_uri)}">{fields}'
            "<noscript><button>Continue</button></noscript></form></body></html>"
        )
        return web.Response(text=body, content_type="text/html", headers=_NO_STORE)
    target = URL(redirect_uri).update_query(params)
    raise web.HTTPFound(str(target), headers=_NO_STORE)


@dataclass(frozen=True)
class _AuthorizeRequest:
    client_id: str
    redirect_uri: str
    scopes: tuple[str, ...]
    state: str
    nonce: str
    code_challenge: str
    response_mode: str

    PARAMS = (
        "client_id",
        "redirect_uri",
        "response_type",
        "scope",
        "state",
        "nonce",
        "code_challenge",
        "code_challenge_method",
        "response_mode",
    )


def _parse_authorize(idp: DevIdP, values: Mapping[str, Any]) -> _AuthorizeRequest | web.Response:
    client_id = _text(values, "client_id")
    redirect_uri = _text(values, "redirect_uri")
    if client_id != idp.client_id:
        return _error_page(
            400, "Sign in failed", f"AADSTS700016: Application '{client_id}' was not found."
        )
    if redirect_uri not in idp.redirect_uris:
        return _error_page(
            400,
            "Sign in failed",
            "AADSTS50011: The redirect URI specified in the request does not match the "
            "redirect URIs configured for the application.",
        )
    response_mode = _text(values, "response_mode") or "query"
    state = _text(values, "state")
    if response_mode not in ("query", "form_post"):
        response_mode = "query"
        problem = "AADSTS900144: unsupported response_mode."
    else:
        problem = ""
    scopes = tuple(_text(values, "scope").split())
    if not problem:
        if _text(values, "response_type") != "code":
            problem = "AADSTS700054: response_type must be 'code'."
        elif "openid" not in scopes:
            problem = "AADSTS900144: The request body must contain scope 'openid'."
        elif not _text(values, "code_challenge"):
            problem = "AADSTS9002325: Proof Key for Code Exchange is required."
        elif _text(values, "code_challenge_method") != "S256":
            problem = "AADSTS501491: code_challenge_method must be 'S256'."
        elif not state:
            problem = "AADSTS900144: The request must contain 'state'."
        elif not _text(values, "nonce"):
            problem = "AADSTS900144: The request must contain 'nonce'."
    if problem:
        params = {"error": "invalid_request", "error_description": problem}
        if state:
            params["state"] = state
        return _respond_to_client(redirect_uri, response_mode, params)
    return _AuthorizeRequest(
        client_id,
        redirect_uri,
        scopes,
        state,
        _text(values, "nonce"),
        _text(values, "code_challenge"),
        response_mode,
    )


_LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sign in - iap dev IdP</title>
<style>body{{font:15px system-ui,sans-serif;margin:2em}}button{{display:block;margin:.5em 0;
padding:.6em 1em;min-width:22em;text-align:left}}</style></head>
<body><h1>Sign in</h1><p>iap dev IdP ({authority}). Pick a demo user:</p>
<form method="post" action="{action}">{hidden}{buttons}</form></body></html>
"""


def _login_page(request: web.Request, tenant: str, values: Mapping[str, Any]) -> web.Response:
    hidden = "".join(
        f'<input type="hidden" name="{name}" value="{html.escape(_text(values, name))}">'
        for name in _AuthorizeRequest.PARAMS
        if _text(values, name)
    )
    buttons = "".join(
        f'<button type="submit" name="user" value="{html.escape(u.key)}" id="user-{u.key}">'
        f"{html.escape(u.name)} &lt;{html.escape(u.email)}&gt; "
        f"- {html.escape(TENANT_NAMES[u.tid])}</button>"
        for u in _users_for(tenant)
    )
    body = _LOGIN_PAGE.format(
        authority=html.escape(tenant),
        action=html.escape(request.path),
        hidden=hidden,
        buttons=buttons,
    )
    return web.Response(text=body, content_type="text/html", headers=_NO_STORE)


# handlers ---------------------------------------------------------------------------


async def discovery(request: web.Request) -> web.Response:
    idp = request.app[DEV_IDP]
    tenant = _tenant(request)
    idp.discovery_fetches += 1
    base = f"{idp.base_url}/{tenant}"
    document = {
        "issuer": idp.issuer(tenant),
        "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
        "token_endpoint": f"{base}/oauth2/v2.0/token",
        "jwks_uri": f"{base}/discovery/v2.0/keys",
        "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
        "response_types_supported": ["code"],
        "response_modes_supported": ["query", "form_post"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "subject_types_supported": ["pairwise"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
        "code_challenge_methods_supported": ["S256"],
        "claims_supported": [
            "sub",
            "iss",
            "aud",
            "exp",
            "iat",
            "nbf",
            "nonce",
            "tid",
            "oid",
            "sid",
            "name",
            "preferred_username",
            "email",
            "roles",
            "groups",
        ],
        "frontchannel_logout_supported": False,
        "http_logout_supported": True,
        "request_uri_parameter_supported": False,
        "tenant_region_scope": "NA",
        "cloud_instance_name": "dev.iap.invalid",
    }
    return web.json_response(document)


async def keys(request: web.Request) -> web.Response:
    idp = request.app[DEV_IDP]
    tenant = _tenant(request)
    idp.jwks_fetches += 1
    return web.json_response(idp.jwks(tenant))


async def authorize(request: web.Request) -> web.Response:
    idp = request.app[DEV_IDP]
    tenant = _tenant(request)
    if request.method == "GET":
        values: Mapping[str, Any] = request.query
    else:
        values = await request.post()
    parsed = _parse_authorize(idp, values)
    if isinstance(parsed, web.Response):
        return parsed
    if request.method == "GET":
        return _login_page(request, tenant, values)
    user = USERS.get(_text(values, "user"))
    if user is None or user not in _users_for(tenant):
        return _error_page(400, "Sign in failed", "Pick one of the listed users.")
    idp.authorizations += 1
    code = secrets.token_urlsafe(32)
    idp.codes[code] = _Code(
        parsed.client_id,
        parsed.redirect_uri,
        parsed.code_challenge,
        parsed.nonce,
        user,
        parsed.scopes,
        str(uuid.uuid4()),
        idp.clock() + idp.code_ttl,
    )
    params = {"code": code, "state": parsed.state, "session_state": str(uuid.uuid4())}
    return _respond_to_client(parsed.redirect_uri, parsed.response_mode, params)


def _authenticate_client(idp: DevIdP, request: web.Request, form: Mapping[str, Any]) -> None:
    client_id = _text(form, "client_id")
    secret = _text(form, "client_secret")
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


def _code_grant(idp: DevIdP, form: Mapping[str, Any]) -> dict[str, Any]:
    value = _text(form, "code")
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
    if _text(form, "redirect_uri") != code.redirect_uri:
        raise OAuthError(400, "invalid_grant", 500112, "redirect_uri does not match.")
    verifier = _text(form, "code_verifier")
    if not _VERIFIER.fullmatch(verifier):
        raise OAuthError(400, "invalid_grant", 501481, "Invalid code_verifier.")
    if not hmac.compare_digest(pkce_challenge(verifier), code.code_challenge):
        raise OAuthError(400, "invalid_grant", 501481, "The code_verifier does not match.")
    idp.code_grants += 1
    return idp.issue_tokens(
        code.user, scopes=code.scopes, nonce=code.nonce, sid=code.sid, family=family
    )


def _refresh_grant(idp: DevIdP, form: Mapping[str, Any]) -> dict[str, Any]:
    value = _text(form, "refresh_token")
    grant = idp.refresh_tokens.pop(value, None) if value else None
    if grant is None or grant.expires < idp.clock():
        raise OAuthError(400, "invalid_grant", 700082, "The refresh token is not valid.")
    if grant.client_id != idp.client_id:
        raise OAuthError(400, "invalid_grant", 70000, "Refresh token of another client.")
    idp.refresh_grants += 1
    return idp.issue_tokens(
        grant.user, scopes=grant.scopes, nonce=None, sid=grant.sid, family=grant.family
    )


async def token(request: web.Request) -> web.Response:
    idp = request.app[DEV_IDP]
    _tenant(request)
    try:
        if request.content_type != "application/x-www-form-urlencoded":
            raise OAuthError(400, "invalid_request", 900144, "Expected a form body.")
        form = await request.post()
        _authenticate_client(idp, request, form)
        grant_type = _text(form, "grant_type")
        if grant_type == "authorization_code":
            body = _code_grant(idp, form)
        elif grant_type == "refresh_token":
            if idp.refresh_delay:
                await asyncio.sleep(idp.refresh_delay)
            body = _refresh_grant(idp, form)
        else:
            raise OAuthError(
                400, "unsupported_grant_type", 70003, f"Grant type '{grant_type[:40]}' unsupported."
            )
    except OAuthError as error:
        return error.response()
    return web.json_response(body, headers=_NO_STORE)


async def logout(request: web.Request) -> web.Response:
    idp = request.app[DEV_IDP]
    _tenant(request)
    values: Mapping[str, Any] = request.query if request.method == "GET" else await request.post()
    hint = _text(values, "id_token_hint")
    target = _text(values, "post_logout_redirect_uri")
    sid = ""
    if hint:
        try:
            claims = idp.verify(hint)
        except JoseError:
            return _error_page(400, "Sign out failed", "The id_token_hint is not valid.")
        if claims.get("aud") != idp.client_id:
            return _error_page(400, "Sign out failed", "The id_token_hint is for another app.")
        sid = str(claims.get("sid", ""))
    if target and target not in (*idp.redirect_uris, *idp.post_logout_redirect_uris):
        return _error_page(
            400, "Sign out failed", "post_logout_redirect_uri is not registered for the app."
        )
    idp.logouts.append(sid)
    if not target:
        return _error_page(200, "You signed out", "You can close this window.")
    params = {"state": _text(values, "state")} if _text(values, "state") else {}
    raise web.HTTPFound(str(URL(target).update_query(params)), headers=_NO_STORE)


def _graph_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


async def get_member_objects(request: web.Request) -> web.Response:
    idp = request.app[DEV_IDP]
    authorization = request.headers.get("Authorization", "")
    bearer = authorization[7:] if authorization[:7].lower() == "bearer " else ""
    issued = idp.access_tokens.get(bearer)
    if issued is None or issued.expires < idp.clock():
        return _graph_error(401, "InvalidAuthenticationToken", "Access token is invalid.")
    oid = request.match_info.get("oid", issued.user.oid)
    user = next((u for u in DEMO_USERS if u.oid == oid), None)
    if user is None or user.tid != issued.user.tid:
        return _graph_error(404, "Request_ResourceNotFound", f"Resource '{oid}' not found.")
    idp.graph_calls += 1
    return web.json_response(
        {
            "@odata.context": f"{idp.base_url}/graph/v1.0/$metadata#Collection(Edm.String)",
            "value": list(user.groups),
        }
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def loopback_only(request: web.Request, handler: Handler) -> web.StreamResponse:
    """403 for any peer that is not a loopback address."""
    if not is_loopback(request.remote):
        return web.Response(status=403, text="dev IdP: loopback peers only\n")
    return await handler(request)


def dev_idp_app(
    base_url: str,
    *,
    client_id: str,
    client_secret: str,
    redirect_uris: Sequence[str],
    post_logout_redirect_uris: Sequence[str] = (),
) -> web.Application:
    """The dev IdP as an aiohttp application; its state is ``app[DEV_IDP]``."""
    host = URL(base_url).host
    if host not in ("127.0.0.1", "::1", "localhost"):
        raise ValueError(f"the dev IdP serves loopback only, not {host!r}")
    app = web.Application(middlewares=[loopback_only])
    app[DEV_IDP] = DevIdP(
        base_url.rstrip("/"),
        client_id,
        client_secret,
        tuple(redirect_uris),
        tuple(post_logout_redirect_uris),
    )
    tenant = "/{tenant}"
    app.router.add_get(f"{tenant}/v2.0/.well-known/openid-configuration", discovery)
    app.router.add_get(f"{tenant}/discovery/v2.0/keys", keys)
    app.router.add_route("GET", f"{tenant}/oauth2/v2.0/authorize", authorize)
    app.router.add_route("POST", f"{tenant}/oauth2/v2.0/authorize", authorize)
    app.router.add_post(f"{tenant}/oauth2/v2.0/token", token)
    app.router.add_route("GET", f"{tenant}/oauth2/v2.0/logout", logout)
    app.router.add_route("POST", f"{tenant}/oauth2/v2.0/logout", logout)
    app.router.add_post("/graph/v1.0/users/{oid}/getMemberObjects", get_member_objects)
    app.router.add_post("/graph/v1.0/me/getMemberObjects", get_member_objects)
    return app


@dataclass
class RunningDevIdP:
    runner: web.AppRunner
    idp: DevIdP

    @property
    def url(self) -> str:
        return self.idp.base_url

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_dev_idp(
    *,
    client_id: str,
    client_secret: str,
    redirect_uris: Sequence[str],
    post_logout_redirect_uris: Sequence[str] = (),
    port: int = 0,
) -> RunningDevIdP:
    """Serve the dev IdP on 127.0.0.1:``port`` (0: any free port); ``base_url`` follows."""
    app = dev_idp_app(
        f"http://127.0.0.1:{port}",
        client_id=client_id,
        client_secret=client_secret,
        redirect_uris=redirect_uris,
        post_logout_redirect_uris=post_logout_redirect_uris,
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    idp = app[DEV_IDP]
    idp.base_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    return RunningDevIdP(runner, idp)
