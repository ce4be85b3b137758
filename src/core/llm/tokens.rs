//! Counting tokens to fit a conversation in a model's context window.
//!
//! OpenAI's model families have public tokenizers (`o200k_base` for GPT-4o, o-series,
//! GPT-4.1 and GPT-5; `cl100k_base` for GPT-4 and GPT-3.5): those are counted exactly
//! with tiktoken (which model uses which is one of its facts in [`super::models`]).
//! Every other model (Claude, Llama, Qwen, …) is estimated: one token per 4 bytes of
//! text, rounded up, which overestimates English prose slightly and underestimates
//! dense code a little; trimming leaves the reply budget as margin.
//! Each message adds 4 tokens of framing and each image 800, in both methods.

use std::sync::{Arc, OnceLock};

use tiktoken_rs::CoreBPE;

use super::models::{self, Tokenizer};

/// Framing tokens per message (role markers, separators).
pub const PER_MESSAGE: usize = 4;
/// What an image is counted as: a mid-sized image at the providers' usual rates.
pub const PER_IMAGE: usize = 800;

/// How a model's tokens are counted.
#[derive(Clone)]
pub enum TokenCounter {
    /// An exact tokenizer.
    Exact {
        name: &'static str,
        bpe: Arc<CoreBPE>,
    },
    /// The documented estimate (bytes / 4).
    Estimate,
}

impl std::fmt::Debug for TokenCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.method())
    }
}

impl TokenCounter {
    /// The counter for a model, by its name. Loading a tokenizer takes a moment the
    /// first time; it is shared afterwards.
    pub fn for_model(model: &str) -> TokenCounter {
        match models::facts(model).tokenizer {
            Tokenizer::O200k => {
                static BPE: OnceLock<Option<Arc<CoreBPE>>> = OnceLock::new();
                let bpe = BPE.get_or_init(|| tiktoken_rs::o200k_base().ok().map(Arc::new));
                TokenCounter::exact("o200k_base", bpe)
            }
            Tokenizer::Cl100k => {
                static BPE: OnceLock<Option<Arc<CoreBPE>>> = OnceLock::new();
                let bpe = BPE.get_or_init(|| tiktoken_rs::cl100k_base().ok().map(Arc::new));
                TokenCounter::exact("cl100k_base", bpe)
            }
            Tokenizer::Estimate => TokenCounter::Estimate,
        }
    }

    /// The exact counter, or the estimate if its tables failed to load.
    fn exact(name: &'static str, bpe: &Option<Arc<CoreBPE>>) -> TokenCounter {
        match bpe {
            Some(bpe) => TokenCounter::Exact {
                name,
                bpe: bpe.clone(),
            },
            None => TokenCounter::Estimate,
        }
    }

    /// Tokens in a piece of text.
    pub fn count(&self, text: &str) -> usize {
        match self {
            TokenCounter::Exact { bpe, .. } => bpe.encode_ordinary(text).len(),
            TokenCounter::Estimate => text.len().div_ceil(4),
        }
    }

    /// How counts are made, for `%tokens` and verbose output.
    pub fn method(&self) -> &'static str {
        match self {
            TokenCounter::Exact { name, .. } => name,
            TokenCounter::Estimate => "estimate (bytes / 4)",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_models_are_counted_exactly() {
        let counter = TokenCounter::for_model("gpt-4o-mini");
        assert_eq!(counter.method(), "o200k_base");
        assert_eq!(counter.count("hello world"), 2);
        assert_eq!(
            TokenCounter::for_model("openai/gpt-4").method(),
            "cl100k_base"
        );
    }

    #[test]
    fn other_models_are_estimated() {
        let counter = TokenCounter::for_model("claude-sonnet-4-5");
        assert_eq!(counter.method(), "estimate (bytes / 4)");
        assert_eq!(counter.count("12345678a"), 3);
    }
}
