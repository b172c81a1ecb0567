"""The SDK against a live server: every endpoint of its OpenAPI document is exercised here."""

import asyncio
import threading
import time
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
}


def test_openapi_is_covered(client):
    doc = client.get_openapi()
    ops = {(m, p) for p, item in doc["paths"].items() for m in item}
    missing = ops - set(COVERED)
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
