//! Trust-boundary regressions from the model's side (D7, D8, D10, D11): a hostile model
//! server cannot grow oi's memory without bound, make it burn time quadratically, or
//! panic it with a number. Each test plays the attacker with the scripted server (real
//! HTTP, real SSE), then asserts the clear error, what oi sent back, that the
//! conversation is kept, and — running the real `oi -y --json` — the exit code, the
//! process's peak RSS and that no container is left.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oi::core::code_interpreter::Backend;
use oi::core::config::Config;
use oi::core::llm::Endpoint;
use oi::core::messages::MessageType;
use oi::core::protocol::{Answer, EventMsg, Request, TurnEnd};
use oi::core::respond::Conversation;
use serde_json::Value;

use crate::suite::conversation::{request_with, turn, Turn};
use crate::suite::llm_server::{openai, rate_limited, Reply, ScriptedServer, Step};
use crate::suite::{engine_with, image};

// ---- the conversation, in-process -------------------------------------------------

/// A test model's configuration: fast retries, a short idle timeout.
fn config(endpoint: Endpoint) -> Config {
    let mut config = Config::new("test-model", endpoint);
    config.retry.initial_backoff = Duration::from_millis(10);
    config.retry.max_backoff = Duration::from_millis(50);
    config.endpoint.idle_timeout = Duration::from_secs(5);
    config.auto_run = true;
    config
}

async fn chat(server: &ScriptedServer, tweak: impl FnOnce(&mut Config)) -> Option<Conversation> {
    let engine = engine_with(Backend::Docker, |_| {}).await?;
    let mut config = config(Endpoint::openai(server.base_url(), Some("sk-test".into())));
    config.sandbox = engine.config().clone();
    tweak(&mut config);
    Some(Conversation::start(config, engine).expect("provider builds"))
}

/// Sends a request that starts a turn and reads the turn to its end, running every
/// block.
async fn request(conv: &mut Conversation, request: Request) -> Turn {
    request_with(conv, request, |_| Answer::Run).await
}

/// The conversation's container (running a block first, so that its session is open).
async fn container_of(conv: &mut Conversation) -> String {
    let ran = request(
        conv,
        Request::Run {
            language: "python".into(),
            code: "1".into(),
        },
    )
    .await;
    assert_eq!(ran.end, TurnEnd::Finished, "{:?}", ran.errors());
    conv.info()
        .await
        .ok()
        .and_then(|i| i.session)
        .and_then(|s| s.container_id)
        .expect("the sandbox session is open")
}

async fn container_exists(id: &str) -> bool {
    let docker = bollard::Docker::connect_with_local_defaults().expect("docker client");
    docker.inspect_container(id, None).await.is_ok()
}

// ---- the `oi` binary ----------------------------------------------------------------

/// A home of its own: config, data (saved conversations) and the project folder.
struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Home {
        Home {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn project(&self) -> PathBuf {
        let dir = self.dir.path().join("project");
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// The saved conversation files (`*.jsonl`).
    fn saved(&self) -> Vec<PathBuf> {
        let dir = self.dir.path().join("data/oi/conversations");
        std::fs::read_dir(dir)
            .map(|d| {
                d.map(|e| e.unwrap().path())
                    .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `oi -y --json` against the server, in the project folder, with nothing from the
    /// outside environment.
    fn oi(&self, server: &ScriptedServer, task: &str) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_oi"));
        crate::suite::isolate(cmd.as_std_mut(), self.dir.path());
        cmd.current_dir(self.project())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .args(["-y", "--json", "--api-base", &server.base_url()])
            .args(["--model", "test-model", "--api-key", "sk-test", task]);
        cmd
    }

    /// oi's containers whose workspace is in this home: what a run left behind.
    async fn containers_left(&self) -> Vec<String> {
        use bollard::query_parameters::ListContainersOptionsBuilder;
        let docker = bollard::Docker::connect_with_local_defaults().expect("docker client");
        let filters = std::collections::HashMap::from([("label", vec!["oi.managed"])]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let home = self.dir.path().to_string_lossy().into_owned();
        docker
            .list_containers(Some(options))
            .await
            .expect("containers listed")
            .into_iter()
            .filter(|c| {
                c.mounts.iter().flatten().any(|m| {
                    m.source
                        .as_deref()
                        .is_some_and(|s| Path::new(s).starts_with(&home))
                })
            })
            .map(|c| c.names.unwrap_or_default().join(","))
            .collect()
    }
}

/// What a run of `oi` did.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
    /// The process's peak resident set (`VmHWM`), sampled while it ran.
    peak_rss_kib: u64,
    elapsed: Duration,
}

impl Run {
    fn json(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }

    /// The `error` lines: (format, content).
    fn errors(&self) -> Vec<(String, String)> {
        self.json()
            .into_iter()
            .filter(|l| l["type"] == "error")
            .map(|l| {
                (
                    l["format"].as_str().unwrap_or("").to_string(),
                    l["content"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }
}

/// Runs `oi` to its end (within 60 s), sampling its peak RSS from `/proc` as it runs.
async fn run_measured(cmd: &mut tokio::process::Command) -> Run {
    use tokio::io::AsyncReadExt;
    let started = Instant::now();
    let mut child = cmd.spawn().expect("oi starts");
    let pid = child.id().expect("a pid");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = tokio::spawn(async move {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf).await;
        buf
    });
    let err = tokio::spawn(async move {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf).await;
        buf
    });
    let mut peak = 0;
    let status = loop {
        if let Some(hwm) = vm_hwm_kib(pid) {
            peak = peak.max(hwm);
        }
        tokio::select! {
            status = child.wait() => break status.expect("oi ran"),
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "oi did not finish within 60 s"
        );
    };
    let elapsed = started.elapsed();
    eprintln!("oi ran for {elapsed:?}, peak RSS {peak} KiB");
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.await.unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&err.await.unwrap()).into_owned(),
        peak_rss_kib: peak,
        elapsed,
    }
}

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

// ---- D11: numbers from the network ----------------------------------------------------

/// `Retry-After: -1` made `Duration::from_secs_f64` panic the conversation's worker:
/// exit 125, no JSON error, the container left Created. Each hostile value is now a
/// retry (after the backoff, or the capped wait), and the sandbox is removed at the end.
#[tokio::test]
async fn d11_hostile_retry_after_values_do_not_panic() {
    let values = ["-1", "NaN", "inf", "1e30"];
    let server = ScriptedServer::start(vec![]).await;
    for value in values {
        server.push(vec![rate_limited(value), openai::text(&["fine"])]);
    }
    let Some(mut conv) = chat(&server, |c| {
        c.retry.max_retry_after = Duration::from_millis(300);
    })
    .await
    else {
        return;
    };
    for value in values {
        let t = turn(&mut conv, &format!("Retry-After: {value}")).await;
        assert_eq!(t.end, TurnEnd::Finished, "{value}: {:?}", t.errors());
        // Nonsense is no wait (the backoff applies); a huge wait is capped.
        let wait = if value == "1e30" { "0.3" } else { "0.0" };
        assert_eq!(
            t.notices(),
            vec![format!(
                "{}/chat/completions is rate limiting requests (HTTP 429): slow down; \
                 retrying in {wait} s (retry 1 of 3)",
                server.base_url()
            )],
            "{value}"
        );
    }
    // Each 429 was followed by the same request again.
    let requests = server.requests();
    assert_eq!(requests.len(), 2 * values.len());
    for pair in requests.chunks(2) {
        assert_eq!(pair[0].body, pair[1].body);
    }
    let container = container_of(&mut conv).await;
    conv.shutdown().await;
    assert!(
        !container_exists(&container).await,
        "the sandbox {container} was removed"
    );
}

/// The same through the real binary in CI mode: no panic, a retry on each, the JSON
/// lines say so, exit 0, and nothing is left running.
#[tokio::test]
async fn d11_hostile_retry_after_values_do_not_panic_oi_in_ci_mode() {
    if image().is_none() {
        return;
    }
    // Each is ignored, so the default backoff applies: 1 + 2 + 4 s.
    let server = ScriptedServer::start(vec![
        rate_limited("-1"),
        rate_limited("NaN"),
        rate_limited("inf"),
        openai::text(&["fine"]),
    ])
    .await;
    let home = Home::new();
    let r = run_measured(&mut home.oi(&server, "hi")).await;
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    let notices: Vec<String> = r
        .json()
        .into_iter()
        .filter(|l| l["type"] == "notice")
        .map(|l| l["content"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(notices.len(), 3, "{notices:?}");
    for (i, notice) in notices.iter().enumerate() {
        let wait = [1, 2, 4][i];
        assert!(
            notice.ends_with(&format!("retrying in {wait}.0 s (retry {} of 3)", i + 1)),
            "{notice}"
        );
    }
    assert_eq!(
        r.json().last().unwrap(),
        &serde_json::json!({"id": "1", "role": "server", "type": "turn_end", "format": "finished"})
    );
    assert_eq!(r.errors(), vec![]);
    assert_eq!(server.requests().len(), 4);
    // The waits were honoured (generous: the machine is shared).
    assert!(r.elapsed >= Duration::from_secs(7), "{:?}", r.elapsed);
    assert!(
        r.peak_rss_kib < 100 * 1024,
        "peak RSS {} KiB",
        r.peak_rss_kib
    );
    let saved = home.saved();
    assert_eq!(saved.len(), 1);
    let text = std::fs::read_to_string(&saved[0]).unwrap();
    assert_eq!(
        text.lines().count(),
        2,
        "the question and the answer: {text}"
    );
    assert_eq!(home.containers_left().await, Vec::<String>::new());
}

// ---- error bodies, model lists, silent servers ------------------------------------------

/// A response head for `Reply::Raw`.
fn head(status: &str, content_type: &str) -> Step {
    Step::Raw(format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nConnection: close\r\n\r\n"
    ))
}

/// Error bodies and model lists were read whole (`response.text()`, `.json()`): an
/// endless one grew memory until the server stopped. Now oi reads a bounded prefix,
/// reports the error, and a server that never answers at all counts as stalled.
#[tokio::test]
async fn endless_error_bodies_and_model_lists_are_read_in_part() {
    let endless = |piece: &str| Step::Repeat {
        bytes: piece.into(),
        times: usize::MAX,
    };
    let server = ScriptedServer::start(vec![
        Reply::Raw(vec![head("500 X", "text/plain"), endless("boom ")]),
        Reply::Raw(vec![
            head("404 X", "application/json"),
            Step::Raw(r#"{"error":{"message":"model not found: "#.into()),
            endless("x"),
        ]),
        Reply::Raw(vec![Step::Stall]),
    ])
    .await;
    // The model list that explains the unknown model is endless too.
    server.set_models_reply(Reply::Raw(vec![
        head("200 OK", "application/json"),
        Step::Raw(r#"{"data":["#.into()),
        endless(r#"{"id":"m"},"#),
    ]));
    let Some(mut conv) = chat(&server, |c| {
        c.retry.max_retries = 0;
        c.endpoint.idle_timeout = Duration::from_secs(1);
    })
    .await
    else {
        return;
    };
    let url = server.base_url();
    let started = Instant::now();
    let t = turn(&mut conv, "endless 500").await;
    assert_eq!(t.end, TurnEnd::ModelError);
    let (kind, message) = &t.errors()[0];
    assert_eq!(kind, "server");
    let want = format!(
        "the model server at {url}/chat/completions failed (HTTP 500): {}…",
        "boom ".repeat(120)
    );
    assert_eq!(message, &want);

    // An unknown model, explained by a list that never ends: a bounded prefix of it is
    // read, is not JSON, and so lists nothing.
    let t = turn(&mut conv, "endless 404").await;
    assert_eq!(t.end, TurnEnd::ModelError);
    assert_eq!(
        t.errors(),
        vec![(
            "unknown_model".to_string(),
            format!(
                "the model server at {url}/chat/completions does not know the model \
                 `test-model`\nChoose another with --model."
            )
        )]
    );

    let t = turn(&mut conv, "no answer").await;
    assert_eq!(t.end, TurnEnd::ModelError);
    assert_eq!(
        t.errors(),
        vec![(
            "stalled".to_string(),
            "the model's stream stalled: nothing arrived for 1 s".to_string()
        )]
    );
    assert!(started.elapsed() < Duration::from_secs(40));
    conv.shutdown().await;
}

// ---- D10: SSE parsing ----------------------------------------------------------------------

/// A 50 MB SSE line took 90 s to parse (the buffer was rescanned from its start for
/// every read) and was held whole. Now a line is refused once it passes 16 MiB, after
/// one linear pass over what arrived.
#[tokio::test]
async fn d10_a_50_mb_sse_line_is_refused_in_linear_time() {
    if image().is_none() {
        return;
    }
    let prefix = r#"data: {"choices":[{"index":0,"delta":{"content":""#;
    let server = ScriptedServer::start(vec![Reply::Stream(vec![
        Step::Raw(prefix.into()),
        Step::Repeat {
            bytes: "a".repeat(1 << 16),
            times: 50_000_000 / (1 << 16), // 50 MB
        },
        Step::Raw("\"}}]}\n\n".into()),
        openai::finish("stop"),
        openai::done(),
    ])])
    .await;
    let home = Home::new();
    let r = run_measured(&mut home.oi(&server, "hi")).await;
    assert_eq!(r.code, 3, "{}\n{}", r.stdout, r.stderr);
    let shown = format!("{prefix}{}", "a".repeat(200 - prefix.len()));
    assert_eq!(
        r.errors(),
        vec![(
            "malformed".to_string(),
            format!(
                "the model server sent malformed data (a line or event of its stream is \
                 longer than 16 MiB, the most oi reads): {shown}…"
            )
        )]
    );
    // Generous bounds: the machine is shared. Quadratic, this was minutes.
    assert!(r.elapsed < Duration::from_secs(30), "{:?}", r.elapsed);
    assert!(
        r.peak_rss_kib < 100 * 1024,
        "peak RSS {} KiB",
        r.peak_rss_kib
    );
    assert_eq!(server.requests().len(), 1, "not retried");
    let saved = home.saved();
    assert_eq!(
        std::fs::read_to_string(&saved[0]).unwrap().lines().count(),
        1
    );
    assert_eq!(home.containers_left().await, Vec::<String>::new());
}

// ---- D7: tool-call indexes -------------------------------------------------------------

/// A reply calling `execute` once, under the server's own index.
fn execute_at(index: usize, code: &str) -> Reply {
    let arguments = serde_json::json!({"language": "python", "code": code}).to_string();
    let mut steps = openai::tool_call(index, "call_1", "execute", &arguments);
    steps.push(openai::finish("tool_calls"));
    steps.push(openai::done());
    Reply::Stream(steps)
}

/// `"index": 2000000` made oi allocate 11.6 GB (calls were pushed up to the index) and
/// write a 488 MB conversation; `1000000000000` aborted it. An index is a key: each of
/// these replies is one call, which runs.
#[tokio::test]
async fn d7_a_huge_tool_call_index_is_a_key_not_an_allocation() {
    if image().is_none() {
        return;
    }
    let server = ScriptedServer::start(vec![
        execute_at(2_000_000, "print(6*7)"),
        execute_at(1_000_000_000_000, "print('ok')"),
        openai::text(&["Done."]),
    ])
    .await;
    let home = Home::new();
    let r = run_measured(&mut home.oi(&server, "hi")).await;
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let lines = r.json();
    let console: String = lines
        .iter()
        .filter(|l| l["type"] == "console" && l["format"] == "output")
        .filter_map(|l| l["content"].as_str())
        .collect();
    assert_eq!(console, "42\nok\n");
    // The first call streamed live, as a call at index 0 does.
    assert_eq!(
        lines[1],
        serde_json::json!({"id": "1", "role": "assistant", "type": "code", "format": "python", "start": true})
    );
    assert!(
        r.peak_rss_kib < 100 * 1024,
        "peak RSS {} KiB",
        r.peak_rss_kib
    );
    // What went back to the model: one call and its result each time.
    let requests = server.requests();
    assert_eq!(requests.len(), 3);
    let messages = requests[2].body["messages"].as_array().unwrap();
    let tool_results: Vec<&str> = messages
        .iter()
        .filter(|m| m["role"] == "tool")
        .filter_map(|m| m["content"].as_str())
        .collect();
    assert_eq!(tool_results, ["42\n", "ok\n"]);
    let saved = home.saved();
    let size = std::fs::metadata(&saved[0]).unwrap().len();
    assert!(size < 4096, "the saved conversation is {size} bytes");
    assert_eq!(home.containers_left().await, Vec::<String>::new());
}

/// More than MAX_TOOL_CALLS (16) calls in one reply, under wild indexes: a clear
/// error, nothing runs, the conversation stays consistent and the next message works.
#[tokio::test]
async fn d7_more_than_16_tool_calls_in_one_reply_are_refused() {
    let arguments = serde_json::json!({"language": "python", "code": "print(1)"}).to_string();
    let mut steps = Vec::new();
    for i in 0..17 {
        steps.extend(openai::tool_call(
            i * 1_000_003,
            &format!("call_{i}"),
            "execute",
            &arguments,
        ));
    }
    steps.push(openai::finish("tool_calls"));
    steps.push(openai::done());
    let server = ScriptedServer::start(vec![Reply::Stream(steps), openai::text(&["Fine."])]).await;
    let Some(mut conv) = chat(&server, |_| {}).await else {
        return;
    };
    let t = turn(&mut conv, "call many").await;
    assert_eq!(t.end, TurnEnd::ModelError);
    let errors = t.errors();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].0, "malformed");
    assert!(
        errors[0].1.starts_with(
            "the model server sent malformed data (a reply with more than 16 tool calls, the \
             most oi takes): {"
        ),
        "{}",
        errors[0].1
    );
    // Nothing ran: no console output, no code recorded (only the first call had
    // streamed, and its chunks were closed).
    assert!(
        !t.events.iter().any(|e| matches!(e,
            EventMsg::Chunk(c) if c.kind == MessageType::Console)
            || matches!(e, EventMsg::Message(m) if m.kind != MessageType::Message)),
        "{:#?}",
        t.events
    );
    let t = turn(&mut conv, "again").await;
    assert_eq!(t.end, TurnEnd::Finished);
    // The next request carries both user messages and nothing of the refused reply.
    let requests = server.requests();
    let messages = requests[1].body["messages"].as_array().unwrap();
    let roles: Vec<&str> = messages
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["system", "user"]);
    assert_eq!(messages[1]["content"], "call many\n\nagain");
    conv.shutdown().await;
}

// ---- D8: runaway replies --------------------------------------------------------------

/// An OpenAI chunk frame with this delta.
fn chunk(delta: Value) -> Step {
    Step::Frame {
        event: None,
        data: serde_json::json!({"choices": [{"index": 0, "delta": delta, "finish_reason": null}]})
            .to_string(),
    }
}

/// An OpenAI chunk frame's bytes, to repeat.
fn chunk_bytes(delta: Value) -> String {
    let data = serde_json::json!({"choices": [{"index": 0, "delta": delta}]});
    format!("data: {data}\n\n")
}

fn endless(delta: Value) -> Step {
    Step::Repeat {
        bytes: chunk_bytes(delta),
        times: usize::MAX,
    }
}

/// An endless model stream grew oi to 3.3 GB. The reply is now cut at 4 MiB (the
/// default `max_reply_bytes`) with a clear error; what was shown is kept and saved.
#[tokio::test]
async fn d8_an_endless_model_stream_is_cut_with_a_clear_error() {
    if image().is_none() {
        return;
    }
    let server = ScriptedServer::start(vec![Reply::Stream(vec![endless(
        serde_json::json!({"content": "x".repeat(1000)}),
    )])])
    .await;
    let home = Home::new();
    let r = run_measured(&mut home.oi(&server, "hi")).await;
    assert_eq!(r.code, 3, "{}", r.stderr);
    let lines = r.json();
    let error = lines.iter().find(|l| l["type"] == "error").unwrap();
    assert_eq!(
        error,
        &serde_json::json!({"id": "1", "role": "server", "type": "error", "format": "reply_too_large",
            "content": "the model's reply exceeded 4 MiB; it was stopped",
            "facts": {"setting": "max_reply_bytes", "limit": 4 << 20}})
    );
    assert_eq!(
        lines.last().unwrap(),
        &serde_json::json!({"id": "1", "role": "server", "type": "turn_end", "format": "model_error"})
    );
    // What was shown (every whole delta under the cap) is the assistant's message.
    let shown: String = lines
        .iter()
        .filter(|l| l["role"] == "assistant" && l["type"] == "message")
        .filter_map(|l| l["content"].as_str())
        .collect();
    assert_eq!(shown.len(), (4 << 20) / 1000 * 1000);
    assert!(
        r.peak_rss_kib < 100 * 1024,
        "peak RSS {} KiB",
        r.peak_rss_kib
    );
    assert_eq!(server.requests().len(), 1, "not retried");
    // Saved as it went: the question and the cut reply, and nothing more.
    let saved = home.saved();
    let text = std::fs::read_to_string(&saved[0]).unwrap();
    let messages: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[1]["role"], "assistant");
    assert_eq!(messages[1]["content"].as_str().unwrap(), shown);
    assert!(text.len() < 5 << 20, "saved {} bytes", text.len());
    assert_eq!(home.containers_left().await, Vec::<String>::new());
}

/// A runaway reply of each kind (prose, a tool call's arguments, text held back in case
/// it is a call) is cut at `max_reply_bytes`; the conversation keeps exactly what was
/// shown, and the next message works.
#[tokio::test]
async fn d8_a_runaway_reply_is_cut_and_the_next_message_works() {
    let call_start = chunk(
        serde_json::json!({"tool_calls": [{"index": 0, "id": "call_1",
        "type": "function", "function": {"name": "execute",
        "arguments": "{\"language\": \"python\", \"code\": \"print(1)"}}]}),
    );
    let server = ScriptedServer::start(vec![
        Reply::Stream(vec![
            openai::delta("Here it comes: "),
            endless(serde_json::json!({"content": "y".repeat(100)})),
        ]),
        openai::text(&["Sorry."]),
        Reply::Stream(vec![
            call_start,
            endless(serde_json::json!({"tool_calls": [{"index": 0,
                "function": {"arguments": "; print(2)"}}]})),
        ]),
        openai::text(&["Sorry again."]),
        Reply::Stream(vec![
            openai::delta("{\"name\": \"execute\", \"arguments\": "),
            endless(serde_json::json!({"content": " "})),
        ]),
        openai::text(&["Done."]),
    ])
    .await;
    let Some(mut conv) = chat(&server, |c| {
        c.max_reply_bytes = 64 * 1024;
        // Room for the cut reply in the next request.
        c.context_window = Some(1_000_000);
    })
    .await
    else {
        return;
    };
    let cut = vec![(
        "reply_too_large".to_string(),
        "the model's reply exceeded 64 KiB; it was stopped".to_string(),
    )];
    let prose = |t: &Turn| -> String {
        t.events
            .iter()
            .filter_map(|e| match e {
                EventMsg::Chunk(c) if c.kind == MessageType::Message => c.content.clone(),
                _ => None,
            })
            .collect()
    };

    let t = turn(&mut conv, "prose").await;
    assert_eq!((t.end, t.errors()), (TurnEnd::ModelError, cut.clone()));
    let shown = prose(&t);
    assert_eq!(shown.len(), 15 + (64 * 1024 - 15) / 100 * 100);
    assert_eq!(turn(&mut conv, "next").await.end, TurnEnd::Finished);
    let body = &server.requests()[1].body;
    assert_eq!(body["messages"][2]["role"], "assistant");
    assert_eq!(body["messages"][2]["content"].as_str().unwrap(), shown);

    // The call had streamed live; it is closed, not run, and not recorded.
    let t = turn(&mut conv, "call").await;
    assert_eq!((t.end, t.errors()), (TurnEnd::ModelError, cut.clone()));
    let code: Vec<&oi::core::messages::Chunk> = t
        .events
        .iter()
        .filter_map(|e| match e {
            EventMsg::Chunk(c) if c.kind == MessageType::Code => Some(c),
            _ => None,
        })
        .collect();
    assert!(code.first().unwrap().start && code.last().unwrap().end);
    assert!(!t.events.iter().any(|e| matches!(e,
        EventMsg::Chunk(c) if c.kind == MessageType::Console)));
    assert_eq!(turn(&mut conv, "next").await.end, TurnEnd::Finished);
    let body = &server.requests()[3].body;
    assert!(body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m.get("tool_calls").is_none() && m["role"] != "tool"));

    // Text held back in case it was a call written as text is shown once cut.
    let t = turn(&mut conv, "held").await;
    assert_eq!((t.end, t.errors()), (TurnEnd::ModelError, cut));
    assert!(prose(&t).starts_with("{\"name\": \"execute\", \"arguments\":    "));
    assert_eq!(turn(&mut conv, "next").await.end, TurnEnd::Finished);
    assert_eq!(server.remaining(), 0);
    conv.shutdown().await;
}

/// Every piece of a streaming tool call re-read the whole arguments so far (quadratic:
/// a long call took minutes). A 1 MiB call in 32-byte pieces now streams in one pass,
/// and the code shown live is the code that runs.
#[tokio::test]
async fn d8_a_long_streaming_tool_call_is_read_in_linear_time() {
    let code = format!("x = 6*7\n#{}\nprint(x)", "a".repeat(1 << 20));
    let arguments = serde_json::json!({"language": "python", "code": code}).to_string();
    let mut steps = vec![chunk(serde_json::json!({"tool_calls": [{"index": 0,
        "id": "call_1", "type": "function", "function": {"name": "execute", "arguments": ""}}]}))];
    for piece in arguments.as_bytes().chunks(32) {
        steps.push(chunk(serde_json::json!({"tool_calls": [{"index": 0,
            "function": {"arguments": std::str::from_utf8(piece).unwrap()}}]})));
    }
    steps.push(openai::finish("tool_calls"));
    steps.push(openai::done());
    let server = ScriptedServer::start(vec![Reply::Stream(steps), openai::text(&["Done."])]).await;
    let Some(mut conv) = chat(&server, |_| {}).await else {
        return;
    };
    let started = Instant::now();
    let t = turn(&mut conv, "long").await;
    let elapsed = started.elapsed();
    assert_eq!(t.end, TurnEnd::Finished, "{:?}", t.errors());
    let streamed: String = t
        .events
        .iter()
        .filter_map(|e| match e {
            EventMsg::Chunk(c) if c.kind == MessageType::Code => c.content.clone(),
            _ => None,
        })
        .collect();
    assert_eq!(streamed, code);
    let console: String = t
        .events
        .iter()
        .filter_map(|e| match e {
            EventMsg::Chunk(c)
                if c.kind == MessageType::Console && c.format.as_deref() == Some("output") =>
            {
                c.content.clone()
            }
            _ => None,
        })
        .collect();
    assert_eq!(console, "42\n");
    // Generous (a shared machine, an unoptimised build); quadratic, it was minutes.
    assert!(elapsed < Duration::from_secs(30), "{elapsed:?}");
    eprintln!("a 1 MiB call in 32-byte pieces: {elapsed:?}");
    conv.shutdown().await;
}
