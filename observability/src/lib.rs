//! How every m87 binary (`m87-server`, and `m87` with its device runtime) sets up its logs, in
//! one place, so the binaries stay thin and agree on format and filtering. Traces and metrics
//! exporters join here when they come.
//!
//! # Layout
//!
//! - [`init_logging`]: log lines to stderr, as text or JSON, filtered by `RUST_LOG`.
//! - [`init_logging_with_file`]: the same, plus JSON lines to a file (the device runtime's log).
//! - [`shutdown_signal`]: Ctrl-C or SIGTERM, logged, for every long-running role.

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable text (coloured when stderr is a terminal).
    Human,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Sends log lines to stderr in `format`, filtered by `RUST_LOG`, or by `default_filter` (for
/// example `info` or `warn`) when `RUST_LOG` is unset or invalid. A second call does nothing.
pub fn init_logging(default_filter: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// As [`init_logging`], and besides every event that passes `file_filter` (for example `info`)
/// goes to `file` as one JSON object per line (`timestamp`, `level`, `fields`, `target`),
/// whatever `RUST_LOG` says. A second call does nothing.
pub fn init_logging_with_file<W>(
    default_filter: &str,
    format: LogFormat,
    file_filter: &str,
    file: W,
) where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let stderr = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let stderr = match format {
        LogFormat::Human => stderr
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => stderr.json().with_filter(filter).boxed(),
    };
    let to_file = tracing_subscriber::fmt::layer()
        .json()
        .with_current_span(false)
        .with_span_list(false)
        .with_ansi(false)
        .with_writer(file)
        .with_filter(tracing_subscriber::EnvFilter::new(file_filter));
    let _ = tracing_subscriber::registry()
        .with(stderr)
        .with(to_file)
        .try_init();
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}
