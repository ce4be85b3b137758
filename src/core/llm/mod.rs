//! Language models behind one trait: a provider turns a [`ChatRequest`] into a stream
//! of [`StreamEvent`]s (text deltas, tool-call pieces, the finish).
//!
//! Layers: bytes from HTTP → SSE frames with an idle timeout per read ([`sse`]) → a
//! provider's typed events ([`openai`], [`anthropic`]) → the conversation loop. The
//! request shape here is provider-neutral; it knows nothing of LMC messages or of the
//! sandbox. [`repair`] turns what local models really write into code blocks,
//! [`models`] holds what oi knows of each model (window, tools, vision, tokenizer,
//! price), and [`tokens`] counts tokens for trimming the context.

pub mod anthropic;
mod error;
mod http;
pub mod models;
pub mod openai;
pub mod repair;
pub mod sse;
pub mod tokens;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

pub use error::{LlmError, Result};

/// What a model is asked: neutral between providers.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub model: String,
    pub system: String,
    pub messages: Vec<ChatMessage>,
    /// Tools the model may call; empty in text mode.
    pub tools: Vec<Tool>,
    /// The reply budget in tokens.
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatRole {
    User,
    Assistant,
}

/// One turn of the conversation as a model sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatMessage {
    pub role: ChatRole,
    pub parts: Vec<Part>,
}

impl ChatMessage {
    pub fn text(role: ChatRole, text: impl Into<String>) -> Self {
        ChatMessage {
            role,
            parts: vec![Part::Text(text.into())],
        }
    }
}

/// A piece of a chat message.
#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    Text(String),
    /// An image, base64-encoded, with its media type (`image/png`).
    Image {
        media_type: String,
        data: String,
    },
    /// The model asked to call a tool; `arguments` is the JSON text it wrote.
    ToolCall {
        id: String,
        name: String,
        arguments: String,
    },
    /// What a tool call produced.
    ToolResult {
        id: String,
        content: String,
        images: Vec<Part>,
    },
}

/// A tool offered to the model (function calling).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments.
    pub parameters: serde_json::Value,
}

/// The most tool calls one reply may make. Models call one tool at a time, a few in
/// parallel at most; a reply with more is refused as malformed rather than letting a
/// server's numbers decide how much oi allocates.
pub const MAX_TOOL_CALLS: usize = 16;

/// What a streaming reply is made of.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    TextDelta(String),
    /// A piece of tool call `index`: the id and name arrive once, the arguments in pieces.
    /// The built-in providers number calls 0, 1, … in the order they first appear (the
    /// wire's own index is only a key) and never past [`MAX_TOOL_CALLS`]; the loop still
    /// treats `index` as a key, whatever a provider sends.
    ToolCallDelta {
        index: usize,
        id: Option<String>,
        name: Option<String>,
        arguments: String,
    },
    /// The reply is complete.
    Finished {
        reason: FinishReason,
        usage: Option<Usage>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    ToolCalls,
    /// The reply hit the token budget.
    Length,
    Other(String),
}

/// Token usage a provider reported.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

pub type EventStream = BoxStream<'static, Result<StreamEvent>>;

/// A language model. Implement it to plug in your own; [`openai::OpenAi`] and
/// [`anthropic::Anthropic`] are the built-in ones.
pub trait Provider: Send + Sync {
    /// Sends the request and returns the reply as it streams. Errors before the first
    /// event (HTTP status, connection) come from the future; later ones from the stream.
    fn stream(&self, request: ChatRequest) -> BoxFuture<'_, Result<EventStream>>;

    /// The models the server offers, where it lists them (used to explain an unknown
    /// model). Empty when the provider cannot tell.
    fn models(&self) -> BoxFuture<'_, Result<Vec<String>>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    /// A short description for messages and `%info`: "OpenAI-compatible at URL".
    fn describe(&self) -> String;
}

/// Which wire protocol a built-in provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// OpenAI Chat Completions, and the servers that copy it (Ollama, vLLM, llama.cpp,
    /// LM Studio, OpenRouter).
    #[default]
    OpenAi,
    /// Anthropic's Messages API.
    Anthropic,
}

/// How to reach a model: everything a built-in provider needs.
#[derive(Clone, PartialEq)]
pub struct Endpoint {
    pub kind: ProviderKind,
    /// e.g. `https://api.openai.com/v1`, `http://127.0.0.1:11434/v1`.
    pub api_base: String,
    pub api_key: Option<String>,
    /// Where the key comes from, carried by a rejected key's error for the front end
    /// to word its advice (the environment variable: `OPENAI_API_KEY`).
    pub key_setting: String,
    /// The longest a stream may stay silent before it counts as stalled.
    pub idle_timeout: Duration,
    /// The longest one reply may take in all, however steadily it trickles.
    pub reply_timeout: Duration,
    /// How long connecting may take.
    pub connect_timeout: Duration,
    /// An HTTP(S) proxy for the model's server (front ends take it from `HTTPS_PROXY`).
    pub proxy: Option<String>,
    /// Hosts reached without the proxy, comma-separated (`NO_PROXY`).
    pub no_proxy: Option<String>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("kind", &self.kind)
            .field("api_base", &self.api_base)
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .field("key_setting", &self.key_setting)
            .field("proxy", &self.proxy)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    pub fn openai(api_base: impl Into<String>, api_key: Option<String>) -> Self {
        Endpoint {
            kind: ProviderKind::OpenAi,
            api_base: api_base.into(),
            api_key,
            key_setting: "OPENAI_API_KEY".into(),
            idle_timeout: Duration::from_secs(120),
            // Long enough for a slow local model's longest reply, short enough that a
            // server trickling keep-alives cannot hold a CI job for ever.
            reply_timeout: Duration::from_secs(30 * 60),
            connect_timeout: Duration::from_secs(10),
            proxy: None,
            no_proxy: None,
        }
    }

    pub fn anthropic(api_base: impl Into<String>, api_key: Option<String>) -> Self {
        Endpoint {
            kind: ProviderKind::Anthropic,
            key_setting: "ANTHROPIC_API_KEY".into(),
            ..Endpoint::openai(api_base, api_key)
        }
    }

    /// The built-in provider for this endpoint.
    pub fn provider(&self) -> Result<Arc<dyn Provider>> {
        Ok(match self.kind {
            ProviderKind::OpenAi => Arc::new(openai::OpenAi::new(self.clone())?),
            ProviderKind::Anthropic => Arc::new(anthropic::Anthropic::new(self.clone())?),
        })
    }
}

/// Maps the tool-call keys a server sends (its `index`, which may be any number) to
/// slots 0, 1, … in order of appearance, refusing more than [`MAX_TOOL_CALLS`].
#[derive(Debug, Default)]
pub(crate) struct CallSlots {
    keys: Vec<String>,
}

impl CallSlots {
    /// The slot for a call whose wire index is `index` (`None`: the server sent none,
    /// and `fallback` stands for it), given one if it is new. `frame` is quoted in errors.
    pub(crate) fn slot(
        &mut self,
        index: Option<&serde_json::Value>,
        fallback: usize,
        frame: &str,
    ) -> Result<usize> {
        let key = key(index, fallback).ok_or_else(|| LlmError::Malformed {
            detail: "a tool call's index is not a number".into(),
            text: http::shorten(frame, 400),
        })?;
        if let Some(slot) = self.keys.iter().position(|k| *k == key) {
            return Ok(slot);
        }
        if self.keys.len() >= MAX_TOOL_CALLS {
            return Err(too_many_calls(http::shorten(frame, 400)));
        }
        self.keys.push(key);
        Ok(self.keys.len() - 1)
    }

    /// The slot already given to `index`, if any.
    pub(crate) fn find(&self, index: Option<&serde_json::Value>, fallback: usize) -> Option<usize> {
        let key = key(index, fallback)?;
        self.keys.iter().position(|k| *k == key)
    }
}

/// A wire index as a key: any number, written short (`2000000`, `-1`,
/// `1000000000000.0`); `None` for what is not a number.
fn key(index: Option<&serde_json::Value>, fallback: usize) -> Option<String> {
    match index {
        None | Some(serde_json::Value::Null) => Some(fallback.to_string()),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        Some(_) => None,
    }
}

/// The error for a reply with more than [`MAX_TOOL_CALLS`] calls; `text` shows where.
pub(crate) fn too_many_calls(text: String) -> LlmError {
    LlmError::Malformed {
        detail: format!("a reply with more than {MAX_TOOL_CALLS} tool calls, the most oi takes"),
        text,
    }
}

/// The most JSON values one frame may hold. Real chunks hold tens; parsed, a frame of
/// millions of empty values would cost tens of times its size in memory.
const MAX_FRAME_VALUES: usize = 100_000;

/// Parses a frame's JSON (`what` names it in errors: "a stream chunk"), refusing a
/// frame with more than [`MAX_FRAME_VALUES`] values before building any of them.
pub(crate) fn frame_json(data: &str, what: &str) -> Result<serde_json::Value> {
    if json_values(data.as_bytes()) > MAX_FRAME_VALUES {
        return Err(LlmError::Malformed {
            detail: format!("{what} holds more than {MAX_FRAME_VALUES} JSON values"),
            text: http::shorten(data, 400),
        });
    }
    serde_json::from_str(data).map_err(|e| LlmError::Malformed {
        detail: format!("{what} is not JSON: {e}"),
        text: http::shorten(data, 400),
    })
}

/// An upper bound on the values in a JSON text, without parsing it: one, plus one per
/// `[`, `{` and `,` outside strings.
fn json_values(bytes: &[u8]) -> usize {
    let mut values = 1;
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => in_string = true,
                b'[' | b'{' | b',' => values += 1,
                _ => {}
            }
        }
    }
    values
}

/// A provider's protocol over SSE frames.
pub(crate) trait FrameDecoder: Send + 'static {
    /// The events a frame carries.
    fn frame(&mut self, frame: sse::SseFrame) -> Result<Vec<StreamEvent>>;
    /// Called when the body ends: the final events, or why the reply is incomplete.
    fn end(&mut self) -> Result<Vec<StreamEvent>>;
}

/// Runs SSE frames through a decoder. The stream stops after the first error and after
/// `Finished`.
pub(crate) fn decode_frames<S, D>(frames: S, decoder: D) -> EventStream
where
    S: futures::Stream<Item = Result<sse::SseFrame>> + Send + 'static,
    D: FrameDecoder,
{
    use futures::StreamExt;
    struct State<S, D> {
        frames: std::pin::Pin<Box<S>>,
        decoder: D,
        queue: std::collections::VecDeque<Result<StreamEvent>>,
        over: bool,
    }
    let state = State {
        frames: Box::pin(frames),
        decoder,
        queue: Default::default(),
        over: false,
    };
    futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(item) = st.queue.pop_front() {
                if matches!(item, Err(_) | Ok(StreamEvent::Finished { .. })) {
                    st.over = true;
                    st.queue.clear();
                }
                return Some((item, st));
            }
            if st.over {
                return None;
            }
            let result = match st.frames.next().await {
                Some(Ok(frame)) => st.decoder.frame(frame),
                Some(Err(e)) => Err(e),
                None => {
                    st.over = true;
                    st.decoder.end()
                }
            };
            match result {
                Ok(events) => st.queue.extend(events.into_iter().map(Ok)),
                Err(e) => st.queue.push_back(Err(e)),
            }
        }
    })
    .boxed()
}

/// Sends a streaming request and decodes its SSE reply: what the built-in providers
/// share. An unknown model is reported with the models the server lists.
pub(crate) async fn open_stream<P: Provider + ?Sized, D: FrameDecoder>(
    provider: &P,
    request: reqwest::RequestBuilder,
    failure: http::Failure<'_>,
    timing: sse::Timing,
    decoder: D,
) -> Result<EventStream> {
    let response = match http::send(request, failure, timing.idle).await {
        Err(LlmError::UnknownModel { model, url, .. }) => {
            let available = provider.models().await.unwrap_or_default();
            return Err(LlmError::UnknownModel {
                model,
                url,
                available,
            });
        }
        other => other?,
    };
    let frames = sse::frames(Box::pin(response.bytes_stream()), timing);
    Ok(decode_frames(frames, decoder))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_call_index_is_a_key_not_a_position() {
        let mut slots = CallSlots::default();
        let huge = json!(2_000_000);
        let float: serde_json::Value = serde_json::from_str("1e12").unwrap();
        let negative = json!(-1);
        let beyond = json!(u64::MAX);
        assert_eq!(slots.slot(Some(&huge), 0, "").unwrap(), 0);
        assert_eq!(slots.slot(Some(&float), 0, "").unwrap(), 1);
        assert_eq!(slots.slot(Some(&negative), 0, "").unwrap(), 2);
        assert_eq!(slots.slot(Some(&beyond), 0, "").unwrap(), 3);
        assert_eq!(slots.slot(Some(&huge), 0, "").unwrap(), 0);
        // No index: the call's position in the chunk stands for it.
        assert_eq!(slots.slot(None, 7, "").unwrap(), 4);
        assert_eq!(slots.slot(Some(&json!(7)), 0, "").unwrap(), 4);
        assert!(matches!(
            slots.slot(Some(&json!("0")), 0, "f"),
            Err(LlmError::Malformed { .. })
        ));
        for i in 5..MAX_TOOL_CALLS {
            assert_eq!(slots.slot(Some(&json!(i * 1000)), 0, "").unwrap(), i);
        }
        let err = slots.slot(Some(&json!(1)), 0, "the frame").unwrap_err();
        assert_eq!(
            err.to_string(),
            "the model server sent malformed data (a reply with more than 16 tool calls, \
             the most oi takes): the frame"
        );
    }

    /// Whatever bytes a server sends, no layer panics: the SSE decoder, both providers'
    /// decoders, the argument scanner and the repairs, fed pseudo-random mutations of
    /// real frames (deterministic, so a failure reproduces).
    #[test]
    fn hostile_bytes_never_panic_a_decoder() {
        let seeds = [
            r#"data: {"choices":[{"delta":{"content":"hi","tool_calls":[{"index":0,"id":"c","function":{"name":"execute","arguments":"{\"language\":\"python\",\"code\":\"print(\\u00e9)\"}"}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":1,"completion_tokens":2}}"#,
            r#"data: {"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"t","name":"execute","input":{}}}"#,
            r#"data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"code\": \"\\ud83d"}}"#,
            r#"data: {"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":18446744073709551615}}"#,
            r#"data: {"error":{"code":99999999999999999999,"message":"x"}}"#,
        ];
        let noise: &[&[u8]] = &[
            b"\n",
            b"\r\n",
            b"\n\n",
            b":",
            b"\"",
            b"\\",
            b"\\u",
            b"{",
            b"}",
            b"[",
            b"]",
            b",",
            b"-1",
            b"1e999",
            b"NaN",
            b"\xff\xfe",
            "é".as_bytes(),
            b"```",
            b"data: ",
            b"event: x",
        ];
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n.max(1) as u64) as usize
        };
        let (mut frames_seen, mut events_seen) = (0, 0);
        for round in 0..20_000 {
            let mut bytes = seeds[round % seeds.len()].as_bytes().to_vec();
            for _ in 0..1 + next(3) {
                let at = next(bytes.len() + 1);
                match next(5) {
                    0 | 1 => {
                        let n = noise[next(noise.len())];
                        bytes.splice(at..at, n.iter().copied());
                    }
                    2 | 3 if at < bytes.len() => {
                        bytes.remove(at);
                    }
                    _ => bytes.truncate(at.max(1)),
                }
            }
            bytes.extend_from_slice(b"\n\n");
            let mut sse = sse::SseDecoder::default();
            let mut openai = openai::tests_support::decoder();
            let mut anthropic = anthropic::tests_support::decoder();
            let split = next(bytes.len());
            for part in [&bytes[..split], &bytes[split..]] {
                for frame in sse.feed(part).unwrap_or_default() {
                    frames_seen += 1;
                    events_seen += openai.frame(frame.clone()).map_or(0, |e| e.len());
                    events_seen += anthropic.frame(frame.clone()).map_or(0, |e| e.len());
                    let mut scanner = repair::ArgumentScanner::default();
                    scanner.feed(&frame.data);
                    let _ = repair::from_text(&frame.data);
                    let _ = repair::from_tool_call("execute", &frame.data);
                    let mut fence = repair::FenceParser::default();
                    fence.feed(&frame.data);
                    fence.finish();
                }
            }
            let _ = sse.finish();
            let _ = openai.end();
            let _ = anthropic.end();
        }
        // The mutations leave most frames readable: the decoders were really exercised.
        assert!(frames_seen > 15_000, "{frames_seen}");
        assert!(events_seen > 1_000, "{events_seen}");
    }

    #[test]
    fn frames_of_millions_of_values_are_refused_before_parsing() {
        assert_eq!(json_values(br#"{"a":[1,2,{"b":"x,y[{\",z"}]}"#), 6);
        let ok = frame_json(r#"{"choices":[]}"#, "a stream chunk").unwrap();
        assert_eq!(ok, json!({"choices": []}));
        let many = format!(r#"{{"choices":[{}]}}"#, vec!["{}"; 200_000].join(","));
        let err = frame_json(&many, "a stream chunk").unwrap_err();
        assert!(
            err.to_string().starts_with(
                "the model server sent malformed data (a stream chunk holds more than \
                 100000 JSON values)"
            ),
            "{err}"
        );
        assert!(matches!(
            frame_json("{not json", "a stream chunk"),
            Err(LlmError::Malformed { .. })
        ));
    }
}
