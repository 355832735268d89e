"""Dockerfile and .dockerignore (SPEC §10): multi-stage, non-root, no compilers at runtime.

No Docker engine is needed: the Dockerfile is read instruction by instruction.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

# Words that mean a toolchain or development headers went into an image.
TOOLCHAIN = re.compile(
    r"(?<![\w+.-])(gcc|g\+\+|cc|c\+\+|clang|make|cmake|build-essential|python3?(\.\d+)?-dev"
    r"|libc6?-dev|libssl-dev|libffi-dev|rustc|cargo|gfortran)(-\d+(\.\d+)*)?(?![\w+.-])"
)


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [args for key, args in self.instructions if key == keyword]


def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) pairs: comment lines dropped, continuation lines joined."""
    logical: list[str] = []
    pending = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        joined = (pending + line).strip()
        pending = ""
        if joined:
            logical.append(joined)
    assert not pending, "the Dockerfile ends inside a continuation"
    pairs = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        pairs.append((keyword.upper(), args.strip()))
    return pairs


def stages() -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the build stages, each FROM's image with ARGs substituted."""
    global_args: dict[str, str] = {}
    result: list[Stage] = []
    for keyword, args in instructions(DOCKERFILE.read_text(encoding="utf-8")):
        if keyword == "FROM":
            words = [w for w in args.split() if not w.startswith("--")]
            image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: global_args[m[1] or m[2]], words[0])
            name = words[2] if len(words) == 3 and words[1].lower() == "as" else None
            result.append(Stage(image=image, name=name))
        elif not result:
            assert keyword == "ARG", f"only ARG may come before the first FROM, not {keyword}"
            key, _, default = args.partition("=")
            global_args[key] = default
        else:
            result[-1].instructions.append((keyword, args))
    return global_args, result


def env_of(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in stage.args("ENV"):
        for word in shlex.split(args):
            key, _, value = word.partition("=")
            env[key] = value
    return env


@pytest.fixture(scope="module")
def final() -> Stage:
    return stages()[1][-1]


def test_multi_stage_on_python_311_slim() -> None:
    _, built = stages()
    assert len(built) >= 2
    assert built[0].name == "builder"
    # The venv copied across links to the base image's interpreter: same base both times.
    assert {stage.image for stage in built} == {"python:3.11-slim"}


def test_final_stage_runs_as_uid_10001(final: Stage) -> None:
    users = final.args("USER")
    assert users, "the final stage must switch to a non-root user"
    user = users[-1].split(":")[0]
    assert user == "10001"
    assert re.search(r"useradd\b.*--uid 10001\b", " ".join(final.args("RUN")))
    # Nothing runs as root after the switch.
    keywords = [keyword for keyword, _ in final.instructions]
    assert "RUN" not in keywords[keywords.index("USER") :]


def test_no_compilers_in_the_final_stage(final: Stage) -> None:
    for args in final.args("RUN"):
        assert not TOOLCHAIN.search(args), args
        assert "apt-get install" not in args, args
        assert "apk add" not in args, args


def test_final_stage_copies_only_the_virtualenv(final: Stage) -> None:
    copies = final.args("COPY")
    assert copies == ["--from=builder /opt/iap /opt/iap"]
    assert not final.args("ADD")


def test_builder_copies_only_what_dockerignore_allows() -> None:
    _, built = stages()
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert patterns[0] == "*", ".dockerignore is an allowlist"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    for args in built[0].args("COPY"):
        sources = [w for w in args.split() if not w.startswith("--")][:-1]
        for source in sources:
            assert source.rstrip("/") in allowed, source
    for secret in (".venv", ".git", "certs/dev", "**/*.pem", "**/*.key"):
        assert secret in patterns, secret


def test_runtime_contract(final: Stage) -> None:
    assert [json.loads(args) for args in final.args("ENTRYPOINT")] == [["iap"]]
    assert [json.loads(args) for args in final.args("CMD")] == [["run", "-c", "/etc/iap/iap.yaml"]]
    exposed = {port for args in final.args("EXPOSE") for port in args.split()}
    assert exposed == {"8443", "9090"}
    env = env_of(final)
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PATH"].startswith("/opt/iap/bin:")


def test_prometheus_multiproc_dir_is_never_set() -> None:
    # `iap run --workers N` makes its own directory; a fixed one would leak stale samples.
    global_args, built = stages()
    assert "PROMETHEUS_MULTIPROC_DIR" not in global_args
    for stage in built:
        assert "PROMETHEUS_MULTIPROC_DIR" not in env_of(stage)
        assert not any("PROMETHEUS_MULTIPROC_DIR" in a for a in stage.args("ARG"))
