"""The sections of ``iap.yaml`` around the routes: listeners, limits, sign-in, sessions,
Redis, minted tokens, bearer tokens, forward-auth, telemetry, and :class:`Config`, the whole.

Invariants:
- Exactly one OIDC client credential: a secret file, a certificate, or the
  ``IAP_OIDC_CLIENT_SECRET`` variable, which validation learns of through its context
  (``{"environment": Environment}``), never by reading the process environment.
- Session lifetimes stay within what browsers keep (400 days).
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Literal

from pydantic import (
    Field,
    FilePath,
    ValidationInfo,
    field_validator,
    model_validator,
)

from iap.config.fields import (
    AddressField,
    Duration,
    DurationOrZero,
    HeaderName,
    HttpUrl,
    Model,
    Size,
    TLSFiles,
    cidrs,
    to_address,
)
from iap.config.redis import Redis
from iap.config.routes import Route
from iap.environment import Environment


class Listen(Model):
    address: AddressField = to_address("0.0.0.0:8443")
    tls: TLSFiles | None = None


class Admin(Model):
    address: AddressField = to_address("127.0.0.1:9090")


class Limits(Model):
    """Request bounds applied before any other work (SPEC §2 step 1), the load a process
    takes on at once, and how long a client may take to send a request head or stay idle."""

    max_headers: int = Field(100, gt=0, le=1000)
    max_header_bytes: Size = 32 * 1024
    max_url_bytes: Size = 8 * 1024
    max_in_flight: int = Field(1000, gt=0, le=1_000_000)
    header_timeout: Duration = 10.0
    keepalive_timeout: Duration = 75.0


class ClientCertificate(Model):
    cert_file: FilePath
    key_file: FilePath


class OIDC(Model):
    issuer: HttpUrl
    allowed_tenants: list[str] = Field(min_length=1)
    client_id: str = Field(min_length=1)
    client_secret_file: FilePath | None = None
    client_certificate: ClientCertificate | None = None
    scopes: list[str] = ["openid", "profile", "email", "offline_access"]
    groups_overage: Literal["graph", "deny"] = "graph"
    graph_url: HttpUrl = "https://graph.microsoft.com"
    response_mode: Literal["query", "form_post"] = "query"
    clock_skew: Duration = 120.0
    metadata_max_stale: Duration = 24 * 3600.0

    @field_validator("metadata_max_stale")
    @classmethod
    def _stale_bounded(cls, value: float) -> float:
        if not 60 <= value <= 7 * 86400:
            raise ValueError("between 1m and 7d")
        return value

    @field_validator("issuer")
    @classmethod
    def _entra_shape(cls, value: str) -> str:
        if not re.fullmatch(r"[^?#]+/[A-Za-z0-9.-]+/v2\.0", value):
            raise ValueError(
                "expected an Entra ID v2.0 issuer such as "
                "https://login.microsoftonline.com/<tenant-id>/v2.0"
            )
        return value

    @field_validator("scopes")
    @classmethod
    def _openid(cls, value: list[str]) -> list[str]:
        if "openid" not in value:
            raise ValueError("must include openid")
        return value

    @model_validator(mode="after")
    def _one_client_credential(self, info: ValidationInfo) -> OIDC:
        environment = info.context["environment"] if info.context else Environment()
        has_env = environment.client_secret is not None
        given = [self.client_secret_file is not None, self.client_certificate is not None, has_env]
        if sum(given) != 1:
            raise ValueError(
                "set exactly one of client_secret_file, client_certificate "
                "or the IAP_OIDC_CLIENT_SECRET environment variable"
            )
        return self


class Session(Model):
    store: Literal["cookie", "redis"] = "cookie"
    keys_file: FilePath | None = None
    lifetime: Duration = 8 * 3600.0
    idle_timeout: Duration = 3600.0
    refresh_grace: DurationOrZero = 300.0

    @field_validator("refresh_grace")
    @classmethod
    def _grace_bounded(cls, value: float) -> float:
        if value > 3600:
            raise ValueError("at most 1h (0 turns the grace off)")
        return value

    @field_validator("lifetime")
    @classmethod
    def _bounded(cls, value: float) -> float:
        if value > 400 * 86400:  # browsers cap cookie lifetimes at 400 days
            raise ValueError("at most 400d")
        return value


class Tokens(Model):
    issuer: HttpUrl
    keys_dir: Path
    ttl: Duration = 300.0
    publish_before_use: Duration = 1500.0
    header: HeaderName = "authorization"
    roles: dict[str, str] = {}

    @field_validator("keys_dir")
    @classmethod
    def _keys_dir_exists(cls, value: Path, info: ValidationInfo) -> Path:
        """Checked with the other files when the config is to serve (``iap check``, ``iap
        run``); ``iap mesh render`` and ``iap policy explain`` never read the keys."""
        if (info.context or {}).get("serving") and not value.is_dir():
            raise ValueError("no such directory")
        return value


class Bearer(Model):
    entra_audiences: list[str] = []


class ForwardAuth(Model):
    """Where ``/.iap/auth`` reads the original request (SPEC §5.1); nginx's names by default.

    Exactly these headers are read, one value each; see ``iap.domain.forward_auth``.
    """

    uri_header: HeaderName = "x-original-uri"
    method_header: HeaderName = "x-original-method"
    host_header: HeaderName = "x-forwarded-host"

    @model_validator(mode="after")
    def _distinct(self) -> ForwardAuth:
        names = (self.uri_header, self.method_header, self.host_header)
        if len(set(names)) != len(names):
            raise ValueError("uri_header, method_header and host_header must be three headers")
        return self


class AuthFailures(Model):
    """Failed sign-ins and refused bearer tokens allowed per client address (edge-wide);
    past them, callbacks and bearer requests from that address get 429 unexamined."""

    requests: int = Field(30, gt=0)
    per: Duration = 60.0


class Telemetry(Model):
    service_name: str = "iap"
    otlp_endpoint: HttpUrl | None = None
    propagators: list[Literal["tracecontext", "baggage", "b3multi", "b3"]] = [
        "tracecontext",
        "baggage",
        "b3multi",
    ]
    sample_ratio: float = Field(1.0, ge=0.0, le=1.0)
    protocol: Literal["http/protobuf", "grpc"] = "http/protobuf"
    export_timeout: Duration = 10.0
    max_queue_size: int = Field(2048, gt=0)


DEFAULT_IDENTITY_HEADERS = (
    "x-auth-request-user",
    "x-auth-request-email",
    "x-auth-request-groups",
    "x-auth-request-preferred-username",
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-groups",
    "x-forwarded-preferred-username",
    "x-remote-user",
    "remote-user",
    "x-user",
    "x-email",
    "x-ms-client-principal",
    "x-ms-client-principal-id",
    "x-ms-client-principal-name",
    "x-ms-token-aad-access-token",
    "x-ms-token-aad-id-token",
)


class Config(Model):
    """The whole of ``iap.yaml``. Keys of SPEC §5 keep their names."""

    public_url: HttpUrl
    listen: Listen = Listen()
    admin: Admin = Admin()
    trusted_proxies: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    identity_headers: list[HeaderName] = list(DEFAULT_IDENTITY_HEADERS)
    limits: Limits = Limits()
    drain_timeout: Duration = 25.0
    tls_watch_interval: Duration = 5.0
    allowed_redirect_hosts: list[str] = []
    oidc: OIDC | None = None
    session: Session = Session()
    redis: Redis | None = None
    tokens: Tokens | None = None
    bearer: Bearer = Bearer()
    forward_auth: ForwardAuth = ForwardAuth()
    auth_failures: AuthFailures | None = AuthFailures()
    routes: list[Route] = Field(min_length=1)
    telemetry: Telemetry = Telemetry()

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _networks(cls, value: object) -> object:
        return cidrs(value)
