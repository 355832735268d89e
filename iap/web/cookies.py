"""iap's cookies on the wire: the session (``__Host-iap``, chunked) and the login state
(``__Host-iap-login``) (SPEC §7 Sessions, Login).

Invariants:
- Only iap's own cookie names are read from a request (``iap.domain.headers.iap_cookies``);
  every value iap sets is sealed with the session keyring under its own purpose.
- Writing a session also clears chunks the browser still holds from a larger one, so an old
  chunk can never be joined to a new value; clearing removes every chunk the browser sent.
- The login-state cookie keeps the newest pending logins that fit one cookie; a login state
  that does not open holds no logins (never an error page).
- Nothing here logs or raises with a cookie's value.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from aiohttp import web

from iap.domain import sealing
from iap.domain import session as sessions
from iap.domain.headers import IAP_COOKIE, iap_cookies
from iap.domain.login import (
    LOGIN_STATE_PURPOSE,
    MAX_AGE,
    PendingLogin,
    decode_pending,
    encode_pending,
)
from iap.domain.session import Session

LOGIN_COOKIE = f"{IAP_COOKIE}-login"
_LOGIN_COOKIE_LIMIT = 3800
NO_STORE = (("Cache-Control", "no-store"), ("Pragma", "no-cache"))
"""On every answer that sets or clears a cookie or carries an identity."""


class Cookies:
    """Reads and writes iap's cookies for one sign-in configuration."""

    def __init__(self, keyring: sealing.Keyring, *, lifetime: float, form_post: bool) -> None:
        self.keyring = keyring
        self._lifetime = lifetime
        # A form_post callback is a cross-site POST, which a Lax cookie does not accompany.
        self._login_same_site = "None" if form_post else "Lax"

    @staticmethod
    def jar(request: web.BaseRequest) -> dict[str, str]:
        """iap's cookies in ``request``, by name."""
        return iap_cookies(request.headers.getall("Cookie", ()))

    def session_value(self, request: web.BaseRequest) -> tuple[str | None, bool]:
        """The joined session cookie value, and whether any part of one was sent."""
        jar = self.jar(request)
        return sealing.join_cookie(IAP_COOKIE, jar), IAP_COOKIE in jar or bool(_chunks(jar))

    def pending(self, request: web.BaseRequest, now: int) -> list[PendingLogin]:
        """The logins in flight in this browser."""
        value = self.jar(request).get(LOGIN_COOKIE)
        if not value:
            return []
        try:
            data = sealing.open(
                self.keyring, value, purpose=LOGIN_STATE_PURPOSE, now=now, max_age=MAX_AGE
            )
            return decode_pending(data)
        except ValueError:  # SealError included: a bad login cookie holds no logins
            return []

    def login(self, logins: list[PendingLogin], now: int) -> str:
        """The Set-Cookie for ``logins``, dropping the oldest until the value fits."""
        while logins:
            data = encode_pending(logins)
            value = sealing.seal(
                self.keyring, data, purpose=LOGIN_STATE_PURPOSE, now=now, random=os.urandom
            )
            if len(value) <= _LOGIN_COOKIE_LIMIT:
                return sealing.set_cookie_header(
                    LOGIN_COOKIE, value, MAX_AGE, same_site=self._login_same_site
                )
            logins = logins[1:]  # parallel tabs: the oldest login gives way
        return sealing.clear_cookie_header(LOGIN_COOKIE)

    def session(
        self, request: web.BaseRequest, value: str, session: Session, now: int
    ) -> list[str]:
        """Set-Cookie headers for a session's cookie value, living until its absolute end."""
        max_age = max(0, sessions.expires_at(session, lifetime=self._lifetime) - now)
        chunks = sealing.split_cookie(IAP_COOKIE, value)
        headers = [sealing.set_cookie_header(name, chunk, max_age) for name, chunk in chunks]
        written = {name for name, _ in chunks}
        stale = [name for name in _chunks(self.jar(request)) if name not in written]
        return headers + [sealing.clear_cookie_header(name) for name in stale]

    def clear(self, request: web.BaseRequest) -> list[str]:
        """Set-Cookie headers that delete the session cookie and every chunk sent."""
        names = [IAP_COOKIE, *_chunks(self.jar(request))]
        return [sealing.clear_cookie_header(name) for name in dict.fromkeys(names)]


def set_cookies(values: Iterable[str]) -> list[tuple[str, str]]:
    """``Set-Cookie`` header pairs."""
    return [("Set-Cookie", value) for value in values]


def redirect(location: str, cookies: Iterable[str]) -> web.Response:
    """A 302 to ``location`` that sets ``cookies`` and is never cached."""
    response = web.Response(status=302)
    response.headers["Location"] = location
    for name, value in (*NO_STORE, *set_cookies(cookies)):
        response.headers.add(name, value)
    return response


def _chunks(cookies: Mapping[str, str]) -> list[str]:
    return [
        name
        for name in cookies
        if name.startswith(IAP_COOKIE + "-") and name[len(IAP_COOKIE) + 1 :].isdigit()
    ]
