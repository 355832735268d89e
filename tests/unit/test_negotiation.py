"""iap.domain.negotiation: browsers get HTML, everything else JSON."""

from __future__ import annotations

import pytest

from iap.domain.negotiation import prefers_html

CHROME = (
    "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
    "image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7"
)
FIREFOX = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
SAFARI = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
OLD_FIREFOX = "text/html,application/xhtml+xml,application/xml;q=0.9,image/webp,*/*;q=0.8"
IE11 = "text/html, application/xhtml+xml, image/jxr, */*"


@pytest.mark.parametrize("accept", [CHROME, FIREFOX, SAFARI, OLD_FIREFOX, IE11, "text/html"])
def test_browsers_prefer_html(accept: str) -> None:
    assert prefers_html(accept) is True


@pytest.mark.parametrize(
    "accept",
    [
        None,
        "",
        "*/*",
        "application/json",
        "application/json, text/plain, */*",  # axios / fetch defaults
        "text/plain",
        "text/*",
        "image/*",
    ],
)
def test_non_browsers_do_not(accept: str | None) -> None:
    assert prefers_html(accept) is False


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("application/json, text/html;q=0.5", False),
        ("text/html;q=0.5, application/json", False),
        ("text/html;q=0.9, application/json;q=0.8", True),
        ("application/json;q=0.5, text/html", True),
        ("text/html;q=0", False),
        ("text/html;q=0, application/xhtml+xml", False),
        ("text/html ; q=0.7 , application/json ; q=0.6", True),
        ("text/html;Q=0.4, application/json;q=0.6", False),
        ("text/html;q=junk", False),
        ("text/html;level=1", True),
        ("application/xhtml+xml", True),
    ],
)
def test_q_values_are_respected(accept: str, expected: bool) -> None:
    assert prefers_html(accept) is expected


def test_wildcard_outranking_html_counts_for_json() -> None:
    # RFC 9110 §12.5.1: */* gives application/json q=1 here, text/html only 0.5.
    assert prefers_html("text/html;q=0.5, */*") is False


def test_media_types_are_case_insensitive() -> None:
    # RFC 9110 §8.3.1: type and subtype are case-insensitive.
    assert prefers_html("TEXT/HTML") is True
    assert prefers_html("Text/Html, application/json;q=0.5") is True
