"""The dev IdP's in-memory state: the ``DevIdP`` dataclass and the grants it keeps.

``DevIdP`` holds the client registration (a secret and, for ``private_key_jwt``, an optional
RSA certificate), the directory of tenants, users and services it serves (the demo one
unless given another; see ``users``), the token lifetimes and clock, the counters tests
read, the signing keys
(see ``signing``), the outstanding authorization codes, refresh token families and Graph
access tokens, and the ``jti`` of every unexpired client assertion it accepted (the replay
guard). It builds Entra-shaped ID and access token claims (delegated ones for users, v2.0 or
v1.0 app-only ones for the client-credentials grant), issues token responses and revokes
refresh families; the HTTP layer in ``app`` and ``grants`` drives it through
``app[DEV_IDP]``.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc.jwk import RSAKey

from iap.dev.idp import signing
from iap.dev.idp.users import (
    DEMO_DIRECTORY,
    MULTI_TENANT,
    TENANT_TEMPLATE,
    DemoService,
    DemoUser,
    Directory,
)
from iap.domain.client_auth import thumbprint

GRAPH_AUDIENCE = "https://graph.microsoft.com"
#: Entra's limit is 200 groups in a JWT; the demo keeps a lower one so that a user with
#: 150 groups exercises the overage path (``_claim_names``) without a huge fixture.
GROUPS_CLAIM_LIMIT = 100
#: ``iss`` of Entra v1.0 access tokens, issued when the API's manifest says
#: ``accessTokenAcceptedVersion`` null or 1
V1_ISSUER = "https://sts.windows.net/{tid}/"
_PRINCIPALS_NAMESPACE = uuid.UUID("8c0f3d5e-2a41-4b7c-9d6e-5f1a2b3c4d5e")


@dataclass
class Code:
    client_id: str
    redirect_uri: str
    code_challenge: str
    nonce: str
    user: DemoUser
    scopes: tuple[str, ...]
    sid: str
    expires: float


@dataclass
class Grant:
    client_id: str
    user: DemoUser
    scopes: tuple[str, ...]
    sid: str
    family: str
    expires: float


@dataclass
class AccessToken:
    user: DemoUser
    client_id: str
    expires: float


@dataclass(frozen=True)
class ClientCertificateKey:
    """The public key of the client's registered certificate and its ``x5t#S256``."""

    key: RSAKey
    x5t_s256: str

    @classmethod
    def from_pem(cls, cert_pem: bytes) -> ClientCertificateKey:
        """Parse a registered certificate; ``ValueError`` unless it is a PEM RSA certificate."""
        certificate = x509.load_pem_x509_certificate(cert_pem)
        public = certificate.public_key()
        if not isinstance(public, rsa.RSAPublicKey):
            raise ValueError("the client certificate must have an RSA key (PS256)")
        der = certificate.public_bytes(serialization.Encoding.DER)
        return cls(RSAKey.import_key(public), thumbprint(der))


IdTokenHook = Callable[[dict[str, Any], dict[str, Any]], str]


@dataclass
class DevIdP:
    """The IdP's state; tests read its counters and may rotate keys or shift the clock."""

    base_url: str
    client_id: str
    client_secret: str
    redirect_uris: tuple[str, ...]
    post_logout_redirect_uris: tuple[str, ...] = ()
    #: PEM of the certificate registered for ``private_key_jwt``; None: secrets only
    client_certificate_pem: bytes | None = None
    #: the tenants, users and service clients this IdP serves
    directory: Directory = DEMO_DIRECTORY
    id_token_ttl: int = 3600
    access_token_ttl: int = 3600
    refresh_token_ttl: int = 90 * 24 * 3600
    code_ttl: int = 600
    #: seconds the token endpoint waits before answering a refresh grant (widens races)
    refresh_delay: float = 0.0
    clock: Callable[[], float] = time.time
    #: when set, every endpoint answers with this status and no body (an IdP behind a load
    #: balancer that is down: 502, 503...); tests of IdP outages set it
    outage_status: int | None = None
    #: requests answered with ``outage_status``, by path
    outage_requests: list[str] = field(default_factory=list)
    #: when set, builds the compact ID token from (header, claims) instead of signing them;
    #: relying-party tests use it to forge bad tokens (``sign`` is available to it)
    id_token_hook: IdTokenHook | None = None
    #: shape of client-credentials access tokens: 2 (Entra v2.0) or 1 (v1.0: the
    #: ``sts.windows.net`` issuer and ``appid``), as the API's ``accessTokenAcceptedVersion``
    access_token_version: int = 2
    # counters
    discovery_fetches: int = 0
    jwks_fetches: int = 0
    authorizations: int = 0
    code_grants: int = 0
    refresh_grants: int = 0
    #: app-only access tokens issued by the client-credentials grant
    client_credentials_grants: int = 0
    client_assertions: int = 0
    graph_calls: int = 0
    #: requests that carried trace context (traceparent, b3...): a relying party's leak
    trace_headers_seen: int = 0
    logouts: list[str] = field(default_factory=list)
    # key material and grants
    keys: list[RSAKey] = field(default_factory=list)
    unpublished: set[str] = field(default_factory=set)
    signing_kid: str = ""
    codes: dict[str, Code] = field(default_factory=dict)
    redeemed_codes: dict[str, str] = field(default_factory=dict)
    refresh_tokens: dict[str, Grant] = field(default_factory=dict)
    access_tokens: dict[str, AccessToken] = field(default_factory=dict)
    #: ``jti`` -> ``exp`` of the client assertions accepted and not yet expired
    assertion_jtis: dict[str, int] = field(default_factory=dict)
    client_certificate: ClientCertificateKey | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.access_token_version not in (1, 2):
            raise ValueError("access_token_version must be 1 or 2")
        if not self.keys:
            self.rotate()
        if self.client_certificate_pem is not None:
            self.client_certificate = ClientCertificateKey.from_pem(self.client_certificate_pem)

    # keys ---------------------------------------------------------------------------

    def rotate(self, *, publish: bool = True) -> str:
        """Add a new RS256 key and sign with it from now on; returns its ``kid``.

        ``publish=False`` keeps the key out of the JWKS (an "unknown kid" for tests).
        """
        key = signing.new_key()
        kid = key.thumbprint()
        self.keys.append(key)
        if not publish:
            self.unpublished.add(kid)
        self.signing_kid = kid
        return kid

    def issuer(self, tenant: str) -> str:
        """``{base}/{tid}/v2.0``; the ``{tenantid}`` template for organizations/common."""
        tid = TENANT_TEMPLATE if tenant in MULTI_TENANT else tenant
        return f"{self.base_url}/{tid}/v2.0"

    def token_endpoint(self, tenant: str) -> str:
        """The token endpoint URL of ``tenant``: the ``aud`` a client assertion must carry."""
        return f"{self.base_url}/{tenant}/oauth2/v2.0/token"

    def jwks(self, tenant: str) -> dict[str, Any]:
        return signing.jwks(self.keys, self.unpublished, self.issuer(tenant))

    def sign(self, header: Mapping[str, Any], claims: Mapping[str, Any]) -> str:
        """Sign ``claims`` with the current key (RS256) unless ``header`` names another kid."""
        return signing.sign(self.keys, header.get("kid", self.signing_kid), header, claims)

    def verify(self, token: str) -> dict[str, Any]:
        """Claims of a token this IdP signed (any key, published or not); raises JoseError."""
        return signing.verify(self.keys, token)

    # tokens -------------------------------------------------------------------------

    def subject(self, user: DemoUser) -> str:
        """Entra's ``sub`` is pairwise: stable per user and application."""
        digest = hashlib.sha256(f"{self.client_id}:{user.tid}:{user.oid}".encode()).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    def id_token_claims(self, user: DemoUser, *, nonce: str | None, sid: str) -> dict[str, Any]:
        now = int(self.clock())
        claims: dict[str, Any] = {
            "ver": "2.0",
            "iss": f"{self.base_url}/{user.tid}/v2.0",
            "aud": self.client_id,
            "iat": now,
            "nbf": now,
            "exp": now + self.id_token_ttl,
            "tid": user.tid,
            "oid": user.oid,
            "sub": self.subject(user),
            "name": user.name,
            "preferred_username": user.email,
            "email": user.email,
            "sid": sid,
            "uti": secrets.token_urlsafe(16),
        }
        if nonce is not None:
            claims["nonce"] = nonce
        if user.roles:
            claims["roles"] = list(user.roles)
        if len(user.groups) > GROUPS_CLAIM_LIMIT:
            claims["_claim_names"] = {"groups": "src1"}
            endpoint = f"{self.base_url}/graph/v1.0/users/{user.oid}/getMemberObjects"
            claims["_claim_sources"] = {"src1": {"endpoint": endpoint}}
        elif user.groups:
            claims["groups"] = list(user.groups)
        return claims

    def access_token_claims(self, user: DemoUser, scopes: tuple[str, ...]) -> dict[str, Any]:
        """Claims of a delegated access token for Microsoft Graph (what the Graph stand-in
        accepts); ``scp`` lists the requested scopes minus ``openid`` and ``offline_access``."""
        now = int(self.clock())
        return {
            "ver": "2.0",
            "iss": f"{self.base_url}/{user.tid}/v2.0",
            "aud": GRAPH_AUDIENCE,
            "iat": now,
            "nbf": now,
            "exp": now + self.access_token_ttl,
            "tid": user.tid,
            "oid": user.oid,
            "sub": self.subject(user),
            "azp": self.client_id,
            "scp": " ".join(s for s in scopes if s not in ("openid", "offline_access")),
            "uti": secrets.token_urlsafe(16),
        }

    def issue_tokens(
        self,
        user: DemoUser,
        *,
        scopes: tuple[str, ...],
        nonce: str | None,
        sid: str,
        family: str,
    ) -> dict[str, Any]:
        """A token response for ``user``: always an access token, an ID token for ``openid``
        and a refresh token of ``family`` for ``offline_access``."""
        now = self.clock()
        access_token = self.sign({}, self.access_token_claims(user, scopes))
        self.access_tokens[access_token] = AccessToken(
            user, self.client_id, now + self.access_token_ttl
        )
        response: dict[str, Any] = {
            "token_type": "Bearer",
            "scope": " ".join(scopes),
            "expires_in": self.access_token_ttl,
            "ext_expires_in": self.access_token_ttl,
            "access_token": access_token,
        }
        if "openid" in scopes:
            response["id_token"] = self.id_token(user, nonce=nonce, sid=sid)
        if "offline_access" in scopes:
            refresh_token = secrets.token_urlsafe(48)
            self.refresh_tokens[refresh_token] = Grant(
                self.client_id, user, scopes, sid, family, now + self.refresh_token_ttl
            )
            response["refresh_token"] = refresh_token
        return response

    def id_token(self, user: DemoUser, *, nonce: str | None, sid: str) -> str:
        """The signed ID token of ``user``, or what ``id_token_hook`` builds instead."""
        header: dict[str, Any] = {"alg": "RS256", "typ": "JWT", "kid": self.signing_kid}
        claims = self.id_token_claims(user, nonce=nonce, sid=sid)
        hook = self.id_token_hook
        return hook(header, claims) if hook else self.sign(header, claims)

    def relying_party_principal(self, tid: str) -> DemoService:
        """The registered client as a service principal of ``tid``; it holds no app roles.

        Its ``oid`` is stable per client and tenant, like a service principal's object id.
        """
        oid = str(uuid.uuid5(_PRINCIPALS_NAMESPACE, f"{self.client_id}:{tid}"))
        return DemoService(
            "relying-party", self.client_id, self.client_secret, tid, oid, "Relying party"
        )

    def app_token_claims(self, service: DemoService, resource: str) -> dict[str, Any]:
        """Entra app-only access token claims for ``service`` calling ``resource``.

        ``sub`` is the service principal's ``oid`` and ``idtyp`` is ``app``. v2.0 names the
        client in ``azp`` (``azpacr`` "1": it authenticated with a secret) under the
        ``{base}/{tid}/v2.0`` issuer; v1.0 uses ``appid``/``appidacr`` and ``sts.windows.net``.
        """
        now = int(self.clock())
        claims: dict[str, Any] = {
            "aud": resource,
            "iss": f"{self.base_url}/{service.tid}/v2.0",
            "iat": now,
            "nbf": now,
            "exp": now + self.access_token_ttl,
            "tid": service.tid,
            "oid": service.oid,
            "sub": service.oid,
            "azp": service.client_id,
            "azpacr": "1",
            "idtyp": "app",
            "ver": "2.0",
            "uti": secrets.token_urlsafe(16),
        }
        if self.access_token_version == 1:
            del claims["azp"], claims["azpacr"]
            claims |= {
                "iss": V1_ISSUER.format(tid=service.tid),
                "appid": service.client_id,
                "appidacr": "1",
                "ver": "1.0",
            }
        if service.roles:
            claims["roles"] = list(service.roles)
        return claims

    def issue_app_token(self, service: DemoService, resource: str) -> dict[str, Any]:
        """The client-credentials response: one Bearer access token, no refresh or ID token."""
        return {
            "token_type": "Bearer",
            "expires_in": self.access_token_ttl,
            "ext_expires_in": self.access_token_ttl,
            "access_token": self.sign({}, self.app_token_claims(service, resource)),
        }

    def first_use(self, jti: str, expires: int) -> bool:
        """Remember a client assertion's ``jti`` until ``expires``; False on a replay."""
        now = self.clock()
        for stale in [seen for seen, exp in self.assertion_jtis.items() if exp < now]:
            del self.assertion_jtis[stale]
        if jti in self.assertion_jtis:
            return False
        self.assertion_jtis[jti] = expires
        return True

    def revoke_family(self, family: str) -> None:
        for token in [t for t, g in self.refresh_tokens.items() if g.family == family]:
            del self.refresh_tokens[token]


DEV_IDP = web.AppKey("dev_idp", DevIdP)
