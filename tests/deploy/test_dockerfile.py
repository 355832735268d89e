"""Dockerfile and .dockerignore (SPEC §10): multi-stage, non-root, no compilers at runtime,
every package from the hashed locks (docs/operations.md).

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


def stages(text: str | None = None) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the build stages, each FROM's image with ARGs substituted."""
    global_args: dict[str, str] = {}
    result: list[Stage] = []
    text = DOCKERFILE.read_text(encoding="utf-8") if text is None else text
    for keyword, args in instructions(text):
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


# --- installs only from the hashed locks ------------------------------------------------------

PIP = re.compile(r"(^|/)pip3?$")
LOCK = re.compile(r"^requirements/\w+\.lock$")
OWN_WHEEL = "/wheels/iap-*.whl"
TAKES_VALUE = ("--python", "--wheel-dir", "-w", "--only-binary", "--root-user-action")
# Options that would let pip look elsewhere than the locks, or skip their hashes.
FORBIDDEN = (
    "--index-url",
    "-i",
    "--extra-index-url",
    "--find-links",
    "-f",
    "-e",
    "--editable",
    "--pre",
    "--upgrade",
    "-U",
    "--no-binary",
    "-c",
    "--constraint",
)


def pip_commands(stage: Stage) -> list[list[str]]:
    """Every pip invocation in a stage's RUN instructions (`python -m pip` too), as words with
    the verb first and pip's general options (`--python PATH`) after it."""
    commands = []
    for args in stage.args("RUN"):
        for part in re.split(r"&&|\|\||;", args):
            words = shlex.split(part)
            if words[:1] and PIP.search(words[0]):
                words = words[1:]
            elif words[1:3] == ["-m", "pip"]:
                words = words[3:]
            else:
                continue
            _, _, positional = split_options(words)
            if not positional:
                commands.append(["", *words])
                continue
            at = words.index(positional[0])
            commands.append([words[at], *words[:at], *words[at + 1 :]])
    return commands


def unlocked_installs(text: str) -> list[str]:
    """What in a Dockerfile installs a package that is not pinned and hashed by a lock."""
    problems = []
    for stage in stages(text)[1]:
        copied = {w for args in stage.args("COPY") for w in args.split() if LOCK.match(w)}
        for words in pip_commands(stage):
            verb, options = words[0], words[1:]
            given = " ".join(words)
            if verb in ("download", "index") or any(o.split("=")[0] in FORBIDDEN for o in options):
                problems.append(f"pip {given}: may fetch what no lock pins")
            elif verb == "wheel" and not {"--no-deps", "--no-build-isolation"} <= set(options):
                problems.append(f"pip {given}: builds with unlocked dependencies")
            elif verb == "install":
                problems += install_problems(options, copied, given)
    return problems


def split_options(options: list[str]) -> tuple[set[str], list[str], list[str]]:
    """(flags, requirement files, positional arguments) of a pip command line."""
    flags: set[str] = set()
    files: list[str] = []
    positional: list[str] = []
    words = iter(options)
    for word in words:
        if word in ("-r", "--requirement"):
            files.append(next(words))
        elif word in TAKES_VALUE:
            next(words)
        elif word.startswith("-"):
            flags.add(word.split("=")[0])
        else:
            positional.append(word)
    return flags, files, positional


def install_problems(options: list[str], copied: set[str], given: str) -> list[str]:
    flags, files, positional = split_options(options)
    if "--no-deps" not in flags:
        return [f"pip {given}: resolves dependencies"]
    if files:
        hashed = "--require-hashes" in flags and not positional and set(files) <= copied
        return [] if hashed else [f"pip {given}: not only hashed locks the stage copies"]
    return [] if positional == [OWN_WHEEL] else [f"pip {given}: installs without a lock"]


def test_every_install_comes_from_a_hashed_lock() -> None:
    assert unlocked_installs(DOCKERFILE.read_text(encoding="utf-8")) == []
    builder = stages()[1][0]
    installs = [" ".join(words) for words in pip_commands(builder) if words[0] == "install"]
    assert any("/opt/iap/bin/python" in c and "requirements/runtime.lock" in c for c in installs)
    assert any(c.endswith(OWN_WHEEL) for c in installs), "iap's wheel goes in with --no-deps"
    for stage in stages()[1][1:]:
        assert pip_commands(stage) == [], "only the builder runs pip"


def test_the_image_carries_the_sbom_of_the_runtime_lock() -> None:
    builder = stages()[1][0]
    assert any("requirements/runtime.cdx.json" in args for args in builder.args("COPY"))
    runs = " ".join(builder.args("RUN"))
    assert "cp requirements/runtime.cdx.json /opt/iap/sbom.cdx.json" in runs


@pytest.mark.parametrize(
    "run",
    [
        "pip install aiohttp",
        "/opt/iap/bin/pip install --no-deps aiohttp==3.14.5",
        "pip install --no-deps -r requirements/runtime.lock",
        "pip install --require-hashes -r requirements/runtime.lock",
        "pip install --require-hashes --no-deps -r requirements/other.lock",
        "pip install --require-hashes --no-deps -i https://x -r requirements/runtime.lock",
        "python -m pip install /wheels/iap-*.whl",
        "pip wheel --wheel-dir /wheels .",
        "pip download aiohttp",
    ],
)
def test_an_unlocked_install_is_found(run: str) -> None:
    copy = "COPY requirements/runtime.lock ./requirements/"
    text = f"FROM python:3.11-slim AS builder\n{copy}\nRUN {run}\n"
    assert unlocked_installs(text) != [], run
