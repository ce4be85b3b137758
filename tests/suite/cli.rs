//! The `oi` binary as a user runs it: `oi exec`, exit codes, error messages, clean-up.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use oi::core::code_interpreter::{docker, Engine};

use super::{docker_config, image};

fn oi() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_oi"));
    cmd.stdin(Stdio::null());
    cmd
}

/// Starts `oi` with `args` and waits until it has printed `first` on stdout.
fn spawn_until(args: &[&str], first: &[u8]) -> std::process::Child {
    let mut child = oi()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = vec![0u8; first.len()];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut seen)
        .unwrap();
    assert_eq!(seen, first);
    child
}

fn output(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().expect("oi runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn exec_blocks_share_one_session() {
    if image().is_none() {
        return;
    }
    let (code, stdout, stderr) =
        output(oi().args(["exec", "-l", "python", "-c", "x = 41", "-c", "print(x + 1)"]));
    assert_eq!((code, stdout.as_str()), (0, "42\n"), "{stderr}");
}

#[test]
fn exec_reads_stdin_and_its_exit_status_follows_the_code() {
    if image().is_none() {
        return;
    }
    let mut child = oi()
        .args(["exec", "-l", "bash"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"echo from-stdin\nexit_code=7\n(exit $exit_code)\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from-stdin\n");
    assert_eq!(out.status.code(), Some(7));

    let (code, _, stderr) = output(oi().args(["exec", "-c", "1/0"]));
    assert_eq!(code, 1, "a Python exception exits 1");
    assert!(stderr.contains("ZeroDivisionError"), "{stderr}");
    let (code, _, stderr) =
        output(oi().args(["exec", "--timeout", "0.5", "-c", "while True: pass"]));
    assert_eq!(code, 124, "{stderr}");
    assert!(stderr.contains("timed out after 0.5 s"), "{stderr}");
}

#[test]
fn exec_json_prints_one_event_per_line() {
    if image().is_none() {
        return;
    }
    let (code, stdout, stderr) =
        output(oi().args(["exec", "--json", "-c", "print('a')", "-c", "print('b')"]));
    assert_eq!(code, 0, "{stderr}");
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<(u64, &str)> = events
        .iter()
        .map(|e| {
            (
                e["block"].as_u64().unwrap(),
                e["event"]["type"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [(0, "stdout"), (0, "done"), (1, "stdout"), (1, "done")],
        "a print is one event"
    );
    assert_eq!(events[2]["event"]["text"], "b\n");
    assert_eq!(events[3]["event"]["status"], "ok");
}

#[test]
fn a_failed_image_build_shows_the_failing_step_and_its_log() {
    if image().is_none() {
        return;
    }
    let (code, _, stderr) =
        output(oi().args(["image", "build", "--base-image", "oi-test-missing-base:0"]));
    assert_eq!(code, 125, "{stderr}");
    assert!(
        stderr.contains("building the sandbox image failed at Step 2/"),
        "{stderr}"
    );
    assert!(stderr.contains("FROM ${BASE_IMAGE}"), "{stderr}");
    assert!(stderr.contains("last lines of the build:"), "{stderr}");
    assert!(stderr.contains("oi image bootstrap-base"), "{stderr}");
}

#[test]
fn docker_down_is_one_clear_message() {
    let (code, stdout, stderr) = output(
        oi().env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
            .args(["exec", "-c", "print(1)"]),
    );
    assert_eq!(code, 125, "{stderr}");
    assert!(stdout.is_empty());
    assert!(
        stderr.contains("cannot reach the Docker daemon at unix:///nonexistent/docker.sock"),
        "{stderr}"
    );
    assert!(
        stderr.contains("apt-get install docker.io") && stderr.contains("--unsafe"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        stderr.lines().filter(|l| !l.trim().is_empty()).count(),
        2,
        "short: {stderr}"
    );
}

#[test]
fn unknown_language_lists_the_available_ones() {
    let (code, _, stderr) = output(oi().args(["exec", "-l", "cobol", "-c", "x"]));
    assert_eq!(code, 2);
    assert!(
        stderr.contains("unknown language `cobol`; available: python, shell"),
        "{stderr}"
    );
}

#[test]
fn unsafe_mode_runs_on_the_host_and_says_so_loudly() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) = output(
        oi().current_dir(dir.path())
            .env("XDG_CACHE_HOME", dir.path().join("cache"))
            .args(["exec", "--unsafe", "-c", "import os\nprint(os.getcwd())"]),
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stdout.trim(),
        dir.path().canonicalize().unwrap().display().to_string()
    );
    assert!(
        stderr.contains("WARNING: unsafe mode") && stderr.contains("NOT in a sandbox"),
        "{stderr}"
    );
}

#[test]
fn settings_show_what_is_loosened() {
    let (code, stdout, _) = output(oi().args(["sandbox", "settings"]));
    assert_eq!(code, 0);
    assert!(
        stdout.contains("network") && stdout.contains("none"),
        "{stdout}"
    );
    assert!(!stdout.contains("loosened"), "{stdout}");
    let (_, stdout, _) = output(oi().args(["sandbox", "settings", "--network", "--pids", "none"]));
    let loosened: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("(loosened)"))
        .collect();
    assert_eq!(loosened.len(), 2, "{stdout}");
    assert!(
        loosened[0].starts_with("network") && loosened[1].starts_with("pids limit"),
        "{stdout}"
    );
}

#[test]
fn verbose_exec_shows_the_effective_settings() {
    if image().is_none() {
        return;
    }
    let (code, _, stderr) = output(oi().args(["exec", "-v", "--network", "-c", "pass"]));
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("in container"), "{stderr}");
    assert!(
        stderr.contains("network") && stderr.contains("(loosened)"),
        "{stderr}"
    );
    assert!(stderr.contains("no-new-privileges"), "{stderr}");
}

/// Peak resident memory of a process (VmHWM), read from /proc, in bytes.
pub(super) fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[test]
fn printing_100_mb_keeps_oi_memory_bounded() {
    if image().is_none() {
        return;
    }
    let code = "import sys\nline = 'y' * 1023 + '\\n'\nfor _ in range(100 * 1024):\n    sys.stdout.write(line)";
    let mut child = oi()
        .args(["exec", "-c", code])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0usize;
        loop {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n,
            }
        }
    });
    let mut peak = 0;
    while child.try_wait().unwrap().is_none() {
        if let Some(rss) = peak_rss(pid) {
            peak = peak.max(rss);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let total = reader.join().unwrap();
    assert_eq!(total, 100 << 20, "every byte came through");
    assert!(child.wait().unwrap().success());
    assert!(
        peak > 0 && peak < 100 << 20,
        "oi's peak memory was {} MiB",
        peak >> 20
    );
}

#[test]
fn a_session_whose_owner_is_gone_shows_as_gone_and_a_later_start_removes_it() {
    let Some(tag) = image() else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let engine = Engine::connect(docker_config()).await.unwrap();
        let docker = engine.docker().unwrap().clone();
        // A session container as a killed oi of this machine leaves it: its owner's pid
        // is gone (a process that ran and ended), in this PID namespace.
        let mut ended = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = ended.id();
        ended.wait().unwrap();
        // Being abandoned, it may be swept by any oi that starts meanwhile (tests run in
        // parallel): that is the behaviour too, so an attempt swept before it was seen
        // is made again.
        for attempt in 0..5 {
            let session = format!("test-gone-{}-{attempt}", std::process::id());
            let labels = [
                (docker::MANAGED_LABEL, "1".to_string()),
                (docker::SESSION_LABEL, session.clone()),
                (docker::OWNER_LABEL, format!("{dead_pid}:1")),
                (
                    docker::OWNER_HOST_LABEL,
                    oi::core::code_interpreter::host_identity().to_string(),
                ),
            ];
            let body = bollard::models::ContainerCreateBody {
                image: Some(tag.to_string()),
                entrypoint: Some(vec!["sleep".into(), "60".into()]),
                labels: Some(
                    labels
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect(),
                ),
                ..Default::default()
            };
            let options = bollard::query_parameters::CreateContainerOptionsBuilder::default()
                .name(&format!("oi-{session}"))
                .build();
            let id = docker
                .create_container(Some(options), body)
                .await
                .unwrap()
                .id;
            if docker.start_container(&id, None).await.is_err() {
                continue;
            }
            let (_, listing, _) = output(oi().args(["sandbox", "ls"]));
            let Some(row) = listing.lines().find(|l| l.contains(&session)) else {
                continue;
            };
            assert!(row.contains("gone") && row.contains("running"), "{row}");

            let (code, _, stderr) = output(oi().args(["exec", "-c", "pass"]));
            assert_eq!(code, 0, "{stderr}");
            let left = docker.inspect_container(&id, None).await;
            if left.is_ok() {
                docker::remove(&docker, &id).await.unwrap();
            }
            assert!(left.is_err(), "a later start swept the abandoned session");
            return;
        }
        panic!("every attempt was swept before `oi sandbox ls` could show it");
    });
}

#[test]
fn ctrl_c_interrupts_the_block_and_exits_130() {
    if image().is_none() {
        return;
    }
    let child = spawn_until(
        &[
            "exec",
            "-c",
            "import time\nprint('start', flush=True)\ntime.sleep(60)\nprint('not reached')",
        ],
        b"start\n",
    );
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("KeyboardInterrupt"), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("not reached"));
}

#[test]
fn sandbox_rm_removes_a_container_by_session_id() {
    if image().is_none() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let Some((engine, session)) =
            super::session(oi::core::code_interpreter::Backend::Docker).await
        else {
            return;
        };
        let id = session.container_id().unwrap().to_string();
        let (code, stdout, stderr) = output(oi().args(["sandbox", "rm", session.id()]));
        assert_eq!(code, 0, "{stderr}");
        assert_eq!(stdout.trim(), format!("oi-{}", session.id()));
        let docker = engine.docker().unwrap();
        assert!(
            docker.inspect_container(&id, None).await.is_err(),
            "removed"
        );
        let (code, _, stderr) = output(oi().args(["sandbox", "rm", "no-such-sandbox"]));
        assert_eq!(code, 1);
        assert!(
            stderr.contains("no oi container matches `no-such-sandbox`"),
            "{stderr}"
        );
        drop(session);
    });
}

#[test]
fn a_configured_image_that_is_missing_is_a_clear_error() {
    let (code, _, stderr) =
        output(oi().args(["exec", "--image", "oi-test-no-such-image:1", "-c", "pass"]));
    if image().is_none() {
        return;
    }
    assert_eq!(code, 125, "{stderr}");
    assert!(
        stderr.contains("the sandbox image oi-test-no-such-image:1 is missing on this machine"),
        "{stderr}"
    );
}
