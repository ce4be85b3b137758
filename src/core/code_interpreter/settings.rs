//! The configuration of a sandbox session as a plain value: which backend, which image,
//! and the hardening of safe mode (a backend's own settings, such as the host's, are
//! its own type). Everything defaults to the safe setting; front ends
//! loosen single settings explicitly and can show the effective ones ([`Hardening::describe`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::host::HostConfig;
use super::language::Languages;

/// Where blocks run: the backend [`Engine::connect`](super::Engine::connect) starts.
/// Chosen explicitly; nothing falls back from one to the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// A per-session Docker container (safe mode, the default).
    #[default]
    Docker,
    /// The runner as a local child process: **no sandbox at all**.
    Host,
}

impl Backend {
    /// Whether code is isolated from the machine oi runs on. A backend given to
    /// [`Engine::with_backend`](super::Engine::with_backend) must agree.
    pub fn is_sandboxed(self) -> bool {
        match self {
            Backend::Docker => true,
            Backend::Host => false,
        }
    }
}

/// What the sandbox sees at `/workspace`, where code starts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Workspace {
    /// An empty folder of the session's own (a Docker volume, removed with it).
    #[default]
    Empty,
    /// A host folder, mounted read-write: what code writes there is the user's.
    ReadWrite(PathBuf),
    /// A host folder, mounted read-only.
    ReadOnly(PathBuf),
    /// A copy of a host folder made when the session starts: changes stay in the
    /// sandbox until copied out.
    Copy(PathBuf),
}

impl Workspace {
    /// The mode's name, as flags and `oi.toml` write it.
    pub fn mode(&self) -> &'static str {
        match self {
            Workspace::Empty => "none",
            Workspace::ReadWrite(_) => "rw",
            Workspace::ReadOnly(_) => "ro",
            Workspace::Copy(_) => "copy",
        }
    }

    /// The host folder behind it, if any.
    pub fn host_dir(&self) -> Option<&Path> {
        match self {
            Workspace::Empty => None,
            Workspace::ReadWrite(d) | Workspace::ReadOnly(d) | Workspace::Copy(d) => Some(d),
        }
    }

    /// In words, for settings displays and the model.
    pub fn describe(&self) -> String {
        match self {
            Workspace::Empty => "empty (none)".into(),
            Workspace::ReadWrite(d) => format!("{} mounted read-write (rw)", d.display()),
            Workspace::ReadOnly(d) => format!("{} mounted read-only (ro)", d.display()),
            Workspace::Copy(d) => format!("a copy of {} (copy)", d.display()),
        }
    }
}

/// The isolation a Docker sandbox gets. `Hardening::default()` is safe mode.
#[derive(Debug, Clone, PartialEq)]
pub struct Hardening {
    /// Network access: `false` is Docker's `none` network (no interfaces but loopback).
    pub network: bool,
    /// The image's filesystem read-only; `/tmp` (tmpfs) and the workspace are writable.
    pub read_only_root: bool,
    /// The user code runs as (`uid:gid`); never root by default.
    pub user: String,
    /// Drop every Linux capability.
    pub drop_capabilities: bool,
    /// Forbid gaining privileges (setuid binaries, file capabilities).
    pub no_new_privileges: bool,
    /// Maximum number of processes and threads.
    pub pids_limit: Option<i64>,
    /// Memory limit in bytes (swap is not allowed beyond it).
    pub memory_bytes: Option<i64>,
    /// CPU limit in cores.
    pub cpus: Option<f64>,
    /// Size of the writable `/tmp` tmpfs, in bytes.
    pub tmp_bytes: i64,
    /// Size of a private workspace (`none`, `copy`): a tmpfs counted against the
    /// memory limit, so code that fills it cannot fill the host's disk.
    pub workspace_bytes: i64,
}

impl Default for Hardening {
    fn default() -> Self {
        Hardening {
            network: false,
            read_only_root: true,
            user: "1000:1000".into(),
            drop_capabilities: true,
            no_new_privileges: true,
            pids_limit: Some(512),
            memory_bytes: Some(2 << 30),
            cpus: Some(1.0),
            tmp_bytes: 512 << 20,
            workspace_bytes: 1 << 30,
        }
    }
}

/// One line of the effective settings: name, value, and whether it is the safe default.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Setting {
    pub name: &'static str,
    pub value: String,
    pub safe_default: bool,
}

impl Hardening {
    /// The effective settings, in words, each marked when it differs from safe mode.
    pub fn describe(&self) -> Vec<Setting> {
        let safe = Hardening::default();
        let limit = |v: Option<i64>, f: &dyn Fn(i64) -> String| {
            v.map(f).unwrap_or_else(|| "unlimited".into())
        };
        vec![
            Setting {
                name: "network",
                value: if self.network {
                    "bridge (network allowed)".into()
                } else {
                    "none".into()
                },
                safe_default: self.network == safe.network,
            },
            Setting {
                name: "root filesystem",
                value: if self.read_only_root {
                    format!(
                        "read-only; writable /workspace and tmpfs /tmp ({})",
                        bytes(self.tmp_bytes)
                    )
                } else {
                    "writable".into()
                },
                safe_default: self.read_only_root == safe.read_only_root,
            },
            Setting {
                name: "user",
                value: self.user.clone(),
                safe_default: !is_root(&self.user),
            },
            Setting {
                name: "capabilities",
                value: if self.drop_capabilities {
                    "all dropped".into()
                } else {
                    "Docker's default set".into()
                },
                safe_default: self.drop_capabilities == safe.drop_capabilities,
            },
            Setting {
                name: "no-new-privileges",
                value: self.no_new_privileges.to_string(),
                safe_default: self.no_new_privileges == safe.no_new_privileges,
            },
            Setting {
                name: "pids limit",
                value: limit(self.pids_limit, &|v| v.to_string()),
                safe_default: self.pids_limit.is_some(),
            },
            Setting {
                name: "memory limit",
                value: limit(self.memory_bytes, &bytes),
                safe_default: self.memory_bytes.is_some(),
            },
            Setting {
                name: "cpu limit",
                value: self
                    .cpus
                    .map(|c| format!("{c} cores"))
                    .unwrap_or_else(|| "unlimited".into()),
                safe_default: self.cpus.is_some(),
            },
            Setting {
                name: "private workspace",
                value: format!(
                    "{} in memory (workspaces none and copy)",
                    bytes(self.workspace_bytes)
                ),
                safe_default: self.workspace_bytes <= safe.workspace_bytes,
            },
            Setting {
                name: "init process",
                // The image's own (see images/Dockerfile), whatever else is loosened.
                value: "tini, reaping zombies, out of code's reach".into(),
                safe_default: true,
            },
            Setting {
                name: "docker socket",
                value: "never mounted".into(),
                safe_default: true,
            },
        ]
    }
}

fn is_root(user: &str) -> bool {
    let uid = user.split(':').next().unwrap_or("");
    uid == "0" || uid == "root"
}

/// Bytes in the largest whole binary unit, e.g. `2 GiB`, `512 MiB`.
pub fn bytes(n: i64) -> String {
    const UNITS: [(&str, i64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, size) in UNITS {
        if n >= size {
            return if n % size == 0 {
                format!("{} {unit}", n / size)
            } else {
                format!("{:.1} {unit}", n as f64 / size as f64)
            };
        }
    }
    format!("{n} B")
}

/// Everything a session needs, passed in by the front end.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    pub backend: Backend,
    /// The Docker endpoint (`unix:///var/run/docker.sock`, `tcp://host:2375`); the front
    /// end takes it from `DOCKER_HOST`.
    pub docker_host: Option<String>,
    /// The image to run; `None` is oi's own sandbox image (see [`super::image`]).
    pub image: Option<String>,
    /// The base oi's own image is built on; `None` picks one (see [`super::image::resolve_base`]).
    pub base_image: Option<String>,
    /// The project's own image, built on oi's (from `oi.toml`).
    pub project: Option<super::image::ProjectImage>,
    pub hardening: Hardening,
    /// What `/workspace` is (Docker backend).
    pub workspace: Workspace,
    /// Something about the workspace the user and the model should know (it is not
    /// writable for the sandbox's user), worked out by the front end.
    pub workspace_notice: Option<String>,
    pub languages: Languages,
    /// Timeout for blocks that do not set one; `None` lets them run until interrupted.
    pub default_timeout: Option<Duration>,
    /// How long an interrupted block may take to stop before its interpreter is killed.
    pub interrupt_grace: Duration,
    /// How long the runner may take to say hello.
    pub start_timeout: Duration,
    /// The host backend's own settings (read by no other backend).
    pub host: HostConfig,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            backend: Backend::Docker,
            docker_host: None,
            image: None,
            base_image: None,
            project: None,
            hardening: Hardening::default(),
            workspace: Workspace::Empty,
            workspace_notice: None,
            languages: Languages::default(),
            default_timeout: None,
            interrupt_grace: Duration::from_secs(2),
            start_timeout: Duration::from_secs(30),
            host: HostConfig::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_mode_is_the_default_and_loosening_shows() {
        assert!(Hardening::default()
            .describe()
            .iter()
            .all(|s| s.safe_default));
        let loose = Hardening {
            network: true,
            pids_limit: None,
            ..Hardening::default()
        };
        let unsafe_ones: Vec<_> = loose
            .describe()
            .into_iter()
            .filter(|s| !s.safe_default)
            .map(|s| s.name)
            .collect();
        assert_eq!(unsafe_ones, ["network", "pids limit"]);
    }

    #[test]
    fn byte_sizes_read_naturally() {
        assert_eq!(bytes(2 << 30), "2 GiB");
        assert_eq!(bytes(512 << 20), "512 MiB");
        assert_eq!(bytes(1536 << 20), "1.5 GiB");
        assert_eq!(bytes(10), "10 B");
    }
}
