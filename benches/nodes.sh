# Shared by the benchmark scripts (sourced after their release build, not run): the binaries
# ($REPRAM, $LOADGEN), starting nodes on free ports, stopping them all on exit. Needs $OUT
# (where logs go).

TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
REPRAM=$TARGET_DIR/release/repram
LOADGEN=$TARGET_DIR/release/repram-loadgen

pids=()
cleanup() {
    trap - EXIT INT TERM
    [ ${#pids[@]} -gt 0 ] && kill -TERM "${pids[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# start NAME [serve options]: starts a node (--shards $NODE_SHARDS, default 1, and
# --memory-budget $NODE_BUDGET, default 1GiB), sets ${NAME}_CLIENT, ${NAME}_PEER, ${NAME}_PID.
start() {
    local name=$1
    shift
    "$REPRAM" serve --listen 127.0.0.1:0 --shards "${NODE_SHARDS:-1}" \
        --memory-budget "${NODE_BUDGET:-1GiB}" "$@" \
        >"$OUT/$name.out" 2>"$OUT/$name.log" &
    local pid=$!
    pids+=("$pid")
    for _ in $(seq 1 200); do
        grep -q '^repram listening' "$OUT/$name.out" 2>/dev/null && break
        sleep 0.05
    done
    local line
    line=$(grep '^repram listening' "$OUT/$name.out") || {
        echo "node $name did not start:" >&2
        cat "$OUT/$name.log" >&2
        exit 1
    }
    printf -v "${name}_CLIENT" '%s' "$(sed 's/.*client=\([^ ]*\).*/\1/' <<<"$line")"
    printf -v "${name}_PEER" '%s' "$(sed 's/.* peer=\([^ ]*\).*/\1/' <<<"$line")"
    printf -v "${name}_PID" '%s' "$pid"
}


# start_network [serve options]: the three-node network the benchmarks use, A the root and B
# and C joined to it, each with the same options; waits 3 s for the tree to form.
start_network() {
    start A "$@"
    start B --root "$A_PEER" "$@"
    start C --root "$A_PEER" "$@"
    sleep 3
}
