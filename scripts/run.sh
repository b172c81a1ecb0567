#!/usr/bin/env bash
# Sets up this machine and runs the platform: installs the OCI runtimes (crun, runc, runsc) and
# Docker (and starts dockerd) when missing,
# builds the static agent and the local images on first use, then `faas serve`.
# Arguments go to `faas serve` (e.g. --listen 0.0.0.0:8080 --data-dir /var/lib/faas).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

ensure_packages crun runc runsc nftables iproute2 util-linux
ensure_dockerd
build_agent
"$FAAS_ROOT/scripts/build-images.sh" all
log "building faas"
(cd "$FAAS_ROOT" && cargo build --release --quiet -p faas)
log "starting faas serve (Ctrl-C stops it and removes its sandboxes)"
exec "$FAAS_ROOT/target/release/faas" serve "$@"
