//! The runner and its protocol under attack from the code it runs (D4, D5, D10, D13,
//! D14, D15): forged frames and block ends, a host that goes away mid-block, a stopped
//! runner, huge frames, setuid files on a mounted workspace, shells that switch off
//! their end-of-block report, and malformed requests. Each test asserts what the host
//! saw: the real outcome and output, file modes on the host, processes gone.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder,
};
use bollard::Docker;
use futures::StreamExt;
use oi::core::code_interpreter::protocol::{Frame, FrameDecoder, FrameError, MAX_FRAME_BYTES};
use oi::core::code_interpreter::{
    docker, image, Backend, CollectedOutput, ExecRequest, ExecStatus, Language, Owner, Workspace,
};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::super::{assert_ok, engine_with, image as sandbox_image, run, run_req, session_with};

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod docker_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(oi::core::code_interpreter::Backend::Docker).await
                }
            )*
        }
        mod host_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(oi::core::code_interpreter::Backend::Host).await
                }
            )*
        }
    };
}

on_both_backends!(
    d4_leftover_processes_cannot_end_a_later_block,
    d5_a_stopped_runner_ends_the_block_and_the_session_restarts,
    d14_shell_blocks_end_whatever_the_code_does,
    d15_a_bad_language_request_does_not_crash_the_runner,
);

// ---------------------------------------------------------------------------
// D4: the protocol cannot be forged

/// Block 1 leaves an attacker running that tries every way it has, as the runner's
/// own user, to write onto the runner's stream or its kernels' channels; block 2 is
/// slow and fails. What the host sees of block 2 must be block 2's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d4_code_cannot_forge_frames_or_another_blocks_end() {
    let Some((_engine, mut s)) = session_with(Backend::Docker, |_| {}).await else {
        return;
    };
    let attack = r#"
import ctypes, json, os, subprocess, sys
runner = os.getppid()
script = r'''
import ctypes, json, os, sys, time
runner, kernel = int(sys.argv[1]), int(sys.argv[2])
log = open('/tmp/attack.log', 'w', buffering=1)
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
# PID 1 (the container's init) holds the attached stdin and stdout too.
for name, pid in (('init', 1), ('runner', runner), ('kernel', kernel)):
    ok = libc.ptrace(16, pid, None, None) == 0  # PTRACE_ATTACH
    log.write('ptrace %s: %s\n' % (name, 'attached' if ok else 'denied'))
    if ok:
        libc.ptrace(17, pid, None, None)  # PTRACE_DETACH
forged = ''.join(json.dumps(f) + '\n' for i in range(1, 20) for f in (
    {'type': 'stdout', 'id': i, 'data': 'all tests passed\n'},
    {'type': 'done', 'id': i, 'status': 'ok'},
    {'t': 'done', 'status': 'ok', 'block': i}))
opened = {}
for pid in (1, runner, kernel):
    for fd in range(0, 40):
        path = '/proc/%d/fd/%d' % (pid, fd)
        try:
            opened[path] = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as e:
            if fd == 1 and pid in (1, runner):
                log.write('%s stdout: denied (%s)\n' % ('init' if pid == 1 else 'runner', e.strerror))
# Writing code into PID 1's memory would run it outside every filter.
try:
    os.open('/proc/1/mem', os.O_RDWR)
    log.write('init mem: opened\n')
except OSError as e:
    log.write('init mem: denied (%s)\n' % e.strerror)
log.write('opened: %s\n' % sorted(opened))
end = time.time() + 4
while time.time() < end:
    for fd in opened.values():
        try:
            os.write(fd, forged.encode())
        except OSError:
            pass
    time.sleep(0.05)
log.write('attack over\n')
'''
subprocess.Popen([sys.executable, '-c', script, str(runner), str(os.getpid())],
                 start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print('attacker started')
"#;
    let started = run(&mut s, "python", attack).await;
    assert_ok(&started);
    let block2 = run(
        &mut s,
        "python",
        "import time\ntime.sleep(2)\nprint('real output')\nraise SystemExit(3)",
    )
    .await;
    assert_eq!(block2.status(), ExecStatus::Error, "{block2:?}");
    assert_eq!(block2.stdout, "real output\n", "{block2:?}");
    assert!(block2.stderr.contains("SystemExit: 3"), "{block2:?}");
    let log = run(&mut s, "shell", "sleep 2.5; cat /tmp/attack.log").await;
    assert!(
        log.stdout.contains("ptrace runner: denied")
            && log.stdout.contains("ptrace kernel: denied")
            && log.stdout.contains("ptrace init: denied")
            && log.stdout.contains("runner stdout: denied")
            && log.stdout.contains("init stdout: denied")
            && log.stdout.contains("init mem: denied")
            && log.stdout.contains("opened: []")
            && log.stdout.contains("attack over"),
        "{log:?}"
    );
    s.close().await.unwrap();
}

/// A raw fork of the Python kernel keeps its channel, and a background subshell keeps
/// copies of the shell's sockets: both write "done" for every later block. Only the
/// kernel process itself is believed, so the later blocks end as they really do.
async fn d4_leftover_processes_cannot_end_a_later_block(backend: Backend) {
    let Some((_engine, mut s)) = session_with(backend, |_| {}).await else {
        return;
    };
    // `os.fork` would close the channel in the child (oi_kernel registers that): libc's
    // fork does not, as a C extension's would not.
    let python_attack = r#"
import ctypes, json, os, time
import oi_kernel
fd = oi_kernel._chan.fileno()
forged = ''.join(json.dumps({'t': 'done', 'status': 'ok', 'block': b, 'out': 0}) + '\n'
                 for b in range(1, 30)).encode()
# PyDLL keeps the GIL across the call, so that the child can go on running Python.
if ctypes.PyDLL(None).fork() == 0:
    end = time.time() + 4
    while time.time() < end:
        try:
            os.write(fd, forged)
        except OSError:
            break
        time.sleep(0.02)
    os._exit(0)
print('forked')
"#;
    assert_ok(&run(&mut s, "python", python_attack).await);
    let slow = run(
        &mut s,
        "python",
        "import time\ntime.sleep(1.5)\nprint('python block 2')\n1 / 0",
    )
    .await;
    assert_eq!(slow.status(), ExecStatus::Error, "{slow:?}");
    assert_eq!(slow.stdout, "python block 2\n");

    // Every socket the subshell inherited gets fake reports with ever higher numbers.
    let shell_attack = r#"(
  for i in $(seq 1 200); do
    for fd in /proc/$BASHPID/fd/*; do
      n=${fd##*/}
      case $(readlink "$fd") in socket:*) printf '0 %s\n' $((i + 1000)) >&"$n" ;; esac
    done 2>/dev/null
    sleep 0.02
  done
) >/dev/null 2>&1 &
echo started"#;
    assert_ok(&run(&mut s, "shell", shell_attack).await);
    let slow = run(&mut s, "shell", "sleep 1.5; echo shell block 2; false").await;
    assert_eq!(
        (slow.status(), slow.outcome().exit_code),
        (ExecStatus::Error, Some(1)),
        "{slow:?}"
    );
    assert_eq!(slow.stdout, "shell block 2\n");
    let after = run(&mut s, "shell", "echo still in order").await;
    assert_eq!(after.stdout, "still in order\n");
    s.close().await.unwrap();
}

// ---------------------------------------------------------------------------
// D5: the runner goes when the host does, and a stopped runner does not hang oi

/// Labels that keep another oi's start-up sweep away from a container this test made
/// (its owner, this test process, is alive) and say which test made it.
fn test_labels(test: &str) -> HashMap<String, String> {
    let owner = Owner::current();
    HashMap::from([
        (
            docker::OWNER_LABEL.to_string(),
            format!("{}:{}", owner.pid, owner.start_time),
        ),
        ("oi.test".to_string(), test.to_string()),
    ])
}

async fn remove_container(docker: &Docker, name: &str) {
    let options = RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    let _ = docker.remove_container(name, Some(options)).await;
}

async fn is_running(docker: &Docker, name: &str) -> bool {
    docker
        .inspect_container(name, None)
        .await
        .ok()
        .and_then(|info| info.state)
        .and_then(|state| state.running)
        .unwrap_or(false)
}

/// The runner in a container of its own, spoken to raw: a busy block (and a
/// subprocess) running, the host side of the attachment goes away as when oi is
/// killed; the container's main process must be gone within seconds, not run on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d5_runner_exits_mid_block_when_its_stdin_closes() {
    let Some(tag) = sandbox_image() else {
        return;
    };
    let engine = engine_with(Backend::Docker, |_| {}).await.unwrap();
    let docker = engine.docker().unwrap().clone();
    let name = format!("oi-test-d5-{}", std::process::id());
    remove_container(&docker, &name).await;
    let spec = ContainerCreateBody {
        image: Some(tag.to_string()),
        user: Some("1000:1000".into()),
        attach_stdin: Some(true),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        open_stdin: Some(true),
        stdin_once: Some(true),
        tty: Some(false),
        labels: Some(test_labels(
            "d5_runner_exits_mid_block_when_its_stdin_closes",
        )),
        host_config: Some(HostConfig {
            network_mode: Some("none".into()),
            init: Some(false),
            readonly_rootfs: Some(true),
            tmpfs: Some(HashMap::from([(
                "/tmp".to_string(),
                "rw,exec,nosuid,size=64m".to_string(),
            )])),
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec!["no-new-privileges".into()]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let options = CreateContainerOptionsBuilder::default().name(&name).build();
    docker.create_container(Some(options), spec).await.unwrap();
    let result = async {
        let attach = AttachContainerOptionsBuilder::default()
            .stdin(true)
            .stdout(true)
            .stderr(true)
            .stream(true)
            .build();
        let mut attached = docker.attach_container(&name, Some(attach)).await?;
        docker.start_container(&name, None).await?;
        let mut decoder = FrameDecoder::default();
        let mut next_frame = async || -> Option<Frame> {
            loop {
                if let Some(frame) = decoder.next_frame() {
                    return frame.ok();
                }
                match attached.output.next().await? {
                    Ok(bollard::container::LogOutput::StdOut { message }) => decoder.push(&message),
                    Ok(_) => {}
                    Err(_) => return None,
                }
            }
        };
        let hello = tokio::time::timeout(Duration::from_secs(30), next_frame()).await;
        assert!(matches!(hello, Ok(Some(Frame::Hello { .. }))), "{hello:?}");
        let code = "import subprocess\nsubprocess.Popen(['sleep', '1000'])\nprint('busy', flush=True)\nwhile True:\n    pass";
        let request = json!({"op": "exec", "v": 1, "id": 1, "lang": "python", "code": code});
        attached
            .input
            .write_all(format!("{request}\n").as_bytes())
            .await
            .unwrap();
        attached.input.flush().await.unwrap();
        let busy = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match next_frame().await {
                    Some(Frame::Stdout { data, .. }) if data.contains("busy") => return true,
                    Some(_) => {}
                    None => return false,
                }
            }
        })
        .await;
        assert_eq!(busy, Ok(true), "the block started");
        // What oi's death does to the attachment: both directions close.
        let _ = attached.input.shutdown().await;
        drop(attached);
        let closed = Instant::now();
        while is_running(&docker, &name).await && closed.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok::<_, bollard::errors::Error>(closed.elapsed())
    }
    .await;
    let running = is_running(&docker, &name).await;
    remove_container(&docker, &name).await;
    let took = result.unwrap();
    assert!(
        !running,
        "the container still runs {took:?} after its stdin closed"
    );
    assert!(
        took < Duration::from_secs(3),
        "the runner took {took:?} to exit after its stdin closed"
    );
}

/// A runner started on the host like the `--unsafe` backend, spoken to raw.
struct RawRunner {
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    _dir: tempfile::TempDir,
}

impl RawRunner {
    async fn start() -> RawRunner {
        let dir = tempfile::tempdir().unwrap();
        for (name, data) in image::runner_files() {
            std::fs::write(dir.path().join(name), data).unwrap();
        }
        let mut child = tokio::process::Command::new("python3")
            .arg("-u")
            .arg(dir.path().join("runner.py"))
            .arg("--host")
            .current_dir(dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut runner = RawRunner {
            child,
            stdin,
            lines,
            _dir: dir,
        };
        assert_eq!(runner.frame().await["type"], "hello");
        runner
    }

    async fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(line.as_bytes()).await.unwrap();
        stdin.write_all(b"\n").await.unwrap();
        stdin.flush().await.unwrap();
    }

    async fn frame(&mut self) -> Value {
        let line = tokio::time::timeout(Duration::from_secs(20), self.lines.next_line())
            .await
            .expect("the runner answered within 20 s")
            .unwrap()
            .expect("the runner is still there");
        serde_json::from_str(&line).unwrap()
    }

    /// The frames of block `id` up to and including its `done`.
    async fn until_done(&mut self, id: u64) -> Vec<Value> {
        let mut frames = Vec::new();
        loop {
            let frame = self.frame().await;
            let done = frame["type"] == "done" && frame["id"] == id;
            frames.push(frame);
            if done {
                return frames;
            }
        }
    }
}

/// Processes whose command line holds `marker` (on this machine).
fn processes_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(marker) && !cmdline.contains("runner.py") {
                found.push(cmdline);
            }
        }
    }
    found
}

/// The same for the runner on the host, where no PID namespace ends with it: closing
/// stdin mid-block stops the runner, its interpreters and what they started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d5_host_runner_stops_everything_mid_block_when_its_stdin_closes() {
    let mut runner = RawRunner::start().await;
    let secs = 200_000 + std::process::id() % 1000;
    let code = format!(
        "import subprocess\nsubprocess.Popen(['sleep', '{secs}'])\nprint('busy', flush=True)\nwhile True:\n    pass"
    );
    runner
        .send(&json!({"op": "exec", "v": 1, "id": 1, "lang": "python", "code": code}).to_string())
        .await;
    let mut busy = runner.frame().await;
    while busy["type"] == "active_line" {
        busy = runner.frame().await;
    }
    assert_eq!(busy["data"], "busy\n", "{busy}");
    // Popen returns once exec began; the new command line shows a moment later.
    let seen = Instant::now();
    while processes_with(&format!("sleep {secs}")).is_empty()
        && seen.elapsed() < Duration::from_secs(5)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(processes_with(&format!("sleep {secs}")).len(), 1);
    let here = runner._dir.path().display().to_string();
    let closed = Instant::now();
    drop(runner.stdin.take());
    let status = tokio::time::timeout(Duration::from_secs(10), runner.child.wait())
        .await
        .expect("the runner exits")
        .unwrap();
    let took = closed.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(2), "exiting took {took:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        processes_with(&format!("sleep {secs}")),
        Vec::<String>::new(),
        "nothing the block started is left"
    );
    // The interpreter's command line names the runner's folder.
    assert_eq!(
        processes_with(&here),
        Vec::<String>::new(),
        "no interpreter is left"
    );
}

/// Code stops the runner itself (same user: it may). The timeout's interrupt and kill
/// go unanswered; oi must end the block as crashed instead of waiting for ever, and
/// the next block must get a new sandbox.
async fn d5_a_stopped_runner_ends_the_block_and_the_session_restarts(backend: Backend) {
    let Some((_engine, mut s)) =
        session_with(backend, |c| c.interrupt_grace = Duration::from_millis(500)).await
    else {
        return;
    };
    assert_ok(&run(&mut s, "python", "state = 1").await);
    let started = Instant::now();
    let out = run_req(
        &mut s,
        ExecRequest::new(
            "python",
            "import os, signal\nos.kill(os.getppid(), signal.SIGSTOP)\nwhile True:\n    pass",
        )
        .with_timeout(Duration::from_secs(1)),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(out.status(), ExecStatus::Crashed, "{out:?}");
    let message = out.outcome().message.clone().unwrap_or_default();
    assert!(
        message.contains("stopped answering") && message.contains("state was lost"),
        "{message}"
    );
    assert!(took < Duration::from_secs(12), "it took {took:?}");
    let next = run(&mut s, "python", "print('state' in globals())").await;
    assert_eq!(next.stdout, "False\n", "{next:?}");
    assert!(
        next.notices
            .iter()
            .any(|n| n.contains("started a new sandbox")),
        "{next:?}"
    );
    s.close().await.unwrap();
}

// ---------------------------------------------------------------------------
// D10: long frames in linear time, bounded

fn stdout_frame(data_len: usize) -> Vec<u8> {
    let mut line = br#"{"type":"stdout","id":7,"data":""#.to_vec();
    line.resize(line.len() + data_len, b'a');
    line.extend_from_slice(b"\"}\n");
    line
}

/// A 50 MB frame arriving in 64 KiB reads (the quadratic decoder rescanned the whole
/// buffer on every read: minutes), and a line past the limit is refused, not buffered.
#[test]
fn d10_a_large_frame_parses_in_linear_time() {
    let line = stdout_frame(50_000_000);
    let started = Instant::now();
    let mut decoder = FrameDecoder::default();
    let mut frames = Vec::new();
    for chunk in line.chunks(64 * 1024) {
        decoder.push(chunk);
        while let Some(frame) = decoder.next_frame() {
            frames.push(frame.unwrap());
        }
    }
    let took = started.elapsed();
    match frames.as_slice() {
        [Frame::Stdout { id: 7, data }] => assert_eq!(data.len(), 50_000_000),
        other => panic!("unexpected {:?}", other.len()),
    }
    assert!(took < Duration::from_secs(5), "decoding took {took:?}");

    let mut decoder = FrameDecoder::default();
    let chunk = vec![b'x'; 1024 * 1024];
    let mut pushed = 0;
    let err = loop {
        decoder.push(&chunk);
        pushed += chunk.len();
        if let Some(result) = decoder.next_frame() {
            break result.unwrap_err();
        }
        assert!(
            pushed <= MAX_FRAME_BYTES + chunk.len(),
            "no error after {pushed} bytes"
        );
    };
    assert_eq!(err, FrameError::TooLong);
    assert!(err.to_string().contains("64 MiB"), "{err}");
}

/// End to end: a 30 MiB image crosses quickly; one over the 32 MiB limit, an
/// oversized control message and an image in a format off the list are refused with
/// a message, and the session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d10_images_are_bounded_and_large_ones_cross_quickly() {
    let Some((_engine, mut s)) = session_with(Backend::Docker, |_| {}).await else {
        return;
    };
    let started = Instant::now();
    let big = run(
        &mut s,
        "python",
        "import os, oi_kernel\noi_kernel.emit_png(os.urandom(30 * 2**20))",
    )
    .await;
    let took = started.elapsed();
    assert_ok(&big);
    assert_eq!(big.images.len(), 1);
    assert_eq!(big.images[0].len(), 30 * 1024 * 1024);
    assert!(
        took < Duration::from_secs(10),
        "a 30 MiB image took {took:?}"
    );

    let too_big = run(
        &mut s,
        "python",
        "import oi_kernel\noi_kernel.emit_png(bytes(33 * 2**20))",
    )
    .await;
    assert!(too_big.images.is_empty(), "{:?}", too_big.notices);
    assert!(too_big.stderr.contains("was not sent"), "{too_big:?}");

    let forged = run(
        &mut s,
        "python",
        concat!(
            "import oi_kernel\n",
            "oi_kernel._chan.sendall(b'{\"t\": \"image\", \"format\": \"png\", \"data\": \"' + b'A' * (50 * 2**20) + b'\"}\\n')\n",
            "oi_kernel._report({'t': 'image', 'format': 'png/../../x', 'data': 'AAAA'})\n",
            "print('done')",
        ),
    )
    .await;
    assert_ok(&forged);
    assert!(forged.images.is_empty());
    assert!(
        forged.notices.iter().any(|n| n.contains("was dropped"))
            && forged
                .notices
                .iter()
                .any(|n| n.contains("unsupported format")),
        "{:?}",
        forged.notices
    );
    assert_eq!(run(&mut s, "python", "print(2)").await.stdout, "2\n");
    s.close().await.unwrap();
}

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

// ---------------------------------------------------------------------------
// D14: a shell block always ends

/// Shell code that would switch off the end-of-block report. Each block must end, as
/// itself or as a crash with a fresh shell next, and the next block must run.
async fn d14_shell_blocks_end_whatever_the_code_does(backend: Backend) {
    let Some((_engine, mut s)) = session_with(backend, |_| {}).await else {
        return;
    };
    let cases: &[(&str, &[ExecStatus])] = &[
        ("PROMPT_COMMAND='echo hook'", &[ExecStatus::Error]),
        (
            // What `eval "$(direnv hook bash)"` does.
            "_direnv_hook() { :; }\nPROMPT_COMMAND=\"_direnv_hook${PROMPT_COMMAND:+;$PROMPT_COMMAND}\"",
            &[ExecStatus::Error],
        ),
        ("unset PROMPT_COMMAND", &[ExecStatus::Error]),
        ("PROMPT_COMMAND+=(x)", &[ExecStatus::Error]),
        ("__oi_number=7; __oi_seq=7; __oi_ctl=1", &[ExecStatus::Error]),
        ("alias __oi_report=true", &[ExecStatus::Ok]),
        ("PS1='$(sleep 100)'", &[ExecStatus::Error]),
        ("trap 'echo debug-trap' DEBUG", &[ExecStatus::Ok]),
        ("trap - DEBUG", &[ExecStatus::Ok]),
        ("shopt -s extdebug; trap false DEBUG", &[ExecStatus::Crashed]),
        ("trap '' INT", &[ExecStatus::Ok]),
        ("trap 'echo bye' EXIT", &[ExecStatus::Ok]),
        ("exec bash", &[ExecStatus::Crashed]),
        ("exec sleep 1000", &[ExecStatus::Crashed]),
        ("exec 1>&- 2>&-", &[ExecStatus::Ok]),
        (
            "for fd in $(seq 3 255); do eval \"exec $fd>&-\"; done 2>/dev/null",
            &[ExecStatus::Crashed],
        ),
        ("set -u; echo \"$NOT_SET\"", &[ExecStatus::Error]),
        ("set -e; false", &[ExecStatus::Crashed]),
        ("printf() { echo fake; }", &[ExecStatus::Ok]),
        ("builtin() { :; }", &[ExecStatus::Crashed]),
        ("enable -n printf", &[ExecStatus::Crashed]),
        ("kill -INT $$; echo after", &[ExecStatus::Ok, ExecStatus::Error]),
    ];
    for (code, expected) in cases {
        let started = Instant::now();
        let out = run_req(
            &mut s,
            ExecRequest::new("shell", *code).with_timeout(Duration::from_secs(20)),
        )
        .await;
        assert!(
            expected.contains(&out.status()),
            "`{code}` ended as {:?}, expected {expected:?}: {out:?}",
            out.status()
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "`{code}` took {:?}",
            started.elapsed()
        );
        if out.status() == ExecStatus::Crashed {
            assert!(
                out.outcome()
                    .message
                    .as_deref()
                    .is_some_and(|m| m.contains("next block")),
                "`{code}`: {out:?}"
            );
        }
        let next: CollectedOutput = run(&mut s, "shell", "echo alive").await;
        assert!(
            next.stdout.contains("alive\n") && next.status() == ExecStatus::Ok,
            "after `{code}`: {next:?}"
        );
    }
    s.close().await.unwrap();
}

// ---------------------------------------------------------------------------
// D15: requests are validated

/// Declared languages with a bad extension or command reach the runner (the host's
/// own validation is not this test's business): each is refused with a clear error and
/// the session goes on.
async fn d15_a_bad_language_request_does_not_crash_the_runner(backend: Backend) {
    let Some((_engine, mut s)) = session_with(backend, |c| {
        c.languages
            .add(Language::file("z", "../../../tmp/evil", "cat {file}"));
        c.languages
            .add(Language::file("long", "abcdefghijklmnopq", "cat {file}"));
        c.languages
            .add(Language::file("nul", "txt", "cat\0 {file}"));
        c.languages.add(Language::file("ok", "txt", "cat {file}"));
    })
    .await
    else {
        return;
    };
    for lang in ["z", "long", "nul"] {
        let out = run(&mut s, lang, "hello").await;
        assert_eq!(out.status(), ExecStatus::Error, "{lang}: {out:?}");
        let message = out.outcome().message.clone().unwrap_or_default();
        assert!(message.contains("refused"), "{lang}: {message}");
    }
    let fine = run(&mut s, "ok", "hello").await;
    assert_ok(&fine);
    assert_eq!(fine.stdout, "hello");
    assert_eq!(run(&mut s, "python", "print(1)").await.stdout, "1\n");
    s.close().await.unwrap();
}

/// Malformed requests, written raw: wrong types, huge and non-integer numbers, deep
/// nesting, lines that are not JSON. Each gets an error (or an error `done`), and the
/// runner goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d15_malformed_requests_do_not_kill_the_runner() {
    let mut runner = RawRunner::start().await;
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let huge = "9".repeat(5000);
    let bad_lines = [
        "not json".to_string(),
        "[]".to_string(),
        "\"op\"".to_string(),
        deep,
        r#"{"op": 5}"#.to_string(),
        r#"{"op": "exec", "v": 1, "id": 1e400, "lang": "python", "code": "1"}"#.to_string(),
        r#"{"op": "exec", "v": 1, "id": -1, "lang": "python", "code": "1"}"#.to_string(),
        r#"{"op": "exec", "v": 1, "id": 123456789012345678901234567890, "lang": "python", "code": "1"}"#
            .to_string(),
        format!(r#"{{"op": "exec", "v": 1, "id": {huge}, "lang": "python", "code": "1"}}"#),
        r#"{"op": "exec", "v": 1, "id": true, "lang": "python", "code": "1"}"#.to_string(),
        r#"{"op": "interrupt", "v": 1, "id": "x"}"#.to_string(),
        r#"{"op": "ping", "v": 1}"#.to_string(),
    ];
    for line in &bad_lines {
        runner.send(line).await;
        let frame = runner.frame().await;
        assert_eq!(
            frame["type"],
            "error",
            "{}: {frame}",
            &line[..line.len().min(80)]
        );
    }
    let bad_execs = [
        json!({"op": "exec", "v": 1, "id": 2, "lang": "python", "code": 7}),
        json!({"op": "exec", "v": 1, "id": 3, "lang": ["python"], "code": "1"}),
        json!({"op": "exec", "v": 1, "id": 4, "lang": "z", "code": "x", "command": "cat {file}", "extension": "../../../tmp/evil"}),
        json!({"op": "exec", "v": 1, "id": 5, "lang": "z", "code": "x", "command": ["cat"]}),
        json!({"op": "exec", "v": 1, "id": 6, "lang": "z", "code": "x", "command": "cat {file}", "extension": 9}),
        json!({"op": "exec", "v": 1, "id": 7, "lang": "z\n", "code": "x", "command": "cat {file}"}),
        json!({"op": "exec", "v": 1, "id": 8, "lang": "z", "code": "x"}),
        json!({"op": "frobnicate", "v": 1, "id": 9}),
    ];
    for (i, request) in bad_execs.iter().enumerate() {
        runner.send(&request.to_string()).await;
        let frame = runner.frame().await;
        if i + 1 < bad_execs.len() {
            assert_eq!(
                (&frame["type"], &frame["status"]),
                (&json!("done"), &json!("error")),
                "{request}: {frame}"
            );
        } else {
            assert_eq!(frame["type"], "error", "{request}: {frame}");
        }
    }
    runner
        .send(
            &json!({"op": "exec", "v": 1, "id": 10, "lang": "shell", "code": "echo served"})
                .to_string(),
        )
        .await;
    let frames = runner.until_done(10).await;
    assert_eq!(frames[0]["data"], "served\n", "{frames:?}");
    assert_eq!(frames.last().unwrap()["status"], "ok");
}

/// Each image is bounded by the runner; their number per block is bounded by the host
/// (each is saved as a file, drawn, and kept in the conversation).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_a_block_cannot_flood_the_host_with_images() {
    let Some((_engine, mut s)) = session_with(Backend::Docker, |_| {}).await else {
        return;
    };
    let out = run(
        &mut s,
        "python",
        "import oi_kernel\nfor i in range(40):\n    oi_kernel.emit_png(b'\\x89PNG\\r\\n\\x1a\\n' + bytes(1000))\nprint('done')",
    )
    .await;
    assert_ok(&out);
    assert_eq!(out.stdout, "done\n");
    assert_eq!(
        out.images.len(),
        oi::core::code_interpreter::MAX_IMAGES_PER_BLOCK,
        "{:?}",
        out.notices
    );
    assert_eq!(
        out.notices
            .iter()
            .filter(|n| n.contains("the rest were dropped"))
            .count(),
        1,
        "{:?}",
        out.notices
    );
    // The next block has a budget of its own.
    let next = run(
        &mut s,
        "python",
        "import oi_kernel\noi_kernel.emit_png(b'\\x89PNG')",
    )
    .await;
    assert_eq!(next.images.len(), 1);
    s.close().await.unwrap();
}
