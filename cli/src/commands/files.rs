//! `m87 cp` and `m87 sync`: files between this machine and a device.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use m87_events::token::Operation;

use crate::context::user_client;
use crate::output::{Output, print_json};
use crate::remote;
use crate::session::QuicSession;

/// One side of a copy.
enum Side {
    Local(PathBuf),
    Remote { device: String, path: String },
}

/// `<device>:/path` is remote; anything else (including `./a:b` and `/x:y`) is local.
fn side(arg: &str) -> Side {
    match arg.split_once(':') {
        Some((device, path)) if !device.is_empty() && !device.contains('/') && !path.is_empty() => {
            Side::Remote {
                device: device.to_owned(),
                path: path.to_owned(),
            }
        }
        _ => Side::Local(PathBuf::from(arg)),
    }
}

/// Which way, and the two ends.
pub(crate) struct Transfer {
    /// The device (name, id or unique prefix).
    pub device: String,
    /// The path on the device.
    pub remote: String,
    /// The path on this machine.
    pub local: PathBuf,
    /// From this machine to the device (else the other way).
    pub to_device: bool,
}

fn transfer(src: &str, dst: &str) -> anyhow::Result<Transfer> {
    match (side(src), side(dst)) {
        (Side::Local(local), Side::Remote { device, path }) => Ok(Transfer {
            device,
            remote: path,
            local,
            to_device: true,
        }),
        (Side::Remote { device, path }, Side::Local(local)) => Ok(Transfer {
            device,
            remote: path,
            local,
            to_device: false,
        }),
        (Side::Remote { .. }, Side::Remote { .. }) => {
            anyhow::bail!("copying between two devices is not supported; copy through this machine")
        }
        (Side::Local(_), Side::Local(_)) => {
            anyhow::bail!("one side must be on a device: <device>:/path")
        }
    }
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// A source to copy must exist, and be a file unless `recursive`.
fn check_local_source(local: &std::path::Path, recursive: bool) -> anyhow::Result<()> {
    let meta = std::fs::metadata(local)
        .map_err(|e| anyhow::anyhow!("cannot read '{}': {e}", local.display()))?;
    if meta.is_dir() && !recursive {
        anyhow::bail!(
            "'{}' is a directory (use -r to copy directories)",
            local.display()
        );
    }
    Ok(())
}

/// What a copy moved.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Copied {
    /// Files copied.
    pub files: u64,
    /// Bytes moved, both ways.
    pub bytes: u64,
    /// How long it took.
    pub seconds: f64,
}

/// One copy between this machine and a device, as `m87 cp` (and `m87 mcp`) does it: the
/// session is granted for exactly this transfer and recorded in the audit.
pub(crate) async fn copy(
    client: &m87_transport::http::ApiClient,
    t: &Transfer,
    recursive: bool,
    progress: bool,
) -> anyhow::Result<Copied> {
    if t.to_device {
        // Refuse here what the copy would refuse, before a session is granted and recorded.
        check_local_source(&t.local, recursive)?;
    }
    let args = serde_json::json!({
        "path": t.remote,
        "direction": if t.to_device { "to_device" } else { "from_device" },
        "recursive": recursive,
        "local": t.local.display().to_string(),
    });
    let session = QuicSession::open(client, &t.device, Operation::Copy, args).await?;
    let started = Instant::now();
    let result = if t.to_device {
        remote::cp::push(&session, &t.local, &t.remote, recursive, progress).await
    } else {
        remote::cp::pull(&session, &t.remote, &t.local, recursive, progress).await
    };
    let result = session.explain(result).await;
    session.close().await;
    let stats = result?;
    Ok(Copied {
        files: stats.files,
        bytes: stats.bytes_sent + stats.bytes_received,
        seconds: started.elapsed().as_secs_f64().max(0.001),
    })
}

/// `m87 cp`.
pub async fn cp(src: &str, dst: &str, recursive: bool, output: Output) -> anyhow::Result<()> {
    let t = transfer(src, dst)?;
    if t.to_device {
        check_local_source(&t.local, recursive)?;
    }
    let client = user_client()?;
    let progress = output == Output::Table && std::io::stderr().is_terminal();
    let copied = copy(&client, &t, recursive, progress).await?;
    match output {
        Output::Json => print_json(&copied),
        Output::Table => {
            let (files, bytes, secs) = (copied.files, copied.bytes, copied.seconds);
            println!(
                "copied {files} file{} ({}) in {secs:.1} s ({}/s)",
                if files == 1 { "" } else { "s" },
                human(bytes),
                human((bytes as f64 / secs) as u64)
            );
            Ok(())
        }
    }
}

/// Options of `m87 sync`.
#[derive(Debug, Clone)]
pub struct SyncArgs {
    /// Remove what the source does not have.
    pub delete: bool,
    /// Paths to leave alone.
    pub excludes: Vec<String>,
    /// Report only.
    pub dry_run: bool,
    /// Keep syncing on changes.
    pub watch: bool,
}

fn print_report(report: &m87_files::SyncReport, output: Output) -> anyhow::Result<()> {
    match output {
        Output::Json => print_json(report),
        Output::Table => {
            let verb = if report.dry_run { "would " } else { "" };
            for p in &report.created {
                println!("{verb}create  {p}");
            }
            for p in &report.updated {
                println!("{verb}update  {p}");
            }
            for p in &report.deleted {
                println!("{verb}delete  {p}");
            }
            println!(
                "{} created, {} updated, {} deleted; {} sent, {} received",
                report.created.len(),
                report.updated.len(),
                report.deleted.len(),
                human(report.bytes_sent),
                human(report.bytes_received)
            );
            Ok(())
        }
    }
}

/// `m87 sync`.
pub async fn sync(src: &str, dst: &str, args: SyncArgs, output: Output) -> anyhow::Result<()> {
    let t = transfer(src, dst)?;
    if args.watch && !t.to_device {
        anyhow::bail!(
            "--watch syncs from this machine to a device only: m87 sync --watch ./dir <device>:/path"
        );
    }
    if args.watch && args.dry_run {
        anyhow::bail!("--watch and --dry-run do not go together");
    }
    let client = user_client()?;
    let grant = serde_json::json!({
        "path": t.remote,
        "direction": if t.to_device { "to_device" } else { "from_device" },
        "delete": args.delete,
        "excludes": args.excludes,
        "dry_run": args.dry_run,
        "watch": args.watch,
    });
    let session = Arc::new(QuicSession::open(&client, &t.device, Operation::Sync, grant).await?);
    let opts = remote::sync::SyncOptions {
        delete: args.delete,
        excludes: args.excludes.clone(),
        dry_run: args.dry_run,
        progress: output == Output::Table && std::io::stderr().is_terminal(),
    };
    let result = if args.watch {
        eprintln!(
            "watching {} for changes; press Ctrl-C to stop",
            t.local.display()
        );
        let opener: Arc<dyn remote::ChannelOpener> = session.clone();
        remote::sync::watch(
            opener,
            t.local.clone(),
            t.remote.clone(),
            opts,
            |report| {
                if !report.is_empty() {
                    let _ = print_report(report, output);
                }
            },
            async {
                let _ = tokio::signal::ctrl_c().await;
            },
        )
        .await
    } else {
        match remote::sync::sync(session.as_ref(), &t.local, &t.remote, t.to_device, opts).await {
            Ok(report) => print_report(&report, output),
            Err(e) => Err(e),
        }
    };
    if let Ok(session) = Arc::try_unwrap(session) {
        session.close().await;
    }
    result
}
