"""iap.errors: statuses, and public messages that never carry the detail."""

from __future__ import annotations

import pytest

from iap import errors

EXPECTED = [
    (errors.RequestError, 500),
    (errors.BadRequest, 400),
    (errors.NotFound, 404),
    (errors.PayloadTooLarge, 413),
    (errors.UriTooLong, 414),
    (errors.HeadersTooLarge, 431),
    (errors.BadGateway, 502),
    (errors.CircuitOpen, 503),
    (errors.Overloaded, 503),
    (errors.UpstreamBusy, 503),
    (errors.GatewayTimeout, 504),
]
CANARY = "s3cr3t-canary-value at /internal/path, aiohttp 3.10 traceback"


@pytest.mark.parametrize(("cls", "status"), EXPECTED)
def test_status(cls: type[errors.RequestError], status: int) -> None:
    assert cls.status == status
    assert cls("x").status == status


@pytest.mark.parametrize("cls", [cls for cls, _ in EXPECTED])
def test_public_message_never_contains_the_detail(cls: type[errors.RequestError]) -> None:
    error = cls(CANARY)
    assert error.detail == CANARY
    assert error.public
    assert "s3cr3t" not in error.public
    assert "aiohttp" not in error.public


@pytest.mark.parametrize("cls", [cls for cls, _ in EXPECTED])
def test_default_detail_is_the_reason(cls: type[errors.RequestError]) -> None:
    error = cls()
    assert error.detail == cls.reason
    assert str(error) == cls.reason


@pytest.mark.parametrize("cls", [errors.Overloaded, errors.UpstreamBusy])
def test_a_busy_refusal_says_when_to_retry(cls: type[errors.RequestError]) -> None:
    assert cls("detail").headers == (("Retry-After", "1"),)


def test_public_override_is_per_instance() -> None:
    error = errors.BadRequest("detail", public="Path not allowed.")
    assert error.public == "Path not allowed."
    assert errors.BadRequest("detail").public == "Bad request."


def test_tree() -> None:
    for cls, _ in EXPECTED:
        assert issubclass(cls, errors.RequestError)
        assert issubclass(cls, errors.IapError)
    for cls in (errors.BadGateway, errors.CircuitOpen, errors.UpstreamBusy, errors.GatewayTimeout):
        assert issubclass(cls, errors.UpstreamError)
    assert not issubclass(errors.ConfigError, errors.RequestError)
    assert issubclass(errors.ConfigError, errors.IapError)


def test_config_error_keeps_every_problem_and_message_counts_them() -> None:
    error = errors.ConfigError(["a: bad", "b: bad"])
    assert error.problems == ["a: bad", "b: bad"]
    assert "2" in str(error)
    assert "a: bad" not in str(error)
