"""
Rough edges of the command line found when trying it as a new user
(issue 12's "Fix" list), each checked where a person meets it: the real
C{beam} command on loopback, or the text it prints.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import tempfile
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from beam.test.test_cli import BIN, beam, readLine


class _Daemon:
    """
    One C{beam daemon} on loopback in a home of its own, shared by the
    tests of a class (starting one costs seconds on a loaded machine).
    """

    def __init__(self) -> None:
        self.home = tempfile.mkdtemp(prefix="beam-cli-fixes-")
        self.proc = subprocess.Popen(
            [str(BIN / "beam"), "--home", self.home, "daemon", "--json", "-q",
             "--listen", "/ip4/127.0.0.1/tcp/0"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            self.ready: dict[str, Any] = json.loads(readLine(self.proc))
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        shutil.rmtree(self.home, ignore_errors=True)


class LonelyNodeTests(SynchronousTestCase):
    """
    A node that knows no other peer.
    """

    daemon: _Daemon

    @classmethod
    def setUpClass(cls) -> None:
        cls.daemon = _Daemon()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.daemon.stop()

    def test_bootstrapWithoutPeersSaysWhy(self) -> None:
        """
        C{beam network bootstrap} on a node that knows no peer says that
        it knows none and how to add one (it used to print C{beam: None}),
        exit status 1; with C{--json}, the same words in one error object.
        """
        out = beam("network", "bootstrap", home=self.daemon.home)
        self.assertEqual(out.returncode, 1, out)
        self.assertNotIn("None", out.stderr)
        self.assertIn("knows no DHT peers", out.stderr)
        self.assertIn("beam network bootstrap MULTIADDR", out.stderr)
        out = beam("network", "bootstrap", "--json", home=self.daemon.home)
        self.assertEqual((out.returncode, out.stderr), (1, ""), out)
        error = json.loads(out.stdout.strip().splitlines()[-1])
        self.assertEqual(error["event"], "error")
        self.assertIn("knows no DHT peers", error["error"])


class ConfigCheckTests(SynchronousTestCase):
    """
    C{beam config check}.
    """

    def test_noConfigFile(self) -> None:
        """
        Without a C{config.toml}, C{beam config check} says there is none
        and that the defaults apply (it used to say C{config.toml: OK}),
        exit status 0; with C{--json}, C{"exists": false}.
        """
        home = self.mktemp()
        out = beam("config", "check", home=home)
        self.assertEqual(out.returncode, 0, out)
        self.assertNotIn("OK", out.stdout)
        self.assertIn("no config.toml", out.stdout)
        self.assertIn("defaults apply", out.stdout)
        out = beam("config", "check", "--json", home=home)
        self.assertEqual(out.returncode, 0, out)
        result = json.loads(out.stdout)
        self.assertEqual((result["ok"], result["exists"], result["problems"]), (True, False, []))

    def test_validConfigFile(self) -> None:
        """
        A valid C{config.toml} is still reported as OK.
        """
        from pathlib import Path

        home = Path(self.mktemp())
        home.mkdir()
        (home / "config.toml").write_text("")
        out = beam("config", "check", home=str(home))
        self.assertEqual(out.returncode, 0, out)
        self.assertIn("config.toml: OK", out.stdout)
        self.assertTrue(json.loads(beam("config", "check", "--json", home=str(home)).stdout)["exists"])


class BenchHelpTests(SynchronousTestCase):
    """
    C{bench/bench_dht.py --help}.
    """

    def test_everyOptionExplained(self) -> None:
        """
        Every option of C{bench/bench_dht.py} has a help text, and those
        with a default show it.
        """
        import os
        import re
        import sys

        from beam.test.test_cli import REPO

        out = subprocess.run([sys.executable, str(REPO / "bench" / "bench_dht.py"), "--help"],
                             capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"})
        self.assertEqual(out.returncode, 0, out)
        options = out.stdout.partition("options:")[2]
        self.assertTrue(options, out.stdout)
        entries = re.split(r"\n(?=  -)", options.strip("\n"))
        self.assertGreater(len(entries), 10, entries)
        for entry in entries:
            flag, _, rest = entry.strip().partition("  ")
            self.assertTrue(rest.strip(), f"no help for {flag}")
        for flag, default in [("--nodes", "10000"), ("--names", "500"), ("--latency", "0.05"),
                              ("--seed", "0"), ("--check-bootstrap", "5")]:
            (entry,) = [e for e in entries if e.strip().startswith(flag + " ")]
            self.assertIn(f"(default: {default})", " ".join(entry.split()), entry)


class StatusNamesTests(SynchronousTestCase):
    """
    The names in C{beam status}'s text.
    """

    def test_namesShown(self) -> None:
        """
        Each registered name gets a line of its own under C{names:}: its
        record's sequence number and expiry, and how many peers stored it
        or why the last publication failed.
        """
        from beam.cli import statusText

        status = {
            "peer_id": "12D3KooWSelf",
            "names": [
                {"name": "alice", "peer_id": "12D3KooWSelf", "services": ["web"], "addrs": [],
                 "seq": 7, "expires": 1000.0 + 3600, "stored_on": 4, "error": None},
                {"name": "bob", "peer_id": "12D3KooWSelf", "services": [], "addrs": [],
                 "seq": 3, "expires": 1000.0 - 5, "stored_on": 0, "error": "no DHT peers"},
                {"name": "carol", "peer_id": "12D3KooWSelf", "services": [], "addrs": [],
                 "seq": None, "expires": None, "stored_on": 0, "error": None},
            ],
        }
        lines = statusText(status, now=1000.0).splitlines()
        start = lines.index("names:")
        self.assertEqual(lines[start + 1:start + 4], [
            "  alice        seq 7, expires in 1h00m, stored on 4 peers",
            "  bob          seq 3, expired, not stored: no DHT peers",
            "  carol        not published yet",
        ])
        self.assertIn("names: none", statusText({"peer_id": "12D3KooWSelf", "names": []}).splitlines())


def _satisfies(version: tuple[int, int, int], spec: str) -> bool:
    """
    Whether C{version} meets an npm C{engines} range: alternatives joined
    by C{||}, each a space-separated list of C{>=}, C{>}, C{<=}, C{<},
    C{=}, C{^} or C{~} comparators (or C{*}) on versions that may leave out
    their minor or patch number.  Enough for the ranges of the lock file.
    """
    import re

    def parse(text: str) -> tuple[int, ...]:
        return tuple(int(p) for p in text.split(".") if p not in ("x", "*", ""))

    def meets(comparator: str) -> bool:
        m = re.fullmatch(r"(>=|<=|>|<|=|\^|~)?v?([0-9x*.]*)", comparator)
        if m is None:
            raise ValueError(f"unsupported engines range {spec!r}")
        op, bound = m.group(1) or "=", parse(m.group(2))
        cut = version[:len(bound)]
        if op == ">=":
            return cut >= bound
        if op == ">":
            return cut > bound
        if op == "<=":
            return cut <= bound
        if op == "<":
            return cut < bound
        if op == "~":
            kept = min(len(bound), 2)  # ~1.2.3 and ~1.2 keep 1.2, ~1 keeps 1
            return cut >= bound and version[:kept] == bound[:kept]
        if op == "^":
            return cut >= bound and version[0] == bound[0]
        return cut == bound

    # "> = 1.2" never occurs, ">= 1.2" does: glue operators to their version.
    spec = re.sub(r"([<>=^~]+)\s+", r"\1", spec)
    return any(all(meets(c) for c in alternative.split()) for alternative in spec.split("||"))


def enginesExcluding(lock: dict[str, Any], version: tuple[int, int, int]) -> list[str]:
    """
    The packages of an npm lock file whose C{engines.node} excludes
    C{version} (what C{npm ci} warns about as C{EBADENGINE}).
    """
    out = []
    for path, package in lock.get("packages", {}).items():
        engines = package.get("engines")
        spec = engines.get("node") if isinstance(engines, dict) else None
        if spec and not _satisfies(version, spec):
            out.append(f"{path.rpartition('node_modules/')[2] or '(root)'}@{package.get('version')}: node {spec}")
    return out


class InteropEnginesTests(SynchronousTestCase):
    """
    The js-libp2p interop peer's packages run on the Node the README
    promises.
    """

    def test_semverRanges(self) -> None:
        """
        The range check reads the forms the lock file uses.
        """
        for spec, ok in [(">=20", True), (">=22", False), ("^22 || ^24 || >=26", False), ("^18 || >=20", True),
                         (">=20.0.0", True), (">= 20", True), ("20.x", True), ("^20.5", False), ("~20.0.1", False), ("~20.0", True),
                         ("~19", False),
                         (">=18 <21", True), ("*", True)]:
            self.assertEqual(_satisfies((20, 0, 0), spec), ok, spec)

    def test_lockFitsPromisedNode(self) -> None:
        """
        No package in C{interop/package-lock.json} declares an
        C{engines.node} range that excludes the oldest Node the project
        promises (README: Node 20; C{interop/package.json}: C{>=20}), so
        C{npm ci --prefix interop} gives no C{EBADENGINE} warning.
        """
        import re

        from beam.test.test_cli import REPO

        m = re.search(r"Node (\d+) \((\d+)\.(\d+) or later\)", (REPO / "README.md").read_text())
        assert m is not None, "the README names no Node version"
        major, least = int(m.group(1)), (int(m.group(2)), int(m.group(3)), 0)
        self.assertEqual(least[0], major)
        promised = json.loads((REPO / "interop" / "package.json").read_text())["engines"]["node"]
        self.assertTrue(_satisfies(least, promised), promised)
        lock = json.loads((REPO / "interop" / "package-lock.json").read_text())
        self.assertEqual(enginesExcluding(lock, least), [])
