// Quickstart with the TypeScript SDK.
//   (cd sdk/typescript && npm install && npm run build)
//   export FAAS_API_KEY=...                        # an API key of the server
//   node examples/typescript/quickstart.mjs        # FAAS_URL defaults to http://127.0.0.1:8080
import { FaaSClient, NotFoundError } from "../../sdk/typescript/dist/index.js";

if (!process.env.FAAS_API_KEY) {
  console.error(
    "FAAS_API_KEY is not set: export an API key of the server, say the admin key it wrote\n" +
      "on its first start: export FAAS_API_KEY=$(cat <data-dir>/admin.key)",
  );
  process.exit(1);
}
// The client sends FAAS_API_KEY (its apiKey default) with every request.
const client = new FaaSClient({ baseUrl: process.env.FAAS_URL ?? "http://127.0.0.1:8080" });
const health = await client.healthCheck();
console.log(`server ${health.version}, backend ${health.defaultBackend}`);

const r = await client.execute({ command: "echo hello from a sandbox; exit 3" });
console.log(`exit ${r.exitCode}, stdout ${JSON.stringify(r.stdout)}, ${r.durationMs.toFixed(1)} ms`);
if (r.exitCode !== 3 || r.stdout !== "hello from a sandbox\n") throw new Error("unexpected result");

const js = await client.runJavaScript("console.log([1, 2, 3].map((x) => x * 2).join(','))");
if (js.stdout !== "2,4,6\n") throw new Error(js.stdout);
const py = await client.runPython("print(6 * 7)");
if (py.stdout !== "42\n") throw new Error(py.stdout);

const slow = await client.execute({ command: "sleep 10", timeoutMs: 200 });
console.log("timed out:", slow.timedOut);

const name = `example-ts-${Math.random().toString(16).slice(2, 8)}`;
await client.deployFunction(name, {
  runtime: "node",
  handler: "index.handler",
  code: "exports.handler = async (e) => ({ doubled: e.n * 2 });",
});
const inv = await client.invokeFunction(name, { n: 21 });
console.log(`function ${name}: ${JSON.stringify(inv.result)} (cold ${inv.cold})`);
await client.deleteFunction(name);

try {
  await client.getInstance("does-not-exist");
} catch (e) {
  if (!(e instanceof NotFoundError)) throw e;
  console.log(`errors are typed: ${e.name} ${e.code}`);
}
console.log("quickstart ok");
