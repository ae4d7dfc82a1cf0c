"""
Gossipsub on a Beam node: L{GossipSub}, the daemon's C{"pubsub"} service,
runs the sans-IO L{Router} over libp2p streams.

Streams, as every libp2p pubsub implementation uses them: one long-lived
outbound stream per peer carries everything we send; the peer's own
outbound stream (our inbound one) carries what it sends.  Both carry
uvarint-length-prefixed C{RPC} protobufs of at most C{maxRPCSize} bytes
(1 MiB by default); a longer frame or a malformed RPC resets the inbound
stream and costs the peer behaviour penalty.  A peer gets one inbound
stream at a time: a second one replaces the first.

Who we talk to: every connected peer whose identify lists C{/meshsub/1.1.0}
or C{/meshsub/1.0.0} (and any peer that opens such a stream to us).  We
do not dial anyone for gossip: the DHT, mDNS and the user make the
connections, gossip uses them.

A peer that does not read: our outbound stream is our producer's consumer
(yamux pauses us once its queue is full); RPCs then wait in a queue of at
most C{maxQueuedBytes} per peer.  Past that the peer is dropped from the
router (its streams reset) and penalised, so its score stays low when it
comes back.

Why protobuf for the RPC: it is the pubsub spec's wire format
(C{rpc.proto}); js-libp2p and go-libp2p speak nothing else on
C{/meshsub/*}.
"""

from __future__ import annotations

import os
import random as _random
from collections import deque
from typing import Any, Callable, Optional

from twisted.application.service import Service
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from beam.encoding.framing import LengthPrefixedReader, encodeLengthPrefixed
from beam.errors import BeamError, describe
from beam.identity.keys import PeerID
from beam.p2p.pubsub.gossipsub import (
    GOSSIPSUB_V10,
    PROTOCOLS,
    GossipSubParams,
    Handler,
    Router,
    Validator,
)
from beam.p2p.pubsub.score import ScoreParams, ScoreThresholds, TopicScoreParams

#: Bytes of RPCs waiting for one peer that does not read, before it is dropped.
MAX_QUEUED_BYTES = 2 << 20
#: RPCs held for a peer whose outbound stream is still opening.
MAX_PENDING_RPCS = 64


class _Inbound(Protocol):
    """
    The peer's stream to us: frames in, each handed to the router.
    """

    transport: Any

    def __init__(self, service: "GossipSub") -> None:
        self.service = service
        self.reader = LengthPrefixedReader(service.router.params.maxRPCSize)
        self.peer: Optional[PeerID] = None

    def connectionMade(self) -> None:
        conn = getattr(self.transport, "connection", None)
        if conn is None:
            self.transport.abortConnection()
            return
        self.peer = conn.remotePeer
        self.service._inboundOpened(self)

    def dataReceived(self, data: bytes) -> None:
        if self.peer is None:
            return
        try:
            for frame in self.reader.feed(data):
                self.service.router.handleRPC(self.peer, frame)
                if self.transport is None or self.peer not in self.service.router.peers:
                    return
        except BeamError as e:
            self.service.log.debug("gossipsub stream from {peer} reset: {why}", peer=self.peer, why=e)
            if self.service.router.peers.get(self.peer) is not None:
                self.service.router.penalize(self.peer)
            self.transport.abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.service._inboundLost(self)


@implementer(IPushProducer)
class _Outbound(Protocol):
    """
    Our stream to the peer: frames out, queued (bounded) while the stream
    pushes back.
    """

    transport: Any

    def __init__(self, service: "GossipSub", peer: PeerID) -> None:
        self.service = service
        self.peer = peer
        self.paused = False
        self.queue: deque[bytes] = deque()
        self.queued = 0
        self.closed = False

    def connectionMade(self) -> None:
        register = getattr(self.transport, "registerProducer", None)
        if register is not None:
            register(self, True)

    def dataReceived(self, data: bytes) -> None:
        # Nothing is ever sent to us on our own outbound stream.
        self.transport.abortConnection()

    def send(self, frame: bytes) -> bool:
        """
        Write or queue one frame; False when the queue overflowed.
        """
        if self.closed:
            return True
        if not self.paused and not self.queue:
            self.transport.write(frame)
            return True
        self.queue.append(frame)
        self.queued += len(frame)
        return self.queued <= self.service.maxQueuedBytes

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        while self.queue and not self.paused and not self.closed:
            frame = self.queue.popleft()
            self.queued -= len(frame)
            self.transport.write(frame)

    def stopProducing(self) -> None:
        self.queue.clear()
        self.queued = 0

    def abort(self) -> None:
        self.closed = True
        self.queue.clear()
        self.queued = 0
        if self.transport is not None:
            self.transport.abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed = True
        self.queue.clear()
        self.service._outboundLost(self)


class _Link:
    __slots__ = ("outbound", "opening", "inbound", "pending")

    def __init__(self) -> None:
        self.outbound: Optional[_Outbound] = None
        self.opening = False
        self.inbound: Optional[_Inbound] = None
        self.pending: deque[bytes] = deque()


def defaultScoreParams(topics: tuple[str, ...] = ("beam-names",)) -> ScoreParams:
    """
    Scoring for Beam's topics: P1, P2 and P4 on, P3 off (see
    L{beam.p2p.pubsub.score}).
    """
    return ScoreParams(topics={t: TopicScoreParams() for t in topics})


class GossipSub(Service):
    """
    The C{"pubsub"} service: gossipsub v1.1 on C{host}, signing with
    C{identity}.  With C{enabled=False} it does nothing (no protocol served,
    subscribing and publishing are no-ops) and its status says so.
    """

    log = Logger()
    name = "pubsub"  # type: ignore[assignment]

    def __init__(
        self,
        reactor: Any,
        host: Any,
        identity: Any,
        *,
        enabled: bool = True,
        params: Optional[GossipSubParams] = None,
        scoreParams: Optional[ScoreParams] = None,
        thresholds: Optional[ScoreThresholds] = None,
        random: Optional[Any] = None,
        maxQueuedBytes: int = MAX_QUEUED_BYTES,
    ) -> None:
        self.reactor = reactor
        self.host = host
        self.identity = identity
        self.enabled = enabled
        self.maxQueuedBytes = maxQueuedBytes
        if random is None or callable(random) and not isinstance(random, _random.Random):
            # The daemon's context.random is os.urandom-like: seed from it.
            source: Callable[[int], bytes] = random if callable(random) else os.urandom
            rng = _random.Random(int.from_bytes(source(8), "big"))
        else:
            rng = random
        self.router = Router(
            identity.peerID, identity.sign, identity.publicKey.toProtobuf(), self._sendRPC,
            reactor.seconds, params=params, scoreParams=scoreParams or defaultScoreParams(),
            thresholds=thresholds, random=rng,
        )
        self._links: dict[PeerID, _Link] = {}
        self._heartbeat: Optional[LoopingCall] = None
        self._first: Any = None

    # -- lifecycle -----------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        if not self.enabled:
            return
        for protocol in PROTOCOLS:
            self.host.setStreamHandler(protocol, lambda: _Inbound(self))
        self.host.addConnectionObserver(self._connectionEvent)
        for conn in self.host.liveConnections():
            self._connectionEvent("identified", conn)
        self._first = self.reactor.callLater(self.router.params.heartbeatInitialDelay, self._startHeartbeat)

    def _startHeartbeat(self) -> None:
        self._first = None
        loop = self._heartbeat = LoopingCall(self.router.heartbeat)
        loop.clock = self.reactor
        loop.start(self.router.params.heartbeatInterval, now=True)

    def stopService(self) -> None:
        super().stopService()
        if not self.enabled:
            return
        if self._first is not None and self._first.active():
            self._first.cancel()
        self._first = None
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        self._heartbeat = None
        self.host.removeConnectionObserver(self._connectionEvent)
        for protocol in PROTOCOLS:
            if self.host.hasStreamHandler(protocol):
                self.host.removeStreamHandler(protocol)
        for peer in list(self._links):
            self._dropPeer(peer)

    # -- the API --------------------------------------------------------------

    def subscribe(self, topic: str, handler: Handler) -> None:
        """
        Deliver C{topic}'s valid messages to C{handler(author, data)}.
        """
        if self.enabled:
            self.router.subscribe(topic, handler)

    def unsubscribe(self, topic: str) -> None:
        if self.enabled:
            self.router.unsubscribe(topic)

    def publish(self, topic: str, data: bytes) -> None:
        """
        Sign and send C{data} to C{topic}'s peers.
        """
        if self.enabled:
            self.router.publish(topic, data)

    def setValidator(self, topic: str, fn: Validator) -> None:
        """
        C{fn(author, data)} judges each new message on C{topic}:
        C{"accept"}, C{"reject"} (the relaying peer is penalised) or
        C{"ignore"} (dropped, not forwarded, no penalty).
        """
        self.router.setValidator(topic, fn)

    def score(self, peer: PeerID) -> float:
        return self.router.score(peer)

    def status(self) -> dict[str, Any]:
        if not self.enabled:
            return {"enabled": False}
        status = self.router.status()
        status["enabled"] = True
        status["protocols"] = list(PROTOCOLS)
        return status

    # -- peers ---------------------------------------------------------------

    def _connectionEvent(self, event: str, conn: Any) -> None:
        peer = conn.remotePeer
        if event == "disconnected":
            if self.host.connectionTo(peer) is None:
                self._dropPeer(peer)
            return
        if event not in ("identified", "updated") or getattr(conn, "identify", None) is None:
            return
        if any(p in conn.identify.protocols for p in PROTOCOLS):
            self._ensureOutbound(peer)

    def _link(self, peer: PeerID) -> _Link:
        link = self._links.get(peer)
        if link is None:
            link = self._links[peer] = _Link()
        return link

    def _ensureOutbound(self, peer: PeerID) -> None:
        if not self.running or peer == self.host.peerID:
            return
        link = self._link(peer)
        if link.outbound is not None or link.opening:
            return
        link.opening = True
        out = _Outbound(self, peer)

        def opened(proto: Any) -> None:
            link.opening = False
            if self._links.get(peer) is not link or not self.running:
                out.abort()
                return
            link.outbound = out
            conn = getattr(out.transport, "connection", None)
            protocol = getattr(out.transport, "protocolId", PROTOCOLS[0])
            if peer not in self.router.peers:
                self.router.addPeer(peer, protocol, getattr(conn, "direction", "") == "outbound")
            else:
                state = self.router.peers[peer]
                state.protocol = protocol
                state.outbound = getattr(conn, "direction", "") == "outbound"
            while link.pending and not out.closed:
                if not out.send(link.pending.popleft()):
                    self._overflow(peer)
                    return

        def failed(f: Failure) -> None:
            link.opening = False
            self.log.debug("no gossipsub stream to {peer}: {why}", peer=peer, why=describe(f))
            if self._links.get(peer) is link and link.inbound is None:
                self._dropPeer(peer)

        self.host.openStream(peer, list(PROTOCOLS), lambda: out).addCallbacks(opened, failed)

    def _inboundOpened(self, inbound: _Inbound) -> None:
        peer = inbound.peer
        assert peer is not None
        link = self._link(peer)
        old, link.inbound = link.inbound, inbound
        if old is not None and old.transport is not None:
            old.transport.loseConnection()
        if peer not in self.router.peers:
            protocol = getattr(inbound.transport, "protocolId", PROTOCOLS[0])
            conn = getattr(inbound.transport, "connection", None)
            self.router.addPeer(peer, protocol if protocol == GOSSIPSUB_V10 else PROTOCOLS[0],
                                getattr(conn, "direction", "") == "outbound")
        self._ensureOutbound(peer)

    def _inboundLost(self, inbound: _Inbound) -> None:
        link = self._links.get(inbound.peer) if inbound.peer is not None else None
        if link is not None and link.inbound is inbound:
            link.inbound = None

    def _outboundLost(self, out: _Outbound) -> None:
        link = self._links.get(out.peer)
        if link is not None and link.outbound is out:
            link.outbound = None
            # The stream went, perhaps not the connection: try once more
            # if the peer is still connected, else forget it.
            if self.running and self.host.connectionTo(out.peer) is not None and out.peer in self.router.peers:
                self._ensureOutbound(out.peer)
            else:
                self._dropPeer(out.peer)

    def _sendRPC(self, peer: PeerID, rpc: bytes) -> None:
        frame = encodeLengthPrefixed(rpc)
        link = self._links.get(peer)
        if link is None:
            return
        if link.outbound is None:
            link.pending.append(frame)
            if len(link.pending) > MAX_PENDING_RPCS:
                link.pending.popleft()
            return
        if not link.outbound.send(frame):
            self._overflow(peer)

    def _overflow(self, peer: PeerID) -> None:
        """
        C{peer} leaves more than C{maxQueuedBytes} unread: drop it and
        make it pay, so it does not come straight back into our meshes.
        """
        if peer not in self._links:
            return
        self.log.info("gossipsub peer {peer} does not read what we send: dropped", peer=peer)
        self.router.penalize(peer, 2.0)
        self._dropPeer(peer)

    def _dropPeer(self, peer: PeerID) -> None:
        link = self._links.pop(peer, None)
        self.router.removePeer(peer)
        if link is None:
            return
        if link.outbound is not None:
            link.outbound.abort()
        if link.inbound is not None and link.inbound.transport is not None:
            link.inbound.transport.abortConnection()


def makePubsub(context: Any) -> GossipSub:
    """
    The daemon's C{"pubsub"} service; C{config.gossip = false} makes it
    one that does nothing.
    """
    enabled = bool(getattr(context.config, "gossip", True))
    return GossipSub(context.reactor, context.host, context.identity, enabled=enabled,
                     random=getattr(context, "random", None), **context.optionsFor("pubsub"))
