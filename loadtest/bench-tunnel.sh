#!/usr/bin/env bash
# Tunnel benchmark: m87 next to OpenSSH on this machine, everything on loopback.
#
#   1. port-forward throughput (iperf3, 1 and 8 streams, both directions) through
#      `m87 <device> forward`, `ssh -L` direct and `ssh -L -J` (through a jump host);
#   2. wall time of a whole `m87 <device> exec -- true` next to `ssh host true` (hyperfine);
#   3. `m87 cp` of a 200 MB file next to `scp` (if this build has `m87 cp`);
#   4. resident memory of the server (relay) and of the device runtime, idle and under load;
#   5. whether the connections of one forward are independent: with some connections whose
#      reader stalls, does another connection still flow, and does another session (exec)
#      still answer (loadtest/hol-probe.py, needs python3; skipped without it).
#
# Writes loadtest/reports/tunnel-<date>.md with the machine, versions and every command used.
# See loadtest/README.md. Needs root (it runs its own sshd on 127.0.0.1).
#
# Environment (all optional):
#   BENCH_DURATION=10       seconds per iperf3 test
#   BENCH_ROUNDS=3          rounds of all throughput tests (interleaved); the median is reported
#   BENCH_WAIT_QUIET=0      wait up to this many seconds for the 1-minute load average to drop
#                           below BENCH_QUIET_LOAD=1.0 before the throughput, exec and copy parts
#   BENCH_EXEC_RUNS=30      hyperfine runs per exec command (after BENCH_EXEC_WARMUP=5)
#   BENCH_CP_MB=200         size of the copied file; BENCH_CP_RUNS=3 runs (after 1 warmup)
#   BENCH_REPORT=path       report file (default loadtest/reports/tunnel-YYYY-MM-DD.md)
#   BENCH_SKIP_BUILD=1      use the existing target/release binaries
#   BENCH_BIN_DIR=dir       use m87 and m87-server from dir (built elsewhere, e.g. from a clean
#                           snapshot of a commit); implies BENCH_SKIP_BUILD=1
#   BENCH_BUILD_NOTE=text   where those binaries come from, for the report
#   BENCH_NO_INSTALL=1      never apt-get install missing tools
#   BENCH_TIMEOUT=1500      the run (after the build) is stopped after this many seconds
#   BENCH_KEEP=1            keep the temporary directory (logs, raw JSON)
#   BENCH_HOL_BLOCKED=6     stalled connections in part 5 (6 x 16 MiB stream windows exceeded
#                           the 64 MiB connection window m87 had before commit 73ce291)
#   BENCH_PORT_BASE=18180   ports used: BASE+4 (QUIC, udp), BASE+5 (API), BASE+20..33 (iperf3,
#                           probe server, forwards), BASE+40/41 (sshd device / jump)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

DURATION=${BENCH_DURATION:-10}
EXEC_RUNS=${BENCH_EXEC_RUNS:-30}
EXEC_WARMUP=${BENCH_EXEC_WARMUP:-5}
CP_MB=${BENCH_CP_MB:-200}
CP_RUNS=${BENCH_CP_RUNS:-3}
ROUNDS=${BENCH_ROUNDS:-3}
WAIT_QUIET=${BENCH_WAIT_QUIET:-0}
QUIET_LOAD=${BENCH_QUIET_LOAD:-1.0}
TIMEOUT=${BENCH_TIMEOUT:-1500}
BASE=${BENCH_PORT_BASE:-18180}
REPORT=${BENCH_REPORT:-$ROOT/loadtest/reports/tunnel-$(date +%F).md}

QUIC_PORT=$((BASE + 4))
API_PORT=$((BASE + 5))
IPERF_PORT=$((BASE + 20))
FWD_M87=$((BASE + 21))
FWD_SSH=$((BASE + 22))
FWD_SSHJ=$((BASE + 23))
HOL_PORT=$((BASE + 30))
HOL_M87=$((BASE + 31))
HOL_SSH=$((BASE + 32))
HOL_SSHJ=$((BASE + 33))
HOL_BLOCKED=${BENCH_HOL_BLOCKED:-6}
SSHD_DEV_PORT=$((BASE + 40))
SSHD_JUMP_PORT=$((BASE + 41))
DEVICE=bench

BIN_DIR=${BENCH_BIN_DIR:-$ROOT/target/release}
M87=$BIN_DIR/m87
M87_SERVER=$BIN_DIR/m87-server
SSHD=/usr/sbin/sshd

BENCH_NAME=bench
# log, die, the cleanup of PIDS / D / WATCHDOG on exit, waits and load helpers.
source "$ROOT/loadtest/lib/common.sh"
CREATED_RUN_SSHD=0
cleanup_more() { if [[ $CREATED_RUN_SSHD == 1 ]]; then rmdir /run/sshd 2>/dev/null; fi; }

# ---------------------------------------------------------------------------------------------
# Prerequisites.
[[ $(id -u) == 0 ]] || die "run as root: the benchmark starts its own sshd on 127.0.0.1"
need_install=()
[[ -x $SSHD ]] || need_install+=(openssh-server)
command -v ssh >/dev/null || need_install+=(openssh-client)
command -v iperf3 >/dev/null || need_install+=(iperf3)
command -v hyperfine >/dev/null || need_install+=(hyperfine)
command -v jq >/dev/null || need_install+=(jq)
if ((${#need_install[@]})); then
  [[ ${BENCH_NO_INSTALL:-0} == 1 ]] && die "missing: ${need_install[*]}"
  log "installing ${need_install[*]} (apt-get)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_install[@]}" >/dev/null
fi
for c in ss ps awk sha256sum timeout ssh-keygen scp; do
  command -v "$c" >/dev/null || die "missing command: $c"
done

port_busy() { # port proto(t|u)
  [[ -n $(ss -Hn"$2"l "sport = :$1" 2>/dev/null) ]]
}
for p in $IPERF_PORT $FWD_M87 $FWD_SSH $FWD_SSHJ $HOL_PORT $HOL_M87 $HOL_SSH $HOL_SSHJ $SSHD_DEV_PORT $SSHD_JUMP_PORT $API_PORT; do
  ! port_busy "$p" t || die "TCP port 127.0.0.1:$p is in use; set BENCH_PORT_BASE"
done
! port_busy "$QUIC_PORT" u || die "UDP port $QUIC_PORT is in use; set BENCH_PORT_BASE"

if [[ ${BENCH_SKIP_BUILD:-0} != 1 && -z ${BENCH_BIN_DIR:-} ]]; then
  log "cargo build --release --bins"
  cargo build --release --bins
fi
[[ -x $M87 && -x $M87_SERVER ]] || die "no release binaries in $BIN_DIR"

( sleep "$TIMEOUT"; kill -TERM $$ ) 2>/dev/null &
WATCHDOG=$!

D=$(mktemp -d /tmp/m87-bench.XXXXXX)
mkdir -p "$D/raw"
log "working in $D"

# ---------------------------------------------------------------------------------------------
# Helpers.
# Resident memory of a process in KiB (field VmRSS or VmHWM of /proc/PID/status).
mem_kib() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
# A process and all its descendants.
tree_pids() {
  ps -e -o pid=,ppid= | awk -v root="$1" '
    { parent[$1] = $2; pids[NR] = $1 }
    END {
      keep[root] = 1; changed = 1
      while (changed) { changed = 0
        for (i in pids) { p = pids[i]; if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; changed = 1 } } }
      for (p in keep) print p
    }'
}
# CPU clock ticks (user + system) used so far by the processes of a tree.
cpu_ticks() {
  local total=0 pid t
  for pid in $(tree_pids "$1"); do
    t=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{ print $12 + $13 }') || true
    total=$((total + ${t:-0}))
  done
  echo "$total"
}
CLK_TCK=$(getconf CLK_TCK)
pct() { awk -v a="$1" -v b="$2" -v s="$3" -v hz="$CLK_TCK" 'BEGIN { printf "%.0f", (b - a) / hz / s * 100 }'; }
gbit() { awk -v b="$1" 'BEGIN { printf "%.2f", b / 1e9 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && b > 0) printf "%.2f", a / b; else print "n/a" }'; }

# ---------------------------------------------------------------------------------------------
# m87: server (control plane + relay), device runtime, approval.
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
log "starting the device runtime"
env M87_CONFIG_DIR="$D/device" M87_APPROVAL_POLL_SECS=1 \
  "$M87" runtime run --email admin@localhost --name "$DEVICE" >"$D/runtime.log" 2>&1 &
RUNTIME_PID=$!
PIDS+=("$RUNTIME_PID")
wait_for_line "$D/runtime.log" "registration request" 30 "$RUNTIME_PID"

M87_API_KEY=$(cat "$D/data/admin.key")
export M87_API_KEY M87_CONFIG_DIR=$D/ws
"$M87" devices approve "$DEVICE" >"$D/approve.log" 2>&1 || { cat "$D/approve.log" >&2; die "approve failed"; }
wait_for_line "$D/runtime.log" "tunnel connected" 60 "$RUNTIME_PID"
timeout 30 "$M87" "$DEVICE" exec -- true || die "m87 $DEVICE exec -- true failed"
log "m87 device '$DEVICE' is connected"

# ---------------------------------------------------------------------------------------------
# OpenSSH: two sshd on loopback (the "device" and the jump host), keys made for this run.
S=$D/ssh
mkdir -p "$S"
chmod 700 "$S"
ssh-keygen -q -t ed25519 -N '' -C bench-host -f "$S/host_ed25519"
ssh-keygen -q -t ed25519 -N '' -C bench-client -f "$S/id_ed25519"
cp "$S/id_ed25519.pub" "$S/authorized_keys"
USER_NAME=$(id -un)
for role in dev jump; do
  port=$SSHD_DEV_PORT
  [[ $role == jump ]] && port=$SSHD_JUMP_PORT
  cat >"$S/sshd_$role.conf" <<EOF
# Temporary sshd for the benchmark ($role). Everything else is the OpenSSH default.
ListenAddress 127.0.0.1:$port
HostKey $S/host_ed25519
PidFile $S/sshd_$role.pid
AuthorizedKeysFile $S/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PrintMotd no
Subsystem sftp /usr/lib/openssh/sftp-server
EOF
done
cat >"$S/ssh_config" <<EOF
# Temporary client configuration for the benchmark. Cipher, KEX and MACs: OpenSSH defaults.
Host *
  User $USER_NAME
  IdentityFile $S/id_ed25519
  IdentitiesOnly yes
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  GlobalKnownHostsFile /dev/null
  BatchMode yes
  LogLevel ERROR
Host dev
  HostName 127.0.0.1
  Port $SSHD_DEV_PORT
Host jump
  HostName 127.0.0.1
  Port $SSHD_JUMP_PORT
EOF
if [[ ! -d /run/sshd ]]; then
  mkdir -m 0755 /run/sshd # sshd's privilege separation directory; removed at the end
  CREATED_RUN_SSHD=1
fi
for role in dev jump; do
  "$SSHD" -t -f "$S/sshd_$role.conf" || die "sshd rejects $S/sshd_$role.conf"
  "$SSHD" -D -e -f "$S/sshd_$role.conf" >"$D/sshd_$role.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  if [[ $role == dev ]]; then SSHD_DEV_PID=$pid; else SSHD_JUMP_PID=$pid; fi
done
wait_for_port "$SSHD_DEV_PORT" 10 "$SSHD_DEV_PID"
wait_for_port "$SSHD_JUMP_PORT" 10 "$SSHD_JUMP_PID"
SSH=(ssh -F "$S/ssh_config")
timeout 30 "${SSH[@]}" dev true || die "ssh dev true failed (see $D/sshd_dev.log)"
timeout 30 "${SSH[@]}" -J jump dev true || die "ssh -J jump dev true failed (see $D/sshd_jump.log)"
SSH_CIPHER=$(timeout 30 "${SSH[@]}" -v dev true 2>&1 | tr -d '\r' | sed -n 's/.*kex: client->server cipher: \([^ ]*\) MAC: \([^ ]*\).*/\1 (MAC \2)/p' | head -1)
SSH_KEX=$(timeout 30 "${SSH[@]}" -v dev true 2>&1 | tr -d '\r' | sed -n 's/.*kex: algorithm: \(.*\)/\1/p' | head -1)
log "sshd up on 127.0.0.1:$SSHD_DEV_PORT (device) and :$SSHD_JUMP_PORT (jump); cipher $SSH_CIPHER"

# ---------------------------------------------------------------------------------------------
# Forwards to an iperf3 server on the device side (this machine, loopback).
iperf3 -s -B 127.0.0.1 -p "$IPERF_PORT" >"$D/iperf3-server.log" 2>&1 &
IPERF_PID=$!
PIDS+=("$IPERF_PID")
wait_for_port "$IPERF_PORT" 10 "$IPERF_PID"

"$M87" "$DEVICE" forward "$FWD_M87:$IPERF_PORT" "$HOL_M87:$HOL_PORT" >"$D/forward-m87.log" 2>&1 &
FWD_M87_PID=$!
PIDS+=("$FWD_M87_PID")
"${SSH[@]}" -N -o ExitOnForwardFailure=yes -L "$FWD_SSH:127.0.0.1:$IPERF_PORT" -L "$HOL_SSH:127.0.0.1:$HOL_PORT" dev >"$D/forward-ssh.log" 2>&1 &
FWD_SSH_PID=$!
PIDS+=("$FWD_SSH_PID")
"${SSH[@]}" -N -o ExitOnForwardFailure=yes -J jump -L "$FWD_SSHJ:127.0.0.1:$IPERF_PORT" -L "$HOL_SSHJ:127.0.0.1:$HOL_PORT" dev >"$D/forward-sshj.log" 2>&1 &
FWD_SSHJ_PID=$!
PIDS+=("$FWD_SSHJ_PID")
wait_for_line "$D/forward-m87.log" "press Ctrl-C to stop" 30 "$FWD_M87_PID"
wait_for_port "$FWD_M87" 10 "$FWD_M87_PID"
wait_for_port "$FWD_SSH" 30 "$FWD_SSH_PID"
wait_for_port "$FWD_SSHJ" 30 "$FWD_SSHJ_PID"
sleep 2

IDLE_SERVER_RSS=$(mem_kib "$SERVER_PID" VmRSS)
IDLE_RUNTIME_RSS=$(mem_kib "$RUNTIME_PID" VmRSS)
IDLE_FWD_RSS=$(mem_kib "$FWD_M87_PID" VmRSS)
log "idle RSS: server $(mib "$IDLE_SERVER_RSS") MiB, runtime $(mib "$IDLE_RUNTIME_RSS") MiB"

# ---------------------------------------------------------------------------------------------
# Throughput.
declare -A TP CPU CPG LOAD
PEAK_SERVER_RSS=0
PEAK_RUNTIME_RSS=0
PEAK_FWD_RSS=0
sample_rss() { # writes "server runtime forward" KiB lines every 0.25 s until killed
  while :; do
    echo "$(mem_kib "$SERVER_PID" VmRSS) $(mem_kib "$RUNTIME_PID" VmRSS) $(mem_kib "$FWD_M87_PID" VmRSS)"
    sleep 0.25
  done
}
run_iperf() { # path streams dir(up|down) round
  local path=$1 streams=$2 dir=$3 round=$4 port client relay device
  case $path in
    m87) port=$FWD_M87; client=$FWD_M87_PID; relay=$SERVER_PID; device=$RUNTIME_PID ;;
    ssh) port=$FWD_SSH; client=$FWD_SSH_PID; relay=""; device=$SSHD_DEV_PID ;;
    sshj) port=$FWD_SSHJ; client=$FWD_SSHJ_PID; relay=$SSHD_JUMP_PID; device=$SSHD_DEV_PID ;;
  esac
  local args=(-c 127.0.0.1 -p "$port" -t "$DURATION" -O 1 -P "$streams" -J)
  [[ $dir == down ]] && args+=(-R)
  local key="$path/$streams/$dir#$round" out="$D/raw/iperf-$path-$streams-$dir-$round.json" sampler=""
  local c0 r0=0 d0 c1 r1=0 d1 t0 t1
  LOAD[$key]=$(loadavg)
  if [[ $path == m87 && $streams == 8 ]]; then
    sample_rss >"$D/raw/rss-$streams-$dir-$round.txt" &
    sampler=$!
  fi
  c0=$(cpu_ticks "$client"); d0=$(cpu_ticks "$device"); [[ -n $relay ]] && r0=$(cpu_ticks "$relay")
  t0=$(date +%s.%N)
  log "round $round: iperf3 ${args[*]}   ($path)"
  timeout $((DURATION + 40)) iperf3 "${args[@]}" >"$out" || true
  t1=$(date +%s.%N)
  c1=$(cpu_ticks "$client"); d1=$(cpu_ticks "$device"); [[ -n $relay ]] && r1=$(cpu_ticks "$relay")
  if [[ -n $sampler ]]; then
    kill "$sampler" && wait "$sampler" 2>/dev/null || true
  fi
  local secs err rcpu="–"
  secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
  err=$(jq -r '.error // empty' "$out" 2>/dev/null || echo "no JSON output")
  if [[ -n $err ]]; then
    log "iperf3 failed ($key): $err"
    TP[$key]="failed: $err"
  else
    TP[$key]=$(gbit "$(jq '.end.sum_received.bits_per_second' "$out")")
  fi
  [[ -n $relay ]] && rcpu=$(pct "$r0" "$r1" "$secs")
  CPU[$key]="$(pct "$c0" "$c1" "$secs") / $rcpu / $(pct "$d0" "$d1" "$secs")"
  # CPU seconds of the three forwarding processes per GB moved (omitted second included).
  local bytes
  bytes=$(jq '[.intervals[]?.sum.bytes] | add // 0' "$out" 2>/dev/null || echo 0)
  CPG[$key]=$(awk -v t=$(((c1 - c0) + (r1 - r0) + (d1 - d0))) -v b="$bytes" -v hz="$CLK_TCK" \
    'BEGIN { if (b > 0) printf "%.1f", t / hz / (b / 1e9); else print "–" }')
  log "  -> ${TP[$key]} Gbit/s, CPU% client/relay/device ${CPU[$key]}, load ${LOAD[$key]}"
}
# The median round of a test becomes its result (its CPU figures too); RANGE keeps min–max and
# LOADS the load averages of every round.
summarize() { # key
  local key=$1 r lines="" n mid
  LOADS[$key]=""
  for ((r = 1; r <= ROUNDS; r++)); do
    LOADS[$key]+="${LOADS[$key]:+ }${LOAD[$key#$r]}"
    [[ ${TP[$key#$r]} == failed* ]] || lines+="${TP[$key#$r]} $r"$'\n'
  done
  n=$(grep -c . <<<"$lines" || true)
  FAILS[$key]=$((ROUNDS - n))
  if ((n == 0)); then
    TP[$key]="failed (every round)"; CPU[$key]="–"; CPG[$key]="–"; RANGE[$key]="–"
    return
  fi
  mid=$(sort -n <<<"$lines" | grep . | sed -n "$(((n + 1) / 2))p" | cut -d' ' -f2)
  TP[$key]=${TP[$key#$mid]}
  CPU[$key]=${CPU[$key#$mid]}
  CPG[$key]=${CPG[$key#$mid]}
  RANGE[$key]="$(sort -n <<<"$lines" | grep . | head -1 | cut -d' ' -f1)–$(sort -n <<<"$lines" | grep . | tail -1 | cut -d' ' -f1)"
  ((n == ROUNDS)) || RANGE[$key]+=" ($((ROUNDS - n)) of $ROUNDS rounds failed)"
}
declare -A LOADS RANGE FAILS
wait_quiet "before the throughput tests"
# Rounds interleave the three paths so that a change in the machine's load hits all of them.
for ((round = 1; round <= ROUNDS; round++)); do
  for streams in 1 8; do
    for dir in up down; do
      for path in m87 ssh sshj; do
        run_iperf "$path" "$streams" "$dir" "$round"
        sleep 1
      done
    done
  done
done
for streams in 1 8; do
  for dir in up down; do
    for path in m87 ssh sshj; do summarize "$path/$streams/$dir"; done
  done
done
for f in "$D"/raw/rss-8-*.txt; do
  read -r s r fw < <(awk 'BEGIN { s = r = f = 0 } { if ($1 > s) s = $1; if ($2 > r) r = $2; if ($3 > f) f = $3 } END { print s, r, f }' "$f")
  ((s > PEAK_SERVER_RSS)) && PEAK_SERVER_RSS=$s
  ((r > PEAK_RUNTIME_RSS)) && PEAK_RUNTIME_RSS=$r
  ((fw > PEAK_FWD_RSS)) && PEAK_FWD_RSS=$fw
done
AFTER_SERVER_RSS=$(mem_kib "$SERVER_PID" VmRSS)
AFTER_RUNTIME_RSS=$(mem_kib "$RUNTIME_PID" VmRSS)
HWM_SERVER=$(mem_kib "$SERVER_PID" VmHWM)
HWM_RUNTIME=$(mem_kib "$RUNTIME_PID" VmHWM)
# sshd memory under the same kind of load, for context: the device-side sshd processes of the
# direct forward during an 8-stream run.
SSHD_TREE_RSS=0
timeout 60 iperf3 -c 127.0.0.1 -p "$FWD_SSH" -t 4 -P 8 >/dev/null 2>&1 &
SSH_LOAD_PID=$!
sleep 2
for pid in $(tree_pids "$SSHD_DEV_PID"); do
  [[ $pid == "$SSHD_DEV_PID" ]] && continue
  k=$(mem_kib "$pid" VmRSS 2>/dev/null || echo 0)
  SSHD_TREE_RSS=$((SSHD_TREE_RSS + ${k:-0}))
done
SSH_CLIENT_RSS=$(mem_kib "$FWD_SSH_PID" VmRSS)
wait "$SSH_LOAD_PID" || true

# ---------------------------------------------------------------------------------------------
# Exec wall time.
wait_quiet "before the exec part"
EXEC_LOAD_BEFORE=$(loadavg)
log "hyperfine: exec"
timeout 900 hyperfine -N --style basic --warmup "$EXEC_WARMUP" --runs "$EXEC_RUNS" \
  --export-json "$D/raw/exec.json" \
  -n "m87 $DEVICE exec -- true" "$M87 $DEVICE exec -- true" \
  -n "ssh dev true" "ssh -F $S/ssh_config dev true" \
  -n "ssh -J jump dev true" "ssh -F $S/ssh_config -J jump dev true" >"$D/exec.txt" 2>&1 ||
  { cat "$D/exec.txt" >&2; die "hyperfine exec failed"; }
EXEC_LOAD=$(loadavg)

# ---------------------------------------------------------------------------------------------
# Copy of a file.
CP_SRC=$D/cp-src.bin
head -c "${CP_MB}M" /dev/urandom >"$CP_SRC"
SRC_SUM=$(sha256sum "$CP_SRC" | cut -d' ' -f1)
M87_HAS_CP=0
CP_HELP=$("$M87" cp --help 2>&1 || true)
if grep -q '^Usage: m87 cp' <<<"$CP_HELP"; then M87_HAS_CP=1; fi
cp_cmds=(-n "scp dev" "scp -F $S/ssh_config $CP_SRC dev:$D/cp-dst-scp"
  -n "scp -J jump dev" "scp -F $S/ssh_config -J jump $CP_SRC dev:$D/cp-dst-scpj")
if [[ $M87_HAS_CP == 1 ]]; then
  cp_cmds=(-n "m87 cp" "$M87 cp $CP_SRC $DEVICE:$D/cp-dst-m87" "${cp_cmds[@]}")
fi
wait_quiet "before the copy part"
CP_LOAD_BEFORE=$(loadavg)
log "hyperfine: copy of ${CP_MB} MB (m87 cp available: $M87_HAS_CP)"
timeout 900 hyperfine -N --style basic --warmup 1 --runs "$CP_RUNS" --export-json "$D/raw/cp.json" "${cp_cmds[@]}" \
  >"$D/cp.txt" 2>&1 || { cat "$D/cp.txt" >&2; die "hyperfine cp failed"; }
CP_LOAD=$(loadavg)
CP_CHECK=""
for dst in "$D/cp-dst-m87" "$D/cp-dst-scp" "$D/cp-dst-scpj"; do
  [[ -e $dst ]] || continue
  if [[ $(sha256sum "$dst" | cut -d' ' -f1) == "$SRC_SUM" ]]; then
    CP_CHECK+="${CP_CHECK:+, }$(basename "$dst") identical"
  else
    CP_CHECK+="${CP_CHECK:+, }$(basename "$dst") DIFFERS"
  fi
done

# ---------------------------------------------------------------------------------------------
# Independence of the connections of one forward: BENCH_HOL_BLOCKED connections through the
# forward whose reader never reads, then one more connection that reads (hol-probe.py); while
# the stalled connections are held, another session on the same device runs `exec -- true`.
declare -A HOL_MB HOL_FIRST HOL_EXEC
HAVE_PY=0
command -v python3 >/dev/null && HAVE_PY=1
if [[ $HAVE_PY == 1 ]]; then
  for path in m87 ssh sshj; do
    case $path in
      m87) fp=$HOL_M87; exec_cmd=("$M87" "$DEVICE" exec -- true) ;;
      ssh) fp=$HOL_SSH; exec_cmd=("${SSH[@]}" dev true) ;;
      sshj) fp=$HOL_SSHJ; exec_cmd=("${SSH[@]}" -J jump dev true) ;;
    esac
    log "stalled-reader probe through $path ($HOL_BLOCKED stalled connections)"
    timeout 60 python3 "$ROOT/loadtest/hol-probe.py" --forward-port "$fp" --server-port "$HOL_PORT" \
      --blocked "$HOL_BLOCKED" --fill 6 --probe 6 >"$D/raw/hol-$path.json" 2>"$D/hol-$path.log" &
    probe_pid=$!
    PIDS+=("$probe_pid")
    sleep 4
    t0=$(date +%s%N)
    if timeout 30 "${exec_cmd[@]}" >/dev/null 2>&1; then
      HOL_EXEC[$path]=$((($(date +%s%N) - t0) / 1000000))
    else
      HOL_EXEC[$path]="failed after $((($(date +%s%N) - t0) / 1000000))"
    fi
    wait "$probe_pid" || true
    untrack "$probe_pid"
    if jq -e . "$D/raw/hol-$path.json" >/dev/null 2>&1; then
      HOL_MB[$path]=$(jq '.probe_bytes / 1e6 | . * 10 | round / 10' "$D/raw/hol-$path.json")
      HOL_FIRST[$path]=$(jq -r 'if .first_byte_after == null then "never" else (.first_byte_after * 1000 | round | tostring) + " ms" end' "$D/raw/hol-$path.json")
    else
      HOL_MB[$path]="probe failed"; HOL_FIRST[$path]="–"
      cat "$D/hol-$path.log" >&2
    fi
    log "  -> probe ${HOL_MB[$path]} MB, first byte ${HOL_FIRST[$path]}, exec ${HOL_EXEC[$path]} ms"
    sleep 2
  done
fi

# ---------------------------------------------------------------------------------------------
# Report.
log "writing $REPORT"
mkdir -p "$(dirname "$REPORT")"
CPU_MODEL=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
MEM_TOTAL=$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
GIT_REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
GIT_DIRTY=$(git -C "$ROOT" status --porcelain -- . ':!loadtest' 2>/dev/null | wc -l)
hf() { # json name field -> milliseconds
  jq -r --arg n "$2" --arg f "$3" '.results[] | select(.command == $n) | (.[$f] // 0) * 1000 | . * 10 | round / 10' "$1"
}
hf_s() { # json name field -> seconds
  jq -r --arg n "$2" --arg f "$3" '.results[] | select(.command == $n) | (.[$f] // 0) | . * 100 | round / 100' "$1"
}
tp_row() { # label streams dir
  local k="$2/$3"
  echo "| $1 | **${TP[m87/$k]}** (${RANGE[m87/$k]}) | ${TP[ssh/$k]} (${RANGE[ssh/$k]}) | ${TP[sshj/$k]} (${RANGE[sshj/$k]}) | $(ratio "${TP[m87/$k]}" "${TP[sshj/$k]}") | $(ratio "${TP[m87/$k]}" "${TP[ssh/$k]}") |"
}
verdict() { # a b (higher is better) -> met / not met
  awk -v a="$1" -v b="$2" 'BEGIN {
    if (a !~ /^[0-9.]+$/) print "**not met** (m87: " a ")"
    else if (b !~ /^[0-9.]+$/) print "n/a (OpenSSH: " b ")"
    else if (a + 0 > b + 0) print "**met**"
    else print "**not met**" }'
}
M87_EXEC_MEAN=$(hf "$D/raw/exec.json" "m87 $DEVICE exec -- true" mean)
SSH_EXEC_MEAN=$(hf "$D/raw/exec.json" "ssh dev true" mean)
{
  echo "# Tunnel benchmark: m87 next to OpenSSH ($(date +%F))"
  echo
  echo "Written by \`loadtest/bench-tunnel.sh\` on $(date -u '+%F %T UTC'). Everything runs on this one"
  echo "machine over loopback: client, relay/jump host and device share the same CPUs, so every"
  echo "number includes the cost of all hops (and their encryption) competing for $(nproc) cores."
  echo
  echo "## Machine and build"
  echo
  echo "| | |"
  echo "|---|---|"
  echo "| CPU | $CPU_MODEL |"
  echo "| cores | $(nproc) (online) |"
  echo "| memory | $MEM_TOTAL |"
  echo "| kernel | $(uname -sr) |"
  if [[ -n ${BENCH_BIN_DIR:-} ]]; then
    echo "| m87 | \`$("$M87" --version)\`, release profile, binaries from \`$BIN_DIR\`${BENCH_BUILD_NOTE:+ ($BENCH_BUILD_NOTE)} |"
  else
    echo "| m87 | \`$("$M87" --version)\`, release profile (\`cargo build --release --bins\`), commit $GIT_REV$([[ $GIT_DIRTY != 0 ]] && echo " + $GIT_DIRTY uncommitted changes outside loadtest/ in the working tree") |"
  fi
  echo "| rustc | $(rustc --version 2>/dev/null || echo unknown) |"
  echo "| OpenSSH | $(ssh -V 2>&1) |"
  echo "| ssh cipher (negotiated, defaults) | $SSH_CIPHER; KEX $SSH_KEX; host and user keys ed25519 |"
  echo "| m87 transport | QUIC (quinn) with TLS 1.3 (rustls, ring provider); m87 prefers TLS_AES_128_GCM_SHA256 on both ends (since ef385a7; AES-256-GCM before); not logged |"
  echo "| tools | $(iperf3 --version | head -1), $(hyperfine --version) |"
  echo "| load average at start of each test | shown per row; other developers share this machine |"
  echo
  echo "## 1. Port-forward throughput (iperf3, Gbit/s, receiver side)"
  echo
  echo "${DURATION} s per test after 1 s omitted (\`-O 1\`); $ROUNDS rounds, each round runs every test on"
  echo "the three paths one after the other; the table shows the median round (min–max in brackets)."
  echo "\"up\" = client → device (iperf3 default), \"down\" = device → client (\`-R\`). The iperf3 server"
  echo "runs on the device side on 127.0.0.1:$IPERF_PORT."
  echo
  echo "| test | m87 forward | ssh -L | ssh -L -J (jump) | m87 / ssh -J | m87 / ssh -L |"
  echo "|---|---:|---:|---:|---:|---:|"
  tp_row "1 stream, up" 1 up
  tp_row "1 stream, down" 1 down
  tp_row "8 streams, up" 8 up
  tp_row "8 streams, down" 8 down
  echo
  echo "CPU use during each test, % of one core: forwarding client / relay or jump host / device"
  echo "side (m87: \`m87 … forward\` / \`m87-server\` / \`m87 runtime run\`; OpenSSH: \`ssh\` incl. its"
  echo "\`-J\` proxy child / jump \`sshd\` tree / device \`sshd\` tree), from /proc/PID/stat, in the median"
  echo "round; in brackets the CPU seconds those processes spent per GB moved, a figure that depends"
  echo "less on how much CPU other work left to the test. iperf3 itself (client and server) is not"
  echo "counted. Load average (1 min) at the start of"
  echo "each round's m87 / ssh / ssh -J test in the last column."
  echo
  echo "| test | m87 | ssh -L | ssh -L -J | load avg per round (m87; ssh; ssh -J) |"
  echo "|---|---|---|---|---|"
  for streams in 1 8; do
    for dir in up down; do
      echo "| $streams stream(s), $dir | ${CPU[m87/$streams/$dir]} (${CPG[m87/$streams/$dir]}) | ${CPU[ssh/$streams/$dir]} (${CPG[ssh/$streams/$dir]}) | ${CPU[sshj/$streams/$dir]} (${CPG[sshj/$streams/$dir]}) | ${LOADS[m87/$streams/$dir]}; ${LOADS[ssh/$streams/$dir]}; ${LOADS[sshj/$streams/$dir]} |"
    done
  done
  echo
  echo "## 2. Wall time of a whole command (hyperfine, $EXEC_WARMUP warmup + $EXEC_RUNS runs, ms)"
  echo
  echo "Each run is a new process: m87 asks the control plane for a session (HTTPS), dials the relay"
  echo "(QUIC), runs \`true\` on the device and closes; ssh does a full handshake (no ControlMaster)."
  echo "Load average before / after this part: $EXEC_LOAD_BEFORE / $EXEC_LOAD."
  echo
  echo "| command | mean | ± σ | median | min | max | CPU of the client process (user + sys, mean) |"
  echo "|---|---:|---:|---:|---:|---:|---:|"
  for n in "m87 $DEVICE exec -- true" "ssh dev true" "ssh -J jump dev true"; do
    echo "| \`$n\` | $(hf "$D/raw/exec.json" "$n" mean) | $(hf "$D/raw/exec.json" "$n" stddev) | $(hf "$D/raw/exec.json" "$n" median) | $(hf "$D/raw/exec.json" "$n" min) | $(hf "$D/raw/exec.json" "$n" max) | $(awk -v u="$(hf "$D/raw/exec.json" "$n" user)" -v s="$(hf "$D/raw/exec.json" "$n" system)" 'BEGIN { printf "%.1f", u + s }') |"
  done
  echo
  echo "## 3. Copy of a ${CP_MB} MB file (random bytes, from page cache to a file on the device, s)"
  echo
  echo "hyperfine, 1 warmup + $CP_RUNS runs. OpenSSH 9 \`scp\` uses the SFTP protocol. Load average before / after: $CP_LOAD_BEFORE / $CP_LOAD."
  echo "Checksums of the copies: ${CP_CHECK:-none}."
  echo
  echo "| command | mean | ± σ | min | max | MB/s (mean) |"
  echo "|---|---:|---:|---:|---:|---:|"
  if [[ $M87_HAS_CP == 1 ]]; then
    names=("m87 cp" "scp dev" "scp -J jump dev")
  else
    echo "| \`m87 cp ./file $DEVICE:/path\` | not available in this build | | | | |"
    names=("scp dev" "scp -J jump dev")
  fi
  for n in "${names[@]}"; do
    mean=$(hf_s "$D/raw/cp.json" "$n" mean)
    echo "| \`$n\` | $mean | $(hf_s "$D/raw/cp.json" "$n" stddev) | $(hf_s "$D/raw/cp.json" "$n" min) | $(hf_s "$D/raw/cp.json" "$n" max) | $(awk -v m="$CP_MB" -v s="$mean" 'BEGIN { printf "%.0f", m * 1.048576 / s }') |"
  done
  echo
  echo "## 4. Resident memory (MiB)"
  echo
  echo "| process | idle (tunnel up, forward session open) | peak sampled during the m87 8-stream runs (every 0.25 s) | after the throughput tests | VmHWM at the end |"
  echo "|---|---:|---:|---:|---:|"
  echo "| \`m87-server\` (control plane + relay) | $(mib "$IDLE_SERVER_RSS") | $(mib "$PEAK_SERVER_RSS") | $(mib "$AFTER_SERVER_RSS") | $(mib "$HWM_SERVER") |"
  echo "| \`m87 runtime run\` (device) | $(mib "$IDLE_RUNTIME_RSS") | $(mib "$PEAK_RUNTIME_RSS") | $(mib "$AFTER_RUNTIME_RSS") | $(mib "$HWM_RUNTIME") |"
  echo "| \`m87 $DEVICE forward\` (client) | $(mib "$IDLE_FWD_RSS") | $(mib "$PEAK_FWD_RSS") | | |"
  echo
  echo "For context, OpenSSH under an 8-stream load through \`ssh -L\`: device-side sshd processes of"
  echo "the connections (without the listening sshd) $(mib "$SSHD_TREE_RSS") MiB in total, \`ssh\` client $(mib "$SSH_CLIENT_RSS") MiB."
  echo
  echo "## 5. Are the connections of one forward independent?"
  echo
  if [[ $HAVE_PY == 1 ]]; then
    echo "\`loadtest/hol-probe.py\`: a server on the device side (127.0.0.1:$HOL_PORT) sends to every"
    echo "connection as fast as it reads. Through each forward, $HOL_BLOCKED connections are opened and never"
    echo "read (a stalled consumer, e.g. a paused download); after 6 s one more connection is opened and"
    echo "reads for 6 s. While the stalled connections are held, a *separate* command runs on the same"
    echo "device (m87: a new \`exec\` session through the same device tunnel; ssh: a new connection)."
    echo
    echo "| | m87 forward | ssh -L | ssh -L -J |"
    echo "|---|---:|---:|---:|"
    echo "| MB received by the extra connection in 6 s | ${HOL_MB[m87]} | ${HOL_MB[ssh]} | ${HOL_MB[sshj]} |"
    echo "| its first byte after | ${HOL_FIRST[m87]} | ${HOL_FIRST[ssh]} | ${HOL_FIRST[sshj]} |"
    echo "| wall time of \`exec -- true\` / \`ssh … true\` meanwhile (ms) | ${HOL_EXEC[m87]} | ${HOL_EXEC[ssh]} | ${HOL_EXEC[sshj]} |"
  else
    echo "Skipped: python3 is not installed."
  fi
  echo
  echo "## Goals"
  echo
  echo "| goal | m87 | OpenSSH | result |"
  echo "|---|---:|---:|---|"
  for streams in 1 8; do
    for dir in up down; do
      k=$streams/$dir
      if ((FAILS[m87/$k] > 0)); then
        result="**not met**: iperf3 through m87 stalled (stopped after $((DURATION + 40)) s) in ${FAILS[m87/$k]} of $ROUNDS rounds"
        ((FAILS[m87/$k] < ROUNDS)) && result+="; the other rounds: $(ratio "${TP[m87/$k]}" "${TP[sshj/$k]}")×"
      else
        result="$(verdict "${TP[m87/$k]}" "${TP[sshj/$k]}") ($(ratio "${TP[m87/$k]}" "${TP[sshj/$k]}")×)"
      fi
      echo "| throughput above \`ssh -J\`, $streams stream(s) $dir (Gbit/s, median) | ${TP[m87/$k]} | ${TP[sshj/$k]} | $result |"
    done
  done
  echo "| exec wall time below \`ssh host true\` (mean, ms) | $M87_EXEC_MEAN | $SSH_EXEC_MEAN | $(verdict "$SSH_EXEC_MEAN" "$M87_EXEC_MEAN") ($(ratio "$M87_EXEC_MEAN" "$SSH_EXEC_MEAN")× the time) |"
  echo
  echo "## Commands"
  echo
  echo "Temporary directory \`\$D\` = \`$D\` (removed afterwards). Ports: relay QUIC udp/$QUIC_PORT,"
  echo "API tcp/$API_PORT, iperf3 $IPERF_PORT, forwards $FWD_M87 (m87) $FWD_SSH (ssh) $FWD_SSHJ (ssh -J),"
  echo "sshd $SSHD_DEV_PORT (device) and $SSHD_JUMP_PORT (jump host)."
  echo
  echo '```sh'
  echo "cargo build --release --bins"
  echo "# m87"
  echo "target/release/m87-server --data-dir \$D/data --api-listen 127.0.0.1:$API_PORT --quic-listen 127.0.0.1:$QUIC_PORT &"
  echo "export M87_API_URL=https://127.0.0.1:$API_PORT M87_TRUST_INVALID_CERT=true"
  echo "M87_CONFIG_DIR=\$D/device M87_APPROVAL_POLL_SECS=1 target/release/m87 runtime run --email admin@localhost --name $DEVICE &"
  echo "export M87_API_KEY=\$(cat \$D/data/admin.key) M87_CONFIG_DIR=\$D/ws"
  echo "target/release/m87 devices approve $DEVICE"
  echo "# OpenSSH (configs below; host key and client key: ssh-keygen -t ed25519)"
  echo "/usr/sbin/sshd -D -e -f \$D/ssh/sshd_dev.conf &"
  echo "/usr/sbin/sshd -D -e -f \$D/ssh/sshd_jump.conf &"
  echo "# iperf3 server on the device side, and the three forwards"
  echo "iperf3 -s -B 127.0.0.1 -p $IPERF_PORT &"
  echo "target/release/m87 $DEVICE forward $FWD_M87:$IPERF_PORT $HOL_M87:$HOL_PORT &"
  echo "ssh -F \$D/ssh/ssh_config -N -o ExitOnForwardFailure=yes -L $FWD_SSH:127.0.0.1:$IPERF_PORT -L $HOL_SSH:127.0.0.1:$HOL_PORT dev &"
  echo "ssh -F \$D/ssh/ssh_config -N -o ExitOnForwardFailure=yes -J jump -L $FWD_SSHJ:127.0.0.1:$IPERF_PORT -L $HOL_SSHJ:127.0.0.1:$HOL_PORT dev &"
  echo "# 1. throughput (each path: -P 1 and -P 8, without and with -R; $ROUNDS rounds)"
  for port in $FWD_M87 $FWD_SSH $FWD_SSHJ; do
    echo "iperf3 -c 127.0.0.1 -p $port -t $DURATION -O 1 -P 1 -J; iperf3 -c 127.0.0.1 -p $port -t $DURATION -O 1 -P 8 -J   # and each with -R"
  done
  echo "# 2. exec wall time"
  echo "hyperfine -N --warmup $EXEC_WARMUP --runs $EXEC_RUNS 'target/release/m87 $DEVICE exec -- true' 'ssh -F \$D/ssh/ssh_config dev true' 'ssh -F \$D/ssh/ssh_config -J jump dev true'"
  echo "# 3. copy"
  echo "head -c ${CP_MB}M /dev/urandom > \$D/cp-src.bin"
  if [[ $M87_HAS_CP == 1 ]]; then
    echo "hyperfine -N --warmup 1 --runs $CP_RUNS 'target/release/m87 cp \$D/cp-src.bin $DEVICE:\$D/cp-dst-m87' 'scp -F \$D/ssh/ssh_config \$D/cp-src.bin dev:\$D/cp-dst-scp' 'scp -F \$D/ssh/ssh_config -J jump \$D/cp-src.bin dev:\$D/cp-dst-scpj'"
  else
    echo "# target/release/m87 cp --help: no such command in this build"
    echo "hyperfine -N --warmup 1 --runs $CP_RUNS 'scp -F \$D/ssh/ssh_config \$D/cp-src.bin dev:\$D/cp-dst-scp' 'scp -F \$D/ssh/ssh_config -J jump \$D/cp-src.bin dev:\$D/cp-dst-scpj'"
  fi
  echo "# 4. memory: VmRSS / VmHWM from /proc/<pid>/status of m87-server and m87 runtime run"
  echo "# 5. stalled readers (the forwards above also carry $HOL_M87 / $HOL_SSH / $HOL_SSHJ -> 127.0.0.1:$HOL_PORT)"
  for port in $HOL_M87 $HOL_SSH $HOL_SSHJ; do
    echo "python3 loadtest/hol-probe.py --forward-port $port --server-port $HOL_PORT --blocked $HOL_BLOCKED --fill 6 --probe 6   # 4 s in: exec / ssh true"
  done
  echo '```'
  echo
  echo "\`\$D/ssh/sshd_dev.conf\` (\`sshd_jump.conf\` differs only in the port and pid file):"
  echo
  echo '```'
  sed "s|$D|\$D|g" "$S/sshd_dev.conf"
  echo '```'
  echo
  echo "\`\$D/ssh/ssh_config\`:"
  echo
  echo '```'
  sed "s|$D|\$D|g" "$S/ssh_config"
  echo '```'
} >"$REPORT"
log "done: $REPORT"
