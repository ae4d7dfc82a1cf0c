"""
Tests for L{beam.dht.kad}: request handling, routing-table upkeep, and
lookups, puts and gets among in-memory nodes on a L{Clock}.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from beam.dht.kad import IKadNetwork, KademliaNode
from beam.dht.messages import Message, MessageType, PeerInfo, Record
from beam.dht.routing import kadID, peerKadID
from beam.errors import (
    InvalidDHTMessage,
    InvalidRecord,
    NodeStopped,
    NotFound,
    RecordRefused,
    UnexpectedMessage,
)
from beam.test.dhtutil import FakeNetwork, bruteClosest, fakeInfo, fillTables, toyValue

SENDER = fakeInfo("sender")


def settle(clock: Clock, seconds: float = 60.0) -> None:
    clock.pump([0.05] * int(seconds / 0.05))


class HandleRequestTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.net = FakeNetwork(self.clock)
        self.node = self.net.addNode("me")
        self.others = [fakeInfo(i) for i in range(40)]
        for info in self.others + [SENDER]:
            self.node.routingTable.add(info, 0)

    def test_endpointProvidesInterface(self) -> None:
        """
        The fake network endpoint is an IKadNetwork (what the node needs).
        """
        self.assertTrue(verifyObject(IKadNetwork, self.net.endpoint(SENDER)))

    def test_ping(self) -> None:
        """
        PING is answered with PING.
        """
        self.assertEqual(self.node.handleRequest(SENDER, Message(MessageType.PING)).type, MessageType.PING)

    def test_findNode(self) -> None:
        """
        FIND_NODE returns the k known peers nearest the key, nearest first,
        never the requester.
        """
        key = b"some key"
        out = self.node.handleRequest(SENDER, Message(MessageType.FIND_NODE, key))
        self.assertEqual(out.type, MessageType.FIND_NODE)
        self.assertEqual(out.key, key)
        known = [i.peer for i in self.node.routingTable.peers() if i.peer != SENDER.peer]
        self.assertEqual([p.peer for p in out.closerPeers], bruteClosest(kadID(key), known, 20))
        self.assertEqual(out.closerPeers[0].addrs, next(i for i in self.others if i.peer == out.closerPeers[0].peer).addrs)

    def test_findNodeSelf(self) -> None:
        """
        FIND_NODE for our own ID returns just us, with our addresses.
        """
        out = self.node.handleRequest(SENDER, Message(MessageType.FIND_NODE, self.node.peerID.bytes))
        self.assertEqual(out.closerPeers, (self.node.localInfo(),))

    def test_getValue(self) -> None:
        """
        GET_VALUE returns the held record and closer peers, or only closer
        peers.
        """
        v = toyValue("a", 1, 5000)
        self.node.store.put(b"/toy/x", v)
        out = self.node.handleRequest(SENDER, Message(MessageType.GET_VALUE, b"/toy/x"))
        self.assertEqual(out.record, Record(b"/toy/x", v))
        self.assertEqual(len(out.closerPeers), 20)
        out = self.node.handleRequest(SENDER, Message(MessageType.GET_VALUE, b"/toy/y"))
        self.assertIsNone(out.record)
        self.assertNotIn(SENDER.peer, [p.peer for p in out.closerPeers])

    def test_putValue(self) -> None:
        """
        PUT_VALUE stores a valid record on behalf of the sender and echoes it.
        """
        rec = Record(b"/toy/x", toyValue("a", 1, 5000))
        out = self.node.handleRequest(SENDER, Message(MessageType.PUT_VALUE, b"/toy/x", rec))
        self.assertEqual(out, Message(MessageType.PUT_VALUE, b"/toy/x", rec))
        self.assertEqual(self.node.store.record(b"/toy/x").origin, SENDER.peer)  # type: ignore[union-attr]

    def test_putValueChargesSenderNetwork(self) -> None:
        """
        A PUT_VALUE is charged to the sender's network: the record counts
        against it, and past the network's quota new keys from any peer on
        it are refused while another network still stores.
        """
        self.node.store.maxPerNetwork = 2
        net1, net2 = "ip4:203.0.113.0/24", "ip4:198.51.100.0/24"
        for i in range(2):
            rec = Record(b"/toy/%d" % i, toyValue(f"s{i}", 1, 5000))
            self.node.handleRequest(fakeInfo(f"s{i}"), Message(MessageType.PUT_VALUE, rec.key, rec),
                                    senderNetwork=net1)
        self.assertEqual(self.node.store.record(b"/toy/0").network, net1)  # type: ignore[union-attr]
        rec = Record(b"/toy/2", toyValue("s2", 1, 5000))
        with self.assertRaises(RecordRefused):
            self.node.handleRequest(fakeInfo("s2"), Message(MessageType.PUT_VALUE, rec.key, rec),
                                    senderNetwork=net1)
        out = self.node.handleRequest(SENDER, Message(MessageType.PUT_VALUE, rec.key, rec), senderNetwork=net2)
        self.assertEqual(out.record, rec)
        self.assertEqual(self.node.store.heldFrom(net1), 2)

    def test_malformed(self) -> None:
        """
        Requests lacking what their type needs, with bad records, of
        unsupported types, or over quota raise our errors.
        """
        good = Record(b"/toy/x", toyValue("a", 1, 5000))
        cases = [
            (Message(MessageType.FIND_NODE), InvalidDHTMessage),
            (Message(MessageType.GET_VALUE), InvalidDHTMessage),
            (Message(MessageType.PUT_VALUE, b"/toy/x"), InvalidDHTMessage),
            (Message(MessageType.PUT_VALUE, b"/toy/y", good), InvalidDHTMessage),
            (Message(MessageType.PUT_VALUE, b"/toy/x", Record(b"/toy/x", b"junk")), InvalidRecord),
            (Message(MessageType.PUT_VALUE, b"/nope/x", Record(b"/nope/x", b"1")), InvalidRecord),
            (Message(MessageType.PUT_VALUE, b"/toy/x", Record(b"/toy/x", toyValue("a", 1, 10))), InvalidRecord),
            (Message(MessageType.ADD_PROVIDER, b"k"), UnexpectedMessage),
            (Message(99, b"k"), UnexpectedMessage),
        ]
        for msg, err in cases:
            with self.assertRaises(err, msg=repr(msg)):
                self.node.handleRequest(SENDER, msg)
        self.assertEqual(len(self.node.store), 0)
        self.node.store.maxPerPeer = 1
        self.node.handleRequest(SENDER, Message(MessageType.PUT_VALUE, b"/toy/x", good))
        with self.assertRaises(RecordRefused):
            self.node.handleRequest(
                SENDER, Message(MessageType.PUT_VALUE, b"/toy/z", Record(b"/toy/z", toyValue("a", 1, 5000)))
            )

    def test_getProviders(self) -> None:
        """
        GET_PROVIDERS is answered with closer peers only.
        """
        out = self.node.handleRequest(SENDER, Message(MessageType.GET_PROVIDERS, b"k"))
        self.assertEqual((out.type, len(out.closerPeers)), (MessageType.GET_PROVIDERS, 20))

    def test_clientModeRefuses(self) -> None:
        """
        A client answers nothing; "auto" mode serves once reachable.
        """
        client = self.net.addNode("client", mode="client")
        self.assertFalse(client.isServer)
        with self.assertRaises(UnexpectedMessage):
            client.handleRequest(SENDER, Message(MessageType.PING))
        auto = self.net.addNode("auto", mode="auto")
        self.assertFalse(auto.isServer)
        auto.setReachable(True)
        self.assertTrue(auto.isServer)
        self.assertEqual(auto.handleRequest(SENDER, Message(MessageType.PING)).type, MessageType.PING)
        with self.assertRaises(ValueError):
            self.net.addNode("bad", mode="peer")

    def test_onlyServersJoinTable(self) -> None:
        """
        A requester joins the routing table only when the adapter says it
        is a server.
        """
        a, b = fakeInfo("client-peer"), fakeInfo("server-peer")
        self.node.handleRequest(a, Message(MessageType.PING))
        self.node.handleRequest(b, Message(MessageType.PING), senderIsServer=True)
        self.assertNotIn(a.peer, self.node.routingTable)
        self.assertIn(b.peer, self.node.routingTable)


class UpkeepTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.net = FakeNetwork(self.clock)
        self.node = self.net.addNode("me", k=2)
        table = self.node.routingTable
        self.bucket0: list[PeerInfo] = []
        n = 0
        while len(self.bucket0) < 3:
            name = f"u{n}"
            n += 1
            if table.bucketIndex(peerKadID(fakeInfo(name).peer)) == 0:
                self.bucket0.append(self.net.addNode(name).localInfo())
        old, mid, _ = self.bucket0
        self.node.addPeer(old)
        self.clock.advance(1)
        self.node.addPeer(mid)
        # Members heard from within recentlySeen are kept without a ping.
        self.clock.advance(self.node.recentlySeen)

    def test_recentlySeenNotPinged(self) -> None:
        """
        A newcomer to a full bucket whose stalest member was heard from
        within C{recentlySeen} seconds sends no ping: the member stays and
        the newcomer waits as a replacement.
        """
        old, mid, new = self.bucket0
        self.node.recentlySeen = 60.0
        self.node.addPeer(old)  # heard from just now
        self.node.addPeer(mid)
        self.node.addPeer(new)
        self.assertEqual([m for _, _, m in self.net.sent if m.type == MessageType.PING], [])
        self.assertIn(old.peer, self.node.routingTable)
        self.assertNotIn(new.peer, self.node.routingTable)

    def test_inboundPingsRateLimited(self) -> None:
        """
        Requesters that land in a full bucket trigger at most one ping per
        bucket per C{inboundPingInterval}, so pings cannot cascade.
        """
        old, mid, new = self.bucket0
        ping = Message(MessageType.PING)
        self.node.handleRequest(new, ping, senderIsServer=True)
        self.node.handleRequest(new, ping, senderIsServer=True)
        pings = [m for _, _, m in self.net.sent if m.type == MessageType.PING]
        self.assertEqual(len(pings), 1)
        settle(self.clock, self.node.inboundPingInterval + 1)
        self.node.routingTable.remove(new.peer)
        self.node.handleRequest(new, ping, senderIsServer=True)
        pings = [m for _, _, m in self.net.sent if m.type == MessageType.PING]
        self.assertEqual(len(pings), 2)

    def test_pingBeforeEvictDead(self) -> None:
        """
        A newcomer to a full bucket makes us ping the stalest member; when
        it does not answer, the newcomer takes its place.
        """
        old, _, new = self.bucket0
        self.net.dead.add(old.peer)
        self.node.addPeer(new)
        self.assertEqual(self.net.sent[-1][1:], (old.peer, Message(MessageType.PING)))
        settle(self.clock, 10)
        self.assertNotIn(old.peer, self.node.routingTable)
        self.assertIn(new.peer, self.node.routingTable)

    def test_pingBeforeEvictAlive(self) -> None:
        """
        When the stalest member answers the ping it stays, now freshest, and
        the newcomer waits as a replacement.
        """
        old, mid, new = self.bucket0
        self.node.addPeer(new)
        self.node.addPeer(new)
        self.assertEqual(sum(1 for _, _, m in self.net.sent if m.type == MessageType.PING), 1)
        settle(self.clock, 10)
        self.assertIn(old.peer, self.node.routingTable)
        self.assertNotIn(new.peer, self.node.routingTable)
        self.assertEqual([e.info.peer for e in self.node.routingTable.buckets()[0].entries], [mid.peer, old.peer])

    def test_failuresRemove(self) -> None:
        """
        Peers reported failing twice in a row are dropped.
        """
        old = self.bucket0[0]
        self.node.peerFailed(old.peer)
        self.assertIn(old.peer, self.node.routingTable)
        self.node.peerFailed(old.peer)
        self.assertNotIn(old.peer, self.node.routingTable)


class NetworkTests(SynchronousTestCase):
    """
    Many nodes over the fake network.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.net = FakeNetwork(self.clock)

    def build(self, n: int, **kw: object) -> list[KademliaNode]:
        nodes = [self.net.addNode(i, **kw) for i in range(n)]
        fillTables(self.net)
        return nodes

    def test_lookupSurvivesDeadSlowAndLiars(self) -> None:
        """
        On 200 nodes with 30% dead, 10% lying (half fake peers, half
        garbage) and 10% slow, lookups from several nodes find the 10
        nearest live nodes and most of the 20 nearest, and report their
        cost.  (Not all 20: every routing table still lists the dead, so
        nobody names the live nodes ranked beyond ~20 overall; in a running
        network failures evict the dead, which the asker's table shows.)
        """
        nodes = self.build(200)
        rng = self.net.rng
        peers = list(self.net.nodes)
        rng.shuffle(peers)
        dead, liars, slow = peers[:60], peers[60:80], peers[80:100]
        self.net.dead.update(dead)
        for i, p in enumerate(liars):
            self.net.liars[p] = "fake" if i % 2 else "garbage"
        for p in slow:
            self.net.slow[p] = 2.5
        # Liars answering with fake peers are live servers as far as anyone
        # can tell, so they may rightly be among the nearest.
        answering = [p for p in peers[60:] if self.net.liars.get(p) != "garbage"]
        askers = [n for n in nodes if n.peerID in peers[100:]][:10]
        deadBefore = {a.peerID: sum(1 for p in dead if p in a.routingTable) for a in askers}
        for i, asker in enumerate(askers):
            key = b"/toy/key-%d" % i
            target = kadID(key)
            d = asker.closestPeers(key)
            settle(self.clock, 120)
            result = self.successResultOf(d)
            got = [p.peer for p in result.closest]
            truth = bruteClosest(target, [p for p in answering if p != asker.peerID], 20)
            self.assertGreaterEqual(len(set(got) & set(truth)), 15, f"lookup {i}")
            self.assertTrue(set(truth[:10]) <= set(got), f"lookup {i}")
            self.assertTrue(set(got) <= set(answering))
            self.assertEqual(got, bruteClosest(target, got, 20))
            self.assertGreater(result.failures, 0)
            self.assertGreaterEqual(result.rounds, 1)
            self.assertLess(result.elapsed, 60)
            self.assertGreaterEqual(result.queries, len(result.responders) + result.failures)
        # Asking again, the dead fail a second time and leave the table.
        d = askers[0].closestPeers(b"/toy/key-0")
        settle(self.clock, 120)
        again = self.successResultOf(d)
        deadLeft = [p for p in dead if p in askers[0].routingTable]
        self.assertLess(len(deadLeft), deadBefore[askers[0].peerID], "failing peers are evicted")
        self.assertLessEqual(again.elapsed, 120)

    def test_disjointPathsSurviveLiars(self) -> None:
        """
        With 3 disjoint paths the same network converges too.
        """
        nodes = self.build(120, paths=3)
        peers = list(self.net.nodes)
        self.net.rng.shuffle(peers)
        self.net.dead.update(peers[:36])
        for p in peers[36:48]:
            self.net.liars[p] = "fake"
        honest = peers[48:]
        asker = next(n for n in nodes if n.peerID == honest[0])
        d = asker.closestPeers(b"/toy/disjoint")
        settle(self.clock, 120)
        result = self.successResultOf(d)
        got = {p.peer for p in result.closest}
        truth = bruteClosest(kadID(b"/toy/disjoint"), honest[1:], 20)
        self.assertGreaterEqual(len(got & set(truth)), 18)

    def test_putGetRoundTrip(self) -> None:
        """
        Among 50 nodes, a put lands on the k nearest and any node gets it
        back; a newer version from the owner replaces it everywhere.
        """
        nodes = self.build(50)
        key = b"/toy/name"
        v1 = toyValue("owner", 1, 5000)
        d = nodes[0].putValue(key, v1)
        settle(self.clock, 30)
        self.assertGreaterEqual(self.successResultOf(d), 19)
        holders = [n for n in nodes if n.store.get(key) == v1]
        truth = bruteClosest(kadID(key), [n.peerID for n in nodes], 20)
        self.assertTrue(set(truth) <= {n.peerID for n in holders} | {nodes[0].peerID})
        d2 = nodes[30].getValue(key)
        settle(self.clock, 30)
        value, stats = self.successResultOf(d2)
        self.assertEqual(value, v1)
        self.assertTrue(stats.stoppedEarly)
        v2 = toyValue("owner", 2, 5000)
        d = nodes[0].putValue(key, v2)
        settle(self.clock, 30)
        self.successResultOf(d)
        d3 = nodes[40].getValue(key)
        settle(self.clock, 30)
        self.assertEqual(self.successResultOf(d3)[0], v2)

    def test_putValueCountsOnlyOthers(self) -> None:
        """
        putValue reports how many other peers stored the record, never
        counting this node: 0 with no DHT peers at all (the record is kept
        here only), and 2 among three nodes.
        """
        alone = FakeNetwork(self.clock).addNode("alone")
        d = alone.putValue(b"/toy/solo", toyValue("o", 1, 5000))
        settle(self.clock, 5)
        self.assertEqual(self.successResultOf(d), 0)
        self.assertEqual(alone.store.get(b"/toy/solo"), toyValue("o", 1, 5000))
        nodes = self.build(3)
        d = nodes[0].putValue(b"/toy/three", toyValue("o", 1, 5000))
        settle(self.clock, 5)
        self.assertEqual(self.successResultOf(d), 2)
        self.assertEqual(sum(1 for n in nodes if n.store.get(b"/toy/three") is not None), 3)
        # Peers that refuse it are not counted either.
        for n in nodes[1:]:
            n.store.maxRecords = 0
        d = nodes[0].putValue(b"/toy/refused", toyValue("o", 1, 5000))
        settle(self.clock, 5)
        self.assertEqual(self.successResultOf(d), 0)

    def test_getSelectsBestAndFixesStale(self) -> None:
        """
        When peers hold different versions, getValue returns the best by
        the validator and sends it to the peers with older ones; invalid
        records are ignored.
        """
        nodes = self.build(40, quorum=50)
        key = b"/toy/k"
        old, new = toyValue("o", 1, 5000), toyValue("o", 2, 5000)
        near = bruteClosest(kadID(key), [n.peerID for n in nodes[1:]], 6)
        for i, p in enumerate(near):
            self.net.nodes[p].store.put(key, new if i == 3 else old)
        # A record that turned invalid on one node (expired in its own view).
        self.net.nodes[near[4]].store._records[key].value = b"junk"
        d = nodes[0].getValue(key)
        settle(self.clock, 30)
        value, stats = self.successResultOf(d)
        self.assertEqual(value, new)
        self.assertFalse(stats.stoppedEarly)
        for i, p in enumerate(near):
            if i != 4:
                self.assertEqual(self.net.nodes[p].store.get(key), new, i)

    def test_getMissing(self) -> None:
        """
        getValue of an absent key fails with NotFound after converging; of
        a namespace without validator with InvalidRecord.
        """
        nodes = self.build(30)
        d = nodes[0].getValue(b"/toy/absent")
        settle(self.clock, 30)
        self.failureResultOf(d, NotFound)
        self.failureResultOf(nodes[0].getValue(b"/other/x"), InvalidRecord)
        self.failureResultOf(nodes[0].putValue(b"/toy/x", b"junk"), InvalidRecord)

    def test_findPeer(self) -> None:
        """
        findPeer returns a peer's addresses from the table, or via a lookup,
        or fails with NotFound.
        """
        nodes = self.build(60)
        far = nodes[59].localInfo()
        self.assertEqual(self.successResultOf(nodes[0].findPeer(far.peer)).addrs, far.addrs)
        nodes[0].routingTable.remove(far.peer)
        d = nodes[0].findPeer(far.peer)
        settle(self.clock, 30)
        self.assertEqual(self.successResultOf(d), far)
        d = nodes[0].findPeer(fakeInfo("nobody").peer)
        settle(self.clock, 30)
        self.failureResultOf(d, NotFound)

    def test_bootstrapAndRefresh(self) -> None:
        """
        Nodes that join one by one through one seed end up able to find the
        true nearest nodes; bootstrap refreshes stale buckets, and refresh
        later only looks up buckets that went stale again.
        """
        seed = self.net.addNode("seed")
        joined = [seed]
        for i in range(30):
            node = self.net.addNode(f"j{i}")
            d = node.bootstrap([seed.localInfo()])
            settle(self.clock, 5)
            self.successResultOf(d)
            joined.append(node)
        self.assertGreater(seed.routingTable.size, 25)
        asker = joined[-1]
        d = asker.closestPeers(b"/toy/after")
        settle(self.clock, 10)
        got = [p.peer for p in self.successResultOf(d).closest]
        truth = bruteClosest(kadID(b"/toy/after"), [n.peerID for n in joined if n is not asker], 20)
        self.assertEqual(got, truth)
        self.assertEqual(asker.routingTable.staleBuckets(self.clock.seconds(), 600), [])
        d = asker.refresh()
        self.assertEqual(self.successResultOf(d), 0)
        self.clock.advance(601)
        d = asker.refresh()
        settle(self.clock, 10)
        self.assertGreater(self.successResultOf(d), 0)

    def test_republish(self) -> None:
        """
        republish() puts our own records again (only ours).
        """
        nodes = self.build(20)
        nodes[0].store.put(b"/toy/mine", toyValue("me", 1, 5000), nodes[0].peerID)
        nodes[0].store.put(b"/toy/theirs", toyValue("x", 1, 5000), nodes[1].peerID)
        d = nodes[0].republish()
        settle(self.clock, 10)
        self.assertEqual(self.successResultOf(d), 1)
        self.assertEqual(sum(1 for n in nodes if n.store.get(b"/toy/mine")), 20)

    def test_stop(self) -> None:
        """
        stop() cancels lookups in flight; later operations fail with
        NodeStopped.
        """
        nodes = self.build(20)
        self.net.dead.update(n.peerID for n in nodes[1:])
        d: Deferred[object] = nodes[0].closestPeers(b"/toy/x")  # type: ignore[assignment]
        nodes[0].stop()
        self.failureResultOf(d, CancelledError)
        self.failureResultOf(nodes[0].closestPeers(b"/toy/y"), NodeStopped)

    def test_garbageResponseType(self) -> None:
        """
        An answer of the wrong type counts as a failure of that peer.
        """
        nodes = self.build(3)
        target = nodes[1].localInfo()

        class Wrong:
            def request(self, peer: PeerInfo, message: Message) -> Deferred[Message]:
                d: Deferred[Message] = Deferred()
                d.callback(Message(MessageType.PING))
                return d

        nodes[0].network = Wrong()
        nodes[0].routingTable.markFailed(target.peer)
        d = nodes[0].closestPeers(b"/toy/x")
        result = self.successResultOf(d)
        self.assertEqual(result.failures, 2)
        self.assertNotIn(target.peer, nodes[0].routingTable)


class SlowTimeoutTests(SynchronousTestCase):
    """
    A lookup's slow timeout follows the round trips the node measures.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.net = FakeNetwork(self.clock, latency=0.05)
        self.node = self.net.addNode("me", slowTimeout=1.0, minSlowTimeout=0.25)
        self.other = self.net.addNode("you").localInfo()

    def ping(self, times: int) -> None:
        for _ in range(times):
            d = self.node._request(self.other, Message(MessageType.PING))
            self.clock.pump([0.05] * 60)
            self.successResultOf(d)

    def test_untilAnswered(self) -> None:
        """
        Until a request was answered, lookups wait the full slowTimeout; a
        request that times out teaches nothing.
        """
        self.assertEqual(self.node.currentSlowTimeout(), 1.0)
        self.net.dead.add(self.other.peer)
        d = self.node._request(self.other, Message(MessageType.PING))
        self.clock.advance(10)
        self.failureResultOf(d)
        self.assertEqual(self.node.currentSlowTimeout(), 1.0)

    def test_fastPeers(self) -> None:
        """
        The first answer (0.1 s round trip) sets it to three round trips;
        steady 0.1 s round trips bring it down to minSlowTimeout, which new
        lookups use.
        """
        self.ping(1)
        self.assertAlmostEqual(self.node.currentSlowTimeout(), 0.3, places=6)
        self.ping(30)
        self.assertEqual(self.node.currentSlowTimeout(), 0.25)
        lookup = self.node._lookup(b"/toy/x", Message(MessageType.FIND_NODE, b"/toy/x"))
        self.assertEqual(lookup.slowTimeout, 0.25)

    def test_slowPeers(self) -> None:
        """
        Slower round trips raise it (0.6 s ones to a little more), but never
        past slowTimeout.
        """
        self.net.slow[self.other.peer] = 0.5
        self.ping(60)
        # Round trips of 0.6-0.65 s (the clock moves in 0.05 s steps).
        self.assertTrue(0.6 <= self.node.currentSlowTimeout() < 0.8, self.node.currentSlowTimeout())
        self.net.slow[self.other.peer] = 2.0
        self.ping(10)
        self.assertEqual(self.node.currentSlowTimeout(), 1.0)
