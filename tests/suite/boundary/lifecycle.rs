//! Containers come and go with their oi, and nothing else: a killed oi's sandbox stops
//! and is removed by itself (D5), a sweep never touches a live session of an oi in
//! another PID namespace (D6) or a container that is not a session (D16), and private
//! workspaces cannot fill the host's disk (D9).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bollard::models::ContainerCreateBody;
use bollard::query_parameters::CreateContainerOptionsBuilder;
use bollard::Docker;
use oi::core::code_interpreter::{docker, Backend, Engine, ExecStatus, SandboxError, Workspace};

use super::super::chat::{model_args, Home};
use super::super::llm_server::{openai, ScriptedServer};
use super::super::{docker_config, docker_required, image, run, session_with};

fn oi_bin() -> &'static str {
    env!("CARGO_BIN_EXE_oi")
}

/// Whether this process may make PID namespaces (root, as in CI).
fn can_unshare() -> bool {
    let root = rustix::process::geteuid().is_root();
    assert!(
        root || !docker_required(),
        "these tests make PID namespaces and need root (CI runs as root)"
    );
    root
}

/// `oi exec -v` with `code`, in a PID namespace of its own, as an oi in a dev container
/// or another CI job on a shared daemon runs: its pids mean nothing outside. Returns
/// the `unshare` process (killing it SIGKILLs the oi inside) and the session's
/// container id, once the block has printed `up`.
fn inner_oi(code: &str) -> (Child, String) {
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--mount-proc", "--kill-child", "--"])
        .arg(oi_bin());
    exec_until_up(cmd, code)
}

/// `cmd` (an `oi` to which `exec -v … -c CODE` is added) started, and the container
/// of its session, once the block has printed `up`.
fn exec_until_up(mut cmd: Command, code: &str) -> (Child, String) {
    let mut child = cmd
        .args(["exec", "-v", "--workspace", "none", "-c", code])
        .env(
            "OI_BASE_IMAGE",
            std::env::var("OI_BASE_IMAGE").unwrap_or_default(),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("oi runs");
    // Read its stderr to the end (a closed pipe would fail oi's later prints), and
    // pick the container's id from it.
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (found, named) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            // "oi: session S in container C from IMAGE"
            if let Some(rest) = line.split(" in container ").nth(1) {
                let _ = found.send(rest.split_whitespace().next().unwrap_or("").to_string());
            }
        }
    });
    let container = named
        .recv_timeout(Duration::from_secs(60))
        .expect("oi -v names its container");
    let mut first = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert_eq!(first, "up\n");
    (child, container)
}

async fn state_of(docker: &Docker, id: &str) -> Option<String> {
    let info = docker.inspect_container(id, None).await.ok()?;
    Some(
        info.state
            .and_then(|s| s.status)
            .map(|s| s.to_string())
            .unwrap_or_default(),
    )
}

/// Waits until the container is gone or stopped; returns how long it took.
async fn until_stopped(docker: &Docker, id: &str, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        match state_of(docker, id).await.as_deref() {
            None | Some("exited") | Some("dead") | Some("removing") => {
                return Some(started.elapsed())
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d6_a_sweep_spares_a_live_session_of_an_oi_in_another_pid_namespace() {
    if image().is_none() || !can_unshare() {
        return;
    }
    let engine = Engine::connect(docker_config()).await.unwrap();
    let docker = engine.docker().unwrap().clone();
    let (inner, container) =
        inner_oi("import time\nprint('up', flush=True)\ntime.sleep(8)\nprint('done')");
    let listed = engine.list().await.unwrap();
    let mine = listed
        .iter()
        .find(|c| c.id.starts_with(&container))
        .expect("listed");
    assert_eq!(
        mine.owner_state,
        oi::core::code_interpreter::OwnerState::Elsewhere,
        "its pid means nothing here: {mine:?}"
    );
    // Two sweeps from here: this process's and a whole `oi exec`'s start-up.
    let swept = engine.sweep().await.unwrap();
    assert!(swept.iter().all(|c| !c.id.starts_with(&container)));
    let out = Command::new(oi_bin())
        .args(["exec", "--workspace", "none", "-c", "pass"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        state_of(&docker, &container).await.as_deref(),
        Some("running")
    );
    // And the session it belongs to goes on to the end of its block.
    let finished = inner.wait_with_output().unwrap();
    assert!(finished.status.success(), "{finished:?}");
    assert_eq!(String::from_utf8_lossy(&finished.stdout), "done\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d5_a_killed_oi_s_container_stops_mid_block_and_is_removed_by_itself() {
    if image().is_none() || !can_unshare() {
        return;
    }
    let engine = Engine::connect(docker_config()).await.unwrap();
    let docker = engine.docker().unwrap().clone();
    // A busy block, and an oi no other oi may sweep for (another PID namespace): the
    // container has to stop by itself.
    let (mut inner, container) = inner_oi("print('up', flush=True)\nwhile True: pass");
    assert_eq!(
        state_of(&docker, &container).await.as_deref(),
        Some("running")
    );
    inner.kill().unwrap(); // SIGKILL to unshare, which SIGKILLs the oi inside
    inner.wait().unwrap();
    let stopped = until_stopped(&docker, &container, Duration::from_secs(15)).await;
    assert!(
        stopped.is_some(),
        "the container still runs 15 s after its oi was killed"
    );
    let started = Instant::now();
    while state_of(&docker, &container).await.is_some() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the stopped container was not removed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn signal(child: &Child, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, signal).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d5_sigterm_and_sighup_stop_oi_exec_as_ctrl_c_then_quit() {
    if image().is_none() {
        return;
    }
    let engine = Engine::connect(docker_config()).await.unwrap();
    let docker = engine.docker().unwrap().clone();
    for (sig, code) in [
        (rustix::process::Signal::TERM, 143),
        (rustix::process::Signal::HUP, 129),
    ] {
        let (child, container) = exec_until_up(
            Command::new(oi_bin()),
            "print('up', flush=True)\nwhile True: pass",
        );
        signal(&child, sig);
        let out = tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(out.status.code(), Some(code), "{sig:?}: {out:?}");
        // Removed by oi itself before it exited, not later by anyone.
        assert_eq!(state_of(&docker, &container).await, None, "{sig:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d5_sigterm_stops_the_chat_saves_the_conversation_and_removes_the_sandbox() {
    if image().is_none() {
        return;
    }
    let server = ScriptedServer::start(vec![openai::execute(
        "python",
        "print('up', flush=True)\nwhile True: pass",
    )])
    .await;
    let home = Home::new();
    let mut cmd = home.oi(&home.project());
    cmd.args(["-y", "--json"])
        .args(model_args(&server))
        .arg("spin")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let pid = child.id().unwrap();
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(child.stdout.take().unwrap()));
    let mut seen = Vec::new();
    while let Some(line) = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("the block started within 60 s")
        .unwrap()
    {
        let up = line.contains("\"content\":\"up\\n\"");
        seen.push(line);
        if up {
            break;
        }
    }
    let engine = Engine::connect(docker_config()).await.unwrap();
    let docker = engine.docker().unwrap().clone();
    let container = engine
        .list()
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.owner_pid == Some(pid))
        .expect("its session is listed")
        .id;
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    while let Some(line) = lines.next_line().await.unwrap() {
        seen.push(line);
    }
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("oi exited within 30 s")
        .unwrap();
    assert_eq!(status.code(), Some(143), "{seen:#?}");
    assert!(
        seen.last()
            .is_some_and(|l| l.contains("turn_end") && l.contains("interrupted")),
        "{seen:#?}"
    );
    assert_eq!(state_of(&docker, &container).await, None);
    let saved = std::fs::read_dir(home.conversations())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .expect("the conversation was saved");
    let text = std::fs::read_to_string(saved).unwrap();
    assert!(
        text.contains("spin") && text.contains("while True"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d16_sweeps_never_touch_containers_that_are_not_sessions() {
    let Some(tag) = image() else {
        return;
    };
    let engine = Engine::connect(docker_config()).await.unwrap();
    let docker = engine.docker().unwrap().clone();
    // As a build of a project image (FROM oi's image) makes them: created from oi's
    // image, with whatever labels it inherits; and one with the label older oi images
    // carried, as a build from such an image has.
    let mut made = Vec::new();
    for (suffix, labels) in [
        ("plain", vec![]),
        ("old-label", vec![(docker::MANAGED_LABEL, "1")]),
    ] {
        let name = format!("oi-test-d16-{suffix}-{}", std::process::id());
        let body = ContainerCreateBody {
            image: Some(tag.to_string()),
            entrypoint: Some(vec!["sleep".into(), "30".into()]),
            labels: Some(
                labels
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        let id = docker
            .create_container(Some(options), body)
            .await
            .unwrap()
            .id;
        made.push(id);
    }
    // One started, one left created: both states a build step goes through.
    docker.start_container(&made[0], None).await.unwrap();
    let swept = engine.sweep().await.unwrap();
    let listed = engine.list().await.unwrap();
    for id in &made {
        assert!(swept.iter().all(|c| &c.id != id), "swept a build container");
        assert!(listed.iter().all(|c| &c.id != id), "listed as a session");
        assert!(state_of(&docker, id).await.is_some(), "still there");
        docker::remove(&docker, id).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d9_a_private_workspace_fills_up_without_filling_the_host() {
    let Some((_engine, mut s)) = session_with(Backend::Docker, |c| {
        c.workspace = Workspace::Empty;
        c.hardening.workspace_bytes = 64 << 20;
    })
    .await
    else {
        return;
    };
    let out = run(
        &mut s,
        "shell",
        "grep ' /workspace ' /proc/mounts; dd if=/dev/zero of=/workspace/big bs=1M count=200 2>&1 | grep -v records; \
         ls -l /workspace/big | awk '{print $5}'",
    )
    .await;
    assert!(
        out.stdout.contains("tmpfs") && out.stdout.contains("size=65536k"),
        "{out:?}"
    );
    assert!(out.stdout.contains("nosuid"), "{out:?}");
    assert!(
        out.stdout.contains("No space left on device"),
        "the limit is hit: {out:?}"
    );
    assert!(
        out.stdout.trim_end().ends_with(&(64u64 << 20).to_string()),
        "the file stopped at the limit: {out:?}"
    );
    // The session goes on: freeing space works.
    let out = run(
        &mut s,
        "shell",
        "rm /workspace/big && echo freed > /workspace/f && cat /workspace/f",
    )
    .await;
    assert_eq!(
        (out.status(), out.stdout.as_str()),
        (ExecStatus::Ok, "freed\n")
    );
    s.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d9_a_copy_workspace_larger_than_its_limit_is_a_clear_error() {
    if image().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("big.bin"), vec![7u8; 40 << 20]).unwrap();
    let engine = super::super::engine_with(Backend::Docker, |c| {
        c.workspace = Workspace::Copy(dir.path().to_path_buf());
        c.hardening.workspace_bytes = 16 << 20;
    })
    .await
    .unwrap();
    let err = engine.open().await.unwrap_err();
    // Core says what (the folder, the limit); the terminal says what to type.
    assert!(
        matches!(&err, SandboxError::WorkspaceTooLarge { dir: d, limit } if d == dir.path() && *limit == 16 << 20),
        "{err:?}"
    );
    let shown = oi::terminal_interface::advice::describe(&err);
    assert!(
        shown.contains("does not fit the sandbox's private workspace (16 MiB)")
            && shown.contains("--workspace-size"),
        "{shown}"
    );
}

#[test]
fn d9_the_private_workspace_size_is_shown_with_the_other_settings() {
    let home = tempfile::tempdir().unwrap();
    let project = home.path().join("project");
    std::fs::create_dir(&project).unwrap();
    let settings = |args: &[&str]| {
        let mut cmd = Command::new(oi_bin());
        super::super::isolate(&mut cmd, home.path());
        let out = cmd
            .args(["sandbox", "settings"])
            .args(args)
            .current_dir(&project)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let line = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("private workspace"))
            .unwrap_or_else(|| panic!("{text}"))
            .to_string()
    };
    let default = settings(&[]);
    assert!(
        line(&default).contains("1 GiB in memory") && !line(&default).contains("loosened"),
        "{default}"
    );
    let raised = settings(&["--workspace-size", "4g"]);
    assert!(
        line(&raised).contains("4 GiB") && line(&raised).ends_with("(loosened)"),
        "{raised}"
    );
}
