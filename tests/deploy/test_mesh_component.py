"""deploy/k8s/istio/: the kustomize Component with the Istio wiring, as `iap mesh render`
renders it from the iap.yaml of deploy/k8s/configmap.yaml (`make mesh`).

The checked-in files must be what the renderer produces now (compared as parsed YAML
documents, so comments and key order do not matter), and every document must validate
against the Istio CRD schemas.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.deploy.istio_crds import Doc

ROOT = Path(__file__).resolve().parents[2]
COMPONENT = ROOT / "deploy" / "k8s" / "istio"
SCRIPT = ROOT / "scripts" / "mesh_component.py"
REGENERATE = "deploy/k8s/istio/ is out of date: run `make mesh` (scripts/mesh_component.py)"


def parsed(directory: Path) -> dict[str, list[Doc]]:
    return {
        path.name: [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
        for path in sorted(directory.glob("*.yaml"))
    }


def drift(checked_in: Path, rendered: Path) -> list[str]:
    """What differs, file by file."""
    have, want = parsed(checked_in), parsed(rendered)
    problems = [f"{name}: not rendered any more" for name in sorted(set(have) - set(want))]
    problems += [f"{name}: missing" for name in sorted(set(want) - set(have))]
    problems += [
        f"{name}: differs from what `iap mesh render` produces"
        for name in sorted(set(have) & set(want))
        if have[name] != want[name]
    ]
    return problems


def render_component(out: Path) -> None:
    environment = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(out)],
        env=environment,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("istio")
    render_component(out)
    return out


def test_the_checked_in_component_is_what_mesh_render_produces(rendered: Path) -> None:
    problems = drift(COMPONENT, rendered)
    assert not problems, f"{REGENERATE}: " + "; ".join(problems)


def test_the_drift_check_sees_an_edited_a_missing_and_a_stale_file(
    rendered: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "istio"
    shutil.copytree(COMPONENT, copy)
    assert drift(copy, rendered) == []
    gateway = yaml.safe_load((copy / "gateway.yaml").read_text(encoding="utf-8"))
    gateway["spec"]["servers"][0]["tls"]["mode"] = "SIMPLE"
    (copy / "gateway.yaml").write_text(yaml.safe_dump(gateway), encoding="utf-8")
    (copy / "telemetry.yaml").unlink()
    (copy / "authz.yaml").write_text("kind: AuthorizationPolicy\n", encoding="utf-8")
    assert drift(copy, rendered) == [
        "authz.yaml: not rendered any more",
        "telemetry.yaml: missing",
        "gateway.yaml: differs from what `iap mesh render` produces",
    ]
    # Comments and key order are not drift.
    (copy / "gateway.yaml").write_text(
        "# a comment\n" + yaml.safe_dump(parsed(rendered)["gateway.yaml"][0], sort_keys=False)
    )
    assert "gateway.yaml: differs from what `iap mesh render` produces" not in drift(copy, rendered)


def test_it_is_a_kustomize_component_listing_every_file() -> None:
    kustomization = yaml.safe_load((COMPONENT / "kustomization.yaml").read_text(encoding="utf-8"))
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1alpha1"
    assert kustomization["kind"] == "Component"
    files = sorted(p.name for p in COMPONENT.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(kustomization["resources"]) == files
    # The base does not pull it in: it needs Istio's CRDs, so an overlay opts in.
    base = yaml.safe_load((COMPONENT.parent / "kustomization.yaml").read_text(encoding="utf-8"))
    assert "istio" not in base.get("components", []) + base["resources"]


def test_the_component_wires_the_configmaps_routes() -> None:
    documents = [d for found in parsed(COMPONENT).values() for d in found]
    kinds = sorted(d["kind"] for d in documents if d["kind"] != "Component")
    configmap = yaml.safe_load((COMPONENT.parent / "configmap.yaml").read_text(encoding="utf-8"))
    signs_in = yaml.safe_load(configmap["data"]["iap.yaml"]).get("tokens") is not None
    expected = {"Gateway", "VirtualService", "PeerAuthentication", "Telemetry"}
    if signs_in:
        expected |= {"RequestAuthentication", "AuthorizationPolicy"}
    assert set(kinds) == expected
    (gateway,) = [d for d in documents if d["kind"] == "Gateway"]
    assert gateway["spec"]["servers"][0]["tls"]["mode"] == "MUTUAL"
