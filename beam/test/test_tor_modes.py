"""
What the tor modes change inside the node (issue 10): the dialer tries
onion addresses last, the address book places and tells them, identify
learns nothing about addresses over Tor, the DHT keeps undialable onion
peers out and never serves from a Tor-only node, the NAT service runs
nothing in tor mode C{"always"}, and a forward over Tor dials only onion
addresses.

Whole nodes run on the memory grid under a L{Clock}
(L{beam.test.memnodes}), with L{FakeTor}: a memory transport named
C{"tor"} that dials and listens on C{/onion3} addresses.
"""

from __future__ import annotations

import base64
from types import SimpleNamespace
from typing import Any, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from beam.daemon.nat import NatService
from beam.dht.addrfilter import filterMessage
from beam.dht.messages import Message, PeerInfo
from beam.dht.service import KAD_PROTOCOL, KademliaService, _dialable
from beam.errors import DialError
from beam.identity.keys import Identity
from beam.identity.multiaddr import Multiaddr
from beam.p2p.autonat.messages import DIAL_BACK_PROTOCOL
from beam.p2p.holepunch.dcutr import PROTOCOL as DCUTR_PROTOCOL
from beam.p2p.host.addrs import AddressBook, addrScope, vantageOf
from beam.p2p.host.dialer import dialsOnion, torOnly
from beam.p2p.host.identifying import NodeIdentify
from beam.p2p.host.node import Node
from beam.p2p.protocols.identify import IdentifyInfo
from beam.p2p.relay.transport import RelayTransport
from beam.p2p.transport.memory import MemoryAddress, MemoryNetwork, MemoryTransport
from beam.test.memnodes import MemoryGrid
from beam.test.test_nat_daemon import _FakeNode, _FakeStun
from beam.tunnel.forwards import NO_TOR, Forwards, _OverTor
from beam.tunnel.host import TunnelSpecError
from beam.tunnel.resource import forwardArgs
from beam.tunnel.share import ShareAddress


def onion(n: int, port: int = 4001) -> Multiaddr:
    """
    A well-formed C{/onion3} address, different for each C{n}.
    """
    host = base64.b32encode(bytes([n]) * 35).decode("ascii").lower()
    return Multiaddr.fromString(f"/onion3/{host}:{port}")


class _OnionListener:
    def __init__(self, network: MemoryNetwork, port: int, addr: Multiaddr, onions: dict[Multiaddr, int]) -> None:
        self.network = network
        self.port = port
        self.addr = addr
        self.onions = onions

    def stopListening(self) -> Deferred[None]:
        self.network.listeners.pop(self.port, None)
        self.onions.pop(self.addr, None)
        return succeed(None)


class FakeTor(MemoryTransport):
    """
    The C{"tor"} transport on the memory grid: C{/onion3} addresses only,
    each mapped to a memory port by C{onions} (shared by every node of a
    test).  Like a real Tor client, its sockets end at something local:
    both ends of every connection look like C{127.0.0.1}.

    @ivar dialled: every address dialled, in order.
    """

    name = "tor"

    def __init__(self, clock: Any, network: MemoryNetwork, onions: dict[Multiaddr, int]) -> None:
        super().__init__(clock, network)
        self.onions = onions
        self.dialled: list[Multiaddr] = []

    def canDial(self, addr: Multiaddr) -> bool:
        return addr.isOnion()

    canListen = canDial

    def listen(self, addr: Multiaddr, factory: Any) -> Deferred[Any]:
        port = self.network.allocate()
        self.network.listeners[port] = factory
        bare = addr.withoutPeerID()
        self.onions[bare] = port
        return succeed(_OnionListener(self.network, port, bare, self.onions))

    def dial(self, addr: Multiaddr, factory: Any, timeout: float) -> Deferred[Any]:
        self.dialled.append(addr)
        port = self.onions.get(addr.withoutPeerID(), 0)
        return super().dial(Multiaddr.fromString(f"/memory/{port or self.network.allocate()}"), factory, timeout)

    def multiaddrOf(self, address: Any) -> Optional[Multiaddr]:
        if isinstance(address, MemoryAddress):
            return Multiaddr.fromString(f"/ip4/127.0.0.1/tcp/{address.port % 65535 + 1}")
        return None


class _TorGrid:
    """
    Nodes on one memory grid, with or without L{FakeTor}.
    """

    def __init__(self, testCase: SynchronousTestCase) -> None:
        self.grid = MemoryGrid(testCase)
        self.onions: dict[Multiaddr, int] = {}

    def node(self, listen: tuple[str | Multiaddr, ...] = ("/memory/0",), memory: bool = True,
             tor: bool = True) -> tuple[Node, Optional[FakeTor]]:
        grid = self.grid
        transports: list[Any] = []
        if memory:
            transports.append(MemoryTransport(grid.clock, grid.network))
        fake = FakeTor(grid.clock, grid.network, self.onions) if tor else None
        if fake is not None:
            transports.append(fake)
        node = Node(grid.clock, Identity.generate(), list(listen), transports=transports)
        grid.nodes.append(node)
        grid.result(node.startService())
        return node, fake


class OnionAddressTests(SynchronousTestCase):
    """
    L{Multiaddr.isOnion} and onion addresses in the L{AddressBook}.
    """

    def test_isOnion(self) -> None:
        """
        Only addresses that start with an onion service are onion
        addresses, with or without a trailing C{/p2p}.
        """
        peer = Identity.generate().peerID
        self.assertTrue(onion(1).isOnion())
        self.assertTrue(onion(1).withPeerID(peer).isOnion())
        self.assertFalse(Multiaddr.fromString("/ip4/1.2.3.4/tcp/1").isOnion())
        self.assertFalse(Multiaddr.fromString("/memory/3").isOnion())
        self.assertFalse(Multiaddr.fromString(f"/ip4/1.2.3.4/tcp/1/p2p/{peer}/p2p-circuit").isOnion())

    def test_scope(self) -> None:
        """
        An onion address is on no IP network: scope C{"other"}.
        """
        self.assertEqual(addrScope(onion(1)), "other")

    def _book(self, *listen: str | Multiaddr) -> AddressBook:
        addrs = [Multiaddr(a) if isinstance(a, str) else a for a in listen]
        return AddressBook(lambda: addrs)

    def test_shareableOrder(self) -> None:
        """
        Share addresses list the onion address after confirmed, relay,
        public and other listen addresses, and before private and
        loopback ones (a stranger can use it, and it must survive lists
        cut short).
        """
        book = self._book("/ip4/127.0.0.1/tcp/1", "/ip4/192.168.1.5/tcp/1", onion(1),
                          "/dns4/example.com/tcp/1", "/ip4/8.8.8.8/tcp/1")
        relay = Multiaddr.fromString(f"/ip4/9.9.9.9/tcp/1/p2p/{Identity.generate().peerID}/p2p-circuit")
        book.setRelayAddrs([relay])
        book.confirm(Multiaddr.fromString("/ip4/1.1.1.1/tcp/1"))
        self.assertEqual([str(a) for a in book.shareable()], [
            "/ip4/1.1.1.1/tcp/1", str(relay), "/ip4/8.8.8.8/tcp/1", "/dns4/example.com/tcp/1", str(onion(1)),
            "/ip4/192.168.1.5/tcp/1", "/ip4/127.0.0.1/tcp/1",
        ])

    def test_advertisedToEveryone(self) -> None:
        """
        Every peer is told the onion address, last, wherever it connects
        from; a peer over Tor (no vantage: public) is told no private or
        loopback address.
        """
        book = self._book("/ip4/127.0.0.1/tcp/1", "/ip4/192.168.1.5/tcp/1", onion(1), "/ip4/8.8.8.8/tcp/1")
        for via in (None, Multiaddr.fromString("/ip4/127.0.0.1/tcp/9"), Multiaddr.fromString("/ip4/5.5.5.5/tcp/9")):
            self.assertEqual(book.advertisedFor(via)[-1], onion(1))
        self.assertEqual(book.advertisedFor(None), [Multiaddr.fromString("/ip4/8.8.8.8/tcp/1"), onion(1)])

    def test_onlyOnion(self) -> None:
        """
        A node listening only on its onion address (tor mode
        C{"always"}) tells every peer, and strangers, that alone; a
        stranger with Tor can reach it.
        """
        book = self._book(onion(1))
        for via in (None, Multiaddr.fromString("/ip4/127.0.0.1/tcp/9"), Multiaddr.fromString("/ip4/10.0.0.1/tcp/9")):
            self.assertEqual(book.advertisedFor(via), [onion(1)])
        self.assertEqual(book.shareable(), [onion(1)])
        self.assertTrue(book.hasReachableAddress())
        self.assertEqual(book.candidates(), [])

    def test_listenAddrsChanged(self) -> None:
        """
        L{AddressBook.listenAddrsChanged} tells the observers (identify
        push, name republishing) that a listen address came or went.
        """
        book = self._book(onion(1))
        calls: list[None] = []
        book.onChange(lambda: calls.append(None))
        book.listenAddrsChanged()
        self.assertEqual(len(calls), 1)

    def test_vantage(self) -> None:
        """
        A connection over Tor has no vantage point (it is treated as a
        stranger on the Internet), whatever its socket says; any other
        connection's vantage is where its peer is seen.
        """
        loop = Multiaddr.fromString("/ip4/127.0.0.1/tcp/9050")
        self.assertIsNone(vantageOf(SimpleNamespace(transport="tor", observedRemote=loop, remoteAddr=loop)))
        self.assertEqual(vantageOf(SimpleNamespace(transport="tcp", observedRemote=loop, remoteAddr=loop)), loop)


class TorDialTests(SynchronousTestCase):
    """
    The dialer dials onion addresses only after every other address
    failed, or at once when they are all there is.
    """

    def setUp(self) -> None:
        self.world = _TorGrid(self)
        self.a, self.aTor = self.world.node(listen=("/memory/0", onion(1)))
        self.b, self.bTor = self.world.node()

    def test_listensOnOnion(self) -> None:
        """
        The onion listen address passes the expansion of unspecified
        addresses unchanged, and is shared.
        """
        self.assertIn(onion(1), self.a.addresses.listenAddrs())
        self.assertIn(onion(1).withPeerID(self.a.peerID), self.a.shareableAddrs())

    def test_directWins(self) -> None:
        """
        A direct address that works is used; Tor is never dialled.
        """
        direct = self.world.grid.addr(self.a, withPeer=False)
        self.b.peerStore.addAddrs(self.a.peerID, [onion(1), direct], "user")
        conn = self.world.grid.result(self.b.connect(self.a.peerID))
        self.assertEqual(conn.transport, "memory")
        assert self.bTor is not None
        self.assertEqual(self.bTor.dialled, [])

    def test_onionAfterDirectFailed(self) -> None:
        """
        A direct address that never answers: Tor is dialled only once its
        dial failed (the handshake timed out), listed first or not.
        """
        self.b._dialer.torDelay = self.b.dialTimeout * 3
        silent = self.world.grid.silentListener()
        self.b.peerStore.addAddrs(self.a.peerID, [onion(1), silent.addr], "user")
        d = self.b.connect(self.a.peerID)
        self.world.grid.advance(self.b.dialTimeout * 0.9)
        self.assertNoResult(d)
        assert self.bTor is not None
        self.assertEqual(self.bTor.dialled, [], "Tor waits for the direct dial to fail")
        self.world.grid.advance(self.b.dialTimeout)
        conn = self.successResultOf(d)
        self.assertEqual(conn.transport, "tor")
        self.assertEqual(self.bTor.dialled, [onion(1)])

    def test_onionAfterTorDelay(self) -> None:
        """
        Direct addresses that never answer, each costing a whole dial
        timeout: Tor joins in after L{Dialer.torDelay} seconds, not after
        all of them timed out, and the connection runs over Tor.
        """
        self.b._dialer.torDelay = self.b.dialTimeout / 3
        silent = [self.world.grid.silentListener() for _ in range(3)]
        self.b.peerStore.addAddrs(self.a.peerID, [onion(1), *(s.addr for s in silent)], "user")
        d = self.b.connect(self.a.peerID)
        self.world.grid.advance(self.b._dialer.torDelay * 0.9)
        assert self.bTor is not None
        self.assertEqual(self.bTor.dialled, [])
        self.world.grid.advance(self.b._dialer.torDelay * 0.2)
        self.assertEqual(self.bTor.dialled, [onion(1)])
        self.world.grid.advance(1.0)
        conn = self.successResultOf(d)
        self.assertEqual(conn.transport, "tor")

    def test_bothStagesFail(self) -> None:
        """
        Tor started on the timer fails while the direct dial still runs:
        the dial waits for the direct one, and then fails with both
        reasons.
        """
        self.b._dialer.torDelay = 1.0
        silent = self.world.grid.silentListener()
        other = onion(7)
        self.b.peerStore.addAddrs(self.a.peerID, [other, silent.addr], "user")
        d = self.b.connect(self.a.peerID)
        self.world.grid.advance(2.0)
        self.assertNoResult(d)
        self.world.grid.advance(self.b.dialTimeout * 2)
        f = self.failureResultOf(d, DialError)
        self.assertIn(str(other), f.getErrorMessage())
        self.assertIn("did not answer the libp2p handshake", f.getErrorMessage())

    def test_torOnlyDialsOnionFirst(self) -> None:
        """
        A Tor-only node dials the onion address before an IP address
        (which it could reach only through an exit), whatever the order
        given.
        """
        c, cTor = self.world.node(listen=(onion(3),), memory=False)
        assert cTor is not None
        # Like the real transport in mode always: IP addresses too (exits).
        cTor.canDial = lambda addr: True  # type: ignore[method-assign]
        ip = Multiaddr.fromString("/ip4/203.0.113.9/tcp/4001")
        c.peerStore.addAddrs(self.a.peerID, [ip, onion(1)], "user")
        conn = self.world.grid.result(c.connect(self.a.peerID))
        self.assertEqual(conn.transport, "tor")
        self.assertEqual(cTor.dialled, [onion(1)])

    def test_onionAfterDirectRefused(self) -> None:
        """
        A direct address that refuses at once: Tor is dialled at once
        after it, and the connection runs over Tor.
        """
        nobody = Multiaddr.fromString(f"/memory/{self.world.grid.network.allocate()}")
        self.b.peerStore.addAddrs(self.a.peerID, [onion(1), nobody], "user")
        conn = self.world.grid.result(self.b.connect(self.a.peerID))
        self.assertEqual(conn.transport, "tor")

    def test_onionAtOnce(self) -> None:
        """
        With nothing but onion addresses, Tor is dialled at once.
        """
        self.b.peerStore.addAddrs(self.a.peerID, [onion(1)], "user")
        conn = self.world.grid.result(self.b.connect(self.a.peerID))
        self.assertEqual(conn.transport, "tor")

    def test_errorNamesEveryAddress(self) -> None:
        """
        When every address failed, the error names each one, the onion
        address included.
        """
        nobody = Multiaddr.fromString(f"/memory/{self.world.grid.network.allocate()}")
        other = onion(7)
        self.b.peerStore.addAddrs(self.a.peerID, [other, nobody], "user")
        f = self.world.grid.failure(self.b.connect(self.a.peerID), DialError)
        message = f.getErrorMessage()
        self.assertIn(str(nobody), message)
        self.assertIn(str(other), message)

    def test_noTorTransport(self) -> None:
        """
        A node without Tor reports an onion address as undialable, after
        trying the others.
        """
        c, _ = self.world.node(tor=False)
        self.assertFalse(dialsOnion(c))
        nobody = Multiaddr.fromString(f"/memory/{self.world.grid.network.allocate()}")
        c.peerStore.addAddrs(self.a.peerID, [onion(1), nobody], "user")
        f = self.world.grid.failure(c.connect(self.a.peerID), DialError)
        self.assertIn("no transport", f.getErrorMessage())
        self.assertIn(str(nobody), f.getErrorMessage())

    def test_torOnly(self) -> None:
        """
        L{torOnly}: every transport is the C{"tor"} one.
        """
        c, _ = self.world.node(listen=(onion(3),), memory=False)
        self.assertTrue(torOnly(c))
        self.assertFalse(torOnly(self.b))
        self.assertTrue(dialsOnion(self.b))

    def test_identifyOverTor(self) -> None:
        """
        Over a Tor connection neither side sends an observed address, and
        neither notes one; both still learn each other's addresses that a
        stranger could use (here: the onion address).
        """
        self.b.peerStore.addAddrs(self.a.peerID, [onion(1)], "user")
        conn = self.world.grid.result(self.b.connect(self.a.peerID))
        info = self.world.grid.result(conn.identified)
        self.assertIsNone(info.observedAddr)
        self.assertEqual(self.b.addresses.observed(), {})
        self.assertEqual(self.a.addresses.observed(), {})
        self.assertIn(onion(1), self.b.peerStore.addrs(self.a.peerID))


class _IdentifyNode:
    """
    What L{NodeIdentify} uses of a node.
    """

    def __init__(self, listen: list[Multiaddr]) -> None:
        self.reactor = Clock()
        self.identity = Identity.generate()
        self.protocols = ["/ipfs/id/1.0.0"]
        self.agentVersion = "test"
        self.addresses = AddressBook(lambda: listen)
        self.listenAddrs = listen
        self.learned: list[Multiaddr] = []
        self.peerStore = SimpleNamespace(
            addAddrs=lambda peer, addrs, source: self.learned.extend(addrs),
            setProtocols=lambda *a: None, setAgent=lambda *a: None,
        )

    def notifyObservers(self, event: str, conn: Any) -> None:
        pass


class IdentifyTests(SynchronousTestCase):
    """
    Identify on a connection over Tor, with fakes: nothing about where
    anyone is.
    """

    listen = [Multiaddr.fromString(a) for a in ("/ip4/127.0.0.1/tcp/1", "/ip4/192.168.1.5/tcp/1",
                                                "/ip4/8.8.8.8/tcp/1")] + [onion(1)]
    local = Multiaddr.fromString("/ip4/127.0.0.1/tcp/9050")

    def _conn(self, transport: str) -> Any:
        return SimpleNamespace(transport=transport, observedRemote=self.local, remoteAddr=self.local,
                               localAddr=self.local, limited=False, remotePeer=Identity.generate().peerID,
                               identify=None)

    def test_answerOverTor(self) -> None:
        """
        Over Tor we send no observed address and only what a stranger may
        know (public and onion addresses), although the socket is on
        loopback; over a real loopback connection, everything.
        """
        ident = NodeIdentify(_IdentifyNode(self.listen), 5.0)  # type: ignore[arg-type]
        info = ident.infoFor(SimpleNamespace(connection=self._conn("tor")))
        self.assertIsNone(info.observedAddr)
        self.assertEqual(list(info.listenAddrs), [self.listen[2], onion(1)])
        info = ident.infoFor(SimpleNamespace(connection=self._conn("tcp")))
        self.assertEqual(info.observedAddr, self.local)
        self.assertEqual(set(info.listenAddrs), set(self.listen))

    def test_learnOverTor(self) -> None:
        """
        Over Tor the observed address the peer reports is ignored, and of
        its addresses we keep only those a stranger could use.
        """
        node = _IdentifyNode(self.listen)
        ident = NodeIdentify(node, 5.0)  # type: ignore[arg-type]
        told = IdentifyInfo(listenAddrs=tuple(self.listen), observedAddr=self.local)
        ident.learn(self._conn("tor"), told)
        self.assertEqual(node.addresses.observed(), {})
        self.assertEqual(node.learned, [self.listen[2], onion(1)])


class DHTTests(SynchronousTestCase):
    """
    The DHT with onion addresses and on a Tor-only node.
    """

    def test_dialable(self) -> None:
        """
        A peer's onion address counts as dialable only for a node that
        dials Tor; a peer over Tor is filtered as a stranger.
        """
        local = Multiaddr.fromString("/ip4/127.0.0.1/tcp/9050")
        conn = SimpleNamespace(transport="tor", observedRemote=local, remoteAddr=local)
        private = Multiaddr.fromString("/ip4/192.168.1.5/tcp/1")
        self.assertEqual(_dialable(conn, [private, onion(1)], onion=False), ())
        self.assertEqual(_dialable(conn, [private, onion(1)], onion=True), (onion(1),))

    def test_answers(self) -> None:
        """
        Closer peers' onion addresses are dropped from answers by a node
        that cannot dial them.
        """
        peer = Identity.generate().peerID
        pub = Multiaddr.fromString("/ip4/8.8.8.8/tcp/1")
        message = Message(type=4, closerPeers=(PeerInfo(peer, (pub, onion(1))),))
        self.assertEqual(filterMessage(message, None, onion=False).closerPeers[0].addrs, (pub,))
        self.assertEqual(filterMessage(message, None).closerPeers[0].addrs, (pub, onion(1)))

    def test_torOnlyIsClient(self) -> None:
        """
        A Tor-only node never serves the DHT: not at start, even when
        configured as a server, nor when its reachability turns public.
        """
        world = _TorGrid(self)
        node, _ = world.node(listen=(onion(1),), memory=False)
        for mode in ("auto", "server"):
            service = KademliaService(world.grid.clock, node, None, mode=mode)
            service.startService()
            self.assertFalse(service.kad.isServer)
            self.assertFalse(node.hasStreamHandler(KAD_PROTOCOL))
            node.addresses.confirm(Multiaddr.fromString("/ip4/8.8.8.8/tcp/1"))
            self.assertFalse(service.kad.isServer)
            self.assertFalse(node.hasStreamHandler(KAD_PROTOCOL))
            service.stopService()

    def test_routingTable(self) -> None:
        """
        A peer known only at its onion address joins the routing table of
        a node with Tor, not that of a node without.
        """
        world = _TorGrid(self)
        for tor, expected in ((True, 1), (False, 0)):
            node, _ = world.node(tor=tor)
            service = KademliaService(world.grid.clock, node, None, mode="server")
            service.startService()
            conn = SimpleNamespace(
                transport="tor", observedRemote=onion(9), remoteAddr=onion(9), direction="inbound",
                limited=False, remotePeer=Identity.generate().peerID,
                identify=IdentifyInfo(protocols=(KAD_PROTOCOL,), listenAddrs=(onion(2),)),
            )
            service._connectionEvent("identified", conn)
            self.assertEqual(service.kad.routingTable.size, expected)
            service.stopService()


class NatTests(SynchronousTestCase):
    """
    The NAT service in tor mode C{"always"} runs nothing.
    """

    def _service(self, torMode: str) -> tuple[NatService, _FakeNode, Clock]:
        clock = Clock()
        node = _FakeNode(clock, [onion(1)])
        service = NatService(clock, node, torMode=torMode, makeStunServer=_FakeStun,
                             stunServers=["192.0.2.1:3478"], portMapping=True,
                             makePortMapper=lambda *a, **kw: self.fail("port mapping in always mode"),
                             discover=lambda *a, **kw: self.fail("STUN in always mode"),
                             turnServers=[SimpleNamespace(host="192.0.2.2", port=3478, username="u",
                                                          password="p", url="turn:192.0.2.2")],
                             makeTurn=lambda *a, **kw: self.fail("TURN in always mode"))
        return service, node, clock

    def test_always(self) -> None:
        """
        Tor mode C{"always"}: no relay transport, no AutoNAT (client or
        server), no relay client or service, no DCUtR, STUN, TURN or port
        mapping, whatever the reachability; the status says why.
        """
        service, node, clock = self._service("always")
        service.startService()
        self.assertFalse(any(isinstance(t, RelayTransport) for t in node.transports))
        node.addresses.setReachability("private")
        clock.advance(100)
        node.addresses.confirm(Multiaddr.fromString("/ip4/8.8.8.8/tcp/1"))
        clock.advance(100)
        self.assertEqual(node.handlers, {})
        self.assertIsNone(service.relayClient)
        self.assertIsNone(service.autonatServer)
        self.assertIsNone(service.relayService)
        self.assertIsNone(service.holePuncher)
        self.assertFalse(service.autonatClient.running)
        self.assertEqual(service.stunServers, [])
        status = service.status()
        self.assertEqual(status["disabled"], "tor always")
        self.assertEqual(status["tor_mode"], "always")
        self.assertEqual(clock.getDelayedCalls(), [])
        service.stopService()
        self.assertFalse(service.running)

    def test_alwaysStillWatchesAddrs(self) -> None:
        """
        The name service's address watch still works in tor mode
        C{"always"}: the onion address appearing republishes.
        """
        service, node, clock = self._service("always")
        service.settleDelay = 1.0
        current = [()]
        acted: list[None] = []
        service.watchAddrs(lambda: current[0], lambda: acted.append(None))
        service.startService()
        current[0] = (onion(1),)  # type: ignore[assignment]
        node.addresses.listenAddrsChanged()
        clock.advance(2)
        self.assertEqual(len(acted), 1)
        service.stopService()

    def test_fallbackRuns(self) -> None:
        """
        Tor mode C{"fallback"} changes nothing: AutoNAT and DCUtR run.
        """
        clock = Clock()
        node = _FakeNode(clock, [Multiaddr.fromString("/ip4/192.168.1.5/tcp/1"), onion(1)])
        service = NatService(clock, node, torMode="fallback", makeStunServer=_FakeStun)
        service.startService()
        self.addCleanup(service.stopService)
        self.assertIn(DIAL_BACK_PROTOCOL, node.handlers)
        self.assertIn(DCUTR_PROTOCOL, node.handlers)
        self.assertIsNone(service.status()["disabled"])


class ForwardTests(SynchronousTestCase):
    """
    Forwards over Tor dial only onion addresses.
    """

    def test_noTor(self) -> None:
        """
        A node without Tor refuses a forward over Tor, saying how to fix
        it.
        """
        world = _TorGrid(self)
        node, _ = world.node(tor=False)
        forwards = Forwards(world.grid.clock, node)
        share = ShareAddress(peer=Identity.generate().peerID, addrs=(onion(1),))
        f = self.failureResultOf(forwards.start(share, tor=True), TunnelSpecError)
        self.assertEqual(f.getErrorMessage(), NO_TOR)
        f = self.failureResultOf(forwards.add("/onion3/x", tor=True), TunnelSpecError)
        self.assertEqual(f.getErrorMessage(), NO_TOR)

    def test_noOnion(self) -> None:
        """
        A host without an onion address cannot be reached over Tor: the
        error names it.
        """
        world = _TorGrid(self)
        node, _ = world.node()
        forwards = Forwards(world.grid.clock, node)
        share = ShareAddress(peer=Identity.generate().peerID, addrs=(Multiaddr.fromString("/memory/5"),))
        f = self.failureResultOf(forwards.start(share, tor=True, name="web"), TunnelSpecError)
        self.assertEqual(f.getErrorMessage(), "web has no onion address")

    def test_dialsOnionOnly(self) -> None:
        """
        The node a forward over Tor uses dials the host at its onion
        address, although a working direct address is known (in the peer
        store too).
        """
        world = _TorGrid(self)
        a, _ = world.node(listen=("/memory/0", onion(1)))
        b, bTor = world.node()
        direct = world.grid.addr(a, withPeer=False)
        b.peerStore.addAddrs(a.peerID, [direct], "identify")
        over = _OverTor(b, a.peerID, "a")
        over.addrs = lambda: (direct, onion(1))
        conn = world.grid.result(over.connect(a.peerID))
        self.assertEqual(conn.transport, "tor")
        assert bTor is not None
        self.assertEqual(bTor.dialled, [onion(1)])
        stream = world.grid.result(over.openStream(a.peerID, ["/ipfs/ping/1.0.0"], lambda: _Quiet()))
        self.assertIs(stream.transport.connection, conn)
        # Everything else is the node's.
        self.assertEqual(over.peerID, b.peerID)

    def test_onionGone(self) -> None:
        """
        When a re-resolve leaves the host without an onion address, the
        forward's dials fail saying so.
        """
        world = _TorGrid(self)
        b, _ = world.node()
        over = _OverTor(b, Identity.generate().peerID, "web")
        over.addrs = lambda: (Multiaddr.fromString("/memory/5"),)
        f = self.failureResultOf(over.connect(over._peer), DialError)
        self.assertEqual(f.getErrorMessage(), "web has no onion address")

    def test_controlArgs(self) -> None:
        """
        C{POST /v1/forwards} accepts C{"tor": true} and passes it; without
        it, nothing new is passed.
        """
        self.assertIs(forwardArgs({"target": "web", "tor": True})["tor"], True)
        self.assertNotIn("tor", forwardArgs({"target": "web"}))


class _Quiet:
    """
    A stream protocol that says nothing.
    """

    transport: Any = None

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Any) -> None:
        pass
