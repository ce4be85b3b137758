//! `oi image`: build and list oi's sandbox images, and make the base image offline.
//! Listing and pruning look at the daemon `DOCKER_HOST` names and judge what is current
//! by the base image the settings give (flag, `OI_BASE_IMAGE`, config files).

use std::io::Write;

use anyhow::Context;

use super::cli::{BaseImageArg, ChatArgs, ImageCommand, SandboxArgs};
use super::config::{Paths, Resolved};
use super::progress::BuildDisplay;
use super::sanitize::{visible, Kind};
use super::{advice, setup, Failure};
use crate::core::code_interpreter::image::{self, ImageInfo};
use crate::core::code_interpreter::{bytes, Engine, SandboxConfig, SandboxError};

pub async fn run(command: ImageCommand) -> Result<u8, Failure> {
    match command {
        ImageCommand::Build { sandbox } => build(&sandbox).await,
        ImageCommand::Ls { base } => list(&base).await,
        ImageCommand::Prune { base, project } => prune(&base, project.as_deref()).await,
        ImageCommand::BootstrapBase { tag } => bootstrap_base(&tag),
    }
}

async fn build(sandbox: &SandboxArgs) -> Result<u8, Failure> {
    let mut config = setup::config_from(sandbox).map_err(Failure::usage)?;
    config.image = None;
    let mut engine = Engine::connect(config).await?;
    let mut display = BuildDisplay::new(false);
    let tag = engine
        .ensure_image(true, &mut |p| display.update(p))
        .await?;
    println!("{tag}");
    Ok(0)
}

async fn list(base: &BaseImageArg) -> Result<u8, Failure> {
    let (_, images, current) = images(base).await?;
    let stale: Vec<String> = stale(&images, &current)
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
        // Tags and labels come from the daemon, where anyone may have set them.
        writeln!(
            out,
            "{:<40} {:<16} {:>10} {:>6}  {mark}",
            visible(&img.tag, Kind::Name),
            visible(img.project.as_deref().unwrap_or("(oi)"), Kind::Name),
            bytes(img.size),
            age(now - img.created)
        )?;
    }
    Ok(0)
}

/// Removes what is no longer current (of one project only, with `project`). An image
/// a container uses stays, with a note: on a shared daemon it may be another oi's.
async fn prune(base: &BaseImageArg, project: Option<&str>) -> Result<u8, Failure> {
    let (engine, images, current) = images(base).await?;
    let store = engine.images()?;
    let mut failed = 0;
    let chosen = stale(&images, &current)
        .into_iter()
        .filter(|img| project.is_none() || img.project.as_deref() == project);
    for img in chosen {
        let tag = visible(&img.tag, Kind::Name);
        match store.remove(&img.tag).await {
            Ok(()) => println!("removed {tag} ({})", bytes(img.size)),
            Err(SandboxError::ImageInUse { .. }) => {
                eprintln!("oi: kept {tag}: a container uses it");
            }
            Err(err) => {
                eprintln!("oi: could not remove {tag}: {}", advice::describe(&err));
                failed += 1;
            }
        }
    }
    Ok(if failed > 0 { 1 } else { 0 })
}

/// What the settings make current: oi's own image on the configured base, and an
/// image the settings pin.
struct Current {
    own: String,
    pinned: Option<String>,
}

/// The engine of the configured daemon, oi's images there, and which are current.
async fn images(base: &BaseImageArg) -> Result<(Engine, Vec<ImageInfo>, Current), Failure> {
    let config = configured(base)?;
    let pinned = config.image.clone();
    let engine = Engine::connect(config).await?;
    let store = engine.images()?;
    let own = store.own_tag(engine.config().base_image.as_deref()).await;
    let images = store.list().await?;
    Ok((engine, images, Current { own, pinned }))
}

/// The images pruning removes: all of oi's own but the current and a pinned one, and
/// all but the newest of each project's.
fn stale(images: &[ImageInfo], current: &Current) -> Vec<ImageInfo> {
    image::stale(images, &current.own)
        .into_iter()
        .filter(|i| current.pinned.as_ref() != Some(&i.tag))
        .collect()
}

/// The Docker side of the settings, as the chat would use them: the daemon of
/// `DOCKER_HOST`, the base image and a pinned image from the flag or the settings files.
fn configured(base: &BaseImageArg) -> Result<SandboxConfig, Failure> {
    let paths = Paths::from_env();
    let env = std::env::vars().collect();
    let cwd = std::env::current_dir().context("reading the current directory")?;
    let flags = SandboxArgs {
        base_image: base.base_image.clone(),
        ..SandboxArgs::default()
    };
    let resolved =
        Resolved::load(&paths, &cwd, &env, &ChatArgs::default(), &flags).map_err(Failure::usage)?;
    super::chat::tell_settings_notices(&resolved);
    let sandbox = resolved
        .settings()
        .map_err(Failure::usage)?
        .sandbox
        .unwrap_or_default();
    Ok(SandboxConfig {
        docker_host: std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()),
        base_image: sandbox.base_image.filter(|b| !b.is_empty()),
        image: sandbox.image.filter(|i| !i.is_empty()),
        ..SandboxConfig::default()
    })
}

fn bootstrap_base(tag: &str) -> Result<u8, Failure> {
    let status = std::process::Command::new("bash")
        .arg("-c")
        .arg(image::BOOTSTRAP_SCRIPT)
        .arg("bootstrap-base.sh")
        .arg(tag)
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
