"""
Tests for the inspector's control API (L{beam.tunnel.inspect.resource}),
replay (L{beam.tunnel.inspect.replay}) and curl export
(L{beam.tunnel.inspect.curl}).

The API is served by a real C{twisted.web} site on a loopback port and
asked with C{twisted.web.client.Agent}; replays reach a real local
twisted.web app on 127.0.0.1; curl commands are run by bash against a
real C{http.server} on 127.0.0.1.  The long poll's bookkeeping is tested
synchronously, with a L{Clock} and C{DummyRequest}s.
"""

from __future__ import annotations

import base64
import http.server
import json
import subprocess
import threading
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from twisted.web.test.requesthelper import DummyRequest

from beam.errors import Conflict
from beam.tunnel.host import ServiceSpec
from beam.tunnel.inspect.curl import curlCommand
from beam.tunnel.inspect.replay import BadReplay, ReplayEdits, ReplayFailed, buildRequest, editsFromJSON, replay
from beam.tunnel.inspect.resource import MAX_WAITERS, RequestsResource
from beam.tunnel.inspect.store import Exchange, Message, RequestStore
from beam.tunnel.protocol import ServiceNotFound

reactor: Any = _reactor


class FakeTunnels:
    """
    The part of a TunnelHost the inspector API uses: C{reactor} and
    C{lookup}.
    """

    def __init__(self, reactor: Any, services: dict[str, int] | None = None) -> None:
        self.reactor = reactor
        self.services = {name: ServiceSpec.forPort(port, name=name) for name, port in (services or {}).items()}

    def lookup(self, name: str) -> ServiceSpec:
        try:
            return self.services[name]
        except KeyError:
            raise ServiceNotFound(f"no service named {name!r}") from None


class FakeService:
    def __init__(self, store: RequestStore, tunnels: FakeTunnels) -> None:
        self.store = store
        self.tunnels = tunnels


def capture(store: RequestStore, request: bytes, response: bytes | None, tunnel: str = "app") -> Exchange:
    """
    Feed one exchange through an observer as a tunnel would; the exchange.
    """
    observer = store.observer(tunnel, "12D3KooWpeer")
    got: list[Exchange] = []
    observer.onExchange = got.append
    observer.fromRemote(request)
    if response is not None:
        observer.fromLocal(response)
    return got[0]


def response(status: str = "200 OK", body: bytes = b"hi", ctype: str = "text/plain") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


# -- the local app a replay reaches -------------------------------------------


class RecordingApp(Resource):
    """
    Answers every request with C{{"seen": N}} JSON and keeps what it got.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[dict[str, Any]] = []

    def render(self, request: Any) -> bytes:
        self.seen.append({
            "method": request.method.decode(),
            "uri": request.uri.decode(),
            "headers": {k.decode().lower(): [v.decode() for v in vs]
                        for k, vs in request.requestHeaders.getAllRawHeaders()},
            "body": request.content.read(),
        })
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"seen": len(self.seen)}).encode()


class APITests(TestCase):
    """
    C{/v1/requests} over a real site on a loopback port.
    """

    def setUp(self) -> None:
        self.app = RecordingApp()
        appPort = reactor.listenTCP(0, Site(self.app), interface="127.0.0.1")
        self.addCleanup(appPort.stopListening)
        self.appPort = appPort.getHost().port
        self.store = RequestStore(reactor, bodyCap=64)
        self.tunnels = FakeTunnels(reactor, {"app": self.appPort})
        self.resource = RequestsResource(FakeService(self.store, self.tunnels), reactor)
        root = Resource()
        v1 = Resource()
        root.putChild(b"v1", v1)
        v1.putChild(b"requests", self.resource)
        site = Site(root)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.base = f"http://127.0.0.1:{port.getHost().port}"
        self.agent = Agent(reactor)

    @inlineCallbacks
    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """
        One API request: C{(code, JSON answer)}.
        """
        from twisted.web.client import FileBodyProducer
        from io import BytesIO

        producer = FileBodyProducer(BytesIO(json.dumps(body).encode())) if body is not None else None
        r = yield self.agent.request(method.encode(), (self.base + path).encode(), Headers(), producer)
        data = yield readBody(r)
        return r.code, json.loads(data)

    def threeExchanges(self) -> list[Exchange]:
        return [
            capture(self.store, b"GET /a?x=1 HTTP/1.1\r\nHost: example.test\r\n\r\n", response()),
            capture(self.store, b"POST /b HTTP/1.1\r\nHost: example.test\r\nContent-Length: 3\r\n\r\nabc",
                    response("404 Not Found")),
            capture(self.store, b"GET /c HTTP/1.1\r\nHost: example.test\r\n\r\n", None, tunnel="other"),
        ]

    @inlineCallbacks
    def test_listAndFilter(self) -> Any:
        """
        C{GET /v1/requests} lists the summaries with the inspector's status;
        method, status (exact, class, pending), path, tunnel, after and limit
        filter; a malformed number is a 400.
        """
        self.threeExchanges()
        code, r = yield self.call("GET", "/v1/requests")
        self.assertEqual(code, 200)
        self.assertEqual([s["id"] for s in r["requests"]], [1, 2, 3])
        self.assertEqual(r["status"]["kept"], 3)
        self.assertEqual(r["requests"][0]["path"], "/a?x=1")
        for query, ids in [("method=post", [2]), ("status=4xx", [2]), ("status=200", [1]),
                           ("status=pending", [3]), ("path=/c", [3]), ("tunnel=other", [3]),
                           ("after=1", [2, 3]), ("limit=1", [3]), ("after=1&limit=1", [3])]:
            code, r = yield self.call("GET", f"/v1/requests?{query}")
            self.assertEqual((code, [s["id"] for s in r["requests"]]), (200, ids), query)
        for bad in ("limit=x", "limit=0", "wait=31", "after=-1"):
            code, r = yield self.call("GET", f"/v1/requests?{bad}")
            self.assertEqual(code, 400, bad)
            self.assertIn("error", r)

    @inlineCallbacks
    def test_detailCurlAndMissing(self) -> Any:
        """
        C{GET /v1/requests/ID} is the detail, C{/curl} the curl command; an
        unknown or malformed id is a 404 with a JSON error.
        """
        self.threeExchanges()
        code, r = yield self.call("GET", "/v1/requests/2")
        self.assertEqual(code, 200)
        self.assertEqual((r["method"], r["status"], r["request"]["text"]), ("POST", 404, "abc"))
        self.assertEqual(r["response"]["text"], "hi")
        code, r = yield self.call("GET", "/v1/requests/2/curl")
        self.assertEqual(code, 200)
        self.assertTrue(r["curl"].startswith("curl -X POST http://example.test/b"), r)
        for path in ("/v1/requests/99", "/v1/requests/abc", "/v1/requests/99/curl", "/v1/requests/0"):
            code, r = yield self.call("GET", path)
            self.assertEqual(code, 404, path)
            self.assertIn("no captured request", r["error"])

    @inlineCallbacks
    def test_delete(self) -> Any:
        """
        C{DELETE /v1/requests} forgets every exchange.
        """
        self.threeExchanges()
        code, r = yield self.call("DELETE", "/v1/requests")
        self.assertEqual((code, r["cleared"], r["status"]["kept"]), (200, 3, 0))
        code, r = yield self.call("GET", "/v1/requests")
        self.assertEqual(r["requests"], [])

    @inlineCallbacks
    def test_replayAsIs(self) -> Any:
        """
        A replay sends the captured request to the tunnel's local service
        (same method, target, headers and body) and answers 201 with the new
        exchange: source "replay", replay_of the original, the app's
        response parsed like any other.
        """
        original = capture(self.store, b"POST /api/users?x=1 HTTP/1.1\r\nHost: example.test\r\n"
                                       b"Content-Type: application/json\r\nX-Thing: a b\r\n"
                                       b"Transfer-Encoding: chunked\r\n\r\n7\r\n{\"a\":1}\r\n0\r\n\r\n",
                           response("201 Created"))
        code, r = yield self.call("POST", f"/v1/requests/{original.id}/replay")
        self.assertEqual(code, 201, r)
        self.assertEqual((r["source"], r["replay_of"], r["status"], r["state"]),
                         ("replay", original.id, 200, "complete"))
        self.assertEqual(json.loads(r["response"]["text"]), {"seen": 1})
        [seen] = self.app.seen
        self.assertEqual((seen["method"], seen["uri"], seen["body"]), ("POST", "/api/users?x=1", b'{"a":1}'))
        self.assertEqual(seen["headers"]["host"], ["example.test"])
        self.assertEqual(seen["headers"]["x-thing"], ["a b"])
        # The de-chunked body goes with a length instead.
        self.assertEqual(seen["headers"]["content-length"], ["7"])
        self.assertNotIn("transfer-encoding", seen["headers"])
        code, listing = yield self.call("GET", "/v1/requests")
        self.assertEqual([s["source"] for s in listing["requests"]], ["tunnel", "replay"])

    @inlineCallbacks
    def test_replayEdited(self) -> Any:
        """
        An edited replay sends the new method, target, headers and body,
        with the Content-Length recomputed.
        """
        original = capture(self.store, b"POST /old HTTP/1.1\r\nHost: example.test\r\nContent-Length: 3\r\n\r\nabc",
                           response())
        edits = {"method": "PUT", "path": "/new?y=2",
                 "headers": [["Host", "edited.test"], ["Content-Length", "3"], ["X-New", "1"]],
                 "body": "a longer body ✓"}
        code, r = yield self.call("POST", f"/v1/requests/{original.id}/replay", edits)
        self.assertEqual(code, 201, r)
        [seen] = self.app.seen
        self.assertEqual((seen["method"], seen["uri"]), ("PUT", "/new?y=2"))
        self.assertEqual(seen["body"], "a longer body ✓".encode())
        self.assertEqual(seen["headers"]["content-length"], [str(len("a longer body ✓".encode()))])
        self.assertEqual((seen["headers"]["host"], seen["headers"]["x-new"]), (["edited.test"], ["1"]))
        self.assertEqual((r["method"], r["path"]), ("PUT", "/new?y=2"))
        code, r = yield self.call("POST", f"/v1/requests/{original.id}/replay",
                                  {"body_base64": base64.b64encode(b"\x00\x01").decode()})
        self.assertEqual(code, 201)
        self.assertEqual(self.app.seen[-1]["body"], b"\x00\x01")
        code, r = yield self.call("POST", f"/v1/requests/{original.id}/replay", {"method": "GE T"})
        self.assertEqual(code, 400)
        code, r = yield self.call("POST", f"/v1/requests/{original.id}/replay", {"nope": 1})
        self.assertEqual(code, 400)

    @inlineCallbacks
    def test_replayTruncated(self) -> Any:
        """
        A request whose body was cut at the capture cap cannot be replayed
        as is (409, saying why); with a body given it can.
        """
        body = b"x" * 100  # bodyCap is 64
        original = capture(self.store, b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\n" + body,
                           response())
        self.assertTrue(original.request.truncated)
        code, r = yield self.call("POST", f"/v1/requests/{original.id}/replay")
        self.assertEqual(code, 409)
        self.assertIn("cut at the capture cap", r["error"])
        self.assertEqual(self.app.seen, [])
        code, r = yield self.call("POST", f"/v1/requests/{original.id}/replay", {"body": "short"})
        self.assertEqual(code, 201)
        self.assertEqual(self.app.seen[0]["body"], b"short")

    @inlineCallbacks
    def test_replayUnreachable(self) -> Any:
        """
        A tunnel whose service is down, or that no longer exists, answers a
        400 that says so.
        """
        closed = reactor.listenTCP(0, Site(Resource()), interface="127.0.0.1")
        deadPort = closed.getHost().port
        yield closed.stopListening()
        self.tunnels.services["dead"] = ServiceSpec.forPort(deadPort, name="dead")
        ex = capture(self.store, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", response(), tunnel="dead")
        code, r = yield self.call("POST", f"/v1/requests/{ex.id}/replay")
        self.assertEqual(code, 400)
        self.assertIn("could not reach the local service", r["error"])
        ex = capture(self.store, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", response(), tunnel="gone")
        code, r = yield self.call("POST", f"/v1/requests/{ex.id}/replay")
        self.assertEqual(code, 400)
        self.assertIn("no service named", r["error"])

    @inlineCallbacks
    def test_replayTimeout(self) -> Any:
        """
        A service that never answers: the replay fails after its timeout,
        the new exchange kept as aborted with the reason, the connection
        closed.
        """
        from twisted.internet.protocol import Factory, Protocol

        connections: list[Protocol] = []

        class Silent(Protocol):
            def connectionMade(self) -> None:
                connections.append(self)

        port = reactor.listenTCP(0, Factory.forProtocol(Silent), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.tunnels.services["silent"] = ServiceSpec.forPort(port.getHost().port, name="silent")
        ex = capture(self.store, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", response(), tunnel="silent")
        d = replay(reactor, self.store, self.tunnels, ex, timeout=0.3)
        failure = yield self.assertFailure(d, ReplayFailed)
        self.assertIn("no complete response", str(failure))
        [kept] = self.store.list(after=ex.id)
        self.assertEqual((kept.state, kept.source, kept.replayOf), ("aborted", "replay", ex.id))
        self.assertIn("no complete response", kept.error or "")
        self.assertEqual(len(connections), 1)

    @inlineCallbacks
    def test_longPollOverHTTP(self) -> Any:
        """
        C{wait} holds the answer until an exchange arrives, then answers with
        it; with nothing arriving it answers, empty, after C{wait}.
        """
        d = self.call("GET", "/v1/requests?after=0&wait=20")
        answered: list[Any] = []

        def got(result: Any) -> Any:
            answered.append(result)
            return result

        d.addCallback(got)
        yield deferLater(0.1)
        self.assertEqual(answered, [])
        capture(self.store, b"GET /late HTTP/1.1\r\nHost: h\r\n\r\n", response())
        code, r = yield d
        self.assertEqual([s["path"] for s in r["requests"]], ["/late"])
        code, r = yield self.call("GET", "/v1/requests?after=1&wait=0.2")
        self.assertEqual((code, r["requests"]), (200, []))
        self.assertEqual(self.resource.waiters, set())


def deferLater(seconds: float) -> Deferred[None]:
    from twisted.internet.task import deferLater as later

    return later(reactor, seconds, lambda: None)


class LongPollTests(SynchronousTestCase):
    """
    The long poll's bookkeeping, with a L{Clock}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.store = RequestStore(self.clock)
        self.resource = RequestsResource(FakeService(self.store, FakeTunnels(self.clock)), self.clock)

    def get(self, **args: str) -> Any:
        request: Any = DummyRequest([b""])
        request.path = b"/v1/requests"
        request.method = b"GET"
        request.args = {k.encode(): [v.encode()] for k, v in args.items()}
        self.assertEqual(self.resource.render(request), NOT_DONE_YET)
        return request

    def answer(self, request: Any) -> dict[str, Any]:
        self.assertEqual(request.finished, 1)
        return json.loads(b"".join(request.written))

    def test_wakesOnMatchOnly(self) -> None:
        """
        A held poll ignores exchanges that do not match its filters and
        answers on the next reactor turn after one that does.
        """
        request = self.get(wait="10", method="POST")
        capture(self.store, b"GET /no HTTP/1.1\r\n\r\n", None)
        self.clock.advance(0)
        self.assertEqual(request.finished, 0)
        capture(self.store, b"POST /yes HTTP/1.1\r\nContent-Length: 0\r\n\r\n", None)
        self.assertEqual(request.finished, 0)  # not from inside the observer
        self.clock.advance(0)
        self.assertEqual([s["path"] for s in self.answer(request)["requests"]], ["/yes"])
        self.assertEqual((self.resource.waiters, self.store._subscribers), (set(), []))

    def test_timesOut(self) -> None:
        """
        With nothing arriving the poll answers, empty, after C{wait} seconds.
        """
        request = self.get(wait="5")
        self.clock.advance(4.9)
        self.assertEqual(request.finished, 0)
        self.clock.advance(0.2)
        self.assertEqual(self.answer(request)["requests"], [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_bounded(self) -> None:
        """
        At most L{MAX_WAITERS} polls are held; one more is answered at once;
        a client that goes away frees its place (and its subscription).
        """
        held = [self.get(wait="30") for _ in range(MAX_WAITERS)]
        self.assertTrue(all(r.finished == 0 for r in held))
        extra = self.get(wait="30")
        self.assertEqual(self.answer(extra)["requests"], [])
        held[0].processingFailed(Exception("client went away"))
        self.assertEqual(len(self.resource.waiters), MAX_WAITERS - 1)
        self.assertEqual(len(self.store._subscribers), MAX_WAITERS - 1)
        again = self.get(wait="30")
        self.assertEqual(again.finished, 0)
        self.clock.advance(30)
        self.assertEqual((self.resource.waiters, self.store._subscribers), (set(), []))


# -- replay requests and edits ------------------------------------------------


class BuildRequestTests(SynchronousTestCase):
    """
    L{buildRequest} and L{editsFromJSON}.
    """

    def exchange(self, raw: bytes, bodyCap: int = 1024) -> Exchange:
        return capture(RequestStore(Clock(), bodyCap=bodyCap), raw, None)

    def test_asIs(self) -> None:
        """
        The captured request, byte for byte when it was framed by length.
        """
        raw = b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nX-A: b\r\n\r\nhi"
        self.assertEqual(buildRequest(self.exchange(raw)), raw)

    def test_incompleteBody(self) -> None:
        """
        A body still arriving cannot be replayed as is.
        """
        ex = self.exchange(b"POST /x HTTP/1.1\r\nContent-Length: 10\r\n\r\nhi")
        self.assertRaises(Conflict, buildRequest, ex)
        self.assertTrue(buildRequest(ex, ReplayEdits(body=b"ok")).endswith(b"Content-Length: 2\r\n\r\nok"))

    @settings(max_examples=200, deadline=None)
    @given(st.dictionaries(
        st.sampled_from(["method", "path", "headers", "body", "body_base64", "other"]),
        st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                     lambda inner: st.lists(inner, max_size=3), max_leaves=8),
    ))
    def test_fuzzEdits(self, body: dict[str, Any]) -> None:
        """
        Any JSON object is either refused with L{BadReplay} or makes a
        request whose head has exactly one line per header: no edit can
        smuggle a line break into the request.
        """
        ex = self.exchange(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        try:
            edits = editsFromJSON(body)
        except BadReplay:
            return
        data = buildRequest(ex, edits)
        head = data.split(b"\r\n\r\n", 1)[0]
        headers = edits.headers if edits.headers is not None else (("Host", "h"),)
        framing = 1 if edits.body or (edits.method or "GET").upper() in ("POST", "PUT", "PATCH") else 0
        kept = [h for h in headers if h[0].lower() not in ("content-length", "transfer-encoding")]
        self.assertEqual(len(head.split(b"\r\n")), 1 + len(kept) + framing)
        self.assertNotIn(b"\n", head.replace(b"\r\n", b""))


# -- curl ---------------------------------------------------------------------


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: list[dict[str, Any]] = []

    def handle_one(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.seen.append({"method": self.command, "path": self.path, "headers": list(self.headers.items()),
                          "body": self.rfile.read(length)})
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = handle_one

    def do_HEAD(self) -> None:
        self.handle_one()

    def log_message(self, *args: Any) -> None:
        pass


class CurlTests(SynchronousTestCase):
    """
    L{curlCommand}: the command, run by bash, sends what was captured.
    """

    def setUp(self) -> None:
        _Recorder.seen = []
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
        thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        thread.start()
        self.addCleanup(thread.join, 10)
        self.addCleanup(self.server.server_close)
        self.addCleanup(self.server.shutdown)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"

    def run_(self, raw: bytes) -> tuple[str, dict[str, Any]]:
        """
        Capture C{raw} (with Host pointing at the recorder), export it and
        run the command; the command and what the server received.
        """
        ex = capture(RequestStore(Clock()), raw.replace(b"HOSTPORT", self.host.encode()), None)
        command = curlCommand(ex)
        result = subprocess.run(["bash", "-c", command + " --silent --show-error --noproxy '*' -o /dev/null"],
                                capture_output=True, timeout=30, check=False)
        self.assertEqual(result.returncode, 0, (command, result.stderr))
        self.assertEqual(len(_Recorder.seen), 1, command)
        return command, _Recorder.seen.pop()

    def test_postWithNastyText(self) -> None:
        """
        Quotes, dollars, backticks, newlines and a leading @ in the body and
        headers reach the server verbatim; the type is kept; curl computes
        the length of the de-chunked body.
        """
        body = "@not-a-file 'single' \"double\" $HOME `id` \\ \n second line ✓"
        raw = (b"POST /api/users?x=1&y=$z HTTP/1.1\r\nHost: HOSTPORT\r\nContent-Type: application/json\r\n"
               b"X-Odd: it's $(rm -rf /) \"q\"\r\nTransfer-Encoding: chunked\r\n\r\n"
               + f"{len(body.encode()):x}\r\n".encode() + body.encode() + b"\r\n0\r\n\r\n")
        command, seen = self.run_(raw)
        self.assertEqual((seen["method"], seen["path"]), ("POST", "/api/users?x=1&y=$z"))
        self.assertEqual(seen["body"], body.encode())
        headers = dict(seen["headers"])
        self.assertEqual(headers["X-Odd"], "it's $(rm -rf /) \"q\"")
        self.assertEqual(headers["Content-Type"], "application/json")
        self.assertEqual(headers["Host"], self.host)
        self.assertNotIn("Transfer-Encoding", headers)

    def test_getWithBracketsAndNoType(self) -> None:
        """
        A target with brackets (curl's globbing) and an empty header value
        are sent as captured; a body without a type gets none from curl.
        """
        command, seen = self.run_(b"GET /q?a[0]={1} HTTP/1.1\r\nHost: HOSTPORT\r\nX-Empty: \r\n\r\n")
        self.assertEqual((seen["method"], seen["path"]), ("GET", "/q?a[0]={1}"))
        self.assertEqual(dict(seen["headers"])["X-Empty"], "")
        command, seen = self.run_(b"PUT /p HTTP/1.1\r\nHost: HOSTPORT\r\nContent-Length: 5\r\n\r\nk=v&w")
        self.assertEqual((seen["method"], seen["body"]), ("PUT", b"k=v&w"))
        self.assertNotIn("Content-Type", dict(seen["headers"]))

    def test_binaryAndTruncated(self) -> None:
        """
        A binary body, or one cut at the cap, is left out with a comment
        saying so.
        """
        ex = capture(RequestStore(Clock()), b"POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n"
                                            b"Content-Type: image/png\r\n\r\n\x89P\x00", None)
        command = curlCommand(ex)
        self.assertTrue(command.startswith("# the request body is binary (3 bytes, image/png)"), command)
        self.assertNotIn("--data", command)
        ex = capture(RequestStore(Clock(), bodyCap=2), b"POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc",
                     None)
        self.assertIn("was cut at the capture cap", curlCommand(ex))

    def test_fallbackHost(self) -> None:
        """
        Without a Host header (HTTP/1.0) the URL names the fallback: the
        tunnel's local service.
        """
        ex = capture(RequestStore(Clock()), b"GET /old HTTP/1.0\r\n\r\n", None)
        self.assertEqual(curlCommand(ex, "127.0.0.1:3000"), "curl --http1.0 http://127.0.0.1:3000/old")


# -- terminal text ------------------------------------------------------------


class _TTY:
    """
    A text stream that says it is a terminal.
    """

    def __init__(self) -> None:
        self.parts: list[str] = []

    def write(self, text: str) -> int:
        self.parts.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return True


class ConsoleTests(SynchronousTestCase):
    """
    L{beam.console.requests}: the lines C{beam requests} prints.
    """

    def summary(self, raw: bytes, resp: bytes | None = None) -> dict[str, Any]:
        store = RequestStore(Clock())
        return capture(store, raw, resp).summaryJSON()

    def test_line(self) -> None:
        """
        One line per exchange: id, method, target, status, duration, tunnel,
        and the exchange a replay replays; pending and aborted say so.
        """
        from beam.console.requests import summaryLine

        s = self.summary(b"GET /api/users?x=1 HTTP/1.1\r\n\r\n", response())
        self.assertEqual(summaryLine(s), "#1  GET  /api/users?x=1  200 OK  0 ms  app")
        self.assertEqual(summaryLine({**s, "replay_of": 7}), "#1  GET  /api/users?x=1  200 OK  0 ms  app  (↻ #7)")
        pending = self.summary(b"GET /p HTTP/1.1\r\n\r\n")
        self.assertEqual(summaryLine(pending), "#1  GET  /p  pending  app")
        self.assertIn("aborted (boom)", summaryLine({**pending, "state": "aborted", "error": "boom"}))

    def test_controlCharacters(self) -> None:
        """
        Escape sequences a peer put in a target or a header never reach the
        terminal as such.
        """
        from beam.console.requests import detailText, summaryLine

        # The observer refuses such a request line; an exchange made by hand
        # (or a future parser) must still print safely.
        ex = Exchange(tunnel="a\x1b[1m", peer="p\x9b", method="GET", target="/\x1b]0;owned\x07", id=1,
                      request=Message(headers=[("X-A", "\x1b[2J")], complete=True),
                      response=Message(headers=[("Content-Type", "text/plain")], body=b"\x1b[31mred",
                                       size=8, complete=True),
                      status=200, reason="OK\x1b[0m", state="complete", error="e\x1b")
        for text in (summaryLine(ex.summaryJSON()), detailText(ex.detailJSON())):
            self.assertNotIn("\x1b", text)
            self.assertNotIn("\x07", text)

    def test_colourOnlyOnTerminal(self) -> None:
        """
        A terminal gets the status coloured (green for 2xx); with NO_COLOR
        or in a pipe, the same text without escapes; --json one object per
        line.
        """
        import io
        import os
        from unittest import mock

        from beam.console.requests import RequestPrinter, summaryLine

        s = self.summary(b"GET / HTTP/1.1\r\n\r\n", response())
        with mock.patch.dict(os.environ, {"NO_COLOR": "", "TERM": "xterm-256color"}):
            tty = _TTY()
            RequestPrinter(tty, False).summary(s)  # type: ignore[arg-type]
        self.assertIn("\x1b[32m200 OK", "".join(tty.parts))
        with mock.patch.dict(os.environ, {"NO_COLOR": "1"}):
            tty = _TTY()
            RequestPrinter(tty, False).summary(s)  # type: ignore[arg-type]
        self.assertEqual("".join(tty.parts), summaryLine(s) + "\n")
        pipe = io.StringIO()
        RequestPrinter(pipe, True).summary(s)
        self.assertEqual(json.loads(pipe.getvalue()), s)
