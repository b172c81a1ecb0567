// `sandbox.commands` and `sandbox.pty` of the stock e2b JS SDK: envd's `process.Process`.
import { test } from "node:test";
import assert from "node:assert/strict";
import { CommandExitError, TimeoutError } from "e2b";

import { withSandbox } from "./helpers.mjs";

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

test("run: stdout and stderr apart, exit codes, envs and cwd", () =>
  withSandbox(async (sbx) => {
    const r = await sbx.commands.run("echo out; echo err >&2");
    assert.equal(r.exitCode, 0);
    assert.equal(r.stdout, "out\n");
    assert.equal(r.stderr, "err\n");

    const seen = [];
    await sbx.commands.run("echo a; echo b", { onStdout: (d) => seen.push(d) });
    assert.equal(seen.join(""), "a\nb\n");

    await assert.rejects(sbx.commands.run("echo partial; exit 7"), (e) => {
      assert.ok(e instanceof CommandExitError);
      assert.equal(e.exitCode, 7);
      assert.equal(e.stdout, "partial\n");
      assert.equal(e.error, "exit status 7");
      return true;
    });

    const env = await sbx.commands.run('echo "$X"; pwd', { envs: { X: "y z" }, cwd: "/tmp" });
    assert.equal(env.stdout, "y z\n/tmp\n");
  }));

test("run: a timeout kills the command", () =>
  withSandbox(async (sbx) => {
    const started = Date.now();
    await assert.rejects(sbx.commands.run("sleep 30", { timeoutMs: 2000 }), (e) => {
      assert.ok(e instanceof TimeoutError, `${e}`);
      return true;
    });
    assert.ok(Date.now() - started < 15_000);
    for (let i = 0; ; i++) {
      const left = (await sbx.commands.list()).filter((p) => p.args.join(" ").includes("sleep 30"));
      if (left.length === 0) break;
      assert.ok(i < 25, "the timed-out command still runs");
      await sleep(200);
    }
  }));

test("background commands: wait, stdin, list, kill, connect", () =>
  withSandbox(async (sbx) => {
    const bg = await sbx.commands.run("sleep 1; echo done", { background: true });
    assert.ok(bg.pid > 0);
    assert.equal((await bg.wait()).stdout, "done\n");

    const cat = await sbx.commands.run("read l; echo got $l", { background: true, stdin: true });
    await sbx.commands.sendStdin(cat.pid, "hi\n");
    assert.equal((await cat.wait()).stdout, "got hi\n");

    const long = await sbx.commands.run("sleep 60", { background: true });
    const listed = (await sbx.commands.list()).find((p) => p.pid === long.pid);
    assert.ok(listed);
    assert.equal(listed.cmd, "/bin/bash");
    assert.deepEqual(listed.args, ["-l", "-c", "sleep 60"]);
    assert.equal(await sbx.commands.kill(long.pid), true);
    await assert.rejects(long.wait(), (e) => {
      assert.ok(e instanceof CommandExitError);
      assert.equal(e.exitCode, -1);
      return true;
    });
    assert.equal(await sbx.commands.kill(long.pid), false);

    const later = await sbx.commands.run("echo early; sleep 2; echo late", { background: true });
    await later.disconnect();
    await sleep(500);
    const again = await sbx.commands.connect(later.pid);
    const r = await again.wait();
    assert.equal(r.stdout, "early\nlate\n");
  }));

test("pty: create, input, resize, kill", () =>
  withSandbox(async (sbx) => {
    const dec = new TextDecoder();
    let out = "";
    const pty = await sbx.pty.create({ cols: 80, rows: 24, onData: (d) => (out += dec.decode(d)) });
    const enc = new TextEncoder();
    const until = async (what) => {
      for (let i = 0; !out.includes(what); i++) {
        assert.ok(i < 100, `no ${what} in ${JSON.stringify(out)}`);
        await sleep(100);
      }
    };
    await sbx.pty.sendInput(pty.pid, enc.encode("stty size\n"));
    await until("24 80");
    await sbx.pty.resize(pty.pid, { cols: 120, rows: 40 });
    await sbx.pty.sendInput(pty.pid, enc.encode("stty size\n"));
    await until("40 120");
    assert.equal(await sbx.pty.kill(pty.pid), true);
    await assert.rejects(pty.wait(), CommandExitError);
    assert.equal(await sbx.pty.kill(pty.pid), false);
  }));
