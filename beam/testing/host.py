"""
A fake L{IHost} for tests of services built on Beam (ours and users').

A service written against L{beam.p2p.interfaces.IHost} can be tested with
no node at all: L{FakeHost} provides the whole interface, scripts dials
(each waits until the test settles it with L{FakeHost.dialSucceeds} or
L{FakeHost.dialFails}, or succeeds at once with C{autoConnect=True}),
sends connection events in the node's order, and connects streams the
service opens to protocols the test registers for the remote peer with
L{FakeHost.serveRemote}, through in-memory pipes on the test's clock (call
L{beam.p2p.transport.memory.flush} to deliver).  Its peerstore is the real
L{PeerStore}.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IProtocol
from zope.interface import implementer

from beam.errors import DialError, NegotiationFailed
from beam.identity.keys import Identity, PeerID
from beam.identity.multiaddr import Multiaddr
from beam.p2p.host.peerstore import PeerStore
from beam.p2p.interfaces import IHost, IPeerConnection
from beam.p2p.transport.memory import MemoryAddress, MemoryPipe


@implementer(IPeerConnection)
class FakeConnection:
    """
    A connection to a peer, as services look at it.
    """

    def __init__(self, peer: PeerID, *, limited: bool = False, transport: str = "memory",
                 direction: str = "outbound") -> None:
        self.remotePeer = peer
        self.direction = direction
        self.remoteAddr = Multiaddr.fromString("/memory/1")
        self.transport = transport
        self.limited = limited
        self.closed = False
        self.acceptsStreams = True

    def openStream(self) -> Any:
        raise NegotiationFailed("open streams with FakeHost.openStream")


@implementer(IHost)
class FakeHost:
    """
    A scripted host.

    @ivar dials: the dials waiting to be settled, oldest first (with
        C{autoConnect} off).
    @ivar opened: every stream opened, as C{(peer, protocolId, protocol)}.
    @ivar tags: keep-alive tags per peer.
    """

    def __init__(self, clock: Any, identity: Optional[Identity] = None, *, autoConnect: bool = False,
                 listenAddrs: Sequence[Multiaddr] = ()) -> None:
        self.reactor = clock
        self.identity = identity or Identity.generate()
        self.peerID = self.identity.peerID
        self.peerStore = PeerStore(clock)
        self.listenAddrs = list(listenAddrs)
        self.autoConnect = autoConnect
        self.handlers: dict[str, Callable[[], IProtocol]] = {}
        self.remoteHandlers: dict[tuple[PeerID, str], Callable[[], IProtocol]] = {}
        self.tags: dict[PeerID, set[str]] = {}
        self.observers: list[Callable[[str, Any], None]] = []
        self.conns: dict[PeerID, FakeConnection] = {}
        self.dials: list[tuple[PeerID, Deferred[Any]]] = []
        self.cancelledDials = 0
        self.opened: list[tuple[PeerID, str, IProtocol]] = []
        self._port = 1

    # -- IHost -----------------------------------------------------------

    @property
    def protocols(self) -> list[str]:
        return sorted(self.handlers)

    def advertisedAddrs(self) -> list[Multiaddr]:
        return [a.withPeerID(self.peerID) for a in self.listenAddrs]

    def setStreamHandler(self, protocolId: str, handler: Callable[[], IProtocol]) -> None:
        self.handlers[protocolId] = handler

    def removeStreamHandler(self, protocolId: str) -> None:
        self.handlers.pop(protocolId, None)

    def hasStreamHandler(self, protocolId: str) -> bool:
        return protocolId in self.handlers

    def connect(self, target: Any) -> Deferred[Any]:
        peer = self._peerOf(target)
        if peer in self.conns:
            return succeed(self.conns[peer])
        if self.autoConnect:
            return succeed(self.up(peer))

        def cancel(d: Deferred[Any]) -> None:
            self.cancelledDials += 1
            self.dials[:] = [(p, w) for p, w in self.dials if w is not d]

        d: Deferred[Any] = Deferred(cancel)
        self.dials.append((peer, d))
        return d

    def openStream(self, target: Any, protocols: Any, factory: Callable[[], IProtocol]) -> Deferred[IProtocol]:
        """
        Connect to the peer (scripted like L{connect}), then pair a
        protocol from C{factory} with the one the test registered for the
        peer and the first of C{protocols} it serves.
        """
        if isinstance(protocols, str):
            protocols = [protocols]
        peer = self._peerOf(target)

        def connected(conn: FakeConnection) -> Any:
            for protocolId in protocols:
                remote = self.remoteHandlers.get((peer, protocolId))
                if remote is not None:
                    return self._pair(conn, protocolId, factory, remote)
            return fail(NegotiationFailed(f"{peer} serves none of {', '.join(protocols)}"))

        return self.connect(peer).addCallback(connected)

    def connectionTo(self, peer: PeerID) -> Optional[FakeConnection]:
        return self.conns.get(peer)

    def liveConnections(self) -> list[FakeConnection]:
        return list(self.conns.values())

    def addConnectionObserver(self, observer: Callable[[str, Any], None]) -> None:
        self.observers.append(observer)

    def removeConnectionObserver(self, observer: Callable[[str, Any], None]) -> None:
        if observer in self.observers:
            self.observers.remove(observer)

    def protect(self, peer: PeerID, tag: str) -> None:
        self.tags.setdefault(peer, set()).add(tag)

    def unprotect(self, peer: PeerID, tag: str) -> None:
        self.tags.get(peer, set()).discard(tag)
        if not self.tags.get(peer):
            self.tags.pop(peer, None)

    # -- what a test does ------------------------------------------------

    def serveRemote(self, peer: PeerID, protocolId: str, handler: Callable[[], IProtocol]) -> None:
        """
        Pretend C{peer} serves C{protocolId}: streams opened to it get a
        protocol from C{handler()} on the other end.
        """
        self.remoteHandlers[peer, protocolId] = handler

    def notify(self, event: str, conn: FakeConnection) -> None:
        for observer in list(self.observers):
            observer(event, conn)

    def up(self, peer: PeerID, **kw: Any) -> FakeConnection:
        """
        A connection to C{peer} opens ("connected" is sent).
        """
        conn = self.conns[peer] = FakeConnection(peer, **kw)
        self.notify("connected", conn)
        return conn

    def down(self, peer: PeerID) -> None:
        """
        The connection to C{peer} ends ("disconnected" is sent).
        """
        conn = self.conns.pop(peer)
        conn.closed = True
        conn.acceptsStreams = False
        self.notify("disconnected", conn)

    def dialSucceeds(self, peer: Optional[PeerID] = None) -> FakeConnection:
        """
        Settle the oldest waiting dial (to C{peer}, if given) with a new
        connection, as the node does: "connected" first.
        """
        index = 0 if peer is None else [p for p, _ in self.dials].index(peer)
        peer, d = self.dials.pop(index)
        conn = self.up(peer)
        d.callback(conn)
        return conn

    def dialFails(self, reason: str = "connection refused") -> None:
        """
        Fail the oldest waiting dial with L{DialError}.
        """
        _, d = self.dials.pop(0)
        d.errback(DialError(reason))

    # -- internals -------------------------------------------------------

    @staticmethod
    def _peerOf(target: Any) -> PeerID:
        if isinstance(target, PeerID):
            return target
        if isinstance(target, str):
            target = PeerID.fromString(target) if not target.startswith("/") else Multiaddr.fromString(target)
        if isinstance(target, Multiaddr):
            peer = target.peerID()
            if peer is None:
                raise DialError(f"{target} names no peer")
            return peer
        raise TypeError(f"not a peer: {target!r}")

    def _pair(self, conn: FakeConnection, protocolId: str, factory: Callable[[], IProtocol],
              remoteFactory: Callable[[], IProtocol]) -> IProtocol:
        ours, theirs = factory(), remoteFactory()
        self._port += 2
        a, b = MemoryAddress(self._port), MemoryAddress(self._port + 1)
        mine, other = MemoryPipe(self.reactor, a, b), MemoryPipe(self.reactor, b, a)
        mine.other, other.other = other, mine
        mine.protocol, other.protocol = ours, theirs
        # The slots a node's yamux stream has, which handlers read; a
        # MemoryPipe does not declare them.
        for pipe in (mine, other):
            pipe.connection = conn  # type: ignore[attr-defined]
            pipe.protocolId = protocolId  # type: ignore[attr-defined]
        theirs.makeConnection(other)
        ours.makeConnection(mine)
        self.opened.append((conn.remotePeer, protocolId, ours))
        return ours
