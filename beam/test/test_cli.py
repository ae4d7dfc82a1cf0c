"""
The command line and twistd plugin, run as real processes on loopback.
"""

from __future__ import annotations

import json
import select
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from beam.identity.keys import Identity

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]


def beam(*args: str, home: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "beam"), "--home", home, *args],
        capture_output=True, text=True, timeout=timeout,
    )


def readLine(proc: subprocess.Popen[str], timeout: float = 20) -> str:
    """
    One line of C{proc}'s stdout, failing instead of hanging forever.
    """
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise AssertionError(f"no output within {timeout} s")
    return proc.stdout.readline()


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CLITests(SynchronousTestCase):
    """
    C{beam id}, C{beam daemon} and C{beam ping}.
    """

    def setUp(self) -> None:
        self.home = self.mktemp()

    def startDaemon(self, home: str) -> tuple[subprocess.Popen[str], dict]:
        proc = subprocess.Popen(
            [str(BIN / "beam"), "--home", home, "daemon", "--json",
             "--listen", "/ip4/127.0.0.1/tcp/0", "--listen", "/ip6/::1/tcp/0"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.addCleanup(lambda: proc.poll() is None and (proc.kill(), proc.wait()))
        ready = json.loads(readLine(proc))
        return proc, ready

    def test_idIsStable(self) -> None:
        """
        C{beam id} creates the identity once (mode 0600) and prints the same
        peer ID every time, as text or JSON.
        """
        first = beam("id", home=self.home)
        self.assertEqual(first.returncode, 0, first.stderr)
        second = beam("id", "--json", home=self.home)
        pid = first.stdout.strip()
        self.assertTrue(pid.startswith("12D3KooW"))
        self.assertEqual(json.loads(second.stdout), {"peer_id": pid})
        mode = stat.S_IMODE((Path(self.home) / "identity.key").stat().st_mode)
        self.assertEqual(mode, 0o600)

    def test_daemonAndPing(self) -> None:
        """
        C{beam daemon --json} prints a ready event with /p2p/ addresses
        (IPv4 and IPv6); C{beam ping} reaches it with round-trip times; the
        daemon reports the connection and exits cleanly on SIGINT.
        """
        proc, ready = self.startDaemon(self.home)
        self.assertEqual(ready["event"], "ready")
        peer = ready["peer_id"]
        self.assertEqual(peer, beam("id", home=self.home).stdout.strip())
        addrs = ready["addrs"]
        self.assertTrue(any(a.startswith("/ip4/127.0.0.1/tcp/") for a in addrs))
        self.assertTrue(any(a.startswith("/ip6/::1/tcp/") for a in addrs))
        self.assertTrue(all(a.endswith("/p2p/" + peer) for a in addrs))
        for addr in addrs:
            out = beam("ping", addr, "--count", "2", "--json", home=self.mktemp())
            self.assertEqual(out.returncode, 0, out.stderr)
            events = [json.loads(line) for line in out.stdout.splitlines()]
            self.assertEqual([e["event"] for e in events], ["connected", "pong", "pong", "summary"])
            self.assertEqual(events[0]["peer_id"], peer)
            self.assertTrue(all(e["rtt_ms"] >= 0 for e in events[1:3]))
        text = beam("ping", addrs[0], "-c", "1", home=self.mktemp())
        self.assertIn("seq=1 time=", text.stdout)
        connected = json.loads(readLine(proc))
        self.assertEqual(connected["event"], "connected")
        proc.send_signal(signal.SIGINT)
        self.assertEqual(proc.wait(timeout=20), 0)

    def test_pingErrors(self) -> None:
        """
        Wrong peer ID, nothing listening and a malformed multiaddr each give
        a one-line error and exit status 1, never a traceback.
        """
        proc, ready = self.startDaemon(self.home)
        addr = ready["addrs"][0]
        other = Identity.generate().peerID
        wrong = addr.rsplit("/p2p/", 1)[0] + f"/p2p/{other}"
        cases = {
            wrong: f"dialled {other} but the peer is {ready['peer_id']}",
            f"/ip4/127.0.0.1/tcp/{freePort()}": "refused",
            "/ip4/999.1.1.1/tcp/1": "invalid",
        }
        for target, expected in cases.items():
            out = beam("ping", target, "-c", "1", home=self.mktemp())
            self.assertEqual(out.returncode, 1, out.stderr)
            self.assertTrue(out.stderr.startswith("beam: "), out.stderr)
            self.assertIn(expected, out.stderr.lower() if expected.islower() else out.stderr)
            self.assertNotIn("Traceback", out.stderr)
            self.assertEqual(len(out.stderr.strip().splitlines()), 1, out.stderr)


class TwistdTests(SynchronousTestCase):
    """
    The twistd plugin.
    """

    def test_helpListsBeam(self) -> None:
        """
        C{twistd --help} lists the beam plugin, and the plugin cache is
        (re)generated beside the plugin.
        """
        cache = REPO / "twisted" / "plugins" / "dropin.cache"
        if cache.exists():
            cache.unlink()
        out = subprocess.run([str(BIN / "twistd"), "--help"], capture_output=True, text=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("beam", out.stdout)
        self.assertIn("Beam node", out.stdout)
        self.assertTrue(cache.exists(), "twistd did not regenerate dropin.cache")

    def test_twistdRunsNode(self) -> None:
        """
        C{twistd -n beam --listen ...} runs a node that C{beam ping} reaches,
        using the identity in C{--home}; SIGTERM stops it.
        """
        home = self.mktemp()
        peer = beam("id", home=home).stdout.strip()
        port = freePort()
        proc = subprocess.Popen(
            [str(BIN / "twistd"), "-n", "--pidfile=", "--logfile=-", "beam",
             "--home", home, "--listen", f"/ip4/127.0.0.1/tcp/{port}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.addCleanup(lambda: proc.poll() is None and (proc.kill(), proc.wait()))
        deadline = time.monotonic() + 30
        while True:
            out = beam("ping", f"/ip4/127.0.0.1/tcp/{port}/p2p/{peer}", "-c", "1", home=self.mktemp())
            if out.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        self.assertEqual(out.returncode, 0, out.stderr)
        proc.send_signal(signal.SIGTERM)
        # twistd re-raises the signal after a clean shutdown.
        self.assertIn(proc.wait(timeout=20), (0, -signal.SIGTERM))
        log = proc.stdout.read()
        self.assertIn("Main loop terminated", log)
        self.assertNotIn("Traceback", log)

    def test_badOptions(self) -> None:
        """
        An invalid --listen is a usage error, not a traceback.
        """
        out = subprocess.run(
            [str(BIN / "twistd"), "-n", "--pidfile=", "beam", "--listen", "/ip4/nope"],
            capture_output=True, text=True, timeout=60,
        )
        self.assertNotEqual(out.returncode, 0)
        self.assertIn("invalid", (out.stdout + out.stderr).lower())
        self.assertNotIn("Traceback", out.stdout + out.stderr)
