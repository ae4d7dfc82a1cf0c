"""
Tests for L{beam.p2p.discovery.mdns}: the codec (pure), and the service on
a L{Clock} with a fake multicast port and a L{FakeHost}.  No socket.
"""

from __future__ import annotations

import random
import struct
from types import SimpleNamespace
from typing import Any, Optional

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.names import dns
from twisted.trial.unittest import SynchronousTestCase

from beam.identity.keys import Identity
from beam.identity.multiaddr import Multiaddr
from beam.p2p.discovery import mdns
from beam.p2p.discovery.mdns import (
    MAX_PACKET,
    MAX_RECORDS,
    MalformedPacket,
    MdnsService,
    decodePacket,
    encodeNameQuery,
    encodeNameResponse,
    encodePeerQuery,
    encodePeerResponse,
    isPeerQuery,
    makeMdns,
    nameQuestions,
    nameRecordsInResponse,
    peersInResponse,
    randomPeerName,
)
from beam.testing.host import FakeHost

LAN = "198.51.100.1"
OTHER = "198.51.100.2"


def _seq(seed: int = 0) -> Any:
    return random.Random(seed).randbytes


class FakeMulticastPort:
    """
    What the service uses of Twisted's multicast port, recorded.
    """

    def __init__(self) -> None:
        self.joined: list[tuple[str, str]] = []
        self.sent: list[tuple[str, bytes, tuple[str, int]]] = []
        self.iface: Optional[str] = None
        self.stopped = False

    def joinGroup(self, group: str, iface: str) -> Any:
        self.joined.append((group, iface))
        return succeed(None)

    def setOutgoingInterface(self, iface: str) -> Any:
        self.iface = iface
        return succeed(None)

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.iface is not None
        self.sent.append((self.iface, data, addr))

    def stopListening(self) -> None:
        self.stopped = True

    def messages(self) -> list[dns.Message]:
        return [decodePacket(data) for _, data, _ in self.sent]


def _service(test: SynchronousTestCase, clock: Optional[Clock] = None, host: Any = None,
             **kw: Any) -> tuple[MdnsService, FakeMulticastPort, Any]:
    clock = clock or Clock()
    host = host or FakeHost(clock, listenAddrs=[Multiaddr.fromString(f"/ip4/{LAN}/tcp/4001"),
                                                Multiaddr.fromString("/ip4/127.0.0.1/tcp/4001")])
    port = FakeMulticastPort()
    kw.setdefault("interfaces", [LAN])
    service = MdnsService(clock, host, random=_seq(), listen=lambda protocol: port, **kw)
    service.startService()
    test.addCleanup(service.stopService)
    return service, port, host


def _peerResponse(identity: Identity, *addrs: str, name: str = "p" * 40) -> bytes:
    return encodePeerResponse(name, [Multiaddr.fromString(a).withPeerID(identity.peerID) for a in addrs])


class CodecTests(SynchronousTestCase):
    """
    The sans-IO half.
    """

    def test_peerName(self) -> None:
        """
        Peer names are 32 to 63 lower-case letters and digits, as the spec
        asks, and differ between draws.
        """
        random = _seq()
        names = {randomPeerName(random) for _ in range(50)}
        self.assertGreater(len(names), 40)
        for name in names:
            self.assertTrue(32 <= len(name) <= 63, name)
            self.assertRegex(name, r"^[a-z0-9]+$")

    def test_queryRoundTrip(self) -> None:
        """
        Our query is one C{_p2p._udp.local PTR} question, recognised as a
        peer query.
        """
        message = decodePacket(encodePeerQuery())
        self.assertEqual([(q.name.name, q.type) for q in message.queries], [(b"_p2p._udp.local", dns.PTR)])
        self.assertTrue(isPeerQuery(message))
        self.assertEqual(peersInResponse(message), [])

    def test_responseRoundTrip(self) -> None:
        """
        A response carries the PTR to C{<name>._p2p._udp.local} and one
        TXT C{dnsaddr=} record per address, in the additional section;
        parsing gives back the peer and its addresses without C{/p2p/}.
        """
        who = Identity.generate()
        message = decodePacket(_peerResponse(who, "/ip4/198.51.100.9/tcp/4001", "/ip4/10.0.0.1/tcp/5"))
        (ptr,) = message.answers
        assert isinstance(ptr.payload, dns.Record_PTR)
        self.assertEqual(ptr.payload.name.name, b"p" * 40 + b"._p2p._udp.local")
        self.assertEqual([rr.payload.data[0] for rr in message.additional if isinstance(rr.payload, dns.Record_TXT)],
                         [f"dnsaddr=/ip4/198.51.100.9/tcp/4001/p2p/{who.peerID}".encode(),
                          f"dnsaddr=/ip4/10.0.0.1/tcp/5/p2p/{who.peerID}".encode()])
        (ann,) = peersInResponse(message)
        self.assertEqual((ann.peerName, ann.peer), ("p" * 40, who.peerID))
        self.assertEqual([str(a) for a in ann.addrs], ["/ip4/198.51.100.9/tcp/4001", "/ip4/10.0.0.1/tcp/5"])

    def test_jsStyleResponse(self) -> None:
        """
        TXT records among the answers (where js and go put them) count too;
        addresses naming another peer than the first, or no peer, or not
        parsing, are ignored.
        """
        a, b = Identity.generate(), Identity.generate()
        target = b"x" * 50 + b"._p2p._udp.local"
        m = dns.Message(answer=1, auth=True, maxSize=MAX_PACKET)
        m.answers = [
            dns.RRHeader(b"_p2p._udp.local", dns.PTR, dns.IN, 120, dns.Record_PTR(target)),
            dns.RRHeader(target, dns.TXT, dns.IN, 120, dns.Record_TXT(f"dnsaddr=/ip4/10.1.1.1/tcp/1/p2p/{a.peerID}".encode())),
            dns.RRHeader(target, dns.TXT, dns.IN, 120, dns.Record_TXT(f"dnsaddr=/ip4/10.1.1.2/tcp/1/p2p/{b.peerID}".encode())),
            dns.RRHeader(target, dns.TXT, dns.IN, 120, dns.Record_TXT(b"dnsaddr=/ip4/10.1.1.3/tcp/1", b"dnsaddr=junk")),
            dns.RRHeader(target, dns.TXT, dns.IN, 120, dns.Record_TXT(a.peerID.toBytes() if hasattr(a.peerID, "toBytes") else b"x")),
        ]
        (ann,) = peersInResponse(decodePacket(m.toStr()))
        self.assertEqual((ann.peer, [str(x) for x in ann.addrs]), (a.peerID, ["/ip4/10.1.1.1/tcp/1"]))

    def test_nameRoundTrip(self) -> None:
        """
        A name question is C{<name>._beam-name._udp.local TXT}; the answer
        carries any record bytes (binary, longer than one TXT string)
        intact.
        """
        self.assertEqual(nameQuestions(decodePacket(encodeNameQuery("alice"))), ["alice"])
        record = bytes(range(256)) * 5
        self.assertEqual(nameRecordsInResponse(decodePacket(encodeNameResponse("alice", record))),
                         [("alice", record)])
        self.assertRaises(mdns.MdnsError, encodeNameQuery, "a.b")
        self.assertRaises(mdns.MdnsError, encodeNameResponse, "a", b"x" * (mdns.MAX_NAME_RECORD + 1))

    def test_oversized(self) -> None:
        """
        Datagrams over 9000 bytes, shorter than a header, or whose header
        counts more than L{MAX_RECORDS} records are refused before
        decoding.
        """
        self.assertRaises(MalformedPacket, decodePacket, b"\0" * (MAX_PACKET + 1))
        self.assertRaises(MalformedPacket, decodePacket, b"\0" * 5)
        header = struct.pack("!6H", 0, 0x8400, 0, MAX_RECORDS + 1, 0, 0)
        with self.assertRaises(MalformedPacket) as e:
            decodePacket(header)
        self.assertIn("records", str(e.exception))

    def test_malformed(self) -> None:
        """
        Truncated messages and compression loops are L{MalformedPacket}.
        """
        good = encodePeerQuery()
        self.assertRaises(MalformedPacket, decodePacket, good[:-3])
        loop = struct.pack("!6H", 0, 0, 1, 0, 0, 0) + b"\xc0\x0c" + b"\0\x0c\0\x01"
        self.assertRaises(MalformedPacket, decodePacket, loop)

    @settings(max_examples=300, deadline=None, derandomize=True)
    @given(st.binary(max_size=600))
    def test_fuzzDecoder(self, data: bytes) -> None:
        """
        Any bytes either decode (and then every extractor runs without
        raising) or raise L{MalformedPacket}.
        """
        try:
            message = decodePacket(data)
        except MalformedPacket:
            return
        peersInResponse(message)
        nameRecordsInResponse(message)
        nameQuestions(message)
        isPeerQuery(message)

    @settings(max_examples=150, deadline=None, derandomize=True)
    @given(st.binary(max_size=60), st.integers(min_value=0, max_value=200))
    def test_fuzzMutatedResponse(self, junk: bytes, at: int) -> None:
        """
        A real response with bytes overwritten anywhere never makes the
        parser raise anything but L{MalformedPacket}.
        """
        good = _peerResponse(_IDENTITY, "/ip4/198.51.100.9/tcp/4001")
        data = good[:at] + junk + good[at + len(junk):]
        try:
            message = decodePacket(data)
        except MalformedPacket:
            return
        peersInResponse(message)
        nameRecordsInResponse(message)


_IDENTITY = Identity.generate()


class ServiceTests(SynchronousTestCase):
    """
    L{MdnsService} on a clock and a fake multicast port.
    """

    def test_startQueriesAndAnnounces(self) -> None:
        """
        Starting joins the group on each interface, sends a PTR query and
        an unsolicited announcement of our non-loopback addresses.
        """
        service, port, host = _service(self)
        self.assertEqual(port.joined, [("224.0.0.251", LAN)])
        query, announce = port.messages()
        self.assertTrue(isPeerQuery(query))
        (ann,) = peersInResponse(announce)
        self.assertEqual((ann.peerName, ann.peer), (service.peerName, host.peerID))
        self.assertEqual([str(a) for a in ann.addrs], [f"/ip4/{LAN}/tcp/4001"])
        self.assertEqual({addr for _, _, addr in port.sent}, {("224.0.0.251", 5353)})

    def test_queryBackoff(self) -> None:
        """
        Queries are repeated 1, 2, 4 ... seconds apart, up to the query
        interval.
        """
        clock = Clock()
        service, port, _ = _service(self, clock, queryInterval=8)
        times = []
        for _ in range(80):
            clock.advance(0.5)
            queries = sum(1 for m in port.messages() if isPeerQuery(m))
            times.append(queries)
        firsts = [i for i in range(1, len(times)) if times[i] != times[i - 1]]
        self.assertEqual([(i + 1) * 0.5 for i in firsts][:6], [1.0, 3.0, 7.0, 15.0, 23.0, 31.0])

    def test_answersQueries(self) -> None:
        """
        A query is answered with our addresses, once a second at most per
        interface (RFC 6762 section 6); loopback addresses only to an
        asker on loopback.
        """
        clock = Clock()
        service, port, host = _service(self, clock)
        clock.advance(1.5)
        port.sent.clear()
        service.datagramReceived(encodePeerQuery(), (OTHER, 5353))
        service.datagramReceived(encodePeerQuery(), (OTHER, 5353))
        answers = [m for m in port.messages() if m.answer]
        self.assertEqual(len(answers), 1)
        self.assertNotIn("127.0.0.1", str(peersInResponse(answers[0])[0].addrs))
        clock.advance(1.0)
        port.sent.clear()
        service.datagramReceived(encodePeerQuery(), ("127.0.0.1", 5353))
        (answer,) = [m for m in port.messages() if m.answer]
        self.assertIn("/ip4/127.0.0.1/tcp/4001", [str(a) for a in peersInResponse(answer)[0].addrs])

    def test_answerHeldNotDropped(self) -> None:
        """
        Questions that come within a second of our last multicast answer
        (a js node that started just after it, and asks again only every
        10 s) get one answer as soon as the second is over, not none; the
        same for a name.
        """
        clock = Clock()
        service, port, host = _service(self, clock)
        service.setNameRecords(lambda: {"alice": b"signed-record"})
        clock.advance(1.5)
        service.datagramReceived(encodePeerQuery(), (OTHER, 5353))
        service.datagramReceived(encodeNameQuery("alice"), (OTHER, 5353))
        port.sent.clear()
        clock.advance(0.2)
        for _ in range(3):
            service.datagramReceived(encodePeerQuery(), (OTHER, 5353))
            service.datagramReceived(encodeNameQuery("alice"), (OTHER, 5353))
        self.assertEqual(port.sent, [])
        clock.advance(0.7)
        self.assertEqual(port.sent, [])
        clock.advance(0.2)
        peers, names = port.messages()
        self.assertEqual([a.peer for a in peersInResponse(peers)], [host.peerID])
        self.assertEqual(nameRecordsInResponse(names), [("alice", b"signed-record")])
        self.assertEqual(service.status()["answers_held"], 2)
        clock.advance(5)
        self.assertEqual(len([m for m in port.messages() if m.answer]), 2)

    def test_legacyUnicast(self) -> None:
        """
        A query from a port other than 5353 (a one-shot resolver) is
        answered to that address and port, with its id.
        """
        service, port, _ = _service(self)
        port.sent.clear()
        m = dns.Message(id=4242)
        m.queries = [dns.Query(b"_p2p._udp.local", dns.PTR, dns.IN)]
        service.datagramReceived(m.toStr(), (OTHER, 40000))
        ((_, data, addr),) = port.sent
        self.assertEqual((addr, decodePacket(data).id), ((OTHER, 40000), 4242))

    def test_discoversAndDials(self) -> None:
        """
        A response's peer goes to the peerstore with source C{"mdns"} and
        is dialled once; not again while connected, nor within the redial
        pause after a failure.
        """
        clock = Clock()
        service, port, host = _service(self, clock)
        other = Identity.generate()
        service.datagramReceived(_peerResponse(other, "/ip4/198.51.100.2/tcp/4001"), (OTHER, 5353))
        self.assertEqual(host.peerStore.addrSources(other.peerID),
                         {Multiaddr.fromString("/ip4/198.51.100.2/tcp/4001"): "mdns"})
        self.assertEqual([p for p, _ in host.dials], [other.peerID])
        service.datagramReceived(_peerResponse(other, "/ip4/198.51.100.2/tcp/4001"), (OTHER, 5353))
        self.assertEqual(len(host.dials), 1)
        host.dialSucceeds()
        clock.advance(60)
        service.datagramReceived(_peerResponse(other, "/ip4/198.51.100.2/tcp/4001"), (OTHER, 5353))
        self.assertEqual(host.dials, [])
        host.down(other.peerID)
        service.datagramReceived(_peerResponse(other, "/ip4/198.51.100.2/tcp/4001"), (OTHER, 5353))
        self.assertEqual(len(host.dials), 1)
        host.dialFails()
        clock.advance(5)
        service.datagramReceived(_peerResponse(other, "/ip4/198.51.100.2/tcp/4001"), (OTHER, 5353))
        self.assertEqual(host.dials, [])
        self.assertEqual(service.status()["dial_failures"], 1)

    def test_ignoresSelfAndUnreachable(self) -> None:
        """
        Our own answers (looped back by the kernel) are ignored, and so are
        loopback addresses from a stranger on the LAN.
        """
        clock = Clock()
        service, port, host = _service(self, clock)
        for _, data, _ in list(port.sent):
            service.datagramReceived(data, (LAN, 5353))
        self.assertEqual(service.found, {})
        other = Identity.generate()
        service.datagramReceived(_peerResponse(other, "/ip4/127.0.0.1/tcp/4001"), (OTHER, 5353))
        self.assertEqual((service.found, host.dials), ({}, []))

    def test_boundedDials(self) -> None:
        """
        At most C{maxDials} dials run at a time; the rest wait for the
        next announcement.
        """
        service, port, host = _service(self, maxDials=2)
        for i in range(5):
            service.datagramReceived(_peerResponse(Identity.generate(), f"/ip4/198.51.100.{10 + i}/tcp/1",
                                                   name=f"{i}" * 40), (OTHER, 5353))
        self.assertEqual((len(service.found), len(host.dials)), (5, 2))

    def test_boundedPeers(self) -> None:
        """
        At most C{maxPeers} discovered peers are remembered, least recently
        seen forgotten first.
        """
        clock = Clock()
        service, port, host = _service(self, clock, maxPeers=3, maxDials=0)
        ids = [Identity.generate() for _ in range(5)]
        for i, who in enumerate(ids):
            clock.advance(0.01)
            service.datagramReceived(_peerResponse(who, f"/ip4/198.51.100.{10 + i}/tcp/1"), (OTHER, 5353))
        self.assertEqual(list(service.found), [w.peerID for w in ids[2:]])

    def test_packetRateLimit(self) -> None:
        """
        Beyond L{MAX_PACKETS_PER_SECOND} datagrams a second the rest are
        dropped unread; malformed ones are counted.
        """
        clock = Clock()
        service, port, host = _service(self, clock)
        for _ in range(mdns.MAX_PACKETS_PER_SECOND + 50):
            service.datagramReceived(b"junk", (OTHER, 5353))
        status = service.status()
        self.assertEqual((status["malformed"], status["rate_limited"]), (mdns.MAX_PACKETS_PER_SECOND, 50))
        clock.advance(1)
        service.datagramReceived(b"junk", (OTHER, 5353))
        self.assertEqual(service.status()["malformed"], mdns.MAX_PACKETS_PER_SECOND + 1)

    def test_answerRateLimit(self) -> None:
        """
        Questions for many names get at most L{MAX_ANSWERS_PER_SECOND}
        answers a second.
        """
        clock = Clock()
        service, port, _ = _service(self, clock)
        names = {f"n{i}": b"record" for i in range(100)}
        service.setNameRecords(lambda: names)
        clock.advance(2)
        port.sent.clear()
        for i in range(100):
            service.datagramReceived(encodeNameQuery(f"n{i}"), (OTHER, 5353))
        self.assertEqual(len(port.sent), mdns.MAX_ANSWERS_PER_SECOND)

    def test_namesAnswered(self) -> None:
        """
        A question for one of our names is answered with its record; other
        names get no answer.
        """
        service, port, _ = _service(self)
        service.setNameRecords(lambda: {"alice": b"signed-record"})
        port.sent.clear()
        service.datagramReceived(encodeNameQuery("bob"), (OTHER, 5353))
        self.assertEqual(port.sent, [])
        service.datagramReceived(encodeNameQuery("alice"), (OTHER, 5353))
        (message,) = port.messages()
        self.assertEqual(nameRecordsInResponse(message), [("alice", b"signed-record")])

    def test_resolveName(self) -> None:
        """
        L{MdnsService.resolveName} asks the LAN and fires with the first
        answer's bytes; with no answer, L{None} at the timeout; unasked
        answers are ignored.
        """
        clock = Clock()
        service, port, _ = _service(self, clock)
        port.sent.clear()
        d = service.resolveName("alice", timeout=1.0)
        self.assertEqual(nameQuestions(port.messages()[0]), ["alice"])
        service.datagramReceived(encodeNameResponse("bob", b"other"), (OTHER, 5353))
        self.assertNoResult(d)
        service.datagramReceived(encodeNameResponse("alice", b"rec"), (OTHER, 5353))
        self.assertEqual(self.successResultOf(d), b"rec")
        d = service.resolveName("carol", timeout=1.0)
        clock.advance(1.0)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(service._pendingNames, {})

    def test_pendingBounded(self) -> None:
        """
        Past L{MAX_PENDING_NAMES} waiting questions, resolveName answers
        L{None} at once.
        """
        service, port, _ = _service(self)
        for i in range(mdns.MAX_PENDING_NAMES):
            service.resolveName(f"n{i}")
        self.assertIsNone(self.successResultOf(service.resolveName("late")))

    def test_disabled(self) -> None:
        """
        A disabled service listens nowhere and says so; resolveName answers
        L{None}.
        """
        clock = Clock()
        opened = []
        service = MdnsService(clock, FakeHost(clock), enabled=False, disabledReason="mdns = false",
                              listen=lambda p: opened.append(p))
        service.startService()
        self.assertEqual((opened, service.status()), ([], {"enabled": False, "reason": "mdns = false"}))
        self.assertIsNone(self.successResultOf(service.resolveName("alice")))

    def test_loopbackOnlyIdle(self) -> None:
        """
        A node listening on loopback only stays off the LAN.
        """
        clock = Clock()
        opened = []
        host = FakeHost(clock, listenAddrs=[Multiaddr.fromString("/ip4/127.0.0.1/tcp/1")])
        service = MdnsService(clock, host, listen=lambda p: opened.append(p))
        service.startService()
        self.assertEqual(opened, [])
        self.assertFalse(service.status()["listening"])

    def test_makeMdns(self) -> None:
        """
        The factory honours C{mdns = false} and keeps mDNS off in Tor mode
        C{always}.
        """
        clock = Clock()

        def context(mdnsOn: bool, mode: str) -> Any:
            return SimpleNamespace(reactor=clock, host=FakeHost(clock), random=_seq(),
                                   config=SimpleNamespace(mdns=mdnsOn, tor=SimpleNamespace(mode=mode)),
                                   optionsFor=lambda name: {})

        self.assertTrue(makeMdns(context(True, "off")).enabled)
        self.assertTrue(makeMdns(context(True, "fallback")).enabled)
        self.assertEqual(makeMdns(context(False, "off")).status(), {"enabled": False, "reason": "mdns = false"})
        self.assertEqual(makeMdns(context(True, "always")).status(), {"enabled": False, "reason": "tor mode always"})
