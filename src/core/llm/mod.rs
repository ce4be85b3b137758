//! Language models behind one trait: a provider turns a [`ChatRequest`] into a stream
//! of [`StreamEvent`]s (text deltas, tool-call pieces, the finish).
//!
//! Layers: bytes from HTTP → SSE frames with an idle timeout per read ([`sse`]) → a
//! provider's typed events ([`openai`], [`anthropic`]) → the conversation loop. The
//! request shape here is provider-neutral; it knows nothing of LMC messages or of the
//! sandbox. [`repair`] turns what local models really write into code blocks, and
//! [`tokens`] counts tokens for trimming the context.

pub mod anthropic;
mod error;
mod http;
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

/// What a streaming reply is made of.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    TextDelta(String),
    /// A piece of tool call `index`: the id and name arrive once, the arguments in pieces.
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
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
    /// The setting a user changes to fix a rejected key, named in errors
    /// (`OPENAI_API_KEY or --api-key`).
    pub key_setting: String,
    /// The longest a stream may stay silent before it counts as stalled.
    pub idle_timeout: Duration,
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
            key_setting: "OPENAI_API_KEY or --api-key".into(),
            idle_timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(10),
            proxy: None,
            no_proxy: None,
        }
    }

    pub fn anthropic(api_base: impl Into<String>, api_key: Option<String>) -> Self {
        Endpoint {
            kind: ProviderKind::Anthropic,
            key_setting: "ANTHROPIC_API_KEY or --api-key".into(),
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
    idle: Duration,
    decoder: D,
) -> Result<EventStream> {
    let response = match http::send(request, failure, idle).await {
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
    let frames = sse::frames(Box::pin(response.bytes_stream()), idle);
    Ok(decode_frames(frames, decoder))
}
