//! The `oi` chat as a user and a CI job run it: JSON lines and exit codes, settings and
//! their precedence, saved and resumed conversations, and a real terminal (a pty)
//! against the scripted model server and the real Docker sandbox.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::image;
use super::llm_server::{error, openai, ScriptedServer};

/// A home of its own for each test: config, data and history go there.
pub(crate) struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    pub(crate) fn new() -> Home {
        Home {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The folder oi runs in (mounted as the workspace; not the home folder itself,
    /// which oi refuses to mount).
    pub(crate) fn project(&self) -> PathBuf {
        let dir = self.path().join("project");
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    pub(crate) fn config_file(&self) -> PathBuf {
        self.path().join("config/oi/config.toml")
    }

    pub(crate) fn write_config(&self, text: &str) {
        std::fs::create_dir_all(self.config_file().parent().unwrap()).unwrap();
        std::fs::write(self.config_file(), text).unwrap();
    }

    pub(crate) fn conversations(&self) -> PathBuf {
        self.path().join("data/oi/conversations")
    }

    /// `oi` with this home, in `cwd`, with no model settings from the outside.
    pub(crate) fn oi(&self, cwd: &Path) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_oi"));
        super::isolate(cmd.as_std_mut(), self.path());
        cmd.current_dir(cwd)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        cmd
    }
}

pub(crate) struct Run {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Run {
    pub(crate) fn json(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }
}

pub(crate) async fn run(cmd: &mut tokio::process::Command) -> Run {
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("oi finished within 120 s")
        .expect("oi runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub(crate) fn model_args(server: &ScriptedServer) -> Vec<String> {
    vec![
        "--api-base".into(),
        server.base_url(),
        "--model".into(),
        "test-model".into(),
        "--api-key".into(),
        "sk-test".into(),
    ]
}

#[tokio::test]
async fn ci_mode_prints_json_lines_and_exits_0() {
    if image().is_none() {
        return;
    }
    let server = ScriptedServer::start(vec![
        openai::execute("python", "x = 6*7"),
        openai::execute("python", "print(x)"),
        openai::text(&["The answer is 42."]),
    ])
    .await;
    let home = Home::new();
    let r = run(home
        .oi(&home.project())
        .args(["-y", "--json"])
        .args(model_args(&server))
        .arg("What is 6*7?"))
    .await;
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let lines = r.json();
    // Line by line: the user's message, then for each block its chunks and result.
    assert_eq!(
        lines[0],
        serde_json::json!({"id": "1", "role": "server", "type": "message_complete",
            "content": {"role": "user", "type": "message", "content": "What is 6*7?"}})
    );
    assert_eq!(
        lines[1],
        serde_json::json!({"id": "1", "role": "assistant", "type": "code", "format": "python", "start": true})
    );
    let console: String = lines
        .iter()
        .filter(|l| l["type"] == "console" && l["format"] == "output")
        .filter_map(|l| l["content"].as_str())
        .collect();
    assert_eq!(console, "42\n");
    assert_eq!(
        lines.last().unwrap(),
        &serde_json::json!({"id": "1", "role": "server", "type": "turn_end", "format": "finished"})
    );
    assert!(
        lines.iter().all(|l| l["role"].is_string()),
        "every line is LMC-shaped"
    );
    assert!(!r.stderr.contains("error"), "{}", r.stderr);
    // The conversation was saved as it went.
    let saved: Vec<PathBuf> = std::fs::read_dir(home.conversations())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    assert_eq!(saved.len(), 1);
    let text = std::fs::read_to_string(&saved[0]).unwrap();
    assert_eq!(text.lines().count(), 6, "{text}");
}

#[tokio::test]
async fn exit_codes_say_how_the_run_ended() {
    if image().is_none() {
        return;
    }
    let home = Home::new();
    // The model's server refuses the key: 3.
    let server =
        ScriptedServer::start(vec![error(401, r#"{"error":{"message":"bad key"}}"#)]).await;
    let r = run(home
        .oi(&home.project())
        .args(["-y", "--json"])
        .args(model_args(&server))
        .arg("hi"))
    .await;
    assert_eq!(r.code, 3, "{}", r.stderr);
    let error = r.json().into_iter().find(|l| l["type"] == "error").unwrap();
    assert_eq!(error["format"], "auth");
    // The CI log says why, in the terminal's words.
    assert!(
        r.stderr.contains("rejected the API key (HTTP 401): bad key; Set OPENAI_API_KEY or --api-key to a valid key."),
        "{}",
        r.stderr
    );
    // The iteration cap: 4.
    let server = ScriptedServer::start(vec![
        openai::execute("python", "1"),
        openai::execute("python", "2"),
    ])
    .await;
    let r = run(home
        .oi(&home.project())
        .args(["-y", "--json", "--max-iterations", "2"])
        .args(model_args(&server))
        .arg("loop"))
    .await;
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("oi: error: Stopped after 2 model replies")
            && r.stderr.contains("max_iterations")
            && r.stderr.contains("--max-iterations"),
        "{}",
        r.stderr
    );
    // No -y and no terminal: the block is declined, said on stderr: 5.
    let server = ScriptedServer::start(vec![openai::execute("python", "print(1)")]).await;
    let r = run(home
        .oi(&home.project())
        .arg("--plain")
        .args(model_args(&server))
        .arg("run"))
    .await;
    assert_eq!(r.code, 5, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("pass -y (--auto-run)"), "{}", r.stderr);
    assert!(
        r.stdout.contains("```python\nprint(1)\n```"),
        "plain output: {}",
        r.stdout
    );
    assert!(
        r.stdout.contains("The user declined to run this code."),
        "{}",
        r.stdout
    );
}

/// Issue 10, item 8: the README's GitHub Actions example sends stdout to a file, so the
/// job log showed only exit 3. The error that ends a `--json` run is also one line on
/// stderr naming its cause.
#[tokio::test]
async fn ci_logs_say_why_a_json_run_failed() {
    if image().is_none() {
        return;
    }
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/v1");
    let home = Home::new();
    let r = run(home
        .oi(&home.project())
        .args([
            "-y",
            "--json",
            "--api-base",
            &url,
            "--model",
            "m",
            "--api-key",
            "k",
        ])
        .arg("hi"))
    .await;
    assert_eq!(r.code, 3, "{}", r.stderr);
    let errors: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.starts_with("oi: error: "))
        .collect();
    assert_eq!(errors.len(), 1, "{}", r.stderr);
    assert!(
        errors[0].contains(&format!(
            "could not reach the model server at {url}/chat/completions"
        )) && errors[0].ends_with("Is the server running, and is --api-base right?"),
        "{}",
        errors[0]
    );
    // The JSON line carries the facts a program needs, not the terminal's flags.
    let error = r.json().into_iter().find(|l| l["type"] == "error").unwrap();
    assert_eq!(error["format"], "connect");
    assert_eq!(error["facts"]["url"], format!("{url}/chat/completions"));
    assert_eq!(error["facts"]["setting"], "api_base");
    assert!(!error["content"].as_str().unwrap().contains("--api-base"));
}

#[tokio::test]
async fn no_model_configured_says_how_to_configure_one() {
    let home = Home::new();
    let r = run(home.oi(&home.project()).args(["-y", "hello"])).await;
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("no model is configured"), "{}", r.stderr);
    assert!(r.stderr.contains("export OPENAI_API_KEY"), "{}", r.stderr);
    assert!(r.stderr.contains("oi --local"), "{}", r.stderr);
}

#[tokio::test]
async fn settings_layer_in_order_and_oi_config_names_each_source() {
    let home = Home::new();
    home.write_config(
        r#"
model = "from-user-file"
max_output = 1000
temperature = 0.5
[sandbox]
memory = "1g"
[profiles.work]
model = "from-profile"
max_iterations = 7
"#,
    );
    let project = home.path().join("project/sub");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(
        home.path().join("project/oi.toml"),
        "max_output = 2000\n[sandbox]\nnetwork = true\n",
    )
    .unwrap();
    let r = run(home
        .oi(&project)
        .args(["config", "--profile", "work", "--temperature", "0.1"])
        .env("OPENAI_API_KEY", "sk-abcdefghijklmnop")
        .env("OI_API_BASE", "http://env.example/v1"))
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let line = |key: &str| {
        r.stdout
            .lines()
            .find(|l| l.starts_with(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("no {key} in\n{}", r.stdout))
            .to_string()
    };
    let user = home.config_file().display().to_string();
    assert!(
        line("model").contains("\"from-profile\"") && line("model").contains("[profiles.work]")
    );
    assert!(line("max_iterations").contains("7"));
    assert!(line("max_output").contains("2000") && line("max_output").contains("project/oi.toml"));
    assert!(
        line("temperature").contains("0.1") && line("temperature").ends_with("# --temperature")
    );
    assert!(line("sandbox.memory").contains("\"1g\"") && line("sandbox.memory").contains(&user));
    // An untrusted project file may not loosen the sandbox: said, and ignored.
    assert!(!r.stdout.contains("sandbox.network = "), "{}", r.stdout);
    assert!(
        r.stdout.contains("# note: ") && r.stdout.contains("ignored: sandbox.network"),
        "{}",
        r.stdout
    );
    assert!(
        line("api_base").contains("http://env.example/v1")
            && line("api_base").ends_with("# env OI_API_BASE")
    );
    assert!(
        line("api_key").contains("sk-a…mnop") && line("api_key").ends_with("# env OPENAI_API_KEY")
    );
    assert!(
        !r.stdout.contains("sk-abcdefghijklmnop"),
        "the key is masked"
    );
}

#[tokio::test]
async fn bad_settings_name_the_key_and_the_file() {
    let home = Home::new();
    home.write_config("modle = \"gpt-4o\"\n");
    let r = run(home.oi(&home.project()).arg("config")).await;
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("unknown field `modle`"), "{}", r.stderr);
    assert!(
        r.stderr.contains(&home.config_file().display().to_string()),
        "{}",
        r.stderr
    );

    home.write_config("max_output = \"lots\"\n");
    let r = run(home.oi(&home.project()).arg("config")).await;
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("max_output"), "{}", r.stderr);
    assert!(r.stderr.contains("invalid type"), "{}", r.stderr);

    home.write_config("[sandbox]\nmemroy = \"1g\"\n");
    let r = run(home.oi(&home.project()).arg("config")).await;
    assert!(r.stderr.contains("unknown field `memroy`"), "{}", r.stderr);

    home.write_config("model = \"m\"\n");
    let r = run(home
        .oi(&home.project())
        .args(["config", "--profile", "nope"]))
    .await;
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("no profile `nope`"), "{}", r.stderr);

    home.write_config("model = \"m\n");
    let r = run(home.oi(&home.project()).arg("config")).await;
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("config.toml"), "{}", r.stderr);
}

#[tokio::test]
async fn a_saved_conversation_is_resumed_with_its_history() {
    if image().is_none() {
        return;
    }
    let server = ScriptedServer::start(vec![
        openai::execute("python", "print(6*7)"),
        openai::text(&["It is 42."]),
        openai::text(&["You asked about 6*7."]),
    ])
    .await;
    let home = Home::new();
    let first = run(home
        .oi(&home.project())
        .args(["-y", "--json"])
        .args(model_args(&server))
        .arg("6*7?"))
    .await;
    assert_eq!(first.code, 0, "{}", first.stderr);
    let r = run(home
        .oi(&home.project())
        .args(["-y", "--plain", "--resume"])
        .args(model_args(&server))
        .arg("what did I ask?"))
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    // The history is drawn again, then the new answer.
    assert!(r.stdout.starts_with("> 6*7?\n"), "{}", r.stdout);
    assert!(r.stdout.contains("42\n"), "{}", r.stdout);
    assert!(
        r.stdout.trim_end().ends_with("You asked about 6*7."),
        "{}",
        r.stdout
    );
    let sent = &server.requests()[2].body["messages"];
    assert_eq!(sent[1]["content"], "6*7?");
    assert_eq!(
        sent.as_array().unwrap().last().unwrap()["content"],
        "what did I ask?"
    );
    // Both turns are in one file.
    let listed = run(home
        .oi(&home.project())
        .arg("--conversations")
        .args(model_args(&server)))
    .await;
    assert_eq!(listed.stdout.lines().count(), 1, "{}", listed.stdout);
    assert!(
        listed.stdout.contains("6*7?") && listed.stdout.contains("test-model"),
        "{}",
        listed.stdout
    );
}

/// A real terminal: the binary in a pty, answering its prompts as a person would.
mod pty {
    use super::*;
    use expectrl::{Eof, Regex, Session};

    fn spawn(home: &Home, server: &ScriptedServer, editor: &str, args: &[&str]) -> Session {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_oi"));
        cmd.current_dir(home.project())
            .env("HOME", home.path())
            .env("XDG_CONFIG_HOME", home.path().join("config"))
            .env("XDG_DATA_HOME", home.path().join("data"))
            .env("XDG_STATE_HOME", home.path().join("state"))
            .env("TERM", "xterm")
            .env("EDITOR", editor)
            .env_remove("VISUAL")
            .env_remove("OPENAI_API_KEY")
            .args(model_args(server))
            .args(args);
        let mut session = Session::spawn(cmd).expect("oi starts in a pty");
        session.set_expect_timeout(Some(Duration::from_secs(60)));
        session
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_chat_with_confirmations_interrupts_and_magic() {
        if image().is_none() {
            return;
        }
        let server = ScriptedServer::start(vec![
            // y
            openai::execute("python", "x = 41"),
            openai::text(&["Set."]),
            // n (the turn ends there)
            openai::execute("python", "print('never')"),
            // e: the editor turns 41 into 42
            openai::execute("python", "print(x + 0)"),
            openai::text(&["Edited."]),
            // Ctrl-C during a long block, then a follow-up that sees the state
            openai::execute("python", "import time\ntime.sleep(60)"),
            openai::execute("python", "print('x is', x)"),
            openai::text(&["Still there."]),
        ])
        .await;
        let home = Home::new();
        let editor = home.path().join("editor.sh");
        std::fs::write(&editor, "#!/bin/sh\nsed -i 's/x + 0/x + 1/' \"$1\"\n").unwrap();
        std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let editor = editor.display().to_string();
        let server_ref = &server;
        let home_ref = &home;
        tokio::task::block_in_place(move || {
            let mut p = spawn(home_ref, server_ref, &editor, &[]);
            p.expect("> ").unwrap();
            p.send_line("set x").unwrap();
            p.expect("Run this code?").unwrap();
            p.send_line("y").unwrap();
            p.expect("Set.").unwrap();

            p.expect("> ").unwrap();
            p.send_line("print something").unwrap();
            p.expect("Run this code?").unwrap();
            p.send_line("n").unwrap();
            p.expect("The user declined to run this code.").unwrap();

            p.expect("> ").unwrap();
            p.send_line("show x").unwrap();
            p.expect("Run this code?").unwrap();
            p.send_line("e").unwrap();
            p.expect("42").unwrap();
            p.expect("Edited.").unwrap();

            p.expect("> ").unwrap();
            p.send_line("sleep").unwrap();
            p.expect("Run this code?").unwrap();
            p.send_line("a").unwrap();
            std::thread::sleep(Duration::from_millis(800));
            p.send(expectrl::ControlCode::EndOfText).unwrap();
            p.expect("[interrupted by the user]").unwrap();
            p.expect("> ").unwrap();
            p.send_line("and x?").unwrap();
            p.expect("x is 41").unwrap();
            p.expect("Still there.").unwrap();

            p.expect("> ").unwrap();
            p.send_line("%% echo from-the-sandbox $((6*7))").unwrap();
            p.expect("from-the-sandbox 42").unwrap();
            p.expect("> ").unwrap();
            p.send_line("%info").unwrap();
            p.expect(Regex("Sandbox: +container [0-9a-f]{12}")).unwrap();
            p.expect("> ").unwrap();
            p.send_line("%nope").unwrap();
            p.expect("unknown magic command `%nope`").unwrap();
            p.expect("> ").unwrap();
            // The line editor switches the terminal to raw mode just after drawing the
            // prompt; a control key sent before that is the terminal's, not the editor's.
            std::thread::sleep(Duration::from_millis(300));
            p.send(expectrl::ControlCode::EndOfTransmission).unwrap();
            p.expect(Eof).unwrap();
        });
        // The edited block is what was recorded and sent back.
        let last = server.requests().pop().unwrap().body;
        assert!(last.to_string().contains("print(x + 1)"), "{last:#}");
        assert_eq!(server.remaining(), 0);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn magic_commands_multiline_input_and_leaving() {
        if image().is_none() {
            return;
        }
        let server = ScriptedServer::start(vec![
            openai::execute("python", "y = 7"),
            openai::text(&["Done."]),
            openai::text(&["Second."]),
            openai::text(&["Joined."]),
            openai::text(&["After load."]),
        ])
        .await;
        let home = Home::new();
        let work = home.project();
        std::fs::write(work.join("data.txt"), "from the host\n").unwrap();
        let server_ref = &server;
        let home_ref = &home;
        let pid = tokio::task::block_in_place(move || {
            let mut p = spawn(home_ref, server_ref, "true", &["--workspace", "none"]);
            let pid = p.get_process().pid().as_raw() as u32;
            p.expect("> ").unwrap();
            p.send_line("%help").unwrap();
            p.expect("%jupyter").unwrap();
            p.send_line("set y").unwrap();
            p.expect("Run this code?").unwrap();
            p.send_line("y").unwrap();
            p.expect("Done.").unwrap();
            p.expect("> ").unwrap();
            // A message over several lines.
            std::thread::sleep(Duration::from_millis(300));
            p.send_line("\"\"\"first line").unwrap();
            p.expect("... ").unwrap();
            std::thread::sleep(Duration::from_millis(300));
            p.send_line("second line\"\"\"").unwrap();
            p.expect("Second.").unwrap();
            p.expect("> ").unwrap();
            // A line ending in a backslash goes on to the next.
            std::thread::sleep(Duration::from_millis(300));
            p.send_line("one \\").unwrap();
            p.expect("... ").unwrap();
            std::thread::sleep(Duration::from_millis(300));
            p.send_line("two").unwrap();
            p.expect("Joined.").unwrap();
            p.expect("> ").unwrap();
            p.send_line("%save_message saved.json").unwrap();
            p.expect("Saved 8 messages to saved.json.").unwrap();
            p.send_line("%jupyter").unwrap();
            p.expect("Exported the conversation to conversation.ipynb.")
                .unwrap();
            p.send_line("%tokens").unwrap();
            p.expect(Regex(r"Context: \d+ of 8192 tokens")).unwrap();
            p.expect("No price is known for test-model.").unwrap();
            p.send_line("%undo").unwrap();
            p.expect("Removed 2 messages.").unwrap();
            // Files in and out of an empty workspace.
            p.send_line("%upload data.txt").unwrap();
            p.expect("Copied data.txt into the workspace").unwrap();
            p.send_line("%% cat data.txt; echo changed > data.txt")
                .unwrap();
            p.expect("from the host").unwrap();
            p.expect("> ").unwrap();
            p.send_line("%download data.txt out").unwrap();
            p.expect("Copied data.txt out: 1 files into out.").unwrap();
            p.send_line("%download ../etc/passwd").unwrap();
            p.expect("outside the workspace").unwrap();
            p.send_line("%verbose on").unwrap();
            p.expect("Verbose on.").unwrap();
            p.send_line("%reset").unwrap();
            p.expect("Reset").unwrap();
            p.send_line("%load_message saved.json").unwrap();
            p.expect("Loaded 8 messages from saved.json.").unwrap();
            p.send_line("and now?").unwrap();
            p.expect("After load.").unwrap();
            p.expect("> ").unwrap();
            // Ctrl-C with text on the line clears it; on an empty line it leaves.
            std::thread::sleep(Duration::from_millis(300));
            p.send("some text").unwrap();
            p.send(expectrl::ControlCode::EndOfText).unwrap();
            p.send(expectrl::ControlCode::EndOfText).unwrap();
            p.expect(Eof).unwrap();
            pid
        });
        // What the model was sent after %load_message: the saved conversation.
        let last = &server.requests()[4].body["messages"];
        let texts: Vec<String> = last
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m["content"].as_str().map(str::to_string))
            .collect();
        assert!(
            texts.contains(&"first line\nsecond line".to_string()),
            "{texts:?}"
        );
        assert!(texts.contains(&"one \ntwo".to_string()), "{texts:?}");
        assert_eq!(texts.last().unwrap(), "and now?");
        let notebook: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(work.join("conversation.ipynb")).unwrap(),
        )
        .unwrap();
        assert_eq!(notebook["cells"][1]["source"][0], "y = 7");
        assert_eq!(
            std::fs::read_to_string(work.join("out/data.txt")).unwrap(),
            "changed\n"
        );
        assert_eq!(
            std::fs::read_to_string(work.join("data.txt")).unwrap(),
            "from the host\n"
        );
        // Lines typed are kept in the history file, magic commands included.
        let history = std::fs::read_to_string(home.path().join("state/oi/history")).unwrap();
        assert!(
            history.contains("set y") && history.contains("%help"),
            "{history}"
        );
        // Leaving removed the sandbox.
        let engine = oi::core::code_interpreter::Engine::connect(crate::suite::docker_config())
            .await
            .unwrap();
        let left: Vec<_> = engine
            .list()
            .await
            .unwrap()
            .into_iter()
            .filter(|c| c.owner_pid == Some(pid))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn conversations_lists_and_resumes_the_one_picked() {
        if image().is_none() {
            return;
        }
        let server = ScriptedServer::start(vec![
            openai::text(&["First answer."]),
            openai::text(&["Second answer."]),
            openai::text(&["Back in the first."]),
        ])
        .await;
        let home = Home::new();
        for message in ["the first conversation", "the second one"] {
            let r = run(home
                .oi(&home.project())
                .args(["-y", "--json"])
                .args(model_args(&server))
                .arg(message))
            .await;
            assert_eq!(r.code, 0, "{}", r.stderr);
            // Ids carry the second they were made in.
            std::thread::sleep(Duration::from_millis(1100));
        }
        let server_ref = &server;
        let home_ref = &home;
        tokio::task::block_in_place(move || {
            let mut p = spawn(home_ref, server_ref, "true", &["--conversations"]);
            p.expect(Regex(r"1\. .*test-model +the second one"))
                .unwrap();
            p.expect(Regex(r"2\. .*test-model +the first conversation"))
                .unwrap();
            p.expect("Resume which?").unwrap();
            std::thread::sleep(Duration::from_millis(300));
            p.send_line("2").unwrap();
            p.expect("> the first conversation").unwrap();
            p.expect("First answer.").unwrap();
            p.expect("> ").unwrap();
            p.send_line("go on").unwrap();
            p.expect("Back in the first.").unwrap();
            p.expect("> ").unwrap();
            std::thread::sleep(Duration::from_millis(300));
            p.send(expectrl::ControlCode::EndOfTransmission).unwrap();
            p.expect(Eof).unwrap();
        });
        let sent = &server.requests()[2].body["messages"];
        assert_eq!(sent[1]["content"], "the first conversation");
        assert_eq!(sent[2]["content"], "First answer.");
    }
}

#[tokio::test]
async fn the_task_can_come_from_stdin() {
    if image().is_none() {
        return;
    }
    let server = ScriptedServer::start(vec![openai::text(&["Read it."])]).await;
    let home = Home::new();
    let mut cmd = home.oi(&home.project());
    cmd.args(["-y", "--json"])
        .args(model_args(&server))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(b"summarise this\nsecond line\n")
            .await
            .unwrap();
    }
    let out = child.wait_with_output().await.unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        server.requests()[0].body["messages"][1]["content"],
        "summarise this\nsecond line"
    );
}

#[tokio::test]
async fn docker_down_is_a_clear_error_with_what_to_do() {
    let server = ScriptedServer::start(vec![openai::text(&["unused"])]).await;
    let home = Home::new();
    let r = run(home
        .oi(&home.project())
        .args(["-y", "--json"])
        .args(model_args(&server))
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .arg("hi"))
    .await;
    assert_eq!(r.code, 125, "{}", r.stderr);
    assert!(
        r.stderr.contains("/nonexistent/docker.sock"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("--unsafe"), "{}", r.stderr);
    assert!(
        server.requests().is_empty(),
        "nothing was sent to the model"
    );
}

#[tokio::test]
async fn a_project_image_is_built_from_oi_toml_once_and_rebuilt_when_its_recipe_changes() {
    if image().is_none() {
        return;
    }
    let home = Home::new();
    // Unique per run, so that an image left by an earlier run is not reused.
    let token = home
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let project = home
        .path()
        .join(format!("p{}", token.trim_start_matches('.')));
    std::fs::create_dir_all(project.join(".oi")).unwrap();
    std::fs::write(
        project.join("oi.toml"),
        "[sandbox]\ndockerfile = \".oi/Dockerfile\"\nworkspace = \"none\"\n",
    )
    .unwrap();
    std::fs::write(
        project.join(".oi/Dockerfile"),
        "ARG OI_IMAGE\nFROM ${OI_IMAGE}\nUSER root\n\
         RUN apt-get update && apt-get install -y --no-install-recommends jq && rm -rf /var/lib/apt/lists/*\n\
         COPY note.txt /opt/note.txt\nUSER 1000:1000\n",
    )
    .unwrap();
    std::fs::write(project.join(".oi/note.txt"), format!("first {token}\n")).unwrap();
    let code = "echo '{\"a\": 42}' | jq .a; cat /opt/note.txt";
    let ask = |server: &ScriptedServer| {
        let mut cmd = home.oi(&project);
        cmd.args(["-y", "--json"])
            .args(model_args(server))
            .arg("use jq");
        cmd
    };
    // The build runs steps with network access: only for a file the user trusts.
    let server = ScriptedServer::start(vec![openai::text(&["ok"])]).await;
    let untrusted = run(&mut ask(&server)).await;
    assert!(
        untrusted.stderr.contains("ignored: sandbox.dockerfile")
            && !untrusted.stderr.contains("built the sandbox image"),
        "{}",
        untrusted.stderr
    );
    let trusted = run(home.oi(&project).arg("trust")).await;
    assert_eq!(trusted.code, 0, "{}", trusted.stderr);
    let server =
        ScriptedServer::start(vec![openai::execute("shell", code), openai::text(&["ok"])]).await;
    let first = run(&mut ask(&server)).await;
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert!(
        first
            .stderr
            .contains("oi: built the sandbox image oi-project-p"),
        "{}",
        first.stderr
    );
    let console: String = first
        .json()
        .iter()
        .filter(|l| l["type"] == "console" && l["format"] == "output")
        .filter_map(|l| l["content"].as_str().map(str::to_string))
        .collect();
    assert_eq!(console, format!("42\nfirst {token}\n"));
    // Unchanged: no rebuild.
    let server = ScriptedServer::start(vec![openai::text(&["ok"])]).await;
    let second = run(&mut ask(&server)).await;
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert!(
        !second.stderr.contains("built the sandbox image"),
        "{}",
        second.stderr
    );
    // A changed recipe (a file of the build folder): not built until trusted again (code
    // in a sandbox could have changed it), then rebuilt with the new content.
    std::fs::write(project.join(".oi/note.txt"), format!("second {token}\n")).unwrap();
    let server = ScriptedServer::start(vec![openai::text(&["ok"])]).await;
    let changed = run(&mut ask(&server)).await;
    assert!(
        changed
            .stderr
            .contains("build folder or packages changed since you trusted")
            && !changed.stderr.contains("built the sandbox image"),
        "{}",
        changed.stderr
    );
    assert_eq!(run(home.oi(&project).arg("trust")).await.code, 0);
    let server = ScriptedServer::start(vec![
        openai::execute("shell", "cat /opt/note.txt"),
        openai::text(&["ok"]),
    ])
    .await;
    let third = run(&mut ask(&server)).await;
    assert!(
        third.stderr.contains("built the sandbox image"),
        "{}",
        third.stderr
    );
    assert!(
        third.stdout.contains(&format!("second {token}")),
        "{}",
        third.stdout
    );
    // The builds were this test's own: they go (they are large, and unique per run).
    let engine = oi::core::code_interpreter::Engine::connect(super::docker_config())
        .await
        .unwrap();
    let store = engine.images().unwrap();
    let name = project.file_name().unwrap().to_string_lossy().into_owned();
    let mine: Vec<_> = store
        .list()
        .await
        .unwrap()
        .into_iter()
        .filter(|built| built.project.as_deref() == Some(name.as_str()))
        .collect();
    assert!(!mine.is_empty(), "the builds are listed under {name}");
    for built in mine {
        store.remove(&built.tag).await.unwrap();
    }
}

/// A project image of this test's own, labelled as oi labels a build, tagged `tag`.
async fn project_image_of_mine(docker: &bollard::Docker, base: &str, project: &str, tag: &str) {
    use bollard::query_parameters::{CommitContainerOptionsBuilder, CreateContainerOptionsBuilder};
    let name = format!("oi-test-commit-{project}-{tag}");
    let body = bollard::models::ContainerCreateBody {
        image: Some(base.to_string()),
        ..Default::default()
    };
    let made = docker
        .create_container(
            Some(CreateContainerOptionsBuilder::default().name(&name).build()),
            body,
        )
        .await
        .unwrap();
    let changes = format!(
        "LABEL {}={project} {}=test-{tag}",
        oi::core::code_interpreter::image::PROJECT_LABEL,
        oi::core::code_interpreter::image::RECIPE_LABEL
    );
    let mut options = CommitContainerOptionsBuilder::default()
        .container(&made.id)
        .repo(&format!("oi-project-{project}"))
        .tag(tag)
        .build();
    options.changes = Some(changes);
    docker
        .commit_container(options, bollard::models::ContainerConfig::default())
        .await
        .unwrap();
    oi::core::code_interpreter::docker::remove(docker, &made.id)
        .await
        .unwrap();
}

#[tokio::test]
async fn image_ls_marks_current_images_and_prune_removes_only_stale_ones() {
    let Some(current) = image() else {
        return;
    };
    let home = Home::new();
    let r = run(home.oi(&home.project()).args(["image", "ls"])).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout
            .lines()
            .any(|l| l.starts_with(current) && l.contains("(oi)") && l.trim_end().ends_with('*')),
        "{}",
        r.stdout
    );

    // Two builds of a project of this test's own: the older is stale. Pruning is asked
    // for that project only (tests share the daemon; a global prune would touch other
    // runs' images).
    let engine = oi::core::code_interpreter::Engine::connect(super::docker_config())
        .await
        .unwrap();
    let docker = engine.docker().unwrap().clone();
    let project = format!("prune-test-{}", std::process::id());
    project_image_of_mine(&docker, current, &project, "old").await;
    // Image creation times are in seconds: the newer must be newer.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    project_image_of_mine(&docker, current, &project, "new").await;
    let listed = run(home.oi(&home.project()).args(["image", "ls"])).await;
    let rows: Vec<&str> = listed
        .stdout
        .lines()
        .filter(|l| l.contains(&project))
        .collect();
    assert_eq!(rows.len(), 2, "{}", listed.stdout);
    assert!(
        rows.iter()
            .any(|l| l.contains(":new") && l.trim_end().ends_with('*')),
        "the newest build is current: {rows:?}"
    );

    let r = run(home
        .oi(&home.project())
        .args(["image", "prune", "--project", &project]))
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let old = format!("oi-project-{project}:old");
    let new = format!("oi-project-{project}:new");
    assert!(r.stdout.contains(&format!("removed {old}")), "{}", r.stdout);
    assert_eq!(
        r.stdout.lines().count(),
        1,
        "nothing else removed: {}",
        r.stdout
    );
    assert!(
        docker.inspect_image(&old).await.is_err(),
        "the stale build went"
    );
    assert!(docker.inspect_image(&new).await.is_ok(), "the newest stays");
    assert!(
        docker.inspect_image(current).await.is_ok(),
        "oi's own stays"
    );
    docker
        .remove_image(
            &new,
            None::<bollard::query_parameters::RemoveImageOptions>,
            None,
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn oi_exec_takes_sandbox_settings_from_oi_toml_and_flags_win() {
    if image().is_none() {
        return;
    }
    let home = Home::new();
    let project = home.project();
    std::fs::write(project.join("visible.txt"), "here").unwrap();
    std::fs::write(project.join("oi.toml"), "[sandbox]\nworkspace = \"none\"\n").unwrap();
    let r = run(home
        .oi(&project)
        .args(["exec", "-l", "shell", "-c", "ls -A /workspace | wc -l"]))
    .await;
    assert_eq!((r.code, r.stdout.as_str()), (0, "0\n"), "{}", r.stderr);
    let r = run(home.oi(&project).args([
        "exec",
        "--workspace",
        "ro",
        "-l",
        "shell",
        "-c",
        "ls /workspace",
    ]))
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("visible.txt"), "{}", r.stdout);
    std::fs::write(project.join("oi.toml"), "[sandbox]\nmemroy = \"1g\"\n").unwrap();
    let r = run(home.oi(&project).args(["exec", "-c", "pass"])).await;
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("memroy"), "{}", r.stderr);
}

#[tokio::test]
async fn local_and_profile_from_the_environment() {
    let home = Home::new();
    home.write_config("[profiles.fast]\nmax_iterations = 3\n");
    let r = run(home
        .oi(&home.project())
        .args(["config", "--local"])
        .env("OI_PROFILE", "fast"))
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.lines().any(
            |l| l.starts_with("api_base = \"http://localhost:11434/v1\"")
                && l.ends_with("# --local")
        ),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("model = \"llama3.1\""), "{}", r.stdout);
    assert!(r.stdout.contains("max_iterations = 3"), "{}", r.stdout);
    // --model wins over --local's default model.
    let r = run(home
        .oi(&home.project())
        .args(["config", "--local", "-m", "qwen2.5-coder"]))
    .await;
    assert!(
        r.stdout.contains("model = \"qwen2.5-coder\""),
        "{}",
        r.stdout
    );
}
