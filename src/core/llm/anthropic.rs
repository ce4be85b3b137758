//! Anthropic's Messages API, native: streaming and tool use.
//!
//! Translates the neutral [`ChatRequest`] to `/v1/messages` JSON (alternating roles,
//! content blocks, `tool_use` / `tool_result`) and the typed SSE events back to
//! [`StreamEvent`]s. Knows nothing of LMC messages or the sandbox.

use futures::future::BoxFuture;
use serde_json::{json, Value};

use super::error::{LlmError, Result};
use super::http::{self, Failure};
use super::{
    sse, ChatRequest, ChatRole, Endpoint, EventStream, FinishReason, Part, Provider, StreamEvent,
    Usage,
};

const VERSION: &str = "2023-06-01";
/// Anthropic requires a reply budget; this is used when the configuration sets none.
const DEFAULT_MAX_TOKENS: u32 = 4096;

/// A provider for Anthropic's API (or a server that copies it).
#[derive(Debug)]
pub struct Anthropic {
    endpoint: Endpoint,
    client: reqwest::Client,
}

impl Anthropic {
    pub fn new(endpoint: Endpoint) -> Result<Self> {
        Ok(Anthropic {
            client: http::client(&endpoint)?,
            endpoint,
        })
    }

    /// `https://api.anthropic.com` and `https://api.anthropic.com/v1` both work.
    fn url(&self, path: &str) -> String {
        let base = self.endpoint.api_base.trim_end_matches('/');
        let base = base.strip_suffix("/v1").unwrap_or(base);
        http::join(base, &format!("v1/{path}"))
    }

    fn headers(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        let request = request.header("anthropic-version", VERSION);
        match &self.endpoint.api_key {
            Some(key) if !key.is_empty() => request.header("x-api-key", key),
            _ => request,
        }
    }
}

impl Provider for Anthropic {
    fn stream(&self, request: ChatRequest) -> BoxFuture<'_, Result<EventStream>> {
        Box::pin(async move {
            let url = self.url("messages");
            super::open_stream(
                self,
                self.headers(self.client.post(&url))
                    .json(&wire_request(&request)),
                Failure {
                    url: &url,
                    model: &request.model,
                    key_setting: &self.endpoint.key_setting,
                },
                sse::Timing {
                    idle: self.endpoint.idle_timeout,
                    total: self.endpoint.reply_timeout,
                },
                EventDecoder::default(),
            )
            .await
        })
    }

    fn models(&self) -> BoxFuture<'_, Result<Vec<String>>> {
        Box::pin(async move {
            http::model_ids(self.headers(self.client.get(self.url("models?limit=100")))).await
        })
    }

    fn describe(&self) -> String {
        format!("Anthropic at {}", self.endpoint.api_base)
    }
}

/// The JSON body for `/v1/messages`. Consecutive messages of one role are merged:
/// Anthropic requires the roles to alternate.
pub fn wire_request(request: &ChatRequest) -> Value {
    let mut messages: Vec<Value> = Vec::new();
    for message in &request.messages {
        let role = match message.role {
            ChatRole::User => "user",
            ChatRole::Assistant => "assistant",
        };
        let blocks: Vec<Value> = message.parts.iter().filter_map(block).collect();
        if blocks.is_empty() {
            continue;
        }
        match messages.last_mut() {
            Some(last) if last["role"] == role => {
                last["content"].as_array_mut().unwrap().extend(blocks);
            }
            _ => messages.push(json!({"role": role, "content": blocks})),
        }
    }
    let mut body = json!({
        "model": request.model,
        "system": request.system,
        "messages": messages,
        "max_tokens": request.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        "stream": true,
    });
    if !request.tools.is_empty() {
        body["tools"] = request
            .tools
            .iter()
            .map(|t| json!({"name": t.name, "description": t.description, "input_schema": t.parameters}))
            .collect();
    }
    if let Some(t) = request.temperature {
        body["temperature"] = json!(t);
    }
    body
}

fn block(part: &Part) -> Option<Value> {
    Some(match part {
        Part::Text(t) if t.is_empty() => return None,
        Part::Text(t) => json!({"type": "text", "text": t}),
        Part::Image { media_type, data } => json!({"type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data}}),
        Part::ToolCall {
            id,
            name,
            arguments,
        } => {
            // The input must be an object; a model's unparsable arguments are kept as text.
            let input = serde_json::from_str::<Value>(arguments)
                .ok()
                .filter(|v| v.is_object())
                .unwrap_or_else(|| json!({"raw": arguments}));
            json!({"type": "tool_use", "id": id, "name": name, "input": input})
        }
        Part::ToolResult {
            id,
            content,
            images,
        } => {
            let mut blocks = vec![
                json!({"type": "text", "text": if content.is_empty() { "(no output)" } else { content }}),
            ];
            blocks.extend(images.iter().filter_map(block));
            json!({"type": "tool_result", "tool_use_id": id, "content": blocks})
        }
    })
}

/// Anthropic's stream events → events.
#[derive(Debug, Default)]
struct EventDecoder {
    /// Content block indexes → tool-call slots, for blocks that are tool calls.
    tool_blocks: super::CallSlots,
    input_tokens: u64,
    output_tokens: u64,
    stop: Option<FinishReason>,
    done: bool,
}

impl super::FrameDecoder for EventDecoder {
    fn frame(&mut self, frame: sse::SseFrame) -> Result<Vec<StreamEvent>> {
        let value = super::frame_json(&frame.data, "a stream event")?;
        let kind = value["type"]
            .as_str()
            .or(frame.event.as_deref())
            .unwrap_or("");
        match kind {
            "message_start" => {
                self.input_tokens = value["message"]["usage"]["input_tokens"]
                    .as_u64()
                    .unwrap_or(0);
                Ok(Vec::new())
            }
            "content_block_start" => self.block_start(&value, &frame.data),
            "content_block_delta" => self.block_delta(&value, &frame.data),
            "message_delta" => {
                self.message_delta(&value);
                Ok(Vec::new())
            }
            "message_stop" => {
                self.done = true;
                Ok(vec![StreamEvent::Finished {
                    reason: self.stop.take().unwrap_or(FinishReason::Stop),
                    usage: Some(Usage {
                        input_tokens: self.input_tokens,
                        output_tokens: self.output_tokens,
                    }),
                }])
            }
            "error" => Err(stream_error(&value, &frame.data)),
            _ => Ok(Vec::new()), // ping, content_block_stop
        }
    }

    fn end(&mut self) -> Result<Vec<StreamEvent>> {
        if self.done {
            Ok(Vec::new())
        } else {
            Err(LlmError::Truncated {
                detail: "no message_stop".into(),
            })
        }
    }
}

impl EventDecoder {
    /// A content block begins: a tool call (its id and name) or text.
    fn block_start(&mut self, value: &Value, raw: &str) -> Result<Vec<StreamEvent>> {
        let block = &value["content_block"];
        Ok(match block["type"].as_str() {
            Some("tool_use") => {
                let call = self.tool_blocks.slot(value.get("index"), 0, raw)?;
                vec![StreamEvent::ToolCallDelta {
                    index: call,
                    id: block["id"].as_str().map(str::to_string),
                    name: block["name"].as_str().map(str::to_string),
                    arguments: String::new(),
                }]
            }
            Some("text") => block["text"]
                .as_str()
                .filter(|t| !t.is_empty())
                .map(|t| vec![StreamEvent::TextDelta(t.to_string())])
                .unwrap_or_default(),
            _ => Vec::new(),
        })
    }

    /// A piece of a content block: text, or a tool call's arguments.
    fn block_delta(&mut self, value: &Value, raw: &str) -> Result<Vec<StreamEvent>> {
        let delta = &value["delta"];
        Ok(match delta["type"].as_str() {
            Some("text_delta") => vec![StreamEvent::TextDelta(
                delta["text"].as_str().unwrap_or("").to_string(),
            )],
            Some("input_json_delta") => {
                let call = self
                    .tool_blocks
                    .find(value.get("index"), 0)
                    .ok_or_else(|| LlmError::Malformed {
                        detail: "input_json_delta for a block that is not a tool call".into(),
                        text: http::shorten(raw, 400),
                    })?;
                vec![StreamEvent::ToolCallDelta {
                    index: call,
                    id: None,
                    name: None,
                    arguments: delta["partial_json"].as_str().unwrap_or("").to_string(),
                }]
            }
            _ => Vec::new(), // thinking and signature deltas are not shown
        })
    }

    /// The reply's end is near: its output tokens and why it stops.
    fn message_delta(&mut self, value: &Value) {
        if let Some(n) = value["usage"]["output_tokens"].as_u64() {
            self.output_tokens = n;
        }
        if let Some(reason) = value["delta"]["stop_reason"].as_str() {
            self.stop = Some(match reason {
                "end_turn" | "stop_sequence" => FinishReason::Stop,
                "tool_use" => FinishReason::ToolCalls,
                "max_tokens" => FinishReason::Length,
                other => FinishReason::Other(other.to_string()),
            });
        }
    }
}

/// An `error` event: an overloaded server is passing (retried), anything else is not.
fn stream_error(value: &Value, raw: &str) -> LlmError {
    let detail = http::error_detail(raw);
    let overloaded =
        value["error"]["type"] == "overloaded_error" || value["error"]["type"] == "api_error";
    if overloaded {
        LlmError::Server {
            url: "the stream".into(),
            status: 529,
            detail,
        }
    } else {
        LlmError::Rejected {
            url: "the stream".into(),
            status: 400,
            detail,
        }
    }
}

/// The decoder, for the fuzz test in `llm`'s tests.
#[cfg(test)]
pub(crate) mod tests_support {
    pub(crate) fn decoder() -> impl super::super::FrameDecoder {
        super::EventDecoder::default()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{ChatMessage, FrameDecoder};
    use super::*;

    #[test]
    fn roles_alternate_and_tool_results_carry_images() {
        let request = ChatRequest {
            model: "claude".into(),
            system: "sys".into(),
            messages: vec![
                ChatMessage::text(ChatRole::User, "a"),
                ChatMessage::text(ChatRole::User, "b"),
                ChatMessage {
                    role: ChatRole::Assistant,
                    parts: vec![
                        Part::Text("ok".into()),
                        Part::ToolCall {
                            id: "t1".into(),
                            name: "execute".into(),
                            arguments: r#"{"language":"python","code":"1"}"#.into(),
                        },
                    ],
                },
                ChatMessage {
                    role: ChatRole::User,
                    parts: vec![Part::ToolResult {
                        id: "t1".into(),
                        content: "1".into(),
                        images: vec![Part::Image {
                            media_type: "image/png".into(),
                            data: "AAA".into(),
                        }],
                    }],
                },
            ],
            tools: vec![],
            max_tokens: None,
            temperature: None,
        };
        let body = wire_request(&request);
        let messages = body["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 3);
        assert_eq!(messages[0]["content"].as_array().unwrap().len(), 2);
        assert_eq!(messages[1]["content"][1]["input"]["language"], "python");
        assert_eq!(messages[2]["content"][0]["type"], "tool_result");
        assert_eq!(messages[2]["content"][0]["content"][1]["type"], "image");
        assert_eq!(body["max_tokens"], DEFAULT_MAX_TOKENS);
        assert_eq!(body["system"], "sys");
    }

    #[test]
    fn events_decode() {
        let mut d = EventDecoder::default();
        let f = |data: &str| sse::SseFrame {
            event: None,
            data: data.into(),
        };
        d.frame(f(
            r#"{"type":"message_start","message":{"usage":{"input_tokens":7}}}"#,
        ))
        .unwrap();
        let e = d
            .frame(f(r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"t","name":"execute","input":{}}}"#))
            .unwrap();
        assert!(matches!(&e[0], StreamEvent::ToolCallDelta { index: 0, .. }));
        let e = d
            .frame(f(r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"a\""}}"#))
            .unwrap();
        assert!(
            matches!(&e[0], StreamEvent::ToolCallDelta { arguments, .. } if arguments == "{\"a\"")
        );
        assert!(matches!(d.end(), Err(LlmError::Truncated { .. })));
        let e = d.frame(f(r#"{"type":"message_stop"}"#)).unwrap();
        assert!(matches!(
            &e[0],
            StreamEvent::Finished {
                usage: Some(Usage {
                    input_tokens: 7,
                    ..
                }),
                ..
            }
        ));
        assert!(matches!(
            d.frame(f(
                r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#
            )),
            Err(LlmError::Server { .. })
        ));
    }

    /// D7: content-block indexes are keys, and a reply's tool calls are bounded.
    #[test]
    fn content_block_indexes_are_keys_and_tool_calls_bounded() {
        let mut d = EventDecoder::default();
        let f = |data: String| sse::SseFrame { event: None, data };
        let start = |index: &str| {
            f(format!(
                r#"{{"type":"content_block_start","index":{index},"content_block":{{"type":"tool_use","id":"t","name":"execute","input":{{}}}}}}"#
            ))
        };
        let delta = |index: &str| {
            f(format!(
                r#"{{"type":"content_block_delta","index":{index},"delta":{{"type":"input_json_delta","partial_json":"{{}}"}}}}"#
            ))
        };
        let slot = |events: Vec<StreamEvent>| match &events[..] {
            [StreamEvent::ToolCallDelta { index, .. }] => *index,
            other => panic!("{other:?}"),
        };
        assert_eq!(slot(d.frame(start("1000000000000")).unwrap()), 0);
        assert_eq!(slot(d.frame(start("-5")).unwrap()), 1);
        assert_eq!(slot(d.frame(delta("1000000000000")).unwrap()), 0);
        assert_eq!(slot(d.frame(delta("-5")).unwrap()), 1);
        assert!(matches!(
            d.frame(delta("3")),
            Err(LlmError::Malformed { detail, .. }) if detail.contains("not a tool call")
        ));
        for i in 2..crate::core::llm::MAX_TOOL_CALLS {
            assert_eq!(slot(d.frame(start(&i.to_string())).unwrap()), i);
        }
        assert!(matches!(
            d.frame(start("100")),
            Err(LlmError::Malformed { detail, .. }) if detail.contains("more than 16 tool calls")
        ));
    }
}
