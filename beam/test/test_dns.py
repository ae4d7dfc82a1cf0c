"""
Tests for the C{beam.} DNS zone (L{beam.names.dnszone}) and the daemon's
DNS service (L{beam.daemon.dns}): deterministic, with in-memory
resolvers, fake datagram transports and a L{Clock}.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, cast

import attrs
from hypothesis import HealthCheck, given, settings, strategies as st
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.names import dns
from twisted.trial.unittest import SynchronousTestCase

from beam.daemon.dns import DnsService, _Lookups, _TCPServer, makeDns
from beam.dht.service import NoDHTPeers
from beam.errors import NotFound
from beam.names.dnszone import (
    ANSWER_TTL,
    MAX_QUERY,
    AddressAllocator,
    AddressesExhausted,
    BeamZone,
    LookupFailed,
    NameMissing,
    servicePort,
)
from beam.storage.home import readState


@attrs.frozen
class Resolution:
    name: str
    peerID: str
    addrs: tuple[str, ...] = ()
    services: tuple[str, ...] = ()


def query(name: bytes, qtype: int = dns.A, qid: int = 77, cls: int = dns.IN) -> bytes:
    m = dns.Message(id=qid, recDes=1)
    m.queries = [dns.Query(name, qtype, cls)]
    return m.toStr()


def dotted(rr: dns.RRHeader) -> str:
    """
    The address of an A record.
    """
    return cast(Any, rr.payload).dottedQuad()


def decode(data: Optional[bytes]) -> dns.Message:
    assert data is not None
    m = dns.Message()
    m.fromStr(data)
    return m


class ZoneMixin:
    """
    A zone over a dictionary of names, with an allocator.
    """

    def makeZone(self, records: Optional[dict[str, Resolution]] = None, broken: bool = False) -> BeamZone:
        self.records = records if records is not None else {
            "alice": Resolution("alice", "peerA", services=("3000", "web")),
            "web.bob": Resolution("web.bob", "peerB", services=("22",)),
        }
        self.allocator = AddressAllocator("127.77.0.0/16")
        self.resolved: list[str] = []
        self.allocated: list[tuple[str, Optional[str]]] = []

        def resolve(name: str) -> Deferred[Any]:
            self.resolved.append(name)
            if broken:
                return fail(LookupFailed("knows no DHT peers"))
            if name in self.records:
                return succeed(self.records[name])
            return fail(NameMissing(name))

        def allocate(name: str, service: Optional[str], resolution: Any) -> Deferred[str]:
            self.allocated.append((name, service))
            return succeed(self.allocator.allocate(name, service))

        return BeamZone(resolve, allocate)

    def ask(self, zone: BeamZone, data: bytes) -> Optional[bytes]:
        results: list[Optional[bytes]] = []
        zone.answerBytes(data).addCallback(results.append)
        assert len(results) == 1, "the answer is synchronous here"
        return results[0]


class ZoneTests(ZoneMixin, SynchronousTestCase):
    """
    L{BeamZone}: the answers for each kind of question.
    """

    def test_nameA(self) -> None:
        """
        C{alice.beam A} is answered with an address from the network, TTL
        L{ANSWER_TTL}, authoritative, same id, the question echoed with its
        case kept (DNS 0x20).
        """
        zone = self.makeZone()
        reply = decode(self.ask(zone, query(b"AlIcE.beam", qid=1234)))
        self.assertEqual(reply.id, 1234)
        self.assertEqual(reply.rCode, dns.OK)
        self.assertTrue(reply.answer)
        self.assertTrue(reply.auth)
        self.assertEqual(str(reply.queries[0].name), "AlIcE.beam")
        self.assertEqual(len(reply.answers), 1)
        rr = reply.answers[0]
        self.assertEqual(rr.type, dns.A)
        self.assertEqual(rr.ttl, ANSWER_TTL)
        self.assertEqual(dotted(rr), "127.77.0.1")
        self.assertEqual(self.allocated, [("alice", None)])

    def test_serviceA(self) -> None:
        """
        C{3000.alice.beam} is the service C{3000} of alice (there is no
        name C{3000.alice}), with an address of its own; asked again, the
        same addresses.
        """
        zone = self.makeZone()
        first = dotted(decode(self.ask(zone, query(b"alice.beam"))).answers[0])
        svc = dotted(decode(self.ask(zone, query(b"3000.alice.beam."))).answers[0])
        self.assertNotEqual(first, svc)
        self.assertEqual(self.resolved, ["alice", "3000.alice", "alice"])
        self.assertEqual(self.allocated, [("alice", None), ("alice", "3000")])
        again = dotted(decode(self.ask(zone, query(b"3000.alice.beam"))).answers[0])
        self.assertEqual(again, svc)

    def test_dottedNameFirst(self) -> None:
        """
        C{web.bob.beam} is the name C{web.bob} when it has a record (Beam
        names may hold dots).
        """
        zone = self.makeZone()
        reply = decode(self.ask(zone, query(b"web.bob.beam")))
        self.assertEqual(reply.rCode, dns.OK)
        self.assertEqual(self.allocated, [("web.bob", None)])

    def test_unlistedService(self) -> None:
        """
        A service the record does not list is NXDOMAIN.
        """
        zone = self.makeZone()
        reply = decode(self.ask(zone, query(b"mail.alice.beam")))
        self.assertEqual(reply.rCode, dns.ENAME)
        self.assertEqual(reply.answers, [])

    def test_aaaaNodata(self) -> None:
        """
        AAAA (and other types) of a name that exists: NOERROR with no
        answer, the SOA in the authority section; nothing is allocated.
        """
        zone = self.makeZone()
        for qtype in (dns.AAAA, dns.MX, dns.TXT):
            reply = decode(self.ask(zone, query(b"alice.beam", qtype)))
            self.assertEqual(reply.rCode, dns.OK)
            self.assertEqual(reply.answers, [])
            self.assertEqual([rr.type for rr in reply.authority], [dns.SOA])
        self.assertEqual(self.allocated, [])

    def test_unknownNxdomain(self) -> None:
        """
        A name with no record, or one that cannot be a Beam name: NXDOMAIN
        with the SOA, whose minimum is the short negative TTL.
        """
        zone = self.makeZone()
        for name in (b"nobody.beam", b"bad_name.beam", b"-x.beam", b"caf\xc3\xa9.beam"):
            reply = decode(self.ask(zone, query(name)))
            self.assertEqual(reply.rCode, dns.ENAME, name)
            self.assertEqual(cast(Any, reply.authority[0].payload).minimum, 5)
        reply = decode(self.ask(zone, query(b"nobody.beam", dns.AAAA)))
        self.assertEqual(reply.rCode, dns.ENAME)

    def test_apex(self) -> None:
        """
        The apex C{beam.} exists and holds nothing: NODATA.
        """
        zone = self.makeZone()
        reply = decode(self.ask(zone, query(b"beam")))
        self.assertEqual(reply.rCode, dns.OK)
        self.assertEqual(reply.answers, [])
        self.assertEqual(self.resolved, [])

    def test_otherZonesRefused(self) -> None:
        """
        Names outside C{beam.} and classes other than IN (or ANY) are
        REFUSED, never looked up.
        """
        zone = self.makeZone()
        for data in (query(b"example.com"), query(b"beam.example"), query(b"alice.beam", cls=dns.CH)):
            self.assertEqual(decode(self.ask(zone, data)).rCode, dns.EREFUSED)
        self.assertEqual(self.resolved, [])

    def test_servfail(self) -> None:
        """
        A name that could not be looked up (no DHT peers, ...) is SERVFAIL,
        not NXDOMAIN; as is an allocation that failed.
        """
        zone = self.makeZone(broken=True)
        self.assertEqual(decode(self.ask(zone, query(b"alice.beam"))).rCode, dns.ESERVER)
        zone = self.makeZone()
        zone.allocate = lambda *a: fail(AddressesExhausted("full"))
        self.assertEqual(decode(self.ask(zone, query(b"alice.beam"))).rCode, dns.ESERVER)

    def test_bugIsServfail(self) -> None:
        """
        A resolver that raises something unexpected gives SERVFAIL, not a
        traceback to the caller.
        """
        zone = self.makeZone()

        def boom(name: str) -> Any:
            raise ZeroDivisionError()

        zone.resolve = boom
        self.assertEqual(decode(self.ask(zone, query(b"alice.beam"))).rCode, dns.ESERVER)

    def test_malformed(self) -> None:
        """
        Too short for a header, or a response: dropped.  A header with
        garbage after it, an oversized query, or several questions:
        FORMERR with the query's id.  Another opcode: NOTIMP.
        """
        zone = self.makeZone()
        self.assertIsNone(self.ask(zone, b""))
        self.assertIsNone(self.ask(zone, b"\x00" * 11))
        response = dns.Message(id=5, answer=1)
        response.queries = [dns.Query(b"alice.beam")]
        self.assertIsNone(self.ask(zone, response.toStr()))
        garbage = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x3fabc"
        reply = decode(self.ask(zone, garbage))
        self.assertEqual((reply.id, reply.rCode), (0x1234, dns.EFORMAT))
        big = query(b"alice.beam") + b"\x00" * MAX_QUERY
        self.assertEqual(decode(self.ask(zone, big)).rCode, dns.EFORMAT)
        two = dns.Message(id=9)
        two.queries = [dns.Query(b"alice.beam"), dns.Query(b"bob.beam")]
        self.assertEqual(decode(self.ask(zone, two.toStr())).rCode, dns.EFORMAT)
        notify = dns.Message(id=9, opCode=dns.OP_NOTIFY)
        notify.queries = [dns.Query(b"alice.beam")]
        self.assertEqual(decode(self.ask(zone, notify.toStr())).rCode, dns.ENOTIMP)
        self.assertEqual(self.resolved, [])

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.binary(max_size=600))
    def test_fuzzRaw(self, data: bytes) -> None:
        """
        Any datagram gets an answer that decodes, or is dropped; never an
        exception.
        """
        zone = self.makeZone()
        reply = self.ask(zone, data)
        if reply is not None:
            self.assertLessEqual(len(reply), 512)
            decode(reply)

    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        st.lists(st.binary(min_size=1, max_size=63), min_size=1, max_size=4),
        st.sampled_from([dns.A, dns.AAAA, dns.ALL_RECORDS, dns.TXT, dns.SOA]),
        st.integers(0, 65535),
        st.integers(0, 40),
        st.binary(max_size=8),
    )
    def test_fuzzQueries(self, labels: list[bytes], qtype: int, qid: int, cut: int, tail: bytes) -> None:
        """
        Well-formed questions for arbitrary names in and out of the zone,
        and the same mutilated (cut short, bytes appended): an answer
        that decodes with the query's id, or nothing.
        """
        zone = self.makeZone()
        name = b".".join(labels + [b"beam"])
        try:
            data = query(name, qtype, qid)
        except ValueError:
            return
        reply = decode(self.ask(zone, data))
        self.assertEqual(reply.id, qid)
        self.assertIn(reply.rCode, (dns.OK, dns.ENAME, dns.EFORMAT, dns.EREFUSED))
        mutated = data[: len(data) - cut] + tail
        out = self.ask(zone, mutated)
        if out is not None:
            decode(out)


class AllocatorTests(SynchronousTestCase):
    """
    L{AddressAllocator}: stable, bounded, remembered.
    """

    def test_stable(self) -> None:
        """
        The same key gets the same address; different keys different
        ones; the network and broadcast addresses and the excluded ones
        are never given.
        """
        a = AddressAllocator("127.0.0.0/29", exclude=["127.0.0.1"])
        got = [a.allocate(n) for n in ("a", "b", "c")]
        self.assertEqual(got, ["127.0.0.2", "127.0.0.3", "127.0.0.4"])
        self.assertEqual(a.allocate("b"), "127.0.0.3")
        self.assertEqual(a.allocate("a", "web"), "127.0.0.5")
        self.assertEqual(a.lookup("a", "web"), "127.0.0.5")
        self.assertIsNone(a.lookup("zzz"))

    def test_exhausted(self) -> None:
        """
        When every address is in use in this run: L{AddressesExhausted}
        (a L{LookupFailed}, so SERVFAIL), and the allocations stay.
        """
        a = AddressAllocator("127.0.0.0/30")
        self.assertEqual([a.allocate("a"), a.allocate("b")], ["127.0.0.1", "127.0.0.2"])
        e = self.assertRaises(AddressesExhausted, a.allocate, "c")
        self.assertIsInstance(e, LookupFailed)
        self.assertEqual(a.allocate("a"), "127.0.0.1")

    def test_bounded(self) -> None:
        """
        C{maxAllocations} bounds the keys even in a large network.
        """
        a = AddressAllocator("127.77.0.0/16", maxAllocations=3)
        for n in "abc":
            a.allocate(n)
        self.assertRaises(AddressesExhausted, a.allocate, "d")
        self.assertEqual(len(a.remembered()), 3)

    def test_remembered(self) -> None:
        """
        Allocations of an earlier run are kept for the same keys; invalid
        entries (outside the network, duplicates, not addresses) are
        ignored; when full, the least recently used one not used in this
        run gives its address up.
        """
        a = AddressAllocator("127.0.0.0/29")
        a.allocate("a")
        a.allocate("b")
        saved: dict[str, Any] = dict(a.remembered(), bad="10.0.0.1", dup="127.0.0.1", junk="x", n=5)
        b = AddressAllocator("127.0.0.0/29", saved, maxAllocations=3)
        self.assertEqual(b.remembered(), {"a": "127.0.0.1", "b": "127.0.0.2"})
        self.assertEqual(b.allocate("b"), "127.0.0.2")
        self.assertEqual(b.allocate("c"), "127.0.0.3")
        # Full (3): "a" was not used in this run and gives way.
        self.assertEqual(b.allocate("d"), "127.0.0.1")
        self.assertIsNone(b.lookup("a"))
        self.assertRaises(AddressesExhausted, b.allocate, "e")

    def test_servicePort(self) -> None:
        """
        A service named by a port is that port; a few names are their
        well-known port; others none.
        """
        self.assertEqual(servicePort("3000"), 3000)
        self.assertEqual(servicePort("web"), 80)
        self.assertIsNone(servicePort("0"))
        self.assertIsNone(servicePort("70000"))
        self.assertIsNone(servicePort("game"))
        self.assertIsNone(servicePort("\u0663"))


class FakeNames:
    """
    A name service whose answers the test controls.
    """

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.pending: dict[str, Deferred[Any]] = {}
        self.answers: dict[str, Any] = {}

    def resolve(self, name: str, acceptNewKey: bool = False) -> Deferred[Any]:
        self.calls.append(name)
        if name in self.answers:
            answer = self.answers[name]
            return fail(answer) if isinstance(answer, Exception) else succeed(answer)
        d: Deferred[Any] = Deferred()
        self.pending[name] = d
        return d


class LookupsTests(SynchronousTestCase):
    """
    L{_Lookups}: shared, cached, bounded lookups.
    """

    def test_sharedAndCached(self) -> None:
        """
        Queries for a name being looked up share the lookup; the result is
        kept for the answer TTL, then looked up again.
        """
        clock, names = Clock(), FakeNames()
        lookups = _Lookups(clock, names.resolve)
        got: list[Any] = []
        lookups.resolve("alice").addCallback(got.append)
        lookups.resolve("alice").addCallback(got.append)
        names.pending["alice"].callback("R")
        self.assertEqual(got, ["R", "R"])
        lookups.resolve("alice").addCallback(got.append)
        self.assertEqual(names.calls, ["alice"])
        clock.advance(ANSWER_TTL + 0.1)
        lookups.resolve("alice")
        self.assertEqual(names.calls, ["alice", "alice"])

    def test_errors(self) -> None:
        """
        No record is L{NameMissing}; no DHT peers (or anything else) is
        L{LookupFailed}; a lookup that hangs fails after the timeout.
        """
        clock, names = Clock(), FakeNames()
        names.answers = {"gone": NotFound("no record"), "lonely": NoDHTPeers("no peers")}
        lookups = _Lookups(clock, names.resolve)
        self.failureResultOf(lookups.resolve("gone"), NameMissing)
        self.failureResultOf(lookups.resolve("lonely"), LookupFailed)
        d = lookups.resolve("slow")
        clock.advance(11)
        self.failureResultOf(d, LookupFailed)

    def test_bounded(self) -> None:
        """
        More than L{MAX_LOOKUPS} different names at once, or more than the
        burst in no time: L{LookupFailed} without asking the name service.
        """
        from beam.daemon.dns import LOOKUP_BURST, MAX_LOOKUPS

        clock, names = Clock(), FakeNames()
        lookups = _Lookups(clock, names.resolve)
        for i in range(MAX_LOOKUPS):
            lookups.resolve(f"n{i}")
        self.failureResultOf(lookups.resolve("one-more"), LookupFailed)
        self.assertEqual(len(names.calls), MAX_LOOKUPS)

        clock, names = Clock(), FakeNames()
        names.answers = {f"m{i}": "R" for i in range(LOOKUP_BURST + 1)}
        lookups = _Lookups(clock, names.resolve)
        for i in range(LOOKUP_BURST):
            self.assertEqual(self.successResultOf(lookups.resolve(f"m{i}")), "R")
        self.failureResultOf(lookups.resolve(f"m{LOOKUP_BURST}"), LookupFailed)
        self.assertEqual(len(names.calls), LOOKUP_BURST)
        clock.advance(1)
        self.successResultOf(lookups.resolve(f"m{LOOKUP_BURST}"))


class FakeUDP:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Any]] = []

    def write(self, data: bytes, addr: Any) -> None:
        self.sent.append((data, addr))


class FakePort:
    def __init__(self, port: int) -> None:
        self.port = port
        self.stopped = False

    def getHost(self) -> Any:
        return attrs.make_class("Addr", ["port"])(self.port)

    def stopListening(self) -> None:
        self.stopped = True


class FakeReactor(Clock):
    """
    A clock that records listens (and refuses them when told).
    """

    def __init__(self, taken: bool = False) -> None:
        super().__init__()
        self.taken = taken
        self.udp: list[Any] = []
        self.tcp: list[Any] = []

    def listenUDP(self, port: int, protocol: Any, interface: str = "") -> FakePort:
        if self.taken:
            from twisted.internet.error import CannotListenError

            raise CannotListenError(interface, port, OSError(98, "Address already in use"))
        self.udp.append((port, protocol, interface))
        protocol.transport = FakeUDP()
        return FakePort(port)

    def listenTCP(self, port: int, factory: Any, interface: str = "") -> FakePort:
        self.tcp.append((port, factory, interface))
        return FakePort(port)


class FakeHost:
    peerID = "12D3KooWSelf"


class ServiceTests(SynchronousTestCase):
    """
    L{DnsService}: listening, the port taken, own names, state, status.
    """

    def makeService(self, reactor: Any, names: Any = None, **kw: Any) -> DnsService:
        home = Path(self.mktemp())
        home.mkdir()
        self.home = home
        service = DnsService(reactor, FakeHost(), names, home, port=5399, **kw)
        service.startService()
        self.addCleanup(service.stopService)
        return service

    def test_listens(self) -> None:
        """
        The server listens on bind:port for UDP and TCP, and a datagram is
        answered to its sender.
        """
        reactor = FakeReactor()
        names = FakeNames()
        names.answers["nobody"] = NotFound("no record")
        service = self.makeService(reactor, names)
        self.assertEqual([(p, i) for p, _, i in reactor.udp], [(5399, "127.0.0.1")])
        self.assertEqual([(p, i) for p, _, i in reactor.tcp], [(5399, "127.0.0.1")])
        self.assertEqual(service.status().listening, "127.0.0.1:5399")
        proto = reactor.udp[0][1]
        proto.datagramReceived(query(b"nobody.beam"), ("127.0.0.1", 4444))
        [(data, addr)] = proto.transport.sent
        self.assertEqual(addr, ("127.0.0.1", 4444))
        self.assertEqual(decode(data).rCode, dns.ENAME)

    def test_portTaken(self) -> None:
        """
        A taken port: no server, the status says why, the node runs on,
        and it tries again later.
        """
        reactor = FakeReactor(taken=True)
        service = self.makeService(reactor)
        status = service.status()
        self.assertIsNone(status.listening)
        assert status.error is not None
        self.assertIn("already in use", status.error)
        reactor.taken = False
        reactor.advance(60)
        self.assertEqual(service.status().listening, "127.0.0.1:5399")
        self.assertIsNone(service.status().error)

    def test_disabled(self) -> None:
        """
        C{enabled = false}: nothing listens, and the status says so.
        """
        reactor = FakeReactor()
        service = self.makeService(reactor, enabled=False)
        self.assertEqual(reactor.udp, [])
        self.assertFalse(service.status().enabled)

    def test_ownName(self) -> None:
        """
        Our own name is answered with 127.0.0.1 (the services are here),
        without an allocation or a forward.
        """
        reactor = FakeReactor()
        names = FakeNames()
        names.answers["me"] = Resolution("me", "12D3KooWSelf", services=("3000",))
        service = self.makeService(reactor, names)
        out = self.successResultOf(service.address("me.beam"))
        self.assertEqual(out, {"host": "me.beam", "address": "127.0.0.1", "ports": [3000]})
        self.assertEqual(service.status().allocations, ())

    def test_addressErrors(self) -> None:
        """
        C{address()} of a name with no record, or a service it does not
        list: L{NotFound} (404); of a name that cannot be looked up:
        L{LookupFailed}.
        """
        reactor = FakeReactor()
        names = FakeNames()
        names.answers = {"gone": NotFound("x"), "me": Resolution("me", "12D3KooWSelf", services=("3000",)),
                         "lonely": NoDHTPeers("no peers")}
        service = self.makeService(reactor, names)
        self.failureResultOf(service.address("gone"), NotFound)
        self.failureResultOf(service.address("me", "ssh"), NotFound)
        self.failureResultOf(service.address("lonely"), LookupFailed)

    def test_tcpBounds(self) -> None:
        """
        Over TCP a length prefix above L{MAX_QUERY} closes the connection;
        a query split over writes is answered once whole.
        """
        from twisted.internet.testing import StringTransport

        reactor = FakeReactor()
        names = FakeNames()
        names.answers["nobody"] = NotFound("x")
        service = self.makeService(reactor, names)
        proto = _TCPServer(service)
        transport = StringTransport()
        proto.makeConnection(transport)
        data = query(b"nobody.beam")
        framed = len(data).to_bytes(2, "big") + data
        proto.dataReceived(framed[:5])
        self.assertEqual(transport.value(), b"")
        proto.dataReceived(framed[5:])
        out = transport.value()
        self.assertEqual(int.from_bytes(out[:2], "big"), len(out) - 2)
        self.assertEqual(decode(out[2:]).rCode, dns.ENAME)
        proto.dataReceived((MAX_QUERY + 1).to_bytes(2, "big"))
        self.assertTrue(transport.disconnecting)
        proto.connectionLost(None)
        other = _TCPServer(service)
        idle = StringTransport()
        other.makeConnection(idle)
        reactor.advance(11)
        self.assertTrue(idle.disconnected or idle.disconnecting)

    def test_makeDnsFromConfig(self) -> None:
        """
        L{makeDns} takes C{[dns]} of the configuration and the names
        service; the allocations of an earlier run come from state.json.
        """
        from beam.daemon.config import Config, DnsConfig
        from beam.daemon.plugins import DaemonContext
        from beam.storage.home import updateState

        home = Path(self.mktemp())
        home.mkdir()
        updateState(home, dns_addresses={"alice": "127.78.0.9"})
        context = DaemonContext(
            reactor=FakeReactor(), home=home, identity=None,
            config=Config(dns=DnsConfig(port=5390, addresses="127.78.0.0/24")), host=FakeHost(),
        )
        service = makeDns(context)
        self.assertEqual((service.port, service.addresses), (5390, "127.78.0.0/24"))
        self.assertEqual(service.allocator.lookup("alice"), "127.78.0.9")
        self.assertEqual(readState(home)["dns_addresses"], {"alice": "127.78.0.9"})
