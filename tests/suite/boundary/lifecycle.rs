//! Trust-boundary regressions: see mod.rs.
