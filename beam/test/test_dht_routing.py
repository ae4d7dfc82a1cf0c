"""
Tests for L{beam.dht.routing}: k-buckets, eviction, ordering, persistence.
"""

from __future__ import annotations

import json
import random

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from beam.dht.messages import PeerInfo
from beam.dht.routing import (
    RoutingTable,
    commonPrefixLength,
    kadID,
    peerKadID,
    xorDistance,
)
from beam.errors import DecodeError
from beam.test.dhtutil import bruteClosest, fakeInfo, fakePeer

LOCAL = fakePeer("local")


def peersInBucket(table: RoutingTable, index: int, count: int) -> list[PeerInfo]:
    out = []
    n = 0
    while len(out) < count:
        info = fakeInfo(f"b{index}-{n}")
        n += 1
        if table.bucketIndex(peerKadID(info.peer)) == index:
            out.append(info)
    return out


class DistanceTests(SynchronousTestCase):
    def test_basics(self) -> None:
        """
        XOR distance is zero to oneself and symmetric; the common prefix of
        IDs differing in the first bit is 0, of equal IDs 256.
        """
        a, b = kadID(b"a"), kadID(b"b")
        self.assertEqual(xorDistance(a, a), 0)
        self.assertEqual(xorDistance(a, b), xorDistance(b, a))
        self.assertEqual(commonPrefixLength(b"\x80" + b"\0" * 31, b"\0" * 32), 0)
        self.assertEqual(commonPrefixLength(b"\x01" + b"\0" * 31, b"\0" * 32), 7)
        self.assertEqual(commonPrefixLength(a, a), 256)
        self.assertEqual(peerKadID(LOCAL), kadID(LOCAL.bytes))


class TableTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.table = RoutingTable(LOCAL, k=4)

    def test_bucketPlacement(self) -> None:
        """
        Each peer lands in the bucket of its common-prefix length with us.
        """
        for n in range(50):
            info = fakeInfo(n)
            self.assertIn(self.table.add(info, 0).result, ("added", "full"))
        for view in self.table.buckets():
            for e in view.entries:
                self.assertEqual(
                    view.index, commonPrefixLength(peerKadID(LOCAL), peerKadID(e.info.peer))
                )
                self.assertLessEqual(len(view.entries), 4)

    def test_selfNotAdded(self) -> None:
        """
        Our own ID is never in the table.
        """
        self.assertEqual(self.table.add(PeerInfo(LOCAL), 0).result, "self")
        self.assertEqual(self.table.size, 0)

    def test_updateMovesToFreshEnd(self) -> None:
        """
        Seeing a present peer again refreshes it, keeps its addresses when
        the new info has none, and makes it the last candidate for eviction.
        """
        a, b, c, d = peersInBucket(self.table, 0, 4)
        for i, p in enumerate((a, b, c, d)):
            self.table.add(p, i)
        self.assertEqual(self.table.add(PeerInfo(a.peer), 10).result, "updated")
        self.assertEqual(self.table.get(a.peer).info, a)  # type: ignore[union-attr]
        e = peersInBucket(self.table, 0, 5)[4]
        out = self.table.add(e, 11)
        self.assertEqual(out.result, "full")
        self.assertEqual(out.candidate, b)

    def test_fullBucketReplacement(self) -> None:
        """
        A newcomer to a full bucket waits in the replacement cache and takes
        the place of a member that is removed; the table never exceeds k.
        """
        members = peersInBucket(self.table, 1, 6)
        for p in members[:4]:
            self.table.add(p, 0)
        out = self.table.add(members[4], 1)
        self.assertEqual((out.result, out.candidate), ("full", members[0]))
        self.table.add(members[5], 2)
        self.assertNotIn(members[4].peer, self.table)
        self.assertTrue(self.table.remove(members[0].peer))
        self.assertIn(members[5].peer, self.table)
        self.assertNotIn(members[4].peer, self.table)
        self.assertEqual(self.table.size, 4)
        self.assertEqual(self.table.buckets()[0].replacements, (members[4],))
        self.assertFalse(self.table.remove(members[0].peer))

    def test_replacementCacheBounded(self) -> None:
        """
        The replacement cache keeps only the most recent newcomers.
        """
        table = RoutingTable(LOCAL, k=2, maxReplacements=3)
        ps = peersInBucket(table, 0, 10)
        for i, p in enumerate(ps):
            table.add(p, i)
        self.assertEqual(table.buckets()[0].replacements, tuple(ps[7:]))

    def test_repeatedFailuresRemove(self) -> None:
        """
        A peer is dropped after maxFailures consecutive failures; an answer
        in between resets the count.
        """
        p = fakeInfo(1)
        self.table.add(p, 0)
        self.assertFalse(self.table.markFailed(p.peer))
        self.table.add(p, 1)
        self.assertFalse(self.table.markFailed(p.peer))
        self.assertTrue(self.table.markFailed(p.peer))
        self.assertNotIn(p.peer, self.table)
        self.assertFalse(self.table.markFailed(p.peer))

    def test_closestExcludes(self) -> None:
        """
        closest() leaves out excluded peers and returns at most n.
        """
        table = RoutingTable(LOCAL, k=20)
        peers = [fakeInfo(i) for i in range(30)]
        for p in peers:
            table.add(p, 0)
        target = kadID(b"x")
        got = table.closest(target, 5, exclude=[peers[0].peer])
        expected = bruteClosest(target, [p.peer for p in table.peers() if p != peers[0]], 5)
        self.assertEqual([p.peer for p in got], expected)

    def test_staleBucketsAndRandomKeys(self) -> None:
        """
        Buckets up to one past the deepest are stale until a lookup in them
        is marked; a random key for bucket i lands in bucket i.
        """
        table = RoutingTable(LOCAL, k=20)
        for p in peersInBucket(table, 0, 2) + peersInBucket(table, 2, 1):
            table.add(p, 0)
        self.assertEqual(table.staleBuckets(100, 50), [0, 1, 2, 3])
        rng = random.Random(1)
        key = table.randomKeyForBucket(3, rng.randbytes)
        self.assertEqual(table.bucketIndex(kadID(key)), 3)
        table.markRefreshed(kadID(key), 90)
        self.assertEqual(table.staleBuckets(100, 50), [0, 1, 2])
        self.assertEqual(table.staleBuckets(200, 50), [0, 1, 2, 3])

    def test_persistenceRoundTrip(self) -> None:
        """
        toJSON then fromJSON gives the same peers, addresses and last-seen
        times; the order of staleness survives.
        """
        table = RoutingTable(LOCAL, k=3)
        for i in range(40):
            table.add(fakeInfo(i), float(i))
        again = RoutingTable.fromJSON(LOCAL, table.toJSON(), k=3)
        self.assertEqual(
            [(v.index, [(e.info, e.lastSeen) for e in v.entries]) for v in again.buckets()],
            [(v.index, [(e.info, e.lastSeen) for e in v.entries]) for v in table.buckets()],
        )

    def test_persistenceSkipsBadRows(self) -> None:
        """
        Unparseable rows are skipped; text that is not a table raises
        DecodeError.
        """
        good = fakeInfo(1)
        text = json.dumps({"version": 1, "peers": [
            {"id": "nope", "addrs": []},
            {"id": str(fakePeer(2)), "addrs": ["/bogus"]},
            {"addrs": []},
            "string",
            {"id": str(good.peer), "addrs": [str(a) for a in good.addrs], "lastSeen": 5},
        ]})
        table = RoutingTable.fromJSON(LOCAL, text)
        self.assertEqual(list(table.peers()), [good])
        for bad in ("{", "[]", '{"version": 2, "peers": []}', '{"version": 1}', b"\xff"):
            with self.assertRaises(DecodeError):
                RoutingTable.fromJSON(LOCAL, bad)


@settings(deadline=None, max_examples=60)
@given(
    st.lists(st.integers(0, 5000), min_size=0, max_size=120, unique=True),
    st.binary(min_size=32, max_size=32),
    st.integers(1, 30),
    st.integers(1, 8),
)
def test_closestMatchesBruteForce(ns: list[int], target: bytes, n: int, k: int) -> None:
    """
    closest(target, n) is exactly the n nearest of the peers the table
    holds, nearest first, and no bucket holds more than k.
    """
    table = RoutingTable(LOCAL, k=k)
    for i in ns:
        table.add(fakeInfo(i), 0)
    held = [p.peer for p in table.peers()]
    assert len(held) == table.size
    assert [p.peer for p in table.closest(target, n)] == bruteClosest(target, held, n)
    assert all(len(v.entries) <= k for v in table.buckets())
