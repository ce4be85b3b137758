//! `make bench`: oi's sandbox performance against baselines measured in the same run,
//! reported as medians and ratios (the machines are shared and noisy: compare within
//! one run, not across runs).
//!
//! - exec round trip of `print(1)` in a warm session vs `docker exec … python3 -c 'print(1)'`
//!   in the same container; shell `true`;
//! - session ready (open to the first result) vs `docker run --rm IMAGE true`;
//! - close (container removed).

use std::process::Command;
use std::time::{Duration, Instant};

use oi::core::code_interpreter::{Engine, ExecRequest, ExecStatus, SandboxConfig, Session};
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
    row("oi close (container removed)", &Stats::of(close), None);
    println!();
    println!("targets: round trip ≤ 0.5 ms and ≥ 100x faster than docker exec; shell ≤ 1 ms;");
    println!("         session ready ≤ 1.2x docker run; close ≤ 100 ms");
    Ok(())
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
