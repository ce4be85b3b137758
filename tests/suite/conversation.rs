//! The conversation loop against scripted model servers (real HTTP, real SSE) and real
//! sandboxes: what oi streams out, what it runs, and what it sends back to the model.

use std::time::{Duration, Instant};

use oi::core::code_interpreter::Backend;
use oi::core::config::{Config, ToolMode};
use oi::core::llm::Endpoint;
use oi::core::messages::{parse_conversation, Message, MessageType, Role};
use oi::core::protocol::{Answer, EventMsg, Request, TurnEnd};
use oi::core::respond::Conversation;
use oi::terminal_interface::chat::render::error_text;
use serde_json::{json, Value};

use super::engine_with;
use super::llm_server::{anthropic, error, openai, Reply, ScriptedServer, Step};

/// A test model's configuration: fast retries, a short idle timeout.
fn config(endpoint: Endpoint) -> Config {
    let mut config = Config::new("test-model", endpoint);
    config.retry.initial_backoff = Duration::from_millis(10);
    config.retry.max_backoff = Duration::from_millis(50);
    config.endpoint.idle_timeout = Duration::from_secs(5);
    config
}

async fn start(
    backend: Backend,
    endpoint: Endpoint,
    tweak: impl FnOnce(&mut Config),
) -> Option<Conversation> {
    let engine = engine_with(backend, |_| {}).await?;
    let mut config = config(endpoint);
    config.sandbox = engine.config().clone();
    tweak(&mut config);
    Some(Conversation::start(config, engine).expect("provider builds"))
}

async fn openai_chat(
    backend: Backend,
    server: &ScriptedServer,
    tweak: impl FnOnce(&mut Config),
) -> Option<Conversation> {
    start(
        backend,
        Endpoint::openai(server.base_url(), Some("sk-test".into())),
        tweak,
    )
    .await
}

/// One turn's events (without its `TurnEnded`) and how it ended.
#[derive(Debug)]
pub(crate) struct Turn {
    pub(crate) events: Vec<EventMsg>,
    pub(crate) end: TurnEnd,
}

impl Turn {
    pub(crate) fn chunk_text(&self, kind: MessageType) -> String {
        self.events
            .iter()
            .filter_map(|e| match e {
                EventMsg::Chunk(c)
                    if c.kind == kind && c.format.as_deref() != Some("active_line") =>
                {
                    c.content.clone()
                }
                _ => None,
            })
            .collect()
    }

    pub(crate) fn active_lines(&self) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|e| match e {
                EventMsg::Chunk(c) if c.format.as_deref() == Some("active_line") => {
                    c.content.clone()
                }
                _ => None,
            })
            .collect()
    }

    pub(crate) fn console(&self) -> String {
        self.chunk_text(MessageType::Console)
    }

    pub(crate) fn prose(&self) -> String {
        self.chunk_text(MessageType::Message)
    }

    /// Each error's kind and its text as the terminal words it.
    pub(crate) fn errors(&self) -> Vec<(String, String)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                EventMsg::Error(error) => {
                    Some((error.kind.as_str().to_string(), error_text(error)))
                }
                _ => None,
            })
            .collect()
    }

    pub(crate) fn notices(&self) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|e| match e {
                EventMsg::Notice(n) => Some(n.clone()),
                _ => None,
            })
            .collect()
    }

    pub(crate) fn confirmations(&self) -> usize {
        self.events
            .iter()
            .filter(|e| matches!(e, EventMsg::Confirmation(_)))
            .count()
    }
}

/// Sends a message and reads the turn to its end, answering confirmations with `answer`.
async fn turn_with(
    conv: &mut Conversation,
    text: &str,
    answer: impl FnMut(&str) -> Answer,
) -> Turn {
    request_with(conv, Request::message(text), answer).await
}

/// Sends a request that starts a turn (a message, code to run) and reads the turn to
/// its end, answering confirmations with `answer`.
pub(crate) async fn request_with(
    conv: &mut Conversation,
    request: Request,
    mut answer: impl FnMut(&str) -> Answer,
) -> Turn {
    let id = conv.send(request).await;
    let mut events = Vec::new();
    let read = async {
        while let Some(event) = conv.next_event().await {
            if event.id != id {
                // The answer to a confirmation sent below: it named the right one.
                assert_eq!(event.msg, EventMsg::Done, "{event:?}");
                continue;
            }
            match event.msg {
                EventMsg::Confirmation(c) => {
                    let request = Request::Confirm {
                        confirmation: c.id.clone(),
                        answer: answer(&c.code),
                    };
                    conv.send(request).await;
                    events.push(EventMsg::Confirmation(c));
                }
                EventMsg::TurnEnded(end) => return end,
                msg => events.push(msg),
            }
        }
        panic!("the conversation ended mid-turn: {events:#?}");
    };
    let end = tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .expect("the turn ended within 60 s");
    Turn { events, end }
}

pub(crate) async fn turn(conv: &mut Conversation, text: &str) -> Turn {
    turn_with(conv, text, |_| Answer::Run).await
}

/// The wire messages of a recorded request.
fn wire_messages(body: &Value) -> &Vec<Value> {
    body["messages"].as_array().expect("messages array")
}

/// The contents of the `tool` messages in an OpenAI request, in order.
fn tool_results(body: &Value) -> Vec<String> {
    wire_messages(body)
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| m["content"].as_str().unwrap_or("").to_string())
        .collect()
}

fn last_message(body: &Value) -> &Value {
    wire_messages(body).last().unwrap()
}

#[tokio::test]
async fn openai_model_runs_two_blocks_in_docker_and_gets_42_back() {
    let server = ScriptedServer::start(vec![
        openai::execute("python", "x = 6*7"),
        openai::execute("python", "print(x)"),
        openai::text(&["The answer ", "is 42."]),
    ])
    .await;
    let Some(mut conv) = openai_chat(Backend::Docker, &server, |c| c.auto_run = true).await else {
        return;
    };
    let t = turn(&mut conv, "What is 6*7?").await;
    assert_eq!(t.end, TurnEnd::Finished, "{t:#?}");
    assert_eq!(t.console(), "42\n");
    assert_eq!(t.prose(), "The answer is 42.");

    let requests = server.requests();
    assert_eq!(requests.len(), 3);
    let first = &requests[0];
    assert_eq!(first.path, "/v1/chat/completions");
    assert_eq!(first.header("authorization"), Some("Bearer sk-test"));
    assert_eq!(first.body["stream"], true);
    assert_eq!(first.body["model"], "test-model");
    let tool = &first.body["tools"][0]["function"];
    assert_eq!(tool["name"], "execute");
    assert_eq!(
        tool["parameters"]["properties"]["language"]["enum"],
        json!(["python", "shell"])
    );
    assert_eq!(tool["parameters"]["required"], json!(["language", "code"]));
    let system = wire_messages(&first.body)[0]["content"].as_str().unwrap();
    assert!(system.contains("sandboxed Linux container"), "{system}");
    assert!(system.contains("no network access"), "{system}");
    assert_eq!(
        wire_messages(&first.body)[1],
        json!({"role": "user", "content": "What is 6*7?"})
    );
    // The second block's output went back to the model as the result of its call.
    let third = &requests[2].body;
    assert_eq!(tool_results(third), vec!["(no output)", "42\n"]);
    let calls: Vec<&Value> = wire_messages(third)
        .iter()
        .filter_map(|m| m["tool_calls"].get(0))
        .collect();
    assert_eq!(calls.len(), 2);
    let args: Value =
        serde_json::from_str(calls[1]["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"language": "python", "code": "print(x)"}));
    assert_eq!(
        last_message(third)["tool_call_id"],
        calls[1]["id"],
        "the result answers the call"
    );

    // The conversation, in LMC, and it survives a round trip through its JSON.
    let messages = conv.messages().await.unwrap();
    assert_eq!(
        messages,
        vec![
            Message::user("What is 6*7?"),
            Message::code("python", "x = 6*7"),
            Message::console(""),
            Message::code("python", "print(x)"),
            Message::console("42\n"),
            Message::assistant("The answer is 42."),
        ]
    );
    let json = serde_json::to_string(&messages).unwrap();
    assert_eq!(parse_conversation(&json).unwrap(), messages);
    conv.shutdown().await;
}

#[tokio::test]
async fn anthropic_model_uses_tools_natively_in_docker() {
    let server = ScriptedServer::start(vec![
        anthropic::execute("Computing.", "python", "x = 6*7"),
        anthropic::execute("", "python", "print(x)"),
        anthropic::text(&["It is ", "42."]),
    ])
    .await;
    let endpoint = Endpoint::anthropic(server.base_url(), Some("sk-ant-test".into()));
    let Some(mut conv) = start(Backend::Docker, endpoint, |c| {
        c.model = "claude-test".into();
        c.auto_run = true;
    })
    .await
    else {
        return;
    };
    let t = turn(&mut conv, "What is 6*7?").await;
    assert_eq!(t.end, TurnEnd::Finished, "{t:#?}");
    assert_eq!(t.console(), "42\n");
    assert_eq!(t.prose(), "Computing.It is 42.");

    let requests = server.requests();
    assert_eq!(requests.len(), 3);
    let first = &requests[0];
    assert_eq!(first.path, "/v1/messages");
    assert_eq!(first.header("x-api-key"), Some("sk-ant-test"));
    assert_eq!(first.header("anthropic-version"), Some("2023-06-01"));
    assert!(first.body["system"].as_str().unwrap().contains("sandboxed"));
    assert_eq!(first.body["tools"][0]["name"], "execute");
    assert_eq!(first.body["tools"][0]["input_schema"]["type"], "object");
    assert!(first.body["max_tokens"].as_u64().unwrap() > 0);
    let third = &requests[2].body;
    let messages = wire_messages(third);
    // user, assistant(text + tool_use), user(tool_result), assistant(tool_use), user(tool_result)
    assert_eq!(messages.len(), 5, "{third:#}");
    assert_eq!(messages[1]["content"][0]["text"], "Computing.");
    assert_eq!(messages[1]["content"][1]["type"], "tool_use");
    assert_eq!(
        messages[1]["content"][1]["input"],
        json!({"language": "python", "code": "x = 6*7"})
    );
    let result = &messages[4]["content"][0];
    assert_eq!(result["type"], "tool_result");
    assert_eq!(result["tool_use_id"], messages[3]["content"][0]["id"]);
    assert_eq!(result["content"][0]["text"], "42\n");
    let info = conv.info().await.unwrap();
    assert_eq!(
        info.usage.input_tokens, 36,
        "usage summed over the 3 replies"
    );
    assert!(info.session.unwrap().sandboxed);
    conv.shutdown().await;
}

#[tokio::test]
async fn text_mode_runs_fenced_blocks_and_sends_the_output_as_a_message() {
    let server = ScriptedServer::start(vec![
        openai::text(&[
            "Sure:\n```py",
            "thon\nprint(6*",
            "7)\n```\nThis prints 42 (invented).",
        ]),
        openai::text(&["It is 42."]),
    ])
    .await;
    let Some(mut conv) = openai_chat(Backend::Host, &server, |c| {
        c.auto_run = true;
        c.tool_mode = ToolMode::Text;
    })
    .await
    else {
        return;
    };
    let t = turn(&mut conv, "6*7?").await;
    assert_eq!(t.end, TurnEnd::Finished, "{t:#?}");
    assert_eq!(t.console(), "42\n");
    let requests = server.requests();
    assert!(requests[0].body.get("tools").is_none());
    let system = wire_messages(&requests[0].body)[0]["content"]
        .as_str()
        .unwrap();
    assert!(system.contains("fenced markdown block"), "{system}");
    let second = &requests[1].body;
    let messages = wire_messages(second);
    assert_eq!(
        messages[2]["content"], "Sure:\n```python\nprint(6*7)\n```",
        "what followed the block was not kept"
    );
    assert_eq!(
        last_message(second),
        &json!({"role": "user", "content": "Code output:\n42\n"})
    );
    conv.shutdown().await;
}

#[tokio::test]
async fn what_local_models_write_is_repaired_or_reported_back() {
    let server = ScriptedServer::start(vec![
        // Tool-call JSON written as the reply's text.
        openai::text(&[
            "{\"name\": \"execute\", \"arguments\": ",
            "{\"language\": \"python\", \"code\": \"a = 1\"}}",
        ]),
        // Python-style call as text.
        openai::text(&["functions.execute(language=\"python\", code=\"b = a + 1\")"]),
        // A tool named after the language, with bare code.
        openai::call("python", "c = b + 1"),
        // No language: the default (python).
        openai::call("execute", r#"{"code": "print(a + b + c)"}"#),
        // An odd spelling of a known language.
        openai::call(
            "execute",
            r#"{"language": "Python3", "code": "print('odd')"}"#,
        ),
        openai::call("execute", r#"{"language": "python", "code": "  "}"#),
        openai::call("execute", r#"{"language": "cobol", "code": "DISPLAY 1"}"#),
        openai::call("execute", r#"{"language": "python", "code": "print(1)""#),
        openai::text(&["All done."]),
    ])
    .await;
    let Some(mut conv) = openai_chat(Backend::Host, &server, |c| c.auto_run = true).await else {
        return;
    };
    let t = turn(&mut conv, "go").await;
    assert_eq!(t.end, TurnEnd::Finished, "{t:#?}");
    assert_eq!(
        t.prose(),
        "All done.",
        "held-back tool text was not shown as prose"
    );
    let last = server.requests().pop().unwrap().body;
    let results = tool_results(&last);
    assert_eq!(results.len(), 8, "{results:#?}");
    assert_eq!(
        &results[..5],
        ["(no output)", "(no output)", "(no output)", "6\n", "odd\n"]
    );
    assert_eq!(results[5], "Nothing ran: the code block was empty.");
    assert_eq!(
        results[6],
        "Nothing ran: `cobol` is not a language available here. Available: python, shell."
    );
    assert!(
        results[7].starts_with("The arguments of `execute` are not valid JSON"),
        "{}",
        results[7]
    );
    conv.shutdown().await;
}

#[tokio::test]
async fn confirmations_run_decline_edit_and_always() {
    let server = ScriptedServer::start(vec![
        openai::execute("python", "print('declined')"),
        openai::text(&["Understood."]),
        openai::execute("python", "print('original')"),
        openai::text(&["ok"]),
        openai::execute("python", "print(1)"),
        openai::execute("python", "print(2)"),
        openai::text(&["done"]),
    ])
    .await;
    let Some(mut conv) = openai_chat(Backend::Host, &server, |_| {}).await else {
        return;
    };
    let t = turn_with(&mut conv, "first", |_| Answer::Decline).await;
    assert_eq!(t.end, TurnEnd::Declined);
    assert_eq!(t.confirmations(), 1);
    assert_eq!(t.console(), "The user declined to run this code.");
    // The next message goes on from a consistent conversation.
    let t = turn(&mut conv, "why not?").await;
    assert_eq!(t.end, TurnEnd::Finished);
    let body = &server.requests()[1].body;
    assert_eq!(tool_results(body), ["The user declined to run this code."]);
    assert_eq!(last_message(body)["content"], "why not?");

    let t = turn_with(&mut conv, "second", |_| {
        Answer::Edit("print('edited')".into())
    })
    .await;
    assert_eq!(t.console(), "edited\n");
    let body = &server.requests()[3].body;
    assert_eq!(
        tool_results(body),
        ["The user declined to run this code.", "edited\n"]
    );
    assert!(body.to_string().contains("print('edited')"));

    let t = turn_with(&mut conv, "third", |_| Answer::Always).await;
    assert_eq!(t.end, TurnEnd::Finished);
    assert_eq!(t.confirmations(), 1, "after 'always' no more questions");
    assert_eq!(t.console(), "1\n2\n");
    assert!(conv.info().await.unwrap().auto_run);
    conv.shutdown().await;
}

#[tokio::test]
async fn long_output_is_cut_for_the_model_but_streams_whole() {
    let server = ScriptedServer::start(vec![
        openai::execute("python", "for i in range(5000): print(i)"),
        openai::text(&["ok"]),
    ])
    .await;
    let Some(mut conv) = openai_chat(Backend::Host, &server, |c| {
        c.auto_run = true;
        c.max_output = 200;
    })
    .await
    else {
        return;
    };
    let t = turn(&mut conv, "count").await;
    assert_eq!(t.console().lines().count(), 5000);
    let result = &tool_results(&server.requests()[1].body)[0];
    assert!(result.starts_with("0\n1\n2\n"), "{result}");
    assert!(result.ends_with("4998\n4999\n"), "{result}");
    assert!(
        result.contains("characters cut: the output had 23890 characters; showing the first 100 and the last 100"),
        "{result}"
    );
    conv.shutdown().await;
}

#[tokio::test]
async fn images_go_back_to_a_vision_model() {
    let server = ScriptedServer::start(vec![
        openai::execute(
            "python",
            "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()",
        ),
        openai::text(&["A line."]),
    ])
    .await;
    let Some(mut conv) = openai_chat(Backend::Docker, &server, |c| {
        c.auto_run = true;
        c.vision = Some(true);
    })
    .await
    else {
        return;
    };
    let t = turn(&mut conv, "plot").await;
    assert_eq!(t.end, TurnEnd::Finished, "{t:#?}");
    let image = t
        .events
        .iter()
        .find_map(|e| match e {
            EventMsg::Message(m) if m.kind == MessageType::Image => Some(m.clone()),
            _ => None,
        })
        .expect("an image message");
    assert_eq!(image.format.as_deref(), Some("base64.png"));
    let body = &server.requests()[1].body;
    let url = last_message(body)["content"][0]["image_url"]["url"]
        .as_str()
        .unwrap();
    assert!(
        url.starts_with("data:image/png;base64,iVBORw0KGgo"),
        "{url:.60}"
    );
    conv.shutdown().await;
}

#[tokio::test]
async fn the_iteration_cap_ends_a_runaway_turn_and_the_next_message_works() {
    let server = ScriptedServer::start(vec![
        openai::execute("python", "1"),
        openai::execute("python", "2"),
        openai::text(&["back"]),
    ])
    .await;
    let Some(mut conv) = openai_chat(Backend::Host, &server, |c| {
        c.auto_run = true;
        c.max_iterations = 2;
    })
    .await
    else {
        return;
    };
    let t = turn(&mut conv, "loop").await;
    assert_eq!(t.end, TurnEnd::IterationCap);
    let errors = t.errors();
    assert_eq!(errors[0].0, "iteration_cap");
    assert!(errors[0].1.contains("max_iterations"), "{}", errors[0].1);
    let t = turn(&mut conv, "continue").await;
    assert_eq!(t.end, TurnEnd::Finished);
    assert_eq!(t.prose(), "back");
    conv.shutdown().await;
}

#[tokio::test]
async fn the_oldest_exchanges_are_trimmed_to_fit_the_window() {
    let server = ScriptedServer::start(vec![openai::text(&["ok"])]).await;
    let Some(mut conv) = openai_chat(Backend::Host, &server, |c| {
        c.context_window = Some(550);
        c.max_tokens = Some(100);
        c.system_message = Some("You run code.".into());
    })
    .await
    else {
        return;
    };
    let filler = |tag: &str| format!("{tag} {}", "x".repeat(400));
    conv.call(Request::Load {
        messages: vec![
            Message::user(filler("u1")),
            Message::assistant(filler("a1")),
            Message::user(filler("u2")),
            Message::assistant(filler("a2")),
            Message::user(filler("u3")),
            Message::assistant(filler("a3")),
        ],
    })
    .await
    .unwrap();
    let t = turn(&mut conv, "latest").await;
    assert_eq!(t.end, TurnEnd::Finished);
    assert!(
        t.notices()
            .iter()
            .any(|n| n.contains("the oldest 4 messages are not sent")),
        "{:?}",
        t.notices()
    );
    let body = &server.requests()[0].body;
    let sent: Vec<String> = wire_messages(body)
        .iter()
        .map(|m| {
            m["content"]
                .as_str()
                .unwrap_or("")
                .chars()
                .take(2)
                .collect()
        })
        .collect();
    assert_eq!(
        sent,
        ["Yo", "u3", "a3", "la"],
        "system, then the newest exchanges"
    );
    assert_eq!(body["max_tokens"], 100);
    // Nothing is lost from the conversation itself.
    assert_eq!(conv.messages().await.unwrap().len(), 8);
    conv.shutdown().await;
}

#[tokio::test]
async fn an_interrupt_stops_the_model_stream_within_a_second() {
    let server = ScriptedServer::start(vec![
        Reply::Stream(vec![openai::delta("Thinking"), Step::Stall]),
        openai::text(&["Fine."]),
    ])
    .await;
    let Some(mut conv) = openai_chat(Backend::Host, &server, |_| {}).await else {
        return;
    };
    conv.send(Request::message("think")).await;
    loop {
        match conv.next_event().await.unwrap().msg {
            EventMsg::Chunk(c) if c.content.as_deref() == Some("Thinking") => break,
            _ => {}
        }
    }
    let asked = Instant::now();
    conv.interrupt();
    let end = loop {
        if let EventMsg::TurnEnded(end) = conv.next_event().await.unwrap().msg {
            break end;
        }
    };
    assert_eq!(end, TurnEnd::Interrupted);
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );
    let t = turn(&mut conv, "and?").await;
    assert_eq!(t.end, TurnEnd::Finished);
    let body = &server.requests()[1].body;
    assert_eq!(
        wire_messages(body)[2],
        json!({"role": "assistant", "content": "Thinking"})
    );
    conv.shutdown().await;
}

#[tokio::test]
async fn an_interrupt_stops_running_code_and_keeps_the_state() {
    let server = ScriptedServer::start(vec![
        openai::execute("python", "x = 5"),
        openai::execute("python", "import time\ntime.sleep(60)"),
        openai::execute("python", "print(x)"),
        openai::text(&["x is 5"]),
    ])
    .await;
    let Some(mut conv) = openai_chat(Backend::Docker, &server, |c| c.auto_run = true).await else {
        return;
    };
    conv.send(Request::message("sleep")).await;
    let mut code_blocks = 0;
    loop {
        match conv.next_event().await.unwrap().msg {
            EventMsg::Message(m) if m.kind == MessageType::Code => {
                code_blocks += 1;
                if code_blocks == 2 {
                    break;
                }
            }
            _ => {}
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = Instant::now();
    conv.interrupt();
    let mut console = String::new();
    let end = loop {
        match conv.next_event().await.unwrap().msg {
            EventMsg::TurnEnded(end) => break end,
            EventMsg::Chunk(c) if c.kind == MessageType::Console => {
                console.push_str(c.content.as_deref().unwrap_or(""))
            }
            _ => {}
        }
    };
    assert_eq!(end, TurnEnd::Interrupted);
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );
    assert!(console.contains("[interrupted by the user]"), "{console}");
    let t = turn(&mut conv, "what is x?").await;
    assert_eq!(t.console(), "5\n");
    let results = tool_results(&server.requests()[2].body);
    assert!(results[1].contains("KeyboardInterrupt"), "{results:?}");
    conv.shutdown().await;
}

#[tokio::test]
async fn a_rejected_key_names_the_setting_and_nothing_is_lost() {
    let server = ScriptedServer::start(vec![
        error(
            401,
            r#"{"error":{"message":"Incorrect API key provided: sk-bad"}}"#,
        ),
        openai::text(&["hello"]),
    ])
    .await;
    let Some(mut conv) = openai_chat(Backend::Host, &server, |_| {}).await else {
        return;
    };
    let t = turn(&mut conv, "first").await;
    assert_eq!(t.end, TurnEnd::ModelError);
    let (kind, message) = &t.errors()[0];
    assert_eq!(kind, "auth");
    assert!(
        message.contains("rejected the API key (HTTP 401)"),
        "{message}"
    );
    assert!(message.contains("Incorrect API key provided"), "{message}");
    assert!(
        message.contains("Set OPENAI_API_KEY or --api-key"),
        "{message}"
    );
    assert_eq!(server.requests().len(), 1, "not retried");
    let t = turn(&mut conv, "second").await;
    assert_eq!(t.end, TurnEnd::Finished);
    let body = &server.requests()[1].body;
    // Consecutive user messages are sent as one: strict chat templates need turns to
    // alternate.
    assert_eq!(wire_messages(body)[1]["content"], "first\n\nsecond");
    conv.shutdown().await;
}

#[tokio::test]
async fn an_unknown_model_lists_what_the_server_offers() {
    let server = ScriptedServer::start(vec![error(
        404,
        r#"{"error":{"message":"The model `test-model` does not exist","code":"model_not_found"}}"#,
    )])
    .await;
    server.set_models(&["llama3.2", "qwen2.5-coder"]);
    let Some(mut conv) = openai_chat(Backend::Host, &server, |_| {}).await else {
        return;
    };
    let t = turn(&mut conv, "hi").await;
    assert_eq!(t.end, TurnEnd::ModelError);
    let (kind, message) = &t.errors()[0];
    assert_eq!(kind, "unknown_model");
    assert!(
        message.contains("does not know the model `test-model`"),
        "{message}"
    );
    assert!(
        message.contains("It offers: llama3.2, qwen2.5-coder"),
        "{message}"
    );
    conv.shutdown().await;
}

#[tokio::test]
async fn a_refused_connection_names_the_url_after_bounded_retries() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/v1");
    let Some(mut conv) = start(Backend::Host, Endpoint::openai(&url, None), |c| {
        c.retry.max_retries = 2;
    })
    .await
    else {
        return;
    };
    let t = turn(&mut conv, "hi").await;
    assert_eq!(t.end, TurnEnd::ModelError);
    assert_eq!(t.notices().len(), 2, "{:?}", t.notices());
    assert!(t.notices()[0].contains("retrying"), "{:?}", t.notices());
    let (kind, message) = &t.errors()[0];
    assert_eq!(kind, "connect");
    assert!(
        message.contains(&format!("{url}/chat/completions")),
        "{message}"
    );
    assert!(message.contains("--api-base"), "{message}");
    conv.shutdown().await;
}

#[tokio::test]
async fn rate_limits_and_server_errors_are_retried_with_backoff() {
    let server = ScriptedServer::start(vec![
        Reply::Status {
            status: 429,
            body: r#"{"error":{"message":"Rate limit reached"}}"#.into(),
            headers: vec![("Retry-After".into(), "0.05".into())],
        },
        error(503, "upstream busy"),
        openai::text(&["made it"]),
        error(500, "boom"),
        error(500, "boom"),
        error(500, "boom"),
        error(500, "boom"),
    ])
    .await;
    let Some(mut conv) = openai_chat(Backend::Host, &server, |c| c.retry.max_retries = 3).await
    else {
        return;
    };
    let t = turn(&mut conv, "hi").await;
    assert_eq!(t.end, TurnEnd::Finished);
    assert_eq!(t.prose(), "made it");
    assert_eq!(server.requests().len(), 3);
    assert!(
        t.notices()[0].contains("rate limiting"),
        "{:?}",
        t.notices()
    );
    let t = turn(&mut conv, "again").await;
    assert_eq!(t.end, TurnEnd::ModelError);
    assert_eq!(
        server.requests().len(),
        3 + 4,
        "one attempt and three retries"
    );
    let (kind, message) = &t.errors()[0];
    assert_eq!(kind, "server");
    assert!(message.contains("HTTP 500"), "{message}");
    conv.shutdown().await;
}

#[tokio::test]
async fn a_stalled_or_cut_stream_is_retried_when_nothing_was_shown() {
    let server = ScriptedServer::start(vec![
        Reply::Stream(vec![Step::Stall]),
        // Ends without a finish.
        Reply::Stream(vec![]),
        openai::text(&["ok"]),
        Reply::Stream(vec![openai::delta("Hal"), Step::Stall]),
        openai::text(&["recovered"]),
    ])
    .await;
    let Some(mut conv) = openai_chat(Backend::Host, &server, |c| {
        c.endpoint.idle_timeout = Duration::from_millis(300);
    })
    .await
    else {
        return;
    };
    let t = turn(&mut conv, "hi").await;
    assert_eq!(t.end, TurnEnd::Finished, "{t:#?}");
    let notices = t.notices();
    assert!(notices[0].contains("stalled"), "{notices:?}");
    assert!(
        notices[1].contains("ended before the reply was complete"),
        "{notices:?}"
    );
    // Once text was shown, a stall is reported rather than retried (it would repeat it).
    let t = turn(&mut conv, "more").await;
    assert_eq!(t.end, TurnEnd::ModelError);
    assert_eq!(t.errors()[0].0, "stalled");
    assert_eq!(t.prose(), "Hal");
    let t = turn(&mut conv, "again").await;
    assert_eq!(t.prose(), "recovered");
    let body = &server.requests()[4].body;
    assert_eq!(
        wire_messages(body)[4],
        json!({"role": "assistant", "content": "Hal"}),
        "the partial reply was kept"
    );
    conv.shutdown().await;
}

#[tokio::test]
async fn malformed_stream_data_is_reported_with_the_offending_text() {
    let server = ScriptedServer::start(vec![
        Reply::Stream(vec![Step::Raw("data: {this is not json\n\n".into())]),
        openai::text(&["fine"]),
    ])
    .await;
    let Some(mut conv) = openai_chat(Backend::Host, &server, |_| {}).await else {
        return;
    };
    let t = turn(&mut conv, "hi").await;
    assert_eq!(t.end, TurnEnd::ModelError);
    let (kind, message) = &t.errors()[0];
    assert_eq!(kind, "malformed");
    assert!(message.contains("{this is not json"), "{message}");
    assert_eq!(turn(&mut conv, "again").await.end, TurnEnd::Finished);
    conv.shutdown().await;
}

#[tokio::test]
async fn a_server_without_tools_switches_the_conversation_to_text_mode() {
    let server = ScriptedServer::start(vec![
        error(
            400,
            r#"{"error":"registry.ollama.ai/library/gemma:2b does not support tools"}"#,
        ),
        openai::text(&["```python\nprint(1 + 1)\n```"]),
        openai::text(&["2"]),
    ])
    .await;
    let Some(mut conv) = openai_chat(Backend::Host, &server, |c| c.auto_run = true).await else {
        return;
    };
    let t = turn(&mut conv, "1+1").await;
    assert_eq!(t.end, TurnEnd::Finished, "{t:#?}");
    assert!(
        t.notices()[0].contains("Switched to text mode"),
        "{:?}",
        t.notices()
    );
    let requests = server.requests();
    assert!(requests[0].body.get("tools").is_some());
    assert!(requests[1].body.get("tools").is_none());
    assert_eq!(
        last_message(&requests[2].body)["content"],
        "Code output:\n2\n"
    );
    assert!(!conv.info().await.unwrap().functions);
    conv.shutdown().await;
}

#[tokio::test]
async fn conversations_in_one_process_are_independent() {
    let mut servers = Vec::new();
    let mut convs = Vec::new();
    for value in [1, 2] {
        let server = ScriptedServer::start(vec![
            openai::execute("python", &format!("x = {value}")),
            openai::text(&["set"]),
            openai::execute("python", "print(x)"),
            openai::text(&["shown"]),
        ])
        .await;
        let Some(conv) = openai_chat(Backend::Host, &server, |c| c.auto_run = true).await else {
            return;
        };
        servers.push(server);
        convs.push(conv);
    }
    let (a, b) = convs.split_at_mut(1);
    let (ta, tb) = tokio::join!(turn(&mut a[0], "set"), turn(&mut b[0], "set"));
    assert_eq!((ta.end, tb.end), (TurnEnd::Finished, TurnEnd::Finished));
    let (ta, tb) = tokio::join!(turn(&mut a[0], "show"), turn(&mut b[0], "show"));
    assert_eq!((ta.console(), tb.console()), ("1\n".into(), "2\n".into()));
    for conv in convs {
        conv.shutdown().await;
    }
}

#[tokio::test]
async fn undo_load_and_reset() {
    let server = ScriptedServer::start(vec![
        openai::execute("python", "x = 1"),
        openai::text(&["set"]),
        openai::execute("python", "print(x)"),
        openai::text(&["gone"]),
    ])
    .await;
    let Some(mut conv) = openai_chat(Backend::Host, &server, |c| c.auto_run = true).await else {
        return;
    };
    turn(&mut conv, "set x").await;
    let saved = conv.messages().await.unwrap();
    assert_eq!(saved.len(), 4);
    conv.call(Request::Undo).await.unwrap();
    assert!(conv.messages().await.unwrap().is_empty());
    conv.call(Request::Load {
        messages: saved.clone(),
    })
    .await
    .unwrap();
    assert_eq!(conv.messages().await.unwrap(), saved);
    conv.call(Request::Reset).await.unwrap();
    assert!(conv.messages().await.unwrap().is_empty());
    let t = turn(&mut conv, "show x").await;
    assert!(
        t.console().contains("NameError"),
        "a fresh sandbox: {}",
        t.console()
    );
    assert_eq!(
        conv.messages().await.unwrap()[0],
        Message::new(Role::User, MessageType::Message, None, "show x")
    );
    conv.shutdown().await;
}

#[tokio::test]
async fn a_sandbox_that_cannot_start_is_an_error_and_the_conversation_goes_on() {
    let server = ScriptedServer::start(vec![
        openai::execute("python", "print(1)"),
        openai::text(&["I could not run it."]),
    ])
    .await;
    let Some(engine) = engine_with(Backend::Docker, |c| {
        c.image = Some("oi-test-missing:none".into());
    })
    .await
    else {
        return;
    };
    let mut config = config(Endpoint::openai(server.base_url(), None));
    config.sandbox = engine.config().clone();
    config.auto_run = true;
    let mut conv = Conversation::start(config, engine).unwrap();
    let t = turn(&mut conv, "run it").await;
    assert_eq!(t.end, TurnEnd::SandboxError, "{t:#?}");
    let (kind, message) = &t.errors()[0];
    assert_eq!(kind, "sandbox");
    assert!(message.contains("oi-test-missing:none"), "{message}");
    let t = turn(&mut conv, "and now?").await;
    assert_eq!(t.end, TurnEnd::Finished);
    let results = tool_results(&server.requests()[1].body);
    assert!(results[0].starts_with("(not run: "), "{results:?}");
    conv.shutdown().await;
}

#[tokio::test]
async fn python_blocks_report_the_active_line() {
    let server = ScriptedServer::start(vec![
        openai::execute("python", "a = 1\nb = 2\n\nprint(a + b)"),
        openai::execute("python", "from __future__ import annotations\nx = 1\nx"),
        openai::text(&["3"]),
    ])
    .await;
    let Some(mut conv) = openai_chat(Backend::Host, &server, |c| c.auto_run = true).await else {
        return;
    };
    let t = turn(&mut conv, "add").await;
    assert_eq!(t.console(), "3\n1\n");
    assert_eq!(
        t.active_lines(),
        ["1", "2", "4"],
        "none for a __future__ cell"
    );
    // Not part of the conversation: the console message holds the output only.
    assert_eq!(conv.messages().await.unwrap()[2], Message::console("3\n"));
    conv.shutdown().await;
}

#[tokio::test]
async fn a_configured_proxy_carries_the_requests() {
    let proxy = ScriptedServer::start(vec![openai::text(&["via proxy"])]).await;
    let mut endpoint = Endpoint::openai("http://oi-model.invalid/v1", None);
    endpoint.proxy = Some(proxy.base_url().trim_end_matches("/v1").to_string());
    let Some(mut conv) = start(Backend::Host, endpoint, |_| {}).await else {
        return;
    };
    let t = turn(&mut conv, "hi").await;
    assert_eq!(t.prose(), "via proxy", "{t:#?}");
    assert_eq!(
        proxy.requests()[0].path,
        "http://oi-model.invalid/v1/chat/completions"
    );
    conv.shutdown().await;
}

#[tokio::test]
async fn two_calls_in_one_reply_run_in_order_each_followed_by_its_output() {
    let mut steps = openai::tool_call(
        0,
        "call_a",
        "execute",
        r#"{"language":"python","code":"print('one')"}"#,
    );
    steps.extend(openai::tool_call(
        1,
        "call_b",
        "execute",
        r#"{"language":"shell","code":"echo two"}"#,
    ));
    steps.push(openai::finish("tool_calls"));
    steps.push(openai::done());
    let server =
        ScriptedServer::start(vec![Reply::Stream(steps), openai::text(&["both ran"])]).await;
    let Some(mut conv) = openai_chat(Backend::Host, &server, |c| c.auto_run = true).await else {
        return;
    };
    let t = turn(&mut conv, "run both").await;
    assert_eq!(t.end, TurnEnd::Finished, "{t:#?}");
    // Shown in order: block one, its output, block two, its output.
    let shown: Vec<String> = t
        .events
        .iter()
        .filter_map(|e| match e {
            EventMsg::Chunk(c)
                if c.content.is_some() && c.format.as_deref() != Some("active_line") =>
            {
                Some(c.content.clone().unwrap())
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        shown,
        ["print('one')", "one\n", "echo two", "two\n", "both ran"]
    );
    assert_eq!(tool_results(&server.requests()[1].body), ["one\n", "two\n"]);
    conv.shutdown().await;
}

#[tokio::test]
async fn anthropic_errors_name_its_key_and_overload_is_retried() {
    let server = ScriptedServer::start(vec![
        error(
            401,
            r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#,
        ),
        Reply::Stream(vec![Step::Frame {
            event: Some("error".into()),
            data: r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#.into(),
        }]),
        anthropic::text(&["fine"]),
    ])
    .await;
    let endpoint = Endpoint::anthropic(server.base_url(), Some("bad".into()));
    let Some(mut conv) = start(Backend::Host, endpoint, |c| c.model = "claude-test".into()).await
    else {
        return;
    };
    let t = turn(&mut conv, "hi").await;
    let (kind, message) = &t.errors()[0];
    assert_eq!(kind, "auth");
    assert!(message.contains("invalid x-api-key"), "{message}");
    assert!(
        message.contains("Set ANTHROPIC_API_KEY or --api-key"),
        "{message}"
    );
    let t = turn(&mut conv, "again").await;
    assert_eq!(t.end, TurnEnd::Finished, "{t:#?}");
    assert!(t.notices()[0].contains("Overloaded"), "{:?}", t.notices());
    assert_eq!(t.prose(), "fine");
    conv.shutdown().await;
}

#[tokio::test]
async fn a_reply_cut_at_the_token_limit_says_so() {
    let server = ScriptedServer::start(vec![Reply::Stream(vec![
        openai::delta("The answer is"),
        openai::finish("length"),
        openai::done(),
    ])])
    .await;
    let Some(mut conv) = openai_chat(Backend::Host, &server, |c| c.max_tokens = Some(3)).await
    else {
        return;
    };
    let t = turn(&mut conv, "hi").await;
    assert_eq!(t.end, TurnEnd::Finished);
    assert_eq!(
        t.notices(),
        ["The model's reply was cut at its length limit (3 tokens, max_tokens)."]
    );
    assert_eq!(server.requests()[0].body["max_tokens"], 3);
    conv.shutdown().await;
}
