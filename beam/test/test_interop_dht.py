"""
Interoperability of Beam's Kademlia DHT with js-libp2p's C{@libp2p/kad-dht}
set to C{/beam/kad/1.0.0} (C{interop/dht.mjs}).

A js node bootstraps from Beam nodes and finds the closest peers to a key
through them (Beam answers its FIND_NODE requests with dialable peers); a
name record Beam published is fetched by the js node, whose own validator
checks the envelope signature; records the js node puts are stored by
Beam; and the other way round, Beam uses a js DHT server for lookups,
puts and gets.

These need C{beam/dht/service.py} (the "kademlia" child service of a
L{Node}); until it exists they are skipped with that reason.  Under CI they
fail rather than skip when the js peer is not installed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from unittest import SkipTest

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

import beam
from beam.identity.keys import Identity, PeerID
from beam.identity.multiaddr import Multiaddr
from beam.p2p.host.node import Node
from beam.test.jsdht import (
    DHT_PROTOCOL,
    JSDHT,
    nameKey,
    nameWithFarthest,
    sortByDistance,
)
from beam.test.jspeer import JSPeer, JSPeerCommandFailed, requireInterop
from beam.test.nodeutil import addrOf

#: Why these tests cannot run yet, or None once the DHT service exists.
DHT_MISSING: str | None = (
    None
    if (Path(beam.__file__).parent / "dht" / "service.py").exists()
    else "beam/dht/service.py not yet written"
)


# ---------------------------------------------------------------- Beam side
#
# The one place that knows how a Beam node gets its DHT; adjust here if
# KademliaService's constructor differs.


def addKademlia(node: Node, home: Path) -> Any:
    """
    Give C{node} its "kademlia" child service (server mode, the beam-name
    validator) before the node starts.

    Server mode is explicit: these tests are about the protocol, and "auto"
    decides before the node has bound its listeners.
    """
    from beam.dht.service import KademliaService

    from beam.names.validator import NameValidator

    service = KademliaService(reactor, node, home, mode="server", validators={"beam-name": NameValidator()})
    service.setServiceParent(node)
    return service


def kademlia(node: Node) -> Any:
    """
    The node's DHT service.
    """
    return node.getServiceNamed("kademlia")


def peersOf(result: Any) -> list[PeerID]:
    """
    The peer IDs of a closest-peers answer, nearest first, whether it is a
    list of PeerInfo or a LookupResult (whose C{closest} is that list).
    """
    infos = getattr(result, "closest", result)
    return [info.peer for info in infos]


def valueOf(result: Any) -> bytes:
    """
    The record of a getValue answer: bytes, or C{(value, stats)}.
    """
    return result[0] if isinstance(result, tuple) else result


def signedName(identity: Identity, name: str, addrs: list[Multiaddr], seq: int = 1) -> bytes:
    """
    A name record for C{name} owned by C{identity}, as Beam publishes it.
    """
    from beam.names.record import makeRecord, signRecord

    record = makeRecord(identity, name, addrs, now=time.time(), seq=seq)
    return signRecord(identity, record)


# ---------------------------------------------------------------- tests


class BeamJSDHTTests(TestCase):
    """
    Beam and js-libp2p kad-dht nodes in one DHT on loopback.
    """

    timeout = 120

    def setUp(self) -> None:
        requireInterop(self)
        if DHT_MISSING is not None:
            raise SkipTest(DHT_MISSING)

    @defer.inlineCallbacks
    def startBeams(self, count: int) -> Any:
        """
        Start C{count} Beam DHT servers; nodes 1.. bootstrap from node 0.
        """
        nodes = []
        for _ in range(count):
            node = Node(reactor, Identity.generate(), ["/ip4/127.0.0.1/tcp/0"])
            home = Path(self.mktemp())
            home.mkdir(parents=True)
            addKademlia(node, home)
            yield node.startService()
            self.addCleanup(node.stopService)
            nodes.append(node)
        for node in nodes[1:]:
            yield kademlia(node).bootstrap([addrOf(nodes[0])])
        # Identify runs after each connection is up, so a node may learn a
        # peer is a DHT server a moment after the bootstrap returned: wait
        # until every node knows every other one (on a loaded machine this
        # takes longer than the bootstrap itself).
        deadline = reactor.seconds() + 20
        while any(kademlia(n).routingTableSize() < count - 1 for n in nodes):
            if reactor.seconds() > deadline:
                sizes = [kademlia(n).routingTableSize() for n in nodes]
                raise AssertionError(f"Beam DHT did not converge: routing table sizes {sizes}")
            yield deferLater(reactor, 0.05, lambda: None)
        return nodes

    @defer.inlineCallbacks
    def startJS(self, mode: str = "--dht-client") -> Any:
        peer = yield JSPeer.start(reactor, security="noise", extraArgs=[mode])
        self.addCleanup(peer.stop)
        return peer, JSDHT(peer)

    @defer.inlineCallbacks
    def test_jsBootstrapsFromBeamAndFindsClosest(self) -> Any:
        """
        A js client bootstraps from one Beam node (identify lists
        /beam/kad/1.0.0, so it enters js's routing table as a server) and
        its iterative FIND_NODE, answered only by Beam nodes, finds all of
        them nearest first; it finds Beam nodes' addresses through Beam.
        """
        beams = yield self.startBeams(4)
        js, dht = yield self.startJS()
        seed = beams[0]
        booted = yield dht.bootstrap([str(addrOf(seed))])
        self.assertEqual(booted["peers"], [str(seed.peerID)])
        identified = yield js.waitForEvent("identify", lambda e: e["peerId"] == str(seed.peerID))
        self.assertIn(DHT_PROTOCOL, identified["protocols"])

        # js follows only strictly closer peers: make the seed the farthest
        name = nameWithFarthest(seed.peerID.bytes, [n.peerID.bytes for n in beams[1:]])
        key = nameKey(name)
        expected = sortByDistance(key, [(str(n.peerID), n.peerID.bytes) for n in beams])
        self.assertEqual(expected[-1], str(seed.peerID))
        closest = yield dht.closest(key)
        self.assertEqual(closest["errors"], [])
        self.assertEqual(closest["peers"], expected)
        self.assertEqual(sorted(closest["queried"]), sorted(expected))

        target = beams[3]
        found = yield dht.findPeer(str(target.peerID))
        self.assertEqual(found["peerId"], str(target.peerID))
        self.assertIn(str(addrOf(target, withPeer=False)), found["addrs"])

        # asks seed (distance 0) among others: seed answers with itself
        found = yield dht.findPeer(str(seed.peerID))
        self.assertIn(found["from"], expected)
        self.assertIn(str(addrOf(seed, withPeer=False)), found["addrs"])

    @defer.inlineCallbacks
    def test_jsGetsRecordBeamPublished(self) -> Any:
        """
        A name record a Beam node published is fetched by a js client that
        bootstrapped from another Beam node; js's beam-name validator
        accepts Beam's envelope (signature, domain, payload type) and
        reports no invalid answers.
        """
        beams = yield self.startBeams(3)
        owner = beams[1]
        record = signedName(owner.identity, "alice", [addrOf(owner, withPeer=False)])
        stored = yield kademlia(owner).putValue(nameKey("alice"), record)
        self.assertGreaterEqual(stored, 1)

        _js, dht = yield self.startJS()
        yield dht.bootstrap([str(addrOf(beams[0]))])
        value, sender, errors = yield dht.get("/beam-name/alice")
        self.assertEqual(value, record)
        self.assertIn(sender, [str(n.peerID) for n in beams])
        self.assertEqual(errors, [])

    @defer.inlineCallbacks
    def test_beamStoresJSPuts(self) -> Any:
        """
        A js client's PUT_VALUE of a valid Beam name record is stored (and
        echoed) by every Beam node, and Beam's getValue returns it; an
        invalid record (bad signature) is refused by all of them.
        """
        beams = yield self.startBeams(3)
        _js, dht = yield self.startJS()
        # js only follows peers strictly closer to the key than the one
        # that named them, so with a single seed whether it reaches all
        # three depends on the random IDs: seed it with all of them.
        yield dht.bootstrap([str(addrOf(b)) for b in beams], minPeers=3, selfLookup=True)
        ident = Identity.generate()
        record = signedName(ident, "bob", [])
        put = yield dht.put(nameKey("bob"), record)
        self.assertEqual(sorted(put["storedOn"]), sorted(str(n.peerID) for n in beams))
        got = yield kademlia(beams[2]).getValue(nameKey("bob"))
        self.assertEqual(valueOf(got), record)

        tampered = bytearray(signedName(ident, "carol", []))
        tampered[-1] ^= 1
        put = yield dht.put(nameKey("carol"), bytes(tampered))
        self.assertEqual(put["storedOn"], [])
        self.assertTrue(put["errors"])

    @defer.inlineCallbacks
    def test_beamUsesJSServer(self) -> Any:
        """
        A Beam node bootstraps from a js DHT server: js adds it to its
        routing table, Beam's closest-peers lookup finds js, Beam's put
        lands in js's store (js's validator accepts it), and another Beam
        node that knows only js gets the record back from it.
        """
        js, dht = yield self.startJS("--dht")
        jsAddr = Multiaddr.fromString(js.addr)
        jsID = PeerID.fromString(js.peerId)
        beams = []
        for _ in range(2):
            node = Node(reactor, Identity.generate(), ["/ip4/127.0.0.1/tcp/0"])
            home = Path(self.mktemp())
            home.mkdir(parents=True)
            addKademlia(node, home)
            yield node.startService()
            self.addCleanup(node.stopService)
            beams.append(node)
        a, b = beams
        yield kademlia(a).bootstrap([jsAddr])
        yield js.waitForEvent("dht:peer:add", lambda e: e["peerId"] == str(a.peerID))

        key = nameKey("dave")
        closest = yield kademlia(a).closestPeers(key)
        self.assertIn(jsID, peersOf(closest))

        record = signedName(a.identity, "dave", [addrOf(a, withPeer=False)])
        stored = yield kademlia(a).putValue(key, record)
        self.assertGreaterEqual(stored, 1)
        held = yield dht.getLocal(key)
        self.assertEqual(held, record)

        yield kademlia(b).bootstrap([jsAddr])
        got = yield kademlia(b).getValue(key)
        self.assertEqual(valueOf(got), record)

        yield self.assertFailure(dht.getLocal(nameKey("nobody")), JSPeerCommandFailed)


class BeamRecordsOnJSDHTTests(TestCase):
    """
    Name records signed by L{beam.names.record} on a DHT of js nodes only:
    needs no Beam DHT service, so it runs today.
    """

    timeout = 60

    def setUp(self) -> None:
        requireInterop(self)

    @defer.inlineCallbacks
    def test_jsValidatesAndSelectsBeamRecords(self) -> Any:
        """
        js servers accept Beam-signed name records (envelope domain,
        payload type and signature as Beam makes them); a js getter that
        finds seq 1 on one server and seq 2 on the other picks seq 2 (the
        js selector reads names.proto's seq field by default), and Beam
        opens what js returned as the record it signed.
        """
        from beam.names.record import openRecord

        peers = []
        for mode in ("--dht", "--dht", "--dht-client"):
            peer = yield JSPeer.start(reactor, security="noise", extraArgs=[mode])
            self.addCleanup(peer.stop)
            peers.append((peer, JSDHT(peer)))
        (a, dhtA), (b, dhtB), (_c, dhtC) = peers
        ident = Identity.generate()
        addr = Multiaddr.fromString("/ip4/127.0.0.1/tcp/4001")
        old, new = (signedName(ident, "alice", [addr], seq=n) for n in (1, 2))
        key = nameKey("alice")
        # a and b know no peers, so each put stays in its own store
        yield dhtA.put(key, old)
        yield dhtB.put(key, new)
        stored = yield dhtA.getLocal(key)
        self.assertEqual(stored, old)

        yield dhtC.bootstrap([a.addr, b.addr], minPeers=2)
        value, sender, errors = yield dhtC.get(key)
        self.assertEqual((value, sender, errors), (new, b.peerId, []))
        record = openRecord(value, time.time(), expectedName="alice")
        self.assertEqual((record.peer, record.seq, record.addrs), (ident.peerID, 2, (addr,)))
