//! Using oi's core as a library: one conversation, its events printed as JSON lines.
//!
//! ```sh
//! cargo run --example converse -- --api-base http://127.0.0.1:8181/v1 --model smollm2 "What is 6*7?"
//! cargo run --example converse -- --anthropic --model claude-sonnet-4-5 "List /workspace"
//! ```
//! Blocks run without asking (this is a demonstration); the sandbox image must exist
//! (`oi image build`). The key comes from `OPENAI_API_KEY` / `ANTHROPIC_API_KEY`.

use clap::Parser;
use oi::core::code_interpreter::Engine;
use oi::core::config::{Config, ToolMode};
use oi::core::llm::Endpoint;
use oi::core::protocol::{EventMsg, Request};
use oi::core::respond::Conversation;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "https://api.openai.com/v1")]
    api_base: String,
    #[arg(long, default_value = "gpt-4o-mini")]
    model: String,
    /// Speak Anthropic's Messages API.
    #[arg(long)]
    anthropic: bool,
    /// Text mode (fenced code blocks) instead of function calling.
    #[arg(long)]
    text_mode: bool,
    message: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let endpoint = if args.anthropic {
        let base = if args.api_base.contains("openai.com") {
            "https://api.anthropic.com".to_string()
        } else {
            args.api_base
        };
        Endpoint::anthropic(base, std::env::var("ANTHROPIC_API_KEY").ok())
    } else {
        Endpoint::openai(args.api_base, std::env::var("OPENAI_API_KEY").ok())
    };
    let mut config = Config::new(args.model, endpoint);
    config.auto_run = true;
    if args.text_mode {
        config.tool_mode = ToolMode::Text;
    }
    let engine = Engine::connect(config.sandbox.clone()).await?;
    let mut conversation = Conversation::start(config, engine)?;
    conversation.send(Request::message(args.message)).await;
    while let Some(event) = conversation.next_event().await {
        println!("{}", serde_json::to_string(&event)?);
        if let EventMsg::TurnEnded(_) = event.msg {
            break;
        }
    }
    conversation.shutdown().await;
    Ok(())
}
