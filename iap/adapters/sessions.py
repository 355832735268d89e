"""Where browser sessions live: sealed in the cookie, or in a store behind a sealed handle
(SPEC §5 ``session.store``, §7 Sessions, §9).

Two implementations of one interface, :class:`Sessions`, passing one conformance suite:

- :class:`CookieSessions` (``store: cookie``, the default): the whole session, sealed, is
  the cookie value. Server state is only what must be shared: revocations (logout and
  front-channel logout by ``sid``) and refresh locks, in the :class:`SessionStore` given
  (memory for one process, Redis across replicas).
- :class:`StoredSessions` (``store: redis``): the cookie carries a sealed random handle; the
  sealed session lives in the store until its absolute expiry, indexed by ``sid``.

Invariants:
- Everything that leaves the process is sealed (``iap.domain.sealing``) under a purpose of
  its own: a handle never opens as a session, a session never as a handle. Redis never holds
  a refresh token in clear.
- :meth:`Sessions.load` raises :class:`SessionRejected` for anything it cannot trust
  (tampered, foreign key, expired seal, revoked, gone from the store) and
  :class:`~iap.adapters.store.StoreUnavailable` when the store is down: callers fail closed.
- Opened values are cached by their exact sealed text (bounded, least recently used first
  out): the same authenticated ciphertext always opens to the same plaintext under one
  keyring, and every check that depends on time or state (expiry, revocation, the record in
  the store) still runs on each load. The cache only saves the decryption and the parse.
- A refresh happens once per session across tasks and replicas: in-process callers share
  one future, other replicas meet at a store lock and then read the refreshed session
  (sealed) that the winner leaves behind for :data:`REFRESHED_TTL` seconds.
- That shared outcome serves a request carrying an older generation of the cookie only while
  it is itself usable: refreshed less than :data:`REFRESHED_TTL` seconds before the request
  (in the caller's clock as well as by the store's TTL), within its absolute lifetime, and
  with IdP tokens not yet due for a refresh (``sessions.state`` is ``valid``; the configured
  idle timeout is the caller's check, on the cookie it holds). Anything else refreshes the
  caller's own session again, which the IdP may refuse: an old cookie never rides on a newer
  generation's tokens once those have expired or the grant is revoked.
"""

from __future__ import annotations

import asyncio
import os
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Generic, Protocol, TypeVar

from iap.adapters.store import SessionStore
from iap.domain import sealing
from iap.domain import session as sessions
from iap.domain.session import HANDLE_PURPOSE, SESSION_PURPOSE, Session

REFRESH_LOCK_TTL = 30.0
"""Seconds a refresh may hold its lock; longer than the IdP call's timeout."""
REFRESHED_TTL = 10.0
"""Seconds the outcome of a refresh serves requests that carried the previous cookie.

Only requests that overlap the refresh need it: other replicas waiting at the lock (they
look every :data:`WAIT_STEP` and read it at once), and requests the browser sent with the old
cookie before the answer that set the new one arrived (network round trips, a few seconds at
worst). Ten seconds covers those with room for clock differences between replicas and stays
far below :data:`REFRESH_LOCK_TTL`; a longer window would only let a copy of an old cookie
ride on a newer generation's tokens.
"""
WAIT_STEP = 0.05
"""Seconds between looks for another replica's refresh outcome (bounded by the lock TTL)."""
CACHE_SIZE = 4096
"""Opened sessions kept per process; about 2 KB each."""


class SessionRejected(Exception):
    """The cookie names no usable session; ``reason`` is for the log and the audit line."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"session rejected ({reason})")
        self.reason = reason


Refresh = Callable[[Session], Awaitable[Session]]
_K = TypeVar("_K")
_V = TypeVar("_V")


class Sessions(Protocol):
    """Load, save and end sessions; the cookie value is opaque to callers."""

    async def load(self, cookie: str, *, now: int) -> Session:
        """The session the cookie value stands for; :class:`SessionRejected` otherwise."""
        ...

    async def save(self, session: Session, *, now: int) -> str:
        """Persist ``session``; returns the cookie value to set."""
        ...

    async def end(self, session: Session, *, now: int) -> None:
        """Sign out: the session, and others of its IdP ``sid`` so far, no longer load."""
        ...

    async def end_sid(self, sid: str, *, now: int) -> None:
        """Front-channel logout: every session of the IdP session ``sid`` so far ends."""
        ...

    async def refresh_once(self, session: Session, refresh: Refresh, *, now: int) -> Session:
        """Run ``refresh`` for ``session`` at most once across callers and replicas."""
        ...


class _Base:
    def __init__(self, keyring: sealing.Keyring, store: SessionStore, *, lifetime: float) -> None:
        self._keyring = keyring
        self._store = store
        self._lifetime = int(lifetime)
        self._inflight: dict[str, asyncio.Future[Session]] = {}
        # sealed text -> (what it opened to, its issue time), for the time checks on a hit
        self._handles: _Lru[str, tuple[str, int]] = _Lru(CACHE_SIZE)
        self._opened: _Lru[str, tuple[Session, int]] = _Lru(CACHE_SIZE)

    def _seal(self, session: Session, now: int) -> str:
        return sealing.seal(
            self._keyring,
            sessions.encode(session),
            purpose=SESSION_PURPOSE,
            now=now,
            random=os.urandom,
        )

    def _open(self, token: str, *, purpose: bytes, now: int) -> tuple[bytes, int]:
        """The plaintext and issue time of ``token``; :class:`SessionRejected` if refused."""
        try:
            plaintext = sealing.open(
                self._keyring, token, purpose=purpose, now=now, max_age=self._lifetime
            )
        except sealing.SealError as exc:
            raise SessionRejected(exc.reason) from None
        issued = sealing.issued_at(token)
        assert issued is not None  # open() accepted the token, header included
        return plaintext, issued

    def _check_age(self, issued: int, now: int) -> None:
        """The time checks of :func:`sealing.open`, for a token found in a cache."""
        if issued > now + sealing.CLOCK_SKEW:
            raise SessionRejected("future")
        if now - issued > self._lifetime:
            raise SessionRejected("expired")

    def _open_handle(self, token: str, *, now: int) -> str:
        cached = self._handles.get(token)
        if cached is not None:
            self._check_age(cached[1], now)
            return cached[0]
        plaintext, issued = self._open(token, purpose=HANDLE_PURPOSE, now=now)
        handle = plaintext.decode("ascii", "replace")
        self._handles.put(token, (handle, issued))
        return handle

    def _open_session(self, token: str, *, now: int) -> Session:
        cached = self._opened.get(token)
        if cached is not None:
            self._check_age(cached[1], now)
            return cached[0]
        plaintext, issued = self._open(token, purpose=SESSION_PURPOSE, now=now)
        try:
            session = sessions.decode(plaintext)
        except ValueError:
            raise SessionRejected("malformed") from None
        self._opened.put(token, (session, issued))
        return session

    def _ttl(self, session: Session, now: int) -> float:
        return max(1.0, float(sessions.expires_at(session, lifetime=self._lifetime) - now))

    async def refresh_once(self, session: Session, refresh: Refresh, *, now: int) -> Session:
        running = self._inflight.get(session.id)
        if running is None:
            running = asyncio.ensure_future(self._refresh_across_replicas(session, refresh, now))
            self._inflight[session.id] = running
            running.add_done_callback(lambda _: self._inflight.pop(session.id, None))
        return await asyncio.shield(running)

    async def _refresh_across_replicas(
        self, session: Session, refresh: Refresh, now: int
    ) -> Session:
        """Take the store lock and refresh, or take what the lock's holder refreshed.

        A holder that fails stores nothing and frees the lock; a waiter then takes the lock
        and tries itself, rather than waiting out the lock's TTL.
        """
        for _ in range(int(REFRESH_LOCK_TTL / WAIT_STEP)):
            done = await self._refreshed(session, now)
            if done is not None:
                return done
            lock = await self._store.acquire_lock(f"refresh:{session.id}", ttl=REFRESH_LOCK_TTL)
            if lock is not None:
                try:
                    fresh = await refresh(session)
                    sealed = self._seal(fresh, fresh.seen).encode()
                    await self._store.put(f"refreshed:{session.id}", sealed, ttl=REFRESHED_TTL)
                    return fresh
                finally:
                    await lock.release()
            await asyncio.sleep(WAIT_STEP)
        raise SessionRejected("refresh_timeout")

    async def _refreshed(self, session: Session, now: int) -> Session | None:
        """A refresh outcome newer than ``session`` that another request stored, if usable."""
        stored = await self._store.get(f"refreshed:{session.id}")
        if stored is None:
            return None
        try:
            fresh = self._open_session(stored.decode("ascii"), now=now)
        except (SessionRejected, UnicodeDecodeError):
            return None
        if fresh.generation <= session.generation:
            return None
        # ``seen`` of an outcome is the time of its refresh, so with REFRESHED_TTL as the idle
        # timeout "idle" means "refreshed too long ago to share"; "stale" means its IdP tokens
        # are due again, "expired" that the session is past its absolute lifetime.
        status = sessions.state(fresh, now=now, lifetime=self._lifetime, idle_timeout=REFRESHED_TTL)
        return fresh if status == "valid" else None


class CookieSessions(_Base):
    """The sealed session is the cookie; the store keeps revocations and refresh locks."""

    async def load(self, cookie: str, *, now: int) -> Session:
        session = self._open_session(cookie, now=now)
        record = await self._store.get(_revocation(session.sid or session.id))
        if record is not None:
            before, _, ended = record.decode("ascii", "replace").partition(":")
            if session.created < int(before or 0) or session.id == ended:
                raise SessionRejected("revoked")
        return session

    async def save(self, session: Session, *, now: int) -> str:
        if session.sid and session.seen == session.created:  # at sign-in
            # Known sids only, so a front-channel logout for a made-up sid stores nothing.
            await self._store.index_sid(session.sid, session.id, ttl=self._ttl(session, now))
        return self._seal(session, now)

    async def end(self, session: Session, *, now: int) -> None:
        # Sessions of the same IdP session until now end; a sign-in after this one loads
        # even when the IdP kept its session (and sid), as with StoredSessions.
        await self._revoke(session.sid or session.id, before=now + 1, ended=session.id)

    async def end_sid(self, sid: str, *, now: int) -> None:
        if await self._store.handles_for_sid(sid):
            await self._revoke(sid, before=now + 1, ended="")

    async def _revoke(self, name: str, *, before: int, ended: str) -> None:
        """Record that sessions of ``name`` created before ``before``, and ``ended``, are over.

        The record outlives every session it ends: those were created before it and end
        ``lifetime`` after their creation at the latest.
        """
        record = f"{before}:{ended}".encode()
        await self._store.put(_revocation(name), record, ttl=float(self._lifetime) + 1)


class _Lru(Generic[_K, _V]):
    """A bounded mapping that forgets the least recently used entry first."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._entries: OrderedDict[_K, _V] = OrderedDict()

    def get(self, key: _K) -> _V | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: _K, value: _V) -> None:
        self._entries[key] = value
        if len(self._entries) > self._size:
            self._entries.popitem(last=False)


def _revocation(name: str) -> str:
    """The one key a cookie session looks up: its IdP ``sid`` when it has one, else its id."""
    return f"revoked:{name}"


class StoredSessions(_Base):
    """The cookie carries a sealed handle; the sealed session lives in the store."""

    async def load(self, cookie: str, *, now: int) -> Session:
        handle = self._open_handle(cookie, now=now)
        stored = await self._store.get(handle)
        if stored is None:
            raise SessionRejected("gone")
        try:
            token = stored.decode("ascii")
        except UnicodeDecodeError:
            raise SessionRejected("malformed") from None
        session = self._open_session(token, now=now)
        if session.id != handle:
            raise SessionRejected("invalid")
        return session

    async def save(self, session: Session, *, now: int) -> str:
        ttl = self._ttl(session, now)
        await self._store.put(session.id, self._seal(session, now).encode(), ttl=ttl)
        if session.sid:
            await self._store.index_sid(session.sid, session.id, ttl=ttl)
        # The handle is sealed at sign-in time, so it expires with the session.
        return sealing.seal(
            self._keyring,
            session.id.encode(),
            purpose=HANDLE_PURPOSE,
            now=session.created,
            random=os.urandom,
        )

    async def end(self, session: Session, *, now: int) -> None:
        await self._store.delete(session.id)
        if session.sid:
            await self.end_sid(session.sid, now=now)

    async def end_sid(self, sid: str, *, now: int) -> None:
        for handle in await self._store.handles_for_sid(sid):
            await self._store.delete(handle)
