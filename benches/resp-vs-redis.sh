#!/usr/bin/env bash
# redis-benchmark against this node's Redis port and against redis-server (persistence off),
# in one run, same flags: -c 50 -d 100 -r 100000, SET and GET, pipeline 1 and 16. Each server
# gets CPU 0 (`--shards 1`), redis-benchmark CPU 1. Prints requests per second and requests per
# server CPU-second (from /proc/PID/stat, utime + stime) for both.
#
#   bash benches/resp-vs-redis.sh            # REQUESTS=500000 for longer runs
set -euo pipefail
cd "$(dirname "$0")/.."

REQUESTS=${REQUESTS:-200000}
OUT=${OUT:-target/resp-vs-redis}
mkdir -p "$OUT"
for tool in redis-server redis-benchmark taskset; do
    command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install redis-server)" >&2; exit 1; }
done

source benches/servers.sh

start_redis
start_node "$REPRAM" repram --resp-listen 127.0.0.1:0 --memory-budget 2GiB
REPRAM_PID=$NODE_PID
REPRAM_PORT=$(sed -n 's/.* resp=127.0.0.1:\([0-9]*\).*/\1/p' "$OUT/repram.out")
sleep 0.5

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)

printf '%-10s%-6s%-5s%14s%24s\n' server test P "requests/s" "requests/server-CPU-s"
for pipeline in 1 16; do
    for test in set get; do
        for server in redis repram; do
            if [ "$server" = redis ]; then port=$REDIS_PORT pid=$REDIS_PID; else port=$REPRAM_PORT pid=$REPRAM_PID; fi
            before=$(cpu_ticks "$pid")
            rps=$(taskset -c 1 redis-benchmark -h 127.0.0.1 -p "$port" -c 50 -d 100 -r 100000 \
                -n "$REQUESTS" -P "$pipeline" -t "$test" --csv 2>/dev/null |
                awk -F'","' 'NR == 2 {print $2}')
            after=$(cpu_ticks "$pid")
            cpu=$(awk -v t=$((after - before)) -v hz="$HZ" 'BEGIN {print t / hz}')
            per_cpu=$(awk -v n="$REQUESTS" -v c="$cpu" 'BEGIN {if (c > 0) printf "%.0f", n / c; else print "-"}')
            printf '%-10s%-6s%-5s%14s%24s\n' "$server" "$test" "$pipeline" "$rps" "$per_cpu"
        done
    done
done
