//! What only a Docker sandbox does: hardening, resource limits against hostile code,
//! images, container lifecycle and crash clean-up.

use std::time::{Duration, Instant};

use oi::core::code_interpreter::{docker, Backend, ExecRequest, ExecStatus};
use tokio_util::sync::CancellationToken;

use super::{assert_ok, engine_with, run, run_req, session, session_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_is_hardened_by_default() {
    let Some((_engine, mut s)) = session(Backend::Docker).await else {
        return;
    };
    let out = run(
        &mut s,
        "shell",
        "id -u; grep -E '^(CapEff|NoNewPrivs)' /proc/self/status",
    )
    .await;
    assert_ok(&out);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_ne!(lines[0], "0", "code does not run as root");
    assert_eq!(
        lines[1].split_whitespace().collect::<Vec<_>>(),
        ["CapEff:", "0000000000000000"]
    );
    assert_eq!(
        lines[2].split_whitespace().collect::<Vec<_>>(),
        ["NoNewPrivs:", "1"]
    );

    let writes = run(
        &mut s,
        "shell",
        "for d in / /etc /usr /opt/oi /home; do touch $d/oi-probe 2>/dev/null && echo \"wrote $d\"; done\n\
         touch /workspace/ok /tmp/ok && echo writable",
    )
    .await;
    assert_eq!(
        writes.stdout, "writable\n",
        "only /workspace and /tmp are writable: {writes:?}"
    );

    let network = run(
        &mut s,
        "python",
        "import socket\n\
         def reach(host, port):\n    try:\n        socket.create_connection((host, port), timeout=3).close()\n        return 'reached'\n    except OSError as e:\n        return type(e).__name__\n\
         print(reach('1.1.1.1', 53), reach('deb.debian.org', 80))\n\
         print(sorted(name for _, name in socket.if_nameindex()))",
    )
    .await;
    assert_ok(&network);
    assert!(
        !network.stdout.contains("reached"),
        "no network: {network:?}"
    );
    assert!(
        network.stdout.ends_with("['lo']\n"),
        "only loopback: {network:?}"
    );

    let socket = run(
        &mut s,
        "shell",
        "ls /var/run/docker.sock /run/docker.sock 2>&1 | grep -c 'No such file'",
    )
    .await;
    assert_eq!(
        socket.stdout, "2\n",
        "the Docker socket is not in the sandbox"
    );
    s.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loosened_network_is_explicit_and_visible() {
    let Some((engine, s)) = session_with(Backend::Docker, |c| c.hardening.network = true).await
    else {
        return;
    };
    let settings = s.hardening().describe();
    let network = settings.iter().find(|x| x.name == "network").unwrap();
    assert!(!network.safe_default && network.value.contains("allowed"));
    let docker = engine.docker().unwrap();
    let info = docker
        .inspect_container(s.container_id().unwrap(), None)
        .await
        .unwrap();
    assert_eq!(
        info.host_config.unwrap().network_mode.as_deref(),
        Some("bridge")
    );
    s.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_bomb_is_held_by_the_pids_limit() {
    let Some((_engine, mut s)) =
        session_with(Backend::Docker, |c| c.hardening.pids_limit = Some(128)).await
    else {
        return;
    };
    assert_ok(&run(&mut s, "python", "survivor = 'yes'").await);
    let bomb =
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass";
    let out = run_req(
        &mut s,
        ExecRequest::new("python", bomb).with_timeout(Duration::from_secs(2)),
    )
    .await;
    assert_eq!(out.status(), ExecStatus::TimedOut, "{out:?}");
    let shell_bomb = "bomb() { bomb | bomb & }; bomb; sleep 2";
    let out = run_req(
        &mut s,
        ExecRequest::new("shell", shell_bomb).with_timeout(Duration::from_secs(3)),
    )
    .await;
    assert!(
        matches!(out.status(), ExecStatus::TimedOut | ExecStatus::Ok),
        "{out:?}"
    );
    // The session is usable again: new processes can start.
    let after = run(&mut s, "shell", "ls / >/dev/null && echo can-fork").await;
    assert_eq!(after.stdout, "can-fork\n", "{after:?}");
    let python = run(
        &mut s,
        "python",
        "import subprocess\nprint(subprocess.run(['echo', 'ok'], capture_output=True).stdout)",
    )
    .await;
    assert_eq!(python.stdout, "b'ok\\n'\n", "{python:?}");
    s.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_bomb_is_killed_with_a_clear_message() {
    let Some((_engine, mut s)) = session_with(Backend::Docker, |c| {
        c.hardening.memory_bytes = Some(256 << 20)
    })
    .await
    else {
        return;
    };
    let out = run(
        &mut s,
        "python",
        "hog = []\nwhile True:\n    hog.append(bytearray(16 << 20))",
    )
    .await;
    assert_eq!(out.status(), ExecStatus::Crashed, "{out:?}");
    let message = out.outcome().message.clone().unwrap();
    assert!(message.contains("out of memory"), "{message}");
    let after = run(&mut s, "python", "print('recovered')").await;
    assert_eq!(after.stdout, "recovered\n");
    s.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matplotlib_figures_come_back_as_png_images() {
    let Some((_engine, mut s)) = session(Backend::Docker).await else {
        return;
    };
    let shown = run(
        &mut s,
        "python",
        "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()",
    )
    .await;
    assert_ok(&shown);
    assert_eq!(shown.images.len(), 1, "{shown:?}");
    assert!(shown.images[0].starts_with(b"\x89PNG\r\n\x1a\n"));
    let left_open = run(
        &mut s,
        "python",
        "fig, ax = plt.subplots()\nax.bar(['a', 'b'], [3, 4]);",
    )
    .await;
    assert_eq!(
        left_open.images.len(),
        1,
        "a figure left open at the end is sent: {left_open:?}"
    );
    let none = run(&mut s, "python", "print('no figure')").await;
    assert!(none.images.is_empty(), "figures are sent once");
    s.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipython_syntax_works_in_cells() {
    let Some((_engine, mut s)) = session(Backend::Docker).await else {
        return;
    };
    assert_ok(&run(&mut s, "python", "import numpy as np, pandas as pd\nv = 3").await);
    let shell = run(&mut s, "python", "!echo from-shell").await;
    assert_ok(&shell);
    assert!(shell.stdout.contains("from-shell"), "{shell:?}");
    let magic = run(&mut s, "python", "%timeit -n 1 -r 1 sum(range(10))\nv + 1").await;
    assert_ok(&magic);
    assert!(
        magic.stdout.contains("per loop") && magic.stdout.ends_with("4\n"),
        "{magic:?}"
    );
    let frame = run(&mut s, "python", "pd.DataFrame({'a': [1, 2]})").await;
    assert!(frame.stdout.contains("a\n0  1\n1  2"), "{frame:?}");
    let error = run(&mut s, "python", "undefined_name").await;
    assert_eq!(error.status(), ExecStatus::Error);
    assert!(error.stderr.contains("NameError"), "{error:?}");
    s.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_output_streams_with_bounded_buffering() {
    let Some((_engine, mut s)) = session(Backend::Docker).await else {
        return;
    };
    let cancel = CancellationToken::new();
    let code = "import sys\nchunk = 'x' * 1023 + '\\n'\nfor _ in range(20 * 1024):\n    sys.stdout.write(chunk)";
    let mut execution = s
        .execute(ExecRequest::new("python", code), &cancel)
        .await
        .unwrap();
    let mut total = 0usize;
    let mut largest = 0usize;
    while let Some(event) = execution.next_event().await {
        if let oi::core::code_interpreter::ExecEvent::Stdout { text } = event {
            total += text.len();
            largest = largest.max(text.len());
        }
    }
    assert_eq!(total, 20 << 20, "every byte arrives");
    assert!(
        largest <= 64 * 1024,
        "output arrives in bounded chunks, not all at once: {largest}"
    );
    s.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_container_is_replaced_and_the_loss_is_reported() {
    let Some((engine, mut s)) = session(Backend::Docker).await else {
        return;
    };
    assert_ok(&run(&mut s, "python", "x = 1").await);
    let docker = engine.docker().unwrap().clone();
    let old = s.container_id().unwrap().to_string();
    let cancel = CancellationToken::new();
    let execution = s
        .execute(
            ExecRequest::new("python", "import time\ntime.sleep(30)"),
            &cancel,
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    docker.kill_container(&old, None).await.unwrap();
    let out = super::collect_checked(execution).await;
    assert_eq!(out.status(), ExecStatus::Crashed, "{out:?}");
    assert!(
        out.outcome()
            .message
            .as_deref()
            .unwrap()
            .contains("state was lost"),
        "{out:?}"
    );
    let next = run(&mut s, "python", "print('x' in globals())").await;
    assert_eq!(next.stdout, "False\n");
    assert!(
        next.notices
            .iter()
            .any(|n| n.contains("started a new sandbox")),
        "{next:?}"
    );
    assert_ne!(s.container_id().unwrap(), old);
    s.close().await.unwrap();
    assert!(
        docker.inspect_container(&old, None).await.is_err(),
        "the dead container was removed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_removes_the_container() {
    let Some((engine, mut s)) = session(Backend::Docker).await else {
        return;
    };
    assert_ok(&run(&mut s, "python", "print(1)").await);
    let id = s.container_id().unwrap().to_string();
    let docker = engine.docker().unwrap().clone();
    let labels = docker
        .inspect_container(&id, None)
        .await
        .unwrap()
        .config
        .unwrap()
        .labels
        .unwrap();
    assert_eq!(labels[docker::SESSION_LABEL], s.id());
    let started = Instant::now();
    s.close().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        docker.inspect_container(&id, None).await.is_err(),
        "container removed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_is_not_rebuilt_when_the_recipe_is_unchanged() {
    let Some(engine) = engine_with(Backend::Docker, |c| c.image = None).await else {
        return;
    };
    let mut engine = engine;
    let mut events = Vec::new();
    let tag = engine
        .ensure_image(false, &mut |p| events.push(p))
        .await
        .unwrap();
    assert_eq!(Some(tag.as_str()), super::image());
    assert_eq!(
        events,
        vec![oi::core::code_interpreter::BuildProgress::Finished { tag, built: false }]
    );
}

/// Waits (up to 60 s) until the engine's pool holds `n` sessions.
async fn pool_holds(engine: &oi::core::code_interpreter::Engine, n: usize) {
    let started = Instant::now();
    while engine.pooled() < n {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "pool not filled: {:?}",
            engine.pool_error()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_pool_hands_out_fresh_sessions_and_is_cleaned_up() {
    let Some(engine) = engine_with(Backend::Docker, |_| {}).await else {
        return;
    };
    engine.start_pool(2);
    pool_holds(&engine, 2).await;
    let mut seen = std::collections::HashSet::new();
    for round in 0..3 {
        let started = Instant::now();
        let mut s = engine.open().await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "from the pool, not started now"
        );
        assert!(
            seen.insert(s.id().to_string()),
            "a pooled session is never handed out twice"
        );
        // State of an earlier session never leaks into a fresh one.
        let out = run(
            &mut s,
            "python",
            &format!("print('leak' in globals()); leak = {round}"),
        )
        .await;
        assert_eq!(out.stdout, "False\n");
        s.close().await.unwrap();
        pool_holds(&engine, 2).await;
    }
    let pooled = engine.pooled_sessions();
    assert_eq!(pooled.len(), 2);
    assert!(pooled.iter().all(|id| !seen.contains(id)));
    engine.shutdown_pool().await;
    assert_eq!(engine.pooled(), 0);
    let left: Vec<_> = docker::list(engine.docker().unwrap())
        .await
        .unwrap()
        .into_iter()
        .filter(|c| pooled.contains(&c.session))
        .collect();
    assert!(left.is_empty(), "pooled containers removed: {left:?}");
}

/// `oi image ls` looks at the daemon `DOCKER_HOST` names, and marks as current oi's
/// image on the base the settings give (flag, `[sandbox] base_image`), not a default.
#[tokio::test]
async fn image_ls_looks_at_docker_host_and_the_configured_base() {
    use super::chat::{run as oi, Home};
    let Some(current) = super::image() else {
        return;
    };
    let home = Home::new();
    let ls = || {
        let mut cmd = home.oi(&home.project());
        cmd.env_remove("OI_BASE_IMAGE").args(["image", "ls"]);
        cmd
    };
    let r = oi(ls().env("DOCKER_HOST", "unix:///nonexistent/docker.sock")).await;
    assert_eq!(r.code, 125, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("cannot reach the Docker daemon at unix:///nonexistent/docker.sock"),
        "{}",
        r.stderr
    );
    let marked = |stdout: &str| {
        stdout
            .lines()
            .any(|l| l.starts_with(current) && l.trim_end().ends_with('*'))
    };
    let r = oi(ls().args(["--base-image", "oi-test-other-base:1"])).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains(current), "{}", r.stdout);
    assert!(
        !marked(&r.stdout),
        "not current on another base: {}",
        r.stdout
    );
    home.write_config("[sandbox]\nbase_image = \"oi-test-other-base:1\"\n");
    let r = oi(&mut ls()).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        !marked(&r.stdout),
        "the configured base counts: {}",
        r.stdout
    );
}
