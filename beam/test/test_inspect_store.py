"""
Tests for L{beam.tunnel.inspect.store}: the bounded store of captured
exchanges, its filters and subscribers, and the JSON shapes the control
API and the dashboard rely on.
"""

from __future__ import annotations

import base64
import gzip
import json
import zlib

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from beam.controlapi.values import asJSON
from beam.errors import NotFound
from beam.tunnel.inspect.store import EXCHANGE_OVERHEAD, Exchange, Message, RequestStore


def _exchange(method: str = "GET", target: str = "/", status: int | None = 200, tunnel: str = "web") -> Exchange:
    ex = Exchange(tunnel=tunnel, peer="p", method=method, target=target)
    if status is not None:
        ex.status = status
        ex.response = Message(complete=True)
        ex.state = "complete"
    return ex


SUMMARY_KEYS = {
    "id", "tunnel", "peer", "started", "method", "path", "http_version", "status", "reason", "duration_ms",
    "state", "upgrade", "replay_of", "source", "error", "request_size", "response_size",
    "request_type", "response_type",
}
MSG_KEYS = {"headers", "size", "captured", "truncated", "complete", "content_type", "kind", "text", "form", "base64"}


class StoreTests(SynchronousTestCase):
    """
    Ids, eviction, filters, subscribers and counters.
    """

    def test_idsAndGet(self) -> None:
        """
        Exchanges get ids 1, 2, ...; get finds them, or raises NotFound.
        """
        store = RequestStore(Clock())
        a, b = store.add(_exchange()), store.add(_exchange())
        self.assertEqual((a.id, b.id), (1, 2))
        self.assertIs(store.get(2), b)
        e = self.assertRaises(NotFound, store.get, 3)
        self.assertEqual(str(e), "no captured request 3")

    def test_evictByCount(self) -> None:
        """
        Past maxRequests the oldest go, counted.
        """
        store = RequestStore(Clock(), maxRequests=3)
        for _ in range(5):
            store.add(_exchange())
        self.assertEqual([e.id for e in store.list()], [3, 4, 5])
        self.assertEqual((store.status().evicted, store.status().captured, store.status().kept), (2, 5, 3))
        self.assertRaises(NotFound, store.get, 1)

    def test_evictByBytes(self) -> None:
        """
        Past maxBytes the oldest go; bodies set later (changed) count too.
        """
        store = RequestStore(Clock(), maxBytes=3 * EXCHANGE_OVERHEAD + 2000)
        for _ in range(3):
            store.add(_exchange(target="/x"))
        self.assertEqual(len(store), 3)
        last = store.list()[-1]
        assert last.response is not None
        last.response.body = b"x" * 2500
        store.changed(last)
        self.assertEqual([e.id for e in store.list()], [2, 3])
        self.assertEqual(store.status().evicted, 1)
        self.assertLessEqual(store.status().bytes, store.maxBytes)
        self.assertEqual(store.status().bytes, sum(e.measure() for e in store.list()))

    def test_changedAfterEviction(self) -> None:
        """
        An exchange no longer kept is ignored by changed (no resurrection,
        no accounting).
        """
        store = RequestStore(Clock(), maxRequests=1)
        old = store.add(_exchange())
        store.add(_exchange())
        before = store.status().bytes
        old.target = "/" * 10000
        store.changed(old)
        self.assertEqual(store.status().bytes, before)
        self.assertEqual(len(store), 1)

    def test_filters(self) -> None:
        """
        method (any case), status (exact, class, pending), path substring,
        tunnel, after and limit (the newest, in id order).
        """
        store = RequestStore(Clock())
        store.add(_exchange("GET", "/api/users", 200))
        store.add(_exchange("POST", "/api/users", 201, tunnel="api"))
        store.add(_exchange("GET", "/missing", 404))
        store.add(_exchange("DELETE", "/api/x", None))
        ids = lambda **kw: [e.id for e in store.list(**kw)]  # noqa: E731
        self.assertEqual(ids(method="get"), [1, 3])
        self.assertEqual(ids(status="201"), [2])
        self.assertEqual(ids(status="2xx"), [1, 2])
        self.assertEqual(ids(status="4xx"), [3])
        self.assertEqual(ids(status="pending"), [4])
        self.assertEqual(ids(status="nonsense"), [])
        self.assertEqual(ids(path="/api"), [1, 2, 4])
        self.assertEqual(ids(tunnel="api"), [2])
        self.assertEqual(ids(after=2), [3, 4])
        self.assertEqual(ids(limit=2), [3, 4])
        self.assertEqual(ids(limit=0), [])
        self.assertEqual(ids(method="GET", path="users"), [1])

    def test_clear(self) -> None:
        """
        clear forgets every exchange; ids keep growing.
        """
        store = RequestStore(Clock())
        store.add(_exchange())
        store.clear()
        self.assertEqual((len(store), store.status().bytes), (0, 0))
        self.assertEqual(store.add(_exchange()).id, 2)

    def test_subscribe(self) -> None:
        """
        Subscribers hear of new and changed exchanges until they
        unsubscribe; one that raises is removed, and others still hear.
        """
        store = RequestStore(Clock())
        seen: list[int] = []
        unsubscribe = store.subscribe(lambda e: seen.append(e.id))

        def bad(e: Exchange) -> None:
            raise ValueError("bad subscriber")

        store.subscribe(bad)
        ex = store.add(_exchange())
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        store.changed(ex)
        self.assertEqual(seen, [1, 1])
        unsubscribe()
        unsubscribe()
        store.add(_exchange())
        self.assertEqual(seen, [1, 1])
        self.assertEqual(self.flushLoggedErrors(ValueError), [])

    def test_statusJSON(self) -> None:
        """
        InspectorStatus renders with the contract's snake-case keys.
        """
        store = RequestStore(Clock(), maxRequests=7, maxBytes=1000, bodyCap=10)
        self.assertEqual(asJSON(store.status()), {
            "enabled": True, "kept": 0, "bytes": 0, "max_requests": 7, "max_bytes": 1000, "body_cap": 10,
            "captured": 0, "evicted": 0, "gave_up": 0, "not_http": 0, "truncated": 0, "refused": 0,
        })

    def test_observerSource(self) -> None:
        """
        An observer made for a replay marks its exchanges so.
        """
        store = RequestStore(Clock())
        observer = store.observer("web", "", source="replay", replayOf=7)
        observer.fromRemote(b"GET / HTTP/1.1\r\n\r\n")
        ex = store.get(1)
        self.assertEqual((ex.source, ex.replayOf), ("replay", 7))


def _body(body: bytes, contentType: str = "", **kw: object) -> dict:
    headers = [("Content-Type", contentType)] if contentType else []
    for k, v in kw.items():
        headers.append((k.replace("_", "-"), str(v)))
    return Message(headers=headers, body=body, size=len(body), complete=True).asJSON(1024)


class JSONTests(SynchronousTestCase):
    """
    summaryJSON, detailJSON and how bodies are rendered.
    """

    def test_summaryShape(self) -> None:
        """
        The summary has exactly the contract's keys and values.
        """
        ex = _exchange("POST", "/p?q=1", 201)
        ex.duration = 0.0125
        ex.request = Message(headers=[("Content-Type", "application/json")], body=b"{}", size=2, complete=True)
        summary = ex.summaryJSON()
        self.assertEqual(set(summary), SUMMARY_KEYS)
        self.assertEqual(summary["path"], "/p?q=1")
        self.assertEqual(summary["duration_ms"], 12.5)
        self.assertEqual(summary["request_type"], "application/json")
        self.assertEqual((summary["request_size"], summary["response_size"]), (2, 0))
        json.dumps(summary)

    def test_detailShape(self) -> None:
        """
        The detail adds both messages; a pending one has response null.
        """
        ex = _exchange(status=None)
        detail = ex.detailJSON()
        self.assertEqual(set(detail), SUMMARY_KEYS | {"request", "response"})
        self.assertIsNone(detail["response"])
        self.assertEqual(set(detail["request"]), MSG_KEYS)
        self.assertEqual(detail["request"]["kind"], "empty")
        json.dumps(detail)

    def test_json(self) -> None:
        """
        JSON is pretty-printed with indent 2.
        """
        out = _body(b'{"a":[1,2],"b":"\xc3\xa9"}', "application/json; charset=utf-8")
        self.assertEqual(out["kind"], "json")
        self.assertEqual(out["text"], json.dumps({"a": [1, 2], "b": "é"}, indent=2, ensure_ascii=False))
        self.assertEqual(base64.b64decode(out["base64"]), b'{"a":[1,2],"b":"\xc3\xa9"}')
        self.assertEqual(_body(b'{"a": 1}', "application/vnd.api+json")["kind"], "json")

    def test_badJSON(self) -> None:
        """
        A body that claims JSON but does not parse shows as text.
        """
        self.assertEqual(_body(b"{nope", "application/json")["kind"], "text")

    def test_form(self) -> None:
        """
        Form data becomes fields and "k = v" lines.
        """
        out = _body(b"name=J%C3%BCrg&empty=&x=a+b", "application/x-www-form-urlencoded")
        self.assertEqual(out["kind"], "form")
        self.assertEqual(out["form"], [["name", "Jürg"], ["empty", ""], ["x", "a b"]])
        self.assertEqual(out["text"], "name = Jürg\nempty = \nx = a b")

    def test_textAndBinary(self) -> None:
        """
        Decodable text without control characters is text, in its charset;
        anything else is binary (text null, base64 still there).
        """
        self.assertEqual(_body(b"hello\n", "text/plain")["text"], "hello\n")
        self.assertEqual(_body(b"caf\xe9", "text/plain; charset=latin-1")["text"], "café")
        png = b"\x89PNG\r\n\x1a\n\x00\x00"
        out = _body(png, "image/png")
        self.assertEqual((out["kind"], out["text"], out["form"]), ("binary", None, None))
        self.assertEqual(base64.b64decode(out["base64"]), png)
        self.assertEqual(_body(b"\xff\xfe\x00", "")["kind"], "binary")

    def test_truncatedUTF8(self) -> None:
        """
        A text body cut inside a character is still text (the cut tail is
        dropped).
        """
        message = Message(headers=[("Content-Type", "text/plain")], body="aé".encode()[:-1], size=10, truncated=True)
        out = message.asJSON(1024)
        self.assertEqual((out["kind"], out["text"]), ("text", "a"))

    def test_gzip(self) -> None:
        """
        A complete gzip or deflate body is shown decoded; base64 stays the
        bytes as captured.
        """
        raw = json.dumps({"k": "v" * 50}).encode()
        for encoding, packed in (("gzip", gzip.compress(raw)), ("deflate", zlib.compress(raw))):
            out = _body(packed, "application/json", Content_Encoding=encoding)
            self.assertEqual(out["kind"], "json", encoding)
            self.assertEqual(json.loads(out["text"]), {"k": "v" * 50})
            self.assertEqual(base64.b64decode(out["base64"]), packed)

    def test_gzipBomb(self) -> None:
        """
        Decompression stops at four times the body cap: a bomb stays as
        captured (binary).
        """
        packed = gzip.compress(b"a" * 1_000_000)
        out = _body(packed, "text/plain", Content_Encoding="gzip")
        self.assertEqual(out["kind"], "binary")

    def test_badGzip(self) -> None:
        """
        A body that is not gzip after all is rendered as it is.
        """
        self.assertEqual(_body(b"plain", "text/plain", Content_Encoding="gzip")["text"], "plain")


class _Splice:
    observer = None


class InFlightTests(SynchronousTestCase):
    """
    Exchanges evicted while still open stay in memory (their observers
    hold them): the store counts them until they end, and refuses new ones
    once they alone hold its budget, so a peer that pipelines requests or
    never lets responses end cannot grow the node past twice the buffer.
    """

    def pipelined(self, store: RequestStore, n: int, path: str = "/") -> tuple[object, _Splice]:
        splice = _Splice()
        observer = store.observer("web", "peer")
        observer.attach(splice)
        for _ in range(n):
            observer.fromRemote(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        return observer, splice

    def test_refusedWhenOrphansFillTheCount(self) -> None:
        """
        With room for 3, a connection that pipelines without answers gets
        3 kept and 3 evicted-but-open; the next request is refused, the
        connection stops being inspected (its open exchanges aborted, so
        they stop counting), and other connections are captured again.
        """
        store = RequestStore(Clock(), maxRequests=3)
        observer, splice = self.pipelined(store, 6)
        self.assertEqual((store.status().kept, store.inFlight[0], store.evicted), (3, 3, 3))
        self.assertIs(splice.observer, observer)
        observer.fromRemote(b"GET /7 HTTP/1.1\r\nHost: x\r\n\r\n")  # type: ignore[attr-defined]
        status = store.status()
        self.assertEqual((status.refused, status.gaveUp), (1, 0))
        self.assertIsNone(splice.observer)
        self.assertEqual(store.inFlight, (0, 0))
        self.assertEqual([e["state"] for e in map(Exchange.summaryJSON, store.list())], ["aborted"] * 3)
        other, _ = self.pipelined(store, 1, "/other")
        other.fromLocal(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")  # type: ignore[attr-defined]
        self.assertEqual(store.list()[-1].target, "/other")
        self.assertEqual(store.list()[-1].state, "complete")

    def test_refusedWhenOrphansFillTheBytes(self) -> None:
        """
        The same by bytes: big heads evicted while open count against the
        budget, and their end (the connection closing) frees it.
        """
        store = RequestStore(Clock(), maxRequests=1000, maxBytes=64 * 1024)
        splice = _Splice()
        observer = store.observer("web", "peer")
        observer.attach(splice)
        big = b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 15000 + b"\r\n\r\n"
        for _ in range(12):
            observer.fromRemote(big)
        self.assertGreaterEqual(store.status().refused, 1)
        self.assertIsNone(splice.observer)
        self.assertEqual(store.inFlight, (0, 0))
        self.assertLessEqual(store.status().bytes, 64 * 1024)

    def test_orphanEndsNormally(self) -> None:
        """
        An exchange evicted while open that then completes stops counting,
        and its cost while in flight follows its response head.
        """
        store = RequestStore(Clock(), maxRequests=1)
        observer, _ = self.pipelined(store, 2)
        self.assertEqual(store.inFlight[0], 1)
        before = store.inFlight[1]
        observer.fromLocal(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Pad: " + b"p" * 500  # type: ignore[attr-defined]
                           + b"\r\n\r\nhel")
        self.assertGreater(store.inFlight[1], before)
        observer.fromLocal(b"lo")  # type: ignore[attr-defined]
        self.assertEqual(store.inFlight, (0, 0))
        self.assertEqual(store.status().refused, 0)

    def test_clearedWhileOpen(self) -> None:
        """
        Clearing the store keeps counting exchanges still in flight until
        they end.
        """
        store = RequestStore(Clock())
        observer, _ = self.pipelined(store, 2)
        store.clear()
        self.assertEqual(store.inFlight[0], 2)
        observer.closed()  # type: ignore[attr-defined]
        self.assertEqual(store.inFlight, (0, 0))
