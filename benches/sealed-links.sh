#!/usr/bin/env bash
# What sealed peer links cost (a private network, --cluster-key-file: Noise XXpsk0 handshake,
# every peer frame sealed with AES-256-GCM), measured against open links with the same
# workload in one run:
#   1. replication throughput: write-only load (100 B values, 50 connections) on node A of a
#      three-node network (every write is pushed to B and C; all share this machine's cores);
#   2. replication lag: writes on A at a steady rate, polled on B and C with local-only reads.
# Every node is `--shards 1` on 127.0.0.1 with free ports; everything started is stopped on
# exit.
#
#   bash benches/sealed-links.sh                 # results in target/sealed-links/
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
OUT=${OUT:-target/sealed-links}
mkdir -p "$OUT"

cargo build --release --locked -p repram --bin repram -p repram-loadgen --bin repram-loadgen
source benches/nodes.sh

rm -f "$OUT/cluster.key"
"$REPRAM" keygen --cluster "$OUT/cluster.key" >/dev/null

workload=(--connections 50 --pipeline 1 --reads 0 --keys 100000 --value-size 100
    --duration "$DURATION" --quiet)

for mode in open sealed; do
    keys=()
    [ "$mode" = sealed ] && keys=(--cluster-key-file "$OUT/cluster.key")
    echo "== $mode links: three nodes"
    start_network "${keys[@]}"
    "$LOADGEN" run --addr "$A_CLIENT" --server-pid "$A_PID" --label "$mode" \
        --out "$OUT/$mode" "${workload[@]}"
    "$LOADGEN" lag --writer "$A_CLIENT" --reader "$B_CLIENT" --reader "$C_CLIENT" \
        --writes 3000 --rate 300 --out "$OUT/lag-$mode" | tee "$OUT/lag-$mode.txt"
    "$REPRAM" stats --addr "$B_CLIENT" | grep -E "handshake|refused" || true
    kill -TERM "$A_PID" "$B_PID" "$C_PID"
    wait "$A_PID" "$B_PID" "$C_PID" 2>/dev/null || true
done
echo "== write throughput on A, open against sealed"
"$LOADGEN" compare "$OUT/open.json" "$OUT/sealed.json"
