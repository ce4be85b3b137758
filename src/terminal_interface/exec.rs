//! `oi exec`: runs blocks in one fresh session and streams their output, as plain text
//! (stdout to stdout, stderr to stderr) or as JSON lines. Ctrl-C interrupts the block;
//! a second Ctrl-C leaves at once. The session's container is removed at the end.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use super::cli::ExecArgs;
use super::setup;
use super::signals::Quit;
use super::Failure;
use crate::core::code_interpreter::{Backend, ExecEvent, ExecRequest, ExecStatus, Session};

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
        eprintln!("oi: WARNING: --unsafe: code runs directly on this machine with your permissions, NOT in a sandbox");
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
        eprintln!("oi: sandbox: none (--unsafe)");
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
    for setting in session.hardening().describe() {
        let mark = if setting.safe_default {
            ""
        } else {
            "  (loosened)"
        };
        eprintln!("oi:   {:<18} {}{mark}", setting.name, setting.value);
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
    for (index, code) in blocks.iter().enumerate() {
        let request = ExecRequest::new(&args.language, code.as_str());
        let mut execution = session.execute(request, cancel).await?;
        while let Some(event) = execution.next_event().await {
            if args.json {
                let line = serde_json::json!({ "block": index, "event": event_json(&event) });
                writeln!(out, "{line}")?;
                out.flush()?;
                if let ExecEvent::Done(outcome) = &event {
                    if outcome.status != ExecStatus::Ok {
                        return Ok(exit_code(outcome.exit_status()));
                    }
                }
                continue;
            }
            match event {
                ExecEvent::Stdout { text } => {
                    out.write_all(text.as_bytes())?;
                    out.flush()?;
                }
                ExecEvent::Stderr { text } => {
                    let mut err = std::io::stderr().lock();
                    err.write_all(text.as_bytes())?;
                    err.flush()?;
                }
                ExecEvent::Image { format, data } => {
                    images += 1;
                    let path = save_image(&args.image_dir, index, images, &format, &data)?;
                    eprintln!("oi: image saved to {}", path.display());
                }
                ExecEvent::Notice { message } => eprintln!("oi: {message}"),
                ExecEvent::ActiveLine { .. } => {}
                ExecEvent::Done(outcome) => {
                    if let Some(message) = &outcome.message {
                        eprintln!("oi: {message}");
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

fn event_json(event: &ExecEvent) -> serde_json::Value {
    use base64::Engine;
    match event {
        ExecEvent::Image { format, data } => serde_json::json!({
            "type": "image",
            "format": format,
            "base64": base64::engine::general_purpose::STANDARD.encode(data),
        }),
        ExecEvent::Done(outcome) => {
            let mut value = serde_json::to_value(outcome).unwrap_or_default();
            value["type"] = "done".into();
            value
        }
        other => serde_json::to_value(other).unwrap_or_default(),
    }
}

fn save_image(
    dir: &Path,
    block: usize,
    n: usize,
    format: &str,
    data: &[u8],
) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let ext = if format.is_empty() { "png" } else { format };
    let path = dir.join(format!("oi-{stamp}-{}-{n}.{ext}", block + 1));
    std::fs::write(&path, data)
        .with_context(|| format!("saving an image to {}", path.display()))?;
    Ok(path)
}
