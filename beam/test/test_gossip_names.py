"""
Beam names on gossip (issue 11): L{beam.names.gossip.NameGossip} over the
real node stack.

  - 50 real nodes on loopback TCP (Noise, yamux, identify, gossipsub): a
    name registered on one is known by all within 5 s (the time measured
    is printed);
  - on the memory grid under a Clock: invalid records and floods are
    dropped and the sender's score falls; an older seq never replaces a
    newer one.
"""

from __future__ import annotations

import random
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from beam.identity.keys import Identity
from beam.identity.multiaddr import Multiaddr
from beam.names.gossip import TOPIC, NameGossip, validateNameRecord
from beam.names.record import NameRecord, makeRecord, signRecord
from beam.p2p.host.node import Node
from beam.p2p.pubsub import GossipSub
from beam.test.memnodes import MemoryGrid

ADDR = Multiaddr.fromString("/ip4/127.0.0.1/tcp/4001")


class Collector:
    """
    An C{onRecord} that keeps the records it got.
    """

    def __init__(self) -> None:
        self.records: list[NameRecord] = []
        self.waiters: list[tuple[int, Deferred[None]]] = []

    def __call__(self, record: NameRecord, data: bytes) -> None:
        self.records.append(record)


def nameGossip(gossip: GossipSub, clock: Any, collector: Collector) -> NameGossip:
    return NameGossip(gossip, lambda data: validateNameRecord(data, clock.seconds()), collector)


class FiftyNodesOnLoopback(TestCase):
    """
    Fifty real nodes on 127.0.0.1.
    """

    timeout = 120

    @inlineCallbacks
    def test_nameReachesAllWithinFiveSeconds(self) -> Any:
        """
        Each node dials its ring neighbour and two random others; once the
        meshes formed, a record published on node 0 reaches all 49 others
        within 5 s.
        """
        rng = random.Random(11)
        count = 50
        nodes: list[Node] = []
        gossips: list[GossipSub] = []
        collectors: list[Collector] = []
        names: list[NameGossip] = []
        for i in range(count):
            identity = Identity.generate()
            node = Node(reactor, identity, ["/ip4/127.0.0.1/tcp/0"])
            gossip = GossipSub(reactor, node, identity, random=random.Random(i))
            gossip.setServiceParent(node)
            nodes.append(node)
            gossips.append(gossip)
        yield gatherResults([n.startService() for n in nodes])
        for n in nodes:
            self.addCleanup(n.stopService)
        for g in gossips:
            c = Collector()
            collectors.append(c)
            names.append(nameGossip(g, reactor, c))
        dials = []
        for i, node in enumerate(nodes):
            targets = {(i + 1) % count} | set(rng.sample(range(count), 2))
            targets.discard(i)
            for j in targets:
                dials.append(node.connect(nodes[j].listenAddrs[0].withPeerID(nodes[j].peerID)))
        yield gatherResults(dials)
        # Identify, outbound streams, subscriptions, then a heartbeat or two.
        yield deferLater(reactor, 2.5, lambda: None)
        meshes = [sum(g.router.status()["mesh"].values()) for g in gossips]
        self.assertTrue(all(m >= 1 for m in meshes), meshes)

        owner = Identity.generate()
        record = makeRecord(owner, "fifty-nodes", [ADDR], now=time.time())
        started = time.monotonic()
        names[0].publish(signRecord(owner, record))
        deadline = started + 5.0
        while time.monotonic() < deadline:
            if all(c.records for c in collectors[1:]):
                break
            yield deferLater(reactor, 0.01, lambda: None)
        elapsed = time.monotonic() - started
        missing = sum(1 for c in collectors[1:] if not c.records)
        print(f"\n50-node gossip propagation: {elapsed * 1000:.0f} ms, {missing} missing")
        self.assertEqual(missing, 0, f"{missing} nodes did not get the record within 5 s")
        for c in collectors[1:]:
            self.assertEqual([r.name for r in c.records], ["fifty-nodes"])


class NamesOnGrid(SynchronousTestCase):
    """
    The rules of NameGossip on the memory grid.
    """

    def setUp(self) -> None:
        self.grid = MemoryGrid(self)
        self.peers = []
        for i in range(6):
            identity = Identity.generate()
            node = self.grid.node(identity=identity)
            gossip = GossipSub(self.grid.clock, node, identity, random=random.Random(i))
            gossip.startService()
            self.addCleanup(self._stop, gossip)
            collector = Collector()
            self.peers.append((node, gossip, nameGossip(gossip, self.grid.clock, collector), collector))
        # A full mesh of six: everyone is everyone's neighbour.
        for i, (node, *_) in enumerate(self.peers):
            for other, *_ in self.peers[i + 1:]:
                self.grid.result(node.connect(self.grid.addr(other)))
        self.grid.advance(2.0)

    @staticmethod
    def _stop(gossip: GossipSub) -> None:
        if gossip.running:
            gossip.stopService()

    def test_invalidDroppedAndPenalised(self) -> None:
        """
        A record that fails validation (a forged signature) is rejected by
        every receiver, reaches no onRecord, and lowers the sender's score.
        """
        sender, senderGossip, _, _ = self.peers[0]
        owner = Identity.generate()
        good = signRecord(owner, makeRecord(owner, "forged", [ADDR], now=self.grid.clock.seconds()))
        forged = good[:-3] + bytes(b ^ 0xFF for b in good[-3:])
        senderGossip.publish(TOPIC, forged)
        self.grid.advance(0.1)
        for node, gossip, ng, collector in self.peers[1:]:
            self.assertEqual(collector.records, [])
            self.assertEqual(ng.counters["rejected"], 1)
            self.assertLess(gossip.score(sender.peerID), 0)

    def test_floodDroppedAndPenalised(self) -> None:
        """
        A node publishing hundreds of valid records at once gets most of
        them dropped (gossipsub's flood limit, then NameGossip's per-author
        rate) and its score falls.
        """
        sender, senderGossip, _, _ = self.peers[0]
        now = self.grid.clock.seconds()
        for i in range(300):
            owner = Identity.generate()
            senderGossip.publish(TOPIC, signRecord(owner, makeRecord(owner, f"flood-{i}", [ADDR], now=now)))
        self.grid.advance(0.1)
        for node, gossip, ng, collector in self.peers[1:]:
            self.assertLessEqual(len(collector.records), 10)
            self.assertGreater(gossip.router.counters["flooded"], 0)
            self.assertLess(gossip.score(sender.peerID), 0)

    def test_olderSeqNeverReplacesNewer(self) -> None:
        """
        Once seq 2 is known, seq 1 from the same owner is ignored
        everywhere (and onRecord never sees it), whatever the order.
        """
        owner = Identity.generate()
        now = self.grid.clock.seconds()
        newer = signRecord(owner, makeRecord(owner, "ordered", [ADDR], now=now, seq=2))
        older = signRecord(owner, makeRecord(owner, "ordered", [ADDR], now=now, seq=1))
        self.peers[0][2].publish(newer)
        self.grid.advance(0.1)
        self.peers[1][2].publish(older)
        self.grid.advance(0.1)
        for node, gossip, ng, collector in self.peers:
            cached = ng.cached("ordered")
            self.assertIsNotNone(cached)
            assert cached is not None
            self.assertEqual(cached[0].seq, 2)
            self.assertNotIn(1, [r.seq for r in collector.records])
