"""The Istio wiring around the policies (issue #14): the ingress ``Gateway`` that takes iap's
client certificate, a ``VirtualService`` per host the gateway sees, ``PeerAuthentication``
STRICT for the workloads and a ``Telemetry`` resource whose span tags carry iap's keys.

Invariants:
- Hosts and prefixes are those of :class:`~iap.mesh_render.authz.Scope`: what the gateway sees
  (with ``preserve_host: false``, the upstream's host name). A host that is not a DNS name, or
  a prefix Istio would not compare as iap does, is a problem naming the config field.
- One VirtualService per host, its ``http`` entries in iap's order (the host's routes, longest
  prefix first, then the routes without a host): Istio merges the VirtualServices of one host
  in no guaranteed order, and a request for a named host never falls back to the ``*`` one.
- The span tags are named as iap's own span attributes and read the headers iap sends
  upstream, so one Jaeger search finds iap's spans and the mesh's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from iap.config import Config, Route
from iap.mesh_render.authz import Scope

NETWORKING = "networking.istio.io/v1"
SECURITY = "security.istio.io/v1"
TELEMETRY = "telemetry.istio.io/v1"
# The Secret that `iap certs dev` writes (iap/certs.py: INGRESS_CREDENTIAL_NAME).
CREDENTIAL_NAME = "iap-ingress-mtls"
# What iap sends upstream (SPEC §2, §6) and the span attributes it records them as.
CORRELATION_HEADER = "x-correlation-id"
SUBJECT_HEADER = "x-iap-subject"
SPAN_TAGS: Mapping[str, str] = {
    "iap.correlation_id": CORRELATION_HEADER,
    "iap.subject": SUBJECT_HEADER,
}

Document = dict[str, Any]
_DNS_NAME = re.compile(
    r"(?=.{1,253}$)[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*"
)
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
# RFC 3986 pchar and "/", without "%": what Envoy's prefix match compares byte for byte with
# the normalised paths iap compares (a `?` would reach into the query string).
_PATH = re.compile(r"/[A-Za-z0-9\-._~!$&'()*+,;=:@/]*")


@dataclass(frozen=True, slots=True)
class Wiring:
    """What the config does not say, from the command line."""

    namespace: str = "istio-system"
    selector: Mapping[str, str] = field(default_factory=lambda: {"istio": "ingressgateway"})
    gateway: str = "iap"
    port: int = 443
    credential: str = CREDENTIAL_NAME
    workloads: str = "default"
    destinations: Mapping[str, tuple[str, int]] = field(default_factory=dict)
    destination_port: int = 80
    sampling: float = 100.0
    provider: str = "jaeger"
    labels: Mapping[str, str] = field(default_factory=dict)


def is_dns_name(name: str) -> bool:
    return _DNS_NAME.fullmatch(name) is not None


def wiring_problems(wiring: Wiring, routes: Sequence[Route]) -> list[str]:
    """The options that Istio could not carry."""
    names = {"--gateway-name": wiring.gateway, "--credential-name": wiring.credential}
    problems = [
        f"{flag}: expected a Kubernetes name (lower-case letters, digits, `-`, `.`)"
        for flag, value in names.items()
        if not is_dns_name(value)
    ]
    if not _DNS_LABEL.fullmatch(wiring.workloads):
        problems.append("--workload-namespace: expected a namespace name (an RFC 1123 label)")
    if not 0.0 <= wiring.sampling <= 100.0:
        problems.append("--sampling: expected a percentage from 0 to 100")
    if not wiring.provider:
        problems.append("--tracing-provider: expected the name of a mesh extension provider")
    known = {route.name for route in routes}
    for name, (host, port) in sorted(wiring.destinations.items()):
        if name not in known:
            problems.append(f"--destination {name}=...: no route is named {name}")
        if not is_dns_name(host) or not 0 < port < 65536:
            problems.append(f"--destination {name}=...: expected HOST[:PORT], a DNS name")
    return problems


def route_problems(config: Config, wiring: Wiring) -> list[str]:
    """Routes a Gateway and VirtualServices cannot express, each naming its field."""
    problems = []
    for index, route in enumerate(config.routes):
        scope = Scope.of(index, route)
        where = "match.host" if route.preserve_host else "upstream"
        if scope.host is not None and not is_dns_name(scope.host):
            problems.append(
                f"routes[{index}].{where}: {scope.host} is not a DNS name, which a Gateway and"
                " a VirtualService need as host"
            )
        if not _PATH.fullmatch(route.match.path_prefix):
            problems.append(
                f"routes[{index}].match.path_prefix: Istio compares the raw path, so a prefix"
                " may hold only letters, digits and -._~!$&'()*+,;=:@/"
            )
        if route.name not in wiring.destinations and not _DNS_LABEL.fullmatch(route.name):
            problems.append(
                f"routes[{index}].name: {route.name!r} is not a Service name; pass"
                f" --destination {route.name}=HOST[:PORT]"
            )
    return problems


def gateway(config: Config, wiring: Wiring) -> Document:
    """One HTTPS server for every host the routes reach, in ``tls.mode: MUTUAL``: only a
    client with a certificate from the Secret's ``ca.crt`` (iap's) gets in."""
    hosts = {Scope.of(i, route).host for i, route in enumerate(config.routes)}
    server = {
        "port": {"number": wiring.port, "name": "https", "protocol": "HTTPS"},
        "hosts": sorted(host or "*" for host in hosts),
        "tls": {
            "mode": "MUTUAL",
            "credentialName": wiring.credential,
            "minProtocolVersion": "TLSV1_2",
        },
    }
    spec = {"selector": dict(wiring.selector), "servers": [server]}
    return _document(NETWORKING, "Gateway", wiring.gateway, wiring.namespace, wiring, spec)


def virtual_services(config: Config, wiring: Wiring) -> list[Document]:
    """A VirtualService per host, ``*`` for the routes without one, last."""
    scopes = [Scope.of(index, route) for index, route in enumerate(config.routes)]
    anywhere = _in_order([s for s in scopes if s.host is None])
    named = sorted({s.host for s in scopes if s.host is not None})
    documents = []
    for host in [*named, None]:
        own = _in_order([s for s in scopes if s.host == host]) if host else []
        entries = own + anywhere
        if not entries:
            continue
        spec = {
            "hosts": [host or "*"],
            "gateways": [f"{wiring.namespace}/{wiring.gateway}"],
            "http": [_http(config.routes[s.index], s, wiring) for s in entries],
        }
        name = f"iap-{host}" if host else "iap"
        documents.append(
            _document(NETWORKING, "VirtualService", name, wiring.namespace, wiring, spec)
        )
    return documents


def peer_authentication(wiring: Wiring) -> Document:
    """Mutual TLS required for every workload of the namespace."""
    spec = {"mtls": {"mode": "STRICT"}}
    return _document(SECURITY, "PeerAuthentication", "default", wiring.workloads, wiring, spec)


def telemetry(wiring: Wiring) -> Document:
    """Tracing on, with iap's correlation id and caller as span tags (absent when the
    request has no such header: a public route's request has no subject)."""
    tags = {tag: {"header": {"name": header}} for tag, header in SPAN_TAGS.items()}
    tracing = {
        "providers": [{"name": wiring.provider}],
        "randomSamplingPercentage": wiring.sampling,
        "customTags": tags,
    }
    spec = {"tracing": [tracing]}
    return _document(TELEMETRY, "Telemetry", "iap", wiring.namespace, wiring, spec)


def _in_order(scopes: list[Scope]) -> list[Scope]:
    """iap's order within a host group: the longest prefix first, then file order."""
    return sorted(scopes, key=lambda s: (-len(s.prefix), s.index))


def _http(route: Route, scope: Scope, wiring: Wiring) -> dict[str, Any]:
    uri = {"prefix": scope.prefix}
    methods = sorted(scope.methods) if scope.methods is not None else None
    match = (
        [{"uri": dict(uri), "method": {"exact": m}} for m in methods] if methods else [{"uri": uri}]
    )
    host, port = wiring.destinations.get(
        route.name, (_service(route.name, wiring), wiring.destination_port)
    )
    destination = {"host": host, "port": {"number": port}}
    return {"name": route.name, "match": match, "route": [{"destination": destination}]}


def _service(route: str, wiring: Wiring) -> str:
    return f"{route}.{wiring.workloads}.svc.cluster.local"


def _document(
    api: str, kind: str, name: str, namespace: str, wiring: Wiring, spec: dict[str, Any]
) -> Document:
    metadata = {"name": name, "namespace": namespace, "labels": dict(wiring.labels)}
    return {"apiVersion": api, "kind": kind, "metadata": metadata, "spec": spec}
