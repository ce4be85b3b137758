//! What can go wrong talking to a model: what happened, with the facts a front end needs
//! to say what to change (the URL, the model, where the key comes from). The messages
//! name no command-line flag: the front end words its own advice from the facts
//! (`protocol::Facts`). The loop retries the errors [`LlmError::is_retryable`] says are
//! passing, reports the others, and keeps the conversation either way.

use std::time::Duration;

pub type Result<T, E = LlmError> = std::result::Result<T, E>;

/// A failure of the model's server or of the stream, not of the user's code.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// 401/403: the key is missing or rejected. Not retried. `key_setting` says where
    /// the key comes from (`Endpoint::key_setting`).
    #[error("{url} rejected the API key (HTTP {status}): {detail}")]
    Auth {
        url: String,
        status: u16,
        detail: String,
        key_setting: String,
    },

    /// The server does not know the model. Not retried.
    #[error("{}", unknown_model_message(.model, .url, .available))]
    UnknownModel {
        model: String,
        url: String,
        available: Vec<String>,
    },

    /// Nothing answered at the URL (refused, DNS, TLS, connect timeout). Retried.
    #[error("could not reach the model server at {url}: {detail}")]
    Connect { url: String, detail: String },

    /// 429: retried with backoff, honouring `Retry-After`.
    #[error("{url} is rate limiting requests (HTTP 429): {detail}")]
    RateLimited {
        url: String,
        detail: String,
        retry_after: Option<Duration>,
    },

    /// 5xx or an overloaded stream: retried with backoff.
    #[error("the model server at {url} failed (HTTP {status}): {detail}")]
    Server {
        url: String,
        status: u16,
        detail: String,
    },

    /// Any other 4xx: the request itself is wrong (often: too long for the model). Not
    /// retried.
    #[error("the model server at {url} refused the request (HTTP {status}): {detail}")]
    Rejected {
        url: String,
        status: u16,
        detail: String,
    },

    /// The server does not support tool calling; the loop switches to text mode.
    #[error("the model does not support tool calling: {detail}")]
    ToolsUnsupported { detail: String },

    /// No data for longer than the idle timeout. Retried if nothing was shown yet.
    #[error("the model's stream stalled: nothing arrived for {} s", .after.as_secs())]
    Stalled { after: Duration },

    /// The whole reply took longer than the endpoint's `reply_timeout` (a server that
    /// trickles keep-alives just inside the idle timeout). Not retried.
    #[error("the model's reply took longer than {} s, the most oi waits for one (reply_timeout); it was stopped", .after.as_secs())]
    TooSlow { after: Duration },

    /// The stream ended before the reply was complete. Retried if nothing was shown yet.
    #[error("the model's stream ended before the reply was complete ({detail})")]
    Truncated { detail: String },

    /// The server sent something that is not the protocol. Not retried.
    #[error("the model server sent malformed data ({detail}): {text}")]
    Malformed { detail: String, text: String },

    /// The reply, or the stream carrying it, grew past a limit (`what` says which): the
    /// stream was dropped. What was shown is kept. Not retried: the same request would
    /// likely run away again.
    #[error("{what} exceeded {}; it was stopped", size(*.limit))]
    ReplyTooLarge { what: &'static str, limit: u64 },

    /// The HTTP client could not be set up.
    #[error("could not set up the HTTP client: {0}")]
    Client(String),
}

/// A size for messages: `4 MiB`, `512 KiB`, `1000 bytes`.
pub(crate) fn size(bytes: u64) -> String {
    const KIB: u64 = 1024;
    for (unit, name) in [(KIB * KIB * KIB, "GiB"), (KIB * KIB, "MiB"), (KIB, "KiB")] {
        if bytes >= unit && bytes % unit == 0 {
            return format!("{} {name}", bytes / unit);
        }
    }
    format!("{bytes} bytes")
}

fn unknown_model_message(model: &str, url: &str, available: &[String]) -> String {
    let mut msg = format!("the model server at {url} does not know the model `{model}`");
    if !available.is_empty() {
        const SHOWN: usize = 30;
        let mut list = available[..available.len().min(SHOWN)].join(", ");
        if available.len() > SHOWN {
            list.push_str(&format!(", … ({} more)", available.len() - SHOWN));
        }
        msg.push_str(&format!("\nIt offers: {list}"));
    }
    msg
}

impl LlmError {
    /// Whether trying the same request again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            LlmError::Connect { .. }
            | LlmError::RateLimited { .. }
            | LlmError::Server { .. }
            | LlmError::Stalled { .. }
            | LlmError::Truncated { .. } => true,
            LlmError::Auth { .. }
            | LlmError::UnknownModel { .. }
            | LlmError::Rejected { .. }
            | LlmError::ToolsUnsupported { .. }
            | LlmError::Malformed { .. }
            | LlmError::ReplyTooLarge { .. }
            | LlmError::TooSlow { .. }
            | LlmError::Client(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(size(4 << 20), "4 MiB");
        assert_eq!(size(1 << 30), "1 GiB");
        assert_eq!(size(512 * 1024), "512 KiB");
        assert_eq!(size(1000), "1000 bytes");
        assert_eq!(size((4 << 20) + 1), format!("{} bytes", (4 << 20) + 1));
        let e = LlmError::ReplyTooLarge {
            what: "the model's reply",
            limit: 4 << 20,
        };
        assert_eq!(
            e.to_string(),
            "the model's reply exceeded 4 MiB; it was stopped"
        );
        assert!(!e.is_retryable());
    }

    #[test]
    fn unknown_model_lists_what_the_server_offers() {
        let err = LlmError::UnknownModel {
            model: "gpt-9".into(),
            url: "http://x/v1".into(),
            available: vec!["a".into(), "b".into()],
        };
        assert_eq!(
            err.to_string(),
            "the model server at http://x/v1 does not know the model `gpt-9`\nIt offers: a, b"
        );
    }
}
