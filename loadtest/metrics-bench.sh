#!/usr/bin/env bash
# Metrics benchmark: what `m87 <device> metrics` costs the device.
#
# Measures the device runtime (`m87 runtime run`) from /proc/<pid>/stat (utime + stime over the
# window) and /proc/<pid>/status (VmRSS):
#   1. idle (connected, no viewer);
#   2. serving BENCH_VIEWERS=10 concurrent `m87 <device> metrics -o json --interval 1s`;
#   3. idle again after the viewers leave (the shared sampler must stop);
# and next to it what people would run instead: BENCH_VIEWERS x `top -b -d 1` on the device
# (CPU and RSS of those top processes themselves; an SSH session per viewer would add sshd's
# cost on top, which is not counted here).
#
# Goal: the runtime under 5 % of one core and under 10 MiB more RSS while serving the viewers.
# Writes loadtest/reports/metrics-<date>.md with the machine and the exact commands.
#
# Environment (all optional):
#   BENCH_SECS=60         seconds per measured window
#   BENCH_VIEWERS=10      concurrent viewers (and top processes)
#   BENCH_SKIP_BUILD=1    use the existing release binaries
#   BENCH_BIN_DIR=dir     m87 and m87-server from dir (default: $CARGO_TARGET_DIR/release or
#                         target/release); implies BENCH_SKIP_BUILD=1
#   BENCH_PORT_BASE=18580 ports: BASE+4 (QUIC, udp), BASE+5 (API)
#   BENCH_REPORT=path     report file
#   BENCH_KEEP=1          keep the temporary directory
#   BENCH_TIMEOUT=900     the run is stopped after this many seconds
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

SECS=${BENCH_SECS:-60}
VIEWERS=${BENCH_VIEWERS:-10}
TIMEOUT=${BENCH_TIMEOUT:-900}
BASE=${BENCH_PORT_BASE:-18580}
REPORT=${BENCH_REPORT:-$ROOT/loadtest/reports/metrics-$(date +%F).md}
QUIC_PORT=$((BASE + 4))
API_PORT=$((BASE + 5))
DEVICE=bench
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN_DIR=${BENCH_BIN_DIR:-$TARGET/release}
M87=$BIN_DIR/m87
M87_SERVER=$BIN_DIR/m87-server

BENCH_NAME=metrics-bench
source "$ROOT/loadtest/lib/common.sh"
port_used() { [[ -n $(ss -Hn"$2"l "sport = :$1" 2>/dev/null) ]]; }
! port_used "$API_PORT" t || die "TCP port $API_PORT is in use; set BENCH_PORT_BASE"
! port_used "$QUIC_PORT" u || die "UDP port $QUIC_PORT is in use; set BENCH_PORT_BASE"

for c in top ps awk ss getconf; do command -v "$c" >/dev/null || die "missing command: $c (apt-get install procps iproute2)"; done
if [[ ${BENCH_SKIP_BUILD:-0} != 1 && -z ${BENCH_BIN_DIR:-} ]]; then
  log "cargo build --release -p m87 -p m87-server (low priority)"
  nice -n 10 cargo build --release -p m87 -p m87-server
fi
[[ -x $M87 && -x $M87_SERVER ]] || die "no release binaries in $BIN_DIR"

( sleep "$TIMEOUT"; kill -TERM $$ ) 2>/dev/null &
WATCHDOG=$!
D=$(mktemp -d /tmp/m87-metrics-bench.XXXXXX)
log "working in $D"

CLK_TCK=$(getconf CLK_TCK)
# utime + stime (clock ticks) of the processes given.
ticks() { local t=0 p v; for p in "$@"; do v=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{ print $12 + $13 }') || true; t=$((t + ${v:-0})); done; echo "$t"; }
# VmRSS (KiB) summed over the processes given.
rss() { local t=0 p v; for p in "$@"; do v=$(awk '$1 == "VmRSS:" { print $2 }' "/proc/$p/status" 2>/dev/null) || true; t=$((t + ${v:-0})); done; echo "$t"; }
pct() { awk -v a="$1" -v b="$2" -v s="$3" -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", (b - a) / hz / s * 100 }'; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
# Measures processes "$@" over SECS: prints "cpu% rss_kib_at_end".
measure() { local a b; a=$(ticks "$@"); sleep "$SECS"; b=$(ticks "$@"); echo "$(pct "$a" "$b" "$SECS") $(rss "$@")"; }

# --- m87: server, device runtime, approval -------------------------------------------------
mkdir -p "$D/data" "$D/device" "$D/ws"
"$M87_SERVER" --data-dir "$D/data" --api-listen "127.0.0.1:$API_PORT" --quic-listen "127.0.0.1:$QUIC_PORT" \
  >"$D/server.log" 2>&1 &
SERVER_PID=$!
PIDS+=("$SERVER_PID")
wait_for_line "$D/server.log" "listening on https://" 30 "$SERVER_PID"
for _ in $(seq 100); do [[ -s $D/data/admin.key ]] && break; sleep 0.1; done
export M87_API_URL=https://127.0.0.1:$API_PORT M87_TRUST_INVALID_CERT=true
env M87_CONFIG_DIR="$D/device" M87_APPROVAL_POLL_SECS=1 \
  "$M87" runtime run --email admin@localhost --name "$DEVICE" >"$D/runtime.log" 2>&1 &
RUNTIME_PID=$!
PIDS+=("$RUNTIME_PID")
wait_for_line "$D/runtime.log" "registration request" 30 "$RUNTIME_PID"
M87_API_KEY=$(cat "$D/data/admin.key")
export M87_API_KEY M87_CONFIG_DIR=$D/ws
"$M87" devices approve "$DEVICE" >"$D/approve.log" 2>&1 || { cat "$D/approve.log" >&2; die "approve failed"; }
wait_for_line "$D/runtime.log" "tunnel connected" 60 "$RUNTIME_PID"
# One sample first, so the runtime has loaded what a sampler needs before "idle" is measured.
timeout 30 "$M87" "$DEVICE" metrics -o json --count 1 >/dev/null || die "m87 $DEVICE metrics failed"
sleep 3

log "idle: ${SECS}s"
read -r IDLE_CPU IDLE_RSS < <(measure "$RUNTIME_PID")

log "$VIEWERS viewers: ${SECS}s"
VIEWER_PIDS=()
for i in $(seq "$VIEWERS"); do
  "$M87" "$DEVICE" metrics -o json --interval 1s >"$D/viewer-$i.jsonl" 2>"$D/viewer-$i.err" &
  VIEWER_PIDS+=("$!")
  PIDS+=("$!")
done
sleep 5
LINES_BEFORE=$(cat "$D"/viewer-*.jsonl | wc -l)
read -r BUSY_CPU BUSY_RSS < <(measure "$RUNTIME_PID")
LINES_AFTER=$(cat "$D"/viewer-*.jsonl | wc -l)
VIEWER_CLIENT_CPU_RSS=$(rss "${VIEWER_PIDS[@]}")
for p in "${VIEWER_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
for p in "${VIEWER_PIDS[@]}"; do wait "$p" 2>/dev/null || true; untrack "$p"; done
SAMPLES=$((LINES_AFTER - LINES_BEFORE))

sleep 3
log "idle after the viewers left: ${SECS}s"
read -r AFTER_CPU AFTER_RSS < <(measure "$RUNTIME_PID")

log "$VIEWERS x top -b -d 1: ${SECS}s"
TOP_PIDS=()
for _ in $(seq "$VIEWERS"); do
  top -b -d 1 >/dev/null &
  TOP_PIDS+=("$!")
  PIDS+=("$!")
done
sleep 2
read -r TOP_CPU TOP_RSS < <(measure "${TOP_PIDS[@]}")
for p in "${TOP_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; untrack "$p"; done

EXTRA_CPU=$(awk -v a="$BUSY_CPU" -v b="$IDLE_CPU" 'BEGIN { printf "%.2f", a - b }')
EXTRA_RSS=$((BUSY_RSS - IDLE_RSS))
VERDICT_CPU=$(awk -v c="$BUSY_CPU" 'BEGIN { print (c < 5) ? "yes" : "NO" }')
VERDICT_RSS=$(awk -v r="$EXTRA_RSS" 'BEGIN { print (r < 10240) ? "yes" : "NO" }')

mkdir -p "$(dirname "$REPORT")"
cat >"$REPORT" <<EOF
# Metrics benchmark — $(date -u +'%F %H:%M UTC')

What serving \`m87 <device> metrics\` costs the device runtime, next to what people would run
instead (\`top -b -d 1\`, one per viewer). Everything on one machine, over loopback.

## Machine

- $(nproc) cores: $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)
- $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo) memory; kernel $(uname -r)
- load average at the start of the report: $(cut -d' ' -f1-3 /proc/loadavg) (the machine is shared
  with other builds: CPU figures are upper bounds)
- binaries: $BIN_DIR, built from commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)

## Command

\`\`\`
BENCH_SECS=$SECS BENCH_VIEWERS=$VIEWERS loadtest/metrics-bench.sh
\`\`\`

Each viewer: \`m87 $DEVICE metrics -o json --interval 1s\`; the alternative:
\`top -b -d 1 >/dev/null\`. CPU is utime + stime from /proc/<pid>/stat over ${SECS} s, as a
percentage of one core; memory is VmRSS from /proc/<pid>/status at the end of the window.

## Results

| what | CPU (% of one core) | RSS |
|---|---|---|
| runtime, idle (connected, no viewer) | $IDLE_CPU % | $(mib "$IDLE_RSS") MiB |
| runtime, serving $VIEWERS viewers at 1 s | $BUSY_CPU % | $(mib "$BUSY_RSS") MiB |
| runtime, idle again after they left | $AFTER_CPU % | $(mib "$AFTER_RSS") MiB |
| $VIEWERS x \`top -b -d 1\` (the top processes only) | $TOP_CPU % | $(mib "$TOP_RSS") MiB |

- Extra for $VIEWERS viewers: $EXTRA_CPU % of a core, $(mib "$EXTRA_RSS") MiB RSS.
- Goal (under 5 % of a core while serving, under 10 MiB extra RSS): CPU $VERDICT_CPU, memory $VERDICT_RSS.
- Samples the viewers printed during the window: $SAMPLES (expected about $((VIEWERS * SECS))).
- The $VIEWERS \`m87\` viewer processes themselves (on the operator's machine, not the device):
  $(mib "$VIEWER_CLIENT_CPU_RSS") MiB RSS together.

One sampler serves every viewer (see docs/operations/metrics.md), so the runtime's cost hardly
grows with the number of viewers, whereas each \`top\` reads every process's counters itself.
EOF
log "report: $REPORT"
cat "$REPORT"
