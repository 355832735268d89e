"""iap.domain.correlation: the edge mints ids unless a trusted proxy set a safe one."""

from __future__ import annotations

import os
import uuid

import pytest

from iap.domain.correlation import CorrelationIds

choose = CorrelationIds(os.urandom).choose


def _is_uuid4(value: str) -> bool:
    parsed = uuid.UUID(value)
    return parsed.version == 4 and str(parsed) == value


@pytest.mark.parametrize("incoming", ["abc-123", "a.b:c_d", "x" * 128, str(uuid.uuid4())])
def test_trusted_safe_id_is_kept(incoming: str) -> None:
    assert choose(incoming, trusted=True) == incoming


@pytest.mark.parametrize("incoming", ["abc-123", None, ""])
def test_untrusted_or_absent_gets_a_fresh_uuid4(incoming: str | None) -> None:
    chosen = choose(incoming, trusted=False)
    assert chosen != incoming
    assert _is_uuid4(chosen)


@pytest.mark.parametrize(
    "incoming",
    ["", "x" * 129, "a b", "a\r\nX-Evil: 1", "a\x00", "é", "a/b", '"quoted"', "a,b"],
)
def test_trusted_but_unsafe_id_is_replaced(incoming: str) -> None:
    chosen = choose(incoming, trusted=True)
    assert chosen != incoming
    assert _is_uuid4(chosen)


def test_generated_ids_differ() -> None:
    assert len({choose(None, trusted=True) for _ in range(50)}) == 50


def test_generated_ids_are_unique_version_4_uuids() -> None:
    import uuid

    ids = [choose(None, trusted=False) for _ in range(3 * 256 + 7)]  # across batch refills
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)
        assert str(parsed) == text


def test_fresh_ids_come_from_the_random_source_given() -> None:
    ids = CorrelationIds(lambda n: bytes(range(16)) * (n // 16))
    assert ids.choose(None, trusted=False) == "00010203-0405-4607-8809-0a0b0c0d0e0f"
