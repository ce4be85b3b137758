//! The conversation loop: requests in, events out, the same for every front end.
//!
//! [`Conversation::start`] spawns a worker that owns the conversation (its LMC messages,
//! its sandbox session, the model's provider). A user message starts a turn: the model's
//! reply streams out as LMC chunks; each block it asks to run is confirmed (unless
//! auto-run), run in the sandbox with its output streaming out, and fed back; the turn
//! ends when the model answers without code, the user declines or interrupts, an error
//! stops it, or the iteration cap is hit. Many conversations may run in one process.
//!
//! Left to others: reading configuration (front ends build a [`Config`]), rendering
//! events, saving conversations, building the sandbox image.

pub mod prompt;
mod turn;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::code_interpreter::{Engine, SandboxError, Session};
use super::config::{Config, ModelTraits};
use super::llm::tokens::TokenCounter;
use super::llm::{LlmError, Provider, Usage};
use super::messages::{Chunk, Message, Role};
use prompt::History;

/// What a front end asks of a conversation.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// The user says something; starts a turn. Sent during a turn, it waits for the end.
    Message(String),
    /// The answer to the pending [`Event::Confirmation`].
    Confirm(Answer),
    /// Stops the model's stream or the running block; the turn ends, state is kept.
    Interrupt,
    /// Forgets the messages and starts a fresh sandbox.
    Reset,
    /// Removes the last user message and everything after it.
    Undo,
    /// Replaces the messages (resuming a saved conversation).
    Load(Vec<Message>),
    /// Turns auto-run on or off.
    SetAutoRun(bool),
    /// Runs code the user typed in the conversation's sandbox, without the model: the
    /// output streams as console chunks and is not added to the conversation. Ends with
    /// `TurnEnded`.
    Run { language: String, code: String },
}

/// How the user answered a confirmation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Run,
    /// Run this code instead (the user edited the block).
    Edit(String),
    Decline,
    /// Run, and run every later block of this conversation without asking.
    Always,
}

/// Why a turn ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnEnd {
    /// The model answered without code.
    Finished,
    /// The user declined a block.
    Declined,
    /// The user interrupted.
    Interrupted,
    /// The model kept asking to run code past `max_iterations`.
    IterationCap,
    /// The model's server failed (see the preceding [`Event::Error`]).
    ModelError,
    /// The sandbox could not run code (see the preceding [`Event::Error`]).
    SandboxError,
}

impl TurnEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            TurnEnd::Finished => "finished",
            TurnEnd::Declined => "declined",
            TurnEnd::Interrupted => "interrupted",
            TurnEnd::IterationCap => "iteration_cap",
            TurnEnd::ModelError => "model_error",
            TurnEnd::SandboxError => "sandbox_error",
        }
    }
}

/// What a conversation tells its front end.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A piece of a message as it streams (LMC).
    Chunk(Chunk),
    /// A block waits for the user's [`Answer`] (sent as [`Request::Confirm`]).
    Confirmation { language: String, code: String },
    /// A message was added to the conversation: what a front end saves.
    Message(Message),
    /// Something the user should know that is not part of the conversation (a retry,
    /// a trimmed context, a switch to text mode).
    Notice(String),
    /// A failure of the model's server or of the sandbox; `kind` is stable for machines.
    Error { kind: String, message: String },
    /// The turn is over; the conversation is ready for the next message.
    TurnEnded(TurnEnd),
}

impl Event {
    /// The event as LMC-shaped JSON: chunks as they are, confirmations as Open
    /// Interpreter sends them, and oi's own events with `role: "server"`.
    pub fn to_json(&self) -> Value {
        match self {
            Event::Chunk(chunk) => serde_json::to_value(chunk).unwrap_or(Value::Null),
            Event::Confirmation { language, code } => json!({
                "role": "computer", "type": "confirmation", "format": "execution",
                "content": {"type": "code", "format": language, "content": code}}),
            Event::Message(message) => json!({
                "role": "server", "type": "message_complete",
                "content": serde_json::to_value(message).unwrap_or(Value::Null)}),
            Event::Notice(text) => json!({"role": "server", "type": "notice", "content": text}),
            Event::Error { kind, message } => {
                json!({"role": "server", "type": "error", "format": kind, "content": message})
            }
            Event::TurnEnded(end) => {
                json!({"role": "server", "type": "turn_end", "format": end.as_str()})
            }
        }
    }
}

/// What `%info` and `%tokens` show.
#[derive(Debug, Clone, PartialEq)]
pub struct ConversationInfo {
    pub model: String,
    pub provider: String,
    /// Function calling (true) or text mode.
    pub functions: bool,
    pub vision: bool,
    pub context_window: usize,
    /// Tokens the next request would use (system message, tool, messages), counted
    /// with `token_method`.
    pub context_tokens: usize,
    pub token_method: &'static str,
    /// Totals the server reported for this conversation.
    pub usage: Usage,
    pub auto_run: bool,
    pub messages: usize,
    /// The sandbox session, once it is open.
    pub session: Option<SessionInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub id: String,
    pub container_id: Option<String>,
    pub image: Option<String>,
    pub sandboxed: bool,
}

enum Op {
    Upload(PathBuf, String, oneshot::Sender<Result<u64, String>>),
    Download(
        String,
        PathBuf,
        oneshot::Sender<Result<Vec<PathBuf>, String>>,
    ),
    Turn(String, CancellationToken),
    Run(String, String, CancellationToken),
    Request(Request),
    Messages(oneshot::Sender<Vec<Message>>),
    Info(oneshot::Sender<ConversationInfo>),
}

/// A running conversation.
///
/// # Examples
///
/// ```no_run
/// use oi::core::code_interpreter::Engine;
/// use oi::core::config::Config;
/// use oi::core::llm::Endpoint;
/// use oi::core::respond::{Conversation, Event, Request, Answer};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let mut config = Config::new("gpt-4o-mini", Endpoint::openai("https://api.openai.com/v1", Some("sk-...".into())));
/// config.auto_run = false;
/// let engine = Engine::connect(config.sandbox.clone()).await?;
/// let mut conversation = Conversation::start(config, engine)?;
/// conversation.send(Request::Message("What is 6*7? Compute it in Python.".into()));
/// let mut transcript = String::new();
/// while let Some(event) = conversation.next_event().await {
///     match event {
///         Event::Chunk(chunk) => transcript.push_str(&chunk.content.unwrap_or_default()),
///         Event::Confirmation { .. } => conversation.send(Request::Confirm(Answer::Run)),
///         Event::TurnEnded(_) => break,
///         _ => {}
///     }
/// }
/// conversation.shutdown().await;
/// # Ok(()) }
/// ```
pub struct Conversation {
    ops: mpsc::UnboundedSender<Op>,
    answers: mpsc::UnboundedSender<Answer>,
    cancel: Arc<Mutex<Vec<CancellationToken>>>,
    events: mpsc::Receiver<Event>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Conversation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conversation").finish_non_exhaustive()
    }
}

impl Conversation {
    /// Starts a conversation with the built-in provider for `config.endpoint`. The
    /// sandbox session starts opening at once, so it is ready by the first block.
    /// Must be called within a Tokio runtime.
    pub fn start(config: Config, engine: Engine) -> Result<Conversation, LlmError> {
        let provider = config.endpoint.provider()?;
        Ok(Conversation::with_provider(config, provider, engine))
    }

    /// Starts a conversation with any provider.
    pub fn with_provider(
        config: Config,
        provider: Arc<dyn Provider>,
        engine: Engine,
    ) -> Conversation {
        let (ops_tx, ops_rx) = mpsc::unbounded_channel();
        let (answers_tx, answers_rx) = mpsc::unbounded_channel();
        let (events_tx, events_rx) = mpsc::channel(256);
        let cancel = Arc::new(Mutex::new(Vec::new()));
        let traits = config.traits();
        let worker = Worker {
            history: History::new(TokenCounter::for_model(&config.model)),
            session: SessionSlot::Empty,
            functions: traits.functions,
            languages: config.sandbox.languages.names(),
            traits,
            auto_run: config.auto_run,
            usage: Usage::default(),
            last_dropped: 0,
            provider,
            engine,
            events: events_tx,
            answers: answers_rx,
            cancel: cancel.clone(),
            config,
        };
        let task = tokio::spawn(worker.run(ops_rx));
        Conversation {
            ops: ops_tx,
            answers: answers_tx,
            cancel,
            events: events_rx,
            task,
        }
    }

    /// Sends a request. Never blocks; requests are handled in order, after the running
    /// turn (except interrupts and confirmation answers, which act on it).
    pub fn send(&self, request: Request) {
        match request {
            Request::Interrupt => self.interrupt(),
            Request::Confirm(answer) => {
                let _ = self.answers.send(answer);
            }
            Request::Message(text) => {
                // The turn's token exists from now, so an interrupt sent right after the
                // message (before the worker picks it up) is not lost.
                let _ = self.ops.send(Op::Turn(text, self.turn_token()));
            }
            Request::Run { language, code } => {
                let _ = self.ops.send(Op::Run(language, code, self.turn_token()));
            }
            other => {
                let _ = self.ops.send(Op::Request(other));
            }
        }
    }

    fn turn_token(&self) -> CancellationToken {
        let cancel = CancellationToken::new();
        self.cancel.lock().unwrap().push(cancel.clone());
        cancel
    }

    /// Interrupts the running turn, if any, and the turns of messages still queued.
    pub fn interrupt(&self) {
        for token in self.cancel.lock().unwrap().drain(..) {
            token.cancel();
        }
    }

    /// The next event; `None` once the conversation has shut down. Keep reading events
    /// while a turn runs: the worker waits for a slow reader rather than buffer a flood
    /// of output.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// The conversation's messages (after the running turn, if any).
    pub async fn messages(&self) -> Vec<Message> {
        let (tx, rx) = oneshot::channel();
        let _ = self.ops.send(Op::Messages(tx));
        rx.await.unwrap_or_default()
    }

    /// Copies a host file or folder into the sandbox's workspace folder `dest` (after
    /// the running turn, if any). Returns the bytes sent, or why it failed.
    pub async fn upload(&self, source: PathBuf, dest: String) -> Result<u64, String> {
        let (tx, rx) = oneshot::channel();
        let _ = self.ops.send(Op::Upload(source, dest, tx));
        rx.await
            .unwrap_or_else(|_| Err("the conversation has ended".into()))
    }

    /// Copies a workspace file or folder out into the host folder `dest`; archive
    /// entries that would land outside it are refused. Returns the paths written.
    pub async fn download(&self, source: String, dest: PathBuf) -> Result<Vec<PathBuf>, String> {
        let (tx, rx) = oneshot::channel();
        let _ = self.ops.send(Op::Download(source, dest, tx));
        rx.await
            .unwrap_or_else(|_| Err("the conversation has ended".into()))
    }

    /// Model, context and sandbox facts (after the running turn, if any).
    pub async fn info(&self) -> Option<ConversationInfo> {
        let (tx, rx) = oneshot::channel();
        let _ = self.ops.send(Op::Info(tx));
        rx.await.ok()
    }

    /// Ends the conversation: interrupts a running turn, then removes the sandbox.
    pub async fn shutdown(self) {
        self.interrupt();
        let Conversation {
            ops, events, task, ..
        } = self;
        drop(ops);
        // Unblock a worker waiting to emit.
        drop(events);
        let _ = task.await;
    }
}

/// The sandbox session of a conversation, opened in the background.
enum SessionSlot {
    Empty,
    Opening(JoinHandle<Result<Session, SandboxError>>),
    Ready(Box<Session>),
}

struct Worker {
    config: Config,
    provider: Arc<dyn Provider>,
    engine: Engine,
    history: History,
    session: SessionSlot,
    traits: ModelTraits,
    /// Function calling, until a server refuses tools.
    functions: bool,
    /// The names of the sandbox's languages, as offered to the model.
    languages: Vec<String>,
    auto_run: bool,
    usage: Usage,
    /// Messages trimming left out of the last request, to say so only when it changes.
    last_dropped: usize,
    events: mpsc::Sender<Event>,
    answers: mpsc::UnboundedReceiver<Answer>,
    /// The tokens of the running and queued turns (added by the handle as it sends each
    /// message, so an interrupt right after a message is not lost).
    cancel: Arc<Mutex<Vec<CancellationToken>>>,
}

impl Worker {
    async fn run(mut self, mut ops: mpsc::UnboundedReceiver<Op>) {
        self.open_session();
        while let Some(op) = ops.recv().await {
            match op {
                Op::Turn(text, cancel) => {
                    let end = self.turn(text, cancel.clone()).await;
                    cancel.cancel();
                    self.cancel.lock().unwrap().retain(|t| !t.is_cancelled());
                    self.emit(Event::TurnEnded(end)).await;
                }
                Op::Run(language, code, cancel) => {
                    let end = self.run_direct(language, code, cancel.clone()).await;
                    cancel.cancel();
                    self.cancel.lock().unwrap().retain(|t| !t.is_cancelled());
                    self.emit(Event::TurnEnded(end)).await;
                }
                Op::Request(Request::Reset) => {
                    self.close_session().await;
                    self.history.replace(Vec::new());
                    self.last_dropped = 0;
                    self.open_session();
                }
                Op::Request(Request::Undo) => {
                    let messages = self.history.messages();
                    if let Some(last_user) = messages.iter().rposition(|m| m.role == Role::User) {
                        self.history.truncate(last_user);
                    }
                }
                Op::Request(Request::Load(messages)) => self.history.replace(messages),
                Op::Request(Request::SetAutoRun(on)) => self.auto_run = on,
                // Acted on by the handle directly.
                Op::Request(
                    Request::Message(_)
                    | Request::Run { .. }
                    | Request::Interrupt
                    | Request::Confirm(_),
                ) => {}
                Op::Upload(source, dest, reply) => {
                    let result = match self.session().await {
                        Ok(session) => session
                            .upload(&source, &dest)
                            .await
                            .map_err(|e| e.to_string()),
                        Err(message) => Err(message),
                    };
                    let _ = reply.send(result);
                }
                Op::Download(source, dest, reply) => {
                    let result = match self.session().await {
                        Ok(session) => session
                            .download(&source, &dest)
                            .await
                            .map_err(|e| e.to_string()),
                        Err(message) => Err(message),
                    };
                    let _ = reply.send(result);
                }
                Op::Messages(reply) => {
                    let _ = reply.send(self.history.messages().to_vec());
                }
                Op::Info(reply) => {
                    let _ = reply.send(self.info());
                }
            }
        }
        self.close_session().await;
    }

    async fn emit(&self, event: Event) {
        // A front end that went away cannot confirm or watch: stop the turn.
        if self.events.send(event).await.is_err() {
            for token in self.cancel.lock().unwrap().iter() {
                token.cancel();
            }
        }
    }

    /// Starts opening the sandbox session in the background.
    fn open_session(&mut self) {
        if matches!(self.session, SessionSlot::Empty) {
            let engine = self.engine.clone();
            self.session = SessionSlot::Opening(tokio::spawn(async move { engine.open().await }));
        }
    }

    async fn close_session(&mut self) {
        let session = match std::mem::replace(&mut self.session, SessionSlot::Empty) {
            SessionSlot::Empty => None,
            SessionSlot::Opening(handle) => handle.await.ok().and_then(Result::ok),
            SessionSlot::Ready(session) => Some(*session),
        };
        if let Some(session) = session {
            let _ = session.close().await;
        }
    }

    fn info(&self) -> ConversationInfo {
        let prepared = prompt::prepare(&self.history, &self.shape(&self.system_message()));
        ConversationInfo {
            model: self.config.model.clone(),
            provider: self.provider.describe(),
            functions: self.functions,
            vision: self.traits.vision,
            context_window: self.traits.context_window,
            context_tokens: prepared.tokens,
            token_method: self.history.counter().method(),
            usage: self.usage,
            auto_run: self.auto_run,
            messages: self.history.messages().len(),
            session: match &self.session {
                SessionSlot::Ready(s) => Some(SessionInfo {
                    id: s.id().to_string(),
                    container_id: s.container_id().map(str::to_string),
                    image: s.image().map(str::to_string),
                    sandboxed: s.is_sandboxed(),
                }),
                _ => None,
            },
        }
    }

    fn system_message(&self) -> String {
        let mut system = match &self.config.system_message {
            Some(custom) => custom.clone(),
            None => {
                prompt::system_message(&self.config.sandbox, self.functions, self.config.max_output)
            }
        };
        if let Some(extra) = self
            .config
            .custom_instructions
            .as_deref()
            .filter(|s| !s.trim().is_empty())
        {
            system.push_str("\n\n");
            system.push_str(extra);
        }
        system
    }

    fn shape<'a>(&'a self, system: &'a str) -> prompt::Shape<'a> {
        prompt::Shape {
            model: &self.config.model,
            system,
            functions: self.functions,
            vision: self.traits.vision,
            context_window: self.traits.context_window,
            max_tokens: self.config.max_tokens,
            temperature: self.config.temperature,
            languages: self.language_names(),
        }
    }

    fn language_names(&self) -> &[String] {
        &self.languages
    }
}
