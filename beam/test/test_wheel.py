"""
What a new user installs: the wheel, in a fresh virtualenv outside the
checkout, used the way the README says.

An editable install (what the test command uses) puts the checkout on
C{sys.path} and so hides any package the wheel leaves out; this test is
the only one that would have caught C{No module named 'beam.dht'}.  It
builds the wheel the way C{pip install .} does (an isolated build), installs
it with its dependencies into a new venv in a temporary directory, and runs
everything from a working directory that is not the checkout.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

REPO = Path(__file__).resolve().parents[2]


def _cleanEnv() -> dict[str, str]:
    """
    The environment minus anything that would let the checkout leak into
    the fresh venv.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    return env


class _Proc:
    """
    A long-running process whose stdout lines are JSON events.
    """

    def __init__(self, argv: list[str], cwd: str, env: dict[str, str]) -> None:
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=self.log)
        self.buf = b""

    def readJSON(self, timeout: float = 60) -> dict[str, object]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no output within {timeout} s:\n{self.stderr()}")
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if ready:
                data = os.read(self.proc.stdout.fileno(), 65536)
                if not data:
                    raise AssertionError(f"exited ({self.proc.wait()}) before a line:\n{self.stderr()}")
                self.buf += data
        line, _, self.buf = self.buf.partition(b"\n")
        return json.loads(line)

    def stderr(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.log.close()


class WheelTests(SynchronousTestCase):
    """
    The wheel, installed in a fresh venv, runs the README's main job.
    """

    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="beam-wheel-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.env = _cleanEnv()

    def buildWheel(self) -> Path:
        out = Path(self.tmp) / "dist"
        build = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(out), str(REPO)],
            capture_output=True, text=True, timeout=600, cwd=self.tmp,
        )
        self.assertEqual(build.returncode, 0, build.stderr)
        (wheel,) = out.glob("*.whl")
        return wheel

    def test_wheelContents(self) -> None:
        """
        The wheel carries every package under C{beam/} that has an
        C{__init__.py} (found by walking the checkout, not from a list),
        the .proto files, the plugin without a C{twisted/__init__.py} or
        C{twisted/plugins/__init__.py} (which would shadow Twisted), the
        dashboard's page, script and styles, and the console script.
        """
        wheel = self.buildWheel()
        names = set(zipfile.ZipFile(wheel).namelist())
        packages = sorted(p.parent.relative_to(REPO) for p in (REPO / "beam").rglob("__init__.py"))
        self.assertGreater(len(packages), 5)
        for pkg in packages:
            self.assertIn(f"{pkg.as_posix()}/__init__.py", names)
        for module in (REPO / "beam").rglob("*.py"):
            self.assertIn(module.relative_to(REPO).as_posix(), names)
        for proto in (REPO / "beam").rglob("*.proto"):
            self.assertIn(proto.relative_to(REPO).as_posix(), names)
        webui = sorted((REPO / "beam" / "daemon" / "webui").iterdir())
        self.assertGreaterEqual(len(webui), 3)
        for page in webui:
            self.assertIn(page.relative_to(REPO).as_posix(), names)
        for plugin in (REPO / "twisted" / "plugins").glob("*.py"):
            self.assertIn(f"twisted/plugins/{plugin.name}", names)
        self.assertIn("twisted/plugins/beam_plugin.py", names)
        self.assertNotIn("twisted/plugins/__init__.py", names)
        self.assertNotIn("twisted/__init__.py", names)
        entry = [n for n in names if n.endswith("entry_points.txt")]
        text = zipfile.ZipFile(wheel).read(entry[0]).decode()
        self.assertIn("beam = beam.cli:main", text)

    def test_freshVenvRunsTunnel(self) -> None:
        """
        In a fresh venv holding only the wheel and its dependencies:
        C{twistd --help} lists C{beam}; C{beam daemon} starts and answers
        C{beam status}; C{beam PORT} shares a web server and C{beam connect}
        reaches it, and an HTTP GET through the tunnel returns the page;
        the host's dashboard serves its script and C{/metrics}.
        """
        wheel = self.buildWheel()
        venv = Path(self.tmp) / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120, env=self.env)
        pip = subprocess.run(
            [str(venv / "bin" / "pip"), "install", "-q", str(wheel)],
            capture_output=True, text=True, timeout=600, cwd=self.tmp, env=self.env,
        )
        self.assertEqual(pip.returncode, 0, pip.stderr)
        bin_ = venv / "bin"
        where = subprocess.run(
            [str(bin_ / "python"), "-c", "import beam, sys; print(beam.__file__)"],
            capture_output=True, text=True, cwd=self.tmp, env=self.env, timeout=60,
        )
        self.assertTrue(where.stdout.strip().startswith(str(venv)), where.stdout + where.stderr)

        twistd = subprocess.run([str(bin_ / "twistd"), "--help"], capture_output=True, text=True,
                                cwd=self.tmp, env=self.env, timeout=120)
        self.assertIn("beam", twistd.stdout.split("Commands:")[-1], twistd.stdout + twistd.stderr)

        def beam(home: str, *args: str) -> list[str]:
            return [str(bin_ / "beam"), "--home", home, *args]

        daemonHome = tempfile.mkdtemp(dir=self.tmp)
        daemon = _Proc(beam(daemonHome, "daemon", "--json", "--listen", "/ip4/127.0.0.1/tcp/0"),
                       self.tmp, self.env)
        self.addCleanup(daemon.stop)
        self.assertEqual(daemon.readJSON()["event"], "ready")
        status = subprocess.run(beam(daemonHome, "status", "--json"), capture_output=True, text=True,
                                cwd=self.tmp, env=self.env, timeout=60)
        self.assertEqual(status.returncode, 0, status.stderr)
        self.assertIn("peer_id", json.loads(status.stdout))

        site = Path(self.tmp) / "site"
        site.mkdir()
        (site / "index.html").write_text("hello from the wheel\n")
        web = _Proc([str(bin_ / "python"), "-c",
                     "import http.server, functools, json, sys;"
                     f"h = functools.partial(http.server.SimpleHTTPRequestHandler, directory={str(site)!r});"
                     "s = http.server.HTTPServer(('127.0.0.1', 0), h);"
                     "print(json.dumps({'port': s.server_address[1]}), flush=True);"
                     "s.serve_forever()"], self.tmp, self.env)
        self.addCleanup(web.stop)
        webPort = web.readJSON()["port"]

        host = _Proc(beam(tempfile.mkdtemp(dir=self.tmp), str(webPort), "--json",
                          "--listen", "/ip4/127.0.0.1/tcp/0"), self.tmp, self.env)
        self.addCleanup(host.stop)
        ready = host.readJSON()
        self.assertEqual(ready["event"], "ready", host.stderr())
        client = _Proc(beam(tempfile.mkdtemp(dir=self.tmp), "connect", str(ready["share"]), "--json",
                            "--listen", "/ip4/127.0.0.1/tcp/0"), self.tmp, self.env)
        self.addCleanup(client.stop)
        cready = client.readJSON()
        self.assertEqual(cready["event"], "ready", client.stderr())
        local = str(cready["listen"])
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://{local}/index.html", timeout=60) as resp:
            self.assertEqual(resp.status, 200)
            self.assertEqual(resp.read(), b"hello from the wheel\n")
        # The dashboard's files and /metrics (prometheus-client) come with
        # the wheel too.
        dashboard = str(ready["dashboard"]).rstrip("/")
        for path, wanted in (("/static/app.js", b"beam-token"), ("/metrics", b"beam_tunnel_bytes_total")):
            with opener.open(dashboard + path, timeout=60) as resp:
                self.assertEqual(resp.status, 200)
                self.assertIn(wanted, resp.read())
        for proc in (client, host, daemon):
            self.assertNotIn("Traceback", proc.stderr())
