//! A sandbox session: one runner (in its own container, or on the host with
//! `--unsafe`) that keeps interpreter state between blocks, from `open` to `close`.
//!
//! [`Engine`] holds what sessions share (the Docker client and the configuration);
//! [`Session`] runs blocks. If a session's container dies, the next block starts a new
//! one and says, as a notice, that the state was lost.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::Docker;
use tokio::process::Child;
use tokio_util::sync::CancellationToken;

use super::connection::{Escalation, RunnerConnection, Transport};
use super::docker::{self, SandboxInfo};
use super::error::{Result, SandboxError};
use super::execution::{ExecEvent, ExecRequest, Execution};
use super::files;
use super::host;
use super::image::{self, BuildProgress};
use super::settings::{Backend, Hardening, SandboxConfig};

/// What an archive adds to the files it carries (headers, padding), allowed on top of a
/// copy's limit.
const COPY_SLACK: u64 = 16 << 20;

/// What sessions share: the configuration and, for the Docker backend, the client.
///
/// # Examples
///
/// ```no_run
/// use oi::core::code_interpreter::{Engine, ExecRequest, SandboxConfig};
/// use tokio_util::sync::CancellationToken;
///
/// # async fn run() -> Result<(), oi::core::code_interpreter::SandboxError> {
/// let mut engine = Engine::connect(SandboxConfig::default()).await?;
/// engine.ensure_image(false, &mut |_progress| {}).await?;
/// let mut session = engine.open().await?;
/// let cancel = CancellationToken::new();
/// session.execute(ExecRequest::new("python", "x = 41"), &cancel).await?.collect_output().await;
/// let out = session.execute(ExecRequest::new("python", "print(x + 1)"), &cancel).await?.collect_output().await;
/// assert_eq!(out.stdout, "42\n");
/// session.close().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Engine {
    config: SandboxConfig,
    docker: Option<Docker>,
    /// Sessions started ahead (see [`Engine::start_pool`]); `None` in sessions' own
    /// copies of the engine.
    pool: Option<Arc<Pool>>,
}

/// Sessions started ahead of need. A session leaves the pool for good: a fresh one
/// replaces it, and none is ever handed out twice.
#[derive(Default)]
struct Pool {
    ready: Mutex<VecDeque<Session>>,
    /// How many it keeps ready.
    target: AtomicUsize,
    /// How many are starting now.
    filling: AtomicUsize,
    /// The last reason a start failed, for `pool_error`.
    last_error: Mutex<Option<String>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Connects to Docker (unless the backend is the host) and checks that it answers.
    pub async fn connect(config: SandboxConfig) -> Result<Engine> {
        let docker = match config.backend {
            Backend::Docker => Some(docker::connect(config.docker_host.as_deref()).await?),
            Backend::Host => None,
        };
        Ok(Engine {
            config,
            docker,
            pool: Some(Arc::default()),
        })
    }

    /// Keeps `size` sessions started ahead, so that [`Engine::open`] hands one out in
    /// about a millisecond; it starts them in the background now and replaces each one
    /// taken. 0 turns the pool off. Call [`Engine::shutdown_pool`] when done: pooled
    /// containers of a process that dies anyway stop by themselves and are swept by the
    /// next start.
    pub fn start_pool(&self, size: usize) {
        if let Some(pool) = &self.pool {
            pool.target.store(size, Ordering::SeqCst);
            self.refill();
        }
    }

    /// How many sessions are ready in the pool.
    pub fn pooled(&self) -> usize {
        self.pool
            .as_ref()
            .map_or(0, |p| p.ready.lock().unwrap().len())
    }

    /// The ids of the sessions ready in the pool.
    pub fn pooled_sessions(&self) -> Vec<String> {
        self.pool.as_ref().map_or(Vec::new(), |p| {
            p.ready
                .lock()
                .unwrap()
                .iter()
                .map(|s| s.id().to_string())
                .collect()
        })
    }

    /// Why the pool last failed to start a session, if it did.
    pub fn pool_error(&self) -> Option<String> {
        self.pool
            .as_ref()
            .and_then(|p| p.last_error.lock().unwrap().clone())
    }

    /// Stops refilling the pool and removes its containers.
    pub async fn shutdown_pool(&self) {
        let Some(pool) = &self.pool else {
            return;
        };
        pool.target.store(0, Ordering::SeqCst);
        let sessions: Vec<Session> = pool.ready.lock().unwrap().drain(..).collect();
        futures::future::join_all(sessions.into_iter().map(Session::close)).await;
    }

    /// Starts sessions until the pool holds its target.
    fn refill(&self) {
        let Some(pool) = self.pool.clone() else {
            return;
        };
        loop {
            let have = pool.ready.lock().unwrap().len() + pool.filling.load(Ordering::SeqCst);
            if have >= pool.target.load(Ordering::SeqCst) {
                return;
            }
            pool.filling.fetch_add(1, Ordering::SeqCst);
            let engine = self.without_pool();
            let pool = pool.clone();
            tokio::spawn(async move {
                let opened = engine.open_warm().await;
                pool.filling.fetch_sub(1, Ordering::SeqCst);
                match opened {
                    Ok(session) if pool.target.load(Ordering::SeqCst) > 0 => {
                        pool.ready.lock().unwrap().push_back(session);
                    }
                    Ok(session) => {
                        let _ = session.close().await;
                    }
                    Err(err) => *pool.last_error.lock().unwrap() = Some(err.to_string()),
                }
            });
        }
    }

    /// A fresh session whose Python interpreter is already running (it starts on the
    /// first block otherwise, which is most of a pooled session's first result).
    async fn open_warm(&self) -> Result<Session> {
        let mut session = self.open_fresh().await?;
        if self.config.languages.resolve("python").is_ok() {
            let cancel = CancellationToken::new();
            session
                .execute(ExecRequest::new("python", "pass"), &cancel)
                .await?
                .collect_output()
                .await;
        }
        Ok(session)
    }

    fn without_pool(&self) -> Engine {
        Engine {
            pool: None,
            ..self.clone()
        }
    }

    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// The Docker client, for the Docker backend.
    pub fn docker(&self) -> Option<&Docker> {
        self.docker.as_ref()
    }

    fn docker_or_err(&self) -> Result<&Docker> {
        self.docker
            .as_ref()
            .ok_or_else(|| SandboxError::StartFailed {
                reason: "this engine runs code on the host, not in Docker".into(),
                diagnostics: String::new(),
            })
    }

    /// Makes sure the session image exists, building oi's own image when it is
    /// missing (or always, with `force`); fixes the engine's image to it.
    /// A configured image other than oi's own is only checked for.
    pub async fn ensure_image(
        &mut self,
        force: bool,
        progress: &mut (dyn FnMut(BuildProgress) + Send),
    ) -> Result<String> {
        let docker = self.docker_or_err()?.clone();
        if let Some(tag) = self.config.image.clone() {
            let exists = image::exists(&docker, &tag).await?;
            // Someone else's image is only checked for: oi cannot build it.
            if !tag.starts_with(image::IMAGE_REPOSITORY) {
                return if exists {
                    Ok(tag)
                } else {
                    Err(SandboxError::ImageMissing { tag })
                };
            }
            if exists && !force {
                return Ok(tag);
            }
        }
        let mut tag =
            image::ensure(&docker, self.config.base_image.as_deref(), force, progress).await?;
        if let Some(project) = &self.config.project {
            tag = image::ensure_project(&docker, &tag, project, force, progress).await?;
        }
        self.config.image = Some(tag.clone());
        Ok(tag)
    }

    /// The image sessions start from.
    pub async fn image(&self) -> Result<String> {
        match &self.config.image {
            Some(tag) => Ok(tag.clone()),
            None => {
                let docker = self.docker_or_err()?;
                let base = image::resolve_base(docker, self.config.base_image.as_deref()).await;
                Ok(image::image_tag(&base))
            }
        }
    }

    /// Opens a new session: a fresh container (or host runner) ready to run blocks,
    /// from the pool when it has one.
    pub async fn open(&self) -> Result<Session> {
        let pooled = self
            .pool
            .as_ref()
            .and_then(|p| p.ready.lock().unwrap().pop_front());
        if let Some(session) = pooled {
            self.refill();
            return Ok(session);
        }
        self.open_fresh().await
    }

    async fn open_fresh(&self) -> Result<Session> {
        let id = docker::new_session_id();
        let image = match self.config.backend {
            Backend::Docker => Some(self.image().await?),
            Backend::Host => None,
        };
        let (runtime, conn) = self
            .start_runtime(&id, &format!("oi-{id}"), image.as_deref())
            .await?;
        Ok(Session {
            id,
            engine: self.without_pool(),
            image,
            runtime: Some(runtime),
            conn: Some(conn),
            restarts: 0,
        })
    }

    /// Starts a runner for session `id`: a container named `name`, or a host process.
    async fn start_runtime(
        &self,
        id: &str,
        name: &str,
        image: Option<&str>,
    ) -> Result<(Runtime, RunnerConnection)> {
        match (&self.docker, image) {
            (Some(docker), Some(image)) => {
                let (container, transport) = docker::start_container(
                    docker,
                    image,
                    id,
                    name,
                    &self.config.hardening,
                    &self.config.workspace,
                )
                .await?;
                match self.handshake(transport).await {
                    Ok(conn) => Ok((Runtime::Container(container), conn)),
                    Err(err) => {
                        let err = match (err, docker::exit_reason(docker, &container).await) {
                            (
                                SandboxError::StartFailed {
                                    reason,
                                    diagnostics,
                                },
                                Some(why),
                            ) => SandboxError::StartFailed {
                                reason: format!("{reason} ({why})"),
                                diagnostics,
                            },
                            (err, _) => err,
                        };
                        let _ = docker::remove(docker, &container).await;
                        Err(err)
                    }
                }
            }
            _ => {
                let (child, transport) = host::start_runner(&self.config).await?;
                let conn = self.handshake(transport).await?;
                Ok((Runtime::Host(child), conn))
            }
        }
    }

    async fn handshake(&self, transport: Transport) -> Result<RunnerConnection> {
        RunnerConnection::open(transport, self.config.start_timeout).await
    }

    /// oi's containers on this Docker daemon.
    pub async fn list(&self) -> Result<Vec<SandboxInfo>> {
        docker::list(self.docker_or_err()?).await
    }

    /// Removes containers left behind by oi processes that are gone.
    pub async fn sweep(&self) -> Result<Vec<SandboxInfo>> {
        docker::sweep(self.docker_or_err()?).await
    }

    /// Removes one container (by id, id prefix or name).
    pub async fn remove(&self, id: &str) -> Result<()> {
        docker::remove(self.docker_or_err()?, id).await
    }

    /// Copies a host file or folder into a running sandbox's workspace (`container` as
    /// `oi sandbox ls` shows it: id prefix, name or session), owned by its user.
    pub async fn copy_in(&self, container: &str, source: &Path, dest: &str) -> Result<u64> {
        let docker = self.docker_or_err()?;
        let (id, user) = self.find(container).await?;
        files::upload(docker, &id, source, dest, &user).await
    }

    /// Copies a sandbox's workspace file or folder out into the host folder `dest`.
    /// Takes at most `limit` bytes (see [`files::download`]).
    pub async fn copy_out(
        &self,
        container: &str,
        source: &str,
        dest: &Path,
        limit: u64,
    ) -> Result<Vec<PathBuf>> {
        let docker = self.docker_or_err()?;
        let (id, _) = self.find(container).await?;
        files::download(docker, &id, source, dest, limit).await
    }

    /// The one oi container `reference` names, and the user its code runs as.
    async fn find(&self, reference: &str) -> Result<(String, String)> {
        let matches: Vec<SandboxInfo> = self
            .list()
            .await?
            .into_iter()
            .filter(|c| {
                c.id.starts_with(reference) || c.name == reference || c.session == reference
            })
            .collect();
        let [one] = matches.as_slice() else {
            return Err(SandboxError::Files {
                message: if matches.is_empty() {
                    format!("no oi container matches `{reference}` (see `oi sandbox ls`)")
                } else {
                    format!("`{reference}` matches several containers; give more of the id")
                },
            });
        };
        let user = docker::user_of(self.docker_or_err()?, &one.id).await?;
        Ok((one.id.clone(), user))
    }
}

enum Runtime {
    Container(String),
    Host(Child),
}

/// One sandbox session. Close it with [`Session::close`]; a session that is only
/// dropped is removed in the background (or stops by itself when oi exits).
pub struct Session {
    id: String,
    engine: Engine,
    image: Option<String>,
    runtime: Option<Runtime>,
    conn: Option<RunnerConnection>,
    /// How many times its runtime was replaced (names each new container).
    restarts: u32,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("container", &self.container_id())
            .finish_non_exhaustive()
    }
}

impl Session {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The container's id, for the Docker backend.
    pub fn container_id(&self) -> Option<&str> {
        match &self.runtime {
            Some(Runtime::Container(id)) => Some(id),
            _ => None,
        }
    }

    /// The image the session runs, for the Docker backend.
    pub fn image(&self) -> Option<&str> {
        self.image.as_deref()
    }

    /// Copies a host file or folder into the workspace folder `dest` (relative paths
    /// are inside `/workspace`). Returns the bytes sent.
    pub async fn upload(&self, source: &Path, dest: &str) -> Result<u64> {
        match (&self.runtime, &self.engine.docker) {
            (Some(Runtime::Container(id)), Some(docker)) => {
                files::upload(docker, id, source, dest, &self.engine.config.hardening.user).await
            }
            _ => Err(SandboxError::Files {
                message: "--unsafe runs on this machine: its files are already here".into(),
            }),
        }
    }

    /// Copies a workspace file or folder out into the host folder `dest`; refuses
    /// anything that would land outside it. Returns the paths written.
    pub async fn download(&self, source: &str, dest: &Path) -> Result<Vec<PathBuf>> {
        match (&self.runtime, &self.engine.docker) {
            (Some(Runtime::Container(id)), Some(docker)) => {
                // A private workspace holds at most this much; a mounted one's files are
                // on this machine already.
                files::download(docker, id, source, dest, self.copy_limit()).await
            }
            _ => Err(SandboxError::Files {
                message: "--unsafe runs on this machine: its files are already here".into(),
            }),
        }
    }

    /// Copies a tar archive into the workspace folder `dest` (relative paths are inside
    /// /workspace), its entries owned by the sandbox's user. Returns the bytes sent.
    pub async fn put_archive(&self, dest: &str, archive: std::fs::File) -> Result<u64> {
        match (&self.runtime, &self.engine.docker) {
            (Some(Runtime::Container(id)), Some(docker)) => {
                files::put(
                    docker,
                    id,
                    archive,
                    dest,
                    &self.engine.config.hardening.user,
                )
                .await
            }
            _ => Err(SandboxError::Files {
                message: "--unsafe runs on this machine: its files are already here".into(),
            }),
        }
    }

    /// The workspace file or folder `source` as a tar archive in a temporary file,
    /// positioned at its start; at most `limit` bytes (sparse files count in full).
    pub async fn get_archive(&self, source: &str, limit: u64) -> Result<std::fs::File> {
        match (&self.runtime, &self.engine.docker) {
            (Some(Runtime::Container(id)), Some(docker)) => {
                files::fetch(docker, id, source, limit).await
            }
            _ => Err(SandboxError::Files {
                message: "--unsafe runs on this machine: its files are already here".into(),
            }),
        }
    }

    /// The most bytes a copy out of this session may take: what its private workspace
    /// can hold, and an archive's overhead.
    pub fn copy_limit(&self) -> u64 {
        self.engine.config.hardening.workspace_bytes.max(0) as u64 + COPY_SLACK
    }

    /// Whether code runs in a sandbox (false for `--unsafe`).
    pub fn is_sandboxed(&self) -> bool {
        self.engine.config.backend == Backend::Docker
    }

    /// The isolation in force (meaningful for the Docker backend).
    pub fn hardening(&self) -> &Hardening {
        &self.engine.config.hardening
    }

    /// Runs a block. The returned [`Execution`] streams its events and ends with
    /// exactly one `Done`. Blocks of one session run one after another.
    /// `cancel` interrupts the block (its state is kept; a block that does not stop
    /// within the grace period has its interpreter killed).
    pub async fn execute(
        &mut self,
        request: ExecRequest,
        cancel: &CancellationToken,
    ) -> Result<Execution> {
        let language = self
            .engine
            .config
            .languages
            .resolve(&request.language)?
            .clone();
        let mut preface = Vec::new();
        if !self.conn.as_ref().ok_or(SandboxError::Closed)?.is_alive() {
            preface.push(ExecEvent::Notice {
                message: self.restart().await?,
            });
        }
        let conn = self.conn.as_ref().ok_or(SandboxError::Closed)?;
        let escalation = Escalation {
            interrupt_grace: self.engine.config.interrupt_grace,
        };
        let timeout = request.timeout.or(self.engine.config.default_timeout);
        match conn
            .execute(
                &language,
                &request.code,
                timeout,
                cancel,
                escalation,
                preface.clone(),
            )
            .await
        {
            // The runner died between the liveness check and the request: start over once.
            Err(SandboxError::Closed | SandboxError::Io { .. }) => {
                let mut preface = preface;
                preface.push(ExecEvent::Notice {
                    message: self.restart().await?,
                });
                let conn = self.conn.as_ref().ok_or(SandboxError::Closed)?;
                conn.execute(
                    &language,
                    &request.code,
                    timeout,
                    cancel,
                    escalation,
                    preface,
                )
                .await
            }
            other => other,
        }
    }

    /// Replaces a dead runtime with a new one; returns what to tell the user.
    async fn restart(&mut self) -> Result<String> {
        let why = match (self.runtime.take(), &self.engine.docker) {
            (Some(Runtime::Container(old)), Some(docker)) => {
                let why = docker::exit_reason(docker, &old).await;
                docker::remove(docker, &old).await?;
                why.unwrap_or_else(|| "the sandbox container stopped".into())
            }
            (Some(Runtime::Host(mut child)), _) => {
                // Its stdin closed first: a runner still able to act stops what its
                // blocks left running on this machine before it goes.
                if let Some(conn) = self.conn.take() {
                    conn.shutdown().await;
                }
                if tokio::time::timeout(Duration::from_secs(1), child.wait())
                    .await
                    .is_err()
                {
                    let _ = child.kill().await;
                }
                "the runner process stopped".into()
            }
            _ => "the sandbox stopped".into(),
        };
        self.conn = None;
        // A name of its own: the old container may still be on its way out (Docker
        // removes it by itself, see `docker.rs`), holding the session's first name.
        self.restarts += 1;
        let name = format!("oi-{}-{}", self.id, self.restarts);
        let (runtime, conn) = self
            .engine
            .start_runtime(&self.id, &name, self.image.as_deref())
            .await?;
        self.runtime = Some(runtime);
        self.conn = Some(conn);
        Ok(format!(
            "{why}; started a new sandbox: all state (variables, imports, files outside a mounted workspace) was lost"
        ))
    }

    /// Round trip to the runner without running code.
    pub async fn ping(&self) -> Result<()> {
        self.conn.as_ref().ok_or(SandboxError::Closed)?.ping().await
    }

    /// Stops the runner and removes the container.
    pub async fn close(mut self) -> Result<()> {
        self.shutdown().await
    }

    async fn shutdown(&mut self) -> Result<()> {
        let conn = self.conn.take();
        match self.runtime.take() {
            Some(Runtime::Container(id)) => {
                drop(conn);
                if let Some(docker) = &self.engine.docker {
                    docker::remove(docker, &id).await?;
                }
            }
            Some(Runtime::Host(mut child)) => {
                if let Some(conn) = &conn {
                    conn.shutdown().await;
                }
                if tokio::time::timeout(Duration::from_secs(2), child.wait())
                    .await
                    .is_err()
                {
                    let _ = child.kill().await;
                }
            }
            None => {}
        }
        Ok(())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let Some(Runtime::Container(id)) = self.runtime.take() else {
            return;
        };
        let Some(docker) = self.engine.docker.clone() else {
            return;
        };
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = docker::remove(&docker, &id).await;
            });
        }
    }
}
