#!/usr/bin/env bash
# The README's curl walkthrough, runnable: FAAS_URL=http://127.0.0.1:8080 examples/curl_walkthrough.sh
set -euo pipefail
U=${FAAS_URL:-http://127.0.0.1:8080}
j() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }

curl -sf "$U/health" | j '["status"]'
curl -sf "$U/api/v1/execute" -d '{"command": "echo hello; exit 3"}' | j '["exit_code"]'

I=$(curl -sf "$U/api/v1/instances" -d '{}' | j '["id"]')
curl -sf "$U/api/v1/instances/$I/exec" -d '{"command": "mkdir -p /data; echo v1 > /data/x"}' >/dev/null
S=$(curl -sf -X POST "$U/api/v1/instances/$I/snapshot" | j '["id"]')
curl -sf "$U/api/v1/snapshots/$S/branch" -d '{"count": 3}' | j '["instances"].__len__()'
curl -sf "$U/api/v1/execute" -d '{"command": "cat /data/x", "mode": "branched", "branch_from": "'"$S"'"}' | j '["stdout"]'

CODE=$(printf 'def handler(event, context):\n    return {"sum": event["a"] + event["b"]}\n' | base64 -w0)
F=walkthrough-$RANDOM
curl -sf "$U/api/v1/functions" -d '{"name": "'"$F"'", "runtime": "python", "handler": "main.handler", "code_b64": "'"$CODE"'"}' | j '["version"]'
curl -sf "$U/api/v1/functions/$F/invoke" -d '{"a": 2, "b": 3}' | j '["result"]'
ID=$(curl -sf "$U/api/v1/functions/$F/invoke?async=true" -d '{"a": 1, "b": 1}' | j '["invocation_id"]')
for _ in $(seq 1 100); do
  st=$(curl -sf "$U/api/v1/invocations/$ID" | j '["status"]')
  [ "$st" = succeeded ] && break
  sleep 0.1
done
[ "$st" = succeeded ] || { echo "async invocation: $st" >&2; exit 1; }
echo "async: $st"
curl -sf -X DELETE "$U/api/v1/functions/$F" >/dev/null

# Clean up: branches first (they depend on the snapshot), then the snapshot and the instance.
for b in $(curl -sf "$U/api/v1/instances" | python3 -c "import json,sys; print(' '.join(i['id'] for i in json.load(sys.stdin)['instances'] if i['source_snapshot'] == '$S'))"); do
  curl -sf -X DELETE "$U/api/v1/instances/$b" >/dev/null
done
curl -sf -X DELETE "$U/api/v1/snapshots/$S" >/dev/null
curl -sf -X DELETE "$U/api/v1/instances/$I" >/dev/null
echo "curl walkthrough ok"
