#!/usr/bin/env bash
# `m87 <device> docker version` round trips against `docker version` run locally against the same
# engine socket, side by side in one run.
#
#   sudo loadtest/docker-bench.sh [BIN_DIR]       (default BIN_DIR: target/release)
#
# Starts its own dockerd (private socket, data root, exec root, pid file, no bridge, no iptables)
# in a temp dir, an m87-server and a runtime with --docker-socket pointing at that dockerd, all on
# 127.0.0.1. Then runs, interleaved, DOCKER_BENCH_RUNS (default 30) times each, after 3 warm-ups:
#   local  `docker version` with DOCKER_HOST=unix://<the engine's socket>
#   m87    `m87 <device> docker version` (session grant + QUIC connect + one channel per
#          connection docker makes + the device's splice to the same socket)
# and prints median, p90, min and max wall time of each, in ms, and the difference of the medians.
# Needs dockerd and docker (Debian docker.io), root for dockerd. Ports 18930-18931.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${1:-$ROOT/target/release}
RUNS=${DOCKER_BENCH_RUNS:-30}
API_PORT=18930 QUIC_PORT=18931
for tool in dockerd docker; do command -v "$tool" >/dev/null || { echo "docker-bench: needs $tool (Debian docker.io)" >&2; exit 1; }; done
[[ -x $BIN/m87 && -x $BIN/m87-server ]] || { echo "docker-bench: build first: cargo build --release -p m87 -p m87-server" >&2; exit 1; }
W=$(mktemp -d /tmp/m87-dbench.XXXXXX)
PIDS=()
DOCKERD=
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  if [[ -n $DOCKERD ]]; then
    kill "$DOCKERD" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$DOCKERD" 2>/dev/null || break; sleep 0.2; done
  fi
  rm -rf "$W"
}
trap cleanup EXIT
wait_line() { # file pattern
  local _
  for _ in $(seq 300); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "docker-bench: timed out waiting for '$2' in $1" >&2
  return 1
}

SOCK=$W/engine/d.sock
mkdir -p "$W/engine"
dockerd --host "unix://$SOCK" --data-root "$W/engine/data" --exec-root "$W/engine/x" \
  --pidfile "$W/engine/d.pid" --bridge=none --iptables=false >"$W/engine/dockerd.log" 2>&1 &
DOCKERD=$!
for _ in $(seq 240); do DOCKER_HOST=unix://$SOCK docker version >/dev/null 2>&1 && break; sleep 0.25; done

E=(env M87_API_URL="https://127.0.0.1:$API_PORT" M87_TRUST_INVALID_CERT=true)
mkdir -p "$W/data" "$W/device" "$W/ws"
"${E[@]}" "$BIN/m87-server" --data-dir "$W/data" --api-listen "127.0.0.1:$API_PORT" \
  --quic-listen "127.0.0.1:$QUIC_PORT" >"$W/server.log" 2>&1 &
PIDS+=($!)
wait_line "$W/server.log" "listening on https://"
wait_line "$W/data/admin.key" .
"${E[@]}" M87_CONFIG_DIR="$W/device" M87_APPROVAL_POLL_SECS=1 "$BIN/m87" runtime run \
  --email admin@localhost --name bench --docker-socket "$SOCK" >"$W/runtime.log" 2>&1 &
PIDS+=($!)
wait_line "$W/runtime.log" "registration request"
KEY=$(cat "$W/data/admin.key")
M87=("${E[@]}" M87_API_KEY="$KEY" M87_CONFIG_DIR="$W/ws" "$BIN/m87")
"${M87[@]}" devices approve bench >/dev/null
wait_line "$W/runtime.log" "tunnel connected"

ms() { # command... → wall ms of one run
  local t0 t1
  t0=$(date +%s%N)
  "$@" >/dev/null 2>&1 || { echo "docker-bench: failed: $*" >&2; exit 1; }
  t1=$(date +%s%N)
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f\n", (b - a) / 1e6 }'
}
local_docker() { DOCKER_HOST=unix://$SOCK docker version; }
m87_docker() { "${M87[@]}" bench docker version; }
for _ in 1 2 3; do ms local_docker >/dev/null; ms m87_docker >/dev/null; done
for ((i = 0; i < RUNS; i++)); do
  ms local_docker >>"$W/local"
  ms m87_docker >>"$W/m87"
done
stats() { # file → median p90 min max
  sort -n "$1" | awk '{ v[NR] = $1 } END {
    p = int(NR * 0.9 + 0.999); if (p > NR) p = NR
    m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
    printf "%.1f %.1f %.1f %.1f\n", m, v[p], v[1], v[NR] }'
}
read -r lm lp lmin lmax < <(stats "$W/local")
read -r mm mp mmin mmax < <(stats "$W/m87")
echo "docker version round trips, $RUNS runs each, interleaved ($(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg))"
printf '  %-32s median %7.1f ms  p90 %7.1f ms  min %7.1f  max %7.1f\n' \
  "docker version (local socket)" "$lm" "$lp" "$lmin" "$lmax" \
  "m87 bench docker version" "$mm" "$mp" "$mmin" "$mmax"
awk -v a="$mm" -v b="$lm" -v c="$mp" -v d="$lp" 'BEGIN { printf "  m87 adds: median %+.1f ms, p90 %+.1f ms\n", a - b, c - d }'
