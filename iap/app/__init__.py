"""The composition root: the one place that reads the environment, the secrets and the
config, builds one process's parts and hands them to the handlers (docs/ARCHITECTURE.md).

- :mod:`iap.app.secrets` reads the session keyring and the OIDC client credential, from
  their files or from the :class:`~iap.environment.Environment`, once per process.
- :mod:`iap.app.wiring` builds the parts (metrics, audit, tracing, rate-limit counters,
  session store, sign-in, minter, bearer verifier) and the :class:`~iap.web.server.Edge`.
- :mod:`iap.app.serving` runs an edge on an event loop: serve, reload on SIGHUP, drain.

``iap.cli``, ``iap.supervisor`` and ``iap.dev`` depend on this package, never on each
other's internals. This module itself imports nothing heavy: the supervisor must set
``PROMETHEUS_MULTIPROC_DIR`` before prometheus-client is first imported, so the submodules
are imported where they are used.
"""

from __future__ import annotations

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2
"""The exit codes of every ``iap`` command (SPEC §4): ok, runtime failure, bad config."""
