//! `m87 <device> logs`: the runtime's log, a unit's journal or a container's log.

/// `logs` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Keep printing new lines until Ctrl-C.
    #[arg(short = 'f', long)]
    pub follow: bool,
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
