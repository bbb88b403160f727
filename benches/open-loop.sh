#!/usr/bin/env bash
# Open-loop latency and CPU per request at fixed rates: one or more REPRAM builds and Redis,
# side by side in one run. Each server on CPU 0 (`--shards 1`, single-threaded Redis with
# persistence off), the loadgen on CPU 1: 100 B values, 100,000 preloaded keys, 90% reads,
# 50 connections, pipeline 1, requests evenly spaced at the rate (latency counted from each
# request's intended send time). At a rate a server can hold, the CPU it spends per request
# is what its event loop's wake costs, which closed-loop runs hide.
#
#   bash benches/open-loop.sh                        # this build and Redis at 20k, 40k, 60k/s
#   RATES="10000 30000" bash benches/open-loop.sh
#   BUILDS="/tmp/old/repram target/release/repram" bash benches/open-loop.sh   # two builds
set -euo pipefail
cd "$(dirname "$0")/.."

RATES=${RATES:-20000 40000 60000}
DURATION=${DURATION:-5s}
OUT=${OUT:-target/open-loop}
mkdir -p "$OUT"
rm -f "$OUT"/*.json
command -v redis-server >/dev/null 2>&1 || { echo "needs redis-server" >&2; exit 1; }

source benches/servers.sh
BUILDS=${BUILDS:-$REPRAM}
HZ=$(getconf CLK_TCK)

names=() ports=() pids=() kinds=()
i=0
for build in $BUILDS; do
    start_node "$build" "repram$i" --resp-listen off --http-listen off
    names+=("repram$i") kinds+=(repram) pids+=("$NODE_PID") ports+=("$NODE_PORT")
    echo "repram$i: $build" >&2
    i=$((i + 1))
done
start_redis
names+=(redis) kinds+=(redis) pids+=("$REDIS_PID") ports+=("$REDIS_PORT")

for n in "${!names[@]}"; do preload "${kinds[$n]}" "${ports[$n]}" 100000; done

printf '%-8s %-8s %9s %9s %12s %9s %7s\n' rate server p50_us p99_us ops/CPU-s "CPU share" unsent
for rate in $RATES; do
    for n in "${!names[@]}"; do
        name="${names[$n]}-$rate"
        before=$(awk '{print $14 + $15}' "/proc/${pids[$n]}/stat")
        taskset -c 1 "$LOADGEN" run --target "${kinds[$n]}" --addr "127.0.0.1:${ports[$n]}" \
            --keys 100000 --value-size 100 --reads 0.9 --connections 50 --pipeline 1 \
            --rate "$rate" --duration "$DURATION" --quiet --out "$OUT/$name" >/dev/null
        after=$(awk '{print $14 + $15}' "/proc/${pids[$n]}/stat")
        python3 - "$OUT/$name.json" "$((after - before))" "$HZ" "$rate" "${names[$n]}" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
ticks, hz, rate, server = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
cpu = ticks / hz
lat = d["latency"]["all"]
print(f"{rate:<8} {server:<8} {lat['p50_us']:>9} {lat['p99_us']:>9} "
      f"{d['ops'] / max(cpu, 1 / hz):>12.0f} {cpu / d['elapsed_seconds']:>9.2f} {d['unsent']:>7}")
PY
    done
done
