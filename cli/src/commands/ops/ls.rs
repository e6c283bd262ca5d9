//! `m87 <device> ls [-l] [-a] PATH`: a directory on the device, like `ls`.

use m87_events::token::Operation;
use m87_events::tunnel::listing::{Entry, EntryKind, ListRequest};
use m87_events::tunnel::{Channel, ExitStatus, Frame};

use crate::output::Output;
use crate::remote::{ChannelOpener, OpenError};
use crate::session::QuicSession;

/// `ls` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Long format: mode, owner, group, size, modification time, name (`-> target`).
    #[arg(short = 'l')]
    pub long: bool,
    /// Include entries whose names start with a dot.
    #[arg(short = 'a', long = "all")]
    pub all: bool,
    /// The path on the device: absolute, or from the runtime's home directory (`~`, `logs`),
    /// as `m87 cp` takes it.
    #[arg(default_value = "~")]
    pub path: String,
}

/// Runs it; returns the exit code.
pub async fn run(
    client: &m87_transport::http::ApiClient,
    device: &str,
    args: Args,
    output: Output,
) -> anyhow::Result<i32> {
    let request = ListRequest {
        path: args.path.clone(),
        all: args.all,
    };
    let session = QuicSession::open(
        client,
        device,
        Operation::List,
        serde_json::to_value(&request)?,
    )
    .await?;
    let entries = session.explain(fetch(&session, request).await).await;
    session.close().await;
    let entries = entries?;
    match output {
        Output::Json => crate::output::print_json(&entries)?,
        Output::Table if args.long => {
            for line in long_lines(&entries) {
                println!("{line}");
            }
        }
        Output::Table => {
            for e in &entries {
                println!("{}", e.name);
            }
        }
    }
    Ok(0)
}

/// The entries the device sends for `request`.
pub async fn fetch(opener: &dyn ChannelOpener, request: ListRequest) -> anyhow::Result<Vec<Entry>> {
    let mut opened = match opener.open(Channel::List(request)).await {
        Ok(opened) => opened,
        Err(OpenError::Refused { message, .. }) => anyhow::bail!("{message}"),
        Err(e) => return Err(e.into()),
    };
    let mut entries = Vec::new();
    let mut exit = None;
    loop {
        match opened.reader.next().await {
            Ok(Some(Frame::Data(lines))) => {
                for line in lines.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                    entries.push(serde_json::from_slice(line).map_err(|e| {
                        anyhow::anyhow!("the device sent an entry this m87 cannot read: {e}")
                    })?);
                }
            }
            Ok(Some(Frame::Exit(status))) => exit = Some(status),
            Ok(Some(Frame::Error(message))) => anyhow::bail!("{message}"),
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(e) => anyhow::bail!("the session broke: {e}"),
        }
    }
    match exit {
        Some(ExitStatus::Code(0)) => Ok(entries),
        _ => anyhow::bail!("the device ended the listing early"),
    }
}

/// `ls -l` lines: mode, owner, group, size (right-aligned), mtime, name (`-> target`).
pub fn long_lines(entries: &[Entry]) -> Vec<String> {
    let owner = |e: &Entry| e.owner.clone().unwrap_or_else(|| e.uid.to_string());
    let group = |e: &Entry| e.group.clone().unwrap_or_else(|| e.gid.to_string());
    let width =
        |f: &dyn Fn(&Entry) -> String| entries.iter().map(|e| f(e).len()).max().unwrap_or(0);
    let (wo, wg) = (width(&owner), width(&group));
    let ws = width(&|e: &Entry| e.size.to_string());
    entries
        .iter()
        .map(|e| {
            let mtime = e
                .mtime
                .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
                .unwrap_or_else(|| "?".repeat(16));
            let mut line = format!(
                "{} {:<wo$} {:<wg$} {:>ws$} {mtime} {}",
                e.mode_string(),
                owner(e),
                group(e),
                e.size,
                e.name
            );
            if let (EntryKind::Symlink, Some(target)) = (e.kind, &e.target) {
                line.push_str(" -> ");
                line.push_str(target);
            }
            line
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    #[test]
    fn combined_flags_parse_like_ls() {
        let cli = Cli::try_parse_from(["ls", "-la", "/tmp"]).unwrap();
        assert!(cli.args.long && cli.args.all);
        assert_eq!(cli.args.path, "/tmp");
        let cli = Cli::try_parse_from(["ls"]).unwrap();
        assert_eq!(cli.args.path, "~");
    }

    #[tokio::test]
    async fn entries_come_from_the_agent_service_and_a_missing_path_is_its_message() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b"), "12").unwrap();
        std::fs::create_dir(dir.path().join("a")).unwrap();
        let opener = crate::remote::testing::LocalOpener::default();
        let path = dir.path().display().to_string();
        let entries = fetch(&opener, ListRequest { path, all: false })
            .await
            .unwrap();
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!((entries[1].kind, entries[1].size), (EntryKind::File, 2));
        let missing = dir.path().join("gone").display().to_string();
        let request = ListRequest {
            path: missing.clone(),
            all: false,
        };
        let err = fetch(&opener, request).await.unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("cannot list {missing}: No such file")),
            "{err}"
        );
    }

    #[test]
    fn long_lines_read_like_ls_l() {
        let entry = |name: &str, kind, mode, size| Entry {
            name: name.into(),
            kind,
            target: None,
            size,
            mode,
            mtime: chrono::DateTime::from_timestamp(1_700_000_000, 0),
            uid: 1000,
            gid: 1000,
            owner: Some("pi".into()),
            group: None,
        };
        let mut link = entry("hosts", EntryKind::Symlink, 0o120777, 10);
        link.target = Some("/etc/hosts".into());
        let lines = long_lines(&[entry("data", EntryKind::Dir, 0o040755, 4096), link]);
        assert_eq!(
            lines,
            [
                "drwxr-xr-x pi 1000 4096 2023-11-14 22:13 data",
                "lrwxrwxrwx pi 1000   10 2023-11-14 22:13 hosts -> /etc/hosts",
            ]
        );
    }
}
