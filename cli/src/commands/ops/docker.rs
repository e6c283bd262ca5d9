//! `m87 <device> docker ARGS…`: the local `docker` CLI against the device's Docker socket.

/// `docker` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The docker command and its arguments, as you would give them to `docker`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
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
