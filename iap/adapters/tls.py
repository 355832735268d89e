"""TLS material that rotates under a running proxy (SPEC §4 "re-read when they change", §6).

Invariants:
- A context is built whole from the files and only then swapped in; a half-written or
  mismatched set of files never replaces working material. The old material stays in use,
  the reason is logged and ``iap_tls_reload_failures_total`` counts it.
- Upstream contexts are swapped by reference: new connections take the new context,
  connections already open (and requests in flight on them) finish on the old one.
- The listener swaps by reference too: the listening socket's context moves every new
  handshake onto the current context (``sni_callback``); files are read once per reload.
- ``verify_san`` is checked during the handshake, before a single request byte (or a
  token) is written to the connection.
- A TLS alert that ends an upstream connection after the handshake (how a TLS 1.3
  gateway refuses a client certificate) is logged with its reason.
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
from typing import Any

from cryptography import x509

log = logging.getLogger("iap.tls")


class SanMismatch(ssl.SSLCertVerificationError):
    """The peer's certificate is valid but names none of the pinned identities."""


# Read errors that are part of a connection's normal life, not a refusal by the peer.
_QUIET_READ_ERRORS = (
    ssl.SSLWantReadError,
    ssl.SSLWantWriteError,
    ssl.SSLZeroReturnError,
    ssl.SSLEOFError,
)


def _upstream_sslobject(name: str, pins: frozenset[str]) -> type[ssl.SSLObject]:
    class UpstreamSSLObject(ssl.SSLObject):
        """Checks ``verify_san`` in the handshake; names the alerts that end a connection.

        With TLS 1.3 the client's handshake is complete before the server has looked at
        the client certificate, so a gateway refusing it (missing, unknown CA, expired)
        shows up as an alert on the first read; the HTTP client only reports a broken
        connection, so the alert's reason is logged here.
        """

        def do_handshake(self) -> None:
            super().do_handshake()
            if pins:
                entries = (self.getpeercert() or {}).get("subjectAltName", ())
                names = {str(entry[1]) for entry in entries if isinstance(entry, tuple)}
                if not names & pins:
                    raise SanMismatch("upstream certificate SAN matches no verify_san entry")

        def read(self, len: int = 1024, buffer: Any = None) -> bytes:
            try:
                return super().read(len, buffer)
            except _QUIET_READ_ERRORS:
                raise
            except ssl.SSLError as exc:
                log.warning(
                    "tls %s: the upstream ended the connection with a TLS error: %s",
                    name,
                    exc.reason or exc,
                )
                raise

    return UpstreamSSLObject


def client_context(
    *,
    ca_file: Path | None,
    cert_file: Path | None,
    key_file: Path | None,
    verify_san: Sequence[str] = (),
    name: str = "upstream",
) -> ssl.SSLContext:
    """Client TLS to an upstream: TLS 1.2+, the configured CA, our certificate, SAN pins."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file and key_file:
        context.load_cert_chain(str(cert_file), str(key_file))
    context.sslobject_class = _upstream_sslobject(name, frozenset(verify_san))
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

    def __post_init__(self) -> None:
        self.context = self.build()
        self._signature = _signature(self.files)
        self._failed: tuple[tuple[int, int, int], ...] | None = None
        self.expires = not_after(self.cert_file) if self.cert_file else float("inf")
        self.present = True

    def refresh(self) -> bool | None:
        """Rebuild if the files changed: True swapped, False kept the old, None unchanged.

        A change that failed to load is reported (False) once, not on every later call
        while the files stay as they are.
        """
        signature = _signature(self.files)
        self.present = signature is not None
        if signature is None or signature in (self._signature, self._failed):
            return None
        try:
            fresh = self.build()
            expires = not_after(self.cert_file) if self.cert_file else float("inf")
        except Exception as exc:  # any broken file keeps the working material
            self._failed = signature
            log.warning(
                "tls %s: keeping the previous material, reload of %s failed: %s",
                self.name,
                ", ".join(str(path) for path in self.files),
                exc,
            )
            return False
        self.context = fresh
        self._signature, self._failed, self.expires = signature, None, expires
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
            ca_file=ca_file,
            cert_file=cert_file,
            key_file=key_file,
            verify_san=verify_san,
            name=name,
        ),
    )


def listener_material(cert_file: Path, key_file: Path) -> Material:
    """The public listener's material. The listening socket keeps the first context for
    good; its ``sni_callback`` (run in every handshake, with or without SNI) moves each new
    connection onto the current context, so a reload swaps by reference as upstreams do,
    and connections already open keep the certificate they were made with."""
    current: list[Material] = []

    def follow(sslobj: ssl.SSLObject, _server_name: str | None, context: ssl.SSLContext) -> None:
        live = current[0].context
        if live is not context:
            sslobj.context = live

    def build() -> ssl.SSLContext:
        context = server_context(cert_file, key_file)
        context.sni_callback = follow
        return context

    current.append(Material("listen", (cert_file, key_file), cert_file, build))
    return current[0]


def expiry_in(material: Material) -> float:
    return material.expires - datetime.now(UTC).timestamp()


_LOAD_REASONS = {
    "KEY_VALUES_MISMATCH": "the private key does not match the certificate",
    "NO_CERTIFICATE_OR_CRL_FOUND": "no PEM certificate in the file",
}


def load_problem(exc: BaseException) -> str:
    """Why TLS files could not be loaded, in iap's words (never OpenSSL's ``[SSL] PEM lib
    (_ssl.c:3905)``), for ``iap check`` and startup."""
    if isinstance(exc, ssl.SSLError):
        default = "not a PEM certificate, or not an unencrypted PEM private key"
        return _LOAD_REASONS.get(exc.reason or "", default)
    if isinstance(exc, OSError):
        return (exc.strerror or "cannot be read").lower()
    return str(exc)  # iap's own ValueError, already in its words
