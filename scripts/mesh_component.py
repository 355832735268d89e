"""`make mesh`: the kustomize Component deploy/k8s/istio/ from the iap.yaml that the
Deployment runs (the ConfigMap in deploy/k8s/configmap.yaml), with the options in OPTIONS.

    python scripts/mesh_component.py [OUT_DIR]     (default deploy/k8s/istio)

Without `tokens` (no sign-in) iap mints nothing for the mesh to verify, so the authn and
authz parts are left out; once the ConfigMap's iap.yaml has `tokens`, they are rendered too.
tests/deploy/test_mesh_component.py runs this into a scratch directory and fails when the
checked-in files differ.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import yaml

from iap import cli
from iap.mesh_render.parts import PARTS, POLICY_PARTS

# `iap mesh render` options for this deployment (docs/mesh.md#options); the defaults fit
# deploy/k8s. Name your services here, e.g. "--destination", "public=web.shop.svc:8080".
OPTIONS: list[str] = []

ROOT = Path(__file__).resolve().parents[1]
CONFIGMAP = ROOT / "deploy" / "k8s" / "configmap.yaml"
COMPONENT = ROOT / "deploy" / "k8s" / "istio"


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else COMPONENT
    text = yaml.safe_load(CONFIGMAP.read_text(encoding="utf-8"))["data"]["iap.yaml"]
    signs_in = yaml.safe_load(text).get("tokens") is not None
    parts = [part for part in PARTS if signs_in or part not in POLICY_PARTS]
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "iap.yaml"
        path.write_text(text, encoding="utf-8")
        argv = ["mesh", "render", "-c", str(path), "--only", ",".join(parts)]
        return cli.main([*argv, *OPTIONS, "--out-dir", str(out)])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
