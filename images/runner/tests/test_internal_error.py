"""When the runner's own code fails: the runner in this process, with a fault put
into its code, must still end the block with a `done` that says so, stop the
interpreter it lost track of, and go on serving."""

import unittest
from unittest import mock

from .support import InProcessRunner, runner


class InternalErrorTest(unittest.TestCase):
    def setUp(self):
        self.r = InProcessRunner()

    def tearDown(self):
        self.r.close()

    def test_a_block_that_makes_the_runner_raise_ends_as_crashed_and_the_runner_goes_on(self):
        self.r.run("python", "kept = 1")
        with mock.patch.object(runner.Block, "send_text", side_effect=RuntimeError("boom")):
            done, _, _, _ = self.r.run("python", "print('this output breaks the runner')")
        self.assertEqual(done["status"], "crashed")
        self.assertIn("oi runner error: RuntimeError('boom')", done["message"])
        self.assertIn("the python interpreter was stopped", done["message"])
        # Its state went with it: the runner could no longer tell where its block was.
        done, out, _, frames = self.r.run("python", "print('kept' in globals())")
        self.assertEqual((done["status"], out), ("ok", "False\n"))
        notes = [f["message"] for f in frames if f["type"] == "notice"]
        self.assertTrue(any("after an error of oi's runner" in n for n in notes), notes)
        self.assertEqual(self.r.run("shell", "echo still")[1], "still\n")
        self.assertIn("internal error: RuntimeError('boom')", self.r.logged)

    def test_a_failure_before_the_block_has_a_kernel_ends_it_as_crashed(self):
        with mock.patch.object(runner.Runner, "kernel", side_effect=OSError(2, "no such interpreter")):
            done = self.r.run("shell", "echo x")[0]
        self.assertEqual(done["status"], "crashed")
        self.assertIn("no such interpreter", done["message"])
        self.assertEqual(self.r.run("shell", "echo fine")[1], "fine\n")

    def test_a_failure_after_the_done_sends_no_second_done(self):
        with mock.patch.object(runner.FileKernel, "end", side_effect=RuntimeError("late")):
            done = self.r.run("sh", "echo hi", command="sh {file}", extension="sh")[0]
        self.assertEqual(done["status"], "ok")
        self.r.send(op="ping", id=1)
        self.assertEqual(self.r.frame(), {"type": "pong", "id": 1})

    def test_a_failure_on_a_request_is_an_error_frame_and_the_stdin_thread_goes_on(self):
        with mock.patch.object(runner.Runner, "stop_block", side_effect=RuntimeError("boom")):
            self.r.send(op="interrupt", id=5)
            frame = self.r.frame()
        self.assertEqual(frame["type"], "error")
        self.assertIn("oi runner error: RuntimeError('boom')", frame["message"])
        self.r.send(op="ping", id=6)
        self.assertEqual(self.r.frame(), {"type": "pong", "id": 6})

    def test_shutdown_stops_the_kernels_and_exits(self):
        self.r.run("python", "1")
        kernel = self.r.runner.kernels["python"]
        self.r.send(op="shutdown")
        self.assertTrue(self.r.exited.wait(10))
        self.assertEqual(self.r.exit_code, 0)
        kernel.proc.wait(10)
        self.assertFalse(kernel.running())


if __name__ == "__main__":
    unittest.main()
