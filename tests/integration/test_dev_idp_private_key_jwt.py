"""``private_key_jwt`` at the dev IdP: Entra certificate credentials (RFC 7523 §3), judged
before any signature check, each refusal leaving the code unredeemed.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

import aiohttp
import pytest
import trustme

from iap.dev.idp import SERVICES, TENANT_A, TENANT_B, USERS, RunningDevIdP, dev_idp_app
from iap.domain.client_auth import assertion_form, client_assertion
from tests.support.client_assertions import (
    assert_refused,
    assertion_claims,
    assertion_fields,
    b64,
    cert_idp,
    certificate,
    forged,
    now_of,
    redeem_with,
    sign_claims,
    tampered_payload,
    tampered_signature,
)
from tests.support.dev_idp import (
    CLIENT_ID,
    CLIENT_SECRET,
    REDIRECT_URI,
    basic_auth,
    client,
    idp,
    redeem,
    service_token,
    sign_in,
    token_url,
    verify_id_token,
)

__all__ = ["cert_idp", "client", "idp"]


async def test_private_key_jwt_redeems_a_code_and_refreshes(
    cert_idp: RunningDevIdP, client: aiohttp.ClientSession
) -> None:
    auth = await sign_in(client, cert_idp, "alice")
    fields = assertion_form(
        certificate(),
        jti=secrets.token_urlsafe(32),
        client_id=CLIENT_ID,
        token_endpoint=token_url(cert_idp),
        now=now_of(cert_idp),
    )
    status, body = await redeem_with(client, cert_idp, auth, fields)
    assert status == 200, body
    claims = await verify_id_token(client, cert_idp, body["id_token"], TENANT_A, auth.nonce)
    assert claims["oid"] == USERS["alice"].oid
    fields = assertion_form(
        certificate(),
        jti=secrets.token_urlsafe(32),
        client_id=CLIENT_ID,
        token_endpoint=token_url(cert_idp),
        now=now_of(cert_idp),
    )
    refresh = {"grant_type": "refresh_token", "refresh_token": body["refresh_token"], **fields}
    async with client.post(token_url(cert_idp), data=refresh) as resp:
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["refresh_token"] != body["refresh_token"]
    assert (cert_idp.idp.code_grants, cert_idp.idp.refresh_grants) == (1, 1)
    assert cert_idp.idp.client_assertions == 2


async def test_secret_still_works_beside_a_certificate(
    cert_idp: RunningDevIdP, client: aiohttp.ClientSession
) -> None:
    auth = await sign_in(client, cert_idp, "alice")
    status, body = await redeem(client, cert_idp, auth)
    assert status == 200, body
    assert cert_idp.idp.client_assertions == 0


REFUSED_ASSERTIONS = [
    pytest.param(lambda idp: sign_claims(assertion_claims(idp), 1, 1), 700027, id="other-cert"),
    pytest.param(lambda idp: sign_claims(assertion_claims(idp), 1, 0), 700027, id="other-key"),
    pytest.param(tampered_signature, 700027, id="tampered-signature"),
    pytest.param(tampered_payload, 700027, id="tampered-payload"),
    pytest.param(lambda idp: forged(idp, "HS256"), 700027, id="alg-HS256"),
    pytest.param(lambda idp: forged(idp, "none"), 700027, id="alg-none"),
    pytest.param(
        lambda idp: sign_claims(assertion_claims(idp, aud=token_url(idp, TENANT_B))),
        70002,
        id="aud-other-tenant",
    ),
    pytest.param(
        lambda idp: sign_claims(assertion_claims(idp, aud=f"{idp.url}/{TENANT_A}")),
        70002,
        id="aud-not-token-endpoint",
    ),
    pytest.param(
        lambda idp: client_assertion(
            certificate(),
            jti=secrets.token_urlsafe(32),
            client_id=CLIENT_ID,
            token_endpoint=token_url(idp),
            now=now_of(idp) - 900,
        ),
        700024,
        id="expired",
    ),
    pytest.param(
        lambda idp: sign_claims(assertion_claims(idp, nbf=now_of(idp) + 120)),
        700024,
        id="nbf-ahead",
    ),
    pytest.param(
        lambda idp: sign_claims(assertion_claims(idp, iat=now_of(idp) + 120)),
        700024,
        id="iat-ahead",
    ),
    pytest.param(
        lambda idp: sign_claims(assertion_claims(idp, exp=now_of(idp) + 601)),
        700024,
        id="lifetime-over-ten-minutes",
    ),
    pytest.param(
        lambda idp: sign_claims(assertion_claims(idp, sub="someone-else")), 700021, id="sub"
    ),
    pytest.param(
        lambda idp: sign_claims(assertion_claims(idp, iss="someone-else")), 700021, id="iss"
    ),
    pytest.param(lambda idp: sign_claims(assertion_claims(idp, jti=None)), 70002, id="no-jti"),
    pytest.param(
        lambda idp: sign_claims(assertion_claims(idp, exp=str(now_of(idp) + 300))),
        70002,
        id="exp-not-integer",
    ),
    pytest.param(lambda idp: "not.a.jwt", 70002, id="garbage"),
    pytest.param(lambda idp: "e30.e30", 70002, id="two-segments"),
    pytest.param(lambda idp: f"{b64(b'[]')}.e30.", 70002, id="header-not-an-object"),
]


@pytest.mark.parametrize(("make", "code"), REFUSED_ASSERTIONS)
async def test_bad_client_assertions_are_refused(
    cert_idp: RunningDevIdP,
    client: aiohttp.ClientSession,
    make: Callable[[RunningDevIdP], str],
    code: int,
) -> None:
    auth = await sign_in(client, cert_idp, "alice")
    status, body = await redeem_with(client, cert_idp, auth, assertion_fields(make(cert_idp)))
    assert_refused(cert_idp, auth, status, body, code)
    assert cert_idp.idp.client_assertions == 0


async def test_iat_is_optional(cert_idp: RunningDevIdP, client: aiohttp.ClientSession) -> None:
    auth = await sign_in(client, cert_idp, "alice")
    assertion = sign_claims(assertion_claims(cert_idp, iat=None))
    status, body = await redeem_with(client, cert_idp, auth, assertion_fields(assertion))
    assert status == 200, body


async def test_replayed_jti_is_refused(
    cert_idp: RunningDevIdP, client: aiohttp.ClientSession
) -> None:
    assertion = sign_claims(assertion_claims(cert_idp, jti="once"))
    first = await sign_in(client, cert_idp, "alice")
    status, _ = await redeem_with(client, cert_idp, first, assertion_fields(assertion))
    assert status == 200
    cert_idp.idp.code_grants = 0
    for replay in (assertion, sign_claims(assertion_claims(cert_idp, jti="once"))):
        auth = await sign_in(client, cert_idp, "alice")
        status, body = await redeem_with(client, cert_idp, auth, assertion_fields(replay))
        assert_refused(cert_idp, auth, status, body, 70002)
        assert "used before" in body["error_description"]
    assert cert_idp.idp.client_assertions == 1


async def test_assertion_with_a_secret_is_refused(
    cert_idp: RunningDevIdP, client: aiohttp.ClientSession
) -> None:
    auth = await sign_in(client, cert_idp, "alice")
    fields = assertion_fields(sign_claims(assertion_claims(cert_idp)))
    status, body = await redeem_with(
        client, cert_idp, auth, {**fields, "client_secret": CLIENT_SECRET}
    )
    assert_refused(cert_idp, auth, status, body, 90023)
    basic = basic_auth(CLIENT_ID, CLIENT_SECRET)
    status, body = await redeem_with(client, cert_idp, auth, fields, headers=basic)
    assert_refused(cert_idp, auth, status, body, 90023)
    fields["client_assertion_type"] = "urn:ietf:params:oauth:client-assertion-type:saml2-bearer"
    status, body = await redeem_with(client, cert_idp, auth, fields)
    assert_refused(cert_idp, auth, status, body, 70002)
    assert cert_idp.idp.client_assertions == 0


async def test_assertion_without_a_registered_certificate_is_refused(
    idp: RunningDevIdP, client: aiohttp.ClientSession
) -> None:
    auth = await sign_in(client, idp, "alice")
    fields = assertion_form(
        certificate(),
        jti=secrets.token_urlsafe(32),
        client_id=CLIENT_ID,
        token_endpoint=token_url(idp),
        now=now_of(idp),
    )
    status, body = await redeem_with(client, idp, auth, fields)
    assert_refused(idp, auth, status, body, 700027)


async def test_assertion_for_an_unknown_client_id_is_refused(
    cert_idp: RunningDevIdP, client: aiohttp.ClientSession
) -> None:
    auth = await sign_in(client, cert_idp, "alice")
    fields = assertion_fields(sign_claims(assertion_claims(cert_idp)))
    fields["client_id"] = "11111111-0000-4000-8000-000000000000"
    status, body = await redeem_with(client, cert_idp, auth, fields)
    assert (status, body["error"], body["error_codes"]) == (400, "unauthorized_client", [700016])
    assert auth.code in cert_idp.idp.codes


def test_a_non_rsa_certificate_cannot_be_registered() -> None:
    ec_leaf = trustme.CA().issue_cert("client.iap.test")
    with pytest.raises(ValueError, match="RSA"):
        dev_idp_app(
            "http://127.0.0.1:8081",
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            redirect_uris=[REDIRECT_URI],
            client_certificate_pem=ec_leaf.cert_chain_pems[0].bytes(),
        )


async def test_a_service_has_no_certificate_credential(
    cert_idp: RunningDevIdP, client: aiohttp.ClientSession
) -> None:
    orders = SERVICES["orders-service"]
    fields = assertion_fields(sign_claims(assertion_claims(cert_idp)))
    form = {**fields, "client_id": orders.client_id, "client_secret": None}
    status, body = await service_token(client, cert_idp, orders, fields=form)
    assert (status, body["error"], body["error_codes"]) == (401, "invalid_client", [700027])
    assert cert_idp.idp.client_credentials_grants == 0
