"""The dev IdP's aiohttp application: routes, handlers and the loopback guard.

URL shapes follow ``https://login.microsoftonline.com``: ``/{tenant}/v2.0/.well-known/
openid-configuration``, ``/{tenant}/oauth2/v2.0/{authorize,token,logout}`` and
``/{tenant}/discovery/v2.0/keys``, plus a Microsoft Graph ``getMemberObjects`` stand-in for
groups overage. ``dev_idp_app`` builds the application (state in ``app[DEV_IDP]``, the
users, services and tenants in its ``directory``: the demo one unless the caller passes
another), ``start_dev_idp`` serves it on 127.0.0.1, and ``loopback_only`` refuses every peer
that is not a loopback address. Handlers read users only from ``app[DEV_IDP].directory``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import secrets
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from joserfc.errors import JoseError
from yarl import URL

from iap.dev.idp.grants import (
    OAuthError,
    authenticate_client,
    client_credentials_grant,
    code_grant,
    refresh_grant,
)
from iap.dev.idp.pages import (
    NO_STORE,
    error_page,
    login_page,
    parse_authorize,
    respond_to_client,
    text_param,
)
from iap.dev.idp.state import DEV_IDP, Code, DevIdP
from iap.dev.idp.users import DEMO_DIRECTORY, MULTI_TENANT, Directory

#: the claims Entra's v2.0 discovery document lists
CLAIMS_SUPPORTED = (
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
)


def _tenant(request: web.Request) -> str:
    tenant = request.match_info["tenant"]
    if tenant in MULTI_TENANT or tenant in request.app[DEV_IDP].directory.tenants:
        return tenant
    body = {
        "error": "invalid_tenant",
        "error_description": f"AADSTS90002: Tenant '{tenant[:64]}' not found.",
        "error_codes": [90002],
    }
    raise web.HTTPBadRequest(text=json.dumps(body), content_type="application/json")


# handlers ---------------------------------------------------------------------------


async def discovery(request: web.Request) -> web.Response:
    idp = request.app[DEV_IDP]
    tenant = _tenant(request)
    idp.discovery_fetches += 1
    return web.json_response(provider_metadata(idp, tenant))


def provider_metadata(idp: DevIdP, tenant: str) -> dict[str, Any]:
    """The OpenID provider metadata of ``tenant``'s authority, with Entra's values."""
    base = f"{idp.base_url}/{tenant}"
    return {
        "issuer": idp.issuer(tenant),
        "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
        "token_endpoint": idp.token_endpoint(tenant),
        "jwks_uri": f"{base}/discovery/v2.0/keys",
        "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
        "response_types_supported": ["code"],
        "response_modes_supported": ["query", "form_post"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "subject_types_supported": ["pairwise"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "token_endpoint_auth_methods_supported": [
            "client_secret_post",
            "private_key_jwt",
            "client_secret_basic",
        ],
        "token_endpoint_auth_signing_alg_values_supported": ["PS256"],
        "code_challenge_methods_supported": ["S256"],
        "claims_supported": list(CLAIMS_SUPPORTED),
        "frontchannel_logout_supported": False,
        "http_logout_supported": True,
        "request_uri_parameter_supported": False,
        "tenant_region_scope": "NA",
        "cloud_instance_name": "dev.iap.invalid",
    }


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
    parsed = parse_authorize(idp, values)
    if isinstance(parsed, web.Response):
        return parsed
    if request.method == "GET":
        return login_page(request, idp.directory, tenant, values)
    user = idp.directory.user(text_param(values, "user"))
    if user is None or user not in idp.directory.users_for(tenant):
        return error_page(400, "Sign in failed", "Pick one of the listed users.")
    idp.authorizations += 1
    code = secrets.token_urlsafe(32)
    idp.codes[code] = Code(
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
    return respond_to_client(parsed.redirect_uri, parsed.response_mode, params)


async def token(request: web.Request) -> web.Response:
    idp = request.app[DEV_IDP]
    tenant = _tenant(request)
    try:
        if request.content_type != "application/x-www-form-urlencoded":
            raise OAuthError(400, "invalid_request", 900144, "Expected a form body.")
        form = await request.post()
        client_id = authenticate_client(idp, request, form, tenant=tenant)
        grant_type = text_param(form, "grant_type")
        if grant_type == "authorization_code":
            body = code_grant(idp, form, client_id)
        elif grant_type == "refresh_token":
            if idp.refresh_delay:
                await asyncio.sleep(idp.refresh_delay)
            body = refresh_grant(idp, form, client_id)
        elif grant_type == "client_credentials":
            body = client_credentials_grant(idp, form, client_id=client_id, tenant=tenant)
        else:
            raise OAuthError(
                400, "unsupported_grant_type", 70003, f"Grant type '{grant_type[:40]}' unsupported."
            )
    except OAuthError as error:
        return error.response()
    return web.json_response(body, headers=NO_STORE)


async def logout(request: web.Request) -> web.Response:
    idp = request.app[DEV_IDP]
    _tenant(request)
    values: Mapping[str, Any] = request.query if request.method == "GET" else await request.post()
    hint = text_param(values, "id_token_hint")
    target = text_param(values, "post_logout_redirect_uri")
    sid = ""
    if hint:
        try:
            claims = idp.verify(hint)
        except JoseError:
            return error_page(400, "Sign out failed", "The id_token_hint is not valid.")
        if claims.get("aud") != idp.client_id:
            return error_page(400, "Sign out failed", "The id_token_hint is for another app.")
        sid = str(claims.get("sid", ""))
    if target and target not in (*idp.redirect_uris, *idp.post_logout_redirect_uris):
        return error_page(
            400, "Sign out failed", "post_logout_redirect_uri is not registered for the app."
        )
    idp.logouts.append(sid)
    if not target:
        return error_page(200, "You signed out", "You can close this window.")
    params = {"state": text_param(values, "state")} if text_param(values, "state") else {}
    raise web.HTTPFound(str(URL(target).update_query(params)), headers=NO_STORE)


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
    user = idp.directory.user_by_oid(oid)
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


_TRACE_HEADERS = ("traceparent", "tracestate", "baggage", "b3", "x-b3-traceid", "uber-trace-id")


@web.middleware
async def loopback_only(request: web.Request, handler: Handler) -> web.StreamResponse:
    """403 for any peer that is not a loopback address; counts trace context received;
    ``outage_status`` for everything while an outage is staged."""
    if not is_loopback(request.remote):
        return web.Response(status=403, text="dev IdP: loopback peers only\n")
    try:
        idp = request.app[DEV_IDP]
    except KeyError:  # the middleware on its own, outside the dev IdP's app
        return await handler(request)
    if any(name in request.headers for name in _TRACE_HEADERS):
        idp.trace_headers_seen += 1
    if idp.outage_status is not None:
        idp.outage_requests.append(request.path)
        return web.Response(status=idp.outage_status, text="dev IdP: outage\n")
    return await handler(request)


def dev_idp_app(
    base_url: str,
    *,
    client_id: str,
    client_secret: str,
    redirect_uris: Sequence[str],
    post_logout_redirect_uris: Sequence[str] = (),
    client_certificate_pem: bytes | None = None,
    directory: Directory = DEMO_DIRECTORY,
) -> web.Application:
    """The dev IdP as an aiohttp application; its state is ``app[DEV_IDP]``.

    ``client_certificate_pem`` registers an RSA certificate for ``private_key_jwt`` client
    authentication (Entra "certificate credentials"); the secret keeps working beside it.
    ``directory`` holds the tenants, users and service clients it serves.
    """
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
        client_certificate_pem=client_certificate_pem,
        directory=directory,
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
    client_certificate_pem: bytes | None = None,
    directory: Directory = DEMO_DIRECTORY,
    port: int = 0,
) -> RunningDevIdP:
    """Serve the dev IdP on 127.0.0.1:``port`` (0: any free port); ``base_url`` follows.

    ``directory`` is the tenants, users and service clients it serves (the demo ones).
    """
    app = dev_idp_app(
        f"http://127.0.0.1:{port}",
        client_id=client_id,
        client_secret=client_secret,
        redirect_uris=redirect_uris,
        post_logout_redirect_uris=post_logout_redirect_uris,
        client_certificate_pem=client_certificate_pem,
        directory=directory,
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    idp = app[DEV_IDP]
    idp.base_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    return RunningDevIdP(runner, idp)
