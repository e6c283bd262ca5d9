//! `m87 <device> shell` in a real pseudo-terminal (portable-pty), for tests of what a user sees
//! in an interactive session.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portable_pty::{CommandBuilder, PtySize, native_pty_system};

use super::M87;

/// `m87 <device> shell` as `who`, in a real pseudo-terminal; what it printed so far.
pub struct Terminal {
    pub child: Box<dyn portable_pty::Child + Send + Sync>,
    pub screen: Arc<Mutex<String>>,
    pub keys: Box<dyn Write + Send>,
    pub master: Box<dyn portable_pty::MasterPty + Send>,
}

impl Terminal {
    pub fn shell(who: &M87, device: &str) -> Self {
        let pty = native_pty_system()
            .openpty(PtySize {
                rows: 24,
                cols: 80,
                pixel_width: 0,
                pixel_height: 0,
            })
            .unwrap();
        let mut cmd = CommandBuilder::new(super::bin("m87"));
        cmd.args([device, "shell"]);
        cmd.env("M87_CONFIG_DIR", &who.config_dir);
        cmd.env("M87_API_URL", &who.url);
        cmd.env("M87_API_FINGERPRINT", super::pin_of(&who.url).unwrap());
        cmd.env("M87_API_KEY", who.api_key.as_deref().unwrap());
        cmd.env("TERM", "xterm");
        let child = pty.slave.spawn_command(cmd).unwrap();
        drop(pty.slave);
        let screen = Arc::new(Mutex::new(String::new()));
        let mut reader = pty.master.try_clone_reader().unwrap();
        let sink = Arc::clone(&screen);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let keys = pty.master.take_writer().unwrap();
        Self {
            child,
            screen,
            keys,
            master: pty.master,
        }
    }

    pub fn wait_for(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.screen.lock().unwrap().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "{needle:?} never appeared:\n{}",
                self.screen.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn wait_exit(&mut self) -> u32 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.exit_code();
            }
            assert!(Instant::now() < deadline, "m87 shell did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
