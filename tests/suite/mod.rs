//! Shared helpers: engines for each backend, the sandbox image built once per test run,
//! and assertions on executions.

mod backend;
mod boundary;
pub(crate) mod chat;
mod cli;
pub(crate) mod conversation;
mod docker_only;
mod languages;
pub mod llm_server;
mod protocol;
mod sandbox;
mod workspace;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use oi::core::code_interpreter::{
    Backend, CollectedOutput, Engine, ExecEvent, ExecRequest, ExecStatus, HostConfig,
    SandboxConfig, Session,
};
use tokio_util::sync::CancellationToken;

/// Points an `oi` command at a home of its own (config, data, state and cache go
/// there) and clears the model settings the machine's environment may hold, so that a
/// test sees only what it sets.
pub fn isolate(cmd: &mut std::process::Command, home: &std::path::Path) {
    cmd.env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("XDG_DATA_HOME", home.join("data"))
        .env("XDG_STATE_HOME", home.join("state"))
        .env("XDG_CACHE_HOME", home.join("cache"));
    for var in [
        "OI_MODEL",
        "OI_API_BASE",
        "OI_API_KEY",
        "OI_PROFILE",
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_BASE_URL",
    ] {
        cmd.env_remove(var);
    }
}

/// Whether Docker tests must run (CI) rather than skip.
pub fn docker_required() -> bool {
    std::env::var("OI_REQUIRE_DOCKER").is_ok_and(|v| v == "1")
}

/// The sandbox image, built (or found) once for the whole test run. `None` when Docker
/// is not there and not required.
pub fn image() -> Option<&'static str> {
    static IMAGE: OnceLock<Option<String>> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            std::thread::spawn(|| {
                let rt = tokio::runtime::Runtime::new().unwrap();
                rt.block_on(async {
                    let config = docker_config();
                    let mut engine = match Engine::connect(config).await {
                        Ok(engine) => engine,
                        Err(err) if !docker_required() => {
                            eprintln!("skipping Docker tests: {err}");
                            return None;
                        }
                        Err(err) => panic!("OI_REQUIRE_DOCKER=1 but Docker is unusable: {err}"),
                    };
                    let tag = engine
                        .ensure_image(false, &mut |_| {})
                        .await
                        .unwrap_or_else(|err| panic!("building the sandbox image failed: {err}"));
                    Some(tag)
                })
            })
            .join()
            .unwrap()
        })
        .as_deref()
}

pub fn docker_config() -> SandboxConfig {
    SandboxConfig {
        docker_host: std::env::var("DOCKER_HOST").ok(),
        base_image: std::env::var("OI_BASE_IMAGE")
            .ok()
            .filter(|b| !b.is_empty()),
        ..SandboxConfig::default()
    }
}

pub fn host_config() -> SandboxConfig {
    let scratch = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("host-runner");
    std::fs::create_dir_all(&scratch).unwrap();
    let workdir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("host-workdir");
    std::fs::create_dir_all(&workdir).unwrap();
    SandboxConfig {
        backend: Backend::Host,
        host: HostConfig {
            scratch_dir: Some(scratch),
            workdir: Some(workdir),
            ..HostConfig::default()
        },
        ..SandboxConfig::default()
    }
}

/// An engine for the backend, with its config adjusted by `tweak`; `None` skips.
pub async fn engine_with(
    backend: Backend,
    tweak: impl FnOnce(&mut SandboxConfig),
) -> Option<Engine> {
    let mut config = match backend {
        Backend::Docker => {
            let tag = image()?;
            SandboxConfig {
                image: Some(tag.to_string()),
                ..docker_config()
            }
        }
        Backend::Host => host_config(),
    };
    tweak(&mut config);
    Some(Engine::connect(config).await.expect("engine connects"))
}

pub async fn session(backend: Backend) -> Option<(Engine, Session)> {
    session_with(backend, |_| {}).await
}

pub async fn session_with(
    backend: Backend,
    tweak: impl FnOnce(&mut SandboxConfig),
) -> Option<(Engine, Session)> {
    let engine = engine_with(backend, tweak).await?;
    let session = engine.open().await.expect("session opens");
    Some((engine, session))
}

/// Runs a block to the end (within a generous limit) and checks the stream's shape:
/// exactly one `Done`, and it comes last.
pub async fn run(session: &mut Session, language: &str, code: &str) -> CollectedOutput {
    run_req(session, ExecRequest::new(language, code)).await
}

pub async fn run_req(session: &mut Session, request: ExecRequest) -> CollectedOutput {
    let cancel = CancellationToken::new();
    let execution = session
        .execute(request, &cancel)
        .await
        .expect("block starts");
    collect_checked(execution).await
}

pub async fn collect_checked(
    mut execution: oi::core::code_interpreter::Execution,
) -> CollectedOutput {
    let mut out = CollectedOutput::default();
    let mut dones = 0;
    let read = async {
        while let Some(event) = execution.next_event().await {
            assert_eq!(dones, 0, "an event came after Done: {event:?}");
            match event {
                ExecEvent::Stdout { text } => out.stdout.push_str(&text),
                ExecEvent::Stderr { text } => out.stderr.push_str(&text),
                ExecEvent::Image { data, .. } => out.images.push(data),
                ExecEvent::Notice { message } => out.notices.push(message),
                ExecEvent::ActiveLine { .. } => {}
                ExecEvent::Done(outcome) => {
                    dones += 1;
                    out.outcome = Some(outcome);
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .expect("the block ended within 60 s");
    assert_eq!(dones, 1, "exactly one Done");
    out
}

pub fn assert_ok(out: &CollectedOutput) {
    assert_eq!(out.status(), ExecStatus::Ok, "block failed: {out:#?}");
}
