"""
Tests for L{beam.p2p.holepunch.dcutr}: the message codec and its bounds,
the CONNECT/SYNC exchange of both roles over an in-memory stream on a
L{Clock}, and the L{HolePuncher}'s attempts, retries and roles with the
node's dials replaced by fakes.  The real thing, over real NATs, is in
L{beam.test.test_dcutr_lab}.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from hypothesis import given, settings, strategies as st
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from beam.encoding.framing import LengthPrefixedReader, encodeLengthPrefixed
from beam.encoding.varint import encode_uvarint
from beam.errors import NegotiationFailed
from beam.identity.keys import Identity
from beam.identity.multiaddr import Multiaddr
from beam.p2p.holepunch.dcutr import (
    CONNECT,
    MAX_ADDRS,
    MAX_MESSAGE,
    PROTOCOL,
    SYNC,
    HolePuncher,
    HolePunchError,
    HolePunchMessageError,
    InitiatorExchange,
    ResponderExchange,
    decodeMessage,
    encodeMessage,
    punchableAddrs,
)
from beam.proto import dcutr_pb2 as pb
from beam.test.nodeutil import startNode
from beam.test.test_tunnel import waitFor

A_ADDR = Multiaddr("/ip4/203.0.113.3/tcp/4001")
B_ADDR = Multiaddr("/ip4/203.0.113.4/tcp/4001")
RELAY = Identity.generate().peerID
PEER = Identity.generate().peerID


def frames(data: bytes) -> list[Any]:
    return [decodeMessage(f) for f in LengthPrefixedReader(MAX_MESSAGE).feed(data)]


class CodecTests(SynchronousTestCase):
    """
    L{encodeMessage} and L{decodeMessage}.
    """

    def test_roundTrip(self) -> None:
        """
        A CONNECT with addresses and a SYNC without come back as sent.
        """
        [connect, sync] = frames(encodeMessage(CONNECT, [A_ADDR, B_ADDR]) + encodeMessage(SYNC))
        self.assertEqual((connect.type, connect.addrs), (CONNECT, (A_ADDR, B_ADDR)))
        self.assertEqual((sync.type, sync.addrs), (SYNC, ()))

    def test_wire(self) -> None:
        """
        The spec's wire: field 1 the type (CONNECT = 100), field 2 the
        binary multiaddrs.
        """
        self.assertEqual(encodeMessage(CONNECT, [A_ADDR]),
                         encodeLengthPrefixed(b"\x08\x64\x12" + bytes([len(A_ADDR.toBytes())]) + A_ADDR.toBytes()))

    def test_oversized(self) -> None:
        """
        More than 4 KiB is refused before parsing.
        """
        self.assertRaises(HolePunchMessageError, decodeMessage, b"\x08\x64" + b"\x00" * MAX_MESSAGE)

    def test_noType(self) -> None:
        """
        A message without its required type, or with an unknown one, is
        malformed.
        """
        self.assertRaises(HolePunchMessageError, decodeMessage, b"")
        self.assertRaises(HolePunchMessageError, decodeMessage, b"\x08\x05")

    def test_garbage(self) -> None:
        """
        Bytes that are no protobuf are malformed.
        """
        self.assertRaises(HolePunchMessageError, decodeMessage, b"\xff\xff\xff")

    def test_addressesBounded(self) -> None:
        """
        Invalid addresses are skipped; at most L{MAX_ADDRS} are kept.
        """
        msg = pb.HolePunch(type=CONNECT, ObsAddrs=[b"\xff\x01"] + [A_ADDR.toBytes()] * (MAX_ADDRS + 5))
        decoded = decodeMessage(msg.SerializeToString())
        self.assertEqual(decoded.addrs, (A_ADDR,) * MAX_ADDRS)

    def test_punchable(self) -> None:
        """
        Only public TCP addresses are punched, without /p2p, each once;
        relayed, private, loopback and non-TCP ones are left out.
        """
        addrs = [
            Multiaddr(f"/ip4/203.0.113.3/tcp/4001/p2p/{PEER}"),
            A_ADDR,
            Multiaddr(f"/ip4/203.0.113.2/tcp/4001/p2p/{RELAY}/p2p-circuit"),
            Multiaddr("/ip4/198.51.100.2/tcp/4001"),
            Multiaddr("/ip4/127.0.0.1/tcp/4001"),
            Multiaddr("/ip4/203.0.113.3/udp/4001/quic-v1"),
        ]
        self.assertEqual(punchableAddrs(addrs), [A_ADDR])

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=600))
    def test_fuzz(self, data: bytes) -> None:
        """
        Any bytes either decode (a known type, at most L{MAX_ADDRS} valid
        addresses) or raise L{HolePunchMessageError}, nothing else.
        """
        try:
            msg = decodeMessage(data)
        except HolePunchMessageError:
            return
        self.assertIn(msg.type, (CONNECT, SYNC))
        self.assertLessEqual(len(msg.addrs), MAX_ADDRS)

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=300))
    def test_fuzzStream(self, data: bytes) -> None:
        """
        Any bytes on a responder's stream end in an answer, a wait, or a
        reset with a L{HolePunchError}, never another exception.
        """
        exchange, transport = _open(ResponderExchange(Clock(), lambda: [A_ADDR], 10.0))
        errors: list[Any] = []
        exchange.done.addErrback(errors.append)
        exchange.dataReceived(data)
        for e in errors:
            self.assertTrue(e.check(HolePunchError))


class _Stream(StringTransport):
    """
    A stream: a string transport that can be reset and names its connection.
    """

    connection: Any = None

    def __init__(self) -> None:
        super().__init__()
        self.aborted = False

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()


def _open(exchange: Any) -> tuple[Any, _Stream]:
    transport = _Stream()
    exchange.makeConnection(transport)
    return exchange, transport


class ExchangeTests(SynchronousTestCase):
    """
    The CONNECT/SYNC exchange of both roles.
    """

    def test_initiator(self) -> None:
        """
        B sends CONNECT with its addresses, measures the round trip to A's
        CONNECT, answers SYNC, closes the stream and reports A's addresses
        with the round trip.
        """
        clock = Clock()
        exchange, stream = _open(InitiatorExchange(clock, lambda: [B_ADDR], 10.0))
        [sent] = frames(stream.value())
        self.assertEqual((sent.type, sent.addrs), (CONNECT, (B_ADDR,)))
        stream.clear()
        clock.advance(0.25)
        exchange.dataReceived(encodeMessage(CONNECT, [A_ADDR]))
        [sync] = frames(stream.value())
        self.assertEqual(sync.type, SYNC)
        self.assertEqual(self.successResultOf(exchange.done), ([A_ADDR], 0.25))
        self.assertTrue(stream.disconnecting)
        self.assertFalse(clock.getDelayedCalls())

    def test_responder(self) -> None:
        """
        A answers CONNECT with its addresses and reports B's as soon as SYNC
        arrives.
        """
        exchange, stream = _open(ResponderExchange(Clock(), lambda: [A_ADDR], 10.0))
        exchange.dataReceived(encodeMessage(CONNECT, [B_ADDR]))
        [answer] = frames(stream.value())
        self.assertEqual((answer.type, answer.addrs), (CONNECT, (A_ADDR,)))
        self.assertNoResult(exchange.done)
        exchange.dataReceived(encodeMessage(SYNC))
        self.assertEqual(self.successResultOf(exchange.done), [B_ADDR])

    def test_bothSides(self) -> None:
        """
        The two roles against each other, bytes shuttled by hand, with a
        round trip of 0.1 s.
        """
        clock = Clock()
        b, bStream = _open(InitiatorExchange(clock, lambda: [B_ADDR], 10.0))
        a, aStream = _open(ResponderExchange(clock, lambda: [A_ADDR], 10.0))
        clock.advance(0.05)
        a.dataReceived(bStream.value())
        bStream.clear()
        clock.advance(0.05)
        b.dataReceived(aStream.value())
        a.dataReceived(bStream.value())
        self.assertEqual(self.successResultOf(b.done), ([A_ADDR], 0.1))
        self.assertEqual(self.successResultOf(a.done), [B_ADDR])

    def test_unexpected(self) -> None:
        """
        A SYNC before CONNECT (to either role), or a second CONNECT to A,
        resets the stream with L{HolePunchMessageError}.
        """
        for exchange, messages in [
            (ResponderExchange(Clock(), lambda: [], 10.0), [encodeMessage(SYNC)]),
            (InitiatorExchange(Clock(), lambda: [], 10.0), [encodeMessage(SYNC)]),
            (ResponderExchange(Clock(), lambda: [], 10.0), [encodeMessage(CONNECT), encodeMessage(CONNECT)]),
        ]:
            exchange, stream = _open(exchange)
            for m in messages:
                exchange.dataReceived(m)
            self.failureResultOf(exchange.done, HolePunchMessageError)
            self.assertTrue(stream.aborted)

    def test_malformed(self) -> None:
        """
        A message that does not parse, or announces more than 4 KiB, resets
        the stream before anything is buffered for it.
        """
        for data in [encodeLengthPrefixed(b"\xff\xff"), encode_uvarint(MAX_MESSAGE + 1)]:
            exchange, stream = _open(ResponderExchange(Clock(), lambda: [], 10.0))
            exchange.dataReceived(data)
            self.failureResultOf(exchange.done, HolePunchMessageError)
            self.assertTrue(stream.aborted)

    def test_timeout(self) -> None:
        """
        No answer within the timeout resets the stream.
        """
        clock = Clock()
        exchange, stream = _open(InitiatorExchange(clock, lambda: [], 10.0))
        clock.advance(9.9)
        self.assertNoResult(exchange.done)
        clock.advance(0.1)
        self.failureResultOf(exchange.done, HolePunchError)
        self.assertTrue(stream.aborted)

    def test_endedEarly(self) -> None:
        """
        The stream ending before the exchange is complete fails it.
        """
        exchange, stream = _open(InitiatorExchange(Clock(), lambda: [], 10.0))
        exchange.connectionLost()
        self.failureResultOf(exchange.done, HolePunchError)

    def test_refused(self) -> None:
        """
        A responder whose C{admit} refuses resets the stream at once.
        """
        exchange, stream = _open(ResponderExchange(Clock(), lambda: [], 10.0, admit=lambda s: "busy"))
        self.failureResultOf(exchange.done, HolePunchError)
        self.assertTrue(stream.aborted)


# -- the puncher ---------------------------------------------------------------------

class _Addresses:
    def observed(self) -> dict[Multiaddr, int]:
        return {B_ADDR: 1}

    def confirmed(self) -> list[Multiaddr]:
        return []

    def listenAddrs(self) -> list[Multiaddr]:
        return [Multiaddr("/ip4/198.51.100.18/tcp/4001")]

    def relayAddrs(self, kind: Optional[str] = None) -> list[Multiaddr]:
        return list(self.turn) if kind == "turn" else []

    turn: list[Multiaddr] = []


class _Conn:
    def __init__(self, limited: bool = True, direction: str = "inbound", protocols: tuple[str, ...] = (PROTOCOL,),
                 listenAddrs: tuple[Multiaddr, ...] = ()) -> None:
        self.remotePeer = PEER
        self.limited = limited
        self.direction = direction
        self.closed = False
        self.acceptsStreams = True
        self.remoteAddr = Multiaddr(f"/ip4/203.0.113.2/tcp/4001/p2p/{RELAY}/p2p-circuit/p2p/{PEER}")
        self.identify = _Identify(protocols, listenAddrs)


class _Identify:
    def __init__(self, protocols: tuple[str, ...], listenAddrs: tuple[Multiaddr, ...]) -> None:
        self.protocols = protocols
        self.listenAddrs = listenAddrs


class _Node:
    """
    What the puncher uses of a node: streams open on a fake, the peer
    answers per C{answer}.
    """

    def __init__(self, clock: Clock) -> None:
        self.reactor = clock
        self.addresses = _Addresses()
        self.handlers: dict[str, Any] = {}
        self.observers: list[Any] = []
        self.streams: list[tuple[Any, _Stream]] = []
        self.direct: Optional[Any] = None
        self.negotiation: Optional[Exception] = None

    def setStreamHandler(self, protocolId: str, handler: Any) -> None:
        self.handlers[protocolId] = handler

    def removeStreamHandler(self, protocolId: str) -> None:
        self.handlers.pop(protocolId, None)

    def addConnectionObserver(self, observer: Any) -> None:
        self.observers.append(observer)

    def removeConnectionObserver(self, observer: Any) -> None:
        self.observers.remove(observer)

    def connectionTo(self, peer: Any) -> Any:
        return self.direct

    def openStreamOn(self, conn: Any, protocols: list[str], factory: Callable[[], Any]) -> Deferred[Any]:
        if self.negotiation is not None:
            return fail(self.negotiation)
        proto, stream = _open(factory())
        self.streams.append((proto, stream))
        return succeed(proto)


class PuncherTests(SynchronousTestCase):
    """
    L{HolePuncher} with a fake node and fake dials.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.node = _Node(self.clock)
        self.puncher = HolePuncher(self.node, dialTimeout=5.0)
        self.dials: list[tuple[Multiaddr, bool, Deferred[Any]]] = []
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.puncher.addObserver(lambda event, peer, details: self.events.append((event, details)))

        def dialOne(peer: Any, addr: Multiaddr, asClient: bool) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            self.dials.append((addr, asClient, d))
            return d

        self.puncher.dialOne = dialOne  # type: ignore[method-assign]

    def answer(self, rtt: float = 0.2) -> None:
        """
        The peer answers the latest CONNECT after C{rtt}.
        """
        proto, stream = self.node.streams[-1]
        self.assertEqual(frames(stream.value())[0].type, CONNECT)
        self.clock.advance(rtt)
        proto.dataReceived(encodeMessage(CONNECT, [A_ADDR]))

    def test_servesProtocol(self) -> None:
        """
        The puncher serves C{/libp2p/dcutr} and watches connections.
        """
        self.assertIn(PROTOCOL, self.node.handlers)
        self.assertEqual(self.node.observers, [self.puncher._connectionEvent])

    def test_startsOnIdentifiedInboundRelayed(self) -> None:
        """
        Only a relayed connection we received (role B), once identified,
        starts a punch; one we dialled, a direct one, or a peer without
        DCUtR does not.
        """
        for conn in [_Conn(direction="outbound"), _Conn(limited=False), _Conn(protocols=())]:
            self.puncher._connectionEvent("identified", conn)  # type: ignore[arg-type]
        self.puncher._connectionEvent("connected", _Conn())  # type: ignore[arg-type]
        self.assertEqual(self.node.streams, [])
        self.puncher._connectionEvent("identified", _Conn())  # type: ignore[arg-type]
        self.assertEqual(len(self.node.streams), 1)

    def test_syncTiming(self) -> None:
        """
        B dials A's addresses half a round trip after sending SYNC, as the
        responder of the upgrade (the spec makes A the client), never
        before.
        """
        d = self.puncher.punch(_Conn())  # type: ignore[arg-type]
        self.answer(rtt=0.2)
        self.assertEqual(self.dials, [])
        self.clock.advance(0.099)
        self.assertEqual(self.dials, [])
        self.clock.advance(0.001)
        [(addr, asClient, dial)] = self.dials
        self.assertEqual((addr, asClient), (A_ADDR, False))
        direct = _Conn(limited=False)
        dial.callback(direct)
        self.assertIs(self.successResultOf(d), direct)
        self.assertEqual(self.puncher.pathOf(direct), "hole-punched")  # type: ignore[arg-type]
        self.assertEqual(self.puncher.punched, 1)
        self.assertEqual(getattr(direct, "path", None), "hole-punched", "status reads conn.path")

    def test_offersTurnAddress(self) -> None:
        """
        Our CONNECT carries a TURN allocation's relayed address right
        after the confirmed ones and before observed ones (so the peer's
        simultaneous dial tries it), never a circuit address; without an
        allocation it is as before.
        """
        turn = Multiaddr("/ip4/203.0.113.40/tcp/50123")
        self.assertEqual(self.puncher.ourAddrs(), [B_ADDR])
        self.node.addresses.turn = [turn]
        self.assertEqual(self.puncher.ourAddrs(), [turn, B_ADDR])
        self.puncher.punch(_Conn())  # type: ignore[arg-type]
        proto, stream = self.node.streams[-1]
        [connect] = frames(stream.value())
        self.assertEqual(connect.addrs[0], turn)

    def test_retries(self) -> None:
        """
        A failed simultaneous connect is retried with a new exchange; the
        third attempt may succeed.
        """
        d = self.puncher.punch(_Conn())  # type: ignore[arg-type]
        for attempt in range(2):
            self.answer()
            self.clock.advance(0.15)
            self.dials[-1][2].errback(Exception("timed out"))
        self.answer()
        self.clock.advance(0.15)
        direct = _Conn(limited=False)
        self.dials[-1][2].callback(direct)
        self.assertIs(self.successResultOf(d), direct)
        self.assertEqual([e for e, _ in self.events].count("attempt"), 3)

    def test_givesUpAfterThree(self) -> None:
        """
        After three failed attempts B stops, logs one line naming the relay
        it stays on, and fires with L{None}.
        """
        d = self.puncher.punch(_Conn())  # type: ignore[arg-type]
        for attempt in range(3):
            self.answer()
            self.clock.advance(0.15)
            self.dials[-1][2].errback(Exception("timed out"))
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(len(self.node.streams), 3)
        self.assertEqual(self.puncher.failed, 1)
        [failed] = [details for e, details in self.events if e == "failed"]
        self.assertEqual(failed["relay"], str(RELAY))

    def test_exchangeFailureCountsAsAttempt(self) -> None:
        """
        A malformed answer resets the stream and costs one attempt.
        """
        d = self.puncher.punch(_Conn())  # type: ignore[arg-type]
        for attempt in range(3):
            proto, stream = self.node.streams[-1]
            proto.dataReceived(encodeMessage(SYNC))
            self.assertTrue(stream.aborted)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.dials, [])

    def test_noDCUtR(self) -> None:
        """
        A peer that does not speak DCUtR ends the punch at once.
        """
        self.node.negotiation = NegotiationFailed("no")
        d = self.puncher.punch(_Conn())  # type: ignore[arg-type]
        self.assertIsNone(self.successResultOf(d))

    def test_unilateral(self) -> None:
        """
        When A's identify names public addresses, B first dials them as an
        ordinary client; success needs no exchange.
        """
        d = self.puncher.punch(_Conn(listenAddrs=(A_ADDR,)))  # type: ignore[arg-type]
        [(addr, asClient, dial)] = self.dials
        self.assertEqual((addr, asClient), (A_ADDR, True))
        direct = _Conn(limited=False)
        dial.callback(direct)
        self.assertIs(self.successResultOf(d), direct)
        self.assertEqual(self.node.streams, [])
        self.assertEqual(self.puncher.pathOf(direct), "direct")  # type: ignore[arg-type]

    def test_responderDials(self) -> None:
        """
        A answers with its observed addresses and, on SYNC, dials B's at
        once as the client of the upgrade.
        """
        proto = self.node.handlers[PROTOCOL]()
        stream = _Stream()
        stream.connection = _Conn(direction="outbound")
        proto.makeConnection(stream)
        proto.dataReceived(encodeMessage(CONNECT, [B_ADDR]))
        [answer] = frames(stream.value())
        self.assertEqual(answer.addrs, (B_ADDR,))  # our (fake) observed address
        proto.dataReceived(encodeMessage(SYNC))
        [(addr, asClient, dial)] = self.dials
        self.assertEqual((addr, asClient), (B_ADDR, True))
        self.assertEqual(self.puncher.active, 1)
        direct = _Conn(limited=False)
        dial.callback(direct)
        self.assertEqual(self.puncher.pathOf(direct), "hole-punched")  # type: ignore[arg-type]
        self.assertEqual(self.puncher.active, 0)

    def test_responderRefusesDirect(self) -> None:
        """
        DCUtR on a direct connection is refused: the stream is reset.
        """
        proto = self.node.handlers[PROTOCOL]()
        stream = _Stream()
        stream.connection = _Conn(limited=False)
        proto.makeConnection(stream)
        self.assertTrue(stream.aborted)

    def test_concurrencyBound(self) -> None:
        """
        Beyond C{maxConcurrent} punches, new ones are refused (A) or not
        started (B).
        """
        self.puncher.maxConcurrent = 1
        self.puncher.punch(_Conn())  # type: ignore[arg-type]
        proto = self.node.handlers[PROTOCOL]()
        stream = _Stream()
        stream.connection = _Conn(direction="outbound")
        proto.makeConnection(stream)
        self.assertTrue(stream.aborted)

    def test_listenerWins(self) -> None:
        """
        A direct connection from the peer that reaches our listener while
        we dial settles the attempt (and cancels our dials).
        """
        d = self.puncher.connectDirect(PEER, [A_ADDR], asClient=False)
        direct = _Conn(limited=False)
        self.puncher._connectionEvent("connected", direct)  # type: ignore[arg-type]
        self.assertIs(self.successResultOf(d), direct)
        self.assertTrue(self.dials[0][2].called)  # cancelled

    def test_pathOf(self) -> None:
        """
        A relayed connection's path names its relay; others are direct.
        """
        self.assertEqual(self.puncher.pathOf(_Conn()), f"relayed via {RELAY}")  # type: ignore[arg-type]
        self.assertEqual(self.puncher.pathOf(_Conn(limited=False)), "direct")  # type: ignore[arg-type]

    def test_stop(self) -> None:
        """
        Stopping removes the handler and observer and cancels punches.
        """
        d = self.puncher.punch(_Conn())  # type: ignore[arg-type]
        self.puncher.stop()
        self.assertNotIn(PROTOCOL, self.node.handlers)
        self.assertEqual(self.node.observers, [])
        self.failureResultOf(d)


class InboundRoleTests(TestCase):
    """
    L{Node.expectInboundAsInitiator}: during a hole punch, a SYN of the
    peer's that reaches our listener (instead of meeting our own SYN) is
    still answered in the role DCUtR gave us, on real loopback sockets.
    """

    @inlineCallbacks
    def test_acceptedConnectionRunsAsInitiator(self) -> Any:
        """
        B dials A as the responder of the punch (its role when it sent
        CONNECT); A, expecting B's source address, answers as initiator:
        the handshake completes and both hold a direct connection.
        Without the expectation both would wait as responders.
        """
        a = yield startNode(self)
        b = yield startNode(self)
        port = b.listenAddrs[0].tcpTarget()[1]
        forget = a.expectInboundAsInitiator("127.0.0.1", port, b.peerID)
        self.addCleanup(forget)
        puncher = HolePuncher(b)
        self.addCleanup(puncher.stop)
        target = a.listenAddrs[0]
        conn = yield puncher.dialOne(a.peerID, target, asClient=False)
        self.assertEqual(conn.remotePeer, a.peerID)
        self.assertFalse(conn.limited)
        yield waitFor(lambda: a.connectionTo(b.peerID) is not None)
        self.assertEqual(a.connectionTo(b.peerID).remotePeer, b.peerID)

    @inlineCallbacks
    def test_expectationForgotten(self) -> Any:
        """
        Once forgotten, inbound connections from that source are answered
        as responders again (an ordinary dial works).
        """
        a = yield startNode(self)
        b = yield startNode(self)
        port = b.listenAddrs[0].tcpTarget()[1]
        a.expectInboundAsInitiator("127.0.0.1", port, b.peerID)()
        self.assertEqual(a._inboundRoles, {})
        conn = yield b.connect(a.listenAddrs[0].withPeerID(a.peerID))
        self.assertEqual(conn.remotePeer, a.peerID)
