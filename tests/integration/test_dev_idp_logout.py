"""The dev IdP's end-session endpoint: ``id_token_hint`` checks and registered
``post_logout_redirect_uri`` values only.
"""

from __future__ import annotations

import aiohttp

from iap.dev.idp import TENANT_A, RunningDevIdP
from tests.support.dev_idp import (
    AFTER_LOGOUT,
    client,
    idp,
    independently_verified,
    signed_in_tokens,
)

__all__ = ["client", "idp"]


async def test_logout_redirects_only_to_registered_uris(
    idp: RunningDevIdP, client: aiohttp.ClientSession
) -> None:
    _, body = await signed_in_tokens(client, idp, "alice")
    claims = independently_verified(idp, body["id_token"])
    url = f"{idp.url}/{TENANT_A}/oauth2/v2.0/logout"
    params = {
        "id_token_hint": body["id_token"],
        "post_logout_redirect_uri": AFTER_LOGOUT,
        "state": "s1",
    }
    async with client.get(url, params=params, allow_redirects=False) as resp:
        assert resp.status == 302
        assert resp.headers["Location"] == f"{AFTER_LOGOUT}?state=s1"
    assert idp.idp.logouts == [claims["sid"]]
    async with client.post(url, data=params, allow_redirects=False) as resp:
        assert resp.status == 302
    params["post_logout_redirect_uri"] = "https://evil.example/"
    async with client.get(url, params=params, allow_redirects=False) as resp:
        assert resp.status == 400
    params = {"id_token_hint": "not.a.token", "post_logout_redirect_uri": AFTER_LOGOUT}
    async with client.get(url, params=params, allow_redirects=False) as resp:
        assert resp.status == 400
    async with client.get(url, allow_redirects=False) as resp:
        assert resp.status == 200
        assert "signed out" in await resp.text()
