"""deploy/compose: iap dev (edge, dev IdP, demo upstream), Redis and Jaeger all-in-one.

The file is parsed and its wiring checked: every published port on 127.0.0.1 only, iap's OTLP
endpoint and Redis URL land on the ports Jaeger's collector and Redis publish, each service
has a health check and iap starts after the others are healthy. `docker-compose config`
(Debian `docker-compose`) validates the file where it is installed; no daemon is needed.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "compose" / "compose.yaml"
OTLP_HTTP, OTLP_GRPC, JAEGER_UI, REDIS = 4318, 4317, 16686, 6379
Doc = dict[str, Any]


def published(service: Doc) -> dict[int, tuple[str, int]]:
    """Container port -> (host address, host port) of a service's ``ports``."""
    mapping: dict[int, tuple[str, int]] = {}
    for entry in service.get("ports", []):
        host, host_port, container_port = str(entry).split(":")
        mapping[int(container_port)] = (host, int(host_port))
    return mapping


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def problems(document: Doc) -> list[str]:
    found: list[str] = []
    services = document["services"]
    iap, redis, jaeger = services["iap"], services["redis"], services["jaeger"]
    for name, service in services.items():
        if not service.get("healthcheck", {}).get("test"):
            found.append(f"{name}: no health check")
        for host, _ in published(service).values():
            if host != "127.0.0.1":
                found.append(f"{name}: publishes on {host}")
    endpoint = urlsplit(iap["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"])
    if published(jaeger).get(OTLP_HTTP) != (endpoint.hostname, endpoint.port):
        found.append(f"OTLP endpoint {endpoint.geturl()} is not Jaeger's OTLP HTTP port")
    if jaeger["environment"].get("COLLECTOR_OTLP_ENABLED") != "true":
        found.append("jaeger: OTLP is off")
    for port in (OTLP_GRPC, JAEGER_UI):
        if port not in published(jaeger):
            found.append(f"jaeger: {port} not published")
    redis_url = urlsplit(option(iap["command"], "--redis"))
    if published(redis).get(REDIS) != (redis_url.hostname, redis_url.port):
        found.append(f"--redis {redis_url.geturl()} is not Redis's published port")
    port = option(iap["command"], "--port")
    if f"http://127.0.0.1:{port}/" not in " ".join(iap["healthcheck"]["test"]):
        found.append(f"iap's health check does not ask its port {port}")
    conditions = {name: d.get("condition") for name, d in iap.get("depends_on", {}).items()}
    if conditions != {"redis": "service_healthy", "jaeger": "service_healthy"}:
        found.append(f"iap depends_on {conditions}")
    return found


@pytest.fixture
def document() -> Doc:
    loaded: Doc = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return loaded


def test_the_stack_is_wired(document: Doc) -> None:
    assert set(document["services"]) == {"iap", "redis", "jaeger"}
    assert problems(document) == []


def test_iap_is_built_from_the_repository_and_runs_as_the_image_user(document: Doc) -> None:
    iap = document["services"]["iap"]
    context = (COMPOSE.parent / iap["build"]["context"]).resolve()
    assert context == ROOT
    assert (context / iap["build"]["dockerfile"]).is_file()
    assert iap["command"][0] == "dev"
    assert iap["user"] == "10001:10001"  # the Dockerfile's USER
    assert iap["read_only"] is True
    assert document["services"]["jaeger"]["image"].startswith("jaegertracing/all-in-one:")


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (
            lambda d: d["services"]["iap"]["environment"].update(
                OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:4317"
            ),
            "OTLP endpoint http://127.0.0.1:4317 is not Jaeger's OTLP HTTP port",
        ),
        (
            lambda d: d["services"]["jaeger"].pop("healthcheck"),
            "jaeger: no health check",
        ),
        (
            lambda d: d["services"]["redis"].update(ports=["0.0.0.0:6379:6379"]),
            "redis: publishes on 0.0.0.0",
        ),
        (
            lambda d: d["services"]["iap"]["depends_on"]["redis"].update(
                condition="service_started"
            ),
            "iap depends_on {'redis': 'service_started', 'jaeger': 'service_healthy'}",
        ),
    ],
)
def test_miswiring_is_found(document: Doc, mutate: Any, problem: str) -> None:
    broken = copy.deepcopy(document)
    mutate(broken)
    assert problem in problems(broken)


def docker_compose() -> str:
    """The path of docker-compose; skips the test when it is missing, but fails under CI."""
    binary = shutil.which("docker-compose")
    if binary is None:
        reason = "docker-compose not found (install the Debian package `docker-compose`)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return binary


def test_docker_compose_accepts_the_file() -> None:
    binary = docker_compose()
    result = subprocess.run(
        [binary, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, timeout=120
    )
    assert (result.returncode, result.stderr) == (0, "")


def test_docker_compose_refuses_a_broken_file(tmp_path: Path, document: Doc) -> None:
    binary = docker_compose()
    document["services"]["iap"]["healthcheck"]["intervall"] = "5s"
    broken = tmp_path / "compose.yaml"
    broken.write_text(yaml.safe_dump(document), encoding="utf-8")
    result = subprocess.run(
        [binary, "-f", str(broken), "config", "-q"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert "intervall" in result.stderr
