"""``FaaSClient`` (sync) and ``AsyncFaaSClient`` (async), on httpx.

Both have every method of ``_calls`` (made from it below) plus the streams ``stream_logs``,
``process_events`` and ``watch_dir`` (Server-Sent Events, read as they come), and
``wait_invocation``. Retries: only calls that are safe to repeat (reads, deletes, stop/start,
uploads, prewarm, and invokes with an idempotency key) are retried, on transport failures and
on 502/503/504 answers; an execute, a process start or a ``port_request`` is never sent
twice. ``port_url`` makes no request: it is the URL of a port of an instance. ``terminal``
(a PTY shell over a WebSocket) uses the ``websockets`` package (``faas-sdk[terminal]``), as
httpx has no WebSocket.
"""

import asyncio
import functools
import json
import os
import ssl
import time
from typing import Any, AsyncIterator, Dict, Iterator, List, Optional, Union

import httpx

from . import _calls
from .errors import (
    ConnectionError,
    FaaSError,
    InternalError,
    TimeoutError,
    error_from_response,
    is_api_error,
    retry_after_seconds,
)
from .models import FsEvent, Invocation, LogEvent, PortResponse, ProcessEvent
from .terminal import AsyncTerminal, Terminal, terminal_ssl, terminal_url

DEFAULT_URL = "http://127.0.0.1:8080"
RETRY_STATUSES = (502, 503, 504)
KEY_HEADERS = ("authorization", "x-api-key")

Verify = Union[bool, str, ssl.SSLContext]


def _auth_headers(api_key: Optional[str]) -> Dict[str, str]:
    """The ``Authorization`` header of ``api_key`` (default: ``FAAS_API_KEY``; ``""``: none)."""
    key = os.environ.get("FAAS_API_KEY") if api_key is None else api_key
    key = (key or "").strip()
    if not key:
        return {}
    if not all(33 <= ord(ch) <= 126 for ch in key):
        # Said without the key: an exception message must never carry it.
        raise ValueError("the API key has characters an HTTP header cannot carry")
    return {"Authorization": f"Bearer {key}"}


def _ws_headers(http: Any, headers: Dict[str, str]) -> Dict[str, str]:
    """The headers of a WebSocket handshake: the client's own and its API key's."""
    auth = http.headers.get("authorization")
    return {**({"Authorization": auth} if auth else {}), **headers}


def _ssl_verify(verify: Optional[Verify]) -> Union[bool, ssl.SSLContext]:
    """What httpx verifies https with: ``verify`` (a CA bundle's path, an ``SSLContext``, or
    ``False`` for none); by default the bundle of ``FAAS_CA_CERT`` if set, else the system's."""
    if verify is None:
        verify = os.environ.get("FAAS_CA_CERT") or True
    if not isinstance(verify, str):
        return verify
    try:
        if os.path.isdir(verify):
            return ssl.create_default_context(capath=verify)
        return ssl.create_default_context(cafile=verify)
    except (OSError, ssl.SSLError) as e:
        raise ValueError(f"cannot load the CA certificates of {verify}: {e}") from e


def _error(resp: httpx.Response, body: Any) -> FaaSError:
    retry_after = retry_after_seconds(resp.headers.get("retry-after"))
    sent_key = any(h in resp.request.headers for h in KEY_HEADERS)
    return error_from_response(resp.status_code, body, retry_after, sent_key)


def _port_answer(call: _calls.Call, resp: httpx.Response) -> Any:
    """A port's server's answer as it came, unless it is the port proxy's own error."""
    if resp.status_code >= 400 and "json" in resp.headers.get("content-type", ""):
        try:
            body: Any = resp.json()
        except ValueError:
            body = None
        if is_api_error(body):
            raise _error(resp, body)
    return call.parse(PortResponse(resp.status_code, dict(resp.headers), resp.content))


def _result(call: _calls.Call, resp: httpx.Response) -> Any:
    if call.passthrough:
        return _port_answer(call, resp)
    if resp.status_code >= 400:
        try:
            body: Any = resp.json()
        except ValueError:
            body = resp.text
        raise _error(resp, body)
    if call.raw:
        return call.parse(resp.content)
    if resp.status_code == 204 or not resp.content:
        return call.parse(None)
    return call.parse(resp.json())


def _request_args(call: _calls.Call) -> Dict[str, Any]:
    args: Dict[str, Any] = {"headers": call.headers}
    if call.params:  # (httpx replaces a query of the path with params, even empty ones)
        args["params"] = call.params
    if call.json is not None:
        args["json"] = call.json
    if call.content is not None:
        args["content"] = call.content
    return args


def _transport_error(e: httpx.HTTPError) -> FaaSError:
    if isinstance(e, httpx.TimeoutException):
        return TimeoutError(f"the HTTP call timed out: {e}", "timeout", 0)
    return ConnectionError(f"cannot reach the server: {e}", "connection", 0)


class _SseParser:
    """Server-Sent Events from lines: ``feed`` each line, it returns an event when one ends
    (comment lines such as ``: keepalive`` are skipped)."""

    def __init__(self) -> None:
        self.event = "message"
        self.data: List[str] = []

    def feed(self, line: str) -> Optional[LogEvent]:
        if line == "":
            ev = LogEvent(self.event, json.loads("\n".join(self.data))) if self.data else None
            self.event = "message"
            self.data = []
            return ev
        if line.startswith("event:"):
            self.event = line[6:].strip()
        elif line.startswith("data:"):
            self.data.append(line[5:].lstrip())
        return None


def _sse_events(lines: Iterator[str]) -> Iterator[LogEvent]:
    parser = _SseParser()
    for line in lines:
        ev = parser.feed(line)
        if ev is not None:
            yield ev


async def _async_sse_events(lines: AsyncIterator[str]) -> AsyncIterator[LogEvent]:
    parser = _SseParser()
    async for line in lines:
        ev = parser.feed(line)
        if ev is not None:
            yield ev


_PROCESS_EVENTS = ("stdout", "stderr", "pty", "exit")


def _process_events_path(instance_id: str, pid: int) -> str:
    return f"/api/v1/instances/{instance_id}/processes/{pid}/events"


def _watch_args(instance_id: str, path: str, recursive: bool) -> Dict[str, Any]:
    return {
        "method": "GET",
        "url": f"/api/v1/instances/{instance_id}/fs/watch",
        "params": {"path": path, "recursive": "true" if recursive else "false"},
        "timeout": None,
    }


def _fs_event(ev: LogEvent) -> FsEvent:
    return FsEvent.from_dict({"op": ev.event, **ev.data})


def _stream_error(ev: LogEvent) -> FaaSError:
    """The exception of an ``error`` event: the server could not go on with the stream."""
    return InternalError(str(ev.data.get("message") or ev.data), "internal", 0)


def _no_exit() -> FaaSError:
    return ConnectionError("the process's event stream ended before its exit", "connection", 0)


class FsWatch:
    """The changes under a watched directory (``FaaSClient.watch_dir``), an iterator of
    ``FsEvent`` that lasts until ``close`` (or the end of a ``with`` block)."""

    def __init__(self, resp: httpx.Response):
        self._resp = resp
        self._closed = False
        try:
            if resp.status_code >= 400:
                resp.read()
                _result(_calls.Call("GET", ""), resp)
            self._events = _sse_events(resp.iter_lines())
            for ev in self._events:
                if ev.event == "error":
                    raise _stream_error(ev)
                if ev.event == "ready":
                    break
            else:
                raise ConnectionError("the watch ended before it was ready", "connection", 0)
        except httpx.HTTPError as e:
            resp.close()
            raise _transport_error(e) from e
        except BaseException:
            resp.close()
            raise

    def __iter__(self) -> "FsWatch":
        return self

    def __next__(self) -> FsEvent:
        try:
            for ev in self._events:
                if ev.event == "error":
                    raise _stream_error(ev)
                if ev.event != "ready":
                    return _fs_event(ev)
        except httpx.HTTPError as e:
            if not self._closed:
                raise _transport_error(e) from e
        raise StopIteration

    def close(self) -> None:
        self._closed = True
        self._resp.close()

    def __enter__(self) -> "FsWatch":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class AsyncFsWatch:
    """Like ``FsWatch``, as an async iterator (``AsyncFaaSClient.watch_dir``); ``aclose`` (or
    the end of an ``async with`` block) ends it."""

    def __init__(self, resp: httpx.Response):
        self._resp = resp
        self._closed = False
        self._events = _async_sse_events(resp.aiter_lines())

    async def _wait_ready(self) -> None:
        try:
            if self._resp.status_code >= 400:
                await self._resp.aread()
                _result(_calls.Call("GET", ""), self._resp)
            async for ev in self._events:
                if ev.event == "error":
                    raise _stream_error(ev)
                if ev.event == "ready":
                    return
            raise ConnectionError("the watch ended before it was ready", "connection", 0)
        except httpx.HTTPError as e:
            await self._resp.aclose()
            raise _transport_error(e) from e
        except BaseException:
            await self._resp.aclose()
            raise

    def __aiter__(self) -> "AsyncFsWatch":
        return self

    async def __anext__(self) -> FsEvent:
        try:
            async for ev in self._events:
                if ev.event == "error":
                    raise _stream_error(ev)
                if ev.event != "ready":
                    return _fs_event(ev)
        except httpx.HTTPError as e:
            if not self._closed:
                raise _transport_error(e) from e
        raise StopAsyncIteration

    async def aclose(self) -> None:
        self._closed = True
        await self._resp.aclose()

    async def __aenter__(self) -> "AsyncFsWatch":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()


class FaaSClient:
    """Synchronous client. ``with FaaSClient() as c: c.execute("echo hi")``.

    ``api_key``: the API key sent as ``Authorization: Bearer`` with every request (streams and
    the terminal's WebSocket too); by default ``FAAS_API_KEY``, and ``""`` sends none. It is
    kept out of reprs and exception messages. ``verify``: how an https server is checked: the
    path of a CA bundle (PEM), an ``ssl.SSLContext``, or ``False`` for not at all; by default
    the bundle named by ``FAAS_CA_CERT`` when it is set, else the usual trusted roots.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        timeout: float = 120.0,
        max_retries: int = 2,
        headers: Optional[Dict[str, str]] = None,
        api_key: Optional[str] = None,
        verify: Optional[Verify] = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.max_retries = max_retries
        self._headers = dict(headers or {})
        self._timeout = timeout
        tls = _ssl_verify(verify)
        self._terminal_ssl = terminal_ssl(tls)
        # The key lives in the httpx headers only (whose repr masks it).
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=timeout,
            headers={**_auth_headers(api_key), **self._headers},
            verify=tls,
        )

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

    def _events(self, path: str) -> Iterator[LogEvent]:
        """The Server-Sent Events of ``path``, up to its end (or to an ``exit`` event)."""
        try:
            with self._http.stream("GET", path, timeout=None) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    _result(_calls.Call("GET", ""), resp)
                for ev in _sse_events(resp.iter_lines()):
                    yield ev
                    if ev.event == "exit":
                        return
        except httpx.HTTPError as e:
            raise _transport_error(e) from e

    def stream_logs(self, request_id: str) -> Iterator[LogEvent]:
        """The output of execution ``request_id`` as it is produced: ``stdout`` and ``stderr``
        events, then one ``exit`` event. Start it before (or after) an ``execute`` given the
        same ``request_id``."""
        return self._events(f"/api/v1/logs/{request_id}/stream")

    def process_events(self, instance_id: str, pid: int) -> Iterator[ProcessEvent]:
        """The output of a process of ``start_process``: its ``stdout``, ``stderr`` (or, under a
        terminal, ``pty``) events with the bytes decoded, then one ``exit`` event with
        ``exit`` set. Any number of callers, at any time: each gets the output kept so far (at
        least its last MiB), then the live output; an ended process's ends at once."""
        for ev in self._events(_process_events_path(instance_id, pid)):
            if ev.event == "error":
                raise _stream_error(ev)
            if ev.event in _PROCESS_EVENTS:
                yield ProcessEvent.from_sse(ev.event, ev.data)
            if ev.event == "exit":
                return
        raise _no_exit()

    def watch_dir(self, instance_id: str, path: str, recursive: bool = False) -> FsWatch:
        """Watches directory ``path`` (with ``recursive``, its subdirectories too) and returns
        once the watch is set, so what is changed after this call returns is seen: iterate it
        for ``FsEvent``s, ``close`` it (or use it in a ``with``) to stop."""
        try:
            resp = self._http.send(
                self._http.build_request(**_watch_args(instance_id, path, recursive)),
                stream=True,
            )
        except httpx.HTTPError as e:
            raise _transport_error(e) from e
        return FsWatch(resp)

    def terminal(self, instance_id: str, cols: int = 80, rows: int = 24) -> Terminal:
        """A PTY shell in a running instance: ``write`` to it, ``read``/``read_until`` its
        output, ``resize`` it, ``wait`` for its ``TerminalExit``; closing it hangs the shell up.
        Needs the ``websockets`` package."""
        url = terminal_url(self.base_url, instance_id, cols, rows)
        headers = _ws_headers(self._http, self._headers)
        return Terminal.open(url, headers, self._timeout, self._terminal_ssl)

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
    """Asynchronous client. ``async with AsyncFaaSClient() as c: await c.execute("echo hi")``.
    Its options are ``FaaSClient``'s (``api_key``, ``verify``...)."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        timeout: float = 120.0,
        max_retries: int = 2,
        headers: Optional[Dict[str, str]] = None,
        api_key: Optional[str] = None,
        verify: Optional[Verify] = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.max_retries = max_retries
        self._headers = dict(headers or {})
        self._timeout = timeout
        tls = _ssl_verify(verify)
        self._terminal_ssl = terminal_ssl(tls)
        # The key lives in the httpx headers only (whose repr masks it).
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=timeout,
            headers={**_auth_headers(api_key), **self._headers},
            verify=tls,
        )

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

    async def _events(self, path: str) -> AsyncIterator[LogEvent]:
        """The Server-Sent Events of ``path``, as they come, up to its end (or to an ``exit``
        event)."""
        try:
            async with self._http.stream("GET", path, timeout=None) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    _result(_calls.Call("GET", ""), resp)
                async for ev in _async_sse_events(resp.aiter_lines()):
                    yield ev
                    if ev.event == "exit":
                        return
        except httpx.HTTPError as e:
            raise _transport_error(e) from e

    async def stream_logs(self, request_id: str) -> AsyncIterator[LogEvent]:
        """Like ``FaaSClient.stream_logs``, as an async iterator."""
        async for ev in self._events(f"/api/v1/logs/{request_id}/stream"):
            yield ev

    async def process_events(self, instance_id: str, pid: int) -> AsyncIterator[ProcessEvent]:
        """Like ``FaaSClient.process_events``, as an async iterator."""
        async for ev in self._events(_process_events_path(instance_id, pid)):
            if ev.event == "error":
                raise _stream_error(ev)
            if ev.event in _PROCESS_EVENTS:
                yield ProcessEvent.from_sse(ev.event, ev.data)
            if ev.event == "exit":
                return
        raise _no_exit()

    async def watch_dir(
        self, instance_id: str, path: str, recursive: bool = False
    ) -> AsyncFsWatch:
        """Like ``FaaSClient.watch_dir``: ``w = await c.watch_dir(...)`` returns once the watch
        is set; ``async for ev in w``, then ``await w.aclose()`` (or ``async with w:``)."""
        try:
            resp = await self._http.send(
                self._http.build_request(**_watch_args(instance_id, path, recursive)),
                stream=True,
            )
        except httpx.HTTPError as e:
            raise _transport_error(e) from e
        watch = AsyncFsWatch(resp)
        await watch._wait_ready()
        return watch

    async def terminal(self, instance_id: str, cols: int = 80, rows: int = 24) -> AsyncTerminal:
        """Like ``FaaSClient.terminal``; the terminal's methods are awaited."""
        url = terminal_url(self.base_url, instance_id, cols, rows)
        headers = _ws_headers(self._http, self._headers)
        return await AsyncTerminal.open(url, headers, self._timeout, self._terminal_ssl)

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
for _fn in _calls.HELPERS:
    setattr(FaaSClient, _fn.__name__, _fn)
    setattr(AsyncFaaSClient, _fn.__name__, _fn)
