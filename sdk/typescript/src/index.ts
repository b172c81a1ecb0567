/**
 * TypeScript client of the faas platform, on `fetch` (Node 18+ and browsers).
 *
 * ```ts
 * import { FaaSClient } from "@faas-platform/sdk";
 * const c = new FaaSClient("http://127.0.0.1:8080"); // or new FaaSClient({ baseUrl, ... })
 * const r = await c.execute({ command: "echo hello" });
 * console.log(r.exitCode, r.stdout);
 * ```
 *
 * Requests and results are camelCase; user data (function payloads and results, env var
 * names, instance metadata) is passed through untouched. Only calls that are safe to repeat
 * are retried.
 *
 * API keys: the option `apiKey` (by default the `FAAS_API_KEY` environment variable, on Node)
 * goes as `Authorization: Bearer <key>` with every request, its streams and the terminal's
 * WebSocket handshake; it is kept out of the client's printed form and of error messages.
 * https: give an `https://` base URL. On Node, a server whose certificate is signed by a CA of
 * your own is trusted with `NODE_EXTRA_CA_CERTS=/path/to/ca.pem` in node's environment (read
 * once, when node starts; fetch and WebSockets both use it), or with the option `fetch` set to
 * a fetch with a dispatcher of yours (undici's `Agent({ connect: { ca } })`).
 */

import {
  ConflictError,
  ConnectionError,
  FaaSError,
  InternalError,
  TimeoutError,
  UnsupportedError,
  errorFromResponse,
  isApiError,
  retryAfterSeconds,
} from "./errors.js";

export * from "./errors.js";

export type Command = string | string[];
export type Mode = "ephemeral" | "cached" | "checkpointed" | "branched" | "persistent";

/**
 * Egress rules: `{ egress: "allow", deny: [...] }` is everything but what `deny` lists;
 * `{ egress: "deny", allow: [...] }` nothing but what `allow` lists (`deny` still wins). Entries
 * are IPv4 addresses, CIDRs, or domain names (`example.com`, `*.example.com`).
 */
export interface EgressRules {
  egress: "allow" | "deny";
  allow?: string[];
  deny?: string[];
}

/** What a sandbox may reach: `"none"` (loopback only, the default), `"internet"`, or rules. A
 * server without sandbox networking refuses anything but none (`UnsupportedError`). */
export type Network = "none" | "internet" | EgressRules;

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
  network?: Network;
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
  /** The caller's keys and values given at creation (`{}` when none). */
  metadata: Record<string, string>;
  /** What it may reach (`"none"` by default). */
  network: Network;
  /** Its ports also answer, without a key, to requests carrying `portsToken`. */
  publicPorts: boolean;
  /** With `publicPorts`: the token (64 hex digits) that opens its ports, as the `faas_token`
   * query parameter (`portUrl(id, port, { token })`) or the `X-Faas-Ports-Token` header. */
  portsToken?: string;
}

/** A TCP port something listens on in a running instance (`listPorts`). */
export interface PortInfo {
  port: number;
  /** The address it is bound to (`0.0.0.0`, `::`, `127.0.0.1`...). */
  address: string;
  /** Where the port proxy serves it, under the server's URL: `/api/v1/instances/{id}/ports/{port}/`. */
  path: string;
  /** Its own host name, `{port}-{id}.{domain}`, on a server with a sandbox domain. */
  host?: string;
}

export interface CreateInstanceOptions {
  image?: string;
  name?: string;
  envVars?: Record<string, string>;
  memoryMb?: number;
  cpuCores?: number;
  idleTimeoutS?: number;
  runtime?: string;
  isolation?: string;
  /** String keys and values of yours (at most 4 KiB in all), a filter of `listInstances`. */
  metadata?: Record<string, string>;
  /** What it may reach (`"none"` by default). */
  network?: Network;
  /** Its ports (`portUrl`) also answer, without a key, to requests carrying its `portsToken`. */
  publicPorts?: boolean;
}

export interface PtySize {
  cols: number;
  rows: number;
}

export interface StartProcessOptions {
  envVars?: Record<string, string>;
  workingDir?: string;
  /** Keep its stdin open for `sendStdin` (otherwise it reads /dev/null). */
  stdin?: boolean;
  /** Run it under a terminal of this size: its output comes as `pty` events, and it always
   * takes input. */
  pty?: PtySize;
  /** A label of yours, shown by `listProcesses`. */
  tag?: string;
  /** Kill its process group after this long. */
  timeoutMs?: number;
}

export interface ProcessStarted {
  pid: number;
  tag: string | null;
}

export interface ProcessInfo {
  pid: number;
  tag: string | null;
  /** Its argv. */
  command: string[];
  envVars: Record<string, string>;
  workingDir: string | null;
  pty: boolean;
  running: boolean;
  /** Set once it ended (128 + N when signal N ended it). */
  exitCode: number | null;
  signal: number | null;
  startedAtMs: number;
}

export interface ProcessExit {
  exitCode: number;
  signal: number | null;
  timedOut: boolean;
  oomKilled: boolean;
  durationMs: number;
}

/** One event of a process's stream: output (`data`, the bytes), then one `exit`. */
export interface ProcessEvent {
  kind: "stdout" | "stderr" | "pty" | "exit";
  /** The bytes of an output event (empty for `exit`). */
  data: Uint8Array;
  /** Set on the `exit` event only. */
  exit: ProcessExit | null;
}

export interface FileEntry {
  name: string;
  path: string;
  type: "file" | "dir" | "symlink" | "other";
  size: number;
  /** Permission bits, e.g. 420 (0o644). */
  mode: number;
  /** As `ls -l` shows them: `-rw-r--r--`. */
  permissions: string;
  owner: string;
  group: string;
  uid: number;
  gid: number;
  mtimeMs: number;
  symlinkTarget: string | null;
}

/** A change under a watched directory; a rename is the old path's `rename` then the new
 * path's `create`. */
export interface FsEvent {
  op: "create" | "write" | "remove" | "rename" | "chmod" | string;
  path: string;
}

/** A watch of `watchDir`: iterate it (`for await`), `close()` it to stop. */
export interface FsWatch extends AsyncIterableIterator<FsEvent> {
  close(): Promise<void>;
}

export interface TerminalExit {
  exitCode: number;
  signal: number | null;
}

/** A shell under a terminal in an instance, over a WebSocket (`terminal`). */
export interface Terminal {
  /** Types `data` (keystrokes) into the terminal. */
  write(data: string | Uint8Array): void;
  resize(cols: number, rows: number): void;
  /** Calls `cb` with each piece of the terminal's output (what came before the first
   * callback was registered is given to it first); returns a function that unregisters it. */
  onData(cb: (data: Uint8Array) => void): () => void;
  /** Resolves when the shell ended; rejects if the socket closed before that. */
  wait(): Promise<TerminalExit>;
  /** Closes the socket, which ends the shell. */
  close(): void;
}

/** The part of the WebSocket API the terminal uses (browsers', Node 22's global, `ws`). */
export interface WebSocketLike {
  binaryType: string;
  readonly readyState: number;
  send(data: string | ArrayBufferLike | ArrayBufferView): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: any) => any) | null;
  onmessage: ((ev: any) => any) | null;
  onerror: ((ev: any) => any) | null;
  onclose: ((ev: any) => any) | null;
}

export type WebSocketConstructor = new (url: string, protocols?: any) => WebSocketLike;

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
  /** What its sandboxes may reach (`"none"` by default). */
  network?: Network;
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
  network: Network;
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

/** Who the client's API key is. */
export interface Whoami {
  tenant: string;
  role: "admin" | "member";
  keyId: string | null;
}

/** A tenant's limits. In its settings (`Tenant.quotas`) a missing field is the server's
 * default; in `Tenant.effective` every field is set, and 0 means no limit. */
export interface Quotas {
  /** Sandboxes alive at once: executions, running instances, function sandboxes. */
  concurrentSandboxes?: number;
  /** Instances, running or stopped. */
  instances?: number;
  /** Total memory limit (MiB) of the live sandboxes. */
  memoryMb?: number;
  /** Bytes of snapshots kept. */
  snapshotBytes?: number;
  functions?: number;
  /** Async invocations queued or running. */
  queuedInvocations?: number;
  /** The refill rate of the tenant's token bucket. */
  requestsPerSecond?: number;
  /** The bucket's size. */
  burst?: number;
  /** Its networked sandboxes may reach the private ranges (10/8, 172.16/12, 192.168/16,
   * 100.64/10). */
  privateEgress?: boolean;
}

export interface Tenant {
  id: string;
  name: string | null;
  createdAtMs: number;
  /** Its own settings. */
  quotas: Quotas;
  /** Every limit as enforced (its settings over the server's defaults; 0: no limit). */
  effective: Required<Quotas>;
}

export interface ApiKey {
  id: string;
  name: string;
  tenant: string;
  role: "admin" | "member";
  /** The secret's first characters, to tell keys apart. */
  prefix: string;
  createdAtMs: number;
  expiresAtMs: number | null;
  revokedAtMs: number | null;
  lastUsedAtMs?: number | null;
  /** The key itself (`faas_...`): only in the answer of `createKey`; keep it then. */
  secret?: string;
}

/** What a tenant used, for one day, function or instance (`key`), or in all (`"total"`). */
export interface UsageRow {
  key: string;
  executions: number;
  instanceExecs: number;
  invocations: number;
  instanceSeconds: number;
  wallMs: number;
  cpuMs: number;
  memoryMibS: number;
  peakMemoryMb: number;
}

export interface Usage {
  tenant: string;
  fromMs: number;
  toMs: number;
  groupBy: string;
  rows: UsageRow[];
  total: UsageRow;
}

export interface UsageOptions {
  /** The period, in ms since the epoch. */
  fromMs?: number;
  toMs?: number;
  groupBy?: "day" | "function" | "instance";
  /** An admin's choice of tenant (default: its own); a member always sees its own. */
  tenant?: string;
}

/** One administrative act: `action` (`key.create`, `key.revoke`, `tenant.create`,
 * `tenant.update`) by `actorKeyId` of `actorTenant` on `target`; `detail` as the server sent
 * it. */
export interface AuditEvent {
  id: number;
  atMs: number;
  actorTenant: string;
  actorKeyId: string | null;
  action: string;
  target: string;
  detail: unknown;
}

export interface ClientOptions {
  /** An http(s) URL (default http://127.0.0.1:8080). */
  baseUrl?: string;
  /** The API key (`faas_...`), sent as `Authorization: Bearer` with every request; by default
   * the environment variable `FAAS_API_KEY` (on Node). `""` or `null`: none. */
  apiKey?: string | null;
  /** Per HTTP call, in ms (default 120 000). */
  timeoutMs?: number;
  /** Retries of calls that are safe to repeat (default 2). */
  maxRetries?: number;
  headers?: Record<string, string>;
  fetch?: typeof fetch;
  /** The WebSocket class of `terminal` where there is no global one (Node < 22: the `ws`
   * package's, say). */
  WebSocket?: WebSocketConstructor;
}

const OPTION_KEYS = new Set(["baseUrl", "apiKey", "timeoutMs", "maxRetries", "headers", "fetch", "WebSocket"]);
const KEY_HEADERS = new Set(["authorization", "x-api-key"]);

/** The `Authorization` header of an API key (`undefined`: `FAAS_API_KEY`; `""`, `null`: none). */
function authHeaders(apiKey: string | null | undefined): Record<string, string> {
  if (apiKey !== undefined && apiKey !== null && typeof apiKey !== "string") {
    throw new TypeError(`apiKey must be a string, got ${describe(apiKey)}`);
  }
  const env = (globalThis as { process?: { env?: Record<string, string | undefined> } }).process?.env;
  const key = (apiKey === undefined ? env?.FAAS_API_KEY ?? "" : apiKey ?? "").trim();
  if (!key) return {};
  // Said without the key: an error message must never carry it.
  if (!/^[\x21-\x7e]+$/.test(key)) throw new TypeError("the API key has characters an HTTP header cannot carry");
  return { authorization: `Bearer ${key}` };
}

const sendsKey = (headers: Record<string, string>) => Object.keys(headers).some((k) => KEY_HEADERS.has(k.toLowerCase()));
const DEFAULT_URL = "http://127.0.0.1:8080";

/** The base URL of a client's argument, or a TypeError saying why it cannot be used. */
function baseUrlOf(url: unknown, what: string): string {
  if (typeof url !== "string") {
    throw new TypeError(`${what} must be an http(s) URL string, got ${describe(url)}`);
  }
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new TypeError(`${what} is not a URL: ${JSON.stringify(url)} (say http://host:port)`);
  }
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:") {
    throw new TypeError(`${what} must be an http:// or https:// URL, got ${JSON.stringify(url)}`);
  }
  return url.replace(/\/+$/, "");
}

function describe(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "an array";
  return typeof v === "string" ? JSON.stringify(v) : `a ${typeof v}${typeof v === "number" ? ` (${v})` : ""}`;
}

/** Keys whose values are user data, passed through as they are. */
const OPAQUE = new Set(["result", "payload", "env_vars", "envVars", "metadata", "raw", "detail", "network"]);

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

/** Where the port proxy serves `path` (and its query) of `port`. */
const portPath = (id: string, port: number, path: string) => `/api/v1/instances/${id}/ports/${port}/${path.replace(/^\/+/, "")}`;

const camel = <T>(v: unknown) => convertKeys(v, toCamel) as T;
const snake = (v: unknown) => convertKeys(v, toSnake) as Record<string, unknown>;

function b64(data: string | Uint8Array): string {
  const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
  let bin = "";
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin);
}

function unb64(s: string): Uint8Array {
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

const bytesOf = (data: string | Uint8Array) => (typeof data === "string" ? new TextEncoder().encode(data) : data);

/** Server-Sent Events of a response body, as they come; ends with the body (or `cancel`). */
async function* sseEvents(reader: ReadableStreamDefaultReader<Uint8Array>): AsyncGenerator<LogEvent> {
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
          if (data.length) yield { event, data: JSON.parse(data.join("\n")) };
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

/** The error of an `error` event: the server could not go on with the stream. */
const streamError = (data: Record<string, unknown>) =>
  new InternalError(String(data.message ?? JSON.stringify(data)), "internal", 0);

const PROCESS_EVENTS = new Set(["stdout", "stderr", "pty", "exit"]);

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
  /** The API key's header, in a private field: not shown when the client is printed. */
  readonly #auth: Record<string, string>;
  private readonly fetchImpl: typeof fetch;

  private readonly webSocketImpl?: WebSocketConstructor;

  /**
   * `new FaaSClient("http://host:port")`, `new FaaSClient("http://host:port", { apiKey })`
   * or `new FaaSClient({ baseUrl, apiKey, timeoutMs, maxRetries, headers, fetch, WebSocket })`.
   * An argument it cannot use (not an http(s) URL, an unknown option) is a `TypeError`.
   */
  constructor(baseUrlOrOptions: string | ClientOptions = {}, options: Omit<ClientOptions, "baseUrl"> = {}) {
    let opts: ClientOptions;
    if (typeof baseUrlOrOptions === "string") {
      opts = { ...checkedOptions(options, "the options"), baseUrl: baseUrlOf(baseUrlOrOptions, "the base URL") };
      if ((options as ClientOptions).baseUrl !== undefined) throw new TypeError("the base URL is given twice");
    } else {
      opts = checkedOptions(baseUrlOrOptions, "the FaaSClient argument");
    }
    this.baseUrl = opts.baseUrl === undefined ? DEFAULT_URL : baseUrlOf(opts.baseUrl, "baseUrl");
    this.timeoutMs = opts.timeoutMs ?? 120_000;
    this.maxRetries = opts.maxRetries ?? 2;
    this.headers = opts.headers ?? {};
    this.#auth = authHeaders(opts.apiKey);
    this.fetchImpl = opts.fetch ?? globalThis.fetch.bind(globalThis);
    this.webSocketImpl = opts.WebSocket;
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
      const headers: Record<string, string> = { ...this.#auth, ...this.headers, ...(call.headers ?? {}) };
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
          if (resp.status >= 400) throw await errorOf(resp, sendsKey(headers));
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

  /** The Server-Sent Events of `path` (a GET without a timeout), camelCased. */
  private async *events(path: string, query?: Call["query"]): AsyncGenerator<LogEvent> {
    const resp = await this.send({ method: "GET", path, query }, 0);
    if (!resp.body) return;
    for await (const ev of sseEvents(resp.body.getReader())) yield { event: ev.event, data: camel(ev.data) };
  }

  /** The output of execution `requestId` as it happens: stdout/stderr events, then `exit`. */
  async *streamLogs(requestId: string): AsyncGenerator<LogEvent> {
    for await (const ev of this.events(`/api/v1/logs/${encodeURIComponent(requestId)}/stream`)) {
      yield ev;
      if (ev.event === "exit") return;
    }
  }

  // ---- instances ----

  createInstance(opts: CreateInstanceOptions = {}): Promise<Instance> {
    return this.json({ method: "POST", path: "/api/v1/instances", json: snake(opts) });
  }

  /** Instances; with `metadata`, only those whose metadata has all of these keys and values. */
  async listInstances(opts: { metadata?: Record<string, string> } = {}): Promise<Instance[]> {
    const query: Record<string, string> = {};
    for (const [k, v] of Object.entries(opts.metadata ?? {})) query[`metadata.${k}`] = String(v);
    return (await this.json<{ instances: Instance[] }>({ method: "GET", path: "/api/v1/instances", query, idempotent: true })).instances;
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

  // ---- ports of an instance ----

  /** The TCP ports something listens on in a running instance (one entry per port), each with
   * where the port proxy serves it. */
  async listPorts(id: string): Promise<PortInfo[]> {
    return (await this.json<{ ports: PortInfo[] }>({ method: "GET", path: `/api/v1/instances/${id}/ports`, idempotent: true })).ports;
  }

  /**
   * The absolute URL of `path` (it may carry a query) on `port` of an instance, through the
   * server's port proxy. It takes the owner's API key; with `token` (the `portsToken` of an
   * instance made with `publicPorts: true`) it carries it as `faas_token`, and then opens
   * without a key (in a browser, an `<iframe>`, a plain `fetch`). Makes no request.
   */
  portUrl(id: string, port: number, opts: { path?: string; token?: string } = {}): string {
    let url = `${this.baseUrl}${portPath(id, port, opts.path ?? "/")}`;
    if (opts.token !== undefined) url += `${url.includes("?") ? "&" : "?"}faas_token=${encodeURIComponent(opts.token)}`;
    return url;
  }

  /**
   * `fetch` of `path` (it may carry a query) on the server listening on `port` in an instance,
   * through the port proxy with the client's key and headers (`init`'s win): resolves to that
   * server's `Response`, whatever its status (a 404 of its own is a response, not an error).
   * The proxy's own refusals reject: `PortClosedError` (nothing listens there),
   * `BadGatewayError` (no HTTP answer), `NotFoundError` (no such instance)... Without
   * `init.signal`, the client's timeout holds until the answer's headers. Never retried.
   */
  async portFetch(id: string, port: number, path = "/", init: RequestInit = {}): Promise<Response> {
    const headers = new Headers({ ...this.#auth, ...this.headers });
    new Headers(init.headers).forEach((v, k) => headers.set(k, v));
    const ctrl = init.signal ? undefined : new AbortController();
    const timer = ctrl && this.timeoutMs > 0 ? setTimeout(() => ctrl.abort(), this.timeoutMs) : undefined;
    let resp: Response;
    try {
      resp = await this.fetchImpl(this.baseUrl + portPath(id, port, path), { ...init, headers, signal: init.signal ?? ctrl?.signal });
    } catch (e) {
      if (init.signal?.aborted) throw e; // the caller's own abort
      if (ctrl?.signal.aborted) throw new TimeoutError(`the HTTP call timed out after ${this.timeoutMs} ms`, "timeout", 0);
      throw new ConnectionError(`cannot reach the server: ${(e as Error).message}`, "connection", 0);
    } finally {
      if (timer) clearTimeout(timer);
    }
    if (resp.status >= 400 && (resp.headers.get("content-type") ?? "").includes("json")) {
      let body: unknown;
      try {
        body = JSON.parse(await resp.clone().text());
      } catch {
        body = undefined; // not JSON: the box's server's
      }
      if (isApiError(body)) {
        let sentKey = false;
        headers.forEach((_, k) => (sentKey ||= KEY_HEADERS.has(k.toLowerCase())));
        throw errorFromResponse(resp.status, body, retryAfterSeconds(resp.headers.get("retry-after")), sentKey);
      }
    }
    return resp;
  }

  // ---- processes of an instance ----

  /** Starts `command` in an instance and resolves at once (it runs in the background): follow
   * it with `processEvents`. Never retried. */
  startProcess(id: string, command: Command, opts: StartProcessOptions = {}): Promise<ProcessStarted> {
    return this.json({ method: "POST", path: `/api/v1/instances/${id}/processes`, json: snake({ command, ...opts }) });
  }

  /** The instance's running and recently ended processes (its running execs too). */
  async listProcesses(id: string): Promise<ProcessInfo[]> {
    return (await this.json<{ processes: ProcessInfo[] }>({ method: "GET", path: `/api/v1/instances/${id}/processes`, idempotent: true })).processes;
  }

  /**
   * The output of a process: `stdout`, `stderr` (or, under a terminal, `pty`) events with the
   * bytes, then one `exit`. Any number of callers, at any time: each gets the output kept so
   * far (at least its last MiB), then the live output; an ended process's ends at once.
   */
  async *processEvents(id: string, pid: number): AsyncGenerator<ProcessEvent> {
    for await (const ev of this.events(`/api/v1/instances/${id}/processes/${pid}/events`)) {
      if (ev.event === "error") throw streamError(ev.data);
      if (ev.event === "exit") {
        yield { kind: "exit", data: new Uint8Array(0), exit: ev.data as unknown as ProcessExit };
        return;
      }
      if (PROCESS_EVENTS.has(ev.event)) {
        yield { kind: ev.event as ProcessEvent["kind"], data: unb64(String(ev.data.data ?? "")), exit: null };
      }
    }
    throw new ConnectionError("the process's event stream ended before its exit", "connection", 0);
  }

  /** Writes `data` to the stdin of a process started with `stdin: true` or a `pty` (otherwise
   * a `ConflictError`). */
  async sendStdin(id: string, pid: number, data: string | Uint8Array): Promise<void> {
    await this.send({
      method: "POST",
      path: `/api/v1/instances/${id}/processes/${pid}/stdin`,
      headers: { "content-type": "application/octet-stream" },
      body: bytesOf(data) as BodyInit,
    });
  }

  /** Closes the stdin of a process (it then reads end-of-file). */
  async closeStdin(id: string, pid: number): Promise<void> {
    await this.send({ method: "POST", path: `/api/v1/instances/${id}/processes/${pid}/stdin/close`, idempotent: true });
  }

  /** Sends `signal` (a name such as `SIGTERM`, `TERM`, `kill`, or a number) to the process's group. */
  async signalProcess(id: string, pid: number, signal: string | number = "SIGTERM"): Promise<void> {
    await this.send({ method: "POST", path: `/api/v1/instances/${id}/processes/${pid}/signal`, json: { signal } });
  }

  /** Resizes the terminal of a process started with a `pty`. */
  async resizePty(id: string, pid: number, cols: number, rows: number): Promise<void> {
    await this.send({ method: "POST", path: `/api/v1/instances/${id}/processes/${pid}/resize`, json: { cols, rows }, idempotent: true });
  }

  /**
   * A shell (`bash` when the image has it, else `sh`) under a terminal of `cols` x `rows` in
   * an instance, over a WebSocket; resolves once connected. Uses the global `WebSocket`
   * (browsers, Node 22+) or the client option `WebSocket`.
   */
  async terminal(id: string, opts: Partial<PtySize> = {}): Promise<Terminal> {
    const WS = this.webSocketImpl ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!WS) {
      throw new UnsupportedError(
        "terminal needs a WebSocket: there is no global one here (Node < 22); pass one as the " +
          "client option WebSocket (the ws package's, say) or run node with --experimental-websocket",
        "unsupported",
        0,
      );
    }
    const u = new URL(`${this.baseUrl}/api/v1/instances/${encodeURIComponent(id)}/terminal`);
    u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
    u.searchParams.set("cols", String(opts.cols ?? 80));
    u.searchParams.set("rows", String(opts.rows ?? 24));
    // Headers (the API key) only where the WebSocket takes them (Node's and ws do, browsers
    // not: there the terminal cannot authenticate).
    const headers = { ...this.#auth, ...this.headers };
    const ws = Object.keys(headers).length ? new WS(u.toString(), { headers }) : new WS(u.toString());
    ws.binaryType = "arraybuffer";
    try {
      await new Promise<void>((resolve, reject) => {
        ws.onopen = () => resolve();
        ws.onerror = () => reject(new Error("the terminal's WebSocket failed"));
        ws.onclose = () => reject(new Error("the terminal's WebSocket closed"));
      });
    } catch (e) {
      ws.onopen = ws.onerror = ws.onclose = null;
      // A WebSocket does not say why it was refused: the instance's state does (404, ...).
      const inst = await this.getInstance(id);
      if (inst.status !== "running") {
        throw new ConflictError(`instance ${id} is ${inst.status}, not running`, "conflict", 409);
      }
      throw new ConnectionError(`cannot open the terminal of instance ${id}: ${(e as Error).message}`, "connection", 0);
    }
    return new WebSocketTerminal(ws);
  }

  // ---- files of an instance ----

  /** A file, directory or link (not followed) of an instance, by absolute path. */
  stat(id: string, path: string): Promise<FileEntry> {
    return this.json({ method: "GET", path: `/api/v1/instances/${id}/fs/stat`, query: { path }, idempotent: true });
  }

  /** The entries under directory `path`, `depth` levels down (default 1: its children), sorted by path. */
  async listDir(id: string, path: string, opts: { depth?: number } = {}): Promise<FileEntry[]> {
    return (await this.json<{ entries: FileEntry[] }>({ method: "GET", path: `/api/v1/instances/${id}/fs/list`, query: { path, depth: opts.depth }, idempotent: true })).entries;
  }

  /** Makes directory `path` (and its parents); one that exists is a `ConflictError`. */
  makeDir(id: string, path: string): Promise<FileEntry> {
    return this.json({ method: "POST", path: `/api/v1/instances/${id}/fs/mkdir`, json: { path } });
  }

  /** Renames `from` to `to` and returns what is now at `to`. */
  move(id: string, from: string, to: string): Promise<FileEntry> {
    return this.json({ method: "POST", path: `/api/v1/instances/${id}/fs/move`, json: { from, to } });
  }

  /** Removes a file, a link or a whole directory. */
  async remove(id: string, path: string): Promise<void> {
    await this.send({ method: "DELETE", path: `/api/v1/instances/${id}/fs`, query: { path }, idempotent: true });
  }

  /**
   * Watches directory `path` (with `recursive`, its subdirectories too) and resolves once the
   * watch is set, so what is changed after that is seen: `for await (const ev of watch)`, then
   * `await watch.close()`.
   */
  async watchDir(id: string, path: string, opts: { recursive?: boolean } = {}): Promise<FsWatch> {
    const resp = await this.send(
      { method: "GET", path: `/api/v1/instances/${id}/fs/watch`, query: { path, recursive: opts.recursive ? "true" : "false" } },
      0,
    );
    if (!resp.body) throw new ConnectionError("the watch answered without a body", "connection", 0);
    const reader = resp.body.getReader();
    const events = sseEvents(reader);
    try {
      for (;;) {
        const { value, done } = await events.next();
        if (done) throw new ConnectionError("the watch ended before it was ready", "connection", 0);
        if (value.event === "error") throw streamError(value.data);
        if (value.event === "ready") break;
      }
    } catch (e) {
      await events.return(undefined);
      throw e;
    }
    return new SseFsWatch(reader, events);
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

  // ---- tenants, API keys, usage and the audit trail ----

  /** The tenant and role of the client's API key. */
  whoami(): Promise<Whoami> {
    return this.json({ method: "GET", path: "/api/v1/auth/whoami", idempotent: true });
  }

  /** Makes a tenant (`id`: lowercase letters, digits, `-` and `_`; generated when not given)
   * with its own `quotas` (the ones not given are the server's defaults). Admin only. */
  createTenant(opts: { id?: string; name?: string; quotas?: Quotas } = {}): Promise<Tenant> {
    return this.json({ method: "POST", path: "/api/v1/tenants", json: snake(opts) });
  }

  /** Admin only. */
  async listTenants(): Promise<Tenant[]> {
    return (await this.json<{ tenants: Tenant[] }>({ method: "GET", path: "/api/v1/tenants", idempotent: true })).tenants;
  }

  /** Admin only. */
  getTenant(id: string): Promise<Tenant> {
    return this.json({ method: "GET", path: `/api/v1/tenants/${encodeURIComponent(id)}`, idempotent: true });
  }

  /** Replaces the tenant's quota settings with `quotas`: a field not given goes back to the
   * server's default. Admin only. */
  setTenantQuotas(id: string, quotas: Quotas): Promise<Tenant> {
    return this.json({ method: "PUT", path: `/api/v1/tenants/${encodeURIComponent(id)}`, json: snake({ quotas }), idempotent: true });
  }

  /** Makes an API key of `tenant` (default: the caller's), `role` `member` (default) or
   * `admin`, that stops working after `expiresInS` if given. The answer is the only one with
   * its `secret`. Admin only. */
  createKey(name: string, opts: { tenant?: string; role?: "admin" | "member"; expiresInS?: number } = {}): Promise<ApiKey> {
    return this.json({ method: "POST", path: "/api/v1/keys", json: snake({ name, ...opts }) });
  }

  /** API keys, without their secrets; with `tenant`, only that tenant's. Admin only. */
  async listKeys(opts: { tenant?: string } = {}): Promise<ApiKey[]> {
    return (await this.json<{ keys: ApiKey[] }>({ method: "GET", path: "/api/v1/keys", query: { tenant: opts.tenant }, idempotent: true })).keys;
  }

  /** Revokes an API key: the next request made with it is refused. Admin only. */
  async revokeKey(id: string): Promise<void> {
    await this.send({ method: "DELETE", path: `/api/v1/keys/${encodeURIComponent(id)}`, idempotent: true });
  }

  /** What a tenant used over a period, one row per `groupBy` key, and the total. */
  getUsage(opts: UsageOptions = {}): Promise<Usage> {
    const query = { from: opts.fromMs, to: opts.toMs, group_by: opts.groupBy, tenant: opts.tenant };
    return this.json({ method: "GET", path: "/api/v1/usage", query, idempotent: true });
  }

  /** The audit trail (at most `limit` events): key and tenant changes and who made them.
   * Admin only. */
  async listAuditEvents(opts: { limit?: number } = {}): Promise<AuditEvent[]> {
    return (await this.json<{ events: AuditEvent[] }>({ method: "GET", path: "/api/v1/audit", query: { limit: opts.limit }, idempotent: true })).events;
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

/** The options of a client checked: an object of known keys only. */
function checkedOptions(opts: unknown, what: string): ClientOptions {
  if (opts === null || typeof opts !== "object" || Array.isArray(opts)) {
    throw new TypeError(`${what} must be a base URL string or an options object, got ${describe(opts)}`);
  }
  const unknown = Object.keys(opts).filter((k) => !OPTION_KEYS.has(k));
  if (unknown.length) {
    throw new TypeError(`unknown FaaSClient option(s) ${unknown.join(", ")} (known: ${[...OPTION_KEYS].join(", ")})`);
  }
  return opts as ClientOptions;
}

class SseFsWatch implements FsWatch {
  private closed = false;

  constructor(
    private readonly reader: ReadableStreamDefaultReader<Uint8Array>,
    private readonly events: AsyncGenerator<LogEvent>,
  ) {}

  [Symbol.asyncIterator](): this {
    return this;
  }

  async next(): Promise<IteratorResult<FsEvent>> {
    for (;;) {
      let r: IteratorResult<LogEvent>;
      try {
        r = await this.events.next();
      } catch (e) {
        if (this.closed) return { done: true, value: undefined };
        throw new ConnectionError(`the watch failed: ${(e as Error).message}`, "connection", 0);
      }
      if (r.done) return { done: true, value: undefined };
      if (r.value.event === "error") throw streamError(r.value.data);
      if (r.value.event === "ready") continue;
      const data = r.value.data as Partial<FsEvent>;
      return { done: false, value: { op: data.op ?? r.value.event, path: String(data.path ?? "") } };
    }
  }

  async return(): Promise<IteratorResult<FsEvent>> {
    await this.close();
    return { done: true, value: undefined };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    // Cancelling the reader ends a read in progress (a `next` waiting for a change) too.
    await this.reader.cancel().catch(() => undefined);
  }
}

class WebSocketTerminal implements Terminal {
  private readonly callbacks = new Set<(data: Uint8Array) => void>();
  private pending: Uint8Array[] = [];
  private readonly exited: Promise<TerminalExit>;

  constructor(private readonly ws: WebSocketLike) {
    let exit: TerminalExit | null = null;
    this.exited = new Promise<TerminalExit>((resolve, reject) => {
      ws.onmessage = (ev: { data: unknown }) => {
        const d = ev.data;
        if (typeof d === "string") {
          try {
            const msg = JSON.parse(d) as { exit?: { exit_code: number; signal: number | null } };
            if (msg.exit) {
              exit = { exitCode: msg.exit.exit_code, signal: msg.exit.signal ?? null };
              resolve(exit);
            }
          } catch {
            // not a message of the protocol: ignored
          }
        } else if (d instanceof ArrayBuffer) {
          this.output(new Uint8Array(d));
        } else if (ArrayBuffer.isView(d)) {
          this.output(new Uint8Array(d.buffer, d.byteOffset, d.byteLength));
        }
      };
      ws.onerror = () => undefined; // the close that follows says it
      ws.onclose = () => {
        if (!exit) reject(new ConnectionError("the terminal closed before its shell ended", "connection", 0));
      };
    });
    this.exited.catch(() => undefined); // rejected only for those who wait
  }

  private output(data: Uint8Array): void {
    if (this.callbacks.size === 0) this.pending.push(data);
    for (const cb of this.callbacks) cb(data);
  }

  write(data: string | Uint8Array): void {
    this.ws.send(bytesOf(data)); // binary: keystrokes (a text frame is a control message)
  }

  resize(cols: number, rows: number): void {
    this.ws.send(JSON.stringify({ resize: { cols, rows } }));
  }

  onData(cb: (data: Uint8Array) => void): () => void {
    this.callbacks.add(cb);
    const earlier = this.pending;
    this.pending = [];
    for (const d of earlier) cb(d);
    return () => {
      this.callbacks.delete(cb);
    };
  }

  wait(): Promise<TerminalExit> {
    return this.exited;
  }

  close(): void {
    this.ws.close();
  }
}

async function errorOf(resp: Response, sentKey: boolean): Promise<FaaSError> {
  const text = await resp.text();
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON: the text is the message
  }
  return errorFromResponse(resp.status, body, retryAfterSeconds(resp.headers.get("retry-after")), sentKey);
}
