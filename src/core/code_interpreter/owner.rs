//! Who owns a sandbox, and what one oi process can know of another: the rules every
//! backend applies before it removes a sandbox it did not start.
//!
//! A sandbox records its owner: the oi process (pid and start time, so a reused pid
//! does not look alive) and where that pid means something ([`host_identity`]: the
//! machine, PID namespace and user). An oi judges only owners with its own identity;
//! every other one is [`OwnerState::Elsewhere`] and its running sandboxes are never
//! taken for abandoned ([`super::SandboxInfo::is_abandoned`]). Where a backend stores
//! the owner (Docker labels, pod annotations) is the backend's business.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

/// Who owns a session's sandbox, recorded with it so that a later oi can tell a live
/// session from one a killed process left behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    /// The owner's process start time (clock ticks since boot), so a reused pid does
    /// not look alive.
    pub start_time: u64,
    /// Where the pid means something: the machine and PID namespace it runs in
    /// (see [`host_identity`]).
    pub host: String,
}

/// What one oi process can know of another's sandbox owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OwnerState {
    /// It runs on this machine, in this PID namespace.
    Alive,
    /// It ran on this machine, in this PID namespace, and is gone.
    Gone,
    /// It runs (or ran) on another host or in another PID namespace: its liveness
    /// cannot be known from here.
    Elsewhere,
}

impl Owner {
    /// This process.
    pub fn current() -> Owner {
        let pid = std::process::id();
        Owner {
            pid,
            start_time: process_start_time(pid).unwrap_or(0),
            host: host_identity().to_string(),
        }
    }

    /// The process part as a backend records it: `pid:start_time`.
    pub fn label(&self) -> String {
        format!("{}:{}", self.pid, self.start_time)
    }

    /// An owner from its recorded parts ([`Owner::label`] and the host identity).
    pub fn parse(label: &str, host: Option<&str>) -> Option<Owner> {
        let (pid, start) = label.split_once(':')?;
        Some(Owner {
            pid: pid.parse().ok()?,
            start_time: start.parse().ok()?,
            host: host.unwrap_or_default().to_string(),
        })
    }

    /// Whether the owning process runs, as far as this process can know: only a
    /// process of this machine and PID namespace can be looked up by its pid.
    pub fn state(&self) -> OwnerState {
        if self.host != host_identity() {
            return OwnerState::Elsewhere;
        }
        if process_start_time(self.pid).is_some_and(|t| t == self.start_time) {
            OwnerState::Alive
        } else {
            OwnerState::Gone
        }
    }

    /// Whether the owning process still runs (false when it cannot be known).
    pub fn is_alive(&self) -> bool {
        self.state() == OwnerState::Alive
    }
}

/// Where this process runs, as far as pids go: the kernel's boot id, this PID
/// namespace and this user, hashed. Two oi processes with the same identity see each
/// other's pids; with different ones (another host on a shared daemon, a dev container,
/// a CI job, another user, whose processes `/proc` may hide with `hidepid`) neither may
/// judge the other's liveness. When either fact is unreadable the identity
/// is unique to this process, so that nothing of anyone else's is ever swept.
pub fn host_identity() -> &'static str {
    static IDENTITY: OnceLock<String> = OnceLock::new();
    IDENTITY.get_or_init(|| {
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok();
        let pidns = std::fs::read_link("/proc/self/ns/pid").ok();
        let mut hash = Sha256::new();
        match (boot, pidns) {
            (Some(boot), Some(ns)) => {
                hash.update(boot.trim().as_bytes());
                hash.update(b"\n");
                hash.update(ns.to_string_lossy().as_bytes());
                hash.update(b"\n");
                hash.update(rustix::process::geteuid().as_raw().to_string().as_bytes());
            }
            _ => hash.update(format!("{}:{}", std::process::id(), new_session_id()).as_bytes()),
        }
        hash.finalize()
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect()
    })
}

fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22, counted after the parenthesised command name, which may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// A new session id: unique per process and over time, short enough to read.
pub fn new_session_id() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mixed = (nanos as u64) ^ ((std::process::id() as u64) << 40) ^ ((n as u64) << 20);
    format!("{:012x}", mixed & 0xffff_ffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_of_this_process_is_alive_and_a_made_up_one_is_not() {
        assert_eq!(Owner::current().state(), OwnerState::Alive);
        let gone = Owner {
            start_time: 1,
            ..Owner::current()
        };
        assert_eq!(gone.state(), OwnerState::Gone);
        assert_eq!(
            Owner::parse("12:34", Some("h")),
            Some(Owner {
                pid: 12,
                start_time: 34,
                host: "h".into(),
            })
        );
    }
}
