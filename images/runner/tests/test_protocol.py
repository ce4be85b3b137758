"""The runner's protocol end to end, over a real runner started with `--host`: the
hello, `ping`, and every kind of bad request, each answered with a clear frame while
the runner goes on serving."""

import json
import unittest

from .support import RunnerProcess, runner


class ProtocolTest(unittest.TestCase):
    def setUp(self):
        self.r = RunnerProcess()

    def tearDown(self):
        self.r.close()

    def assert_still_serving(self):
        done, out, _, _ = self.r.run("shell", "echo served")
        self.assertEqual((done["status"], out), ("ok", "served\n"))

    def test_hello_comes_first_with_the_version(self):
        hello = self.r.hello
        self.assertEqual(hello["type"], "hello")
        self.assertEqual(hello["v"], runner.PROTOCOL)
        self.assertEqual(hello["languages"], ["python", "shell"])
        self.assertEqual(hello["pid"], self.r.proc.pid)

    def test_ping_is_answered_with_pong_and_its_id(self):
        for rid in (0, 7, 2**64 - 1):
            self.r.send(op="ping", id=rid)
            self.assertEqual(self.r.frame(), {"type": "pong", "id": rid})

    def test_ping_is_answered_while_a_block_runs(self):
        rid = self.r.start("python", "import time\nprint('busy', flush=True)\ntime.sleep(30)")
        self.r.reader.until(lambda f: f.get("type") == "stdout")
        self.r.send(op="ping", id=5)
        frames = self.r.reader.until(lambda f: f.get("type") == "pong", 5)
        self.assertEqual(frames[-1], {"type": "pong", "id": 5})
        self.assertEqual({f["id"] for f in frames[:-1]}, {rid} if frames[:-1] else set())
        self.r.send(op="interrupt", id=rid)
        self.assertEqual(self.r.until_done(rid)[-1]["status"], "interrupted")

    def test_malformed_lines_get_an_error_frame_without_an_id(self):
        huge = "9" * 5000
        lines = [
            "not json",
            "[]",
            '"op"',
            "{}",
            "[" * 100_000 + "]" * 100_000,
            '{"op": 5}',
            '{"op": "exec", "v": 1, "id": 1e400, "lang": "python", "code": "1"}',
            '{"op": "exec", "v": 1, "id": -1, "lang": "python", "code": "1"}',
            '{"op": "exec", "v": 1, "id": 123456789012345678901234567890, "lang": "python", "code": "1"}',
            '{"op": "exec", "v": 1, "id": %s, "lang": "python", "code": "1"}' % huge,
            '{"op": "exec", "v": 1, "id": true, "lang": "python", "code": "1"}',
            '{"op": "interrupt", "v": 1, "id": "x"}',
            '{"op": "ping", "v": 1}',
        ]
        for line in lines:
            with self.subTest(line=line[:60]):
                self.r.send_raw(line)
                frame = self.r.frame()
                self.assertEqual(frame["type"], "error", frame)
                self.assertIsNone(frame["id"])
                self.assertTrue(frame["message"])
        self.assert_still_serving()

    def test_invalid_utf8_is_a_malformed_request(self):
        self.r.send_raw(b'{"op": "ping", "v": 1, "id": 1, "x": "\xff"}')
        self.assertEqual(self.r.frame()["type"], "error")
        self.assert_still_serving()

    def test_a_request_over_64_mib_is_skipped(self):
        self.r.send_raw(b'{"op": "ping", "v": 1, "id": 1, "pad": "' + b"x" * (runner.MAX_REQUEST_LINE + 10) + b'"}')
        frame = self.r.frame()
        self.assertEqual(frame["type"], "error")
        self.assertIn("over 64 MiB", frame["message"])
        self.r.send(op="ping", id=2)
        self.assertEqual(self.r.frame(), {"type": "pong", "id": 2})

    def test_bad_execs_end_with_a_refusal_as_their_done(self):
        bad = [
            dict(lang="python", code=7),
            dict(lang=["python"], code="1"),
            dict(lang="z", code="x", command="cat {file}", extension="../../../tmp/evil"),
            dict(lang="z", code="x", command=["cat"]),
            dict(lang="z", code="x", command="cat {file}", extension=9),
            dict(lang="z\n", code="x", command="cat {file}"),
            dict(lang="z", code="x"),
        ]
        for fields in bad:
            with self.subTest(fields=fields):
                rid = self.r.new_id()
                self.r.send(op="exec", id=rid, **fields)
                frame = self.r.frame()
                self.assertEqual((frame["type"], frame["id"], frame["status"]), ("done", rid, "error"), frame)
                self.assertIn("oi runner refused the block", frame["message"])
        self.assert_still_serving()

    def test_unknown_ops_are_named_in_an_error_with_their_id(self):
        self.r.send(op="frobnicate", id=9)
        self.assertEqual(self.r.frame(), {"type": "error", "id": 9, "message": "unknown op 'frobnicate'"})
        self.r.send(op="x" * 1000, id=-3)
        frame = self.r.frame()
        self.assertIsNone(frame["id"], "an id out of range is not echoed")
        self.assertLess(len(frame["message"]), 100)
        self.assert_still_serving()

    def test_an_exec_of_another_protocol_version_ends_with_an_error_done(self):
        for v in (2, 0, "1", None):
            rid = self.r.new_id()
            self.r.send_raw(json.dumps({"op": "exec", "v": v, "id": rid, "lang": "python", "code": "print('ran')"}))
            frame = self.r.frame()
            self.assertEqual((frame["type"], frame["id"], frame["status"]), ("done", rid, "error"), frame)
            self.assertIn("protocol version", frame["message"])
        rid = self.r.new_id()
        self.r.send_raw(json.dumps({"op": "exec", "id": rid, "lang": "python", "code": "print('ran')"}))
        frame = self.r.frame()
        self.assertEqual((frame["id"], frame["status"]), (rid, "error"))
        self.assertIn("no protocol version", frame["message"])
        self.assert_still_serving()

    def test_other_requests_of_another_version_get_an_error_and_do_nothing(self):
        rid = self.r.start("python", "import time\nprint('busy', flush=True)\ntime.sleep(2)\nprint('finished')")
        self.r.reader.until(lambda f: f.get("type") == "stdout")
        for op in ("ping", "interrupt", "kill"):
            self.r.send_raw(json.dumps({"op": op, "v": 2, "id": rid}))
            frame = self.r.answer()
            self.assertEqual((frame["type"], frame["id"]), ("error", rid), frame)
            self.assertIn("oi runner refused the %s request: the request is for protocol version 2" % op, frame["message"])
        self.r.send_raw(json.dumps({"op": "shutdown", "v": 2}))
        self.assertEqual(self.r.answer()["type"], "error")
        frames = self.r.until_done(rid)
        self.assertEqual(frames[-1]["status"], "ok", "neither interrupted nor killed")
        self.assertIn("finished\n", [f.get("data") for f in frames])

    def test_shutdown_stops_the_runner(self):
        self.r.send(op="shutdown")
        self.assertEqual(self.r.proc.wait(10), 0)

    def test_end_of_stdin_stops_the_runner_mid_block(self):
        self.r.start("python", "print('busy', flush=True)\nwhile True:\n    pass")
        self.r.reader.until(lambda f: f.get("type") == "stdout")
        self.assertEqual(self.r.close(), 0)
        self.assertIn("end of stdin", self.r.stderr)


if __name__ == "__main__":
    unittest.main()
