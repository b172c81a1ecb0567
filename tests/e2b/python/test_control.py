"""The control plane through the stock SDK: create, info, list, timeouts, pause and connect,
snapshots, forks, metrics, kill; and E2B's error shape on the wire."""

import os
import time
import uuid

import httpx
import pytest
from e2b import Sandbox, SandboxQuery, SandboxState
from e2b.exceptions import NotFoundException, SandboxException


def api(method, path, **kw):
    """A raw request to the control plane, with the key unless `headers` says otherwise."""
    headers = kw.pop("headers", {"X-API-KEY": os.environ["E2B_API_KEY"]})
    return httpx.request(method, os.environ["E2B_API_URL"] + path, headers=headers, **kw)


def wait_for(cond, seconds=15.0):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.25)
    return cond()


def test_create_with_metadata_and_envs_then_info_and_kill():
    tag = uuid.uuid4().hex
    sbx = Sandbox.create(metadata={"suite": tag, "k": "v"}, envs={"FOO": "bar"}, timeout=120)
    try:
        assert sbx.sandbox_id
        info = sbx.get_info()
        assert info.sandbox_id == sbx.sandbox_id
        assert info.template_id == "base"
        assert info.metadata == {"suite": tag, "k": "v"}
        assert info.state == SandboxState.RUNNING
        assert info.cpu_count >= 1 and info.memory_mb > 0
        # endAt is startedAt + timeout.
        assert abs((info.end_at - info.started_at).total_seconds() - 120) < 2
        assert sbx.is_running()
        assert sbx.commands.run("echo $FOO").stdout.strip() == "bar"
    finally:
        assert sbx.kill() is True
    assert Sandbox.kill(sbx.sandbox_id) is False
    assert not sbx.is_running()
    with pytest.raises(NotFoundException):
        sbx.get_info()
    with pytest.raises(NotFoundException):
        Sandbox.get_info(sbx.sandbox_id)


def test_list_filters_by_metadata_and_state_and_pages():
    tag = uuid.uuid4().hex
    made = [Sandbox.create(metadata={"suite": tag, "n": str(i)}, timeout=120) for i in range(3)]
    other = Sandbox.create(metadata={"suite": "not-" + tag}, timeout=120)
    try:
        paginator = Sandbox.list(query=SandboxQuery(metadata={"suite": tag}), limit=2)
        first = paginator.next_items()
        assert len(first) == 2 and paginator.has_next
        second = paginator.next_items()
        assert len(second) == 1 and not paginator.has_next
        assert {s.sandbox_id for s in first + second} == {s.sandbox_id for s in made}
        assert all(s.metadata["suite"] == tag for s in first + second)

        # Two keys at once: both must match.
        one = Sandbox.list(query=SandboxQuery(metadata={"suite": tag, "n": "1"})).next_items()
        assert [s.sandbox_id for s in one] == [made[1].sandbox_id]

        assert made[0].pause() is True
        paused = Sandbox.list(
            query=SandboxQuery(metadata={"suite": tag}, state=[SandboxState.PAUSED])
        ).next_items()
        assert [s.sandbox_id for s in paused] == [made[0].sandbox_id]
        assert paused[0].state == SandboxState.PAUSED
        running = Sandbox.list(
            query=SandboxQuery(metadata={"suite": tag}, state=[SandboxState.RUNNING])
        ).next_items()
        assert {s.sandbox_id for s in running} == {made[1].sandbox_id, made[2].sandbox_id}
    finally:
        for s in made + [other]:
            s.kill()


def test_a_sandbox_past_its_timeout_is_gone():
    sbx = Sandbox.create(timeout=120)
    sbx.set_timeout(2)
    info = sbx.get_info()
    assert (info.end_at - info.started_at).total_seconds() < 120
    assert wait_for(lambda: not sbx.is_running(), 10)
    assert wait_for(lambda: api("GET", f"/sandboxes/{sbx.sandbox_id}").status_code == 404, 10)
    with pytest.raises(NotFoundException):
        Sandbox.connect(sbx.sandbox_id)
    with pytest.raises(NotFoundException):
        Sandbox.get_info(sbx.sandbox_id)
    assert sbx.kill() is False


def test_set_timeout_moves_the_end():
    sbx = Sandbox.create(timeout=3)
    try:
        sbx.set_timeout(120)
        time.sleep(4)
        assert sbx.is_running()
        info = sbx.get_info()
        assert info.state == SandboxState.RUNNING
    finally:
        sbx.kill()


def test_auto_pause_at_the_timeout_keeps_files():
    sbx = Sandbox.create(timeout=3, lifecycle={"on_timeout": "pause"})
    try:
        assert sbx.get_info().lifecycle["on_timeout"] == "pause"
        sbx.files.write("/home/kept.txt", "before")
        assert wait_for(lambda: sbx.get_info().state == SandboxState.PAUSED, 15)
        assert not sbx.is_running()
        again = Sandbox.connect(sbx.sandbox_id, timeout=60)
        assert again.sandbox_id == sbx.sandbox_id
        assert again.get_info().state == SandboxState.RUNNING
        assert again.files.read("/home/kept.txt") == "before"
        # Its new timeout is counted from the resume.
        time.sleep(4)
        assert again.is_running()
    finally:
        sbx.kill()


def test_pause_then_connect_keeps_files_id_and_token():
    sbx = Sandbox.create(timeout=120)
    try:
        sbx.files.write("/home/state.txt", "kept across pause")
        assert sbx.pause() is True
        assert sbx.get_info().state == SandboxState.PAUSED
        assert not sbx.is_running()
        # Already paused: False, as the SDK says for a 409.
        assert sbx.pause() is False
        resumed = sbx.connect()
        assert resumed.sandbox_id == sbx.sandbox_id
        assert sbx.is_running()
        # The old handle, its token unchanged, works again.
        assert sbx.files.read("/home/state.txt") == "kept across pause"
        assert Sandbox.connect(sbx.sandbox_id).files.read("/home/state.txt") == "kept across pause"
    finally:
        sbx.kill()


def test_connect_to_a_running_sandbox_only_extends_its_timeout():
    sbx = Sandbox.create(timeout=120)
    try:
        end = sbx.get_info().end_at
        Sandbox.connect(sbx.sandbox_id, timeout=10)
        assert sbx.get_info().end_at == end
        Sandbox.connect(sbx.sandbox_id, timeout=600)
        assert sbx.get_info().end_at > end
    finally:
        sbx.kill()


def test_snapshot_then_create_from_it():
    sbx = Sandbox.create(timeout=120)
    restored = None
    try:
        sbx.files.write("/home/snap.txt", "in the snapshot")
        snap = sbx.create_snapshot()
        assert snap.snapshot_id
        listed = Sandbox.list_snapshots(sandbox_id=sbx.sandbox_id).next_items()
        assert snap.snapshot_id in [s.snapshot_id for s in listed]

        restored = Sandbox.create(snap.snapshot_id, timeout=120)
        assert restored.sandbox_id != sbx.sandbox_id
        assert restored.files.read("/home/snap.txt") == "in the snapshot"
        info = restored.get_info()
        assert info.template_id == snap.snapshot_id
        assert info.state == SandboxState.RUNNING
    finally:
        sbx.kill()
        if restored:
            restored.kill()
    assert Sandbox.delete_snapshot(snap.snapshot_id) is True
    assert Sandbox.delete_snapshot(snap.snapshot_id) is False


def test_an_unknown_template_is_refused():
    with pytest.raises(SandboxException):
        Sandbox.create("no-such-template")


def test_fork():
    sbx = Sandbox.create(timeout=120)
    forks = []
    try:
        sbx.files.write("/home/fork.txt", "forked")
        forks = sbx.fork(count=2, timeout=60)
        assert len(forks) == 2
        for f in forks:
            assert isinstance(f, Sandbox), f
            assert f.sandbox_id != sbx.sandbox_id
            assert f.files.read("/home/fork.txt") == "forked"
            info = f.get_info()
            assert abs((info.end_at - info.started_at).total_seconds() - 60) < 5
        # The forks' snapshot is theirs: not among the snapshots listed.
        names = [n for s in api("GET", "/snapshots").json() for n in s["names"]]
        assert f"fork of {sbx.sandbox_id}" not in names
    finally:
        for f in forks:
            if isinstance(f, Sandbox):
                f.kill()
        sbx.kill()
    # ...and it went with the last of them.
    key = os.environ["E2B_API_KEY"]
    ours = api("GET", "/api/v1/snapshots", headers={"Authorization": f"Bearer {key}"}).json()
    assert f"fork of {sbx.sandbox_id}" not in [s["name"] for s in ours["snapshots"]]


def test_metrics(sandbox):
    sandbox.commands.run("head -c 20000000 /dev/urandom | md5sum")
    m = sandbox.get_metrics()
    assert len(m) == 1
    assert m[0].cpu_count >= 1
    assert m[0].mem_total > 0 and m[0].mem_used > 0
    assert 0 <= m[0].cpu_used_pct <= 100


def test_errors_are_e2bs_shape():
    # No key, a bad key.
    r = api("GET", "/v2/sandboxes", headers={})
    assert r.status_code == 401 and r.json()["code"] == 401 and r.json()["message"]
    r = api("GET", "/v2/sandboxes", headers={"X-API-KEY": "not-a-key"})
    assert r.status_code == 401 and r.json()["code"] == 401
    # Malformed JSON.
    r = api("POST", "/v2/sandboxes", content=b"{nope")
    assert r.status_code == 400 and r.json()["code"] == 400
    # Unknown sandbox, snapshot, route.
    for method, path in [
        ("GET", "/sandboxes/nope"),
        ("DELETE", "/sandboxes/nope"),
        ("POST", "/sandboxes/nope/timeout"),
        ("POST", "/sandboxes/nope/pause"),
        ("POST", "/v2/sandboxes/nope/connect"),
        ("DELETE", "/templates/nope"),
        ("GET", "/sandboxes/nope/nothing-here"),
    ]:
        r = api(method, path, json={"timeout": 5})
        assert r.status_code == 404, (method, path, r.status_code, r.text)
        assert r.json() == {"code": 404, "message": r.json()["message"]}
    # A bad page token.
    r = api("GET", "/v2/sandboxes", params={"nextToken": "garbage"})
    assert r.status_code == 400 and r.json()["code"] == 400


def test_v1_paths():
    r = api("POST", "/sandboxes", json={"templateID": "base", "timeout": 60})
    assert r.status_code == 201, r.text
    body = r.json()
    for field in ("templateID", "sandboxID", "clientID", "envdVersion", "envdAccessToken"):
        assert body[field]
    sid = body["sandboxID"]
    try:
        listed = api("GET", "/sandboxes").json()
        assert sid in [s["sandboxID"] for s in listed]
        assert api("POST", f"/sandboxes/{sid}/pause").status_code == 204
        r = api("POST", f"/sandboxes/{sid}/resume", json={"timeout": 60})
        assert r.status_code == 201 and r.json()["envdAccessToken"] == body["envdAccessToken"]
        r = api("POST", f"/sandboxes/{sid}/connect", json={"timeout": 60})
        assert r.status_code == 200 and r.json()["sandboxID"] == sid
    finally:
        assert api("DELETE", f"/sandboxes/{sid}").status_code == 204


def test_instances_made_through_our_api_are_not_sandboxes():
    key = os.environ["E2B_API_KEY"]
    r = api("POST", "/api/v1/instances", json={}, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 201, r.text
    iid = r.json()["id"]
    try:
        assert api("GET", f"/sandboxes/{iid}").status_code == 404
        assert api("DELETE", f"/sandboxes/{iid}").status_code == 404
        assert iid not in [s["sandboxID"] for s in api("GET", "/v2/sandboxes").json()]
    finally:
        r = api("DELETE", f"/api/v1/instances/{iid}", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 204


def test_templates_are_listed():
    r = api("GET", "/templates")
    assert r.status_code == 200
    assert "base" in [t["templateID"] for t in r.json()]
