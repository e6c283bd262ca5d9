#!/usr/bin/env bash
# Logs benchmark: how many lines a second `m87 <device> logs -f` delivers through the tunnel,
# next to what people would use instead on the same machine:
#
#   1. `m87 <device> logs -f -n 5 -o json` (the device reads its runtime log, JSON lines
#      through the relay to the CLI);
#   2. `m87 <device> exec -- tail -n 5 -F FILE` (the same file, raw bytes through the tunnel);
#   3. `tail -n 5 -F FILE` locally (no tunnel at all: the ceiling).
#
# For each, the runtime's log file is emptied but for one start line, a follower is started and
# waited for (it printed that line), then BENCH_LINES lines in the runtime log's own JSON format
# are appended to the file at once, and the time until the follower has printed
# the last of them is measured (lines/s = lines / that time). Rounds are interleaved; the median
# is reported. Writes loadtest/reports/logs-<date>.md with the machine and every command.
#
# Environment (all optional):
#   BENCH_LINES=100000      lines appended per measurement (about 150 bytes each)
#   BENCH_ROUNDS=3          rounds of the three measurements
#   BENCH_REPORT=path       report file (default loadtest/reports/logs-YYYY-MM-DD.md)
#   BENCH_SKIP_BUILD=1      use the existing target/release binaries
#   BENCH_BIN_DIR=dir       use m87 and m87-server from dir; implies BENCH_SKIP_BUILD=1
#   BENCH_TIMEOUT=900       the run (after the build) is stopped after this many seconds
#   BENCH_KEEP=1            keep the temporary directory
#   BENCH_PORT_BASE=18380   ports used: BASE+4 (QUIC, udp), BASE+5 (API)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

LINES=${BENCH_LINES:-100000}
ROUNDS=${BENCH_ROUNDS:-3}
TIMEOUT=${BENCH_TIMEOUT:-900}
BASE=${BENCH_PORT_BASE:-18380}
REPORT=${BENCH_REPORT:-$ROOT/loadtest/reports/logs-$(date +%F).md}
QUIC_PORT=$((BASE + 4))
API_PORT=$((BASE + 5))
DEVICE=logbench
BIN_DIR=${BENCH_BIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/release}
M87=$BIN_DIR/m87
M87_SERVER=$BIN_DIR/m87-server

BENCH_NAME=logs-bench
source "$ROOT/loadtest/lib/common.sh"

command -v python3 >/dev/null || die "python3 is needed to write the lines"
if [[ -z ${BENCH_BIN_DIR:-} && ${BENCH_SKIP_BUILD:-0} != 1 ]]; then
  log "building release binaries (nice, one job)"
  CARGO_BUILD_JOBS=1 nice -n 19 cargo build --release -p m87 -p m87-server
fi
[[ -x $M87 && -x $M87_SERVER ]] || die "no binaries in $BIN_DIR"

D=$(mktemp -d /tmp/m87-logs-bench.XXXXXX)
( sleep "$TIMEOUT"; kill -TERM $$ ) &
WATCHDOG=$!

log "starting m87-server"
mkdir -p "$D/data" "$D/device" "$D/ws"
"$M87_SERVER" --data-dir "$D/data" --api-listen "127.0.0.1:$API_PORT" --quic-listen "127.0.0.1:$QUIC_PORT" \
  >"$D/server.log" 2>&1 &
SERVER_PID=$!
PIDS+=("$SERVER_PID")
wait_for_line "$D/server.log" "listening on https://" 30 "$SERVER_PID"
for _ in $(seq 100); do [[ -s $D/data/admin.key ]] && break; sleep 0.1; done
[[ -s $D/data/admin.key ]] || die "no admin.key"

export M87_API_URL=https://127.0.0.1:$API_PORT M87_TRUST_INVALID_CERT=true
FILE=$D/device/runtime.log
log "starting the device runtime (its log: $FILE)"
env M87_CONFIG_DIR="$D/device" M87_APPROVAL_POLL_SECS=1 M87_RUNTIME_LOG="$FILE" \
  "$M87" runtime run --email admin@localhost --name "$DEVICE" >"$D/runtime.out" 2>&1 &
RUNTIME_PID=$!
PIDS+=("$RUNTIME_PID")
wait_for_line "$D/runtime.out" "registration request" 30 "$RUNTIME_PID"
M87_API_KEY=$(cat "$D/data/admin.key")
export M87_API_KEY M87_CONFIG_DIR=$D/ws
"$M87" devices approve "$DEVICE" >"$D/approve.log" 2>&1 || { cat "$D/approve.log" >&2; die "approve failed"; }
wait_for_line "$D/runtime.out" "tunnel connected" 60 "$RUNTIME_PID"

# The lines, in the runtime log's format (as tracing-subscriber's JSON layer writes them).
python3 - "$D/lines.json" "$LINES" <<'PY'
import sys, datetime
path, n = sys.argv[1], int(sys.argv[2])
now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
with open(path, "w") as f:
    for i in range(n):
        f.write('{"timestamp":"%s","level":"INFO","fields":{"message":"bench-line %07d the quick brown fox jumps over the lazy dog"},"target":"bench"}\n' % (now, i))
PY
BYTES=$(stat -c %s "$D/lines.json")
LAST=$(printf 'bench-line %07d' $((LINES - 1)))

# measure NAME COMMAND...: empties the log file but for one start line, starts the follower
# (asked for the last 5 lines), waits until it printed the start line (it is then past its first read
# and following), appends the lines, prints the seconds until the follower printed the last one.
measure() {
  local name=$1; shift
  local out=$D/$name.out
  : >"$out"
  printf '{"timestamp":"%s","level":"INFO","fields":{"message":"bench-start %s"},"target":"bench"}\n' \
    "$(date -u +%FT%T.%6NZ)" "$name" >"$FILE"
  "$@" >"$out" 2>"$D/$name.err" &
  local pid=$!
  PIDS+=("$pid")
  local i
  for ((i = 0; i < 300; i++)); do
    grep -q "bench-start $name" "$out" && break
    kill -0 "$pid" 2>/dev/null || { cat "$D/$name.err" >&2; die "$name exited early"; }
    sleep 0.1
  done
  grep -q "bench-start $name" "$out" || die "$name did not print the start line"
  local t0 t1
  t0=$(date +%s.%N)
  cat "$D/lines.json" >>"$FILE"
  # The last 8 KiB: the runtime may log a few lines of its own (a session closing) after it.
  # (No `tail | grep -q`: with pipefail a SIGPIPE in tail would make a match look like none.)
  while [[ $(tail -c 8192 "$out") != *"$LAST"* ]]; do
    kill -0 "$pid" 2>/dev/null || { cat "$D/$name.err" >&2; die "$name exited early"; }
    sleep 0.02
  done
  t1=$(date +%s.%N)
  # TERM, not INT: a background job of a script starts with SIGINT ignored.
  kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
  untrack "$pid"
  local got
  got=$(grep -c 'bench-line' "$out" || true)
  [[ $got -ge $LINES ]] || die "$name printed $got of $LINES lines"
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", b - a }'
}

declare -A SECS
for r in $(seq "$ROUNDS"); do
  log "round $r of $ROUNDS"
  SECS[m87_logs]+="$(measure m87_logs "$M87" "$DEVICE" logs -f -n 5 -o json) "
  SECS[m87_exec_tail]+="$(measure m87_exec_tail "$M87" "$DEVICE" exec -- tail -n 5 -F "$FILE") "
  SECS[local_tail]+="$(measure local_tail tail -n 5 -F "$FILE") "
done
median() { tr ' ' '\n' | grep . | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
rate() { awk -v n="$LINES" -v s="$1" 'BEGIN { printf "%.0f", n / s }'; }
mbs() { awk -v b="$BYTES" -v s="$1" 'BEGIN { printf "%.1f", b / s / 1048576 }'; }

mkdir -p "$(dirname "$REPORT")"
{
  echo "# logs benchmark, $(date -u +%F)"
  echo
  echo "Machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo), $(uname -sr);" \
    "load average at the end $(loadavg) (the machine is shared with other builds)."
  echo "Binaries: $BIN_DIR (commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'))."
  echo "Command: \`loadtest/logs-bench.sh\` with BENCH_LINES=$LINES BENCH_ROUNDS=$ROUNDS."
  echo
  echo "$LINES lines ($(awk -v b="$BYTES" 'BEGIN { printf "%.1f", b / 1048576 }') MiB, JSON as the runtime writes them) appended at once to"
  echo "the runtime's log file; time until the follower printed the last line; median of $ROUNDS rounds."
  echo
  echo "| follower | seconds (each round) | median s | lines/s | MiB/s of log |"
  echo "|---|---|---|---|---|"
  for k in m87_logs m87_exec_tail local_tail; do
    m=$(echo "${SECS[$k]}" | median)
    case $k in
      m87_logs) label="\`m87 $DEVICE logs -f -n 5 -o json\`" ;;
      m87_exec_tail) label="\`m87 $DEVICE exec -- tail -n 5 -F FILE\`" ;;
      local_tail) label="\`tail -n 5 -F FILE\` (local, no tunnel)" ;;
    esac
    echo "| $label | ${SECS[$k]}| $m | $(rate "$m") | $(mbs "$m") |"
  done
  echo
  echo "Everything on loopback: m87-server (control plane + relay), \`m87 runtime run\` and the CLI on"
  echo "one machine. The m87 follower is woken by inotify (and checks every 500 ms), parses each line and sends it"
  echo "re-encoded as a LogLine JSON object; exec+tail sends the raw bytes."
} >"$REPORT"
log "report: $REPORT"
cat "$REPORT"
