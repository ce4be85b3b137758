//! The protocol every front end speaks with core: each request, event, answer and
//! outcome a front end exchanges with a conversation or with a bare sandbox session, as
//! serde types with one stable JSON form and a JSON Schema generated from them
//! (`docs/messages.schema.json`, pinned by a test; `docs/messages.md` explains it).
//!
//! Flow: a front end sends a [`Submission`] (an id it chooses and a [`Request`]); every
//! [`Event`] a request causes carries that id. A turn (`message`, `run`) streams LMC
//! chunks, completed messages, notices, confirmations and errors, and always ends with
//! `turn_end`; every other request is answered by exactly one event: its result
//! (`info`, `messages`, `uploaded`, `downloaded`, `done`) or an `error`. A confirmation
//! names itself with an id, and the answer names that id. Errors are an [`Error`]: a
//! [`ErrorKind`], core's message (what happened, never which flag to pass: that is the
//! front end's wording) and [`Facts`] a front end words its advice from.
//!
//! Bytes of files travel as an [`Archive`]: a tar, inline as base64 for JSON clients (at
//! most [`MAX_INLINE_ARCHIVE`]) or as a temporary file for clients in the same process,
//! so that copies of any size cost bounded memory.
//!
//! Messages and chunks keep Open Interpreter's LMC shape ([`Message`], [`Chunk`]); oi's
//! own events are `role: "server"` objects. This module holds types and their JSON
//! only: the loop that answers requests is `respond`, the sandbox is `code_interpreter`,
//! and how a front end words an error is the front end's business.

use std::sync::Arc;

use base64::Engine as _;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::code_interpreter::{ExecEvent, ExecOutcome};
use super::llm::{LlmError, Usage};
use super::messages::{Chunk, Message};

/// The id a front end gives a request; every event the request causes carries it.
/// Any string of at most [`MAX_ID_LEN`] bytes; ids from `Conversation::send` are
/// decimal counters (`"1"`, `"2"`, …).
pub type RequestId = String;

/// The longest request id accepted.
pub const MAX_ID_LEN: usize = 128;

/// Refuses a request id longer than [`MAX_ID_LEN`] (ids come back on every event).
pub fn check_id(id: &str) -> Result<(), Error> {
    if id.len() > MAX_ID_LEN {
        return Err(Error::new(
            ErrorKind::InvalidRequest,
            format!("a request id is at most {MAX_ID_LEN} bytes"),
        ));
    }
    Ok(())
}

/// The most bytes an archive may hold inline (base64, decoded size): 8 MiB. Larger
/// copies go through an in-process file ([`Archive::File`]); the server streams them.
pub const MAX_INLINE_ARCHIVE: u64 = 8 << 20;

/// Requests a conversation queues while it works (turns run one after another).
/// Sending more waits until one is taken: back-pressure on a client that sends faster
/// than the conversation works. Interrupts and confirmation answers never queue.
pub const REQUEST_QUEUE: usize = 64;

/// Events a conversation buffers for its front end. Past it the conversation waits
/// for the front end to read (a flood of output slows the block, never grows memory).
pub const EVENT_QUEUE: usize = 256;

/// A request with the id its events will carry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Submission {
    pub id: RequestId,
    #[serde(flatten)]
    pub request: Request,
}

/// What a front end asks of a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// The user says something: starts a turn (queued behind a running one).
    Message { content: String },
    /// Runs code the user typed in the conversation's sandbox, without the model: the
    /// output streams as console chunks and is not added to the conversation. A turn.
    Run { language: String, code: String },
    /// The answer to the confirmation whose id is `confirmation`. Acts at once.
    Confirm {
        confirmation: String,
        #[serde(flatten)]
        answer: Answer,
    },
    /// Stops the model's stream or the running block, and the turns queued behind it;
    /// their turns end `interrupted`, the state is kept. Acts at once.
    Interrupt,
    /// Forgets the messages and starts a fresh sandbox.
    Reset,
    /// Removes the last user message and everything after it.
    Undo,
    /// Replaces the messages (resuming a saved conversation).
    Load { messages: Vec<Message> },
    /// Turns auto-run on or off.
    SetAutoRun { on: bool },
    /// Model, context and sandbox facts: answered by `info`.
    Info,
    /// The conversation's messages: answered by `messages`.
    Messages,
    /// Copies a tar archive into the workspace folder `dest` (relative paths are inside
    /// `/workspace`), its entries owned by the sandbox's user: answered by `uploaded`.
    Upload { dest: String, archive: Archive },
    /// The workspace file or folder `source` as a tar archive: answered by `downloaded`.
    Download {
        source: String,
        #[serde(default)]
        delivery: Delivery,
    },
}

impl Request {
    /// A user message.
    pub fn message(text: impl Into<String>) -> Request {
        Request::Message {
            content: text.into(),
        }
    }

    /// Whether the request is a turn: its events end with `turn_end`.
    pub fn is_turn(&self) -> bool {
        matches!(self, Request::Message { .. } | Request::Run { .. })
    }
}

/// How the user answered a confirmation: `{"answer": "run"}`,
/// `{"answer": "edit", "code": "…"}`, `{"answer": "decline"}`, `{"answer": "always"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "answer", content = "code", rename_all = "snake_case")]
pub enum Answer {
    Run,
    /// Run this code instead (the user edited the block).
    Edit(String),
    Decline,
    /// Run, and run every later block of this conversation without asking.
    Always,
}

/// A tar archive on its way into or out of a sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "encoding", rename_all = "snake_case")]
pub enum Archive {
    /// The archive's bytes, base64 (standard alphabet, padded): for JSON clients, at
    /// most [`MAX_INLINE_ARCHIVE`] bytes once decoded.
    Base64 { data: String },
    /// A temporary file holding the archive, positioned at its start: for clients in
    /// the same process. Never serialised (serialising one is an error).
    #[serde(skip)]
    File(ArchiveFile),
}

impl Archive {
    /// The archive in a file, positioned at its start: inline bytes are decoded into a
    /// temporary file (refused past [`MAX_INLINE_ARCHIVE`]).
    pub fn into_file(self) -> Result<std::fs::File, Error> {
        use std::io::{Seek, Write};
        match self {
            Archive::File(file) => file.into_inner(),
            Archive::Base64 { data } => {
                if data.len() as u64 > MAX_INLINE_ARCHIVE.div_ceil(3) * 4 {
                    return Err(Error::too_large("an inline archive", MAX_INLINE_ARCHIVE));
                }
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(data.as_bytes())
                    .map_err(|e| {
                        Error::new(
                            ErrorKind::InvalidRequest,
                            format!("the archive is not valid base64: {e}"),
                        )
                    })?;
                tempfile::tempfile()
                    .and_then(|mut f| f.write_all(&bytes).map(|_| f))
                    .and_then(|mut f| f.rewind().map(|_| f))
                    .map_err(|e| Error::new(ErrorKind::Files, format!("a temporary file: {e}")))
            }
        }
    }

    /// An archive file as `delivery` asks: handed over as it is, or read inline
    /// (refused past [`MAX_INLINE_ARCHIVE`]).
    pub fn deliver(mut file: std::fs::File, delivery: Delivery) -> Result<Archive, Error> {
        use std::io::Read;
        match delivery {
            Delivery::File => Ok(Archive::File(ArchiveFile::new(file))),
            Delivery::Base64 => {
                let size = file.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
                if size > MAX_INLINE_ARCHIVE {
                    return Err(Error::too_large("an inline archive", MAX_INLINE_ARCHIVE));
                }
                let mut bytes = Vec::with_capacity(size as usize);
                file.read_to_end(&mut bytes)
                    .map_err(|e| Error::new(ErrorKind::Files, format!("reading the copy: {e}")))?;
                Ok(Archive::Base64 {
                    data: base64::engine::general_purpose::STANDARD.encode(bytes),
                })
            }
        }
    }
}

/// How a download's archive should come back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// Inline, base64 (JSON clients; at most [`MAX_INLINE_ARCHIVE`]).
    #[default]
    Base64,
    /// As a temporary file (clients in the same process; any size the copy allows).
    File,
}

/// A temporary file holding an archive, shared by the clones of the event carrying it
/// (they are equal when they share the file).
#[derive(Debug, Clone)]
pub struct ArchiveFile(Arc<std::sync::Mutex<Option<std::fs::File>>>);

impl ArchiveFile {
    pub fn new(file: std::fs::File) -> Self {
        ArchiveFile(Arc::new(std::sync::Mutex::new(Some(file))))
    }

    /// The file; an error if a clone took it already.
    pub fn into_inner(self) -> Result<std::fs::File, Error> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| Error::new(ErrorKind::Files, "the archive was taken already"))
    }
}

impl PartialEq for ArchiveFile {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// What a conversation tells its front end about a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Event {
    /// The id of the request this event belongs to.
    pub id: RequestId,
    #[serde(flatten)]
    pub msg: EventMsg,
}

impl Event {
    pub fn new(id: impl Into<RequestId>, msg: EventMsg) -> Self {
        Event { id: id.into(), msg }
    }
}

/// The events of a conversation. In JSON, chunks and confirmations are LMC objects
/// (`role` user, assistant or computer); the others are `role: "server"` objects
/// whose `type` names them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(into = "wire::EventMsg", from = "wire::EventMsg")]
pub enum EventMsg {
    /// A piece of a message as it streams (LMC).
    Chunk(Chunk),
    /// A block waits for the user's [`Answer`] (sent as [`Request::Confirm`]).
    Confirmation(Confirmation),
    /// A message was added to the conversation: what a front end saves.
    Message(Message),
    /// Something the user should know that is not part of the conversation (a retry,
    /// a trimmed context, a switch to text mode).
    Notice(String),
    /// A failure: of the model's server or of the sandbox in a turn (the turn then
    /// ends), or of a request that is not a turn (its answer).
    Error(Error),
    /// The turn is over; the conversation is ready for the next message.
    TurnEnded(TurnEnd),
    /// The answer to [`Request::Info`].
    Info(Box<ConversationInfo>),
    /// The answer to [`Request::Messages`].
    Messages(Vec<Message>),
    /// The answer to [`Request::Upload`]: the archive's size in bytes.
    Uploaded { bytes: u64 },
    /// The answer to [`Request::Download`].
    Downloaded(Archive),
    /// The answer to a request that has no other (confirm, interrupt, reset, undo,
    /// load, set_auto_run): it was carried out.
    Done,
}

/// A block that waits for the user's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Confirmation {
    /// Named by the answer ([`Request::Confirm`]).
    pub id: String,
    /// The language it will run as.
    pub language: String,
    /// Exactly the code that will run.
    pub code: String,
}

/// Why a turn ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TurnEnd {
    /// The model answered without code (or a `run` request's block ran).
    Finished,
    /// The user declined a block.
    Declined,
    /// The user interrupted.
    Interrupted,
    /// The model kept asking to run code past `max_iterations`.
    IterationCap,
    /// The model's server failed (see the preceding error).
    ModelError,
    /// The sandbox could not run code, or a `run` request could not run (see the
    /// preceding error).
    SandboxError,
}

/// What `info` answers (`%info` and `%tokens` in the terminal).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConversationInfo {
    pub model: String,
    /// The provider, described ("OpenAI-compatible at URL").
    pub provider: String,
    /// Function calling (true) or text mode.
    pub functions: bool,
    pub vision: bool,
    pub context_window: usize,
    /// Tokens the next request would use (system message, tool, messages), counted
    /// with `token_method`.
    pub context_tokens: usize,
    pub token_method: String,
    /// Totals the server reported for this conversation.
    pub usage: Usage,
    pub auto_run: bool,
    pub messages: usize,
    /// The sandbox session, once it is open.
    pub session: Option<SessionInfo>,
}

/// The sandbox session of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SessionInfo {
    pub id: String,
    pub container_id: Option<String>,
    pub image: Option<String>,
    pub sandboxed: bool,
}

/// A failure, as a front end is told it: in JSON
/// `{"role":"server","type":"error","format":KIND,"content":MESSAGE,"facts":{…}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    /// What kind of failure, stable for machines.
    #[serde(rename = "format")]
    pub kind: ErrorKind,
    /// What happened, in core's words: it names URLs, models, settings by their
    /// configuration names, never a front end's flags.
    #[serde(rename = "content")]
    pub message: String,
    /// What a front end needs to say how to fix it (boxed: errors travel in `Result`s,
    /// kept small).
    #[serde(default, skip_serializing_if = "Facts::is_empty")]
    pub facts: Box<Facts>,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            facts: Box::default(),
        }
    }

    pub fn with_facts(mut self, facts: Facts) -> Self {
        self.facts = Box::new(facts);
        self
    }

    /// The conversation has ended; nothing more can be asked of it.
    pub fn closed() -> Self {
        Error::new(ErrorKind::Closed, "the conversation has ended")
    }

    /// `what` is larger than `limit` bytes.
    pub fn too_large(what: &str, limit: u64) -> Self {
        Error::new(
            ErrorKind::TooLarge,
            format!(
                "{what} is larger than {}",
                super::code_interpreter::bytes(limit.min(i64::MAX as u64) as i64)
            ),
        )
        .with_facts(Facts {
            limit: Some(limit),
            ..Facts::default()
        })
    }

    /// A sandbox failure, with the facts it has: which image is missing, which
    /// languages there are. An unknown language is the request's fault.
    pub fn sandbox(context: &str, error: &super::code_interpreter::SandboxError) -> Self {
        use super::code_interpreter::SandboxError;
        let mut facts = Facts::default();
        let kind = match error {
            SandboxError::Files { .. } => ErrorKind::Files,
            SandboxError::UnknownLanguage { available, .. } => {
                facts.setting = Some(Setting::Languages);
                facts.available = available.clone();
                ErrorKind::InvalidRequest
            }
            SandboxError::ImageMissing { tag } => {
                facts.setting = Some(Setting::Image);
                facts.image = Some(tag.clone());
                ErrorKind::Sandbox
            }
            SandboxError::RunnerVersion { .. } => {
                facts.setting = Some(Setting::Image);
                ErrorKind::Sandbox
            }
            SandboxError::CopyTooLarge { limit, .. } => {
                facts.setting = Some(Setting::WorkspaceSize);
                facts.limit = Some(*limit);
                ErrorKind::Files
            }
            SandboxError::WorkspaceTooLarge { limit, .. } => {
                facts.setting = Some(Setting::WorkspaceSize);
                facts.limit = Some((*limit).max(0) as u64);
                ErrorKind::Sandbox
            }
            SandboxError::DockerUnavailable { endpoint, .. } => {
                facts.setting = Some(Setting::SandboxHost);
                facts.url = Some(endpoint.clone());
                ErrorKind::Sandbox
            }
            _ => ErrorKind::Sandbox,
        };
        let message = if context.is_empty() {
            error.to_string()
        } else {
            format!("{context}: {error}")
        };
        Error::new(kind, message).with_facts(facts)
    }
}

/// What kind of failure an [`Error`] is. Values, as in JSON:
///
/// - the model's server: `auth` (the key was refused), `unknown_model`, `connect`
///   (nothing answered at the URL), `rate_limited`, `server` (5xx), `rejected` (another
///   4xx), `tools_unsupported`, `stalled` (silent past the idle timeout), `too_slow`
///   (past `reply_timeout`), `truncated`, `malformed`, `reply_too_large`, `client` (the
///   HTTP client could not be set up);
/// - the sandbox: `sandbox` (it could not start or run the block), `files` (a copy in
///   or out was refused or failed);
/// - the loop: `iteration_cap`;
/// - the request: `invalid_request` (it cannot be carried out as sent: an unknown
///   language, empty code, a bad id, bad base64), `unknown_confirmation` (no waiting
///   confirmation has that id), `too_large` (an archive past its limit), `busy` (a
///   turn is running: read its events first), `closed` (the conversation has ended).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    Auth,
    UnknownModel,
    Connect,
    RateLimited,
    Server,
    Rejected,
    ToolsUnsupported,
    Stalled,
    TooSlow,
    Truncated,
    Malformed,
    ReplyTooLarge,
    Client,
    Sandbox,
    Files,
    IterationCap,
    InvalidRequest,
    UnknownConfirmation,
    TooLarge,
    Busy,
    Closed,
}

impl ErrorKind {
    /// The name, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Auth => "auth",
            ErrorKind::UnknownModel => "unknown_model",
            ErrorKind::Connect => "connect",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::Server => "server",
            ErrorKind::Rejected => "rejected",
            ErrorKind::ToolsUnsupported => "tools_unsupported",
            ErrorKind::Stalled => "stalled",
            ErrorKind::TooSlow => "too_slow",
            ErrorKind::Truncated => "truncated",
            ErrorKind::Malformed => "malformed",
            ErrorKind::ReplyTooLarge => "reply_too_large",
            ErrorKind::Client => "client",
            ErrorKind::Sandbox => "sandbox",
            ErrorKind::Files => "files",
            ErrorKind::IterationCap => "iteration_cap",
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::UnknownConfirmation => "unknown_confirmation",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::Busy => "busy",
            ErrorKind::Closed => "closed",
        }
    }
}

/// The facts behind an error, for a front end to word its advice: the terminal names
/// its flags, a server its JSON fields. Absent facts are left out of the JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Facts {
    /// The URL that failed (the model server's endpoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The HTTP status the server answered with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The model asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The setting that fixes the failure, or whose limit was hit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setting: Option<Setting>,
    /// Where the API key comes from, as the front end configured it (the
    /// environment variable: `OPENAI_API_KEY`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_setting: Option<String>,
    /// The limit that was hit (bytes, seconds or replies, as `setting` counts them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// What is available instead (the models a server offers, the languages enabled).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub available: Vec<String>,
    /// The sandbox image concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

impl Facts {
    pub fn is_empty(&self) -> bool {
        *self == Facts::default()
    }
}

/// A setting, by its configuration name (a front end maps it to its flag or field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Setting {
    ApiKey,
    ApiBase,
    Model,
    MaxIterations,
    MaxReplyBytes,
    IdleTimeout,
    ReplyTimeout,
    Languages,
    Image,
    /// The size of a private workspace, which also bounds a copy out of it.
    WorkspaceSize,
    /// Where the sandboxes run (the Docker daemon's endpoint).
    SandboxHost,
}

impl From<&LlmError> for Error {
    fn from(error: &LlmError) -> Self {
        Error::new(llm_kind(error), error.to_string()).with_facts(llm_facts(error))
    }
}

fn llm_facts(error: &LlmError) -> Facts {
    let url = |url: &str| Some(url.to_string());
    match error {
        LlmError::Auth {
            url: u,
            status,
            key_setting,
            ..
        } => Facts {
            url: url(u),
            status: Some(*status),
            setting: Some(Setting::ApiKey),
            key_setting: Some(key_setting.clone()),
            ..Facts::default()
        },
        LlmError::UnknownModel {
            model,
            url: u,
            available,
        } => Facts {
            url: url(u),
            model: Some(model.clone()),
            setting: Some(Setting::Model),
            available: available.clone(),
            ..Facts::default()
        },
        LlmError::Connect { url: u, .. } => Facts {
            url: url(u),
            setting: Some(Setting::ApiBase),
            ..Facts::default()
        },
        LlmError::RateLimited { url: u, .. } => Facts {
            url: url(u),
            status: Some(429),
            ..Facts::default()
        },
        LlmError::Server { url: u, status, .. } | LlmError::Rejected { url: u, status, .. } => {
            Facts {
                url: url(u),
                status: Some(*status),
                ..Facts::default()
            }
        }
        LlmError::Stalled { after } => Facts {
            setting: Some(Setting::IdleTimeout),
            limit: Some(after.as_secs()),
            ..Facts::default()
        },
        LlmError::TooSlow { after } => Facts {
            setting: Some(Setting::ReplyTimeout),
            limit: Some(after.as_secs()),
            ..Facts::default()
        },
        LlmError::ReplyTooLarge { limit, .. } => Facts {
            setting: Some(Setting::MaxReplyBytes),
            limit: Some(*limit),
            ..Facts::default()
        },
        LlmError::ToolsUnsupported { .. }
        | LlmError::Truncated { .. }
        | LlmError::Malformed { .. }
        | LlmError::Client(_) => Facts::default(),
    }
}

fn llm_kind(error: &LlmError) -> ErrorKind {
    match error {
        LlmError::Auth { .. } => ErrorKind::Auth,
        LlmError::UnknownModel { .. } => ErrorKind::UnknownModel,
        LlmError::Connect { .. } => ErrorKind::Connect,
        LlmError::RateLimited { .. } => ErrorKind::RateLimited,
        LlmError::Server { .. } => ErrorKind::Server,
        LlmError::Rejected { .. } => ErrorKind::Rejected,
        LlmError::ToolsUnsupported { .. } => ErrorKind::ToolsUnsupported,
        LlmError::Stalled { .. } => ErrorKind::Stalled,
        LlmError::TooSlow { .. } => ErrorKind::TooSlow,
        LlmError::Truncated { .. } => ErrorKind::Truncated,
        LlmError::Malformed { .. } => ErrorKind::Malformed,
        LlmError::ReplyTooLarge { .. } => ErrorKind::ReplyTooLarge,
        LlmError::Client(_) => ErrorKind::Client,
    }
}

// ---- a bare sandbox session ------------------------------------------------------------

/// A request to a bare sandbox session (no model), with the id its events carry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SandboxSubmission {
    pub id: RequestId,
    #[serde(flatten)]
    pub request: SandboxRequest,
}

/// What a front end asks of a bare sandbox session (`respond::SandboxChannel`): the
/// server's sandbox API and MCP's tools. `execute` streams output events and ends with
/// `done` (or is answered by an `error` when the block cannot start); `interrupt` acts
/// at once and has no answer of its own (the block's `done` says `interrupted`); every
/// other request is answered by one event (`uploaded`, `downloaded`, `closed`, `error`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SandboxRequest {
    /// Runs a block; `timeout_ms` overrides the session's block timeout.
    Execute {
        language: String,
        code: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
    },
    /// Interrupts the running block (its state is kept).
    Interrupt,
    /// As [`Request::Upload`].
    Upload { dest: String, archive: Archive },
    /// As [`Request::Download`].
    Download {
        source: String,
        #[serde(default)]
        delivery: Delivery,
    },
    /// Removes the sandbox.
    Close,
}

/// An event of a bare sandbox session, with the id of its request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SandboxEvent {
    pub id: RequestId,
    #[serde(flatten)]
    pub msg: SandboxEventMsg,
}

/// The events of a bare sandbox session. A block's are in the order the code produced
/// them and end with exactly one `done`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SandboxEventMsg {
    Stdout {
        text: String,
    },
    Stderr {
        text: String,
    },
    /// An image the code displayed; `format` is `png`, `jpeg`, …
    Image {
        format: String,
        base64: String,
    },
    /// Something the user should know that the code did not print.
    Notice {
        message: String,
    },
    /// The line of the block about to run.
    ActiveLine {
        line: u32,
    },
    /// How the block ended.
    Done(ExecOutcome),
    Uploaded {
        bytes: u64,
    },
    Downloaded {
        archive: Archive,
    },
    /// The sandbox was removed.
    Closed,
    Error(Error),
}

impl From<ExecEvent> for SandboxEventMsg {
    fn from(event: ExecEvent) -> Self {
        match event {
            ExecEvent::Stdout { text } => SandboxEventMsg::Stdout { text },
            ExecEvent::Stderr { text } => SandboxEventMsg::Stderr { text },
            ExecEvent::Image { format, data } => SandboxEventMsg::Image {
                format,
                base64: base64::engine::general_purpose::STANDARD.encode(data),
            },
            ExecEvent::Notice { message } => SandboxEventMsg::Notice { message },
            ExecEvent::ActiveLine { line } => SandboxEventMsg::ActiveLine { line },
            ExecEvent::Done(outcome) => SandboxEventMsg::Done(outcome),
        }
    }
}

/// Everything the protocol defines, for the schema: one document with a definition of
/// each type a client sends or receives.
#[derive(JsonSchema)]
pub struct Protocol {
    pub submission: Submission,
    pub event: Event,
    pub sandbox_submission: SandboxSubmission,
    pub sandbox_event: SandboxEvent,
}

/// The JSON Schema of the protocol, as checked in at `docs/messages.schema.json`.
pub fn schema() -> String {
    let schema = schemars::schema_for!(Protocol);
    serde_json::to_string_pretty(&schema).unwrap_or_default() + "\n"
}

/// The JSON form of events: LMC objects for chunks and confirmations, `role: "server"`
/// objects for the rest. Private: [`EventMsg`] converts to and from it.
mod wire {
    use schemars::JsonSchema;
    use serde::{Deserialize, Serialize};

    use super::{Archive, ConversationInfo, Error, TurnEnd};
    use crate::core::messages::{Chunk, Message};

    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    #[serde(tag = "role", rename_all = "snake_case")]
    pub enum EventMsg {
        /// oi's own events.
        Server(Server),
        /// `{"role":"computer","type":"confirmation","format":"execution",
        /// "confirmation":ID,"content":{"type":"code","format":LANGUAGE,"content":CODE}}`
        #[serde(untagged)]
        Confirmation(Confirmation),
        /// An LMC chunk.
        #[serde(untagged)]
        Chunk(Chunk),
    }

    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    #[serde(tag = "type", rename_all = "snake_case")]
    pub enum Server {
        /// A message was added to the conversation.
        MessageComplete {
            content: Message,
        },
        Notice {
            content: String,
        },
        Error(Error),
        TurnEnd {
            format: TurnEnd,
        },
        Info {
            content: Box<ConversationInfo>,
        },
        Messages {
            content: Vec<Message>,
        },
        Uploaded {
            content: Uploaded,
        },
        Downloaded {
            content: Archive,
        },
        Done,
    }

    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    pub struct Uploaded {
        pub bytes: u64,
    }

    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    pub struct Confirmation {
        pub role: ComputerRole,
        #[serde(rename = "type")]
        pub kind: ConfirmationType,
        pub format: ExecutionFormat,
        /// The id the answer names.
        pub confirmation: String,
        pub content: Code,
    }

    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    pub struct Code {
        #[serde(rename = "type")]
        pub kind: CodeType,
        /// The language.
        pub format: String,
        pub content: String,
    }

    #[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
    #[serde(rename_all = "snake_case")]
    pub enum ComputerRole {
        Computer,
    }

    #[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
    #[serde(rename_all = "snake_case")]
    pub enum ConfirmationType {
        Confirmation,
    }

    #[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
    #[serde(rename_all = "snake_case")]
    pub enum ExecutionFormat {
        Execution,
    }

    #[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
    #[serde(rename_all = "snake_case")]
    pub enum CodeType {
        Code,
    }

    impl From<super::EventMsg> for EventMsg {
        fn from(msg: super::EventMsg) -> Self {
            use super::EventMsg as M;
            match msg {
                M::Chunk(chunk) => EventMsg::Chunk(chunk),
                M::Confirmation(c) => EventMsg::Confirmation(Confirmation {
                    role: ComputerRole::Computer,
                    kind: ConfirmationType::Confirmation,
                    format: ExecutionFormat::Execution,
                    confirmation: c.id,
                    content: Code {
                        kind: CodeType::Code,
                        format: c.language,
                        content: c.code,
                    },
                }),
                M::Message(content) => EventMsg::Server(Server::MessageComplete { content }),
                M::Notice(content) => EventMsg::Server(Server::Notice { content }),
                M::Error(error) => EventMsg::Server(Server::Error(error)),
                M::TurnEnded(format) => EventMsg::Server(Server::TurnEnd { format }),
                M::Info(content) => EventMsg::Server(Server::Info { content }),
                M::Messages(content) => EventMsg::Server(Server::Messages { content }),
                M::Uploaded { bytes } => EventMsg::Server(Server::Uploaded {
                    content: Uploaded { bytes },
                }),
                M::Downloaded(content) => EventMsg::Server(Server::Downloaded { content }),
                M::Done => EventMsg::Server(Server::Done),
            }
        }
    }

    impl From<EventMsg> for super::EventMsg {
        fn from(msg: EventMsg) -> Self {
            use super::EventMsg as M;
            match msg {
                EventMsg::Chunk(chunk) => M::Chunk(chunk),
                EventMsg::Confirmation(c) => M::Confirmation(super::Confirmation {
                    id: c.confirmation,
                    language: c.content.format,
                    code: c.content.content,
                }),
                EventMsg::Server(server) => match server {
                    Server::MessageComplete { content } => M::Message(content),
                    Server::Notice { content } => M::Notice(content),
                    Server::Error(error) => M::Error(error),
                    Server::TurnEnd { format } => M::TurnEnded(format),
                    Server::Info { content } => M::Info(content),
                    Server::Messages { content } => M::Messages(content),
                    Server::Uploaded { content } => M::Uploaded {
                        bytes: content.bytes,
                    },
                    Server::Downloaded { content } => M::Downloaded(content),
                    Server::Done => M::Done,
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_inline_archive_round_trips_through_a_file() {
        use std::io::Read;
        let archive = Archive::Base64 {
            data: base64::engine::general_purpose::STANDARD.encode(b"tar bytes"),
        };
        let mut file = archive.into_file().unwrap();
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).unwrap();
        assert_eq!(bytes, b"tar bytes");
        let file = tempfile::tempfile().unwrap();
        std::fs::File::set_len(&file, MAX_INLINE_ARCHIVE + 1).unwrap();
        let err = Archive::deliver(file, Delivery::Base64).unwrap_err();
        assert_eq!(err.kind, ErrorKind::TooLarge);
        let err = Archive::Base64 {
            data: "not base64!".into(),
        }
        .into_file()
        .unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidRequest);
    }

    #[test]
    fn error_kinds_are_named_as_in_json() {
        for kind in [
            ErrorKind::Auth,
            ErrorKind::UnknownModel,
            ErrorKind::ReplyTooLarge,
            ErrorKind::IterationCap,
            ErrorKind::UnknownConfirmation,
            ErrorKind::Closed,
        ] {
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::Value::String(kind.as_str().into())
            );
        }
    }
}
