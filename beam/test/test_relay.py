"""
Circuit relay v2 (issue 9): reservations, circuits, limits, the stop
handler, the relay transport and the wire, on whole nodes in a
L{MemoryGrid} (in-memory transport, a L{Clock}).
"""

from __future__ import annotations

from typing import Any, Optional

from hypothesis import given, settings, strategies as st
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from beam.errors import DialError
from beam.identity.keys import Identity
from beam.identity.multiaddr import Multiaddr
from beam.p2p.envelope import openEnvelope, sealEnvelope
from beam.p2p.host.addrs import AddressBook
from beam.p2p.host.node import Node
from beam.p2p.protocols.echo import ECHO_PROTOCOL
from beam.p2p.relay.client import RelayClient, Reservation
from beam.p2p.relay.hop import RelayLimits, RelayService, ipKey, _StopConnect
from beam.p2p.relay.messages import (
    HOP_PROTOCOL,
    MAX_MESSAGE,
    STOP_PROTOCOL,
    FramedProtocol,
    HopMessage,
    Limit,
    RelayMessageError,
    RelayRefused,
    Status,
    decodeHop,
    decodeStop,
    frame,
)
from beam.p2p.relay.transport import RelayTransport, parseCircuit
from beam.p2p.relay.voucher import DOMAIN, PAYLOAD_TYPE, InvalidVoucher, openVoucher, signVoucher
from beam.proto import circuitv2_pb2 as pb
from beam.test.memnodes import MemoryGrid

SINK = "/test/sink/1"


class Sink(Protocol):
    """
    Counts what it receives (a handler on the target).
    """

    received = 0

    def dataReceived(self, data: bytes) -> None:
        Sink.received += len(data)


class Collect(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.lost: Optional[Failure] = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        self.lost = reason


class RawHop(FramedProtocol):
    """
    A hand-written hop client: sends C{messages}, records the answers.
    """

    def __init__(self, *messages: bytes) -> None:
        super().__init__()
        self.messages = messages
        self.answers: list[Any] = []
        self.ended: Optional[Failure] = None

    def connectionMade(self) -> None:
        assert self.transport is not None
        for m in self.messages:
            self.transport.write(m)

    def messageReceived(self, data: bytes) -> None:
        self.answers.append(decodeHop(data))

    def failed(self, reason: Failure) -> None:
        self.ended = reason


def reserveMsg() -> bytes:
    return frame(HopMessage(type=HopMessage.RESERVE))


def connectMsg(peer: Any) -> bytes:
    return frame(HopMessage(type=HopMessage.CONNECT, peer=pb.Peer(id=peer.bytes)))


class RelayWorld:
    """
    A relay R, a private-ish A holding a reservation on R, and B, all
    with the relay transport.
    """

    def __init__(self, test: SynchronousTestCase, limits: Optional[RelayLimits] = None,
                 reserve: bool = True, **kw: Any) -> None:
        self.grid = grid = MemoryGrid(test)
        self.r, self.a, self.b = grid.node(**kw), grid.node(**kw), grid.node(**kw)
        self.service = RelayService(self.r, limits)
        self.service.startService()
        test.addCleanup(self.service.stopService)
        for n in (self.r, self.a, self.b):
            if not hasattr(n, "addresses"):
                n.addresses = AddressBook(lambda: [])
            n.transports.append(RelayTransport(n))
        self.client = RelayClient(self.a)
        test.addCleanup(self.client.stop)
        self.events: list[tuple[str, Reservation]] = []
        self.client.addObserver(lambda e, r: self.events.append((e, r)))
        self.reservation: Optional[Reservation] = None
        if reserve:
            self.reservation = grid.result(self.client.reserve(grid.addr(self.r)))

    def circuitAddr(self, target: Optional[Node] = None) -> Multiaddr:
        target = target or self.a
        return self.grid.addr(self.r).encapsulate(f"/p2p-circuit/p2p/{target.peerID}")

    def hop(self, node: Node, *messages: bytes) -> RawHop:
        proto = RawHop(*messages)
        self.grid.result(node.openStream(self.grid.addr(self.r), [HOP_PROTOCOL], lambda: proto))
        self.grid.settle()
        return proto


class ReservationTests(SynchronousTestCase):
    def test_reserve(self) -> None:
        """
        A reservation carries an expiry one TTL ahead, the relay's
        addresses with its peer ID, the spec's default limit, and a voucher
        the relay signed for us; the client publishes the circuit address
        and keeps the relay's connection open.
        """
        w = RelayWorld(self)
        r = w.reservation
        assert r is not None
        self.assertEqual(r.relay, w.r.peerID)
        self.assertEqual(r.expire, int(w.grid.clock.seconds() + 3600))
        self.assertEqual(r.limit, Limit(duration=120, data=128 * 1024))
        self.assertEqual(r.addrs, (w.grid.addr(w.r),))
        assert r.voucher is not None
        v = openVoucher(r.voucher)
        self.assertEqual((v.relay, v.peer, v.expiration), (w.r.peerID, w.a.peerID, r.expire))
        self.assertEqual(w.a.addresses.relayAddrs(), [w.grid.addr(w.r).encapsulate("/p2p-circuit")])
        self.assertEqual([e for e, _ in w.events], ["reserved"])
        self.assertIn(w.a.peerID, w.service.reservations)
        self.assertTrue(w.client.acceptsRelay(w.r.peerID))

    def test_renewal(self) -> None:
        """
        The client renews at three quarters of the reservation's life, so
        the reservation never lapses while the relay is there.
        """
        w = RelayWorld(self)
        first = w.reservation
        assert first is not None
        w.grid.advance(2700.5)
        self.assertEqual([e for e, _ in w.events], ["reserved", "renewed"])
        self.assertGreater(w.client.reservations[w.r.peerID].expire, first.expire)
        w.grid.advance(3600)
        self.assertTrue(w.client.acceptsRelay(w.r.peerID))
        self.assertGreater(w.service.reservations[w.a.peerID].expire, w.grid.clock.seconds())

    def test_relayDies(self) -> None:
        """
        When the relay goes away the reservation is lost (an event, the
        circuit address withdrawn), and reserving again is retried.
        """
        w = RelayWorld(self)
        w.grid.result(w.r.stopService())
        w.grid.settle()
        self.assertEqual([e for e, _ in w.events], ["reserved", "lost"])
        self.assertEqual(w.a.addresses.relayAddrs(), [])
        self.assertFalse(w.client.acceptsRelay(w.r.peerID))
        self.assertIn(w.r.peerID, w.client._timers)

    def test_reservationLimit(self) -> None:
        """
        A relay at its reservation limit refuses with RESERVATION_REFUSED;
        the one holder renewing is not refused.
        """
        w = RelayWorld(self, RelayLimits(maxReservations=1))
        f = w.grid.failure(RelayClient(w.b).reserve(w.grid.addr(w.r), keep=False), RelayRefused)
        self.assertEqual(f.value.status, Status.RESERVATION_REFUSED)
        self.assertIn("RESERVATION_REFUSED", str(f.value))
        w.grid.result(w.client.reserve(w.grid.addr(w.r)))

    def test_manyReservationsRefusedCheaply(self) -> None:
        """
        A peer asking for reservations over and over holds one and, past
        the request burst, is refused without a voucher being signed.
        """
        w = RelayWorld(self, reserve=False)
        probes = [w.hop(w.b, reserveMsg()) for _ in range(60)]
        statuses = [p.answers[0].status for p in probes]
        self.assertEqual(statuses[:16], [Status.OK] * 16)
        self.assertEqual(set(statuses[16:]), {Status.RESERVATION_REFUSED})
        self.assertFalse(any(p.answers[0].HasField("reservation") for p in probes[16:]))
        self.assertEqual(list(w.service.reservations), [w.b.peerID])
        self.assertEqual(w.service.refusals["RESERVATION_REFUSED"], 44)

    def test_noReservationOverRelayedConnection(self) -> None:
        """
        A reservation asked over a relayed connection is refused with
        PERMISSION_DENIED (no relaying over relays).
        """
        w = RelayWorld(self)
        conn = w.grid.result(w.b.connect(w.circuitAddr()))
        bService = RelayService(w.b)
        bService.startService()
        self.addCleanup(bService.stopService)
        aConn = w.a.connectionTo(w.b.peerID)
        assert aConn is not None
        self.assertTrue(aConn.limited and conn.limited)
        raw = RawHop(reserveMsg())
        w.grid.result(w.a.openStreamOn(aConn, [HOP_PROTOCOL], lambda: raw))
        w.grid.settle()
        self.assertEqual(raw.answers[0].status, Status.PERMISSION_DENIED)
        f = w.grid.failure(w.client.reserve(w.b.peerID, keep=False), Exception)
        self.assertIn("itself relayed", str(f.value))


class CircuitTests(SynchronousTestCase):
    def test_echoThroughRelay(self) -> None:
        """
        B reaches A at /.../p2p/R/p2p-circuit/p2p/A: the connection is
        authenticated end to end (A's peer ID), limited on both sides, and
        carries streams.
        """
        w = RelayWorld(self)
        conn = w.grid.result(w.b.connect(w.circuitAddr()))
        self.assertEqual(conn.remotePeer, w.a.peerID)
        self.assertTrue(conn.limited)
        self.assertEqual(conn.transport, "relay")
        inbound = w.a.connectionTo(w.b.peerID)
        assert inbound is not None
        self.assertTrue(inbound.limited)
        self.assertEqual(inbound.direction, "inbound")
        self.assertEqual(
            inbound.remoteAddr,
            w.grid.addr(w.r).encapsulate(f"/p2p-circuit/p2p/{w.b.peerID}"),
        )
        got = Collect()
        proto = w.grid.result(w.b.openStream(w.a.peerID, [ECHO_PROTOCOL], lambda: got))
        proto.transport.write(b"through the relay")
        w.grid.settle()
        self.assertEqual(got.data, b"through the relay")
        self.assertEqual(len(w.service.circuits), 1)

    def test_addressWithoutTarget(self) -> None:
        """
        The node's dialer strips the target's /p2p/PEER before asking the
        transport; dialling by peer ID with a circuit address in the
        peerstore still reaches the right peer.
        """
        w = RelayWorld(self)
        w.b.peerStore.addAddrs(w.a.peerID, [w.circuitAddr()], "user")
        conn = w.grid.result(w.b.connect(w.a.peerID))
        self.assertEqual(conn.remotePeer, w.a.peerID)
        self.assertTrue(conn.limited)

    def test_defaultDataCap(self) -> None:
        """
        In the default mode a circuit carries at most 128 KiB each way:
        past it the relay resets both streams and the relayed connection
        ends.
        """
        w = RelayWorld(self)
        Sink.received = 0
        w.a.setStreamHandler(SINK, Sink)
        conn = w.grid.result(w.b.connect(w.circuitAddr()))
        proto = w.grid.result(w.b.openStream(w.a.peerID, [SINK], Collect))
        for _ in range(64):
            proto.transport.write(b"x" * 4096)
            w.grid.settle()
        self.assertTrue(conn.closed)
        self.assertLess(Sink.received, 128 * 1024)
        self.assertGreater(Sink.received, 100 * 1024)
        self.assertEqual(w.service.circuits, set())

    def test_openModeCarries4MiB(self) -> None:
        """
        An open relay (C{beam relay}) puts no cap on a circuit: 4 MiB go
        through and the circuit stays.
        """
        w = RelayWorld(self, RelayLimits.open())
        self.assertIsNone(w.reservation.limit if w.reservation else None)
        Sink.received = 0
        w.a.setStreamHandler(SINK, Sink)
        conn = w.grid.result(w.b.connect(w.circuitAddr()))
        proto = w.grid.result(w.b.openStream(w.a.peerID, [SINK], Collect))
        chunk = b"y" * 65536
        for _ in range(64):
            proto.transport.write(chunk)
            w.grid.settle()
        self.assertEqual(Sink.received, 4 * 1024 * 1024)
        self.assertFalse(conn.closed)
        self.assertEqual(len(w.service.circuits), 1)
        self.assertGreater(w.service.relayedBytes, 4 * 1024 * 1024)

    def test_durationLimit(self) -> None:
        """
        A default-mode circuit is reset after two minutes.
        """
        w = RelayWorld(self, idleTimeout=1e6)
        conn = w.grid.result(w.b.connect(w.circuitAddr()))
        w.grid.advance(119)
        self.assertFalse(conn.closed)
        w.grid.advance(2)
        self.assertTrue(conn.closed)
        self.assertEqual(w.service.circuits, set())

    def test_noReservation(self) -> None:
        """
        CONNECT to a peer without a reservation: NO_RESERVATION, which the
        dialer reports.
        """
        w = RelayWorld(self, reserve=False)
        raw = w.hop(w.b, connectMsg(w.a.peerID))
        self.assertEqual(raw.answers[0].status, Status.NO_RESERVATION)
        f = w.grid.failure(w.b.connect(w.circuitAddr()), DialError)
        self.assertIn("NO_RESERVATION", str(f.value))

    def test_perPeerCircuitLimit(self) -> None:
        """
        A target already in C{maxCircuitsPerPeer} circuits gets no more:
        RESOURCE_LIMIT_EXCEEDED.
        """
        w = RelayWorld(self, RelayLimits(maxCircuitsPerPeer=1))
        w.grid.result(w.b.connect(w.circuitAddr()))
        c = w.grid.node()
        raw = w.hop(c, connectMsg(w.a.peerID))
        self.assertEqual(raw.answers[0].status, Status.RESOURCE_LIMIT_EXCEEDED)

    def test_manyCircuitsRefused(self) -> None:
        """
        Hundreds of CONNECTs from one peer: at most C{maxCircuitsPerPeer}
        circuits exist; the rest are refused with RESOURCE_LIMIT_EXCEEDED.
        """
        w = RelayWorld(self)
        probes = [w.hop(w.b, connectMsg(w.a.peerID)) for _ in range(200)]
        statuses = [p.answers[0].status for p in probes]
        self.assertEqual(statuses.count(Status.OK), 4)
        self.assertEqual(statuses.count(Status.RESOURCE_LIMIT_EXCEEDED), 196)
        self.assertEqual(len(w.service.circuits), 4)

    def test_selfAndLoops(self) -> None:
        """
        The relay never relays to itself or a peer to itself, and a
        circuit address over a circuit is refused before any I/O.
        """
        w = RelayWorld(self)
        self.assertEqual(w.hop(w.b, connectMsg(w.r.peerID)).answers[0].status, Status.PERMISSION_DENIED)
        self.assertEqual(w.hop(w.b, connectMsg(w.b.peerID)).answers[0].status, Status.PERMISSION_DENIED)
        nested = Multiaddr.fromString(
            f"{w.circuitAddr(w.b)}/p2p-circuit/p2p/{w.a.peerID}"
        )
        with self.assertRaises(DialError):
            parseCircuit(nested)
        f = w.grid.failure(w.b.connect(nested), DialError)
        self.assertIn("relayed connection", str(f.value))

    def test_stopWithoutReservationRefused(self) -> None:
        """
        A stop CONNECT from a relay we hold no reservation on is refused
        with PERMISSION_DENIED.
        """
        w = RelayWorld(self)
        stop = _StopConnect(w.r.peerID, Limit())
        w.grid.result(w.b.openStream(w.grid.addr(w.a), [STOP_PROTOCOL], lambda: stop))
        f = w.grid.failure(stop.answered, RelayRefused)
        self.assertEqual(f.value.status, Status.PERMISSION_DENIED)

    def test_malformedRequest(self) -> None:
        """
        A hop message that does not parse gets MALFORMED_MESSAGE and a
        reset; one over 4 KiB is reset before it is read.
        """
        w = RelayWorld(self, reserve=False)
        raw = w.hop(w.b, b"\x03\xff\xff\xff")
        self.assertEqual(raw.answers[0].status, Status.MALFORMED_MESSAGE)
        self.assertIsNotNone(raw.ended)
        big = w.hop(w.b, b"\xff\xff\x01")
        self.assertEqual(big.answers, [])
        self.assertIsNotNone(big.ended)
        status = w.hop(w.b, frame(HopMessage(type=HopMessage.STATUS, status=100)))
        self.assertEqual(status.answers[0].status, Status.UNEXPECTED_MESSAGE)


    def test_silentRequestTimesOut(self) -> None:
        """
        A hop stream that never says what it wants is reset after the
        request timeout, and holds nothing at the relay.
        """
        w = RelayWorld(self, reserve=False)
        raw = w.hop(w.b)
        self.assertIsNone(raw.ended)
        w.grid.advance(15.5)
        self.assertIsNotNone(raw.ended)
        self.assertEqual((w.service.reservations, w.service.circuits), ({}, set()))

    def test_circuitsHoldNoDescriptor(self) -> None:
        """
        A relayed connection counts as a connection for the resource
        manager, but not as a file descriptor.
        """
        from beam.p2p.host.dialer import usesFD

        w = RelayWorld(self)
        self.assertFalse(usesFD(RelayTransport(w.a)))
        before = w.a.resources.status()
        w.grid.result(w.b.connect(w.circuitAddr()))
        after = w.a.resources.status()
        self.assertEqual(after["system"]["conns_inbound"], before["system"]["conns_inbound"] + 1)
        self.assertEqual(after["system"]["fd"], before["system"]["fd"])


def _held(service: RelayService) -> int:
    """
    The bytes the relay holds for its circuits: what each circuit stream
    has received but not handed over, and what waits in its send queue.
    """
    return sum(s._buffered + s._queued for c in service.circuits for s in c.streams)


class BandwidthTests(SynchronousTestCase):
    """
    The operator's byte rates (L{RelayLimits.bandwidth} and
    L{RelayLimits.circuitBandwidth}): a circuit over its rate stops
    reading, so the senders stall and the relay holds only what the yamux
    windows let in.
    """

    def _sink(self, w: RelayWorld, sender: Node, handler: str) -> tuple[Any, dict[str, int]]:
        """
        A stream from C{sender} to a counting sink on A (the handler
        C{handler}) through the relay: the stream's protocol and the
        count.
        """
        counts = {"n": 0}

        class Count(Protocol):
            def dataReceived(self, data: bytes) -> None:
                counts["n"] += len(data)

        w.a.setStreamHandler(handler, Count)
        return w.grid.result(sender.openStream(w.a.peerID, [handler], Collect)), counts

    def test_circuitRate(self) -> None:
        """
        A circuit capped at 64 KiB/s moves about 64 KiB per simulated
        second (one second's burst more at most), while the relay holds no
        more than the streams' windows however much the sender has queued.
        """
        rate = 64 * 1024
        w = RelayWorld(self, RelayLimits.open(circuitBandwidth=rate), idleTimeout=1e6)
        w.grid.result(w.b.connect(w.circuitAddr()))
        proto, counts = self._sink(w, w.b, SINK)
        proto.transport.write(b"z" * 4 * 1024 * 1024)
        held = []
        for _ in range(20):
            w.grid.advance(0.5)
            held.append(_held(w.service))
        (circuit,) = w.service.circuits
        relayed = sum(circuit.sent)
        # 10 s at 64 KiB/s, plus the bucket's first second and what was
        # read beyond it: the relay forwards whatever its stream hands it,
        # here up to a whole 256 KiB window at once.
        self.assertGreater(relayed, 9 * rate)
        self.assertLessEqual(relayed, 11 * rate + 256 * 1024)
        self.assertGreater(counts["n"], 7 * rate)
        # In the steady state: 64 KiB a second, within a window's lump.
        w.grid.advance(40)
        later = sum(circuit.sent)
        self.assertLess(abs((later - relayed) / 40 - rate), 256 * 1024 / 40)
        self.assertLess(max(held), 1024 * 1024)
        self.assertTrue(w.service.status()["circuits"][0]["throttled"])
        self.assertEqual(w.service.status()["bandwidth"]["perCircuit"], rate)
        # Without more data the circuit reads again.
        w.grid.advance(120)
        self.assertFalse(circuit.throttled)

    def test_totalRateShared(self) -> None:
        """
        Two circuits under a 64 KiB/s total cap move about 64 KiB per
        simulated second together, in turns (neither starves), and the
        relay holds no more than their windows.
        """
        rate = 64 * 1024
        w = RelayWorld(self, RelayLimits.open(bandwidth=rate), idleTimeout=1e6)
        c = w.grid.node(idleTimeout=1e6)
        c.addresses = AddressBook(lambda: [])
        c.transports.append(RelayTransport(c))
        w.grid.result(w.b.connect(w.circuitAddr()))
        w.grid.result(c.connect(w.circuitAddr()))
        self.assertEqual(len(w.service.circuits), 2)
        one, first = self._sink(w, w.b, SINK)
        two, second = self._sink(w, c, SINK + "/2")
        one.transport.write(b"1" * 2 * 1024 * 1024)
        two.transport.write(b"2" * 2 * 1024 * 1024)
        held = []
        for _ in range(20):
            w.grid.advance(0.5)
            held.append(_held(w.service))
        relayed = sum(sum(x.sent) for x in w.service.circuits)
        self.assertGreater(first["n"], rate)
        self.assertGreater(second["n"], rate)
        # Each turn each circuit reads what its stream holds (up to a
        # 256 KiB window): over 40 s the rate is 64 KiB/s within two such
        # lumps.
        w.grid.advance(40)
        later = sum(sum(x.sent) for x in w.service.circuits)
        self.assertLess(abs((later - relayed) / 40 - rate), 2 * 256 * 1024 / 40)
        self.assertLess(max(held), 2 * 1024 * 1024)
        self.assertEqual(w.service.status()["bandwidth"]["total"], rate)

    def test_byteRate(self) -> None:
        """
        L{ByteRate}: a second's burst, then debt that says how long to
        wait, paid off by the clock.
        """
        from twisted.internet.task import Clock

        from beam.p2p.relay.hop import ByteRate

        clock = Clock()
        rate = ByteRate(clock, 1000)
        rate.charge(1000)
        self.assertEqual(rate.wait(), 0.0)
        rate.charge(500)
        self.assertAlmostEqual(rate.wait(), 0.5)
        clock.advance(0.5)
        self.assertEqual(rate.wait(), 0.0)
        clock.advance(100)
        rate.charge(1500)
        self.assertAlmostEqual(rate.wait(), 0.5)
        self.assertRaises(ValueError, ByteRate, clock, 0)


class WireTests(SynchronousTestCase):
    def test_reserveBytes(self) -> None:
        """
        RESERVE is written with its type even though it is 0 (explicit
        presence), as go-libp2p and js-libp2p expect.
        """
        self.assertEqual(reserveMsg(), b"\x02\x08\x00")

    def test_voucherRoundTrip(self) -> None:
        """
        A voucher opens to what was signed, with the spec's domain and
        payload type; tampering or another signer is refused.
        """
        relay, peer = Identity.generate(), Identity.generate()
        data = signVoucher(relay, peer.peerID, 1234)
        v = openVoucher(data)
        self.assertEqual((v.relay, v.peer, v.expiration), (relay.peerID, peer.peerID, 1234))
        key, _ = openEnvelope(data, DOMAIN, PAYLOAD_TYPE, 4096)
        self.assertEqual(key.peerID(), relay.peerID)
        forged = sealEnvelope(peer, DOMAIN, PAYLOAD_TYPE, pb.Voucher(
            relay=relay.peerID.bytes, peer=peer.peerID.bytes, expiration=1).SerializeToString())
        with self.assertRaises(InvalidVoucher):
            openVoucher(forged)
        with self.assertRaises(InvalidVoucher):
            openVoucher(data[:-1] + bytes([data[-1] ^ 1]))

    def test_ipKey(self) -> None:
        """
        Reservations are counted per IPv4 address and per IPv6 /64.
        """
        self.assertEqual(ipKey(Multiaddr.fromString("/ip4/203.0.113.5/tcp/1")), "203.0.113.5")
        self.assertEqual(ipKey(Multiaddr.fromString("/ip6/2001:db8::1/tcp/1")), "2001:db8::/64")
        self.assertIsNone(ipKey(Multiaddr.fromString("/memory/5")))

    def test_parseCircuit(self) -> None:
        """
        A circuit address names the relay (with its transport address) and
        the target.
        """
        r, a = Identity.generate().peerID, Identity.generate().peerID
        c = parseCircuit(Multiaddr.fromString(f"/ip4/127.0.0.1/tcp/4001/p2p/{r}/p2p-circuit/p2p/{a}"))
        self.assertEqual((c.relay, c.target), (r, a))
        self.assertEqual(c.relayAddr, Multiaddr.fromString(f"/ip4/127.0.0.1/tcp/4001/p2p/{r}"))
        self.assertIsNone(parseCircuit(Multiaddr.fromString(f"/p2p/{r}/p2p-circuit")).target)
        for bad in ("/ip4/127.0.0.1/tcp/1/p2p-circuit", f"/p2p/{r}/p2p-circuit/tcp/5"):
            with self.assertRaises(DialError):
                parseCircuit(Multiaddr.fromString(bad))

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=MAX_MESSAGE + 8))
    def test_fuzzDecoders(self, data: bytes) -> None:
        """
        Any bytes decode to a message or fail with L{RelayMessageError};
        vouchers with L{InvalidVoucher}.
        """
        for decode in (decodeHop, decodeStop):
            try:
                decode(data)
            except RelayMessageError:
                pass
        try:
            openVoucher(data)
        except InvalidVoucher:
            pass

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.binary(max_size=64), max_size=8))
    def test_fuzzFraming(self, chunks: list[bytes]) -> None:
        """
        L{FramedProtocol} fed any chunks hands out messages of at most
        L{MAX_MESSAGE} bytes or resets the stream, never raising.
        """

        class T(FramedProtocol):
            maxSize = 32
            got: list[bytes] = []

            def messageReceived(self, data: bytes) -> None:
                assert len(data) <= 32
                self.got.append(data)

        class FakeStream:
            aborted = False

            def write(self, data: bytes) -> None:
                pass

            def abortConnection(self) -> None:
                self.aborted = True

        proto = T()
        proto.transport = FakeStream()  # type: ignore[assignment]
        for c in chunks:
            proto.dataReceived(c)
        self.assertLessEqual(len(proto._buf), 32 + 10)

    def test_rejectDropsBuffer(self) -> None:
        """
        A stream reset for an oversized length prefix keeps none of what it
        sent (the case hypothesis found: a 33-byte prefix with 42 bytes
        after it, one chunk).
        """

        class T(FramedProtocol):
            maxSize = 32

        class FakeStream:
            def write(self, data: bytes) -> None:
                pass

            def abortConnection(self) -> None:
                pass

        proto = T()
        proto.transport = FakeStream()  # type: ignore[assignment]
        proto.dataReceived(b"!" + b"\x00" * 42)
        self.assertEqual(len(proto._buf), 0)
        proto.dataReceived(b"\x00" * 64)
        self.assertEqual(len(proto._buf), 0)


class LoopbackTCPTests(TestCase):
    """
    The same over real TCP on 127.0.0.1, with the real reactor.
    """

    timeout = 30

    @inlineCallbacks
    def test_echoOverTCP(self) -> Any:
        """
        A reserves on R over TCP; B reaches A through R; echo works, the
        connection is limited.
        """
        from twisted.internet import reactor

        nodes = [Node(reactor, Identity.generate(), ["/ip4/127.0.0.1/tcp/0"]) for _ in range(3)]
        for n in nodes:
            yield n.startService()
            self.addCleanup(n.stopService)
            n.transports.append(RelayTransport(n))
        r, a, b = nodes
        service = RelayService(r)
        service.startService()
        self.addCleanup(service.stopService)
        client = RelayClient(a)
        self.addCleanup(client.stop)
        reservation = yield client.reserve(r.listenAddrs[0].withPeerID(r.peerID))
        addr = reservation.circuitAddrs()[0].encapsulate(f"/p2p/{a.peerID}")
        conn = yield b.connect(addr)
        self.assertTrue(conn.limited)
        got = Collect()
        done: Deferred[bytes] = Deferred()
        got.dataReceived = lambda data: done.callback(data) if not done.called else None  # type: ignore[method-assign]
        proto = yield b.openStream(a.peerID, [ECHO_PROTOCOL], lambda: got)
        proto.transport.write(b"over loopback")
        echoed = yield done
        self.assertEqual(echoed, b"over loopback")
