"""Run the ``iap`` command with cProfile on every Python thread, for ``BENCH_PROFILE``.

Usage: ``python bench/profiled_iap.py OUTDIR run -c iap.yaml``. Each thread (the event loop's,
the span exporter's, executor threads) writes ``OUTDIR/<thread>.prof`` when it ends, and the
CPU seconds of every thread go to ``OUTDIR/cpu.txt``, so that a slow configuration shows both
where the time goes within a thread and which thread takes it. iap must stop cleanly
(SIGTERM) for the event loop's profile to be written.

cProfile adds a fixed cost to every Python call, so code made of many small Python calls (the
OpenTelemetry SDK) looks dearer than code in C (aiohttp's parser, uvloop): read the shares
together with the undistorted requests/s of a normal run. Read a profile with
``python -m pstats OUTDIR/MainThread.prof`` (``sort cumulative``, ``stats 30``).
"""

from __future__ import annotations

import cProfile
import re
import sys
import threading
import time
from pathlib import Path

_LOCK = threading.Lock()


def _dump(out: Path, name: str, profile: cProfile.Profile, cpu: float) -> None:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    profile.dump_stats(out / f"{safe}.prof")
    with _LOCK, (out / "cpu.txt").open("a") as cpu_file:
        cpu_file.write(f"{cpu:10.3f} s CPU  {name}\n")


def main() -> int:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    original = threading.Thread.run

    def profiled_run(self: threading.Thread) -> None:
        profile = cProfile.Profile()
        started = time.thread_time()
        profile.enable()
        try:
            original(self)
        finally:
            profile.disable()
            _dump(out, f"{self.name}-{self.native_id}", profile, time.thread_time() - started)

    threading.Thread.run = profiled_run  # type: ignore[method-assign]

    from iap.cli import main as iap_main

    profile = cProfile.Profile()
    started = time.thread_time()
    profile.enable()
    try:
        return iap_main(sys.argv[2:])
    finally:
        profile.disable()
        _dump(out, "MainThread", profile, time.thread_time() - started)


if __name__ == "__main__":
    sys.exit(main())
