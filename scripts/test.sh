#!/usr/bin/env bash
# Runs lull's whole test suite on a fresh machine that has only the Rust toolchain.
#
# It installs what the tests need when missing (redis-server, openssl, Java 17, Maven, Node.js and
# Python's venv from apt), fetches Apache Kafka's broker jars from Maven Central once (cached outside git, see
# scripts/kafka.sh), and starts, on loopback ports it picks:
#   * a private Redis (no persistence, its own temporary directory);
#   * a single real Kafka node (plain text, TLS and SASL_SSL/SCRAM listeners): the integration
#     suite;
#   * a real three-node Kafka cluster (replication 3, min.insync.replicas=2): the chaos suite.
# Then it checks the deployment assets, formatting and lints, runs every test (cargo-nextest when
# installed, else cargo test), prints the chaos figures, and stops everything, whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*" >&2; }

ensure_packages() {
    local missing=()
    command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
    command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)
    if ! java -version 2>&1 | grep -Eq 'version "(1[7-9]|2[0-9])'; then
        missing+=(openjdk-17-jre-headless)
    fi
    command -v mvn >/dev/null 2>&1 || missing+=(maven)
    # Node.js and npm: the KafkaJS consumer of tests/kafkajs.rs (kafkajs itself comes from npm).
    command -v node >/dev/null 2>&1 || missing+=(nodejs)
    command -v npm >/dev/null 2>&1 || missing+=(npm)
    # Python with venv: the confluent-kafka consumer of tests/downstream.rs (from PyPI).
    command -v python3 >/dev/null 2>&1 || missing+=(python3)
    python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
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
        port=$((20000 + RANDOM % 4000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
    echo "no free port found" >&2
    return 1
}

work=$(mktemp -d)
redis_pid=""
kafka_jobs=()
cleanup() {
    local status=$?
    for job in "${kafka_jobs[@]}"; do kill "$job" 2>/dev/null || true; done
    for dir in "$work/kafka1" "$work/kafka3"; do
        [ -d "$dir" ] && scripts/kafka.sh stop "$dir" 2>/dev/null || true
    done
    if [ -n "$redis_pid" ]; then
        kill "$redis_pid" 2>/dev/null || true
        wait "$redis_pid" 2>/dev/null || true
    fi
    [ -d "$work/redis-cluster" ] && scripts/redis-cluster.sh stop "$work/redis-cluster" 2>/dev/null || true
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT

ensure_packages

redis_port=$(free_port) # 20000-23999: below the Kafka clusters' ranges and the ephemeral ports
log "starting a private redis-server on 127.0.0.1:$redis_port"
mkdir -p "$work/redis"
redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no \
    --dir "$work/redis" --logfile "$work/redis/redis.log" &
redis_pid=$!
for _ in $(seq 1 100); do
    redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
    sleep 0.1
done
redis-cli -p "$redis_port" ping >/dev/null
export LULL_TEST_REDIS_URL="redis://127.0.0.1:$redis_port"
export LULL_TEST_REDIS_SERVER
LULL_TEST_REDIS_SERVER=$(command -v redis-server)

# A real Redis Cluster (3 primaries, 3 replicas), stopped by the PIDs it records.
log "starting a private redis cluster"
scripts/redis-cluster.sh start "$work/redis-cluster"
export LULL_TEST_REDIS_CLUSTER="$work/redis-cluster"

# Real Kafka starts in the background while the code builds; the tests wait for it below.
scripts/kafka.sh fetch
LULL_KAFKA_PORT_LO=24000 scripts/kafka.sh start "$work/kafka1" --nodes 1 >"$work/kafka1.log" 2>&1 &
kafka_jobs+=($!)
LULL_KAFKA_PORT_LO=28000 scripts/kafka.sh start "$work/kafka3" --nodes 3 >"$work/kafka3.log" 2>&1 &
kafka_jobs+=($!)
export LULL_TEST_KAFKA="$work/kafka1" LULL_TEST_KAFKA3="$work/kafka3"
export LULL_CHAOS_REPORT="$work/chaos-report.txt"

log "ecosystem/check.sh (deployment assets)"
bash ecosystem/check.sh

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --quiet -- -D warnings

log "building the tests"
if cargo nextest --version >/dev/null 2>&1; then
    runner=nextest
    cargo nextest run --no-run
else
    runner=test
    cargo test --no-run
fi

# The last release without transactions, for tests/upgrade.rs (a rolling upgrade from it): built
# once per machine from git history and cached outside git beside the Kafka jars. Its binary is
# renamed, so it shares this tree's target directory (and its built dependencies: the same
# Cargo.lock) without replacing this tree's own `lull`.
BASELINE_REV=a0edb1ae7e7b8db7900402248818e93d48a66d1d
baseline="${LULL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lull}/baseline-$BASELINE_REV/lull"
if [ ! -x "$baseline" ]; then
    if git cat-file -e "$BASELINE_REV^{commit}" 2>/dev/null; then
        log "building the release before exactly-once (${BASELINE_REV:0:7}) for the upgrade test"
        mkdir -p "$work/baseline"
        git archive "$BASELINE_REV" | tar -x -C "$work/baseline"
        sed -i '/^\[\[bin\]\]$/{n;s/^name = "lull"$/name = "lull-baseline"/}' "$work/baseline/Cargo.toml"
        cargo build --quiet --bin lull-baseline --manifest-path "$work/baseline/Cargo.toml" \
            --target-dir "$PWD/target"
        mkdir -p "$(dirname "$baseline")"
        cp target/debug/lull-baseline "$baseline"
    else
        log "this clone lacks git history for $BASELINE_REV: tests/upgrade.rs cannot run"
    fi
fi
[ -x "$baseline" ] && export LULL_TEST_BASELINE="$baseline"

for i in "${!kafka_jobs[@]}"; do
    if ! wait "${kafka_jobs[$i]}"; then
        cat "$work"/kafka*.log >&2
        log "real Kafka did not start"
        exit 1
    fi
done
kafka_jobs=()
log "real Kafka: single node $(sed -n 's/^KAFKA_BOOTSTRAP=//p' "$work/kafka1/cluster.env"), three nodes $(sed -n 's/^KAFKA_BOOTSTRAP=//p' "$work/kafka3/cluster.env")"

status=0
if [ "$runner" = nextest ]; then
    log "cargo nextest run"
    cargo nextest run --no-fail-fast || status=$?
else
    log "cargo test"
    cargo test --no-fail-fast 2>&1 | tee "$work/test.log" || status=$?
    # cargo test prints one result line per test binary: add them up.
    awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) g += $i } }
         END { printf "==> Summary: %d tests run: %d passed, %d failed, %d ignored\n", p + f, p, f, g }' "$work/test.log"
fi
if [ -s "$LULL_CHAOS_REPORT" ]; then
    log "chaos suite figures"
    cat "$LULL_CHAOS_REPORT"
fi
exit "$status"
