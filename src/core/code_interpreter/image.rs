//! oi's sandbox image: the recipe in `images/` is compiled into the binary, sent to the
//! Docker daemon as an in-memory tar build context, and tagged by a hash of that
//! context and the base image, so a changed recipe gets a new tag and an unchanged
//! one is never rebuilt. Progress is reported as [`BuildProgress`] values; rendering
//! it is the front end's job.

use std::collections::HashMap;

use bollard::query_parameters::{BuildImageOptionsBuilder, ListImagesOptionsBuilder};
use bollard::Docker;
use futures::StreamExt;
use sha2::{Digest, Sha256};

use super::error::{Result, SandboxError};

/// The repository oi's sandbox images are tagged in.
pub const IMAGE_REPOSITORY: &str = "oi-sandbox";
/// The official base image the recipe uses where a registry is reachable.
pub const DEFAULT_BASE: &str = "debian:bookworm-slim";
/// The base `images/bootstrap-base.sh` makes offline.
pub const OFFLINE_BASE: &str = "oi-base:bookworm";
/// Label on oi's images carrying the recipe hash.
pub const RECIPE_LABEL: &str = "oi.recipe";

/// The files of the build context, as they are in `images/`.
const CONTEXT: &[(&str, &[u8])] = &[
    ("Dockerfile", include_bytes!("../../../images/Dockerfile")),
    (
        "runner/runner.py",
        include_bytes!("../../../images/runner/runner.py"),
    ),
    (
        "runner/oi_kernel.py",
        include_bytes!("../../../images/runner/oi_kernel.py"),
    ),
    (
        "runner/oi_mpl_backend.py",
        include_bytes!("../../../images/runner/oi_mpl_backend.py"),
    ),
    (
        "runner/oi_bashrc",
        include_bytes!("../../../images/runner/oi_bashrc"),
    ),
];

/// The runner's files (for the unsandboxed host backend), as (name, contents).
pub fn runner_files() -> impl Iterator<Item = (&'static str, &'static [u8])> {
    CONTEXT
        .iter()
        .filter_map(|(path, data)| path.strip_prefix("runner/").map(|name| (name, *data)))
}

/// The offline base bootstrap script, carried in the binary too.
pub const BOOTSTRAP_SCRIPT: &str = include_str!("../../../images/bootstrap-base.sh");

/// The build context as a tar archive. Deterministic: same files, same bytes.
pub fn context_tar() -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, data) in CONTEXT {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_cksum();
        builder
            .append_data(&mut header, path, *data)
            .expect("writing to memory cannot fail");
    }
    builder.into_inner().expect("writing to memory cannot fail")
}

/// The hash that names a recipe built on `base`.
pub fn recipe_hash(base: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(context_tar());
    hasher.update(b"\0base=");
    hasher.update(base.as_bytes());
    let digest = hasher.finalize();
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The tag of oi's image built on `base`.
pub fn image_tag(base: &str) -> String {
    format!("{IMAGE_REPOSITORY}:{}", recipe_hash(base))
}

/// One step of progress of an image build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildProgress {
    /// The build started: the tag it makes and the base it starts from.
    Started { tag: String, base: String },
    /// A Dockerfile step began (`Step 3/8 : RUN ...`).
    Step {
        index: u32,
        total: u32,
        text: String,
    },
    /// A line of output from the current step.
    Output(String),
    /// The image is there (built now, or already before when `built` is false).
    Finished { tag: String, built: bool },
}

/// Which base to build on: the explicit one, else the official slim Debian if present
/// locally, else the offline-bootstrapped one if present, else the official one (the
/// daemon pulls it).
pub async fn resolve_base(docker: &Docker, explicit: Option<&str>) -> String {
    if let Some(base) = explicit {
        return base.to_string();
    }
    for candidate in [DEFAULT_BASE, OFFLINE_BASE] {
        if docker.inspect_image(candidate).await.is_ok() {
            return candidate.to_string();
        }
    }
    DEFAULT_BASE.to_string()
}

/// Whether an image exists locally.
pub async fn exists(docker: &Docker, tag: &str) -> Result<bool> {
    match docker.inspect_image(tag).await {
        Ok(_) => Ok(true),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(false),
        Err(err) => Err(SandboxError::docker("image inspect")(err)),
    }
}

/// Makes sure oi's image for `base` exists, building it when missing (or always, with
/// `force`). Returns its tag.
pub async fn ensure(
    docker: &Docker,
    base: Option<&str>,
    force: bool,
    progress: &mut (dyn FnMut(BuildProgress) + Send),
) -> Result<String> {
    let base = resolve_base(docker, base).await;
    let tag = image_tag(&base);
    if !force && exists(docker, &tag).await? {
        progress(BuildProgress::Finished {
            tag: tag.clone(),
            built: false,
        });
        return Ok(tag);
    }
    build(docker, &base, &tag, progress).await?;
    progress(BuildProgress::Finished {
        tag: tag.clone(),
        built: true,
    });
    Ok(tag)
}

async fn build(
    docker: &Docker,
    base: &str,
    tag: &str,
    progress: &mut (dyn FnMut(BuildProgress) + Send),
) -> Result<()> {
    progress(BuildProgress::Started {
        tag: tag.to_string(),
        base: base.to_string(),
    });
    let hash = recipe_hash(base);
    let buildargs: HashMap<&str, &str> = HashMap::from([("BASE_IMAGE", base)]);
    let labels: HashMap<&str, &str> =
        HashMap::from([(RECIPE_LABEL, hash.as_str()), ("oi.managed", "1")]);
    let options = BuildImageOptionsBuilder::default()
        .t(tag)
        .rm(true)
        .forcerm(true)
        .buildargs(&buildargs)
        .labels(&labels)
        .build();
    let body = bollard::body_full(context_tar().into());
    let mut stream = docker.build_image(options, None, Some(body));
    let mut log: Vec<String> = Vec::new();
    let mut step: Option<String> = None;
    let mut pending = String::new();
    while let Some(item) = stream.next().await {
        let info = match item {
            Ok(info) => info,
            Err(bollard::errors::Error::DockerStreamError { error }) => {
                return Err(build_failed(step, error, log));
            }
            Err(err) => return Err(build_failed(step, err.to_string(), log)),
        };
        if let Some(detail) = info.error_detail.and_then(|d| d.message) {
            return Err(build_failed(step, detail, log));
        }
        let Some(text) = info.stream.or(info.status) else {
            continue;
        };
        pending.push_str(&text);
        while let Some(end) = pending.find('\n') {
            let line: String = pending.drain(..=end).collect();
            let line = line.trim_end().to_string();
            if line.is_empty() {
                continue;
            }
            if let Some((index, total, text)) = parse_step(&line) {
                step = Some(line.clone());
                progress(BuildProgress::Step { index, total, text });
            } else {
                progress(BuildProgress::Output(line.clone()));
            }
            log.push(line);
            if log.len() > 40 {
                log.remove(0);
            }
        }
    }
    if exists(docker, tag).await? {
        Ok(())
    } else {
        Err(build_failed(
            step,
            "the build ended without producing the image".into(),
            log,
        ))
    }
}

fn build_failed(step: Option<String>, message: String, log: Vec<String>) -> SandboxError {
    let lower = message.to_lowercase();
    let pulling = lower.contains("pull access denied")
        || lower.contains("manifest")
        || lower.contains("dial tcp")
        || lower.contains("lookup ")
        || lower.contains("no such host")
        || lower.contains("registry");
    let hint = pulling.then_some(
        "the base image is not on this machine and no registry answered: make one offline with \
         `oi image bootstrap-base` (images/bootstrap-base.sh), or name a local one with --base-image",
    );
    SandboxError::BuildFailed {
        step,
        message: message.trim().to_string(),
        log,
        hint,
    }
}

/// `Step 3/8 : RUN apt-get ...` → (3, 8, "RUN apt-get ...").
fn parse_step(line: &str) -> Option<(u32, u32, String)> {
    let rest = line.strip_prefix("Step ")?;
    let (counts, text) = rest.split_once(" : ")?;
    let (index, total) = counts.split_once('/')?;
    Some((index.parse().ok()?, total.parse().ok()?, text.to_string()))
}

/// oi's images present locally, as (tag, recipe hash, size in bytes, created unix time).
pub async fn list(docker: &Docker) -> Result<Vec<(String, String, i64, i64)>> {
    let filters: HashMap<&str, Vec<&str>> = HashMap::from([("label", vec![RECIPE_LABEL])]);
    let options = ListImagesOptionsBuilder::default()
        .filters(&filters)
        .build();
    let images = docker
        .list_images(Some(options))
        .await
        .map_err(SandboxError::docker("image list"))?;
    Ok(images
        .into_iter()
        .flat_map(|img| {
            let hash = img.labels.get(RECIPE_LABEL).cloned().unwrap_or_default();
            img.repo_tags
                .into_iter()
                .map(move |tag| (tag, hash.clone(), img.size, img.created))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_is_deterministic_and_tag_depends_on_base() {
        assert_eq!(context_tar(), context_tar());
        assert_eq!(image_tag("a"), image_tag("a"));
        assert_ne!(image_tag("a"), image_tag("b"));
        assert!(image_tag("a").starts_with("oi-sandbox:"));
    }

    #[test]
    fn context_holds_the_recipe() {
        let mut archive = tar::Archive::new(std::io::Cursor::new(context_tar()));
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert!(names.contains(&"Dockerfile".to_string()));
        assert!(names.contains(&"runner/runner.py".to_string()));
    }

    #[test]
    fn steps_are_parsed() {
        assert_eq!(parse_step("Step 3/8 : RUN x"), Some((3, 8, "RUN x".into())));
        assert_eq!(parse_step("---> abc"), None);
    }
}
