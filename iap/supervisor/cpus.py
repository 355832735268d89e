"""``--workers auto``: how many CPUs this process may use.

The smaller of the CPUs it may be scheduled on (its affinity) and the cgroup's CPU quota,
rounded up: cgroup v2 ``cpu.max`` (``QUOTA PERIOD``, or ``max`` for none), else cgroup v1
``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (``-1`` for none). Never less than 1. Missing
or unreadable files mean no quota.
"""

from __future__ import annotations

import math
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
_V1_DIRS = ("cpu", "cpu,cpuacct", "cpuacct,cpu")


def usable_cpus(affinity: int, root: Path = CGROUP_ROOT) -> int:
    """``min(affinity, ceil(quota / period))``, at least 1; ``affinity`` alone without a quota."""
    quota = cgroup_quota(root)
    limit = affinity if quota is None else min(affinity, math.ceil(quota))
    return max(1, limit)


def cgroup_quota(root: Path) -> float | None:
    """The cgroup's CPU quota in CPUs (quota / period), or None when there is none."""
    v2 = _read(root / "cpu.max")
    if v2 is not None:
        fields = v2.split()
        return _ratio(fields[0], fields[1]) if len(fields) == 2 else None
    for name in _V1_DIRS:
        quota = _read(root / name / "cpu.cfs_quota_us")
        period = _read(root / name / "cpu.cfs_period_us")
        if quota is not None and period is not None:
            return _ratio(quota, period)
    return None


def _ratio(quota: str, period: str) -> float | None:
    """``quota / period`` when both are positive integers (``max`` and ``-1`` mean none)."""
    try:
        numerator, denominator = int(quota), int(period)
    except ValueError:
        return None
    return numerator / denominator if numerator > 0 and denominator > 0 else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
