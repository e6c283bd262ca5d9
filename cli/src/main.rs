//! `m87`: the command-line interface of m87, and the device runtime (`m87 runtime …`).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    m87::run(m87::Cli::parse())
}
