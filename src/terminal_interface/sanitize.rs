//! Text from outside oi made safe for a terminal: the model's prose and code, console
//! output, notices and errors, file names. What a terminal would obey (control
//! characters, escape sequences, C1 controls) is shown instead, as `\x1b`, `\r`,
//! `\u{9b}`…, so nothing can move the cursor, erase or hide a line, set the title,
//! make links or touch the clipboard. In code and names, Unicode's invisible and
//! reordering characters (bidi overrides and isolates, "Trojan Source"; zero-width
//! characters; line separators) are shown too, so what is displayed is every character
//! that will run.
//!
//! Console output ([`Output`]) keeps a small allow-list of SGR colours (foreground
//! colours that stay readable, bold, underline, resets) on a terminal and always ends a
//! piece with a reset; a lone `\r` (a progress bar redrawing its line) becomes a line
//! break so it cannot overwrite what was shown.
//!
//! JSON output stays lossless: [`json_line`] only writes JSON escapes (`\u0085`) for
//! what a terminal could act on. Knows characters, not where they are printed: callers
//! pick the [`Kind`] and decide when (a pipe to a file keeps `oi exec` output exact).

use std::borrow::Cow;
use std::fmt::Write as _;

/// What the text is, which decides what stays as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The model's prose, notices, errors: line breaks and tabs stay (`\r\n` is a line
    /// break); controls and bidi overrides are shown.
    Prose,
    /// Code that will run: line breaks and tabs stay; every other control and every
    /// invisible or reordering character is shown.
    Code,
    /// A name on one line (a file name, a path, a language): everything that is not a
    /// plain visible character is shown, line breaks and tabs included.
    Name,
}

/// Reverse video around what was made visible, so that an escape the text really holds
/// (the four characters `\x1b`) and one made visible can be told apart on a terminal.
pub const MARK_ON: &str = "\x1b[7m";
pub const MARK_OFF: &str = "\x1b[27m";

/// The text with everything a terminal could act on made visible.
///
/// ```
/// use oi::terminal_interface::sanitize::{visible, Kind};
/// assert_eq!(visible("a\x1b]52;c;aGk=\x07b", Kind::Prose), "a\\x1b]52;c;aGk=\\x07b");
/// ```
pub fn visible(text: &str, kind: Kind) -> Cow<'_, str> {
    if text.chars().all(|c| !needs_escape(c, kind)) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    push_visible(&mut out, text, kind, false);
    Cow::Owned(out)
}

/// Appends `text` to `out` with what a terminal could act on made visible; with `mark`,
/// each visible form is wrapped in [`MARK_ON`]/[`MARK_OFF`]. Returns whether anything
/// was made visible.
pub fn push_visible(out: &mut String, text: &str, kind: Kind, mark: bool) -> bool {
    let mut changed = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if kind == Kind::Prose && c == '\r' && chars.peek() == Some(&'\n') {
            // A Windows line end in prose is a line end.
            continue;
        }
        if !needs_escape(c, kind) {
            out.push(c);
            continue;
        }
        changed = true;
        if mark {
            out.push_str(MARK_ON);
        }
        escape_into(out, c);
        if mark {
            out.push_str(MARK_OFF);
        }
    }
    changed
}

/// Whether `c` is shown in its escaped form for this kind of text.
fn needs_escape(c: char, kind: Kind) -> bool {
    match c {
        '\n' | '\t' => kind == Kind::Name,
        '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}' => true,
        _ if is_bidi_control(c) => true,
        _ => kind != Kind::Prose && is_invisible(c),
    }
}

/// Explicit bidi embeddings, overrides and isolates: they reorder what follows.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Characters that show as nothing (or as blank) yet are part of the text: zero-width
/// spaces and joiners, direction marks, line and paragraph separators, soft hyphen,
/// invisible operators, variation selectors, tags, fillers.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{ad}'
            | '\u{34f}'
            | '\u{61c}'
            | '\u{115f}'
            | '\u{1160}'
            | '\u{17b4}'
            | '\u{17b5}'
            | '\u{180b}'..='\u{180f}'
            | '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{206f}'
            | '\u{3164}'
            | '\u{fe00}'..='\u{fe0f}'
            | '\u{feff}'
            | '\u{ffa0}'
            | '\u{fff0}'..='\u{fffb}'
            | '\u{e0000}'..='\u{e0fff}'
    )
}

fn escape_into(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\u{0}'..='\u{1f}' | '\u{7f}' => {
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
        _ => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
    }
}

/// How console output is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Colours {
    /// Allowed SGR sequences reach the terminal.
    Keep,
    /// Allowed SGR sequences are dropped (plain output has no colour).
    Drop,
}

/// The longest escape sequence held back at the end of a piece, waiting for the rest.
const MAX_PENDING: usize = 32;

/// Neutralises a stream of console output, piece by piece. An allowed colour sequence
/// split across pieces is held back (at most [`MAX_PENDING`] bytes) until it is whole.
#[derive(Debug)]
pub struct Output {
    colours: Colours,
    mark: bool,
    /// The start of an escape sequence the last piece ended with.
    pending: String,
    /// The last piece ended with `\r`, turned into a line break: a `\n` right after it
    /// belongs to it.
    after_cr: bool,
}

impl Output {
    /// `mark`: wrap visible forms in reverse video (a terminal).
    pub fn new(colours: Colours, mark: bool) -> Output {
        Output {
            colours,
            mark,
            pending: String::new(),
            after_cr: false,
        }
    }

    /// The safe form of the next piece of output. If a colour was set, the result ends
    /// with a reset, so colours never leak into what oi draws next.
    pub fn feed(&mut self, piece: &str) -> String {
        let mut text = std::mem::take(&mut self.pending);
        text.push_str(piece);
        let mut out = String::with_capacity(text.len() + 8);
        let mut coloured = false;
        let mut rest = text.as_str();
        if self.after_cr && !rest.is_empty() {
            self.after_cr = false;
            rest = rest.strip_prefix('\n').unwrap_or(rest);
        }
        while !rest.is_empty() {
            // Ordinary text goes through in one piece.
            let stop = rest
                .char_indices()
                .find(|&(_, c)| c == '\r' || needs_escape(c, Kind::Prose))
                .map_or(rest.len(), |(i, _)| i);
            out.push_str(&rest[..stop]);
            rest = &rest[stop..];
            let Some(c) = rest.chars().next() else {
                break;
            };
            match c {
                '\x1b' => match sgr(rest) {
                    Sgr::Allowed(len) => {
                        if self.colours == Colours::Keep {
                            out.push_str(&rest[..len]);
                            coloured = true;
                        }
                        rest = &rest[len..];
                        continue;
                    }
                    Sgr::Incomplete if rest.len() <= MAX_PENDING => {
                        self.pending = rest.to_string();
                        break;
                    }
                    Sgr::Incomplete | Sgr::Other => {}
                },
                '\r' => {
                    out.push('\n');
                    rest = &rest[1..];
                    if rest.is_empty() {
                        self.after_cr = true;
                    } else {
                        rest = rest.strip_prefix('\n').unwrap_or(rest);
                    }
                    continue;
                }
                _ => {}
            }
            let len = c.len_utf8();
            push_visible(&mut out, &rest[..len], Kind::Prose, self.mark);
            rest = &rest[len..];
        }
        if coloured {
            // Before the piece's last line break, so that the reset does not start a
            // line of its own.
            let body = out.trim_end_matches('\n').len();
            out.insert_str(body, "\x1b[0m");
        }
        out
    }

    /// Bytes held back between pieces (at most an unfinished escape sequence).
    pub fn retained(&self) -> usize {
        self.pending.capacity()
    }

    /// What is still held back, shown (the output ended inside an escape sequence).
    pub fn finish(&mut self) -> String {
        self.after_cr = false;
        let pending = std::mem::take(&mut self.pending);
        let mut out = String::new();
        push_visible(&mut out, &pending, Kind::Prose, self.mark);
        out
    }
}

enum Sgr {
    /// A whole `ESC [ … m` whose parameters are all allowed, this many bytes long.
    Allowed(usize),
    /// The text ends before the sequence does.
    Incomplete,
    /// Anything else (shown, not obeyed).
    Other,
}

/// Judges the escape sequence at the start of `text` (which starts with ESC).
fn sgr(text: &str) -> Sgr {
    let bytes = text.as_bytes();
    match bytes.get(1) {
        None => return Sgr::Incomplete,
        Some(b'[') => {}
        Some(_) => return Sgr::Other,
    }
    let mut end = 2;
    while let Some(&b) = bytes.get(end) {
        match b {
            b'0'..=b'9' | b';' => end += 1,
            b'm' => {
                let params = &text[2..end];
                let ok = params.split(';').all(allowed_sgr);
                return if ok {
                    Sgr::Allowed(end + 1)
                } else {
                    Sgr::Other
                };
            }
            _ => return Sgr::Other,
        }
    }
    Sgr::Incomplete
}

/// SGR parameters kept: reset, bold, underline and their ends, and the foreground
/// colours that read on dark and light backgrounds alike (not black, white, or the
/// 256/true-colour forms that can match the background). Never conceal (8),
/// backgrounds, blink or reverse.
fn allowed_sgr(param: &str) -> bool {
    matches!(
        param,
        "" | "0"
            | "1"
            | "4"
            | "22"
            | "24"
            | "39"
            | "31"
            | "32"
            | "33"
            | "34"
            | "35"
            | "36"
            | "90"
            | "91"
            | "92"
            | "93"
            | "94"
            | "95"
            | "96"
    )
}

/// A JSON value as one line, lossless, with every character a terminal could act on
/// written as a JSON escape (serde writes C1 controls, bidi and invisible characters
/// as they are).
pub fn json_line(value: &serde_json::Value) -> String {
    let text = value.to_string();
    if text.chars().all(|c| !needs_escape(c, Kind::Code)) {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        // Outside strings serde writes only ASCII punctuation, digits and letters, so
        // every such character is inside a string, where an escape means the same.
        if needs_escape(c, Kind::Code) {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                let _ = write!(out, "\\u{unit:04x}");
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_are_shown_not_obeyed() {
        let cases = [
            // OSC 52: write the clipboard.
            (
                "\x1b]52;c;ZWNobyBwd25lZA==\x07",
                "\\x1b]52;c;ZWNobyBwd25lZA==\\x07",
            ),
            // OSC 0: the window title.
            ("\x1b]0;owned\x1b\\", "\\x1b]0;owned\\x1b\\"),
            // OSC 8: a link.
            (
                "\x1b]8;;http://127.0.0.1/\x1b\\click\x1b]8;;\x1b\\",
                "\\x1b]8;;http://127.0.0.1/\\x1b\\click\\x1b]8;;\\x1b\\",
            ),
            // Clear the screen, erase a line, go to column 1.
            ("\x1b[2J\x1b[2K\x1b[1G", "\\x1b[2J\\x1b[2K\\x1b[1G"),
            // C1 CSI and OSC, as UTF-8.
            ("\u{9b}2J\u{9d}0;t\u{9c}", "\\u{9b}2J\\u{9d}0;t\\u{9c}"),
            // Backspaces, bell, carriage return, DEL, NUL.
            (
                "rm\x08\x08ls\x07\r\x7f\0",
                "rm\\x08\\x08ls\\x07\\r\\x7f\\x00",
            ),
            // Bidi overrides reorder what follows.
            (
                "a\u{202e}b\u{2066}c\u{2069}",
                "a\\u{202e}b\\u{2066}c\\u{2069}",
            ),
        ];
        for (hostile, shown) in cases {
            for kind in [Kind::Prose, Kind::Code, Kind::Name] {
                assert_eq!(visible(hostile, kind), shown, "{kind:?}: {hostile:?}");
            }
        }
    }

    #[test]
    fn each_kind_keeps_what_it_may() {
        let text = "if x:\n\tprint('a\u{200b}b')\r\n";
        assert_eq!(visible(text, Kind::Prose), "if x:\n\tprint('a\u{200b}b')\n");
        assert_eq!(
            visible(text, Kind::Code),
            "if x:\n\tprint('a\\u{200b}b')\\r\n"
        );
        assert_eq!(
            visible(text, Kind::Name),
            "if x:\\n\\tprint('a\\u{200b}b')\\r\\n"
        );
        // Line separators, joiners and tags in code and names.
        assert_eq!(
            visible("a\u{2028}b\u{200d}c\u{feff}\u{e0041}", Kind::Code),
            "a\\u{2028}b\\u{200d}c\\u{feff}\\u{e0041}"
        );
        // Ordinary text, accents, CJK and emoji pass untouched (and are not copied).
        let plain = "Voilà: 数据 ✓ 🙂 — fine";
        assert!(matches!(visible(plain, Kind::Code), Cow::Borrowed(_)));
        let mut marked = String::new();
        assert!(push_visible(&mut marked, "a\x1bb", Kind::Code, true));
        assert_eq!(marked, "a\x1b[7m\\x1b\x1b[27mb");
    }

    #[test]
    fn console_output_keeps_safe_colours_only() {
        let mut out = Output::new(Colours::Keep, false);
        assert_eq!(
            out.feed("\x1b[31mred\x1b[0m \x1b[1;32mok\x1b[m"),
            "\x1b[31mred\x1b[0m \x1b[1;32mok\x1b[m\x1b[0m"
        );
        assert_eq!(out.feed("\x1b[33mwarn\n\n"), "\x1b[33mwarn\x1b[0m\n\n");
        // Conceal, backgrounds, black, 256 colours, reverse: shown, not obeyed.
        for hostile in [
            "\x1b[8m",
            "\x1b[41m",
            "\x1b[30m",
            "\x1b[38;5;0m",
            "\x1b[7m",
            "\x1b[1;8m",
            "\x1b[?25l",
        ] {
            let shown = out.feed(hostile);
            assert!(shown.starts_with("\\x1b["), "{hostile:?} -> {shown:?}");
            assert!(!shown.contains('\x1b'), "{hostile:?} -> {shown:?}");
        }
        // Plain output drops the colours and keeps the text.
        let mut plain = Output::new(Colours::Drop, false);
        assert_eq!(plain.feed("\x1b[32mgreen\x1b[0m\x1b[2J"), "green\\x1b[2J");
    }

    #[test]
    fn a_carriage_return_cannot_overwrite_a_line() {
        let mut out = Output::new(Colours::Keep, false);
        assert_eq!(out.feed("10%\r20%\r\n"), "10%\n20%\n");
        // Split between pieces: one line break, not two.
        assert_eq!(out.feed("30%\r"), "30%\n");
        assert_eq!(out.feed("\ndone\n"), "done\n");
        assert_eq!(out.feed("a\r"), "a\n");
        assert_eq!(out.feed("b"), "b");
    }

    #[test]
    fn a_colour_split_across_pieces_is_held_until_whole() {
        let mut out = Output::new(Colours::Keep, false);
        assert_eq!(out.feed("x\x1b[3"), "x");
        assert_eq!(out.feed("1mred"), "\x1b[31mred\x1b[0m");
        assert_eq!(out.feed("\x1b"), "");
        assert_eq!(out.feed("]0;title\x07"), "\\x1b]0;title\\x07");
        assert_eq!(out.feed("end\x1b["), "end");
        assert_eq!(out.finish(), "\\x1b[");
        // A sequence that never ends is not held forever.
        let long = format!("\x1b[{}", "1;".repeat(40));
        assert!(out.feed(&long).starts_with("\\x1b["));
    }

    #[test]
    fn json_stays_lossless_and_inert() {
        let value = serde_json::json!({"content": "a\x1b[2J\u{9b}\u{202e}\u{e0041}é\n"});
        let line = json_line(&value);
        assert_eq!(
            line,
            r#"{"content":"a\u001b[2J\u009b\u202e\udb40\udc41é\n"}"#
        );
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&line).unwrap(),
            value
        );
    }
}
