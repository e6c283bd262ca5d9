//! `m87 <device> status`: is it up and healthy, for people and scripts.

/// `status` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs it; returns the exit code.
pub async fn run(
    _client: &m87_transport::http::ApiClient,
    _device: &str,
    _args: Args,
    _output: crate::output::Output,
) -> anyhow::Result<i32> {
    anyhow::bail!("not built yet")
}
