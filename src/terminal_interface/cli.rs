//! The command line: subcommands and flags, with examples in `--help`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

const EXAMPLES: &str = "\
Examples:
  oi exec -c 'print(6 * 7)'                      run Python in a fresh sandbox
  oi exec -l python -c 'x = 41' -c 'print(x + 1)' blocks share one session: prints 42
  echo 'ls -la /' | oi exec -l shell             code from stdin
  oi exec --network -l sh -c 'apt-get -v'        loosen one setting: allow network
  oi exec --unsafe -c 'import os; print(os.getcwd())'   no sandbox (runs on this machine)
  oi image build                                 (re)build the sandbox image
  oi sandbox ls                                  oi's containers; `oi sandbox prune` cleans up";

/// oi: a language model runs code for you, in a hardened per-session Docker sandbox.
#[derive(Debug, Parser)]
#[command(name = "oi", version, about, after_help = EXAMPLES, arg_required_else_help = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run code in a fresh sandbox and stream its output; exit status follows the code's.
    #[command(after_help = EXEC_HELP)]
    Exec(ExecArgs),
    /// Build or list oi's sandbox images.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Inspect and clean up oi's sandbox containers.
    #[command(subcommand)]
    Sandbox(SandboxCommand),
}

const EXEC_HELP: &str = "\
Blocks given with -c run in order in one session and share its state; the first block
that does not succeed stops the run. Without -c, the code is read from stdin.

Exit status: 0 when every block succeeded; otherwise the failing block's own exit
status (shell, file languages), 1 for a Python exception, 124 for a timeout, 130 for an
interrupt (Ctrl-C), 137 when the interpreter crashed, 125 when the sandbox itself could
not run (Docker unreachable, image build failed), 2 for bad usage.

Examples:
  oi exec -c 'import numpy; print(numpy.arange(3))'
  oi exec -l python -c 'x = 41' -c 'print(x + 1)'
  oi exec -l bash -c 'cd /tmp && export A=1' -c 'echo $PWD $A'
  oi exec --define-language 'perl:pl:perl {file}' -l perl -c 'print 42'
  oi exec --timeout 5 -c 'while True: pass'          ends with status 124
  oi exec --json -c 'print(1)'                       events as JSON lines";

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The language of the blocks: python (py), shell (bash, sh), or one defined with --define-language.
    #[arg(short, long, default_value = "python")]
    pub language: String,
    /// A block of code; repeat for several blocks run in order in one session.
    #[arg(short, long = "code", value_name = "CODE")]
    pub code: Vec<String>,
    /// Print events as JSON lines on stdout instead of plain output.
    #[arg(long)]
    pub json: bool,
    /// Where to save images the code displays (matplotlib figures).
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub image_dir: PathBuf,
    #[command(flatten)]
    pub sandbox: SandboxArgs,
}

/// How the sandbox is made. Safe mode is the default; each flag loosens one thing.
#[derive(Debug, Args, Clone, Default)]
pub struct SandboxArgs {
    /// Run code directly on this machine, with your permissions: NO sandbox.
    #[arg(long, global = true)]
    pub r#unsafe: bool,
    /// Allow network access from the sandbox (default: none).
    #[arg(long, global = true)]
    pub network: bool,
    /// Make the image's filesystem writable (default: read-only but /tmp and /workspace).
    #[arg(long, global = true)]
    pub writable_root: bool,
    /// Memory limit, e.g. 512m, 4g, or `none` (default 2g).
    #[arg(long, global = true, value_name = "SIZE")]
    pub memory: Option<String>,
    /// CPU limit in cores, or `none` (default 1).
    #[arg(long, global = true, value_name = "N")]
    pub cpus: Option<String>,
    /// Process limit, or `none` (default 512).
    #[arg(long, global = true, value_name = "N")]
    pub pids: Option<String>,
    /// The uid:gid code runs as (default 1000:1000; 0 means root, which is shown as unsafe).
    #[arg(long, global = true, value_name = "UID:GID")]
    pub user: Option<String>,
    /// Keep Docker's default capabilities instead of dropping them all.
    #[arg(long, global = true)]
    pub keep_capabilities: bool,
    /// Interrupt any block that runs longer than this many seconds.
    #[arg(long, global = true, value_name = "SECONDS")]
    pub timeout: Option<f64>,
    /// Run sessions from this image instead of oi's own.
    #[arg(long, global = true, value_name = "IMAGE")]
    pub image: Option<String>,
    /// Build oi's image on this base (default: debian:bookworm-slim, or oi-base:bookworm
    /// made offline by `oi image bootstrap-base`).
    #[arg(long, global = true, value_name = "IMAGE", env = "OI_BASE_IMAGE")]
    pub base_image: Option<String>,
    /// Declare a language run from files: NAME:EXTENSION:COMMAND, with {file} in COMMAND.
    #[arg(long, global = true, value_name = "NAME:EXT:COMMAND")]
    pub define_language: Vec<String>,
    /// Show the effective sandbox settings and the container before running.
    #[arg(short, long, global = true)]
    pub verbose: bool,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build oi's sandbox image now, even when it exists.
    Build {
        #[command(flatten)]
        sandbox: SandboxArgs,
    },
    /// List oi's sandbox images.
    Ls,
    /// Make the base image offline with debootstrap (needs root; for machines without a registry).
    BootstrapBase {
        /// The tag to give it.
        #[arg(default_value = "oi-base:bookworm")]
        tag: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum SandboxCommand {
    /// List oi's containers and whether the oi process that made them still runs.
    Ls {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove containers by id, id prefix or name.
    Rm {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Remove the containers of oi processes that are gone (`--all`: every oi container).
    Prune {
        #[arg(long)]
        all: bool,
    },
    /// Show the effective sandbox settings for the given flags.
    Settings {
        #[command(flatten)]
        sandbox: SandboxArgs,
    },
}
