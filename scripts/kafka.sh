#!/usr/bin/env bash
# Real Apache Kafka (KRaft) for lull's tests, from Apache's own broker jars on Maven Central.
#
#   scripts/kafka.sh fetch                       resolve the jars into the cache (once per machine)
#   scripts/kafka.sh start DIR [--nodes N]       format and start a new cluster in DIR (clearing the
#                                                data a stopped one left there), wait until ready
#   scripts/kafka.sh stop DIR                    stop every node of the cluster in DIR
#   scripts/kafka.sh kill-node DIR ID            kill -9 one node (its data stays)
#   scripts/kafka.sh stop-node DIR ID            stop one node gracefully (SIGTERM, waits)
#   scripts/kafka.sh start-node DIR ID           start a stopped node again and wait until ready
#   scripts/kafka.sh tool CLASS ARGS...          run one of Kafka's command-line tools, e.g.
#       scripts/kafka.sh tool org.apache.kafka.tools.consumer.group.ConsumerGroupCommand --help
#
# Every node is broker and controller at once, on loopback ports picked here. A single node
# (N=1) also serves TLS (SSL) and SASL_SSL with SCRAM-SHA-512, with a certificate authority and a
# SCRAM user made here, and runs Kafka's StandardAuthorizer: plain-text and TLS clients
# (User:ANONYMOUS) are super users, a resource without ACLs is open to everyone, and ACLs put on a
# resource bind the SCRAM user there (tests/secure.rs checks the README's ACLs that way). A
# cluster of three is plain text with replication 3 and min.insync.replicas=2. What clients need is written to DIR/cluster.env:
#   KAFKA_BOOTSTRAP, KAFKA_NODES, KAFKA_NODE_<id>_PORT, and for one node KAFKA_SSL_BOOTSTRAP,
#   KAFKA_SASL_SSL_BOOTSTRAP, KAFKA_CA (PEM), KAFKA_SCRAM_USER, KAFKA_SCRAM_PASSWORD.
#
# Jars are cached in ${LULL_KAFKA_CACHE:-~/.cache/lull}/kafka-<version>-<pom hash>/libs, outside git; needs
# Java 17 and Maven (scripts/test.sh installs them when missing) and openssl for the TLS material.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
KAFKA_VERSION=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/kafka/pom.xml")
CACHE=${LULL_KAFKA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lull}
# Keyed by the pom's content too, so a changed dependency list is fetched anew.
POM_HASH=$(cksum <"$here/kafka/pom.xml" | cut -d' ' -f1)
LIBS="$CACHE/kafka-$KAFKA_VERSION-$POM_HASH/libs"
HEAP=${LULL_KAFKA_HEAP:-512m}
# Ports are picked at random in [PORT_LO, PORT_LO + PORT_SPAN), below Linux's ephemeral range
# (32768 and up), so a port freed by a killed broker cannot be taken by some client's outgoing
# connection before the broker restarts. Two clusters started at once get different ranges.
PORT_LO=${LULL_KAFKA_PORT_LO:-24000}
PORT_SPAN=${LULL_KAFKA_PORT_SPAN:-4000}
READY_SECONDS=${LULL_KAFKA_READY_SECONDS:-120}

log() { printf '==> kafka: %s\n' "$*" >&2; }
die() { printf 'kafka.sh: %s\n' "$*" >&2; exit 1; }

# A loopback port nothing listens on, not handed out before in this run.
taken=" "
free_port() {
    local port
    for _ in $(seq 1 200); do
        port=$((PORT_LO + RANDOM % PORT_SPAN))
        case "$taken" in *" $port "*) continue ;; esac
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            taken="$taken$port "
            echo "$port"
            return
        fi
    done
    die "no free port found"
}

fetch() {
    if [ -f "$LIBS/.complete" ]; then
        return
    fi
    command -v mvn >/dev/null 2>&1 || die "mvn not found (scripts/test.sh installs Maven)"
    log "fetching Apache Kafka $KAFKA_VERSION broker jars from Maven Central into $LIBS"
    rm -rf "$LIBS"
    mkdir -p "$LIBS"
    mvn -q -B -Dstyle.color=never -f "$here/kafka/pom.xml" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$LIBS" >&2 \
        || die "mvn could not resolve the Kafka jars"
    touch "$LIBS/.complete"
}

JVM_OPTS=(-Xms128m "-Xmx$HEAP" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true)

# Certificate authority, broker certificate (for 127.0.0.1 and localhost) and its PKCS#12 store.
make_tls() {
    local dir=$1 pass=$2
    mkdir -p "$dir/tls"
    (
        cd "$dir/tls"
        openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=lull test CA" \
            -keyout ca.key -out ca.pem 2>/dev/null
        openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
            -keyout broker.key -out broker.csr 2>/dev/null
        printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >san.ext
        openssl x509 -req -in broker.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
            -extfile san.ext -out broker.pem 2>/dev/null
        openssl pkcs12 -export -in broker.pem -inkey broker.key -certfile ca.pem \
            -name broker -passout "pass:$pass" -out broker.p12
    ) || die "openssl could not make the TLS material"
}

write_log_config() {
    cat >"$1/log4j2.properties" <<'EOF'
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = ${sys:kafka.logs.dir}/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.state.name = state.change.logger
logger.state.level = WARN
EOF
}

node_pid() {
    local f="$1/node$2/pid"
    [ -f "$f" ] && cat "$f"
}

node_alive() {
    local pid
    pid=$(node_pid "$1" "$2") || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

start_node_process() {
    local dir=$1 id=$2
    local node="$dir/node$id"
    node_alive "$dir" "$id" && return
    # java itself in the background (not a shell function or subshell), so the pid recorded is
    # the JVM's: kill-node must kill the broker, not a shell that leaves it running.
    java "${JVM_OPTS[@]}" -Dlog4j2.configurationFile="$dir/log4j2.properties" \
        -Dkafka.logs.dir="$node" -cp "$LIBS/*" kafka.Kafka "$node/server.properties" \
        >"$node/stdout.log" 2>&1 &
    echo $! >"$node/pid"
}

wait_ready() {
    local dir=$1 id=$2
    local port
    port=$(sed -n "s/^KAFKA_NODE_${id}_PORT=//p" "$dir/cluster.env")
    local end=$((SECONDS + READY_SECONDS))
    # The broker port opens only once the node is registered and unfenced.
    until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        if ! node_alive "$dir" "$id"; then
            tail -n 30 "$dir/node$id/server.log" "$dir/node$id/stdout.log" >&2 || true
            die "node $id exited while starting (logs in $dir/node$id)"
        fi
        [ "$SECONDS" -lt "$end" ] || die "node $id not ready after ${READY_SECONDS}s (logs in $dir/node$id)"
        sleep 0.2
    done
}

start() {
    local dir=$1 nodes=$2
    [ "$nodes" -ge 1 ] || die "--nodes must be at least 1"
    command -v java >/dev/null 2>&1 || die "java not found (scripts/test.sh installs Java 17)"
    fetch
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    [ ! -f "$dir/cluster.env" ] || die "$dir already holds a cluster; stop it first"
    # A cluster stopped earlier leaves its nodes' data behind; `start` makes a new cluster (new
    # cluster id, new ports), so that data cannot be reused: say so and clear it.
    local stale
    for stale in "$dir"/node*; do
        [ -d "$stale" ] || continue
        echo "kafka.sh: clearing $stale, left by a cluster stopped earlier" >&2
        rm -rf "$stale"
    done
    local rf=1 min_isr=1
    if [ "$nodes" -ge 3 ]; then
        rf=3
        min_isr=2
    fi
    write_log_config "$dir"
    local voters="" bootstrap=""
    declare -A port controller
    local id
    for id in $(seq 1 "$nodes"); do
        port[$id]=$(free_port)
        controller[$id]=$(free_port)
        voters="${voters:+$voters,}$id@127.0.0.1:${controller[$id]}"
        bootstrap="${bootstrap:+$bootstrap,}127.0.0.1:${port[$id]}"
    done
    {
        echo "KAFKA_VERSION=$KAFKA_VERSION"
        echo "KAFKA_BOOTSTRAP=$bootstrap"
        echo "KAFKA_NODES=$nodes"
        for id in $(seq 1 "$nodes"); do echo "KAFKA_NODE_${id}_PORT=${port[$id]}"; done
    } >"$dir/cluster.env.tmp"

    local secure_listeners="" secure_advertised="" secure_map="" secure_props="" scram=()
    if [ "$nodes" -eq 1 ]; then
        local ssl_port sasl_port store_pass scram_pass
        ssl_port=$(free_port)
        sasl_port=$(free_port)
        store_pass=$(openssl rand -hex 12)
        scram_pass=$(openssl rand -hex 12)
        make_tls "$dir" "$store_pass"
        secure_listeners=",SSL://127.0.0.1:$ssl_port,SASL_SSL://127.0.0.1:$sasl_port"
        secure_advertised="$secure_listeners"
        secure_map=",SSL:SSL,SASL_SSL:SASL_SSL"
        secure_props="ssl.keystore.type=PKCS12
ssl.keystore.location=$dir/tls/broker.p12
ssl.keystore.password=$store_pass
ssl.key.password=$store_pass
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=true
super.users=User:ANONYMOUS"
        scram=(--add-scram "SCRAM-SHA-512=[name=lull,password=$scram_pass]")
        {
            echo "KAFKA_SSL_BOOTSTRAP=127.0.0.1:$ssl_port"
            echo "KAFKA_SASL_SSL_BOOTSTRAP=127.0.0.1:$sasl_port"
            echo "KAFKA_CA=$dir/tls/ca.pem"
            echo "KAFKA_SCRAM_USER=lull"
            echo "KAFKA_SCRAM_PASSWORD=$scram_pass"
        } >>"$dir/cluster.env.tmp"
    fi

    local cluster_id
    cluster_id=$(java "${JVM_OPTS[@]}" -cp "$LIBS/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)
    [ -n "$cluster_id" ] || die "StorageTool random-uuid failed"
    for id in $(seq 1 "$nodes"); do
        local node="$dir/node$id"
        mkdir -p "$node/data"
        cat >"$node/server.properties" <<EOF
process.roles=broker,controller
node.id=$id
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:${port[$id]},CONTROLLER://127.0.0.1:${controller[$id]}$secure_listeners
advertised.listeners=PLAINTEXT://127.0.0.1:${port[$id]}$secure_advertised
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT$secure_map
log.dirs=$node/data
auto.create.topics.enable=false
num.partitions=1
default.replication.factor=$rf
min.insync.replicas=$min_isr
offsets.topic.replication.factor=$rf
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$min_isr
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=$min_isr
group.initial.rebalance.delay.ms=0
# KIP-848 groups: a killed member's partitions move after 10 s instead of 45 s (test speed).
group.consumer.min.session.timeout.ms=6000
group.consumer.session.timeout.ms=10000
group.consumer.min.heartbeat.interval.ms=500
group.consumer.heartbeat.interval.ms=1000
broker.session.timeout.ms=4000
broker.heartbeat.interval.ms=1000
unclean.leader.election.enable=false
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
log.segment.bytes=67108864
log.retention.check.interval.ms=60000
$secure_props
EOF
        java "${JVM_OPTS[@]}" -cp "$LIBS/*" kafka.tools.StorageTool format -t "$cluster_id" \
            -c "$node/server.properties" "${scram[@]}" >"$node/format.log" 2>&1 \
            || { cat "$node/format.log" >&2; die "formatting node $id failed"; }
    done
    mv "$dir/cluster.env.tmp" "$dir/cluster.env"
    log "starting $nodes node(s) in $dir (Kafka $KAFKA_VERSION)"
    # All nodes first: a node waits for a controller quorum before it opens its broker port.
    for id in $(seq 1 "$nodes"); do start_node_process "$dir" "$id"; done
    for id in $(seq 1 "$nodes"); do wait_ready "$dir" "$id"; done
    log "ready at $bootstrap"
}

stop_node() {
    local dir=$1 id=$2 signal=$3
    local pid
    pid=$(node_pid "$dir" "$id") || return 0
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill "-$signal" "$pid" 2>/dev/null || true
        local end=$((SECONDS + 60))
        while kill -0 "$pid" 2>/dev/null; do
            if [ "$SECONDS" -ge "$end" ]; then
                kill -KILL "$pid" 2>/dev/null || true
            fi
            sleep 0.1
        done
    fi
    rm -f "$dir/node$id/pid"
}

stop() {
    local dir=$1
    local ids=() pidfile id
    for pidfile in "$dir"/node*/pid; do
        [ -f "$pidfile" ] || continue
        id=${pidfile%/pid}
        ids+=("${id##*/node}")
    done
    # Signal every node first, so they stop together instead of waiting on each other.
    for id in "${ids[@]}"; do
        node_alive "$dir" "$id" && kill -TERM "$(node_pid "$dir" "$id")" 2>/dev/null || true
    done
    for id in "${ids[@]}"; do stop_node "$dir" "$id" TERM; done
    rm -f "$dir/cluster.env"
}

# One of Kafka's command-line tools, by class, with its output on stdout and warnings on stderr.
tool() {
    fetch
    local conf="$LIBS/../tools-log4j2.properties"
    [ -f "$conf" ] || printf '%s\n' 'rootLogger.level = WARN' 'rootLogger.appenderRef.err.ref = ERR' \
        'appender.err.type = Console' 'appender.err.name = ERR' 'appender.err.target = SYSTEM_ERR' \
        'appender.err.layout.type = PatternLayout' 'appender.err.layout.pattern = %p %m%n' >"$conf"
    exec java -Xmx256m "-Dlog4j2.configurationFile=$conf" -cp "$LIBS/*" "$@"
}

cmd=${1:-}
shift || true
case "$cmd" in
    fetch) fetch ;;
    start)
        [ $# -ge 1 ] || die "usage: kafka.sh start DIR [--nodes N]"
        dir=$1
        shift
        nodes=1
        while [ $# -gt 0 ]; do
            case "$1" in
                --nodes) nodes=$2; shift 2 ;;
                *) die "unknown option $1" ;;
            esac
        done
        start "$dir" "$nodes"
        ;;
    stop) stop "${1:?usage: kafka.sh stop DIR}" ;;
    kill-node) stop_node "${1:?DIR}" "${2:?ID}" KILL ;;
    stop-node) stop_node "${1:?DIR}" "${2:?ID}" TERM ;;
    start-node)
        start_node_process "${1:?DIR}" "${2:?ID}"
        wait_ready "$1" "$2"
        ;;
    tool) tool "${1:?usage: kafka.sh tool CLASS ARGS...}" "${@:2}" ;;
    *) die "usage: kafka.sh fetch | start DIR [--nodes N] | stop DIR | kill-node|stop-node|start-node DIR ID | tool CLASS ARGS..." ;;
esac
