#!/usr/bin/env bash
# Compares REPRAM with Redis and memcached on this machine, with one client (repram-loadgen)
# and one workload: 100 B values, 100,000 keys (preloaded), 50 connections, 90% reads;
# closed loop at pipeline 1 and 16, and open loop at a fixed rate (latency from each
# request's intended send time). Every server gets one core (CPU 0: `--shards 1`,
# `memcached -t 1`, single-threaded Redis) and the loadgen the other (CPU 1).
#
# Prints one comparison table per mode and writes each mode's latency plot (SVG and PNG).
# Installs redis-server and memcached from Debian packages if missing. Stops what it started.
#
#   bash benches/compare-peers.sh                        # results in target/compare-peers/
#   DURATION=5s RATE=20000 OUT=/tmp/peers bash benches/compare-peers.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}         # measured time of each run
RATE=${RATE:-20000}               # open-loop requests per second, in all
OUT=${OUT:-target/compare-peers}  # run reports, histograms and plots
SERVER_CPU=${SERVER_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
REPRAM_PORT=${REPRAM_PORT:-17700} # and REPRAM_PORT+1, its shard port
REDIS_PORT=${REDIS_PORT:-16379}
MEMCACHED_PORT=${MEMCACHED_PORT:-11311}

if ! command -v redis-server >/dev/null 2>&1 || ! command -v memcached >/dev/null 2>&1; then
    echo "compare-peers: installing redis-server and memcached" >&2
    apt-get update -q && apt-get install -y -q redis-server memcached
fi
if ! command -v taskset >/dev/null 2>&1; then
    echo "compare-peers: taskset (util-linux) is needed to pin servers and loadgen" >&2
    exit 1
fi
if [ "$(nproc --all)" -lt 2 ]; then
    echo "compare-peers: needs 2 CPUs (one for the servers, one for the loadgen)" >&2
    exit 1
fi

cargo build --release --locked -p repram --bin repram -p repram-loadgen --bin repram-loadgen
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
REPRAM=$TARGET_DIR/release/repram
LOADGEN=$TARGET_DIR/release/repram-loadgen
mkdir -p "$OUT"

PIDS=()
stop_all() {
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
}
trap stop_all EXIT INT TERM

for port in "$REPRAM_PORT" "$((REPRAM_PORT + 1))" "$REDIS_PORT" "$MEMCACHED_PORT"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "compare-peers: 127.0.0.1:$port is already in use; set *_PORT to free ports" >&2
        exit 1
    fi
done

wait_for_port() {
    local port=$1 name=$2
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    echo "compare-peers: $name did not listen on 127.0.0.1:$port within 10 s" >&2
    exit 1
}

# Starts one server pinned to the server CPU; sets SERVER_PID.
start_server() {
    local name=$1
    shift
    taskset -c "$SERVER_CPU" "$@" >"$OUT/$name.log" 2>&1 &
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
}

MEMCACHED_USER=()
if [ "$(id -u)" = 0 ]; then
    MEMCACHED_USER=(-u root) # memcached refuses to run as root without a user
fi
start_server repram "$REPRAM" serve --shards 1 --listen "127.0.0.1:$REPRAM_PORT" --memory-budget 1GiB
REPRAM_PID=$SERVER_PID
start_server redis redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    --daemonize no
REDIS_PID=$SERVER_PID
start_server memcached memcached -l 127.0.0.1 -p "$MEMCACHED_PORT" -U 0 -t 1 -m 1024 \
    "${MEMCACHED_USER[@]}"
MEMCACHED_PID=$SERVER_PID
wait_for_port "$REPRAM_PORT" repram
wait_for_port "$REDIS_PORT" redis-server
wait_for_port "$MEMCACHED_PORT" memcached

WORKLOAD=(--threads 1 --connections 50 --keys 100000 --value-size 100 --reads 0.9
    --duration "$DURATION" --quiet)
MODES=("closed-p1:--pipeline 1" "closed-p16:--pipeline 16" "open-${RATE}:--pipeline 1 --rate $RATE")

# One target: preloaded once (first mode), then every mode.
run_target() {
    local name=$1 kind=$2 port=$3 pid=$4 preload=(--preload)
    for mode in "${MODES[@]}"; do
        local mode_name=${mode%%:*} mode_args
        read -r -a mode_args <<<"${mode#*:}"
        echo "== $name $mode_name" >&2
        taskset -c "$LOADGEN_CPU" "$LOADGEN" run --target "$kind" --addr "127.0.0.1:$port" \
            "${WORKLOAD[@]}" "${mode_args[@]}" "${preload[@]}" --server-pid "$pid" \
            --label "$name $mode_name" --out "$OUT/$name-$mode_name" >"$OUT/$name-$mode_name.txt"
        preload=()
    done
}

# Other work on the machine shows up as latency: say how busy it was.
echo "compare-peers: load average before the runs: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
started=$(date +%s)
run_target repram repram "$REPRAM_PORT" "$REPRAM_PID"
run_target redis redis "$REDIS_PORT" "$REDIS_PID"
run_target memcached memcached "$MEMCACHED_PORT" "$MEMCACHED_PID"
stop_all

for mode in "${MODES[@]}"; do
    mode_name=${mode%%:*}
    echo
    echo "### $mode_name: REPRAM vs Redis vs memcached (server on CPU $SERVER_CPU, loadgen on CPU $LOADGEN_CPU)"
    "$LOADGEN" compare "$OUT/repram-$mode_name.json" "$OUT/redis-$mode_name.json" \
        "$OUT/memcached-$mode_name.json" --plot "$OUT/peers-$mode_name"
done
echo
echo "compare-peers: runs took $(($(date +%s) - started)) s; reports, .hgrm, .hlog and plots in $OUT"
