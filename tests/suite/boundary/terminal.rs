//! Trust-boundary regressions: see mod.rs. What reaches a terminal: the model's prose
//! and code, console output and file names are shown, never obeyed (D3); the chat's
//! renderer stays bounded on endless lines (D8). The chat cases run in a real pty.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::suite::image;
use crate::suite::llm_server::{openai, ScriptedServer};

/// A home of its own for each test (config, data, history), and the project folder oi
/// runs in, which the sandbox's user (1000) owns so that code can write there.
pub(super) struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    pub(super) fn new() -> Home {
        let home = Home {
            dir: tempfile::tempdir().unwrap(),
        };
        let project = home.project();
        std::fs::create_dir_all(&project).unwrap();
        std::os::unix::fs::chown(&project, Some(1000), Some(1000)).unwrap();
        home
    }

    pub(super) fn path(&self) -> &Path {
        self.dir.path()
    }

    pub(super) fn project(&self) -> PathBuf {
        self.path().join("project")
    }

    fn env(&self, cmd: &mut std::process::Command) {
        crate::suite::isolate(cmd, self.path());
        cmd.current_dir(self.project())
            .env("TERM", "xterm")
            .env("EDITOR", "true")
            .env_remove("VISUAL");
    }

    /// `oi ARGS` in the project folder, against `server` when given.
    pub(super) fn oi(
        &self,
        server: Option<&ScriptedServer>,
        args: &[&str],
    ) -> std::process::Command {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_oi"));
        self.env(&mut cmd);
        if let Some(server) = server {
            cmd.args([
                "--api-base",
                &server.base_url(),
                "--model",
                "test-model",
                "--api-key",
                "sk-test",
            ]);
        }
        cmd.args(args).stdin(std::process::Stdio::null());
        cmd
    }

    /// The chat in a pty, against `server`.
    pub(super) fn chat(&self, server: &ScriptedServer, args: &[&str]) -> Pty {
        let mut cmd = self.oi(Some(server), args);
        cmd.stdin(std::process::Stdio::inherit());
        Pty::spawn(cmd)
    }
}

/// A program in a pty, with everything it wrote kept (the transcript).
pub(super) struct Pty {
    session: expectrl::Session,
    pub(super) log: Vec<u8>,
}

impl Pty {
    pub(super) fn spawn(cmd: std::process::Command) -> Pty {
        let mut session = expectrl::Session::spawn(cmd).expect("starts in a pty");
        session.set_expect_timeout(Some(Duration::from_secs(60)));
        Pty {
            session,
            log: Vec::new(),
        }
    }

    pub(super) fn expect(&mut self, needle: impl expectrl::Needle) {
        match self.session.expect(needle) {
            Ok(found) => {
                self.log.extend_from_slice(found.before());
                for m in found.matches() {
                    self.log.extend_from_slice(m);
                }
            }
            Err(err) => panic!(
                "{err}; the terminal so far:\n{}",
                String::from_utf8_lossy(&self.log)
            ),
        }
    }

    pub(super) fn send_line(&mut self, line: &str) {
        // The line editor switches the terminal to raw mode just after drawing its
        // prompt; what is typed before that is the terminal's, not the editor's.
        std::thread::sleep(Duration::from_millis(300));
        self.session.send_line(line).unwrap();
    }

    /// Ctrl-D at the prompt, then everything up to the end.
    pub(super) fn leave(&mut self) {
        std::thread::sleep(Duration::from_millis(300));
        self.session
            .send(expectrl::ControlCode::EndOfTransmission)
            .unwrap();
        self.expect(expectrl::Eof);
    }

    pub(super) fn text(&self) -> String {
        String::from_utf8_lossy(&self.log).into_owned()
    }
}

/// Raw bytes that must never reach the terminal from the model or the sandbox: OSC
/// (clipboard, title, links), clear screen, erase line + column 1, conceal, BEL, C1
/// CSI, bidi override.
const FORBIDDEN: &[(&str, &str)] = &[
    ("\x1b]", "an OSC sequence"),
    ("\x1b[2J", "clear screen"),
    ("\x1b[2K\x1b[1G", "erase line, column 1"),
    ("\x1b[8m", "conceal"),
    ("\x1b[41", "a background"),
    ("\x07", "BEL"),
    ("\u{9b}", "C1 CSI"),
    ("\u{202e}", "a bidi override"),
];

fn assert_nothing_obeyed(transcript: &str) {
    for (raw, what) in FORBIDDEN {
        assert!(
            !transcript.contains(raw),
            "{what} ({raw:?}) reached the terminal:\n{transcript:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn d3_escape_sequences_are_shown_not_obeyed() {
    if image().is_none() {
        return;
    }
    let prose = "Clipboard \x1b]52;c;cm0gLXJmIH4=\x07, title \x1b]0;owned\x07, \
                 link \x1b]8;;http://127.0.0.1/\x1b\\here\x1b]8;;\x1b\\, \
                 clear \x1b[2J, C1 \u{9b}2J, bidi \u{202e}esrever.\n";
    // The code prints escapes (its source holds them as text, `\x1b`), and the
    // model also put a raw ESC in a comment.
    let code = "print('\\x1b]52;c;cm0=\\x07\\x1b]0;t\\x07\\x1b[2J\\x1b[31mred\\x1b[0m \
                \\x1b[8mconcealed\\x1b[0m \\x1b[41;30mbg\\x1b[0m')\n\
                print('10%\\r50%\\r100%')\n# raw: \x1b]0;from-the-code\x07";
    let server = ScriptedServer::start(vec![
        openai::text(&[prose, "Fine."]),
        openai::execute("python", code),
        openai::text(&["Printed."]),
    ])
    .await;
    let home = Home::new();
    let transcript = tokio::task::block_in_place(|| {
        let mut p = home.chat(&server, &[]);
        p.expect("> ");
        p.send_line("say things");
        p.expect("Fine.");
        p.expect("> ");
        p.send_line("print things");
        p.expect("Run this code?");
        p.send_line("y");
        p.expect("Printed.");
        p.expect("> ");
        p.leave();
        p.text()
    });
    assert_nothing_obeyed(&transcript);
    // Shown instead, in their visible form (marked in reverse video).
    let mark = |s: &str| format!("\x1b[7m{s}\x1b[27m");
    for shown in [
        format!("{}]52;c;cm0gLXJmIH4={}", mark("\\x1b"), mark("\\x07")),
        format!("{}]0;owned", mark("\\x1b")),
        format!("{}]8;;http://127.0.0.1/", mark("\\x1b")),
        format!("{}[2J", mark("\\x1b")),
        format!("{}2J", mark("\\u{9b}")),
        format!("{}esrever", mark("\\u{202e}")),
        // The raw ESC in the code's comment.
        format!("# raw: {}]0;from-the-code{}", mark("\\x1b"), mark("\\x07")),
        // What the code printed: the allowed colour kept, the rest shown.
        format!("{}]52;c;cm0=", mark("\\x1b")),
        "\x1b[31mred\x1b[0m".to_string(),
        format!("{}[8mconcealed", mark("\\x1b")),
        format!("{}[41;30mbg", mark("\\x1b")),
    ] {
        assert!(
            transcript.contains(&shown),
            "{shown:?} not shown:\n{transcript:?}"
        );
    }
    // A progress bar's carriage returns became line breaks under the bar.
    assert!(
        transcript.contains("10%\r\n\x1b[2m│ \x1b[0m50%\r\n\x1b[2m│ \x1b[0m100%"),
        "{transcript:?}"
    );
    // The model was still given the output as it was (JSON escapes).
    let sent = server.requests()[2].body.to_string();
    assert!(sent.contains(r"\u001b]52;c;cm0=\u0007"), "{sent}");
}

#[tokio::test(flavor = "multi_thread")]
async fn d3_the_confirmation_shows_every_character_that_will_run() {
    if image().is_none() {
        return;
    }
    // 1. The attack of the report: an escape in a comment erases the line on screen
    //    and draws harmless code in its place.
    let hidden = "open('pwned-hidden', 'w').close()  # \x1b[2K\x1b[1Gprint('hello')";
    // 2. A repair changes the code after it streamed: with the key twice, the stream
    //    shows the first value, the parsed call runs the second.
    let twice = r#"{"language": "python", "code": "print('shown')", "code": "open('pwned-repair', 'w').close()"}"#;
    // 3. The same code, streamed as one language, parsed as another (the language key
    //    twice: the live scanner keeps the first, the parser the last).
    let polyglot = r#"{"language": "python", "code": "touch pwned-shell", "language": "shell"}"#;
    let server = ScriptedServer::start(vec![
        openai::execute("python", hidden),
        openai::call("execute", twice),
        openai::call("execute", polyglot),
    ])
    .await;
    let home = Home::new();
    let (first, second, third) = tokio::task::block_in_place(|| {
        let mut p = home.chat(&server, &[]);
        p.expect("> ");
        p.send_line("hello");
        p.expect("Run this code?");
        let first = p.text();
        p.send_line("n");
        p.expect("The user declined to run this code.");
        p.expect("> ");
        let at = p.log.len();
        p.send_line("again");
        p.expect("Run this code?");
        let second = String::from_utf8_lossy(&p.log[at..]).into_owned();
        p.send_line("n");
        p.expect("The user declined to run this code.");
        p.expect("> ");
        let at = p.log.len();
        p.send_line("once more");
        p.expect("Run this code?");
        let third = String::from_utf8_lossy(&p.log[at..]).into_owned();
        p.send_line("n");
        p.expect("The user declined to run this code.");
        p.expect("> ");
        p.leave();
        (first, second, third)
    });
    assert_nothing_obeyed(&first);
    assert!(
        first.contains(
            "open('pwned-hidden', 'w').close()  # \x1b[7m\\x1b\x1b[27m[2K\x1b[7m\\x1b\x1b[27m[1Gprint('hello')"
        ),
        "the whole line is on screen before the question:\n{first:?}"
    );
    let warned = second
        .find("the code to run differs from what was shown above")
        .unwrap_or_else(|| panic!("no warning:\n{second:?}"));
    let real = second[warned..]
        .find("open('pwned-repair', 'w').close()")
        .unwrap_or_else(|| panic!("the code to run is not shown:\n{second:?}"));
    assert!(
        second[warned + real..].contains("Run this code?"),
        "{second:?}"
    );
    let warned = third
        .find("runs as another language")
        .unwrap_or_else(|| panic!("no warning:\n{third:?}"));
    assert!(
        third[warned..].contains("shell") && third[warned..].contains("touch pwned-shell"),
        "the language it runs as is shown:\n{third:?}"
    );
    for declined in ["pwned-hidden", "pwned-repair", "pwned-shell"] {
        assert!(!home.project().join(declined).exists(), "{declined} ran");
    }
}

/// `oi exec` neutralises output on a terminal and keeps it byte for byte in a pipe.
#[test]
fn d3_exec_output_is_shown_on_a_terminal_and_exact_in_a_pipe() {
    if image().is_none() {
        return;
    }
    let home = Home::new();
    let code = "import sys\nprint('\\x1b]0;title\\x07\\x1b[2J\\x1b[32mgreen\\x1b[0m')\n\
                _ = sys.stderr.write('\\x1b]52;c;eA==\\x07\\n')";
    let out = home.oi(None, &["exec", "-c", code]).output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        out.stdout, b"\x1b]0;title\x07\x1b[2J\x1b[32mgreen\x1b[0m\n",
        "a pipe gets the bytes"
    );
    assert_eq!(out.stderr, b"\x1b]52;c;eA==\x07\n");
    let mut p = Pty::spawn(home.oi(None, &["exec", "-c", code]));
    p.expect(expectrl::Eof);
    let transcript = p.text();
    assert_nothing_obeyed(&transcript);
    let mark = |s: &str| format!("\x1b[7m{s}\x1b[27m");
    for shown in [
        format!("{}]0;title{}", mark("\\x1b"), mark("\\x07")),
        format!("{}[2J\x1b[32mgreen\x1b[0m", mark("\\x1b")),
        format!("{}]52;c;eA=={}", mark("\\x1b"), mark("\\x07")),
    ] {
        assert!(transcript.contains(&shown), "{shown:?}:\n{transcript:?}");
    }
}

/// Peak resident memory of a process (VmHWM), read from /proc, in bytes.
fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// D8, the real binary: a block prints 150 MB with no line break; the chat (its
/// renderer included) stays far below that. The renderer's own bound is pinned by the
/// unit test of the same name in `chat/render.rs`.
#[tokio::test(flavor = "multi_thread")]
async fn d8_the_chat_renderer_stays_bounded_on_endless_lines() {
    if image().is_none() {
        return;
    }
    let code =
        "import sys\nchunk = 'y' * (1 << 20)\nfor _ in range(150):\n    sys.stdout.write(chunk)";
    let server = ScriptedServer::start(vec![
        openai::execute("python", code),
        openai::text(&["Done."]),
    ])
    .await;
    let home = Home::new();
    let (peak, total, ok) = tokio::task::block_in_place(|| {
        let mut child = home
            .oi(Some(&server), &["-y", "--plain", "print a lot"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        let mut stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = vec![0u8; 1 << 16];
            let mut total = 0usize;
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                total += n;
            }
            total
        });
        let mut peak = 0;
        while child.try_wait().unwrap().is_none() {
            if let Some(rss) = peak_rss(pid) {
                peak = peak.max(rss);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        (
            peak,
            reader.join().unwrap(),
            child.wait().unwrap().success(),
        )
    });
    assert!(ok, "the chat failed");
    assert!(total > 150 << 20, "the output came through ({total} bytes)");
    assert!(
        peak > 0 && peak < 80 << 20,
        "the chat's peak memory was {} MiB",
        peak >> 20
    );
}
