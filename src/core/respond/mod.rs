//! The conversation loop: the requests of [`crate::core::protocol`] in, its events out,
//! the same for every front end.
//!
//! [`Conversation::start`] spawns a worker that owns the conversation (its LMC messages,
//! its sandbox session, the model's provider) and carries out queued requests in order,
//! each event carrying the request's id. A user message starts a turn: the model's reply
//! streams out as LMC chunks; each block it asks to run is confirmed (unless auto-run),
//! run in the sandbox with its output streaming out, and fed back; the turn ends when
//! the model answers without code, the user declines or interrupts, an error stops it, or
//! the iteration cap is hit. The handle acts on interrupts and confirmation answers at
//! once (checking that an answer names the waiting confirmation) and answers them itself.
//! Many conversations may run in one process.
//!
//! Left to others: reading configuration (front ends build a [`Config`]), rendering
//! events and wording errors, saving conversations, building the sandbox image, what the
//! model sees of a block (`code_interpreter::BlockOutput`).

pub mod prompt;
mod sandbox;
mod turn;

pub use sandbox::SandboxChannel;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::code_interpreter::{Engine, SandboxError, Session};
use super::config::{Config, ModelTraits};
use super::llm::tokens::TokenCounter;
use super::llm::{LlmError, Provider, Usage};
use super::messages::{Message, Role};
use super::protocol::{
    check_id, Answer, Archive, ConversationInfo, Delivery, Error, ErrorKind, Event, EventMsg,
    Request, RequestId, SessionInfo, Submission, EVENT_QUEUE, REQUEST_QUEUE,
};
use prompt::History;

/// The work a request asks of the worker, in the order requests arrive. Interrupts and
/// confirmation answers are not work: the handle acts on them at once.
enum Work {
    Turn(String),
    Run { language: String, code: String },
    Reset,
    Undo,
    Load(Vec<Message>),
    SetAutoRun(bool),
    Info,
    Messages,
    Upload { dest: String, archive: Archive },
    Download { source: String, delivery: Delivery },
}

/// A request waiting for the worker, and the token that interrupts it.
struct Queued {
    id: RequestId,
    work: Work,
    cancel: CancellationToken,
}

/// The answer the handle passes to the worker: the confirmation's id and the answer. A
/// single slot (a newer answer replaces one not taken yet): answers never pile up.
type AnswerSlot = Option<(String, Answer)>;

/// A running conversation: requests in ([`Conversation::send`], [`Conversation::submit`]),
/// events out ([`Conversation::next_event`]), as `docs/messages.md` describes.
///
/// Back-pressure: at most [`REQUEST_QUEUE`] requests wait for the worker (`send` waits
/// for room past that) and at most [`EVENT_QUEUE`] events wait for the front end (the
/// worker waits for a slow reader rather than buffer a flood of output). So a front end
/// keeps reading events while it sends.
///
/// # Examples
///
/// ```no_run
/// use oi::core::code_interpreter::Engine;
/// use oi::core::config::Config;
/// use oi::core::llm::Endpoint;
/// use oi::core::protocol::{Answer, EventMsg, Request};
/// use oi::core::respond::Conversation;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let mut config = Config::new("gpt-4o-mini", Endpoint::openai("https://api.openai.com/v1", Some("sk-...".into())));
/// config.auto_run = false;
/// let engine = Engine::connect(config.sandbox.clone()).await?;
/// let mut conversation = Conversation::start(config, engine)?;
/// conversation.send(Request::message("What is 6*7? Compute it in Python.")).await;
/// let mut transcript = String::new();
/// while let Some(event) = conversation.next_event().await {
///     match event.msg {
///         EventMsg::Chunk(chunk) => transcript.push_str(&chunk.content.unwrap_or_default()),
///         EventMsg::Confirmation(c) => {
///             conversation.send(Request::Confirm { confirmation: c.id, answer: Answer::Run }).await;
///         }
///         EventMsg::TurnEnded(_) => break,
///         _ => {}
///     }
/// }
/// println!("{} messages", conversation.messages().await?.len());
/// conversation.shutdown().await;
/// # Ok(()) }
/// ```
pub struct Conversation {
    requests: mpsc::Sender<Queued>,
    answers: watch::Sender<AnswerSlot>,
    /// The handle's own answers (to interrupts and confirmations), read before the
    /// worker's events.
    acks_tx: mpsc::Sender<Event>,
    acks: mpsc::Receiver<Event>,
    events: mpsc::Receiver<Event>,
    /// Events of other requests read while [`Conversation::call`] waited for its answer,
    /// returned first by `next_event`. Bounded: `call` refuses while a turn is open, so
    /// only single answers to requests already queued can land here.
    stash: VecDeque<Event>,
    cancel: Arc<Mutex<Vec<CancellationToken>>>,
    /// The confirmation the front end was shown and has not answered.
    waiting: Mutex<Option<String>>,
    /// Turns sent whose `turn_end` the front end has not read yet.
    open_turns: AtomicUsize,
    next_id: AtomicU64,
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
        let (requests_tx, requests_rx) = mpsc::channel(REQUEST_QUEUE);
        let (answers_tx, answers_rx) = watch::channel(None);
        let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
        let (acks_tx, acks_rx) = mpsc::channel(REQUEST_QUEUE);
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
            current: RequestId::new(),
            confirmations: 0,
            config,
        };
        let task = tokio::spawn(worker.run(requests_rx));
        Conversation {
            requests: requests_tx,
            answers: answers_tx,
            acks_tx,
            acks: acks_rx,
            events: events_rx,
            stash: VecDeque::new(),
            cancel,
            waiting: Mutex::new(None),
            open_turns: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            task,
        }
    }

    /// Sends a request with an id of its own (`"1"`, `"2"`, …), returned. Waits while
    /// [`REQUEST_QUEUE`] requests are queued. Requests are carried out in order, after
    /// the running turn; interrupts and confirmation answers act on it at once. Once
    /// the conversation has ended, requests are dropped (`next_event` returns `None`).
    pub async fn send(&self, request: Request) -> RequestId {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed).to_string();
        let _ = self
            .submit(Submission {
                id: id.clone(),
                request,
            })
            .await;
        id
    }

    /// Sends a request under the id the front end chose (at most [`MAX_ID_LEN`]
    /// bytes). An error only for an id that is too long or a conversation that has
    /// ended; whatever else goes wrong is told as an event carrying the id.
    pub async fn submit(&self, submission: Submission) -> Result<(), Error> {
        let Submission { id, request } = submission;
        check_id(&id)?;
        let work = match request {
            Request::Interrupt => {
                self.interrupt();
                return self.ack(Event::new(id, EventMsg::Done)).await;
            }
            Request::Confirm {
                confirmation,
                answer,
            } => return self.confirm(id, confirmation, answer).await,
            Request::Message { content } => Work::Turn(content),
            Request::Run { language, code } => Work::Run { language, code },
            Request::Reset => Work::Reset,
            Request::Undo => Work::Undo,
            Request::Load { messages } => Work::Load(messages),
            Request::SetAutoRun { on } => Work::SetAutoRun(on),
            Request::Info => Work::Info,
            Request::Messages => Work::Messages,
            Request::Upload { dest, archive } => Work::Upload { dest, archive },
            Request::Download { source, delivery } => Work::Download { source, delivery },
        };
        let turn = matches!(work, Work::Turn(_) | Work::Run { .. });
        // A turn's token exists from now, so an interrupt sent right after the request
        // (before the worker picks it up) is not lost.
        let cancel = if turn {
            self.open_turns.fetch_add(1, Ordering::Relaxed);
            self.turn_token()
        } else {
            CancellationToken::new()
        };
        self.requests
            .send(Queued { id, work, cancel })
            .await
            .map_err(|_| Error::closed())
    }

    /// Passes an answer to the worker if it names the waiting confirmation.
    async fn confirm(
        &self,
        id: RequestId,
        confirmation: String,
        answer: Answer,
    ) -> Result<(), Error> {
        let waiting = {
            let mut waiting = self.waiting.lock().unwrap();
            match waiting.as_deref() {
                Some(w) if w == confirmation => waiting.take(),
                _ => None,
            }
        };
        let msg = match waiting {
            Some(confirmation) => {
                self.answers.send_replace(Some((confirmation, answer)));
                EventMsg::Done
            }
            None => EventMsg::Error(Error::new(
                ErrorKind::UnknownConfirmation,
                format!("no confirmation `{confirmation}` is waiting for an answer"),
            )),
        };
        self.ack(Event::new(id, msg)).await
    }

    async fn ack(&self, event: Event) -> Result<(), Error> {
        self.acks_tx.send(event).await.map_err(|_| Error::closed())
    }

    fn turn_token(&self) -> CancellationToken {
        let cancel = CancellationToken::new();
        self.cancel.lock().unwrap().push(cancel.clone());
        cancel
    }

    /// Interrupts the running turn, if any, and the turns still queued (as
    /// [`Request::Interrupt`], without its answer).
    pub fn interrupt(&self) {
        for token in self.cancel.lock().unwrap().drain(..) {
            token.cancel();
        }
    }

    /// The next event; `None` once the conversation has shut down. Keep reading events
    /// while a turn runs: the worker waits for a slow reader rather than buffer a flood
    /// of output.
    pub async fn next_event(&mut self) -> Option<Event> {
        let event = match self.stash.pop_front() {
            Some(event) => event,
            None => self.receive().await?,
        };
        match &event.msg {
            EventMsg::Confirmation(c) => *self.waiting.lock().unwrap() = Some(c.id.clone()),
            EventMsg::TurnEnded(_) => {
                *self.waiting.lock().unwrap() = None;
                let _ = self
                    .open_turns
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
            }
            _ => {}
        }
        Some(event)
    }

    /// The handle's own answers first, then the worker's events.
    async fn receive(&mut self) -> Option<Event> {
        tokio::select! {
            biased;
            Some(event) = self.acks.recv() => Some(event),
            event = self.events.recv() => event,
        }
    }

    /// Sends a request that is not a turn and waits for its answer: the event carrying
    /// its id (an error event comes back as `Err`). Events of other requests that
    /// arrive meanwhile are kept for `next_event`. Refused (`busy`) while a turn is open
    /// (sent, its `turn_end` not read): read that turn's events first.
    pub async fn call(&mut self, request: Request) -> Result<EventMsg, Error> {
        if request.is_turn() {
            return Err(Error::new(
                ErrorKind::InvalidRequest,
                "a turn streams events: send it and read them with next_event",
            ));
        }
        if self.open_turns.load(Ordering::Relaxed) > 0 {
            return Err(Error::new(
                ErrorKind::Busy,
                "a turn is running: read its events to its end first",
            ));
        }
        let id = self.send(request).await;
        loop {
            let event = self.receive().await.ok_or_else(Error::closed)?;
            if event.id == id {
                return match event.msg {
                    EventMsg::Error(error) => Err(error),
                    msg => Ok(msg),
                };
            }
            self.stash.push_back(event);
        }
    }

    /// Model, context and sandbox facts (see [`Conversation::call`]).
    pub async fn info(&mut self) -> Result<ConversationInfo, Error> {
        match self.call(Request::Info).await? {
            EventMsg::Info(info) => Ok(*info),
            other => Err(unexpected(other)),
        }
    }

    /// The conversation's messages (see [`Conversation::call`]).
    pub async fn messages(&mut self) -> Result<Vec<Message>, Error> {
        match self.call(Request::Messages).await? {
            EventMsg::Messages(messages) => Ok(messages),
            other => Err(unexpected(other)),
        }
    }

    /// Copies a tar archive into the sandbox's workspace folder `dest`; returns its
    /// size in bytes (see [`Conversation::call`]).
    pub async fn upload(&mut self, dest: &str, archive: Archive) -> Result<u64, Error> {
        let request = Request::Upload {
            dest: dest.into(),
            archive,
        };
        match self.call(request).await? {
            EventMsg::Uploaded { bytes } => Ok(bytes),
            other => Err(unexpected(other)),
        }
    }

    /// A workspace file or folder as a tar archive (see [`Conversation::call`]).
    pub async fn download(&mut self, source: &str, delivery: Delivery) -> Result<Archive, Error> {
        let request = Request::Download {
            source: source.into(),
            delivery,
        };
        match self.call(request).await? {
            EventMsg::Downloaded(archive) => Ok(archive),
            other => Err(unexpected(other)),
        }
    }

    /// Ends the conversation: interrupts a running turn, then removes the sandbox.
    pub async fn shutdown(self) {
        self.interrupt();
        let Conversation {
            requests,
            events,
            task,
            ..
        } = self;
        drop(requests);
        // Unblock a worker waiting to emit.
        drop(events);
        let _ = task.await;
    }
}

fn unexpected(msg: EventMsg) -> Error {
    Error::new(
        ErrorKind::InvalidRequest,
        format!("an unexpected answer: {msg:?}"),
    )
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
    answers: watch::Receiver<AnswerSlot>,
    /// The tokens of the running and queued turns (added by the handle as it sends each
    /// message, so an interrupt right after a message is not lost).
    cancel: Arc<Mutex<Vec<CancellationToken>>>,
    /// The id of the request being carried out: every event carries it.
    current: RequestId,
    /// Confirmations asked so far (their ids are `c1`, `c2`, …).
    confirmations: u64,
}

impl Worker {
    async fn run(mut self, mut requests: mpsc::Receiver<Queued>) {
        self.open_session();
        while let Some(Queued { id, work, cancel }) = requests.recv().await {
            self.current = id;
            self.carry_out(work, cancel).await;
        }
        self.close_session().await;
    }

    /// Carries out one request and emits its answer (a turn: its events, then its end).
    async fn carry_out(&mut self, work: Work, cancel: CancellationToken) {
        let answer = match work {
            Work::Turn(text) => {
                let end = self.turn(text, cancel.clone()).await;
                self.end_turn(cancel);
                EventMsg::TurnEnded(end)
            }
            Work::Run { language, code } => {
                let end = self.run_direct(language, code, cancel.clone()).await;
                self.end_turn(cancel);
                EventMsg::TurnEnded(end)
            }
            Work::Reset => {
                self.close_session().await;
                self.history.replace(Vec::new());
                self.last_dropped = 0;
                self.open_session();
                EventMsg::Done
            }
            Work::Undo => {
                let messages = self.history.messages();
                if let Some(last_user) = messages.iter().rposition(|m| m.role == Role::User) {
                    self.history.truncate(last_user);
                }
                EventMsg::Done
            }
            Work::Load(messages) => {
                self.history.replace(messages);
                EventMsg::Done
            }
            Work::SetAutoRun(on) => {
                self.auto_run = on;
                EventMsg::Done
            }
            Work::Info => EventMsg::Info(Box::new(self.info())),
            Work::Messages => EventMsg::Messages(self.history.messages().to_vec()),
            Work::Upload { dest, archive } => match self.upload(&dest, archive).await {
                Ok(bytes) => EventMsg::Uploaded { bytes },
                Err(error) => EventMsg::Error(error),
            },
            Work::Download { source, delivery } => match self.download(&source, delivery).await {
                Ok(archive) => EventMsg::Downloaded(archive),
                Err(error) => EventMsg::Error(error),
            },
        };
        self.emit(answer).await;
    }

    /// The turn is over: its token is spent.
    fn end_turn(&self, cancel: CancellationToken) {
        cancel.cancel();
        self.cancel.lock().unwrap().retain(|t| !t.is_cancelled());
    }

    async fn upload(&mut self, dest: &str, archive: Archive) -> Result<u64, Error> {
        let file = tokio::task::spawn_blocking(move || archive.into_file())
            .await
            .map_err(|e| Error::new(ErrorKind::Files, e.to_string()))??;
        let session = self.session().await?;
        session
            .put_archive(dest, file)
            .await
            .map_err(|e| Error::sandbox("", &e))
    }

    async fn download(&mut self, source: &str, delivery: Delivery) -> Result<Archive, Error> {
        let session = self.session().await?;
        let limit = match delivery {
            Delivery::Base64 => super::protocol::MAX_INLINE_ARCHIVE,
            Delivery::File => session.copy_limit(),
        };
        let file = session
            .get_archive(source, limit)
            .await
            .map_err(|e| Error::sandbox("", &e))?;
        tokio::task::spawn_blocking(move || Archive::deliver(file, delivery))
            .await
            .map_err(|e| Error::new(ErrorKind::Files, e.to_string()))?
    }

    async fn emit(&self, msg: EventMsg) {
        let event = Event::new(self.current.clone(), msg);
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
            token_method: self.history.counter().method().to_string(),
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
