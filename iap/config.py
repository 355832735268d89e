"""The configuration tree: parsed once at startup, immutable afterwards.

Invariants:
- Every problem in a file is reported at once, each naming its key path
  (``routes[0].match.path_prefix: ...``); nothing is served from a config with problems.
- Unknown keys are errors: a misspelt security setting must not silently fall back to a default.
- Secrets stay out of this tree: keys name files (``*_file``) or ``IAP_*`` variables, and
  no error message repeats an input value (``hide_input_in_errors``).
- Request handling never parses config: durations are seconds, sizes are bytes,
  CIDRs are :mod:`ipaddress` networks by the time a :class:`Config` exists.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    FilePath,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from iap import addresses
from iap.environment import SESSION_KEYS_VAR, Environment
from iap.errors import ConfigError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KB|MB|GB|KiB|MiB|GiB)?\s*$")
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "KiB": 2**10,
    "MiB": 2**20,
    "GiB": 2**30,
}
SESSION_KEYS_ENV = SESSION_KEYS_VAR
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def _duration(value: object) -> float:
    """``"30s"``, ``"5m"``, ``"8h"``, ``"250ms"`` or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 5m or 8h")
    if isinstance(value, int | float):
        return float(value)
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError("expected a duration such as 30s, 5m or 8h")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def _size(value: object) -> int:
    """``"10MiB"``, ``"200MB"`` or a number of bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError("expected a size such as 512KiB, 10MiB or 200MB")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2)]


Duration = Annotated[float, BeforeValidator(_duration), Field(gt=0)]
Size = Annotated[int, BeforeValidator(_size), Field(gt=0)]


@dataclass(frozen=True, slots=True)
class Address:
    """A ``host:port`` listen address; ``[::1]:8443`` for IPv6."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _address(value: object) -> Address:
    if isinstance(value, Address):
        return value
    text = str(value)
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("expected host:port, e.g. 0.0.0.0:8443")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not re.fullmatch(r"[A-Za-z0-9.-]+", host):
            raise ValueError("expected host:port, e.g. 0.0.0.0:8443") from None
    return Address(host, int(port))


AddressField = Annotated[Address, BeforeValidator(_address)]


def _url(*schemes: str) -> Any:
    def check(value: object) -> str:
        text = str(value)
        parts = urlsplit(text)
        if parts.scheme not in schemes or not parts.hostname:
            raise ValueError(f"expected an absolute {' or '.join(schemes)} URL")
        if parts.username or parts.password:
            raise ValueError("credentials do not belong in a URL; use a *_file key")
        return text.rstrip("/") if parts.path in ("", "/") else text

    return BeforeValidator(check)


HttpUrl = Annotated[str, _url("http", "https")]


def _header_name(value: object) -> str:
    text = str(value)
    if not _HEADER_NAME.match(text):
        raise ValueError("not a valid HTTP header name")
    return text.lower().replace("_", "-")


HeaderName = Annotated[str, BeforeValidator(_header_name)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)


class TLSFiles(_Model):
    cert_file: FilePath
    key_file: FilePath


class Listen(_Model):
    address: AddressField = _address("0.0.0.0:8443")
    tls: TLSFiles | None = None


class Admin(_Model):
    address: AddressField = _address("127.0.0.1:9090")


class Limits(_Model):
    """Request bounds applied before any other work (SPEC §2 step 1)."""

    max_headers: int = Field(100, gt=0, le=1000)
    max_header_bytes: Size = 32 * 1024
    max_url_bytes: Size = 8 * 1024


class ClientCertificate(_Model):
    cert_file: FilePath
    key_file: FilePath


class OIDC(_Model):
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


class Session(_Model):
    store: Literal["cookie", "redis"] = "cookie"
    keys_file: FilePath | None = None
    lifetime: Duration = 8 * 3600.0
    idle_timeout: Duration = 3600.0

    @field_validator("lifetime")
    @classmethod
    def _bounded(cls, value: float) -> float:
        if value > 400 * 86400:  # browsers cap cookie lifetimes at 400 days
            raise ValueError("at most 400d")
        return value


class Redis(_Model):
    url: Annotated[str, _url("redis", "rediss", "unix")]


class Tokens(_Model):
    issuer: HttpUrl
    keys_dir: Path
    ttl: Duration = 300.0
    publish_before_use: Duration = 1500.0
    header: HeaderName = "authorization"
    roles: dict[str, str] = {}


class Bearer(_Model):
    entra_audiences: list[str] = []


def _absolute_prefix(value: str) -> str:
    """A path prefix as the normalised paths it is compared with (``iap.domain.paths``)."""
    if not value.startswith("/") or "\\" in value or "/../" in value + "/" or "%" in value:
        raise ValueError("expected a normalised absolute path such as /orders/")
    return value


class Match(_Model):
    host: str | None = None
    path_prefix: Annotated[str, AfterValidator(_absolute_prefix)] = "/"
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


class UpstreamTLS(_Model):
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


def _strict_emails(value: list[str]) -> list[str]:
    if not all(addresses.email(entry) for entry in value):
        raise ValueError("expected addresses such as alice@contoso.com (one @, DNS labels)")
    return value


def _strict_domains(value: list[str]) -> list[str]:
    if not all(addresses.domain(entry.removeprefix("@")) for entry in value):
        raise ValueError("expected domain names such as contoso.com")
    return value


def _path_prefixes(value: list[str]) -> list[str]:
    for prefix in value:
        _absolute_prefix(prefix)
    return value


def _upper(value: object) -> object:
    return [str(item).upper() for item in value] if isinstance(value, list) else value


Emails = Annotated[list[str], AfterValidator(_strict_emails)]
Domains = Annotated[list[str], AfterValidator(_strict_domains)]
Values = Annotated[list[str], Field(min_length=1)]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Allow(_Model):
    """The single-mapping form ``allow: {roles: [...], ...}``: its conditions are ORed."""

    roles: list[str] = []
    groups: list[str] = []
    emails: Emails = []
    domains: Domains = []
    tenants: list[str] = []
    claims: dict[str, list[str]] = {}
    authenticated: bool = False


class Rule(_Model):
    """One rule of ``allow: [...]`` or ``deny: [...]``: every condition given must hold (AND).

    Unset conditions do not constrain; a given list must not be empty (SPEC §5.1).
    """

    authenticated: Literal[True] | None = None
    roles: Values | None = None
    groups: Values | None = None
    tenants: Values | None = None
    emails: Annotated[Emails, Field(min_length=1)] | None = None
    domains: Annotated[Domains, Field(min_length=1)] | None = None
    claims: Annotated[dict[str, Values], Field(min_length=1)] | None = None
    methods: Annotated[Values, BeforeValidator(_upper)] | None = None
    paths: Annotated[Values, AfterValidator(_path_prefixes)] | None = None
    auth: Annotated[list[Literal["session", "bearer"]], Field(min_length=1)] | None = None
    source: Annotated[list[Network], Field(min_length=1)] | None = None

    @field_validator("source", mode="before")
    @classmethod
    def _networks(cls, value: object) -> object:
        return _cidrs(value)

    @model_validator(mode="after")
    def _not_empty(self) -> Rule:
        if not self.model_fields_set:
            raise ValueError("a rule needs at least one condition")
        return self


def _kind(value: object) -> str | None:
    if isinstance(value, list):
        return "rules"
    if isinstance(value, Mapping | Allow):
        return "mapping"
    return None


class Policy(_Model):
    """``public: true``, or ``allow`` (a list of rules, or the single-mapping form) and ``deny``
    (a list of rules that refuse before ``allow`` is read)."""

    public: bool = False
    allow: (
        Annotated[
            Annotated[list[Rule], Tag("rules")] | Annotated[Allow, Tag("mapping")],
            Discriminator(_kind),
        ]
        | None
    ) = None
    deny: list[Rule] = []

    @model_validator(mode="after")
    def _public_or_allow(self) -> Policy:
        if self.public and (self.allow is not None or self.deny):
            raise ValueError("a policy is either public: true or allow and deny rules, not both")
        return self

    @property
    def rules(self) -> tuple[Rule, ...]:
        """The allow rules of the list form; empty for the single-mapping form."""
        return tuple(self.allow) if isinstance(self.allow, list) else ()

    @property
    def reads_claims(self) -> bool:
        """Whether deciding needs the caller's token claims (a ``claims`` condition)."""
        mapping = self.allow if isinstance(self.allow, Allow) else None
        return bool(mapping and mapping.claims) or any(
            rule.claims for rule in (*self.rules, *self.deny)
        )

    @property
    def groups(self) -> frozenset[str]:
        """Every group id a rule names (a session keeps these when it must drop groups)."""
        mapping = self.allow if isinstance(self.allow, Allow) else None
        named = [*(mapping.groups if mapping else ())]
        for rule in (*self.rules, *self.deny):
            named += rule.groups or ()
        return frozenset(named)


class RateLimit(_Model):
    requests: int = Field(gt=0)
    per: Duration
    burst: int = Field(0, ge=0)
    key: Literal["subject", "client", "route"] | None = None
    on_store_error: Literal["allow", "deny"] = "allow"


class Timeouts(_Model):
    connect: Duration = 2.0
    read: Duration = 30.0


class Circuit(_Model):
    """Upstream circuit breaker: open after consecutive connection failures."""

    failures: int = Field(5, gt=0)
    cooldown: Duration = 10.0


def _origin(value: object) -> str:
    text = str(value).rstrip("/")
    if urlsplit(text).path or "?" in text or "#" in text:
        raise ValueError("expected an origin such as https://gateway:443, without a path")
    return text


class Exchange(_Model):
    """Who may obtain a token for the route's audience at ``POST /.iap/token`` (SPEC §5.1):
    the audiences (of iap tokens) and client application ids (of Entra tokens) named here."""

    from_: list[str] = Field(alias="from", min_length=1)


class Route(_Model):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]
    match: Match = Match()
    upstream: Annotated[HttpUrl, AfterValidator(_origin)]
    upstream_tls: UpstreamTLS | None = None
    audience: str | None = None
    policy: Policy
    rate_limit: RateLimit | None = None
    exchange: Exchange | None = None
    timeouts: Timeouts = Timeouts()
    circuit: Circuit = Circuit()
    max_body: Size = 10 * 2**20
    preserve_host: bool = True

    @model_validator(mode="after")
    def _tls_needs_https(self) -> Route:
        if self.upstream_tls is not None and not self.upstream.startswith("https://"):
            raise ValueError("upstream_tls is set but upstream is not an https:// URL")
        return self


class ForwardAuth(_Model):
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


class AuthFailures(_Model):
    """Failed sign-ins and refused bearer tokens allowed per client address (edge-wide);
    past them, callbacks and bearer requests from that address get 429 unexamined."""

    requests: int = Field(30, gt=0)
    per: Duration = 60.0


class Telemetry(_Model):
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


class Config(_Model):
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
        return _cidrs(value)


def _cidrs(value: object) -> object:
    if not isinstance(value, list):
        return value
    networks: list[object] = []
    for item in value:
        try:
            networks.append(ipaddress.ip_network(str(item), strict=True))
        except ValueError:
            raise ValueError("expected CIDRs such as 10.0.0.0/8 (host bits unset)") from None
    return networks


def _location(loc: tuple[int | str, ...]) -> str:
    text, previous = "", None
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif previous == "allow" and part in ("rules", "mapping"):
            pass  # the two forms of ``policy.allow``: a tag, not a key
        elif not part.startswith(("function-", "json-or-python", "lax-", "tagged-union")):
            text += f".{part}" if text else part
        previous = part
    return text or "(top level)"


def _problems(error: ValidationError) -> list[str]:
    problems = []
    for item in error.errors(include_input=False, include_url=False):
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        problems.append(f"{_location(item['loc'])}: {message}")
    return problems


def _route_problems(document: Mapping[str, object]) -> list[str]:
    """Checks across routes, on the raw document so they are reported with the field errors."""
    routes = document.get("routes")
    if not isinstance(routes, list):
        return []
    problems: list[str] = []
    first_seen: dict[str, int] = {}
    for index, route in enumerate(routes):
        if not isinstance(route, Mapping):
            continue
        name = route.get("name")
        if isinstance(name, str) and name in first_seen:
            problems.append(f"routes[{index}].name: duplicates routes[{first_seen[name]}].name")
        elif isinstance(name, str):
            first_seen[name] = index
        problems += _policy_problems(f"routes[{index}].policy", route.get("policy"), document)
    return problems


def _session_problems(document: Mapping[str, object], environment: Environment) -> list[str]:
    session = document.get("session")
    session = session if isinstance(session, Mapping) else {}
    problems = []
    if session.get("store") == "redis" and document.get("redis") is None:
        problems.append("session.store: `redis` needs the redis key (redis.url)")
    if document.get("oidc") is not None and document.get("tokens") is None:
        problems.append(
            "tokens: required with oidc: signed-in requests go upstream with a minted token "
            "(tokens.issuer, tokens.keys_dir; see `iap keys new`)"
        )
    has_keys = session.get("keys_file") is not None or environment.session_keys is not None
    if document.get("oidc") is not None and not has_keys:
        problems.append(
            f"session.keys_file: required with oidc (or the {SESSION_KEYS_ENV} variable), "
            "so every replica and restart opens the same cookies"
        )
    return problems


def _policy_problems(key: str, policy: object, document: Mapping[str, object]) -> list[str]:
    """Refuse what this build cannot enforce rather than serve it openly."""
    if not isinstance(policy, Mapping) or policy.get("public") is True:
        return []
    if document.get("oidc") is None:
        return [f"{key}: a route that is not `public: true` needs sign-in; configure oidc"]
    return []


def parse(document: object, environment: Environment | None = None) -> Config:
    """Build a :class:`Config` from a parsed YAML document, or raise :class:`ConfigError`.

    ``environment`` says which secrets come from variables (none when omitted)."""
    if not isinstance(document, Mapping):
        raise ConfigError(["(top level): expected a mapping of keys"])
    environment = environment or Environment()
    problems = _route_problems(document) + _session_problems(document, environment)
    try:
        config = Config.model_validate(document, context={"environment": environment})
    except ValidationError as exc:
        problems = _problems(exc) + problems
    if problems:
        raise ConfigError(problems)
    return config


def load(path: str | os.PathLike[str], environment: Environment | None = None) -> Config:
    """Read and validate ``path``; every problem is collected into one :class:`ConfigError`."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read ({exc.strerror})"]) from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError([f"{path}: not valid YAML{where}"]) from None
    return parse(document, environment)
