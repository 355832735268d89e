"""Wire the demo upstream and iap together on loopback and serve until interrupted."""

from __future__ import annotations

import signal
import sys

from aiohttp import web

from iap import config
from iap.cli import EXIT_FAILURE, EXIT_OK
from iap.dev.echo import echo_app
from iap.web.server import Edge, bind, wait_for_signals


async def run_dev(port: int) -> int:
    upstream = web.AppRunner(echo_app(), access_log=None)
    await upstream.setup()
    sock = bind(config.Address("127.0.0.1", 0))
    await web.SockSite(upstream, sock).start()
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
                        "upstream": f"http://127.0.0.1:{upstream_port}",
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
        await upstream.cleanup()
        return EXIT_FAILURE
    print(f"iap dev ready: {edge.public_url}/", flush=True)
    print(f"  admin: {edge.describe()}", flush=True)
    print(
        "  demo route: / -> the echo upstream (public); sign-in arrives with the dev IdP",
        flush=True,
    )
    await wait_for_signals(signal.SIGTERM, signal.SIGINT)
    await edge.stop()
    await upstream.cleanup()
    return EXIT_OK
