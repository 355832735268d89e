"""The upstream client's own values (iap.adapters.upstream): its timeouts, its failures,
what each failure tells the circuit breaker, and the error the web layer answers with."""

from __future__ import annotations

import ssl

import aiohttp
import pytest
from aiohttp.client_reqrep import ConnectionKey
from aiohttp.test_utils import make_mocked_request

from iap import config
from iap.adapters.http1 import (
    BadResponse,
    ConnectFailed,
    ConnectTimeout,
    ReadTimeout,
    UpstreamClosed,
)
from iap.adapters.upstream import (
    Timeouts,
    Transfer,
    Upstream,
    UpstreamFailure,
    Upstreams,
    failure_of,
)
from iap.domain.circuit import CircuitBreaker
from iap.errors import BadGateway, CircuitOpen, GatewayTimeout, IapError, PayloadTooLarge
from iap.web.relay import forward, refusal
from iap.web.routes import prepare

KEY = ConnectionKey("app.internal", 443, True, True, None, None, None)


def _connect_failed(cause: BaseException) -> ConnectFailed:
    try:
        raise ConnectFailed("cannot connect to app.internal:443: it failed") from cause
    except ConnectFailed as exc:
        return exc


def _upstream(failures: int = 1) -> Upstream:
    circuit = CircuitBreaker(failures, 30.0, clock=lambda: 0.0)
    return Upstream("http://app.internal:80", "app.internal", 80, None, None, circuit)


def test_timeouts_are_a_frozen_value_without_bounds_by_default() -> None:
    timeouts = Timeouts()
    assert (timeouts.connect, timeouts.read, timeouts.total) == (None, None, None)
    with pytest.raises(AttributeError):
        timeouts.read = 1.0  # type: ignore[misc]
    assert Timeouts(2.0, 30.0) == Timeouts(connect=2.0, read=30.0, total=None)


def test_a_route_s_timeouts_become_the_forwarder_s() -> None:
    document = {
        "public_url": "https://edge.contoso.com",
        "routes": [
            {
                "name": "app",
                "upstream": "http://127.0.0.1:8081",
                "policy": {"public": True},
                "timeouts": {"connect": "1.5s", "read": "45s"},
            }
        ],
    }
    [route] = config.parse(document).routes
    prepared = prepare(route, Upstreams())
    assert prepared.timeouts == Timeouts(connect=1.5, read=45.0, total=None)
    assert prepared.audience == "app"


@pytest.mark.parametrize(
    ("exc", "kind", "detail"),
    [
        (
            _connect_failed(ssl.SSLCertVerificationError(1, "self-signed certificate")),
            "certificate",
            "upstream certificate refused: self-signed certificate",
        ),
        (
            _connect_failed(ssl.SSLError(1, "wrong version number")),
            "tls",
            "upstream TLS failure (SSLError): wrong version number",
        ),
        (
            _connect_failed(ConnectionRefusedError(111, "Connection refused")),
            "unreachable",
            "upstream failure (ConnectFailed): cannot connect to app.internal:443: it failed",
        ),
        (ConnectTimeout("connect timed out"), "timeout", "upstream timeout (ConnectTimeout)"),
        (ReadTimeout("silent for 1s"), "timeout", "upstream timeout (ReadTimeout)"),
        (TimeoutError(), "timeout", "upstream timeout (TimeoutError)"),
        (
            UpstreamClosed("closed early"),
            "broken",
            "upstream failure (UpstreamClosed): closed early",
        ),
        (BadResponse("malformed"), "broken", "upstream failure (BadResponse): malformed"),
        (
            aiohttp.ClientConnectorError(KEY, OSError(111, "refused")),
            "unreachable",
            "upstream failure (ClientConnectorError)",
        ),
        (
            aiohttp.ClientConnectorCertificateError(KEY, ssl.SSLCertVerificationError(1, "x")),
            "certificate",
            "upstream certificate refused: Cannot connect to host app.internal:443 ssl:True"
            " [SSLCertVerificationError: (1, 'x')]",
        ),
        (
            aiohttp.ServerDisconnectedError("https://app.internal/?code=secret"),
            "broken",
            "upstream failure (ServerDisconnectedError)",
        ),
        (ConnectionResetError(104, "reset"), "broken", "upstream failure (ConnectionResetError)"),
    ],
)
def test_each_foreign_exception_is_one_failure_whose_detail_names_its_cause(
    exc: Exception, kind: str, detail: str
) -> None:
    failure = failure_of(exc)
    assert isinstance(failure, IapError)
    assert (failure.kind, failure.detail) == (kind, detail)
    assert "code=secret" not in str(failure)


def test_an_exception_no_upstream_failure_explains_is_raised_as_it_is() -> None:
    bug = RuntimeError("a bug")
    with pytest.raises(RuntimeError) as info:
        failure_of(bug)
    assert info.value is bug


@pytest.mark.parametrize(
    "exc",
    [
        _connect_failed(ConnectionRefusedError(111, "Connection refused")),
        ConnectTimeout("connect timed out"),
        aiohttp.ClientConnectorError(KEY, OSError(111, "refused")),
    ],
)
def test_a_failure_to_connect_counts_against_the_circuit(exc: Exception) -> None:
    upstream = _upstream(failures=1)
    upstream.admit()
    upstream.failure(exc, Transfer())
    with pytest.raises(UpstreamFailure) as info:
        upstream.admit()
    assert (info.value.kind, info.value.detail) == (
        "circuit_open",
        "circuit open for http://app.internal:80",
    )


@pytest.mark.parametrize(
    "exc", [ReadTimeout("silent"), UpstreamClosed("closed early"), BadResponse("malformed")]
)
def test_a_slow_or_broken_answer_says_nothing_about_reachability(exc: Exception) -> None:
    upstream = _upstream(failures=1)
    upstream.admit()
    upstream.failure(exc, Transfer())
    upstream.admit()  # still closed


def test_a_body_over_the_limit_is_the_client_s_failure_not_the_upstream_s() -> None:
    upstream = _upstream(failures=1)
    transfer = Transfer(bytes_in=2048, body_too_large=True)
    failure = upstream.failure(ConnectFailed("the upload broke off"), transfer)
    assert (failure.kind, failure.detail) == (
        "body_too_large",
        "streamed body over limit after 2048 bytes",
    )
    assert not upstream.circuit.is_open


@pytest.mark.parametrize(
    ("kind", "error", "status"),
    [
        ("circuit_open", CircuitOpen, 503),
        ("timeout", GatewayTimeout, 504),
        ("body_too_large", PayloadTooLarge, 413),
        ("unreachable", BadGateway, 502),
        ("certificate", BadGateway, 502),
        ("tls", BadGateway, 502),
        ("broken", BadGateway, 502),
        ("handshake", BadGateway, 502),
    ],
)
def test_the_web_layer_answers_each_failure_with_its_status_and_a_generic_text(
    kind: str, error: type[Exception], status: int
) -> None:
    failure = UpstreamFailure(kind, "upstream failure (X): detail for the log")  # type: ignore[arg-type]
    answer = refusal(failure)
    assert type(answer) is error
    assert answer.status == status
    assert answer.detail == "upstream failure (X): detail for the log"
    assert "detail" not in answer.public


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_a_half_open_trial_the_client_ends_early_leaves_the_next_trial_possible() -> None:
    """The trial request of a half-open circuit whose body is over the limit (413) told the
    breaker nothing, which kept the circuit open until a restart."""
    clock = _Clock()
    circuit = CircuitBreaker(1, 30.0, clock=clock)
    upstream = Upstream("http://app.internal:80", "app.internal", 80, None, None, circuit)
    upstream.admit()
    upstream.failure(ConnectFailed("refused"), Transfer())  # opens the circuit
    clock.now = 31.0  # the cooldown is over: the next request is the trial
    request = make_mocked_request("POST", "/", headers={"Content-Length": "2048"})
    with pytest.raises(PayloadTooLarge):
        await forward(
            request,
            upstream,
            target="/",
            headers=[],
            reply_headers=[],
            max_body=1024,
            timeouts=Timeouts(),
            transfer=Transfer(),
        )
    upstream.admit()  # another trial is let through; it would raise circuit_open before
    with pytest.raises(UpstreamFailure, match="circuit open"):
        upstream.admit()  # but only one at a time


def test_a_streamed_body_over_the_limit_ends_the_trial_without_a_verdict() -> None:
    clock = _Clock()
    upstream = Upstream(
        "http://app.internal:80", "app.internal", 80, None, None, CircuitBreaker(1, 30.0, clock)
    )
    upstream.admit()
    upstream.failure(ConnectFailed("refused"), Transfer())
    clock.now = 31.0
    upstream.admit()  # the trial
    upstream.failure(ConnectFailed("upload broke"), Transfer(bytes_in=9, body_too_large=True))
    upstream.admit()  # the next trial
