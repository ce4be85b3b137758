//! The code interpreter: runs the blocks a model writes, in a long-lived, hardened,
//! per-session Docker container by default.
//!
//! Flow: [`Engine`] (a [`SandboxBackend`] + [`SandboxConfig`]) opens a [`Session`] — a
//! sandbox whose main process is the runner from `images/runner/`, spoken to over its
//! stdin/stdout ([`protocol`]), wherever the backend puts it: a Docker container
//! ([`docker`]), a child process on the host ([`host`]), or a backend given from
//! outside. [`Session::execute`] sends a block and returns an [`Execution`]: a stream
//! of [`ExecEvent`]s that ends with exactly one `Done`; [`BlockOutput`] turns those
//! events into what the model sees of the block. Files cross as tar archives
//! ([`files`]). The Docker backend's image is built from the recipe compiled into the
//! binary ([`image`]).
//!
//! Left to others: rendering, prompting and wording advice (front ends), deciding what
//! to run (the conversation loop).

mod backend;
mod connection;
pub mod docker;
mod error;
mod execution;
pub mod files;
mod host;
pub mod image;
mod language;
mod owner;
pub mod protocol;
mod result;
mod session;
mod settings;

pub use backend::{select, ImageStore, SandboxBackend, SandboxInfo, SandboxSpec, Started};
pub use connection::{Diagnostics, Transport, MAX_IMAGES_PER_BLOCK, MAX_IMAGE_BYTES_PER_BLOCK};
pub use docker::DockerBackend;
pub use error::{build_report, BuildHint, Capability, Result, SandboxError, Unreachable};
pub use execution::{CollectedOutput, ExecEvent, ExecOutcome, ExecRequest, ExecStatus, Execution};
pub use host::{HostBackend, HostConfig};
pub use image::BuildProgress;
pub use language::{Language, LanguageKind, Languages};
pub use owner::{host_identity, Owner, OwnerState};
pub use result::{outcome_note, BlockOutput, BlockResult, Image, OutputBuffer, Shown};
pub use session::{Engine, Session};
pub use settings::{bytes, Backend, Hardening, SandboxConfig, Setting, Workspace};
