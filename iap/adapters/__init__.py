"""IO at the edges: the upstream forwarder, metrics, the audit log."""
