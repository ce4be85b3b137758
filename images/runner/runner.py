#!/usr/bin/env python3
"""oi runner: the main process of an oi sandbox (standard library only).

Owns: the host <-> sandbox protocol (docs/protocol.md) over this process's own
stdin/stdout, and the interpreters ("kernels") that run the code blocks.

Flow: the host writes one JSON request per line on stdin; the runner answers with one
JSON frame per line on stdout. User code never writes to the runner's stdout: every
kernel is a child process whose stdout and stderr are pipes that the runner reads and
wraps into frames, so nothing user code prints can fake or hide the end of a block, and
the runner is non-dumpable, so code running as the same user can neither open its
descriptors through /proc nor ptrace it. Completion comes from each kernel on a
separate control pipe (out of band).

Threads: the main thread runs one block at a time (select over the kernel's pipes);
a stdin thread reads requests and acts on interrupt/kill at once, so an interrupt
works even while the main thread is blocked writing a flood of output to the host.

Left to others: deciding timeouts (the host sends interrupt, then kill), rendering,
and sandboxing itself (the container around this process; oi_guard only adds what a
container cannot: non-dumpable processes and a filter against setuid files).
"""

import codecs
import collections
import json
import os
import queue
import selectors
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import oi_guard

PROTOCOL = 1
HERE = os.path.dirname(os.path.abspath(__file__))
READ_CHUNK = 64 * 1024

_out = sys.stdout.buffer
_out_lock = threading.Lock()


def send(frame):
    data = json.dumps(frame, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "replace")
    with _out_lock:
        _out.write(data + b"\n")
        _out.flush()


def log(message):
    """Diagnostics of the runner itself go to its stderr, never to the frame stream."""
    sys.stderr.write("oi-runner: %s\n" % message)
    sys.stderr.flush()


# ---------------------------------------------------------------------------
# Processes


def session_members(sid):
    """Pids of the processes whose session id is `sid` (a kernel leads its own session)."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name, "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name sits in parentheses and may contain anything: split after it.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 3 and fields[0] != b"Z" and int(fields[3]) == sid:
            pids.append(int(name))
    return pids


def signal_session(sid, sig, spare=()):
    sent = 0
    for pid in session_members(sid):
        if pid in spare:
            continue
        try:
            os.kill(pid, sig)
            sent += 1
        except OSError:
            pass
    return sent


def kill_session(sid, spare=()):
    """SIGKILL every process of a session (but `spare`) until none is left: processes
    that keep forking (a fork bomb) are caught over a few rounds."""
    for _ in range(200):
        if signal_session(sid, signal.SIGKILL, spare) == 0:
            return
        time.sleep(0.005)


def describe_exit(lang, returncode):
    if returncode is None:
        return "the %s interpreter stopped" % lang
    if returncode < 0:
        sig = -returncode
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = "signal %d" % sig
        text = "the %s interpreter was killed by %s" % (lang, name)
        if sig == signal.SIGKILL:
            seen = oom_kills()
            if seen > _oom_at_start[0]:
                _oom_at_start[0] = seen
                text += " (out of memory: the sandbox memory limit was reached)"
        elif sig == signal.SIGSEGV:
            text += " (segmentation fault)"
        return text
    return "the %s interpreter exited with code %d" % (lang, returncode)


def cgroup_counter(key, *paths):
    """A counter from this container's cgroup event files (the first that exists: v2,
    then v1); 0 where unknown (e.g. not in a container)."""
    for path in paths:
        try:
            with open(path) as f:
                for line in f:
                    name, _, value = line.partition(" ")
                    if name == key:
                        return int(value)
        except (OSError, ValueError):
            continue
    return 0


def oom_kills():
    """How many processes the OOM killer has killed in this container."""
    return cgroup_counter("oom_kill", "/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control")


_oom_at_start = [0]


def pids_limit_hits():
    """How often this container refused a fork at its process limit."""
    return cgroup_counter("max", "/sys/fs/cgroup/pids.events", "/sys/fs/cgroup/pids/pids.events")


class OomScore:
    """Points the OOM killer at user code: children inherit the runner's oom_score_adj,
    so the runner raises its own around each start of a kernel and puts it back. The
    file is opened while the runner is still dumpable (a non-dumpable process's /proc
    files belong to root)."""

    fd = None
    own = b"0"

    @classmethod
    def open(cls):
        try:
            cls.fd = os.open("/proc/self/oom_score_adj", os.O_RDWR | os.O_CLOEXEC)
            cls.own = os.read(cls.fd, 16).strip() or b"0"
        except OSError:
            cls.fd = None

    @classmethod
    def set(cls, value):
        if cls.fd is None:
            return
        try:
            os.lseek(cls.fd, 0, os.SEEK_SET)
            os.write(cls.fd, value)
        except OSError:
            pass


def guarded_binary(name, fallback):
    """The image's execute-only copy of an interpreter, if there is one: a process
    started from a file its user cannot read is non-dumpable from its first instruction
    (so other code of the sandbox cannot ptrace it or open its descriptors)."""
    path = os.path.join(HERE, "bin", name)
    if not _on_host[0] and os.access(path, os.X_OK):
        return path
    return fallback


_on_host = [False]


# ---------------------------------------------------------------------------
# Kernels


class Kernel:
    """A child process that runs blocks. Subclasses say how code is handed over and how
    the control pipe reports readiness, images and completion."""

    lang = "?"
    stateful = True

    def __init__(self, wake):
        self.wake = wake
        self.proc = None
        self.ctl_r = None
        self.ready = False
        self.kill_requested = False
        self.interrupted = False
        self._ctl_buf = b""

    # -- lifecycle
    def _spawn(self, argv, stdin, extra_env=None, pass_fds=(), cwd=None):
        env = dict(os.environ)
        env.update(extra_env or {})
        OomScore.set(b"1000")
        try:
            self.proc = subprocess.Popen(
                argv,
                stdin=stdin,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=pass_fds,
                env=env,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_child_setup,
            )
        finally:
            OomScore.set(OomScore.own)
        for f in (self.proc.stdout, self.proc.stderr):
            os.set_blocking(f.fileno(), False)
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self):
        self.proc.wait()
        try:
            os.write(self.wake, b"x")
        except OSError:
            pass

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def out_fds(self):
        return [self.proc.stdout.fileno(), self.proc.stderr.fileno()]

    def interrupt(self):
        if not self.alive():
            return
        self.interrupted = True
        pid = self.proc.pid
        try:
            os.kill(pid, signal.SIGINT)
        except OSError:
            pass
        # Whatever the block started (subprocesses, `cmd &`) goes now, so that `wait` or
        # a blocking call returns; the interpreter itself stays, with its state.
        kill_session(pid, spare=(pid,))

    def kill(self):
        if self.proc is None:
            return
        self.kill_requested = True
        kill_session(self.proc.pid)
        try:
            self.proc.kill()
        except OSError:
            pass

    def close(self):
        if self.proc is not None:
            self.kill()
            try:
                self.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass
            for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
                if f is not None:
                    try:
                        f.close()
                    except OSError:
                        pass
        if self.ctl_r is not None:
            try:
                os.close(self.ctl_r)
            except OSError:
                pass
            self.ctl_r = None

    # -- control pipe
    def read_ctl(self):
        """Reads what the control pipe has; returns the complete messages."""
        try:
            data = os.read(self.ctl_r, READ_CHUNK)
        except BlockingIOError:
            return []
        except OSError:
            data = b""
        if not data:
            return [None]  # EOF
        self._ctl_buf += data
        lines = self._ctl_buf.split(b"\n")
        self._ctl_buf = lines.pop()
        return [self.parse_ctl(line) for line in lines if line]

    def parse_ctl(self, line):
        raise NotImplementedError

    def submit(self, req):
        raise NotImplementedError


def _child_setup():
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    # On the host nothing else would stop a kernel whose runner is gone.
    try:
        oi_guard.die_with_parent()
    except OSError:
        pass


class PythonKernel(Kernel):
    lang = "python"

    def start(self):
        cmd_r, self.cmd_w = os.pipe()
        self.ctl_r, ctl_w = os.pipe()
        os.set_blocking(self.ctl_r, False)
        boot = (
            "import sys; sys.path.append(%r); import oi_guard; oi_guard.make_undumpable(); "
            "import oi_kernel; oi_kernel.main(%d, %d)" % (HERE, cmd_r, ctl_w)
        )
        self._spawn(
            [guarded_binary("python3", sys.executable), "-u", "-c", boot],
            stdin=subprocess.DEVNULL,
            pass_fds=(cmd_r, ctl_w),
            extra_env={
                "PYTHONUNBUFFERED": "1",
                # Figures become image events; processes the block starts find the
                # backend too (through PYTHONPATH) and render off-screen as with Agg.
                "MPLBACKEND": "module://oi_mpl_backend",
                "PYTHONPATH": os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), HERE) if p),
            },
        )
        os.close(cmd_r)
        os.close(ctl_w)

    def parse_ctl(self, line):
        return json.loads(line)

    def submit(self, req):
        msg = json.dumps({"code": req["code"]}).encode() + b"\n"
        _write_all(self.cmd_w, msg)

    def close(self):
        try:
            os.close(self.cmd_w)
        except (OSError, AttributeError):
            pass
        super().close()


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def bash_quote(code):
    """Quotes code as one $'...' word so that a whole block is a single input line."""
    out = []
    for ch in code:
        if ch == "\\":
            out.append("\\\\")
        elif ch == "'":
            out.append("\\'")
        elif ch == "\n":
            out.append("\\n")
        elif ord(ch) < 0x20 or ch == "\x7f":
            out.append("\\x%02x" % ord(ch))
        else:
            out.append(ch)
    return "$'" + "".join(out) + "'"


class ShellKernel(Kernel):
    """An interactive bash fed one line per block. Interactive mode is what makes an
    interrupt abort the whole block (even a loop of builtins) and return to the prompt
    with the shell's state intact; PROMPT_COMMAND reports the status out of band."""

    lang = "shell"

    def start(self):
        self.ctl_r, ctl_w = os.pipe()
        os.set_blocking(self.ctl_r, False)
        self.seq = 0
        self._spawn(
            [guarded_binary("bash", "bash"), "--noprofile", "--rcfile", os.path.join(HERE, "oi_bashrc"), "--noediting", "-i"],
            stdin=subprocess.PIPE,
            pass_fds=(ctl_w,),
            extra_env={"OI_CTL_FD": str(ctl_w)},
        )
        os.close(ctl_w)

    def parse_ctl(self, line):
        status, _, seq = line.decode().partition(" ")
        seq = int(seq or 0)
        if seq == 0:
            return {"t": "ready"}
        if seq != self.seq:
            return {"t": "stale"}  # a prompt redrawn by a late interrupt: not a block's end
        code = int(status)
        if code == 130 and self.interrupted:
            return {"t": "done", "status": "interrupted", "exit_code": code}
        return {"t": "done", "status": "ok" if code == 0 else "error", "exit_code": code}

    def submit(self, req):
        self.seq += 1
        line = "__oi_seq=%d; eval %s </dev/null {OI_CTL_FD}>&-\n" % (self.seq, bash_quote(req["code"]))
        self.proc.stdin.write(line.encode("utf-8", "surrogateescape"))
        self.proc.stdin.flush()


class FileKernel(Kernel):
    """A configured language: the block is written to a file and a command runs it.
    No state survives between blocks; the exit status is the block's."""

    stateful = False

    def __init__(self, wake, lang):
        super().__init__(wake)
        self.lang = lang
        self.path = None
        self.ready = True

    def submit(self, req):
        ext = req.get("extension") or "txt"
        fd, self.path = tempfile.mkstemp(prefix="oi-block-", suffix="." + ext.lstrip("."))
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write(req["code"])
        template = req.get("command") or ""
        command = template.replace("{file}", shlex.quote(self.path))
        if command == template:
            command = template + " " + shlex.quote(self.path)
        self._spawn(["sh", "-c", command], stdin=subprocess.DEVNULL)

    def alive(self):
        return False  # one process per block: it ends when the block does

    def finished(self):
        return self.proc is not None and self.proc.poll() is not None

    def cleanup(self):
        if self.proc is not None:
            kill_session(self.proc.pid)
            for f in (self.proc.stdout, self.proc.stderr):
                f.close()
        if self.path:
            try:
                os.unlink(self.path)
            except OSError:
                pass


# ---------------------------------------------------------------------------
# The runner


class Runner:
    def __init__(self):
        self.requests = queue.Queue()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        self.kernels = {}
        self.current = None  # (request id, kernel) of the running block
        self.lock = threading.Lock()

    # -- stdin thread
    def read_requests(self):
        stdin = sys.stdin.buffer
        while True:
            line = stdin.readline()
            if not line:
                self.requests.put({"op": "shutdown"})
                return
            try:
                req = json.loads(line)
                op = req["op"]
            except (ValueError, KeyError, TypeError):
                send({"type": "error", "id": None, "message": "malformed request: %r" % line[:200]})
                continue
            if op in ("interrupt", "kill"):
                with self.lock:
                    current = self.current
                if current is not None and current[0] == req.get("id"):
                    kernel = current[1]
                    if op == "interrupt":
                        kernel.interrupt()
                    else:
                        kernel.kill()
                    os.write(self.wake_w, b"x")
            elif op == "ping":
                send({"type": "pong", "id": req.get("id")})
            else:
                self.requests.put(req)
                if op == "shutdown":
                    return

    # -- main thread
    def serve(self):
        _oom_at_start[0] = oom_kills()
        send(
            {
                "v": PROTOCOL,
                "type": "hello",
                "runner": "oi-runner",
                "pid": os.getpid(),
                "python": sys.version.split()[0],
                "languages": ["python", "shell"],
            }
        )
        threading.Thread(target=self.read_requests, daemon=True).start()
        # The first block is nearly always Python: start its interpreter now, while the
        # host is still getting ready, instead of on the first request.
        self.kernel("python")
        while True:
            req = self.requests.get()
            op = req.get("op")
            if op == "shutdown":
                break
            if op != "exec":
                send({"type": "error", "id": req.get("id"), "message": "unknown op %r" % op})
                continue
            try:
                self.execute(req)
            except Exception as exc:  # the runner must outlive any one block
                log("internal error: %r" % (exc,))
                send({"type": "done", "id": req.get("id"), "status": "crashed", "message": "oi runner error: %r" % (exc,)})
        for kernel in self.kernels.values():
            kernel.close()

    def kernel(self, lang):
        kernel = self.kernels.get(lang)
        if kernel is not None and kernel.alive():
            return kernel, None
        notice = None
        if kernel is not None:
            notice = "%s; started a new one: its state (variables, imports, working directory) was lost" % describe_exit(
                lang, kernel.proc.returncode if kernel.proc else None
            )
            kernel.close()
        kernel = PythonKernel(self.wake_w) if lang == "python" else ShellKernel(self.wake_w)
        kernel.start()
        self.kernels[lang] = kernel
        return kernel, notice

    def execute(self, req):
        rid = req.get("id")
        lang = req.get("lang")
        if lang in ("python", "shell"):
            kernel, notice = self.kernel(lang)
            if notice:
                send({"type": "notice", "id": rid, "message": notice})
        elif req.get("command"):
            kernel = FileKernel(self.wake_w, lang)
        else:
            send({"type": "done", "id": rid, "status": "error", "message": "unknown language %r" % lang})
            return
        kernel.interrupted = False
        kernel.kill_requested = False
        with self.lock:
            self.current = (rid, kernel)
        try:
            self._run(rid, kernel, req)
        finally:
            with self.lock:
                self.current = None
            if isinstance(kernel, FileKernel):
                kernel.cleanup()

    def _run(self, rid, kernel, req):
        pids_at_start = pids_limit_hits()
        decoders = {}
        sel = selectors.DefaultSelector()
        submitted = False
        if kernel.ready:
            kernel.submit(req)
            submitted = True
        fds = {}
        for name, fd in zip(("stdout", "stderr"), kernel.out_fds()):
            fds[fd] = name
            decoders[name] = codecs.getincrementaldecoder("utf-8")("replace")
            sel.register(fd, selectors.EVENT_READ, name)
        if kernel.ctl_r is not None:
            sel.register(kernel.ctl_r, selectors.EVENT_READ, "ctl")
        sel.register(self.wake_r, selectors.EVENT_READ, "wake")

        # Control messages not acted on yet. An image or active-line message carries
        # `out`, how many bytes of stdout the block had written before it: it is sent
        # once that much stdout has been, so it keeps its place in the output even
        # when the runner reads both pipes late.
        pending = collections.deque()
        sent_out = 0

        def positioned(msg):
            return msg is not None and msg.get("t") in ("image", "line")

        def emit(msg):
            if not submitted:
                return
            if msg["t"] == "image":
                send({"type": "image", "id": rid, "format": msg.get("format", "png"), "data": msg["data"]})
            else:
                send({"type": "active_line", "id": rid, "line": msg["line"]})

        def emit_reached():
            while pending and positioned(pending[0]) and pending[0].get("out", 0) <= sent_out:
                emit(pending.popleft())

        def send_text(name, data):
            nonlocal sent_out
            if name != "stdout" or not submitted:
                text = decoders[name].decode(data)
                if text and submitted:
                    send({"type": name, "id": rid, "data": text})
                return
            if kernel.ctl_r is not None and kernel.ctl_r in sel.get_map():
                pending.extend(kernel.read_ctl())
            emit_reached()
            while data:
                part = data
                if pending and positioned(pending[0]):
                    part = data[: max(0, pending[0].get("out", 0) - sent_out)] or data
                data = data[len(part):]
                text = decoders[name].decode(part)
                if text:
                    send({"type": name, "id": rid, "data": text})
                sent_out += len(part)
                emit_reached()

        def forward(fd, final=False):
            """Reads what is waiting on one output pipe; False at end of file."""
            name = fds[fd]
            while True:
                try:
                    data = os.read(fd, READ_CHUNK)
                except BlockingIOError:
                    return True
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(fd)
                    del fds[fd]
                    tail = decoders[name].decode(b"", final=True)
                    if tail and submitted:
                        send({"type": name, "id": rid, "data": tail})
                    return False
                send_text(name, data)
                if not final and len(data) < READ_CHUNK:
                    return True

        def drain():
            for fd in list(fds):
                forward(fd, final=True)
            for name, dec in decoders.items():
                tail = dec.decode(b"", final=True)
                if tail and submitted:
                    send({"type": name, "id": rid, "data": tail})

        def finish(frame):
            # A block that ran into the process limit (a fork bomb) must not leave the
            # session unable to start anything: stop what it left running.
            if pids_limit_hits() > pids_at_start and kernel.stateful and kernel.alive():
                pid = kernel.proc.pid
                strays = [p for p in session_members(pid) if p != pid]
                if strays:
                    kill_session(pid, spare=(pid,))
                    send(
                        {
                            "type": "notice",
                            "id": rid,
                            "message": "the block reached the sandbox's process limit; its %d leftover "
                            "processes were stopped so that the session stays usable" % len(strays),
                        }
                    )
            frame = {k: v for k, v in frame.items() if v is not None}
            frame.update({"type": "done", "id": rid})
            send(frame)
            sel.close()

        def handle_ctl():
            """Acts on the control messages waiting; True once the block has ended."""
            nonlocal submitted
            pending.extend(kernel.read_ctl())
            while pending:
                msg = pending[0]
                if positioned(msg):
                    # The stdout before it is in the pipe already: read it first.
                    for fd, name in list(fds.items()):
                        if name == "stdout":
                            forward(fd)
                    if pending and pending[0] is msg:
                        # The counts disagree (code wrote to fd 1 directly): send it now.
                        emit(pending.popleft())
                    continue
                pending.popleft()
                if msg is None:
                    if kernel.ctl_r in sel.get_map():
                        sel.unregister(kernel.ctl_r)
                    continue
                kind = msg.get("t")
                if kind == "ready":
                    # Anything printed while the interpreter started (bash's job-control
                    # warnings) is not the block's output.
                    drain()
                    for name in decoders:
                        decoders[name] = codecs.getincrementaldecoder("utf-8")("replace")
                    kernel.ready = True
                    if not submitted:
                        kernel.submit(req)
                        submitted = True
                elif kind == "done" and submitted:
                    drain()
                    while pending:
                        late = pending.popleft()
                        if positioned(late):
                            emit(late)
                    finish({"status": msg["status"], "exit_code": msg.get("exit_code")})
                    return True
            return False

        while True:
            for key, _ in sel.select():
                what = key.data
                if what in ("stdout", "stderr"):
                    # An earlier event of this batch may have read the pipe to its end.
                    if key.fd in fds:
                        forward(key.fd)
                elif what == "wake":
                    try:
                        os.read(self.wake_r, 4096)
                    except BlockingIOError:
                        pass
                elif what == "ctl" and handle_ctl():
                    return
            # Reading stdout may have taken control messages off their pipe (to place
            # them in the output): act on them, as select will not report them again.
            if pending and handle_ctl():
                return
            if isinstance(kernel, FileKernel):
                if kernel.finished():
                    drain()
                    code = kernel.proc.returncode
                    if kernel.interrupted or kernel.kill_requested:
                        finish({"status": "interrupted", "exit_code": code})
                    elif code < 0:
                        finish({"status": "crashed", "message": describe_exit(kernel.lang, code).replace("interpreter", "process")})
                    else:
                        finish({"status": "ok" if code == 0 else "error", "exit_code": code})
                    return
            elif kernel.proc.poll() is not None:
                if kernel.ctl_r is not None and handle_ctl():
                    return
                drain()
                code = kernel.proc.returncode
                if kernel.kill_requested:
                    message = "the %s interpreter did not stop on interrupt and was restarted: its state was lost"
                    finish({"status": "interrupted", "message": message % kernel.lang})
                else:
                    message = "%s; the next block starts a new one (state was lost)" % describe_exit(kernel.lang, code)
                    finish({"status": "crashed", "exit_code": code if code >= 0 else None, "message": message})
                return


def prepare_environment():
    """Makes the writable places that tools expect, inside a read-only root."""
    home = os.environ.get("HOME", "")
    if home.startswith("/tmp/"):
        os.makedirs(home, exist_ok=True)
    mpl = os.environ.get("MPLCONFIGDIR")
    prebuilt = os.path.join(HERE, "mplconfig")
    if mpl and os.path.isdir(prebuilt) and not os.path.exists(mpl):
        try:
            shutil.copytree(prebuilt, mpl)
        except OSError:
            pass


def main(argv):
    # `--host`: the unsandboxed backend, on the user's own machine: no filter there.
    _on_host[0] = "--host" in argv[1:]
    if not _on_host[0]:
        try:
            oi_guard.install_file_mode_filter()
        except OSError as exc:
            log("refusing to run code: the filter against setuid files could not be installed: %s" % exc)
            sys.exit(3)
    OomScore.open()
    try:
        oi_guard.make_undumpable()
    except OSError as exc:
        log("could not make the runner non-dumpable: %s" % exc)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    prepare_environment()
    Runner().serve()


if __name__ == "__main__":
    main(sys.argv)
