//! `oi`: the chat. Reads the settings, prepares the sandbox (building its image with a
//! progress bar the first time), starts a core conversation and drives it: the user's
//! lines in, its events drawn (or printed as JSON lines), confirmations asked, magic
//! commands run, every completed message saved.
//!
//! Non-interactive (stdin or stdout not a terminal, or `--json`): runs the first message
//! to the end of its turn and exits with a code that says how it ended.

mod input;
mod magic;
pub mod render;
pub mod store;

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;

use anyhow::Context;

use super::cli::{ChatArgs, SandboxArgs};
use super::config::{self, Paths, Resolved};
use super::sanitize::{self, visible, Kind};
use super::signals::Quit;
use super::{setup, Failure};
use crate::core::config::Config;
use crate::core::llm::ProviderKind;
use crate::core::messages::MessageType;
use crate::core::protocol::{Answer, Event, EventMsg, Request, TurnEnd};
use crate::core::respond::Conversation;
use input::{Input, Prompter};
use render::{Renderer, Style};
use store::Store;

/// Exit codes of a non-interactive run, by how its turn ended.
pub const EXIT_MODEL: u8 = 3;
pub const EXIT_ITERATION_CAP: u8 = 4;
pub const EXIT_DECLINED: u8 = 5;
pub const EXIT_INTERRUPTED: u8 = 130;

pub fn exit_code(end: TurnEnd) -> u8 {
    match end {
        TurnEnd::Finished => 0,
        TurnEnd::ModelError => EXIT_MODEL,
        TurnEnd::IterationCap => EXIT_ITERATION_CAP,
        TurnEnd::Declined => EXIT_DECLINED,
        TurnEnd::SandboxError => Failure::EXIT_SANDBOX,
        TurnEnd::Interrupted => EXIT_INTERRUPTED,
    }
}

/// The settings for these flags, from every layer.
pub fn resolve(
    chat: &ChatArgs,
    sandbox: &SandboxArgs,
) -> Result<(Resolved, Config, Paths, bool), Failure> {
    let paths = Paths::from_env();
    let env = std::env::vars().collect();
    let cwd = std::env::current_dir().context("reading the current directory")?;
    let resolved = Resolved::load(&paths, &cwd, &env, chat, sandbox).map_err(Failure::usage)?;
    let settings = resolved.settings().map_err(Failure::usage)?;
    let project_dir = resolved.project_dir.clone().unwrap_or_else(|| cwd.clone());
    let project_name = project_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "project".into());
    let mut config = config::core_config(&settings, sandbox.mount_anyway, &project_name, &|key| {
        resolved.name_of(key)
    })
    .map_err(Failure::usage)?;
    // A build from a trusted project file must build what was trusted.
    if let (Some(project), Some(trusted)) = (&mut config.sandbox.project, &resolved.project_build) {
        project.trusted = Some(trusted.clone());
    }
    Ok((resolved, config, paths, settings.verbose.unwrap_or(false)))
}

/// What the user must know about the settings files: a project file ignored, or
/// settings in it ignored because it is not trusted. Once per run, on stderr.
pub fn tell_settings_notices(resolved: &Resolved) {
    for notice in &resolved.notices {
        eprintln!("oi: {}", visible(notice, Kind::Prose));
    }
}

/// `oi config`.
pub fn show_config(chat: &ChatArgs, sandbox: &SandboxArgs) -> Result<u8, Failure> {
    let (resolved, config, paths, _) = resolve(chat, sandbox)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "# files read, in order of precedence (later wins):")?;
    if resolved.files.is_empty() {
        writeln!(
            out,
            "#   (none; the user file would be {})",
            paths.config_file.display()
        )?;
    }
    // A project file's values and a folder's name come from the working tree: shown,
    // never obeyed by the terminal.
    let shown = |text: &str| visible(text, Kind::Prose).into_owned();
    for file in &resolved.files {
        writeln!(out, "#   {}", shown(&file.display().to_string()))?;
    }
    for notice in &resolved.notices {
        writeln!(out, "# note: {}", shown(notice))?;
    }
    let rows = resolved.describe();
    let width = rows
        .iter()
        .map(|(k, v, _)| k.len() + v.len() + 3)
        .max()
        .unwrap_or(0);
    for (key, value, source) in rows {
        let pair = shown(&format!("{key} = {value}"));
        writeln!(out, "{pair:<width$}  # {}", shown(&source))?;
    }
    writeln!(
        out,
        "# effective: model {} via {} ({})",
        shown(&config.model),
        shown(&config.endpoint.api_base),
        match config.endpoint.kind {
            ProviderKind::OpenAi => "OpenAI-compatible",
            ProviderKind::Anthropic => "Anthropic",
        }
    )?;
    writeln!(
        out,
        "# effective: languages offered {}",
        shown(&config.sandbox.languages.names().join(", "))
    )?;
    Ok(0)
}

/// What a hosted model needs and a local one does not.
fn missing_model_help(config: &Config) -> Option<String> {
    let hosted = config.endpoint.api_base.contains("api.openai.com")
        || config.endpoint.api_base.contains("api.anthropic.com");
    if !hosted || config.endpoint.api_key.is_some() {
        return None;
    }
    let var = match config.endpoint.kind {
        ProviderKind::OpenAi => "OPENAI_API_KEY",
        ProviderKind::Anthropic => "ANTHROPIC_API_KEY",
    };
    Some(format!(
        "no model is configured: `{}` at {} needs an API key.\n\
         - a hosted model: export {var}=… (or ANTHROPIC_API_KEY with -m claude-sonnet-4-5)\n\
         - a local server: oi --local (Ollama at localhost:11434), or\n\
           oi --api-base http://127.0.0.1:8080/v1 --model NAME --api-key none\n\
         - or put model / api_base / api_key in {}",
        config.model,
        config.endpoint.api_base,
        Paths::from_env().config_file.display()
    ))
}

/// `oi [MESSAGE]`.
pub async fn run(chat: ChatArgs, sandbox: SandboxArgs) -> Result<u8, Failure> {
    let stdin_tty = std::io::stdin().is_terminal();
    let stdout_tty = std::io::stdout().is_terminal();
    let mut resume = chat.resume.clone();
    if chat.conversations {
        let (_, _, paths, _) = resolve(&chat, &sandbox)?;
        match pick_conversation(&paths, stdin_tty).await? {
            Some(id) => resume = Some(id),
            None => return Ok(0),
        }
    }
    let (resolved, config, paths, verbose) = resolve(&chat, &sandbox)?;
    tell_settings_notices(&resolved);
    let quit = Quit::listen()?;
    if let Some(help) = missing_model_help(&config) {
        return Err(Failure::usage(anyhow::anyhow!(help)));
    }
    let mut first = chat.message.join(" ");
    if first.is_empty() && !stdin_tty {
        std::io::stdin()
            .read_to_string(&mut first)
            .context("reading the message from stdin")?;
        first = first.trim().to_string();
    }
    let interactive = stdin_tty && !chat.json;
    if !interactive && first.is_empty() {
        return Err(Failure::usage(anyhow::anyhow!(
            "nothing to do: give a message (oi \"...\") or pipe one in; the chat needs a terminal"
        )));
    }
    let style = if chat.plain || !stdout_tty {
        Style::Plain
    } else {
        Style::Terminal
    };
    let engine = setup::engine(config.sandbox.clone(), false).await?;
    if config.sandbox.backend == crate::core::code_interpreter::Backend::Host {
        eprintln!("oi: WARNING: unsafe mode: code runs directly on this machine with your permissions, NOT in a sandbox");
    }
    if let Some(notice) = &config.sandbox.workspace_notice {
        eprintln!("oi: note: {}", visible(notice, Kind::Prose));
    }
    let conversations = paths.data_dir.join("conversations");
    let (store, history) = match &resume {
        Some(id) => {
            let (store, messages) =
                Store::resume(&conversations, id, &config.model).map_err(Failure::usage)?;
            (store, messages)
        }
        None => (Store::create(&conversations, &config.model)?, Vec::new()),
    };
    let conversation = Conversation::start(config.clone(), engine)
        .map_err(|e| Failure::usage(anyhow::anyhow!(e)))?;
    let width = terminal_width();
    let image_dir = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let mut renderer = Renderer::new(
        style,
        std::io::stdout(),
        std::io::stderr(),
        image_dir,
        width,
    );
    renderer.verbose = verbose;
    let mut session = Chat {
        conversation,
        renderer,
        store,
        prompter: if interactive {
            Some(Prompter::start(Some(paths.state_dir.join("history")))?)
        } else {
            None
        },
        json: chat.json.then_some(JsonLines),
        auto_run: config.auto_run,
        config,
        quit,
        terminal: saved_terminal(interactive),
    };
    if !history.is_empty() {
        session
            .conversation
            .call(Request::Load {
                messages: history.clone(),
            })
            .await
            .map_err(|e| Failure::from(anyhow::anyhow!(e)))?;
        if session.json.is_none() {
            for message in &history {
                session.renderer.message(message)?;
            }
            session.renderer.finish_open()?;
        }
    }
    let mut code = 0;
    if !first.is_empty() {
        let end = session.turn(Request::message(first)).await?;
        code = exit_code(end);
    }
    if interactive && !session.quit.is_requested() {
        code = session.repl().await?;
    }
    if session.quit.is_requested() {
        session.restore_terminal();
    }
    let quit = session.quit.clone();
    session.conversation.shutdown().await;
    Ok(quit.exit_code().unwrap_or(code))
}

/// The terminal's settings before the line editor changed them, to put back when a
/// signal ends oi while the editor waits (its own restore never runs then).
fn saved_terminal(interactive: bool) -> Option<rustix::termios::Termios> {
    interactive
        .then(|| rustix::termios::tcgetattr(std::io::stdin()).ok())
        .flatten()
}

/// The state of a running chat.
pub struct Chat {
    conversation: Conversation,
    renderer: Renderer<std::io::Stdout, std::io::Stderr>,
    store: Store,
    prompter: Option<Prompter>,
    /// `--json`: events go to stdout as JSON lines instead of being drawn.
    json: Option<JsonLines>,
    auto_run: bool,
    config: Config,
    /// SIGTERM or SIGHUP: stop as after Ctrl-C, then leave.
    quit: Quit,
    terminal: Option<rustix::termios::Termios>,
}

impl Chat {
    fn restore_terminal(&self) {
        if let Some(saved) = &self.terminal {
            let _ = rustix::termios::tcsetattr(
                std::io::stdin(),
                rustix::termios::OptionalActions::Now,
                saved,
            );
        }
    }

    async fn repl(&mut self) -> Result<u8, Failure> {
        loop {
            let Some(prompter) = &self.prompter else {
                return Ok(0);
            };
            let line = tokio::select! {
                biased;
                _ = self.quit.requested() => return Ok(0),
                input = prompter.message("> ") => match input {
                    Input::Leave => return Ok(0),
                    Input::Line(line) => line,
                },
            };
            let text = line.trim();
            if text.is_empty() {
                continue;
            }
            if text.starts_with('%') {
                if let Err(err) = magic::run(self, text).await {
                    // Errors can carry names from the sandbox (a refused download).
                    eprintln!("oi: {}", visible(&format!("{err:#}"), Kind::Prose));
                }
                continue;
            }
            self.turn(Request::message(line)).await?;
            if self.quit.is_requested() {
                return Ok(0);
            }
        }
    }

    /// Sends a request that starts a turn and draws its events until it ends.
    pub async fn turn(&mut self, request: Request) -> Result<TurnEnd, Failure> {
        self.conversation.send(request).await;
        let mut spinner = self.spinner();
        let quit = self.quit.clone();
        let mut stopping = quit.is_requested();
        if stopping {
            self.conversation.interrupt();
        }
        loop {
            let event = tokio::select! {
                biased;
                _ = tokio::signal::ctrl_c() => {
                    self.conversation.interrupt();
                    continue;
                }
                _ = quit.requested(), if !stopping => {
                    // As Ctrl-C: the turn ends (its output is kept), then oi leaves.
                    stopping = true;
                    eprintln!("oi: asked to stop: interrupting, saving and removing the sandbox");
                    self.conversation.interrupt();
                    continue;
                }
                event = self.conversation.next_event() => event,
            };
            let Some(event) = event else {
                return Ok(TurnEnd::SandboxError);
            };
            if matches!(
                event.msg,
                EventMsg::Chunk(_) | EventMsg::Confirmation(_) | EventMsg::Error(_)
            ) {
                if let Some(s) = spinner.take() {
                    s.finish_and_clear();
                }
            }
            match &mut self.json {
                Some(json) => json.event(&event)?,
                None => self.renderer.event(&event.msg)?,
            }
            match event.msg {
                EventMsg::Message(message) => {
                    if let Err(err) = self.store.append(&message) {
                        let err = format!("{err:#}");
                        eprintln!(
                            "oi: could not save the conversation: {}",
                            visible(&err, Kind::Prose)
                        );
                    }
                    // Output fed back: the model is thinking again.
                    if message.kind == MessageType::Console && spinner.is_none() {
                        spinner = self.spinner();
                    }
                }
                EventMsg::Confirmation(confirmation) => {
                    let answer = self
                        .confirm(&confirmation.language, &confirmation.code)
                        .await;
                    self.conversation
                        .send(Request::Confirm {
                            confirmation: confirmation.id,
                            answer,
                        })
                        .await;
                }
                EventMsg::TurnEnded(end) => {
                    if let Some(s) = spinner.take() {
                        s.finish_and_clear();
                    }
                    self.renderer.finish_open()?;
                    return Ok(end);
                }
                _ => {}
            }
        }
    }

    fn spinner(&self) -> Option<indicatif::ProgressBar> {
        if self.json.is_some() || self.renderer.style != Style::Terminal {
            return None;
        }
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_message("thinking…");
        bar.enable_steady_tick(std::time::Duration::from_millis(100));
        Some(bar)
    }

    /// Asks whether to run a block: y, n, e (edit in $EDITOR, then run), a (always).
    async fn confirm(&mut self, language: &str, code: &str) -> Answer {
        let Some(prompter) = &self.prompter else {
            if self.auto_run {
                return Answer::Run;
            }
            eprintln!("oi: not a terminal, so a block was declined: pass -y (--auto-run) to run code without asking");
            return Answer::Decline;
        };
        loop {
            let reply = tokio::select! {
                biased;
                _ = self.quit.requested() => Input::Leave,
                reply = prompter.answer("Run this code? (y)es (n)o (e)dit (a)lways: ") => reply,
            };
            let Input::Line(reply) = reply else {
                self.conversation.interrupt();
                return Answer::Decline;
            };
            match reply.trim().to_ascii_lowercase().as_str() {
                "y" | "yes" => return Answer::Run,
                "n" | "no" => return Answer::Decline,
                "a" | "always" => {
                    self.auto_run = true;
                    return Answer::Always;
                }
                "e" | "edit" => match edit(language, code).await {
                    Ok(edited) => return Answer::Edit(edited),
                    Err(err) => eprintln!("oi: {}", visible(&format!("{err:#}"), Kind::Prose)),
                },
                _ => eprintln!("oi: answer y, n, e or a"),
            }
        }
    }
}

/// `--json`: each event as one JSON line on stdout, exactly as the protocol types
/// serialise (terminal-active characters escaped). An error, which ends the run, is also
/// said on stderr in one line naming its cause, so that a CI log shows why a run failed
/// when stdout goes to a file.
pub struct JsonLines;

impl JsonLines {
    fn event(&mut self, event: &Event) -> Result<(), Failure> {
        let line = serde_json::to_value(event).context("writing an event as JSON")?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", sanitize::json_line(&line))?;
        out.flush()?;
        if let EventMsg::Error(error) = &event.msg {
            eprintln!(
                "oi: error: {}",
                visible(&render::error_line(error), Kind::Prose)
            );
        }
        Ok(())
    }
}

/// Opens the code in `$VISUAL` / `$EDITOR` (else vi) and returns what was saved.
async fn edit(language: &str, code: &str) -> anyhow::Result<String> {
    let ext = match language {
        "python" => "py",
        "shell" => "sh",
        other => other,
    };
    let file = tempfile::Builder::new()
        .prefix("oi-block-")
        .suffix(&format!(".{ext}"))
        .tempfile()?;
    std::fs::write(file.path(), code)?;
    let editor = std::env::var("VISUAL")
        .or_else(|_| std::env::var("EDITOR"))
        .ok()
        .filter(|e| !e.trim().is_empty())
        .unwrap_or_else(|| "vi".into());
    let path = file.path().to_path_buf();
    let status = tokio::task::spawn_blocking(move || {
        let mut words = editor.split_whitespace();
        let program = words.next().unwrap_or("vi").to_string();
        std::process::Command::new(&program)
            .args(words)
            .arg(&path)
            .status()
            .with_context(|| format!("starting the editor `{program}` (set $EDITOR)"))
    })
    .await??;
    if !status.success() {
        anyhow::bail!("the editor exited with {status}; the block was not changed");
    }
    Ok(std::fs::read_to_string(file.path())?.trim_end().to_string())
}

async fn pick_conversation(paths: &Paths, interactive: bool) -> Result<Option<String>, Failure> {
    let all = store::list(&paths.data_dir.join("conversations"))?;
    let mut out = std::io::stdout().lock();
    if all.is_empty() {
        writeln!(out, "No saved conversations yet.")?;
        return Ok(None);
    }
    for (i, meta) in all.iter().enumerate() {
        writeln!(
            out,
            "{:>3}. {}  {:<20} {}  ({})",
            i + 1,
            meta.created,
            visible(&meta.model, Kind::Name),
            visible(&meta.title, Kind::Name),
            meta.id
        )?;
    }
    drop(out);
    if !interactive {
        return Ok(None);
    }
    let prompter = Prompter::start(None)?;
    loop {
        let Input::Line(answer) = prompter
            .answer("Resume which? (number, Enter to cancel): ")
            .await
        else {
            return Ok(None);
        };
        let answer = answer.trim();
        if answer.is_empty() {
            return Ok(None);
        }
        match answer.parse::<usize>() {
            Ok(n) if (1..=all.len()).contains(&n) => return Ok(Some(all[n - 1].id.clone())),
            _ => eprintln!("oi: a number from 1 to {}", all.len()),
        }
    }
}

fn terminal_width() -> usize {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(100)
}
