//! The code interpreter: runs the blocks a model writes, in a long-lived, hardened,
//! per-session Docker container by default.
//!
//! Flow: [`Engine`] (Docker client + [`SandboxConfig`]) opens a [`Session`] — a
//! container whose main process is the runner from `images/runner/`, spoken to over
//! the container's attached stdin/stdout ([`protocol`]). [`Session::execute`] sends a
//! block and returns an [`Execution`]: a stream of [`ExecEvent`]s that ends with
//! exactly one `Done`; [`BlockOutput`] turns those events into what the model sees of
//! the block. The image is built from the recipe compiled into the binary ([`image`]).
//!
//! Left to others: rendering and prompting (front ends), deciding what to run (the
//! conversation loop).

mod connection;
pub mod docker;
mod error;
mod execution;
pub mod files;
mod host;
pub mod image;
mod language;
pub mod protocol;
mod result;
mod session;
mod settings;

pub use connection::{MAX_IMAGES_PER_BLOCK, MAX_IMAGE_BYTES_PER_BLOCK};
pub use docker::SandboxInfo;
pub use error::{Result, SandboxError};
pub use execution::{CollectedOutput, ExecEvent, ExecOutcome, ExecRequest, ExecStatus, Execution};
pub use image::BuildProgress;
pub use language::{Language, LanguageKind, Languages};
pub use result::{outcome_note, BlockOutput, BlockResult, Image, OutputBuffer, Shown};
pub use session::{Engine, Session};
pub use settings::{
    bytes, Backend, Hardening, Owner, OwnerState, SandboxConfig, Setting, Workspace,
};
