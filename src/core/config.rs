//! The configuration a conversation runs with: one plain value, filled in by a front end
//! from its files, environment and flags. Core reads neither files nor the environment.
//!
//! Defaults that depend on the model (context window, vision, whether it can call
//! tools) are guessed from its name by [`ModelTraits::guess`] when not set.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::code_interpreter::SandboxConfig;
use super::llm::tokens::O200K_FAMILIES;
use super::llm::Endpoint;

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
    /// Guesses from the model's name. Unknown models get an 8k window (safe for local
    /// servers), no vision, and function calling.
    pub fn guess(model: &str) -> ModelTraits {
        let m = model.to_ascii_lowercase();
        let name = m.rsplit('/').next().unwrap_or(&m);
        let starts = |prefixes: &[&str]| prefixes.iter().any(|p| name.starts_with(p));
        let contains = |parts: &[&str]| parts.iter().any(|p| name.contains(p));
        let context_window = if starts(&["gpt-4.1"]) {
            1_047_576
        } else if starts(&["gpt-5"]) {
            400_000
        } else if starts(&["o1", "o3", "o4", "claude"]) {
            200_000
        } else if starts(&["gpt-4o", "gpt-4-turbo", "chatgpt-4o", "gpt-4.5"]) {
            128_000
        } else if starts(&["gpt-3.5"]) {
            16_385
        } else {
            // The original gpt-4, and unknown (often local) models.
            8_192
        };
        // OpenAI's current families all see images, and GPT-4 Turbo.
        let vision = starts(O200K_FAMILIES)
            || starts(&["gpt-4-turbo"])
            || (name.starts_with("claude")
                && !name.starts_with("claude-2")
                && !name.starts_with("claude-instant"))
            || contains(&["llava", "vision", "-vl", "pixtral", "gemma3"]);
        // Local models known to have no tool-calling template.
        let functions = !contains(&[
            "smollm",
            "tinyllama",
            "llama2",
            "llama-2",
            "codellama",
            "gemma:",
            "gemma-",
            "gemma2",
            "phi-2",
            "phi2",
            "phi3",
            "phi-3",
            "deepseek-coder",
            "starcoder",
            "orca-mini",
            "vicuna",
        ]);
        ModelTraits {
            context_window,
            vision,
            functions,
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
