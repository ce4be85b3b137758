//! How the terminal words core's sandbox errors: core says what happened, with the
//! facts (which endpoint, which image, which setting, which backend); this adds what to
//! type about it — the flags, the commands, the `[sandbox]` keys — for a person at a
//! terminal. Other front ends word the same facts their own way.

use crate::core::code_interpreter::{
    build_report, Backend, BuildHint, Capability, SandboxError, Unreachable,
};

/// `err` as a person at a terminal should read it: core's message and, where there is
/// something to do about it, what to type.
pub fn describe(err: &SandboxError) -> String {
    match err {
        SandboxError::BuildFailed {
            step,
            message,
            log,
            hint,
        } => {
            let hint = hint
                .map(|h| format!("\nhint: {}", build_hint(h)))
                .unwrap_or_default();
            format!("{}{hint}", build_report(step, message, log))
        }
        SandboxError::Unsupported {
            backend: "host",
            capability: Capability::Files,
        } => "--unsafe runs on this machine: its files are already here".into(),
        other => match advice(other) {
            Some(advice) => format!("{other}{advice}"),
            None => other.to_string(),
        },
    }
}

/// What to add to core's message of `err`, from its first character.
fn advice(err: &SandboxError) -> Option<String> {
    Some(match err {
        SandboxError::DockerUnavailable { cause, .. } => format!(
            "\n{}",
            match cause {
                Unreachable::NotRunning => {
                    "Is Docker installed and running? Install it with `sudo apt-get install \
                     docker.io` (Debian/Ubuntu) and start it with `sudo systemctl start docker`; \
                     or run without a sandbox, at your own risk, with --unsafe."
                }
                Unreachable::PermissionDenied => {
                    "Your user may not use Docker: add it to the docker group (`sudo usermod \
                     -aG docker $USER`, then log in again), or run oi with sudo."
                }
            }
        ),
        SandboxError::ImageMissing { .. } => ": build or pull it (`oi image build` makes oi's \
                                              own), or choose another with --image"
            .into(),
        SandboxError::RunnerVersion { .. } => ": rebuild the image with `oi image build`".into(),
        SandboxError::CopyTooLarge { .. } => ": copy a smaller part, or allow more \
                                              (--workspace-size, or `oi sandbox cp --limit`)"
            .into(),
        SandboxError::WorkspaceTooLarge { .. } => ": raise the limit (--workspace-size, or \
                                                   workspace_size in [sandbox]) or use \
                                                   --workspace ro"
            .into(),
        SandboxError::NoSuchSandbox { .. } => " (see `oi sandbox ls`)".into(),
        SandboxError::BackendMismatch {
            configured: Backend::Host,
            ..
        } => " (--unsafe)".into(),
        _ => return None,
    })
}

fn build_hint(hint: BuildHint) -> &'static str {
    match hint {
        BuildHint::BaseUnreachable => {
            "the base image is not on this machine and no registry answered: make one offline \
             with `oi image bootstrap-base` (images/bootstrap-base.sh), or name a local one with \
             --base-image"
        }
        BuildHint::ProjectDockerfile => "check `dockerfile` under [sandbox] in oi.toml",
        BuildHint::PackageNames => {
            "apt_packages and pip_packages in oi.toml take package names only"
        }
        BuildHint::ProjectChanged => "look at what changed, then `oi trust` the project file again",
    }
}

/// A sandbox error that displays as [`describe`] words it, keeping core's error as its
/// cause chain (so `{:#}` and broken-pipe checks see through it).
#[derive(Debug)]
pub struct Described(pub SandboxError);

impl std::fmt::Display for Described {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&describe(&self.0))
    }
}

impl std::error::Error for Described {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_says_what_and_the_terminal_says_what_to_type() {
        let missing = SandboxError::ImageMissing { tag: "x:1".into() };
        assert_eq!(
            missing.to_string(),
            "the sandbox image x:1 is missing on this machine"
        );
        assert!(describe(&missing)
            .starts_with("the sandbox image x:1 is missing on this machine: build or pull it"));
        assert!(describe(&missing).contains("--image"));
        let down = SandboxError::DockerUnavailable {
            endpoint: "unix:///x.sock".into(),
            detail: "the socket does not exist".into(),
            cause: Unreachable::NotRunning,
        };
        assert!(!down.to_string().contains("--unsafe"));
        let text = describe(&down);
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.contains("apt-get install docker.io") && text.contains("--unsafe"));
        let too_big = SandboxError::WorkspaceTooLarge {
            dir: "/p".into(),
            limit: 16 << 20,
        };
        assert_eq!(
            describe(&too_big),
            "/p does not fit the sandbox's private workspace (16 MiB): raise the limit \
             (--workspace-size, or workspace_size in [sandbox]) or use --workspace ro"
        );
        let build = SandboxError::BuildFailed {
            step: Some("Step 2/9 : FROM x".into()),
            message: "pull access denied".into(),
            log: vec!["a".into()],
            hint: Some(BuildHint::BaseUnreachable),
        };
        assert!(!build.to_string().contains("oi image"));
        let text = describe(&build);
        assert!(text.starts_with("building the sandbox image failed at Step 2/9 : FROM x: pull access denied\nlast lines of the build:\na\nhint: "), "{text}");
        assert!(text.contains("`oi image bootstrap-base`"), "{text}");
    }

    #[test]
    fn every_message_core_gives_names_no_flag() {
        let errors = [
            SandboxError::CopyTooLarge {
                path: "/workspace/big".into(),
                limit: 1 << 30,
            },
            SandboxError::RunnerVersion { runner: 2, oi: 1 },
            SandboxError::NoSuchSandbox {
                reference: "x".into(),
            },
            SandboxError::Unsupported {
                backend: "host",
                capability: Capability::Files,
            },
            SandboxError::BackendMismatch {
                configured: Backend::Docker,
                backend: "host",
            },
        ];
        for err in errors {
            let core = err.to_string();
            assert!(!core.contains("--") && !core.contains("`oi "), "{core}");
        }
    }
}
