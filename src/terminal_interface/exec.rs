//! `oi exec`: runs blocks in one fresh session and streams their output, as plain text
//! (stdout to stdout, stderr to stderr) or as JSON lines (the sandbox protocol's events,
//! each with its block's index). Ctrl-C interrupts the block;
//! a second Ctrl-C leaves at once. The session's container is removed at the end.
//!
//! Output to a terminal is neutralised ([`sanitize`]); to a pipe or a file it is kept
//! byte for byte. Images are saved through [`hostfs`]: never through a link, never over
//! an existing file, in a format from a fixed list.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use super::cli::ExecArgs;
use super::sanitize::{self, visible, Colours, Kind};
use super::setup;
use super::signals::Quit;
use super::Failure;
use crate::core::code_interpreter::{Backend, ExecEvent, ExecRequest, ExecStatus, Session};
use crate::core::hostfs;
use crate::core::protocol::SandboxEventMsg;

pub async fn run(args: ExecArgs) -> Result<u8, Failure> {
    let quit = Quit::listen()?;
    // The sandbox settings of config.toml and the project's oi.toml apply too (the
    // workspace mode, limits, the project's image); flags win.
    let (resolved, chat_config, _, _) = super::chat::resolve(&Default::default(), &args.sandbox)?;
    super::chat::tell_settings_notices(&resolved);
    let config = chat_config.sandbox;
    // The language is checked before any container starts.
    config.languages.resolve(&args.language)?;
    let blocks = if args.code.is_empty() {
        if std::io::stdin().is_terminal() {
            return Err(Failure::usage(anyhow::anyhow!(
                "no code: give blocks with -c CODE or pipe them on stdin (see `oi exec --help`)"
            )));
        }
        let mut code = String::new();
        std::io::stdin()
            .read_to_string(&mut code)
            .context("reading code from stdin")?;
        vec![code]
    } else {
        args.code.clone()
    };

    // On every run, whatever set it (a flag, the user's config, a trusted project file).
    if config.backend == Backend::Host {
        eprintln!("oi: WARNING: unsafe mode: code runs directly on this machine with your permissions, NOT in a sandbox");
    }
    let engine = setup::engine(config, args.json).await?;
    let mut session = engine.open().await?;
    if args.sandbox.verbose {
        describe(&session);
    }

    let cancel = CancellationToken::new();
    let ctrl_c = tokio::spawn(watch_ctrl_c(cancel.clone()));
    let on_quit = tokio::spawn(stop_on_quit(quit.clone(), cancel.clone()));
    let result = run_blocks(&mut session, &args, &blocks, &cancel).await;
    ctrl_c.abort();
    on_quit.abort();
    let closed = session.close().await;
    if let Some(code) = quit.exit_code() {
        return Ok(code);
    }
    let code = result?;
    closed?;
    Ok(code)
}

/// SIGTERM or SIGHUP: interrupt the block and let `run` close the session.
async fn stop_on_quit(quit: Quit, cancel: CancellationToken) {
    quit.requested().await;
    eprintln!("oi: asked to stop: interrupting and removing the sandbox");
    cancel.cancel();
}

async fn watch_ctrl_c(cancel: CancellationToken) {
    if tokio::signal::ctrl_c().await.is_err() {
        return;
    }
    cancel.cancel();
    eprintln!("\noi: interrupting (Ctrl-C again to quit at once)");
    if tokio::signal::ctrl_c().await.is_ok() {
        std::process::exit(130);
    }
}

fn describe(session: &Session) {
    if !session.is_sandboxed() {
        eprintln!("oi: sandbox: none (unsafe mode)");
        return;
    }
    eprintln!(
        "oi: session {} in container {} from {}",
        session.id(),
        session
            .container_id()
            .unwrap_or("?")
            .get(..12)
            .unwrap_or("?"),
        session.image().unwrap_or("?")
    );
    for line in setup::settings_lines(session.hardening()) {
        eprintln!("oi:   {line}");
    }
}

async fn run_blocks(
    session: &mut Session,
    args: &ExecArgs,
    blocks: &[String],
    cancel: &CancellationToken,
) -> Result<u8, Failure> {
    let mut out = std::io::stdout().lock();
    let mut images = 0usize;
    // On a terminal, output is shown, not obeyed; a pipe or a file gets the bytes.
    let mut stdout_filter = std::io::stdout()
        .is_terminal()
        .then(|| sanitize::Output::new(Colours::Keep, true));
    let mut stderr_filter = std::io::stderr()
        .is_terminal()
        .then(|| sanitize::Output::new(Colours::Keep, true));
    for (index, code) in blocks.iter().enumerate() {
        let request = ExecRequest::new(&args.language, code.as_str());
        let mut execution = session.execute(request, cancel).await?;
        while let Some(event) = execution.next_event().await {
            if args.json {
                let done = match &event {
                    ExecEvent::Done(outcome) => Some(outcome.exit_status()),
                    _ => None,
                };
                let line = JsonLine {
                    block: index,
                    event: SandboxEventMsg::from(event),
                };
                let line = serde_json::to_value(&line).context("writing an event as JSON")?;
                writeln!(out, "{}", sanitize::json_line(&line))?;
                out.flush()?;
                match done {
                    Some(status) if status != 0 => return Ok(exit_code(status)),
                    _ => continue,
                }
            }
            match event {
                ExecEvent::Stdout { text } => {
                    match &mut stdout_filter {
                        Some(filter) => out.write_all(filter.feed(&text).as_bytes())?,
                        None => out.write_all(text.as_bytes())?,
                    }
                    out.flush()?;
                }
                ExecEvent::Stderr { text } => {
                    let mut err = std::io::stderr().lock();
                    match &mut stderr_filter {
                        Some(filter) => err.write_all(filter.feed(&text).as_bytes())?,
                        None => err.write_all(text.as_bytes())?,
                    }
                    err.flush()?;
                }
                ExecEvent::Image { format, data } => {
                    images += 1;
                    // A figure that cannot be saved is reported; the block goes on.
                    match save_image(&args.image_dir, index, images, &format, &data) {
                        Ok(Some(path)) => eprintln!(
                            "oi: image saved to {}",
                            visible(&path.display().to_string(), Kind::Name)
                        ),
                        Ok(None) => eprintln!(
                            "oi: an image in a format oi does not save (`{}`) was not saved",
                            visible(&format, Kind::Name)
                        ),
                        Err(err) => eprintln!(
                            "oi: the image was not saved: {}",
                            visible(&format!("{err:#}"), Kind::Prose)
                        ),
                    }
                }
                ExecEvent::Notice { message } => {
                    eprintln!("oi: {}", visible(&message, Kind::Prose))
                }
                ExecEvent::ActiveLine { .. } => {}
                ExecEvent::Done(outcome) => {
                    // An escape sequence cut off at the end is shown, not held.
                    if let Some(filter) = &mut stdout_filter {
                        out.write_all(filter.finish().as_bytes())?;
                        out.flush()?;
                    }
                    if let Some(filter) = &mut stderr_filter {
                        std::io::stderr().write_all(filter.finish().as_bytes())?;
                    }
                    if let Some(message) = &outcome.message {
                        eprintln!("oi: {}", visible(message, Kind::Prose));
                    }
                    if outcome.status != ExecStatus::Ok {
                        if blocks.len() > 1 && index + 1 < blocks.len() {
                            eprintln!(
                                "oi: block {} did not succeed; the remaining blocks were not run",
                                index + 1
                            );
                        }
                        return Ok(exit_code(outcome.exit_status()));
                    }
                }
            }
        }
    }
    Ok(0)
}

fn exit_code(status: i32) -> u8 {
    u8::try_from(status).unwrap_or(1)
}

/// One `--json` line: the block's index (from 0) and one of its events, as the sandbox
/// protocol writes it (`docs/messages.md`).
#[derive(serde::Serialize)]
struct JsonLine {
    block: usize,
    event: SandboxEventMsg,
}

/// Saves an image as `oi-<stamp>-<block>-<n>.<ext>` in `dir` (made if missing), or
/// with `-2`, `-3`… added if that name is taken; the folder is opened without following
/// links and the file created exclusively, so nothing planted in the workspace can
/// redirect the write. `None`: the format is not one oi saves.
fn save_image(
    dir: &Path,
    block: usize,
    n: usize,
    format: &str,
    data: &[u8],
) -> anyhow::Result<Option<PathBuf>> {
    let Some(ext) = hostfs::image_extension(format) else {
        return Ok(None);
    };
    let folder = hostfs::Dir::create_all(dir).context("saving an image")?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let base = format!("oi-{stamp}-{}-{n}", block + 1);
    let (mut file, name) = folder
        .create_numbered(|k| match k {
            1 => format!("{base}.{ext}"),
            k => format!("{base}-{k}.{ext}"),
        })
        .context("saving an image")?;
    let path = folder.path().join(name);
    file.write_all(data)
        .with_context(|| format!("saving an image to {}", path.display()))?;
    Ok(Some(path))
}
