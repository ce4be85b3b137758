//! The `oi` command: parses flags with clap and hands each subcommand to its front end.
//! Errors end here: printed once with their causes, mapped to documented exit codes.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use oi::terminal_interface::cli::{Cli, Command};
use oi::terminal_interface::sanitize::{visible, Kind};
use oi::terminal_interface::{chat, exec, image_cmd, sandbox_cmd, trust, Failure};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("oi: cannot start the async runtime: {err}");
            return ExitCode::from(Failure::EXIT_SANDBOX);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            None => chat::run(cli.chat, cli.sandbox).await,
            Some(Command::Config {
                chat: args,
                sandbox,
            }) => chat::show_config(&args, &sandbox),
            Some(Command::Exec(args)) => exec::run(args).await,
            Some(Command::Image(args)) => image_cmd::run(args).await,
            Some(Command::Sandbox(args)) => sandbox_cmd::run(args).await,
            Some(Command::Trust { file, revoke, list }) => trust::run(file, revoke, list),
        }
    });
    // Containers are removed by the commands themselves; do not wait for stray tasks.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            if failure.is_broken_pipe() {
                return ExitCode::SUCCESS;
            }
            let _ = std::io::stdout().flush();
            // Errors carry text from outside (a model server's message, a sandbox's
            // file names): shown, never obeyed by the terminal.
            eprintln!(
                "oi: {}",
                visible(&format!("{:#}", failure.error), Kind::Prose)
            );
            ExitCode::from(failure.code)
        }
    }
}
