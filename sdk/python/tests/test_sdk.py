"""The SDK against a live server: every endpoint of its OpenAPI document is exercised here (or,
for tenants and API keys, in test_auth.py). The client takes its key from FAAS_API_KEY."""

import asyncio
import os
import queue
import re
import threading
import time
import urllib.error
import urllib.request
import uuid

import pytest

import faas_sdk
from faas_sdk import AsyncFaaSClient, FaaSClient

IMAGE = "faas/busybox:latest"

# Each operation of the OpenAPI document and the SDK method that covers it (and is tested
# below). A new endpoint without an SDK method makes test_openapi_is_covered fail.
COVERED = {
    ("get", "/health"): "health_check",
    ("post", "/api/v1/execute"): "execute",
    ("post", "/api/v1/execute/advanced"): "execute (mode given)",
    ("post", "/api/v1/prewarm"): "prewarm",
    ("get", "/api/v1/pools"): "list_pools",
    ("get", "/api/v1/images"): "list_images",
    ("get", "/api/v1/metrics"): "get_metrics",
    ("get", "/metrics"): "get_prometheus_metrics",
    ("get", "/api/v1/openapi.json"): "get_openapi",
    ("get", "/api/v1/logs/{id}/stream"): "stream_logs",
    ("post", "/api/v1/instances"): "create_instance",
    ("get", "/api/v1/instances"): "list_instances",
    ("get", "/api/v1/instances/{id}"): "get_instance",
    ("delete", "/api/v1/instances/{id}"): "delete_instance",
    ("post", "/api/v1/instances/{id}/exec"): "exec_instance",
    ("post", "/api/v1/instances/{id}/stop"): "stop_instance",
    ("post", "/api/v1/instances/{id}/start"): "start_instance",
    ("get", "/api/v1/instances/{id}/files"): "download_file",
    ("put", "/api/v1/instances/{id}/files"): "upload_file",
    ("post", "/api/v1/instances/{id}/snapshot"): "create_snapshot",
    ("post", "/api/v1/instances/{id}/fork"): "fork_instance",
    ("post", "/api/v1/instances/{id}/processes"): "start_process",
    ("get", "/api/v1/instances/{id}/processes"): "list_processes",
    ("get", "/api/v1/instances/{id}/processes/{pid}/events"): "process_events",
    ("post", "/api/v1/instances/{id}/processes/{pid}/stdin"): "send_stdin",
    ("post", "/api/v1/instances/{id}/processes/{pid}/stdin/close"): "close_stdin",
    ("post", "/api/v1/instances/{id}/processes/{pid}/signal"): "signal_process",
    ("post", "/api/v1/instances/{id}/processes/{pid}/resize"): "resize_pty",
    ("get", "/api/v1/instances/{id}/fs/stat"): "stat",
    ("get", "/api/v1/instances/{id}/fs/list"): "list_dir",
    ("post", "/api/v1/instances/{id}/fs/mkdir"): "make_dir",
    ("post", "/api/v1/instances/{id}/fs/move"): "move",
    ("delete", "/api/v1/instances/{id}/fs"): "remove",
    ("get", "/api/v1/instances/{id}/fs/watch"): "watch_dir",
    ("post", "/api/v1/snapshots"): "create_snapshot",
    ("get", "/api/v1/snapshots"): "list_snapshots",
    ("get", "/api/v1/snapshots/{id}"): "get_snapshot",
    ("delete", "/api/v1/snapshots/{id}"): "delete_snapshot",
    ("post", "/api/v1/snapshots/{id}/restore"): "restore_snapshot",
    ("post", "/api/v1/snapshots/{id}/branch"): "branch_snapshot",
    ("post", "/api/v1/functions"): "deploy_function",
    ("get", "/api/v1/functions"): "list_functions",
    ("get", "/api/v1/functions/{name}"): "get_function",
    ("put", "/api/v1/functions/{name}"): "update_function",
    ("delete", "/api/v1/functions/{name}"): "delete_function",
    ("post", "/api/v1/functions/{name}/invoke"): "invoke_function",
    ("get", "/api/v1/invocations"): "list_invocations",
    ("get", "/api/v1/invocations/{id}"): "get_invocation",
    ("get", "/api/v1/instances/{id}/terminal"): "terminal",
    ("get", "/api/v1/instances/{id}/ports"): "list_ports",
    **{
        (method, path): "port_request"
        for method in ("get", "post", "put", "patch", "delete", "head", "options")
        for path in (
            "/api/v1/instances/{id}/ports/{port}",  # a 308 to .../{port}/
            "/api/v1/instances/{id}/ports/{port}/",
            "/api/v1/instances/{id}/ports/{port}/{*path}",
        )
    },
    # tenants, API keys, usage and the audit trail: tested in test_auth.py
    ("get", "/api/v1/auth/whoami"): "whoami",
    ("post", "/api/v1/tenants"): "create_tenant",
    ("get", "/api/v1/tenants"): "list_tenants",
    ("get", "/api/v1/tenants/{id}"): "get_tenant",
    ("put", "/api/v1/tenants/{id}"): "set_tenant_quotas",
    ("post", "/api/v1/keys"): "create_key",
    ("get", "/api/v1/keys"): "list_keys",
    ("delete", "/api/v1/keys/{id}"): "revoke_key",
    ("get", "/api/v1/usage"): "get_usage",
    ("get", "/api/v1/audit"): "list_audit_events",
}

# Operations this SDK leaves out on purpose, and why.
NOT_IN_SDK: dict = {
    ("get", "/api/v1/instances/{id}/tunnel/{port}"): "a raw TCP connection over a WebSocket, "
    "for `faas instances port-forward`; HTTP to a port is port_request",
}


def test_openapi_is_covered(client):
    doc = client.get_openapi()
    ops = {(m, p) for p, item in doc["paths"].items() for m in item}
    missing = ops - set(COVERED) - set(NOT_IN_SDK)
    assert not missing, f"endpoints without SDK coverage: {sorted(missing)}"
    for name in set(COVERED.values()):
        method = name.split(" ")[0]
        assert hasattr(FaaSClient, method) and hasattr(AsyncFaaSClient, method), method


def test_health_metrics_images(client):
    h = client.health_check()
    assert h.healthy and h.version and h.default_backend
    assert any(b["available"] for b in h.backends)
    client.execute("true", image=IMAGE)
    m = client.get_metrics()
    assert m["sandboxes_created"] >= 1
    assert "faas_sandboxes_created_total" in client.get_prometheus_metrics()
    assert isinstance(client.list_images(), list)


def test_execute_gives_exact_results(client):
    r = client.execute("echo out; echo err >&2; exit 3", image=IMAGE)
    assert (r.exit_code, r.stdout, r.stderr) == (3, "out\n", "err\n")
    assert r.output == r.stdout and r.logs == r.stderr
    assert r.duration_ms > 0 and not r.timed_out and not r.success
    r = client.execute(["sh", "-c", 'echo "$A"; cat'], image=IMAGE, env_vars={"A": 1}, stdin="in")
    assert r.stdout == "1\nin"
    r = client.execute("sleep 5", image=IMAGE, timeout_ms=300)
    assert r.timed_out, "a timed-out execution is a result, not an exception"
    r = client.execute("echo adv", image=IMAGE, mode="ephemeral")
    assert r.mode == "ephemeral" and r.stdout == "adv\n"


def test_runtime_helpers(client):
    assert client.run_python("print(2 + 3)").stdout == "5\n"
    assert client.run_javascript("console.log(6 * 7)").stdout == "42\n"
    assert client.run_bash("echo $((1 + 1))", image=IMAGE).stdout == "2\n"


def test_errors_have_their_class_code_and_message(client):
    with pytest.raises(faas_sdk.NotFoundError) as e:
        client.get_instance("no-such-instance")
    assert e.value.code == "not_found" and e.value.status == 404 and e.value.message
    with pytest.raises(faas_sdk.InvalidRequestError) as e:
        client.execute("", image=IMAGE)
    assert e.value.status == 400
    with pytest.raises(faas_sdk.NotFoundError) as e:
        client.execute("true", image="faas/no-such-image:1")
    assert e.value.code == "image_not_found"
    with pytest.raises(faas_sdk.UnsupportedError):
        client.execute("true", image=IMAGE, runtime="firecracker")
    with pytest.raises(faas_sdk.FaaSError):
        client.invoke_function("no-such-function", {})
    bad = FaaSClient("http://127.0.0.1:9", max_retries=0)
    with pytest.raises(faas_sdk.ConnectionError):
        bad.health_check()


def test_prewarm_and_cached(client):
    pool = client.prewarm(image=IMAGE, count=2)
    assert pool.target == 2
    deadline = time.time() + 60
    while not any(p.image == IMAGE and p.ready >= 1 for p in client.list_pools()):
        assert time.time() < deadline
        time.sleep(0.05)
    r = client.execute("echo warm", image=IMAGE, mode="cached")
    assert r.warm and r.stdout == "warm\n"
    client.prewarm(image=IMAGE, count=0)


def test_stream_logs(client):
    rid = f"sdk-{uuid.uuid4().hex[:12]}"
    events = []
    t = threading.Thread(target=lambda: events.extend(client.stream_logs(rid)))
    t.start()
    r = client.execute("echo one; sleep 0.3; echo two >&2", image=IMAGE, request_id=rid)
    t.join(30)
    assert r.exit_code == 0
    kinds = [e.event for e in events]
    assert kinds[-1] == "exit" and "stdout" in kinds and "stderr" in kinds, kinds
    assert "".join(e.text for e in events if e.event == "stdout") == "one\n"


def test_instances_snapshots_and_branches(client):
    inst = client.create_instance(image=IMAGE, name="sdk-test")
    try:
        assert inst.status == "running"
        assert client.exec_instance(inst.id, "mkdir -p /data && echo v1 > /data/x").exit_code == 0
        client.upload_file(inst.id, "/data/blob", b"\x00\x01bytes")
        assert client.download_file(inst.id, "/data/blob") == b"\x00\x01bytes"
        assert any(i.id == inst.id for i in client.list_instances())
        assert client.stop_instance(inst.id).status == "stopped"
        with pytest.raises(faas_sdk.ConflictError):
            client.exec_instance(inst.id, "true")
        assert client.start_instance(inst.id).status == "running"
        assert client.exec_instance(inst.id, "cat /data/x").stdout == "v1\n"

        snap = client.create_snapshot(inst.id, name="s", tags=["t"])
        assert snap.kind == "filesystem" and snap.size_bytes > 0 and snap.tags == ["t"]
        assert client.get_snapshot(snap.id).id == snap.id
        assert any(s.id == snap.id for s in client.list_snapshots())
        branch = client.branch_snapshot(snap.id, count=2)
        assert len(branch.instances) == 2
        a, b = branch.instances
        client.exec_instance(a.id, "echo changed > /data/x")
        assert client.exec_instance(b.id, "cat /data/x").stdout == "v1\n"
        restored = client.restore_snapshot(snap.id)
        assert client.exec_instance(restored.id, "cat /data/x").stdout == "v1\n"
        forked = client.fork_instance(inst.id, count=1)
        assert len(forked.instances) == 1
        r = client.fork_execution(snap.id, "cat /data/x")
        assert r.stdout == "v1\n" and r.mode == "branched"
        with pytest.raises(faas_sdk.ConflictError):
            client.delete_snapshot(snap.id)  # instances depend on it
        for i in [a, b, restored, *forked.instances]:
            client.delete_instance(i.id)
        for s in client.list_snapshots():
            if s.instance_id == inst.id and s.id != snap.id:
                client.delete_snapshot(s.id)
        client.delete_snapshot(snap.id)
        with pytest.raises(faas_sdk.NotFoundError):
            client.get_snapshot(snap.id)
    finally:
        client.delete_instance(inst.id)
    with pytest.raises(faas_sdk.NotFoundError):
        client.get_instance(inst.id)


ADD = "def handler(event, context):\n    print('adding')\n    return {'sum': event['a'] + event['b']}\n"


def test_functions_sync_async_and_versions(client):
    name = f"sdk-{uuid.uuid4().hex[:10]}"
    f = client.deploy_function(name, "python", code=ADD, handler="main.handler")
    assert f.version == 1 and f.runtime == "python"
    try:
        inv = client.invoke_function(name, {"a": 2, "b": 3})
        assert inv.status == "succeeded" and inv.result == {"sum": 5}
        assert inv.cold is True and "adding" in inv.logs
        assert client.invoke_function(name, {"a": 1, "b": 1}).cold is False
        bad = client.invoke_function(name, {})
        assert bad.status == "error" and bad.error["type"] == "KeyError"
        assert "Traceback" in bad.error["traceback"]

        q = client.invoke_function(name, {"a": 5, "b": 5}, async_=True, idempotency_key="k1")
        again = client.invoke_function(name, {"a": 5, "b": 5}, async_=True, idempotency_key="k1")
        assert q.status == "queued" and again.invocation_id == q.invocation_id
        done = client.wait_invocation(q.invocation_id)
        assert done.status == "succeeded" and done.result == {"sum": 10} and done.is_async
        assert any(i.invocation_id == q.invocation_id for i in client.list_invocations(function=name))

        f2 = client.update_function(name, code=ADD.replace("'sum'", "'total'"))
        assert f2.version == 2 and f2.handler == "main.handler"
        assert client.invoke_function(name, {"a": 1, "b": 2}).result == {"total": 3}
        assert client.invoke_function(name, {"a": 1, "b": 2}, version=1).result == {"sum": 3}
        assert client.get_function(name).versions == [1, 2]
        assert any(x.name == name for x in client.list_functions())
        with pytest.raises(faas_sdk.PayloadTooLargeError):
            client.invoke_function(name, "x" * (7 * 1024 * 1024))
        with pytest.raises(faas_sdk.InvalidRequestError):
            client.deploy_function("bad name", "python", code=ADD, handler="main.handler")
    finally:
        client.delete_function(name)
    with pytest.raises(faas_sdk.NotFoundError):
        client.get_function(name)


def test_async_client(url):
    async def main():
        async with AsyncFaaSClient(url) as c:
            h = await c.health_check()
            assert h.healthy
            rs = await asyncio.gather(*(c.execute(f"echo {i}", image=IMAGE) for i in range(4)))
            assert [r.stdout for r in rs] == [f"{i}\n" for i in range(4)]
            with pytest.raises(faas_sdk.NotFoundError):
                await c.get_snapshot("nope")
            rid = f"sdk-async-{uuid.uuid4().hex[:8]}"
            task = asyncio.ensure_future(c.execute("echo streamed", image=IMAGE, request_id=rid))
            events = [e async for e in c.stream_logs(rid)]
            await task
            assert events[-1].event == "exit"
            assert "streamed" in "".join(e.text for e in events)

    asyncio.run(main())


# ---- processes, files and metadata of instances ----


class Stream:
    """Reads an iterator of events in a thread, so that a test waits for them with a timeout
    (and can write to a process while its output is read)."""

    END = object()

    def __init__(self, events):
        self._q = queue.Queue()
        threading.Thread(target=self._run, args=(events,), daemon=True).start()

    def _run(self, events):
        try:
            for ev in events:
                self._q.put(ev)
        except Exception as e:  # raised again in the test's thread
            self._q.put(e)
        self._q.put(self.END)

    def next(self, timeout=30.0):
        item = self._q.get(timeout=max(timeout, 0.01))
        if isinstance(item, Exception):
            raise item
        return item

    def output_until(self, needle: bytes, timeout=30.0) -> bytes:
        """The output up to and including ``needle`` (which must come before the exit)."""
        buf = b""
        deadline = time.monotonic() + timeout
        while needle not in buf:
            ev = self.next(deadline - time.monotonic())
            assert ev is not self.END and ev.kind != "exit", f"ended before {needle!r}: {buf!r}"
            buf += ev.data
        return buf

    def rest(self, timeout=30.0) -> list:
        """The events up to the end of the stream."""
        out = []
        deadline = time.monotonic() + timeout
        while True:
            ev = self.next(deadline - time.monotonic())
            if ev is self.END:
                return out
            out.append(ev)


def stdout_of(events) -> bytes:
    return b"".join(e.data for e in events if e.kind == "stdout")


def exit_of(events):
    assert events and events[-1].kind == "exit", [e.kind for e in events]
    assert all(e.kind != "exit" for e in events[:-1])
    return events[-1].exit


@pytest.fixture(scope="module")
def instance(client):
    """An instance of the default image, for this module's process and file tests."""
    inst = client.create_instance()
    try:
        yield inst.id
    finally:
        client.delete_instance(inst.id)


def test_process_runs_in_the_background(client, instance):
    t0 = time.monotonic()
    p = client.start_process(instance, "sleep 1; echo done", tag="bg")
    took = time.monotonic() - t0
    assert took < 0.8, f"start_process took {took:.2f}s: it must not wait for the process"
    assert p.pid > 0 and p.tag == "bg"
    info = {x.pid: x for x in client.list_processes(instance)}[p.pid]
    assert info.running and info.tag == "bg" and info.exit_code is None and not info.pty
    assert info.command[-1] == "sleep 1; echo done" and info.started_at_ms > 0

    events = list(client.process_events(instance, p.pid))
    assert exit_of(events).exit_code == 0 and not exit_of(events).timed_out
    assert stdout_of(events) == b"done\n"
    assert time.monotonic() - t0 >= 1.0
    info = {x.pid: x for x in client.list_processes(instance)}[p.pid]
    assert not info.running and info.exit_code == 0

    again = list(client.process_events(instance, p.pid))  # ended: kept output, then exit
    assert stdout_of(again) == b"done\n" and exit_of(again).exit_code == 0


def test_process_env_dir_stderr_and_timeout(client, instance):
    p = client.start_process(
        instance, ["sh", "-c", 'echo "$GREETING"; pwd; echo oops >&2; exit 7'],
        env_vars={"GREETING": "hello"}, working_dir="/tmp",
    )
    events = list(client.process_events(instance, p.pid))
    assert stdout_of(events) == b"hello\n/tmp\n"
    assert b"".join(e.data for e in events if e.kind == "stderr") == b"oops\n"
    assert exit_of(events).exit_code == 7
    info = {x.pid: x for x in client.list_processes(instance)}[p.pid]
    assert info.env_vars.get("GREETING") == "hello" and info.working_dir == "/tmp"

    p = client.start_process(instance, "sleep 10", timeout_ms=300)
    x = exit_of(list(client.process_events(instance, p.pid)))
    assert x.timed_out and x.exit_code != 0


def test_a_late_subscriber_gets_the_earlier_output(client, instance):
    p = client.start_process(instance, "echo a; sleep 1; echo b")
    first = Stream(client.process_events(instance, p.pid))
    seen = first.output_until(b"a\n")
    second = Stream(client.process_events(instance, p.pid))  # mid-way: after a, before b
    first_events, second_events = first.rest(), second.rest()
    assert seen + stdout_of(first_events) == b"a\nb\n"
    assert stdout_of(second_events) == b"a\nb\n", "a subscriber gets the output kept so far"
    assert exit_of(first_events).exit_code == 0 and exit_of(second_events).exit_code == 0


def test_process_stdin(client, instance):
    p = client.start_process(instance, "cat", stdin=True)
    client.send_stdin(instance, p.pid, "hi")
    client.send_stdin(instance, p.pid, b"\x00\xff")
    client.close_stdin(instance, p.pid)
    events = list(client.process_events(instance, p.pid))
    assert stdout_of(events) == b"hi\x00\xff" and exit_of(events).exit_code == 0


def test_signals_and_process_errors(client, instance):
    p = client.start_process(instance, "sleep 100")
    with pytest.raises(faas_sdk.ConflictError):
        client.send_stdin(instance, p.pid, "x")  # started without stdin
    with pytest.raises(faas_sdk.ConflictError):
        client.resize_pty(instance, p.pid, 100, 30)  # no terminal
    with pytest.raises(faas_sdk.InvalidRequestError):
        client.signal_process(instance, p.pid, "SIGNOPE")
    t0 = time.monotonic()
    client.signal_process(instance, p.pid)  # SIGTERM
    x = exit_of(list(client.process_events(instance, p.pid)))
    assert x.exit_code == 143 and time.monotonic() - t0 < 10

    with pytest.raises(faas_sdk.NotFoundError) as e:
        client.signal_process(instance, 999999, "KILL")
    assert e.value.status == 404 and e.value.code == "not_found"
    with pytest.raises(faas_sdk.NotFoundError):
        list(client.process_events(instance, 999999))
    with pytest.raises(faas_sdk.NotFoundError):
        client.list_processes("no-such-instance")
    with pytest.raises(faas_sdk.NotFoundError):
        client.start_process("no-such-instance", "true")


def test_pty_process_and_resize(client, instance):
    p = client.start_process(instance, "sh", pty=(80, 24))
    term = Stream(client.process_events(instance, p.pid))
    client.send_stdin(instance, p.pid, "stty size\n")
    term.output_until(b"24 80")
    client.resize_pty(instance, p.pid, 120, 50)
    client.send_stdin(instance, p.pid, "stty size\n")
    term.output_until(b"50 120")
    client.send_stdin(instance, p.pid, "exit\n")
    events = term.rest()
    assert exit_of(events).exit_code == 0
    assert {e.kind for e in events[:-1]} <= {"pty"}, "a terminal's output comes as pty events"
    assert {x.pid: x for x in client.list_processes(instance)}[p.pid].pty


def test_terminal(client, instance, url):
    with client.terminal(instance, cols=100, rows=30) as term:
        term.write("echo $((6*7))\n")
        term.read_until(b"42\r\n")  # the typed line echoes $((6*7)); the answer is 42
        term.resize(90, 20)
        term.write("stty size; exit 3\n")
        out = b""
        while term.exit is None:
            out += term.read(timeout=30)
        assert b"20 90" in out, out
        assert term.exit.exit_code == 3
    with pytest.raises(faas_sdk.NotFoundError):
        client.terminal("no-such-instance")

    async def main():
        async with AsyncFaaSClient(url) as c:
            async with await c.terminal(instance) as t:
                await t.write(b"echo async-$((1+1))\n")
                await t.read_until(b"async-2")
                await t.write(b"exit\n")
                assert (await t.wait(timeout=30)).exit_code == 0

    asyncio.run(main())


def test_files(client, instance):
    d = f"/tmp/sdk-fs-{uuid.uuid4().hex[:8]}"
    sub = client.make_dir(instance, f"{d}/sub")  # its parent is made too
    assert (sub.type, sub.name, sub.path) == ("dir", "sub", f"{d}/sub") and sub.is_dir
    with pytest.raises(faas_sdk.ConflictError) as e:
        client.make_dir(instance, f"{d}/sub")
    assert e.value.status == 409
    client.upload_file(instance, f"{d}/a.txt", b"hello")
    st = client.stat(instance, f"{d}/a.txt")
    assert (st.type, st.name, st.path, st.size) == ("file", "a.txt", f"{d}/a.txt", 5)
    assert st.permissions.startswith("-") and st.mode & 0o400 and st.mtime_ms > 0
    assert st.owner and st.symlink_target is None

    assert [x.path for x in client.list_dir(instance, d)] == [f"{d}/a.txt", f"{d}/sub"]
    moved = client.move(instance, f"{d}/a.txt", f"{d}/sub/b.txt")
    assert (moved.path, moved.name, moved.size) == (f"{d}/sub/b.txt", "b.txt", 5)
    assert client.download_file(instance, f"{d}/sub/b.txt") == b"hello"
    assert [x.path for x in client.list_dir(instance, d)] == [f"{d}/sub"]
    assert [x.path for x in client.list_dir(instance, d, depth=2)] == [
        f"{d}/sub",
        f"{d}/sub/b.txt",
    ]
    with pytest.raises(faas_sdk.NotFoundError) as e:
        client.stat(instance, f"{d}/a.txt")
    assert e.value.status == 404

    assert client.exec_instance(instance, f"ln -s {d}/sub/b.txt {d}/link").exit_code == 0
    link = client.stat(instance, f"{d}/link")
    assert link.type == "symlink" and link.symlink_target == f"{d}/sub/b.txt"

    client.remove(instance, d)
    with pytest.raises(faas_sdk.NotFoundError):
        client.stat(instance, d)
    with pytest.raises(faas_sdk.NotFoundError):
        client.list_dir(instance, d)
    for bad in ("relative/path", ""):
        with pytest.raises(faas_sdk.InvalidRequestError) as e:
            client.stat(instance, bad)
        assert e.value.status == 400


def test_watch_dir(client, instance):
    d = f"/tmp/sdk-watch-{uuid.uuid4().hex[:8]}"
    client.make_dir(instance, d)
    with client.watch_dir(instance, d) as w:
        # watch_dir returned after the watch was set: these changes are all seen
        p = client.start_process(instance, f"echo x > {d}/f; mv {d}/f {d}/g; rm {d}/g")
        assert exit_of(list(client.process_events(instance, p.pid))).exit_code == 0
        events = Stream(w)
        seen = []
        while ("remove", f"{d}/g") not in seen:
            ev = events.next()
            assert ev is not Stream.END, seen
            seen.append((ev.op, ev.path))
    main = [e for e in seen if e[0] in ("create", "rename", "remove")]
    assert main == [
        ("create", f"{d}/f"),
        ("rename", f"{d}/f"),
        ("create", f"{d}/g"),
        ("remove", f"{d}/g"),
    ], seen
    with pytest.raises(faas_sdk.NotFoundError):
        client.watch_dir(instance, f"{d}/none")


def test_instance_metadata(client):
    run = uuid.uuid4().hex[:10]
    a = client.create_instance(metadata={"suite": "sdk-py", "run": run})
    b = None
    try:
        b = client.create_instance(metadata={"suite": "sdk-py", "run": run, "role": "b"})
        assert a.metadata == {"suite": "sdk-py", "run": run}
        assert client.get_instance(b.id).metadata == {"suite": "sdk-py", "run": run, "role": "b"}
        ids = lambda m: sorted(i.id for i in client.list_instances(metadata=m))
        assert ids({"run": run}) == sorted([a.id, b.id])
        assert ids({"run": run, "role": "b"}) == [b.id]
        assert ids({"run": run, "role": "c"}) == []
        listed = {i.id: i for i in client.list_instances()}
        assert listed[a.id].metadata["run"] == run
        with pytest.raises(faas_sdk.InvalidRequestError):
            client.create_instance(metadata={"big": "x" * 5000})
        client.stop_instance(a.id)
        with pytest.raises(faas_sdk.ConflictError):
            client.start_process(a.id, "true")  # not running
    finally:
        client.delete_instance(a.id)
        if b is not None:
            client.delete_instance(b.id)


def test_async_processes_and_watch(url):
    async def next_of(it):
        return await asyncio.wait_for(it.__anext__(), 30)

    async def main():
        async with AsyncFaaSClient(url) as c:
            inst = await c.create_instance()
            try:
                p = await c.start_process(inst.id, "echo a; sleep 0.2; echo b >&2")
                events = []
                async for ev in c.process_events(inst.id, p.pid):
                    events.append(ev)
                assert stdout_of(events) == b"a\n" and exit_of(events).exit_code == 0
                assert [e.data for e in events if e.kind == "stderr"] == [b"b\n"]

                p = await c.start_process(inst.id, "sh", pty={"cols": 90, "rows": 30})
                await c.send_stdin(inst.id, p.pid, "stty size; exit\n")
                events = [ev async for ev in c.process_events(inst.id, p.pid)]
                assert b"30 90" in b"".join(e.data for e in events)

                d = f"/tmp/sdk-awatch-{uuid.uuid4().hex[:8]}"
                await c.make_dir(inst.id, f"{d}/sub")
                async with await c.watch_dir(inst.id, d, recursive=True) as w:
                    await c.exec_instance(inst.id, f"echo 1 > {d}/sub/x")
                    seen = [await next_of(w)]
                    while (seen[-1].op, seen[-1].path) != ("create", f"{d}/sub/x"):
                        assert len(seen) < 100, seen  # a recursive watch sees subdirectories
                        seen.append(await next_of(w))
                assert (await c.stat(inst.id, f"{d}/sub/x")).size == 2
                with pytest.raises(faas_sdk.NotFoundError):
                    await c.watch_dir(inst.id, f"{d}/none")
            finally:
                await c.delete_instance(inst.id)

    asyncio.run(main())


# ---- ports of instances: the port proxy ----

INDEX = "hello from busybox httpd\n"
HTTPD = ["busybox", "httpd", "-f", "-p", "8000", "-h", "/www"]  # serves /www on port 8000
# A CGI script of busybox httpd: what the request was, as the server in the box saw it.
CGI_ECHO = """#!/bin/sh
echo "Content-Type: text/plain"
echo "X-Seen: $HTTP_X_APP"
echo
echo "$REQUEST_METHOD $QUERY_STRING"
head -c "$CONTENT_LENGTH"
"""


def wait_port(client, instance_id, port, timeout_s=10.0):
    """The ``PortInfo`` of ``port`` once something listens on it in the instance."""
    deadline = time.monotonic() + timeout_s
    while True:
        ports = {p.port: p for p in client.list_ports(instance_id)}
        if port in ports:
            return ports[port]
        assert time.monotonic() < deadline, f"port {port} not listed in {timeout_s}s: {sorted(ports)}"
        time.sleep(0.1)


def serve_www(client, instance_id):
    """Starts busybox httpd on port 8000 of the instance, serving /www; its ``PortInfo``."""
    client.upload_file(instance_id, "/www/index.html", INDEX)
    client.upload_file(instance_id, "/www/cgi-bin/echo", CGI_ECHO)
    assert client.exec_instance(instance_id, "chmod +x /www/cgi-bin/echo").exit_code == 0
    client.start_process(instance_id, HTTPD, tag="httpd")
    return wait_port(client, instance_id, 8000)


def test_ports_are_listed_and_proxied(client, url):
    inst = client.create_instance(image=IMAGE)
    try:
        assert inst.network == "none" and inst.public_ports is False and inst.ports_token is None
        assert 8000 not in [p.port for p in client.list_ports(inst.id)]
        p = serve_www(client, inst.id)
        assert p.path == f"/api/v1/instances/{inst.id}/ports/8000/" and p.address

        r = client.port_request(inst.id, 8000)
        assert (r.status, r.text, r.ok) == (200, INDEX, True)
        assert r.headers["content-type"].startswith("text/html")
        r = client.port_request(
            inst.id, 8000, "/cgi-bin/echo?a=1", method="POST", body="payload",
            headers={"X-App": "y"}, params={"b": "2"},
        )
        assert r.status == 200 and r.text == "POST a=1&b=2\npayload", r
        assert r.headers["x-seen"] == "y", "the request's headers reach the box's server"
        r = client.port_request(inst.id, 8000, "/no-such-page.html")
        assert r.status == 404 and not r.ok, "the box's server's own 404 is an answer, not an error"

        with pytest.raises(faas_sdk.PortClosedError) as e:
            client.port_request(inst.id, 8001)
        assert (e.value.code, e.value.status) == ("port_closed", 502)
        assert isinstance(e.value, faas_sdk.BadGatewayError)
        client.start_process(inst.id, "echo not-http | nc -l -p 9000")
        wait_port(client, inst.id, 9000)
        with pytest.raises(faas_sdk.BadGatewayError) as e:
            client.port_request(inst.id, 9000)
        assert (e.value.code, e.value.status) == ("bad_gateway", 502)
        with pytest.raises(faas_sdk.NotFoundError):
            client.port_request("no-such-instance", 8000)
        with pytest.raises(faas_sdk.NotFoundError):
            client.list_ports("no-such-instance")

        u = client.port_url(inst.id, 8000)
        assert u == f"{url}/api/v1/instances/{inst.id}/ports/8000/"
        key = os.environ.get("FAAS_API_KEY")
        if key:  # a server with keys: the URL takes the owner's, and is closed without
            req = urllib.request.Request(u, headers={"Authorization": f"Bearer {key}"})
            with urllib.request.urlopen(req, timeout=30) as resp:
                assert resp.read().decode() == INDEX
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(u, timeout=30)
            assert e.value.code == 401

        client.stop_instance(inst.id)
        with pytest.raises(faas_sdk.ConflictError):
            client.port_request(inst.id, 8000)  # not running
        with pytest.raises(faas_sdk.ConflictError):
            client.list_ports(inst.id)
    finally:
        client.delete_instance(inst.id)


def test_public_ports_open_to_their_token(client):
    inst = client.create_instance(image=IMAGE, public_ports=True)
    try:
        token = inst.ports_token
        assert inst.public_ports is True and re.fullmatch(r"[0-9a-f]{64}", token or ""), inst.raw
        assert token not in repr(inst), "the token is kept out of the repr"
        assert client.get_instance(inst.id).ports_token == token
        assert {i.id: i for i in client.list_instances()}[inst.id].ports_token == token
        serve_www(client, inst.id)

        u = client.port_url(inst.id, 8000, token=token)
        assert u == client.port_url(inst.id, 8000) + f"?faas_token={token}"
        with urllib.request.urlopen(u, timeout=30) as resp:  # no API key: the token opens it
            assert resp.status == 200 and resp.read().decode() == INDEX
        by_header = {"X-Faas-Ports-Token": token}
        req = urllib.request.Request(client.port_url(inst.id, 8000), headers=by_header)
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.read().decode() == INDEX
        if os.environ.get("FAAS_API_KEY"):
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(client.port_url(inst.id, 8000, token="0" * 64), timeout=30)
            assert e.value.code == 404, "a wrong token finds no instance"
    finally:
        client.delete_instance(inst.id)


def test_network_settings(client):
    """``network`` goes with instances, executions and functions; without sandbox networking
    (``--no-network``) the server refuses anything but none with 501 unsupported."""
    r = client.execute("echo offline", image=IMAGE, network="none")
    assert r.stdout == "offline\n"
    rules = {"egress": "deny", "allow": ["example.com", "10.1.2.0/24"], "deny": []}
    for network in ("internet", rules):
        try:
            inst = client.create_instance(image=IMAGE, network=network)
        except faas_sdk.UnsupportedError as e:
            assert (e.code, e.status) == ("unsupported", 501)
        else:
            try:
                assert inst.network == network
            finally:
                client.delete_instance(inst.id)
    name = f"sdk-net-{uuid.uuid4().hex[:10]}"
    f = client.deploy_function(name, "shell", code="echo hi\n", network=rules)
    try:
        assert f.network == rules and client.get_function(name).network == rules
    finally:
        client.delete_function(name)


def test_async_ports(url):
    async def main():
        async with AsyncFaaSClient(url) as c:
            inst = await c.create_instance(image=IMAGE, public_ports=True)
            try:
                assert len(inst.ports_token) == 64
                await c.upload_file(inst.id, "/www/index.html", INDEX)
                await c.start_process(inst.id, HTTPD)
                deadline = time.monotonic() + 10
                while 8000 not in [p.port for p in await c.list_ports(inst.id)]:
                    assert time.monotonic() < deadline, "port 8000 not listed after 10s"
                    await asyncio.sleep(0.1)
                r = await c.port_request(inst.id, 8000, "/index.html")
                assert (r.status, r.text) == (200, INDEX)
                with pytest.raises(faas_sdk.PortClosedError):
                    await c.port_request(inst.id, 8001)
                assert c.port_url(inst.id, 8000).startswith(url)
            finally:
                await c.delete_instance(inst.id)

    asyncio.run(main())
