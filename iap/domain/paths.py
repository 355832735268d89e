"""Request-target normalisation (SPEC §2 step 1).

Invariants:
- The path is normalised exactly once, here; the result is what routing decides on
  and what is forwarded, so the proxy and the upstream can never disagree on it.
- Percent-escapes of unreserved characters are decoded (RFC 3986 §6.2.2.2), other
  escapes are upper-cased, dot segments are removed (RFC 3986 §5.2.4) and runs of
  ``/`` are merged, so ``/admin`` cannot be reached as ``//admin`` or ``/x/../admin``
  behind a route that was not meant for it.
- Ambiguous targets are refused rather than guessed at: encoded ``/`` or ``\\``
  (CVE-2021-22113-style routing confusion), a literal ``\\``, ``..;`` and ``.;``
  segments (Tomcat path parameters, CVE-2020-1957), NUL and other control
  characters, malformed escapes, non-ASCII bytes and invalid UTF-8.
"""

from __future__ import annotations

import re
from typing import NamedTuple
from urllib.parse import unquote_to_bytes

from iap.errors import BadRequest

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# A path made only of these, with no "//" and no segment starting with ".", is already normal.
_FAST = re.compile(r"/[A-Za-z0-9\-._~!$&'()*+,;=:@/]*")
_PATH_CHARS = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*")
_QUERY_CHARS = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/?%\[\]|^`{}\"<>]*")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
# Escapes that would change the meaning of the path or smuggle control characters.
_FORBIDDEN_ESCAPE = re.compile(r"%(?:2[Ff]|5[Cc]|[01][0-9A-Fa-f]|7[Ff])")


class Target(NamedTuple):
    """A normalised request target: ``path`` decides and is forwarded; ``query`` is raw."""

    path: str
    query: str

    def __str__(self) -> str:
        return f"{self.path}?{self.query}" if self.query else self.path


def normalise(raw_target: str) -> Target:
    """Normalise an origin-form request target, or raise :class:`BadRequest`."""
    path, sep, query = raw_target.partition("?")
    if sep and not _QUERY_CHARS.fullmatch(query):
        raise BadRequest("query contains characters outside RFC 3986")
    if _FAST.fullmatch(path) and "//" not in path and "/." not in path:
        return Target(path, query)
    return Target(_normalise_path(path), query)


def _normalise_path(path: str) -> str:
    if not path.startswith("/"):
        raise BadRequest("request target is not an absolute path")
    if not _PATH_CHARS.fullmatch(path):
        raise BadRequest("path contains a backslash, control, non-ASCII or reserved character")
    if _BAD_ESCAPE.search(path):
        raise BadRequest("path contains a malformed percent-escape")
    if _FORBIDDEN_ESCAPE.search(path):
        raise BadRequest("path contains an encoded slash, backslash or control character")
    try:
        unquote_to_bytes(path).decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("path is not valid UTF-8") from None
    decoded = _ESCAPE.sub(_decode_unreserved, path)
    return _remove_dot_segments(decoded)


def _decode_unreserved(match: re.Match[str]) -> str:
    char = chr(int(match.group(1), 16))
    return char if char in _UNRESERVED else "%" + match.group(1).upper()


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4 over ``/``-separated segments, merging empty ones."""
    segments = path[1:].split("/")
    last = len(segments) - 1
    out: list[str] = []
    for index, segment in enumerate(segments):
        if ";" in segment and segment.partition(";")[0] in (".", ".."):
            raise BadRequest("path contains a dot segment with parameters")
        if segment == ".." and out:
            out.pop()
        if segment in ("", ".", ".."):
            if index == last:
                out.append("")
            continue
        out.append(segment)
    return "/" + "/".join(out)
