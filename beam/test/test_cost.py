"""
What the tunnel commands cost (issue 7, "Cost"): C{beam PORT} and
C{beam connect} import only what they use, and an open yamux stream holds
no buffers it does not need.

The import checks run the real commands in subprocesses (a fresh
interpreter each, the checkout first on C{sys.path}) and, once a command
printed its C{ready} event, ask it for its C{sys.modules} with C{SIGUSR1}
(see L{_WRAPPER}).  They name modules, never megabytes: how much memory a
module costs is measured by C{bench/bench_tunnel.py} and written down in
C{docs/benchmarks.md} ("Memory"), not asserted here.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from beam.p2p.muxer._yamux_frames import TYPE_DATA, encodeHeader
from beam.p2p.muxer.yamux import YamuxSession

REPO = Path(__file__).resolve().parents[2]

#: Runs the C{beam} command line with the remaining arguments; on SIGUSR1
#: it writes its module names, one per line, to the file named by
#: C{BEAM_TEST_MODULES}.
_WRAPPER = r"""
import os, signal, sys

def dump(signum, frame):
    path = os.environ["BEAM_TEST_MODULES"]
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(sorted(sys.modules)))
    os.replace(path + ".tmp", path)

signal.signal(signal.SIGUSR1, dump)
sys.argv = ["beam"] + sys.argv[1:]
from beam.cli import main
sys.exit(main())
"""

#: Never imported by either command: test code and what a tunnel without
#: compression, UDP or a running daemon does not use.
NEVER = (
    "hypothesis",
    "beam.test",
    "beam.testing",
    "twisted.trial.unittest",
    "lz4",
    "beam.tunnel.compress",
    "beam.tunnel.udp",
    "beam.endpoints",
)

#: Not imported by either command until used: the control socket's HTTP
#: server (built on the first connection), the control API's client (what
#: the command line talks to an already running node with), and TLS.
NOT_UNTIL_USED = (
    "twisted.web.server",
    "twisted.web.client",
    # Beam's TLS, until a peer picks /tls/1.0.0 (both ends choose Noise).
    # OpenSSL itself is imported by Twisted's reactor whether used or not.
    "beam.p2p.security.tls",
)

#: Not imported by C{beam PORT}, which makes no forward.
NOT_BY_THE_HOST = (
    "beam.tunnel.client",
    "beam.tunnel._forward_machine",
    "automat",
)


def _freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Command:
    """
    One C{beam} command in a subprocess, killed at the end of the test.
    """

    def __init__(self, case: SynchronousTestCase, home: str, args: list[str]) -> None:
        self.modulesPath = home + "-modules.txt"
        env = dict(os.environ, BEAM_TEST_MODULES=self.modulesPath)
        self.stderr = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [sys.executable, "-c", _WRAPPER, "--home", home, *args, "--json", "--listen", "/ip4/127.0.0.1/tcp/0"],
            cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self.stderr, text=True,
        )
        case.addCleanup(self.stop)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        assert self.process.stdout is not None
        self.process.stdout.close()
        self.stderr.close()

    def _fail(self, why: str) -> AssertionError:
        self.stderr.seek(0)
        return AssertionError(f"{why}; its stderr:\n{self.stderr.read().decode(errors='replace')}")

    def ready(self, timeout: float = 60.0) -> dict[str, Any]:
        """
        The command's C{ready} event (a JSON line on stdout).
        """
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            readable, _, _ = select.select([self.process.stdout], [], [], 0.1)
            if readable:
                line = self.process.stdout.readline()
                if not line:
                    raise self._fail("the command exited before it was ready")
                event = json.loads(line)
                if event.get("event") == "ready":
                    return dict(event)
                if event.get("event") == "error":
                    raise self._fail(f"the command failed: {event}")
        raise self._fail("the command was not ready in time")

    def modules(self, timeout: float = 30.0) -> set[str]:
        """
        The names in the running command's C{sys.modules}.
        """
        os.kill(self.process.pid, signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with open(self.modulesPath) as f:
                    return set(f.read().split())
            except FileNotFoundError:
                time.sleep(0.05)
        raise self._fail("the command did not list its modules")


def _imported(modules: set[str], names: tuple[str, ...]) -> list[str]:
    """
    The C{names} (packages included: C{"lz4"} stands for C{"lz4.block"}
    too) that appear in C{modules}.
    """
    return sorted(n for n in names if n in modules or any(m.startswith(n + ".") for m in modules))


class TunnelImportsTests(SynchronousTestCase):
    """
    C{beam PORT} and C{beam connect} in their own processes, a tunnel
    between them, and what each imported by the time it was ready.
    """

    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="beam-test-cost-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        service = socket.socket()
        service.bind(("127.0.0.1", 0))
        service.listen(8)
        self.addCleanup(service.close)
        self.servicePort = service.getsockname()[1]
        self.host = _Command(self, os.path.join(self.tmp, "h1"), [str(self.servicePort), "--no-register"])
        self.share = self.host.ready()["share"]

    def test_exposeImportsNoForwardOrTestCode(self) -> None:
        """
        C{beam PORT} imports no test code, no compression or UDP code (none
        was asked for), no HTTP server or client (no one used the control
        socket), no TLS (the tunnel's ends chose Noise) and none of the
        forward's machinery (it makes no forward: C{beam.tunnel.client}, its
        state machine, Automat).
        """
        modules = self.host.modules()
        self.assertIn("beam.tunnel.host", modules)
        self.assertEqual(_imported(modules, NEVER + NOT_UNTIL_USED + NOT_BY_THE_HOST), [])

    def test_connectImportsNoTestCode(self) -> None:
        """
        C{beam connect}, once its forward listens, has imported the forward
        but no test code, no compression or UDP code (it offered no
        compression and forwards TCP), no HTTP server or client and no TLS.
        """
        client = _Command(self, os.path.join(self.tmp, "h2"),
                          ["connect", self.share, "--port", str(_freePort())])
        client.ready()
        modules = client.modules()
        self.assertIn("beam.tunnel.client", modules)
        self.assertEqual(_imported(modules, NEVER + NOT_UNTIL_USED), [])


class StreamBuffersTests(SynchronousTestCase):
    """
    An open yamux stream keeps queues only while they hold data.
    """

    def test_idleStreamHoldsNoQueues(self) -> None:
        """
        A stream that has sent and received data, and has nothing queued or
        buffered any more, holds neither a send queue nor a receive buffer:
        with 1,000 open tunnelled connections they were most of the
        streams' memory.
        """
        transport = StringTransport()
        session = YamuxSession(True, lambda stream: None, Clock())
        session.makeConnection(transport)
        stream = session.openStream()
        stream.setProtocol(Protocol())
        self.assertIsNone(stream._sendQueue)
        self.assertIsNone(stream._recvBuffer)

        session.pauseProducing()  # the connection is congested: writes queue
        stream.write(b"x" * 1000)
        self.assertIsNotNone(stream._sendQueue)
        session.resumeProducing()
        self.assertIn(b"x" * 1000, transport.value())
        self.assertIsNone(stream._sendQueue)

        stream.pauseProducing()  # the reader pauses: data is buffered
        session.dataReceived(encodeHeader(TYPE_DATA, 0, stream.streamID, 5) + b"hello")
        self.assertIsNotNone(stream._recvBuffer)
        stream.resumeProducing()
        self.assertIsNone(stream._recvBuffer)
