"""
Tests for L{beam.dht.lookup}: the iterative lookup, driven by scripted
peers on a L{Clock}.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from beam.dht.lookup import Lookup
from beam.dht.messages import Message, MessageType, PeerInfo
from beam.dht.routing import RoutingTable, kadID, peerKadID
from beam.errors import InvalidDHTMessage
from beam.identity.keys import PeerID
from beam.test.dhtutil import bruteClosest, fakeInfo, fakePeer

LOCAL = fakePeer("local")


class Scripted:
    """
    Peers that each know a routing table of the others and answer after
    a per-peer delay, or never, or with something else.
    """

    def __init__(self, clock: Clock, n: int, k: int = 20) -> None:
        self.clock = clock
        self.infos = [fakeInfo(i) for i in range(n)]
        self.tables: dict[PeerID, RoutingTable] = {}
        for info in self.infos:
            t = RoutingTable(info.peer, k=k)
            for other in self.infos:
                t.add(other, 0)
            self.tables[info.peer] = t
        self.delay: dict[PeerID, float] = {}
        self.dead: set[PeerID] = set()
        self.answers: dict[PeerID, object] = {}
        self.log: list[tuple[float, PeerID]] = []
        self.cancelled: list[PeerID] = []

    def query(self, target: bytes):
        def q(info: PeerInfo) -> Deferred[Message]:
            self.log.append((self.clock.seconds(), info.peer))
            d: Deferred[Message] = Deferred(lambda _: self.cancelled.append(info.peer))
            if info.peer in self.dead:
                return d
            answer = self.answers.get(info.peer)
            if answer is None:
                closer = self.tables[info.peer].closest(target, 20) if info.peer in self.tables else []
                answer = Message(MessageType.FIND_NODE, closerPeers=tuple(closer))
            # A cancelled request is abandoned, as a real network would.
            if isinstance(answer, Exception):
                fire = lambda: d.called or d.errback(answer)
            else:
                fire = lambda: d.called or d.callback(answer)
            self.clock.callLater(self.delay.get(info.peer, 0.1), fire)
            return d

        return q

    def queried(self) -> list[PeerID]:
        return [p for _, p in self.log]


class LookupTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()

    def runLookup(self, lookup: Lookup):
        d = lookup.start()
        self.clock.pump([0.05] * 400)
        return self.successResultOf(d)

    def test_convergesToTrueClosest(self) -> None:
        """
        Starting from a few far seeds, the lookup finds exactly the k peers
        nearest the target, each queried once, in a few rounds.
        """
        net = Scripted(self.clock, 150, k=8)
        target = kadID(b"target")
        truth = bruteClosest(target, [i.peer for i in net.infos], 8)
        seeds = [i for i in net.infos if i.peer not in truth][:3]
        result = self.runLookup(Lookup(target, seeds, net.query(target), self.clock, k=8))
        self.assertEqual([p.peer for p in result.closest], truth)
        self.assertEqual(len(net.queried()), len(set(net.queried())))
        self.assertEqual(result.queries, len(net.queried()))
        self.assertEqual(result.failures, 0)
        self.assertGreaterEqual(result.rounds, 2)
        self.assertTrue(set(result.closest) <= set(net.infos))
        self.assertTrue(set(result.responders) <= set(net.queried()))
        self.assertEqual(len(net.cancelled), len(net.queried()) - len(result.responders))
        self.assertGreaterEqual(result.elapsed, 0.1 * result.rounds)
        self.assertLess(result.elapsed, 2.0)

    def test_slowPeerDoesNotStall(self) -> None:
        """
        With alpha=1, a peer slower than slowTimeout makes the lookup start
        the next query at slowTimeout, and its late answer still counts.
        """
        net = Scripted(self.clock, 30, k=3)
        target = kadID(b"t")
        truth = bruteClosest(target, [i.peer for i in net.infos], 3)
        first = next(i for i in net.infos if i.peer == truth[0])
        seeds = [first] + [i for i in net.infos if i.peer not in truth][:3]
        net.delay[first.peer] = 3.0
        lookup = Lookup(target, seeds, net.query(target), self.clock, k=3, alpha=1, slowTimeout=1.0, timeout=5.0)
        result = self.runLookup(lookup)
        self.assertEqual(net.log[0], (0.0, first.peer))
        self.assertAlmostEqual(net.log[1][0], 1.0)
        self.assertIn(first.peer, result.responders)
        self.assertEqual(result.failures, 0)
        self.assertEqual([p.peer for p in result.closest], truth)
        self.assertGreaterEqual(result.elapsed, 3.0)
        self.assertLess(result.elapsed, 3.1)

    def test_deadPeerTimesOut(self) -> None:
        """
        An unanswered query is cancelled at the timeout and reported as a
        failure; the lookup still converges without it.
        """
        net = Scripted(self.clock, 40, k=5)
        target = kadID(b"t")
        truth = bruteClosest(target, [i.peer for i in net.infos], 6)
        net.dead.add(truth[0])
        failed: list[PeerID] = []
        lookup = Lookup(target, net.infos[:5], net.query(target), self.clock, k=5,
                        onFailure=lambda i: failed.append(i.peer))
        result = self.runLookup(lookup)
        self.assertEqual(failed, [truth[0]])
        self.assertEqual(net.cancelled, [truth[0]])
        self.assertEqual(result.failures, 1)
        self.assertEqual([p.peer for p in result.closest], truth[1:])
        self.assertGreaterEqual(result.elapsed, 5.0)

    def test_garbageIsFailure(self) -> None:
        """
        An errback (e.g. undecodable bytes) or an answer that is not a
        Message is a failure of that peer; onSuccess hears only real answers.
        """
        net = Scripted(self.clock, 40, k=5)
        target = kadID(b"t")
        truth = bruteClosest(target, [i.peer for i in net.infos], 7)
        net.answers[truth[0]] = InvalidDHTMessage("junk")
        net.answers[truth[1]] = "not a message"
        ok: list[PeerID] = []
        failed: list[PeerID] = []
        lookup = Lookup(target, net.infos[:5], net.query(target), self.clock, k=5,
                        onSuccess=lambda i: ok.append(i.peer), onFailure=lambda i: failed.append(i.peer))
        result = self.runLookup(lookup)
        self.assertEqual(set(failed), set(truth[:2]))
        self.assertEqual([p.peer for p in result.closest], truth[2:])
        self.assertEqual(ok, list(result.responders))

    def test_liarsFakePeersDoNotConverge(self) -> None:
        """
        A peer naming nonexistent peers nearer the target costs timeouts
        but the lookup still ends with the true nearest live peers.
        """
        net = Scripted(self.clock, 60, k=5)
        target = kadID(b"t")
        truth = bruteClosest(target, [i.peer for i in net.infos], 5)
        fakes = [fakeInfo(f"ghost{i}") for i in range(300)]
        near = bruteClosest(target, [f.peer for f in fakes], 10)
        liar = next(i for i in net.infos if i.peer not in truth)
        net.answers[liar.peer] = Message(MessageType.FIND_NODE, closerPeers=tuple(PeerInfo(p) for p in near))
        for p in near:
            net.dead.add(p)
        result = self.runLookup(Lookup(target, [liar] + net.infos[10:13], net.query(target), self.clock, k=5))
        self.assertEqual([p.peer for p in result.closest if p.peer != liar.peer][:5], truth)

    def test_onResponseStopsEarly(self) -> None:
        """
        onResponse returning True ends the lookup at once and cancels the
        queries in flight; raising makes that answer a failure.
        """
        net = Scripted(self.clock, 40, k=5)
        target = kadID(b"t")
        t = int.from_bytes(target, "big")
        seeds = sorted(net.infos[:6], key=lambda i: int.from_bytes(peerKadID(i.peer), "big") ^ t)
        for s, delay in zip(seeds, [0.1, 0.2, 0.5, 0.5, 0.5, 0.5]):
            net.delay[s.peer] = delay
        calls: list[PeerID] = []

        def hook(info: PeerInfo, msg: Message) -> bool:
            calls.append(info.peer)
            if len(calls) == 1:
                raise InvalidDHTMessage("bad record")
            return True

        lookup = Lookup(target, seeds, net.query(target), self.clock, k=5, alpha=3, onResponse=hook)
        result = self.runLookup(lookup)
        self.assertTrue(result.stoppedEarly)
        self.assertEqual(calls, [seeds[0].peer, seeds[1].peer])
        self.assertEqual(result.failures, 1)
        self.assertEqual(result.responders, (seeds[1].peer,))
        self.assertEqual(set(net.cancelled), {seeds[2].peer, seeds[3].peer})
        self.assertEqual(net.queried(), [s.peer for s in seeds[:4]])

    def test_localAndDuplicatesSkipped(self) -> None:
        """
        We never query ourselves, even when seeded with or told about us,
        and duplicate seeds are queried once.
        """
        net = Scripted(self.clock, 20, k=20)
        me = PeerInfo(LOCAL)
        for t in net.tables.values():
            t.add(me, 0)
        target = peerKadID(LOCAL)
        seeds = [me, net.infos[0], net.infos[0], net.infos[1]]
        result = self.runLookup(Lookup(target, seeds, net.query(target), self.clock, localPeer=LOCAL))
        self.assertNotIn(LOCAL, net.queried())
        self.assertEqual(len(net.queried()), len(set(net.queried())))
        self.assertEqual(len(result.closest), 20)

    def test_noSeeds(self) -> None:
        """
        Without seeds the lookup ends at once with nothing.
        """
        lookup = Lookup(b"\0" * 32, [], lambda i: succeed(Message(4)), self.clock)
        result = self.successResultOf(lookup.start())
        self.assertEqual((result.closest, result.queries, result.rounds), ((), 0, 0))

    def test_cancel(self) -> None:
        """
        Cancelling the lookup cancels the queries in flight and errbacks it
        with CancelledError; late answers are ignored.
        """
        net = Scripted(self.clock, 10)
        target = kadID(b"t")
        lookup = Lookup(target, net.infos[:3], net.query(target), self.clock)
        d = lookup.start()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(len(net.cancelled), 3)
        self.clock.pump([1] * 10)
        self.assertEqual(len(net.log), 3)

    def test_disjointPaths(self) -> None:
        """
        With d paths, no peer is queried twice, each seed starts one path,
        the merged result is the true nearest, and a liar misleads only its
        own path.
        """
        net = Scripted(self.clock, 120, k=6)
        target = kadID(b"t")
        truth = bruteClosest(target, [i.peer for i in net.infos], 6)
        others = [i for i in net.infos if i.peer not in truth]
        liar = others[0]
        net.answers[liar.peer] = Message(MessageType.FIND_NODE, closerPeers=())
        seeds = [liar, others[1], others[2]]
        result = self.runLookup(Lookup(target, seeds, net.query(target), self.clock, k=6, paths=3))
        self.assertEqual(len(net.queried()), len(set(net.queried())))
        self.assertEqual([p.peer for p in result.closest], truth)
        self.assertEqual(set(net.queried()[:3]), {s.peer for s in seeds})

    def test_synchronousAnswers(self) -> None:
        """
        A query function that answers synchronously works (no recursion
        trouble) and gives the same result.
        """
        net = Scripted(self.clock, 80, k=6)
        target = kadID(b"sync")
        truth = bruteClosest(target, [i.peer for i in net.infos], 6)

        def q(info: PeerInfo) -> Deferred[Message]:
            return succeed(Message(4, closerPeers=tuple(net.tables[info.peer].closest(target, 6))))

        result = self.successResultOf(Lookup(target, net.infos[:2], q, self.clock, k=6).start())
        self.assertEqual([p.peer for p in result.closest], truth)
