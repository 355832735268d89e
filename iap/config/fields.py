"""The value types of the config tree: durations, sizes, addresses, URLs, header names,
path prefixes and CIDRs, each parsed once from the YAML into what request handling uses.

Invariants:
- Durations are seconds (float), sizes bytes (int), CIDRs :mod:`ipaddress` networks, header
  names lower-case with ``_`` folded to ``-``: nothing downstream parses config text again.
- A URL never carries credentials (they belong in a ``*_file`` key).
- Every model forbids unknown keys, is frozen, and never repeats an input in its errors.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, FilePath

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
DurationOrZero = Annotated[float, BeforeValidator(_duration), Field(ge=0)]
"""A duration where 0 is meaningful (it turns the feature off)."""
Size = Annotated[int, BeforeValidator(_size), Field(gt=0)]


@dataclass(frozen=True, slots=True)
class Address:
    """A ``host:port`` listen address; ``[::1]:8443`` for IPv6."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def to_address(value: object) -> Address:
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


AddressField = Annotated[Address, BeforeValidator(to_address)]


def url_field(*schemes: str) -> Any:
    def check(value: object) -> str:
        text = str(value)
        parts = urlsplit(text)
        if parts.scheme not in schemes or not parts.hostname:
            raise ValueError(f"expected an absolute {' or '.join(schemes)} URL")
        if parts.username or parts.password:
            raise ValueError("credentials do not belong in a URL; use a *_file key")
        return text.rstrip("/") if parts.path in ("", "/") else text

    return BeforeValidator(check)


HttpUrl = Annotated[str, url_field("http", "https")]


def _header_name(value: object) -> str:
    text = str(value)
    if not _HEADER_NAME.match(text):
        raise ValueError("not a valid HTTP header name")
    return text.lower().replace("_", "-")


HeaderName = Annotated[str, BeforeValidator(_header_name)]


class Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)


class TLSFiles(Model):
    cert_file: FilePath
    key_file: FilePath


def absolute_prefix(value: str) -> str:
    """A path prefix as the normalised paths it is compared with (``iap.domain.paths``)."""
    if not value.startswith("/") or "\\" in value or "/../" in value + "/" or "%" in value:
        raise ValueError("expected a normalised absolute path such as /orders/")
    return value


def cidrs(value: object) -> object:
    if not isinstance(value, list):
        return value
    networks: list[object] = []
    for item in value:
        try:
            networks.append(ipaddress.ip_network(str(item), strict=True))
        except ValueError:
            raise ValueError("expected CIDRs such as 10.0.0.0/8 (host bits unset)") from None
    return networks
