//! Errors of the code interpreter: infrastructure failures only. A block that fails
//! (non-zero exit, a traceback, a timeout, a crashed interpreter) is *not* an error
//! here: it is an [`ExecOutcome`](super::ExecOutcome) the model should see.
//!
//! Each variant says what happened with the facts a front end needs to say what to do
//! (which endpoint, which image, which setting, which backend); the messages name no
//! command-line flags or commands. Wording advice for a terminal, a server or an MCP
//! client is left to each front end.

use std::path::PathBuf;
use std::time::Duration;

use super::settings::{bytes, Backend};

/// Result alias for the code interpreter.
pub type Result<T, E = SandboxError> = std::result::Result<T, E>;

/// What can go wrong with the sandbox itself.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The Docker daemon cannot be reached at `endpoint`. Nothing can run in a Docker
    /// sandbox until the user fixes it; `cause` says which kind of fix.
    #[error("cannot reach the Docker daemon at {endpoint}: {detail}")]
    DockerUnavailable {
        endpoint: String,
        detail: String,
        cause: Unreachable,
    },

    /// A Docker API call failed for another reason (the daemon answered with an error).
    #[error("Docker {action} failed: {source}")]
    Docker {
        action: &'static str,
        #[source]
        source: bollard::errors::Error,
    },

    /// The sandbox image `tag` is not there. oi builds its own when asked; a configured
    /// one must be built or pulled by the user, or another chosen.
    #[error("the sandbox image {tag} is missing on this machine")]
    ImageMissing { tag: String },

    /// An image to remove is used by a container (a running session, someone's build):
    /// it stays. Pruning goes on with the others.
    #[error("the image {tag} is in use by a container")]
    ImageInUse { tag: String },

    /// Building an image failed; `step` is the Dockerfile step that failed, `log` the
    /// last lines the build printed, `hint` what is likely wrong.
    #[error("{}{}", build_report(step, message, log), hint.map(|h| format!("\nhint: {h}")).unwrap_or_default())]
    BuildFailed {
        step: Option<String>,
        message: String,
        log: Vec<String>,
        hint: Option<BuildHint>,
    },

    /// The runner inside the sandbox did not start or spoke an unexpected protocol.
    #[error("the sandbox did not start: {reason}{}", stderr_tail(diagnostics))]
    StartFailed { reason: String, diagnostics: String },

    /// The runner speaks another protocol version than this oi: the image was built by
    /// an older or newer oi (oi's own image is rebuilt from the recipe in the binary).
    #[error("the sandbox did not start: the runner speaks protocol version {runner}, this oi speaks {oi}: the image was made for another oi")]
    RunnerVersion { runner: u32, oi: u32 },

    /// The runner did not say hello in time.
    #[error("the sandbox runner did not answer within {0:?}")]
    StartTimeout(Duration),

    /// The language is not enabled for this session.
    #[error("unknown language `{name}`; available: {}", available.join(", "))]
    UnknownLanguage {
        name: String,
        available: Vec<String>,
    },

    /// Talking to a runner, or reading or writing a local file for it, failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// The session was closed; create a new one.
    #[error("the sandbox session is closed")]
    Closed,

    /// Copying files in or out was refused or failed (a path outside the workspace, an
    /// archive entry that would escape, a file that exists).
    #[error("{message}")]
    Files { message: String },

    /// A copy out would take more than `limit` bytes (a sparse file counts at its full
    /// size). Nothing was written.
    #[error("{path} is more than {} to copy out (sparse files count at their full size); nothing was written", bytes(i64::try_from(*limit).unwrap_or(i64::MAX)))]
    CopyTooLarge { path: String, limit: u64 },

    /// The host folder of a `copy` workspace does not fit the private workspace of
    /// `limit` bytes (the hardening's `workspace_bytes`).
    #[error("{} does not fit the sandbox's private workspace ({})", dir.display(), bytes(*limit))]
    WorkspaceTooLarge { dir: PathBuf, limit: i64 },

    /// No sandbox of this backend matches `reference` (an id, id prefix, name or session).
    #[error("no oi container matches `{reference}`")]
    NoSuchSandbox { reference: String },

    /// Several sandboxes match `reference`; more of the id tells them apart.
    #[error("`{reference}` matches several containers; give more of the id")]
    AmbiguousSandbox { reference: String },

    /// The backend cannot do this at all (the host backend has no images, and its
    /// files are on this machine already).
    #[error("the {backend} backend {}", capability.missing())]
    Unsupported {
        backend: &'static str,
        capability: Capability,
    },

    /// The backend given to an engine is not the kind the configuration asks for: a
    /// configuration that promises a sandbox never gets code run without one, nor the
    /// reverse.
    #[error("{}", mismatch(*configured, backend))]
    BackendMismatch {
        configured: Backend,
        backend: &'static str,
    },

    /// A backend was started without a setting it cannot do without.
    #[error("the {backend} backend needs {setting}, which is not set")]
    MissingSetting {
        backend: &'static str,
        setting: &'static str,
    },
}

/// Why the Docker daemon could not be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreachable {
    /// Nothing answers at the endpoint: Docker is not installed or not running.
    NotRunning,
    /// The daemon refused this user (the socket's permissions).
    PermissionDenied,
}

/// What is likely wrong when an image build fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildHint {
    /// The base image is not on this machine and no registry answered.
    BaseUnreachable,
    /// The project image's Dockerfile (its `dockerfile` setting) cannot be read.
    ProjectDockerfile,
    /// A project image's `apt_packages` or `pip_packages` holds something that is not a
    /// package name.
    PackageNames,
    /// The project's build folder changed since the user trusted it.
    ProjectChanged,
}

impl std::fmt::Display for BuildHint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BuildHint::BaseUnreachable => {
                "the base image is not on this machine and no registry answered: make one \
                 offline or name a local one"
            }
            BuildHint::ProjectDockerfile => "check the project image's `dockerfile`",
            BuildHint::PackageNames => "apt_packages and pip_packages take package names only",
            BuildHint::ProjectChanged => "look at what changed, then trust the project file again",
        })
    }
}

/// Something a backend may not be able to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    /// Copying files into and out of the workspace.
    Files,
    /// Sandbox images (building, listing, checking).
    Images,
}

impl Capability {
    fn missing(self) -> &'static str {
        match self {
            Capability::Files => {
                "runs code on this machine: its files are already here, there is nothing to copy"
            }
            Capability::Images => "has no sandbox images",
        }
    }
}

impl SandboxError {
    pub(crate) fn docker(
        action: &'static str,
    ) -> impl FnOnce(bollard::errors::Error) -> SandboxError {
        move |source| SandboxError::Docker { action, source }
    }

    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> SandboxError {
        let context = context.into();
        move |source| SandboxError::Io { context, source }
    }
}

/// A failed build in words, without its hint: what failed, where, and the build's last
/// lines. Front ends that word the hint their own way use this for the rest.
pub fn build_report(step: &Option<String>, message: &str, log: &[String]) -> String {
    let at = step
        .as_ref()
        .map(|s| format!(" at {s}"))
        .unwrap_or_default();
    let tail = if log.is_empty() {
        String::new()
    } else {
        format!("\nlast lines of the build:\n{}", log.join("\n"))
    };
    format!("building the sandbox image failed{at}: {message}{tail}")
}

fn mismatch(configured: Backend, backend: &str) -> String {
    if configured.is_sandboxed() {
        format!(
            "the configuration asks for a sandbox, but the {backend} backend runs code without one"
        )
    } else {
        format!("the configuration asks for no sandbox (the host), but the {backend} backend is a sandbox")
    }
}

fn stderr_tail(diagnostics: &str) -> String {
    let text = diagnostics.trim();
    if text.is_empty() {
        String::new()
    } else {
        format!("\nrunner said:\n{text}")
    }
}
