"""Error answers produced by iap itself (SPEC §2, "Error responses").

Invariants:
- The body holds a fixed public message, a stable error code and the correlation id,
  nothing else: no exception text, stack trace, library name or version. A browser's page
  adds who is signed in and what to do next (:mod:`iap.web.pages`); the only request-borne
  value it shows is a refusal's ``shown`` code (the IdP's ``error``), checked and escaped.
- A retry link appears only where a retry can work: not for a tenant or a groups overage
  that the configuration refuses.
- :data:`SERVER` is the ``Server`` header of everything iap answers, forwarded answers
  included: it names neither iap's version nor its libraries (SPEC §2).
"""

from __future__ import annotations

import json
import logging

from aiohttp import web

from iap.domain.negotiation import prefers_html
from iap.errors import RequestError
from iap.model import Exchange, Identity
from iap.web import pages
from iap.web.pages import Link, esc

SERVER = "iap"

log = logging.getLogger("iap")

_TITLES = {
    302: ("Sign-in required", "You are being sent to sign in."),
    400: ("Bad request", "iap could not read this request."),
    401: ("Sign-in required", "You need to sign in to see this page."),
    403: ("Access denied", "Your account does not have access to this page."),
    404: ("Not found", "There is nothing at this address."),
    405: ("Method not allowed", "This address does not accept that kind of request."),
    408: ("Request timeout", "The request did not arrive in time."),
    413: ("Payload too large", "The request body is larger than this address accepts."),
    414: ("URI too long", "The address is longer than iap accepts."),
    429: ("Too many requests", "Wait a moment before sending more."),
    431: ("Request header fields too large", "The request headers are larger than iap accepts."),
    500: ("Internal error", "Something went wrong inside iap."),
    502: ("Bad gateway", "The application behind iap could not be reached."),
    503: ("Service unavailable", "This service cannot answer right now; try again shortly."),
    504: ("Gateway timeout", "The application behind iap did not answer in time."),
}

#: A refused sign-in, by audit reason: title, text, whether a retry can work.
SIGN_IN_FAILURES = {
    "login_refused:tenant": (
        "Organisation not allowed",
        "Your organisation is not allowed here; ask the application owner.",
        False,
    ),
    "login_refused:idp_error": (
        "Sign-in refused by the identity provider",
        "The identity provider ended the sign-in with the error {shown}.",
        True,
    ),
    "login_refused:state": (
        "Sign-in timed out",
        "This sign-in was already used or is no longer known; start it again.",
        True,
    ),
    "login_refused:expired": (
        "Sign-in timed out",
        "The sign-in took too long to finish; start it again.",
        True,
    ),
    "login_refused:replayed": (
        "Sign-in already used",
        "This sign-in answer was already used once; start a new sign-in.",
        True,
    ),
    "login_refused:groups_overage": (
        "Too many groups",
        "Your account is in more groups than this application accepts at sign-in;"
        " ask the application owner.",
        False,
    ),
}
SIGN_IN_FAILED = ("Sign-in failed", "iap could not sign you in.", True)


def _headers(correlation_id: str) -> dict[str, str]:
    return {
        "Server": SERVER,
        "X-Correlation-ID": correlation_id,
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
    }


def html_page(status: int, refusal: RequestError | None) -> tuple[str, str, list[Link]]:
    """The title, body markup and links of the page for ``status`` (and ``refusal``)."""
    title, text = _TITLES.get(status, ("Error", "iap could not answer this request."))
    return_to = (refusal.return_to if refusal else None) or "/"
    links: list[Link] = []
    if status == 403 and refusal is not None and refusal.reason.startswith("login_refused"):
        title, text, retry = SIGN_IN_FAILURES.get(refusal.reason, SIGN_IN_FAILED)
        text = esc(text).replace(
            "{shown}", f"<code id='idp-error'>{esc(refusal.shown or 'unknown')}</code>"
        )
        if retry:
            links.append(Link("Try again", pages.sign_in(return_to), "retry"))
        return title, f"<p id='message'>{text}</p>", links
    if status == 401:
        links.append(Link("Sign in", pages.sign_in(return_to), "sign-in"))
    elif status == 403 and refusal is not None and refusal.return_to is not None:
        switch = pages.sign_in(return_to, select_account=True)
        links.append(Link("Sign in as someone else", switch, "switch-account"))
    return title, f"<p id='message'>{esc(text)}</p>", links


def error_response(
    status: int,
    code: str,
    message: str,
    correlation_id: str,
    accept: str | None,
    *,
    refusal: RequestError | None = None,
    viewer: Identity | None = None,
) -> web.Response:
    """A small JSON or HTML error answer, chosen by ``Accept``; a page names ``viewer``."""
    headers = _headers(correlation_id)
    if prefers_html(accept):
        title, body, links = html_page(status, refusal)
        text = pages.render(
            title,
            body,
            viewer=viewer,
            links=links,
            correlation_id=correlation_id,
            heading=f"{status} {title}",
        )
        return web.Response(
            status=status, text=text, content_type="text/html", charset="utf-8", headers=headers
        )
    payload = {"error": code, "message": message, "correlation_id": correlation_id}
    return web.Response(
        status=status,
        text=json.dumps(payload),
        content_type="application/json",
        headers=headers,
    )


def shows_viewer(request: web.BaseRequest, exc: RequestError) -> bool:
    """Whether the page for ``exc`` is worth a session lookup to name who is signed in: a
    browser's page for a client error, not a 401 (the session was already judged), a 429
    or a 5xx (an overload or an outage is no time for more work)."""
    status = exc.status
    return (
        400 <= status < 500
        and status not in (401, 429)
        and prefers_html(request.headers.get("Accept"))
    )


def refusal(
    request: web.BaseRequest,
    exchange: Exchange,
    exc: RequestError,
    viewer: Identity | None = None,
) -> web.Response:
    """iap's answer to a request it refused, with the refusal's headers; the audit line
    takes the specific reason, the body only the class's generic code."""
    exchange.reason = exc.reason
    if exc.status >= 500:
        log.warning("%s: %s, correlation_id=%s", exc.reason, exc.detail, exchange.correlation_id)
    response = error_response(
        exc.status,
        type(exc).reason,
        exc.public,
        exchange.correlation_id,
        request.headers.get("Accept"),
        refusal=exc,
        viewer=viewer or exchange.identity,
    )
    for name, value in exc.headers:
        response.headers.add(name, value)
    return response
