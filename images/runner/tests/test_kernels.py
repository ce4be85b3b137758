"""The three kinds of kernel through a real runner (`--host`): Python and shell keep
their state and report the end of each block themselves; a file-run language is one
process per block. Crashes, interrupts and background jobs, for each."""

import os
import time
import unittest

from .support import RunnerProcess, pid_alive, wait_for

PERL_LIKE = {"command": "sh {file}", "extension": "sh"}


def notices(frames):
    return [f["message"] for f in frames if f["type"] == "notice"]


class KernelTestCase(unittest.TestCase):
    def setUp(self):
        self.r = RunnerProcess()

    def tearDown(self):
        self.r.close()


class PythonKernelTest(KernelTestCase):
    def test_state_persists_and_a_trailing_expression_is_shown(self):
        self.r.run("python", "x = 6")
        done, out, _, _ = self.r.run("python", "y = x * 7\ny")
        self.assertEqual((done["status"], out), ("ok", "42\n"))

    def test_an_exception_is_an_error_with_a_traceback_and_the_state_stays(self):
        self.r.run("python", "kept = 1")
        done, _, err, _ = self.r.run("python", "1 / 0")
        self.assertEqual(done["status"], "error")
        self.assertIn("ZeroDivisionError", err)
        self.assertEqual(self.r.run("python", "print(kept)")[1], "1\n")

    def test_active_lines_come_before_their_output(self):
        frames = self.r.run("python", "print('a')\n\nprint('b')")[3]
        seen = [f.get("line") or f.get("data") for f in frames if f["type"] in ("active_line", "stdout")]
        self.assertEqual(seen, [1, "a\n", 3, "b\n"])

    def test_input_fails_fast(self):
        started = time.monotonic()
        done, _, err, _ = self.r.run("python", "input('name? ')")
        self.assertEqual(done["status"], "error")
        self.assertIn("stdin is closed", err)
        self.assertLess(time.monotonic() - started, 5)

    def test_a_crash_is_reported_and_the_next_block_gets_a_new_interpreter(self):
        self.r.run("python", "kept = 1")
        done, out, _, _ = self.r.run("python", "print('bye', flush=True)\nimport os\nos._exit(3)")
        self.assertEqual((done["status"], done.get("exit_code"), out), ("crashed", 3, "bye\n"))
        self.assertIn("exited with code 3", done["message"])
        done, out, _, frames = self.r.run("python", "print('kept' in globals())")
        self.assertEqual(out, "False\n")
        self.assertTrue(any("started a new one" in n for n in notices(frames)), frames)

    def test_a_process_started_by_a_block_outlives_it(self):
        done, out, _, _ = self.r.run(
            "python", "import subprocess\nbg = subprocess.Popen(['sleep', '30'])\nprint(bg.pid)"
        )
        pid = int(out)
        self.r.run("python", "import time\ntime.sleep(0.2)")
        self.assertTrue(pid_alive(pid), "the background process was stopped with its block")
        self.assertEqual(self.r.run("python", "print(bg.poll())")[1], "None\n")
        self.r.run("python", "bg.kill()")


class ShellKernelTest(KernelTestCase):
    """The end-of-block report: bash's own status and command number, from a read-only
    hook, and a backstop for code that switches it off."""

    def test_the_exit_status_is_the_block_s(self):
        for code, status, exit_code in [("true", "ok", 0), ("false", "error", 1), ("(exit 7)", "error", 7), ("echo a; false; echo b", "ok", 0)]:
            with self.subTest(code=code):
                done = self.r.run("shell", code)[0]
                self.assertEqual((done["status"], done["exit_code"]), (status, exit_code))

    def test_state_and_the_last_status_carry_over(self):
        self.r.run("shell", "cd /tmp; export OI_TEST_VAR=kept; f() { echo from-f; }")
        self.r.run("shell", "(exit 3)")
        done, out, _, _ = self.r.run("shell", 'echo "$? $PWD $OI_TEST_VAR"; f')
        self.assertEqual(out, "3 /tmp kept\nfrom-f\n")

    def test_output_and_stderr_stay_apart_and_multi_line_blocks_run_whole(self):
        done, out, err, _ = self.r.run("shell", "for i in 1 2; do\n  echo out$i\n  echo err$i >&2\ndone")
        self.assertEqual((done["status"], out, err), ("ok", "out1\nout2\n", "err1\nerr2\n"))

    def test_exit_ends_the_shell_and_the_next_block_starts_a_new_one(self):
        self.r.run("shell", "kept=1")
        done = self.r.run("shell", "exit 5")[0]
        self.assertEqual((done["status"], done.get("exit_code")), ("crashed", 5), done)
        self.assertIn("the shell interpreter exited with code 5", done["message"])
        done, out, _, frames = self.r.run("shell", 'echo "[$kept]"')
        self.assertEqual(out, "[]\n")
        self.assertTrue(any("started a new one" in n for n in notices(frames)), frames)

    def test_a_block_that_sets_the_prompt_hooks_still_ends(self):
        done, _, err, _ = self.r.run("shell", "PROMPT_COMMAND='echo hijack'; PS1='$ '; __oi_report() { :; }; echo after")
        self.assertIn("readonly", err)
        self.assertEqual(self.r.run("shell", "echo fine")[1], "fine\n")

    def test_a_block_that_switches_the_report_off_ends_as_crashed(self):
        self.r.run("shell", "kept=1")
        started = time.monotonic()
        done = self.r.run("shell", "enable -n printf")[0]
        self.assertEqual(done["status"], "crashed")
        self.assertIn("no longer reports the end of blocks", done["message"])
        self.assertLess(time.monotonic() - started, 10)
        done, out, _, frames = self.r.run("shell", 'echo "[$kept]"')
        self.assertEqual((done["status"], out), ("ok", "[]\n"))
        self.assertTrue(any("stopped at the end of the previous block" in n for n in notices(frames)), frames)

    def test_a_block_that_replaces_the_shell_ends_as_crashed(self):
        done = self.r.run("shell", "exec sleep 30")[0]
        self.assertEqual(done["status"], "crashed")
        self.assertIn("control channel", done["message"])
        self.assertEqual(self.r.run("shell", "echo again")[1], "again\n")

    def test_a_background_job_outlives_its_block_and_an_interrupt_stops_it(self):
        done, out, _, _ = self.r.run("shell", "sleep 30 & echo $!")
        pid = int(out)
        self.r.run("shell", "sleep 0.2")
        self.assertTrue(pid_alive(pid), "the job was stopped with its block")
        self.assertEqual(self.r.run("shell", "kill -0 %d && echo running" % pid)[1], "running\n")
        rid = self.r.start("shell", "echo ready; sleep 30")
        self.r.reader.until(lambda f: f.get("type") == "stdout")
        self.r.send(op="interrupt", id=rid)
        self.assertEqual(self.r.until_done(rid)[-1]["status"], "interrupted")
        self.assertTrue(wait_for(lambda: not pid_alive(pid), 5), "an interrupt stops every process of the session")

    def test_an_interrupt_stops_a_loop_of_builtins_and_keeps_the_state(self):
        self.r.run("shell", "kept=1")
        rid = self.r.start("shell", "echo ready; while :; do :; done")
        self.r.reader.until(lambda f: f.get("type") == "stdout")
        self.r.send(op="interrupt", id=rid)
        done = self.r.until_done(rid, timeout=5)[-1]
        self.assertEqual(done["status"], "interrupted")
        self.assertEqual(self.r.run("shell", "echo $kept")[1], "1\n")


class FileKernelTest(KernelTestCase):
    def test_a_block_runs_from_a_file_that_is_removed_after(self):
        done, out, err, _ = self.r.run("sh", 'echo "$0"; echo warn >&2', **PERL_LIKE)
        self.assertEqual((done["status"], done["exit_code"], err), ("ok", 0, "warn\n"))
        path = out.strip()
        self.assertTrue(path.endswith(".sh"), path)
        self.assertTrue(wait_for(lambda: not os.path.exists(path), 5), path)

    def test_the_file_is_appended_when_the_command_does_not_name_it(self):
        done, out, _, _ = self.r.run("sh", 'echo "$0"', command="sh", extension="sh")
        self.assertTrue(out.strip().endswith(".sh"), out)

    def test_the_exit_status_is_the_block_s(self):
        done = self.r.run("sh", "exit 5", **PERL_LIKE)[0]
        self.assertEqual((done["status"], done["exit_code"]), ("error", 5))

    def test_no_state_survives_and_nothing_needs_restarting(self):
        self.r.run("sh", "x=1", **PERL_LIKE)
        done, out, _, frames = self.r.run("sh", 'echo "[$x]"', **PERL_LIKE)
        self.assertEqual(out, "[]\n")
        self.assertEqual(notices(frames), [])

    def test_an_interrupt_stops_the_block(self):
        rid = self.r.start("sh", "echo ready; sleep 30; echo never", **PERL_LIKE)
        self.r.reader.until(lambda f: f.get("type") == "stdout")
        started = time.monotonic()
        self.r.send(op="interrupt", id=rid)
        frames = self.r.until_done(rid, timeout=10)
        self.assertEqual(frames[-1]["status"], "interrupted")
        self.assertLess(time.monotonic() - started, 3)
        self.assertNotIn("never\n", [f.get("data") for f in frames])

    def test_a_kill_stops_a_block_that_ignores_interrupts(self):
        rid = self.r.start("sh", "trap '' INT; echo ready; sleep 30", **PERL_LIKE)
        self.r.reader.until(lambda f: f.get("type") == "stdout")
        self.r.send(op="kill", id=rid)
        self.assertEqual(self.r.until_done(rid, timeout=10)[-1]["status"], "interrupted")

    def test_a_block_killed_by_a_signal_is_crashed(self):
        # `exec`: the command runs under `sh -c`, which would otherwise outlive the
        # script and exit with 128 + the signal, an ordinary failure.
        done = self.r.run("sh", "echo before; kill -SEGV $$", command="exec sh {file}", extension="sh")[0]
        self.assertEqual(done["status"], "crashed")
        self.assertEqual(done["message"], "the sh process was killed by SIGSEGV (segmentation fault)")
        done = self.r.run("sh", "kill -SEGV $$", **PERL_LIKE)[0]
        self.assertEqual((done["status"], done["exit_code"]), ("error", 139))
        self.assertEqual(self.r.run("sh", "echo next", **PERL_LIKE)[1], "next\n")

    def test_what_a_block_leaves_running_is_stopped_when_it_ends(self):
        done, out, _, _ = self.r.run("sh", "sleep 30 >/dev/null 2>&1 & echo $!", **PERL_LIKE)
        pid = int(out)
        self.assertTrue(wait_for(lambda: not pid_alive(pid), 5))

    def test_a_command_that_cannot_start_is_an_error(self):
        done, _, err, _ = self.r.run("nope", "x", command="/nonexistent/oi-test-interpreter {file}", extension="x")
        self.assertEqual(done["status"], "error")
        self.assertEqual(done["exit_code"], 127)
        self.assertIn("not found", err)


if __name__ == "__main__":
    unittest.main()
