"""``FaaSClient`` (sync) and ``AsyncFaaSClient`` (async), on httpx.

Both have every method of ``_calls`` (made from it below) plus ``stream_logs`` and
``wait_invocation``. Retries: only calls that are safe to repeat (reads, deletes, stop/start,
uploads, prewarm, and invokes with an idempotency key) are retried, on transport failures and
on 502/503/504 answers; an execute is never sent twice.
"""

import asyncio
import functools
import json
import time
from typing import Any, AsyncIterator, Dict, Iterator, Optional

import httpx

from . import _calls
from .errors import ConnectionError, FaaSError, TimeoutError, error_from_response
from .models import Invocation, LogEvent

DEFAULT_URL = "http://127.0.0.1:8080"
RETRY_STATUSES = (502, 503, 504)


def _result(call: _calls.Call, resp: httpx.Response) -> Any:
    if resp.status_code >= 400:
        try:
            body: Any = resp.json()
        except ValueError:
            body = resp.text
        raise error_from_response(resp.status_code, body)
    if call.raw:
        return call.parse(resp.content)
    if resp.status_code == 204 or not resp.content:
        return call.parse(None)
    return call.parse(resp.json())


def _request_args(call: _calls.Call) -> Dict[str, Any]:
    args: Dict[str, Any] = {"params": call.params, "headers": call.headers}
    if call.json is not None:
        args["json"] = call.json
    if call.content is not None:
        args["content"] = call.content
    return args


def _transport_error(e: httpx.HTTPError) -> FaaSError:
    if isinstance(e, httpx.TimeoutException):
        return TimeoutError(f"the HTTP call timed out: {e}", "timeout", 0)
    return ConnectionError(f"cannot reach the server: {e}", "connection", 0)


def _sse_events(lines: Iterator[str]) -> Iterator[LogEvent]:
    event, data = "message", []
    for line in lines:
        if line == "":
            if data:
                yield LogEvent(event, json.loads("\n".join(data)))
            event, data = "message", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())


class FaaSClient:
    """Synchronous client. ``with FaaSClient() as c: c.execute("echo hi")``."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        timeout: float = 120.0,
        max_retries: int = 2,
        headers: Optional[Dict[str, str]] = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.max_retries = max_retries
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, headers=headers)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "FaaSClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _send(self, call: _calls.Call) -> Any:
        attempts = 1 + (self.max_retries if call.idempotent else 0)
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                resp = self._http.request(call.method, call.path, **_request_args(call))
            except httpx.HTTPError as e:
                if last:
                    raise _transport_error(e) from e
            else:
                if resp.status_code not in RETRY_STATUSES or last:
                    return _result(call, resp)
            time.sleep(0.2 * 2**attempt)

    def stream_logs(self, request_id: str) -> Iterator[LogEvent]:
        """The output of execution ``request_id`` as it is produced: ``stdout`` and ``stderr``
        events, then one ``exit`` event. Start it before (or after) an ``execute`` given the
        same ``request_id``."""
        try:
            with self._http.stream(
                "GET", f"/api/v1/logs/{request_id}/stream", timeout=None
            ) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    _result(_calls.Call("GET", ""), resp)
                for ev in _sse_events(resp.iter_lines()):
                    yield ev
                    if ev.event == "exit":
                        return
        except httpx.HTTPError as e:
            raise _transport_error(e) from e

    def wait_invocation(
        self, invocation_id: str, timeout_s: float = 60.0, poll_s: float = 0.1
    ) -> Invocation:
        """Polls an async invocation until it is no longer queued or running."""
        deadline = time.monotonic() + timeout_s
        while True:
            inv = self.get_invocation(invocation_id)  # type: ignore[attr-defined]
            if inv.done:
                return inv
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"invocation {invocation_id} is still {inv.status} after {timeout_s}s",
                    "timeout",
                    0,
                )
            time.sleep(poll_s)


class AsyncFaaSClient:
    """Asynchronous client. ``async with AsyncFaaSClient() as c: await c.execute("echo hi")``."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        timeout: float = 120.0,
        max_retries: int = 2,
        headers: Optional[Dict[str, str]] = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.max_retries = max_retries
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout, headers=headers)

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncFaaSClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def _send(self, call: _calls.Call) -> Any:
        attempts = 1 + (self.max_retries if call.idempotent else 0)
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                resp = await self._http.request(call.method, call.path, **_request_args(call))
            except httpx.HTTPError as e:
                if last:
                    raise _transport_error(e) from e
            else:
                if resp.status_code not in RETRY_STATUSES or last:
                    return _result(call, resp)
            await asyncio.sleep(0.2 * 2**attempt)

    async def stream_logs(self, request_id: str) -> AsyncIterator[LogEvent]:
        """Like ``FaaSClient.stream_logs``, as an async iterator."""
        try:
            async with self._http.stream(
                "GET", f"/api/v1/logs/{request_id}/stream", timeout=None
            ) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    _result(_calls.Call("GET", ""), resp)
                lines = [line async for line in _until_exit(resp.aiter_lines())]
                for ev in _sse_events(iter(lines)):
                    yield ev
        except httpx.HTTPError as e:
            raise _transport_error(e) from e

    async def wait_invocation(
        self, invocation_id: str, timeout_s: float = 60.0, poll_s: float = 0.1
    ) -> Invocation:
        """Polls an async invocation until it is no longer queued or running."""
        deadline = time.monotonic() + timeout_s
        while True:
            inv = await self.get_invocation(invocation_id)  # type: ignore[attr-defined]
            if inv.done:
                return inv
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"invocation {invocation_id} is still {inv.status} after {timeout_s}s",
                    "timeout",
                    0,
                )
            await asyncio.sleep(poll_s)


async def _until_exit(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    """Lines of an event stream up to the end of its `exit` event."""
    in_exit = False
    async for line in lines:
        yield line
        if line.startswith("event:") and line[6:].strip() == "exit":
            in_exit = True
        elif in_exit and line == "":
            return


def _sync_method(fn: Any) -> Any:
    @functools.wraps(fn)
    def method(self: FaaSClient, *args: Any, **kwargs: Any) -> Any:
        return self._send(fn(self, *args, **kwargs))

    return method


def _async_method(fn: Any) -> Any:
    @functools.wraps(fn)
    async def method(self: AsyncFaaSClient, *args: Any, **kwargs: Any) -> Any:
        return await self._send(fn(self, *args, **kwargs))

    return method


for _fn in _calls.CALLS:
    setattr(FaaSClient, _fn.__name__, _sync_method(_fn))
    setattr(AsyncFaaSClient, _fn.__name__, _async_method(_fn))
