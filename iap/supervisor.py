"""``iap run --workers N``: N forked processes, each with its own SO_REUSEPORT listeners.

Invariants:
- The config, TLS material and the addresses are checked in the parent before any
  fork, so a bad config exits 2 and a taken port exits 1 once, not N times.
- SIGTERM, SIGINT and SIGHUP are passed on to every worker; the parent exits when all
  workers have, with the worst of their exit codes.
- Metrics from all workers are aggregated through prometheus-client's multiprocess mode,
  which must be switched on before prometheus-client is first imported.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
import tempfile
from types import FrameType
from typing import NoReturn

from iap.app import EXIT_FAILURE
from iap.config import Config
from iap.environment import METRICS_DIR_VAR, Environment


def supervise(config: Config, path: str, workers: int, environment: Environment) -> int:
    """Fork ``workers`` processes serving ``config``; the worst exit code of theirs."""
    if environment.metrics_dir is None:  # prometheus-client reads it when first imported
        metrics_dir = tempfile.mkdtemp(prefix="iap-metrics-")
        os.environ[METRICS_DIR_VAR] = metrics_dir
        environment = dataclasses.replace(environment, metrics_dir=metrics_dir)
    from iap.app.wiring import build_edge
    from iap.web.server import bind

    build_edge(config, environment)  # raises ConfigError before anything is bound or forked
    try:
        for address in (config.listen.address, config.admin.address):
            bind(address, reuse_port=True).close()
    except OSError as exc:
        print(f"iap: cannot listen: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILURE
    children: list[int] = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child, measured by the subprocess tests
            _worker(config, path, environment)
        children.append(pid)
    _relay_signals(children)
    return _wait(children)


def _worker(config: Config, path: str, environment: Environment) -> NoReturn:
    """A forked worker: its own parts, built after the fork, serving until told to stop."""
    from iap.app.serving import run_loop, serve
    from iap.app.wiring import build_edge

    code = EXIT_FAILURE
    try:
        edge = build_edge(config, environment)
        code = run_loop(serve(edge, reuse_port=True, config_path=path, environment=environment))
    finally:
        os._exit(code)


def _relay_signals(children: list[int]) -> None:
    """SIGTERM, SIGINT and SIGHUP to the parent go to every worker."""

    def relay(number: int, _: FrameType | None) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, number)

    for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(number, relay)


def _wait(children: list[int]) -> int:
    """Wait for every worker; the worst exit code (a signal's death counts as 1)."""
    worst = 0
    for child in children:
        _, status = os.waitpid(child, 0)
        code = os.waitstatus_to_exitcode(status)
        if code != 0:  # negative: killed by a signal, which is a failure too
            print(f"iap: worker {child} exited with {code}", file=sys.stderr)
            worst = max(worst, code if code > 0 else EXIT_FAILURE)
    return worst
