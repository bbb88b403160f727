#!/usr/bin/env bash
# A write burst through a root: a 3-node network (A the root, B and C joined to it), then
# KEYS keys (default 1,000,000, 64..1024 B, TTL $TTL, default 120s) written through A as fast
# as 16 connections at pipeline 8 go. Every 3 s for WATCH samples (default 30) it prints each
# node's resident memory and how often A cut a peer off; at the end, each node's live keys,
# entries shed, sync rounds and cut-offs from its metrics. A network that passes the burst on
# well ends with the same keys on all three and no cut-offs (docs/robustness.md).
#
#   bash benches/burst.sh
#   KEYS=200000 WATCH=20 bash benches/burst.sh
set -euo pipefail
cd "$(dirname "$0")/.."
KEYS=${KEYS:-1000000}
TTL=${TTL:-120s}
WATCH=${WATCH:-30}
cargo build --release --quiet -p repram -p repram-loadgen
OUT=${OUT:-$(mktemp -d)}
echo "burst: logs in $OUT"
source benches/nodes.sh
start_network

rss_mib() { awk '/^VmRSS:/ { printf "%d", $2 / 1024 }' "/proc/$1/status"; }
(
    for i in $(seq 1 "$WATCH"); do
        echo "t=$((i * 3))s A=$(rss_mib "$A_PID") B=$(rss_mib "$B_PID") C=$(rss_mib "$C_PID") MiB," \
            "A cut a peer off $(grep -c 'cannot keep up' "$OUT/A.log" || true) times"
        sleep 3
    done
) &
watcher=$!
"$LOADGEN" run --addr "$A_CLIENT" --keys "$KEYS" --value-size 64..1024 --ttl "$TTL" \
    --preload --preload-timeout 300s --duration 1s --connections 16 --pipeline 8 --no-pin \
    2>&1 | grep -i preloaded || true
wait "$watcher"
for node in A B C; do
    http=$(sed 's/.* http=\([^ ]*\).*/\1/' "$OUT/$node.out")
    echo "$node: $(curl -s "http://$http/metrics" |
        grep -E '^repram_(keys|peer_entries_shed_total|sync_rounds_total|ping_failures_total)' |
        tr '\n' ' ')"
done
