// The control plane through the stock e2b JS SDK: create, getInfo, list, timeouts, pause and
// connect, snapshots, forks, metrics, kill.
import { test } from "node:test";
import assert from "node:assert/strict";
import { NotFoundError, Sandbox, SandboxError } from "e2b";

import { withSandbox } from "./helpers.mjs";

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const tag = () => Math.random().toString(36).slice(2);

async function waitFor(cond, ms = 15_000) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await cond()) return true;
    await sleep(250);
  }
  return cond();
}

test("create with metadata and envs, getInfo, kill true then false", async () => {
  const t = tag();
  const sbx = await Sandbox.create({ metadata: { suite: t }, envs: { FOO: "bar" }, timeoutMs: 120_000 });
  try {
    const info = await sbx.getInfo();
    assert.equal(info.sandboxId, sbx.sandboxId);
    assert.equal(info.templateId, "base");
    assert.deepEqual(info.metadata, { suite: t });
    assert.equal(info.state, "running");
    assert.ok(Math.abs(info.endAt - info.startedAt - 120_000) < 2_000);
    assert.ok(await sbx.isRunning());
    assert.equal((await sbx.commands.run("echo $FOO")).stdout, "bar\n");
  } finally {
    assert.equal(await sbx.kill(), true);
  }
  assert.equal(await Sandbox.kill(sbx.sandboxId), false);
  assert.equal(await sbx.isRunning(), false);
  await assert.rejects(sbx.getInfo(), NotFoundError);
});

test("list by metadata and state, in pages", async () => {
  const t = tag();
  const made = [];
  for (let i = 0; i < 3; i++) made.push(await Sandbox.create({ metadata: { suite: t, n: `${i}` } }));
  try {
    const p = Sandbox.list({ query: { metadata: { suite: t } }, limit: 2 });
    const first = await p.nextItems();
    assert.equal(first.length, 2);
    assert.ok(p.hasNext);
    const second = await p.nextItems();
    assert.equal(second.length, 1);
    assert.ok(!p.hasNext);
    assert.deepEqual(
      new Set([...first, ...second].map((s) => s.sandboxId)),
      new Set(made.map((s) => s.sandboxId)),
    );

    assert.equal(await made[2].pause(), true);
    const paused = await Sandbox.list({ query: { metadata: { suite: t }, state: ["paused"] } }).nextItems();
    assert.deepEqual(paused.map((s) => s.sandboxId), [made[2].sandboxId]);
    const both = await Sandbox.list({ query: { metadata: { suite: t }, state: ["running", "paused"] } }).nextItems();
    assert.equal(both.length, 3);
  } finally {
    for (const s of made) await s.kill();
  }
});

test("a sandbox past its timeout is gone", async () => {
  const sbx = await Sandbox.create({ timeoutMs: 120_000 });
  await sbx.setTimeout(2_000);
  assert.ok(await waitFor(async () => !(await sbx.isRunning())));
  assert.ok(
    await waitFor(async () => {
      try {
        await Sandbox.getInfo(sbx.sandboxId);
        return false;
      } catch (e) {
        return e instanceof NotFoundError;
      }
    }),
  );
  await assert.rejects(Sandbox.connect(sbx.sandboxId), NotFoundError);
  assert.equal(await sbx.kill(), false);
});

test("autoPause: paused at the timeout, files kept, connect resumes", async () => {
  const sbx = await Sandbox.create({ timeoutMs: 3_000, lifecycle: { onTimeout: "pause" } });
  try {
    await sbx.files.write("/home/kept.txt", "before");
    assert.ok(await waitFor(async () => (await sbx.getInfo()).state === "paused"));
    const again = await Sandbox.connect(sbx.sandboxId, { timeoutMs: 60_000 });
    assert.equal(again.sandboxId, sbx.sandboxId);
    assert.equal((await again.getInfo()).state, "running");
    assert.equal(await again.files.read("/home/kept.txt"), "before");
  } finally {
    await sbx.kill();
  }
});

test("pause, then connect: same id and token, files kept", () =>
  withSandbox(async (sbx) => {
    await sbx.files.write("/home/state.txt", "kept");
    assert.equal(await sbx.pause(), true);
    assert.equal(await sbx.pause(), false);
    assert.equal((await sbx.getInfo()).state, "paused");
    await sbx.connect();
    assert.ok(await sbx.isRunning());
    assert.equal(await sbx.files.read("/home/state.txt"), "kept");
  }));

test("createSnapshot, then a sandbox from it", async () => {
  let snap;
  await withSandbox(async (sbx) => {
    await sbx.files.write("/home/snap.txt", "in the snapshot");
    snap = await sbx.createSnapshot();
    assert.ok(snap.snapshotId);
    const listed = await Sandbox.listSnapshots({ sandboxId: sbx.sandboxId }).nextItems();
    assert.ok(listed.map((s) => s.snapshotId).includes(snap.snapshotId));
    await withSandbox(async (restored) => {
      assert.notEqual(restored.sandboxId, sbx.sandboxId);
      assert.equal(await restored.files.read("/home/snap.txt"), "in the snapshot");
    }, { template: snap.snapshotId });
  });
  assert.equal(await Sandbox.deleteSnapshot(snap.snapshotId), true);
  assert.equal(await Sandbox.deleteSnapshot(snap.snapshotId), false);
});

test("an unknown template is refused", async () => {
  await assert.rejects(Sandbox.create("no-such-template"), SandboxError);
});

test("fork and metrics", () =>
  withSandbox(async (sbx) => {
    await sbx.files.write("/home/f.txt", "forked");
    const forks = await sbx.fork({ count: 1, timeoutMs: 60_000 });
    assert.equal(forks.length, 1);
    const [f] = forks;
    assert.ok(f instanceof Sandbox, String(f));
    try {
      assert.equal(await f.files.read("/home/f.txt"), "forked");
    } finally {
      await f.kill();
    }
    const m = await sbx.getMetrics();
    assert.equal(m.length, 1);
    assert.ok(m[0].cpuCount >= 1);
    assert.ok(m[0].memTotal > 0);
  }));
