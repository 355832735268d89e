"""``iap run --workers N``: N forked processes, each with its own SO_REUSEPORT listeners,
kept running by their parent (:mod:`iap.supervisor.workers`).

Invariants:
- The config, TLS material and the addresses are checked in the parent before any
  fork, so a bad config exits 2 and a taken port exits 1 once, not N times.
- Metrics from all workers are aggregated through prometheus-client's multiprocess mode,
  which must be switched on before prometheus-client is first imported: this module and
  :mod:`iap.supervisor.cpus` import nothing that imports it.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile

from iap.app import EXIT_FAILURE
from iap.config import Config
from iap.environment import METRICS_DIR_VAR, Environment


def supervise(config: Config, path: str, workers: int, environment: Environment) -> int:
    """Fork ``workers`` processes serving ``config`` and keep them up until SIGTERM or
    SIGINT; the worst exit code of the last worker in each slot."""
    if environment.metrics_dir is None:  # prometheus-client reads it when first imported
        metrics_dir = tempfile.mkdtemp(prefix="iap-metrics-")
        os.environ[METRICS_DIR_VAR] = metrics_dir
        environment = dataclasses.replace(environment, metrics_dir=metrics_dir)
    assert environment.metrics_dir is not None
    from iap.adapters.metrics import WorkerMetrics
    from iap.app.wiring import build_edge
    from iap.supervisor.workers import Supervisor
    from iap.web.server import bind

    build_edge(config, environment)  # raises ConfigError before anything is bound or forked
    try:
        for address in (config.listen.address, config.admin.address):
            bind(address, reuse_port=True).close()
    except OSError as exc:
        print(f"iap: cannot listen: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILURE
    metrics = WorkerMetrics(environment.metrics_dir)
    return Supervisor(config, path, environment, workers, metrics=metrics).run()
