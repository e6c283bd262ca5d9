//! `m87 <device> ls [-l] [-a] PATH`: a directory on the device.

/// `ls` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The path on the device.
    pub path: String,
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
