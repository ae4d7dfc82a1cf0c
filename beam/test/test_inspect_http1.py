"""
Tests for L{beam.tunnel.inspect.http1}: the HTTP/1.x observer's framing,
its bounds, and that no input makes it raise or hold more than its caps.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, example, given, settings, strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from beam.tunnel.inspect import http1
from beam.tunnel.inspect.http1 import MAX_HEAD, MAX_LINE, HTTPObserver
from beam.tunnel.inspect.store import Exchange, RequestStore


class _FakeSplice:
    """
    Just the attribute the observer clears when it detaches.
    """

    observer: Any = None


def _make(bodyCap: int = 64 << 10) -> tuple[RequestStore, HTTPObserver, _FakeSplice, Clock]:
    clock = Clock()
    store = RequestStore(clock, bodyCap=bodyCap, wallClock=lambda: 1000.0)
    observer = store.observer("web", "peer1")
    splice = _FakeSplice()
    observer.attach(splice)
    return store, observer, splice, clock


def _split(data: bytes, at: int) -> list[bytes]:
    return [data[:at], data[at:]] if 0 < at < len(data) else [data]


def _feed(observer: HTTPObserver, request: bytes, response: bytes, *, chunk: int = 0) -> None:
    """
    Requests first, then responses, in pieces of C{chunk} bytes (0: whole).
    """
    for data, fn in ((request, observer.fromRemote), (response, observer.fromLocal)):
        if chunk:
            for i in range(0, len(data), chunk):
                fn(data[i:i + chunk])
        elif data:
            fn(data)


GET = b"GET /a?x=1 HTTP/1.1\r\nHost: example\r\n\r\n"
OK5 = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
POST_CHUNKED = (
    b"POST /json HTTP/1.1\r\nHost: example\r\nContent-Type: application/json\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4;ext=1\r\n\": 1\r\n1\r\n}\r\n0\r\nX-Trailer: t\r\n\r\n"
)
CHUNKED_REPLY = (
    b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
)


class FramingTests(SynchronousTestCase):
    """
    Each way RFC 9112 frames a message is followed.
    """

    def assertOne(self, store: RequestStore, **expected: Any) -> Exchange:
        (ex,) = store.list()
        for name, value in expected.items():
            self.assertEqual(getattr(ex, name), value, name)
        return ex

    def test_contentLength(self) -> None:
        """
        A GET answered with a Content-Length body is one complete exchange
        with its method, target, status, headers, body and duration.
        """
        store, observer, splice, clock = _make()
        observer.fromRemote(GET)
        clock.advance(0.25)
        observer.fromLocal(OK5)
        ex = self.assertOne(store, method="GET", target="/a?x=1", status=200, reason="OK", state="complete")
        self.assertEqual(ex.duration, 0.25)
        self.assertEqual(ex.started, 1000.0)
        assert ex.response is not None
        self.assertEqual(ex.response.body, b"hello")
        self.assertEqual(ex.response.size, 5)
        self.assertTrue(ex.response.complete)
        self.assertEqual(ex.request.headers, [("Host", "example")])
        self.assertIs(splice.observer, observer)

    def test_chunkedBothWays(self) -> None:
        """
        Chunked request and response bodies are de-chunked (extensions and
        trailers skipped).
        """
        store, observer, _, _ = _make()
        _feed(observer, POST_CHUNKED, CHUNKED_REPLY)
        ex = self.assertOne(store, status=201, state="complete")
        self.assertEqual(ex.request.body, b'{"a": 1}')
        self.assertEqual(ex.request.size, 8)
        assert ex.response is not None
        self.assertEqual(ex.response.body, b"hello world")

    def test_everyByteBoundary(self) -> None:
        """
        Whatever byte the stream is split at, in either direction, the
        result is the same.
        """
        requests = GET + POST_CHUNKED
        responses = OK5 + CHUNKED_REPLY
        for data, other, first in ((requests, responses, True), (responses, requests, False)):
            for at in range(len(data) + 1):
                store, observer, _, _ = _make()
                if first:
                    for piece in _split(data, at):
                        observer.fromRemote(piece)
                    observer.fromLocal(other)
                else:
                    observer.fromRemote(other)
                    for piece in _split(data, at):
                        observer.fromLocal(piece)
                one, two = store.list()
                self.assertEqual((one.status, two.status), (200, 201), at)
                assert one.response is not None and two.response is not None
                self.assertEqual(two.request.body, b'{"a": 1}', at)
                self.assertEqual((one.response.body, two.response.body), (b"hello", b"hello world"), at)
                self.assertEqual((one.state, two.state), ("complete", "complete"), at)

    def test_byteByByte(self) -> None:
        """
        One byte at a time works as well.
        """
        store, observer, _, _ = _make()
        _feed(observer, GET + POST_CHUNKED, OK5 + CHUNKED_REPLY, chunk=1)
        self.assertEqual([e.status for e in store.list()], [200, 201])

    def test_pipelining(self) -> None:
        """
        Requests sent before any response queue up; responses pair with
        them in order; status and state follow as they arrive.
        """
        store, observer, _, _ = _make()
        observer.fromRemote(GET * 3)
        self.assertEqual([e.status for e in store.list()], [None, None, None])
        self.assertEqual([e.id for e in store.list(status="pending")], [1, 2, 3])
        observer.fromLocal(OK5 + b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual([e.status for e in store.list()], [200, 404, None])
        self.assertEqual([e.state for e in store.list()], ["complete", "complete", "open"])
        observer.fromLocal(OK5)
        self.assertEqual([e.status for e in store.list()], [200, 404, 200])

    def test_head(self) -> None:
        """
        The response to HEAD has no body, whatever its Content-Length says.
        """
        store, observer, _, _ = _make()
        observer.fromRemote(b"HEAD / HTTP/1.1\r\n\r\n" + GET)
        observer.fromLocal(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + OK5)
        self.assertEqual([(e.method, e.state) for e in store.list()], [("HEAD", "complete"), ("GET", "complete")])
        second = store.list()[1].response
        assert second is not None
        self.assertEqual(second.body, b"hello")

    def test_noBodyStatuses(self) -> None:
        """
        204 and 304 have no body.
        """
        store, observer, _, _ = _make()
        observer.fromRemote(GET * 3)
        observer.fromLocal(b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n" + OK5)
        self.assertEqual([(e.status, e.state) for e in store.list()], [(204, "complete"), (304, "complete"), (200, "complete")])

    def test_continue(self) -> None:
        """
        A 100 Continue is skipped: the final response ends the exchange.
        """
        store, observer, _, _ = _make()
        observer.fromRemote(b"PUT /f HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
        observer.fromLocal(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.assertEqual(store.get(1).state, "open")
        self.assertIsNone(store.get(1).status)
        observer.fromRemote(b"abc")
        observer.fromLocal(b"HTTP/1.1 103 Early Hints\r\nLink: </s>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        ex = store.get(1)
        self.assertEqual((ex.status, ex.state, ex.request.body), (200, "complete", b"abc"))

    def test_untilClose(self) -> None:
        """
        A response without length runs until the connection closes.
        """
        store, observer, splice, _ = _make()
        observer.fromRemote(b"GET / HTTP/1.0\r\n\r\n")
        observer.fromLocal(b"HTTP/1.0 200 OK\r\n\r\nsome ")
        observer.fromLocal(b"bytes")
        self.assertEqual(store.get(1).state, "open")
        observer.closed()
        ex = store.get(1)
        assert ex.response is not None
        self.assertEqual((ex.state, ex.response.body, ex.response.complete), ("complete", b"some bytes", True))
        self.assertIsNone(splice.observer)

    def test_websocket(self) -> None:
        """
        A 101 to a WebSocket upgrade completes the exchange as an upgrade
        and inspection of the connection stops (frames are not parsed).
        """
        store, observer, splice, _ = _make()
        observer.fromRemote(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        observer.fromLocal(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x05hello"
        )
        ex = store.get(1)
        self.assertEqual((ex.status, ex.state, ex.upgrade), (101, "complete", "websocket"))
        self.assertIsNone(splice.observer)
        self.assertEqual((store.gaveUp, store.notHTTP), (0, 0))

    def test_upgradeRefused(self) -> None:
        """
        An upgrade answered without switching goes on as HTTP, including
        bytes the client sent while waiting.
        """
        store, observer, _, _ = _make()
        observer.fromRemote(b"GET /ws HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n" + GET)
        observer.fromLocal(b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\n\r\n" + OK5)
        self.assertEqual([(e.status, e.state) for e in store.list()], [(426, "complete"), (200, "complete")])

    def test_connect(self) -> None:
        """
        CONNECT answered 2xx becomes a tunnel: upgrade "connect", stop.
        """
        store, observer, splice, _ = _make()
        observer.fromRemote(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n\x16\x03\x01")
        observer.fromLocal(b"HTTP/1.1 200 Connection established\r\n\r\n\x16\x03\x03")
        ex = store.get(1)
        self.assertEqual((ex.state, ex.upgrade, ex.target), ("complete", "connect", "example.com:443"))
        self.assertIsNone(splice.observer)

    def test_connectRefused(self) -> None:
        """
        CONNECT answered 407 is an ordinary exchange; HTTP goes on.
        """
        store, observer, _, _ = _make()
        observer.fromRemote(b"CONNECT h:1 HTTP/1.1\r\n\r\n")
        observer.fromLocal(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 2\r\n\r\nno")
        observer.fromRemote(GET)
        observer.fromLocal(OK5)
        self.assertEqual([e.status for e in store.list()], [407, 200])

    def test_obsFold(self) -> None:
        """
        An obsolete folded header line continues the previous value.
        """
        store, observer, _, _ = _make()
        observer.fromRemote(b"GET / HTTP/1.1\r\nX-Long: one\r\n  two\r\n\r\n")
        self.assertEqual(store.get(1).request.headers, [("X-Long", "one two")])

    def test_leadingEmptyLines(self) -> None:
        """
        Empty lines before a request line are ignored (RFC 9112 2.2).
        """
        store, observer, _, _ = _make()
        observer.fromRemote(b"\r\n" + GET)
        self.assertEqual(store.get(1).method, "GET")


class BadInputTests(SynchronousTestCase):
    """
    Malformed or hostile input stops inspection of the connection, with
    the reason kept, and never raises.
    """

    def test_garbage(self) -> None:
        """
        Binary first bytes (a TLS ClientHello) are not HTTP: the observer
        detaches at once and counts it.
        """
        store, observer, splice, _ = _make()
        observer.fromRemote(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        self.assertIsNone(splice.observer)
        self.assertEqual((store.notHTTP, store.gaveUp, len(store)), (1, 0, 0))

    def test_notHTTPLine(self) -> None:
        """
        A whole line that is not a request line (an SSH banner) is not HTTP.
        """
        store, observer, splice, _ = _make()
        observer.fromRemote(b"SSH-2.0-OpenSSH_9.2p1 Debian\r\n")
        self.assertEqual(store.notHTTP, 1)
        self.assertIsNone(splice.observer)

    def test_serverSpeaksFirst(self) -> None:
        """
        A service that speaks first (SMTP, SSH) is not HTTP.
        """
        store, observer, splice, _ = _make()
        observer.fromLocal(b"220 mail.example ESMTP\r\n")
        self.assertEqual(store.notHTTP, 1)
        self.assertIsNone(splice.observer)

    def test_longMethod(self) -> None:
        """
        A first "word" too long to be a method is judged without waiting
        for the line to end.
        """
        store, observer, _, _ = _make()
        observer.fromRemote(b"A" * 100)
        self.assertEqual(store.notHTTP, 1)

    def test_truncatedHead(self) -> None:
        """
        A connection closing inside a request head captures nothing; one
        closing inside the response head aborts the exchange.
        """
        store, observer, splice, _ = _make()
        observer.fromRemote(b"GET / HTTP/1.1\r\nHost: x\r\n")
        observer.closed()
        self.assertEqual(len(store), 0)
        store, observer, splice, _ = _make()
        observer.fromRemote(GET)
        observer.fromLocal(b"HTTP/1.1 200 OK\r\nContent-Le")
        observer.closed()
        ex = store.get(1)
        self.assertEqual(ex.state, "aborted")
        self.assertIn("closed", ex.error or "")
        self.assertIsNone(splice.observer)

    def test_hugeHeaderLine(self) -> None:
        """
        A 1 MiB header line makes the observer give up after at most
        MAX_LINE buffered bytes; the exchange already seen is aborted with
        the reason.
        """
        store, observer, splice, _ = _make()
        observer.fromRemote(GET)
        observer.fromRemote(b"GET /b HTTP/1.1\r\nX-Big: ")
        block = b"a" * 65536
        for _ in range(16):
            observer.fromRemote(block)
            self.assertLessEqual(len(observer.request.line), MAX_LINE)
        self.assertIsNone(splice.observer)
        self.assertEqual(store.gaveUp, 1)
        ex = store.get(1)
        self.assertEqual(ex.state, "aborted")
        self.assertIn("line longer", ex.error or "")

    def test_hugeHead(self) -> None:
        """
        Many short header lines beyond MAX_HEAD bytes (or MAX_FIELDS
        fields) stop inspection.
        """
        store, observer, _, _ = _make()
        observer.fromRemote(b"GET / HTTP/1.1\r\n" + b"X: " + b"a" * 8000 + b"\r\n" * 1)
        for _ in range(MAX_HEAD // 8000 + 1):
            observer.fromRemote(b"X: " + b"a" * 8000 + b"\r\n")
        self.assertEqual((store.notHTTP, store.gaveUp, len(store)), (0, 1, 0))  # HTTP, but no head parsed
        self.assertTrue(observer.stopped)
        store, observer, _, _ = _make()
        observer.fromRemote(GET)
        observer.fromRemote(b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 101 + b"\r\n")
        self.assertEqual(store.gaveUp, 1)

    def test_lyingChunkSize(self) -> None:
        """
        Chunk data longer than its size line, or a size that is not hex,
        aborts the exchange.
        """
        for bad in (b"3\r\nhello\r\n0\r\n\r\n", b"zz\r\nhello\r\n", b"-1\r\n", b"ffffffffffffffffff\r\n"):
            store, observer, splice, _ = _make()
            observer.fromRemote(GET)
            observer.fromLocal(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + bad)
            ex = store.get(1)
            self.assertEqual(ex.state, "aborted", bad)
            self.assertIn("chunk", ex.error or "", bad)
            self.assertIsNone(splice.observer)
            self.assertEqual(store.gaveUp, 1)

    def test_shortContentLength(self) -> None:
        """
        A body shorter than its Content-Length leaves the exchange open
        until the connection closes, then aborted with what was captured.
        """
        store, observer, _, _ = _make()
        observer.fromRemote(GET)
        observer.fromLocal(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
        observer.closed()
        ex = store.get(1)
        assert ex.response is not None
        self.assertEqual((ex.state, ex.response.body, ex.response.complete), ("aborted", b"hello", False))

    def test_longContentLength(self) -> None:
        """
        A body longer than its Content-Length: the extra bytes are not a
        status line, so inspection stops (the first exchange stays
        complete).
        """
        store, observer, _, _ = _make()
        observer.fromRemote(GET + GET)
        observer.fromLocal(OK5 + b" and more\r\n")
        self.assertEqual(store.get(1).state, "complete")
        self.assertEqual(store.get(2).state, "aborted")
        self.assertEqual(store.gaveUp, 1)

    def test_badContentLength(self) -> None:
        """
        A non-numeric or conflicting Content-Length stops inspection.
        """
        for header in (b"Content-Length: x\r\n", b"Content-Length: 1\r\nContent-Length: 2\r\n", b"Content-Length: 1, 2\r\n"):
            store, observer, _, _ = _make()
            observer.fromRemote(b"POST / HTTP/1.1\r\n" + header + b"\r\n")
            self.assertEqual(store.get(1).state, "aborted", header)

    def test_responseWithoutRequest(self) -> None:
        """
        More responses than requests stops inspection.
        """
        store, observer, _, _ = _make()
        observer.fromRemote(GET)
        observer.fromLocal(OK5 + OK5)
        self.assertEqual(store.gaveUp, 1)
        self.assertEqual(store.get(1).state, "complete")

    def test_bodyCap(self) -> None:
        """
        Bodies are kept up to bodyCap bytes, counted in full, marked
        truncated (and counted once).
        """
        store, observer, _, _ = _make(bodyCap=10)
        observer.fromRemote(GET)
        observer.fromLocal(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
        for _ in range(10):
            observer.fromLocal(b"0123456789")
        ex = store.get(1)
        assert ex.response is not None
        self.assertEqual((ex.response.body, ex.response.size, ex.response.truncated), (b"0123456789", 100, True))
        self.assertEqual(store.truncated, 1)

    def test_internalError(self) -> None:
        """
        An unexpected exception inside the observer is caught: it gives
        up, detaches and counts.
        """
        store, observer, splice, _ = _make()
        observer.fromRemote(GET)

        class Broken:
            def seconds(self) -> float:
                raise RuntimeError("boom")

        store.clock = Broken()
        observer.fromLocal(OK5)
        self.assertIsNone(splice.observer)
        self.assertEqual(store.gaveUp, 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_tooManyPipelined(self) -> None:
        """
        At most MAX_PENDING requests wait for responses.
        """
        store, observer, _, _ = _make()
        observer.fromRemote(GET * 150)
        self.assertEqual(store.gaveUp, 1)
        self.assertTrue(observer.stopped)


_EXCHANGES = GET + POST_CHUNKED + b"HEAD / HTTP/1.1\r\n\r\n"
_REPLIES = OK5 + CHUNKED_REPLY + b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n"


class FuzzTests(SynchronousTestCase):
    """
    Random bytes and random splits never raise and never grow buffers past
    the caps.
    """

    def _checkBounds(self, observer: HTTPObserver) -> None:
        for half in (observer.request, observer.response):
            self.assertLessEqual(len(half.line), MAX_LINE)
            self.assertLessEqual(len(half.body), 64)
            self.assertLessEqual(sum(map(len, half.lines)), MAX_HEAD + MAX_LINE)
        self.assertLessEqual(len(observer.request.held), MAX_HEAD)

    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(st.tuples(st.booleans(), st.binary(max_size=300)), max_size=20))
    def test_randomBytes(self, pieces: list[tuple[bool, bytes]]) -> None:
        """
        Arbitrary bytes either way, after a valid start or not.
        """
        for prefix in (b"", GET):
            store, observer, _, _ = _make(bodyCap=64)
            observer.fromRemote(prefix)
            for toLocal, data in pieces:
                (observer.fromLocal if toLocal else observer.fromRemote)(data)
                self._checkBounds(observer)
            observer.closed()
            self.assertTrue(observer.stopped)

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(st.integers(min_value=0, max_value=len(_EXCHANGES)), max_size=8),
        st.lists(st.integers(min_value=0, max_value=len(_REPLIES)), max_size=8),
        st.integers(min_value=0, max_value=len(_REPLIES)),
        st.binary(max_size=3),
    )
    def test_randomSplitsAndMutations(self, reqCuts: list[int], resCuts: list[int], where: int, junk: bytes) -> None:
        """
        Valid exchanges split anywhere give the same result; with a few
        bytes inserted anywhere they still never raise.
        """
        for mutate in (False, True):
            replies = _REPLIES[:where] + junk + _REPLIES[where:] if mutate else _REPLIES
            store, observer, _, _ = _make(bodyCap=64)
            for data, cuts, fn in ((_EXCHANGES, reqCuts, observer.fromRemote), (replies, resCuts, observer.fromLocal)):
                last = 0
                for cut in sorted(set(cuts)) + [len(data)]:
                    fn(data[last:cut])
                    last = cut
                    self._checkBounds(observer)
            if not mutate or not junk:
                self.assertEqual([e.status for e in store.list()], [200, 201, 200])
            observer.closed()


def _fieldLines(draw: Any) -> bytes:
    """
    Header field lines, mostly well-formed, sometimes with what the fast
    path leaves to the line-by-line parser (bare LF or CR, whitespace
    before the colon or after the value, folding, non-ASCII bytes).
    """
    out = b""
    for _ in range(draw(st.integers(min_value=0, max_value=5))):
        name = draw(st.sampled_from([b"Host", b"X-A", b"Accept", b"x!y", b"Bad Name", b""]))
        sep = draw(st.sampled_from([b": ", b":", b":\t", b" :", b":  "]))
        value = draw(st.binary(max_size=6).map(lambda b: b.translate(_VALUE_BYTES)))
        end = draw(st.sampled_from([b"\r\n"] * 6 + [b"\n", b"\r", b" \r\n", b"\t\r\n"]))
        out += name + sep + value + end
        if draw(st.integers(min_value=0, max_value=9)) == 0:
            out += b" folded\r\n"
    return out


#: Random value bytes mapped onto a few interesting ones.
_VALUE_BYTES = bytes((b"ab ,:;\t\xe9\r\n\x00\x7f"[i % 12] for i in range(256)))


@st.composite
def _exchanges(draw: Any) -> tuple[bytes, bytes]:
    """
    One request and its answer, each head from L{_fieldLines}, with a
    Content-Length body or none.
    """
    lead = draw(st.sampled_from([b"", b"", b"\r\n", b"\n"]))
    method = draw(st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT"]))
    target = draw(st.sampled_from([b"/", b"/a?b=c", b"/caf\xe9", b"/a b"]))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0"]))
    body = draw(st.binary(max_size=20))
    request = lead + method + b" " + target + b" " + version + b"\r\n" + _fieldLines(draw)
    if body or draw(st.booleans()):
        request += b"Content-Length: %d\r\n" % len(body)
    request += b"\r\n" + body
    status = draw(st.sampled_from([b"200", b"204", b"100", b"304", b"404", b"20x"]))
    reason = draw(st.sampled_from([b" OK", b"", b" ", b" Not \xe9", b" OK\n"]))
    answer = draw(st.binary(max_size=20))
    response = b"HTTP/1.1 " + status + reason + b"\r\n" + _fieldLines(draw)
    response += b"Content-Length: %d\r\n\r\n" % len(answer) + answer
    return request, response


def _outcome(store: RequestStore, observer: HTTPObserver) -> Any:
    """
    Everything observable: each exchange's detail JSON, the counters and
    whether the observer stopped.
    """
    return [e.detailJSON() for e in store.list()], store.status(), observer.stopped


class FastPathTests(SynchronousTestCase):
    """
    A head that arrives whole takes the one-pass path; byte by byte, the
    line-by-line one.  Both must mean the same thing, down to the JSON and
    the counters.
    """

    def test_apiCallWholeAndByteByByte(self) -> None:
        """
        A small JSON POST and its answer, fed whole (the fast path: no
        line-by-line call) and byte by byte, give identical results.
        """
        request = (b"POST /api/items?x=1 HTTP/1.1\r\nHost: bench.test\r\nContent-Type: application/json\r\n"
                   b"X-Empty:\r\nX-Space:   spaced  out\r\nContent-Length: 8\r\n\r\n{\"a\": 1}")
        response = (b"HTTP/1.1 201 Created\r\nContent-Type: application/json; charset=utf-8\r\n"
                    b"Content-Length: 2\r\nConnection: keep-alive\r\n\r\n{}")
        results = []
        for chunk in (0, 1):
            store, observer, _, _ = _make()
            calls: list[bytes] = []
            for parser in (observer.request, observer.response):
                cls = type(parser)

                def lineReceived(
                    parser: Any, line: bytes, calls: list[bytes] = calls, original: Any = cls._lineReceived,
                ) -> None:
                    calls.append(line)
                    original(parser, line)

                self.patch(cls, "_lineReceived", lineReceived)
            _feed(observer, request * 2, response * 2, chunk=chunk)
            self.assertEqual(bool(calls), bool(chunk))
            results.append(_outcome(store, observer))
        self.assertEqual(results[0], results[1])
        (one, two), status, stopped = results[0]
        self.assertEqual((one["status"], two["status"], status.captured, stopped), (201, 201, 2, False))
        self.assertEqual(one["request"]["headers"][3], ["X-Space", "spaced  out"])
        self.assertEqual(one["request"]["headers"][2], ["X-Empty", ""])

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(_exchanges(), min_size=1, max_size=3))
    def test_wholeEqualsByteByByte(self, exchanges: list[tuple[bytes, bytes]]) -> None:
        """
        Random exchanges, malformed heads included, give the same JSON,
        counters and stop whether each direction arrives whole or one
        byte at a time.
        """
        requests = b"".join(r for r, _ in exchanges)
        responses = b"".join(r for _, r in exchanges)
        results = []
        for chunk in (0, 1):
            store, observer, _, _ = _make(bodyCap=8)
            _feed(observer, requests, responses, chunk=chunk)
            observer.closed()
            results.append(_outcome(store, observer))
        self.assertEqual(results[0], results[1])

    def test_responseHeadAccounted(self) -> None:
        """
        Without subscribers the store hears of a response head at the end
        of the bytes at hand (once, with the end of the response when that
        came too), so its byte count matches its exchanges after every
        call; a subscriber hears of the head and of the end separately.
        """
        for subscribed in (False, True):
            store, observer, _, _ = _make()
            heard: list[tuple[int, Any]] = []
            if subscribed:
                store.subscribe(lambda e: heard.append((e.id, e.status)))
            observer.fromRemote(GET)
            observer.fromLocal(OK5[:-2])
            self.assertEqual(store.status().bytes, sum(e.measure() for e in store.list()))
            observer.fromLocal(OK5[-2:])
            self.assertEqual(store.status().bytes, sum(e.measure() for e in store.list()))
            observer.fromRemote(GET)
            observer.fromLocal(OK5)
            self.assertEqual(store.status().bytes, sum(e.measure() for e in store.list()))
            self.assertEqual([e.state for e in store.list()], ["complete", "complete"])
            if subscribed:
                self.assertEqual(heard, [(1, None), (1, 200), (1, 200), (2, None), (2, 200), (2, 200)])


    @settings(max_examples=300, deadline=None)
    @given(_exchanges())
    def test_wholeHeadRegexes(self, exchange: tuple[bytes, bytes]) -> None:
        """
        The whole() paths check a head with one regex (start line and
        field lines together): it accepts exactly the heads that the start
        line regex and then the field lines regex accept, and finds the
        fields where the start line match ends.
        """
        for data, first, whole in ((exchange[0], http1._FAST_REQUEST, http1._WHOLE_REQUEST),
                                   (exchange[1], http1._FAST_STATUS, http1._WHOLE_STATUS)):
            end = data.find(b"\r\n\r\n")
            if end <= 0:
                continue
            text = data[:end + 2].decode("latin-1")
            m = first.match(text)
            twoSteps = None if m is None or http1._FAST_FIELDS.fullmatch(text, m.end()) is None else m.end()
            w = whole.fullmatch(text)
            self.assertEqual(None if w is None else w.end(4), twoSteps)
            if w is not None and m is not None:
                self.assertEqual(w.group(1, 2, 3), m.group(1, 2, 3))

    def test_earlyWholeAnswerCounted(self) -> None:
        """
        A whole answer that comes while the request body is still arriving
        (an early error) is counted by measuring the exchange again, not by
        adding the answer to what the store had: the byte count matches
        the exchanges at every step.
        """
        store, observer, _, _ = _make()
        observer.fromRemote(b"POST /up HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
        observer.fromLocal(b"HTTP/1.1 413 Too Large\r\nContent-Length: 2\r\n\r\nno")
        self.assertEqual(store.status().bytes, sum(e.measure() for e in store.list()))
        observer.fromRemote(b"defghij")
        self.assertEqual(store.status().bytes, sum(e.measure() for e in store.list()))
        (ex,) = store.list()
        assert ex.response is not None
        self.assertEqual((ex.state, ex.request.body, ex.response.body), ("complete", b"abcdefghij", b"no"))


#: Fields that decide framing, with values right, wrong or odd (a
#: superscript digit, a list, spaces), in any case.
_FRAMING_NAMES = [b"Content-Length", b"content-length", b"CONTENT-LENGTH", b"Transfer-Encoding",
                  b"transfer-encoding", b"Upgrade", b"Connection", b"Content-Type"]
_FRAMING_VALUES = [b"x", b"\xb2", b" 5 ", b"1, 1", b"1,2", b"chunked", b"gzip, chunked", b"websocket",
                   b"upgrade", b"close", b"007", b"", b"application/json"]


@st.composite
def _framedMessages(draw: Any) -> tuple[bytes, bytes]:
    """
    One request and its answer whose heads carry random framing fields
    (several Content-Length, Transfer-Encoding, Upgrade), often a right
    Content-Length, and a body that may or may not fit what they say.
    """
    def fields(body: bytes) -> bytes:
        out = b""
        for _ in range(draw(st.sampled_from([0, 0, 0, 1, 1, 2, 3]))):
            name = draw(st.sampled_from(_FRAMING_NAMES))
            value = draw(st.sampled_from(_FRAMING_VALUES + [b"%d" % len(body)] * 4))
            out += name + draw(st.sampled_from([b": ", b":", b":\t", b":  "])) + value
            out += draw(st.sampled_from([b"\r\n", b"\r\n", b" \r\n"]))
        if draw(st.sampled_from([True, True, False])):
            out += b"Content-Length: %d\r\n" % len(body)
        return out

    method = draw(st.sampled_from([b"GET", b"POST", b"HEAD", b"CONNECT", b"post"]))
    body = draw(st.binary(max_size=12))
    request = method + b" /x HTTP/1.1\r\nHost: h\r\n" + fields(body) + b"\r\n" + body
    status = draw(st.sampled_from([b"200", b"201", b"204", b"101", b"100", b"304"]))
    answer = draw(st.binary(max_size=12))
    response = b"HTTP/1.1 " + status + b" X\r\n" + fields(answer) + b"\r\n" + answer
    return request, response


class LazyHeaderTests(SynchronousTestCase):
    """
    On the data path the observer only frames: a head that arrives whole
    is kept as received and decoded into header fields when first read.
    """

    def test_decodedWhenRead(self) -> None:
        """
        A request parsed whole keeps its raw head until its headers are
        read; then they are the same fields the line-by-line parser finds
        (names as sent, values without the whitespace around them), and
        kept.
        """
        request = (b"POST /a HTTP/1.1\r\nHost: h\r\nX-Trail: v \t\r\nX-Empty:\r\nX-Lead:\t  w x\r\n"
                   b"content-LENGTH: 2\r\n\r\nhi")
        store, observer, _, _ = _make()
        observer.fromRemote(request)
        message = store.get(1).request
        self.assertIsNotNone(message.rawHead)
        expected = [("Host", "h"), ("X-Trail", "v"), ("X-Empty", ""), ("X-Lead", "w x"), ("content-LENGTH", "2")]
        self.assertEqual(message.headers, expected)
        self.assertIsNone(message.rawHead)
        self.assertIs(message.headers, message.headers)
        self.assertEqual((message.body, message.size, message.complete), (b"hi", 2, True))
        other, otherObserver, _, _ = _make()
        _feed(otherObserver, request, b"", chunk=1)
        self.assertIsNone(other.get(1).request.rawHead)
        self.assertEqual(other.get(1).detailJSON(), store.get(1).detailJSON())

    def test_quickestPathFields(self) -> None:
        """
        The one-go path (which builds its objects with positional
        arguments) fills in every field as the line-by-line path does,
        the observer's source and replayed exchange included.
        """
        results = []
        for chunk in (0, 1):
            store = RequestStore(Clock(), wallClock=lambda: 1234.5)
            observer = store.observer("svc", "peerX", source="replay", replayOf=7)
            request = b"PUT /p?q HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc"
            response = b"HTTP/1.1 202 Fine Thanks\r\nContent-Length: 2\r\n\r\nok"
            _feed(observer, request, response, chunk=chunk)
            results.append(store.get(1).detailJSON())
        self.assertEqual(results[0], results[1])
        summary = {k: results[0][k] for k in ("tunnel", "peer", "started", "method", "path", "http_version",
                                              "status", "reason", "state", "replay_of", "source", "upgrade")}
        self.assertEqual(summary, {
            "tunnel": "svc", "peer": "peerX", "started": 1234.5, "method": "PUT", "path": "/p?q",
            "http_version": "HTTP/1.0", "status": 202, "reason": "Fine Thanks", "state": "complete",
            "replay_of": 7, "source": "replay", "upgrade": None,
        })

    def test_costFixedWhenDecoded(self) -> None:
        """
        Decoding the headers does not change what the store counts for
        them (the field lines' length as received), so its byte count
        still equals its exchanges'.
        """
        store, observer, _, _ = _make()
        observer.fromRemote(b"GET / HTTP/1.1\r\nHost:   spaced   \r\n\r\n")
        observer.fromLocal(OK5)
        before = store.status().bytes
        store.get(1).detailJSON()
        self.assertEqual(store.status().bytes, before)
        self.assertEqual(before, sum(e.measure() for e in store.list()))

    def test_setHeaders(self) -> None:
        """
        Headers set on a message replace the raw head, and its cost is
        summed from them.
        """
        store, observer, _, _ = _make()
        observer.fromRemote(GET)
        message = store.get(1).request
        message.headers = [("A", "b")]
        self.assertEqual((message.headers, message.rawHead, message.cost()), ([("A", "b")], None, 1 + 1 + 4))

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(_framedMessages(), min_size=1, max_size=3), st.booleans())
    @example([(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n", b"HTTP/1.1 304 X\r\nContent-Length: 3\r\n\r\nabc")], False)
    @example([(b"HEAD /x HTTP/1.1\r\n\r\n", b"HTTP/1.1 200 X\r\nContent-Length: 3\r\n\r\nabc")], False)
    def test_eachWholeEqualsByteByByte(self, exchanges: list[tuple[bytes, bytes]], subscribed: bool) -> None:
        """
        Random exchanges with odd framing fields give the same JSON,
        counters and stop whether each message arrives in a read of its
        own (the one-go path), all at once, or one byte at a time, with or
        without a subscriber; the store's byte count is its exchanges'.
        """
        results = []
        for mode in ("each", "all", "bytes"):
            store, observer, _, _ = _make(bodyCap=8)
            if subscribed:
                store.subscribe(lambda e: None if e.summaryJSON() else None)
            if mode == "each":
                for request, _ in exchanges:
                    observer.fromRemote(request)
                for _, response in exchanges:
                    observer.fromLocal(response)
            else:
                _feed(observer, b"".join(r for r, _ in exchanges), b"".join(r for _, r in exchanges),
                      chunk=1 if mode == "bytes" else 0)
            observer.closed()
            self.assertEqual(store.status().bytes, sum(e.measure() for e in store.list()))
            results.append(_outcome(store, observer))
        self.assertEqual(results[0], results[2])
        self.assertEqual(results[1], results[2])
