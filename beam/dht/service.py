"""
The DHT on a Beam node: L{KademliaNode} spoken over libp2p streams.

L{KademliaService} is the daemon's C{"kademlia"} service (registered in
L{beam.daemon.builtins}; C{/v1/kademlia} on the control socket).  It implements
L{IKadNetwork} with streams: every request opens a stream to the peer
(pooled connection), negotiates C{/beam/kad/1.0.0}, writes one
uvarint-length-prefixed C{Message} and reads one back.  As a server it
answers requests on the same protocol, several per stream if the peer
sends several (go and js do).

Who joins the routing table: peers whose identify lists
C{/beam/kad/1.0.0} (they are servers) and peers that answered us, with
the addresses of theirs we could dial: direct ones (no relay circuits)
reachable from where they connect from.  A server with none (a NAT'd node
whose private addresses mean nothing here, one reachable only through a
relay) stays out: nobody could dial it for a lookup.  Our
own mode: a node that listens somewhere is a server; one that listens
nowhere (C{beam resolve} without a running node) is a client and does not
register the protocol, so it never appears in routing tables.  AutoNAT
refines "listens" into "is reachable": when the node's address book
(C{node.addresses}) says the node is C{"private"}, the DHT switches to
client mode (it stops serving the protocol; identify push tells connected
peers, which drop it from their routing tables) and keeps asking others;
C{"public"} makes it a server again; C{"unknown"} keeps the choice made
at start.  A peer whose identify stops listing the protocol leaves our
routing table.

Tor: a node whose only transport is Tor (tor mode C{"always"}) is a
client whatever its mode says: it has no IP address to serve from, and
a server's address goes into every routing table that takes it.  Onion
addresses (C{/onion3}) count as dialable, in identify, in answers and in
the peer store, only on a node that has the C{"tor"} transport; a node
without one keeps peers reachable only at an onion address out of its
routing table (nobody there could dial them).  A connection over Tor
counts as one from the public Internet for address filtering
(L{vantageOf}).

The routing table is saved to C{<home>/routing.json} (atomically) every
minute and on stop, and reloaded at start: a node that has been online
once rejoins through the peers it knew, with no fixed bootstrap server.
"""

from __future__ import annotations

import random as _random
from collections import deque
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredList, fail, succeed
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from beam.dht.addrfilter import DialLimiter, filterMessage
from beam.p2p.host.addrs import reachableFrom, vantageOf
from beam.p2p.host.dialer import dialsOnion, torOnly
from beam.dht.kad import KademliaNode, Mode
from beam.dht.messages import Message, PeerInfo, decodeMessage, encodeMessage
from beam.dht.routing import RoutingTable
from beam.dht.status import BucketStatus, DHTStatus, RoutesStatus, RouteStatus
from beam.dht.store import RecordStore, networkOf
from beam.errors import BeamError, DecodeError, NodeStopped, NotFound, ProtocolError, describe
from beam.stats import Histogram
from beam.storage.fileutil import atomicWrite
from beam.encoding.framing import LengthPrefixedReader, encodeLengthPrefixed
from beam.identity.keys import PeerID
from beam.identity.multiaddr import Multiaddr
from beam.p2p.interfaces import IStreamTransport

KAD_PROTOCOL = "/beam/kad/1.0.0"
MAX_KAD_MESSAGE = 64 * 1024
#: Requests read from one stream and not answered yet (a peer pipelining
#: more is reset; libp2p clients send one and wait).
MAX_PIPELINED = 64
#: Requests one stream may make before it is reset (the peer opens another).
MAX_REQUESTS_PER_STREAM = 1024
#: Seconds an answer may stay unread (the stream paused) before the stream
#: is reset.
STALL_TIMEOUT = 10.0
ROUTING_FILE = "routing.json"


class NoDHTPeers(BeamError):
    """
    This node knows no DHT peers: add one with --bootstrap MULTIADDR or `beam network bootstrap MULTIADDR`.
    """


class _KadClient(Protocol):
    """
    One request: write it, read one answer, close.
    """

    transport: Optional[IStreamTransport]

    def __init__(self, request: bytes, onion: bool = True) -> None:
        """
        @param onion: keep onion addresses in the answer (we can dial
            them).
        """
        self.request = request
        self.onion = onion
        self.reader = LengthPrefixedReader(MAX_KAD_MESSAGE)
        self.result: Deferred[Message] = Deferred(lambda d: self._abort())

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abortConnection()

    def connectionMade(self) -> None:
        assert self.transport is not None  # set by makeConnection
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        if self.result.called:
            return
        try:
            messages = self.reader.feed(data)
            if not messages:
                return
            message = decodeMessage(messages[0])
        except ProtocolError as e:
            self._abort()
            self.result.errback(Failure(e))
            return
        assert self.transport is not None  # data arrives only while connected
        conn = getattr(self.transport, "connection", None)
        via = vantageOf(conn) if conn is not None else None
        message = filterMessage(message, via, onion=self.onion)
        self.transport.loseConnection()
        self.result.callback(message)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.result.called:
            self.result.errback(Failure(BeamError("the DHT peer closed the stream without answering")))


@implementer(IHalfCloseableProtocol, IPushProducer)
class _KadServer(Protocol):
    """
    Answer requests on one stream until the peer closes it.  Any error
    (malformed message, refused record) is logged and resets the stream,
    as other libp2p implementations do.

    Answers respect backpressure: the server is the stream's producer, and
    while the stream holds more unsent bytes than its high-water mark
    (the peer does not read), no further request is answered and the
    stream stops reading (the peer's window then stops it sending).  A
    stream paused for longer than C{STALL_TIMEOUT}, one with more than
    C{MAX_PIPELINED} requests waiting, or one that made more than
    C{MAX_REQUESTS_PER_STREAM} requests, is reset.
    """

    log = Logger()
    transport: Optional[IStreamTransport]

    def __init__(self, service: "KademliaService") -> None:
        self.service = service
        self.reader = LengthPrefixedReader(MAX_KAD_MESSAGE)
        self._waiting: deque[bytes] = deque()
        self._answered = 0
        self._paused = False
        self._readDone = False
        self._stall: Any = None

    def connectionMade(self) -> None:
        register = getattr(self.transport, "registerProducer", None)
        if register is not None:
            register(self, True)

    def dataReceived(self, data: bytes) -> None:
        stream = self.transport
        assert stream is not None  # data arrives only while connected
        try:
            self._waiting.extend(self.reader.feed(data))
        except BeamError as e:
            self._refuse(str(e))
            return
        if len(self._waiting) > MAX_PIPELINED:
            self._refuse(f"more than {MAX_PIPELINED} requests waiting for an answer")
            return
        self._answerWaiting()

    def _answerWaiting(self) -> None:
        stream = self.transport
        assert stream is not None
        conn = getattr(stream, "connection", None)
        if conn is None:
            stream.abortConnection()
            return
        while self._waiting and not self._paused:
            if self._answered >= MAX_REQUESTS_PER_STREAM:
                self._refuse(f"more than {MAX_REQUESTS_PER_STREAM} requests on one stream")
                return
            raw = self._waiting.popleft()
            self._answered += 1
            try:
                response = self.service._handle(conn, decodeMessage(raw))
                answer = encodeLengthPrefixed(encodeMessage(response))
            except BeamError as e:
                self._refuse(str(e))
                return
            # May pause us (re-entrantly) if the stream's queue is full.
            stream.write(answer)
        if self._readDone and not self._waiting:
            stream.loseConnection()

    def _refuse(self, why: str) -> None:
        stream = self.transport
        assert stream is not None
        self._waiting.clear()
        peer = getattr(getattr(stream, "connection", None), "remotePeer", None)
        self.log.debug("DHT request from {peer} refused: {why}", peer=peer, why=why)
        stream.abortConnection()

    # IPushProducer: the stream tells us whether it takes more answers.

    def pauseProducing(self) -> None:
        if self._paused:
            return
        self._paused = True
        stream = self.transport
        if stream is not None:
            pause = getattr(stream, "pauseProducing", None)
            if pause is not None:
                pause()
        if self._stall is None:
            self._stall = self.service.reactor.callLater(STALL_TIMEOUT, self._stalled)

    def resumeProducing(self) -> None:
        if not self._paused:
            return
        self._paused = False
        self._cancelStall()
        stream = self.transport
        if stream is None:
            return
        self._answerWaiting()
        if not self._paused:
            resume = getattr(stream, "resumeProducing", None)
            if resume is not None:
                resume()

    def stopProducing(self) -> None:
        self._waiting.clear()
        self._cancelStall()

    def _stalled(self) -> None:
        self._stall = None
        if self.transport is not None:
            self._refuse(f"answers unread for {STALL_TIMEOUT:g} s")

    def _cancelStall(self) -> None:
        if self._stall is not None:
            if self._stall.active():
                self._stall.cancel()
            self._stall = None

    def readConnectionLost(self) -> None:
        assert self.transport is not None  # only while connected
        self._readDone = True
        if not self._waiting:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._waiting.clear()
        self._cancelStall()


class KademliaService(Service):
    """
    The DHT service of a node.

    @ivar kad: the L{KademliaNode}.
    """

    log = Logger()
    # Twisted's Service says name = None, which mypy reads as "always None".
    name = "kademlia"  # type: ignore[assignment]

    def __init__(
        self,
        reactor: Any,
        node: Any,
        home: Optional[Path],
        *,
        bootstrapAddrs: Sequence[Multiaddr] = (),
        mode: Mode = "auto",
        timeout: float = 5.0,
        refreshInterval: float = 600.0,
        saveInterval: float = 60.0,
        random: Optional[_random.Random] = None,
        validators: Optional[dict[str, Any]] = None,
    ) -> None:
        self.reactor = reactor
        self.node = node
        self.home = Path(home) if home is not None else None
        self.bootstrapAddrs = list(bootstrapAddrs)
        self.timeout = timeout
        self.refreshInterval = refreshInterval
        self.saveInterval = saveInterval
        store = RecordStore(reactor, validators or {})
        self.store = store
        self.kad = KademliaNode(
            reactor, self._localInfo, self, store, mode=mode,
            random=random, timeout=timeout, refreshInterval=refreshInterval,
        )
        self.dialLimiter = DialLimiter(reactor)
        #: How long our lookups (getValue, closestPeers, putValue) took,
        #: in seconds; and how many ended with no peer answering.
        self.lookupLatency = Histogram()
        self.lookupFailures = 0
        self._loops: list[LoopingCall] = []
        self._initial: Optional[Deferred[Any]] = None
        self._watching = False

    def addValidator(self, namespace: str, validator: Any) -> None:
        """
        Accept records under C{/namespace/...}, checked and ordered by
        C{validator} (an L{beam.dht.store.IValidator}).  The DHT knows no
        record kind of its own: services above it (the name service)
        register theirs, so the DHT never imports them.
        """
        self.store.validators[namespace] = validator

    # -- IKadNetwork -------------------------------------------------------

    def _localInfo(self) -> PeerInfo:
        # What strangers can use (confirmed, relay, then listen addresses):
        # peers filter it again by what they can reach.
        shareable = getattr(self.node, "shareableAddrs", None)
        addrs = shareable() if callable(shareable) else self.node.advertisedAddrs()
        return PeerInfo(self.node.peerID, tuple(a.withoutPeerID() for a in addrs)[:16])

    def request(self, peer: PeerInfo, message: Message) -> Deferred[Message]:
        """
        Send one request to C{peer} on a new stream and read its answer.
        """
        if peer.peer == self.node.peerID:
            return fail(BeamError("refusing to send a DHT request to ourselves"))
        if self.node.connectionTo(peer.peer) is None:
            # A dial: rate-limited per target, whoever told us the address.
            known = list(peer.addrs) + [
                a for a in self.node.peerStore.addrs(peer.peer) if a not in peer.addrs
            ]
            if known and not [a for a in known if self.dialLimiter.allow(a)]:
                return fail(BeamError(f"too many DHT dials to {known[0]} recently; not dialling {peer.peer}"))
        onion = dialsOnion(self.node)
        usable = [a for a in peer.addrs if a.tcpTarget() is not None or (onion and a.isOnion())]
        self.node.peerStore.addAddrs(peer.peer, usable[:32], "dht")
        try:
            client = _KadClient(encodeLengthPrefixed(encodeMessage(message)), onion=onion)
        except BeamError as e:
            return fail(e)
        opened = self.node.openStream(peer.peer, [KAD_PROTOCOL], lambda: client)
        opened.addErrback(lambda f: client.result.errback(f) if not client.result.called else None)
        d = client.result
        d.addTimeout(self.timeout, self.reactor)
        return d

    # -- requests in -------------------------------------------------------

    def _handle(self, conn: Any, request: Message) -> Message:
        identified = conn.identify
        addrs: tuple[Multiaddr, ...] = ()
        isServer = False
        if identified is not None:
            addrs = _dialable(conn, identified.listenAddrs, dialsOnion(self.node))
            # A server we could never dial back (only private addresses of
            # its own network, or only relayed ones) is no use in our
            # routing table, whatever it serves.
            isServer = KAD_PROTOCOL in identified.protocols and bool(addrs)
        sender = PeerInfo(conn.remotePeer, addrs)
        network = networkOf(getattr(conn, "remoteAddr", None))
        return self.kad.handleRequest(sender, request, senderIsServer=isServer, senderNetwork=network)

    def _connectionEvent(self, event: str, conn: Any) -> None:
        if event not in ("identified", "updated") or conn.identify is None:
            return
        if KAD_PROTOCOL not in conn.identify.protocols:
            # A client (or a server that switched to client mode: its
            # identify push no longer lists the protocol) does not belong
            # in the routing table.
            self.kad.routingTable.remove(conn.remotePeer)
            return
        addrs = _dialable(conn, conn.identify.listenAddrs, dialsOnion(self.node))
        if not addrs and conn.direction == "outbound" and not conn.limited:
            addrs = (conn.remoteAddr.withoutPeerID(),)
        if not addrs:
            # Nothing we could dial it on (a NAT'd peer whose private
            # addresses mean nothing here, or one reachable only through a
            # relay): other peers could not either.
            self.kad.routingTable.remove(conn.remotePeer)
            return
        self.kad.addPeer(PeerInfo(conn.remotePeer, addrs))

    # -- lifecycle ---------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        if torOnly(self.node):
            if self.kad.mode == "server":
                self.log.info("this node runs over Tor only: DHT client mode, whatever the configuration says")
            # Set before anything reads it: a Tor-only node never serves.
            self.kad.mode = "auto"
            self.kad.setReachable(False)
        elif self.kad.mode == "auto":
            # Started as the node's child, before its ports are bound:
            # what it is configured to listen on is what counts.
            self.kad.setReachable(bool(self.node.configuredListenAddrs or self.node.listenAddrs))
        book = getattr(self.node, "addresses", None)
        if book is not None and not self._watching:
            # The address book cannot unsubscribe: the callback checks
            # whether we run.
            book.onChange(self._reachabilityChanged)
            self._watching = True
        if self.kad.mode == "auto" and book is not None and book.reachability != "unknown":
            self.kad.setReachable(book.reachability == "public" and not torOnly(self.node))
        if self.kad.isServer:
            self.node.setStreamHandler(KAD_PROTOCOL, lambda: _KadServer(self))
        self.node.addConnectionObserver(self._connectionEvent)
        self._loadRoutingTable()
        for interval, fn in ((self.refreshInterval, self._refresh), (self.saveInterval, self.saveRoutingTable)):
            loop = LoopingCall(fn)
            loop.clock = self.reactor
            loop.start(interval, now=False)
            self._loops.append(loop)
        if self.bootstrapAddrs or self.kad.routingTable.size:
            self._initial = self.bootstrap(self.bootstrapAddrs)
            self._initial.addErrback(
                lambda f: self.log.info("DHT bootstrap: {why}", why=describe(f))
            )

    def _reachabilityChanged(self) -> None:
        """
        The address book changed: in C{"auto"} mode, follow AutoNAT's
        verdict (C{"private"}: client, C{"public"}: server; C{"unknown"}
        changes nothing).
        """
        book = getattr(self.node, "addresses", None)
        if not self.running or self.kad.mode != "auto" or book is None:
            return
        if book.reachability == "unknown":
            return
        serve = book.reachability == "public" and not torOnly(self.node)
        if serve == self.kad.isServer and serve == self.node.hasStreamHandler(KAD_PROTOCOL):
            return
        self.kad.setReachable(serve)
        if serve:
            self.log.info("reachable from the Internet: serving the DHT")
            self.node.setStreamHandler(KAD_PROTOCOL, lambda: _KadServer(self))
        else:
            self.log.info("not reachable from the Internet: DHT client mode")
            if self.node.hasStreamHandler(KAD_PROTOCOL):
                self.node.removeStreamHandler(KAD_PROTOCOL)

    def whenBootstrapped(self) -> Deferred[None]:
        """
        Fires (never fails) once the bootstrap started at start-up ended,
        so a lookup made right after start sees a filled routing table.
        """
        if self._initial is None or self._initial.called:
            return succeed(None)
        d: Deferred[None] = Deferred()

        def fire(result: object) -> object:
            d.callback(None)
            return result

        self._initial.addBoth(fire)
        return d

    def stopService(self) -> None:
        super().stopService()
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops = []
        self.saveRoutingTable()
        self.kad.stop()
        self.node.removeConnectionObserver(self._connectionEvent)
        if self.node.hasStreamHandler(KAD_PROTOCOL):
            self.node.removeStreamHandler(KAD_PROTOCOL)

    def _refresh(self) -> None:
        if self.kad.routingTable.size:
            self.kad.refresh().addErrback(lambda f: None)

    # -- persistence -------------------------------------------------------

    def _loadRoutingTable(self) -> None:
        if self.home is None:
            return
        path = self.home / ROUTING_FILE
        try:
            text = path.read_text()
        except OSError:
            return
        try:
            saved = RoutingTable.fromJSON(self.node.peerID, text, k=self.kad.k)
        except DecodeError as e:
            self.log.warn("ignoring {path}: {why}", path=str(path), why=e)
            return
        for info in saved.peers():
            self.kad.routingTable.add(info, 0.0)
            self.node.peerStore.addAddrs(info.peer, info.addrs, "dht")

    def saveRoutingTable(self) -> None:
        if self.home is None or not self.kad.routingTable.size:
            return
        try:
            atomicWrite(self.home / ROUTING_FILE, self.kad.routingTable.toJSON().encode(), 0o600)
        except OSError as e:
            self.log.warn("could not save the routing table: {why}", why=e)

    # -- the API the daemon uses ------------------------------------------

    def routingTableSize(self) -> int:
        return self.kad.routingTable.size

    def bootstrap(self, addrs: Iterable[Multiaddr | str] = ()) -> Deferred[dict[str, Any]]:
        """
        Connect to C{addrs} (multiaddrs with C{/p2p/}), then look ourselves
        up through them and whatever the routing table holds.

        @raise NoDHTPeers: nothing to bootstrap from.
        """
        targets = [Multiaddr.fromString(a) if isinstance(a, str) else a for a in addrs]
        dials = [self.node.connect(a) for a in targets]

        def dialled(results: list[tuple[bool, Any]]) -> Deferred[Any]:
            seeds = []
            for ok, conn in results:
                if ok:
                    seeds.append(PeerInfo(conn.remotePeer, (conn.remoteAddr.withoutPeerID(),)))
            for seed in seeds:
                self.kad.addPeer(seed)
            if not seeds and not self.kad.routingTable.size:
                errors = "; ".join(str(r.value) for ok, r in results if not ok)
                # Without an address given, the docstring's words (no
                # peer known, how to add one); never NoDHTPeers(None),
                # whose message would be "None".
                raise NoDHTPeers(f"could not reach any bootstrap peer: {errors}") if errors else NoDHTPeers()
            return self.kad.bootstrap(seeds)

        def done(result: Any) -> dict[str, Any]:
            self.saveRoutingTable()
            return {
                "routing_table_size": self.kad.routingTable.size,
                "rounds": result.rounds,
                "queried": result.queries,
            }

        d = DeferredList(dials, consumeErrors=True).addCallback(dialled).addCallback(done)
        return d

    def getValue(self, key: bytes) -> Deferred[tuple[Optional[bytes], dict[str, Any]]]:
        """
        @return: C{(value, stats)}; C{value} is L{None} when no valid record
            was found.
        """
        started = self.reactor.seconds()
        if not self.kad.routingTable.size and self.kad.store.get(key) is None:
            self._lookupDone(started, False)
            return fail(NoDHTPeers())

        def found(result: tuple[bytes, Any]) -> tuple[Optional[bytes], dict[str, Any]]:
            value, lookup = result
            self._lookupDone(started, True)
            return value, _stats(lookup, self.reactor.seconds() - started)

        def missing(f: Failure) -> tuple[Optional[bytes], dict[str, Any]]:
            lookup = getattr(f.value, "result", None)
            # No record is an answer when peers gave it; a lookup nobody
            # answered failed.
            self._lookupDone(started, f if lookup is None or not lookup.responders else True)
            f.trap(NotFound)
            stats = _stats(lookup, self.reactor.seconds() - started) if lookup is not None else {
                "queried": self.kad.routingTable.size, "rounds": 0,
                "elapsed_ms": round((self.reactor.seconds() - started) * 1000, 3),
            }
            return None, stats

        return self.kad.getValue(key).addCallbacks(found, missing)

    def putValue(self, key: bytes, value: bytes) -> Deferred[int]:
        """
        Store C{value} under C{key} here and on the peers nearest to it.

        @return: how many other peers took it (see
            L{KademliaNode.putValue<beam.dht.kad.KademliaNode.putValue>});
            timed as a lookup that succeeded when at least one did.
        """
        started = self.reactor.seconds()

        def done(stored: Any) -> Any:
            self._lookupDone(started, stored if isinstance(stored, Failure) else bool(stored))
            return stored

        return self.kad.putValue(key, value).addBoth(done)

    def closestPeers(self, key: bytes) -> Deferred[list[PeerInfo]]:
        started = self.reactor.seconds()

        def done(result: Any) -> Any:
            if isinstance(result, Failure):
                self._lookupDone(started, result)
                return result
            self._lookupDone(started, bool(result.responders))
            return list(result.closest)

        return self.kad.closestPeers(key).addBoth(done)

    def _lookupDone(self, started: float, outcome: "bool | Failure") -> None:
        """
        Count one lookup and how long it took.  A lookup cancelled because
        the node stops is neither a success nor a failure: not counted.

        @param outcome: whether it succeeded, or the failure it ended with.
        """
        if isinstance(outcome, Failure):
            if outcome.check(CancelledError, NodeStopped):
                return
            outcome = False
        self.lookupLatency.observe(max(0.0, self.reactor.seconds() - started))
        if not outcome:
            self.lookupFailures += 1

    def status(self) -> DHTStatus:
        """
        Our mode, the routing table's size, the records we hold, and our
        lookups: how many, how many failed, their median and 95th
        percentile latency (estimated from L{lookupLatency}'s buckets).
        """
        latency = self.lookupLatency
        p50, p95 = latency.quantile(0.5), latency.quantile(0.95)
        return DHTStatus(
            mode="server" if self.kad.isServer else "client",
            routingTableSize=self.kad.routingTable.size,
            recordsHeld=len(self.kad.store),
            lookups=latency.count,
            lookupFailures=self.lookupFailures,
            lookupP50Ms=round(p50 * 1000, 3) if p50 is not None else None,
            lookupP95Ms=round(p95 * 1000, 3) if p95 is not None else None,
        )

    def routes(self) -> RoutesStatus:
        """
        The routing table by bucket (empty buckets left out).
        """
        buckets = []
        for view in self.kad.routingTable.buckets():
            if not view.entries:
                continue
            buckets.append(BucketStatus(
                index=view.index,
                peers=tuple(
                    RouteStatus(peerID=str(e.info.peer), addrs=tuple(str(a) for a in e.info.addrs),
                                lastSeen=e.lastSeen, failures=e.failures)
                    for e in view.entries
                ),
                replacements=len(view.replacements),
            ))
        return RoutesStatus(k=self.kad.k, size=self.kad.routingTable.size, buckets=tuple(buckets))

    def controlResource(self) -> Any:
        """
        C{/v1/kademlia}: status, routes, bootstrap (L{beam.dht.resource}).
        """
        from beam.dht.resource import DHTResource

        return DHTResource(self)


def _dialable(conn: Any, listenAddrs: Iterable[Multiaddr], onion: bool = False) -> tuple[Multiaddr, ...]:
    """
    The addresses a peer gave in identify that belong in a routing table:
    direct ones (no relay circuits) that we can reach from where the peer
    connects from (libp2p's address filtering, L{vantageOf}), at most 16;
    onion ones only if C{onion} (we have the C{"tor"} transport).
    """
    direct = [
        a.withoutPeerID() for a in listenAddrs
        if not any(name == "p2p-circuit" for name, _ in a.components()) and (onion or not a.isOnion())
    ]
    return tuple(reachableFrom(direct, vantageOf(conn)))[:16]


def _stats(lookup: Any, elapsed: float) -> dict[str, Any]:
    return {
        "queried": lookup.queries,
        "failures": lookup.failures,
        "rounds": lookup.rounds,
        "responders": len(lookup.responders),
        "elapsed_ms": round(elapsed * 1000, 3),
    }


__all__ = ["KAD_PROTOCOL", "KademliaService", "NoDHTPeers", "succeed", "PeerID"]
