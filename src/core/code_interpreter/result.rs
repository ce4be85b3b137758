//! What the model sees of a block: one execution's events turned into the console text
//! (stdout, stderr and notices in the order the code produced them, the middle cut past
//! `max_output` characters with a note saying how much), the closing note when the block
//! did not end normally, and the images it displayed.
//!
//! Flow: [`BlockOutput::push`] takes each [`ExecEvent`] and returns what to show of it
//! as it happens ([`Shown`]); [`BlockOutput::finish`] returns the [`BlockResult`]. Memory
//! is bounded whatever the block prints: only what the model will get is kept (the
//! images are bounded by the connection, 16 and 32 MiB per block).
//!
//! Used by the conversation loop, reusable by any front end that hands a block's result
//! to a model (the server, MCP). Knows executions; knows nothing of conversations,
//! prompts or how a front end draws output.

use base64::Engine as _;

use super::execution::{ExecEvent, ExecOutcome, ExecStatus, Execution};

/// A piece of a running block to show as it happens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shown {
    /// Console text (stdout, stderr, or a sandbox notice as an `[oi: …]` line).
    Output(String),
    /// An image the code displayed.
    Image(Image),
    /// The line about to run (progress, not output).
    ActiveLine(u32),
}

/// An image a block displayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// `png`, `jpeg`, …
    pub format: String,
    pub base64: String,
}

/// What the model is told about one block's run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockResult {
    /// The console text: the output (cut past `max_output` with a note), then the
    /// closing note, if any.
    pub console: String,
    /// The closing note as it follows the output (`[exit code 2]`, `[timed out: …]`,
    /// with a line break before it when output came first); `None` when the block
    /// ended normally. Already part of `console`: a front end shows it after the output.
    pub note: Option<String>,
    pub images: Vec<Image>,
    pub outcome: ExecOutcome,
}

impl BlockResult {
    /// Reads a whole execution: for front ends that do not stream the output.
    pub async fn collect(mut execution: Execution, max_output: usize) -> BlockResult {
        let mut output = BlockOutput::new(max_output);
        while let Some(event) = execution.next_event().await {
            output.push(event);
        }
        output.finish()
    }
}

/// A block's result being gathered from its events.
#[derive(Debug)]
pub struct BlockOutput {
    buffer: OutputBuffer,
    images: Vec<Image>,
    outcome: Option<ExecOutcome>,
}

impl BlockOutput {
    /// `max_output`: the most characters of output the model gets.
    pub fn new(max_output: usize) -> Self {
        BlockOutput {
            buffer: OutputBuffer::new(max_output),
            images: Vec::new(),
            outcome: None,
        }
    }

    /// Takes one event of the execution; returns what to show of it now.
    pub fn push(&mut self, event: ExecEvent) -> Option<Shown> {
        let text = match event {
            ExecEvent::Stdout { text } | ExecEvent::Stderr { text } => text,
            ExecEvent::Notice { message } => format!("[oi: {message}]\n"),
            ExecEvent::Image { format, data } => {
                let image = Image {
                    format,
                    base64: base64::engine::general_purpose::STANDARD.encode(&data),
                };
                self.images.push(image.clone());
                return Some(Shown::Image(image));
            }
            ExecEvent::ActiveLine { line } => return Some(Shown::ActiveLine(line)),
            ExecEvent::Done(outcome) => {
                self.outcome = Some(outcome);
                return None;
            }
        };
        self.buffer.push(&text);
        Some(Shown::Output(text))
    }

    /// The result; an execution that ended without an outcome counts as crashed.
    pub fn finish(mut self) -> BlockResult {
        let outcome = self.outcome.take().unwrap_or(ExecOutcome {
            status: ExecStatus::Crashed,
            exit_code: None,
            message: Some("the sandbox stopped answering".into()),
        });
        let note = outcome_note(&outcome).map(|note| {
            if self.buffer.is_empty() {
                note
            } else {
                format!("\n{note}")
            }
        });
        if let Some(note) = &note {
            self.buffer.push(note);
        }
        BlockResult {
            console: self.buffer.finish(),
            note,
            images: self.images,
            outcome,
        }
    }
}

/// What the model and the user are told about how a block ended, beyond its output.
pub fn outcome_note(outcome: &ExecOutcome) -> Option<String> {
    let detail = outcome
        .message
        .as_deref()
        .map(|m| format!(": {m}"))
        .unwrap_or_default();
    match outcome.status {
        ExecStatus::Ok => None,
        // A Python traceback speaks for itself; a shell's status does not.
        ExecStatus::Error => match outcome.exit_code {
            Some(code) if code != 0 && outcome.message.is_none() => {
                Some(format!("[exit code {code}]"))
            }
            _ if outcome.message.is_some() => Some(format!("[error{detail}]")),
            _ => None,
        },
        ExecStatus::Interrupted => Some("[interrupted by the user]".into()),
        ExecStatus::TimedOut => Some(format!("[timed out{detail}]")),
        ExecStatus::Crashed => Some(format!(
            "[the interpreter stopped{detail}; its state (variables, imports) was lost]"
        )),
    }
}

/// Console output as the model will get it: at most `max` characters, the middle cut
/// with a note saying how much. Keeps only what it will return, so a flood of output
/// costs bounded memory.
#[derive(Debug)]
pub struct OutputBuffer {
    max: usize,
    head: String,
    /// Characters in `head`, kept rather than recounted: with a large `max`, counting
    /// the head for every piece would make a flood of small pieces quadratic.
    head_chars: usize,
    tail: String,
    total: usize,
}

impl OutputBuffer {
    pub fn new(max: usize) -> Self {
        OutputBuffer {
            max,
            head: String::new(),
            head_chars: 0,
            tail: String::new(),
            total: 0,
        }
    }

    pub fn push(&mut self, text: &str) {
        self.total += text.chars().count();
        let head_room = self.max / 2 - self.head_chars.min(self.max / 2);
        let (to_head, rest) = split_chars(text, head_room);
        self.head_chars += to_head.chars().count();
        self.head.push_str(to_head);
        self.tail.push_str(rest);
        let keep = self.max - self.max / 2;
        // Shrink in batches so a long stream of small pieces stays linear.
        if self.tail.len() > 2 * keep.max(1024) * 4 {
            let count = self.tail.chars().count();
            if count > keep {
                let (_, kept) = split_chars(&self.tail, count - keep);
                self.tail = kept.to_string();
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    pub fn finish(self) -> String {
        if self.total <= self.max {
            return self.head + &self.tail;
        }
        let keep = self.max - self.max / 2;
        let count = self.tail.chars().count();
        let (_, tail) = split_chars(&self.tail, count.saturating_sub(keep));
        let cut = self.total - self.head.chars().count() - tail.chars().count();
        format!(
            "{}\n[… {cut} characters cut: the output had {} characters; showing the first {} \
             and the last {}]\n{}",
            self.head,
            self.total,
            self.head.chars().count(),
            tail.chars().count(),
            tail
        )
    }
}

/// Splits after `n` characters.
fn split_chars(text: &str, n: usize) -> (&str, &str) {
    match text.char_indices().nth(n) {
        Some((i, _)) => text.split_at(i),
        None => (text, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(status: ExecStatus, exit_code: Option<i32>, message: Option<&str>) -> ExecEvent {
        ExecEvent::Done(ExecOutcome {
            status,
            exit_code,
            message: message.map(str::to_string),
        })
    }

    #[test]
    fn output_notices_and_the_closing_note_are_kept_in_order() {
        let mut b = BlockOutput::new(1000);
        let shown: Vec<Option<Shown>> = vec![
            b.push(ExecEvent::Stdout { text: "a\n".into() }),
            b.push(ExecEvent::ActiveLine { line: 2 }),
            b.push(ExecEvent::Stderr { text: "b\n".into() }),
            b.push(ExecEvent::Notice {
                message: "restarted".into(),
            }),
            b.push(ExecEvent::Image {
                format: "png".into(),
                data: vec![1, 2, 3],
            }),
            b.push(done(ExecStatus::Error, Some(2), None)),
        ];
        assert_eq!(shown[1], Some(Shown::ActiveLine(2)));
        assert_eq!(shown[5], None);
        let result = b.finish();
        assert_eq!(result.console, "a\nb\n[oi: restarted]\n\n[exit code 2]");
        assert_eq!(result.note.as_deref(), Some("\n[exit code 2]"));
        assert_eq!(result.images[0].base64, "AQID");
        assert_eq!(result.outcome.exit_status(), 2);
    }

    #[test]
    fn notes_say_how_a_block_ended() {
        let note = |event| {
            let mut b = BlockOutput::new(100);
            b.push(event);
            b.finish().note
        };
        assert_eq!(note(done(ExecStatus::Ok, Some(0), None)), None);
        assert_eq!(note(done(ExecStatus::Error, None, None)), None);
        assert_eq!(
            note(done(ExecStatus::TimedOut, None, Some("after 5 s"))).as_deref(),
            Some("[timed out: after 5 s]")
        );
        assert_eq!(
            note(done(ExecStatus::Interrupted, None, None)).as_deref(),
            Some("[interrupted by the user]")
        );
        let lost = BlockOutput::new(100).finish();
        assert_eq!(lost.outcome.status, ExecStatus::Crashed);
        assert_eq!(
            lost.console,
            "[the interpreter stopped: the sandbox stopped answering; its state (variables, \
             imports) was lost]"
        );
    }

    #[test]
    fn long_output_keeps_its_head_and_tail() {
        let mut b = OutputBuffer::new(100);
        for i in 0..10_000 {
            b.push(&format!("{i}\n"));
        }
        let out = b.finish();
        assert!(out.starts_with("0\n1\n2\n"), "{out}");
        assert!(out.ends_with("9998\n9999\n"), "{out}");
        assert!(out.contains("characters cut: the output had 48890 characters; showing the first 50 and the last 50"), "{out}");
        let mut b = OutputBuffer::new(100);
        b.push("short");
        assert_eq!(b.finish(), "short");
    }

    #[test]
    fn regression_a_large_max_output_keeps_a_flood_of_small_pieces_linear() {
        // 400,000 pieces into a head of 500,000 characters: recounting the head for
        // each piece (as before) is ~10^11 steps; counting once is instant.
        let started = std::time::Instant::now();
        let mut b = OutputBuffer::new(1_000_000);
        for _ in 0..400_000 {
            b.push("ab");
        }
        assert_eq!(b.finish().len(), 800_000);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }
}
