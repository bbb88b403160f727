#!/usr/bin/env bash
# The soak: a 3-node network (A the root, B and C joined to it) under a steady open-loop load
# on every node for MINUTES (default 20): mixed reads and writes, 64..1024 B values, TTLs of
# 30 s over 100,000 keys, so keys keep expiring and being written again. Samples each node's
# resident memory every 5 s, then prints the latency per minute and the memory spread once
# warm, and plots both (docs/soak-latency.* and docs/soak-memory.*, or PLOT=prefix).
# Usage: bash benches/soak.sh [MINUTES] [REQUESTS_PER_SECOND_PER_NODE]
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-20}
RATE=${2:-2000}
PLOT=${PLOT:-docs/soak}
cargo build --release --quiet -p repram -p repram-loadgen
OUT=${OUT:-$(mktemp -d)}
echo "soak: logs and runs in $OUT"
source benches/nodes.sh
start A
start B --root "$A_PEER"
start C --root "$A_PEER"
sleep 3

echo "seconds,node,bytes" >"$OUT/memory.csv"
(
    started=$(date +%s.%N)
    while true; do
        now=$(date +%s.%N)
        for node in A B C; do
            pid_var=${node}_PID
            rss=$(awk '/^VmRSS:/ { print $2 * 1024 }' "/proc/${!pid_var}/status" 2>/dev/null || echo 0)
            echo "$(awk -v a="$now" -v b="$started" 'BEGIN { printf "%.1f", a - b }'),$node,$rss" >>"$OUT/memory.csv"
        done
        sleep 5
    done
) &
pids+=($!)

loadgens=()
for node in A B C; do
    client_var=${node}_CLIENT
    "$LOADGEN" run --addr "${!client_var}" --rate "$RATE" --reads 0.5 --keys 100000 \
        --value-size 64..1024 --ttl 30s --duration "${MINUTES}m" --connections 8 --no-pin \
        --label "soak $node" --out "$OUT/soak-$node" >"$OUT/loadgen-$node.log" 2>&1 &
    loadgens+=($!)
done
wait "${loadgens[@]}"

for node in A B C; do
    echo "node $node: $(grep -o '"errors_total": *[0-9]*' "$OUT/soak-$node.json"), $(grep -o '"ops": *[0-9]*' "$OUT/soak-$node.json" | head -1)"
done
"$LOADGEN" timeline "$OUT"/soak-{A,B,C}.hlog --memory "$OUT/memory.csv" --warm-up 3m \
    --plot "$PLOT"
