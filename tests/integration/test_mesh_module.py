"""``iap.mesh`` over loopback sockets (issue 4): a JWKS server publishing ``KeySet.jwks``, a
service behind ``middleware(Verifier(...))`` and a downstream service reached with ``call``.
Tokens are minted by ``iap.domain.tokens``; every clock is injected."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import importlib.util
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from joserfc import jws
from multidict import CIMultiDict

from iap import mesh
from iap.domain.tokens import KeySet, SigningKey, load_key, mint, new_key_pem, user_claims
from iap.mesh import IDENTITY, InvalidToken, KeysUnavailable, MeshIdentity, Verifier
from tests.support.identities import ALICE as BASE_ALICE

T0 = 1_700_000_000
ISSUER = "https://edge.test/.iap"
AUDIENCE = "orders"
TTL = 300
ALICE = dataclasses.replace(BASE_ALICE, roles=("staff",), groups=())
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "mesh_service.py"


@dataclass
class FakeClock:
    now: float = float(T0)

    def __call__(self) -> float:
        return self.now


def new_key() -> SigningKey:
    return load_key(new_key_pem(), created=T0 - 3600)


def key_set(*keys: SigningKey) -> KeySet:
    return KeySet(keys, publish_before_use=0, ttl=TTL)


def claims_for(*, now: int = T0, **changes: Any) -> dict[str, Any]:
    claims = user_claims(
        ALICE, issuer=ISSUER, audience=AUDIENCE, sid="sid-1", now=now, ttl=TTL, jti="jti-1"
    )
    claims.update(changes)
    return claims


def token(key: SigningKey, *, now: int = T0, **changes: Any) -> str:
    """A token exactly as iap mints it, with ``changes`` to the claims."""
    return mint(key, claims_for(now=now, **changes))


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def signing_input(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"


def es256_with_header(key: SigningKey, **members: Any) -> str:
    """A correctly signed token whose header has extra ``members``."""
    header = {"alg": "ES256", "kid": key.kid, "typ": "JWT", **members}
    payload = json.dumps(claims_for()).encode()
    return jws.serialize_compact(header, payload, key.key, algorithms=["ES256"])


def flipped(text: str, index: int) -> str:
    return text[:index] + ("B" if text[index] == "A" else "A") + text[index + 1 :]


# --- servers ----------------------------------------------------------------------------


Serve = Callable[[web.Application], Awaitable[str]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    runners: list[web.AppRunner] = []

    async def start(app: web.Application) -> str:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield start
    for runner in reversed(runners):
        await runner.cleanup()


@dataclass
class JwksServer:
    """Publishes ``keys.jwks(clock())`` like iap's /.iap/jwks.json and counts the fetches."""

    keys: KeySet
    clock: FakeClock
    url: str = ""
    fetches: int = 0
    status: int = 200
    runner: web.AppRunner | None = None

    async def handle(self, _: web.Request) -> web.Response:
        self.fetches += 1
        if self.status != 200:
            return web.Response(status=self.status)
        return web.json_response(self.keys.jwks(self.clock()))

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/jwks.json", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/jwks.json"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def key() -> SigningKey:
    return new_key()


@pytest.fixture
async def jwks(key: SigningKey, clock: FakeClock) -> AsyncIterator[JwksServer]:
    server = JwksServer(key_set(key), clock)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def verifier(jwks: JwksServer, clock: FakeClock) -> AsyncIterator[Verifier]:
    async with Verifier(jwks.url, issuer=ISSUER, audience=AUDIENCE, clock=clock) as verifier:
        yield verifier


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


@dataclass
class Service:
    url: str
    seen: list[MeshIdentity | None] = field(default_factory=list)


def service_app(
    verifier: Verifier, seen: list[MeshIdentity | None], **options: Any
) -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        identity = request.get(IDENTITY)
        seen.append(identity)
        if identity is None:
            return web.json_response({"anonymous": True})
        return web.json_response(
            {
                "subject": identity.subject,
                "tid": identity.tid,
                "oid": identity.oid,
                "name": identity.name,
                "email": identity.email,
                "roles": list(identity.roles),
                "audience": identity.audience,
                "actor": identity.actor,
                "jti": identity.claims["jti"],
            }
        )

    app = web.Application(middlewares=[mesh.middleware(verifier, **options)])
    app.router.add_get("/hello", handler)
    return app


@pytest.fixture
async def service(verifier: Verifier, serve: Serve) -> Service:
    seen: list[MeshIdentity | None] = []
    return Service(await serve(service_app(verifier, seen)), seen)


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


# --- accepted -----------------------------------------------------------------------------


async def test_a_minted_token_is_accepted_and_the_handler_sees_the_identity(
    service: Service, key: SigningKey, jwks: JwksServer, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{service.url}/hello", headers=bearer(token(key))) as answer:
        assert answer.status == 200
        body = await answer.json()
    assert body == {
        "subject": "tid-1:oid-alice",
        "tid": "tid-1",
        "oid": "oid-alice",
        "name": "Alice",
        "email": "alice@contoso.com",
        "roles": ["staff"],
        "audience": AUDIENCE,
        "actor": None,
        "jti": "jti-1",
    }
    assert len(service.seen) == 1
    assert jwks.fetches == 1


async def test_an_audience_list_and_an_actor_are_understood(
    verifier: Verifier, key: SigningKey
) -> None:
    identity = await verifier.verify(
        token(key, aud=["billing", AUDIENCE], act={"sub": "tid-1:app-frontend"}, nbf=None)
    )
    assert identity.audience == AUDIENCE
    assert identity.actor == "tid-1:app-frontend"
    assert "claims" not in repr(identity)
    assert "jti-1" not in repr(identity)


async def test_times_are_checked_within_the_leeway(
    verifier: Verifier, key: SigningKey, clock: FakeClock
) -> None:
    minted = token(key)
    clock.now = T0 + TTL + 29
    assert (await verifier.verify(minted)).subject == ALICE.subject
    clock.now = T0 + TTL + 30
    with pytest.raises(InvalidToken) as refused:
        await verifier.verify(minted)
    assert refused.value.reason == "exp"
    clock.now = T0 - 31
    with pytest.raises(InvalidToken) as refused:
        await verifier.verify(minted)
    assert refused.value.reason == "nbf"


# --- refused ------------------------------------------------------------------------------


def hs256_with_public_key(key: SigningKey) -> str:
    """CVE-2015-9235: an HMAC token keyed with the verifier's public key."""
    header = {"alg": "HS256", "kid": key.kid, "typ": "JWT"}
    message = signing_input(header, claims_for())
    public_pem = key.key.as_pem(private=False)
    signature = hmac.new(public_pem, message.encode(), hashlib.sha256).digest()
    return f"{message}.{b64(signature)}"


def alg_none(key: SigningKey) -> str:
    return signing_input({"alg": "none", "kid": key.kid, "typ": "JWT"}, claims_for()) + "."


def tampered_signature(key: SigningKey) -> str:
    head, payload, signature = token(key).split(".")
    return f"{head}.{payload}.{flipped(signature, 20)}"


def tampered_payload(key: SigningKey) -> str:
    head, _, signature = token(key).split(".")
    forged = b64(json.dumps(claims_for(sub="tid-1:oid-mallory", oid="oid-mallory")).encode())
    return f"{head}.{forged}.{signature}"


def signed_by_an_unpublished_key_with_jwk_header(_: SigningKey) -> str:
    attacker = new_key()
    return es256_with_header(attacker, jwk=attacker.key.as_dict(private=False))


REFUSED: dict[str, tuple[Callable[[SigningKey], dict[str, str]], str | None]] = {
    "wrong audience": (lambda k: bearer(token(k, aud="billing")), "aud"),
    "audience list without ours": (lambda k: bearer(token(k, aud=["billing", "x"])), "aud"),
    "wrong issuer": (lambda k: bearer(token(k, iss="https://evil.test/.iap")), "iss"),
    "expired": (lambda k: bearer(token(k, now=T0 - TTL - 31)), "exp"),
    "float exp": (lambda k: bearer(token(k, exp=T0 + 60.5)), "exp"),
    "alg none": (lambda k: bearer(alg_none(k)), "alg"),
    "HS256 keyed with the public key": (lambda k: bearer(hs256_with_public_key(k)), "alg"),
    "tampered signature": (lambda k: bearer(tampered_signature(k)), "signature"),
    "tampered payload": (lambda k: bearer(tampered_payload(k)), "signature"),
    "embedded jwk": (lambda k: bearer(signed_by_an_unpublished_key_with_jwk_header(k)), "header"),
    "jku": (lambda k: bearer(es256_with_header(k, jku="https://evil.test/jwks")), "header"),
    "x5u": (lambda k: bearer(es256_with_header(k, x5u="https://evil.test/cert")), "header"),
    "x5c": (lambda k: bearer(es256_with_header(k, x5c=["MIIB"])), "header"),
    "crit": (lambda k: bearer(es256_with_header(k, crit=["kid"])), "header"),
    "not a JWT": (lambda _: bearer("not.a.jwt!"), "malformed"),
    "basic scheme": (lambda k: {"Authorization": f"Basic {token(k)}"}, "scheme"),
    "missing": (lambda _: {}, None),
    "empty bearer": (lambda _: {"Authorization": "Bearer "}, "missing"),
}


@pytest.mark.parametrize("case", REFUSED)
async def test_a_refused_token_gets_401_and_never_reaches_the_handler(
    case: str,
    service: Service,
    verifier: Verifier,
    key: SigningKey,
    http: aiohttp.ClientSession,
) -> None:
    build, reason = REFUSED[case]
    headers = build(key)
    async with http.get(f"{service.url}/hello", headers=headers) as answer:
        assert answer.status == 401
        assert answer.headers["Cache-Control"] == "no-store"
        body = await answer.text()
        challenge = answer.headers["WWW-Authenticate"]
    assert service.seen == []
    if reason is None:  # RFC 6750 §3.1: no error code without any credentials
        assert challenge == "Bearer"
        assert json.loads(body) == {"error": "unauthorized"}
        return
    assert challenge == 'Bearer error="invalid_token"'
    assert json.loads(body) == {"error": "invalid_token"}
    if reason not in ("scheme", "missing"):  # refused before the token is even read
        sent = headers["Authorization"].partition(" ")[2]
        with pytest.raises(InvalidToken) as refused:
            await verifier.verify(sent)
        assert refused.value.reason == reason
        assert sent not in str(refused.value)


@pytest.mark.parametrize("case", ["alg none", "HS256 keyed with the public key", "x5c", "jku"])
async def test_a_refused_header_costs_no_jwks_fetch(
    case: str, verifier: Verifier, key: SigningKey, jwks: JwksServer
) -> None:
    sent = REFUSED[case][0](key)["Authorization"].partition(" ")[2]
    with pytest.raises(InvalidToken):
        await verifier.verify(sent)
    assert jwks.fetches == 0


async def test_the_401_carries_the_correlation_id(
    service: Service, http: aiohttp.ClientSession
) -> None:
    headers = {"X-Correlation-ID": "corr-1"}
    async with http.get(f"{service.url}/hello", headers=headers) as answer:
        assert answer.status == 401
        assert await answer.json() == {"error": "unauthorized", "correlation_id": "corr-1"}


async def test_a_repeated_authorization_header_is_refused(
    service: Service, key: SigningKey, http: aiohttp.ClientSession
) -> None:
    headers: CIMultiDict[str] = CIMultiDict()
    headers.add("Authorization", f"Bearer {token(key)}")
    headers.add("Authorization", f"Bearer {token(key)}")
    async with http.get(f"{service.url}/hello", headers=headers) as answer:
        assert answer.status == 401
    assert service.seen == []


async def test_optional_mode_lets_anonymous_requests_through_but_not_invalid_tokens(
    verifier: Verifier, key: SigningKey, serve: Serve, http: aiohttp.ClientSession
) -> None:
    seen: list[MeshIdentity | None] = []
    url = await serve(service_app(verifier, seen, required=False))
    async with http.get(f"{url}/hello") as answer:
        assert answer.status == 200
        assert await answer.json() == {"anonymous": True}
    async with http.get(f"{url}/hello", headers=bearer(token(key, aud="billing"))) as answer:
        assert answer.status == 401
    async with http.get(f"{url}/hello", headers=bearer(token(key))) as answer:
        assert answer.status == 200
    assert [identity and identity.subject for identity in seen] == [None, ALICE.subject]


async def test_a_custom_header_carries_the_bare_token(
    verifier: Verifier, key: SigningKey, serve: Serve, http: aiohttp.ClientSession
) -> None:
    seen: list[MeshIdentity | None] = []
    url = await serve(service_app(verifier, seen, header="X-IAP-Token"))
    async with http.get(f"{url}/hello", headers={"X-IAP-Token": token(key)}) as answer:
        assert answer.status == 200
    async with http.get(f"{url}/hello", headers=bearer(token(key))) as answer:
        assert answer.status == 401  # only the configured header counts
    assert len(seen) == 1


def signed_payload(key: SigningKey, payload: bytes, **header: Any) -> str:
    """A correctly signed token over arbitrary ``payload`` bytes."""
    protected = {"alg": "ES256", "kid": key.kid, "typ": "JWT", **header}
    return jws.serialize_compact(protected, payload, key.key, algorithms=["ES256"])


def unsigned(header: bytes, rest: str = "e30.c2ln") -> str:
    return f"{b64(header)}.{rest}"


MALFORMED: dict[str, tuple[Callable[[SigningKey], str], str]] = {
    "too long": (lambda k: token(k, name="x" * mesh.MAX_TOKEN_LENGTH), "malformed"),
    "two segments": (lambda k: token(k).rsplit(".", 1)[0], "malformed"),
    "padding": (lambda k: token(k) + "=", "malformed"),
    "stray bits": (lambda _: unsigned(b'{"alg":"ES256"}')[:-1] + "9.e30.c2ln", "malformed"),
    "header not an object": (lambda _: unsigned(b'["ES256"]'), "malformed"),
    "header not UTF-8": (lambda _: unsigned(b"\xff\xfe"), "malformed"),
    "duplicate alg": (lambda _: unsigned(b'{"alg":"none","alg":"ES256"}'), "malformed"),
    "typ": (lambda k: signed_payload(k, b"{}", typ="at+jwt"), "header"),
    "no kid": (lambda _: unsigned(b'{"alg":"ES256","typ":"JWT"}'), "header"),
    "payload not JSON": (lambda k: signed_payload(k, b"not json"), "malformed"),
    "payload a list": (lambda k: signed_payload(k, b"[1]"), "malformed"),
    "no iat": (lambda k: mint(k, {**claims_for(), "iat": None}), "iat"),
    "iat in the future": (lambda k: token(k, iat=T0 + 31), "iat"),
    "no sub": (lambda k: token(k, sub=""), "malformed"),
    "no tid": (lambda k: token(k, tid=None), "malformed"),
    "name not a string": (lambda k: token(k, name=7), "malformed"),
    "roles not a list": (lambda k: token(k, roles="admin"), "malformed"),
    "act without sub": (lambda k: token(k, act={"client_id": "x"}), "malformed"),
    "aud of numbers": (lambda k: token(k, aud=[AUDIENCE, 1]), "aud"),
}


@pytest.mark.parametrize("case", MALFORMED)
async def test_malformed_tokens_and_claims_are_refused(
    case: str, verifier: Verifier, key: SigningKey
) -> None:
    build, reason = MALFORMED[case]
    with pytest.raises(InvalidToken) as refused:
        await verifier.verify(build(key))
    assert refused.value.reason == reason


# --- the JWKS cache -----------------------------------------------------------------------


async def test_an_unknown_kid_refetches_once_then_verifies_after_a_rotation(
    verifier: Verifier, key: SigningKey, jwks: JwksServer, clock: FakeClock
) -> None:
    await verifier.verify(token(key))
    assert jwks.fetches == 1

    second, third = new_key(), new_key()
    jwks.keys = key_set(key, second)  # iap published a new key
    assert (await verifier.verify(token(second))).subject == ALICE.subject
    assert jwks.fetches == 2

    jwks.keys = key_set(key, second, third)
    with pytest.raises(InvalidToken) as refused:  # within refetch_interval: no fetch
        await verifier.verify(token(third))
    assert refused.value.reason == "kid"
    assert jwks.fetches == 2
    await verifier.verify(token(key))  # known kids still verify, from the cache
    assert jwks.fetches == 2

    clock.now = T0 + 300
    assert (await verifier.verify(token(third, now=T0 + 300))).subject == ALICE.subject
    assert jwks.fetches == 3


async def test_a_kid_never_published_costs_one_fetch_per_interval(
    verifier: Verifier, key: SigningKey, jwks: JwksServer
) -> None:
    await verifier.verify(token(key))
    for _ in range(5):
        with pytest.raises(InvalidToken) as refused:
            await verifier.verify(token(new_key()))
        assert refused.value.reason == "kid"
    assert jwks.fetches == 2


async def test_concurrent_first_requests_share_one_fetch(
    verifier: Verifier, key: SigningKey, jwks: JwksServer
) -> None:
    identities = await asyncio.gather(*(verifier.verify(token(key)) for _ in range(20)))
    assert {identity.subject for identity in identities} == {ALICE.subject}
    assert jwks.fetches == 1


async def test_the_jwks_is_refreshed_after_an_hour(
    verifier: Verifier, key: SigningKey, jwks: JwksServer, clock: FakeClock
) -> None:
    await verifier.verify(token(key))
    clock.now = T0 + 3599
    await verifier.verify(token(key, now=T0 + 3599))
    assert jwks.fetches == 1
    clock.now = T0 + 3600
    await verifier.verify(token(key, now=T0 + 3600))
    assert jwks.fetches == 2


async def test_last_known_good_keys_verify_while_the_jwks_server_is_down(
    verifier: Verifier, key: SigningKey, jwks: JwksServer, clock: FakeClock
) -> None:
    await verifier.verify(token(key))
    await jwks.stop()
    clock.now = T0 + 2 * 3600  # the cache is due for a refresh, which fails
    assert (await verifier.verify(token(key, now=T0 + 7200))).subject == ALICE.subject
    clock.now = T0 + 24 * 3600  # a day after the last good fetch, the keys are too old
    with pytest.raises(KeysUnavailable):
        await verifier.verify(token(key, now=T0 + 24 * 3600))


async def test_a_failed_fetch_is_not_retried_at_once(
    verifier: Verifier, key: SigningKey, jwks: JwksServer, clock: FakeClock
) -> None:
    await verifier.verify(token(key))
    jwks.status = 500
    clock.now = T0 + 3600
    for _ in range(3):
        await verifier.verify(token(key, now=T0 + 3600))
    assert jwks.fetches == 2  # one failed refresh, then the backoff
    jwks.status = 200
    clock.now = T0 + 3600 + mesh.FAILURE_BACKOFF
    await verifier.verify(token(key, now=T0 + 3600))
    assert jwks.fetches == 3


async def test_no_jwks_at_all_is_a_503(
    key: SigningKey, jwks: JwksServer, service: Service, http: aiohttp.ClientSession
) -> None:
    jwks.status = 503
    async with http.get(f"{service.url}/hello", headers=bearer(token(key))) as answer:
        assert answer.status == 503
        assert await answer.json() == {"error": "temporarily_unavailable"}
    assert service.seen == []


async def test_unusable_jwks_members_are_ignored(
    key: SigningKey, clock: FakeClock, serve: Serve
) -> None:
    good = dict(key_set(key).jwks(T0)["keys"][0])
    twin = new_key()
    document = {
        "keys": [
            good,
            {**good, "kid": "rsa", "kty": "RSA"},
            {**good, "kid": "enc", "use": "enc"},
            {**good, "kid": "p384", "crv": "P-384"},
            {**good, "kid": "off-curve", "y": good["x"]},
            {"kty": "EC", "crv": "P-256", "kid": "no-coordinates"},
            {"kid": twin.kid, **{k: v for k, v in good.items() if k != "kid"}},
            {**dict(key_set(twin).jwks(T0)["keys"][0])},  # the same kid twice: ambiguous
            "not an object",
        ]
    }

    async def handle(_: web.Request) -> web.Response:
        return web.json_response(document)

    app = web.Application()
    app.router.add_get("/jwks.json", handle)
    url = await serve(app)
    async with Verifier(
        f"{url}/jwks.json", issuer=ISSUER, audience=AUDIENCE, clock=clock
    ) as verifier:
        assert (await verifier.verify(token(key))).subject == ALICE.subject
        with pytest.raises(InvalidToken) as refused:
            await verifier.verify(token(twin))
        assert refused.value.reason == "kid"


async def test_concurrent_tokens_with_a_new_kid_share_one_refetch(
    verifier: Verifier, key: SigningKey, jwks: JwksServer
) -> None:
    await verifier.verify(token(key))
    second = new_key()
    jwks.keys = key_set(key, second)
    await asyncio.gather(*(verifier.verify(token(second)) for _ in range(10)))
    assert jwks.fetches == 2


async def test_a_failed_refetch_for_an_unknown_kid_keeps_the_keys(
    verifier: Verifier, key: SigningKey, jwks: JwksServer
) -> None:
    await verifier.verify(token(key))
    jwks.status = 500
    with pytest.raises(InvalidToken) as refused:
        await verifier.verify(token(new_key()))
    assert refused.value.reason == "kid"
    assert (await verifier.verify(token(key))).subject == ALICE.subject
    assert jwks.fetches == 2


BROKEN_JWKS: dict[str, Callable[[], web.StreamResponse]] = {
    "not JSON": lambda: web.Response(text="<html>"),
    "a list": lambda: web.json_response([]),
    "keys not a list": lambda: web.json_response({"keys": {}}),
    "too large": lambda: web.Response(body=b" " * (mesh.MAX_JWKS_BYTES + 1)),
    "a redirect": lambda: web.Response(status=302, headers={"Location": "/elsewhere"}),
}


@pytest.mark.parametrize("case", BROKEN_JWKS)
async def test_a_broken_jwks_document_is_no_keys(
    case: str, key: SigningKey, clock: FakeClock, serve: Serve
) -> None:
    async def handle(_: web.Request) -> web.StreamResponse:
        return BROKEN_JWKS[case]()

    async def elsewhere(_: web.Request) -> web.Response:
        return web.json_response(key_set(key).jwks(T0))

    app = web.Application()
    app.router.add_get("/jwks.json", handle)
    app.router.add_get("/elsewhere", elsewhere)
    url = await serve(app)
    async with Verifier(f"{url}/jwks.json", issuer=ISSUER, audience=AUDIENCE) as verifier:
        with pytest.raises(KeysUnavailable):
            await verifier.verify(token(key))


def test_the_jwks_url_and_settings_are_checked() -> None:
    for url in ("ftp://iap/jwks.json", "/jwks.json", "https://user:pw@iap/jwks.json"):
        with pytest.raises(ValueError):
            Verifier(url, issuer=ISSUER, audience=AUDIENCE)
    with pytest.raises(ValueError):
        Verifier("https://iap/jwks.json", issuer=ISSUER, audience="")
    with pytest.raises(ValueError):
        Verifier("https://iap/jwks.json", issuer=ISSUER, audience=AUDIENCE, leeway=-1)


# --- east-west calls ----------------------------------------------------------------------


INCOMING = [
    ("Authorization", "Bearer minted.token.value"),
    ("X-Correlation-ID", "corr-1"),
    ("X-Request-ID", "req-1"),
    ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    ("tracestate", "congo=t61rcWkgMzE"),
    ("tracestate", "rojo=00f067aa0ba902b7"),
    ("baggage", "userId=alice"),
    ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
    ("x-b3-spanid", "e457b5a2e4d86bd1"),
    ("x-b3-parentspanid", "05e3ac9a4f6e3b90"),
    ("x-b3-sampled", "1"),
    ("x-b3-flags", "0"),
    ("Cookie", "_iap_session=secret"),
    ("X-IAP-Subject", "tid-1:oid-alice"),
    ("X-Forwarded-For", "203.0.113.9"),
    ("X-Other", "no"),
]
FORWARDED = {
    "Authorization": "Bearer minted.token.value",
    "X-Correlation-ID": "corr-1",
    "X-Request-ID": "req-1",
    "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "tracestate": "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7",
    "baggage": "userId=alice",
    "x-b3-traceid": "80f198ee56343ba864fe8b2a57d3eff7",
    "x-b3-spanid": "e457b5a2e4d86bd1",
    "x-b3-parentspanid": "05e3ac9a4f6e3b90",
    "x-b3-sampled": "1",
    "x-b3-flags": "0",
}


def incoming(*extra: tuple[str, str]) -> CIMultiDict[str]:
    return CIMultiDict([*INCOMING, *extra])


async def test_forward_headers_keeps_exactly_the_listed_headers(
    serve: Serve, http: aiohttp.ClientSession
) -> None:
    async def echo(request: web.Request) -> web.Response:
        return web.json_response(mesh.forward_headers(request))

    app = web.Application()
    app.router.add_get("/", echo)
    url = await serve(app)
    async with http.get(url, headers=incoming()) as answer:
        assert await answer.json() == FORWARDED
    # An ambiguous repeated header is dropped rather than guessed at (W3C Trace Context §3.2).
    repeated = incoming(("traceparent", "00-" + "1" * 32 + "-" + "2" * 16 + "-01"))
    async with http.get(url, headers=repeated) as answer:
        assert "traceparent" not in await answer.json()
    async with http.get(url, headers={"Cookie": "a=b"}) as answer:
        assert await answer.json() == {}


def test_forward_headers_takes_the_token_from_a_custom_header() -> None:
    request = make_mocked_request(
        "GET", "/", headers=CIMultiDict([("X-IAP-Token", "t"), ("Authorization", "Basic x")])
    )
    assert mesh.forward_headers(request, header="X-IAP-Token") == {"X-IAP-Token": "t"}


async def test_call_sends_the_forwarded_headers_downstream(
    serve: Serve, http: aiohttp.ClientSession
) -> None:
    received: list[CIMultiDict[str]] = []

    async def downstream(request: web.Request) -> web.Response:
        received.append(CIMultiDict(request.headers))
        return web.json_response({"ok": True})

    async def moved(_: web.Request) -> web.Response:
        raise web.HTTPFound("/downstream")

    down = web.Application()
    down.router.add_get("/downstream", downstream)
    down.router.add_get("/moved", moved)
    down_url = await serve(down)

    async def handler(request: web.Request) -> web.Response:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
            async with await mesh.call(
                session,
                "GET",
                f"{down_url}/downstream",
                request=request,
                headers={"X-Request-ID": "req-2", "Accept": "application/json"},
            ) as answer:
                assert answer.status == 200
            async with await mesh.call(
                session, "GET", f"{down_url}/moved", request=request
            ) as answer:
                status = answer.status
        return web.json_response({"redirect": status})

    app = web.Application()
    app.router.add_get("/", handler)
    url = await serve(app)
    async with http.get(url, headers=incoming()) as answer:
        assert await answer.json() == {"redirect": 302}  # not followed
    [sent] = received
    expected = {**FORWARDED, "X-Request-ID": "req-2"}  # given headers win
    for name, value in expected.items():
        assert sent.getall(name) == [value]
    assert sent["Accept"] == "application/json"
    for name in ("Cookie", "X-IAP-Subject", "X-Forwarded-For", "X-Other"):
        assert name not in sent


# --- the example ------------------------------------------------------------------------


@pytest.fixture
def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mesh_service_example", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_the_example_services_verify_and_forward(
    example: ModuleType,
    verifier: Verifier,
    key: SigningKey,
    serve: Serve,
    http: aiohttp.ClientSession,
) -> None:
    b_url = await serve(example.service_b(verifier))
    a_url = await serve(example.service_a(verifier, b_url))
    headers = {**bearer(token(key)), "X-Correlation-ID": "corr-9"}
    async with http.get(f"{a_url}/whoami", headers=headers) as answer:
        assert answer.status == 200
        body = await answer.json()
    assert body == {
        "service": "a",
        "subject": ALICE.subject,
        "email": ALICE.email,
        "b": {
            "service": "b",
            "subject": ALICE.subject,
            "roles": ["staff"],
            "correlation_id": "corr-9",
        },
    }
    async with http.get(f"{a_url}/whoami") as answer:
        assert answer.status == 401
