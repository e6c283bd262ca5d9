//! The client side against the agent's real PTY service (in-process, through
//! [`LocalOpener`]), and the raw-mode guard against a real pseudo-terminal. Tests run without a
//! terminal on standard input, so the public functions are tested for what they return and the
//! relay for what a user would see, with the keyboard and the screen replaced by channels.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;

use portable_pty::{MasterPty, PtySize};
use rustix::termios::{LocalModes, tcgetattr};

use super::*;
use crate::remote::exec::exit_code;
use crate::remote::testing::LocalOpener;

fn argv(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn exec_tty_returns_the_remote_exit_status() {
    let opener = LocalOpener::default();
    let status = exec_tty(&opener, argv(&["sh", "-c", "exit 3"]))
        .await
        .unwrap();
    assert_eq!(status, ExitStatus::Code(3));
    let status = exec_tty(&opener, argv(&["sh", "-c", "kill -KILL $$"]))
        .await
        .unwrap();
    assert_eq!(exit_code(status), 137);
    // The device's reason is printed; its exit status is still the result.
    let status = exec_tty(&opener, argv(&["/no/such/program"]))
        .await
        .unwrap();
    assert_eq!(status, ExitStatus::Code(127));
}

/// Opens a PTY channel running `script` with `sh -c`, 80x24.
async fn open_sh(opener: &LocalOpener, script: &str) -> OpenedChannel {
    let tty = Tty {
        cols: 80,
        rows: 24,
        term: "xterm-256color".into(),
    };
    opener
        .open(Channel::Exec {
            argv: argv(&["sh", "-c", script]),
            tty: Some(tty),
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn keystrokes_and_resizes_reach_the_program_and_its_output_comes_back() {
    let opener = LocalOpener::default();
    let script = r#"read line; stty size; echo "got $line"; exit 5"#;
    let opened = open_sh(&opener, script).await;
    let (keys, input) = mpsc::channel(4);
    let (window, resizes) = mpsc::channel(4);
    window.send((120, 40)).await.unwrap();
    keys.send(Bytes::from_static(b"hello\n")).await.unwrap();
    let mut screen = Vec::new();
    let ended = relay(opened, input, resizes, &mut screen).await.unwrap();
    let text = String::from_utf8_lossy(&screen);
    assert!(text.contains("got hello\r\n"), "{text:?}");
    assert!(text.contains("40 120\r\n"), "{text:?}");
    assert_eq!(ended.status, Some(ExitStatus::Code(5)));
    assert_eq!(ended.error, None);
    drop((keys, window));
}

#[tokio::test]
async fn the_end_of_piped_input_ends_the_remote_input() {
    // `echo 'echo $((6*7))' | m87 <device> shell`: no terminal here, input ends.
    let opener = LocalOpener::default();
    let opened = open_sh(&opener, "exec sh").await;
    let (keys, input) = mpsc::channel(4);
    keys.send(Bytes::from_static(b"echo $((6*7))\n"))
        .await
        .unwrap();
    drop(keys);
    let (_window, resizes) = mpsc::channel(1);
    let mut screen = Vec::new();
    let ended = relay(opened, input, resizes, &mut screen).await.unwrap();
    let text = String::from_utf8_lossy(&screen);
    assert!(text.contains("42\r\n"), "{text:?}");
    assert_eq!(ended.status, Some(ExitStatus::Code(0)));
}

#[test]
fn without_a_terminal_raw_mode_is_a_no_op_and_the_size_is_80x24() {
    let null = File::open("/dev/null").unwrap();
    let guard = RawModeGuard::enable(&null).unwrap();
    assert!(!guard.is_active());
    drop(guard);
    let tty = local_tty(&null, None);
    assert_eq!((tty.cols, tty.rows), (80, 24));
    assert_eq!(tty.term, "xterm-256color");
    assert_eq!(local_tty(&null, Some("screen".into())).term, "screen");
}

/// A pseudo-terminal of 100x30: its master, and its terminal side opened as a file.
fn pseudo_terminal() -> (Box<dyn MasterPty + Send>, File) {
    let pair = portable_pty::native_pty_system()
        .openpty(PtySize {
            rows: 30,
            cols: 100,
            pixel_width: 0,
            pixel_height: 0,
        })
        .unwrap();
    let path = pair.master.tty_name().unwrap();
    let terminal = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(rustix::fs::OFlags::NOCTTY.bits() as i32)
        .open(path)
        .unwrap();
    (pair.master, terminal)
}

#[test]
fn raw_mode_passes_ctrl_c_through_and_is_restored_on_drop_and_on_panic() {
    let (master, terminal) = pseudo_terminal();
    let cooked = tcgetattr(&terminal).unwrap();
    let line_discipline = LocalModes::ICANON | LocalModes::ECHO | LocalModes::ISIG;
    assert!(cooked.local_modes.contains(line_discipline));
    let tty = local_tty(&terminal, None);
    assert_eq!((tty.cols, tty.rows), (100, 30));

    {
        let guard = RawModeGuard::enable(&terminal).unwrap();
        assert!(guard.is_active());
        let raw = tcgetattr(&terminal).unwrap();
        assert!(!raw.local_modes.intersects(line_discipline));
        // Ctrl-C typed on the keyboard arrives as the byte 0x03, not as SIGINT.
        let mut keyboard = master.take_writer().unwrap();
        keyboard.write_all(b"\x03").unwrap();
        keyboard.flush().unwrap();
        let mut byte = [0u8; 1];
        (&terminal).read_exact(&mut byte).unwrap();
        assert_eq!(byte, [0x03]);
    }
    let restored = tcgetattr(&terminal).unwrap();
    assert_eq!(restored.local_modes, cooked.local_modes);
    assert_eq!(restored.input_modes, cooked.input_modes);
    assert_eq!(restored.output_modes, cooked.output_modes);

    let panicked = std::panic::catch_unwind(|| {
        let _guard = RawModeGuard::enable(&terminal).unwrap();
        panic!("a bug in the middle of a session");
    });
    assert!(panicked.is_err());
    let restored = tcgetattr(&terminal).unwrap();
    assert_eq!(restored.local_modes, cooked.local_modes);
    assert_eq!(restored.input_modes, cooked.input_modes);
    assert_eq!(restored.output_modes, cooked.output_modes);
}

/// Everything the master of a pseudo-terminal shows, gathered on a thread (its reads block).
fn watch_screen(master: &dyn MasterPty) -> std::sync::mpsc::Receiver<Vec<u8>> {
    let mut reader = master.try_clone_reader().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits until what `screen` showed contains `needle`.
fn wait_for_screen(screen: &std::sync::mpsc::Receiver<Vec<u8>>, shown: &mut Vec<u8>, needle: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !String::from_utf8_lossy(shown).contains(needle) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match screen.recv_timeout(left) {
            Ok(chunk) => shown.extend_from_slice(&chunk),
            Err(_) => panic!(
                "{needle:?} never showed; the screen: {:?}",
                String::from_utf8_lossy(shown)
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_real_terminal_keys_go_through_raw_and_the_terminal_is_restored() {
    // The pseudo-terminal plays the user's terminal: its master is their keyboard and screen.
    let (master, terminal) = pseudo_terminal();
    let cooked = tcgetattr(&terminal).unwrap();
    let screen = watch_screen(&*master);
    let mut keyboard = master.take_writer().unwrap();
    let probe = terminal.try_clone().unwrap();
    let output = terminal.try_clone().unwrap();
    let session = tokio::spawn(async move {
        let opener = LocalOpener::default();
        let script = r#"stty size; read line; echo "got $line"; sleep 30"#;
        let channel = |tty| Channel::Exec {
            argv: argv(&["sh", "-c", script]),
            tty: Some(tty),
        };
        let mut output = tokio::fs::File::from_std(output);
        run_on_terminal(&opener, channel, terminal, None, &mut output).await
    });

    let mut shown = Vec::new();
    // The remote PTY has this terminal's size; output is relayed only once raw mode is on.
    wait_for_screen(&screen, &mut shown, "30 100\r\n");
    let raw = tcgetattr(&probe).unwrap();
    assert!(
        !raw.local_modes
            .intersects(LocalModes::ICANON | LocalModes::ECHO | LocalModes::ISIG)
    );
    // Enter sends CR in raw mode; the remote terminal makes it a newline and echoes the line.
    keyboard.write_all(b"hi\r").unwrap();
    keyboard.flush().unwrap();
    wait_for_screen(&screen, &mut shown, "got hi\r\n");
    // Ctrl-C is not a signal here: it interrupts the remote program.
    keyboard.write_all(b"\x03").unwrap();
    keyboard.flush().unwrap();
    let status = match tokio::time::timeout(std::time::Duration::from_secs(20), session).await {
        Ok(ended) => ended.unwrap().unwrap(),
        Err(_) => panic!(
            "Ctrl-C did not end the remote program within 20 s; the screen: {:?}; our child \
             processes: {}",
            String::from_utf8_lossy(&shown),
            child_processes()
        ),
    };
    assert_eq!(status, ExitStatus::Signal(2));
    let restored = tcgetattr(&probe).unwrap();
    assert_eq!(restored.local_modes, cooked.local_modes);
    assert_eq!(restored.input_modes, cooked.input_modes);
    assert_eq!(restored.output_modes, cooked.output_modes);
}

/// This process's descendants as `pid (comm) state pgrp session tpgid` (from /proc), to tell
/// from a failure whether the remote program got the signal.
fn child_processes() -> String {
    // pid -> (ppid, description)
    let mut all = std::collections::HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid pgrp session tty_nr tpgid …
        let Some((head, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let (Some(pid), Some(ppid)) = (
            head.split_whitespace()
                .next()
                .and_then(|p| p.parse::<u32>().ok()),
            fields.get(1).and_then(|p| p.parse::<u32>().ok()),
        ) else {
            continue;
        };
        let line = format!(
            "{head}) state {} pgrp {} session {} tpgid {}",
            fields[0], fields[2], fields[3], fields[5]
        );
        all.insert(pid, (ppid, line));
    }
    let me = std::process::id();
    let descends = |mut pid: u32| {
        for _ in 0..64 {
            match all.get(&pid) {
                Some((ppid, _)) if *ppid == me => return true,
                Some((ppid, _)) => pid = *ppid,
                None => return false,
            }
        }
        false
    };
    let found: Vec<&str> = all
        .iter()
        .filter(|(pid, _)| descends(**pid))
        .map(|(_, (_, line))| line.as_str())
        .collect();
    if found.is_empty() {
        "none".to_owned()
    } else {
        found.join("; ")
    }
}
