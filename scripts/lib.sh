# Shared helpers of the project's scripts: install what is missing, start dockerd, build.
# Sourced, not run.

FAAS_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FAAS_CACHE=${FAAS_CACHE:-/var/cache/faas}
AGENT_TARGET=x86_64-unknown-linux-gnu
AGENT_PATH="$FAAS_ROOT/target/$AGENT_TARGET/release/faas-agent"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# ensure_packages PKG... : installs the Debian packages that are not installed yet.
ensure_packages() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# ensure_dockerd: the Docker engine is installed and answering.
ensure_dockerd() {
  ensure_packages docker.io
  if docker info >/dev/null 2>&1; then return 0; fi
  log "starting dockerd"
  mkdir -p "$FAAS_CACHE"
  as_root sh -c "nohup dockerd >'$FAAS_CACHE/dockerd.log' 2>&1 &"
  for _ in $(seq 1 120); do
    docker info >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  tail -20 "$FAAS_CACHE/dockerd.log" >&2 || true
  die "dockerd did not answer within 60s"
}

# build_agent: the static in-sandbox agent.
build_agent() {
  log "building the static agent"
  (cd "$FAAS_ROOT" && RUSTFLAGS='-C target-feature=+crt-static' \
    cargo build --release --quiet -p faas-agent --target "$AGENT_TARGET")
  export FAAS_AGENT_PATH="$AGENT_PATH"
}
