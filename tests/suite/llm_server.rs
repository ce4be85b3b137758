//! A scripted model server for tests and the benchmark: a real HTTP/1.1 server on
//! loopback that answers each request with the next scripted reply, streamed as real
//! SSE in the OpenAI or Anthropic wire format, and records what oi sent.
//!
//! Self-contained (tokio + serde_json only) so that `examples/bench.rs` can include it.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One step of a streamed body.
#[derive(Debug, Clone)]
pub enum Step {
    /// `data: ...` (and `event: ...` when set), then a blank line.
    Frame {
        event: Option<String>,
        data: String,
    },
    /// Bytes as they are.
    Raw(String),
    Pause(Duration),
    /// Keep the connection open and silent until the client gives up.
    Stall,
    /// `bytes` written `times` times over, generated as it goes (`usize::MAX`: until the
    /// client hangs up): endless or huge bodies without holding them in memory.
    Repeat {
        bytes: String,
        times: usize,
    },
}

/// What the server answers one request with.
#[derive(Debug, Clone)]
pub enum Reply {
    Stream(Vec<Step>),
    /// A plain response with a status (an error, usually).
    Status {
        status: u16,
        body: String,
        headers: Vec<(String, String)>,
    },
    /// The steps are the whole response, status line and headers included.
    Raw(Vec<Step>),
}

/// A request oi made.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct State {
    script: VecDeque<Reply>,
    requests: Vec<Recorded>,
    models: Vec<String>,
    /// Answers `GET /v1/models` instead of the list, when set.
    models_reply: Option<Reply>,
}

/// The running server. Dropping it stops accepting.
pub struct ScriptedServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ScriptedServer {
    /// Starts a server that answers with `script`, one reply per request.
    pub async fn start(script: Vec<Reply>) -> ScriptedServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            script: script.into(),
            ..State::default()
        }));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(serve(socket, shared.clone()));
            }
        });
        ScriptedServer { addr, state, task }
    }

    /// `http://127.0.0.1:PORT/v1`
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Models listed at `GET /v1/models`.
    pub fn set_models(&self, models: &[&str]) {
        self.state.lock().unwrap().models = models.iter().map(|m| m.to_string()).collect();
    }

    /// Answers `GET /v1/models` with this instead of a list.
    pub fn set_models_reply(&self, reply: Reply) {
        self.state.lock().unwrap().models_reply = Some(reply);
    }

    /// Adds replies to the script.
    pub fn push(&self, replies: Vec<Reply>) {
        self.state.lock().unwrap().script.extend(replies);
    }

    /// The model requests (POSTs) received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state
            .lock()
            .unwrap()
            .requests
            .iter()
            .filter(|r| r.method == "POST")
            .cloned()
            .collect()
    }

    pub fn remaining(&self) -> usize {
        self.state.lock().unwrap().script.len()
    }
}

async fn serve(mut socket: TcpStream, state: Arc<Mutex<State>>) {
    let Some(request) = read_request(&mut socket).await else {
        return;
    };
    let reply = {
        let mut st = state.lock().unwrap();
        st.requests.push(request.clone());
        if request.method == "GET" && request.path.starts_with("/v1/models") {
            if let Some(reply) = st.models_reply.clone() {
                reply
            } else {
                models_list(&st.models)
            }
        } else {
            st.script.pop_front().unwrap_or(Reply::Status {
                status: 500,
                body: r#"{"error":{"message":"the test script has no more replies"}}"#.into(),
                headers: vec![],
            })
        }
    };
    match reply {
        Reply::Status {
            status,
            body,
            headers,
        } => {
            let mut head = format!(
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
                body.len()
            );
            for (k, v) in headers {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            head.push_str("\r\n");
            let _ = socket.write_all(head.as_bytes()).await;
            let _ = socket.write_all(body.as_bytes()).await;
        }
        Reply::Stream(steps) => {
            let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n";
            if socket.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            if !write_steps(&mut socket, steps).await {
                return;
            }
        }
        Reply::Raw(steps) => {
            if !write_steps(&mut socket, steps).await {
                return;
            }
        }
    }
    let _ = socket.shutdown().await;
}

/// Writes a body's steps; `false` when the client hung up (or a stall ended).
async fn write_steps(socket: &mut TcpStream, steps: Vec<Step>) -> bool {
    for step in steps {
        let bytes = match step {
            Step::Frame { event, data } => match event {
                Some(e) => format!("event: {e}\ndata: {data}\n\n"),
                None => format!("data: {data}\n\n"),
            },
            Step::Raw(raw) => raw,
            Step::Repeat { bytes, times } => {
                if !write_repeated(socket, &bytes, times).await {
                    return false;
                }
                continue;
            }
            Step::Pause(d) => {
                tokio::time::sleep(d).await;
                continue;
            }
            Step::Stall => {
                // Wait until the client hangs up.
                let mut buf = [0u8; 64];
                let _ = tokio::time::timeout(Duration::from_secs(120), socket.read(&mut buf)).await;
                return false;
            }
        };
        if socket.write_all(bytes.as_bytes()).await.is_err() {
            return false;
        }
        let _ = socket.flush().await;
    }
    true
}

/// `bytes` `times` times over, in large writes so that a small piece goes fast.
async fn write_repeated(socket: &mut TcpStream, bytes: &str, times: usize) -> bool {
    if bytes.is_empty() {
        return true;
    }
    let per_batch = (64 * 1024 / bytes.len()).max(1);
    let batch = bytes.repeat(per_batch);
    let mut left = times;
    while left > 0 {
        let n = left.min(per_batch);
        if socket
            .write_all(&batch.as_bytes()[..n * bytes.len()])
            .await
            .is_err()
        {
            return false;
        }
        left -= n;
    }
    true
}

async fn read_request(socket: &mut TcpStream) -> Option<Recorded> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let header_end = loop {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos;
        }
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let path = first.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[header_end + 4..].to_vec();
    while body.len() < length {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(Recorded {
        method,
        path,
        headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    })
}

fn models_list(models: &[String]) -> Reply {
    let data: Vec<Value> = models.iter().map(|m| json!({"id": m})).collect();
    Reply::Status {
        status: if models.is_empty() { 404 } else { 200 },
        body: json!({"object": "list", "data": data}).to_string(),
        headers: vec![],
    }
}

pub fn error(status: u16, body: &str) -> Reply {
    Reply::Status {
        status,
        body: body.into(),
        headers: vec![],
    }
}

/// 429 with a `Retry-After` header as given.
pub fn rate_limited(retry_after: &str) -> Reply {
    Reply::Status {
        status: 429,
        body: r#"{"error":{"message":"slow down"}}"#.into(),
        headers: vec![("Retry-After".into(), retry_after.into())],
    }
}

/// Builders for OpenAI Chat Completions streams.
pub mod openai {
    use super::*;

    fn chunk(delta: Value, finish: Option<&str>) -> Step {
        Step::Frame {
            event: None,
            data: json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "test",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
            .to_string(),
        }
    }

    pub fn delta(text: &str) -> Step {
        chunk(json!({"content": text}), None)
    }

    /// A tool call streamed in pieces: id and name first, then the arguments split in
    /// two, as servers do.
    pub fn tool_call(index: usize, id: &str, name: &str, arguments: &str) -> Vec<Step> {
        let mid = arguments
            .char_indices()
            .map(|(i, _)| i)
            .nth(arguments.chars().count() / 2)
            .unwrap_or(0);
        vec![
            chunk(
                json!({"tool_calls": [{"index": index, "id": id, "type": "function",
                    "function": {"name": name, "arguments": ""}}]}),
                None,
            ),
            chunk(
                json!({"tool_calls": [{"index": index, "function": {"arguments": &arguments[..mid]}}]}),
                None,
            ),
            chunk(
                json!({"tool_calls": [{"index": index, "function": {"arguments": &arguments[mid..]}}]}),
                None,
            ),
        ]
    }

    pub fn finish(reason: &str) -> Step {
        chunk(json!({}), Some(reason))
    }

    pub fn done() -> Step {
        Step::Frame {
            event: None,
            data: "[DONE]".into(),
        }
    }

    /// A complete text reply, streamed in the given pieces.
    pub fn text(pieces: &[&str]) -> Reply {
        let mut steps: Vec<Step> = pieces.iter().map(|p| delta(p)).collect();
        steps.push(finish("stop"));
        steps.push(done());
        Reply::Stream(steps)
    }

    /// A reply that calls `execute` once.
    pub fn execute(language: &str, code: &str) -> Reply {
        call(
            "execute",
            &json!({"language": language, "code": code}).to_string(),
        )
    }

    /// A reply that calls a tool with raw arguments.
    pub fn call(name: &str, arguments: &str) -> Reply {
        let mut steps = tool_call(0, "call_abc", name, arguments);
        steps.push(finish("tool_calls"));
        steps.push(done());
        Reply::Stream(steps)
    }
}

/// Builders for Anthropic Messages streams.
pub mod anthropic {
    use super::*;

    fn event(kind: &str, data: Value) -> Step {
        Step::Frame {
            event: Some(kind.into()),
            data: data.to_string(),
        }
    }

    fn start() -> Step {
        event(
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_1", "type": "message",
                "role": "assistant", "content": [], "model": "claude-test",
                "usage": {"input_tokens": 12, "output_tokens": 1}}}),
        )
    }

    fn stop(reason: &str) -> Vec<Step> {
        vec![
            event(
                "message_delta",
                json!({"type": "message_delta", "delta": {"stop_reason": reason},
                    "usage": {"output_tokens": 7}}),
            ),
            event("message_stop", json!({"type": "message_stop"})),
        ]
    }

    pub fn text(pieces: &[&str]) -> Reply {
        let mut steps = vec![
            start(),
            event(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0,
                    "content_block": {"type": "text", "text": ""}}),
            ),
            event("ping", json!({"type": "ping"})),
        ];
        for p in pieces {
            steps.push(event(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": p}}),
            ));
        }
        steps.push(event(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ));
        steps.extend(stop("end_turn"));
        Reply::Stream(steps)
    }

    /// Some text, then a `tool_use` block calling `execute`.
    pub fn execute(text: &str, language: &str, code: &str) -> Reply {
        let input = json!({"language": language, "code": code}).to_string();
        let (a, b) = input.split_at(input.len() / 2);
        let mut steps = vec![
            start(),
            event(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0,
                    "content_block": {"type": "text", "text": ""}}),
            ),
            event(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": text}}),
            ),
            event(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 0}),
            ),
            event(
                "content_block_start",
                json!({"type": "content_block_start", "index": 1,
                    "content_block": {"type": "tool_use", "id": "toolu_1", "name": "execute", "input": {}}}),
            ),
        ];
        for part in [a, b] {
            steps.push(event(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 1,
                    "delta": {"type": "input_json_delta", "partial_json": part}}),
            ));
        }
        steps.push(event(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 1}),
        ));
        steps.extend(stop("tool_use"));
        Reply::Stream(steps)
    }
}
