#!/usr/bin/env bash
# What TLS for clients costs: the loadgen against one node's native port, plain and with TLS
# (--tls-cert, a self-signed certificate for 127.0.0.1 made here with openssl), at pipeline 1
# and 16, in one run. The node is `--shards 1` on CPU 0, the loadgen on CPU 1.
#
#   bash benches/client-tls.sh                   # results in target/client-tls/
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
OUT=${OUT:-target/client-tls}
mkdir -p "$OUT"
command -v openssl >/dev/null || { echo "needs openssl" >&2; exit 1; }

cargo build --release --locked -p repram --bin repram -p repram-loadgen --bin repram-loadgen
source benches/nodes.sh

# A CA, and a certificate it signs for 127.0.0.1 (rustls refuses a CA certificate as the
# server's own).
ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
openssl req -x509 "${ec[@]}" -days 1 -subj /CN=repram-bench-ca \
    -keyout "$OUT/ca.key" -out "$OUT/ca.pem" 2>/dev/null
openssl req "${ec[@]}" -subj /CN=127.0.0.1 -keyout "$OUT/key.pem" -out "$OUT/cert.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' >"$OUT/ext.cnf"
openssl x509 -req -in "$OUT/cert.csr" -CA "$OUT/ca.pem" -CAkey "$OUT/ca.key" -CAcreateserial \
    -days 1 -extfile "$OUT/ext.cnf" -out "$OUT/cert.pem" 2>/dev/null

workload=(--connections 50 --reads 0.9 --keys 100000 --value-size 100 --preload
    --duration "$DURATION" --cpus 1 --quiet)

for mode in plain tls; do
    tls=()
    [ "$mode" = tls ] && tls=(--tls-cert "$OUT/cert.pem" --tls-key "$OUT/key.pem")
    start NODE "${tls[@]}" --resp-listen off --http-listen off
    taskset -pc 0 "$NODE_PID" >/dev/null
    ca=()
    [ "$mode" = tls ] && ca=(--tls-ca "$OUT/ca.pem")
    for p in 1 16; do
        "$LOADGEN" run --addr "$NODE_CLIENT" --server-pid "$NODE_PID" --label "$mode-p$p" \
            --pipeline "$p" --out "$OUT/$mode-p$p" "${ca[@]}" "${workload[@]}" \
            >"$OUT/$mode-p$p.txt"
        grep -E "ops/s|server CPU" "$OUT/$mode-p$p.txt"
    done
    kill -TERM "$NODE_PID"
    wait "$NODE_PID" 2>/dev/null || true
done
for p in 1 16; do
    echo "== pipeline $p: plain against TLS"
    "$LOADGEN" compare "$OUT/plain-p$p.json" "$OUT/tls-p$p.json"
done
