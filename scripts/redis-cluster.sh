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
# a row; each node's cluster bus is its port + 10000. Nodes are stopped only by their recorded PIDs.
set -euo pipefail

node_timeout_ms=2000

die() { echo "redis-cluster.sh: $*" >&2; exit 1; }

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start_node() { # dir n port
    local dir=$1 n=$2 port=$3 node="$1/node$2"
    mkdir -p "$node"
    redis-server --bind 127.0.0.1 --port "$port" --cluster-enabled yes \
        --cluster-config-file "$node/nodes.conf" --cluster-node-timeout "$node_timeout_ms" \
        --save "" --appendonly no --dir "$node" --logfile "$node/redis.log" \
        --daemonize no >/dev/null 2>&1 &
    echo $! >"$node/pid"
    for _ in $(seq 1 100); do
        redis-cli -p "$port" ping >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "node $n on port $port did not start (see $node/redis.log)"
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
    base=""
    for _ in $(seq 1 50); do
        candidate=$((lo + RANDOM % 990))
        ok=1
        for i in 0 1 2 3 4 5; do
            port_free $((candidate + i)) && port_free $((candidate + i + 10000)) || { ok=0; break; }
        done
        if [ "$ok" = 1 ]; then base=$candidate; break; fi
    done
    [ -n "$base" ] || die "no six free ports in a row from $lo"
    rm -rf "$dir"
    mkdir -p "$dir"
    addrs=()
    for n in 1 2 3 4 5 6; do
        port=$((base + n - 1))
        start_node "$dir" "$n" "$port"
        echo "$port" >"$dir/node$n/port"
        addrs+=("127.0.0.1:$port")
    done
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
    start_node "$dir" "$n" "$(cat "$dir/node$n/port")"
    ;;
stop)
    for pidfile in "$dir"/node*/pid; do
        [ -f "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        kill "$pid" 2>/dev/null || true
    done
    for pidfile in "$dir"/node*/pid; do
        [ -f "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    done
    ;;
*)
    die "unknown command $cmd"
    ;;
esac
