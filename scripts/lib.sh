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

# ensure_postgres: a PostgreSQL server of the installed Debian package, for tests, on
# 127.0.0.1:$FAAS_PG_PORT (trust auth, data in the cache dir). Sets FAAS_TEST_POSTGRES_URL and,
# when this call started it, PG_STARTED=1 (stop it with stop_postgres).
FAAS_PG_PORT=${FAAS_PG_PORT:-55432}
ensure_postgres() {
  ensure_packages postgresql
  local bin data
  bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  data="$FAAS_CACHE/postgres"
  export FAAS_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$FAAS_PG_PORT/postgres"
  PG_BIN=$bin PG_DATA=$data
  if "$bin/pg_isready" -q -h 127.0.0.1 -p "$FAAS_PG_PORT"; then return 0; fi
  if [ ! -f "$data/PG_VERSION" ]; then
    log "initialising a PostgreSQL cluster in $data"
    as_root mkdir -p "$data" && as_root chown postgres: "$data"
    as_root runuser -u postgres -- "$bin/initdb" -D "$data" -U postgres --auth=trust >/dev/null
  fi
  log "starting PostgreSQL on 127.0.0.1:$FAAS_PG_PORT"
  as_root runuser -u postgres -- "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w -t 60 \
    -o "-p $FAAS_PG_PORT -k $data -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off" \
    start >/dev/null || { tail -20 "$data/server.log" >&2; die "PostgreSQL did not start"; }
  PG_STARTED=1
}

stop_postgres() {
  [ "${PG_STARTED:-0}" = 1 ] || return 0
  as_root runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w stop >/dev/null
}
