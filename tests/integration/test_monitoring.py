"""The metrics the alerts and the dashboard of deploy/monitoring name exist on a running
edge's /metrics, and ``iap_signing_key_age_seconds`` tells the signing key's age."""

from __future__ import annotations

import os
import time
from pathlib import Path

import aiohttp

from iap.dev.idp import start_dev_idp
from tests.conftest import Upstream, free_port
from tests.deploy.test_monitoring import referenced_metrics
from tests.support.process import start_iap, write_config
from tests.support.signin import CLIENT_ID, CLIENT_SECRET, signin_config, signing_keys

DAY = 86400


def exported(text: str) -> set[str]:
    """Every metric name of an exposition, histograms with their series' suffixes: a labelled
    metric with no sample yet still has its ``# TYPE`` line."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        elif line and not line.startswith("#"):
            names.add(line.split("{")[0].split()[0])
    return names


def sample(text: str, name: str) -> float:
    (line,) = [line for line in text.splitlines() if line.startswith(name + " ")]
    return float(line.split()[1])


async def test_every_metric_the_alerts_and_dashboard_name_is_exported(
    tmp_path: Path, upstream: Upstream
) -> None:
    keys = signing_keys(tmp_path)
    (key,) = keys.iterdir()
    made = time.time() - 3 * DAY  # a key made three days ago
    os.utime(key, (made, made))
    port = free_port()
    idp = await start_dev_idp(
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        redirect_uris=[f"http://127.0.0.1:{port}/.iap/callback"],
    )
    document = signin_config(upstream.url, idp, port, tmp_path, admin={"address": "127.0.0.1:0"})
    iap = await start_iap("run", "-c", str(write_config(tmp_path, document)))
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{iap.admin_url}/metrics") as answer,
        ):
            assert answer.status == 200
            text = await answer.text()
    finally:
        assert await iap.stop() == 0, iap.stderr_lines
        await idp.stop()
    names = exported(text)
    assert referenced_metrics() - names == set()
    assert "iap_no_such_metric" not in names  # the parser does not accept just anything
    age = sample(text, "iap_signing_key_age_seconds")
    assert 3 * DAY <= age < 4 * DAY
