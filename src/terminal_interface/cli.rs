//! The command line: subcommands and flags, with examples in `--help`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

const EXAMPLES: &str = "\
Examples:
  oi                                             chat; code runs in a sandbox after you confirm it
  oi \"plot the sizes of the files in this folder\"  start with a message
  oi -y --json \"run the tests and summarise\"    CI: no prompts, JSON lines, exit code
  cat task.md | oi -y                            the first message from stdin
  oi --local                                     a local server (Ollama at localhost:11434)
  oi -m claude-sonnet-4-5                        Anthropic (ANTHROPIC_API_KEY)
  oi --api-base http://127.0.0.1:8181/v1 -m smollm2 --api-key none
  oi --profile work                              settings from [profiles.work] in config.toml
  oi --languages python                          offer the model Python only (no shell)
  oi --resume                                    go on with the last conversation
  oi config                                      the effective settings and where they come from
  oi exec -c 'print(6 * 7)'                      run code in a fresh sandbox, no model
  oi sandbox ls                                  oi's containers; `oi sandbox prune` cleans up

Settings, in increasing precedence: ~/.config/oi/config.toml, its [profiles.NAME],
./oi.toml (or the nearest above), OI_MODEL / OI_API_BASE / OI_API_KEY, --local, flags;
OPENAI_API_KEY / OPENAI_BASE_URL (ANTHROPIC_API_KEY / ANTHROPIC_BASE_URL for Claude)
when nothing above the files set the key or the URL.

In the chat: %help lists the magic commands; Ctrl-C stops the model or the code;
Ctrl-C at an empty prompt or Ctrl-D leaves.

Exit status: 0 the model finished; 1 other failures; 2 bad usage or settings; 3 the
model's server failed; 4 the iteration cap was hit; 5 a block was declined; 125 the
sandbox could not run; 130 interrupted; 143 (SIGTERM) or 129 (SIGHUP) stopped by a
signal, after interrupting the block, saving the conversation and removing the sandbox.";

/// oi: a language model runs code for you, in a hardened per-session Docker sandbox.
#[derive(Debug, Parser)]
#[command(name = "oi", version, about, after_help = EXAMPLES, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub chat: ChatArgs,
    #[command(flatten)]
    pub sandbox: SandboxArgs,
}

/// The chat's flags (the sandbox's are in [`SandboxArgs`]).
#[derive(Debug, Args, Clone, Default)]
pub struct ChatArgs {
    /// The first message (words are joined); without it, and with stdin not a terminal,
    /// stdin is the first message.
    #[arg(value_name = "MESSAGE")]
    pub message: Vec<String>,
    /// Run code without asking first.
    #[arg(short = 'y', long)]
    pub auto_run: bool,
    /// The model, e.g. gpt-4o, claude-sonnet-4-5, llama3.1.
    #[arg(short, long)]
    pub model: Option<String>,
    /// The server's base URL (OpenAI-compatible: usually ends in /v1).
    #[arg(long, value_name = "URL")]
    pub api_base: Option<String>,
    /// The API key (prefer OPENAI_API_KEY / ANTHROPIC_API_KEY: flags show in `ps`).
    #[arg(long, value_name = "KEY")]
    pub api_key: Option<String>,
    /// The API the server speaks (default: anthropic for claude-* models, else openai).
    #[arg(long, value_parser = ["openai", "anthropic"])]
    pub provider: Option<String>,
    /// Use a local OpenAI-compatible server: Ollama's URL and llama3.1 unless set otherwise.
    #[arg(long)]
    pub local: bool,
    /// The model's context window in tokens (default: known per model, else 8192).
    #[arg(long, value_name = "TOKENS")]
    pub context_window: Option<usize>,
    /// The reply budget in tokens.
    #[arg(long, value_name = "TOKENS")]
    pub max_tokens: Option<u32>,
    /// The most console output the model is sent per block, in characters (default 2800).
    #[arg(long, value_name = "CHARS")]
    pub max_output: Option<usize>,
    /// Model replies per message before oi stops the turn (default 30).
    #[arg(long, value_name = "N")]
    pub max_iterations: Option<usize>,
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Added to the system message.
    #[arg(long, value_name = "TEXT")]
    pub custom_instructions: Option<String>,
    /// Replaces the system message.
    #[arg(long, value_name = "TEXT")]
    pub system_message: Option<String>,
    /// Text mode: the model writes code in fenced blocks instead of calling a tool.
    #[arg(long)]
    pub no_functions: bool,
    /// Run code in the sandbox (the default; overrides `unsafe = true` in a config file).
    #[arg(long, conflicts_with = "unsafe")]
    pub safe: bool,
    /// Settings from [profiles.NAME] in config.toml (or OI_PROFILE).
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,
    /// Print the conversation as JSON lines (LMC) on stdout; diagnostics on stderr.
    #[arg(long)]
    pub json: bool,
    /// No colours and no cursor movement (the default when stdout is not a terminal).
    #[arg(long)]
    pub plain: bool,
    /// List saved conversations and pick one to resume.
    #[arg(long)]
    pub conversations: bool,
    /// Resume a saved conversation: its id (or a prefix), or the latest without one.
    #[arg(long, value_name = "ID", num_args = 0..=1, default_missing_value = "")]
    pub resume: Option<String>,
}

// Parsed once per run: the size of a variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the effective settings and where each comes from (secrets masked).
    Config {
        #[command(flatten)]
        chat: ChatArgs,
        #[command(flatten)]
        sandbox: SandboxArgs,
    },
    /// Run code in a fresh sandbox and stream its output; exit status follows the code's.
    #[command(after_help = EXEC_HELP)]
    Exec(ExecArgs),
    /// Build or list oi's sandbox images.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Inspect and clean up oi's sandbox containers.
    #[command(subcommand)]
    Sandbox(SandboxCommand),
    /// Trust a project's oi.toml: let the settings in it that loosen the sandbox or send
    /// your key elsewhere apply, until the file changes.
    #[command(after_help = TRUST_HELP)]
    Trust {
        /// The file (default: the oi.toml that applies in this folder).
        file: Option<PathBuf>,
        /// Stop trusting the file.
        #[arg(long, conflicts_with = "list")]
        revoke: bool,
        /// List the trusted files and whether each is unchanged.
        #[arg(long)]
        list: bool,
    },
}

const TRUST_HELP: &str = "\
A project's oi.toml (in this folder or one above) comes with the code: a cloned
repository's is written by its authors, and code in the sandbox can write one into the
workspace. Until you trust it, oi applies what cannot weaken safety (tighter limits,
the model, instructions, the workspace mode) and ignores, saying so, what could:
unsafe, network, writable_root, keep_capabilities, user, looser limits or `none`,
auto_run, api_base, api_key, provider, the sandbox image, declared languages (or a
language your settings do not offer), and the
project image's dockerfile, packages and base image (their builds run with network
access). Trust is recorded with the
file's SHA-256 (and, for a project image, the fingerprint of its build folder and
packages) in trust.toml beside your config.toml: a changed file is untrusted again.
A project file owned by another user, or writable by anyone, is ignored whole.

Examples:
  oi trust                    trust ./oi.toml (or the nearest above)
  oi trust path/to/oi.toml
  oi trust --list
  oi trust --revoke";

const EXEC_HELP: &str = "\
Blocks given with -c run in order in one session and share its state; the first block
that does not succeed stops the run. Without -c, the code is read from stdin.

Exit status: 0 when every block succeeded; otherwise the failing block's own exit
status (shell, file languages), 1 for a Python exception, 124 for a timeout, 130 for an
interrupt (Ctrl-C), 137 when the interpreter crashed, 125 when the sandbox itself could
not run (Docker unreachable, image build failed), 2 for bad usage, 143 or 129 when
SIGTERM or SIGHUP stopped it (the block is interrupted and the sandbox removed first).

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
    #[arg(long)]
    pub r#unsafe: bool,
    /// Allow network access from the sandbox (default: none).
    #[arg(long)]
    pub network: bool,
    /// Make the image's filesystem writable (default: read-only but /tmp and /workspace).
    #[arg(long)]
    pub writable_root: bool,
    /// Memory limit, e.g. 512m, 4g, or `none` (default 2g).
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// CPU limit in cores, or `none` (default 1).
    #[arg(long, value_name = "N")]
    pub cpus: Option<String>,
    /// Process limit, or `none` (default 512).
    #[arg(long, value_name = "N")]
    pub pids: Option<String>,
    /// The uid:gid code runs as (default 1000:1000; 0 means root, which is shown as unsafe).
    #[arg(long, value_name = "UID:GID")]
    pub user: Option<String>,
    /// Keep Docker's default capabilities instead of dropping them all.
    #[arg(long)]
    pub keep_capabilities: bool,
    /// Interrupt any block that runs longer than this many seconds.
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<f64>,
    /// Run sessions from this image instead of oi's own.
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
    /// Build oi's image on this base (default: debian:bookworm-slim, or oi-base:bookworm
    /// made offline by `oi image bootstrap-base`).
    #[arg(long, value_name = "IMAGE", env = "OI_BASE_IMAGE")]
    pub base_image: Option<String>,
    /// What /workspace is: rw (this folder, read-write; the default), ro (read-only),
    /// none (an empty folder of the sandbox's own), copy (a copy of this folder; changes
    /// stay in the sandbox until copied out with %download).
    #[arg(long, value_name = "MODE", value_parser = ["rw", "ro", "none", "copy"])]
    pub workspace: Option<String>,
    /// Size limit of a private workspace (`--workspace none` or `copy`), which lives in
    /// memory: e.g. 512m, 4g (default 1g).
    #[arg(long, value_name = "SIZE")]
    pub workspace_size: Option<String>,
    /// Mount the folder even if it is /, your home folder, or holds the Docker socket.
    #[arg(long)]
    pub mount_anyway: bool,
    /// The only languages offered to the model (and run), e.g. `python` or `python,shell`:
    /// built-ins (python, shell, or an alias) and declared ones; languages declared with
    /// --define-language are offered too (default: python, shell and every declared one).
    #[arg(long, value_name = "NAMES", value_delimiter = ',')]
    pub languages: Vec<String>,
    /// Declare a language run from files, NAME:EXTENSION:COMMAND with {file} in COMMAND,
    /// and offer it.
    #[arg(long, value_name = "NAME:EXT:COMMAND")]
    pub define_language: Vec<String>,
    /// Show the effective sandbox settings and the container before running.
    #[arg(short, long)]
    pub verbose: bool,
}

// Parsed once per run: the size of a variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build oi's sandbox image now, even when it exists.
    Build {
        #[command(flatten)]
        sandbox: SandboxArgs,
    },
    /// List oi's images (its own and projects'), marking the current ones.
    Ls {
        #[command(flatten)]
        base: BaseImageArg,
    },
    /// Remove oi's images that are no longer current (older recipes, older project builds).
    /// Images a container uses stay.
    Prune {
        #[command(flatten)]
        base: BaseImageArg,
        /// Only this project's older builds (as `oi image ls` names the project).
        #[arg(long, value_name = "NAME")]
        project: Option<String>,
    },
    /// Make the base image offline with debootstrap (needs root; for machines without a registry).
    BootstrapBase {
        /// The tag to give it.
        #[arg(default_value = "oi-base:bookworm")]
        tag: String,
    },
}

/// The base image oi's own image is built on, where only that matters.
#[derive(Debug, Args, Clone, Default)]
pub struct BaseImageArg {
    /// The base oi's image is built on (default: as `[sandbox] base_image` says, else
    /// debian:bookworm-slim if present, else oi-base:bookworm).
    #[arg(long, value_name = "IMAGE", env = "OI_BASE_IMAGE")]
    pub base_image: Option<String>,
}

#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum SandboxCommand {
    /// List oi's containers and whether the oi process that made them still runs.
    Ls {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Copy into or out of a sandbox's workspace: one side is CONTAINER:PATH (CONTAINER
    /// as `oi sandbox ls` shows it); e.g. `oi sandbox cp data.csv 3fa9:` or
    /// `oi sandbox cp 3fa9:out/report.md .`
    Cp {
        source: String,
        dest: String,
        /// The most a copy out may take (sparse files count at their full size).
        #[arg(long, value_name = "SIZE", default_value = "1g")]
        limit: String,
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
