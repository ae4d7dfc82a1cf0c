"""
The HTTP inspector on a real tunnel: two in-process nodes on loopback, a
real local service behind a L{TunnelHost} with a L{RequestStore}, a
L{TunnelForward}, and real TCP clients.  Exchanges are captured, and the
bytes arrive exactly as sent whether the inspector understands them or not.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, FileBodyProducer, readBody
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer

from beam.test.test_tunnel import Collector, EchoServer, TunnelTestsMixin, connectLocal, serviceFactory, waitFor
from beam.tunnel import ServiceSpec
from beam.tunnel.host import _compressionAvailable
from beam.tunnel.inspect.store import RequestStore

BIG = os.urandom(1 << 20)

#: What the canned service answers to the three requests of REQUESTS.
RESPONSES = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n{\"ok\": true}"
    + b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n"
    + b"6\r\nchunky\r\n1\r\n!\r\n0\r\n\r\n"
    + b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: "
    + str(len(BIG)).encode() + b"\r\n\r\n" + BIG
)
REQUESTS = (
    b"GET /api/users?x=1 HTTP/1.1\r\nHost: app.test\r\n\r\n"
    b"POST /form HTTP/1.1\r\nHost: app.test\r\nContent-Type: application/x-www-form-urlencoded\r\n"
    b"Content-Length: 7\r\n\r\na=1&b=2"
    b"GET /big HTTP/1.1\r\nHost: app.test\r\n\r\n"
)


@implementer(IHalfCloseableProtocol)
class CannedHTTP(Protocol):
    """
    Records what it reads; once the client half-closes, answers with the
    factory's canned bytes and closes.  (Deterministic bytes both ways,
    unlike a real server's Date headers.)
    """

    def connectionMade(self) -> None:
        self.received = bytearray()
        self.factory.conns.append(self)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def readConnectionLost(self) -> None:
        transport: Any = self.transport
        transport.write(self.factory.canned)
        transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass


class _Sender(Collector):
    """
    Sends C{data}, half-closes, and collects the answer.
    """

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self.data = data

    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.write(self.data)
        transport.loseWriteConnection()


class _App(Resource):
    """
    GET answers text; POST echoes a JSON body back with its length.
    """

    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"text/plain")
        return b"hello " + request.uri

    def render_POST(self, request: Any) -> bytes:
        body = request.content.read()
        request.setResponseCode(201)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"got": json.loads(body)}).encode()


class InspectHostTests(TunnelTestsMixin, TestCase):
    """
    A TunnelHost with an inspector attached.
    """

    timeout = 60

    @inlineCallbacks
    def tunnel(self, factory: Any, store: Any, compress: bool = False):
        port = yield self.listenService(factory)
        a, host = yield self.makeHost()
        host.inspector = store
        host.expose(ServiceSpec.forPort(port, name="web", compress=compress))
        forward = yield self.makeForward(a, "web", compress=compress)
        return host, forward

    @inlineCallbacks
    def _canned(self, compress: bool):
        store = RequestStore(reactor, bodyCap=1024)
        service: Any = serviceFactory(CannedHTTP, canned=RESPONSES)
        host, forward = yield self.tunnel(service, store, compress)
        client = _Sender(REQUESTS)
        yield connectLocal(forward.localAddress.port, client)
        received, _ = yield client.done
        self.assertEqual(hashlib.sha256(received).hexdigest(), hashlib.sha256(RESPONSES).hexdigest())
        self.assertEqual(bytes(service.conns[0].received), REQUESTS)
        yield waitFor(lambda: not host._splices)
        get, post, big = store.list()
        self.assertEqual((get.method, get.target, get.status, get.state), ("GET", "/api/users?x=1", 200, "complete"))
        self.assertEqual(get.tunnel, "web")
        self.assertEqual(get.peer, str(forward.node.peerID))
        detail = get.detailJSON()
        self.assertEqual(detail["response"]["kind"], "json")
        self.assertEqual(json.loads(detail["response"]["text"]), {"ok": True})
        self.assertEqual((post.status, post.request.body), (201, b"a=1&b=2"))
        assert post.response is not None and big.response is not None
        self.assertEqual(post.response.body, b"chunky!")
        self.assertEqual(post.detailJSON()["request"]["form"], [["a", "1"], ["b", "2"]])
        self.assertEqual((big.response.size, big.response.body, big.response.truncated), (len(BIG), BIG[:1024], True))
        status = store.status()
        self.assertEqual((status.captured, status.gaveUp, status.notHTTP, status.truncated), (3, 0, 0, 1))

    def test_captured(self) -> Any:
        """
        Pipelined requests with form, chunked and 1 MiB bodies: every byte
        arrives unchanged both ways, and each exchange is captured with its
        status and (capped) bodies.
        """
        return self._canned(compress=False)

    def test_capturedCompressed(self) -> Any:
        """
        The same through an lz4-compressed tunnel: the inspector sees the
        plain bytes.
        """
        if not _compressionAvailable():
            raise self.skipTest("lz4 is not installed")
        return self._canned(compress=True)

    @inlineCallbacks
    def test_realServer(self):
        """
        twisted.web's client and server through the tunnel: keep-alive GET
        and POST are captured with the right status and bodies.
        """
        store = RequestStore(reactor)
        host, forward = yield self.tunnel(Site(_App()), store)
        agent = Agent(reactor)
        base = f"http://127.0.0.1:{forward.localAddress.port}"
        response = yield agent.request(b"GET", f"{base}/hi?x=1".encode())
        self.assertEqual((yield readBody(response)), b"hello /hi?x=1")
        from io import BytesIO

        response = yield agent.request(
            b"POST", f"{base}/echo".encode(), Headers({b"content-type": [b"application/json"]}),
            FileBodyProducer(BytesIO(b'{"n": 1}')),
        )
        self.assertEqual((yield readBody(response)), b'{"got": {"n": 1}}')
        yield waitFor(lambda: [e.state for e in store.list()] == ["complete", "complete"])
        get, post = store.list()
        assert get.response is not None and post.response is not None
        self.assertEqual((get.status, get.response.body), (200, b"hello /hi?x=1"))
        self.assertEqual((post.method, post.status, post.request.body), ("POST", 201, b'{"n": 1}'))
        self.assertEqual(post.detailJSON()["response"]["text"], '{\n  "got": {\n    "n": 1\n  }\n}')
        self.assertGreaterEqual(get.duration or 0, 0)

    @inlineCallbacks
    def test_off(self):
        """
        Without an inspector, or with a disabled one, nothing is captured
        and no observer is attached.
        """
        for store, attach in ((RequestStore(reactor), False), (RequestStore(reactor), True)):
            store.enabled = False
            service = serviceFactory(CannedHTTP, canned=RESPONSES)
            host, forward = yield self.tunnel(service, store if attach else None)
            client = _Sender(REQUESTS)
            yield connectLocal(forward.localAddress.port, client)
            received, _ = yield client.done
            self.assertEqual(received, RESPONSES)
            self.assertEqual((len(store), store.captured), (0, 0))

    @inlineCallbacks
    def test_notHTTP(self):
        """
        A tunnel carrying something else is counted as not HTTP and its
        bytes pass unchanged.
        """
        store = RequestStore(reactor)
        host, forward = yield self.tunnel(serviceFactory(EchoServer), store)
        payload = b"\x16\x03\x01" + os.urandom(200_000)
        client = _Sender(payload)
        yield connectLocal(forward.localAddress.port, client)
        received, _ = yield client.done
        self.assertEqual(received, payload)
        self.assertEqual((store.notHTTP, len(store)), (1, 0))

    @inlineCallbacks
    def test_malformedPassesThrough(self):
        """
        A request with a 1 MiB header line and a lying chunked body: the
        inspector gives up, the bytes still pass unchanged.
        """
        store = RequestStore(reactor)
        host, forward = yield self.tunnel(serviceFactory(EchoServer), store)
        payload = (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n"
            + b"GET / HTTP/1.1\r\nX: " + b"a" * (1 << 20) + b"\r\n\r\n"
        )
        client = _Sender(payload)
        yield connectLocal(forward.localAddress.port, client)
        received, _ = yield client.done
        self.assertEqual(received, payload)
        self.assertEqual(store.gaveUp, 1)
        self.assertEqual(store.get(1).state, "aborted")
