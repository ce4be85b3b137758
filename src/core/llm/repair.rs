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
/// stream to the user while the model writes it.
pub fn partial_arguments(args: &str) -> (Option<String>, Option<String>) {
    let language = string_after_key(args, "language").filter(|(_, complete)| *complete);
    let code = string_after_key(args, "code");
    (language.map(|(l, _)| l), code.map(|(c, _)| c))
}

/// The (possibly incomplete) JSON string value of `"key":` at the top of an object.
fn string_after_key(args: &str, key: &str) -> Option<(String, bool)> {
    let quoted = format!("\"{key}\"");
    let at = args.find(&quoted)?;
    let rest = args[at + quoted.len()..].trim_start().strip_prefix(':')?;
    let body = rest.trim_start().strip_prefix('"')?;
    let mut value = String::new();
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some((value, true)),
            '\\' => {
                let Some(e) = chars.next() else {
                    break;
                };
                match e {
                    'n' => value.push('\n'),
                    't' => value.push('\t'),
                    'r' => value.push('\r'),
                    'b' => value.push('\u{8}'),
                    'f' => value.push('\u{c}'),
                    'u' => {
                        let hex: String = chars.by_ref().take(4).collect();
                        if hex.len() < 4 {
                            break;
                        }
                        match u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                            Some(ch) => value.push(ch),
                            // Half of a surrogate pair: wait for the whole value.
                            None => break,
                        }
                    }
                    other => value.push(other),
                }
            }
            c => value.push(c),
        }
    }
    Some((value, false))
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

fn shorten(text: &str) -> String {
    const MAX: usize = 300;
    let text = text.trim();
    match text.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
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
        // Pass on a partial line unless it could still become a fence.
        if !self.line.is_empty()
            && !self.line.trim_start().starts_with('`')
            && !self.line.trim().is_empty()
        {
            let text = std::mem::take(&mut self.line);
            out.push(self.text(text));
        }
        out
    }

    /// The end of the reply: an unterminated block is complete.
    pub fn finish(&mut self) -> Vec<TextPiece> {
        let mut out = Vec::new();
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
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

    pub fn in_code(&self) -> bool {
        self.in_code.is_some()
    }

    fn text(&self, text: String) -> TextPiece {
        if self.in_code.is_some() {
            TextPiece::Code(text)
        } else {
            TextPiece::Prose(text)
        }
    }

    fn end_line(&mut self, out: &mut Vec<TextPiece>) {
        let line = std::mem::take(&mut self.line);
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
