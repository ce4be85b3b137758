//! The seam between sessions and where their runners live: the [`SandboxBackend`]
//! trait, which Docker ([`super::docker::DockerBackend`]), the host
//! ([`super::host::HostBackend`]) and any later backend (Kubernetes pods) implement.
//!
//! Flow: the engine asks its backend to [`start`](SandboxBackend::start) a sandbox for a
//! session and gets back the runner's byte streams ([`Transport`]); everything above
//! that — the runner protocol, executions, restarts, pools — is the same for every
//! backend. Files cross as tar archives, the one unit every backend can carry (a front
//! end on another machine cannot name host paths either). Listing, removing and
//! sweeping work on the backend's own sandboxes, with the ownership rules of
//! [`super::owner`]. Images are a capability only some backends have ([`ImageStore`]).
//!
//! Left to others: the runner protocol (`connection`), what a session does with a
//! runner (`session`), how a host path becomes an archive and back (`files`), and how
//! each backend realises the hardening and the workspace of [`SandboxConfig`].

use std::fs::File;
use std::time::{SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio_util::io::ReaderStream;

use super::connection::{Diagnostics, Transport};
use super::error::{Result, SandboxError};
use super::image::{BuildProgress, ImageInfo};
use super::owner::OwnerState;
use super::settings::SandboxConfig;

/// How long a sandbox may stay created-but-not-started before a sweep by an oi
/// elsewhere counts it as abandoned (creating and starting take seconds).
const STALE_CREATED_SECS: i64 = 24 * 3600;

/// Where sessions' runners live. Implementations must be cheap to share: the engine
/// holds one behind an `Arc` and every session and pooled start uses it concurrently.
///
/// Sandboxes are named by the id [`start`](SandboxBackend::start) returns; paths inside
/// them are absolute and already checked to lie inside the workspace
/// ([`super::files::workspace_path`]).
pub trait SandboxBackend: Send + Sync {
    /// A short name for messages and listings: `docker`, `host`.
    fn name(&self) -> &'static str;

    /// Whether code is isolated from the machine oi runs on. An engine refuses a
    /// backend whose answer differs from its configuration's
    /// ([`super::Backend::is_sandboxed`]): what the model and the user are told must
    /// hold.
    fn is_sandboxed(&self) -> bool;

    /// Starts a sandbox for a session, with the runner as its main process, and hands
    /// back its id and the runner's streams. The runner says hello on its own; if it
    /// does not, the caller removes the sandbox.
    fn start<'a>(&'a self, spec: SandboxSpec<'a>) -> BoxFuture<'a, Result<Started>>;

    /// Why a sandbox stopped, in words, for the notice that its state was lost; `None`
    /// when it has not stopped or the backend cannot tell.
    fn exit_reason<'a>(&'a self, sandbox: &'a str) -> BoxFuture<'a, Option<String>>;

    /// Stops a sandbox and removes it with everything it holds. The caller has asked
    /// its runner to stop and closed its stdin; a backend may give it a moment. A
    /// sandbox already gone is not an error.
    fn remove<'a>(&'a self, sandbox: &'a str) -> BoxFuture<'a, Result<()>>;

    /// Removes a sandbox without waiting: its session was dropped without being closed
    /// (`Drop` cannot await).
    fn remove_in_background(&self, sandbox: &str);

    /// Unpacks a tar archive into the folder `dest` of a running sandbox. The entries
    /// are as they should land (owned by the sandbox's user, plain modes): the caller
    /// made them so. Returns the bytes sent.
    fn put_archive<'a>(
        &'a self,
        sandbox: &'a str,
        dest: &'a str,
        archive: File,
    ) -> BoxFuture<'a, Result<u64>>;

    /// The file or folder `source` of a sandbox as a tar archive in a temporary file,
    /// positioned at its start. Takes at most `limit` bytes of archive and refuses the
    /// rest with [`SandboxError::CopyTooLarge`] (see [`super::files::spool`]).
    fn get_archive<'a>(
        &'a self,
        sandbox: &'a str,
        source: &'a str,
        limit: u64,
    ) -> BoxFuture<'a, Result<File>>;

    /// The user code runs as in a sandbox (`uid:gid`), whom copied-in files belong to.
    fn user<'a>(&'a self, sandbox: &'a str) -> BoxFuture<'a, Result<String>>;

    /// The sessions' sandboxes this backend reaches, running or not, newest first —
    /// of every oi using it, not only this one, each with what can be known of its
    /// owner ([`super::Owner::state`]).
    fn list(&self) -> BoxFuture<'_, Result<Vec<SandboxInfo>>>;

    /// Whether nobody can be using a sandbox any more (see
    /// [`SandboxInfo::is_abandoned`], the rule every backend shares unless its
    /// sandboxes' states mean something else).
    fn is_abandoned(&self, sandbox: &SandboxInfo, now: i64) -> bool {
        sandbox.is_abandoned(now)
    }

    /// Removes the sandboxes that are certainly abandoned, and returns them.
    fn sweep(&self) -> BoxFuture<'_, Result<Vec<SandboxInfo>>> {
        Box::pin(async move {
            let now = unix_now();
            let orphans: Vec<SandboxInfo> = self
                .list()
                .await?
                .into_iter()
                .filter(|s| self.is_abandoned(s, now))
                .collect();
            let removals = orphans.iter().map(|s| self.remove(&s.id));
            for result in futures::future::join_all(removals).await {
                result?;
            }
            Ok(orphans)
        })
    }

    /// The backend's images, if it runs sessions from images it can build or check.
    fn images(&self) -> Option<&dyn ImageStore> {
        None
    }

    /// The Docker client, for a backend that is Docker (Docker-only tools and tests
    /// inspect containers with it).
    fn docker(&self) -> Option<&bollard::Docker> {
        None
    }
}

/// Sandbox images, for a backend that runs sessions from them (Docker). How an image
/// is built is the backend's business.
pub trait ImageStore: Send + Sync {
    /// Makes sure the image sessions of `config` run is there: a configured image is
    /// only checked for, unless it is oi's own; oi's own image (and the project's on
    /// top of it) is built when missing, or always with `force`. Returns its tag.
    fn ensure<'a>(
        &'a self,
        config: &'a SandboxConfig,
        force: bool,
        progress: &'a mut (dyn FnMut(BuildProgress) + Send),
    ) -> BoxFuture<'a, Result<String>>;

    /// The tag of oi's own image on `base` (`None`: the base a build would pick).
    fn own_tag<'a>(&'a self, base: Option<&'a str>) -> BoxFuture<'a, String>;

    /// oi's images (its own and projects'), newest first.
    fn list(&self) -> BoxFuture<'_, Result<Vec<ImageInfo>>>;

    /// Removes one image; one in use is an error saying so.
    fn remove<'a>(&'a self, tag: &'a str) -> BoxFuture<'a, Result<()>>;
}

/// What a backend needs to start one sandbox.
#[derive(Debug, Clone, Copy)]
pub struct SandboxSpec<'a> {
    /// The session it serves; a restarted session keeps it (label sandboxes with it).
    pub session: &'a str,
    /// A name for this sandbox, unique: each restart of a session gets a new one.
    pub name: &'a str,
    /// The image to run, resolved by the engine, for a backend with images.
    pub image: Option<&'a str>,
    /// The session's configuration: the hardening and the workspace to realise, and
    /// the backend's own settings.
    pub config: &'a SandboxConfig,
}

/// A sandbox a backend started.
pub struct Started {
    /// The backend's id for it: what [`SandboxBackend::remove`] and the copies take.
    pub id: String,
    /// The runner's streams.
    pub transport: Transport,
}

impl std::fmt::Debug for Started {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Started")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// The streams of a runner reached through byte pipes (a child process's stdin,
    /// stdout and stderr): frames are read from `output`, requests written to `input`,
    /// and the last few KiB of `stderr` kept for diagnostics.
    pub fn from_pipes(
        input: impl AsyncWrite + Send + 'static,
        output: impl AsyncRead + Send + 'static,
        mut stderr: impl AsyncRead + Send + Unpin + 'static,
    ) -> Transport {
        let diagnostics = Diagnostics::default();
        let sink = diagnostics.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                sink.push(&buf[..n]);
            }
        });
        Transport {
            output: ReaderStream::with_capacity(output, 64 * 1024).boxed(),
            input: Box::pin(input),
            diagnostics,
        }
    }
}

/// One session's sandbox, as a listing shows it. `state` uses Docker's words
/// (`created`, `running`, `paused`, `restarting`, `removing`, `exited`, `dead`); another
/// backend maps its own states onto them.
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
    /// process can tell (it stops by itself when that oi goes).
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

    /// Whether `reference` names it, as a person types it: an id or a prefix of one,
    /// its name, or its session's id.
    pub fn is_named_by(&self, reference: &str) -> bool {
        !reference.is_empty()
            && (self.id.starts_with(reference)
                || self.name == reference
                || self.session == reference)
    }
}

/// The one sandbox in `list` that `reference` names ([`SandboxInfo::is_named_by`]).
pub fn select<'a>(list: &'a [SandboxInfo], reference: &str) -> Result<&'a SandboxInfo> {
    let mut matches = list.iter().filter(|s| s.is_named_by(reference));
    match (matches.next(), matches.next()) {
        (Some(one), None) => Ok(one),
        (None, _) => Err(SandboxError::NoSuchSandbox {
            reference: reference.to_string(),
        }),
        (Some(_), Some(_)) => Err(SandboxError::AmbiguousSandbox {
            reference: reference.to_string(),
        }),
    }
}

/// Seconds since the epoch, as sandboxes' creation times are given.
pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::super::owner::Owner;
    use super::*;

    fn info(id: &str, state: &str, owner_state: OwnerState, created: i64) -> SandboxInfo {
        SandboxInfo {
            id: id.into(),
            name: format!("oi-{id}"),
            session: id.into(),
            image: "i".into(),
            state: state.into(),
            status: String::new(),
            created,
            owner_pid: Some(1),
            owner_alive: owner_state == OwnerState::Alive,
            owner_state,
        }
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
        let now = 1_000_000;
        assert!(!info("x", "running", OwnerState::Elsewhere, 0).is_abandoned(now));
        assert!(!info("x", "running", OwnerState::Alive, 0).is_abandoned(now));
        assert!(info("x", "running", OwnerState::Gone, 0).is_abandoned(now));
        assert!(info("x", "exited", OwnerState::Elsewhere, 0).is_abandoned(now));
        assert!(!info("x", "created", OwnerState::Elsewhere, now - 60).is_abandoned(now));
        assert!(info("x", "created", OwnerState::Elsewhere, 0).is_abandoned(now));
        assert!(!info("x", "removing", OwnerState::Gone, 0).is_abandoned(now));
    }

    #[test]
    fn a_reference_names_one_sandbox_by_id_prefix_name_or_session() {
        let list = [
            info("3fa9e1", "running", OwnerState::Alive, 0),
            info("3fb0c2", "running", OwnerState::Alive, 0),
        ];
        assert_eq!(select(&list, "3fa").unwrap().id, "3fa9e1");
        assert_eq!(select(&list, "oi-3fb0c2").unwrap().id, "3fb0c2");
        assert!(matches!(
            select(&list, "3f"),
            Err(SandboxError::AmbiguousSandbox { .. })
        ));
        for nothing in ["", "4", "oi-3f"] {
            assert!(
                matches!(
                    select(&list, nothing),
                    Err(SandboxError::NoSuchSandbox { .. })
                ),
                "{nothing:?}"
            );
        }
    }
}
