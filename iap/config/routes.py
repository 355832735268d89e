"""``routes[]``: how a request is matched, where it goes and under which limits (SPEC §5.1).

Invariants:
- ``upstream`` is an origin (no path, query or fragment); ``upstream_tls`` needs https.
- A route's name is a safe token: it becomes a metric label, a span attribute and, by
  default, the audience of the tokens minted for it.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    Field,
    FilePath,
    StrictBool,
    field_validator,
    model_validator,
)

from iap.config.fields import Duration, HttpUrl, Model, Size, absolute_prefix
from iap.config.policy import Policy


class Match(Model):
    host: str | None = None
    path_prefix: Annotated[str, AfterValidator(absolute_prefix)] = "/"
    methods: frozenset[str] | None = None

    @field_validator("host")
    @classmethod
    def _lower_host(cls, value: str | None) -> str | None:
        # Routing compares host names only: a port here could never match.
        if value is not None and not re.fullmatch(r"[A-Za-z0-9.-]+", value):
            raise ValueError("expected a host name without port, such as api.contoso.com")
        return value.lower().rstrip(".") if value else value

    @field_validator("methods", mode="before")
    @classmethod
    def _upper_methods(cls, value: object) -> object:
        if isinstance(value, list | tuple | set | frozenset):
            return frozenset(str(m).upper() for m in value)
        return value


class UpstreamTLS(Model):
    ca_file: FilePath | None = None
    cert_file: FilePath | None = None
    key_file: FilePath | None = None
    server_name: str | None = None
    verify_san: list[str] = []

    @model_validator(mode="after")
    def _pair(self) -> UpstreamTLS:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class RateLimit(Model):
    requests: int = Field(gt=0)
    per: Duration
    burst: int = Field(0, ge=0)
    key: Literal["subject", "client", "route"] | None = None
    on_store_error: Literal["allow", "deny"] = "allow"


class Timeouts(Model):
    connect: Duration = 2.0
    read: Duration = 30.0
    total: Duration | None = None


class Pool(Model):
    """The keep-alive pool of connections to the route's upstream."""

    max_connections: int = Field(1000, gt=0, le=100_000)
    max_idle: int = Field(100, ge=0, le=100_000)


class Circuit(Model):
    """Upstream circuit breaker: open after consecutive connection failures."""

    failures: int = Field(5, gt=0)
    cooldown: Duration = 10.0


def _origin(value: object) -> str:
    text = str(value).rstrip("/")
    if urlsplit(text).path or "?" in text or "#" in text:
        raise ValueError("expected an origin such as https://gateway:443, without a path")
    return text


class Exchange(Model):
    """Who may obtain a token for the route's audience at ``POST /.iap/token`` (SPEC §5.1):
    the audiences (of iap tokens) and client application ids (of Entra tokens) named here."""

    from_: list[str] = Field(alias="from", min_length=1)


class Route(Model):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]
    match: Match = Match()
    upstream: Annotated[HttpUrl, AfterValidator(_origin)]
    upstream_tls: UpstreamTLS | None = None
    audience: str | None = None
    policy: Policy
    rate_limit: RateLimit | None = None
    exchange: Exchange | None = None
    timeouts: Timeouts = Timeouts()
    pool: Pool = Pool()
    circuit: Circuit = Circuit()
    max_body: Size = 10 * 2**20
    preserve_host: StrictBool = True

    @model_validator(mode="after")
    def _tls_needs_https(self) -> Route:
        if self.upstream_tls is not None and not self.upstream.startswith("https://"):
            raise ValueError("upstream_tls is set but upstream is not an https:// URL")
        return self
