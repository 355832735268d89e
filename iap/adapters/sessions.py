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
- A refresh happens once per session across tasks and replicas: in-process callers share
  one future, other replicas meet at a store lock and then read the refreshed session
  (sealed) that the winner leaves behind for :data:`REFRESHED_TTL` seconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

from iap.adapters.store import SessionStore
from iap.domain import sealing
from iap.domain import session as sessions
from iap.domain.session import HANDLE_PURPOSE, SESSION_PURPOSE, Session

REFRESH_LOCK_TTL = 30.0
"""Seconds a refresh may hold its lock; longer than the IdP call's timeout."""
REFRESHED_TTL = 60.0
"""Seconds the outcome of a refresh stays readable for requests that carried the old cookie."""
WAIT_STEP = 0.05
"""Seconds between looks for another replica's refresh outcome (bounded by the lock TTL)."""


class SessionRejected(Exception):
    """The cookie names no usable session; ``reason`` is for the log and the audit line."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"session rejected ({reason})")
        self.reason = reason


Refresh = Callable[[Session], Awaitable[Session]]


class Sessions(Protocol):
    """Load, save and end sessions; the cookie value is opaque to callers."""

    async def load(self, cookie: str, *, now: int) -> Session:
        """The session the cookie value stands for; :class:`SessionRejected` otherwise."""
        ...

    async def save(self, session: Session, *, now: int) -> str:
        """Persist ``session``; returns the cookie value to set."""
        ...

    async def end(self, session: Session) -> None:
        """Sign out: the session (and others of its IdP ``sid``) no longer loads."""
        ...

    async def end_sid(self, sid: str) -> None:
        """Front-channel logout: every session of the IdP session ``sid`` ends."""
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

    def _seal(self, session: Session, now: int) -> str:
        return sealing.seal(
            self._keyring, sessions.encode(session), purpose=SESSION_PURPOSE, now=now
        )

    def _open(self, token: str, *, purpose: bytes, now: int) -> bytes:
        try:
            return sealing.open(
                self._keyring, token, purpose=purpose, now=now, max_age=self._lifetime
            )
        except sealing.SealError as exc:
            raise SessionRejected(exc.reason) from None

    def _open_session(self, token: str, *, now: int) -> Session:
        try:
            return sessions.decode(self._open(token, purpose=SESSION_PURPOSE, now=now))
        except ValueError:
            raise SessionRejected("malformed") from None

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
        done = await self._refreshed(session, now)
        if done is not None:
            return done
        lock = await self._store.acquire_lock(f"refresh:{session.id}", ttl=REFRESH_LOCK_TTL)
        if lock is None:
            return await self._await_other_replica(session, now)
        try:
            fresh = await refresh(session)
            sealed = self._seal(fresh, fresh.seen).encode()
            await self._store.put(f"refreshed:{session.id}", sealed, ttl=REFRESHED_TTL)
            return fresh
        finally:
            await lock.release()

    async def _refreshed(self, session: Session, now: int) -> Session | None:
        """A refresh outcome newer than ``session`` that another request already stored."""
        stored = await self._store.get(f"refreshed:{session.id}")
        if stored is None:
            return None
        try:
            fresh = self._open_session(stored.decode("ascii"), now=now)
        except (SessionRejected, UnicodeDecodeError):
            return None
        return fresh if fresh.generation > session.generation else None

    async def _await_other_replica(self, session: Session, now: int) -> Session:
        for _ in range(int(REFRESH_LOCK_TTL / WAIT_STEP)):
            await asyncio.sleep(WAIT_STEP)
            done = await self._refreshed(session, now)
            if done is not None:
                return done
        raise SessionRejected("refresh_timeout")


class CookieSessions(_Base):
    """The sealed session is the cookie; the store keeps revocations and refresh locks."""

    async def load(self, cookie: str, *, now: int) -> Session:
        session = self._open_session(cookie, now=now)
        if await self._store.get(_revocation(session)) is not None:
            raise SessionRejected("revoked")
        return session

    async def save(self, session: Session, *, now: int) -> str:
        return self._seal(session, now)

    async def end(self, session: Session) -> None:
        await self._store.put(_revocation(session), b"1", ttl=self._ttl(session, session.seen))

    async def end_sid(self, sid: str) -> None:
        await self._store.put(f"revoked:sid:{sid}", b"1", ttl=float(self._lifetime))


def _revocation(session: Session) -> str:
    """One key per session to look up: its IdP ``sid`` when it has one, else its own id."""
    return f"revoked:sid:{session.sid}" if session.sid else f"revoked:id:{session.id}"


class StoredSessions(_Base):
    """The cookie carries a sealed handle; the sealed session lives in the store."""

    async def load(self, cookie: str, *, now: int) -> Session:
        handle = self._open(cookie, purpose=HANDLE_PURPOSE, now=now).decode("ascii", "replace")
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
            self._keyring, session.id.encode(), purpose=HANDLE_PURPOSE, now=session.created
        )

    async def end(self, session: Session) -> None:
        await self._store.delete(session.id)
        if session.sid:
            await self.end_sid(session.sid)

    async def end_sid(self, sid: str) -> None:
        for handle in await self._store.handles_for_sid(sid):
            await self._store.delete(handle)
