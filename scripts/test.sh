#!/usr/bin/env bash
# Runs lull's whole test suite on a fresh machine that has only the Rust toolchain.
#
# It installs what the tests need (redis-server and openssl from apt when missing), starts a private Redis on
# a free loopback port (no persistence, its own temporary directory), checks formatting and
# lints, runs every test (cargo-nextest when installed, else cargo test), and stops Redis again,
# whatever happens. Kafka needs nothing: the tests use librdkafka's in-process mock cluster.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*" >&2; }

ensure_packages() {
    local missing=()
    command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
    command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)
    [ "${#missing[@]}" -eq 0 ] && return
    log "installing ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

free_port() {
    local port
    for _ in $(seq 1 100); do
        port=$((20000 + RANDOM % 20000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
    echo "no free port found" >&2
    return 1
}

redis_pid=""
redis_dir=""
cleanup() {
    if [ -n "$redis_pid" ]; then
        kill "$redis_pid" 2>/dev/null || true
        wait "$redis_pid" 2>/dev/null || true
    fi
    [ -z "$redis_dir" ] || rm -rf "$redis_dir"
}
trap cleanup EXIT

ensure_packages
redis_dir=$(mktemp -d)
redis_port=$(free_port)
log "starting a private redis-server on 127.0.0.1:$redis_port"
redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no \
    --dir "$redis_dir" --logfile "$redis_dir/redis.log" &
redis_pid=$!
for _ in $(seq 1 100); do
    redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
    sleep 0.1
done
redis-cli -p "$redis_port" ping >/dev/null
export LULL_TEST_REDIS_URL="redis://127.0.0.1:$redis_port"
export LULL_TEST_REDIS_SERVER
LULL_TEST_REDIS_SERVER=$(command -v redis-server)

log "ecosystem/check.sh (deployment assets)"
bash ecosystem/check.sh

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --quiet -- -D warnings

if cargo nextest --version >/dev/null 2>&1; then
    log "cargo nextest run"
    cargo nextest run --no-fail-fast
else
    log "cargo test"
    cargo test --no-fail-fast
fi
