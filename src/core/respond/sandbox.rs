//! A bare sandbox session behind the protocol: the sandbox requests of
//! [`crate::core::protocol`] in, its events out, for front ends that run code without a
//! model (the server's sandbox API, MCP's tools).
//!
//! [`SandboxChannel::start`] spawns a worker that owns one [`Session`] and carries out
//! requests in order, each event carrying its request's id: an `execute` streams the
//! block's events and ends with exactly one `done` (or is answered by one `error` when
//! the block cannot start); `upload`, `download` and `close` are answered by one event.
//! `interrupt` acts at once on the running block and the ones queued; it has no answer
//! of its own: their `done` says `interrupted`. Bounded like a conversation:
//! [`REQUEST_QUEUE`] requests wait, [`EVENT_QUEUE`] events wait for the reader.
//!
//! Left to others: transport (the server, MCP), what a model sees of a block
//! (`code_interpreter::BlockOutput`), opening the session (`Engine`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::core::code_interpreter::{ExecRequest, Session};
use crate::core::protocol::{
    check_id, Archive, Delivery, Error, ErrorKind, RequestId, SandboxEvent, SandboxEventMsg,
    SandboxRequest, SandboxSubmission, EVENT_QUEUE, REQUEST_QUEUE,
};

/// What a queued request asks of the worker (interrupts are not queued).
enum Work {
    Execute(ExecRequest),
    Upload { dest: String, archive: Archive },
    Download { source: String, delivery: Delivery },
    Close,
}

/// A request waiting for the worker, and the token that interrupts it.
struct Queued {
    id: RequestId,
    work: Work,
    cancel: CancellationToken,
}

/// A sandbox session spoken to through the protocol.
///
/// # Examples
///
/// ```no_run
/// use oi::core::code_interpreter::{Engine, SandboxConfig};
/// use oi::core::protocol::{SandboxEventMsg, SandboxRequest};
/// use oi::core::respond::SandboxChannel;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let engine = Engine::connect(SandboxConfig::default()).await?;
/// let mut sandbox = SandboxChannel::start(engine.open().await?);
/// let code = "print(6 * 7)".to_string();
/// sandbox.send(SandboxRequest::Execute { language: "python".into(), code, timeout_ms: None }).await;
/// while let Some(event) = sandbox.next_event().await {
///     match event.msg {
///         SandboxEventMsg::Stdout { text } => print!("{text}"),
///         SandboxEventMsg::Done(_) | SandboxEventMsg::Error(_) => break,
///         _ => {}
///     }
/// }
/// sandbox.close().await;
/// # Ok(()) }
/// ```
pub struct SandboxChannel {
    requests: mpsc::Sender<Queued>,
    events: mpsc::Receiver<SandboxEvent>,
    /// The tokens of the running and queued blocks.
    cancel: Arc<Mutex<Vec<CancellationToken>>>,
    next_id: AtomicU64,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for SandboxChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxChannel").finish_non_exhaustive()
    }
}

impl SandboxChannel {
    /// Serves `session` until `close` (or until the channel is dropped, which closes
    /// the session too). Must be called within a Tokio runtime.
    pub fn start(session: Session) -> SandboxChannel {
        let (requests_tx, requests_rx) = mpsc::channel(REQUEST_QUEUE);
        let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
        let cancel = Arc::new(Mutex::new(Vec::new()));
        let worker = SandboxWorker {
            session,
            events: events_tx,
            cancel: cancel.clone(),
        };
        SandboxChannel {
            requests: requests_tx,
            events: events_rx,
            cancel,
            next_id: AtomicU64::new(1),
            task: tokio::spawn(worker.run(requests_rx)),
        }
    }

    /// Sends a request with an id of its own, returned (see `Conversation::send`).
    pub async fn send(&self, request: SandboxRequest) -> RequestId {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed).to_string();
        let _ = self
            .submit(SandboxSubmission {
                id: id.clone(),
                request,
            })
            .await;
        id
    }

    /// Sends a request under the id the front end chose (at most [`MAX_ID_LEN`] bytes).
    /// `interrupt` acts at once (it has no answer of its own: the interrupted block's
    /// `done` says so); the others queue.
    pub async fn submit(&self, submission: SandboxSubmission) -> Result<(), Error> {
        let SandboxSubmission { id, request } = submission;
        check_id(&id)?;
        let cancel = CancellationToken::new();
        let work = match request {
            SandboxRequest::Interrupt => {
                for token in self.cancel.lock().unwrap().drain(..) {
                    token.cancel();
                }
                return Ok(());
            }
            SandboxRequest::Execute {
                language,
                code,
                timeout_ms,
            } => {
                self.cancel.lock().unwrap().push(cancel.clone());
                Work::Execute(ExecRequest {
                    language,
                    code,
                    timeout: timeout_ms.map(Duration::from_millis),
                })
            }
            SandboxRequest::Upload { dest, archive } => Work::Upload { dest, archive },
            SandboxRequest::Download { source, delivery } => Work::Download { source, delivery },
            SandboxRequest::Close => Work::Close,
        };
        self.requests
            .send(Queued { id, work, cancel })
            .await
            .map_err(|_| Error::closed())
    }

    /// The next event; `None` once the session is closed and its events read.
    pub async fn next_event(&mut self) -> Option<SandboxEvent> {
        self.events.recv().await
    }

    /// Interrupts what runs, removes the sandbox and waits until it is gone.
    pub async fn close(self) {
        for token in self.cancel.lock().unwrap().drain(..) {
            token.cancel();
        }
        let SandboxChannel {
            requests,
            events,
            task,
            ..
        } = self;
        drop(requests);
        drop(events);
        let _ = task.await;
    }
}

struct SandboxWorker {
    session: Session,
    events: mpsc::Sender<SandboxEvent>,
    cancel: Arc<Mutex<Vec<CancellationToken>>>,
}

impl SandboxWorker {
    async fn run(mut self, mut requests: mpsc::Receiver<Queued>) {
        let mut closing = None;
        while let Some(Queued { id, work, cancel }) = requests.recv().await {
            let answer = match work {
                Work::Execute(request) => {
                    let failed = self.execute(&id, request, &cancel).await;
                    cancel.cancel();
                    self.cancel.lock().unwrap().retain(|t| !t.is_cancelled());
                    match failed {
                        Some(error) => SandboxEventMsg::Error(error),
                        None => continue,
                    }
                }
                Work::Upload { dest, archive } => match self.upload(&dest, archive).await {
                    Ok(bytes) => SandboxEventMsg::Uploaded { bytes },
                    Err(error) => SandboxEventMsg::Error(error),
                },
                Work::Download { source, delivery } => {
                    match self.download(&source, delivery).await {
                        Ok(archive) => SandboxEventMsg::Downloaded { archive },
                        Err(error) => SandboxEventMsg::Error(error),
                    }
                }
                Work::Close => {
                    closing = Some(id);
                    break;
                }
            };
            if !self.emit(&id, answer).await {
                break;
            }
        }
        let SandboxWorker {
            session, events, ..
        } = self;
        let closed = session.close().await;
        if let Some(id) = closing {
            let msg = match closed {
                Ok(()) => SandboxEventMsg::Closed,
                Err(e) => SandboxEventMsg::Error(Error::sandbox("closing the sandbox", &e)),
            };
            let _ = events.send(SandboxEvent { id, msg }).await;
        }
    }

    /// Streams a block's events; an error if it could not start.
    async fn execute(
        &mut self,
        id: &str,
        request: ExecRequest,
        cancel: &CancellationToken,
    ) -> Option<Error> {
        let mut execution = match self.session.execute(request, cancel).await {
            Ok(execution) => execution,
            Err(e) => return Some(Error::sandbox("The block could not start", &e)),
        };
        while let Some(event) = execution.next_event().await {
            if !self.emit(id, SandboxEventMsg::from(event)).await {
                // Nobody reads: dropping the execution interrupts the block.
                break;
            }
        }
        None
    }

    async fn upload(&mut self, dest: &str, archive: Archive) -> Result<u64, Error> {
        let file = tokio::task::spawn_blocking(move || archive.into_file())
            .await
            .map_err(|e| Error::new(ErrorKind::Files, e.to_string()))??;
        self.session
            .put_archive(dest, file)
            .await
            .map_err(|e| Error::sandbox("", &e))
    }

    async fn download(&mut self, source: &str, delivery: Delivery) -> Result<Archive, Error> {
        let limit = match delivery {
            Delivery::Base64 => crate::core::protocol::MAX_INLINE_ARCHIVE,
            Delivery::File => self.session.copy_limit(),
        };
        let file = self
            .session
            .get_archive(source, limit)
            .await
            .map_err(|e| Error::sandbox("", &e))?;
        tokio::task::spawn_blocking(move || Archive::deliver(file, delivery))
            .await
            .map_err(|e| Error::new(ErrorKind::Files, e.to_string()))?
    }

    /// Sends an event; false once nobody reads.
    async fn emit(&self, id: &str, msg: SandboxEventMsg) -> bool {
        let event = SandboxEvent {
            id: id.to_string(),
            msg,
        };
        self.events.send(event).await.is_ok()
    }
}
