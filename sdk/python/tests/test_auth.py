"""API keys and tenants: the key on every request (fake server), the 401 / 403 / 429 errors, and
against the live server (its admin key in FAAS_API_KEY) whoami, tenants, member keys, the
isolation of tenants, revocation, usage and the audit trail."""

import asyncio
import email.utils
import json
import logging
import os
import shutil
import ssl
import subprocess
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import faas_sdk
from faas_sdk import AsyncFaaSClient, FaaSClient, Quotas
from faas_sdk.errors import retry_after_seconds
from faas_sdk.models import QUOTA_FIELDS

IMAGE = "faas/busybox:latest"
SECRET = "faas_0123456789abcdefTOPSECRET"


# ---- against a fake server (no faas server needed) ----


class FakeServer:
    """An HTTP server on 127.0.0.1:0 that records each request's method, path and headers and
    answers from ``routes``: ``(method, path) -> (status, headers, body)``, else 200 ``{}``."""

    def __init__(self, routes=None, tls=None):
        self.routes = routes or {}
        self.requests = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # a WebSocket client wants an HTTP/1.1 answer

            def handle_one(self):
                path = self.path.split("?")[0]
                seen = {k.lower(): v for k, v in self.headers.items()}
                fake.requests.append((self.command, path, seen))
                length = int(self.headers.get("content-length") or 0)
                if length:
                    self.rfile.read(length)
                status, headers, body = fake.routes.get((self.command, path), (200, {}, b"{}"))
                self.send_response(status)
                headers = {"content-type": "application/json", **headers}
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(body)))
                self.send_header("connection", "close")
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = handle_one

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.handle_error = lambda *a: None  # a client refusing the certificate, say
        scheme = "http"
        if tls is not None:  # (certificate, key) files: https
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            # The handshake happens in the handler's thread, not in the accepting one.
            self._server.socket = ctx.wrap_socket(
                self._server.socket, server_side=True, do_handshake_on_connect=False
            )
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def auth_of(self, path):
        return [h.get("authorization") for _, p, h in self.requests if p == path]

    def close(self):
        self._server.shutdown()
        self._server.server_close()


def error_body(code, message):
    return json.dumps({"error": {"code": code, "message": message}}).encode()


SSE_EXIT = (200, {"content-type": "text/event-stream"}, b'event: exit\ndata: {"exit_code": 0}\n\n')
UNAUTHENTICATED = (401, {}, error_body("unauthenticated", "unknown API key"))


@pytest.fixture
def fake():
    server = FakeServer(
        {
            ("GET", "/api/v1/instances"): (200, {}, b'{"instances": []}'),
            ("GET", "/api/v1/logs/r1/stream"): SSE_EXIT,
            ("GET", "/api/v1/instances/i1/terminal"): UNAUTHENTICATED,
            ("GET", "/api/v1/auth/whoami"): UNAUTHENTICATED,
            ("GET", "/api/v1/tenants"): (403, {}, error_body("forbidden", "admin only")),
            ("GET", "/api/v1/keys"): (
                429,
                {"retry-after": "2"},
                error_body("rate_limited", "slow down"),
            ),
            ("POST", "/api/v1/instances"): (
                429,
                {"retry-after": "5"},
                error_body("quota_exceeded", "instances quota of 1 reached"),
            ),
        }
    )
    yield server
    server.close()


def test_the_key_goes_with_every_request(fake, monkeypatch):
    monkeypatch.delenv("FAAS_API_KEY", raising=False)
    with FaaSClient(fake.url, api_key=SECRET) as c:
        c.list_instances()
        assert [e.event for e in c.stream_logs("r1")] == ["exit"]
        with pytest.raises(faas_sdk.AuthenticationError):
            c.terminal("i1")  # the fake refuses the upgrade; the handshake had the key
    want = f"Bearer {SECRET}"
    assert fake.auth_of("/api/v1/instances") == [want]
    assert fake.auth_of("/api/v1/logs/r1/stream") == [want], "streams carry the key"
    assert fake.auth_of("/api/v1/instances/i1/terminal") == [want], "so does the WebSocket"

    async def main():
        async with AsyncFaaSClient(fake.url, api_key=SECRET) as c:
            await c.list_instances()
            assert [e.event async for e in c.stream_logs("r1")] == ["exit"]
            with pytest.raises(faas_sdk.AuthenticationError):
                await c.terminal("i1")

    fake.requests.clear()
    asyncio.run(main())
    assert fake.auth_of("/api/v1/instances") == [want]
    assert fake.auth_of("/api/v1/logs/r1/stream") == [want]
    assert fake.auth_of("/api/v1/instances/i1/terminal") == [want]


def test_the_key_defaults_to_faas_api_key(fake, monkeypatch):
    monkeypatch.setenv("FAAS_API_KEY", "faas_fromtheenv\n")
    with FaaSClient(fake.url) as c:
        c.list_instances()
    with FaaSClient(fake.url, api_key="faas_given") as c:
        c.list_instances()
    with FaaSClient(fake.url, api_key="") as c:  # "" sends none, whatever the environment
        c.list_instances()
    with FaaSClient(fake.url, api_key="", headers={"X-API-Key": "faas_header"}) as c:
        c.list_instances()
    assert fake.auth_of("/api/v1/instances") == [
        "Bearer faas_fromtheenv",
        "Bearer faas_given",
        None,
        None,
    ]
    assert fake.requests[-1][2].get("x-api-key") == "faas_header"


def test_401_403_429_have_their_class_code_and_retry_after(fake):
    with FaaSClient(fake.url, api_key=SECRET, max_retries=0) as c:
        with pytest.raises(faas_sdk.AuthenticationError) as e:
            c.whoami()
        assert (e.value.status, e.value.code, e.value.retry_after) == (401, "unauthenticated", None)
        assert e.value.message == "unknown API key"
        with pytest.raises(faas_sdk.ForbiddenError) as e:
            c.list_tenants()
        assert (e.value.status, e.value.code) == (403, "forbidden")
        with pytest.raises(faas_sdk.RateLimitedError) as e:
            c.list_keys()
        assert type(e.value) is faas_sdk.RateLimitedError
        assert (e.value.status, e.value.code, e.value.retry_after) == (429, "rate_limited", 2.0)
        assert "retry after 2s" in str(e.value)
        with pytest.raises(faas_sdk.QuotaExceededError) as e:
            c.create_instance()
        assert isinstance(e.value, faas_sdk.RateLimitedError), "a 429 of either kind"
        assert (e.value.status, e.value.code, e.value.retry_after) == (429, "quota_exceeded", 5.0)
    with FaaSClient(fake.url, api_key="") as c:
        with pytest.raises(faas_sdk.AuthenticationError) as e:
            c.whoami()
        assert "FAAS_API_KEY" in e.value.message, "a 401 without a key says how to give one"

    assert retry_after_seconds("3") == 3.0 and retry_after_seconds("0.5") == 0.5
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    in_10s = email.utils.formatdate(time.time() + 10, usegmt=True)
    assert 8 <= retry_after_seconds(in_10s) <= 10


def test_the_key_is_never_shown(fake, caplog, monkeypatch):
    monkeypatch.delenv("FAAS_API_KEY", raising=False)
    caplog.set_level(logging.DEBUG)  # httpx, httpcore and websockets log at debug level
    shown = []
    with FaaSClient(fake.url, api_key=SECRET) as c:
        shown += [repr(c), repr(c._http), repr(c._http.headers)]
        for call in (c.whoami, lambda: c.terminal("i1")):
            with pytest.raises(faas_sdk.FaaSError) as e:
                call()
            shown += [str(e.value), repr(e.value), e.value.message]
    with FaaSClient("http://127.0.0.1:9", api_key=SECRET, max_retries=0) as c:
        with pytest.raises(faas_sdk.ConnectionError) as e:
            c.list_instances()
        shown += [str(e.value), repr(e.value)]
    with pytest.raises(ValueError) as e:
        FaaSClient(fake.url, api_key=SECRET + "\nX")  # a header cannot carry it: say so, not it
    shown.append(str(e.value))
    key = faas_sdk.ApiKey.from_dict({"id": "k1", "secret": SECRET})
    shown.append(repr(key))
    assert any("websockets" in r.name for r in caplog.records), "the handshake was logged"
    shown.append(caplog.text)
    assert not [s for s in shown if SECRET in s]


def self_signed(dir):
    """A certificate of 127.0.0.1 that is its own CA, and its key (files in ``dir``)."""
    if not shutil.which("openssl"):
        pytest.skip("skipped: no openssl to make a certificate with")
    cert, key = str(dir / "cert.pem"), str(dir / "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-keyout", key, "-out", cert,
         "-addext", "subjectAltName=IP:127.0.0.1", "-addext", "basicConstraints=critical,CA:TRUE"],
        check=True, capture_output=True,
    )
    return cert, key


def test_https_with_a_ca_bundle(tmp_path, monkeypatch):
    cert, key = self_signed(tmp_path)
    server = FakeServer(
        {
            ("GET", "/api/v1/instances"): (200, {}, b'{"instances": []}'),
            ("GET", "/api/v1/instances/i1/terminal"): UNAUTHENTICATED,
        },
        tls=(cert, key),
    )
    try:
        monkeypatch.delenv("FAAS_CA_CERT", raising=False)
        with FaaSClient(server.url, api_key=SECRET, verify=cert) as c:
            assert c.list_instances() == []
            with pytest.raises(faas_sdk.AuthenticationError):
                c.terminal("i1")  # wss with the same CA; the fake refuses the upgrade
        assert server.auth_of("/api/v1/instances/i1/terminal") == [f"Bearer {SECRET}"]
        with FaaSClient(server.url, api_key=SECRET, max_retries=0) as c:
            with pytest.raises(faas_sdk.ConnectionError):
                c.list_instances()  # not a CA the system trusts
        with FaaSClient(server.url, verify=False) as c:
            assert c.list_instances() == []
        monkeypatch.setenv("FAAS_CA_CERT", cert)
        with FaaSClient(server.url) as c:
            assert c.list_instances() == [], "FAAS_CA_CERT is the default CA bundle"

        async def main():
            async with AsyncFaaSClient(server.url) as c:
                assert await c.list_instances() == []

        asyncio.run(main())
    finally:
        server.close()
    with pytest.raises(ValueError, match="no-such-ca.pem"):
        FaaSClient("https://127.0.0.1:1", verify=str(tmp_path / "no-such-ca.pem"))


# ---- against the live server, with its admin key ----


def now_ms():
    return int(time.time() * 1000)


def rnd():
    return uuid.uuid4().hex[:10]


@pytest.fixture
def member(admin):
    """Makes a tenant and a member key of it: ``member(label, quotas=None) -> (tenant, key)``;
    the keys are revoked at the end."""
    keys = []

    def make(label, quotas=None):
        tid = f"sdk-py-{label}-{rnd()}"
        tenant = admin.create_tenant(tid, name=f"sdk py {label}", quotas=quotas)
        key = admin.create_key(f"sdk-py-{label}", tenant=tenant.id)
        keys.append(key.id)
        return tenant, key

    yield make
    for key_id in keys:
        try:
            admin.revoke_key(key_id)
        except (faas_sdk.NotFoundError, faas_sdk.ConflictError):
            pass  # the test revoked it


def test_no_key_is_unauthenticated(admin, url):
    with FaaSClient(url, api_key="", max_retries=0) as c:
        assert c.health_check().healthy, "/health needs no key"
        for call in (
            c.whoami,
            c.list_instances,
            lambda: c.execute("true", image=IMAGE),
            lambda: list(c.stream_logs("sdk-no-key")),
            lambda: c.terminal("no-such-instance"),
        ):
            with pytest.raises(faas_sdk.AuthenticationError) as e:
                call()
            assert (e.value.status, e.value.code) == (401, "unauthenticated") and e.value.message
    with FaaSClient(url, api_key="faas_0000notakey0000") as c:
        with pytest.raises(faas_sdk.AuthenticationError) as e:
            c.list_instances()
        assert e.value.code == "unauthenticated" and "faas_0000notakey0000" not in str(e.value)

    async def main():
        async with AsyncFaaSClient(url, api_key="") as c:
            with pytest.raises(faas_sdk.AuthenticationError):
                await c.list_instances()

    asyncio.run(main())


def test_whoami_and_the_x_api_key_header(admin, url):
    me = admin.whoami()
    assert me.role == "admin" and me.is_admin and me.tenant and me.key_id
    with FaaSClient(url, api_key="", headers={"X-API-Key": os.environ["FAAS_API_KEY"]}) as c:
        assert c.whoami().key_id == me.key_id


def test_tenants_and_their_quotas(admin):
    tid = f"sdk-py-{rnd()}"
    t = admin.create_tenant(tid, name="SDK py", quotas={"instances": 3, "functions": 2})
    assert (t.id, t.name) == (tid, "SDK py") and t.created_at_ms > 0
    assert t.quotas.to_dict() == {"instances": 3, "functions": 2}, "the settings as given"
    assert t.effective.instances == 3 and t.effective.functions == 2
    assert all(getattr(t.effective, f) is not None for f in QUOTA_FIELDS), "every limit resolved"
    assert admin.get_tenant(tid).quotas.to_dict() == {"instances": 3, "functions": 2}
    assert tid in [x.id for x in admin.list_tenants()]

    replaced = admin.set_tenant_quotas(tid, Quotas(memory_mb=512))
    assert replaced.quotas.to_dict() == {"memory_mb": 512}, "PUT replaces the settings"
    got = admin.get_tenant(tid)
    assert got.effective.memory_mb == 512 and got.quotas.instances is None

    generated = admin.create_tenant(name="sdk py generated")
    assert generated.id and generated.id != tid
    with pytest.raises(faas_sdk.NotFoundError):
        admin.get_tenant(f"sdk-py-none-{rnd()}")
    with pytest.raises(faas_sdk.ConflictError):
        admin.create_tenant(tid)
    with pytest.raises(faas_sdk.InvalidRequestError):
        admin.create_tenant("Not A Valid Id!")


def test_keys_create_list_revoke(admin, url):
    me = admin.whoami()
    k = admin.create_key("sdk-py-ci", expires_in_s=3600)
    a = admin.create_key("sdk-py-admin", role="admin")
    try:
        assert k.secret.startswith("faas_")
        assert (k.name, k.tenant, k.role) == ("sdk-py-ci", me.tenant, "member"), "the defaults"
        assert k.prefix and k.secret.startswith(k.prefix) and len(k.prefix) < len(k.secret)
        assert abs(k.expires_at_ms - k.created_at_ms - 3_600_000) < 5_000
        assert k.revoked_at_ms is None and k.secret not in repr(k)
        listed = {x.id: x for x in admin.list_keys()}
        assert listed[k.id].secret is None, "a key's secret is shown once"
        assert listed[k.id].prefix == k.prefix and listed[a.id].role == "admin"
        assert k.id in [x.id for x in admin.list_keys(tenant=me.tenant)]
        with FaaSClient(url, api_key=a.secret) as c:
            assert c.whoami().role == "admin"
    finally:
        admin.revoke_key(k.id)
        admin.revoke_key(a.id)
    assert {x.id: x for x in admin.list_keys()}[k.id].revoked_at_ms is not None
    with FaaSClient(url, api_key=a.secret) as c:
        with pytest.raises(faas_sdk.AuthenticationError):
            c.whoami()


def test_a_member_key_works_in_its_own_tenant_only(admin, url, member):
    ta, ka = member("a")
    tb, kb = member("b")
    with FaaSClient(url, api_key=ka.secret) as a, FaaSClient(url, api_key=kb.secret) as b:
        me = a.whoami()
        assert (me.tenant, me.role, me.key_id) == (ta.id, "member", ka.id) and not me.is_admin
        for admin_only in (
            lambda: a.create_key("sdk-py-nope"),
            a.list_tenants,
            a.list_keys,
            a.list_audit_events,
            lambda: a.set_tenant_quotas(ta.id, {"instances": 100}),
        ):
            with pytest.raises(faas_sdk.ForbiddenError) as e:
                admin_only()
            assert (e.value.status, e.value.code) == (403, "forbidden")

        assert a.execute("echo member", image=IMAGE).stdout == "member\n"
        inst = a.create_instance(image=IMAGE)
        try:
            assert a.exec_instance(inst.id, "echo in-a").stdout == "in-a\n"
            assert inst.id in [i.id for i in a.list_instances()]
            with pytest.raises(faas_sdk.NotFoundError) as e:
                b.get_instance(inst.id)
            assert e.value.code == "not_found", "another tenant's instance does not exist for b"
            assert inst.id not in [i.id for i in b.list_instances()]
            with pytest.raises(faas_sdk.NotFoundError):
                b.exec_instance(inst.id, "true")
            with pytest.raises(faas_sdk.NotFoundError):
                b.delete_instance(inst.id)
            with pytest.raises(faas_sdk.NotFoundError):
                b.list_ports(inst.id)
            with pytest.raises(faas_sdk.NotFoundError):
                b.port_request(inst.id, 8000)  # its ports neither
            assert a.get_instance(inst.id).status == "running"
        finally:
            a.delete_instance(inst.id)

        admin.revoke_key(ka.id)
        with pytest.raises(faas_sdk.AuthenticationError) as e:
            a.whoami()
        assert (e.value.status, e.value.code) == (401, "unauthenticated")
        assert b.whoami().tenant == tb.id, "the other tenant's key still works"


NUMBERS = (
    "executions",
    "instance_execs",
    "invocations",
    "instance_seconds",
    "wall_ms",
    "cpu_ms",
    "memory_mib_s",
    "peak_memory_mb",
)


def test_usage_of_a_tenant(admin, url, member):
    t, k = member("usage")
    start = now_ms() - 1_000
    with FaaSClient(url, api_key=k.secret) as m:
        assert m.execute("echo counted", image=IMAGE).exit_code == 0
        inst = m.create_instance(image=IMAGE)
        try:
            m.exec_instance(inst.id, "true")
        finally:
            m.delete_instance(inst.id)
        deadline = time.monotonic() + 15
        while True:
            u = m.get_usage(from_ms=start, group_by="day")  # a member: its own tenant's
            if u.total.executions >= 1 and u.total.instance_execs >= 1:
                break
            assert time.monotonic() < deadline, f"no usage counted: {u.raw}"
            time.sleep(0.2)
        assert (u.tenant, u.group_by, u.total.key) == (t.id, "day", "total")
        assert u.from_ms <= start + 1_000 and u.to_ms >= u.from_ms
        assert u.rows and sum(r.executions for r in u.rows) == u.total.executions
        for row in [*u.rows, u.total]:
            for name in NUMBERS:
                value = getattr(row, name)
                assert isinstance(value, (int, float)) and value >= 0, (name, row.raw)
        assert u.total.wall_ms > 0

        by_instance = m.get_usage(from_ms=start, to_ms=now_ms() + 60_000, group_by="instance")
        assert inst.id in [r.key for r in by_instance.rows], by_instance.raw
    seen = admin.get_usage(from_ms=start, group_by="day", tenant=t.id)  # an admin names it
    assert seen.tenant == t.id and seen.total.executions == u.total.executions
    assert admin.get_usage(from_ms=start, group_by="function", tenant=t.id).rows == []


def test_audit_lists_key_creation_without_the_secret(admin, member):
    t, k = member("audit")
    me = admin.whoami()
    events = admin.list_audit_events(limit=1000)
    made = [e for e in events if e.action == "key.create" and e.target == k.id]
    assert made, [(e.action, e.target) for e in events]
    assert made[0].actor_tenant == me.tenant and made[0].actor_key_id == me.key_id
    assert made[0].at_ms > 0 and made[0].id is not None
    assert any(e.action == "tenant.create" and e.target == t.id for e in events)
    assert k.secret not in json.dumps([e.raw for e in events]), "the audit never holds a secret"
    assert len(admin.list_audit_events(limit=1)) == 1


def test_rate_limit_and_quota_answers(url, member):
    _, slow = member("rate", quotas={"requests_per_second": 1, "burst": 1})
    with FaaSClient(url, api_key=slow.secret) as m:
        errors = []
        for _ in range(5):
            try:
                m.list_instances()
            except faas_sdk.RateLimitedError as e:
                errors.append(e)
        assert errors, "5 calls at once over a rate of 1/s"
        e = errors[0]
        assert type(e) is faas_sdk.RateLimitedError and (e.status, e.code) == (429, "rate_limited")
        assert e.retry_after is not None and e.retry_after > 0
        time.sleep(e.retry_after)
        m.list_instances()  # within the rate again

    _, small = member("quota", quotas={"instances": 1})
    with FaaSClient(url, api_key=small.secret) as m:
        first = m.create_instance(image=IMAGE)
        try:
            with pytest.raises(faas_sdk.QuotaExceededError) as e:
                second = m.create_instance(image=IMAGE)
                m.delete_instance(second.id)
            assert (e.value.status, e.value.code) == (429, "quota_exceeded")
            assert e.value.retry_after is not None and e.value.message
        finally:
            m.delete_instance(first.id)
