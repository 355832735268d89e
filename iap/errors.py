"""The exception tree. Each RequestError knows its HTTP status and a message safe to show.

    IapError
    ├── ConfigError              bad configuration (exit 2, never a request error)
    ├── UpstreamFailure          (iap.adapters.upstream) no answer from the upstream, by
    │                            kind; the web layer answers it as an UpstreamError
    └── RequestError             answered by iap itself, never forwarded
        ├── SignInRequired       302 a browser on a protected route, sent to /.iap/login
        ├── BadRequest           400 malformed or ambiguous request
        ├── Unauthenticated      401 no usable credentials on a protected route
        ├── SignInFailed         403 a login callback that must not sign anyone in
        ├── Forbidden            403 the route's policy denies the caller
        ├── NotFound             404 no route
        ├── MethodNotAllowed     405 an /.iap/ endpoint called with the wrong method
        ├── PayloadTooLarge      413 body over the route's limit
        ├── UriTooLong           414 request target over the limit
        ├── TooManyRequests      429 over the route's rate limit
        ├── HeadersTooLarge      431 too many or too large headers
        ├── ServiceUnavailable   503 the session store or the IdP cannot be reached
        │   └── Overloaded       503 more requests in flight than limits.max_in_flight
        └── UpstreamError        the upstream could not answer
            ├── BadGateway       502 refused, reset, TLS failure
            ├── CircuitOpen      503 upstream marked unhealthy
            ├── UpstreamBusy     503 every pooled connection stayed busy
            └── GatewayTimeout   504 connect, read or total timeout

``public`` is what a client may see; ``detail`` is for the log and the span only.
Foreign exceptions are translated at the adapter boundary with ``raise ... from exc``.
"""

from __future__ import annotations

from collections.abc import Sequence


class IapError(Exception):
    """Root of every error iap raises on purpose."""


class ConfigError(IapError):
    """A configuration that must not be served. ``problems`` name their keys."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__(f"{len(problems)} configuration problem(s)")
        self.problems = list(problems)


class RequestError(IapError):
    """A request iap answers itself; ``public`` is safe to show, ``detail`` is not."""

    status = 500
    public = "Internal error."
    reason = "internal_error"
    return_to: str | None = None
    """For a browser's page: the path a *Sign in* link comes back to (401, 403)."""
    shown: str | None = None
    """For a browser's page: a short safe code to show, such as the IdP's ``error``."""

    def __init__(
        self,
        detail: str = "",
        *,
        public: str | None = None,
        reason: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
        return_to: str | None = None,
        shown: str | None = None,
    ) -> None:
        super().__init__(detail or reason or self.reason)
        self.return_to, self.shown = return_to, shown
        self.detail = detail or reason or self.reason
        if public is not None:
            self.public = public
        if reason is not None:
            self.reason = reason
        self.headers = tuple(headers)  # e.g. Set-Cookie that clears a rejected session


class BadRequest(RequestError):
    status = 400
    public = "Bad request."
    reason = "bad_request"


class SignInRequired(RequestError):
    """Not an error for the browser: a redirect to sign-in, answered the way errors are."""

    status = 302
    public = "Sign-in required."
    reason = "unauthenticated"


class Unauthenticated(RequestError):
    status = 401
    public = "Sign-in required."
    reason = "unauthenticated"


class SignInFailed(RequestError):
    status = 403
    public = "Sign-in failed. Please try again."
    reason = "sign_in_failed"


class Forbidden(RequestError):
    status = 403
    public = "You do not have access to this resource."
    reason = "forbidden"


class NotFound(RequestError):
    status = 404
    public = "Not found."
    reason = "no_route"


class MethodNotAllowed(RequestError):
    status = 405
    public = "Method not allowed."
    reason = "method_not_allowed"


class PayloadTooLarge(RequestError):
    status = 413
    public = "Request body too large."
    reason = "body_too_large"


class UriTooLong(RequestError):
    status = 414
    public = "Request URI too long."
    reason = "uri_too_long"


class TooManyRequests(RequestError):
    status = 429
    public = "Too many requests. Please try again later."
    reason = "rate_limited"


class HeadersTooLarge(RequestError):
    status = 431
    public = "Request header fields too large."
    reason = "headers_too_large"


class ServiceUnavailable(RequestError):
    """Always with ``Retry-After`` (RFC 9110 §10.2.3): the outage is expected to pass."""

    status = 503
    public = "Sign-in is temporarily unavailable."
    reason = "unavailable"
    retry_after = 5

    def __init__(
        self,
        detail: str = "",
        *,
        public: str | None = None,
        reason: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        if not any(name.lower() == "retry-after" for name, _ in headers):
            headers = (*headers, ("Retry-After", str(self.retry_after)))
        super().__init__(detail, public=public, reason=reason, headers=headers)


class Overloaded(ServiceUnavailable):
    """Shed before any work: the process has ``limits.max_in_flight`` requests in flight."""

    public = "The service is busy. Please try again shortly."
    reason = "overloaded"
    retry_after = 1


class UpstreamError(RequestError):
    """The upstream did not give an answer; the client learns only which kind of failure."""


class BadGateway(UpstreamError):
    status = 502
    public = "The upstream service could not be reached."
    reason = "upstream_unreachable"


class CircuitOpen(UpstreamError):
    """Always with ``Retry-After``: the circuit half-opens after its cool-down."""

    status = 503
    public = "The upstream service is temporarily unavailable."
    reason = "circuit_open"

    def __init__(self, detail: str = "", *, retry_after: int = 5) -> None:
        super().__init__(detail, headers=[("Retry-After", str(max(1, retry_after)))])


class UpstreamBusy(UpstreamError):
    """Every connection the route's pool may open stayed busy for ``timeouts.connect``."""

    status = 503
    public = "The upstream service is busy. Please try again shortly."
    reason = "upstream_pool_full"

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail, headers=[("Retry-After", "1")])


class GatewayTimeout(UpstreamError):
    status = 504
    public = "The upstream service did not answer in time."
    reason = "upstream_timeout"
