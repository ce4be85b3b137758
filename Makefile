# oi's two jobs on a fresh Debian machine:
#   make run ARGS="exec -c 'print(6 * 7)'"   set up, build, run oi with ARGS
#   make test                                set up, build, run every test
#   make test-runner                         only the runner's Python unit tests (no Docker)
# Set-up installs Docker Engine from Debian's packages when missing (as root), starts
# the daemon, and makes the offline base image when no Debian base image is present.

CARGO ?= cargo
PYTHON ?= python3
JOBS ?= 2
ARGS ?= --help
BASE ?= oi-base:bookworm

.PHONY: setup docker base build release run test test-runner bench lint clean-sandboxes

setup: docker base

docker:
	@bash scripts/ensure-docker.sh

# No registry here: make the base image from Debian's packages unless one exists.
base: docker
	@if [ -n "$$OI_BASE_IMAGE" ] || docker image inspect debian:bookworm-slim >/dev/null 2>&1; then \
	  echo "base image: $${OI_BASE_IMAGE:-debian:bookworm-slim}"; \
	else bash images/bootstrap-base.sh $(BASE); fi

build:
	$(CARGO) build -j$(JOBS)

release:
	$(CARGO) build --release -j$(JOBS)

run: setup release
	./target/release/oi $(ARGS)

# The runner's unit tests first (seconds, no Docker), then one debug build for the
# binary and the tests; the first `oi exec` builds the sandbox image (with progress) so
# the tests find it ready.
test: setup test-runner
	$(CARGO) test -j$(JOBS) --no-run
	./target/debug/oi exec -c 'print("sandbox ready")'
	OI_REQUIRE_DOCKER=1 $(CARGO) test -j$(JOBS)

# Standard-library unittest over the runner started with --host; -B and
# PYTHONDONTWRITEBYTECODE keep bytecode out of images/runner (the kernels import from it).
test-runner:
	PYTHONDONTWRITEBYTECODE=1 $(PYTHON) -B -m unittest discover -s images/runner/tests -t images/runner

bench: setup release
	./target/release/oi exec -c 'print("sandbox ready")'
	$(CARGO) run --release -j$(JOBS) --example bench

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -j$(JOBS) -- -D warnings

clean-sandboxes:
	./target/debug/oi sandbox prune --all
