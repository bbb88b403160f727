#!/usr/bin/env bash
# Server user-space instructions per request under callgrind (instruction counts repeat run to
# run, unlike times on this noisy machine): REPRAM's native port (every SET sealed, every GET
# opened) and redis-server, 100 B values over 10,000 preloaded keys, GETs and SETs apart, at
# pipeline 1 and 16, 50 connections, driven by repram-loadgen; REPRAM's RESP port with the
# requests Redis gets; and REPRAM's HTTP GET and PUT
# driven by wrk. Counters are zeroed after the preload and dumped after each run, so start-up
# and preload are left out. Slow (the servers run under valgrind): about 7 minutes.
#
#   bash benches/perf-instructions.sh             # results in target/perf-instructions/
#   REQUESTS=50000 bash benches/perf-instructions.sh
#   SERVERS="repram resp" bash benches/perf-instructions.sh    # some of repram resp redis http
#   BIN_DIR=/tmp/old-build bash benches/perf-instructions.sh  # another build's binaries
set -euo pipefail
cd "$(dirname "$0")/.."

REQUESTS=${REQUESTS:-20000}
SERVERS=${SERVERS:-repram resp redis http}
runs() { [[ " $SERVERS " == *" $1 "* ]]; }
OUT=${OUT:-target/perf-instructions}
mkdir -p "$OUT"
rm -f "$OUT"/callgrind.* "$OUT/results.tsv"
for tool in valgrind callgrind_control redis-server; do
    command -v "$tool" >/dev/null 2>&1 || { echo "needs $tool (apt-get install valgrind redis-server)" >&2; exit 1; }
done

source benches/servers.sh
CALLGRIND=(valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.%p")

# Instructions since the last zeroing, from a fresh dump of `pid`'s counters.
instructions_since_zero() {
    local pid=$1 before
    before=$(ls "$OUT"/callgrind.* 2>/dev/null | wc -l)
    callgrind_control -d "$pid" >/dev/null 2>&1
    for _ in $(seq 1 100); do
        [ "$(ls "$OUT"/callgrind.* | wc -l)" -gt "$before" ] && break
        sleep 0.1
    done
    awk '/^(summary|totals):/ { print $2; exit }' "$(ls -t "$OUT"/callgrind.* | head -1)"
}

measure() {
    local server=$1 kind=$2 port=$3 pid=$4
    taskset -c 1 "$LOADGEN" run --target "$kind" --addr "127.0.0.1:$port" --keys 10000 \
        --value-size 100 --preload --preload-timeout 300s --reads 1 --requests 1 --connections 1 \
        --quiet >/dev/null
    for op in get set; do
        reads=1
        [ "$op" = set ] && reads=0
        for pipeline in 1 16; do
            callgrind_control -z "$pid" >/dev/null 2>&1
            taskset -c 1 "$LOADGEN" run --target "$kind" --addr "127.0.0.1:$port" --keys 10000 \
                --value-size 100 --reads "$reads" --pipeline "$pipeline" --connections 50 \
                --requests "$REQUESTS" --duration 300s --timeout 30s --quiet \
                --out "$OUT/$server-$op-p$pipeline" >/dev/null
            local ir ops
            ir=$(instructions_since_zero "$pid")
            ops=$(python3 -c "import json; print(json.load(open('$OUT/$server-$op-p$pipeline.json'))['ops'])")
            printf '%s\t%s\t%s\t%s\n' "$server" "$op" "$pipeline" "$((ir / ops))" >>"$OUT/results.tsv"
            echo "$server $op P$pipeline: $ir instructions for $ops requests" >&2
        done
    done
}

# under_callgrind NAME [serve options]: a one-shard node on CPU 0 under callgrind, started
# and listening; its "listening" line is in OUT/NAME.out.
under_callgrind() {
    local name=$1
    shift
    taskset -c 0 "${CALLGRIND[@]}" "$REPRAM" serve --shards 1 --listen 127.0.0.1:0 "$@" \
        >"$OUT/$name.out" 2>"$OUT/$name.log" &
    PIDS+=($!)
    for _ in $(seq 1 600); do
        grep -q '^repram listening' "$OUT/$name.out" 2>/dev/null && break
        sleep 0.1
    done
    grep -q '^repram listening' "$OUT/$name.out" || { cat "$OUT/$name.log" >&2; exit 1; }
}

if runs repram; then
    under_callgrind repram --resp-listen off --http-listen off
    port=$(sed -n 's/^repram listening client=127.0.0.1:\([0-9]*\).*/\1/p' "$OUT/repram.out")
    measure repram repram "$port" "${PIDS[-1]}"
    stop_all
fi

# RESP: the loadgen's RESP requests, the same Redis gets below, on REPRAM's RESP port.
if runs resp; then
    under_callgrind resp --resp-listen 127.0.0.1:0 --http-listen off
    port=$(sed -n 's/.* resp=127.0.0.1:\([0-9]*\).*/\1/p' "$OUT/resp.out")
    measure resp redis "$port" "${PIDS[-1]}"
    stop_all
fi

if runs redis; then
    port=$(free_port)
    taskset -c 0 "${CALLGRIND[@]}" redis-server --port "$port" --bind 127.0.0.1 --save "" \
        --appendonly no --daemonize no >"$OUT/redis.log" 2>&1 &
    PIDS+=($!)
    wait_for_port "$port"
    measure redis redis "$port" "${PIDS[-1]}"
    stop_all
fi

# HTTP: wrk (-t1 -c10, 8 s each) over 2,000 keys of 100 B, PUTs first; per request from wrk's
# count (the server is slow under valgrind, so a time, not a count, bounds each run).
if ! runs http; then
    :
elif command -v wrk >/dev/null 2>&1; then
    write_wrk_scripts "$OUT" 2000
    under_callgrind http --resp-listen off --http-listen 127.0.0.1:0
    http=$(sed 's/.* http=\([^ ]*\).*/\1/' "$OUT/http.out")
    taskset -c 1 wrk -t1 -c10 -d4s -s "$OUT/put.lua" "http://$http" >/dev/null
    for method in put get; do
        callgrind_control -z "${PIDS[-1]}" >/dev/null 2>&1
        requests=$(taskset -c 1 wrk -t1 -c10 -d8s -s "$OUT/$method.lua" "http://$http" |
            awk '/requests in/ { print $1 }')
        ir=$(instructions_since_zero "${PIDS[-1]}")
        printf '%s\t%s\t%s\t%s\n' http "$method" - "$((ir / requests))" >>"$OUT/results.tsv"
        echo "http $method: $ir instructions for $requests requests" >&2
    done
    stop_all
else
    echo "perf-instructions: no wrk (apt-get install wrk): HTTP left out" >&2
fi

python3 - "$OUT/results.tsv" <<'PY'
import sys
v = {}
for line in open(sys.argv[1]):
    server, op, p, ir = line.split()
    v[(server, op, p)] = int(ir)
print("Server user-space instructions per request (callgrind; target: REPRAM <= Redis)")
def row(label, server, op, p, note=""):
    r, rd = v.get((server, op, p)), v.get(("redis", op, p))
    if r is None:
        return
    vs = f"  Redis {rd:>7}  ({r / rd:.2f}x{note})" if rd else ""
    print(f"{label}{op.upper()} P{p:<3} REPRAM {r:>7}{vs}")
for op in ("get", "set"):
    for p in ("1", "16"):
        row("", "repram", op, p)
for op in ("get", "set"):
    for p in ("1", "16"):
        row("RESP ", "resp", op, p, ", same RESP requests")
for op in ("get", "put"):
    if ("http", op, "-") in v:
        print(f"HTTP {op.upper():<4} REPRAM {v[('http', op, '-')]:>7}  (wrk -t1 -c10, 100 B)")
PY
