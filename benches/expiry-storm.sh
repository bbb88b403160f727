#!/usr/bin/env bash
# An expiry storm on a running node: a million keys written so that they all expire in the
# same second, while a probe client reads at 1,000/s. Prints the probe's p50/p99/max before
# the storm and while the node reclaims it, and how long reclaiming took.
# Usage: bash benches/expiry-storm.sh [KEYS] [SHARDS]
set -euo pipefail
cd "$(dirname "$0")/.."
KEYS=${1:-1000000}
SHARDS=${2:-2}
cargo build --release --quiet --bin repram --example expiry_storm
OUT=$(mktemp -d)
source benches/nodes.sh
NODE_SHARDS=$SHARDS NODE_BUDGET=2GiB start NODE
"$TARGET_DIR/release/examples/expiry_storm" --addr "$NODE_CLIENT" --keys "$KEYS" --storm-after 45
