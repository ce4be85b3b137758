# oi's two jobs on a fresh Debian machine:
#   make run ARGS="exec -c 'print(6 * 7)'"   set up, build, run oi with ARGS
#   make test                                set up, build, run every test
# Set-up installs Docker Engine from Debian's packages when missing (as root), starts
# the daemon, and makes the offline base image when no Debian base image is present.

CARGO ?= cargo
JOBS ?= 2
ARGS ?= --help
BASE ?= oi-base:bookworm

.PHONY: setup docker base build release run test bench lint clean-sandboxes

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

# One debug build for the binary and the tests; the first `oi exec` builds the
# sandbox image (with progress) so the tests find it ready.
test: setup
	$(CARGO) test -j$(JOBS) --no-run
	./target/debug/oi exec -c 'print("sandbox ready")'
	$(CARGO) test -j$(JOBS)

bench: setup release
	./target/release/oi exec -c 'print("sandbox ready")'
	$(CARGO) run --release -j$(JOBS) --example bench

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -j$(JOBS) -- -D warnings

clean-sandboxes:
	./target/debug/oi sandbox prune --all
