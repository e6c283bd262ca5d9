#!/usr/bin/env python3
"""Are the connections of one port forward independent of each other?

Serves TCP on 127.0.0.1:SERVER_PORT (the "device" side): every accepted connection is sent
bytes as fast as it takes them. Through the forward listening on 127.0.0.1:FORWARD_PORT it
opens BLOCKED connections that never read (a stalled consumer), waits FILL seconds for every
buffer on the way to fill up, then opens one more connection and counts the bytes it
receives in PROBE seconds. Prints one JSON line. Used by bench-tunnel.sh.
"""

import argparse
import json
import socket
import threading
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--forward-port", type=int, required=True)
    ap.add_argument("--server-port", type=int, required=True)
    ap.add_argument("--blocked", type=int, default=6)
    ap.add_argument("--fill", type=float, default=6.0)
    ap.add_argument("--probe", type=float, default=6.0)
    args = ap.parse_args()

    chunk = b"x" * 65536
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", args.server_port))
    listener.listen(64)

    def pump(conn: socket.socket) -> None:
        try:
            while True:
                conn.sendall(chunk)
        except OSError:
            pass

    def serve() -> None:
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=pump, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()

    stalled = [socket.create_connection(("127.0.0.1", args.forward_port)) for _ in range(args.blocked)]
    time.sleep(args.fill)
    probe = socket.create_connection(("127.0.0.1", args.forward_port))
    probe.settimeout(0.5)
    received, first = 0, None
    start = time.monotonic()
    while time.monotonic() - start < args.probe:
        try:
            data = probe.recv(1 << 20)
        except socket.timeout:
            continue
        if not data:
            break
        if first is None:
            first = time.monotonic() - start
        received += len(data)
    print(json.dumps({
        "blocked": args.blocked,
        "probe_seconds": args.probe,
        "probe_bytes": received,
        "first_byte_after": first,
    }))
    for s in stalled + [probe]:
        s.close()


if __name__ == "__main__":
    main()
