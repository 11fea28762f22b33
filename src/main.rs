//! The `vw` command: one subcommand per job, each in its own module under `cmd/`.

mod cmd;

use clap::Parser;
use std::process::ExitCode;

/// See the workspace Cargo.toml: glibc's allocator unmaps and re-faults candle's large buffers.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = cmd::Cli::parse();
    init_logging(cli.verbose);
    match cmd::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One readable line with its causes; backtraces only when RUST_BACKTRACE asks.
            eprintln!("error: {e:#}");
            if std::env::var("RUST_BACKTRACE").is_ok_and(|v| v != "0") {
                eprintln!("{}", e.backtrace());
            }
            // As a shell reports a process ended by Ctrl-C; the checkpoint is written.
            match cmd::interrupted(&e) {
                true => ExitCode::from(130),
                false => ExitCode::FAILURE,
            }
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn,vw=info",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("VW_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).without_time().init();
}
