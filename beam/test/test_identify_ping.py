"""
Unit tests of identify and ping, over in-memory transports with a Clock;
and a node's ping timing (interval, timeout) on the memory transport.
"""

from __future__ import annotations

from hypothesis import given, settings, strategies as st
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from beam.encoding.framing import encodeLengthPrefixed
from beam.errors import BeamError, PingTimeout
from beam.p2p.protocols.identify import IdentifyError, IdentifyInfo, IdentifyReceiver, IdentifySender
from beam.identity.keys import Identity
from beam.identity.multiaddr import Multiaddr
from beam.p2p.protocols.ping import PING_PROTOCOL, PING_SIZE, PingClient, PingMismatch, PingResponder
from beam.proto import identify_pb2
from beam.test.memnodes import MemoryGrid
from beam.testing import MemoryTransport, Pump


class IdentifyTests(SynchronousTestCase):
    """
    The identify message and its sender and receiver protocols.
    """

    def setUp(self) -> None:
        self.ident = Identity.generate()
        self.info = IdentifyInfo(
            protocols=("/ipfs/id/1.0.0", "/ipfs/ping/1.0.0"),
            listenAddrs=(Multiaddr.fromString("/ip4/192.0.2.1/tcp/4001"),),
            observedAddr=Multiaddr.fromString("/ip4/198.51.100.7/tcp/5555"),
            publicKey=self.ident.publicKey,
            agentVersion="beam/test",
            protocolVersion="ipfs/0.1.0",
        )

    def test_roundTrip(self) -> None:
        """
        Every field survives encoding and decoding.
        """
        self.assertEqual(IdentifyInfo.fromBytes(self.info.toBytes(), self.ident.peerID), self.info)

    def test_overPump(self) -> None:
        """
        The sender writes one length-prefixed message and closes; the
        receiver fires with it.
        """
        receiver = IdentifyReceiver(self.ident.peerID)
        sender = IdentifySender(lambda transport: self.info)
        got = []
        receiver.result.addCallback(got.append)
        Pump(receiver, sender).connect()
        self.assertEqual(got, [self.info])

    def test_keyMismatch(self) -> None:
        """
        A message whose public key is not the authenticated peer's is
        refused and the stream aborted.
        """
        receiver = IdentifyReceiver(Identity.generate().peerID)
        t = MemoryTransport()
        receiver.makeConnection(t)
        receiver.dataReceived(encodeLengthPrefixed(self.info.toBytes()))
        self.failureResultOf(receiver.result, IdentifyError)
        self.assertTrue(t.aborted)

    def test_unparseableAddrsSkipped(self) -> None:
        """
        Listen addresses we cannot parse are skipped, not fatal; an
        observed address with a /p2p suffix (as js-libp2p sends) parses.
        """
        msg = identify_pb2.Identify(listenAddrs=[b"\xff\xff", Multiaddr.fromString("/ip4/192.0.2.1/tcp/1").toBytes()])
        msg.observedAddr = Multiaddr.fromString(f"/ip4/127.0.0.1/tcp/9/p2p/{self.ident.peerID}").toBytes()
        info = IdentifyInfo.fromBytes(msg.SerializeToString())
        self.assertEqual([str(a) for a in info.listenAddrs], ["/ip4/192.0.2.1/tcp/1"])
        self.assertEqual(info.observedAddr.peerID(), self.ident.peerID)

    def test_oversizeRefused(self) -> None:
        """
        A message announcing more than 64 KiB is refused before buffering.
        """
        receiver = IdentifyReceiver()
        t = MemoryTransport()
        receiver.makeConnection(t)
        receiver.dataReceived(b"\xff\xff\x7f")
        self.failureResultOf(receiver.result, IdentifyError)
        self.assertTrue(t.aborted)

    def test_closedEarly(self) -> None:
        """
        A stream closed before a whole message arrived fails the result.
        """
        receiver = IdentifyReceiver()
        receiver.makeConnection(MemoryTransport())
        receiver.dataReceived(b"\x10abc")
        receiver.connectionLost(None)
        self.failureResultOf(receiver.result, IdentifyError)

    @settings(deadline=None, max_examples=300)
    @given(st.binary(max_size=300))
    def test_fuzz(self, data: bytes) -> None:
        """
        Random bytes either parse or raise L{IdentifyError}.
        """
        try:
            IdentifyInfo.fromBytes(data)
        except IdentifyError:
            pass
        receiver = IdentifyReceiver()
        receiver.result.addErrback(lambda f: f.trap(IdentifyError))
        receiver.makeConnection(MemoryTransport())
        receiver.dataReceived(data)


class PingTests(SynchronousTestCase):
    """
    The ping client and responder.
    """

    def test_roundTrip(self) -> None:
        """
        A ping is echoed and timed with the injected clock.
        """
        clock = Clock()
        client = PingClient(clock)
        pump = Pump(client, PingResponder()).connect()
        d = client.ping()
        clock.advance(0.25)
        pump.flush()
        self.assertEqual(self.successResultOf(d), 0.25)
        d2 = client.ping()
        pump.flush()
        self.assertEqual(self.successResultOf(d2), 0.0)

    def test_wrongEcho(self) -> None:
        """
        An answer that differs from the probe fails with L{PingMismatch}.
        """
        client = PingClient(Clock(), random=lambda n: b"a" * n)
        t = MemoryTransport()
        client.makeConnection(t)
        d = client.ping()
        client.dataReceived(b"b" * PING_SIZE)
        self.failureResultOf(d, PingMismatch)
        self.assertTrue(t.aborted)

    def test_closedWhileWaiting(self) -> None:
        """
        The stream closing with a ping outstanding fails the ping.
        """
        client = PingClient(Clock())
        client.makeConnection(MemoryTransport())
        d = client.ping()
        client.connectionLost(None)
        self.failureResultOf(d)

    def test_pingAfterClose(self) -> None:
        """
        A ping after the stream closed fails at once with the reason it
        closed (it raised AttributeError: the nonexistent
        C{Deferred.fromFailure}), and writes nothing.
        """
        client = PingClient(Clock())
        t = MemoryTransport()
        client.makeConnection(t)
        client.connectionLost(None)
        f = self.failureResultOf(client.ping(), BeamError)
        self.assertEqual(f.getErrorMessage(), "the ping stream closed")
        self.assertEqual(t.written, 0)

    def test_pingAfterMismatch(self) -> None:
        """
        After a wrong echo aborted the stream, a ping fails with that
        L{PingMismatch}, the reason the stream was closed.
        """
        client = PingClient(Clock(), random=lambda n: b"a" * n)
        client.makeConnection(MemoryTransport())
        d = client.ping()
        client.dataReceived(b"b" * PING_SIZE)
        self.failureResultOf(d, PingMismatch)
        client.connectionLost(None)
        f = self.failureResultOf(client.ping(), PingMismatch)
        self.assertEqual(f.getErrorMessage(), "the peer echoed different bytes")


class SlowResponder(Protocol):
    """
    Echo each probe back C{delay} seconds later, on C{clock}.
    """

    def __init__(self, clock: Clock, delay: float) -> None:
        self.clock = clock
        self.delay = delay

    def dataReceived(self, data: bytes) -> None:
        self.clock.callLater(self.delay, self.transport.write, data)

    def readConnectionLost(self) -> None:
        self.transport.loseConnection()


class NodePingTests(SynchronousTestCase):
    """
    L{beam.p2p.host.node.Node.ping} between two nodes on the memory
    transport: round-trip times, interval and timeout come from the node's
    clock.
    """

    def setUp(self) -> None:
        self.grid = MemoryGrid(self)
        self.a, self.b = self.grid.node(), self.grid.node()
        self.grid.result(self.a.connect(self.grid.addr(self.b)))

    def test_intervalAndRoundTrip(self) -> None:
        """
        Probes are sent C{interval} seconds after the previous answer; each
        round-trip time is measured on the clock and recorded as the
        peer's latency.
        """
        grid, a, b = self.grid, self.a, self.b
        b.setStreamHandler(PING_PROTOCOL, lambda: SlowResponder(grid.clock, 0.25))
        d = a.ping(b.peerID, count=2, interval=1.0)
        grid.advance(1.4)  # first answer at 0.25, second probe at 1.25
        self.assertNoResult(d)
        grid.advance(0.2)  # second answer at 1.5
        self.assertEqual(grid.result(d), [0.25, 0.25])
        self.assertEqual(a.peerStore.latency(b.peerID), 0.25)

    def test_timeout(self) -> None:
        """
        A peer that accepts ping and never answers fails the ping with
        L{PingTimeout} after C{timeout} seconds; the stream is aborted and
        the connection kept.
        """
        grid, a, b = self.grid, self.a, self.b
        b.setStreamHandler(PING_PROTOCOL, Protocol)
        d = a.ping(b.peerID, timeout=2.0)
        grid.advance(1.9)
        self.assertNoResult(d)
        grid.advance(0.2)
        f = grid.failure(d, PingTimeout)
        self.assertIn("within 2 s", str(f.value))
        conn = a.connectionTo(b.peerID)
        self.assertIsNotNone(conn)
        self.assertEqual(conn.streamCount, 0)
