//! The protocol as a client on the other side of a socket sees it: every type through
//! JSON and back, the JSON Schema pinned, and a whole conversation driven by JSON
//! strings only (requests serialised, events read back from JSON, confirmations
//! answered by id, files moved in and out as base64 archives).

use std::io::Read;
use std::time::Duration;

use base64::Engine as _;
use oi::core::code_interpreter::{Backend, ExecOutcome, ExecStatus};
use oi::core::config::Config;
use oi::core::llm::{Endpoint, Usage};
use oi::core::messages::{Chunk, Message, MessageType, Role};
use oi::core::protocol::{
    self, Answer, Archive, Confirmation, ConversationInfo, Delivery, Error, ErrorKind, Event,
    EventMsg, Facts, Request, SandboxEvent, SandboxEventMsg, SandboxRequest, SandboxSubmission,
    SessionInfo, Setting, Submission, TurnEnd,
};
use oi::core::respond::{Conversation, SandboxChannel};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

use super::engine_with;
use super::llm_server::{openai, Reply, ScriptedServer, Step};

/// Serialises, reads back, and checks nothing changed; returns the JSON.
fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(value: &T) -> Value {
    let text = serde_json::to_string(value).unwrap();
    let back: T = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(&back, value, "{text}");
    serde_json::from_str(&text).unwrap()
}

fn every_request() -> Vec<Request> {
    vec![
        Request::message("What is 6*7?"),
        Request::Run {
            language: "shell".into(),
            code: "ls".into(),
        },
        Request::Confirm {
            confirmation: "c1".into(),
            answer: Answer::Run,
        },
        Request::Confirm {
            confirmation: "c2".into(),
            answer: Answer::Edit("print(2)".into()),
        },
        Request::Confirm {
            confirmation: "c3".into(),
            answer: Answer::Decline,
        },
        Request::Confirm {
            confirmation: "c4".into(),
            answer: Answer::Always,
        },
        Request::Interrupt,
        Request::Reset,
        Request::Undo,
        Request::Load {
            messages: vec![Message::user("hi"), Message::console("1\n")],
        },
        Request::SetAutoRun { on: true },
        Request::Info,
        Request::Messages,
        Request::Upload {
            dest: "data".into(),
            archive: Archive::Base64 {
                data: "AAAA".into(),
            },
        },
        Request::Download {
            source: "out.csv".into(),
            delivery: Delivery::Base64,
        },
    ]
}

fn every_event() -> Vec<EventMsg> {
    let error = Error::new(
        ErrorKind::Auth,
        "http://x/v1 rejected the API key (HTTP 401)",
    )
    .with_facts(Facts {
        url: Some("http://x/v1".into()),
        status: Some(401),
        setting: Some(Setting::ApiKey),
        key_setting: Some("OPENAI_API_KEY".into()),
        ..Facts::default()
    });
    vec![
        EventMsg::Chunk(Chunk::start(
            Role::Assistant,
            MessageType::Code,
            Some("python".into()),
        )),
        EventMsg::Chunk(Chunk::content(
            Role::Computer,
            MessageType::Console,
            Some("output".into()),
            "42\n",
        )),
        EventMsg::Chunk(Chunk::end(Role::Assistant, MessageType::Message, None)),
        EventMsg::Confirmation(Confirmation {
            id: "c1".into(),
            language: "python".into(),
            code: "print(6*7)".into(),
        }),
        EventMsg::Message(Message::code("python", "print(6*7)")),
        EventMsg::Notice("retrying in 1.0 s".into()),
        EventMsg::Error(error),
        EventMsg::Error(Error::new(ErrorKind::IterationCap, "Stopped")),
        EventMsg::TurnEnded(TurnEnd::Finished),
        EventMsg::TurnEnded(TurnEnd::SandboxError),
        EventMsg::Info(Box::new(ConversationInfo {
            model: "m".into(),
            provider: "OpenAI-compatible at http://x/v1".into(),
            functions: true,
            vision: false,
            context_window: 8192,
            context_tokens: 120,
            token_method: "o200k_base".into(),
            usage: Usage {
                input_tokens: 3,
                output_tokens: 4,
            },
            auto_run: false,
            messages: 2,
            session: Some(SessionInfo {
                id: "s".into(),
                container_id: Some("abc".into()),
                image: Some("oi-sandbox:1".into()),
                sandboxed: true,
            }),
        })),
        EventMsg::Messages(vec![Message::user("hi")]),
        EventMsg::Uploaded { bytes: 10240 },
        EventMsg::Downloaded(Archive::Base64 {
            data: "AAAA".into(),
        }),
        EventMsg::Done,
    ]
}

#[test]
fn every_conversation_request_and_event_round_trips_through_json() {
    for (i, request) in every_request().into_iter().enumerate() {
        let json = round_trip(&Submission {
            id: format!("r{i}"),
            request,
        });
        assert_eq!(json["id"], format!("r{i}"));
    }
    for msg in every_event() {
        let json = round_trip(&Event::new("7", msg));
        assert_eq!(json["id"], "7");
        assert!(
            json["role"].is_string(),
            "every event is LMC-shaped: {json}"
        );
    }
}

#[test]
fn the_json_keeps_open_interpreters_shapes() {
    let line = |msg: EventMsg| serde_json::to_value(Event::new("1", msg)).unwrap();
    assert_eq!(
        line(EventMsg::Chunk(Chunk::start(
            Role::Assistant,
            MessageType::Code,
            Some("python".into())
        ))),
        json!({"id": "1", "role": "assistant", "type": "code", "format": "python", "start": true})
    );
    assert_eq!(
        line(EventMsg::Confirmation(Confirmation {
            id: "c1".into(),
            language: "python".into(),
            code: "print(6*7)".into(),
        })),
        json!({"id": "1", "role": "computer", "type": "confirmation", "format": "execution",
            "confirmation": "c1",
            "content": {"type": "code", "format": "python", "content": "print(6*7)"}})
    );
    assert_eq!(
        line(EventMsg::Message(Message::user("hi"))),
        json!({"id": "1", "role": "server", "type": "message_complete",
            "content": {"role": "user", "type": "message", "content": "hi"}})
    );
    assert_eq!(
        line(EventMsg::Error(
            Error::new(ErrorKind::Connect, "could not reach").with_facts(Facts {
                url: Some("http://x".into()),
                setting: Some(Setting::ApiBase),
                ..Facts::default()
            })
        )),
        json!({"id": "1", "role": "server", "type": "error", "format": "connect",
            "content": "could not reach", "facts": {"url": "http://x", "setting": "api_base"}})
    );
    assert_eq!(
        line(EventMsg::TurnEnded(TurnEnd::IterationCap)),
        json!({"id": "1", "role": "server", "type": "turn_end", "format": "iteration_cap"})
    );
    assert_eq!(
        line(EventMsg::Done),
        json!({"id": "1", "role": "server", "type": "done"})
    );
    let request: Submission = serde_json::from_value(
        json!({"id": "9", "type": "confirm", "confirmation": "c3", "answer": "edit", "code": "x"}),
    )
    .unwrap();
    assert_eq!(
        request.request,
        Request::Confirm {
            confirmation: "c3".into(),
            answer: Answer::Edit("x".into())
        }
    );
    // A download's delivery defaults to base64: what a JSON client can read.
    let request: Submission =
        serde_json::from_value(json!({"id": "d", "type": "download", "source": "out"})).unwrap();
    assert_eq!(
        request.request,
        Request::Download {
            source: "out".into(),
            delivery: Delivery::Base64
        }
    );
}

#[test]
fn bad_requests_are_refused_naming_what_is_wrong() {
    for (json, what) in [
        (json!({"id": "1", "type": "frobnicate"}), "frobnicate"),
        (json!({"id": "1", "type": "message"}), "content"),
        (
            json!({"id": "1", "type": "confirm", "confirmation": "c1", "answer": "maybe"}),
            "maybe",
        ),
        (json!({"type": "interrupt"}), "id"),
    ] {
        let err = serde_json::from_value::<Submission>(json.clone()).unwrap_err();
        assert!(err.to_string().contains(what), "{json}: {err}");
    }
    // A message chunk cannot pose as a confirmation, nor an event of oi's as a chunk.
    assert!(serde_json::from_value::<Event>(
        json!({"id": "1", "role": "computer", "type": "confirmation", "content": "x"})
    )
    .is_err());
    assert!(serde_json::from_value::<Event>(
        json!({"id": "1", "role": "server", "type": "console", "content": "x"})
    )
    .is_err());
    // An in-process file never goes out as JSON.
    let file = Archive::File(protocol::ArchiveFile::new(tempfile::tempfile().unwrap()));
    assert!(serde_json::to_string(&Event::new("1", EventMsg::Downloaded(file))).is_err());
}

#[test]
fn every_sandbox_request_and_event_round_trips_through_json() {
    let requests = [
        SandboxRequest::Execute {
            language: "python".into(),
            code: "print(1)".into(),
            timeout_ms: Some(5000),
        },
        SandboxRequest::Interrupt,
        SandboxRequest::Upload {
            dest: ".".into(),
            archive: Archive::Base64 {
                data: "AA==".into(),
            },
        },
        SandboxRequest::Download {
            source: "out".into(),
            delivery: Delivery::Base64,
        },
        SandboxRequest::Close,
    ];
    for request in requests {
        round_trip(&SandboxSubmission {
            id: "1".into(),
            request,
        });
    }
    let events = [
        SandboxEventMsg::Stdout { text: "a\n".into() },
        SandboxEventMsg::Stderr { text: "b\n".into() },
        SandboxEventMsg::Image {
            format: "png".into(),
            base64: "AAAA".into(),
        },
        SandboxEventMsg::Notice {
            message: "restarted".into(),
        },
        SandboxEventMsg::ActiveLine { line: 3 },
        SandboxEventMsg::Done(ExecOutcome {
            status: ExecStatus::Error,
            exit_code: Some(2),
            message: None,
        }),
        SandboxEventMsg::Uploaded { bytes: 3 },
        SandboxEventMsg::Downloaded {
            archive: Archive::Base64 {
                data: "AA==".into(),
            },
        },
        SandboxEventMsg::Closed,
        SandboxEventMsg::Error(Error::new(ErrorKind::Files, "outside the workspace")),
    ];
    for msg in events {
        round_trip(&SandboxEvent {
            id: "1".into(),
            msg,
        });
    }
    let done = serde_json::to_value(SandboxEventMsg::Done(ExecOutcome {
        status: ExecStatus::TimedOut,
        exit_code: None,
        message: Some("after 5 s".into()),
    }))
    .unwrap();
    assert_eq!(
        done,
        json!({"type": "done", "status": "timed_out", "message": "after 5 s"})
    );
}

/// The checked-in schema is the one the types generate. After changing a protocol
/// type: `OI_UPDATE_SCHEMA=1 cargo test protocol::the_schema`, and review the diff.
#[test]
fn the_schema_is_checked_in_and_current() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/messages.schema.json");
    let schema = protocol::schema();
    if std::env::var("OI_UPDATE_SCHEMA").is_ok_and(|v| v == "1") {
        std::fs::write(path, &schema).unwrap();
    }
    let checked_in = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        checked_in == schema,
        "docs/messages.schema.json is not what the protocol types generate: run \
         `OI_UPDATE_SCHEMA=1 cargo test protocol::the_schema` and review the diff"
    );
    let schema: Value = serde_json::from_str(&schema).unwrap();
    for name in [
        "Submission",
        "Event",
        "ErrorKind",
        "Facts",
        "SandboxSubmission",
        "SandboxEvent",
    ] {
        assert!(schema["$defs"].get(name).is_some(), "{name} is defined");
    }
}

// ---- a client on the other side of a socket ------------------------------------------

/// A remote client: it holds a conversation only through JSON text.
struct JsonClient {
    conv: Conversation,
}

impl JsonClient {
    /// Sends one request written as JSON.
    async fn send(&self, request: Value) {
        let text = request.to_string();
        let submission: Submission = serde_json::from_str(&text).unwrap();
        self.conv.submit(submission).await.unwrap();
    }

    /// The next event, as the JSON a client would receive (checked to read back).
    async fn next(&mut self) -> Value {
        let event = tokio::time::timeout(Duration::from_secs(60), self.conv.next_event())
            .await
            .expect("an event within 60 s")
            .expect("the conversation is open");
        let text = serde_json::to_string(&event).unwrap();
        let back: Event = serde_json::from_str(&text).unwrap();
        assert_eq!(back, event);
        serde_json::from_str(&text).unwrap()
    }

    /// Sends a request that is not a turn and returns its one answer.
    async fn ask(&mut self, request: Value) -> Value {
        let id = request["id"].clone();
        self.send(request).await;
        let answer = self.next().await;
        assert_eq!(answer["id"], id, "{answer}");
        answer
    }
}

fn tar_of(name: &str, content: &[u8]) -> String {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(content.len() as u64);
    header.set_mode(0o4755);
    header.set_uid(0);
    builder.append_data(&mut header, name, content).unwrap();
    base64::engine::general_purpose::STANDARD.encode(builder.into_inner().unwrap())
}

/// A one-entry tar written header by header (the tar crate refuses to write `..`).
fn raw_tar(name: &str, kind: tar::EntryType) -> String {
    let mut header = tar::Header::new_old();
    header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    header.set_entry_type(kind);
    header.set_mode(0o644);
    header.set_size(if kind == tar::EntryType::Regular {
        2
    } else {
        0
    });
    header.set_cksum();
    let mut bytes = header.as_bytes().to_vec();
    if kind == tar::EntryType::Regular {
        let mut block = [0u8; 512];
        block[..2].copy_from_slice(b"x\n");
        bytes.extend_from_slice(&block);
    }
    bytes.extend_from_slice(&[0u8; 1024]);
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test]
async fn a_conversation_driven_only_by_json_as_a_remote_client_would() {
    let server = ScriptedServer::start(vec![
        openai::execute(
            "shell",
            "cat in.txt; stat -c '%u %a' in.txt; echo result > out.txt",
        ),
        openai::text(&["Done."]),
    ])
    .await;
    let Some(engine) = engine_with(Backend::Docker, |_| {}).await else {
        return;
    };
    let mut config = Config::new("test-model", Endpoint::openai(server.base_url(), None));
    config.sandbox = engine.config().clone();
    let mut client = JsonClient {
        conv: Conversation::start(config, engine).unwrap(),
    };

    // A file in, as a base64 tar: owned by the sandbox's user, its setuid bit gone.
    let data = tar_of("in.txt", b"hello from the client\n");
    let uploaded = client
        .ask(json!({"id": "up", "type": "upload", "dest": ".",
            "archive": {"encoding": "base64", "data": data}}))
        .await;
    assert_eq!(uploaded["type"], "uploaded", "{uploaded}");
    assert!(uploaded["content"]["bytes"].as_u64().unwrap() > 0);

    // An archive that would climb out of its folder, or holds a device, is refused whole.
    for (name, kind, why) in [
        (
            "../evil",
            tar::EntryType::Regular,
            "may only hold plain relative names",
        ),
        (
            "fifo",
            tar::EntryType::Fifo,
            "a Fifo entry is not copied in",
        ),
    ] {
        let refused = client
            .ask(json!({"id": "bad", "type": "upload", "dest": ".",
                "archive": {"encoding": "base64", "data": raw_tar(name, kind)}}))
            .await;
        assert_eq!(refused["format"], "files", "{refused}");
        assert!(
            refused["content"].as_str().unwrap().contains(why),
            "{refused}"
        );
    }

    // A turn: the confirmation is answered by its id, the answer acknowledged.
    client
        .send(json!({"id": "m1", "type": "message", "content": "read in.txt"}))
        .await;
    let mut console = String::new();
    loop {
        let event = client.next().await;
        if event["id"] == "a1" {
            assert_eq!(event, json!({"id": "a1", "role": "server", "type": "done"}));
            continue;
        }
        assert_eq!(event["id"], "m1", "{event}");
        if event["type"] == "confirmation" {
            assert_eq!(event["content"]["format"], "shell");
            // An answer naming another confirmation is refused, and changes nothing.
            let wrong = client
                .ask(json!({"id": "a0", "type": "confirm", "confirmation": "c99", "answer": "run"}))
                .await;
            assert_eq!(wrong["type"], "error", "{wrong}");
            assert_eq!(wrong["format"], "unknown_confirmation");
            let confirmation = event["confirmation"].clone();
            client
                .send(
                    json!({"id": "a1", "type": "confirm", "confirmation": confirmation,
                    "answer": "run"}),
                )
                .await;
        }
        if event["type"] == "console" && event["format"] == "output" {
            console.push_str(event["content"].as_str().unwrap_or(""));
        }
        if event["type"] == "turn_end" {
            assert_eq!(event["format"], "finished", "{event}");
            break;
        }
    }
    assert_eq!(console, "hello from the client\n1000 755\n");

    // The file the code wrote comes back out as a base64 tar.
    let downloaded = client
        .ask(json!({"id": "dl", "type": "download", "source": "out.txt"}))
        .await;
    assert_eq!(downloaded["type"], "downloaded", "{downloaded}");
    assert_eq!(downloaded["content"]["encoding"], "base64");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(downloaded["content"]["data"].as_str().unwrap())
        .unwrap();
    let mut archive = tar::Archive::new(bytes.as_slice());
    let mut entry = archive.entries().unwrap().next().unwrap().unwrap();
    assert_eq!(entry.path().unwrap().to_str(), Some("out.txt"));
    let mut content = String::new();
    entry.read_to_string(&mut content).unwrap();
    assert_eq!(content, "result\n");

    // What a copy may not do is an error answer, typed.
    let refused = client
        .ask(json!({"id": "dl2", "type": "download", "source": "/etc/passwd"}))
        .await;
    assert_eq!(refused["format"], "files", "{refused}");
    assert!(refused["content"]
        .as_str()
        .unwrap()
        .contains("outside the workspace"));

    // Facts and messages are requests like the others.
    let info = client.ask(json!({"id": "i", "type": "info"})).await;
    assert_eq!(info["type"], "info");
    assert_eq!(info["content"]["model"], "test-model");
    assert_eq!(info["content"]["session"]["sandboxed"], true);
    let messages = client.ask(json!({"id": "ms", "type": "messages"})).await;
    let messages: Vec<Message> = serde_json::from_value(messages["content"].clone()).unwrap();
    assert_eq!(messages[0], Message::user("read in.txt"));
    assert_eq!(messages.last().unwrap(), &Message::assistant("Done."));
    let undone = client.ask(json!({"id": "u", "type": "undo"})).await;
    assert_eq!(undone, json!({"id": "u", "role": "server", "type": "done"}));
    let messages = client.ask(json!({"id": "ms2", "type": "messages"})).await;
    assert_eq!(messages["content"], json!([]));
    client.conv.shutdown().await;
}

#[tokio::test]
async fn ids_are_checked_and_a_running_turn_makes_calls_wait_their_turn() {
    let server = ScriptedServer::start(vec![
        Reply::Stream(vec![openai::delta("Thinking"), Step::Stall]),
        openai::text(&["ok"]),
    ])
    .await;
    let Some(engine) = engine_with(Backend::Host, |_| {}).await else {
        return;
    };
    let mut config = Config::new("test-model", Endpoint::openai(server.base_url(), None));
    config.sandbox = engine.config().clone();
    let mut conv = Conversation::start(config, engine).unwrap();
    let err = conv
        .submit(Submission {
            id: "x".repeat(protocol::MAX_ID_LEN + 1),
            request: Request::Info,
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidRequest);

    let turn = conv.send(Request::message("think")).await;
    let err = conv.info().await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Busy, "{err}");
    loop {
        let event = conv.next_event().await.unwrap();
        if matches!(&event.msg, EventMsg::Chunk(c) if c.content.as_deref() == Some("Thinking")) {
            break;
        }
    }
    let interrupt = conv.send(Request::Interrupt).await;
    let mut answered = false;
    loop {
        let event = conv.next_event().await.unwrap();
        if event.id == interrupt {
            assert_eq!(event.msg, EventMsg::Done);
            answered = true;
            continue;
        }
        assert_eq!(event.id, turn);
        if let EventMsg::TurnEnded(end) = event.msg {
            assert_eq!(end, TurnEnd::Interrupted);
            break;
        }
    }
    assert!(answered, "the interrupt was answered");
    // The turn is over: calls work again.
    assert_eq!(conv.info().await.unwrap().messages, 2);
    conv.shutdown().await;
}

/// A bare sandbox session driven by JSON only: what the server's sandbox API and MCP's
/// tools do.
#[tokio::test]
async fn a_sandbox_session_driven_only_by_json() {
    let Some(engine) = engine_with(Backend::Docker, |_| {}).await else {
        return;
    };
    let mut sandbox = SandboxChannel::start(engine.open().await.unwrap());
    let send = |request: Value| -> SandboxSubmission {
        serde_json::from_str(&request.to_string()).unwrap()
    };
    // Events of one request, as JSON, up to and including its last.
    async fn read(sandbox: &mut SandboxChannel, id: &str, last: &[&str]) -> Vec<Value> {
        let mut events = Vec::new();
        loop {
            let event = tokio::time::timeout(Duration::from_secs(60), sandbox.next_event())
                .await
                .expect("an event within 60 s")
                .expect("the session is open");
            let json = serde_json::to_value(&event).unwrap();
            assert_eq!(
                serde_json::from_value::<SandboxEvent>(json.clone()).unwrap(),
                event
            );
            assert_eq!(json["id"], id, "{json}");
            let done = last.contains(&json["type"].as_str().unwrap());
            events.push(json);
            if done {
                return events;
            }
        }
    }
    for (id, code) in [("1", "x = 41"), ("2", "print(x + 1)")] {
        let submission = send(json!({"id": id, "type": "execute", "language": "python",
            "code": code}));
        sandbox.submit(submission).await.unwrap();
    }
    let first = read(&mut sandbox, "1", &["done", "error"]).await;
    assert_eq!(first, [json!({"id": "1", "type": "done", "status": "ok"})]);
    let second = read(&mut sandbox, "2", &["done", "error"]).await;
    assert_eq!(
        second[0],
        json!({"id": "2", "type": "stdout", "text": "42\n"})
    );

    // A language the sandbox does not have: the request's fault, with what there is.
    let bad = send(json!({"id": "3", "type": "execute", "language": "cobol", "code": "x"}));
    sandbox.submit(bad).await.unwrap();
    let refused = read(&mut sandbox, "3", &["done", "error"]).await;
    assert_eq!(refused[0]["format"], "invalid_request", "{refused:?}");
    assert_eq!(refused[0]["facts"]["available"], json!(["python", "shell"]));

    // An interrupt acts at once; the block's done says so, and the state is kept.
    let sleep = send(json!({"id": "4", "type": "execute", "language": "python",
        "code": "import time\ntime.sleep(60)", "timeout_ms": 30000}));
    sandbox.submit(sleep).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    sandbox
        .submit(send(json!({"id": "5", "type": "interrupt"})))
        .await
        .unwrap();
    let interrupted = read(&mut sandbox, "4", &["done", "error"]).await;
    assert_eq!(interrupted.last().unwrap()["status"], "interrupted");

    // Files in and out as base64 archives.
    let data = tar_of("in.txt", b"abc");
    sandbox
        .submit(send(json!({"id": "6", "type": "upload", "dest": ".",
            "archive": {"encoding": "base64", "data": data}})))
        .await
        .unwrap();
    let uploaded = read(&mut sandbox, "6", &["uploaded", "error"]).await;
    assert_eq!(uploaded[0]["type"], "uploaded", "{uploaded:?}");
    sandbox
        .submit(send(
            json!({"id": "7", "type": "download", "source": "in.txt"}),
        ))
        .await
        .unwrap();
    let downloaded = read(&mut sandbox, "7", &["downloaded", "error"]).await;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(downloaded[0]["archive"]["data"].as_str().unwrap())
        .unwrap();
    let mut archive = tar::Archive::new(bytes.as_slice());
    let mut content = String::new();
    archive
        .entries()
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .read_to_string(&mut content)
        .unwrap();
    assert_eq!(content, "abc");
    sandbox
        .submit(send(
            json!({"id": "8", "type": "execute", "language": "python",
            "code": "print(x)"}),
        ))
        .await
        .unwrap();
    let kept = read(&mut sandbox, "8", &["done", "error"]).await;
    assert_eq!(kept[0]["text"], "41\n", "{kept:?}");

    sandbox
        .submit(send(json!({"id": "9", "type": "close"})))
        .await
        .unwrap();
    let closed = read(&mut sandbox, "9", &["closed", "error"]).await;
    assert_eq!(closed, [json!({"id": "9", "type": "closed"})]);
    assert!(sandbox.next_event().await.is_none());
    sandbox.close().await;
}
