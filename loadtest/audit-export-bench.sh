#!/usr/bin/env bash
# Benchmark of the audit export: records per second to a local HTTP sink (Splunk HEC and the
# webhook, answered by an in-process receiver) and to a real rsyslogd over TCP, and the lag from
# append to acknowledgement (p50/p99) at a steady rate. Writes
# loadtest/reports/audit-export-YYYY-MM-DD.md with the machine, the command and the figures.
#
#   loadtest/audit-export-bench.sh [BACKLOG] [RATE] [SECONDS]    # defaults: 200000 20000 10
#
# Needs rsyslogd (Debian package rsyslog). A benchmark, not a test: scripts/test never runs it.
# BENCH_SKIP_BUILD=1 runs the binary already built.
set -euo pipefail
cd "$(dirname "$0")/.."

BACKLOG=${1:-200000}
RATE=${2:-20000}
SECONDS_=${3:-10}
TARGET=${CARGO_TARGET_DIR:-target}
BIN="$TARGET/release/examples/audit_export_bench"

[ -x /usr/sbin/rsyslogd ] || command -v rsyslogd >/dev/null 2>&1 \
  || { echo "audit-export-bench: rsyslogd is missing (apt-get install rsyslog)" >&2; exit 1; }

if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
  cargo build --release -p m87-audit-export --example audit_export_bench
fi

mkdir -p loadtest/reports
REPORT="loadtest/reports/audit-export-$(date -u +%F).md"
CMD="$BIN $BACKLOG $RATE $SECONDS_"
OUT=$(timeout 600 "$BIN" "$BACKLOG" "$RATE" "$SECONDS_")

{
  echo "# Audit export benchmark, $(date -u +'%F %H:%M UTC')"
  echo
  echo "## Machine"
  echo
  echo "- CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores"
  echo "- memory: $(free -g | awk '/Mem:/ {print $2}') GiB; kernel $(uname -r)"
  echo "- rsyslogd: $(/usr/sbin/rsyslogd -v 2>/dev/null | head -1)"
  echo "- rustc: $(rustc --version)"
  echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo
  echo "## Command"
  echo
  echo "    loadtest/audit-export-bench.sh $BACKLOG $RATE $SECONDS_"
  echo "    # runs: $CMD"
  echo
  echo "Backlog: $BACKLOG entries appended first, then exported as fast as the sink acknowledges."
  echo "Steady rate: entries appended every 10 ms at the rate shown for $SECONDS_ s, with a notify after"
  echo "each append; lag = append to acknowledgement (the saved cursor) of every entry; for syslog,"
  echo "which has no acknowledgement, that is the write to the TCP connection. Everything on this"
  echo "machine: the in-memory source, the exporter, the receiver (an in-process axum server"
  echo "counting lines, or rsyslogd writing every message to a file; the count at the end checks it)."
  echo "Load average before the run: $(cut -d' ' -f1-3 /proc/loadavg) (other builds share the machine)."
  echo
  echo "## Figures"
  echo
  echo "$OUT"
} | tee "$REPORT"
echo "audit-export-bench: report written to $REPORT" >&2
