"""Interrupts, kills and pings as the host sends them: at any time, even before the
block they name has started, and while a block floods the output."""

import json
import os
import tempfile
import time
import unittest

from .support import RunnerProcess, wait_for

SLOW = {
    "python": ("import time\ntime.sleep(30)", {}),
    "shell": ("sleep 30", {}),
    "sh": ("sleep 30", {"command": "sh {file}", "extension": "sh"}),
}


class EarlyStopTest(unittest.TestCase):
    """An interrupt or kill sent right after its `exec` (Ctrl-C at once, a tiny
    timeout) once reached the runner before the block was current and was dropped: the
    block then ran to its timeout."""

    def setUp(self):
        self.r = RunnerProcess()
        # Both interpreters up, with state to keep.
        self.assertEqual(self.r.run("python", "kept = 41")[0]["status"], "ok")
        self.assertEqual(self.r.run("shell", "kept=41")[0]["status"], "ok")

    def tearDown(self):
        self.r.close()

    def assert_state_kept(self):
        self.assertEqual(self.r.run("python", "print(kept + 1)")[1], "42\n")
        self.assertEqual(self.r.run("shell", "echo $((kept + 1))")[1], "42\n")

    def stop_at_once(self, lang, op, delay=0):
        code, fields = SLOW[lang]
        started = time.monotonic()
        rid = self.r.start(lang, code, **fields)
        if delay:
            time.sleep(delay)
        self.r.send(op=op, id=rid)
        done = self.r.until_done(rid, timeout=10)[-1]
        return done, time.monotonic() - started

    def test_an_interrupt_sent_with_the_exec_stops_the_block(self):
        for lang in SLOW:
            with self.subTest(lang=lang):
                done, took = self.stop_at_once(lang, "interrupt")
                self.assertEqual(done["status"], "interrupted", done)
                self.assertLess(took, 3)
        self.assert_state_kept()

    def test_a_kill_sent_with_the_exec_stops_the_block(self):
        for lang in SLOW:
            with self.subTest(lang=lang):
                done, took = self.stop_at_once(lang, "kill")
                self.assertEqual(done["status"], "interrupted", done)
                self.assertLess(took, 3)

    def test_a_block_stopped_before_it_started_did_not_run(self):
        marker = tempfile.mktemp(prefix="oi-test-")
        # Queued behind a running block, as the host never does but the protocol allows.
        first = self.r.start("python", "import time\ntime.sleep(0.5)")
        second = self.r.start("shell", "touch %s" % marker)
        self.r.send(op="interrupt", id=second)
        self.assertEqual(self.r.until_done(first)[-1]["status"], "ok")
        done = self.r.until_done(second)[-1]
        self.assertEqual(done["status"], "interrupted")
        self.assertIn("none of it ran", done["message"])
        self.assertFalse(os.path.exists(marker))

    def test_interrupts_at_every_moment_of_a_start_stop_the_block_and_keep_the_state(self):
        # Around the moment the interpreter takes the block: before, while, just after.
        for lang in SLOW:
            for delay in (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.05):
                with self.subTest(lang=lang, delay=delay):
                    done, took = self.stop_at_once(lang, "interrupt", delay)
                    self.assertEqual(done["status"], "interrupted", done)
                    self.assertLess(took, 3)
                    # Nothing of the interrupted block lingers into the next one.
                    follow = "print('next')" if lang == "python" else "echo next"
                    done, out, _, _ = self.r.run("python" if lang == "python" else "shell", follow)
                    self.assertEqual((done["status"], out), ("ok", "next\n"))
        self.assert_state_kept()

    def test_an_interrupt_before_the_interpreter_is_up_stops_the_block(self):
        self.r.run("shell", "exit 3")  # the next shell block starts a new shell
        done, took = self.stop_at_once("shell", "interrupt")
        self.assertEqual(done["status"], "interrupted")
        self.assertLess(took, 3)
        done, out, _, _ = self.r.run("shell", "echo up")
        self.assertEqual((done["status"], out), ("ok", "up\n"))

    def test_a_late_interrupt_is_ignored(self):
        done, _, _, _ = self.r.run("python", "x = 1")
        self.r.send(op="interrupt", id=done["id"])
        self.r.send(op="kill", id=done["id"])
        self.r.send(op="interrupt", id=999_999)  # never sent
        done, out, _, _ = self.r.run("python", "import time\ntime.sleep(0.3)\nprint(x)")
        self.assertEqual((done["status"], out), ("ok", "1\n"))


class InterruptTest(unittest.TestCase):
    def setUp(self):
        self.r = RunnerProcess()

    def tearDown(self):
        self.r.close()

    def test_an_interrupt_while_the_kernel_sends_an_image_ends_the_block(self):
        # Interrupted in the middle of a control message, the kernel once left half a
        # line that swallowed its "done": the block never ended.
        code = (
            "import oi_kernel\nprint('go', flush=True)\n"
            "while True:\n    oi_kernel.emit_png(b'\\x89PNG' + bytes(20 << 20))"
        )
        for attempt in range(4):
            with self.subTest(attempt=attempt):
                rid = self.r.start("python", code)
                self.r.reader.until(lambda f: f.get("type") == "stdout")
                time.sleep(0.2 + 0.1 * attempt)
                self.r.send(op="interrupt", id=rid)
                done = self.r.until_done(rid, timeout=10)[-1]
                self.assertEqual(done["status"], "interrupted")

    def test_an_interrupt_stops_what_the_block_started_and_keeps_the_interpreter(self):
        rid = self.r.start(
            "python",
            "import subprocess\nchild = subprocess.Popen(['sleep', '60'])\nprint(child.pid, flush=True)\nchild.wait()",
        )
        frames = self.r.reader.until(lambda f: f.get("type") == "stdout")
        child = int(frames[-1]["data"])
        self.r.send(op="interrupt", id=rid)
        done = self.r.until_done(rid)[-1]
        self.assertEqual(done["status"], "interrupted")
        self.assertTrue(wait_for(lambda: not os.path.exists("/proc/%d" % child) or _zombie(child), 5))
        self.assertEqual(self.r.run("python", "print(child.pid)")[1], "%d\n" % child)

    def test_code_that_ignores_interrupts_is_killed_and_the_interpreter_restarted(self):
        self.r.run("python", "kept = 1")
        rid = self.r.start("python", "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nprint('x', flush=True)\ntime.sleep(60)")
        self.r.reader.until(lambda f: f.get("type") == "stdout")
        self.r.send(op="interrupt", id=rid)
        time.sleep(0.3)
        self.r.send(op="kill", id=rid)
        done = self.r.until_done(rid)[-1]
        self.assertEqual(done["status"], "interrupted")
        self.assertIn("did not stop on interrupt and was restarted", done["message"])
        frames = self.r.run("python", "print('kept' in globals())")[3]
        self.assertIn("False\n", [f.get("data") for f in frames])
        self.assertTrue(any("started a new one" in f.get("message", "") for f in frames if f["type"] == "notice"))


def _zombie(pid):
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except OSError:
        return True


class PingUnderFloodTest(unittest.TestCase):
    """`ping` is answered at once, even while a block floods the output: the `pong`
    goes out right after the frame being written. And a `ping` never makes the runner
    wait for the host to read: an `interrupt` sent after it while the host reads
    nothing (a full pipe) still acts at once."""

    FLOOD = "import sys\nwhile True:\n    sys.stdout.write('x' * 4096)"

    def setUp(self):
        self.r = RunnerProcess()

    def tearDown(self):
        self.r.close()

    def test_pong_comes_within_a_few_frames_of_a_flood(self):
        rid = self.r.start("python", self.FLOOD)
        self.r.reader.until(lambda f: f.get("type") == "stdout")
        for n in range(20):
            sent = time.monotonic()
            self.r.send(op="ping", id=n)
            frames = self.r.reader.until(lambda f: f.get("type") == "pong")
            took = time.monotonic() - sent
            # Frames already in the pipe (64 KiB) and the one being written come first.
            self.assertLessEqual(len(frames), 40, "the pong waited behind the flood")
            self.assertLess(took, 1.0)
        self.r.send(op="kill", id=rid)
        self.r.until_done(rid)

    def test_a_ping_does_not_hold_up_an_interrupt_while_the_host_reads_nothing(self):
        marker = tempfile.mktemp(prefix="oi-test-")
        code = (
            "try:\n    while True:\n        print('x' * 1000)\n"
            "except KeyboardInterrupt:\n    open(%r, 'w').close()\n    raise" % marker
        )
        rid = self.r.start("python", code)
        self.r.reader.until(lambda f: f.get("type") == "stdout")
        time.sleep(0.5)  # the pipes fill up: the runner blocks writing to this process
        self.r.send(op="ping", id=1)
        self.r.send(op="interrupt", id=rid)
        acted = wait_for(lambda: os.path.exists(marker), 5)
        frames = self.r.reader.until(lambda f: f.get("type") == "done" and f["id"] == rid)
        self.assertTrue(acted, "the interrupt waited until the host read the output")
        pong = next(i for i, f in enumerate(frames) if f["type"] == "pong")
        ahead = sum(len(json.dumps(f)) for f in frames[:pong])
        # What the pipe held when reading resumed (64 KiB), then the frame being written.
        self.assertLess(ahead, 256 * 1024, "%d frames, %d bytes came before the pong" % (pong, ahead))
        self.assertEqual(frames[-1]["status"], "interrupted")
        os.unlink(marker)


if __name__ == "__main__":
    unittest.main()
