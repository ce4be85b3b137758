//! Turns flags and the environment into core's [`SandboxConfig`], and prepares an
//! engine the way every command wants it: connected, image present (built with a
//! progress display when missing), containers of dead oi processes swept.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};

use super::cli::SandboxArgs;
use super::progress::BuildDisplay;
use super::Failure;
use crate::core::code_interpreter::{
    Backend, Engine, Hardening, Language, Languages, SandboxConfig, SandboxError, Workspace,
};

/// The configuration the flags describe.
pub fn config_from(args: &SandboxArgs) -> anyhow::Result<SandboxConfig> {
    config_from_named(args, &flag_name)
}

/// The flag that sets a setting (`sandbox.memory` → `--memory`).
pub fn flag_name(key: &str) -> String {
    let flag = match key {
        // Two flags make this one setting.
        "sandbox.languages" => return "--languages or --define-language".into(),
        other => other.trim_start_matches("sandbox."),
    };
    format!("--{}", flag.replace('_', "-"))
}

/// The configuration `args` describe, where they came from flags or files: `name`
/// says how an error names a setting (`--memory`, or `` `sandbox.memory` in FILE ``).
pub fn config_from_named(
    args: &SandboxArgs,
    name: &dyn Fn(&str) -> String,
) -> anyhow::Result<SandboxConfig> {
    let mut config = SandboxConfig {
        backend: if args.r#unsafe {
            Backend::Host
        } else {
            Backend::Docker
        },
        docker_host: std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()),
        image: args.image.clone(),
        base_image: args.base_image.clone().filter(|b| !b.is_empty()),
        ..SandboxConfig::default()
    };
    let h = &mut config.hardening;
    h.network = args.network;
    h.read_only_root = !args.writable_root;
    h.drop_capabilities = !args.keep_capabilities;
    if let Some(memory) = &args.memory {
        h.memory_bytes = parse_limit(memory, parse_size).with_context(|| name("sandbox.memory"))?;
    }
    if let Some(cpus) = &args.cpus {
        h.cpus = parse_limit(cpus, parse_cpus).with_context(|| name("sandbox.cpus"))?;
    }
    if let Some(pids) = &args.pids {
        h.pids_limit = parse_limit(pids, parse_pids).with_context(|| name("sandbox.pids"))?;
    }
    if let Some(size) = &args.workspace_size {
        // Always bounded: a private workspace lives in memory.
        h.workspace_bytes = parse_size(size).with_context(|| name("sandbox.workspace_size"))?;
    }
    if let Some(user) = &args.user {
        if user.is_empty()
            || user.split(':').any(|p| p.parse::<u32>().is_err())
            || user.split(':').count() > 2
        {
            bail!(
                "{}: expected UID or UID:GID in numbers, got `{user}`",
                name("sandbox.user")
            );
        }
        h.user = if user.contains(':') {
            user.clone()
        } else {
            format!("{user}:{user}")
        };
    }
    if let Some(secs) = args.timeout {
        config.default_timeout = Some(seconds(secs).with_context(|| name("sandbox.timeout"))?);
    }
    config.languages = languages(args).with_context(|| name("sandbox.languages"))?;
    let cwd = std::env::current_dir().context("reading the current directory")?;
    if config.backend == Backend::Host {
        config.host.workdir = Some(cwd.clone());
        config.host.scratch_dir = Some(cache_dir());
    }
    config.workspace = workspace(args, &cwd)?;
    if args.user.is_none() {
        config.hardening.user = sandbox_user(&config.workspace);
    }
    config.workspace_notice = workspace_notice(&config);
    Ok(config)
}

/// The longest duration oi accepts for a timeout: longer is "never" in practice, and
/// bounding it keeps every deadline computable (`Instant + Duration` cannot overflow).
pub const MAX_SECONDS: f64 = 30.0 * 24.0 * 3600.0;

/// A number of seconds from a flag or a file: positive, finite, at most 30 days.
pub fn seconds(secs: f64) -> anyhow::Result<Duration> {
    if !(secs.is_finite() && secs > 0.0) {
        bail!("expected a positive number of seconds, got {secs}");
    }
    if secs > MAX_SECONDS {
        bail!("{secs:e} seconds is more than the 30 days ({MAX_SECONDS} s) oi allows");
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_cpus(text: &str) -> anyhow::Result<f64> {
    let n: f64 = text
        .parse()
        .map_err(|_| anyhow!("`{text}` is not a number of cores"))?;
    // NaN compares false with everything: test for what is accepted, not what is not.
    if !(n.is_finite() && (0.01..=1024.0).contains(&n)) {
        bail!("the CPU limit must be a number of cores from 0.01 to 1024, got `{text}`");
    }
    Ok(n)
}

/// The kernel's own ceiling for pids (`pid_max` cannot exceed 2^22).
const MAX_PIDS: i64 = 1 << 22;

fn parse_pids(text: &str) -> anyhow::Result<i64> {
    let n: i64 = text
        .parse()
        .map_err(|_| anyhow!("`{text}` is not a whole number"))?;
    if !(16..=MAX_PIDS).contains(&n) {
        bail!("the process limit must be from 16 to {MAX_PIDS}, got {n}");
    }
    Ok(n)
}

/// The effective isolation as aligned lines (`pids limit         512`), each setting that
/// differs from safe mode marked `(loosened)`: what `oi sandbox settings`, `oi exec -v`
/// and `%info` show.
pub fn settings_lines(hardening: &Hardening) -> Vec<String> {
    hardening
        .describe()
        .into_iter()
        .map(|setting| {
            let mark = if setting.safe_default {
                ""
            } else {
                "  (loosened)"
            };
            format!("{:<18} {}{mark}", setting.name, setting.value)
        })
        .collect()
}

/// The workspace the flags ask for, refusing folders that would expose the machine.
pub fn workspace(args: &SandboxArgs, cwd: &Path) -> anyhow::Result<Workspace> {
    let dir = cwd.to_path_buf();
    let mode = args.workspace.as_deref().unwrap_or("rw");
    if mode == "none" {
        return Ok(Workspace::Empty);
    }
    if !args.mount_anyway {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let docker_socket = ["/var/run/docker.sock", "/run/docker.sock"]
            .into_iter()
            .map(PathBuf::from)
            .chain(
                std::env::var("DOCKER_HOST")
                    .ok()
                    .and_then(|h| h.strip_prefix("unix://").map(PathBuf::from)),
            )
            .find(|socket| socket.starts_with(&dir));
        let why = if dir == Path::new("/") {
            Some("it is the root of this machine".to_string())
        } else if home.as_deref() == Some(dir.as_path()) {
            Some("it is your whole home folder".to_string())
        } else {
            docker_socket.map(|s| format!("it holds the Docker socket ({}), which would give the sandbox control of Docker", s.display()))
        };
        if let Some(why) = why {
            bail!(
                "refusing to give the sandbox {} ({mode}): {why}.\n\
                 Run oi from a project folder, use --workspace none, or pass --mount-anyway.",
                dir.display()
            );
        }
    }
    Ok(match mode {
        "ro" => Workspace::ReadOnly(dir),
        "copy" => Workspace::Copy(dir),
        _ => Workspace::ReadWrite(dir),
    })
}

/// Who code runs as: the invoking user on a mounted folder, so that what it writes is
/// theirs; the image's unprivileged user (1000) otherwise, and always instead of root.
pub fn sandbox_user(workspace: &Workspace) -> String {
    let me = std::fs::metadata("/proc/self").map(|m| (m.uid(), m.gid()));
    match (workspace, me) {
        (Workspace::ReadWrite(_) | Workspace::ReadOnly(_), Ok((uid, gid))) if uid != 0 => {
            format!("{uid}:{gid}")
        }
        _ => "1000:1000".into(),
    }
}

/// What the user and the model are told when the sandbox cannot write to a mounted
/// folder (oi run as root, the folder owned by someone else).
fn workspace_notice(config: &SandboxConfig) -> Option<String> {
    let Workspace::ReadWrite(dir) = &config.workspace else {
        return None;
    };
    if config.backend != Backend::Docker {
        return None;
    }
    let (uid, gid) = config.hardening.user.split_once(':')?;
    let (uid, gid): (u32, u32) = (uid.parse().ok()?, gid.parse().ok()?);
    let meta = std::fs::metadata(dir).ok()?;
    let mode = meta.mode();
    let writable = if meta.uid() == uid {
        mode & 0o200 != 0
    } else if meta.gid() == gid {
        mode & 0o020 != 0
    } else {
        mode & 0o002 != 0
    };
    (!writable).then(|| {
        format!(
            "the sandbox user ({uid}:{gid}) cannot write to {} (owned by {}:{}): code can read \
             the files but not change them. Use --workspace copy to work on a copy, or run oi \
             as the folder's owner.",
            dir.display(),
            meta.uid(),
            meta.gid()
        )
    })
}

/// `$XDG_CACHE_HOME/oi`, else `~/.cache/oi`, else the temp dir.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("oi");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(home).join(".cache").join("oi");
    }
    std::env::temp_dir().join("oi")
}

fn parse_limit<T>(
    value: &str,
    parse: impl Fn(&str) -> anyhow::Result<T>,
) -> anyhow::Result<Option<T>> {
    match value.trim().to_ascii_lowercase().as_str() {
        "none" | "unlimited" | "0" => Ok(None),
        v => parse(v).map(Some),
    }
}

/// `512m`, `2g`, `1.5G`, `1048576` → bytes.
pub fn parse_size(text: &str) -> anyhow::Result<i64> {
    let t = text.trim().to_ascii_lowercase();
    let t = t.trim_end_matches('b').trim_end_matches('i');
    let (number, unit) = match t.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => t.split_at(i),
        None => (t, ""),
    };
    let factor: f64 = match unit {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        "t" => 1024.0f64.powi(4),
        _ => bail!("`{text}`: unknown unit (use k, m, g)"),
    };
    let n: f64 = number
        .parse()
        .map_err(|_| anyhow!("`{text}` is not a size like 512m or 2g"))?;
    let bytes = n * factor;
    // NaN and infinities fail the range test (a saturating cast would make them 0 or
    // "limited" to 8 EiB).
    if !(bytes.is_finite() && bytes >= 0.0) {
        bail!("`{text}` is not a size like 512m or 2g");
    }
    if bytes < (16 << 20) as f64 {
        bail!("`{text}` is below the 16 MiB a sandbox needs");
    }
    if bytes > (1u64 << 50) as f64 {
        bail!("`{text}` is more than the 1 PiB oi accepts");
    }
    Ok(bytes as i64)
}

/// The languages offered: the names chosen (`--languages`, the names in `[sandbox]
/// languages`) and every declared language ([`Languages::choose`]).
pub fn languages(args: &SandboxArgs) -> anyhow::Result<Languages> {
    let declared = args
        .define_language
        .iter()
        .map(|d| parse_language(d))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Languages::choose(&args.languages, declared).map_err(|err| match err {
        SandboxError::UnknownLanguage { name, available } => anyhow!(
            "`{name}` is not a language oi has: name one of {} (or an alias such as py, bash), \
             or declare it as NAME:EXTENSION:COMMAND",
            available.join(", ")
        ),
        err => err.into(),
    })
}

/// `NAME:EXTENSION:COMMAND` → a file-run language. The name may not be a built-in
/// language or alias (the runner's Python and shell are not replaced by a command);
/// the extension is letters and digits (it becomes part of a file name in the sandbox);
/// the command names the file with `{file}`.
pub fn parse_language(definition: &str) -> anyhow::Result<Language> {
    let mut parts = definition.splitn(3, ':');
    let (Some(name), Some(ext), Some(command)) = (parts.next(), parts.next(), parts.next()) else {
        bail!("expected NAME:EXTENSION:COMMAND (e.g. 'node:js:node {{file}}'), got `{definition}`");
    };
    let (name, given_ext, command) = (name.trim(), ext.trim(), command.trim());
    let ext = given_ext.strip_prefix('.').unwrap_or(given_ext);
    let word = |s: &str, extra: &str| {
        !s.is_empty()
            && s.len() <= 32
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || extra.contains(c))
    };
    if !word(name, "_+-") {
        bail!("the language name `{name}` must be letters, digits, `_`, `+` or `-` (at most 32)");
    }
    if !word(ext, "") || ext.len() > 16 {
        bail!("the extension `{given_ext}` must be letters and digits (at most 16), e.g. js");
    }
    if let Ok(builtin) = Languages::default().resolve(name) {
        bail!(
            "`{name}` is oi's built-in {} language and cannot be redefined; pick another name",
            builtin.name
        );
    }
    if !command.contains("{file}") {
        bail!("the command must name the block's file as {{file}}, e.g. 'node {{file}}', got `{command}`");
    }
    Ok(Language::file(name, ext, command))
}

/// A connected engine with its image ready; containers of dead oi processes are
/// removed along the way.
pub async fn engine(config: SandboxConfig, quiet: bool) -> Result<Engine, Failure> {
    let mut engine = Engine::connect(config).await?;
    if engine.config().backend == Backend::Host {
        return Ok(engine);
    }
    let sweeper = engine.clone();
    let sweep = tokio::spawn(async move { sweeper.sweep().await });
    let mut display = BuildDisplay::new(quiet);
    engine
        .ensure_image(false, &mut |p| display.update(p))
        .await?;
    // A failed sweep must not stop the user's work; `oi sandbox prune` reports it.
    let _ = sweep.await;
    Ok(engine)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512m").unwrap(), 512 << 20);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("1.5g").unwrap(), 1536 << 20);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert!(parse_size("12x").is_err());
        assert!(parse_size("1k").is_err(), "too small for a sandbox");
    }

    #[test]
    fn loosening_flags_reach_the_config() {
        let args = SandboxArgs {
            network: true,
            memory: Some("none".into()),
            pids: Some("64".into()),
            define_language: vec!["node:js:node {file}".into()],
            ..SandboxArgs::default()
        };
        let config = config_from(&args).unwrap();
        assert!(config.hardening.network);
        assert_eq!(config.hardening.memory_bytes, None);
        assert_eq!(config.hardening.pids_limit, Some(64));
        assert_eq!(config.languages.resolve("node").unwrap().name, "node");
    }

    #[test]
    fn dangerous_folders_are_refused_unless_forced() {
        let args = SandboxArgs::default();
        for dir in ["/", "/var", "/run"] {
            let err = workspace(&args, Path::new(dir)).unwrap_err().to_string();
            assert!(err.contains("--mount-anyway"), "{dir}: {err}");
        }
        if let Some(home) = std::env::var_os("HOME").filter(|h| h != "/") {
            let err = workspace(&args, Path::new(&home)).unwrap_err().to_string();
            assert!(err.contains("home folder"), "{err}");
        }
        let forced = SandboxArgs {
            mount_anyway: true,
            ..SandboxArgs::default()
        };
        assert_eq!(
            workspace(&forced, Path::new("/")).unwrap(),
            Workspace::ReadWrite("/".into())
        );
        let none = SandboxArgs {
            workspace: Some("none".into()),
            ..SandboxArgs::default()
        };
        assert_eq!(workspace(&none, Path::new("/")).unwrap(), Workspace::Empty);
        let copy = SandboxArgs {
            workspace: Some("copy".into()),
            ..SandboxArgs::default()
        };
        assert_eq!(
            workspace(&copy, Path::new("/srv/project")).unwrap(),
            Workspace::Copy("/srv/project".into())
        );
    }

    #[test]
    fn code_never_runs_as_root() {
        // Tests run as root here or as a user: either way never uid 0.
        let user = sandbox_user(&Workspace::ReadWrite("/srv/p".into()));
        assert!(!user.starts_with("0:"), "{user}");
        assert_eq!(sandbox_user(&Workspace::Empty), "1000:1000");
    }

    #[test]
    fn the_languages_flag_limits_what_is_offered() {
        let args = SandboxArgs {
            languages: vec!["py".into(), "perl".into()],
            define_language: vec!["perl:pl:perl {file}".into(), "node:js:node {file}".into()],
            ..SandboxArgs::default()
        };
        assert_eq!(
            config_from(&args).unwrap().languages.names(),
            ["python", "perl", "node"]
        );
        let args = SandboxArgs {
            languages: vec!["cobol".into()],
            ..SandboxArgs::default()
        };
        let err = format!("{:#}", config_from(&args).unwrap_err());
        assert!(
            err.starts_with("--languages or --define-language: `cobol` is not a language oi has"),
            "{err}"
        );
    }

    #[test]
    fn bad_flags_are_clear_errors() {
        let args = SandboxArgs {
            user: Some("root".into()),
            ..SandboxArgs::default()
        };
        assert!(format!("{:#}", config_from(&args).unwrap_err()).contains("--user"));
        assert!(parse_language("node").is_err());
    }
}
