// Keys on the E2B surface: a wrong X-API-KEY is the SDK's own AuthenticationError, and one
// tenant's key neither sees nor reaches another tenant's sandboxes.
import { test } from "node:test";
import assert from "node:assert/strict";
import { AuthenticationError, NotFoundError, Sandbox } from "e2b";
import { withSandbox } from "./helpers.mjs";

async function faas(method, path, body) {
  const r = await fetch(process.env.FAAS_URL + path, {
    method,
    headers: { authorization: `Bearer ${process.env.FAAS_API_KEY}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  assert.ok(r.ok, `${method} ${path}: ${r.status}`);
  return r.json();
}

async function otherKey() {
  const tenant = `e2b-other-js-${Math.random().toString(16).slice(2, 10)}`;
  await faas("POST", "/api/v1/tenants", { id: tenant });
  return (await faas("POST", "/api/v1/keys", { name: "e2b js test", tenant })).secret;
}

test("a wrong key is an authentication error", async () => {
  await assert.rejects(Sandbox.create({ apiKey: "faas_" + "0".repeat(64) }), AuthenticationError);
});

test("another tenant neither sees nor reaches a sandbox", { skip: !process.env.FAAS_URL && "skipped: FAAS_URL is not set" }, async () => {
  const key = await otherKey();
  await withSandbox(async (sbx) => {
    await sbx.commands.run("echo mine > /tmp/mine");
    await assert.rejects(Sandbox.getInfo(sbx.sandboxId, { apiKey: key }), NotFoundError);
    await assert.rejects(Sandbox.connect(sbx.sandboxId, { apiKey: key }), NotFoundError);
    assert.equal(await Sandbox.kill(sbx.sandboxId, { apiKey: key }), false);
    const listed = await Sandbox.list({ apiKey: key }).nextItems();
    assert.ok(!listed.some((s) => s.sandboxId === sbx.sandboxId));
    assert.equal(await sbx.isRunning(), true);
    assert.equal((await sbx.commands.run("cat /tmp/mine")).stdout, "mine\n");
  });
});
