//! What one block's execution produces: a stream of [`ExecEvent`]s that ends with
//! exactly one [`ExecEvent::Done`], and the handle the caller reads it through.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// A block to run.
#[derive(Debug, Clone)]
pub struct ExecRequest {
    /// A language name or alias (`python`, `py`, `shell`, `bash`, a configured one).
    pub language: String,
    pub code: String,
    /// Interrupt the block after this long (then kill its interpreter if it resists).
    /// `None` uses the session's default.
    pub timeout: Option<Duration>,
}

impl ExecRequest {
    pub fn new(language: impl Into<String>, code: impl Into<String>) -> Self {
        ExecRequest {
            language: language.into(),
            code: code.into(),
            timeout: None,
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

/// How a block ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExecStatus {
    /// Ran to the end (shell: exit status 0).
    Ok,
    /// Raised an exception, or (shell, file languages) exited non-zero.
    Error,
    /// Stopped by an interrupt; the interpreter's state is kept unless the message says otherwise.
    Interrupted,
    /// Stopped because it ran past its timeout.
    TimedOut,
    /// The interpreter or the container died; the next block starts a fresh one.
    Crashed,
}

/// The final event of every execution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ExecOutcome {
    pub status: ExecStatus,
    /// The shell's or the process's exit status, where there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// What happened, in words, for anything but a plain success or failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl ExecOutcome {
    /// The exit status a command-line front end should use for this outcome:
    /// the code's own where it has one, 1 for an error without one, 130 for an
    /// interrupt, 124 for a timeout (as `timeout(1)`), 137 for a crash.
    pub fn exit_status(&self) -> i32 {
        match self.status {
            ExecStatus::Ok => 0,
            ExecStatus::Error => self.exit_code.filter(|c| *c != 0).unwrap_or(1),
            ExecStatus::Interrupted => 130,
            ExecStatus::TimedOut => 124,
            ExecStatus::Crashed => 137,
        }
    }
}

/// One event of an execution, in the order the code produced them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ExecEvent {
    Stdout {
        text: String,
    },
    Stderr {
        text: String,
    },
    /// An image the code displayed (matplotlib figures, `display(...)`).
    Image {
        format: String,
        data: Vec<u8>,
    },
    /// Something the user should know that the code did not print (a restarted interpreter).
    Notice {
        message: String,
    },
    /// The line of the block about to run (Python blocks of several top-level
    /// statements report each statement's first line).
    ActiveLine {
        line: u32,
    },
    Done(ExecOutcome),
}

/// The events of one running block. Dropping it interrupts the block.
#[derive(Debug)]
pub struct Execution {
    pub(crate) events: mpsc::Receiver<ExecEvent>,
    pub(crate) cancel: tokio_util::sync::CancellationToken,
}

/// Everything an execution produced, gathered (see [`Execution::collect_output`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CollectedOutput {
    pub stdout: String,
    pub stderr: String,
    pub images: Vec<Vec<u8>>,
    pub notices: Vec<String>,
    pub outcome: Option<ExecOutcome>,
}

impl CollectedOutput {
    /// The outcome; an execution always has one once collected.
    pub fn outcome(&self) -> &ExecOutcome {
        self.outcome
            .as_ref()
            .expect("an execution always ends with Done")
    }

    pub fn status(&self) -> ExecStatus {
        self.outcome().status
    }
}

impl Execution {
    /// The next event; `None` after `Done`.
    pub async fn next_event(&mut self) -> Option<ExecEvent> {
        self.events.recv().await
    }

    /// Asks the block to stop (as Ctrl-C would). The stream goes on until `Done`.
    pub fn interrupt(&self) {
        self.cancel.cancel();
    }

    /// Reads the whole execution into memory: for tests and small blocks.
    pub async fn collect_output(mut self) -> CollectedOutput {
        let mut out = CollectedOutput::default();
        while let Some(event) = self.next_event().await {
            match event {
                ExecEvent::Stdout { text } => out.stdout.push_str(&text),
                ExecEvent::Stderr { text } => out.stderr.push_str(&text),
                ExecEvent::Image { data, .. } => out.images.push(data),
                ExecEvent::Notice { message } => out.notices.push(message),
                ExecEvent::ActiveLine { .. } => {}
                ExecEvent::Done(outcome) => out.outcome = Some(outcome),
            }
        }
        out
    }
}

impl Drop for Execution {
    fn drop(&mut self) {
        // A caller that stops listening does not want the block any more.
        if !self.events.is_closed() {
            self.cancel.cancel();
        }
    }
}

impl Stream for Execution {
    type Item = ExecEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ExecEvent>> {
        self.events.poll_recv(cx)
    }
}
