#!/usr/bin/env bash
# Builds the static faas-agent (static-pie, glibc linked in), which runs in any image.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
build_agent
echo "$AGENT_PATH"
