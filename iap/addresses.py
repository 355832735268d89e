"""Strict email addresses and domain names for ``emails`` and ``domains`` rules (SPEC §5.1).

An ``email`` claim is text that a tenant's administrators, and sometimes its users, can set;
Entra does not prove ownership. A rule that admits ``contoso.test`` must not admit
``attacker@evil.test@contoso.test`` (oauth2-proxy CVE-2026-40574: the domain was taken after
the last ``@``), ``a%contoso.test@evil.test`` (source routing) or a quoted local part.

Invariants:
- An address is exactly one ``@`` between a non-empty local part and a domain. The local part
  is an RFC 5322 dot-atom without ``%``: no quotes, spaces, control characters or NUL.
- A domain is one or more DNS labels (RFC 1035 §2.3.1 letters, digits and inner hyphens, 1-63
  characters each, 253 in all), compared whole and ASCII-case-insensitively; no trailing dot.
- Anything else parses to None, and matches no rule: the caller says why in its audit reason.
- Foundations: stdlib only, so the config validates its entries with the same parser.
"""

from __future__ import annotations

import re
from typing import NamedTuple

_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
# RFC 5322 §3.2.3 atext, less "%"; dots only between atoms
_ATOM = r"[A-Za-z0-9!#$&'*+/=?^_`{|}~-]+"
_LOCAL = re.compile(rf"{_ATOM}(?:\.{_ATOM})*")
_MAX_LOCAL = 64
_MAX_DOMAIN = 253


class Address(NamedTuple):
    """An address that parsed strictly; ``domain`` is lower-case."""

    local: str
    domain: str

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"


def domain(text: str) -> str | None:
    """``text`` as a lower-case domain name, or None when it is not one."""
    if len(text) > _MAX_DOMAIN or not _DOMAIN.fullmatch(text):
        return None
    return text.lower()


def email(text: str) -> Address | None:
    """``text`` as a strict address, or None."""
    local, at, rest = text.partition("@")
    if not at or len(local) > _MAX_LOCAL or not _LOCAL.fullmatch(local):
        return None
    name = domain(rest)  # a second "@" is no domain character: refused here
    return Address(local, name) if name is not None else None
