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
        cli::Command::Ctl(args) => return cmd_ctl(args),
        cli::Command::VipGuard {
            interface,
            address,
            up_command,
            down_command,
        } => return vip_guard(interface, &address, up_command, down_command),
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

/// `pgwarden vip-guard`: exits 0 with the address down.
fn vip_guard(
    interface: String,
    address: &str,
    up_command: Option<String>,
    down_command: Option<String>,
) -> std::process::ExitCode {
    let parsed = address
        .split_once('/')
        .and_then(|(a, p)| Some((a.parse().ok()?, p.parse().ok()?)));
    let Some((address, prefix)) = parsed else {
        eprintln!("pgwarden vip-guard: --address {address:?} is not address/prefix");
        return std::process::ExitCode::from(2);
    };
    let code = watchdog::guard::main(watchdog::guard::GuardSpec {
        interface,
        address,
        prefix,
        up_command,
        down_command,
    });
    std::process::ExitCode::from(code.clamp(0, 255) as u8)
}

/// `pgwarden ctl`: its own exit codes (see the README), no logging.
fn cmd_ctl(args: ctl::CtlArgs) -> std::process::ExitCode {
    let r = runtime::build(1)
        .map_err(|e| ctl::CtlError::Usage(e.to_string()))
        .and_then(|rt| rt.block_on(ctl::run(args)));
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgwarden ctl: {e}");
            std::process::ExitCode::from(e.exit_code())
        }
    }
}
