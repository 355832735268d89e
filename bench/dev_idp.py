"""The dev IdP as a process for the benchmark: ``python bench/dev_idp.py --port P --redirect URI``.

Prints ``ready`` on stdout once listening; serves until terminated.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from iap.dev.idp import start_dev_idp

CLIENT_ID = "00000000-0000-4000-8000-00000000be7c"
CLIENT_SECRET = "bench-client-secret"


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redirect", required=True)
    args = parser.parse_args()
    idp = await start_dev_idp(
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        redirect_uris=[args.redirect],
        port=args.port,
    )
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await idp.stop()


if __name__ == "__main__":
    asyncio.run(main())
