//! OpenAI Chat Completions with streaming and tool calling, as OpenAI, Ollama, vLLM,
//! llama.cpp's server, LM Studio and OpenRouter speak it; the server is chosen by the
//! base URL.
//!
//! Translates the neutral [`ChatRequest`] to the wire JSON and the `chat.completion.chunk`
//! frames back to [`StreamEvent`]s. Knows nothing of LMC messages or the sandbox.

use futures::future::BoxFuture;
use serde_json::{json, Value};

use super::error::{LlmError, Result};
use super::http::{self, Failure};
use super::{
    sse, ChatMessage, ChatRequest, ChatRole, Endpoint, EventStream, FinishReason, Part, Provider,
    StreamEvent, Usage,
};

/// A provider for any OpenAI-compatible server.
#[derive(Debug)]
pub struct OpenAi {
    endpoint: Endpoint,
    client: reqwest::Client,
}

impl OpenAi {
    pub fn new(endpoint: Endpoint) -> Result<Self> {
        Ok(OpenAi {
            client: http::client(&endpoint)?,
            endpoint,
        })
    }

    fn is_openai(&self) -> bool {
        self.endpoint.api_base.contains("api.openai.com")
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.endpoint.api_key {
            Some(key) if !key.is_empty() => request.bearer_auth(key),
            _ => request,
        }
    }
}

impl Provider for OpenAi {
    fn stream(&self, request: ChatRequest) -> BoxFuture<'_, Result<EventStream>> {
        Box::pin(async move {
            let url = http::join(&self.endpoint.api_base, "chat/completions");
            let body = wire_request(&request, self.is_openai());
            super::open_stream(
                self,
                self.authorized(self.client.post(&url)).json(&body),
                Failure {
                    url: &url,
                    model: &request.model,
                    key_setting: &self.endpoint.key_setting,
                },
                sse::Timing {
                    idle: self.endpoint.idle_timeout,
                    total: self.endpoint.reply_timeout,
                },
                ChunkDecoder::default(),
            )
            .await
        })
    }

    fn models(&self) -> BoxFuture<'_, Result<Vec<String>>> {
        Box::pin(async move {
            let url = http::join(&self.endpoint.api_base, "models");
            http::model_ids(self.authorized(self.client.get(url))).await
        })
    }

    fn describe(&self) -> String {
        format!("OpenAI-compatible at {}", self.endpoint.api_base)
    }
}

/// The JSON body for `/chat/completions`.
pub fn wire_request(request: &ChatRequest, is_openai: bool) -> Value {
    let mut messages = vec![json!({"role": "system", "content": request.system})];
    for message in &request.messages {
        wire_messages(message, is_openai, &mut messages);
    }
    let mut body = json!({
        "model": request.model,
        "messages": messages,
        "stream": true,
    });
    if !request.tools.is_empty() {
        body["tools"] = request
            .tools
            .iter()
            .map(|t| {
                json!({"type": "function", "function": {
                    "name": t.name, "description": t.description, "parameters": t.parameters}})
            })
            .collect();
    }
    if let Some(max) = request.max_tokens {
        // OpenAI's newer models refuse `max_tokens`; the servers that copy the API
        // mostly know only `max_tokens`.
        let key = if is_openai {
            "max_completion_tokens"
        } else {
            "max_tokens"
        };
        body[key] = json!(max);
    }
    if let Some(t) = request.temperature {
        body["temperature"] = json!(t);
    }
    if is_openai {
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

/// One neutral message becomes one or more wire messages: tool results are messages of
/// their own, and images from tools follow as a user message (tool messages carry text
/// only).
fn wire_messages(message: &ChatMessage, is_openai: bool, out: &mut Vec<Value>) {
    match message.role {
        ChatRole::Assistant => {
            let text: String = message
                .parts
                .iter()
                .filter_map(|p| match p {
                    Part::Text(t) => Some(t.as_str()),
                    _ => None,
                })
                .collect();
            let calls: Vec<Value> = message
                .parts
                .iter()
                .filter_map(|p| match p {
                    Part::ToolCall {
                        id,
                        name,
                        arguments,
                    } => Some(json!({"id": id, "type": "function",
                        "function": {"name": name, "arguments": arguments}})),
                    _ => None,
                })
                .collect();
            // A call without text: OpenAI's own form is `null`; servers that copy the API
            // are stricter than OpenAI here (llama-cpp-python's refuses `null` with a 500
            // on the request after every tool call) and all take an empty string.
            let content = match (text.is_empty(), is_openai) {
                (true, true) => Value::Null,
                _ => json!(text),
            };
            let mut m = json!({"role": "assistant", "content": content});
            if !calls.is_empty() {
                m["tool_calls"] = json!(calls);
            }
            out.push(m);
        }
        ChatRole::User => {
            let mut content = Vec::new();
            let mut images = Vec::new();
            for part in &message.parts {
                match part {
                    Part::ToolResult {
                        id,
                        content: text,
                        images: tool_images,
                    } => {
                        out.push(json!({"role": "tool", "tool_call_id": id, "content": text}));
                        images.extend(tool_images.iter().cloned());
                    }
                    Part::Text(t) => content.push(json!({"type": "text", "text": t})),
                    Part::Image { .. } => images.push(part.clone()),
                    Part::ToolCall { .. } => {}
                }
            }
            for image in images {
                if let Part::Image { media_type, data } = image {
                    content.push(json!({"type": "image_url",
                        "image_url": {"url": format!("data:{media_type};base64,{data}")}}));
                }
            }
            if content.is_empty() {
                return;
            }
            // Plain text as a string: the form every compatible server accepts.
            if content.iter().all(|c| c["type"] == "text") {
                let text: Vec<&str> = content.iter().filter_map(|c| c["text"].as_str()).collect();
                out.push(json!({"role": "user", "content": text.join("\n\n")}));
            } else {
                out.push(json!({"role": "user", "content": content}));
            }
        }
    }
}

/// `chat.completion.chunk` frames → events.
#[derive(Debug, Default)]
struct ChunkDecoder {
    /// The server's tool-call indexes → slots.
    slots: super::CallSlots,
    finish: Option<FinishReason>,
    usage: Option<Usage>,
    done: bool,
}

impl super::FrameDecoder for ChunkDecoder {
    fn frame(&mut self, frame: sse::SseFrame) -> Result<Vec<StreamEvent>> {
        if frame.data.trim() == "[DONE]" {
            self.done = true;
            return Ok(vec![self.finished()]);
        }
        let value = super::frame_json(&frame.data, "a stream chunk")?;
        if let Some(error) = value.get("error") {
            return Err(LlmError::Server {
                url: "the stream".into(),
                status: error
                    .get("code")
                    .and_then(|c| c.as_u64())
                    .and_then(|c| u16::try_from(c).ok())
                    .filter(|c| (100..=599).contains(c))
                    .unwrap_or(500),
                detail: http::error_detail(&frame.data),
            });
        }
        if let Some(usage) = value.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(Usage {
                input_tokens: usage["prompt_tokens"].as_u64().unwrap_or(0),
                output_tokens: usage["completion_tokens"].as_u64().unwrap_or(0),
            });
        }
        let mut events = Vec::new();
        let Some(choice) = value.pointer("/choices/0") else {
            return Ok(events);
        };
        let delta = &choice["delta"];
        if let Some(text) = delta["content"].as_str().filter(|t| !t.is_empty()) {
            events.push(StreamEvent::TextDelta(text.to_string()));
        }
        if let Some(calls) = delta["tool_calls"].as_array() {
            for (position, call) in calls.iter().enumerate() {
                let arguments = match &call["function"]["arguments"] {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    // Some servers send the arguments as an object.
                    other => other.to_string(),
                };
                events.push(StreamEvent::ToolCallDelta {
                    index: self.slots.slot(call.get("index"), position, &frame.data)?,
                    id: call["id"].as_str().map(str::to_string),
                    name: call["function"]["name"].as_str().map(str::to_string),
                    arguments,
                });
            }
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            self.finish = Some(match reason {
                "stop" => FinishReason::Stop,
                "tool_calls" | "function_call" => FinishReason::ToolCalls,
                "length" => FinishReason::Length,
                other => FinishReason::Other(other.to_string()),
            });
        }
        Ok(events)
    }

    fn end(&mut self) -> Result<Vec<StreamEvent>> {
        if self.done {
            return Ok(Vec::new());
        }
        // A server that omits `[DONE]` but said why it stopped has finished.
        if self.finish.is_some() {
            return Ok(vec![self.finished()]);
        }
        Err(LlmError::Truncated {
            detail: "no finish_reason and no [DONE]".into(),
        })
    }
}

impl ChunkDecoder {
    fn finished(&mut self) -> StreamEvent {
        StreamEvent::Finished {
            reason: self.finish.take().unwrap_or(FinishReason::Stop),
            usage: self.usage.take(),
        }
    }
}

/// The decoder, for the fuzz test in `llm`'s tests.
#[cfg(test)]
pub(crate) mod tests_support {
    pub(crate) fn decoder() -> impl super::super::FrameDecoder {
        super::ChunkDecoder::default()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{FrameDecoder, Tool};
    use super::*;

    #[test]
    fn tool_results_and_images_take_the_wire_shape() {
        let request = ChatRequest {
            model: "m".into(),
            system: "sys".into(),
            messages: vec![
                ChatMessage::text(ChatRole::User, "plot"),
                ChatMessage {
                    role: ChatRole::Assistant,
                    parts: vec![Part::ToolCall {
                        id: "call_1".into(),
                        name: "execute".into(),
                        arguments: "{}".into(),
                    }],
                },
                ChatMessage {
                    role: ChatRole::User,
                    parts: vec![Part::ToolResult {
                        id: "call_1".into(),
                        content: "done".into(),
                        images: vec![Part::Image {
                            media_type: "image/png".into(),
                            data: "AAA".into(),
                        }],
                    }],
                },
            ],
            tools: vec![Tool {
                name: "execute".into(),
                description: "d".into(),
                parameters: json!({"type": "object"}),
            }],
            max_tokens: Some(100),
            temperature: None,
        };
        let body = wire_request(&request, false);
        assert_eq!(
            body["messages"][0],
            json!({"role": "system", "content": "sys"})
        );
        assert_eq!(
            body["messages"][1],
            json!({"role": "user", "content": "plot"})
        );
        assert_eq!(
            body["messages"][2]["content"], "",
            "a compatible server's form"
        );
        assert_eq!(
            wire_request(&request, true)["messages"][2]["content"],
            Value::Null,
            "OpenAI's own"
        );
        assert_eq!(body["messages"][2]["tool_calls"][0]["id"], "call_1");
        assert_eq!(
            body["messages"][3],
            json!({"role": "tool", "tool_call_id": "call_1", "content": "done"})
        );
        assert_eq!(
            body["messages"][4]["content"][0]["image_url"]["url"],
            "data:image/png;base64,AAA"
        );
        assert_eq!(body["max_tokens"], 100);
        assert_eq!(body["tools"][0]["function"]["name"], "execute");
        assert!(wire_request(&request, true)
            .get("max_completion_tokens")
            .is_some());
    }

    #[test]
    fn chunks_decode_to_events() {
        let mut d = ChunkDecoder::default();
        let frame = |data: &str| sse::SseFrame {
            event: None,
            data: data.into(),
        };
        let events = d
            .frame(frame(r#"{"choices":[{"delta":{"content":"Hi"}}]}"#))
            .unwrap();
        assert_eq!(events, vec![StreamEvent::TextDelta("Hi".into())]);
        let events = d
            .frame(frame(
                r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"c","function":{"name":"execute","arguments":"{\"a"}}]},"finish_reason":"tool_calls"}]}"#,
            ))
            .unwrap();
        assert_eq!(events.len(), 1);
        assert!(d.end().is_ok());
        let mut d = ChunkDecoder::default();
        assert!(matches!(d.end(), Err(LlmError::Truncated { .. })));
        // D7: a call's index is a key; slots are given in order, at most MAX_TOOL_CALLS.
        let mut d = ChunkDecoder::default();
        let call = |index: &str| {
            frame(&format!(
                r#"{{"choices":[{{"delta":{{"tool_calls":[{{"index":{index},"function":{{"arguments":"x"}}}}]}}}}]}}"#
            ))
        };
        let slot_of = |events: Vec<StreamEvent>| match &events[..] {
            [StreamEvent::ToolCallDelta { index, .. }] => *index,
            other => panic!("{other:?}"),
        };
        for (wire, slot) in [
            ("2000000", 0),
            ("1000000000000", 1),
            ("1e12", 2),
            ("-1", 3),
            ("2000000", 0),
            ("18446744073709551616", 4),
        ] {
            assert_eq!(slot_of(d.frame(call(wire)).unwrap()), slot, "{wire}");
        }
        for i in 5..super::super::MAX_TOOL_CALLS {
            assert_eq!(slot_of(d.frame(call(&i.to_string())).unwrap()), i);
        }
        assert!(matches!(
            d.frame(call("99")),
            Err(LlmError::Malformed { detail, .. }) if detail.contains("more than 16 tool calls")
        ));
        let mut d = ChunkDecoder::default();
        assert!(matches!(
            d.frame(call(r#""zero""#)),
            Err(LlmError::Malformed { detail, .. }) if detail == "a tool call's index is not a number"
        ));
        // A status in an error body is a number from outside: only real ones are kept.
        for (code, status) in [("503", 503), ("70000", 500), ("-1", 500), ("1e3", 500)] {
            let data = format!(r#"{{"error":{{"code":{code},"message":"x"}}}}"#);
            assert!(
                matches!(d.frame(frame(&data)), Err(LlmError::Server { status: s, .. }) if s == status),
                "{code}"
            );
        }
        assert!(matches!(
            d.frame(frame("{not json")),
            Err(LlmError::Malformed { .. })
        ));
    }
}
