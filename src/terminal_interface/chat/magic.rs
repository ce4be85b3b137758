//! Magic commands: lines starting with `%` that talk to oi rather than to the model.
//!
//! Files they write in the current folder (which the sandbox can write too) go through
//! [`hostfs`]: a saved conversation or notebook replaces its name without following a
//! link planted there. Names shown are neutralised ([`visible`]).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context};
use serde_json::json;

use super::Chat;
use crate::core::code_interpreter::files;
use crate::core::hostfs;
use crate::core::messages::{parse_conversation, Message, MessageType, Role};
use crate::core::protocol::{Archive, Delivery, Request};
use crate::terminal_interface::sanitize::{visible, Kind};
use crate::terminal_interface::setup;

const HELP: &str = "\
Magic commands:
  %help                   this list
  %reset                  forget the conversation and start a fresh sandbox
  %undo                   remove your last message and everything after it
  %verbose [on|off]       show active lines and more detail
  %tokens                 context size and, where prices are known, the cost so far
  %info                   model, endpoint, sandbox settings, container
  %save_message [path]    save the conversation as JSON (default messages.json)
  %load_message [path]    load a conversation saved with %save_message
  %jupyter [path]         export the conversation as a notebook (default conversation.ipynb)
  %% <command>            run a shell command in the sandbox (not shown to the model)
  %upload <path> [dir]    copy a file or folder from here into the sandbox's workspace
  %download <path> [dir]  copy a workspace file or folder out, here (or into dir)
Ctrl-C stops the model or the running code; Ctrl-C on an empty prompt or Ctrl-D leaves.";

/// The largest conversation `%load_message` reads (the file may have been planted by
/// code in the sandbox, claiming any size).
const MAX_LOAD_BYTES: u64 = 256 << 20;

/// Runs one magic command line.
pub async fn run(chat: &mut Chat, line: &str) -> anyhow::Result<()> {
    if let Some(command) = line.strip_prefix("%%") {
        return shell(chat, command.trim()).await;
    }
    let mut words = line[1..].splitn(2, char::is_whitespace);
    let name = words.next().unwrap_or("");
    let arg = words.next().map(str::trim).filter(|a| !a.is_empty());
    match name {
        "help" => say(HELP),
        "reset" => reset(chat).await,
        "undo" => undo(chat).await,
        "verbose" => verbose(chat, arg),
        "tokens" => tokens(chat).await,
        "info" => info(chat).await,
        "save_message" => save_message(chat, arg).await,
        "load_message" => load_message(chat, arg).await,
        "jupyter" => jupyter(chat, arg).await,
        "upload" => upload(chat, arg).await,
        "download" => download(chat, arg).await,
        _ => bail!(
            "unknown magic command `%{}`.\n{HELP}",
            visible(name, Kind::Name)
        ),
    }
}

/// Prints a command's answer on stdout.
fn say(text: &str) -> anyhow::Result<()> {
    writeln!(std::io::stdout().lock(), "{text}")?;
    Ok(())
}

/// `%% <command>`: a shell command in the sandbox, not shown to the model.
async fn shell(chat: &mut Chat, command: &str) -> anyhow::Result<()> {
    if command.is_empty() {
        bail!("%% needs a shell command, e.g. %% ls -la");
    }
    chat.turn(Request::Run {
        language: "shell".into(),
        code: command.to_string(),
    })
    .await
    .map_err(|f| f.error)?;
    Ok(())
}

async fn reset(chat: &mut Chat) -> anyhow::Result<()> {
    chat.conversation.call(Request::Reset).await?;
    chat.store.rewrite(&[])?;
    say("Reset: the conversation is empty and the sandbox is new.")
}

async fn undo(chat: &mut Chat) -> anyhow::Result<()> {
    let before = chat.conversation.messages().await?.len();
    chat.conversation.call(Request::Undo).await?;
    let messages = chat.conversation.messages().await?;
    chat.store.rewrite(&messages)?;
    say(&format!("Removed {} messages.", before - messages.len()))
}

fn verbose(chat: &mut Chat, arg: Option<&str>) -> anyhow::Result<()> {
    chat.renderer.verbose = match arg {
        None | Some("on") => true,
        Some("off") => false,
        Some(other) => bail!(
            "%verbose takes on or off, not `{}`",
            visible(other, Kind::Name)
        ),
    };
    say(if chat.renderer.verbose {
        "Verbose on."
    } else {
        "Verbose off."
    })
}

/// `%tokens`: the context's size and, where the model's price is known, the cost.
async fn tokens(chat: &mut Chat) -> anyhow::Result<()> {
    let info = chat.conversation.info().await?;
    let model = visible(&info.model, Kind::Name);
    let pct = info.context_tokens as f64 * 100.0 / info.context_window.max(1) as f64;
    let mut text = format!(
        "Context: {} of {} tokens ({pct:.1}%), counted with {}.\n\
         Used so far (as the server reported): {} input, {} output tokens.\n",
        info.context_tokens,
        info.context_window,
        info.token_method,
        info.usage.input_tokens,
        info.usage.output_tokens
    );
    match price(&info.model) {
        Some((input, output)) => {
            let cost = info.usage.input_tokens as f64 * input / 1e6
                + info.usage.output_tokens as f64 * output / 1e6;
            text.push_str(&format!(
                "Estimated cost: ${cost:.4} (at ${input}/${output} per million input/output \
                 tokens for {model})."
            ));
        }
        None => text.push_str(&format!("No price is known for {model}.")),
    }
    say(&text)
}

/// `%info`: the model, the endpoint, the sandbox and its settings.
async fn info(chat: &mut Chat) -> anyhow::Result<()> {
    let info = chat.conversation.info().await?;
    let on = |b: bool| if b { "on" } else { "off" };
    let mut lines = vec![
        format!(
            "Model:     {} ({})",
            visible(&info.model, Kind::Name),
            visible(&info.provider, Kind::Name)
        ),
        format!(
            "Mode:      {}, vision {}, auto-run {}",
            if info.functions {
                "function calling"
            } else {
                "text (fenced blocks)"
            },
            on(info.vision),
            on(info.auto_run)
        ),
        format!(
            "Context:   {} of {} tokens",
            info.context_tokens, info.context_window
        ),
        format!(
            "Messages:  {} (saved to {})",
            info.messages,
            shown(&chat.store.path())
        ),
        match &info.session {
            Some(s) => format!(
                "Sandbox:   {} {}",
                if s.sandboxed {
                    "container"
                } else {
                    "UNSAFE: host process"
                },
                s.container_id
                    .as_deref()
                    .map(|c| &c[..c.len().min(12)])
                    .unwrap_or(&s.id)
            ),
            None => "Sandbox:   not started yet".to_string(),
        },
    ];
    if chat.config.sandbox.backend == crate::core::code_interpreter::Backend::Docker {
        lines.push(format!(
            "Workspace: {}",
            visible(&chat.config.sandbox.workspace.describe(), Kind::Name)
        ));
        lines.extend(
            setup::settings_lines(&chat.config.sandbox.hardening)
                .into_iter()
                .map(|line| format!("  {line}")),
        );
    }
    say(&lines.join("\n"))
}

async fn save_message(chat: &mut Chat, arg: Option<&str>) -> anyhow::Result<()> {
    let path = PathBuf::from(arg.unwrap_or("messages.json"));
    let messages = chat.conversation.messages().await?;
    hostfs::save(&path, serde_json::to_string_pretty(&messages)?.as_bytes())
        .with_context(|| format!("saving {}", path.display()))?;
    say(&format!(
        "Saved {} messages to {}.",
        messages.len(),
        shown(&path)
    ))
}

async fn load_message(chat: &mut Chat, arg: Option<&str>) -> anyhow::Result<()> {
    let path = PathBuf::from(arg.unwrap_or("messages.json"));
    // Not through a link either: the sandbox could point one at a host file.
    let text = hostfs::read_to_string(&path, MAX_LOAD_BYTES)
        .with_context(|| format!("reading {}", path.display()))?;
    let messages =
        parse_conversation(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    chat.conversation
        .call(Request::Load {
            messages: messages.clone(),
        })
        .await?;
    chat.store.rewrite(&messages)?;
    for message in &messages {
        chat.renderer.message(message)?;
    }
    chat.renderer.finish_open()?;
    say(&format!(
        "Loaded {} messages from {}.",
        messages.len(),
        shown(&path)
    ))
}

async fn jupyter(chat: &mut Chat, arg: Option<&str>) -> anyhow::Result<()> {
    let path = PathBuf::from(arg.unwrap_or("conversation.ipynb"));
    let messages = chat.conversation.messages().await?;
    hostfs::save(
        &path,
        serde_json::to_string_pretty(&notebook(&messages))?.as_bytes(),
    )
    .with_context(|| format!("saving {}", path.display()))?;
    say(&format!("Exported the conversation to {}.", shown(&path)))
}

async fn upload(chat: &mut Chat, arg: Option<&str>) -> anyhow::Result<()> {
    let (source, dest) = two_args(arg, "%upload <host path> [workspace folder]")?;
    let dest = dest.unwrap_or_else(|| ".".into());
    let archive = pack(&source).await?;
    let bytes = chat.conversation.upload(&dest, archive).await?;
    say(&format!(
        "Copied {} into the workspace ({}), {bytes} bytes packed.",
        visible(&source, Kind::Name),
        visible(&dest, Kind::Name),
    ))
}

async fn download(chat: &mut Chat, arg: Option<&str>) -> anyhow::Result<()> {
    let (source, dest) = two_args(arg, "%download <workspace path> [host folder]")?;
    let dest = PathBuf::from(dest.unwrap_or_else(|| ".".into()));
    let archive = chat.conversation.download(&source, Delivery::File).await?;
    let written = unpack(archive, dest.clone()).await?;
    say(&format!(
        "Copied {} out: {} files into {}.",
        visible(&source, Kind::Name),
        written.len(),
        shown(&dest)
    ))
}

/// Packs a host file or folder (read without following links the sandbox may have
/// planted) into an archive for the sandbox; the sandbox's side sets its owner.
async fn pack(source: &str) -> anyhow::Result<Archive> {
    let path = PathBuf::from(source);
    std::fs::symlink_metadata(&path).with_context(|| format!("cannot read {source}"))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| ".".into());
    let file = tokio::task::spawn_blocking(move || files::pack(&path, &name, 0, 0)).await??;
    Ok(Archive::File(crate::core::protocol::ArchiveFile::new(file)))
}

/// Unpacks an archive from the sandbox into the host folder `dest`: nothing lands
/// outside it, nothing is overwritten ([`files::unpack`]). Returns the paths written.
async fn unpack(archive: Archive, dest: PathBuf) -> anyhow::Result<Vec<PathBuf>> {
    let file = archive.into_file()?;
    Ok(tokio::task::spawn_blocking(move || files::unpack(file, &dest)).await??)
}

/// A path as shown on the terminal.
fn shown(path: &std::path::Path) -> String {
    visible(&path.display().to_string(), Kind::Name).into_owned()
}

/// `a [b]` (words; quotes are not needed for paths without spaces).
fn two_args(arg: Option<&str>, usage: &str) -> anyhow::Result<(String, Option<String>)> {
    let Some(arg) = arg else {
        bail!("usage: {usage}");
    };
    let mut words = arg.split_whitespace();
    let first = words.next().map(str::to_string).unwrap_or_default();
    let second = words.next().map(str::to_string);
    if words.next().is_some() {
        bail!("usage: {usage}");
    }
    Ok((first, second))
}

/// Dollars per million input and output tokens, for models whose list price is known.
fn price(model: &str) -> Option<(f64, f64)> {
    crate::core::llm::models::facts(model)
        .price
        .map(|p| (p.input, p.output))
}

/// The conversation as a Jupyter notebook: prose as markdown cells, code with its
/// output (and images) as code cells.
pub fn notebook(messages: &[Message]) -> serde_json::Value {
    let mut cells: Vec<serde_json::Value> = Vec::new();
    let lines =
        |text: &str| -> Vec<String> { text.split_inclusive('\n').map(str::to_string).collect() };
    for message in messages {
        match (message.role, message.kind) {
            (Role::User, MessageType::Message) => cells.push(json!({
                "cell_type": "markdown", "metadata": {}, "source": lines(&format!("**User:** {}", message.content))})),
            (Role::Assistant, MessageType::Message) => cells.push(json!({
                "cell_type": "markdown", "metadata": {}, "source": lines(&message.content)})),
            (Role::Assistant, MessageType::Code) => {
                let source = if message.format.as_deref() == Some("shell") {
                    format!("%%bash\n{}", message.content)
                } else {
                    message.content.clone()
                };
                cells.push(json!({"cell_type": "code", "execution_count": null, "metadata": {},
                    "source": lines(&source), "outputs": []}));
            }
            (Role::Computer, MessageType::Console) => {
                if let Some(cell) = cells.last_mut().filter(|c| c["cell_type"] == "code") {
                    cell["outputs"].as_array_mut().unwrap().push(json!({
                        "output_type": "stream", "name": "stdout", "text": lines(&message.content)}));
                }
            }
            (Role::Computer, MessageType::Image) => {
                if let Some(cell) = cells.last_mut().filter(|c| c["cell_type"] == "code") {
                    let mime = format!("image/{}", message.format.as_deref().unwrap_or("base64.png").trim_start_matches("base64."));
                    cell["outputs"].as_array_mut().unwrap().push(json!({
                        "output_type": "display_data", "metadata": {}, "data": {mime: message.content}}));
                }
            }
            _ => {}
        }
    }
    json!({
        "cells": cells,
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                     "language_info": {"name": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notebook_has_code_cells_with_their_output() {
        let nb = notebook(&[
            Message::user("plot it"),
            Message::code("python", "print(42)"),
            Message::console("42\n"),
            Message::image("png", "AAAA"),
            Message::assistant("Done."),
        ]);
        let cells = nb["cells"].as_array().unwrap();
        assert_eq!(cells.len(), 3);
        assert_eq!(cells[1]["source"], json!(["print(42)"]));
        assert_eq!(cells[1]["outputs"][0]["text"], json!(["42\n"]));
        assert_eq!(cells[1]["outputs"][1]["data"]["image/png"], "AAAA");
        assert_eq!(nb["nbformat"], 4);
    }

    #[test]
    fn prices_by_prefix() {
        assert_eq!(price("gpt-4o-mini-2024-07-18"), Some((0.15, 0.60)));
        assert_eq!(price("openai/gpt-4o"), Some((2.5, 10.0)));
        assert_eq!(price("llama3.1"), None);
    }
}
