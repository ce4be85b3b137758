//! A live connection to one runner: writes requests to its stdin, reads frames from its
//! stdout and routes them to the execution they belong to.
//!
//! Transport-agnostic: the Docker backend hands it an attached container's streams, the
//! host backend a child process's pipes. It knows the protocol, not where the runner is.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, OwnedMutexGuard};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::error::{Result, SandboxError};
use super::execution::{ExecEvent, ExecOutcome, ExecStatus, Execution};
use super::language::{Language, LanguageKind};
use super::protocol::{
    Frame, FrameDecoder, FrameError, Request, RunnerStatus, IMAGE_FORMATS, PROTOCOL_VERSION,
};

/// Frames buffered per execution before the reader waits for the consumer: bounds
/// memory (frames are at most 64 KiB of output) while a block floods its output.
const FRAME_BUFFER: usize = 16;
/// Events buffered between an execution's task and its reader.
const EVENT_BUFFER: usize = 16;
/// How long a runner may stay silent after a `kill` before oi gives up on it: killing
/// takes it milliseconds, so silence means it is stopped (code can SIGSTOP it: same
/// user) or wedged. The block then ends as crashed and the session gets a new sandbox.
const KILL_ANSWER_GRACE: Duration = Duration::from_secs(5);

/// The byte streams of a runner, whatever carries them: what a backend hands a session
/// (see [`super::backend::Transport::from_pipes`] for pipes).
pub struct Transport {
    /// The runner's stdout (frames).
    pub output: BoxStream<'static, std::io::Result<Bytes>>,
    /// The runner's stdin (requests).
    pub input: Pin<Box<dyn AsyncWrite + Send>>,
    /// The runner's stderr, kept (last few KiB) for diagnostics.
    pub diagnostics: Diagnostics,
}

/// The tail of what a runner wrote to its stderr.
#[derive(Clone, Default, Debug)]
pub struct Diagnostics(Arc<Mutex<String>>);

impl Diagnostics {
    const KEEP: usize = 8 * 1024;

    pub fn push(&self, bytes: &[u8]) {
        let mut text = self.0.lock().unwrap();
        text.push_str(&String::from_utf8_lossy(bytes));
        if text.len() > Self::KEEP {
            let mut cut = text.len() - Self::KEEP;
            while !text.is_char_boundary(cut) {
                cut += 1;
            }
            text.drain(..cut);
        }
    }

    pub fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }
}

type Routes = Arc<Mutex<HashMap<u64, mpsc::Sender<Frame>>>>;

/// What went wrong with a runner that oi stopped trusting, shared by the reader and
/// the executions: when set, the connection is dead and the message says why.
#[derive(Clone, Default, Debug)]
struct Failure(Arc<Mutex<Option<String>>>);

impl Failure {
    fn set(&self, why: String) {
        self.0.lock().unwrap().get_or_insert(why);
    }

    fn get(&self) -> Option<String> {
        self.0.lock().unwrap().clone()
    }
}

/// Timing of interrupts: how long an interrupted block may take to stop before its
/// interpreter is killed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Escalation {
    pub interrupt_grace: Duration,
}

pub(crate) struct RunnerConnection {
    writer: Arc<tokio::sync::Mutex<Pin<Box<dyn AsyncWrite + Send>>>>,
    routes: Routes,
    next_id: AtomicU64,
    alive: Arc<std::sync::atomic::AtomicBool>,
    closed: CancellationToken,
    diagnostics: Diagnostics,
    failure: Failure,
    exclusive: Arc<tokio::sync::Mutex<()>>,
    reader: tokio::task::JoinHandle<()>,
}

impl RunnerConnection {
    /// Starts reading the transport and waits for the runner's hello.
    pub async fn open(transport: Transport, hello_timeout: Duration) -> Result<RunnerConnection> {
        let Transport {
            output,
            input,
            diagnostics,
        } = transport;
        let routes: Routes = Arc::default();
        let alive = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let closed = CancellationToken::new();
        let failure = Failure::default();
        let (hello_tx, hello_rx) = oneshot::channel();
        let reader = tokio::spawn(read_frames(
            output,
            Reader {
                routes: routes.clone(),
                alive: alive.clone(),
                closed: closed.clone(),
                diagnostics: diagnostics.clone(),
                failure: failure.clone(),
            },
            hello_tx,
        ));
        let conn = RunnerConnection {
            writer: Arc::new(tokio::sync::Mutex::new(input)),
            routes,
            next_id: AtomicU64::new(1),
            alive,
            closed,
            diagnostics,
            failure,
            exclusive: Arc::default(),
            reader,
        };
        match tokio::time::timeout(hello_timeout, hello_rx).await {
            Err(_) => Err(SandboxError::StartTimeout(hello_timeout)),
            Ok(Err(_)) => {
                // The reader ended before a hello: the runner died or never started.
                // Give its last words a moment to arrive.
                tokio::time::sleep(Duration::from_millis(50)).await;
                Err(SandboxError::StartFailed {
                    reason: "the runner exited before it was ready".into(),
                    diagnostics: conn.diagnostics.text(),
                })
            }
            Ok(Ok(Err(runner))) => Err(SandboxError::RunnerVersion {
                runner,
                oi: PROTOCOL_VERSION,
            }),
            Ok(Ok(Ok(()))) => Ok(conn),
        }
    }

    /// Whether the runner is still there and trusted (its output has not ended, it
    /// has not broken the protocol, it answered its last kill).
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    /// Starts a block. Blocks run one at a time: this waits for the previous one to end.
    pub async fn execute(
        &self,
        language: &Language,
        code: &str,
        timeout: Option<Duration>,
        cancel: &CancellationToken,
        escalation: Escalation,
        preface: Vec<ExecEvent>,
    ) -> Result<Execution> {
        let turn = self.exclusive.clone().lock_owned().await;
        if !self.is_alive() {
            return Err(SandboxError::Closed);
        }
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let (frame_tx, frame_rx) = mpsc::channel(FRAME_BUFFER);
        self.routes.lock().unwrap().insert(id, frame_tx);
        let (lang, command, extension) = match &language.kind {
            LanguageKind::Python => ("python", None, None),
            LanguageKind::Shell => ("shell", None, None),
            LanguageKind::File { extension, command } => (
                language.name.as_str(),
                Some(command.as_str()),
                Some(extension.as_str()),
            ),
        };
        let request = Request::Exec {
            v: PROTOCOL_VERSION,
            id,
            lang,
            code,
            command,
            extension,
        };
        if let Err(err) = self.send(&request).await {
            self.routes.lock().unwrap().remove(&id);
            return Err(err);
        }
        let cancel = cancel.child_token();
        let (event_tx, event_rx) = mpsc::channel(EVENT_BUFFER);
        let task = ExecTask {
            id,
            writer: self.writer.clone(),
            routes: self.routes.clone(),
            frames: frame_rx,
            events: event_tx,
            cancel: cancel.clone(),
            closed: self.closed.clone(),
            alive: self.alive.clone(),
            diagnostics: self.diagnostics.clone(),
            failure: self.failure.clone(),
            timeout,
            escalation,
            images: ImageBudget::default(),
            _turn: turn,
        };
        tokio::spawn(task.run(preface));
        Ok(Execution {
            events: event_rx,
            cancel,
        })
    }

    /// Round trip of a ping: proves the runner answers (used by health checks and benchmarks).
    pub async fn ping(&self) -> Result<()> {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let (tx, mut rx) = mpsc::channel(1);
        self.routes.lock().unwrap().insert(id, tx);
        self.send(&Request::Ping {
            v: PROTOCOL_VERSION,
            id,
        })
        .await?;
        let answer = rx.recv().await;
        self.routes.lock().unwrap().remove(&id);
        match answer {
            Some(_) => Ok(()),
            None => Err(SandboxError::Closed),
        }
    }

    async fn send(&self, request: &Request<'_>) -> Result<()> {
        write_request(&self.writer, request).await
    }

    /// Asks the runner to stop its interpreters and exit, without waiting for it.
    pub async fn shutdown(&self) {
        if self.is_alive() {
            let _ = tokio::time::timeout(
                Duration::from_millis(200),
                self.send(&Request::Shutdown {
                    v: PROTOCOL_VERSION,
                }),
            )
            .await;
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), async {
            let mut writer = self.writer.lock().await;
            let _ = writer.shutdown().await;
        })
        .await;
        self.closed.cancel();
    }
}

impl Drop for RunnerConnection {
    fn drop(&mut self) {
        self.closed.cancel();
        self.reader.abort();
    }
}

async fn write_request(
    writer: &tokio::sync::Mutex<Pin<Box<dyn AsyncWrite + Send>>>,
    request: &Request<'_>,
) -> Result<()> {
    let line = request.to_line();
    let mut writer = writer.lock().await;
    writer
        .write_all(&line)
        .await
        .map_err(SandboxError::io("writing to the sandbox runner"))?;
    writer
        .flush()
        .await
        .map_err(SandboxError::io("writing to the sandbox runner"))
}

/// What the frame reader shares with the connection.
struct Reader {
    routes: Routes,
    alive: Arc<std::sync::atomic::AtomicBool>,
    closed: CancellationToken,
    diagnostics: Diagnostics,
    failure: Failure,
}

async fn read_frames(
    mut output: BoxStream<'static, std::io::Result<Bytes>>,
    reader: Reader,
    hello: oneshot::Sender<std::result::Result<(), u32>>,
) {
    let Reader {
        routes,
        alive,
        closed,
        diagnostics,
        failure,
    } = reader;
    let mut hello = Some(hello);
    let mut decoder = FrameDecoder::default();
    'read: loop {
        let chunk = tokio::select! {
            biased;
            _ = closed.cancelled() => break 'read,
            chunk = output.next() => chunk,
        };
        let bytes = match chunk {
            Some(Ok(bytes)) => bytes,
            Some(Err(err)) => {
                diagnostics.push(format!("\n(reading the runner failed: {err})\n").as_bytes());
                break;
            }
            None => break,
        };
        decoder.push(&bytes);
        while let Some(frame) = decoder.next_frame() {
            let frame = match frame {
                Ok(frame) => frame,
                Err(err @ FrameError::Unreadable(_)) => {
                    diagnostics.push(format!("{err}\n").as_bytes());
                    continue;
                }
                Err(err @ FrameError::TooLong) => {
                    // Reading on would mean buffering without bound: give up on it.
                    failure.set(format!(
                        "{err}; oi stopped reading it: the next block starts a new sandbox and all state was lost"
                    ));
                    break 'read;
                }
            };
            if let Frame::Hello { v, .. } = &frame {
                if let Some(tx) = hello.take() {
                    let answer = if *v == PROTOCOL_VERSION {
                        Ok(())
                    } else {
                        Err(*v)
                    };
                    let _ = tx.send(answer);
                }
                continue;
            }
            let Some(id) = frame.id() else {
                if let Frame::Error { message, .. } = &frame {
                    diagnostics.push(format!("runner error: {message}\n").as_bytes());
                }
                continue;
            };
            let route = routes.lock().unwrap().get(&id).cloned();
            if let Some(route) = route {
                let done = matches!(frame, Frame::Done { .. } | Frame::Pong { .. });
                // Waiting here is the backpressure that keeps memory bounded while a
                // block floods its output: the runner blocks until the consumer reads.
                tokio::select! {
                    biased;
                    _ = closed.cancelled() => break 'read,
                    _ = route.send(frame) => {}
                }
                if done {
                    routes.lock().unwrap().remove(&id);
                }
            }
        }
    }
    alive.store(false, Ordering::SeqCst);
    // Dropping the routes tells every waiting execution that the runner is gone.
    routes.lock().unwrap().clear();
}

/// Drives one execution: forwards its frames as events, and turns cancellation and
/// timeouts into interrupt, then kill, requests.
struct ExecTask {
    id: u64,
    writer: Arc<tokio::sync::Mutex<Pin<Box<dyn AsyncWrite + Send>>>>,
    routes: Routes,
    frames: mpsc::Receiver<Frame>,
    events: mpsc::Sender<ExecEvent>,
    cancel: CancellationToken,
    closed: CancellationToken,
    alive: Arc<std::sync::atomic::AtomicBool>,
    diagnostics: Diagnostics,
    failure: Failure,
    timeout: Option<Duration>,
    escalation: Escalation,
    images: ImageBudget,
    _turn: OwnedMutexGuard<()>,
}

/// How many images one block may hand to the host, and how many bytes in all: each is
/// bounded by the runner, their number is bounded here, since every one is saved as a
/// file, drawn, and kept in the conversation.
pub const MAX_IMAGES_PER_BLOCK: usize = 16;
pub const MAX_IMAGE_BYTES_PER_BLOCK: usize = 32 << 20;

/// What one block has spent of its images.
#[derive(Debug, Default)]
struct ImageBudget {
    count: usize,
    bytes: usize,
    /// Whether the user was told that the rest are dropped.
    told: bool,
}

impl ImageBudget {
    /// The event to forward for an image: itself while the budget lasts, then one
    /// notice, then nothing.
    fn admit(&mut self, event: ExecEvent) -> Option<ExecEvent> {
        let ExecEvent::Image { data, .. } = &event else {
            return Some(event);
        };
        if self.count < MAX_IMAGES_PER_BLOCK && self.bytes + data.len() <= MAX_IMAGE_BYTES_PER_BLOCK
        {
            self.count += 1;
            self.bytes += data.len();
            return Some(event);
        }
        if std::mem::replace(&mut self.told, true) {
            return None;
        }
        Some(ExecEvent::Notice {
            message: format!(
                "the block displayed more images than oi keeps for one block ({MAX_IMAGES_PER_BLOCK}, \
                 {} MiB in all): the rest were dropped",
                MAX_IMAGE_BYTES_PER_BLOCK >> 20
            ),
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum StopReason {
    Interrupt,
    Timeout,
}

impl ExecTask {
    async fn run(mut self, preface: Vec<ExecEvent>) {
        for event in preface {
            let _ = self.events.send(event).await;
        }
        let outcome = self.pump().await;
        self.routes.lock().unwrap().remove(&self.id);
        let _ = self.events.send(ExecEvent::Done(outcome)).await;
    }

    async fn pump(&mut self) -> ExecOutcome {
        let far = Instant::now() + Duration::from_secs(365 * 24 * 3600);
        // checked: a library caller's Duration::MAX means "never", not a panic.
        let timeout_at = self
            .timeout
            .and_then(|t| Instant::now().checked_add(t))
            .unwrap_or(far);
        let mut stop: Option<StopReason> = None;
        let mut kill_at = far;
        let mut killed = false;
        // After a kill: when oi stops waiting for the runner (moved on by every frame).
        let mut give_up_at = far;
        loop {
            let frame = tokio::select! {
                biased;
                _ = self.cancel.cancelled(), if stop.is_none() => {
                    stop = Some(StopReason::Interrupt);
                    kill_at = Instant::now() + self.escalation.interrupt_grace;
                    self.request(Request::Interrupt { v: PROTOCOL_VERSION, id: self.id }).await;
                    continue;
                }
                _ = tokio::time::sleep_until(timeout_at), if stop.is_none() => {
                    stop = Some(StopReason::Timeout);
                    kill_at = Instant::now() + self.escalation.interrupt_grace;
                    self.request(Request::Interrupt { v: PROTOCOL_VERSION, id: self.id }).await;
                    continue;
                }
                _ = tokio::time::sleep_until(kill_at), if !killed => {
                    killed = true;
                    self.request(Request::Kill { v: PROTOCOL_VERSION, id: self.id }).await;
                    give_up_at = Instant::now() + KILL_ANSWER_GRACE;
                    continue;
                }
                _ = tokio::time::sleep_until(give_up_at), if killed => return self.unanswered(),
                frame = self.frames.recv() => frame,
            };
            if killed {
                give_up_at = Instant::now() + KILL_ANSWER_GRACE;
            }
            let event = match frame {
                None => return self.lost(),
                Some(Frame::Stdout { data, .. }) => ExecEvent::Stdout { text: data },
                Some(Frame::Stderr { data, .. }) => ExecEvent::Stderr { text: data },
                Some(Frame::Notice { message, .. }) => ExecEvent::Notice { message },
                Some(Frame::ActiveLine { line, .. }) => ExecEvent::ActiveLine { line },
                Some(Frame::Image { format, data, .. }) => {
                    match self.images.admit(image_event(format, &data)) {
                        Some(event) => event,
                        None => continue,
                    }
                }
                Some(Frame::Error { message, .. }) => ExecEvent::Stderr {
                    text: format!("oi runner: {message}\n"),
                },
                Some(Frame::Done {
                    status,
                    exit_code,
                    message,
                    ..
                }) => return self.outcome(status, exit_code, message, stop),
                Some(Frame::Hello { .. } | Frame::Pong { .. } | Frame::Unknown) => continue,
            };
            // A consumer that went away cancelled the block (Execution's Drop); keep
            // reading so the runner is not left blocked, but stop sending.
            if !self.events.is_closed() {
                let _ = self.events.send(event).await;
            }
        }
    }

    async fn request(&self, request: Request<'_>) {
        // The runner may be gone already; the frame stream ending reports that.
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            write_request(&self.writer, &request),
        )
        .await;
    }

    fn outcome(
        &self,
        status: RunnerStatus,
        exit_code: Option<i32>,
        message: Option<String>,
        stop: Option<StopReason>,
    ) -> ExecOutcome {
        let status = match (status, stop) {
            (RunnerStatus::Ok, _) => ExecStatus::Ok,
            (RunnerStatus::Error, _) => ExecStatus::Error,
            (RunnerStatus::Crashed, _) => ExecStatus::Crashed,
            (RunnerStatus::Interrupted, Some(StopReason::Timeout)) => ExecStatus::TimedOut,
            (RunnerStatus::Interrupted, _) => ExecStatus::Interrupted,
        };
        let message = match (status, self.timeout) {
            (ExecStatus::TimedOut, Some(limit)) => Some(match message {
                Some(m) => format!("timed out after {}; {m}", human(limit)),
                None => format!("timed out after {}", human(limit)),
            }),
            _ => message,
        };
        ExecOutcome {
            status,
            exit_code,
            message,
        }
    }

    /// The runner did not answer a kill: it is stopped or wedged. The connection is
    /// marked dead so that the session starts a new sandbox for the next block.
    fn unanswered(&self) -> ExecOutcome {
        let why = format!(
            "the sandbox runner stopped answering: the block did not end within {} of being \
             killed (code in the sandbox may have stopped the runner); the next block starts a \
             new sandbox and all state was lost",
            human(KILL_ANSWER_GRACE)
        );
        self.failure.set(why.clone());
        self.alive.store(false, Ordering::SeqCst);
        ExecOutcome {
            status: ExecStatus::Crashed,
            exit_code: None,
            message: Some(why),
        }
    }

    fn lost(&self) -> ExecOutcome {
        let detail = self.diagnostics.text();
        let detail = detail.trim();
        let mut message = String::from(
            "the sandbox stopped while the block ran (its container exited or was removed); \
             the next block starts a new sandbox and all state was lost",
        );
        if self.closed.is_cancelled() {
            message = String::from("the sandbox session was closed while the block ran");
        } else if let Some(why) = self.failure.get() {
            message = why;
        } else if !detail.is_empty() {
            message.push_str("\nrunner said: ");
            message.push_str(detail);
        }
        ExecOutcome {
            status: ExecStatus::Crashed,
            exit_code: None,
            message: Some(message),
        }
    }
}

/// An image frame as the event it becomes: only formats from the protocol's list, and
/// only valid base64; anything else is a notice.
fn image_event(format: String, data: &str) -> ExecEvent {
    if !IMAGE_FORMATS.contains(&format.as_str()) {
        return ExecEvent::Notice {
            message: format!(
                "an image from the sandbox was dropped: its format is not one of {}",
                IMAGE_FORMATS.join(", ")
            ),
        };
    }
    match base64::engine::general_purpose::STANDARD.decode(data.as_bytes()) {
        Ok(data) => ExecEvent::Image { format, data },
        Err(err) => ExecEvent::Notice {
            message: format!("an image from the sandbox could not be decoded: {err}"),
        },
    }
}

fn human(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_s_images_are_bounded_in_number_and_bytes() {
        let image = |len: usize| ExecEvent::Image {
            format: "png".into(),
            data: vec![0; len],
        };
        let mut budget = ImageBudget::default();
        for _ in 0..MAX_IMAGES_PER_BLOCK {
            assert!(matches!(
                budget.admit(image(10)),
                Some(ExecEvent::Image { .. })
            ));
        }
        assert!(matches!(
            budget.admit(image(10)),
            Some(ExecEvent::Notice { .. })
        ));
        assert!(budget.admit(image(10)).is_none(), "told once");
        assert!(matches!(
            budget.admit(ExecEvent::Stdout { text: "x".into() }),
            Some(ExecEvent::Stdout { .. })
        ));
        let mut budget = ImageBudget::default();
        assert!(matches!(
            budget.admit(image(MAX_IMAGE_BYTES_PER_BLOCK - 1)),
            Some(ExecEvent::Image { .. })
        ));
        assert!(matches!(
            budget.admit(image(2)),
            Some(ExecEvent::Notice { .. })
        ));
    }

    #[test]
    fn images_are_only_taken_in_listed_formats_and_valid_base64() {
        assert_eq!(
            image_event("svg+xml".into(), "PHN2Zy8+"),
            ExecEvent::Image {
                format: "svg+xml".into(),
                data: b"<svg/>".to_vec()
            }
        );
        for (format, data) in [
            ("png/../../x", "AAAA"),
            ("exe", "AAAA"),
            ("png", "not base64!"),
        ] {
            assert!(
                matches!(image_event(format.into(), data), ExecEvent::Notice { .. }),
                "{format} {data}"
            );
        }
    }
}
