"""
C{beam requests} end to end: the real C{beam} CLI against a running node
whose tunnel carries HTTP (issue 13).

An HTTP app (C{http.server} in its own process, printing one JSON line per
request it gets) is exposed with C{beam PORT}, reached through C{beam
connect} with urllib, and the captured requests are listed, shown,
replayed (as is and edited), exported as curl (and the command run) and
followed with the CLI, all on loopback.  Every wait is a poll with a
deadline (L{waitUntil}).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import socket
import urllib.error
import urllib.request
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from beam.test.test_e2e_tunnel import BIN, Child, E2EMixin, beamRun, waitUntil

#: The app behind the tunnel: answers C{{"got": METHOD PATH}} JSON and
#: prints each request it gets as a JSON line on stdout.
APP = r"""
import http.server, json, sys

class App(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        print(json.dumps({"method": self.command, "path": self.path, "body": body.decode("utf-8", "replace"),
                          "headers": {k.lower(): v for k, v in self.headers.items()}}), flush=True)
        out = json.dumps({"got": self.command + " " + self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_PUT = answer

    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), App)
print(json.dumps({"port": server.server_address[1]}), flush=True)
server.serve_forever()
"""


def send(port: int, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> Any:
    """
    One request through the forward on C{port}; the JSON answer.
    """
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, headers=headers or {})
    with opener.open(request, timeout=60) as resp:
        return json.loads(resp.read())


class RequestsCLITests(E2EMixin, SynchronousTestCase):
    """
    C{beam requests} against C{beam PORT}'s node.
    """

    def beam(self, *args: str) -> subprocess.CompletedProcess[str]:
        out = beamRun("requests", *args, home=self.hostHome)
        self.assertEqual(out.returncode, 0, (args, out.stdout, out.stderr))
        return out

    def listed(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.beam("--json").stdout.splitlines()]

    def test_listShowReplayCurlFollow(self) -> None:
        """
        Requests sent through the tunnel are listed (JSON and text), shown
        with their bodies, replayed to the app (as is and edited), exported
        as a curl command that reaches the app when run, followed as they
        complete (Ctrl-C exits 130), and cleared.
        """
        app = Child(self, [sys.executable, "-c", APP], "app")
        appPort = app.readJSON()["port"]
        _host, ready, self.hostHome = self.expose(appPort)
        _client, local, _ = self.connect(ready["share"])

        self.assertEqual(send(local, "/hello?x=1"), {"got": "GET /hello?x=1"})
        self.assertEqual(app.readJSON()["path"], "/hello?x=1")
        posted = send(local, "/api/users", b'{"name": "ada"}', {"Content-Type": "application/json"})
        self.assertEqual(posted, {"got": "POST /api/users"})
        app.readJSON()

        def twoComplete() -> list[dict[str, Any]] | None:
            found = self.listed()
            return found if len(found) == 2 and all(s["state"] == "complete" for s in found) else None

        listing = waitUntil(twoComplete, 30, "two complete exchanges")
        self.assertEqual([(s["method"], s["path"], s["status"]) for s in listing],
                         [("GET", "/hello?x=1", 200), ("POST", "/api/users", 200)])
        getID, postID = listing[0]["id"], listing[1]["id"]

        text = self.beam().stdout
        self.assertIn(f"#{getID}  GET  /hello?x=1  200 OK", text)
        self.assertNotIn("\x1b", text)  # a pipe gets no colour
        posts = [json.loads(line) for line in self.beam("--json", "--method", "POST").stdout.splitlines()]
        self.assertEqual([s["id"] for s in posts], [postID])

        detail = json.loads(self.beam("show", str(postID), "--json").stdout)
        self.assertEqual(detail["request"]["kind"], "json")
        self.assertEqual(json.loads(detail["request"]["text"]), {"name": "ada"})
        self.assertEqual(json.loads(detail["response"]["text"]), {"got": "POST /api/users"})
        shown = self.beam("show", str(postID)).stdout
        self.assertIn('"name": "ada"', shown)
        self.assertIn("Content-Type: application/json", shown)

        # Replay as is: the app gets the same request again.
        replayed = json.loads(self.beam("replay", str(postID), "--json").stdout)
        self.assertEqual((replayed["source"], replayed["replay_of"], replayed["status"]), ("replay", postID, 200))
        again = app.readJSON()
        self.assertEqual((again["method"], again["path"], again["body"]), ("POST", "/api/users", '{"name": "ada"}'))
        # Edited.
        edited = self.beam("replay", str(postID), "--method", "PUT", "--path", "/api/users/7",
                           "-H", "X-Edited: yes", "--data", '{"name": "grace"}').stdout
        self.assertIn(f"(↻ #{postID})", edited)
        again = app.readJSON()
        self.assertEqual((again["method"], again["path"], again["body"]), ("PUT", "/api/users/7", '{"name": "grace"}'))
        self.assertEqual((again["headers"]["x-edited"], again["headers"]["content-length"]), ("yes", "17"))

        # curl: the command goes to the captured Host, i.e. through the tunnel.
        command = self.beam("curl", str(postID)).stdout.strip()
        self.assertTrue(command.startswith(f"curl -X POST http://127.0.0.1:{local}/api/users"), command)
        ran = subprocess.run(["bash", "-c", command + " --silent --show-error --noproxy '*'"],
                             capture_output=True, text=True, timeout=60, check=False)
        self.assertEqual((ran.returncode, json.loads(ran.stdout)), (0, {"got": "POST /api/users"}), ran.stderr)
        again = app.readJSON()
        self.assertEqual((again["method"], again["body"]), ("POST", '{"name": "ada"}'))

        # --follow prints new exchanges as they complete.
        follow = Child(self, [str(BIN / "beam"), "--home", self.hostHome, "requests", "--follow", "--json",
                              "--path", "/followed"], "follow")
        send(local, "/followed/1")
        app.readJSON()
        line = follow.readJSON(timeout=60)
        self.assertEqual((line["path"], line["status"], line["state"]), ("/followed/1", 200, "complete"))
        send(local, "/followed/2")
        app.readJSON()
        self.assertEqual(follow.readJSON(timeout=60)["path"], "/followed/2")
        self.assertEqual(follow.signal(signal.SIGINT), 130)

        cleared = json.loads(self.beam("clear", "--json").stdout)
        self.assertGreaterEqual(cleared["cleared"], 6)
        self.assertEqual(self.listed(), [])
        self.assertIn("no captured requests", self.beam().stdout)

    def test_errors(self) -> None:
        """
        An unknown ID, a missing ID and no running node each fail with one
        line on stderr.
        """
        self.hostHome = self.newHome()
        out = beamRun("requests", home=self.hostHome)
        self.assertEqual(out.returncode, 1)
        self.assertIn("no Beam node is running", out.stderr)
        out = beamRun("requests", "show", home=self.hostHome)
        self.assertEqual(out.returncode, 1)
        self.assertIn("needs the request's ID", out.stderr)
        app = Child(self, [sys.executable, "-c", APP], "app")
        _host, _ready, self.hostHome = self.expose(app.readJSON()["port"])
        out = beamRun("requests", "show", "42", home=self.hostHome)
        self.assertEqual(out.returncode, 1)
        self.assertIn("no captured request 42", out.stderr)


def freePort() -> int:
    """
    A loopback port free a moment ago (the dashboard takes the next one
    if it was taken since).
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kw: Any) -> None:
        return None


class DashboardLineTests(E2EMixin, SynchronousTestCase):
    """
    The C{Dashboard:} line of C{beam PORT}.
    """

    def test_bannerLogsIn(self) -> None:
        """
        On the terminal (the owner's), C{beam PORT} prints the URL that
        logs a browser in, carrying the node's token (as Jupyter does);
        opening it sets the cookie and leads to the page. The JSON event
        keeps the plain URL, without the token.
        """
        home = self.newHome()
        host = Child(self, [str(BIN / "beam"), "--home", home, "4", "--listen", "/ip4/127.0.0.1/tcp/0",
                            "--no-register", "--web", str(freePort())], "host")
        line = waitUntil(lambda: next((x for x in iter(host.readLine, "") if x.startswith("Dashboard:")), None),
                         60, "the Dashboard line")
        url = line.split(None, 1)[1].strip()
        with open(f"{home}/web-token") as f:
            token = f.read().strip()
        self.assertTrue(url.startswith("http://127.0.0.1:"), url)
        self.assertTrue(url.endswith(f"/?token={token}"), url)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect)
        with self.assertRaises(urllib.error.HTTPError) as caught:
            opener.open(url, timeout=30)
        self.assertEqual(caught.exception.code, 303)
        self.assertIn(f"beam_token_{url.split(':')[2].split('/')[0]}={token}", caught.exception.headers["Set-Cookie"])
        _host, ready, _home = self.expose(4, "--no-register", "--web", str(freePort()))
        self.assertNotIn("token", ready["dashboard"])
        self.assertTrue(ready["dashboard"].startswith("http://127.0.0.1:"))
