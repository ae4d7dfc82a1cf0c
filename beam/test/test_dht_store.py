"""
Tests for L{beam.dht.store}: validation, replacement, expiry, quotas.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from beam.dht.messages import MAX_VALUE_BYTES
from beam.dht.store import IValidator, RecordStore, namespaceOf, networkOf
from beam.errors import InvalidRecord, RecordRefused
from beam.identity.multiaddr import Multiaddr
from beam.test.dhtutil import ToyValidator, fakePeer, toyValue

ME = fakePeer("me")
A = fakePeer("a")
B = fakePeer("b")


class StoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.store = RecordStore(
            self.clock, {"toy": ToyValidator()}, maxRecords=5, maxPerPeer=3,
            quotaWindow=100, localPeer=ME,
        )

    def test_validatorInterface(self) -> None:
        """
        The toy validator provides IValidator (so the tests exercise the
        interface the names validator implements).
        """
        self.assertTrue(verifyObject(IValidator, ToyValidator()))

    def test_putGet(self) -> None:
        """
        A valid record is stored and returned; the same value again is a
        no-op.
        """
        v = toyValue("a", 1, 2000)
        self.assertTrue(self.store.put(b"/toy/x", v, A))
        self.assertEqual(self.store.get(b"/toy/x"), v)
        self.assertFalse(self.store.put(b"/toy/x", v, A))
        self.assertIsNone(self.store.get(b"/toy/y"))

    def test_namespaces(self) -> None:
        """
        Keys must be /namespace/rest with a known namespace.
        """
        self.assertEqual(namespaceOf(b"/toy/a/b"), "toy")
        v = toyValue("a", 1, 2000)
        for key in (b"toy/x", b"/toy", b"/toy/", b"//x", b"/other/x", b"/\xff/x", b"/toy/" + b"x" * 300):
            with self.assertRaises(InvalidRecord, msg=key):
                self.store.put(key, v, A)
        self.assertEqual(len(self.store), 0)

    def test_invalidRefused(self) -> None:
        """
        Malformed, expired and oversize values are refused.
        """
        for v in (b"junk", toyValue("a", 1, 999), b"a:1:2000" + b" " * MAX_VALUE_BYTES):
            with self.assertRaises(InvalidRecord):
                self.store.put(b"/toy/x", v, A)

    def test_replacement(self) -> None:
        """
        The owner may replace its record with a newer one; an older one, or
        another owner's while it is live, is refused.
        """
        self.store.put(b"/toy/x", toyValue("a", 2, 2000), A)
        with self.assertRaises(RecordRefused):
            self.store.put(b"/toy/x", toyValue("a", 1, 2000), A)
        with self.assertRaises(RecordRefused):
            self.store.put(b"/toy/x", toyValue("b", 9, 2000), B)
        self.store.put(b"/toy/x", toyValue("a", 3, 2000), A)
        self.assertEqual(self.store.get(b"/toy/x"), toyValue("a", 3, 2000))

    def test_expiry(self) -> None:
        """
        Records vanish at the validator's expiry; then another owner may
        claim the key; expire() drops them in bulk.
        """
        self.store.put(b"/toy/x", toyValue("a", 1, 1010), A)
        self.store.put(b"/toy/y", toyValue("a", 1, 1020), A)
        self.clock.advance(10)
        self.assertIsNone(self.store.get(b"/toy/x"))
        self.store.put(b"/toy/x", toyValue("b", 1, 2000), B)
        self.assertEqual(self.store.get(b"/toy/x"), toyValue("b", 1, 2000))
        self.clock.advance(10)
        self.assertEqual(self.store.expire(), 1)
        self.assertEqual([r.key for r in self.store.items()], [b"/toy/x"])

    def test_perPeerQuota(self) -> None:
        """
        One peer may store at most maxPerPeer records per window; others
        are unaffected, and the quota comes back when the window passes.
        """
        for i in range(3):
            self.store.put(b"/toy/%d" % i, toyValue("a", 1, 5000), A)
        with self.assertRaises(RecordRefused):
            self.store.put(b"/toy/3", toyValue("a", 1, 5000), A)
        self.store.put(b"/toy/3", toyValue("b", 1, 5000), B)
        self.clock.advance(100)
        self.store.put(b"/toy/4", toyValue("a", 1, 5000), A)
        self.assertEqual(len(self.store), 5)

    def test_full(self) -> None:
        """
        A full store refuses new keys from others (after dropping expired
        records) but still takes updates and our own records.
        """
        for i, peer in enumerate([A, A, A, B, B]):
            self.store.put(b"/toy/%d" % i, toyValue("o", 1, 1001 if i == 0 else 5000), peer)
        with self.assertRaises(RecordRefused):
            self.store.put(b"/toy/new", toyValue("o", 1, 5000), B)
        self.clock.advance(1)
        self.store.put(b"/toy/new", toyValue("o", 1, 5000), B)
        self.store.put(b"/toy/4", toyValue("o", 2, 5000), None)
        self.store.put(b"/toy/mine", toyValue("me", 1, 5000), ME)
        self.assertEqual(len(self.store), 6)

    def test_republishable(self) -> None:
        """
        republishable() lists our own unexpired records, including ones a
        peer later updated, and not others' records.
        """
        self.store.put(b"/toy/mine", toyValue("me", 1, 5000), ME)
        self.store.put(b"/toy/gone", toyValue("me", 1, 1005), ME)
        self.store.put(b"/toy/theirs", toyValue("a", 1, 5000), A)
        self.store.put(b"/toy/mine", toyValue("me", 2, 5000), A)
        self.clock.advance(5)
        self.assertEqual(self.store.republishable(), [(b"/toy/mine", toyValue("me", 2, 5000))])
        self.assertEqual(self.store.republishable(A), [(b"/toy/theirs", toyValue("a", 1, 5000))])

    def test_selectChecksIndex(self) -> None:
        """
        select() uses the namespace's validator, and refuses a validator's
        out-of-range answer.
        """
        vals = [toyValue("a", 1, 2000), toyValue("a", 5, 2000), toyValue("a", 2, 2000)]
        self.assertEqual(self.store.select(b"/toy/x", vals), 1)

        class Bad(ToyValidator):
            def select(self, key: bytes, values: object) -> int:
                return 7

        store = RecordStore(self.clock, {"toy": Bad()})
        with self.assertRaises(InvalidRecord):
            store.select(b"/toy/x", vals)


class NetworkTests(SynchronousTestCase):
    """
    L{networkOf}: the network a connection's address is charged to.
    """

    def test_networks(self) -> None:
        """
        IPv4 addresses count by /24, IPv6 by /48 (IPv4-mapped ones as
        IPv4), the machine's own 127.0.0.1 and ::1 as no network, any other
        loopback address as a network of its own, addresses without an IP
        by their kind; no address is no network.
        """
        def net(a: str) -> str | None:
            return networkOf(Multiaddr(a))

        self.assertEqual(net("/ip4/203.0.113.7/tcp/4001"), "ip4:203.0.113.0/24")
        self.assertEqual(net("/ip4/203.0.113.250/tcp/9"), net("/ip4/203.0.113.7/tcp/4001"))
        self.assertNotEqual(net("/ip4/203.0.114.7/tcp/4001"), net("/ip4/203.0.113.7/tcp/4001"))
        self.assertEqual(net("/ip6/2001:db8:1:2::5/tcp/1"), "ip6:2001:db8:1::/48")
        self.assertEqual(net("/ip6/2001:db8:1:ffff::9/tcp/1"), net("/ip6/2001:db8:1:2::5/tcp/1"))
        self.assertNotEqual(net("/ip6/2001:db8:2::5/tcp/1"), net("/ip6/2001:db8:1:2::5/tcp/1"))
        self.assertEqual(net("/ip6/::ffff:198.51.100.3/tcp/1"), "ip4:198.51.100.0/24")
        self.assertIsNone(net("/ip4/127.0.0.1/tcp/1"))
        self.assertIsNone(net("/ip6/::1/tcp/1"))
        self.assertIsNone(net("/ip6/::ffff:127.0.0.1/tcp/1"))
        self.assertEqual(net("/ip4/127.9.9.9/tcp/1"), "loopback:127.9.9.9")
        self.assertEqual(net("/ip4/127.0.0.2/tcp/1"), "loopback:127.0.0.2")
        self.assertEqual(net("/dns4/example.com/tcp/1"), "other:dns4")
        self.assertIsNone(networkOf(None))


class NetworkQuotaTests(SynchronousTestCase):
    """
    Per-network quotas: many throwaway keys on one /24 cannot fill the
    store, and an owner's refresh is taken even when the store is full.
    """

    NET1 = "ip4:203.0.113.0/24"
    NET2 = "ip4:198.51.100.0/24"

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.store = RecordStore(
            self.clock, {"toy": ToyValidator()}, maxRecords=40, maxPerPeer=3,
            quotaWindow=100, localPeer=ME, maxPerNetwork=10, maxHeldPerNetwork=15,
        )

    def sybils(self, n: int, network: str, tag: str, seq: int = 1) -> int:
        """
        Have C{n} throwaway peers on C{network} each put up to 3 new keys;
        return how many were stored.
        """
        stored = 0
        for i in range(n):
            peer = fakePeer(f"{tag}-sybil-{i}")
            for j in range(3):
                try:
                    self.store.put(b"/toy/%s-%d-%d" % (tag.encode(), i, j),
                                   toyValue(f"{tag}{i}", seq, 1_000_000), peer, network)
                    stored += 1
                except RecordRefused:
                    pass
        return stored

    def test_manyKeysOneNetwork(self) -> None:
        """
        64 throwaway keys on one /24, each within its per-peer quota, store
        only maxPerNetwork records per window; a peer on another /24 still
        stores; the held cap stops the /24 even across windows.
        """
        self.assertEqual(self.sybils(64, self.NET1, "s"), 10)
        with self.assertRaises(RecordRefused) as e:
            self.store.put(b"/toy/another", toyValue("x", 1, 5000), fakePeer("x"), self.NET1)
        self.assertIn(self.NET1, str(e.exception))
        self.assertTrue(self.store.put(b"/toy/alice", toyValue("alice", 1, 5000), A, self.NET2))
        self.assertEqual(self.store.get(b"/toy/alice"), toyValue("alice", 1, 5000))
        # Next window: only up to the held cap (15), not another 10.
        self.clock.advance(100)
        self.assertEqual(self.sybils(64, self.NET1, "t"), 5)
        self.assertEqual(self.store.heldFrom(self.NET1), 15)
        self.clock.advance(100)
        self.assertEqual(self.sybils(64, self.NET1, "u"), 0)
        self.assertEqual(len(self.store), 16)
        # Records from unknown networks still have the per-peer quota.
        self.assertTrue(self.store.put(b"/toy/b", toyValue("b", 1, 5000), B))

    def test_heldCountFollowsRecords(self) -> None:
        """
        Expired and removed records no longer count against their network.
        """
        self.store.put(b"/toy/x", toyValue("a", 1, 1010), A, self.NET1)
        self.store.put(b"/toy/y", toyValue("a", 1, 5000), A, self.NET1)
        self.assertEqual(self.store.heldFrom(self.NET1), 2)
        self.store.remove(b"/toy/y")
        self.assertEqual(self.store.heldFrom(self.NET1), 1)
        self.clock.advance(10)
        self.store.expire()
        self.assertEqual(self.store.heldFrom(self.NET1), 0)

    def test_ownerRefreshWhenFull(self) -> None:
        """
        When many networks have filled the store and the owner is over
        its quotas, the owner's newer value for a key it holds is still
        accepted (from any network); a new key is refused, and the flood
        cannot take the owner's key.
        """
        self.store.put(b"/toy/alice", toyValue("alice", 1, 5000), A, self.NET2)
        for k in range(10):
            net = f"ip4:10.{k}.0.0/24"
            for i in range(4):
                for j in range(3):
                    try:
                        self.store.put(b"/toy/f%d-%d-%d" % (k, i, j), toyValue(f"f{k}{i}", 1, 5000),
                                       fakePeer(f"f{k}-{i}"), net)
                    except RecordRefused:
                        pass
        self.assertEqual(len(self.store), 40)
        with self.assertRaises(RecordRefused):
            self.store.put(b"/toy/new", toyValue("n", 1, 5000), fakePeer("n"), "ip4:192.0.2.0/24")
        # Use up alice's per-peer quota and her network's.
        for j in range(2):
            self.store.remove(b"/toy/f0-0-%d" % j)
            self.store.put(b"/toy/a%d" % j, toyValue("alice", 1, 5000), A, self.NET2)
        self.store.maxPerNetwork = 0
        self.assertEqual(len(self.store), 40)
        with self.assertRaises(RecordRefused):
            self.store.put(b"/toy/a9", toyValue("alice", 1, 5000), A, self.NET2)
        for seq in range(2, 6):
            self.assertTrue(self.store.put(b"/toy/alice", toyValue("alice", seq, 6000), A, self.NET2))
        self.assertEqual(self.store.get(b"/toy/alice"), toyValue("alice", 5, 6000))
        # Relayed by a stranger on a flooded network, also fine.
        self.assertTrue(self.store.put(b"/toy/alice", toyValue("alice", 6, 6000), fakePeer("f0-0"), "ip4:10.0.0.0/24"))
        with self.assertRaises(RecordRefused):
            self.store.put(b"/toy/alice", toyValue("mallory", 9, 6000), fakePeer("m"), "ip4:10.1.0.0/24")
        self.assertEqual(self.store.heldFrom(self.NET2), 3)
        self.assertEqual(len(self.store), 40)
