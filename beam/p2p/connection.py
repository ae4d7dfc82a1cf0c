"""
A peer connection: one authenticated, encrypted, multiplexed link to one
peer, over which every stream to that peer is opened.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.defer import Deferred
from zope.interface import implementer

from beam.p2p.protocols.identify import IdentifyInfo
from beam.identity.keys import PeerID, PublicKey
from beam.identity.multiaddr import Multiaddr
from beam.p2p.interfaces import IPeerConnection
from beam.p2p.muxer.yamux import YamuxSession, YamuxStream


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
    @ivar goingAway: we sent go-away on it (it lost to a duplicate, or the
        node is stopping): it carries its open streams to their end, and
        no new ones.
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
    ) -> None:
        """
        @param rawTransport: the raw (Twisted) transport underneath, so
            that a connection that will not close cleanly can be aborted.
        @param transport: the name of the L{ITransport} it came over.
        @param limited: whether that transport is limited (relayed).
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
        self.closed = False
        self.goingAway = False
        self.streamsOpened = 0
        self.rawTransport = rawTransport
        self.transport = transport
        self.limited = limited
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
    def acceptsStreams(self) -> bool:
        """
        Whether new streams may be opened: not closed, and no go-away sent
        or received (a doomed SYN on a connection the peer left would only
        cost a retry).
        """
        return not (self.closed or self.goingAway) and self.session.acceptsStreams

    def goAway(self) -> None:
        """
        Refuse new streams from now on; open ones continue.
        """
        self.goingAway = True
        self.session.goAway()

    def close(self) -> None:
        """
        Go away and close the connection.
        """
        self.goingAway = True
        self.session.close()

    def abort(self) -> None:
        """
        Cut the connection at once (for a peer that will not let it close).
        """
        self.goingAway = True
        transport = self.rawTransport
        if transport is not None and not self.closed:
            transport.abortConnection()
        else:
            self.session.close()

    def whenClosed(self) -> Deferred[None]:
        return self.session.whenClosed()

    def describe(self) -> dict:
        """
        A JSON-friendly summary for status output.
        """
        return {
            "peer_id": str(self.remotePeer),
            "direction": self.direction,
            "transport": self.transport,
            "limited": self.limited,
            "remote_addr": str(self.remoteAddr),
            "local_addr": str(self.localAddr),
            "security": self.security,
            "muxer": self.muxer,
            "streams": self.streamCount,
            "agent": self.identify.agentVersion if self.identify else None,
        }
