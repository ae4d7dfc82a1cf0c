"""
Tests for L{beam.tunnel.udp}: datagrams over tunnel streams.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost, InvalidAddressError
from twisted.internet.interfaces import IConsumer, IPushProducer, ITransport
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from beam.p2p.muxer.yamux import YamuxSession, YamuxStream
from beam.testing import Pump
from beam.tunnel.udp import (
    MAX_DATAGRAM,
    DatagramFramer,
    DatagramTooLarge,
    UDPClientForwarder,
    UDPHostProtocol,
    UDPStats,
    encodeDatagram,
)

SERVICE = ("127.0.0.1", 5353)
ALICE = ("127.0.0.1", 40001)
BOB = ("127.0.0.1", 40002)


class FramingTests(SynchronousTestCase):
    """
    L{encodeDatagram} and L{DatagramFramer}.
    """

    def test_layout(self) -> None:
        """
        A frame is the 2-byte big-endian length and the datagram.
        """
        self.assertEqual(encodeDatagram(b"abc"), b"\x00\x03abc")
        self.assertEqual(encodeDatagram(b"x" * 258)[:2], b"\x01\x02")

    def test_emptyDatagram(self) -> None:
        """
        An empty datagram is a valid two-byte frame and decodes as such.
        """
        self.assertEqual(encodeDatagram(b""), b"\x00\x00")
        self.assertEqual(DatagramFramer().feed(b"\x00\x00\x00\x01z"), [b"", b"z"])

    def test_largest(self) -> None:
        """
        65535 bytes is the largest datagram; one more is refused with our
        error.
        """
        big = b"q" * MAX_DATAGRAM
        self.assertEqual(DatagramFramer().feed(encodeDatagram(big)), [big])
        e = self.assertRaises(DatagramTooLarge, encodeDatagram, big + b"q")
        self.assertIsInstance(e, ValueError)

    def test_byteAtATimeBounded(self) -> None:
        """
        Fed one byte at a time, datagrams come out exactly when complete,
        and the buffer never holds more than one partial frame.
        """
        wire = encodeDatagram(b"a" * 35000) + encodeDatagram(b"b" * MAX_DATAGRAM)
        framer = DatagramFramer()
        out = []
        biggest = 0
        for i in range(len(wire)):
            out.extend(framer.feed(wire[i : i + 1]))
            biggest = max(biggest, framer.buffered)
        self.assertEqual(out, [b"a" * 35000, b"b" * MAX_DATAGRAM])
        self.assertEqual(framer.buffered, 0)
        self.assertLessEqual(biggest, MAX_DATAGRAM + 1)


@settings(deadline=None, max_examples=200)
@given(
    st.lists(st.binary(max_size=600), max_size=30),
    st.lists(st.integers(min_value=1, max_value=700), min_size=1, max_size=10),
)
def test_framingRoundTrip(datagrams: list[bytes], cuts: list[int]) -> None:
    """
    Any datagrams, framed and fed back in pieces of any sizes, come out
    unchanged and in order.
    """
    wire = b"".join(encodeDatagram(d) for d in datagrams)
    framer = DatagramFramer()
    out: list[bytes] = []
    pos = 0
    i = 0
    while pos < len(wire):
        step = cuts[i % len(cuts)]
        out.extend(framer.feed(wire[pos : pos + step]))
        pos += step
        i += 1
    assert out == datagrams
    assert framer.buffered == 0


class FakeUDPPort:
    """
    A UDP port of L{FakeUDPReactor}: records what is written, and lets a
    test deliver datagrams and ICMP refusals.
    """

    def __init__(self, reactor: FakeUDPReactor, number: int, protocol: Any,
                 interface: str, maxPacketSize: int) -> None:
        self.reactor = reactor
        self.number = number
        self.protocol = protocol
        self.interface = interface
        self.maxPacketSize = maxPacketSize
        self.written: list[tuple[bytes, Any]] = []
        self.connectedTo: tuple[str, int] | None = None
        self.stopped = False
        self.refuse = False
        self.failSend = False
        protocol.makeConnection(self)

    def write(self, datagram: bytes, addr: Any = None) -> None:
        if self.failSend:
            raise OSError(105, "No buffer space available")
        if self.refuse and self.connectedTo:
            self.protocol.connectionRefused()
            return
        self.written.append((datagram, addr))

    def connect(self, host: str, port: int) -> None:
        if not isIPAddress(host) and not isIPv6Address(host):
            raise InvalidAddressError(host, "not an IPv4 or IPv6 address.")
        self.connectedTo = (host, port)

    def stopListening(self) -> Deferred[None]:
        self.stopped = True
        self.protocol.doStop()
        return succeed(None)

    def getHost(self) -> IPv4Address:
        return IPv4Address("UDP", self.interface or "0.0.0.0", self.number)

    def receive(self, datagram: bytes, addr: Any) -> None:
        self.protocol.datagramReceived(datagram, addr)

    def take(self) -> list[tuple[bytes, Any]]:
        out, self.written = self.written, []
        return out


class FakeUDPReactor(Clock):
    """
    A L{Clock} that also provides C{listenUDP} with L{FakeUDPPort}s.
    """

    def __init__(self) -> None:
        super().__init__()
        self.ports: list[FakeUDPPort] = []

    def listenUDP(self, port: int, protocol: Any, interface: str = "",
                  maxPacketSize: int = 8192) -> FakeUDPPort:
        p = FakeUDPPort(self, port or 30000 + len(self.ports), protocol, interface, maxPacketSize)
        self.ports.append(p)
        return p


class Rig:
    """
    A client forwarder and host protocols joined by yamux streams over a
    L{Pump}, on one L{FakeUDPReactor}.

    @ivar pending: sessions whose stream the test has not opened yet (with
        C{autoOpen=False}).
    """

    def __init__(self, autoOpen: bool = True, hostIdle: float = 60.0, **kw: Any) -> None:
        self.reactor = FakeUDPReactor()
        self.autoOpen = autoOpen
        self.hostIdle = hostIdle
        self.hostStats = UDPStats()
        self.hosts: list[UDPHostProtocol] = []
        self.services: list[FakeUDPPort] = []
        self.cancelled: list[Any] = []
        self.hostStreams: list[YamuxStream] = []
        self.clientSession = YamuxSession(True, lambda s: None, self.reactor)
        self.serverSession = YamuxSession(False, self._accepted, self.reactor)
        self.pump = Pump(self.clientSession, self.serverSession).connect()
        self.pending: list[tuple[Any, Deferred[Any]]] = []
        self.forwarder = UDPClientForwarder(self.reactor, self._open, **kw)
        self.port: FakeUDPPort = self.forwarder.startListening()  # type: ignore[assignment]

    def _accepted(self, stream: YamuxStream) -> None:
        proto = UDPHostProtocol(self.reactor, *SERVICE, idleTimeout=self.hostIdle,
                                stats=self.hostStats)
        self.hosts.append(proto)
        self.hostStreams.append(stream)
        stream.setProtocol(proto)
        self.services.append(proto._listening)  # type: ignore[arg-type]

    def _open(self, proto: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred(lambda _: self.cancelled.append(proto))
        self.pending.append((proto, d))
        if self.autoOpen:
            self.accept()
        return d

    def accept(self, i: int = 0) -> YamuxStream:
        proto, d = self.pending.pop(i)
        stream = self.clientSession.openStream()
        stream.setProtocol(proto)
        d.callback(proto)
        return stream

    def send(self, datagram: bytes, addr: tuple[str, int]) -> None:
        self.port.receive(datagram, addr)
        self.pump.flush()

    def service(self, i: int) -> FakeUDPPort:
        return self.services[i]


class ForwarderTests(SynchronousTestCase):
    """
    L{UDPClientForwarder} and L{UDPHostProtocol} joined by yamux streams.
    """

    def test_listens(self) -> None:
        """
        The forwarder listens where asked, reading datagrams up to 65535
        bytes (Twisted's default would truncate at 8192).
        """
        rig = Rig(bind="127.0.0.1", port=5000)
        self.assertEqual(rig.port.number, 5000)
        self.assertEqual(rig.port.interface, "127.0.0.1")
        self.assertEqual(rig.port.maxPacketSize, MAX_DATAGRAM)

    def test_sessionPerClient(self) -> None:
        """
        Each client address gets its own stream and its own connected
        socket to the service; replies go back only to their own client.
        """
        rig = Rig()
        rig.send(b"from alice", ALICE)
        rig.send(b"from bob", BOB)
        rig.send(b"alice again", ALICE)
        self.assertEqual(len(rig.hosts), 2)
        self.assertEqual(set(rig.forwarder.sessions), {ALICE, BOB})
        alice, bob = rig.service(0), rig.service(1)
        self.assertEqual(alice.connectedTo, SERVICE)
        self.assertEqual(alice.maxPacketSize, MAX_DATAGRAM)
        self.assertEqual(alice.take(), [(b"from alice", None), (b"alice again", None)])
        self.assertEqual(bob.take(), [(b"from bob", None)])
        alice.receive(b"to alice", SERVICE)
        bob.receive(b"to bob", SERVICE)
        rig.pump.flush()
        self.assertEqual(rig.port.take(), [(b"to alice", ALICE), (b"to bob", BOB)])
        stats = rig.forwarder.stats
        self.assertEqual((stats.sessionsActive, stats.sessionsTotal), (2, 2))
        self.assertEqual((stats.datagramsToStream, stats.bytesToStream), (3, 29))
        self.assertEqual((stats.datagramsFromStream, stats.bytesFromStream), (2, 14))
        self.assertEqual(rig.hostStats.datagramsFromStream, 3)
        self.assertEqual(rig.hostStats.datagramsToStream, 2)
        self.assertEqual(rig.hostStats.sessionsActive, 2)

    def test_largeAndEmptyDatagrams(self) -> None:
        """
        A 65535-byte datagram and an empty one cross both ways intact.
        """
        rig = Rig()
        big = bytes(range(256)) * 255 + b"x" * 255
        rig.send(big, ALICE)
        rig.send(b"", ALICE)
        self.assertEqual(rig.service(0).take(), [(big, None), (b"", None)])
        rig.service(0).receive(big, SERVICE)
        rig.service(0).receive(b"", SERVICE)
        rig.pump.flush()
        self.assertEqual(rig.port.take(), [(big, ALICE), (b"", ALICE)])

    def test_queuedUntilOpen(self) -> None:
        """
        Datagrams that arrive while the stream is being opened are sent,
        in order, once it is open; the open is asked for once.
        """
        rig = Rig(autoOpen=False)
        for i in range(3):
            rig.send(b"%d" % i, ALICE)
        self.assertEqual(len(rig.pending), 1)
        self.assertEqual(rig.hosts, [])
        rig.accept()
        rig.pump.flush()
        self.assertEqual([d for d, _ in rig.service(0).take()], [b"0", b"1", b"2"])

    def test_queueBounded(self) -> None:
        """
        Beyond the queue's bounds (count, then bytes) the oldest queued
        datagrams are dropped and counted.
        """
        rig = Rig(autoOpen=False, maxQueue=4, maxQueueBytes=2500)
        for i in range(10):
            rig.send(b"%d" % i, ALICE)
        for i in range(3):
            rig.send(b"%d" % i * 1000, BOB)
        rig.accept()
        rig.accept()
        rig.pump.flush()
        self.assertEqual([d for d, _ in rig.service(0).take()], [b"6", b"7", b"8", b"9"])
        self.assertEqual([d for d, _ in rig.service(1).take()], [b"1" * 1000, b"2" * 1000])
        self.assertEqual(rig.forwarder.stats.dropsQueue, 7)

    def test_openFailure(self) -> None:
        """
        If the stream cannot be opened the session ends (queued datagrams
        dropped and counted, a warning logged) and the client's next
        datagram starts a new session.
        """
        rig = Rig(autoOpen=False)
        rig.send(b"a", ALICE)
        rig.send(b"b", ALICE)
        _, d = rig.pending.pop()
        d.errback(Failure(ConnectionLost("host unreachable")))
        self.assertEqual(rig.forwarder.sessions, {})
        stats = rig.forwarder.stats
        self.assertEqual((stats.sessionsFailed, stats.dropsQueue, stats.sessionsActive), (1, 2, 0))
        rig.send(b"c", ALICE)
        self.assertEqual(len(rig.pending), 1)
        rig.accept()
        rig.pump.flush()
        self.assertEqual(rig.service(0).take(), [(b"c", None)])

    def test_openRaises(self) -> None:
        """
        An C{openStream} that raises is a failed session, not an exception
        out of C{datagramReceived}.
        """
        def broken(proto: Any) -> Deferred[Any]:
            raise RuntimeError("no tunnel")

        reactor = FakeUDPReactor()
        fwd = UDPClientForwarder(reactor, broken)
        port: Any = fwd.startListening()
        port.receive(b"x", ALICE)
        self.assertEqual(fwd.stats.sessionsFailed, 1)
        self.assertEqual(fwd.sessions, {})

    def test_idleExpiry(self) -> None:
        """
        A session with no datagram either way for idleTimeout seconds is
        closed: its stream ends, the host closes its socket, and counters
        say so.  Traffic in either direction postpones it.
        """
        rig = Rig(idleTimeout=60.0)
        rig.send(b"hi", ALICE)
        service = rig.service(0)
        rig.reactor.advance(40)
        service.receive(b"reply", SERVICE)
        rig.pump.flush()
        rig.reactor.advance(40)
        self.assertIn(ALICE, rig.forwarder.sessions)
        rig.send(b"again", ALICE)
        rig.reactor.advance(59)
        self.assertIn(ALICE, rig.forwarder.sessions)
        rig.reactor.advance(1)
        rig.pump.flush()
        self.assertEqual(rig.forwarder.sessions, {})
        self.assertEqual(rig.forwarder.stats.sessionsExpired, 1)
        self.assertTrue(service.stopped)
        self.assertEqual(rig.hostStats.sessionsActive, 0)
        self.assertEqual(rig.clientSession.streams, {})
        self.assertEqual(rig.serverSession.streams, {})
        self.assertEqual(rig.reactor.getDelayedCalls(), [])

    def test_idleWhileOpening(self) -> None:
        """
        A session whose stream is still opening when it expires gives up:
        the open is cancelled; a stream delivered anyway is closed at once.
        """
        rig = Rig(autoOpen=False, idleTimeout=5.0)
        rig.send(b"hi", ALICE)
        proto, d = rig.pending[0]
        rig.reactor.advance(5)
        self.assertEqual(rig.forwarder.sessions, {})
        self.assertEqual(rig.cancelled, [proto])
        self.assertTrue(d.called)
        stream = rig.clientSession.openStream()
        stream.setProtocol(proto)
        rig.pump.flush()
        self.assertEqual(rig.clientSession.streams, {})
        self.assertEqual(rig.service(0).take(), [])

    def test_hostIdleExpiry(self) -> None:
        """
        The host side expires idle streams too, which ends the client's
        session.
        """
        rig = Rig(hostIdle=10.0)
        rig.send(b"hi", ALICE)
        rig.reactor.advance(10)
        rig.pump.flush()
        self.assertEqual(rig.hostStats.sessionsExpired, 1)
        self.assertTrue(rig.service(0).stopped)
        self.assertEqual(rig.forwarder.sessions, {})

    def test_streamEndEndsSession(self) -> None:
        """
        A stream closed or reset by the host ends the session; the next
        datagram opens a new one.
        """
        rig = Rig()
        rig.send(b"1", ALICE)
        rig.hostStreams[0].loseConnection()
        rig.pump.flush()
        self.assertEqual(rig.forwarder.sessions, {})
        rig.send(b"2", ALICE)
        rig.hostStreams[1].abortConnection()
        rig.pump.flush()
        self.assertEqual(rig.forwarder.sessions, {})
        self.assertTrue(rig.service(1).stopped)
        self.assertEqual(rig.forwarder.stats.sessionsTotal, 2)

    def test_sessionLimit(self) -> None:
        """
        With maxSessions sessions open, datagrams from new addresses are
        dropped and counted (existing sessions go on); a slot freed is
        usable again.
        """
        rig = Rig(maxSessions=1)
        rig.send(b"a", ALICE)
        rig.send(b"b", BOB)
        rig.send(b"b", BOB)
        rig.send(b"a2", ALICE)
        self.assertEqual(list(rig.forwarder.sessions), [ALICE])
        self.assertEqual(rig.forwarder.stats.dropsSessionLimit, 2)
        self.assertEqual(rig.service(0).take(), [(b"a", None), (b"a2", None)])
        rig.forwarder.sessions[ALICE]._close()
        rig.pump.flush()
        rig.send(b"b3", BOB)
        self.assertEqual(list(rig.forwarder.sessions), [BOB])

    def test_refusedNotFatal(self) -> None:
        """
        ICMP port unreachable from the service is counted; the session
        stays and works when the service is back.
        """
        rig = Rig()
        rig.send(b"ping", ALICE)
        service = rig.service(0)
        service.refuse = True
        rig.send(b"ping", ALICE)
        self.assertEqual(rig.hostStats.refused, 1)
        service.refuse = False
        rig.send(b"ping", ALICE)
        self.assertEqual(len(service.take()), 2)
        self.assertIn(ALICE, rig.forwarder.sessions)

    def test_sendErrorsCounted(self) -> None:
        """
        A local socket that refuses to send (buffer full) drops the
        datagram and counts it, on both sides.
        """
        rig = Rig()
        rig.send(b"x", ALICE)
        rig.service(0).failSend = True
        rig.send(b"y", ALICE)
        self.assertEqual(rig.hostStats.dropsSend, 1)
        rig.port.failSend = True
        rig.service(0).receive(b"z", SERVICE)
        rig.pump.flush()
        self.assertEqual(rig.forwarder.stats.dropsSend, 1)

    def test_hostBackpressure(self) -> None:
        """
        When the stream cannot take more (the client does not read), the
        host drops the service's datagrams instead of queueing them without
        bound; once the stream drains, datagrams flow again.
        """
        rig = Rig()
        rig.send(b"hi", ALICE)
        service = rig.service(0)
        for _ in range(2000):
            service.receive(b"r" * 1000, SERVICE)
        stats = rig.hostStats
        self.assertGreater(stats.dropsBackpressure, 1000)
        self.assertEqual(stats.datagramsToStream + stats.dropsBackpressure, 2000)
        stream = rig.hostStreams[0]
        self.assertLess(stream._queued, 128 * 1024)
        rig.pump.flush()
        self.assertEqual(len(rig.port.take()), stats.datagramsToStream)
        service.receive(b"later", SERVICE)
        rig.pump.flush()
        self.assertEqual(rig.port.take(), [(b"later", ALICE)])

    def test_clientBackpressure(self) -> None:
        """
        The client side drops its clients' datagrams too while the stream
        is full.
        """
        rig = Rig()
        rig.send(b"hi", ALICE)
        for _ in range(2000):
            rig.port.receive(b"c" * 1000, ALICE)
        stats = rig.forwarder.stats
        self.assertGreater(stats.dropsBackpressure, 1000)
        rig.pump.flush()
        self.assertEqual(len(rig.service(0).take()), stats.datagramsToStream)

    def test_stopListening(self) -> None:
        """
        stopListening closes every session, open or opening, and the port.
        """
        rig = Rig(autoOpen=False)
        rig.send(b"a", ALICE)
        rig.accept()
        rig.send(b"b", BOB)
        d = rig.forwarder.stopListening()
        rig.pump.flush()
        self.successResultOf(d)
        self.assertTrue(rig.port.stopped)
        self.assertEqual(rig.forwarder.sessions, {})
        self.assertEqual(rig.clientSession.streams, {})
        self.assertTrue(rig.service(0).stopped)
        self.assertEqual(rig.cancelled, [rig.pending[0][0]])

    def test_badServiceAddress(self) -> None:
        """
        A host protocol whose service address is not an IP resets the
        stream and leaves no socket open.
        """
        reactor = FakeUDPReactor()
        proto = UDPHostProtocol(reactor, "localhost", 53)
        transport = FakeStream()
        proto.makeConnection(transport)
        self.assertTrue(transport.aborted)
        self.assertTrue(reactor.ports[0].stopped)

    def test_openSocketEarly(self) -> None:
        """
        openSocket reports failure to the caller, opens the socket once,
        and a stream that never comes is released by connectionLost.
        """
        reactor = FakeUDPReactor()
        self.assertRaises(InvalidAddressError, UDPHostProtocol(reactor, "x", 1).openSocket)
        proto = UDPHostProtocol(reactor, "::1", 53)
        proto.openSocket()
        proto.openSocket()
        self.assertEqual(len(reactor.ports), 2)
        self.assertEqual(reactor.ports[1].interface, "::")
        reactor.ports[1].receive(b"early", ("::1", 53))
        self.assertEqual(proto.stats.dropsQueue, 1)
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(reactor.ports[1].stopped)
        self.assertEqual(proto.stats.sessionsActive, 0)
        self.successResultOf(proto.whenClosed())


@implementer(ITransport, IConsumer, IPushProducer)
class FakeStream:
    """
    One end of a synchronous in-memory stream: writes are delivered at
    once to the peer's protocol; closing either end ends both.
    """

    def __init__(self) -> None:
        self.peer: FakeStream | None = None
        self.protocol: Any = None
        self.producer: Any = None
        self.disconnecting = False
        self.aborted = False

    @classmethod
    def pair(cls, a: Any, b: Any) -> tuple[FakeStream, FakeStream]:
        x, y = cls(), cls()
        x.peer, y.peer = y, x
        x.protocol, y.protocol = a, b
        b.makeConnection(y)
        a.makeConnection(x)
        return x, y

    def write(self, data: bytes) -> None:
        if not self.disconnecting and self.peer is not None:
            self.peer.protocol.dataReceived(data)

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def _end(self, reason: Failure) -> None:
        for t in (self, self.peer):
            if t is not None and not t.disconnecting:
                t.disconnecting = True
                if t.protocol is not None:
                    t.protocol.connectionLost(reason)

    def loseConnection(self) -> None:
        self._end(Failure(ConnectionDone()))

    def abortConnection(self) -> None:
        self.aborted = True
        self._end(Failure(ConnectionLost()))

    def getPeer(self) -> Any:
        return IPv4Address("TCP", "127.0.0.1", 1)

    def getHost(self) -> Any:
        return IPv4Address("TCP", "127.0.0.1", 2)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        self.loseConnection()


class Echo(DatagramProtocol):
    """
    A UDP echo service that prefixes its answers.
    """

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.transport.write(b"echo:" + datagram, addr)


class Client(DatagramProtocol):
    """
    A local UDP client collecting replies; L{next} waits for one.
    """

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.waiting: list[Deferred[bytes]] = []

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.received.append(datagram)
        if self.waiting:
            self.waiting.pop(0).callback(datagram)

    def next(self, reactor: Any, timeout: float = 2.0) -> Deferred[bytes]:
        d: Deferred[bytes] = Deferred()
        self.waiting.append(d)
        d.addTimeout(timeout, reactor)

        def forget(result: Any) -> Any:
            if d in self.waiting:
                self.waiting.remove(d)
            return result

        d.addErrback(forget)
        return d


class RealSocketTests(TestCase):
    """
    The forwarder and the host protocol on real loopback sockets, joined
    by in-memory streams.
    """

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.reactor = reactor
        self.echoPort = reactor.listenUDP(0, Echo(), interface="127.0.0.1")
        self.addCleanup(self.echoPort.stopListening)
        self.hosts: list[UDPHostProtocol] = []

    def forwarder(self, **kw: Any) -> UDPClientForwarder:
        echo = self.echoPort.getHost()

        def openStream(proto: Any) -> Deferred[Any]:
            host = UDPHostProtocol(self.reactor, "127.0.0.1", echo.port, idleTimeout=30.0)
            self.hosts.append(host)
            FakeStream.pair(proto, host)
            return succeed(proto)

        fwd = UDPClientForwarder(self.reactor, openStream, **kw)
        fwd.startListening()
        self.addCleanup(self._stop, fwd)
        return fwd

    def _stop(self, fwd: UDPClientForwarder) -> Deferred[Any]:
        d = fwd.stopListening()
        return defer.gatherResults([d] + [h.whenClosed() for h in self.hosts])

    def client(self) -> tuple[Client, Any]:
        proto = Client()
        port = self.reactor.listenUDP(0, proto, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return proto, port

    @defer.inlineCallbacks
    def test_twoClientsOwnReplies(self) -> Any:
        """
        Two local clients talk through the tunnel to a real echo service;
        each gets exactly its own replies.
        """
        fwd = self.forwarder()
        target = ("127.0.0.1", fwd.port.getHost().port)  # type: ignore[union-attr]
        a, aPort = self.client()
        b, bPort = self.client()
        for i in range(3):
            got = a.next(self.reactor)
            aPort.write(b"a%d" % i, target)
            self.assertEqual((yield got), b"echo:a%d" % i)
            got = b.next(self.reactor)
            bPort.write(b"b%d" % i, target)
            self.assertEqual((yield got), b"echo:b%d" % i)
        self.assertEqual(a.received, [b"echo:a0", b"echo:a1", b"echo:a2"])
        self.assertEqual(b.received, [b"echo:b0", b"echo:b1", b"echo:b2"])
        self.assertEqual(len(fwd.sessions), 2)
        self.assertEqual(len({h._listening.getHost().port for h in self.hosts}), 2)  # type: ignore[union-attr]

    @defer.inlineCallbacks
    def test_idleAndLimit(self) -> Any:
        """
        With one session slot a second client is dropped; when the first
        session expires (short idle timeout) the second client gets in.
        """
        fwd = self.forwarder(maxSessions=1, idleTimeout=0.2)
        target = ("127.0.0.1", fwd.port.getHost().port)  # type: ignore[union-attr]
        a, aPort = self.client()
        b, bPort = self.client()
        got = a.next(self.reactor)
        aPort.write(b"a", target)
        self.assertEqual((yield got), b"echo:a")
        bPort.write(b"b", target)
        got = b.next(self.reactor, timeout=0.1)
        yield self.assertFailure(got, defer.TimeoutError)
        self.assertEqual(fwd.stats.dropsSessionLimit, 1)
        yield self.hosts[0].whenClosed()
        self.assertEqual(fwd.sessions, {})
        self.assertEqual(fwd.stats.sessionsExpired, 1)
        got = b.next(self.reactor)
        bPort.write(b"b2", target)
        self.assertEqual((yield got), b"echo:b2")
        self.assertEqual(b.received, [b"echo:b2"])
