//! `m87 <device> forward` with the real binaries: an HTTP server on the device side, 100
//! concurrent connections, 200 MB through one connection, a UDP echo.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use common::{M87, Proc, Server, echo_server, enrolled_device, free_port, udp_echo_server};
use sha2::{Digest, Sha256};

/// A tiny HTTP server "on the device": answers every request with its path.
fn http_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap() <= 2 {
                        break;
                    }
                }
                let body = format!("you asked for {path}");
                let mut s = stream;
                write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .unwrap();
            });
        }
    });
    port
}

fn get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn start_forward(admin: &M87, device: &str, specs: &[String]) -> Proc {
    let mut args = vec![device, "forward"];
    args.extend(specs.iter().map(String::as_str));
    let p = Proc::spawn(admin.command(&args));
    p.out
        .wait_for("press Ctrl-C to stop", Duration::from_secs(30));
    p
}

#[test]
fn forwards_http_many_connections_bulk_data_and_udp() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"), "127.0.0.1:0");
    let admin = M87::new(
        &server.url,
        &tmp.path().join("admin"),
        Some(&server.admin_key()),
    );
    let (_runtime, _device) = enrolled_device(&server, &admin, &tmp.path().join("dev"), "fwd-dev");

    let (http, echo) = (http_server(), echo_server());
    let (l_http, l_echo, l_udp) = (free_port(), free_port(), free_port());
    let udp_port = udp_echo_server();
    let forward = start_forward(
        &admin,
        "fwd-dev",
        &[
            format!("{l_http}:{http}"),
            format!("{l_echo}:127.0.0.1:{echo}"),
            format!("{l_udp}:{udp_port}/udp"),
        ],
    );
    assert!(
        forward
            .out
            .contains(&format!("127.0.0.1:{l_http} -> fwd-dev:{http}/tcp")),
        "{}",
        forward.out.all()
    );

    // An HTTP request through the forward.
    let answer = get(l_http, "/hello");
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(answer.ends_with("you asked for /hello"), "{answer}");

    // 100 concurrent connections, each with its own answer.
    let threads: Vec<_> = (0..100)
        .map(|i| std::thread::spawn(move || (i, get(l_http, &format!("/conn/{i}")))))
        .collect();
    for t in threads {
        let (i, answer) = t.join().unwrap();
        assert!(
            answer.ends_with(&format!("you asked for /conn/{i}")),
            "{answer}"
        );
    }

    // 200 MB through one connection, digests match.
    let mut conn = TcpStream::connect(("127.0.0.1", l_echo)).unwrap();
    let mut reader = conn.try_clone().unwrap();
    let receiver = std::thread::spawn(move || {
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0usize;
        loop {
            let n = reader.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            total += n;
        }
        (total, hash.finalize())
    });
    let mut sent = Sha256::new();
    let block: Vec<u8> = (0..1 << 20).map(|i| (i * 7 % 251) as u8).collect();
    for i in 0..200u32 {
        let mut b = block.clone();
        b[..4].copy_from_slice(&i.to_be_bytes());
        sent.update(&b);
        conn.write_all(&b).unwrap();
    }
    conn.shutdown(std::net::Shutdown::Write).unwrap();
    let (total, digest) = receiver.join().unwrap();
    assert_eq!(total, 200 << 20);
    assert_eq!(digest, sent.finalize());

    // UDP echo.
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut ok = false;
    for attempt in 0..5 {
        client
            .send_to(format!("ping {attempt}").as_bytes(), ("127.0.0.1", l_udp))
            .unwrap();
        let mut buf = [0u8; 2048];
        if let Ok((n, _)) = client.recv_from(&mut buf) {
            assert_eq!(&buf[..n], format!("echo:ping {attempt}").as_bytes());
            ok = true;
            break;
        }
    }
    assert!(ok, "no UDP answer through the forward");
}

#[test]
fn forward_errors_are_clear() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"), "127.0.0.1:0");
    let admin = M87::new(
        &server.url,
        &tmp.path().join("admin"),
        Some(&server.admin_key()),
    );
    let (_runtime, _device) = enrolled_device(&server, &admin, &tmp.path().join("dev"), "fwd-err");
    let err = admin.fails(&["fwd-err", "forward", "99999"]);
    assert!(err.contains("99999"), "{err}");
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let err = admin.fails(&["fwd-err", "forward", &format!("{port}:80")]);
    assert!(err.contains(&port.to_string()), "{err}");
}

/// Sends to every connection as fast as the connection takes it.
fn firehose_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = stream;
                let block = vec![7u8; 1 << 16];
                while s.write_all(&block).is_ok() {}
            });
        }
    });
    port
}

#[test]
fn stalled_connections_do_not_block_the_others() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"), "127.0.0.1:0");
    let admin = M87::new(
        &server.url,
        &tmp.path().join("admin"),
        Some(&server.admin_key()),
    );
    let (_runtime, _device) = enrolled_device(&server, &admin, &tmp.path().join("dev"), "hol-dev");
    let firehose = firehose_server();
    let local = free_port();
    let _forward = start_forward(&admin, "hol-dev", &[format!("{local}:{firehose}")]);

    // Six connections whose reader never reads: each fills its stream's window.
    let stalled: Vec<TcpStream> = (0..6)
        .map(|_| TcpStream::connect(("127.0.0.1", local)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_secs(3));

    // Another connection of the same forward still flows, and another session still works.
    let mut reader = TcpStream::connect(("127.0.0.1", local)).unwrap();
    reader
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    while got < 32 << 20 {
        let n = reader
            .read(&mut buf)
            .expect("a stalled neighbour blocked this connection");
        assert!(n > 0, "the forward closed this connection");
        got += n;
    }
    let out = admin.run(&["hol-dev", "exec", "--", "echo", "still answering"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "still answering\n");
    drop(stalled);
}
