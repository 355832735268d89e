"""Run an asyncio.Protocol as a small uvloop TCP server: the bench's stand-in peers."""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Callable

import uvloop


async def _serve(protocol: Callable[[], asyncio.Protocol], host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(protocol, host, port, backlog=1024)
    print("ready", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def serve_from_command_line(protocol: Callable[[], asyncio.Protocol], description: str) -> None:
    """``--host``/``--port`` from argv; prints ``ready`` once listening; stops on SIGTERM."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvloop.run(_serve(protocol, args.host, args.port))
