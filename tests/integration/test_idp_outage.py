"""The IdP adapters while the dev IdP is down (issue #15 point 4): what counts as
"unreachable", stale discovery and JWKS served for at most ``max_stale``, their ages, and no
hammering of a down IdP, by refreshes or by unknown ``kid`` values.

Two kinds of outage, both real: the dev IdP stopped (connection refused) and the dev IdP
answering every request with a 5xx (``outage_status``, an IdP behind a load balancer that is
down). The caches' clock is a fake the tests move; nothing sleeps.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from iap.adapters.idp import (
    FAILURE_BACKOFF,
    Discovery,
    IdpUnavailable,
    IdpUnreachable,
    JwksCache,
    new_session,
    refresh_interval,
)
from iap.adapters.oauth import ClientCredential, OAuthClient, TokenRefused
from iap.dev.idp import TENANT_A, USERS, RunningDevIdP, start_dev_idp
from tests.integration.test_idp_adapter import FakeClock

CLIENT_ID = "00000000-0000-4000-8000-00000000c11e"
SECRET = "s"
HOUR = 3600.0


@pytest.fixture
async def idp() -> AsyncIterator[RunningDevIdP]:
    running = await start_dev_idp(
        client_id=CLIENT_ID, client_secret=SECRET, redirect_uris=["http://127.0.0.1:9/cb"]
    )
    yield running
    await running.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with new_session() as client:
        yield client


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def caches(
    idp: RunningDevIdP, session: aiohttp.ClientSession, clock: FakeClock, max_stale: float
) -> tuple[Discovery, JwksCache]:
    discovery = Discovery(
        session, idp.url, timeout=5, connect_timeout=2, max_stale=max_stale, clock=clock
    )
    return discovery, JwksCache(discovery, max_stale=max_stale, clock=clock)


async def stage_outage(idp: RunningDevIdP, kind: str) -> None:
    if kind == "stopped":
        await idp.stop()
    else:
        idp.idp.outage_status = 503


@pytest.mark.parametrize("kind", ["stopped", "503"])
async def test_a_down_idp_is_unreachable_and_a_bad_answer_is_not(
    idp: RunningDevIdP, session: aiohttp.ClientSession, clock: FakeClock, kind: str
) -> None:
    discovery, _ = caches(idp, session, clock, 24 * HOUR)
    url = discovery.url(TENANT_A)
    await stage_outage(idp, kind)
    with pytest.raises(IdpUnreachable):
        await discovery.fetcher.get_json(url)
    if kind == "503":
        idp.idp.outage_status = 404  # an answer, just not a usable one
        with pytest.raises(IdpUnavailable) as bad:
            await discovery.fetcher.get_json(url)
        assert not isinstance(bad.value, IdpUnreachable)


def refresh_token(idp: RunningDevIdP) -> str:
    tokens = idp.idp.issue_tokens(
        USERS["alice"], scopes=("openid", "offline_access"), nonce=None, sid="s1", family="f1"
    )
    return str(tokens["refresh_token"])


@pytest.mark.parametrize("kind", ["stopped", "503"])
async def test_a_refresh_with_the_idp_down_is_unreachable_and_invalid_grant_is_refused(
    idp: RunningDevIdP, session: aiohttp.ClientSession, clock: FakeClock, kind: str
) -> None:
    discovery, _ = caches(idp, session, clock, 24 * HOUR)
    oauth = OAuthClient(discovery.fetcher, ClientCredential(CLIENT_ID, SECRET))
    endpoint = (await discovery.document(TENANT_A))["token_endpoint"]
    scopes = "openid offline_access"

    with pytest.raises(TokenRefused) as refused:
        await oauth.refresh(endpoint, refresh_token="not-a-grant", scopes=scopes)
    assert refused.value.error == "invalid_grant"

    valid = refresh_token(idp)
    await stage_outage(idp, kind)
    with pytest.raises(IdpUnreachable):
        await oauth.refresh(endpoint, refresh_token=valid, scopes=scopes)
    assert idp.idp.refresh_grants == 0


@pytest.mark.parametrize("kind", ["stopped", "503"])
async def test_stale_metadata_is_served_until_max_stale_then_counts_as_absent(
    idp: RunningDevIdP, session: aiohttp.ClientSession, clock: FakeClock, kind: str
) -> None:
    max_stale = 2 * HOUR
    discovery, jwks = caches(idp, session, clock, max_stale)
    keys = await jwks.keys(TENANT_A)
    document = await discovery.document(TENANT_A)
    assert jwks.age(TENANT_A) == discovery.age(TENANT_A) == 0
    await stage_outage(idp, kind)

    clock.now += max_stale - 1  # long past the refresh, a second before max_stale
    assert await jwks.keys(TENANT_A) == keys
    assert await discovery.document(TENANT_A) == document
    assert jwks.age(TENANT_A) == discovery.age(TENANT_A) == max_stale - 1

    clock.now += 1
    with pytest.raises(IdpUnavailable):
        await jwks.keys(TENANT_A)
    with pytest.raises(IdpUnavailable):
        await discovery.document(TENANT_A)


async def test_the_idp_back_refreshes_the_stale_documents(
    idp: RunningDevIdP, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    discovery, jwks = caches(idp, session, clock, 24 * HOUR)
    await jwks.keys(TENANT_A)
    idp.idp.outage_status = 503
    clock.now += 2 * HOUR
    await jwks.keys(TENANT_A)  # stale, served
    assert jwks.age(TENANT_A) == 2 * HOUR
    idp.idp.outage_status = None
    new_kid = idp.idp.rotate()
    clock.now += FAILURE_BACKOFF
    assert new_kid in {key["kid"] for key in (await jwks.keys(TENANT_A))["keys"]}
    assert jwks.age(TENANT_A) == 0
    assert discovery.age(TENANT_A) == 0


async def test_a_down_idp_is_retried_once_per_backoff_not_per_request(
    idp: RunningDevIdP, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    discovery, jwks = caches(idp, session, clock, 24 * HOUR)
    keys = await jwks.keys(TENANT_A)
    idp.idp.outage_status = 503
    clock.now += 2 * HOUR  # both documents are due for their refresh
    for _ in range(50):
        assert await jwks.keys(TENANT_A) == keys
        await discovery.document(TENANT_A)
    # one try of each (the JWKS refresh asks discovery first), then both back off
    assert len(idp.idp.outage_requests) == 2
    clock.now += FAILURE_BACKOFF
    await jwks.keys(TENANT_A)
    assert len(idp.idp.outage_requests) == 4


async def test_unknown_kids_with_the_idp_down_do_not_hammer_it(
    idp: RunningDevIdP, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    _, jwks = caches(idp, session, clock, 24 * HOUR)
    await jwks.keys(TENANT_A)
    idp.idp.outage_status = 503
    clock.now += 10 * 60  # both documents still fresh: only the refetch goes out
    with pytest.raises(IdpUnreachable):
        await jwks.for_unknown_kid(TENANT_A)
    for _ in range(50):  # forged kids: the budget is spent for five minutes
        assert await jwks.for_unknown_kid(TENANT_A) is None
    assert len(idp.idp.outage_requests) == 1


def test_a_short_max_stale_refreshes_at_half_of_it() -> None:
    assert refresh_interval(24 * HOUR) == HOUR
    assert refresh_interval(HOUR) == HOUR / 2
    assert refresh_interval(60) == 30
