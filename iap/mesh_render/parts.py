"""``iap mesh render`` as a whole: the parts of the mesh wiring, selected with ``--only``.

Every problem of the selected parts (options and config) is reported at once, as
:class:`ConfigError`; a part that is not selected asks nothing of the config (the wiring
needs no ``tokens``, the policies do).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from iap.config import Config
from iap.errors import ConfigError
from iap.mesh_render import (
    LABELS,
    authentication,
    authorization,
    option_problems,
    policy_problems,
)
from iap.mesh_render.authz import plain_tree
from iap.mesh_render.wiring import (
    Wiring,
    gateway,
    peer_authentication,
    route_problems,
    telemetry,
    virtual_services,
    wiring_problems,
)

Document = dict[str, Any]

# In the order they are printed.
PARTS = ("gateway", "virtualservice", "peerauthentication", "authn", "authz", "telemetry")
POLICY_PARTS = frozenset({"authn", "authz"})
ROUTING_PARTS = frozenset({"gateway", "virtualservice"})


def parse_parts(text: str) -> tuple[str, ...]:
    """``gateway,authz`` as parts in printing order; ValueError naming an unknown part."""
    named = [part.strip() for part in text.split(",")]
    unknown = [part for part in named if part not in PARTS]
    if unknown or not text.strip():
        raise ValueError(
            f"unknown part {', '.join(repr(p) for p in unknown) or repr(text)};"
            f" expected a comma-separated list of {', '.join(PARTS)}"
        )
    return tuple(part for part in PARTS if part in named)


def render_mesh(
    config: Config,
    wiring: Wiring,
    *,
    jwks_uri: str | None = None,
    parts: Sequence[str] = PARTS,
) -> tuple[list[Document], list[str]]:
    """The documents of ``parts`` and the warnings about what the mesh cannot enforce."""
    wiring = replace(wiring, labels=dict(LABELS))
    selected = set(parts)
    problems = option_problems(wiring.namespace, wiring.selector, jwks_uri)
    problems += wiring_problems(wiring, config.routes)
    if selected & ROUTING_PARTS:
        problems += route_problems(config, wiring)
    if selected & POLICY_PARTS:
        problems += policy_problems(config)
    if problems:
        raise ConfigError(problems)
    builders: dict[str, Callable[[], tuple[list[Document], list[str]]]] = {
        "gateway": lambda: ([gateway(config, wiring)], []),
        "virtualservice": lambda: (virtual_services(config, wiring), []),
        "peerauthentication": lambda: ([peer_authentication(wiring)], []),
        "authn": lambda: authentication(config, wiring.namespace, wiring.selector, jwks_uri),
        "authz": lambda: authorization(config, wiring.namespace, wiring.selector),
        "telemetry": lambda: ([telemetry(wiring)], []),
    }
    documents: list[Document] = []
    warnings: list[str] = []
    for part in PARTS:
        if part in selected:
            found, notes = builders[part]()
            documents += found
            warnings += notes
    return [plain_tree(document) for document in documents], warnings
