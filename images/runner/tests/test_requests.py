"""Reading requests and control lines, without starting any process: parsing and
validation, the protocol version, quoting a block for bash, the control channel's
framing and credentials, and the frame writer that never makes a `pong` wait."""

import io
import json
import os
import socket
import threading
import time
import unittest

from .support import runner


def parse(line):
    return runner.parse_request(line.encode() if isinstance(line, str) else line)


class ParseRequestTest(unittest.TestCase):
    def test_a_valid_request_is_returned_as_is(self):
        req = parse('{"op":"exec","v":1,"id":7,"lang":"python","code":"1"}')
        self.assertEqual(req, {"op": "exec", "v": 1, "id": 7, "lang": "python", "code": "1"})

    def test_lines_that_are_not_json_objects_with_a_string_op_are_refused(self):
        deep = "[" * 100_000 + "]" * 100_000
        for line in ["not json", "[]", '"op"', "{}", '{"op": 5}', '{"op": null}', deep, b"\xff\xfe"]:
            with self.subTest(line=line[:40]):
                with self.assertRaises(runner.BadRequest) as caught:
                    parse(line)
                self.assertIn("malformed request", str(caught.exception))

    def test_ids_must_be_integers_from_0_to_2_64_minus_1(self):
        huge = "9" * 5000  # over Python's digit limit for int(): a ValueError
        for rid in ["1e400", "-1", "18446744073709551616", huge, "true", "1.0", '"7"', "null", "[1]"]:
            for op in ("exec", "interrupt", "kill", "ping"):
                with self.subTest(op=op, id=rid[:30]):
                    with self.assertRaises(runner.BadRequest) as caught:
                        parse('{"op": "%s", "v": 1, "id": %s}' % (op, rid))
                    # The 5000 digits fail as JSON already (Python's limit on digits).
                    self.assertIn("`id`" if rid != huge else "malformed request", str(caught.exception))
        self.assertEqual(parse('{"op": "ping", "v": 1, "id": 18446744073709551615}')["id"], 2**64 - 1)
        self.assertEqual(parse('{"op": "ping", "v": 1, "id": 0}')["id"], 0)

    def test_shutdown_and_unknown_ops_need_no_id(self):
        self.assertEqual(parse('{"op": "shutdown", "v": 1}')["op"], "shutdown")
        self.assertEqual(parse('{"op": "frobnicate"}')["op"], "frobnicate")

    def test_an_error_names_at_most_the_start_of_the_line(self):
        with self.assertRaises(runner.BadRequest) as caught:
            parse("x" * 100_000)
        self.assertLess(len(str(caught.exception)), 400)


class VersionTest(unittest.TestCase):
    def test_only_this_runner_s_version_is_accepted(self):
        self.assertIsNone(runner.version_problem({"op": "ping", "v": runner.PROTOCOL}))
        for v in (0, 2, -1, 2**70, "1", 1.0, True, None, [1]):
            with self.subTest(v=v):
                problem = runner.version_problem({"op": "ping", "v": v})
                self.assertIn("protocol version", problem)
                self.assertIn("this runner speaks version 1", problem)

    def test_a_missing_version_is_named(self):
        self.assertIn("no protocol version `v`", runner.version_problem({"op": "ping"}))

    def test_a_long_version_is_not_echoed_whole(self):
        self.assertLess(len(runner.version_problem({"v": "x" * 10_000})), 200)

    def test_an_exec_of_another_version_is_refused_before_anything_else(self):
        req = {"op": "exec", "v": 2, "id": 1, "lang": "python", "code": 7}
        self.assertIn("protocol version 2", runner.exec_problem(req))


class ExecProblemTest(unittest.TestCase):
    def exec_req(self, **fields):
        req = {"op": "exec", "v": 1, "id": 1, "lang": "python", "code": "1"}
        req.update(fields)
        return req

    def test_good_blocks_pass(self):
        self.assertIsNone(runner.exec_problem(self.exec_req()))
        self.assertIsNone(runner.exec_problem(self.exec_req(lang="shell")))
        self.assertIsNone(runner.exec_problem(self.exec_req(lang="perl", command="perl {file}", extension="pl")))
        self.assertIsNone(runner.exec_problem(self.exec_req(lang="perl", command="perl")))

    def test_each_bad_field_is_named(self):
        cases = [
            (dict(code=7), "`code`"),
            (dict(code=None), "`code`"),
            (dict(lang=["python"]), "`lang`"),
            (dict(lang=""), "`lang`"),
            (dict(lang="z\n"), "`lang`"),
            (dict(lang="x" * 65), "`lang`"),
            (dict(lang="z"), "no command"),
            (dict(lang="z", command=["cat"]), "no command"),
            (dict(lang="z", command="   "), "no command"),
            (dict(lang="z", command="c" * 8193), "over 8192"),
            (dict(lang="z", command="cat\0"), "NUL"),
            (dict(lang="z", command="cat", extension="../../tmp/x"), "extension"),
            (dict(lang="z", command="cat", extension="a" * 17), "extension"),
            (dict(lang="z", command="cat", extension=9), "extension"),
            (dict(lang="z", command="cat", extension=""), "extension"),
        ]
        for fields, words in cases:
            with self.subTest(fields=str(fields)[:60]):
                self.assertIn(words, runner.exec_problem(self.exec_req(**fields)))


class BashQuoteTest(unittest.TestCase):
    def test_a_block_is_one_line_and_bash_reads_it_back_unchanged(self):
        code = "echo 'a'\n\techo \"$HOME\" \\n \x01 \x7f é \\' end"
        quoted = runner.bash_quote(code)
        self.assertNotIn("\n", quoted)
        import subprocess

        back = subprocess.run(["bash", "-c", "printf %s " + quoted], capture_output=True, check=True).stdout
        self.assertEqual(back.decode(), code)


class FakeSock:
    """recvmsg from a list of (data, pid) as a Unix socket with SO_PASSCRED would."""

    def __init__(self, chunks):
        self.chunks = list(chunks)

    def setsockopt(self, *args):
        pass

    def recvmsg(self, size, ancsize, flags):
        if not self.chunks:
            raise BlockingIOError
        data, pid = self.chunks.pop(0)
        cred = runner.struct.pack("iII", pid, 0, 0)
        return data, [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, cred)], 0, None


class ControlTest(unittest.TestCase):
    def control(self, chunks, pid=42):
        ctl = runner.Control(FakeSock(chunks))
        ctl.pid = pid
        return ctl

    def test_lines_split_across_reads_are_joined(self):
        ctl = self.control([(b'{"t":"do', 42), (b'ne"}\n{"t":', 42), (b'"x"}\n', 42)])
        self.assertEqual(ctl.read(), [b'{"t":"done"}', b'{"t":"x"}'])

    def test_what_other_processes_write_is_dropped(self):
        ctl = self.control([(b"0 99\n", 7), (b"0 1\n", 42)])
        self.assertEqual(ctl.read(), [b"0 1"])
        self.assertEqual(ctl.foreign, 5)

    def test_a_line_over_the_limit_is_dropped_and_the_next_one_kept(self):
        big = b"x" * (runner.MAX_CTL_LINE + 10)
        chunks = [(big[i : i + 65536], 42) for i in range(0, len(big), 65536)]
        sock = FakeSock(chunks + [(b"\nnext\n", 42)])
        ctl = runner.Control(sock)
        ctl.pid = 42
        lines = []
        while sock.chunks:
            lines.extend(ctl.read())
        self.assertEqual(lines, [runner.OVERSIZE, b"next"])
        self.assertLessEqual(sum(map(len, ctl.parts)), 0, "nothing of the dropped line is kept")

    def test_end_of_file_is_reported(self):
        ctl = self.control([(b"", 42)])
        self.assertEqual(ctl.read(), [runner.EOF])
        self.assertTrue(ctl.eof)

    def test_a_real_socket_carries_the_writer_s_pid(self):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ctl = runner.Control(ours)
        ctl.pid = os.getpid()
        theirs.sendall(b"hello\n")
        self.assertEqual(ctl.read(), [b"hello"])
        ctl.pid = os.getpid() + 1  # as if another process had written it
        theirs.sendall(b"forged\n")
        self.assertEqual(ctl.read(), [])
        theirs.close()
        self.assertEqual(ctl.read(), [runner.EOF])
        ctl.close()


class KernelMessagesTest(unittest.TestCase):
    def test_the_python_kernel_s_messages_are_checked(self):
        k = runner.PythonKernel("python", -1)
        k.block = 3
        parse = lambda msg: k.parse_ctl(json.dumps(msg).encode())  # noqa: E731
        self.assertEqual(parse({"t": "start", "block": 3}), {"t": "start"})
        self.assertEqual(parse({"t": "done", "block": 3, "status": "ok"}), {"t": "done", "status": "ok"})
        self.assertEqual(parse({"t": "done", "block": 3, "status": "weird"})["status"], "error")
        self.assertIsNone(parse({"t": "done", "block": 2, "status": "ok"}), "another block's")
        self.assertIsNone(parse({"t": "done", "block": True, "status": "ok"}))
        self.assertEqual(parse({"t": "line", "block": 3, "line": 4, "out": 10}), {"t": "line", "line": 4, "out": 10})
        self.assertIsNone(parse({"t": "line", "block": 3, "line": 2**40}))
        self.assertEqual(parse({"t": "line", "block": 3, "line": 1, "out": -5})["out"], 0)
        self.assertEqual(parse({"t": "image", "block": 3, "format": "exe", "data": ""})["t"], "notice")
        self.assertEqual(parse({"t": "image", "block": 3, "format": "png", "data": 5})["t"], "notice")
        self.assertEqual(parse({"t": "image", "block": 3, "format": "png", "data": "AAAA"})["t"], "image")
        self.assertIsNone(k.parse_ctl(b"not json"))
        self.assertIsNone(k.parse_ctl(b"[1]"))

    def test_the_shell_s_reports_are_told_from_stale_ones(self):
        k = runner.ShellKernel("shell", -1)
        k.number = None
        self.assertIsNone(k.parse_ctl(b"start 1"), "no start before the first prompt")
        self.assertEqual(k.parse_ctl(b"0 0"), {"t": "ready"})
        self.assertEqual(k.parse_ctl(b"start 1"), {"t": "start"})
        self.assertEqual(k.parse_ctl(b"3 1"), {"t": "done", "status": "error", "exit_code": 3})
        self.assertIsNone(k.parse_ctl(b"0 1"), "a prompt redrawn")
        self.assertIsNone(k.parse_ctl(b"start 1"), "a stale start")
        self.assertEqual(k.parse_ctl(b"0 2"), {"t": "done", "status": "ok", "exit_code": 0})
        k.interrupted = True
        self.assertEqual(k.parse_ctl(b"0 3")["status"], "interrupted", "whatever the status")
        for junk in (b"", b"0", b"a b", b"0 1 2", b"start x"):
            self.assertIsNone(k.parse_ctl(junk), junk)


class SlowStream(io.RawIOBase):
    """A stdout whose reader is away: writes block until `release` is set."""

    def __init__(self):
        self.written = []
        self.release = threading.Event()
        self.writing = threading.Event()

    def writable(self):
        return True

    def write(self, data):
        self.writing.set()
        self.release.wait(10)
        self.written.append(bytes(data))
        return len(data)

    def flush(self):
        pass


class FrameWriterTest(unittest.TestCase):
    def test_an_urgent_frame_never_waits_and_goes_out_right_after_the_frame_being_written(self):
        stream = SlowStream()
        writer = runner.FrameWriter(stream, broken=lambda: None)
        flood = threading.Thread(target=lambda: [writer.send({"type": "stdout", "id": 1, "data": str(i)}) for i in range(3)])
        flood.start()
        self.assertTrue(stream.writing.wait(5))
        started = time.monotonic()
        writer.send_now({"type": "pong", "id": 9})
        self.assertLess(time.monotonic() - started, 0.5, "send_now waited for the stream")
        stream.release.set()
        flood.join(5)
        kinds = [json.loads(data)["type"] for data in stream.written]
        self.assertEqual(kinds, ["stdout", "pong", "stdout", "stdout"])

    def test_an_urgent_frame_is_written_at_once_when_the_stream_is_free(self):
        stream = io.BytesIO()
        writer = runner.FrameWriter(stream, broken=lambda: None)
        writer.send_now({"type": "pong", "id": 1})
        self.assertEqual(stream.getvalue(), b'{"type":"pong","id":1}\n')

    def test_frames_are_single_lines_whatever_they_carry(self):
        stream = io.BytesIO()
        writer = runner.FrameWriter(stream, broken=lambda: None)
        writer.send({"type": "stdout", "id": 1, "data": "a\nb\u2028\x00\ud800"})
        lines = stream.getvalue().split(b"\n")
        self.assertEqual(len(lines), 2)
        self.assertEqual(json.loads(lines[0])["data"][:3], "a\nb")

    def test_a_closed_stdout_is_reported_once_per_write(self):
        calls = []
        stream = io.BytesIO()
        stream.close()
        writer = runner.FrameWriter(stream, broken=lambda: calls.append(1))
        writer.send({"type": "pong", "id": 1})
        self.assertEqual(calls, [1])


if __name__ == "__main__":
    unittest.main()
