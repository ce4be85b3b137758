//! The Docker backend: connecting to the daemon, creating a session's hardened
//! container with the runner attached over stdin/stdout, copying archives in and out
//! through Docker's archive API, removing containers, and finding the containers of
//! sessions whose oi process is gone. Building images is [`super::image`]'s part of
//! this backend ([`DockerBackend`] is also its [`ImageStore`]).
//!
//! A session container cleans up after itself, however oi ends: its stdin is opened
//! once (`StdinOnce`), so when oi's attach connection closes — even because oi was
//! killed — the runner reads end-of-file, stops what runs and exits; the container is
//! created with `AutoRemove`, so Docker then removes it (and its private workspace).
//! A sweep removes only what is certainly abandoned ([`SandboxInfo::is_abandoned`]):
//! stopped session containers, and running ones whose owner is provably gone (a
//! process of this machine and PID namespace that no longer exists, see
//! [`super::owner`]). Sessions of an oi elsewhere (another host sharing the daemon,
//! another PID namespace) are never touched while they run.

use std::collections::HashMap;
use std::fs::File;

use bollard::container::LogOutput;
use bollard::models::{
    ContainerCreateBody, HostConfig, HostConfigLogConfig, Mount, MountType, MountVolumeOptions,
    MountVolumeOptionsDriverConfig,
};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, DownloadFromContainerOptions,
    ListContainersOptionsBuilder, RemoveContainerOptionsBuilder, UploadToContainerOptions,
};
use bollard::Docker;
use futures::future::BoxFuture;
use futures::StreamExt;

use super::backend::{ImageStore, SandboxBackend, SandboxInfo, SandboxSpec, Started};
use super::connection::{Diagnostics, Transport};
use super::error::{Result, SandboxError, Unreachable};
use super::files::{self, WORKSPACE};
use super::image::{self, BuildProgress, ImageInfo};
use super::owner::{Owner, OwnerState};
use super::settings::{Hardening, SandboxConfig, Workspace};
use crate::core::error_chain::error_chain;

/// Label on every session container oi creates (and never on an image: containers of
/// other images, such as the builds of a project image `FROM` oi's, inherit an image's
/// labels and must not look like sessions).
pub const MANAGED_LABEL: &str = "oi.managed";
/// Label carrying the session id; the mark of a session container.
pub const SESSION_LABEL: &str = "oi.session";
/// Label carrying the owning process (`pid:start_time`).
pub const OWNER_LABEL: &str = "oi.owner";
/// Label carrying where the owning process runs (see [`super::owner::host_identity`]): a pid means
/// something only on the same machine and in the same PID namespace.
pub const OWNER_HOST_LABEL: &str = "oi.owner.host";

const DEFAULT_ENDPOINT: &str = "unix:///var/run/docker.sock";

/// Connects to the daemon and agrees on an API version both speak (Debian's engine
/// speaks 1.41, older than bollard's default).
pub async fn connect(endpoint: Option<&str>) -> Result<Docker> {
    let endpoint = endpoint
        .filter(|e| !e.is_empty())
        .unwrap_or(DEFAULT_ENDPOINT)
        .to_string();
    let unavailable = |detail: String, cause: Unreachable| SandboxError::DockerUnavailable {
        endpoint: endpoint.clone(),
        detail,
        cause,
    };
    let client = if let Some(path) = endpoint.strip_prefix("unix://") {
        if !std::path::Path::new(path).exists() {
            return Err(unavailable(
                "the socket does not exist".into(),
                Unreachable::NotRunning,
            ));
        }
        Docker::connect_with_socket(path, 120, bollard::API_DEFAULT_VERSION)
    } else if endpoint.starts_with("tcp://") || endpoint.starts_with("http://") {
        Docker::connect_with_http(&endpoint, 120, bollard::API_DEFAULT_VERSION)
    } else {
        Docker::connect_with_socket(&endpoint, 120, bollard::API_DEFAULT_VERSION)
    }
    .map_err(|e| unavailable(e.to_string(), Unreachable::NotRunning))?;
    match client.negotiate_version().await {
        Ok(client) => Ok(client),
        Err(err) => {
            let detail = error_chain(&err);
            let cause = if detail.to_lowercase().contains("permission denied") {
                Unreachable::PermissionDenied
            } else {
                Unreachable::NotRunning
            };
            Err(unavailable(detail, cause))
        }
    }
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

/// Creates, attaches to and starts a session container for `spec`. Returns its id
/// and the runner's streams.
async fn start_container(docker: &Docker, spec: SandboxSpec<'_>) -> Result<Started> {
    let image = spec.image.ok_or(SandboxError::MissingSetting {
        backend: "docker",
        setting: "an image",
    })?;
    let SandboxConfig {
        hardening,
        workspace,
        ..
    } = spec.config;
    let create = container_spec(image, spec.session, hardening, workspace, &Owner::current());
    let options = CreateContainerOptionsBuilder::default()
        .name(spec.name)
        .build();
    let created = match docker.create_container(Some(options), create).await {
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
    Ok(Started {
        id,
        transport: Transport {
            output,
            input: attached.input,
            diagnostics,
        },
    })
}

/// Copies the host folder of a `copy` workspace into the session's private workspace.
async fn copy_workspace(
    docker: &Docker,
    id: &str,
    dir: &std::path::Path,
    hardening: &Hardening,
) -> Result<()> {
    let (uid, gid) = files::parse_user(&hardening.user);
    let source = dir.to_path_buf();
    let archive = tokio::task::spawn_blocking(move || files::pack(&source, ".", uid, gid))
        .await
        .map_err(|e| SandboxError::Files {
            message: format!("packing failed: {e}"),
        })??;
    match put_archive(docker, id, WORKSPACE, archive).await {
        Err(SandboxError::Files { message }) if message.contains("no space left") => {
            Err(SandboxError::WorkspaceTooLarge {
                dir: dir.to_path_buf(),
                limit: hardening.workspace_bytes,
            })
        }
        other => other.map(|_| ()),
    }
}

/// Unpacks a tar archive into the container folder `dest` (as the daemon does: as
/// root, keeping the entries' owners and modes). Returns the bytes sent.
pub async fn put_archive(
    docker: &Docker,
    container: &str,
    dest: &str,
    archive: File,
) -> Result<u64> {
    let size = archive.metadata().map(|m| m.len()).unwrap_or(0);
    let body =
        tokio_util::io::ReaderStream::with_capacity(tokio::fs::File::from_std(archive), 64 << 10);
    let options = UploadToContainerOptions {
        path: dest.to_string(),
        ..Default::default()
    };
    docker
        .upload_to_container(container, Some(options), bollard::body_try_stream(body))
        .await
        .map_err(|e| match e {
            bollard::errors::Error::DockerResponseServerError { message, .. } => {
                SandboxError::Files {
                    message: format!("copying into {dest} failed: {message}"),
                }
            }
            other => SandboxError::docker("copy into the sandbox")(other),
        })?;
    Ok(size)
}

/// The container's file or folder `source` as a tar archive in a temporary file, at
/// most `limit` bytes (see [`files::spool`]).
pub async fn get_archive(
    docker: &Docker,
    container: &str,
    source: &str,
    limit: u64,
) -> Result<File> {
    let options = DownloadFromContainerOptions {
        path: source.to_string(),
    };
    let chunks = docker
        .download_from_container(container, Some(options))
        .map(|chunk| {
            chunk.map_err(|e| match e {
                bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                } => SandboxError::Files {
                    message: format!("{source} does not exist in the sandbox"),
                },
                bollard::errors::Error::DockerResponseServerError { message, .. } => {
                    SandboxError::Files {
                        message: format!("copying {source} out failed: {message}"),
                    }
                }
                other => SandboxError::docker("copy out of the sandbox")(other),
            })
        });
    files::spool(chunks, limit, source).await
}

/// The user a container's processes run as (`uid:gid`; the image's 1000 if unset).
pub async fn user_of(docker: &Docker, id: &str) -> Result<String> {
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
        // 409: removal already in progress (AutoRemove after the runner exited, a
        // concurrent close or sweep): wait for it, so that "removed" means gone.
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 409, ..
        }) => {
            until_gone(docker, id).await;
            Ok(())
        }
        Err(err) => Err(SandboxError::docker("container remove")(err)),
    }
}

/// Waits (a few seconds at most) until Docker no longer knows the container.
async fn until_gone(docker: &Docker, id: &str) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        if docker.inspect_container(id, None).await.is_err() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
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

/// The Docker backend: sessions in hardened containers of one daemon.
#[derive(Debug, Clone)]
pub struct DockerBackend {
    client: Docker,
}

impl DockerBackend {
    /// Connects to the daemon at `endpoint` (`None`: the local socket).
    pub async fn connect(endpoint: Option<&str>) -> Result<DockerBackend> {
        Ok(DockerBackend {
            client: connect(endpoint).await?,
        })
    }
}

impl SandboxBackend for DockerBackend {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn is_sandboxed(&self) -> bool {
        true
    }

    fn start<'a>(&'a self, spec: SandboxSpec<'a>) -> BoxFuture<'a, Result<Started>> {
        Box::pin(start_container(&self.client, spec))
    }

    fn exit_reason<'a>(&'a self, sandbox: &'a str) -> BoxFuture<'a, Option<String>> {
        Box::pin(exit_reason(&self.client, sandbox))
    }

    fn remove<'a>(&'a self, sandbox: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(remove(&self.client, sandbox))
    }

    fn remove_in_background(&self, sandbox: &str) {
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let (client, id) = (self.client.clone(), sandbox.to_string());
            handle.spawn(async move {
                let _ = remove(&client, &id).await;
            });
        }
    }

    fn put_archive<'a>(
        &'a self,
        sandbox: &'a str,
        dest: &'a str,
        archive: File,
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(put_archive(&self.client, sandbox, dest, archive))
    }

    fn get_archive<'a>(
        &'a self,
        sandbox: &'a str,
        source: &'a str,
        limit: u64,
    ) -> BoxFuture<'a, Result<File>> {
        Box::pin(get_archive(&self.client, sandbox, source, limit))
    }

    fn user<'a>(&'a self, sandbox: &'a str) -> BoxFuture<'a, Result<String>> {
        Box::pin(user_of(&self.client, sandbox))
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<SandboxInfo>>> {
        Box::pin(list(&self.client))
    }

    fn images(&self) -> Option<&dyn ImageStore> {
        Some(self)
    }

    fn docker(&self) -> Option<&Docker> {
        Some(&self.client)
    }
}

impl ImageStore for DockerBackend {
    fn ensure<'a>(
        &'a self,
        config: &'a SandboxConfig,
        force: bool,
        progress: &'a mut (dyn FnMut(BuildProgress) + Send),
    ) -> BoxFuture<'a, Result<String>> {
        Box::pin(image::ensure_for(&self.client, config, force, progress))
    }

    fn own_tag<'a>(&'a self, base: Option<&'a str>) -> BoxFuture<'a, String> {
        Box::pin(async move { image::image_tag(&image::resolve_base(&self.client, base).await) })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<ImageInfo>>> {
        Box::pin(image::list(&self.client))
    }

    fn remove<'a>(&'a self, tag: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(image::remove(&self.client, tag))
    }
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
}
