//! Which project files the user trusts, and what an untrusted one may not set.
//!
//! A project's `oi.toml` comes with the working tree: a cloned repository's is written
//! by whoever wrote the repository, and sandboxed code can write one into a mounted
//! workspace. So it may tighten the sandbox and tune the model, but settings that
//! loosen the sandbox, run code without asking, run builds with network access, or
//! send the user's key elsewhere apply only once the user has trusted the file with
//! `oi trust` (the direnv model): the store records the file's path and the SHA-256
//! of its content, so a file that changes is untrusted again.
//!
//! The store is `trust.toml` in oi's config directory, the user's own. Reading the
//! project file itself (bounded, ownership checked) is [`read_project`]'s job; merging
//! settings is `config.rs`'s.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The largest project file oi reads: settings are a few lines; anything bigger is not
/// an `oi.toml` a person wrote (or is a link to something endless).
const MAX_PROJECT_FILE: u64 = 1 << 20;

/// A project file as read: its text and the hash that trust is recorded under.
#[derive(Debug, Clone)]
pub struct ProjectFile {
    pub path: PathBuf,
    pub text: String,
    pub sha256: String,
}

/// Reads a project file, or says why it is not used: owned by another user (or
/// writable by anyone), not a regular file, too large, not UTF-8.
pub fn read_project(path: &Path) -> anyhow::Result<Result<ProjectFile, String>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    // Non-blocking: a name swapped for a FIFO must not hang oi at start (the check
    // below then refuses anything but a regular file).
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
    {
        Ok(file) => file,
        Err(err) => return Ok(Err(format!("cannot read it: {err}"))),
    };
    // Checked on the open file, so that what is checked is what is read.
    let meta = file
        .metadata()
        .with_context(|| format!("reading {}", path.display()))?;
    if !meta.is_file() {
        return Ok(Err("it is not a regular file".into()));
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Ok(Err(format!(
            "it belongs to another user (uid {}); oi reads project files of the user running it only",
            meta.uid()
        )));
    }
    if meta.mode() & 0o002 != 0 {
        return Ok(Err(
            "anyone on this machine can write to it (chmod o-w to use it)".into(),
        ));
    }
    let mut bytes = Vec::new();
    file.take(MAX_PROJECT_FILE + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    if bytes.len() as u64 > MAX_PROJECT_FILE {
        return Ok(Err(format!(
            "it is larger than {} KiB",
            MAX_PROJECT_FILE >> 10
        )));
    }
    let sha256 = hex(&Sha256::digest(&bytes));
    let text =
        String::from_utf8(bytes).map_err(|_| anyhow!("{}: not UTF-8 text", path.display()))?;
    Ok(Ok(ProjectFile {
        path: path.to_path_buf(),
        text,
        sha256,
    }))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One trusted file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub path: PathBuf,
    pub sha256: String,
    /// For a file that builds a project image: the build's fingerprint when trusted
    /// (the Dockerfile's folder and the packages), since a build runs what they say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<String>,
}

/// The user's trusted project files.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Store {
    #[serde(default, rename = "trusted")]
    pub entries: Vec<Entry>,
}

impl Store {
    /// `trust.toml` beside the user's `config.toml`.
    pub fn file(config_file: &Path) -> PathBuf {
        config_file.with_file_name("trust.toml")
    }

    /// The store, empty when there is none yet.
    pub fn load(config_file: &Path) -> anyhow::Result<Store> {
        let path = Store::file(config_file);
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| anyhow!("{}: {e}", path.display())),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Store::default()),
            Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// The record of this exact content of this file, if it is trusted.
    pub fn trusted(&self, file: &ProjectFile) -> Option<&Entry> {
        self.entries
            .iter()
            .find(|e| e.path == file.path && e.sha256 == file.sha256)
    }

    /// Whether the file was trusted with other content (it changed since).
    pub fn trusted_before(&self, file: &ProjectFile) -> bool {
        self.entries
            .iter()
            .any(|e| e.path == file.path && e.sha256 != file.sha256)
    }

    /// Records the file's current content (and its build's fingerprint, if it builds
    /// an image) as trusted, replacing an older record.
    pub fn trust(&mut self, file: &ProjectFile, build: Option<String>) {
        self.revoke(&file.path);
        self.entries.push(Entry {
            path: file.path.clone(),
            sha256: file.sha256.clone(),
            build,
        });
    }

    /// Forgets a file; whether it was there.
    pub fn revoke(&mut self, path: &Path) -> bool {
        let before = self.entries.len();
        self.entries.retain(|e| e.path != path);
        self.entries.len() != before
    }

    /// Writes the store (readable by the user only), replacing it whole.
    pub fn save(&self, config_file: &Path) -> anyhow::Result<()> {
        use std::io::Write;
        let path = Store::file(config_file);
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let text = format!(
            "# Project files trusted with `oi trust`: their settings apply in full while their\n\
             # content is unchanged. Remove an entry (or `oi trust --revoke FILE`) to stop.\n\n{}",
            toml::to_string(self).context("writing the trust store")?
        );
        // A new file beside the old one, renamed over it: never half a store.
        let mut tmp = tempfile::Builder::new()
            .prefix(".trust.toml.")
            .tempfile_in(dir)
            .with_context(|| format!("writing in {}", dir.display()))?;
        tmp.write_all(text.as_bytes())
            .and_then(|_| tmp.as_file().sync_all())
            .with_context(|| format!("writing {}", tmp.path().display()))?;
        tmp.persist(&path)
            .map(|_| ())
            .with_context(|| format!("replacing {}", path.display()))
    }
}

/// The path trust is recorded under: absolute, through the real folder (the user's own
/// links followed), the file name kept.
pub fn canonical(path: &Path) -> anyhow::Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| anyhow!("{} is not a file", path.display()))?;
    let parent = match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => parent.to_path_buf(),
        None => PathBuf::from("."),
    };
    let dir = parent
        .canonicalize()
        .with_context(|| format!("finding {}", parent.display()))?;
    Ok(dir.join(name))
}

/// Values an untrusted file's settings are compared with: what the layers below it
/// (oi's defaults, the user's config and profile) make effective.
pub trait Below {
    /// The value of `key` (`model`, `sandbox.memory`) below the project file, if set.
    fn below(&self, key: &str) -> Option<&toml::Value>;
}

/// Whether an untrusted project file setting `key` to `value` would loosen safety or
/// move secrets. Keys are the merged names (`api_base`, `sandbox.network`). Unknown
/// keys are not judged here (the schema refuses them).
pub fn loosens(key: &str, value: &toml::Value, below: &dyn Below) -> bool {
    let on = |v: &toml::Value| v.as_bool().unwrap_or(true);
    match key {
        // Where the key goes, and which key goes.
        "api_base" | "api_key" | "provider" => true,
        // Code that runs without the user seeing it first.
        "auto_run" => on(value),
        "sandbox.unsafe"
        | "sandbox.network"
        | "sandbox.writable_root"
        | "sandbox.keep_capabilities" => on(value),
        // Any user id, root included.
        "sandbox.user" => true,
        // Image builds run steps with network access: a Dockerfile's, a package's
        // install scripts, a base image's ONBUILD.
        "sandbox.dockerfile"
        | "sandbox.apt_packages"
        | "sandbox.pip_packages"
        | "sandbox.base_image" => true,
        // The image is where the runner and its guards come from: an older oi image
        // still on the machine, or any other, may not have them.
        "sandbox.image" => true,
        // A declared language's command runs every block of it, and is never shown
        // with the code it runs (with --unsafe, on this machine). Naming built-ins
        // only offers fewer languages, unless it offers one the user's choice left out.
        "sandbox.languages" => offers_more(value, below.below(key)),
        "sandbox.memory" | "sandbox.workspace_size" => {
            looser_limit(value, below.below(key), default_limit(key), size_of)
        }
        "sandbox.cpus" | "sandbox.pids" => {
            looser_limit(value, below.below(key), default_limit(key), number_of)
        }
        "sandbox.timeout" | "max_iterations" => {
            let limit = |v: Option<&toml::Value>| v.and_then(number);
            match (
                limit(Some(value)),
                limit(below.below(key)).or(default_number(key)),
            ) {
                (Some(new), Some(old)) => new > old,
                _ => false,
            }
        }
        "sandbox.workspace" => {
            let rank = |v: Option<&toml::Value>| match v.and_then(|v| v.as_str()) {
                Some("none") => 0,
                Some("copy") | Some("ro") => 1,
                _ => 2, // rw, the default
            };
            rank(Some(value)) > rank(below.below(key))
        }
        _ => false,
    }
}

/// Whether a `languages` list declares a language, or names a built-in that the list
/// below it (oi's default: every built-in) does not offer.
fn offers_more(value: &toml::Value, below: Option<&toml::Value>) -> bool {
    let Some(entries) = value.as_array() else {
        // An unreadable value is left for the schema to report with its file and key.
        return false;
    };
    let builtins = crate::core::code_interpreter::Languages::default();
    let canonical = |entry: &toml::Value| {
        entry
            .as_str()
            .and_then(|name| builtins.resolve(name).ok())
            .map(|l| l.name.clone())
    };
    // What the list below offers of the built-ins: the ones it names, or all of them
    // when it names none.
    let below_names: Vec<String> = below
        .and_then(|b| b.as_array())
        .map(|b| b.iter().filter_map(canonical).collect())
        .unwrap_or_default();
    entries.iter().any(|entry| match entry.as_str() {
        Some(text) if text.contains(':') => true,
        Some(_) => canonical(entry)
            .is_some_and(|name| !below_names.is_empty() && !below_names.contains(&name)),
        None => false,
    })
}

/// oi's default for a limit, in the same units `size_of`/`number_of` give.
fn default_limit(key: &str) -> Option<f64> {
    let h = crate::core::code_interpreter::Hardening::default();
    match key {
        "sandbox.memory" => h.memory_bytes.map(|b| b as f64),
        "sandbox.workspace_size" => Some(h.workspace_bytes as f64),
        "sandbox.cpus" => h.cpus,
        "sandbox.pids" => h.pids_limit.map(|p| p as f64),
        _ => None,
    }
}

fn default_number(key: &str) -> Option<f64> {
    match key {
        "max_iterations" => Some(30.0),
        _ => None, // no block timeout by default: any timeout tightens
    }
}

/// Whether `value` is a looser limit than the one below it (`None` is unlimited).
fn looser_limit(
    value: &toml::Value,
    below: Option<&toml::Value>,
    default: Option<f64>,
    parse: fn(&toml::Value) -> Option<Option<f64>>,
) -> bool {
    let old = match below {
        Some(v) => match parse(v) {
            Some(limit) => limit,
            None => return false,
        },
        None => default,
    };
    match (parse(value), old) {
        // An unreadable value is left for the schema to report with its file and key.
        (None, _) => false,
        (Some(None), Some(_)) => true,
        (Some(None), None) => false,
        (Some(Some(_)), None) => false,
        (Some(Some(new)), Some(old)) => new > old,
    }
}

fn is_unlimited(text: &str) -> bool {
    matches!(
        text.trim().to_ascii_lowercase().as_str(),
        "none" | "unlimited" | "0"
    )
}

/// A size limit: `Some(None)` unlimited, `Some(Some(bytes))`, `None` unreadable.
fn size_of(value: &toml::Value) -> Option<Option<f64>> {
    match value {
        toml::Value::String(s) if is_unlimited(s) => Some(None),
        toml::Value::String(s) => super::setup::parse_size(s).ok().map(|b| Some(b as f64)),
        other => number(other).map(|n| (n != 0.0).then_some(n)),
    }
}

/// A count limit: `Some(None)` unlimited, `Some(Some(n))`, `None` unreadable.
fn number_of(value: &toml::Value) -> Option<Option<f64>> {
    match value {
        toml::Value::String(s) if is_unlimited(s) => Some(None),
        toml::Value::String(s) => s.trim().parse::<f64>().ok().map(Some),
        other => number(other).map(|n| (n != 0.0).then_some(n)),
    }
}

fn number(value: &toml::Value) -> Option<f64> {
    match value {
        toml::Value::Integer(i) => Some(*i as f64),
        toml::Value::Float(f) => Some(*f),
        _ => None,
    }
}

/// `oi trust`.
pub fn run(file: Option<PathBuf>, revoke: bool, list: bool) -> Result<u8, super::Failure> {
    let paths = super::config::Paths::from_env();
    let text = command(&paths.config_file, file, revoke, list).map_err(super::Failure::usage)?;
    println!(
        "{}",
        super::sanitize::visible(&text, super::sanitize::Kind::Prose)
    );
    Ok(0)
}

/// Trusts, revokes or lists project files; returns what to tell the user.
pub fn command(
    config_file: &Path,
    file: Option<PathBuf>,
    revoke: bool,
    list: bool,
) -> anyhow::Result<String> {
    let mut store = Store::load(config_file)?;
    if list {
        if store.entries.is_empty() {
            return Ok("No trusted project files.".into());
        }
        let mut out = String::new();
        for entry in &store.entries {
            let state = match read_project(&entry.path) {
                Ok(Ok(file)) if file.sha256 == entry.sha256 && entry.build.is_some() => {
                    "trusted, with the image build it names"
                }
                Ok(Ok(file)) if file.sha256 == entry.sha256 => "trusted",
                Ok(Ok(_)) => "changed since: not trusted",
                _ => "missing or unreadable",
            };
            out.push_str(&format!("{}  ({state})\n", entry.path.display()));
        }
        return Ok(out.trim_end().to_string());
    }
    let path = match file {
        Some(file) => canonical(&file)?,
        None => {
            let cwd = std::env::current_dir().context("reading the current directory")?;
            super::config::find_project_file(&cwd).ok_or_else(|| {
                anyhow!("no oi.toml here or in a folder above; name the file: oi trust PATH")
            })?
        }
    };
    if revoke {
        let was = store.revoke(&path);
        store.save(config_file)?;
        return Ok(if was {
            format!("{} is no longer trusted.", path.display())
        } else {
            format!("{} was not trusted.", path.display())
        });
    }
    let project = match read_project(&path)? {
        Ok(project) => project,
        Err(why) => bail!("{} cannot be trusted: {why}", path.display()),
    };
    let table = super::config::parse_project(&project.text, &path)?;
    let loosening = super::config::loosening_settings(&table);
    let build = super::config::build_fingerprint(&table)?;
    store.trust(&project, build);
    store.save(config_file)?;
    let mut out = format!(
        "Trusted {} (sha256 {}): all its settings apply from now on.",
        path.display(),
        &project.sha256[..12]
    );
    if !loosening.is_empty() {
        out.push_str(&format!(
            "\nSettings that only a trusted file may make: {}.",
            loosening.join(", ")
        ));
    }
    out.push_str(
        "\nIf the file changes (or, for its image, the build folder), oi ignores those settings \
         again until you trust it again.",
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Defaults;
    impl Below for Defaults {
        fn below(&self, _: &str) -> Option<&toml::Value> {
            None
        }
    }

    fn v(text: &str) -> toml::Value {
        toml::from_str::<toml::Table>(&format!("x = {text}")).unwrap()["x"].clone()
    }

    #[test]
    fn loosening_settings_are_recognised_and_tightening_ones_are_not() {
        for (key, value) in [
            ("api_base", "\"http://127.0.0.1:1/v1\""),
            ("api_key", "\"sk-x\""),
            ("provider", "\"anthropic\""),
            ("auto_run", "true"),
            ("sandbox.unsafe", "true"),
            ("sandbox.network", "true"),
            ("sandbox.writable_root", "true"),
            ("sandbox.keep_capabilities", "true"),
            ("sandbox.user", "\"0\""),
            ("sandbox.memory", "\"none\""),
            ("sandbox.memory", "\"64g\""),
            ("sandbox.cpus", "\"none\""),
            ("sandbox.cpus", "8"),
            ("sandbox.pids", "0"),
            ("sandbox.workspace_size", "\"8g\""),
            ("sandbox.dockerfile", "\"Dockerfile\""),
            ("sandbox.pip_packages", "[\"x\"]"),
            ("sandbox.image", "\"oi-sandbox:old\""),
            ("sandbox.languages", "[\"node:js:node {file}\"]"),
            ("max_iterations", "1000"),
        ] {
            assert!(loosens(key, &v(value), &Defaults), "{key} = {value}");
        }
        for (key, value) in [
            ("model", "\"gpt-4o\""),
            ("auto_run", "false"),
            ("sandbox.unsafe", "false"),
            ("sandbox.network", "false"),
            ("sandbox.memory", "\"512m\""),
            ("sandbox.cpus", "0.5"),
            ("sandbox.pids", "64"),
            ("sandbox.timeout", "30"),
            ("sandbox.workspace", "\"ro\""),
            ("sandbox.workspace", "\"none\""),
            ("sandbox.languages", "[\"python\"]"),
            ("sandbox.languages", "[\"py\", \"bash\"]"),
            ("max_iterations", "5"),
        ] {
            assert!(!loosens(key, &v(value), &Defaults), "{key} = {value}");
        }
    }

    #[test]
    fn a_limit_is_judged_against_what_the_user_set() {
        struct User(toml::Value);
        impl Below for User {
            fn below(&self, _: &str) -> Option<&toml::Value> {
                Some(&self.0)
            }
        }
        // The user allows 8g: a project asking for 4g tightens that.
        assert!(!loosens("sandbox.memory", &v("\"4g\""), &User(v("\"8g\""))));
        assert!(loosens("sandbox.memory", &v("\"16g\""), &User(v("\"8g\""))));
        // The user made it unlimited: nothing a project says loosens it.
        assert!(!loosens(
            "sandbox.pids",
            &v("\"none\""),
            &User(v("\"none\""))
        ));
        assert!(loosens(
            "sandbox.workspace",
            &v("\"rw\""),
            &User(v("\"ro\""))
        ));
        assert!(loosens("sandbox.timeout", &v("600"), &User(v("60"))));
        // The user offers Python only: a project may not offer the shell back.
        let python = || User(v("[\"python\"]"));
        assert!(!loosens("sandbox.languages", &v("[\"py\"]"), &python()));
        assert!(loosens("sandbox.languages", &v("[\"bash\"]"), &python()));
        assert!(loosens(
            "sandbox.languages",
            &v("[\"python\", \"perl:pl:perl {file}\"]"),
            &python()
        ));
        // The user only declared a language: every built-in is still offered.
        let declared = User(v("[\"node:js:node {file}\"]"));
        assert!(!loosens("sandbox.languages", &v("[\"shell\"]"), &declared));
    }
}
