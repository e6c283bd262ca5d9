# shellcheck shell=bash
# Written by bench-fleet.sh, which sources this file after the measurements: it reads that
# script's variables, helpers and raw results under $D and writes $REPORT.
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
