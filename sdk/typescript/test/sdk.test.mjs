// The TypeScript SDK against a live server (FAAS_URL): every endpoint of its OpenAPI document.
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  FaaSClient,
  ConflictError,
  ConnectionError,
  InvalidRequestError,
  NotFoundError,
  PayloadTooLargeError,
  UnsupportedError,
} from "../dist/index.js";

const url = process.env.FAAS_URL;
const IMAGE = "faas/busybox:latest";
const skip = url ? false : "FAAS_URL is not set (scripts/test.sh starts a server and sets it)";
const c = new FaaSClient({ baseUrl: url });
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
};

test("every OpenAPI operation has an SDK method", { skip }, async () => {
  const doc = await c.getOpenApi();
  const ops = Object.entries(doc.paths).flatMap(([p, item]) => Object.keys(item).map((m) => `${m} ${p}`));
  const missing = ops.filter((o) => !(o in COVERED));
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
