/**
 * TypeScript client of the faas platform, on `fetch` (Node 18+ and browsers).
 *
 * ```ts
 * import { FaaSClient } from "@faas-platform/sdk";
 * const c = new FaaSClient({ baseUrl: "http://127.0.0.1:8080" });
 * const r = await c.execute({ command: "echo hello" });
 * console.log(r.exitCode, r.stdout);
 * ```
 *
 * Requests and results are camelCase; user data (function payloads and results, env var
 * names) is passed through untouched. Only calls that are safe to repeat are retried.
 */

import { ConnectionError, FaaSError, TimeoutError, errorFromResponse } from "./errors.js";

export * from "./errors.js";

export type Command = string | string[];
export type Mode = "ephemeral" | "cached" | "checkpointed" | "branched" | "persistent";

export interface ExecuteOptions {
  command: Command;
  image?: string;
  envVars?: Record<string, string | number | boolean>;
  timeoutMs?: number;
  mode?: Mode;
  runtime?: "auto" | "docker" | "native" | "firecracker";
  workingDir?: string;
  memoryMb?: number;
  cpuCores?: number;
  stdin?: string;
  snapshotId?: string;
  branchFrom?: string;
  instanceId?: string;
  requestId?: string;
  isolation?: "container" | "gvisor";
}

export interface ExecutionResult {
  requestId: string;
  exitCode: number;
  stdout: string;
  stderr: string;
  output: string;
  logs: string;
  durationMs: number;
  totalMs: number;
  error: string | null;
  timedOut: boolean;
  signal: number | null;
  oomKilled: boolean;
  truncated: boolean;
  backend: string;
  mode: Mode;
  warm: boolean;
  sandboxId: string;
  snapshotId: string | null;
  instanceId: string | null;
}

export interface Instance {
  id: string;
  name: string | null;
  status: "running" | "stopped" | "lost";
  statusReason: string | null;
  backend: string;
  image: string;
  isolation: string;
  memoryMb: number;
  cpuCores: number;
  idleTimeoutS: number | null;
  sourceSnapshot: string | null;
  createdAtMs: number;
  lastUsedAtMs: number;
}

export interface Snapshot {
  id: string;
  name: string | null;
  instanceId: string | null;
  parentId: string | null;
  backend: string;
  image: string;
  kind: "filesystem" | "memory";
  sizeBytes: number;
  tags: string[];
  createdAtMs: number;
  tookMs: number | null;
  checkpointMs: number | null;
}

export interface Branch {
  instances: Instance[];
  snapshotId: string;
  tookMs: number;
}

export interface PoolInfo {
  image: string;
  backend: string;
  ready: number;
  creating: number;
  target: number;
  memoryMb: number;
  cpuCores: number;
  isolation: string;
  lastError: string | null;
}

export interface Health {
  status: string;
  version: string;
  uptimeS: number;
  defaultBackend: string | null;
  defaultImage: string;
  backends: { name: string; available: boolean; detail: string }[];
}

export type FunctionRuntime = "python" | "node" | "shell" | "binary" | "image";

export interface DeployOptions {
  runtime?: FunctionRuntime;
  /** One source file (text or bytes). */
  code?: string | Uint8Array;
  /** A zip or tar.gz archive. */
  archive?: Uint8Array;
  handler?: string;
  image?: string;
  command?: Command;
  envVars?: Record<string, string>;
  memoryMb?: number;
  cpuCores?: number;
  timeoutMs?: number;
  minWarm?: number;
  maxConcurrency?: number;
  backend?: "auto" | "docker" | "native";
}

export interface FunctionInfo {
  name: string;
  version: number;
  runtime: FunctionRuntime;
  handler: string | null;
  image: string;
  command: string[] | null;
  envVars: Record<string, string>;
  memoryMb: number;
  cpuCores: number;
  timeoutMs: number;
  minWarm: number;
  maxConcurrency: number;
  backend: string;
  codeSha256: string;
  codeSize: number;
  versions?: number[];
  warm: number;
  createdMs: number;
  updatedMs: number;
}

export interface InvocationError {
  type: string;
  message: string;
  traceback?: string;
}

export interface Invocation {
  invocationId: string;
  function?: string;
  version?: number;
  status: "queued" | "running" | "succeeded" | "error" | "timeout" | "dead_letter";
  result?: unknown;
  error?: InvocationError | null;
  logs?: string;
  durationMs?: number | null;
  cold?: boolean | null;
  async?: boolean;
  attempts?: number;
  maxAttempts?: number;
  attemptErrors?: Record<string, unknown>[];
  createdMs?: number;
  startedMs?: number | null;
  finishedMs?: number | null;
}

export interface InvokeOptions {
  async?: boolean;
  version?: number;
  idempotencyKey?: string;
  callbackUrl?: string;
  maxAttempts?: number;
}

export interface LogEvent {
  event: "stdout" | "stderr" | "exit" | string;
  data: Record<string, unknown>;
}

export interface ClientOptions {
  baseUrl?: string;
  /** Per HTTP call, in ms (default 120 000). */
  timeoutMs?: number;
  /** Retries of calls that are safe to repeat (default 2). */
  maxRetries?: number;
  headers?: Record<string, string>;
  fetch?: typeof fetch;
}

/** Keys whose values are user data, passed through as they are. */
const OPAQUE = new Set(["result", "payload", "env_vars", "envVars", "raw"]);

const toCamel = (s: string) => s.replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase());
const toSnake = (s: string) => s.replace(/[A-Z]/g, (c) => "_" + c.toLowerCase());

function convertKeys(v: unknown, conv: (k: string) => string): unknown {
  if (Array.isArray(v)) return v.map((x) => convertKeys(x, conv));
  if (v && typeof v === "object" && !(v instanceof Uint8Array)) {
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) {
      if (x === undefined) continue;
      out[conv(k)] = OPAQUE.has(k) ? x : convertKeys(x, conv);
    }
    return out;
  }
  return v;
}

const camel = <T>(v: unknown) => convertKeys(v, toCamel) as T;
const snake = (v: unknown) => convertKeys(v, toSnake) as Record<string, unknown>;

function b64(data: string | Uint8Array): string {
  const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
  let bin = "";
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin);
}

interface Call {
  method: string;
  path: string;
  json?: unknown;
  body?: BodyInit;
  query?: Record<string, string | number | boolean | undefined>;
  headers?: Record<string, string>;
  idempotent?: boolean;
}

const RETRY_STATUSES = new Set([502, 503, 504]);
const PYTHON_IMAGE = "faas/bookworm-python3.11-node18:latest";

export class FaaSClient {
  readonly baseUrl: string;
  private readonly timeoutMs: number;
  private readonly maxRetries: number;
  private readonly headers: Record<string, string>;
  private readonly fetchImpl: typeof fetch;

  constructor(opts: ClientOptions = {}) {
    this.baseUrl = (opts.baseUrl ?? "http://127.0.0.1:8080").replace(/\/+$/, "");
    this.timeoutMs = opts.timeoutMs ?? 120_000;
    this.maxRetries = opts.maxRetries ?? 2;
    this.headers = opts.headers ?? {};
    this.fetchImpl = opts.fetch ?? globalThis.fetch.bind(globalThis);
  }

  private url(call: Call): string {
    const u = new URL(this.baseUrl + call.path);
    for (const [k, v] of Object.entries(call.query ?? {})) {
      if (v !== undefined) u.searchParams.set(k, String(v));
    }
    return u.toString();
  }

  /** Sends a call (retrying it only when it is safe to repeat) and returns the response. */
  private async send(call: Call, timeoutMs = this.timeoutMs): Promise<Response> {
    const attempts = 1 + (call.idempotent ? this.maxRetries : 0);
    for (let attempt = 0; ; attempt++) {
      const last = attempt === attempts - 1;
      const headers: Record<string, string> = { ...this.headers, ...(call.headers ?? {}) };
      let body = call.body;
      if (call.json !== undefined) {
        headers["content-type"] = "application/json";
        body = JSON.stringify(call.json);
      }
      const ctrl = new AbortController();
      const timer = timeoutMs > 0 ? setTimeout(() => ctrl.abort(), timeoutMs) : undefined;
      try {
        const resp = await this.fetchImpl(this.url(call), {
          method: call.method,
          headers,
          body,
          signal: ctrl.signal,
        });
        if (!RETRY_STATUSES.has(resp.status) || last) {
          if (resp.status >= 400) throw await errorOf(resp);
          return resp;
        }
      } catch (e) {
        if (e instanceof FaaSError) throw e;
        if (last) {
          if (ctrl.signal.aborted) throw new TimeoutError(`the HTTP call timed out after ${timeoutMs} ms`, "timeout", 0);
          throw new ConnectionError(`cannot reach the server: ${(e as Error).message}`, "connection", 0);
        }
      } finally {
        if (timer) clearTimeout(timer);
      }
      await new Promise((r) => setTimeout(r, 200 * 2 ** attempt));
    }
  }

  private async json<T>(call: Call): Promise<T> {
    const resp = await this.send(call);
    if (resp.status === 204) return undefined as T;
    const text = await resp.text();
    return camel<T>(text ? JSON.parse(text) : null);
  }

  // ---- execute ----

  /** Runs a command in a sandbox. A command that exits non-zero or times out is a result. */
  execute(opts: ExecuteOptions): Promise<ExecutionResult> {
    return this.json({ method: "POST", path: "/api/v1/execute", json: snake(opts) });
  }

  runPython(code: string, opts: Partial<ExecuteOptions> = {}): Promise<ExecutionResult> {
    return this.execute({ image: PYTHON_IMAGE, ...opts, command: ["python3", "-c", code] });
  }

  runJavaScript(code: string, opts: Partial<ExecuteOptions> = {}): Promise<ExecutionResult> {
    return this.execute({ image: PYTHON_IMAGE, ...opts, command: ["node", "-e", code] });
  }

  /** Runs a shell script with `sh -c` (the default image has no bash). */
  runBash(script: string, opts: Partial<ExecuteOptions> = {}): Promise<ExecutionResult> {
    return this.execute({ ...opts, command: ["/bin/sh", "-c", script] });
  }

  /** Runs a command in a fresh branch of a snapshot or instance; the parent is untouched. */
  forkExecution(branchFrom: string, command: Command, opts: Partial<ExecuteOptions> = {}): Promise<ExecutionResult> {
    return this.execute({ ...opts, command, mode: "branched", branchFrom });
  }

  prewarm(opts: { image?: string; count?: number; runtime?: string; isolation?: string } = {}): Promise<PoolInfo> {
    return this.json({ method: "POST", path: "/api/v1/prewarm", json: snake({ count: 1, ...opts }), idempotent: true });
  }

  async listPools(): Promise<PoolInfo[]> {
    return (await this.json<{ pools: PoolInfo[] }>({ method: "GET", path: "/api/v1/pools", idempotent: true })).pools;
  }

  async listImages(): Promise<Record<string, unknown>[]> {
    return (await this.json<{ images: Record<string, unknown>[] }>({ method: "GET", path: "/api/v1/images", idempotent: true })).images;
  }

  healthCheck(): Promise<Health> {
    return this.json({ method: "GET", path: "/health", idempotent: true });
  }

  getMetrics(): Promise<Record<string, unknown>> {
    return this.json({ method: "GET", path: "/api/v1/metrics", idempotent: true });
  }

  async getPrometheusMetrics(): Promise<string> {
    return (await this.send({ method: "GET", path: "/metrics", idempotent: true })).text();
  }

  /** The server's OpenAPI 3 document (as served, not camelCased). */
  async getOpenApi(): Promise<Record<string, any>> {
    return (await this.send({ method: "GET", path: "/api/v1/openapi.json", idempotent: true })).json();
  }

  /** The output of execution `requestId` as it happens: stdout/stderr events, then `exit`. */
  async *streamLogs(requestId: string): AsyncGenerator<LogEvent> {
    const resp = await this.send({ method: "GET", path: `/api/v1/logs/${encodeURIComponent(requestId)}/stream` }, 0);
    if (!resp.body) return;
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    let event = "message";
    let data: string[] = [];
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        buf += decoder.decode(value, { stream: true });
        let nl: number;
        while ((nl = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, nl).replace(/\r$/, "");
          buf = buf.slice(nl + 1);
          if (line === "") {
            if (data.length) {
              const ev: LogEvent = { event, data: camel(JSON.parse(data.join("\n"))) };
              yield ev;
              if (event === "exit") return;
            }
            event = "message";
            data = [];
          } else if (line.startsWith("event:")) {
            event = line.slice(6).trim();
          } else if (line.startsWith("data:")) {
            data.push(line.slice(5).trimStart());
          }
        }
      }
    } finally {
      await reader.cancel().catch(() => undefined);
    }
  }

  // ---- instances ----

  createInstance(opts: {
    image?: string;
    name?: string;
    envVars?: Record<string, string>;
    memoryMb?: number;
    cpuCores?: number;
    idleTimeoutS?: number;
    runtime?: string;
    isolation?: string;
  } = {}): Promise<Instance> {
    return this.json({ method: "POST", path: "/api/v1/instances", json: snake(opts) });
  }

  async listInstances(): Promise<Instance[]> {
    return (await this.json<{ instances: Instance[] }>({ method: "GET", path: "/api/v1/instances", idempotent: true })).instances;
  }

  getInstance(id: string): Promise<Instance> {
    return this.json({ method: "GET", path: `/api/v1/instances/${id}`, idempotent: true });
  }

  execInstance(
    id: string,
    command: Command,
    opts: { stdin?: string; envVars?: Record<string, string>; workingDir?: string; timeoutMs?: number } = {},
  ): Promise<ExecutionResult> {
    return this.json({ method: "POST", path: `/api/v1/instances/${id}/exec`, json: snake({ command, ...opts }) });
  }

  stopInstance(id: string): Promise<Instance> {
    return this.json({ method: "POST", path: `/api/v1/instances/${id}/stop`, idempotent: true });
  }

  startInstance(id: string): Promise<Instance> {
    return this.json({ method: "POST", path: `/api/v1/instances/${id}/start`, idempotent: true });
  }

  async deleteInstance(id: string): Promise<void> {
    await this.send({ method: "DELETE", path: `/api/v1/instances/${id}`, idempotent: true });
  }

  async downloadFile(id: string, path: string): Promise<Uint8Array> {
    const resp = await this.send({ method: "GET", path: `/api/v1/instances/${id}/files`, query: { path }, idempotent: true });
    return new Uint8Array(await resp.arrayBuffer());
  }

  async uploadFile(id: string, path: string, data: string | Uint8Array): Promise<void> {
    const body = typeof data === "string" ? new TextEncoder().encode(data) : data;
    await this.send({ method: "PUT", path: `/api/v1/instances/${id}/files`, query: { path }, body: body as BodyInit, idempotent: true });
  }

  forkInstance(id: string, count = 1): Promise<Branch> {
    return this.json({ method: "POST", path: `/api/v1/instances/${id}/fork`, json: { count } });
  }

  // ---- snapshots ----

  createSnapshot(instanceId: string, opts: { name?: string; tags?: string[]; memory?: boolean } = {}): Promise<Snapshot> {
    return this.json({ method: "POST", path: "/api/v1/snapshots", json: snake({ instanceId, ...opts }) });
  }

  async listSnapshots(): Promise<Snapshot[]> {
    return (await this.json<{ snapshots: Snapshot[] }>({ method: "GET", path: "/api/v1/snapshots", idempotent: true })).snapshots;
  }

  getSnapshot(id: string): Promise<Snapshot> {
    return this.json({ method: "GET", path: `/api/v1/snapshots/${id}`, idempotent: true });
  }

  async deleteSnapshot(id: string): Promise<void> {
    await this.send({ method: "DELETE", path: `/api/v1/snapshots/${id}`, idempotent: true });
  }

  restoreSnapshot(id: string): Promise<Instance> {
    return this.json({ method: "POST", path: `/api/v1/snapshots/${id}/restore` });
  }

  branchSnapshot(id: string, count = 1): Promise<Branch> {
    return this.json({ method: "POST", path: `/api/v1/snapshots/${id}/branch`, json: { count } });
  }

  // ---- functions ----

  private deployBody(name: string | undefined, opts: DeployOptions): Record<string, unknown> {
    const { code, archive, ...rest } = opts;
    const body = snake({ name, ...rest });
    if (code !== undefined) body.code_b64 = b64(code);
    if (archive !== undefined) body.archive_b64 = b64(archive);
    return body;
  }

  /** Deploys a function; a new version when `name` exists. */
  deployFunction(name: string, opts: DeployOptions): Promise<FunctionInfo> {
    return this.json({ method: "POST", path: "/api/v1/functions", json: this.deployBody(name, opts) });
  }

  /** A new version: what is not given is taken from the latest version. */
  updateFunction(name: string, opts: DeployOptions): Promise<FunctionInfo> {
    return this.json({ method: "PUT", path: `/api/v1/functions/${name}`, json: this.deployBody(undefined, opts) });
  }

  async listFunctions(): Promise<FunctionInfo[]> {
    return (await this.json<{ functions: FunctionInfo[] }>({ method: "GET", path: "/api/v1/functions", idempotent: true })).functions;
  }

  getFunction(name: string, version?: number): Promise<FunctionInfo> {
    return this.json({ method: "GET", path: `/api/v1/functions/${name}`, query: { version }, idempotent: true });
  }

  deleteFunction(name: string): Promise<{ name: string; failedInvocations: number }> {
    return this.json({ method: "DELETE", path: `/api/v1/functions/${name}`, idempotent: true });
  }

  /** Invokes a function. Sync: the finished invocation (a handler error is `status: "error"`).
   * `async: true`: queued; follow it with `getInvocation` or `waitInvocation`. */
  invokeFunction(name: string, payload: unknown = null, opts: InvokeOptions = {}): Promise<Invocation> {
    return this.json({
      method: "POST",
      path: `/api/v1/functions/${name}/invoke`,
      query: {
        async: opts.async ? "true" : undefined,
        version: opts.version,
        callback_url: opts.callbackUrl,
        max_attempts: opts.maxAttempts,
      },
      headers: { "content-type": "application/json", ...(opts.idempotencyKey ? { "Idempotency-Key": opts.idempotencyKey } : {}) },
      body: JSON.stringify(payload),
      idempotent: opts.idempotencyKey !== undefined,
    });
  }

  getInvocation(id: string): Promise<Invocation> {
    return this.json({ method: "GET", path: `/api/v1/invocations/${id}`, idempotent: true });
  }

  async listInvocations(opts: { function?: string; status?: string; limit?: number } = {}): Promise<Invocation[]> {
    return (await this.json<{ invocations: Invocation[] }>({ method: "GET", path: "/api/v1/invocations", query: opts, idempotent: true })).invocations;
  }

  /** Polls an async invocation until it is no longer queued or running. */
  async waitInvocation(id: string, timeoutMs = 60_000, pollMs = 100): Promise<Invocation> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const inv = await this.getInvocation(id);
      if (inv.status !== "queued" && inv.status !== "running") return inv;
      if (Date.now() > deadline) throw new TimeoutError(`invocation ${id} is still ${inv.status}`, "timeout", 0);
      await new Promise((r) => setTimeout(r, pollMs));
    }
  }
}

async function errorOf(resp: Response): Promise<FaaSError> {
  const text = await resp.text();
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON: the text is the message
  }
  return errorFromResponse(resp.status, body);
}
