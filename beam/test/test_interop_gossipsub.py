"""
Interoperability of Beam's gossipsub (L{beam.p2p.pubsub.GossipSub}) and its
C{beam-names} topic (L{beam.names.gossip.NameGossip}) with js-libp2p's
C{@libp2p/gossipsub} (C{interop/gossip.mjs}: StrictSign, its default
parameters), on loopback.

A real Beam node (the node stack and the C{"pubsub"} service, with the
global reactor) and a real js-libp2p node connect; each subscribes to
C{beam-names}.  A signed name record Beam publishes reaches js with its
bytes intact and Beam's peer ID as the verified author; a valid record js
publishes is accepted by Beam's NameGossip, and one with a broken record
signature is rejected and costs js score at Beam.

Under CI these fail rather than skip when the js peer is not installed
(L{requireInterop}).
"""

from __future__ import annotations

import base64
import time
from typing import Any, Callable

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from beam.identity.keys import Identity, PeerID
from beam.identity.multiaddr import Multiaddr
from beam.names.gossip import TOPIC, NameGossip, validateNameRecord
from beam.names.record import InvalidNameRecord, NameRecord, makeRecord, openRecord, signRecord
from beam.p2p.host.node import Node
from beam.p2p.pubsub import GossipSub, GossipSubParams
from beam.test.jspeer import JSPeer, requireInterop
from beam.test.nodeutil import addrOf


def signedName(identity: Identity, name: str, seq: int = 1) -> bytes:
    """
    A name record for C{name} owned by C{identity}, signed as Beam
    publishes it (on the DHT and on gossip alike).
    """
    addrs = [Multiaddr("/ip4/127.0.0.1/tcp/4001")]
    return signRecord(identity, makeRecord(identity, name, addrs, now=time.time(), seq=seq))


def breakSignature(data: bytes) -> bytes:
    """
    C{data} with the last byte of its envelope's signature flipped (the
    signature is the envelope's last field), so that the record no longer
    opens; checked here rather than assumed.
    """
    broken = data[:-1] + bytes([data[-1] ^ 0x01])
    try:
        openRecord(broken, time.time())
    except InvalidNameRecord:
        return broken
    raise AssertionError("flipping the last byte did not break the record's signature")


@defer.inlineCallbacks
def waitUntil(check: Callable[[], bool], what: str, timeout: float = 20.0) -> Any:
    """
    Poll C{check} every 50 ms until it is true; fail after C{timeout} s
    saying C{what} did not happen.
    """
    deadline = reactor.seconds() + timeout
    while not check():
        if reactor.seconds() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        yield deferLater(reactor, 0.05, lambda: None)


class BeamJSGossipsubTests(TestCase):
    """
    One Beam node and one js-libp2p gossipsub node on C{beam-names}.
    """

    timeout = 120

    def setUp(self) -> None:
        requireInterop(self)
        self.received: list[tuple[NameRecord, bytes]] = []

    @defer.inlineCallbacks
    def startBeam(self, params: GossipSubParams | None = None) -> Any:
        """
        A Beam node on loopback with its C{"pubsub"} service and
        NameGossip, whose accepted records go to C{self.received}.
        """
        identity = Identity.generate()
        node = Node(reactor, identity, ["/ip4/127.0.0.1/tcp/0"])
        pubsub = GossipSub(reactor, node, identity, params=params)
        pubsub.setServiceParent(node)
        names = NameGossip(
            pubsub,
            lambda data: validateNameRecord(data, time.time()),
            lambda record, data: self.received.append((record, data)),
        )
        yield node.startService()
        self.addCleanup(node.stopService)
        return identity, node, pubsub, names

    @defer.inlineCallbacks
    def startJS(self, beam: Node) -> Any:
        """
        A js gossipsub node subscribed to C{beam-names}, connected to
        C{beam}.
        """
        js = yield JSPeer.start(reactor, security="noise", extraArgs=["--gossipsub"])
        self.addCleanup(js.stop)
        yield js.request({"cmd": "gossipSubscribe", "topic": TOPIC})
        yield js.dial(str(addrOf(beam)))
        return js

    @defer.inlineCallbacks
    def meshed(self, pubsub: GossipSub, js: JSPeer) -> Any:
        """
        Wait until each side knows the other subscribes to C{beam-names}
        (the subscription announcements crossed).
        """
        jsPeer = PeerID.fromString(js.peerId)
        yield waitUntil(lambda: jsPeer in pubsub.router.topics.get(TOPIC, ()),
                        "Beam learns that js subscribes to beam-names")
        yield js.waitForEvent(
            "gossip:subscription",
            lambda e: e["peerId"] == str(pubsub.host.peerID)
            and {"topic": TOPIC, "subscribe": True} in e["subscriptions"],
        )
        return jsPeer

    @defer.inlineCallbacks
    def test_jsReceivesBeamRecord(self) -> Any:
        """
        A signed name record Beam publishes through NameGossip reaches the
        js subscriber: js delivers it (its StrictSign check of Beam's
        message signature passed) with Beam's peer ID as the author and the
        record's bytes unchanged, and the record still opens.
        """
        identity, beam, pubsub, names = yield self.startBeam()
        js = yield self.startJS(beam)
        yield self.meshed(pubsub, js)

        record = signedName(identity, "beam-interop-one")
        names.publish(record)
        event = yield js.waitForEvent("gossip", lambda e: e["topic"] == TOPIC)
        self.assertEqual(event["from"], str(beam.peerID))
        self.assertEqual(event["via"], str(beam.peerID))
        self.assertEqual(base64.b64decode(event["data"]), record)
        self.assertEqual(openRecord(base64.b64decode(event["data"]), time.time()).name, "beam-interop-one")

    @defer.inlineCallbacks
    def test_beamAcceptsValidRejectsInvalidFromJS(self) -> Any:
        """
        A valid record js publishes on C{beam-names} is accepted by Beam's
        NameGossip (onRecord called, cached); one whose record signature is
        broken is rejected (not delivered, not cached) and js's score at
        Beam falls below zero.  js signs its gossipsub messages itself, so
        Beam checks js's StrictSign signature too.
        """
        _, beam, pubsub, names = yield self.startBeam()
        js = yield self.startJS(beam)
        jsPeer = yield self.meshed(pubsub, js)

        owner = Identity.generate()
        good = signedName(owner, "beam-interop-two")
        reply = yield js.request({"cmd": "gossipPublish", "topic": TOPIC, "data": base64.b64encode(good).decode()})
        self.assertEqual(reply["recipients"], [str(beam.peerID)])
        yield waitUntil(lambda: bool(self.received), "Beam accepts js's valid record")
        [(record, data)] = self.received
        self.assertEqual(data, good)
        self.assertEqual(record.name, "beam-interop-two")
        self.assertEqual(record.peer, owner.peerID)
        cached = names.cached("beam-interop-two")
        assert cached is not None
        self.assertEqual(cached[1], good)
        self.assertGreaterEqual(pubsub.score(jsPeer), 0.0)

        bad = breakSignature(signedName(Identity.generate(), "beam-interop-bad"))
        rejected = names.counters["rejected"]
        yield js.request({"cmd": "gossipPublish", "topic": TOPIC, "data": base64.b64encode(bad).decode()})
        yield waitUntil(lambda: names.counters["rejected"] > rejected, "Beam rejects js's broken record")
        self.assertIsNone(names.cached("beam-interop-bad"))
        self.assertEqual(len(self.received), 1)
        self.assertLess(pubsub.score(jsPeer), 0.0)
        self.assertGreaterEqual(pubsub.router.counters["rejected"], 1)

    @defer.inlineCallbacks
    def test_gossipOutsideMeshCostsNobody(self) -> Any:
        """
        With js outside Beam's mesh (Beam keeps none: degree 0), records
        travel by flood publishing and are advertised by IHAVE both ways.
        js names messages C{key || seqno} and Beam C{from || seqno}: Beam
        must know js's IHAVEs for messages it has (no IWANT, no broken
        promise counted against js) and advertise to js in js's form (else
        js asks again, gets a duplicate that keeps no promise, and counts a
        broken promise against Beam).  After the follow-up time each side
        still scores the other at zero or more.
        """
        identity, beam, pubsub, names = yield self.startBeam(
            GossipSubParams(D=0, Dlo=0, Dhi=0, Dscore=0, Dout=0))
        js = yield self.startJS(beam)
        jsPeer = yield self.meshed(pubsub, js)

        for i in range(3):
            record = signedName(Identity.generate(), f"beam-interop-js{i}")
            yield js.request({"cmd": "gossipPublish", "topic": TOPIC, "data": base64.b64encode(record).decode()})
        yield waitUntil(lambda: len(self.received) == 3, "Beam accepts js's three records")
        # js advertises them at its next heartbeat: Beam learns its form.
        yield waitUntil(lambda: pubsub.router.peers[jsPeer].keyIds, "js advertises by IHAVE")
        for i in range(3):
            names.publish(signedName(identity, f"beam-interop-beam{i}"))
        yield js.waitForEvent("gossip", lambda e: base64.b64decode(e["data"]).find(b"beam-interop-beam2") >= 0)
        # Past the IWANT follow-up time (3 s both sides) and a few heartbeats.
        yield deferLater(reactor, 5.0, lambda: None)

        mesh = yield js.request({"cmd": "gossipMesh", "topic": TOPIC})
        self.assertEqual(mesh["peers"], [])
        self.assertEqual(pubsub.router.mesh[TOPIC], set())
        self.assertEqual(len(pubsub.router.promises), 0)
        self.assertEqual(pubsub.router.counters["duplicates"], 0)
        self.assertGreaterEqual(pubsub.score(jsPeer), 0.0)
        jsScore = yield js.request({"cmd": "gossipScore", "peerId": str(beam.peerID)})
        self.assertGreaterEqual(jsScore["score"], 0.0)
