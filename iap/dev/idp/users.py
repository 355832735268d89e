"""Demo tenants, users and service clients of the dev IdP, and the directory that holds them.

Two Entra-shaped tenants (Contoso as tenant A, Fabrikam as tenant B) and a handful of
demo users with roles and groups: Alice is an admin, Bob is staff by group, Eve lives in the
other tenant and Olivia has enough groups to trigger the overage path. The demo service
clients are single-tenant app registrations with a secret that obtain app-only access tokens
by the client-credentials grant. A ``Directory`` is one IdP's tenants, users and services:
immutable, every user and service in one of its tenants, user keys, user ``oid``s and
service client ids unique. Each ``DevIdP`` holds its own (``DEMO_DIRECTORY`` unless told
otherwise), so tests pass their own users instead of patching this module. Nothing here is
mutable: ``USERS``, ``SERVICES`` and ``TENANT_NAMES`` are read-only views of the demo data.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

TENANT_A = "6f0e8e7a-3c2b-4d1a-9e8f-1a2b3c4d5e6f"
TENANT_B = "0b1c2d3e-4f50-4a6b-8c7d-9e0f1a2b3c4d"
STAFF_GROUP_ID = "5d2c1b0a-9e8f-4a7b-8c6d-3e2f1a0b9c8d"
TENANT_NAMES: Mapping[str, str] = MappingProxyType(
    {TENANT_A: "Contoso (tenant A)", TENANT_B: "Fabrikam (tenant B)"}
)
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
USERS: Mapping[str, DemoUser] = MappingProxyType({user.key: user for user in DEMO_USERS})


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
SERVICES: Mapping[str, DemoService] = MappingProxyType(
    {service.key: service for service in DEMO_SERVICES}
)


def _unique(kind: str, values: list[str]) -> None:
    duplicates = sorted({value for value in values if values.count(value) > 1})
    if duplicates:
        raise ValueError(f"duplicate {kind} in the directory: {', '.join(duplicates)}")


@dataclass(frozen=True)
class Directory:
    """The tenants (id -> display name), users and service clients one dev IdP serves."""

    users: tuple[DemoUser, ...] = DEMO_USERS
    services: tuple[DemoService, ...] = DEMO_SERVICES
    tenants: Mapping[str, str] = field(default_factory=lambda: TENANT_NAMES)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tenants", MappingProxyType(dict(self.tenants)))
        _unique("user key", [user.key for user in self.users])
        _unique("user oid", [user.oid for user in self.users])
        _unique("service client id", [service.client_id for service in self.services])
        tids = {user.tid for user in self.users} | {service.tid for service in self.services}
        if strangers := tids - set(self.tenants):
            raise ValueError(
                f"users or services in unknown tenants: {', '.join(sorted(strangers))}"
            )

    def users_for(self, tenant: str) -> list[DemoUser]:
        """The users an authority (a tenant id, ``organizations`` or ``common``) signs in."""
        return [u for u in self.users if tenant in MULTI_TENANT or u.tid == tenant]

    def user(self, key: str) -> DemoUser | None:
        """The user whose sign-in button says ``key``, if any."""
        return next((user for user in self.users if user.key == key), None)

    def user_by_oid(self, oid: str) -> DemoUser | None:
        """The user with the object id ``oid`` (what Graph looks up), if any."""
        return next((user for user in self.users if user.oid == oid), None)

    def service(self, client_id: str) -> DemoService | None:
        """The demo service registered as ``client_id``, if any."""
        return next((s for s in self.services if s.client_id == client_id), None)


DEMO_DIRECTORY = Directory()
