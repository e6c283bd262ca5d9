#!/usr/bin/env bash
# OpenSSH through m87 against OpenSSH to a local sshd, side by side in one run:
#   exec:  `ssh bench.m87 true`  vs  `ssh -p PORT 127.0.0.1 true` (a private sshd)
#   scp:   200 MB (SSH_BENCH_MB) up to the device and back down through m87  vs  scp with the
#          same sshd
#
#   sudo loadtest/ssh-bench.sh [BIN_DIR]        (default BIN_DIR: target/release)
#
# Starts in a temp dir: an m87-server and a runtime (no sshd on the device side is involved in
# the m87 path), and a private sshd on 127.0.0.1:18942 with its own config, host key and
# authorized key (Debian openssh-server; it is not enabled as a service). The client side uses
# one ssh_config with the m87 block (`m87 ssh enable` with HOME in the temp dir) and a Host entry
# for the sshd, the same ciphers on both paths (OpenSSH's defaults: chacha20-poly1305 first).
# Exec: SSH_BENCH_RUNS (default 30) interleaved runs each after 3 warm-ups; median, p90, min,
# max wall ms. scp: SSH_BENCH_SCP_RUNS (default 3) interleaved runs each; MB/s of each run and the
# median. Ports 18940-18942.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${1:-$ROOT/target/release}
RUNS=${SSH_BENCH_RUNS:-30}
SCP_RUNS=${SSH_BENCH_SCP_RUNS:-3}
MB=${SSH_BENCH_MB:-200}
API_PORT=18940 QUIC_PORT=18941 SSHD_PORT=18942
for tool in ssh scp ssh-keygen; do command -v "$tool" >/dev/null || { echo "ssh-bench: needs $tool (Debian openssh-client)" >&2; exit 1; }; done
[[ -x /usr/sbin/sshd ]] || { echo "ssh-bench: needs /usr/sbin/sshd (Debian openssh-server, for the side-by-side only)" >&2; exit 1; }
[[ -x $BIN/m87 && -x $BIN/m87-server ]] || { echo "ssh-bench: build first: cargo build --release -p m87 -p m87-server" >&2; exit 1; }
W=$(mktemp -d /tmp/m87-sshbench.XXXXXX)
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT
wait_line() { # file pattern
  local _
  for _ in $(seq 300); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "ssh-bench: timed out waiting for '$2' in $1" >&2
  return 1
}

# The private sshd.
mkdir -p "$W/sshd" "$W/home/.ssh" /run/sshd
ssh-keygen -q -t ed25519 -N '' -f "$W/sshd/host" </dev/null
ssh-keygen -q -t ed25519 -N '' -f "$W/home/.ssh/id" </dev/null
cp "$W/home/.ssh/id.pub" "$W/sshd/authorized_keys"
cat >"$W/sshd/sshd_config" <<CFG
Port $SSHD_PORT
ListenAddress 127.0.0.1
HostKey $W/sshd/host
AuthorizedKeysFile $W/sshd/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
PidFile $W/sshd/pid
Subsystem sftp internal-sftp
# Debian's bash sources ~/.bashrc when sshd runs it (SSH_CLIENT set, SHLVL < 2); m87's device
# runs bash -c without that. SHLVL=1 makes the sshd side run the same work (no ~/.bashrc).
SetEnv SHLVL=1
CFG
/usr/sbin/sshd -D -e -f "$W/sshd/sshd_config" 2>"$W/sshd/log" &
PIDS+=($!)
echo "[127.0.0.1]:$SSHD_PORT $(cat "$W/sshd/host.pub")" >"$W/home/.ssh/known_hosts_direct"

# m87: server, device runtime, operator.
E=(env M87_API_URL="https://127.0.0.1:$API_PORT" M87_TRUST_INVALID_CERT=true)
mkdir -p "$W/data" "$W/device" "$W/ws" "$W/dst"
"${E[@]}" "$BIN/m87-server" --data-dir "$W/data" --api-listen "127.0.0.1:$API_PORT" \
  --quic-listen "127.0.0.1:$QUIC_PORT" >"$W/server.log" 2>&1 &
PIDS+=($!)
wait_line "$W/server.log" "listening on https://"
wait_line "$W/data/admin.key" .
"${E[@]}" M87_CONFIG_DIR="$W/device" M87_APPROVAL_POLL_SECS=1 "$BIN/m87" runtime run \
  --email admin@localhost --name bench >"$W/runtime.log" 2>&1 &
PIDS+=($!)
wait_line "$W/runtime.log" "registration request"
KEY=$(cat "$W/data/admin.key")
OP=("${E[@]}" M87_API_KEY="$KEY" M87_CONFIG_DIR="$W/ws" HOME="$W/home")
"${OP[@]}" "$BIN/m87" devices approve bench >/dev/null
wait_line "$W/runtime.log" "tunnel connected"
"${OP[@]}" "$BIN/m87" ssh enable >/dev/null
cat >>"$W/home/.ssh/config" <<CFG

Host direct
    HostName 127.0.0.1
    Port $SSHD_PORT
    IdentityFile $W/home/.ssh/id
    UserKnownHostsFile $W/home/.ssh/known_hosts_direct
    StrictHostKeyChecking yes
CFG
CFG_FILE=$W/home/.ssh/config
SSH=(ssh -F "$CFG_FILE" -o BatchMode=yes)
SCP=(scp -F "$CFG_FILE" -o BatchMode=yes)
# SSH_BENCH_CIPHER=aes128-gcm@openssh.com (for instance) makes both scp paths use that cipher.
[[ -n ${SSH_BENCH_CIPHER:-} ]] && SCP+=(-c "$SSH_BENCH_CIPHER")

ms() { # command... → wall ms of one run
  local t0 t1
  t0=$(date +%s%N)
  "$@" >/dev/null 2>&1 || { echo "ssh-bench: failed: $*" >&2; exit 1; }
  t1=$(date +%s%N)
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f\n", (b - a) / 1e6 }'
}
direct_true() { "${SSH[@]}" direct true; }
# The same sshd with the key exchange russh uses (OpenSSH 9 prefers sntrup761x25519-sha512).
direct_x25519_true() { "${SSH[@]}" -o KexAlgorithms=curve25519-sha256 direct true; }
m87_true() { "${OP[@]}" "${SSH[@]}" bench.m87 true; }
for _ in 1 2 3; do ms direct_true >/dev/null; ms direct_x25519_true >/dev/null; ms m87_true >/dev/null; done
for ((i = 0; i < RUNS; i++)); do
  ms direct_true >>"$W/exec-direct"
  ms direct_x25519_true >>"$W/exec-direct-x25519"
  ms m87_true >>"$W/exec-m87"
done
stats() { # file → median p90 min max
  sort -n "$1" | awk '{ v[NR] = $1 } END {
    p = int(NR * 0.9 + 0.999); if (p > NR) p = NR
    m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
    printf "%.1f %.1f %.1f %.1f\n", m, v[p], v[1], v[NR] }'
}
read -r dm dp dmin dmax < <(stats "$W/exec-direct")
read -r xm xp xmin xmax < <(stats "$W/exec-direct-x25519")
read -r mm mp mmin mmax < <(stats "$W/exec-m87")
echo "ssh exec round trips, $RUNS runs each, interleaved ($(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg))"
printf '  %-36s median %7.1f ms  p90 %7.1f ms  min %7.1f  max %7.1f\n' \
  "ssh direct true (local sshd)" "$dm" "$dp" "$dmin" "$dmax" \
  "ssh direct true (x25519 kex)" "$xm" "$xp" "$xmin" "$xmax" \
  "ssh bench.m87 true" "$mm" "$mp" "$mmin" "$mmax"
awk -v a="$mm" -v b="$dm" -v c="$xm" 'BEGIN { printf "  ratio m87/direct (medians): %.2fx; against the x25519 run %.2fx (goal <= 1.2x)\n", a / b, a / c }'

head -c $((MB * 1024 * 1024)) /dev/urandom >"$W/blob"
rate() { # seconds-ms → MB/s
  awk -v ms="$1" -v mb="$MB" 'BEGIN { printf "%.1f\n", mb / (ms / 1000) }'
}
for ((i = 0; i < SCP_RUNS; i++)); do
  rm -f "$W/dst/blob"
  rate "$(ms "${SCP[@]}" "$W/blob" "direct:$W/dst/blob")" >>"$W/scp-direct"
  cmp -s "$W/blob" "$W/dst/blob" || { echo "ssh-bench: direct scp corrupted the file" >&2; exit 1; }
  rm -f "$W/dst/blob"
  rate "$(ms "${OP[@]}" "${SCP[@]}" "$W/blob" "bench.m87:$W/dst/blob")" >>"$W/scp-m87"
  cmp -s "$W/blob" "$W/dst/blob" || { echo "ssh-bench: m87 scp corrupted the file" >&2; exit 1; }
  rm -f "$W/down"
  rate "$(ms "${SCP[@]}" "direct:$W/dst/blob" "$W/down")" >>"$W/down-direct"
  cmp -s "$W/blob" "$W/down" || { echo "ssh-bench: direct scp down corrupted the file" >&2; exit 1; }
  rm -f "$W/down"
  rate "$(ms "${OP[@]}" "${SCP[@]}" "bench.m87:$W/dst/blob" "$W/down")" >>"$W/down-m87"
  cmp -s "$W/blob" "$W/down" || { echo "ssh-bench: m87 scp down corrupted the file" >&2; exit 1; }
done
med() { sort -n "$1" | awk '{ v[NR] = $1 } END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.1f\n", m }'; }
sd=$(med "$W/scp-direct") sm=$(med "$W/scp-m87")
echo "scp of $MB MB up, $SCP_RUNS runs each, interleaved"
echo "  scp to local sshd:      $(paste -sd' ' "$W/scp-direct") MB/s (median $sd)"
echo "  scp to bench.m87:       $(paste -sd' ' "$W/scp-m87") MB/s (median $sm)"
awk -v a="$sm" -v b="$sd" 'BEGIN { printf "  ratio m87/direct (medians): %.2fx (goal >= 0.8x)\n", a / b }'
dd=$(med "$W/down-direct") dm2=$(med "$W/down-m87")
echo "scp of $MB MB down, $SCP_RUNS runs each, interleaved"
echo "  scp from local sshd:    $(paste -sd' ' "$W/down-direct") MB/s (median $dd)"
echo "  scp from bench.m87:     $(paste -sd' ' "$W/down-m87") MB/s (median $dm2)"
awk -v a="$dm2" -v b="$dd" 'BEGIN { printf "  ratio m87/direct (medians): %.2fx (goal >= 0.8x)\n", a / b }'
