//! The unit file `m87 runtime enable` writes: pure text from a [`UnitSpec`], no I/O.

use std::fmt::Write as _;
use std::path::PathBuf;

/// The unit's name, fixed: `m87 runtime update` and install.sh restart it by this name.
pub const UNIT_NAME: &str = "m87-runtime.service";
/// The dedicated user a `--system` service runs as.
pub const SYSTEM_USER: &str = "m87";
/// The state directory of a `--system` service (systemd's `StateDirectory=m87`).
pub const SYSTEM_STATE_DIR: &str = "/var/lib/m87";
/// The exit status of a runtime that restarting cannot help (`RestartPreventExitStatus=`):
/// EX_CONFIG from sysexits.h.
pub const FINAL_EXIT: u8 = 78;
/// The first systemd version with `RestartSteps=` and `RestartMaxDelaySec=`.
pub const BACKOFF_SINCE: u32 = 254;

/// Which systemd manager the unit belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The enabling user's own manager (`systemctl --user`).
    User,
    /// The system manager, running as the dedicated `m87` user.
    System,
}

/// Everything the unit says.
#[derive(Debug, Clone)]
pub struct UnitSpec {
    /// User or system service.
    pub mode: Mode,
    /// The `m87` binary the service runs.
    pub exe: PathBuf,
    /// The runtime's state directory (`M87_CONFIG_DIR`).
    pub config_dir: PathBuf,
    /// Arguments after `m87 runtime run`.
    pub args: Vec<String>,
    /// Environment variables the runtime gets besides `M87_CONFIG_DIR`.
    pub env: Vec<(String, String)>,
    /// The systemd version the unit is written for (decides the backoff keys).
    pub systemd_version: Option<u32>,
}

/// One word for `ExecStart=` or `Environment=`: double-quoted with C escapes, with `%`
/// (specifiers) and `$` (variable expansion) doubled so systemd passes it on unchanged.
pub fn quote(word: &str) -> String {
    let mut out = String::with_capacity(word.len() + 2);
    out.push('"');
    for c in word.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '%' => out.push_str("%%"),
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The unit file's text.
pub fn render(spec: &UnitSpec) -> String {
    let mut u = String::new();
    let _ = writeln!(
        u,
        "# Written by `m87 runtime enable`; `m87 runtime disable --now` removes it.\n\
         # Keep local changes in a drop-in (`systemctl {}edit {UNIT_NAME}`): enable rewrites this file.",
        if spec.mode == Mode::User {
            "--user "
        } else {
            ""
        }
    );
    u.push_str("[Unit]\nDescription=m87 device runtime\n");
    if spec.mode == Mode::System {
        u.push_str("Wants=network-online.target\nAfter=network-online.target\n");
    }
    // Give up after 10 failed starts in 5 minutes (a removed device, a refused key): the
    // runtime retries network trouble itself and exits only when retrying cannot help.
    u.push_str("StartLimitIntervalSec=5min\nStartLimitBurst=10\n\n[Service]\nType=exec\n");
    if spec.mode == Mode::System {
        let _ = writeln!(u, "User={SYSTEM_USER}\nGroup={SYSTEM_USER}");
        u.push_str("StateDirectory=m87\nStateDirectoryMode=0700\n");
    }
    let mut exec = vec![
        spec.exe.display().to_string(),
        "runtime".into(),
        "run".into(),
    ];
    exec.extend(spec.args.iter().cloned());
    let exec: Vec<String> = exec.iter().map(|w| quote(w)).collect();
    let _ = writeln!(u, "ExecStart={}", exec.join(" "));
    let config = (
        "M87_CONFIG_DIR".to_owned(),
        spec.config_dir.display().to_string(),
    );
    for (k, v) in std::iter::once(&config).chain(spec.env.iter()) {
        let _ = writeln!(u, "Environment={}", quote(&format!("{k}={v}")));
    }
    u.push_str("Restart=on-failure\nRestartSec=5s\n");
    // The device was removed, its key refused, its request rejected: restarting cannot help.
    let _ = writeln!(u, "RestartPreventExitStatus={FINAL_EXIT}");
    if spec.systemd_version.is_some_and(|v| v >= BACKOFF_SINCE) {
        u.push_str("RestartSteps=6\nRestartMaxDelaySec=5min\n");
    }
    u.push_str(
        "TimeoutStopSec=15s\n\
         # Remote shells and commands cannot gain privileges (no sudo, su or setuid programs).\n\
         NoNewPrivileges=yes\n\
         # The service's /tmp and /var/tmp are its own.\n\
         PrivateTmp=yes\n",
    );
    let target = match spec.mode {
        Mode::User => "default.target",
        Mode::System => "multi-user.target",
    };
    let _ = write!(u, "\n[Install]\nWantedBy={target}\n");
    u
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(mode: Mode, version: Option<u32>) -> UnitSpec {
        UnitSpec {
            mode,
            exe: "/usr/local/bin/m87".into(),
            config_dir: "/var/lib/m87".into(),
            args: vec!["--email".into(), "me@example.com".into()],
            env: vec![("M87_API_URL".into(), "https://h:8443".into())],
            systemd_version: version,
        }
    }

    #[test]
    fn words_are_quoted_for_systemd() {
        assert_eq!(quote("a b"), "\"a b\"");
        assert_eq!(quote("50%$HOME\"\\"), "\"50%%$$HOME\\\"\\\\\"");
    }

    #[test]
    fn system_unit_runs_as_the_dedicated_user_with_its_state_dir() {
        let text = render(&spec(Mode::System, Some(252)));
        assert!(text.contains("User=m87\n"), "{text}");
        assert!(text.contains("StateDirectory=m87\n"), "{text}");
        assert!(text.contains(
            "ExecStart=\"/usr/local/bin/m87\" \"runtime\" \"run\" \"--email\" \"me@example.com\"\n"
        ));
        assert!(text.contains("Environment=\"M87_CONFIG_DIR=/var/lib/m87\"\n"));
        assert!(text.contains("NoNewPrivileges=yes\n") && text.contains("PrivateTmp=yes\n"));
        assert!(
            !text.contains("RestartSteps"),
            "systemd 252 does not know it"
        );
        assert!(text.contains("WantedBy=multi-user.target"));
    }

    #[test]
    fn backoff_keys_only_where_systemd_knows_them() {
        let text = render(&spec(Mode::User, Some(254)));
        assert!(
            text.contains("RestartSteps=6\nRestartMaxDelaySec=5min\n"),
            "{text}"
        );
        assert!(!text.contains("User="), "a user unit runs as its user");
        assert!(text.contains("WantedBy=default.target"));
    }
}
