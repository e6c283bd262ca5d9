//! `m87 <device> shell` driven through a real pseudo-terminal, as a person at a terminal would:
//! run a command, resize the window, exit with a status.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::pty::Terminal;
use common::{M87, Server, enrolled_device};
use portable_pty::PtySize;

struct Screen(Arc<Mutex<String>>);

impl Screen {
    fn wait_for(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.0.lock().unwrap().contains(needle) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{needle:?} never appeared; screen:\n{}",
                self.0.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn shell_in_a_real_terminal_runs_resizes_and_exits_with_status() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"), "127.0.0.1:0");
    let admin = M87::new(
        &server.url,
        &tmp.path().join("admin"),
        Some(&server.admin_key()),
    );
    let (_runtime, _device) = enrolled_device(&server, &admin, &tmp.path().join("dev"), "term-dev");

    let Terminal {
        mut child,
        screen,
        mut keys,
        master,
    } = Terminal::shell(&admin, "term-dev");
    let screen = Screen(screen);

    // A command runs and its output comes back.
    keys.write_all(b"echo result-$((6*7))\r").unwrap();
    screen.wait_for("result-42");
    // The remote side sees our terminal size, and a resize.
    keys.write_all(b"stty size\r").unwrap();
    screen.wait_for("24 80");
    master
        .resize(PtySize {
            rows: 33,
            cols: 111,
            pixel_width: 0,
            pixel_height: 0,
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    keys.write_all(b"stty size\r").unwrap();
    screen.wait_for("33 111");
    // Exit with a status: it becomes m87's.
    keys.write_all(b"exit 5\r").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "m87 shell did not exit");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.exit_code(), 5);
}
