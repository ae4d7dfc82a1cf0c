"""
NAT traversal wired into the daemon (L{beam.daemon.nat}): daemons on
loopback in one process, one of them an open relay, one forced private
that reserves on it, one that reaches the private one through the relay.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any, Callable

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.protocol import Factory, Protocol
from twisted.application.service import Service
from twisted.internet.task import Clock, deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from beam.daemon.config import Config
from beam.daemon.nat import NatService
from beam.daemon.service import BeamDaemon, TunnelSpecError
from beam.daemon.status import networkJSON, statusJSON
from beam.identity.keys import Identity
from beam.identity.multiaddr import Multiaddr
from beam.p2p.host.addrs import AddressBook
from beam.p2p.relay.messages import HOP_PROTOCOL
from beam.tunnel.share import BEHIND_NAT, NO_RESERVATION, ShareAddress

LOOPBACK = (Multiaddr.fromString("/ip4/127.0.0.1/tcp/0"),)
FAST_NAT = {"checkInterval": 0.2, "settleDelay": 0.1}


@inlineCallbacks
def _startDaemon(test: TestCase, config: Config, **kw: Any) -> Any:
    home = Path(test.mktemp())
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    kw.setdefault("plugins", ())
    kw.setdefault("rememberPort", False)
    daemon = BeamDaemon(reactor, home, Identity.generate(), config, **kw)
    yield daemon.start()
    test.addCleanup(daemon.stopService)
    return daemon


@inlineCallbacks
def _until(what: Callable[[], Any], tries: int = 200, step: float = 0.05) -> Any:
    """
    Poll C{what()} on the real reactor until it is true (the number of
    tries bounds the wait; nothing here asserts on time).
    """
    for _ in range(tries):
        value = what()
        if value:
            return value
        yield deferLater(reactor, step, lambda: None)
    raise AssertionError("the condition never became true")


class _Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


def _roundTrip(port: int, payload: bytes, timeout: float = 10.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(payload)
        out = b""
        while len(out) < len(payload):
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
        return out


def _address(daemon: Any) -> Multiaddr:
    return daemon.node.advertisedAddrs()[0]


def _relayedOnly(client: Any, host: Any) -> None:
    """
    Let C{client} and C{host} dial each other only at relay addresses.
    On loopback each one's listen address (which identify tells the
    other) simply works, and the dialer tries direct addresses first (the
    host may also dial the client directly, for its DHT); behind real NATs
    they would not answer.
    """
    for a, b in ((client, host), (host, client)):
        known = a.node.peerStore.addrs

        def relayedOnly(peer: Any, known: Any = known, other: Any = b.node.peerID) -> list[Multiaddr]:
            addrs = known(peer)
            return [x for x in addrs if "p2p-circuit" in x.protocols()] if peer == other else addrs

        a.node.peerStore.addrs = relayedOnly


class RelayedTunnelTests(TestCase):
    """
    A private node reserves on an open relay found among its bootstrap
    peers, its share address and name record carry the relay address, and
    a third node's tunnel reaches it through the relay.
    """

    timeout = 120

    @inlineCallbacks
    def test_throughRelay(self):
        """
        The host (forced private) reserves on the relay, its share address
        has a C{relay:} address, its name record a C{/p2p-circuit} one (it
        is republished when the reservation arrives), its status shows the
        reservation; a client given only the relay address gets an echo
        through a relayed connection, shown as relayed via the relay.
        """
        relay = yield _startDaemon(self, Config(listen=LOOPBACK, relayMode="open"))
        self.assertIsNotNone(relay.service("nat").relayService)
        self.assertIn(HOP_PROTOCOL, relay.node.protocols)
        host = yield _startDaemon(
            self, Config(listen=LOOPBACK, bootstrap=(_address(relay),)), serviceOptions={"nat": FAST_NAT},
        )
        yield host.kademlia.whenBootstrapped()
        yield host.names.register("natted-host")
        host.node.addresses.setReachability("private")
        nat = host.service("nat")
        yield _until(lambda: relay.node.peerID in nat.relayClient.reservations)

        echo = reactor.listenTCP(0, Factory.forProtocol(_Echo), interface="127.0.0.1")
        self.addCleanup(echo.stopListening)
        host.tunnels.exposePort(echo.getHost().port, "echo")
        share = host.tunnels.shareAddress("echo")
        self.assertIn(f"relay:{relay.node.peerID}@127.0.0.1:", str(share))
        circuits = [a for a in share.addrs if "p2p-circuit" in a.protocols()]
        self.assertEqual(len(circuits), 1)
        self.assertEqual(share.addrs[0], circuits[0], "the relay address comes before loopback ones")

        record = yield _until(lambda: [
            a for a in host.names.registrations["natted-host"].record.addrs if "p2p-circuit" in a.protocols()
        ])
        self.assertEqual(record, circuits)

        status = statusJSON(host.status())
        self.assertEqual(status["reachability"], "private")
        self.assertEqual([r["relay"] for r in status["nat"]["reservations"]], [str(relay.node.peerID)])
        self.assertEqual(status["relay_addrs"], [str(circuits[0])])
        relayStatus = statusJSON(relay.status())["nat"]["relay_service"]
        self.assertTrue(relayStatus["open"])
        self.assertEqual([r["peer"] for r in relayStatus["reservations"]], [str(host.node.peerID)])

        client = yield _startDaemon(self, Config(listen=LOOPBACK))
        _relayedOnly(client, host)
        viaRelay = ShareAddress(peer=host.node.peerID, addrs=tuple(circuits), service="echo")
        forward = yield client.forwards.start(viaRelay, probe=True)
        port = int(forward.listen.rpartition(":")[2])
        payload = b"through the relay " * 1000
        got = yield deferToThreadRoundTrip(port, payload)
        self.assertEqual(got, payload)

        conn = client.node.connectionTo(host.node.peerID)
        self.assertTrue(conn.limited)
        peers = [c for c in statusJSON(client.status())["connections"] if c["peer_id"] == str(host.node.peerID)]
        self.assertEqual([(c["path"], c["relay"]) for c in peers], [("relayed", str(relay.node.peerID))])
        self.assertEqual(networkJSON(client.status())["connection_paths"].get("relayed"), 1)

    @inlineCallbacks
    def test_noReservation(self):
        """
        A relay address for a peer that holds no reservation on the relay
        fails C{beam connect} with "no relay reservation yet".
        """
        relay = yield _startDaemon(self, Config(listen=LOOPBACK, relayMode="open"))
        client = yield _startDaemon(self, Config(listen=LOOPBACK))
        stranger = Identity.generate().peerID
        circuit = Multiaddr.fromString(f"{_address(relay)}/p2p-circuit")
        share = ShareAddress(peer=stranger, addrs=(circuit,), service="web")
        error = yield self.assertFailure(client.forwards.start(share, probe=True), TunnelSpecError)
        self.assertTrue(str(error).startswith(NO_RESERVATION), str(error))
        self.assertNotIn("\n", str(error))

    @inlineCallbacks
    def test_relayUnreachable(self):
        """
        A host listed only through a relay that does not answer fails with
        "the host is behind a NAT and no relay is reachable".
        """
        client = yield _startDaemon(self, Config(listen=LOOPBACK))
        dead = socket.socket()
        dead.bind(("127.0.0.1", 0))
        port = dead.getsockname()[1]
        dead.close()
        relayPeer = Identity.generate().peerID
        circuit = Multiaddr.fromString(f"/ip4/127.0.0.1/tcp/{port}/p2p/{relayPeer}/p2p-circuit")
        share = ShareAddress(peer=Identity.generate().peerID, addrs=(circuit,), service="web")
        error = yield self.assertFailure(client.forwards.start(share, probe=True), TunnelSpecError)
        self.assertTrue(str(error).startswith(BEHIND_NAT), str(error))
        self.assertNotIn("Failure", str(error))


class RelayDiscoveryTests(TestCase):
    """
    Relays found through the DHT, with real daemons on loopback.
    """

    timeout = 120

    @inlineCallbacks
    def test_relaysThroughDHT(self):
        """
        A private node whose bootstrap peer does not relay, and which is
        connected to no relay, finds the two open relays its DHT knows
        (through the bootstrap peer), connects to them and reserves on
        both.
        """
        boot = yield _startDaemon(self, Config(listen=LOOPBACK, relayMode="off"))
        relays = []
        for _ in range(2):
            relay = yield _startDaemon(self, Config(listen=LOOPBACK, relayMode="open",
                                                    bootstrap=(_address(boot),)))
            yield relay.kademlia.whenBootstrapped()
            relays.append(relay)
        wanted = {r.node.peerID for r in relays}
        host = yield _startDaemon(self, Config(listen=LOOPBACK, bootstrap=(_address(boot),)),
                                  serviceOptions={"nat": FAST_NAT})
        yield host.kademlia.whenBootstrapped()
        table = {info.peer for info in host.kademlia.kad.routingTable.peers()}
        self.assertLessEqual(wanted, table, "the DHT knows both relays")
        self.assertNotIn(HOP_PROTOCOL, boot.node.protocols)
        # Connected to no relay: only the DHT can lead the node to them.
        for peer in wanted:
            conn = host.node.connectionTo(peer)
            if conn is not None:
                conn.abort()
        yield _until(lambda: not any(host.node.connectionTo(p) for p in wanted))
        nat = host.service("nat")
        self.assertEqual(nat.candidates(), [])
        host.node.addresses.setReachability("private")
        yield _until(lambda: wanted <= set(nat.relayClient.reservations))
        self.assertEqual(len(nat.relayClient.reservations), 2)
        self.assertEqual(len(host.node.addresses.relayAddrs()), 2)


def deferToThreadRoundTrip(port: int, payload: bytes, timeout: float = 10.0) -> Deferred[bytes]:
    from twisted.internet.threads import deferToThread

    return deferToThread(_roundTrip, port, payload, timeout)


class _Conn:
    def __init__(self, peer: Any, protocols: tuple[str, ...], limited: bool = False) -> None:
        self.remotePeer = peer
        self.limited = limited
        self.acceptsStreams = False
        self.identify = type("I", (), {"protocols": protocols})()
        self.remoteAddr = Multiaddr.fromString("/ip4/127.0.0.1/tcp/1")


class _FakeNode:
    """
    What L{NatService} uses of a node, on a L{Clock}.
    """

    def __init__(self, clock: Clock, listen: list[Multiaddr]) -> None:
        self.reactor = clock
        self.peerID = Identity.generate().peerID
        self.transports: list[Any] = []
        self.listenAddrs = listen
        self.addresses = AddressBook(lambda: listen)
        self.conns: list[_Conn] = []
        self.handlers: dict[str, Any] = {}
        self.observers: list[Any] = []
        self.protocols: list[str] = []
        self.dialled: list[Any] = []
        self.dials: dict[Any, Deferred[Any]] = {}
        self.peerStore = type("PS", (), {"addAddrs": lambda *a, **kw: None})()

    def connect(self, peer: Any) -> Deferred[Any]:
        self.dialled.append(peer)
        d = self.dials[peer] = Deferred()
        return d

    def connected(self, peer: Any, protocols: tuple[str, ...]) -> None:
        """
        The dial to C{peer} succeeded and identify arrived.
        """
        conn = _Conn(peer, protocols)
        self.conns.append(conn)
        self.dials.pop(peer).callback(conn)
        for observer in list(self.observers):
            observer("identified", conn)

    def liveConnections(self) -> list[_Conn]:
        return list(self.conns)

    def connectionTo(self, peer: Any) -> Any:
        return next((c for c in self.conns if c.remotePeer == peer), None)

    def setStreamHandler(self, protocol: str, factory: Any) -> None:
        self.handlers[protocol] = factory

    def removeStreamHandler(self, protocol: str) -> None:
        self.handlers.pop(protocol, None)

    def hasStreamHandler(self, protocol: str) -> bool:
        return protocol in self.handlers

    def addConnectionObserver(self, observer: Any) -> None:
        self.observers.append(observer)

    def removeConnectionObserver(self, observer: Any) -> None:
        self.observers.remove(observer)

    def protect(self, peer: Any, tag: str) -> None:
        pass

    def unprotect(self, peer: Any, tag: str) -> None:
        pass


class _FakeDHT:
    """
    What L{NatService} uses of the DHT: the routing table's peers and
    C{closestPeers}.
    """

    def __init__(self, peers: list[Any]) -> None:
        self.table: list[Any] = list(peers)
        self.lookups: list[Deferred[Any]] = []
        self.kad = type("K", (), {})()
        self.kad.routingTable = type("RT", (), {"peers": lambda _: iter(self.table)})()

    def closestPeers(self, key: bytes) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.lookups.append(d)
        return d


def _info(peer: Any) -> Any:
    from beam.dht.messages import PeerInfo

    return PeerInfo(peer, (Multiaddr.fromString("/ip4/203.0.113.9/tcp/4001"),))


class _FakeStun:
    def __init__(self, reactor: Any, host: str, port: int) -> None:
        self.primary = (host, port)
        self.running = False

    def startService(self) -> None:
        self.running = True

    def stopService(self) -> None:
        self.running = False


class NatServiceTests(SynchronousTestCase):
    """
    L{NatService}'s decisions, on a fake node and a L{Clock}: what runs
    for which reachability, and which relays it reserves on.
    """

    def _service(self, listen: str = "/ip4/192.168.1.5/tcp/4001", **kw: Any) -> tuple[NatService, _FakeNode, Clock]:
        clock = Clock()
        node = _FakeNode(clock, [Multiaddr.fromString(listen)])
        kw.setdefault("makeStunServer", _FakeStun)
        kw.setdefault("autonat", {"interval": 1000.0})
        service = NatService(clock, node, **kw)
        reserved: list[Any] = []
        service.startService()
        self.addCleanup(service.stopService)
        assert service.relayClient is not None

        def reserve(peer: Any, keep: bool = True) -> Deferred[Any]:
            reserved.append(peer)
            return Deferred()

        service.relayClient.reserve = reserve  # type: ignore[method-assign,assignment]
        service.reserved = reserved  # type: ignore[attr-defined]
        return service, node, clock

    def test_publicServes(self):
        """
        Once public: the AutoNAT server, the default-limits relay and the
        STUN server (at the TCP listen port) run; they stop again when the
        node turns private.
        """
        service, node, clock = self._service()
        clock.advance(0)
        self.assertIsNone(service.relayService)
        self.assertIsNone(service.autonatServer)
        node.addresses.setReachability("public")
        clock.advance(0)
        self.assertIsNotNone(service.relayService)
        self.assertFalse(service.relayService.status()["open"])
        self.assertIsNotNone(service.autonatServer)
        self.assertEqual([s.primary for s in service.stunServers], [("192.168.1.5", 4001)])
        self.assertTrue(service.status()["autonat_server"])
        node.addresses.setReachability("private")
        clock.advance(0)
        self.assertIsNone(service.relayService)
        self.assertIsNone(service.autonatServer)
        self.assertEqual(service.stunServers, [])

    def test_openRelaysAlways(self):
        """
        C{relay = "open"} relays from the start, with no circuit caps and
        the operator's limits; C{"off"} never relays.
        """
        service, node, clock = self._service(relayMode="open", relayLimits={"maxCircuits": 64})
        self.assertIsNotNone(service.relayService)
        self.assertEqual((service.relayService.limits.duration, service.relayService.limits.data,
                          service.relayService.limits.maxCircuits), (0, 0, 64))
        off, offNode, offClock = self._service(relayMode="off")
        offNode.addresses.setReachability("public")
        offClock.advance(0)
        self.assertIsNone(off.relayService)

    def test_publicListenAddressServesAutoNAT(self):
        """
        A node with a public listen address serves AutoNAT before any
        verdict (so the first public nodes can confirm each other), but
        does not relay until it is confirmed public.
        """
        service, node, clock = self._service(listen="/ip4/203.0.113.7/tcp/4001")
        clock.advance(0)
        self.assertIsNotNone(service.autonatServer)
        self.assertIsNone(service.relayService)

    def test_reservesWhenPrivate(self):
        """
        A private node reserves on up to two relaying peers, bootstrap
        peers first, skipping peers that do not relay and relayed
        connections; a relay that refuses is replaced by the next one.
        """
        boot = Identity.generate().peerID
        service, node, clock = self._service(bootstrap=[Multiaddr.fromString(f"/ip4/192.0.2.1/tcp/1/p2p/{boot}")])
        other, third, plain, viaRelay = (Identity.generate().peerID for _ in range(4))
        node.conns = [
            _Conn(other, (HOP_PROTOCOL,)), _Conn(plain, ("/ipfs/id/1.0.0",)),
            _Conn(viaRelay, (HOP_PROTOCOL,), limited=True), _Conn(boot, (HOP_PROTOCOL,)),
            _Conn(third, (HOP_PROTOCOL,)),
        ]
        clock.advance(0)
        self.assertEqual(service.reserved, [])
        node.addresses.setReachability("private")
        clock.advance(0)
        self.assertEqual(service.reserved, [boot, other])
        from twisted.python.failure import Failure

        from beam.p2p.relay.messages import RelayRefused, Status

        service._reserveFailed(Failure(RelayRefused(Status.RESERVATION_REFUSED)), boot)
        clock.advance(0)
        self.assertEqual(service.reserved, [boot, other, third])
        self.assertEqual(service.status()["reserving"], [str(other), str(third)])

    def test_relaysFromDHT(self):
        """
        With no connected peer that relays, a private node dials peers of
        its DHT routing table (a bootstrap peer among them first, a few at
        a time, at most eight dials a minute, never itself or a peer
        dialled lately) and reserves on those whose identify lists the
        hop protocol; with the table used up it looks up more peers.
        """
        boot = Identity.generate().peerID
        peers = [Identity.generate().peerID for _ in range(12)]
        dht = _FakeDHT([_info(p) for p in peers] + [_info(boot)])
        service, node, clock = self._service(
            bootstrap=[Multiaddr.fromString(f"/ip4/192.0.2.1/tcp/1/p2p/{boot}")], dht=dht)
        dht.table.append(_info(node.peerID))
        node.addresses.setReachability("private")
        clock.advance(0)
        self.assertEqual(service.reserved, [])
        self.assertEqual(node.dialled[0], boot)
        self.assertEqual(len(node.dialled), 6, "two per relay wanted, and two more")
        self.assertEqual(service.status()["relay_search"]["dials_last_minute"], 6)
        self.assertNotIn(node.peerID, node.dialled)
        # The bootstrap peer does not relay; two others do.
        node.connected(boot, ("/ipfs/id/1.0.0",))
        clock.advance(0)
        node.connected(node.dialled[2], (HOP_PROTOCOL,))
        clock.advance(0)
        self.assertEqual(service.reserved, [node.dialled[2]])
        for peer in node.dialled[1:6]:
            if peer in node.dials and peer != node.dialled[4]:
                node.dials.pop(peer).errback(Failure(ConnectionRefusedError()))
        clock.advance(0)
        self.assertEqual(len(node.dialled), 8, "eight dials in the first minute, no more")
        self.assertEqual(dht.lookups, [])
        node.connected(node.dialled[4], (HOP_PROTOCOL,))
        clock.advance(0)
        self.assertEqual(service.reserved, [node.dialled[2], node.dialled[4]])
        self.assertEqual(len(node.dialled), 8, "two reservations: no more dials")
        # One relay lost and refused: after a minute the rest of the table
        # is dialled, and with too few new peers left a lookup runs.
        for conn in list(node.conns):
            if conn.remotePeer == node.dialled[4]:
                node.conns.remove(conn)
        service._reserveFailed(Failure(ConnectionRefusedError()), node.dialled[4])
        for peer in list(node.dials):
            node.dials.pop(peer).errback(Failure(ConnectionRefusedError()))
        clock.advance(61)
        self.assertEqual(len(node.dialled), 8 + 4, "four at a time for one relay wanted")
        self.assertEqual(dht.lookups, [])
        for peer in list(node.dials):
            node.dials.pop(peer).errback(Failure(ConnectionRefusedError()))
        clock.advance(0)
        self.assertEqual(len(node.dialled), 13, "the whole table")
        self.assertEqual(len(set(node.dialled)), len(node.dialled), "no peer dialled twice")
        self.assertEqual(len(dht.lookups), 1)
        found = Identity.generate().peerID
        dht.lookups[0].callback([_info(found), _info(node.peerID)])
        for peer in list(node.dials):
            node.dials.pop(peer).errback(Failure(ConnectionRefusedError()))
        clock.advance(61)
        self.assertIn(found, node.dialled)
        self.assertNotIn(node.peerID, node.dialled)

    def test_unknownTooLong(self):
        """
        With no verdict after the grace period and no public listen
        address, the node reserves anyway; with a public listen address it
        waits for AutoNAT.
        """
        relayPeer = Identity.generate().peerID
        service, node, clock = self._service(unknownGrace=30.0)
        node.conns = [_Conn(relayPeer, (HOP_PROTOCOL,))]
        clock.advance(29)
        self.assertEqual(service.reserved, [])
        clock.advance(31)
        self.assertEqual(service.reserved, [relayPeer])
        public, publicNode, publicClock = self._service(listen="/ip4/203.0.113.7/tcp/4001", unknownGrace=30.0)
        publicNode.conns = [_Conn(relayPeer, (HOP_PROTOCOL,))]
        publicClock.advance(120)
        self.assertEqual(public.reserved, [])

    def test_stunDiscovery(self):
        """
        With C{stun_servers}, discovery runs once at start with few
        retransmissions and its verdict shows in the status; a failure
        shows as one line.
        """
        from beam.p2p.nat import NatBehaviour

        calls: list[Any] = []

        def discover(reactor: Any, servers: Any, **kw: Any) -> Deferred[Any]:
            calls.append((list(servers), kw))
            return succeed(NatBehaviour("endpoint-independent", "address-and-port-dependent", ("203.0.113.9", 5)))

        service, node, clock = self._service(stunServers=["192.0.2.1:3478"], discover=discover)
        self.assertEqual(calls, [(["192.0.2.1:3478"], {"rc": 3})])
        self.assertEqual(service.status()["nat"]["strategy"], "punch")
        # A filtering NAT makes the node private at once: relays are
        # sought now, not after the grace period.
        self.assertEqual(node.addresses.reachability, "private")
        self.assertTrue(service.wantsRelays())

    def test_republishOnSettledChange(self):
        """
        L{NatService.watchAddrs} calls back once the watched addresses
        changed and then stayed so for the settle delay.
        """
        service, node, clock = self._service(settleDelay=2.0)
        current = ["a"]
        acted: list[int] = []
        service.watchAddrs(lambda: tuple(current), lambda: acted.append(1))
        current.append("b")
        node.addresses.setReachability("private")
        clock.advance(1)
        node.addresses.setReachability("unknown")
        clock.advance(1)
        self.assertEqual(acted, [])
        clock.advance(1)
        self.assertEqual(acted, [1])
        node.addresses.setReachability("private")
        clock.advance(5)
        self.assertEqual(acted, [1], "nothing changed since")

    def test_stopLeavesNoServers(self):
        """
        Stopping stops and drops the servers the reachability started, so
        the service's only child left is the AutoNAT client.
        """
        service, node, clock = self._service()
        node.addresses.setReachability("public")
        clock.advance(0)
        self.assertEqual(len(list(service)), 3)
        self.successResultOf(service.stopService())
        self.assertEqual(list(service), [service.autonatClient])
        self.assertFalse(service.autonatClient.running)


class _FakeMapper(Service):
    """
    A L{PortMapper<beam.p2p.nat.portmap.PortMapper>} stand-in: the test
    reports addresses through C{onAddress}.
    """

    def __init__(self, reactor: Any, port: int, onAddress: Any) -> None:
        self.internalPort = port
        self.onAddress = onAddress

    def stopService(self) -> None:
        super().stopService()
        self.onAddress(None)

    def status(self) -> dict[str, Any]:
        return {"state": "mapped", "protocol": "nat-pmp", "internalPort": self.internalPort,
                "externalAddr": "/ip4/203.0.113.50/tcp/4001", "expiresIn": 3600.0, "lastError": None}


class _FakeTurn:
    """
    A L{TurnTransport<beam.p2p.nat.turntransport.TurnTransport>} stand-in.
    """

    made: list["_FakeTurn"] = []

    def __init__(self, node: Any, server: Any, username: str, password: str) -> None:
        self.server = server
        self.username = username
        self.password = password
        self.started: Deferred[Any] = Deferred()
        self.observers: list[Any] = []
        self.addr: Any = None
        self.stopped = False
        self.allocation: Any = None
        _FakeTurn.made.append(self)

    def addAddressObserver(self, observer: Any) -> None:
        self.observers.append(observer)

    def start(self) -> Deferred[Any]:
        return self.started

    def relayedAddr(self) -> Any:
        return self.addr

    def allocate(self, text: str, expires: float) -> None:
        old, self.addr = self.addr, Multiaddr.fromString(text)
        self.allocation = type("A", (), {"expires": expires})()
        for o in self.observers:
            o(old, self.addr)
        self.started.callback(None)

    def stop(self) -> Deferred[None]:
        self.stopped = True
        return succeed(None)

    def permit(self, ips: Any) -> Deferred[None]:
        self.permitted = [*getattr(self, "permitted", []), *ips]
        return succeed(None)


class _Server:
    def __init__(self, url: str, host: str, port: int) -> None:
        self.url, self.host, self.port = url, host, port
        self.username, self.password = "user", "s3cret-password"


class _MappedConn:
    def __init__(self, local: str, remote: str, direction: str = "inbound") -> None:
        self.localAddr = Multiaddr.fromString(local)
        self.remoteAddr = Multiaddr.fromString(remote)
        self.direction = direction
        self.limited = False


class NatServiceTraversalTests(SynchronousTestCase):
    """
    Hole punching, port mapping and TURN in L{NatService}.
    """

    _service = NatServiceTests._service

    def test_holePuncher(self):
        """
        Every node serves DCUtR while the service runs, and stops serving
        when it stops; status counts punches.
        """
        from beam.p2p.holepunch.dcutr import PROTOCOL

        service, node, clock = self._service()
        self.assertIn(PROTOCOL, node.handlers)
        self.assertEqual(service.status()["hole_punching"],
                         {"active": 0, "punched": 0, "failed": 0, "last_failure": None})
        relay = Identity.generate().peerID
        service._punchEvent("failed", relay, {"relay": str(relay), "reason": "x"})
        self.assertEqual(service.status()["hole_punching"]["last_failure"],
                         f"hole punch failed, staying on relay via {relay}")
        self.successResultOf(service.stopService())
        self.assertNotIn(PROTOCOL, node.handlers)
        off, offNode, _ = self._service(holePunch=False)
        self.assertNotIn(PROTOCOL, offNode.handlers)
        self.assertIsNone(off.status()["hole_punching"])

    def test_portMapping(self):
        """
        With port mapping, the TCP listen port is mapped; the external
        address is an AutoNAT candidate while mapped, and is withdrawn
        (also as confirmed) when the mapping goes or the service stops.
        Status shows the mapping; without C{port_mapping} there is none.
        """
        service, node, clock = self._service(portMapping=True, makePortMapper=_FakeMapper)
        mapper = service.portMapper
        assert mapper is not None
        self.assertEqual((mapper.internalPort, mapper.running), (4001, True))
        external = Multiaddr.fromString("/ip4/203.0.113.50/tcp/4001")
        mapper.onAddress(external)
        self.assertIn(external, node.addresses.candidates())
        node.addresses.confirm(external)
        moved = Multiaddr.fromString("/ip4/203.0.113.51/tcp/4001")
        mapper.onAddress(moved)
        self.assertNotIn(external, node.addresses.confirmed())
        self.assertIn(moved, node.addresses.candidates())
        status = service.status()["port_mapping"]
        self.assertEqual((status["protocol"], status["external_addr"], status["expires_in"], status["last_error"]),
                         ("nat-pmp", "/ip4/203.0.113.50/tcp/4001", 3600.0, None))
        self.successResultOf(service.stopService())
        self.assertFalse(mapper.running)
        self.assertNotIn(moved, node.addresses.candidates())
        plain, _, _ = self._service()
        self.assertIsNone(plain.portMapper)
        self.assertIsNone(plain.status()["port_mapping"])

    def test_portMappedPath(self):
        """
        While mapped, an inbound connection from a public address to our
        private listen address on the mapped port is shown as
        C{port-mapped}; outbound, LAN and other-port connections are not.
        """
        service, node, clock = self._service(portMapping=True, makePortMapper=_FakeMapper)
        local = "/ip4/192.168.1.5/tcp/4001"
        before = _MappedConn(local, "/ip4/198.18.0.1/tcp/5000")
        service._connectionEvent("connected", before)
        self.assertIsNone(getattr(before, "path", None), "no mapping yet")
        service.portMapper.onAddress(Multiaddr.fromString("/ip4/203.0.113.50/tcp/4001"))
        mapped = _MappedConn(local, "/ip4/203.0.113.9/tcp/5000")
        lan = _MappedConn(local, "/ip4/192.168.1.9/tcp/5000")
        out = _MappedConn(local, "/ip4/203.0.113.9/tcp/5000", direction="outbound")
        other = _MappedConn("/ip4/192.168.1.5/tcp/4002", "/ip4/203.0.113.9/tcp/5000")
        for conn in (mapped, lan, out, other):
            service._connectionEvent("connected", conn)
        self.assertEqual([getattr(c, "path", None) for c in (mapped, lan, out, other)],
                         ["port-mapped", None, None, None])

    def test_noPortToMap(self):
        """
        With no IPv4 TCP listen address, port mapping reports why in
        status instead of failing the node.
        """
        service, node, clock = self._service(listen="/ip6/::1/tcp/4001", portMapping=True,
                                              makePortMapper=_FakeMapper)
        self.assertIsNone(service.portMapper)
        self.assertEqual(service.status()["port_mapping"]["last_error"], "no IPv4 TCP listen address to map")

    def test_turnWhenPrivate(self):
        """
        TURN allocates only once relays are wanted (private); its relayed
        address becomes a relay address (shared, advertised) without
        making the node public or an AutoNAT candidate; status shows the
        allocation but never the credentials; turning public releases it.
        """
        _FakeTurn.made = []
        servers = [_Server("turn:192.0.2.30:3478", "192.0.2.30", 3478)]
        service, node, clock = self._service(turnServers=servers, makeTurn=_FakeTurn)
        clock.advance(0)
        self.assertEqual(_FakeTurn.made, [])
        self.assertEqual(service.status()["turn"]["state"], "idle")
        node.addresses.setReachability("private")
        clock.advance(0)
        [turn] = _FakeTurn.made
        self.assertEqual((turn.server, turn.username, turn.password), (("192.0.2.30", 3478), "user", "s3cret-password"))
        turn.allocate("/ip4/192.0.2.30/tcp/50000", clock.seconds() + 600)
        relayed = Multiaddr.fromString("/ip4/192.0.2.30/tcp/50000")
        self.assertIn(relayed, node.addresses.relayAddrs())
        self.assertIn(relayed, node.addresses.shareable())
        self.assertIn(relayed, node.addresses.advertisedFor(None))
        self.assertNotIn(relayed, node.addresses.candidates())
        self.assertEqual(node.addresses.reachability, "private")
        status = service.status()["turn"]
        self.assertEqual(status, {"server": "turn:192.0.2.30:3478", "state": "allocated",
                                  "relayed_addr": str(relayed), "expires_in": 600, "last_error": None})
        self.assertNotIn("s3cret", repr(service.status()))
        node.addresses.setReachability("public")
        clock.advance(0)
        self.assertTrue(turn.stopped)
        self.assertNotIn(relayed, node.addresses.relayAddrs())

    def test_turnPermitsPunchedPeer(self):
        """
        When a hole punch's exchange tells a peer's addresses ("synced"),
        their IPs (each once) are permitted on the TURN allocation, whose
        relayed address our CONNECT offered; without TURN nothing happens.
        """
        peer = Identity.generate().peerID
        synced = {"rtt": 0.1, "role": "B", "addrs": ["/ip4/203.0.113.7/tcp/4001", "/ip4/203.0.113.7/tcp/5123",
                                                      "/ip6/2001:db8::7/tcp/4001", "not an address"]}
        plain, _, _ = self._service()
        plain._punchEvent("synced", peer, synced)
        _FakeTurn.made = []
        servers = [_Server("turn:192.0.2.30:3478", "192.0.2.30", 3478)]
        service, node, clock = self._service(turnServers=servers, makeTurn=_FakeTurn)
        node.addresses.setReachability("private")
        clock.advance(0)
        [turn] = _FakeTurn.made
        turn.allocate("/ip4/192.0.2.30/tcp/50000", clock.seconds() + 600)
        service._punchEvent("attempt", peer, {"attempt": 1})
        self.assertFalse(hasattr(turn, "permitted"))
        service._punchEvent("synced", peer, synced)
        self.assertEqual(turn.permitted, ["203.0.113.7", "2001:db8::7"])

    def test_turnFailover(self):
        """
        A TURN server that fails is reported in status (its URL, one
        line) and the next server is tried after C{turnRetry} seconds.
        """
        _FakeTurn.made = []
        servers = [_Server("turn:192.0.2.30:3478", "192.0.2.30", 3478),
                   _Server("turn:192.0.2.31:3478", "192.0.2.31", 3478)]
        service, node, clock = self._service(turnServers=servers, makeTurn=_FakeTurn, turnRetry=60.0,
                                              checkInterval=10.0)
        node.addresses.setReachability("private")
        clock.advance(0)
        from beam.errors import DialError

        _FakeTurn.made[0].started.errback(DialError("TURN server refused: 401 Unauthorized"))
        self.assertTrue(_FakeTurn.made[0].stopped)
        self.assertEqual(service.status()["turn"]["last_error"],
                         "turn:192.0.2.30:3478: TURN server refused: 401 Unauthorized")
        clock.advance(30)
        self.assertEqual(len(_FakeTurn.made), 1)
        clock.advance(31)
        self.assertEqual([t.server for t in _FakeTurn.made], [("192.0.2.30", 3478), ("192.0.2.31", 3478)])
        self.successResultOf(service.stopService())
        self.assertTrue(_FakeTurn.made[1].stopped)


class RelayFailoverTests(TestCase):
    """
    A forward through a relay that dies comes back through another relay,
    keeping its local listener.
    """

    timeout = 120

    @inlineCallbacks
    def test_relayDies(self):
        """
        The host (private, hole punching off so the tunnel stays relayed)
        reserves on two open relays; a client's forward reaches it through
        relay 1.  Relay 1 stops: the forward keeps its local port, redials
        the host through relay 2, and a new local connection echoes again
        within a bounded wait (the issue asks for 10 s).  (Given the
        host's direct address, the client would come back directly,
        which is as good.)
        """
        noPunch = {"nat": {**FAST_NAT, "holePunch": False}}
        relay1 = yield _startDaemon(self, Config(listen=LOOPBACK, relayMode="open"))
        relay2 = yield _startDaemon(self, Config(listen=LOOPBACK, relayMode="open"))
        host = yield _startDaemon(
            self, Config(listen=LOOPBACK, bootstrap=(_address(relay1), _address(relay2))), serviceOptions=noPunch,
        )
        host.node.addresses.setReachability("private")
        nat = host.service("nat")
        yield _until(lambda: {relay1.node.peerID, relay2.node.peerID} <= set(nat.relayClient.reservations))

        echo = reactor.listenTCP(0, Factory.forProtocol(_Echo), interface="127.0.0.1")
        self.addCleanup(echo.stopListening)
        host.tunnels.exposePort(echo.getHost().port, "echo")
        circuits = [a for a in host.tunnels.shareAddress("echo").addrs if "p2p-circuit" in a.protocols()]
        circuits.sort(key=lambda a: str(relay1.node.peerID) not in str(a))
        self.assertEqual(len(circuits), 2)

        client = yield _startDaemon(self, Config(listen=LOOPBACK), serviceOptions=noPunch)
        _relayedOnly(client, host)
        share = ShareAddress(peer=host.node.peerID, addrs=tuple(circuits), service="echo")
        forward = yield client.forwards.start(share, probe=True)
        port = int(forward.listen.rpartition(":")[2])
        got = yield deferToThreadRoundTrip(port, b"before")
        self.assertEqual(got, b"before")
        conn = client.node.connectionTo(host.node.peerID)
        self.assertIn(str(relay1.node.peerID), str(conn.remoteAddr))

        yield relay1.stopService()
        # Bounded by tries, not asserted as a time: 20 tries 0.5 s apart.
        for _ in range(20):
            try:
                got = yield deferToThreadRoundTrip(port, b"after", timeout=2.0)
            except OSError:
                got = b""
            if got == b"after":
                break
            yield deferLater(reactor, 0.5, lambda: None)
        self.assertEqual(got, b"after")
        self.assertEqual(client.forwards.forwardStatus(str(port), client.forwards.byKey[str(port)]).listen,
                         forward.listen, "the local listener is the same")
        conn = client.node.connectionTo(host.node.peerID)
        self.assertIn(str(relay2.node.peerID), str(conn.remoteAddr))
