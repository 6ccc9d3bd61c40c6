#!/usr/bin/env bash
# A real Redis Cluster on loopback for the tests: redis-server in cluster mode, 3 primaries and
# 3 replicas, formed with `redis-cli --cluster create`.
#
#   scripts/redis-cluster.sh start DIR       start six nodes, form the cluster, wait until it is ok;
#                                            writes DIR/cluster.env (REDIS_CLUSTER_URL, the nodes'
#                                            ports and PIDs)
#   scripts/redis-cluster.sh restart DIR N   start node N (1-6) again after it was killed: it
#                                            rejoins the cluster (as a replica, if it was promoted
#                                            away from)
#   scripts/redis-cluster.sh stop DIR        stop every node this script started, by the PIDs in DIR
#
# Ports: LULL_REDIS_CLUSTER_PORT_LO (default 22000) + a random offset below 1000, six free ones in
# a row; each node's cluster bus is its port + 1000 (`cluster-port`, Redis 7; older servers use
# port + 10000, which can meet the kernel's ephemeral ports). A node that does not start (a port
# taken meanwhile) makes the script stop what it started and try other ports, five times at most.
# Nodes are stopped only by their recorded PIDs.
set -euo pipefail

node_timeout_ms=2000

die() { echo "redis-cluster.sh: $*" >&2; exit 1; }

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# The cluster bus port of a node on `port` ("" = Redis's own default, port + 10000).
bus_offset() {
    local major
    major=$(redis-server --version | sed -n 's/.* v=\([0-9]*\)\..*/\1/p')
    if [ "${major:-0}" -ge 7 ]; then echo 1000; else echo 10000; fi
}
bus=$(bus_offset)

start_node() { # dir n port; fails (status 1) if the node does not answer within 30 s
    local dir=$1 n=$2 port=$3 node="$1/node$2" busarg=()
    mkdir -p "$node"
    [ "$bus" = 10000 ] || busarg=(--cluster-port $((port + bus)))
    redis-server --bind 127.0.0.1 --port "$port" --cluster-enabled yes "${busarg[@]}" \
        --cluster-config-file "$node/nodes.conf" --cluster-node-timeout "$node_timeout_ms" \
        --save "" --appendonly no --dir "$node" --logfile "$node/redis.log" \
        --daemonize no >/dev/null 2>&1 &
    echo $! >"$node/pid"
    for _ in $(seq 1 300); do
        redis-cli -p "$port" ping >/dev/null 2>&1 && return 0
        kill -0 "$(cat "$node/pid")" 2>/dev/null || break
        sleep 0.1
    done
    echo "redis-cluster.sh: node $n on port $port did not start:" >&2
    tail -n 3 "$node/redis.log" >&2 2>/dev/null || true
    return 1
}

stop_nodes() { # dir
    local pidfile pid
    for pidfile in "$1"/node*/pid; do
        [ -f "$pidfile" ] || continue
        kill "$(cat "$pidfile")" 2>/dev/null || true
    done
    for pidfile in "$1"/node*/pid; do
        [ -f "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    done
}

free_base() { # lo: six free ports in a row (and their bus ports), or nothing
    local candidate ok i
    for _ in $(seq 1 50); do
        candidate=$(($1 + RANDOM % 990))
        ok=1
        for i in 0 1 2 3 4 5; do
            port_free $((candidate + i)) && port_free $((candidate + i + bus)) || { ok=0; break; }
        done
        if [ "$ok" = 1 ]; then echo "$candidate"; return 0; fi
    done
}

cluster_ok() { # port
    redis-cli -p "$1" cluster info 2>/dev/null | grep -q '^cluster_state:ok'
}

cmd=${1:-}
dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || die "usage: $0 start|restart|stop DIR [N]"

case "$cmd" in
start)
    lo=${LULL_REDIS_CLUSTER_PORT_LO:-22000}
    started=0
    for attempt in 1 2 3 4 5; do
        base=$(free_base "$lo")
        [ -n "$base" ] || die "no six free ports in a row from $lo"
        rm -rf "$dir"
        mkdir -p "$dir"
        addrs=()
        started=1
        for n in 1 2 3 4 5 6; do
            port=$((base + n - 1))
            start_node "$dir" "$n" "$port" || { started=0; break; }
            echo "$port" >"$dir/node$n/port"
            addrs+=("127.0.0.1:$port")
        done
        [ "$started" = 1 ] && break
        echo "redis-cluster.sh: attempt $attempt failed; trying other ports" >&2
        stop_nodes "$dir"
    done
    [ "$started" = 1 ] || die "no cluster node would start in five attempts"
    redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes >"$dir/create.log" 2>&1 \
        || die "redis-cli --cluster create failed (see $dir/create.log)"
    for _ in $(seq 1 300); do
        all=1
        for n in 1 2 3 4 5 6; do cluster_ok $((base + n - 1)) || { all=0; break; }; done
        [ "$all" = 1 ] && break
        sleep 0.1
    done
    [ "$all" = 1 ] || die "the cluster did not become ok"
    # Every primary has its replica (a failover needs one), as every node sees it.
    for _ in $(seq 1 300); do
        [ "$(redis-cli -p "$base" cluster nodes | grep -c ' slave ')" = 3 ] && break
        sleep 0.1
    done
    [ "$(redis-cli -p "$base" cluster nodes | grep -c ' slave ')" = 3 ] || die "replicas did not attach"
    {
        echo "REDIS_CLUSTER_URL=redis://127.0.0.1:$base,redis://127.0.0.1:$((base + 1)),redis://127.0.0.1:$((base + 2))"
        for n in 1 2 3 4 5 6; do
            echo "REDIS_NODE_${n}_PORT=$((base + n - 1))"
            echo "REDIS_NODE_${n}_PID=$(cat "$dir/node$n/pid")"
        done
    } >"$dir/cluster.env"
    echo "==> redis cluster: ready at 127.0.0.1:$base-$((base + 5)) (3 primaries, 3 replicas)"
    ;;
restart)
    n=${3:-}
    [ -n "$n" ] && [ -f "$dir/node$n/port" ] || die "no node $n in $dir"
    start_node "$dir" "$n" "$(cat "$dir/node$n/port")" || die "node $n did not start again"
    ;;
stop)
    stop_nodes "$dir"
    ;;
*)
    die "unknown command $cmd"
    ;;
esac
