//! oi's sandbox image, the Docker backend's images: the recipe in `images/` is compiled
//! into the binary, sent to the Docker daemon as an in-memory tar build context, and
//! tagged by a hash of that context and the base image, so a changed recipe gets a new
//! tag and an unchanged one is never rebuilt. Progress is reported as [`BuildProgress`]
//! values; rendering it is the front end's job. Other backends have no images here
//! (see [`super::backend::ImageStore`]).

use std::collections::HashMap;

use bollard::query_parameters::{BuildImageOptionsBuilder, ListImagesOptionsBuilder};
use bollard::Docker;
use futures::StreamExt;
use sha2::{Digest, Sha256};

use super::error::{BuildHint, Result, SandboxError};
use super::settings::SandboxConfig;

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
    (
        "runner/oi_guard.py",
        include_bytes!("../../../images/runner/oi_guard.py"),
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

/// Makes sure the image sessions of `config` run exists. A configured image that is
/// not oi's own is only checked for (oi cannot build it); oi's own image, and the
/// project's on top of it, are built when missing (or always, with `force`). Returns
/// the tag.
pub async fn ensure_for(
    docker: &Docker,
    config: &SandboxConfig,
    force: bool,
    progress: &mut (dyn FnMut(BuildProgress) + Send),
) -> Result<String> {
    if let Some(tag) = &config.image {
        let exists = exists(docker, tag).await?;
        if !tag.starts_with(IMAGE_REPOSITORY) {
            return if exists {
                Ok(tag.clone())
            } else {
                Err(SandboxError::ImageMissing { tag: tag.clone() })
            };
        }
        if exists && !force {
            return Ok(tag.clone());
        }
    }
    let mut tag = ensure(docker, config.base_image.as_deref(), force, progress).await?;
    if let Some(project) = &config.project {
        tag = ensure_project(docker, &tag, project, force, progress).await?;
    }
    Ok(tag)
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
    let hash = recipe_hash(base);
    let recipe = Recipe {
        context: context_tar(),
        dockerfile: "Dockerfile",
        buildargs: HashMap::from([("BASE_IMAGE", base)]),
        labels: HashMap::from([(RECIPE_LABEL, hash.as_str())]),
    };
    build_recipe(docker, base, tag, recipe, progress).await
}

/// What a build sends: the context and how to read it.
struct Recipe<'a> {
    context: Vec<u8>,
    dockerfile: &'a str,
    buildargs: HashMap<&'a str, &'a str>,
    labels: HashMap<&'a str, &'a str>,
}

async fn build_recipe(
    docker: &Docker,
    base: &str,
    tag: &str,
    recipe: Recipe<'_>,
    progress: &mut (dyn FnMut(BuildProgress) + Send),
) -> Result<()> {
    progress(BuildProgress::Started {
        tag: tag.to_string(),
        base: base.to_string(),
    });
    let options = BuildImageOptionsBuilder::default()
        .t(tag)
        .dockerfile(recipe.dockerfile)
        .rm(true)
        .forcerm(true)
        .buildargs(&recipe.buildargs)
        .labels(&recipe.labels)
        .build();
    let body = bollard::body_full(recipe.context.into());
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
    let hint = pulling.then_some(BuildHint::BaseUnreachable);
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

/// Label on project images naming the project.
pub const PROJECT_LABEL: &str = "oi.project";
/// The repository project images are tagged in.
pub const PROJECT_REPOSITORY: &str = "oi-project";

/// A project's own sandbox image, built on oi's: from the project's Dockerfile (whose
/// `FROM ${OI_IMAGE}` is oi's image, passed as a build argument) and/or extra packages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectImage {
    /// The project's name (its folder's), for tags and listings.
    pub name: String,
    /// The project's Dockerfile and its folder (the build context), if it has one.
    pub dockerfile: Option<std::path::PathBuf>,
    /// Debian packages to add.
    pub apt_packages: Vec<String>,
    /// Python packages to add (with pip).
    pub pip_packages: Vec<String>,
    /// The [`ProjectImage::fingerprint`] the user trusted, when the recipe comes from a
    /// project file: a build whose folder no longer matches it is refused (code in the
    /// sandbox can change a mounted project's files between the check and the build).
    pub trusted: Option<String>,
}

impl ProjectImage {
    /// The Dockerfile that builds it.
    pub fn recipe(&self) -> Result<String> {
        let mut text = match &self.dockerfile {
            Some(path) => std::fs::read_to_string(path).map_err(|e| SandboxError::BuildFailed {
                step: None,
                message: format!(
                    "cannot read the project's Dockerfile {}: {e}",
                    path.display()
                ),
                log: Vec::new(),
                hint: Some(BuildHint::ProjectDockerfile),
            })?,
            None => "ARG OI_IMAGE\nFROM ${OI_IMAGE}\n".to_string(),
        };
        for name in self.apt_packages.iter().chain(&self.pip_packages) {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-._:=<>[],".contains(c))
            {
                return Err(SandboxError::BuildFailed {
                    step: None,
                    message: format!("`{name}` is not a package name"),
                    log: Vec::new(),
                    hint: Some(BuildHint::PackageNames),
                });
            }
        }
        let mut apt = self.apt_packages.clone();
        if !self.pip_packages.is_empty() {
            apt.push("python3-pip".into());
        }
        if !apt.is_empty() || !self.pip_packages.is_empty() {
            text.push_str("\nUSER root\n");
        }
        if !apt.is_empty() {
            text.push_str(&format!(
                "RUN apt-get update && apt-get install -y --no-install-recommends {} && rm -rf /var/lib/apt/lists/*\n",
                apt.join(" ")
            ));
        }
        if !self.pip_packages.is_empty() {
            text.push_str(&format!(
                "RUN pip install --no-cache-dir --break-system-packages {}\n",
                self.pip_packages.join(" ")
            ));
        }
        if !apt.is_empty() || !self.pip_packages.is_empty() {
            text.push_str("USER 1000:1000\n");
        }
        Ok(text)
    }

    /// What a build would run and see: the SHA-256 of the recipe and the build folder.
    pub fn fingerprint(&self) -> Result<String> {
        let recipe = self.recipe()?;
        Ok(hex(&Sha256::digest(self.context(&recipe)?)))
    }

    /// The build context: the Dockerfile's folder (without `.git`) and the recipe.
    fn context(&self, recipe: &str) -> Result<Vec<u8>> {
        let mut builder = tar::Builder::new(Vec::new());
        if let Some(dir) = self.dockerfile.as_ref().and_then(|d| d.parent()) {
            let mut stack = vec![(dir.to_path_buf(), std::path::PathBuf::new())];
            while let Some((path, rel)) = stack.pop() {
                let mut entries: Vec<_> = std::fs::read_dir(&path)
                    .map_err(|e| SandboxError::Io {
                        context: "reading the project's build folder".into(),
                        source: e,
                    })?
                    .filter_map(|e| e.ok())
                    .collect();
                entries.sort_by_key(|e| e.file_name());
                for entry in entries {
                    let name = entry.file_name();
                    let rel = rel.join(&name);
                    let Ok(kind) = entry.file_type() else {
                        continue;
                    };
                    if kind.is_dir() && name != ".git" {
                        stack.push((entry.path(), rel));
                    } else if kind.is_file() {
                        let data = std::fs::read(entry.path()).map_err(|e| SandboxError::Io {
                            context: "reading the project's build folder".into(),
                            source: e,
                        })?;
                        append(&mut builder, &rel.display().to_string(), &data);
                    }
                }
            }
        }
        append(&mut builder, "Dockerfile.oi-project", recipe.as_bytes());
        Ok(builder.into_inner().expect("writing to memory cannot fail"))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn append(builder: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_cksum();
    builder
        .append_data(&mut header, path, data)
        .expect("writing to memory cannot fail");
}

/// Makes sure the project's image on top of `oi_image` exists; builds it when the base
/// or the project's recipe changed (or with `force`). Returns its tag.
pub async fn ensure_project(
    docker: &Docker,
    oi_image: &str,
    project: &ProjectImage,
    force: bool,
    progress: &mut (dyn FnMut(BuildProgress) + Send),
) -> Result<String> {
    let base_id = docker
        .inspect_image(oi_image)
        .await
        .map_err(SandboxError::docker("image inspect"))?
        .id
        .unwrap_or_default();
    let recipe = project.recipe()?;
    let context = project.context(&recipe)?;
    if let Some(trusted) = &project.trusted {
        if hex(&Sha256::digest(&context)) != *trusted {
            return Err(SandboxError::BuildFailed {
                step: None,
                message: "the project's build folder changed since it was checked against \
                          what you trusted; nothing was built"
                    .into(),
                log: Vec::new(),
                hint: Some(BuildHint::ProjectChanged),
            });
        }
    }
    let mut hasher = Sha256::new();
    hasher.update(base_id.as_bytes());
    hasher.update(b"\0");
    hasher.update(&context);
    let hash: String = hasher
        .finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    let name: String = project
        .name
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let tag = format!("{PROJECT_REPOSITORY}-{}:{hash}", name.trim_matches('-'));
    if !force && exists(docker, &tag).await? {
        progress(BuildProgress::Finished {
            tag: tag.clone(),
            built: false,
        });
        return Ok(tag);
    }
    let recipe = Recipe {
        context,
        dockerfile: "Dockerfile.oi-project",
        buildargs: HashMap::from([("OI_IMAGE", oi_image)]),
        labels: HashMap::from([
            (RECIPE_LABEL, hash.as_str()),
            (PROJECT_LABEL, project.name.as_str()),
        ]),
    };
    build_recipe(docker, oi_image, &tag, recipe, progress).await?;
    progress(BuildProgress::Finished {
        tag: tag.clone(),
        built: true,
    });
    Ok(tag)
}

/// One of oi's images present locally.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ImageInfo {
    pub tag: String,
    /// The project it was built for; `None` for oi's own image.
    pub project: Option<String>,
    pub recipe: String,
    pub size: i64,
    /// Unix time.
    pub created: i64,
}

/// oi's images present locally (its own and projects'), newest first.
pub async fn list(docker: &Docker) -> Result<Vec<ImageInfo>> {
    let filters: HashMap<&str, Vec<&str>> = HashMap::from([("label", vec![RECIPE_LABEL])]);
    let options = ListImagesOptionsBuilder::default()
        .filters(&filters)
        .build();
    let images = docker
        .list_images(Some(options))
        .await
        .map_err(SandboxError::docker("image list"))?;
    let mut list: Vec<ImageInfo> = images
        .into_iter()
        .flat_map(|img| {
            let recipe = img.labels.get(RECIPE_LABEL).cloned().unwrap_or_default();
            let project = img.labels.get(PROJECT_LABEL).cloned();
            // Untagged images are Docker's build cache, not oi's to list or remove.
            img.repo_tags
                .into_iter()
                .filter(|t| t != "<none>:<none>")
                .map(move |tag| ImageInfo {
                    tag,
                    project: project.clone(),
                    recipe: recipe.clone(),
                    size: img.size,
                    created: img.created,
                })
        })
        .collect();
    list.sort_by(|a, b| b.created.cmp(&a.created).then(a.tag.cmp(&b.tag)));
    Ok(list)
}

/// The images `prune` removes: all but the current one of oi's own (`current`) and the
/// newest of each project's.
pub fn stale(images: &[ImageInfo], current: &str) -> Vec<ImageInfo> {
    let mut newest_seen = std::collections::HashSet::new();
    images
        .iter()
        .filter(|img| match &img.project {
            None => img.tag != current,
            // `images` is newest first: the first of each project stays.
            Some(project) => !newest_seen.insert(project.clone()),
        })
        .cloned()
        .collect()
}

/// Removes an image; one in use by a container is [`SandboxError::ImageInUse`].
pub async fn remove(docker: &Docker, tag: &str) -> Result<()> {
    match docker
        .remove_image(
            tag,
            None::<bollard::query_parameters::RemoveImageOptions>,
            None,
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 409, ..
        }) => Err(SandboxError::ImageInUse {
            tag: tag.to_string(),
        }),
        Err(err) => Err(SandboxError::docker("image remove")(err)),
    }
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
    fn prune_keeps_the_current_image_and_each_project_s_newest() {
        let img = |tag: &str, project: Option<&str>, created: i64| ImageInfo {
            tag: tag.into(),
            project: project.map(str::to_string),
            recipe: String::new(),
            size: 0,
            created,
        };
        let images = vec![
            img("oi-project-a:2", Some("a"), 40),
            img("oi-sandbox:new", None, 30),
            img("oi-project-a:1", Some("a"), 20),
            img("oi-project-b:1", Some("b"), 15),
            img("oi-sandbox:old", None, 10),
        ];
        let tags: Vec<String> = stale(&images, "oi-sandbox:new")
            .into_iter()
            .map(|i| i.tag)
            .collect();
        assert_eq!(tags, ["oi-project-a:1", "oi-sandbox:old"]);
    }

    #[test]
    fn a_project_recipe_adds_packages_safely() {
        let project = ProjectImage {
            name: "p".into(),
            dockerfile: None,
            apt_packages: vec!["jq".into()],
            pip_packages: vec!["polars==1.0".into()],
            trusted: None,
        };
        let recipe = project.recipe().unwrap();
        assert!(
            recipe.starts_with("ARG OI_IMAGE\nFROM ${OI_IMAGE}\n"),
            "{recipe}"
        );
        assert!(
            recipe.contains("install -y --no-install-recommends jq python3-pip"),
            "{recipe}"
        );
        assert!(
            recipe.contains("pip install --no-cache-dir --break-system-packages polars==1.0"),
            "{recipe}"
        );
        assert!(recipe.trim_end().ends_with("USER 1000:1000"), "{recipe}");
        let bad = ProjectImage {
            apt_packages: vec!["jq; rm -rf /".into()],
            ..project
        };
        assert!(bad
            .recipe()
            .unwrap_err()
            .to_string()
            .contains("not a package name"));
    }

    #[test]
    fn steps_are_parsed() {
        assert_eq!(parse_step("Step 3/8 : RUN x"), Some((3, 8, "RUN x".into())));
        assert_eq!(parse_step("---> abc"), None);
    }
}
