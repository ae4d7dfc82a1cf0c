#!/bin/sh
# Install what bench/bench_tunnel.py compares Beam with: socat and OpenSSH
# (server and client).  Idempotent: packages already there are left alone,
# and nothing is fetched when all are present.  Run as root or with sudo.
set -eu

missing=""
command -v socat >/dev/null 2>&1 || missing="$missing socat"
{ command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ]; } || missing="$missing openssh-server"
{ command -v ssh >/dev/null 2>&1 && command -v ssh-keygen >/dev/null 2>&1; } || missing="$missing openssh-client"

if [ -z "$missing" ]; then
    echo "bench/setup.sh: socat, sshd, ssh and ssh-keygen are installed"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "bench/setup.sh: please install:$missing (no apt-get here)" >&2
    exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
echo "bench/setup.sh: installing$missing"
$SUDO apt-get update -q
# The benchmark starts its own sshd on a high loopback port; the packaged
# service is not needed, so keep the package's scripts from starting it.
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends $missing
