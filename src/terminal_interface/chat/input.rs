//! Reading what the user types: line editing and persistent history (rustyline) on a
//! thread of its own, so the async chat can wait for a line without blocking.
//!
//! Multi-line input: a line starting with `"""` goes on until a line ending with
//! `"""`; a line ending with `\` goes on to the next. Ctrl-C on a line with text clears
//! it; on an empty line it means "leave", like Ctrl-D.

use std::path::PathBuf;
use std::sync::mpsc as std_mpsc;

use rustyline::error::ReadlineError;
use rustyline::history::FileHistory;
use rustyline::{
    Cmd, ConditionalEventHandler, Editor, Event, EventContext, EventHandler, KeyEvent, Movement,
    RepeatCount,
};
use tokio::sync::oneshot;

/// What reading a line gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Line(String),
    /// Ctrl-C on an empty line, or Ctrl-D: the user wants to leave.
    Leave,
}

struct Ask {
    prompt: String,
    /// Whether the answer goes into the history (not for y/n questions).
    history: bool,
    reply: oneshot::Sender<Input>,
}

/// The handle the chat reads lines through.
pub struct Prompter {
    asks: std_mpsc::Sender<Ask>,
}

/// Ctrl-C clears a line that has text; on an empty line it is the usual interrupt.
struct ClearOrLeave;

impl ConditionalEventHandler for ClearOrLeave {
    fn handle(&self, _: &Event, _: RepeatCount, _: bool, ctx: &EventContext) -> Option<Cmd> {
        (!ctx.line().is_empty()).then_some(Cmd::Kill(Movement::WholeBuffer))
    }
}

impl Prompter {
    /// Starts the reader thread. `history` is the file history is kept in.
    pub fn start(history: Option<PathBuf>) -> anyhow::Result<Prompter> {
        let mut editor: Editor<(), FileHistory> = Editor::new()?;
        editor.bind_sequence(
            KeyEvent::ctrl('C'),
            EventHandler::Conditional(Box::new(ClearOrLeave)),
        );
        if let Some(path) = &history {
            if let Some(dir) = path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let _ = editor.load_history(path);
        }
        let (tx, rx) = std_mpsc::channel::<Ask>();
        std::thread::spawn(move || {
            while let Ok(ask) = rx.recv() {
                let input = read(&mut editor, &ask.prompt);
                if let (Input::Line(line), true) = (&input, ask.history) {
                    if !line.trim().is_empty() {
                        let _ = editor.add_history_entry(line.as_str());
                        if let Some(path) = &history {
                            let _ = editor.append_history(path);
                        }
                    }
                }
                let _ = ask.reply.send(input);
            }
        });
        Ok(Prompter { asks: tx })
    }

    /// Reads one (possibly multi-line) message.
    pub async fn message(&self, prompt: &str) -> Input {
        self.ask(prompt, true).await
    }

    /// Reads one answer to a question.
    pub async fn answer(&self, prompt: &str) -> Input {
        self.ask(prompt, false).await
    }

    async fn ask(&self, prompt: &str, history: bool) -> Input {
        let (reply, rx) = oneshot::channel();
        let ask = Ask {
            prompt: prompt.to_string(),
            history,
            reply,
        };
        if self.asks.send(ask).is_err() {
            return Input::Leave;
        }
        rx.await.unwrap_or(Input::Leave)
    }
}

fn read(editor: &mut Editor<(), FileHistory>, prompt: &str) -> Input {
    let mut lines: Vec<String> = Vec::new();
    let mut in_quotes = false;
    loop {
        let shown = if lines.is_empty() { prompt } else { "... " };
        match editor.readline(shown) {
            Ok(line) => {
                if lines.is_empty() && line.trim_start().starts_with("\"\"\"") {
                    let rest = line.trim_start().trim_start_matches("\"\"\"").to_string();
                    if let Some(done) = rest.strip_suffix("\"\"\"") {
                        return Input::Line(done.to_string());
                    }
                    in_quotes = true;
                    lines.push(rest);
                    continue;
                }
                if in_quotes {
                    if let Some(done) = line.trim_end().strip_suffix("\"\"\"") {
                        lines.push(done.to_string());
                        return Input::Line(lines.join("\n").trim().to_string());
                    }
                    lines.push(line);
                    continue;
                }
                if let Some(more) = line.strip_suffix('\\') {
                    lines.push(more.to_string());
                    continue;
                }
                lines.push(line);
                return Input::Line(lines.join("\n"));
            }
            Err(ReadlineError::Interrupted) if !lines.is_empty() => {
                // Ctrl-C inside a multi-line message drops it.
                return Input::Line(String::new());
            }
            Err(_) => return Input::Leave,
        }
    }
}
