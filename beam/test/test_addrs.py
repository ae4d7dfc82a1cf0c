"""
Tests for L{beam.p2p.host.addrs}: the node's own addresses (observed,
confirmed, relayed), libp2p's address filtering in both directions, and
how identify and the peer store use them.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from beam.identity.keys import Identity
from beam.identity.multiaddr import Multiaddr
from beam.p2p.host.addrs import (
    MAX_OBSERVED,
    MAX_OBSERVERS,
    MAX_VERDICTS,
    AddressBook,
    addrScope,
    observerGroup,
    reachableFrom,
)
from beam.p2p.host.peerstore import PeerStore
from beam.p2p.host.status import nodeStatus
from beam.test.memnodes import MemoryGrid


def ma(text: str) -> Multiaddr:
    return Multiaddr.fromString(text)


PUBLIC = ma("/ip4/203.0.113.5/tcp/4001")
PRIVATE = ma("/ip4/198.51.100.5/tcp/4001")
LOOPBACK = ma("/ip4/127.0.0.1/tcp/4001")
MEMORY = ma("/memory/7")
RELAY = ma("/ip4/203.0.113.9/tcp/4001/p2p/" + str(Identity.generate().peerID) + "/p2p-circuit")


def book(*listen: Multiaddr, threshold: int = 2) -> AddressBook:
    return AddressBook(listenAddrs=lambda: list(listen), observerThreshold=threshold)


class ScopeTests(SynchronousTestCase):
    """
    L{addrScope} with the documentation ranges the NAT lab uses.
    """

    def test_documentationRanges(self) -> None:
        """
        TEST-NET-3 (203.0.113.0/24, the lab's Internet) and TEST-NET-1 are
        public; TEST-NET-2 (198.51.100.0/24, the lab's home LANs) and the
        carrier-grade NAT range are private.
        """
        self.assertEqual(addrScope(ma("/ip4/203.0.113.77/tcp/1")), "public")
        self.assertEqual(addrScope(ma("/ip4/192.0.2.1/tcp/1")), "public")
        self.assertEqual(addrScope(ma("/ip4/198.51.100.77/tcp/1")), "private")
        self.assertEqual(addrScope(ma("/ip4/100.64.0.1/tcp/1")), "private")
        self.assertEqual(addrScope(ma("/ip4/0.0.0.0/tcp/1")), "invalid")
        self.assertEqual(addrScope(MEMORY), "other")


class ObservationTests(SynchronousTestCase):
    """
    Observed addresses become candidates once enough distinct observers
    report them, within fixed bounds.
    """

    def test_threshold(self) -> None:
        """
        One observer reporting an address any number of times does not make
        it a candidate; a second distinct observer does, and observers of
        the change hear of it once.
        """
        b = book()
        changes: list[None] = []
        b.onChange(lambda: changes.append(None))
        seen = ma("/ip4/203.0.113.50/tcp/4001")
        for _ in range(5):
            b.observe(seen, "peer-1")
        self.assertEqual(b.candidates(), [])
        self.assertEqual(b.observed(), {seen: 1})
        b.observe(seen.withPeerID(Identity.generate().peerID), "peer-2")
        self.assertEqual(b.candidates(), [seen])
        b.observe(seen, "peer-3")
        self.assertEqual(len(changes), 1)

    def test_onlyPublicCandidates(self) -> None:
        """
        Private and loopback observed addresses are never candidates, and
        unspecified ones are not even recorded.
        """
        b = book()
        for peer in ("a", "b", "c"):
            b.observe(PRIVATE, peer)
            b.observe(LOOPBACK, peer)
            b.observe(ma("/ip4/0.0.0.0/tcp/1"), peer)
        self.assertEqual(b.candidates(), [])
        self.assertEqual(set(b.observed()), {PRIVATE, LOOPBACK})

    def test_publicListenAddressIsCandidate(self) -> None:
        """
        A public listen address is a candidate for AutoNAT from the start;
        private and loopback ones are not.
        """
        self.assertEqual(book(PUBLIC, PRIVATE, LOOPBACK).candidates(), [PUBLIC])

    def test_boundedMemory(self) -> None:
        """
        10,000 random observations by random observers leave at most
        L{MAX_OBSERVED} addresses with at most L{MAX_OBSERVERS} observers
        each, and a candidate seen by many keeps its place.
        """
        rng = random.Random(9)
        b = book()
        steady = ma("/ip4/203.0.113.1/tcp/4001")
        for i in range(5):
            b.observe(steady, f"steady-{i}")
        for i in range(10_000):
            addr = ma(f"/ip4/203.0.{rng.randrange(256)}.{rng.randrange(1, 255)}/tcp/{rng.randrange(1, 65536)}")
            b.observe(addr, rng.randrange(1 << 30))
            if i % 10 == 0:
                b.observe(steady, rng.randrange(1 << 30))
        observed = b.observed()
        self.assertLessEqual(len(observed), MAX_OBSERVED)
        self.assertEqual(observed[steady], MAX_OBSERVERS)
        self.assertTrue(all(n <= MAX_OBSERVERS for n in observed.values()))

    def test_observerGroup(self) -> None:
        """
        Observers are grouped by IPv4 address and IPv6 /56; peers without
        an IP address count by peer ID.
        """
        self.assertEqual(observerGroup(ma("/ip4/203.0.113.4/tcp/1"), "p"), "203.0.113.4")
        self.assertEqual(
            observerGroup(ma("/ip6/2001:db8:0:12::1/tcp/1"), "p"),
            observerGroup(ma("/ip6/2001:db8:0:34::9/tcp/2"), "q"),
        )
        self.assertEqual(observerGroup(ma("/ip6/2001:db8:0:12::1/tcp/1"), "p"), "2001:db8::/56")
        self.assertEqual(observerGroup(MEMORY, "p"), "p")
        self.assertEqual(observerGroup(None, "p"), "p")


class VerdictTests(SynchronousTestCase):
    """
    AutoNAT's verdicts: confirmed and rejected addresses, and reachability.
    """

    def test_confirmThenReject(self) -> None:
        """
        A confirmed address makes the node public and leaves the
        candidates; rejecting the only confirmed address makes it private.
        """
        b = book(PUBLIC)
        self.assertEqual(b.reachability, "unknown")
        self.assertFalse(b.hasReachableAddress())
        b.confirm(PUBLIC)
        self.assertEqual((b.reachability, b.confirmed(), b.candidates()), ("public", [PUBLIC], []))
        self.assertTrue(b.hasReachableAddress())
        b.reject(PUBLIC)
        self.assertEqual((b.reachability, b.confirmed(), b.rejected()), ("private", [], [PUBLIC]))
        self.assertEqual(b.candidates(), [])
        self.assertFalse(b.hasReachableAddress())

    def test_rejectOneOfTwo(self) -> None:
        """
        Rejecting one address while another stays confirmed keeps the node
        public.
        """
        other = ma("/ip4/203.0.113.6/tcp/4001")
        b = book()
        b.confirm(PUBLIC)
        b.confirm(other)
        b.reject(other)
        self.assertEqual((b.reachability, b.confirmed()), ("public", [PUBLIC]))

    def test_oneNotificationPerChange(self) -> None:
        """
        A confirmation that also changes the reachability notifies once; a
        repeated one not at all.
        """
        b = book()
        changes: list[None] = []
        b.onChange(lambda: changes.append(None))
        b.confirm(PUBLIC)
        b.confirm(PUBLIC)
        self.assertEqual(len(changes), 1)

    def test_verdictsBounded(self) -> None:
        """
        At most L{MAX_VERDICTS} confirmed and rejected addresses are
        remembered; the oldest go first.
        """
        b = book()
        addrs = [ma(f"/ip4/203.0.113.{i}/tcp/4001") for i in range(1, 101)]
        for a in addrs:
            b.reject(a)
            b.confirm(ma(str(a) + "0"))
        self.assertEqual(b.rejected(), addrs[-MAX_VERDICTS:])
        self.assertEqual(len(b.confirmed()), MAX_VERDICTS)

    def test_observerErrorsContained(self) -> None:
        """
        An observer that raises is logged and the others still hear.
        """
        b = book()
        heard: list[None] = []

        def bad() -> None:
            raise RuntimeError("boom")

        b.onChange(bad)
        b.onChange(lambda: heard.append(None))
        b.setReachability("private")
        self.assertEqual(len(heard), 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class FilteringTests(SynchronousTestCase):
    """
    What we tell whom (L{AddressBook.advertisedFor}), what we keep of what
    peers tell us (L{reachableFrom}), and what we share with anyone.
    """

    def setUp(self) -> None:
        self.book = book(LOOPBACK, PRIVATE, PUBLIC, MEMORY)
        self.confirmed = ma("/ip4/203.0.113.200/tcp/4001")
        self.book.confirm(self.confirmed)
        self.book.setRelayAddrs([RELAY, RELAY])

    def test_publicPeer(self) -> None:
        """
        A peer across the Internet (203.0.113.x) hears the confirmed and
        public addresses, non-IP ones and relay ones; no private or
        loopback address.
        """
        self.assertEqual(
            self.book.advertisedFor(ma("/ip4/203.0.113.80/tcp/5000")),
            [self.confirmed, PUBLIC, MEMORY, RELAY],
        )
        self.assertEqual(self.book.advertisedFor(None), [self.confirmed, PUBLIC, MEMORY, RELAY])

    def test_privatePeer(self) -> None:
        """
        A peer on a private network (198.51.100.x) also hears private
        addresses, not loopback ones.
        """
        self.assertEqual(
            self.book.advertisedFor(ma("/ip4/198.51.100.80/tcp/5000")),
            [self.confirmed, PRIVATE, PUBLIC, MEMORY, RELAY],
        )

    def test_loopbackPeer(self) -> None:
        """
        A peer on this machine hears everything.
        """
        self.assertEqual(
            self.book.advertisedFor(ma("/ip4/127.0.0.1/tcp/5000")),
            [self.confirmed, LOOPBACK, PRIVATE, PUBLIC, MEMORY, RELAY],
        )

    def test_relayAddrsByKind(self) -> None:
        """
        C{relayAddrs()} gives every kind, circuit first; C{relayAddrs(kind)}
        only that kind's (what a hole punch offers of a TURN allocation),
        empty for a kind never set.
        """
        turn = ma("/ip4/203.0.113.30/tcp/50000")
        self.book.setRelayAddrs([turn], kind="turn")
        self.assertEqual(self.book.relayAddrs(), [RELAY, turn])
        self.assertEqual(self.book.relayAddrs(kind="turn"), [turn])
        self.assertEqual(self.book.relayAddrs(kind="circuit"), [RELAY])
        self.assertEqual(self.book.relayAddrs(kind="other"), [])
        self.book.setRelayAddrs([], kind="turn")
        self.assertEqual(self.book.relayAddrs(kind="turn"), [])

    def test_relayedPeer(self) -> None:
        """
        A peer reached through a relay (a non-IP remote address) is treated
        as a stranger on the Internet.
        """
        self.assertEqual(self.book.advertisedFor(RELAY), [self.confirmed, PUBLIC, MEMORY, RELAY])

    def test_shareableOrder(self) -> None:
        """
        Shareable addresses: confirmed, relay, then listen addresses public,
        non-IP, private, loopback.
        """
        self.assertEqual(self.book.shareable(), [self.confirmed, RELAY, PUBLIC, MEMORY, PRIVATE, LOOPBACK])

    def test_reachableFrom(self) -> None:
        """
        Of what a peer says, we keep what we can reach from where it is:
        loopback only over loopback, private over private or loopback,
        DNS names only from a peer that may name private addresses,
        unspecified never.
        """
        said = [LOOPBACK, PRIVATE, PUBLIC, MEMORY, ma("/dns4/example.com/tcp/1"), ma("/ip4/0.0.0.0/tcp/1"),
                ma("/ip4/224.0.0.1/tcp/1"), PUBLIC]
        dns = said[4]
        self.assertEqual(reachableFrom(said, ma("/ip4/203.0.113.1/tcp/1")), [PUBLIC, MEMORY])
        self.assertEqual(reachableFrom(said, ma("/ip4/198.51.100.1/tcp/1")), [PRIVATE, PUBLIC, MEMORY, dns])
        self.assertEqual(reachableFrom(said, ma("/ip6/::1/tcp/1")), [LOOPBACK, PRIVATE, PUBLIC, MEMORY, dns])
        self.assertEqual(reachableFrom(said, None), [PUBLIC, MEMORY])


class PeerStoreTests(SynchronousTestCase):
    """
    The peer store never keeps an address nobody can dial.
    """

    def test_invalidDropped(self) -> None:
        """
        Unspecified and multicast addresses are dropped whatever their
        source; the others are kept.
        """
        store = PeerStore(Clock())
        peer = Identity.generate().peerID
        store.addAddrs(peer, [ma("/ip4/0.0.0.0/tcp/1"), ma("/ip6/::/tcp/1"), ma("/ip4/224.0.0.1/tcp/1"), PUBLIC,
                              LOOPBACK], "user")
        self.assertEqual(set(store.addrs(peer)), {PUBLIC, LOOPBACK})


def warnings(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """
    The events of C{events} that are the node's no-address warning.
    """
    return [e for e in events if "no public address yet" in e.get("log_format", "")]


class NodeAddressTests(SynchronousTestCase):
    """
    A node's addresses in identify and in its peer store, on the memory
    grid.
    """

    def setUp(self) -> None:
        self.grid = MemoryGrid(self)

    def fakeListen(self, node: Any) -> None:
        """
        Give C{node} listen addresses of every scope beside its memory one
        (the address book reads the node's listen addresses when asked).
        """
        node.listenAddrs.extend([LOOPBACK, PRIVATE, PUBLIC])

    def test_identifySendsFiltered(self) -> None:
        """
        A node answering identify tells a peer on the Internet only its
        public and non-IP addresses, and a peer on its LAN its private ones
        too; loopback ones to neither.
        """
        a, b = self.grid.node(), self.grid.node()
        self.fakeListen(b)
        self.grid.result(a.connect(self.grid.addr(b)))
        theirs = b.connections[a.peerID]
        theirs.observedRemote = ma("/ip4/203.0.113.80/tcp/5000")
        info = self.grid.result(a.identifyPeer(b.peerID))
        self.assertEqual(list(info.listenAddrs), [self.grid.addr(b, withPeer=False), PUBLIC])
        theirs.observedRemote = ma("/ip4/198.51.100.80/tcp/5000")
        info = self.grid.result(a.identifyPeer(b.peerID))
        self.assertEqual(list(info.listenAddrs), [self.grid.addr(b, withPeer=False), PRIVATE, PUBLIC])

    def test_peerStoreFiltered(self) -> None:
        """
        Of the addresses a peer announces, the peer store keeps those we can
        reach from where its connection comes from: over a private network
        its private and public ones, never its loopback one.
        """
        a, b = self.grid.node(), self.grid.node()
        self.fakeListen(b)
        self.grid.result(a.connect(self.grid.addr(b)))
        # b tells a loopback peer everything; a sees b on its LAN.
        b.connections[a.peerID].observedRemote = ma("/ip4/127.0.0.1/tcp/5000")
        a.connections[b.peerID].observedRemote = ma("/ip4/198.51.100.81/tcp/4001")
        self.grid.result(a.identifyPeer(b.peerID))
        kept = set(a.peerStore.addrs(b.peerID))
        self.assertIn(PRIVATE, kept)
        self.assertIn(PUBLIC, kept)
        self.assertNotIn(LOOPBACK, kept)

    def test_observedByTwoPeers(self) -> None:
        """
        When two peers say they see us at the same public address, it
        becomes a candidate of our address book and shows in the status,
        as do the reachability and relay addresses; the status' addresses
        include confirmed and relay ones.
        """
        a, b, c = self.grid.node(), self.grid.node(), self.grid.node()
        seen = ma("/ip4/203.0.113.44/tcp/4001")
        for other in (b, c):
            self.grid.result(a.connect(self.grid.addr(other)))
            other.connections[a.peerID].observedRemote = seen
            self.grid.result(a.identifyPeer(other.peerID))
        self.assertEqual(a.observedAddrs[seen], 2)
        self.assertEqual(a.addresses.candidates(), [seen])
        a.addresses.confirm(seen)
        a.addresses.setRelayAddrs([RELAY])
        status = nodeStatus(a)
        self.assertEqual(status.reachability, "public")
        self.assertEqual(status.confirmedAddrs, (str(seen),))
        self.assertEqual(status.candidateAddrs, ())
        self.assertEqual(status.relayAddrs, (str(RELAY),))
        self.assertIn(str(seen.withPeerID(a.peerID)), status.addrs)
        self.assertIn(str(RELAY.withPeerID(a.peerID)), status.addrs)
        self.assertEqual(a.shareableAddrs()[:2], [seen.withPeerID(a.peerID), RELAY.withPeerID(a.peerID)])

    def test_changesPushed(self) -> None:
        """
        A new confirmed or relay address is pushed to connected peers with
        identify push, filtered for each.
        """
        a, b = self.grid.node(), self.grid.node()
        self.grid.result(a.connect(self.grid.addr(b)))
        self.grid.settle()
        a.addresses.setRelayAddrs([RELAY])
        self.grid.settle()
        conn = b.connections[a.peerID]
        assert conn.identify is not None
        self.assertIn(RELAY, conn.identify.listenAddrs)

    def test_warnOnceWhenPrivate(self) -> None:
        """
        When AutoNAT finds the node private and it has no relay address, it
        warns once, in one line; later verdicts do not repeat it.
        """
        node = self.grid.node()
        events: list[dict[str, Any]] = []
        node.log = Logger(observer=events.append)
        node.addresses.reject(PUBLIC)
        node.addresses.reject(ma("/ip4/203.0.113.6/tcp/4001"))
        node.addresses.setReachability("unknown")
        node.addresses.setReachability("private")
        said = warnings(events)
        self.assertEqual(len(said), 1)
        self.assertNotIn("\n", said[0]["log_format"])

    def test_noWarningWithRelay(self) -> None:
        """
        A private node that already has a relay address is reachable: no
        warning.
        """
        node = self.grid.node()
        events: list[dict[str, Any]] = []
        node.log = Logger(observer=events.append)
        node.addresses.setRelayAddrs([RELAY])
        node.addresses.reject(PUBLIC)
        self.assertEqual(warnings(events), [])

    def test_warnAfterDelayOnPrivateLAN(self) -> None:
        """
        A node whose only non-loopback addresses are private is warned about
        once, L{Node.unreachableWarningDelay} after listening, if by then
        it has neither a confirmed nor a relay address.  A node on the
        memory transport (or on loopback) has no timer at all.
        """
        node = self.grid.node()
        self.assertIsNone(node._unreachableCheck)
        events: list[dict[str, Any]] = []
        node.log = Logger(observer=events.append)
        node.listenAddrs.append(PRIVATE)
        node._listened(None)  # as if it had just listened there
        self.grid.advance(node.unreachableWarningDelay - 1)
        self.assertEqual(warnings(events), [])
        self.grid.advance(2)
        self.assertEqual(len(warnings(events)), 1)
        node.addresses.reject(PUBLIC)
        self.assertEqual(len(warnings(events)), 1)

    def test_noDelayedWarningOnceReachable(self) -> None:
        """
        A node on a private LAN that gets a relay address before the delay
        is not warned about, and stopping the node cancels the timer.
        """
        node = self.grid.node()
        events: list[dict[str, Any]] = []
        node.log = Logger(observer=events.append)
        node.listenAddrs.append(PRIVATE)
        node._listened(None)
        node.addresses.setRelayAddrs([RELAY])
        self.grid.advance(node.unreachableWarningDelay + 1)
        self.assertEqual(warnings(events), [])
        node.listenAddrs.append(PRIVATE)
        node._listened(None)
        self.grid.result(node.stopService())
        self.assertIsNone(node._unreachableCheck)


class ExternalCandidateTests(SynchronousTestCase):
    """
    Addresses learned outside identify (a port mapping, a TURN
    allocation) are AutoNAT candidates until removed.
    """

    def test_addAndRemove(self) -> None:
        """
        An added public address is a candidate (and notifies observers);
        removing it drops it from the candidates and from the confirmed
        addresses.
        """
        book = AddressBook(lambda: [])
        seen: list[int] = []
        book.onChange(lambda: seen.append(1))
        mapped = Multiaddr.fromString("/ip4/203.0.113.7/tcp/4001")
        book.addCandidate(mapped)
        self.assertEqual(book.candidates(), [mapped])
        self.assertTrue(seen)
        book.confirm(mapped)
        self.assertEqual(book.candidates(), [])
        book.removeCandidate(mapped)
        self.assertEqual((book.candidates(), book.confirmed()), ([], []))

    def test_bounded(self) -> None:
        """
        At most 8 external candidates are kept, the newest.
        """
        book = AddressBook(lambda: [])
        addrs = [Multiaddr.fromString(f"/ip4/203.0.113.{i}/tcp/4001") for i in range(1, 21)]
        for a in addrs:
            book.addCandidate(a)
        self.assertEqual(book.candidates(), addrs[-8:])


class SymmetricNATTests(SynchronousTestCase):
    """
    A node that peers see on one public IP but a different port each
    (a symmetric NAT) is private: no address of it can be dialled.
    """

    def test_differentPortEach(self) -> None:
        """
        Two observers, two ports, none seen twice: private.
        """
        book = AddressBook(lambda: [])
        book.observe(Multiaddr.fromString("/ip4/203.0.113.5/tcp/40001"), "a")
        self.assertEqual(book.reachability, "unknown")
        book.observe(Multiaddr.fromString("/ip4/203.0.113.5/tcp/40777"), "b")
        self.assertTrue(book.looksSymmetric())
        self.assertEqual(book.reachability, "private")

    def test_samePortIsNotSymmetric(self) -> None:
        """
        Two observers agreeing on a port (endpoint-independent mapping),
        even with a stray third port, is no sign of a symmetric NAT.
        """
        book = AddressBook(lambda: [])
        for who in ("a", "b"):
            book.observe(Multiaddr.fromString("/ip4/203.0.113.5/tcp/4001"), who)
        book.observe(Multiaddr.fromString("/ip4/203.0.113.5/tcp/50000"), "c")
        self.assertFalse(book.looksSymmetric())
        self.assertEqual(book.reachability, "unknown")

    def test_oneObserverIsNotEnough(self) -> None:
        """
        One observer reporting two ports proves nothing.
        """
        book = AddressBook(lambda: [])
        book.observe(Multiaddr.fromString("/ip4/203.0.113.5/tcp/40001"), "a")
        book.observe(Multiaddr.fromString("/ip4/203.0.113.5/tcp/40002"), "a")
        self.assertEqual(book.reachability, "unknown")
