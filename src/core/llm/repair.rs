//! From what a model wrote to a block to run: tool-call arguments, fenced code in text
//! mode, and the shapes local models really produce — tool-call JSON written as plain
//! text, `functions.execute(...)`, `<tool_call>` tags, a tool named after a language,
//! arguments that are bare code.
//!
//! Repairs only where the intent is clear; otherwise the caller gets a message to send
//! back to the model. Language names are left raw: the loop resolves them against the
//! languages the sandbox offers.

use serde_json::Value;

/// A block the model asked to run. `language` is what it wrote, if anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeRequest {
    pub language: Option<String>,
    pub code: String,
}

/// Names of tools that mean "run this code".
const RUN_TOOLS: &[&str] = &[
    "execute",
    "run",
    "run_code",
    "execute_code",
    "code_interpreter",
    "run_python",
    "computer.run",
];

/// Fence tags that mark data or output, not code to run.
const PROSE_TAGS: &[&str] = &[
    "text",
    "txt",
    "output",
    "console",
    "json",
    "yaml",
    "yml",
    "csv",
    "markdown",
    "md",
    "plaintext",
    "log",
    "diff",
    "toml",
    "xml",
];

/// Reads a tool call. `Err` is the message for the model when the intent is unclear.
pub fn from_tool_call(name: &str, arguments: &str) -> Result<CodeRequest, String> {
    let name = name.trim();
    let short = name.rsplit('.').next().unwrap_or(name);
    let is_run_tool = RUN_TOOLS.contains(&name) || RUN_TOOLS.contains(&short);
    // A tool named after a language (`python`, `bash`): Open Interpreter's models do this.
    let name_language = (!is_run_tool && !short.is_empty()).then(|| short.to_string());
    let args = strip_fences(arguments.trim());
    match first_json(args) {
        Some(Value::Object(map)) => {
            let map = Value::Object(map);
            // `{"name": "execute", "arguments": {...}}` inside the arguments.
            if let Some(inner) = ["arguments", "parameters", "input"]
                .iter()
                .find_map(|k| map.get(*k).filter(|v| v.is_object()))
            {
                let inner_name = map["name"].as_str().unwrap_or(name);
                return from_tool_call(inner_name, &inner.to_string());
            }
            let code = code_field(&map).ok_or_else(|| {
                format!(
                    "The call to `{name}` has no `code` argument: {}. Call `execute` with JSON \
                     {{\"language\": ..., \"code\": ...}}.",
                    shorten(arguments)
                )
            })?;
            let language = ["language", "lang", "kind"]
                .iter()
                .find_map(|k| map.get(*k).and_then(|v| v.as_str()))
                .map(str::to_string)
                .or(name_language);
            Ok(CodeRequest { language, code })
        }
        Some(Value::String(code)) if name_language.is_some() || is_run_tool => Ok(CodeRequest {
            language: name_language,
            code,
        }),
        _ if name_language.is_some() && !args.is_empty() => Ok(CodeRequest {
            language: name_language,
            code: args.to_string(),
        }),
        _ if args.is_empty() => Err(format!(
            "The call to `{name}` had no arguments, so nothing ran. Call `execute` with JSON \
             {{\"language\": ..., \"code\": ...}}."
        )),
        _ => Err(format!(
            "The arguments of `{name}` are not valid JSON: {}. Nothing ran. Call `execute` with \
             JSON {{\"language\": ..., \"code\": ...}}.",
            shorten(arguments)
        )),
    }
}

/// A whole reply that is really a tool call written as text: `{"name": "execute",
/// "arguments": {...}}`, `{"language": ..., "code": ...}`, `<tool_call>...</tool_call>`,
/// `functions.execute({...})`, `execute(language="python", code="...")`.
/// `None` when the text is not one.
pub fn from_text(text: &str) -> Option<Result<CodeRequest, String>> {
    let mut t = text.trim();
    for (open, close) in [
        ("<tool_call>", "</tool_call>"),
        ("<function_call>", "</function_call>"),
    ] {
        if let Some(rest) = t.strip_prefix(open) {
            t = rest.trim();
            t = t.strip_suffix(close).unwrap_or(t).trim();
        }
    }
    t = strip_fences(t);
    t = t.strip_prefix("functions.").unwrap_or(t);
    if t.starts_with('{') {
        let value = first_json(t)?;
        let obj = value.as_object()?;
        if let Some(name) = obj.get("name").and_then(|n| n.as_str()) {
            let args = ["arguments", "parameters", "input"]
                .iter()
                .find_map(|k| obj.get(*k))?;
            let args = match args {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            return Some(from_tool_call(name, &args));
        }
        if obj.contains_key("code") {
            return Some(from_tool_call("execute", t));
        }
        return None;
    }
    // name(...) with JSON or keyword arguments.
    let open = t.find('(')?;
    let name = &t[..open];
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '.')
    {
        return None;
    }
    let inner = t[open + 1..].trim_end().strip_suffix(')')?.trim();
    if inner.starts_with('{') {
        return Some(from_tool_call(name, inner));
    }
    let short = name.rsplit('.').next().unwrap_or(name);
    if !RUN_TOOLS.contains(&short) {
        return None;
    }
    let kwargs = python_kwargs(inner)?;
    let code = kwargs
        .iter()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.clone())?;
    let language = kwargs
        .iter()
        .find(|(k, _)| k == "language" || k == "lang")
        .map(|(_, v)| v.clone());
    Some(Ok(CodeRequest { language, code }))
}

/// Whether text that begins like this may turn out to be a tool call written as text,
/// so the loop should hold it back instead of showing it as prose.
pub fn may_be_tool_text(start: &str) -> bool {
    let t = start.trim_start();
    [
        "{",
        "<tool_call>",
        "<function_call>",
        "functions.",
        "execute(",
        "```json",
    ]
    .iter()
    .any(|p| t.starts_with(p) || (p.starts_with(t) && !t.is_empty()))
}

/// Whether a fence tag marks data rather than code to run.
pub fn is_prose_tag(tag: &str) -> bool {
    PROSE_TAGS.contains(&tag.to_ascii_lowercase().as_str())
}

/// What can be read so far from tool-call arguments still streaming: the language,
/// once its string is complete, and as much of the code as has arrived. Lets the code
/// stream to the user while the model writes it. For arguments that grow, keep an
/// [`ArgumentScanner`] and feed it the new pieces instead: this reads them all again.
pub fn partial_arguments(args: &str) -> (Option<String>, Option<String>) {
    let mut scanner = ArgumentScanner::default();
    scanner.feed(args);
    (
        scanner.language().map(str::to_string),
        scanner.code().map(str::to_string),
    )
}

/// Reads `"language"` and `"code"` out of tool-call arguments as they stream, looking at
/// each character once, so that a long call costs time in proportion to its length
/// (re-reading the whole text for every piece made it quadratic). A small JSON lexer:
/// a string followed by `:` is a key, at any depth (`{"arguments": {"code": …}}` too);
/// the first value of each key counts; text around the JSON (a fence) is skipped.
#[derive(Debug, Default)]
pub struct ArgumentScanner {
    in_string: bool,
    escape: Escape,
    /// A high surrogate (`\ud83d`) waiting for its pair.
    high: Option<u32>,
    /// What the string being read is.
    role: Role,
    /// The string being read, while it may still be a key looked for.
    candidate: String,
    /// A string just ended that names a key looked for; a `:` next makes it the key.
    key: Option<Field>,
    /// The key whose value comes next.
    value_of: Option<Field>,
    language_seen: bool,
    language: String,
    language_done: bool,
    code_seen: bool,
    code_started: bool,
    code: String,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Escape {
    #[default]
    None,
    Backslash,
    /// `\u` and the value of the hex digits so far.
    Unicode(u32, u8),
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Role {
    #[default]
    Other,
    Language,
    Code,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Language,
    Code,
}

/// The longest key looked for (`language`).
const KEY_MAX: usize = 8;

impl ArgumentScanner {
    /// Reads the next piece of the arguments.
    pub fn feed(&mut self, piece: &str) {
        for c in piece.chars() {
            if self.in_string {
                self.string_char(c);
            } else {
                self.outside_char(c);
            }
        }
    }

    /// The language, once its string is complete.
    pub fn language(&self) -> Option<&str> {
        self.language_done.then_some(self.language.as_str())
    }

    /// The code so far, once its string has begun.
    pub fn code(&self) -> Option<&str> {
        self.code_started.then_some(self.code.as_str())
    }

    fn outside_char(&mut self, c: char) {
        match c {
            c if c.is_whitespace() => {}
            ':' => self.value_of = self.key.take(),
            '"' => {
                self.key = None;
                self.role = match self.value_of.take() {
                    Some(Field::Code) if !self.code_seen => {
                        self.code_seen = true;
                        self.code_started = true;
                        Role::Code
                    }
                    Some(Field::Language) if !self.language_seen => {
                        self.language_seen = true;
                        Role::Language
                    }
                    _ => Role::Other,
                };
                self.candidate.clear();
                self.in_string = true;
            }
            _ => {
                // A value that is not a string: that key's first value is taken.
                match self.value_of.take() {
                    Some(Field::Code) => self.code_seen = true,
                    Some(Field::Language) => self.language_seen = true,
                    None => {}
                }
                self.key = None;
            }
        }
    }

    fn string_char(&mut self, c: char) {
        match self.escape {
            Escape::Backslash => {
                self.escape = Escape::None;
                match c {
                    'u' => self.escape = Escape::Unicode(0, 0),
                    'n' => self.push('\n'),
                    't' => self.push('\t'),
                    'r' => self.push('\r'),
                    'b' => self.push('\u{8}'),
                    'f' => self.push('\u{c}'),
                    other => self.push(other),
                }
            }
            Escape::Unicode(value, digits) => match c.to_digit(16) {
                Some(d) if digits < 3 => self.escape = Escape::Unicode(value * 16 + d, digits + 1),
                Some(d) => {
                    self.escape = Escape::None;
                    self.code_point(value * 16 + d);
                }
                None => {
                    // Not an escape after all: say so, and read the character as it is.
                    self.escape = Escape::None;
                    self.push(char::REPLACEMENT_CHARACTER);
                    self.string_char(c);
                }
            },
            Escape::None => match c {
                '\\' => self.escape = Escape::Backslash,
                '"' => self.end_string(),
                c => self.push(c),
            },
        }
    }

    fn code_point(&mut self, unit: u32) {
        match unit {
            0xD800..=0xDBFF => {
                if self.high.replace(unit).is_some() {
                    self.push(char::REPLACEMENT_CHARACTER);
                }
            }
            0xDC00..=0xDFFF => match self.high.take() {
                Some(high) => {
                    let c = 0x10000 + ((high - 0xD800) << 10) + (unit - 0xDC00);
                    self.push(char::from_u32(c).unwrap_or(char::REPLACEMENT_CHARACTER));
                }
                None => self.push(char::REPLACEMENT_CHARACTER),
            },
            _ => self.push(char::from_u32(unit).unwrap_or(char::REPLACEMENT_CHARACTER)),
        }
    }

    fn push(&mut self, c: char) {
        // A high surrogate not followed by its pair stands alone.
        if self.high.is_some() && !(0xDC00..=0xDFFF).contains(&(c as u32)) {
            self.high = None;
            self.push_char(char::REPLACEMENT_CHARACTER);
        }
        self.push_char(c);
    }

    fn push_char(&mut self, c: char) {
        match self.role {
            Role::Code => self.code.push(c),
            Role::Language => self.language.push(c),
            // Longer than any key looked for: one more character marks it as no key.
            Role::Other if self.candidate.len() <= KEY_MAX => self.candidate.push(c),
            Role::Other => {}
        }
    }

    fn end_string(&mut self) {
        if self.high.take().is_some() {
            self.push_char(char::REPLACEMENT_CHARACTER);
        }
        match self.role {
            Role::Language => self.language_done = true,
            Role::Code => {}
            Role::Other => {
                self.key = match self.candidate.as_str() {
                    "code" => Some(Field::Code),
                    "language" => Some(Field::Language),
                    _ => None,
                };
            }
        }
        self.role = Role::Other;
        self.in_string = false;
    }
}

fn code_field(map: &Value) -> Option<String> {
    ["code", "command", "cmd", "script", "source"]
        .iter()
        .find_map(|k| match map.get(*k)? {
            Value::String(s) => Some(s.clone()),
            Value::Array(lines) => Some(
                lines
                    .iter()
                    .map(|l| l.as_str().map_or_else(|| l.to_string(), str::to_string))
                    .collect::<Vec<_>>()
                    .join("\n"),
            ),
            _ => None,
        })
}

/// The first JSON value in the text, ignoring what follows it.
fn first_json(text: &str) -> Option<Value> {
    serde_json::Deserializer::from_str(text)
        .into_iter::<Value>()
        .next()?
        .ok()
}

fn strip_fences(text: &str) -> &str {
    let Some(rest) = text.strip_prefix("```") else {
        return text;
    };
    let rest = rest.split_once('\n').map_or("", |(_, body)| body);
    rest.trim_end().strip_suffix("```").unwrap_or(rest).trim()
}

/// A tool call's arguments, cut for a message back to the model.
fn shorten(text: &str) -> String {
    crate::core::text::shorten(text.trim(), 300)
}

/// Parses `key="value", key2='''value'''` with Python's string escapes.
fn python_kwargs(text: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let eq = rest.find('=')?;
        let key = rest[..eq].trim().to_string();
        if key.is_empty() || !key.chars().all(|c| c.is_alphanumeric() || c == '_') {
            return None;
        }
        let (value, after) = python_string(rest[eq + 1..].trim_start())?;
        out.push((key, value));
        rest = after.trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    }
    Some(out)
}

/// One Python string literal at the start of `text`; returns it and what follows.
fn python_string(text: &str) -> Option<(String, &str)> {
    let raw = text.starts_with(['r', 'R']);
    let text = if raw { &text[1..] } else { text };
    let quote = ["\"\"\"", "'''", "\"", "'"]
        .into_iter()
        .find(|q| text.starts_with(q))?;
    let body = &text[quote.len()..];
    let mut value = String::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        if body[i..].starts_with(quote) {
            return Some((value, &body[i + quote.len()..]));
        }
        if c == '\\' && !raw {
            let (_, e) = chars.next()?;
            value.push(match e {
                'n' => '\n',
                't' => '\t',
                'r' => '\r',
                '0' => '\0',
                other => other,
            });
        } else {
            value.push(c);
        }
    }
    None
}

/// Text-mode parsing: splits streamed prose from fenced code blocks as deltas arrive.
/// Prose is passed on at once except for a line that may be a fence.
#[derive(Debug, Default)]
pub struct FenceParser {
    line: String,
    /// Bytes of `line`'s leading whitespace already skipped (each looked at once).
    line_lead: usize,
    in_code: Option<String>,
    /// Inside a fence of data (```json …), whose closing fence opens nothing.
    in_data: bool,
}

/// What a piece of streamed text-mode reply contained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextPiece {
    Prose(String),
    CodeStart { language: String },
    Code(String),
    CodeEnd,
}

impl FenceParser {
    pub fn feed(&mut self, delta: &str) -> Vec<TextPiece> {
        let mut out = Vec::new();
        for c in delta.chars() {
            self.line.push(c);
            if c == '\n' {
                self.end_line(&mut out);
            }
        }
        // Pass on a partial line unless it could still become a fence (it starts with a
        // backtick, or nothing but whitespace has come yet).
        let rest = &self.line[self.line_lead..];
        self.line_lead += rest.len() - rest.trim_start().len();
        if self.line[self.line_lead..]
            .chars()
            .next()
            .is_some_and(|c| c != '`')
        {
            let text = self.take_line();
            out.push(self.text(text));
        }
        out
    }

    fn take_line(&mut self) -> String {
        self.line_lead = 0;
        std::mem::take(&mut self.line)
    }

    /// The end of the reply: an unterminated block is complete.
    pub fn finish(&mut self) -> Vec<TextPiece> {
        let mut out = Vec::new();
        if !self.line.is_empty() {
            let line = self.take_line();
            if self.in_code.is_some() && line.trim() == "```" {
                self.in_code = None;
                out.push(TextPiece::CodeEnd);
                return out;
            }
            out.push(self.text(line));
        }
        if self.in_code.take().is_some() {
            out.push(TextPiece::CodeEnd);
        }
        out
    }

    fn text(&self, text: String) -> TextPiece {
        if self.in_code.is_some() {
            TextPiece::Code(text)
        } else {
            TextPiece::Prose(text)
        }
    }

    fn end_line(&mut self, out: &mut Vec<TextPiece>) {
        let line = self.take_line();
        let trimmed = line.trim();
        match &self.in_code {
            None => {
                if let Some(tag) = trimmed.strip_prefix("```") {
                    let tag = tag.trim();
                    let is_tag = tag
                        .chars()
                        .all(|c| c.is_alphanumeric() || "+#._-".contains(c));
                    if self.in_data {
                        // Any fence ends a data block; a tagged one is not how models close.
                        self.in_data = !tag.is_empty();
                    } else if is_tag && (tag.is_empty() || is_prose_tag(tag)) {
                        // An untagged fence is as often output the model imagines as
                        // code; only tagged blocks run.
                        self.in_data = true;
                    } else if is_tag {
                        self.in_code = Some(tag.to_string());
                        out.push(TextPiece::CodeStart {
                            language: tag.to_string(),
                        });
                        return;
                    }
                }
                out.push(TextPiece::Prose(line));
            }
            Some(_) => {
                if trimmed == "```" {
                    self.in_code = None;
                    out.push(TextPiece::CodeEnd);
                } else {
                    out.push(TextPiece::Code(line));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(language: Option<&str>, code: &str) -> Result<CodeRequest, String> {
        Ok(CodeRequest {
            language: language.map(str::to_string),
            code: code.into(),
        })
    }

    #[test]
    fn tool_calls_in_the_shapes_models_write() {
        assert_eq!(
            from_tool_call("execute", r#"{"language":"python","code":"print(1)"}"#),
            ok(Some("python"), "print(1)")
        );
        // Open Interpreter's classic: a tool named after the language, bare code.
        assert_eq!(
            from_tool_call("python", "print(1)"),
            ok(Some("python"), "print(1)")
        );
        assert_eq!(
            from_tool_call("functions.execute", r#"{"code":"ls"}"#),
            ok(None, "ls")
        );
        assert_eq!(
            from_tool_call(
                "execute",
                r#"{"name":"execute","arguments":{"language":"shell","code":"ls"}}"#
            ),
            ok(Some("shell"), "ls")
        );
        assert_eq!(
            from_tool_call("bash", r#"{"command":"ls -l"}"#),
            ok(Some("bash"), "ls -l")
        );
        assert_eq!(
            from_tool_call(
                "execute",
                "```json\n{\"language\":\"python\",\"code\":\"1\"}\n```"
            ),
            ok(Some("python"), "1")
        );
        assert!(from_tool_call("execute", "print(1")
            .unwrap_err()
            .contains("not valid JSON"));
        assert!(from_tool_call("execute", "")
            .unwrap_err()
            .contains("no arguments"));
        assert!(from_tool_call("execute", r#"{"language":"python"}"#)
            .unwrap_err()
            .contains("no `code`"));
    }

    #[test]
    fn tool_calls_written_as_text() {
        let want = ok(Some("python"), "print(42)");
        assert_eq!(
            from_text(
                r#"{"name": "execute", "arguments": {"language": "python", "code": "print(42)"}}"#
            ),
            Some(want.clone())
        );
        assert_eq!(
            from_text("<tool_call>\n{\"name\": \"execute\", \"arguments\": {\"language\": \"python\", \"code\": \"print(42)\"}}\n</tool_call>"),
            Some(want.clone())
        );
        assert_eq!(
            from_text(r#"functions.execute({"language": "python", "code": "print(42)"})"#),
            Some(want.clone())
        );
        assert_eq!(
            from_text(r#"execute(language="python", code="print(42)")"#),
            Some(want.clone())
        );
        assert_eq!(
            from_text("functions.execute(language='python', code='''print(42)''')"),
            Some(want)
        );
        assert_eq!(
            from_text(
                r#"{"name":"execute","arguments":"{\"language\":\"shell\",\"code\":\"ls\"}"}"#
            ),
            Some(ok(Some("shell"), "ls"))
        );
        assert_eq!(from_text("The answer is 42."), None);
        assert_eq!(from_text(r#"{"answer": 42}"#), None);
        assert_eq!(from_text("print(42)"), None);
    }

    #[test]
    fn partial_arguments_stream_the_code() {
        assert_eq!(partial_arguments(r#"{"langu"#), (None, None));
        assert_eq!(
            partial_arguments(r#"{"language": "python", "code": "print(\"a\n"#),
            (Some("python".into()), Some("print(\"a\n".into()))
        );
        assert_eq!(
            partial_arguments(r#"{"code":"x\"#),
            (None, Some("x".into()))
        );
        assert_eq!(partial_arguments(r#"{"language":"py"#), (None, None));
    }

    #[test]
    fn the_scanner_reads_pieces_split_anywhere() {
        let args = r#"```json
{"name": "execute", "arguments": {"note": "a \"code\": \"no\"", "language": "python",
 "code": "print(\"\u00e9\ud83d\ude00\")\n\tx = '\\'"}, "code": "second"}"#;
        let want_code = "print(\"é😀\")\n\tx = '\\'";
        let mut whole = ArgumentScanner::default();
        whole.feed(args);
        assert_eq!(whole.language(), Some("python"));
        assert_eq!(whole.code(), Some(want_code));
        let chars: Vec<char> = args.chars().collect();
        for split in [1, 2, 3, 5, 7] {
            let mut s = ArgumentScanner::default();
            for piece in chars.chunks(split) {
                s.feed(&piece.iter().collect::<String>());
            }
            assert_eq!(s.code(), Some(want_code), "pieces of {split}");
            assert_eq!(s.language(), Some("python"));
        }
        // The first value of a key counts, even when it is not a string.
        let mut s = ArgumentScanner::default();
        s.feed(r#"{"code": ["a"], "x": {"code": "b"}}"#);
        assert_eq!(s.code(), None);
        // A lone surrogate is shown as such, not lost.
        let mut s = ArgumentScanner::default();
        s.feed(r#"{"code": "a\ud83dz\udc00"#);
        assert_eq!(s.code(), Some("a\u{fffd}z\u{fffd}"));
    }

    /// D8: every piece of a streaming call re-read the whole arguments (quadratic: a
    /// long call took minutes). Fed piece by piece, a 4 MiB call is one pass.
    #[test]
    fn a_long_call_streams_in_linear_time() {
        let started = std::time::Instant::now();
        let mut s = ArgumentScanner::default();
        s.feed(r#"{"language": "python", "code": ""#);
        let piece = "print(1)\\n";
        for _ in 0..(4 << 20) / piece.len() {
            s.feed(piece);
        }
        assert_eq!(s.code().unwrap().len(), (4 << 20) / piece.len() * 9);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn holding_back_is_decided_by_the_start() {
        assert!(may_be_tool_text("  {\"na"));
        assert!(may_be_tool_text("<tool"));
        assert!(may_be_tool_text("functions.exec"));
        assert!(!may_be_tool_text("Sure, "));
        assert!(!may_be_tool_text(""));
    }

    fn parse_all(deltas: &[&str]) -> Vec<TextPiece> {
        let mut p = FenceParser::default();
        let mut out: Vec<TextPiece> = deltas.iter().flat_map(|d| p.feed(d)).collect();
        out.extend(p.finish());
        // Merge adjacent pieces of one kind so the split does not matter.
        let mut merged: Vec<TextPiece> = Vec::new();
        for piece in out {
            match (merged.last_mut(), piece) {
                (Some(TextPiece::Prose(a)), TextPiece::Prose(b)) => a.push_str(&b),
                (Some(TextPiece::Code(a)), TextPiece::Code(b)) => a.push_str(&b),
                (_, piece) => merged.push(piece),
            }
        }
        merged
    }

    #[test]
    fn fences_split_prose_and_code_however_the_stream_splits() {
        let text =
            "Let me run:\n```python\nx = 1\nprint(x)\n```\nDone.\n```json\n{}\n```\n```\n42\n```\n";
        let want = vec![
            TextPiece::Prose("Let me run:\n".into()),
            TextPiece::CodeStart {
                language: "python".into(),
            },
            TextPiece::Code("x = 1\nprint(x)\n".into()),
            TextPiece::CodeEnd,
            TextPiece::Prose("Done.\n```json\n{}\n```\n```\n42\n```\n".into()),
        ];
        assert_eq!(parse_all(&[text]), want);
        let chars: Vec<String> = text.chars().map(|c| c.to_string()).collect();
        let refs: Vec<&str> = chars.iter().map(String::as_str).collect();
        assert_eq!(parse_all(&refs), want);
    }

    /// A line that may still become a fence (whitespace, or a backtick, and no line end)
    /// was trimmed again for every piece: quadratic. Each character is looked at once.
    #[test]
    fn a_long_line_that_may_be_a_fence_is_read_in_linear_time() {
        let started = std::time::Instant::now();
        for start in ["", "`"] {
            let mut p = FenceParser::default();
            assert!(p.feed(start).is_empty());
            for _ in 0..(2 << 20) {
                assert!(p.feed(" ").is_empty());
            }
            let rest = p.feed("x\n");
            assert_eq!(rest.len(), 1, "{start:?}");
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn an_unterminated_block_ends_with_the_reply() {
        assert_eq!(
            parse_all(&["```sh\nls"]),
            vec![
                TextPiece::CodeStart {
                    language: "sh".into()
                },
                TextPiece::Code("ls".into()),
                TextPiece::CodeEnd
            ]
        );
    }
}
