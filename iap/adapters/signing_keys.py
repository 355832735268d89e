"""The signing keys directory (SPEC §5 ``tokens.keys_dir``) and ``iap keys new`` (SPEC §4).

Invariants:
- Every ``*.pem`` file of the directory is one ES256 key; its ``created`` time is the file's
  mtime (what ``iap keys new`` wrote). A directory with no key, an unreadable file, a file
  that is not an EC P-256 private key, or a key file that others can read refuses to
  start, and a re-read with any such problem keeps the keys in use, whole.
- A file is read once it has been stat'ed as a regular file, and its mode and mtime come
  from the descriptor that read it, so the three describe the same file.
- Problems name the file and what is wrong, never its content.
- The directory is re-read only when a key file's name, inode, mtime or size changed (one
  ``stat`` per file, as for the TLS files); keys that vanish stay published for ``ttl``
  (:meth:`iap.domain.tokens.KeySet.replaced`).
- ``iap keys new`` creates its file with ``O_CREAT | O_EXCL`` and mode 0600 in one call:
  the key is never readable by others, not even for a moment, and never overwrites a file.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from iap.config import Tokens
from iap.domain.tokens import KeySet, SigningKey, load_key, new_key_pem
from iap.errors import ConfigError

log = logging.getLogger("iap.tokens")

SUFFIX = ".pem"
#: A P-256 PKCS#8 PEM is about 240 bytes; anything far larger is not a key.
MAX_FILE_BYTES = 16 * 1024

_Signature = tuple[tuple[str, int, int, int], ...]


def load_dir(path: Path) -> tuple[list[SigningKey], list[str]]:
    """Every key of ``path``'s ``*.pem`` files, and the problems found on the way."""
    try:
        names = sorted(name for name in os.listdir(path) if name.endswith(SUFFIX))
    except OSError as exc:
        return [], [f"{path}: cannot list the directory: {_reason(exc)}"]
    if not names:
        return [], [f"{path}: holds no *{SUFFIX} key files (create one with `iap keys new`)"]
    keys: list[SigningKey] = []
    problems: list[str] = []
    for name in names:
        try:
            keys.append(_load_file(path / name))
        except (OSError, ValueError) as exc:
            problems.append(f"{path / name}: {_reason(exc)}")
    return keys, problems


def _load_file(file: Path) -> SigningKey:
    if not stat.S_ISREG(os.stat(file).st_mode):  # never open a FIFO or a device
        raise ValueError("not a regular file")
    with open(file, "rb") as handle:
        status = os.fstat(handle.fileno())
        _check_mode(status)
        if status.st_size > MAX_FILE_BYTES:
            raise ValueError(f"larger than {MAX_FILE_BYTES} bytes: not a key file")
        pem = handle.read(MAX_FILE_BYTES + 1)
    return load_key(pem, created=status.st_mtime)


def _check_mode(status: os.stat_result) -> None:
    """Refuse a key others can read (a mode looser than 0600).

    The exception is a file we do not own whose group is ours: that is how a Kubernetes
    Secret volume with ``fsGroup`` lets a non-root process read a root-owned file (mode
    0440), and the group holds only the pod's own processes.
    """
    mode = stat.S_IMODE(status.st_mode)
    through_group = status.st_uid != os.geteuid() and status.st_gid in _our_groups()
    loose = mode & (0o007 if through_group else 0o077)
    if loose:
        raise ValueError(
            f"mode {mode:04o} is looser than 0600: group or world readable or writable"
        )


def _our_groups() -> set[int]:
    return {os.getegid(), *os.getgroups()}


def _reason(exc: OSError | ValueError) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return str(exc)


def _signature(path: Path) -> _Signature | None:
    """What changes when a key file is added, removed, rewritten or its symlink swapped."""
    try:
        names = sorted(name for name in os.listdir(path) if name.endswith(SUFFIX))
        stats = [(name, os.stat(path / name)) for name in names]
    except OSError:
        return None
    return tuple((name, s.st_ino, s.st_mtime_ns, s.st_size) for name, s in stats)


class KeyDirectory:
    """The keys of ``tokens.keys_dir`` as a :class:`KeySet` that follows the directory."""

    def __init__(self, path: Path, *, publish_before_use: float, ttl: float) -> None:
        """Read the directory; raises ConfigError naming ``tokens.keys_dir`` on a problem."""
        self.path = path
        signature = _signature(path)
        keys, problems = load_dir(path)
        if problems:
            raise ConfigError([f"tokens.keys_dir: {problem}" for problem in problems])
        self.current = KeySet(keys, publish_before_use=publish_before_use, ttl=ttl)
        self.problems: list[str] = []
        self._signature = signature
        self._failed: _Signature | None = None

    @classmethod
    def from_config(cls, tokens: Tokens) -> KeyDirectory:
        return cls(tokens.keys_dir, publish_before_use=tokens.publish_before_use, ttl=tokens.ttl)

    def refresh(self, now: float) -> bool | None:
        """Re-read the directory if it changed: True swapped, False kept the old set (the
        problems are in :attr:`problems`, logged once per change), None unchanged."""
        signature = _signature(self.path)
        if signature == self._signature or (self.problems and signature == self._failed):
            return None
        keys, problems = load_dir(self.path)
        if problems:
            for problem in problems:
                log.warning("signing keys: keeping the previous keys: %s", problem)
            self._failed, self.problems = signature, problems
            return False
        previous = self.current
        self.current = previous.replaced(keys, now)
        self._signature, self._failed, self.problems = signature, None, []
        log.info("signing keys: reloaded %s (%s)", self.path, self.current)
        if _lost_publication(previous, self.current, now):
            log.warning(
                "signing keys: %s signs although it was published less than"
                " publish_before_use ago (no older key is left): verifiers that cached"
                " the JWKS refuse its tokens until they fetch it again",
                self.current.signing_key(now).kid,
            )
        return True


def _lost_publication(previous: KeySet, current: KeySet, now: float) -> bool:
    """Whether a ready signing key gave way to one published too recently to sign."""
    if not previous.keys:
        return False
    before, after = previous.signing_key(now), current.signing_key(now)
    return previous.ready(before, now) and not current.ready(after, now)


def write_new_key(directory: Path) -> tuple[str, Path]:
    """Create ``directory`` if missing (mode 0700) and write a new key as ``<kid>.pem``.

    Returns the ``kid`` and the file. Raises OSError when the file cannot be written; a
    partly written file is removed.
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    pem = new_key_pem()
    kid = load_key(pem, created=0.0).kid
    file = directory / f"{kid}{SUFFIX}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    descriptor = os.open(file, flags, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError:
        file.unlink(missing_ok=True)
        raise
    return kid, file
