//! The Docker side of a sandbox: connecting to the daemon, creating a session's
//! hardened container with the runner attached over stdin/stdout, removing it, and
//! finding the containers of sessions whose oi process is gone.
//!
//! The container's stdin is opened once (`StdinOnce`): when oi's attach connection
//! closes, even because oi was killed, the runner reads end-of-file and exits, so an
//! abandoned sandbox stops by itself; `sweep` then removes what is left.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bollard::container::LogOutput;
use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder,
};
use bollard::Docker;
use futures::StreamExt;

use super::connection::{Diagnostics, Transport};
use super::error::{Result, SandboxError};
use super::files::{self, WORKSPACE};
use super::settings::{Hardening, Owner, Workspace};

/// Label on every container oi creates.
pub const MANAGED_LABEL: &str = "oi.managed";
/// Label carrying the session id.
pub const SESSION_LABEL: &str = "oi.session";
/// Label carrying the owning process (`pid:start_time`).
pub const OWNER_LABEL: &str = "oi.owner";

const DEFAULT_ENDPOINT: &str = "unix:///var/run/docker.sock";

/// Connects to the daemon and agrees on an API version both speak (Debian's engine
/// speaks 1.41, older than bollard's default).
pub async fn connect(endpoint: Option<&str>) -> Result<Docker> {
    let endpoint = endpoint
        .filter(|e| !e.is_empty())
        .unwrap_or(DEFAULT_ENDPOINT)
        .to_string();
    let unavailable = |detail: String, hint: &'static str| SandboxError::DockerUnavailable {
        endpoint: endpoint.clone(),
        detail,
        hint,
    };
    let client = if let Some(path) = endpoint.strip_prefix("unix://") {
        if !std::path::Path::new(path).exists() {
            return Err(unavailable(
                "the socket does not exist".into(),
                NOT_RUNNING_HINT,
            ));
        }
        Docker::connect_with_socket(path, 120, bollard::API_DEFAULT_VERSION)
    } else if endpoint.starts_with("tcp://") || endpoint.starts_with("http://") {
        Docker::connect_with_http(&endpoint, 120, bollard::API_DEFAULT_VERSION)
    } else {
        Docker::connect_with_socket(&endpoint, 120, bollard::API_DEFAULT_VERSION)
    }
    .map_err(|e| unavailable(e.to_string(), NOT_RUNNING_HINT))?;
    match client.negotiate_version().await {
        Ok(client) => Ok(client),
        Err(err) => {
            let detail = error_chain(&err);
            let hint = if detail.to_lowercase().contains("permission denied") {
                PERMISSION_HINT
            } else {
                NOT_RUNNING_HINT
            };
            Err(unavailable(detail, hint))
        }
    }
}

const NOT_RUNNING_HINT: &str = "Is Docker installed and running? Install it with `sudo apt-get install docker.io` \
(Debian/Ubuntu) and start it with `sudo systemctl start docker`; or run without a sandbox, at your own risk, with --unsafe.";
const PERMISSION_HINT: &str = "Your user may not use Docker: add it to the docker group \
(`sudo usermod -aG docker $USER`, then log in again), or run oi with sudo.";

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

impl Owner {
    /// This process.
    pub fn current() -> Owner {
        let pid = std::process::id();
        Owner {
            pid,
            start_time: process_start_time(pid).unwrap_or(0),
        }
    }

    fn label(&self) -> String {
        format!("{}:{}", self.pid, self.start_time)
    }

    fn parse(label: &str) -> Option<Owner> {
        let (pid, start) = label.split_once(':')?;
        Some(Owner {
            pid: pid.parse().ok()?,
            start_time: start.parse().ok()?,
        })
    }

    /// Whether the owning process still runs (on this machine).
    pub fn is_alive(&self) -> bool {
        process_start_time(self.pid).is_some_and(|t| t == self.start_time)
    }
}

fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22, counted after the parenthesised command name, which may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// A new session id: unique per process and over time, short enough to read.
pub fn new_session_id() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mixed = (nanos as u64) ^ ((std::process::id() as u64) << 40) ^ ((n as u64) << 20);
    format!("{:012x}", mixed & 0xffff_ffff_ffff)
}

/// The create request for a session container: the runner as the main process,
/// stdin open for the protocol, and safe mode's hardening unless loosened.
pub(crate) fn container_spec(
    image: &str,
    session_id: &str,
    hardening: &Hardening,
    workspace: &Workspace,
    owner: &Owner,
) -> ContainerCreateBody {
    let labels = HashMap::from([
        (MANAGED_LABEL.to_string(), "1".to_string()),
        (SESSION_LABEL.to_string(), session_id.to_string()),
        (OWNER_LABEL.to_string(), owner.label()),
    ]);
    let mut tmpfs = HashMap::new();
    if hardening.read_only_root {
        tmpfs.insert(
            "/tmp".to_string(),
            format!("rw,exec,nosuid,nodev,size={}", hardening.tmp_bytes),
        );
    }
    let mount = match workspace {
        // A volume rather than a tmpfs: Docker's archive API (copying files in and out)
        // cannot reach a tmpfs. It starts as the image's /workspace (owned by uid 1000).
        Workspace::Empty | Workspace::Copy(_) => Mount {
            target: Some(WORKSPACE.to_string()),
            typ: Some(MountType::VOLUME),
            ..Default::default()
        },
        Workspace::ReadWrite(dir) | Workspace::ReadOnly(dir) => Mount {
            target: Some(WORKSPACE.to_string()),
            source: Some(dir.display().to_string()),
            typ: Some(MountType::BIND),
            read_only: Some(matches!(workspace, Workspace::ReadOnly(_))),
            ..Default::default()
        },
    };
    let host_config = HostConfig {
        network_mode: Some(if hardening.network { "bridge" } else { "none" }.to_string()),
        readonly_rootfs: Some(hardening.read_only_root),
        tmpfs: Some(tmpfs),
        mounts: Some(vec![mount]),
        cap_drop: hardening.drop_capabilities.then(|| vec!["ALL".to_string()]),
        security_opt: hardening
            .no_new_privileges
            .then(|| vec!["no-new-privileges".to_string()]),
        pids_limit: hardening.pids_limit,
        memory: hardening.memory_bytes,
        // Equal to the memory limit: no swap on top of it.
        memory_swap: hardening.memory_bytes,
        nano_cpus: hardening.cpus.map(|c| (c * 1e9) as i64),
        init: Some(hardening.init),
        ..Default::default()
    };
    ContainerCreateBody {
        image: Some(image.to_string()),
        user: Some(hardening.user.clone()),
        working_dir: Some(WORKSPACE.to_string()),
        attach_stdin: Some(true),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        open_stdin: Some(true),
        stdin_once: Some(true),
        tty: Some(false),
        labels: Some(labels),
        host_config: Some(host_config),
        ..Default::default()
    }
}

/// Creates, attaches to and starts a session container. Returns its id and the
/// runner's streams.
pub(crate) async fn start_container(
    docker: &Docker,
    image: &str,
    session_id: &str,
    hardening: &Hardening,
    workspace: &Workspace,
) -> Result<(String, Transport)> {
    let spec = container_spec(image, session_id, hardening, workspace, &Owner::current());
    let name = format!("oi-{session_id}");
    let options = CreateContainerOptionsBuilder::default().name(&name).build();
    let created = match docker.create_container(Some(options), spec).await {
        Ok(created) => created,
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => {
            return Err(SandboxError::ImageMissing {
                tag: image.to_string(),
            })
        }
        Err(err) => return Err(SandboxError::docker("container create")(err)),
    };
    let id = created.id;
    if let Workspace::Copy(dir) = workspace {
        // Before the runner starts: the first block sees the whole copy.
        if let Err(err) = files::upload_contents(docker, &id, dir, WORKSPACE, &hardening.user).await
        {
            let _ = remove(docker, &id).await;
            return Err(err);
        }
    }
    let attached = async {
        let attach = AttachContainerOptionsBuilder::default()
            .stdin(true)
            .stdout(true)
            .stderr(true)
            .stream(true)
            .build();
        let attached = docker
            .attach_container(&id, Some(attach))
            .await
            .map_err(SandboxError::docker("container attach"))?;
        docker
            .start_container(&id, None)
            .await
            .map_err(SandboxError::docker("container start"))?;
        Ok::<_, SandboxError>(attached)
    }
    .await;
    let attached = match attached {
        Ok(attached) => attached,
        Err(err) => {
            let _ = remove(docker, &id).await;
            return Err(err);
        }
    };
    let diagnostics = Diagnostics::default();
    let sink = diagnostics.clone();
    let output = attached
        .output
        .filter_map(move |item| {
            let item = match item {
                Ok(LogOutput::StdOut { message }) => Some(Ok(message)),
                Ok(LogOutput::StdErr { message }) => {
                    sink.push(&message);
                    None
                }
                Ok(_) => None,
                Err(err) => Some(Err(std::io::Error::other(err))),
            };
            futures::future::ready(item)
        })
        .boxed();
    Ok((
        id,
        Transport {
            output,
            input: attached.input,
            diagnostics,
        },
    ))
}

/// The user a container's processes run as (`uid:gid`; the image's 1000 if unset).
pub(crate) async fn user_of(docker: &Docker, id: &str) -> Result<String> {
    let info = docker
        .inspect_container(
            id,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
        .map_err(SandboxError::docker("container inspect"))?;
    Ok(info
        .config
        .and_then(|c| c.user)
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "1000:1000".into()))
}

/// Removes a container, killing it if it runs. A container already gone is fine.
pub async fn remove(docker: &Docker, id: &str) -> Result<()> {
    let options = RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    match docker.remove_container(id, Some(options)).await {
        Ok(()) => Ok(()),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(()),
        // 409: removal already in progress (a concurrent close or sweep).
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 409, ..
        }) => Ok(()),
        Err(err) => Err(SandboxError::docker("container remove")(err)),
    }
}

/// Why a container stopped, in words, when it did (for "state was lost" notices).
pub async fn exit_reason(docker: &Docker, id: &str) -> Option<String> {
    let info = docker.inspect_container(id, None).await.ok()?;
    let state = info.state?;
    if state.running == Some(true) {
        return None;
    }
    if state.oom_killed == Some(true) {
        return Some("the container ran out of memory and was killed".into());
    }
    Some(match state.exit_code {
        Some(137) => "the container was killed (exit 137)".into(),
        Some(code) => format!("the container exited with code {code}"),
        None => "the container stopped".into(),
    })
}

/// One of oi's sandbox containers, as `oi sandbox ls` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SandboxInfo {
    pub id: String,
    pub name: String,
    pub session: String,
    pub image: String,
    pub state: String,
    pub status: String,
    pub created: i64,
    /// The oi process that made it.
    pub owner_pid: Option<u32>,
    /// Whether that process is still running (on this machine).
    pub owner_alive: bool,
}

/// oi's containers, running or not, newest first.
pub async fn list(docker: &Docker) -> Result<Vec<SandboxInfo>> {
    let filters: HashMap<&str, Vec<&str>> = HashMap::from([("label", vec![MANAGED_LABEL])]);
    let options = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    let containers = docker
        .list_containers(Some(options))
        .await
        .map_err(SandboxError::docker("container list"))?;
    let mut out: Vec<SandboxInfo> = containers
        .into_iter()
        .map(|c| {
            let labels = c.labels.unwrap_or_default();
            let owner = labels.get(OWNER_LABEL).and_then(|l| Owner::parse(l));
            let owner_alive = owner.as_ref().is_some_and(|o| o.is_alive());
            SandboxInfo {
                id: c.id.unwrap_or_default(),
                name: c
                    .names
                    .and_then(|n| n.into_iter().next())
                    .unwrap_or_default()
                    .trim_start_matches('/')
                    .to_string(),
                session: labels.get(SESSION_LABEL).cloned().unwrap_or_default(),
                image: c.image.unwrap_or_default(),
                state: c.state.map(|s| s.to_string()).unwrap_or_default(),
                status: c.status.unwrap_or_default(),
                created: c.created.unwrap_or_default(),
                owner_pid: owner.map(|o| o.pid),
                owner_alive,
            }
        })
        .collect();
    out.sort_by_key(|c| std::cmp::Reverse(c.created));
    Ok(out)
}

/// Removes the containers whose oi process is gone (crashed or killed). Returns them.
pub async fn sweep(docker: &Docker) -> Result<Vec<SandboxInfo>> {
    let orphans: Vec<SandboxInfo> = list(docker)
        .await?
        .into_iter()
        .filter(|c| !c.owner_alive)
        .collect();
    let removals = orphans.iter().map(|c| remove(docker, &c.id));
    for result in futures::future::join_all(removals).await {
        result?;
    }
    Ok(orphans)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_is_hardened_by_default() {
        let spec = container_spec(
            "img",
            "s1",
            &Hardening::default(),
            &Workspace::Empty,
            &Owner {
                pid: 1,
                start_time: 2,
            },
        );
        let host = spec.host_config.unwrap();
        assert_eq!(host.network_mode.as_deref(), Some("none"));
        assert_eq!(host.readonly_rootfs, Some(true));
        assert_eq!(host.cap_drop, Some(vec!["ALL".to_string()]));
        assert_eq!(
            host.security_opt,
            Some(vec!["no-new-privileges".to_string()])
        );
        assert_eq!(host.init, Some(true));
        assert!(host.pids_limit.is_some() && host.memory.is_some() && host.nano_cpus.is_some());
        let mounts = host.mounts.unwrap();
        assert!(host.binds.is_none());
        assert_eq!(mounts.len(), 1, "only the workspace");
        assert_eq!(
            mounts[0].typ,
            Some(MountType::VOLUME),
            "nothing of the host is mounted"
        );
        assert_eq!(mounts[0].target.as_deref(), Some("/workspace"));
        let mounted = container_spec(
            "img",
            "s1",
            &Hardening::default(),
            &Workspace::ReadOnly("/home/me/project".into()),
            &Owner::current(),
        );
        let mount = &mounted.host_config.unwrap().mounts.unwrap()[0];
        assert_eq!(mount.source.as_deref(), Some("/home/me/project"));
        assert_eq!(
            (mount.typ, mount.read_only),
            (Some(MountType::BIND), Some(true))
        );
        assert_eq!(spec.user.as_deref(), Some("1000:1000"));
        assert_eq!(spec.stdin_once, Some(true));
        let labels = spec.labels.unwrap();
        assert_eq!(labels[OWNER_LABEL], "1:2");
        assert_eq!(labels[SESSION_LABEL], "s1");
    }

    #[test]
    fn owner_of_this_process_is_alive_and_a_made_up_one_is_not() {
        assert!(Owner::current().is_alive());
        let gone = Owner {
            pid: std::process::id(),
            start_time: 1,
        };
        assert!(!gone.is_alive());
        assert_eq!(
            Owner::parse("12:34"),
            Some(Owner {
                pid: 12,
                start_time: 34
            })
        );
    }
}
