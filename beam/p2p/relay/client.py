"""
Reservations: how a node behind a NAT becomes reachable through relays.

L{RelayClient} reserves a slot on each relay it is given (hop RESERVE),
checks the relay's signed voucher, keeps the connection to the relay open
while the reservation lasts, renews it before it expires, and reserves
again when it is lost (the relay went away, the connection dropped).  Its
current C{.../p2p/RELAY/p2p-circuit} addresses go to the node's address
book (C{node.addresses.setRelayAddrs}), from where identify, share
addresses and name records take them.

It also installs the stop handler (L{beam.p2p.relay.stop}): circuits are
taken only from relays we hold a reservation on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional, Union

import attrs
from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger
from twisted.python.failure import Failure

from beam.errors import BeamError, describe
from beam.identity.keys import PeerID
from beam.identity.multiaddr import Multiaddr
from beam.p2p.relay.hop import PROTECT_TAG
from beam.p2p.relay.messages import (
    HOP_PROTOCOL,
    STOP_PROTOCOL,
    FramedProtocol,
    HopMessage,
    Limit,
    RelayError,
    RelayMessageError,
    RelayRefused,
    Status,
    addrsOf,
    decodeHop,
    frame,
)
from beam.p2p.relay.stop import StopHandler
from beam.p2p.relay.transport import CIRCUIT, RelayTransport
from beam.p2p.relay.voucher import InvalidVoucher, openVoucher

if TYPE_CHECKING:
    from beam.p2p.connection import PeerConnection
    from beam.p2p.host.node import Node

RelayTarget = Union[PeerID, Multiaddr, str]

#: Seconds to wait before reserving again after a failure or a loss, one
#: after the other (the last repeats).
RETRY_DELAYS = (5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


@attrs.frozen
class Reservation:
    """
    A slot on C{relay} until C{expire} (UNIX seconds, the relay's clock).

    @ivar addrs: the relay's addresses, each ending in C{/p2p/RELAY}.
    @ivar voucher: the relay's signed voucher (envelope bytes), if it sent
        one.
    @ivar limit: what each circuit through it may carry (L{None}: no limit).
    """

    relay: PeerID
    expire: int
    addrs: tuple[Multiaddr, ...]
    voucher: Optional[bytes]
    limit: Optional[Limit]

    def circuitAddrs(self) -> list[Multiaddr]:
        """
        Our addresses through this relay: C{.../p2p/RELAY/p2p-circuit}.
        """
        return [Multiaddr.fromString(f"{a}{CIRCUIT}") for a in self.addrs]


class _Reserve(FramedProtocol):
    """
    One hop RESERVE: ask, read the STATUS.
    """

    def __init__(self) -> None:
        super().__init__()
        self.answered: Deferred[Any] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(frame(HopMessage(type=HopMessage.RESERVE)))

    def messageReceived(self, data: bytes) -> None:
        try:
            msg = decodeHop(data)
        except RelayMessageError as e:
            self.reject(e)
            return
        if msg.type != HopMessage.STATUS:
            self.reject(RelayMessageError("the relay answered RESERVE with something other than STATUS"))
            return
        assert self.transport is not None
        self.transport.loseConnection()
        if not self.answered.called:
            if msg.status != Status.OK:
                self.answered.errback(RelayRefused(msg.status))
            else:
                self.answered.callback(msg)

    def failed(self, reason: Failure) -> None:
        if not self.answered.called:
            if not reason.check(BeamError):
                reason = Failure(RelayError(f"the relay closed the stream: {describe(reason)}"))
            self.answered.errback(reason)


class RelayClient:
    """
    The reservations of one node.

    @ivar reservations: the reservations held now, by relay.
    """

    log = Logger()

    def __init__(self, node: Node, transport: Optional[RelayTransport] = None,
                 retryDelays: tuple[float, ...] = RETRY_DELAYS) -> None:
        """
        @param transport: the node's L{RelayTransport} (found in
            C{node.transports}, or made and added there, if not given).
        """
        self.node = node
        if transport is None:
            found = [t for t in node.transports if isinstance(t, RelayTransport)]
            transport = found[0] if found else RelayTransport(node)
            if not found:
                node.transports.append(transport)
        self.transport = transport
        self.retryDelays = retryDelays
        self.reservations: dict[PeerID, Reservation] = {}
        self._wanted: dict[PeerID, RelayTarget] = {}
        self._failures: dict[PeerID, int] = {}
        self._timers: dict[PeerID, Any] = {}
        self._observers: list[Callable[[str, Reservation], None]] = []
        self._stopped = False
        node.setStreamHandler(STOP_PROTOCOL, lambda: StopHandler(node, transport, self.acceptsRelay))
        node.addConnectionObserver(self._connectionEvent)

    # -- API -------------------------------------------------------------------

    def addObserver(self, observer: Callable[[str, Reservation], None]) -> None:
        """
        Call C{observer(event, reservation)} for C{"reserved"},
        C{"renewed"}, C{"lost"} (the relay's connection went away) and
        C{"expired"} (renewal kept failing).
        """
        self._observers.append(observer)

    def reserve(self, relay: RelayTarget, keep: bool = True) -> Deferred[Reservation]:
        """
        Reserve a slot on C{relay} (a peer ID whose addresses the node
        knows, or a multiaddr ending in C{/p2p/RELAY}).

        @param keep: renew it before expiry and reserve again after a loss
            or a failure, until L{release}.
        @return: fires with the L{Reservation}, or fails with
            L{RelayRefused} (the relay's status), L{InvalidVoucher}, or why
            the relay could not be reached.
        """
        if self._stopped:
            return fail(RelayError("the relay client is stopped"))
        try:
            peer = _relayPeer(relay)
        except BeamError as e:
            return fail(e)
        if peer == self.node.peerID:
            return fail(RelayError("refusing to reserve on ourselves"))
        if keep:
            self._wanted[peer] = relay
        return self._attempt(peer, relay)

    def release(self, relay: PeerID) -> None:
        """
        Stop keeping a reservation on C{relay} (it lapses at the relay).
        """
        self._wanted.pop(relay, None)
        self._cancelTimer(relay)
        if self.reservations.pop(relay, None) is not None:
            self.node.unprotect(relay, PROTECT_TAG)
            self._publish()

    def stop(self) -> None:
        """
        Release everything and stop answering stop streams.
        """
        self._stopped = True
        for relay in list(set(self._wanted) | set(self.reservations) | set(self._timers)):
            self.release(relay)
        self.node.removeStreamHandler(STOP_PROTOCOL)
        self.node.removeConnectionObserver(self._connectionEvent)

    def acceptsRelay(self, relay: PeerID) -> bool:
        """
        Whether we take circuits through C{relay}: we hold an unexpired
        reservation there.
        """
        r = self.reservations.get(relay)
        return r is not None and r.expire > self.node.reactor.seconds()

    def relayAddrs(self) -> list[Multiaddr]:
        """
        Our circuit addresses through every relay we hold a reservation on.
        """
        out: list[Multiaddr] = []
        for r in self.reservations.values():
            out.extend(a for a in r.circuitAddrs() if a not in out)
        return out

    # -- reserving -------------------------------------------------------------

    def _attempt(self, peer: PeerID, relay: RelayTarget) -> Deferred[Reservation]:
        node = self.node
        reserve = _Reserve()
        conns: list[Any] = []

        def connected(conn: PeerConnection) -> Deferred[Any]:
            if conn.remotePeer != peer:
                raise RelayError(f"the relay at {relay} is {conn.remotePeer}, not {peer}")
            if conn.limited:
                raise RelayError(f"our connection to relay {peer} is itself relayed")
            conns.append(conn)
            return node.openStreamOn(conn, [HOP_PROTOCOL], lambda: reserve).addCallback(
                lambda _: reserve.answered
            )

        target: Any = relay if not isinstance(relay, str) else (
            Multiaddr.fromString(relay) if relay.startswith("/") else PeerID.fromString(relay)
        )
        d = node.connect(target).addCallback(connected)
        d.addCallback(lambda msg: self._accepted(peer, msg, conns[0]))
        d.addErrback(self._failed, peer)
        return d

    def _accepted(self, peer: PeerID, msg: Any, conn: PeerConnection) -> Reservation:
        now = self.node.reactor.seconds()
        if not msg.HasField("reservation") or not msg.reservation.HasField("expire"):
            raise RelayMessageError(f"relay {peer} accepted the reservation but sent none")
        rsvp = msg.reservation
        expire = int(rsvp.expire)
        if expire <= now:
            raise RelayError(f"relay {peer} gave a reservation that has already expired")
        voucher: Optional[bytes] = None
        if rsvp.HasField("voucher"):
            voucher = bytes(rsvp.voucher)
            v = openVoucher(voucher)
            if v.relay != peer or v.peer != self.node.peerID or v.expiration != expire:
                raise InvalidVoucher(f"relay {peer}'s voucher does not match the reservation")
        addrs: list[Multiaddr] = []
        for a in addrsOf(rsvp.addrs):
            who = a.peerID()
            if "p2p-circuit" in a.protocols() or (who is not None and who != peer):
                continue
            full = a.withPeerID(peer)
            if full not in addrs:
                addrs.append(full)
        if not addrs and conn.remoteAddr is not None:
            addrs.append(conn.remoteAddr.withPeerID(peer))
        reservation = Reservation(
            relay=peer, expire=expire, addrs=tuple(addrs), voucher=voucher,
            limit=Limit.fromProto(msg.limit, msg.HasField("limit")),
        )
        if self._stopped:
            return reservation
        renewed = peer in self.reservations
        self.reservations[peer] = reservation
        self._failures.pop(peer, None)
        self.node.protect(peer, PROTECT_TAG)
        if peer in self._wanted:
            self._schedule(peer, max(1.0, (expire - now) * 0.75))
        self._publish()
        self._notify("renewed" if renewed else "reserved", reservation)
        return reservation

    def _failed(self, f: Failure, peer: PeerID) -> Failure:
        self.log.debug("reservation on {relay} failed: {why}", relay=peer, why=describe(f))
        if peer in self._wanted and not self._stopped:
            n = self._failures.get(peer, 0)
            self._failures[peer] = n + 1
            delay = self.retryDelays[min(n, len(self.retryDelays) - 1)]
            held = self.reservations.get(peer)
            if held is not None:
                # A renewal failed: retry, but not past the expiry.
                delay = max(0.0, min(delay, held.expire - self.node.reactor.seconds()))
            self._schedule(peer, delay)
        return f

    def _schedule(self, peer: PeerID, delay: float) -> None:
        self._cancelTimer(peer)
        self._timers[peer] = self.node.reactor.callLater(delay, self._due, peer)

    def _cancelTimer(self, peer: PeerID) -> None:
        timer = self._timers.pop(peer, None)
        if timer is not None and timer.active():
            timer.cancel()

    def _due(self, peer: PeerID) -> None:
        self._timers.pop(peer, None)
        held = self.reservations.get(peer)
        if held is not None and held.expire <= self.node.reactor.seconds():
            self._lose(peer, "expired")
        relay = self._wanted.get(peer)
        if relay is not None:
            self._attempt(peer, relay).addErrback(lambda _: None)

    def _lose(self, peer: PeerID, event: str) -> None:
        held = self.reservations.pop(peer, None)
        if held is None:
            return
        self.node.unprotect(peer, PROTECT_TAG)
        self._publish()
        self._notify(event, held)

    def _connectionEvent(self, event: str, conn: PeerConnection) -> None:
        peer = conn.remotePeer
        if event != "disconnected" or peer not in self.reservations or self._stopped:
            return
        other = self.node.connectionTo(peer)
        if other is not None and not other.limited:
            return
        self._lose(peer, "lost")
        if peer in self._wanted:
            self._schedule(peer, self.retryDelays[0])

    # -- telling others -------------------------------------------------------

    def _publish(self) -> None:
        book = getattr(self.node, "addresses", None)
        if book is not None:
            book.setRelayAddrs(self.relayAddrs())

    def _notify(self, event: str, reservation: Reservation) -> None:
        for observer in list(self._observers):
            try:
                observer(event, reservation)
            except Exception:
                self.log.failure("relay reservation observer failed")


def _relayPeer(relay: RelayTarget) -> PeerID:
    if isinstance(relay, PeerID):
        return relay
    addr = relay
    if isinstance(addr, str):
        if not addr.startswith("/"):
            return PeerID.fromString(addr)
        addr = Multiaddr.fromString(addr)
    peer = addr.peerID()
    if peer is None:
        raise RelayError(f"{relay} names no relay: it must end in /p2p/RELAY")
    return peer
