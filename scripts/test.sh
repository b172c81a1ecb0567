#!/usr/bin/env bash
# Runs the whole test suite on this machine, installing and starting what it needs first:
# Docker (dockerd), the static agent, the local images, a local PostgreSQL server; then lint, the Rust unit and
# integration tests (real server over HTTP) against Docker and against the native backend with
# each OCI runtime (crun, runc, runsc) (the store and queue tests on SQLite and PostgreSQL), the
# Python and TypeScript SDK suites, the unmodified e2b SDKs (pinned) and the examples against a live server, and a check that
# nothing was left behind.
# Prints a summary; exits non-zero when any step failed.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
cd "$FAAS_ROOT"

declare -a NAMES RESULTS TIMES
failed=0
step() { # step NAME COMMAND...
  local name=$1; shift
  log "$name"
  local t0=$SECONDS
  if "$@"; then RESULTS+=("ok"); else RESULTS+=("FAILED"); failed=1; fi
  NAMES+=("$name"); TIMES+=("$((SECONDS - t0))s")
}

setup() {
  ensure_packages docker.io busybox-static debootstrap crun runc runsc nftables iproute2 util-linux
  ensure_dockerd && build_agent && ./scripts/build-images.sh all && ensure_postgres
}

# The databases the store and queue tests made on the local PostgreSQL server.
drop_test_databases() {
  local db
  for db in $(psql "$FAAS_TEST_POSTGRES_URL" -Atc \
      "SELECT datname FROM pg_database WHERE datname LIKE 'faas\_test\_%' OR datname LIKE 'faas\_kill9\_%'"); do
    psql "$FAAS_TEST_POSTGRES_URL" -qc "DROP DATABASE IF EXISTS $db" >/dev/null
  done
}

# The full-stack suite against one backend: suite BACKEND [NATIVE_RUNTIME]
suite() {
  FAAS_TEST_BACKEND=$1 FAAS_TEST_NATIVE_RUNTIME=${2:-crun} cargo test --quiet --no-fail-fast -p faas --test all --test box_usage
}

# The SDKs' toolchains: a Python venv in the cache with the SDK and pytest, node and npm with the
# TypeScript SDK built.
sdk_setup() {
  ensure_packages python3-venv
  command -v npm >/dev/null 2>&1 || ensure_packages nodejs npm
  VENV="$FAAS_CACHE/venv"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV" || return 1
  "$VENV/bin/pip" install -q --upgrade "./sdk/python[test]" || return 1
  # The unmodified e2b SDKs, pinned, for the E2B-compatible surface.
  "$VENV/bin/pip" install -q -r tests/e2b/python/requirements.txt || return 1
  for d in tests/e2b/js examples/e2b; do
    (cd "$d" && npm ci --no-audit --no-fund --loglevel=error) || return 1
  done
  (cd sdk/typescript && npm ci --no-audit --no-fund --loglevel=error && npm run --silent build)
}

# The Python and TypeScript SDK suites, the stock e2b SDKs' suites and every example, against a
# live server (the native backend, its own data dir under the tests' root, so the leftover check
# covers it).
sdk_suites() {
  local dir="${TMPDIR:-/tmp}/faas-tests/sdk-$$" out pid url rc=0
  mkdir -p "$dir"
  out="$dir/serve.out"
  target/debug/faas serve --listen 127.0.0.1:0 --data-dir "$dir/data" --sandbox-domain sandbox.test \
    >"$out" 2>"$dir/serve.err" &
  pid=$!
  for _ in $(seq 1 240); do
    url=$(sed -n 's/^faas listening on //p' "$out")
    [ -n "$url" ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.25
  done
  if [ -z "$url" ]; then
    tail -20 "$dir/serve.err" >&2
    kill "$pid" 2>/dev/null
    return 1
  fi
  export FAAS_URL="$url"
  # The admin key the server made on its first start: the suites and examples use keys.
  FAAS_API_KEY=$(cat "$dir/data/admin.key") || { kill "$pid"; return 1; }
  export FAAS_API_KEY
  (cd sdk/python && "$VENV/bin/python" -m pytest -q) || rc=1
  (cd sdk/typescript && npm test --silent 2>&1 | tail -12; exit "${PIPESTATUS[0]}") || rc=1
  for ex in examples/python/*.py; do
    echo "example $ex"; "$VENV/bin/python" "$ex" || rc=1
  done
  echo "example examples/typescript/quickstart.mjs"; node examples/typescript/quickstart.mjs || rc=1
  echo "example examples/curl_walkthrough.sh"; examples/curl_walkthrough.sh || rc=1
  # The stock e2b SDKs, configured as a user would: one URL for both planes, one of our keys.
  (
    export E2B_API_URL="$url" E2B_SANDBOX_URL="$url" E2B_API_KEY="$FAAS_API_KEY"
    echo "e2b SDK (Python) suite"
    "$VENV/bin/python" -m pytest -q tests/e2b/python || exit 1
    echo "e2b SDK (JS) suite"
    (cd tests/e2b/js && npm test --silent 2>&1 | tail -12; exit "${PIPESTATUS[0]}") || exit 1
    echo "example examples/e2b/quickstart.py"; "$VENV/bin/python" examples/e2b/quickstart.py || exit 1
    echo "example examples/e2b/quickstart.mjs"; (cd examples/e2b && node quickstart.mjs) || exit 1
  ) || rc=1
  kill -TERM "$pid"
  wait "$pid" || rc=1
  [ $rc = 0 ] || tail -30 "$dir/serve.err" >&2
  return $rc
}

# Sandboxes, mounts and per-box cgroups that exist on the host, one per line.
leftovers() {
  local tests="${TMPDIR:-/tmp}/faas-tests"
  docker ps -aq --filter label=faas.managed=true
  grep -F " $tests/" /proc/self/mountinfo | awk '{print $5}'
  # `faas doctor` probes the backends in a directory of its own.
  grep -F " ${TMPDIR:-/tmp}/faas-doctor-" /proc/self/mountinfo | awk '{print $5}'
  find /sys/fs/cgroup/*/faas -mindepth 2 -maxdepth 2 -type d 2>/dev/null
  find "$tests" -path '*/native/sandboxes/*' -maxdepth 4 2>/dev/null
}

no_leftovers() {
  # Servers started by the tests shut down when the test binaries exit; give them a moment.
  # Only what the tests made counts: what was on the host before them is not theirs.
  local left
  for _ in $(seq 1 60); do
    left=$(leftovers | grep -vxF -f <(printf '%s\n' "$BEFORE") || true)
    [ -z "$left" ] && { rm -rf "${TMPDIR:-/tmp}/faas-tests"; return 0; }
    sleep 0.5
  done
  echo "left behind:" >&2
  echo "$left" >&2
  return 1
}

step "setup (docker, agent, images)" setup
if [ "${RESULTS[0]}" != ok ]; then
  echo "setup failed; nothing else can run" >&2
  exit 1
fi
export FAAS_AGENT_PATH="$AGENT_PATH" FAAS_REQUIRE_DOCKER=1 FAAS_TEST_POSTGRES_URL
BEFORE=$(leftovers)
step "cargo fmt --check" cargo fmt --all -- --check
step "cargo clippy" cargo clippy --quiet --all-targets -- -D warnings
step "rust tests (unit + integration on docker)" cargo test --workspace --quiet --no-fail-fast
step "integration on native, crun" suite native crun
step "integration on native, runc" suite native runc
step "integration on native, runsc (gVisor)" suite native runsc
step "SDK toolchains (venv, npm)" sdk_setup
step "SDKs, e2b SDKs and examples (live server)" sdk_suites
step "no sandboxes left behind" no_leftovers
drop_test_databases
stop_postgres

echo
echo "== summary"
for i in "${!NAMES[@]}"; do
  printf '  %-40s %-7s %s\n' "${NAMES[$i]}" "${RESULTS[$i]}" "${TIMES[$i]}"
done
if [ $failed = 0 ]; then echo "all passed"; else echo "SOME STEPS FAILED"; fi
exit $failed
