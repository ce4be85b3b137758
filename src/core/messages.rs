//! Messages in Open Interpreter's LMC shape: what a conversation is made of, what is
//! saved, and what front ends receive as streamed chunks.
//!
//! Confirmations, which Open Interpreter sends as computer chunks too, are events of
//! their own (`protocol::Confirmation`): they carry an id and are never stored.
//!
//! A [`Message`] is complete (`{role, type, format?, content}`); a [`Chunk`] is a piece
//! of one while it streams, bracketed by a chunk with `start: true` and one with
//! `end: true`. Concatenating the contents of a message's chunks gives its content.
//! The exact JSON, with examples, is in `docs/messages.md`.
//!
//! This module knows nothing of providers' wire formats; `respond::prompt` translates a
//! conversation into what a model is sent.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Who a message is from. `computer` is the sandbox: console output and images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
    Computer,
}

/// What a message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MessageType {
    /// Prose (`format` absent).
    Message,
    /// A block to run; `format` is its language.
    Code,
    /// What a block printed; `format` is `output` (or `active_line` in chunks).
    Console,
    /// An image; `format` is `base64.png`, `base64.jpeg`, … or `path`.
    Image,
}

/// `format` of console output.
pub const FORMAT_OUTPUT: &str = "output";
/// `format` of the console chunk naming the line that is running.
pub const FORMAT_ACTIVE_LINE: &str = "active_line";

/// One complete message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Message {
    pub role: Role,
    #[serde(rename = "type")]
    pub kind: MessageType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    pub content: String,
}

impl Message {
    pub fn user(text: impl Into<String>) -> Self {
        Message::new(Role::User, MessageType::Message, None, text)
    }

    pub fn assistant(text: impl Into<String>) -> Self {
        Message::new(Role::Assistant, MessageType::Message, None, text)
    }

    pub fn code(language: impl Into<String>, code: impl Into<String>) -> Self {
        Message::new(
            Role::Assistant,
            MessageType::Code,
            Some(language.into()),
            code,
        )
    }

    pub fn console(output: impl Into<String>) -> Self {
        Message::new(
            Role::Computer,
            MessageType::Console,
            Some(FORMAT_OUTPUT.into()),
            output,
        )
    }

    /// An image from the sandbox, base64-encoded; `format` is e.g. `png`.
    pub fn image(format: &str, base64: impl Into<String>) -> Self {
        Message::new(
            Role::Computer,
            MessageType::Image,
            Some(format!("base64.{format}")),
            base64,
        )
    }

    pub fn new(
        role: Role,
        kind: MessageType,
        format: Option<String>,
        content: impl Into<String>,
    ) -> Self {
        Message {
            role,
            kind,
            format,
            content: content.into(),
        }
    }

    /// The chunks that stream this message: start, content, end.
    pub fn chunks(&self) -> [Chunk; 3] {
        let head = Chunk {
            role: self.role,
            kind: self.kind,
            format: self.format.clone(),
            content: None,
            start: false,
            end: false,
        };
        [
            Chunk {
                start: true,
                ..head.clone()
            },
            Chunk {
                content: Some(self.content.clone()),
                ..head.clone()
            },
            Chunk { end: true, ..head },
        ]
    }
}

/// A streamed piece of a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Chunk {
    pub role: Role,
    #[serde(rename = "type")]
    pub kind: MessageType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub start: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub end: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Chunk {
    pub fn start(role: Role, kind: MessageType, format: Option<String>) -> Self {
        Chunk {
            role,
            kind,
            format,
            content: None,
            start: true,
            end: false,
        }
    }

    pub fn end(role: Role, kind: MessageType, format: Option<String>) -> Self {
        Chunk {
            start: false,
            end: true,
            ..Chunk::start(role, kind, format)
        }
    }

    pub fn content(
        role: Role,
        kind: MessageType,
        format: Option<String>,
        content: impl Into<String>,
    ) -> Self {
        Chunk {
            content: Some(content.into()),
            start: false,
            ..Chunk::start(role, kind, format)
        }
    }
}

/// Reads a conversation written as a JSON array or as JSON lines (one message per line,
/// the form conversations are saved in). Errors name the line.
pub fn parse_conversation(text: &str) -> Result<Vec<Message>, String> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        return serde_json::from_str(trimmed).map_err(|e| format!("not a list of messages: {e}"));
    }
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line).map_err(|e| format!("line {}: not a message: {e}", i + 1))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Message> {
        vec![
            Message::user("What is 6*7?"),
            Message::assistant("Let me compute it."),
            Message::code("python", "x = 6*7\nprint(x)"),
            Message::console("42\n"),
            Message::image("png", "iVBORw0KGgo="),
            Message::assistant("It is 42."),
        ]
    }

    #[test]
    fn serialises_in_lmc_shape() {
        let json = serde_json::to_string(&Message::code("python", "print(1)")).unwrap();
        assert_eq!(
            json,
            r#"{"role":"assistant","type":"code","format":"python","content":"print(1)"}"#
        );
        let json = serde_json::to_string(&Message::user("hi")).unwrap();
        assert_eq!(json, r#"{"role":"user","type":"message","content":"hi"}"#);
    }

    #[test]
    fn a_conversation_round_trips_losslessly() {
        let messages = sample();
        let array = serde_json::to_string(&messages).unwrap();
        assert_eq!(parse_conversation(&array).unwrap(), messages);
        let lines: String = messages
            .iter()
            .map(|m| serde_json::to_string(m).unwrap() + "\n")
            .collect();
        assert_eq!(parse_conversation(&lines).unwrap(), messages);
    }

    #[test]
    fn chunks_bracket_the_content() {
        let chunks = Message::console("42\n").chunks();
        let json: Vec<String> = chunks
            .iter()
            .map(|c| serde_json::to_string(c).unwrap())
            .collect();
        assert_eq!(
            json,
            [
                r#"{"role":"computer","type":"console","format":"output","start":true}"#,
                r#"{"role":"computer","type":"console","format":"output","content":"42\n"}"#,
                r#"{"role":"computer","type":"console","format":"output","end":true}"#,
            ]
        );
    }

    #[test]
    fn a_bad_line_is_named() {
        let err = parse_conversation(
            "{\"role\":\"user\",\"type\":\"message\",\"content\":\"a\"}\n{oops}\n",
        )
        .unwrap_err();
        assert!(err.starts_with("line 2:"), "{err}");
        let err =
            parse_conversation(r#"{"role":"robot","type":"message","content":"a"}"#).unwrap_err();
        assert!(err.contains("robot"), "{err}");
    }
}
