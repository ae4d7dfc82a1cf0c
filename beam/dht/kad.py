"""
The Kademlia node: libp2p kad-dht behaviour over any network.

L{KademliaNode} answers requests (L{KademliaNode.handleRequest}) and runs
lookups, puts and gets through an L{IKadNetwork}, which is all it knows of
the world: the libp2p adapter (C{beam/dht/service.py}) implements it with
streams, the simulator (C{beam/dht/sim.py}) with a clock and a dict, tests
with a few lines.  Time and randomness are injected.

Semantics follow the libp2p kad-dht spec:

  - C{FIND_NODE key}: the k peers we know nearest to C{key}, never the
    requester; for our own peer ID, just ourselves.
  - C{GET_VALUE key}: the record if we hold a valid one, plus closer peers.
  - C{PUT_VALUE key record}: validated by the store (namespace validator,
    per-peer quota), then echoed back.
  - C{PING}: answered with C{PING}.
  - C{GET_PROVIDERS}: closer peers only (we hold no provider records);
    C{ADD_PROVIDER} and unknown types are refused.

Client and server mode: a server answers requests and belongs in routing
tables; a client only asks.  Only peers known to be servers are added to the
routing table: those that answered one of our requests, and those the
adapter vouches for (identify lists the protocol: L{KademliaNode.addPeer},
or C{senderIsServer} on L{KademliaNode.handleRequest}).  In C{"auto"} mode
the node is a client until the adapter calls
L{KademliaNode.setReachable}C{(True)}.

The routing table is kept up on every contact: an answer moves the peer to
the fresh end of its bucket; a full bucket pings its stalest member before
evicting it for a newcomer; failures (timeouts, garbage) are counted and a
peer failing repeatedly is dropped (L{RoutingTable.markFailed}).
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable, Iterable
from typing import Any, Final, Literal

from twisted.internet.defer import Deferred, fail, gatherResults, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface

from beam.dht.lookup import DEFAULT_SLOW_TIMEOUT, DEFAULT_TIMEOUT, Lookup, LookupResult
from beam.dht.messages import Message, MessageType, PeerInfo, Record
from beam.dht.routing import RoutingTable, kadID, peerKadID, xorDistance
from beam.dht.store import RecordStore
from beam.errors import (
    BeamError,
    InvalidDHTMessage,
    InvalidRecord,
    NodeStopped,
    NotFound,
    UnexpectedMessage,
)
from beam.identity.keys import PeerID

DEFAULT_REFRESH_INTERVAL: Final = 600.0
DEFAULT_QUORUM: Final = 3
DEFAULT_MIN_SLOW_TIMEOUT: Final = 0.25

Mode = Literal["auto", "server", "client"]


class IKadNetwork(Interface):
    """
    How a L{KademliaNode} reaches other nodes.
    """

    def request(peer: PeerInfo, message: Message) -> Deferred[Message]:
        """
        Send C{message} to C{peer} and return its response.

        The Deferred errbacks when the peer cannot be reached, resets,
        answers something undecodable (a L{beam.errors.ProtocolError}), or
        takes too long; it may be cancelled by the caller, which should
        abandon the request.
        """


class KademliaNode:
    """
    The DHT logic of one node.

    @param localPeer: our L{PeerInfo}, or a callable returning it (so the
        addresses we hand out can follow our listeners).
    @param timeout: seconds before an unanswered request has failed.
    @param slowTimeout: the most a lookup waits for a request before
        starting another in parallel (L{Lookup}).
    @param minSlowTimeout: the least it waits; in between, the wait follows
        the round trips this node measures (L{currentSlowTimeout}).
    @param paths: disjoint lookup paths (S/Kademlia); 1 is plain Kademlia.
    @param quorum: L{getValue} stops once this many peers (ourselves
        included) returned a valid record.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        localPeer: PeerInfo | Callable[[], PeerInfo],
        network: Any,
        store: RecordStore,
        *,
        mode: Mode = "server",
        k: int = 20,
        alpha: int = 3,
        random: _random.Random | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        slowTimeout: float = DEFAULT_SLOW_TIMEOUT,
        paths: int = 1,
        quorum: int = DEFAULT_QUORUM,
        refreshInterval: float = DEFAULT_REFRESH_INTERVAL,
        recentlySeen: float = 0.0,
        inboundPingInterval: float = 1.0,
        minSlowTimeout: float = DEFAULT_MIN_SLOW_TIMEOUT,
    ) -> None:
        if mode not in ("auto", "server", "client"):
            raise ValueError(f"unknown DHT mode {mode!r}")
        self._clock = clock
        self._localPeer = localPeer
        self.network = network
        self.store = store
        self.mode: Mode = mode
        self.k = k
        self.alpha = alpha
        self.random = random if random is not None else _random.Random()
        self.timeout = timeout
        self.slowTimeout = slowTimeout
        self.minSlowTimeout = min(minSlowTimeout, slowTimeout)
        self._srtt: float | None = None
        self._rttvar = 0.0
        self.paths = paths
        self.quorum = quorum
        self.refreshInterval = refreshInterval
        self.recentlySeen = recentlySeen
        self.inboundPingInterval = inboundPingInterval
        self._inboundPings: dict[int, float] = {}
        self.peerID = self.localInfo().peer
        self.routingTable = RoutingTable(self.peerID, k=k)
        if store.localPeer is None:
            store.localPeer = self.peerID
        self._reachable = False
        self._pinging: set[PeerID] = set()
        self._inflight: set[Deferred[Any]] = set()
        self._stopped = False

    # --- identity and mode -----------------------------------------------

    def localInfo(self) -> PeerInfo:
        lp = self._localPeer
        return lp() if callable(lp) else lp

    @property
    def isServer(self) -> bool:
        """
        Whether we answer DHT requests (the adapter registers the protocol
        handler only then).
        """
        if self.mode == "auto":
            return self._reachable
        return self.mode == "server"

    def setReachable(self, public: bool) -> None:
        """
        The adapter learned whether others can dial us; in C{"auto"} mode
        that makes us a server or a client.
        """
        self._reachable = public

    # --- routing-table upkeep --------------------------------------------

    def addPeer(self, info: PeerInfo, ping: bool = True) -> None:
        """
        C{info.peer} is a live DHT server (it answered us, or identify says
        it speaks the protocol): add it, pinging the stalest peer of a full
        bucket to decide which of the two to keep.
        """
        if info.peer == self.peerID or self._stopped:
            return
        now = self._clock.seconds()
        outcome = self.routingTable.add(info, now)
        if outcome.result == "full" and outcome.candidate is not None and not ping:
            bucket = self.routingTable.bucketIndex(peerKadID(outcome.candidate.peer))
            if now - self._inboundPings.get(bucket, -1e18) < self.inboundPingInterval:
                return
            self._inboundPings[bucket] = now
            ping = True
        if outcome.result == "full" and outcome.candidate is not None and ping:
            entry = self.routingTable.get(outcome.candidate.peer)
            if entry is not None and now - entry.lastSeen < self.recentlySeen:
                # Heard from it lately: it is alive, keep it without asking.
                # (Pinging anyway made every request start a cascade of
                # pings through full buckets.)
                return
            self._pingBeforeEvict(outcome.candidate)

    def peerFailed(self, peer: PeerID) -> None:
        """
        C{peer} failed to answer or answered garbage.
        """
        self.routingTable.markFailed(peer)

    def _pingBeforeEvict(self, old: PeerInfo) -> None:
        if old.peer in self._pinging:
            return
        self._pinging.add(old.peer)

        def alive(_: object) -> None:
            self.routingTable.add(old, self._clock.seconds())

        def dead(f: Failure) -> None:
            self.routingTable.remove(old.peer)

        d = self._request(old, Message(MessageType.PING), track=True)
        d.addCallbacks(alive, dead)
        d.addBoth(lambda _: self._pinging.discard(old.peer))

    # --- requests out ----------------------------------------------------

    def _request(self, peer: PeerInfo, message: Message, track: bool = False) -> Deferred[Message]:
        """
        Send C{message}, check that the answer is a response of the same
        type, time it out after C{timeout}.
        """
        sent = self._clock.seconds()
        d: Deferred[Message] = maybeDeferred(self.network.request, peer, message)
        timer = self._clock.callLater(self.timeout, d.cancel)

        def check(response: object) -> Message:
            if not isinstance(response, Message) or response.type != message.type:
                raise UnexpectedMessage(f"DHT peer {peer.peer} answered {message.type!r} with {response!r}")
            self._sampleRoundTrip(self._clock.seconds() - sent)
            return response

        def done(result: object) -> object:
            if timer.active():
                timer.cancel()
            return result

        d.addBoth(done)
        d.addCallback(check)
        if track:
            self._track(d)
        return d

    def _sampleRoundTrip(self, rtt: float) -> None:
        # RFC 6298's estimator: smoothed round trip and its mean deviation.
        if self._srtt is None:
            self._srtt = rtt
            self._rttvar = rtt / 2
        else:
            self._rttvar = 0.75 * self._rttvar + 0.25 * abs(self._srtt - rtt)
            self._srtt = 0.875 * self._srtt + 0.125 * rtt

    def currentSlowTimeout(self) -> float:
        """
        How long a lookup waits for an answer before asking one more peer in
        parallel: the retransmission timeout of RFC 6298 over the round trips
        of our answered requests (smoothed round trip plus four mean
        deviations), kept within [C{minSlowTimeout}, C{slowTimeout}], and
        C{slowTimeout} until something has answered.

        Each time all C{alpha} queries of a lookup wait on dead peers, the
        lookup stalls this long; with a fixed second (ten round trips on
        50 ms links) those stalls were most of the resolution time when
        many peers are dead (bench/bench_dht.py, 30% dead: p99 2.3 s, see
        docs/benchmarks.md).  Waiting less costs only a query sent in
        parallel: the slow peer still has until C{timeout} to answer.
        """
        if self._srtt is None:
            return self.slowTimeout
        rto = self._srtt + 4 * self._rttvar
        return min(self.slowTimeout, max(self.minSlowTimeout, rto))

    def _track(self, d: Deferred[Any]) -> None:
        self._inflight.add(d)

        def untrack(result: object) -> object:
            self._inflight.discard(d)
            return result

        d.addBoth(untrack)

    def _lookup(
        self,
        key: bytes,
        request: Message,
        onResponse: Callable[[PeerInfo, Message], bool] | None = None,
        seeds: Iterable[PeerInfo] = (),
    ) -> Lookup:
        target = kadID(key)
        seedList = list(seeds) + self.routingTable.closest(target, self.k * self.paths)
        return Lookup(
            target,
            seedList,
            lambda p: self._request(p, request),
            self._clock,
            k=self.k,
            alpha=self.alpha,
            paths=self.paths,
            timeout=self.timeout,
            slowTimeout=self.currentSlowTimeout(),
            localPeer=self.peerID,
            onResponse=onResponse,
            onSuccess=self.addPeer,
            onFailure=lambda info: self.peerFailed(info.peer),
        )

    def _run(self, lookup: Lookup) -> Deferred[LookupResult]:
        if self._stopped:
            raise NodeStopped()
        d = lookup.start()
        self._track(d)

        def refreshed(result: LookupResult) -> LookupResult:
            self.routingTable.markRefreshed(result.target, self._clock.seconds())
            return result

        return d.addCallback(refreshed)

    # --- public operations -----------------------------------------------

    def closestPeers(self, key: bytes, seeds: Iterable[PeerInfo] = ()) -> Deferred[LookupResult]:
        """
        Look up the k peers nearest to C{key} (a DHT key or peer ID bytes)
        with FIND_NODE; C{result.closest} lists those that answered.
        """
        lookup = self._lookup(key, Message(MessageType.FIND_NODE, key), seeds=seeds)
        return maybeDeferred(self._run, lookup)

    def findPeer(self, peer: PeerID) -> Deferred[PeerInfo]:
        """
        The addresses of C{peer}: from the routing table if it is there with
        addresses, else from a FIND_NODE lookup that stops as soon as some
        peer names it with addresses (or it answers itself).

        @return: errbacks with L{NotFound} if nobody knows it.
        """
        entry = self.routingTable.get(peer)
        if entry is not None and entry.info.addrs:
            return succeed(entry.info)
        found: list[PeerInfo] = []

        def onResponse(sender: PeerInfo, msg: Message) -> bool:
            if sender.peer == peer:
                found.append(sender)
                return True
            for info in msg.closerPeers:
                if info.peer == peer and info.addrs:
                    found.append(info)
                    return True
            return False

        lookup = self._lookup(peer.bytes, Message(MessageType.FIND_NODE, peer.bytes), onResponse)

        def done(result: LookupResult) -> PeerInfo:
            if found:
                return found[0]
            raise NotFound(f"no DHT peer knows {peer}")

        return maybeDeferred(self._run, lookup).addCallback(done)

    def getValue(self, key: bytes) -> Deferred[tuple[bytes, LookupResult]]:
        """
        Find the best valid record for C{key}: a GET_VALUE lookup that stops
        once C{quorum} peers (counting ourselves) returned a valid record,
        or when it converges; the validator's C{select} picks the best.
        Peers that returned an outdated record are sent the best one.

        @return: C{(value, stats)}; errbacks with L{NotFound} if no valid
            record was found, L{InvalidRecord} if C{key} has no validator.
        """
        try:
            self.store.validator(key)
        except InvalidRecord as e:
            return fail(e)
        found: list[tuple[PeerInfo | None, bytes]] = []
        local = self.store.get(key)
        if local is not None:
            found.append((None, local))

        def onResponse(sender: PeerInfo, msg: Message) -> bool:
            rec = msg.record
            if rec is not None:
                if rec.key != key:
                    raise InvalidDHTMessage("GET_VALUE answered with another key's record")
                try:
                    self.store.validate(key, rec.value)
                except InvalidRecord as e:
                    # Possibly just stale: ignore the record, keep the peers.
                    self.log.debug("invalid record from {peer}: {e}", peer=sender.peer, e=e)
                else:
                    found.append((sender, rec.value))
            # Stop early once C{quorum} peers returned the I{same} record:
            # the owner's record is held identically by the peers nearest
            # the key, while a liar's own claim is held by nobody else, so
            # it cannot make up a quorum alone.
            counts: dict[bytes, int] = {}
            for _, v in found:
                counts[v] = counts.get(v, 0) + 1
            return max(counts.values(), default=0) >= self.quorum

        lookup = self._lookup(key, Message(MessageType.GET_VALUE, key), onResponse)

        def done(result: LookupResult) -> tuple[bytes, LookupResult]:
            if not found:
                error = NotFound(f"no valid record for {key!r} in the DHT")
                error.result = result  # type: ignore[attr-defined]  # what the lookup cost, for callers' reports
                raise error
            nearest = {info.peer for info in result.closest}
            trusted = [(s, v) for s, v in found if s is None or s.peer in nearest]
            values = [v for _, v in (trusted if any(s is not None for s, _ in trusted) else found)]
            best = values[self.store.select(key, values)]
            for sender, value in found:
                if sender is not None and value != best:
                    self._fixUp(sender, key, best)
            return best, result

        return maybeDeferred(self._run, lookup).addCallback(done)

    def _fixUp(self, peer: PeerInfo, key: bytes, value: bytes) -> None:
        d = self._request(peer, Message(MessageType.PUT_VALUE, key, Record(key, value)), track=True)
        d.addErrback(lambda f: None)

    def putValue(self, key: bytes, value: bytes) -> Deferred[int]:
        """
        Publish C{value} under C{key}: store it here (always, so that we can
        republish it), look up the k peers nearest to C{key} and send each a
        PUT_VALUE.

        @return: how many I{other} peers (of the k nearest nodes) accepted
            it; never counts ourselves, so C{0} means the record is only
            here (no DHT peers, or all refused).  Errbacks with
            L{InvalidRecord} for a record our own validator refuses.
        """
        try:
            self.store.validate(key, value)
            self.store.put(key, value, origin=self.peerID)
        except BeamError as e:
            return fail(e)
        request = Message(MessageType.PUT_VALUE, key, Record(key, value))

        def send(result: LookupResult) -> Deferred[int]:
            target = result.target
            closest = result.closest
            here = len(closest) < self.k or xorDistance(peerKadID(self.peerID), target) < xorDistance(
                peerKadID(closest[-1].peer), target
            )
            puts = [self._put(info, request) for info in closest[: self.k - 1 if here else self.k]]
            d = gatherResults(puts)
            return d.addCallback(lambda oks: sum(1 for ok in oks if ok))

        return self.closestPeers(key).addCallback(send)

    def _put(self, peer: PeerInfo, request: Message) -> Deferred[bool]:
        def ok(response: Message) -> bool:
            rec = response.record
            return rec is not None and request.record is not None and rec.value == request.record.value

        def failed(f: Failure) -> bool:
            if not self._stopped:
                self.peerFailed(peer.peer)
            self.log.debug("PUT_VALUE to {peer} failed: {why}", peer=peer.peer, why=f.value)
            return False

        return self._request(peer, request, track=True).addCallbacks(ok, failed)

    def bootstrap(self, seeds: Iterable[PeerInfo], refreshBuckets: bool = True) -> Deferred[LookupResult]:
        """
        Join the DHT: look up our own ID starting from C{seeds} (plus our
        routing table), which fills the buckets near us; then refresh the
        stale buckets, which fills the far ones.

        @return: the self-lookup's result, once the refresh is done too.
        """
        d = self.closestPeers(self.peerID.bytes, seeds=seeds)
        if refreshBuckets:

            def thenRefresh(result: LookupResult) -> Deferred[LookupResult]:
                return self.refresh().addCallback(lambda _: result)

            d.addCallback(thenRefresh)
        return d

    def refresh(self, force: bool = False) -> Deferred[int]:
        """
        Look up a random key in every bucket not searched for
        C{refreshInterval} seconds (every bucket when C{force}).

        @return: how many lookups ran.
        """
        interval = 0.0 if force else self.refreshInterval
        stale = self.routingTable.staleBuckets(self._clock.seconds(), interval)
        lookups = [
            self.closestPeers(self.routingTable.randomKeyForBucket(i, self.random.randbytes))
            for i in stale
        ]
        return gatherResults(lookups, consumeErrors=True).addCallback(lambda rs: len(rs))

    def republish(self) -> Deferred[int]:
        """
        Put every unexpired record we published again, before the peers
        holding it drop it.

        @return: how many records were republished on at least one peer.
        """
        records = self.store.republishable(self.peerID)
        puts = [
            self.putValue(key, value).addErrback(lambda f: 0)
            for key, value in records
        ]
        return gatherResults(puts).addCallback(lambda counts: sum(1 for c in counts if c))

    def stop(self) -> None:
        """
        Cancel every lookup and request in flight (they errback with
        C{CancelledError}); later operations fail with L{NodeStopped}.
        """
        self._stopped = True
        for d in list(self._inflight):
            d.cancel()
        self._inflight.clear()

    # --- requests in -----------------------------------------------------

    def handleRequest(
        self, sender: PeerInfo, request: Message, senderIsServer: bool = False,
        senderNetwork: str | None = None,
    ) -> Message:
        """
        Answer one request from C{sender}.

        @param senderIsServer: the adapter knows the sender is a DHT server
            (identify lists the protocol), so it may join our routing table.
        @param senderNetwork: the network the request came from
            (L{beam.dht.store.networkOf} of the connection's remote
            address), charged by the store's per-network quotas.
        @raise UnexpectedMessage: we are a client, or the type is one we do
            not serve.
        @raise InvalidDHTMessage: the request lacks what its type needs.
        @raise InvalidRecord: a PUT_VALUE record fails validation.
        @raise RecordRefused: a PUT_VALUE the store will not keep.
        The adapter answers none of these: it logs and resets the stream,
        as libp2p implementations do.
        """
        if not self.isServer:
            raise UnexpectedMessage("this node is a DHT client and answers no requests")
        if senderIsServer:
            # Requesters may trigger at most one ping-before-evict per
            # bucket per C{inboundPingInterval}: unlimited, the peer we ping
            # adds us, pings its own stalest peer, and so on down a chain
            # (most of the DHT's traffic); never, and dead peers linger in
            # tables that nobody's answers refresh.
            self.addPeer(sender, ping=False)
        t = request.type
        if t == MessageType.PING:
            return Message(MessageType.PING)
        if t == MessageType.FIND_NODE:
            self._needKey(request)
            if request.key == self.peerID.bytes:
                return Message(MessageType.FIND_NODE, request.key, closerPeers=(self.localInfo(),))
            return Message(MessageType.FIND_NODE, request.key, closerPeers=self._closer(request.key, sender))
        if t == MessageType.GET_VALUE:
            self._needKey(request)
            value = self.store.get(request.key)
            record = None if value is None else Record(request.key, value)
            return Message(MessageType.GET_VALUE, request.key, record, self._closer(request.key, sender))
        if t == MessageType.PUT_VALUE:
            self._needKey(request)
            rec = request.record
            if rec is None:
                raise InvalidDHTMessage("PUT_VALUE without a record")
            if rec.key != request.key:
                raise InvalidDHTMessage("PUT_VALUE record key differs from the message key")
            self.store.put(rec.key, rec.value, origin=sender.peer, network=senderNetwork)
            return Message(MessageType.PUT_VALUE, request.key, Record(rec.key, rec.value))
        if t == MessageType.GET_PROVIDERS:
            self._needKey(request)
            return Message(MessageType.GET_PROVIDERS, request.key, closerPeers=self._closer(request.key, sender))
        raise UnexpectedMessage(f"unsupported DHT request type {int(t)}")

    @staticmethod
    def _needKey(request: Message) -> None:
        if not request.key:
            raise InvalidDHTMessage("DHT request without a key")

    def _closer(self, key: bytes, sender: PeerInfo) -> tuple[PeerInfo, ...]:
        return tuple(self.routingTable.closest(kadID(key), self.k, exclude=(sender.peer,)))
