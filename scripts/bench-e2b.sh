#!/usr/bin/env bash
# The e2b benchmark (bench/e2b_bench.py): the unmodified e2b Python SDK next to our own SDK, in the
# same run, against a server this script starts (release build, native backend, crun) and stops.
# Usage: scripts/bench-e2b.sh [N cold starts] [M runs in a running sandbox]
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$FAAS_ROOT"
ensure_packages crun python3-venv
ensure_dockerd
build_agent
./scripts/build-images.sh all
cargo build --release --quiet -p faas
VENV="$FAAS_CACHE/venv"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q "./sdk/python" -r tests/e2b/python/requirements.txt
dir=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$dir"' EXIT
FAAS_AGENT_PATH="$AGENT_PATH" target/release/faas serve --listen 127.0.0.1:0 --data-dir "$dir/data" \
  --backend native --native-runtime crun --no-network >"$dir/out" 2>"$dir/err" &
pid=$!
for _ in $(seq 1 240); do
  url=$(sed -n 's/^faas listening on //p' "$dir/out")
  [ -n "$url" ] && break
  sleep 0.25
done
[ -n "$url" ] || { tail -20 "$dir/err" >&2; exit 1; }
key=$(cat "$dir/data/admin.key")
# Our side uses the image of the e2b `base` template: the function image (the default one).
E2B_API_URL="$url" E2B_SANDBOX_URL="$url" E2B_API_KEY="$key" FAAS_URL="$url" FAAS_API_KEY="$key" \
  FAAS_IMAGE="${FAAS_IMAGE:-faas/bookworm-python3.11-node18:latest}" "$VENV/bin/python" bench/e2b_bench.py "${1:-50}" "${2:-200}"
