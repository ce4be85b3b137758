//! `oi image`: build and list oi's sandbox images, and make the base image offline.

use std::io::Write;

use anyhow::Context;

use super::cli::ImageCommand;
use super::progress::BuildDisplay;
use super::setup;
use super::Failure;
use crate::core::code_interpreter::{bytes, image, Engine, SandboxConfig};

pub async fn run(command: ImageCommand) -> Result<u8, Failure> {
    match command {
        ImageCommand::Build { sandbox } => {
            let mut config = setup::config_from(&sandbox).map_err(Failure::usage)?;
            config.image = None;
            let mut engine = Engine::connect(config).await?;
            let mut display = BuildDisplay::new(false);
            let tag = engine
                .ensure_image(true, &mut |p| display.update(p))
                .await?;
            println!("{tag}");
            Ok(0)
        }
        ImageCommand::Ls => {
            let engine = Engine::connect(SandboxConfig::default()).await?;
            let docker = engine.docker().expect("the Docker backend has a client");
            let current = engine.image().await?;
            let images = image::list(docker).await?;
            let stale: Vec<String> = image::stale(&images, &current)
                .into_iter()
                .map(|i| i.tag)
                .collect();
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "{:<40} {:<16} {:>10} {:>6}  CURRENT",
                "IMAGE", "PROJECT", "SIZE", "AGE"
            )?;
            let now = now();
            for img in images {
                let mark = if stale.contains(&img.tag) { "" } else { "*" };
                writeln!(
                    out,
                    "{:<40} {:<16} {:>10} {:>6}  {mark}",
                    img.tag,
                    img.project.as_deref().unwrap_or("(oi)"),
                    bytes(img.size),
                    age(now - img.created)
                )?;
            }
            Ok(0)
        }
        ImageCommand::Prune => {
            let engine = Engine::connect(SandboxConfig::default()).await?;
            let docker = engine.docker().expect("the Docker backend has a client");
            let current = engine.image().await?;
            let images = image::list(docker).await?;
            let mut failed = 0;
            for img in image::stale(&images, &current) {
                match image::remove(docker, &img.tag).await {
                    Ok(()) => println!("removed {} ({})", img.tag, bytes(img.size)),
                    Err(err) => {
                        eprintln!("oi: could not remove {}: {err}", img.tag);
                        failed += 1;
                    }
                }
            }
            Ok(if failed > 0 { 1 } else { 0 })
        }
        ImageCommand::BootstrapBase { tag } => {
            let status = std::process::Command::new("bash")
                .arg("-c")
                .arg(image::BOOTSTRAP_SCRIPT)
                .arg("bootstrap-base.sh")
                .arg(&tag)
                .status()
                .context("running bash for the bootstrap script")?;
            if status.success() {
                Ok(0)
            } else {
                Err(Failure::sandbox(anyhow::anyhow!(
                    "making the base image {tag} failed"
                )))
            }
        }
    }
}

pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Seconds as a short age: `42s`, `5m`, `3h`, `2d`.
pub(crate) fn age(seconds: i64) -> String {
    match seconds.max(0) {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}
