//! `make bench`: oi's sandbox performance against baselines measured in the same run,
//! reported as medians and ratios (the machines are shared and noisy: compare within
//! one run, not across runs).
//!
//! - exec round trip of `print(1)` in a warm session vs `docker exec … python3 -c 'print(1)'`
//!   in the same container; shell `true`;
//! - session ready (open to the first result) vs `docker run --rm IMAGE true`;
//! - close (container removed);
//! - session ready from a warm pool (open to the first result), against the same cold;
//! - the conversation loop's own overhead per iteration (model reply → block run →
//!   output fed back) with an instantly answering scripted model, beyond the sandbox
//!   round trip and the HTTP reply, both measured here too.

#[path = "../tests/suite/llm_server.rs"]
mod llm_server;

use std::process::Command;
use std::time::{Duration, Instant};

use futures::StreamExt;
use oi::core::code_interpreter::{Engine, ExecRequest, ExecStatus, SandboxConfig, Session};
use oi::core::config::Config;
use oi::core::llm::{ChatMessage, ChatRequest, ChatRole, Endpoint};
use oi::core::messages::MessageType;
use oi::core::protocol::{EventMsg, Request, TurnEnd};
use oi::core::respond::Conversation;
use tokio_util::sync::CancellationToken;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let config = SandboxConfig {
        docker_host: std::env::var("DOCKER_HOST").ok(),
        ..SandboxConfig::default()
    };
    let mut engine = Engine::connect(config).await?;
    let image = engine.ensure_image(false, &mut |_| {}).await?;
    let cancel = CancellationToken::new();
    println!("oi benchmark — image {image}, medians of repeated runs\n");

    // Warm session round trips.
    let mut session = engine.open().await?;
    for _ in 0..20 {
        run(&mut session, "python", "print(1)", &cancel).await?;
        run(&mut session, "shell", "true", &cancel).await?;
    }
    let py = round_trips(&mut session, "python", "print(1)", &cancel, 500).await?;
    let sh = round_trips(&mut session, "shell", "true", &cancel, 500).await?;
    let container = session.container_id().unwrap_or_default().to_string();
    let docker_exec = sample_cmd(
        20,
        "docker",
        &["exec", &container, "python3", "-c", "print(1)"],
    )?;
    session.close().await?;

    // Session ready from cold (image cached) and close.
    let mut ready = Vec::new();
    let mut close = Vec::new();
    for _ in 0..10 {
        let started = Instant::now();
        let mut s = engine.open().await?;
        run(&mut s, "python", "print(1)", &cancel).await?;
        ready.push(started.elapsed());
        let started = Instant::now();
        s.close().await?;
        close.push(started.elapsed());
    }
    // Session ready from a warm pool: taken, first result; the pool refills between
    // samples (outside the timing).
    engine.start_pool(1);
    let mut pooled = Vec::new();
    for _ in 0..10 {
        let waited = Instant::now();
        while engine.pooled() < 1 {
            anyhow::ensure!(
                waited.elapsed() < Duration::from_secs(60),
                "the pool did not fill: {:?}",
                engine.pool_error()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let started = Instant::now();
        let mut s = engine.open().await?;
        run(&mut s, "python", "print(1)", &cancel).await?;
        pooled.push(started.elapsed());
        s.close().await?;
    }
    engine.shutdown_pool().await;
    let docker_run = sample_cmd(
        10,
        "docker",
        &[
            "run",
            "--rm",
            "--network",
            "none",
            "--entrypoint",
            "true",
            &image,
        ],
    )?;

    let (iterations, http) = loop_iterations(&engine).await?;

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{:<44} {:>10} {:>10} {:>12}",
        "measure", "median", "p99", "vs baseline"
    );
    let row = |name: &str, s: &Stats, base: Option<(&Stats, &str)>| {
        let ratio = base
            .map(|(b, how)| {
                format!(
                    "{:.2}{how}",
                    if how == "x faster" {
                        ms(b.median) / ms(s.median)
                    } else {
                        ms(s.median) / ms(b.median)
                    }
                )
            })
            .unwrap_or_default();
        println!(
            "{name:<44} {:>8.3}ms {:>8.3}ms {:>12}",
            ms(s.median),
            ms(s.p99),
            ratio
        );
    };
    let py_s = Stats::of(py);
    let exec_s = Stats::of(docker_exec);
    let ready_s = Stats::of(ready);
    let run_s = Stats::of(docker_run);
    row("baseline: docker exec python3 -c print(1)", &exec_s, None);
    row(
        "oi round trip print(1), warm session",
        &py_s,
        Some((&exec_s, "x faster")),
    );
    row(
        "oi round trip shell `true`, warm session",
        &Stats::of(sh),
        None,
    );
    row("baseline: docker run --rm IMAGE true", &run_s, None);
    row(
        "oi session ready (open to first result)",
        &ready_s,
        Some((&run_s, "x of base")),
    );
    row(
        "oi session ready from a warm pool",
        &Stats::of(pooled),
        Some((&ready_s, "x faster")),
    );
    row("oi close (container removed)", &Stats::of(close), None);
    let iter_s = Stats::of(iterations);
    let http_s = Stats::of(http);
    row("baseline: scripted model reply over HTTP", &http_s, None);
    row("loop iteration (reply + run + feed back)", &iter_s, None);
    let overhead = ms(iter_s.median) - ms(http_s.median) - ms(py_s.median);
    println!(
        "{:<44} {:>8.3}ms   (iteration - HTTP reply - round trip, medians)",
        "loop overhead per iteration", overhead
    );
    println!();
    println!("targets: round trip ≤ 0.5 ms and ≥ 100x faster than docker exec; shell ≤ 1 ms;");
    println!("         session ready ≤ 1.2x docker run, from a warm pool ≤ 10 ms; close ≤ 100 ms;");
    println!("         loop overhead ≤ 5 ms");
    Ok(())
}

/// Runs turns in which a scripted model asks for `print(1)` again and again; returns the
/// time between consecutive blocks (one whole iteration each) and, as the baseline, the
/// time of the same scripted reply fetched straight from the provider.
async fn loop_iterations(engine: &Engine) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    use llm_server::{openai, ScriptedServer};
    const TURNS: usize = 6;
    const PER_TURN: usize = 20;
    let server = ScriptedServer::start(vec![]).await;
    for _ in 0..TURNS {
        for _ in 0..PER_TURN {
            server.push(vec![openai::execute("python", "print(1)")]);
        }
        server.push(vec![openai::text(&["done"])]);
    }
    let endpoint = Endpoint::openai(server.base_url(), None);
    let mut config = Config::new("bench-model", endpoint.clone());
    config.auto_run = true;
    config.max_iterations = PER_TURN + 1;
    config.sandbox = engine.config().clone();
    let mut conversation = Conversation::start(config, engine.clone())?;
    let mut iterations = Vec::new();
    for turn in 0..TURNS {
        conversation.send(Request::message("go")).await;
        let mut last: Option<Instant> = None;
        loop {
            match conversation.next_event().await.map(|e| e.msg) {
                Some(EventMsg::Message(m)) if m.kind == MessageType::Code => {
                    let now = Instant::now();
                    // The first turn warms up (the session may still be opening).
                    if let (Some(before), true) = (last, turn > 0) {
                        iterations.push(now - before);
                    }
                    last = Some(now);
                }
                Some(EventMsg::TurnEnded(end)) => {
                    anyhow::ensure!(end == TurnEnd::Finished, "bench turn ended: {end:?}");
                    break;
                }
                Some(EventMsg::Error(error)) => anyhow::bail!("bench turn failed: {error}"),
                Some(_) => {}
                None => anyhow::bail!("the conversation ended"),
            }
        }
    }
    conversation.shutdown().await;

    let provider = endpoint.provider()?;
    let request = ChatRequest {
        model: "bench-model".into(),
        system: "You run code.".into(),
        messages: vec![ChatMessage::text(ChatRole::User, "go")],
        tools: vec![],
        max_tokens: None,
        temperature: None,
    };
    let mut http = Vec::new();
    for _ in 0..(TURNS - 1) * PER_TURN {
        server.push(vec![openai::execute("python", "print(1)")]);
        let started = Instant::now();
        let mut stream = provider.stream(request.clone()).await?;
        while let Some(event) = stream.next().await {
            event?;
        }
        http.push(started.elapsed());
    }
    Ok((iterations, http))
}

async fn run(
    session: &mut Session,
    language: &str,
    code: &str,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let out = session
        .execute(ExecRequest::new(language, code), cancel)
        .await?
        .collect_output()
        .await;
    anyhow::ensure!(
        out.status() == ExecStatus::Ok,
        "{language} `{code}` failed: {out:?}"
    );
    Ok(())
}

async fn round_trips(
    session: &mut Session,
    language: &str,
    code: &str,
    cancel: &CancellationToken,
    n: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        run(session, language, code, cancel).await?;
        out.push(started.elapsed());
    }
    Ok(out)
}

fn sample_cmd(n: usize, program: &str, args: &[&str]) -> anyhow::Result<Vec<Duration>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let status = Command::new(program)
            .args(args)
            .stdout(std::process::Stdio::null())
            .status()?;
        anyhow::ensure!(status.success(), "{program} {args:?} failed");
        out.push(started.elapsed());
    }
    Ok(out)
}

struct Stats {
    median: Duration,
    p99: Duration,
}

impl Stats {
    fn of(mut v: Vec<Duration>) -> Stats {
        v.sort();
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        Stats {
            median: at(0.5),
            p99: at(0.99),
        }
    }
}
