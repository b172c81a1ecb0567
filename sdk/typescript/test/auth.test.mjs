// API keys and tenants: the key on every request (fake fetch and socket), the 401 / 403 / 429
// errors, and against the live server (FAAS_URL, its admin key in FAAS_API_KEY) whoami,
// tenants, member keys, the isolation of tenants, revocation, usage and the audit trail.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile, execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { inspect, promisify } from "node:util";
import {
  FaaSClient,
  AuthenticationError,
  ConflictError,
  ConnectionError,
  FaaSError,
  ForbiddenError,
  InvalidRequestError,
  NotFoundError,
  QuotaExceededError,
  RateLimitedError,
  retryAfterSeconds,
} from "../dist/index.js";

const url = process.env.FAAS_URL;
const adminKey = process.env.FAAS_API_KEY;
const IMAGE = "faas/busybox:latest";
const SECRET = "faas_0123456789abcdefTOPSECRET";
const live = !url
  ? "FAAS_URL is not set (scripts/test.sh starts a server and sets it)"
  : !adminKey
    ? "FAAS_API_KEY is not set (scripts/test.sh exports the server's admin key)"
    : false;
const rnd = () => Math.random().toString(16).slice(2, 12);

// ---- against fakes (no server needed) ----

const errorBody = (code, message) => JSON.stringify({ error: { code, message } });

/** A fetch that records each call's path and headers and answers from `routes`
 * (`"METHOD /path" -> () => Response`), else 200 `{}`. */
function fakeFetch(routes = {}) {
  const calls = [];
  const fetch = async (u, init) => {
    const path = new URL(String(u)).pathname;
    calls.push({ method: init.method, path, headers: init.headers });
    const answer = routes[`${init.method} ${path}`];
    return answer ? answer() : new Response("{}", { status: 200, headers: { "content-type": "application/json" } });
  };
  return { fetch, calls, authOf: (path) => calls.filter((c) => c.path === path).map((c) => c.headers.authorization) };
}

const json = (body, status = 200, headers = {}) => () =>
  new Response(typeof body === "string" ? body : JSON.stringify(body), { status, headers: { "content-type": "application/json", ...headers } });

class FakeWebSocket {
  static last;
  constructor(u, opts) {
    FakeWebSocket.last = this;
    this.url = u;
    this.opts = opts;
    setTimeout(() => this.onopen?.({}), 0);
  }
  send() {}
  close() {
    setTimeout(() => this.onclose?.({ code: 1000 }), 0);
  }
}

/** Runs `fn` with FAAS_API_KEY set to `value` (or unset for undefined). */
async function withEnvKey(value, fn) {
  const saved = process.env.FAAS_API_KEY;
  if (value === undefined) delete process.env.FAAS_API_KEY;
  else process.env.FAAS_API_KEY = value;
  try {
    return await fn();
  } finally {
    if (saved === undefined) delete process.env.FAAS_API_KEY;
    else process.env.FAAS_API_KEY = saved;
  }
}

test("the API key goes with every request, stream and terminal handshake (fakes)", async () => {
  const f = fakeFetch({
    "GET /api/v1/instances": json({ instances: [] }),
    "GET /api/v1/logs/r1/stream": () =>
      new Response('event: exit\ndata: {"exit_code": 0}\n\n', { status: 200, headers: { "content-type": "text/event-stream" } }),
  });
  const c = new FaaSClient("https://h.example:8443", { apiKey: SECRET, fetch: f.fetch, WebSocket: FakeWebSocket });
  await c.listInstances();
  const events = [];
  for await (const ev of c.streamLogs("r1")) events.push(ev.event);
  assert.deepEqual(events, ["exit"]);
  const term = await c.terminal("i1");
  term.close();
  const want = `Bearer ${SECRET}`;
  assert.deepEqual(f.authOf("/api/v1/instances"), [want]);
  assert.deepEqual(f.authOf("/api/v1/logs/r1/stream"), [want], "streams carry the key");
  assert.equal(FakeWebSocket.last.opts.headers.authorization, want, "so does the WebSocket");
  assert.match(FakeWebSocket.last.url, /^wss:\/\/h\.example:8443\//, "https gives wss");
});

test("apiKey defaults to FAAS_API_KEY; \"\" and null send none", async () => {
  const f = fakeFetch();
  await withEnvKey("faas_fromtheenv\n", async () => {
    await new FaaSClient({ baseUrl: "http://h.example", fetch: f.fetch }).listInstances();
    await new FaaSClient({ baseUrl: "http://h.example", fetch: f.fetch, apiKey: "faas_given" }).listInstances();
    await new FaaSClient({ baseUrl: "http://h.example", fetch: f.fetch, apiKey: "" }).listInstances();
    await new FaaSClient({ baseUrl: "http://h.example", fetch: f.fetch, apiKey: null }).listInstances();
    await new FaaSClient({ baseUrl: "http://h.example", fetch: f.fetch, apiKey: "", headers: { "X-API-Key": "faas_h" } }).listInstances();
  });
  await withEnvKey(undefined, async () => {
    await new FaaSClient({ baseUrl: "http://h.example", fetch: f.fetch }).listInstances();
  });
  assert.deepEqual(f.authOf("/api/v1/instances"), ["Bearer faas_fromtheenv", "Bearer faas_given", undefined, undefined, undefined, undefined]);
  assert.equal(f.calls[4].headers["X-API-Key"], "faas_h");
  assert.throws(() => new FaaSClient({ apiKey: 42 }), TypeError);
});

test("401, 403 and 429 have their class, code and retryAfter (fake)", async () => {
  const f = fakeFetch({
    "GET /api/v1/auth/whoami": json(errorBody("unauthenticated", "unknown API key"), 401),
    "GET /api/v1/tenants": json(errorBody("forbidden", "admin only"), 403),
    "GET /api/v1/keys": json(errorBody("rate_limited", "slow down"), 429, { "retry-after": "2" }),
    "POST /api/v1/instances": json(errorBody("quota_exceeded", "instances quota of 1 reached"), 429, { "retry-after": "5" }),
  });
  const c = new FaaSClient({ baseUrl: "http://h.example", apiKey: SECRET, fetch: f.fetch, maxRetries: 0 });
  await assert.rejects(c.whoami(), (e) => e instanceof AuthenticationError && e.status === 401 && e.code === "unauthenticated" && e.retryAfter === null && e.message === "unknown API key");
  await assert.rejects(c.listTenants(), (e) => e instanceof ForbiddenError && e.status === 403 && e.code === "forbidden");
  await assert.rejects(c.listKeys(), (e) => e.constructor === RateLimitedError && e.code === "rate_limited" && e.retryAfter === 2);
  await assert.rejects(c.createInstance(), (e) => e instanceof QuotaExceededError && e instanceof RateLimitedError && e.status === 429 && e.code === "quota_exceeded" && e.retryAfter === 5);
  const keyless = new FaaSClient({ baseUrl: "http://h.example", apiKey: "", fetch: f.fetch });
  await assert.rejects(keyless.whoami(), (e) => e instanceof AuthenticationError && /FAAS_API_KEY/.test(e.message), "a 401 without a key says how to give one");

  assert.equal(retryAfterSeconds("3"), 3);
  assert.equal(retryAfterSeconds(null), null);
  assert.equal(retryAfterSeconds("soon"), null);
  const in10s = retryAfterSeconds(new Date(Date.now() + 10_000).toUTCString());
  assert.ok(in10s >= 8 && in10s <= 10, String(in10s));
});

test("the API key is never shown", async () => {
  const f = fakeFetch({ "GET /api/v1/auth/whoami": json(errorBody("unauthenticated", "unknown API key"), 401) });
  const c = new FaaSClient({ baseUrl: "http://h.example", apiKey: SECRET, fetch: f.fetch, headers: { "x-trace": "1" } });
  const shown = [inspect(c, { showHidden: true, depth: 5 }), JSON.stringify(c), String(c)];
  const err = await c.whoami().catch((e) => e);
  assert.ok(err instanceof FaaSError);
  shown.push(err.message, String(err), inspect(err));
  const dead = new FaaSClient({ baseUrl: "http://127.0.0.1:9", apiKey: SECRET, maxRetries: 0 });
  const conn = await dead.listInstances().catch((e) => e);
  assert.ok(conn instanceof ConnectionError);
  shown.push(conn.message, inspect(conn), inspect(dead, { showHidden: true, depth: 5 }));
  const bad = (() => {
    try {
      new FaaSClient({ apiKey: `${SECRET}\nX` });
    } catch (e) {
      return e;
    }
  })();
  assert.ok(bad instanceof TypeError, "a key a header cannot carry is refused");
  shown.push(bad.message);
  assert.deepEqual(shown.filter((s) => s.includes(SECRET)), []);
});

/** A certificate of 127.0.0.1 that is its own CA, and its key (files in a temp dir), or null
 * without openssl. */
function selfSigned() {
  const dir = mkdtempSync(join(tmpdir(), "sdk-ts-tls-"));
  const cert = join(dir, "cert.pem");
  const key = join(dir, "key.pem");
  try {
    execFileSync("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
      "-subj", "/CN=127.0.0.1", "-keyout", key, "-out", cert, "-addext", "subjectAltName=IP:127.0.0.1",
      "-addext", "basicConstraints=critical,CA:TRUE"], { stdio: "ignore" });
  } catch {
    rmSync(dir, { recursive: true, force: true });
    return null;
  }
  return { dir, cert, key };
}

test("https: the server's CA from NODE_EXTRA_CA_CERTS", async (t) => {
  const tls = selfSigned();
  if (!tls) return t.skip("skipped: no openssl to make a certificate with");
  const seen = [];
  const server = createServer({ cert: readFileSync(tls.cert), key: readFileSync(tls.key) }, (req, res) => {
    seen.push(req.headers.authorization);
    res.writeHead(200, { "content-type": "application/json" }).end('{"instances": []}');
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const baseUrl = `https://127.0.0.1:${server.address().port}`;
  // NODE_EXTRA_CA_CERTS is read when node starts: a child node with it set.
  const script = `import { FaaSClient } from ${JSON.stringify(new URL("../dist/index.js", import.meta.url).href)};
    const c = new FaaSClient({ baseUrl: ${JSON.stringify(baseUrl)}, maxRetries: 0 });
    console.log(JSON.stringify(await c.listInstances()));`;
  const run = (env) => promisify(execFile)(process.execPath, ["--input-type=module", "-e", script], { env: { ...process.env, FAAS_API_KEY: SECRET, ...env } });
  try {
    const { stdout } = await run({ NODE_EXTRA_CA_CERTS: tls.cert });
    assert.equal(stdout.trim(), "[]");
    assert.deepEqual(seen, [`Bearer ${SECRET}`]);
    const { NODE_EXTRA_CA_CERTS: _, ...without } = process.env;
    await assert.rejects(
      promisify(execFile)(process.execPath, ["--input-type=module", "-e", script], { env: without }),
      (e) => /ConnectionError/.test(e.stderr) && !e.stderr.includes(SECRET),
      "a CA node does not trust is refused",
    );
  } finally {
    server.close();
    rmSync(tls.dir, { recursive: true, force: true });
  }
});

// ---- against the live server, with its admin key ----

const admin = new FaaSClient({ baseUrl: url ?? "http://127.0.0.1:9" });
const WebSocketImpl = globalThis.WebSocket ?? (await import("ws")).WebSocket;
const clientOf = (apiKey) => new FaaSClient({ baseUrl: url, apiKey, WebSocket: WebSocketImpl, maxRetries: 0 });

/** A tenant and a member key of it; the key is revoked after `fn`. */
async function withMember(label, quotas, fn) {
  const tenant = await admin.createTenant({ id: `sdk-ts-${label}-${rnd()}`, name: `sdk ts ${label}`, quotas });
  const key = await admin.createKey(`sdk-ts-${label}`, { tenant: tenant.id });
  try {
    return await fn(tenant, key, clientOf(key.secret));
  } finally {
    await admin.revokeKey(key.id).catch((e) => {
      if (!(e instanceof NotFoundError || e instanceof ConflictError)) throw e; // the test revoked it
    });
  }
}

test("no key: 401 unauthenticated (but /health is open)", { skip: live }, async () => {
  const c = clientOf("");
  assert.equal((await c.healthCheck()).status, "ok");
  const calls = [
    () => c.whoami(),
    () => c.listInstances(),
    () => c.execute({ command: "true", image: IMAGE }),
    async () => {
      for await (const _ of c.streamLogs("sdk-ts-no-key"));
    },
  ];
  for (const call of calls) {
    await assert.rejects(call(), (e) => e instanceof AuthenticationError && e.status === 401 && e.code === "unauthenticated" && e.message.length > 0);
  }
  await assert.rejects(c.terminal("no-such-instance"), AuthenticationError);
  const wrong = clientOf("faas_0000notakey0000");
  await assert.rejects(wrong.listInstances(), (e) => e instanceof AuthenticationError && !e.message.includes("faas_0000notakey0000"));
});

test("whoami, and the X-API-Key header", { skip: live }, async () => {
  const me = await admin.whoami();
  assert.equal(me.role, "admin");
  assert.ok(me.tenant && me.keyId);
  const viaHeader = new FaaSClient({ baseUrl: url, apiKey: "", headers: { "X-API-Key": adminKey } });
  assert.equal((await viaHeader.whoami()).keyId, me.keyId);
});

test("tenants and their quotas", { skip: live }, async () => {
  const id = `sdk-ts-${rnd()}`;
  const t = await admin.createTenant({ id, name: "SDK ts", quotas: { instances: 3, requestsPerSecond: 50 } });
  assert.equal(t.id, id);
  assert.equal(t.name, "SDK ts");
  assert.ok(t.createdAtMs > 0);
  assert.deepEqual(t.quotas, { instances: 3, requestsPerSecond: 50 }, "the settings as given, camelCased");
  assert.equal(t.effective.instances, 3);
  const fields = ["concurrentSandboxes", "instances", "memoryMb", "snapshotBytes", "functions", "queuedInvocations", "requestsPerSecond", "burst"];
  for (const f of fields) assert.equal(typeof t.effective[f], "number", `effective.${f}`);
  assert.deepEqual((await admin.getTenant(id)).quotas, t.quotas);
  assert.ok((await admin.listTenants()).some((x) => x.id === id));
  const replaced = await admin.setTenantQuotas(id, { memoryMb: 512 });
  assert.deepEqual(replaced.quotas, { memoryMb: 512 }, "PUT replaces the settings");
  assert.equal((await admin.getTenant(id)).effective.memoryMb, 512);
  const generated = await admin.createTenant({ name: "sdk ts generated" });
  assert.ok(generated.id && generated.id !== id);
  await assert.rejects(admin.getTenant(`sdk-ts-none-${rnd()}`), NotFoundError);
  await assert.rejects(admin.createTenant({ id }), ConflictError);
  await assert.rejects(admin.createTenant({ id: "Not A Valid Id!" }), InvalidRequestError);
});

test("keys: create, list, revoke", { skip: live }, async () => {
  const me = await admin.whoami();
  const k = await admin.createKey("sdk-ts-ci", { expiresInS: 3600 });
  const a = await admin.createKey("sdk-ts-admin", { role: "admin" });
  try {
    assert.match(k.secret, /^faas_/);
    assert.deepEqual([k.name, k.tenant, k.role], ["sdk-ts-ci", me.tenant, "member"], "the defaults");
    assert.ok(k.prefix && k.secret.startsWith(k.prefix) && k.prefix.length < k.secret.length);
    assert.ok(Math.abs(k.expiresAtMs - k.createdAtMs - 3_600_000) < 5_000);
    assert.equal(k.revokedAtMs, null);
    const listed = new Map((await admin.listKeys()).map((x) => [x.id, x]));
    assert.equal(listed.get(k.id).secret, undefined, "a key's secret is shown once");
    assert.equal(listed.get(a.id).role, "admin");
    assert.ok((await admin.listKeys({ tenant: me.tenant })).some((x) => x.id === k.id));
    assert.equal((await clientOf(a.secret).whoami()).role, "admin");
  } finally {
    await admin.revokeKey(k.id);
    await admin.revokeKey(a.id);
  }
  assert.ok((await admin.listKeys()).find((x) => x.id === k.id).revokedAtMs > 0);
  await assert.rejects(clientOf(a.secret).whoami(), AuthenticationError);
});

test("a member key works in its own tenant only; revoked, it is refused", { skip: live }, async () => {
  await withMember("a", undefined, async (ta, ka, a) => {
    await withMember("b", undefined, async (tb, kb, b) => {
      assert.deepEqual(await a.whoami(), { tenant: ta.id, role: "member", keyId: ka.id });
      const adminOnly = [
        () => a.createKey("sdk-ts-nope"),
        () => a.listTenants(),
        () => a.listKeys(),
        () => a.listAuditEvents(),
        () => a.setTenantQuotas(ta.id, { instances: 100 }),
      ];
      for (const call of adminOnly) {
        await assert.rejects(call(), (e) => e instanceof ForbiddenError && e.status === 403 && e.code === "forbidden");
      }
      assert.equal((await a.execute({ command: "echo member", image: IMAGE })).stdout, "member\n");
      const inst = await a.createInstance({ image: IMAGE });
      try {
        assert.equal((await a.execInstance(inst.id, "echo in-a")).stdout, "in-a\n");
        assert.ok((await a.listInstances()).some((i) => i.id === inst.id));
        await assert.rejects(b.getInstance(inst.id), (e) => e instanceof NotFoundError && e.code === "not_found");
        assert.ok(!(await b.listInstances()).some((i) => i.id === inst.id), "b does not list a's instance");
        await assert.rejects(b.execInstance(inst.id, "true"), NotFoundError);
        await assert.rejects(b.deleteInstance(inst.id), NotFoundError);
        await assert.rejects(b.listPorts(inst.id), NotFoundError);
        await assert.rejects(b.portFetch(inst.id, 8000), NotFoundError, "nor its ports");
        assert.equal((await a.getInstance(inst.id)).status, "running");
      } finally {
        await a.deleteInstance(inst.id);
      }
      await admin.revokeKey(ka.id);
      await assert.rejects(a.whoami(), (e) => e instanceof AuthenticationError && e.status === 401 && e.code === "unauthenticated");
      assert.equal((await b.whoami()).tenant, tb.id, "the other tenant's key still works");
    });
  });
});

test("usage: rows and a total of numbers", { skip: live }, async () => {
  await withMember("usage", undefined, async (t, _k, m) => {
    const fromMs = Date.now() - 1_000;
    assert.equal((await m.execute({ command: "echo counted", image: IMAGE })).exitCode, 0);
    const inst = await m.createInstance({ image: IMAGE });
    try {
      await m.execInstance(inst.id, "true");
    } finally {
      await m.deleteInstance(inst.id);
    }
    const until = Date.now() + 15_000;
    let u;
    for (;;) {
      u = await m.getUsage({ fromMs, groupBy: "day" }); // a member: its own tenant's
      if (u.total.executions >= 1 && u.total.instanceExecs >= 1) break;
      assert.ok(Date.now() < until, `no usage counted: ${JSON.stringify(u)}`);
      await new Promise((r) => setTimeout(r, 200));
    }
    assert.deepEqual([u.tenant, u.groupBy, u.total.key], [t.id, "day", "total"]);
    assert.ok(u.rows.length >= 1);
    assert.equal(u.rows.reduce((n, r) => n + r.executions, 0), u.total.executions);
    const numbers = ["executions", "instanceExecs", "invocations", "instanceSeconds", "wallMs", "cpuMs", "memoryMibS", "peakMemoryMb"];
    for (const row of [...u.rows, u.total]) {
      for (const f of numbers) assert.ok(typeof row[f] === "number" && row[f] >= 0, `${f}: ${JSON.stringify(row)}`);
    }
    const byInstance = await m.getUsage({ fromMs, toMs: Date.now() + 60_000, groupBy: "instance" });
    assert.ok(byInstance.rows.some((r) => r.key === inst.id), JSON.stringify(byInstance));
    const seen = await admin.getUsage({ fromMs, groupBy: "day", tenant: t.id }); // an admin names it
    assert.equal(seen.tenant, t.id);
    assert.equal(seen.total.executions, u.total.executions);
  });
});

test("audit: the key's creation, never its secret", { skip: live }, async () => {
  await withMember("audit", undefined, async (t, k) => {
    const me = await admin.whoami();
    const events = await admin.listAuditEvents({ limit: 1000 });
    const made = events.find((e) => e.action === "key.create" && e.target === k.id);
    assert.ok(made, JSON.stringify(events.map((e) => [e.action, e.target])));
    assert.equal(made.actorTenant, me.tenant);
    assert.equal(made.actorKeyId, me.keyId);
    assert.ok(made.atMs > 0);
    assert.ok(events.some((e) => e.action === "tenant.create" && e.target === t.id));
    assert.ok(!JSON.stringify(events).includes(k.secret), "the audit never holds a secret");
    assert.equal((await admin.listAuditEvents({ limit: 1 })).length, 1);
  });
});

test("rate limit and quota: 429s with retryAfter", { skip: live }, async () => {
  await withMember("rate", { requestsPerSecond: 1, burst: 1 }, async (_t, _k, m) => {
    const errors = [];
    for (let i = 0; i < 5; i++) await m.listInstances().catch((e) => errors.push(e));
    assert.ok(errors.length > 0, "5 calls at once over a rate of 1/s");
    const e = errors[0];
    assert.ok(e.constructor === RateLimitedError && e.status === 429 && e.code === "rate_limited", String(e));
    assert.ok(e.retryAfter > 0, `retryAfter ${e.retryAfter}`);
    await new Promise((r) => setTimeout(r, e.retryAfter * 1000));
    await m.listInstances(); // within the rate again
  });
  await withMember("quota", { instances: 1 }, async (_t, _k, m) => {
    const first = await m.createInstance({ image: IMAGE });
    try {
      const err = await m.createInstance({ image: IMAGE }).then(
        async (second) => {
          await m.deleteInstance(second.id);
          return null;
        },
        (e) => e,
      );
      assert.ok(err instanceof QuotaExceededError && err.status === 429 && err.code === "quota_exceeded", String(err));
      assert.ok(err.retryAfter !== null && err.message);
    } finally {
      await m.deleteInstance(first.id);
    }
  });
});
