//! Turns flags and the environment into core's [`SandboxConfig`], and prepares an
//! engine the way every command wants it: connected, image present (built with a
//! progress display when missing), containers of dead oi processes swept.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};

use super::cli::SandboxArgs;
use super::progress::BuildDisplay;
use super::Failure;
use crate::core::code_interpreter::{Backend, Engine, Language, SandboxConfig};

/// The configuration the flags describe.
pub fn config_from(args: &SandboxArgs) -> anyhow::Result<SandboxConfig> {
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
        h.memory_bytes = parse_limit(memory, parse_size).context("--memory")?;
    }
    if let Some(cpus) = &args.cpus {
        h.cpus = parse_limit(cpus, |s| {
            let n: f64 = s
                .parse()
                .map_err(|_| anyhow!("`{s}` is not a number of cores"))?;
            if n <= 0.0 {
                bail!("the CPU limit must be above 0");
            }
            Ok(n)
        })
        .context("--cpus")?;
    }
    if let Some(pids) = &args.pids {
        h.pids_limit = parse_limit(pids, |s| {
            let n: i64 = s.parse().map_err(|_| anyhow!("`{s}` is not a number"))?;
            if n < 16 {
                bail!("the process limit must be at least 16");
            }
            Ok(n)
        })
        .context("--pids")?;
    }
    if let Some(user) = &args.user {
        if user.is_empty() || user.split(':').any(|p| p.parse::<u32>().is_err()) {
            bail!("--user: expected UID or UID:GID in numbers, got `{user}`");
        }
        h.user = if user.contains(':') {
            user.clone()
        } else {
            format!("{user}:{user}")
        };
    }
    if let Some(secs) = args.timeout {
        if !(secs > 0.0 && secs.is_finite()) {
            bail!("--timeout: expected a positive number of seconds");
        }
        config.default_timeout = Some(Duration::from_secs_f64(secs));
    }
    for definition in &args.define_language {
        config.languages.add(parse_language(definition)?);
    }
    if config.backend == Backend::Host {
        let cwd = std::env::current_dir().context("reading the current directory")?;
        config.host_workdir = Some(cwd);
        config.host_scratch_dir = Some(cache_dir());
    }
    Ok(config)
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
    let bytes = (n * factor) as i64;
    if bytes < 16 << 20 {
        bail!("`{text}` is below the 16 MiB a sandbox needs");
    }
    Ok(bytes)
}

/// `NAME:EXTENSION:COMMAND` → a file-run language.
pub fn parse_language(definition: &str) -> anyhow::Result<Language> {
    let mut parts = definition.splitn(3, ':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(name), Some(ext), Some(command)) if !name.is_empty() && !command.trim().is_empty() => {
            Ok(Language::file(name.trim(), ext.trim().trim_start_matches('.'), command.trim()))
        }
        _ => bail!("--define-language: expected NAME:EXTENSION:COMMAND (e.g. 'node:js:node {{file}}'), got `{definition}`"),
    }
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
    fn bad_flags_are_clear_errors() {
        let args = SandboxArgs {
            user: Some("root".into()),
            ..SandboxArgs::default()
        };
        assert!(format!("{:#}", config_from(&args).unwrap_err()).contains("--user"));
        assert!(parse_language("node").is_err());
    }
}
