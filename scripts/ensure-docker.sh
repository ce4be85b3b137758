#!/usr/bin/env bash
# Makes sure a Docker Engine is installed and its daemon answers.
# On a fresh Debian machine: installs Debian's docker.io package (engine 20.10, API 1.41)
# and starts dockerd in the background. Safe to run again: does nothing when Docker answers.
set -euo pipefail

say() { printf 'ensure-docker: %s\n' "$*" >&2; }

if docker info >/dev/null 2>&1; then
  exit 0
fi

if ! command -v dockerd >/dev/null 2>&1; then
  if [[ $(id -u) -ne 0 ]]; then
    say "Docker Engine is not installed; run this script as root (or: sudo apt-get install docker.io)"
    exit 1
  fi
  say "Docker Engine not found: installing Debian's docker.io package"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends docker.io iptables ca-certificates >/dev/null
fi

if [[ $(id -u) -ne 0 ]]; then
  say "the Docker daemon is not running; start it with: sudo systemctl start docker (or sudo dockerd &)"
  exit 1
fi

say "starting dockerd in the background (log: /var/log/oi-dockerd.log)"
if command -v systemctl >/dev/null 2>&1 && systemctl start docker >/dev/null 2>&1; then
  :
else
  setsid nohup dockerd >/var/log/oi-dockerd.log 2>&1 </dev/null &
fi
for _ in $(seq 60); do
  docker info >/dev/null 2>&1 && exit 0
  sleep 1
done
say "dockerd did not answer within 60 s; see /var/log/oi-dockerd.log"
exit 1
