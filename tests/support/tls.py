"""A TLS upstream that demands client certificates, like an Istio gateway in MUTUAL mode.

It records what each connection presented: the SNI from the ClientHello (captured with
``sni_callback``, so it is known even for connections that never send a request) and, per
HTTP request, the serial number and URI SANs of the client certificate.
"""

from __future__ import annotations

import asyncio
import ssl
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from cryptography import x509


@dataclass(frozen=True)
class Arrival:
    """One HTTP request that reached the TLS upstream."""

    sni: str | None
    serial: int | None
    uri_sans: tuple[str, ...]
    path: str


@dataclass
class TLSSeen:
    handshakes: list[str | None] = field(default_factory=list)  # SNI of every ClientHello
    arrivals: list[Arrival] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def serials(self) -> set[int | None]:
        return {arrival.serial for arrival in self.arrivals}


@dataclass
class TLSUpstream:
    url: str
    seen: TLSSeen


def client_certificate(transport: asyncio.BaseTransport | None) -> x509.Certificate | None:
    """The certificate the peer of ``transport`` presented, or None."""
    sslobj = transport.get_extra_info("ssl_object") if transport is not None else None
    der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
    return x509.load_der_x509_certificate(der) if der else None


def uri_sans(certificate: x509.Certificate) -> tuple[str, ...]:
    try:
        sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return ()
    return tuple(sans.value.get_values_for_type(x509.UniformResourceIdentifier))


class _AlertingSSLObject(ssl.SSLObject):
    """Sends the alert of a failed handshake before the connection closes.

    A TLS server on a socket (Envoy, or Python's own ``SSLSocket``) writes the alert it
    fails a handshake with, e.g. ``certificate_required``. asyncio's server transport
    closes without flushing what OpenSSL wrote; answering "want read" once makes it flush
    the outgoing buffer first. The handshake still fails: the stored error is raised the
    next time round, and the connection never reaches the HTTP server.
    """

    _failure: ssl.SSLError | None = None

    def do_handshake(self) -> None:
        if self._failure is not None:
            raise self._failure
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except ssl.SSLError as exc:
            self._failure = exc
            raise ssl.SSLWantReadError("flushing the handshake alert") from exc


def mutual_tls_server_context(
    cert_file: Path, key_file: Path, client_ca_file: Path
) -> ssl.SSLContext:
    """Server side of mTLS: our certificate, and a client certificate from that CA required."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # no system CAs: only client_ca_file
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert_file), str(key_file))
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cafile=str(client_ca_file))
    context.sslobject_class = _AlertingSSLObject
    return context


@asynccontextmanager
async def tls_upstream(
    cert_file: Path, key_file: Path, client_ca_file: Path, *, close_connections: bool = False
) -> AsyncIterator[TLSUpstream]:
    """Serve on 127.0.0.1 with mTLS; ``close_connections`` answers ``Connection: close``."""
    seen = TLSSeen()
    sni_of: weakref.WeakKeyDictionary[ssl.SSLObject, str | None] = weakref.WeakKeyDictionary()
    context = mutual_tls_server_context(cert_file, key_file, client_ca_file)

    def record_sni(sslobj: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        sni_of[sslobj] = server_name
        seen.handshakes.append(server_name)

    context.sni_callback = record_sni

    async def handle(request: web.Request) -> web.Response:
        sslobj = request.transport.get_extra_info("ssl_object") if request.transport else None
        certificate = client_certificate(request.transport)
        arrival = Arrival(
            sni=sni_of.get(sslobj) if sslobj is not None else None,
            serial=certificate.serial_number if certificate else None,
            uri_sans=uri_sans(certificate) if certificate else (),
            path=request.path,
        )
        seen.arrivals.append(arrival)
        seen.arrived.set()
        response = web.json_response(
            {"sni": arrival.sni, "serial": str(arrival.serial), "uri_sans": arrival.uri_sans}
        )
        if close_connections:
            response.force_close()
        return response

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
    try:
        yield TLSUpstream(f"https://127.0.0.1:{runner.addresses[0][1]}", seen)
    finally:
        await runner.cleanup()
