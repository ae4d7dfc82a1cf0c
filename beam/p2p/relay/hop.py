"""
The relay: C{/libp2p/circuit/relay/0.2.0/hop}.

L{RelayService} answers RESERVE (a slot with an expiry, a signed voucher
and our addresses) and CONNECT (open a stop stream to the reserved peer
over its connection to us, then splice the two streams), and keeps the
operator's limits:

 - what a circuit may carry: L{RelayLimits.duration} seconds and
   L{RelayLimits.data} bytes in each direction; the spec's defaults (2
   minutes, 128 KiB: enough to coordinate a hole punch) unless the relay
   is L{open<RelayLimits.open>} (no caps, for whole tunnels);
 - how much it holds: reservations in all and per IP address (one per
   peer, renewed in place), circuits in all and per peer (as initiator
   or target), and how often one peer may ask (a small token bucket), so
   a peer asking for 10,000 reservations or circuits is refused with the
   spec's status after a few dozen, each refusal costing a dictionary
   look-up and a few bytes (no signature, no stream to the target);
 - how fast it relays: L{RelayLimits.bandwidth} bytes per second for all
   circuits together and L{RelayLimits.circuitBandwidth} for each (both
   directions counted, as L{RelayService.relayedBytes} counts them).  A
   circuit over its rate stops reading both its streams until the
   L{token bucket<ByteRate>} is back in credit; it never buffers: the
   yamux windows stall the two peers' writers, so what the relay holds
   stays within those windows however fast they send.

Nothing is relayed over a connection that is itself relayed (no
reservation or CONNECT arrives over one, no stop goes out over one), to
ourselves, or from a peer to itself.  The bytes relayed are the two
peers' secure channel: the relay counts them and never reads them.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any, Optional

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from beam.errors import describe
from beam.identity.keys import PeerID
from beam.identity.multiaddr import Multiaddr
from beam.p2p.relay.messages import (
    HOP_PROTOCOL,
    MAX_ADDRS,
    STOP_PROTOCOL,
    FramedProtocol,
    HopMessage,
    Limit,
    RelayMessageError,
    RelayRefused,
    Status,
    StopMessage,
    decodeHop,
    decodeStop,
    frame,
    hopStatus,
    peerOf,
)
from beam.p2p.relay.voucher import signVoucher
from beam.proto import circuitv2_pb2 as pb

if TYPE_CHECKING:
    from beam.p2p.connection import PeerConnection
    from beam.p2p.host.node import Node

#: The node's keep-alive tag on a peer while it holds a reservation.
PROTECT_TAG = "relay-reservation"


@attrs.frozen
class RelayLimits:
    """
    What a relay grants and holds.  0 for C{duration} or C{data} means no
    cap.
    """

    #: Seconds a circuit may last.
    duration: int = 120
    #: Bytes a circuit may carry in each direction.
    data: int = 128 * 1024
    #: Seconds a reservation lasts (the client renews before).
    reservationTTL: float = 3600.0
    maxReservations: int = 128
    #: Reservations from one IPv4 address or IPv6 /64.
    maxReservationsPerIP: int = 8
    maxCircuits: int = 16
    #: Circuits one peer takes part in, as initiator or target.
    maxCircuitsPerPeer: int = 4
    #: Requests (RESERVE or CONNECT) one peer may make in a burst, and how
    #: many per minute after it.
    requestBurst: int = 16
    requestsPerMinute: int = 30
    #: Seconds a client has to send its request, and the target to answer
    #: the stop CONNECT.
    requestTimeout: float = 15.0
    #: Bytes per second all circuits together may relay (both directions
    #: counted); L{None}: no cap.
    bandwidth: Optional[int] = None
    #: Bytes per second one circuit may relay (both directions counted);
    #: L{None}: no cap.
    circuitBandwidth: Optional[int] = None

    @classmethod
    def open(cls, **changes: Any) -> "RelayLimits":
        """
        The limits of C{beam relay}: circuits without duration or data
        caps (whole tunnels), the same operator limits.
        """
        return cls(**{"duration": 0, "data": 0, **changes})

    @property
    def circuitLimit(self) -> Limit:
        return Limit(duration=self.duration, data=self.data)


@attrs.define
class _Reservation:
    peer: PeerID
    expire: int
    ip: Optional[str]
    conn: Any


class _Bucket:
    """
    A token bucket per peer, for the request rate; at most C{size} peers
    are remembered (the oldest is forgotten, which only gives it a full
    bucket again).
    """

    size = 4096

    def __init__(self, clock: Any, burst: int, perMinute: int) -> None:
        self.clock = clock
        self.burst = burst
        self.rate = perMinute / 60.0
        self._tokens: dict[PeerID, tuple[float, float]] = {}

    def take(self, peer: PeerID) -> bool:
        now = self.clock.seconds()
        tokens, then = self._tokens.pop(peer, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - then) * self.rate)
        ok = tokens >= 1.0
        if ok:
            tokens -= 1.0
        self._tokens[peer] = (tokens, now)
        if len(self._tokens) > self.size:
            del self._tokens[next(iter(self._tokens))]
        return ok


class ByteRate:
    """
    A token bucket of bytes on a clock: C{rate} bytes a second, at most
    one second's worth saved up.  L{charge} takes what was relayed even
    beyond the credit (the bytes have arrived already); the debt says how
    long the reader must wait (L{wait}) before it reads again.
    """

    def __init__(self, clock: Any, rate: int) -> None:
        if rate <= 0:
            raise ValueError("a byte rate must be positive")
        self.clock = clock
        self.rate = float(rate)
        self.burst = float(rate)
        self._tokens = self.burst
        self._then = clock.seconds()

    def _refill(self) -> None:
        now = self.clock.seconds()
        self._tokens = min(self.burst, self._tokens + (now - self._then) * self.rate)
        self._then = now

    def charge(self, n: int) -> None:
        self._refill()
        self._tokens -= n

    def wait(self) -> float:
        """
        Seconds until the bucket is out of debt (0 when it is not in
        debt).
        """
        self._refill()
        return -self._tokens / self.rate if self._tokens < 0 else 0.0


def ipKey(addr: Optional[Multiaddr]) -> Optional[str]:
    """
    The IP a connection comes from, for the per-IP reservation cap: the
    IPv4 address or the IPv6 /64; L{None} for other transports.
    """
    if addr is None:
        return None
    comps = addr.components()
    if not comps or comps[0][1] is None:
        return None
    kind, value = comps[0]
    assert value is not None
    if kind == "ip4":
        return value
    if kind == "ip6":
        try:
            return str(ipaddress.IPv6Network((ipaddress.IPv6Address(value.split("%")[0]), 64), strict=False))
        except ValueError:
            return value
    return None


class _ReadPauser:
    """
    The push producer one half of a circuit registers on the other's
    stream: a full send queue pauses reading the other side.  Stopping is
    left to the circuit (which resets or closes each side as it ended).
    """

    def __init__(self, circuit: Circuit, index: int) -> None:
        self.circuit = circuit
        self.index = index

    def pauseProducing(self) -> None:
        self.circuit.pauseReading(self.index, "full")

    def resumeProducing(self) -> None:
        self.circuit.resumeReading(self.index, "full")

    def stopProducing(self) -> None:
        pass


@implementer(IHalfCloseableProtocol)
class _Side(Protocol):
    """
    One stream of a circuit, after the hand-over: what it reads goes to
    the other stream.
    """

    def __init__(self, circuit: Circuit, index: int) -> None:
        self.circuit = circuit
        self.index = index

    def dataReceived(self, data: bytes) -> None:
        self.circuit.forward(self.index, data)

    def readConnectionLost(self) -> None:
        self.circuit.halfClosed(self.index)

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.circuit.sideEnded(self.index, reason)


class Circuit:
    """
    One relayed connection: the initiator's hop stream spliced to the
    target's stop stream.

    @ivar sent: bytes relayed from the initiator (C{[0]}) and from the
        target (C{[1]}).
    """

    def __init__(self, service: RelayService, src: PeerID, dst: PeerID, limit: Limit) -> None:
        self.service = service
        self.src = src
        self.dst = dst
        self.limit = limit
        self.sent = [0, 0]
        self.openedAt = service.node.reactor.seconds()
        self.streams: list[Any] = []
        self.ended = False
        self.why = ""
        self._timer: Any = None
        # Why each side's reading is paused: "full" (the other side's send
        # queue is) and "rate" (a byte rate is in debt); it reads again
        # once no reason is left.
        self._pausedFor: list[set[str]] = [set(), set()]
        self.rate: Optional[ByteRate] = None
        if service.limits.circuitBandwidth is not None:
            self.rate = ByteRate(service.node.reactor, service.limits.circuitBandwidth)
        self._rateTimer: Any = None

    def splice(self, hop: FramedProtocol, stop: FramedProtocol) -> None:
        """
        Join the two streams; bytes that came after each side's last
        message are relayed first.
        """
        a, b = hop.transport, stop.transport
        self.streams = [a, b]
        left = [hop.handOver(_Side(self, 0)), stop.handOver(_Side(self, 1))]
        a.registerProducer(_ReadPauser(self, 1), True)  # type: ignore[union-attr]  # streams are consumers
        b.registerProducer(_ReadPauser(self, 0), True)  # type: ignore[union-attr]
        if self.limit.duration:
            self._timer = self.service.node.reactor.callLater(
                self.limit.duration, self.reset, "the circuit reached its duration limit"
            )
        for i, data in enumerate(left):
            if data:
                self.forward(i, data)

    def forward(self, index: int, data: bytes) -> None:
        if self.ended:
            return
        cap = self.limit.data
        if cap and self.sent[index] + len(data) > cap:
            room = cap - self.sent[index]
            if room > 0:
                self.sent[index] += room
                self.service.relayedBytes += room
                self.streams[1 - index].write(data[:room])
            self.reset("the circuit reached its data limit")
            return
        self.sent[index] += len(data)
        self.service.relayedBytes += len(data)
        self.streams[1 - index].write(data)
        self._charge(len(data))

    # -- pausing -------------------------------------------------------------

    def pauseReading(self, index: int, why: str) -> None:
        """
        Stop reading side C{index} for C{why} (the first reason pauses the
        stream).
        """
        reasons = self._pausedFor[index]
        if not reasons and not self.ended:
            self.streams[index].pauseProducing()
        reasons.add(why)

    def resumeReading(self, index: int, why: str) -> None:
        """
        C{why} no longer holds for side C{index}; it reads again once no
        other reason does.
        """
        reasons = self._pausedFor[index]
        if why not in reasons:
            return
        reasons.discard(why)
        if not reasons and not self.ended:
            self.streams[index].resumeProducing()

    @property
    def throttled(self) -> bool:
        """
        Whether a byte rate holds this circuit's reading now.
        """
        return "rate" in self._pausedFor[0]

    def _charge(self, n: int) -> None:
        """
        Count C{n} relayed bytes against the byte rates; if one is in debt,
        stop reading both sides until it is paid off.
        """
        shared = self.service.rate
        if self.ended or (self.rate is None and shared is None):
            return
        for rate in (self.rate, shared):
            if rate is not None:
                rate.charge(n)
        self._throttle()

    def _throttle(self, ignoreShared: bool = False) -> None:
        """
        Read again if no rate is in debt, else pause and wait: on our own
        timer for the circuit's rate, in the relay's queue for the shared
        one (which wakes its circuits in turn, so none starves).

        @param ignoreShared: the relay's queue woke us: read (one lump:
            what the stream holds) whatever the shared rate says now.
        """
        if self._rateTimer is not None and self._rateTimer.active():
            self._rateTimer.cancel()
        self._rateTimer = None
        if self.ended:
            return
        own = self.rate.wait() if self.rate is not None else 0.0
        shared = self.service.rate
        other = shared.wait() if shared is not None and not ignoreShared else 0.0
        if own <= 0 and other <= 0:
            for i in (0, 1):
                # Resuming may hand us data at once, and that may pause us
                # again: then the other side stays paused.
                if i and self.throttled and (self._rateTimer is not None or self in self.service._waiting):
                    break
                self.resumeReading(i, "rate")
            return
        for i in (0, 1):
            self.pauseReading(i, "rate")
        if own > 0:
            self._rateTimer = self.service.node.reactor.callLater(own, self._throttle)
        else:
            self.service._waitForRate(self)

    def halfClosed(self, index: int) -> None:
        if not self.ended:
            self.streams[1 - index].loseWriteConnection()

    def sideEnded(self, index: int, reason: Failure) -> None:
        if self.ended:
            return
        other = self.streams[1 - index]
        if reason.check(ConnectionDone):
            other.loseConnection()
            self._finish("closed")
        else:
            other.abortConnection()
            self._finish(f"reset: {describe(reason)}")

    def reset(self, why: str) -> None:
        """
        Reset both streams (the spec's answer to a limit reached).
        """
        if self.ended:
            return
        self._finish(why)
        for stream in self.streams:
            stream.abortConnection()

    def _finish(self, why: str) -> None:
        self.ended = True
        self.why = why
        for timer in (self._timer, self._rateTimer):
            if timer is not None and timer.active():
                timer.cancel()
        self._timer = self._rateTimer = None
        self.service._circuitEnded(self)

    def asJSON(self) -> dict[str, Any]:
        return {
            "from": str(self.src),
            "to": str(self.dst),
            "bytes": list(self.sent),
            "seconds": self.service.node.reactor.seconds() - self.openedAt,
            "throttled": self.throttled,
        }


class _StopConnect(FramedProtocol):
    """
    The relay's stop CONNECT to the target; fires L{answered} on OK.
    """

    def __init__(self, initiator: PeerID, limit: Limit) -> None:
        super().__init__()
        self.initiator = initiator
        self.limit = limit
        self.answered: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        msg = StopMessage(type=StopMessage.CONNECT, peer=pb.Peer(id=self.initiator.bytes))
        if not self.limit.unlimited:
            msg.limit.CopyFrom(self.limit.toProto())
        self.transport.write(frame(msg))

    def messageReceived(self, data: bytes) -> None:
        try:
            msg = decodeStop(data)
        except RelayMessageError as e:
            self.reject(e)
            return
        if msg.type != StopMessage.STATUS:
            self.reject(RelayMessageError("the target answered stop CONNECT with something other than STATUS"))
            return
        if msg.status != Status.OK:
            self.reject(RelayRefused(msg.status, "the target"))
            return
        if not self.answered.called:
            self.answered.callback(None)

    def failed(self, reason: Failure) -> None:
        if not self.answered.called:
            self.answered.errback(reason)


class _HopServer(FramedProtocol):
    """
    One inbound hop stream: one request, one answer.
    """

    def __init__(self, service: RelayService) -> None:
        super().__init__()
        self.service = service
        self._timer: Any = None
        self.pending: Optional[Deferred[Any]] = None
        self.done = False

    def connectionMade(self) -> None:
        self._timer = self.service.node.reactor.callLater(
            self.service.limits.requestTimeout,
            lambda: self.reject(RelayMessageError("no hop request in time")),
        )

    def _cancelTimer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def answer(self, status: Status, **kw: Any) -> None:
        """
        Answer with C{status} and end the stream (an OK to CONNECT is
        followed by the splice instead).
        """
        self.done = True
        assert self.transport is not None
        self.transport.write(hopStatus(status, **kw))
        if status is not Status.OK:
            self.service.refusals[status.name] = self.service.refusals.get(status.name, 0) + 1
        self.transport.loseConnection()

    def messageReceived(self, data: bytes) -> None:
        self._cancelTimer()
        if self.done:
            return
        try:
            msg = decodeHop(data)
        except RelayMessageError as e:
            self.done = True
            self.reject(e, hopStatus(Status.MALFORMED_MESSAGE))
            return
        if msg.type == HopMessage.RESERVE:
            self.service._reserve(self)
        elif msg.type == HopMessage.CONNECT:
            try:
                target = peerOf(msg, "hop CONNECT")
            except RelayMessageError as e:
                self.done = True
                self.reject(e, hopStatus(Status.MALFORMED_MESSAGE))
                return
            self.service._connect(self, target)
        else:
            self.done = True
            self.reject(RelayMessageError("hop STATUS from a client"), hopStatus(Status.UNEXPECTED_MESSAGE))

    def failed(self, reason: Failure) -> None:
        self._cancelTimer()
        self.done = True
        if self.pending is not None and not self.pending.called:
            self.pending.cancel()


class RelayService(Service):
    """
    The relay (hop) service of one node.

    @ivar reservations: the current reservations, by peer.
    @ivar circuits: the circuits being set up or relaying.
    @ivar refusals: how many requests were refused, by status name.
    @ivar relayedBytes: bytes relayed since start, both directions.
    """

    log = Logger()

    def __init__(self, node: Node, limits: Optional[RelayLimits] = None) -> None:
        self.node = node
        self.limits = limits if limits is not None else RelayLimits()
        self.reservations: dict[PeerID, _Reservation] = {}
        self._perIP: dict[str, int] = {}
        self.circuits: set[Circuit] = set()
        self._perPeer: dict[PeerID, int] = {}
        self._bucket = _Bucket(node.reactor, self.limits.requestBurst, self.limits.requestsPerMinute)
        self.refusals: dict[str, int] = {}
        self.relayedBytes = 0
        #: The byte rate all circuits share, if the operator set one.
        self.rate: Optional[ByteRate] = (
            ByteRate(node.reactor, self.limits.bandwidth) if self.limits.bandwidth is not None else None
        )
        # Circuits waiting for the shared rate, in the order they began to.
        self._waiting: dict[Circuit, None] = {}
        self._rateTimer: Any = None

    # -- lifecycle -----------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self.node.setStreamHandler(HOP_PROTOCOL, lambda: _HopServer(self))
        self.node.addConnectionObserver(self._connectionEvent)

    def stopService(self) -> None:
        super().stopService()
        self.node.removeStreamHandler(HOP_PROTOCOL)
        self.node.removeConnectionObserver(self._connectionEvent)
        for circuit in list(self.circuits):
            if circuit.streams:
                circuit.reset("the relay stopped")
        if self._rateTimer is not None and self._rateTimer.active():
            self._rateTimer.cancel()
        self._rateTimer = None
        self._waiting = {}
        for peer in list(self.reservations):
            self._drop(peer)

    # -- reservations --------------------------------------------------------

    def _purge(self) -> None:
        now = self.node.reactor.seconds()
        for peer, r in list(self.reservations.items()):
            if r.expire <= now or r.conn.closed:
                self._drop(peer)

    def _drop(self, peer: PeerID) -> None:
        r = self.reservations.pop(peer, None)
        if r is None:
            return
        if r.ip is not None:
            left = self._perIP.get(r.ip, 0) - 1
            if left > 0:
                self._perIP[r.ip] = left
            else:
                self._perIP.pop(r.ip, None)
        self.node.unprotect(peer, PROTECT_TAG)

    def _connectionEvent(self, event: str, conn: PeerConnection) -> None:
        if event != "disconnected":
            return
        r = self.reservations.get(conn.remotePeer)
        if r is not None and r.conn is conn:
            # The spec ties a reservation to the peer's connection; it may
            # live on through another direct connection to the peer.
            other = self.node.connectionTo(conn.remotePeer)
            if other is not None and not other.limited:
                r.conn = other
            else:
                self._drop(conn.remotePeer)

    def relayAddrs(self, conn: Any) -> list[Multiaddr]:
        """
        Our addresses for a reservation, each with C{/p2p/<us>}: what the
        peer on C{conn} may tell others (the node's address filtering),
        no circuit addresses.
        """
        book = getattr(self.node, "addresses", None)
        addrs: list[Multiaddr]
        if book is not None:
            addrs = list(book.advertisedFor(conn.remoteAddr))
        else:
            addrs = list(self.node.advertisedAddrs())
        out: list[Multiaddr] = []
        for a in addrs:
            if "p2p-circuit" in a.protocols():
                continue
            full = a.withPeerID(self.node.peerID)
            if full not in out:
                out.append(full)
        return out[:MAX_ADDRS]

    def _reserve(self, hop: _HopServer) -> None:
        stream: Any = hop.transport
        conn = stream.connection
        peer: PeerID = conn.remotePeer
        if conn.limited:
            hop.answer(Status.PERMISSION_DENIED)
            return
        if not self._bucket.take(peer):
            hop.answer(Status.RESERVATION_REFUSED)
            return
        self._purge()
        existing = self.reservations.get(peer)
        ip = ipKey(conn.remoteAddr)
        if existing is None:
            if len(self.reservations) >= self.limits.maxReservations:
                hop.answer(Status.RESERVATION_REFUSED)
                return
            if ip is not None and self._perIP.get(ip, 0) >= self.limits.maxReservationsPerIP:
                hop.answer(Status.RESERVATION_REFUSED)
                return
            if ip is not None:
                self._perIP[ip] = self._perIP.get(ip, 0) + 1
            existing = self.reservations[peer] = _Reservation(peer, 0, ip, conn)
            self.node.protect(peer, PROTECT_TAG)
        expire = int(self.node.reactor.seconds() + self.limits.reservationTTL)
        existing.expire = expire
        existing.conn = conn
        reservation = pb.Reservation(
            expire=expire,
            addrs=[a.toBytes() for a in self.relayAddrs(conn)],
            voucher=signVoucher(self.node.identity, peer, expire),
        )
        self.log.debug("reservation for {peer} until {expire}", peer=peer, expire=expire)
        hop.answer(Status.OK, limit=self.limits.circuitLimit, reservation=reservation)

    # -- circuits ------------------------------------------------------------

    def _connect(self, hop: _HopServer, target: PeerID) -> None:
        stream: Any = hop.transport
        conn = stream.connection
        src: PeerID = conn.remotePeer
        limits = self.limits
        if conn.limited or target in (self.node.peerID, src):
            hop.answer(Status.PERMISSION_DENIED)
            return
        if not self._bucket.take(src):
            hop.answer(Status.RESOURCE_LIMIT_EXCEEDED)
            return
        self._purge()
        if target not in self.reservations:
            hop.answer(Status.NO_RESERVATION)
            return
        dstConn = self.node.connectionTo(target)
        if dstConn is None or dstConn.limited:
            hop.answer(Status.NO_RESERVATION)
            return
        if (
            len(self.circuits) >= limits.maxCircuits
            or self._perPeer.get(src, 0) >= limits.maxCircuitsPerPeer
            or self._perPeer.get(target, 0) >= limits.maxCircuitsPerPeer
        ):
            hop.answer(Status.RESOURCE_LIMIT_EXCEEDED)
            return
        circuit = Circuit(self, src, target, limits.circuitLimit)
        self.circuits.add(circuit)
        for p in (src, target):
            self._perPeer[p] = self._perPeer.get(p, 0) + 1
        stop = _StopConnect(src, circuit.limit)
        opening = self.node.openStreamOn(dstConn, [STOP_PROTOCOL], lambda: stop)
        pending = hop.pending = opening.addCallback(lambda _: stop.answered)
        timer = self.node.reactor.callLater(limits.requestTimeout, pending.cancel)

        def ok(_: Any) -> None:
            if timer.active():
                timer.cancel()
            if hop.done:
                # The initiator went away meanwhile.
                assert stop.transport is not None
                stop.transport.abortConnection()  # type: ignore[attr-defined]
                circuit._finish("the initiator left")
                return
            hop.done = True
            assert hop.transport is not None
            hop.transport.write(hopStatus(Status.OK, limit=circuit.limit))
            circuit.splice(hop, stop)

        def failed(f: Failure) -> None:
            if timer.active():
                timer.cancel()
            if stop.transport is not None:
                stop.transport.abortConnection()  # type: ignore[attr-defined]
            if not circuit.ended:
                circuit._finish(f"the target did not take it: {describe(f)}")
            if not hop.done:
                hop.answer(Status.CONNECTION_FAILED)

        pending.addCallbacks(ok, failed)

    # -- the shared byte rate ---------------------------------------------------

    def _waitForRate(self, circuit: Circuit) -> None:
        """
        C{circuit} read past the shared rate: it waits until the rate is
        out of debt, behind those that waited before it.
        """
        self._waiting[circuit] = None
        if self._rateTimer is None and self.rate is not None:
            self._rateTimer = self.node.reactor.callLater(self.rate.wait(), self._wake)

    def _wake(self) -> None:
        """
        The shared rate is out of debt: every waiting circuit reads once,
        in the order they waited (each read puts it at the back of the
        queue again), so a busy circuit cannot starve another.
        """
        self._rateTimer = None
        assert self.rate is not None
        wait = self.rate.wait()
        if wait > 0:
            self._rateTimer = self.node.reactor.callLater(wait, self._wake)
            return
        waiting, self._waiting = list(self._waiting), {}
        for circuit in waiting:
            circuit._throttle(ignoreShared=True)

    def _circuitEnded(self, circuit: Circuit) -> None:
        self._waiting.pop(circuit, None)
        if circuit not in self.circuits:
            return
        self.circuits.discard(circuit)
        for p in (circuit.src, circuit.dst):
            left = self._perPeer.get(p, 0) - 1
            if left > 0:
                self._perPeer[p] = left
            else:
                self._perPeer.pop(p, None)
        self.log.debug("circuit {src} -> {dst} ended ({why}); {n} bytes",
                       src=circuit.src, dst=circuit.dst, why=circuit.why, n=sum(circuit.sent))

    # -- status --------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """
        For C{beam network status}: limits, reservations, circuits,
        refusals.
        """
        self._purge()
        return {
            "open": not self.limits.duration and not self.limits.data,
            "limits": attrs.asdict(self.limits),
            "reservations": [
                {"peer": str(p), "expires": r.expire} for p, r in sorted(self.reservations.items(), key=str)
            ],
            "circuits": [c.asJSON() for c in self.circuits],
            "refusals": dict(self.refusals),
            "relayedBytes": self.relayedBytes,
            "bandwidth": {
                "total": self.limits.bandwidth,
                "perCircuit": self.limits.circuitBandwidth,
                "throttledCircuits": sum(1 for c in self.circuits if c.throttled),
            },
        }
