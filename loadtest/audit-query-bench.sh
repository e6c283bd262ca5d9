#!/usr/bin/env bash
# Benchmark of `m87 audit` queries over a large audit trail: fills a data directory with EVENTS
# events through the real event store and audit trail (control-plane/examples/audit_fill),
# starts the real m87-server on it, and times representative filtered pages through the real
# CLI (wall time of the `m87` process) and through the REST API with curl (time of the request
# on a kept-alive HTTPS connection: the server's part), each RUNS times, p50/p99; beside them
# the same page as a plain sqlite3 query on the database file when sqlite3 is installed.
# Writes loadtest/reports/audit-query-YYYY-MM-DD.md with the machine, the commands and figures.
#
#   loadtest/audit-query-bench.sh [EVENTS] [RUNS]     # defaults: 1000000 20
#
# BENCH_DATA_DIR=dir reuses a directory filled before (by this script with BENCH_KEEP=1, or by
# audit_fill) instead of filling a new one; BENCH_SKIP_BUILD=1 runs the binaries already built;
# BENCH_BIN_DIR=dir runs other binaries (m87, m87-server; audit_fill there or in examples/);
# BENCH_REPORT=file writes the report elsewhere. A benchmark, not a test: scripts/test never runs it.
set -euo pipefail
cd "$(dirname "$0")/.."

BENCH_NAME=audit-query-bench
TIMEOUT=${BENCH_TIMEOUT:-3600}
# shellcheck source=lib/common.sh
source loadtest/lib/common.sh

EVENTS=${1:-1000000}
RUNS=${2:-20}
TARGET=${CARGO_TARGET_DIR:-target}
BIN=${BENCH_BIN_DIR:-$TARGET/release}
FILL_BIN=$BIN/examples/audit_fill
[[ -x $FILL_BIN ]] || FILL_BIN=$BIN/audit_fill

for tool in curl jq python3; do
  command -v "$tool" >/dev/null || die "$tool is missing (apt-get install $tool)"
done
if [[ ${BENCH_SKIP_BUILD:-0} != 1 ]]; then
  log "building release binaries"
  cargo build --release -p m87-server -p m87 --bins
  cargo build --release -p m87-control-plane --example audit_fill
fi

D=$(mktemp -d /tmp/m87-audit-query.XXXXXX)
(sleep "$TIMEOUT"; kill -TERM $$) 2>/dev/null &
WATCHDOG=$!
mkdir -p "$D/bin" "$D/raw" "$D/cli"
cp "$BIN/m87" "$BIN/m87-server" "$D/bin/"
[[ -n ${BENCH_DATA_DIR:-} && -s ${BENCH_DATA_DIR}/m87.db ]] || cp "$FILL_BIN" "$D/bin/audit_fill"

# --- fill ---------------------------------------------------------------------------------
if [[ -n ${BENCH_DATA_DIR:-} && -s ${BENCH_DATA_DIR}/m87.db ]]; then
  DATA=$BENCH_DATA_DIR
  log "using the filled data directory $DATA"
  FILL_CMD="(reused $DATA)"
else
  DATA=${BENCH_DATA_DIR:-$D/data}
  FILL_CMD="audit_fill --events $EVENTS --data-dir $DATA"
  log "filling $DATA with $EVENTS events"
  "$D/bin/audit_fill" --events "$EVENTS" --data-dir "$DATA" >"$D/fill.json"
fi
FILL=$DATA/audit-fill.json
[[ -s $FILL ]] || die "no $FILL: fill the directory with audit_fill"
jqf() { jq -r "$1" "$FILL"; }

# --- server -------------------------------------------------------------------------------
log "starting m87-server on $DATA"
START=$EPOCHREALTIME
"$D/bin/m87-server" --data-dir "$DATA" --api-listen 127.0.0.1:0 --quic-listen 127.0.0.1:0 \
  >"$D/server.log" 2>&1 &
SERVER_PID=$!
PIDS+=("$SERVER_PID")
wait_for_line "$D/server.log" "listening on https://" 600 "$SERVER_PID"
STARTED_MS=$(awk -v s="$START" -v e="$EPOCHREALTIME" 'BEGIN { printf "%.0f", (e - s) * 1000 }')
API=$(grep -o 'listening on https://[0-9.:]*' "$D/server.log" | head -1 | sed 's/listening on //')
[[ -s $DATA/admin.key ]] || die "no admin.key in $DATA"
ADMIN_KEY=$(<"$DATA/admin.key")
FP=$(<"$DATA/tls/fingerprint")
export M87_API_URL=$API M87_API_FINGERPRINT=$FP M87_CONFIG_DIR=$D/cli
m87() { "$D/bin/m87" "$@"; }

ORG_ADMIN=$(jqf .org_admin.email)
ORG_KEY=$(M87_API_KEY=$ADMIN_KEY m87 api-keys create --email "$ORG_ADMIN" --name audit-bench -o json | jq -r .key)
DEV=$(jqf .busy_device.name)
DEV_ID=$(jqf .busy_device.id)
ODEV=$(jqf .org_device.name)
ODEV_ID=$(jqf .org_device.id)
QDEV=$(jqf .quiet_device.name)
QDEV_ID=$(jqf .quiet_device.id)
USER_=$(jqf .busy_user.email)
T10=$(jqf .at.p10.time) T25=$(jqf .at.p25.time) T50=$(jqf .at.p50.time)
T75=$(jqf .at.p75.time) P10=$(jqf .at.p10.position) P50=$(jqf .at.p50.position)
ms_of() { python3 -c 'import sys, datetime; print(int(datetime.datetime.fromisoformat(sys.argv[1]).timestamp() * 1000))' "$1"; }
enc() { jq -rn --arg v "$1" '$v | @uri'; }

# --- measuring ----------------------------------------------------------------------------
pctl() { # file p: nearest rank
  sort -g "$1" | awk -v p="$2" '{ a[NR] = $1 } END { if (NR == 0) { print "–"; exit }
    r = int((p / 100) * NR + 0.999999); if (r < 1) r = 1; printf "%.1f", a[r] }'
}
# time_cli NAME KEY ARGS…: the m87 process's wall time, RUNS times after one warm-up.
time_cli() {
  local name=$1 key=$2 i s
  shift 2
  M87_API_KEY=$key m87 "$@" >"$D/raw/$name.cli.out" 2>&1 || { cat "$D/raw/$name.cli.out" >&2; die "m87 $* failed"; }
  : >"$D/raw/$name.cli"
  for ((i = 0; i < RUNS; i++)); do
    s=$EPOCHREALTIME
    M87_API_KEY=$key m87 "$@" >/dev/null
    awk -v s="$s" -v e="$EPOCHREALTIME" 'BEGIN { printf "%.3f\n", (e - s) * 1000 }' >>"$D/raw/$name.cli"
  done
}
# time_rest NAME KEY QUERY: GET /v1/audit?QUERY RUNS+1 times on one connection (curl reuses
# it); the first (TLS handshake) is left out. Also keeps the records' count.
time_rest() {
  local name=$1 key=$2 q=$3 args=() i
  for ((i = 0; i <= RUNS; i++)); do args+=(-o /dev/null "$API/v1/audit?$q"); done
  curl -sS --cacert "$DATA/tls/cert.pem" -H "Authorization: Bearer $key" \
    -w '%{http_code} %{time_total}\n' "${args[@]}" >"$D/raw/$name.curl"
  awk '$1 != 200 { bad = 1 } END { exit bad }' "$D/raw/$name.curl" || die "GET /v1/audit?$q: $(head -1 "$D/raw/$name.curl")"
  tail -n +2 "$D/raw/$name.curl" | awk '{ printf "%.3f\n", $2 * 1000 }' >"$D/raw/$name.rest"
  curl -sS --cacert "$DATA/tls/cert.pem" -H "Authorization: Bearer $key" "$API/v1/audit?$q" \
    | jq '.records | length' >"$D/raw/$name.count"
}
# time_sql NAME SQL: the same page in sqlite3 on the database file (warm cache: the first of 6
# runs left out), median; and its query plan.
time_sql() {
  local name=$1 sql=$2 i
  if ! command -v sqlite3 >/dev/null; then echo "–" >"$D/raw/$name.sql"; return; fi
  : >"$D/raw/$name.sqlruns"
  for ((i = 0; i < 6; i++)); do
    printf '.timer on\n%s;\n' "$sql" | sqlite3 -readonly "$DATA/m87.db" | grep '^Run Time' \
      | awk '{ printf "%.3f\n", $4 * 1000 }' >>"$D/raw/$name.sqlruns"
  done
  tail -n +2 "$D/raw/$name.sqlruns" >"$D/raw/$name.sqlwarm"
  pctl "$D/raw/$name.sqlwarm" 50 >"$D/raw/$name.sql"
  sqlite3 -readonly "$DATA/m87.db" "EXPLAIN QUERY PLAN $sql" >"$D/raw/$name.plan"
}
ROWS=()
# bench NAME "CLI args" KEY "REST query" "SQL WHERE": one row of the table.
bench() {
  local name=$1 cli=$2 key=$3 q=$4 where=$5
  log "query $name"
  if [[ $cli != -* ]]; then
    # shellcheck disable=SC2086 # the CLI arguments are words without spaces
    time_cli "$name" "$key" $cli
  fi
  time_rest "$name" "$key" "$q"
  time_sql "$name" "SELECT record FROM audit WHERE $where ORDER BY position DESC LIMIT 50"
  ROWS+=("$name|$cli|$q")
}

VIS_ORG="(user = '$ORG_ADMIN' OR scope = 'user:$ORG_ADMIN' OR scope = 'org:acme')"
T10MS=$(ms_of "$T10") T25MS=$(ms_of "$T25") T50MS=$(ms_of "$T50") T75MS=$(ms_of "$T75")
A=$ADMIN_KEY
LOAD_AT_START=$(cut -d" " -f1-3 /proc/loadavg)
bench admin-newest "audit" "$A" "max=50" "listing = 1"
bench device "$DEV audit" "$A" "device=$DEV_ID&max=50" "listing = 1 AND device_id = '$DEV_ID'"
bench quiet-device "$QDEV audit" "$A" "device=$QDEV_ID&max=50" "listing = 1 AND device_id = '$QDEV_ID'"
bench user "audit --user $USER_" "$A" "user=$(enc "$USER_")&max=50" "listing = 1 AND user = '$USER_'"
bench exec-failed "audit --action exec --outcome failed" "$A" "action=exec&outcome=failed&max=50" \
  "listing = 1 AND action IN ('exec') AND outcome = 'failed'"
bench access "audit --action access" "$A" "action=access&max=50" "listing = 1 AND action IN ('access')"
bench window "audit --since $T25 --until $T50" "$A" "since=$(enc "$T25")&until=$(enc "$T50")&max=50" \
  "listing = 1 AND time_ms >= $T25MS AND time_ms < $T50MS"
bench old-window "audit --since $T10 --until $T25 --action shell" "$A" \
  "since=$(enc "$T10")&until=$(enc "$T25")&action=shell&max=50" \
  "listing = 1 AND action IN ('shell') AND time_ms >= $T10MS AND time_ms < $T25MS"
bench until-old "audit --until $T10" "$A" "until=$(enc "$T10")&max=50" "listing = 1 AND time_ms < $T10MS"
bench deep-page "-" "$A" "before=$P10&max=50" "listing = 1 AND position < $P10"
bench deep-user "-" "$A" "user=$(enc "$USER_")&before=$P50&max=50" \
  "listing = 1 AND user = '$USER_' AND position < $P50"
bench org-admin "audit" "$ORG_KEY" "max=50" "listing = 1 AND $VIS_ORG"
bench org-admin-failed "audit --outcome failed" "$ORG_KEY" "outcome=failed&max=50" \
  "listing = 1 AND $VIS_ORG AND outcome = 'failed'"
bench org-admin-device "$ODEV audit --action exec" "$ORG_KEY" "device=$ODEV_ID&action=exec&max=50" \
  "listing = 1 AND $VIS_ORG AND device_id = '$ODEV_ID' AND action IN ('exec')"

# --- report -------------------------------------------------------------------------------
mkdir -p loadtest/reports
REPORT=${BENCH_REPORT:-loadtest/reports/audit-query-$(date -u +%F).md}
ms_or_dash() { [[ -s $1 ]] && pctl "$1" "$2" || echo "–"; }
{
  echo "# \`m87 audit\` query benchmark, $(date -u +'%F %H:%M UTC')"
  echo
  echo "## Machine"
  echo
  echo "- CPU: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores ($(lscpu | sed -n 's/^Thread(s) per core: *//p') thread(s) per core)"
  echo "- memory: $(free -g | awk '/Mem:/ {print $2}') GiB; kernel $(uname -r); data directory on $(df -T "$DATA" | awk 'NR == 2 {print $2 " (" $1 ")"}')"
  echo "- sqlite3: $(sqlite3 --version 2>/dev/null | cut -d' ' -f1 || echo none); rustc: $(rustc --version 2>/dev/null || echo unknown)"
  echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' with uncommitted changes'); load average at the start of the queries: $LOAD_AT_START"
  echo
  echo "## Commands"
  echo
  echo "    loadtest/audit-query-bench.sh $EVENTS $RUNS"
  echo "    # fills: $FILL_CMD"
  echo "    # serves: m87-server --data-dir DATA --api-listen 127.0.0.1:0 --quic-listen 127.0.0.1:0"
  echo "    # CLI:  M87_API_URL=https://ADDR M87_API_FINGERPRINT=\$(cat DATA/tls/fingerprint) M87_API_KEY=KEY m87 …"
  echo "    # REST: curl --cacert DATA/tls/cert.pem -H 'Authorization: Bearer KEY' https://ADDR/v1/audit?… (×$((RUNS + 1)) on one connection)"
  echo
  echo "## Fill"
  echo
  echo '```json'
  cat "$FILL"
  echo '```'
  echo
  echo "m87-server start on the filled directory (to \"listening\"): ${STARTED_MS} ms."
  echo
  echo "## Queries"
  echo
  echo "Each page is 50 records (the CLI's default \`--max\`), newest first. CLI = wall time of the whole"
  echo "\`m87\` process (start, TLS handshake, the requests it makes — \`m87 <device> audit\` also lists"
  echo "the devices twice to resolve the name —, printing the table), $RUNS runs after one warm-up."
  echo "REST = curl's time_total of \`GET /v1/audit\` on a kept-alive connection, $RUNS requests after"
  echo "the first: the server's catch-up of the trail, the query and the JSON. sqlite3 = the page as one"
  echo "plain SELECT (\\`SELECT record FROM audit WHERE … ORDER BY position DESC LIMIT 50\\`, visibility as one"
  echo "OR, times as time_ms ranges: the shape the SQLite store used before it learned the time high water"
  echo "and the per-scope scans) in the sqlite3 shell on the same file, median of 5 warm runs; its plans"
  echo "are at the end."
  echo
  echo "| query | command | records | CLI p50 | CLI p99 | REST p50 | REST p99 | sqlite3 |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|"
  for row in "${ROWS[@]}"; do
    IFS='|' read -r name cli q <<<"$row"
    if [[ $cli == -* ]]; then cmd="\`GET /v1/audit?$q\`"; else cmd="\`m87 $cli\`"; fi
    echo "| $name | $cmd | $(cat "$D/raw/$name.count") | $(ms_or_dash "$D/raw/$name.cli" 50) | $(ms_or_dash "$D/raw/$name.cli" 99) | $(pctl "$D/raw/$name.rest" 50) | $(pctl "$D/raw/$name.rest" 99) | $(cat "$D/raw/$name.sql") |"
  done
  echo
  echo "All times in ms. Organization admin: $ORG_ADMIN (admin of acme; sees acme's devices and their own"
  echo "records). Busy device: $DEV ($DEV_ID), quiet device: $QDEV, busy user: $USER_."
  echo
  echo "## Query plans of the plain SELECT (sqlite3 EXPLAIN QUERY PLAN)"
  echo
  for row in "${ROWS[@]}"; do
    IFS='|' read -r name _ _ <<<"$row"
    [[ -s $D/raw/$name.plan ]] || continue
    echo "- $name:"
    echo
    sed 's/^/        /' "$D/raw/$name.plan"
    echo
  done
} | tee "$REPORT"
log "report written to $REPORT"
