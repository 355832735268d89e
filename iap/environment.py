"""What iap takes from the process environment (SPEC §5, docs/configuration.md), as a value.

The composition root (:mod:`iap.app`) reads ``os.environ`` once, through
:meth:`Environment.from_mapping`, and hands this value to whatever needs it: config
validation (is a secret given by variable?), the secrets it loads, tracing and metrics.
No other module reads the environment.

Invariants:
- Secrets (the OIDC client secret, the session keys) never appear in ``repr``: a value
  that lands in a log line or a traceback shows only whether each one is set.
- Empty variables count as unset, as they always have (``IAP_OIDC_CLIENT_SECRET=``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

CLIENT_SECRET_VAR = "IAP_OIDC_CLIENT_SECRET"  # noqa: S105 - a variable's name, not a secret
SESSION_KEYS_VAR = "IAP_SESSION_KEYS"
METRICS_DIR_VAR = "PROMETHEUS_MULTIPROC_DIR"


@dataclass(frozen=True, repr=False)
class Environment:
    """The variables iap reads; None when a variable is unset or empty."""

    client_secret: str | None = None
    """``IAP_OIDC_CLIENT_SECRET``: the OIDC client secret when no file or certificate is set."""
    session_keys: str | None = None
    """``IAP_SESSION_KEYS``: the session keyring when ``session.keys_file`` is absent."""
    otlp_endpoint: str | None = None
    """``OTEL_EXPORTER_OTLP_ENDPOINT``: where spans go when ``telemetry.otlp_endpoint`` is unset."""
    otlp_traces_endpoint: str | None = None
    """``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``: the traces endpoint itself (no path added)."""
    service_name: str | None = None
    """``OTEL_SERVICE_NAME``: overrides ``telemetry.service_name``."""
    metrics_dir: str | None = None
    """``PROMETHEUS_MULTIPROC_DIR``: metrics aggregated across workers (set by ``--workers``)."""

    @classmethod
    def from_mapping(cls, variables: Mapping[str, str]) -> Environment:
        """The value of ``variables`` (``os.environ``, read by ``iap.cli``)."""

        def get(name: str) -> str | None:
            return variables.get(name) or None

        return cls(
            client_secret=get(CLIENT_SECRET_VAR),
            session_keys=get(SESSION_KEYS_VAR),
            otlp_endpoint=get("OTEL_EXPORTER_OTLP_ENDPOINT"),
            otlp_traces_endpoint=get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            service_name=get("OTEL_SERVICE_NAME"),
            metrics_dir=get(METRICS_DIR_VAR),
        )

    def __repr__(self) -> str:
        secrets = f"client_secret={'set' if self.client_secret else None}, " + (
            f"session_keys={'set' if self.session_keys else None}"
        )
        rest = ", ".join(
            f"{name}={getattr(self, name)!r}"
            for name in ("otlp_endpoint", "otlp_traces_endpoint", "service_name", "metrics_dir")
        )
        return f"Environment({secrets}, {rest})"
