"""Keys on the E2B surface: a wrong X-API-KEY is the SDK's own authentication error, and one
tenant's key neither sees nor reaches another tenant's sandboxes."""

import json
import os
import uuid
import urllib.request

import pytest
from e2b import AuthenticationException, NotFoundException, Sandbox, SandboxQuery


def _faas(method, path, body=None):
    """Our own API, with the admin key the runner gives (FAAS_URL, FAAS_API_KEY)."""
    req = urllib.request.Request(
        os.environ["FAAS_URL"] + path,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={
            "Authorization": "Bearer " + os.environ["FAAS_API_KEY"],
            "Content-Type": "application/json",
        },
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or b"null")


@pytest.fixture(scope="module")
def other_key():
    if not os.environ.get("FAAS_URL"):
        pytest.skip("skipped: FAAS_URL is not set (the runner sets it)")
    tenant = "e2b-other-" + uuid.uuid4().hex[:8]
    _faas("POST", "/api/v1/tenants", {"id": tenant})
    return _faas("POST", "/api/v1/keys", {"name": "e2b test", "tenant": tenant})["secret"]


def test_a_wrong_key_is_an_authentication_error():
    with pytest.raises(AuthenticationException):
        Sandbox.create(api_key="faas_" + "0" * 64)
    with pytest.raises(AuthenticationException):
        Sandbox.list(api_key="not-a-key").next_items()


def test_another_tenant_neither_sees_nor_reaches_a_sandbox(sandbox, other_key):
    sbx = sandbox
    marker = uuid.uuid4().hex
    sbx.commands.run(f"echo {marker} > /tmp/mine")
    with pytest.raises(NotFoundException):
        Sandbox.get_info(sbx.sandbox_id, api_key=other_key)
    with pytest.raises(NotFoundException):
        Sandbox.connect(sbx.sandbox_id, api_key=other_key)
    assert Sandbox.kill(sbx.sandbox_id, api_key=other_key) is False
    listed = Sandbox.list(api_key=other_key).next_items()
    assert sbx.sandbox_id not in [s.sandbox_id for s in listed]
    # The other tenant's own sandbox has its own token: it cannot be used for this one.
    theirs = Sandbox.create(api_key=other_key, timeout=60)
    try:
        assert theirs.commands.run("cat /tmp/mine 2>/dev/null || echo none").stdout == "none\n"
        mine = Sandbox.list(query=SandboxQuery(), api_key=other_key).next_items()
        assert [s.sandbox_id for s in mine] == [theirs.sandbox_id]
    finally:
        theirs.kill()
    # Still there and untouched for its owner.
    assert sbx.is_running()
    assert sbx.commands.run("cat /tmp/mine").stdout == marker + "\n"
