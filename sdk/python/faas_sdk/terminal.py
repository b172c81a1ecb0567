"""The terminal of an instance: a PTY shell over the WebSocket of
``GET /api/v1/instances/{id}/terminal`` (binary frames both ways; a ``{"resize": ...}`` text
frame; at the shell's end a ``{"exit": ...}`` text frame, then the server closes).

It needs the ``websockets`` package (``pip install "faas-sdk[terminal]"``); httpx has no
WebSocket. The client's API key goes in the handshake's ``Authorization`` header.
"""

import builtins
import json
import logging
import ssl
import time
from dataclasses import dataclass
from typing import Any, Dict, Optional, Union
from urllib.parse import urlencode

from .errors import (
    ConnectionError,
    FaaSError,
    TimeoutError,
    UnsupportedError,
    error_from_response,
    retry_after_seconds,
)


@dataclass
class TerminalExit:
    """How a terminal's shell ended (128 + N when signal N ended it)."""

    exit_code: int
    signal: Optional[int] = None


def terminal_url(base_url: str, instance_id: str, cols: int, rows: int) -> str:
    scheme, rest = base_url.split("://", 1)
    ws = "wss" if scheme == "https" else "ws"
    query = urlencode({"cols": cols, "rows": rows})
    return f"{ws}://{rest}/api/v1/instances/{instance_id}/terminal?{query}"


def terminal_ssl(verify: Union[bool, ssl.SSLContext]) -> Optional[ssl.SSLContext]:
    """The TLS context of a ``wss://`` terminal from the client's ``verify`` (``None``: the
    default one)."""
    if verify is True:
        return None
    if verify is False:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    return verify


_SECRET_HEADERS = ("authorization", "x-api-key")


class _RedactingLogger(logging.LoggerAdapter):
    """``websockets.client``'s logger with the API key left out of the handshake it logs at
    debug level (``> Authorization: ...``)."""

    def log(self, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:
        if len(args) == 2 and str(args[0]).lower() in _SECRET_HEADERS:
            args = (args[0], "[redacted]")
        super().log(level, msg, *args, **kwargs)


def _connect_args(
    url: str, headers: Dict[str, str], open_timeout: float, tls: Any
) -> Dict[str, Any]:
    args: Dict[str, Any] = {
        "additional_headers": headers,
        "open_timeout": open_timeout,
        "logger": _RedactingLogger(logging.getLogger("websockets.client"), {}),
    }
    if url.startswith("wss://") and tls is not None:
        args["ssl"] = tls
    return args


def _websockets(what: str) -> Any:
    try:
        if what == "sync":
            from websockets.sync import client
        else:
            from websockets.asyncio import client
    except ImportError as e:  # pragma: no cover - depends on what is installed
        raise UnsupportedError(
            'the terminal needs the websockets package (pip install "faas-sdk[terminal]")',
            "unsupported",
            0,
        ) from e
    return client


def _refused(e: Exception, headers: Dict[str, str]) -> FaaSError:
    """The error a refused upgrade stands for: the server's JSON error when it sent one."""
    resp = getattr(e, "response", None)
    status = getattr(resp, "status_code", None)
    if status is None:
        return ConnectionError(f"cannot open the terminal: {e}", "connection", 0)
    body: Any = getattr(resp, "body", b"") or b""
    try:
        body = json.loads(body)
    except ValueError:
        body = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
    retry_after = retry_after_seconds(getattr(resp, "headers", {}).get("Retry-After"))
    sent_key = any(h.lower() in _SECRET_HEADERS for h in headers)
    return error_from_response(status, body, retry_after, sent_key)


def _exit_of(text: str) -> Optional[TerminalExit]:
    try:
        msg = json.loads(text)
    except ValueError:
        return None
    if isinstance(msg, dict) and isinstance(msg.get("exit"), dict):
        x = msg["exit"]
        return TerminalExit(exit_code=int(x.get("exit_code", -1)), signal=x.get("signal"))
    return None


def _resize_frame(cols: int, rows: int) -> str:
    return json.dumps({"resize": {"cols": cols, "rows": rows}})


def _bytes(data: Union[bytes, str]) -> bytes:
    return data.encode() if isinstance(data, str) else data


class Terminal:
    """A PTY shell in an instance (``FaaSClient.terminal``): ``write`` keystrokes, ``read``
    output, ``resize`` it, ``wait`` for its end; ``close`` (or leaving a ``with``) hangs it up.
    """

    def __init__(self, ws: Any):
        self._ws = ws
        self.exit: Optional[TerminalExit] = None

    @classmethod
    def open(
        cls, url: str, headers: Dict[str, str], open_timeout: float, tls: Any = None
    ) -> "Terminal":
        client = _websockets("sync")
        try:
            conn = client.connect(url, **_connect_args(url, headers, open_timeout, tls))
        except Exception as e:
            raise _refused(e, headers) from e
        # Entered as a context manager would be (closing it is all its exit does).
        return cls(conn.__enter__())

    def write(self, data: Union[bytes, str]) -> None:
        """Sends keystrokes (text is sent as UTF-8)."""
        self._ws.send(_bytes(data))

    def resize(self, cols: int, rows: int) -> None:
        self._ws.send(_resize_frame(cols, rows))

    def read(self, timeout: Optional[float] = None) -> bytes:
        """The next piece of output; ``b""`` once the shell ended (``exit`` is then set)."""
        from websockets.exceptions import ConnectionClosed

        while self.exit is None:
            try:
                msg = self._ws.recv(timeout=timeout)
            except ConnectionClosed:
                raise ConnectionError("the terminal closed before its shell ended", "connection", 0)
            except builtins.TimeoutError as e:  # the sync client's recv timing out
                raise TimeoutError(f"no terminal output within {timeout}s", "timeout", 0) from e
            if isinstance(msg, bytes):
                return msg
            self.exit = _exit_of(msg)
        return b""

    def read_until(self, needle: Union[bytes, str], timeout: float = 30.0) -> bytes:
        """Output up to and including ``needle``."""
        want, out = _bytes(needle), b""
        deadline = time.monotonic() + timeout
        while want not in out:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {want!r} in the terminal within {timeout}s", "timeout", 0)
            chunk = self.read(timeout=left)
            if not chunk:
                raise ConnectionError(f"the shell ended before {want!r}: {out!r}", "connection", 0)
            out += chunk
        return out

    def wait(self, timeout: Optional[float] = None) -> TerminalExit:
        """Reads (and drops) output until the shell ends; how it ended."""
        while self.exit is None:
            self.read(timeout=timeout)
        return self.exit

    def close(self) -> None:
        self._ws.close()

    def __enter__(self) -> "Terminal":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class AsyncTerminal:
    """``Terminal`` for ``AsyncFaaSClient``: the same methods, awaited."""

    def __init__(self, ws: Any):
        self._ws = ws
        self.exit: Optional[TerminalExit] = None

    @classmethod
    async def open(
        cls, url: str, headers: Dict[str, str], open_timeout: float, tls: Any = None
    ) -> "AsyncTerminal":
        client = _websockets("async")
        try:
            ws = await client.connect(url, **_connect_args(url, headers, open_timeout, tls))
        except Exception as e:
            raise _refused(e, headers) from e
        return cls(ws)

    async def write(self, data: Union[bytes, str]) -> None:
        await self._ws.send(_bytes(data))

    async def resize(self, cols: int, rows: int) -> None:
        await self._ws.send(_resize_frame(cols, rows))

    async def read(self, timeout: Optional[float] = None) -> bytes:
        import asyncio

        from websockets.exceptions import ConnectionClosed

        while self.exit is None:
            try:
                msg = await asyncio.wait_for(self._ws.recv(), timeout)
            except ConnectionClosed:
                raise ConnectionError("the terminal closed before its shell ended", "connection", 0)
            except asyncio.TimeoutError as e:
                raise TimeoutError(f"no terminal output within {timeout}s", "timeout", 0) from e
            if isinstance(msg, bytes):
                return msg
            self.exit = _exit_of(msg)
        return b""

    async def read_until(self, needle: Union[bytes, str], timeout: float = 30.0) -> bytes:
        want, out = _bytes(needle), b""
        deadline = time.monotonic() + timeout
        while want not in out:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {want!r} in the terminal within {timeout}s", "timeout", 0)
            chunk = await self.read(timeout=left)
            if not chunk:
                raise ConnectionError(f"the shell ended before {want!r}: {out!r}", "connection", 0)
            out += chunk
        return out

    async def wait(self, timeout: Optional[float] = None) -> TerminalExit:
        while self.exit is None:
            await self.read(timeout=timeout)
        return self.exit

    async def close(self) -> None:
        await self._ws.close()

    async def __aenter__(self) -> "AsyncTerminal":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

