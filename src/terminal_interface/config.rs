//! The chat's settings, from every place a user puts them, in increasing precedence:
//! oi's defaults, `~/.config/oi/config.toml`, a profile in it (`--profile NAME`), the
//! project's `oi.toml` (found from the current directory upwards), environment
//! variables, `--local`, and flags. Each value remembers where it came from, for
//! `oi config`.
//!
//! Every layer is checked against one schema ([`Settings`]): an unknown key or a wrong
//! type is an error naming the key and the file. The result becomes core's
//! [`Config`]; nothing past this module reads files or the environment.
//!
//! The project's `oi.toml` is not the user's: settings in it that would loosen the
//! sandbox or move the key apply only if the user trusts the file ([`super::trust`]);
//! otherwise they are ignored, and the front end says so once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};

use super::cli::{ChatArgs, SandboxArgs};
use super::setup;
use crate::core::code_interpreter::image::ProjectImage;
use crate::core::config::{Config, ToolMode};
use crate::core::llm::{Endpoint, ProviderKind};

/// One layer's settings: the keys of `config.toml`, a profile, or `oi.toml`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub model: Option<String>,
    pub provider: Option<ProviderKind>,
    pub api_base: Option<String>,
    pub api_key: Option<String>,
    pub auto_run: Option<bool>,
    pub context_window: Option<usize>,
    pub max_tokens: Option<u32>,
    pub max_output: Option<usize>,
    pub max_iterations: Option<usize>,
    pub temperature: Option<f32>,
    pub system_message: Option<String>,
    pub custom_instructions: Option<String>,
    /// `auto`, `functions` or `text`.
    pub tool_mode: Option<ToolMode>,
    pub vision: Option<bool>,
    /// Seconds a model's stream may stay silent.
    pub idle_timeout: Option<f64>,
    /// Seconds one model reply may take in all.
    pub reply_timeout: Option<f64>,
    pub verbose: Option<bool>,
    pub sandbox: Option<SandboxSettings>,
}

/// The `[sandbox]` table: the same settings as the sandbox flags.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxSettings {
    /// Run code on this machine, with no sandbox.
    #[serde(rename = "unsafe")]
    pub unsafe_mode: Option<bool>,
    pub network: Option<bool>,
    pub writable_root: Option<bool>,
    pub keep_capabilities: Option<bool>,
    /// `2g`, `512m` or `none`.
    pub memory: Option<Limit>,
    pub cpus: Option<Limit>,
    pub pids: Option<Limit>,
    pub user: Option<String>,
    /// Seconds a block may run.
    pub timeout: Option<f64>,
    pub image: Option<String>,
    pub base_image: Option<String>,
    /// The languages offered to the model: names (`python`, `shell`, an alias, or a
    /// declared language) and declarations of languages run from files,
    /// `NAME:EXTENSION:COMMAND`, which are offered too. Without names, `python` and
    /// `shell` come first (see [`setup::languages`]); a name keeps the declaration the
    /// layer below gave it.
    pub languages: Option<Vec<String>>,
    /// `rw`, `ro`, `none` or `copy`.
    pub workspace: Option<WorkspaceMode>,
    /// Size limit of a private workspace (`none`, `copy`): `1g`, `512m`.
    pub workspace_size: Option<Limit>,
    /// The project's Dockerfile (relative to the file that names it); it builds
    /// `FROM ${OI_IMAGE}`, oi's sandbox image.
    pub dockerfile: Option<String>,
    /// Debian packages to add to the project's image.
    pub apt_packages: Option<Vec<String>>,
    /// Python packages to add to the project's image (pip).
    pub pip_packages: Option<Vec<String>>,
}

/// The workspace modes, as `oi.toml` writes them.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum WorkspaceMode {
    Rw,
    Ro,
    None,
    Copy,
}

impl WorkspaceMode {
    fn name(self) -> &'static str {
        match self {
            WorkspaceMode::Rw => "rw",
            WorkspaceMode::Ro => "ro",
            WorkspaceMode::None => "none",
            WorkspaceMode::Copy => "copy",
        }
    }
}

/// A limit written as a number or as text (`2g`, `none`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Limit {
    Number(f64),
    Text(String),
}

impl Limit {
    fn text(&self) -> String {
        match self {
            Limit::Number(n) if n.fract() == 0.0 => format!("{}", *n as i64),
            Limit::Number(n) => n.to_string(),
            Limit::Text(t) => t.clone(),
        }
    }
}

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source(pub String);

/// The merged settings and, per key (`model`, `sandbox.memory`), the source that set it.
#[derive(Debug, Default)]
pub struct Resolved {
    values: BTreeMap<String, (toml::Value, Source)>,
    /// The files that were read, in order.
    pub files: Vec<PathBuf>,
    /// The folder of the project's `oi.toml`, if one was found.
    pub project_dir: Option<PathBuf>,
    /// Why a project file found was not read at all, or was read without trust.
    pub notices: Vec<String>,
    /// The fingerprint of the project image build the user trusted, if the project
    /// file (trusted) builds one.
    pub project_build: Option<String>,
}

impl super::trust::Below for Resolved {
    fn below(&self, key: &str) -> Option<&toml::Value> {
        self.values.get(key).map(|(value, _)| value)
    }
}

/// Where oi's files live (XDG, with the usual fallbacks).
#[derive(Debug, Clone)]
pub struct Paths {
    pub config_file: PathBuf,
    pub data_dir: PathBuf,
    pub state_dir: PathBuf,
}

impl Paths {
    pub fn from_env() -> Paths {
        let home = std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(PathBuf::from);
        let xdg = |var: &str, fallback: &str| {
            std::env::var_os(var)
                .filter(|d| !d.is_empty())
                .map(PathBuf::from)
                .or_else(|| home.as_ref().map(|h| h.join(fallback)))
                .unwrap_or_else(std::env::temp_dir)
                .join("oi")
        };
        Paths {
            config_file: xdg("XDG_CONFIG_HOME", ".config").join("config.toml"),
            data_dir: xdg("XDG_DATA_HOME", ".local/share"),
            state_dir: xdg("XDG_STATE_HOME", ".local/state"),
        }
    }
}

/// `oi.toml` in `start` or the nearest folder above it.
pub fn find_project_file(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .map(|dir| dir.join("oi.toml"))
        .find(|file| file.is_file())
}

impl Resolved {
    /// Reads every layer. `env` is the environment to use (tests pass their own).
    pub fn load(
        paths: &Paths,
        cwd: &Path,
        env: &BTreeMap<String, String>,
        args: &ChatArgs,
        sandbox: &SandboxArgs,
    ) -> anyhow::Result<Resolved> {
        let mut resolved = Resolved::default();
        let profile = args
            .profile
            .clone()
            .or_else(|| env.get("OI_PROFILE").cloned().filter(|p| !p.is_empty()));
        let mut profiles = BTreeMap::new();
        if paths.config_file.is_file() {
            let (table, found) = read_file(&paths.config_file, true)?;
            profiles = found;
            resolved.add(&table, &source_of(&paths.config_file));
            resolved.files.push(paths.config_file.clone());
        }
        if let Some(name) = &profile {
            let Some(table) = profiles.get(name) else {
                let names: Vec<&String> = profiles.keys().collect();
                bail!(
                    "no profile `{name}` in {}{}",
                    paths.config_file.display(),
                    if names.is_empty() {
                        " (it defines none; add a [profiles.NAME] table)".to_string()
                    } else {
                        format!(
                            "; it defines: {}",
                            names
                                .iter()
                                .map(|n| n.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    }
                );
            };
            let source = format!("{} [profiles.{name}]", source_of(&paths.config_file));
            resolved.add(table, &source);
        }
        if let Some(project) = find_project_file(cwd) {
            resolved.add_project(&project, &paths.config_file)?;
        }
        for (var, key) in [
            ("OI_MODEL", "model"),
            ("OI_API_BASE", "api_base"),
            ("OI_API_KEY", "api_key"),
        ] {
            if let Some(value) = env.get(var).filter(|v| !v.is_empty()) {
                resolved.set(
                    key,
                    toml::Value::String(value.clone()),
                    &format!("env {var}"),
                );
            }
        }
        if args.local {
            let source = "--local";
            resolved.set("provider", "openai".into(), source);
            resolved.set("api_base", LOCAL_API_BASE.into(), source);
            if !env.contains_key("OI_MODEL") {
                resolved.set("model", LOCAL_MODEL.into(), source);
            }
        }
        resolved.add_flags(args, sandbox);
        // Vendors' variables, for the provider the settings chose, unless a layer above
        // the files set the value (OI_*, --local, a flag).
        let provider = resolved.provider();
        let (key_var, base_var) = match provider {
            ProviderKind::OpenAi => ("OPENAI_API_KEY", "OPENAI_BASE_URL"),
            ProviderKind::Anthropic => ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"),
        };
        for (var, key) in [(key_var, "api_key"), (base_var, "api_base")] {
            let set_above_files = resolved
                .values
                .get(key)
                .is_some_and(|(_, s)| s.0.starts_with("env ") || s.0.starts_with("--"));
            if let Some(value) = env.get(var).filter(|v| !v.is_empty()) {
                if !set_above_files {
                    resolved.set(
                        key,
                        toml::Value::String(value.clone()),
                        &format!("env {var}"),
                    );
                }
            }
        }
        Ok(resolved)
    }

    /// The project file's layer: all of it if the user trusts the file, else only what
    /// cannot loosen the sandbox or move secrets.
    fn add_project(&mut self, path: &Path, config_file: &Path) -> anyhow::Result<()> {
        let project = match super::trust::read_project(path)? {
            Ok(project) => project,
            Err(why) => {
                self.notices
                    .push(format!("ignoring {}: {why}", path.display()));
                return Ok(());
            }
        };
        let (mut table, _) = parse_file(&project.text, path, false)?;
        let store = super::trust::Store::load(config_file)?;
        let source = source_of(path);
        self.project_dir = path.parent().map(Path::to_path_buf);
        self.files.push(path.to_path_buf());
        if let Some(entry) = store.trusted(&project) {
            let build = build_fingerprint(&table)?;
            if build.is_none() || build == entry.build {
                self.project_build = build;
                self.add(&table, &format!("{source} (trusted)"));
                return Ok(());
            }
            // The file is as trusted, but what its image build would run is not.
            let ignored: Vec<String> = BUILD_KEYS
                .iter()
                .filter(|k| remove_key(&mut table, k).is_some())
                .map(|k| k.to_string())
                .collect();
            self.add(&table, &format!("{source} (trusted)"));
            self.notices.push(format!(
                "the project image's build folder or packages changed since you trusted {}, so \
                 these settings were ignored: {}. Look at what changed; to build it, run: oi trust {}",
                path.display(),
                ignored.join(", "),
                path.display()
            ));
            return Ok(());
        }
        let ignored = self.untrusted_keys(&table);
        for key in &ignored {
            remove_key(&mut table, key);
        }
        self.add(&table, &source);
        if !ignored.is_empty() {
            let changed = if store.trusted_before(&project) {
                " (it changed since you trusted it)"
            } else {
                ""
            };
            self.notices.push(format!(
                "{} is not trusted{changed}, so these settings in it were ignored: {}. They would \
                 loosen the sandbox or send your key elsewhere; if you wrote the file and want \
                 them, run: oi trust {}",
                path.display(),
                ignored.join(", "),
                path.display()
            ));
        }
        Ok(())
    }

    /// The keys of an untrusted file's table that it may not set.
    fn untrusted_keys(&self, table: &toml::Table) -> Vec<String> {
        flatten(table)
            .into_iter()
            .filter(|(key, value)| super::trust::loosens(key, value, self))
            .map(|(key, _)| key)
            .collect()
    }

    /// The source of a setting (`--memory`, a file, `env OI_MODEL`), if it is set.
    pub fn source(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(|(_, s)| s.0.as_str())
    }

    /// How errors name a setting: the flag, or the key and the file it is in.
    pub fn name_of(&self, key: &str) -> String {
        match self.source(key) {
            Some(flag) if flag.starts_with("--") => flag.to_string(),
            Some(env) if env.starts_with("env ") => format!("`{key}` ({env})"),
            Some(file) => format!("`{key}` in {file}"),
            None => format!("`{key}`"),
        }
    }

    fn add(&mut self, table: &toml::Table, source: &str) {
        for (key, value) in table {
            match value {
                toml::Value::Table(inner) if key == "sandbox" => {
                    for (k, v) in inner {
                        self.set(&format!("sandbox.{k}"), v.clone(), source);
                    }
                }
                _ => self.set(key, value.clone(), source),
            }
        }
    }

    fn set(&mut self, key: &str, value: toml::Value, source: &str) {
        let (value, source) = match key {
            LANGUAGES => self.keep_declarations(value, source),
            _ => (value, source.to_string()),
        };
        self.values.insert(key.to_string(), (value, Source(source)));
    }

    /// A `languages` list that names a language declared by the list below it keeps
    /// that declaration: a profile, a project file or `--languages` can choose among
    /// the languages the user declared without repeating their commands. (What an
    /// untrusted project file could not set was removed before this.)
    fn keep_declarations(&self, value: toml::Value, source: &str) -> (toml::Value, String) {
        let (toml::Value::Array(mut list), Some((toml::Value::Array(below), from))) =
            (value.clone(), self.values.get(LANGUAGES))
        else {
            return (value, source.to_string());
        };
        let declaration = |entries: &[toml::Value], name: &str| {
            entries
                .iter()
                .filter_map(|e| e.as_str())
                .find(|e| {
                    e.split_once(':')
                        .is_some_and(|(n, _)| n.trim().eq_ignore_ascii_case(name.trim()))
                })
                .map(str::to_string)
        };
        let names: Vec<String> = list
            .iter()
            .filter_map(|e| e.as_str())
            .filter(|e| !e.contains(':'))
            .map(str::to_string)
            .collect();
        let mut kept = false;
        for name in names {
            if declaration(&list, &name).is_none() {
                if let Some(declared) = declaration(below, &name) {
                    list.push(toml::Value::String(declared));
                    kept = true;
                }
            }
        }
        let source = if kept {
            format!("{source}, with declarations from {}", from.0)
        } else {
            source.to_string()
        };
        (toml::Value::Array(list), source)
    }

    fn add_flags(&mut self, a: &ChatArgs, s: &SandboxArgs) {
        let mut flag = |key: &str, name: &str, value: Option<toml::Value>| {
            if let Some(v) = value {
                self.set(key, v, name);
            }
        };
        let text = |v: &Option<String>| v.clone().map(toml::Value::String);
        let on = |b: bool| b.then_some(toml::Value::Boolean(true));
        let num = |n: Option<usize>| n.map(|n| toml::Value::Integer(n as i64));
        flag("model", "--model", text(&a.model));
        flag("api_base", "--api-base", text(&a.api_base));
        flag("api_key", "--api-key", text(&a.api_key));
        flag("provider", "--provider", text(&a.provider));
        flag("auto_run", "--auto-run", on(a.auto_run));
        flag("context_window", "--context-window", num(a.context_window));
        flag(
            "max_tokens",
            "--max-tokens",
            num(a.max_tokens.map(|n| n as usize)),
        );
        flag("max_output", "--max-output", num(a.max_output));
        flag("max_iterations", "--max-iterations", num(a.max_iterations));
        flag(
            "temperature",
            "--temperature",
            a.temperature.map(|t| (t as f64).into()),
        );
        flag(
            "system_message",
            "--system-message",
            text(&a.system_message),
        );
        flag(
            "custom_instructions",
            "--custom-instructions",
            text(&a.custom_instructions),
        );
        flag(
            "tool_mode",
            "--no-functions",
            a.no_functions.then(|| "text".into()),
        );
        flag("verbose", "--verbose", on(s.verbose));
        flag("sandbox.unsafe", "--unsafe", on(s.r#unsafe));
        flag("sandbox.unsafe", "--safe", a.safe.then_some(false.into()));
        flag("sandbox.network", "--network", on(s.network));
        flag(
            "sandbox.writable_root",
            "--writable-root",
            on(s.writable_root),
        );
        flag(
            "sandbox.keep_capabilities",
            "--keep-capabilities",
            on(s.keep_capabilities),
        );
        flag("sandbox.memory", "--memory", text(&s.memory));
        flag("sandbox.cpus", "--cpus", text(&s.cpus));
        flag("sandbox.pids", "--pids", text(&s.pids));
        flag("sandbox.user", "--user", text(&s.user));
        flag(
            "sandbox.timeout",
            "--timeout",
            s.timeout.map(toml::Value::Float),
        );
        flag("sandbox.image", "--image", text(&s.image));
        flag("sandbox.base_image", "--base-image", text(&s.base_image));
        flag("sandbox.workspace", "--workspace", text(&s.workspace));
        flag(
            "sandbox.workspace_size",
            "--workspace-size",
            text(&s.workspace_size),
        );
        self.add_language_flags(s);
    }

    /// `--languages` and `--define-language` make one `sandbox.languages`: `--languages`
    /// replaces the list below it (as any layer does, see [`Resolved::set`]);
    /// `--define-language` alone adds to it (declaring a language adds it, it does not
    /// undo a choice of languages).
    fn add_language_flags(&mut self, s: &SandboxArgs) {
        if s.languages.is_empty() && s.define_language.is_empty() {
            return;
        }
        let mut list: Vec<String> = Vec::new();
        let source = if !s.languages.is_empty() {
            list.extend(s.languages.iter().cloned());
            if s.define_language.is_empty() {
                "--languages".to_string()
            } else {
                "--languages and --define-language".to_string()
            }
        } else if let Some((toml::Value::Array(below), from)) = self.values.get(LANGUAGES) {
            list.extend(below.iter().filter_map(|v| v.as_str().map(str::to_string)));
            format!("--define-language, added to {}", from.0)
        } else {
            "--define-language".to_string()
        };
        list.extend(s.define_language.iter().cloned());
        let list = list.into_iter().map(toml::Value::String).collect();
        self.set(LANGUAGES, toml::Value::Array(list), &source);
    }

    /// The merged settings.
    pub fn settings(&self) -> anyhow::Result<Settings> {
        let mut table = toml::Table::new();
        for (key, (value, _)) in &self.values {
            match key.split_once('.') {
                Some((outer, inner)) => {
                    let entry = table
                        .entry(outer.to_string())
                        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                    if let toml::Value::Table(t) = entry {
                        t.insert(inner.to_string(), value.clone());
                    }
                }
                None => {
                    table.insert(key.clone(), value.clone());
                }
            }
        }
        // Flags and environment values were checked by their parsers; a failure here
        // names the key and where it came from.
        toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| {
                let key = self
                    .values
                    .iter()
                    .find(|(k, _)| e.message().contains(k.rsplit('.').next().unwrap_or(k)))
                    .map(|(k, (_, s))| format!(" ({k} from {})", s.0))
                    .unwrap_or_default();
                anyhow!("invalid setting{key}: {}", e.message())
            })
    }

    fn provider(&self) -> ProviderKind {
        if let Some((toml::Value::String(p), _)) = self.values.get("provider") {
            if p == "anthropic" {
                return ProviderKind::Anthropic;
            }
            return ProviderKind::OpenAi;
        }
        let model = match self.values.get("model") {
            Some((toml::Value::String(m), _)) => m.as_str(),
            _ => DEFAULT_MODEL,
        };
        provider_for(model)
    }

    /// Every value with its source, secrets masked: what `oi config` prints.
    pub fn describe(&self) -> Vec<(String, String, String)> {
        self.values
            .iter()
            .map(|(key, (value, source))| {
                let shown = match (key.as_str(), value) {
                    ("api_key", toml::Value::String(s)) => mask(s),
                    (_, toml::Value::String(s)) => format!("{s:?}"),
                    (_, v) => v.to_string(),
                };
                (key.clone(), shown, source.0.clone())
            })
            .collect()
    }
}

/// The setting that lists the languages offered.
const LANGUAGES: &str = "sandbox.languages";

/// The most output per block a model may be sent, in characters.
const MAX_OUTPUT: usize = 1_000_000;

/// The model used when none is configured.
pub const DEFAULT_MODEL: &str = "gpt-4o";
const LOCAL_API_BASE: &str = "http://localhost:11434/v1";
const LOCAL_MODEL: &str = "llama3.1";

/// Anthropic for Claude model names, OpenAI-compatible for everything else.
pub fn provider_for(model: &str) -> ProviderKind {
    if model.to_ascii_lowercase().starts_with("claude") {
        ProviderKind::Anthropic
    } else {
        ProviderKind::OpenAi
    }
}

/// `sk-proj-abcdef123456` → `sk-p…3456`.
pub fn mask(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    if chars.len() <= 8 {
        return "****".into();
    }
    let head: String = chars[..4].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}…{tail}")
}

fn source_of(path: &Path) -> String {
    path.display().to_string()
}

/// Reads, parses and checks the user's settings file; returns its table and its
/// profiles (each checked too).
fn read_file(
    path: &Path,
    allow_profiles: bool,
) -> anyhow::Result<(toml::Table, BTreeMap<String, toml::Table>)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_file(&text, path, allow_profiles)
}

/// Parses and checks a settings file's text (see [`read_file`]).
fn parse_file(
    text: &str,
    path: &Path,
    allow_profiles: bool,
) -> anyhow::Result<(toml::Table, BTreeMap<String, toml::Table>)> {
    let mut table: toml::Table =
        toml::from_str(text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    // A Dockerfile named in a file is relative to that file's folder.
    if let Some(toml::Value::Table(sandbox)) = table.get_mut("sandbox") {
        if let Some(toml::Value::String(dockerfile)) = sandbox.get_mut("dockerfile") {
            if let Some(dir) = path
                .parent()
                .filter(|_| Path::new(dockerfile.as_str()).is_relative())
            {
                *dockerfile = dir.join(&*dockerfile).display().to_string();
            }
        }
    }
    let mut profiles = BTreeMap::new();
    if allow_profiles {
        if let Some(value) = table.remove("profiles") {
            let toml::Value::Table(all) = value else {
                bail!(
                    "{}: `profiles` must be a table of [profiles.NAME] tables",
                    path.display()
                );
            };
            for (name, profile) in all {
                let toml::Value::Table(profile) = profile else {
                    bail!("{}: profiles.{name} must be a table", path.display());
                };
                check(&profile, path, &format!(" in [profiles.{name}]"))?;
                profiles.insert(name, profile);
            }
        }
    }
    check(&table, path, "")?;
    Ok((table, profiles))
}

/// The settings that make a project image build (which runs with network access).
const BUILD_KEYS: [&str; 4] = [
    "sandbox.dockerfile",
    "sandbox.apt_packages",
    "sandbox.pip_packages",
    "sandbox.base_image",
];

/// Removes a merged key (`model`, `sandbox.memory`) from a table; returns its value.
fn remove_key(table: &mut toml::Table, key: &str) -> Option<toml::Value> {
    match key.split_once('.') {
        Some((outer, inner)) => match table.get_mut(outer) {
            Some(toml::Value::Table(t)) => t.remove(inner),
            _ => None,
        },
        None => table.remove(key),
    }
}

/// A project file's table, parsed and checked (paths made relative to its folder).
pub fn parse_project(text: &str, path: &Path) -> anyhow::Result<toml::Table> {
    Ok(parse_file(text, path, false)?.0)
}

/// The project image a settings table describes, if it builds one.
fn project_image_of(table: &toml::Table) -> anyhow::Result<Option<ProjectImage>> {
    let sandbox: SandboxSettings = match table.get("sandbox") {
        Some(value) => value
            .clone()
            .try_into()
            .map_err(|e: toml::de::Error| anyhow!("{e}"))?,
        None => return Ok(None),
    };
    Ok(project_image(&sandbox, "project"))
}

/// What a project file's image build would run and see (see
/// [`ProjectImage::fingerprint`]); `None` when it builds none.
pub fn build_fingerprint(table: &toml::Table) -> anyhow::Result<Option<String>> {
    match project_image_of(table)? {
        Some(image) => Ok(Some(image.fingerprint()?)),
        None => Ok(None),
    }
}

/// The project's own image, when the `[sandbox]` settings ask for one.
fn project_image(sandbox: &SandboxSettings, name: &str) -> Option<ProjectImage> {
    (sandbox.dockerfile.is_some()
        || sandbox.apt_packages.is_some()
        || sandbox.pip_packages.is_some())
    .then(|| ProjectImage {
        name: name.to_string(),
        dockerfile: sandbox.dockerfile.as_ref().map(PathBuf::from),
        apt_packages: sandbox.apt_packages.clone().unwrap_or_default(),
        pip_packages: sandbox.pip_packages.clone().unwrap_or_default(),
        trusted: None,
    })
}

/// A table's settings as merged keys (`model`, `sandbox.memory`) and values.
fn flatten(table: &toml::Table) -> Vec<(String, toml::Value)> {
    let mut out = Vec::new();
    for (key, value) in table {
        match value {
            toml::Value::Table(inner) if key == "sandbox" => {
                for (k, v) in inner {
                    out.push((format!("sandbox.{k}"), v.clone()));
                }
            }
            _ => out.push((key.clone(), value.clone())),
        }
    }
    out
}

/// The settings of a table that only a trusted project file may make (judged
/// against oi's defaults), for `oi trust` to name.
pub fn loosening_settings(table: &toml::Table) -> Vec<String> {
    struct Defaults;
    impl super::trust::Below for Defaults {
        fn below(&self, _: &str) -> Option<&toml::Value> {
            None
        }
    }
    flatten(table)
        .into_iter()
        .filter(|(key, value)| super::trust::loosens(key, value, &Defaults))
        .map(|(key, value)| format!("{key} = {value}"))
        .collect()
}

/// Checks a table against the schema; an error names the key it is about.
fn check(table: &toml::Table, path: &Path, place: &str) -> anyhow::Result<()> {
    let parse = |t: toml::Table| Settings::deserialize(toml::Value::Table(t)).map(|_| ());
    let Err(whole) = parse(table.clone()) else {
        return Ok(());
    };
    // Deserializing a value loses the key's name: find it by trying keys one by one.
    for (key, value) in table {
        let Err(err) = parse(toml::Table::from_iter([(key.clone(), value.clone())])) else {
            continue;
        };
        let mut name = key.clone();
        let mut message = err.message().to_string();
        if let (true, toml::Value::Table(inner)) = (key == "sandbox", value) {
            for (k, v) in inner {
                let one = toml::Table::from_iter([(k.clone(), v.clone())]);
                if let Err(e) = parse(toml::Table::from_iter([(
                    key.clone(),
                    toml::Value::Table(one),
                )])) {
                    name = format!("sandbox.{k}");
                    message = e.message().to_string();
                    break;
                }
            }
        }
        bail!("{}{place}: `{name}`: {message}", path.display());
    }
    bail!("{}{place}: {}", path.display(), whole.message())
}

/// Turns the merged settings into core's configuration. `name` says how an error names
/// a setting (`--memory`, or `` `sandbox.memory` in FILE ``).
pub fn core_config(
    settings: &Settings,
    mount_anyway: bool,
    project_name: &str,
    name: &dyn Fn(&str) -> String,
) -> anyhow::Result<Config> {
    let model = settings
        .model
        .clone()
        .unwrap_or_else(|| DEFAULT_MODEL.into());
    let provider = settings.provider.unwrap_or_else(|| provider_for(&model));
    let default_base = match provider {
        ProviderKind::OpenAi => "https://api.openai.com/v1",
        ProviderKind::Anthropic => "https://api.anthropic.com",
    };
    let base = settings
        .api_base
        .clone()
        .unwrap_or_else(|| default_base.into());
    let key = settings.api_key.clone().filter(|k| !k.is_empty());
    let mut endpoint = match provider {
        ProviderKind::OpenAi => Endpoint::openai(base, key),
        ProviderKind::Anthropic => Endpoint::anthropic(base, key),
    };
    endpoint.proxy = ["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|p| !p.is_empty()));
    endpoint.no_proxy = ["NO_PROXY", "no_proxy"]
        .iter()
        .find_map(|v| std::env::var(v).ok());
    if let Some(secs) = settings.idle_timeout {
        endpoint.idle_timeout = setup::seconds(secs).with_context(|| name("idle_timeout"))?;
    }
    if let Some(secs) = settings.reply_timeout {
        endpoint.reply_timeout = setup::seconds(secs).with_context(|| name("reply_timeout"))?;
    }
    let mut config = Config::new(model, endpoint);
    config.tool_mode = settings.tool_mode.unwrap_or_default();
    if settings.context_window == Some(0) {
        bail!("{}: must be at least 1 token", name("context_window"));
    }
    config.context_window = settings.context_window;
    if settings.max_tokens == Some(0) {
        bail!("{}: must be at least 1 token", name("max_tokens"));
    }
    config.max_tokens = settings.max_tokens;
    if let Some(t) = settings.temperature {
        // NaN fails the range test too.
        if !(0.0..=2.0).contains(&t) {
            bail!(
                "{}: must be a number from 0 to 2, got {t}",
                name("temperature")
            );
        }
    }
    config.temperature = settings.temperature;
    config.system_message = settings.system_message.clone();
    config.custom_instructions = settings.custom_instructions.clone();
    config.auto_run = settings.auto_run.unwrap_or(false);
    if let Some(n) = settings.max_output {
        // Kept in memory and sent with every later request: a bound whatever sets it.
        if n > MAX_OUTPUT {
            bail!(
                "{}: at most {MAX_OUTPUT} characters (more would not fit a model's context)",
                name("max_output")
            );
        }
        config.max_output = n.max(100);
    }
    if let Some(n) = settings.max_iterations {
        if n == 0 {
            bail!("{}: must be at least 1", name("max_iterations"));
        }
        config.max_iterations = n;
    }
    config.vision = settings.vision;
    let sandbox = settings.sandbox.clone().unwrap_or_default();
    // A declaration names its command after a `:`; a name has none.
    let (declarations, names): (Vec<String>, Vec<String>) = sandbox
        .languages
        .clone()
        .unwrap_or_default()
        .into_iter()
        .partition(|entry| entry.contains(':'));
    let args = SandboxArgs {
        r#unsafe: sandbox.unsafe_mode.unwrap_or(false),
        network: sandbox.network.unwrap_or(false),
        writable_root: sandbox.writable_root.unwrap_or(false),
        keep_capabilities: sandbox.keep_capabilities.unwrap_or(false),
        memory: sandbox.memory.as_ref().map(Limit::text),
        cpus: sandbox.cpus.as_ref().map(Limit::text),
        pids: sandbox.pids.as_ref().map(Limit::text),
        user: sandbox.user.clone(),
        timeout: sandbox.timeout,
        image: sandbox.image.clone(),
        base_image: sandbox.base_image.clone(),
        languages: names,
        define_language: declarations,
        verbose: settings.verbose.unwrap_or(false),
        workspace: sandbox.workspace.map(|w| w.name().to_string()),
        workspace_size: sandbox.workspace_size.as_ref().map(Limit::text),
        mount_anyway,
    };
    config.sandbox = setup::config_from_named(&args, name)?;
    config.sandbox.project = project_image(&sandbox, project_name);
    Ok(config)
}
