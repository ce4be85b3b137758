//! The Docker side of a sandbox: connecting to the daemon, creating a session's
//! hardened container with the runner attached over stdin/stdout, removing it, and
//! finding the containers of sessions whose oi process is gone.
//!
//! A session container cleans up after itself, however oi ends: its stdin is opened
//! once (`StdinOnce`), so when oi's attach connection closes — even because oi was
//! killed — the runner reads end-of-file, stops what runs and exits; the container is
//! created with `AutoRemove`, so Docker then removes it (and its private workspace).
//! `sweep` removes only what is certainly abandoned: stopped session containers, and
//! running ones whose owner is provably gone (a process of this machine and PID
//! namespace that no longer exists). Sessions of an oi elsewhere (another host sharing
//! the daemon, another PID namespace) are never touched while they run.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use bollard::container::LogOutput;
use bollard::models::{
    ContainerCreateBody, HostConfig, HostConfigLogConfig, Mount, MountType, MountVolumeOptions,
    MountVolumeOptionsDriverConfig,
};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder,
};
use bollard::Docker;
use futures::StreamExt;
use sha2::{Digest, Sha256};

use super::connection::{Diagnostics, Transport};
use super::error::{Result, SandboxError};
use super::files::{self, WORKSPACE};
use super::settings::{Hardening, Owner, OwnerState, Workspace};

/// Label on every session container oi creates (and never on an image: containers of
/// other images, such as the builds of a project image `FROM` oi's, inherit an image's
/// labels and must not look like sessions).
pub const MANAGED_LABEL: &str = "oi.managed";
/// Label carrying the session id; the mark of a session container.
pub const SESSION_LABEL: &str = "oi.session";
/// Label carrying the owning process (`pid:start_time`).
pub const OWNER_LABEL: &str = "oi.owner";
/// Label carrying where the owning process runs (see [`host_identity`]): a pid means
/// something only on the same machine and in the same PID namespace.
pub const OWNER_HOST_LABEL: &str = "oi.owner.host";

/// How long a session container may stay created-but-not-started before a sweep by an
/// oi elsewhere counts it as abandoned (creating and starting take seconds).
const STALE_CREATED_SECS: i64 = 24 * 3600;

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
            host: host_identity().to_string(),
        }
    }

    fn label(&self) -> String {
        format!("{}:{}", self.pid, self.start_time)
    }

    fn parse(label: &str, host: Option<&str>) -> Option<Owner> {
        let (pid, start) = label.split_once(':')?;
        Some(Owner {
            pid: pid.parse().ok()?,
            start_time: start.parse().ok()?,
            host: host.unwrap_or_default().to_string(),
        })
    }

    /// Whether the owning process runs, as far as this process can know: only a
    /// process of this machine and PID namespace can be looked up by its pid.
    pub fn state(&self) -> OwnerState {
        if self.host != host_identity() {
            return OwnerState::Elsewhere;
        }
        if process_start_time(self.pid).is_some_and(|t| t == self.start_time) {
            OwnerState::Alive
        } else {
            OwnerState::Gone
        }
    }

    /// Whether the owning process still runs (false when it cannot be known).
    pub fn is_alive(&self) -> bool {
        self.state() == OwnerState::Alive
    }
}

/// Where this process runs, as far as pids go: the kernel's boot id, this PID
/// namespace and this user, hashed. Two oi processes with the same identity see each
/// other's pids; with different ones (another host on a shared daemon, a dev container,
/// a CI job, another user, whose processes `/proc` may hide with `hidepid`) neither may
/// judge the other's liveness. When either fact is unreadable the identity
/// is unique to this process, so that nothing of anyone else's is ever swept.
pub fn host_identity() -> &'static str {
    static IDENTITY: OnceLock<String> = OnceLock::new();
    IDENTITY.get_or_init(|| {
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok();
        let pidns = std::fs::read_link("/proc/self/ns/pid").ok();
        let mut hash = Sha256::new();
        match (boot, pidns) {
            (Some(boot), Some(ns)) => {
                hash.update(boot.trim().as_bytes());
                hash.update(b"\n");
                hash.update(ns.to_string_lossy().as_bytes());
                hash.update(b"\n");
                hash.update(rustix::process::geteuid().as_raw().to_string().as_bytes());
            }
            _ => hash.update(format!("{}:{}", std::process::id(), new_session_id()).as_bytes()),
        }
        hash.finalize()
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect()
    })
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
        (OWNER_HOST_LABEL.to_string(), owner.host.clone()),
    ]);
    let mut tmpfs = HashMap::new();
    if hardening.read_only_root {
        tmpfs.insert(
            "/tmp".to_string(),
            format!("rw,exec,nosuid,nodev,size={}", hardening.tmp_bytes),
        );
    }
    let mount = match workspace {
        Workspace::Empty | Workspace::Copy(_) => private_workspace(hardening),
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
        // Not Docker's init: the image's tini is PID 1, execute-only and so non-dumpable.
        // Docker's runs readable as the sandbox's user, and code could write into its
        // memory (/proc/1/mem) or onto the runner's stream (/proc/1/fd/1).
        init: Some(false),
        // Gone with its runner, however oi ended (see the module's docs).
        auto_remove: Some(true),
        // Output travels over the attach stream only: a log on the daemon's disk would
        // copy everything code prints (without bound) and keep it after the session.
        log_config: Some(HostConfigLogConfig {
            typ: Some("none".to_string()),
            config: None,
        }),
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

/// The workspace of `none` and `copy` sessions: a volume of the daemon's local driver
/// backed by a tmpfs of bounded size, owned by the sandbox's user. A volume rather than
/// a container tmpfs so that Docker's archive API (copying files in and out) reaches
/// it; a tmpfs so that code filling it gets "no space left on device" instead of
/// filling the host's disk (its pages count against the container's memory limit).
fn private_workspace(hardening: &Hardening) -> Mount {
    let (uid, gid) = hardening
        .user
        .split_once(':')
        .unwrap_or((hardening.user.as_str(), hardening.user.as_str()));
    let options = format!(
        "size={},uid={uid},gid={gid},mode=0755,nosuid,nodev",
        hardening.workspace_bytes
    );
    Mount {
        target: Some(WORKSPACE.to_string()),
        typ: Some(MountType::VOLUME),
        volume_options: Some(MountVolumeOptions {
            driver_config: Some(MountVolumeOptionsDriverConfig {
                name: Some("local".to_string()),
                options: Some(HashMap::from([
                    ("type".to_string(), "tmpfs".to_string()),
                    ("device".to_string(), "tmpfs".to_string()),
                    ("o".to_string(), options),
                ])),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Creates, attaches to and starts a session container. Returns its id and the
/// runner's streams.
pub(crate) async fn start_container(
    docker: &Docker,
    image: &str,
    session_id: &str,
    name: &str,
    hardening: &Hardening,
    workspace: &Workspace,
) -> Result<(String, Transport)> {
    let spec = container_spec(image, session_id, hardening, workspace, &Owner::current());
    let options = CreateContainerOptionsBuilder::default().name(name).build();
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
    if let Workspace::Copy(dir) = workspace {
        // After the start, once the workspace's tmpfs is mounted, and before the session
        // is handed out: the first block sees the whole copy.
        if let Err(err) = copy_workspace(docker, &id, dir, hardening).await {
            let _ = remove(docker, &id).await;
            return Err(err);
        }
    }
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

/// Copies the host folder of a `copy` workspace into the session's private workspace.
async fn copy_workspace(
    docker: &Docker,
    id: &str,
    dir: &std::path::Path,
    hardening: &Hardening,
) -> Result<()> {
    match files::upload_contents(docker, id, dir, WORKSPACE, &hardening.user).await {
        Err(SandboxError::Files { message }) if message.contains("no space left") => {
            Err(SandboxError::Files {
                message: format!(
                    "{} does not fit the sandbox's private workspace ({}): raise the limit \
                     (--workspace-size, or workspace_size in [sandbox]) or use --workspace ro",
                    dir.display(),
                    super::settings::bytes(hardening.workspace_bytes)
                ),
            })
        }
        other => other.map(|_| ()),
    }
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
    /// Whether that process is known to run (it is on this machine and in this PID
    /// namespace, and alive).
    pub owner_alive: bool,
    /// `alive`, `gone`, or `elsewhere` (another host or PID namespace: unknowable).
    pub owner_state: OwnerState,
}

impl SandboxInfo {
    /// Whether nobody can be using it any more: stopped, or its owner is provably
    /// gone. A running session of an oi elsewhere is never abandoned as far as this
    /// process can tell (it stops by itself when that oi goes, see the module's docs).
    pub fn is_abandoned(&self, now: i64) -> bool {
        match self.state.as_str() {
            "exited" | "dead" => true,
            // Someone is removing it already.
            "removing" => false,
            "created" => match self.owner_state {
                OwnerState::Gone => true,
                OwnerState::Alive => false,
                OwnerState::Elsewhere => now - self.created > STALE_CREATED_SECS,
            },
            // running, paused, restarting
            _ => self.owner_state == OwnerState::Gone,
        }
    }
}

/// oi's session containers, running or not, newest first.
pub async fn list(docker: &Docker) -> Result<Vec<SandboxInfo>> {
    // The session label, set only on the containers oi creates for sessions: build
    // containers of images made FROM oi's own never carry it.
    let filters: HashMap<&str, Vec<&str>> = HashMap::from([("label", vec![SESSION_LABEL])]);
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
            let owner = labels
                .get(OWNER_LABEL)
                .and_then(|l| Owner::parse(l, labels.get(OWNER_HOST_LABEL).map(String::as_str)));
            // A container without a readable owner is nobody's we can judge.
            let owner_state = owner.as_ref().map_or(OwnerState::Elsewhere, Owner::state);
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
                owner_alive: owner_state == OwnerState::Alive,
                owner_state,
            }
        })
        .collect();
    out.sort_by_key(|c| std::cmp::Reverse(c.created));
    Ok(out)
}

/// Removes the session containers that are certainly abandoned (see
/// [`SandboxInfo::is_abandoned`]). Returns them.
pub async fn sweep(docker: &Docker) -> Result<Vec<SandboxInfo>> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let orphans: Vec<SandboxInfo> = list(docker)
        .await?
        .into_iter()
        .filter(|c| c.is_abandoned(now))
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
                host: "h".into(),
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
        assert_eq!(host.init, Some(false), "the image's own init, not Docker's");
        assert!(host.pids_limit.is_some() && host.memory.is_some() && host.nano_cpus.is_some());
        let mounts = host.mounts.unwrap();
        assert!(host.binds.is_none());
        assert_eq!(mounts.len(), 1, "only the workspace");
        assert_eq!(
            mounts[0].typ,
            Some(MountType::VOLUME),
            "nothing of the host is mounted"
        );
        let driver = mounts[0]
            .volume_options
            .as_ref()
            .and_then(|v| v.driver_config.as_ref())
            .and_then(|d| d.options.as_ref())
            .expect("a bounded private workspace");
        assert_eq!(driver["type"], "tmpfs");
        assert_eq!(
            driver["o"],
            format!(
                "size={},uid=1000,gid=1000,mode=0755,nosuid,nodev",
                1u64 << 30
            )
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
        assert_eq!(labels[OWNER_HOST_LABEL], "h");
        assert_eq!(host.auto_remove, Some(true), "gone with its runner");
        assert_eq!(
            host.log_config.and_then(|l| l.typ).as_deref(),
            Some("none"),
            "nothing code prints is kept on the daemon's disk"
        );
        assert_eq!(labels[SESSION_LABEL], "s1");
    }

    #[test]
    fn owner_of_this_process_is_alive_and_a_made_up_one_is_not() {
        assert_eq!(Owner::current().state(), OwnerState::Alive);
        let gone = Owner {
            start_time: 1,
            ..Owner::current()
        };
        assert_eq!(gone.state(), OwnerState::Gone);
        assert_eq!(
            Owner::parse("12:34", Some("h")),
            Some(Owner {
                pid: 12,
                start_time: 34,
                host: "h".into(),
            })
        );
    }

    #[test]
    fn d6_an_owner_in_another_pid_namespace_is_never_judged_from_here() {
        // The same pid and start time as a live process here, but from elsewhere: a
        // pid means nothing across hosts or PID namespaces.
        let elsewhere = Owner {
            host: "another-host".into(),
            ..Owner::current()
        };
        assert_eq!(elsewhere.state(), OwnerState::Elsewhere);
        let gone_elsewhere = Owner {
            pid: u32::MAX,
            host: "another-host".into(),
            ..Owner::current()
        };
        assert_eq!(gone_elsewhere.state(), OwnerState::Elsewhere);
        let info = |state: &str, owner_state, created| SandboxInfo {
            id: "x".into(),
            name: "oi-x".into(),
            session: "x".into(),
            image: "i".into(),
            state: state.into(),
            status: String::new(),
            created,
            owner_pid: Some(1),
            owner_alive: owner_state == OwnerState::Alive,
            owner_state,
        };
        let now = 1_000_000;
        assert!(!info("running", OwnerState::Elsewhere, 0).is_abandoned(now));
        assert!(!info("running", OwnerState::Alive, 0).is_abandoned(now));
        assert!(info("running", OwnerState::Gone, 0).is_abandoned(now));
        assert!(info("exited", OwnerState::Elsewhere, 0).is_abandoned(now));
        assert!(!info("created", OwnerState::Elsewhere, now - 60).is_abandoned(now));
        assert!(info("created", OwnerState::Elsewhere, 0).is_abandoned(now));
        assert!(!info("removing", OwnerState::Gone, 0).is_abandoned(now));
    }
}
