// `getHost(port)`: an HTTP server started inside a sandbox answers at the host name the SDK
// gives (`{port}-{id}.{domain}`; the server runs with `--sandbox-domain`), without a key, as
// E2B's public sandbox traffic does.
import { test } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { withSandbox } from "./helpers.mjs";

// fetch() cannot set Host: a plain request to the server's one URL with that header.
function get(host, path = "/") {
  const base = new URL(process.env.E2B_SANDBOX_URL);
  return new Promise((resolve, reject) => {
    const req = http.request(
      { hostname: base.hostname, port: base.port, path, headers: { host } },
      (res) => {
        let body = "";
        res.on("data", (c) => (body += c));
        res.on("end", () => resolve({ status: res.statusCode, body }));
      },
    );
    req.on("error", reject);
    req.end();
  });
}

test("getHost serves an HTTP server started inside", async () => {
  await withSandbox(async (sbx) => {
    await sbx.files.write("/tmp/www/index.html", "served from the sandbox\n");
    await sbx.commands.run("cd /tmp/www && exec python3 -m http.server 8000 --bind 127.0.0.1", {
      background: true,
    });
    const host = sbx.getHost(8000);
    assert.ok(host.startsWith(`8000-${sbx.sandboxId}.`), host);
    let r;
    for (let i = 0; i < 100; i++) {
      r = await get(host);
      if (r.status === 200) break;
      await new Promise((ok) => setTimeout(ok, 200));
    }
    assert.deepEqual(r, { status: 200, body: "served from the sandbox\n" });
    assert.equal((await get(host, "/missing")).status, 404);
    assert.equal((await get(sbx.getHost(8001))).status, 502);
  });
});
