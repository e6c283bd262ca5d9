#!/usr/bin/env python3
# A TCP sink/source/echo for the forward tests of bench-fleet.sh (see the comment there).
import json, socket, struct, sys, threading, time

CHUNK = 1 << 20

def drain(conn):
    """Reads until the peer's end of stream; returns how many bytes came."""
    buf = bytearray(CHUNK)
    total = 0
    while True:
        n = conn.recv_into(buf)
        if n == 0:
            return total
        total += n

def send_zeros(conn, size):
    """Sends `size` zero bytes, then ends this side of the stream."""
    block = memoryview(bytes(CHUNK))
    left = size
    while left > 0:
        n = min(left, CHUNK)
        conn.sendall(block[:n])
        left -= n
    conn.shutdown(socket.SHUT_WR)

def handle(conn):
    with conn:
        op = conn.recv(1)
        if op == b"U":
            conn.sendall(struct.pack("!Q", drain(conn)))
        elif op == b"D":
            send_zeros(conn, struct.unpack("!Q", recv_exact(conn, 8))[0])
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
        send_zeros(c, size)
        got = struct.unpack("!Q", recv_exact(c, 8))[0]
    else:
        c.sendall(b"D" + struct.pack("!Q", size))
        got = drain(c)
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
