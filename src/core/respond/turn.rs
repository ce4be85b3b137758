//! One turn: ask the model, stream its reply, run the blocks it asks for, feed the
//! output back, until it answers without code.
//!
//! Everything here honours the turn's cancellation token (the user's interrupt) with the
//! cancel branch first, and leaves the conversation consistent whatever stops it: partial
//! prose is kept, a block's output is recorded even when interrupted, a failed request
//! records nothing of its own.

use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::prompt::{self, DECLINED};
use super::{SessionSlot, Worker};
use crate::core::code_interpreter::{
    BlockOutput, BlockResult, ExecRequest, ExecStatus, Execution, Session, Shown,
};
use crate::core::llm::repair::{self, ArgumentScanner, CodeRequest, FenceParser, TextPiece};
use crate::core::llm::{self, EventStream, FinishReason, LlmError, StreamEvent, MAX_TOOL_CALLS};
use crate::core::messages::{Chunk, Message, MessageType, Role, FORMAT_ACTIVE_LINE, FORMAT_OUTPUT};
use crate::core::protocol::{
    Answer, Confirmation, Error, ErrorKind, EventMsg, Facts, Setting, TurnEnd,
};

/// Why a step stopped the turn early.
enum Stop {
    Interrupted,
    Model(LlmError),
    /// The sandbox could not run code, or a block the user sent could not run.
    Sandbox(Error),
}

/// A block the model asked for, before it is checked.
struct Block {
    request: CodeRequest,
    /// Its chunks have already been streamed (start and content; end too if `closed`).
    streamed_as: Option<String>,
    closed: bool,
    /// Why it cannot run (an unreadable call), to tell the model instead.
    problem: Option<String>,
}

/// The blocks of one reply.
struct Reply {
    blocks: Vec<Block>,
}

/// How many characters of a reply decide whether it may be a tool call written as text.
const HOLD_DECISION: usize = 24;

impl Worker {
    pub(super) async fn turn(&mut self, text: String, cancel: CancellationToken) -> TurnEnd {
        let user = Message::user(text);
        self.history.push(user.clone());
        self.emit(EventMsg::Message(user)).await;

        for _ in 0..self.config.max_iterations {
            let reply = match self.model_reply(&cancel).await {
                Ok(reply) => reply,
                Err(stop) => return self.stopped(stop).await,
            };
            if reply.blocks.is_empty() {
                return TurnEnd::Finished;
            }
            for block in reply.blocks {
                match self.run_block(block, &cancel).await {
                    Ok(true) => {}
                    Ok(false) => return TurnEnd::Declined,
                    Err(stop) => return self.stopped(stop).await,
                }
            }
        }
        let message = format!(
            "Stopped after {} model replies in one turn without a final answer (the iteration \
             cap, max_iterations). Send a message such as \"continue\" to let it go on.",
            self.config.max_iterations
        );
        let facts = Facts {
            setting: Some(Setting::MaxIterations),
            limit: Some(self.config.max_iterations as u64),
            ..Facts::default()
        };
        self.emit(EventMsg::Error(
            Error::new(ErrorKind::IterationCap, message).with_facts(facts),
        ))
        .await;
        TurnEnd::IterationCap
    }

    async fn stopped(&mut self, stop: Stop) -> TurnEnd {
        match stop {
            Stop::Interrupted => TurnEnd::Interrupted,
            Stop::Model(error) => {
                self.emit(EventMsg::Error(Error::from(&error))).await;
                TurnEnd::ModelError
            }
            Stop::Sandbox(error) => {
                self.emit(EventMsg::Error(error)).await;
                TurnEnd::SandboxError
            }
        }
    }

    /// Asks the model, retrying passing failures while nothing has been shown.
    async fn model_reply(&mut self, cancel: &CancellationToken) -> Result<Reply, Stop> {
        let mut retries = 0;
        loop {
            let system = self.system_message();
            let prepared = prompt::prepare(&self.history, &self.shape(&system));
            if prepared.dropped != self.last_dropped {
                self.last_dropped = prepared.dropped;
                if prepared.dropped > 0 {
                    self.emit(EventMsg::Notice(format!(
                        "The conversation no longer fits the model's context window ({} tokens): \
                         the oldest {} messages are not sent.",
                        self.traits.context_window, prepared.dropped
                    )))
                    .await;
                }
            }
            let started = tokio::select! {
                biased;
                _ = cancel.cancelled() => return Err(Stop::Interrupted),
                r = self.provider.stream(prepared.request) => r,
            };
            let error = match started {
                Ok(stream) => match self.read_reply(stream, cancel).await {
                    Ok(reply) => return Ok(reply),
                    Err(ReadFailure { stop, shown: true }) => return Err(stop),
                    Err(ReadFailure {
                        stop: Stop::Model(e),
                        shown: false,
                    }) => e,
                    Err(ReadFailure { stop, .. }) => return Err(stop),
                },
                Err(e) => e,
            };
            if matches!(error, LlmError::ToolsUnsupported { .. }) && self.functions {
                self.functions = false;
                self.emit(EventMsg::Notice(format!(
                    "{error}. Switched to text mode: the model writes code in fenced blocks."
                )))
                .await;
                continue;
            }
            if !error.is_retryable() || retries >= self.config.retry.max_retries {
                return Err(Stop::Model(error));
            }
            retries += 1;
            let wait = self.backoff(retries, &error);
            self.emit(EventMsg::Notice(format!(
                "{}; retrying in {:.1} s (retry {retries} of {})",
                first_line(&error.to_string()),
                wait.as_secs_f64(),
                self.config.retry.max_retries
            )))
            .await;
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Err(Stop::Interrupted),
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    fn backoff(&self, retry: u32, error: &LlmError) -> Duration {
        let policy = self.config.retry;
        let doubled = policy
            .initial_backoff
            .saturating_mul(2u32.saturating_pow(retry - 1))
            .min(policy.max_backoff);
        match error {
            LlmError::RateLimited {
                retry_after: Some(after),
                ..
            } => (*after).min(policy.max_retry_after),
            _ => doubled,
        }
    }

    /// Streams one reply to the front end and records its prose. Code blocks are
    /// returned, not recorded: they are recorded once confirmed.
    async fn read_reply(
        &mut self,
        mut stream: EventStream,
        cancel: &CancellationToken,
    ) -> Result<Reply, ReadFailure> {
        let mut r = ReplyReader::new(!self.functions, self.config.max_reply_bytes);
        let mut cut_short = false;
        let outcome = loop {
            let next = tokio::select! {
                biased;
                _ = cancel.cancelled() => break Err(Stop::Interrupted),
                next = stream.next() => next,
            };
            let event = match next {
                None => {
                    break Err(Stop::Model(LlmError::Truncated {
                        detail: "the stream ended without a finish".into(),
                    }))
                }
                Some(Err(e)) => break Err(Stop::Model(e)),
                Some(Ok(event)) => event,
            };
            if let Err(e) = r.admit(&event) {
                break Err(Stop::Model(e));
            }
            match event {
                StreamEvent::TextDelta(text) => {
                    for event in r.text(&text, self) {
                        self.emit(event).await;
                    }
                    if r.text_block_done {
                        // Text mode runs the first block; what follows would be invented output.
                        break Ok(());
                    }
                }
                StreamEvent::ToolCallDelta {
                    index,
                    id: _,
                    name,
                    arguments,
                } => match r.tool_delta(index, name, &arguments, self) {
                    Ok(events) => {
                        for event in events {
                            self.emit(event).await;
                        }
                    }
                    Err(e) => break Err(Stop::Model(e)),
                },
                StreamEvent::Finished { usage, reason } => {
                    if let Some(u) = usage {
                        // Counts from the server: saturating, never a panic.
                        self.usage.input_tokens =
                            self.usage.input_tokens.saturating_add(u.input_tokens);
                        self.usage.output_tokens =
                            self.usage.output_tokens.saturating_add(u.output_tokens);
                    }
                    cut_short = reason == FinishReason::Length;
                    break Ok(());
                }
            }
        };
        drop(stream);
        let complete = outcome.is_ok();
        for event in r.finish(complete, self) {
            self.emit(event).await;
        }
        if let Some(prose) = r.prose_message() {
            self.history.push(prose.clone());
            self.emit(EventMsg::Message(prose)).await;
        }
        if cut_short {
            let budget = self.config.max_tokens.map_or_else(
                || "the server's limit".to_string(),
                |t| format!("{t} tokens"),
            );
            self.emit(EventMsg::Notice(format!(
                "The model's reply was cut at its length limit ({budget}, max_tokens)."
            )))
            .await;
        }
        match outcome {
            Ok(()) => Ok(Reply { blocks: r.blocks }),
            Err(stop) => Err(ReadFailure {
                stop,
                shown: r.shown,
            }),
        }
    }

    /// Checks, confirms and runs one block. `Ok(false)`: the user declined.
    async fn run_block(&mut self, block: Block, cancel: &CancellationToken) -> Result<bool, Stop> {
        let (language, problem) = match &block.problem {
            Some(problem) => (
                block
                    .request
                    .language
                    .clone()
                    .unwrap_or_else(|| "unknown".into()),
                Some(problem.clone()),
            ),
            None => self.check(&block.request),
        };
        let format = block
            .streamed_as
            .clone()
            .unwrap_or_else(|| language.clone());
        if block.streamed_as.is_none() {
            self.emit(EventMsg::Chunk(Chunk::start(
                Role::Assistant,
                MessageType::Code,
                Some(format.clone()),
            )))
            .await;
            self.emit(EventMsg::Chunk(Chunk::content(
                Role::Assistant,
                MessageType::Code,
                Some(format.clone()),
                block.request.code.clone(),
            )))
            .await;
        }
        if !block.closed {
            self.emit(EventMsg::Chunk(Chunk::end(
                Role::Assistant,
                MessageType::Code,
                Some(format),
            )))
            .await;
        }
        let mut code = block.request.code.clone();
        if let Some(problem) = problem {
            self.record(Message::code(language, code)).await;
            self.console(problem).await;
            return Ok(true);
        }
        if !self.auto_run {
            match self.confirm(&language, &code, cancel).await? {
                Answer::Run => {}
                Answer::Always => self.auto_run = true,
                Answer::Edit(edited) => code = edited,
                Answer::Decline => {
                    self.record(Message::code(language, code)).await;
                    self.console(DECLINED.into()).await;
                    return Ok(false);
                }
            }
        }
        self.record(Message::code(language.clone(), code.clone()))
            .await;
        let result = match self.execute(language, code, cancel).await {
            Ok(result) => result,
            Err(stop) => {
                // The model is told why, so that the conversation stays consistent.
                let why = match &stop {
                    Stop::Sandbox(error) => first_line(&error.message).to_string(),
                    _ => "interrupted".into(),
                };
                self.console(format!("(not run: {why})")).await;
                return Err(stop);
            }
        };
        let interrupted = result.outcome.status == ExecStatus::Interrupted;
        self.record_result(result).await;
        if interrupted && cancel.is_cancelled() {
            return Err(Stop::Interrupted);
        }
        Ok(true)
    }

    /// Adds what the model sees of a block to the conversation: its images, then its
    /// console output.
    async fn record_result(&mut self, result: BlockResult) {
        for image in result.images {
            self.record(Message::image(&image.format, image.base64))
                .await;
        }
        self.record(Message::console(result.console)).await;
    }

    /// The language to run and, if the block cannot run, what to tell the model.
    fn check(&self, request: &CodeRequest) -> (String, Option<String>) {
        let languages = &self.config.sandbox.languages;
        let default = self
            .languages
            .first()
            .cloned()
            .unwrap_or_else(|| "python".into());
        let language = match request
            .language
            .as_deref()
            .map(str::trim)
            .filter(|l| !l.is_empty())
        {
            None => default,
            Some(name) => match languages.resolve(name) {
                Ok(l) => l.name.clone(),
                Err(_) => {
                    return (
                        name.to_string(),
                        Some(format!(
                        "Nothing ran: `{name}` is not a language available here. Available: {}.",
                        self.languages.join(", ")
                    )),
                    )
                }
            },
        };
        if request.code.trim().is_empty() {
            return (
                language,
                Some("Nothing ran: the code block was empty.".into()),
            );
        }
        (language, None)
    }

    async fn confirm(
        &mut self,
        language: &str,
        code: &str,
        cancel: &CancellationToken,
    ) -> Result<Answer, Stop> {
        self.confirmations += 1;
        let id = format!("c{}", self.confirmations);
        // An answer in the slot now was for an earlier confirmation.
        self.answers.borrow_and_update();
        self.emit(EventMsg::Confirmation(Confirmation {
            id: id.clone(),
            language: language.into(),
            code: code.into(),
        }))
        .await;
        loop {
            let changed = tokio::select! {
                biased;
                _ = cancel.cancelled() => return Err(Stop::Interrupted),
                changed = self.answers.changed() => changed,
            };
            if changed.is_err() {
                return Err(Stop::Interrupted);
            }
            if let Some((answered, answer)) = self.answers.borrow_and_update().clone() {
                if answered == id {
                    return Ok(answer);
                }
            }
        }
    }

    async fn record(&mut self, message: Message) {
        self.history.push(message.clone());
        self.emit(EventMsg::Message(message)).await;
    }

    /// Records computer output the loop wrote itself (not from running code).
    async fn console(&mut self, text: String) {
        for chunk in Message::console(text.clone()).chunks() {
            self.emit(EventMsg::Chunk(chunk)).await;
        }
        self.record(Message::console(text)).await;
    }

    /// Runs a block the user typed (`%%` in the terminal): its output streams out as
    /// console chunks; the conversation does not record it.
    pub(super) async fn run_direct(
        &mut self,
        language: String,
        code: String,
        cancel: CancellationToken,
    ) -> TurnEnd {
        let (language, problem) = self.check(&CodeRequest {
            language: Some(language),
            code: code.clone(),
        });
        if let Some(problem) = problem {
            let facts = Facts {
                setting: Some(Setting::Languages),
                available: self.languages.clone(),
                ..Facts::default()
            };
            let error = Error::new(ErrorKind::InvalidRequest, problem).with_facts(facts);
            return self.stopped(Stop::Sandbox(error)).await;
        }
        match self.execute(language, code, &cancel).await {
            Ok(result)
                if result.outcome.status == ExecStatus::Interrupted && cancel.is_cancelled() =>
            {
                TurnEnd::Interrupted
            }
            Ok(_) => TurnEnd::Finished,
            Err(stop) => self.stopped(stop).await,
        }
    }

    /// Runs a block in the sandbox, streaming what it shows; returns what the model
    /// sees of it. Records nothing.
    async fn execute(
        &mut self,
        language: String,
        code: String,
        cancel: &CancellationToken,
    ) -> Result<BlockResult, Stop> {
        let execution = self.start_block(language, code, cancel).await?;
        Ok(self.stream_block(execution).await)
    }

    async fn start_block(
        &mut self,
        language: String,
        code: String,
        cancel: &CancellationToken,
    ) -> Result<Execution, Stop> {
        let session = self.ready_session(cancel).await?;
        session
            .execute(ExecRequest::new(&language, code), cancel)
            .await
            .map_err(|e| Stop::Sandbox(Error::sandbox("The sandbox could not run the block", &e)))
    }

    /// Streams a block's output, images and active lines as chunks; returns its result.
    async fn stream_block(&mut self, mut execution: Execution) -> BlockResult {
        let mut output = BlockOutput::new(self.config.max_output);
        let mut console = ConsoleStream::default();
        while let Some(event) = execution.next_event().await {
            match output.push(event) {
                Some(Shown::Output(text)) => self.console_piece(&mut console, text).await,
                Some(Shown::Image(image)) => {
                    for chunk in Message::image(&image.format, image.base64).chunks() {
                        self.emit(EventMsg::Chunk(chunk)).await;
                    }
                }
                Some(Shown::ActiveLine(line)) => {
                    let chunk = Chunk::content(
                        Role::Computer,
                        MessageType::Console,
                        Some(FORMAT_ACTIVE_LINE.into()),
                        line.to_string(),
                    );
                    self.emit(EventMsg::Chunk(chunk)).await;
                }
                None => {}
            }
        }
        let result = output.finish();
        if let Some(note) = &result.note {
            self.console_piece(&mut console, note.clone()).await;
        }
        if console.started {
            self.emit(EventMsg::Chunk(console_chunk(None, false, true)))
                .await;
        }
        result
    }

    /// Streams a piece of a block's console output, opening the message on the first.
    async fn console_piece(&self, console: &mut ConsoleStream, text: String) {
        if !console.started {
            console.started = true;
            self.emit(EventMsg::Chunk(console_chunk(None, true, false)))
                .await;
        }
        self.emit(EventMsg::Chunk(console_chunk(Some(text), false, false)))
            .await;
    }

    /// The open session for a request outside a turn (copying files).
    pub(super) async fn session(&mut self) -> Result<&mut Session, Error> {
        match self.ready_session(&CancellationToken::new()).await {
            Ok(session) => Ok(session),
            Err(Stop::Sandbox(error)) => Err(error),
            Err(_) => Err(Error::new(
                ErrorKind::Sandbox,
                "the sandbox is not available",
            )),
        }
    }

    /// The open session, waiting for it to finish opening (or opening it again after a
    /// failure).
    async fn ready_session(&mut self, cancel: &CancellationToken) -> Result<&mut Session, Stop> {
        if matches!(self.session, SessionSlot::Empty) {
            self.open_session();
        }
        if let SessionSlot::Opening(handle) = &mut self.session {
            let opened = tokio::select! {
                biased;
                _ = cancel.cancelled() => return Err(Stop::Interrupted),
                r = handle => r,
            };
            let context = "The sandbox could not start";
            match opened {
                Ok(Ok(session)) => self.session = SessionSlot::Ready(Box::new(session)),
                Ok(Err(e)) => {
                    self.session = SessionSlot::Empty;
                    return Err(Stop::Sandbox(Error::sandbox(context, &e)));
                }
                Err(e) => {
                    self.session = SessionSlot::Empty;
                    return Err(Stop::Sandbox(Error::new(
                        ErrorKind::Sandbox,
                        format!("{context}: {e}"),
                    )));
                }
            }
        }
        match &mut self.session {
            SessionSlot::Ready(session) => Ok(session),
            _ => Err(Stop::Sandbox(Error::new(
                ErrorKind::Sandbox,
                "The sandbox is not open",
            ))),
        }
    }
}

/// Whether a block's console message has been opened (its start chunk sent).
#[derive(Default)]
struct ConsoleStream {
    started: bool,
}

struct ReadFailure {
    stop: Stop,
    /// Whether the front end was shown any of the reply (then it is not retried).
    shown: bool,
}

fn console_chunk(content: Option<String>, start: bool, end: bool) -> Chunk {
    Chunk {
        role: Role::Computer,
        kind: MessageType::Console,
        format: Some(FORMAT_OUTPUT.into()),
        content,
        start,
        end,
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or(text)
}

/// The state of one streaming reply: prose (possibly held back in case it is a tool
/// call written as text), text-mode fences, and tool calls being assembled. Bounded:
/// the reply's size by `Config::max_reply_bytes`, its calls by [`MAX_TOOL_CALLS`].
struct ReplyReader {
    text_mode: bool,
    /// Bytes of text, tool names and arguments received, and the most allowed.
    received: usize,
    limit: usize,
    fence: FenceParser,
    /// Prose shown so far.
    prose: String,
    prose_open: bool,
    /// Prose not shown yet: it may turn out to be a tool call.
    held: String,
    /// Bytes of `held`'s leading whitespace already skipped (each looked at once).
    held_lead: usize,
    hold: Option<bool>,
    /// Text mode: the block being streamed.
    text_block: Option<(String, String, Option<String>)>,
    text_block_done: bool,
    calls: Vec<Call>,
    blocks: Vec<Block>,
    shown: bool,
}

#[derive(Default)]
struct Call {
    /// The index the provider gave it: a key, never a position.
    key: usize,
    name: String,
    arguments: String,
    /// Reads the code out of the arguments as they stream (the first call only).
    scanner: ArgumentScanner,
    /// The format its code chunks were started with, if streaming live.
    streamed_as: Option<String>,
    streamed_len: usize,
}

impl ReplyReader {
    fn new(text_mode: bool, limit: usize) -> Self {
        ReplyReader {
            text_mode,
            received: 0,
            limit,
            fence: FenceParser::default(),
            prose: String::new(),
            prose_open: false,
            held: String::new(),
            held_lead: 0,
            hold: None,
            text_block: None,
            text_block_done: false,
            calls: Vec::new(),
            blocks: Vec::new(),
            shown: false,
        }
    }

    /// Counts an event against the reply's size limit, before it is used: past the
    /// limit the reply is stopped (what was shown is kept by [`ReplyReader::finish`]).
    fn admit(&mut self, event: &StreamEvent) -> Result<(), LlmError> {
        let bytes = match event {
            StreamEvent::TextDelta(text) => text.len(),
            StreamEvent::ToolCallDelta {
                name, arguments, ..
            } => arguments.len() + name.as_ref().map_or(0, String::len),
            StreamEvent::Finished { .. } => 0,
        };
        self.received = self.received.saturating_add(bytes);
        if self.received > self.limit {
            return Err(LlmError::ReplyTooLarge {
                what: "the model's reply",
                limit: self.limit as u64,
            });
        }
        Ok(())
    }

    fn text(&mut self, delta: &str, worker: &Worker) -> Vec<EventMsg> {
        let mut out = Vec::new();
        if !self.text_mode {
            self.prose_piece(delta, &mut out);
            return out;
        }
        for piece in self.fence.feed(delta) {
            self.fence_piece(piece, worker, &mut out);
        }
        out
    }

    fn fence_piece(&mut self, piece: TextPiece, worker: &Worker, out: &mut Vec<EventMsg>) {
        if self.text_block_done {
            // Text mode runs the first block; what follows would be invented output.
            return;
        }
        match piece {
            TextPiece::Prose(text) => self.prose_piece(&text, out),
            TextPiece::CodeStart { language } => {
                self.release_held(out);
                self.close_prose(out);
                let format = worker
                    .config
                    .sandbox
                    .languages
                    .resolve(&language)
                    .map(|l| l.name.clone())
                    .unwrap_or_else(|_| {
                        if language.is_empty() {
                            worker.languages.first().cloned().unwrap_or_default()
                        } else {
                            language.clone()
                        }
                    });
                out.push(EventMsg::Chunk(Chunk::start(
                    Role::Assistant,
                    MessageType::Code,
                    Some(format.clone()),
                )));
                self.shown = true;
                let raw = (!language.is_empty()).then_some(language);
                self.text_block = Some((format, String::new(), raw));
            }
            TextPiece::Code(code) => {
                if let Some((format, buf, _)) = &mut self.text_block {
                    buf.push_str(&code);
                    out.push(EventMsg::Chunk(Chunk::content(
                        Role::Assistant,
                        MessageType::Code,
                        Some(format.clone()),
                        code,
                    )));
                }
            }
            TextPiece::CodeEnd => {
                if let Some((format, code, raw)) = self.text_block.take() {
                    out.push(EventMsg::Chunk(Chunk::end(
                        Role::Assistant,
                        MessageType::Code,
                        Some(format.clone()),
                    )));
                    self.blocks.push(Block {
                        request: CodeRequest {
                            language: raw,
                            code: code.trim_end_matches('\n').to_string(),
                        },
                        streamed_as: Some(format),
                        closed: true,
                        problem: None,
                    });
                    self.text_block_done = true;
                }
            }
        }
    }

    fn prose_piece(&mut self, text: &str, out: &mut Vec<EventMsg>) {
        if self.hold.is_none() {
            self.held.push_str(text);
            let rest = &self.held[self.held_lead..];
            self.held_lead += rest.len() - rest.trim_start().len();
            let start = &self.held[self.held_lead..];
            if start.is_empty() {
                return;
            }
            if start.chars().take(HOLD_DECISION).count() < HOLD_DECISION
                && repair::may_be_tool_text(start)
            {
                return;
            }
            self.hold = Some(repair::may_be_tool_text(start));
            if self.hold == Some(true) {
                return;
            }
            let held = std::mem::take(&mut self.held);
            self.show_prose(&held, out);
            return;
        }
        if self.hold == Some(true) {
            self.held.push_str(text);
        } else {
            self.show_prose(text, out);
        }
    }

    fn show_prose(&mut self, text: &str, out: &mut Vec<EventMsg>) {
        if text.is_empty() {
            return;
        }
        if !self.prose_open {
            self.prose_open = true;
            out.push(EventMsg::Chunk(Chunk::start(
                Role::Assistant,
                MessageType::Message,
                None,
            )));
        }
        self.shown = true;
        self.prose.push_str(text);
        out.push(EventMsg::Chunk(Chunk::content(
            Role::Assistant,
            MessageType::Message,
            None,
            text,
        )));
    }

    fn close_prose(&mut self, out: &mut Vec<EventMsg>) {
        if self.prose_open {
            self.prose_open = false;
            out.push(EventMsg::Chunk(Chunk::end(
                Role::Assistant,
                MessageType::Message,
                None,
            )));
        }
    }

    /// Shows held-back text as prose (it was not a tool call after all).
    fn release_held(&mut self, out: &mut Vec<EventMsg>) {
        self.hold = Some(false);
        let held = std::mem::take(&mut self.held);
        self.show_prose(&held, out);
    }

    /// A piece of tool call `index` (a key: calls are kept in order of appearance, at
    /// most [`MAX_TOOL_CALLS`], whatever numbers a provider uses).
    fn tool_delta(
        &mut self,
        index: usize,
        name: Option<String>,
        arguments: &str,
        worker: &Worker,
    ) -> Result<Vec<EventMsg>, LlmError> {
        let mut out = Vec::new();
        let slot = match self.calls.iter().position(|c| c.key == index) {
            Some(slot) => slot,
            None if self.calls.len() >= MAX_TOOL_CALLS => {
                return Err(llm::too_many_calls(format!("tool call {index}")))
            }
            None => {
                self.calls.push(Call {
                    key: index,
                    ..Call::default()
                });
                self.calls.len() - 1
            }
        };
        let call = &mut self.calls[slot];
        if let Some(name) = name {
            call.name.push_str(&name);
        }
        call.arguments.push_str(arguments);
        // Only the first call streams live: later ones are shown when they run, so that
        // each block's output follows it.
        if slot != 0 {
            return Ok(out);
        }
        if self.prose_open || !self.held.is_empty() {
            self.release_held(&mut out);
            self.close_prose(&mut out);
        }
        let call = &mut self.calls[0];
        call.scanner.feed(arguments);
        let Some(code) = call.scanner.code() else {
            return Ok(out);
        };
        if call.streamed_as.is_none() {
            let Some(format) = call.scanner.language().and_then(|l| {
                worker
                    .config
                    .sandbox
                    .languages
                    .resolve(l)
                    .ok()
                    .map(|l| l.name.clone())
            }) else {
                return Ok(out);
            };
            out.push(EventMsg::Chunk(Chunk::start(
                Role::Assistant,
                MessageType::Code,
                Some(format.clone()),
            )));
            self.shown = true;
            call.streamed_as = Some(format);
        }
        if code.len() > call.streamed_len && code.is_char_boundary(call.streamed_len) {
            let format = call.streamed_as.clone();
            out.push(EventMsg::Chunk(Chunk::content(
                Role::Assistant,
                MessageType::Code,
                format,
                &code[call.streamed_len..],
            )));
            call.streamed_len = code.len();
        }
        Ok(out)
    }

    /// The end of the reply, complete or not: closes what is open and turns tool calls
    /// (and held text that is really one) into blocks.
    fn finish(&mut self, complete: bool, worker: &Worker) -> Vec<EventMsg> {
        let mut out = Vec::new();
        if self.text_mode && !self.text_block_done {
            self.finish_text_block(complete, worker, &mut out);
        }
        if !self.held.is_empty() {
            self.finish_held(complete, &mut out);
        }
        self.close_prose(&mut out);
        if !complete {
            // A half-written call is not run; close its chunks.
            if let Some(format) = self.calls.first().and_then(|c| c.streamed_as.clone()) {
                out.push(EventMsg::Chunk(Chunk::end(
                    Role::Assistant,
                    MessageType::Code,
                    Some(format),
                )));
            }
            self.calls.clear();
            self.blocks.clear();
            return out;
        }
        for call in std::mem::take(&mut self.calls) {
            let block = Self::call_block(call, &mut out);
            self.blocks.push(block);
        }
        out
    }

    /// Text mode: the fence parser's last pieces; an interrupted block is closed on
    /// screen and not run.
    fn finish_text_block(&mut self, complete: bool, worker: &Worker, out: &mut Vec<EventMsg>) {
        for piece in self.fence.finish() {
            self.fence_piece(piece, worker, out);
        }
        if !complete && self.text_block.is_some() {
            if let Some((format, _, _)) = self.text_block.take() {
                out.push(EventMsg::Chunk(Chunk::end(
                    Role::Assistant,
                    MessageType::Code,
                    Some(format),
                )));
            }
            self.blocks.clear();
        }
    }

    /// Text held back in case it was a tool call written as text: a block (or a block
    /// that cannot run, to tell the model) if the reply is complete and it is one, prose
    /// otherwise.
    fn finish_held(&mut self, complete: bool, out: &mut Vec<EventMsg>) {
        let held = std::mem::take(&mut self.held);
        match complete.then(|| repair::from_text(&held)).flatten() {
            Some(Ok(request)) => self.blocks.push(Block {
                request,
                streamed_as: None,
                closed: false,
                problem: None,
            }),
            Some(Err(problem)) => self.blocks.push(Block {
                request: CodeRequest {
                    language: Some("unknown".into()),
                    code: held,
                },
                streamed_as: None,
                closed: false,
                problem: Some(problem),
            }),
            None => {
                self.hold = Some(false);
                self.show_prose(&held, out);
            }
        }
    }

    /// A complete tool call as a block: repaired where it can be (its live stream
    /// finished with what the repair added), else a block that tells the model why not.
    fn call_block(call: Call, out: &mut Vec<EventMsg>) -> Block {
        match repair::from_tool_call(&call.name, &call.arguments) {
            Ok(request) => {
                if let Some(format) = &call.streamed_as {
                    if let Some(rest) = request
                        .code
                        .get(call.streamed_len..)
                        .filter(|r| !r.is_empty())
                    {
                        out.push(EventMsg::Chunk(Chunk::content(
                            Role::Assistant,
                            MessageType::Code,
                            Some(format.clone()),
                            rest,
                        )));
                    }
                }
                Block {
                    request,
                    streamed_as: call.streamed_as,
                    closed: false,
                    problem: None,
                }
            }
            Err(problem) => Block {
                request: CodeRequest {
                    language: Some(if call.name.is_empty() {
                        "unknown".into()
                    } else {
                        call.name.clone()
                    }),
                    code: call.arguments,
                },
                streamed_as: call.streamed_as,
                closed: false,
                problem: Some(problem),
            },
        }
    }

    fn prose_message(&self) -> Option<Message> {
        (!self.prose.is_empty()).then(|| Message::assistant(self.prose.clone()))
    }
}
