//! Limited functions: the languages offered to the model are configurable. The tool's
//! `language` enum and the system message name only the offered languages, in tool
//! and text mode, and a block in any other language is refused back to the model with
//! the list; the `languages` setting and the `--languages` flag reach core, show in
//! `oi config` with their source, and a bad name is an error naming the file and key.

use std::time::Duration;

use oi::core::code_interpreter::{Backend, Language, Languages};
use oi::core::config::{Config, ToolMode};
use oi::core::llm::Endpoint;
use oi::core::protocol::TurnEnd;
use oi::core::respond::Conversation;
use serde_json::{json, Value};

use super::chat::{model_args, run, Home};
use super::conversation::turn;
use super::engine_with;
use super::image;
use super::llm_server::{anthropic, openai, ScriptedServer};

/// A conversation on the real Docker sandbox offering `languages`, with blocks run
/// without asking; `None` skips (no Docker and not required).
async fn conversation(
    endpoint: Endpoint,
    languages: Languages,
    tweak: impl FnOnce(&mut Config),
) -> Option<Conversation> {
    let engine = engine_with(Backend::Docker, |c| c.languages = languages).await?;
    let mut config = Config::new("test-model", endpoint);
    config.endpoint.idle_timeout = Duration::from_secs(5);
    config.retry.initial_backoff = Duration::from_millis(10);
    config.sandbox = engine.config().clone();
    config.auto_run = true;
    tweak(&mut config);
    Some(Conversation::start(config, engine).expect("provider builds"))
}

fn openai_endpoint(server: &ScriptedServer) -> Endpoint {
    Endpoint::openai(server.base_url(), Some("sk-test".into()))
}

fn python_only() -> Languages {
    Languages::choose(&["python".into()], Vec::new()).unwrap()
}

/// The system message of an OpenAI request.
fn system(body: &Value) -> &str {
    let first = &body["messages"][0];
    assert_eq!(first["role"], "system");
    first["content"].as_str().unwrap()
}

/// The languages the system message lists, in order.
fn listed_languages(system: &str) -> Vec<String> {
    system
        .lines()
        .skip_while(|l| !l.starts_with("- Languages"))
        .skip(1)
        .take_while(|l| l.starts_with("  - "))
        .map(|l| l[4..].split(':').next().unwrap().to_string())
        .collect()
}

const REFUSED: &str = "Nothing ran: `shell` is not a language available here. Available: python.";

#[tokio::test]
async fn tool_mode_offers_only_the_configured_languages_and_refuses_others() {
    let server = ScriptedServer::start(vec![
        openai::execute("shell", "ls /"),
        openai::execute("python", "print(6 * 7)"),
        openai::text(&["It is 42."]),
    ])
    .await;
    let Some(mut conv) = conversation(openai_endpoint(&server), python_only(), |c| {
        c.tool_mode = ToolMode::Functions
    })
    .await
    else {
        return;
    };
    let t = turn(&mut conv, "What is 6*7?").await;
    assert_eq!(t.end, TurnEnd::Finished, "{t:#?}");
    assert!(t.console().contains(REFUSED), "{}", t.console());
    assert!(t.console().ends_with("42\n"), "{}", t.console());

    let requests = server.requests();
    assert_eq!(requests.len(), 3);
    let tool = &requests[0].body["tools"][0]["function"];
    assert_eq!(
        tool["parameters"]["properties"]["language"]["enum"],
        json!(["python"])
    );
    let system = system(&requests[0].body);
    assert_eq!(listed_languages(system), ["python"], "{system}");
    assert!(!system.contains("shell"), "{system}");
    // The refusal went back to the model as the call's result; the shell never ran.
    let result = |body: &Value| {
        body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .find(|m| m["role"] == "tool")
            .map(|m| m["content"].clone())
    };
    assert_eq!(result(&requests[1].body), Some(json!(REFUSED)));
    assert_eq!(result(&requests[2].body), Some(json!("42\n")));
    conv.shutdown().await;
}

#[tokio::test]
async fn text_mode_tells_only_the_configured_languages_and_refuses_a_bash_fence() {
    let server = ScriptedServer::start(vec![
        openai::text(&["Let me look.\n```bash\nls /\n```\n"]),
        openai::text(&["Then:\n```python\nprint(6 * 7)\n```\n"]),
        openai::text(&["It is 42."]),
    ])
    .await;
    let Some(mut conv) = conversation(openai_endpoint(&server), python_only(), |c| {
        c.tool_mode = ToolMode::Text
    })
    .await
    else {
        return;
    };
    let t = turn(&mut conv, "What is 6*7?").await;
    assert_eq!(t.end, TurnEnd::Finished, "{t:#?}");

    let requests = server.requests();
    assert_eq!(requests.len(), 3);
    assert!(requests[0].body.get("tools").is_none());
    let system = system(&requests[0].body);
    assert_eq!(listed_languages(system), ["python"], "{system}");
    assert!(
        system.contains("for example:\n```python\nprint(6 * 7)\n```"),
        "{system}"
    );
    assert!(!system.contains("shell"), "{system}");
    let last = |body: &Value| body["messages"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        last(&requests[1].body),
        json!({"role": "user", "content": format!("Code output:\n{}", REFUSED.replace("`shell`", "`bash`"))})
    );
    assert_eq!(
        last(&requests[2].body),
        json!({"role": "user", "content": "Code output:\n42\n"})
    );
    conv.shutdown().await;
}

#[tokio::test]
async fn a_declared_language_is_offered_beside_the_chosen_ones() {
    let server = ScriptedServer::start(vec![anthropic::text(&["Hello."])]).await;
    let languages = Languages::choose(
        &["python".into()],
        vec![Language::file("node", "js", "node {file}")],
    )
    .unwrap();
    let Some(mut conv) = conversation(
        Endpoint::anthropic(server.base_url(), Some("sk-ant-test".into())),
        languages,
        |c| c.tool_mode = ToolMode::Functions,
    )
    .await
    else {
        return;
    };
    let t = turn(&mut conv, "hi").await;
    assert_eq!(t.end, TurnEnd::Finished, "{t:#?}");
    let body = &server.requests()[0].body;
    assert_eq!(
        body["tools"][0]["input_schema"]["properties"]["language"]["enum"],
        json!(["python", "node"])
    );
    let system = body["system"].as_str().unwrap();
    assert_eq!(listed_languages(system), ["python", "node"], "{system}");
    conv.shutdown().await;
}

/// The line `oi config` prints for a key.
fn config_line<'a>(stdout: &'a str, key: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.starts_with(&format!("{key} = ")))
        .unwrap_or_else(|| panic!("no {key} in\n{stdout}"))
}

#[tokio::test]
async fn oi_config_shows_the_languages_with_their_source() {
    let home = Home::new();
    home.write_config("[sandbox]\nlanguages = [\"python\", \"node:js:node {file}\"]\n");
    let file = home.config_file().display().to_string();
    let r = run(home.oi(&home.project()).arg("config")).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let line = config_line(&r.stdout, "sandbox.languages");
    assert!(line.contains("[\"python\", \"node:js:node {file}\"]") && line.ends_with(&file));
    assert!(
        r.stdout
            .contains("# effective: languages offered python, node"),
        "{}",
        r.stdout
    );

    // The flag replaces the file's choice and keeps the declaration of what it names.
    let r = run(home
        .oi(&home.project())
        .args(["config", "--languages", "shell,node"]))
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        config_line(&r.stdout, "sandbox.languages").ends_with(&format!(
            "[\"shell\", \"node\", \"node:js:node {{file}}\"]  # --languages, with declarations from {file}"
        )),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("# effective: languages offered shell, node"),
        "{}",
        r.stdout
    );

    // Declaring one adds it to the file's choice.
    let r =
        run(home
            .oi(&home.project())
            .args(["config", "--define-language", "perl:pl:perl {file}"]))
        .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout
            .contains("# effective: languages offered python, node, perl"),
        "{}",
        r.stdout
    );

    // Only declarations: the built-ins are offered too, as before the setting chose.
    home.write_config("[sandbox]\nlanguages = [\"node:js:node {file}\"]\n");
    let r = run(home.oi(&home.project()).arg("config")).await;
    assert!(
        r.stdout
            .contains("# effective: languages offered python, shell, node"),
        "{}",
        r.stdout
    );
}

#[tokio::test]
async fn a_bad_language_name_is_an_error_naming_the_file_and_the_key() {
    let home = Home::new();
    home.write_config("[sandbox]\nlanguages = [\"python\", \"cobol\"]\n");
    for args in [&["config"][..], &["exec", "-c", "pass"]] {
        let r = run(home.oi(&home.project()).args(args)).await;
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        for part in [
            format!("`sandbox.languages` in {}", home.config_file().display()),
            "`cobol` is not a language oi has: name one of python, shell".into(),
            "NAME:EXTENSION:COMMAND".into(),
        ] {
            assert!(r.stderr.contains(&part), "{args:?}: {part}: {}", r.stderr);
        }
    }
    std::fs::remove_file(home.config_file()).unwrap();
    let r = run(home
        .oi(&home.project())
        .args(["config", "--languages", "python,fortran"]))
    .await;
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("--languages: `fortran` is not a language oi has"),
        "{}",
        r.stderr
    );
}

#[tokio::test]
async fn an_untrusted_project_may_offer_fewer_languages_never_more() {
    let home = Home::new();
    let project = home.project();
    // Naming built-ins only tightens: applied from an untrusted file.
    std::fs::write(
        project.join("oi.toml"),
        "[sandbox]\nlanguages = [\"python\"]\n",
    )
    .unwrap();
    let r = run(home.oi(&project).arg("config")).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!r.stdout.contains("# note:"), "{}", r.stdout);
    assert!(
        r.stdout.contains("# effective: languages offered python\n"),
        "{}",
        r.stdout
    );

    // The user chose Python only: the project may not offer the shell back.
    home.write_config("[sandbox]\nlanguages = [\"python\"]\n");
    std::fs::write(
        project.join("oi.toml"),
        "[sandbox]\nlanguages = [\"python\", \"shell\"]\n",
    )
    .unwrap();
    let r = run(home.oi(&project).arg("config")).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("ignored: sandbox.languages"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("# effective: languages offered python\n"),
        "{}",
        r.stdout
    );

    // Naming a language the user declared keeps the user's declaration.
    home.write_config("[sandbox]\nlanguages = [\"node:js:node {file}\"]\n");
    std::fs::write(
        project.join("oi.toml"),
        "[sandbox]\nlanguages = [\"node\"]\n",
    )
    .unwrap();
    let r = run(home.oi(&project).arg("config")).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!r.stdout.contains("# note:"), "{}", r.stdout);
    assert!(
        r.stdout.contains("# effective: languages offered node\n"),
        "{}",
        r.stdout
    );

    // A declared language is a command that runs unseen: ignored until trusted.
    home.write_config("");
    std::fs::write(
        project.join("oi.toml"),
        "[sandbox]\nlanguages = [\"python\", \"node:js:node {file}\"]\n",
    )
    .unwrap();
    let r = run(home.oi(&project).arg("config")).await;
    assert!(
        r.stdout.contains("ignored: sandbox.languages"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("# effective: languages offered python, shell\n"),
        "{}",
        r.stdout
    );
}

#[tokio::test]
async fn the_languages_flag_reaches_the_model_and_the_refusal() {
    if image().is_none() {
        return;
    }
    let home = Home::new();
    let server = ScriptedServer::start(vec![
        openai::execute("shell", "ls /"),
        openai::text(&["No shell here."]),
    ])
    .await;
    let r = run(home
        .oi(&home.project())
        .args(["-y", "--json", "--languages", "python"])
        .args(model_args(&server))
        .arg("list the root folder"))
    .await;
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[0].body["tools"][0]["function"]["parameters"]["properties"]["language"]["enum"],
        json!(["python"])
    );
    let tool_result = requests[1].body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "tool")
        .map(|m| m["content"].clone());
    assert_eq!(tool_result, Some(json!(REFUSED)));
}
