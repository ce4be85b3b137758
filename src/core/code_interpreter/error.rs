//! Errors of the code interpreter: infrastructure failures only. A block that fails
//! (non-zero exit, a traceback, a timeout, a crashed interpreter) is *not* an error
//! here: it is an [`ExecOutcome`](super::ExecOutcome) the model should see.

use std::time::Duration;

/// Result alias for the code interpreter.
pub type Result<T, E = SandboxError> = std::result::Result<T, E>;

/// What can go wrong with the sandbox itself.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The Docker daemon cannot be reached (not installed, not running, no permission).
    /// Nothing can run in a sandbox until the user fixes it; the message says how.
    #[error("cannot reach the Docker daemon at {endpoint}: {detail}\n{hint}")]
    DockerUnavailable {
        endpoint: String,
        detail: String,
        hint: &'static str,
    },

    /// A Docker API call failed for another reason (the daemon answered with an error).
    #[error("Docker {action} failed: {source}")]
    Docker {
        action: &'static str,
        #[source]
        source: bollard::errors::Error,
    },

    /// The sandbox image is not there; oi's own is built by the front end
    /// (`oi image build`), a configured one must be built or pulled by the user.
    #[error("the sandbox image {tag} is missing on this machine: build or pull it (`oi image build` makes oi's own), or choose another with --image")]
    ImageMissing { tag: String },

    /// Building an image failed; `step` is the Dockerfile step that failed and `log`
    /// the last lines the build printed.
    #[error("building the sandbox image failed{}: {message}{}{}", step.as_ref().map(|s| format!(" at {s}")).unwrap_or_default(), log_tail(log), hint.map(|h| format!("\nhint: {h}")).unwrap_or_default())]
    BuildFailed {
        step: Option<String>,
        message: String,
        log: Vec<String>,
        hint: Option<&'static str>,
    },

    /// The runner inside the sandbox did not start or spoke an unexpected protocol.
    #[error("the sandbox did not start: {reason}{}", stderr_tail(diagnostics))]
    StartFailed { reason: String, diagnostics: String },

    /// The runner did not say hello in time.
    #[error("the sandbox runner did not answer within {0:?}")]
    StartTimeout(Duration),

    /// The language is not enabled for this session.
    #[error("unknown language `{name}`; available: {}", available.join(", "))]
    UnknownLanguage {
        name: String,
        available: Vec<String>,
    },

    /// Talking to a local runner process (the unsandboxed `--unsafe` mode) failed.
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
}

impl SandboxError {
    /// Whether the failure is the Docker daemon being unreachable, for front ends that
    /// answer it with set-up advice and a distinct exit code.
    pub fn is_docker_unavailable(&self) -> bool {
        matches!(self, SandboxError::DockerUnavailable { .. })
    }

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

fn log_tail(log: &[String]) -> String {
    if log.is_empty() {
        return String::new();
    }
    format!("\nlast lines of the build:\n{}", log.join("\n"))
}

fn stderr_tail(diagnostics: &str) -> String {
    let text = diagnostics.trim();
    if text.is_empty() {
        String::new()
    } else {
        format!("\nrunner said:\n{text}")
    }
}
