"""The ``--workers`` parent's loop: start N workers, start again the ones that die, drain
them all on SIGTERM or SIGINT.

Invariants:
- The parent blocks SIGTERM, SIGINT, SIGHUP and SIGCHLD and takes them one at a time with
  ``sigtimedwait``: no handler runs in the middle of a fork or a ``waitpid``, and no signal
  is lost between two waits. A worker unblocks them first thing after the fork.
- A worker that exits while the parent is not shutting down is reported and started again
  after its slot's :class:`~iap.supervisor.backoff.Backoff` delay, and counted in
  ``iap_worker_restarts_total``. Once shutting down, nothing is started again.
- New workers serve the config every worker serves: the one the parent started with, or the
  last one a SIGHUP reload accepted. The parent applies the same checks as the workers (a
  valid file, the restart-only keys unchanged), so a refused reload keeps the last good one.
- Shutdown waits ``drain_timeout`` plus :data:`MARGIN` (plus the span exporter's bound when
  tracing is on) and then SIGKILLs what is left. The exit code is the worst of each slot's
  last worker: the highest positive code, or 1 for a death by signal.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NoReturn

from iap import config as config_module
from iap.adapters.metrics import WorkerMetrics
from iap.app import EXIT_CONFIG, EXIT_FAILURE
from iap.app.serving import say
from iap.config import Config
from iap.environment import Environment
from iap.errors import ConfigError
from iap.supervisor.backoff import Backoff

SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD})
MARGIN = 5.0
"""Seconds past ``drain_timeout`` a worker has to exit (closing listeners, pools) before the
parent kills it."""


@dataclass
class Slot:
    """One of the N workers: the process serving in it now, or when the next one starts."""

    backoff: Backoff = field(default_factory=Backoff)
    pid: int | None = None
    started: float = 0.0
    restart_at: float | None = None
    code: int = 0


class Supervisor:
    """The parent of ``workers`` processes serving ``config`` (read from ``path``)."""

    def __init__(
        self,
        config: Config,
        path: str,
        environment: Environment,
        workers: int,
        *,
        metrics: WorkerMetrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config, self._path, self._environment = config, path, environment
        self._metrics, self._clock = metrics, clock
        self._slots = [Slot() for _ in range(workers)]
        self._deadline: float | None = None  # set once shutting down
        self._killed = False

    def run(self) -> int:
        """Serve until every worker has exited after SIGTERM or SIGINT; the exit code."""
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        for slot in self._slots:
            self._start(slot)
        while self._deadline is None or any(slot.pid is not None for slot in self._slots):
            timeout = self._timeout()
            info = (
                signal.sigwaitinfo(SIGNALS)
                if timeout is None
                else signal.sigtimedwait(SIGNALS, timeout)
            )
            if info is not None:
                self._on_signal(info.si_signo)
            self._reap()
            self._act()
        return max((_failure(slot.code) for slot in self._slots), default=0)

    def _timeout(self) -> float | None:
        """Seconds until the next restart or the kill deadline; None to wait for a signal."""
        if self._deadline is not None:
            moments = [] if self._killed else [self._deadline]
        else:
            moments = [slot.restart_at for slot in self._slots if slot.restart_at is not None]
        return max(0.0, min(moments) - self._clock()) if moments else None

    def _on_signal(self, number: int) -> None:
        if number == signal.SIGHUP:
            self._relay(number)
            self._reload()
        elif number in (signal.SIGTERM, signal.SIGINT) and self._deadline is None:
            self._deadline = self._clock() + self.grace()
            for slot in self._slots:
                slot.restart_at = None
            self._relay(number)  # later ones are ignored, as the workers ignore them

    def grace(self) -> float:
        """How long workers may drain before they are killed."""
        telemetry, environment = self.config.telemetry, self._environment
        # Tracing is on when an endpoint is set (iap.adapters.telemetry): the worker then
        # waits up to 4 x export_timeout + 10 s for its exporter (docs/operations.md).
        tracing = telemetry.otlp_endpoint or environment.otlp_endpoint
        tracing = tracing or environment.otlp_traces_endpoint
        exporter = 4 * telemetry.export_timeout + 10 if tracing else 0.0
        return self.config.drain_timeout + MARGIN + exporter

    def _relay(self, number: int) -> None:
        for slot in self._slots:
            if slot.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, number)

    def _reap(self) -> None:
        """Collect every worker that exited; schedule its replacement unless shutting down."""
        for slot in self._slots:
            if slot.pid is None:
                continue
            pid, status = os.waitpid(slot.pid, os.WNOHANG)
            if pid == 0:
                continue
            slot.pid, slot.code = None, os.waitstatus_to_exitcode(status)
            self._metrics.worker_gone(pid)
            if self._deadline is not None:
                if slot.code != 0:
                    say(f"iap: worker {pid} exited with {slot.code}")
                continue
            delay = slot.backoff.delay(uptime=self._clock() - slot.started)
            slot.restart_at = self._clock() + delay
            say(f"iap: worker {pid} exited with {slot.code}; restarting in {delay:g}s")

    def _act(self) -> None:
        """Start the workers whose delay is over, or kill the ones past the deadline."""
        now = self._clock()
        if self._deadline is None:
            for slot in self._slots:
                if slot.restart_at is not None and slot.restart_at <= now:
                    self._metrics.restarts.inc()
                    self._start(slot)
        elif now >= self._deadline and not self._killed:
            self._killed = True
            for slot in self._slots:
                if slot.pid is not None:
                    grace = self.grace()
                    say(f"iap: worker {slot.pid} did not drain within {grace:g}s; killing it")
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(slot.pid, signal.SIGKILL)

    def _start(self, slot: Slot) -> None:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child, measured by the subprocess tests
            worker(self.config, self._path, self._environment)
        slot.pid, slot.started, slot.restart_at, slot.code = pid, self._clock(), None, 0

    def _reload(self) -> None:
        """SIGHUP: new workers serve the file from now on if every worker would accept it."""
        from iap.app.wiring import build_edge
        from iap.web.server import restart_changes

        try:
            fresh = config_module.load(self._path, self._environment)
            changed = restart_changes(self.config, fresh)
            if changed:
                raise ConfigError(
                    [f"{key}: changes need a restart, not a reload" for key in changed]
                )
            build_edge(fresh, self._environment)  # the TLS files and routes, as at start
        except ConfigError as exc:
            for problem in exc.problems:
                say(f"iap: new workers keep the last good config: config error: {problem}")
            return
        self.config = fresh
        say("iap: new workers will serve the reloaded config")


def _failure(code: int) -> int:
    """A worker's exit code as the parent's: 0, the code itself, or 1 for a signal's death."""
    return code if code >= 0 else EXIT_FAILURE


def worker(config: Config, path: str, environment: Environment) -> NoReturn:  # pragma: no cover
    """A forked worker: its own parts, built after the fork, serving until told to stop."""
    code = EXIT_FAILURE
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
        from iap.app.serving import run_loop, serve
        from iap.app.wiring import build_edge

        try:
            edge = build_edge(config, environment)
        except ConfigError as exc:  # a file the parent read has gone bad since
            for problem in exc.problems:
                say(f"config error: {problem}")
            code = EXIT_CONFIG
        else:
            code = run_loop(serve(edge, reuse_port=True, config_path=path, environment=environment))
    finally:
        os._exit(code)
