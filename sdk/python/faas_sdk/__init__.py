"""Python client of the faas serverless execution platform.

    from faas_sdk import FaaSClient
    with FaaSClient("http://127.0.0.1:8080") as c:
        r = c.execute("echo hello")
        print(r.exit_code, r.stdout)
"""

from .client import AsyncFaaSClient, AsyncFsWatch, FaaSClient, FsWatch
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
from .terminal import AsyncTerminal, Terminal, TerminalExit
from .models import (
    Branch,
    ExecutionResult,
    FileEntry,
    FsEvent,
    Function,
    Health,
    Instance,
    Invocation,
    LogEvent,
    PoolInfo,
    ProcessEvent,
    ProcessExit,
    ProcessInfo,
    ProcessStarted,
    Snapshot,
)

__all__ = [
    "AsyncFaaSClient",
    "AsyncFsWatch",
    "AsyncTerminal",
    "BackendUnavailableError",
    "Branch",
    "ConflictError",
    "ConnectionError",
    "ExecutionResult",
    "FaaSClient",
    "FaaSError",
    "FileEntry",
    "FsEvent",
    "FsWatch",
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
    "ProcessEvent",
    "ProcessExit",
    "ProcessInfo",
    "ProcessStarted",
    "RateLimitedError",
    "Snapshot",
    "Terminal",
    "TerminalExit",
    "TimeoutError",
    "UnsupportedError",
]
