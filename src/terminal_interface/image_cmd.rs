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
            let mut out = std::io::stdout().lock();
            writeln!(out, "{:<28} {:>10} {:>12}  CURRENT", "IMAGE", "SIZE", "AGE")?;
            let now = now();
            for (tag, _hash, size, created) in image::list(docker).await? {
                let current = if tag == current { "*" } else { "" };
                writeln!(
                    out,
                    "{tag:<28} {:>10} {:>12}  {current}",
                    bytes(size),
                    age(now - created)
                )?;
            }
            Ok(0)
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
