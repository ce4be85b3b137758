//! Trust-boundary regressions: see mod.rs. What oi writes on the host from sandbox
//! data: figures, saved conversations and notebooks are never written through a link or
//! a swapped folder the sandbox planted (D1); copies out of a sandbox never land outside
//! their destination, whatever links the archive or the destination holds (D12); the
//! names of copied files reach the terminal neutralised (D3).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use oi::core::code_interpreter::{Backend, Workspace};
use oi::core::hostfs::{self, HostFsError};

use super::terminal::Home;
use crate::suite::llm_server::{openai, ScriptedServer};
use crate::suite::{assert_ok, image, run, session_with};

/// A file outside the project that sandboxed code would like to overwrite, with what
/// it holds and when it was last written.
struct Victim {
    path: PathBuf,
    modified: std::time::SystemTime,
    inode: u64,
}

impl Victim {
    fn new(dir: &Path) -> Victim {
        let path = dir.join("victim.txt");
        std::fs::write(&path, "precious host data\n").unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        Victim {
            path,
            modified: meta.modified().unwrap(),
            inode: meta.ino(),
        }
    }

    fn assert_untouched(&self) {
        assert_eq!(
            std::fs::read_to_string(&self.path).unwrap(),
            "precious host data\n",
            "the victim's contents changed"
        );
        let meta = std::fs::metadata(&self.path).unwrap();
        assert_eq!(
            meta.modified().unwrap(),
            self.modified,
            "the victim was written"
        );
        assert_eq!(meta.ino(), self.inode);
    }
}

fn regular(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_file())
}

/// Everything below `root`, as sorted relative paths (links not followed).
fn tree(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(at) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&at) else {
            continue;
        };
        for entry in entries {
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

#[test]
fn d1_image_write_does_not_follow_planted_link() {
    if image().is_none() {
        return;
    }
    let home = Home::new();
    let victim = Victim::new(home.path());
    // The code knows how oi names figures and plants a link for every second to come.
    let code = format!(
        "import os, time, oi_kernel\n\
         now = int(time.time())\n\
         for s in range(now - 5, now + 120):\n    os.symlink({victim:?}, f'oi-{{s}}-1-1.png')\n\
         oi_kernel.emit_png(b'figure bytes')",
        victim = victim.path.display().to_string()
    );
    let out = home.oi(None, &["exec", "-c", &code]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    victim.assert_untouched();
    // The figure was still saved, under the next free name.
    let saved = stderr
        .lines()
        .find_map(|l| l.strip_prefix("oi: image saved to "))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(
        saved.starts_with("./oi-") && saved.ends_with("-1-1-2.png"),
        "{saved}"
    );
    let saved = home.project().join(saved);
    assert!(regular(&saved));
    assert_eq!(std::fs::read(&saved).unwrap(), b"figure bytes");
}

#[test]
fn d1_image_format_cannot_name_a_path() {
    if image().is_none() {
        return;
    }
    let home = Home::new();
    // Folders named like oi's figures so that `oi-…png/../../escaped` would resolve,
    // and a format that is a path.
    let code = "import base64, os, time, oi_kernel\n\
                now = int(time.time())\n\
                for s in range(now - 5, now + 120):\n    os.makedirs(f'oi-{s}-1-1.png')\n\
                oi_kernel._report({'t': 'image', 'format': 'png/../../escaped', \
                'data': base64.b64encode(b'pwned').decode()})";
    let out = home.oi(None, &["exec", "-c", code]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // Refused by the runner already (the host's own check, which names the format, is
    // `hostfs::tests` and `protocol`'s: a second line behind this one).
    assert!(
        stderr.contains("oi: an image in an unsupported format was not sent"),
        "{stderr}"
    );
    assert!(!home.path().join("escaped").exists());
    let made: Vec<_> = tree(&home.project())
        .into_iter()
        .filter(|p| !p.starts_with("oi-"))
        .collect();
    assert!(made.is_empty(), "{made:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn d1_chat_image_and_saved_files_do_not_follow_planted_links() {
    if image().is_none() {
        return;
    }
    let home = Home::new();
    let victim = Victim::new(home.path());
    let code = format!(
        "import os, oi_kernel\n\
         for name in ['oi-image-1.png', 'messages.json', 'conversation.ipynb']:\n    \
         os.symlink({victim:?}, name)\n\
         oi_kernel.emit_png(b'figure bytes')",
        victim = victim.path.display().to_string()
    );
    let server = ScriptedServer::start(vec![
        openai::execute("python", &code),
        openai::text(&["Planted."]),
    ])
    .await;
    let transcript = tokio::task::block_in_place(|| {
        let mut p = home.chat(&server, &[]);
        p.expect("> ");
        p.send_line("plant");
        p.expect("Run this code?");
        p.send_line("y");
        p.expect("Planted.");
        p.expect("> ");
        p.send_line("%save_message");
        p.expect(expectrl::Regex(r"Saved \d+ messages to messages\.json\."));
        p.expect("> ");
        p.send_line("%jupyter");
        p.expect("Exported the conversation to conversation.ipynb.");
        p.expect("> ");
        p.leave();
        p.text()
    });
    victim.assert_untouched();
    let project = home.project();
    let figure = project.join("oi-image-2.png");
    assert!(
        transcript.contains(&format!("[image saved to {}]", figure.display())),
        "{transcript}"
    );
    assert!(regular(&figure));
    assert_eq!(std::fs::read(&figure).unwrap(), b"figure bytes");
    // The planted links were replaced by the files, not written through.
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(project.join("messages.json")).unwrap())
            .unwrap();
    assert!(saved.as_array().unwrap().len() >= 4, "{saved}");
    let notebook: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(project.join("conversation.ipynb")).unwrap())
            .unwrap();
    assert_eq!(notebook["nbformat"], 4);
    for name in ["messages.json", "conversation.ipynb"] {
        assert!(regular(&project.join(name)), "{name}");
    }
    assert!(std::fs::symlink_metadata(project.join("oi-image-1.png"))
        .unwrap()
        .is_symlink());
}

/// Swaps `name` and `other` (a folder and a link to the victim's folder) as fast as it
/// can until stopped: the sandbox's side of a race against a write.
fn swapper(name: PathBuf, other: PathBuf, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut swaps = 0;
        while !stop.load(Ordering::Relaxed) {
            rustix::fs::renameat_with(
                rustix::fs::CWD,
                &name,
                rustix::fs::CWD,
                &other,
                rustix::fs::RenameFlags::EXCHANGE,
            )
            .unwrap();
            swaps += 1;
        }
        swaps
    })
}

#[test]
fn d1_a_swapped_folder_races_the_write() {
    let home = tempfile::tempdir().unwrap();
    let outside = home.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let work = home.path().join("work");
    std::fs::create_dir_all(work.join("figs")).unwrap();
    std::os::unix::fs::symlink(&outside, work.join("figs-swap")).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let swaps = swapper(work.join("figs"), work.join("figs-swap"), stop.clone());
    let (mut written, mut refused) = (0, 0);
    for i in 0..3000 {
        let figs = work.join("figs");
        let result = hostfs::Dir::create_all(&figs).and_then(|dir| {
            let (mut file, _) = dir.create_numbered(|n| format!("oi-image-{n}.png"))?;
            std::io::Write::write_all(&mut file, b"figure").unwrap();
            hostfs::save(&figs.join(format!("saved-{i}.json")), b"[]")
        });
        match result {
            Ok(()) => written += 1,
            Err(HostFsError::Link { .. }) => refused += 1,
            // The name was swapped between opening the folder and saving into it.
            Err(err @ HostFsError::Io { .. }) => {
                assert!(err.to_string().contains("saved-"), "{err}");
                refused += 1
            }
            Err(other) => panic!("{other}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swaps.join().unwrap();
    assert!(
        swaps > 100 && written > 0,
        "{swaps} swaps, {written} writes"
    );
    assert_eq!(tree(&outside), Vec::<String>::new(), "{refused} refused");
    // Everything written is in the real folder, whichever name it has now.
    let real = if work.join("figs").symlink_metadata().unwrap().is_dir() {
        work.join("figs")
    } else {
        work.join("figs-swap")
    };
    assert!(tree(&real).len() >= written * 2, "{:?}", tree(&real).len());
}

/// The same race against the real binary: `oi exec --image-dir figs` saves 39 figures
/// while the folder is swapped with a link; none lands in the victim's folder.
#[test]
fn d1_a_swapped_image_folder_races_oi_exec() {
    if image().is_none() {
        return;
    }
    let home = Home::new();
    let outside = home.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let project = home.project();
    std::fs::create_dir(project.join("figs")).unwrap();
    std::os::unix::fs::symlink(&outside, project.join("figs-swap")).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let swaps = swapper(
        project.join("figs"),
        project.join("figs-swap"),
        stop.clone(),
    );
    // Three blocks of 13 figures (a block may hand over at most 16).
    let code = "import oi_kernel\nfor i in range(13):\n    oi_kernel.emit_png(b'figure %d' % i)";
    let out = home
        .oi(
            None,
            &[
                "exec",
                "--image-dir",
                "figs",
                "-c",
                code,
                "-c",
                code,
                "-c",
                code,
            ],
        )
        .output()
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    swaps.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(tree(&outside), Vec::<String>::new(), "{stderr}");
    let saved = stderr.matches("oi: image saved to figs/").count();
    let refused = stderr
        .matches("oi: the image was not saved: saving an image: figs is a symbolic link")
        .count();
    assert_eq!(saved + refused, 39, "{stderr}");
}

/// The report's chain (`a/b/c/d/up -> ../../../..`, `esc -> a/b/c/d/up/../../../..`)
/// copied out twice, a link the sandbox planted in the destination (a mounted
/// workspace), and a folder swapped for a link between two copies. Entry-order
/// variants of the chain are in `code_interpreter::files`'s unit tests (Docker's
/// archive has one order).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d12_link_chains_cannot_lead_a_copy_outside() {
    let home = Home::new();
    let project = home.project();
    let ws = Workspace::ReadWrite(project.clone());
    let Some((_engine, mut s)) = session_with(Backend::Docker, |c| c.workspace = ws).await else {
        return;
    };
    let outside = home.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    // Three levels above `dl/deep` is the home folder: where `esc` leads.
    let dest = project.join("dl/deep");
    let before = tree(home.path());

    // 1. The chain, twice (the second time `esc` is a folder with more inside).
    assert_ok(
        &run(
            &mut s,
            "shell",
            "mkdir -p out/a/b/c/d && ln -s ../../../.. out/a/b/c/d/up \
             && ln -s a/b/c/d/up/../../../.. out/esc && echo x > out/a/file.txt",
        )
        .await,
    );
    let err = s.download("out", &dest).await.unwrap_err().to_string();
    assert!(
        err.contains("refused the link `out/esc` -> `a/b/c/d/up/../../../..`"),
        "{err}"
    );
    assert!(!project.join("dl").exists(), "the copy was taken back");
    assert_ok(&run(&mut s, "shell", "rm out/esc && mkdir -p out/esc/pwned").await);
    s.download("out", &dest).await.unwrap();
    assert!(dest.join("out/esc/pwned").is_dir());
    assert!(!home.path().join("pwned").exists());

    // 2. The sandbox plants links in a destination (it can: the destination is in its
    //    workspace) and copies a folder of the same name through them.
    let dest = project.join("dl2/deep");
    let planted = format!(
        "rm -rf out && mkdir -p dl2/deep/out && ln -s {outside:?} dl2/deep/out/esc \
         && ln -s ../../../.. dl2/deep/out/up && mkdir -p out/esc/pwned out/up/pwned \
         && echo x > out/esc/f.txt",
        outside = outside.display().to_string()
    );
    assert_ok(&run(&mut s, "shell", &planted).await);
    let err = s.download("out", &dest).await.unwrap_err().to_string();
    assert!(
        err.contains("would be written through the link") && err.contains("dl2/deep/out/"),
        "{err}"
    );
    // Through `oi sandbox cp` too, with the same refusal and the exit code of a
    // sandbox failure.
    let cp = home
        .oi(
            None,
            &["sandbox", "cp", &format!("{}:out", s.id()), "dl2/deep"],
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&cp.stderr);
    assert_eq!(cp.status.code(), Some(125), "{stderr}");
    assert!(
        stderr.contains("would be written through the link"),
        "{stderr}"
    );

    // 3. A folder copied out once, then swapped for a link before the second copy.
    //    (What oi writes is the user's; as root here, hand it to the sandbox's user as
    //    it would be when oi runs as that user.)
    let dest = project.join("dl3/deep");
    assert_ok(
        &run(
            &mut s,
            "shell",
            "rm -rf out && mkdir -p out/sub && echo 1 > out/sub/a.txt",
        )
        .await,
    );
    s.download("out", &dest).await.unwrap();
    let chown = std::process::Command::new("chown")
        .args(["-R", "1000:1000"])
        .arg(project.join("dl3"))
        .status()
        .unwrap();
    assert!(chown.success());
    let swap = format!(
        "rm -r dl3/deep/out/sub && ln -s {outside:?} dl3/deep/out/sub \
         && rm out/sub/a.txt && mkdir out/sub/new && echo 2 > out/sub/new/b.txt",
        outside = outside.display().to_string()
    );
    assert_ok(&run(&mut s, "shell", &swap).await);
    let err = s.download("out", &dest).await.unwrap_err().to_string();
    assert!(err.contains("would be written through the link"), "{err}");

    // Nothing outside the project changed (oi's own state folders aside).
    assert_eq!(tree(&outside), Vec::<String>::new());
    let outside_project = |paths: Vec<String>| -> Vec<String> {
        paths
            .into_iter()
            .filter(|p| {
                !["project", "config", "data", "state", "cache"]
                    .iter()
                    .any(|d| p.starts_with(d))
            })
            .collect()
    };
    assert_eq!(outside_project(tree(home.path())), outside_project(before));
    s.close().await.unwrap();
}

/// The same property against a destination swapped while the copy runs: a thread
/// keeps exchanging a folder of the destination with a link to the victim's folder.
#[test]
fn d12_a_folder_swapped_during_a_copy_is_never_written_through() {
    use std::io::Cursor;
    let home = tempfile::tempdir().unwrap();
    let outside = home.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let dest = home.path().join("dest");
    std::fs::create_dir_all(dest.join("out/sub")).unwrap();
    std::os::unix::fs::symlink(&outside, dest.join("out/sub-swap")).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let swaps = swapper(
        dest.join("out/sub"),
        dest.join("out/sub-swap"),
        stop.clone(),
    );
    let (mut copied, mut refused) = (0, 0);
    for round in 0..200 {
        let mut builder = tar::Builder::new(Vec::new());
        for i in 0..20 {
            let mut h = tar::Header::new_gnu();
            h.set_size(4);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            h.set_path(format!("out/sub/r{round}/f{i}.txt")).unwrap();
            h.set_cksum();
            builder.append(&h, &b"data"[..]).unwrap();
        }
        let tar = builder.into_inner().unwrap();
        match oi::core::code_interpreter::files::unpack(Cursor::new(tar), &dest) {
            Ok(_) => copied += 1,
            Err(err) => {
                assert!(
                    err.to_string()
                        .contains("would be written through the link"),
                    "{err}"
                );
                refused += 1
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    swaps.join().unwrap();
    assert!(copied + refused == 200 && refused > 0, "{copied} {refused}");
    assert_eq!(tree(&outside), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d3_sandbox_file_names_are_neutralised() {
    let Some((_engine, mut s)) =
        session_with(Backend::Docker, |c| c.workspace = Workspace::Empty).await
    else {
        return;
    };
    // A name with a title sequence and a line break that fakes a line of output, and
    // one whose bidi override shows `exe.txt` for `txt.exe`. (Separate files: the tar
    // reader falls back to the plain header's name, ASCII only, when a PAX path holds
    // a line break.)
    let out = run(
        &mut s,
        "python",
        "import os\nos.mkdir('out')\n\
         open('out/evil\\x1b]0;pwned\\x07\\n[fake] line.txt', 'w').close()\n\
         open('out/rtl\\u202etxt.exe', 'w').close()",
    )
    .await;
    assert_ok(&out);
    let host = tempfile::tempdir().unwrap();
    let cp = std::process::Command::new(env!("CARGO_BIN_EXE_oi"))
        .args(["sandbox", "cp", &format!("{}:out", s.id()), "got"])
        .current_dir(host.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&cp.stdout);
    assert!(
        cp.status.success(),
        "{}",
        String::from_utf8_lossy(&cp.stderr)
    );
    assert_eq!(
        stdout,
        "got/out/evil\\x1b]0;pwned\\x07\\n[fake] line.txt\ngot/out/rtl\\u{202e}txt.exe\n"
    );
    // The files themselves have their real names.
    for name in [
        "evil\x1b]0;pwned\x07\n[fake] line.txt",
        "rtl\u{202e}txt.exe",
    ] {
        assert!(host.path().join("got/out").join(name).exists(), "{name:?}");
    }
    s.close().await.unwrap();
}

/// A tmpfs holds a sparse file of any claimed size, and Docker's archive expands it: a
/// copy out takes at most what a private workspace can really hold, and writes nothing
/// when that is exceeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_a_sparse_file_cannot_fill_the_host_through_a_copy_out() {
    let Some((_engine, mut s)) = session_with(Backend::Docker, |c| {
        c.workspace = Workspace::Empty;
        c.hardening.workspace_bytes = 32 << 20;
    })
    .await
    else {
        return;
    };
    let out = run(
        &mut s,
        "shell",
        "truncate -s 10G /workspace/results.csv && echo small > /workspace/ok.txt && ls -l /workspace/results.csv",
    )
    .await;
    assert!(out.stdout.contains("10737418240"), "{out:?}");
    let dest = tempfile::tempdir().unwrap();
    let err = s
        .download("results.csv", dest.path())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("is more than 48 MiB to copy out"), "{err}");
    assert_eq!(std::fs::read_dir(dest.path()).unwrap().count(), 0);
    let written = s.download("ok.txt", dest.path()).await.unwrap();
    assert_eq!(written.len(), 1);
    s.close().await.unwrap();
}
