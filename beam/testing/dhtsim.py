"""
A simulator that runs the real Kademlia code for thousands of nodes in one
process.

Every simulated node is a real L{beam.dht.kad.KademliaNode} with its own
routing table and record store.  Only the network is fake: L{SimNetwork}
carries each request and answer through the real wire codec of
L{beam.dht.messages} (so a codec bug shows up here as it would between two
machines), delays each direction by a per-link latency, may drop messages,
and models three kinds of peer: honest, dead (never answers, the requester
times out) and liar (answers with garbage: made-up peers, bogus records or
bytes that do not decode).

Time is simulated by L{SimClock}, an L{IReactorTime} over a heap.
C{twisted.internet.task.Clock} re-sorts its whole list of pending calls on
every C{callLater} and every call it runs, which is quadratic with the tens
of thousands of timers a 10,000-node lookup storm keeps pending; the heap
makes each operation logarithmic.

Building a network of N nodes by N real bootstrap lookups would cost N
lookups before the experiment starts, so L{Simulation} instead fills every
routing table with what a converged network would hold, through the normal
C{RoutingTable.add} API: for each bucket (peers sharing exactly i leading
bits of the SHA-256 id with the node) up to k peers drawn at random from
the peers that belong there.  L{Simulation.checkBootstrap} then runs real
bootstrap lookups on a sample of fresh nodes and compares the closest peers
they find with the true closest peers from the global id list.
"""

from __future__ import annotations

import gc
import hashlib
import heapq
import random as _random
import statistics
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.error import AlreadyCalled, AlreadyCancelled
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from beam.dht.kad import IKadNetwork, KademliaNode
from beam.dht.messages import (
    Message,
    MessageType,
    PeerInfo,
    Record,
    decodeMessage,
    encodeMessage,
)
from beam.dht.routing import kadID, peerKadID
from beam.dht.store import RecordStore
from beam.errors import BeamError
from beam.identity.keys import Identity, PeerID
from beam.identity.multiaddr import Multiaddr
from beam.names import (
    NAMESPACE,
    NameValidator,
    dhtKey,
    makeRecord,
    nameFromKey,
    signRecord,
)

_log = Logger()


# ---------------------------------------------------------------- the clock


@implementer(IDelayedCall)
class _HeapCall:
    """
    One pending call of a L{SimClock}.

    C{reset} and C{delay} push a new heap entry and bump C{_generation}, so
    the stale entry is skipped when it surfaces instead of being searched
    for and removed.
    """

    __slots__ = ("_clock", "_generation", "args", "called", "cancelled", "func", "kw", "time")

    def __init__(
        self, clock: SimClock, time: float, func: Callable[..., object],
        args: tuple[Any, ...], kw: dict[str, Any],
    ) -> None:
        self._clock = clock
        self.time = time
        self.func = func
        self.args = args
        self.kw = kw
        self.called = False
        self.cancelled = False
        self._generation = 0

    def getTime(self) -> float:
        return self.time

    def active(self) -> bool:
        return not (self.called or self.cancelled)

    def cancel(self) -> None:
        if self.cancelled:
            raise AlreadyCancelled()
        if self.called:
            raise AlreadyCalled()
        self.cancelled = True
        self._clock._dropped()
        # Drop the references (as Twisted's DelayedCall does); never called now.
        self.func = None  # type: ignore[assignment]
        self.args = ()
        self.kw = {}

    def reset(self, secondsFromNow: float) -> None:
        self._move(self._clock.rightNow + secondsFromNow)

    def delay(self, secondsLater: float) -> None:
        self._move(self.time + secondsLater)

    def _move(self, when: float) -> None:
        if self.cancelled:
            raise AlreadyCancelled()
        if self.called:
            raise AlreadyCalled()
        self._generation += 1
        self.time = when
        self._clock._dropped()
        self._clock._push(self)

    def __repr__(self) -> str:
        return f"<_HeapCall at {self.time:.3f} {self.func!r}>"


@implementer(IReactorTime)
class SimClock:
    """
    A deterministic L{IReactorTime} whose pending calls live in a heap.

    Like C{twisted.internet.task.Clock}, time only moves when L{advance}
    (or L{runUntil}) is called; unlike it, a call runs with L{seconds}
    equal to its own scheduled time, so durations measured inside
    callbacks are exact rather than rounded up to the end of the step.
    """

    def __init__(self, start: float = 0.0) -> None:
        self.rightNow = start
        self._heap: list[tuple[float, int, int, _HeapCall]] = []
        self._seq = 0
        self._stale = 0
        #: How many calls have run, for the benchmark's accounting.
        self.callsRun = 0

    def seconds(self) -> float:
        return self.rightNow

    def callLater(
        self, delay: float, callable: Callable[..., object], *args: object, **kw: object
    ) -> IDelayedCall:
        if delay < 0:
            delay = 0.0
        call = _HeapCall(self, self.rightNow + delay, callable, args, kw)
        self._push(call)
        return call

    def _push(self, call: _HeapCall) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (call.time, self._seq, call._generation, call))

    def _dropped(self) -> None:
        # A cancelled or moved call leaves a dead entry behind; rebuild the
        # heap when they outnumber the live ones, so memory stays bounded by
        # the live timers even when nearly every timeout is cancelled.
        self._stale += 1
        if self._stale > 1024 and self._stale * 2 > len(self._heap):
            self._heap = [e for e in self._heap if self._live(e)]
            heapq.heapify(self._heap)
            self._stale = 0

    @staticmethod
    def _live(entry: tuple[float, int, int, _HeapCall]) -> bool:
        call = entry[3]
        return not call.cancelled and not call.called and entry[2] == call._generation

    def getDelayedCalls(self) -> Sequence[IDelayedCall]:
        return [e[3] for e in self._heap if self._live(e)]

    def pending(self) -> int:
        """
        The number of heap entries (live or not yet discarded): an upper
        bound on the live timers.
        """
        return len(self._heap)

    def nextTime(self) -> float | None:
        """
        When the next live call is due, or L{None} if nothing is pending.
        """
        heap = self._heap
        while heap and not self._live(heap[0]):
            heapq.heappop(heap)
            self._stale = max(0, self._stale - 1)
        return heap[0][0] if heap else None

    def _runDue(self, until: float) -> None:
        heap = self._heap
        pop = heapq.heappop
        while heap and heap[0][0] <= until:
            when, _, generation, call = pop(heap)
            if call.cancelled or call.called or generation != call._generation:
                self._stale = max(0, self._stale - 1)
                continue
            self.rightNow = max(self.rightNow, when)
            call.called = True
            func, args, kw = call.func, call.args, call.kw
            call.func = None  # type: ignore[assignment]  # drop the reference: it runs once, below
            call.args = ()
            call.kw = {}
            self.callsRun += 1
            func(*args, **kw)

    def advance(self, amount: float) -> None:
        """
        Move time forward by C{amount} seconds, running every call that falls
        due, in time order (ties in the order they were scheduled).
        """
        until = self.rightNow + amount
        self._runDue(until)
        self.rightNow = until

    def runUntil(self, done: Callable[[], bool], limit: float = float("inf")) -> bool:
        """
        Run calls one instant at a time until C{done()} is true, nothing is
        pending, or simulated time would pass C{limit} (absolute).

        @return: whether C{done()} became true.
        """
        while not done():
            nxt = self.nextTime()
            if nxt is None or nxt > limit:
                return done()
            self._runDue(nxt)
        return True


# ---------------------------------------------------------------- the network


class SimTimeout(BeamError):
    """
    The simulated peer did not answer in time.
    """


class SimStreamReset(BeamError):
    """
    The simulated peer failed while answering (as a reset stream).
    """


_ED25519_PREFIX = b"\x00\x24\x08\x01\x12\x20"  # identity multihash of a protobuf ed25519 key


def randomPeerID(rng: _random.Random) -> Any:
    """
    A well-formed ed25519-style peer ID of a peer that does not exist.
    """
    return PeerID(_ED25519_PREFIX + rng.randbytes(32))


def randomAddr(rng: _random.Random) -> Any:
    """
    A plausible C{/ip4/.../tcp/...} address nobody listens on.
    """
    a, b, c, d = rng.randbytes(4)
    return Multiaddr(f"/ip4/{a}.{b}.{c}.{d}/tcp/{rng.randrange(1024, 65536)}")


@attrs.define
class NetworkStats:
    """
    What crossed the simulated network.

    @ivar requests: requests sent.
    @ivar answers: answers delivered to a requester (garbage included).
    @ivar lost: messages dropped by link loss (either direction).
    @ivar toDead: requests sent to dead or non-existent peers.
    @ivar lies: garbage answers sent by liars.
    @ivar bytes: encoded bytes of all messages sent.
    @ivar timeouts: requests that failed by the network's own timeout.
    @ivar handlerErrors: requests whose handler raised something other than
        a L{BeamError} or failed (a bug in the node, or an answer it could
        not encode).
    @ivar refused: requests the handler refused with a L{BeamError} (such
        as a PUT_VALUE the store will not keep); the stream is reset.
    @ivar byType: requests sent, by message type name.
    """

    requests: int = 0
    answers: int = 0
    lost: int = 0
    toDead: int = 0
    lies: int = 0
    bytes: int = 0
    timeouts: int = 0
    handlerErrors: int = 0
    refused: int = 0
    byType: dict[str, int] = attrs.Factory(dict)


class _Pending:
    """
    One request in flight: its Deferred and the network timeout guarding it.
    """

    __slots__ = ("deferred", "timer")

    def __init__(self) -> None:
        self.deferred: Deferred[Any] = Deferred(self._cancel)
        self.timer: IDelayedCall | None = None

    def _cancel(self, d: Deferred[Any]) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None

    def settle(self) -> Deferred[Any] | None:
        """
        Claim the right to fire the Deferred; L{None} if it already fired
        (answered, timed out or cancelled).
        """
        if self.deferred.called:
            return None
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        return self.deferred


class SimNetwork:
    """
    An in-memory network of Kademlia nodes with per-link latency and loss.

    Nodes are registered with L{register} (a peer and its request handler,
    normally C{KademliaNode.handleRequest}); L{endpoint} gives the
    C{IKadNetwork} a node uses to send.  A request is encoded with the real
    codec, delivered after the link's latency to the target's handler
    (after decoding it again there), and the handler's answer is encoded,
    carried back after the same latency and decoded for the requester.  A
    decode failure at either end errbacks the request with the codec's
    error, as the libp2p adapter would.

    @param latency: one-way delay of a link in seconds (the benchmark's 50 ms).
    @param jitter: each link's latency is C{latency * (1 + jitter * u)}
        for a fixed C{u} in [0, 1) drawn from the pair of peers, so a link
        keeps its latency for the whole run as a real path would.
    @param loss: probability that a message (request or answer) is dropped.
    @param requestTimeout: after this many seconds an unanswered request
        errbacks with L{SimTimeout} (a lookup's own, shorter timeouts
        normally cancel it first).
    """

    def __init__(
        self,
        clock: SimClock | IReactorTime,
        latency: float = 0.05,
        jitter: float = 0.0,
        loss: float = 0.0,
        requestTimeout: float = 10.0,
        random: _random.Random | None = None,
    ) -> None:
        self.clock = clock
        self.latency = latency
        self.jitter = jitter
        self.loss = loss
        self.requestTimeout = requestTimeout
        self.random = random if random is not None else _random.Random(0)
        self.stats = NetworkStats()
        self._handlers: dict[Any, Callable[[Any, Any], Any]] = {}
        self._infos: dict[Any, Any] = {}
        self.dead: set[Any] = set()
        self.liars: set[Any] = set()
        self._liarIdentities: dict[Any, Any] = {}
        self.garbageRecord: Callable[[Any, bytes], bytes | None] | None = None

    # --- membership -------------------------------------------------------

    def register(self, info: Any, handler: Callable[[Any, Any], Any]) -> None:
        """
        Attach a node: C{handler(fromInfo, message)} answers its requests
        with a message or a Deferred of one.
        """
        self._handlers[info.peer] = handler
        self._infos[info.peer] = info

    def endpoint(self, local: Any) -> SimEndpoint:
        """
        The C{IKadNetwork} through which the node C{local} (a PeerInfo)
        sends its requests.
        """
        return SimEndpoint(self, local)

    def kill(self, peer: Any) -> None:
        """
        C{peer} stops answering: requests to it time out.
        """
        self.dead.add(peer)

    def revive(self, peer: Any) -> None:
        self.dead.discard(peer)

    def makeLiar(self, peer: Any, identity: Any = None) -> None:
        """
        From now on C{peer} answers every request with garbage.

        @param identity: the liar's key pair, if it should also sign records
            of its own (see L{garbageRecord}).
        """
        self.liars.add(peer)
        if identity is not None:
            self._liarIdentities[peer] = identity

    def isAlive(self, peer: Any) -> bool:
        return peer in self._handlers and peer not in self.dead

    # --- carrying messages ------------------------------------------------

    def linkLatency(self, a: Any, b: Any) -> float:
        """
        The one-way latency between two peers (symmetric, fixed per link).
        """
        if not self.jitter:
            return self.latency
        x, y = a.bytes, b.bytes
        if y < x:
            x, y = y, x
        u = int.from_bytes(hashlib.blake2b(x + y, digest_size=4).digest(), "big") / 2**32
        return self.latency * (1.0 + self.jitter * u)

    def _lost(self) -> bool:
        if self.loss and self.random.random() < self.loss:
            self.stats.lost += 1
            return True
        return False

    def send(self, local: Any, peer: Any, message: Any) -> Deferred[Any]:
        """
        Carry C{message} from C{local} to C{peer} (both PeerInfo) and return
        the Deferred answer.
        """
        pending = _Pending()
        stats = self.stats
        stats.requests += 1
        typeName = getattr(message.type, "name", str(message.type))
        stats.byType[typeName] = stats.byType.get(typeName, 0) + 1
        try:
            data = encodeMessage(message)
        except BeamError:
            pending.deferred.errback()
            return pending.deferred
        stats.bytes += len(data)
        pending.timer = self.clock.callLater(self.requestTimeout, self._timedOut, pending)
        if not self._lost():
            delay = self.linkLatency(local.peer, peer.peer)
            self.clock.callLater(delay, self._deliver, pending, local, peer.peer, data, delay)
        return pending.deferred

    def _timedOut(self, pending: _Pending) -> None:
        pending.timer = None
        if not pending.deferred.called:
            self.stats.timeouts += 1
            pending.deferred.errback(SimTimeout())

    def _deliver(
        self, pending: _Pending, sender: Any, target: Any, data: bytes, delay: float
    ) -> None:
        if pending.deferred.called:
            # The requester gave up before the request arrived; the target
            # would still have answered, but nobody is listening.
            return
        handler = self._handlers.get(target)
        if handler is None or target in self.dead:
            self.stats.toDead += 1
            return
        if target in self.liars:
            self.stats.lies += 1
            reply = self._garbage(target, data)
            self._reply(pending, reply, delay)
            return
        try:
            request = decodeMessage(data)
        except BeamError:
            _log.failure("simulated node could not decode a request")
            return
        try:
            result = handler(sender, request)
        except Exception:  # noqa: BLE001 - any error is the node's; count it, reset
            self._handlerFailed(Failure(), pending, delay)
            return
        if isinstance(result, Deferred):
            result.addCallbacks(
                self._encodeReply, self._handlerFailed, callbackArgs=(pending, delay), errbackArgs=(pending, delay)
            )
        else:
            self._encodeReply(result, pending, delay)

    def _handlerFailed(self, reason: Failure, pending: _Pending, delay: float) -> None:
        # The real adapter would log this and reset the stream; the requester
        # learns of it one latency later.  Refusals (our own errors) are the
        # protocol working; anything else is a bug, counted so that tests can
        # insist on none.
        if reason.check(BeamError):
            self.stats.refused += 1
        else:
            self.stats.handlerErrors += 1
            _log.failure("simulated node failed to answer a request", reason)
        self.clock.callLater(delay, self._reset, pending)

    def _reset(self, pending: _Pending) -> None:
        d = pending.settle()
        if d is not None:
            d.errback(SimStreamReset())

    def _encodeReply(self, response: Any, pending: _Pending, delay: float) -> None:
        if response is None:
            # The handler chose not to answer (as for a request it refuses
            # silently): the requester will time out.
            return
        try:
            data = encodeMessage(response)
        except BeamError:
            self._handlerFailed(Failure(), pending, delay)
            return
        self._reply(pending, data, delay)

    def _reply(self, pending: _Pending, data: bytes, delay: float) -> None:
        self.stats.bytes += len(data)
        if self._lost():
            return
        self.clock.callLater(delay, self._answer, pending, data)

    def _answer(self, pending: _Pending, data: bytes) -> None:
        d = pending.settle()
        if d is None:
            return
        self.stats.answers += 1
        try:
            response = decodeMessage(data)
        except BeamError:
            d.errback()
            return
        d.callback(response)

    # --- liars ------------------------------------------------------------

    def _garbage(self, liar: Any, request: bytes) -> bytes:
        """
        Something a hostile or broken peer might answer to C{request}:
        made-up peers (with a bogus record for a GET_VALUE), bytes that are
        not a message, or a well-formed answer of the wrong type.
        """
        rng = self.random
        try:
            asked = decodeMessage(request)
        except BeamError:
            asked = None
        roll = rng.random()
        if roll < 0.2 or asked is None:
            return rng.randbytes(rng.randrange(1, 300))
        if roll < 0.3:
            wrong = MessageType.PING if asked.type != MessageType.PING else MessageType.FIND_NODE
            return encodeMessage(Message(type=wrong, key=rng.randbytes(32)))
        peers = tuple(
            PeerInfo(randomPeerID(rng), (randomAddr(rng),)) for _ in range(20)
        )
        record = None
        if asked.type == MessageType.GET_VALUE:
            value: bytes | None = None
            if self.garbageRecord is not None and rng.random() < 0.5:
                value = self.garbageRecord(self._liarIdentities.get(liar), asked.key)
            if value is None:
                value = rng.randbytes(rng.randrange(1, 200))
            record = Record(asked.key, value)
        return encodeMessage(
            Message(type=asked.type, key=asked.key, record=record, closerPeers=peers)
        )


@implementer(IKadNetwork)
class SimEndpoint:
    """
    One node's view of a L{SimNetwork}: its C{IKadNetwork}.
    """

    def __init__(self, network: SimNetwork, local: Any) -> None:
        self.network = network
        self.local = local

    def request(self, peer: Any, message: Any) -> Deferred[Any]:
        """
        Send C{message} to C{peer} (a PeerInfo); the Deferred fires with the
        decoded answer or errbacks (timeout, undecodable answer).
        """
        return self.network.send(self.local, peer, message)


# ---------------------------------------------------------------- the experiment


def percentile(values: Sequence[float], q: float) -> float:
    """
    The C{q}-th percentile (0-100) by the nearest-rank method: a value that
    was actually observed, so "p99 rounds" is a whole number of rounds.
    """
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


@attrs.define
class SimPeer:
    """
    One simulated node: its key pair, how it is reached, and its DHT node.
    """

    identity: Any
    info: Any
    kid: int
    node: Any = None


@attrs.frozen
class Resolution:
    """
    The outcome of one C{getValue} in the simulator.

    @ivar ok: the value found is the one the name's owner published.
    @ivar rounds: the lookup's rounds (deepest hop that answered).
    @ivar queries: requests the lookup sent.
    @ivar elapsed: simulated seconds from the call to its result.
    @ivar error: why it failed, if it did.
    """

    key: bytes
    ok: bool
    rounds: int
    queries: int
    elapsed: float
    error: str = ""


@attrs.frozen
class ScenarioResult:
    """
    The figures of one scenario, as the benchmark prints them.
    """

    name: str
    nodes: int
    names: int
    published: float
    lookups: int
    success: float
    roundsMedian: float
    roundsP99: float
    queriesMedian: float
    timeMedian: float
    timeP99: float
    timeMax: float
    failures: tuple[str, ...]

    @classmethod
    def fromResolutions(
        cls, name: str, nodes: int, names: int, published: float,
        results: Sequence[Resolution],
    ) -> ScenarioResult:
        rounds = [r.rounds for r in results]
        times = [r.elapsed for r in results if r.ok]
        errors = sorted({r.error for r in results if not r.ok})
        return cls(
            name=name,
            nodes=nodes,
            names=names,
            published=published,
            lookups=len(results),
            success=sum(r.ok for r in results) / len(results) if results else float("nan"),
            roundsMedian=statistics.median(rounds) if rounds else float("nan"),
            roundsP99=percentile(rounds, 99),
            queriesMedian=statistics.median([r.queries for r in results]) if results else float("nan"),
            timeMedian=statistics.median(times) if times else float("nan"),
            timeP99=percentile(times, 99),
            timeMax=max(times) if times else float("nan"),
            failures=tuple(errors[:5]),
        )

    def toJSON(self) -> dict[str, Any]:
        return attrs.asdict(self)


# The unix time simulated clocks start at: name records carry real
# timestamps and are checked against the clock.
SIM_EPOCH = 1_700_000_000.0


class Simulation:
    """
    N real L{KademliaNode}s on one L{SimNetwork}, and the experiments the
    benchmark runs on them.

    Nodes are all DHT servers (as every reachable Beam node is).  Their key
    pairs are derived from C{seed}, so a run is reproducible.

    @param identities: key pairs to reuse (building ten thousand costs a
        second or two; the benchmark builds one list for all scenarios).
    @param nodeOptions: extra keyword arguments for every C{KademliaNode}
        (C{timeout}, C{slowTimeout}, C{quorum}, C{paths}...).
    """

    def __init__(
        self,
        n: int,
        *,
        seed: int = 0,
        latency: float = 0.05,
        jitter: float = 0.0,
        loss: float = 0.0,
        k: int = 20,
        alpha: int = 3,
        identities: Sequence[Any] | None = None,
        nodeOptions: dict[str, Any] | None = None,
    ) -> None:
        self.n = n
        self.k = k
        self.alpha = alpha
        self.random = _random.Random(seed)
        self.clock = SimClock(SIM_EPOCH)
        self.network = SimNetwork(
            self.clock, latency=latency, jitter=jitter, loss=loss,
            random=_random.Random(self.random.getrandbits(64)),
        )
        self.nodeOptions = dict(nodeOptions or {})
        if identities is None:
            identities = makeIdentities(n, seed)
        if len(identities) < n:
            raise ValueError("fewer identities than nodes")
        self.peers: list[SimPeer] = []
        self.byPeer: dict[Any, SimPeer] = {}
        for i, identity in enumerate(identities[:n]):
            self._addPeer(identity, i)
        self._sorted: list[tuple[int, SimPeer]] = sorted(
            ((p.kid, p) for p in self.peers), key=lambda e: e[0]
        )
        self._sortedIDs = [kid for kid, _ in self._sorted]
        self.network.garbageRecord = self._liarRecord
        #: The names published by L{publishNames}: key -> (owner, value).
        self.published: dict[bytes, tuple[SimPeer, bytes]] = {}
        #: What L{checkBootstrap} measured, if it ran.
        self.bootstrapScore: float | None = None
        #: Requests sent during the last L{resolveNames}, in all and by type
        #: (lookups, and the pings of routing-table upkeep they cause).
        self.resolveRequests = 0
        self.resolveByType: dict[str, int] = {}

    # --- building ---------------------------------------------------------

    def _addPeer(self, identity: Any, index: int) -> SimPeer:
        addr = Multiaddr(f"/ip4/10.{index >> 16 & 255}.{index >> 8 & 255}.{index & 255}/tcp/4001")
        info = PeerInfo(identity.peerID, (addr,))
        peer = SimPeer(identity, info, int.from_bytes(peerKadID(identity.peerID), "big"))
        peer.node = self._makeNode(peer)
        node = peer.node
        self.network.register(
            info, lambda sender, msg: node.handleRequest(sender, msg, senderIsServer=True)
        )
        self.peers.append(peer)
        self.byPeer[info.peer] = peer
        return peer

    def _makeNode(self, peer: SimPeer) -> Any:
        store = RecordStore(self.clock, {NAMESPACE: NameValidator()}, localPeer=peer.info.peer)
        return KademliaNode(
            self.clock,
            peer.info,
            self.network.endpoint(peer.info),
            store,
            mode="server",
            k=self.k,
            alpha=self.alpha,
            random=_random.Random(self.random.getrandbits(64)),
            **self.nodeOptions,
        )

    def fillRoutingTables(self) -> int:
        """
        Give every node the routing table of a converged network: for each
        bucket I{i}, up to k peers chosen at random among all peers whose
        id shares exactly I{i} leading bits with the node's, added through
        C{RoutingTable.add} as if each had just answered.

        @return: the number of entries added over all tables.
        """
        ids = self._sortedIDs
        now = self.clock.seconds()
        rng = self.random
        k = self.k
        total = 0
        for peer in self.peers:
            table = peer.node.routingTable
            x = peer.kid
            for i in range(256):
                # Ids sharing at least i bits with x: if only x is left,
                # bucket i and every deeper one are empty.
                shift = 256 - i
                lo = bisect_left(ids, (x >> shift) << shift)
                hi = bisect_left(ids, ((x >> shift) + 1) << shift)
                if hi - lo <= 1:
                    break
                # Bucket i: the half of that range whose bit i differs from x's.
                shift -= 1
                prefix = (x >> shift) ^ 1
                blo = bisect_left(ids, prefix << shift)
                bhi = bisect_left(ids, (prefix + 1) << shift)
                span = bhi - blo
                chosen = range(blo, bhi) if span <= k else rng.sample(range(blo, bhi), k)
                for j in chosen:
                    table.add(self._sorted[j][1].info, now)
                    total += 1
        return total

    def trueClosest(self, target: bytes, n: int | None = None, alive: bool = True) -> list[SimPeer]:
        """
        The C{n} (default k) peers nearest to a Kademlia ID, from the
        global list (for checking lookups), optionally only live honest ones.
        """
        n = self.k if n is None else n
        t = int.from_bytes(target, "big")
        pool = (
            p for p in self.peers
            if not alive or (self.network.isAlive(p.info.peer) and p.info.peer not in self.network.liars)
        )
        return heapq.nsmallest(n, pool, key=lambda p: p.kid ^ t)

    def checkBootstrap(self, sample: int = 5) -> float:
        """
        Check the filled tables against the real protocol: C{sample} fresh
        nodes join by a real C{bootstrap} (a self-lookup from one random
        seed, then a refresh of every bucket) and look up random keys; the
        k closest peers those lookups return are compared with the true
        k closest from the global list.

        The fresh nodes join the network (other nodes may learn of them),
        which is what a joining node does.

        @return: the mean fraction of the true k closest that were found.
        """
        scores: list[float] = []
        for _ in range(sample):
            identity = _identityFrom(self.random)
            newcomer = self._addPeer(identity, len(self.peers))
            seed = self.random.choice(self.peers[:-1])
            boot = newcomer.node.bootstrap([seed.info])
            self.runUntilFired(boot)
            key = self.random.randbytes(32)
            d = newcomer.node.closestPeers(key)
            result = self.runUntilFired(d)
            truth = {p.info.peer for p in self.trueClosest(kadID(key))}
            found = {info.peer for info in result.closest}
            scores.append(len(truth & found) / len(truth))
        return sum(scores) / len(scores) if scores else float("nan")

    # --- driving time -----------------------------------------------------

    def runUntilFired(self, d: Deferred[Any], limit: float = 3600.0) -> Any:
        """
        Run the clock until C{d} fires; return its result or raise its error.
        """
        box: list[Any] = []
        d.addBoth(box.append)
        self.clock.runUntil(lambda: bool(box), self.clock.seconds() + limit)
        if not box:
            raise SimTimeout("the simulated operation never finished")
        result = box[0]
        if isinstance(result, Failure):
            result.raiseException()
        return result

    # --- faults -----------------------------------------------------------

    def choose(self, fraction: float, exclude: Iterable[SimPeer] = ()) -> list[SimPeer]:
        """
        A random C{fraction} of the nodes, none of C{exclude}.
        """
        skip = {p.info.peer for p in exclude}
        pool = [p for p in self.peers if p.info.peer not in skip]
        count = round(fraction * len(self.peers))
        return self.random.sample(pool, min(count, len(pool)))

    def kill(self, fraction: float) -> list[SimPeer]:
        """
        A random C{fraction} of all nodes stop answering (churn: they left
        without a word, and the others' tables still list them).
        """
        chosen = self.choose(fraction)
        for p in chosen:
            self.network.kill(p.info.peer)
        return chosen

    def makeLiars(self, fraction: float) -> list[SimPeer]:
        """
        A random C{fraction} of all nodes answer every request with garbage
        (see L{SimNetwork.makeLiar}), signing their own claims to names.
        """
        chosen = self.choose(fraction)
        for p in chosen:
            self.network.makeLiar(p.info.peer, p.identity)
        return chosen

    def _liarRecord(self, identity: Any, key: bytes) -> bytes | None:
        # A liar's own, validly signed claim to the name being looked up:
        # only the validator's majority rule keeps it from winning.
        if identity is None:
            return None
        try:
            name = nameFromKey(key)
        except BeamError:
            return None
        record = makeRecord(identity, name, (), now=self.clock.seconds())
        return signRecord(identity, record)

    # --- names ------------------------------------------------------------

    def honest(self) -> list[SimPeer]:
        """
        The nodes that are alive and not lying.
        """
        net = self.network
        return [p for p in self.peers if net.isAlive(p.info.peer) and p.info.peer not in net.liars]

    def publishNames(self, count: int, concurrency: int = 200) -> float:
        """
        C{count} random honest nodes each publish a signed name record
        (C{sim-NNNNN}) with C{putValue}.

        @return: the mean number of nodes that stored each record.
        """
        owners = self.random.sample(self.honest(), count)
        jobs = []
        for i, owner in enumerate(owners):
            name = f"sim-{i:05d}"
            record = makeRecord(owner.identity, name, owner.info.addrs, ("ssh",), now=self.clock.seconds())
            value = signRecord(owner.identity, record)
            key = dhtKey(name)
            self.published[key] = (owner, value)
            jobs.append((owner, key, value))
        stored: list[int] = []

        def one(job: tuple[SimPeer, bytes, bytes]) -> Deferred[Any]:
            owner, key, value = job
            return owner.node.putValue(key, value).addCallbacks(stored.append, lambda f: stored.append(0))

        self._runBatches(jobs, one, concurrency)
        return sum(stored) / len(stored) if stored else 0.0

    def resolveNames(
        self, count: int | None = None, perName: int = 1, concurrency: int = 200
    ) -> list[Resolution]:
        """
        Resolve published names (all, or C{count} of them) with C{getValue},
        each C{perName} times, each time from a random honest node other
        than its owner.
        """
        keys = list(self.published)
        if count is not None and count < len(keys):
            keys = self.random.sample(keys, count)
        keys = keys * perName
        self.random.shuffle(keys)
        honest = self.honest()
        jobs = []
        for key in keys:
            owner, _ = self.published[key]
            asker = self.random.choice(honest)
            while asker is owner:
                asker = self.random.choice(honest)
            jobs.append((asker, key))
        results: list[Resolution] = []
        before = dict(self.network.stats.byType)
        requests = self.network.stats.requests

        def one(job: tuple[SimPeer, bytes]) -> Deferred[Any]:
            asker, key = job
            expected = self.published[key][1]
            started = self.clock.seconds()

            def found(answer: tuple[bytes, Any]) -> None:
                value, stats = answer
                ok = value == expected
                results.append(Resolution(
                    key, ok, stats.rounds, stats.queries, self.clock.seconds() - started,
                    "" if ok else "wrong value",
                ))

            def failed(f: Failure) -> None:
                results.append(Resolution(
                    key, False, 0, 0, self.clock.seconds() - started, type(f.value).__name__,
                ))

            return asker.node.getValue(key).addCallbacks(found, failed)

        self._runBatches(jobs, one, concurrency)
        self.resolveRequests = self.network.stats.requests - requests
        self.resolveByType = {
            t: n - before.get(t, 0) for t, n in self.network.stats.byType.items()
            if n - before.get(t, 0)
        }
        return results

    def _runBatches(
        self, jobs: Sequence[Any], start: Callable[[Any], Deferred[Any]], concurrency: int
    ) -> None:
        # Keep up to `concurrency` operations in flight; each one measures
        # its own simulated time, so running them side by side only saves
        # wall-clock time (the simulated network has no congestion).
        queue = list(reversed(jobs))
        inflight = [0]

        def launch() -> None:
            while queue and inflight[0] < concurrency:
                job = queue.pop()
                inflight[0] += 1
                start(job).addBoth(finished)

        def finished(_: object) -> None:
            inflight[0] -= 1
            launch()

        launch()
        self.clock.runUntil(lambda: not queue and inflight[0] == 0)


def _identityFrom(rng: _random.Random) -> Any:
    return Identity.fromSeed(rng.randbytes(32))


def makeIdentities(n: int, seed: int = 0) -> list[Any]:
    """
    N ed25519 key pairs derived from C{seed}.
    """
    rng = _random.Random(f"beam-sim-identities-{seed}")
    return [_identityFrom(rng) for _ in range(n)]


def runScenario(
    name: str,
    nodes: int,
    names: int,
    *,
    kill: float = 0.0,
    liars: float = 0.0,
    perName: int = 1,
    seed: int = 0,
    latency: float = 0.05,
    jitter: float = 0.0,
    loss: float = 0.0,
    identities: Sequence[Any] | None = None,
    nodeOptions: dict[str, Any] | None = None,
    concurrency: int = 200,
    checkBootstrap: int = 0,
) -> tuple[ScenarioResult, Simulation]:
    """
    One benchmark scenario: build a converged network of C{nodes}, turn a
    fraction of it into liars, publish C{names} signed name records from
    random honest nodes, kill a fraction of all nodes (after publishing, so
    some of the records' holders die too), then resolve every name
    C{perName} times, each from a random live honest node.

    The cyclic garbage collector is paused while the network is built and
    the built objects are then frozen (C{gc.freeze}): ten thousand routing
    tables are millions of long-lived objects, and rescanning them on every
    collection made building four times slower.

    @param checkBootstrap: if positive, that many fresh nodes first join by
        a real bootstrap to check the filled tables (L{Simulation.checkBootstrap});
        the score is in C{sim.bootstrapScore}.
    """
    wasEnabled = gc.isenabled()
    gc.disable()
    try:
        sim = Simulation(
            nodes, seed=seed, latency=latency, jitter=jitter, loss=loss,
            identities=identities, nodeOptions=nodeOptions,
        )
        sim.fillRoutingTables()
    finally:
        gc.freeze()
        if wasEnabled:
            gc.enable()
    try:
        if checkBootstrap:
            sim.bootstrapScore = sim.checkBootstrap(checkBootstrap)
        if liars:
            sim.makeLiars(liars)
        stored = sim.publishNames(names, concurrency)
        if kill:
            sim.kill(kill)
        results = sim.resolveNames(perName=perName, concurrency=concurrency)
    finally:
        gc.unfreeze()
    return ScenarioResult.fromResolutions(name, nodes, names, stored, results), sim
