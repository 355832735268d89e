"""The layout of every HTML page iap shows a person: one stylesheet, who is signed in, the
page's links, the correlation id.

Invariants:
- Everything that comes from a request, a token or the configuration is escaped here
  (``html.escape``); callers pass text, never markup, except the ``body`` they build with
  :func:`esc`.
- No external assets: the stylesheet is the inline constant :data:`STYLE`, readable on a
  phone (viewport meta). The title is the ``<h1>``; the body text never repeats it.
- *Sign out* is a link to ``/.iap/logout`` as it always was (GET; the session cookie is
  ``SameSite=Lax``); *Sign in* links go through ``/.iap/login``, whose ``rd`` is validated
  there (open-redirect protection stays in one place).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlencode

from iap.model import Identity

STYLE = (
    "body{font:16px/1.5 system-ui,sans-serif;max-width:40em;margin:2em auto;padding:0 1em;"
    "color:#1b1b1b;overflow-wrap:anywhere}"
    "header{display:flex;flex-wrap:wrap;gap:.5em;justify-content:space-between;"
    "border-bottom:1px solid #ddd;padding-bottom:.5em;font-size:.9em}"
    "h1{font-size:1.5em;margin:.8em 0 .4em}"
    "code{background:#f3f3f3;padding:.1em .3em}"
    "table{border-collapse:collapse}td,th{text-align:left;padding:.2em .8em .2em 0;"
    "vertical-align:top}"
    "nav a{display:inline-block;margin:.3em 1em .3em 0}"
    "footer{margin-top:2em;color:#555;font-size:.85em}"
)

LOGOUT = "/.iap/logout"


@dataclass(frozen=True, slots=True)
class Link:
    label: str
    href: str
    id: str


def esc(value: object) -> str:
    """``value`` as HTML text, inert whatever it holds."""
    return html.escape(str(value), quote=True)


def sign_in(return_to: str, *, select_account: bool = False) -> str:
    """The ``/.iap/login`` URL that comes back to ``return_to`` (validated by the login)."""
    query = {"rd": return_to or "/"}
    if select_account:
        query["prompt"] = "select_account"
    return "/.iap/login?" + urlencode(query)


def viewer_name(viewer: Identity) -> str:
    """How a person is named on a page: their name, else their email, else the subject."""
    return viewer.name or viewer.email or viewer.preferred_username or viewer.subject


def _header(viewer: Identity | None) -> str:
    if viewer is None:
        return ""
    email = f" <span id='viewer-email'>{esc(viewer.email)}</span>" if viewer.email else ""
    return (
        f"<header><span>Signed in as <b id='viewer'>{esc(viewer_name(viewer))}</b>{email}"
        f"</span><a id='sign-out' href='{LOGOUT}'>Sign out</a></header>"
    )


def render(
    title: str,
    body: str,
    *,
    viewer: Identity | None = None,
    links: Sequence[Link] = (),
    correlation_id: str | None = None,
    heading: str | None = None,
) -> str:
    """A whole page: ``body`` is markup built with :func:`esc`; the rest is escaped here."""
    nav = "".join(
        f"<a id='{esc(link.id)}' href='{esc(link.href)}'>{esc(link.label)}</a>" for link in links
    )
    footer = (
        f"<footer>Correlation ID: <code id='correlation-id'>{esc(correlation_id)}</code></footer>"
        if correlation_id
        else ""
    )
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(heading or title)}</title>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<style>{STYLE}</style></head><body>{_header(viewer)}<h1>{esc(title)}</h1>{body}"
        f"{f'<nav>{nav}</nav>' if nav else ''}{footer}</body></html>\n"
    )
