"""
Gossipsub v1.1 (L{beam.p2p.pubsub}): the router over whole nodes on the
in-memory transport under a L{Clock} (mesh formation, propagation, dedup,
signatures, scoring, graylisting, flood limits, IHAVE/IWANT, a peer that
never reads), and a hypothesis fuzz of the RPC decoder.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import SynchronousTestCase

from beam.identity.keys import Identity, PeerID
from beam.p2p.pubsub import GOSSIPSUB_V11, GossipSub, GossipSubParams, InvalidRPC, Router
from beam.p2p.pubsub.gossipsub import decodeRPC, defaultMsgId, signedBytes, verifyMessage
from beam.p2p.pubsub.score import ScoreParams, TopicScoreParams
from beam.proto import pubsub_pb2
from beam.test.memnodes import MemoryGrid

TOPIC = "beam-names"


def startGossip(grid: MemoryGrid, testCase: SynchronousTestCase, **kw: Any) -> tuple[Any, GossipSub]:
    """
    A node on C{grid} running gossipsub (stopped with the test).
    """
    identity = Identity.generate()
    node = grid.node(identity=identity)
    gossip = GossipSub(grid.clock, node, identity, random=_Seeded(len(grid.nodes)), **kw)
    gossip.startService()
    testCase.addCleanup(lambda: gossip.stopService() if gossip.running else None)
    return node, gossip


def _Seeded(n: int) -> Any:
    import random

    return random.Random(n)


class Inbox:
    """
    A topic handler recording what it got.
    """

    def __init__(self) -> None:
        self.got: list[tuple[PeerID, bytes]] = []

    def __call__(self, author: PeerID, data: bytes) -> None:
        self.got.append((author, data))


def signedMessage(identity: Identity, data: bytes, seqno: int = 1, topic: str = TOPIC) -> Any:
    msg = pubsub_pb2.Message()
    setattr(msg, "from", identity.peerID.bytes)
    msg.data = data
    msg.seqno = seqno.to_bytes(8, "big")
    msg.topic = topic
    msg.signature = identity.sign(signedBytes(msg))
    msg.key = identity.publicKey.toProtobuf()
    return msg


class RouterHarness:
    """
    A sans-IO L{Router} with fake peers: what it sends is recorded.
    """

    def __init__(self, **kw: Any) -> None:
        import random

        self.identity = Identity.generate()
        self.time = 1000.0
        self.sent: list[tuple[PeerID, Any]] = []
        scoreParams = kw.pop("scoreParams", ScoreParams(topics={TOPIC: TopicScoreParams()}))
        self.router = Router(
            self.identity.peerID, self.identity.sign, self.identity.publicKey.toProtobuf(),
            self._send, lambda: self.time, random=random.Random(7), scoreParams=scoreParams, **kw,
        )

    def _send(self, peer: PeerID, data: bytes) -> None:
        rpc = pubsub_pb2.RPC()
        rpc.ParseFromString(data)
        self.sent.append((peer, rpc))

    def peer(self, subscribe: bool = True) -> PeerID:
        peer = Identity.generate().peerID
        self.router.addPeer(peer, GOSSIPSUB_V11, outbound=True)
        if subscribe:
            rpc = pubsub_pb2.RPC()
            rpc.subscriptions.add(subscribe=True, topicid=TOPIC)
            self.router.handleRPC(peer, rpc.SerializeToString())
        return peer

    def deliver(self, peer: PeerID, *msgs: Any) -> None:
        rpc = pubsub_pb2.RPC()
        for m in msgs:
            rpc.publish.append(m)
        self.router.handleRPC(peer, rpc.SerializeToString())

    def sentTo(self, peer: PeerID) -> list[Any]:
        return [rpc for p, rpc in self.sent if p == peer]

    def tick(self, seconds: float = 1.0) -> None:
        self.time += seconds
        self.router.heartbeat()


class RouterTests(SynchronousTestCase):
    """
    The sans-IO router's rules.
    """

    def test_messageIdIsFromAndSeqno(self) -> None:
        """
        The message ID is C{from || seqno} and a published message carries
        an 8-byte seqno that grows, and verifies under StrictSign.
        """
        h = RouterHarness()
        peer = h.peer()
        h.router.subscribe(TOPIC, Inbox())
        first = h.router.publish(TOPIC, b"one")
        second = h.router.publish(TOPIC, b"two")
        msgs = [m for rpc in h.sentTo(peer) for m in rpc.publish]
        self.assertEqual(len(msgs), 2)
        self.assertEqual(first, h.identity.peerID.bytes + msgs[0].seqno)
        self.assertEqual(defaultMsgId(msgs[1]), second)
        self.assertEqual(len(msgs[0].seqno), 8)
        self.assertGreater(int.from_bytes(msgs[1].seqno, "big"), int.from_bytes(msgs[0].seqno, "big"))
        self.assertEqual(verifyMessage(msgs[0]), h.identity.peerID)

    def test_dedup(self) -> None:
        """
        A message seen once is delivered once, whoever brings it again.
        """
        h = RouterHarness()
        inbox = Inbox()
        h.router.subscribe(TOPIC, inbox)
        a, b = h.peer(), h.peer()
        author = Identity.generate()
        msg = signedMessage(author, b"hello")
        h.deliver(a, msg)
        h.deliver(b, msg)
        h.deliver(a, msg)
        self.assertEqual(inbox.got, [(author.peerID, b"hello")])
        self.assertEqual(h.router.counters["duplicates"], 2)

    def test_forgedRejected(self) -> None:
        """
        A message whose signature, key or from was tampered with is
        dropped and counts against the peer that relayed it (P4).
        """
        h = RouterHarness()
        inbox = Inbox()
        h.router.subscribe(TOPIC, inbox)
        peer = h.peer()
        author, other = Identity.generate(), Identity.generate()
        badSig = signedMessage(author, b"x", 1)
        badSig.data = b"changed"
        badKey = signedMessage(author, b"x", 2)
        badKey.key = other.publicKey.toProtobuf()
        badFrom = signedMessage(author, b"x", 3)
        setattr(badFrom, "from", other.peerID.bytes)
        noSig = signedMessage(author, b"x", 4)
        noSig.ClearField("signature")
        shortSeq = signedMessage(author, b"x", 5)
        shortSeq.seqno = b"\x01"
        relays = []
        for m in (badSig, badKey, badFrom, noSig, shortSeq):
            relay = h.peer()
            h.deliver(relay, m)
            relays.append(relay)
        self.assertEqual(inbox.got, [])
        self.assertEqual(h.router.counters["invalid"], 5)
        for relay in relays:
            self.assertLess(h.router.score(relay), h.router.thresholds.gossipThreshold)
        # Three strikes: graylisted.
        for m in (badSig, badKey, badFrom):
            h.deliver(peer, m)
        self.assertLess(h.router.score(peer), h.router.thresholds.graylistThreshold)

    def test_validatorVerdicts(self) -> None:
        """
        "reject" penalises the relaying peer, "ignore" does not; neither
        delivers nor forwards.
        """
        h = RouterHarness()
        inbox = Inbox()
        h.router.subscribe(TOPIC, inbox)
        h.router.setValidator(TOPIC, lambda author, data: data.decode())
        a, b = h.peer(), h.peer()
        author = Identity.generate()
        h.deliver(a, signedMessage(author, b"ignore", 1))
        self.assertEqual(h.router.score(a), 0.0)
        h.deliver(b, signedMessage(author, b"reject", 2))
        self.assertLess(h.router.score(b), 0.0)
        h.deliver(a, signedMessage(author, b"accept", 3))
        self.assertEqual(inbox.got, [(author.peerID, b"accept")])

    def test_graylistDropsRPCs(self) -> None:
        """
        Below the graylist threshold a peer's RPCs are not even read.
        """
        h = RouterHarness()
        inbox = Inbox()
        h.router.subscribe(TOPIC, inbox)
        h.router.setValidator(TOPIC, lambda author, data: "reject" if data == b"bad" else "accept")
        peer = h.peer()
        author = Identity.generate()
        for i in range(3):
            h.deliver(peer, signedMessage(author, b"bad", i + 1))
        self.assertLess(h.router.score(peer), h.router.thresholds.graylistThreshold)
        h.deliver(peer, signedMessage(author, b"good", 10))
        self.assertEqual(inbox.got, [])
        self.assertEqual(h.router.counters["graylisted"], 1)

    def test_floodLimit(self) -> None:
        """
        More new messages than the token bucket allows are dropped, and
        each costs the peer behaviour penalty.
        """
        params = GossipSubParams(floodRate=1.0, floodBurst=10.0)
        h = RouterHarness(params=params)
        inbox = Inbox()
        h.router.subscribe(TOPIC, inbox)
        peer = h.peer()
        author = Identity.generate()
        h.deliver(peer, *[signedMessage(author, b"m%d" % i, i + 1) for i in range(40)])
        self.assertEqual(len(inbox.got), 10)
        self.assertEqual(h.router.counters["flooded"], 30)
        self.assertLess(h.router.score(peer), h.router.thresholds.publishThreshold)
        h.tick(5.0)
        h.deliver(Identity.generate().peerID, signedMessage(author, b"late", 100))

    def test_meshAndForwarding(self) -> None:
        """
        Subscribing grafts D peers; a message from one mesh peer goes to the
        rest of the mesh, not back to it.
        """
        h = RouterHarness()
        peers = [h.peer() for _ in range(10)]
        h.router.subscribe(TOPIC, Inbox())
        mesh = h.router.mesh[TOPIC]
        self.assertEqual(len(mesh), 6)
        grafted = {p for p, rpc in h.sent if any(g.topicID == TOPIC for g in rpc.control.graft)}
        self.assertEqual(grafted, mesh)
        source = next(iter(mesh))
        h.sent.clear()
        h.deliver(source, signedMessage(Identity.generate(), b"fwd"))
        forwarded = {p for p, rpc in h.sent if rpc.publish}
        self.assertEqual(forwarded, mesh - {source})
        self.assertTrue(set(peers) >= mesh)

    def test_graftDuringBackoffPenalised(self) -> None:
        """
        A peer that GRAFTs right after we pruned it is pruned again and
        pays behaviour penalty; a PRUNE's backoff is honoured.
        """
        h = RouterHarness()
        peer = h.peer()
        h.router.subscribe(TOPIC, Inbox())
        self.assertIn(peer, h.router.mesh[TOPIC])
        rpc = pubsub_pb2.RPC()
        rpc.control.prune.add(topicID=TOPIC, backoff=30)
        h.router.handleRPC(peer, rpc.SerializeToString())
        self.assertNotIn(peer, h.router.mesh[TOPIC])
        h.tick()
        self.assertNotIn(peer, h.router.mesh[TOPIC])  # backoff: not regrafted
        graft = pubsub_pb2.RPC()
        graft.control.graft.add(topicID=TOPIC)
        h.router.handleRPC(peer, graft.SerializeToString())
        self.assertNotIn(peer, h.router.mesh[TOPIC])
        self.assertLess(h.router.score(peer), 0)
        self.assertTrue(any(p.topicID == TOPIC for r in h.sentTo(peer) for p in r.control.prune))

    def test_ihaveIwant(self) -> None:
        """
        Peers outside the mesh get IHAVE for cached messages, answer IWANT
        from the cache at most gossipRetransmission times; we IWANT what a
        peer advertises and have not seen, and a broken promise costs it.
        """
        h = RouterHarness(params=GossipSubParams(D=1, Dlo=1, Dhi=1, Dscore=1, Dout=0))
        peers = [h.peer() for _ in range(4)]
        h.router.subscribe(TOPIC, Inbox())
        msgId = h.router.publish(TOPIC, b"cached")
        h.sent.clear()
        h.tick()
        outside = [p for p in peers if p not in h.router.mesh[TOPIC]]
        for p in outside:
            ids = [i for rpc in h.sentTo(p) for ih in rpc.control.ihave for i in ih.messageIDs]
            self.assertEqual(ids, [msgId])
        asker = outside[0]
        want = pubsub_pb2.RPC()
        want.control.iwant.add(messageIDs=[msgId])
        h.sent.clear()
        for _ in range(5):
            h.router.handleRPC(asker, want.SerializeToString())
        self.assertEqual(sum(len(r.publish) for r in h.sentTo(asker)), 3)
        # They advertise something new: we ask for it, they never send it.
        liar = outside[1]
        have = pubsub_pb2.RPC()
        unknown = Identity.generate().peerID.bytes + b"\x00" * 8
        have.control.ihave.add(topicID=TOPIC, messageIDs=[unknown])
        h.sent.clear()
        h.router.handleRPC(liar, have.SerializeToString())
        self.assertEqual([i for r in h.sentTo(liar) for w in r.control.iwant for i in w.messageIDs], [unknown])
        h.tick(4.0)
        self.assertLess(h.router.score(liar), 0)

    def test_jsMessageIds(self) -> None:
        """
        js-libp2p names a message C{key || seqno}, not C{from || seqno}: an
        IHAVE in that form for a message we have is no news (no IWANT), an
        IWANT in that form is answered, a promise in that form is kept by
        the message's delivery, and once a peer used that form our IHAVEs
        to it use it too (else it would count a broken promise against us
        for every message we advertise).
        """
        from beam.p2p.pubsub.gossipsub import canonicalMsgId, keyMsgId

        h = RouterHarness(params=GossipSubParams(D=0, Dlo=0, Dhi=0, Dscore=0, Dout=0))
        js = h.peer()
        h.router.subscribe(TOPIC, Inbox())
        author = Identity.generate()
        known = signedMessage(author, b"known", seqno=1)
        h.deliver(js, known)
        jsId = keyMsgId(known)
        self.assertEqual(jsId, author.publicKey.toProtobuf() + known.seqno)
        self.assertEqual(canonicalMsgId(jsId), defaultMsgId(known))
        self.assertFalse(h.router.peers[js].keyIds)

        have = pubsub_pb2.RPC()
        have.control.ihave.add(topicID=TOPIC, messageIDs=[jsId])
        h.sent.clear()
        h.router.handleRPC(js, have.SerializeToString())
        self.assertEqual([w for r in h.sentTo(js) for w in r.control.iwant], [])
        self.assertTrue(h.router.peers[js].keyIds)

        # A new message advertised in key form: asked for in that form,
        # delivered, the promise kept.
        fresh = signedMessage(author, b"fresh", seqno=2)
        have = pubsub_pb2.RPC()
        have.control.ihave.add(topicID=TOPIC, messageIDs=[keyMsgId(fresh)])
        h.router.handleRPC(js, have.SerializeToString())
        self.assertEqual([i for r in h.sentTo(js) for w in r.control.iwant for i in w.messageIDs],
                         [keyMsgId(fresh)])
        h.deliver(js, fresh)
        self.assertEqual(len(h.router.promises), 0)

        # Our own message: advertised to js in its form, served when asked so.
        ours = h.router.publish(TOPIC, b"ours")
        [mine] = [m for r in h.sentTo(js) for m in r.publish if m.data == b"ours"]
        h.sent.clear()
        h.tick()
        advertised = [i for r in h.sentTo(js) for ih in r.control.ihave for i in ih.messageIDs]
        self.assertIn(keyMsgId(mine), advertised)
        self.assertNotIn(ours, advertised)
        want = pubsub_pb2.RPC()
        want.control.iwant.add(messageIDs=[keyMsgId(mine)])
        h.sent.clear()
        h.router.handleRPC(js, want.SerializeToString())
        self.assertEqual([m.data for r in h.sentTo(js) for m in r.publish], [b"ours"])
        h.tick(4.0)
        self.assertGreaterEqual(h.router.score(js), 0)

    def test_boundedSubscriptions(self) -> None:
        """
        A peer can hold at most maxTopicsPerPeer topics in our tables.
        """
        h = RouterHarness(params=GossipSubParams(maxTopicsPerPeer=5))
        peer = h.peer(subscribe=False)
        rpc = pubsub_pb2.RPC()
        for i in range(100):
            rpc.subscriptions.add(subscribe=True, topicid=f"t{i}")
        h.router.handleRPC(peer, rpc.SerializeToString())
        self.assertEqual(len(h.router.peers[peer].topics), 5)
        self.assertEqual(len(h.router.topics), 5)
        big = pubsub_pb2.RPC()
        for i in range(200):
            big.subscriptions.add(subscribe=True, topicid=f"u{i}")
        self.assertRaises(InvalidRPC, h.router.handleRPC, peer, big.SerializeToString())

    def test_boundedCaches(self) -> None:
        """
        The seen cache and message cache stop at their limits.
        """
        h = RouterHarness(params=GossipSubParams(maxSeen=20, maxCachedPerWindow=5, floodBurst=1000))
        h.router.subscribe(TOPIC, Inbox())
        peer = h.peer()
        author = Identity.generate()
        h.deliver(peer, *[signedMessage(author, b"%d" % i, i + 1) for i in range(50)])
        self.assertEqual(len(h.router.seen), 20)
        self.assertEqual(len(h.router.mcache), 5)
        for _ in range(6):
            h.tick()
        self.assertEqual(len(h.router.mcache), 0)

    def test_meshDeliveryDeficit(self) -> None:
        """
        With P3 on, a mesh peer that delivers nothing once the activation
        time passed loses score, and keeps the P3b penalty when pruned.
        """
        topics = {TOPIC: TopicScoreParams(meshMessageDeliveriesWeight=-1.0, meshMessageDeliveriesActivation=2.0,
                                          meshMessageDeliveriesThreshold=3.0, meshFailurePenaltyWeight=-1.0,
                                          meshFailurePenaltyDecay=0.99, timeInMeshWeight=0.0)}
        h = RouterHarness(scoreParams=ScoreParams(topics=topics))
        peer = h.peer()
        h.router.subscribe(TOPIC, Inbox())
        self.assertIn(peer, h.router.mesh[TOPIC])
        h.tick()
        self.assertEqual(h.router.score(peer), 0.0)
        h.tick(2.5)
        self.assertLess(h.router.score(peer), 0.0)


class NodeTests(SynchronousTestCase):
    """
    Gossipsub over whole nodes on the memory grid.
    """

    def test_propagationOverMesh(self) -> None:
        """
        Twelve nodes in a line-and-ring topology: a message published on one
        reaches every other exactly once.
        """
        grid = MemoryGrid(self)
        nodes = [startGossip(grid, self) for _ in range(12)]
        inboxes = []
        for _, g in nodes:
            inbox = Inbox()
            g.subscribe(TOPIC, inbox)
            inboxes.append(inbox)
        for i, (node, _) in enumerate(nodes):
            for j in (i + 1, i + 3):
                if j < len(nodes):
                    grid.result(node.connect(grid.addr(nodes[j][0])))
        grid.advance(2.0)
        for _, g in nodes:
            self.assertGreaterEqual(sum(g.router.status()["mesh"].values()), 1)
        nodes[0][1].publish(TOPIC, b"news")
        grid.advance(0.5)
        self.assertEqual(inboxes[0].got, [])
        for inbox in inboxes[1:]:
            self.assertEqual(inbox.got, [(nodes[0][0].peerID, b"news")])

    def test_neverReadingPeerDropped(self) -> None:
        """
        A peer whose gossipsub stream never reads is dropped once the queue
        for it passes its bound, and its score goes negative.
        """
        grid = MemoryGrid(self)
        node, gossip = startGossip(grid, self, maxQueuedBytes=64 * 1024)
        gossip.subscribe(TOPIC, Inbox())
        sink = grid.node()

        class Deaf(Protocol):
            def connectionMade(self) -> None:
                self.transport.pauseProducing()  # type: ignore[union-attr]

        sink.setStreamHandler(GOSSIPSUB_V11, Deaf)
        # The sink also claims the topic: open a stream and subscribe.
        rpc = pubsub_pb2.RPC()
        rpc.subscriptions.add(subscribe=True, topicid=TOPIC)
        from beam.encoding.framing import encodeLengthPrefixed

        class Talker(Protocol):
            def connectionMade(self) -> None:
                self.transport.write(encodeLengthPrefixed(rpc.SerializeToString()))  # type: ignore[union-attr]

        grid.result(sink.openStream(grid.addr(node), [GOSSIPSUB_V11], Talker))
        grid.advance(1.0)
        self.assertIn(sink.peerID, gossip.router.peers)
        for i in range(400):
            gossip.publish(TOPIC, b"x" * 4000)
            grid.settle()
            if sink.peerID not in gossip.router.peers:
                break
        self.assertNotIn(sink.peerID, gossip.router.peers)
        self.assertLess(gossip.score(sink.peerID), 0)

    def test_disabled(self) -> None:
        """
        A disabled service serves nothing and says so.
        """
        grid = MemoryGrid(self)
        identity = Identity.generate()
        node = grid.node(identity=identity)
        gossip = GossipSub(grid.clock, node, identity, enabled=False)
        gossip.startService()
        self.assertFalse(node.hasStreamHandler(GOSSIPSUB_V11))
        gossip.publish(TOPIC, b"x")
        self.assertEqual(gossip.status(), {"enabled": False})
        gossip.stopService()


class DecoderFuzz(SynchronousTestCase):
    """
    Arbitrary bytes never crash the RPC decoder or the router.
    """

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=512))
    def test_fuzzRPC(self, data: bytes) -> None:
        """
        decodeRPC either parses or raises L{InvalidRPC}; a parsed RPC is
        handled without any other exception.
        """
        h = RouterHarness()
        h.router.subscribe(TOPIC, Inbox())
        peer = h.peer()
        try:
            decodeRPC(data, h.router.params)
        except InvalidRPC:
            return
        try:
            h.router.handleRPC(peer, data)
        except InvalidRPC:
            pass

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.tuples(st.integers(1, 6), st.binary(max_size=40)), max_size=8))
    def test_fuzzFields(self, fields: list[tuple[int, bytes]]) -> None:
        """
        Messages built from random field values are handled without
        unexpected exceptions.
        """
        from beam.encoding.varint import encode_uvarint

        h = RouterHarness()
        h.router.subscribe(TOPIC, Inbox())
        peer = h.peer()
        body = b"".join(encode_uvarint(n << 3 | 2) + encode_uvarint(len(v)) + v for n, v in fields)
        body += b"\x22" + encode_uvarint(len(TOPIC)) + TOPIC.encode()
        data = b"\x12" + encode_uvarint(len(body)) + body
        try:
            h.router.handleRPC(peer, data)
        except InvalidRPC:
            pass
