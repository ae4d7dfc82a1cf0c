"""
System packages the real-part tests need (nftables for the NAT lab,
coturn, miniupnpd, tor), installed by the project's own code rather than by
hand, so that the README's one test command works on a fresh machine.

L{ensureCommands} checks for the commands and, when some are missing and
we are root on a Debian-like system, installs their packages with
C{apt-get} once per machine (under a lock, so parallel test processes do
not race).  When that is impossible it raises L{MissingSystemPackage}
with the exact command to run: a test suite that needs a NAT must fail
loudly, never skip quietly.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from collections.abc import Mapping
from typing import IO

from beam.errors import BeamError

__all__ = ["MissingSystemPackage", "ensureCommands"]

#: Where the lock and the apt log live.
_LOCK = "/tmp/beam-sysdeps.lock"
_LOG = "/tmp/beam-sysdeps.log"

#: How long one apt-get may take (a cold index update included).
APT_TIMEOUT = 600


class MissingSystemPackage(BeamError):
    """
    A command the tests need is missing and could not be installed.
    """


def _missing(commands: Mapping[str, str]) -> dict[str, str]:
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    return {cmd: pkg for cmd, pkg in commands.items() if shutil.which(cmd, path=path) is None}


def ensureCommands(commands: Mapping[str, str]) -> None:
    """
    Make sure every command of C{commands} (command name -> Debian
    package) is installed.

    @raise MissingSystemPackage: when some are missing and cannot be
        installed here (not root, no apt-get, or apt-get failed); the
        message says what to run.
    """
    missing = _missing(commands)
    if not missing:
        return
    packages = sorted(set(missing.values()))
    hint = f"apt-get install -y {' '.join(packages)}"
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise MissingSystemPackage(f"the tests need {', '.join(sorted(missing))}: run `{hint}` as root")
    with open(_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        missing = _missing(commands)
        if not missing:
            return
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
        # Packages such as tor and miniupnpd start their daemons when
        # installed; the tests run their own, so forbid that while we
        # install (Debian's policy-rc.d protocol), if nobody set a policy.
        policy = "/usr/sbin/policy-rc.d"
        ours = not os.path.exists(policy)
        if ours:
            with open(policy, "w") as f:
                f.write("#!/bin/sh\n# written by beam.testing.sysdeps while installing test packages\nexit 101\n")
            os.chmod(policy, 0o755)
        try:
            with open(_LOG, "a") as log:
                ok = _run(install, env, log)
                if not ok:
                    # A stale package index: refresh it once and retry.
                    ok = _run(["apt-get", "update"], env, log) and _run(install, env, log)
        finally:
            if ours:
                os.unlink(policy)
        if not ok or _missing(commands):
            raise MissingSystemPackage(f"installing {', '.join(packages)} failed (see {_LOG}); run `{hint}` as root")


def _run(argv: list[str], env: Mapping[str, str], log: IO[str]) -> bool:
    try:
        done = subprocess.run(argv, env=dict(env), stdout=log, stderr=subprocess.STDOUT, timeout=APT_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0
