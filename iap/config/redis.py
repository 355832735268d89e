"""The ``redis`` block: where shared session state and rate-limit counts live, and how iap
reaches it (one server by URL, or a Sentinel-managed primary), with credentials and TLS.

Invariants:
- Credentials never sit in the config text: ``redis.url`` refuses userinfo, and passwords
  come from ``password_file`` keys, read once by the composition root (``iap.app.secrets``).
- Every combination accepted here is one the Redis adapter really builds; the rest are
  refused by key path: TLS files only with ``rediss://``, a client key only with its
  certificate, a Sentinel block with a URL that carries at most the database.
- Cluster mode is not offered yet (``cluster`` is an unknown key, so it is refused).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from pydantic import Field, FilePath, field_validator, model_validator

from iap.config.fields import AddressField, Duration, Model

_SCHEMES = ("redis", "rediss", "unix")


def _url(value: str) -> str:
    """``redis://host[:port][/db]``, ``rediss://...`` or ``unix:///path/to/socket``."""
    parts = urlsplit(value)
    if parts.scheme not in _SCHEMES:
        raise ValueError("expected a redis://, rediss:// or unix:// URL")
    if parts.username or parts.password:
        raise ValueError(
            "credentials do not belong in the URL; use redis.username and redis.password_file"
        )
    if parts.scheme == "unix":
        if not parts.path.startswith("/") or parts.hostname:
            raise ValueError("expected unix:///path/to/redis.sock")
    elif parts.path not in ("", "/") and not re.fullmatch(r"/\d+", parts.path):
        raise ValueError("the path of a redis URL is the database number, e.g. /0")
    if parts.fragment:
        raise ValueError("a redis URL has no #fragment")
    return value.rstrip("/") if parts.path in ("", "/") else value


class RedisSentinel(Model):
    """Sentinels that name the current primary of ``master`` (redis-py's ``Sentinel``)."""

    master: str = Field(min_length=1)
    addresses: list[AddressField] = Field(min_length=1)
    username: str | None = Field(None, min_length=1)
    password_file: FilePath | None = None


class Redis(Model):
    url: str | None = None
    username: str | None = Field(None, min_length=1)
    password_file: FilePath | None = None
    ca_file: FilePath | None = None
    cert_file: FilePath | None = None
    key_file: FilePath | None = None
    timeout: Duration = 0.5
    sentinel: RedisSentinel | None = None

    @field_validator("url")
    @classmethod
    def _valid_url(cls, value: str | None) -> str | None:
        return None if value is None else _url(value)

    @property
    def tls(self) -> bool:
        return self.url is not None and self.url.startswith("rediss:")

    @model_validator(mode="after")
    def _consistent(self) -> Redis:
        if self.sentinel is None and self.url is None:
            raise ValueError("set url (or a sentinel block)")
        if self.sentinel is not None and self.url is not None:
            parts = urlsplit(self.url)
            if parts.scheme != "redis" or parts.hostname:
                raise ValueError(
                    "with sentinel, url may only carry the database (redis:///0); "
                    "the sentinels name the host, and TLS through sentinels is not supported"
                )
        tls_files = [self.ca_file, self.cert_file, self.key_file]
        if any(f is not None for f in tls_files) and not self.tls:
            raise ValueError("ca_file, cert_file and key_file need a rediss:// url")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self
