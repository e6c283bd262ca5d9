//! A terminal for tests of interactive views and shells: a private tmux server (its own socket
//! in the test's directory), a session `m87` the test types into and reads the screen of.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A tmux server of the test's own (its socket in a temporary directory).
pub struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    pub fn start(dir: &Path, width: u16, height: u16) -> Self {
        let found = Command::new("tmux").arg("-V").output();
        assert!(
            found.is_ok_and(|o| o.status.success()),
            "tmux is not installed: apt-get install tmux (scripts/setup-test-env installs it)"
        );
        let tmux = Self {
            socket: dir.join("tmux.sock"),
        };
        tmux.ok(&[
            "new-session",
            "-d",
            "-s",
            "m87",
            "-x",
            &width.to_string(),
            "-y",
            &height.to_string(),
            "env PS1='$ ' sh",
        ]);
        tmux
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn screen(&self) -> String {
        self.ok(&["capture-pane", "-p", "-t", "m87"])
    }

    pub fn display(&self, format: &str) -> String {
        self.ok(&["display", "-p", "-t", "m87", format])
            .trim()
            .to_owned()
    }

    pub fn type_line(&self, line: &str) {
        self.ok(&["send-keys", "-t", "m87", "-l", line]);
        self.ok(&["send-keys", "-t", "m87", "Enter"]);
    }

    /// Waits until the screen satisfies `done`; returns it.
    pub fn wait(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let screen = self.screen();
            if done(&screen) {
                return screen;
            }
            assert!(Instant::now() < deadline, "never {what}; screen:\n{screen}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .arg("kill-server")
            .output();
    }
}

/// `cmd` as one shell command line, its environment spelled out.
pub fn shell_line(cmd: &Command) -> String {
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let mut parts = vec!["env".to_owned()];
    // `env` takes its -u options before the assignments.
    for (key, value) in cmd.get_envs() {
        if value.is_none() {
            parts.push(format!("-u {}", key.to_string_lossy()));
        }
    }
    for (key, value) in cmd.get_envs() {
        if let Some(v) = value {
            let assignment = format!("{}={}", key.to_string_lossy(), v.to_string_lossy());
            parts.push(quote(&assignment));
        }
    }
    parts.push(quote(&cmd.get_program().to_string_lossy()));
    parts.extend(cmd.get_args().map(|a| quote(&a.to_string_lossy())));
    parts.join(" ")
}
