//! `m87-server`: the m87 platform. With no subcommand it runs the control plane on its embedded
//! defaults (SQLite in the data directory, in-process bus) with one relay node, serving the REST
//! API over HTTPS and device tunnels and client sessions over QUIC.

use clap::Parser;
use m87_server::cli::Cli;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    cli.init_tracing();
    match m87_server::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("m87-server: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
