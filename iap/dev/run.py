"""Wire the demo upstream and iap together on loopback and serve until interrupted.

The hop from iap to the demo upstream is mutual TLS, as to the Istio ingress gateway in
production (SPEC §6): material from :func:`iap.certs.issue_dev_material` in a temporary
directory that is removed at exit; the upstream demands a client certificate from the dev
CA, iap verifies the upstream against that CA, sends SNI and pins the gateway's SPIFFE ID.
"""

from __future__ import annotations

import shutil
import signal
import ssl
import sys
import tempfile
from pathlib import Path

from aiohttp import web

from iap import config
from iap.certs import GATEWAY_SPIFFE_ID, SERVER_NAME, SPIFFE_ID, DevMaterial, issue_dev_material
from iap.cli import EXIT_FAILURE, EXIT_OK
from iap.dev.echo import echo_app
from iap.web.server import Edge, bind, wait_for_signals


def upstream_server_context(material: DevMaterial) -> ssl.SSLContext:
    """The demo upstream's side of mTLS: the ingress certificate; clients from the dev CA only."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(material.ingress_server_cert), str(material.ingress_server_key))
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cafile=str(material.ca_cert))
    return context


async def run_dev(port: int) -> int:
    directory = Path(tempfile.mkdtemp(prefix="iap-dev-"))
    try:
        return await _run(port, issue_dev_material(directory / "certs"))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def _run(port: int, material: DevMaterial) -> int:
    upstream = web.AppRunner(echo_app(), access_log=None)
    await upstream.setup()
    sock = bind(config.Address("127.0.0.1", 0))
    await web.SockSite(upstream, sock, ssl_context=upstream_server_context(material)).start()
    upstream_port = sock.getsockname()[1]
    edge = Edge(
        config.parse(
            {
                "public_url": f"http://127.0.0.1:{port}",
                "listen": {"address": f"127.0.0.1:{port}"},
                "admin": {"address": "127.0.0.1:0"},
                "routes": [
                    {
                        "name": "demo",
                        "upstream": f"https://127.0.0.1:{upstream_port}",
                        "upstream_tls": {
                            "ca_file": str(material.ca_cert),
                            "cert_file": str(material.edge_client_cert),
                            "key_file": str(material.edge_client_key),
                            "server_name": SERVER_NAME,
                            "verify_san": [GATEWAY_SPIFFE_ID],
                        },
                        "policy": {"public": True},
                    }
                ],
            }
        )
    )
    try:
        await edge.start()
    except OSError as exc:
        print(f"iap dev: cannot listen on 127.0.0.1:{port}: {exc.strerror}", file=sys.stderr)
        await edge.stop()
        await upstream.cleanup()
        return EXIT_FAILURE
    print(f"iap dev ready: {edge.public_url}/", flush=True)
    print(f"  admin: {edge.describe()}", flush=True)
    print(
        "  demo route: / -> the echo upstream (public); sign-in arrives with the dev IdP",
        flush=True,
    )
    print(
        f"  upstream hop: mutual TLS to https://127.0.0.1:{upstream_port}"
        f" (SNI {SERVER_NAME}, iap presents {SPIFFE_ID})",
        flush=True,
    )
    print(f"  dev certificates: {material.directory} (removed at exit)", flush=True)
    await wait_for_signals(signal.SIGTERM, signal.SIGINT)
    await edge.stop()
    await upstream.cleanup()
    return EXIT_OK
