//! A backend that is neither Docker nor the host backend, written here against the
//! public trait only: the real runner as a child process in a folder of its own per
//! sandbox, files copied with `files::pack`/`unpack`. It drives a whole engine, session
//! and conversation, which is what a later backend (Kubernetes pods) needs — nothing in
//! `respond/` or the terminal knows it exists.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use oi::core::code_interpreter::{
    files, image, Backend, Capability, Engine, OwnerState, SandboxBackend, SandboxConfig,
    SandboxError, SandboxInfo, SandboxSpec, Started, Transport,
};
use oi::core::config::Config;
use oi::core::llm::Endpoint;
use oi::core::protocol::TurnEnd;
use oi::core::respond::Conversation;
use tokio::process::{Child, Command};

use super::llm_server::{openai, ScriptedServer};
use super::{assert_ok, run, session_with};

/// Runners as child processes, each in a folder of its own that stands for
/// `/workspace`. Records what the engine asked of it.
struct ChildBackend {
    root: tempfile::TempDir,
    runners: Mutex<HashMap<String, (Child, String)>>,
    calls: Mutex<Vec<String>>,
}

impl ChildBackend {
    fn new() -> Arc<ChildBackend> {
        let root = tempfile::tempdir().unwrap();
        let runner = root.path().join("runner");
        std::fs::create_dir(&runner).unwrap();
        for (name, data) in image::runner_files() {
            std::fs::write(runner.join(name), data).unwrap();
        }
        Arc::new(ChildBackend {
            root,
            runners: Mutex::default(),
            calls: Mutex::default(),
        })
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    fn record(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }

    /// The host folder behind a sandbox's `/workspace/...` path.
    fn host_path(&self, sandbox: &str, path: &str) -> PathBuf {
        let inside = path.strip_prefix(files::WORKSPACE).unwrap_or(path);
        self.root
            .path()
            .join(sandbox)
            .join(inside.trim_start_matches('/'))
    }

    fn start_runner(&self, spec: SandboxSpec<'_>) -> oi::core::code_interpreter::Result<Started> {
        self.record(format!("start {}", spec.name));
        let workspace = self.host_path(spec.name, files::WORKSPACE);
        std::fs::create_dir_all(&workspace).unwrap();
        let mut child = Command::new("python3")
            .arg("-u")
            .arg(self.root.path().join("runner/runner.py"))
            .arg("--host")
            .current_dir(&workspace)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| SandboxError::Io {
                context: "starting python3".into(),
                source,
            })?;
        let transport = Transport::from_pipes(
            child.stdin.take().unwrap(),
            child.stdout.take().unwrap(),
            child.stderr.take().unwrap(),
        );
        self.runners
            .lock()
            .unwrap()
            .insert(spec.name.to_string(), (child, spec.session.to_string()));
        Ok(Started {
            id: spec.name.to_string(),
            transport,
        })
    }
}

impl SandboxBackend for ChildBackend {
    fn name(&self) -> &'static str {
        "child"
    }

    fn is_sandboxed(&self) -> bool {
        false
    }

    fn start<'a>(
        &'a self,
        spec: SandboxSpec<'a>,
    ) -> BoxFuture<'a, oi::core::code_interpreter::Result<Started>> {
        Box::pin(async move { self.start_runner(spec) })
    }

    fn exit_reason<'a>(&'a self, sandbox: &'a str) -> BoxFuture<'a, Option<String>> {
        Box::pin(async move {
            // Its pipes close a moment before it can be waited for.
            for _ in 0..20 {
                let status = self
                    .runners
                    .lock()
                    .unwrap()
                    .get_mut(sandbox)
                    .and_then(|(child, _)| child.try_wait().ok().flatten());
                if let Some(status) = status {
                    return Some(format!("the child runner ended ({status})"));
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            None
        })
    }

    fn remove<'a>(
        &'a self,
        sandbox: &'a str,
    ) -> BoxFuture<'a, oi::core::code_interpreter::Result<()>> {
        Box::pin(async move {
            self.record(format!("remove {sandbox}"));
            let runner = self.runners.lock().unwrap().remove(sandbox);
            if let Some((mut child, _)) = runner {
                let _ = child.kill().await;
            }
            let _ = std::fs::remove_dir_all(self.root.path().join(sandbox));
            Ok(())
        })
    }

    fn remove_in_background(&self, sandbox: &str) {
        self.runners.lock().unwrap().remove(sandbox);
    }

    fn put_archive<'a>(
        &'a self,
        sandbox: &'a str,
        dest: &'a str,
        archive: File,
    ) -> BoxFuture<'a, oi::core::code_interpreter::Result<u64>> {
        Box::pin(async move {
            self.record(format!("put {dest}"));
            let size = archive.metadata().unwrap().len();
            files::unpack(archive, &self.host_path(sandbox, dest))?;
            Ok(size)
        })
    }

    fn get_archive<'a>(
        &'a self,
        sandbox: &'a str,
        source: &'a str,
        limit: u64,
    ) -> BoxFuture<'a, oi::core::code_interpreter::Result<File>> {
        Box::pin(async move {
            self.record(format!("get {source}"));
            let path = self.host_path(sandbox, source);
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let archive = files::pack(&path, &name, 1000, 1000)?;
            if archive.metadata().unwrap().len() > limit {
                return Err(SandboxError::CopyTooLarge {
                    path: source.to_string(),
                    limit,
                });
            }
            Ok(archive)
        })
    }

    fn user<'a>(
        &'a self,
        _sandbox: &'a str,
    ) -> BoxFuture<'a, oi::core::code_interpreter::Result<String>> {
        Box::pin(async { Ok("1000:1000".to_string()) })
    }

    fn list(&self) -> BoxFuture<'_, oi::core::code_interpreter::Result<Vec<SandboxInfo>>> {
        let list = self
            .runners
            .lock()
            .unwrap()
            .iter()
            .map(|(id, (_, session))| SandboxInfo {
                id: id.clone(),
                name: id.clone(),
                session: session.clone(),
                image: String::new(),
                state: "running".into(),
                status: String::new(),
                created: 0,
                owner_pid: Some(std::process::id()),
                owner_alive: true,
                owner_state: OwnerState::Alive,
            })
            .collect();
        Box::pin(async move { Ok(list) })
    }
}

/// What the configuration of an engine on this backend says: no sandbox.
fn config() -> SandboxConfig {
    SandboxConfig {
        backend: Backend::Host,
        ..SandboxConfig::default()
    }
}

fn engine(backend: &Arc<ChildBackend>) -> Engine {
    Engine::with_backend(config(), backend.clone())
        .expect("an unsandboxed backend for a config without a sandbox")
}

/// A host folder with one file, as a front end would pack it.
fn packed(dir: &Path) -> File {
    std::fs::create_dir_all(dir.join("inputs")).unwrap();
    std::fs::write(dir.join("inputs/x.txt"), "from the front end").unwrap();
    files::pack(&dir.join("inputs"), "inputs", 0, 0).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_of_its_own_runs_sessions_through_the_trait() {
    let backend = ChildBackend::new();
    let engine = engine(&backend);
    let mut s = engine.open().await.expect("session opens");
    let first = s.sandbox_id().unwrap().to_string();
    assert_eq!(s.container_id(), None, "no container: it runs here");
    assert!(!s.is_sandboxed());
    assert_ok(&run(&mut s, "python", "x = 41").await);
    assert_eq!(run(&mut s, "python", "print(x + 1)").await.stdout, "42\n");
    assert_eq!(run(&mut s, "shell", "echo $((6*7))").await.stdout, "42\n");

    // Archives in and out, as a remote front end moves files.
    let host = tempfile::tempdir().unwrap();
    s.put_archive(".", packed(host.path())).await.unwrap();
    let out = run(
        &mut s,
        "shell",
        "cat inputs/x.txt; mkdir out; echo made > out/r.txt",
    )
    .await;
    assert_eq!(out.stdout, "from the front end");
    let archive = s.get_archive("out", 1 << 20).await.unwrap();
    let back = host.path().join("back");
    files::unpack(archive, &back).unwrap();
    assert_eq!(
        std::fs::read_to_string(back.join("out/r.txt")).unwrap(),
        "made\n"
    );
    let err = s.get_archive("out", 10).await.unwrap_err();
    assert!(
        matches!(err, SandboxError::CopyTooLarge { limit: 10, .. }),
        "{err:?}"
    );
    let err = s.get_archive("../etc", 1 << 20).await.unwrap_err();
    assert!(err.to_string().contains("outside the workspace"), "{err}");
    // The host-path conveniences are the same archives.
    let written = s
        .download("out/r.txt", &host.path().join("again"))
        .await
        .unwrap();
    assert_eq!(written, vec![host.path().join("again/r.txt")]);

    // Its sandboxes are listed, found by name, and a dead one is replaced.
    let listed = engine.find(&first).await.unwrap();
    assert_eq!(listed.session, s.id());
    let out = run(
        &mut s,
        "python",
        "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)",
    )
    .await;
    assert_ne!(
        out.status(),
        oi::core::code_interpreter::ExecStatus::Ok,
        "{out:?}"
    );
    let next = run(&mut s, "python", "print('x' in globals())").await;
    assert_eq!(next.stdout, "False\n", "{next:?}");
    assert!(
        next.notices
            .iter()
            .any(|n| n.contains("the child runner ended") && n.contains("was lost")),
        "{next:?}"
    );
    let second = s.sandbox_id().unwrap().to_string();
    assert_ne!(first, second);
    s.close().await.unwrap();

    let calls = backend.calls();
    assert_eq!(
        calls,
        vec![
            format!("start {first}"),
            "put /workspace".to_string(),
            "get /workspace/out".to_string(),
            "get /workspace/out".to_string(),
            "get /workspace/out/r.txt".to_string(),
            format!("remove {first}"),
            format!("start {second}"),
            format!("remove {second}"),
        ]
    );
    assert!(engine.list().await.unwrap().is_empty(), "nothing left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_of_its_own_drives_a_whole_conversation() {
    let server = ScriptedServer::start(vec![
        openai::execute("python", "print(6*7)"),
        openai::text(&["It is 42."]),
    ])
    .await;
    let backend = ChildBackend::new();
    let engine = engine(&backend);
    let mut config = Config::new(
        "test-model",
        Endpoint::openai(server.base_url(), Some("sk-test".into())),
    );
    config.sandbox = engine.config().clone();
    config.auto_run = true;
    let provider = config.endpoint.provider().unwrap();
    let mut conv = Conversation::with_provider(config, provider, engine);
    let t = super::conversation::turn(&mut conv, "What is 6*7?").await;
    assert_eq!(t.end, TurnEnd::Finished, "{t:#?}");
    assert_eq!(t.console(), "42\n");
    assert_eq!(t.prose(), "It is 42.");
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    let results: Vec<&str> = requests[1].body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .filter_map(|m| m["content"].as_str())
        .collect();
    assert_eq!(
        results,
        ["42\n"],
        "the block's output went back to the model"
    );
    conv.shutdown().await;
    let calls = backend.calls();
    assert!(calls[0].starts_with("start oi-"), "{calls:?}");
    assert!(calls.last().unwrap().starts_with("remove oi-"), "{calls:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_must_be_what_the_configuration_promises() {
    // A configuration that promises a sandbox never gets one that runs code here.
    let sandboxed = SandboxConfig::default();
    let err = Engine::with_backend(sandboxed, ChildBackend::new()).unwrap_err();
    assert!(
        matches!(
            err,
            SandboxError::BackendMismatch {
                configured: Backend::Docker,
                backend: "child"
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("asks for a sandbox"), "{err}");
    // No images on a backend without them: a clear error, not a Docker call.
    let mut engine = engine(&ChildBackend::new());
    let err = engine.ensure_image(false, &mut |_| {}).await.unwrap_err();
    assert!(
        matches!(
            err,
            SandboxError::Unsupported {
                backend: "child",
                capability: Capability::Images
            }
        ),
        "{err:?}"
    );
    // The host backend is chosen only when asked for, and needs its scratch folder.
    let err = Engine::connect(config()).await.unwrap_err();
    assert!(
        matches!(
            err,
            SandboxError::MissingSetting {
                backend: "host",
                ..
            }
        ),
        "{err:?}"
    );
}

/// The host backend has no workspace to copy into: a clear error, whatever the archive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_backend_copies_no_archives() {
    let Some((_engine, s)) = session_with(Backend::Host, |_| {}).await else {
        return;
    };
    let host = tempfile::tempdir().unwrap();
    let err = s.put_archive(".", packed(host.path())).await.unwrap_err();
    assert!(
        matches!(
            err,
            SandboxError::Unsupported {
                backend: "host",
                capability: Capability::Files
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        oi::terminal_interface::advice::describe(&err),
        "--unsafe runs on this machine: its files are already here"
    );
    assert!(s.get_archive("x", 1).await.is_err());
    s.close().await.unwrap();
}
