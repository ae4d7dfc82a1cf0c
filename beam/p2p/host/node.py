"""
The node service: listens, dials, pools connections and routes streams.

A L{Node} is a L{MultiService}: its own job is the transport (listening
ports and the connection pool); later layers (DHT, tunnels, control socket)
are added as named child services.  Everything time-related goes through
the injected reactor, so the pool's idle reaper and dial timeouts run under
a L{Clock} in tests.

Connection pooling: at most one connection per peer is used for new
streams (the I{primary}, C{connections[peer]}).  When two peers dial each
other at the same moment, both sides keep the connection dialled by the
peer with the smaller peer ID and send go-away on the other, which then
closes once its streams are done, so no stream is cut off.  A connection
the peer sent go-away on is likewise retired: it is no longer handed out,
and closes when its last stream ends.

Dialling lives in L{beam.p2p.host.dialer}, identify (asking, answering, pushing)
in L{beam.p2p.host.identifying}.

What peers may make the node hold is accounted by its L{ResourceManager}
(C{node.resources}, L{beam.p2p.resources}): each connection is reserved
before its handshake (inbound ones in the transient scope, capped per
source) and moved to its peer's scope after it; the yamux session reserves
each stream and its receive window in the connection's scopes, and the
node adds the protocol multistream-select agreed on.  What does not fit is
refused with the protocol's refusal (a refused connection, a stream reset)
and everyone else is unaffected.
"""

from __future__ import annotations

import ipaddress
import os

import attr
from enum import Enum
from typing import Any, Callable, Iterable, Optional, Sequence, Union

from twisted.application.service import MultiService
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    fail,
    maybeDeferred,
    succeed,
)
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IDelayedCall, IProtocol
from twisted.internet.protocol import Factory
from zope.interface import implementer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from beam import __version__
from beam.statemachine import IGNORE, Readiness, StateMachine
from beam.statemachine import ILLEGAL
from beam.p2p.host.addrs import AddressBook, addrScope
from beam.p2p.host.dialer import Dialer, usesFD
from beam.p2p.host.identifying import NodeIdentify
from beam.p2p.connection import PeerConnection
from beam.errors import (
    BeamError,
    ConnectionLimitExceeded,
    DialError,
    MuxerClosed,
    NegotiationFailed,
    NodeStopped,
    PingTimeout,
)
from beam.p2p.protocols.identify import IDENTIFY_PROTOCOL, IDENTIFY_PUSH_PROTOCOL, IdentifyInfo
from beam.identity.keys import Identity, PeerID
from beam.identity.multiaddr import Multiaddr
from beam.p2p.multistream import MultistreamDialer, MultistreamListener, MultistreamProtocol
from beam.p2p.muxer.yamux import YamuxSession, YamuxStream
from beam.p2p.protocols.ping import PING_PROTOCOL, PingClient, PingResponder
from beam.p2p.resources import (
    INBOUND,
    UNLIMITED,
    ConnectionScope,
    ResourceLimitExceeded,
    ResourceManager,
)
from beam.p2p.security.interfaces import ISecureTransport, SecureInfo
from beam.p2p.security.noise import NoiseTransport
from beam.p2p.upgrade import YAMUX_PROTOCOL, UpgradingProtocol
from beam.p2p.host.peerstore import PeerStore
from beam.p2p.interfaces import IHost, ITransport
from beam.p2p.protocols.echo import ECHO_PROTOCOL, EchoProtocol
from beam.p2p.transport.tcp import TCPTransport

AGENT_VERSION = f"beam/{__version__}"


@implementer(ISecureTransport)
class _LazyTLS:
    """
    C{/tls/1.0.0}, offered and accepted like
    L{TLSTransport<beam.p2p.security.tls.TLSTransport>}, which it makes (with
    its certificate) the first time a connection picks TLS: a node whose
    peers all choose Noise neither imports Beam's TLS nor makes a
    certificate (about 1 MiB per process; OpenSSL itself is imported by
    Twisted's reactor whether used or not).
    """

    protocolId = "/tls/1.0.0"

    def __init__(self, identity: Identity, muxers: Sequence[str], clock: Any) -> None:
        self._args = (identity, tuple(muxers), clock)
        self._tls: Optional[ISecureTransport] = None

    def wrap(
        self,
        isInitiator: bool,
        expectedPeer: Optional[PeerID],
        upperFactory: Callable[[SecureInfo], IProtocol],
    ) -> Any:
        if self._tls is None:
            from beam.p2p.security.tls import TLSTransport

            identity, muxers, clock = self._args
            self._tls = TLSTransport(identity, muxers=muxers, clock=clock)
        return self._tls.wrap(isInitiator, expectedPeer, upperFactory)


class NodeState(Enum):
    """
    Where a node is in its life.
    """

    STOPPED = "stopped"
    #: Started; listeners are being set up.
    STARTING = "starting"
    #: Listening (or listening failed, which was reported): dialling and
    #: serving work.
    RUNNING = "running"
    #: Closing connections and listeners; fails everything new.
    STOPPING = "stopping"


class NodeInput(Enum):
    START = "startService"
    LISTENED = "listeners settled"
    STOP = "stopService"
    STOPPED = "stop complete"


_NS, _NI = NodeState, NodeInput
#: The node's lifecycle (rendered in docs/state-machines/node.md).
NODE_MACHINE: StateMachine[NodeState, NodeInput] = StateMachine("node", NodeState, NodeInput, {
    (_NS.STOPPED, _NI.START): _NS.STARTING,
    (_NS.STOPPED, _NI.LISTENED): ILLEGAL,
    (_NS.STOPPED, _NI.STOP): IGNORE,
    (_NS.STOPPED, _NI.STOPPED): ILLEGAL,
    (_NS.STARTING, _NI.START): ILLEGAL,
    (_NS.STARTING, _NI.LISTENED): _NS.RUNNING,
    (_NS.STARTING, _NI.STOP): _NS.STOPPING,
    (_NS.STARTING, _NI.STOPPED): ILLEGAL,
    (_NS.RUNNING, _NI.START): ILLEGAL,
    (_NS.RUNNING, _NI.LISTENED): ILLEGAL,
    (_NS.RUNNING, _NI.STOP): _NS.STOPPING,
    (_NS.RUNNING, _NI.STOPPED): ILLEGAL,
    (_NS.STOPPING, _NI.START): ILLEGAL,
    # The listeners of a start cut short by a stop settle late.
    (_NS.STOPPING, _NI.LISTENED): IGNORE,
    (_NS.STOPPING, _NI.STOP): IGNORE,
    (_NS.STOPPING, _NI.STOPPED): _NS.STOPPED,
})
Target = Union[Multiaddr, PeerID, str]
StreamHandler = Callable[[], IProtocol]


@implementer(IHost)
class Node(MultiService):
    """
    A Beam node: one identity, its listening addresses and its peer
    connections.

    @ivar connections: the connection used for new streams to each
        connected peer (a direct one whenever there is one).
    @ivar peerStore: addresses and metadata learned for peers (L{PeerStore}).
    @ivar addresses: the node's own addresses (L{AddressBook}): listen,
        observed by peers, confirmed by AutoNAT, relayed; what it may tell
        whom.
    @ivar transports: the L{ITransport}s, tried in order for each address.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        identity: Identity,
        listenAddrs: Sequence[Multiaddr | str] = (),
        *,
        securities: Optional[Sequence[ISecureTransport]] = None,
        transports: Optional[Sequence[ITransport]] = None,
        maxConnections: Optional[int] = None,
        maxStreamsPerConnection: Optional[int] = None,
        idleTimeout: float = 300.0,
        handshakeTimeout: float = 15.0,
        maxPendingHandshakes: Optional[int] = None,
        maxPendingHandshakesPerSource: Optional[int] = None,
        refusalLogInterval: float = 10.0,
        negotiationTimeout: float = 15.0,
        dialTimeout: float = 15.0,
        closeTimeout: float = 5.0,
        duplicateGrace: float = 10.0,
        agentVersion: str = AGENT_VERSION,
        random: Callable[[int], bytes] = os.urandom,
        resources: Optional[ResourceManager] = None,
    ) -> None:
        """
        The connection and stream limits live in C{resources}, the single
        source of truth; the four C{max*} arguments are shortcuts that
        change its limits (L{None}: leave them as they are).

        @param maxConnections: the most connections of all kinds (the
            system scope's C{conns}): established, our dials, and inbound
            ones still in the handshake, which also have their own, smaller
            budget below, so a flood of them takes only that share.
        @param maxPendingHandshakes: the most inbound connections still in
            the security handshake (the transient scope's inbound
            connections, like OpenSSH's C{MaxStartups}): an unauthenticated
            flood fills this budget, so established peers, our own dials
            and new peers that finish quickly are not locked out.  Each is
            dropped after C{handshakeTimeout}.
        @param maxPendingHandshakesPerSource: the most of those from one
            source (L{sourceKey}: one IPv4 address, one IPv6 /64).
        @param maxStreamsPerConnection: the most streams open on one
            connection, both directions together (the connection scope's
            C{streams}).
        @param refusalLogInterval: refused connections are counted in
            L{refusedHandshakes} and logged at most once per this many
            seconds (so is every refusal of the resource manager made here).
        @param duplicateGrace: seconds a duplicate connection we stopped
            using stays open without streams before it is closed (see
            L{_retire}).
        @param resources: the node's L{ResourceManager} (limits on what
            peers may make us hold); one with L{defaultLimits} when not
            given.
        @param closeTimeout: on stop, seconds given to connections to close
            cleanly (flushing what they have queued) before they are
            aborted; a peer that stopped reading cannot hold the stop up.
        """
        super().__init__()
        self.reactor = reactor
        self.identity = identity
        self.peerID = identity.peerID
        self.configuredListenAddrs = [Multiaddr(a) if isinstance(a, str) else a for a in listenAddrs]
        if securities is None:
            securities = [
                NoiseTransport(identity, muxers=[YAMUX_PROTOCOL]),
                _LazyTLS(identity, muxers=[YAMUX_PROTOCOL], clock=reactor),
            ]
        self.securities = list(securities)
        self.transports: list[ITransport] = list(transports) if transports is not None else [TCPTransport(reactor)]
        if resources is None:
            resources = ResourceManager(clock=reactor, logInterval=refusalLogInterval)
        self.resources = resources
        self._overrideLimits(maxConnections, maxPendingHandshakes, maxPendingHandshakesPerSource,
                             maxStreamsPerConnection)
        self.idleTimeout = idleTimeout
        self.handshakeTimeout = handshakeTimeout
        self.refusalLogInterval = refusalLogInterval
        #: Inbound connections refused (over a handshake budget or the
        #: connection limit) since the node was made.
        self.refusedHandshakes = 0
        self._refusedUnlogged = 0
        self._lastRefusalLog: Optional[float] = None
        # Inbound connections still in the handshake (their connections
        # and sources are counted by the resource manager).
        self._pendingInbound: set[UpgradingProtocol] = set()
        # Inbound connections whose handshake runs as initiator (hole
        # punches under way), by source host and port.
        self._inboundRoles: dict[tuple[str, int], PeerID] = {}
        self.negotiationTimeout = negotiationTimeout
        self.dialTimeout = dialTimeout
        self.closeTimeout = closeTimeout
        self.duplicateGrace = duplicateGrace
        # The pending idle checks of retired connections (see _retire).
        self._retireTimers: set[Any] = set()
        self.agentVersion = agentVersion
        self._random = random
        self.connections: dict[PeerID, PeerConnection] = {}
        # Peers whose connection is kept open even when idle (a tunnel
        # forward's host), with the tags of those who asked.
        self._keepTags: dict[PeerID, set[str]] = {}
        self._allConnections: set[PeerConnection] = set()
        self._dialer = Dialer(self)
        self._upgrading: set[UpgradingProtocol] = set()
        self._draining: set[PeerConnection] = set()
        self._ports: list[Any] = []
        self.listenAddrs: list[Multiaddr] = []
        self.peerStore = PeerStore(reactor)
        self._readiness = Readiness()
        self.addresses = AddressBook(listenAddrs=self._expandedListenAddrs)
        self.addresses.onChange(self._addressesChanged)
        #: Seconds after listening before warning that the node has no
        #: address a stranger could reach (L{_checkReachable}).
        self.unreachableWarningDelay = 60.0
        self._unreachableCheck: Optional[IDelayedCall] = None
        self._warnedUnreachable = False
        self._handlers: dict[str, StreamHandler] = {}
        self._reaper: Optional[LoopingCall] = None
        self.state = NodeState.STOPPED
        self._stopped: Optional[Deferred[None]] = None
        self._identifier = NodeIdentify(self, negotiationTimeout)
        self._observers: list[Callable[[str, PeerConnection], None]] = []
        self.setStreamHandler(IDENTIFY_PROTOCOL, self._identifier.responder)
        self.setStreamHandler(IDENTIFY_PUSH_PROTOCOL, self._identifier.pushHandler)
        self.setStreamHandler(PING_PROTOCOL, PingResponder)
        self.setStreamHandler(ECHO_PROTOCOL, EchoProtocol)

    def _overrideLimits(
        self,
        maxConnections: Optional[int],
        maxPendingHandshakes: Optional[int],
        maxPendingHandshakesPerSource: Optional[int],
        maxStreamsPerConnection: Optional[int],
    ) -> None:
        """
        Put the constructor's shortcuts into the resource manager's limits.
        """
        limits = self.resources.limits
        changes: dict[str, Any] = {}
        if maxConnections is not None:
            s = limits.system
            changes["system"] = attr.evolve(
                s,
                conns=maxConnections,
                connsInbound=min(s.connsInbound, maxConnections),
                connsOutbound=min(s.connsOutbound, maxConnections),
            )
        if maxPendingHandshakes is not None:
            t = limits.transient
            # Our own dials are transient too until the handshake is done:
            # the total leaves them their share, so a flood of inbound
            # handshakes does not stop the node dialling out.
            outbound = min(t.connsOutbound, t.conns)
            changes["transient"] = attr.evolve(
                t,
                connsInbound=maxPendingHandshakes,
                conns=min(UNLIMITED, maxPendingHandshakes + outbound),
            )
        if maxPendingHandshakesPerSource is not None:
            changes["transientPerSource"] = maxPendingHandshakesPerSource
        if maxStreamsPerConnection is not None:
            changes["connection"] = attr.evolve(limits.connection, streams=maxStreamsPerConnection)
        if changes:
            self.resources.setLimits(attr.evolve(limits, **changes))

    @property
    def maxConnections(self) -> int:
        """
        The most connections of all kinds (the resource manager's system
        C{conns}).
        """
        return self.resources.limits.system.conns

    @property
    def maxPendingHandshakes(self) -> int:
        """
        The most inbound connections in the handshake at once.
        """
        limits = self.resources.limits.transient
        return min(limits.connsInbound, limits.conns)

    @property
    def maxPendingHandshakesPerSource(self) -> int:
        return self.resources.limits.transientPerSource

    @property
    def maxStreamsPerConnection(self) -> int:
        return self.resources.limits.connection.streams

    # -- stream handlers -------------------------------------------------

    def setStreamHandler(self, protocolId: str, handler: StreamHandler) -> None:
        """
        Serve C{protocolId}: every inbound stream that negotiates it gets a
        protocol from C{handler()}; its transport is the L{YamuxStream}
        (with C{.connection.remotePeer} telling who is on the other end).
        Connected peers learn of the change through identify push.

        A handler that raises, or whose protocol raises in
        C{connectionMade}, costs only that stream (it is reset and the
        error logged).
        """
        self._handlers[protocolId] = handler
        if self.state in (NodeState.STARTING, NodeState.RUNNING):
            self._identifier.schedulePush()

    def removeStreamHandler(self, protocolId: str) -> None:
        """
        Stop serving C{protocolId} (streams already open are unaffected);
        connected peers learn of it through identify push.
        """
        if self._handlers.pop(protocolId, None) is not None and self.state in (NodeState.STARTING, NodeState.RUNNING):
            self._identifier.schedulePush()

    def hasStreamHandler(self, protocolId: str) -> bool:
        return protocolId in self._handlers

    @property
    def protocols(self) -> list[str]:
        return sorted(self._handlers)

    # -- connection events and keep-alive --------------------------------

    def addConnectionObserver(self, observer: Callable[[str, PeerConnection], None]) -> None:
        """
        Call C{observer(event, connection)} for C{"connected"},
        C{"identified"} (identify answered), C{"updated"} (identify push)
        and C{"disconnected"}, in that order per connection.  An observer
        that raises is logged and kept.
        """
        self._observers.append(observer)

    def removeConnectionObserver(self, observer: Callable[[str, PeerConnection], None]) -> None:
        if observer in self._observers:
            self._observers.remove(observer)

    def protect(self, peer: PeerID, tag: str) -> None:
        """
        Keep the connection to C{peer} open while idle until every tag is
        removed (a tunnel forward keeps its host's connection warm).
        """
        self._keepTags.setdefault(peer, set()).add(tag)

    def unprotect(self, peer: PeerID, tag: str) -> None:
        tags = self._keepTags.get(peer)
        if tags is not None:
            tags.discard(tag)
            if not tags:
                del self._keepTags[peer]

    def connectionTo(self, peer: PeerID) -> Optional[PeerConnection]:
        return self._usableConnection(peer)

    def liveConnections(self) -> list[PeerConnection]:
        return list(self.connections.values())

    # -- lifecycle -------------------------------------------------------

    def startService(self) -> Deferred[None]:
        """
        Listen on every configured address; fires once all are listening.
        A failure to listen (port in use, ...) fails the returned Deferred.
        """
        self._move(NodeInput.START)
        self._stopped = None
        super().startService()
        self._reaper = LoopingCall(self._reapIdle)
        self._reaper.clock = self.reactor
        self._reaper.start(max(0.05, min(self.idleTimeout / 4, 30.0)), now=False)
        self._warnedUnreachable = False
        listening = self.listen(self.configuredListenAddrs)
        listening.addBoth(lambda r: (self._move(NodeInput.LISTENED), r)[1])
        listening.addCallback(self._listened)
        return self._readiness.begin(listening)

    def whenListening(self) -> Deferred[None]:
        """
        Fires once every configured address is listened on, or fails with
        the reason one could not be (port in use, ...), or with
        L{NodeStopped} if the node was not started.  For a node started
        by someone else's L{MultiService}, which ignores what
        C{startService} returns: once asked, the failure is reported here
        only.
        """
        if not self._readiness.started:
            return fail(NodeStopped("the node is not started"))
        return self._readiness.when()

    def transportFor(self, addr: Multiaddr, listening: bool = False) -> Optional[ITransport]:
        for transport in self.transports:
            if (transport.canListen(addr) if listening else transport.canDial(addr)):
                return transport
        return None

    def listen(self, addrs: Iterable[Multiaddr]) -> Deferred[None]:
        """
        Start listening on more addresses.
        """
        ds = []
        for addr in addrs:
            transport = self.transportFor(addr, listening=True)
            if transport is None:
                return fail(DialError(f"cannot listen on {addr}: no transport for that address"))
            d = transport.listen(addr, _ListenFactory(self, transport))
            d.addCallback(self._listenStarted)
            ds.append(d)
        return DeferredList(ds, fireOnOneErrback=True, consumeErrors=True).addCallbacks(
            lambda _: None, lambda f: f.value.subFailure
        )

    def expectInboundAsInitiator(self, host: str, port: int, peer: PeerID) -> Callable[[], None]:
        """
        Until the returned callable is called, run the handshake of an
        inbound connection from C{host:port} as its initiator, expecting
        C{peer}.

        A hole punch (DCUtR) gives each side a role for the direct
        connection whichever way TCP makes it; when the peer's SYN reaches
        our listener before our own dial left (the other side's NAT let it
        through), the connection is accepted rather than simultaneously
        opened, and would otherwise run as a responder, like the peer:
        the handshake would stall.
        """
        key = (host, port)
        self._inboundRoles[key] = peer

        def cancel() -> None:
            if self._inboundRoles.get(key) is peer:
                del self._inboundRoles[key]

        return cancel

    def inboundUpgrading(self, addr: Any, transport: ITransport) -> Optional[UpgradingProtocol]:
        """
        The upgrading protocol of an inbound raw connection from C{addr}
        (a Twisted address) over C{transport}: a responder, unless a hole
        punch expects that source to be answered as initiator
        (L{expectInboundAsInitiator}); L{None} if a resource limit refuses
        it.  Every transport that accepts connections (the listeners, a
        TURN allocation) builds them here, so DCUtR's roles hold
        whichever way the peer's connection arrives.
        """
        peer = self._inboundRoles.get((getattr(addr, "host", None), getattr(addr, "port", None)))  # type: ignore[arg-type]
        if peer is None:
            return self.makeUpgrading(isInitiator=False, expectedPeer=None, transport=transport)
        try:
            scope = self.resources.openConnection(INBOUND, source=sourceKey(addr), useFD=usesFD(transport))
        except ResourceLimitExceeded as e:
            self._refused(addr, str(e))
            return None
        return self.makeUpgrading(isInitiator=True, expectedPeer=peer, transport=transport, scope=scope)

    def _listenStarted(self, listener: Any) -> None:
        self._ports.append(listener)
        self.listenAddrs.append(listener.addr)

    def stopService(self) -> Deferred[None]:
        """
        Stop listening, fail every pending dial with L{NodeStopped}, abort
        unfinished handshakes, and close every connection (aborting those
        still open after C{closeTimeout}).  Streams still open, or still
        negotiating, end with L{MuxerClosed}.

        Calling it again while stopping, or once stopped, returns a
        Deferred that fires when the first stop is complete.
        """
        if self._move(NodeInput.STOP) is IGNORE:
            return self._whenStopped() if self._stopped is not None else succeed(None)
        self._stopped = Deferred()
        if self._reaper is not None and self._reaper.running:
            self._reaper.stop()
        self._reaper = None
        self._draining.clear()
        for call in list(self._retireTimers):
            if call.active():
                call.cancel()
        self._retireTimers.clear()
        self._identifier.stop()
        if self._unreachableCheck is not None and self._unreachableCheck.active():
            self._unreachableCheck.cancel()
        self._unreachableCheck = None
        ds: list[Deferred[Any]] = [maybeDeferred(super().stopService)]
        for port in self._ports:
            ds.append(maybeDeferred(port.stopListening))
        self._ports = []
        self.listenAddrs = []
        self._dialer.cancelAll()
        for up in list(self._upgrading):
            up._fail(Failure(NodeStopped()))
        closing = [conn for conn in self._allConnections if not conn.closed]
        for conn in closing:
            ds.append(conn.whenClosed())
            conn.close()
        killer: Optional[IDelayedCall] = None
        if closing:
            def abortStragglers() -> None:
                for conn in closing:
                    if not conn.closed:
                        self.log.info("aborting connection to {peer}: it did not close in time", peer=conn.remotePeer)
                        conn.abort()

            killer = self.reactor.callLater(self.closeTimeout, abortStragglers)

        def done(_: Any) -> None:
            if killer is not None and killer.active():
                killer.cancel()
            stopped, self._stopped = self._stopped, succeed(None)
            assert stopped is not None
            self._move(NodeInput.STOPPED)
            stopped.callback(None)

        DeferredList(ds, consumeErrors=True).addCallback(done)
        return self._whenStopped()

    def _move(self, event: NodeInput) -> Any:
        outcome = NODE_MACHINE.next(self.state, event)
        if isinstance(outcome, NodeState):
            self.state = outcome
        return outcome

    @property
    def openConnectionCount(self) -> int:
        """
        Connections open, or dialled by us and still upgrading (inbound
        handshakes are L{pendingHandshakeCount}).
        """
        return len(self._allConnections) + len(self._upgrading) - len(self._pendingInbound)

    @property
    def pendingHandshakeCount(self) -> int:
        """
        Inbound connections that have not finished the handshake.
        """
        return len(self._pendingInbound)

    def _refused(self, peer: object, why: str) -> None:
        """
        Count a refused inbound connection; log at most once per
        C{refusalLogInterval}, with what the node holds (the resource
        manager logs which limit it was, as rarely).
        """
        self.refusedHandshakes += 1
        self._refusedUnlogged += 1
        now = self.reactor.seconds()
        if self._lastRefusalLog is not None and now - self._lastRefusalLog < self.refusalLogInterval:
            return
        self._lastRefusalLog = now
        self.log.warn(
            "refused {n} inbound connection(s) (latest from {peer}: {why}); "
            "{total} refused in all, {pending} handshakes pending, {open} connections open",
            n=self._refusedUnlogged, peer=peer, why=why, total=self.refusedHandshakes,
            pending=len(self._pendingInbound), open=len(self._allConnections),
        )
        self._refusedUnlogged = 0

    @property
    def isStopping(self) -> bool:
        """
        Stopping or stopped: new dials, streams and connections fail.
        """
        return self.state in (NodeState.STOPPING, NodeState.STOPPED)

    def _whenStopped(self) -> Deferred[None]:
        assert self._stopped is not None
        d: Deferred[None] = Deferred()

        def fire(result: object) -> object:
            d.callback(None)
            return result

        self._stopped.addBoth(fire)
        return d

    # -- addresses -------------------------------------------------------

    def _expandedListenAddrs(self) -> list[Multiaddr]:
        """
        Our listen addresses, with unspecified ones (0.0.0.0, ::) expanded
        to this machine's interface addresses, without C{/p2p}: what the
        address book knows as listen addresses.
        """
        out: list[Multiaddr] = []
        for addr in self.listenAddrs:
            for expanded in _expandUnspecified(addr.withoutPeerID()):
                if expanded not in out:
                    out.append(expanded)
        return out

    def advertisedAddrs(self) -> list[Multiaddr]:
        """
        All our addresses, each ending in C{/p2p/<our peer ID>}, for local
        use (status, the command line): those AutoNAT confirmed, the listen
        addresses (unspecified ones expanded to this machine's interface
        addresses), then relay addresses.  Peers are told only what they
        can reach (L{AddressBook.advertisedFor}); strangers get
        L{shareableAddrs}.
        """
        book = self.addresses
        out: list[Multiaddr] = []
        for addr in [*book.confirmed(), *book.listenAddrs(), *book.relayAddrs()]:
            full = addr.withPeerID(self.peerID)
            if full not in out:
                out.append(full)
        return out

    def shareableAddrs(self) -> list[Multiaddr]:
        """
        The addresses to hand to someone anywhere (share addresses, name
        records), best first, each ending in C{/p2p/<our peer ID>}: see
        L{AddressBook.shareable}.
        """
        out: list[Multiaddr] = []
        for addr in self.addresses.shareable():
            full = addr.withPeerID(self.peerID)
            if full not in out:
                out.append(full)
        return out

    @property
    def observedAddrs(self) -> dict[Multiaddr, int]:
        """
        Our addresses as peers reported them in identify, each with how
        many distinct observers did (L{AddressBook.observed}).
        """
        return self.addresses.observed()

    def _addressesChanged(self) -> None:
        """
        What we may tell peers changed (a confirmed or relay address, the
        reachability): push it to connected peers, and warn if AutoNAT
        found us private with no relay yet.
        """
        if self.state is NodeState.RUNNING:
            self._identifier.schedulePush()
        if self.addresses.reachability == "private":
            self._checkReachable()

    def _listened(self, result: None) -> None:
        """
        Every listener is up.  A node whose only non-loopback addresses
        are private (a home LAN) is most likely behind a NAT: if after
        L{unreachableWarningDelay} seconds neither AutoNAT confirmed an
        address nor a relay gave us one, say so, once
        (L{_checkReachable}).  A node listening on loopback only (tests,
        a machine-local setup) or on a public address is not warned about
        on a timer: the first means it, the second is for AutoNAT to judge.
        """
        book = self.addresses
        scopes = {addrScope(a) for a in book.listenAddrs()}
        if "private" in scopes and "public" not in scopes:
            self._unreachableCheck = self.reactor.callLater(self.unreachableWarningDelay, self._checkReachable)

    def _checkReachable(self) -> None:
        """
        Warn, once per run, that peers outside this network cannot reach
        the node directly, unless it has a confirmed or relay address by
        now.
        """
        self._unreachableCheck = None
        book = self.addresses
        if self._warnedUnreachable or book.hasReachableAddress() or self.isStopping:
            return
        if book.reachability == "unknown" and book.hasPublicListenAddress():
            return
        self._warnedUnreachable = True
        self.log.warn(
            "no public address yet: peers outside this network can reach this node only through a relay (none yet)"
        )

    # -- dialling --------------------------------------------------------

    def _resolveTarget(self, target: Target) -> tuple[Optional[PeerID], list[Multiaddr]]:
        if isinstance(target, str):
            if target.startswith("/"):
                target = Multiaddr.fromString(target)
            else:
                target = PeerID.fromString(target)
        if isinstance(target, PeerID):
            return target, self.peerStore.addrs(target)
        peer = target.peerID()
        return peer, [target.withoutPeerID()]

    def connect(self, target: Target) -> Deferred[PeerConnection]:
        """
        A connection to the peer: the existing one if there is one, else a
        new dial (shared with any dial already under way to that peer).

        Cancelling the returned Deferred withdraws this caller; the dial
        itself is cancelled once no caller waits for it.

        @param target: a multiaddr (with or without C{/p2p/}; without, the
            remote peer is accepted whoever it is), a L{PeerID} whose
            addresses we know, or the text of either.
        """
        if self.isStopping:
            return fail(NodeStopped())
        try:
            peer, addrs = self._resolveTarget(target)
        except BeamError as e:
            return fail(e)
        if peer is not None:
            if peer == self.peerID:
                return fail(DialError("refusing to dial ourselves"))
            existing = self._usableConnection(peer)
            if existing is not None:
                return succeed(existing)
        if not addrs:
            return fail(DialError(f"no known addresses for peer {peer}"))
        return self._dialer.dial(peer, addrs)

    # -- connection setup ------------------------------------------------

    def makeUpgrading(
        self,
        *,
        isInitiator: bool,
        expectedPeer: Optional[PeerID],
        dialledAddr: Optional[Multiaddr] = None,
        transport: ITransport,
        scope: Optional[ConnectionScope] = None,
    ) -> UpgradingProtocol:
        """
        The protocol that upgrades one raw connection (ours if
        C{isInitiator}) to a L{PeerConnection}.

        Every connection holds a L{ConnectionScope} of the resource
        manager: an outbound one brings it (C{scope}, reserved by the
        dialer), an inbound one reserves it when accepted, and is refused
        if there is no room.  The scope moves to the peer once the
        handshake proved who it is (the connection is closed if that peer
        has no room for one more), and is released exactly once: when the
        upgrade fails (refusal, timeout, abort, the node stopping), or else
        when the connection closes.
        """
        held: list[ConnectionScope] = [scope] if scope is not None else []
        made: list[PeerConnection] = []

        def makeConn(up: UpgradingProtocol, info: SecureInfo, secureTransport: Any) -> PeerConnection:
            # The handshake is done: it no longer counts as pending.
            self._pendingInbound.discard(up)
            if held:
                try:
                    held[0].setPeer(info.remotePeer)
                except ResourceLimitExceeded as e:
                    if not isInitiator:
                        assert up.transport is not None
                        self._refused(up.transport.getPeer(), str(e))
                    raise ConnectionLimitExceeded(
                        f"too many connections with {info.remotePeer} ({e})"
                    ) from e
            conn = self._newConnection(up, info, isInitiator, dialledAddr, transport,
                                       held[0] if held else None)
            made.append(conn)
            return conn

        def admit(up: UpgradingProtocol) -> bool:
            assert up.transport is not None  # called from its connectionMade
            _noDelay(up.transport)
            if self.isStopping:
                return False
            if not isInitiator:
                peer = up.transport.getPeer()
                try:
                    held.append(self.resources.openConnection(
                        INBOUND, source=sourceKey(peer), useFD=usesFD(transport)
                    ))
                except ResourceLimitExceeded as e:
                    self._refused(peer, str(e))
                    return False
                self._pendingInbound.add(up)
            self._upgrading.add(up)
            return True

        def finished(result: object) -> object:
            self._upgrading.discard(up)
            self._pendingInbound.discard(up)
            # A connection whose session runs releases its scope when it
            # closes (_connectionClosed); otherwise the upgrade ends here.
            if held and not (made and made[0].session.transport is not None):
                held[0].done()
            return result

        up = UpgradingProtocol(
            clock=self.reactor,
            securities=self.securities,
            isInitiator=isInitiator,
            expectedPeer=expectedPeer,
            makeConnection=makeConn,
            handshakeTimeout=self.handshakeTimeout,
            onConnected=admit,
            address=dialledAddr,
        )
        up.done.addBoth(finished)
        up.done.addCallback(self._registerConnection)
        if not isInitiator:
            # Nobody waits for an inbound upgrade: its failure was logged
            # (by the upgrading protocol, or by _registerConnection) and
            # ends here.
            up.done.addErrback(lambda f: None)
        return up

    def _newConnection(
        self,
        up: UpgradingProtocol,
        info: SecureInfo,
        isInitiator: bool,
        dialledAddr: Optional[Multiaddr],
        transport: ITransport,
        scope: Optional[ConnectionScope] = None,
    ) -> PeerConnection:
        holder: list[PeerConnection] = []

        def onStream(stream: YamuxStream) -> None:
            self._inboundStream(holder[0], stream)

        # The resource manager limits the streams (the connection scope's
        # count is the yamux session's); without a scope, the old cap.
        # A manager that does not enforce (NullResourceManager) gets no
        # per-stream accounting at all: that is what it is for.
        streamScope = scope if self.resources.enforcing else None
        session = YamuxSession(
            isInitiator,
            onStream,
            self.reactor,
            maxStreams=UNLIMITED if streamScope is not None else self.maxStreamsPerConnection,
            scope=streamScope,
        )
        raw = up.transport
        assert raw is not None  # the handshake ran over it
        seen = transport.multiaddrOf(raw.getPeer())
        local = transport.multiaddrOf(raw.getHost())
        remote = dialledAddr if dialledAddr is not None else seen
        if remote is None or local is None:
            raise DialError(f"the {transport.name} transport cannot name the connection's addresses")
        conn = PeerConnection(
            remotePeer=info.remotePeer,
            remotePublicKey=info.remotePublicKey,
            direction="outbound" if isInitiator else "inbound",
            remoteAddr=remote,
            localAddr=local,
            security=info.protocolId,
            muxer=YAMUX_PROTOCOL,
            session=session,
            openedAt=self.reactor.seconds(),
            rawTransport=raw,
            transport=transport.name,
            limited=transport.limited,
            resourceScope=scope,
        )
        conn.observedRemote = seen if seen is not None else remote
        holder.append(conn)
        self._allConnections.add(conn)
        session.whenClosed().addBoth(lambda _: self._connectionClosed(conn))
        return conn

    def _registerConnection(self, conn: PeerConnection) -> PeerConnection:
        """
        Pool a connection whose upgrade finished.  A failure here is our
        bug, not the peer's: it is logged and costs only this connection.
        """
        try:
            return self._register(conn)
        except Exception:
            self.log.failure("registering the connection with {peer} failed", peer=conn.remotePeer)
            conn.abort()
            raise

    def _register(self, conn: PeerConnection) -> PeerConnection:
        peer = conn.remotePeer
        if self.isStopping:
            conn.close()
            raise NodeStopped()
        if conn.direction == "outbound":
            self.peerStore.addAddrs(peer, [conn.remoteAddr], "connected")
        old = self.connections.get(peer)
        if old is None or not old.acceptsStreams:
            self.connections[peer] = conn
            if old is not None:
                self._retire(old)
        elif old.limited != conn.limited:
            # A direct connection and a limited (relayed) one are not
            # duplicates: new streams move to the direct one, and the
            # limited one closes when its last stream ends.
            keep, other = (conn, old) if old.limited else (old, conn)
            self.connections[peer] = keep
            self._retire(other)
        else:
            keep, drop = self._pickSurvivor(old, conn)
            self.connections[peer] = keep
            # No go-away on the other: a peer may have dialled it on
            # purpose and be about to use it (an AutoNAT server dialling
            # back, as js-libp2p's does from the same node), and js-libp2p
            # ends every stream of a connection that receives a go-away.
            # Both sides open new streams on the same survivor; the other
            # closes once it has carried no stream for duplicateGrace.
            self.log.debug("duplicate connection to {peer}: new streams use one, the other closes when idle", peer=peer)
            self._retire(drop)
        self.notifyObservers("connected", conn)
        if conn.acceptsStreams:
            self._identifier.onConnection(conn)
        return conn

    def _pickSurvivor(self, a: PeerConnection, b: PeerConnection) -> tuple[PeerConnection, PeerConnection]:
        """
        Both peers must pick the same one: the connection dialled by the
        peer with the smaller peer ID.  If both were dialled by the same
        side, keep the older.
        """
        def dialler(c: PeerConnection) -> bytes:
            return (self.peerID if c.direction == "outbound" else c.remotePeer).bytes

        if dialler(a) == dialler(b):
            return a, b
        return (a, b) if dialler(a) < dialler(b) else (b, a)

    def _usableConnection(self, peer: PeerID) -> Optional[PeerConnection]:
        """
        The connection to hand out for C{peer}: the primary if it still
        accepts streams, else another that does (which becomes primary).
        A limited primary gives way to a direct connection.
        """
        primary = self.connections.get(peer)
        if primary is not None and primary.acceptsStreams and primary.limited:
            for other in self._allConnections:
                if other.remotePeer == peer and other.acceptsStreams and not other.limited:
                    self.connections[peer] = other
                    self._retire(primary)
                    return other
        if primary is not None and primary.acceptsStreams:
            return primary
        if primary is not None:
            self._retire(primary)
        return self.connections.get(peer)

    def _retire(self, conn: PeerConnection) -> None:
        """
        Stop handing C{conn} out for new streams, promote another usable
        connection to the peer if there is one, and close C{conn} once its
        streams have ended.

        A connection that takes no new streams (a go-away either way), or
        a relayed one, closes as soon as its last stream ends.  One that still takes the
        peer's streams (a duplicate we merely stopped using, see
        L{_register}) closes only once it carried no stream for
        C{duplicateGrace} seconds: the peer may have dialled it on purpose
        and be about to open a stream on it.
        """
        peer = conn.remotePeer
        if self.connections.get(peer) is conn:
            del self.connections[peer]
            candidates = [o for o in self._allConnections
                          if o is not conn and o.remotePeer == peer and o.acceptsStreams]
            candidates.sort(key=lambda o: o.limited)
            if candidates:
                self.connections[peer] = candidates[0]
        if conn.closed or self.isStopping or conn in self._draining:
            return
        self._draining.add(conn)
        # A relayed connection costs its relay: it goes as soon as it is
        # idle, whatever it still accepts.
        grace = self.duplicateGrace if conn.acceptsStreams and not conn.limited else 0.0
        timer: list[Any] = []

        def detach() -> None:
            if streamEnded in conn.session.streamClosedObservers:
                conn.session.streamClosedObservers.remove(streamEnded)
            while timer:
                call = timer.pop()
                self._retireTimers.discard(call)
                if call.active():
                    call.cancel()

        def check() -> None:
            while timer:
                self._retireTimers.discard(timer.pop())
            if conn.closed or conn not in self._draining:
                detach()
            elif not conn.streamCount:
                detach()
                self._draining.discard(conn)
                self.log.debug("closing retired connection to {peer}", peer=conn.remotePeer)
                conn.close()

        def schedule() -> None:
            # From the last stream's end: a new one restarts the wait.
            while timer:
                call = timer.pop()
                self._retireTimers.discard(call)
                if call.active():
                    call.cancel()
            call = self.reactor.callLater(grace, check)
            timer.append(call)
            self._retireTimers.add(call)

        def streamEnded() -> None:
            if conn.closed or conn not in self._draining:
                detach()
            elif not conn.streamCount:
                if grace:
                    schedule()
                else:
                    check()

        # React to the last stream ending (no polling); a connection
        # already without streams is checked later, outside whatever
        # stream event retired it.
        conn.session.streamClosedObservers.append(streamEnded)
        if not conn.streamCount:
            schedule()

    def _connectionClosed(self, conn: PeerConnection) -> None:
        conn.lost()
        if conn.resourceScope is not None:
            conn.resourceScope.done()
        self._allConnections.discard(conn)
        self._draining.discard(conn)
        if self.connections.get(conn.remotePeer) is conn:
            self._retire(conn)
        self.notifyObservers("disconnected", conn)

    def notifyObservers(self, event: str, conn: PeerConnection) -> None:
        for observer in list(self._observers):
            try:
                observer(event, conn)
            except Exception:
                self.log.failure("connection observer failed")

    def _reapIdle(self) -> None:
        """
        Close connections without streams: at once if they are not the
        peer's primary (a retired duplicate), else after C{idleTimeout}.
        """
        now = self.reactor.seconds()
        for conn in list(self._allConnections):
            if conn.closed:
                continue
            if conn.streamCount:
                conn.lastActive = now
                continue
            primary = self.connections.get(conn.remotePeer) is conn
            if primary and self._keepTags.get(conn.remotePeer):
                continue
            if not primary or now - conn.lastActive >= self.idleTimeout:
                self.log.debug("closing idle connection to {peer}", peer=conn.remotePeer)
                conn.close()

    # -- streams ---------------------------------------------------------

    def _startProtocol(self, stream: YamuxStream, proto: IProtocol, leftover: bytes) -> Optional[Failure]:
        """
        Connect C{proto} to C{stream} and give it the bytes that came with
        the end of negotiation.  If it raises, the error is logged, the
        stream reset, and the failure returned: user code costs only its
        own stream.
        """
        try:
            stream.setProtocol(proto)
            if leftover:
                proto.dataReceived(leftover)
        except Exception:
            f = Failure()
            self.log.failure(
                "protocol for {protocol} failed to start; resetting the stream",
                failure=f, protocol=stream.protocolId,
            )
            stream.abortConnection()
            return f
        return None

    def _inboundStream(self, conn: PeerConnection, stream: YamuxStream) -> None:
        stream.connection = conn
        conn.lastActive = self.reactor.seconds()
        timer = self.reactor.callLater(self.negotiationTimeout, stream.abortConnection)

        def selected(protocolId: str, leftover: bytes) -> None:
            if timer.active():
                timer.cancel()
            handler = self._handlers.get(protocolId)
            if handler is None:
                stream.abortConnection()
                return
            stream.protocolId = protocolId
            try:
                _joinProtocol(stream, protocolId)
            except ResourceLimitExceeded:
                # The protocol (or the peer's share of it) is full: the
                # stream's refusal is a reset (counted and logged by the
                # resource manager).
                stream.abortConnection()
                return
            try:
                proto = handler()
            except Exception:
                self.log.failure("handler for {protocol} failed", protocol=protocolId)
                stream.abortConnection()
                return
            self._startProtocol(stream, proto, leftover)

        def failed(f: Failure) -> None:
            if timer.active():
                timer.cancel()
            self.log.debug("inbound stream from {peer} refused: {why}", peer=conn.remotePeer, why=f.getErrorMessage())

        listener = MultistreamListener(lambda p: p in self._handlers, listProtocols=lambda: self.protocols)
        stream.setProtocol(MultistreamProtocol(listener, selected, failed))

    def openStreamOn(
        self,
        conn: PeerConnection,
        protocols: Sequence[str],
        factory: Callable[[], IProtocol],
    ) -> Deferred[IProtocol]:
        """
        Open a stream on C{conn}, negotiate one of C{protocols}, and connect
        a protocol from C{factory()} to it; fires with that protocol (the
        chosen ID is C{protocol.transport.protocolId}).

        Fails with L{NegotiationFailed} if the peer supports none of them
        or does not answer within C{negotiationTimeout}, with whatever
        C{factory} or the protocol's C{connectionMade} raised, and with
        L{CancelledError} (resetting the stream) if cancelled first.
        """
        try:
            stream = conn.openStream()
        except BeamError as e:
            return fail(e)
        conn.lastActive = self.reactor.seconds()
        cancelling = []

        def cancel(_: Any) -> None:
            cancelling.append(True)
            stream.abortConnection()

        result: Deferred[IProtocol] = Deferred(cancel)

        def timedOut() -> None:
            if not result.called:
                result.errback(NegotiationFailed(
                    f"the peer did not agree on a protocol within {self.negotiationTimeout:g} s"
                ))
            stream.abortConnection()

        timer = self.reactor.callLater(self.negotiationTimeout, timedOut)

        def selected(protocolId: str, leftover: bytes) -> None:
            if timer.active():
                timer.cancel()
            stream.protocolId = protocolId
            try:
                _joinProtocol(stream, protocolId)
            except ResourceLimitExceeded:
                if not result.called:
                    result.errback()
                stream.abortConnection()
                return
            try:
                proto = factory()
            except Exception:
                stream.abortConnection()
                if not result.called:
                    result.errback()
                return
            problem = self._startProtocol(stream, proto, leftover)
            if result.called:
                return
            if problem is not None:
                result.errback(problem)
            else:
                result.callback(proto)

        def failed(f: Failure) -> None:
            if timer.active():
                timer.cancel()
            if not result.called and not cancelling:
                result.errback(f)

        stream.setProtocol(MultistreamProtocol(MultistreamDialer(list(protocols)), selected, failed))
        return result

    def openStream(
        self,
        target: Target,
        protocols: Sequence[str] | str,
        factory: Callable[[], IProtocol],
    ) -> Deferred[IProtocol]:
        """
        Connect to C{target} (reusing a pooled connection) and open a stream
        speaking one of C{protocols}.  If the pooled connection turns out to
        be going away, one new connection is tried.
        """
        if isinstance(protocols, str):
            protocols = [protocols]

        def onConn(conn: PeerConnection) -> Deferred[IProtocol]:
            d = self.openStreamOn(conn, protocols, factory)

            def retry(f: Failure) -> Any:
                f.trap(MuxerClosed)
                self._retire(conn)
                return self.connect(target).addCallback(
                    lambda c: self.openStreamOn(c, protocols, factory)
                )

            return d.addErrback(retry)

        return self.connect(target).addCallback(onConn)

    # -- identify --------------------------------------------------------

    def identifyPeer(self, target: Target) -> Deferred[IdentifyInfo]:
        """
        Run identify against C{target} now and return what it said.
        """
        return self.connect(target).addCallback(self._identifier.query)

    # -- ping ------------------------------------------------------------

    def ping(
        self, target: Target, count: int = 1, timeout: float = 10.0, interval: float = 0.0
    ) -> Deferred[list[float]]:
        """
        Ping C{target} C{count} times over one stream; fires with the
        round-trip times in seconds.
        """
        client = PingClient(self.reactor, self._random)
        rtts: list[float] = []

        def loop(_: Any) -> Deferred[list[float]]:
            done: Deferred[list[float]] = Deferred()

            def one() -> None:
                if len(rtts) >= count:
                    client.close()
                    done.callback(rtts)
                    return
                d = client.ping()
                timer = self.reactor.callLater(timeout, d.cancel)

                def ok(rtt: float) -> None:
                    if timer.active():
                        timer.cancel()
                    rtts.append(rtt)
                    peer = getattr(getattr(client.transport, "connection", None), "remotePeer", None)
                    if peer is not None:
                        self.peerStore.recordLatency(peer, rtt)
                    if interval and len(rtts) < count:
                        self.reactor.callLater(interval, one)
                    else:
                        one()

                def bad(f: Failure) -> None:
                    if timer.active():
                        timer.cancel()
                    assert client.transport is not None  # the ping went out on it
                    client.transport.abortConnection()
                    if f.check(CancelledError):
                        f = Failure(PingTimeout(f"no answer within {timeout:g} s"))
                    done.errback(f)

                d.addCallbacks(ok, bad)

            one()
            return done

        return self.openStream(target, [PING_PROTOCOL], lambda: client).addCallback(loop)


def _expandUnspecified(addr: Multiaddr) -> list[Multiaddr]:
    """
    C{addr} itself, or, for 0.0.0.0 and ::, one address per interface
    address of this machine (loopback first).  The interfaces are
    enumerated: resolving the host name gives whatever /etc/hosts says
    (often only 127.0.1.1).
    """
    import socket

    from beam.p2p.transport._netif import interfaceAddresses

    target = addr.tcpTarget()
    if target is None:
        return [addr]
    host, port, family = target
    if host not in ("0.0.0.0", "::"):
        return [addr]
    fam = socket.AF_INET if host == "0.0.0.0" else socket.AF_INET6
    loop = "127.0.0.1" if fam == socket.AF_INET else "::1"
    hosts = [loop]
    for h in interfaceAddresses(fam):
        if h not in hosts:
            hosts.append(h)
    proto = "ip4" if fam == socket.AF_INET else "ip6"
    return [Multiaddr.fromString(f"/{proto}/{h}/tcp/{port}") for h in hosts]


class _ListenFactory(Factory):
    """
    Builds the upgrading protocol of each inbound connection: a responder,
    unless a hole punch expects that source to be answered as initiator
    (L{Node.expectInboundAsInitiator}).
    """

    noisy = False

    def __init__(self, node: Node, transport: ITransport) -> None:
        self.node = node
        self.transport = transport

    def buildProtocol(self, addr: Any) -> Optional[UpgradingProtocol]:
        return self.node.inboundUpgrading(addr, self.transport)


def sourceKey(address: object) -> Any:
    """
    Where an inbound connection comes from, for the per-source handshake
    cap: the IPv4 address, the /64 of an IPv6 address (one host usually
    has a whole /64), or for the memory transport the peer's port (each
    dial has its own, so only a test harness shares one).  L{None} for an
    address with no source to group by, and for the machine's own
    C{127.0.0.1} and C{::1}: every local process connects from those, so a
    per-source cap would make a machine running many nodes (or a test with
    twenty) refuse its own; the global budgets still apply to them.  The
    rest of 127.0.0.0/8 is capped like any other address (a process must
    choose to bind it, as the attack suite's strangers do).
    """
    if isinstance(address, IPv4Address):
        if address.host == "127.0.0.1":
            return None
        return address.host
    if isinstance(address, IPv6Address):
        try:
            ip = ipaddress.IPv6Address(address.host.split("%", 1)[0])
        except ValueError:
            return address.host
        if ip.ipv4_mapped is not None:
            return None if str(ip.ipv4_mapped) == "127.0.0.1" else str(ip.ipv4_mapped)
        if ip.is_loopback:
            return None
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    port = getattr(address, "port", None)
    if getattr(address, "type", None) == "MEMORY" and port is not None:
        return f"memory:{port}"
    return None


def _joinProtocol(stream: YamuxStream, protocolId: str) -> None:
    """
    Count C{stream} in C{protocolId}'s resource scope (if it has a scope).

    @raise ResourceLimitExceeded: the protocol has no room.
    """
    scope = stream.resourceScope
    if scope is not None and not scope.closed and scope.protocol is None:
        scope.setProtocol(protocolId)


def _noDelay(transport: object) -> None:
    """
    Turn off Nagle's algorithm on a TCP transport (anything else is left
    alone).  A peer connection carries many small frames of independent
    streams (window updates, a tunnel's request and answer, an interactive
    session's keystrokes); with Nagle, a small write that follows another
    not yet acknowledged waits for the peer's delayed ACK, up to 40 ms on
    Linux, which made every new tunnel connection take ~44 ms.
    """
    setTcpNoDelay = getattr(transport, "setTcpNoDelay", None)
    if setTcpNoDelay is not None:
        try:
            setTcpNoDelay(True)
        except OSError:
            pass
