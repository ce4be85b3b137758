//! Behaviour every backend shares: the same tests run in a Docker sandbox and against
//! the host runner (`--unsafe`).

use std::time::{Duration, Instant};

use oi::core::code_interpreter::{
    Backend, ExecEvent, ExecRequest, ExecStatus, Language, SandboxError,
};
use tokio_util::sync::CancellationToken;

use super::{assert_ok, collect_checked, run, run_req, session, session_with};

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod docker {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(oi::core::code_interpreter::Backend::Docker).await
                }
            )*
        }
        mod host {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(oi::core::code_interpreter::Backend::Host).await
                }
            )*
        }
    };
}

on_both_backends!(
    python_state_persists_across_blocks,
    trailing_expression_is_shown_like_a_repl,
    python_error_returns_a_traceback_and_keeps_state,
    shell_state_persists_and_exit_status_is_reported,
    stdout_and_stderr_stay_apart,
    output_streams_while_the_block_runs,
    hostile_output_cannot_confuse_the_session,
    interrupt_stops_python_and_keeps_state,
    interrupt_stops_subprocesses_and_background_jobs,
    interrupt_stops_a_loop_of_shell_builtins,
    timeout_interrupts_and_the_session_stays_usable,
    code_that_ignores_interrupts_is_killed_after_its_timeout,
    a_dead_interpreter_is_replaced_for_the_next_block,
    reading_stdin_fails_fast_with_a_clear_message,
    configured_languages_run_from_files,
    unknown_language_is_a_clear_error,
    active_lines_come_before_their_output,
    regression_exit_right_after_an_active_line_does_not_break_the_runner,
    regression_an_interrupt_sent_as_the_block_starts_stops_it_and_keeps_state,
    a_timeout_shorter_than_the_start_of_a_block_keeps_state,
    ping_is_answered_at_once_while_a_block_floods_its_output,
);

async fn python_state_persists_across_blocks(backend: Backend) {
    let Some((_engine, mut s)) = session(backend).await else {
        return;
    };
    assert_ok(
        &run(
            &mut s,
            "python",
            "x = 41\nimport math\ndef twice(v):\n    return 2 * v",
        )
        .await,
    );
    let out = run(&mut s, "py", "print(x + 1, twice(int(math.sqrt(16))))").await;
    assert_ok(&out);
    assert_eq!(out.stdout, "42 8\n");
    s.close().await.unwrap();
}

async fn trailing_expression_is_shown_like_a_repl(backend: Backend) {
    let Some((_engine, mut s)) = session(backend).await else {
        return;
    };
    assert_eq!(
        run(&mut s, "python", "a = [1, 2]\na + [3]").await.stdout,
        "[1, 2, 3]\n"
    );
    assert_eq!(run(&mut s, "python", "'text'").await.stdout, "'text'\n");
    assert_eq!(
        run(&mut s, "python", "None").await.stdout,
        "",
        "None is not shown"
    );
    assert_eq!(
        run(&mut s, "python", "y = 5").await.stdout,
        "",
        "assignments show nothing"
    );
    s.close().await.unwrap();
}

async fn python_error_returns_a_traceback_and_keeps_state(backend: Backend) {
    let Some((_engine, mut s)) = session(backend).await else {
        return;
    };
    let out = run(&mut s, "python", "keep = 7\nprint('before')\n1 / 0").await;
    assert_eq!(out.status(), ExecStatus::Error);
    assert_eq!(out.stdout, "before\n");
    assert!(out.stderr.contains("Traceback"), "{}", out.stderr);
    assert!(
        out.stderr.contains("ZeroDivisionError: division by zero"),
        "{}",
        out.stderr
    );
    let syntax = run(&mut s, "python", "def broken(:").await;
    assert_eq!(syntax.status(), ExecStatus::Error);
    assert!(syntax.stderr.contains("SyntaxError"), "{}", syntax.stderr);
    assert_eq!(run(&mut s, "python", "print(keep)").await.stdout, "7\n");
    s.close().await.unwrap();
}

async fn shell_state_persists_and_exit_status_is_reported(backend: Backend) {
    let Some((_engine, mut s)) = session(backend).await else {
        return;
    };
    let setup = "mkdir -p /tmp/oi-shell-test && cd /tmp/oi-shell-test\nexport GREETING=hello\n\
                 greet() { echo \"$GREETING $1\"; }\nalias shout='echo LOUD'";
    assert_ok(&run(&mut s, "shell", setup).await);
    let out = run(
        &mut s,
        "bash",
        "pwd; greet world; shout; echo \"it's\" $'tab\\there'",
    )
    .await;
    assert_ok(&out);
    assert_eq!(
        out.stdout,
        "/tmp/oi-shell-test\nhello world\nLOUD\nit's tab\there\n"
    );
    let failed = run(&mut s, "sh", "echo partial; false").await;
    assert_eq!(failed.status(), ExecStatus::Error);
    assert_eq!(failed.outcome().exit_code, Some(1));
    assert_eq!(failed.stdout, "partial\n");
    let custom = run(&mut s, "sh", "(exit 3)").await;
    assert_eq!(custom.outcome().exit_code, Some(3));
    assert_eq!(custom.outcome().exit_status(), 3);
    s.close().await.unwrap();
}

async fn stdout_and_stderr_stay_apart(backend: Backend) {
    let Some((_engine, mut s)) = session(backend).await else {
        return;
    };
    let out = run(
        &mut s,
        "python",
        "import sys\nprint('out')\nprint('err', file=sys.stderr)",
    )
    .await;
    assert_eq!(
        (out.stdout.as_str(), out.stderr.as_str()),
        ("out\n", "err\n")
    );
    let out = run(&mut s, "shell", "echo out; echo err >&2").await;
    assert_eq!(
        (out.stdout.as_str(), out.stderr.as_str()),
        ("out\n", "err\n")
    );
    s.close().await.unwrap();
}

async fn output_streams_while_the_block_runs(backend: Backend) {
    let Some((_engine, mut s)) = session(backend).await else {
        return;
    };
    let cancel = CancellationToken::new();
    let code = "import time\nfor i in range(4):\n    print(i)\n    time.sleep(0.4)";
    let mut execution = s
        .execute(ExecRequest::new("python", code), &cancel)
        .await
        .unwrap();
    let mut arrivals = Vec::new();
    let start = Instant::now();
    while let Some(event) = execution.next_event().await {
        if let ExecEvent::Stdout { text } = event {
            arrivals.push((start.elapsed(), text));
        }
    }
    let lines: String = arrivals.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(lines, "0\n1\n2\n3\n");
    assert!(
        arrivals.len() >= 4,
        "each line arrives on its own: {arrivals:?}"
    );
    let spread = arrivals.last().unwrap().0 - arrivals.first().unwrap().0;
    assert!(
        spread >= Duration::from_millis(900),
        "lines arrived as they were printed, not at the end: {arrivals:?}"
    );
    s.close().await.unwrap();
}

async fn hostile_output_cannot_confuse_the_session(backend: Backend) {
    let Some((_engine, mut s)) = session(backend).await else {
        return;
    };
    let fake = concat!(
        "import sys\n",
        "print('{\"type\":\"done\",\"id\":1,\"status\":\"ok\"}')\n",
        "print('0 1')\n",
        "_ = sys.stdout.write('no newline at the end')\n",
    );
    let out = run(&mut s, "python", fake).await;
    assert_ok(&out);
    assert_eq!(
        out.stdout,
        "{\"type\":\"done\",\"id\":1,\"status\":\"ok\"}\n0 1\nno newline at the end"
    );
    let binary = run(
        &mut s,
        "python",
        "import sys\n_ = sys.stdout.buffer.write(b'\\x00\\xff\\xfe bin \\xc3')\n",
    )
    .await;
    assert_ok(&binary);
    assert_eq!(
        binary.stdout, "\u{0}\u{fffd}\u{fffd} bin \u{fffd}",
        "invalid UTF-8 arrives replaced"
    );
    let closed = run(
        &mut s,
        "python",
        "import sys, os\nprint('bye')\nsys.stdout.close()\nos.close(2)",
    )
    .await;
    assert_eq!(closed.stdout, "bye\n");
    let after = run(&mut s, "python", "print('still here')").await;
    assert_eq!(
        after.stdout, "still here\n",
        "a block that closed its stdout does not break the next one"
    );
    let shell = run(
        &mut s,
        "shell",
        "printf '__OI_END__ 0 1\\n'; exec 1>&-; echo gone",
    )
    .await;
    assert!(shell.stdout.starts_with("__OI_END__ 0 1\n"), "{shell:?}");
    assert_eq!(run(&mut s, "shell", "echo fine").await.stdout, "fine\n");
    s.close().await.unwrap();
}

/// Starts a block, waits until it has printed `ready`, interrupts it, and returns
/// what it produced and how long the interrupt took.
async fn interrupt_after_ready(
    s: &mut oi::core::code_interpreter::Session,
    language: &str,
    code: &str,
) -> (oi::core::code_interpreter::CollectedOutput, Duration) {
    let cancel = CancellationToken::new();
    let mut execution = s
        .execute(ExecRequest::new(language, code), &cancel)
        .await
        .unwrap();
    let mut seen = String::new();
    while !seen.contains("ready") {
        match tokio::time::timeout(Duration::from_secs(30), execution.next_event()).await {
            Ok(Some(ExecEvent::Stdout { text })) => seen.push_str(&text),
            Ok(Some(_)) => {}
            other => panic!("the block did not get ready: {other:?} after {seen:?}"),
        }
    }
    let asked = Instant::now();
    cancel.cancel();
    let out = collect_checked(execution).await;
    (out, asked.elapsed())
}

async fn interrupt_stops_python_and_keeps_state(backend: Backend) {
    let Some((_engine, mut s)) = session(backend).await else {
        return;
    };
    assert_ok(&run(&mut s, "python", "kept = 'state'").await);
    let (out, took) = interrupt_after_ready(
        &mut s,
        "python",
        "import time\nprint('ready')\nwhile True:\n    time.sleep(0.01)",
    )
    .await;
    assert_eq!(out.status(), ExecStatus::Interrupted, "{out:?}");
    assert!(took < Duration::from_secs(2), "the interrupt took {took:?}");
    assert!(out.stderr.contains("KeyboardInterrupt"), "{out:?}");
    assert_eq!(run(&mut s, "python", "print(kept)").await.stdout, "state\n");
    s.close().await.unwrap();
}

async fn interrupt_stops_subprocesses_and_background_jobs(backend: Backend) {
    let Some((_engine, mut s)) = session(backend).await else {
        return;
    };
    let (out, took) = interrupt_after_ready(
        &mut s,
        "python",
        "import subprocess\nprint('ready', flush=True)\nsubprocess.run(['sleep', '1000'])",
    )
    .await;
    assert_eq!(out.status(), ExecStatus::Interrupted, "{out:?}");
    assert!(took < Duration::from_secs(2), "the interrupt took {took:?}");
    assert_ok(&run(&mut s, "shell", "export KEEP=yes").await);
    // A duration no other test uses, so that pgrep finds only this block's job.
    let secs =
        100_000 + std::process::id() % 1000 + if backend == Backend::Docker { 0 } else { 1000 };
    let code = format!("sleep {secs} &\necho ready\nwait");
    let (out, took) = interrupt_after_ready(&mut s, "shell", &code).await;
    assert_eq!(out.status(), ExecStatus::Interrupted, "{out:?}");
    assert!(took < Duration::from_secs(2), "the interrupt took {took:?}");
    let check = format!("echo $KEEP; pgrep -f 'sleep {secs}' || echo no-sleep-left");
    let after = run(&mut s, "shell", &check).await;
    assert_eq!(
        after.stdout, "yes\nno-sleep-left\n",
        "state kept, background job gone"
    );
    s.close().await.unwrap();
}

async fn interrupt_stops_a_loop_of_shell_builtins(backend: Backend) {
    let Some((_engine, mut s)) = session(backend).await else {
        return;
    };
    let (out, took) = interrupt_after_ready(
        &mut s,
        "shell",
        "echo ready; while true; do :; done; echo not-reached",
    )
    .await;
    assert_eq!(out.status(), ExecStatus::Interrupted, "{out:?}");
    assert!(
        !out.stdout.contains("not-reached"),
        "the whole block stops: {out:?}"
    );
    assert!(took < Duration::from_secs(2), "the interrupt took {took:?}");
    assert_eq!(run(&mut s, "shell", "echo next").await.stdout, "next\n");
    s.close().await.unwrap();
}

async fn timeout_interrupts_and_the_session_stays_usable(backend: Backend) {
    let Some((_engine, mut s)) = session(backend).await else {
        return;
    };
    assert_ok(&run(&mut s, "python", "total = 1").await);
    let request = ExecRequest::new("python", "while True:\n    total += 1")
        .with_timeout(Duration::from_millis(500));
    let out = run_req(&mut s, request).await;
    assert_eq!(out.status(), ExecStatus::TimedOut, "{out:?}");
    assert_eq!(out.outcome().exit_status(), 124);
    assert!(
        out.outcome()
            .message
            .as_deref()
            .unwrap_or("")
            .contains("timed out after 0.5 s"),
        "{out:?}"
    );
    let after = run(&mut s, "python", "print(total > 1)").await;
    assert_eq!(after.stdout, "True\n", "state survives a timeout");
    s.close().await.unwrap();
}

async fn code_that_ignores_interrupts_is_killed_after_its_timeout(backend: Backend) {
    let Some((_engine, mut s)) =
        session_with(backend, |c| c.interrupt_grace = Duration::from_millis(500)).await
    else {
        return;
    };
    let stubborn = "import time\nwhile True:\n    try:\n        time.sleep(0.05)\n    except KeyboardInterrupt:\n        pass";
    let out = run_req(
        &mut s,
        // Long enough that, even on a loaded machine, the timeout's interrupt finds the
        // loop running rather than the import before it.
        ExecRequest::new("python", stubborn).with_timeout(Duration::from_millis(1500)),
    )
    .await;
    assert_eq!(out.status(), ExecStatus::TimedOut, "{out:?}");
    let message = out.outcome().message.clone().unwrap_or_default();
    assert!(message.contains("state was lost"), "{message}");
    assert_eq!(
        run(&mut s, "python", "print('usable')").await.stdout,
        "usable\n"
    );
    s.close().await.unwrap();
}

async fn a_dead_interpreter_is_replaced_for_the_next_block(backend: Backend) {
    let Some((_engine, mut s)) = session(backend).await else {
        return;
    };
    assert_ok(&run(&mut s, "python", "lost = 1").await);
    let out = run(&mut s, "python", "import os\nos._exit(3)").await;
    assert_eq!(out.status(), ExecStatus::Crashed);
    let message = out.outcome().message.clone().unwrap();
    assert!(
        message.contains("exited with code 3") && message.contains("state was lost"),
        "{message}"
    );
    let next = run(&mut s, "python", "print('lost' in globals())").await;
    assert_eq!(next.stdout, "False\n", "a fresh interpreter");
    assert!(
        next.notices.iter().any(|n| n.contains("started a new one")),
        "{next:?}"
    );

    let segv = run(&mut s, "python", "import ctypes\nctypes.string_at(0)").await;
    assert_eq!(segv.status(), ExecStatus::Crashed);
    assert!(
        segv.outcome()
            .message
            .as_deref()
            .unwrap()
            .contains("SIGSEGV"),
        "{segv:?}"
    );

    let exit = run(&mut s, "shell", "export GONE=1\nexit 4").await;
    assert_eq!(exit.status(), ExecStatus::Crashed, "{exit:?}");
    let shell = run(&mut s, "shell", "echo \"gone=${GONE:-unset}\"").await;
    assert_eq!(shell.stdout, "gone=unset\n");
    s.close().await.unwrap();
}

async fn reading_stdin_fails_fast_with_a_clear_message(backend: Backend) {
    let Some((_engine, mut s)) = session(backend).await else {
        return;
    };
    let started = Instant::now();
    let out = run(&mut s, "python", "name = input('name? ')").await;
    assert_eq!(out.status(), ExecStatus::Error);
    assert!(out.stderr.contains("stdin is closed"), "{}", out.stderr);
    let out = run(
        &mut s,
        "shell",
        "read line; echo \"status=$?\"; cat; echo cat=$?",
    )
    .await;
    assert!(out.stderr.contains("stdin is closed"), "{}", out.stderr);
    assert_eq!(out.stdout, "status=1\ncat=0\n");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "nothing waited for input"
    );
    s.close().await.unwrap();
}

async fn configured_languages_run_from_files(backend: Backend) {
    let Some((_engine, mut s)) = session_with(backend, |c| {
        c.languages.add(Language::file("perl", "pl", "perl {file}"));
        c.languages
            .add(Language::file("py-script", "py", "python3 -S"));
    })
    .await
    else {
        return;
    };
    let out = run(
        &mut s,
        "perl",
        "my $x = 6 * 7;\nprint \"$x\\n\";\nprint STDERR \"warn\\n\";",
    )
    .await;
    assert_ok(&out);
    assert_eq!(
        (out.stdout.as_str(), out.stderr.as_str()),
        ("42\n", "warn\n")
    );
    let failing = run(&mut s, "perl", "exit 5;").await;
    assert_eq!(
        (failing.status(), failing.outcome().exit_code),
        (ExecStatus::Error, Some(5))
    );
    let script = run(
        &mut s,
        "py-script",
        "import sys\nprint(sys.argv[0].endswith('.py'))",
    )
    .await;
    assert_eq!(
        script.stdout, "True\n",
        "the file is appended when {{file}} is absent"
    );
    s.close().await.unwrap();
}

async fn unknown_language_is_a_clear_error(backend: Backend) {
    let Some((_engine, mut s)) = session(backend).await else {
        return;
    };
    let err = s
        .execute(
            ExecRequest::new("cobol", "DISPLAY 'HI'"),
            &CancellationToken::new(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, SandboxError::UnknownLanguage { .. }));
    assert_eq!(
        err.to_string(),
        "unknown language `cobol`; available: python, shell"
    );
    assert_eq!(run(&mut s, "python", "print(1)").await.stdout, "1\n");
    s.close().await.unwrap();
}

async fn active_lines_come_before_their_output(backend: Backend) {
    let Some((_engine, mut s)) = session(backend).await else {
        return;
    };
    let cancel = tokio_util::sync::CancellationToken::new();
    let mut execution = s
        .execute(
            ExecRequest::new("python", "print('a')\n\nprint('b')\n'é' * 2"),
            &cancel,
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    while let Some(event) = execution.next_event().await {
        match event {
            ExecEvent::ActiveLine { line } => seen.push(format!("line {line}")),
            ExecEvent::Stdout { text } => seen.push(text),
            ExecEvent::Done(outcome) => assert_eq!(outcome.status, ExecStatus::Ok),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, ["line 1", "a\n", "line 3", "b\n", "line 4", "'éé'\n"]);
    // A single statement reports no line: nothing to follow.
    let mut execution = s
        .execute(ExecRequest::new("python", "print(1)"), &cancel)
        .await
        .unwrap();
    while let Some(event) = execution.next_event().await {
        assert!(!matches!(event, ExecEvent::ActiveLine { .. }), "{event:?}");
    }
    s.close().await.unwrap();
}

/// The runner once failed with `KeyError` when an interpreter exited right after
/// reporting its active line: reading the line drained the pipe to its end, and the
/// same batch of events then read it again.
async fn regression_exit_right_after_an_active_line_does_not_break_the_runner(backend: Backend) {
    let Some((_engine, mut s)) = session(backend).await else {
        return;
    };
    for _ in 0..5 {
        let out = run(&mut s, "python", "print('a')\nimport os\nos._exit(3)").await;
        assert_eq!(out.status(), ExecStatus::Crashed, "{out:?}");
        assert_eq!(out.stdout, "a\n");
        assert!(!out.stderr.contains("runner"), "{out:?}");
    }
    s.close().await.unwrap();
}

/// Ctrl-C right after a block was sent: the runner once got the interrupt before the
/// block had become current and dropped it, so a Python block ran on until the kill
/// after the grace period (here longer than the test allows) and the kill cost the
/// state; and a SIGINT that reached bash while it read the block's line cut it, so the
/// shell was taken for one that no longer reports and restarted.
async fn regression_an_interrupt_sent_as_the_block_starts_stops_it_and_keeps_state(
    backend: Backend,
) {
    let Some((_engine, mut s)) =
        session_with(backend, |c| c.interrupt_grace = Duration::from_secs(30)).await
    else {
        return;
    };
    assert_ok(&run(&mut s, "python", "kept = 'python state'").await);
    assert_ok(&run(&mut s, "shell", "kept='shell state'").await);
    for (language, code) in [
        ("python", "import time\ntime.sleep(60)"),
        ("shell", "sleep 60"),
    ] {
        for _ in 0..3 {
            let cancel = CancellationToken::new();
            let started = Instant::now();
            let execution = s
                .execute(ExecRequest::new(language, code), &cancel)
                .await
                .unwrap();
            cancel.cancel();
            let out = collect_checked(execution).await;
            let took = started.elapsed();
            assert_eq!(out.status(), ExecStatus::Interrupted, "{language}: {out:?}");
            assert!(took < Duration::from_secs(10), "{language}: took {took:?}");
        }
    }
    assert_eq!(
        run(&mut s, "python", "print(kept)").await.stdout,
        "python state\n"
    );
    assert_eq!(
        run(&mut s, "shell", "echo \"$kept\"").await.stdout,
        "shell state\n"
    );
    s.close().await.unwrap();
}

/// A timeout that passes before the interpreter has even taken the block: the block
/// times out at once (it does not wait for the kill) and the interpreter keeps its state.
async fn a_timeout_shorter_than_the_start_of_a_block_keeps_state(backend: Backend) {
    let Some((_engine, mut s)) =
        session_with(backend, |c| c.interrupt_grace = Duration::from_secs(30)).await
    else {
        return;
    };
    assert_ok(&run(&mut s, "python", "kept = 1").await);
    let started = Instant::now();
    let out = run_req(
        &mut s,
        ExecRequest::new("python", "import time\ntime.sleep(60)")
            .with_timeout(Duration::from_millis(1)),
    )
    .await;
    assert_eq!(out.status(), ExecStatus::TimedOut, "{out:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(run(&mut s, "python", "print(kept)").await.stdout, "1\n");
    s.close().await.unwrap();
}

/// `ping` is answered at once (docs/protocol.md), even while a block floods the output
/// and the host reads it as fast as it can.
async fn ping_is_answered_at_once_while_a_block_floods_its_output(backend: Backend) {
    let Some((_engine, mut s)) = session(backend).await else {
        return;
    };
    let cancel = CancellationToken::new();
    let mut execution = s
        .execute(
            ExecRequest::new(
                "python",
                "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)",
            ),
            &cancel,
        )
        .await
        .unwrap();
    let flooding = loop {
        match tokio::time::timeout(Duration::from_secs(30), execution.next_event()).await {
            Ok(Some(ExecEvent::Stdout { .. })) => break true,
            Ok(Some(_)) => {}
            other => panic!("the flood did not start: {other:?}"),
        }
    };
    assert!(flooding);
    let reader = tokio::spawn(async move {
        let mut bytes = 0usize;
        while let Some(event) = execution.next_event().await {
            match event {
                ExecEvent::Stdout { text } => bytes += text.len(),
                ExecEvent::Done(outcome) => return (bytes, outcome),
                _ => {}
            }
        }
        panic!("no Done");
    });
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        let asked = Instant::now();
        tokio::time::timeout(Duration::from_secs(10), s.ping())
            .await
            .expect("a pong within 10 s")
            .unwrap();
        slowest = slowest.max(asked.elapsed());
    }
    cancel.cancel();
    let (bytes, outcome) = reader.await.unwrap();
    assert_eq!(outcome.status, ExecStatus::Interrupted);
    assert!(bytes >= 65536, "the block went on flooding: {bytes} bytes");
    assert!(
        slowest < Duration::from_secs(1),
        "a pong took {slowest:?} under the flood"
    );
    s.close().await.unwrap();
}
