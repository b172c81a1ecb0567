"""Python client of the faas serverless execution platform.

    from faas_sdk import FaaSClient
    with FaaSClient("http://127.0.0.1:8080") as c:
        r = c.execute("echo hello")
        print(r.exit_code, r.stdout)
"""

from .client import AsyncFaaSClient, FaaSClient
from .errors import (
    BackendUnavailableError,
    ConflictError,
    ConnectionError,
    FaaSError,
    InternalError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitedError,
    TimeoutError,
    UnsupportedError,
)
from .models import (
    Branch,
    ExecutionResult,
    Function,
    Health,
    Instance,
    Invocation,
    LogEvent,
    PoolInfo,
    Snapshot,
)

__all__ = [
    "AsyncFaaSClient",
    "BackendUnavailableError",
    "Branch",
    "ConflictError",
    "ConnectionError",
    "ExecutionResult",
    "FaaSClient",
    "FaaSError",
    "Function",
    "Health",
    "Instance",
    "InternalError",
    "InvalidRequestError",
    "Invocation",
    "LogEvent",
    "NotFoundError",
    "PayloadTooLargeError",
    "PoolInfo",
    "RateLimitedError",
    "Snapshot",
    "TimeoutError",
    "UnsupportedError",
]
