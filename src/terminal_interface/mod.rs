//! The terminal front end: turns flags into core configuration, drives core, and
//! renders its events and progress for a person (or, with `--json`, for a program).
//! All printing in oi happens here or in `main.rs`.

pub mod advice;
pub mod chat;
pub mod cli;
pub mod config;
pub mod exec;
pub mod image_cmd;
pub mod progress;
pub mod sandbox_cmd;
pub mod sanitize;
pub mod setup;
pub mod signals;
pub mod trust;

use crate::core::code_interpreter::SandboxError;

/// A command's failure: the error to print and the exit code that says what kind it is.
#[derive(Debug)]
pub struct Failure {
    pub error: anyhow::Error,
    pub code: u8,
}

impl Failure {
    /// The sandbox could not run code: Docker unreachable, image build failed, and the like
    /// (as `docker run` uses 125 for its own failures).
    pub const EXIT_SANDBOX: u8 = 125;
    /// Bad input on the command line.
    pub const EXIT_USAGE: u8 = 2;

    pub fn sandbox(error: impl Into<anyhow::Error>) -> Failure {
        Failure {
            error: error.into(),
            code: Self::EXIT_SANDBOX,
        }
    }

    pub fn usage(error: impl Into<anyhow::Error>) -> Failure {
        Failure {
            error: error.into(),
            code: Self::EXIT_USAGE,
        }
    }

    pub fn is_broken_pipe(&self) -> bool {
        self.error
            .chain()
            .filter_map(|e| e.downcast_ref::<std::io::Error>())
            .any(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    }
}

/// Printed as the terminal words it ([`advice::describe`]).
impl From<SandboxError> for Failure {
    fn from(err: SandboxError) -> Self {
        match err {
            SandboxError::UnknownLanguage { .. } => Failure::usage(advice::Described(err)),
            err => Failure::sandbox(advice::Described(err)),
        }
    }
}

/// Local failures (writing output, saving a file): exit 1.
impl From<std::io::Error> for Failure {
    fn from(err: std::io::Error) -> Self {
        Failure {
            error: err.into(),
            code: 1,
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Failure { error, code: 1 }
    }
}
