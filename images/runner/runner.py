#!/usr/bin/env python3
"""oi runner: the main process of an oi sandbox (standard library only).

Owns: the host <-> sandbox protocol (docs/protocol.md) over this process's own
stdin/stdout, and the interpreters ("kernels") that run the code blocks.

Flow: the host writes one JSON request per line on stdin; the runner answers with one
JSON frame per line on stdout. User code never writes to the runner's stdout: every
kernel is a child process whose stdout and stderr are pipes that the runner reads and
wraps into frames, and the runner is non-dumpable, so code running as the same user can
neither open its descriptors through /proc nor ptrace it. Completion comes from each
kernel on a control socket (out of band); the runner believes only what the kernel
process itself wrote there (its pid, from SCM_CREDENTIALS) for the block that runs.

Threads: the main thread runs one block at a time (a Block: select over its kernel's
pipes and control socket); a stdin thread reads requests and acts on ping, interrupt
and kill at once, so they work even while the main thread is blocked writing a flood of
output to the host, and never waits for output itself. An interrupt or kill for a block
that has not started yet is kept until it does. End of stdin, `shutdown` or a broken
stdout stop every kernel and end the runner at once, mid-block too.

Layout: output (FrameWriter), processes, control channels (Control), kernels (one
interface for Python, shell and file-run languages), requests, one block (Block), the
runner (Runner), main.

Left to others: deciding timeouts (the host sends interrupt, then kill), rendering,
and sandboxing itself (the container around this process; oi_guard only adds what a
container cannot: non-dumpable processes and a filter against setuid files).
"""

import array
import codecs
import collections
import fcntl
import json
import os
import queue
import re
import selectors
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time

import oi_guard

PROTOCOL = 1
HERE = os.path.dirname(os.path.abspath(__file__))
READ_CHUNK = 64 * 1024

# Images: the formats sent, and the largest image (before base64). docs/protocol.md.
IMAGE_FORMATS = ("png", "jpeg", "gif", "webp", "svg+xml")
MAX_IMAGE_BYTES = 32 * 1024 * 1024
# The longest control message a kernel may send: an image at the limit, with room.
MAX_CTL_LINE = (MAX_IMAGE_BYTES + 2) // 3 * 4 + 64 * 1024
# The longest request line read from the host.
MAX_REQUEST_LINE = 64 * 1024 * 1024
# Control data read per wake-up, so that a flood there does not starve the output.
CTL_READS_PER_WAKE = 64

# What a request may carry (file-run languages): validated, never trusted.
EXTENSION = re.compile(r"[A-Za-z0-9]{1,16}\Z")
LANGUAGE_NAME = re.compile(r"[^\x00-\x20\x7f]{1,64}\Z")
MAX_COMMAND = 8 * 1024
MAX_ID = 2**64 - 1

def encode(frame):
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "replace") + b"\n"


class FrameWriter:
    """The runner's stdout: one frame a line, never two interleaved.

    A block's frames are written in order by the main thread, which waits while the
    host is slow to read (that is the back-pressure on a flood of output). Frames that
    answer a request (`pong`, errors about a request) must never wait behind that, and
    the thread that reads requests must never block on output, or an `interrupt` sent
    after a `ping` would wait for the flood too: `send_now` queues the frame and writes
    it at once if the stream is free; if not, the thread writing releases the stream
    only after it has written what was queued, so the answer goes out right after the
    frame being written."""

    def __init__(self, stream, broken):
        self.stream = stream
        self.broken = broken  # called once the host is gone
        self.lock = threading.Lock()
        self.urgent = collections.deque()

    def send(self, frame):
        data = encode(frame)
        with self.lock:
            self._write(data)
            self._write_urgent()
        self._flush_urgent()

    def send_now(self, frame):
        self.urgent.append(encode(frame))
        self._flush_urgent()

    def _flush_urgent(self):
        # Whoever fails to take the lock leaves the frames to the thread holding it,
        # which looks again after releasing it: none is left behind.
        while self.urgent and self.lock.acquire(blocking=False):
            try:
                self._write_urgent()
            finally:
                self.lock.release()

    def _write_urgent(self):
        while self.urgent:
            self._write(self.urgent.popleft())

    def _write(self, data):
        try:
            self.stream.write(data)
            self.stream.flush()
        except (OSError, ValueError):
            # The host is gone: nobody will read another frame.
            self.broken()


def log(message):
    """Diagnostics of the runner itself go to its stderr, never to the frame stream."""
    try:
        sys.stderr.write("oi-runner: %s\n" % message)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


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
    text = "the %s interpreter exited with code %d" % (lang, returncode)
    if lang == "shell":
        text += " (`exit`, a failing command under `set -e`, `exec`, or closed descriptors)"
    return text


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


def _child_setup():
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    # On the host nothing else would stop a kernel whose runner is gone.
    try:
        oi_guard.die_with_parent()
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


def unread_bytes(sock):
    """Bytes written on `sock` that its peer has not read yet (SIOCOUTQ)."""
    count = array.array("i", [0])
    fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, count, True)
    return count[0]


# ---------------------------------------------------------------------------
# Control channels

EOF = object()
OVERSIZE = object()
_CRED_SIZE = struct.calcsize("iII")


class Control:
    """The runner's end of a kernel's control socket. Keeps only what the kernel
    process itself wrote (SCM_CREDENTIALS, which the kernel fills in and a sender cannot
    forge), so that processes a block leaves behind holding a copy of the socket cannot
    speak for it. Splits lines in linear time and drops any over MAX_CTL_LINE."""

    def __init__(self, sock):
        self.sock = sock
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.pid = None
        self.parts = []  # pieces of the line being read
        self.size = 0
        self.skipping = False  # inside a line over the limit
        self.eof = False
        self.foreign = 0  # bytes other processes wrote, dropped

    def fileno(self):
        return self.sock.fileno()

    def read(self):
        """What the kernel wrote since the last call: complete lines (bytes), OVERSIZE
        for each line dropped for its size, and EOF once the socket is closed."""
        lines = []
        for _ in range(CTL_READS_PER_WAKE):
            try:
                data, ancillary, _, _ = self.sock.recvmsg(READ_CHUNK, socket.CMSG_SPACE(_CRED_SIZE), socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                data, ancillary = b"", []
            if not data:
                self.eof = True
                lines.append(EOF)
                break
            if self.pid is None or sender(ancillary) != self.pid:
                self.foreign += len(data)
                continue
            self.take(data, lines)
        return lines

    def take(self, data, lines):
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                self.append(data[start:])
                return
            self.append(data[start:end])
            lines.append(OVERSIZE if self.skipping else b"".join(self.parts))
            self.parts, self.size, self.skipping = [], 0, False
            start = end + 1

    def append(self, piece):
        if self.skipping or not piece:
            return
        self.size += len(piece)
        if self.size > MAX_CTL_LINE:
            self.parts, self.skipping = [], True
            return
        self.parts.append(piece)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def sender(ancillary):
    """The pid in a message's SCM_CREDENTIALS, or None."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(data) >= _CRED_SIZE:
            return struct.unpack("iII", data[:_CRED_SIZE])[0]
    return None


# ---------------------------------------------------------------------------
# Kernels


class Kernel:
    """What runs the blocks of one language. Python and shell keep one interpreter
    alive across blocks; a file-run language starts a process per block. Either way the
    Runner and a Block use only this interface and never ask which kernel they have.

    A kernel reports in messages, dicts with a kind `t`: "ready" (it takes blocks),
    "start" (the block's code runs now, so an interrupt reaches it: one that came
    earlier waits for this), "line" and "image" (placed in the output by `out`),
    "notice", "done" (the block is over, with `status` and maybe `exit_code` and
    `message`) and "eof" (the control socket closed). They come from its control socket
    (`parse_ctl`), from handing a block over (`submit`) or from `poll`."""

    def __init__(self, lang, wake):
        self.lang = lang
        self.wake = wake  # written when the process exits, to wake the main thread
        self.proc = None
        self.ctl = None  # the Control of its control socket, if it has one
        self.ready = False
        # How the host stopped the running block (set from the stdin thread).
        self.interrupted = False
        self.kill_requested = False
        # Why the runner stopped it, for the notice of the block that replaces it.
        self.stopped_why = None

    # -- lifecycle
    def start(self):
        """Starts the interpreter; it says "ready" when it takes blocks."""
        raise NotImplementedError

    def usable(self):
        """Whether the next block can run here, with the state the last one left."""
        return self.stopped_why is None and self.running()

    def why_replaced(self):
        """Why a kernel that is no longer usable is replaced (for a notice)."""
        return self.stopped_why or describe_exit(self.lang, self.proc.returncode if self.proc else None)

    def begin(self):
        """A block is about to be handed over: forget how the last one was stopped."""
        self.interrupted = False
        self.kill_requested = False

    def submit(self, req):
        """Hands the block's code over; returns the messages to act on at once."""
        raise NotImplementedError

    def end(self):
        """The block is over and its `done` sent."""

    def close(self):
        if self.proc is not None:
            self.terminate()
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
        if self.ctl is not None:
            self.ctl.close()

    def _spawn(self, argv, stdin, extra_env=None, pass_fds=()):
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
                start_new_session=True,
                preexec_fn=_child_setup,
            )
        finally:
            OomScore.set(OomScore.own)
        for f in (self.proc.stdout, self.proc.stderr):
            os.set_blocking(f.fileno(), False)
        if self.ctl is not None:
            self.ctl.pid = self.proc.pid
        threading.Thread(target=self._watch, args=(self.proc,), daemon=True).start()

    def _watch(self, proc):
        proc.wait()
        try:
            os.write(self.wake, b"x")
        except OSError:
            pass

    # -- the running block
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def exited(self):
        """Whether the process that runs the block is gone."""
        return self.proc is not None and self.proc.poll() is not None

    def exit_outcome(self):
        """How the block ended, its process having exited without saying "done"."""
        raise NotImplementedError

    def out_fds(self):
        if self.proc is None:
            return []
        return [self.proc.stdout.fileno(), self.proc.stderr.fileno()]

    def parse_ctl(self, line):
        """A control line as a message, or None to ignore it."""
        return None

    def poll_interval(self):
        """How often the running block wants `poll` called (None: never)."""
        return None

    def poll(self):
        """Why the block is over although the kernel did not say so (the kernel is then
        stopped), or None."""
        return None

    # -- stopping (any thread)
    def interrupt(self):
        if not self.running():
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
        self.terminate()

    def terminate(self):
        """SIGKILL to the interpreter and its session."""
        if self.proc is None:
            return
        kill_session(self.proc.pid)
        try:
            self.proc.kill()
        except OSError:
            pass

    def stop_leftovers(self):
        """Stops every process of the kernel's session but the kernel itself; returns
        how many there were."""
        if self.proc is None:
            return 0
        pid = self.proc.pid
        strays = [p for p in session_members(pid) if p != pid]
        if strays:
            kill_session(pid, spare=(pid,))
        return len(strays)


class Interpreter(Kernel):
    """A kernel that keeps one interpreter, and its state, across blocks: the end of a
    block comes on its control socket, and the interpreter exiting is a crash."""

    def exit_outcome(self):
        code = self.proc.returncode
        if self.kill_requested:
            message = "the %s interpreter did not stop on interrupt and was restarted: its state was lost"
            return {"status": "interrupted", "message": message % self.lang}
        message = "%s; the next block starts a new one (state was lost)" % describe_exit(self.lang, code)
        return {"status": "crashed", "exit_code": code if code >= 0 else None, "message": message}

    def _hand_over(self, sock, data):
        try:
            sock.sendall(data)
        except OSError as exc:
            # An interpreter that cannot take its block is useless: its exit ends the block.
            log("handing a block to the %s interpreter failed: %r" % (self.lang, exc))
            self.terminate()
        return []


class PythonKernel(Interpreter):
    def start(self):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.chan = ours
        self.ctl = Control(ours)
        self.block = 0
        boot = (
            "import sys; sys.path.append(%r); import oi_guard; oi_guard.make_undumpable(); "
            "import oi_kernel; oi_kernel.main(%d)" % (HERE, theirs.fileno())
        )
        try:
            self._spawn(
                [guarded_binary("python3", sys.executable), "-u", "-c", boot],
                stdin=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                extra_env={
                    "PYTHONUNBUFFERED": "1",
                    # Figures become image events; processes the block starts find the
                    # backend too (through PYTHONPATH) and render off-screen as with Agg.
                    "MPLBACKEND": "module://oi_mpl_backend",
                    "PYTHONPATH": os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), HERE) if p),
                },
            )
        finally:
            theirs.close()

    def parse_ctl(self, line):
        try:
            msg = json.loads(line)
        except ValueError:
            return None
        # A message of another block (a thread or a stale write) is not this one's.
        if not isinstance(msg, dict) or msg.get("block") != self.block:
            return None
        kind = msg.get("t")
        out = msg.get("out")
        out = out if _is_int(out) and out >= 0 else 0
        if kind in ("ready", "start"):
            return {"t": kind}
        if kind == "done":
            status = msg.get("status")
            return {"t": "done", "status": status if status in ("ok", "error", "interrupted") else "error"}
        if kind == "line" and _is_int(msg.get("line")) and 0 < msg["line"] < 2**31:
            return {"t": "line", "line": msg["line"], "out": out}
        if kind == "image":
            return checked_image(msg.get("format"), msg.get("data"), out)
        return None

    def submit(self, req):
        self.block += 1
        return self._hand_over(self.chan, json.dumps({"code": req["code"], "block": self.block}).encode() + b"\n")


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def checked_image(fmt, data, out):
    """An image message the host may receive, or a notice saying why not."""
    if fmt not in IMAGE_FORMATS:
        return {"t": "notice", "message": "an image in an unsupported format was not sent (formats: %s)" % ", ".join(IMAGE_FORMATS)}
    if not isinstance(data, str) or len(data) > (MAX_IMAGE_BYTES + 2) // 3 * 4:
        return {"t": "notice", "message": "an image over %d MiB was not sent" % (MAX_IMAGE_BYTES // 2**20)}
    return {"t": "image", "format": fmt, "data": data, "out": out}


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


class ShellKernel(Interpreter):
    """An interactive bash fed one line per block on a socket (its stdin). Interactive
    mode is what makes an interrupt abort the whole block (even a loop of builtins) and
    return to the prompt with the shell's state intact. The line first calls oi_bashrc's
    read-only `__oi_start`, which reports `start <command number>` once bash has read
    and parsed the whole line (an interrupt before that would cut the line in two);
    before each prompt, its read-only hook reports `<status> <command number>`.

    A block that disables the hook anyway (an extdebug DEBUG trap, a function named
    `builtin`, closed descriptors) must not hang the session: after the block's line has
    been read, the runner writes an empty probe line, and when the shell has read that
    too, the block is over whether or not it said so."""

    def start(self):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        commands, shell_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.ctl = Control(ours)
        self.commands = commands
        self.ctl_fd = theirs.fileno()
        self.number = None  # the shell's command number at its last report
        self.probe = None  # None, "line" (block written) or "probe" (probe written)
        try:
            self._spawn(
                [guarded_binary("bash", "bash"), "--noprofile", "--rcfile", os.path.join(HERE, "oi_bashrc"), "--noediting", "-i"],
                stdin=shell_end.fileno(),
                pass_fds=(theirs.fileno(),),
                extra_env={"OI_CTL_FD": str(theirs.fileno())},
            )
        finally:
            theirs.close()
            shell_end.close()

    @staticmethod
    def _report(line):
        """(status, number) of a report line, ("start", number) of a start line, or None."""
        try:
            first, number = line.split()
            return (first.decode() if first == b"start" else int(first)), int(number)
        except ValueError:
            return None

    def parse_ctl(self, line):
        report = self._report(line)
        if report is None:
            return None
        code, number = report
        if self.number is None:
            if code == "start":
                return None
            self.number = number
            return {"t": "ready"}
        if number <= self.number:
            return None  # a prompt redrawn without a block (a late interrupt, the probe)
        if code == "start":
            return {"t": "start"}
        self.number = number
        self.probe = None
        if self.interrupted:
            # Whatever the status: an interrupt that came just after `__oi_start` can
            # abort the line before it changed `$?`.
            return {"t": "done", "status": "interrupted", "exit_code": code}
        return {"t": "done", "status": "ok" if code == 0 else "error", "exit_code": code}

    def discard_stale(self):
        """Reports that came while no block ran belong to none: forget them."""
        for line in self.ctl.read():
            report = self._report(line) if isinstance(line, bytes) else None
            if report is not None and report[0] != "start":
                self.number = max(self.number, report[1])

    def submit(self, req):
        self.discard_stale()
        line = "\\__oi_start; eval %s </dev/null %d>&-\n" % (bash_quote(req["code"]), self.ctl_fd)
        self.probe = "line"
        return self._hand_over(self.commands, line.encode("utf-8", "replace"))

    def poll_interval(self):
        return {"line": 0.002, "probe": 0.05}.get(self.probe)

    def poll(self):
        if self.probe is None:
            return None
        if self.interrupted:
            self.stop_leftovers()
        try:
            if unread_bytes(self.commands):
                return None
            if self.probe == "line":
                # The shell has the block's line: whatever it reads next, it reads after
                # the block (and its report) ended.
                self.commands.sendall(b"\n")
                self.probe = "probe"
                return None
        except OSError:
            return None
        try:
            # Its stdin closes first when bash exits (`exit`): then the exit ends the block.
            self.proc.wait(timeout=0.1)
            return None
        except subprocess.TimeoutExpired:
            pass
        return (
            "the block changed the shell so that it no longer reports the end of blocks (for example a "
            "DEBUG trap with extdebug, a function named `builtin`, closed descriptors); a new shell starts "
            "with the next block"
        )

    def end(self):
        # bash may have started a command just as the interrupt came, after the session
        # was swept: it then waits for that command, or leaves it running and reports
        # the block over, before it reads the next block's line.
        if self.interrupted:
            self.stop_leftovers()

    def close(self):
        super().close()
        try:
            self.commands.close()
        except (OSError, AttributeError):
            pass


class FileKernel(Kernel):
    """A configured language: each block is written to a file and a command runs it.
    No state survives between blocks, so it is always usable; the block is its process
    (its exit status is the block's) and whatever that process leaves running is
    stopped when it ends."""

    def __init__(self, lang, wake):
        super().__init__(lang, wake)
        self.path = None

    def start(self):
        self.ready = True

    def usable(self):
        return True

    def submit(self, req):
        try:
            fd, self.path = tempfile.mkstemp(prefix="oi-block-", suffix="." + (req.get("extension") or "txt"))
            with os.fdopen(fd, "w", encoding="utf-8", errors="replace") as f:
                f.write(req["code"])
            template = req["command"]
            command = template.replace("{file}", shlex.quote(self.path))
            if command == template:
                command = template + " " + shlex.quote(self.path)
            self._spawn(["sh", "-c", command], stdin=subprocess.DEVNULL)
        except OSError as exc:
            return [{"t": "done", "status": "error", "message": "could not start the %s block: %s" % (self.lang, exc)}]
        return [{"t": "start"}]

    def exit_outcome(self):
        code = self.proc.returncode
        if self.interrupted or self.kill_requested:
            return {"status": "interrupted", "exit_code": code}
        if code < 0:
            return {"status": "crashed", "message": describe_exit(self.lang, code).replace("interpreter", "process")}
        return {"status": "ok" if code == 0 else "error", "exit_code": code}

    def end(self):
        proc, self.proc = self.proc, None
        if proc is not None:
            kill_session(proc.pid)
            for f in (proc.stdout, proc.stderr):
                f.close()
        if self.path:
            try:
                os.unlink(self.path)
            except OSError:
                pass
            self.path = None

    def close(self):
        self.end()


# ---------------------------------------------------------------------------
# Requests


class BadRequest(Exception):
    pass


def parse_request(line):
    """A request line as a dict with a valid `op` (and `id` where the op needs one)."""
    try:
        req = json.loads(line)
    except (ValueError, RecursionError) as exc:
        raise BadRequest("malformed request (%s): %r" % (exc.__class__.__name__, line[:200]))
    if not isinstance(req, dict) or not isinstance(req.get("op"), str):
        raise BadRequest("malformed request (no op): %r" % (line[:200],))
    if req["op"] in ("exec", "interrupt", "kill", "ping"):
        rid = req.get("id")
        if not _is_int(rid) or not 0 <= rid <= MAX_ID:
            raise BadRequest("malformed %s request: `id` must be an integer from 0 to 2^64-1" % req["op"])
    return req


def version_problem(req):
    """Why a request's protocol version `v` is not this runner's, or None."""
    v = req.get("v")
    if _is_int(v) and v == PROTOCOL:
        return None
    if "v" not in req:
        return "the request has no protocol version `v` (this runner speaks version %d)" % PROTOCOL
    return "the request is for protocol version %s, this runner speaks version %d" % (json.dumps(v)[:40], PROTOCOL)


def exec_problem(req):
    """Why an exec request cannot run, or None."""
    version = version_problem(req)
    if version is not None:
        return version
    lang, code = req.get("lang"), req.get("code")
    if not isinstance(code, str):
        return "`code` must be a string"
    if not isinstance(lang, str) or not LANGUAGE_NAME.match(lang):
        return "`lang` must be a name of 1 to 64 printable characters"
    if lang in ("python", "shell"):
        return None
    command, extension = req.get("command"), req.get("extension")
    if not isinstance(command, str) or not command.strip():
        return "unknown language %r (no command to run it)" % lang
    if len(command) > MAX_COMMAND or "\x00" in command:
        return "the command of language %r is over %d characters or holds a NUL" % (lang, MAX_COMMAND)
    if extension is not None and not (isinstance(extension, str) and EXTENSION.match(extension)):
        return "the file extension of language %r must be 1 to 16 letters or digits" % lang
    return None


# ---------------------------------------------------------------------------
# One block

NOT_RUN = "the block was stopped before it started: none of it ran"


def _positioned(msg):
    return msg.get("t") in ("image", "line")


def _new_decoder():
    return codecs.getincrementaldecoder("utf-8")("replace")


class Block:
    """One `exec` request in one kernel: its output forwarded as frames in order, images
    and active lines kept in their place, and exactly one `done` at the end.

    Control messages not acted on yet wait in `pending`. An image or active-line
    message carries `out`, how many bytes of stdout the block had written before it: it
    is sent once that much stdout has been, so it keeps its place in the output even when
    the runner reads both pipes late.

    The host may interrupt or kill the block at any time, from the stdin thread
    (`request_stop`, under the runner's lock). A block stopped before its code was
    handed over does not run. After that, a kill acts at once; an interrupt waits for
    the kernel's "start": a SIGINT that reached the interpreter before it ran the code
    would be lost (Python ignores one between blocks) or cut the shell's line in two."""

    def __init__(self, runner, req):
        self.runner = runner
        self.out = runner.out
        self.req = req
        self.rid = req["id"]
        self.kernel = None
        self.pids_at_start = pids_limit_hits()
        self.sel = selectors.DefaultSelector()
        self.decoders = {}
        self.fds = {}  # output fd -> "stdout" / "stderr"
        self.pending = collections.deque()
        self.sent_out = 0
        self.ctl_closed = False
        # Shared with the stdin thread (changed under the runner's lock).
        self.stop = None  # "interrupt" or "kill", once the host asked for it
        self.submitted = False
        self.started = False
        self.ended = False

    # -- running
    def run(self):
        try:
            if self.prepare():
                if self.kernel.ready:
                    self.submit()
                if not self.ended:
                    self.watch()
                while not self.ended:
                    self.step()
        finally:
            self.sel.close()

    def prepare(self):
        """Checks the request and finds its kernel; False when the block ends here."""
        problem = exec_problem(self.req)
        if problem is not None:
            self.finish({"status": "error", "message": "oi runner refused the block: %s" % problem})
            return False
        if self.stop is not None:
            self.finish({"status": "interrupted", "message": NOT_RUN})
            return False
        self.kernel, notice = self.runner.kernel(self.req["lang"])
        if notice:
            self.out.send({"type": "notice", "id": self.rid, "message": notice})
        self.kernel.begin()
        return True

    def watch(self):
        for name, fd in zip(("stdout", "stderr"), self.kernel.out_fds()):
            self.fds[fd] = name
            self.decoders[name] = _new_decoder()
            self.sel.register(fd, selectors.EVENT_READ, name)
        ctl = self.kernel.ctl
        if ctl is not None and not ctl.eof:
            self.sel.register(ctl.fileno(), selectors.EVENT_READ, "ctl")
        self.sel.register(self.runner.wake_r, selectors.EVENT_READ, "wake")

    def submit(self):
        with self.runner.lock:
            self.submitted = self.stop is None
        if not self.submitted:
            self.finish({"status": "interrupted", "message": NOT_RUN})
            return
        self.pending.extend(self.kernel.submit(self.req))

    def step(self):
        # Messages taken off the control socket while reading stdout (to place them in
        # the output), or given by `submit`: select will not report them.
        if self.pending:
            self.handle_ctl()
            if self.ended:
                return
        timeout = self.kernel.poll_interval() if self.submitted else None
        for key, _ in self.sel.select(timeout):
            what = key.data
            if what in ("stdout", "stderr"):
                # An earlier event of this batch may have read the pipe to its end.
                if key.fd in self.fds:
                    self.forward(key.fd)
            elif what == "wake":
                try:
                    os.read(self.runner.wake_r, 4096)
                except BlockingIOError:
                    pass
            elif what == "ctl":
                self.handle_ctl()
            if self.ended:
                return
        if not self.submitted and self.stop is not None:
            self.finish({"status": "interrupted", "message": NOT_RUN})
        else:
            self.check_kernel()

    def check_kernel(self):
        kernel = self.kernel
        if kernel.exited():
            self.handle_ctl()  # its "done" may be waiting on the socket
            if not self.ended:
                self.drain()
                self.finish(kernel.exit_outcome())
        elif self.ctl_closed:
            # `exit` closes the socket too: give the process a moment to be seen gone.
            try:
                kernel.proc.wait(timeout=0.3)
            except subprocess.TimeoutExpired:
                self.stop_kernel(
                    "the %s interpreter was replaced or closed oi's control channel (`exec`, closed "
                    "descriptors); a new one starts with the next block" % kernel.lang
                )
        elif self.submitted:
            unreported = kernel.poll()
            if unreported:
                self.handle_ctl()
                if not self.ended:
                    self.stop_kernel(unreported)

    # -- stopping
    def request_stop(self, op):
        """The host asked to interrupt or kill this block (stdin thread, runner lock held)."""
        if self.ended:
            return
        if self.stop != "kill":
            self.stop = op
        if self.started or (op == "kill" and self.submitted):
            self.deliver(op)
        self.runner.wake()

    def deliver(self, op):
        if op == "kill":
            self.kernel.kill()
        else:
            self.kernel.interrupt()

    def on_start(self):
        with self.runner.lock:
            self.started = True
            if self.stop is not None:
                self.deliver(self.stop)

    # -- output
    def send_output(self, name, text):
        if text and self.submitted:
            self.out.send({"type": name, "id": self.rid, "data": text})

    def emit(self, msg):
        if not self.submitted:
            return
        if msg["t"] == "image":
            self.out.send({"type": "image", "id": self.rid, "format": msg["format"], "data": msg["data"]})
        else:
            self.out.send({"type": "active_line", "id": self.rid, "line": msg["line"]})

    def emit_reached(self):
        pending = self.pending
        while pending and _positioned(pending[0]) and pending[0]["out"] <= self.sent_out:
            self.emit(pending.popleft())

    def send_text(self, name, data):
        if name != "stdout" or not self.submitted:
            self.send_output(name, self.decoders[name].decode(data))
            return
        if self.ctl_registered():
            self.pending.extend(self.read_ctl())
        self.emit_reached()
        while data:
            part = data
            if self.pending and _positioned(self.pending[0]):
                part = data[: max(0, self.pending[0]["out"] - self.sent_out)] or data
            data = data[len(part) :]
            self.send_output(name, self.decoders[name].decode(part))
            self.sent_out += len(part)
            self.emit_reached()

    def forward(self, fd, final=False):
        """Reads what is waiting on one output pipe; False at end of file."""
        name = self.fds[fd]
        while True:
            try:
                data = os.read(fd, READ_CHUNK)
            except BlockingIOError:
                return True
            except OSError:
                data = b""
            if not data:
                self.sel.unregister(fd)
                del self.fds[fd]
                self.send_output(name, self.decoders[name].decode(b"", final=True))
                return False
            self.send_text(name, data)
            if not final and len(data) < READ_CHUNK:
                return True

    def drain(self):
        for fd in list(self.fds):
            self.forward(fd, final=True)
        for name, dec in self.decoders.items():
            self.send_output(name, dec.decode(b"", final=True))

    # -- control
    def ctl_registered(self):
        ctl = self.kernel.ctl
        return ctl is not None and not self.ctl_closed and ctl.fileno() in self.sel.get_map()

    def read_ctl(self):
        msgs = []
        for line in self.kernel.ctl.read():
            if line is EOF:
                msgs.append({"t": "eof"})
            elif line is OVERSIZE:
                msgs.append({"t": "notice", "message": "a control message over %d MiB from the interpreter was dropped" % (MAX_CTL_LINE // 2**20)})
            else:
                msg = self.kernel.parse_ctl(line)
                if msg is not None:
                    msgs.append(msg)
        return msgs

    def handle_ctl(self):
        """Acts on the control messages waiting; sets `ended` once the block is over."""
        if self.ctl_registered():
            self.pending.extend(self.read_ctl())
        while self.pending and not self.ended:
            msg = self.pending[0]
            if _positioned(msg):
                self.place(msg)
                continue
            self.pending.popleft()
            self.act(msg)

    def place(self, msg):
        """Sends an image or active line once the stdout before it is sent."""
        # That stdout is in the pipe already: read it first.
        for fd, name in list(self.fds.items()):
            if name == "stdout":
                self.forward(fd)
        if self.pending and self.pending[0] is msg:
            # The counts disagree (code wrote to fd 1 directly): send it now.
            self.emit(self.pending.popleft())

    def act(self, msg):
        kind = msg["t"]
        if kind == "eof":
            if not self.ctl_closed:
                self.ctl_closed = True
                self.sel.unregister(self.kernel.ctl.fileno())
        elif kind == "notice":
            if self.submitted:
                self.out.send({"type": "notice", "id": self.rid, "message": msg["message"]})
        elif kind == "ready":
            # Anything printed while the interpreter started (bash's job-control
            # warnings) is not the block's output.
            self.drain()
            for name in self.decoders:
                self.decoders[name] = _new_decoder()
            self.kernel.ready = True
            if not self.submitted:
                self.submit()
        elif kind == "start" and self.submitted:
            self.on_start()
        elif kind == "done" and self.submitted:
            self.drain()
            while self.pending:
                late = self.pending.popleft()
                if _positioned(late):
                    self.emit(late)
            self.finish(msg)

    # -- the end
    def finish(self, fields):
        """Sends the block's `done` with `fields` (status, exit_code, message)."""
        # A block that ran into the process limit (a fork bomb) must not leave the
        # session unable to start anything: stop what it left running.
        if self.kernel is not None and pids_limit_hits() > self.pids_at_start:
            strays = self.kernel.stop_leftovers()
            if strays:
                self.out.send(
                    {
                        "type": "notice",
                        "id": self.rid,
                        "message": "the block reached the sandbox's process limit; its %d leftover "
                        "processes were stopped so that the session stays usable" % strays,
                    }
                )
        frame = {k: fields.get(k) for k in ("status", "exit_code", "message") if fields.get(k) is not None}
        frame.update({"type": "done", "id": self.rid})
        # Ended before the host can know it: an interrupt or kill that comes after
        # this `done` is late and must not reach the interpreter.
        with self.runner.lock:
            self.ended = True
        self.out.send(frame)

    def stop_kernel(self, message):
        """Ends the block as crashed and the kernel with it (the next block starts a new
        one): for a kernel that can no longer be trusted to say when blocks end."""
        self.kernel.terminate()
        self.kernel.stopped_why = "the %s interpreter was stopped at the end of the previous block" % self.kernel.lang
        self.drain()
        self.finish({"status": "crashed", "message": message})

    def fail(self, exc):
        """The runner's own code failed while running the block: the host still gets
        its `done`, and the kernel, whose state the runner lost track of, is stopped."""
        if self.ended:
            return
        message = "oi runner error: %r" % (exc,)
        if self.kernel is not None:
            self.kernel.terminate()
            self.kernel.stopped_why = "the %s interpreter was stopped after an error of oi's runner" % self.kernel.lang
            message += "; the %s interpreter was stopped, the next block starts a new one" % self.kernel.lang
        self.finish({"status": "crashed", "message": message})


# ---------------------------------------------------------------------------
# The runner

KERNELS = {"python": PythonKernel, "shell": ShellKernel}


def _request_id(req):
    rid = req.get("id")
    return rid if _is_int(rid) and 0 <= rid <= MAX_ID else None


class Runner:
    """Serves the host's requests. A stdin thread reads them and acts at once on those
    that cannot wait (`ping`, `interrupt`, `kill`, `shutdown`), so that they work while
    the main thread is busy or blocked writing a flood of output; the main thread runs
    the `exec`s one at a time, in order.

    An `interrupt` or `kill` can arrive before its block started (the host sends it as
    soon as it likes: Ctrl-C at once, a tiny timeout): it is kept in `early` while that
    block waits in the queue and handed to the block when it starts. One for a block
    that is over, or was never asked for, is dropped."""

    def __init__(self, requests, frames, exit=os._exit):
        self.requests = requests  # the host's requests, a binary stream
        self.out = FrameWriter(frames, lambda: self.abandon("its stdout was closed", 1))
        self.exit = exit
        self.queue = queue.Queue()  # execs, in order; None to stop
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.kernels = {}  # lang -> Kernel
        self.lock = threading.Lock()  # guards what follows (stdin and main thread)
        self.block = None  # the running Block
        self.queued = set()  # ids of execs read but not started yet
        self.early = {}  # id of a queued exec -> "interrupt" or "kill"

    def wake(self):
        """Wakes the main thread from its wait on the running block's pipes."""
        try:
            os.write(self.wake_w, b"x")
        except BlockingIOError:
            pass  # a wake-up is pending already

    # -- stdin thread
    def read_requests(self):
        while True:
            line = self.requests.readline(MAX_REQUEST_LINE + 1)
            if not line:
                self.abandon("end of stdin (the host went away)")
                return
            if not line.endswith(b"\n") and len(line) > MAX_REQUEST_LINE:
                while line and not line.endswith(b"\n"):
                    line = self.requests.readline(READ_CHUNK)
                self.refuse(None, "a request over %d MiB was ignored" % (MAX_REQUEST_LINE // 2**20))
                continue
            try:
                self.take_request(parse_request(line))
            except BadRequest as exc:
                self.refuse(None, str(exc))
            except Exception as exc:  # the stdin thread must outlive any one request
                log("internal error on a request: %r" % (exc,))
                self.refuse(None, "oi runner error: %r" % (exc,))

    def refuse(self, rid, message):
        self.out.send_now({"type": "error", "id": rid, "message": message})

    def take_request(self, req):
        op = req["op"]
        if op == "exec":
            # Checked when it runs, so that its refusal is its `done`, in order.
            with self.lock:
                self.queued.add(req["id"])
            self.queue.put(req)
            return
        problem = version_problem(req)
        if problem is not None:
            self.refuse(_request_id(req), "oi runner refused the %s request: %s" % (op[:64], problem))
        elif op in ("interrupt", "kill"):
            self.stop_block(req["id"], op)
        elif op == "ping":
            self.out.send_now({"type": "pong", "id": req["id"]})
        elif op == "shutdown":
            self.abandon("asked to shut down")
        else:
            self.refuse(_request_id(req), "unknown op %r" % op[:64])

    def stop_block(self, rid, op):
        with self.lock:
            block = self.block
            if block is not None and block.rid == rid:
                block.request_stop(op)
            elif rid in self.queued and self.early.get(rid) != "kill":
                self.early[rid] = op

    def stop_all(self):
        """Kills every kernel and what it started (any thread; for abandon)."""
        for kernel in list(self.kernels.values()):
            kernel.terminate()

    def abandon(self, why, code=0):
        """Stops every kernel and everything they started, and ends the runner now, from
        any thread, whatever the main thread is doing."""
        log("exiting: %s" % why)
        self.stop_all()
        self.queue.put(None)
        self.exit(code)

    # -- main thread
    def serve(self):
        _oom_at_start[0] = oom_kills()
        self.out.send(
            {
                "v": PROTOCOL,
                "type": "hello",
                "runner": "oi-runner",
                "pid": os.getpid(),
                "python": sys.version.split()[0],
                "languages": sorted(KERNELS),
            }
        )
        threading.Thread(target=self.read_requests, daemon=True).start()
        # The first block is nearly always Python: start its interpreter now, while the
        # host is still getting ready, instead of on the first request.
        try:
            self.kernel("python")
        except Exception as exc:  # the first Python block will say why
            log("could not start the python interpreter ahead of the first block: %r" % (exc,))
        while True:
            req = self.queue.get()
            if req is None:
                return
            try:
                self.execute(req)
            except Exception as exc:  # the runner must outlive any one block
                log("internal error after a block: %r" % (exc,))

    def kernel(self, lang):
        """The kernel for `lang`, and a notice if it replaces one that lost its state."""
        kernel = self.kernels.get(lang)
        if kernel is not None and kernel.usable():
            return kernel, None
        notice = None
        if kernel is not None:
            notice = "%s; started a new one: its state (variables, imports, working directory) was lost" % kernel.why_replaced()
            kernel.close()
        kernel = KERNELS.get(lang, FileKernel)(lang, self.wake_w)
        kernel.start()
        self.kernels[lang] = kernel
        return kernel, notice

    def execute(self, req):
        block = Block(self, req)
        with self.lock:
            self.queued.discard(block.rid)
            self.block = block
            early = self.early.pop(block.rid, None)
            if early is not None:
                block.request_stop(early)
        try:
            block.run()
        except Exception as exc:  # the runner must outlive any one block
            log("internal error: %r" % (exc,))
            block.fail(exc)
        finally:
            with self.lock:
                self.block = None
            if block.kernel is not None:
                block.kernel.end()


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
    # Writes to a closed pipe fail with EPIPE instead of killing the runner: a broken
    # stdout ends it through Runner.abandon(), a dead kernel's socket is that kernel's problem.
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    prepare_environment()
    Runner(sys.stdin.buffer, sys.stdout.buffer).serve()


if __name__ == "__main__":
    main(sys.argv)
