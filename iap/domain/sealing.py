"""Sealed values and the cookies that carry them (SPEC §5 ``session.keys_file``, §7 Sessions).

A sealed token is base64url (no padding) of::

    version (1) ‖ key id (4) ‖ issued (8, big-endian seconds) ‖ nonce (12) ‖ AES-256-GCM output

Invariants:
- Only AES-256-GCM from ``cryptography`` seals; nothing here is hand-rolled. The associated
  data is the 13-byte header (version, key id, issue time) followed by ``purpose``, so none
  of them can be changed without the tag failing, and a value sealed for one purpose (a
  session) never opens as another (a login state).
- The first key of a :class:`Keyring` seals, every key opens; the key id in the header picks
  the one key to try, and an unknown id is refused without trying the others.
- :func:`open` raises one :class:`SealError` with one generic message whatever went wrong;
  the short ``reason`` is for the log only. The tag is checked before the issue time is
  believed, so a forged time reads as ``invalid``, never as ``expired``.
- Errors about the keys file name the line, never the key material; a keyring's ``repr``
  shows key ids only.
- Nonces are 96 random bits from the OS CSPRNG (the one impurity here), so a key must not
  seal anywhere near 2**32 values (NIST SP 800-38D §8.3); rotate keys long before that.
- Cookies leave here only with ``Path=/; Secure; HttpOnly; SameSite=Lax`` and no Domain, as
  the ``__Host-`` prefix requires (RFC 6265bis §4.1.3.2), and each Set-Cookie value stays
  under 4096 bytes (RFC 6265 §6.1). A value too large for one cookie is split into chunks
  ``name``, ``name-1``, ...; the first chunk starts with ``~N~`` giving the count, so a
  missing chunk is noticed. Chunking gives no integrity: the seal does.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VERSION = 1
KEY_BYTES = 32
CLOCK_SKEW = 60
"""Seconds a token's issue time may lie ahead of ``now`` (clocks of replicas differ)."""

_KEY_ID_BYTES = 4
_NONCE_BYTES = 12
_TAG_BYTES = 16
_HEADER_BYTES = 1 + _KEY_ID_BYTES + 8
_MIN_TOKEN_BYTES = _HEADER_BYTES + _NONCE_BYTES + _TAG_BYTES
_KEY_LINE = re.compile(r"[A-Za-z0-9_-]{43}=?")
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")


class SealError(ValueError):
    """A sealed token that must not be trusted. The message never says why; ``reason`` does.

    ``reason`` is one of ``malformed``, ``version``, ``unknown_key``, ``invalid`` (tampered,
    wrong purpose or wrong key), ``expired`` and ``future``; it is for logs, not for clients.
    """

    def __init__(self, reason: str) -> None:
        super().__init__("sealed value rejected")
        self.reason = reason


class Keyring:
    """AEAD keys in order: the first seals, all open (SPEC §5 ``session.keys_file``)."""

    __slots__ = ("_ciphers", "_sealing")

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise ValueError("a keyring needs at least one key")
        ciphers: dict[bytes, AESGCM] = {}
        for index, key in enumerate(keys, start=1):
            if len(key) != KEY_BYTES:
                raise ValueError(f"key {index} is not {KEY_BYTES} bytes")
            kid = key_id(key)
            if kid in ciphers:
                raise ValueError(f"key {index} repeats an earlier key (or its key id)")
            ciphers[kid] = AESGCM(bytes(key))
        self._ciphers = ciphers
        self._sealing = next(iter(ciphers.items()))

    @classmethod
    def parse(cls, text: str) -> Keyring:
        """Read the keys file format: one base64url 32-byte key per line, ``#`` comments.

        Raises ValueError naming the offending line; the message never quotes the line.
        """
        keys: list[bytes] = []
        for number, line in _key_lines(text):
            if not _KEY_LINE.fullmatch(line):
                raise ValueError(
                    f"keys_file line {number}: expected a base64url-encoded {KEY_BYTES}-byte key"
                )
            key = base64.urlsafe_b64decode(line.rstrip("=") + "=")
            if key_id(key) in (key_id(k) for k in keys):
                raise ValueError(f"keys_file line {number}: repeats an earlier key")
            keys.append(key)
        if not keys:
            raise ValueError("keys_file holds no keys")
        return cls(keys)

    @property
    def sealing_key_id(self) -> bytes:
        """The id of the key that seals."""
        return self._sealing[0]

    @property
    def key_ids(self) -> tuple[bytes, ...]:
        """Every key id, sealing key first."""
        return tuple(self._ciphers)

    def cipher(self, kid: bytes) -> AESGCM | None:
        """The cipher for ``kid``, or None when no key has that id."""
        return self._ciphers.get(kid)

    def __repr__(self) -> str:
        return f"Keyring(key_ids=[{', '.join(kid.hex() for kid in self._ciphers)}])"


def key_id(key: bytes) -> bytes:
    """A short, public id for ``key``: a domain-separated SHA-256, never the key itself."""
    return hashlib.sha256(b"iap key id\x00" + key).digest()[:_KEY_ID_BYTES]


def _key_lines(text: str) -> Iterable[tuple[int, str]]:
    # Split on "\n" only, so line numbers match what an editor shows.
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            yield number, line


def seal(
    keyring: Keyring,
    plaintext: bytes,
    *,
    purpose: bytes,
    now: int,
    random: Callable[[int], bytes],
) -> str:
    """Encrypt and authenticate ``plaintext`` for ``purpose``, issued at ``now`` (Unix s).

    ``random(n)`` gives ``n`` bytes from a CSPRNG (``os.urandom``, passed by the caller): the
    nonce. A nonce that repeats under one key breaks AES-GCM, so never pass anything else.
    """
    if not purpose:
        raise ValueError("purpose must not be empty")
    if not 0 <= now < 2**64:
        raise ValueError("now is out of range")
    kid, cipher = keyring._sealing
    header = bytes([VERSION]) + kid + now.to_bytes(8, "big")
    nonce = random(_NONCE_BYTES)
    if len(nonce) != _NONCE_BYTES:
        raise ValueError("random gave the wrong number of bytes")
    sealed = cipher.encrypt(nonce, plaintext, header + purpose)
    return _b64encode(header + nonce + sealed)


def open(  # the natural pair of seal(); callers write sealing.open
    keyring: Keyring,
    token: str,
    *,
    purpose: bytes,
    now: int,
    max_age: int,
    skew: int = CLOCK_SKEW,
) -> bytes:
    """Return the plaintext sealed in ``token``, or raise :class:`SealError`.

    The token must have been sealed for ``purpose`` by a key of ``keyring`` no more than
    ``max_age`` seconds before ``now`` and no more than ``skew`` seconds after it.
    """
    if not purpose:
        raise ValueError("purpose must not be empty")
    if max_age < 0 or skew < 0:
        raise ValueError("max_age and skew must not be negative")
    blob = _b64decode(token)
    if blob is None or len(blob) < _MIN_TOKEN_BYTES:
        raise SealError("malformed")
    header, nonce, sealed = (
        blob[:_HEADER_BYTES],
        blob[_HEADER_BYTES : _HEADER_BYTES + _NONCE_BYTES],
        blob[_HEADER_BYTES + _NONCE_BYTES :],
    )
    if header[0] != VERSION:
        raise SealError("version")
    cipher = keyring.cipher(header[1 : 1 + _KEY_ID_BYTES])
    if cipher is None:
        raise SealError("unknown_key")
    try:
        plaintext = cipher.decrypt(nonce, sealed, header + purpose)
    except InvalidTag:
        raise SealError("invalid") from None
    issued = int.from_bytes(header[1 + _KEY_ID_BYTES :], "big")
    if issued > now + skew:
        raise SealError("future")
    if now - issued > max_age:
        raise SealError("expired")
    return plaintext


def issued_at(token: str) -> int | None:
    """The issue time in ``token``'s header, unauthenticated: only for a token that
    :func:`open` accepted before (callers that cache what it opened to)."""
    header = _b64decode(token[:20])  # 15 bytes: the 13-byte header and 2 more
    if header is None or len(header) < _HEADER_BYTES:
        return None
    return int.from_bytes(header[1 + _KEY_ID_BYTES : _HEADER_BYTES], "big")


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes | None:
    """Decode canonical unpadded base64url, or None: one token has exactly one spelling."""
    if not _BASE64URL.fullmatch(text) or len(text) % 4 == 1:
        return None
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    return data if _b64encode(data) == text else None


# --- Cookies -----------------------------------------------------------------------------

MAX_CHUNKS = 8
"""At most this many cookies per value: 8 x 3800 bytes stays under ``max_header_bytes``."""
MAX_COOKIE_AGE = 400 * 24 * 3600
"""Browsers clamp Max-Age to 400 days (RFC 6265bis §5.6.2); a larger value is a mistake."""
COOKIE_LIMIT = 4096
"""Bytes per cookie, name and attributes included, every browser keeps (RFC 6265 §6.1)."""

_ATTRIBUTES = "; Path=/; Secure; HttpOnly; SameSite={same_site}; Max-Age="
_SAME_SITE = frozenset({"Lax", "Strict", "None"})
_MAX_ATTRIBUTES_BYTES = len(_ATTRIBUTES.format(same_site="Strict")) + len(str(MAX_COOKIE_AGE))
# RFC 7230 token for names; RFC 6265 §4.1.1 cookie-octet for values.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_COOKIE_VALUE = re.compile(r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*")
_MARKER = re.compile(r"~([2-9]|[1-9][0-9]+)~")


def split_cookie(name: str, value: str, *, limit: int = 3800) -> list[tuple[str, str]]:
    """Split ``value`` into cookies whose ``name=value`` is at most ``limit`` bytes each.

    Returns ``[(name, value)]`` when it fits, else ``[(name, "~N~" + chunk0), (name-1,
    chunk1), ...]`` for N chunks. ``value`` must be cookie-octets not starting with ``~``
    (sealed tokens are base64url). Raises ValueError past :data:`MAX_CHUNKS` chunks.
    """
    _check_name(name)
    if not _COOKIE_VALUE.fullmatch(value) or value.startswith("~"):
        raise ValueError("cookie value must be cookie-octets not starting with '~'")
    if not 0 < limit < COOKIE_LIMIT - _MAX_ATTRIBUTES_BYTES:
        raise ValueError(f"limit leaves no room for the attributes within {COOKIE_LIMIT} bytes")
    if len(name) + 1 + len(value) <= limit:
        return [(name, value)]
    for count in range(2, MAX_CHUNKS + 1):
        names = [name] + [f"{name}-{index}" for index in range(1, count)]
        marker = f"~{count}~"
        room = [limit - len(names[0]) - 1 - len(marker)]
        room += [limit - len(chunk_name) - 1 for chunk_name in names[1:]]
        if min(room) <= 0:
            raise ValueError("limit leaves no room for the cookie name")
        if sum(room) >= len(value):
            return _fill(names, marker, value, room)
    raise ValueError(f"cookie value needs more than {MAX_CHUNKS} chunks")


def _fill(names: list[str], marker: str, value: str, room: list[int]) -> list[tuple[str, str]]:
    chunks: list[tuple[str, str]] = []
    start = 0
    for chunk_name, size in zip(names, room, strict=True):
        chunks.append((chunk_name, value[start : start + size]))
        start += size
    first_name, first = chunks[0]
    chunks[0] = (first_name, marker + first)
    return chunks


def join_cookie(name: str, cookies: Mapping[str, str]) -> str | None:
    """Reassemble what :func:`split_cookie` split, or None if a chunk or the marker is bad.

    An empty ``name`` cookie (what :func:`clear_cookie_header` leaves) comes back as ``""``.
    """
    first = cookies.get(name)
    if first is None:
        return None
    if not first.startswith("~"):
        return first
    marker = _MARKER.match(first)
    if marker is None or int(marker.group(1)) > MAX_CHUNKS:
        return None
    pieces = [first[marker.end() :]]
    pieces += [cookies.get(f"{name}-{index}", "") for index in range(1, int(marker.group(1)))]
    if not all(pieces):
        return None
    return "".join(pieces)


def set_cookie_header(name: str, value: str, max_age: int, *, same_site: str = "Lax") -> str:
    """A Set-Cookie value with ``Path=/; Secure; HttpOnly; SameSite=Lax`` and no Domain.

    Those attributes satisfy the ``__Host-`` prefix (RFC 6265bis §4.1.3.2). ``same_site``
    is ``None`` only for the login state when the IdP answers with a cross-site form POST
    (``response_mode=form_post``), which a Lax cookie would not accompany. Raises
    ValueError for a bad name or value, a ``max_age`` outside 0..400 days, or a result of
    :data:`COOKIE_LIMIT` bytes or more.
    """
    _check_name(name)
    if not _COOKIE_VALUE.fullmatch(value):
        raise ValueError("cookie value must be cookie-octets (RFC 6265 §4.1.1)")
    if not 0 <= max_age <= MAX_COOKIE_AGE:
        raise ValueError("max_age must be between 0 and 400 days")
    if same_site not in _SAME_SITE:
        raise ValueError("same_site must be Lax, Strict or None")
    header = f"{name}={value}{_ATTRIBUTES.format(same_site=same_site)}{max_age}"
    if len(header) >= COOKIE_LIMIT:
        raise ValueError(f"Set-Cookie value of {len(header)} bytes; split the value first")
    return header


def clear_cookie_header(name: str) -> str:
    """A Set-Cookie value that deletes ``name`` (same attributes, empty value, Max-Age=0)."""
    return set_cookie_header(name, "", 0)


def _check_name(name: str) -> None:
    if not _TOKEN.fullmatch(name):
        raise ValueError("cookie name must be an RFC 7230 token")
