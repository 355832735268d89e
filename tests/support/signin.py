"""Sign-in over real sockets without a browser: the dev IdP, iap and a visitor that keeps
its own cookies and follows the code flow step by step, so each step can be tampered with.

The browser flow itself runs in real Chromium (tests/browser); this is for the many
negative cases, where each step must be observable.
"""

from __future__ import annotations

import base64
import contextlib
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from multidict import CIMultiDict

from iap.adapters.signing_keys import write_new_key
from iap.dev.idp import STAFF_GROUP_ID, TENANT_A, RunningDevIdP, start_dev_idp
from tests.conftest import RunningEdge, StartEdge, Upstream, edge_config, free_port

CLIENT_ID = "00000000-0000-4000-8000-0000000000e1"
CLIENT_SECRET = "s3cr3t-client-canary"


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    @property
    def location(self) -> str:
        value = self.header("Location")
        assert value is not None, f"no Location in a {self.status} answer"
        return value

    @property
    def set_cookies(self) -> list[str]:
        return [v for k, v in self.headers if k.lower() == "set-cookie"]


@dataclass
class Visitor:
    """A user agent on loopback: sends the cookies iap set, never follows redirects itself."""

    http: aiohttp.ClientSession
    base: str
    cookies: dict[str, str] = field(default_factory=dict)

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        data: Mapping[str, str] | None = None,
        cookies: bool = True,
    ) -> Response:
        if url.startswith("/"):
            url = self.base + url
        sent = CIMultiDict(headers or {})  # repeated headers stay repeated
        if cookies and self.cookies and url.startswith(self.base):
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        async with self.http.request(
            method, url, headers=sent, data=data, allow_redirects=False
        ) as answer:
            body = await answer.read()
            response = Response(answer.status, list(answer.headers.items()), body)
        if url.startswith(self.base):
            self.remember(response.set_cookies)
        return response

    async def get(self, url: str, **kwargs: Any) -> Response:
        return await self.request("GET", url, **kwargs)

    def remember(self, set_cookies: list[str]) -> None:
        for header in set_cookies:
            morsel = next(iter(SimpleCookie(header).values()))
            if morsel["max-age"] == "0":
                self.cookies.pop(morsel.key, None)
            else:
                self.cookies[morsel.key] = morsel.value

    async def authorize(self, login_location: str, user: str = "alice") -> Response:
        """At the dev IdP: pick ``user`` on the sign-in page (a form POST of the request)."""
        params = {k: v[0] for k, v in parse_qs(urlsplit(login_location).query).items()}
        url = login_location.partition("?")[0]
        return await self.request("POST", url, data={**params, "user": user}, cookies=False)

    async def callback(self, idp_answer: Response) -> Response:
        """Deliver the IdP's answer to iap's callback (query redirect or form_post)."""
        if idp_answer.status == 302:
            return await self.get(idp_answer.location)
        fields = _hidden_fields(idp_answer.body.decode())
        return await self.request("POST", "/.iap/callback", data=fields)

    async def sign_in(self, user: str = "alice", rd: str = "/app/") -> Response:
        """The whole code flow; returns iap's answer to the callback."""
        start = await self.get(f"/.iap/login?rd={rd}", headers={"Accept": "text/html"})
        assert start.status == 302, start
        return await self.callback(await self.authorize(start.location, user))


def _hidden_fields(page: str) -> dict[str, str]:
    import html
    import re

    pairs = re.findall(r'name="([^"]+)" value="([^"]*)"', page)
    return {html.unescape(k): html.unescape(v) for k, v in pairs}


@dataclass
class SignInStack:
    idp: RunningDevIdP
    edge: RunningEdge
    upstream: Upstream

    def visitor(self, http: aiohttp.ClientSession) -> Visitor:
        return Visitor(http, self.edge.url)


def session_keys(directory: Path) -> Path:
    """The keyring file of ``directory``, made once: replicas configured there share it."""
    path = directory / "session.keys"
    if not path.exists():
        path.write_text(base64.urlsafe_b64encode(os.urandom(32)).decode() + "\n")
    return path


def signing_keys(directory: Path) -> Path:
    """A ``tokens.keys_dir`` with one ES256 key, made once per directory."""
    keys = directory / "signing-keys"
    if not keys.exists():
        write_new_key(keys)
    return keys


def signin_config(
    upstream_url: str,
    idp: RunningDevIdP,
    port: int,
    directory: Path,
    *,
    oidc: Mapping[str, Any] | None = None,
    session: Mapping[str, Any] | None = None,
    extra_routes: list[dict[str, Any]] | None = None,
    roles: Mapping[str, str] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """iap on 127.0.0.1:``port`` signing in with the dev IdP; ``/app/`` needs a user."""
    secret = directory / "client.secret"
    secret.write_text(CLIENT_SECRET)
    routes = [
        {
            "name": "app",
            "upstream": upstream_url,
            "match": {"path_prefix": "/app/"},
            "policy": {"allow": {"authenticated": True}},
        },
        {
            "name": "admin",
            "upstream": upstream_url,
            "match": {"path_prefix": "/admin/"},
            "policy": {"allow": {"roles": ["admin"]}},
        },
        {"name": "public", "upstream": upstream_url, "policy": {"public": True}},
    ]
    document = edge_config(
        upstream_url,
        public_url=f"http://127.0.0.1:{port}",
        listen={"address": f"127.0.0.1:{port}"},
        oidc={
            "issuer": f"{idp.url}/organizations/v2.0",
            "allowed_tenants": [TENANT_A],
            "client_id": CLIENT_ID,
            "client_secret_file": str(secret),
            "graph_url": f"{idp.url}/graph",
            **(oidc or {}),
        },
        session={"keys_file": str(session_keys(directory)), **(session or {})},
        tokens={
            "issuer": f"http://127.0.0.1:{port}/.iap",
            "keys_dir": str(signing_keys(directory)),
            "roles": {"Edge.Admin": "admin", STAFF_GROUP_ID: "staff", **(roles or {})},
        },
        **overrides,
    )
    document["routes"] = [*(extra_routes or []), *routes]  # the catch-all public route last
    return document


async def start_signin_stack(
    upstream: Upstream,
    start_edge: StartEdge,
    directory: Path,
    *,
    client_certificate_pem: bytes | None = None,
    **config: Any,
) -> tuple[RunningDevIdP, RunningEdge]:
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    idp = await start_dev_idp(
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        redirect_uris=[f"{public}/.iap/callback"],
        post_logout_redirect_uris=[f"{public}/", f"{public}/.iap/signed-out"],
        client_certificate_pem=client_certificate_pem,
    )
    try:
        edge = await start_edge(signin_config(upstream.url, idp, port, directory, **config))
    except BaseException:
        await idp.stop()
        raise
    return idp, edge


@contextlib.asynccontextmanager
async def running_stack(
    upstream: Upstream, start_edge: StartEdge, directory: Path, **config: Any
) -> AsyncIterator[SignInStack]:
    """:func:`start_signin_stack` as a context: the dev IdP stops on the way out."""
    idp, edge = await start_signin_stack(upstream, start_edge, directory, **config)
    try:
        yield SignInStack(idp, edge, upstream)
    finally:
        await idp.stop()


@pytest.fixture
async def stack(
    upstream: Upstream, start_edge: StartEdge, tmp_path: Path
) -> AsyncIterator[SignInStack]:
    async with running_stack(upstream, start_edge, tmp_path) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session
