"""The Redis passwords as one value (``redis.password_file``,
``redis.sentinel.password_file``), apart from :mod:`iap.adapters.redis_client` so that the
secrets of the composition root can name the type without importing redis-py.

Invariants:
- ``repr`` masks both passwords; nothing here logs or formats them.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RedisPasswords:
    """The passwords of ``redis.password_file`` and ``redis.sentinel.password_file``."""

    password: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        masked = {k: "***" if v else None for k, v in vars(self).items()}
        return f"RedisPasswords({', '.join(f'{k}={v}' for k, v in masked.items())})"
