# Shared by the single-server benchmark scripts (perf.sh, perf-instructions.sh; sourced, not
# run): builds the release binaries ($REPRAM, $LOADGEN; or BIN_DIR's), tracks the servers they start
# (PIDS, stopped by stop_all and on exit), and finds free and listening ports.

# BIN_DIR=dir takes repram and repram-loadgen from there instead (to compare two builds).
if [ -n "${BIN_DIR:-}" ]; then
    REPRAM=$BIN_DIR/repram
    LOADGEN=$BIN_DIR/repram-loadgen
else
    cargo build --release --locked -p repram --bin repram -p repram-loadgen --bin repram-loadgen
    TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
    REPRAM=$TARGET_DIR/release/repram
    LOADGEN=$TARGET_DIR/release/repram-loadgen
fi

PIDS=()
stop_all() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    PIDS=()
}
trap stop_all EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# wait_for_port PORT [TENTHS]: waits until something listens on 127.0.0.1:PORT (60 s at most
# by default: a server under valgrind starts slowly).
wait_for_port() {
    for _ in $(seq 1 "${2:-600}"); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "$(basename "$0"): nothing listens on 127.0.0.1:$1" >&2
    exit 1
}

# write_wrk_scripts DIR KEYS: DIR/put.lua and DIR/get.lua, wrk scripts that PUT 100 B values
# to and GET /v1/data/key:N, N cycling through KEYS keys.
write_wrk_scripts() {
    for method in put get; do
        {
            [ "$method" = put ] && printf 'wrk.method = "PUT"\nwrk.body = string.rep("v", 100)\n'
            printf 'counter = 0\nrequest = function()\n    counter = counter + 1\n'
            printf '    return wrk.format(nil, "/v1/data/key:" .. (counter %% %d))\nend\n' "$2"
        } >"$1/$method.lua"
    done
}

# start_node BIN NAME [serve options]: a one-shard node of BIN on CPU ${SERVER_CPU:-0} with its
# client port on a free 127.0.0.1 port, its output in $OUT/NAME.out and .log; sets NODE_PID
# and NODE_PORT (the client port) once it says it listens.
start_node() {
    local bin=$1 name=$2
    shift 2
    taskset -c "${SERVER_CPU:-0}" "$bin" serve --shards 1 --listen 127.0.0.1:0 "$@" \
        >"$OUT/$name.out" 2>"$OUT/$name.log" &
    NODE_PID=$!
    PIDS+=("$NODE_PID")
    for _ in $(seq 1 100); do
        grep -q '^repram listening' "$OUT/$name.out" 2>/dev/null && break
        sleep 0.05
    done
    NODE_PORT=$(sed -n 's/^repram listening client=127.0.0.1:\([0-9]*\).*/\1/p' "$OUT/$name.out")
    [ -n "$NODE_PORT" ] || { cat "$OUT/$name.log" >&2; exit 1; }
}

# preload KIND PORT KEYS: writes every one of KEYS keys once (100 B values) from CPU 1.
preload() {
    taskset -c 1 "$LOADGEN" run --target "$1" --addr "127.0.0.1:$2" --keys "$3" \
        --value-size 100 --preload --reads 1 --requests 1 --connections 1 --quiet >/dev/null
}

# start_redis: redis-server on CPU ${SERVER_CPU:-0}, persistence off, on a free port; sets
# REDIS_PORT and REDIS_PID once it listens.
start_redis() {
    REDIS_PORT=$(free_port)
    taskset -c "${SERVER_CPU:-0}" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" \
        --appendonly no --daemonize no >"$OUT/redis.log" 2>&1 &
    REDIS_PID=$!
    PIDS+=("$REDIS_PID")
    wait_for_port "$REDIS_PORT"
}
