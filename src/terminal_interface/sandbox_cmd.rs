//! `oi sandbox`: list and remove oi's containers, copy files in and out, and show
//! effective settings. Names that come from a sandbox or from Docker (copied file
//! names, labels) are neutralised before they are printed ([`visible`]).

use std::io::Write;
use std::path::Path;

use super::advice;
use super::cli::{SandboxArgs, SandboxCommand};
use super::image_cmd::{age, now};
use super::sanitize::{visible, Kind};
use super::Failure;
use crate::core::code_interpreter::{
    select, Backend, Engine, OwnerState, SandboxConfig, SandboxError, SandboxInfo,
};

pub async fn run(command: SandboxCommand) -> Result<u8, Failure> {
    match command {
        SandboxCommand::Settings { sandbox } => settings(&sandbox),
        SandboxCommand::Ls { json } => list(json).await,
        SandboxCommand::Cp {
            source,
            dest,
            limit,
        } => copy(&source, &dest, &limit).await,
        SandboxCommand::Rm { ids } => remove(&ids).await,
        SandboxCommand::Prune { all } => prune(all).await,
    }
}

/// The effective settings: config files and a (trusted) oi.toml, then flags.
fn settings(sandbox: &SandboxArgs) -> Result<u8, Failure> {
    let (resolved, config, _, _) = super::chat::resolve(&Default::default(), sandbox)?;
    super::chat::tell_settings_notices(&resolved);
    let config = config.sandbox;
    let mut out = std::io::stdout().lock();
    if config.backend == Backend::Host {
        writeln!(
            out,
            "sandbox: NONE (unsafe mode): code runs on this machine with your permissions"
        )?;
        return Ok(0);
    }
    for line in super::setup::settings_lines(&config.hardening) {
        writeln!(out, "{line}")?;
    }
    Ok(0)
}

async fn list(json: bool) -> Result<u8, Failure> {
    let engine = connect().await?;
    let list = engine.list().await?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&list).unwrap_or_default()
        )?;
        return Ok(0);
    }
    writeln!(
        out,
        "{:<14} {:<16} {:<9} {:>6}  {:<10} IMAGE",
        "CONTAINER", "SESSION", "STATE", "AGE", "OWNER"
    )?;
    let now = now();
    for c in list {
        let owner = match (c.owner_state, c.owner_pid) {
            (OwnerState::Alive, Some(pid)) => format!("pid {pid}"),
            (OwnerState::Elsewhere, _) => "elsewhere".to_string(),
            _ => "gone".to_string(),
        };
        writeln!(
            out,
            "{:<14} {:<16} {:<9} {:>6}  {:<10} {}",
            visible(c.id.get(..12).unwrap_or(&c.id), Kind::Name),
            visible(&c.session, Kind::Name),
            visible(&c.state, Kind::Name),
            age(now - c.created),
            owner,
            visible(&c.image, Kind::Name)
        )?;
    }
    Ok(0)
}

/// `CONTAINER:PATH` as the container and the path in its workspace (`.` when empty);
/// `None` for a path on this machine.
fn remote(side: &str) -> Option<(&str, &str)> {
    let (container, path) = side.split_once(':')?;
    if container.is_empty() || container.contains('/') {
        return None;
    }
    Some((container, if path.is_empty() { "." } else { path }))
}

async fn copy(source: &str, dest: &str, limit: &str) -> Result<u8, Failure> {
    let limit =
        super::setup::parse_size(limit).map_err(|e| Failure::usage(e.context("--limit")))?;
    let engine = connect().await?;
    match (remote(source), remote(dest)) {
        (None, Some((container, path))) => {
            let bytes = engine.copy_in(container, Path::new(source), path).await?;
            println!(
                "copied {} into {}:{} ({bytes} bytes packed)",
                visible(source, Kind::Name),
                visible(container, Kind::Name),
                visible(path, Kind::Name)
            );
        }
        (Some((container, path)), None) => {
            let written = engine
                .copy_out(container, path, Path::new(dest), limit as u64)
                .await?;
            // The names were chosen in the sandbox.
            for file in written {
                println!("{}", visible(&file.display().to_string(), Kind::Name));
            }
        }
        _ => {
            return Err(Failure::usage(anyhow::anyhow!(
                "give one side as CONTAINER:PATH and the other as a path on this machine"
            )))
        }
    }
    Ok(0)
}

async fn remove(ids: &[String]) -> Result<u8, Failure> {
    let engine = connect().await?;
    let known = engine.list().await?;
    let mut failed = 0;
    for id in ids {
        match select(&known, id) {
            Ok(one) => {
                engine.remove(&one.id).await?;
                println!("{}", visible(&one.name, Kind::Name));
            }
            Err(
                err @ (SandboxError::NoSuchSandbox { .. } | SandboxError::AmbiguousSandbox { .. }),
            ) => {
                eprintln!("oi: {}", visible(&advice::describe(&err), Kind::Prose));
                failed += 1;
            }
            Err(err) => return Err(err.into()),
        }
    }
    Ok(if failed > 0 { 1 } else { 0 })
}

async fn prune(all: bool) -> Result<u8, Failure> {
    let engine = connect().await?;
    let removed: Vec<SandboxInfo> = if all {
        let list = engine.list().await?;
        for c in &list {
            engine.remove(&c.id).await?;
        }
        list
    } else {
        engine.sweep().await?
    };
    for c in &removed {
        println!("{}", visible(&c.name, Kind::Name));
    }
    eprintln!("oi: removed {} container(s)", removed.len());
    Ok(0)
}

/// The Docker daemon `DOCKER_HOST` names, where oi's containers are.
async fn connect() -> Result<Engine, Failure> {
    let config = SandboxConfig {
        docker_host: std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()),
        ..SandboxConfig::default()
    };
    Ok(Engine::connect(config).await?)
}
