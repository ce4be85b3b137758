//! A sandbox session: one runner (in its own container, or on the host without a
//! sandbox) that keeps interpreter state between blocks, from `open` to `close`.
//!
//! [`Engine`] holds what sessions share: the configuration and the
//! [`SandboxBackend`] that starts their sandboxes, chosen once and explicitly (Docker or
//! the host from [`SandboxConfig::backend`], or any other given to
//! [`Engine::with_backend`]). [`Session`] runs blocks. If a session's sandbox dies,
//! the next block starts a new one and says, as a notice, that the state was lost.
//! Files cross as tar archives ([`Session::put_archive`], [`Session::get_archive`]);
//! host paths are only a convenience for front ends on this machine.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bollard::Docker;
use tokio_util::sync::CancellationToken;

use super::backend::{self, ImageStore, SandboxBackend, SandboxInfo, SandboxSpec};
use super::connection::{Escalation, RunnerConnection};
use super::docker::DockerBackend;
use super::error::{Capability, Result, SandboxError};
use super::execution::{ExecEvent, ExecRequest, Execution};
use super::files;
use super::host::HostBackend;
use super::image::BuildProgress;
use super::owner::new_session_id;
use super::settings::{Backend, Hardening, SandboxConfig};

/// What an archive adds to the files it carries (headers, padding), allowed on top of a
/// copy's limit.
const COPY_SLACK: u64 = 16 << 20;

/// What sessions share: the configuration and the backend their sandboxes run on.
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
    backend: Arc<dyn SandboxBackend>,
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
            .field("backend", &self.backend.name())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Starts the backend `config.backend` names — connects to Docker and checks that
    /// it answers, or prepares the host runner. Nothing falls back to another backend.
    pub async fn connect(config: SandboxConfig) -> Result<Engine> {
        let backend: Arc<dyn SandboxBackend> = match config.backend {
            Backend::Docker => {
                Arc::new(DockerBackend::connect(config.docker_host.as_deref()).await?)
            }
            Backend::Host => Arc::new(HostBackend::new(config.host.clone())?),
        };
        Engine::with_backend(config, backend)
    }

    /// An engine whose sessions run on `backend`, one oi does not start by itself (a
    /// cluster's pods, a test's). It must be what the configuration promises: a
    /// sandbox for [`Backend::Docker`], none for [`Backend::Host`]
    /// ([`SandboxError::BackendMismatch`] otherwise), since the model and the user are
    /// told which.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// use oi::core::code_interpreter::{Backend, Engine, HostBackend, HostConfig, SandboxConfig};
    ///
    /// # fn run() -> Result<(), oi::core::code_interpreter::SandboxError> {
    /// // Any `SandboxBackend`; the host runner here, so the configuration says `Host`.
    /// let host = HostConfig { scratch_dir: Some("/tmp/oi".into()), ..HostConfig::default() };
    /// let config = SandboxConfig { backend: Backend::Host, ..SandboxConfig::default() };
    /// let engine = Engine::with_backend(config, Arc::new(HostBackend::new(host)?))?;
    /// # Ok(()) }
    /// ```
    pub fn with_backend(config: SandboxConfig, backend: Arc<dyn SandboxBackend>) -> Result<Engine> {
        if backend.is_sandboxed() != config.backend.is_sandboxed() {
            return Err(SandboxError::BackendMismatch {
                configured: config.backend,
                backend: backend.name(),
            });
        }
        Ok(Engine {
            config,
            backend,
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

    /// The backend sessions run on.
    pub fn backend(&self) -> &Arc<dyn SandboxBackend> {
        &self.backend
    }

    /// The Docker client, for the Docker backend.
    pub fn docker(&self) -> Option<&Docker> {
        self.backend.docker()
    }

    /// The backend's images; an error for a backend without any.
    pub fn images(&self) -> Result<&dyn ImageStore> {
        self.backend.images().ok_or(SandboxError::Unsupported {
            backend: self.backend.name(),
            capability: Capability::Images,
        })
    }

    /// Makes sure the session image exists, building oi's own image when it is
    /// missing (or always, with `force`); fixes the engine's image to it.
    /// A configured image other than oi's own is only checked for. An error for a
    /// backend without images.
    pub async fn ensure_image(
        &mut self,
        force: bool,
        progress: &mut (dyn FnMut(BuildProgress) + Send),
    ) -> Result<String> {
        let tag = self.images()?.ensure(&self.config, force, progress).await?;
        self.config.image = Some(tag.clone());
        Ok(tag)
    }

    /// The image sessions start from (for a backend with images).
    pub async fn image(&self) -> Result<String> {
        match &self.config.image {
            Some(tag) => Ok(tag.clone()),
            None => Ok(self
                .images()?
                .own_tag(self.config.base_image.as_deref())
                .await),
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
        let id = new_session_id();
        let image = match self.backend.images() {
            Some(_) => Some(self.image().await?),
            None => None,
        };
        let (sandbox, conn) = self
            .start_sandbox(&id, &format!("oi-{id}"), image.as_deref())
            .await?;
        Ok(Session {
            id,
            engine: self.without_pool(),
            image,
            sandbox: Some(sandbox),
            conn: Some(conn),
            restarts: 0,
        })
    }

    /// Starts a sandbox named `name` for session `id` and waits for its runner's hello;
    /// a sandbox whose runner does not say it is removed again.
    async fn start_sandbox(
        &self,
        id: &str,
        name: &str,
        image: Option<&str>,
    ) -> Result<(String, RunnerConnection)> {
        let spec = SandboxSpec {
            session: id,
            name,
            image,
            config: &self.config,
        };
        let started = self.backend.start(spec).await?;
        match RunnerConnection::open(started.transport, self.config.start_timeout).await {
            Ok(conn) => Ok((started.id, conn)),
            Err(err) => {
                let err = match (err, self.backend.exit_reason(&started.id).await) {
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
                let _ = self.backend.remove(&started.id).await;
                Err(err)
            }
        }
    }

    /// The sessions' sandboxes of the backend (every oi's, not only this one's).
    pub async fn list(&self) -> Result<Vec<SandboxInfo>> {
        self.backend.list().await
    }

    /// Removes sandboxes left behind by oi processes that are gone.
    pub async fn sweep(&self) -> Result<Vec<SandboxInfo>> {
        self.backend.sweep().await
    }

    /// Removes one sandbox, by its id.
    pub async fn remove(&self, id: &str) -> Result<()> {
        self.backend.remove(id).await
    }

    /// The one sandbox `reference` names, as a listing shows them: an id or a
    /// prefix of one, a name, or a session id.
    pub async fn find(&self, reference: &str) -> Result<SandboxInfo> {
        let list = self.list().await?;
        backend::select(&list, reference).cloned()
    }

    /// Copies a host file or folder into a running sandbox's workspace folder `dest`
    /// (`sandbox` as [`Engine::find`] takes it), owned by its user. Returns the bytes
    /// sent.
    pub async fn copy_in(&self, sandbox: &str, source: &Path, dest: &str) -> Result<u64> {
        let dest = files::workspace_path(dest)?;
        let id = self.find(sandbox).await?.id;
        let (uid, gid) = files::parse_user(&self.backend.user(&id).await?);
        let archive = pack(source, uid, gid).await?;
        self.backend.put_archive(&id, &dest, archive).await
    }

    /// Copies a sandbox's workspace file or folder out into the host folder `dest`.
    /// Takes at most `limit` bytes of archive (see [`files::spool`]).
    pub async fn copy_out(
        &self,
        sandbox: &str,
        source: &str,
        dest: &Path,
        limit: u64,
    ) -> Result<Vec<PathBuf>> {
        let source = files::workspace_path(source)?;
        let id = self.find(sandbox).await?.id;
        let archive = self.backend.get_archive(&id, &source, limit).await?;
        unpack(archive, dest).await
    }
}

/// [`files::pack`] off the async threads; the archive is named after the source.
async fn pack(source: &Path, uid: u64, gid: u64) -> Result<std::fs::File> {
    let name = source
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| ".".into());
    let source = source.to_path_buf();
    blocking(move || files::pack(&source, &name, uid, gid)).await
}

/// [`files::unpack`] off the async threads.
async fn unpack(archive: std::fs::File, dest: &Path) -> Result<Vec<PathBuf>> {
    let dest = dest.to_path_buf();
    blocking(move || files::unpack(archive, &dest)).await
}

/// Runs file work that blocks (packing, unpacking, rewriting archives) on a thread
/// made for it.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| SandboxError::Files {
            message: format!("copying failed: {e}"),
        })?
}

/// One sandbox session. Close it with [`Session::close`]; a session that is only
/// dropped is removed in the background (or stops by itself when oi exits).
pub struct Session {
    id: String,
    engine: Engine,
    image: Option<String>,
    /// The backend's id of the sandbox it runs in now.
    sandbox: Option<String>,
    conn: Option<RunnerConnection>,
    /// How many times its sandbox was replaced (names each new one).
    restarts: u32,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("sandbox", &self.sandbox)
            .finish_non_exhaustive()
    }
}

impl Session {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The backend's id of the sandbox the session runs in now (a container's id).
    pub fn sandbox_id(&self) -> Option<&str> {
        self.sandbox.as_deref()
    }

    /// The id of the container (or pod) the session runs in; `None` without a sandbox.
    pub fn container_id(&self) -> Option<&str> {
        self.sandbox_id().filter(|_| self.is_sandboxed())
    }

    /// The image the session runs, for a backend with images.
    pub fn image(&self) -> Option<&str> {
        self.image.as_deref()
    }

    /// Copies a tar archive into the workspace folder `dest` (relative paths are inside
    /// /workspace), its entries owned by the sandbox's user. Returns the bytes sent.
    ///
    /// The archive may come from anywhere (a remote front end): it is rewritten first
    /// ([`files::claim`]), so what it says of its owners, modes and entry kinds never
    /// reaches the sandbox.
    pub async fn put_archive(&self, dest: &str, archive: std::fs::File) -> Result<u64> {
        let (uid, gid) = files::parse_user(&self.engine.config.hardening.user);
        let archive = blocking(move || files::claim(archive, uid, gid)).await?;
        self.put_owned(dest, archive).await
    }

    /// The workspace file or folder `source` as a tar archive in a temporary file,
    /// positioned at its start; at most `limit` bytes (sparse files count in full).
    pub async fn get_archive(&self, source: &str, limit: u64) -> Result<std::fs::File> {
        let source = files::workspace_path(source)?;
        let sandbox = self.sandbox.as_deref().ok_or(SandboxError::Closed)?;
        self.engine
            .backend
            .get_archive(sandbox, &source, limit)
            .await
    }

    /// Copies a host file or folder into the workspace folder `dest` (relative paths
    /// are inside `/workspace`). Returns the bytes sent.
    pub async fn upload(&self, source: &Path, dest: &str) -> Result<u64> {
        let (uid, gid) = files::parse_user(&self.engine.config.hardening.user);
        // Packed here, owned as it should be: nothing to rewrite.
        let archive = pack(source, uid, gid).await?;
        self.put_owned(dest, archive).await
    }

    /// Copies a workspace file or folder out into the host folder `dest`; refuses
    /// anything that would land outside it. Returns the paths written.
    pub async fn download(&self, source: &str, dest: &Path) -> Result<Vec<PathBuf>> {
        let archive = self.get_archive(source, self.copy_limit()).await?;
        unpack(archive, dest).await
    }

    /// The most bytes a copy out of this session may take: what its private workspace
    /// can hold (a mounted one's files are on this machine already), and an archive's
    /// overhead.
    pub fn copy_limit(&self) -> u64 {
        self.engine.config.hardening.workspace_bytes.max(0) as u64 + COPY_SLACK
    }

    /// Sends an archive whose entries are owned as they should be.
    async fn put_owned(&self, dest: &str, archive: std::fs::File) -> Result<u64> {
        let dest = files::workspace_path(dest)?;
        let sandbox = self.sandbox.as_deref().ok_or(SandboxError::Closed)?;
        self.engine
            .backend
            .put_archive(sandbox, &dest, archive)
            .await
    }

    /// Whether code runs in a sandbox (false for the host backend).
    pub fn is_sandboxed(&self) -> bool {
        self.engine.backend.is_sandboxed()
    }

    /// The isolation in force (meaningful for a sandboxed backend).
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

    /// Replaces a dead sandbox with a new one; returns what to tell the user.
    async fn restart(&mut self) -> Result<String> {
        let why = match self.sandbox.take() {
            Some(old) => {
                let why = self.engine.backend.exit_reason(&old).await;
                self.stop(&old).await?;
                why
            }
            None => None,
        };
        let why = why.unwrap_or_else(|| "the sandbox stopped".into());
        // A name of its own: the old sandbox may still be on its way out (Docker
        // removes a container by itself, see `docker.rs`), holding the first name.
        self.restarts += 1;
        let name = format!("oi-{}-{}", self.id, self.restarts);
        let (sandbox, conn) = self
            .engine
            .start_sandbox(&self.id, &name, self.image.as_deref())
            .await?;
        self.sandbox = Some(sandbox);
        self.conn = Some(conn);
        Ok(format!(
            "{why}; started a new sandbox: all state (variables, imports, files outside a mounted workspace) was lost"
        ))
    }

    /// Stops the runner of sandbox `id` and removes the sandbox. The runner is asked
    /// to stop and its stdin closed first, so that one still able to act stops what
    /// its blocks left running before it goes.
    async fn stop(&mut self, id: &str) -> Result<()> {
        let conn = self.conn.take();
        if let Some(conn) = &conn {
            conn.shutdown().await;
        }
        self.engine.backend.remove(id).await
    }

    /// Round trip to the runner without running code.
    pub async fn ping(&self) -> Result<()> {
        self.conn.as_ref().ok_or(SandboxError::Closed)?.ping().await
    }

    /// Stops the runner and removes its sandbox.
    pub async fn close(mut self) -> Result<()> {
        match self.sandbox.take() {
            Some(id) => self.stop(&id).await,
            None => Ok(()),
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(id) = self.sandbox.take() {
            self.engine.backend.remove_in_background(&id);
        }
    }
}
