"""The ``redis`` block: where shared session state and rate-limit counts live, and how iap
reaches it (one server by URL, a Sentinel-managed primary, or a Redis Cluster), with
credentials and TLS.

Invariants:
- Credentials never sit in the config text: ``redis.url`` refuses userinfo, and passwords
  come from ``password_file`` keys, read once by the composition root (``iap.app.secrets``).
- Every combination accepted here is one the Redis adapter really builds; the rest are
  refused by key path: TLS files only with ``rediss://``, a client key only with its
  certificate, a Sentinel block with a URL that carries at most the database.
- Sentinel is named one way at a time: a ``sentinel`` block, or a
  ``redis+sentinel://host:port[,host:port...]/MASTER[/DB]`` url (the form of the ``limits``
  library's sentinel storage); both at once is refused. :attr:`Redis.sentinels` is the one
  the adapter reads, whichever was written.
- ``cluster: true`` makes ``url`` a seed node of a Redis Cluster (database 0 only, no unix
  socket, no Sentinel).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from pydantic import Field, FilePath, field_validator, model_validator

from iap.config.fields import Address, AddressField, Duration, Model, to_address

_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel")
_CREDENTIALS = "credentials do not belong in the URL; use redis.username and redis.password_file"


def _sentinel_url(value: str) -> tuple[list[Address], str, int]:
    """The sentinels, the master name and the database of a ``redis+sentinel://`` URL."""
    parts = urlsplit(value)
    if "@" in parts.netloc:
        raise ValueError(_CREDENTIALS)
    match = re.fullmatch(r"/([^/]+)(?:/(\d+))?/?", parts.path)
    if match is None or parts.query or parts.fragment:
        raise ValueError("expected redis+sentinel://HOST:PORT[,HOST:PORT...]/MASTER[/DB]")
    try:
        addresses = [to_address(address) for address in parts.netloc.split(",")]
    except ValueError:
        raise ValueError("expected redis+sentinel://HOST:PORT[,HOST:PORT...]/MASTER[/DB]") from None
    return addresses, match[1], int(match[2] or 0)


def _url(value: str) -> str:
    """``redis://host[:port][/db]``, ``rediss://...``, ``unix:///path/to/socket`` or
    ``redis+sentinel://host:port[,host:port...]/master[/db]``."""
    parts = urlsplit(value)
    if parts.scheme not in _SCHEMES:
        raise ValueError("expected a redis://, rediss://, unix:// or redis+sentinel:// URL")
    if parts.scheme == "redis+sentinel":
        _sentinel_url(value)
        return value
    if parts.username or parts.password:
        raise ValueError(_CREDENTIALS)
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
    cluster: bool = False

    @field_validator("url")
    @classmethod
    def _valid_url(cls, value: str | None) -> str | None:
        return None if value is None else _url(value)

    @property
    def tls(self) -> bool:
        return self.url is not None and self.url.startswith("rediss:")

    @property
    def sentinel_url(self) -> bool:
        return self.url is not None and self.url.startswith("redis+sentinel:")

    @property
    def sentinels(self) -> RedisSentinel | None:
        """The Sentinel setup, from the ``sentinel`` block or a ``redis+sentinel://`` url."""
        if self.sentinel is not None or not self.sentinel_url:
            return self.sentinel
        assert self.url is not None
        addresses, master, _ = _sentinel_url(self.url)
        return RedisSentinel(master=master, addresses=addresses)

    @property
    def database(self) -> int:
        """The database number the url names (0 when it names none)."""
        if self.url is None:
            return 0
        if self.sentinel_url:
            return _sentinel_url(self.url)[2]
        path = urlsplit(self.url).path.strip("/")
        return int(path) if path.isdigit() else 0

    @model_validator(mode="after")
    def _consistent(self) -> Redis:
        if self.sentinel is None and self.url is None:
            raise ValueError("set url (or a sentinel block)")
        if self.sentinel is not None and self.sentinel_url:
            raise ValueError(
                "set the sentinels once: a redis+sentinel:// url or a sentinel block, not both"
            )
        if self.cluster:
            self._cluster_consistent()
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

    def _cluster_consistent(self) -> None:
        scheme = urlsplit(self.url or "").scheme
        if scheme not in ("redis", "rediss") or self.sentinel is not None:
            raise ValueError(
                "cluster needs a redis:// or rediss:// url naming a node of the cluster "
                "(no unix socket, no sentinel)"
            )
        if self.database != 0:
            raise ValueError("cluster: a Redis Cluster has only database 0 (url .../0)")
