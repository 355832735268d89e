"""The dev IdP: a real OpenID Connect provider on loopback, shaped like Entra ID v2.0.

URL shapes follow ``https://login.microsoftonline.com``: ``/{tenant}/v2.0/.well-known/
openid-configuration``, ``/{tenant}/oauth2/v2.0/{authorize,token,logout}`` and
``/{tenant}/discovery/v2.0/keys``, where ``{tenant}`` is a tenant id, ``organizations`` or
``common``. For the multi-tenant authorities the issuer is the literal template
``{base}/{tenantid}/v2.0`` and every published key carries its own ``issuer``, as Entra does.
A small Microsoft Graph stand-in answers ``getMemberObjects`` for groups overage. Demo
service clients obtain Entra-shaped app-only access tokens (v2.0, or v1.0 when
``DevIdP.access_token_version`` is 1) by the client-credentials grant. It serves demo users
only (a ``Directory`` of tenants, users and services, the demo one by default, held by each
``DevIdP``), keeps everything in memory and refuses every peer that is not a loopback
address. Never expose it: it signs in anyone who clicks a button. The modules: ``users``
(demo tenants, users and service clients, the ``Directory``), ``signing`` (keys, JWKS,
sign/verify), ``state`` (``DevIdP``), ``pages`` (sign-in page, authorize request),
``grants`` (token endpoint) and ``app`` (routes, handlers, loopback guard); this package
re-exports their public names.
"""

from iap.dev.idp.app import (
    Handler,
    RunningDevIdP,
    authorize,
    dev_idp_app,
    discovery,
    get_member_objects,
    is_loopback,
    keys,
    logout,
    loopback_only,
    start_dev_idp,
    token,
)
from iap.dev.idp.grants import OAuthError, pkce_challenge
from iap.dev.idp.state import (
    DEV_IDP,
    GRAPH_AUDIENCE,
    GROUPS_CLAIM_LIMIT,
    V1_ISSUER,
    DevIdP,
    IdTokenHook,
)
from iap.dev.idp.users import (
    DEMO_DIRECTORY,
    DEMO_SERVICES,
    DEMO_USERS,
    MULTI_TENANT,
    SERVICES,
    STAFF_GROUP_ID,
    TENANT_A,
    TENANT_B,
    TENANT_NAMES,
    TENANT_TEMPLATE,
    USERS,
    DemoService,
    DemoUser,
    Directory,
)

__all__ = [
    "DEMO_DIRECTORY",
    "DEMO_SERVICES",
    "DEMO_USERS",
    "DEV_IDP",
    "GRAPH_AUDIENCE",
    "GROUPS_CLAIM_LIMIT",
    "MULTI_TENANT",
    "SERVICES",
    "STAFF_GROUP_ID",
    "TENANT_A",
    "TENANT_B",
    "TENANT_NAMES",
    "TENANT_TEMPLATE",
    "USERS",
    "V1_ISSUER",
    "DemoService",
    "DemoUser",
    "DevIdP",
    "Directory",
    "Handler",
    "IdTokenHook",
    "OAuthError",
    "RunningDevIdP",
    "authorize",
    "dev_idp_app",
    "discovery",
    "get_member_objects",
    "is_loopback",
    "keys",
    "logout",
    "loopback_only",
    "pkce_challenge",
    "start_dev_idp",
    "token",
]
