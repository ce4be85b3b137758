//! Files into and out of a sandbox's workspace, through Docker's archive API (tar).
//!
//! In: the host file or folder is packed into a temporary tar file (so memory stays
//! bounded), its entries owned by the sandbox's user, and streamed to the container; it
//! is read through folders opened without following links, so a folder the sandbox
//! swaps for a link meanwhile cannot make oi read what the link points to.
//! Out: the container's tar is streamed to a temporary file, then unpacked entry by
//! entry through [`crate::core::hostfs`]: relative to folders opened without following
//! links, files created exclusively, links made verbatim and then resolved as the
//! filesystem would; what could land outside the destination is refused and the copy
//! taken back (absolute paths, `..`, links leading out, hard links, devices). Paths on
//! the sandbox side must stay inside `/workspace`. Knows Docker and tar, not sessions;
//! how host files are created safely is `hostfs`'s business.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use bollard::query_parameters::{DownloadFromContainerOptions, UploadToContainerOptions};
use bollard::Docker;
use futures::StreamExt;

use super::error::{Result, SandboxError};
use crate::core::hostfs::{self, Dir, HostFsError, LinkCheck};

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
    workspace_path(dest)?;
    std::fs::symlink_metadata(source)
        .map_err(|e| refused(format!("cannot read {}: {e}", source.display())))?;
    let name = name.to_string();
    let (uid, gid) = parse_user(user);
    let source = source.to_path_buf();
    let tar = tokio::task::spawn_blocking(move || pack(&source, &name, uid, gid))
        .await
        .map_err(|e| refused(format!("packing failed: {e}")))??;
    stream_in(docker, container, tar, dest).await
}

/// Copies a tar archive from outside (a front end, a remote client) into the sandbox
/// folder `dest` (inside the workspace), rewritten first so that it holds only what the
/// sandbox's user could make itself (`restamp`). Returns the bytes sent.
pub async fn put(
    docker: &Docker,
    container: &str,
    archive: File,
    dest: &str,
    user: &str,
) -> Result<u64> {
    workspace_path(dest)?;
    let (uid, gid) = parse_user(user);
    let tar = tokio::task::spawn_blocking(move || restamp(archive, uid, gid))
        .await
        .map_err(|e| refused(format!("reading the archive failed: {e}")))??;
    stream_in(docker, container, tar, dest).await
}

/// Streams a tar file into the sandbox folder `dest`.
async fn stream_in(docker: &Docker, container: &str, tar: File, dest: &str) -> Result<u64> {
    let dest = workspace_path(dest)?;
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

/// Rewrites an archive from outside into a temporary one that Docker may unpack: only
/// files, folders and symbolic links, owned by uid:gid, with permission bits only (no
/// setuid, setgid or sticky bit), at relative paths that never climb (`..`). Anything
/// else is refused, naming the entry. Streams entry by entry: memory stays bounded.
fn restamp(archive: File, uid: u64, gid: u64) -> Result<File> {
    let mut out = tar::Builder::new(tempfile::tempfile().map_err(io_error("a temporary file"))?);
    let mut input = tar::Archive::new(archive);
    let bad = |e: std::io::Error| refused(format!("the archive cannot be read: {e}"));
    for entry in input.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let path = entry.path().map_err(bad)?.into_owned();
        let shown = path.display().to_string();
        if path.is_absolute()
            || path
                .components()
                .any(|c| matches!(c, Component::ParentDir | Component::Prefix(_)))
        {
            return Err(refused(format!(
                "the archive's entry `{shown}` would land outside its folder"
            )));
        }
        let source = entry.header();
        let kind = source.entry_type();
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(source.mode().map_err(bad)? & 0o777);
        header.set_mtime(source.mtime().unwrap_or(0));
        header.set_uid(uid);
        header.set_gid(gid);
        header.set_size(0);
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(entry.size());
                out.append_data(&mut header, &path, &mut entry)
            }
            tar::EntryType::Directory => out.append_data(&mut header, &path, std::io::empty()),
            tar::EntryType::Symlink => {
                let target = entry.link_name().map_err(bad)?.unwrap_or_default();
                out.append_link(&mut header, &path, target)
            }
            other => {
                return Err(refused(format!(
                    "the archive's entry `{shown}` is a {other:?}: only files, folders and \
                     symbolic links are copied in"
                )))
            }
        }
        .map_err(io_error("rewriting the archive"))?;
    }
    let mut file = out
        .into_inner()
        .map_err(io_error("rewriting the archive"))?;
    file.flush().map_err(io_error("rewriting the archive"))?;
    file.seek(SeekFrom::Start(0))
        .map_err(io_error("rewriting the archive"))?;
    Ok(file)
}

fn parse_user(user: &str) -> (u64, u64) {
    let mut parts = user.split(':').map(|p| p.parse::<u64>().unwrap_or(1000));
    let uid = parts.next().unwrap_or(1000);
    (uid, parts.next().unwrap_or(uid))
}

/// One thing to pack: a name in an open folder, or an open folder itself.
enum Item {
    Named(Rc<Dir>, OsString, PathBuf),
    Folder(Rc<Dir>, PathBuf),
}

/// Packs `source` into a temporary tar file whose entries are owned by uid:gid, the
/// source named `name` in it; the file is positioned at its start.
///
/// The source is read through folders opened without following links
/// ([`hostfs::Dir`]): the user names it, but it may lie in the workspace, where the
/// sandbox can swap a folder for a link to what it should not see while oi reads. A
/// link inside the source is packed as a link; a link on the way to it is refused.
pub fn pack(source: &Path, name: &str, uid: u64, gid: u64) -> Result<File> {
    let mut builder =
        tar::Builder::new(tempfile::tempfile().map_err(io_error("a temporary file"))?);
    builder.follow_symlinks(false);
    let open = |path: &Path| Dir::open(path).map_err(|e| refused(format!("cannot read {e}")));
    let first = match source.components().next_back() {
        Some(Component::Normal(base)) => {
            let parent = source
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            Item::Named(
                Rc::new(open(parent)?),
                base.to_os_string(),
                PathBuf::from(name),
            )
        }
        _ => Item::Folder(Rc::new(open(source)?), PathBuf::from(name)),
    };
    let header = |kind: tar::EntryType, mode: u32, mtime: i64| {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode & 0o7777);
        header.set_mtime(u64::try_from(mtime).unwrap_or(0));
        header.set_uid(uid);
        header.set_gid(gid);
        header.set_size(0);
        header
    };
    let mut stack = vec![first];
    while let Some(item) = stack.pop() {
        let (folder, in_tar) = match item {
            Item::Folder(folder, in_tar) => {
                let stat = folder.metadata().map_err(|e| refused(e.to_string()))?;
                let mut h = header(tar::EntryType::Directory, stat.st_mode, stat.st_mtime);
                builder
                    .append_data(&mut h, &in_tar, std::io::empty())
                    .map_err(io_error("packing"))?;
                (folder, in_tar)
            }
            Item::Named(parent, base, in_tar) => {
                let stat = parent.stat(&base).map_err(|e| refused(e.to_string()))?;
                let (mode, mtime) = (stat.st_mode, stat.st_mtime);
                match rustix::fs::FileType::from_raw_mode(stat.st_mode) {
                    rustix::fs::FileType::Directory => {
                        let (folder, _) = parent
                            .child(&base, false)
                            .map_err(|e| refused(format!("cannot read {e}")))?;
                        let mut h = header(tar::EntryType::Directory, mode, mtime);
                        builder
                            .append_data(&mut h, &in_tar, std::io::empty())
                            .map_err(io_error("packing"))?;
                        (Rc::new(folder), in_tar)
                    }
                    rustix::fs::FileType::Symlink => {
                        let target = parent.link_target(&base).unwrap_or_default();
                        let mut h = header(tar::EntryType::Symlink, mode, mtime);
                        builder
                            .append_link(&mut h, &in_tar, &target)
                            .map_err(io_error("packing"))?;
                        continue;
                    }
                    rustix::fs::FileType::RegularFile => {
                        // Opened without following a link swapped in since the look.
                        let file = parent
                            .open_file(&base)
                            .map_err(|e| refused(format!("cannot read {e}")))?;
                        let meta = file
                            .metadata()
                            .map_err(io_error("reading a file to copy"))?;
                        let mut h = tar::Header::new_gnu();
                        h.set_metadata(&meta);
                        h.set_uid(uid);
                        h.set_gid(gid);
                        builder
                            .append_data(&mut h, &in_tar, file)
                            .map_err(io_error("packing"))?;
                        continue;
                    }
                    // Pipes, sockets, devices: not copied.
                    _ => continue,
                }
            }
        };
        let names = folder.names().map_err(|e| refused(e.to_string()))?;
        for base in names.into_iter().rev() {
            let in_tar = in_tar.join(&base);
            stack.push(Item::Named(folder.clone(), base, in_tar));
        }
    }
    let mut file = builder.into_inner().map_err(io_error("packing"))?;
    file.flush().map_err(io_error("packing"))?;
    file.seek(SeekFrom::Start(0)).map_err(io_error("packing"))?;
    Ok(file)
}

/// Copies a sandbox file or folder (inside the workspace) into the host folder `dest`.
/// Existing files are not overwritten. Returns the paths written.
///
/// At most `limit` bytes of archive are taken (a sparse file is as large in the archive
/// as it claims to be: a tmpfs holds a "1 PB" file that Docker would expand).
pub async fn download(
    docker: &Docker,
    container: &str,
    source: &str,
    dest: &Path,
    limit: u64,
) -> Result<Vec<PathBuf>> {
    let tar = fetch(docker, container, source, limit).await?;
    let dest = dest.to_path_buf();
    tokio::task::spawn_blocking(move || unpack(tar, &dest))
        .await
        .map_err(|e| refused(format!("unpacking failed: {e}")))?
}

/// A sandbox file or folder (inside the workspace) as a tar archive in a temporary
/// file, positioned at its start; at most `limit` bytes of archive (see [`download`]).
pub async fn fetch(docker: &Docker, container: &str, source: &str, limit: u64) -> Result<File> {
    let source = workspace_path(source)?;
    let options = DownloadFromContainerOptions {
        path: source.clone(),
    };
    let mut stream = docker.download_from_container(container, Some(options));
    let mut tar = tempfile::tempfile().map_err(io_error("a temporary file"))?;
    let mut taken = 0u64;
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
        taken += chunk.len() as u64;
        if taken > limit {
            return Err(refused(format!(
                "{source} is more than {} to copy out (sparse files count at their full size); \
                 nothing was written: copy a smaller part, or allow more (--workspace-size, \
                 or `oi sandbox cp --limit`)",
                super::settings::bytes(limit.min(i64::MAX as u64) as i64)
            )));
        }
        tar.write_all(&chunk)
            .map_err(io_error("buffering the copy"))?;
    }
    tar.seek(SeekFrom::Start(0))
        .map_err(io_error("buffering the copy"))?;
    Ok(tar)
}

/// Unpacks a tar from a sandbox into `dest`; nothing lands outside it, whatever links,
/// chains of links or entry order the archive holds, and whatever the sandbox changes
/// in `dest` meanwhile (a mounted workspace is writable from inside while oi writes).
///
/// Every entry is written relative to folder descriptors opened without following
/// links ([`hostfs::Dir`]), so no link is ever traversed: not one from the archive, not
/// one already there, not one swapped in during the copy. Files are created exclusively
/// (nothing is overwritten) with permission bits only; links are made verbatim, then
/// each is resolved as the filesystem would from `dest` (`openat2` with
/// `RESOLVE_BENEATH`): one that leads outside is refused, and so is a dangling one whose
/// text climbs (`..`) or is absolute. On any refusal, what this copy made is removed
/// again, so a refused archive leaves nothing behind. Returns the files and links made.
pub fn unpack<R: std::io::Read>(tar: R, dest: &Path) -> Result<Vec<PathBuf>> {
    let (root, made_dest) = Dir::create_all_made(dest).map_err(|e| refused(format!("{e}")))?;
    let mut made = Made::default();
    let result = unpack_into(tar, &root, dest, &mut made);
    match result {
        Ok(()) => Ok(made.written),
        Err(err) => {
            made.undo(&root);
            // The destination's own folders too, if this copy made them.
            for (parent, name) in made_dest.iter().rev() {
                let _ = parent.remove(name, true);
            }
            Err(err)
        }
    }
}

/// What one copy made, to report it or to take it back.
#[derive(Default)]
struct Made {
    /// Everything made, in order (relative to the destination) and whether a folder.
    all: Vec<(PathBuf, bool)>,
    /// Files and links, as `dest/relative`.
    written: Vec<PathBuf>,
    /// Links made: relative path and their text.
    links: Vec<(PathBuf, PathBuf)>,
}

impl Made {
    /// Removes what was made, deepest and latest first, never through a link.
    fn undo(&self, root: &Dir) {
        for (path, folder) in self.all.iter().rev() {
            let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
                continue;
            };
            if let Ok(dir) = root.descend(parent) {
                let _ = dir.remove(name, *folder);
            }
        }
    }
}

fn unpack_into<R: std::io::Read>(tar: R, root: &Dir, dest: &Path, made: &mut Made) -> Result<()> {
    let mut archive = tar::Archive::new(tar);
    for entry in archive.entries().map_err(io_error("reading the archive"))? {
        let mut entry = entry.map_err(io_error("reading the archive"))?;
        let path = entry
            .path()
            .map_err(io_error("reading the archive"))?
            .into_owned();
        let shown = hostfs::shown(&path);
        let kind = entry.header().entry_type();
        if kind == tar::EntryType::XGlobalHeader {
            continue;
        }
        let Some((parents, name)) = plain_parts(&path) else {
            return Err(refused(format!(
                "refused `{shown}` from the sandbox: it points outside the destination"
            )));
        };
        // Folders on the way, opened (or made) one by one, never through a link.
        let mut dir = root
            .descend(Path::new(""))
            .map_err(|e| refused(e.to_string()))?;
        let mut at = PathBuf::new();
        for parent in &parents {
            at.push(parent);
            let (child, was_made) = dir.child(parent, true).map_err(|e| match e {
                HostFsError::Link { .. } => refused(format!(
                    "refused `{shown}` from the sandbox: it would be written through the link {}",
                    hostfs::shown(&dest.join(&at))
                )),
                other => refused(format!("refused `{shown}` from the sandbox: {other}")),
            })?;
            if was_made {
                made.all.push((at.clone(), true));
            }
            dir = child;
        }
        let relative = at.join(&name);
        let target = dest.join(&relative);
        let exists = || {
            refused(format!(
                "{} exists already: not overwritten (remove it or copy to another folder)",
                hostfs::shown(&target)
            ))
        };
        match kind {
            tar::EntryType::Directory => {
                let (_, was_made) = dir.child(&name, true).map_err(|e| match e {
                    HostFsError::Link { .. } => refused(format!(
                        "refused `{shown}` from the sandbox: it would be written through the link {}",
                        hostfs::shown(&target)
                    )),
                    other => refused(format!("refused `{shown}` from the sandbox: {other}")),
                })?;
                if was_made {
                    made.all.push((relative, true));
                }
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mode = entry.header().mode().unwrap_or(0o644);
                let mut file = dir.create_new(&name, mode).map_err(|e| match e {
                    HostFsError::Exists { .. } => exists(),
                    other => refused(other.to_string()),
                })?;
                made.all.push((relative, false));
                made.written.push(target);
                std::io::copy(&mut entry, &mut file).map_err(io_error("writing a file"))?;
            }
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(io_error("reading the archive"))?
                    .map(|l| l.into_owned())
                    .unwrap_or_default();
                dir.symlink(&link, &name).map_err(|e| match e {
                    HostFsError::Exists { .. } => exists(),
                    other => refused(other.to_string()),
                })?;
                made.all.push((relative.clone(), false));
                made.written.push(target);
                made.links.push((relative, link));
            }
            other => {
                return Err(refused(format!(
                    "refused `{shown}` from the sandbox: a {other:?} entry is not copied out"
                )))
            }
        }
    }
    // Links are judged once everything is there: a link may lead through later entries.
    for (relative, link) in &made.links {
        let climbs = link.is_absolute() || link.components().any(|c| c == Component::ParentDir);
        let outside = match root.link_target_inside(relative) {
            LinkCheck::Inside => false,
            LinkCheck::Outside => true,
            LinkCheck::Dangling | LinkCheck::Unknown => climbs,
        };
        if outside {
            return Err(refused(format!(
                "refused the link `{}` -> `{}` from the sandbox: it points outside the destination",
                hostfs::shown(relative),
                hostfs::shown(link)
            )));
        }
    }
    Ok(())
}

/// The folders and the name of an archive path, if it is made of plain names only
/// (`.` is skipped; `..`, `/` and an empty path are not plain).
fn plain_parts(path: &Path) -> Option<(Vec<OsString>, OsString)> {
    let mut parts = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(name) => parts.push(name.to_os_string()),
            Component::CurDir => {}
            _ => return None,
        }
    }
    let name = parts.pop()?;
    Some((parts, name))
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

    fn dir(b: &mut tar::Builder<Vec<u8>>, path: &str) {
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_mode(0o755);
        h.set_entry_type(tar::EntryType::Directory);
        h.set_path(path).unwrap();
        h.set_cksum();
        b.append(&h, std::io::empty()).unwrap();
    }

    /// Everything below `root`, as sorted relative paths.
    fn tree(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(at) = stack.pop() {
            for entry in std::fs::read_dir(&at).unwrap() {
                let path = entry.unwrap().path();
                out.push(path.strip_prefix(root).unwrap().display().to_string());
                if path.symlink_metadata().unwrap().is_dir() {
                    stack.push(path);
                }
            }
        }
        out.sort();
        out
    }

    /// The chain, in every order: `up` is inside (it resolves to the
    /// destination), `esc` climbs four levels above it.
    #[test]
    fn link_chains_are_resolved_as_the_filesystem_would() {
        let entry = |b: &mut tar::Builder<Vec<u8>>, i: usize| match i {
            0 => dir(b, "a/b/c/d/"),
            1 => link(b, "a/b/c/d/up", "../../../.."),
            _ => link(b, "esc", "a/b/c/d/up/../../../.."),
        };
        for order in [[0, 1, 2], [2, 1, 0], [1, 2, 0], [2, 0, 1]] {
            let tar = archive(|b| order.iter().for_each(|&i| entry(b, i)));
            let top = tempfile::tempdir().unwrap();
            let dest = top.path().join("x/y/z/w/dest");
            let err = unpack(std::io::Cursor::new(tar), &dest)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("refused the link `esc` -> `a/b/c/d/up/../../../..`"),
                "{order:?}: {err}"
            );
            assert!(!top.path().join("x").exists(), "{order:?}: taken back");
        }
        // Without `esc` the chain stays inside and is copied as it is.
        let tar = archive(|b| {
            dir(b, "a/b/c/d/");
            link(b, "a/b/c/d/up", "../../../..");
            link(b, "top", "a/b/c/d/up/a");
        });
        let dest = tempfile::tempdir().unwrap();
        let written = unpack(std::io::Cursor::new(tar), dest.path()).unwrap();
        assert_eq!(written.len(), 2);
        assert_eq!(
            std::fs::read_link(dest.path().join("top")).unwrap(),
            Path::new("a/b/c/d/up/a")
        );
    }

    /// A second copy into a destination holding links (from an earlier copy, or put
    /// there by the sandbox in a mounted workspace) never writes through them.
    #[test]
    fn a_later_copy_never_writes_through_a_link_already_there() {
        let top = tempfile::tempdir().unwrap();
        let outside = top.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let dest = top.path().join("dest");
        std::fs::create_dir_all(dest.join("a/b/c/d")).unwrap();
        std::os::unix::fs::symlink("../../../..", dest.join("a/b/c/d/up")).unwrap();
        std::os::unix::fs::symlink("a/b/c/d/up/..", dest.join("esc")).unwrap();
        std::os::unix::fs::symlink(&outside, dest.join("abs")).unwrap();
        for via in ["esc", "abs", "a/b/c/d/up"] {
            for tar in [
                archive(|b| dir(b, &format!("{via}/pwned/"))),
                archive(|b| file(b, &format!("{via}/pwned.txt"), b"x")),
                archive(|b| link(b, &format!("{via}/pwned"), "/etc")),
            ] {
                let err = unpack(std::io::Cursor::new(tar), &dest)
                    .unwrap_err()
                    .to_string();
                assert!(err.contains("would be written through the link"), "{err}");
            }
        }
        assert_eq!(tree(&outside), Vec::<String>::new());
        assert_eq!(tree(top.path()).len(), 9, "{:?}", tree(top.path()));
        // The destination itself may not be reached through a link either.
        let err = unpack(
            std::io::Cursor::new(archive(|b| file(b, "f", b"x"))),
            &dest.join("abs/inner"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("is a symbolic link"), "{err}");
        assert_eq!(tree(&outside), Vec::<String>::new());
    }

    #[test]
    fn files_keep_permission_bits_only() {
        use std::os::unix::fs::PermissionsExt;
        let tar = archive(|b| {
            let mut h = tar::Header::new_gnu();
            h.set_size(1);
            h.set_mode(0o6755);
            h.set_entry_type(tar::EntryType::Regular);
            h.set_path("tool").unwrap();
            h.set_cksum();
            b.append(&h, &b"x"[..]).unwrap();
        });
        let dest = tempfile::tempdir().unwrap();
        unpack(std::io::Cursor::new(tar), dest.path()).unwrap();
        let mode = std::fs::metadata(dest.path().join("tool"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7000, 0, "{mode:o}");
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

    fn names_in(mut tar: File) -> Vec<String> {
        let mut names = Vec::new();
        tar.seek(SeekFrom::Start(0)).unwrap();
        for entry in tar::Archive::new(tar).entries().unwrap() {
            let entry = entry.unwrap();
            let kind = entry.header().entry_type();
            names.push(format!("{} {kind:?}", entry.path().unwrap().display()));
        }
        names
    }

    #[test]
    fn uploads_pack_links_as_links_and_refuse_links_on_the_way() {
        let top = tempfile::tempdir().unwrap();
        let src = top.path().join("src");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("sub/a.txt"), "a").unwrap();
        std::os::unix::fs::symlink("/etc", src.join("etc")).unwrap();
        let tar = pack(&src, "src", 1000, 1000).unwrap();
        assert_eq!(
            names_in(tar),
            [
                "src Directory",
                "src/etc Symlink",
                "src/sub Directory",
                "src/sub/a.txt Regular"
            ]
        );
        std::os::unix::fs::symlink(&src, top.path().join("via")).unwrap();
        let err = pack(&top.path().join("via/sub"), "sub", 1000, 1000)
            .unwrap_err()
            .to_string();
        assert!(err.contains("is a symbolic link"), "{err}");
    }

    /// The sandbox swaps a folder it can write for a link to a secret while oi packs
    /// an upload: the secret is never read.
    #[test]
    fn uploads_never_read_through_a_folder_swapped_for_a_link() {
        let top = tempfile::tempdir().unwrap();
        let secret = top.path().join("secret");
        std::fs::create_dir(&secret).unwrap();
        std::fs::write(secret.join("key.pem"), "SECRET").unwrap();
        let src = top.path().join("work");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("sub/ok.txt"), "ok").unwrap();
        std::os::unix::fs::symlink(&secret, src.join("sub-swap")).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let swapper = {
            let (a, b, stop) = (src.join("sub"), src.join("sub-swap"), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    rustix::fs::renameat_with(
                        rustix::fs::CWD,
                        &a,
                        rustix::fs::CWD,
                        &b,
                        rustix::fs::RenameFlags::EXCHANGE,
                    )
                    .unwrap();
                }
            })
        };
        for _ in 0..300 {
            if let Ok(tar) = pack(&src, "work", 1000, 1000) {
                let names = names_in(tar);
                assert!(!names.iter().any(|n| n.contains("key.pem")), "{names:?}");
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        swapper.join().unwrap();
    }
}
