#!/usr/bin/env bash
# Sets up what the benchmark needs, then runs `faas bench` (arguments pass through, e.g. --runs 200).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
ensure_packages crun runc runsc nftables iproute2 util-linux
ensure_dockerd
build_agent
"$FAAS_ROOT/scripts/build-images.sh" busybox
(cd "$FAAS_ROOT" && cargo build --release --quiet -p faas)
exec "$FAAS_ROOT/target/release/faas" bench "$@"
