//! The runner and its protocol under attack from the code it runs (D4, D5, D10, D13,
//! D14, D15): forged frames and block ends, a host that goes away mid-block, a stopped
//! runner, huge frames, setuid files on a mounted workspace, shells that switch off
//! their end-of-block report, and malformed requests. Each test asserts what the host
//! saw: the real outcome and output, file modes on the host, processes gone.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use oi::core::code_interpreter::{Backend, Workspace};

use super::super::{run, session_with};

// ---------------------------------------------------------------------------
// D13: no setuid file out of the sandbox

/// Every way a shell or Python block has to make a setuid or setgid file in a host
/// folder mounted read-write, as the sandbox's user and as root in the container.
const SETUID_ATTEMPTS: &str = r#"
cp /bin/bash sh-copy && chmod 4755 sh-copy
chmod g+s sh-copy
install -m 4755 /bin/true installed
python3 - <<'EOF'
import io, os, tarfile
for attempt in (lambda: os.chmod('sh-copy', 0o6755),
                lambda: os.close(os.open('created', os.O_CREAT | os.O_WRONLY, 0o4755)),
                lambda: os.mknod('node', 0o4755),
                lambda: os.close(os.open('.', os.O_TMPFILE | os.O_WRONLY, 0o2755))):
    try:
        attempt()
    except OSError as e:
        print('refused:', e.strerror)
data = open('/bin/true', 'rb').read()
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode='w') as tar:
    for name in ('tar-suid', 'py-suid'):
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(data), 0o4755
        tar.addfile(info, io.BytesIO(data))
open('evil.tar', 'wb').write(buf.getvalue())
buf.seek(0)
with tarfile.open(fileobj=buf) as tar:
    tar.extract('py-suid', '.')
EOF
tar -xf evil.tar tar-suid
touch plain && chmod 755 plain && cp plain private && chmod 600 private && echo modes-ok
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d13_no_setuid_file_reaches_a_mounted_workspace() {
    for user in ["1000:1000", "0:0"] {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::chown(dir.path(), Some(1000), Some(1000)).unwrap();
        // Root in the container has no capabilities: it needs the permission bits too.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let ws = Workspace::ReadWrite(dir.path().to_path_buf());
        let Some((_engine, mut s)) = session_with(Backend::Docker, |c| {
            c.workspace = ws;
            c.hardening.user = user.into();
        })
        .await
        else {
            return;
        };
        let out = run(&mut s, "shell", SETUID_ATTEMPTS).await;
        s.close().await.unwrap();
        assert!(out.stdout.contains("modes-ok"), "{user}: {out:?}");
        assert!(
            out.stderr.contains("Operation not permitted"),
            "{user}: {out:?}"
        );
        let setuid = files_with_mode_bits(dir.path(), 0o6000);
        assert!(
            setuid.is_empty(),
            "{user}: setuid/setgid files on the host: {setuid:?}"
        );
        let mode = |name: &str| {
            std::fs::metadata(dir.path().join(name))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!((mode("plain"), mode("private")), (0o755, 0o600), "{user}");
        assert!(
            dir.path().join("sh-copy").exists() && dir.path().join("tar-suid").exists(),
            "{user}: the files themselves were made: {out:?}"
        );
    }
}

fn files_with_mode_bits(dir: &Path, bits: u32) -> Vec<(String, u32)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let meta = std::fs::symlink_metadata(entry.path()).unwrap();
        let mode = meta.permissions().mode();
        if mode & bits != 0 {
            found.push((entry.file_name().to_string_lossy().into_owned(), mode));
        }
        if meta.is_dir() {
            found.extend(files_with_mode_bits(&entry.path(), bits));
        }
    }
    found
}
