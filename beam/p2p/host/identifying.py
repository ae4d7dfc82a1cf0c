"""
The node's identify glue: asking every new connection who is on the other
end, answering the same question, and pushing our changes to peers.

The wire protocol is in L{beam.p2p.protocols.identify}; this module decides I{when} it
runs and what happens to the answer.  It is split from L{beam.p2p.host.node} to keep
the pool and the dialer readable; L{beam.p2p.host.node.Node} owns one
L{NodeIdentify} and delegates to it.

Addresses follow libp2p's address filtering both ways: a peer is told
only the addresses it can reach from where it is (no loopback address to
a peer across a network, no private one to a peer across the Internet),
and of what a peer says about itself we keep only what we can reach.  Its
observed address for us is noted in the node's L{AddressBook}, grouped by
observer, where enough of them make a candidate for AutoNAT.

A connection over Tor (C{conn.transport == "tor"}) is different: our
socket sees only a local Tor client, never the peer, so we send no
observed address on it, ignore the one the peer sends (it would be the
view of a Tor relay, or our own onion address: never an address of ours
that anyone else could dial) and filter addresses as for a stranger on
the public Internet (L{vantageOf}).

Every identify stream has a deadline.  Without one, a peer that accepts
C{/ipfs/id/1.0.0} and then says nothing (or never closes its side after
our answer) would hold a stream open for ever, and a connection with an
open stream is never reaped as idle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IProtocol
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from beam.p2p.protocols.identify import (
    IDENTIFY_PROTOCOL,
    IDENTIFY_PUSH_PROTOCOL,
    PROTOCOL_VERSION,
    IdentifyInfo,
    IdentifyReceiver,
    IdentifySender,
)
from beam.identity.keys import PeerID
from beam.identity.multiaddr import Multiaddr
from beam.p2p.host.addrs import observerGroup, reachableFrom, vantageOf

if TYPE_CHECKING:
    from beam.p2p.connection import PeerConnection
    from beam.p2p.host.node import Node
    from beam.p2p.muxer.yamux import YamuxStream

MAX_LEARNED_ADDRS = 64


class _Deadline:
    """
    Abort a stream's transport if it is still open after C{seconds}.
    """

    def __init__(self, clock: Any, seconds: float) -> None:
        self._clock = clock
        self._seconds = seconds
        self._call: Optional[IDelayedCall] = None

    def start(self, transport: Any) -> None:
        abort = getattr(transport, "abortConnection", transport.loseConnection)
        self._call = self._clock.callLater(self._seconds, abort)

    def cancel(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None


class _TimedSender(IdentifySender):
    """
    An L{IdentifySender} whose stream is aborted if the peer has not closed
    its side within the deadline after our message.
    """

    def __init__(self, makeInfo: Any, deadline: _Deadline) -> None:
        super().__init__(makeInfo)
        self._deadline = deadline

    def connectionMade(self) -> None:
        self._deadline.start(self.transport)
        super().connectionMade()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._deadline.cancel()


class _TimedReceiver(IdentifyReceiver):
    """
    An L{IdentifyReceiver} whose stream is aborted (failing L{result}) if
    the message has not arrived within the deadline.
    """

    def __init__(self, remotePeer: Optional[PeerID], deadline: _Deadline) -> None:
        super().__init__(remotePeer)
        self._deadline = deadline

    def connectionMade(self) -> None:
        self._deadline.start(self.transport)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._deadline.cancel()
        super().connectionLost(reason)


class NodeIdentify:
    """
    Identify for one L{Node}.

    @ivar timeout: seconds an identify stream may stay open once its
        protocol was negotiated.
    """

    log = Logger()

    def __init__(self, node: "Node", timeout: float) -> None:
        self.node = node
        self.timeout = timeout
        self._pushCall: Optional[IDelayedCall] = None

    def _deadline(self) -> _Deadline:
        return _Deadline(self.node.reactor, self.timeout)

    # -- answering -------------------------------------------------------

    def infoFor(self, transport: Any) -> IdentifyInfo:
        """
        What we tell the peer on the other end of C{transport}: the
        addresses it can reach (L{AddressBook.advertisedFor} its address
        as our socket sees it), and where we see it (nothing over Tor,
        where we do not).
        """
        node = self.node
        conn = getattr(transport, "connection", None)
        observed = conn.observedRemote if conn is not None else None
        overTor = conn is not None and conn.transport == "tor"
        return IdentifyInfo(
            protocols=tuple(node.protocols),
            listenAddrs=tuple(node.addresses.advertisedFor(vantageOf(conn) if conn is not None else None)),
            observedAddr=None if overTor else observed,
            publicKey=node.identity.publicKey,
            agentVersion=node.agentVersion,
            protocolVersion=PROTOCOL_VERSION,
        )

    def responder(self) -> IProtocol:
        """
        The stream handler for C{/ipfs/id/1.0.0}.
        """
        return _TimedSender(self.infoFor, self._deadline())

    def pushHandler(self) -> IProtocol:
        """
        The stream handler for C{/ipfs/id/push/1.0.0}.
        """
        receiver = _TimedReceiver(None, self._deadline())

        def got(info: IdentifyInfo) -> None:
            # The node runs stream handlers on its yamux streams, which
            # carry the connection they belong to.
            conn = cast("YamuxStream", receiver.transport).connection
            if info.publicKey is not None and info.publicKey.peerID() != conn.remotePeer:
                self.log.info("ignoring identify push from {peer} carrying another key", peer=conn.remotePeer)
                return
            self.learn(conn, info, push=True)

        receiver.result.addCallbacks(got, lambda f: None)
        return receiver

    # -- asking ----------------------------------------------------------

    def query(self, conn: "PeerConnection") -> Deferred[IdentifyInfo]:
        """
        Run identify on C{conn} and learn the answer.
        """
        receiver = _TimedReceiver(conn.remotePeer, self._deadline())
        d = self.node.openStreamOn(conn, [IDENTIFY_PROTOCOL], lambda: receiver)
        return d.addCallback(lambda _: receiver.result).addCallback(lambda info: self.learn(conn, info))

    def onConnection(self, conn: "PeerConnection") -> Deferred[Optional[IdentifyInfo]]:
        """
        Identify a new connection; failures are logged, not raised.  The
        Deferred is also kept as C{conn.identified}.
        """
        d: Deferred[Any] = self.query(conn)

        def failed(f: Failure) -> None:
            self.log.debug("identify with {peer} failed: {why}", peer=conn.remotePeer, why=f.getErrorMessage())

        d.addErrback(failed)
        conn.identified = d
        return d

    def learn(self, conn: "PeerConnection", info: IdentifyInfo, push: bool = False) -> IdentifyInfo:
        """
        Record what a peer told us: its protocols on the connection, the
        listen addresses we can reach for later dials (L{reachableFrom}
        where its connection comes from), our observed address (in the
        node's bounded L{AddressBook}, see L{_observe}).  Tells the
        connection observers C{"identified"} for an answer to our question
        and C{"updated"} for a push.
        """
        node = self.node
        if push and conn.identify is not None:
            # A push may omit fields; keep what it leaves out.
            old = conn.identify
            info = IdentifyInfo(
                protocols=info.protocols or old.protocols,
                listenAddrs=info.listenAddrs or old.listenAddrs,
                observedAddr=info.observedAddr or old.observedAddr,
                publicKey=info.publicKey or old.publicKey,
                agentVersion=info.agentVersion or old.agentVersion,
                protocolVersion=info.protocolVersion or old.protocolVersion,
            )
        conn.identify = info
        store = node.peerStore
        learned = reachableFrom(info.listenAddrs[:MAX_LEARNED_ADDRS], vantageOf(conn))
        store.addAddrs(conn.remotePeer, learned, "identify")
        if info.protocols:
            store.setProtocols(conn.remotePeer, info.protocols)
        if info.agentVersion:
            store.setAgent(conn.remotePeer, info.agentVersion)
        if info.observedAddr is not None and not push:
            self._observe(conn, info.observedAddr)
        node.notifyObservers("updated" if push else "identified", conn)
        return info

    def _observe(self, conn: "PeerConnection", observed: Multiaddr) -> None:
        """
        Note that the peer of C{conn} sees us at C{observed}, if that says
        anything about how others could reach us: not over a relayed
        connection (it names the relay's view), nor over Tor (a Tor
        relay's view, or our own onion address), and over TCP only when our
        end of the connection is a listen port (an inbound connection, or
        an outbound one that reused the listen port).  An outbound dial
        from a random source port is seen at a random NAT mapping no one
        else could use, and would only crowd out useful observations.
        Observers are grouped by IP address (L{observerGroup}).
        """
        if conn.limited or conn.transport == "tor":
            return
        local = conn.localAddr.tcpTarget()
        if local is not None:
            ports = {t[1] for t in (a.tcpTarget() for a in self.node.listenAddrs) if t is not None}
            if local[1] not in ports:
                return
        self.node.addresses.observe(observed, observerGroup(conn.observedRemote, conn.remotePeer))

    # -- pushing ---------------------------------------------------------

    def schedulePush(self) -> None:
        """
        Push our identify to connected peers soon.  Changes made in one
        reactor turn (several C{setStreamHandler} calls) share one push,
        which carries the state at the time it is written.
        """
        if self._pushCall is None or not self._pushCall.active():
            self._pushCall = self.node.reactor.callLater(0, self._push)

    def _push(self) -> None:
        self._pushCall = None
        for conn in list(self.node.connections.values()):
            if not conn.acceptsStreams:
                continue
            if conn.identify is not None and IDENTIFY_PUSH_PROTOCOL not in conn.identify.protocols:
                continue
            d = self.node.openStreamOn(
                conn, [IDENTIFY_PUSH_PROTOCOL], lambda: _TimedSender(self.infoFor, self._deadline())
            )
            d.addErrback(self._pushFailed, conn.remotePeer)

    def _pushFailed(self, f: Failure, peer: PeerID) -> None:
        self.log.debug("identify push to {peer} failed: {why}", peer=peer, why=f.getErrorMessage())

    def stop(self) -> None:
        """
        Drop a push not yet sent.
        """
        if self._pushCall is not None and self._pushCall.active():
            self._pushCall.cancel()
        self._pushCall = None
