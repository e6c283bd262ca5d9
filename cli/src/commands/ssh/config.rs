//! The text of `~/.ssh/config`'s m87 block and of m87's own known_hosts file, as pure
//! functions: adding the block (idempotent, refusing a `Host *.m87` m87 did not write),
//! removing exactly it, and replacing one host's line in known_hosts.

use std::path::Path;

/// First line of the block.
pub const BEGIN: &str = "# BEGIN m87 (written by `m87 ssh enable`; `m87 ssh disable` removes it)";
/// Last line of the block.
pub const END: &str = "# END m87";

/// Why the block cannot be added.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A `Host` line for `*.m87` outside m87's block.
    #[error(
        "{file}:{line} already has `{text}`, which m87 did not write; remove or rename that \
         block, then run `m87 ssh enable` again"
    )]
    ForeignHost {
        /// The config file.
        file: String,
        /// Its line number (1-based).
        line: usize,
        /// The line.
        text: String,
    },
    /// A BEGIN without END (or the reverse).
    #[error(
        "{file} has an unfinished m87 block (a `# BEGIN m87` without `# END m87`); fix it by hand"
    )]
    Unbalanced {
        /// The config file.
        file: String,
    },
}

/// Quotes a path for ssh_config (and the shell that runs ProxyCommand).
fn quote(path: &Path) -> String {
    format!("\"{}\"", path.display().to_string().replace('"', "\\\""))
}

/// The block for this m87 executable and known_hosts file; `profile` (a profile's name, which
/// is letters, digits, `-` and `_` only) goes on the ProxyCommand as `--profile NAME`.
pub fn block(exe: &Path, known_hosts: &Path, profile: Option<&str>) -> String {
    let profile = profile
        .map(|p| format!("--profile {p} "))
        .unwrap_or_default();
    format!(
        "{BEGIN}\nHost *.m87\n    ProxyCommand {} {profile}ssh-proxy %h %r\n    UserKnownHostsFile {}\n    \
         StrictHostKeyChecking yes\n    CheckHostIP no\n    UpdateHostKeys no\n{END}\n",
        quote(exe),
        quote(known_hosts)
    )
}

/// The line range (start, end inclusive, 0-based) of m87's block, if any.
fn find_block(lines: &[&str], file: &str) -> Result<Option<(usize, usize)>, ConfigError> {
    let begin = lines
        .iter()
        .position(|l| l.trim_start().starts_with("# BEGIN m87"));
    let end = lines.iter().position(|l| l.trim() == END);
    match (begin, end) {
        (None, None) => Ok(None),
        (Some(b), Some(e)) if b < e => Ok(Some((b, e))),
        _ => Err(ConfigError::Unbalanced {
            file: file.to_owned(),
        }),
    }
}

/// Whether a config line is a `Host` line naming `*.m87`.
fn names_m87(line: &str) -> bool {
    let mut words = line.split_whitespace();
    let Some(keyword) = words.next() else {
        return false;
    };
    let (keyword, rest) = match keyword.split_once('=') {
        Some((k, r)) => (k, Some(r)),
        None => (keyword, None),
    };
    keyword.eq_ignore_ascii_case("host")
        && rest
            .into_iter()
            .chain(words)
            .any(|p| p.trim_matches('"').eq_ignore_ascii_case("*.m87"))
}

/// `config` with m87's block first (replacing an older one in place of it), or an error when
/// another `Host *.m87` is there. The rest of the file is kept as it is.
pub fn enable(config: &str, block: &str, file: &str) -> Result<String, ConfigError> {
    let lines: Vec<&str> = config.lines().collect();
    let ours = find_block(&lines, file)?;
    for (i, line) in lines.iter().enumerate() {
        let inside = ours.is_some_and(|(b, e)| (b..=e).contains(&i));
        if !inside && names_m87(line) {
            return Err(ConfigError::ForeignHost {
                file: file.to_owned(),
                line: i + 1,
                text: line.trim().to_owned(),
            });
        }
    }
    let rest = remove_lines(config, ours);
    // First in the file: OpenSSH takes the first value it finds for each setting.
    Ok(if rest.is_empty() {
        block.to_owned()
    } else {
        format!("{block}\n{rest}")
    })
}

/// `config` without m87's block (unchanged when there is none).
pub fn disable(config: &str, file: &str) -> Result<String, ConfigError> {
    let lines: Vec<&str> = config.lines().collect();
    let ours = find_block(&lines, file)?;
    Ok(remove_lines(config, ours))
}

/// The text without the block's lines (and the one blank line `enable` put after it).
fn remove_lines(config: &str, block: Option<(usize, usize)>) -> String {
    let Some((b, e)) = block else {
        return config.to_owned();
    };
    let lines: Vec<&str> = config.lines().collect();
    let mut after = e + 1;
    if lines.get(after).is_some_and(|l| l.trim().is_empty()) {
        after += 1;
    }
    let kept: Vec<&str> = lines[..b].iter().chain(&lines[after..]).copied().collect();
    if kept.is_empty() {
        return String::new();
    }
    let mut text = kept.join("\n");
    if config.ends_with('\n') {
        text.push('\n');
    }
    text
}

/// known_hosts text with `host`'s line set to `key` (other hosts' lines kept).
pub fn set_known_host(known: &str, host: &str, key: &str) -> String {
    let mut text: String = known
        .lines()
        .filter(|l| l.split_whitespace().next() != Some(host))
        .map(|l| format!("{l}\n"))
        .collect();
    text.push_str(&format!("{host} {key}\n"));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours() -> String {
        block(
            Path::new("/usr/bin/m87"),
            Path::new("/home/a/.config/m87/known_hosts"),
            None,
        )
    }

    #[test]
    fn enable_puts_the_block_first_keeps_the_rest_and_is_idempotent() {
        let config = "Host work\n    User alice\n";
        let once = enable(config, &ours(), "c").unwrap();
        assert!(once.starts_with(BEGIN));
        assert!(once.contains("ProxyCommand \"/usr/bin/m87\" ssh-proxy %h %r"));
        assert!(once.ends_with("Host work\n    User alice\n"));
        assert_eq!(enable(&once, &ours(), "c").unwrap(), once);
        assert_eq!(disable(&once, "c").unwrap(), config);
    }

    #[test]
    fn enable_on_an_empty_file_and_disable_back_to_empty() {
        let once = enable("", &ours(), "c").unwrap();
        assert_eq!(once, ours());
        assert_eq!(disable(&once, "c").unwrap(), "");
    }

    #[test]
    fn a_new_executable_path_replaces_the_old_block() {
        let old = enable("Host x\n", &ours(), "c").unwrap();
        let new_block = block(Path::new("/opt/m87"), Path::new("/k"), None);
        let new = enable(&old, &new_block, "c").unwrap();
        assert!(new.contains("/opt/m87") && !new.contains("/usr/bin/m87"));
        assert_eq!(new.matches("# BEGIN m87").count(), 1);
        assert!(new.ends_with("Host x\n"));
    }

    #[test]
    fn a_profile_chosen_for_enable_goes_on_the_proxy_command() {
        let b = block(Path::new("/usr/bin/m87"), Path::new("/k"), Some("staging"));
        assert!(b.contains("ProxyCommand \"/usr/bin/m87\" --profile staging ssh-proxy %h %r"));
    }

    #[test]
    fn a_foreign_m87_host_is_refused_with_file_and_line() {
        let config = "Host a\n  User b\n\nHost   *.M87 other\n  ProxyCommand x\n";
        let err = enable(config, &ours(), "/h/.ssh/config").unwrap_err();
        assert_eq!(
            err,
            ConfigError::ForeignHost {
                file: "/h/.ssh/config".into(),
                line: 4,
                text: "Host   *.M87 other".into()
            }
        );
        assert!(err.to_string().starts_with("/h/.ssh/config:4 already has"));
    }

    #[test]
    fn disable_without_a_block_changes_nothing_and_an_unfinished_block_is_an_error() {
        assert_eq!(disable("Host a\n", "c").unwrap(), "Host a\n");
        assert!(matches!(
            disable("# BEGIN m87\nHost *.m87\n", "c"),
            Err(ConfigError::Unbalanced { .. })
        ));
    }

    #[test]
    fn known_hosts_keeps_one_line_per_host() {
        let k = set_known_host("", "a.m87", "ssh-ed25519 AAA1");
        let k = set_known_host(&k, "b.m87", "ssh-ed25519 BBB");
        let k = set_known_host(&k, "a.m87", "ssh-ed25519 AAA2");
        assert_eq!(k, "b.m87 ssh-ed25519 BBB\na.m87 ssh-ed25519 AAA2\n");
    }
}
