"""The Istio CRD schemas (``../shared/schemas/istio-crds.gen.yaml``, or the file that
``IAP_ISTIO_CRDS`` names), made strict: ``additionalProperties: false`` on every object node
that lists ``properties`` below the root (Kubernetes structural schemas leave it out), as the
schemas' README says, so a misspelt field fails."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

Doc = dict[str, Any]
Schemas = dict[tuple[str, str], Doc]

BESIDE = Path(__file__).resolve().parents[2].parent / "shared" / "schemas" / "istio-crds.gen.yaml"


def crds_path() -> Path:
    named = os.environ.get("IAP_ISTIO_CRDS")
    return Path(named) if named else BESIDE


def strict(node: Any, *, root: bool = True) -> Any:
    if isinstance(node, list):
        return [strict(item, root=False) for item in node]
    if not isinstance(node, dict):
        return node
    closed = {key: strict(value, root=False) for key, value in node.items()}
    if "properties" in node and not root:
        closed.setdefault("additionalProperties", False)
    return closed


def load_schemas() -> Schemas:
    """(apiVersion, kind) -> strict openAPIV3Schema. The file lives beside the project, not
    in it; where it is absent the test skips with that reason (it is data, not a package
    ``make test`` installs)."""
    path = crds_path()
    if not path.is_file():
        pytest.skip(
            f"Istio CRD schemas not found at {path}: set IAP_ISTIO_CRDS to"
            " istio-crds.gen.yaml (see ../shared/schemas/README.md)"
        )
    return _parsed(path)


@functools.cache
def _parsed(path: Path) -> Schemas:
    schemas: Schemas = {}
    for crd in yaml.safe_load_all(path.read_text(encoding="utf-8")):
        if not crd or crd.get("kind") != "CustomResourceDefinition":
            continue
        spec = crd["spec"]
        for version in spec["versions"]:
            key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
            schemas[key] = strict(version["schema"]["openAPIV3Schema"])
    return schemas


def schema_errors(schemas: Schemas, document: Doc) -> list[str]:
    schema = schemas.get((document["apiVersion"], document["kind"]))
    assert schema is not None, f"no CRD for {document['apiVersion']} {document['kind']}"
    validator = jsonschema.Draft202012Validator(schema)
    return [
        f"{'.'.join(str(p) for p in error.absolute_path)}: {error.message}"
        for error in validator.iter_errors(document)
    ]
