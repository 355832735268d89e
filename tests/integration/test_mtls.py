"""Mutual TLS to the ingress gateway, listener TLS and hot rotation, over real loopback TLS.

SPEC §3 (readyz), §4 (certificate files re-read when they change), §5 (``listen.tls``,
``upstream_tls``), §6 (TLS to the upstream). No mocks: the material comes from
:mod:`iap.certs`, the upstream is a real TLS server that demands client certificates.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509

from iap.certs import (
    GATEWAY_SPIFFE_ID,
    SERVER_NAME,
    SPIFFE_ID,
    DevMaterial,
    issue_ca,
    issue_dev_material,
    issue_leaf,
)
from tests.conftest import RunningEdge, StartEdge, Upstream, edge_config
from tests.support.tls import TLSSeen, TLSUpstream, tls_upstream

HANG_GUARD = 30.0  # seconds; a guard against a hang, never a performance bound
ROUTE_MATERIAL = "upstream:app"


@pytest.fixture
def dev(tmp_path: Path) -> DevMaterial:
    return issue_dev_material(tmp_path / "dev")


@pytest.fixture
async def gateway(dev: DevMaterial) -> AsyncIterator[TLSUpstream]:
    """The stand-in for the Istio ingress gateway: mTLS, client certificates from the dev CA."""
    async with tls_upstream(dev.ingress_server_cert, dev.ingress_server_key, dev.ca_cert) as up:
        yield up


@pytest.fixture
def iap_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="iap")
    return caplog


def upstream_tls(dev: DevMaterial, **overrides: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "ca_file": str(dev.ca_cert),
        "cert_file": str(dev.edge_client_cert),
        "key_file": str(dev.edge_client_key),
        "server_name": SERVER_NAME,
        "verify_san": [GATEWAY_SPIFFE_ID],
    }
    settings.update(overrides)
    return {key: value for key, value in settings.items() if value is not None}


def mtls_config(up: TLSUpstream, dev: DevMaterial, **overrides: Any) -> dict[str, Any]:
    tls = upstream_tls(dev, **overrides.pop("tls", {}))
    return edge_config(up.url, route={"upstream_tls": tls}, **overrides)


def serial(cert_file: Path) -> int:
    return x509.load_pem_x509_certificate(cert_file.read_bytes()).serial_number


def gateway_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "iap" and record.levelno == logging.WARNING
    ]


def tls_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "iap.tls" and r.levelno >= 30]


async def get_status(client: aiohttp.ClientSession, url: str, **kwargs: Any) -> int:
    async with client.get(url, **kwargs) as resp:
        await resp.read()
        return resp.status


async def wait_for_arrival(seen: TLSSeen, serial_number: int) -> None:
    """Until a request presenting the certificate ``serial_number`` reached the upstream."""
    while serial_number not in seen.serials():
        seen.arrived.clear()
        await seen.arrived.wait()


async def metrics_text(client: aiohttp.ClientSession, edge: RunningEdge) -> str:
    async with client.get(f"{edge.admin_url}/metrics") as resp:
        assert resp.status == 200
        return await resp.text()


async def watch_ticks(client: aiohttp.ClientSession, edge: RunningEdge, count: int) -> None:
    """Until the TLS watcher has run ``count`` more times (each tick re-publishes the expiry
    gauge, a little lower every time)."""
    gauge = f'iap_certificate_expiry_seconds{{name="{ROUTE_MATERIAL}"}} '
    values: set[str] = set()
    async with asyncio.timeout(HANG_GUARD):
        while len(values) < count + 1:
            text = await metrics_text(client, edge)
            values.add(text.partition(gauge)[2].partition("\n")[0])


async def readiness(client: aiohttp.ClientSession, edge: RunningEdge) -> tuple[int, Any]:
    async with client.get(f"{edge.admin_url}/readyz") as resp:
        return resp.status, await resp.json()


# -- the mTLS hop (SPEC §6) ------------------------------------------------------------------


async def test_edge_certificate_is_presented_with_the_configured_sni(
    dev: DevMaterial, gateway: TLSUpstream, start_edge: StartEdge
) -> None:
    edge = await start_edge(mtls_config(gateway, dev))
    async with aiohttp.ClientSession() as client:
        assert await get_status(client, f"{edge.url}/orders/1") == 200
    [arrival] = gateway.seen.arrivals
    assert arrival.sni == SERVER_NAME
    assert arrival.serial == serial(dev.edge_client_cert)
    assert arrival.uri_sans == (SPIFFE_ID,)
    assert arrival.path == "/orders/1"


async def test_without_a_client_certificate_the_gateway_refuses_and_iap_answers_502(
    dev: DevMaterial, gateway: TLSUpstream, start_edge: StartEdge, iap_log: pytest.LogCaptureFixture
) -> None:
    edge = await start_edge(mtls_config(gateway, dev, tls={"cert_file": None, "key_file": None}))
    async with aiohttp.ClientSession() as client:
        assert await get_status(client, f"{edge.url}/") == 502
    assert gateway.seen.arrivals == []
    assert set(gateway.seen.handshakes) == {SERVER_NAME}
    [warning] = gateway_warnings(iap_log)
    assert warning.startswith("upstream_unreachable: upstream"), warning
    # TLS 1.3: the gateway refuses the (absent) certificate after the client's handshake
    # is complete, with an alert; its reason is logged as the connection ends.
    assert set(tls_warnings(iap_log)) == {
        "tls upstream:app: the upstream ended the connection with a TLS error:"
        " TLSV13_ALERT_CERTIFICATE_REQUIRED"
    }


async def test_a_gateway_certificate_from_another_ca_is_refused_with_502(
    tmp_path: Path,
    dev: DevMaterial,
    gateway: TLSUpstream,
    start_edge: StartEdge,
    iap_log: pytest.LogCaptureFixture,
) -> None:
    other_ca = tmp_path / "other-ca.crt"
    issue_ca(other_ca, tmp_path / "other-ca.key", common_name="some other CA")
    edge = await start_edge(mtls_config(gateway, dev, tls={"ca_file": str(other_ca)}))
    async with aiohttp.ClientSession() as client:
        assert await get_status(client, f"{edge.url}/") == 502
    assert gateway.seen.arrivals == []
    [warning] = gateway_warnings(iap_log)
    assert warning.startswith("upstream_unreachable: upstream certificate refused"), warning
    assert "CERTIFICATE_VERIFY_FAILED" in warning, warning


async def test_a_san_pin_mismatch_is_refused_in_the_handshake_before_any_request_byte(
    dev: DevMaterial, gateway: TLSUpstream, start_edge: StartEdge, iap_log: pytest.LogCaptureFixture
) -> None:
    pin = "spiffe://cluster.local/ns/istio-system/sa/some-other-gateway"
    edge = await start_edge(mtls_config(gateway, dev, tls={"verify_san": [pin]}))
    async with aiohttp.ClientSession() as client:
        assert await get_status(client, f"{edge.url}/") == 502
    assert gateway.seen.handshakes == [SERVER_NAME]  # the connection was made...
    assert gateway.seen.arrivals == []  # ...and no request was sent on it
    [warning] = gateway_warnings(iap_log)
    assert warning.startswith("upstream_unreachable: upstream certificate refused"), warning
    assert "verify_san" in warning, warning


async def test_a_san_pin_matches_the_dns_name_too(
    dev: DevMaterial, gateway: TLSUpstream, start_edge: StartEdge
) -> None:
    edge = await start_edge(mtls_config(gateway, dev, tls={"verify_san": [SERVER_NAME]}))
    async with aiohttp.ClientSession() as client:
        assert await get_status(client, f"{edge.url}/") == 200


# -- rotation (SPEC §4: certificate files are re-read when they change) ----------------------


async def test_rotating_the_client_certificate_under_load_fails_no_request(
    dev: DevMaterial, start_edge: StartEdge, iap_log: pytest.LogCaptureFixture
) -> None:
    async with tls_upstream(
        dev.ingress_server_cert, dev.ingress_server_key, dev.ca_cert, close_connections=True
    ) as gateway:
        edge = await start_edge(mtls_config(gateway, dev, tls_watch_interval="50ms"))
        old_serial = serial(dev.edge_client_cert)
        statuses: list[int] = []
        done = asyncio.Event()

        async def load(client: aiohttp.ClientSession) -> None:
            while not done.is_set():
                statuses.append(await get_status(client, f"{edge.url}/load"))

        async with aiohttp.ClientSession() as client:
            workers = [asyncio.ensure_future(load(client)) for _ in range(4)]
            try:
                async with asyncio.timeout(HANG_GUARD):
                    await wait_for_arrival(gateway.seen, old_serial)
                    issue_leaf(
                        dev.ca_cert,
                        dev.ca_key,
                        dev.edge_client_cert,
                        dev.edge_client_key,
                        uris=[SPIFFE_ID],
                        client=True,
                    )
                    new_serial = serial(dev.edge_client_cert)
                    await wait_for_arrival(gateway.seen, new_serial)
                    arrivals_at_new_serial = len(gateway.seen.arrivals)
                    # Rotation did not stall the stream: more requests keep succeeding.
                    while len(gateway.seen.arrivals) < arrivals_at_new_serial + 8:
                        gateway.seen.arrived.clear()
                        await gateway.seen.arrived.wait()
            finally:
                done.set()
                await asyncio.gather(*workers)
            status, ready = await readiness(client, edge)
            metrics = await metrics_text(client, edge)
    assert statuses, "no request ran"
    assert set(statuses) == {200}, f"{len([s for s in statuses if s != 200])} failed"
    assert {old_serial, new_serial} <= gateway.seen.serials()
    # Swapped by reference: after the first connection with the new certificate, only those
    # already being opened by the other workers can still present the old one.
    first_new = next(i for i, a in enumerate(gateway.seen.arrivals) if a.serial == new_serial)
    late_old = [a for a in gateway.seen.arrivals[first_new:] if a.serial == old_serial]
    assert len(late_old) <= len(workers) - 1
    assert all(arrival.sni == SERVER_NAME for arrival in gateway.seen.arrivals)
    assert (status, ready["checks"][f"tls:{ROUTE_MATERIAL}"]) == (200, True)
    assert f'iap_certificate_expiry_seconds{{name="{ROUTE_MATERIAL}"}}' in metrics
    assert any("tls upstream:app: reloaded" in r.getMessage() for r in iap_log.records)


async def test_a_broken_new_key_keeps_the_previous_material_and_is_counted(
    dev: DevMaterial, start_edge: StartEdge, iap_log: pytest.LogCaptureFixture
) -> None:
    async with tls_upstream(
        dev.ingress_server_cert, dev.ingress_server_key, dev.ca_cert, close_connections=True
    ) as gateway:
        edge = await start_edge(mtls_config(gateway, dev, tls_watch_interval="50ms"))
        failures = f'iap_tls_reload_failures_total{{name="{ROUTE_MATERIAL}"}} 1.0'
        async with aiohttp.ClientSession() as client:
            assert await get_status(client, f"{edge.url}/") == 200
            replace(dev.edge_client_key, b"-----BEGIN PRIVATE KEY-----\ngarbage\n")
            async with asyncio.timeout(HANG_GUARD):
                while failures not in await metrics_text(client, edge):
                    assert await get_status(client, f"{edge.url}/") == 200
            for _ in range(5):  # new connections, each on the previous (intact) material
                assert await get_status(client, f"{edge.url}/") == 200
            await watch_ticks(client, edge, 3)  # the files stay broken: not counted again
            status, ready = await readiness(client, edge)
            metrics = await metrics_text(client, edge)
    assert failures in metrics  # counted once per change, not once per watch tick
    assert (status, ready["checks"][f"tls:{ROUTE_MATERIAL}"]) == (200, True)
    assert gateway.seen.serials() == {serial(dev.edge_client_cert)}
    [reason] = [r.getMessage() for r in iap_log.records if r.name == "iap.tls"]
    assert reason.startswith("tls upstream:app: keeping the previous material, reload of ")
    assert str(dev.edge_client_key) in reason


def replace(path: Path, data: bytes) -> None:
    """Swap a file's content in one rename, as cert-manager and kubelet do."""
    staging = path.with_name(f".{path.name}.staging")
    staging.write_bytes(data)
    os.replace(staging, path)


# -- readiness (SPEC §3) ---------------------------------------------------------------------


async def test_readyz_fails_when_the_client_certificate_is_expired(
    tmp_path: Path, dev: DevMaterial, gateway: TLSUpstream, start_edge: StartEdge
) -> None:
    expired_cert, expired_key = tmp_path / "expired.crt", tmp_path / "expired.key"
    long_ago = datetime.now(UTC) - timedelta(days=10)
    issue_leaf(
        dev.ca_cert, dev.ca_key, expired_cert, expired_key,
        uris=[SPIFFE_ID], client=True, days=1, now=long_ago,
    )  # fmt: skip
    tls = {"cert_file": str(expired_cert), "key_file": str(expired_key)}
    edge = await start_edge(mtls_config(gateway, dev, tls=tls))
    async with aiohttp.ClientSession() as client:
        status, ready = await readiness(client, edge)
        metrics = await metrics_text(client, edge)
    assert status == 503
    assert ready["status"] == "not ready"
    assert ready["checks"][f"tls:{ROUTE_MATERIAL}"] is False
    expiry = f'iap_certificate_expiry_seconds{{name="{ROUTE_MATERIAL}"}} -'
    assert expiry in metrics


async def test_readyz_fails_when_the_material_goes_missing(
    dev: DevMaterial, gateway: TLSUpstream, start_edge: StartEdge
) -> None:
    edge = await start_edge(mtls_config(gateway, dev, tls_watch_interval="50ms"))
    async with aiohttp.ClientSession() as client:
        assert (await readiness(client, edge))[0] == 200
        dev.edge_client_cert.unlink()
        async with asyncio.timeout(HANG_GUARD):
            while (result := await readiness(client, edge))[0] != 503:
                pass
        # The context in memory still works for new connections; readiness tells the operator.
        assert await get_status(client, f"{edge.url}/") == 200
    assert result[1]["checks"][f"tls:{ROUTE_MATERIAL}"] is False


# -- the public listener (SPEC §5 listen.tls) ------------------------------------------------


def listener_config(upstream: Upstream, dev: DevMaterial, **overrides: Any) -> dict[str, Any]:
    tls = {"cert_file": str(dev.edge_server_cert), "key_file": str(dev.edge_server_key)}
    return edge_config(upstream.url, listen={"address": "127.0.0.1:0", "tls": tls}, **overrides)


async def presented_serial(edge: RunningEdge, trust: ssl.SSLContext, server_name: str) -> int:
    """Open a new TLS connection to the listener; the serial of the certificate it presents."""
    _, writer = await asyncio.open_connection(
        "127.0.0.1", edge.port, ssl=trust, server_hostname=server_name
    )
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
        await writer.wait_closed()
    return x509.load_der_x509_certificate(der).serial_number


async def test_listener_serves_tls_trusted_through_the_dev_ca_only(
    dev: DevMaterial, upstream: Upstream, start_edge: StartEdge
) -> None:
    edge = await start_edge(listener_config(upstream, dev))
    assert edge.url.startswith("https://127.0.0.1:")
    trust_dev_ca = ssl.create_default_context(cafile=str(dev.ca_cert))
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{edge.url}/hello", ssl=trust_dev_ca) as resp:
            assert resp.status == 200
            forwarded = dict((await resp.json())["headers"])
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await get_status(client, f"{edge.url}/hello")  # the system trust store: refused
    assert await presented_serial(edge, trust_dev_ca, "localhost") == serial(dev.edge_server_cert)
    assert [request.path for request in upstream.seen.requests] == ["/hello"]
    assert forwarded["X-Forwarded-Proto"] == "https"


async def test_listener_presents_a_rotated_certificate_on_new_connections(
    dev: DevMaterial, upstream: Upstream, start_edge: StartEdge
) -> None:
    edge = await start_edge(listener_config(upstream, dev, tls_watch_interval="50ms"))
    trust = ssl.create_default_context(cafile=str(dev.ca_cert))
    old = serial(dev.edge_server_cert)
    async with aiohttp.ClientSession() as client:
        async with client.get(edge.url, ssl=trust) as held:  # a keep-alive connection
            assert held.status == 200
            await held.read()
        issue_leaf(
            dev.ca_cert, dev.ca_key, dev.edge_server_cert, dev.edge_server_key,
            dns=["localhost"], ips=["127.0.0.1"], server=True,
        )  # fmt: skip
        new = serial(dev.edge_server_cert)
        async with asyncio.timeout(HANG_GUARD):
            # Without SNI (an IP literal) and with SNI: both get the new certificate.
            while await presented_serial(edge, trust, "127.0.0.1") == old:
                pass
            assert await presented_serial(edge, trust, "localhost") == new
        assert await presented_serial(edge, trust, "127.0.0.1") == new
        # The connection opened before the rotation still works.
        assert await get_status(client, f"{edge.url}/again", ssl=trust) == 200
