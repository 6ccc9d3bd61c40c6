//! The `lull` binary: parse the command line, load and validate the configuration, and hand over
//! to a command in [`cli`]; its outcome is the exit code (see [`cli`] for the codes).

mod cli;

use std::process::ExitCode;

use clap::Parser;

use lull::config::Config;

/// mimalloc: lull allocates per message (fragments, output records, delivery futures) from
/// several threads; glibc's allocator spent a quarter of the CPU on that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let settings = cli.command.settings().cloned().unwrap_or_default();
    let config = match Config::from_process_env_with(settings.env_file.as_deref(), settings.flags) {
        Ok(c) => c,
        Err(e) => {
            for problem in &e.0 {
                eprintln!("{problem}");
            }
            return ExitCode::from(cli::EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(cli::dispatch(cli.command, config));
    // A Kafka call still blocking a thread (a commit retrying against an unreachable broker) must
    // not hold the exit back once the command is done: what it would still do, the next owner of
    // the partition redoes.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    code
}
