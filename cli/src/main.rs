//! `ipcctl`, the command-line client of ipcd: parse the command line, run the
//! subcommand, turn a failure into one line on stderr and an exit code (SPEC §9).

use std::process::ExitCode;

use clap::Parser;

mod cli;
mod command;
mod output;
mod parse;
mod pipeline;
mod printer;
mod report;
mod style;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match command::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => report::report(&err),
    }
}
