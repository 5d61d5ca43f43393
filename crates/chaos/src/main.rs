//! `pgwarden-chaos`: the fault-injection suite. Parses the options, runs
//! the suite, prints the report and maps its verdict to the exit status
//! (0: every check passed; 1: a check failed or the run was incomplete;
//! 2: the suite could not run).
#![forbid(unsafe_code)]

mod cluster;
mod conn;
mod etcd;
mod faults;
mod localdcs;
mod netns;
mod opts;
mod probe;
mod procs;
mod report;
mod run;
mod schedule;
mod sh;
mod spawned;
mod walfs;
mod workload;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let opts = opts::Opts::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pgwarden-chaos: cannot start the runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match rt.block_on(run::run(opts)) {
        Ok(outcome) => {
            let passed = outcome.failures().is_empty();
            print!("{}", outcome.render());
            if passed {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("pgwarden-chaos: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
