"""
The dashboard's web server (L{beam.daemon.web}, issue 13) on a real
loopback port, in front of a real L{BeamDaemon}: the token, the Host,
Origin and Sec-Fetch-Site checks, cookie login, the page's meta tag, the
static files, Server-Sent Events (and dropping a client that never
reads), port selection and the token file.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Optional

from hypothesis import given, settings, strategies as st
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from beam.daemon.config import Config, WebConfig, parseWebAddress
from beam.daemon.service import BeamDaemon
from beam.daemon.web import EVENT_CLIENT_BUFFER, TOKEN_FILE, WebService, loadToken
from beam.identity.keys import Identity
from beam.identity.multiaddr import Multiaddr

LOOPBACK = (Multiaddr.fromString("/ip4/127.0.0.1/tcp/0"),)
REPO = Path(__file__).resolve().parents[2]


def _freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _request(port: int, method: str = "GET", path: str = "/", headers: Optional[dict[str, str]] = None,
             body: bytes = b"", host: Optional[str] = None) -> tuple[int, dict[str, str], bytes]:
    """
    One HTTP/1.1 request on a blocking socket (run in a thread): the status,
    the headers (lower-case names; repeated ones joined by newlines) and
    the body.
    """
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host or f'127.0.0.1:{port}'}", "Connection: close"]
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(raw)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    out: dict[str, str] = {}
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.decode("latin-1").partition(":")
        key = k.strip().lower()
        out[key] = (out[key] + "\n" if key in out else "") + v.strip()
    if out.get("transfer-encoding") == "chunked":
        body, rest2 = b"", rest
        while rest2:
            size, _, rest2 = rest2.partition(b"\r\n")
            n = int(size, 16)
            if n == 0:
                break
            body, rest2 = body + rest2[:n], rest2[n + 2:]
        rest = body
    return status, out, rest


class _FakeExchange:
    def __init__(self, id: int, path: str) -> None:
        self.id = id
        self.path = path

    def summaryJSON(self) -> dict[str, Any]:
        return {"id": self.id, "method": "GET", "path": self.path, "status": 200}


class _FakeStore:
    """
    The inspector's store as the web server uses it: C{subscribe}.
    """

    def __init__(self) -> None:
        self.subscribers: list[Callable[[Any], None]] = []

    def subscribe(self, fn: Callable[[Any], None]) -> Callable[[], None]:
        self.subscribers.append(fn)
        return lambda: self.subscribers.remove(fn)

    def emit(self, exchange: Any) -> None:
        for fn in list(self.subscribers):
            fn(exchange)


class WebServerTests(TestCase):
    """
    A daemon with its dashboard on a free loopback port.
    """

    timeout = 60

    @inlineCallbacks
    def setUp(self) -> Any:  # type: ignore[override]
        self.home = Path(self.mktemp())
        self.home.mkdir(parents=True, mode=0o700)
        self.daemon = yield self.startDaemon(self.home, WebConfig(port=_freePort()))
        self.web = self.daemon.web
        self.port = self.web.port
        self.token = self.web.token

    @inlineCallbacks
    def startDaemon(self, home: Path, web: WebConfig) -> Any:
        daemon = BeamDaemon(reactor, home, Identity.generate(), Config(listen=LOOPBACK, web=web), plugins=())
        yield daemon.start()
        self.addCleanup(daemon.stopService)
        return daemon

    def get(self, path: str = "/", **kw: Any) -> Any:
        return deferToThread(_request, self.port, "GET", path, **kw)

    @inlineCallbacks
    def test_apiNeedsToken(self) -> Any:
        """
        C{/api/...} without the token is 401; with it as a header, a
        Bearer token or the cookie, it is the control API's answer.
        """
        code, _, body = yield self.get("/api/v1/status")
        self.assertEqual(code, 401)
        self.assertIn("error", json.loads(body))
        code, _, _ = yield self.get("/api/v1/status", headers={"X-Beam-Token": "x" * 43})
        self.assertEqual(code, 401)
        for headers in ({"X-Beam-Token": self.token}, {"Authorization": f"Bearer {self.token}"},
                        {"Cookie": f"beam_token_{self.port}={self.token}"}):
            code, h, body = yield self.get("/api/v1/status", headers=headers)
            self.assertEqual(code, 200, headers)
            self.assertEqual(json.loads(body)["peer_id"], str(self.daemon.node.peerID))
            self.assertEqual(h["x-content-type-options"], "nosniff")
            self.assertEqual(h["x-frame-options"], "DENY")
            self.assertEqual(h["referrer-policy"], "no-referrer")
            self.assertIn("default-src 'self'", h["content-security-policy"])

    @inlineCallbacks
    def test_postNeedsHeaderToken(self) -> Any:
        """
        A state-changing request with the token only as a cookie (what a
        cross-site form would carry) is refused; with the header it
        reaches the control API (here a 404 for an unknown tunnel).
        """
        code, _, _ = yield deferToThread(_request, self.port, "DELETE", "/api/v1/tunnels/nope",
                                         headers={"Cookie": f"beam_token_{self.port}={self.token}"})
        self.assertEqual(code, 401)
        code, _, _ = yield deferToThread(_request, self.port, "POST", "/api/v1/shutdown",
                                         headers={"Cookie": f"beam_token_{self.port}={self.token}"})
        self.assertEqual(code, 401)
        self.assertTrue(self.daemon.running)
        code, _, body = yield deferToThread(_request, self.port, "DELETE", "/api/v1/tunnels/nope",
                                            headers={"X-Beam-Token": self.token})
        self.assertEqual(code, 404, body)

    @inlineCallbacks
    def test_foreignHost(self) -> Any:
        """
        A DNS-rebinding page's requests carry its own name as Host: 403,
        even with the token; localhost and [::1] with our port pass.
        """
        headers = {"X-Beam-Token": self.token}
        for host in (f"evil.example:{self.port}", "127.0.0.1", f"127.0.0.1:{self.port + 1}", f"10.0.0.1:{self.port}"):
            code, _, body = yield self.get("/api/v1/status", headers=headers, host=host)
            self.assertEqual(code, 403, host)
            self.assertIn("Host", json.loads(body)["error"])
        code, _, _ = yield self.get("/metrics", host=f"evil.example:{self.port}")
        self.assertEqual(code, 403)
        for host in (f"localhost:{self.port}", f"[::1]:{self.port}", f"LOCALHOST:{self.port}"):
            code, _, _ = yield self.get("/api/v1/status", headers=headers, host=host)
            self.assertEqual(code, 200, host)

    @inlineCallbacks
    def test_foreignOrigin(self) -> Any:
        """
        An Origin other than the dashboard's own, or a cross-site (or
        same-site, another local port) Sec-Fetch-Site, is 403.
        """
        headers = {"X-Beam-Token": self.token}
        for extra in ({"Origin": "http://evil.example"}, {"Origin": "null"},
                      {"Origin": f"http://127.0.0.1:{self.port + 1}"},
                      {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"}):
            code, _, _ = yield self.get("/api/v1/status", headers={**headers, **extra})
            self.assertEqual(code, 403, extra)
        code, _, _ = yield self.get("/api/v1/status", headers={
            **headers, "Origin": f"http://127.0.0.1:{self.port}", "Sec-Fetch-Site": "same-origin"})
        self.assertEqual(code, 200)

    @inlineCallbacks
    def test_cookieLogin(self) -> Any:
        """
        C{/?token=T} sets an HttpOnly, SameSite=Strict cookie that lasts 30 days and redirects
        to C{/} (so the token leaves the address bar); a wrong token is 403.
        """
        code, h, _ = yield self.get(f"/?token={self.token}")
        self.assertEqual(code, 303)
        self.assertEqual(h["location"], "/")
        cookie = h["set-cookie"]
        self.assertIn(f"beam_token_{self.port}={self.token}", cookie)
        self.assertIn("httponly", cookie.lower())
        self.assertIn("samesite=strict", cookie.lower())
        self.assertIn("path=/", cookie.lower())
        self.assertIn(f"max-age={30 * 24 * 3600}", cookie.lower())
        code, h, _ = yield self.get("/?token=wrong")
        self.assertEqual(code, 403)
        self.assertNotIn("set-cookie", h)
        # Browsers send a host's cookies to all its ports: the cookie is
        # named after this dashboard's port, and another port's does not
        # log in here.
        code, _, _ = yield deferToThread(_request, self.port, "GET", "/api/v1/status",
                                         headers={"Cookie": f"beam_token_{self.port + 1}={self.token}"})
        self.assertEqual(code, 401)

    @inlineCallbacks
    def test_metaTagOnlyWithToken(self) -> Any:
        """
        The page loads without the token, but carries the token's meta tag
        only for a request that has it.
        """
        code, h, page = yield self.get("/")
        self.assertEqual(code, 200)
        self.assertTrue(h["content-type"].startswith("text/html"))
        self.assertNotIn(b"beam-token", page)
        self.assertNotIn(self.token.encode(), page)
        code, _, page = yield self.get("/", headers={"Cookie": f"beam_token_{self.port}={self.token}"})
        self.assertIn(f'<meta name="beam-token" content="{self.token}">'.encode(), page)
        code, _, page = yield self.get("/", headers={"Cookie": f"beam_token_{self.port}=" + "A" * 43})
        self.assertNotIn(b"beam-token", page)

    @inlineCallbacks
    def test_staticWhitelist(self) -> Any:
        """
        C{/static/NAME} serves the dashboard folder's files with their type
        and C{no-cache}; traversal, hidden files, unknown types, listings
        and missing files are 404.
        """
        from beam.daemon.web import WEBUI

        names = sorted(p.name for p in WEBUI.iterdir() if p.suffix in (".html", ".js", ".css"))
        self.assertTrue(names)
        code, h, body = yield self.get(f"/static/{names[0]}")
        self.assertEqual(code, 200)
        self.assertEqual(h["cache-control"], "no-cache")
        self.assertEqual(body, (WEBUI / names[0]).read_bytes())
        for path in ("/static/../web.py", "/static/..%2fweb.py", "/static/%2e%2e/web.py", "/static/",
                     "/static", "/static/.hidden.js", "/static/nope.js", "/static/a/b.js",
                     "/static/..%2F..%2Fconfig.py", "/nope"):
            code, _, _ = yield self.get(path)
            self.assertEqual(code, 404, path)

    @inlineCallbacks
    def test_bodyBounded(self) -> Any:
        """
        A request body over the control API's limit is answered 413
        before it is read (declared length) or as soon as it passes it.
        """
        from beam.controlapi import MAX_BODY

        headers = {"X-Beam-Token": self.token}
        code, _, _ = yield deferToThread(_request, self.port, "POST", "/api/v1/tunnels",
                                         headers=headers, body=b"x" * (MAX_BODY + 1))
        self.assertEqual(code, 413)

    @inlineCallbacks
    def test_statusSection(self) -> Any:
        """
        The status's C{"web"} section says where the dashboard is, without
        the token; C{/v1/web/login} on the control socket gives the URL
        that logs in.
        """
        from beam.daemon.control import ControlClient
        from beam.daemon.status import statusJSON

        web = statusJSON(self.daemon.status())["web"]
        self.assertEqual(web, {"enabled": True, "url": f"http://127.0.0.1:{self.port}/", "host": "127.0.0.1",
                               "port": self.port, "allow_remote": False, "clients": 0, "error": None})
        client = ControlClient(reactor, self.home)
        answer = yield client.request("GET", "/v1/web/login")
        self.assertEqual(answer["url"], f"http://127.0.0.1:{self.port}/?token={self.token}")

    @inlineCallbacks
    def test_events(self) -> Any:
        """
        C{/api/events} streams a status event at once and every second,
        and a request event for each exchange the inspector's store
        reports; the client is counted in the status.
        """
        store = _FakeStore()
        original = self.daemon.service
        self.patch(self.daemon, "service", lambda name: type("S", (), {"store": store})() if name == "requests"
                   else original(name))
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        self.addCleanup(sock.close)
        sock.sendall(f"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                     f"X-Beam-Token: {self.token}\r\n\r\n".encode())

        def readUntil(marker: bytes, got: bytearray) -> bytes:
            while marker not in got:
                chunk = sock.recv(65536)
                if not chunk:
                    raise AssertionError(f"closed before {marker!r}: {bytes(got)!r}")
                got += chunk
            return bytes(got)

        got = bytearray()
        head = yield deferToThread(readUntil, b"event: status", got)
        self.assertIn(b"text/event-stream", head)
        self.assertEqual(self.web.status().clients, 1)
        self.assertEqual(len(store.subscribers), 1)
        store.emit(_FakeExchange(7, "/hello"))
        data = yield deferToThread(readUntil, b"event: request", got)
        line = data.split(b"event: request\ndata: ", 1)[1].split(b"\n", 1)[0]
        self.assertEqual(json.loads(line)["path"], "/hello")
        before = data.count(b"event: status")
        yield deferToThread(readUntil, b"event: status", bytearray(b""))  # the next tick
        self.assertGreaterEqual(before, 1)
        sock.close()
        for _ in range(100):
            if not self.web.events.clients:
                break
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(self.web.events.clients, [])
        self.assertEqual(store.subscribers, [])

    @inlineCallbacks
    def test_slowClientDropped(self) -> Any:
        """
        A client that never reads is dropped once its unsent events pass
        1 MiB; what is kept for it never grows past that.
        """
        store = _FakeStore()
        original = self.daemon.service
        self.patch(self.daemon, "service", lambda name: type("S", (), {"store": store})() if name == "requests"
                   else original(name))
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", self.port))
        self.addCleanup(sock.close)
        sock.sendall(f"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                     f"X-Beam-Token: {self.token}\r\n\r\n".encode())
        for _ in range(200):
            if self.web.events.clients:
                break
            yield deferLater(reactor, 0.01, lambda: None)
        client = self.web.events.clients[0]
        big = "/" + "x" * 60000
        for i in range(400):  # 24 MB offered, far more than any socket buffer
            if not self.web.events.clients:
                break
            store.emit(_FakeExchange(i, big))
            self.assertLessEqual(client.pendingBytes, EVENT_CLIENT_BUFFER)
            yield deferLater(reactor, 0.001, lambda: None)
        self.assertEqual(self.web.events.clients, [])
        self.assertEqual(self.web.events.dropped, 1)
        self.assertEqual(client.pendingBytes, 0)

    @inlineCallbacks
    def test_nextFreePort(self) -> Any:
        """
        A taken port (another node's dashboard) moves the next node to the
        next free one; with every port taken it runs without a dashboard.
        """
        home = Path(self.mktemp())
        home.mkdir(parents=True, mode=0o700)
        other = yield self.startDaemon(home, WebConfig(port=self.port))
        self.assertNotEqual(other.web.port, self.port)
        self.assertGreater(other.web.port, self.port)
        self.assertLessEqual(other.web.port, self.port + 19)
        blocker = socket.socket()
        self.addCleanup(blocker.close)
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        taken = blocker.getsockname()[1]
        web = WebService(reactor, other, WebConfig(port=taken), home, attempts=1)
        web.startService()
        self.addCleanup(web.stopService)
        self.assertIsNone(web.port)
        self.assertIsNone(web.url)
        self.assertIn("cannot listen", web.status().error)
        self.flushLoggedErrors()

    def test_tokenFile(self) -> None:
        """
        The token file is 0600 and the token is the same after a restart.
        """
        path = self.home / TOKEN_FILE
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(path.read_text().strip(), self.token)
        self.assertEqual(loadToken(self.home), self.token)


class TokenTests(SynchronousTestCase):
    """
    L{loadToken} on its own.
    """

    def test_madeAndKept(self) -> None:
        """
        A missing token is made (43 base64url characters, 0600) and then
        kept; one readable by others is replaced (it may have leaked).
        """
        home = Path(self.mktemp())
        home.mkdir()
        token = loadToken(home)
        self.assertEqual(len(token), 43)
        self.assertEqual(loadToken(home), token)
        os.chmod(home / TOKEN_FILE, 0o644)
        fresh = loadToken(home)
        self.assertNotEqual(fresh, token)
        self.assertEqual(stat.S_IMODE(os.stat(home / TOKEN_FILE).st_mode), 0o600)

    def test_remoteNeedsAllow(self) -> None:
        """
        A non-loopback web address is refused without allowRemote.
        """
        self.assertRaises(ValueError, parseWebAddress, "0.0.0.0:4040")
        self.assertEqual(parseWebAddress("0.0.0.0:4040", allowRemote=True).host, "0.0.0.0")


class HostCheckFuzzTests(SynchronousTestCase):
    """
    L{WebService.allowedHost} on arbitrary bytes.
    """

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=80))
    def test_neverRaises(self, host: bytes) -> None:
        """
        Any Host header is answered yes or no, never an exception; only
        the loopback names with the port pass without allowRemote.
        """
        web = WebService(None, None, WebConfig(port=4040), Path("."))
        web.port = 4040
        allowed = web.allowedHost(host)
        if allowed:
            self.assertIn(host.strip().lower(), (b"127.0.0.1:4040", b"localhost:4040", b"[::1]:4040"))


class DashboardCommandTests(TestCase):
    """
    C{beam dashboard --json} against a running node.
    """

    timeout = 60

    @inlineCallbacks
    def test_dashboardJSON(self) -> Any:
        """
        C{beam dashboard --json} prints the tokened URL of the running
        node's dashboard.
        """
        home = Path(self.mktemp()).resolve()
        home.mkdir(parents=True, mode=0o700)
        port = _freePort()
        daemon = BeamDaemon(reactor, home, Identity.generate(), Config(listen=LOOPBACK, web=WebConfig(port=port)),
                            plugins=())
        yield daemon.start()
        self.addCleanup(daemon.stopService)

        def run() -> subprocess.CompletedProcess[str]:
            return subprocess.run([str(Path(sys.executable).parent / "beam"), "--home", str(home), "dashboard", "--json"],
                                  cwd=REPO, capture_output=True, text=True, timeout=60)

        result = yield deferToThread(run)
        self.assertEqual(result.returncode, 0, result.stderr)
        event = json.loads(result.stdout.strip().splitlines()[-1])
        self.assertEqual(event["url"], f"http://127.0.0.1:{daemon.web.port}/?token={daemon.web.token}")
        self.assertEqual(event["dashboard"], f"http://127.0.0.1:{daemon.web.port}/")
