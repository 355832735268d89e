"""What every drill asserts (issue #15, point 6), on what the load and the upstream recorded.

- :func:`assert_identities`: every request the upstream saw on a protected route carries a
  token minted by iap that verifies against iap's JWKS, for that route's audience; only the
  public route's requests carry none.
- :func:`assert_statuses`: no 500, ever; outside the fault window (from the fault's start to
  its end plus :data:`RECOVERY`) every answer is a whole 200; inside it, only 502/503/504 (and,
  for faults that cut connections, answers that never came or stopped short); routes the
  fault must not touch have no failure at all.
- :func:`recovery`: the time from the end of the fault until the end of the last failed
  response (0 when none failed after it); :data:`RECOVERY` (5 s) is the acceptance criterion.
- :func:`assert_workers_back`: every worker alive before and after has its open fds within
  :data:`FD_MARGIN` and its RSS within :data:`RSS_MARGIN_KIB` of its level before the fault.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from joserfc import jwt
from joserfc.jwk import KeySet

from tests.drills.load import Outcome
from tests.drills.stack import Stack, WorkerSample

RECOVERY = 5.0  # seconds after the fault ends: the "full recovery within 5 s"
FD_MARGIN = 10
RSS_MARGIN_KIB = 20 * 1024
FAULT_STATUSES = frozenset({502, 503, 504})
AUDIENCES = {"/app/": "app", "/api/": "api"}  # protected path prefix -> route name (aud)


@dataclass
class Fault:
    name: str
    start: float = 0.0
    end: float = 0.0
    cuts_connections: bool = False  # answers may never come or stop short during the window

    @property
    def window_end(self) -> float:
        return self.end + RECOVERY

    def in_window(self, outcome: Outcome) -> bool:
        return outcome.overlaps(self.start, self.window_end)


def _verify(request: web.Request, keys: KeySet, issuer: str, audience: str) -> str:
    header = request.headers.get("Authorization", "")
    assert header.startswith("Bearer "), f"{request.path} reached the upstream without a token"
    token = jwt.decode(header.removeprefix("Bearer "), keys, algorithms=["ES256"])
    claims = token.claims
    jwt.JWTClaimsRegistry(
        leeway=60,
        iss={"essential": True, "value": issuer},
        aud={"essential": True, "value": audience},
        sub={"essential": True},
        exp={"essential": True},
    ).validate(claims)
    assert request.headers.get("X-IAP-Subject") == claims["sub"]
    return str(claims["sub"])


def assert_identities(stack: Stack) -> Counter[str]:
    """Check every request the upstream saw; the count per subject (``-`` for public)."""
    keys = KeySet.import_key_set(stack.jwks)  # type: ignore[arg-type]
    seen: Counter[str] = Counter()
    for request in stack.upstream.seen.requests:
        prefix = next((p for p in AUDIENCES if request.path.startswith(p)), None)
        if prefix is None:
            assert request.path.startswith("/public/"), f"unexpected path {request.path}"
            assert "Authorization" not in request.headers
            assert "X-IAP-Subject" not in request.headers
            seen["-"] += 1
            continue
        seen[_verify(request, keys, stack.issuer, AUDIENCES[prefix])] += 1
    return seen


def assert_forwarded_only_successes(stack: Stack, outcomes: Sequence[Outcome]) -> None:
    """The upstream saw exactly the requests that were answered 200, route by route: a
    refused request (503 while Redis is down, say) was never forwarded."""
    prefixes = {"public": "/public/", "cookie": "/app/", "bearer": "/api/"}
    for route, prefix in prefixes.items():
        forwarded = sum(r.path.startswith(prefix) for r in stack.upstream.seen.requests)
        answered = sum(o.route == route and o.ok for o in outcomes)
        assert forwarded == answered, f"{route}: {forwarded} forwarded, {answered} answered 200"


def assert_statuses(
    outcomes: Sequence[Outcome], fault: Fault, unaffected: Collection[str] = ()
) -> None:
    assert [o for o in outcomes if o.status == 500] == []
    failed = [o for o in outcomes if not o.ok]
    assert [o for o in failed if not fault.in_window(o)] == [], "failures outside the window"
    allowed = [o for o in failed if o.status in FAULT_STATUSES and not o.error]
    if fault.cuts_connections:
        allowed += [o for o in failed if o.status in (0, 200) and o.error]
    assert [o for o in failed if o not in allowed] == [], "unexpected answers in the window"
    assert [o for o in failed if o.route in unaffected] == [], f"{unaffected} were touched"


def recovery(outcomes: Sequence[Outcome], fault: Fault) -> float:
    """Seconds from the fault's end to the end of the last failed response (0: none)."""
    failed = [o.done for o in outcomes if not o.ok]
    return max(0.0, max(failed, default=fault.end) - fault.end)


def assert_recovered(outcomes: Sequence[Outcome], fault: Fault) -> float:
    """Full recovery within :data:`RECOVERY`, and every route answering 200 after it."""
    took = recovery(outcomes, fault)
    assert took <= RECOVERY, f"{fault.name}: recovered {took:.2f}s after the fault ended"
    later = Counter(o.route for o in outcomes if o.sent > fault.end + took and o.ok)
    assert all(later[route] >= 10 for route in ("public", "cookie", "bearer")), later
    return took


def assert_workers_back(before: dict[int, WorkerSample], after: dict[int, WorkerSample]) -> None:
    both = before.keys() & after.keys()
    assert both, "no worker lived through the drill"
    for pid in both:
        fds = after[pid].fds - before[pid].fds
        rss = after[pid].rss_kib - before[pid].rss_kib
        assert abs(fds) <= FD_MARGIN, f"worker {pid}: {fds:+d} open fds"
        assert rss <= RSS_MARGIN_KIB, f"worker {pid}: RSS {rss / 1024:+.1f} MiB"


def audit_reasons(stdout_lines: Sequence[str]) -> Counter[tuple[int, str]]:
    """(status, reason) of the audit lines iap wrote, for the drill's summary."""
    found: Counter[tuple[int, str]] = Counter()
    for line in stdout_lines:
        if line.startswith("{"):
            record: dict[str, Any] = json.loads(line)
            status, reason = int(record.get("status", 0)), str(record.get("reason", ""))
            if status == 200 and record.get("path", "").endswith("/ping"):
                reason = f"bytes_out={record.get('bytes_out')}"
            found[(status, reason)] += 1
    return found


def summary(fault: Fault, outcomes: Sequence[Outcome], stack: Stack, took: float) -> str:
    """One line per drill for the report: what users saw, what iap recorded, recovery."""
    window = [o for o in outcomes if fault.in_window(o)]
    seen = Counter((o.route, o.status, o.error, o.retry_after) for o in window if not o.ok)
    reasons = dict(audit_reasons(stack.iap.stdout_lines))
    return (
        f"DRILL {fault.name}: fault {fault.end - fault.start:.2f}s, {len(outcomes)} requests, "
        f"failures in window {dict(seen)}, audit {reasons}, recovery {took:.2f}s"
    )
