//! Regression tests for the trust boundary (docs/security.md): each reproduces an attack
//! from the sandbox, the model server or a project file and asserts what the host saw.
//! Named after the defect they pin (`d1_…` to `d16_…`).

mod files;
mod lifecycle;
mod model;
mod project;
mod runner;
mod terminal;
