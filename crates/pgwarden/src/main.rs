//! The `pgwarden` binary: parse the command line, run the subcommand, map
//! errors to exit codes.
#![forbid(unsafe_code)]

mod cli;
mod cmd_agent;
mod cmd_proxy;
mod cmd_up;
mod runtime;

use clap::Parser;

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    runtime::init_logging(cli.log.as_deref());
    let r = match cli.command {
        cli::Command::Proxy(a) => cmd_proxy::run(a),
        cli::Command::Up(a) => cmd_up::run(a),
        cli::Command::Agent(a) => cmd_agent::run(a),
        cli::Command::Fence { file } => agent::fence::supervise(&file).map_err(Into::into),
        cli::Command::CheckConfig { config } => config::load(&config)
            .map(|_| println!("{}: OK", config.display()))
            .map_err(Into::into),
    };
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgwarden: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
