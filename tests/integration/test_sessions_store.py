"""One conformance suite for both ways of keeping sessions (SPEC §7 "Sessions", §9):
``CookieSessions`` (the sealed session is the cookie) and ``StoredSessions`` (a sealed
handle in the cookie, the sealed session in the store), each over the memory store and
over a real redis-server."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import os
import random
import string
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
import redis.asyncio

from iap.adapters.redis_store import RedisStore
from iap.adapters.sessions import (
    REFRESH_LOCK_TTL,
    REFRESHED_TTL,
    CookieSessions,
    SessionRejected,
    StoredSessions,
)
from iap.adapters.store import Lock, MemoryStore, SessionStore
from iap.domain.sealing import Keyring, key_id
from iap.domain.session import REFRESH_MARGIN, Session, new_session, refreshed, touched
from iap.model import Identity
from tests.support.identities import ALICE as BASE_ALICE
from tests.support.identities import Clock
from tests.support.redis_server import start_redis_server

KEY_1 = bytes(range(32))
KEY_2 = bytes(range(100, 132))
KEY_FOREIGN = b"\xee" * 32
RING = Keyring([KEY_1])
NOW = 1_700_000_000
LATER = NOW + 3_400  # past refresh_at of a one-hour token
HOUR = 3600
LIFETIME = 8 * HOUR
ID_TOKEN = "id-token-CLEARTEXT"
REFRESH_TOKEN = "refresh-token-CLEARTEXT"
BASE64URL = string.ascii_letters + string.digits + "-_"

ALICE = dataclasses.replace(BASE_ALICE, roles=("reader",))

AnySessions = CookieSessions | StoredSessions


@dataclass(frozen=True)
class Kind:
    name: str
    sessions: type[CookieSessions] | type[StoredSessions]
    backend: str  # "memory" or "redis"

    @property
    def cookie(self) -> bool:
        return self.sessions is CookieSessions

    @property
    def other(self) -> type[CookieSessions] | type[StoredSessions]:
        return StoredSessions if self.cookie else CookieSessions

    @property
    def ended(self) -> str:
        """Why an ended session's cookie no longer loads: a cookie session meets its
        revocation record; a stored session's record is gone from the store."""
        return "revoked" if self.cookie else "gone"


COOKIE_MEMORY = Kind("cookie-memory", CookieSessions, "memory")
COOKIE_REDIS = Kind("cookie-redis", CookieSessions, "redis")
STORED_MEMORY = Kind("stored-memory", StoredSessions, "memory")
STORED_REDIS = Kind("stored-redis", StoredSessions, "redis")
KINDS = [COOKIE_MEMORY, COOKIE_REDIS, STORED_MEMORY, STORED_REDIS]


@dataclass
class Harness:
    kind: Kind
    store: SessionStore
    connect: Callable[[], SessionStore]
    """Another replica's view of the same state: a new Redis connection, or the one memory."""
    clock: Clock | None = None
    redis_url: str | None = None

    def sessions(
        self, keyring: Keyring = RING, *, store: SessionStore | None = None
    ) -> AnySessions:
        return self.kind.sessions(keyring, store or self.store, lifetime=LIFETIME)

    def other_kind(self, keyring: Keyring = RING) -> AnySessions:
        return self.kind.other(keyring, self.store, lifetime=LIFETIME)


@asynccontextmanager
async def running(kind: Kind) -> AsyncIterator[Harness]:
    if kind.backend == "memory":
        clock = Clock()
        memory = MemoryStore(clock=clock)
        yield Harness(kind, memory, lambda: memory, clock=clock)
        return
    server = await start_redis_server()
    stores: list[RedisStore] = []

    def connect() -> SessionStore:
        store = RedisStore(server.url, prefix="test:")
        stores.append(store)
        return store

    try:
        yield Harness(kind, connect(), connect, redis_url=server.url)
    finally:
        for store in stores:
            await store.close()
        await server.stop()


@pytest.fixture(params=KINDS, ids=lambda kind: kind.name)
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    async with running(request.param) as started:
        yield started


def make_session(
    *, sid: str | None = "sid-1", now: int = NOW, identity: Identity = ALICE
) -> Session:
    return new_session(
        identity,
        sid=sid,
        id_token=ID_TOKEN,
        refresh_token=REFRESH_TOKEN,
        expires_in=HOUR,
        now=now,
        random=os.urandom,
    )


async def rejected(sessions: AnySessions, cookie: str, *, now: int = NOW) -> str:
    """The reason ``cookie`` does not load."""
    with pytest.raises(SessionRejected) as caught:
        await sessions.load(cookie, now=now)
    return caught.value.reason


def unb64(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def sealing_key(token: str) -> bytes:
    """The key id in a sealed token's header (after the version byte)."""
    return unb64(token)[1:5]


# --- save / load ----------------------------------------------------------------------------


async def test_save_then_load_round_trip(harness: Harness) -> None:
    sessions = harness.sessions()
    alice, bob = make_session(), make_session(sid="sid-2", identity=ALICE)
    alice_cookie = await sessions.save(alice, now=NOW)
    bob_cookie = await sessions.save(bob, now=NOW)
    assert alice_cookie != bob_cookie
    assert set(alice_cookie) <= set(BASE64URL)  # fits a cookie unquoted
    assert await sessions.load(alice_cookie, now=NOW) == alice
    assert await sessions.load(bob_cookie, now=NOW + HOUR) == bob


async def test_a_session_without_sid_round_trips(harness: Harness) -> None:
    sessions = harness.sessions()
    session = make_session(sid=None)
    cookie = await sessions.save(session, now=NOW)
    assert await sessions.load(cookie, now=NOW) == session


async def test_save_of_a_touched_session_loads_the_new_seen(harness: Harness) -> None:
    sessions = harness.sessions()
    session = make_session()
    await sessions.save(session, now=NOW)
    later = touched(session, now=NOW + 600, idle_timeout=1800)
    assert later is not None
    cookie = await sessions.save(later, now=NOW + 600)
    assert await sessions.load(cookie, now=NOW + 600) == later


async def test_another_replica_loads_the_cookie(harness: Harness) -> None:
    session = make_session()
    cookie = await harness.sessions().save(session, now=NOW)
    replica = harness.sessions(store=harness.connect())
    assert await replica.load(cookie, now=NOW) == session


async def test_cookie_value_holds_no_token_in_clear(harness: Harness) -> None:
    cookie = await harness.sessions().save(make_session(), now=NOW)
    for text in ("CLEARTEXT", "alice", "tid-1"):
        assert text not in cookie
        assert text.encode() not in unb64(cookie)


async def test_a_cookie_sealed_at_sign_in_stops_loading_after_the_lifetime(
    harness: Harness,
) -> None:
    session = make_session()
    cookie = await harness.sessions().save(session, now=NOW)
    assert await harness.sessions().load(cookie, now=NOW + LIFETIME) == session
    assert await rejected(harness.sessions(), cookie, now=NOW + LIFETIME + 1) == "expired"


async def test_expiry_is_checked_on_every_load_not_only_the_first(harness: Harness) -> None:
    sessions = harness.sessions()
    session = make_session()
    cookie = await sessions.save(session, now=NOW)
    assert await sessions.load(cookie, now=NOW + LIFETIME) == session
    assert await rejected(sessions, cookie, now=NOW + LIFETIME + 1) == "expired"


# --- what must not open ---------------------------------------------------------------------


async def test_a_cookie_sealed_under_another_keyring_is_unknown_key(harness: Harness) -> None:
    cookie = await harness.sessions().save(make_session(), now=NOW)
    foreign = harness.sessions(Keyring([KEY_FOREIGN]))
    assert await rejected(foreign, cookie) == "unknown_key"


async def test_any_single_flipped_character_is_rejected(harness: Harness) -> None:
    sessions = harness.sessions()
    session = make_session()
    cookie = await sessions.save(session, now=NOW)
    choose = random.Random(cookie)
    for index, char in enumerate(cookie):
        neighbour = BASE64URL[(BASE64URL.index(char) + 1) % len(BASE64URL)]
        anywhere = choose.choice(BASE64URL.replace(char, ""))
        for replacement in (neighbour, anywhere, "!", "="):
            flipped = cookie[:index] + replacement + cookie[index + 1 :]
            await rejected(sessions, flipped)
    assert await sessions.load(cookie, now=NOW) == session


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda cookie: "", id="empty"),
        pytest.param(lambda cookie: cookie[:-1], id="truncated"),
        pytest.param(lambda cookie: cookie[:40], id="header-only"),
        pytest.param(lambda cookie: cookie + "A", id="appended"),
        pytest.param(lambda cookie: cookie + "=", id="padded"),
        pytest.param(lambda cookie: cookie[::-1], id="reversed"),
        pytest.param(lambda cookie: "~2~" + cookie, id="chunk-marker"),
    ],
)
async def test_a_mangled_cookie_is_rejected(harness: Harness, mangle: Callable[[str], str]) -> None:
    sessions = harness.sessions()
    cookie = await sessions.save(make_session(), now=NOW)
    await rejected(sessions, mangle(cookie))


async def test_a_cookie_of_one_kind_does_not_open_as_the_other(harness: Harness) -> None:
    session = make_session()
    ours, theirs = harness.sessions(), harness.other_kind()
    # Both kinds know the session, over one store and one keyring: only the purpose differs.
    our_cookie = await ours.save(session, now=NOW)
    their_cookie = await theirs.save(session, now=NOW)
    assert await rejected(theirs, our_cookie) == "invalid"
    assert await rejected(ours, their_cookie) == "invalid"
    assert await ours.load(our_cookie, now=NOW) == session


# --- ending sessions ------------------------------------------------------------------------


@pytest.mark.parametrize("sid", ["sid-1", None])
async def test_end_then_load_is_rejected(harness: Harness, sid: str | None) -> None:
    sessions = harness.sessions()
    session = make_session(sid=sid)
    cookie = await sessions.save(session, now=NOW)
    await sessions.end(session, now=NOW)
    assert await rejected(sessions, cookie) == harness.kind.ended
    # another replica agrees
    replica = harness.sessions(store=harness.connect())
    assert await rejected(replica, cookie) == harness.kind.ended


async def test_end_leaves_other_sessions_alone(harness: Harness) -> None:
    sessions = harness.sessions()
    ended, other_sid, no_sid = make_session(), make_session(sid="sid-2"), make_session(sid=None)
    cookies = [await sessions.save(s, now=NOW) for s in (ended, other_sid, no_sid)]
    await sessions.end(ended, now=NOW)
    await sessions.end(make_session(sid=None), now=NOW)  # a session never saved: harmless
    assert await rejected(sessions, cookies[0]) == harness.kind.ended
    assert await sessions.load(cookies[1], now=NOW) == other_sid
    assert await sessions.load(cookies[2], now=NOW) == no_sid


async def test_end_also_ends_the_other_sessions_of_its_sid(harness: Harness) -> None:
    sessions = harness.sessions()
    first, second = make_session(), make_session()
    assert first.id != second.id
    assert first.sid == second.sid
    cookies = [await sessions.save(s, now=NOW) for s in (first, second)]
    await sessions.end(first, now=NOW)
    for cookie in cookies:
        assert await rejected(sessions, cookie) == harness.kind.ended


async def test_end_sid_of_a_made_up_sid_stores_nothing(harness: Harness) -> None:
    """Front-channel logout needs no cookie: calls for sids never seen must not grow state."""
    sessions = harness.sessions()
    for number in range(20):
        await sessions.end_sid(f"made-up-{number}", now=NOW)
    for number in range(20):
        assert await harness.store.get(f"revoked:made-up-{number}") is None
        assert await harness.store.handles_for_sid(f"made-up-{number}") == []


async def test_end_sid_ends_every_session_of_that_sid_only(harness: Harness) -> None:
    sessions = harness.sessions()
    a1, a2 = make_session(sid="sid-a"), make_session(sid="sid-a")
    b, none = make_session(sid="sid-b"), make_session(sid=None)
    cookies = {s.id: await sessions.save(s, now=NOW) for s in (a1, a2, b, none)}
    await sessions.end_sid("sid-unknown", now=NOW)
    await harness.sessions(store=harness.connect()).end_sid("sid-a", now=NOW)  # on another replica
    assert await rejected(sessions, cookies[a1.id]) == harness.kind.ended
    assert await rejected(sessions, cookies[a2.id]) == harness.kind.ended
    assert await sessions.load(cookies[b.id], now=NOW) == b
    assert await sessions.load(cookies[none.id], now=NOW) == none


async def test_signing_in_again_after_end_with_the_same_sid_loads(harness: Harness) -> None:
    """The IdP keeps its session (and ``sid``) when the user does not finish the IdP's
    logout, or when the IdP has no end_session_endpoint; the next sign-in reuses it."""
    sessions = harness.sessions()
    old = make_session(sid="sid-sso")
    await sessions.save(old, now=NOW)
    await sessions.end(old, now=NOW + 1)
    new = make_session(sid="sid-sso", now=NOW + 60)
    cookie = await sessions.save(new, now=NOW + 60)
    assert await sessions.load(cookie, now=NOW + 60) == new


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param(
            COOKIE_MEMORY,
            id="cookie-memory",
        ),
        pytest.param(STORED_MEMORY, id="stored-memory"),
    ],
)
async def test_a_session_ended_through_its_sid_stays_ended(kind: Kind) -> None:
    """Memory stores only: the test moves the store's clock past the first expiry."""
    async with running(kind) as harness:
        assert harness.clock is not None
        sessions = harness.sessions()
        first = make_session(sid="sid-1", now=NOW)
        second = make_session(sid="sid-1", now=NOW + 1000)  # e.g. signed in on another host
        await sessions.save(first, now=NOW)
        cookie = await sessions.save(second, now=NOW + 1000)
        seen = touched(first, now=NOW + 1500, idle_timeout=1800)
        assert seen is not None
        harness.clock.now += 1500
        await sessions.end(seen, now=NOW + 1500)
        assert await rejected(sessions, cookie, now=NOW + 1500) == harness.kind.ended
        harness.clock.now += LIFETIME - 1500 + 1  # past the first session's expiry only
        assert await rejected(sessions, cookie, now=NOW + LIFETIME + 1) == harness.kind.ended


# --- key rotation ---------------------------------------------------------------------------


async def test_key_rotation(harness: Harness) -> None:
    session = make_session()
    old = harness.sessions(Keyring([KEY_1]))
    rotated = harness.sessions(Keyring([KEY_2, KEY_1]))
    new_only = harness.sessions(Keyring([KEY_2]))

    old_cookie = await old.save(session, now=NOW)
    assert sealing_key(old_cookie) == key_id(KEY_1)
    assert await rotated.load(old_cookie, now=NOW) == session  # every key opens

    new_cookie = await rotated.save(session, now=NOW + 1)
    assert sealing_key(new_cookie) == key_id(KEY_2)  # the first key seals
    assert await rotated.load(new_cookie, now=NOW + 1) == session
    assert await new_only.load(new_cookie, now=NOW + 1) == session
    assert await rejected(old, new_cookie) == "unknown_key"
    if not harness.kind.cookie:  # the record in the store was resealed under K2 as well
        record = await harness.store.get(session.id)
        assert record is not None
        assert sealing_key(record.decode()) == key_id(KEY_2)

    # K1 retired: what it sealed no longer opens
    another = make_session()
    retired_cookie = await old.save(another, now=NOW)
    assert await rejected(new_only, retired_cookie) == "unknown_key"


# --- refresh_once ---------------------------------------------------------------------------


class Refresher:
    """A refresh the test holds until ``release`` is set; counts its calls. It happens at
    ``now`` and the IdP's new tokens last ``expires_in`` seconds."""

    def __init__(
        self, error: Exception | None = None, *, now: int = LATER, expires_in: int = HOUR
    ) -> None:
        self.calls = 0
        self.error = error
        self.now = now
        self.expires_in = expires_in
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, session: Session) -> Session:
        self.calls += 1
        self.started.set()
        await self.release.wait()
        if self.error is not None:
            raise self.error
        return refreshed(
            session,
            identity=session.identity,
            id_token="id-token-2",
            refresh_token="refresh-token-2",
            expires_in=self.expires_in,
            now=self.now,
        )


class Spy:
    """A store that tells the test when a replica lost the refresh lock and how often it
    then looked for the winner's outcome; ``patience`` ends a wait that would go on."""

    def __init__(self, store: SessionStore, *, patience: int | None = None) -> None:
        self._store = store
        self.lost_lock = asyncio.Event()
        self.looks_after_loss = 0
        self.patience = patience

    async def get(self, handle: str) -> bytes | None:
        if self.lost_lock.is_set() and handle.startswith("refreshed:"):
            self.looks_after_loss += 1
            if self.patience is not None and self.looks_after_loss > self.patience:
                raise StillWaiting(self.looks_after_loss)
        return await self._store.get(handle)

    async def put(self, handle: str, value: bytes, *, ttl: float) -> None:
        await self._store.put(handle, value, ttl=ttl)

    async def delete(self, handle: str) -> None:
        await self._store.delete(handle)

    async def index_sid(self, sid: str, handle: str, *, ttl: float) -> None:
        await self._store.index_sid(sid, handle, ttl=ttl)

    async def handles_for_sid(self, sid: str) -> list[str]:
        return await self._store.handles_for_sid(sid)

    async def acquire_lock(self, name: str, *, ttl: float) -> Lock | None:
        lock = await self._store.acquire_lock(name, ttl=ttl)
        if lock is None:
            self.lost_lock.set()
        return lock

    async def ping(self) -> bool:
        return await self._store.ping()

    async def close(self) -> None:
        await self._store.close()


class StillWaiting(Exception):
    """Raised by :class:`Spy` once a waiting replica has looked ``patience`` times."""


@asynccontextmanager
async def hang_guard() -> AsyncIterator[None]:
    async with asyncio.timeout(10):  # a hang guard, not a performance bound
        yield


async def stale_session(harness: Harness) -> Session:
    """A session as a request loads it when its tokens are due for a refresh."""
    sessions = harness.sessions()
    cookie = await sessions.save(make_session(), now=NOW)
    return await sessions.load(cookie, now=LATER)


async def test_refresh_once_runs_one_refresh_for_concurrent_callers(harness: Harness) -> None:
    sessions = harness.sessions()
    session = await stale_session(harness)
    refresh = Refresher()
    async with hang_guard():
        callers = [
            asyncio.create_task(sessions.refresh_once(session, refresh, now=LATER))
            for _ in range(5)
        ]
        await refresh.started.wait()
        refresh.release.set()
        results = await asyncio.gather(*callers)
    assert refresh.calls == 1
    assert results[0].id == session.id
    assert results[0].generation == session.generation + 1
    assert results[0].id_token == "id-token-2"
    assert results[0].refresh_token == "refresh-token-2"
    assert all(result == results[0] for result in results)


class GrantedLock:
    async def release(self) -> bool:
        return True


class NoCoordination(MemoryStore):
    """A store that gives every caller the refresh lock and keeps no refresh outcome: only
    the in-process single flight can stop concurrent callers from each refreshing."""

    def __init__(self) -> None:
        super().__init__()
        self.locks_granted = 0

    async def acquire_lock(self, name: str, *, ttl: float) -> Lock | None:
        self.locks_granted += 1
        return GrantedLock()

    async def put(self, handle: str, value: bytes, *, ttl: float) -> None:
        if not handle.startswith("refreshed:"):
            await super().put(handle, value, ttl=ttl)


@pytest.mark.parametrize("kind", [CookieSessions, StoredSessions], ids=["cookie", "stored"])
async def test_concurrent_callers_in_one_process_share_one_refresh_without_the_store(
    kind: type[CookieSessions] | type[StoredSessions],
) -> None:
    store = NoCoordination()
    sessions = kind(RING, store, lifetime=LIFETIME)
    cookie = await sessions.save(make_session(), now=NOW)
    session = await sessions.load(cookie, now=LATER)
    refresh = Refresher()
    async with hang_guard():
        callers = [
            asyncio.create_task(sessions.refresh_once(session, refresh, now=LATER))
            for _ in range(5)
        ]
        await refresh.started.wait()  # every caller ran up to its wait before this refresh
        refresh.release.set()
        results = await asyncio.gather(*callers)
    assert refresh.calls == 1
    assert store.locks_granted == 1
    assert all(result == results[0] for result in results)
    assert results[0].generation == session.generation + 1


async def test_refresh_once_after_a_refresh(harness: Harness) -> None:
    sessions = harness.sessions()
    session = await stale_session(harness)
    first = Refresher()
    first.release.set()
    fresh = await sessions.refresh_once(session, first, now=LATER)
    # A request still carrying the old cookie gets the outcome, without a second refresh.
    late = Refresher()
    late.release.set()
    assert await sessions.refresh_once(session, late, now=LATER + 1) == fresh
    assert (
        await harness.sessions(store=harness.connect()).refresh_once(session, late, now=LATER + 1)
        == fresh
    )
    assert late.calls == 0
    # The refreshed session, when due again, is refreshed again.
    again = Refresher()
    again.release.set()
    newer = await sessions.refresh_once(fresh, again, now=LATER + 2)
    assert again.calls == 1
    assert newer.generation == fresh.generation + 1


async def test_refresh_once_across_two_replicas_refreshes_once(harness: Harness) -> None:
    session = await stale_session(harness)
    winner = harness.sessions()
    spy = Spy(harness.connect())
    loser = harness.sessions(store=spy)
    refresh = Refresher()  # shared: counts the calls of both replicas
    async with hang_guard():
        first = asyncio.create_task(winner.refresh_once(session, refresh, now=LATER))
        await refresh.started.wait()  # the winner holds the lock
        second = asyncio.create_task(loser.refresh_once(session, refresh, now=LATER))
        await spy.lost_lock.wait()  # the loser waits for the winner's outcome
        refresh.release.set()
        fresh, seen_by_loser = await asyncio.gather(first, second)
    assert refresh.calls == 1
    assert fresh.generation == session.generation + 1
    assert seen_by_loser == fresh


async def test_a_failed_refresh_reaches_every_caller_and_frees_the_lock(
    harness: Harness,
) -> None:
    sessions = harness.sessions()
    session = await stale_session(harness)
    failing = Refresher(error=RuntimeError("idp down"))
    async with hang_guard():
        callers = [
            asyncio.create_task(sessions.refresh_once(session, failing, now=LATER))
            for _ in range(5)
        ]
        await failing.started.wait()
        failing.release.set()
        outcomes = await asyncio.gather(*callers, return_exceptions=True)
    assert failing.calls == 1
    assert all(isinstance(outcome, RuntimeError) for outcome in outcomes)
    assert all(str(outcome) == "idp down" for outcome in outcomes)

    # Nothing stale was left behind: the next call refreshes (here and on another replica).
    working = Refresher()
    working.release.set()
    replica = harness.sessions(store=harness.connect())
    fresh = await replica.refresh_once(session, working, now=LATER + 1)
    assert working.calls == 1
    assert fresh.generation == session.generation + 1


async def test_a_failed_refresh_on_one_replica_does_not_hold_up_the_other(harness: Harness) -> None:
    """The loser of the lock should notice that the winner gave up (lock free, no outcome)
    and fail or try itself, not poll for the whole REFRESH_LOCK_TTL (30 s)."""
    session = await stale_session(harness)
    winner = harness.sessions()
    spy = Spy(harness.connect(), patience=5)  # 5 looks, 250 ms: far past the winner's end
    loser = harness.sessions(store=spy)
    failing = Refresher(error=RuntimeError("idp down"))
    async with hang_guard():
        first = asyncio.create_task(winner.refresh_once(session, failing, now=LATER))
        await failing.started.wait()
        second = asyncio.create_task(loser.refresh_once(session, failing, now=LATER))
        await spy.lost_lock.wait()
        failing.release.set()
        outcomes = await asyncio.gather(first, second, return_exceptions=True)
    assert isinstance(outcomes[0], RuntimeError)
    assert not isinstance(outcomes[1], StillWaiting)


def released(refresher: Refresher) -> Refresher:
    refresher.release.set()
    return refresher


@pytest.mark.parametrize(
    ("refreshed_at", "expires_in", "asked_at"),
    [
        # the outcome's own IdP tokens are due for a refresh two seconds after it was made
        pytest.param(LATER, REFRESH_MARGIN + 2, LATER + 2, id="its-tokens-due-again"),
        pytest.param(LATER, HOUR, LATER + int(REFRESHED_TTL), id="past-the-sharing-window"),
        pytest.param(NOW + LIFETIME - 2, HOUR, NOW + LIFETIME, id="past-the-lifetime"),
    ],
)
async def test_a_shared_outcome_no_longer_usable_is_not_served_to_an_old_cookie(
    harness: Harness, refreshed_at: int, expires_in: int, asked_at: int
) -> None:
    """A request with the previous generation's cookie takes the stored outcome of a refresh
    only while that outcome is itself valid; after that it refreshes its own session, which
    fails when the IdP has revoked the grant."""
    sessions = harness.sessions()
    replica = harness.sessions(store=harness.connect())
    session = await stale_session(harness)
    first = released(Refresher(now=refreshed_at, expires_in=expires_in))
    fresh = await sessions.refresh_once(session, first, now=refreshed_at)

    unused = released(Refresher())
    for on in (sessions, replica):  # a second earlier it is shared, on either replica
        assert await on.refresh_once(session, unused, now=asked_at - 1) == fresh
    assert unused.calls == 0

    revoked = released(Refresher(error=RuntimeError("invalid_grant")))
    for on in (sessions, replica):
        with pytest.raises(RuntimeError, match="invalid_grant"):
            await on.refresh_once(session, revoked, now=asked_at)
    assert revoked.calls == 2  # each replica asked the IdP; neither served the outcome

    honoured = released(Refresher(now=asked_at))  # an IdP that still takes the old grant
    again = await replica.refresh_once(session, honoured, now=asked_at)
    assert honoured.calls == 1
    assert (again.seen, again.generation) == (asked_at, session.generation + 1)


async def test_the_store_forgets_a_shared_outcome_after_refreshed_ttl(harness: Harness) -> None:
    assert REFRESHED_TTL <= REFRESH_LOCK_TTL  # only as long as overlapping requests need it
    sessions = harness.sessions()
    session = await stale_session(harness)
    start = harness.clock.now if harness.clock is not None else 0.0
    await sessions.refresh_once(session, released(Refresher()), now=LATER)
    name = f"refreshed:{session.id}"
    assert await harness.store.get(name) is not None
    if harness.clock is not None:
        harness.clock.now = start + REFRESHED_TTL - 1
        assert await harness.store.get(name) is not None
        harness.clock.now = start + REFRESHED_TTL
        assert await harness.store.get(name) is None
        return
    assert harness.redis_url is not None  # a real redis-server keeps its own clock: its TTL
    client = redis.asyncio.Redis.from_url(harness.redis_url)
    try:
        [key] = [key async for key in client.scan_iter(match=f"*{name}")]
        assert 0 < await client.pttl(key) <= REFRESHED_TTL * 1000
    finally:
        await client.aclose()


# --- what the store holds -------------------------------------------------------------------


@pytest.mark.parametrize("kind", [COOKIE_REDIS, STORED_REDIS], ids=lambda kind: kind.name)
async def test_redis_never_holds_a_token_or_claim_in_clear(kind: Kind) -> None:
    async with running(kind) as harness:
        sessions = harness.sessions()
        session = await stale_session(harness)
        await sessions.save(make_session(sid="sid-2"), now=NOW)
        refresh = Refresher()
        refresh.release.set()
        fresh = await sessions.refresh_once(session, refresh, now=LATER)
        await sessions.save(fresh, now=LATER)
        await sessions.end(make_session(sid=None), now=NOW)
        assert harness.redis_url is not None
        client = redis.asyncio.Redis.from_url(harness.redis_url)
        try:
            held: list[bytes | str] = []
            keys = [key async for key in client.scan_iter(match="*")]
            assert keys  # something was written
            for key in keys:
                held.append(key)
                kind_of = await client.type(key)
                if kind_of == b"string":
                    held.append(await client.get(key) or b"")
                else:
                    assert kind_of == b"set"
                    held.extend(await client.smembers(key))
        finally:
            await client.aclose()
        dump = b"\n".join(item.encode() if isinstance(item, str) else item for item in held)
        for secret in (b"CLEARTEXT", b"refresh-token", b"id-token", b"alice", b"contoso"):
            assert secret not in dump
