"""
Relayed connections as a transport: L{RelayTransport} dials
C{.../p2p/RELAY/p2p-circuit/p2p/PEER} addresses through a relay's hop
protocol, and takes the circuits a relay brings in through the stop
protocol (see L{beam.p2p.relay.stop}).

Either way the circuit is one yamux stream on our connection to the relay,
and the node upgrades it like any raw connection: multistream, Noise or
TLS, yamux, so the two peers are authenticated and encrypted end to end
and the relay only ever sees ciphertext.  The connections it makes are
I{limited} (C{PeerConnection.limited}): a relay may cut them after a few
minutes or a few hundred KiB, and the node prefers any direct connection
to them.

Circuits hold no file descriptor of ours (C{usesFD = False}): the
resource manager counts them as connections, not as sockets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import attrs
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.interfaces import IAddress, IProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from beam.errors import BeamError, DialError, describe
from beam.identity.keys import PeerID
from beam.identity.multiaddr import Multiaddr
from beam.p2p.interfaces import IListener, IStreamTransport, ITransport
from beam.p2p.relay.messages import (
    HOP_PROTOCOL,
    FramedProtocol,
    HopMessage,
    Limit,
    RelayError,
    RelayMessageError,
    RelayRefused,
    Status,
    decodeHop,
    frame,
    hopStatus,
)
from beam.proto import circuitv2_pb2 as pb

if TYPE_CHECKING:
    from beam.p2p.host.node import Node

CIRCUIT = "/p2p-circuit"


@implementer(IAddress)
@attrs.frozen
class RelayAddress:
    """
    One end of a relayed connection: C{peer}, reached through C{relay}
    (at C{relayAddr}, the relay's transport address without C{/p2p}, when
    known).
    """

    relay: PeerID
    peer: PeerID
    relayAddr: Optional[Multiaddr] = None
    type: str = "RELAY"

    def multiaddr(self) -> Multiaddr:
        """
        C{<relayAddr>/p2p/RELAY/p2p-circuit/p2p/PEER}.
        """
        base = str(self.relayAddr) if self.relayAddr is not None else ""
        return Multiaddr.fromString(f"{base}/p2p/{self.relay}{CIRCUIT}/p2p/{self.peer}")


@attrs.frozen
class CircuitAddr:
    """
    A dialable circuit address taken apart.

    @ivar relayAddr: the relay's address with its C{/p2p/RELAY}, or just
        C{/p2p/RELAY} when the address gives no transport part.
    @ivar target: the peer behind the relay, if the address names it.
    """

    relay: PeerID
    relayAddr: Multiaddr
    target: Optional[PeerID]


def parseCircuit(addr: Multiaddr) -> CircuitAddr:
    """
    Take C{.../p2p/RELAY/p2p-circuit[/p2p/PEER]} apart.

    @raise DialError: it is not such an address, or the relay part is
        itself a circuit (circuits over circuits are refused).
    """
    text = str(addr)
    at = text.rfind(CIRCUIT)
    before, after = text[:at], text[at + len(CIRCUIT):]
    if at < 0 or (after and not after.startswith("/p2p/")):
        raise DialError(f"{addr} is not a relay address")
    try:
        relayAddr = Multiaddr.fromString(before) if before else None
        target = Multiaddr.fromString(after).peerID() if after else None
    except BeamError as e:
        raise DialError(f"{addr} is not a relay address: {e}") from None
    if after and (target is None or len(Multiaddr.fromString(after).components()) != 1):
        raise DialError(f"{addr} is not a relay address: only /p2p/PEER may follow /p2p-circuit")
    relay = relayAddr.peerID() if relayAddr is not None else None
    if relayAddr is None or relay is None:
        raise DialError(f"{addr} names no relay: a circuit address is .../p2p/RELAY/p2p-circuit/p2p/PEER")
    if "p2p-circuit" in relayAddr.protocols():
        raise DialError(f"{addr} relays over a relayed connection, which relays refuse")
    return CircuitAddr(relay=relay, relayAddr=relayAddr, target=target)


@implementer(IStreamTransport)
class CircuitTransport:
    """
    The raw transport of one relayed connection: the hop or stop stream,
    with addresses that name the circuit instead of the relay's
    connection.

    @ivar stream: the L{YamuxStream<beam.p2p.muxer.yamux.YamuxStream>} on
        our connection to the relay.
    @ivar limit: the relay's L{Limit} for this circuit, or L{None} if it
        announced none.
    """

    def __init__(self, stream: Any, host: RelayAddress, peer: RelayAddress, limit: Optional[Limit]) -> None:
        self.stream = stream
        self.host = host
        self.peer = peer
        self.limit = limit

    @property
    def disconnecting(self) -> bool:
        return bool(self.stream.disconnecting)

    def write(self, data: bytes) -> None:
        self.stream.write(data)

    def writeSequence(self, data: Any) -> None:
        self.stream.writeSequence(data)

    def loseConnection(self) -> None:
        self.stream.loseConnection()

    def loseWriteConnection(self) -> None:
        self.stream.loseWriteConnection()

    def abortConnection(self) -> None:
        self.stream.abortConnection()

    def getPeer(self) -> RelayAddress:
        return self.peer

    def getHost(self) -> RelayAddress:
        return self.host

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.stream.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.stream.unregisterProducer()

    def pauseProducing(self) -> None:
        self.stream.pauseProducing()

    def resumeProducing(self) -> None:
        self.stream.resumeProducing()

    def stopProducing(self) -> None:
        self.stream.stopProducing()


def startCircuit(framed: FramedProtocol, upper: IProtocol, transport: CircuitTransport) -> None:
    """
    Hand the rest of C{framed}'s stream to C{upper} over C{transport}.
    """
    leftover = framed.handOver(upper)
    upper.makeConnection(transport)
    if leftover and not transport.stream.disconnecting:
        upper.dataReceived(leftover)


@implementer(IListener)
class RelayListener:
    """
    "Listening" on C{/p2p-circuit}: being reachable through the relays we
    hold reservations on (L{beam.p2p.relay.client.RelayClient}); there is
    no port to close.
    """

    def __init__(self, addr: Multiaddr) -> None:
        self.addr = addr

    def stopListening(self) -> Deferred[None]:
        return succeed(None)


class _HopConnect(FramedProtocol):
    """
    Our side of a hop CONNECT: ask, then read the one STATUS.
    """

    def __init__(self, target: PeerID) -> None:
        super().__init__()
        self.target = target
        self.answered: Deferred[Optional[Limit]] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        msg = HopMessage(type=HopMessage.CONNECT, peer=pb.Peer(id=self.target.bytes))
        self.transport.write(frame(msg))

    def messageReceived(self, data: bytes) -> None:
        try:
            msg = decodeHop(data)
        except RelayMessageError as e:
            self.reject(e)
            return
        if msg.type != HopMessage.STATUS:
            self.reject(RelayMessageError("the relay answered CONNECT with something other than STATUS"),
                        hopStatus(Status.UNEXPECTED_MESSAGE))
            return
        if msg.status != Status.OK:
            self.reject(RelayRefused(msg.status))
            return
        if not self.answered.called:
            self.answered.callback(Limit.fromProto(msg.limit, msg.HasField("limit")))

    def failed(self, reason: Failure) -> None:
        if not self.answered.called:
            if not reason.check(BeamError):
                reason = Failure(DialError(f"the relay closed the stream: {describe(reason)}"))
            self.answered.errback(reason)


@implementer(ITransport)
class RelayTransport:
    """
    Dial and "listen" on C{/p2p-circuit} addresses through the node's own
    connections to relays.

    Register with C{node.transports.append(RelayTransport(node))}; inbound
    circuits arrive through the stop handler that
    L{RelayClient<beam.p2p.relay.client.RelayClient>} installs.
    """

    name = "relay"
    limited = True
    usesFD = False

    def __init__(self, node: Node) -> None:
        self.node = node

    def canDial(self, addr: Multiaddr) -> bool:
        return "p2p-circuit" in addr.protocols()

    def canListen(self, addr: Multiaddr) -> bool:
        return addr.protocols()[-1:] == ["p2p-circuit"]

    def listen(self, addr: Multiaddr, factory: Any) -> Deferred[IListener]:
        if not self.canListen(addr):
            return fail(DialError(f"cannot listen on {addr}: not a /p2p-circuit address"))
        return succeed(RelayListener(addr))

    def multiaddrOf(self, address: Any) -> Optional[Multiaddr]:
        if isinstance(address, RelayAddress):
            return address.multiaddr()
        return None

    def dial(self, addr: Multiaddr, factory: Any, timeout: float) -> Deferred[Any]:
        """
        Connect to the relay (reusing a connection), CONNECT to the target
        over a hop stream, and run C{factory}'s protocol over that stream.

        The target is the C{/p2p/PEER} after C{/p2p-circuit} (the node's
        dialer keeps it on relayed addresses).
        """
        try:
            circuit = parseCircuit(addr)
        except DialError as e:
            return fail(e)
        target = circuit.target
        if target is None:
            return fail(DialError(f"cannot dial {addr}: a relayed address needs the target's /p2p/PEER"))
        node = self.node
        if target == circuit.relay:
            return fail(DialError(f"cannot dial {addr}: the relay is the target"))
        if circuit.relay == node.peerID:
            return fail(DialError(f"cannot dial {addr}: we are that relay"))
        steps: list[Deferred[Any]] = []

        def cancel(_: Any) -> None:
            for d in steps:
                if not d.called:
                    d.cancel()
            if hop is not None and hop.transport is not None:
                hop.transport.abortConnection()  # type: ignore[attr-defined]  # a stream

        result: Deferred[Any] = Deferred(cancel)
        hop: Optional[_HopConnect] = None
        def _timedOut() -> None:
            if result.called:
                return
            result.errback(DialError(f"no circuit through {circuit.relay} within {timeout:g} s"))
            cancel(None)

        timer = node.reactor.callLater(timeout, _timedOut)

        def finish(r: Any) -> Any:
            if timer.active():
                timer.cancel()
            return r

        result.addBoth(finish)
        target_ = circuit.relayAddr if len(circuit.relayAddr.components()) > 1 else circuit.relay
        connecting = node.connect(target_)
        steps.append(connecting)

        def connected(conn: Any) -> Deferred[Any]:
            nonlocal hop
            if conn.limited:
                raise DialError(f"our connection to relay {circuit.relay} is itself relayed")
            h = hop = _HopConnect(target)
            opening = node.openStreamOn(conn, [HOP_PROTOCOL], lambda: h)
            steps.append(opening)
            return opening.addCallback(lambda _: h.answered)

        def established(limit: Optional[Limit]) -> None:
            assert hop is not None and hop.transport is not None
            stream: Any = hop.transport
            relayAddr = circuit.relayAddr.withoutPeerID() or None
            wrapper = CircuitTransport(
                stream,
                host=RelayAddress(circuit.relay, node.peerID, relayAddr),
                peer=RelayAddress(circuit.relay, target, relayAddr),
                limit=limit,
            )
            proto = factory.buildProtocol(wrapper.peer)
            if proto is None:
                stream.abortConnection()
                raise DialError(f"{addr}: the connection was refused locally")
            startCircuit(hop, proto, wrapper)
            if not result.called:
                result.callback(proto)

        def failed(f: Failure) -> None:
            if result.called:
                return
            if f.check(CancelledError):
                result.errback(f)
            elif f.check(RelayRefused):
                result.errback(f)
            else:
                result.errback(DialError(f"through relay {circuit.relay}: {describe(f)}"))

        connecting.addCallback(connected).addCallback(established).addErrback(failed)
        return result


__all__ = [
    "CircuitAddr",
    "CircuitTransport",
    "RelayAddress",
    "RelayError",
    "RelayListener",
    "RelayTransport",
    "parseCircuit",
    "startCircuit",
]
