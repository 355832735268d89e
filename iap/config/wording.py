"""The problems of ``iap check`` in iap's own words, not pydantic's or PyYAML's.

Invariants:
- A problem names what the key expects and, for a wrong type, the YAML kind that was
  given ("got a string"): never the value itself, a Python type name, or library phrasing
  ("frozenset", "Input should be", "dictionary or instance of").
- A pydantic error type without a translation here keeps a neutral message, so a new
  library version cannot put its words in front of an operator.
"""

from __future__ import annotations

import re
from typing import Any

_EXPECTED = {
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "int_type": "expected a whole number",
    "int_parsing": "expected a whole number",
    "int_from_float": "expected a whole number",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "string_type": "expected text",
    "list_type": "expected a list",
    "set_type": "expected a list",
    "frozen_set_type": "expected a list",
    "tuple_type": "expected a list",
    "dict_type": "expected a mapping of keys",
    "model_type": "expected a mapping of keys",
    "model_attributes_type": "expected a mapping of keys",
    "literal_error": "expected {expected}",
    "enum": "expected {expected}",
    "missing": "required",
    "extra_forbidden": "unknown key",
    "path_not_file": "no such file",
    "path_not_directory": "no such directory",
    "greater_than": "must be greater than {gt}",
    "greater_than_equal": "must be at least {ge}",
    "less_than": "must be less than {lt}",
    "less_than_equal": "must be at most {le}",
    "too_short": "needs at least {min_length} entries",
    "too_long": "takes at most {max_length} entries",
    "string_too_short": "must not be empty",
    "union_tag_invalid": "expected a list of rules or a mapping of conditions",
    "union_tag_not_found": "expected a list of rules or a mapping of conditions",
}
_PATTERNS = {r"^[A-Za-z0-9_.-]+$": "use only letters, digits and _ . -"}
"""What each ``pattern=`` of the model asks for, in words."""
_TYPE_ERRORS = {key for key in _EXPECTED if key.endswith(("_type", "_parsing", "_from_float"))}


def _kind(value: object) -> str:
    """The YAML kind of ``value``, in words; never the value."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, float) and not value.is_integer():
        return "a fractional number"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return "a value of another kind"


def message(item: Any) -> str:
    """One pydantic error item (``errors(include_input=True)``) as iap says it."""
    kind = item["type"]
    if kind == "value_error":  # raised by iap's own validators: already in iap's words
        return str(item["msg"]).removeprefix("Value error, ")
    if kind == "too_short" and item.get("ctx", {}).get("min_length") == 1:
        return "must not be empty"
    if kind == "string_pattern_mismatch":
        return _PATTERNS.get(item.get("ctx", {}).get("pattern"), "not in the expected form")
    template = _EXPECTED.get(kind)
    if template is None:
        return "not a valid value here"
    context = {name: _quoted(value) for name, value in item.get("ctx", {}).items()}
    try:
        text = template.format(**context)
    except KeyError:  # a placeholder pydantic gave no value for
        return "not a valid value here"
    if kind in _TYPE_ERRORS and "input" in item:
        text += f", got {_kind(item['input'])}"
    return text


def _quoted(value: object) -> str:
    """pydantic's ``'a' or 'b'`` lists as iap writes choices: ``a or b``; YAML's booleans."""
    return str(value).replace("'", "").replace("True", "true").replace("False", "false")


_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")


def yaml_problem(problem: str | None) -> str:
    """PyYAML's ``problem`` with anything it quotes from the file left out (it could be part
    of a secret); a tab, the usual cause, and an unknown tag in iap's words."""
    if not problem:
        return "not a YAML document"
    if "'\\t'" in problem:
        return "found a tab; indent YAML with spaces"
    if problem.startswith("could not determine a constructor for the tag"):
        return "found a tag (!name) that iap does not read"
    return _QUOTED.sub(lambda match: match[0] if len(match[0]) <= 3 else "a token", problem)
