// `sandbox.files` of the stock e2b JS SDK: envd's `/files` (read, write, multi-file and
// streamed uploads) and its `filesystem.Filesystem` service (list, exists, getInfo, makeDir,
// rename, remove, and watchDir as a server stream).
import { test } from "node:test";
import assert from "node:assert/strict";
import { FileNotFoundError, FileType, FilesystemEventType } from "e2b";

import { withSandbox } from "./helpers.mjs";

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

test("write and read: text, bytes, blobs, streams, several files at once", () =>
  withSandbox(async (sbx) => {
    const info = await sbx.files.write("/tmp/f/a.txt", "héllo wörld\n");
    assert.equal(info.path, "/tmp/f/a.txt");
    assert.equal(info.name, "a.txt");
    assert.equal(info.type, FileType.FILE);
    assert.equal(await sbx.files.read("/tmp/f/a.txt"), "héllo wörld\n");

    const bytes = new Uint8Array(256 * 64).map((_, i) => i % 256);
    await sbx.files.write("/tmp/f/deep/b.bin", bytes.buffer);
    const back = await sbx.files.read("/tmp/f/deep/b.bin", { format: "bytes" });
    assert.deepEqual(Buffer.from(back), Buffer.from(bytes));
    const blob = await sbx.files.read("/tmp/f/deep/b.bin", { format: "blob" });
    assert.equal(blob.size, bytes.length);

    // Overwritten, not appended.
    await sbx.files.write("/tmp/f/a.txt", "short");
    assert.equal(await sbx.files.read("/tmp/f/a.txt"), "short");

    const many = await sbx.files.write([
      { path: "/tmp/m/one.txt", data: "one" },
      { path: "/tmp/m/sub/two.txt", data: new Blob(["two"]) },
    ]);
    assert.deepEqual(many.map((w) => w.path).sort(), ["/tmp/m/one.txt", "/tmp/m/sub/two.txt"]);
    assert.equal(await sbx.files.read("/tmp/m/sub/two.txt"), "two");

    // A ReadableStream goes as application/octet-stream; gzip too.
    const stream = new ReadableStream({
      start(c) {
        c.enqueue(new TextEncoder().encode("str"));
        c.enqueue(new TextEncoder().encode("eamed"));
        c.close();
      },
    });
    await sbx.files.write("/tmp/m/stream.txt", stream);
    assert.equal(await sbx.files.read("/tmp/m/stream.txt"), "streamed");
    await sbx.files.write("/tmp/m/gz.txt", "zip ".repeat(500), { gzip: true });
    assert.equal(await sbx.files.read("/tmp/m/gz.txt"), "zip ".repeat(500));

    // Relative paths are under the home.
    assert.equal((await sbx.files.write("rel.txt", "r")).path, "/root/rel.txt");

    await assert.rejects(sbx.files.read("/tmp/nope.txt"), FileNotFoundError);
  }));

test("list, exists, getInfo, makeDir, rename, remove", () =>
  withSandbox(async (sbx) => {
    await sbx.files.write("/tmp/l/a.txt", "12345");
    assert.equal(await sbx.files.makeDir("/tmp/l/sub/inner"), true);
    assert.equal(await sbx.files.makeDir("/tmp/l/sub/inner"), false);

    const entries = await sbx.files.list("/tmp/l");
    assert.deepEqual(entries.map((e) => e.name).sort(), ["a.txt", "sub"]);
    const a = entries.find((e) => e.name === "a.txt");
    assert.equal(a.type, FileType.FILE);
    assert.equal(a.size, 5);
    assert.equal(a.path, "/tmp/l/a.txt");
    assert.equal(entries.find((e) => e.name === "sub").type, FileType.DIR);
    const deep = await sbx.files.list("/tmp/l", { depth: 2 });
    assert.ok(deep.some((e) => e.path === "/tmp/l/sub/inner"));

    assert.equal(await sbx.files.exists("/tmp/l/a.txt"), true);
    assert.equal(await sbx.files.exists("/tmp/l/none"), false);
    const info = await sbx.files.getInfo("/tmp/l/a.txt");
    assert.equal(info.name, "a.txt");
    assert.equal(info.size, 5);
    assert.equal(info.owner, "root");
    assert.ok(info.permissions.startsWith("-rw"));
    assert.ok(info.modifiedTime instanceof Date);
    assert.ok(Math.abs(info.modifiedTime.getTime() - Date.now()) < 600_000);
    await assert.rejects(sbx.files.getInfo("/tmp/l/none"), FileNotFoundError);

    const moved = await sbx.files.rename("/tmp/l/a.txt", "/tmp/l/new/b.txt");
    assert.equal(moved.path, "/tmp/l/new/b.txt");
    assert.equal(await sbx.files.exists("/tmp/l/a.txt"), false);
    assert.equal(await sbx.files.read("/tmp/l/new/b.txt"), "12345");

    await sbx.files.remove("/tmp/l");
    assert.equal(await sbx.files.exists("/tmp/l"), false);
    await sbx.files.remove("/tmp/l");
  }));

test("watchDir: a stream of the directory's changes", () =>
  withSandbox(async (sbx) => {
    await sbx.files.makeDir("/tmp/w");
    const events = [];
    const want = [
      [FilesystemEventType.CREATE, "x.txt"],
      [FilesystemEventType.WRITE, "x.txt"],
      [FilesystemEventType.REMOVE, "x.txt"],
    ];
    const seen = () => want.every(([t, n]) => events.some((e) => e.type === t && e.name === n));
    const handle = await sbx.files.watchDir("/tmp/w", (e) => events.push(e));
    try {
      await sbx.files.write("/tmp/w/x.txt", "hi");
      await sbx.files.remove("/tmp/w/x.txt");
      for (let i = 0; i < 50 && !seen(); i++) await sleep(200);
      assert.ok(seen(), JSON.stringify(events));
    } finally {
      await handle.stop();
    }

    // Recursive: names are relative to the watched directory.
    await sbx.files.makeDir("/tmp/w/sub");
    const deep = [];
    const h2 = await sbx.files.watchDir("/tmp/w", (e) => deep.push(e), { recursive: true });
    try {
      await sbx.files.write("/tmp/w/sub/d.txt", "d");
      for (let i = 0; i < 50 && !deep.some((e) => e.name === "sub/d.txt"); i++) await sleep(200);
      assert.ok(deep.some((e) => e.name === "sub/d.txt"), JSON.stringify(deep));
    } finally {
      await h2.stop();
    }

    await assert.rejects(sbx.files.watchDir("/tmp/absent", () => {}), FileNotFoundError);
  }));
