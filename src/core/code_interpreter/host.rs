//! The unsandboxed backend: the same runner, started as a local child process. Same
//! protocol, same behaviour, and no isolation whatsoever: code can read and change
//! everything the user can. Front ends must label it loudly.
//!
//! It has no images and copies no files (they are on this machine already); its
//! sandboxes are the runner processes this oi started, which end with it (their stdin
//! closes). Left to others: the runner protocol (`connection`), and where the
//! working directory and the scratch folder are (the front end's [`HostConfig`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::process::{Child, Command};

use super::backend::{unix_now, SandboxBackend, SandboxInfo, SandboxSpec, Started};
use super::connection::Transport;
use super::error::{Capability, Result, SandboxError};
use super::image::runner_files;
use super::owner::OwnerState;

/// How long a runner whose stdin closed may take to stop what its blocks left running
/// before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// How often and how many times [`HostBackend::exit_status`] looks.
const EXIT_POLL: Duration = Duration::from_millis(10);
const EXIT_POLLS: u32 = 20;

/// The host backend's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostConfig {
    /// The runner's working directory (where code starts); `None` is oi's own.
    pub workdir: Option<PathBuf>,
    /// Where the runner's files are unpacked (required).
    pub scratch_dir: Option<PathBuf>,
    /// The Python to run the runner with.
    pub python: String,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            workdir: None,
            scratch_dir: None,
            python: "python3".into(),
        }
    }
}

/// The runner as a child process of this oi.
#[derive(Debug)]
pub struct HostBackend {
    config: HostConfig,
    runners: Mutex<HashMap<String, Runner>>,
}

#[derive(Debug)]
struct Runner {
    child: Child,
    session: String,
    created: i64,
}

impl HostBackend {
    /// A backend for `config`; refuses one without a scratch folder.
    pub fn new(config: HostConfig) -> Result<HostBackend> {
        if config.scratch_dir.is_none() {
            return Err(SandboxError::MissingSetting {
                backend: "host",
                setting: "a scratch folder for the runner's files",
            });
        }
        Ok(HostBackend {
            config,
            runners: Mutex::default(),
        })
    }

    /// Unpacks the runner and starts it.
    async fn start_runner(&self, spec: SandboxSpec<'_>) -> Result<Started> {
        let scratch = self.config.scratch_dir.as_deref().unwrap_or(Path::new("."));
        let dir = unpack(scratch).await?;
        let mut command = Command::new(&self.config.python);
        command
            .arg("-u")
            .arg(dir.join("runner.py"))
            // On the user's own machine: no sandbox filter, the system's interpreters.
            .arg("--host")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(workdir) = &self.config.workdir {
            command.current_dir(workdir);
        }
        let mut child = command.spawn().map_err(|e| SandboxError::StartFailed {
            reason: format!(
                "could not start `{}` for the host runner: {e}",
                self.config.python
            ),
            diagnostics: String::new(),
        })?;
        let stdin = child.stdin.take().expect("stdin is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let runner = Runner {
            child,
            session: spec.session.to_string(),
            created: unix_now(),
        };
        self.runners
            .lock()
            .unwrap()
            .insert(spec.name.to_string(), runner);
        Ok(Started {
            id: spec.name.to_string(),
            transport: Transport::from_pipes(stdin, stdout, stderr),
        })
    }

    /// Waits for a runner to stop by itself, then kills it.
    async fn stop(&self, sandbox: &str) {
        let runner = self.runners.lock().unwrap().remove(sandbox);
        if let Some(mut runner) = runner {
            if tokio::time::timeout(STOP_GRACE, runner.child.wait())
                .await
                .is_err()
            {
                let _ = runner.child.kill().await;
            }
        }
    }

    /// How a runner ended, if it did. Its pipes close a moment before it can be waited
    /// for, so a runner whose output just ended is given that moment.
    async fn exit_status(&self, sandbox: &str) -> Option<std::process::ExitStatus> {
        for _ in 0..EXIT_POLLS {
            let status = self
                .runners
                .lock()
                .unwrap()
                .get_mut(sandbox)
                .and_then(|r| r.child.try_wait().ok().flatten());
            if status.is_some() {
                return status;
            }
            tokio::time::sleep(EXIT_POLL).await;
        }
        None
    }

    fn files_unsupported<T>() -> Result<T> {
        Err(SandboxError::Unsupported {
            backend: "host",
            capability: Capability::Files,
        })
    }
}

impl SandboxBackend for HostBackend {
    fn name(&self) -> &'static str {
        "host"
    }

    fn is_sandboxed(&self) -> bool {
        false
    }

    fn start<'a>(&'a self, spec: SandboxSpec<'a>) -> BoxFuture<'a, Result<Started>> {
        Box::pin(self.start_runner(spec))
    }

    fn exit_reason<'a>(&'a self, sandbox: &'a str) -> BoxFuture<'a, Option<String>> {
        Box::pin(async move {
            let status = self.exit_status(sandbox).await?;
            Some(match status.code() {
                Some(code) => format!("the runner process exited with code {code}"),
                None => "the runner process stopped".to_string(),
            })
        })
    }

    fn remove<'a>(&'a self, sandbox: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.stop(sandbox).await;
            Ok(())
        })
    }

    fn remove_in_background(&self, sandbox: &str) {
        // Dropping the child kills it (`kill_on_drop`).
        self.runners.lock().unwrap().remove(sandbox);
    }

    fn put_archive<'a>(
        &'a self,
        _sandbox: &'a str,
        _dest: &'a str,
        _archive: std::fs::File,
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async { Self::files_unsupported() })
    }

    fn get_archive<'a>(
        &'a self,
        _sandbox: &'a str,
        _source: &'a str,
        _limit: u64,
    ) -> BoxFuture<'a, Result<std::fs::File>> {
        Box::pin(async { Self::files_unsupported() })
    }

    fn user<'a>(&'a self, _sandbox: &'a str) -> BoxFuture<'a, Result<String>> {
        Box::pin(async { Self::files_unsupported() })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<SandboxInfo>>> {
        let me = std::process::id();
        let mut runners = self.runners.lock().unwrap();
        let mut list: Vec<SandboxInfo> = runners
            .iter_mut()
            .map(|(id, runner)| {
                let running = matches!(runner.child.try_wait(), Ok(None));
                SandboxInfo {
                    id: id.clone(),
                    name: id.clone(),
                    session: runner.session.clone(),
                    image: String::new(),
                    state: if running { "running" } else { "exited" }.into(),
                    status: runner
                        .child
                        .id()
                        .map(|pid| format!("pid {pid}"))
                        .unwrap_or_default(),
                    created: runner.created,
                    owner_pid: Some(me),
                    owner_alive: true,
                    owner_state: OwnerState::Alive,
                }
            })
            .collect();
        list.sort_by_key(|s| std::cmp::Reverse(s.created));
        Box::pin(async move { Ok(list) })
    }
}

/// Writes the runner's files into a folder named after their hash, once.
async fn unpack(scratch: &Path) -> Result<PathBuf> {
    let hash = super::image::recipe_hash("host");
    let dir = scratch.join(format!("runner-{hash}"));
    if dir.join("runner.py").exists() {
        return Ok(dir);
    }
    let staging = scratch.join(format!("runner-{hash}.{}", std::process::id()));
    tokio::fs::create_dir_all(&staging)
        .await
        .map_err(SandboxError::io(format!("creating {}", staging.display())))?;
    for (name, data) in runner_files() {
        let path = staging.join(name);
        tokio::fs::write(&path, data)
            .await
            .map_err(SandboxError::io(format!("writing {}", path.display())))?;
    }
    // Another oi may have unpacked the same files meanwhile: either copy will do.
    if tokio::fs::rename(&staging, &dir).await.is_err() {
        let _ = tokio::fs::remove_dir_all(&staging).await;
    }
    Ok(dir)
}
