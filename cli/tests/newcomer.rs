//! The `m87` binary as a newcomer meets it, without a server: the help names the device
//! operations, typos get a suggestion, completions, `version`, and profiles' bad input.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

fn m87_env(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_m87"))
        .args(args)
        .env("M87_CONFIG_DIR", config)
        .env_remove("M87_API_KEY")
        .env_remove("M87_API_URL")
        .env_remove("M87_PROFILE")
        .env_remove("OWNER_REFERENCE")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn m87(config: &Path, args: &[&str]) -> Output {
    // A server address where nothing listens.
    let url = format!("https://127.0.0.1:{}", closed_port());
    m87_env(config, args, &[("M87_API_URL", &url)])
}

fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn help_shows_the_device_operations_with_examples() {
    let dir = tempfile::tempdir().unwrap();
    for flag in ["--help", "-h"] {
        let out = m87(dir.path(), &[flag]);
        assert!(out.status.success());
        let help = text(&out.stdout);
        assert!(help.contains("m87 <device> <operation>"), "{help}");
        for op in ["exec", "shell", "forward", "cp"] {
            assert!(help.contains(&format!("\n  {op}")), "no {op}: {help}");
        }
        for example in [
            "m87 robot-1 exec -- ",
            "m87 robot-1 shell",
            "m87 robot-1 forward ",
        ] {
            assert!(help.contains(example), "no {example}: {help}");
        }
    }
}

#[test]
fn a_mistyped_command_gets_a_suggestion() {
    let dir = tempfile::tempdir().unwrap();
    let out = m87(dir.path(), &["devcies", "list"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("did you mean `devices`?"), "{err}");
    let out = m87(dir.path(), &["logni"]);
    assert!(text(&out.stderr).contains("did you mean `login`?"));
    // A word far from every command is a device name, as before.
    let out = m87(dir.path(), &["robot-1", "status"]);
    assert!(!text(&out.stderr).contains("did you mean"), "{out:?}");
}

#[test]
fn global_flags_after_a_device_operation_and_sync_e() {
    let dir = tempfile::tempdir().unwrap();
    // Parsed (not a usage error, exit 2): it fails only for want of a login.
    for args in [
        &["robot-1", "access", "list", "-o", "json"][..],
        &["robot-1", "access", "list", "--profile", "default"][..],
        &["sync", "-e", "*.log", "./a", "robot-1:/srv"][..],
    ] {
        let out = m87(dir.path(), args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        assert!(
            text(&out.stderr).contains("not logged in"),
            "{args:?}: {out:?}"
        );
    }
    // `-o` after `exec --` belongs to the command.
    let out = m87(dir.path(), &["robot-1", "exec", "--", "ls", "-o", "json"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
}

#[test]
fn completions_for_bash_zsh_and_fish() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let out = m87(dir.path(), &["completion", shell]);
        assert!(out.status.success(), "{shell}: {out:?}");
        let script = text(&out.stdout);
        for command in ["devices", "login", "profile", "completion", "version"] {
            assert!(script.contains(command), "{shell} lacks {command}");
        }
        let file = dir.path().join(format!("m87.{shell}"));
        std::fs::write(&file, &script).unwrap();
        let checker = match shell {
            "bash" => "bash",
            "zsh" => "zsh",
            _ => "fish",
        };
        match Command::new(checker).arg("-n").arg(&file).output() {
            Ok(check) => assert!(check.status.success(), "{shell} -n: {check:?}"),
            Err(e) => panic!(
                "{checker} is needed to check its completion script (Debian package {checker}; \
                 scripts/setup-test-env installs it): {e}"
            ),
        }
    }
    let out = m87(dir.path(), &["completion", "powershell"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_completion_script_read_by_a_reader_that_stops_early_ends_quietly() {
    // `m87 completion bash | head -1`: the reader is gone before m87 writes.
    let dir = tempfile::tempdir().unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_m87"))
        .args(["completion", "bash"])
        .env("M87_CONFIG_DIR", dir.path())
        .stdout(writer)
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn version_says_what_it_could_not_reach() {
    let dir = tempfile::tempdir().unwrap();
    let out = m87(dir.path(), &["version"]);
    assert!(out.status.success(), "{out:?}");
    let said = text(&out.stdout);
    let mut lines = said.lines();
    assert_eq!(
        lines.next().unwrap(),
        format!("cli      {}", env!("CARGO_PKG_VERSION"))
    );
    let server = lines.next().unwrap();
    assert!(
        server.starts_with("server   unknown") && server.contains("cannot reach"),
        "{said}"
    );
    let out = m87(dir.path(), &["version", "robot-1", "-o", "json"]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["cli"], env!("CARGO_PKG_VERSION"));
    assert!(
        v["server"]["error"]
            .as_str()
            .unwrap()
            .contains("cannot reach"),
        "{v}"
    );
    assert!(v["runtime"]["error"].is_string(), "{v}");
}

#[test]
fn profiles_refuse_bad_input_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path();
    let fails = |args: &[&str], code: i32, says: &str| {
        let out = m87(cfg, args);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {out:?}");
        let err = text(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    };
    fails(
        &[
            "profile",
            "add",
            "Bad/Name",
            "--api-url",
            "https://x.example",
        ],
        2,
        "invalid profile name",
    );
    fails(
        &["profile", "add", "ok", "--api-url", "ftp://x.example"],
        1,
        "https://",
    );
    fails(
        &[
            "profile",
            "add",
            "default",
            "--api-url",
            "https://x.example",
        ],
        1,
        "always exists",
    );
    assert!(!cfg.join("profiles").exists());
    let out = m87(
        cfg,
        &[
            "profile",
            "add",
            "prod",
            "--api-url",
            "https://m87.example/",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    fails(
        &[
            "profile",
            "add",
            "prod",
            "--api-url",
            "https://other.example",
        ],
        1,
        "exists",
    );
    fails(&["profile", "use", "nope"], 1, "no profile \"nope\"");
    fails(&["profile", "remove", "nope"], 1, "no profile \"nope\"");
    fails(&["profile", "remove", "default"], 1, "cannot be removed");
    fails(
        &["--profile", "nope", "devices", "list"],
        1,
        "m87 profile add nope",
    );
    fails(
        &["devices", "list", "--profile", "nope"],
        1,
        "no profile \"nope\"",
    );
    fails(
        &["--profile", "../etc", "status"],
        2,
        "invalid profile name",
    );
    assert!(!cfg.join("current-profile").exists());
    let out = m87_env(cfg, &["devices", "list"], &[("M87_PROFILE", "nope")]);
    assert!(text(&out.stderr).contains("M87_PROFILE"), "{out:?}");

    // A profile in use by M87_PROFILE cannot be removed.
    let out = m87_env(
        cfg,
        &["profile", "remove", "prod"],
        &[("M87_PROFILE", "prod")],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("M87_PROFILE names it"),
        "{out:?}"
    );
    assert!(cfg.join("profiles/prod/profile.json").exists());

    // The list, for scripts: default first, the server of each.
    let out = m87(cfg, &["profile", "list", "-o", "json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["name"], "default");
    assert_eq!(list[0]["current"], true);
    assert_eq!(list[1]["name"], "prod");
    assert_eq!(list[1]["server"], "https://m87.example");
    assert_eq!(list[1]["login"], "-");

    // The device runtime's credentials are not per profile.
    let out = m87_env(
        cfg,
        &["runtime", "status", "-o", "json"],
        &[("M87_PROFILE", "prod")],
    );
    assert!(out.status.success(), "{out:?}");
    // A not-logged-in profile names itself in the hint.
    let out = m87(cfg, &["--profile", "prod", "devices", "list"]);
    assert!(
        text(&out.stderr).contains("m87 --profile prod login"),
        "{out:?}"
    );
}
