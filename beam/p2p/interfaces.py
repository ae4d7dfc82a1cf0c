"""
The seams of the peer-to-peer layer.

Everything above C{beam.p2p} (the DHT, names, tunnels, the daemon, and
plugins) talks to a node through L{IHost} and L{IPeerStore} only; the node
reaches the network through L{ITransport}s and multiplexes through an
L{IMuxerSession}.  A new transport (relay, QUIC, onion), a new service
(gossip, mDNS) or a test double plugs in by providing one of these,
without touching the others' private state.

Why interfaces rather than base classes: the implementations differ in
everything but these few methods (a TCP listener and a relay reservation
share nothing), and zope.interface lets tests check that a fake provides
exactly what the real one does (L{zope.interface.verify.verifyObject}).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional, Sequence, Union

from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.internet.interfaces import ITransport as ITwistedTransport
from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred
    from twisted.internet.interfaces import IAddress, IProtocol, IProtocolFactory

    from beam.identity.keys import PeerID
    from beam.identity.multiaddr import Multiaddr


class IAbortableTransport(ITwistedTransport, IConsumer, IPushProducer):
    """
    What Beam's protocols rely on in a connection's transport beyond
    Twisted's L{ITwistedTransport}: it is a consumer (producers register
    on it for flow control) and a push producer (its reading can be
    paused), and it can be aborted.

    Every byte stream Beam runs a protocol over is one: Twisted's TCP
    transports and yamux streams (neither declares it: the checks rely on
    their methods, not on the declaration), the in-memory pipe, the Noise
    and TLS secure channels and the tunnel's compression wrappers.
    """

    def abortConnection() -> None:
        """
        Close at once, discarding anything not yet written (a TCP RST, a
        yamux stream reset).
        """


class IStreamTransport(IAbortableTransport):
    """
    An L{IAbortableTransport} that can also half-close: TCP, yamux streams
    and the tunnel's compression wrappers (not the raw memory pipe nor
    the secure channels).
    """

    def loseWriteConnection() -> None:
        """
        End our output (TCP C{shutdown(SHUT_WR)}, a yamux FIN) and keep
        reading.
        """


class IListener(Interface):
    """
    One address a transport listens on.
    """

    addr = Attribute("The L{Multiaddr} actually bound (a port of 0 replaced by the real one).")

    def stopListening() -> object:
        """
        Stop accepting connections; may return a Deferred that fires when
        done.  Connections already accepted are not affected.
        """


class ITransport(Interface):
    """
    A way of carrying a raw, not yet secured byte stream between two nodes:
    TCP, the in-memory transport, later relayed circuits, QUIC, onion
    services.

    A transport hands each raw connection to a Twisted protocol from the
    factory it was given (the node's upgrader: multistream, security,
    muxer); that protocol's C{transport} is an ordinary
    L{twisted.internet.interfaces.ITransport} whose C{getPeer()} and
    C{getHost()} this transport knows how to turn into multiaddrs.
    """

    name = Attribute("Short name shown in status output, e.g. C{'tcp'} or C{'memory'}.")
    limited = Attribute(
        "True when this transport's connections are limited (relayed: short, "
        "small, and only worth using until a direct one exists)."
    )

    def canDial(addr: Multiaddr) -> bool:
        """
        Whether C{addr} (a L{Multiaddr} without C{/p2p}) is one this
        transport can dial.
        """

    def canListen(addr: Multiaddr) -> bool:
        """
        Whether this transport can listen on C{addr}.
        """

    def dial(addr: Multiaddr, factory: IProtocolFactory, timeout: float) -> Deferred[IProtocol]:
        """
        Connect to C{addr}; C{factory.buildProtocol} supplies the protocol.
        Fires with that protocol once connected, or fails with
        L{beam.errors.DialError} (within C{timeout} seconds).  Cancelling
        the Deferred abandons the attempt.
        """

    def listen(addr: Multiaddr, factory: IProtocolFactory) -> Deferred[IListener]:
        """
        Listen on C{addr}; a Deferred that fires with an L{IListener}, or
        fails with L{beam.errors.DialError} saying why not.
        """

    def multiaddrOf(address: IAddress) -> Optional[Multiaddr]:
        """
        The L{Multiaddr} of a Twisted address of this transport's (from a
        raw connection's C{getPeer()} / C{getHost()}), or L{None}.
        """


class IMuxerSession(Interface):
    """
    One multiplexed session over a secured connection (yamux today).
    """

    acceptsStreams = Attribute(
        "Whether new streams may be opened: no go-away either way, not closing, not failed."
    )
    streamCount = Attribute("How many streams are open.")

    def openStream() -> object:
        """
        Open a raw stream; raises L{beam.errors.MuxerClosed} when closing.
        """

    def goAway() -> None:
        """
        Refuse new streams from now on; open ones continue.
        """

    def close() -> None:
        """
        Go away and close once flushed.
        """

    def whenClosed() -> object:
        """
        A Deferred that fires once the session is closed.
        """


class IHost(Interface):
    """
    What services need from a node: its identity and addresses, stream
    handlers, outbound streams, connections and their events, and the
    peerstore.  L{beam.p2p.host.node.Node} provides it;
    L{beam.testing} ships a fake for users' tests.
    """

    reactor = Attribute("The node's reactor (time and I/O); services use it, never the global one.")
    peerID = Attribute("This node's L{PeerID}.")
    peerStore = Attribute("The node's L{IPeerStore}.")
    protocols = Attribute("The protocol IDs this node serves, sorted.")

    listenAddrs = Attribute("The L{Multiaddr}s actually listened on (as bound: may be 0.0.0.0).")

    def advertisedAddrs() -> list[Multiaddr]:
        """
        Addresses worth telling others, each ending in C{/p2p/<our peer
        ID>}: listen addresses with unspecified hosts expanded to the
        machine's interface addresses.
        """

    def setStreamHandler(protocolId: str, handler: Callable[[], IProtocol]) -> None:
        """
        Serve C{protocolId}: each inbound stream that negotiates it gets a
        protocol from C{handler()}, whose transport's C{connection} is the
        L{IPeerConnection} it arrived on.
        """

    def removeStreamHandler(protocolId: str) -> None:
        """
        Stop serving C{protocolId}.
        """

    def hasStreamHandler(protocolId: str) -> bool:
        """
        Whether C{protocolId} is served.
        """

    def connect(target: Union[Multiaddr, PeerID, str]) -> Deferred[Any]:
        """
        A Deferred L{IPeerConnection} to C{target} (a multiaddr, a peer ID
        whose addresses the peerstore knows, or the text of either),
        reusing an open connection (a direct one before a limited one).
        """

    def openStream(
        target: Union[Multiaddr, PeerID, str], protocols: Union[Sequence[str], str], factory: Callable[[], IProtocol]
    ) -> Deferred[IProtocol]:
        """
        Connect to C{target} and open a stream that negotiates one of
        C{protocols}; fires with the protocol C{factory()} made for it.
        """

    def connectionTo(peer: PeerID) -> Optional[IPeerConnection]:
        """
        The connection new streams to C{peer} would use now (direct
        preferred), or L{None}.
        """

    def liveConnections() -> Sequence[IPeerConnection]:
        """
        Every open L{IPeerConnection}, one per peer (the one in use).
        """

    def addConnectionObserver(observer: Callable[[str, Any], None]) -> None:
        """
        Call C{observer(event, connection)} for C{"connected"},
        C{"identified"}, C{"updated"} and C{"disconnected"}.
        """

    def removeConnectionObserver(observer: Callable[[str, Any], None]) -> None:
        """
        Stop calling C{observer}; unknown observers are ignored.
        """

    def protect(peer: PeerID, tag: str) -> None:
        """
        Keep the connection to C{peer} open even when idle, until every
        tag put on it is removed with L{unprotect}.
        """

    def unprotect(peer: PeerID, tag: str) -> None:
        """
        Remove one keep-alive tag (unknown tags are ignored).
        """


class IPeerConnection(Interface):
    """
    One authenticated, multiplexed connection to a peer.
    """

    remotePeer = Attribute("The authenticated L{PeerID}.")
    direction = Attribute("C{'inbound'} or C{'outbound'}.")
    remoteAddr = Attribute("The peer's L{Multiaddr} (as dialled, or as seen).")
    transport = Attribute("The name of the L{ITransport} it runs over.")
    limited = Attribute("True for a limited (relayed) connection.")
    acceptsStreams = Attribute("Whether new streams may be opened on it.")

    def openStream() -> object:
        """
        A raw stream, no protocol negotiated yet.
        """


class IPeerStore(Interface):
    """
    What the node knows about other peers: addresses (each with where it
    came from and when it expires), protocols, agent, and latency.

    Every table is bounded: a peer cannot make us store more than a few
    dozen addresses, and the store forgets the least recently useful peers
    past its size.
    """

    def addAddrs(peer: PeerID, addrs: Iterable[Multiaddr], source: str, ttl: Optional[float] = None) -> None:
        """
        Learn C{addrs} for C{peer} from C{source} (C{'user'},
        C{'connected'}, C{'identify'}, C{'dht'}, C{'record'}), each valid
        for C{ttl} seconds (default: the source's).  An address already
        known keeps the better source and the later expiry.
        """

    def addrs(peer: PeerID) -> list[Multiaddr]:
        """
        The unexpired addresses of C{peer}, best first (the address we
        are or were connected on, then ones the user gave, then the rest
        newest first).
        """

    def removeAddrs(peer: PeerID) -> None:
        """
        Forget every address of C{peer}.
        """

    def peers() -> list[PeerID]:
        """
        Every peer with at least one unexpired address.
        """

    def setProtocols(peer: PeerID, protocols: Iterable[str]) -> None:
        """
        Record the protocols C{peer} said it serves (identify).
        """

    def protocols(peer: PeerID) -> list[str]:
        """
        The protocols C{peer} serves, as far as we know.
        """

    def setAgent(peer: PeerID, agent: str) -> None:
        """
        Record C{peer}'s agent version.
        """

    def agent(peer: PeerID) -> Optional[str]:
        """
        C{peer}'s agent version, if known.
        """

    def recordLatency(peer: PeerID, rtt: float) -> None:
        """
        Fold a measured round trip (seconds) into C{peer}'s latency.
        """

    def latency(peer: PeerID) -> Optional[float]:
        """
        A smoothed round-trip estimate for C{peer} (seconds), if measured.
        """
