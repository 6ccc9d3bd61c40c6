#!/usr/bin/env bash
# End-to-end check of lull under real PM2: two instances in one consumer group against a
# `lull dev-broker` and a private Redis. It types bursts (`lull simulate`), checks every batch with
# `lull verify` and every instance's /health/ready, restarts one instance in the middle of more
# bursts, checks again, and stops everything. Needs node/npm (pm2 is installed here, locally).
#   ecosystem/pm2/check.sh [path/to/lull]     (default: cargo build --release of this checkout)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"

log() { printf '==> %s\n' "$*"; }

# The binary under test: the first argument (or LULL_BIN), else this checkout's release build.
bin="${1:-${LULL_BIN:-}}"
if [ -z "$bin" ]; then
    cargo build --release --quiet
    bin="$root/target/release/lull"
fi
[ -x "$bin" ] || { echo "not an executable: $bin" >&2; exit 2; }
[ -x "$here/node_modules/.bin/pm2" ] || npm install --no-audit --no-fund --prefix "$here" pm2@7 >/dev/null
pm2="$here/node_modules/.bin/pm2"

work=$(mktemp -d)
export PM2_HOME="$work/pm2"
broker_pid=""
redis_pid=""
cleanup() {
    "$pm2" kill >/dev/null 2>&1 || true
    [ -z "$broker_pid" ] || kill "$broker_pid" 2>/dev/null || true
    [ -z "$redis_pid" ] || kill "$redis_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() {
    local p
    for _ in $(seq 100); do
        p=$((20000 + RANDOM % 20000))
        (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
    done
    return 1
}

log "starting lull dev-broker and a private redis-server"
"$bin" dev-broker --partitions 6 --bootstrap-file "$work/bootstrap" >/dev/null 2>&1 &
broker_pid=$!
for _ in $(seq 100); do [ -s "$work/bootstrap" ] && break; sleep 0.1; done
redis_port=$(free_port)
redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no --dir "$work" >/dev/null &
redis_pid=$!
sleep 0.5

base=$(free_port)
export KAFKA_BROKERS; KAFKA_BROKERS=$(cat "$work/bootstrap")
export REDIS_URL="redis://127.0.0.1:$redis_port"
export LULL_REDIS_PREFIX="pm2check"
export LULL_QUIET_MS=500
export LULL_DRAIN_TIMEOUT_MS=4000
export LULL_KAFKA_SESSION_TIMEOUT_MS=6000
export LULL_KAFKA_HEARTBEAT_INTERVAL_MS=500
export LULL_BIN="$bin" LULL_PM2_INSTANCES=2 LULL_PM2_BASE_PORT="$base"
log "kafka at $KAFKA_BROKERS, redis at $REDIS_URL, lull HTTP on ports $base and $((base + 1))"

"$pm2" start "$here/ecosystem.config.js" >/dev/null

wait_ready() {
    local port
    for port in "$base" "$((base + 1))"; do
        for _ in $(seq 180); do
            curl -fsS "http://127.0.0.1:$port/health/ready" >/dev/null 2>&1 && break
            sleep 0.5
        done
        echo "  127.0.0.1:$port/health/ready -> $(curl -sS "http://127.0.0.1:$port/health/ready")"
        curl -fsS "http://127.0.0.1:$port/health/ready" >/dev/null
    done
}

wait_verified() {
    for _ in $(seq 60); do
        if "$bin" verify >"$work/verify.txt" 2>&1 && ! grep -Eq "still open +[1-9]" "$work/verify.txt"; then
            sed 's/^/  /' "$work/verify.txt"
            return 0
        fi
        sleep 1
    done
    sed 's/^/  /' "$work/verify.txt"
    echo "verify did not come out clean" >&2
    return 1
}

log "both instances ready?"
wait_ready
log "typing bursts (200 users, 2000 fragments)"
"$bin" simulate --users 200 --fragments 2000 --quiet-ms 500
log "lull verify"
wait_verified

log "restarting lull-1 in the middle of more bursts"
"$bin" simulate --users 200 --fragments 3000 --quiet-ms 500 --seed 11 &
sim=$!
sleep 3
"$pm2" restart lull-1 >/dev/null
wait "$sim"
log "both instances ready again?"
wait_ready
log "lull verify after the restart"
wait_verified
"$pm2" list
log "stopping"
"$pm2" delete all >/dev/null
log "PM2 check passed"
