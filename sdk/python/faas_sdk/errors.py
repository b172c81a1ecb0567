"""One exception class per error-code family of the API.

Every error the server answers is ``{"error": {"code", "message"}}`` with an HTTP status; the
SDK raises the class of its code, carrying ``code``, ``message``, ``status`` and, when the
answer had a ``Retry-After`` header (429s), ``retry_after`` in seconds.
"""

import builtins
import email.utils
import math
import time
from typing import Optional


class FaaSError(Exception):
    """Base class: the server refused or failed a request."""

    def __init__(
        self,
        message: str,
        code: str = "internal",
        status: int = 0,
        retry_after: Optional[float] = None,
    ):
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.retry_after = retry_after

    def __str__(self) -> str:
        text = f"{self.status} {self.code}: {self.message}" if self.status else self.message
        if self.retry_after is not None:
            text += f" (retry after {self.retry_after:g}s)"
        return text


class InvalidRequestError(FaaSError):
    """400: the body is not JSON of the right shape, or the request is invalid."""


class NotFoundError(FaaSError):
    """404: no such instance, snapshot, function, invocation, image or route."""


class ConflictError(FaaSError):
    """409: the target's state forbids it now (exec in a stopped instance...)."""


class PayloadTooLargeError(FaaSError):
    """413: the body or payload is over the limit."""


class AuthenticationError(FaaSError):
    """401 ``unauthenticated``: no API key, or one that is unknown, expired or revoked."""


class ForbiddenError(FaaSError):
    """403 ``forbidden``: the key may not do this (a member key asking for an admin
    operation)."""


class RateLimitedError(FaaSError):
    """429: a limit was reached (the tenant's request rate, a function's concurrency); try
    again after ``retry_after`` seconds."""


class QuotaExceededError(RateLimitedError):
    """429 ``quota_exceeded``: one of the tenant's quotas is used up (the message names it);
    it frees up as the tenant's sandboxes, instances or snapshots go away."""


class UnsupportedError(FaaSError):
    """501: the server or backend does not have this feature."""


class BadGatewayError(FaaSError):
    """502: the server on an instance's port (reached through the port proxy) gave no HTTP
    answer that can be passed on (``bad_gateway``)."""


class PortClosedError(BadGatewayError):
    """502 ``port_closed``: nothing listens on the instance's port the request was for (not
    yet, or no more)."""


class BackendUnavailableError(FaaSError):
    """503: the backend the request needs cannot serve now."""


class TimeoutError(FaaSError, builtins.TimeoutError):
    """504, or the HTTP call itself timed out (not a command's own timeout: that is a result
    with ``timed_out`` set)."""


class InternalError(FaaSError):
    """500: the server failed; its log has the details."""


class ConnectionError(FaaSError, builtins.ConnectionError):
    """The server could not be reached."""


_BY_CODE = {
    "invalid_json": InvalidRequestError,
    "invalid_request": InvalidRequestError,
    "not_found": NotFoundError,
    "image_not_found": NotFoundError,
    "conflict": ConflictError,
    "method_not_allowed": InvalidRequestError,
    "payload_too_large": PayloadTooLargeError,
    "unauthenticated": AuthenticationError,
    "forbidden": ForbiddenError,
    "rate_limited": RateLimitedError,
    "quota_exceeded": QuotaExceededError,
    "unsupported": UnsupportedError,
    "backend_unavailable": BackendUnavailableError,
    "port_closed": PortClosedError,
    "bad_gateway": BadGatewayError,
    "timeout": TimeoutError,
    "internal": InternalError,
}

_BY_STATUS = {
    400: InvalidRequestError,
    401: AuthenticationError,
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    429: RateLimitedError,
    501: UnsupportedError,
    502: BadGatewayError,
    503: BackendUnavailableError,
    504: TimeoutError,
}


def retry_after_seconds(value: Optional[str]) -> Optional[float]:
    """The seconds of a ``Retry-After`` header: a number of seconds or an HTTP date."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def is_api_error(body: object) -> bool:
    """Whether ``body`` (an answer's parsed JSON) is an error of the API itself: exactly
    ``{"error": {"code", "message"}}`` with a code of the table. What a port's server answers
    (through the port proxy) is passed on as it is; this tells the proxy's own refusals from
    it."""
    if not isinstance(body, dict) or set(body) != {"error"}:
        return False
    err = body["error"]
    return (
        isinstance(err, dict)
        and set(err) == {"code", "message"}
        and err["code"] in _BY_CODE
        and isinstance(err["message"], str)
    )


def error_from_response(
    status: int, body: object, retry_after: Optional[float] = None, sent_key: bool = True
) -> FaaSError:
    """The exception for an error answer (its JSON body, or text when it was not JSON);
    ``sent_key``: whether the request carried an API key (a 401 without one says how to give
    one)."""
    code, message = None, None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        code = body["error"].get("code")
        message = body["error"].get("message")
    cls = _BY_CODE.get(code) or _BY_STATUS.get(status) or (
        InternalError if status >= 500 else FaaSError
    )
    message = message or str(body) or f"HTTP {status}"
    if cls is AuthenticationError and not sent_key:
        message += " (the client has no API key: pass api_key or set FAAS_API_KEY)"
    return cls(message, code or "unknown", status, retry_after)
