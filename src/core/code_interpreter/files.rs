//! Files into and out of a sandbox's workspace, through Docker's archive API (tar).
//!
//! In: the host file or folder is packed into a temporary tar file (so memory stays
//! bounded), its entries owned by the sandbox's user, and streamed to the container.
//! Out: the container's tar is streamed to a temporary file, then unpacked entry by
//! entry, refusing what could escape the destination: absolute paths, `..`, links that
//! point outside, hard links, devices. Paths on the sandbox side must stay inside
//! `/workspace`. Knows Docker and tar, not sessions.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};

use bollard::query_parameters::{DownloadFromContainerOptions, UploadToContainerOptions};
use bollard::Docker;
use futures::StreamExt;

use super::error::{Result, SandboxError};

/// Where the workspace is inside the sandbox.
pub const WORKSPACE: &str = "/workspace";

fn refused(message: String) -> SandboxError {
    SandboxError::Files { message }
}

fn io_error(what: &str) -> impl Fn(std::io::Error) -> SandboxError + '_ {
    move |e| refused(format!("{what}: {e}"))
}

/// A sandbox path resolved against `/workspace`; an error if it leaves it.
pub fn workspace_path(path: &str) -> Result<String> {
    let joined = if path.starts_with('/') {
        PathBuf::from(path)
    } else {
        Path::new(WORKSPACE).join(path)
    };
    let mut parts: Vec<String> = Vec::new();
    for component in joined.components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => {
                parts.pop();
            }
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            Component::Prefix(_) => {}
        }
    }
    let normal = format!("/{}", parts.join("/"));
    if normal == WORKSPACE || normal.starts_with(&format!("{WORKSPACE}/")) {
        Ok(normal)
    } else {
        Err(refused(format!(
            "`{path}` is outside the workspace ({WORKSPACE}): only files there can be copied"
        )))
    }
}

/// Copies a host file or folder into the sandbox folder `dest` (inside the workspace),
/// owned by `user` (`uid:gid`). Returns the bytes sent.
pub async fn upload(
    docker: &Docker,
    container: &str,
    source: &Path,
    dest: &str,
    user: &str,
) -> Result<u64> {
    let name = source
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| ".".into());
    send(docker, container, source, &name, dest, user).await
}

/// Copies what a host folder contains into the sandbox folder `dest` (copy mode).
pub async fn upload_contents(
    docker: &Docker,
    container: &str,
    dir: &Path,
    dest: &str,
    user: &str,
) -> Result<u64> {
    send(docker, container, dir, ".", dest, user).await
}

async fn send(
    docker: &Docker,
    container: &str,
    source: &Path,
    name: &str,
    dest: &str,
    user: &str,
) -> Result<u64> {
    let dest = workspace_path(dest)?;
    std::fs::symlink_metadata(source)
        .map_err(|e| refused(format!("cannot read {}: {e}", source.display())))?;
    let name = name.to_string();
    let (uid, gid) = parse_user(user);
    let source = source.to_path_buf();
    let tar = tokio::task::spawn_blocking(move || pack(&source, &name, uid, gid))
        .await
        .map_err(|e| refused(format!("packing failed: {e}")))??;
    let size = tar.metadata().map(|m| m.len()).unwrap_or(0);
    let file = tokio::fs::File::from_std(tar);
    let body = tokio_util::io::ReaderStream::with_capacity(file, 64 << 10);
    let options = UploadToContainerOptions {
        path: dest.clone(),
        ..Default::default()
    };
    docker
        .upload_to_container(container, Some(options), bollard::body_try_stream(body))
        .await
        .map_err(|e| match e {
            bollard::errors::Error::DockerResponseServerError { message, .. } => {
                refused(format!("copying into {dest} failed: {message}"))
            }
            other => SandboxError::docker("copy into the sandbox")(other),
        })?;
    Ok(size)
}

fn parse_user(user: &str) -> (u64, u64) {
    let mut parts = user.split(':').map(|p| p.parse::<u64>().unwrap_or(1000));
    let uid = parts.next().unwrap_or(1000);
    (uid, parts.next().unwrap_or(uid))
}

/// Packs `source` into a temporary tar file whose entries are owned by uid:gid.
fn pack(source: &Path, name: &str, uid: u64, gid: u64) -> Result<File> {
    let mut builder =
        tar::Builder::new(tempfile::tempfile().map_err(io_error("a temporary file"))?);
    builder.follow_symlinks(false);
    let mut stack = vec![(source.to_path_buf(), PathBuf::from(name))];
    while let Some((path, in_tar)) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).map_err(io_error("reading a file to copy"))?;
        let mut header = tar::Header::new_gnu();
        header.set_metadata(&meta);
        header.set_uid(uid);
        header.set_gid(gid);
        if meta.is_dir() {
            header.set_size(0);
            builder
                .append_data(&mut header, &in_tar, std::io::empty())
                .map_err(io_error("packing"))?;
            let mut entries: Vec<_> = std::fs::read_dir(&path)
                .map_err(io_error("listing a folder to copy"))?
                .filter_map(|e| e.ok())
                .collect();
            entries.sort_by_key(|e| std::cmp::Reverse(e.file_name()));
            for entry in entries {
                stack.push((entry.path(), in_tar.join(entry.file_name())));
            }
        } else if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path).map_err(io_error("reading a link"))?;
            header.set_size(0);
            builder
                .append_link(&mut header, &in_tar, &target)
                .map_err(io_error("packing"))?;
        } else if meta.is_file() {
            let file = File::open(&path).map_err(io_error("opening a file to copy"))?;
            builder
                .append_data(&mut header, &in_tar, file)
                .map_err(io_error("packing"))?;
        }
    }
    let mut file = builder.into_inner().map_err(io_error("packing"))?;
    file.flush().map_err(io_error("packing"))?;
    file.seek(SeekFrom::Start(0)).map_err(io_error("packing"))?;
    Ok(file)
}

/// Copies a sandbox file or folder (inside the workspace) into the host folder `dest`.
/// Existing files are not overwritten. Returns the paths written.
pub async fn download(
    docker: &Docker,
    container: &str,
    source: &str,
    dest: &Path,
) -> Result<Vec<PathBuf>> {
    let source = workspace_path(source)?;
    let options = DownloadFromContainerOptions {
        path: source.clone(),
    };
    let mut stream = docker.download_from_container(container, Some(options));
    let mut tar = tempfile::tempfile().map_err(io_error("a temporary file"))?;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| match e {
            bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            } => refused(format!("{source} does not exist in the sandbox")),
            bollard::errors::Error::DockerResponseServerError { message, .. } => {
                refused(format!("copying {source} out failed: {message}"))
            }
            other => SandboxError::docker("copy out of the sandbox")(other),
        })?;
        tar.write_all(&chunk)
            .map_err(io_error("buffering the copy"))?;
    }
    tar.seek(SeekFrom::Start(0))
        .map_err(io_error("buffering the copy"))?;
    let dest = dest.to_path_buf();
    tokio::task::spawn_blocking(move || unpack(tar, &dest))
        .await
        .map_err(|e| refused(format!("unpacking failed: {e}")))?
}

/// Unpacks a tar from a sandbox into `dest`, refusing every entry that could write
/// outside it. Every entry is checked before anything is written, so a refused archive
/// leaves nothing behind.
pub fn unpack<R: std::io::Read + Seek>(mut tar: R, dest: &Path) -> Result<Vec<PathBuf>> {
    let plan = {
        let mut archive = tar::Archive::new(&mut tar);
        let mut plan = Vec::new();
        let mut links: Vec<PathBuf> = Vec::new();
        for entry in archive.entries().map_err(io_error("reading the archive"))? {
            let entry = entry.map_err(io_error("reading the archive"))?;
            let path = entry
                .path()
                .map_err(io_error("reading the archive"))?
                .into_owned();
            let shown = path.display().to_string();
            if path.is_absolute() || escapes(&path) {
                return Err(refused(format!(
                    "refused `{shown}` from the sandbox: it points outside the destination"
                )));
            }
            // Nothing may be written through a link the archive itself makes.
            if links.iter().any(|l| path.starts_with(l) && path != *l) {
                return Err(refused(format!(
                    "refused `{shown}` from the sandbox: it would be written through a link"
                )));
            }
            let target = dest.join(&path);
            let kind = entry.header().entry_type();
            let link = match kind {
                tar::EntryType::Directory => None,
                tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::Symlink => {
                    if target.symlink_metadata().is_ok() {
                        return Err(refused(format!(
                            "{} exists already: not overwritten (remove it or copy to another folder)",
                            target.display()
                        )));
                    }
                    check_parents(dest, &path)?;
                    if kind == tar::EntryType::Symlink {
                        let link = entry
                            .link_name()
                            .map_err(io_error("reading the archive"))?
                            .map(|l| l.into_owned())
                            .unwrap_or_default();
                        let base = path.parent().unwrap_or(Path::new(""));
                        if link.is_absolute() || escapes(&base.join(&link)) {
                            return Err(refused(format!(
                                "refused the link `{shown}` -> `{}` from the sandbox: it points outside the destination",
                                link.display()
                            )));
                        }
                        links.push(path.clone());
                        Some(link)
                    } else {
                        None
                    }
                }
                other => {
                    return Err(refused(format!(
                        "refused `{shown}` from the sandbox: a {other:?} entry is not copied out"
                    )))
                }
            };
            plan.push((path, kind, link));
        }
        plan
    };
    tar.seek(SeekFrom::Start(0))
        .map_err(io_error("rereading the archive"))?;
    std::fs::create_dir_all(dest).map_err(io_error("creating the destination"))?;
    let mut archive = tar::Archive::new(tar);
    let mut written = Vec::new();
    for (entry, (path, kind, link)) in archive
        .entries()
        .map_err(io_error("reading the archive"))?
        .zip(plan)
    {
        let mut entry = entry.map_err(io_error("reading the archive"))?;
        let target = dest.join(&path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io_error("creating a folder"))?;
        }
        match (kind, link) {
            (tar::EntryType::Directory, _) => {
                std::fs::create_dir_all(&target).map_err(io_error("creating a folder"))?;
            }
            (_, Some(link)) => {
                std::os::unix::fs::symlink(&link, &target).map_err(io_error("making a link"))?;
                written.push(target);
            }
            _ => {
                let mut file = File::create(&target).map_err(io_error("writing a file"))?;
                std::io::copy(&mut entry, &mut file).map_err(io_error("writing a file"))?;
                written.push(target);
            }
        }
    }
    Ok(written)
}

/// Whether a relative path climbs above its start.
fn escapes(path: &Path) -> bool {
    let mut depth: i64 = 0;
    for component in path.components() {
        match component {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            Component::RootDir | Component::Prefix(_) => return true,
            Component::CurDir => {}
        }
        if depth < 0 {
            return true;
        }
    }
    false
}

/// Refuses a write through a link unpacked earlier (`a -> ..`, then `a/x`).
fn check_parents(dest: &Path, path: &Path) -> Result<()> {
    let mut at = dest.to_path_buf();
    if let Some(parent) = path.parent() {
        for component in parent.components() {
            at.push(component);
            if at
                .symlink_metadata()
                .is_ok_and(|m| m.file_type().is_symlink())
            {
                return Err(refused(format!(
                    "refused `{}` from the sandbox: it would be written through the link {}",
                    path.display(),
                    at.display()
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_paths_stay_in_the_workspace() {
        assert_eq!(workspace_path("data.csv").unwrap(), "/workspace/data.csv");
        assert_eq!(workspace_path("/workspace/a/../b").unwrap(), "/workspace/b");
        assert_eq!(workspace_path(".").unwrap(), "/workspace");
        assert!(workspace_path("../etc/passwd").is_err());
        assert!(workspace_path("/etc/passwd").is_err());
        assert!(workspace_path("/workspacex").is_err());
    }

    fn archive(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        // set_path refuses `..`; write the raw name as a hostile archive would.
        let name = h.as_old_mut().name.as_mut();
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    fn link(b: &mut tar::Builder<Vec<u8>>, path: &str, target: &str) {
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_path(path).unwrap();
        h.set_link_name(target).unwrap();
        h.set_cksum();
        b.append(&h, std::io::empty()).unwrap();
    }

    #[test]
    fn archives_that_escape_are_refused() {
        let dest = tempfile::tempdir().unwrap();
        let bad = [
            archive(|b| file(b, "../evil", b"x")),
            archive(|b| file(b, "/etc/evil", b"x")),
            archive(|b| link(b, "abs", "/etc/passwd")),
            archive(|b| link(b, "up", "../../outside")),
            archive(|b| {
                link(b, "dir", ".");
                link(b, "dir/up", "..");
            }),
        ];
        for tar in bad {
            let err = unpack(std::io::Cursor::new(tar), dest.path())
                .unwrap_err()
                .to_string();
            assert!(err.contains("refused"), "{err}");
        }
        assert!(!dest.path().parent().unwrap().join("evil").exists());
        assert_eq!(
            std::fs::read_dir(dest.path()).unwrap().count(),
            0,
            "nothing written"
        );
        let good = archive(|b| {
            file(b, "out/a.txt", b"hello");
            link(b, "out/b", "a.txt");
        });
        let target = tempfile::tempdir().unwrap();
        let written = unpack(std::io::Cursor::new(&good), target.path()).unwrap();
        assert_eq!(written.len(), 2);
        assert_eq!(
            std::fs::read_to_string(target.path().join("out/b")).unwrap(),
            "hello"
        );
        let again = unpack(std::io::Cursor::new(&good), target.path())
            .unwrap_err()
            .to_string();
        assert!(again.contains("exists already"), "{again}");
    }
}
