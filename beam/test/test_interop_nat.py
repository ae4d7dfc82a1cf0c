"""
NAT traversal interoperability with a real js-libp2p 3.x node
(interop/peer.mjs with @libp2p/circuit-relay-v2 and @libp2p/autonat-v2).

Circuit relay v2 both ways: js reserves on a Beam relay and Beam reaches it
through the relay; Beam reserves on a js relay and js reaches it through
that.  AutoNAT v2 both ways, as far as loopback allows (see
L{AutoNATInteropTests}).  Under CI these tests fail rather than skip when
the js peer is not installed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from beam.identity.keys import Identity, PeerID
from beam.identity.multiaddr import Multiaddr
from beam.p2p.autonat import (
    DIAL_REQUEST_PROTOCOL,
    AutoNATClient,
    AutoNATServer,
    DialStatus,
    ResponseStatus,
)
from beam.p2p.holepunch.dcutr import HolePuncher
from beam.p2p.host.addrs import AddressBook
from beam.p2p.protocols.echo import ECHO_PROTOCOL
from beam.p2p.relay.client import RelayClient
from beam.p2p.relay.hop import RelayLimits, RelayService
from beam.p2p.relay.transport import RelayTransport
from beam.test.jspeer import JSPeer, requireInterop
from beam.test.nodeutil import EchoClient, addrOf, randomPayload, startNode

#: Fits in both relays' default per-circuit data limit (128 KiB each way).
PAYLOAD = 32 * 1024


def orderedSeed(other: PeerID, smaller: bool) -> bytes:
    """
    A fixed 32-byte Ed25519 seed whose peer ID sorts before C{other}'s
    (C{smaller}) or after it, as L{Node._register<beam.p2p.host.node.Node>}
    compares them: the first of C{sha256("js seed N")} that does.
    """
    for n in range(256):
        seed = hashlib.sha256(f"js seed {n}".encode()).digest()
        if (Identity.fromSeed(seed).peerID.bytes < other.bytes) == smaller:
            return seed
    raise AssertionError("no seed found")


def withTimeout(d: Deferred[Any], seconds: float) -> Deferred[Any]:
    """
    C{d}, failing with a timeout after C{seconds} of the real reactor.
    """
    return d.addTimeout(seconds, reactor)


@inlineCallbacks
def waitUntil(predicate: Callable[[], bool], seconds: float) -> Any:
    """
    Poll C{predicate} on the real reactor until it holds; fail with
    L{TimeoutError} after C{seconds}.
    """
    deadline = reactor.seconds() + seconds
    while not predicate():
        if reactor.seconds() > deadline:
            raise TimeoutError(f"condition not met within {seconds} s")
        yield deferLater(reactor, 0.05, lambda: None)


class _LoopbackBook(AddressBook):
    """
    An address book whose candidates are the given addresses: the real
    book asks AutoNAT about public addresses only, and loopback is all
    these tests have.
    """

    def __init__(self, candidates: Any) -> None:
        super().__init__(lambda: [])
        self._candidates = candidates

    def candidates(self) -> list[Multiaddr]:
        return [a for a in self._candidates() if a not in self.confirmed() and a not in self.rejected()]


class RelayInteropTests(TestCase):
    """
    Circuit relay v2 between Beam and js-libp2p's @libp2p/circuit-relay-v2.
    """

    timeout = 90

    def setUp(self) -> None:
        requireInterop(self)

    @inlineCallbacks
    def startJS(self, *args: str) -> Any:
        js = yield JSPeer.start(reactor, extraArgs=args)
        self.addCleanup(js.stop)
        return js

    @inlineCallbacks
    def startRelayingNode(self) -> Any:
        """
        A Beam node that can dial and accept C{/p2p-circuit} addresses.
        """
        node = yield startNode(self)
        transport = RelayTransport(node)
        node.transports.append(transport)
        return node, transport

    @inlineCallbacks
    def test_jsReservesOnBeamRelay(self) -> Any:
        """
        A js node reserves on a Beam L{RelayService} (its relay transport
        listening on the relay's C{/p2p-circuit}) and advertises the
        relayed address it got; a Beam node dials js through that address:
        the connection is limited, authenticated to js's peer ID, and an
        echo stream over it comes back intact.
        """
        relay = yield startNode(self)
        service = RelayService(relay, RelayLimits())
        service.setServiceParent(relay)
        js = yield self.startJS("--relay-transport")

        relayAddr = str(addrOf(relay))
        listened = yield js.relayListen(relayAddr, timeout=30)
        circuits = [a for a in listened["addrs"] if "/p2p-circuit" in a]
        self.assertTrue(circuits, listened)
        for a in circuits:
            self.assertTrue(a.startswith(relayAddr + "/p2p-circuit"), a)
        jsPeer = PeerID.fromString(js.peerId)
        self.assertIn(jsPeer, service.reservations)

        dialer, _ = yield self.startRelayingNode()
        addr = Multiaddr.fromString(f"{relayAddr}/p2p-circuit/p2p/{js.peerId}")
        conn = yield withTimeout(dialer.connect(addr), 30)
        self.assertEqual(conn.remotePeer, jsPeer)
        self.assertTrue(conn.limited)

        payload, digest = randomPayload(PAYLOAD)
        client = EchoClient(payload)
        yield dialer.openStream(jsPeer, ECHO_PROTOCOL, lambda: client)
        echoed = yield withTimeout(client.done, 30)
        self.assertEqual(len(echoed), PAYLOAD)
        self.assertEqual(hashlib.sha256(echoed).hexdigest(), digest)

    @inlineCallbacks
    def test_beamReservesOnJSRelay(self) -> Any:
        """
        Beam's L{RelayClient} reserves on a js relay (circuitRelayServer):
        the reservation carries the js relay's address and a limit, and js
        lists it; a second js node dials Beam through the js relay's
        C{/p2p-circuit} address and an echo stream to Beam's handler comes
        back intact; on Beam's side that connection is limited and inbound.
        """
        jsRelay = yield self.startJS("--relay-server")
        node, transport = yield self.startRelayingNode()
        client = RelayClient(node, transport)
        self.addCleanup(client.stop)

        reservation = yield withTimeout(client.reserve(Multiaddr.fromString(jsRelay.addr)), 30)
        self.assertEqual(reservation.relay, PeerID.fromString(jsRelay.peerId))
        self.assertIn(Multiaddr.fromString(jsRelay.addr), list(reservation.addrs))
        self.assertIsNotNone(reservation.voucher)
        self.assertIsNotNone(reservation.limit)
        listed = yield jsRelay.relayReservations()
        self.assertEqual([r["peerId"] for r in listed["reservations"]], [str(node.peerID)])

        jsDialer = yield self.startJS("--relay-transport")
        circuit = f"{jsRelay.addr}/p2p-circuit/p2p/{node.peerID}"
        echoed = yield jsDialer.echo(circuit, PAYLOAD, timeout=30)
        self.assertEqual(echoed["sent"], PAYLOAD)
        self.assertEqual(echoed["received"], PAYLOAD)
        self.assertEqual(echoed["sha256Sent"], echoed["sha256Received"])

        conn = node.connections[PeerID.fromString(jsDialer.peerId)]
        self.assertTrue(conn.limited)
        self.assertEqual(conn.direction, "inbound")


class _Responses:
    """
    Record the L{DialResponse}s an L{AutoNATClient} evaluates (what the
    server answered, as Beam decoded it).
    """

    def __init__(self, client: AutoNATClient) -> None:
        self.seen: list[Any] = []
        original = client._evaluate

        def evaluate(attempt: Any, response: Any) -> None:
            self.seen.append((attempt, response))
            original(attempt, response)

        client._evaluate = evaluate  # type: ignore[method-assign]


class AutoNATInteropTests(TestCase):
    """
    AutoNAT v2 between Beam and js-libp2p's @libp2p/autonat-v2.

    What loopback allows: js's server refuses to dial back any private
    address (its C{handleDialRequestStream} throws "Requested address had
    private IP" for 127.0.0.0/8 and ::1, logs it, and closes the stream
    without a C{DialResponse}), so a Beam client can never get a js dial
    back here; the tests check both answers js does give (no response for
    a private address, C{E_DIAL_REFUSED} for an address it cannot dial).
    js's client never asks about private addresses on its own
    (C{getUnverifiedMultiaddrs} drops them), so peer.mjs runs its real
    request code on a loopback address we name; Beam's server dials back.
    """

    timeout = 90

    def setUp(self) -> None:
        requireInterop(self)

    @inlineCallbacks
    def test_jsClientBeamServer(self) -> Any:
        """
        js (listening on 127.0.0.2, connecting from 127.0.0.1) asks Beam's
        L{AutoNATServer} to verify its 127.0.0.2 address: Beam asks for
        dial data, js pays it, Beam dials 127.0.0.2 back from its separate
        dialer, js's dial-back handler acknowledges the nonce, Beam answers
        C{OK}/C{OK}, and js's client confirms the address.
        """
        server = yield startNode(self)
        autonat = AutoNATServer(server, dialDataBytes=30_000)
        autonat.setServiceParent(server)
        self.addCleanup(autonat.stopService)
        js = yield JSPeer.start(reactor, extraArgs=["--autonat", "--listen", "/ip4/127.0.0.2/tcp/0"])
        self.addCleanup(js.stop)
        own = js.addr.rsplit("/p2p/", 1)[0]
        self.assertTrue(own.startswith("/ip4/127.0.0.2/"), js.addrs)

        result = yield js.autonatVerify(str(addrOf(server)), own, timeout=45)
        self.assertEqual(autonat.served, {"dial data asked": 1, "OK/OK": 1})
        self.assertEqual(result["success"], 1)
        self.assertIs(result["result"], True)
        self.assertEqual(result["failure"], 0)

    @inlineCallbacks
    def startClient(self, candidates: list[str]) -> Any:
        """
        A js AutoNAT server and a Beam node whose L{AutoNATClient} asks it
        about C{candidates} ("{port}" is the node's listen port), connected.
        """
        js = yield JSPeer.start(reactor, extraArgs=["--autonat"])
        self.addCleanup(js.stop)
        node = yield startNode(self)
        port = node.listenAddrs[0].tcpTarget()[1]
        addrs = [Multiaddr.fromString(c.format(port=port)) for c in candidates]
        book = _LoopbackBook(lambda: addrs)
        client = AutoNATClient(node, addresses=book)
        responses = _Responses(client)
        client.setServiceParent(node)
        self.addCleanup(client.stopService)
        conn = yield node.connect(Multiaddr.fromString(js.addr))
        # The connection's own identify (js serves one identify stream per
        # connection at a time, so do not start a second) tells the client
        # that js serves AutoNAT v2.
        yield waitUntil(lambda: conn in client.servers(), 20)
        self.assertIn(DIAL_REQUEST_PROTOCOL, conn.identify.protocols)
        return client, book, responses, addrs

    @inlineCallbacks
    def test_beamClientPrivateAddress(self) -> Any:
        """
        Beam asks js's server about its loopback listen address: js reads
        the request and closes the stream without a response (private IP),
        which Beam takes as no verdict: nothing confirmed or rejected.
        """
        client, book, responses, addrs = yield self.startClient(["/ip4/127.0.0.1/tcp/{port}"])
        yield withTimeout(client.check(), 30)
        self.assertGreaterEqual(client.asked, 1)
        self.assertEqual(responses.seen, [])
        self.assertEqual(book.confirmed(), [])
        self.assertEqual(book.rejected(), [])
        self.assertEqual(book.reachability, "unknown")

    @inlineCallbacks
    def test_beamClientRefused(self) -> Any:
        """
        Beam asks js's server about a QUIC address (js has no QUIC
        transport) first and its TCP address second: js answers
        C{E_DIAL_REFUSED} for address 0 with dial status C{UNUSED}, Beam
        decodes that answer and draws no verdict from it.
        """
        client, book, responses, addrs = yield self.startClient(
            ["/ip4/127.0.0.1/udp/{port}/quic-v1", "/ip4/127.0.0.1/tcp/{port}"]
        )
        yield withTimeout(client.check(), 30)
        self.assertTrue(responses.seen)
        attempt, response = responses.seen[0]
        self.assertEqual(list(attempt.addrs), addrs)
        self.assertEqual(response.status, ResponseStatus.E_DIAL_REFUSED)
        self.assertEqual(response.addrIdx, 0)
        self.assertEqual(response.dialStatus, DialStatus.UNUSED)
        self.assertEqual(book.confirmed(), [])
        self.assertEqual(book.rejected(), [])


class AutoNATDialBackInteropTests(TestCase):
    """
    AutoNAT v2 with a real dial back from js-libp2p's server: the js peer
    runs with C{loopback-public.mjs}, which makes @libp2p/autonat-v2 take
    loopback addresses for public ones (test code only: Beam's side is
    unchanged).
    """

    timeout = 90

    def setUp(self) -> None:
        requireInterop(self)

    @inlineCallbacks
    def askJS(self, jsDialsFirst: bool) -> Any:
        """
        Start a js AutoNAT server and a Beam node whose L{AutoNATClient}
        (on the node's own address book) asks it about the node's loopback
        listen address, with identities ordered so that L{Node._register}'s
        duplicate rule keeps the connection js dials (C{jsDialsFirst}: js's
        peer ID is the smaller) or the one Beam dialled.

        @return: the node's address book, the address, and the responses.
        """
        identity = Identity.fromSeed(hashlib.sha256(b"beam autonat interop").digest())
        js = yield JSPeer.start(
            reactor, seed=orderedSeed(identity.peerID, smaller=jsDialsFirst), extraArgs=["--autonat"],
            loopbackPublic=True,
        )
        self.addCleanup(js.stop)
        self.assertIs(js.events[0].get("loopbackPublic"), True)
        node = yield startNode(self, identity=identity)
        own = node.listenAddrs[0]
        book = node.addresses
        # The real book asks only about public addresses; loopback is all
        # this test has.
        self.patch(book, "candidates", lambda: [] if own in book.confirmed() else [own])
        client = AutoNATClient(node)
        responses = _Responses(client)
        client.setServiceParent(node)
        self.addCleanup(client.stopService)
        # Once identify shows js serves AutoNAT v2, the client asks it on
        # its own.
        yield node.connect(Multiaddr.fromString(js.addr))
        try:
            yield waitUntil(lambda: bool(responses.seen), 30)
        except TimeoutError:
            self.fail(f"no answer from js; client asked {client.asked}; js: {js.stderr}")
        return book, own, responses

    @inlineCallbacks
    def test_beamClientConfirmedByJSDialBack(self) -> Any:
        """
        Beam's L{AutoNATClient}, on the node's own address book, asks js's
        server about the node's loopback listen address: js dials it back
        on a new connection and sends the nonce on
        C{/libp2p/autonat/2/dial-back}, answers C{OK} with dial status
        C{OK}, and the node's address book confirms the address and calls
        the node public.
        """
        book, own, responses = yield self.askJS(jsDialsFirst=True)
        self.assertEqual(len(responses.seen), 1, responses.seen)
        attempt, response = responses.seen[0]
        self.assertEqual(list(attempt.addrs), [own])
        self.assertEqual(response.status, ResponseStatus.OK)
        self.assertEqual(response.addrIdx, 0)
        self.assertEqual(response.dialStatus, DialStatus.OK)
        self.assertEqual(book.confirmed(), [own])
        self.assertEqual(book.rejected(), [])
        self.assertEqual(book.reachability, "public")


    @inlineCallbacks
    def test_beamClientDuplicateRule(self) -> Any:
        """
        The same with Beam's peer ID the smaller one.
        """
        book, own, responses = yield self.askJS(jsDialsFirst=False)
        attempt, response = responses.seen[0]
        self.assertEqual(response.status, ResponseStatus.OK)
        self.assertEqual(response.dialStatus, DialStatus.OK)
        self.assertEqual(book.confirmed(), [own])



class DCUtRInteropTests(TestCase):
    """
    @libp2p/dcutr on a relayed connection between Beam and js, with js
    taking loopback addresses for public ones (C{loopback-public.mjs}).
    """

    timeout = 90

    def setUp(self) -> None:
        requireInterop(self)

    @inlineCallbacks
    def test_jsUpgradesBeamsRelayedConnection(self) -> Any:
        """
        Beam dials js through a Beam relay; js, the inbound side (DCUtR's
        B), sees Beam's loopback listen address in identify and upgrades
        unilaterally: a direct connection results and an echo runs over it.
        """
        relay = yield startNode(self)
        service = RelayService(relay, RelayLimits())
        service.setServiceParent(relay)
        js = yield JSPeer.start(reactor, extraArgs=["--relay-transport", "--dcutr"], loopbackPublic=True)
        self.addCleanup(js.stop)
        relayAddr = str(addrOf(relay))
        yield js.relayListen(relayAddr, timeout=30)
        dialer = yield startNode(self)
        dialer.transports.append(RelayTransport(dialer))
        puncher = HolePuncher(dialer)
        self.addCleanup(puncher.stop)
        jsPeer = PeerID.fromString(js.peerId)
        conn = yield withTimeout(dialer.connect(Multiaddr.fromString(f"{relayAddr}/p2p-circuit/p2p/{js.peerId}")), 30)
        self.assertTrue(conn.limited)
        try:
            yield waitUntil(lambda: any(
                c.remotePeer == jsPeer and not c.limited and c.acceptsStreams for c in dialer.liveConnections()), 20)
        except TimeoutError:
            self.fail(js.stderr)
        direct = [c for c in dialer.liveConnections() if c.remotePeer == jsPeer and not c.limited]
        self.assertEqual(direct[0].direction, "inbound")
        payload, digest = randomPayload(PAYLOAD)
        client = EchoClient(payload)
        yield dialer.openStream(jsPeer, ECHO_PROTOCOL, lambda: client)
        echoed = yield withTimeout(client.done, 30)
        self.assertEqual(hashlib.sha256(echoed).hexdigest(), digest)
