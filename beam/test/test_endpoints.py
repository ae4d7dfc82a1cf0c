"""
Tests for L{beam.endpoints}: the C{beam:} endpoint strings (parsed with
no I/O, good and bad), L{BeamAddress}, the stream transport on its own,
and whole endpoints on loopback: two nodes with separate homes in this
process, a factory served with the server endpoint and reached with the
client endpoint (byte-exact both ways, with half-close in either order),
the errors C{connect()} and C{listen()} report, and C{beam connect} (a
real command-line process) reaching a factory served here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, DeferredList, gatherResults, inlineCallbacks
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    clientFromString,
    connectProtocol,
    quoteStringArgument,
    serverFromString,
)
from twisted.internet.error import ConnectionDone, NoProtocol
from twisted.internet.interfaces import (
    IAddress,
    IHalfCloseableProtocol,
    IListeningPort,
    IStreamClientEndpoint,
    IStreamClientEndpointStringParserWithReactor,
    IStreamServerEndpoint,
    IStreamServerEndpointStringParser,
    ITransport,
)
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.plugin import getPlugins
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from beam.endpoints import (
    AccessDenied,
    BeamAddress,
    BeamClientEndpoint,
    BeamClientParser,
    BeamServerEndpoint,
    BeamServerParser,
    HomeInUse,
    HostUnreachable,
    NodeOptions,
    NodeOptionsConflict,
    OwnService,
    ServiceExists,
    ServiceNotFound,
    ServiceUnavailable,
    defaultHome,
    launchNode,
)
from beam.endpoints import _node
from beam.endpoints._stream import StreamTransport
from beam.errors import NodeStopped
from beam.identity.keys import Identity
from beam.identity.multiaddr import Multiaddr
from beam.tunnel import TunnelStats
from beam.tunnel.share import parseShareAddress

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = "/ip4/127.0.0.1/tcp/0"
PEER_A = str(Identity.generate().peerID)
PEER_B = str(Identity.generate().peerID)
BOOT = f"/ip4/192.0.2.1/tcp/4001/p2p/{PEER_A}"


def tempHome(test: Any) -> str:
    """
    A fresh home directory, short enough for the control socket's path,
    removed when the test ends.
    """
    home = tempfile.mkdtemp(prefix="beam-ep-")
    test.addCleanup(shutil.rmtree, home, True)
    return home


# -- parsing --------------------------------------------------------------------


class ParserTests(SynchronousTestCase):
    """
    C{beam:} strings through Twisted's C{serverFromString} and
    C{clientFromString}: what they build, and L{ValueError} for anything
    wrong, before any I/O.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()

    def test_pluginsFound(self) -> None:
        """
        Twisted finds the C{beam} server and client parsers among its
        endpoint plugins.
        """
        servers = [p for p in getPlugins(IStreamServerEndpointStringParser) if p.prefix == "beam"]
        clients = [p for p in getPlugins(IStreamClientEndpointStringParserWithReactor) if p.prefix == "beam"]
        self.assertEqual([type(p) for p in servers], [BeamServerParser])
        self.assertEqual([type(p) for p in clients], [BeamClientParser])

    def test_serverAllOptions(self) -> None:
        """
        Every server option is parsed into the endpoint: lists are
        comma-separated, colons in values escaped.
        """
        description = (
            "beam:service=web:home=/srv/beam:listen=/ip4/127.0.0.1/tcp/4001,/ip6/\\:\\:1/tcp/4001"
            f":bootstrap={BOOT}:name=Alice.Home:allow={PEER_A},{PEER_B}:secret=s3cret:compress=yes"
        )
        endpoint = serverFromString(self.reactor, description)
        self.assertIsInstance(endpoint, BeamServerEndpoint)
        self.assertTrue(verifyObject(IStreamServerEndpoint, endpoint))
        self.assertEqual(endpoint.service, "web")
        self.assertEqual(endpoint.options, NodeOptions(
            home=Path("/srv/beam"),
            listen=(Multiaddr.fromString("/ip4/127.0.0.1/tcp/4001"), Multiaddr.fromString("/ip6/::1/tcp/4001")),
            bootstrap=(Multiaddr.fromString(BOOT),),
        ))
        self.assertEqual(endpoint.name, "alice.home")
        self.assertEqual({str(p) for p in endpoint.policy.allow}, {PEER_A, PEER_B})
        self.assertEqual(endpoint.policy.secret, b"s3cret")
        self.assertTrue(endpoint.compress)

    def test_serverDefaults(self) -> None:
        """
        C{beam:NAME} (the service positionally) is a public service on the
        default node, without compression or name.
        """
        endpoint = serverFromString(self.reactor, "beam:web")
        self.assertEqual(endpoint.service, "web")
        self.assertEqual(endpoint.options, NodeOptions())
        self.assertTrue(endpoint.policy.isPublic)
        self.assertFalse(endpoint.compress)
        self.assertIsNone(endpoint.name)

    def test_badServerStrings(self) -> None:
        """
        Each malformed server description raises L{ValueError} naming the
        problem.
        """
        bad = {
            "beam:": "needs a service",
            "beam:home=/tmp": "needs a service",
            "beam:service=we b": "not a service name",
            "beam:service=a/b": "not a service name",
            "beam:service=-web": "not a service name",
            "beam:web:service=web": "once",
            "beam:web:other": "one positional",
            "beam:service=web:colour=blue": "unknown option(s) colour",
            "beam:service=web:listen=/ip4/127.0.0.1/udp/1": "cannot listen",
            f"beam:service=web:listen=/ip4/127.0.0.1/tcp/1/p2p/{PEER_A}": "leave out /p2p",
            "beam:service=web:listen=/ip4/1.2.3/tcp/1": "listen",
            "beam:service=web:bootstrap=/ip4/127.0.0.1/tcp/1": "must end in /p2p",
            "beam:service=web:allow=notapeer": "allow",
            "beam:service=web:name=-x-": "name",
            "beam:service=web:compress=maybe": "expected yes or no",
        }
        for description, words in bad.items():
            with self.assertRaises(ValueError, msg=description) as caught:
                serverFromString(self.reactor, description)
            self.assertIn(words, str(caught.exception), description)

    def test_clientTargets(self) -> None:
        """
        A name with or without a service, an escaped share address (with
        its secret), and a C{/p2p/} multiaddr followed by a service or
        with C{service=} all parse.
        """
        byName = clientFromString(self.reactor, "beam:Alice/web:timeout=5:compress=on")
        self.assertIsInstance(byName, BeamClientEndpoint)
        self.assertTrue(verifyObject(IStreamClientEndpoint, byName))
        self.assertEqual((byName.target.name, byName.target.service), ("alice", "web"))
        self.assertEqual(byName.timeout, 5.0)
        self.assertTrue(byName.compress)

        default = clientFromString(self.reactor, "beam:alice")
        self.assertEqual((default.target.name, default.target.service), ("alice", ""))

        share = f"beam://{PEER_A}@127.0.0.1:4001,[::1]:4001/web#onxw2zlumv4hi"
        byShare = clientFromString(self.reactor, "beam:" + quoteStringArgument(share))
        self.assertEqual(byShare.target.share, parseShareAddress(share))
        self.assertEqual(byShare.target.service, "web")
        self.assertEqual(byShare.target.share.secret, b"sometext")

        byAddr = clientFromString(self.reactor, f"beam:/ip4/127.0.0.1/tcp/4001/p2p/{PEER_A}/web")
        self.assertEqual(str(byAddr.target.share.peer), PEER_A)
        self.assertEqual(byAddr.target.share.addrs, (Multiaddr.fromString("/ip4/127.0.0.1/tcp/4001"),))
        self.assertEqual(byAddr.target.service, "web")

        overridden = clientFromString(
            self.reactor, f"beam:/ip6/\\:\\:1/tcp/4001/p2p/{PEER_A}:service=ssh:secret=pw:home=/h"
        )
        self.assertEqual(overridden.target.service, "ssh")
        self.assertEqual(overridden.target.share.addrs, (Multiaddr.fromString("/ip6/::1/tcp/4001"),))
        self.assertEqual(overridden.secret, b"pw")
        self.assertEqual(overridden.options.home, Path("/h"))

    def test_badClientStrings(self) -> None:
        """
        Each malformed client description raises L{ValueError} naming the
        problem.
        """
        bad = {
            "beam:": "needs a target",
            f"beam:beam://{PEER_A}@127.0.0.1:4001/web": "one target",
            "beam:beam\\://nobody@127.0.0.1\\:4001/web": "beam://",
            f"beam:beam\\://{PEER_A}@127.0.0.1\\:99999/web": "bad port",
            "beam:-alice-/web": "target",
            "beam:alice/we b": "not a service name",
            "beam:alice:service=a/b": "not a service name",
            f"beam:/ip4/127.0.0.1/tcp/4001/p2p/{PEER_A}/a b": "not a service name",
            "beam:/ip4/127.0.0.1/tcp/4001": "/p2p/",
            "beam:alice/web:timeout=0": "positive",
            "beam:alice/web:timeout=soon": "seconds",
            "beam:alice/web:name=bob": "unknown option(s) name",
            "beam:alice/web:bootstrap=/ip4/127.0.0.1/tcp/1": "must end in /p2p",
        }
        for description, words in bad.items():
            with self.assertRaises(ValueError, msg=description) as caught:
                clientFromString(self.reactor, description)
            self.assertIn(words, str(caught.exception), description)

    def test_noIOWhileParsing(self) -> None:
        """
        Parsing binds nothing, launches no node and does not create the
        home directory.
        """
        home = os.path.join(tempHome(self), "not-yet")
        serverFromString(self.reactor, f"beam:service=web:home={home}:listen={LOOPBACK}")
        clientFromString(self.reactor, f"beam:alice/web:home={home}")
        self.assertFalse(os.path.exists(home))
        self.assertEqual(self.reactor.tcpServers, [])
        self.assertEqual(self.reactor.tcpClients, [])
        self.assertEqual(_node._launching, {})
        self.assertNotIn(Path(home), _node._nodes)

    def test_nodeOrOptions(self) -> None:
        """
        An endpoint is given either a running node or the options to launch
        one, not both.
        """
        with self.assertRaises(ValueError):
            BeamServerEndpoint(self.reactor, "web", node=object(), home="/x")  # type: ignore[arg-type]
        with self.assertRaises(ValueError):
            BeamClientEndpoint(self.reactor, "alice/web", node=object(), listen=LOOPBACK)  # type: ignore[arg-type]

    def test_defaultHome(self) -> None:
        """
        The default home is C{endpoints/} in the command line's home, not
        that home itself, so a C{beam daemon} can run beside.
        """
        from beam.storage.home import resolveHome

        self.assertEqual(defaultHome(), resolveHome() / "endpoints")
        self.assertEqual(NodeOptions().homePath(), Path(os.path.abspath(defaultHome())))


# -- addresses and the stream transport ------------------------------------------


class AddressTests(SynchronousTestCase):
    """
    L{BeamAddress} is a frozen value providing L{IAddress}.
    """

    def test_value(self) -> None:
        """
        It provides L{IAddress}, compares by value, is hashable and prints
        as C{PEER/SERVICE}.
        """
        peer = Identity.generate().peerID
        address = BeamAddress(peer, "web")
        self.assertTrue(verifyObject(IAddress, address))
        self.assertEqual(address, BeamAddress(peer, "web"))
        self.assertNotEqual(address, BeamAddress(peer, "ssh"))
        self.assertEqual(len({address, BeamAddress(peer, "web")}), 1)
        self.assertEqual(str(address), f"{peer}/web")
        with self.assertRaises(AttributeError):
            address.service = "ssh"  # type: ignore[misc]


class _Plain(Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.lost: Optional[Failure] = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost = reason


class StreamTransportTests(SynchronousTestCase):
    """
    L{StreamTransport} on a fake stream: passes bytes and calls through,
    reports the addresses, counts, and closes a plain protocol's stream
    when the peer finishes.
    """

    def setUp(self) -> None:
        self.here = BeamAddress(Identity.generate().peerID, "web")
        self.there = BeamAddress(Identity.generate().peerID, "web")
        self.stats = TunnelStats()
        self.protocol = _Plain()
        self.stream = StringTransport()
        self.transport = StreamTransport(self.protocol, self.here, self.there, self.stats)
        self.transport.makeConnection(self.stream)

    def test_interfaces(self) -> None:
        """
        The user's protocol sees an L{ITransport} whose C{getHost()} and
        C{getPeer()} are the L{BeamAddress}es.
        """
        self.assertIs(self.protocol.transport, self.transport)
        self.assertTrue(verifyObject(ITransport, self.transport))
        self.assertEqual(self.protocol.transport.getHost(), self.here)
        self.assertEqual(self.protocol.transport.getPeer(), self.there)

    def test_bytesAndCounters(self) -> None:
        """
        Bytes pass both ways unchanged and are counted; the connection is
        counted active until it is lost.
        """
        self.transport.dataReceived(b"hello")
        self.protocol.transport.write(b"abc")
        self.protocol.transport.writeSequence([b"de", b"f"])
        self.assertEqual(self.protocol.received, b"hello")
        self.assertEqual(self.stream.value(), b"abcdef")
        self.assertEqual((self.stats.active, self.stats.bytesIn, self.stats.bytesOut), (1, 5, 6))
        self.transport.connectionLost(Failure(ConnectionDone()))
        self.transport.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.stats.active, 0)
        self.assertIsInstance(self.protocol.lost.value, ConnectionDone)

    def test_plainProtocolClosesOnFin(self) -> None:
        """
        A protocol that is not half-closeable gets its stream closed when
        the peer finishes, as a TCP transport does.
        """
        self.assertFalse(self.stream.disconnecting)
        self.transport.readConnectionLost()
        self.assertTrue(self.stream.disconnecting)

    def test_halfCloseablePassedOn(self) -> None:
        """
        A half-closeable protocol gets C{readConnectionLost} and its stream
        stays open; its C{loseWriteConnection} reaches the stream.
        """
        @implementer(IHalfCloseableProtocol)
        class Half(_Plain):
            finished = False

            def readConnectionLost(self) -> None:
                self.finished = True

            def writeConnectionLost(self) -> None:
                pass

        half = Half()
        stream = StringTransport()
        stream.loseWriteConnection = lambda: setattr(stream, "halfClosed", True)  # type: ignore[method-assign]
        transport = StreamTransport(half, self.here, self.there)
        transport.makeConnection(stream)
        transport.readConnectionLost()
        self.assertTrue(half.finished)
        self.assertFalse(stream.disconnecting)
        half.transport.loseWriteConnection()
        self.assertTrue(stream.halfClosed)  # type: ignore[attr-defined]


# -- whole endpoints on loopback -----------------------------------------------------


@implementer(IHalfCloseableProtocol)
class Party(Protocol):
    """
    One side of an exchange.  The side that goes first sends C{payload}
    at once and half-closes; the other sends its C{payload} only once the
    first finished, then closes.  C{done} fires with what was received.
    """

    def __init__(self, payload: bytes, first: bool, chunk: int = 65536) -> None:
        self.payload = payload
        self.first = first
        self.chunk = chunk
        self.received = bytearray()
        self.addresses: Optional[tuple[Any, Any]] = None
        self.reason: Optional[Failure] = None
        self.done: Deferred[bytes] = Deferred()

    def _send(self) -> None:
        view = memoryview(self.payload)
        for i in range(0, len(view), self.chunk):
            self.transport.write(bytes(view[i:i + self.chunk]))

    def connectionMade(self) -> None:
        self.addresses = (self.transport.getHost(), self.transport.getPeer())
        if self.first:
            self._send()
            self.transport.loseWriteConnection()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def readConnectionLost(self) -> None:
        if not self.first:
            self._send()
        # Both directions are done (the first side half-closed already): a
        # Beam stream would end by itself, a TCP connection needs this.
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.reason = reason
        self.done.callback(bytes(self.received))


class Recording(Factory):
    """
    Builds protocols with C{make}, remembering them and the addresses they
    were built for, and counting starts and stops.
    """

    def __init__(self, make: Callable[[], Optional[Protocol]]) -> None:
        self.make = make
        self.built: list[Protocol] = []
        self.addrs: list[Any] = []
        self.starts = 0
        self.stops = 0

    def startFactory(self) -> None:
        self.starts += 1

    def stopFactory(self) -> None:
        self.stops += 1

    def buildProtocol(self, addr: Any) -> Optional[Protocol]:
        self.addrs.append(addr)
        protocol = self.make()
        if protocol is not None:
            protocol.factory = self
            self.built.append(protocol)
        return protocol


class _Base(TestCase):
    timeout = 60

    @inlineCallbacks
    def startNode(self, **kw: Any) -> Any:
        """
        Launch this process's node for a fresh home on loopback; stopped
        when the test ends.
        """
        kw.setdefault("listen", LOOPBACK)
        home = kw.pop("home", None) or tempHome(self)
        node = yield launchNode(reactor, home=home, **kw)
        self.addCleanup(node.stop)
        return node

    @inlineCallbacks
    def serve(self, node: Any, factory: Factory, options: str = "", service: str = "echo") -> Any:
        """
        Listen with C{beam:service=SERVICE:home=HOME...}; the port is
        stopped when the test ends.
        """
        description = f"beam:service={service}:home={quoteStringArgument(str(node.home))}{options}"
        port = yield serverFromString(reactor, description).listen(factory)
        self.addCleanup(port.stopListening)
        return port

    def client(self, node: Any, target: str, options: str = "") -> Any:
        return clientFromString(
            reactor, f"beam:{quoteStringArgument(target)}:home={quoteStringArgument(str(node.home))}{options}"
        )


class EndpointTests(_Base):
    """
    A factory served with C{beam:service=...} on one node and reached with
    C{beam:TARGET} from another, both in this process with separate homes.
    """

    @inlineCallbacks
    def setUp(self) -> Any:
        self.server = yield self.startNode()
        self.clientNode = yield self.startNode()

    @inlineCallbacks
    def exchange(self, target: str, serverFirst: bool, size: int = 1 << 20, options: str = "") -> Any:
        """
        Serve a L{Party}, connect another to it through C{target}, let
        both finish, and check every byte arrived, both ways.
        """
        toServer, toClient = os.urandom(size), os.urandom(size + 7)
        factory = Recording(lambda: Party(toClient, first=serverFirst))
        port = yield self.serve(self.server, factory)
        client = Party(toServer, first=not serverFirst)
        connected = yield self.client(self.clientNode, target(port) if callable(target) else target,
                                      options).connect(Factory.forProtocol(lambda: client))
        self.assertIs(connected, client)
        (server,) = factory.built
        received, served = yield gatherResults([client.done, server.done])
        self.assertEqual(len(received), len(toClient))
        self.assertTrue(received == toClient, "the client received other bytes than the server sent")
        self.assertEqual(len(served), len(toServer))
        self.assertTrue(served == toServer, "the server received other bytes than the client sent")
        self.assertIsInstance(client.reason.value, ConnectionDone)
        self.assertIsInstance(server.reason.value, ConnectionDone)
        return port, factory, client, server

    @inlineCallbacks
    def test_shareAddressClientFirst(self) -> Any:
        """
        Through the share address: the client sends 1 MiB and half-closes,
        the server answers only after that, then closes; every byte
        arrives both ways.
        """
        yield self.exchange(lambda port: str(port.shareAddress), serverFirst=False)

    @inlineCallbacks
    def test_multiaddrServerFirst(self) -> Any:
        """
        Through C{/ip4/.../p2p/PEER/SERVICE}: the server sends first and
        half-closes, the client answers after the server's end; every byte
        arrives both ways.
        """
        addr = str(self.server.addrs()[0])
        yield self.exchange(addr + "/echo", serverFirst=True)

    @inlineCallbacks
    def test_compressed(self) -> Any:
        """
        With C{compress=yes} on both sides the bytes still arrive exactly.
        """
        factory = Recording(lambda: Party(b"z" * 300000, first=True))
        yield self.serve(self.server, factory, ":compress=yes")
        client = Party(b"y" * 200000, first=False)
        target = str(self.server.addrs()[0]) + "/echo"
        yield self.client(self.clientNode, target, ":compress=yes").connect(Factory.forProtocol(lambda: client))
        received = yield client.done
        served = yield factory.built[0].done
        self.assertEqual((received, served), (b"z" * 300000, b"y" * 200000))

    @inlineCallbacks
    def test_addresses(self) -> Any:
        """
        C{getHost()} and C{getPeer()} are L{BeamAddress}es on both sides
        (this node and the other, with the service), as are the port's
        C{getHost()} and the address the server's factory built its
        protocol for.
        """
        port, factory, client, server = yield self.exchange(
            lambda port: str(port.shareAddress), serverFirst=False, size=10
        )
        serverID, clientID = self.server.peerID, self.clientNode.peerID
        self.assertTrue(verifyObject(IListeningPort, port))
        self.assertEqual(port.getHost(), BeamAddress(serverID, "echo"))
        self.assertEqual(factory.addrs, [BeamAddress(clientID, "echo")])
        self.assertEqual(server.addresses, (BeamAddress(serverID, "echo"), BeamAddress(clientID, "echo")))
        self.assertEqual(client.addresses, (BeamAddress(clientID, "echo"), BeamAddress(serverID, "echo")))

    @inlineCallbacks
    def test_byName(self) -> Any:
        """
        A server endpoint with C{name=} registers the name; a client on a
        node bootstrapped from it reaches C{NAME/SERVICE}.
        """
        factory = Recording(lambda: Party(b"by name", first=True))
        port = yield self.serve(self.server, factory, ":name=alice-ep")
        self.assertTrue(self.server.hasName("alice-ep"))
        boot = str(self.server.addrs()[0])
        resolver = yield self.startNode(bootstrap=boot)
        client = Party(b"", first=False)
        yield self.client(resolver, "alice-ep/echo").connect(Factory.forProtocol(lambda: client))
        received = yield client.done
        self.assertEqual(received, b"by name")
        self.assertEqual(client.addresses[1], BeamAddress(self.server.peerID, "echo"))
        # Withdrawing the service republishes the name; stopping the nodes
        # during that publication cancels the PUT, which is not an error.
        yield port.stopListening()
        yield resolver.stop()
        yield self.server.stop()
        self.assertEqual(self.flushLoggedErrors(CancelledError), [])

    @inlineCallbacks
    def test_unknownService(self) -> Any:
        """
        Connecting to a service the host does not expose fails with
        L{ServiceNotFound}; the factory builds nothing.
        """
        yield self.serve(self.server, Recording(lambda: Party(b"", first=True)))
        built = Recording(lambda: Party(b"", first=True))
        target = str(self.server.addrs()[0]) + "/nothing"
        failure = yield self.assertFailure(self.client(self.clientNode, target).connect(built), ServiceNotFound)
        self.assertIn("nothing", str(failure))
        self.assertEqual(built.addrs, [])

    @inlineCallbacks
    def test_stopListening(self) -> Any:
        """
        C{stopListening()} withdraws the service (new connections get
        L{ServiceNotFound}) and stops the factory; a connection already
        open finishes normally.
        """
        factory = Recording(lambda: Party(b"late answer", first=False))
        port = yield self.serve(self.server, factory)
        self.assertEqual((factory.starts, factory.stops), (1, 0))
        client = Party(b"question", first=True)
        target = str(self.server.addrs()[0]) + "/echo"
        yield self.client(self.clientNode, target).connect(Factory.forProtocol(lambda: client))
        yield port.stopListening()
        self.assertEqual((factory.starts, factory.stops), (1, 1))
        self.assertNotIn("echo", self.server.daemon.tunnels.services)
        received = yield client.done
        self.assertEqual(received, b"late answer")
        yield self.assertFailure(
            self.client(self.clientNode, target).connect(Factory.forProtocol(Protocol)), ServiceNotFound
        )

    @inlineCallbacks
    def test_allowList(self) -> Any:
        """
        With C{allow=}, a listed peer is admitted and anyone else gets
        L{AccessDenied}.
        """
        other = yield self.startNode()
        factory = Recording(lambda: Party(b"welcome", first=True))
        yield self.serve(self.server, factory, f":allow={self.clientNode.peerID}")
        target = str(self.server.addrs()[0]) + "/echo"
        yield self.assertFailure(
            self.client(other, target).connect(Factory.forProtocol(Protocol)), AccessDenied
        )
        client = Party(b"", first=False)
        yield self.client(self.clientNode, target).connect(Factory.forProtocol(lambda: client))
        received = yield client.done
        self.assertEqual(received, b"welcome")

    @inlineCallbacks
    def test_secret(self) -> Any:
        """
        With C{secret=}, the port's share address carries the secret and
        admits; the same secret given with C{secret=} admits; no secret or
        a wrong one gets L{AccessDenied}.
        """
        factory = Recording(lambda: Party(b"psst", first=True))
        port = yield self.serve(self.server, factory, ":secret=open sesame")
        self.assertEqual(port.shareAddress.secret, b"open sesame")
        self.assertIn("#", str(port.shareAddress))
        target = str(self.server.addrs()[0]) + "/echo"
        yield self.assertFailure(self.client(self.clientNode, target).connect(Factory.forProtocol(Protocol)),
                                 AccessDenied)
        yield self.assertFailure(
            self.client(self.clientNode, target, ":secret=guess").connect(Factory.forProtocol(Protocol)),
            AccessDenied,
        )
        for found, options in ((str(port.shareAddress), ""), (target, ":secret=open sesame")):
            client = Party(b"", first=False)
            yield self.client(self.clientNode, found, options).connect(Factory.forProtocol(lambda: client))
            received = yield client.done
            self.assertEqual(received, b"psst")

    @inlineCallbacks
    def test_unreachable(self) -> Any:
        """
        A host that cannot be dialled fails with L{HostUnreachable},
        within the C{timeout=}.
        """
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            closed = s.getsockname()[1]
        target = f"/ip4/127.0.0.1/tcp/{closed}/p2p/{PEER_A}/echo"
        failure = yield self.assertFailure(
            self.client(self.clientNode, target, ":timeout=10").connect(Factory.forProtocol(Protocol)),
            HostUnreachable,
        )
        self.assertIn(PEER_A, str(failure))

    @inlineCallbacks
    def test_timeout(self) -> Any:
        """
        A host that accepts the TCP connection but never speaks fails with
        L{HostUnreachable} once C{timeout=} expires, saying what was under
        way.
        """
        accepted = Recording(Protocol)
        silent = reactor.listenTCP(0, accepted, interface="127.0.0.1")
        self.addCleanup(silent.stopListening)
        self.addCleanup(lambda: [p.transport.abortConnection() for p in accepted.built if p.transport.connected])
        target = f"/ip4/127.0.0.1/tcp/{silent.getHost().port}/p2p/{PEER_A}/echo"
        started = reactor.seconds()
        failure = yield self.assertFailure(
            self.client(self.clientNode, target, ":timeout=0.5").connect(Factory.forProtocol(Protocol)),
            HostUnreachable,
        )
        self.assertLess(reactor.seconds() - started, 5)
        self.assertIn("gave up after 0.5 s dialling", str(failure))

    @inlineCallbacks
    def test_factoriesBuildingNothing(self) -> Any:
        """
        A server factory that builds no protocol refuses the tunnel
        (L{ServiceUnavailable}, counted as failed); a client factory that
        builds none fails C{connect()} with L{NoProtocol}.
        """
        yield self.serve(self.server, Recording(lambda: None), service="none")
        yield self.serve(self.server, Recording(lambda: Party(b"x", first=True)), service="some")
        base = str(self.server.addrs()[0])
        yield self.assertFailure(
            self.client(self.clientNode, base + "/none").connect(Factory.forProtocol(Protocol)), ServiceUnavailable
        )
        self.assertEqual(self.server.daemon.tunnels.stats["none"].failed, 1)
        yield self.assertFailure(self.client(self.clientNode, base + "/some").connect(Recording(lambda: None)),
                                 NoProtocol)

    @inlineCallbacks
    def test_stats(self) -> Any:
        """
        The served service counts connections and bytes in the tunnel
        host's stats, as C{beam status} shows them.
        """
        yield self.exchange(lambda port: str(port.shareAddress), serverFirst=False, size=1000)
        stats = self.server.daemon.tunnels.stats["echo"]
        self.assertEqual((stats.total, stats.active, stats.bytesIn, stats.bytesOut), (1, 0, 1000, 1007))
        (status,) = self.server.daemon.tunnels.status()
        self.assertEqual((status.name, status.target), ("echo", "in-process"))

    @inlineCallbacks
    def test_serviceExists(self) -> Any:
        """
        A second port for a service the node already exposes fails with
        L{ServiceExists} and leaves the first serving.
        """
        yield self.serve(self.server, Recording(lambda: Party(b"first", first=True)))
        second = Recording(lambda: Party(b"second", first=True))
        yield self.assertFailure(
            serverFromString(reactor, f"beam:service=echo:home={self.server.home}").listen(second), ServiceExists
        )
        self.assertEqual(second.starts, 0)
        client = Party(b"", first=False)
        yield self.client(self.clientNode, str(self.server.addrs()[0]) + "/echo").connect(
            Factory.forProtocol(lambda: client))
        received = yield client.done
        self.assertEqual(received, b"first")

    @inlineCallbacks
    def test_ownService(self) -> Any:
        """
        A client endpoint on the serving node's own home fails with
        L{OwnService}.
        """
        port = yield self.serve(self.server, Recording(lambda: Party(b"", first=True)))
        yield self.assertFailure(
            self.client(self.server, str(port.shareAddress)).connect(Factory.forProtocol(Protocol)), OwnService
        )


class NodeTests(_Base):
    """
    One node per home and process: launched once, shared, refused when
    another node runs for the home, restarted after being stopped.
    """

    @inlineCallbacks
    def test_launchOrReuse(self) -> Any:
        """
        Endpoints and L{launchNode} naming the same home, even while the
        node is still being launched, all get the same node; C{listen} or
        C{bootstrap} that differ from the running node's fail with
        L{NodeOptionsConflict}.
        """
        home = tempHome(self)
        first, second = launchNode(reactor, home=home, listen=LOOPBACK), launchNode(reactor, home=home)
        (ok1, node), (ok2, again) = yield DeferredList([first, second])
        self.addCleanup(node.stop)
        self.assertIs(node, again)
        port = yield serverFromString(reactor, f"beam:service=a:home={home}").listen(Recording(Protocol))
        self.addCleanup(port.stopListening)
        self.assertIs(port.node, node)
        yield self.assertFailure(launchNode(reactor, home=home, listen="/ip4/127.0.0.1/tcp/1"), NodeOptionsConflict)
        yield self.assertFailure(launchNode(reactor, home=home, bootstrap=BOOT), NodeOptionsConflict)
        same = yield launchNode(reactor, home=home, listen=LOOPBACK)
        self.assertIs(same, node)

    @inlineCallbacks
    def test_homeInUse(self) -> Any:
        """
        A home a daemon already runs for is refused with L{HomeInUse}, and
        no node is left registered for it.
        """
        from beam.daemon.config import Config
        from beam.daemon.service import BeamDaemon

        home = Path(tempHome(self))
        daemon = BeamDaemon(reactor, home, Identity.generate(), Config(listen=(Multiaddr.fromString(LOOPBACK),)))
        yield daemon.start()
        self.addCleanup(daemon.stopService)
        failure = yield self.assertFailure(launchNode(reactor, home=home, listen=LOOPBACK), HomeInUse)
        self.assertIn(str(home), str(failure))
        self.assertNotIn(Path(os.path.abspath(home)), _node._nodes)
        self.assertEqual(_node._launching, {})

    @inlineCallbacks
    def test_stopAndRelaunch(self) -> Any:
        """
        After C{stop()}, the home's next endpoint launches a new node (same
        identity), and the stopped node refuses new ports.
        """
        node = yield self.startNode()
        yield node.stop()
        yield node.stop()
        self.assertFalse(node.running)
        yield self.assertFailure(
            BeamServerEndpoint(reactor, "web", node=node).listen(Recording(Protocol)), NodeStopped
        )
        again = yield self.startNode(home=str(node.home))
        self.assertIsNot(again, node)
        self.assertEqual(again.peerID, node.peerID)


# -- the command line reaching an endpoint ------------------------------------------------


class _Lines(ProcessProtocol):
    def __init__(self) -> None:
        self.buffer = b""
        self.lines: list[str] = []
        self.waiting: list[tuple[Callable[[str], bool], Deferred[str]]] = []
        self.ended: Deferred[None] = Deferred()
        self.stderr = b""

    def outReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            text = line.decode()
            self.lines.append(text)
            for item in list(self.waiting):
                if item[0](text):
                    self.waiting.remove(item)
                    item[1].callback(text)

    def errReceived(self, data: bytes) -> None:
        self.stderr += data

    def waitFor(self, match: Callable[[str], bool]) -> Deferred[str]:
        for line in self.lines:
            if match(line):
                d: Deferred[str] = Deferred()
                d.callback(line)
                return d
        d = Deferred()
        if self.ended.called:
            d.errback(Exception(f"the process ended: {self.stderr.decode(errors='replace')}"))
            return d
        self.waiting.append((match, d))
        return d

    def processEnded(self, reason: Failure) -> None:
        for _, d in self.waiting:
            d.errback(Exception(f"the process ended: {self.stderr.decode(errors='replace')}"))
        self.waiting = []
        self.ended.callback(None)


class CommandLineTests(_Base):
    """
    C{beam connect} (a real process with its own home) reaches a factory
    served in this process with C{beam:service=...}.
    """

    @inlineCallbacks
    def test_beamConnect(self) -> Any:
        """
        C{beam connect SHARE} forwards a local port to the served factory:
        bytes pass both ways with half-close, and the server's protocol
        sees the command line's peer ID in C{getPeer()}.
        """
        server = yield self.startNode()
        factory = Recording(lambda: Party(b"answer from the endpoint " * 1000, first=False))
        port = yield self.serve(server, factory, service="web")
        cliHome = tempHome(self)
        lines = _Lines()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        process = reactor.spawnProcess(
            lines, str(BIN / "beam"),
            [str(BIN / "beam"), "--home", cliHome, "connect", str(port.shareAddress), "--listen", LOOPBACK, "--json"],
            env=env,
        )

        def kill() -> Any:
            if lines.ended.called:
                return None
            process.signalProcess("TERM")
            return lines.ended

        self.addCleanup(kill)
        ready = json.loads((yield lines.waitFor(lambda line: '"ready"' in line)))
        host, _, localPort = ready["listen"].rpartition(":")
        self.assertEqual(ready["peer_id"], str(server.peerID))
        client = Party(b"question from a TCP client " * 1000, first=True)
        yield connectProtocol(TCP4ClientEndpoint(reactor, host, int(localPort)), client)
        received = yield client.done
        self.assertEqual(received, b"answer from the endpoint " * 1000)
        (served,) = factory.built
        got = yield served.done
        self.assertEqual(got, b"question from a TCP client " * 1000)
        from beam.storage.home import loadOrCreateIdentity

        cliPeer = loadOrCreateIdentity(Path(cliHome)).peerID
        self.assertEqual(served.addresses, (BeamAddress(server.peerID, "web"), BeamAddress(cliPeer, "web")))


class ExampleTests(SynchronousTestCase):
    """
    The example in C{docs/examples/beam_web.py} runs as documented.
    """

    def test_serveAndFetch(self) -> None:
        """
        C{beam_web.py serve} prints a share address; C{beam_web.py fetch}
        with it (another process, another home) prints the page, which
        greets the fetching node by its peer ID.
        """
        script = ROOT / "docs" / "examples" / "beam_web.py"
        serveHome, fetchHome = tempHome(self), tempHome(self)
        serving = subprocess.Popen(
            [sys.executable, str(script), "serve", "--home", serveHome, "--listen", LOOPBACK],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.addCleanup(serving.wait, 10)
        self.addCleanup(serving.terminate)
        share = None
        deadline = time.monotonic() + 30
        while share is None and time.monotonic() < deadline:
            line = serving.stdout.readline()  # type: ignore[union-attr]
            if not line:
                self.fail(f"serve ended: {serving.stderr.read()}")  # type: ignore[union-attr]
            if line.startswith("share: "):
                share = line.split(" ", 1)[1].strip()
        self.assertIsNotNone(share)
        fetched = subprocess.run(
            [sys.executable, str(script), "fetch", share, "--home", fetchHome],
            capture_output=True, text=True, timeout=60,
        )
        self.assertEqual(fetched.returncode, 0, fetched.stderr)
        from beam.storage.home import loadOrCreateIdentity

        fetcher = loadOrCreateIdentity(Path(fetchHome)).peerID
        self.assertEqual(fetched.stdout, f"Hello {fetcher} over Beam service 'web'!\n")
        self.assertEqual(fetched.stderr, "")
