//! Who the PTY's program runs as, seen from the agent process: its login shell, its home
//! directory and the terminal type — from the agent's environment, else `/etc/passwd`.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// `TERM` when the client sent none (or one that is not a plain terminal name).
pub(super) const DEFAULT_TERM: &str = "xterm-256color";
/// The shell of last resort.
const FALLBACK_SHELL: &str = "/bin/sh";

/// The fields of an `/etc/passwd` line this module uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PasswdEntry {
    /// Login name.
    pub name: String,
    /// Home directory.
    pub home: PathBuf,
    /// Login shell.
    pub shell: PathBuf,
}

/// The entry of `uid` in the text of an `/etc/passwd` file.
pub(super) fn passwd_entry(passwd: &str, uid: u32) -> Option<PasswdEntry> {
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        let [name, _, id, _, _, home, shell] = fields.as_slice() else {
            return None;
        };
        (id.parse::<u32>().ok()? == uid).then(|| PasswdEntry {
            name: (*name).to_owned(),
            home: PathBuf::from(home),
            shell: PathBuf::from(shell),
        })
    })
}

/// The account the agent runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Account {
    /// Login name, if known.
    pub name: Option<String>,
    /// Home directory (`/` when none is known).
    pub home: PathBuf,
    /// Login shell.
    pub shell: PathBuf,
}

impl Account {
    /// The agent process's account: `$SHELL`/`$HOME`, else its `/etc/passwd` entry.
    pub fn current() -> Self {
        let uid = rustix::process::getuid().as_raw();
        let entry = std::fs::read_to_string("/etc/passwd")
            .ok()
            .and_then(|text| passwd_entry(&text, uid));
        Self::resolve(
            std::env::var_os("SHELL"),
            std::env::var_os("HOME"),
            entry.as_ref(),
        )
    }

    /// Picks the shell and home from the environment's values and the passwd entry: the first
    /// candidate that is an absolute path to an executable file (shell) or to a directory
    /// (home).
    pub fn resolve(
        env_shell: Option<OsString>,
        env_home: Option<OsString>,
        entry: Option<&PasswdEntry>,
    ) -> Self {
        let shell = env_shell
            .map(PathBuf::from)
            .into_iter()
            .chain(entry.map(|e| e.shell.clone()))
            .find(|p| is_executable(p))
            .unwrap_or_else(|| PathBuf::from(FALLBACK_SHELL));
        let home = env_home
            .map(PathBuf::from)
            .into_iter()
            .chain(entry.map(|e| e.home.clone()))
            .find(|p| p.is_absolute() && p.is_dir())
            .unwrap_or_else(|| PathBuf::from("/"));
        Self {
            name: entry.map(|e| e.name.clone()),
            home,
            shell,
        }
    }

    /// `argv[0]` of the login shell: its file name prefixed with `-`, which tells shells to
    /// run as a login shell. (portable-pty derives it the same way; the tests check that.)
    #[cfg(test)]
    pub fn login_argv0(&self) -> String {
        let base = self
            .shell
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "sh".to_owned());
        format!("-{base}")
    }
}

fn is_executable(path: &Path) -> bool {
    path.is_absolute()
        && std::fs::metadata(path)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
}

/// The `TERM` to give the program: the client's, if it is a plain terminal name.
pub(super) fn term_name(requested: &str) -> &str {
    let plain = !requested.is_empty()
        && requested.len() <= 64
        && requested
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.+".contains(&b));
    if plain { requested } else { DEFAULT_TERM }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
        broken line\n\
        daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
        alice:x:1000:1000:Alice,,,:/home/alice:/bin/zsh\n";

    #[test]
    fn finds_the_passwd_entry_of_a_uid() {
        assert_eq!(
            passwd_entry(PASSWD, 1000),
            Some(PasswdEntry {
                name: "alice".into(),
                home: "/home/alice".into(),
                shell: "/bin/zsh".into(),
            })
        );
        assert_eq!(
            passwd_entry(PASSWD, 0).unwrap().shell,
            Path::new("/bin/bash")
        );
        assert_eq!(passwd_entry(PASSWD, 4242), None);
        assert_eq!(passwd_entry("", 0), None);
    }

    #[test]
    fn shell_and_home_fall_back_in_order() {
        let entry = PasswdEntry {
            name: "me".into(),
            home: "/".into(),
            shell: "/bin/sh".into(),
        };
        // $SHELL wins when it is executable.
        let a = Account::resolve(Some("/bin/sh".into()), Some("/tmp".into()), Some(&entry));
        assert_eq!(a.shell, Path::new("/bin/sh"));
        assert_eq!(a.home, Path::new("/tmp"));
        assert_eq!(a.name.as_deref(), Some("me"));
        // Missing or bogus values fall through to passwd, then to /bin/sh and /.
        let a = Account::resolve(
            Some("/no/such/shell".into()),
            Some("relative".into()),
            Some(&entry),
        );
        assert_eq!(
            (a.shell.as_path(), a.home.as_path()),
            (Path::new("/bin/sh"), Path::new("/"))
        );
        let a = Account::resolve(None, None, None);
        assert_eq!(a.shell, Path::new(FALLBACK_SHELL));
        assert_eq!(a.home, Path::new("/"));
        assert_eq!(a.name, None);
        // A directory is not a shell.
        let a = Account::resolve(Some("/tmp".into()), None, None);
        assert_eq!(a.shell, Path::new(FALLBACK_SHELL));
        assert_eq!(a.login_argv0(), "-sh");
    }

    #[test]
    fn term_must_be_a_plain_name() {
        assert_eq!(term_name("screen-256color"), "screen-256color");
        assert_eq!(term_name("rxvt-unicode+x"), "rxvt-unicode+x");
        assert_eq!(term_name(""), DEFAULT_TERM);
        assert_eq!(term_name("../../etc/passwd"), DEFAULT_TERM);
        assert_eq!(term_name("xterm\0"), DEFAULT_TERM);
        assert_eq!(term_name(&"x".repeat(65)), DEFAULT_TERM);
    }
}
