"""What iap does while Redis is down (issue 15, point 3), against a real redis-server that
demands credentials (``requirepass``, or an ACL user limited to ``iap:*`` keys) and is
stopped and started again mid-test:

- a signed-in request, with the session in Redis or in the cookie (whose revocations live in
  Redis), answers 503 with ``Retry-After``, and nothing reaches the upstream;
- a sign-in answers 503 with ``Retry-After`` at the callback and sets no session;
- ``/readyz`` is 503 and says which store does not answer;
- once Redis is back, the same cookie works again, with no restart of iap.

A wrong password is refused the same way: 503 and an unready ``/readyz``, never a 500.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import StartEdge, Upstream
from tests.support.redis_server import RedisServer, start_redis_server
from tests.support.signin import SignInStack, Visitor, http, running_stack

__all__ = ["http"]

PASSWORD = "s3cret-redis-pw"
JSON = {"Accept": "application/json"}

AUTH = {
    "requirepass": (("--requirepass", PASSWORD), None),
    "acl_user": (
        ("--user", "default", "off", "--user", "iap", "on", f">{PASSWORD}", "~iap:*", "+@all"),
        "iap",
    ),
}


def password_file(directory: Path, password: str) -> Path:
    path = directory / "redis.password"
    path.write_text(password + "\n")
    return path


async def persistent_redis(directory: Path, auth: tuple[str, ...]) -> RedisServer:
    """A redis-server that keeps its data across a restart (append-only file, fsync always)."""
    data = directory / "redis-data"
    data.mkdir(exist_ok=True)
    persistence = ("--appendonly", "yes", "--appendfsync", "always", "--dir", str(data))
    return await start_redis_server(*persistence, *auth)


def redis_block(server: RedisServer, directory: Path, user: str | None, password: str) -> dict:
    block: dict[str, Any] = {
        "url": server.url,
        "password_file": str(password_file(directory, password)),
    }
    return block | ({"username": user} if user else {})


async def readyz(http: aiohttp.ClientSession, stack: SignInStack) -> tuple[int, dict[str, Any]]:
    async with http.get(f"{stack.edge.admin_url}/readyz") as answer:
        return answer.status, json.loads(await answer.read())


async def first_success(visitor: Visitor, path: str) -> int:
    """Ask again until iap forwards (200); the number of 503s before. Bounded by a guard."""
    refused = 0
    async with asyncio.timeout(20):  # a hang guard, not a performance bound
        while (answer := await visitor.get(path, headers=JSON)).status != 200:
            assert answer.status == 503, answer
            refused += 1
    return refused


@pytest.fixture(params=sorted(AUTH))
def auth(request: pytest.FixtureRequest) -> tuple[tuple[str, ...], str | None]:
    return AUTH[request.param]


@pytest.fixture(params=["redis", "cookie"])
def store(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def redis_stack(
    upstream: Upstream,
    start_edge: StartEdge,
    tmp_path: Path,
    auth: tuple[tuple[str, ...], str | None],
    store: str,
) -> AsyncIterator[tuple[SignInStack, list[RedisServer]]]:
    args, user = auth
    servers = [await persistent_redis(tmp_path, args)]
    redis = redis_block(servers[0], tmp_path, user, PASSWORD)
    try:
        async with running_stack(
            upstream, start_edge, tmp_path, session={"store": store}, redis=redis
        ) as running:
            yield running, servers
            await running.edge.edge.stop()
    finally:
        await servers[-1].stop()


async def test_redis_down_fails_closed_then_recovers_without_restart(
    redis_stack: tuple[SignInStack, list[RedisServer]], http: aiohttp.ClientSession
) -> None:
    stack, servers = redis_stack
    alice = stack.visitor(http)
    assert (await alice.sign_in()).status == 302
    assert (await alice.get("/app/before", headers=JSON)).status == 200
    assert "Authorization" in stack.upstream.seen.requests[-1].headers  # alice's minted token
    status, body = await readyz(http, stack)
    assert status == 200, body
    assert body["stores"]["session"]["answers"] is True
    assert body["stores"]["session"]["backend"] == "redis"
    forwarded = len(stack.upstream.seen.requests)

    await servers[0].stop()
    answer = await alice.get("/app/during", headers=JSON)
    assert answer.status == 503
    assert answer.header("Retry-After") == "5"
    assert json.loads(answer.body)["error"] == "unavailable"
    bob = stack.visitor(http)  # a sign-in while Redis is down
    signed = await bob.sign_in(user="bob")
    assert signed.status == 503
    assert signed.header("Retry-After") == "5"
    assert "iap_session" not in bob.cookies
    assert len(stack.upstream.seen.requests) == forwarded  # nothing went upstream
    public = await alice.get("/welcome", headers=JSON)  # a public route needs no store
    assert public.status == 200
    assert len(stack.upstream.seen.requests) == forwarded + 1
    assert "Authorization" not in stack.upstream.seen.requests[-1].headers  # and no identity
    status, body = await readyz(http, stack)
    assert status == 503
    assert body["checks"]["session_store"] is False
    assert body["stores"]["session"]["answers"] is False
    audit = [line["reason"] for line in stack.edge.audit_lines() if line["status"] == 503]
    assert "store_unavailable" in audit

    servers.append(await servers[0].restart())
    await first_success(alice, "/app/after")  # the same cookie, no restart of iap
    assert stack.upstream.seen.requests[-1].path == "/app/after"
    assert (await bob.sign_in(user="bob")).status == 302  # sign-in works again
    assert (await bob.get("/app/bob", headers=JSON)).status == 200
    status, body = await readyz(http, stack)
    assert status == 200
    assert body["stores"]["session"]["answers"] is True


async def test_a_wrong_redis_password_is_refused_with_503_not_500(
    upstream: Upstream, start_edge: StartEdge, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    server = await start_redis_server("--requirepass", PASSWORD)
    redis = redis_block(server, tmp_path, None, "not-the-password")
    try:
        async with running_stack(
            upstream, start_edge, tmp_path, session={"store": "redis"}, redis=redis
        ) as stack:
            status, body = await readyz(http, stack)
            assert status == 503
            assert body["stores"]["session"] == {
                "backend": "redis",
                "answers": False,
                "error": "AuthenticationError",
            }
            assert "not-the-password" not in json.dumps(body)
            visitor = stack.visitor(http)
            signed = await visitor.sign_in()
            assert signed.status == 503
            assert signed.header("Retry-After") == "5"
            assert not visitor.cookies.get("iap_session")
            assert not stack.upstream.seen.requests
            lines = stack.edge.audit_lines()
            assert [line["status"] for line in lines if line["status"] >= 500] == [503]
            assert "not-the-password" not in stack.edge.audit.getvalue()
            await stack.edge.edge.stop()
    finally:
        await server.stop()
