"""
Small fakes for the DHT unit tests: fast peer IDs, a toy record validator,
and an in-memory L{IKadNetwork} on a L{Clock} (deliberately tiny; the real
simulator is L{beam.testing.dhtsim}).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from zope.interface import implementer

from beam.dht.kad import IKadNetwork, KademliaNode
from beam.dht.messages import Message, PeerInfo, decodeMessage, encodeMessage
from beam.dht.routing import peerKadID, xorDistance
from beam.dht.store import IValidator, RecordStore
from beam.errors import BeamError, InvalidDHTMessage, InvalidRecord
from beam.identity.keys import PeerID
from beam.identity.multiaddr import Multiaddr


def fakePeer(n: int | str) -> PeerID:
    """
    A valid SHA-256-multihash peer ID, much cheaper than generating keys.
    """
    return PeerID(bytes([0x12, 32]) + hashlib.sha256(f"peer-{n}".encode()).digest())


def fakeInfo(n: int | str) -> PeerInfo:
    port = (hash(str(n)) % 60000) + 1024
    return PeerInfo(fakePeer(n), (Multiaddr(f"/ip4/10.0.0.1/tcp/{port}"),))


def bruteClosest(target: bytes, peers: Sequence[PeerID], n: int) -> list[PeerID]:
    return sorted(peers, key=lambda p: xorDistance(peerKadID(p), target))[:n]


@implementer(IValidator)
class ToyValidator:
    """
    Values are C{b"owner:seq:expires"}: one owner per key keeps it while
    unexpired, the highest seq wins.
    """

    @staticmethod
    def parse(value: bytes) -> tuple[bytes, int, float]:
        try:
            owner, seq, expires = value.split(b":")
            return owner, int(seq), float(expires)
        except ValueError:
            raise InvalidRecord("not a toy record") from None

    def validate(self, key: bytes, value: bytes, now: float) -> None:
        _, _, expires = self.parse(value)
        if expires <= now:
            raise InvalidRecord("expired")

    def select(self, key: bytes, values: Sequence[bytes]) -> int:
        seqs = [self.parse(v)[1] for v in values]
        return seqs.index(max(seqs))

    def mayReplace(self, key: bytes, old: bytes, new: bytes) -> bool:
        o, n = self.parse(old), self.parse(new)
        return o[0] == n[0] and n[1] > o[1]

    def expires(self, value: bytes) -> float:
        return self.parse(value)[2]


def toyValue(owner: str, seq: int, expires: float) -> bytes:
    return f"{owner}:{seq}:{expires}".encode()


class FakeNetwork:
    """
    Nodes keyed by peer ID; a request reaches the target's C{handleRequest}
    after C{latency} (both ways), through the real codec.  Dead peers never
    answer; slow peers answer after C{slow[peer]} seconds; liars answer with
    unknown peers near the key (C{"fake"}) or an undecodable message
    (C{"garbage"}).
    """

    def __init__(self, clock: Clock, latency: float = 0.01) -> None:
        self.clock = clock
        self.latency = latency
        self.nodes: dict[PeerID, KademliaNode] = {}
        self.dead: set[PeerID] = set()
        self.slow: dict[PeerID, float] = {}
        self.liars: dict[PeerID, str] = {}
        self.sent: list[tuple[PeerID, PeerID, Message]] = []
        self.rng = random.Random(7)
        self._fakes = 0

    def endpoint(self, source: PeerInfo) -> _Endpoint:
        return _Endpoint(self, source)

    def addNode(self, n: int | str, **kw: object) -> KademliaNode:
        info = fakeInfo(n)
        store = RecordStore(self.clock, {"toy": ToyValidator()}, localPeer=info.peer)
        kw.setdefault("random", random.Random(str(n)))
        node = KademliaNode(self.clock, info, self.endpoint(info), store, **kw)  # type: ignore[arg-type]
        self.nodes[info.peer] = node
        return node

    def _deliver(self, source: PeerInfo, peer: PeerInfo, message: Message, d: Deferred[Message]) -> None:
        target = peer.peer
        if target in self.dead or target not in self.nodes:
            return
        lie = self.liars.get(target)
        if lie == "garbage":
            d.errback(InvalidDHTMessage("undecodable"))
            return
        if lie == "fake":
            self._fakes += 1
            fakes = tuple(fakeInfo(f"fake-{self._fakes}-{i}") for i in range(20))
            self._answer(d, Message(message.type, message.key, closerPeers=fakes), 0.0)
            return
        node = self.nodes[target]
        try:
            response = node.handleRequest(source, decodeMessage(encodeMessage(message)), senderIsServer=True)
        except BeamError as e:
            d.errback(e)
            return
        self._answer(d, decodeMessage(encodeMessage(response)), self.slow.get(target, 0.0))

    def _answer(self, d: Deferred[Message], response: Message, extra: float) -> None:
        self.clock.callLater(self.latency + extra, lambda: d.called or d.callback(response))


@implementer(IKadNetwork)
class _Endpoint:
    def __init__(self, net: FakeNetwork, source: PeerInfo) -> None:
        self.net = net
        self.source = source

    def request(self, peer: PeerInfo, message: Message) -> Deferred[Message]:
        self.net.sent.append((self.source.peer, peer.peer, message))
        d: Deferred[Message] = Deferred()
        self.net.clock.callLater(self.net.latency, self.net._deliver, self.source, peer, message, d)
        return d


def fillTables(net: FakeNetwork, seed: int = 1) -> None:
    """
    Every node meets every other in a random order: k-buckets keep the
    first k of each bucket, as in a network that grew over time.
    """
    rng = random.Random(seed)
    nodes = list(net.nodes.values())
    for node in nodes:
        others = [n.localInfo() for n in nodes if n is not node]
        rng.shuffle(others)
        for info in others:
            node.routingTable.add(info, 0.0)
