#!/usr/bin/env bash
# A quick A/B of port-forward throughput: m87 builds (or settings) side by side with `ssh -L -J`.
#
#   sudo loadtest/ab-forward.sh [VARIANT...]
#
# A VARIANT is `ssh` (ssh -L through a jump host) or `LABEL=BIN_DIR[,VAR=VALUE...]`: m87 and
# m87-server from BIN_DIR, with the environment variables given for all three m87 processes
# (server, runtime, forward). Default: `ssh m87=target/release`. Every round runs every variant
# once, in order, each with a fresh m87-server, runtime and forward (or a fresh ssh forward), so
# slow drifts of the machine's load hit all of them alike. Prints one line per test and the mean
# per variant: Gbit/s (iperf3, receiver side), the CPU seconds the forwarding processes spent
# per GB moved, the load average, and UDP receive-buffer drops during the test.
#
# Settings: AB_ROUNDS=3, AB_DURATION=8 (s, after 1 s omitted), AB_STREAMS=8, AB_DIR=up|down,
# AB_EXEC=0 (after the forward test of each round, the mean wall time of that many
# `m87 <device> exec -- true` runs, or `ssh -J jump dev true` for the ssh variant, in ms).
# Needs iperf3, jq, sshd and ssh (root: the temporary sshd); everything on 127.0.0.1:18900-18921.
# This is the quick check used while tuning; `bench-tunnel.sh` is the benchmark of record.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=${AB_ROUNDS:-3} DUR=${AB_DURATION:-8} STREAMS=${AB_STREAMS:-8} DIRN=${AB_DIR:-up} EXECS=${AB_EXEC:-0}
VARIANTS=("$@")
((${#VARIANTS[@]})) || VARIANTS=(ssh "m87=$ROOT/target/release")
IPERF_PORT=18900 API_PORT=18905 QUIC_PORT=18904 FWD_PORT=18911 SSHD_DEV=18920 SSHD_JUMP=18921
HZ=$(getconf CLK_TCK)
W=$(mktemp -d /tmp/m87-ab.XXXXXX)
PIDS=()
CREATED_RUN_SSHD=0
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for f in "$W"/ssh/sshd_*.pid; do [[ -f $f ]] && kill "$(cat "$f")" 2>/dev/null || true; done
  if [[ $CREATED_RUN_SSHD == 1 ]]; then rmdir /run/sshd 2>/dev/null || true; fi
  rm -rf "$W"
}
trap cleanup EXIT
for tool in iperf3 jq ssh ssh-keygen; do command -v "$tool" >/dev/null || { echo "ab-forward: needs $tool" >&2; exit 1; }; done

udp_drops() { awk '/^Udp:/ && $2 ~ /^[0-9]/ { print $6 }' /proc/net/snmp; }
ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{ print $14 + $15 }' "/proc/$p/stat" 2>/dev/null || echo 0))); done; echo "$t"; }
wait_line() { # file pattern
  local _
  for _ in $(seq 300); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "ab-forward: timed out waiting for '$2' in $1" >&2
  return 1
}

iperf3 -s -B 127.0.0.1 -p "$IPERF_PORT" >"$W/iperf3-server.log" 2>&1 &
PIDS+=($!)

ssh_setup() {
  [[ -d $W/ssh ]] && return
  local S=$W/ssh role port
  mkdir -m 700 "$S"
  ssh-keygen -q -t ed25519 -N '' -f "$S/host" && ssh-keygen -q -t ed25519 -N '' -f "$S/id"
  cp "$S/id.pub" "$S/authorized_keys"
  if [[ ! -d /run/sshd ]]; then
    mkdir -m 0755 /run/sshd # sshd's privilege separation directory; removed at the end
    CREATED_RUN_SSHD=1
  fi
  for role in dev jump; do
    port=$SSHD_DEV; [[ $role == jump ]] && port=$SSHD_JUMP
    printf '%s\n' "ListenAddress 127.0.0.1:$port" "HostKey $S/host" "PidFile $S/sshd_$role.pid" \
      "AuthorizedKeysFile $S/authorized_keys" "PermitRootLogin prohibit-password" \
      "PasswordAuthentication no" "KbdInteractiveAuthentication no" "UsePAM no" "StrictModes no" \
      >"$S/sshd_$role.conf"
    "$(command -v sshd || echo /usr/sbin/sshd)" -f "$S/sshd_$role.conf"
  done
  printf '%s\n' "Host *" "  User $(id -un)" "  IdentityFile $S/id" "  IdentitiesOnly yes" \
    "  StrictHostKeyChecking no" "  UserKnownHostsFile /dev/null" "  BatchMode yes" "  LogLevel ERROR" \
    "Host dev" "  HostName 127.0.0.1" "  Port $SSHD_DEV" "Host jump" "  HostName 127.0.0.1" "  Port $SSHD_JUMP" \
    >"$S/ssh_config"
  sleep 0.5
}

run() { # variant round
  local variant=$1 round=$2 d="$W/run-$2-${1%%=*}" pids=() port=$FWD_PORT exec_cmd=()
  mkdir -p "$d"
  if [[ $variant == ssh ]]; then
    ssh_setup
    ssh -F "$W/ssh/ssh_config" -N -o ExitOnForwardFailure=yes -J jump -L "$port:127.0.0.1:$IPERF_PORT" dev &
    pids=($!)
    sleep 1.5
    # the client with its -J proxy child, and the sshd session processes of both hosts
    pids+=($(pgrep -P "${pids[0]}" || true) $(pgrep -f '^sshd: ' || true))
    exec_cmd=(ssh -F "$W/ssh/ssh_config" -J jump dev true)
  else
    local spec=${variant#*=} bin envs=()
    bin=${spec%%,*}
    [[ $spec == *,* ]] && IFS=, read -r -a envs <<<"${spec#*,}"
    local E=(env "${envs[@]}" M87_API_URL="https://127.0.0.1:$API_PORT" M87_TRUST_INVALID_CERT=true)
    mkdir -p "$d/data" "$d/device" "$d/ws"
    "${E[@]}" "$bin/m87-server" --data-dir "$d/data" --api-listen "127.0.0.1:$API_PORT" \
      --quic-listen "127.0.0.1:$QUIC_PORT" >"$d/server.log" 2>&1 &
    pids+=($!)
    wait_line "$d/server.log" "listening on https://"
    wait_line "$d/data/admin.key" .
    "${E[@]}" M87_CONFIG_DIR="$d/device" M87_APPROVAL_POLL_SECS=1 "$bin/m87" runtime run \
      --email admin@localhost --name ab >"$d/runtime.log" 2>&1 &
    pids+=($!)
    wait_line "$d/runtime.log" "registration request"
    local key
    key=$(cat "$d/data/admin.key")
    "${E[@]}" M87_API_KEY="$key" M87_CONFIG_DIR="$d/ws" "$bin/m87" devices approve ab >/dev/null
    wait_line "$d/runtime.log" "tunnel connected"
    "${E[@]}" M87_API_KEY="$key" M87_CONFIG_DIR="$d/ws" "$bin/m87" ab forward "$port:$IPERF_PORT" \
      >"$d/forward.log" 2>&1 &
    pids+=($!)
    wait_line "$d/forward.log" "press Ctrl-C"
    sleep 1
    exec_cmd=("${E[@]}" M87_API_KEY="$key" M87_CONFIG_DIR="$d/ws" "$bin/m87" ab exec -- true)
  fi
  local args=(-c 127.0.0.1 -p "$port" -t "$DUR" -O 1 -P "$STREAMS" -J) c0 c1 e0 e1 gbit bytes
  [[ $DIRN == down ]] && args+=(-R)
  e0=$(udp_drops); c0=$(ticks "${pids[@]}")
  timeout $((DUR + 30)) iperf3 "${args[@]}" >"$d/iperf.json" || true
  c1=$(ticks "${pids[@]}"); e1=$(udp_drops)
  gbit=$(jq '.end.sum_received.bits_per_second / 1e9' "$d/iperf.json" 2>/dev/null || echo 0)
  bytes=$(jq '[.intervals[]?.sum.bytes] | add // 0' "$d/iperf.json" 2>/dev/null || echo 0)
  local exec_ms=0 t0 t1 i
  if ((EXECS > 0)); then
    "${exec_cmd[@]}" >/dev/null 2>&1 || echo "ab-forward: ${variant%%=*}: exec failed" >&2 # warm-up
    t0=$(date +%s%N)
    for ((i = 0; i < EXECS; i++)); do "${exec_cmd[@]}" >/dev/null 2>&1 || echo "ab-forward: ${variant%%=*}: exec failed" >&2; done
    t1=$(date +%s%N)
    exec_ms=$(awk -v a="$t0" -v b="$t1" -v n="$EXECS" 'BEGIN { printf "%.1f", (b - a) / 1e6 / n }')
  fi
  printf '%-12s round %d  %5.2f Gbit/s  %4.1f CPU s/GB  load %s  UDP drops %d  exec %s ms\n' "${variant%%=*}" "$round" \
    "$gbit" "$(awk -v t=$((c1 - c0)) -v b="$bytes" -v hz="$HZ" 'BEGIN { print (b > 0 ? t / hz / (b / 1e9) : 0) }')" \
    "$(cut -d' ' -f1 /proc/loadavg)" $((e1 - e0)) "$exec_ms" | tee -a "$W/results"
  if [[ $variant == ssh ]]; then kill "${pids[0]}"; else kill "${pids[@]}"; fi
  if [[ $variant == ssh ]]; then wait "${pids[0]}" 2>/dev/null || true; else wait "${pids[@]}" 2>/dev/null || true; fi
  sleep 1
}

for r in $(seq "$ROUNDS"); do
  for v in "${VARIANTS[@]}"; do run "$v" "$r"; done
done
echo "mean of $ROUNDS rounds, $STREAMS stream(s) $DIRN:"
awk '{ g[$1] += $4; c[$1] += $6; x[$1] += $(NF - 1); n[$1]++ } END { for (k in g) printf "  %-12s %5.2f Gbit/s  %4.1f CPU s/GB  exec %.1f ms\n", k, g[k] / n[k], c[k] / n[k], x[k] / n[k] }' "$W/results"
