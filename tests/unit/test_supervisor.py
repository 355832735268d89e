"""The ``--workers`` parent's pure parts: restart delays, and the CPUs of ``--workers auto``
read from cgroup files (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``/``cpu.cfs_period_us``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from iap.cli import _parser
from iap.supervisor.backoff import CAP, INITIAL, STABLE, Backoff
from iap.supervisor.cpus import cgroup_quota, usable_cpus


def test_delays_double_up_to_the_cap_while_workers_die_young() -> None:
    backoff = Backoff()
    delays = [backoff.delay(uptime=0.1) for _ in range(9)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert (INITIAL, CAP) == (0.5, 30.0)


def test_a_worker_that_stayed_up_resets_the_delay() -> None:
    backoff = Backoff()
    assert [backoff.delay(uptime=1.0) for _ in range(3)] == [0.5, 1.0, 2.0]
    assert backoff.delay(uptime=STABLE) == INITIAL
    assert backoff.delay(uptime=STABLE - 0.01) == 2 * INITIAL  # young again: doubling resumes


def write(root: Path, name: str, text: str) -> None:
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_text(text, encoding="ascii")


def test_cgroup_v2_quota_rounds_up_and_caps_the_affinity(tmp_path: Path) -> None:
    write(tmp_path, "cpu.max", "150000 100000\n")
    assert cgroup_quota(tmp_path) == 1.5
    assert usable_cpus(8, tmp_path) == 2
    assert usable_cpus(1, tmp_path) == 1  # the affinity is the smaller


def test_cgroup_v2_without_a_quota_uses_the_affinity(tmp_path: Path) -> None:
    write(tmp_path, "cpu.max", "max 100000\n")
    assert cgroup_quota(tmp_path) is None
    assert usable_cpus(6, tmp_path) == 6


@pytest.mark.parametrize("directory", ["cpu", "cpu,cpuacct"])
def test_cgroup_v1_quota(tmp_path: Path, directory: str) -> None:
    write(tmp_path, f"{directory}/cpu.cfs_quota_us", "300000\n")
    write(tmp_path, f"{directory}/cpu.cfs_period_us", "100000\n")
    assert usable_cpus(16, tmp_path) == 3


def test_cgroup_v1_without_a_quota_uses_the_affinity(tmp_path: Path) -> None:
    write(tmp_path, "cpu/cpu.cfs_quota_us", "-1\n")
    write(tmp_path, "cpu/cpu.cfs_period_us", "100000\n")
    assert usable_cpus(4, tmp_path) == 4


def test_missing_or_garbled_files_mean_no_quota(tmp_path: Path) -> None:
    assert usable_cpus(3, tmp_path / "absent") == 3
    write(tmp_path, "cpu.max", "lots\n")
    assert usable_cpus(3, tmp_path) == 3
    write(tmp_path, "cpu.max", "0 100000\n")
    assert usable_cpus(3, tmp_path) == 3


def test_a_tiny_quota_still_gives_one_worker(tmp_path: Path) -> None:
    write(tmp_path, "cpu.max", "10000 100000\n")
    assert usable_cpus(4, tmp_path) == 1
    assert usable_cpus(0, tmp_path / "absent") == 1


def test_workers_auto_is_a_positive_count_and_numbers_still_parse() -> None:
    auto = _parser().parse_args(["run", "-c", "x.yaml", "--workers", "auto"]).workers
    assert isinstance(auto, int)
    assert auto >= 1
    assert _parser().parse_args(["run", "-c", "x.yaml", "--workers", "3"]).workers == 3
    with pytest.raises(SystemExit):
        _parser().parse_args(["run", "-c", "x.yaml", "--workers", "0"])
