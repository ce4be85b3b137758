"""Helpers for the runner's tests: a runner spoken to raw, as a subprocess or in this
process, and waiting for frames."""

import json
import os
import select
import subprocess
import sys
import threading
import time
from unittest import mock

HERE = os.path.dirname(os.path.abspath(__file__))
RUNNER_DIR = os.path.dirname(HERE)
if RUNNER_DIR not in sys.path:
    sys.path.insert(0, RUNNER_DIR)
sys.dont_write_bytecode = True

import runner  # noqa: E402  (after the path is set)

BLOCK_OUTPUT = ("stdout", "stderr", "active_line", "image", "notice")

# Generous: the machines running the tests are shared and slow at times.
WAIT = 20


class FrameReader:
    """Splits a byte stream from the runner into frames (dicts)."""

    def __init__(self, fd):
        self.fd = fd
        self.buf = b""
        self.nbytes = 0  # bytes read so far

    def frame(self, timeout=WAIT):
        """The next frame; TimeoutError when none comes within `timeout` seconds."""
        parts = [self.buf]
        deadline = time.monotonic() + timeout
        while b"\n" not in parts[-1]:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.fd], [], [], max(0, left))
            if not ready:
                self.buf = b"".join(parts)
                raise TimeoutError("no frame from the runner within %s s" % timeout)
            data = os.read(self.fd, 1 << 20)
            if not data:
                raise EOFError("the runner closed its stdout")
            self.nbytes += len(data)
            parts.append(data)
        line, self.buf = b"".join(parts).split(b"\n", 1)
        return json.loads(line)

    def until(self, pred, timeout=WAIT):
        """Frames up to and including the first for which `pred` holds."""
        frames = []
        deadline = time.monotonic() + timeout
        while True:
            frames.append(self.frame(max(0.01, deadline - time.monotonic())))
            if pred(frames[-1]):
                return frames


class Conversation:
    """What tests do with a runner: send requests, read frames, run blocks."""

    def __init__(self):
        self.next_id = 100

    def new_id(self):
        self.next_id += 1
        return self.next_id

    def send(self, **request):
        request.setdefault("v", runner.PROTOCOL)
        self.send_raw(json.dumps(request))

    def send_raw(self, line):
        if isinstance(line, str):
            line = line.encode()
        self.write(line + b"\n")

    def frame(self, timeout=WAIT):
        return self.reader.frame(timeout)

    def answer(self, timeout=WAIT):
        """The next frame that is not a running block's output (an answer to a request,
        or a `done`)."""
        return self.reader.until(lambda f: f.get("type") not in BLOCK_OUTPUT, timeout)[-1]

    def until_done(self, rid, timeout=WAIT):
        return self.reader.until(lambda f: f.get("type") == "done" and f.get("id") == rid, timeout)

    def start(self, lang, code, **fields):
        """Sends an exec; returns its id."""
        rid = self.new_id()
        self.send(op="exec", id=rid, lang=lang, code=code, **fields)
        return rid

    def run(self, lang, code, timeout=WAIT, **fields):
        """Runs a block; returns (done frame, stdout, stderr, every frame)."""
        rid = self.start(lang, code, **fields)
        frames = self.until_done(rid, timeout)
        out = "".join(f["data"] for f in frames if f["type"] == "stdout" and f["id"] == rid)
        err = "".join(f["data"] for f in frames if f["type"] == "stderr" and f["id"] == rid)
        return frames[-1], out, err, frames


class RunnerProcess(Conversation):
    """The runner as the `--unsafe` backend starts it: a child process with --host."""

    def __init__(self):
        super().__init__()
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-u", os.path.join(RUNNER_DIR, "runner.py"), "--host"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        self.reader = FrameReader(self.proc.stdout.fileno())
        self.hello = self.frame()

    def write(self, data):
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def close(self):
        """Closes its stdin (as when oi goes) and waits for it to exit."""
        if self.proc.stdout.closed:
            return self.proc.returncode
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.stderr = self.proc.stderr.read().decode(errors="replace")
        self.proc.stderr.close()
        return self.proc.returncode


class InProcessRunner(Conversation):
    """A Runner serving in a thread of this process over pipes, so that a test can
    change its code (make it fail) and see what the host would."""

    def __init__(self):
        super().__init__()
        req_r, self.req_w = os.pipe()
        frames_r, frames_w = os.pipe()
        self.exited = threading.Event()
        self.logged = []  # what the runner wrote to its stderr
        self._log = mock.patch.object(runner, "log", self.logged.append)
        self._log.start()
        self.runner = runner.Runner(os.fdopen(req_r, "rb"), os.fdopen(frames_w, "wb"), exit=self._exit)
        self.thread = threading.Thread(target=self.runner.serve, daemon=True)
        self.thread.start()
        self.reader = FrameReader(frames_r)
        self.hello = self.frame()

    def _exit(self, code):
        self.exit_code = code
        self.exited.set()
        raise SystemExit(code)

    def write(self, data):
        os.write(self.req_w, data)

    def close(self):
        os.close(self.req_w)  # end of stdin: the runner stops its kernels
        self.exited.wait(WAIT)
        self.thread.join(WAIT)
        for kernel in self.runner.kernels.values():
            kernel.close()
        self.runner.requests.close()
        self.runner.out.stream.close()
        os.close(self.runner.wake_r)
        os.close(self.runner.wake_w)
        os.close(self.reader.fd)
        self._log.stop()


def wait_for(predicate, timeout=WAIT, every=0.01):
    """Whether `predicate()` became true within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return predicate()


def pid_alive(pid):
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 :].split()[0] != b"Z"
