"""
Tests for L{beam.dht.store}: validation, replacement, expiry, quotas.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from beam.dht.messages import MAX_VALUE_BYTES
from beam.dht.store import IValidator, RecordStore, namespaceOf
from beam.errors import InvalidRecord, RecordRefused
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
