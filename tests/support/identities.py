"""Plain identities and a hand-moved clock shared by the session, policy and store tests."""

from __future__ import annotations

from iap.model import Identity

ALICE = Identity(
    subject="tid-1:oid-alice",
    tid="tid-1",
    oid="oid-alice",
    name="Alice",
    email="alice@contoso.com",
    preferred_username="alice@contoso.com",
    roles=("admin", "reader"),
    groups=("g-1",),
)


class Clock:
    """A monotonic clock the tests move by hand (``MemoryStore(clock=...)``)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now
