//! What the model is sent: the system message (the environment, the languages, how to
//! run code, custom instructions), the conversation translated from LMC messages into
//! the neutral chat shape for function or text mode, and trimming to the context window.
//!
//! Knows the sandbox's configuration and LMC; knows nothing of any provider's wire format.

use serde_json::json;

use crate::core::code_interpreter::{Backend, LanguageKind, SandboxConfig, Workspace};
use crate::core::llm::tokens::{TokenCounter, PER_IMAGE, PER_MESSAGE};
use crate::core::llm::{ChatMessage, ChatRequest, ChatRole, Part, Tool};
use crate::core::messages::{Message, MessageType, Role};

/// The name of the one tool offered in function mode.
pub const TOOL_NAME: &str = "execute";

/// What the model is told when a block was declined.
pub const DECLINED: &str = "The user declined to run this code.";

/// The conversation with a token count per message, kept in step.
#[derive(Debug, Clone)]
pub struct History {
    messages: Vec<Message>,
    tokens: Vec<usize>,
    counter: TokenCounter,
}

impl History {
    pub fn new(counter: TokenCounter) -> Self {
        History {
            messages: Vec::new(),
            tokens: Vec::new(),
            counter,
        }
    }

    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    pub fn push(&mut self, message: Message) {
        self.tokens.push(self.count(&message));
        self.messages.push(message);
    }

    pub fn replace(&mut self, messages: Vec<Message>) {
        self.tokens = messages.iter().map(|m| self.count(m)).collect();
        self.messages = messages;
    }

    pub fn truncate(&mut self, len: usize) {
        self.messages.truncate(len);
        self.tokens.truncate(len);
    }

    pub fn total_tokens(&self) -> usize {
        self.tokens.iter().sum()
    }

    pub fn counter(&self) -> &TokenCounter {
        &self.counter
    }

    fn count(&self, message: &Message) -> usize {
        PER_MESSAGE
            + match message.kind {
                MessageType::Image => PER_IMAGE,
                _ => self.counter.count(&message.content),
            }
    }
}

/// How a request is shaped.
#[derive(Debug, Clone)]
pub struct Shape<'a> {
    pub model: &'a str,
    pub system: &'a str,
    pub functions: bool,
    pub vision: bool,
    pub context_window: usize,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub languages: &'a [String],
}

/// A request and what trimming dropped from it.
#[derive(Debug)]
pub struct Prepared {
    pub request: ChatRequest,
    /// Messages left out, oldest first, to fit the window.
    pub dropped: usize,
    /// Tokens counted for what was sent (system, tools, messages).
    pub tokens: usize,
}

/// Builds the request: trims the oldest exchanges (a user message and everything up to
/// the next one) until the rest fits the window minus the reply budget. The system
/// message and the latest exchange are always sent.
pub fn prepare(history: &History, shape: &Shape<'_>) -> Prepared {
    let tools = if shape.functions {
        vec![execute_tool(shape.languages)]
    } else {
        Vec::new()
    };
    let counter = history.counter();
    let fixed = PER_MESSAGE
        + counter.count(shape.system)
        + tools
            .iter()
            .map(|t| counter.count(&t.parameters.to_string()) + counter.count(&t.description))
            .sum::<usize>();
    let reply = shape
        .max_tokens
        .map(|t| t as usize)
        .unwrap_or_else(|| (shape.context_window / 4).min(4096));
    let budget = shape.context_window.saturating_sub(reply);
    let messages = history.messages();
    let starts: Vec<usize> = messages
        .iter()
        .enumerate()
        .filter(|(_, m)| m.role == Role::User)
        .map(|(i, _)| i)
        .collect();
    let mut total = fixed + history.total_tokens();
    let latest = starts.last().copied().unwrap_or(0);
    let mut from = 0;
    for &start in starts.iter().filter(|&&s| s > 0) {
        if total <= budget {
            break;
        }
        total -= history.tokens[from..start].iter().sum::<usize>();
        from = start;
        if start == latest {
            break;
        }
    }
    let request = ChatRequest {
        model: shape.model.to_string(),
        system: shape.system.to_string(),
        messages: to_chat(&messages[from..], shape.functions, shape.vision, from),
        tools,
        max_tokens: shape.max_tokens,
        temperature: shape.temperature,
    };
    Prepared {
        request,
        dropped: from,
        tokens: total,
    }
}

/// The `execute` tool, its language list being the enabled languages.
pub fn execute_tool(languages: &[String]) -> Tool {
    Tool {
        name: TOOL_NAME.into(),
        description: "Run code in the sandbox and get its output. State persists between \
                      calls of the same language (variables, imports, working directory)."
            .into(),
        parameters: json!({
            "type": "object",
            "properties": {
                "language": {"type": "string", "enum": languages,
                             "description": "The language of the code."},
                "code": {"type": "string", "description": "The code to run."}
            },
            "required": ["language", "code"]
        }),
    }
}

/// Translates LMC messages into chat messages. In function mode a code message becomes
/// an `execute` call and the console and image messages after it its result; in text
/// mode code is a fenced block and output a user message. `offset` keeps call ids stable
/// when old messages were trimmed.
pub fn to_chat(
    messages: &[Message],
    functions: bool,
    vision: bool,
    offset: usize,
) -> Vec<ChatMessage> {
    let mut chat = Transcript::default();
    let mut i = 0;
    while i < messages.len() {
        let m = &messages[i];
        match (m.role, m.kind) {
            (Role::Assistant, MessageType::Code) => {
                let (result, next) = RecordedResult::after(messages, i + 1, vision);
                if functions {
                    chat.tool_call(format!("call_{}", offset + i), m, result);
                } else {
                    chat.fenced_block(m, result);
                }
                i = next;
                continue;
            }
            (Role::User, MessageType::Image) | (Role::Computer, MessageType::Image) => {
                chat.push(ChatRole::User, image_part(m, vision))
            }
            (Role::User, _) => chat.push(ChatRole::User, Part::Text(m.content.clone())),
            (Role::Assistant, _) => chat.push(ChatRole::Assistant, Part::Text(m.content.clone())),
            // Output with no block before it (a block run by the user directly).
            (Role::Computer, _) => chat.push(
                ChatRole::User,
                Part::Text(format!("Output:\n{}", m.content)),
            ),
        }
        i += 1;
    }
    chat.0
}

/// Chat messages being built: parts of one role in a row make one message.
#[derive(Default)]
struct Transcript(Vec<ChatMessage>);

impl Transcript {
    fn push(&mut self, role: ChatRole, part: Part) {
        match self.0.last_mut() {
            Some(last) if last.role == role => last.parts.push(part),
            _ => self.0.push(ChatMessage {
                role,
                parts: vec![part],
            }),
        }
    }

    /// Function mode: the block as an `execute` call, its result as the call's result
    /// (images as pictures where the model sees them, else as notes in the text).
    fn tool_call(&mut self, id: String, code: &Message, result: RecordedResult) {
        let language = code.format.clone().unwrap_or_default();
        self.push(
            ChatRole::Assistant,
            Part::ToolCall {
                id: id.clone(),
                name: TOOL_NAME.into(),
                arguments: json!({"language": language, "code": code.content}).to_string(),
            },
        );
        let (pictures, notes): (Vec<Part>, Vec<Part>) = result
            .images
            .into_iter()
            .partition(|p| matches!(p, Part::Image { .. }));
        let mut output = result.output;
        for note in notes {
            if let Part::Text(t) = note {
                output.push('\n');
                output.push_str(&t);
            }
        }
        self.push(
            ChatRole::User,
            Part::ToolResult {
                id,
                content: output,
                images: pictures,
            },
        );
    }

    /// Text mode: the block as a fenced block, its output as a user message.
    fn fenced_block(&mut self, code: &Message, result: RecordedResult) {
        let language = code.format.as_deref().unwrap_or_default();
        self.push(
            ChatRole::Assistant,
            Part::Text(format!(
                "```{language}\n{}\n```",
                code.content.trim_end_matches('\n')
            )),
        );
        self.push(
            ChatRole::User,
            Part::Text(format!("Code output:\n{}", result.output)),
        );
        for image in result.images {
            self.push(ChatRole::User, image);
        }
    }
}

/// What a block's computer messages say: its output (or that it did not run, or printed
/// nothing) and its images.
struct RecordedResult {
    output: String,
    images: Vec<Part>,
}

impl RecordedResult {
    /// The computer messages from `start` on; also where they end.
    fn after(messages: &[Message], start: usize, vision: bool) -> (RecordedResult, usize) {
        let mut output = String::new();
        let mut images = Vec::new();
        let mut ran = false;
        let mut j = start;
        while j < messages.len() && messages[j].role == Role::Computer {
            match messages[j].kind {
                MessageType::Console => {
                    ran = true;
                    output.push_str(&messages[j].content);
                }
                MessageType::Image => {
                    ran = true;
                    images.push(image_part(&messages[j], vision));
                }
                _ => {}
            }
            j += 1;
        }
        if !ran {
            output = "(this code was not run)".into();
        } else if output.is_empty() {
            output = "(no output)".into();
        }
        (RecordedResult { output, images }, j)
    }
}

fn image_part(m: &Message, vision: bool) -> Part {
    let format = m.format.as_deref().unwrap_or("");
    match format.strip_prefix("base64.") {
        Some(kind) if vision => Part::Image {
            media_type: format!("image/{kind}"),
            data: m.content.clone(),
        },
        Some(kind) => Part::Text(format!(
            "[The code displayed an image ({}, {} KB). The user can see it; you cannot.]",
            kind.to_uppercase(),
            m.content.len() * 3 / 4 / 1024
        )),
        None => Part::Text(format!("[image: {}]", m.content)),
    }
}

/// oi's system message for a sandbox configuration.
pub fn system_message(sandbox: &SandboxConfig, functions: bool, max_output: usize) -> String {
    let mut s = String::from(
        "You are oi (Open Interpreter), a world-class programmer who completes any goal by \
         running code. When you run code, it is executed for real and you see its output.\n\n\
         Environment:\n",
    );
    match sandbox.backend {
        Backend::Docker => {
            s.push_str(
                "- Code runs in a sandboxed Linux container (Debian 12), not on the user's own \
                 machine, as an unprivileged user.\n",
            );
            s.push_str(&match &sandbox.workspace {
                Workspace::ReadWrite(dir) => format!(
                    "- Working directory: /workspace, the user's folder {} mounted read-write: \
                     files you create or change there are the user's.\n",
                    dir.display()
                ),
                Workspace::ReadOnly(dir) => format!(
                    "- Working directory: /workspace, the user's folder {} mounted read-only: \
                     read the files there, write scratch files to /tmp.\n",
                    dir.display()
                ),
                Workspace::Copy(dir) => format!(
                    "- Working directory: /workspace, a copy of the user's folder {}: changes \
                     stay in the sandbox unless the user copies them out.\n",
                    dir.display()
                ),
                Workspace::Empty => "- Working directory: /workspace, an empty folder of this \
                                     sandbox (the user's files are not in it).\n"
                    .to_string(),
            });
            if let Some(notice) = &sandbox.workspace_notice {
                s.push_str(&format!("- Note: {notice}\n"));
            }
            if sandbox.hardening.network {
                s.push_str("- Network access is on.\n");
            } else {
                s.push_str(
                    "- There is no network access: installing packages or fetching URLs will \
                     fail, so work with what is installed.\n",
                );
            }
            if sandbox.image.is_none() && sandbox.languages.resolve("python").is_ok() {
                s.push_str(
                    "- Python has numpy, pandas and matplotlib; figures you show are displayed \
                     to the user.\n",
                );
            }
        }
        Backend::Host => {
            s.push_str(
                "- Code runs directly on the user's computer (unsafe mode): be careful, and \
                 never delete or overwrite anything without being asked.\n",
            );
            if let Some(dir) = &sandbox.host.workdir {
                s.push_str(&format!("- Working directory: {}.\n", dir.display()));
            }
        }
    }
    // The configured set (limited functions): the model is told these are all there is.
    s.push_str("- Languages (the only ones available):\n");
    for language in sandbox.languages.iter() {
        let how = match &language.kind {
            LanguageKind::Python => {
                "stateful like a Jupyter notebook: variables and imports persist between \
                 blocks, and the value of a final expression is shown"
            }
            LanguageKind::Shell => {
                "bash; the working directory and variables persist between blocks"
            }
            LanguageKind::File { .. } => "each block runs as a separate program",
        };
        s.push_str(&format!("  - {}: {how}\n", language.name));
    }
    s.push_str(&format!(
        "- stdin is closed: programs cannot read input, so never call input().\n\
         - Output longer than {max_output} characters is cut in the middle.\n\n"
    ));
    if functions {
        s.push_str(&format!(
            "To run code, call the `{TOOL_NAME}` tool with the language and the code.\n"
        ));
    } else {
        s.push_str(&format!(
            "To run code, write it in a fenced markdown block tagged with its language, for \
             example:\n{}\nThe block runs as soon as you close it, and its output comes back \
             in the next message. Write at most one block per reply. Untagged blocks and blocks \
             tagged text, json or output are shown, not run.\n",
            example_block(sandbox)
        ));
    }
    s.push_str(
        "Work in small steps and check each result before going on. When the task is done, \
         reply to the user in plain words without code.",
    );
    s
}

/// A fenced block in the first language offered, for text mode's instructions: an
/// example in a language the model may not use would invite a refused block.
fn example_block(sandbox: &SandboxConfig) -> String {
    let (tag, code) = match sandbox.languages.iter().next() {
        None => ("python", "print(6 * 7)"),
        Some(language) => match &language.kind {
            LanguageKind::Python => ("python", "print(6 * 7)"),
            LanguageKind::Shell => ("shell", "echo $((6 * 7))"),
            LanguageKind::File { .. } => (language.name.as_str(), "(the program)"),
        },
    };
    format!("```{tag}\n{code}\n```")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::messages::Message;

    fn history(messages: Vec<Message>) -> History {
        let mut h = History::new(TokenCounter::Estimate);
        h.replace(messages);
        h
    }

    fn shape(window: usize) -> Shape<'static> {
        Shape {
            model: "m",
            system: "sys",
            functions: false,
            vision: false,
            context_window: window,
            max_tokens: Some(10),
            temperature: None,
            languages: &[],
        }
    }

    #[test]
    fn code_and_output_become_a_call_and_its_result() {
        let chat = to_chat(
            &[
                Message::user("go"),
                Message::assistant("ok"),
                Message::code("python", "x = 6*7"),
                Message::console(""),
                Message::code("python", "print(x)"),
                Message::console("42\n"),
                Message::image("png", "AAAA"),
                Message::code("shell", "ls"),
            ],
            true,
            false,
            0,
        );
        assert_eq!(chat.len(), 7);
        assert!(matches!(&chat[1].parts[1], Part::ToolCall { id, .. } if id == "call_2"));
        assert!(
            matches!(&chat[2].parts[0], Part::ToolResult { content, .. } if content == "(no output)")
        );
        assert!(matches!(&chat[4].parts[0], Part::ToolResult { content, .. }
            if content.starts_with("42\n\n[The code displayed an image (PNG")));
        assert!(
            matches!(&chat[6].parts[0], Part::ToolResult { content, .. } if content == "(this code was not run)")
        );
        let text = to_chat(
            &[Message::code("python", "1"), Message::console("1\n")],
            false,
            false,
            0,
        );
        assert_eq!(text[0].parts[0], Part::Text("```python\n1\n```".into()));
        assert_eq!(text[1].parts[0], Part::Text("Code output:\n1\n".into()));
    }

    #[test]
    fn trimming_drops_the_oldest_exchanges_and_keeps_the_latest() {
        let big = "x".repeat(400); // 100 tokens each
        let h = history(vec![
            Message::user(&big),
            Message::assistant(&big),
            Message::user(&big),
            Message::assistant(&big),
            Message::user("last"),
        ]);
        let all = prepare(&h, &shape(10_000));
        assert_eq!(all.dropped, 0);
        assert_eq!(all.tokens, 5 + 4 * 104 + 5);
        let trimmed = prepare(&h, &shape(300));
        assert_eq!(trimmed.dropped, 2);
        assert_eq!(trimmed.request.messages.len(), 3);
        let latest = prepare(&h, &shape(200));
        assert_eq!(latest.dropped, 4);
        assert_eq!(latest.request.messages.len(), 1);
        // The latest exchange is sent even when it alone is too long.
        let tiny = prepare(&h, &shape(5));
        assert_eq!(tiny.dropped, 4);
        assert_eq!(
            tiny.request.messages,
            vec![ChatMessage::text(ChatRole::User, "last")]
        );
    }

    #[test]
    fn the_system_message_names_only_the_offered_languages() {
        use crate::core::code_interpreter::{Language, Languages};
        let mut sandbox = SandboxConfig {
            languages: Languages::choose(&["python".into()], Vec::new()).unwrap(),
            ..SandboxConfig::default()
        };
        let text = system_message(&sandbox, false, 1000);
        assert!(text.contains("  - python: stateful"), "{text}");
        assert!(!text.contains("  - shell"), "{text}");
        assert!(text.contains("```python\nprint(6 * 7)\n```"), "{text}");
        sandbox.languages = Languages::choose(
            &["bash".into()],
            vec![Language::file("node", "js", "node {file}")],
        )
        .unwrap();
        let text = system_message(&sandbox, false, 1000);
        assert!(!text.to_lowercase().contains("python"), "{text}");
        assert!(text.contains("  - shell: bash"), "{text}");
        assert!(text.contains("  - node: each block"), "{text}");
        assert!(text.contains("```shell\necho $((6 * 7))\n```"), "{text}");
    }
}
