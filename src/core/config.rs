//! The configuration a conversation runs with: one plain value, filled in by a front end
//! from its files, environment and flags. Core reads neither files nor the environment.
//!
//! Defaults that depend on the model (context window, vision, whether it can call
//! tools) come from oi's table of model facts ([`crate::core::llm::models`]) when not
//! set.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::code_interpreter::SandboxConfig;
use super::llm::{models, Endpoint};

/// [`Config::max_reply_bytes`] by default: 4 MiB, a hundred times a long real reply.
pub const DEFAULT_MAX_REPLY_BYTES: usize = 4 * 1024 * 1024;

/// How the model asks to run code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ToolMode {
    /// Function calling where the model is known to support it, text mode otherwise;
    /// a server that refuses tools switches the conversation to text mode.
    #[default]
    Auto,
    /// One `execute(language, code)` tool.
    Functions,
    /// Fenced markdown code blocks in the reply, for models without tools.
    Text,
}

/// Bounded retries of passing failures (429, 5xx, refused connections, stalls).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// The first wait; doubled each time, up to `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// The longest wait a server's `Retry-After` may ask for; longer asks wait this long.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 3,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(20),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

/// Everything a conversation needs.
#[derive(Debug, Clone)]
pub struct Config {
    pub model: String,
    pub endpoint: Endpoint,
    pub tool_mode: ToolMode,
    /// The model's context window in tokens; `None` guesses from the model name.
    pub context_window: Option<usize>,
    /// The reply budget in tokens; `None` lets the server decide (Anthropic: 4096).
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    /// Replaces oi's system message entirely (the environment description included).
    pub system_message: Option<String>,
    /// Appended to the system message.
    pub custom_instructions: Option<String>,
    /// Run blocks without asking.
    pub auto_run: bool,
    /// The most console output (in characters) the model is sent per block; the middle
    /// of longer output is cut, with a note saying how much.
    pub max_output: usize,
    /// Model replies per user message before the loop stops.
    pub max_iterations: usize,
    /// The most bytes one model reply may carry (prose, tool names and arguments); past
    /// it the stream is dropped with an error, what was shown is kept and the turn
    /// ends. A bound on what a runaway or hostile server can make oi hold.
    pub max_reply_bytes: usize,
    /// Whether the model can see images; `None` guesses from the model name.
    pub vision: Option<bool>,
    pub retry: RetryPolicy,
    /// Where and how code runs.
    pub sandbox: SandboxConfig,
}

impl Config {
    /// A configuration with oi's defaults for a model at an endpoint.
    pub fn new(model: impl Into<String>, endpoint: Endpoint) -> Self {
        Config {
            model: model.into(),
            endpoint,
            tool_mode: ToolMode::Auto,
            context_window: None,
            max_tokens: None,
            temperature: None,
            system_message: None,
            custom_instructions: None,
            auto_run: false,
            max_output: 2800,
            max_iterations: 30,
            max_reply_bytes: DEFAULT_MAX_REPLY_BYTES,
            vision: None,
            retry: RetryPolicy::default(),
            sandbox: SandboxConfig::default(),
        }
    }

    /// The model's traits, with configured values over guessed ones.
    pub fn traits(&self) -> ModelTraits {
        let guess = ModelTraits::guess(&self.model);
        ModelTraits {
            context_window: self.context_window.unwrap_or(guess.context_window),
            vision: self.vision.unwrap_or(guess.vision),
            functions: match self.tool_mode {
                ToolMode::Auto => guess.functions,
                ToolMode::Functions => true,
                ToolMode::Text => false,
            },
        }
    }
}

/// What a model can do, as far as oi needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelTraits {
    pub context_window: usize,
    pub vision: bool,
    /// Whether it is offered the `execute` tool (false: text mode).
    pub functions: bool,
}

impl ModelTraits {
    /// What oi assumes from the model's name ([`models::facts`]). Unknown models get an
    /// 8k window (safe for local servers), no vision, and function calling.
    pub fn guess(model: &str) -> ModelTraits {
        let facts = models::facts(model);
        ModelTraits {
            context_window: facts.context_window,
            vision: facts.vision,
            functions: facts.functions,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traits_are_guessed_and_overridden() {
        let t = ModelTraits::guess("gpt-4o-mini");
        assert_eq!(
            (t.context_window, t.vision, t.functions),
            (128_000, true, true)
        );
        let t = ModelTraits::guess("smollm2");
        assert_eq!(
            (t.context_window, t.vision, t.functions),
            (8_192, false, false)
        );
        let t = ModelTraits::guess("claude-sonnet-4-5");
        assert_eq!((t.context_window, t.vision), (200_000, true));
        let mut config = Config::new("smollm2", Endpoint::openai("http://x/v1", None));
        config.tool_mode = ToolMode::Functions;
        config.context_window = Some(1000);
        assert!(config.traits().functions);
        assert_eq!(config.traits().context_window, 1000);
    }
}
