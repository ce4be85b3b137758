//! The core of oi: everything that runs code for a model, with no terminal, no printing
//! and no configuration files. Front ends (the terminal, servers, tests) pass plain
//! configuration values in and consume events out.
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod code_interpreter;
pub mod config;
pub mod error_chain;
pub mod hostfs;
pub mod llm;
pub mod messages;
pub mod protocol;
pub mod respond;
pub mod text;
