"""iap.domain.paths: one normalisation, ambiguous targets refused (SPEC §2 step 1)."""

from __future__ import annotations

import string

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from iap.domain.paths import Target, normalise
from iap.errors import BadRequest

NORMALISED = [
    ("/", "/"),
    ("/a/b", "/a/b"),
    ("/a/../b", "/b"),
    ("/%2e%2e/b", "/b"),
    ("/%2E%2e/b", "/b"),
    ("/a/%2e/b", "/a/b"),
    ("/a/./b", "/a/b"),
    ("//a//b", "/a/b"),
    ("///", "/"),
    ("/a/b/..", "/a/"),
    ("/a/b/.", "/a/b/"),
    ("/a/b/", "/a/b/"),
    ("/..", "/"),
    ("/../../a", "/a"),
    ("/a/b/../../../c", "/c"),
    ("/a//../b", "/b"),
    ("/%7Euser", "/~user"),
    ("/%7euser", "/~user"),
    ("/%41%62c", "/Abc"),
    ("/a%3ab", "/a%3Ab"),
    ("/a%3Ab", "/a%3Ab"),
    ("/caf%c3%a9", "/caf%C3%A9"),
    ("/%252e%252e/b", "/%252e%252e/b"),  # decoded once only: %25 stays encoded
    ("/a/.hidden/..b", "/a/.hidden/..b"),
    ("/a;b/c", "/a;b/c"),
]


@pytest.mark.parametrize(("raw", "expected"), NORMALISED)
def test_normalise_path(raw: str, expected: str) -> None:
    assert normalise(raw) == Target(expected, "")


@pytest.mark.parametrize(
    ("raw", "path", "query"),
    [
        ("/a/../b?x=1&y=%2F..%zz", "/b", "x=1&y=%2F..%zz"),
        ("/a?", "/a", ""),
        ("/a?b?c", "/a", "b?c"),
        ("/%7e?%7e", "/~", "%7e"),
        ("/a?q=[1]|{x}", "/a", "q=[1]|{x}"),
    ],
)
def test_query_is_kept_raw(raw: str, path: str, query: str) -> None:
    assert normalise(raw) == Target(path, query)


def test_target_str_joins_query() -> None:
    assert str(normalise("/a/./b?x=1")) == "/a/b?x=1"
    assert str(normalise("/a/./b")) == "/a/b"


REFUSED = [
    "/a%2fb",
    "/a%2Fb",
    "/a%5cb",
    "/a%5Cb",
    "/a\\b",
    "/a/..;/b",
    "/a/.;/b",
    "/a/..;x=1/b",
    "/a/%2e%2e;/b",
    "/..;/admin",
    "/a%00b",
    "/a%0ab",
    "/a%7fb",
    "/%zz",
    "/%",
    "/a%2",
    "/%e9",
    "/%c0%ae",  # overlong UTF-8 for "."
    "/%ff%fe",
    "/é",
    "/a\u2215b",  # division slash
    "a/b",
    "",
    "*",
    "http://example.com/a",
    "?x=1",
    "/a\x00b",
    "/a\x01b",
    "/a\tb",
    "/a\rb",
    "/a\nb",
    "/a\x7fb",
    "/a b",
    "/a#frag",
    "/a?b c",
    "/a?b\x00",
    "/a?b\r\nX-Evil: 1",
    "/a?é",
]


@pytest.mark.parametrize("raw", REFUSED)
def test_ambiguous_targets_are_refused(raw: str) -> None:
    with pytest.raises(BadRequest) as info:
        normalise(raw)
    assert info.value.status == 400


def test_refusal_public_message_does_not_echo_the_target() -> None:
    with pytest.raises(BadRequest) as info:
        normalise("/s3cr3t%2fcanary")
    assert "s3cr3t" not in info.value.public


# ---------------------------------------------------------------- properties

_SAFE = string.ascii_letters + string.digits + "-_~"
_SEGMENT_TEXT = st.text(alphabet=_SAFE, min_size=1, max_size=6)
_SEGMENT = st.one_of(_SEGMENT_TEXT, st.sampled_from(["", ".", ".."]))


def _encode_some(text: str, mask: list[bool]) -> str:
    """Percent-encode the characters of ``text`` selected by ``mask`` (mixed hex case)."""
    out: list[str] = []
    for index, char in enumerate(text):
        if mask[index % len(mask)]:
            code = f"{ord(char):02x}"
            out.append("%" + (code.upper() if index % 2 else code))
        else:
            out.append(char)
    return "".join(out)


def _reference(decoded_path: str) -> str:
    """Merge slashes, then RFC 3986 §5.2.4 remove_dot_segments, literally, on strings."""
    buffer = decoded_path
    while "//" in buffer:
        buffer = buffer.replace("//", "/")
    output = ""
    while buffer:
        if buffer.startswith("../"):
            buffer = buffer[3:]
        elif buffer.startswith("./"):
            buffer = buffer[2:]
        elif buffer.startswith("/./") or buffer == "/.":
            buffer = "/" + buffer[3:]
        elif buffer.startswith("/../") or buffer == "/..":
            buffer = "/" + buffer[4:]
            output = output[: output.rfind("/")] if "/" in output else ""
        elif buffer in (".", ".."):
            buffer = ""
        else:
            cut = buffer.find("/", 1)
            if cut == -1:
                cut = len(buffer)
            output += buffer[:cut]
            buffer = buffer[cut:]
    return output or "/"


def test_reference_model_agrees_with_rfc_examples() -> None:
    # RFC 3986 §5.2.4 worked examples (absolute-path forms), so the model itself is checked.
    assert _reference("/a/b/c/./../../g") == "/a/g"
    assert _reference("/b/c/..") == "/b/"
    assert _reference("/b/c/.") == "/b/c/"
    assert _reference("/..") == "/"


@given(
    segments=st.lists(_SEGMENT, min_size=1, max_size=12),
    mask=st.lists(st.booleans(), min_size=1, max_size=5),
)
def test_matches_reference_model(segments: list[str], mask: list[bool]) -> None:
    decoded = "/" + "/".join(segments)
    raw = "/" + "/".join(_encode_some(segment, mask) for segment in segments)
    assert normalise(raw).path == _reference(decoded)


_PATHLIKE = st.text(
    alphabet=string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@/%",
    max_size=40,
).map(lambda text: "/" + text)


def _normal_or_none(raw: str) -> str | None:
    try:
        return normalise(raw).path
    except BadRequest:
        return None


@given(st.one_of(_PATHLIKE, st.lists(_SEGMENT, max_size=10).map(lambda s: "/" + "/".join(s))))
def test_idempotent_and_clean(raw: str) -> None:
    path = _normal_or_none(raw)
    assume(path is not None)
    assert path is not None
    assert normalise(path).path == path
    assert path.startswith("/")
    assert "//" not in path
    segments = path.split("/")
    assert "." not in segments
    assert ".." not in segments


@given(
    segments=st.lists(_SEGMENT, min_size=1, max_size=8),
    insert=st.sampled_from(["%2f", "%2F", "%5c", "%5C", "\\"]),
    where=st.integers(min_value=0),
    query=st.sampled_from(["", "?x=1"]),
)
def test_encoded_slash_or_backslash_anywhere_is_refused(
    segments: list[str], insert: str, where: int, query: str
) -> None:
    path = "/" + "/".join(segments)
    at = where % (len(path) + 1)
    with pytest.raises(BadRequest):
        normalise(path[:at] + insert + path[at:] + query)
