"""
The dashboard in a real browser (issue 13): headless Chromium from the
system's packages (L{beam.testing.browser}) against real C{beam} processes
on loopback.

One node exposes a small HTTP app (run in a thread of this test, so the
test sees every request the app got); a second node runs C{beam connect}
to it.  The browser logs in with the URL C{beam dashboard --json} prints,
sees the tunnel, and the HTTP requests the test sends through the tunnel
(a JSON GET, a form POST, a 404) appear live in the inspector with their
status and bodies; the test filters them, opens one, replays it (and the
app gets it again), edits and replays another, exports one as curl, and
looks at the peers and DHT pages.  A screenshot of every page goes to
C{<tmp>/beam-test-output/<test id>/}, and to C{docs/images/dashboard-*.png}
when C{BEAM_UPDATE_SCREENSHOTS=1}.

Every wait is a bounded poll (Selenium's C{WebDriverWait}); nothing sleeps a
fixed time.  When the browser cannot start the test fails: it never skips.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

from twisted.trial.unittest import SynchronousTestCase

from beam.test.test_e2e_tunnel import E2EMixin, beamRun
from beam.testing.browser import startBrowser

#: The repository's docs/images (for BEAM_UPDATE_SCREENSHOTS=1).
DOCS_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"

#: How long any one thing may take to show up in the page (generous: a
#: loaded 2-core machine runs two nodes and a browser here).
WAIT = 40


class RecordingApp:
    """
    The local service behind the tunnel: a tiny HTTP/1.1 app on 127.0.0.1
    that records every request it gets (method, target, body).

      - C{GET /api/items...}: a JSON list;
      - C{POST /form...}: reads an urlencoded form, answers a greeting;
      - C{GET /big}: 256 KiB of text (traffic for the throughput graph);
      - anything else: 404.
    """

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, bytes]] = []
        self.lock = threading.Lock()
        app = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _body(self) -> bytes:
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _answer(self, status: int, kind: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_GET(self) -> None:
                body = self._body()
                with app.lock:
                    app.requests.append((self.command, self.path, body))
                if self.path.startswith("/api/items"):
                    items = {"items": [{"id": 1, "name": "teapot"}, {"id": 2, "name": "kettle"}], "count": 2}
                    self._answer(200, "application/json", json.dumps(items).encode())
                elif self.path == "/big":
                    self._answer(200, "text/plain", b"beam dashboard traffic\n" * 11400)
                else:
                    self._answer(404, "text/plain", b"no such page\n")

            def do_POST(self) -> None:
                body = self._body()
                with app.lock:
                    app.requests.append((self.command, self.path, body))
                if self.path.startswith("/form"):
                    form = parse_qs(body.decode("utf-8", "replace"))
                    name = form.get("name", ["nobody"])[0]
                    self._answer(200, "text/plain; charset=utf-8", f"thanks, {name}\n".encode())
                else:
                    self._answer(404, "text/plain", b"no such page\n")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def seen(self, method: str, path: str) -> list[bytes]:
        """
        The bodies of the requests C{method path} the app got.
        """
        with self.lock:
            return [body for m, p, body in self.requests if m == method and p == path]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def freePort() -> int:
    """
    A TCP port free on 127.0.0.1 now (the node moves up if it is taken by
    the time it binds; the test reads the real one from C{beam dashboard}).
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def through(port: int, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """
    One HTTP request through the forward on C{port}; its status and body.
    """
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body or None, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


class DashboardBrowserTests(E2EMixin, SynchronousTestCase):
    """
    The dashboard of a real node, in headless Chromium.
    """

    def setUp(self) -> None:
        super().setUp()
        self.shots = Path(tempfile.gettempdir()) / "beam-test-output" / self.id()
        shutil.rmtree(self.shots, ignore_errors=True)
        self.shots.mkdir(parents=True)
        self.app = RecordingApp()
        self.addCleanup(self.app.stop)

    def home(self, web: str) -> str:
        """
        A fresh home whose config.toml sets the dashboard's address.
        """
        home = self.newHome()
        Path(home, "config.toml").write_text(f'web = "{web}"\n')
        return home

    def browser(self) -> Any:
        driver = startBrowser(self.shots)
        self.addCleanup(driver.quit)
        return driver

    def screenshot(self, driver: Any, view: str) -> None:
        """
        Save the page as C{dashboard-<view>.png} in the test's output (and
        in docs/images with C{BEAM_UPDATE_SCREENSHOTS=1}).
        """
        path = self.shots / f"dashboard-{view}.png"
        self.assertTrue(driver.save_screenshot(str(path)), path)
        if os.environ.get("BEAM_UPDATE_SCREENSHOTS") == "1":
            DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, DOCS_IMAGES / path.name)

    def wait(self, driver: Any, condition: Callable[[Any], Any], what: str, timeout: float = WAIT) -> Any:
        from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        try:
            return WebDriverWait(driver, timeout, poll_frequency=0.1,
                                 ignored_exceptions=(StaleElementReferenceException,)).until(condition)
        except TimeoutException:
            driver.save_screenshot(str(self.shots / "failure.png"))  # never into docs/images
            logs = "\n".join(str(e) for e in driver.get_log("browser"))
            raise AssertionError(f"{what}: not within {timeout} s (screenshot in {self.shots})\n{logs}") from None

    def rows(self, driver: Any) -> list[dict[str, str]]:
        """
        The inspector's visible rows, as C{{"id", "method", "path", "status"}}.
        """
        out = []
        for tr in driver.find_elements("css selector", "#requests tr[data-id]"):
            cells = tr.find_elements("tag name", "td")
            out.append({"id": tr.get_attribute("data-id"), "method": cells[2].text, "path": cells[3].text,
                        "status": cells[4].text})
        return out

    def row(self, driver: Any, method: str, path: str, status: str = "") -> Any:
        """
        Wait for the row C{method path} (with C{status} as a prefix) and return it.
        """
        def find(d: Any) -> Any:
            for r in self.rows(d):
                if r["method"] == method and r["path"].startswith(path) and r["status"].startswith(status):
                    return r
            return None

        return self.wait(driver, find, f"the inspector shows {method} {path} {status}")

    def test_dashboard(self) -> None:
        """
        Log in, see the tunnel, the live requests (status, bodies), filter
        them, replay one as is and one edited (both reach the app), export
        curl, and see the peers and DHT pages; a page without the token
        shows the login hint and no data.
        """
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import Select

        hostHome = self.home(f"127.0.0.1:{freePort()}")
        host, ready, _ = self.expose(self.app.port, home=hostHome)
        client, local, _ = self.connect(ready["share"], home=self.home("off"))
        out = beamRun("dashboard", "--json", home=hostHome)
        self.assertEqual(out.returncode, 0, out.stderr)
        login = json.loads(out.stdout)["url"]
        parts = urlsplit(login)
        base = f"{parts.scheme}://{parts.netloc}/"
        self.assertIn("token=", parts.query)

        driver = self.browser()

        # Without the token: the hint, and no data at all.
        driver.get(base)
        self.wait(driver, lambda d: d.find_element(By.ID, "login-hint").is_displayed(), "the login hint")
        self.assertIn("beam dashboard", driver.find_element(By.ID, "login-hint").text)
        self.assertFalse(driver.find_element(By.ID, "app").is_displayed())
        self.assertEqual(driver.find_elements(By.CSS_SELECTOR, "#tunnels tr"), [])
        self.assertEqual(driver.find_element(By.ID, "peer-id").get_attribute("textContent"), "")
        self.screenshot(driver, "login")

        # Logged in: the token leaves the address bar, the tunnel shows up.
        driver.get(login)
        self.wait(driver, lambda d: urlsplit(d.current_url).query == "", "the redirect to / without the token")
        tunnel = str(self.app.port)
        self.wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, f'#tunnels tr[data-tunnel="{tunnel}"]'),
                  "the tunnel in the overview")
        self.assertFalse(driver.find_element(By.ID, "login-hint").is_displayed())
        self.assertEqual(driver.find_element(By.ID, "peer-id").text, ready["peer_id"])

        # Traffic through the tunnel.
        self.assertEqual(through(local, "GET", "/api/items?page=1")[0], 200)
        status, body = through(local, "POST", "/form", b"name=Ada&lang=python",
                               {"Content-Type": "application/x-www-form-urlencoded"})
        self.assertEqual((status, body), (200, b"thanks, Ada\n"))
        self.assertEqual(through(local, "GET", "/missing")[0], 404)
        # Markup in a request must show as text, never run or render.
        self.assertEqual(through(local, "GET", "/x?q=<b/id=injected>x</b>")[0], 404)
        for _ in range(3):
            self.assertEqual(through(local, "GET", "/big")[0], 200)

        driver.get(base + "#/requests")
        self.row(driver, "GET", "/api/items?page=1", "200")
        self.row(driver, "POST", "/form", "200")
        self.row(driver, "GET", "/missing", "404")
        self.row(driver, "GET", "/x?q=<b/id=injected>x</b>", "404")
        self.assertEqual(driver.find_elements(By.ID, "injected"), [])

        # Filters.
        status = driver.find_element(By.ID, "filter-status")
        status.send_keys("4xx")
        self.wait(driver, lambda d: {r["status"][:3] for r in self.rows(d)} == {"404"}, "only 4xx rows")
        status.clear()
        status.send_keys("404")  # exact status, then back to all
        self.wait(driver, lambda d: len(self.rows(d)) == 2, "the two 404 rows")
        driver.execute_script("var e = document.getElementById('filter-status'); e.value = '';"
                              " e.dispatchEvent(new Event('input'));")
        Select(driver.find_element(By.ID, "filter-method")).select_by_value("POST")
        self.wait(driver, lambda d: [r["method"] for r in self.rows(d)] == ["POST"], "only the POST row")
        Select(driver.find_element(By.ID, "filter-method")).select_by_value("")
        path = driver.find_element(By.ID, "filter-path")
        path.send_keys("items")
        self.wait(driver, lambda d: [r["path"] for r in self.rows(d)] == ["/api/items?page=1"], "only /api/items")

        # The JSON exchange in detail: headers and the pretty body.
        item = self.row(driver, "GET", "/api/items?page=1", "200")
        driver.find_element(By.CSS_SELECTOR, f'#requests tr[data-id="{item["id"]}"]').click()
        detail = self.wait(driver, lambda d: d.find_element(By.ID, "request-detail")
                           if d.find_elements(By.CSS_SELECTOR, "#request-detail .body-json") else None,
                           "the detail pane with the JSON body")
        pretty = detail.find_element(By.CSS_SELECTOR, "[data-message=response] .body-json").text
        self.assertEqual(json.loads(pretty)["items"][0]["name"], "teapot")
        self.assertIn("\n", pretty)  # pretty-printed, not one line
        self.assertIn("application/json", detail.text)
        driver.execute_script("var e = document.getElementById('filter-path'); e.value = '';"
                              " e.dispatchEvent(new Event('input'));")
        self.wait(driver, lambda d: len(self.rows(d)) >= 7, "every row back without the filter")
        self.screenshot(driver, "requests")

        # Replay as is: the app gets the request a second time.
        self.assertEqual(len(self.app.seen("GET", "/api/items?page=1")), 1)
        driver.find_element(By.ID, "replay").click()
        self.wait(driver, lambda d: "Replayed as" in d.find_element(By.ID, "replay-result").text, "the replay's result")
        self.assertEqual(len(self.app.seen("GET", "/api/items?page=1")), 2)
        self.wait(driver, lambda d: any("↻ #" + item["id"] in r["path"] for r in self.rows(d)),
                  "the replay in the list")

        # Copy as curl.
        driver.find_element(By.ID, "copy-curl").click()
        self.wait(driver, lambda d: "curl" in d.find_element(By.ID, "curl-output").text, "the curl command")
        self.assertIn("/api/items?page=1", driver.find_element(By.ID, "curl-output").text)

        # Edit and replay the form POST with another body and path.
        post = self.row(driver, "POST", "/form", "200")
        driver.find_element(By.CSS_SELECTOR, f'#requests tr[data-id="{post["id"]}"]').click()
        self.wait(driver, lambda d: d.find_element(By.ID, "request-detail").get_attribute("data-id") == post["id"],
                  "the POST's detail")
        self.assertIn("Ada", driver.find_element(By.CSS_SELECTOR, "[data-message=request]").text)
        driver.find_element(By.ID, "edit-replay").click()
        editPath = self.wait(driver, lambda d: d.find_element(By.ID, "edit-path"), "the replay editor")
        editPath.clear()
        editPath.send_keys("/form?edited=1")
        editBody = driver.find_element(By.ID, "edit-body")
        self.assertEqual(editBody.get_attribute("value"), "name=Ada&lang=python")
        editBody.clear()
        editBody.send_keys("name=Grace&lang=python")
        self.screenshot(driver, "replay")
        driver.find_element(By.ID, "replay-send").click()
        self.wait(driver, lambda d: "Replayed as" in d.find_element(By.ID, "replay-result").text,
                  "the edited replay's result")
        self.assertEqual(self.app.seen("POST", "/form?edited=1"), [b"name=Grace&lang=python"])

        # Peers: the client node, connected directly.
        driver.get(base + "#/peers")
        self.wait(driver, lambda d: any("direct" in tr.text for tr in d.find_elements(By.CSS_SELECTOR, "#peers tr")),
                  "the client's connection in the peers table")
        self.screenshot(driver, "peers")

        # DHT.
        driver.get(base + "#/dht")
        self.wait(driver, lambda d: d.find_element(By.ID, "dht").is_displayed()
                  and d.find_element(By.ID, "dht-mode").text not in ("", "—"), "the DHT page")
        self.screenshot(driver, "dht")

        # Overview: live bytes, and the throughput graph drawn from the
        # status events while traffic flows (a bounded loop of downloads
        # in a thread, stopped once the graph shows a few busy samples).
        driver.get(base + "#/")
        done = threading.Event()

        def traffic() -> None:
            stop = time.monotonic() + WAIT
            for _ in range(20000):
                if done.is_set() or time.monotonic() > stop:
                    return
                try:
                    through(local, "GET", "/big")
                except OSError:
                    return

        pump = threading.Thread(target=traffic, daemon=True)
        pump.start()
        try:
            graph = f'#tunnels tr[data-tunnel="{tunnel}"] svg.spark'
            self.wait(driver, lambda d: int(d.find_element(By.CSS_SELECTOR, graph).get_attribute("data-busy") or 0) >= 6,
                      "the tunnel's throughput graph with traffic")
            self.assertTrue(driver.find_elements(By.CSS_SELECTOR, graph + " polyline"))
        finally:
            done.set()
            pump.join(60)
        row = driver.find_element(By.CSS_SELECTOR, f'#tunnels tr[data-tunnel="{tunnel}"]')
        self.assertNotIn(" 0 B", " " + row.find_elements(By.TAG_NAME, "td")[3].text)
        self.screenshot(driver, "overview")

        # Nothing the page did was refused by its Content-Security-Policy.
        logs = [e["message"] for e in driver.get_log("browser")]
        self.assertEqual([m for m in logs if "Content Security Policy" in m or "Uncaught" in m], [])
        self.assertNoTracebacks(host, client)
