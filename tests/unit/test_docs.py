"""docs/configuration.md matches the config model: every key it lists exists, and no key is
described as unused while the code reads it."""

from __future__ import annotations

import re
import typing
from pathlib import Path

from pydantic import BaseModel

from iap.config import Config

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "configuration.md"
KEY = re.compile(r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)*$")
UNUSED = re.compile(r"not (yet )?used|unused(?! for)|no effect|not acted on", re.IGNORECASE)


def _models(annotation: object) -> list[type[BaseModel]]:
    """The models an annotation can hold (through Optional, list, Annotated, unions)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in typing.get_args(annotation) for model in _models(arg)]


def model_keys(model: type[BaseModel] = Config, prefix: str = "") -> set[str]:
    """Every key path the model accepts: ``routes.upstream_tls.ca_file``, ``tokens.roles``..."""
    keys: set[str] = set()
    for name, field in model.model_fields.items():
        path = prefix + (field.alias or name)
        keys.add(path)
        for child in _models(field.annotation):
            keys |= model_keys(child, path + ".")
    return keys


def documented_rows(text: str) -> list[tuple[list[str], str]]:
    """The keys of each row of the page's key tables (first header cell ``key``), with the row."""
    rows: list[tuple[list[str], str]] = []
    in_key_table = False
    for line in text.splitlines():
        if not line.startswith("|"):
            in_key_table = False
            continue
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if cells[0] == "key":
            in_key_table = True
            continue
        if in_key_table and not set(cells[0]) <= set("-: "):
            names = re.findall(r"`([^`]+)`", cells[0])
            rows.append(([name for name in names if KEY.match(name)], line))
    return rows


def is_a_key(documented: str, keys: set[str]) -> bool:
    """Sections document keys relative to their place (``policy.public`` is a route's)."""
    return any(key == documented or key.endswith("." + documented) for key in keys)


def read_by_code(documented: str) -> bool:
    """Whether code outside the config package reads the key's last name as an attribute."""
    leaf = re.compile(rf"\.{re.escape(documented.rsplit('.', 1)[-1])}\b")
    return any(
        leaf.search(path.read_text(encoding="utf-8"))
        for path in (ROOT / "iap").rglob("*.py")
        if "config" not in path.relative_to(ROOT / "iap").parts[:1]
    )


def test_the_walk_finds_nested_keys() -> None:
    keys = model_keys()
    assert {"routes.upstream_tls.ca_file", "tokens.roles", "bearer.entra_audiences"} <= keys
    assert "routes.exchange.from" in keys  # an alias: the YAML name


def test_every_documented_key_exists_in_the_config_model() -> None:
    keys = model_keys()
    rows = documented_rows(PAGE.read_text(encoding="utf-8"))
    assert len(rows) > 100  # the page's tables were read
    unknown = [name for names, _ in rows for name in names if not is_a_key(name, keys)]
    assert unknown == []


def test_no_key_is_described_as_unused_while_the_code_reads_it() -> None:
    rows = documented_rows(PAGE.read_text(encoding="utf-8"))
    described_unused = [name for names, row in rows if UNUSED.search(row) for name in names]
    assert [name for name in described_unused if read_by_code(name)] == []


def test_the_checks_catch_a_bogus_key_and_a_false_not_used_yet() -> None:
    """The two checks above, run on a page with the mistakes they are there to catch."""
    page = (
        "| key | type | default | status |\n|---|---|---|---|\n"
        "| `bearer` | mapping | see below | validated, not used yet |\n"
        "| `limits.max_bogus` | integer | `1` | used |\n"
        "| `session.idle_timeout` | duration | `1h` | a session ends when unused for this long |\n"
    )
    rows = documented_rows(page)
    assert [name for names, _ in rows for name in names if not is_a_key(name, model_keys())] == [
        "limits.max_bogus"
    ]
    described_unused = [name for names, row in rows if UNUSED.search(row) for name in names]
    assert described_unused == ["bearer"]
    assert read_by_code("bearer")
