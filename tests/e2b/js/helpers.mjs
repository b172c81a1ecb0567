// The stock e2b JS SDK (npm `e2b`, pinned in package.json) against a live faas server. The
// runner (scripts/test.sh) sets E2B_API_URL and E2B_SANDBOX_URL to the server's one URL and
// E2B_API_KEY to one of its API keys: nothing else is configured, as a user would run it.
import { Sandbox } from "e2b";

for (const v of ["E2B_API_URL", "E2B_SANDBOX_URL", "E2B_API_KEY"]) {
  if (!process.env[v]) throw new Error(`${v} is not set: run these through scripts/test.sh`);
}

/** Runs `fn` with a new sandbox, killed after. */
export async function withSandbox(fn, opts = {}) {
  const sbx = await Sandbox.create({ timeoutMs: 300_000, ...opts });
  try {
    return await fn(sbx);
  } finally {
    await sbx.kill();
  }
}
