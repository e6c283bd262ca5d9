# shellcheck shell=bash
# Shared by the benchmark scripts (bench-tunnel.sh, bench-fleet.sh), which source it after
# setting BENCH_NAME (the log prefix), TIMEOUT and, for wait_quiet, WAIT_QUIET and QUIET_LOAD.
#
# Cleanup: every process a script starts goes into PIDS and is stopped by its id on exit (also on
# Ctrl-C, an error or the watchdog in WATCHDOG); the temporary directory D is removed unless
# BENCH_KEEP=1 or the run failed. A script that has more to undo defines `cleanup_more`.

log() { printf '[%s %(%H:%M:%S)T] %s\n' "$BENCH_NAME" -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

PIDS=()
D=""
WATCHDOG=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  local i pid
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    kill -TERM "${PIDS[i]}" 2>/dev/null
  done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  if [[ -n $WATCHDOG ]]; then
    pkill -TERM -P "$WATCHDOG" 2>/dev/null # its sleep
    kill "$WATCHDOG" 2>/dev/null
    wait "$WATCHDOG" 2>/dev/null
  fi
  if declare -F cleanup_more >/dev/null; then cleanup_more; fi
  if [[ -n $D && -d $D ]]; then
    if [[ ${BENCH_KEEP:-0} == 1 || $rc != 0 ]]; then
      log "kept $D (logs and raw results)"
    else
      rm -rf "$D"
    fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated (watchdog after ${TIMEOUT}s, or a signal)"; exit 143' TERM
# Forgets a pid that the script stopped itself.
untrack() { local p keep=(); for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done; PIDS=("${keep[@]}"); }

port_listening() { [[ -n $(ss -Hntl "sport = :$1" 2>/dev/null) ]]; }
wait_for_line() { # file pattern seconds pid
  local i
  for ((i = 0; i < $3 * 10; i++)); do
    grep -q -- "$2" "$1" 2>/dev/null && return 0
    kill -0 "$4" 2>/dev/null || { tail -30 "$1" >&2; die "process $4 exited while waiting for '$2' in $1"; }
    sleep 0.1
  done
  tail -30 "$1" >&2
  die "timed out waiting for '$2' in $1"
}
wait_for_port() { # port seconds pid
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    port_listening "$1" && return 0
    kill -0 "$3" 2>/dev/null || die "process $3 exited before listening on $1"
    sleep 0.1
  done
  die "timed out waiting for a listener on port $1"
}
loadavg() { cut -d' ' -f1 /proc/loadavg; }
wait_quiet() { # what
  local waited=0
  while ((waited < WAIT_QUIET)) && awk -v l="$(loadavg)" -v q="$QUIET_LOAD" 'BEGIN { exit !(l >= q) }'; do
    ((waited == 0)) && log "waiting up to ${WAIT_QUIET}s for load average < $QUIET_LOAD $1 (now $(loadavg))"
    sleep 5
    waited=$((waited + 5))
  done
}
