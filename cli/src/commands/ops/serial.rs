//! `m87 <device> serial PORT`: a device's serial port as a local pseudo-terminal.

/// `serial` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The port on the device (`/dev/ttyUSB0`).
    pub port: String,
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
