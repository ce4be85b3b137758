"""oi's Python kernel: a long-lived interpreter that runs blocks like notebook cells.

Started by the runner with one end of a socket pair, its channel: it reads one JSON
request per line from it and reports there ("ready", "start", "image", "line", "done"),
each message carrying the block number of its request so that the runner can tell them
apart ("start": the block's code runs now, and an interrupt stops it). User code's
stdout and stderr are this process's own, which the runner reads; stdin is /dev/null.
The channel is closed in every child (non-inheritable, and closed after `os.fork`), and
the kernel is non-dumpable, so that processes a block leaves behind cannot use it; code
running inside this process can of course say what it likes about its own blocks
(docs/protocol.md).

Semantics: state persists across blocks; the value of a trailing expression is shown as
a REPL would; errors print a traceback. IPython syntax (`!cmd`, `%magic`, `x = !cmd`,
`obj?`) is accepted when IPython is installed: its shell is loaded on the first block
that needs it (loading costs ~0.3 s, which plain blocks never pay), and from then on
runs every block so that the two never disagree.
"""

import ast
import base64
import builtins
import io
import json
import linecache
import os
import re
import signal
import socket
import sys
import threading
import traceback
import types

# The largest image sent, before base64; larger ones are refused with a message (the
# runner enforces the same limit: docs/protocol.md).
MAX_IMAGE_BYTES = 32 * 1024 * 1024

_chan = None  # the socket to the runner, in the kernel process only
_chan_lock = threading.Lock()  # one message at a time, whichever thread reports
_block = 0  # the number of the request being run
_running = False  # a block runs: SIGINT interrupts it
_reporting = False  # the main thread is writing a message: an interrupt waits for its end
_deferred = False  # an interrupt came while it was
_cell = 0
_shell = None  # IPython's InteractiveShell, once a block needed it
_stdout_raw = None  # counts what the block writes to stdout

_IPYTHON_SYNTAX = re.compile(
    r"^\s*(?:[!%]|\w[\w\s,]*=\s*[!%])|^\s*[\w.]+\?{1,2}\s*$|\bget_ipython\(\)|^\s*display\(",
    re.MULTILINE,
)


def _report(msg):
    """Sends a message to the runner, whole: a KeyboardInterrupt in the middle of one
    (an image is megabytes) would leave half a line that swallows the next, the block's
    "done" included. An interrupt of the main thread while it reports is raised after."""
    global _reporting, _deferred
    if _chan is None:
        return
    main = threading.current_thread() is threading.main_thread()
    if main:
        _reporting = True
    try:
        _flush_std()
        # How much stdout the block wrote before this message: the runner uses it to
        # keep images and active lines in their place in the output.
        msg["out"] = _stdout_raw.count if _stdout_raw is not None else 0
        msg["block"] = _block
        data = json.dumps(msg).encode() + b"\n"
        with _chan_lock:
            _chan.sendall(data)
    finally:
        if main:
            _reporting = False
    if main and _deferred:
        _deferred = False
        if _running:
            raise KeyboardInterrupt


def _flush_std():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


def is_kernel():
    """Whether this process is oi's kernel (and not a script it started or a fork)."""
    return _chan is not None


def emit_png(data):
    """Sends PNG bytes to the host as an image event (refused over MAX_IMAGE_BYTES)."""
    if len(data) > MAX_IMAGE_BYTES:
        print(
            "oi: an image of %.1f MiB was not sent: the limit is %d MiB"
            % (len(data) / 2**20, MAX_IMAGE_BYTES // 2**20),
            file=sys.stderr,
        )
        return
    _report({"t": "image", "format": "png", "data": base64.b64encode(data).decode()})


def emit_figures():
    """Sends every open matplotlib figure as a PNG and closes it."""
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is None:
        return
    for num in plt.get_fignums():
        fig = plt.figure(num)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", bbox_inches="tight")
        emit_png(buf.getvalue())
    plt.close("all")


def display(*objs):
    """Shows objects as a notebook would: images as image events, the rest as text."""
    for obj in objs:
        if _shell is not None:
            from IPython.display import display as ipy_display

            ipy_display(obj)
            continue
        png = _png_of(obj)
        if png is not None:
            emit_png(png)
        else:
            print(repr(obj))


def _png_of(obj):
    if type(obj).__name__ == "Figure" and hasattr(obj, "savefig"):
        buf = io.BytesIO()
        obj.savefig(buf, format="png", bbox_inches="tight")
        return buf.getvalue()
    method = getattr(obj, "_repr_png_", None)
    if callable(method) and not isinstance(obj, type):
        try:
            data = method()
        except Exception:
            return None
        if isinstance(data, bytes):
            return data
    return None


def _show_value(value):
    if value is None:
        return
    builtins._ = value
    png = _png_of(value)
    if png is not None:
        emit_png(png)
    else:
        print(repr(value))


def _closed_input(prompt=""):
    raise EOFError(
        "input() is not available: code in the oi sandbox has no terminal and stdin is closed; "
        "put the data in the code or in a file instead"
    )


def _print_exception(exc, skip_frames):
    tb = exc.__traceback__
    for _ in range(skip_frames):
        if tb is not None:
            tb = tb.tb_next
    traceback.print_exception(type(exc), exc, tb)


def _run_plain(code, ns):
    """Runs one cell with plain Python semantics; returns its status."""
    global _cell
    _cell += 1
    filename = "<cell %d>" % _cell
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    try:
        tree = ast.parse(code, filename, "exec")
    except SyntaxError as exc:
        traceback.print_exception(type(exc), exc, None)
        return "error"
    last = None
    last_line = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        node = tree.body.pop()
        last, last_line = ast.Expression(node.value), node.lineno
    # With several top-level statements, each runs on its own after its line is
    # reported (the active line). A cell with a __future__ import runs whole: the
    # import must apply to all of it.
    statements = len(tree.body) + (last is not None)
    split = statements > 1 and not any(
        isinstance(s, ast.ImportFrom) and s.module == "__future__" for s in tree.body
    )
    try:
        if split:
            for stmt in tree.body:
                _report({"t": "line", "line": stmt.lineno})
                exec(compile(ast.Module([stmt], []), filename, "exec"), ns)
        else:
            exec(compile(tree, filename, "exec"), ns)
        if last is not None:
            if split:
                _report({"t": "line", "line": last_line})
            _show_value(eval(compile(last, filename, "eval"), ns))
    except KeyboardInterrupt:
        print("KeyboardInterrupt: interrupted", file=sys.stderr)
        return "interrupted"
    except SystemExit as exc:
        if exc.code not in (None, 0):
            print("SystemExit: %s" % (exc.code,), file=sys.stderr)
            return "error"
        return "ok"
    except BaseException as exc:
        _print_exception(exc, 1)
        return "error"
    return "ok"


def _load_ipython(ns):
    global _shell
    from IPython.core.displaypub import DisplayPublisher
    from IPython.core.interactiveshell import InteractiveShell

    class Publisher(DisplayPublisher):
        def publish(self, data, metadata=None, source=None, *, transient=None, update=False, **kwargs):
            if "image/png" in data:
                png = data["image/png"]
                emit_png(base64.b64decode(png) if isinstance(png, str) else png)
            elif "text/plain" in data:
                print(data["text/plain"])

    shell = InteractiveShell.instance(user_ns=ns, colors="NoColor", display_pub_class=Publisher)
    shell.displayhook.write_output_prompt = lambda: None  # values print bare, as in plain mode

    def show_traceback(etype, evalue, stb):
        print(shell.InteractiveTB.stb2text(stb), file=sys.stderr)

    shell._showtraceback = show_traceback
    builtins.input = _closed_input
    _shell = shell


def _run_ipython(code):
    try:
        result = _shell.run_cell(code, store_history=True)
    except KeyboardInterrupt:
        print("KeyboardInterrupt: interrupted", file=sys.stderr)
        return "interrupted"
    err = result.error_in_exec or result.error_before_exec
    if isinstance(err, KeyboardInterrupt):
        return "interrupted"
    return "ok" if err is None else "error"


class _Flusher:
    """Output is line-buffered, so that `print` makes one write and one event; this
    thread flushes what a partial line leaves (progress dots) every 50 ms."""

    def __init__(self):
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        import time

        while True:
            time.sleep(0.05)
            if _running:
                _flush_std()


class _CountingRaw(io.RawIOBase):
    """fd 1 as a raw stream that counts the bytes written through it."""

    def __init__(self, fd):
        self.fd = fd
        self.count = 0

    def writable(self):
        return True

    def fileno(self):
        return self.fd

    def write(self, data):
        n = os.write(self.fd, data)
        self.count += n
        return n


def _std_stream(fd):
    global _stdout_raw
    if fd == 1:
        _stdout_raw = _CountingRaw(1)
        raw = io.BufferedWriter(_stdout_raw, buffer_size=1 << 16)
    else:
        raw = io.open(fd, "wb", buffering=1 << 16, closefd=False)
    return io.TextIOWrapper(raw, encoding="utf-8", errors="backslashreplace", line_buffering=True)


def _buffer_std():
    for fd, name in ((1, "stdout"), (2, "stderr")):
        setattr(sys, name, _std_stream(fd))
    _Flusher()


def _restore_std(saved):
    """Puts back stdout/stderr if a block closed them, so the next block still prints."""
    for fd, name in ((1, "stdout"), (2, "stderr")):
        try:
            os.fstat(fd)
        except OSError:
            os.dup2(saved[fd], fd)
        stream = getattr(sys, name)
        if stream is None or getattr(stream, "closed", True) or getattr(stream, "fileno", None) is None:
            setattr(sys, name, _std_stream(fd))


def _on_sigint(signum, frame):
    # Only user code is interruptible; an interrupt arriving between blocks is dropped
    # (the runner sends one only after the block's "start").
    global _deferred
    if _running:
        if _reporting:
            _deferred = True
        else:
            raise KeyboardInterrupt


def _reap_children():
    """After an interrupt, collect the exited children the block left (a fork bomb
    leaves hundreds): unreaped they would hold the sandbox's process limit."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _forget_channel():
    """In a child made by `os.fork` (multiprocessing, user code): the channel is the
    kernel's, not the child's."""
    global _chan
    chan, _chan = _chan, None
    if chan is not None:
        try:
            chan.close()
        except OSError:
            pass


def _open_channel(fd):
    global _chan
    os.set_inheritable(fd, False)
    _chan = socket.socket(fileno=fd)
    _chan.setblocking(True)
    os.register_at_fork(after_in_child=_forget_channel)
    return _chan.makefile("rb")


def main(chan_fd):
    global _block, _running, _deferred
    commands = _open_channel(chan_fd)
    signal.signal(signal.SIGINT, _on_sigint)

    main_mod = types.ModuleType("__main__")
    main_mod.__builtins__ = builtins
    sys.modules["__main__"] = main_mod
    ns = main_mod.__dict__
    ns["display"] = display
    builtins.input = _closed_input
    sys.stdin = open(os.devnull)
    _buffer_std()
    if sys.path and sys.path[0] != "":
        sys.path.insert(0, "")

    # Copies of the output pipes, so that a block closing fd 1 or 2 cannot end the stream.
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    _report({"t": "ready"})
    while True:
        line = commands.readline()
        if not line:
            return
        request = json.loads(line)
        code = request["code"]
        _block = request["block"]
        status = "error"
        _flush_std()
        if _stdout_raw is not None:
            _stdout_raw.count = 0
        _deferred = False
        try:
            _running = True
            # From here an interrupt stops this block: the runner waits for this
            # message before it sends one.
            _report({"t": "start"})
            if _shell is None and _IPYTHON_SYNTAX.search(code):
                try:
                    _load_ipython(ns)
                except ImportError:
                    pass
            status = _run_ipython(code) if _shell is not None else _run_plain(code, ns)
            _running = False
            try:
                emit_figures()
            except Exception as exc:
                print("could not render the open figures: %r" % (exc,), file=sys.stderr)
        except KeyboardInterrupt:
            status = "interrupted"
        finally:
            _running = False
        if status == "interrupted":
            _reap_children()
        _restore_std(saved)
        _report({"t": "done", "status": status})
