"""The outage keys of the config: ``session.refresh_grace`` and ``oidc.metadata_max_stale``,
their defaults and bounds, each bad value named by its key path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from iap import config
from tests.unit.test_config import _no_secret_env, _with_oidc, problems_of

__all__ = ["_no_secret_env"]


def with_keys(tmp_path: Path, *, session: Any = None, oidc: Any = None) -> dict[str, Any]:
    document = _with_oidc(tmp_path)
    document["session"].update(session or {})
    document["oidc"].update(oidc or {})
    return document


def test_defaults(tmp_path: Path) -> None:
    parsed = config.parse(_with_oidc(tmp_path))
    assert parsed.session.refresh_grace == 300.0
    assert parsed.oidc is not None
    assert parsed.oidc.metadata_max_stale == 24 * 3600.0


@pytest.mark.parametrize(
    ("value", "seconds"), [("0s", 0.0), (0, 0.0), ("10m", 600.0), ("1h", 3600.0)]
)
def test_refresh_grace_accepts_zero_to_an_hour(tmp_path: Path, value: Any, seconds: float) -> None:
    parsed = config.parse(with_keys(tmp_path, session={"refresh_grace": value}))
    assert parsed.session.refresh_grace == seconds


@pytest.mark.parametrize("value", ["61m", "2h", -1, "soon", True])
def test_refresh_grace_out_of_bounds_is_named(tmp_path: Path, value: Any) -> None:
    [problem] = problems_of(with_keys(tmp_path, session={"refresh_grace": value}))
    assert problem.startswith("session.refresh_grace:")


@pytest.mark.parametrize(("value", "seconds"), [("1m", 60.0), ("6h", 21600.0), ("7d", 604800.0)])
def test_metadata_max_stale_accepts_a_minute_to_a_week(
    tmp_path: Path, value: str, seconds: float
) -> None:
    parsed = config.parse(with_keys(tmp_path, oidc={"metadata_max_stale": value}))
    assert parsed.oidc is not None
    assert parsed.oidc.metadata_max_stale == seconds


@pytest.mark.parametrize("value", ["59s", "8d", 0, "never"])
def test_metadata_max_stale_out_of_bounds_is_named(tmp_path: Path, value: Any) -> None:
    [problem] = problems_of(with_keys(tmp_path, oidc={"metadata_max_stale": value}))
    assert problem.startswith("oidc.metadata_max_stale:")
