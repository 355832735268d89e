"""The hashed lock files in requirements/, read and checked against pyproject.toml offline.

A lock agrees with pyproject.toml when it holds exactly the closure of the project's
requirements, evaluated for the image's interpreter (``TARGET``, what ``make lock`` resolves
for), every version satisfying what asks for it, each entry pinned with ``==`` and hashed.
The dependency metadata of each locked package comes from the installed environment,
which ``make`` builds from the same locks; a package installed at another version than
the lock's is itself a disagreement.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version
from pip_requirements_parser import RequirementsFile

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = ROOT / "pyproject.toml"
RUNTIME_LOCK = ROOT / "requirements" / "runtime.lock"
TEST_LOCK = ROOT / "requirements" / "test.lock"
BUILD_LOCK = ROOT / "requirements" / "build.lock"

# The Makefile's `make lock` resolves for CPython 3.11 on glibc Linux (uv assumes 3.11.0).
TARGET = {
    "python_version": "3.11",
    "python_full_version": "3.11.0",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "os_name": "posix",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
}


@dataclass(frozen=True)
class Pin:
    name: str  # canonical (PEP 503)
    version: Version
    hashes: frozenset[str]


def read_lock(path: Path) -> tuple[dict[str, Pin], list[str]]:
    """The pins of a lock file by canonical name, and what is wrong with its lines."""
    parsed = RequirementsFile.from_file(str(path))
    problems = [
        f"{path.name}: cannot read line {line.line_number}" for line in parsed.invalid_lines
    ]
    pins: dict[str, Pin] = {}
    for entry in parsed.requirements:
        name = canonicalize_name(entry.name or "")
        version = entry.get_pinned_version
        if not entry.is_pinned or version is None:
            problems.append(f"{path.name}: {name} is not pinned with ==")
            continue
        if not entry.hash_options:
            problems.append(f"{path.name}: {name} has no --hash")
        pins[name] = Pin(name, Version(version), frozenset(entry.hash_options))
    return pins, problems


def project_requirements(
    pyproject: Path = PYPROJECT, extra: str | None = None
) -> list[Requirement]:
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    wanted = list(project["dependencies"])
    if extra is not None:
        wanted += project["optional-dependencies"][extra]
    return [Requirement(text) for text in wanted]


def build_requirements(pyproject: Path = PYPROJECT) -> list[Requirement]:
    document = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    return [Requirement(text) for text in document["build-system"]["requires"]]


def applies(requirement: Requirement, extras: Iterable[str]) -> bool:
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({**TARGET, "extra": e}) for e in ("", *extras))


Requires = Callable[[str], list[Requirement] | None]  # None: the package is not installed


def disagreements(
    roots: list[Requirement], pins: Mapping[str, Pin], requires: Requires, lock: str
) -> list[str]:
    """Every way `pins` differs from the closure of `roots`, each naming its package."""
    problems: list[str] = []
    needed: set[str] = set()
    pending = [(root, "pyproject.toml") for root in roots if applies(root, ())]
    seen: set[tuple[str, frozenset[str]]] = set()
    while pending:
        requirement, wanted_by = pending.pop()
        name = canonicalize_name(requirement.name)
        needed.add(name)
        pin = pins.get(name)
        if pin is None:
            problems.append(
                f"{name}: {wanted_by} requires {requirement}, but {lock} does not lock it"
            )
            continue
        if not requirement.specifier.contains(pin.version, prereleases=True):
            problems.append(
                f"{name}: {lock} pins {pin.version}, outside {wanted_by}'s {requirement}"
            )
        key = (name, frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        found = requires(name)
        if found is None:
            problems.append(f"{name}: locked in {lock} at {pin.version} but not installed")
            continue
        pending += [(dep, name) for dep in found if applies(dep, requirement.extras)]
    for name in sorted(set(pins) - needed):
        problems.append(
            f"{name}: {lock} pins {pins[name].version}, but nothing in pyproject.toml needs it"
        )
    return problems


def same_pins(
    smaller: Mapping[str, Pin], larger: Mapping[str, Pin], names: tuple[str, str]
) -> list[str]:
    """Each pin of `smaller` must appear in `larger` with the same version and hashes."""
    problems = []
    for name, pin in sorted(smaller.items()):
        other = larger.get(name)
        if other is None or other.version != pin.version:
            found = "nothing" if other is None else str(other.version)
            problems.append(f"{name}: {names[0]} pins {pin.version}, {names[1]} {found}")
        elif other.hashes != pin.hashes:
            problems.append(f"{name}: {names[0]} and {names[1]} list other hashes")
    return problems


THREAT_MODEL = ROOT / "THREAT_MODEL.md"
FLOORS_HEADING = "### Known-vulnerable dependencies"


def floors(text: str) -> dict[str, tuple[Version, str]]:
    """The floor table under FLOORS_HEADING: package -> (lowest version allowed, advisory)."""
    section = text.split(FLOORS_HEADING, 1)[1].split("\n#", 1)[0]
    rows = [line.strip().strip("|").split("|") for line in section.splitlines()]
    table = [[cell.strip().strip("`") for cell in row] for row in rows if len(row) >= 3]
    header, _rule, *body = table
    assert header[:3] == ["Package", "Floor", "Advisory"], header
    return {canonicalize_name(row[0]): (Version(row[1]), row[2]) for row in body}


def below_floor(
    pins: Mapping[str, Pin], floor: Mapping[str, tuple[Version, str]], lock: str
) -> list[str]:
    return [
        f"{name}: {lock} pins {pins[name].version}, below the floor {version} ({advisory})"
        for name, (version, advisory) in sorted(floor.items())
        if name in pins and pins[name].version < version
    ]


def bound_below_floor(
    roots: list[Requirement], floor: Mapping[str, tuple[Version, str]]
) -> list[str]:
    """A requirement must itself exclude what is below the floor, not only today's lock."""
    problems = []
    for requirement in roots:
        name = canonicalize_name(requirement.name)
        if name not in floor:
            continue
        version, advisory = floor[name]
        lowest = [
            Version(s.version) for s in requirement.specifier if s.operator in (">=", "==", "~=")
        ]
        if not lowest or max(lowest) < version:
            admits = f"pyproject.toml's {requirement} admits versions below {version}"
            problems.append(f"{name}: {admits} ({advisory})")
    return problems
