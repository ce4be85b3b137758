//! The user's folder in the sandbox (rw, ro, none, copy) and files copied in and out
//! through Docker's archive API, including archives that try to escape.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use oi::core::code_interpreter::{Backend, Workspace};

use super::{assert_ok, run, session_with};

/// A host folder the sandbox's user (1000) owns, with one file in it.
fn project() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("data.csv"), "a,b\n1,2\n").unwrap();
    for path in [dir.path().to_path_buf(), dir.path().join("data.csv")] {
        std::os::unix::fs::chown(&path, Some(1000), Some(1000)).unwrap();
    }
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rw_writes_reach_the_host_as_the_sandbox_user() {
    let dir = project();
    let ws = Workspace::ReadWrite(dir.path().to_path_buf());
    let Some((_engine, mut s)) = session_with(Backend::Docker, |c| c.workspace = ws).await else {
        return;
    };
    let out = run(
        &mut s,
        "python",
        "print(open('data.csv').read().splitlines()[1])\n_ = open('made.txt', 'w').write('new')",
    )
    .await;
    assert_ok(&out);
    assert_eq!(out.stdout, "1,2\n");
    let made = dir.path().join("made.txt");
    assert_eq!(std::fs::read_to_string(&made).unwrap(), "new");
    assert_eq!(
        std::fs::metadata(&made).unwrap().uid(),
        1000,
        "owned by the sandbox's user"
    );
    s.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ro_refuses_writes_and_none_shows_nothing() {
    let dir = project();
    let ws = Workspace::ReadOnly(dir.path().to_path_buf());
    let Some((_engine, mut s)) = session_with(Backend::Docker, |c| c.workspace = ws).await else {
        return;
    };
    let out = run(&mut s, "shell", "cat data.csv | wc -l; touch new.txt").await;
    assert_eq!(out.stdout, "2\n");
    assert!(out.stderr.contains("Read-only file system"), "{out:?}");
    assert!(!dir.path().join("new.txt").exists());
    s.close().await.unwrap();

    let Some((_engine, mut s)) =
        session_with(Backend::Docker, |c| c.workspace = Workspace::Empty).await
    else {
        return;
    };
    let out = run(
        &mut s,
        "shell",
        "pwd; ls -A | wc -l; touch mine.txt && echo writable",
    )
    .await;
    assert_eq!(out.stdout, "/workspace\n0\nwritable\n", "{out:?}");
    s.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_keeps_changes_inside_until_copied_out() {
    let dir = project();
    let ws = Workspace::Copy(dir.path().to_path_buf());
    let Some((_engine, mut s)) = session_with(Backend::Docker, |c| c.workspace = ws).await else {
        return;
    };
    let out = run(
        &mut s,
        "shell",
        "cat data.csv; echo 3,4 >> data.csv; mkdir -p out && echo done > out/result.txt",
    )
    .await;
    assert_ok(&out);
    assert_eq!(out.stdout, "a,b\n1,2\n");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("data.csv")).unwrap(),
        "a,b\n1,2\n",
        "the host copy is untouched"
    );
    let dest = tempfile::tempdir().unwrap();
    let written = s.download("out", dest.path()).await.unwrap();
    assert_eq!(written, vec![dest.path().join("out/result.txt")]);
    assert_eq!(
        std::fs::read_to_string(dest.path().join("out/result.txt")).unwrap(),
        "done\n"
    );
    s.download("data.csv", dest.path()).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(dest.path().join("data.csv")).unwrap(),
        "a,b\n1,2\n3,4\n"
    );
    s.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_go_in_and_escapes_coming_out_are_refused() {
    let Some((_engine, mut s)) =
        session_with(Backend::Docker, |c| c.workspace = Workspace::Empty).await
    else {
        return;
    };
    let host = tempfile::tempdir().unwrap();
    let folder = host.path().join("inputs");
    std::fs::create_dir_all(folder.join("deep")).unwrap();
    std::fs::write(folder.join("deep/x.txt"), "deep file").unwrap();
    s.upload(&folder, ".").await.unwrap();
    let out = run(
        &mut s,
        "shell",
        "cat inputs/deep/x.txt; echo; stat -c %u inputs/deep/x.txt; echo more >> inputs/deep/x.txt",
    )
    .await;
    assert_ok(&out);
    assert_eq!(
        out.stdout, "deep file\n1000\n",
        "uploaded files belong to the sandbox's user"
    );

    // Links planted by sandbox code cannot lead a download out of its folder.
    assert_ok(
        &run(
            &mut s,
            "shell",
            "ln -s /etc/passwd abs; ln -s ../../.. up; mkdir d; ln -s / d/root",
        )
        .await,
    );
    let dest = tempfile::tempdir().unwrap();
    for (path, why) in [
        ("abs", "refused the link"),
        ("up", "refused the link"),
        ("d", "refused the link"),
        ("../etc/passwd", "outside the workspace"),
        ("/etc/shadow", "outside the workspace"),
        ("missing.txt", "does not exist"),
    ] {
        let err = s.download(path, dest.path()).await.unwrap_err().to_string();
        assert!(err.contains(why), "{path}: {err}");
    }
    assert_eq!(
        std::fs::read_dir(dest.path()).unwrap().count(),
        0,
        "nothing was written"
    );
    let err = s
        .upload(Path::new("/nonexistent/file"), ".")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot read /nonexistent/file"), "{err}");
    s.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oi_sandbox_cp_copies_both_ways() {
    let Some((_engine, mut s)) =
        session_with(Backend::Docker, |c| c.workspace = Workspace::Empty).await
    else {
        return;
    };
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("in.txt"), "to the sandbox\n").unwrap();
    let oi = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_oi"))
            .args(args)
            .current_dir(host.path())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let session = s.id().to_string();
    let (code, _, err) = oi(&["sandbox", "cp", "in.txt", &format!("{session}:")]);
    assert_eq!(code, Some(0), "{err}");
    let out = run(&mut s, "shell", "cat in.txt && echo back > out.txt").await;
    assert_eq!(out.stdout, "to the sandbox\n");
    let (code, stdout, err) = oi(&["sandbox", "cp", &format!("{session}:out.txt"), "got"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(stdout.contains("got/out.txt"), "{stdout}");
    assert_eq!(
        std::fs::read_to_string(host.path().join("got/out.txt")).unwrap(),
        "back\n"
    );
    let (code, _, err) = oi(&["sandbox", "cp", &format!("{session}:/etc/passwd"), "got"]);
    assert_eq!(code, Some(125), "{err}");
    assert!(err.contains("outside the workspace"), "{err}");
    let (code, _, err) = oi(&["sandbox", "cp", "a", "b"]);
    assert_eq!(code, Some(2), "{err}");
    s.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_copies_stream_with_bounded_memory() {
    let Some((_engine, mut s)) =
        session_with(Backend::Docker, |c| c.workspace = Workspace::Empty).await
    else {
        return;
    };
    let host = tempfile::tempdir().unwrap();
    let size: u64 = 200 << 20;
    {
        use std::io::Write;
        let mut f = std::fs::File::create(host.path().join("big.bin")).unwrap();
        let chunk = vec![7u8; 1 << 20];
        for _ in 0..(size >> 20) {
            f.write_all(&chunk).unwrap();
        }
    }
    let session = s.id().to_string();
    // `oi sandbox cp` both ways, its peak memory sampled while it runs.
    let copy = |args: Vec<String>| {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_oi"))
            .args(&args)
            .current_dir(host.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut peak = 0;
        while child.try_wait().unwrap().is_none() {
            if let Some(rss) = super::cli::peak_rss(child.id()) {
                peak = peak.max(rss);
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(child.wait().unwrap().success(), "{args:?}");
        peak
    };
    let peak_in = tokio::task::block_in_place(|| {
        copy(vec![
            "sandbox".into(),
            "cp".into(),
            "big.bin".into(),
            format!("{session}:"),
        ])
    });
    let out = run(&mut s, "shell", "stat -c %s big.bin").await;
    assert_eq!(out.stdout.trim(), size.to_string());
    let peak_out = tokio::task::block_in_place(|| {
        copy(vec![
            "sandbox".into(),
            "cp".into(),
            format!("{session}:big.bin"),
            "back".into(),
        ])
    });
    assert_eq!(
        std::fs::metadata(host.path().join("back/big.bin"))
            .unwrap()
            .len(),
        size
    );
    for (way, peak) in [("in", peak_in), ("out", peak_out)] {
        assert!(
            peak > 0 && peak < 100 << 20,
            "copying {way}: oi's peak memory was {} MiB",
            peak >> 20
        );
    }
    s.close().await.unwrap();
}

/// A tar archive in a temporary file, written entry by entry as a remote front end
/// (or a hostile one) might send it.
fn archive(build: impl FnOnce(&mut tar::Builder<std::fs::File>)) -> std::fs::File {
    use std::io::Seek;
    let mut builder = tar::Builder::new(tempfile::tempfile().unwrap());
    build(&mut builder);
    let mut file = builder.into_inner().unwrap();
    file.rewind().unwrap();
    file
}

fn entry(
    b: &mut tar::Builder<std::fs::File>,
    kind: tar::EntryType,
    path: &str,
    mode: u32,
    data: &[u8],
    link: Option<&str>,
) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(data.len() as u64);
    if let Some(link) = link {
        h.set_link_name(link).unwrap();
    }
    // Written raw: `set_path` refuses `..`, as a hostile archive would not.
    let name = h.as_old_mut().name.as_mut();
    name[..path.len()].copy_from_slice(path.as_bytes());
    h.set_cksum();
    b.append(&h, data).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archives_go_in_as_the_sandbox_user_and_come_out_bounded() {
    use oi::core::code_interpreter::{files, SandboxError};
    use tar::EntryType::{Char, Directory, Link, Regular, Symlink};
    let Some((_engine, mut s)) =
        session_with(Backend::Docker, |c| c.workspace = Workspace::Empty).await
    else {
        return;
    };
    // Root-owned, a setuid file: what the archive says of itself does not survive.
    let tool = b"#!/bin/sh\necho hi\n";
    let sent = s
        .put_archive(
            ".",
            archive(|b| {
                entry(b, Directory, "in/", 0o755, b"", None);
                entry(b, Regular, "in/tool", 0o4755, tool, None);
                entry(b, Symlink, "in/link", 0o777, b"", Some("tool"));
            }),
        )
        .await
        .unwrap();
    assert!(sent > tool.len() as u64, "{sent}");
    let out = run(
        &mut s,
        "shell",
        "stat -c '%u:%g %a' in in/tool; readlink in/link; in/link",
    )
    .await;
    assert_ok(&out);
    assert_eq!(out.stdout, "1000:1000 755\n1000:1000 755\ntool\nhi\n");

    // Out and back: the same files; past the limit nothing is taken.
    let got = s.get_archive("in", 1 << 20).await.unwrap();
    let dest = tempfile::tempdir().unwrap();
    files::unpack(got, dest.path()).unwrap();
    assert_eq!(std::fs::read(dest.path().join("in/tool")).unwrap(), tool);
    assert_eq!(
        std::fs::read_link(dest.path().join("in/link")).unwrap(),
        Path::new("tool")
    );
    let err = s.get_archive("in", 100).await.unwrap_err();
    assert!(
        matches!(&err, SandboxError::CopyTooLarge { path, limit: 100 } if path == "/workspace/in"),
        "{err:?}"
    );

    // Refused going in: names that climb or are absolute, hard links, devices; and a
    // destination outside the workspace. Nothing lands.
    for (bad, why) in [
        (
            archive(|b| entry(b, Regular, "../evil", 0o644, b"x", None)),
            "plain relative names",
        ),
        (
            archive(|b| entry(b, Regular, "/evil", 0o644, b"x", None)),
            "plain relative names",
        ),
        (
            archive(|b| entry(b, Link, "hard", 0o644, b"", Some("in/tool"))),
            "not copied in",
        ),
        (
            archive(|b| entry(b, Char, "tty", 0o666, b"", None)),
            "not copied in",
        ),
    ] {
        let err = s.put_archive(".", bad).await.unwrap_err().to_string();
        assert!(err.contains("refused") && err.contains(why), "{err}");
    }
    let err = s
        .put_archive(
            "../etc",
            archive(|b| entry(b, Regular, "f", 0o644, b"x", None)),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("outside the workspace"), "{err}");
    let out = run(&mut s, "shell", "ls -A; ls -A /").await;
    assert!(out.stdout.starts_with("in\n"), "{out:?}");
    assert!(
        !out.stdout.contains("evil") && !out.stdout.contains("tty"),
        "{out:?}"
    );

    // A link the sandbox plants comes out in the archive; unpacking it refuses it.
    assert_ok(&run(&mut s, "shell", "ln -s /etc/passwd in/abs").await);
    let got = s.get_archive("in", 1 << 20).await.unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let err = files::unpack(got, elsewhere.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("refused the link"), "{err}");
    assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
    s.close().await.unwrap();
}
