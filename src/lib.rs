//! oi: Open Interpreter rebuilt in Rust. A language model runs code to do real work,
//! and every block runs in a long-lived, hardened, per-session Docker container.
//!
//! - [`core`] is silent and stateless: everything arrives as values and leaves as
//!   events. Nothing in it prints, reads configuration files or the environment.
//! - [`terminal_interface`] renders core's events for a person at a terminal and turns
//!   flags into core's configuration values. Front ends depend on core, never the reverse.

pub mod core;
pub mod terminal_interface;
