// The TypeScript SDK against a live server (FAAS_URL; its key from FAAS_API_KEY, the client's
// default): every endpoint of its OpenAPI document (tenants and keys in auth.test.mjs).
// The client's argument checks and the stream / terminal plumbing (against fakes) need none.
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  FaaSClient,
  BadGatewayError,
  ConflictError,
  ConnectionError,
  InvalidRequestError,
  NotFoundError,
  PayloadTooLargeError,
  PortClosedError,
  UnsupportedError,
} from "../dist/index.js";

const url = process.env.FAAS_URL;
const IMAGE = "faas/busybox:latest";
const skip = url ? false : "FAAS_URL is not set (scripts/test.sh starts a server and sets it)";
// Node 22 has a WebSocket; before it, the `ws` package stands in (the SDK takes either).
const WebSocketImpl = globalThis.WebSocket ?? (await import("ws")).WebSocket;
const c = new FaaSClient({ baseUrl: url, WebSocket: WebSocketImpl });
const rnd = () => Math.random().toString(16).slice(2, 12);

// Each OpenAPI operation and the SDK method that covers it (and is tested below).
const COVERED = {
  "get /health": "healthCheck",
  "post /api/v1/execute": "execute",
  "post /api/v1/execute/advanced": "execute",
  "post /api/v1/prewarm": "prewarm",
  "get /api/v1/pools": "listPools",
  "get /api/v1/images": "listImages",
  "get /api/v1/metrics": "getMetrics",
  "get /metrics": "getPrometheusMetrics",
  "get /api/v1/openapi.json": "getOpenApi",
  "get /api/v1/logs/{id}/stream": "streamLogs",
  "post /api/v1/instances": "createInstance",
  "get /api/v1/instances": "listInstances",
  "get /api/v1/instances/{id}": "getInstance",
  "delete /api/v1/instances/{id}": "deleteInstance",
  "post /api/v1/instances/{id}/exec": "execInstance",
  "post /api/v1/instances/{id}/stop": "stopInstance",
  "post /api/v1/instances/{id}/start": "startInstance",
  "get /api/v1/instances/{id}/files": "downloadFile",
  "put /api/v1/instances/{id}/files": "uploadFile",
  "post /api/v1/instances/{id}/snapshot": "createSnapshot",
  "post /api/v1/instances/{id}/fork": "forkInstance",
  "post /api/v1/instances/{id}/processes": "startProcess",
  "get /api/v1/instances/{id}/processes": "listProcesses",
  "get /api/v1/instances/{id}/processes/{pid}/events": "processEvents",
  "post /api/v1/instances/{id}/processes/{pid}/stdin": "sendStdin",
  "post /api/v1/instances/{id}/processes/{pid}/stdin/close": "closeStdin",
  "post /api/v1/instances/{id}/processes/{pid}/signal": "signalProcess",
  "post /api/v1/instances/{id}/processes/{pid}/resize": "resizePty",
  "get /api/v1/instances/{id}/terminal": "terminal",
  "get /api/v1/instances/{id}/ports": "listPorts",
  // The port proxy, any method (`.../{port}` answers a 308 to `.../{port}/`).
  ...Object.fromEntries(
    ["get", "post", "put", "patch", "delete", "head", "options"].flatMap((m) =>
      ["/api/v1/instances/{id}/ports/{port}", "/api/v1/instances/{id}/ports/{port}/", "/api/v1/instances/{id}/ports/{port}/{*path}"].map((p) => [`${m} ${p}`, "portFetch"]),
    ),
  ),
  "get /api/v1/instances/{id}/fs/stat": "stat",
  "get /api/v1/instances/{id}/fs/list": "listDir",
  "post /api/v1/instances/{id}/fs/mkdir": "makeDir",
  "post /api/v1/instances/{id}/fs/move": "move",
  "delete /api/v1/instances/{id}/fs": "remove",
  "get /api/v1/instances/{id}/fs/watch": "watchDir",
  "post /api/v1/snapshots": "createSnapshot",
  "get /api/v1/snapshots": "listSnapshots",
  "get /api/v1/snapshots/{id}": "getSnapshot",
  "delete /api/v1/snapshots/{id}": "deleteSnapshot",
  "post /api/v1/snapshots/{id}/restore": "restoreSnapshot",
  "post /api/v1/snapshots/{id}/branch": "branchSnapshot",
  "post /api/v1/functions": "deployFunction",
  "get /api/v1/functions": "listFunctions",
  "get /api/v1/functions/{name}": "getFunction",
  "put /api/v1/functions/{name}": "updateFunction",
  "delete /api/v1/functions/{name}": "deleteFunction",
  "post /api/v1/functions/{name}/invoke": "invokeFunction",
  "get /api/v1/invocations": "listInvocations",
  "get /api/v1/invocations/{id}": "getInvocation",
  // tenants, API keys, usage and the audit trail: tested in auth.test.mjs
  "get /api/v1/auth/whoami": "whoami",
  "post /api/v1/tenants": "createTenant",
  "get /api/v1/tenants": "listTenants",
  "get /api/v1/tenants/{id}": "getTenant",
  "put /api/v1/tenants/{id}": "setTenantQuotas",
  "post /api/v1/keys": "createKey",
  "get /api/v1/keys": "listKeys",
  "delete /api/v1/keys/{id}": "revokeKey",
  "get /api/v1/usage": "getUsage",
  "get /api/v1/audit": "listAuditEvents",
};

// Operations this SDK leaves out on purpose, and why.
const NOT_IN_SDK = {
  "get /api/v1/instances/{id}/tunnel/{port}": "a raw TCP connection over a WebSocket, for `faas instances port-forward`; HTTP to a port is portFetch",
};

test("every OpenAPI operation has an SDK method", { skip }, async () => {
  const doc = await c.getOpenApi();
  const ops = Object.entries(doc.paths).flatMap(([p, item]) => Object.keys(item).map((m) => `${m} ${p}`));
  const missing = ops.filter((o) => !(o in COVERED) && !(o in NOT_IN_SDK));
  assert.deepEqual(missing, [], `endpoints without SDK coverage: ${missing}`);
  for (const m of Object.values(COVERED)) assert.equal(typeof c[m], "function", m);
});

test("health, metrics, images", { skip }, async () => {
  const h = await c.healthCheck();
  assert.equal(h.status, "ok");
  assert.ok(h.defaultBackend && h.uptimeS >= 0);
  await c.execute({ command: "true", image: IMAGE });
  const m = await c.getMetrics();
  assert.ok(m.sandboxesCreated >= 1);
  assert.match(await c.getPrometheusMetrics(), /faas_sandboxes_created_total/);
  assert.ok(Array.isArray(await c.listImages()));
});

test("execute: exact, camelCase results", { skip }, async () => {
  const r = await c.execute({ command: "echo out; echo err >&2; exit 3", image: IMAGE });
  assert.equal(r.exitCode, 3);
  assert.equal(r.stdout, "out\n");
  assert.equal(r.stderr, "err\n");
  assert.equal(r.output, r.stdout);
  assert.ok(r.durationMs > 0 && r.requestId);
  const e = await c.execute({ command: ["sh", "-c", 'echo "$MY_VAR"; cat'], image: IMAGE, envVars: { MY_VAR: "v" }, stdin: "in" });
  assert.equal(e.stdout, "v\nin");
  const t = await c.execute({ command: "sleep 5", image: IMAGE, timeoutMs: 300 });
  assert.equal(t.timedOut, true, "a timeout is a result, not an exception");
  assert.equal((await c.runPython("print(2 + 3)")).stdout, "5\n");
  assert.equal((await c.runJavaScript("console.log(6 * 7)")).stdout, "42\n");
  assert.equal((await c.runBash("echo $((1 + 1))", { image: IMAGE })).stdout, "2\n");
});

test("errors carry their class, code and message", { skip }, async () => {
  await assert.rejects(c.getInstance("nope"), (e) => e instanceof NotFoundError && e.code === "not_found" && e.status === 404);
  await assert.rejects(c.execute({ command: "", image: IMAGE }), InvalidRequestError);
  await assert.rejects(c.execute({ command: "true", image: "faas/none:1" }), (e) => e instanceof NotFoundError && e.code === "image_not_found");
  await assert.rejects(c.execute({ command: "true", image: IMAGE, runtime: "firecracker" }), UnsupportedError);
  const dead = new FaaSClient({ baseUrl: "http://127.0.0.1:9", maxRetries: 0 });
  await assert.rejects(dead.healthCheck(), ConnectionError);
});

test("prewarm, cached, streams", { skip }, async () => {
  const pool = await c.prewarm({ image: IMAGE, count: 2 });
  assert.equal(pool.target, 2);
  const until = Date.now() + 60_000;
  while (!(await c.listPools()).some((p) => p.image === IMAGE && p.ready >= 1)) {
    assert.ok(Date.now() < until);
    await new Promise((r) => setTimeout(r, 50));
  }
  const r = await c.execute({ command: "echo warm", image: IMAGE, mode: "cached" });
  assert.equal(r.warm, true);
  await c.prewarm({ image: IMAGE, count: 0 });

  const requestId = `ts-${rnd()}`;
  const events = [];
  const streaming = (async () => {
    for await (const ev of c.streamLogs(requestId)) events.push(ev);
  })();
  const run = await c.execute({ command: "echo one; sleep 0.3; echo two >&2", image: IMAGE, requestId });
  await streaming;
  assert.equal(run.exitCode, 0);
  assert.equal(events.at(-1).event, "exit");
  assert.equal(events.at(-1).data.exitCode, 0);
  assert.equal(events.filter((e) => e.event === "stdout").map((e) => e.data.data).join(""), "one\n");
});

test("instances, snapshots, branches", { skip }, async () => {
  const inst = await c.createInstance({ image: IMAGE, name: "ts" });
  try {
    assert.equal(inst.status, "running");
    await c.execInstance(inst.id, "mkdir -p /data && echo v1 > /data/x");
    await c.uploadFile(inst.id, "/data/blob", new Uint8Array([0, 1, 2]));
    assert.deepEqual([...(await c.downloadFile(inst.id, "/data/blob"))], [0, 1, 2]);
    assert.ok((await c.listInstances()).some((i) => i.id === inst.id));
    assert.equal((await c.stopInstance(inst.id)).status, "stopped");
    await assert.rejects(c.execInstance(inst.id, "true"), ConflictError);
    assert.equal((await c.startInstance(inst.id)).status, "running");
    const snap = await c.createSnapshot(inst.id, { name: "s", tags: ["t"] });
    assert.equal(snap.kind, "filesystem");
    assert.ok(snap.sizeBytes > 0 && snap.instanceId === inst.id);
    assert.equal((await c.getSnapshot(snap.id)).id, snap.id);
    assert.ok((await c.listSnapshots()).some((s) => s.id === snap.id));
    const branch = await c.branchSnapshot(snap.id, 2);
    assert.equal(branch.instances.length, 2);
    const [a, b] = branch.instances;
    await c.execInstance(a.id, "echo changed > /data/x");
    assert.equal((await c.execInstance(b.id, "cat /data/x")).stdout, "v1\n");
    const restored = await c.restoreSnapshot(snap.id);
    assert.equal((await c.execInstance(restored.id, "cat /data/x")).stdout, "v1\n");
    const fork = await c.forkInstance(inst.id, 1);
    const f = await c.forkExecution(snap.id, "cat /data/x");
    assert.equal(f.stdout, "v1\n");
    for (const i of [a, b, restored, ...fork.instances]) await c.deleteInstance(i.id);
    for (const s of await c.listSnapshots()) if (s.instanceId === inst.id && s.id !== snap.id) await c.deleteSnapshot(s.id);
    await c.deleteSnapshot(snap.id);
    await assert.rejects(c.getSnapshot(snap.id), NotFoundError);
  } finally {
    await c.deleteInstance(inst.id);
  }
});

test("functions: sync, async, versions", { skip }, async () => {
  const name = `ts-${rnd()}`;
  const code = "exports.handler = async (event) => { console.log('adding'); return { sum: event.a + event.b, env_key: process.env.MY_KEY }; };\n";
  const f = await c.deployFunction(name, { runtime: "node", handler: "index.handler", code, envVars: { MY_KEY: "k" } });
  assert.equal(f.version, 1);
  assert.deepEqual(f.envVars, { MY_KEY: "k" }, "env var names are not camelCased");
  try {
    const inv = await c.invokeFunction(name, { a: 2, b: 3 });
    assert.equal(inv.status, "succeeded");
    assert.deepEqual(inv.result, { sum: 5, env_key: "k" }, "results are passed through");
    assert.equal(inv.cold, true);
    assert.match(inv.logs, /adding/);
    const q = await c.invokeFunction(name, { a: 1, b: 1 }, { async: true, idempotencyKey: "k1" });
    const q2 = await c.invokeFunction(name, { a: 1, b: 1 }, { async: true, idempotencyKey: "k1" });
    assert.equal(q.status, "queued");
    assert.equal(q2.invocationId, q.invocationId);
    const done = await c.waitInvocation(q.invocationId);
    assert.equal(done.status, "succeeded");
    assert.deepEqual(done.result, { sum: 2, env_key: "k" });
    assert.ok((await c.listInvocations({ function: name })).some((i) => i.invocationId === q.invocationId));
    const v2 = await c.updateFunction(name, { code: code.replace("sum:", "total:") });
    assert.equal(v2.version, 2);
    assert.deepEqual((await c.invokeFunction(name, { a: 1, b: 2 })).result, { total: 3, env_key: "k" });
    assert.deepEqual((await c.invokeFunction(name, { a: 1, b: 2 }, { version: 1 })).result, { sum: 3, env_key: "k" });
    assert.deepEqual((await c.getFunction(name)).versions, [1, 2]);
    assert.ok((await c.listFunctions()).some((x) => x.name === name));
    await assert.rejects(c.invokeFunction(name, "x".repeat(7 * 1024 * 1024)), PayloadTooLargeError);
  } finally {
    await c.deleteFunction(name);
  }
  await assert.rejects(c.getFunction(name), NotFoundError);
});

// ---- the client's argument (no server needed) ----

const td = new TextDecoder();
const HEALTH = { status: "ok", version: "0", uptime_s: 1, default_backend: "native", default_image: "", backends: [] };
const jsonResponse = (body, status = 200) =>
  new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json" } });

test("the client takes a base URL string or an options object", async () => {
  const seen = [];
  const fetch = async (u) => {
    seen.push(String(u));
    return jsonResponse(HEALTH);
  };
  const byString = new FaaSClient("http://10.9.8.7:1234/", { fetch });
  assert.equal(byString.baseUrl, "http://10.9.8.7:1234");
  assert.equal((await byString.healthCheck()).defaultBackend, "native");
  assert.equal(seen[0], "http://10.9.8.7:1234/health", "a string is the base URL, not ignored");
  const byOptions = new FaaSClient({ baseUrl: "https://faas.example/prefix", fetch });
  await byOptions.healthCheck();
  assert.equal(seen[1], "https://faas.example/prefix/health");
  for (const c0 of [new FaaSClient(), new FaaSClient({}), new FaaSClient({ baseUrl: undefined })]) {
    assert.equal(c0.baseUrl, "http://127.0.0.1:8080");
  }
  await assert.rejects(new FaaSClient("http://127.0.0.1:9", { maxRetries: 0 }).healthCheck(), ConnectionError);
});

test("an argument the client cannot use is a TypeError", () => {
  const bad = [
    8080,
    null,
    true,
    ["http://127.0.0.1:8080"],
    { baseUrl: 8080 },
    { baseUrl: null },
    { baseUrl: "" },
    { baseUrl: "not a url" },
    { baseUrl: "ws://127.0.0.1:8080" },
    { url: "http://127.0.0.1:8080" },
    { baseURL: "http://127.0.0.1:8080" },
    "",
    "not a url",
    "localhost:8080",
    "ftp://127.0.0.1/",
  ];
  for (const arg of bad) assert.throws(() => new FaaSClient(arg), TypeError, `accepted ${JSON.stringify(arg)}`);
  assert.throws(() => new FaaSClient("http://a.example", { baseUrl: "http://b.example" }), TypeError);
  assert.throws(() => new FaaSClient("http://a.example", { retries: 1 }), TypeError);
  assert.throws(() => new FaaSClient("http://a.example", 5), TypeError);
});

// ---- streams and the terminal against fakes (no server needed) ----

/** A fetch answering every call with `body` (a ReadableStream of SSE text) and recording URLs. */
function sseFetch(seen, stream) {
  return async (u) => {
    seen.push(String(u));
    return new Response(stream, { status: 200, headers: { "content-type": "text/event-stream" } });
  };
}

const sseStream = () => {
  let ctrl;
  const stream = new ReadableStream({ start: (c0) => (ctrl = c0) });
  const enc = new TextEncoder();
  return { stream, push: (text) => ctrl.enqueue(enc.encode(text)), end: () => ctrl.close() };
};

test("processEvents decodes the output and the exit (fake server)", async () => {
  const seen = [];
  const s = sseStream();
  const fc = new FaaSClient("http://h.example", { fetch: sseFetch(seen, s.stream) });
  s.push(": keepalive\n\nevent: stdout\ndata: {\"data\": \"aGkK\"}\n\nevent: std");
  s.push("err\r\ndata: {\"data\": \"AP8=\"}\r\n\r\nevent: exit\ndata: {\"exit_code\": 3, \"signal\": null, \"timed_out\": false, \"oom_killed\": false, \"duration_ms\": 1.5}\n\n");
  const events = [];
  for await (const ev of fc.processEvents("i1", 42)) events.push(ev);
  assert.equal(seen[0], "http://h.example/api/v1/instances/i1/processes/42/events");
  assert.deepEqual(events.map((e) => e.kind), ["stdout", "stderr", "exit"]);
  assert.equal(td.decode(events[0].data), "hi\n");
  assert.deepEqual([...events[1].data], [0, 255]);
  assert.deepEqual(events[2].exit, { exitCode: 3, signal: null, timedOut: false, oomKilled: false, durationMs: 1.5 });
  assert.equal(events[2].data.length, 0);

  const cut = sseStream();
  const fc2 = new FaaSClient("http://h.example", { fetch: sseFetch([], cut.stream) });
  cut.push("event: stdout\ndata: {\"data\": \"aGkK\"}\n\n");
  cut.end();
  await assert.rejects(async () => {
    for await (const _ of fc2.processEvents("i1", 1));
  }, ConnectionError, "a stream without its exit is an error");
});

test("watchDir resolves only after ready, then gives the changes (fake server)", async () => {
  const seen = [];
  const s = sseStream();
  const fc = new FaaSClient("http://h.example", { fetch: sseFetch(seen, s.stream) });
  let resolved = false;
  const pending = fc.watchDir("i1", "/w", { recursive: true }).then((w) => ((resolved = true), w));
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(resolved, false, "not before the ready event");
  s.push("event: ready\ndata: {}\n\n");
  const w = await pending;
  assert.equal(seen[0], "http://h.example/api/v1/instances/i1/fs/watch?path=%2Fw&recursive=true");
  s.push("event: create\ndata: {\"op\": \"create\", \"path\": \"/w/a\"}\n\n");
  assert.deepEqual((await w.next()).value, { op: "create", path: "/w/a" });
  const waiting = w.next(); // no change comes: close ends it
  await w.close();
  assert.equal((await waiting).done, true);
});

class FakeWebSocket {
  static last;
  constructor(url, opts) {
    FakeWebSocket.last = this;
    this.url = url;
    this.opts = opts;
    this.sent = [];
    this.closed = false;
    setTimeout(() => this.onopen?.({}), 0);
  }
  send(d) {
    this.sent.push(d);
  }
  close() {
    this.closed = true;
    setTimeout(() => this.onclose?.({ code: 1000 }), 0);
  }
}

test("terminal speaks the protocol over the WebSocket it is given (fake socket)", async () => {
  const fc = new FaaSClient("https://h.example:8443/", { WebSocket: FakeWebSocket });
  const term = await fc.terminal("i1", { cols: 100, rows: 30 });
  const ws = FakeWebSocket.last;
  assert.equal(ws.url, "wss://h.example:8443/api/v1/instances/i1/terminal?cols=100&rows=30");
  assert.equal(ws.binaryType, "arraybuffer");
  ws.onmessage({ data: new TextEncoder().encode("$ ").buffer }); // before any onData: kept
  let out = "";
  const off = term.onData((d) => (out += td.decode(d)));
  assert.equal(out, "$ ");
  ws.onmessage({ data: new TextEncoder().encode("x") });
  assert.equal(out, "$ x");
  off();
  term.write("ls\n");
  assert.ok(ws.sent[0] instanceof Uint8Array, "keystrokes go as binary frames");
  assert.equal(td.decode(ws.sent[0]), "ls\n");
  term.resize(120, 40);
  assert.deepEqual(JSON.parse(ws.sent[1]), { resize: { cols: 120, rows: 40 } });
  ws.onmessage({ data: '{"exit": {"exit_code": 3, "signal": null}}' });
  ws.onclose({ code: 1000 });
  assert.deepEqual(await term.wait(), { exitCode: 3, signal: null });

  const t2 = await fc.terminal("i2");
  assert.match(FakeWebSocket.last.url, /cols=80&rows=24$/);
  t2.close();
  await assert.rejects(t2.wait(), ConnectionError, "closed before the shell ended");
});

test("terminal without any WebSocket says so", async () => {
  const saved = Object.getOwnPropertyDescriptor(globalThis, "WebSocket");
  if (saved && !saved.configurable) return;
  delete globalThis.WebSocket;
  try {
    await assert.rejects(new FaaSClient("http://127.0.0.1:9").terminal("i1"), (e) => e instanceof UnsupportedError && /WebSocket/.test(e.message));
  } finally {
    if (saved) Object.defineProperty(globalThis, "WebSocket", saved);
  }
});

// ---- processes, files, terminal and metadata of instances (live server) ----

/** Reads an async iterator of events with a timeout on each. */
class Events {
  constructor(iterable) {
    this.it = iterable[Symbol.asyncIterator]();
  }
  async next(ms = 30_000) {
    let timer;
    const late = new Promise((_, reject) => (timer = setTimeout(() => reject(new Error(`no event within ${ms} ms`)), ms)));
    try {
      return await Promise.race([this.it.next(), late]);
    } finally {
      clearTimeout(timer);
    }
  }
  /** The output up to and including `needle` (which must come before the exit). */
  async outputUntil(needle) {
    let buf = "";
    while (!buf.includes(needle)) {
      const r = await this.next();
      assert.ok(!r.done && r.value.kind !== "exit", `ended before ${JSON.stringify(needle)}: ${JSON.stringify(buf)}`);
      buf += td.decode(r.value.data);
    }
    return buf;
  }
  async rest() {
    const out = [];
    for (;;) {
      const r = await this.next();
      if (r.done) return out;
      out.push(r.value);
    }
  }
}

const all = (iterable) => new Events(iterable).rest();
const textOf = (events, kind = "stdout") => td.decode(Buffer.concat(events.filter((e) => e.kind === kind).map((e) => e.data)));
function exitOf(events) {
  assert.equal(events.at(-1)?.kind, "exit", events.map((e) => e.kind).join(","));
  assert.ok(events.slice(0, -1).every((e) => e.kind !== "exit"));
  return events.at(-1).exit;
}

async function withInstance(opts, fn) {
  const inst = await c.createInstance(opts);
  try {
    await fn(inst);
  } finally {
    await c.deleteInstance(inst.id);
  }
}

test("processes: background, late subscribers, stdin, signals, errors", { skip }, async () => {
  await withInstance({}, async (inst) => {
    const id = inst.id;
    const t0 = Date.now();
    const p = await c.startProcess(id, "sleep 1; echo done", { tag: "bg" });
    assert.ok(Date.now() - t0 < 800, `startProcess took ${Date.now() - t0} ms: it must not wait`);
    assert.ok(p.pid > 0);
    assert.equal(p.tag, "bg");
    const info = (await c.listProcesses(id)).find((x) => x.pid === p.pid);
    assert.ok(info.running && info.tag === "bg" && info.exitCode === null && info.command.at(-1) === "sleep 1; echo done");
    const events = await all(c.processEvents(id, p.pid));
    assert.equal(exitOf(events).exitCode, 0);
    assert.equal(textOf(events), "done\n");
    assert.ok(Date.now() - t0 >= 1000);
    const ended = (await c.listProcesses(id)).find((x) => x.pid === p.pid);
    assert.ok(!ended.running && ended.exitCode === 0);

    const env = await c.startProcess(id, ["sh", "-c", 'echo "$MY_VAR"; pwd; echo e >&2'], { envVars: { MY_VAR: "v" }, workingDir: "/tmp" });
    const envEvents = await all(c.processEvents(id, env.pid));
    assert.equal(textOf(envEvents), "v\n/tmp\n");
    assert.equal(textOf(envEvents, "stderr"), "e\n");
    assert.deepEqual((await c.listProcesses(id)).find((x) => x.pid === env.pid).envVars.MY_VAR, "v", "env names are not camelCased");

    const ab = await c.startProcess(id, "echo a; sleep 1; echo b");
    const first = new Events(c.processEvents(id, ab.pid));
    const seen = await first.outputUntil("a\n");
    const second = all(c.processEvents(id, ab.pid)); // mid-way: after a, before b
    const [firstRest, secondAll] = await Promise.all([first.rest(), second]);
    assert.equal(seen + textOf(firstRest), "a\nb\n");
    assert.equal(textOf(secondAll), "a\nb\n", "a late subscriber gets the output kept so far");
    assert.equal(exitOf(firstRest).exitCode, 0);
    assert.equal(exitOf(secondAll).exitCode, 0);

    const cat = await c.startProcess(id, "cat", { stdin: true });
    await c.sendStdin(id, cat.pid, "hi");
    await c.sendStdin(id, cat.pid, new Uint8Array([0, 255]));
    await c.closeStdin(id, cat.pid);
    const catEvents = await all(c.processEvents(id, cat.pid));
    assert.deepEqual([...Buffer.concat(catEvents.filter((e) => e.kind === "stdout").map((e) => e.data))], [104, 105, 0, 255]);
    assert.equal(exitOf(catEvents).exitCode, 0);

    const sleeper = await c.startProcess(id, "sleep 100");
    await assert.rejects(c.sendStdin(id, sleeper.pid, "x"), ConflictError, "started without stdin");
    await assert.rejects(c.resizePty(id, sleeper.pid, 100, 30), ConflictError, "no terminal");
    await assert.rejects(c.signalProcess(id, sleeper.pid, "SIGNOPE"), InvalidRequestError);
    await c.signalProcess(id, sleeper.pid);
    assert.equal(exitOf(await all(c.processEvents(id, sleeper.pid))).exitCode, 143);

    const late = await c.startProcess(id, "sleep 10", { timeoutMs: 300 });
    assert.equal(exitOf(await all(c.processEvents(id, late.pid))).timedOut, true);

    await assert.rejects(c.signalProcess(id, 999999, "KILL"), (e) => e instanceof NotFoundError && e.status === 404);
    await assert.rejects(all(c.processEvents(id, 999999)), NotFoundError);
    await assert.rejects(c.listProcesses("no-such-instance"), NotFoundError);
  });
});

test("a PTY process: stty size follows resizePty", { skip }, async () => {
  await withInstance({}, async (inst) => {
    const p = await c.startProcess(inst.id, "sh", { pty: { cols: 80, rows: 24 } });
    const term = new Events(c.processEvents(inst.id, p.pid));
    await c.sendStdin(inst.id, p.pid, "stty size\n");
    await term.outputUntil("24 80");
    await c.resizePty(inst.id, p.pid, 120, 50);
    await c.sendStdin(inst.id, p.pid, "stty size\n");
    await term.outputUntil("50 120");
    await c.sendStdin(inst.id, p.pid, "exit\n");
    const rest = await term.rest();
    assert.equal(exitOf(rest).exitCode, 0);
    assert.ok(rest.slice(0, -1).every((e) => e.kind === "pty"), "a terminal's output comes as pty events");
  });
});

test("terminal: a shell over a WebSocket", { skip }, async () => {
  await withInstance({}, async (inst) => {
    const term = await c.terminal(inst.id, { cols: 80, rows: 24 });
    let out = "";
    const dec = new TextDecoder();
    const waiters = [];
    term.onData((d) => {
      out += dec.decode(d, { stream: true });
      for (const w of waiters) w();
    });
    const until = (needle, ms = 30_000) =>
      new Promise((resolve, reject) => {
        const start = out.length;
        const timer = setTimeout(() => reject(new Error(`no ${JSON.stringify(needle)} in ${JSON.stringify(out)}`)), ms);
        const check = () => {
          if (out.slice(start).includes(needle)) {
            clearTimeout(timer);
            resolve();
          }
        };
        waiters.push(check);
        check();
      });
    const got42 = until("42");
    term.write("echo $((6*7))\n");
    await got42;
    const resized = until("40 100");
    term.resize(100, 40);
    term.write("stty size\n");
    await resized;
    term.write("exit\n");
    const exit = await Promise.race([term.wait(), new Promise((_, r) => setTimeout(() => r(new Error("no exit")), 30_000))]);
    assert.deepEqual(exit, { exitCode: 0, signal: null });
  });
  await assert.rejects(c.terminal("no-such-instance"), NotFoundError);
});

test("files: stat, listDir, makeDir, move, remove, errors", { skip }, async () => {
  await withInstance({}, async (inst) => {
    const id = inst.id;
    const d = `/tmp/ts-fs-${rnd()}`;
    const sub = await c.makeDir(id, `${d}/sub`);
    assert.deepEqual([sub.type, sub.name, sub.path], ["dir", "sub", `${d}/sub`]);
    await assert.rejects(c.makeDir(id, `${d}/sub`), (e) => e instanceof ConflictError && e.status === 409);
    await c.uploadFile(id, `${d}/a.txt`, "hello");
    const st = await c.stat(id, `${d}/a.txt`);
    assert.deepEqual([st.type, st.name, st.size, st.symlinkTarget], ["file", "a.txt", 5, null]);
    assert.ok(st.permissions.startsWith("-") && st.mode > 0 && st.mtimeMs > 0 && typeof st.owner === "string");
    assert.deepEqual((await c.listDir(id, d)).map((e) => e.path), [`${d}/a.txt`, `${d}/sub`]);
    const moved = await c.move(id, `${d}/a.txt`, `${d}/sub/b.txt`);
    assert.deepEqual([moved.path, moved.size], [`${d}/sub/b.txt`, 5]);
    assert.equal(td.decode(await c.downloadFile(id, `${d}/sub/b.txt`)), "hello");
    assert.deepEqual((await c.listDir(id, d, { depth: 2 })).map((e) => e.path), [`${d}/sub`, `${d}/sub/b.txt`]);
    await assert.rejects(c.stat(id, `${d}/a.txt`), (e) => e instanceof NotFoundError && e.status === 404);
    await c.remove(id, d);
    await assert.rejects(c.stat(id, d), NotFoundError);
    await assert.rejects(c.stat(id, "relative/path"), (e) => e instanceof InvalidRequestError && e.status === 400);
  });
});

test("watchDir: create, rename, remove in order", { skip }, async () => {
  await withInstance({}, async (inst) => {
    const id = inst.id;
    const d = `/tmp/ts-watch-${rnd()}`;
    await c.makeDir(id, d);
    const w = await c.watchDir(id, d);
    try {
      // watchDir resolved after the watch was set: these changes are all seen
      const p = await c.startProcess(id, `echo x > ${d}/f; mv ${d}/f ${d}/g; rm ${d}/g`);
      assert.equal(exitOf(await all(c.processEvents(id, p.pid))).exitCode, 0);
      const events = new Events(w);
      const seen = [];
      while (!seen.some((e) => e.op === "remove" && e.path === `${d}/g`)) {
        const r = await events.next();
        assert.ok(!r.done, JSON.stringify(seen));
        seen.push(r.value);
      }
      assert.deepEqual(
        seen.filter((e) => ["create", "rename", "remove"].includes(e.op)),
        [
          { op: "create", path: `${d}/f` },
          { op: "rename", path: `${d}/f` },
          { op: "create", path: `${d}/g` },
          { op: "remove", path: `${d}/g` },
        ],
        JSON.stringify(seen),
      );
    } finally {
      await w.close();
    }
    await assert.rejects(c.watchDir(id, `${d}/none`), NotFoundError);
  });
});

test("instance metadata: kept as given, filters the list", { skip }, async () => {
  const run = rnd();
  const meta = { suite: "sdk-ts", run, snake_key: "1", camelKey: "2" };
  await withInstance({ metadata: meta }, async (a) => {
    assert.deepEqual(a.metadata, meta, "metadata keys are not camelCased");
    await withInstance({ metadata: { suite: "sdk-ts", run, role: "b" } }, async (b) => {
      assert.deepEqual((await c.getInstance(b.id)).metadata, { suite: "sdk-ts", run, role: "b" });
      const ids = async (metadata) => (await c.listInstances({ metadata })).map((i) => i.id).sort();
      assert.deepEqual(await ids({ run }), [a.id, b.id].sort());
      assert.deepEqual(await ids({ run, role: "b" }), [b.id]);
      assert.deepEqual(await ids({ run, snake_key: "1" }), [a.id]);
      assert.deepEqual(await ids({ run, role: "c" }), []);
      assert.deepEqual((await c.listInstances()).find((i) => i.id === a.id).metadata, meta);
    });
    await assert.rejects(c.createInstance({ metadata: { big: "x".repeat(5000) } }), InvalidRequestError);
    await c.stopInstance(a.id);
    await assert.rejects(c.startProcess(a.id, "true"), ConflictError, "the instance is not running");
  });
});

// ---- ports of instances: the port proxy ----

const INDEX = "hello from busybox httpd\n";
// A CGI script of busybox httpd: what the request was, as the server in the box saw it.
const CGI_ECHO = '#!/bin/sh\necho "Content-Type: text/plain"\necho "X-Seen: $HTTP_X_APP"\necho\necho "$REQUEST_METHOD $QUERY_STRING"\nhead -c "$CONTENT_LENGTH"\n';

/** The `PortInfo` of `port` once something listens on it in the instance (10 s at most). */
async function waitPort(id, port, ms = 10_000) {
  const until = Date.now() + ms;
  for (;;) {
    const ports = await c.listPorts(id);
    const p = ports.find((x) => x.port === port);
    if (p) return p;
    assert.ok(Date.now() < until, `port ${port} not listed after ${ms} ms: ${ports.map((x) => x.port)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Starts busybox httpd on port 8000 of the instance, serving /www; its `PortInfo`. */
async function serveWww(id) {
  await c.uploadFile(id, "/www/index.html", INDEX);
  await c.uploadFile(id, "/www/cgi-bin/echo", CGI_ECHO);
  assert.equal((await c.execInstance(id, "chmod +x /www/cgi-bin/echo")).exitCode, 0);
  await c.startProcess(id, ["busybox", "httpd", "-f", "-p", "8000", "-h", "/www"], { tag: "httpd" });
  return waitPort(id, 8000);
}

test("ports: listed, proxied with the key, port_closed and bad_gateway", { skip }, async () => {
  await withInstance({ image: IMAGE }, async (inst) => {
    const id = inst.id;
    assert.equal(inst.network, "none");
    assert.equal(inst.publicPorts, false);
    assert.equal(inst.portsToken, undefined);
    assert.ok(!(await c.listPorts(id)).some((p) => p.port === 8000));
    const p = await serveWww(id);
    assert.equal(p.path, `/api/v1/instances/${id}/ports/8000/`);
    assert.ok(p.address);

    const r = await c.portFetch(id, 8000);
    assert.equal(r.status, 200);
    assert.match(r.headers.get("content-type"), /^text\/html/);
    assert.equal(await r.text(), INDEX);
    const echo = await c.portFetch(id, 8000, "/cgi-bin/echo?a=1", { method: "POST", body: "payload", headers: { "X-App": "y" } });
    assert.equal(echo.status, 200);
    assert.equal(await echo.text(), "POST a=1\npayload");
    assert.equal(echo.headers.get("x-seen"), "y", "the request's headers reach the box's server");
    const missing = await c.portFetch(id, 8000, "no-such-page.html");
    assert.equal(missing.status, 404, "the box's server's own 404 is a response, not an error");
    await missing.arrayBuffer();

    await assert.rejects(c.portFetch(id, 8001), (e) => e instanceof PortClosedError && e instanceof BadGatewayError && e.code === "port_closed" && e.status === 502);
    await c.startProcess(id, "echo not-http | nc -l -p 9000");
    await waitPort(id, 9000);
    await assert.rejects(c.portFetch(id, 9000), (e) => e instanceof BadGatewayError && !(e instanceof PortClosedError) && e.code === "bad_gateway");
    await assert.rejects(c.portFetch("no-such-instance", 8000), NotFoundError);
    await assert.rejects(c.listPorts("no-such-instance"), NotFoundError);

    const u = c.portUrl(id, 8000);
    assert.equal(u, `${url}/api/v1/instances/${id}/ports/8000/`);
    const key = process.env.FAAS_API_KEY;
    if (key) {
      // a server with keys: the URL takes the owner's, and is closed without
      const withKey = await fetch(u, { headers: { authorization: `Bearer ${key}` } });
      assert.equal(await withKey.text(), INDEX);
      const without = await fetch(u);
      assert.equal(without.status, 401);
      await without.arrayBuffer();
    }
    await c.stopInstance(id);
    await assert.rejects(c.portFetch(id, 8000), ConflictError, "not running");
    await assert.rejects(c.listPorts(id), ConflictError);
  });
});

test("public ports: the token opens them without a key", { skip }, async () => {
  await withInstance({ image: IMAGE, publicPorts: true }, async (inst) => {
    const id = inst.id;
    const token = inst.portsToken;
    assert.equal(inst.publicPorts, true);
    assert.match(token ?? "", /^[0-9a-f]{64}$/);
    assert.equal((await c.getInstance(id)).portsToken, token);
    assert.equal((await c.listInstances()).find((i) => i.id === id).portsToken, token);
    await serveWww(id);

    const u = c.portUrl(id, 8000, { token });
    assert.equal(u, `${c.portUrl(id, 8000)}?faas_token=${token}`);
    const r = await fetch(u); // a plain fetch: no API key
    assert.equal(r.status, 200);
    assert.equal(await r.text(), INDEX);
    const byHeader = await fetch(c.portUrl(id, 8000), { headers: { "X-Faas-Ports-Token": token } });
    assert.equal(await byHeader.text(), INDEX);
    if (process.env.FAAS_API_KEY) {
      const wrong = await fetch(c.portUrl(id, 8000, { token: "0".repeat(64) }));
      assert.equal(wrong.status, 404, "a wrong token finds no instance");
      await wrong.arrayBuffer();
    }
  });
});

test("network: instances, executions and functions take it", { skip }, async () => {
  // Without sandbox networking (--no-network) the server refuses anything but none (501).
  assert.equal((await c.execute({ command: "echo offline", image: IMAGE, network: "none" })).stdout, "offline\n");
  const rules = { egress: "deny", allow: ["example.com", "10.1.2.0/24"], deny: [] };
  for (const network of ["internet", rules]) {
    let inst;
    try {
      inst = await c.createInstance({ image: IMAGE, network });
    } catch (e) {
      assert.ok(e instanceof UnsupportedError && e.code === "unsupported" && e.status === 501, String(e));
      continue;
    }
    try {
      assert.deepEqual(inst.network, network);
    } finally {
      await c.deleteInstance(inst.id);
    }
  }
  const name = `ts-net-${rnd()}`;
  const f = await c.deployFunction(name, { runtime: "shell", code: "echo hi\n", network: rules });
  try {
    assert.deepEqual(f.network, rules);
    assert.deepEqual((await c.getFunction(name)).network, rules);
  } finally {
    await c.deleteFunction(name);
  }
});

test("portFetch passes the box's answers through, rejects the proxy's own errors (fake server)", async () => {
  const seen = [];
  const answers = [
    new Response('{"error": "the app\'s own"}', { status: 500, headers: { "content-type": "application/json" } }),
    new Response("moved", { status: 302, headers: { location: "/elsewhere" } }),
    jsonResponse({ error: { code: "port_closed", message: "connect to port 81: refused" } }, 502),
  ];
  const fetch = async (u, init) => {
    seen.push({ url: String(u), method: init.method, auth: new Headers(init.headers).get("authorization"), x: new Headers(init.headers).get("x-app") });
    return answers.shift();
  };
  const fc = new FaaSClient("http://h.example/", { fetch, apiKey: "faas_k", headers: { "x-app": "client" } });
  const r = await fc.portFetch("i1", 8080, "/api?x=1", { method: "POST", body: "b", headers: { "X-App": "mine" } });
  assert.equal(r.status, 500);
  assert.deepEqual(await r.json(), { error: "the app's own" });
  assert.deepEqual(seen[0], { url: "http://h.example/api/v1/instances/i1/ports/8080/api?x=1", method: "POST", auth: "Bearer faas_k", x: "mine" });
  assert.equal((await fc.portFetch("i1", 8080, "old")).status, 302);
  assert.equal(seen[1].url, "http://h.example/api/v1/instances/i1/ports/8080/old");
  await assert.rejects(fc.portFetch("i1", 81), (e) => e instanceof PortClosedError && e.status === 502 && /refused/.test(e.message));
  assert.equal(fc.portUrl("i1", 80, { path: "/a?b=1", token: "t&" }), "http://h.example/api/v1/instances/i1/ports/80/a?b=1&faas_token=t%26");
  assert.equal(fc.portUrl("i1", 80), "http://h.example/api/v1/instances/i1/ports/80/");
});
