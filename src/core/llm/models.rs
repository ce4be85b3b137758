//! What oi knows about language models, by name, in one table: the context window,
//! whether a model calls tools reliably, whether it sees images, how its tokens are
//! counted, and its list price. Core reads it for a conversation's defaults
//! ([`crate::core::config::ModelTraits`]) and for trimming ([`super::tokens`]); the
//! terminal for `%tokens`; a benchmark for the cost of a run.
//!
//! A model is looked up by its name, lowercased, without a provider or organisation
//! prefix (`openai/gpt-4o`, `anthropic/claude-sonnet-4-5` and `ollama/phi3` are
//! `gpt-4o`, `claude-sonnet-4-5` and `phi3`). Each row of [`TABLE`] matches names that
//! start with its pattern (a family and its dated or tagged variants) or, for local
//! models whose names vary by packager, that contain it; a row states only the facts
//! it knows. For each fact the most specific matching row that states it decides
//! (the longest pattern; a prefix before a fragment of the same length), so
//! `gpt-4o-mini` takes its price from its own row and everything else from `gpt-4o`'s.
//! Unknown models get [`ModelFacts::UNKNOWN`].
//!
//! Knows names and numbers; knows nothing of providers' wire formats or of the sandbox.
//! Configuration overrides these facts (`Config::context_window`, `vision`,
//! `tool_mode`); the table is only what oi assumes when it is not told.

/// How a model's tokens are counted (see [`super::tokens`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tokenizer {
    /// OpenAI's `o200k_base` (GPT-4o onwards, the o-series): exact.
    O200k,
    /// OpenAI's `cl100k_base` (GPT-4, GPT-3.5, embeddings): exact.
    Cl100k,
    /// One token per 4 bytes: every model without a public tokenizer oi carries.
    Estimate,
}

/// A list price in dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    pub input: f64,
    pub output: f64,
}

impl Price {
    /// The cost in dollars of this many input and output tokens.
    pub fn cost(&self, input_tokens: u64, output_tokens: u64) -> f64 {
        (input_tokens as f64 * self.input + output_tokens as f64 * self.output) / 1e6
    }
}

/// Everything oi assumes about a model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelFacts {
    /// The context window in tokens (prompt and reply together).
    pub context_window: usize,
    /// Whether it calls tools reliably: `false` puts it in text mode (fenced blocks)
    /// when the tool mode is `auto`.
    pub functions: bool,
    /// Whether it accepts images.
    pub vision: bool,
    pub tokenizer: Tokenizer,
    /// The list price, where it is known (hosted models).
    pub price: Option<Price>,
}

impl ModelFacts {
    /// What an unknown model is assumed to be: an 8k window (safe for local servers,
    /// whose runtime window is often smaller than the model's own), tool calling (a
    /// server that refuses tools switches the conversation to text mode), no vision,
    /// tokens estimated, no price.
    pub const UNKNOWN: ModelFacts = ModelFacts {
        context_window: 8_192,
        functions: true,
        vision: false,
        tokenizer: Tokenizer::Estimate,
        price: None,
    };
}

/// How a row matches a normalised model name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// The name starts with it: a family and its variants (`gpt-4o-2024-08-06`).
    Prefix(&'static str),
    /// The name contains it: local models, whose names carry the family anywhere
    /// (`llava-phi3`, `qwen2.5-vl`, `bartowski-smollm2-gguf`).
    Contains(&'static str),
}

impl Pattern {
    fn matches(&self, name: &str) -> bool {
        match self {
            Pattern::Prefix(p) => name.starts_with(p),
            Pattern::Contains(p) => name.contains(p),
        }
    }

    /// Which of two matching rows is more specific: the longer pattern, and a prefix
    /// before a fragment of the same length.
    fn rank(&self) -> (usize, bool) {
        match self {
            Pattern::Prefix(p) => (p.len(), true),
            Pattern::Contains(p) => (p.len(), false),
        }
    }
}

/// One row of the table: a pattern and the facts it states (`None`: said elsewhere).
#[derive(Debug, Clone, Copy)]
pub struct Row {
    pub pattern: Pattern,
    pub context_window: Option<usize>,
    pub functions: Option<bool>,
    pub vision: Option<bool>,
    pub tokenizer: Option<Tokenizer>,
    pub price: Option<Price>,
}

const fn row(pattern: Pattern) -> Row {
    Row {
        pattern,
        context_window: None,
        functions: None,
        vision: None,
        tokenizer: None,
        price: None,
    }
}

const fn prefix(p: &'static str) -> Row {
    row(Pattern::Prefix(p))
}

const fn contains(p: &'static str) -> Row {
    row(Pattern::Contains(p))
}

impl Row {
    const fn window(mut self, tokens: usize) -> Row {
        self.context_window = Some(tokens);
        self
    }
    const fn vision(mut self, vision: bool) -> Row {
        self.vision = Some(vision);
        self
    }
    const fn functions(mut self, functions: bool) -> Row {
        self.functions = Some(functions);
        self
    }
    const fn tokens(mut self, tokenizer: Tokenizer) -> Row {
        self.tokenizer = Some(tokenizer);
        self
    }
    const fn price(mut self, input: f64, output: f64) -> Row {
        self.price = Some(Price { input, output });
        self
    }
    /// OpenAI's current families: the `o200k_base` tokenizer and images.
    const fn o200k(self) -> Row {
        self.tokens(Tokenizer::O200k).vision(true)
    }
}

/// The facts, by family. Prices are list prices per million input/output tokens
/// (standard tier, no caching); windows are the provider's documented context.
pub const TABLE: &[Row] = &[
    // OpenAI, GPT-4o onwards.
    prefix("gpt-5").o200k().window(400_000).price(1.25, 10.0),
    prefix("gpt-5-mini").price(0.25, 2.0),
    prefix("gpt-5-nano").price(0.05, 0.40),
    prefix("gpt-5-pro").price(15.0, 120.0),
    prefix("gpt-4.1").o200k().window(1_047_576).price(2.0, 8.0),
    prefix("gpt-4.1-mini").price(0.40, 1.60),
    prefix("gpt-4.1-nano").price(0.10, 0.40),
    prefix("gpt-4.5").o200k().window(128_000).price(75.0, 150.0),
    prefix("gpt-4o").o200k().window(128_000).price(2.50, 10.0),
    prefix("gpt-4o-mini").price(0.15, 0.60),
    prefix("gpt-4o-2024-05-13").price(5.0, 15.0),
    prefix("chatgpt-4o")
        .o200k()
        .window(128_000)
        .price(5.0, 15.0),
    // The o-series. o1-mini and o1-preview: a 128k window, no images, no tools;
    // o3-mini: no images.
    prefix("o1").o200k().window(200_000).price(15.0, 60.0),
    prefix("o1-mini")
        .window(128_000)
        .vision(false)
        .functions(false)
        .price(1.10, 4.40),
    prefix("o1-preview")
        .window(128_000)
        .vision(false)
        .functions(false),
    prefix("o1-pro").price(150.0, 600.0),
    prefix("o3").o200k().window(200_000).price(2.0, 8.0),
    prefix("o3-mini").vision(false).price(1.10, 4.40),
    prefix("o3-pro").price(20.0, 80.0),
    prefix("o4").o200k().window(200_000),
    prefix("o4-mini").price(1.10, 4.40),
    // OpenAI, before GPT-4o.
    prefix("gpt-4")
        .tokens(Tokenizer::Cl100k)
        .window(8_192)
        .price(30.0, 60.0),
    prefix("gpt-4-32k").window(32_768).price(60.0, 120.0),
    prefix("gpt-4-turbo")
        .window(128_000)
        .vision(true)
        .price(10.0, 30.0),
    // GPT-4 Turbo's previews.
    prefix("gpt-4-1106").window(128_000).price(10.0, 30.0),
    prefix("gpt-4-0125").window(128_000).price(10.0, 30.0),
    prefix("gpt-4-vision").window(128_000).price(10.0, 30.0),
    prefix("gpt-3.5")
        .tokens(Tokenizer::Cl100k)
        .window(16_385)
        .price(0.50, 1.50),
    prefix("text-embedding").tokens(Tokenizer::Cl100k),
    // Anthropic: a 200k window and images from Claude 3 on.
    prefix("claude").window(200_000).vision(true),
    prefix("claude-2").vision(false),
    prefix("claude-instant").window(100_000).vision(false),
    prefix("claude-3-haiku").price(0.25, 1.25),
    prefix("claude-3-opus").price(15.0, 75.0),
    prefix("claude-3-5-haiku").price(0.80, 4.0),
    prefix("claude-3-5-sonnet").price(3.0, 15.0),
    prefix("claude-3-7-sonnet").price(3.0, 15.0),
    prefix("claude-haiku-4").price(1.0, 5.0),
    prefix("claude-sonnet-4").price(3.0, 15.0),
    prefix("claude-opus-4").price(15.0, 75.0),
    prefix("claude-opus-4-5").price(5.0, 25.0),
    // Local models that see images.
    contains("llava").vision(true),
    contains("vision").vision(true),
    contains("-vl").vision(true),
    contains("pixtral").vision(true),
    contains("gemma3").vision(true),
    // Local models with no tool-calling template: text mode.
    contains("smollm").functions(false),
    contains("tinyllama").functions(false),
    contains("llama2").functions(false),
    contains("llama-2").functions(false),
    contains("codellama").functions(false),
    contains("gemma:").functions(false),
    contains("gemma-").functions(false),
    contains("gemma2").functions(false),
    contains("phi-2").functions(false),
    contains("phi2").functions(false),
    contains("phi3").functions(false),
    contains("phi-3").functions(false),
    contains("deepseek-coder").functions(false),
    contains("starcoder").functions(false),
    contains("orca-mini").functions(false),
    contains("vicuna").functions(false),
];

/// A model's name as the table knows it: lowercase, without the provider or
/// organisation before the last `/` (`openai/gpt-4o`, `openrouter/anthropic/claude-…`).
pub fn normalise(model: &str) -> String {
    let name = model.rsplit('/').next().unwrap_or(model);
    name.trim().to_ascii_lowercase()
}

/// What oi assumes about a model, by its name (see the module's documentation).
pub fn facts(model: &str) -> ModelFacts {
    let name = normalise(model);
    let mut rows: Vec<&Row> = TABLE.iter().filter(|r| r.pattern.matches(&name)).collect();
    // Most specific first; the sort is stable, so equal ranks keep the table's order.
    rows.sort_by_key(|r| std::cmp::Reverse(r.pattern.rank()));
    let unknown = ModelFacts::UNKNOWN;
    ModelFacts {
        context_window: rows
            .iter()
            .find_map(|r| r.context_window)
            .unwrap_or(unknown.context_window),
        functions: rows
            .iter()
            .find_map(|r| r.functions)
            .unwrap_or(unknown.functions),
        vision: rows.iter().find_map(|r| r.vision).unwrap_or(unknown.vision),
        tokenizer: rows
            .iter()
            .find_map(|r| r.tokenizer)
            .unwrap_or(unknown.tokenizer),
        price: rows.iter().find_map(|r| r.price).or(unknown.price),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price(input: f64, output: f64) -> Option<Price> {
        Some(Price { input, output })
    }

    #[test]
    fn unknown_models_get_the_documented_defaults() {
        for name in ["llama3.1", "qwen2.5-coder:7b", "my-own-model", ""] {
            assert_eq!(facts(name), ModelFacts::UNKNOWN, "{name}");
        }
        assert_eq!(
            ModelFacts::UNKNOWN,
            ModelFacts {
                context_window: 8_192,
                functions: true,
                vision: false,
                tokenizer: Tokenizer::Estimate,
                price: None,
            }
        );
    }

    #[test]
    fn a_variant_inherits_its_familys_facts_and_states_its_own() {
        assert_eq!(
            facts("gpt-4o-mini-2024-07-18"),
            ModelFacts {
                context_window: 128_000,
                functions: true,
                vision: true,
                tokenizer: Tokenizer::O200k,
                price: price(0.15, 0.60),
            }
        );
        assert_eq!(facts("gpt-4o").price, price(2.50, 10.0));
        let gpt4 = facts("gpt-4-0613");
        assert_eq!(
            (gpt4.context_window, gpt4.vision, gpt4.tokenizer),
            (8_192, false, Tokenizer::Cl100k)
        );
        assert_eq!(facts("gpt-4-turbo-2024-04-09").context_window, 128_000);
        assert_eq!(facts("gpt-4.1-nano").context_window, 1_047_576);
        assert_eq!(facts("gpt-5-mini").context_window, 400_000);
    }

    #[test]
    fn provider_prefixes_and_case_do_not_matter() {
        for name in [
            "openai/gpt-4o",
            "openrouter/openai/gpt-4o",
            "GPT-4o",
            " gpt-4o",
        ] {
            assert_eq!(facts(name), facts("gpt-4o"), "{name}");
        }
        assert_eq!(facts("anthropic/claude-sonnet-4-5").price, price(3.0, 15.0));
    }

    #[test]
    fn claude_and_the_o_series() {
        let sonnet = facts("claude-sonnet-4-5-20250929");
        assert_eq!(
            (sonnet.context_window, sonnet.vision, sonnet.tokenizer),
            (200_000, true, Tokenizer::Estimate)
        );
        assert!(!facts("claude-2.1").vision);
        assert_eq!(facts("claude-opus-4-1").price, price(15.0, 75.0));
        assert_eq!(facts("claude-opus-4-5").price, price(5.0, 25.0));
        let mini = facts("o1-mini");
        assert_eq!(
            (mini.context_window, mini.vision, mini.functions),
            (128_000, false, false)
        );
        assert_eq!(facts("o3-mini").price, price(1.10, 4.40));
        assert!(facts("o4-mini").vision);
    }

    #[test]
    fn local_families_are_recognised_anywhere_in_the_name() {
        let smol = facts("HuggingFaceTB/SmolLM2-135M-Instruct");
        assert_eq!(
            (smol.context_window, smol.functions, smol.vision),
            (8_192, false, false)
        );
        let llava = facts("llava-phi3:3.8b");
        assert!(llava.vision && !llava.functions);
        assert!(facts("qwen2.5-vl:7b").vision && facts("qwen2.5-vl:7b").functions);
    }

    #[test]
    fn costs_are_per_million_tokens() {
        let p = Price {
            input: 2.5,
            output: 10.0,
        };
        assert!((p.cost(1_000_000, 100_000) - 3.5).abs() < 1e-9);
    }
}
