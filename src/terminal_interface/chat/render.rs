//! Draws a conversation's events for a person: prose with light markdown, code blocks
//! with syntax colours, console output set apart under its block, images saved to
//! files. `Style::Plain` (stdout not a terminal, or `--plain`) writes the same content
//! with no colour and no cursor movement: fenced code, raw output.
//!
//! Everything drawn comes from outside (the model, the sandbox, a loaded file), so it
//! goes through [`sanitize`] first: nothing reaches the terminal that it would obey.
//! Before a block is confirmed, the renderer checks that the code to run is exactly
//! the code it showed, and shows it again if not ([`Renderer::confirmation`]).
//! Images are saved through [`hostfs`] (never through a link the sandbox planted).
//!
//! Streaming: text is written as it arrives; when a line ends, a terminal gets the line
//! again, styled, in place (only if it is shorter than the terminal is wide, so it did
//! not wrap; longer lines are not kept, which bounds memory whatever the output).
//! Knows LMC chunks, not the loop.

use std::io::Write;
use std::path::PathBuf;

use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::core::hostfs;
use crate::core::messages::{Chunk, Message, MessageType, Role};
use crate::core::protocol::{Error, ErrorKind, EventMsg, Setting};
use crate::terminal_interface::sanitize::{self, Colours, Kind};

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
    /// The current line as written so far (to restyle it when it ends), while it is
    /// shorter than the terminal is wide and holds nothing made visible.
    line: String,
    /// The current line's width so far, as an upper estimate; `None` once the line is
    /// no longer kept.
    line_width: Option<usize>,
    width: usize,
    /// Console output being neutralised (it keeps state between pieces).
    output: sanitize::Output,
    /// The code of the block drawn last, as drawn (its trailing line breaks aside),
    /// hashed so that memory stays bounded however long the code.
    shown_code: Sha256,
    shown_newlines: usize,
    /// The language the block drawn last was headed with.
    shown_language: String,
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
            line_width: Some(0),
            width: width.max(20),
            output: Self::output_filter(style),
            shown_code: Sha256::new(),
            shown_newlines: 0,
            shown_language: String::new(),
            image_dir,
            images: 0,
            at_line_start: true,
        }
    }

    fn output_filter(style: Style) -> sanitize::Output {
        match style {
            Style::Terminal => sanitize::Output::new(Colours::Keep, true),
            Style::Plain => sanitize::Output::new(Colours::Drop, false),
        }
    }

    pub fn into_parts(self) -> (W, E) {
        (self.out, self.err)
    }

    /// Bytes the renderer holds between events: the current line, at most about a
    /// terminal's width, and an unfinished escape sequence.
    pub fn retained(&self) -> usize {
        self.line.capacity() + self.output.retained()
    }

    fn styled(&self, code: &str, text: &str) -> String {
        match self.style {
            Style::Terminal => format!("{code}{text}{RESET}"),
            Style::Plain => text.to_string(),
        }
    }

    /// `text` from outside made safe to draw (visible forms marked on a terminal), and
    /// whether anything had to be made visible.
    fn safe(&self, text: &str, kind: Kind) -> (String, bool) {
        let mut out = String::with_capacity(text.len());
        let marked = sanitize::push_visible(&mut out, text, kind, self.style == Style::Terminal);
        (out, marked)
    }

    /// A line on stderr: a notice or an error from outside, made safe.
    fn diagnostic(&mut self, colour: &str, text: &str) -> std::io::Result<()> {
        self.finish_open()?;
        let (text, _) = self.safe(text, Kind::Prose);
        let line = self.styled(colour, &text);
        writeln!(self.err, "{line}")?;
        self.err.flush()
    }

    /// Draws one event. Completed messages, turn ends and the answers to requests are
    /// the caller's business; for a confirmation see [`Renderer::confirmation`].
    pub fn event(&mut self, event: &EventMsg) -> std::io::Result<()> {
        match event {
            EventMsg::Chunk(chunk) => self.chunk(chunk),
            EventMsg::Notice(text) => self.diagnostic(YELLOW, &format!("oi: {text}")),
            EventMsg::Error(error) => {
                self.diagnostic(RED, &format!("oi: error: {}", error_text(error)))
            }
            EventMsg::Confirmation(c) => self.confirmation(&c.language, &c.code),
            EventMsg::Message(_)
            | EventMsg::TurnEnded(_)
            | EventMsg::Info(_)
            | EventMsg::Messages(_)
            | EventMsg::Uploaded { .. }
            | EventMsg::Downloaded(_)
            | EventMsg::Done => Ok(()),
        }
    }

    /// Before a block is confirmed: if the code that will run, or the language it runs
    /// as, is not exactly what was drawn for it (a repair changed it, two parsers read a
    /// hostile call differently, or it never streamed), draws it again, so that the
    /// question is always about what is on the screen.
    pub fn confirmation(&mut self, language: &str, code: &str) -> std::io::Result<()> {
        self.finish_open()?;
        let expected = Sha256::digest(code.trim_end_matches('\n'));
        if self.shown_code.clone().finalize() == expected && self.shown_language == language {
            return Ok(());
        }
        self.diagnostic(
            YELLOW,
            "oi: the code to run differs from what was shown above (or runs as another \
             language); this is what will run:",
        )?;
        let format = Some(language.to_string());
        self.chunk(&Chunk::start(
            Role::Assistant,
            MessageType::Code,
            format.clone(),
        ))?;
        self.chunk(&Chunk::content(
            Role::Assistant,
            MessageType::Code,
            format.clone(),
            code,
        ))?;
        self.chunk(&Chunk::end(Role::Assistant, MessageType::Code, format))
    }

    /// Draws a whole message (re-rendering a resumed conversation).
    pub fn message(&mut self, message: &Message) -> std::io::Result<()> {
        if message.role == Role::User && message.kind == MessageType::Message {
            self.finish_open()?;
            let (content, _) = self.safe(&message.content, Kind::Prose);
            let line = self.styled(BOLD, &format!("> {content}"));
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
                let (line, _) = self.safe(chunk.content.as_deref().unwrap_or(""), Kind::Name);
                let text = self.styled(DIM, &format!("[line {line}]"));
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
                    let (shown, _) = self.safe(&language, Kind::Name);
                    let head = match self.style {
                        Style::Terminal => format!("{DIM}── {shown} ──{RESET}"),
                        Style::Plain => format!("```{shown}"),
                    };
                    writeln!(self.out, "{head}")?;
                    self.shown_code = Sha256::new();
                    self.shown_newlines = 0;
                    self.shown_language = language.clone();
                    self.open = Open::Code(language);
                }
                MessageType::Console => {
                    self.output = Self::output_filter(self.style);
                    self.open = Open::Console;
                }
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
        if kind == MessageType::Image && chunk.role == Role::User {
            // The user's own image (a loaded conversation): named, not saved again.
            self.finish_open()?;
            let what = match chunk.format.as_deref() {
                Some("path") => content.as_str(),
                _ => "attached",
            };
            let (what, _) = self.safe(what, Kind::Name);
            let line = self.styled(CYAN, &format!("[image: {what}]"));
            writeln!(self.out, "{line}")?;
            return self.out.flush();
        }
        if kind == MessageType::Image {
            return self.image(chunk.format.as_deref().unwrap_or(""), content);
        }
        if matches!(self.open, Open::Code(_)) {
            self.remember_code(content);
        }
        self.text(content)
    }

    /// Adds a piece of the block being drawn to what was shown of it, holding back
    /// line breaks at its end (the code that runs has them trimmed).
    fn remember_code(&mut self, piece: &str) {
        let body = piece.trim_end_matches('\n');
        if !body.is_empty() {
            for _ in 0..self.shown_newlines {
                self.shown_code.update(b"\n");
            }
            self.shown_code.update(body.as_bytes());
            self.shown_newlines = 0;
        }
        self.shown_newlines += piece.len() - body.len();
    }

    fn text(&mut self, text: &str) -> std::io::Result<()> {
        if self.open == Open::Console {
            let safe = self.output.feed(text);
            return self.draw(&safe);
        }
        self.draw(text)
    }

    /// Writes text line by line: console output (already made safe) under its bar,
    /// prose and code made safe here and kept for restyling.
    fn draw(&mut self, text: &str) -> std::io::Result<()> {
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
            match &self.open {
                // Already made safe, piece by piece; never restyled.
                Open::Console => {
                    write!(self.out, "{body}")?;
                    self.line_width = None;
                }
                open => {
                    let kind = if matches!(open, Open::Code(_)) {
                        Kind::Code
                    } else {
                        Kind::Prose
                    };
                    // A Windows line end in prose is a line end.
                    let body = match (kind, newline) {
                        (Kind::Prose, true) => body.strip_suffix('\r').unwrap_or(body),
                        _ => body,
                    };
                    let (shown, marked) = self.safe(body, kind);
                    write!(self.out, "{shown}")?;
                    self.keep(&shown, marked);
                }
            }
            if newline {
                self.end_line()?;
            }
        }
        self.out.flush()
    }

    /// Keeps what was written of the current line for restyling, while the line is
    /// shorter than the terminal and holds nothing made visible (a restyle would lose
    /// the marks).
    fn keep(&mut self, shown: &str, marked: bool) {
        let Some(width) = self.line_width else {
            return;
        };
        let width = width + display_width(shown);
        if marked || width >= self.width {
            self.line_width = None;
            self.line = String::new();
        } else {
            self.line_width = Some(width);
            self.line.push_str(shown);
        }
    }

    /// Restyles the line just written (terminal only, if it was kept) and ends it.
    fn end_line(&mut self) -> std::io::Result<()> {
        let line = std::mem::take(&mut self.line);
        let kept = self.line_width.replace(0).is_some();
        if self.style == Style::Terminal && kept {
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
        if self.open == Open::Console {
            let rest = self.output.finish();
            self.draw(&rest)?;
        }
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

    /// Saves an image in the image folder as `oi-image-N.EXT` (the first free N) and
    /// says where. The format must be one of [`hostfs::image_extension`]'s; a file is
    /// never written through a link or over anything (the sandbox can plant names in
    /// the current folder). Failures are reported, not fatal.
    fn image(&mut self, format: &str, data: &str) -> std::io::Result<()> {
        self.finish_open()?;
        let Some(ext) = hostfs::image_extension(format) else {
            return self.diagnostic(
                YELLOW,
                &format!("oi: an image in a format oi does not save (`{format}`) was not saved"),
            );
        };
        let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(data) else {
            return self.diagnostic(
                YELLOW,
                "oi: an image that is not valid base64 was not saved",
            );
        };
        let first = self.images;
        let mut taken = 0;
        let saved = hostfs::Dir::create_all(&self.image_dir).and_then(|dir| {
            let (mut file, name) = dir.create_numbered(|n| {
                taken = first + n;
                format!("oi-image-{taken}.{ext}")
            })?;
            file.write_all(&bytes)
                .map_err(|source| hostfs::HostFsError::Io {
                    action: "writing",
                    path: dir.path().join(&name),
                    source,
                })?;
            Ok(dir.path().join(name))
        });
        match saved {
            Ok(path) => {
                self.images = taken;
                let (path, _) = self.safe(&path.display().to_string(), Kind::Name);
                let line = self.styled(CYAN, &format!("[image saved to {path}]"));
                writeln!(self.out, "{line}")?;
                self.out.flush()
            }
            Err(err) => self.diagnostic(YELLOW, &format!("oi: the image was not saved: {err}")),
        }
    }
}

/// An upper estimate of how many columns `text` takes: one per ASCII character, two
/// for anything else (wide characters), eight for a tab.
/// An error as the terminal says it: core's message (what happened), then what to
/// change, naming this front end's flags (core names settings, never flags).
pub fn error_text(error: &Error) -> String {
    match advice(error) {
        Some(advice) => format!("{}\n{advice}", error.message),
        None => error.message.clone(),
    }
}

/// [`error_text`] on one line, for a log: its lines joined.
pub fn error_line(error: &Error) -> String {
    error_text(error)
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// What to change, worded with the terminal's flags, from the error's facts.
fn advice(error: &Error) -> Option<String> {
    let facts = &error.facts;
    match error.kind {
        ErrorKind::Auth => facts
            .key_setting
            .as_ref()
            .map(|variable| format!("Set {variable} or --api-key to a valid key.")),
        ErrorKind::Connect => Some("Is the server running, and is --api-base right?".into()),
        ErrorKind::UnknownModel if facts.available.is_empty() => {
            Some("Choose another with --model.".into())
        }
        ErrorKind::UnknownModel => Some("Choose one with --model.".into()),
        ErrorKind::IterationCap => Some("(--max-iterations raises the cap.)".into()),
        // Sandbox failures, worded as `advice::describe` words them outside the chat.
        ErrorKind::Sandbox | ErrorKind::Files => match facts.setting {
            Some(Setting::Image) => Some(
                "Build or pull it (`oi image build` makes oi's own), or choose another with \
                 --image."
                    .into(),
            ),
            Some(Setting::WorkspaceSize) if error.kind == ErrorKind::Files => Some(
                "Copy a smaller part, or allow more (--workspace-size, or `oi sandbox cp \
                 --limit`)."
                    .into(),
            ),
            Some(Setting::WorkspaceSize) => Some(
                "Raise the limit (--workspace-size, or workspace_size in [sandbox]) or use \
                 --workspace ro."
                    .into(),
            ),
            Some(Setting::SandboxHost) => Some(
                "Is Docker running, and may your user use it? (`sudo systemctl start docker`; \
                 the docker group.)"
                    .into(),
            ),
            _ => None,
        },
        _ => None,
    }
}

fn display_width(text: &str) -> usize {
    text.chars()
        .map(|c| match c {
            '\t' => 8,
            c if c.is_ascii() => 1,
            _ => 2,
        })
        .sum()
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
    use crate::core::protocol::Confirmation;

    fn script() -> Vec<EventMsg> {
        let mut events = Vec::new();
        let prose = |t: &str| Chunk::content(Role::Assistant, MessageType::Message, None, t);
        events.push(EventMsg::Chunk(Chunk::start(
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
            events.push(EventMsg::Chunk(prose(piece)));
        }
        events.push(EventMsg::Chunk(Chunk::end(
            Role::Assistant,
            MessageType::Message,
            None,
        )));
        let code = Some("python".to_string());
        events.push(EventMsg::Chunk(Chunk::start(
            Role::Assistant,
            MessageType::Code,
            code.clone(),
        )));
        for piece in ["import os  # files\n", "print(len(os.listdir('.')), 42)"] {
            events.push(EventMsg::Chunk(Chunk::content(
                Role::Assistant,
                MessageType::Code,
                code.clone(),
                piece,
            )));
        }
        events.push(EventMsg::Chunk(Chunk::end(
            Role::Assistant,
            MessageType::Code,
            code,
        )));
        for chunk in Message::console("3 42\nsecond line\n").chunks() {
            events.push(EventMsg::Chunk(chunk));
        }
        events.push(EventMsg::Notice("retrying in 1.0 s".into()));
        events.push(EventMsg::Error(Error::new(
            ErrorKind::Auth,
            "rejected the API key",
        )));
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

    /// Everything a hostile model or sandbox might send, through both styles.
    fn hostile() -> Vec<EventMsg> {
        let mut events = Vec::new();
        let prose = |t: &str| {
            EventMsg::Chunk(Chunk::content(
                Role::Assistant,
                MessageType::Message,
                None,
                t,
            ))
        };
        events.push(EventMsg::Chunk(Chunk::start(
            Role::Assistant,
            MessageType::Message,
            None,
        )));
        events.push(prose(
            "Copy \x1b]52;c;cm0gLXJmIH4=\x07this, \x1b]0;title\x07",
        ));
        events.push(prose(
            "see \x1b]8;;http://127.0.0.1/\x1b\\here\x1b]8;;\x1b\\\x1b[2J\r\n",
        ));
        events.push(prose("\u{9b}31mC1 \u{202e}reversed\u{202c}\n"));
        events.push(EventMsg::Chunk(Chunk::end(
            Role::Assistant,
            MessageType::Message,
            None,
        )));
        let code = Some("python\x1b[2J".to_string());
        events.push(EventMsg::Chunk(Chunk::start(
            Role::Assistant,
            MessageType::Code,
            code.clone(),
        )));
        for piece in [
            "print('safe')\n",
            "import os; os.system('curl 127.0.0.1 | sh')\x1b[2K\x1b[1G# harmless\n",
            "access = \"user\u{202e} \u{2066}// admin\u{2069} \u{2066}\"\n",
        ] {
            events.push(EventMsg::Chunk(Chunk::content(
                Role::Assistant,
                MessageType::Code,
                code.clone(),
                piece,
            )));
        }
        events.push(EventMsg::Chunk(Chunk::end(
            Role::Assistant,
            MessageType::Code,
            code,
        )));
        for chunk in Message::console(
            "\x1b[32mok\x1b[0m \x1b[8mhidden\x1b[0m \x1b[41;30mblack\x1b[0m\n10%\r50%\r100%\n\x1b[31",
        )
        .chunks()
        {
            events.push(EventMsg::Chunk(chunk));
        }
        events.push(EventMsg::Notice("retry \x1b]0;x\x07".into()));
        events.push(EventMsg::Error(Error::new(
            ErrorKind::Server,
            "bad \x1b[2Jthing\u{85}",
        )));
        events
    }

    fn render_events(style: Style, events: &[EventMsg]) -> (String, String) {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Renderer::new(style, Vec::new(), Vec::new(), dir.path().to_path_buf(), 80);
        for event in events {
            r.event(event).unwrap();
        }
        r.finish_open().unwrap();
        let (out, err) = r.into_parts();
        (
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }

    /// Only oi's own sequences reach the terminal: SGR styling, the restyling of a
    /// line (`\r`, erase line), and the allowed colours of console output.
    fn only_safe_escapes(text: &str) {
        let mut rest = text;
        while let Some(at) = rest.find(['\x1b', '\r', '\u{7}', '\u{9b}', '\u{202e}']) {
            rest = &rest[at..];
            let ok = ["\r\x1b[2K", "\x1b[2K"]
                .iter()
                .find(|p| rest.starts_with(**p))
                .map(|p| p.len())
                .or_else(|| {
                    let params = rest.strip_prefix("\x1b[")?;
                    let end = params.find('m')?;
                    params[..end]
                        .bytes()
                        .all(|b| b.is_ascii_digit() || b == b';')
                        .then_some(end + 3)
                });
            let Some(len) = ok else {
                panic!(
                    "an unsafe sequence reached the terminal: {:?}",
                    &rest[..rest.len().min(20)]
                );
            };
            let params = &rest[..len];
            assert!(
                !params.contains("[8m") && !params.contains(";8m") && !params.contains("[41"),
                "{params:?}"
            );
            rest = &rest[len..];
        }
    }

    #[test]
    fn hostile_text_is_shown_not_obeyed() {
        let (out, err) = render_events(Style::Terminal, &hostile());
        only_safe_escapes(&out);
        only_safe_escapes(&err);
        let visible = |s: String| s.replace('\x1b', "⎋").replace('\r', "↵");
        insta::assert_snapshot!("hostile_terminal_stdout", visible(out));
        insta::assert_snapshot!("hostile_terminal_stderr", visible(err));
        let (out, err) = render_events(Style::Plain, &hostile());
        assert!(!out.contains(['\x1b', '\r', '\u{7}']), "{out:?}");
        assert!(!err.contains(['\x1b', '\r', '\u{7}']), "{err:?}");
        insta::assert_snapshot!("hostile_plain_stdout", out);
        insta::assert_snapshot!("hostile_plain_stderr", err);
    }

    fn code_block(code: &[&str]) -> Vec<EventMsg> {
        let format = Some("python".to_string());
        let mut events = vec![EventMsg::Chunk(Chunk::start(
            Role::Assistant,
            MessageType::Code,
            format.clone(),
        ))];
        for piece in code {
            events.push(EventMsg::Chunk(Chunk::content(
                Role::Assistant,
                MessageType::Code,
                format.clone(),
                *piece,
            )));
        }
        events.push(EventMsg::Chunk(Chunk::end(
            Role::Assistant,
            MessageType::Code,
            format,
        )));
        events
    }

    #[test]
    fn errors_are_worded_with_the_terminals_flags() {
        use crate::core::protocol::Facts;
        let error = |kind, facts| Error::new(kind, "what happened").with_facts(facts);
        let auth = error(
            ErrorKind::Auth,
            Facts {
                key_setting: Some("ANTHROPIC_API_KEY".into()),
                ..Facts::default()
            },
        );
        assert_eq!(
            error_text(&auth),
            "what happened\nSet ANTHROPIC_API_KEY or --api-key to a valid key."
        );
        assert_eq!(
            error_line(&auth),
            "what happened; Set ANTHROPIC_API_KEY or --api-key to a valid key."
        );
        let connect = error(ErrorKind::Connect, Facts::default());
        assert!(error_text(&connect).ends_with("is --api-base right?"));
        let offers = error(
            ErrorKind::UnknownModel,
            Facts {
                available: vec!["a".into()],
                ..Facts::default()
            },
        );
        assert!(error_text(&offers).ends_with("\nChoose one with --model."));
        let none = error(ErrorKind::UnknownModel, Facts::default());
        assert!(error_text(&none).ends_with("\nChoose another with --model."));
        let cap = error(ErrorKind::IterationCap, Facts::default());
        assert!(error_text(&cap).contains("--max-iterations"));
        let other = error(ErrorKind::Stalled, Facts::default());
        assert_eq!(error_text(&other), "what happened");
        // Sandbox errors that reach the chat (a copy, a restart) keep their advice.
        use crate::core::code_interpreter::SandboxError;
        let too_large = Error::sandbox(
            "",
            &SandboxError::CopyTooLarge {
                path: "/workspace/big".into(),
                limit: 1 << 30,
            },
        );
        assert!(
            error_text(&too_large).contains("--workspace-size, or `oi sandbox cp --limit`"),
            "{}",
            error_text(&too_large)
        );
        let missing = Error::sandbox("", &SandboxError::ImageMissing { tag: "x:1".into() });
        assert!(error_text(&missing).contains("--image"));
    }

    #[test]
    fn the_confirmation_shows_the_code_again_when_it_differs() {
        let confirm = |code: &str| {
            EventMsg::Confirmation(Confirmation {
                id: "c1".into(),
                language: "python".into(),
                code: code.into(),
            })
        };
        // The same code (trailing line breaks aside): nothing more is drawn.
        let mut events = code_block(&["print(1)\n", "print(2)\n\n"]);
        events.push(confirm("print(1)\nprint(2)"));
        let (out, err) = render_events(Style::Plain, &events);
        assert_eq!(out, "```python\nprint(1)\nprint(2)\n\n```\n");
        assert_eq!(err, "");
        // A repair changed it: the code that runs is drawn before the question.
        let mut events = code_block(&["print(1)\n"]);
        events.push(confirm("print(1)\nimport os; os.remove('x')"));
        let (out, err) = render_events(Style::Plain, &events);
        assert_eq!(
            out,
            "```python\nprint(1)\n```\n```python\nprint(1)\nimport os; os.remove('x')\n```\n"
        );
        assert_eq!(
            err,
            "oi: the code to run differs from what was shown above (or runs as another \
             language); this is what will run:\n"
        );
        // Nothing was drawn for it at all.
        let (out, _) = render_events(Style::Plain, &[confirm("print(3)")]);
        assert_eq!(out, "```python\nprint(3)\n```\n");
        // The same code, drawn as python, runs as shell (a call whose arguments name
        // the language twice): drawn again under the language it runs as.
        let mut events = code_block(&["print(1)\n"]);
        events.push(EventMsg::Confirmation(Confirmation {
            id: "c1".into(),
            language: "shell".into(),
            code: "print(1)".into(),
        }));
        let (out, err) = render_events(Style::Plain, &events);
        assert_eq!(out, "```python\nprint(1)\n```\n```shell\nprint(1)\n```\n");
        assert!(err.contains("differs from what was shown"), "{err}");
    }

    /// D8: 100 MB of output with no line break; the renderer keeps a bounded amount.
    #[test]
    fn d8_the_chat_renderer_stays_bounded_on_endless_lines() {
        for style in [Style::Terminal, Style::Plain] {
            let mut r = Renderer::new(
                style,
                std::io::sink(),
                std::io::sink(),
                PathBuf::from("."),
                120,
            );
            for kind in [
                MessageType::Console,
                MessageType::Message,
                MessageType::Code,
            ] {
                let role = if kind == MessageType::Console {
                    Role::Computer
                } else {
                    Role::Assistant
                };
                let format = (kind == MessageType::Code).then(|| "python".to_string());
                r.event(&EventMsg::Chunk(Chunk::start(role, kind, format.clone())))
                    .unwrap();
                let piece = "y".repeat(64 << 10);
                let mut most = 0;
                // 100 MB for the case of the report (console output on a terminal),
                // less for the others: the bound is reached after one line anyway.
                let total = if (style, kind) == (Style::Terminal, MessageType::Console) {
                    100 << 20
                } else {
                    8 << 20
                };
                for _ in 0..total / piece.len() {
                    r.event(&EventMsg::Chunk(Chunk::content(
                        role,
                        kind,
                        format.clone(),
                        piece.as_str(),
                    )))
                    .unwrap();
                    most = most.max(r.retained());
                }
                assert!(most < 1024, "{style:?} {kind:?}: kept {most} bytes");
                r.event(&EventMsg::Chunk(Chunk::end(role, kind, format)))
                    .unwrap();
            }
        }
    }

    #[test]
    fn images_in_other_formats_or_through_links_are_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let work = dir.path().join("work");
        std::fs::create_dir(&work).unwrap();
        std::os::unix::fs::symlink(&victim, work.join("oi-image-1.png")).unwrap();
        let mut r = Renderer::new(Style::Plain, Vec::new(), Vec::new(), work.clone(), 80);
        r.message(&Message::image("png/../../x", "iVBORw0KGgo="))
            .unwrap();
        r.message(&Message::image("png", "iVBORw0KGgo=")).unwrap();
        let (out, err) = r.into_parts();
        assert_eq!(
            String::from_utf8(err).unwrap(),
            "oi: an image in a format oi does not save (`base64.png/../../x`) was not saved\n"
        );
        let path = work.join("oi-image-2.png");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("[image saved to {}]\n", path.display())
        );
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(std::fs::read(path).unwrap(), b"\x89PNG\r\n\x1a\n");
        assert!(!dir.path().join("x").exists());
    }

    #[test]
    fn the_users_images_are_named_not_saved() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Renderer::new(
            Style::Plain,
            Vec::new(),
            Vec::new(),
            dir.path().to_path_buf(),
            80,
        );
        let mut image = Message::image("png", "iVBORw0KGgo=");
        image.role = Role::User;
        r.message(&image).unwrap();
        image.format = Some("path".into());
        image.content = "chart\x1b[2J.png".into();
        r.message(&image).unwrap();
        let (out, _) = r.into_parts();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "[image: attached]\n[image: chart\\x1b[2J.png]\n"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
