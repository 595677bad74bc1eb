//! `ferrite`: the gateway binary.

use std::process::ExitCode;

use clap::Parser;
use ferrite_gateway::cli::{Cli, Command};
use ferrite_gateway::commands;

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    let mut stdout = std::io::stdout().lock();
    let code = match cli.command {
        Command::Check { config } => commands::check(&config, &mut stdout)?,
        Command::Schema { kind } => commands::schema_cmd(kind.into(), &mut stdout)?,
    };
    Ok(code)
}
