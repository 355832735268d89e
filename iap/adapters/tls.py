"""TLS material that rotates under a running proxy (SPEC §4 "re-read when they change", §6).

Invariants:
- A context is built whole from the files and only then swapped in; a half-written or
  mismatched set of files never replaces working material. The old material stays in use,
  the reason is logged and ``iap_tls_reload_failures_total`` counts it.
- Upstream contexts are swapped by reference: new connections take the new context,
  connections already open (and requests in flight on them) finish on the old one.
- The listener context is updated in place only after the same files loaded into a
  scratch context, so a failed reload cannot leave it half-updated.
- ``verify_san`` is checked during the handshake, before a single request byte (or a
  token) is written to the connection.
- Material that is missing on disk or expired makes ``/readyz`` fail.
"""

from __future__ import annotations

import logging
import os
import ssl
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509

log = logging.getLogger("iap.tls")


class SanMismatch(ssl.SSLCertVerificationError):
    """The peer's certificate is valid but names none of the pinned identities."""


def _pinned_sslobject(pins: frozenset[str]) -> type[ssl.SSLObject]:
    class PinnedSSLObject(ssl.SSLObject):
        def do_handshake(self) -> None:
            super().do_handshake()
            entries = (self.getpeercert() or {}).get("subjectAltName", ())
            names = {str(entry[1]) for entry in entries if isinstance(entry, tuple)}
            if not names & pins:
                raise SanMismatch("upstream certificate SAN matches no verify_san entry")

    return PinnedSSLObject


def client_context(
    *,
    ca_file: Path | None,
    cert_file: Path | None,
    key_file: Path | None,
    verify_san: Sequence[str] = (),
) -> ssl.SSLContext:
    """Client TLS to an upstream: TLS 1.2+, the configured CA, our certificate, SAN pins."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file and key_file:
        context.load_cert_chain(str(cert_file), str(key_file))
    if verify_san:
        context.sslobject_class = _pinned_sslobject(frozenset(verify_san))
    return context


def server_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """Server TLS for the public listener: TLS 1.2+, HTTP/1.1 via ALPN."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert_file), str(key_file))
    context.set_alpn_protocols(["http/1.1"])
    return context


def not_after(cert_file: Path) -> float:
    """Expiry of the first certificate in a PEM file, as a Unix timestamp."""
    certificate = x509.load_pem_x509_certificate(cert_file.read_bytes())
    return certificate.not_valid_after_utc.timestamp()


def _signature(paths: Iterable[Path]) -> tuple[tuple[int, int, int], ...] | None:
    """What changes when a file is rewritten or a Kubernetes Secret symlink is swapped."""
    try:
        return tuple(
            (stat.st_ino, stat.st_mtime_ns, stat.st_size)
            for stat in (os.stat(path) for path in paths)
        )
    except OSError:
        return None


@dataclass
class Material:
    """One set of TLS files and the context built from them."""

    name: str
    files: tuple[Path, ...]
    cert_file: Path | None
    build: Callable[[], ssl.SSLContext]
    apply: Callable[[ssl.SSLContext], ssl.SSLContext] = lambda fresh: fresh

    def __post_init__(self) -> None:
        self.context = self.build()
        self._signature = _signature(self.files)
        self.expires = not_after(self.cert_file) if self.cert_file else float("inf")
        self.present = True

    def refresh(self) -> bool | None:
        """Rebuild if the files changed: True swapped, False kept the old, None unchanged."""
        signature = _signature(self.files)
        self.present = signature is not None
        if signature == self._signature or signature is None:
            return None
        try:
            fresh = self.build()
            expires = not_after(self.cert_file) if self.cert_file else float("inf")
        except (OSError, ssl.SSLError, ValueError) as exc:
            log.warning("tls %s: keeping the previous material, reload failed: %s", self.name, exc)
            return False
        self.context = self.apply(fresh)
        self._signature, self.expires = signature, expires
        log.info("tls %s: reloaded", self.name)
        return True

    def usable(self, now: float | None = None) -> bool:
        return self.present and (now if now is not None else time.time()) < self.expires


def upstream_material(
    name: str,
    *,
    ca_file: Path | None,
    cert_file: Path | None,
    key_file: Path | None,
    verify_san: Sequence[str],
) -> Material:
    files = tuple(path for path in (ca_file, cert_file, key_file) if path is not None)
    return Material(
        name=name,
        files=files,
        cert_file=cert_file,
        build=lambda: client_context(
            ca_file=ca_file, cert_file=cert_file, key_file=key_file, verify_san=verify_san
        ),
    )


def listener_material(cert_file: Path, key_file: Path) -> Material:
    live: list[ssl.SSLContext] = []

    def build() -> ssl.SSLContext:
        return server_context(cert_file, key_file)

    def apply(fresh: ssl.SSLContext) -> ssl.SSLContext:
        # The listening socket holds the first context: load the checked files into it.
        live[0].load_cert_chain(str(cert_file), str(key_file))
        return live[0]

    material = Material("listen", (cert_file, key_file), cert_file, build, apply)
    live.append(material.context)
    return material


def expiry_in(material: Material) -> float:
    return material.expires - datetime.now(UTC).timestamp()
