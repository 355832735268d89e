"""A process whose config has no ``redis`` imports neither redis-py nor ``limits`` (about
8 MiB of each worker's memory); one with ``redis`` imports both. Each case builds the edge
in a fresh interpreter, since this test process has long imported them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

_ROOT = Path(__file__).resolve().parents[2]

_BUILD = """
import json, sys
from iap import config
from iap.app.wiring import build_edge
from iap.environment import Environment
build_edge(config.parse(json.loads(sys.argv[1])), Environment())
print(json.dumps(sorted({"redis", "limits"} & set(sys.modules))))
"""


def _document(**overrides: Any) -> dict[str, Any]:
    """A public route and a rate-limited one, as a worker would serve them."""
    upstream = "http://127.0.0.1:9"
    document: dict[str, Any] = {
        "public_url": "http://edge.test",
        "listen": {"address": "127.0.0.1:0"},
        "admin": {"address": "127.0.0.1:0"},
        "routes": [
            {"name": "app", "upstream": upstream, "policy": {"public": True}},
            {
                "name": "limited",
                "upstream": upstream,
                "match": {"path_prefix": "/limited"},
                "policy": {"public": True},
                "rate_limit": {"requests": 5, "per": "1s"},
            },
        ],
    }
    document.update(overrides)
    return document


def _imported_after_build(document: dict[str, Any]) -> list[str]:
    env = dict(os.environ, PYTHONPATH=str(_ROOT))
    done = subprocess.run(
        [sys.executable, "-c", _BUILD, json.dumps(document)],
        env=env,
        cwd=_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    imported: list[str] = json.loads(done.stdout.splitlines()[-1])
    return imported


def test_a_config_without_redis_imports_neither_redis_nor_limits() -> None:
    assert _imported_after_build(_document()) == []


@pytest.mark.parametrize(
    "redis",
    [{"url": "redis://127.0.0.1:1/0"}, {"url": "redis://127.0.0.1:1/0", "cluster": True}],
)
def test_a_config_with_redis_imports_both(redis: dict[str, Any]) -> None:
    """The switch is the ``redis`` block: the client connects lazily, so no server is needed."""
    assert _imported_after_build(_document(redis=redis)) == ["limits", "redis"]
