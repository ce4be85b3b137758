"""Unit tests of oi's runner and kernels (standard library `unittest` only).

Run from the repository's root: `make test-runner` (part of `make test`), or
`python3 -B -m unittest discover -s images/runner/tests -t images/runner`. They start
the runner on this machine with `--host` (no seccomp filter, the system's
interpreters), as a subprocess or in this process; what only a real sandbox shows is
tested from Rust against Docker (`tests/suite/`). The image never contains them: its
build context lists the runner's files one by one (`src/core/code_interpreter/image.rs`).
"""
