//! SIGTERM and SIGHUP for the front ends that run code: `timeout`, a CI runner, a
//! service manager or a closed terminal asks oi to stop, and oi stops as after Ctrl-C
//! then quit — the running block is interrupted, the conversation saved, the sandbox
//! removed — and exits with 128 + the signal's number.
//!
//! Left to others: what "stop" means for each command (they watch [`Quit`]); a process
//! killed outright (SIGKILL) is covered by the sandbox stopping by itself (see
//! `core::code_interpreter::docker`).

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// Cancelled once SIGTERM or SIGHUP arrives; remembers which.
#[derive(Debug, Clone)]
pub struct Quit {
    token: CancellationToken,
    signal: Arc<AtomicI32>,
}

impl Quit {
    /// Starts listening. From now on the two signals no longer end the process by
    /// themselves: the caller must watch [`Quit::requested`]. Must be called within a
    /// Tokio runtime.
    pub fn listen() -> std::io::Result<Quit> {
        let quit = Quit {
            token: CancellationToken::new(),
            signal: Arc::default(),
        };
        let mut term = signal(SignalKind::terminate())?;
        let mut hup = signal(SignalKind::hangup())?;
        let (token, number) = (quit.token.clone(), quit.signal.clone());
        tokio::spawn(async move {
            let which = tokio::select! {
                _ = term.recv() => libc_signal::SIGTERM,
                _ = hup.recv() => libc_signal::SIGHUP,
            };
            number.store(which, Ordering::SeqCst);
            token.cancel();
        });
        Ok(quit)
    }

    /// Resolves once a signal asked oi to quit.
    pub async fn requested(&self) {
        self.token.cancelled().await
    }

    pub fn is_requested(&self) -> bool {
        self.token.is_cancelled()
    }

    /// The exit status that says which signal ended oi (128 + its number).
    pub fn exit_code(&self) -> Option<u8> {
        self.is_requested()
            .then(|| 128 + self.signal.load(Ordering::SeqCst) as u8)
    }
}

/// The two signal numbers, fixed on every Linux architecture.
mod libc_signal {
    pub const SIGHUP: i32 = 1;
    pub const SIGTERM: i32 = 15;
}
