"""``import iap.mesh`` in a fresh interpreter loads none of the proxy's server dependencies
(issue 12): a service that verifies iap tokens needs aiohttp and joserfc, not redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVER_ONLY = ("redis", "pydantic", "uvloop", "prometheus_client", "iap.config", "iap.web")
PROBE = """
import json, sys
import iap.mesh
print(json.dumps({"loaded": sorted(sys.modules), "file": iap.mesh.__file__}))
"""


def test_importing_the_mesh_sdk_loads_no_server_dependency() -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, check=True
    )
    report = json.loads(done.stdout)
    assert Path(report["file"]).parent == ROOT / "iap" / "mesh"
    loaded = set(report["loaded"])
    leaked = sorted(
        module
        for module in loaded
        for name in SERVER_ONLY
        if module == name or module.startswith(name + ".")
    )
    assert leaked == []
    assert {"iap.mesh", "aiohttp", "joserfc"} <= loaded
