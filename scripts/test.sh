#!/usr/bin/env bash
# Runs the whole test suite on this machine, installing and starting what it needs first:
# Docker (dockerd), the static agent, the local images; then lint, the Rust unit and
# integration tests (real server over HTTP, real Docker), and a leftover check.
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
  ensure_packages docker.io busybox-static debootstrap
  ensure_dockerd && build_agent && ./scripts/build-images.sh all
}

no_leftovers() {
  # Servers started by the tests shut down when the test binaries exit; give them a moment.
  local left
  for _ in $(seq 1 60); do
    left=$(docker ps -aq --filter label=faas.managed=true)
    [ -z "$left" ] && { rm -rf "${TMPDIR:-/tmp}/faas-tests"; return 0; }
    sleep 0.5
  done
  echo "containers left behind:" >&2
  docker ps -a --filter label=faas.managed=true >&2
  return 1
}

step "setup (docker, agent, images)" setup
if [ "${RESULTS[0]}" != ok ]; then
  echo "setup failed; nothing else can run" >&2
  exit 1
fi
export FAAS_AGENT_PATH="$AGENT_PATH" FAAS_REQUIRE_DOCKER=1
step "cargo fmt --check" cargo fmt --all -- --check
step "cargo clippy" cargo clippy --quiet --all-targets -- -D warnings
step "rust tests (unit + integration)" cargo test --workspace --quiet
step "no sandboxes left behind" no_leftovers

echo
echo "== summary"
for i in "${!NAMES[@]}"; do
  printf '  %-40s %-7s %s\n' "${NAMES[$i]}" "${RESULTS[$i]}" "${TIMES[$i]}"
done
if [ $failed = 0 ]; then echo "all passed"; else echo "SOME STEPS FAILED"; fi
exit $failed
