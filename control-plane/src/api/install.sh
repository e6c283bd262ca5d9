#!/bin/sh
# m87 installer, served by the m87 control plane at @M87_URL@/install.sh:
#
#   curl -fsSL @M87_URL@/install.sh | sh -s -- --email me@example.com
#
# Downloads the m87 binary for this machine from that server over the same TLS, checks its
# SHA-256 against the server's signed release manifest, installs it to /usr/local/bin/m87 and
# (unless --no-service) runs `m87 runtime enable --now`, which registers this device.
#
# Options:
#   --email EMAIL        register under this user (or --org ID)
#   --org ID             register under this organization
#   --name NAME          the device's name (default: the host name)
#   --no-service         install the binary only; no systemd unit, no registration
#   --root DIR           install under DIR (DIR/usr/local/bin/m87), for packagers and tests
#   --pin sha256//...    trust the server by its key pin (curl --pinnedpubkey), for a
#                        self-signed server reached under another name
#   --fingerprint SHA256:...  the server certificate's fingerprint, handed to m87
#   --url URL            another server than the one that served this script
set -eu

URL='@M87_URL@'
PIN='@M87_PIN@'
FINGERPRINT='@M87_FINGERPRINT@'
ROOT=''
EMAIL=''
ORG=''
NAME=''
SERVICE=yes

die() { echo "m87 install: $*" >&2; exit 1; }
say() { echo "m87 install: $*" >&2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --email) [ $# -ge 2 ] || die "--email needs a value"; EMAIL=$2; shift 2 ;;
    --org) [ $# -ge 2 ] || die "--org needs a value"; ORG=$2; shift 2 ;;
    --name) [ $# -ge 2 ] || die "--name needs a value"; NAME=$2; shift 2 ;;
    --root) [ $# -ge 2 ] || die "--root needs a directory"; ROOT=${2%/}; shift 2 ;;
    --pin) [ $# -ge 2 ] || die "--pin needs sha256//..."; PIN=$2; shift 2 ;;
    --fingerprint) [ $# -ge 2 ] || die "--fingerprint needs SHA256:..."; FINGERPRINT=$2; shift 2 ;;
    --url) [ $# -ge 2 ] || die "--url needs a URL"; URL=${2%/}; shift 2 ;;
    --no-service) SERVICE=no; shift ;;
    -h|--help) echo "usage: sh install.sh [--email EMAIL | --org ID] [--name NAME] [--no-service] [--root DIR] [--pin sha256//...] [--fingerprint SHA256:...] [--url URL]"; exit 0 ;;
    *) die "unknown option $1 (see the top of this script for the options)" ;;
  esac
done

# --- Checks: nothing is changed before all of them pass. ------------------------------------
arch=$(uname -m)
case "$arch" in
  x86_64|amd64) TARGET=x86_64-unknown-linux-musl ;;
  aarch64|arm64) TARGET=aarch64-unknown-linux-musl ;;
  *) die "this machine's architecture ($arch) is not supported: m87 ships for x86_64 and aarch64 Linux; nothing was changed" ;;
esac
[ "$(uname -s)" = Linux ] || die "m87 runs on Linux, not $(uname -s); nothing was changed"
if [ "$SERVICE" = yes ]; then
  # M87_SYSTEMD_DIR: only for tests of this script.
  [ -d "${M87_SYSTEMD_DIR:-/run/systemd/system}" ] || die "systemd is not running here, so the runtime cannot be installed as a service; run again with --no-service to install the binary only (then start it with: m87 runtime run --email ...); nothing was changed"
  [ -n "$EMAIL$ORG" ] || die "say whose device this is: --email you@example.com (or --org ID); nothing was changed"
fi
command -v curl >/dev/null 2>&1 || die "curl is needed to download m87; install it (apt-get install curl); nothing was changed"
if command -v sha256sum >/dev/null 2>&1; then SHA="sha256sum"
elif command -v shasum >/dev/null 2>&1; then SHA="shasum -a 256"
else die "sha256sum (coreutils) is needed to check the download; nothing was changed"
fi

# curl with this server's trust: its key pin (self-signed) or the system's CAs.
fetch() {
  if [ -n "$PIN" ]; then
    curl -fsS --retry 3 -k --pinnedpubkey "$PIN" "$@"
  else
    curl -fsS --retry 3 "$@"
  fi
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM
fetch -o "$tmp/releases.json" "$URL/v1/releases" \
  || die "could not read the release manifest from $URL/v1/releases; nothing was changed"
# The manifest is one JSON line; one artifact per line after splitting at '{'.
want=$(tr '{' '\n' <"$tmp/releases.json" | grep "\"target\":\"$TARGET\"" | head -n 1 \
  | sed -n 's/.*"sha256":"\([0-9a-f]\{64\}\)".*/\1/p')
version=$(sed -n 's/^{"manifest":{"version":"\([^"]*\)".*/\1/p' "$tmp/releases.json")
[ -n "$want" ] || die "$URL publishes no m87 for $TARGET; nothing was changed"
say "downloading m87 $version for $TARGET from $URL"
fetch -C - -o "$tmp/m87" "$URL/releases/$TARGET/m87" \
  || die "the download from $URL/releases/$TARGET/m87 failed; nothing was changed"
got=$($SHA "$tmp/m87" | cut -d' ' -f1)
[ "$got" = "$want" ] || die "the downloaded m87 has SHA-256 $got, but the server's signed manifest says $want; refusing it; nothing was changed"

# --- Install ----------------------------------------------------------------------------------
bindir="$ROOT/usr/local/bin"
mkdir -p "$bindir"
cp "$tmp/m87" "$bindir/.m87.new.$$"
chmod 0755 "$bindir/.m87.new.$$"
mv -f "$bindir/.m87.new.$$" "$bindir/m87"
say "installed $bindir/m87 (m87 $version, sha256 $got)"

[ "$SERVICE" = yes ] || { say "not enabling the service (--no-service)"; exit 0; }
set -- runtime enable --now
[ "$(id -u)" -eq 0 ] && set -- "$@" --system
[ -n "$EMAIL" ] && set -- "$@" --email "$EMAIL"
[ -n "$ORG" ] && set -- "$@" --org "$ORG"
[ -n "$NAME" ] && set -- "$@" --name "$NAME"
M87_API_URL=$URL
export M87_API_URL
if [ -n "$FINGERPRINT" ]; then M87_API_FINGERPRINT=$FINGERPRINT; export M87_API_FINGERPRINT; fi
say "running: m87 $*"
exec "$bindir/m87" "$@"
