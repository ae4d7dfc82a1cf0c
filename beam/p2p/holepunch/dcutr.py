"""
DCUtR, Direct Connection Upgrade through Relay (C{/libp2p/dcutr},
libp2p/specs relay/DCUtR.md): two peers joined by a relayed connection
open a direct TCP connection by simultaneous open.

The roles, as the spec names them: C{A} dialled the relayed connection,
C{B} received it (B is the one behind a NAT that A reached through B's
relay address).  B starts:

  1. if A's identify names public addresses, B first dials them
     (the I{unilateral} upgrade; A may simply be reachable);
  2. otherwise, or if that fails, B opens a C{/libp2p/dcutr} stream on the
     relayed connection and sends C{CONNECT} with its observed addresses,
     starting a clock;
  3. A answers C{CONNECT} with its own observed addresses;
  4. B measures the round trip, sends C{SYNC}, and waits half of it;
  5. A dials B's addresses as soon as C{SYNC} arrives, B dials A's when its
     timer expires: the two SYNs cross, each opening the NAT in front of
     its sender for the other's, and TCP's simultaneous open joins them
     into one connection.  Both dial from their listen port (the TCP
     transport does that for every dial), which is the port the observed
     addresses name.
  6. B retries from step 2 twice more (3 attempts) before giving up; the
     relayed connection keeps working either way.

Who is who on the direct connection: a simultaneous open has no
accepting side, and both ends' C{connect()} returns, so the roles of
everything run on top of it (multistream-select, Noise or TLS, yamux's
stream numbering) cannot come from the socket.  The spec assigns them: A
(who received C{CONNECT} and C{SYNC}) is the client, B (who sent them) is
the server.  So B's punch dials run the upgrade as the I{responder}
(C{isInitiator=False}), A's as the initiator.  (multistream-select's
C{/libp2p/simultaneous-connect} extension, which negotiated roles in band,
was dropped from the specs; nim-libp2p and rust-libp2p assign roles this
way too.)

Everything a peer sends is bounded: messages over L{MAX_MESSAGE} bytes
(the spec's 4 KiB) reset the stream before anything is buffered for them,
at most L{MAX_ADDRS} addresses of a message are used, a malformed or
unexpected message resets the stream with a L{HolePunchMessageError}, and
each exchange has a deadline.  At most C{maxConcurrent} punches run at
once (both roles together); more are refused or skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from typing import Any, Optional
from weakref import WeakKeyDictionary

import attrs
from twisted.internet.defer import CancelledError, Deferred, fail, inlineCallbacks
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from beam.encoding.framing import LengthPrefixedReader, encodeLengthPrefixed
from beam.errors import BeamError, ConnectionLimitExceeded, DialError, NegotiationFailed, ProtocolError, describe
from beam.identity.keys import PeerID
from beam.identity.multiaddr import Multiaddr
from beam.p2p.connection import PeerConnection
from beam.p2p.host.addrs import addrScope
from beam.p2p.host.dialer import usesFD
from beam.p2p.resources import OUTBOUND, ResourceLimitExceeded
from beam.proto import dcutr_pb2 as pb

__all__ = [
    "PROTOCOL", "MAX_MESSAGE", "MAX_ADDRS", "MAX_ATTEMPTS", "CONNECT", "SYNC",
    "HolePunchError", "HolePunchMessageError", "HolePunchFailed", "HolePunchMessage",
    "encodeMessage", "decodeMessage", "punchableAddrs", "relayOf",
    "InitiatorExchange", "ResponderExchange", "HolePuncher",
]

PROTOCOL = "/libp2p/dcutr"

#: The largest message read or written (the spec: refuse more than 4 KiB).
MAX_MESSAGE = 4096
#: The most addresses used from one message (and sent in one).
MAX_ADDRS = 16
#: Attempts of the CONNECT/SYNC exchange and simultaneous connect before
#: giving up (the spec: retry twice, 3 attempts in all).
MAX_ATTEMPTS = 3

CONNECT = pb.HolePunch.CONNECT
SYNC = pb.HolePunch.SYNC
_NAMES = {CONNECT: "CONNECT", SYNC: "SYNC"}


class HolePunchError(BeamError):
    """
    The hole punch did not work.
    """


class HolePunchMessageError(ProtocolError, HolePunchError):
    """
    The peer sent a malformed or unexpected hole punch message.
    """


class HolePunchFailed(HolePunchError):
    """
    Hole punching failed; the connection stays relayed.
    """


# -- the wire -----------------------------------------------------------------

@attrs.frozen
class HolePunchMessage:
    """
    One decoded C{HolePunch} message.

    @ivar type: L{CONNECT} or L{SYNC}.
    @ivar addrs: the valid addresses of C{ObsAddrs}, at most L{MAX_ADDRS}.
    """

    type: int
    addrs: tuple[Multiaddr, ...] = ()


def encodeMessage(type: int, addrs: Sequence[Multiaddr] = ()) -> bytes:
    """
    A length-prefixed C{HolePunch} message of C{type} carrying the first
    L{MAX_ADDRS} of C{addrs}.

    @raise ValueError: it would exceed L{MAX_MESSAGE} (our own addresses
        never come close).
    """
    msg = pb.HolePunch(type=type, ObsAddrs=[a.toBytes() for a in list(addrs)[:MAX_ADDRS]])
    data = msg.SerializeToString()
    if len(data) > MAX_MESSAGE:
        raise ValueError(f"hole punch message of {len(data)} bytes exceeds {MAX_MESSAGE}")
    return encodeLengthPrefixed(data)


def decodeMessage(data: bytes) -> HolePunchMessage:
    """
    A C{HolePunch} message from its bytes (the length prefix removed).
    Invalid addresses are skipped (a peer's address list is advice); at
    most L{MAX_ADDRS} valid ones are kept.

    @raise HolePunchMessageError: oversized, malformed, or of no known
        type.
    """
    if len(data) > MAX_MESSAGE:
        raise HolePunchMessageError(f"hole punch message of {len(data)} bytes exceeds the limit of {MAX_MESSAGE}")
    msg = pb.HolePunch()
    try:
        msg.ParseFromString(bytes(data))
    except Exception as e:  # protobuf's DecodeError (a missing type too), and others on odd input
        raise HolePunchMessageError(f"malformed hole punch message: {e}") from None
    if not msg.HasField("type") or msg.type not in _NAMES:
        raise HolePunchMessageError("hole punch message of unknown type")
    addrs: list[Multiaddr] = []
    for raw in msg.ObsAddrs:
        if len(addrs) >= MAX_ADDRS:
            break
        try:
            addrs.append(Multiaddr.fromBytes(bytes(raw)))
        except BeamError:
            continue
    return HolePunchMessage(type=msg.type, addrs=tuple(addrs))


def punchableAddrs(addrs: Sequence[Multiaddr]) -> list[Multiaddr]:
    """
    The addresses of C{addrs} worth a simultaneous open: public IP TCP
    addresses, not relayed, without C{/p2p}, each once, at most
    L{MAX_ADDRS}.  Private and loopback ones are left out: a peer on our
    own network is dialled directly anyway, and a stranger's private
    address means a machine of its network, never ours.
    """
    out: list[Multiaddr] = []
    for addr in addrs:
        if "p2p-circuit" in addr.protocols():
            continue
        bare = addr.withoutPeerID()
        target = bare.tcpTarget()
        if target is None or target[2] not in ("ip4", "ip6") or addrScope(bare) != "public":
            continue
        if bare not in out:
            out.append(bare)
        if len(out) >= MAX_ADDRS:
            break
    return out


def relayOf(conn: PeerConnection) -> Optional[PeerID]:
    """
    The relay a relayed connection runs through (the last C{/p2p} before
    C{/p2p-circuit} in its remote address), if it names one.
    """
    relay: Optional[PeerID] = None
    for name, value in conn.remoteAddr.components():
        if name == "p2p-circuit":
            return relay
        if name == "p2p" and value is not None:
            try:
                relay = PeerID.fromString(value)
            except BeamError:
                relay = None
    return None


# -- the exchange on the relayed stream ----------------------------------------

class _Exchange(Protocol):
    """
    One side of the CONNECT/SYNC exchange on a C{/libp2p/dcutr} stream.

    L{done} fires once the exchange is complete (the stream is then closed),
    or fails with a L{HolePunchError}: a bad message (the stream is reset),
    the stream ending early, or no progress within C{timeout} seconds.
    """

    def __init__(self, clock: IReactorTime, ourAddrs: Callable[[], Sequence[Multiaddr]], timeout: float) -> None:
        self.clock = clock
        self.ourAddrs = ourAddrs
        self.timeout = timeout
        self.done: Deferred[Any] = Deferred()
        self._reader = LengthPrefixedReader(MAX_MESSAGE)
        self._timer: Optional[IDelayedCall] = None

    def connectionMade(self) -> None:
        self._timer = self.clock.callLater(self.timeout, self._timedOut)

    def messageReceived(self, msg: HolePunchMessage) -> None:
        raise NotImplementedError

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        try:
            for frame in self._reader.feed(data):
                self.messageReceived(decodeMessage(frame))
                if self.done.called:
                    return
        except HolePunchMessageError as e:
            self.reset(e)
        except ProtocolError as e:  # the framing: too large, a bad length prefix
            self.reset(HolePunchMessageError(f"bad hole punch message: {e}"))

    def send(self, type: int, addrs: Sequence[Multiaddr] = ()) -> None:
        assert self.transport is not None
        self.transport.write(encodeMessage(type, addrs))

    def reset(self, error: HolePunchError) -> None:
        """
        Give up: reset the stream and fail with C{error}.
        """
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]  # streams are abortable
        self._fail(error)

    def finish(self, result: Any) -> None:
        """
        The exchange is complete: close the stream and fire L{done}.
        """
        self._cancelTimer()
        if self.done.called:
            return
        if self.transport is not None:
            self.transport.loseConnection()
        self.done.callback(result)

    def _fail(self, error: HolePunchError) -> None:
        self._cancelTimer()
        if not self.done.called:
            self.done.errback(Failure(error))

    def _timedOut(self) -> None:
        self._timer = None
        self.reset(HolePunchError(f"the peer did not complete the hole punch exchange within {self.timeout:g} s"))

    def _cancelTimer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._fail(HolePunchError(f"the hole punch stream ended early ({describe(reason)})"))


class InitiatorExchange(_Exchange):
    """
    B's side: send C{CONNECT}, time the answer, send C{SYNC}.

    L{done} fires with C{(addrs, rtt)}: A's addresses and the round trip
    in seconds.  The caller dials A's addresses C{rtt / 2} after that.
    """

    def connectionMade(self) -> None:
        super().connectionMade()
        self._sentAt = self.clock.seconds()
        self.send(CONNECT, self.ourAddrs())

    def messageReceived(self, msg: HolePunchMessage) -> None:
        if msg.type != CONNECT:
            self.reset(HolePunchMessageError(f"expected CONNECT, the peer sent {_NAMES[msg.type]}"))
            return
        rtt = max(0.0, self.clock.seconds() - self._sentAt)
        self.send(SYNC)
        self.finish((list(msg.addrs), rtt))


class ResponderExchange(_Exchange):
    """
    A's side: answer C{CONNECT} with our addresses, then wait for C{SYNC}.

    L{done} fires with B's addresses as soon as C{SYNC} arrives; the caller
    dials them at once.

    @ivar admit: called with the stream when it opens; a reason (text)
        refuses the punch and resets the stream.
    """

    def __init__(
        self,
        clock: IReactorTime,
        ourAddrs: Callable[[], Sequence[Multiaddr]],
        timeout: float,
        admit: Optional[Callable[[Any], Optional[str]]] = None,
    ) -> None:
        super().__init__(clock, ourAddrs, timeout)
        self.admit = admit
        self.theirAddrs: Optional[list[Multiaddr]] = None

    def connectionMade(self) -> None:
        super().connectionMade()
        refusal = self.admit(self.transport) if self.admit is not None else None
        if refusal is not None:
            self.reset(HolePunchError(refusal))

    def messageReceived(self, msg: HolePunchMessage) -> None:
        if self.theirAddrs is None:
            if msg.type != CONNECT:
                self.reset(HolePunchMessageError(f"expected CONNECT, the peer sent {_NAMES[msg.type]}"))
                return
            self.theirAddrs = list(msg.addrs)
            self.send(CONNECT, self.ourAddrs())
            return
        if msg.type != SYNC:
            self.reset(HolePunchMessageError(f"expected SYNC, the peer sent {_NAMES[msg.type]}"))
            return
        self.finish(self.theirAddrs)


# -- the service ------------------------------------------------------------------

class _OneProtocol(Factory):
    noisy = False

    def __init__(self, protocol: Any) -> None:
        self.protocol_ = protocol

    def buildProtocol(self, addr: Any) -> Any:
        return self.protocol_


class HolePuncher:
    """
    DCUtR for one node: serves C{/libp2p/dcutr} (role A) and starts a
    punch (role B) for every relayed connection the node receives, once
    identify has run on it.

    @ivar paths: how each connection the puncher made came about
        (C{"hole-punched"}, or C{"direct"} for a unilateral upgrade); see
        L{pathOf}.
    @ivar punched: direct connections obtained by hole punching.
    @ivar failed: punches that ended without a direct connection.
    """

    log = Logger()

    def __init__(
        self,
        node: Any,
        *,
        maxConcurrent: int = 8,
        attempts: int = MAX_ATTEMPTS,
        dialTimeout: float = 5.0,
        exchangeTimeout: float = 10.0,
    ) -> None:
        """
        @param node: the L{Node<beam.p2p.host.node.Node>}.
        @param maxConcurrent: the most punches under way at once, both roles
            together.
        @param dialTimeout: how long each simultaneous-connect dial may take
            (a SYN is sent again after 1 s and 3 s).
        @param exchangeTimeout: how long the CONNECT/SYNC exchange may take.
        """
        self.node = node
        self.clock: IReactorTime = node.reactor
        self.maxConcurrent = maxConcurrent
        self.attempts = attempts
        self.dialTimeout = dialTimeout
        self.exchangeTimeout = exchangeTimeout
        self.paths: WeakKeyDictionary[PeerConnection, str] = WeakKeyDictionary()
        self.punched = 0
        self.failed = 0
        # Punches under way: role B by peer, role A by stream.
        self._initiating: dict[PeerID, Deferred[Optional[PeerConnection]]] = {}
        self._responding: dict[Any, Deferred[Optional[PeerConnection]]] = {}
        # Peers we are dialling directly now: a direct connection from them
        # that reaches our listener meanwhile is the punch's too.
        self._windows: dict[PeerID, list[Callable[[PeerConnection], None]]] = {}
        self._observers: list[Callable[[str, PeerID, dict[str, Any]], None]] = []
        self._stopped = False
        node.setStreamHandler(PROTOCOL, self._responder)
        node.addConnectionObserver(self._connectionEvent)

    # -- API ---------------------------------------------------------------------

    def addObserver(self, observer: Callable[[str, PeerID, dict[str, Any]], None]) -> None:
        """
        Call C{observer(event, peer, details)} for C{"attempt"} (B: an
        exchange starts; C{attempt}), C{"synced"} (the exchange finished;
        C{rtt}, C{addrs}, C{role}), C{"punched"} (a direct connection;
        C{addr}, C{role}) and C{"failed"} (B gave up; C{relay}, C{reason}).
        """
        self._observers.append(observer)

    def pathOf(self, conn: PeerConnection) -> str:
        """
        How C{conn} came about, for status: C{"hole-punched"}, C{"relayed via
        RELAY"} or C{"direct"}.
        """
        path = self.paths.get(conn)
        if path is not None:
            return path
        if conn.limited:
            relay = relayOf(conn)
            return f"relayed via {relay}" if relay is not None else "relayed"
        return "direct"

    @property
    def active(self) -> int:
        """
        Punches under way, both roles.
        """
        return len(self._initiating) + len(self._responding)

    def punch(self, conn: PeerConnection) -> Deferred[Optional[PeerConnection]]:
        """
        Upgrade the relayed connection C{conn} (one we received: role B):
        fires with the direct connection, or with L{None} once every
        attempt failed (logged, one line); the relayed connection is left
        as it is.  A punch already under way for that peer is shared.
        """
        peer = conn.remotePeer
        running = self._initiating.get(peer)
        if running is not None:
            return running
        d: Deferred[Optional[PeerConnection]] = self._punch(conn)
        if not d.called:
            self._initiating[peer] = d

            def forget(result: object) -> object:
                if self._initiating.get(peer) is d:
                    del self._initiating[peer]
                return result

            d.addBoth(forget)
        return d

    def stop(self) -> None:
        """
        Stop serving and watching, and cancel the punches under way.
        """
        self._stopped = True
        self.node.removeStreamHandler(PROTOCOL)
        self.node.removeConnectionObserver(self._connectionEvent)
        for d in [*self._initiating.values(), *self._responding.values()]:
            d.cancel()

    # -- events ------------------------------------------------------------------

    def _connectionEvent(self, event: str, conn: PeerConnection) -> None:
        if event == "connected" and not conn.limited:
            for watcher in list(self._windows.get(conn.remotePeer, ())):
                watcher(conn)
            return
        if event != "identified" or not conn.limited or conn.direction != "inbound" or self._stopped:
            return
        peer = conn.remotePeer
        if peer in self._initiating or self._direct(peer) is not None:
            return
        if self.active >= self.maxConcurrent:
            self.log.info("not hole punching to {peer}: {n} punches already under way", peer=peer, n=self.active)
            return
        if PROTOCOL not in (conn.identify.protocols if conn.identify is not None else (PROTOCOL,)):
            self.log.debug("{peer} does not speak {proto}: staying relayed", peer=peer, proto=PROTOCOL)
            return
        self.punch(conn).addErrback(lambda f: None)

    # -- helpers -----------------------------------------------------------------

    def ourAddrs(self) -> list[Multiaddr]:
        """
        What we send in C{CONNECT}: the addresses peers observed for us
        (confirmed first, then the most observed) and our public listen
        addresses, as far as a simultaneous open could use them.

        A TURN allocation's relayed address comes right after the
        confirmed ones (before observed ones, which a symmetric NAT makes
        plentiful and useless, so L{MAX_ADDRS} never cuts it): the peer's
        dial to it is an ordinary TCP connection that the TURN server
        hands to us, and it gets in because the NAT service permits the
        peer's IPs on the allocation as soon as the exchange tells them
        (L{beam.daemon.nat}).  So a node behind a symmetric NAT, which no
        punch reaches, still ends up with an unlimited connection.
        """
        book = self.node.addresses
        observed = sorted(book.observed().items(), key=lambda item: -item[1])
        return punchableAddrs([*book.confirmed(), *book.relayAddrs(kind="turn"), *(a for a, _ in observed),
                               *book.listenAddrs()])

    def _direct(self, peer: PeerID) -> Optional[PeerConnection]:
        conn: Optional[PeerConnection] = self.node.connectionTo(peer)
        if conn is not None and not conn.limited and conn.acceptsStreams:
            return conn
        return None

    def _notify(self, event: str, peer: PeerID, **details: Any) -> None:
        for observer in list(self._observers):
            try:
                observer(event, peer, details)
            except Exception:
                self.log.failure("hole punch observer failed")

    # -- role B ------------------------------------------------------------------

    @inlineCallbacks
    def _punch(self, conn: PeerConnection) -> Generator[Deferred[Any], Any, Optional[PeerConnection]]:
        peer = conn.remotePeer
        relay = relayOf(conn)
        reasons: list[str] = []
        theirs = punchableAddrs(conn.identify.listenAddrs if conn.identify is not None else ())
        if theirs:
            # The unilateral upgrade: A may be reachable as it is.
            direct = yield self.connectDirect(peer, theirs, asClient=True)
            if direct is not None:
                self.paths[direct] = "direct"
                self._notify("punched", peer, addr=str(direct.remoteAddr), role="unilateral")
                return direct
            reasons.append("its public addresses did not answer")
        for attempt in range(1, self.attempts + 1):
            existing = self._direct(peer)
            if existing is not None:
                return existing
            if conn.closed or not conn.acceptsStreams:
                reasons.append("the relayed connection closed")
                break
            self._notify("attempt", peer, attempt=attempt)
            try:
                exchange = yield self.node.openStreamOn(
                    conn, [PROTOCOL], lambda: InitiatorExchange(self.clock, self.ourAddrs, self.exchangeTimeout)
                )
                addrs, rtt = yield exchange.done
            except CancelledError:
                raise
            except NegotiationFailed as e:
                reasons.append(f"the peer does not hole punch ({e})")
                break
            except Exception as e:
                reasons.append(f"attempt {attempt}: {describe(e)}")
                continue
            targets = punchableAddrs(addrs)
            self._notify("synced", peer, rtt=rtt, addrs=[str(a) for a in targets], role="B")
            if not targets:
                reasons.append(f"attempt {attempt}: the peer sent no address to punch")
                continue
            yield deferLater(self.clock, rtt / 2, lambda: None)
            direct = yield self.connectDirect(peer, targets, asClient=False)
            if direct is not None:
                self._punchedOn(direct, "B")
                return direct
            reasons.append(f"attempt {attempt}: no direct connection to {', '.join(map(str, targets))}")
        existing = self._direct(peer)
        if existing is not None:
            return existing
        self.failed += 1
        via = str(relay) if relay is not None else str(conn.remoteAddr)
        why = "; ".join(reasons) or "no attempt made"
        self.log.warn("hole punch failed, staying on relay via {relay} (peer {peer}: {why})",
                      relay=via, peer=peer, why=why)
        self._notify("failed", peer, relay=via, reason=why)
        return None

    def _punchedOn(self, conn: PeerConnection, role: str) -> None:
        if conn not in self.paths:
            self.punched += 1
            self.paths[conn] = "hole-punched"
            # Status reads the connection's own path (beam.p2p.host.status).
            setattr(conn, "path", "hole-punched")
            self.log.info("hole punched a direct connection to {peer} at {addr}",
                          peer=conn.remotePeer, addr=conn.remoteAddr)
            self._notify("punched", conn.remotePeer, addr=str(conn.remoteAddr), role=role)

    # -- role A ------------------------------------------------------------------

    def _responder(self) -> Protocol:
        exchange = ResponderExchange(self.clock, self.ourAddrs, self.exchangeTimeout, admit=self._admit)

        def synced(addrs: list[Multiaddr]) -> Optional[Deferred[Optional[PeerConnection]]]:
            stream = exchange.transport
            conn: PeerConnection = stream.connection  # type: ignore[union-attr]
            targets = punchableAddrs(addrs)
            self._notify("synced", conn.remotePeer, rtt=None, addrs=[str(a) for a in targets], role="A")
            if not targets or self._stopped:
                return None
            d = self.connectDirect(conn.remotePeer, targets, asClient=True)
            self._responding[stream] = d

            def done(direct: Optional[PeerConnection]) -> None:
                self._responding.pop(stream, None)
                if direct is not None:
                    self._punchedOn(direct, "A")

            d.addCallback(done)
            d.addErrback(lambda f: self._responding.pop(stream, None) and None)
            return None

        exchange.done.addCallback(synced)
        exchange.done.addErrback(
            lambda f: self.log.debug("hole punch exchange failed: {why}", why=describe(f))
        )
        return exchange

    def _admit(self, stream: Any) -> Optional[str]:
        conn = getattr(stream, "connection", None)
        if self._stopped:
            return "hole punching is stopped"
        if conn is None or not conn.limited:
            return "hole punching is only for relayed connections"
        if self.active >= self.maxConcurrent:
            return f"{self.active} hole punches already under way"
        return None

    # -- the simultaneous connect --------------------------------------------------

    def connectDirect(
        self, peer: PeerID, addrs: Sequence[Multiaddr], asClient: bool
    ) -> Deferred[Optional[PeerConnection]]:
        """
        Dial all of C{addrs} at once (from the listen port, as every TCP
        dial); fires with the first direct connection to C{peer} that
        results, ours or one that reached our listener meanwhile (the
        other dials are then cancelled), or with L{None} if none did.

        @param asClient: run the upgrade as its initiator (role A), or as
            the responder (role B), whichever way the TCP connection came
            about.
        """
        pending: list[Deferred[PeerConnection]] = []

        def cancel(_: Any) -> None:
            for d in pending:
                d.cancel()

        result: Deferred[Optional[PeerConnection]] = Deferred(cancel)
        watchers = self._windows.setdefault(peer, [])

        settled: list[bool] = []
        # As the client, a SYN of the peer's that reaches our listener
        # before our dial leaves (its NAT let it through) must still be
        # answered as client, or both sides wait as servers.
        roles: list[Callable[[], None]] = []
        expect = getattr(self.node, "expectInboundAsInitiator", None)
        if asClient and expect is not None:
            for addr in addrs:
                target = addr.tcpTarget()
                if target is not None:
                    roles.append(expect(target[0], target[1], peer))

        def settle(conn: Optional[PeerConnection]) -> None:
            # Cancelling the other dials below calls back into here: only
            # the first outcome counts.
            if settled or result.called:
                return
            settled.append(True)
            for forget in roles:
                forget()
            if watcher in watchers:
                watchers.remove(watcher)
                if not watchers and self._windows.get(peer) is watchers:
                    del self._windows[peer]
            if conn is None:
                conn = self._direct(peer)
            for d in pending:
                if not d.called:
                    d.cancel()
            result.callback(conn)

        def watcher(conn: PeerConnection) -> None:
            settle(conn)

        watchers.append(watcher)
        remaining = [len(addrs)]

        def one(outcome: Any) -> None:
            remaining[0] -= 1
            if outcome is not None and not isinstance(outcome, Failure):
                settle(outcome)
            elif remaining[0] == 0:
                settle(None)

        for addr in addrs:
            d = self.dialOne(peer, addr, asClient)
            pending.append(d)
        for d in list(pending):
            d.addBoth(one)
        if not addrs:
            settle(None)
        return result

    def dialOne(self, peer: PeerID, addr: Multiaddr, asClient: bool) -> Deferred[PeerConnection]:
        """
        One direct dial to C{addr} whose upgrade runs in the given role.
        """
        node = self.node
        transport = node.transportFor(addr)
        if transport is None or transport.limited:
            return fail(DialError(f"cannot dial {addr} directly"))
        scope = None
        if asClient:
            # A responder's upgrade reserves its own (inbound) scope once
            # connected; an initiator's brings one, as the dialer's do.
            try:
                scope = node.resources.openConnection(OUTBOUND, useFD=usesFD(transport))
            except ResourceLimitExceeded as e:
                return fail(ConnectionLimitExceeded(f"cannot dial {addr}: the node is at a connection limit ({e})"))
        upgrading = node.makeUpgrading(
            isInitiator=asClient, expectedPeer=peer, dialledAddr=addr, transport=transport, scope=scope
        )
        try:
            connecting = transport.dial(addr, _OneProtocol(upgrading), self.dialTimeout)
        except (ValueError, BeamError) as e:
            if scope is not None:
                scope.done()
            return fail(DialError(f"cannot dial {addr}: {e}"))

        def cancel(_: Any) -> None:
            if not connecting.called:
                connecting.cancel()
            elif not upgrading.finished and upgrading.transport is not None:
                upgrading.transport.abortConnection()

        result: Deferred[PeerConnection] = Deferred(cancel)

        def upgraded(outcome: Any) -> None:
            # A responder's upgrade ends in None when it failed (the node
            # logged why); an initiator's in the failure.
            if result.called:
                return
            if isinstance(outcome, PeerConnection):
                result.callback(outcome)
            elif isinstance(outcome, Failure):
                result.errback(outcome)
            else:
                result.errback(DialError(f"the connection to {addr} failed during upgrade"))

        def connected(_: Any) -> None:
            upgrading.done.addBoth(upgraded)

        def failed(f: Failure) -> None:
            if scope is not None and upgrading.transport is None:
                scope.done()
            if not result.called:
                result.errback(DialError(f"{addr}: {describe(f)}"))

        connecting.addCallbacks(connected, failed)
        return result
