"""Post-login and post-logout redirect targets (SPEC §7 Redirects).

``rd`` on ``/.iap/login`` and ``post_logout_redirect_uri`` on ``/.iap/logout`` come from
the client; an open redirect on the sign-in path hands a freshly signed-in user to a
look-alike site. :meth:`RedirectPolicy.target` returns a safe target or ``"/"``; it never
raises on client input.

Invariants:
- A target is either a path on this origin (``/`` followed by anything but ``/`` or
  ``\\``) or an absolute ``https`` URL (``http`` only when ``public_url`` is ``http``)
  whose host is allowed. Nothing else: no ``javascript:``, ``data:``, ``ftp:`` and no
  scheme-relative ``//host``.
- Only printable ASCII passes: backslashes, whitespace, control and non-ASCII characters
  are refused anywhere in the value. Browsers read ``\\`` as ``/`` in http(s) URLs and
  drop tab, CR and LF, so ``/\\evil.com`` and ``/<TAB>/evil.com`` mean ``//evil.com``
  to them (oauth2-proxy CVE-2020-5233 was ``/\\``; CVE-2020-11053 the encoded
  whitespace ``/%09/evil.com``). Non-ASCII host names are refused, so IDNA mapping and
  full-width look-alikes of ``/`` or ``.`` cannot change the host after the check;
  IDNA names must be given in their ``xn--`` form.
- The path carries no encoded ``/``, ``\\`` or control character, no malformed escape,
  no empty segment and no dot segment: a hop that decodes ``/%2f%2fevil.com`` or
  resolves ``/..//evil.com`` must not turn it into ``//evil.com``.
- Absolute URLs have no userinfo (``https://good.com@evil.com`` goes to evil.com), are
  parsed once with :func:`urllib.parse.urlsplit` and compared on the parsed host, and
  must read back identically after ``urlunsplit``; a value whose parts change on a
  second parse is ambiguous and refused.
- Host rule: the ``public_url`` host is allowed with the ``public_url`` scheme and port
  only. An ``allowed_hosts`` entry ``contoso.com`` (a leading ``.`` is ignored, so
  ``.contoso.com`` is the same entry) allows ``contoso.com`` and every ``*.contoso.com``,
  compared on a dot boundary: never ``evilcontoso.com`` (oauth2-proxy CVE-2021-21291,
  a suffix check without the boundary) nor ``contoso.com.evil.com``. Those hosts are
  allowed on the scheme's default port only. IP literals (IPv4 dotted quad, IPv6 in
  brackets) are allowed only when listed exactly; a trailing dot, an empty label or
  a host that a browser would read as a number (``0x7f.1``, ``2130706433``) is refused.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import NamedTuple
from urllib.parse import SplitResult, urlsplit, urlunsplit

from iap.errors import ConfigError

DEFAULT = "/"
MAX_LENGTH = 2048  # longer values are refused; the target travels in the state cookie

_PRINTABLE = re.compile(r"[\x21-\x5b\x5d-\x7e]+")  # printable ASCII without space and "\"
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_NUMERIC_LABEL = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)")  # WHATWG "ends in a number"
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
# Encoded "/", "\" and control characters change what a later hop sees as the path.
_FORBIDDEN_ESCAPE = re.compile(r"%(?:2[Ff]|5[Cc]|[01][0-9A-Fa-f]|7[Ff])")
_DOT_SEGMENT = re.compile(r"(?:\.|%2[Ee]){1,2}")
_DEFAULT_PORTS = {"http": 80, "https": 443}


class _Origin(NamedTuple):
    scheme: str
    host: str  # lower-case name, dotted-quad IPv4 or bracketed compressed IPv6
    port: int  # effective port: the scheme default when none is written


class RedirectPolicy:
    """Validates redirect targets against ``public_url`` and ``allowed_hosts``; built once
    at startup (a bad ``public_url`` or entry raises :class:`ConfigError`)."""

    def __init__(self, public_url: str, allowed_hosts: Iterable[str] = ()) -> None:
        self._public = _public_origin(public_url)
        self._schemes = frozenset({"https", self._public.scheme})
        names: set[str] = set()
        literals: set[str] = set()
        problems: list[str] = []
        for index, entry in enumerate(allowed_hosts):
            kind, host = _classify_entry(entry)
            if kind == "name":
                names.add(host)
            elif kind == "literal":
                literals.add(host)
            else:
                problems.append(f"allowed_redirect_hosts[{index}]: not a host name or IP literal")
        if problems:
            raise ConfigError(problems)
        self._names = frozenset(names)
        self._literals = frozenset(literals)

    def target(self, value: str | None) -> str:
        """``value`` if it is a safe redirect target (in its ``urlunsplit`` form), else ``"/"``."""
        if not value or len(value) > MAX_LENGTH or not _PRINTABLE.fullmatch(value):
            return DEFAULT
        try:
            parts = urlsplit(value)
            canonical = urlunsplit(parts)
            if urlsplit(canonical) != parts or not _path_is_safe(parts.path):
                return DEFAULT
            if value.startswith("/"):
                return canonical if _is_local(value, parts) else DEFAULT
            return canonical if self._absolute_allowed(parts) else DEFAULT
        except ValueError:  # invalid port or bracketed host
            return DEFAULT

    def _absolute_allowed(self, parts: SplitResult) -> bool:
        # No netloc: "https:evil.com" or "https:///evil.com", which browsers read as
        # https://evil.com/ (a netloc is only split off after a literal "//").
        if parts.scheme not in self._schemes or not parts.netloc:
            return False
        origin = _origin(parts)
        if origin is None:
            return False
        if origin == self._public:
            return True
        if origin.port != _DEFAULT_PORTS[origin.scheme]:
            return False
        return origin.host in self._literals or self._name_allowed(origin.host)

    def _name_allowed(self, host: str) -> bool:
        """Dot-boundary match: ``contoso.com`` allows itself and ``*.contoso.com`` only."""
        labels = host.split(".")
        return any(".".join(labels[i:]) in self._names for i in range(len(labels)))


def _is_local(value: str, parts: SplitResult) -> bool:
    """A path on this origin; ``//host`` and ``/\\host`` are other origins to a browser."""
    return (
        not parts.scheme
        and not parts.netloc
        and parts.path.startswith("/")
        and value[1:2] not in ("/", "\\")
    )


def _path_is_safe(path: str) -> bool:
    if _BAD_ESCAPE.search(path) or _FORBIDDEN_ESCAPE.search(path) or "//" in path:
        return False
    return not any(_DOT_SEGMENT.fullmatch(segment) for segment in path.split("/"))


def _origin(parts: SplitResult) -> _Origin | None:
    """The origin of an absolute URL, or ``None`` for userinfo or a refused host."""
    netloc = parts.netloc
    if "@" in netloc or parts.username is not None:
        return None
    host, port = _split_host_port(netloc)
    if port is None:
        return None
    kind, normal = _classify_host(host)
    if kind is None:
        return None
    return _Origin(parts.scheme, normal, port or _DEFAULT_PORTS[parts.scheme])


def _split_host_port(netloc: str) -> tuple[str, int | None]:
    """``(host, port)``; port 0 means none written, ``None`` means malformed."""
    if netloc.startswith("["):
        host, bracket, rest = netloc.partition("]")
        host += bracket
    else:
        host, colon, port_text = netloc.partition(":")
        rest = colon + port_text
    if not rest:
        return host, 0
    port_text = rest[1:] if rest.startswith(":") else ""
    # Canonical digits only: no empty port, sign, leading zero or out-of-range value.
    if not port_text.isdigit() or port_text != str(int(port_text)) or int(port_text) > 65535:
        return host, None
    return host, int(port_text)


def _classify_host(host: str) -> tuple[str | None, str]:
    """``("name" | "literal" | None, normal form)`` for a host as written in a URL."""
    if host.startswith("[") and host.endswith("]") and "%" not in host:  # no zone ids
        try:
            return "literal", f"[{ipaddress.IPv6Address(host[1:-1]).compressed}]"
        except ValueError:
            return None, host
    lower = host.lower()
    if not _HOSTNAME.fullmatch(lower):
        return None, host  # empty label, trailing dot, "_", "%", non-ASCII...
    if _NUMERIC_LABEL.fullmatch(lower.rpartition(".")[2]):
        try:
            address = ipaddress.IPv4Address(lower)
        except ValueError:
            return None, host  # a browser would read it as an IPv4 address in another form
        return "literal", str(address)
    return "name", lower


def _classify_entry(entry: str) -> tuple[str | None, str]:
    """An ``allowed_hosts`` entry: ``.contoso.com`` == ``contoso.com``; bare IPv6 accepted."""
    text = entry.strip().removeprefix(".")
    if ":" in text and not text.startswith("["):
        text = f"[{text}]"
    return _classify_host(text)


def _public_origin(public_url: str) -> _Origin:
    try:
        parts = urlsplit(public_url)
        origin = _origin(parts) if parts.scheme in _DEFAULT_PORTS else None
    except ValueError:
        origin = None
    if origin is None:
        raise ConfigError(["public_url: not an http(s) URL with a valid host"])
    return origin
