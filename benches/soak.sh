#!/usr/bin/env bash
# The soak: a 3-node network (A the root, B and C joined to it) under a steady open-loop load
# on every node for MINUTES (default 20): mixed reads and writes, 64..1024 B values, TTLs of
# $TTL (default 30s) over $KEYS keys (default 100,000), so keys keep expiring and being
# written again. PRELOAD=1 first writes every key once through A (a load phase: a burst of
# writes for A to pass on; see docs/robustness.md for what a million of them does).
# Samples each node's resident memory every 5 s, then prints the latency per minute and the
# memory spread once warm ($WARM_UP, default 3m), and plots both (docs/soak-latency.* and
# docs/soak-memory.*, or PLOT=prefix).
# FEATURES=heap-stats builds the node counting its live heap bytes, which RUST_LOG=repram=debug
# logs every 10 s beside its collections (the footprint lines in $OUT/*.log).
# Usage: bash benches/soak.sh [MINUTES] [REQUESTS_PER_SECOND_PER_NODE]
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-20}
RATE=${2:-2000}
PLOT=${PLOT:-docs/soak}
KEYS=${KEYS:-100000}
TTL=${TTL:-30s}
WARM_UP=${WARM_UP:-3m}
PRELOAD=${PRELOAD:-0}
cargo build --release --quiet -p repram-loadgen
cargo build --release --quiet -p repram ${FEATURES:+--features "$FEATURES"}
OUT=${OUT:-$(mktemp -d)}
echo "soak: logs and runs in $OUT"
source benches/nodes.sh
start_network

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

if [ "$PRELOAD" = 1 ]; then
    "$LOADGEN" run --addr "$A_CLIENT" --keys "$KEYS" --value-size 64..1024 --ttl "$TTL" \
        --preload --preload-timeout 300s --duration 1s --connections 16 --pipeline 8 --no-pin \
        >"$OUT/preload.log" 2>&1
    grep preloaded "$OUT/preload.log" || true
fi

loadgens=()
for node in A B C; do
    client_var=${node}_CLIENT
    "$LOADGEN" run --addr "${!client_var}" --rate "$RATE" --reads 0.5 --keys "$KEYS" \
        --value-size 64..1024 --ttl "$TTL" --duration "${MINUTES}m" --connections 8 --no-pin \
        --label "soak $node" --out "$OUT/soak-$node" >"$OUT/loadgen-$node.log" 2>&1 &
    loadgens+=($!)
done
wait "${loadgens[@]}"

for node in A B C; do
    echo "node $node: $(grep -o '"errors_total": *[0-9]*' "$OUT/soak-$node.json"), $(grep -o '"ops": *[0-9]*' "$OUT/soak-$node.json" | head -1)"
done
"$LOADGEN" timeline "$OUT"/soak-{A,B,C}.hlog --memory "$OUT/memory.csv" --warm-up "$WARM_UP" \
    --plot "$PLOT"
