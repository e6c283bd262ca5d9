//! `m87 <device> metrics`: a live view of the device's load, or NDJSON samples.

/// `metrics` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Stop after this many samples (with `-o json`).
    #[arg(long)]
    pub count: Option<u64>,
}

/// Runs it; returns the exit code.
pub async fn run(
    _client: &m87_transport::http::ApiClient,
    _device: &str,
    _args: Args,
    _output: crate::output::Output,
) -> anyhow::Result<i32> {
    anyhow::bail!("not built yet")
}
