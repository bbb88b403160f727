#!/usr/bin/env bash
# Closed-loop ops per server CPU-second of one or more REPRAM builds, side by side: each
# build's node on CPU 0 (`--shards 1`), this tree's loadgen on CPU 1, 100 B values over
# 100,000 preloaded keys, 90% reads (READS), 50 connections, ROUNDS rounds of DURATION in
# turn, so the machine's drift falls on every build alike.
#
#   BUILDS="/tmp/old/repram target/release/repram" bash benches/closed-loop.sh
#   PIPELINE=16 ROUNDS=5 BUILDS="..." bash benches/closed-loop.sh
#   READS=0.5 PIPELINE=16 BUILDS="..." bash benches/closed-loop.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PIPELINE=${PIPELINE:-1}
READS=${READS:-0.9}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-4s}
OUT=${OUT:-target/closed-loop}
mkdir -p "$OUT"

source benches/servers.sh
BUILDS=${BUILDS:-$REPRAM}

ports=() pids=() names=()
i=0
for build in $BUILDS; do
    start_node "$build" "repram$i" --resp-listen off --http-listen off
    preload repram "$NODE_PORT" 100000
    names+=("repram$i") ports+=("$NODE_PORT") pids+=("$NODE_PID")
    echo "repram$i: $build" >&2
    i=$((i + 1))
done

for round in $(seq 1 "$ROUNDS"); do
    for n in "${!names[@]}"; do
        taskset -c 1 "$LOADGEN" run --target repram --addr "127.0.0.1:${ports[$n]}" \
            --keys 100000 --value-size 100 --reads "$READS" --connections 50 \
            --pipeline "$PIPELINE" --duration "$DURATION" --quiet --server-pid "${pids[$n]}" \
            --out "$OUT/${names[$n]}-$round" >/dev/null
        python3 -c "import json; d = json.load(open('$OUT/${names[$n]}-$round.json')); \
print(f\"round $round ${names[$n]} P$PIPELINE: {round(d['ops_per_server_cpu_second'] or 0):>9} ops per server CPU-second\")"
    done
done
