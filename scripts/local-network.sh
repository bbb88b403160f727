#!/usr/bin/env bash
# Starts a network of N REPRAM nodes on 127.0.0.1 (the first a root, the others joining it),
# prints where each listens, and tears them all down on Ctrl-C or when a node exits.
#
#   scripts/local-network.sh [N] [-- extra repram serve options]
#   e.g. scripts/local-network.sh 5 -- --shards 1 --memory-budget 256MiB
#
# Ports are free ones picked by the kernel. REPRAM_BIN overrides the binary (default: a
# release build, built if missing).
set -euo pipefail

nodes=${1:-3}
shift || true
[ "${1:-}" = "--" ] && shift
extra=("$@")

cd "$(dirname "$0")/.."
bin=${REPRAM_BIN:-target/release/repram}
if [ ! -x "$bin" ]; then
    cargo build --release --quiet
fi

dir=$(mktemp -d -t repram-net.XXXXXX)
pids=()
cleanup() {
    trap - EXIT INT TERM
    [ ${#pids[@]} -gt 0 ] && kill -TERM "${pids[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
    echo "stopped; logs were in $dir (removed)"
    rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 0' INT TERM

# Waits for node $1's "repram listening" line and prints it.
listening_line() {
    local out=$dir/node-$1.out
    for _ in $(seq 1 200); do
        if grep -q '^repram listening' "$out" 2>/dev/null; then
            grep '^repram listening' "$out"
            return 0
        fi
        sleep 0.05
    done
    echo "node $1 did not start; its log:" >&2
    cat "$dir/node-$1.log" >&2
    return 1
}

root_peer=""
for i in $(seq 0 $((nodes - 1))); do
    args=(serve --listen 127.0.0.1:0 --peer-listen 127.0.0.1:0 "${extra[@]}")
    [ -n "$root_peer" ] && args+=(--root "$root_peer")
    "$bin" "${args[@]}" >"$dir/node-$i.out" 2>"$dir/node-$i.log" &
    pids+=($!)
    line=$(listening_line "$i")
    client=$(sed -n 's/.*client=\([^ ]*\).*/\1/p' <<<"$line")
    peer=$(sed -n 's/.*peer=\([^ ]*\).*/\1/p' <<<"$line")
    [ -z "$root_peer" ] && root_peer=$peer
    printf 'node %d  pid %d  client %s  peer %s%s\n' "$i" "${pids[-1]}" "$client" "$peer" \
        "$([ "$i" -eq 0 ] && echo '  (root)')"
done
echo "logs in $dir; try: $bin put k v --addr <client> && $bin get k --addr <another client>"
echo "Ctrl-C stops every node."
wait -n "${pids[@]}" || true
echo "a node exited; stopping the others"
