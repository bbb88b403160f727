#!/usr/bin/env bash
# System calls per request by kind, REPRAM's and Redis's, counted with perf's syscall
# tracepoints on the running server (every thread; no strace slowing it down): one shard on
# CPU 0, the loadgen on CPU 1, 100 B values over 10,000 preloaded keys, 90% reads, 50
# connections, pipeline 1, 5 s, closed loop and open loop at the given rates. Shows where a
# request's calls go: REPRAM's recv, send and io_uring_enter (glommio's reactor, which waits
# on io_uring) against Redis's read, write and epoll_wait.
#
#   bash benches/syscalls-by-kind.sh                  # closed loop, then 10,000 and 30,000/s
#   RATES="0 20000" bash benches/syscalls-by-kind.sh  # 0 is the closed loop
set -euo pipefail
cd "$(dirname "$0")/.."

RATES=${RATES:-0 10000 30000}
DURATION=${DURATION:-5s}
OUT=${OUT:-target/syscalls-by-kind}
mkdir -p "$OUT"
for tool in perf redis-server; do
    command -v "$tool" >/dev/null 2>&1 || { echo "needs $tool (apt-get install linux-perf redis-server)" >&2; exit 1; }
done
perf stat -e raw_syscalls:sys_enter -o /dev/null true 2>/dev/null ||
    { echo "perf cannot count system-call tracepoints here" >&2; exit 1; }

source benches/servers.sh
KINDS=(recvfrom sendto read write io_uring_enter epoll_wait membarrier futex)
EVENTS=$(printf 'syscalls:sys_enter_%s,' "${KINDS[@]}")raw_syscalls:sys_enter

# count SERVER KIND PORT PID RATE: one load while perf counts the server's calls.
count() {
    local server=$1 kind=$2 port=$3 pid=$4 rate=$5 rate_args=() label
    [ "$rate" != 0 ] && rate_args=(--rate "$rate")
    label="$server-$([ "$rate" = 0 ] && echo closed || echo "$rate")"
    perf stat -e "$EVENTS" -x, -o "$OUT/$label.csv" -p "$pid" &
    local counter=$!
    sleep 0.5
    local before after
    before=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    taskset -c 1 "$LOADGEN" run --target "$kind" --addr "127.0.0.1:$port" --keys 10000 \
        --value-size 100 --reads 0.9 --connections 50 --pipeline 1 "${rate_args[@]}" \
        --duration "$DURATION" --quiet --out "$OUT/$label" >/dev/null
    after=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    kill -INT "$counter"
    wait "$counter" 2>/dev/null || true
    python3 - "$OUT/$label" "$((after - before))" "$(getconf CLK_TCK)" "$label" <<'PY'
import json, sys
base, ticks, hz, label = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
ops = json.load(open(base + ".json"))["ops"]
counts = {}
for line in open(base + ".csv"):
    fields = line.strip().split(",")
    if len(fields) > 2 and fields[0].isdigit():
        counts[fields[2].split("sys_enter_")[-1].replace("raw_syscalls:sys_enter", "all")] = int(fields[0])
kinds = " ".join(f"{k} {v / ops:.2f}" for k, v in counts.items() if k != "all" and v)
print(f"{label:<18} {ops / max(ticks, 1) * hz:>8.0f} ops/CPU-s  {counts.get('all', 0) / ops:.2f} calls a request: {kinds}")
PY
}

start_node "$REPRAM" repram --resp-listen off --http-listen off
preload repram "$NODE_PORT" 10000
for rate in $RATES; do count repram repram "$NODE_PORT" "$NODE_PID" "$rate"; done
stop_all

start_redis
preload redis "$REDIS_PORT" 10000
for rate in $RATES; do count redis redis "$REDIS_PORT" "$REDIS_PID" "$rate"; done
stop_all
