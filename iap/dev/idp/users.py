"""Demo tenants, users and service clients of the dev IdP.

Two Entra-shaped tenants (Contoso as tenant A, Fabrikam as tenant B) and a handful of
demo users with roles and groups: Alice is an admin, Bob is staff by group, Eve lives in the
other tenant and Olivia has enough groups to trigger the overage path. ``users_for`` lists
the users an authority (a tenant id, ``organizations`` or ``common``) may sign in. The demo
service clients are single-tenant app registrations with a secret that obtain app-only
access tokens by the client-credentials grant; ``SERVICES`` maps them by key.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

TENANT_A = "6f0e8e7a-3c2b-4d1a-9e8f-1a2b3c4d5e6f"
TENANT_B = "0b1c2d3e-4f50-4a6b-8c7d-9e0f1a2b3c4d"
STAFF_GROUP_ID = "5d2c1b0a-9e8f-4a7b-8c6d-3e2f1a0b9c8d"
TENANT_NAMES = {TENANT_A: "Contoso (tenant A)", TENANT_B: "Fabrikam (tenant B)"}
MULTI_TENANT = ("organizations", "common")
TENANT_TEMPLATE = "{tenantid}"

_GROUPS_NAMESPACE = uuid.UUID("2b1f8f4e-7c55-4b8e-a6a1-2f0f6a9d1c11")


@dataclass(frozen=True)
class DemoUser:
    key: str
    name: str
    tid: str
    oid: str
    email: str
    roles: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()


def _many_groups(count: int) -> tuple[str, ...]:
    others = (str(uuid.uuid5(_GROUPS_NAMESPACE, f"group-{n}")) for n in range(count - 1))
    return (STAFF_GROUP_ID, *others)


DEMO_USERS: tuple[DemoUser, ...] = (
    DemoUser(
        "alice",
        "Alice Admin",
        TENANT_A,
        "a11ce000-0000-4000-8000-00000000000a",
        "alice@contoso.example",
        roles=("Edge.Admin",),
    ),
    DemoUser(
        "bob",
        "Bob Staff",
        TENANT_A,
        "b0b00000-0000-4000-8000-00000000000b",
        "bob@contoso.example",
        groups=(STAFF_GROUP_ID,),
    ),
    DemoUser(
        "eve",
        "Eve Outsider",
        TENANT_B,
        "e7e00000-0000-4000-8000-00000000000e",
        "eve@fabrikam.example",
    ),
    DemoUser(
        "olivia",
        "Olivia Overage",
        TENANT_A,
        "011a1a00-0000-4000-8000-000000000010",
        "olivia@contoso.example",
        groups=_many_groups(150),
    ),
)
USERS = {user.key: user for user in DEMO_USERS}


def users_for(tenant: str) -> list[DemoUser]:
    return [u for u in DEMO_USERS if tenant in MULTI_TENANT or u.tid == tenant]


@dataclass(frozen=True)
class DemoService:
    """A confidential service client (app registration with a secret) and its principal.

    ``oid`` is the object id of the service principal in ``tid``: the ``oid`` and ``sub`` of
    its app-only tokens. ``roles`` are the app roles (application permissions) the API
    granted it; they become the ``roles`` claim. The secrets are demo values, never real.
    """

    key: str
    client_id: str
    secret: str
    tid: str
    oid: str
    name: str
    roles: tuple[str, ...] = ()


DEMO_SERVICES: tuple[DemoService, ...] = (
    DemoService(
        "orders-service",
        "0d3e5a10-0000-4000-8000-0000000005a1",
        "orders-dev-secret",
        TENANT_A,
        "0d3e5a10-5e00-4000-8000-0000000005b1",
        "Orders service",
        roles=("Orders.Read",),
    ),
    DemoService(
        "billing-service",
        "b1111000-0000-4000-8000-0000000005a2",
        "billing-dev-secret",
        TENANT_A,
        "b1111000-5e00-4000-8000-0000000005b2",
        "Billing service",
        roles=("Orders.Read", "Orders.Write"),
    ),
    DemoService(
        "fabrikam-service",
        "fab00000-0000-4000-8000-0000000005a3",
        "fabrikam-dev-secret",
        TENANT_B,
        "fab00000-5e00-4000-8000-0000000005b3",
        "Fabrikam service",
    ),
)
SERVICES = {service.key: service for service in DEMO_SERVICES}
