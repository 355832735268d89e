"""The hashed locks, the SBOM and the vulnerability floors (docs/operations.md, THREAT_MODEL.md).

Offline: the locks are read as files, the dependency metadata comes from the environment
`make` installed from them, and the SBOM is validated against the CycloneDX schema that
cyclonedx-python-lib ships.
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.deploy.locks import (
    BUILD_LOCK,
    ROOT,
    RUNTIME_LOCK,
    TEST_LOCK,
    THREAT_MODEL,
    Pin,
    below_floor,
    bound_below_floor,
    build_requirements,
    disagreements,
    floors,
    project_requirements,
    read_lock,
    same_pins,
)

SBOM = ROOT / "requirements" / "runtime.cdx.json"


def installed_requires(name: str) -> list[Requirement] | None:
    try:
        distribution = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return None
    return [Requirement(text) for text in distribution.requires or ()]


def pins_of(path: Path) -> dict[str, Pin]:
    pins, problems = read_lock(path)
    agree(problems)
    return pins


def agree(problems: list[str]) -> None:
    """Fail with every problem on its own line, each naming its package."""
    assert not problems, "run `make lock`:\n" + "\n".join(problems)


# --- the checked-in locks ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lock", "extra"), [(RUNTIME_LOCK, None), (TEST_LOCK, "test")], ids=["runtime", "test"]
)
def test_lock_is_the_closure_of_pyproject(lock: Path, extra: str | None) -> None:
    roots = project_requirements(extra=extra)
    agree(disagreements(roots, pins_of(lock), installed_requires, lock.name))


def test_build_lock_holds_the_build_backend() -> None:
    roots = build_requirements()
    agree(disagreements(roots, pins_of(BUILD_LOCK), installed_requires, BUILD_LOCK.name))


def test_test_lock_runs_the_runtime_lock_unchanged() -> None:
    names = (RUNTIME_LOCK.name, TEST_LOCK.name)
    agree(same_pins(pins_of(RUNTIME_LOCK), pins_of(TEST_LOCK), names))


def test_this_environment_runs_the_locked_versions() -> None:
    # `make` installs the venv from the test and build locks; nothing else may have moved them.
    for lock in (TEST_LOCK, BUILD_LOCK):
        for name, pin in pins_of(lock).items():
            assert Version(importlib.metadata.version(name)) == pin.version, name


def test_every_locked_file_is_hashed_with_sha256() -> None:
    for lock in (RUNTIME_LOCK, TEST_LOCK, BUILD_LOCK):
        for name, pin in pins_of(lock).items():
            assert pin.hashes, name
            assert all(h.startswith("sha256:") and len(h) == 71 for h in pin.hashes), name


# --- drift is found and named ----------------------------------------------------------------

# A small world: app requires web>=2 and crypto[fast]; crypto's extra pulls speedups.
METADATA = {
    "web": [Requirement("idna")],
    "idna": [],
    "crypto": [
        Requirement('speedups; extra == "fast"'),
        Requirement('legacy; python_version < "3"'),
    ],
    "speedups": [],
}
ROOTS = [Requirement("web>=2"), Requirement("crypto[fast]")]


def pins(**versions: str) -> dict[str, Pin]:
    return {
        name: Pin(name, Version(version), frozenset({"sha256:" + "0" * 64}))
        for name, version in versions.items()
    }


def check(roots: list[Requirement], locked: dict[str, Pin]) -> list[str]:
    return disagreements(roots, locked, METADATA.get, "runtime.lock")


def test_an_agreeing_lock_has_no_disagreements() -> None:
    assert check(ROOTS, pins(web="2.1", idna="3", crypto="1", speedups="1")) == []


def test_a_package_added_without_relocking_is_named() -> None:
    locked = pins(web="2.1", idna="3", crypto="1", speedups="1")
    problems = check([*ROOTS, Requirement("redis>=5")], locked)
    assert problems == [
        "redis: pyproject.toml requires redis>=5, but runtime.lock does not lock it"
    ]


def test_a_raised_bound_makes_the_lock_stale_and_is_named() -> None:
    locked = pins(web="2.1", idna="3", crypto="1", speedups="1")
    problems = check([Requirement("web>=3"), Requirement("crypto[fast]")], locked)
    assert problems == ["web: runtime.lock pins 2.1, outside pyproject.toml's web>=3"]


def test_a_package_no_longer_needed_is_named() -> None:
    locked = pins(web="2.1", idna="3", crypto="1", speedups="1", legacy="1")
    assert check(ROOTS, locked) == [
        "legacy: runtime.lock pins 1, but nothing in pyproject.toml needs it"
    ]


def test_a_missing_transitive_dependency_names_who_needs_it() -> None:
    problems = check(ROOTS, pins(web="2.1", crypto="1", speedups="1"))
    assert problems == ["idna: web requires idna, but runtime.lock does not lock it"]


def test_a_locked_package_not_installed_is_named() -> None:
    problems = disagreements(
        ROOTS,
        pins(web="2.1", idna="3", crypto="1", speedups="1"),
        lambda name: None if name == "idna" else METADATA[name],
        "x.lock",
    )
    assert problems == ["idna: locked in x.lock at 3 but not installed"]


def test_unpinned_and_unhashed_lines_are_named(tmp_path: Path) -> None:
    lock = tmp_path / "bad.lock"
    lock.write_text("web>=2\nidna==3\n", encoding="utf-8")
    _, problems = read_lock(lock)
    assert problems == ["bad.lock: web is not pinned with ==", "bad.lock: idna has no --hash"]


def test_runtime_pins_that_differ_in_the_test_lock_are_named() -> None:
    runtime = pins(web="2.1", idna="3")
    test = {**pins(web="2.2"), "idna": Pin("idna", Version("3"), frozenset({"sha256:1"}))}
    assert same_pins(runtime, test, ("runtime.lock", "test.lock")) == [
        "idna: runtime.lock and test.lock list other hashes",
        "web: runtime.lock pins 2.1, test.lock 2.2",
    ]


# --- vulnerability floors ------------------------------------------------------------------

SECURITY_CRITICAL = {"cryptography", "joserfc", "authlib", "aiohttp", "pyjwt"}


def test_the_threat_model_names_a_floor_and_an_advisory_for_each_critical_package() -> None:
    table = floors(THREAT_MODEL.read_text(encoding="utf-8"))
    assert set(table) == SECURITY_CRITICAL
    assert all("CVE-" in advisory or "GHSA-" in advisory for _, advisory in table.values())


@pytest.mark.parametrize("lock", [RUNTIME_LOCK, TEST_LOCK], ids=["runtime", "test"])
def test_locks_are_at_or_above_the_floors(lock: Path) -> None:
    table = floors(THREAT_MODEL.read_text(encoding="utf-8"))
    locked = pins_of(lock)
    agree(below_floor(locked, table, lock.name))
    assert (SECURITY_CRITICAL - {"pyjwt"}) <= set(locked)


def test_pyproject_bounds_exclude_what_is_below_the_floors() -> None:
    table = floors(THREAT_MODEL.read_text(encoding="utf-8"))
    roots = project_requirements(extra="test")
    agree(bound_below_floor(roots, table))
    assert {canonicalize_name(r.name) for r in roots} >= SECURITY_CRITICAL


def test_a_floor_violation_names_the_package_and_the_advisory() -> None:
    table = {"cryptography": (Version("50.0.0"), "CVE-2026-69247")}
    assert below_floor(pins(cryptography="46.0.7"), table, "runtime.lock") == [
        "cryptography: runtime.lock pins 46.0.7, below the floor 50.0.0 (CVE-2026-69247)"
    ]
    assert bound_below_floor([Requirement("cryptography>=42")], table) == [
        "cryptography: pyproject.toml's cryptography>=42 admits versions below 50.0.0"
        " (CVE-2026-69247)"
    ]
    assert bound_below_floor([Requirement("cryptography>=50.1,!=51")], table) == []


# --- the SBOM --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sbom() -> dict[str, object]:
    document: dict[str, object] = json.loads(SBOM.read_text(encoding="utf-8"))
    return document


def test_sbom_is_valid_cyclonedx() -> None:
    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(SBOM.read_text(encoding="utf-8"))
    assert error is None, error


def test_sbom_lists_exactly_the_runtime_lock(sbom: dict[str, object]) -> None:
    assert sbom["bomFormat"] == "CycloneDX"
    components = sbom["components"]
    assert isinstance(components, list)
    listed = {canonicalize_name(c["name"]): Version(c["version"]) for c in components}
    locked = {name: pin.version for name, pin in pins_of(RUNTIME_LOCK).items()}
    assert listed == locked
    for component in components:
        name, version = canonicalize_name(component["name"]), component["version"]
        assert component["purl"] == f"pkg:pypi/{name}@{version}"


def test_sbom_describes_this_version_of_iap(sbom: dict[str, object]) -> None:
    metadata = sbom["metadata"]
    assert isinstance(metadata, dict)
    root = metadata["component"]
    assert (root["name"], root["type"]) == ("iap", "application")
    assert root["version"] == importlib.metadata.version("iap")
    # reproducible: no serial number or timestamp, so `make sbom` twice gives the same file
    assert "serialNumber" not in sbom
    assert "timestamp" not in metadata
    direct = {canonicalize_name(r.name) for r in project_requirements()}
    graph = {d["ref"]: d.get("dependsOn", []) for d in sbom["dependencies"]}  # type: ignore[attr-defined]
    assert {canonicalize_name(ref.split("==")[0]) for ref in graph[root["bom-ref"]]} == direct
