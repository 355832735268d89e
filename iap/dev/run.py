"""Wire the dev IdP, the demo upstream and iap together on loopback; serve until interrupted.

Sign-in uses the dev IdP (``iap.dev.idp``), shaped like Entra ID v2.0, on a free loopback
port, with a fresh session keyring and client secret in the temporary directory.

The hop from iap to the demo upstream is mutual TLS, as to the Istio ingress gateway in
production (SPEC §6): material from :func:`iap.certs.issue_dev_material` in a temporary
directory that is removed at exit; the upstream demands a client certificate from the dev
CA, iap verifies the upstream against that CA, sends SNI and pins the gateway's SPIFFE ID.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import ssl
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from aiohttp import web

from iap import config
from iap.adapters.signing_keys import write_new_key
from iap.app import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK
from iap.app.wiring import build_edge
from iap.certs import GATEWAY_SPIFFE_ID, SERVER_NAME, SPIFFE_ID, DevMaterial, issue_dev_material
from iap.dev.echo import echo_app
from iap.dev.idp import STAFF_GROUP_ID, TENANT_A, start_dev_idp
from iap.environment import Environment
from iap.web.server import Edge, bind, wait_for_signals

DEV_CLIENT_ID = "11111111-2222-4333-8444-555555555555"
#: Not a secret: the dev IdP serves loopback only and signs in anyone who clicks a button.
DEV_CLIENT_SECRET = "iap-dev-client-secret"  # noqa: S105


def upstream_server_context(material: DevMaterial) -> ssl.SSLContext:
    """The demo upstream's side of mTLS: the ingress certificate; clients from the dev CA only."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(material.ingress_server_cert), str(material.ingress_server_key))
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cafile=str(material.ca_cert))
    return context


DEFAULT_PORT = 8080
DEFAULT_ADMIN_PORT = 9090  # the default of admin.address, so the URL is the same every run


@dataclass(frozen=True, slots=True)
class DevOptions:
    """What ``iap dev`` was asked for on its command line."""

    port: int = DEFAULT_PORT
    admin_port: int = DEFAULT_ADMIN_PORT
    otlp: str | None = None
    """An OTLP/HTTP endpoint for spans (``telemetry.otlp_endpoint``); else ``OTEL_*``."""
    redis: str | None = None
    """Where sessions and rate limits live (``--redis``); else process memory."""


async def run_dev(options: DevOptions, environment: Environment) -> int:
    """``iap dev``: the edge, the dev IdP and the demo upstream until SIGTERM or SIGINT;
    ``--otlp`` or ``environment`` (``OTEL_*``, as for ``iap run``) turns tracing on;
    sessions and rate limits live in ``options.redis`` when given, else in process memory."""
    taken = _taken_port(options)
    if taken is not None:
        print(f"iap dev: {taken}", file=sys.stderr)
        return EXIT_CONFIG
    directory = Path(tempfile.mkdtemp(prefix="iap-dev-"))
    try:
        material = issue_dev_material(directory / "certs")
        return await _run(options, directory, material, environment)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _taken_port(options: DevOptions) -> str | None:
    """Which port is in use and which option chooses another, before anything starts."""
    for port, option, what in (
        (options.port, "--port", "port"),
        (options.admin_port, "--admin-port", "admin port"),
    ):
        try:
            bind(config.Address("127.0.0.1", port)).close()
        except OSError:
            return f"{what} {port} is in use; choose another with {option}"
    return None


def dev_config(
    *,
    port: int,
    idp_url: str,
    upstream_port: int,
    material: DevMaterial,
    directory: Path,
    admin_port: int = 0,
    otlp: str | None = None,
    redis: str | None = None,
) -> dict[str, Any]:
    """The ``iap.yaml`` that ``iap dev`` runs: sign-in with the dev IdP, three demo routes;
    the session store in ``redis`` when given."""
    keys, secret, signing = _dev_secrets(directory / "secrets")
    upstream = {
        "upstream": f"https://127.0.0.1:{upstream_port}",
        "upstream_tls": {
            "ca_file": str(material.ca_cert),
            "cert_file": str(material.edge_client_cert),
            "key_file": str(material.edge_client_key),
            "server_name": SERVER_NAME,
            "verify_san": [GATEWAY_SPIFFE_ID],
        },
    }
    public = f"http://127.0.0.1:{port}"
    return {
        "public_url": public,
        "listen": {"address": f"127.0.0.1:{port}"},
        "admin": {"address": f"127.0.0.1:{admin_port}"},
        "oidc": {
            "issuer": f"{idp_url}/organizations/v2.0",
            "allowed_tenants": [TENANT_A],
            "client_id": DEV_CLIENT_ID,
            "client_secret_file": str(secret),
            "graph_url": f"{idp_url}/graph",
        },
        "session": {"keys_file": str(keys), **({"store": "redis"} if redis else {})},
        **({"redis": {"url": redis}} if redis else {}),
        "tokens": {
            "issuer": f"{public}/.iap",
            "keys_dir": str(signing),
            "roles": {"Edge.Admin": "admin", STAFF_GROUP_ID: "staff"},
        },
        "routes": _dev_routes(upstream),
        **({"telemetry": {"otlp_endpoint": otlp}} if otlp else {}),
    }


def _dev_routes(upstream: dict[str, Any]) -> list[dict[str, Any]]:
    """The demo routes: /public/ without sign-in, /admin/ for role admin, / for anyone signed in."""
    return [
        {
            "name": "public",
            "match": {"path_prefix": "/public/"},
            **upstream,
            "policy": {"public": True},
        },
        {
            "name": "admin",
            "match": {"path_prefix": "/admin/"},
            **upstream,
            "policy": {"allow": {"roles": ["admin"]}},
        },
        {"name": "demo", **upstream, "policy": {"allow": {"authenticated": True}}},
    ]


def _dev_secrets(directory: Path) -> tuple[Path, Path, Path]:
    """A fresh session keyring, the dev client secret and a signing key, mode 0600."""
    directory.mkdir(mode=0o700, exist_ok=True)
    keys = directory / "session.keys"
    keys.write_text(base64.urlsafe_b64encode(os.urandom(32)).decode() + "\n")
    keys.chmod(0o600)
    secret = directory / "client.secret"
    secret.write_text(DEV_CLIENT_SECRET)
    secret.chmod(0o600)
    signing = directory / "signing-keys"
    write_new_key(signing)
    return keys, secret, signing


async def _run(
    options: DevOptions, directory: Path, material: DevMaterial, environment: Environment
) -> int:
    upstream = web.AppRunner(echo_app(), access_log=None)
    await upstream.setup()
    sock = bind(config.Address("127.0.0.1", 0))
    await web.SockSite(upstream, sock, ssl_context=upstream_server_context(material)).start()
    upstream_port = sock.getsockname()[1]
    public = f"http://127.0.0.1:{options.port}"
    idp = await start_dev_idp(
        client_id=DEV_CLIENT_ID,
        client_secret=DEV_CLIENT_SECRET,
        redirect_uris=[f"{public}/.iap/callback"],
        post_logout_redirect_uris=[f"{public}/", f"{public}/.iap/signed-out"],
    )
    try:
        document = dev_config(
            port=options.port,
            idp_url=idp.url,
            upstream_port=upstream_port,
            material=material,
            directory=directory,
            admin_port=options.admin_port,
            otlp=options.otlp,
            redis=options.redis,
        )
        edge = build_edge(config.parse(document, environment), environment)
        described = partial(_describe, edge, idp.url, upstream_port, material)
        return await _serve(edge, partial(described, tracing=_tracing(options, environment)))
    finally:
        await idp.stop()
        await upstream.cleanup()


async def _serve(edge: Edge, describe: Callable[[], None]) -> int:
    try:
        await edge.start()
    except OSError as exc:  # taken since _taken_port looked
        print(
            f"iap dev: cannot listen ({exc.strerror}); choose other ports with --port and "
            "--admin-port",
            file=sys.stderr,
        )
        await edge.stop()
        return EXIT_FAILURE
    describe()
    await wait_for_signals(signal.SIGTERM, signal.SIGINT)
    await edge.stop()
    return EXIT_OK


def _tracing(options: DevOptions, environment: Environment) -> str:
    endpoint = options.otlp or environment.otlp_traces_endpoint or environment.otlp_endpoint
    if endpoint is None:
        return "off (turn on with --otlp http://127.0.0.1:4318 or OTEL_EXPORTER_OTLP_ENDPOINT)"
    return f"spans to {endpoint}; each audit line's trace_id finds its trace"


def _describe(
    edge: Edge, idp_url: str, upstream_port: int, material: DevMaterial, *, tracing: str
) -> None:
    admin = edge.admin_address or ("127.0.0.1", 0)
    lines = [
        f"iap dev ready: {edge.public_url}/",
        "",
        f"  open        {edge.public_url}/   (sign in as one of the demo users below)",
        f"  admin       http://{admin[0]}:{admin[1]}/   (metrics, healthz, readyz, jwks.json)",
        f"  tracing     {tracing}",
        "",
        f"  dev IdP (Entra ID v2.0 shapes, loopback only): {idp_url}/organizations/v2.0",
        "  demo users (pick one on the dev IdP's sign-in page):",
        "    alice   Contoso (tenant A), app role Edge.Admin -> admin: / and /admin/",
        "    bob     Contoso (tenant A), group staff: / but not /admin/ (403)",
        "    olivia  Contoso (tenant A), 150 groups (overage, resolved through Graph): /",
        "    eve     Fabrikam (tenant B): refused, tenant B is not in allowed_tenants",
        "  routes: / (any signed-in user), /admin/ (role admin), /public/ (no sign-in)",
        "  your identity: /.iap/userinfo   sign out: /.iap/logout",
        f"  minted tokens (ES256, audience = route name): JWKS {edge.public_url}/.iap/jwks.json",
        f"  upstream hop: mutual TLS to https://127.0.0.1:{upstream_port}"
        f" (SNI {SERVER_NAME}, iap presents {SPIFFE_ID})",
        f"  dev certificates: {material.directory} (removed at exit)",
    ]
    for line in lines:
        print(line, flush=True)
