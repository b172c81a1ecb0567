// faas node runtime shim: loads the handler once, then serves invocations.
// Protocol (one JSON object per line): requests on stdin, answers on a fresh blocking handle of
// the original stdout. The function's console output and process.stdout/stderr writes are
// captured per invocation.
const fs = require('fs');
const path = require('path');
const util = require('util');
const out = fs.openSync('/proc/self/fd/1', 'w');
const send = (obj) => {
  const buf = Buffer.from(JSON.stringify(obj) + '\n');
  let off = 0;
  while (off < buf.length) off += fs.writeSync(out, buf, off);
};
let logs = [];
const capture = (...args) => { logs.push(util.format(...args) + '\n'); };
for (const m of ['log', 'info', 'warn', 'error', 'debug', 'trace']) console[m] = capture;
process.stdout.write = (chunk) => { logs.push(String(chunk)); return true; };
process.stderr.write = (chunk) => { logs.push(String(chunk)); return true; };
const describe = (e) => ({
  type: (e && e.name) || typeof e,
  message: (e && e.message !== undefined) ? String(e.message) : String(e),
  traceback: (e && e.stack) ? String(e.stack) : undefined,
});

async function load() {
  const spec = process.env.FAAS_HANDLER;
  const dot = spec.lastIndexOf('.');
  const file = path.join('/var/task', spec.slice(0, dot));
  const name = spec.slice(dot + 1);
  let mod;
  const found = ['', '.js', '.cjs', '.mjs'].map((e) => file + e).find((f) => fs.existsSync(f) && fs.statSync(f).isFile());
  if (!found) throw new Error(`cannot find module ${spec.slice(0, dot)} in /var/task`);
  if (found.endsWith('.mjs')) {
    mod = await import(found);
  } else {
    try {
      mod = require(found);
    } catch (e) {
      if (e && (e.code === 'ERR_REQUIRE_ESM' || /import statement|export/.test(String(e.message)))) mod = await import(found);
      else throw e;
    }
  }
  const fn = mod[name] || (mod.default && mod.default[name]);
  if (typeof fn !== 'function') throw new TypeError(`${spec}: ${name} is not a function`);
  return fn;
}

async function main() {
  let handler;
  try {
    handler = await load();
    send({ ready: true });
  } catch (e) {
    send({ ready: false, error: describe(e) });
    process.exit(0);
  }
  let pending = '';
  const queue = [];
  let busy = false;
  const serve = async () => {
    if (busy) return;
    busy = true;
    while (queue.length) {
      const req = JSON.parse(queue.shift());
      logs = [];
      const deadline = Date.now() + (req.timeout_ms || 0);
      const context = {
        invocationId: req.id,
        functionName: process.env.FAAS_FUNCTION_NAME,
        functionVersion: process.env.FAAS_FUNCTION_VERSION,
        getRemainingTimeInMillis: () => Math.max(0, deadline - Date.now()),
      };
      let answer;
      try {
        const result = await handler(req.payload, context);
        answer = { ok: true, result: result === undefined ? null : JSON.parse(JSON.stringify(result)) };
      } catch (e) {
        answer = { ok: false, error: describe(e) };
      }
      answer.logs = logs.join('');
      send(answer);
    }
    busy = false;
  };
  fs.createReadStream(null, { fd: 0 }).on('data', (chunk) => {
    pending += chunk.toString('utf8');
    let nl;
    while ((nl = pending.indexOf('\n')) >= 0) {
      queue.push(pending.slice(0, nl));
      pending = pending.slice(nl + 1);
    }
    serve();
  }).on('end', () => process.exit(0));
}
main();
