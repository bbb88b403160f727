#!/usr/bin/env bash
# Measures what the network costs and how fast it is, on this machine, with repram-loadgen:
#   1. the write path: the same write-only workload (100 B values, 50 connections) against a
#      node alone, then against the same kind of node in a network of three (every write is
#      pushed to both peers; on this machine the peers share its two cores);
#   2. replication lag: writes on node A at a steady rate, polled on B and C with local-only
#      reads (p50/p99 per reader);
#   3. sync traffic of a converged network: peer bytes per node per second by message kind,
#      over a quiet minute after the writes.
# Every node is `--shards 1`; all run on 127.0.0.1 with free ports; everything started is
# stopped on exit.
#
#   bash benches/network.sh                      # results in target/network/
#   DURATION=5s QUIET=20 bash benches/network.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}   # each loadgen run
QUIET=${QUIET:-60}          # seconds of converged network to measure sync traffic over
OUT=${OUT:-target/network}
mkdir -p "$OUT"

cargo build --release --locked -p repram --bin repram -p repram-loadgen --bin repram-loadgen

source benches/nodes.sh

workload=(--connections 50 --pipeline 1 --reads 0 --keys 100000 --value-size 100
    --duration "$DURATION" --quiet)

echo "== 1. write path: one node alone"
start SOLO
"$LOADGEN" run --addr "$SOLO_CLIENT" --server-pid "$SOLO_PID" --label alone \
    --out "$OUT/alone" "${workload[@]}"
kill -TERM "$SOLO_PID"

echo "== 1. write path: the same node with two peers"
start_network
"$LOADGEN" run --addr "$A_CLIENT" --server-pid "$A_PID" --label in-network-of-3 \
    --out "$OUT/network" "${workload[@]}"
"$LOADGEN" compare "$OUT/alone.json" "$OUT/network.json"

echo "== 2. replication lag: write on A, poll B and C (local-only)"
"$LOADGEN" lag --writer "$A_CLIENT" --reader "$B_CLIENT" --reader "$C_CLIENT" \
    --writes 4000 --rate 200 --out "$OUT/lag"

echo "== 3. sync traffic of the converged network over ${QUIET}s (bytes per node per second)"
sleep 10
snapshot() { # node-label client-addr file
    "$REPRAM" stats --addr "$2" | awk -v node="$1" '
        /^peer bytes by kind/ { on = 1; next }
        on && NF == 3 { print node, $1, $2, $3 }' >"$3"
}
for n in A B C; do
    addr_var=${n}_CLIENT
    snapshot "$n" "${!addr_var}" "$OUT/sync-before-$n.txt"
done
sleep "$QUIET"
for n in A B C; do
    addr_var=${n}_CLIENT
    snapshot "$n" "${!addr_var}" "$OUT/sync-after-$n.txt"
done
printf '%-6s%-18s%12s%12s\n' node kind "sent B/s" "recv B/s"
for n in A B C; do
    join -1 2 -2 2 <(sort -k2 "$OUT/sync-before-$n.txt") <(sort -k2 "$OUT/sync-after-$n.txt") |
        awk -v node="$n" -v secs="$QUIET" '{
            sent = ($6 - $3) / secs; recv = ($7 - $4) / secs
            if (sent + recv > 0) printf "%-6s%-18s%12.1f%12.1f\n", node, $1, sent, recv
            ts += sent; tr += recv }
            END { printf "%-6s%-18s%12.1f%12.1f\n", node, "all", ts, tr }'
done
