"""One exception class per error-code family of the API.

Every error the server answers is ``{"error": {"code", "message"}}`` with an HTTP status; the
SDK raises the class of its code, carrying ``code``, ``message`` and ``status``.
"""

import builtins


class FaaSError(Exception):
    """Base class: the server refused or failed a request."""

    def __init__(self, message: str, code: str = "internal", status: int = 0):
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}" if self.status else self.message


class InvalidRequestError(FaaSError):
    """400: the body is not JSON of the right shape, or the request is invalid."""


class NotFoundError(FaaSError):
    """404: no such instance, snapshot, function, invocation, image or route."""


class ConflictError(FaaSError):
    """409: the target's state forbids it now (exec in a stopped instance...)."""


class PayloadTooLargeError(FaaSError):
    """413: the body or payload is over the limit."""


class RateLimitedError(FaaSError):
    """429: a limit was reached (a function's concurrency); try again later."""


class UnsupportedError(FaaSError):
    """501: the server or backend does not have this feature."""


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
    "rate_limited": RateLimitedError,
    "unsupported": UnsupportedError,
    "backend_unavailable": BackendUnavailableError,
    "timeout": TimeoutError,
    "internal": InternalError,
}

_BY_STATUS = {
    400: InvalidRequestError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    429: RateLimitedError,
    501: UnsupportedError,
    503: BackendUnavailableError,
    504: TimeoutError,
}


def error_from_response(status: int, body: object) -> FaaSError:
    """The exception for an error answer (its JSON body, or text when it was not JSON)."""
    code, message = None, None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        code = body["error"].get("code")
        message = body["error"].get("message")
    cls = _BY_CODE.get(code) or _BY_STATUS.get(status) or (
        InternalError if status >= 500 else FaaSError
    )
    return cls(message or str(body) or f"HTTP {status}", code or "unknown", status)
