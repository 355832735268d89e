"""The dev IdP serves loopback peers only, and refuses to be built for another address."""

from __future__ import annotations

from unittest import mock

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from iap.dev.idp import dev_idp_app, is_loopback, loopback_only
from tests.support.dev_idp import CLIENT_ID, CLIENT_SECRET, REDIRECT_URI


@pytest.mark.parametrize(
    ("remote", "allowed"),
    [
        ("127.0.0.1", True),
        ("127.9.9.9", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("10.0.0.5", False),
        ("203.0.113.7", False),
        ("::ffff:203.0.113.7", False),
        ("2001:db8::1", False),
        ("", False),
        (None, False),
        ("not-an-ip", False),
    ],
)
def test_is_loopback(remote: str | None, allowed: bool) -> None:
    assert is_loopback(remote) is allowed


@pytest.mark.parametrize(("peer", "status"), [("203.0.113.7", 403), ("127.0.0.1", 200)])
async def test_middleware_refuses_non_loopback_peers(peer: str, status: int) -> None:
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (
        (peer, 40000) if name == "peername" else default
    )
    request = make_mocked_request("GET", "/organizations/discovery/v2.0/keys", transport=transport)
    assert request.remote == peer

    async def handler(_: web.Request) -> web.StreamResponse:
        return web.Response(text="ok")

    response = await loopback_only(request, handler)
    assert response.status == status


def test_refuses_a_non_loopback_base_url() -> None:
    with pytest.raises(ValueError, match="loopback"):
        dev_idp_app(
            "http://0.0.0.0:8081",
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            redirect_uris=[REDIRECT_URI],
        )
