"""iap.domain.sealing: AEAD-sealed values, a rotatable keyring, chunked cookies (SPEC §7)."""

from __future__ import annotations

import base64
import os
import random
import string
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iap.domain import sealing
from iap.domain.sealing import (
    COOKIE_LIMIT,
    MAX_CHUNKS,
    MAX_COOKIE_AGE,
    Keyring,
    SealError,
    clear_cookie_header,
    join_cookie,
    key_id,
    set_cookie_header,
    split_cookie,
)


def seal(keyring: Keyring, plaintext: bytes, *, purpose: bytes, now: int) -> str:
    """The sealer with the operating system's CSPRNG, as iap's adapters call it."""
    return sealing.seal(keyring, plaintext, purpose=purpose, now=now, random=os.urandom)


KEY_A = bytes(range(32))
KEY_B = bytes(range(100, 132))
KEY_C = b"\xff" * 32
RING_A = Keyring([KEY_A])
NOW = 1_700_000_000
DAY = 86_400
NAME = "__Host-iap"
# RFC 6265 §4.1.1 cookie-octets; sealed tokens use the base64url subset.
COOKIE_OCTETS = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '",;\\')
BASE64URL = string.ascii_letters + string.digits + "-_"


def b64(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).rstrip(b"=").decode()


def decode(token: str) -> bytearray:
    return bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))


def encode(blob: bytes) -> str:
    return base64.urlsafe_b64encode(blob).rstrip(b"=").decode()


def open_a(token: str, *, ring: Keyring = RING_A, purpose: bytes = b"session") -> bytes:
    return sealing.open(ring, token, purpose=purpose, now=NOW, max_age=DAY)


# --- seal / open --------------------------------------------------------------------------


@given(st.binary(max_size=4096), st.binary(min_size=1, max_size=32))
def test_round_trip(plaintext: bytes, purpose: bytes) -> None:
    token = seal(RING_A, plaintext, purpose=purpose, now=NOW)
    assert sealing.open(RING_A, token, purpose=purpose, now=NOW, max_age=0) == plaintext


def test_format_is_unpadded_base64url_with_header() -> None:
    token = seal(RING_A, b"hello", purpose=b"session", now=NOW)
    assert set(token) <= set(BASE64URL)
    blob = decode(token)
    assert blob[0] == 1
    assert bytes(blob[1:5]) == key_id(KEY_A)
    assert int.from_bytes(blob[5:13], "big") == NOW
    assert len(blob) == 13 + 12 + len(b"hello") + 16
    assert b"hello" not in blob


def test_nonces_differ() -> None:
    tokens = {seal(RING_A, b"same", purpose=b"session", now=NOW) for _ in range(50)}
    assert len(tokens) == 50


@given(st.binary(max_size=64), st.data())
def test_any_flipped_bit_is_rejected(plaintext: bytes, data: st.DataObject) -> None:
    blob = decode(seal(RING_A, plaintext, purpose=b"session", now=NOW))
    index = data.draw(st.integers(0, len(blob) - 1))
    blob[index] ^= 1 << data.draw(st.integers(0, 7))
    with pytest.raises(SealError):
        open_a(encode(bytes(blob)))


@given(st.binary(max_size=64), st.data())
def test_any_replaced_byte_is_rejected(plaintext: bytes, data: st.DataObject) -> None:
    blob = decode(seal(RING_A, plaintext, purpose=b"session", now=NOW))
    index = data.draw(st.integers(0, len(blob) - 1))
    blob[index] ^= data.draw(st.integers(1, 255))
    with pytest.raises(SealError):
        open_a(encode(bytes(blob)))


@given(st.binary(max_size=64), st.data())
def test_truncated_or_extended_is_rejected(plaintext: bytes, data: st.DataObject) -> None:
    blob = decode(seal(RING_A, plaintext, purpose=b"session", now=NOW))
    cut = data.draw(st.integers(0, len(blob) - 1))
    with pytest.raises(SealError):
        open_a(encode(bytes(blob[:cut])))
    with pytest.raises(SealError):
        open_a(encode(bytes(blob) + data.draw(st.binary(min_size=1, max_size=16))))


def test_forged_issue_time_is_invalid_not_expired() -> None:
    blob = decode(seal(RING_A, b"x", purpose=b"session", now=NOW - 2 * DAY))
    blob[5:13] = NOW.to_bytes(8, "big")
    with pytest.raises(SealError) as caught:
        open_a(encode(bytes(blob)))
    assert caught.value.reason == "invalid"


@pytest.mark.parametrize(
    "token",
    [
        "",
        "A",
        "!!!!",
        "abc=",
        "é" * 60,
        "A" * 80 + " ",
        "A" * 80 + "+",
    ],
)
def test_malformed_tokens(token: str) -> None:
    with pytest.raises(SealError) as caught:
        open_a(token)
    assert caught.value.reason == "malformed"


def test_non_canonical_base64_is_rejected() -> None:
    token = seal(RING_A, b"xy", purpose=b"session", now=NOW)
    assert len(token) % 4 != 0  # there are spare bits in the last character
    last = BASE64URL.index(token[-1])
    twins = [c for c in BASE64URL if c != token[-1] and decode(token[:-1] + c) == decode(token)]
    assert twins, "expected a second spelling of the same bytes"
    assert BASE64URL.index(twins[0]) != last
    with pytest.raises(SealError) as caught:
        open_a(token[:-1] + twins[0])
    assert caught.value.reason == "malformed"


def test_wrong_purpose_is_rejected() -> None:
    token = seal(RING_A, b"state", purpose=b"login-state", now=NOW)
    assert open_a(token, purpose=b"login-state") == b"state"
    with pytest.raises(SealError) as caught:
        open_a(token, purpose=b"session")
    assert caught.value.reason == "invalid"
    with pytest.raises(SealError):
        open_a(token, purpose=b"login-stat")


def test_unknown_version() -> None:
    blob = decode(seal(RING_A, b"x", purpose=b"session", now=NOW))
    blob[0] = 2
    with pytest.raises(SealError) as caught:
        open_a(encode(bytes(blob)))
    assert caught.value.reason == "version"


def test_expiry_and_skew() -> None:
    def open_at(now: int, issued: int) -> bytes:
        token = seal(RING_A, b"x", purpose=b"session", now=issued)
        return sealing.open(RING_A, token, purpose=b"session", now=now, max_age=100, skew=10)

    assert open_at(NOW, NOW - 100) == b"x"
    assert open_at(NOW, NOW + 10) == b"x"
    with pytest.raises(SealError) as caught:
        open_at(NOW, NOW - 101)
    assert caught.value.reason == "expired"
    with pytest.raises(SealError) as caught:
        open_at(NOW, NOW + 11)
    assert caught.value.reason == "future"


@given(st.integers(0, 2**40), st.integers(0, 2**40), st.integers(0, 2**20))
def test_age_property(issued: int, now: int, max_age: int) -> None:
    token = seal(RING_A, b"x", purpose=b"p", now=issued)
    fresh = issued - sealing.CLOCK_SKEW <= now <= issued + max_age
    if fresh:
        assert sealing.open(RING_A, token, purpose=b"p", now=now, max_age=max_age) == b"x"
    else:
        with pytest.raises(SealError) as caught:
            sealing.open(RING_A, token, purpose=b"p", now=now, max_age=max_age)
        assert caught.value.reason in ("expired", "future")


def test_errors_are_generic() -> None:
    token = seal(RING_A, b"x", purpose=b"session", now=NOW)
    reasons: set[str] = set()
    messages: set[str] = set()
    attempts: list[Callable[[], bytes]] = [
        lambda: open_a("!"),
        lambda: open_a(token, ring=Keyring([KEY_B])),
        lambda: open_a(token, purpose=b"other"),
        lambda: sealing.open(RING_A, token, purpose=b"session", now=NOW + 2 * DAY, max_age=DAY),
        lambda: sealing.open(RING_A, token, purpose=b"session", now=NOW - DAY, max_age=DAY),
    ]
    for attempt in attempts:
        with pytest.raises(SealError) as caught:
            attempt()
        reasons.add(caught.value.reason)
        messages.add(str(caught.value))
        assert isinstance(caught.value, ValueError)
    assert reasons == {"malformed", "unknown_key", "invalid", "expired", "future"}
    assert messages == {"sealed value rejected"}


def test_seal_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="purpose"):
        seal(RING_A, b"x", purpose=b"", now=NOW)
    with pytest.raises(ValueError, match="now"):
        seal(RING_A, b"x", purpose=b"p", now=-1)
    with pytest.raises(ValueError, match="now"):
        seal(RING_A, b"x", purpose=b"p", now=2**64)
    token = seal(RING_A, b"x", purpose=b"p", now=NOW)
    with pytest.raises(ValueError, match="purpose"):
        sealing.open(RING_A, token, purpose=b"", now=NOW, max_age=1)
    with pytest.raises(ValueError, match="negative"):
        sealing.open(RING_A, token, purpose=b"p", now=NOW, max_age=-1)


# --- rotation -----------------------------------------------------------------------------


def test_rotation() -> None:
    old = seal(Keyring([KEY_A]), b"old", purpose=b"session", now=NOW)
    assert open_a(old, ring=Keyring([KEY_B, KEY_A])) == b"old"

    new = seal(Keyring([KEY_B, KEY_A]), b"new", purpose=b"session", now=NOW)
    assert decode(new)[1:5] == key_id(KEY_B)
    assert open_a(new, ring=Keyring([KEY_B])) == b"new"
    assert open_a(new, ring=Keyring([KEY_C, KEY_B])) == b"new"
    with pytest.raises(SealError) as caught:
        open_a(new, ring=Keyring([KEY_A]))
    assert caught.value.reason == "unknown_key"


def test_key_id_in_header_is_authenticated() -> None:
    # Relabel a token sealed by A with B's id: B is tried and the tag fails.
    ring = Keyring([KEY_A, KEY_B])
    blob = decode(seal(ring, b"x", purpose=b"session", now=NOW))
    blob[1:5] = key_id(KEY_B)
    with pytest.raises(SealError) as caught:
        open_a(encode(bytes(blob)), ring=ring)
    assert caught.value.reason == "invalid"


def test_keyring_construction() -> None:
    ring = Keyring([KEY_B, KEY_A])
    assert ring.sealing_key_id == key_id(KEY_B)
    assert ring.key_ids == (key_id(KEY_B), key_id(KEY_A))
    assert KEY_A.hex() not in repr(ring)
    assert key_id(KEY_A).hex() in repr(ring)
    assert key_id(KEY_A) not in KEY_A
    with pytest.raises(ValueError, match="at least one"):
        Keyring([])
    with pytest.raises(ValueError, match="key 2 is not 32 bytes"):
        Keyring([KEY_A, b"short"])
    with pytest.raises(ValueError, match="key 2 repeats"):
        Keyring([KEY_A, KEY_A])


# --- keys file ----------------------------------------------------------------------------


def test_parse() -> None:
    text = f"# current\n{b64(KEY_B)}\n\n  # previous\n  {b64(KEY_A)}=  \r\n"
    ring = Keyring.parse(text)
    assert ring.key_ids == (key_id(KEY_B), key_id(KEY_A))
    token = seal(ring, b"x", purpose=b"session", now=NOW)
    assert open_a(token, ring=Keyring([KEY_B])) == b"x"


SECRET = b64(KEY_C)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (f"{b64(KEY_A)}\n{SECRET[:-1]}\n", 2),  # 31 bytes' worth
        (f"# c\n\n{SECRET}AA\n", 3),  # too long
        (f"{SECRET.replace('_', '/').replace('-', '+')}+\n", 1),  # standard alphabet
        (f"\n\n\n{SECRET} # comment\n", 4),  # no trailing comments
        (f"{b64(KEY_A)}\n{SECRET[:20]}é{SECRET[21:]}", 2),
        (f"{b64(KEY_A)}\n{SECRET}==\n", 2),
        (f"{b64(KEY_A)}\n# x\n{b64(KEY_A)}\n", 3),  # duplicate
    ],
)
def test_parse_errors_name_the_line_not_the_key(text: str, line: int) -> None:
    with pytest.raises(ValueError, match=f"^keys_file line {line}: ") as caught:
        Keyring.parse(text)
    message = str(caught.value)
    for secret in (SECRET, b64(KEY_A), SECRET[:8], SECRET[-8:], b64(KEY_A)[:8]):
        assert secret not in message
    assert caught.value.__cause__ is None


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_parse_empty(text: str) -> None:
    with pytest.raises(ValueError, match="no keys"):
        Keyring.parse(text)


@given(st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=5, unique=True))
def test_parse_round_trip(keys: list[bytes]) -> None:
    ring = Keyring.parse("\n".join(b64(key) for key in keys))
    assert ring.key_ids == tuple(key_id(key) for key in keys)


# --- cookies ------------------------------------------------------------------------------


def random_value(size: int, seed: int) -> str:
    return "".join(random.Random(seed).choices(BASE64URL, k=size))


@given(st.integers(0, 20_000), st.integers(0, 2**32))
def test_chunks_round_trip_and_fit(size: int, seed: int) -> None:
    value = random_value(size, seed)
    chunks = split_cookie(NAME, value)
    assert join_cookie(NAME, dict(chunks)) == value
    assert [name for name, _ in chunks] == [NAME] + [f"{NAME}-{i}" for i in range(1, len(chunks))]
    for name, chunk in chunks:
        assert len(name) + 1 + len(chunk) <= 3800
        for max_age in (0, 28_800, MAX_COOKIE_AGE):
            assert len(set_cookie_header(name, chunk, max_age).encode()) < COOKIE_LIMIT
    if size + len(NAME) + 1 <= 3800:
        assert chunks == [(NAME, value)]


@given(
    st.text(alphabet=COOKIE_OCTETS, max_size=600).filter(lambda v: not v.startswith("~")),
    st.integers(40, 200),
    st.sampled_from(["s", NAME, "a-much-longer-cookie-name"]),
)
def test_small_limits_round_trip(value: str, limit: int, name: str) -> None:
    if len(value) > (limit - len(name) - 4) * MAX_CHUNKS:
        return  # may need more chunks than allowed; test_split_refuses covers that
    chunks = split_cookie(name, value, limit=limit)
    assert 1 <= len(chunks) <= MAX_CHUNKS
    assert all(len(n) + 1 + len(c) <= limit for n, c in chunks)
    assert all(c for _, c in chunks) or value == ""
    assert join_cookie(name, dict(chunks)) == value


def test_boundary_between_one_and_two_chunks() -> None:
    fits = "A" * (3800 - len(NAME) - 1)
    assert split_cookie(NAME, fits) == [(NAME, fits)]
    chunks = split_cookie(NAME, fits + "B")
    assert len(chunks) == 2
    assert chunks[0][1].startswith("~2~")
    assert join_cookie(NAME, dict(chunks)) == fits + "B"


@given(st.integers(4_000, 20_000), st.integers(0, 2**32), st.data())
def test_missing_chunk_gives_none(size: int, seed: int, data: st.DataObject) -> None:
    chunks = split_cookie(NAME, random_value(size, seed))
    assert len(chunks) >= 2
    cookies = dict(chunks)
    missing = data.draw(st.sampled_from([name for name, _ in chunks]))
    if missing == NAME or data.draw(st.booleans()):
        del cookies[missing]
    else:
        cookies[missing] = ""
    assert join_cookie(NAME, cookies) is None


def test_sealed_session_through_cookies() -> None:
    plaintext = bytes(range(256)) * 40
    token = seal(RING_A, plaintext, purpose=b"session", now=NOW)
    chunks = split_cookie(NAME, token)
    assert len(chunks) == 4
    cookies = dict(chunks)
    cookies["other"] = "x"
    joined = join_cookie(NAME, cookies)
    assert joined is not None
    assert open_a(joined) == plaintext
    # Chunks from two different sessions do not open as either.
    other = dict(split_cookie(NAME, seal(RING_A, plaintext, purpose=b"session", now=NOW)))
    cookies[f"{NAME}-2"] = other[f"{NAME}-2"]
    mixed = join_cookie(NAME, cookies)
    assert mixed is not None
    with pytest.raises(SealError):
        open_a(mixed)


@pytest.mark.parametrize(
    "first",
    ["~", "~2", "~~abc", "~1~abc", "~02~abc", "~x~abc", "~-2~abc", f"~{MAX_CHUNKS + 1}~abc"],
)
def test_malformed_marker_gives_none(first: str) -> None:
    cookies = {NAME: first} | {f"{NAME}-{i}": "abc" for i in range(1, MAX_CHUNKS + 2)}
    assert join_cookie(NAME, cookies) is None


def test_join_absent_and_extra_chunks() -> None:
    assert join_cookie(NAME, {}) is None
    assert join_cookie(NAME, {NAME: ""}) == ""
    assert join_cookie(NAME, {f"{NAME}-1": "abc"}) is None
    assert join_cookie(NAME, {NAME: "abc", f"{NAME}-1": "stale"}) == "abc"
    assert join_cookie(NAME, {NAME: "~2~ab", f"{NAME}-1": "c", f"{NAME}-2": "stale"}) == "abc"


def test_split_refuses() -> None:
    with pytest.raises(ValueError, match="more than"):
        split_cookie(NAME, "A" * 3800 * MAX_CHUNKS)
    with pytest.raises(ValueError, match="'~'"):
        split_cookie(NAME, "~2~abc")
    for bad in ("a;b", "a b", 'a"b', "a,b", "a\\b", "a\r\nSet-Cookie: x=y", "é"):
        with pytest.raises(ValueError, match="cookie-octets"):
            split_cookie(NAME, bad)
    for bad_name in ("", "a b", "a=b", "a;b", "é"):
        with pytest.raises(ValueError, match="token"):
            split_cookie(bad_name, "v")
    with pytest.raises(ValueError, match="attributes"):
        split_cookie(NAME, "v", limit=4096)
    with pytest.raises(ValueError, match="attributes"):
        split_cookie(NAME, "v", limit=0)
    with pytest.raises(ValueError, match="cookie name"):
        split_cookie(NAME, "A" * 100, limit=len(NAME) + 3)


def test_set_cookie_header() -> None:
    assert set_cookie_header(NAME, "abc", 28_800) == (
        "__Host-iap=abc; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=28800"
    )
    assert clear_cookie_header(NAME) == (
        "__Host-iap=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0"
    )
    header = set_cookie_header(f"{NAME}-3", "x", 1)
    assert "Domain" not in header
    assert "; Path=/;" in header
    assert "; Secure;" in header


def test_set_cookie_header_refuses() -> None:
    with pytest.raises(ValueError, match="cookie-octets"):
        set_cookie_header(NAME, "a\r\nX: y", 1)
    with pytest.raises(ValueError, match="token"):
        set_cookie_header("a;b", "v", 1)
    with pytest.raises(ValueError, match="400 days"):
        set_cookie_header(NAME, "v", -1)
    with pytest.raises(ValueError, match="400 days"):
        set_cookie_header(NAME, "v", MAX_COOKIE_AGE + 1)
    with pytest.raises(ValueError, match="split"):
        set_cookie_header(NAME, "A" * 4096, 1)


def test_the_nonce_comes_from_the_random_source_it_is_given() -> None:
    blob = decode(sealing.seal(RING_A, b"x", purpose=b"p", now=NOW, random=lambda n: b"\x07" * n))
    assert blob[13:25] == b"\x07" * 12  # version 1, kid 4, issued 8, then the nonce
    with pytest.raises(ValueError, match="wrong number of bytes"):
        sealing.seal(RING_A, b"x", purpose=b"p", now=NOW, random=lambda n: b"\x07" * (n - 1))
