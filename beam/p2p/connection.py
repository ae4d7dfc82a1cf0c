"""
A peer connection: one authenticated, encrypted, multiplexed link to one
peer, over which every stream to that peer is opened.
"""

from __future__ import annotations

from typing import Any, Optional

from enum import Enum

from twisted.internet.defer import Deferred
from zope.interface import implementer

from beam.p2p.protocols.identify import IdentifyInfo
from beam.identity.keys import PeerID, PublicKey
from beam.identity.multiaddr import Multiaddr
from beam.p2p.interfaces import IPeerConnection
from beam.statemachine import IGNORE, StateMachine
from beam.p2p.muxer.yamux import YamuxSession, YamuxStream
from beam.p2p.resources import ConnectionScope


class ConnectionState(Enum):
    """
    Where a peer connection is in its life.
    """

    #: Carries streams both ways; new ones may be opened.
    OPEN = "open"
    #: We sent go-away (it lost to a duplicate or a direct connection, or
    #: the node is stopping): its open streams run to their end, no new
    #: ones.  (A go-away from the peer is the session's to know:
    #: L{PeerConnection.acceptsStreams} asks it.)
    GOING_AWAY = "going away"
    #: close() was called: the session flushes and closes.
    CLOSING = "closing"
    #: The session ended (cleanly or not).  Terminal.
    CLOSED = "closed"


class ConnectionInput(Enum):
    GO_AWAY = "goAway()"
    CLOSE = "close()"
    ABORT = "abort()"
    LOST = "session ended"


_CS, _CI = ConnectionState, ConnectionInput
#: The lifecycle of a peer connection (docs/state-machines/node.md).
CONNECTION_MACHINE: StateMachine[ConnectionState, ConnectionInput]
CONNECTION_MACHINE = StateMachine("connection", ConnectionState, ConnectionInput, {
    (_CS.OPEN, _CI.GO_AWAY): _CS.GOING_AWAY,
    (_CS.OPEN, _CI.CLOSE): _CS.CLOSING,
    (_CS.OPEN, _CI.ABORT): _CS.CLOSING,
    (_CS.OPEN, _CI.LOST): _CS.CLOSED,
    (_CS.GOING_AWAY, _CI.GO_AWAY): IGNORE,
    (_CS.GOING_AWAY, _CI.CLOSE): _CS.CLOSING,
    (_CS.GOING_AWAY, _CI.ABORT): _CS.CLOSING,
    (_CS.GOING_AWAY, _CI.LOST): _CS.CLOSED,
    (_CS.CLOSING, _CI.GO_AWAY): IGNORE,
    (_CS.CLOSING, _CI.CLOSE): IGNORE,
    # A peer that will not let the connection close is cut off.
    (_CS.CLOSING, _CI.ABORT): _CS.CLOSING,
    (_CS.CLOSING, _CI.LOST): _CS.CLOSED,
    (_CS.CLOSED, _CI.GO_AWAY): IGNORE,
    (_CS.CLOSED, _CI.CLOSE): IGNORE,
    (_CS.CLOSED, _CI.ABORT): IGNORE,
    (_CS.CLOSED, _CI.LOST): IGNORE,
})


@implementer(IPeerConnection)
class PeerConnection:
    """
    One live connection to a peer.

    @ivar remotePeer: the authenticated peer ID.
    @ivar direction: C{"inbound"} or C{"outbound"}.
    @ivar remoteAddr: the peer's address as a multiaddr (without C{/p2p}).
    @ivar localAddr: our end of the connection.
    @ivar security: the security protocol ID used.
    @ivar muxer: the muxer protocol ID used.
    @ivar identify: what the peer told us in identify, once it has.
    @ivar lastActive: clock time of the last stream opened or closed,
        for closing idle connections.
    @ivar state: its L{ConnectionState}.
    @ivar identified: once identify ran on the connection, a Deferred that
        fires (with the L{IdentifyInfo}, or L{None} if identify failed)
        when it is done.
    """

    def __init__(
        self,
        *,
        remotePeer: PeerID,
        remotePublicKey: PublicKey,
        direction: str,
        remoteAddr: Multiaddr,
        localAddr: Multiaddr,
        security: str,
        muxer: str,
        session: YamuxSession,
        openedAt: float,
        rawTransport: Any = None,
        transport: str = "tcp",
        limited: bool = False,
        resourceScope: Optional[ConnectionScope] = None,
    ) -> None:
        """
        @param rawTransport: the raw (Twisted) transport underneath, so
            that a connection that will not close cleanly can be aborted.
        @param transport: the name of the L{ITransport} it came over.
        @param limited: whether that transport is limited (relayed).
        @param resourceScope: what the connection holds in the node's
            resource manager (its streams are reserved in it by the
            session); the node releases it when the connection closes.
        """
        self.remotePeer = remotePeer
        self.remotePublicKey = remotePublicKey
        self.direction = direction
        self.remoteAddr = remoteAddr
        self.localAddr = localAddr
        self.security = security
        self.muxer = muxer
        self.session = session
        self.openedAt = openedAt
        self.lastActive = openedAt
        self.identify: Optional[IdentifyInfo] = None
        self.observedRemote: Multiaddr = remoteAddr
        self.state = ConnectionState.OPEN
        self.streamsOpened = 0
        self.rawTransport = rawTransport
        self.transport = transport
        self.limited = limited
        self.resourceScope = resourceScope
        self.identified: Optional[Deferred[Optional[IdentifyInfo]]] = None

    def openStream(self) -> YamuxStream:
        """
        Open a raw stream (no protocol negotiated yet).

        @raise beam.errors.MuxerClosed: the connection is closing.
        """
        stream = self.session.openStream()
        stream.connection = self
        self.streamsOpened += 1
        return stream

    @property
    def streamCount(self) -> int:
        return self.session.streamCount

    @property
    def closed(self) -> bool:
        return self.state is ConnectionState.CLOSED

    @property
    def acceptsStreams(self) -> bool:
        """
        Whether new streams may be opened: open on our side, and no
        go-away from the peer (a doomed SYN on a connection the peer left
        would only cost a retry).
        """
        return self.state is ConnectionState.OPEN and self.session.acceptsStreams

    def _move(self, event: ConnectionInput) -> bool:
        outcome = CONNECTION_MACHINE.next(self.state, event)
        if isinstance(outcome, ConnectionState):
            self.state = outcome
            return True
        return False

    def goAway(self) -> None:
        """
        Refuse new streams from now on; open ones continue.
        """
        if self._move(ConnectionInput.GO_AWAY):
            self.session.goAway()

    def close(self) -> None:
        """
        Go away and close the connection once flushed.
        """
        if self._move(ConnectionInput.CLOSE):
            self.session.close()

    def abort(self) -> None:
        """
        Cut the connection at once (for a peer that will not let it close).
        """
        if not self._move(ConnectionInput.ABORT):
            return
        transport = self.rawTransport
        if transport is not None:
            transport.abortConnection()
        else:
            self.session.close()

    def lost(self) -> None:
        """
        The session ended: called by the node, once.
        """
        self._move(ConnectionInput.LOST)

    def whenClosed(self) -> Deferred[None]:
        return self.session.whenClosed()
