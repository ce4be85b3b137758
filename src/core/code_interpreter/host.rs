//! The unsandboxed backend (`--unsafe`): the same runner, started as a local child
//! process. Same protocol, same behaviour, and no isolation whatsoever: code can read
//! and change everything the user can. Front ends must label it loudly.

use std::path::Path;
use std::process::Stdio;

use futures::StreamExt;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};
use tokio_util::io::ReaderStream;

use super::connection::{Diagnostics, Transport};
use super::error::{Result, SandboxError};
use super::image::runner_files;
use super::settings::SandboxConfig;

/// Unpacks the runner into `scratch` and starts it.
pub(crate) async fn start_runner(config: &SandboxConfig) -> Result<(Child, Transport)> {
    let scratch = config
        .host_scratch_dir
        .as_deref()
        .ok_or_else(|| SandboxError::StartFailed {
            reason: "no scratch directory was configured for the host runner".into(),
            diagnostics: String::new(),
        })?;
    let dir = unpack(scratch).await?;
    let mut command = Command::new(&config.host_python);
    command
        .arg("-u")
        .arg(dir.join("runner.py"))
        // On the user's own machine: no sandbox filter, the system's interpreters.
        .arg("--host")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(workdir) = &config.host_workdir {
        command.current_dir(workdir);
    }
    let mut child = command.spawn().map_err(|e| SandboxError::StartFailed {
        reason: format!(
            "could not start `{}` for the host runner: {e}",
            config.host_python
        ),
        diagnostics: String::new(),
    })?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let stdin = child.stdin.take().expect("stdin is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let diagnostics = Diagnostics::default();
    let sink = diagnostics.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf).await {
            if n == 0 {
                break;
            }
            sink.push(&buf[..n]);
        }
    });
    let transport = Transport {
        output: ReaderStream::with_capacity(stdout, 64 * 1024).boxed(),
        input: Box::pin(stdin),
        diagnostics,
    };
    Ok((child, transport))
}

/// Writes the runner's files into a folder named after their hash, once.
async fn unpack(scratch: &Path) -> Result<std::path::PathBuf> {
    let hash = super::image::recipe_hash("host");
    let dir = scratch.join(format!("runner-{hash}"));
    if dir.join("runner.py").exists() {
        return Ok(dir);
    }
    let staging = scratch.join(format!("runner-{hash}.{}", std::process::id()));
    tokio::fs::create_dir_all(&staging)
        .await
        .map_err(SandboxError::io(format!("creating {}", staging.display())))?;
    for (name, data) in runner_files() {
        let path = staging.join(name);
        tokio::fs::write(&path, data)
            .await
            .map_err(SandboxError::io(format!("writing {}", path.display())))?;
    }
    // Another oi may have unpacked the same files meanwhile: either copy will do.
    if tokio::fs::rename(&staging, &dir).await.is_err() {
        let _ = tokio::fs::remove_dir_all(&staging).await;
    }
    Ok(dir)
}
