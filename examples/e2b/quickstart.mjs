// The stock e2b SDK (npm `e2b`), unmodified, against a self-hosted faas server.
//
//   export E2B_API_URL=http://127.0.0.1:8080 E2B_SANDBOX_URL=http://127.0.0.1:8080
//   export E2B_API_KEY=<a faas API key>
//   (cd examples/e2b && npm ci && node quickstart.mjs)
import { CommandExitError, Sandbox } from "e2b";

const sbx = await Sandbox.create({ timeoutMs: 120_000, metadata: { example: "quickstart" } });
try {
  const r = await sbx.commands.run("echo hello from $(uname -s); echo oops >&2");
  console.log("stdout:", r.stdout.trim(), "| stderr:", r.stderr.trim());

  try {
    await sbx.commands.run("exit 3");
  } catch (e) {
    if (!(e instanceof CommandExitError)) throw e;
    console.log("exit code:", e.exitCode);
  }

  await sbx.files.write("/tmp/notes/hello.txt", "written through envd\n");
  console.log("read back:", (await sbx.files.read("/tmp/notes/hello.txt")).trim());
  console.log("listing:", (await sbx.files.list("/tmp/notes")).map((e) => e.name));
  console.log("running:", await sbx.isRunning());
} finally {
  await sbx.kill();
}
console.log("e2b quickstart ok");
