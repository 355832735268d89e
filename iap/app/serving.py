"""Run one edge on an event loop: serve until SIGTERM or SIGINT, reload on SIGHUP, drain.

Invariants:
- uvloop runs every process's loop (:func:`run_loop`); nothing else here picks a loop.
- A reload is applied whole or refused whole, naming each key (:meth:`Edge.reload`); the
  old gateway closes only after ``drain_timeout``, when requests in flight on it are done.
- Status lines go to stderr in one ``write(2)`` each, so workers sharing stderr never
  interleave inside a line.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
from collections.abc import Coroutine
from typing import Any

from iap import config
from iap.app import EXIT_FAILURE, EXIT_OK
from iap.environment import Environment
from iap.errors import ConfigError
from iap.web.server import Edge, wait_for_signals


def run_loop(main: Coroutine[Any, Any, int]) -> int:
    """Run ``main`` on a fresh uvloop event loop; its result is the exit code."""
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


async def serve(
    edge: Edge,
    *,
    reuse_port: bool,
    config_path: str | None = None,
    environment: Environment | None = None,
) -> int:
    """Serve until SIGTERM or SIGINT, then drain; SIGHUP reloads routes from ``config_path``
    (validated with ``environment``, as at start-up)."""
    try:
        await edge.start(reuse_port=reuse_port)
    except OSError as exc:
        print(f"iap: cannot listen: {exc.strerror or exc}", file=sys.stderr)
        await edge.stop()
        return EXIT_FAILURE
    # Everything allocated so far lives as long as the process: keep the collector from
    # walking it again and again (gc.freeze, as pre-fork servers do).
    gc.collect()
    gc.freeze()
    reloads: set[asyncio.Task[None]] = set()
    if config_path is not None:

        def on_hup() -> None:
            task = asyncio.ensure_future(_reload(edge, config_path, environment))
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, on_hup)
    stopped = asyncio.ensure_future(wait_for_signals(signal.SIGTERM, signal.SIGINT))
    await asyncio.sleep(0)  # it installs its handlers: a signal sent once we say so drains
    say(f"iap listening: {edge.describe()}")
    await stopped
    say("iap: draining")
    for task in reloads:
        task.cancel()
    await edge.stop()
    return EXIT_OK


def say(line: str) -> None:
    """One status line on stderr in a single write(2): workers share stderr, and a pipe
    keeps writes under PIPE_BUF whole, so their lines never interleave."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


async def _reload(edge: Edge, path: str, environment: Environment | None) -> None:
    try:
        try:
            fresh = config.load(path, environment)
        except ConfigError:
            edge.metrics.reload_refusals.inc()  # Edge.reload counts its own refusals
            raise
        old = edge.reload(fresh)
    except ConfigError as exc:
        for problem in exc.problems:
            say(f"iap: reload refused: config error: {problem}")
        return
    say("iap: reloaded routes and policies")
    await asyncio.sleep(edge.config.drain_timeout)  # requests in flight on the old routes
    await old.close()
