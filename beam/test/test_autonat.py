"""
Tests for AutoNAT v2 (L{beam.p2p.autonat}) and the DHT's client/server
switch on the reachability it finds.
"""

from __future__ import annotations

from typing import Any, Callable

from hypothesis import HealthCheck, given, settings, strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from beam.dht.service import KAD_PROTOCOL, KademliaService
from beam.encoding.framing import LengthPrefixedReader, encodeLengthPrefixed
from beam.identity.multiaddr import Multiaddr
from beam.p2p.autonat import AutoNATClient, AutoNATServer, RateLimiter
from beam.p2p.autonat._stream import MessageStream
from beam.p2p.autonat.client import _Attempt, _DialBackReceiver, _DialRequestClient
from beam.p2p.autonat.messages import (
    DIAL_BACK_PROTOCOL,
    DIAL_DATA_CHUNK,
    DIAL_REQUEST_PROTOCOL,
    MAX_ADDRS,
    MAX_MESSAGE,
    AutoNATProtocolError,
    DialDataRequest,
    DialDataResponse,
    DialRequest,
    DialResponse,
    DialStatus,
    ResponseStatus,
    decodeDialBack,
    decodeDialBackResponse,
    decodeMessage,
    encodeDialBack,
    encodeDialBackResponse,
    encodeMessage,
)
from beam.p2p.autonat.server import _DialRequestHandler, sameHost
from beam.p2p.host.addrs import AddressBook
from beam.test.memnodes import MemoryGrid
from beam.test.nodeutil import startNode


def ma(text: str) -> Multiaddr:
    return Multiaddr.fromString(text)


def frames(data: bytes) -> list[Any]:
    """
    The dial-request messages in C{data}.
    """
    return [decodeMessage(raw) for raw in LengthPrefixedReader(MAX_MESSAGE).feed(data)]


# -- messages --------------------------------------------------------------


class MessageTests(SynchronousTestCase):
    """
    The wire format is the spec's, and the decoders accept nothing else.
    """

    def test_roundTrip(self) -> None:
        """
        Every message survives encoding and decoding.
        """
        for message in [
            DialRequest((ma("/ip4/1.2.3.4/tcp/4001").toBytes(), b"junk"), 2**64 - 1),
            DialDataRequest(1, 30_000),
            DialDataResponse(b"\0" * DIAL_DATA_CHUNK),
            DialResponse(ResponseStatus.OK, 3, DialStatus.E_DIAL_ERROR),
            DialResponse(ResponseStatus.E_REQUEST_REJECTED),
        ]:
            self.assertEqual(decodeMessage(encodeMessage(message)), message)
        self.assertEqual(decodeDialBack(encodeDialBack(12345)), 12345)

    def test_wireBytes(self) -> None:
        """
        The encoding is the spec's: C{Message.dialRequest} is field 1, its
        nonce a fixed64 (field 2, wire type 1); C{DialResponse} carries the
        spec's numeric statuses.
        """
        raw = encodeMessage(DialRequest((b"\x04",), 1))
        self.assertEqual(raw, b"\x0a\x0c" + b"\x0a\x01\x04" + b"\x11" + (1).to_bytes(8, "little"))
        raw = encodeMessage(DialResponse(ResponseStatus.OK, 0, DialStatus.OK))
        self.assertEqual(raw, b"\x12\x06" + b"\x08\xc8\x01" + b"\x18\xc8\x01")

    def test_unknownStatusKept(self) -> None:
        """
        A status this version does not know is passed on as its number
        (the client must ignore it, not crash).
        """
        raw = b"\x12\x02\x08\x37"
        self.assertEqual(decodeMessage(raw), DialResponse(55, 0, 0))

    def test_malformed(self) -> None:
        """
        Garbage, an empty message, an oversized one and a request with too
        many addresses are errors.
        """
        for raw in [b"\xff\xff", b"", b"\x0a" + b"\x00" * MAX_MESSAGE]:
            self.assertRaises(AutoNATProtocolError, decodeMessage, raw)
        many = encodeMessage(DialRequest((b"\x04",) * (MAX_ADDRS + 1), 1))
        self.assertRaises(AutoNATProtocolError, decodeMessage, many)

    @settings(deadline=None, max_examples=400, suppress_health_check=[HealthCheck.too_slow])
    @given(st.binary(max_size=300))
    def test_fuzzDecoders(self, raw: bytes) -> None:
        """
        Whatever bytes arrive, the decoders return a value or raise
        L{AutoNATProtocolError}, nothing else.
        """
        for decode in (decodeMessage, decodeDialBack, decodeDialBackResponse):
            try:
                decode(raw)
            except AutoNATProtocolError:
                pass

    @settings(deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow])
    @given(st.binary(max_size=200))
    def test_fuzzServerStream(self, raw: bytes) -> None:
        """
        Arbitrary bytes on a dial-request stream either wait for more, get
        an answer, or reset the stream; the dialer is asked at most once.
        """
        fixture = _ServerFixture(self)
        handler, transport = fixture.stream()
        handler.dataReceived(raw)
        self.assertLessEqual(len(fixture.dialer.calls), 1)


# -- the server, sans-IO ------------------------------------------------------


class _FakeConn:
    def __init__(self, peer: Any, observed: str, limited: bool = False) -> None:
        self.remotePeer = peer
        self.observedRemote = ma(observed)
        self.remoteAddr = self.observedRemote
        self.limited = limited


class _StreamTransport(StringTransport):
    def __init__(self, conn: _FakeConn) -> None:
        super().__init__()
        self.connection = conn
        self.aborted = False

    def abortConnection(self) -> None:
        self.aborted = True
        self.loseConnection()


class _FakeDialer:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, Multiaddr, int]] = []
        self.results: list[Deferred[DialStatus]] = []

    def canDial(self, addr: Multiaddr) -> bool:
        return addr.tcpTarget() is not None or addr.protocols()[:1] == ["memory"]

    def dialBack(self, peer: Any, addr: Multiaddr, nonce: int) -> Deferred[DialStatus]:
        self.calls.append((peer, addr, nonce))
        d: Deferred[DialStatus] = Deferred()
        self.results.append(d)
        return d


class _FakeNode:
    def __init__(self, clock: Clock) -> None:
        self.reactor = clock
        self.handlers: dict[str, Any] = {}

    def setStreamHandler(self, pid: str, handler: Any) -> None:
        self.handlers[pid] = handler

    def removeStreamHandler(self, pid: str) -> None:
        self.handlers.pop(pid, None)

    def hasStreamHandler(self, pid: str) -> bool:
        return pid in self.handlers


class _ServerFixture:
    def __init__(self, testCase: SynchronousTestCase, **kw: Any) -> None:
        self.clock = Clock()
        self.dialer = _FakeDialer()
        self.server = AutoNATServer(_FakeNode(self.clock), dialer=self.dialer, **kw)  # type: ignore[arg-type]

    def stream(self, peer: Any = "peer-a", observed: str = "/ip4/8.8.8.8/tcp/5555",
               limited: bool = False) -> tuple[_DialRequestHandler, _StreamTransport]:
        handler = _DialRequestHandler(self.server)
        transport = _StreamTransport(_FakeConn(peer, observed, limited))
        handler.makeConnection(transport)
        return handler, transport

    def request(self, addrs: list[str], nonce: int = 7, **kw: Any) -> tuple[_DialRequestHandler, _StreamTransport]:
        handler, transport = self.stream(**kw)
        raw = DialRequest(tuple(ma(a).toBytes() for a in addrs), nonce)
        handler.dataReceived(encodeLengthPrefixed(encodeMessage(raw)))
        return handler, transport


class ServerTests(SynchronousTestCase):
    """
    The server dials the first address it may, asks for dial data before
    dialling another IP than the client's, refuses SSRF targets, and is
    rate limited.
    """

    def test_sameIPDialledAtOnce(self) -> None:
        """
        An address on the client's own IP is dialled without dial data; the
        response names its index and the dial's status, and the stream is
        closed.
        """
        f = _ServerFixture(self)
        handler, transport = f.request(["/ip4/8.8.8.8/tcp/4001"], nonce=99)
        self.assertEqual(f.dialer.calls, [("peer-a", ma("/ip4/8.8.8.8/tcp/4001"), 99)])
        self.assertEqual(transport.value(), b"")
        f.dialer.results[0].callback(DialStatus.OK)
        self.assertEqual(frames(transport.value()), [DialResponse(ResponseStatus.OK, 0, DialStatus.OK)])
        self.assertTrue(transport.disconnecting)
        self.assertFalse(transport.aborted)

    def test_firstWillingAddress(self) -> None:
        """
        Addresses the server will not dial are skipped; the first it will
        is the one dialled, and only that one.
        """
        f = _ServerFixture(self)
        f.request(["/ip4/10.0.0.5/tcp/1", "/dns4/example.com/tcp/1", "/ip4/0.0.0.0/tcp/1",
                   "/ip4/8.8.8.8/tcp/0", "/ip4/8.8.8.8/tcp/4001", "/ip4/8.8.8.8/tcp/4002"])
        self.assertEqual([c[1] for c in f.dialer.calls], [ma("/ip4/8.8.8.8/tcp/4001")])

    def test_otherIPNeedsDialData(self) -> None:
        """
        An address on another IP than the client's is dialled only after
        the client sent the dial data asked for (amplification protection).
        """
        f = _ServerFixture(self, dialDataBytes=10_000)
        handler, transport = f.request(["/ip4/10.0.0.5/tcp/1", "/ip4/1.1.1.1/tcp/4001"])
        self.assertEqual(frames(transport.value()), [DialDataRequest(1, 10_000)])
        self.assertEqual(f.dialer.calls, [])
        chunk = encodeLengthPrefixed(encodeMessage(DialDataResponse(b"\0" * 4096)))
        handler.dataReceived(chunk * 2)
        self.assertEqual(f.dialer.calls, [])
        handler.dataReceived(chunk)
        self.assertEqual([c[1] for c in f.dialer.calls], [ma("/ip4/1.1.1.1/tcp/4001")])

    def test_clientWithoutDialDataNeverDialled(self) -> None:
        """
        A client that never pays is cut off after the stream timeout and
        the other IP is never dialled.
        """
        f = _ServerFixture(self)
        handler, transport = f.request(["/ip4/1.1.1.1/tcp/4001"])
        f.clock.advance(f.server.streamTimeout)
        self.assertTrue(transport.aborted)
        self.assertEqual(f.dialer.calls, [])
        self.assertEqual(f.server.limiter.active, 0)

    def test_ssrfRefused(self) -> None:
        """
        A public client cannot make the server dial loopback, private,
        unspecified, reserved or relay addresses, or DNS names: the answer
        is E_DIAL_REFUSED and nothing is dialled.
        """
        f = _ServerFixture(self)
        targets = ["/ip4/127.0.0.1/tcp/22", "/ip4/192.168.1.1/tcp/80", "/ip4/10.1.2.3/tcp/6379",
                   "/ip6/::1/tcp/22", "/ip4/0.0.0.0/tcp/1", "/ip4/240.0.0.1/tcp/1", "/ip4/224.0.0.1/tcp/1",
                   "/dns4/localhost/tcp/22", "/dns4/intranet.example/tcp/80",
                   "/ip4/8.8.8.8/tcp/1/p2p-circuit", "/memory/5"]
        handler, transport = f.request(targets)
        self.assertEqual(f.dialer.calls, [])
        self.assertEqual(frames(transport.value()), [DialResponse(ResponseStatus.E_DIAL_REFUSED)])

    def test_loopbackForLoopbackClient(self) -> None:
        """
        A client on loopback may have its loopback address checked (that
        is what the tests and a local lab do), but not a private one.
        """
        f = _ServerFixture(self)
        f.request(["/ip4/192.168.1.1/tcp/80", "/ip4/127.0.0.1/tcp/4001"], observed="/ip4/127.0.0.1/tcp/5")
        self.assertEqual([c[1] for c in f.dialer.calls], [ma("/ip4/127.0.0.1/tcp/4001")])

    def test_relayedRejected(self) -> None:
        """
        A request over a relayed connection is rejected: the observed
        address would be the relay's.
        """
        f = _ServerFixture(self)
        handler, transport = f.request(["/ip4/8.8.8.8/tcp/4001"], limited=True)
        self.assertEqual(frames(transport.value()), [DialResponse(ResponseStatus.E_REQUEST_REJECTED)])
        self.assertEqual(f.dialer.calls, [])

    def test_rateLimited(self) -> None:
        """
        Past the per-peer rate, requests are refused with
        E_REQUEST_REJECTED; a minute later they are served again.
        """
        f = _ServerFixture(self, peerPerMinute=2)
        for _ in range(2):
            f.request(["/ip4/8.8.8.8/tcp/4001"])
            f.dialer.results[-1].callback(DialStatus.OK)
        handler, transport = f.request(["/ip4/8.8.8.8/tcp/4001"])
        self.assertEqual(frames(transport.value()), [DialResponse(ResponseStatus.E_REQUEST_REJECTED)])
        self.assertEqual(len(f.dialer.calls), 2)
        f.clock.advance(61)
        f.request(["/ip4/8.8.8.8/tcp/4001"])
        self.assertEqual(len(f.dialer.calls), 3)

    def test_oneDialPerPeerAndBoundedConcurrency(self) -> None:
        """
        A peer gets one dial back at a time, and at most C{maxConcurrent}
        run at once, even if clients drop their streams mid-dial.
        """
        f = _ServerFixture(self, maxConcurrent=2)
        handler, transport = f.request(["/ip4/8.8.8.8/tcp/4001"])
        handler, second = f.request(["/ip4/8.8.8.8/tcp/4001"])
        self.assertEqual(frames(second.value()), [DialResponse(ResponseStatus.E_REQUEST_REJECTED)])
        handler, t = f.request(["/ip4/9.9.9.9/tcp/1"], peer="b", observed="/ip4/9.9.9.9/tcp/2")
        t.loseConnection()
        handler.connectionLost()
        handler, third = f.request(["/ip4/7.7.7.7/tcp/1"], peer="c", observed="/ip4/7.7.7.7/tcp/2")
        self.assertEqual(frames(third.value()), [DialResponse(ResponseStatus.E_REQUEST_REJECTED)])
        self.assertEqual(len(f.dialer.calls), 2)
        f.dialer.results[1].callback(DialStatus.E_DIAL_ERROR)
        f.request(["/ip4/7.7.7.7/tcp/1"], peer="c", observed="/ip4/7.7.7.7/tcp/2")
        self.assertEqual(len(f.dialer.calls), 3)

    def test_globalLimit(self) -> None:
        """
        The global rate holds across peers.
        """
        limiter = RateLimiter(Clock(), globalPerMinute=3, peerPerMinute=3)
        for peer in "abc":
            self.assertIsNone(limiter.acquire(peer))
            limiter.release(peer)
        self.assertIsNotNone(limiter.acquire("d"))

    def test_malformedResets(self) -> None:
        """
        Garbage, an oversized message, a message out of turn, or closing
        before the request resets the stream without dialling.
        """
        f = _ServerFixture(self)
        for data in [b"\x03\xff\xff\xff", encodeLengthPrefixed(b"\x0a" * (MAX_MESSAGE + 1))[:20],
                     encodeLengthPrefixed(encodeMessage(DialDataResponse(b"x")))]:
            handler, transport = f.stream()
            handler.dataReceived(data)
            self.assertTrue(transport.aborted, data)
        handler, transport = f.stream()
        handler.readConnectionLost()
        self.assertTrue(transport.aborted)
        self.assertEqual(f.dialer.calls, [])

    def test_sameHost(self) -> None:
        """
        C{sameHost} compares IPs (IPv4-mapped IPv6 as IPv4), and treats
        in-process C{/memory} addresses as one host.
        """
        self.assertTrue(sameHost(ma("/ip4/1.2.3.4/tcp/1"), ma("/ip4/1.2.3.4/tcp/9")))
        self.assertTrue(sameHost(ma("/ip6/::ffff:1.2.3.4/tcp/1"), ma("/ip4/1.2.3.4/tcp/9")))
        self.assertFalse(sameHost(ma("/ip4/1.2.3.5/tcp/1"), ma("/ip4/1.2.3.4/tcp/9")))
        self.assertFalse(sameHost(ma("/dns4/a.example/tcp/1"), ma("/ip4/1.2.3.4/tcp/9")))
        self.assertTrue(sameHost(ma("/memory/3"), ma("/memory/9")))


# -- the client's request stream, sans-IO ------------------------------------------


class ClientStreamTests(SynchronousTestCase):
    """
    The client pays dial data only as the spec allows.
    """

    def setUp(self) -> None:
        self.node = _FakeNode(Clock())
        book = AddressBook(lambda: [])
        self.client = AutoNATClient(self.node, addresses=book, maxDialData=50_000)
        attempt = _Attempt("server", (ma("/ip4/1.2.3.4/tcp/1"), ma("/ip4/1.2.3.5/tcp/1")), 5)  # type: ignore[arg-type]
        self.proto = _DialRequestClient(self.client, attempt)
        self.transport = _StreamTransport(_FakeConn("server", "/ip4/9.9.9.9/tcp/1"))
        self.proto.makeConnection(self.transport)
        self.assertEqual(frames(self.transport.value()), [DialRequest(tuple(a.toBytes() for a in attempt.addrs), 5)])
        self.transport.clear()

    def test_paysDialData(self) -> None:
        """
        Asked for dial data for an address we sent, the client sends that
        many bytes in chunks of at most 4096.
        """
        self.proto.dataReceived(encodeLengthPrefixed(encodeMessage(DialDataRequest(1, 10_000))))
        sent = frames(self.transport.value())
        self.assertEqual(sum(len(m.data) for m in sent), 10_000)
        self.assertTrue(all(isinstance(m, DialDataResponse) and len(m.data) <= DIAL_DATA_CHUNK for m in sent))

    def test_refusesBadDialData(self) -> None:
        """
        Dial data for an address we did not send, more than we pay, or a
        second demand resets the stream and fails the request.
        """
        for first, second in [(DialDataRequest(2, 10), None), (DialDataRequest(0, 50_001), None),
                              (DialDataRequest(0, 10), DialDataRequest(0, 10))]:
            self.setUp()
            self.proto.dataReceived(encodeLengthPrefixed(encodeMessage(first)))
            if second is not None:
                self.proto.dataReceived(encodeLengthPrefixed(encodeMessage(second)))
            self.assertTrue(self.transport.aborted)
            self.failureResultOf(self.proto.result, AutoNATProtocolError)

    @settings(deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow])
    @given(st.binary(max_size=200))
    def test_fuzzClientStreams(self, raw: bytes) -> None:
        """
        Arbitrary bytes from a server on a request stream or a dial-back
        stream end in a response, a reset, or waiting; never an exception,
        and never more dial data than the cap.
        """
        self.setUp()
        self.proto.result.addErrback(lambda f: None)
        self.proto.dataReceived(raw)
        self.assertLessEqual(len(self.transport.value()), 60_000)
        receiver = _DialBackReceiver(self.client)
        transport = _StreamTransport(_FakeConn("server", "/ip4/9.9.9.9/tcp/1"))
        receiver.makeConnection(transport)
        receiver.dataReceived(raw)
        self.client.reactor.advance(self.client.dialBackTimeout)

    def test_dialBackNoted(self) -> None:
        """
        A dial back carrying the nonce of a request in flight is noted with
        the connection's local address, and acknowledged with OK.
        """
        attempt = _Attempt("server", (ma("/ip4/1.2.3.4/tcp/1"),), 77)  # type: ignore[arg-type]
        self.client._pending[77] = attempt
        receiver = _DialBackReceiver(self.client)
        conn = _FakeConn("dialer", "/ip4/9.9.9.9/tcp/1")
        conn.localAddr = ma("/ip4/10.0.0.2/tcp/4001")  # type: ignore[attr-defined]
        transport = _StreamTransport(conn)
        receiver.makeConnection(transport)
        receiver.dataReceived(encodeLengthPrefixed(encodeDialBack(77)))
        self.assertEqual(attempt.dialedBackOn, ma("/ip4/10.0.0.2/tcp/4001"))
        self.assertEqual(LengthPrefixedReader(64).feed(transport.value()), [encodeDialBackResponse()])
        self.assertTrue(transport.disconnecting)


# -- whole nodes on the memory grid ----------------------------------------------


class _MemoryBook(AddressBook):
    """
    An address book whose C{/memory} listen addresses are candidates (the
    real one only asks about public IP addresses), plus any extra ones.
    """

    def __init__(self, listen: Callable[[], list[Multiaddr]], extra: tuple[Multiaddr, ...] = ()) -> None:
        super().__init__(listen)
        self.extra = list(extra)

    def candidates(self) -> list[Multiaddr]:
        out = [a.withoutPeerID() for a in self.listenAddrs()] + self.extra
        confirmed = self.confirmed()
        return [a for a in out if a not in confirmed and a not in self._rejected]


def _scriptedServer(node: Any, answer: Callable[[DialRequest], DialResponse]) -> list[DialRequest]:
    """
    A fake AutoNAT server on C{node}: answers every request with
    C{answer(request)} without dialling anyone.
    """
    seen: list[DialRequest] = []

    class Scripted(MessageStream):
        def messageReceived(self, raw: bytes) -> None:
            request = decodeMessage(raw)
            assert isinstance(request, DialRequest)
            seen.append(request)
            self.send(encodeMessage(answer(request)))
            self.finish()

    node.setStreamHandler(DIAL_REQUEST_PROTOCOL, Scripted)
    return seen


class GridTests(SynchronousTestCase):
    """
    Client and server on whole nodes, over the in-memory transport.
    """

    def setUp(self) -> None:
        self.grid = MemoryGrid(self)

    def client(self, extra: tuple[Multiaddr, ...] = (), **kw: Any) -> tuple[Any, AutoNATClient, _MemoryBook]:
        node = self.grid.node()
        book = _MemoryBook(lambda: list(node.listenAddrs), extra)
        node.addresses = book
        client = AutoNATClient(node, addresses=book, **kw)
        client.setServiceParent(node)
        return node, client, book

    def server(self, **kw: Any) -> tuple[Any, AutoNATServer]:
        node = self.grid.node()
        server = AutoNATServer(node, **kw)
        server.setServiceParent(node)
        return node, server

    def test_confirmsReachableAddress(self) -> None:
        """
        Connecting to an AutoNAT server is enough: the client asks, the
        server dials it back on a fresh connection from another peer ID,
        the nonce comes back, and the address is confirmed: the node is
        public.
        """
        snode, server = self.server()
        cnode, client, book = self.client()
        conn = self.grid.result(cnode.connect(self.grid.addr(snode)))
        self.grid.settle()
        self.assertEqual(book.confirmed(), [cnode.listenAddrs[0]])
        self.assertEqual(book.reachability, "public")
        self.assertEqual(server.served, {"OK/OK": 1})
        self.assertFalse(conn.closed)
        # The dial back came from the dialer's own identity, not the server's.
        dialer = server.dialer.node  # type: ignore[attr-defined]
        self.assertNotEqual(dialer.peerID, snode.peerID)
        self.grid.advance(60)
        self.assertEqual(dialer.liveConnections(), [])

    def test_unreachableRejectedByTwoServers(self) -> None:
        """
        An address nobody listens on: one server's E_DIAL_ERROR is not
        enough, a second one's rejects it and the node is private.
        """
        dead = ma(f"/memory/{self.grid.network.allocate()}")
        s1, _ = self.server()
        s2, _ = self.server()
        cnode, client, book = self.client(extra=(dead,))
        # The listen address is confirmed by the first server; the dead
        # one is what is left to ask about.
        self.grid.result(cnode.connect(self.grid.addr(s1)))
        self.grid.settle()
        self.assertEqual(book.candidates(), [dead])
        self.grid.result(client.check())
        self.assertEqual(book.candidates(), [dead])
        self.grid.result(cnode.connect(self.grid.addr(s2)))
        self.grid.settle()
        self.assertEqual(book.candidates(), [])
        self.assertEqual(book.confirmed(), [cnode.listenAddrs[0]])

    def test_privateWithFakeServers(self) -> None:
        """
        Two servers that cannot dial the only candidate make the node
        private; a server that claims success without delivering the nonce
        is not believed.
        """
        liar = self.grid.node()
        _scriptedServer(liar, lambda r: DialResponse(ResponseStatus.OK, 0, DialStatus.OK))
        no1, no2 = self.grid.node(), self.grid.node()
        for n in (no1, no2):
            _scriptedServer(n, lambda r: DialResponse(ResponseStatus.OK, 0, DialStatus.E_DIAL_ERROR))
        cnode, client, book = self.client()
        self.grid.result(cnode.connect(self.grid.addr(liar)))
        self.grid.settle()
        self.assertEqual(book.reachability, "unknown")
        self.assertEqual(book.confirmed(), [])
        self.grid.result(cnode.connect(self.grid.addr(no1)))
        self.grid.settle()
        self.assertEqual(book.reachability, "unknown")
        self.grid.result(cnode.connect(self.grid.addr(no2)))
        self.grid.settle()
        self.assertEqual(book.reachability, "private")

    def test_askedServersAndPeriodicRecheck(self) -> None:
        """
        At most three servers per round, none asked twice about an address
        before the next periodic round, which asks again (confirmed
        addresses too).
        """
        seen: list[list[DialRequest]] = []
        cnode, client, book = self.client(interval=100.0)
        for _ in range(5):
            n = self.grid.node()
            seen.append(_scriptedServer(n, lambda r: DialResponse(ResponseStatus.E_DIAL_REFUSED)))
            self.grid.result(cnode.connect(self.grid.addr(n)))
        self.grid.settle()
        self.assertEqual(sorted(len(s) for s in seen), [1, 1, 1, 1, 1])
        self.grid.result(client.check())
        self.assertEqual(sum(len(s) for s in seen), 5)
        self.grid.advance(100)
        self.assertEqual(sum(len(s) for s in seen), 8)

    def test_requestTimesOut(self) -> None:
        """
        A server that never answers costs one timed-out request, and no
        verdict.
        """
        silent = self.grid.node()
        silent.setStreamHandler(DIAL_REQUEST_PROTOCOL, Protocol)
        cnode, client, book = self.client(requestTimeout=5.0)
        self.grid.result(cnode.connect(self.grid.addr(silent)))
        self.grid.advance(6)
        self.assertEqual(client.asked, 1)
        self.assertEqual(client._pending, {})
        self.assertEqual(book.reachability, "unknown")

    def test_stopLeavesNothing(self) -> None:
        """
        Stopping client and server mid-request unregisters their protocols
        and leaves no timer (the grid checks the clock at the end).
        """
        silent = self.grid.node()
        silent.setStreamHandler(DIAL_REQUEST_PROTOCOL, Protocol)
        cnode, client, book = self.client()
        snode, server = self.server()
        self.grid.result(cnode.connect(self.grid.addr(silent)))
        client.stopService()
        self.grid.result(server.stopService())
        self.assertFalse(cnode.hasStreamHandler(DIAL_BACK_PROTOCOL))
        self.assertFalse(snode.hasStreamHandler(DIAL_REQUEST_PROTOCOL))


class DHTModeTests(SynchronousTestCase):
    """
    The DHT follows AutoNAT: client mode when private, server when public,
    today's choice while unknown.
    """

    def test_switch(self) -> None:
        """
        A listening node serves the DHT while reachability is unknown;
        private removes the protocol (a connected peer's routing table
        drops it after identify push); public brings it back.
        """
        grid = MemoryGrid(self)
        node, peer = grid.node(), grid.node()
        book = AddressBook(lambda: list(node.listenAddrs))
        node.addresses = book
        dht = KademliaService(grid.clock, node, None)
        dht.setServiceParent(node)
        peerDHT = KademliaService(grid.clock, peer, None)
        peerDHT.setServiceParent(peer)
        self.assertTrue(node.hasStreamHandler(KAD_PROTOCOL))
        grid.result(peer.connect(grid.addr(node)))
        grid.advance(1)
        self.assertIn(node.peerID, peerDHT.kad.routingTable)
        book.setReachability("private")
        grid.advance(1)
        self.assertFalse(node.hasStreamHandler(KAD_PROTOCOL))
        self.assertEqual(dht.status().mode, "client")
        self.assertNotIn(node.peerID, peerDHT.kad.routingTable)
        # Lookups still work as a client: the peer answers.
        self.assertEqual([i.peer for i in grid.result(dht.closestPeers(b"x"))], [peer.peerID])
        book.setReachability("public")
        grid.advance(1)
        self.assertTrue(node.hasStreamHandler(KAD_PROTOCOL))
        self.assertEqual(dht.status().mode, "server")
        self.assertIn(node.peerID, peerDHT.kad.routingTable)

    def test_privateAtStart(self) -> None:
        """
        A node already known to be private starts as a DHT client; an
        explicit mode is left alone.
        """
        grid = MemoryGrid(self)
        node = grid.node()
        book = AddressBook(lambda: list(node.listenAddrs))
        book.setReachability("private")
        node.addresses = book
        dht = KademliaService(grid.clock, node, None)
        dht.setServiceParent(node)
        self.assertFalse(node.hasStreamHandler(KAD_PROTOCOL))
        forced = grid.node()
        forced.addresses = book
        KademliaService(grid.clock, forced, None, mode="server").setServiceParent(forced)
        self.assertTrue(forced.hasStreamHandler(KAD_PROTOCOL))


# -- loopback TCP -------------------------------------------------------------------


class _LoopbackBook(AddressBook):
    """
    Loopback listen addresses are candidates (the real book asks only
    about public ones).
    """

    def candidates(self) -> list[Multiaddr]:
        confirmed = self.confirmed()
        return [a for a in self.listenAddrs() if a not in confirmed and a not in self._rejected]


class TCPTests(TestCase):
    """
    The real thing on loopback TCP: a fresh dial back, and dial data for
    an address on another IP than the one the client connects from.
    """

    timeout = 30

    @inlineCallbacks
    def test_dialDataThenDialBack(self) -> None:
        """
        The client listens on 127.0.0.2 and connects from 127.0.0.1: the
        server asks for dial data, the client pays, the server dials
        127.0.0.2 from its separate dialer, and the address is confirmed.
        """
        snode = yield startNode(self)
        server = AutoNATServer(snode, dialDataBytes=30_000)
        server.setServiceParent(snode)
        self.addCleanup(server.stopService)
        cnode = yield startNode(self, listen=("/ip4/127.0.0.2/tcp/0",))
        book = _LoopbackBook(lambda: list(cnode.listenAddrs))
        client = AutoNATClient(cnode, addresses=book)
        client.setServiceParent(cnode)
        self.addCleanup(client.stopService)
        changed: Deferred[None] = Deferred()
        book.onChange(lambda: None if changed.called or not book.confirmed() else changed.callback(None))
        yield cnode.connect(snode.listenAddrs[0].withPeerID(snode.peerID))
        yield changed.addTimeout(20, reactor)
        self.assertEqual(book.confirmed(), [cnode.listenAddrs[0]])
        self.assertEqual(server.served, {"dial data asked": 1, "OK/OK": 1})
        self.assertEqual(book.reachability, "public")

    @inlineCallbacks
    def test_serverIdentity(self) -> None:
        """
        The dialer node is separate: its own identity, listening nowhere.
        """
        snode = yield startNode(self)
        server = AutoNATServer(snode)
        server.setServiceParent(snode)
        self.addCleanup(server.stopService)
        dialer = server.dialer.node  # type: ignore[attr-defined]
        self.assertNotEqual(dialer.peerID, snode.peerID)
        self.assertEqual(dialer.listenAddrs, [])
        self.assertIsNot(dialer.transports[0], snode.transports[0])

