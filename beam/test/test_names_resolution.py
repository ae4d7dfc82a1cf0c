"""
Tests for the resolution order of L{beam.names.service.NameService} (pin,
cache, LAN, gossip, DHT), its record cache (L{beam.names.cache}) and the
publication of our records on gossip and mDNS, all with fakes on a
L{Clock}.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Optional

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from beam.controlapi import asJSON, fromJSON
from beam.dht.service import NoDHTPeers
from beam.errors import BeamError
from beam.identity.keys import Identity
from beam.identity.multiaddr import Multiaddr
from beam.names.cache import RecordCache
from beam.names.pins import NameKeyChanged
from beam.names.record import dhtKey, makeRecord, openRecord, signRecord
from beam.names.service import CACHE_MAX_AGE, MDNS_TIMEOUT, NameNotFound, NameService
from beam.names.status import NameResolution, ResolveStep

NOW = 1_700_000_000.0
ALICE = Identity.fromSeed(b"\x01" * 32)
MALLORY = Identity.fromSeed(b"\x03" * 32)
ME = Identity.fromSeed(b"\x04" * 32)
LAN = Multiaddr("/ip4/192.0.2.7/tcp/4001")
WAN = Multiaddr("/ip4/198.51.100.7/tcp/4001")


def signed(identity: Identity = ALICE, name: str = "alice", seq: int = 5, addrs: tuple[Multiaddr, ...] = (LAN,),
           now: float = NOW, ttl: float = 3600.0) -> bytes:
    """
    A signed record for C{name}, valid at L{NOW}.
    """
    return signRecord(identity, makeRecord(identity, name, addrs, ["web"], now=now, seq=seq, ttl=ttl))


class FakeDHT:
    """
    What L{NameService} needs of the DHT: answers set per key, after
    C{delay} seconds on the clock, or L{NoDHTPeers}.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.values: dict[bytes, bytes] = {}
        self.asked: list[bytes] = []
        self.put: list[tuple[bytes, bytes]] = []
        self.peers = True
        self.delay = 0.0

    def addValidator(self, namespace: str, validator: Any) -> None:
        pass

    def whenBootstrapped(self) -> Deferred[None]:
        return succeed(None)

    def putValue(self, key: bytes, value: bytes) -> Deferred[int]:
        self.put.append((key, value))
        return succeed(3)

    def getValue(self, key: bytes) -> Deferred[tuple[Optional[bytes], dict[str, Any]]]:
        self.asked.append(key)
        if not self.peers:
            return fail(NoDHTPeers())
        answer = (self.values.get(key), {"queried": 4, "rounds": 2})
        if not self.delay:
            return succeed(answer)
        d: Deferred[tuple[Optional[bytes], dict[str, Any]]] = Deferred()
        self.clock.callLater(self.delay, d.callback, answer)
        return d


class FakeMdns:
    """
    The contract of L{beam.p2p.discovery.mdns.MdnsService} for names: an
    answer after C{delay} seconds, or L{None} at the timeout.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.answers: dict[str, bytes] = {}
        self.asked: list[tuple[str, float]] = []
        self.provider: Any = None
        self.delay = 0.012
        self.enabled = True
        self.idle: Optional[str] = None
        self.error: Optional[Exception] = None
        self.silent = False

    def setNameRecords(self, provider: Any) -> None:
        self.provider = provider

    def resolveName(self, name: str, timeout: float = 1.0) -> Deferred[Optional[bytes]]:
        self.asked.append((name, timeout))
        if self.error is not None:
            return fail(self.error)
        d: Deferred[Optional[bytes]] = Deferred()
        if self.silent:
            return d
        answer = self.answers.get(name)
        self.clock.callLater(self.delay if answer is not None else timeout, d.callback, answer)
        return d


class FakeGossip:
    """
    The contract of L{beam.names.gossip.NameGossip}: what we publish.
    """

    def __init__(self) -> None:
        self.published: list[bytes] = []

    def publish(self, recordBytes: bytes) -> None:
        self.published.append(recordBytes)


class ResolutionTestsMixin:
    """
    A name service over fakes; C{resolve} runs the clock until the answer.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.dht = FakeDHT(self.clock)
        self.mdns = FakeMdns(self.clock)
        self.gossip = FakeGossip()
        self.home = Path(self.mktemp())  # type: ignore[attr-defined]
        self.names = self.makeService()

    def makeService(self, **kw: Any) -> NameService:
        options: dict[str, Any] = dict(mdns=self.mdns, gossip=self.gossip)
        options.update(kw)
        return NameService(self.clock, ME, self.dht, self.home, lambda: [WAN], lambda: ["web"], **options)

    def runUntil(self, d: Deferred[Any]) -> None:
        """
        Advance the clock, one pending call at a time, until C{d} fires.
        """
        while not d.called:
            calls = self.clock.getDelayedCalls()
            if not calls:
                return
            self.clock.advance(max(0.0, min(c.getTime() for c in calls) - self.clock.seconds()))

    def resolve(self, name: str = "alice", acceptNewKey: bool = False) -> NameResolution:
        d = self.names.resolve(name, acceptNewKey)
        self.runUntil(d)
        result: NameResolution = self.successResultOf(d)  # type: ignore[attr-defined]
        return result

    def resolveFails(self, error: type[BaseException], name: str = "alice") -> Any:
        d = self.names.resolve(name)
        self.runUntil(d)
        return self.failureResultOf(d, error).value  # type: ignore[attr-defined]

    def outcomes(self, result: Any) -> list[tuple[str, str]]:
        return [(s.step, s.outcome) for s in result.steps]

    def gossipIn(self, data: bytes) -> None:
        """
        A message on the topic, as L{NameGossip} hands it over.
        """
        record = self.names.validateGossip(data)
        if record is not None:
            self.names.gossipReceived(record, data)


class OrderTests(ResolutionTestsMixin, SynchronousTestCase):
    """
    Pin, cache, LAN, gossip, DHT: each step asked only when the ones
    before missed.
    """

    def test_dhtLast(self) -> None:
        """
        With nothing cached, no LAN answer and no gossip, the DHT answers
        last, after every other step missed; the LAN was asked with the
        short timeout.
        """
        self.dht.values[dhtKey("alice")] = signed()
        result = self.resolve()
        self.assertEqual(result.source, "dht")
        self.assertEqual(self.outcomes(result), [("pin", "miss"), ("cache", "miss"), ("mdns", "miss"),
                                                 ("gossip", "miss"), ("dht", "hit")])
        self.assertEqual(self.mdns.asked, [("alice", MDNS_TIMEOUT)])
        self.assertEqual((result.peerID, result.seq, result.addrs), (str(ALICE.peerID), 5, (str(LAN),)))
        self.assertEqual((result.queried, result.rounds, result.pin), (4, 2, "new"))

    def test_cacheHitAsksNobody(self) -> None:
        """
        A record resolved a moment ago answers from the cache: neither the
        LAN nor the DHT is asked again.
        """
        self.dht.values[dhtKey("alice")] = signed()
        self.resolve()
        result = self.resolve()
        self.assertEqual(result.source, "cache")
        self.assertEqual(self.outcomes(result), [("pin", "hit"), ("cache", "hit")])
        self.assertEqual(len(self.mdns.asked), 1)
        self.assertEqual(len(self.dht.asked), 1)
        self.assertEqual((result.queried, result.rounds, result.pin), (0, 0, "known"))

    def test_freshSkipsTheCache(self) -> None:
        """
        C{fresh=True} (a forward whose host stopped answering asks again)
        passes over the record resolved a moment ago and asks the LAN and
        the DHT anew.
        """
        self.dht.values[dhtKey("alice")] = signed()
        self.resolve()
        d = self.names.resolve("alice", fresh=True)
        self.runUntil(d)
        result = self.successResultOf(d)
        self.assertEqual(result.source, "dht")
        self.assertIn(("cache", "skipped"), self.outcomes(result))
        self.assertEqual(len(self.dht.asked), 2)

    def test_cacheAgesOut(self) -> None:
        """
        After L{CACHE_MAX_AGE} a resolved record is looked up again (its
        owner may have moved), though it has not expired.
        """
        self.dht.values[dhtKey("alice")] = signed()
        self.resolve()
        self.clock.advance(CACHE_MAX_AGE + 1)
        self.assertEqual(self.resolve().source, "dht")
        self.assertEqual(len(self.dht.asked), 2)

    def test_ownNameFromCache(self) -> None:
        """
        Our own registered name answers from the cache step.
        """
        self.successResultOf(self.names.register("me"))
        del self.dht.asked[:]  # registering checked the name's owner
        result = self.resolve("me")
        self.assertEqual((result.source, result.peerID), ("cache", str(ME.peerID)))
        self.assertEqual(self.mdns.asked, [])
        self.assertEqual(self.dht.asked, [])

    def test_mdnsHitSkipsDHT(self) -> None:
        """
        A LAN answer ends the resolution: gossip and the DHT are not
        consulted; its record then answers from the cache.
        """
        self.mdns.answers["alice"] = signed()
        result = self.resolve()
        self.assertEqual(result.source, "mdns")
        self.assertEqual(self.outcomes(result), [("pin", "miss"), ("cache", "miss"), ("mdns", "hit")])
        self.assertEqual(self.dht.asked, [])
        self.assertEqual(self.resolve().source, "cache")

    def test_gossipHit(self) -> None:
        """
        A record pushed on the gossip topic answers when the LAN has none,
        without asking the DHT.
        """
        self.gossipIn(signed(seq=9))
        result = self.resolve()
        self.assertEqual((result.source, result.seq), ("gossip", 9))
        self.assertEqual(self.outcomes(result), [("pin", "miss"), ("cache", "miss"), ("mdns", "miss"),
                                                 ("gossip", "hit")])
        self.assertEqual(self.dht.asked, [])

    def test_gossipsOwnCache(self) -> None:
        """
        A record only gossip's own cache still holds (ours forgot it)
        answers the gossip step, opened and pin-checked again.
        """
        held = {"alice": (None, signed(seq=4)), "bob": (None, b"junk")}
        self.gossip.cached = held.get  # type: ignore[attr-defined]
        result = self.resolve()
        self.assertEqual((result.source, result.seq), ("gossip", 4))
        self.assertEqual(self.dht.asked, [])
        self.dht.values[dhtKey("bob")] = signed(name="bob")
        result = self.resolve("bob")
        self.assertTrue(result.steps[3].outcome.startswith("error: "), result.steps[3])
        self.assertEqual(result.source, "dht")

    def test_mdnsDisabledOrAbsent(self) -> None:
        """
        A switched-off or idle (loopback-only) mDNS service, or none, is
        skipped without waiting; so is gossip when the node has none.
        """
        self.dht.values[dhtKey("alice")] = signed()
        self.mdns.enabled = False
        result = self.resolve()
        self.assertEqual(self.outcomes(result)[2], ("mdns", "skipped"))
        self.assertEqual(self.mdns.asked, [])
        self.assertEqual(result.steps[2].ms, 0.0)
        self.mdns.enabled = True
        self.mdns.idle = "the node listens on loopback only"
        self.names.cache.discard("alice")
        self.assertEqual(self.outcomes(self.resolve())[2], ("mdns", "skipped"))
        self.assertEqual(self.mdns.asked, [])

        self.names = self.makeService(mdns=None, gossip=None)
        result = self.resolve("alice", acceptNewKey=True)
        self.assertEqual(self.outcomes(result), [("pin", "skipped"), ("cache", "miss"), ("mdns", "skipped"),
                                                 ("gossip", "skipped"), ("dht", "hit")])

    def test_mdnsErrors(self) -> None:
        """
        An mDNS question that fails, or never fires, is an error step and
        the next steps are tried; the silent one costs little more than the
        mDNS timeout.
        """
        self.dht.values[dhtKey("alice")] = signed()
        self.mdns.error = BeamError("no multicast")
        result = self.resolve()
        self.assertEqual(self.outcomes(result)[2], ("mdns", "error: no multicast"))
        self.assertEqual(result.source, "dht")

        self.names = self.makeService()
        self.mdns.error = None
        self.mdns.silent = True
        result = self.resolve()
        step = result.steps[2]
        self.assertEqual(step.step, "mdns")
        self.assertTrue(step.outcome.startswith("error: "), step)
        self.assertLess(step.ms, (MDNS_TIMEOUT + 0.5) * 1000)
        self.assertEqual(result.source, "dht")


class TimingTests(ResolutionTestsMixin, SynchronousTestCase):
    """
    Each step's time, on the injected clock.
    """

    def test_timesPerStep(self) -> None:
        """
        The LAN's wait, the DHT's lookup and the total are measured on the
        clock: a miss on the LAN costs the mDNS timeout, and the total is
        the sum of the steps.
        """
        self.dht.values[dhtKey("alice")] = signed()
        self.dht.delay = 0.3
        result = self.resolve()
        ms = {s.step: s.ms for s in result.steps}
        self.assertEqual(ms["mdns"], MDNS_TIMEOUT * 1000)
        self.assertAlmostEqual(ms["dht"], 300.0, places=3)
        self.assertEqual((ms["pin"], ms["cache"], ms["gossip"]), (0.0, 0.0, 0.0))
        self.assertAlmostEqual(result.elapsedMs, sum(ms.values()), places=3)

    def test_lanAnswerTime(self) -> None:
        """
        A LAN answer after 12 ms is a 12 ms step, well inside a second.
        """
        self.mdns.answers["alice"] = signed()
        result = self.resolve()
        self.assertAlmostEqual(result.steps[-1].ms, 12.0, places=3)
        self.assertAlmostEqual(result.elapsedMs, 12.0, places=3)


class ValidationTests(ResolutionTestsMixin, SynchronousTestCase):
    """
    Every answer is opened with the DHT's rules and filtered by the pin.
    """

    def pin(self, identity: Identity = ALICE) -> None:
        self.names.pins.accept("alice", identity.peerID)

    def test_forgedLanAnswerRejected(self) -> None:
        """
        With C{alice} pinned, a LAN answer signed by another key (a valid
        record of its own) is rejected and the next steps are tried: the
        DHT gives the pinned owner's record.
        """
        self.pin()
        self.mdns.answers["alice"] = signed(MALLORY, seq=99)
        self.dht.values[dhtKey("alice")] = signed()
        result = self.resolve()
        self.assertEqual((result.source, result.peerID, result.pin), ("dht", str(ALICE.peerID), "known"))
        self.assertEqual(self.outcomes(result)[2],
                         ("mdns", f"error: signed by {MALLORY.peerID}, not the pinned key"))
        self.assertEqual(self.names.cache.get("alice").record.peer, ALICE.peerID)  # type: ignore[union-attr]

    def test_otherKeyEverywhere(self) -> None:
        """
        When every answer is another key's, the resolution fails with the
        key-changed warning (as before the LAN and gossip steps), and the
        error carries the steps.
        """
        self.pin()
        self.mdns.answers["alice"] = signed(MALLORY)
        self.dht.values[dhtKey("alice")] = signed(MALLORY)
        error = self.resolveFails(NameKeyChanged)
        self.assertEqual((error.old, error.new), (ALICE.peerID, MALLORY.peerID))
        self.assertEqual([s.step for s in error.steps], ["pin", "cache", "mdns", "gossip", "dht"])
        accepted = self.resolve(acceptNewKey=True)
        self.assertEqual((accepted.peerID, accepted.pin), (str(MALLORY.peerID), "accepted"))

    def test_invalidLanAnswer(self) -> None:
        """
        LAN bytes that do not open (garbage, another name's record, an
        expired record) are error steps; the DHT answers.
        """
        self.dht.values[dhtKey("alice")] = signed()
        for bad in (b"\x00garbage", signed(name="bob"), signed(now=NOW - 7200)):
            self.names.cache.discard("alice")
            self.mdns.answers["alice"] = bad
            result = self.resolve()
            step = result.steps[2]
            self.assertEqual(step.step, "mdns")
            self.assertTrue(step.outcome.startswith("error: "), step)
            self.assertEqual(result.source, "dht")

    def test_olderSeqIgnored(self) -> None:
        """
        A LAN answer or a gossip message older than the record held is
        ignored; the newer one stays and answers.
        """
        self.gossipIn(signed(seq=7))
        self.mdns.answers["alice"] = signed(seq=6)
        result = self.resolve()
        self.assertEqual(self.outcomes(result)[2:], [("mdns", "miss"), ("gossip", "hit")])
        self.assertEqual(result.seq, 7)
        self.gossipIn(signed(seq=6))
        self.assertEqual(self.names.cache.get("alice").record.seq, 7)  # type: ignore[union-attr]
        self.gossipIn(signed(seq=8))
        self.assertEqual(self.names.cache.get("alice").record.seq, 8)  # type: ignore[union-attr]

    def test_gossipValidation(self) -> None:
        """
        Gossip's validator refuses (so gossip rejects and penalises) a
        record that does not open, or that claims a name held live for
        another key by our own registration or by the DHT's answer; a
        valid record it returns, and the cache keeps it only if it beats
        the one held and passes the pin.
        """
        self.assertIsNone(self.names.validateGossip(b"junk"))
        self.assertIsNone(self.names.validateGossip(signed(now=NOW - 7200)))
        self.successResultOf(self.names.register("me"))
        self.assertIsNone(self.names.validateGossip(signed(MALLORY, "me")))
        self.dht.values[dhtKey("alice")] = signed(seq=3)
        self.resolve()
        self.assertIsNone(self.names.validateGossip(signed(MALLORY, seq=50)))

        self.names.cache.discard("alice")
        self.gossipIn(signed(seq=3))
        self.assertIsNotNone(self.names.validateGossip(signed(MALLORY, seq=50)))
        self.gossipIn(signed(MALLORY, seq=50))
        self.assertEqual(self.names.cache.get("alice").record.peer, ALICE.peerID)  # type: ignore[union-attr]
        # The pinned key's record replaces another key's live claim; the
        # other key's records are then passed over.
        self.pin(MALLORY)
        self.gossipIn(signed(MALLORY, seq=50))
        self.assertEqual(self.names.cache.get("alice").record.peer, MALLORY.peerID)  # type: ignore[union-attr]
        self.gossipIn(signed(ALICE, seq=60))
        self.assertEqual(self.names.cache.get("alice").record.peer, MALLORY.peerID)  # type: ignore[union-attr]

    def test_isolatedLan(self) -> None:
        """
        With no DHT peers, the LAN still answers: no "knows no DHT peers"
        and the DHT is not even asked.  When the LAN is silent too, that
        error comes, with every step listed.
        """
        self.dht.peers = False
        self.mdns.answers["alice"] = signed()
        result = self.resolve()
        self.assertEqual(result.source, "mdns")
        self.assertEqual(self.dht.asked, [])

        error = self.resolveFails(NoDHTPeers, "bob")
        self.assertEqual([(s.step, s.outcome.split(":")[0]) for s in error.steps],
                         [("pin", "miss"), ("cache", "miss"), ("mdns", "miss"), ("gossip", "miss"),
                          ("dht", "error")])

    def test_notFound(self) -> None:
        """
        Every step missing: the DHT's not-found message, unchanged.
        """
        error = self.resolveFails(NameNotFound, "bob")
        self.assertEqual(str(error), "no record for the name 'bob' was found (asked 4 peers)")
        self.assertEqual(error.steps[-1], ResolveStep(step="dht", ms=0.0, outcome="miss"))


class PublishTests(ResolutionTestsMixin, SynchronousTestCase):
    """
    Our records go to gossip on every publication and to mDNS on demand.
    """

    def test_registerGossipsAndFeedsMdns(self) -> None:
        """
        Registering pushes exactly the bytes PUT to the DHT on gossip, and
        the mDNS provider hands out the same bytes; a republish pushes the
        new record again.
        """
        self.names.startService()
        self.successResultOf(self.names.register("me"))
        ((key, value),) = self.dht.put
        self.assertEqual(self.gossip.published, [value])
        self.assertEqual(self.mdns.provider(), {"me": value})
        self.clock.advance(self.names.republishInterval)
        self.assertEqual(len(self.gossip.published), 2)
        self.assertEqual(self.gossip.published[1], self.dht.put[1][1])
        self.assertGreater(openRecord(self.gossip.published[1], self.clock.seconds()).seq,
                           openRecord(value, self.clock.seconds()).seq)
        self.assertEqual(self.mdns.provider(), {"me": self.gossip.published[1]})
        self.names.stopService()

    def test_withdrawGossips(self) -> None:
        """
        Withdrawing gossips the short-lived empty record, mDNS stops
        answering for the name, and our own resolve says it was withdrawn.
        """
        self.successResultOf(self.names.register("me"))
        self.successResultOf(self.names.withdraw("me"))
        withdrawn = openRecord(self.gossip.published[-1], self.clock.seconds())
        self.assertEqual((withdrawn.addrs, withdrawn.services), ((), ()))
        self.assertEqual(self.mdns.provider(), {})
        error = self.resolveFails(NameNotFound, "me")
        self.assertIn("withdrawn", str(error))

    def test_gossipFailureDoesNotStopPublishing(self) -> None:
        """
        A gossip publish that raises is logged; the DHT put still happens.
        """
        def broken(data: bytes) -> None:
            raise RuntimeError("mesh down")

        self.gossip.publish = broken  # type: ignore[method-assign, assignment]
        status = self.successResultOf(self.names.register("me"))
        self.assertEqual(status.storedOn, 3)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_attachGossipLater(self) -> None:
        """
        Gossip attached after construction (the daemon makes it with the
        service's validator) is used from then on.
        """
        names = self.makeService(gossip=None)
        later = FakeGossip()
        names.attachGossip(later)
        self.successResultOf(names.register("me"))
        self.assertEqual(len(later.published), 1)


class CacheTests(SynchronousTestCase):
    """
    L{RecordCache}: one best record per name, bounded, expiring.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.cache = RecordCache(self.clock, maxEntries=3)

    def offer(self, data: bytes, source: str = "dht", **kw: Any) -> Optional[str]:
        return self.cache.offer(openRecord(data, self.clock.seconds()), data, source, **kw)

    def test_bestSeqPerName(self) -> None:
        """
        A higher seq from the owner replaces; a lower one is refused; an
        equal one refreshes the time only when asked for (not from gossip).
        """
        self.assertIsNone(self.offer(signed(seq=5)))
        self.assertIn("older", self.offer(signed(seq=4), "mdns") or "")
        self.clock.advance(5)
        self.assertIn("older", self.offer(signed(seq=5), "gossip") or "")
        self.assertEqual(self.cache.get("alice").received, NOW)  # type: ignore[union-attr]
        self.assertIsNone(self.offer(signed(seq=5), "mdns"))
        self.assertEqual(self.cache.get("alice").received, NOW + 5)  # type: ignore[union-attr]
        self.assertIsNone(self.offer(signed(seq=6), "gossip"))
        self.assertEqual(self.cache.get("alice").source, "gossip")  # type: ignore[union-attr]

    def test_firstClaimant(self) -> None:
        """
        Another key's record is refused while the held claim lives, unless
        it comes from the DHT or the pinned key; once the claim expires,
        anyone may take the name.
        """
        self.offer(signed(seq=5, ttl=60))
        self.assertIn("another key", self.offer(signed(MALLORY, seq=9), "gossip") or "")
        self.assertIn("another key", self.offer(signed(MALLORY, seq=9), "mdns") or "")
        self.assertIsNone(self.offer(signed(MALLORY, seq=9), "mdns", preferred=True))
        self.assertIsNone(self.offer(signed(ALICE, seq=1, ttl=60), "dht"))
        self.clock.advance(61)
        self.assertIsNone(self.cache.get("alice"))
        self.assertIsNone(self.offer(signed(MALLORY, seq=10, now=NOW + 61), "gossip"))

    def test_boundedLRUKeepsOwn(self) -> None:
        """
        Past C{maxEntries} the least recently used name goes, never one of
        our own.
        """
        self.offer(signed(ME, "me"), "self")
        self.offer(signed(name="a1"))
        self.offer(signed(name="a2"))
        self.cache.get("a1")
        self.offer(signed(name="a3"))
        self.assertEqual(len(self.cache), 3)
        self.assertIsNone(self.cache.get("a2"))
        self.assertEqual({e.record.name for e in self.cache}, {"me", "a1", "a3"})
        self.assertEqual(self.cache.status(), {"names": 3, "self": 1, "dht": 2})

    def test_ownRecordEchoed(self) -> None:
        """
        Our own record coming back through the network stays ours.
        """
        data = signed(ME, "me")
        self.offer(data, "self")
        self.assertIsNone(self.offer(data, "mdns"))
        self.assertEqual(self.cache.get("me").source, "self")  # type: ignore[union-attr]


class ShapeTests(ResolutionTestsMixin, SynchronousTestCase):
    """
    What the control API and C{beam resolve} show.
    """

    def test_json(self) -> None:
        """
        A resolution's JSON has C{source} and a C{steps} list of
        C{{step, ms, outcome}}, and reads back unchanged.
        """
        self.mdns.answers["alice"] = signed()
        result = self.resolve()
        data = asJSON(result)
        self.assertEqual(data["source"], "mdns")
        self.assertEqual(data["steps"], [
            {"step": "pin", "ms": 0.0, "outcome": "miss"},
            {"step": "cache", "ms": 0.0, "outcome": "miss"},
            {"step": "mdns", "ms": 12.0, "outcome": "hit"},
        ])
        self.assertEqual(fromJSON(NameResolution, json.loads(json.dumps(data))), result)
        self.assertEqual(fromJSON(NameResolution, {"name": "x", "peer_id": "p"}).steps, ())

    def test_resource(self) -> None:
        """
        C{GET /v1/names/alice} renders the resolution with its steps.
        """
        from twisted.web.test.requesthelper import DummyRequest

        from beam.names.resource import NamesResource

        self.mdns.answers["alice"] = signed()
        request = DummyRequest([b"alice"])
        request.method = b"GET"
        resource = NamesResource(self.names).getChild(b"alice", request)  # type: ignore[arg-type]
        resource.render(request)
        self.runUntil(request.notifyFinish())
        body = json.loads(b"".join(request.written))
        self.assertEqual(body["source"], "mdns")
        self.assertEqual([s["step"] for s in body["steps"]], ["pin", "cache", "mdns"])

    def test_cliText(self) -> None:
        """
        C{beam resolve} prints one line: the step that answered, the total,
        each lookup step's outcome and time, the DHT's peers when it was
        asked, and the key's state.
        """
        from beam.cli import _Out, _resolvedText

        self.mdns.answers["alice"] = signed()
        text = _resolvedText(asJSON(self.resolve()))
        self.assertEqual(text.splitlines(), [
            f"alice -> {ALICE.peerID}",
            f"  {LAN}",
            "  services: web",
            "  found via mdns in 12.0 ms (cache miss 0.0 ms, mdns hit 12.0 ms); key new",
        ])
        self.names.cache.discard("alice")
        del self.mdns.answers["alice"]
        self.dht.values[dhtKey("alice")] = signed()
        text = _resolvedText(asJSON(self.resolve()))
        self.assertIn("found via dht in 500.0 ms (cache miss 0.0 ms, mdns miss 500.0 ms, gossip miss 0.0 ms,"
                      " dht hit 0.0 ms), asked 4 peers (2 rounds); key known", text)
        # An older node's answer, without steps.
        old = {"name": "a", "peer_id": "p", "addrs": [], "services": [], "source": "dht", "elapsed_ms": 3.0,
               "queried": 2, "rounds": 1, "pin": "new"}
        self.assertIn("found via dht in 3.0 ms, asked 2 peers (1 rounds); key new", _resolvedText(old))
        stream = io.StringIO()
        _Out(stream, True).event(asJSON(self.resolve()), "")
        self.assertEqual(json.loads(stream.getvalue())["steps"][1], {"step": "cache", "ms": 0.0, "outcome": "hit"})


class WiringTests(ResolutionTestsMixin, SynchronousTestCase):
    """
    C{builtins.makeNames} hands the name service the daemon's mDNS and
    gossip.
    """

    def makeNames(self, pubsub: Any) -> NameService:
        from beam.daemon.builtins import makeNames

        class Tunnels:
            publicServices = ["web"]
            changeObservers: list[Any] = []

        class Host:
            def advertisedAddrs(self) -> list[Multiaddr]:
                return [WAN]

        services: dict[str, Any] = {"tunnels": Tunnels(), "kademlia": self.dht, "mdns": self.mdns,
                                    "pubsub": pubsub}

        class Context:
            reactor = self.clock
            identity = ME
            home = self.home
            host = Host()

            def service(self, name: str) -> Any:
                return services[name]

            def optionsFor(self, name: str) -> dict[str, Any]:
                return {}

        Context.services = services  # type: ignore[attr-defined]
        return makeNames(Context())  # type: ignore[arg-type,return-value]

    def test_wired(self) -> None:
        """
        The mDNS service gets our records' provider; a running pubsub gets
        the C{beam-names} topic with the service's validator, and our
        records go out on it; a switched-off pubsub gets nothing.
        """
        from beam.names.gossip import TOPIC

        class PubSub:
            enabled = True

            def __init__(self) -> None:
                self.subscribed: list[str] = []
                self.validators: dict[str, Any] = {}
                self.published: list[tuple[str, bytes]] = []

            def subscribe(self, topic: str, handler: Any) -> None:
                self.subscribed.append(topic)

            def setValidator(self, topic: str, fn: Any) -> None:
                self.validators[topic] = fn

            def publish(self, topic: str, data: bytes) -> None:
                self.published.append((topic, data))

        pubsub = PubSub()
        names = self.makeNames(pubsub)
        self.assertEqual(self.mdns.provider, names.signedRecords)
        self.assertEqual(pubsub.subscribed, [TOPIC])
        self.successResultOf(names.register("me"))
        self.assertEqual(pubsub.published, [(TOPIC, self.dht.put[0][1])])

        off = PubSub()
        off.enabled = False
        self.assertIsNone(self.makeNames(off).gossip)
        self.assertEqual(off.subscribed, [])
