"""iap.certs: dev CA and leaves for `iap certs dev` (SPEC §4) and the mTLS hop (SPEC §6)."""

from __future__ import annotations

import base64
import ipaddress
import os
import socket
import ssl
import stat
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trustme
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from iap.certs import (
    GATEWAY_SPIFFE_ID,
    DevMaterial,
    issue_ca,
    issue_dev_material,
    issue_leaf,
)

E = TypeVar("E", bound=x509.ExtensionType)

NOW = datetime.now(UTC).replace(microsecond=0)  # real time: the handshakes check validity
SERVER_NAME = "api.mesh.internal"
SPIFFE = "spiffe://cluster.local/ns/iap/sa/iap"
HANG_GUARD = 10.0  # seconds; a guard against a deadlocked handshake, never a wait


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> DevMaterial:
    return issue_dev_material(tmp_path_factory.mktemp("certs") / "dev", now=NOW)


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def ext(cert: x509.Certificate, kind: type[E]) -> x509.Extension[E]:
    return cert.extensions.get_extension_for_class(kind)


def dns(cert: x509.Certificate) -> list[str]:
    return ext(cert, x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)


def uris(cert: x509.Certificate) -> list[str]:
    san = ext(cert, x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.UniformResourceIdentifier)


def ips(cert: x509.Certificate) -> list[object]:
    return list(ext(cert, x509.SubjectAlternativeName).value.get_values_for_type(x509.IPAddress))


def ekus(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(ext(cert, x509.ExtendedKeyUsage).value)


# --- what is on disk -------------------------------------------------------------------


def test_writes_every_file_with_its_mode(material: DevMaterial) -> None:
    names = sorted(p.name for p in material.directory.iterdir())
    assert names == sorted(p.name for p in material.files())
    for path in material.files():
        mode = stat.S_IMODE(path.stat().st_mode)
        secret = path.suffix == ".key" or path == material.ingress_secret
        assert mode == (0o600 if secret else 0o644), path.name


def test_keys_are_unencrypted_pkcs8_pem(material: DevMaterial) -> None:
    for key_path in (material.ca_key, material.edge_client_key, material.ingress_server_key):
        pem = key_path.read_bytes()
        assert pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")
        key = serialization.load_pem_private_key(pem, password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)


def test_each_key_matches_its_certificate(material: DevMaterial) -> None:
    pairs = [
        (material.ca_cert, material.ca_key),
        (material.edge_server_cert, material.edge_server_key),
        (material.edge_client_cert, material.edge_client_key),
        (material.ingress_server_cert, material.ingress_server_key),
    ]
    for cert_path, key_path in pairs:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        assert key.public_key() == load(cert_path).public_key(), cert_path.name


def test_key_mode_holds_under_a_permissive_umask_and_over_an_existing_file(
    tmp_path: Path,
) -> None:
    (tmp_path / "ca.key").write_bytes(b"old")
    (tmp_path / "ca.key").chmod(0o666)
    old = os.umask(0)
    try:
        issue_dev_material(tmp_path, now=NOW)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "ca.crt").stat().st_mode) == 0o644
    assert not list(tmp_path.glob(".*.tmp"))


def test_creates_missing_directories(tmp_path: Path) -> None:
    m = issue_dev_material(tmp_path / "a" / "b", now=NOW)
    assert m.directory.is_dir()
    assert all(p.is_file() for p in m.files())


# --- the certificates ------------------------------------------------------------------


def test_ca_is_a_ca_that_signs_leaves_only(material: DevMaterial) -> None:
    ca = load(material.ca_cert)
    bc = ext(ca, x509.BasicConstraints)
    assert bc.critical
    assert bc.value.ca
    assert bc.value.path_length == 0
    ku = ext(ca, x509.KeyUsage)
    assert ku.critical
    assert ku.value.key_cert_sign
    assert ku.value.crl_sign
    assert ca.subject == ca.issuer
    ca.verify_directly_issued_by(ca)
    assert ext(ca, x509.SubjectKeyIdentifier).value.digest


@pytest.mark.parametrize("name", ["edge_server_cert", "edge_client_cert", "ingress_server_cert"])
def test_leaf_is_an_end_entity_issued_by_the_ca(material: DevMaterial, name: str) -> None:
    ca = load(material.ca_cert)
    leaf = load(getattr(material, name))
    leaf.verify_directly_issued_by(ca)
    assert not ext(leaf, x509.BasicConstraints).value.ca
    assert not ext(leaf, x509.KeyUsage).value.key_cert_sign
    aki = ext(leaf, x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ext(ca, x509.SubjectKeyIdentifier).value.digest
    assert leaf.not_valid_before_utc == NOW - timedelta(minutes=5)
    assert leaf.not_valid_after_utc == NOW + timedelta(days=30)


def test_serials_are_random_and_distinct(material: DevMaterial) -> None:
    serials = {load(p).serial_number for p in material.files() if p.suffix == ".crt"}
    assert len(serials) == 4
    assert all(s.bit_length() > 64 for s in serials)


def test_edge_server_cert(material: DevMaterial) -> None:
    cert = load(material.edge_server_cert)
    assert dns(cert) == ["localhost"]
    assert ips(cert) == [ipaddress.ip_address("127.0.0.1")]
    assert uris(cert) == []
    assert ekus(cert) == {ExtendedKeyUsageOID.SERVER_AUTH}


def test_edge_client_cert_carries_exactly_the_spiffe_id(material: DevMaterial) -> None:
    cert = load(material.edge_client_cert)
    assert uris(cert) == [SPIFFE]
    assert dns(cert) == []
    assert ekus(cert) == {ExtendedKeyUsageOID.CLIENT_AUTH}


def test_ingress_server_cert(material: DevMaterial) -> None:
    cert = load(material.ingress_server_cert)
    assert dns(cert) == [SERVER_NAME]
    assert uris(cert) == [GATEWAY_SPIFFE_ID]
    assert ekus(cert) == {ExtendedKeyUsageOID.SERVER_AUTH}


def test_options_shape_the_names(tmp_path: Path) -> None:
    m = issue_dev_material(
        tmp_path,
        now=NOW,
        server_name="orders.mesh.test",
        edge_hosts=["edge.test", "::1"],
        spiffe_id="spiffe://example.org/edge",
        gateway_spiffe_id=None,
        days=2,
    )
    assert dns(load(m.ingress_server_cert)) == ["orders.mesh.test"]
    assert uris(load(m.ingress_server_cert)) == []
    assert ips(load(m.edge_server_cert)) == [ipaddress.ip_address("::1")]
    assert uris(load(m.edge_client_cert)) == ["spiffe://example.org/edge"]
    assert load(m.ca_cert).not_valid_after_utc == NOW + timedelta(days=2)


def test_rotated_leaf_has_a_new_key_and_serial_from_the_same_ca(
    material: DevMaterial, tmp_path: Path
) -> None:
    cert, key = tmp_path / "rotated.crt", tmp_path / "rotated.key"
    issue_leaf(material.ca_cert, material.ca_key, cert, key, uris=[SPIFFE], client=True, now=NOW)
    old, new = load(material.edge_client_cert), load(cert)
    new.verify_directly_issued_by(load(material.ca_cert))
    assert new.serial_number != old.serial_number
    assert new.public_key() != old.public_key()
    assert uris(new) == [SPIFFE]
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_leaf_never_outlives_its_ca(material: DevMaterial, tmp_path: Path) -> None:
    cert = tmp_path / "late.crt"
    late = NOW + timedelta(days=20)
    issue_leaf(
        material.ca_cert, material.ca_key, cert, tmp_path / "k", dns=["x"], server=True, now=late
    )
    assert load(cert).not_valid_after_utc == load(material.ca_cert).not_valid_after_utc


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dns": ["x"]}, "client=True, server=True"),
        ({"server": True}, "subject alternative name"),
        ({"dns": ["x"], "server": True, "days": 0}, "days"),
        ({"dns": ["x"], "server": True, "now": datetime(2030, 1, 1)}, "timezone-aware"),
    ],
)
def test_issue_leaf_refuses_incomplete_requests(
    material: DevMaterial, tmp_path: Path, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        issue_leaf(material.ca_cert, material.ca_key, tmp_path / "c", tmp_path / "k", **kwargs)
    assert not list(tmp_path.iterdir())


def test_issue_leaf_refuses_a_key_that_is_not_the_cas(
    material: DevMaterial, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="does not match"):
        issue_leaf(
            material.ca_cert,
            material.edge_client_key,
            tmp_path / "c",
            tmp_path / "k",
            dns=["x"],
            server=True,
        )


def test_issue_ca_alone(tmp_path: Path) -> None:
    issue_ca(tmp_path / "ca.crt", tmp_path / "ca.key", common_name="other", now=NOW, days=1)
    ca = load(tmp_path / "ca.crt")
    assert ca.not_valid_after_utc == NOW + timedelta(days=1)
    assert stat.S_IMODE((tmp_path / "ca.key").stat().st_mode) == 0o600


# --- the Istio Secret ------------------------------------------------------------------


def test_ingress_secret_manifest(material: DevMaterial) -> None:
    text = material.ingress_secret.read_text()
    header = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
    assert text.startswith(header)
    header = header.lower()
    assert "private key" in header
    assert "development only" in header
    doc = yaml.safe_load(text)
    assert doc["apiVersion"] == "v1"
    assert doc["kind"] == "Secret"
    assert doc["type"] == "Opaque"
    assert doc["metadata"] == {"name": "iap-ingress-mtls", "namespace": "istio-system"}
    data = {k: base64.b64decode(v, validate=True) for k, v in doc["data"].items()}
    assert data == {
        "tls.crt": material.ingress_server_cert.read_bytes(),
        "tls.key": material.ingress_server_key.read_bytes(),
        "ca.crt": material.ca_cert.read_bytes(),
    }


# --- a real mutual-TLS handshake -------------------------------------------------------


def server_context(m: DevMaterial) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(m.ingress_server_cert, m.ingress_server_key)
    ctx.load_verify_locations(cafile=m.ca_cert)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(m: DevMaterial, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname and CERT_REQUIRED
    ctx.load_verify_locations(cafile=m.ca_cert)
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    with a, b:
        a.settimeout(HANG_GUARD)
        b.settimeout(HANG_GUARD)
        yield a, b


def serve_once(sock: socket.socket, ctx: ssl.SSLContext) -> list[str]:
    """Handshake as the gateway, echo one message, return the peer's URI SANs."""
    with ctx.wrap_socket(sock, server_side=True) as tls:
        peer = tls.getpeercert(binary_form=True)
        tls.sendall(tls.recv(64))
    assert peer is not None
    return uris(x509.load_der_x509_certificate(peer))


def test_gateway_accepts_the_edge_client_certificate(
    material: DevMaterial, pair: tuple[socket.socket, socket.socket]
) -> None:
    server_sock, client_sock = pair
    ctx = client_context(material, material.edge_client_cert, material.edge_client_key)
    with ThreadPoolExecutor(1) as pool:
        served = pool.submit(serve_once, server_sock, server_context(material))
        with ctx.wrap_socket(client_sock, server_hostname=SERVER_NAME) as tls:
            tls.sendall(b"ping")
            assert tls.recv(64) == b"ping"
            assert tls.getpeercert() is not None
        assert served.result(HANG_GUARD) == [SPIFFE]


def test_gateway_accepts_a_rotated_client_certificate(
    material: DevMaterial, pair: tuple[socket.socket, socket.socket], tmp_path: Path
) -> None:
    cert, key = tmp_path / "c.crt", tmp_path / "c.key"
    issue_leaf(material.ca_cert, material.ca_key, cert, key, uris=[SPIFFE], client=True)
    server_sock, client_sock = pair
    with ThreadPoolExecutor(1) as pool:
        served = pool.submit(serve_once, server_sock, server_context(material))
        ctx = client_context(material, cert, key)
        with ctx.wrap_socket(client_sock, server_hostname=SERVER_NAME) as tls:
            tls.sendall(b"ping")
            assert tls.recv(64) == b"ping"
        assert served.result(HANG_GUARD) == [SPIFFE]


def handshake_failures(
    material: DevMaterial,
    pair: tuple[socket.socket, socket.socket],
    ctx: ssl.SSLContext,
    server_hostname: str = SERVER_NAME,
) -> tuple[str, str]:
    """Run a handshake that must fail on both sides; return (client, server) errors.

    Under TLS 1.3 the client finishes its handshake before the server has checked the
    client certificate, so the server's alert reaches the client on its first read.
    """
    server_sock, client_sock = pair
    with ThreadPoolExecutor(1) as pool:
        served = pool.submit(serve_once, server_sock, server_context(material))
        client_error = "no error"
        try:
            with ctx.wrap_socket(client_sock, server_hostname=server_hostname) as tls:
                tls.sendall(b"ping")
                if tls.recv(64) == b"":
                    client_error = "closed"
        except (ssl.SSLError, ConnectionError) as exc:
            client_error = str(exc)
        finally:
            client_sock.close()  # the server must not wait on a client that gave up
        with pytest.raises((ssl.SSLError, ConnectionError)) as server_error:
            served.result(HANG_GUARD)
    assert client_error != "no error"
    return client_error, str(server_error.value)


def test_gateway_rejects_a_client_without_a_certificate(
    material: DevMaterial, pair: tuple[socket.socket, socket.socket]
) -> None:
    _, server_error = handshake_failures(material, pair, client_context(material, None, None))
    assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" in server_error


def test_gateway_rejects_a_client_certificate_from_another_ca(
    material: DevMaterial, pair: tuple[socket.socket, socket.socket], tmp_path: Path
) -> None:
    stranger = trustme.CA().issue_cert("edge.stranger.test")
    stranger.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "s.pem"))
    ctx = client_context(material, tmp_path / "s.pem", None)
    _, server_error = handshake_failures(material, pair, ctx)
    assert "CERTIFICATE_VERIFY_FAILED" in server_error


def test_client_refuses_a_gateway_under_another_name(
    material: DevMaterial, pair: tuple[socket.socket, socket.socket]
) -> None:
    ctx = client_context(material, material.edge_client_cert, material.edge_client_key)
    client_error, _ = handshake_failures(material, pair, ctx, "other.mesh.internal")
    assert "Hostname mismatch" in client_error
