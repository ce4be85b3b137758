//! Files oi creates on the host, made so that nothing the sandbox planted can redirect
//! them: figures, saved conversations, notebooks, copies out of a sandbox.
//!
//! The sandbox writes to the user's folder (`/workspace` is mounted read-write), so any
//! name there may be a symbolic link, a hard link or a folder swapped for a link while
//! oi works. Every write here therefore goes through a [`Dir`]: a folder opened
//! component by component with `O_NOFOLLOW | O_DIRECTORY` (a link anywhere on the way
//! is refused, naming it), and everything inside it is done relative to that
//! descriptor, never by path:
//! - new files are created exclusively (`O_CREAT | O_EXCL | O_NOFOLLOW`): an existing
//!   name, link or not, is never opened for writing ([`Dir::create_new`]); names oi
//!   makes up take the next free number instead ([`Dir::create_numbered`]);
//! - a file the user named is replaced by writing a fresh exclusive temporary file in
//!   the same folder and renaming it over the name: a rename replaces a link, it never
//!   follows one ([`Dir::replace`]);
//! - links are made verbatim with `symlinkat` and checked with
//!   `openat2(RESOLVE_BENEATH)` ([`Dir::link_target_inside`]).
//!
//! Names oi generates come from a fixed safe alphabet and image formats from a fixed
//! list ([`image_extension`]). The current folder as `getcwd` reports it has no links,
//! so relative paths start there; absolute paths start at `/`.
//!
//! Left to others: what to write (front ends, the archive unpacker in
//! `code_interpreter::files`) and showing the errors (front ends neutralise the names
//! these errors carry before they reach a terminal).

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

/// Why a host file could not be written (or read) safely.
#[derive(Debug, thiserror::Error)]
pub enum HostFsError {
    /// A component of the path is a symbolic link: oi never writes through one. The
    /// caller reports it; nothing was written.
    #[error("{} is a symbolic link (to {}): oi does not write through links; give the real folder instead", shown(.path), shown(.target))]
    Link { path: PathBuf, target: PathBuf },
    /// A component that must be a folder is something else.
    #[error("{} is not a folder", shown(.path))]
    NotAFolder { path: PathBuf },
    /// What was to be read is not a regular file (a folder, a pipe, a device).
    #[error("{} is not a regular file", shown(.path))]
    NotAFile { path: PathBuf },
    /// The last component is not a plain name (empty, `.`, `..`, or has a `/`).
    #[error("`{}` does not name a file", shown(.path))]
    BadName { path: PathBuf },
    /// Exclusive creation found the name taken (by anything: a file, a link, a folder).
    #[error("{} exists already", shown(.path))]
    Exists { path: PathBuf },
    /// Every numbered name tried was taken.
    #[error("no free name for a new file in {}", shown(.dir))]
    NoFreeName { dir: PathBuf },
    /// Any other failure of the system call, with what was being done.
    #[error("{action} {}: {source}", shown(.path))]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl HostFsError {
    /// Whether the error is a name that exists already.
    pub fn is_exists(&self) -> bool {
        matches!(self, HostFsError::Exists { .. })
    }
}

pub type Result<T> = std::result::Result<T, HostFsError>;

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(Errno) -> HostFsError + 'a {
    move |e| HostFsError::Io {
        action,
        path: path.to_path_buf(),
        source: e.into(),
    }
}

/// How folders are opened: never through a link. `O_PATH` where there is one, so that
/// folders the user may cross but not list (mode `--x`) still work.
#[cfg(any(target_os = "linux", target_os = "android"))]
const DIR_FLAGS: OFlags = OFlags::PATH
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// How many numbered names [`Dir::create_numbered`] tries before giving up.
const MAX_NUMBERED: usize = 10_000;

/// A folder on the host, opened without following any link on the way. Everything
/// done inside it is relative to its descriptor, so renaming or swapping its path
/// afterwards (a link put where it was) changes nothing for oi.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    /// The path it was opened as, for messages only.
    path: PathBuf,
}

impl Dir {
    /// Opens an existing folder; refuses a link in any component.
    pub fn open(path: &Path) -> Result<Dir> {
        Self::walk(path, false, &mut Vec::new())
    }

    /// Opens a folder, creating what is missing of it (like `mkdir -p`); refuses a
    /// link in any component.
    pub fn create_all(path: &Path) -> Result<Dir> {
        Self::walk(path, true, &mut Vec::new())
    }

    /// [`Dir::create_all`], also returning the folders it made (each as its parent and
    /// its name, outermost first) so that a caller can take them back.
    pub fn create_all_made(path: &Path) -> Result<(Dir, Vec<(Dir, OsString)>)> {
        let mut made = Vec::new();
        let dir = Self::walk(path, true, &mut made)?;
        Ok((dir, made))
    }

    fn walk(path: &Path, create: bool, made: &mut Vec<(Dir, OsString)>) -> Result<Dir> {
        let start = if path.is_absolute() { "/" } else { "." };
        let fd = rustix::fs::openat(rustix::fs::CWD, start, DIR_FLAGS, Mode::empty())
            .map_err(io("opening", Path::new(start)))?;
        let mut dir = Dir {
            fd,
            path: PathBuf::from(start),
        };
        let mut shown = PathBuf::new();
        for component in path.components() {
            match component {
                Component::RootDir => shown.push("/"),
                Component::CurDir | Component::Prefix(_) => {}
                Component::ParentDir => {
                    shown.push("..");
                    // `..` is never a link: it is the folder's real parent.
                    dir.fd = rustix::fs::openat(&dir.fd, "..", DIR_FLAGS, Mode::empty())
                        .map_err(io("opening", &shown))?;
                }
                Component::Normal(name) => {
                    shown.push(name);
                    let (child, was_made) = dir.child_as(name, create, &shown)?;
                    if was_made {
                        made.push((dir, name.to_os_string()));
                    }
                    dir = child;
                }
            }
        }
        dir.path = if shown.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            shown
        };
        Ok(dir)
    }

    /// The path the folder was opened as (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the folder `name` inside this one, never through a link; with `create`,
    /// makes it first if it is missing. Returns whether it was made.
    pub fn child(&self, name: &OsStr, create: bool) -> Result<(Dir, bool)> {
        let shown = self.path.join(name);
        self.child_as(name, create, &shown)
    }

    fn child_as(&self, name: &OsStr, create: bool, shown: &Path) -> Result<(Dir, bool)> {
        check_name(name, shown)?;
        let mut made = false;
        let mut tries = 0;
        loop {
            tries += 1;
            match rustix::fs::openat(&self.fd, name, DIR_FLAGS, Mode::empty()) {
                Ok(fd) => {
                    // O_PATH|O_NOFOLLOW could hand back a link itself; make sure.
                    let stat = rustix::fs::fstat(&fd).map_err(io("reading", shown))?;
                    if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
                        let dir = Dir {
                            fd,
                            path: shown.to_path_buf(),
                        };
                        return Ok((dir, made));
                    }
                }
                Err(Errno::NOENT) if create && !made => {
                    match rustix::fs::mkdirat(&self.fd, name, Mode::from_bits_truncate(0o777)) {
                        Ok(()) => made = true,
                        // Made meanwhile by someone else: open what is there.
                        Err(Errno::EXIST) => {}
                        Err(e) => return Err(io("creating the folder", shown)(e)),
                    }
                    continue;
                }
                Err(Errno::LOOP | Errno::NOTDIR | Errno::MLINK) => {}
                Err(e) => return Err(io("opening", shown)(e)),
            }
            // Not a folder when opened: say what it is, from one look.
            let now = rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW)
                .map(|s| FileType::from_raw_mode(s.st_mode));
            match now {
                Ok(FileType::Symlink) => {
                    return Err(HostFsError::Link {
                        path: shown.to_path_buf(),
                        target: self.link_target(name).unwrap_or_else(|| PathBuf::from("?")),
                    })
                }
                // A folder by now: the name was swapped meanwhile (by the sandbox, say);
                // look again rather than report what is no longer true.
                Ok(FileType::Directory) if tries < 8 => continue,
                _ => {
                    return Err(HostFsError::NotAFolder {
                        path: shown.to_path_buf(),
                    })
                }
            }
        }
    }

    /// What `name` points to, if it is a symbolic link.
    pub fn link_target(&self, name: &OsStr) -> Option<PathBuf> {
        // readlink fails on anything that is not a link.
        let target = rustix::fs::readlinkat(&self.fd, name, Vec::new()).ok()?;
        Some(PathBuf::from(OsStr::from_bytes(target.as_bytes())))
    }

    /// Creates the file `name` for writing, exclusively: if anything has that name (a
    /// file, a link, a folder) it fails with [`HostFsError::Exists`] and nothing is
    /// opened. `mode` is masked to permission bits (never setuid, setgid or sticky),
    /// then by the umask.
    pub fn create_new(&self, name: &OsStr, mode: u32) -> Result<File> {
        let shown = self.path.join(name);
        check_name(name, &shown)?;
        let flags = OFlags::WRONLY
            | OFlags::CREATE
            | OFlags::EXCL
            | OFlags::NOFOLLOW
            | OFlags::CLOEXEC
            | OFlags::NOCTTY;
        match rustix::fs::openat(
            &self.fd,
            name,
            flags,
            Mode::from_bits_truncate(mode & 0o777),
        ) {
            Ok(fd) => Ok(File::from(fd)),
            Err(Errno::EXIST) => Err(HostFsError::Exists { path: shown }),
            Err(e) => Err(io("creating", &shown)(e)),
        }
    }

    /// Creates a new file with the first free name `name(1)`, `name(2)`, … (names
    /// oi makes up, from a safe alphabet: see [`is_safe_name`]). Returns the file and
    /// the name taken.
    pub fn create_numbered(&self, mut name: impl FnMut(usize) -> String) -> Result<(File, String)> {
        for n in 1..=MAX_NUMBERED {
            let candidate = name(n);
            if !is_safe_name(&candidate) {
                return Err(HostFsError::BadName {
                    path: PathBuf::from(candidate),
                });
            }
            match self.create_new(OsStr::new(&candidate), 0o666) {
                Ok(file) => return Ok((file, candidate)),
                Err(HostFsError::Exists { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(HostFsError::NoFreeName {
            dir: self.path.clone(),
        })
    }

    /// Writes the file `name` with what `write` produces, replacing whatever had that
    /// name: a new file is written under a temporary name first, then renamed over it.
    /// A link with that name is replaced, never followed; a half-written file never
    /// takes the name.
    pub fn replace(
        &self,
        name: &OsStr,
        write: impl FnOnce(&mut File) -> std::io::Result<()>,
    ) -> Result<()> {
        let shown = self.path.join(name);
        check_name(name, &shown)?;
        // The temporary name is oi's own (safe alphabet), in the same folder so that the
        // rename stays on one filesystem.
        let token = unique();
        let (mut file, temp) = self.create_numbered(|n| format!(".oi-save-{token}-{n}.tmp"))?;
        let written = write(&mut file)
            .and_then(|()| file.flush())
            .map_err(|source| HostFsError::Io {
                action: "writing",
                path: shown.clone(),
                source,
            });
        drop(file);
        let renamed = written.and_then(|()| {
            rustix::fs::renameat(&self.fd, temp.as_str(), &self.fd, name)
                .map_err(io("replacing", &shown))
        });
        if renamed.is_err() {
            let _ = rustix::fs::unlinkat(&self.fd, temp.as_str(), AtFlags::empty());
        }
        renamed
    }

    /// Opens the regular file `name` for reading, refusing a link (and a pipe, which
    /// would block the read forever).
    pub fn open_file(&self, name: &OsStr) -> Result<File> {
        let shown = self.path.join(name);
        check_name(name, &shown)?;
        // Non-blocking so that opening a planted FIFO returns at once; reads of a
        // regular file do not care.
        let flags =
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
        match rustix::fs::openat(&self.fd, name, flags, Mode::empty()) {
            Ok(fd) => {
                let stat = rustix::fs::fstat(&fd).map_err(io("reading", &shown))?;
                if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
                    return Err(HostFsError::NotAFile { path: shown });
                }
                Ok(File::from(fd))
            }
            Err(Errno::LOOP) => Err(match self.link_target(name) {
                Some(target) => HostFsError::Link {
                    path: shown,
                    target,
                },
                None => io("opening", &shown)(Errno::LOOP),
            }),
            Err(e) => Err(io("opening", &shown)(e)),
        }
    }

    /// Makes the symbolic link `name` -> `target`, verbatim (nothing is followed).
    pub fn symlink(&self, target: &Path, name: &OsStr) -> Result<()> {
        let shown = self.path.join(name);
        check_name(name, &shown)?;
        match rustix::fs::symlinkat(target, &self.fd, name) {
            Ok(()) => Ok(()),
            Err(Errno::EXIST) => Err(HostFsError::Exists { path: shown }),
            Err(e) => Err(io("making the link", &shown)(e)),
        }
    }

    /// Removes the file, link or (empty) folder `name` in this folder.
    pub fn remove(&self, name: &OsStr, folder: bool) -> Result<()> {
        let shown = self.path.join(name);
        check_name(name, &shown)?;
        let flags = if folder {
            AtFlags::REMOVEDIR
        } else {
            AtFlags::empty()
        };
        rustix::fs::unlinkat(&self.fd, name, flags).map_err(io("removing", &shown))
    }

    /// Opens the folder at `relative` (plain names only) below this one, never through
    /// a link.
    pub fn descend(&self, relative: &Path) -> Result<Dir> {
        let mut dir = Dir {
            fd: self.fd.try_clone().map_err(|source| HostFsError::Io {
                action: "opening",
                path: self.path.clone(),
                source,
            })?,
            path: self.path.clone(),
        };
        for component in relative.components() {
            match component {
                Component::Normal(name) => dir = dir.child(name, false)?.0,
                Component::CurDir => {}
                _ => {
                    return Err(HostFsError::BadName {
                        path: relative.to_path_buf(),
                    })
                }
            }
        }
        Ok(dir)
    }

    /// The names in this folder (without `.` and `..`), sorted.
    pub fn names(&self) -> Result<Vec<OsString>> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&self.fd, ".", flags, Mode::empty())
            .map_err(io("listing", &self.path))?;
        let mut names = Vec::new();
        for entry in rustix::fs::Dir::read_from(&fd).map_err(io("listing", &self.path))? {
            let entry = entry.map_err(io("listing", &self.path))?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(OsStr::from_bytes(name).to_os_string());
            }
        }
        names.sort();
        Ok(names)
    }

    /// The folder's own status (mode, times).
    pub fn metadata(&self) -> Result<rustix::fs::Stat> {
        rustix::fs::fstat(&self.fd).map_err(io("reading", &self.path))
    }

    /// What `name` in this folder is, not following a link.
    pub fn stat(&self, name: &OsStr) -> Result<rustix::fs::Stat> {
        let shown = self.path.join(name);
        check_name(name, &shown)?;
        rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW).map_err(io("reading", &shown))
    }

    /// Whether the link at `relative` (below this folder) stays inside this folder when
    /// the filesystem resolves it, every link on the way included.
    pub fn link_target_inside(&self, relative: &Path) -> LinkCheck {
        resolve_beneath(&self.fd, relative)
    }
}

/// Where a link leads, judged by resolving it as the filesystem does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkCheck {
    /// It resolves to something inside the folder.
    Inside,
    /// It resolves to something outside (or to an absolute path).
    Outside,
    /// It leads nowhere now (a missing target, a loop).
    Dangling,
    /// The kernel cannot tell (no `openat2`): judge the link by its text.
    Unknown,
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn resolve_beneath(fd: &OwnedFd, relative: &Path) -> LinkCheck {
    use rustix::fs::ResolveFlags;
    let flags = OFlags::PATH | OFlags::CLOEXEC;
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
    // A rename elsewhere on the system during `..` resolution makes the kernel ask
    // for a retry.
    for _ in 0..8 {
        return match rustix::fs::openat2(fd, relative, flags, Mode::empty(), resolve) {
            Ok(_) => LinkCheck::Inside,
            Err(Errno::XDEV) => LinkCheck::Outside,
            Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => LinkCheck::Dangling,
            Err(Errno::AGAIN) => continue,
            Err(_) => LinkCheck::Unknown,
        };
    }
    LinkCheck::Unknown
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn resolve_beneath(_fd: &OwnedFd, _relative: &Path) -> LinkCheck {
    LinkCheck::Unknown
}

/// A path for a message, on one line whatever it holds: the sandbox picks names, so
/// control characters (a line break that fakes another message, an escape sequence) are
/// written as escapes (`\n`, `\x1b`, `\u{9b}`). Front ends neutralise the rest.
pub fn shown(path: &Path) -> String {
    let text = path.to_string_lossy();
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{0}'..='\u{1f}' | '\u{7f}' => out.push_str(&format!("\\x{:02x}", c as u32)),
            '\u{80}'..='\u{9f}' => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// A single plain name: not empty, not `.` or `..`, no `/`, no NUL.
fn check_name(name: &OsStr, shown: &Path) -> Result<()> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes == b"." || bytes == b".." || bytes.contains(&b'/') {
        return Err(HostFsError::BadName {
            path: shown.to_path_buf(),
        });
    }
    Ok(())
}

/// Whether a name oi made up is from the safe alphabet: ASCII letters, digits, `.`,
/// `-`, `_`; not `.`, `..` or starting with `-`; at most 255 bytes.
pub fn is_safe_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.starts_with('-')
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// A hard-to-guess token for temporary names (exclusive creation makes a guessed one
/// harmless: the next number is taken).
fn unique() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    hasher.write_u128(nanos);
    format!("{:016x}", hasher.finish())
}

/// Splits a path the user gave for a file into its folder and its name.
pub fn split(path: &Path) -> Result<(PathBuf, OsString)> {
    let name = match path.components().next_back() {
        Some(Component::Normal(name)) if !path.as_os_str().as_bytes().ends_with(b"/") => name,
        _ => {
            return Err(HostFsError::BadName {
                path: path.to_path_buf(),
            })
        }
    };
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Ok((parent.to_path_buf(), name.to_os_string()))
}

/// Writes `contents` to the file the user named at `path`, replacing what has that
/// name (see [`Dir::replace`]); the folder must exist and no component may be a link.
pub fn save(path: &Path, contents: &[u8]) -> Result<()> {
    let (folder, name) = split(path)?;
    Dir::open(&folder)?.replace(&name, |file| file.write_all(contents))
}

/// Reads the file at `path`, refusing a link in any component.
///
/// At most `max` bytes: a planted file may claim any size (a sparse one costs no disk).
pub fn read_to_string(path: &Path, max: u64) -> Result<String> {
    use std::io::Read;
    let (folder, name) = split(path)?;
    let file = Dir::open(&folder)?.open_file(&name)?;
    let io = |source| HostFsError::Io {
        action: "reading",
        path: path.to_path_buf(),
        source,
    };
    let mut text = String::new();
    file.take(max + 1).read_to_string(&mut text).map_err(io)?;
    if text.len() as u64 > max {
        return Err(io(std::io::Error::other(format!(
            "larger than the {} MiB oi reads",
            max >> 20
        ))));
    }
    Ok(text)
}

/// The file extension for an image format, from a fixed list (`png`, `jpeg`, `gif`,
/// `webp`, `svg`); `None` for anything else, which is then not saved. An empty format
/// is PNG (what the runner sends). A leading `base64.` (LMC's image formats) is ignored.
pub fn image_extension(format: &str) -> Option<&'static str> {
    let format = format.strip_prefix("base64.").unwrap_or(format);
    Some(match format.to_ascii_lowercase().as_str() {
        "" | "png" | "image/png" => "png",
        "jpeg" | "jpg" | "image/jpeg" => "jpg",
        "gif" | "image/gif" => "gif",
        "webp" | "image/webp" => "webp",
        "svg" | "svg+xml" | "image/svg+xml" => "svg",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn victim(dir: &Path) -> PathBuf {
        let victim = dir.join("victim.txt");
        std::fs::write(&victim, "precious").unwrap();
        victim
    }

    #[test]
    fn folders_are_opened_without_following_links() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::create_dir(tmp.path().join("real")).unwrap();
        symlink(&outside, tmp.path().join("real/link")).unwrap();
        let err = Dir::create_all(&tmp.path().join("real/link/deeper")).unwrap_err();
        assert!(
            matches!(&err, HostFsError::Link { path, target } if path.ends_with("real/link") && target == &outside),
            "{err}"
        );
        assert!(err.to_string().contains("is a symbolic link"), "{err}");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        let dir = Dir::create_all(&tmp.path().join("real/a/b")).unwrap();
        assert!(tmp.path().join("real/a/b").is_dir());
        assert!(dir.path().ends_with("real/a/b"));
        // `..` is the real parent.
        Dir::open(&tmp.path().join("real/a/../a/b")).unwrap();
        std::fs::write(tmp.path().join("file"), "").unwrap();
        assert!(matches!(
            Dir::open(&tmp.path().join("file")).unwrap_err(),
            HostFsError::NotAFolder { .. }
        ));
    }

    #[test]
    fn new_files_never_open_what_is_there() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = victim(tmp.path());
        let dir = Dir::open(tmp.path()).unwrap();
        symlink(&victim, tmp.path().join("planted")).unwrap();
        symlink(tmp.path().join("nowhere"), tmp.path().join("dangling")).unwrap();
        std::fs::hard_link(&victim, tmp.path().join("hard")).unwrap();
        for name in ["planted", "dangling", "hard", "victim.txt"] {
            let err = dir.create_new(OsStr::new(name), 0o644).unwrap_err();
            assert!(err.is_exists(), "{name}: {err}");
        }
        assert!(!tmp.path().join("nowhere").exists());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        let (mut file, name) = dir.create_numbered(|n| format!("planted-{n}.png")).unwrap();
        file.write_all(b"x").unwrap();
        assert_eq!(name, "planted-1.png");
        symlink(&victim, tmp.path().join("img-1.png")).unwrap();
        let (_, name) = dir.create_numbered(|n| format!("img-{n}.png")).unwrap();
        assert_eq!(name, "img-2.png");
        // Permission bits only.
        use std::os::unix::fs::PermissionsExt;
        dir.create_new(OsStr::new("suid"), 0o6755).unwrap();
        let mode = std::fs::metadata(tmp.path().join("suid"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7000, 0);
        for bad in ["", ".", "..", "a/b"] {
            assert!(matches!(
                dir.create_new(OsStr::new(bad), 0o644).unwrap_err(),
                HostFsError::BadName { .. }
            ));
        }
    }

    #[test]
    fn a_named_file_is_replaced_not_written_through() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = victim(tmp.path());
        let saved = tmp.path().join("messages.json");
        symlink(&victim, &saved).unwrap();
        save(&saved, b"[]").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert!(!std::fs::symlink_metadata(&saved).unwrap().is_symlink());
        assert_eq!(std::fs::read_to_string(&saved).unwrap(), "[]");
        // An ordinary existing file is replaced too; no temporary file is left.
        save(&saved, b"[1]").unwrap();
        assert_eq!(std::fs::read_to_string(&saved).unwrap(), "[1]");
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 2);
        // A folder with that name is an error, and nothing is left behind.
        std::fs::create_dir(tmp.path().join("dir.json")).unwrap();
        assert!(save(&tmp.path().join("dir.json"), b"x").is_err());
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 3);
        // Reading refuses a link, and a pipe (which would never end).
        symlink(&victim, tmp.path().join("in.json")).unwrap();
        let err = read_to_string(&tmp.path().join("in.json"), 1 << 20).unwrap_err();
        assert!(matches!(err, HostFsError::Link { .. }), "{err}");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            tmp.path().join("fifo.json"),
            FileType::Fifo,
            Mode::from_bits_truncate(0o644),
            0,
        )
        .unwrap();
        let err = read_to_string(&tmp.path().join("fifo.json"), 1 << 20).unwrap_err();
        assert!(matches!(err, HostFsError::NotAFile { .. }), "{err}");
        assert_eq!(read_to_string(&saved, 1 << 20).unwrap(), "[1]");
        assert!(read_to_string(&saved, 2).is_err(), "over the bound");
    }

    #[test]
    fn links_are_judged_by_where_they_resolve() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("dest");
        std::fs::create_dir_all(root.join("a/b/c/d")).unwrap();
        symlink("../../../..", root.join("a/b/c/d/up")).unwrap();
        symlink("a/b/c/d/up/../../../..", root.join("esc")).unwrap();
        symlink("a/b/c/d/up", root.join("top")).unwrap();
        symlink("/etc", root.join("abs")).unwrap();
        symlink("missing", root.join("dangling")).unwrap();
        let dir = Dir::open(&root).unwrap();
        let check = |p: &str| dir.link_target_inside(Path::new(p));
        assert_eq!(check("a/b/c/d/up"), LinkCheck::Inside);
        assert_eq!(check("top"), LinkCheck::Inside);
        assert_eq!(check("esc"), LinkCheck::Outside);
        assert_eq!(check("abs"), LinkCheck::Outside);
        assert_eq!(check("dangling"), LinkCheck::Dangling);
    }

    #[test]
    fn paths_in_messages_stay_on_one_line() {
        assert_eq!(
            shown(Path::new("a\nb\x1b]0;t\x07\u{9b}c")),
            "a\\nb\\x1b]0;t\\x07\\u{9b}c"
        );
        let err = HostFsError::Exists {
            path: PathBuf::from("x\noi: image saved to ./fine.png"),
        };
        assert_eq!(
            err.to_string(),
            "x\\noi: image saved to ./fine.png exists already"
        );
    }

    #[test]
    fn names_and_formats() {
        assert!(is_safe_name("oi-image-1.png"));
        assert!(!is_safe_name("../x"));
        assert!(!is_safe_name("a b"));
        assert!(!is_safe_name("-rf"));
        assert_eq!(image_extension("png"), Some("png"));
        assert_eq!(image_extension("base64.jpeg"), Some("jpg"));
        assert_eq!(image_extension(""), Some("png"));
        assert_eq!(image_extension("png/../../x"), None);
        assert_eq!(image_extension("exe"), None);
        let (folder, name) = split(Path::new("out.json")).unwrap();
        assert_eq!(
            (folder.as_path(), name.as_os_str()),
            (Path::new("."), OsStr::new("out.json"))
        );
        let (folder, _) = split(Path::new("/tmp/x/out.json")).unwrap();
        assert_eq!(folder, Path::new("/tmp/x"));
        assert!(split(Path::new("dir/")).is_err());
        assert!(split(Path::new("..")).is_err());
    }
}
