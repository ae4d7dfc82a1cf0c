"""
The HTTP inspector never alters a byte (issue 13): end-to-end tests with
real C{beam} processes on loopback and the inspector on (the default).

The processes, homes and the tunnel pair come from
L{beam.test.test_e2e_tunnel}; the local services are this module run as
C{python -m beam.test.test_inspect_e2e http|record}:

  - C{http} (L{HTTPLab}): a small streaming HTTP/1.1 server (keep-alive,
    pipelining, C{Content-Length} and chunked request bodies) that hashes a
    request body (C{POST /hash}) or echoes it (C{POST /echo}) without ever
    holding a body in memory, so a 2 GiB request costs it nothing;
  - C{record} (L{Recorder}): reads everything a connection sends until
    its end of file and answers with a fixed HTTP response whose body is
    the count and SHA-256 of those bytes, so a test can tell that the
    malformed bytes it sent reached the service exactly.

What the inspector captured is read over the node's control socket
(C{GET /v1/requests}, L{control}) and its counters from C{beam status
--json} (the C{requests} section).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import random
import socket
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from twisted.internet import reactor
from twisted.internet.defer import DeferredList, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from beam.daemon.control.socket import controlSocketPath
from beam.test.test_e2e_tunnel import GiB, MiB, Child, E2EMixin, EchoCheck, recvAll, waitUntil

KiB = 1 << 10

#: What every node of these tests says in its C{config.toml}: no dashboard
#: (six helpers' nodes on one machine would fight over port 4040), and, for
#: the tests that turn it off, no inspector.
QUIET = 'web = "off"\n'
NO_INSPECT = 'web = "off"\ninspect = false\n'


# -- the services (run in their own process) -----------------------------------


class BadRequest(Exception):
    """
    The lab service could not parse a request (it answers 400 and closes).
    """


def echoResponse(body: bytes, close: bool) -> bytes:
    """
    The exact bytes L{HTTPLab} answers to C{POST /echo} with C{body}.
    """
    return echoHead(len(body), close) + body


def echoHead(size: int, close: bool) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n%s\r\n"
        % (size, b"Connection: close\r\n" if close else b"")
    )


def jsonResponse(value: Any, close: bool, status: bytes = b"200 OK") -> bytes:
    body = json.dumps(value, sort_keys=True).encode()
    return (
        b"HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n"
        % (status, len(body), b"Connection: close\r\n" if close else b"")
    ) + body


@implementer(IHalfCloseableProtocol)
class HTTPLab(Protocol):
    """
    A streaming HTTP/1.1 server for the tests: C{POST /hash} answers
    C{{"size": N, "sha256": HEX}} of the (de-chunked) body, C{POST /echo}
    answers the body back with the same C{Content-Length} as it arrives
    (so 1,000 connections of 1 MiB never sit in its memory), anything else
    404.  Requests on one connection are handled in order (keep-alive,
    pipelining); C{Connection: close} closes after its answer.  The
    transport is its own producer: when the client does not read, the
    service stops reading.
    """

    def connectionMade(self) -> None:
        self.buf = bytearray()
        self.state = "head"
        self.remaining = 0
        self.closing = False
        self.route = b""
        self.hash: Any = None
        self.size = 0
        self.transport.registerProducer(self.transport, True)

    def dataReceived(self, data: bytes) -> None:
        if self.state == "done":
            return
        if self.state == "body" and not self.buf:
            # The bulk of a big body: no copy into the buffer.
            n = min(self.remaining, len(data))
            self.body(data[:n] if n < len(data) else data)
            data = data[n:]
            if not data or self.state == "done":
                return
        self.buf += data
        try:
            while self.step():
                pass
        except BadRequest as e:
            self.transport.write(jsonResponse({"error": str(e)}, True, b"400 Bad Request"))
            self.finish()

    def step(self) -> bool:
        """
        Consume what the buffer holds for the current state; whether to go
        on.
        """
        if self.state == "head":
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > 64 * KiB:
                    raise BadRequest("head too long")
                return False
            head = bytes(self.buf[:end]).decode("latin-1")
            del self.buf[: end + 4]
            self.startRequest(head)
            return True
        if self.state == "body":
            if not self.buf:
                return False
            n = min(self.remaining, len(self.buf))
            piece = bytes(self.buf[:n])
            del self.buf[:n]
            self.body(piece)
            return True
        if self.state in ("size", "trailer"):
            end = self.buf.find(b"\r\n")
            if end < 0:
                if len(self.buf) > 4 * KiB:
                    raise BadRequest("chunk line too long")
                return False
            line = bytes(self.buf[:end])
            del self.buf[: end + 2]
            if self.state == "trailer":
                if not line:
                    self.endRequest()
                return True
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise BadRequest(f"bad chunk size {line[:20]!r}") from None
            if size == 0:
                self.state = "trailer"
            else:
                self.state, self.remaining = "chunk", size
            return True
        if self.state == "chunk":
            if not self.buf:
                return False
            n = min(self.remaining, len(self.buf))
            piece = bytes(self.buf[:n])
            del self.buf[:n]
            self.remaining -= n
            self.feed(piece)
            if not self.remaining:
                self.state = "chunkEnd"
            return True
        if self.state == "chunkEnd":
            if len(self.buf) < 2:
                return False
            if self.buf[:2] != b"\r\n":
                raise BadRequest("no CRLF after a chunk")
            del self.buf[:2]
            self.state = "size"
            return True
        return False

    def startRequest(self, head: str) -> None:
        lines = head.split("\r\n")
        try:
            method, target, version = lines[0].split(" ")
        except ValueError:
            raise BadRequest(f"bad request line {lines[0][:40]!r}") from None
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise BadRequest("bad header line")
            headers[name.strip().lower()] = value.strip()
        self.closing = headers.get("connection", "").lower() == "close" or version == "HTTP/1.0"
        self.route = f"{method} {target}".encode()
        self.hash, self.size = hashlib.sha256(), 0
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length = 0 if chunked else int(headers.get("content-length", "0"))
        if self.route == b"POST /echo":
            if chunked:
                raise BadRequest("/echo wants a Content-Length")
            self.transport.write(echoHead(length, self.closing))
        if chunked:
            self.state = "size"
        elif length:
            self.state, self.remaining = "body", length
        else:
            self.endRequest()

    def body(self, piece: bytes) -> None:
        self.remaining -= len(piece)
        self.feed(piece)
        if not self.remaining:
            self.endRequest()

    def feed(self, piece: bytes) -> None:
        self.size += len(piece)
        if self.route == b"POST /echo":
            self.transport.write(piece)
        else:
            self.hash.update(piece)

    def endRequest(self) -> None:
        if self.route == b"POST /hash":
            self.transport.write(jsonResponse({"size": self.size, "sha256": self.hash.hexdigest()}, self.closing))
        elif self.route != b"POST /echo":
            self.transport.write(jsonResponse({"error": "not found"}, self.closing, b"404 Not Found"))
        self.state = "head"
        if self.closing:
            self.finish()

    def finish(self) -> None:
        self.state = "done"
        self.buf.clear()
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    def readConnectionLost(self) -> None:
        if self.state != "done":
            self.finish()

    def writeConnectionLost(self) -> None:
        pass


def recordAnswer(data: bytes) -> bytes:
    """
    The exact bytes L{Recorder} answers after reading C{data}.
    """
    body = f"{len(data)} {hashlib.sha256(data).hexdigest()}\n".encode()
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
    ) + body


@implementer(IHalfCloseableProtocol)
class Recorder(Protocol):
    """
    Reads a connection to its end of file, then answers L{recordAnswer}
    (count and SHA-256 of every byte it read) and closes.
    """

    def connectionMade(self) -> None:
        self.hash = hashlib.sha256()
        self.count = 0

    def dataReceived(self, data: bytes) -> None:
        self.hash.update(data)
        self.count += len(data)

    def readConnectionLost(self) -> None:
        body = f"{self.count} {self.hash.hexdigest()}\n".encode()
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
            % len(body) + body
        )
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass


def serve(kind: str) -> None:
    """
    Run the C{http} (L{HTTPLab}) or C{record} (L{Recorder}) service on a
    free loopback port and print C{{"port": N}}.
    """
    protocol = {"http": HTTPLab, "record": Recorder}[kind]
    port = reactor.listenTCP(0, Factory.forProtocol(protocol), backlog=2048, interface="127.0.0.1")
    print(json.dumps({"port": port.getHost().port}), flush=True)
    reactor.run()


# -- helpers ------------------------------------------------------------------------


class _UNIXHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("beam", timeout=timeout)
        self.socketPath = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(str(self.socketPath))


def control(home: str, path: str, timeout: float = 30) -> tuple[int, Any]:
    """
    C{GET path} on the control socket of the node of C{home} (blocking);
    the status and the JSON answer.
    """
    conn = _UNIXHTTPConnection(controlSocketPath(Path(home)), timeout)
    try:
        conn.request("GET", path, headers={"Accept": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def splitResponse(raw: bytes) -> tuple[str, bytes]:
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, raw[:200]
    return head.decode("latin-1"), body


class InspectE2EMixin(E2EMixin):
    """
    L{E2EMixin} with this module's services, quiet nodes and the
    inspector's views.
    """

    def labService(self, kind: str) -> tuple[Child, int]:
        child = Child(self, [sys.executable, "-m", "beam.test.test_inspect_e2e", kind], f"service-{kind}")
        return child, child.readJSON()["port"]

    def configuredHome(self, config: str = QUIET) -> str:
        home = self.newHome()
        Path(home, "config.toml").write_text(config)
        return home

    def inspectedPair(self, kind: str, config: str = QUIET, *flags: str) -> tuple[Child, Child, str, Child, int]:
        """
        A lab service of C{kind}, C{beam PORT [flags]} for it (with
        C{config} in its home) and C{beam connect} to it: the service, the
        host, the host's home, the client and its local port.
        """
        svc, svcPort = self.labService(kind)
        host, ready, hostHome = self.expose(svcPort, *flags, home=self.configuredHome(config))
        client, local, _ = self.connect(ready["share"], home=self.configuredHome())
        return svc, host, hostHome, client, local

    def inspector(self, home: str) -> dict[str, Any]:
        """
        The inspector's counters (C{InspectorStatus}) from C{beam status
        --json}.
        """
        return self.status(home)["requests"]  # type: ignore[no-any-return]

    def captured(self, home: str, **filters: Any) -> list[dict[str, Any]]:
        """
        The exchange summaries C{GET /v1/requests} lists (newest 500).
        """
        code, body = control(home, "/v1/requests?" + urlencode({"limit": 500, **filters}))
        self.assertEqual(code, 200, body)  # type: ignore[attr-defined]
        return body["requests"]  # type: ignore[no-any-return]

    def detail(self, home: str, ident: int) -> dict[str, Any]:
        code, body = control(home, f"/v1/requests/{ident}")
        self.assertEqual(code, 200, body)  # type: ignore[attr-defined]
        return body  # type: ignore[no-any-return]

    def assertWithinCaps(self, home: str) -> dict[str, Any]:
        """
        The store keeps no more than C{max_requests} exchanges and
        C{max_bytes} bytes, and every captured body is at most
        C{body_cap}; the counters.
        """
        st = self.inspector(home)
        self.assertLessEqual(st["kept"], st["max_requests"], st)  # type: ignore[attr-defined]
        self.assertLessEqual(st["bytes"], st["max_bytes"], st)  # type: ignore[attr-defined]
        for summary in self.captured(home)[-20:]:
            exchange = self.detail(home, summary["id"])
            for message in (exchange["request"], exchange["response"]):
                if message is not None:
                    self.assertLessEqual(message["captured"], st["body_cap"], exchange["id"])  # type: ignore[attr-defined]
        return st


def hashRequest(size: int, chunked: bool = False) -> bytes:
    head = b"POST /hash HTTP/1.1\r\nHost: lab.test\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n"
    if chunked:
        return head + b"Transfer-Encoding: chunked\r\n\r\n"
    return head + b"Content-Length: %d\r\n\r\n" % size


# -- integrity of big bodies -----------------------------------------------------------


class BigBodyTests(InspectE2EMixin, SynchronousTestCase):
    """
    Request bodies far over the inspector's cap, through one tunnel
    connection.
    """

    def assertCapturedHash(self, hostHome: str, size: int, digest: str) -> dict[str, Any]:
        """
        The inspector kept one C{POST /hash} with status 200, the whole
        request size, a body truncated at the cap and the service's answer
        as the response body; its detail.
        """
        def found() -> list[dict[str, Any]]:
            return [s for s in self.captured(hostHome, path="/hash") if s["state"] == "complete"]

        (summary,) = waitUntil(found, 20, "the inspector to capture POST /hash")
        self.assertEqual((summary["method"], summary["path"], summary["status"]), ("POST", "/hash", 200))
        self.assertEqual(summary["request_size"], size)
        exchange = self.detail(hostHome, summary["id"])
        cap = self.inspector(hostHome)["body_cap"]
        self.assertTrue(exchange["request"]["truncated"])
        self.assertEqual(exchange["request"]["captured"], cap)
        self.assertEqual(json.loads(exchange["response"]["text"]), {"size": size, "sha256": digest})
        return exchange

    def test_twoGiBPost(self) -> None:
        """
        A 2 GiB C{POST} with C{Content-Length} through one tunnel
        connection: the service's SHA-256 of the body equals the sender's,
        and the inspector captured the exchange (status 200, request size
        2 GiB, body truncated at the cap) with the host's counters showing
        one truncated body and nothing given up.
        """
        svc, host, hostHome, client, local = self.inspectedPair("http")
        size = 2 * GiB
        block = bytearray(os.urandom(MiB))
        h = hashlib.sha256()
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", local), timeout=60) as s:
            s.sendall(hashRequest(size))
            for i in range(size // MiB):
                block[:8] = i.to_bytes(8, "big")
                h.update(block)
                s.sendall(block)
            raw = recvAll(s)
        elapsed = time.monotonic() - started
        print(f"\n2 GiB POST through the tunnel, inspector on, in {elapsed:.1f} s ({size / MiB / elapsed:.0f} MiB/s)")
        self.assertEqual(raw, jsonResponse({"size": size, "sha256": h.hexdigest()}, True))
        self.assertCapturedHash(hostHome, size, h.hexdigest())
        st = self.inspector(hostHome)
        self.assertEqual((st["captured"], st["gave_up"], st["not_http"]), (1, 0, 0), st)
        self.assertGreaterEqual(st["truncated"], 1)
        self.assertNoTracebacks(host, client, svc)

    def test_chunkedUpload(self) -> None:
        """
        A 256 MiB chunked upload (chunk sizes from 1 byte to 1 MiB, a chunk
        extension and a trailer): the service de-chunks the same bytes the
        sender hashed, and the inspector reports the de-chunked size.
        """
        svc, host, hostHome, client, local = self.inspectedPair("http")
        rng = random.Random(13)
        pattern = rng.randbytes(MiB)
        size, sent = 256 * MiB, 0
        h = hashlib.sha256()
        with socket.create_connection(("127.0.0.1", local), timeout=60) as s:
            s.sendall(hashRequest(0, chunked=True))
            while sent < size:
                n = min(size - sent, rng.choice((1, 7, 4096, 65535, 65536, 300_000, MiB)))
                piece = pattern[:n]
                h.update(piece)
                ext = b";note=x" if rng.random() < 0.1 else b""
                s.sendall(b"%x%s\r\n" % (n, ext) + piece + b"\r\n")
                sent += n
            s.sendall(b"0\r\nX-Trailer: done\r\n\r\n")
            raw = recvAll(s)
        self.assertEqual(raw, jsonResponse({"size": size, "sha256": h.hexdigest()}, True))
        self.assertCapturedHash(hostHome, size, h.hexdigest())
        self.assertEqual(self.inspector(hostHome)["gave_up"], 0)
        self.assertNoTracebacks(host, client, svc)


# -- 1,000 connections ------------------------------------------------------------------------


class HTTPEchoCheck(EchoCheck):
    """
    Two pipelined C{POST /echo} requests on one keep-alive connection (a
    big random body, then a small one with C{Connection: close}); hashes
    what comes back against the exact answer L{HTTPLab} gives (the
    counting and the end are L{EchoCheck}'s).  L{done} fires with
    C{(count, intact)}.
    """

    def __init__(self, size: int, small: int) -> None:
        super().__init__(size)
        self.small = small
        self.expectedSize = 0

    def connectionMade(self) -> None:
        big, small = os.urandom(self.size), os.urandom(self.small)
        answer = echoResponse(big, False) + echoResponse(small, True)
        self.expected, self.expectedSize = hashlib.sha256(answer).digest(), len(answer)
        self.transport.writeSequence([
            b"POST /echo HTTP/1.1\r\nHost: lab.test\r\nContent-Length: %d\r\n\r\n" % len(big), big,
            b"POST /echo HTTP/1.1\r\nHost: lab.test\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(small),
            small,
        ])

    def connectionLost(self, reason: Failure) -> None:
        if not self.done.called:
            self.done.callback((self.count, self.count == self.expectedSize and self.hash.digest() == self.expected))


class LoadTests(InspectE2EMixin, TestCase):
    """
    Many HTTP connections at once through one inspected tunnel.
    """

    timeout = 300

    @inlineCallbacks
    def test_thousandHTTPConnections(self) -> Any:
        """
        1,000 concurrent connections, each with two pipelined keep-alive
        C{POST /echo} requests (1 MiB and 4 KiB of random data): every
        answer comes back byte-identical, the inspector captured all 2,000
        exchanges as complete 200s, and its store stayed within
        C{max_requests} and C{max_bytes} (evicting the rest).
        """
        svc, host, hostHome, client, local = self.inspectedPair("http")
        n, size, small = 1000, MiB, 4 * KiB
        started = time.monotonic()
        clients = [HTTPEchoCheck(size, small) for _ in range(n)]
        connected = yield DeferredList(
            [connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", local), c) for c in clients],
            consumeErrors=True,
        )
        self.assertEqual([str(r) for ok, r in connected if not ok], [])
        results = yield DeferredList([c.done for c in clients])
        elapsed = time.monotonic() - started
        bad = [(i, r) for i, (ok, r) in enumerate(results) if not ok or not r[1]]
        print(f"\n{n} x 2 HTTP echoes ({size // MiB} MiB + {small // KiB} KiB) in {elapsed:.1f} s, inspector on")
        self.assertEqual(bad, [])

        def settled() -> dict[str, Any] | None:
            st = self.inspector(hostHome)
            return st if st["captured"] >= 2 * n else None

        st = waitUntil(settled, 30, "the inspector to count 2,000 exchanges")
        self.assertEqual((st["captured"], st["gave_up"], st["not_http"]), (2 * n, 0, 0), st)
        self.assertEqual(st["evicted"], st["captured"] - st["kept"], st)
        kept = self.captured(hostHome)
        self.assertEqual(len(kept), min(st["kept"], 500))
        self.assertTrue(all(s["status"] == 200 and s["state"] == "complete" for s in kept), kept[:3])
        self.assertEqual({s["request_size"] for s in kept} - {size, small}, set())
        self.assertWithinCaps(hostHome)
        stats = self.status(hostHome)["tunnels"][0]["stats"]
        self.assertEqual(stats["total"], n)
        self.assertNoTracebacks(host, client, svc)


# -- malformed HTTP ----------------------------------------------------------------------


def _chunkedHead(path: bytes) -> bytes:
    return b"POST " + path + b" HTTP/1.1\r\nHost: lab.test\r\nTransfer-Encoding: chunked\r\n\r\n"


def malformedCases() -> dict[str, bytes]:
    """
    What a broken or hostile client may send, by name.
    """
    rng = random.Random(1313)
    return {
        "garbage": b"\x00\xff\x16\x03" + rng.randbytes(MiB),
        "truncatedHead": b"GET /half HTTP/1.1\r\nHost: lab.test\r\nX-Cut: ",
        "hugeHeaderLine": b"GET /big-header HTTP/1.1\r\nHost: lab.test\r\nX-Big: " + b"a" * MiB + b"\r\n\r\n",
        "manyHeaders": b"GET /many HTTP/1.1\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(1000)) + b"\r\n",
        "longPath": b"GET /" + b"p" * (64 * KiB) + b" HTTP/1.1\r\nHost: lab.test\r\n\r\n",
        "chunkedOverrun": _chunkedHead(b"/overrun") + b"10\r\n" + b"x" * 1000 + b"\r\n0\r\n\r\n",
        "chunkedNotHex": _chunkedHead(b"/nothex") + b"zz\r\nhello\r\n0\r\n\r\n",
        "chunkedHugeSize": _chunkedHead(b"/huge") + b"f" * 40 + b"\r\n" + b"y" * 1000,
        "lengthShort": (b"POST /short HTTP/1.1\r\nHost: lab.test\r\nContent-Length: 10\r\n\r\n"
                        + rng.randbytes(100 * KiB)),
        "lengthLong": b"POST /long HTTP/1.1\r\nHost: lab.test\r\nContent-Length: 1000000\r\n\r\n" + b"z" * 1000,
        "valid": b"POST /fine HTTP/1.1\r\nHost: lab.test\r\nContent-Length: 5\r\n\r\nhello",
    }


#: The cases the inspector must give up on (counted C{gave_up}).
GIVE_UP = ("hugeHeaderLine", "manyHeaders", "chunkedOverrun", "chunkedNotHex")
#: The cases it must count as not HTTP: garbage, and a first request line
#: longer than the inspector's line cap (16 KiB), which it cannot tell
#: from garbage without buffering it.
NOT_HTTP = ("garbage", "longPath")


def sendRecorded(port: int, data: bytes) -> bytes:
    """
    Send C{data} to the L{Recorder} behind the forward on C{port},
    half-close, and return its whole answer.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        return recvAll(s)


class MalformedTests(InspectE2EMixin, SynchronousTestCase):
    """
    Bad HTTP passes through the inspected tunnel untouched, bounded, and
    without hurting the node.
    """

    def test_malformedPassesUntouched(self) -> None:
        """
        Garbage, a truncated head, a 1 MiB header line, 1,000 header
        fields, a 64 KiB path, chunked bodies whose sizes lie and
        Content-Lengths shorter and longer than the body, one connection
        each: every byte reaches the service as sent and its answer comes
        back as sent; the garbage and the 64 KiB request line count as not
        HTTP, the oversized heads and lying chunks as given up; the node stays up (C{beam status} works),
        its memory does not grow past the caps, the store stays within
        them, and its log has no traceback.
        """
        svc, host, hostHome, client, local = self.inspectedPair("record")
        rssBefore = host.rss()
        deltas: dict[str, tuple[int, int]] = {}
        for name, data in malformedCases().items():
            before = self.inspector(hostHome)
            self.assertEqual(sendRecorded(local, data), recordAnswer(data), name)

            def counted(before: dict[str, Any] = before, name: str = name) -> tuple[int, int] | None:
                st = self.inspector(hostHome)
                delta = (st["gave_up"] - before["gave_up"], st["not_http"] - before["not_http"])
                wanted = (1, 0) if name in GIVE_UP else (0, 1) if name in NOT_HTTP else None
                return delta if wanted is None or delta == wanted else None

            deltas[name] = waitUntil(counted, 10, f"the inspector to count {name}")
            self.assertLessEqual(sum(deltas[name]), 1, (name, deltas[name]))
        print(f"\n(gave_up, not_http) per case: {deltas}")
        self.assertEqual(deltas["valid"], (0, 0))
        grew = (host.rss() - rssBefore) / MiB
        print(f"host RSS growth {grew:.1f} MiB")
        self.assertLess(grew, 64)
        st = self.assertWithinCaps(hostHome)
        self.assertGreaterEqual(st["gave_up"], len(GIVE_UP))
        fine = [s for s in self.captured(hostHome, path="/fine") if s["state"] == "complete"]
        self.assertEqual([(s["method"], s["status"], s["request_size"]) for s in fine], [("POST", 200, 5)])
        lying = self.captured(hostHome, path="/overrun")
        self.assertEqual([s["state"] for s in lying], ["aborted"], lying)
        self.assertTrue(lying[0]["error"])
        self.assertTrue(host.alive())
        out = self.status(hostHome)
        self.assertEqual(len(out["tunnels"]), 1)
        self.assertNoTracebacks(host, client, svc)

    def assertCapturesNothing(self, config: str, *flags: str) -> None:
        """
        With the host started with C{config} and C{flags}, a 1 MiB header
        line, garbage and a valid request pass through untouched and the
        inspector captures and counts nothing.
        """
        svc, host, hostHome, client, local = self.inspectedPair("record", config, *flags)
        cases = malformedCases()
        for name in ("hugeHeaderLine", "garbage", "valid"):
            self.assertEqual(sendRecorded(local, cases[name]), recordAnswer(cases[name]), name)
        st = self.inspector(hostHome)
        self.assertFalse(st["enabled"])
        self.assertEqual((st["captured"], st["kept"], st["gave_up"], st["not_http"], st["bytes"]), (0, 0, 0, 0, 0))
        self.assertEqual(self.captured(hostHome), [])
        self.assertNoTracebacks(host, client, svc)

    def test_noInspectConfigCapturesNothing(self) -> None:
        """
        C{inspect = false} in the host's C{config.toml}: nothing captured
        or counted, every byte through.
        """
        self.assertCapturesNothing(NO_INSPECT)

    def test_noInspectFlagCapturesNothing(self) -> None:
        """
        C{beam PORT --no-inspect}: nothing captured or counted, every byte
        through.
        """
        self.assertCapturesNothing(QUIET, "--no-inspect")


if __name__ == "__main__":
    serve(sys.argv[1])
