"""Route selection (SPEC §2 step 5): host, then longest path prefix, then methods.

Invariants:
- Routes naming a host are consulted before host-agnostic ones, as an Envoy virtual
  host is chosen before its routes; within each group the longest prefix wins.
- Prefixes compare as plain strings against the normalised path (``iap.domain.paths``),
  so ``/orders/`` does not match ``/orders``; declare both if both are meant.
- No match is ``None``: the caller answers 404 and forwards nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar


class Matchable(Protocol):
    @property
    def host(self) -> str | None: ...
    @property
    def path_prefix(self) -> str: ...
    @property
    def methods(self) -> frozenset[str] | None: ...


R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class _Entry(Generic[R]):
    prefix: str
    methods: frozenset[str] | None
    route: R


class RouteTable(Generic[R]):
    """An immutable index of routes; :meth:`match` is the only query."""

    def __init__(self, routes: Iterable[tuple[Matchable, R]]) -> None:
        by_host: dict[str | None, list[_Entry[R]]] = {}
        for match, route in routes:
            host = match.host.lower() if match.host else None
            by_host.setdefault(host, []).append(_Entry(match.path_prefix, match.methods, route))
        for entries in by_host.values():
            # Stable sort: among equal prefixes the first declared wins.
            entries.sort(key=lambda entry: len(entry.prefix), reverse=True)
        self._any: Sequence[_Entry[R]] = by_host.pop(None, [])
        self._hosts: dict[str, Sequence[_Entry[R]]] = {
            host: entries for host, entries in by_host.items() if host is not None
        }

    def match(self, host: str, path: str, method: str) -> R | None:
        """The route for ``host`` (port ignored), ``path`` and ``method``, or ``None``."""
        name = _host_name(host)
        for entries in (self._hosts.get(name, ()), self._any):
            for entry in entries:
                if path.startswith(entry.prefix) and (
                    entry.methods is None or method in entry.methods
                ):
                    return entry.route
        return None


def _host_name(host: str) -> str:
    host = host.lower()
    if host.startswith("["):
        return host.partition("]")[0] + "]"
    name = host.rpartition(":")[0] if host.count(":") == 1 else host
    return name.rstrip(".")  # "api.contoso.com." is the same host (RFC 1034 §3.1)
