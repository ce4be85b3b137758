#!/usr/bin/env bash
# Makes a Debian bookworm base image without a container registry:
# debootstrap a minimal bookworm into a temporary folder, then `docker import` it.
# The result stands in for the official `debian:bookworm-slim` that the sandbox
# Dockerfile uses by default; build the sandbox image on it with
#   oi image build --base oi-base:bookworm     (or OI_BASE_IMAGE=oi-base:bookworm)
# Usage: bootstrap-base.sh [IMAGE]   (default oi-base:bookworm; MIRROR overrides the mirror)
# Does nothing when IMAGE exists already (FORCE=1 rebuilds it).
set -euo pipefail
image=${1:-oi-base:bookworm}
mirror=${MIRROR:-http://deb.debian.org/debian}
say() { printf 'bootstrap-base: %s\n' "$*" >&2; }

if [[ -z ${FORCE:-} ]] && docker image inspect "$image" >/dev/null 2>&1; then
  say "$image exists already"
  exit 0
fi
if ! command -v debootstrap >/dev/null 2>&1; then
  if [[ $(id -u) -ne 0 ]]; then
    say "debootstrap is not installed; run as root or: sudo apt-get install debootstrap"
    exit 1
  fi
  say "installing debootstrap from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
fi
if [[ $(id -u) -ne 0 ]]; then
  say "debootstrap needs root"
  exit 1
fi

root=$(mktemp -d /tmp/oi-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
say "debootstrap bookworm (minbase) from $mirror into $root"
debootstrap --variant=minbase bookworm "$root" "$mirror" >"$root.log" 2>&1 || {
  tail -n 30 "$root.log" >&2
  say "debootstrap failed; full log: $root.log"
  exit 1
}
rm -f "$root.log"
# Trim what a container never needs, as the official slim images do.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* \
  "$root"/usr/share/man/* "$root"/usr/share/locale/*
echo "deb $mirror bookworm main" >"$root/etc/apt/sources.list"
say "importing as $image"
tar -C "$root" -c . | docker import -c 'CMD ["/bin/bash"]' - "$image" >/dev/null
say "done: $image"
