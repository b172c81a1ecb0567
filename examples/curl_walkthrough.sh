#!/usr/bin/env bash
# The README's curl walkthrough, runnable:
#   FAAS_URL=http://127.0.0.1:8080 FAAS_API_KEY=$(cat <data-dir>/admin.key) examples/curl_walkthrough.sh
set -euo pipefail
U=${FAAS_URL:-http://127.0.0.1:8080}
if [ -z "${FAAS_API_KEY:-}" ]; then
  echo "FAAS_API_KEY is not set: export an API key of the server, say the admin key it wrote" >&2
  echo "on its first start: export FAAS_API_KEY=\$(cat <data-dir>/admin.key)" >&2
  exit 1
fi
j() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }

curl -sf "$U/health" | j '["status"]'                    # the one route without a key
curl -sf -H "Authorization: Bearer $FAAS_API_KEY" "$U/api/v1/auth/whoami" | j '["role"]'
curl -sf -H "Authorization: Bearer $FAAS_API_KEY" "$U/api/v1/execute" -d '{"command": "echo hello; exit 3"}' | j '["exit_code"]'

I=$(curl -sf -H "Authorization: Bearer $FAAS_API_KEY" "$U/api/v1/instances" -d '{}' | j '["id"]')
curl -sf -H "Authorization: Bearer $FAAS_API_KEY" "$U/api/v1/instances/$I/exec" -d '{"command": "mkdir -p /data; echo v1 > /data/x"}' >/dev/null
S=$(curl -sf -H "Authorization: Bearer $FAAS_API_KEY" -X POST "$U/api/v1/instances/$I/snapshot" | j '["id"]')
curl -sf -H "Authorization: Bearer $FAAS_API_KEY" "$U/api/v1/snapshots/$S/branch" -d '{"count": 3}' | j '["instances"].__len__()'
curl -sf -H "Authorization: Bearer $FAAS_API_KEY" "$U/api/v1/execute" -d '{"command": "cat /data/x", "mode": "branched", "branch_from": "'"$S"'"}' | j '["stdout"]'

CODE=$(printf 'def handler(event, context):\n    return {"sum": event["a"] + event["b"]}\n' | base64 -w0)
F=walkthrough-$RANDOM
curl -sf -H "Authorization: Bearer $FAAS_API_KEY" "$U/api/v1/functions" -d '{"name": "'"$F"'", "runtime": "python", "handler": "main.handler", "code_b64": "'"$CODE"'"}' | j '["version"]'
curl -sf -H "Authorization: Bearer $FAAS_API_KEY" "$U/api/v1/functions/$F/invoke" -d '{"a": 2, "b": 3}' | j '["result"]'
ID=$(curl -sf -H "Authorization: Bearer $FAAS_API_KEY" "$U/api/v1/functions/$F/invoke?async=true" -d '{"a": 1, "b": 1}' | j '["invocation_id"]')
for _ in $(seq 1 100); do
  st=$(curl -sf -H "Authorization: Bearer $FAAS_API_KEY" "$U/api/v1/invocations/$ID" | j '["status"]')
  [ "$st" = succeeded ] && break
  sleep 0.1
done
[ "$st" = succeeded ] || { echo "async invocation: $st" >&2; exit 1; }
echo "async: $st"
curl -sf -H "Authorization: Bearer $FAAS_API_KEY" -X DELETE "$U/api/v1/functions/$F" >/dev/null

# Clean up: branches first (they depend on the snapshot), then the snapshot and the instance.
for b in $(curl -sf -H "Authorization: Bearer $FAAS_API_KEY" "$U/api/v1/instances" | python3 -c "import json,sys; print(' '.join(i['id'] for i in json.load(sys.stdin)['instances'] if i['source_snapshot'] == '$S'))"); do
  curl -sf -H "Authorization: Bearer $FAAS_API_KEY" -X DELETE "$U/api/v1/instances/$b" >/dev/null
done
curl -sf -H "Authorization: Bearer $FAAS_API_KEY" -X DELETE "$U/api/v1/snapshots/$S" >/dev/null
curl -sf -H "Authorization: Bearer $FAAS_API_KEY" -X DELETE "$U/api/v1/instances/$I" >/dev/null
echo "curl walkthrough ok"
