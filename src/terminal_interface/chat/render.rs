//! Draws a conversation's events for a person: prose with light markdown, code blocks
//! with syntax colours, console output set apart under its block, images saved to
//! files. `Style::Plain` (stdout not a terminal, or `--plain`) writes the same content
//! with no colour and no cursor movement: fenced code, raw output.
//!
//! Streaming: text is written as it arrives; when a line ends, a terminal gets the line
//! again, styled, in place (only if it did not wrap). Knows LMC chunks, not the loop.

use std::io::Write;
use std::path::PathBuf;

use base64::Engine as _;

use crate::core::messages::{Chunk, Message, MessageType, Role};
use crate::core::respond::Event;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Terminal,
    Plain,
}

const RESET: &str = "\x1b[0m";
const DIM: &str = "\x1b[2m";
const BOLD: &str = "\x1b[1m";
const CYAN: &str = "\x1b[36m";
const GREEN: &str = "\x1b[32m";
const YELLOW: &str = "\x1b[33m";
const MAGENTA: &str = "\x1b[35m";
const RED: &str = "\x1b[31m";

/// Which kind of message is being drawn.
#[derive(Debug, Clone, PartialEq)]
enum Open {
    None,
    Prose,
    Code(String),
    Console,
}

/// Renders events to `out` (stdout) and diagnostics to `err` (stderr).
pub struct Renderer<W: Write, E: Write> {
    pub style: Style,
    pub verbose: bool,
    out: W,
    err: E,
    open: Open,
    /// The current line as written so far (to restyle it when it ends).
    line: String,
    width: usize,
    image_dir: PathBuf,
    images: usize,
    /// Whether the last thing written ended a line.
    at_line_start: bool,
}

impl<W: Write, E: Write> Renderer<W, E> {
    pub fn new(style: Style, out: W, err: E, image_dir: PathBuf, width: usize) -> Self {
        Renderer {
            style,
            verbose: false,
            out,
            err,
            open: Open::None,
            line: String::new(),
            width: width.max(20),
            image_dir,
            images: 0,
            at_line_start: true,
        }
    }

    pub fn into_parts(self) -> (W, E) {
        (self.out, self.err)
    }

    fn styled(&self, code: &str, text: &str) -> String {
        match self.style {
            Style::Terminal => format!("{code}{text}{RESET}"),
            Style::Plain => text.to_string(),
        }
    }

    /// Draws one event. Confirmations, completed messages and turn ends are the
    /// caller's business.
    pub fn event(&mut self, event: &Event) -> std::io::Result<()> {
        match event {
            Event::Chunk(chunk) => self.chunk(chunk),
            Event::Notice(text) => {
                self.finish_open()?;
                let line = self.styled(YELLOW, &format!("oi: {text}"));
                writeln!(self.err, "{line}")?;
                self.err.flush()
            }
            Event::Error { message, .. } => {
                self.finish_open()?;
                let line = self.styled(RED, &format!("oi: error: {message}"));
                writeln!(self.err, "{line}")?;
                self.err.flush()
            }
            Event::Confirmation { .. } | Event::Message(_) | Event::TurnEnded(_) => Ok(()),
        }
    }

    /// Draws a whole message (re-rendering a resumed conversation).
    pub fn message(&mut self, message: &Message) -> std::io::Result<()> {
        if message.role == Role::User && message.kind == MessageType::Message {
            self.finish_open()?;
            let line = self.styled(BOLD, &format!("> {}", message.content));
            writeln!(self.out, "{line}\n")?;
            return self.out.flush();
        }
        for chunk in message.chunks() {
            self.chunk(&chunk)?;
        }
        Ok(())
    }

    fn chunk(&mut self, chunk: &Chunk) -> std::io::Result<()> {
        let kind = chunk.kind;
        if chunk.format.as_deref() == Some("active_line") {
            if self.verbose {
                let text = self.styled(
                    DIM,
                    &format!("[line {}]", chunk.content.as_deref().unwrap_or("")),
                );
                writeln!(self.err, "{text}")?;
            }
            return Ok(());
        }
        if chunk.start {
            self.finish_open()?;
            match kind {
                MessageType::Message => self.open = Open::Prose,
                MessageType::Code => {
                    let language = chunk.format.clone().unwrap_or_default();
                    let head = match self.style {
                        Style::Terminal => format!("{DIM}── {language} ──{RESET}"),
                        Style::Plain => format!("```{language}"),
                    };
                    writeln!(self.out, "{head}")?;
                    self.open = Open::Code(language);
                }
                MessageType::Console => self.open = Open::Console,
                _ => {}
            }
            self.at_line_start = true;
            return Ok(());
        }
        if chunk.end {
            if kind == MessageType::Image {
                return Ok(());
            }
            return self.finish_open();
        }
        let Some(content) = &chunk.content else {
            return Ok(());
        };
        if kind == MessageType::Image {
            return self.image(chunk.format.as_deref().unwrap_or(""), content);
        }
        self.text(content)
    }

    fn text(&mut self, text: &str) -> std::io::Result<()> {
        for piece in text.split_inclusive('\n') {
            let (body, newline) = match piece.strip_suffix('\n') {
                Some(body) => (body, true),
                None => (piece, false),
            };
            if self.at_line_start && self.open == Open::Console {
                let bar = self.styled(DIM, "│ ");
                if self.style == Style::Terminal {
                    write!(self.out, "{bar}")?;
                }
            }
            self.at_line_start = false;
            write!(self.out, "{body}")?;
            self.line.push_str(body);
            if newline {
                self.end_line()?;
            }
        }
        self.out.flush()
    }

    /// Restyles the line just written (terminal only) and ends it.
    fn end_line(&mut self) -> std::io::Result<()> {
        let line = std::mem::take(&mut self.line);
        if self.style == Style::Terminal && line.chars().count() < self.width {
            let styled = match &self.open {
                Open::Prose => Some(markdown_line(&line)),
                Open::Code(language) => Some(highlight_line(language, &line)),
                _ => None,
            };
            if let Some(styled) = styled.filter(|s| *s != line) {
                write!(self.out, "\r\x1b[2K{styled}")?;
            }
        }
        writeln!(self.out)?;
        self.at_line_start = true;
        Ok(())
    }

    /// Ends the message being drawn: its last line, and a code block's fence.
    pub fn finish_open(&mut self) -> std::io::Result<()> {
        if !self.at_line_start {
            self.end_line()?;
        }
        match std::mem::replace(&mut self.open, Open::None) {
            Open::Code(_) => {
                let foot = match self.style {
                    Style::Terminal => format!("{DIM}────{RESET}"),
                    Style::Plain => "```".to_string(),
                };
                writeln!(self.out, "{foot}")?;
            }
            Open::Prose => writeln!(self.out)?,
            Open::Console | Open::None => {}
        }
        self.out.flush()
    }

    fn image(&mut self, format: &str, data: &str) -> std::io::Result<()> {
        self.finish_open()?;
        let ext = format.strip_prefix("base64.").unwrap_or("png");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        std::fs::create_dir_all(&self.image_dir)?;
        self.images += 1;
        let path = loop {
            let candidate = self
                .image_dir
                .join(format!("oi-image-{}.{ext}", self.images));
            if !candidate.exists() {
                break candidate;
            }
            self.images += 1;
        };
        std::fs::write(&path, bytes)?;
        let line = self.styled(CYAN, &format!("[image saved to {}]", path.display()));
        writeln!(self.out, "{line}")?;
        self.out.flush()
    }
}

/// Light markdown for one line: headings, bullets, **bold**, `code`.
pub fn markdown_line(line: &str) -> String {
    let trimmed = line.trim_start();
    if let Some(rest) = trimmed.strip_prefix('#') {
        let text = rest.trim_start_matches('#').trim();
        return format!("{BOLD}{text}{RESET}");
    }
    let (indent, rest) = line.split_at(line.len() - trimmed.len());
    let rest = match rest.strip_prefix("- ").or_else(|| rest.strip_prefix("* ")) {
        Some(item) => format!("• {item}"),
        None => rest.to_string(),
    };
    let mut out = String::from(indent);
    let mut chars = rest.chars().peekable();
    let (mut bold, mut code) = (false, false);
    while let Some(c) = chars.next() {
        if c == '`' {
            code = !code;
            out.push_str(if code { CYAN } else { RESET });
            continue;
        }
        if !code && c == '*' && chars.peek() == Some(&'*') {
            chars.next();
            bold = !bold;
            out.push_str(if bold { BOLD } else { RESET });
            continue;
        }
        out.push(c);
    }
    if bold || code {
        out.push_str(RESET);
    }
    out
}

/// Colours for one line of code: keywords, strings, numbers, comments.
pub fn highlight_line(language: &str, line: &str) -> String {
    let keywords: &[&str] = match language {
        "python" => &[
            "and", "as", "assert", "async", "await", "break", "class", "continue", "def", "del",
            "elif", "else", "except", "False", "finally", "for", "from", "global", "if", "import",
            "in", "is", "lambda", "None", "nonlocal", "not", "or", "pass", "raise", "return",
            "True", "try", "while", "with", "yield",
        ],
        "shell" => &[
            "if", "then", "else", "elif", "fi", "for", "while", "until", "do", "done", "case",
            "esac", "in", "function", "return", "export", "local", "cd", "echo",
        ],
        _ => &[],
    };
    let mut out = String::new();
    let chars: Vec<char> = line.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '#' {
            let rest: String = chars[i..].iter().collect();
            out.push_str(&format!("{DIM}{rest}{RESET}"));
            break;
        }
        if c == '"' || c == '\'' {
            let mut j = i + 1;
            while j < chars.len() && chars[j] != c {
                j += if chars[j] == '\\' { 2 } else { 1 };
            }
            let end = (j + 1).min(chars.len());
            let s: String = chars[i..end].iter().collect();
            out.push_str(&format!("{GREEN}{s}{RESET}"));
            i = end;
            continue;
        }
        if c.is_alphanumeric() || c == '_' {
            let mut j = i;
            while j < chars.len() && (chars[j].is_alphanumeric() || chars[j] == '_') {
                j += 1;
            }
            let word: String = chars[i..j].iter().collect();
            if keywords.contains(&word.as_str()) {
                out.push_str(&format!("{MAGENTA}{word}{RESET}"));
            } else if word.chars().all(|c| c.is_ascii_digit()) {
                out.push_str(&format!("{YELLOW}{word}{RESET}"));
            } else {
                out.push_str(&word);
            }
            i = j;
            continue;
        }
        out.push(c);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::messages::Chunk;

    fn script() -> Vec<Event> {
        let mut events = Vec::new();
        let prose = |t: &str| Chunk::content(Role::Assistant, MessageType::Message, None, t);
        events.push(Event::Chunk(Chunk::start(
            Role::Assistant,
            MessageType::Message,
            None,
        )));
        for piece in [
            "Let me **check** the `data`:",
            "\n- first\n",
            "- sec",
            "ond",
        ] {
            events.push(Event::Chunk(prose(piece)));
        }
        events.push(Event::Chunk(Chunk::end(
            Role::Assistant,
            MessageType::Message,
            None,
        )));
        let code = Some("python".to_string());
        events.push(Event::Chunk(Chunk::start(
            Role::Assistant,
            MessageType::Code,
            code.clone(),
        )));
        for piece in ["import os  # files\n", "print(len(os.listdir('.')), 42)"] {
            events.push(Event::Chunk(Chunk::content(
                Role::Assistant,
                MessageType::Code,
                code.clone(),
                piece,
            )));
        }
        events.push(Event::Chunk(Chunk::end(
            Role::Assistant,
            MessageType::Code,
            code,
        )));
        for chunk in Message::console("3 42\nsecond line\n").chunks() {
            events.push(Event::Chunk(chunk));
        }
        events.push(Event::Notice("retrying in 1.0 s".into()));
        events.push(Event::Error {
            kind: "auth".into(),
            message: "rejected the API key".into(),
        });
        events
    }

    fn render(style: Style) -> (String, String) {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Renderer::new(style, Vec::new(), Vec::new(), dir.path().to_path_buf(), 80);
        for event in script() {
            r.event(&event).unwrap();
        }
        r.finish_open().unwrap();
        let (out, err) = r.into_parts();
        (
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }

    #[test]
    fn plain_output() {
        let (out, err) = render(Style::Plain);
        insta::assert_snapshot!("plain_stdout", out);
        insta::assert_snapshot!("plain_stderr", err);
    }

    #[test]
    fn terminal_output() {
        let (out, err) = render(Style::Terminal);
        // Escapes made visible so the snapshot reads as a diff.
        let visible = |s: String| s.replace('\x1b', "⎋").replace('\r', "↵");
        insta::assert_snapshot!("terminal_stdout", visible(out));
        insta::assert_snapshot!("terminal_stderr", visible(err));
    }

    #[test]
    fn images_are_saved_and_their_path_shown() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Renderer::new(
            Style::Plain,
            Vec::new(),
            Vec::new(),
            dir.path().to_path_buf(),
            80,
        );
        r.message(&Message::image("png", "iVBORw0KGgo=")).unwrap();
        let (out, _) = r.into_parts();
        let out = String::from_utf8(out).unwrap();
        let path = dir.path().join("oi-image-1.png");
        assert_eq!(out, format!("[image saved to {}]\n", path.display()));
        assert_eq!(std::fs::read(path).unwrap(), b"\x89PNG\r\n\x1a\n");
    }
}
