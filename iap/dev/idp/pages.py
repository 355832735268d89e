"""Browser-facing pieces of the dev IdP: the sign-in page and the authorize request.

``parse_authorize`` checks an ``/authorize`` request the way Entra does (client, redirect
URI, ``response_type=code``, ``openid`` scope, S256 PKCE, ``state`` and ``nonce``) and
answers errors either as an HTML page or back at the client; ``login_page`` renders one
button per user the IdP's directory holds for the authority; ``respond_to_client`` delivers
a result by query redirect or auto-submitted ``form_post``. ``NO_STORE`` and ``text_param``
are shared with the token endpoint and the other handlers.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from yarl import URL

from iap.dev.idp.state import DevIdP
from iap.dev.idp.users import Directory

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def text_param(values: Mapping[str, Any], name: str) -> str:
    value = values.get(name, "")
    return value if isinstance(value, str) else ""


def error_page(status: int, title: str, detail: str) -> web.Response:
    body = (
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>Sign in</title></head>"
        f"<body><h1>{html.escape(title)}</h1><p>{html.escape(detail)}</p></body></html>"
    )
    return web.Response(status=status, text=body, content_type="text/html", headers=NO_STORE)


def respond_to_client(
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
        return web.Response(text=body, content_type="text/html", headers=NO_STORE)
    target = URL(redirect_uri).update_query(params)
    raise web.HTTPFound(str(target), headers=NO_STORE)


@dataclass(frozen=True)
class AuthorizeRequest:
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


def parse_authorize(idp: DevIdP, values: Mapping[str, Any]) -> AuthorizeRequest | web.Response:
    """The checked request, or the error: a page for an unknown client or redirect URI (never
    redirect to those), otherwise an ``invalid_request`` sent back to the client."""
    client_id = text_param(values, "client_id")
    redirect_uri = text_param(values, "redirect_uri")
    refused = _unregistered(idp, client_id, redirect_uri)
    if refused is not None:
        return refused
    response_mode = text_param(values, "response_mode") or "query"
    state = text_param(values, "state")
    scopes = tuple(text_param(values, "scope").split())
    if response_mode not in ("query", "form_post"):
        response_mode = "query"
        problem = "AADSTS900144: unsupported response_mode."
    else:
        problem = _problem(values, scopes, state)
    if problem:
        params = {"error": "invalid_request", "error_description": problem}
        if state:
            params["state"] = state
        return respond_to_client(redirect_uri, response_mode, params)
    return AuthorizeRequest(
        client_id,
        redirect_uri,
        scopes,
        state,
        text_param(values, "nonce"),
        text_param(values, "code_challenge"),
        response_mode,
    )


def _unregistered(idp: DevIdP, client_id: str, redirect_uri: str) -> web.Response | None:
    """An error page unless ``client_id`` is the registered client and ``redirect_uri`` its."""
    if client_id != idp.client_id:
        return error_page(
            400, "Sign in failed", f"AADSTS700016: Application '{client_id}' was not found."
        )
    if redirect_uri not in idp.redirect_uris:
        return error_page(
            400,
            "Sign in failed",
            "AADSTS50011: The redirect URI specified in the request does not match the "
            "redirect URIs configured for the application.",
        )
    return None


def _problem(values: Mapping[str, Any], scopes: tuple[str, ...], state: str) -> str:
    """The first thing wrong with the request (Entra's wording), or "" when nothing is."""
    if text_param(values, "response_type") != "code":
        return "AADSTS700054: response_type must be 'code'."
    if "openid" not in scopes:
        return "AADSTS900144: The request body must contain scope 'openid'."
    if not text_param(values, "code_challenge"):
        return "AADSTS9002325: Proof Key for Code Exchange is required."
    if text_param(values, "code_challenge_method") != "S256":
        return "AADSTS501491: code_challenge_method must be 'S256'."
    if not state:
        return "AADSTS900144: The request must contain 'state'."
    if not text_param(values, "nonce"):
        return "AADSTS900144: The request must contain 'nonce'."
    return ""


_LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sign in - iap dev IdP</title>
<style>body{{font:15px system-ui,sans-serif;margin:2em}}button{{display:block;margin:.5em 0;
padding:.6em 1em;min-width:22em;text-align:left}}</style></head>
<body><h1>Sign in</h1><p>iap dev IdP ({authority}). Pick a demo user:</p>
<form method="post" action="{action}">{hidden}{buttons}</form></body></html>
"""


def login_page(
    request: web.Request, directory: Directory, tenant: str, values: Mapping[str, Any]
) -> web.Response:
    """The sign-in page: one button per user of ``directory`` that ``tenant`` signs in."""
    hidden = "".join(
        f'<input type="hidden" name="{name}" value="{html.escape(text_param(values, name))}">'
        for name in AuthorizeRequest.PARAMS
        if text_param(values, name)
    )
    buttons = "".join(
        f'<button type="submit" name="user" value="{html.escape(u.key)}" id="user-{u.key}">'
        f"{html.escape(u.name)} &lt;{html.escape(u.email)}&gt; "
        f"- {html.escape(directory.tenants[u.tid])}</button>"
        for u in directory.users_for(tenant)
    )
    body = _LOGIN_PAGE.format(
        authority=html.escape(tenant),
        action=html.escape(request.path),
        hidden=hidden,
        buttons=buttons,
    )
    return web.Response(text=body, content_type="text/html", headers=NO_STORE)
