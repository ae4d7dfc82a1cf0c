"""
Tests for L{beam.p2p.transport.tor}: the Tor transport, without tor.

txtorcon's C{Tor} is replaced by a fake whose C{stream_via} endpoint goes
straight to where the test says (for the end-to-end tests: the other
node's onion target on loopback), which proves the transport's plumbing,
the libp2p upgrade over it and the peer ID check, with no tor running.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from typing import Any

from twisted.internet import reactor
from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, UNIXClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from beam.errors import DialError, PeerIDMismatch
from beam.identity.keys import Identity
from beam.identity.multiaddr import Multiaddr
from beam.p2p.host.node import Node
from beam.p2p.interfaces import ITransport
from beam.p2p.transport.tor import TorTransport, onionTarget, parseSocks

ONION = "/onion3/" + "a" * 56 + ":4001"
OTHER = "/onion3/" + "b" * 56 + ":4001"


class _Endpoint:
    """
    A client endpoint whose C{connect} returns what the test chose.
    """

    def __init__(self, result: Deferred[Any]) -> None:
        self.result = result
        self.factory: Any = None

    def connect(self, factory: Any) -> Deferred[Any]:
        self.factory = factory
        return self.result


class _FakeTor:
    """
    txtorcon's C{Tor} as the transport uses it: C{stream_via}.
    """

    def __init__(self, endpoint: Any = None) -> None:
        self.endpoint = endpoint
        self.calls: list[tuple[str, int, Any]] = []

    def stream_via(self, host: str, port: int, tls: bool = False, socks_endpoint: Any = None) -> Any:
        self.calls.append((host, port, socks_endpoint))
        if host.startswith("127."):
            raise ValueError(f"'{host}' isn't going to work over Tor")
        return self.endpoint


class AddressTests(SynchronousTestCase):
    """
    Which addresses the transport takes.
    """

    def test_provides(self) -> None:
        """
        It provides L{ITransport}, named C{"tor"}, not limited, holding a
        file descriptor per connection.
        """
        t = TorTransport(Clock(), "fallback")
        self.assertTrue(verifyObject(ITransport, t))
        self.assertEqual((t.name, t.limited, t.usesFD), ("tor", False, True))

    def test_modes(self) -> None:
        """
        Only the two Tor modes make a transport.
        """
        self.assertRaises(ValueError, TorTransport, Clock(), "off")

    def test_canDialFallback(self) -> None:
        """
        In mode C{"fallback"} only C{/onion3} addresses (with or without
        C{/p2p}) are dialled over Tor; TCP addresses and v2 onions are not.
        """
        t = TorTransport(Clock(), "fallback")
        peer = Identity.generate().peerID
        self.assertTrue(t.canDial(Multiaddr(ONION)))
        self.assertTrue(t.canDial(Multiaddr(ONION).withPeerID(peer)))
        self.assertFalse(t.canDial(Multiaddr("/ip4/1.2.3.4/tcp/4001")))
        self.assertFalse(t.canDial(Multiaddr("/dns4/example.com/tcp/4001")))
        self.assertFalse(t.canDial(Multiaddr("/onion/aaaaaaaaaaaaaaaa:80")))

    def test_canDialAlways(self) -> None:
        """
        In mode C{"always"} TCP addresses are dialled over Tor too (through
        an exit), but nothing else, and not IPv6 literals (txtorcon cannot
        put one in its SOCKS request).
        """
        t = TorTransport(Clock(), "always")
        self.assertTrue(t.canDial(Multiaddr(ONION)))
        self.assertTrue(t.canDial(Multiaddr("/ip4/1.2.3.4/tcp/4001")))
        self.assertTrue(t.canDial(Multiaddr("/dns4/example.com/tcp/4001")))
        self.assertFalse(t.canDial(Multiaddr("/ip6/2001:db8::1/tcp/4001")))
        self.assertFalse(t.canDial(Multiaddr("/ip4/1.2.3.4/udp/4001")))

    def test_canListen(self) -> None:
        """
        Only our own onion address can be listened on, once we have one.
        """
        t = TorTransport(Clock(), "fallback")
        self.assertFalse(t.canListen(Multiaddr(ONION)))
        t.setOnion(Multiaddr(ONION))
        self.assertTrue(t.canListen(Multiaddr(ONION)))
        self.assertFalse(t.canListen(Multiaddr(OTHER)))
        self.assertFalse(t.canListen(Multiaddr("/ip4/127.0.0.1/tcp/0")))

    def test_onionTarget(self) -> None:
        """
        An C{/onion3} address is dialled as C{<host>.onion} and its port.
        """
        self.assertEqual(onionTarget(Multiaddr(ONION)), ("a" * 56 + ".onion", 4001))
        self.assertIsNone(onionTarget(Multiaddr("/ip4/1.2.3.4/tcp/1")))

    def test_parseSocks(self) -> None:
        """
        Tor's SOCKS listeners, as C{GETINFO net/listeners/socks} names them.
        """
        self.assertEqual(parseSocks('"127.0.0.1:9050"'), ("127.0.0.1", 9050))
        self.assertEqual(parseSocks("[::1]:9050"), ("::1", 9050))
        self.assertEqual(parseSocks("unix:/run/tor/socks"), ("unix", "/run/tor/socks"))
        self.assertRaises(ValueError, parseSocks, "nonsense")

    def test_multiaddrOf(self) -> None:
        """
        Both ends of an inbound connection (from tor to the target) are our
        onion address; an outbound one's SOCKS end names nobody, and before
        we have an onion its near end is the loopback socket it left from.
        """
        t = TorTransport(Clock(), "fallback", socks="127.0.0.1:9050")
        local = IPv4Address("TCP", "127.0.0.1", 40000)
        self.assertEqual(t.multiaddrOf(local), Multiaddr("/ip4/127.0.0.1/tcp/40000"))
        self.assertIsNone(t.multiaddrOf(IPv4Address("TCP", "127.0.0.1", 9050)))
        t.setOnion(Multiaddr(ONION))
        self.assertEqual(t.multiaddrOf(local), Multiaddr(ONION))
        self.assertEqual(t.multiaddrOf(UNIXAddress(None)), Multiaddr(ONION))
        self.assertEqual(t.multiaddrOf(UNIXAddress(b"/x/onion.sock")), Multiaddr(ONION))
        self.assertIsNone(t.multiaddrOf(IPv4Address("TCP", "127.0.0.1", 9050)))

    def test_multiaddrOfUnixSocks(self) -> None:
        """
        Through a UNIX SOCKS socket, the far end names nobody and the near
        end (before we have an onion) is that socket.
        """
        t = TorTransport(Clock(), "fallback", socks="unix:/run/tor/socks")
        self.assertIsNone(t.multiaddrOf(UNIXAddress(b"/run/tor/socks")))
        self.assertEqual(t.multiaddrOf(UNIXAddress(None)), Multiaddr("/unix/run/tor/socks"))


class DialTests(SynchronousTestCase):
    """
    Dialling: waiting for tor, timeouts, cancellation, errors.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.transport = TorTransport(self.clock, "always", minDialTimeout=30.0)
        self.factory = Factory.forProtocol(Protocol)

    def test_dialThroughTor(self) -> None:
        """
        A dial goes through C{tor.stream_via(host, port)} and fires with the
        protocol the endpoint made.
        """
        proto = Protocol()
        tor = _FakeTor(_Endpoint(succeed(proto)))
        self.transport.setTor(tor)
        d = self.transport.dial(Multiaddr(ONION), self.factory, 10)
        self.assertIs(self.successResultOf(d), proto)
        self.assertEqual(tor.calls, [("a" * 56 + ".onion", 4001, None)])

    def test_tcpThroughExit(self) -> None:
        """
        In mode C{"always"} a TCP address is reached through tor too.
        """
        tor = _FakeTor(_Endpoint(succeed(Protocol())))
        self.transport.setTor(tor)
        self.successResultOf(self.transport.dial(Multiaddr("/dns4/example.com/tcp/80"), self.factory, 10))
        self.assertEqual(tor.calls[0][:2], ("example.com", 80))

    def test_localAddressRefused(self) -> None:
        """
        An address txtorcon refuses (a private IP: no exit reaches it) fails
        the dial with L{DialError}, naming the address.
        """
        self.transport.setTor(_FakeTor())
        f = self.failureResultOf(self.transport.dial(Multiaddr("/ip4/127.0.0.1/tcp/80"), self.factory, 10),
                                 DialError)
        self.assertIn("/ip4/127.0.0.1/tcp/80", str(f.value))

    def test_waitsForTor(self) -> None:
        """
        A dial before tor runs waits for it, then goes ahead.
        """
        self.transport.setStarting("Tor is still starting (45 %)")
        d = self.transport.dial(Multiaddr(ONION), self.factory, 10)
        self.assertNoResult(d)
        self.clock.advance(20)
        self.assertNoResult(d)
        proto = Protocol()
        self.transport.setTor(_FakeTor(_Endpoint(succeed(proto))))
        self.assertIs(self.successResultOf(d), proto)

    def test_torTooSlow(self) -> None:
        """
        A dial waiting for tor fails when its timeout (at least
        C{minDialTimeout}) passes, with what tor is doing.
        """
        self.transport.setStarting("Tor is still starting (45 %)")
        d = self.transport.dial(Multiaddr(ONION), self.factory, 10)
        self.clock.advance(29)
        self.assertNoResult(d)
        self.clock.advance(1)
        f = self.failureResultOf(d, DialError)
        self.assertIn("Tor is still starting (45 %)", str(f.value))
        self.assertEqual(self.transport._waiting, [])

    def test_torFailed(self) -> None:
        """
        When tor is not running, dials fail at once, those waiting too.
        """
        d = self.transport.dial(Multiaddr(ONION), self.factory, 10)
        self.transport.setFailed("Tor is not running: no tor binary")
        self.assertIn("no tor binary", str(self.failureResultOf(d, DialError).value))
        f = self.failureResultOf(self.transport.dial(Multiaddr(ONION), self.factory, 10), DialError)
        self.assertIn("Tor is not running", str(f.value))

    def test_timeoutConnecting(self) -> None:
        """
        A stream tor does not open within the timeout fails the dial, and
        the SOCKS connection is abandoned.
        """
        cancelled: list[bool] = []
        connecting: Deferred[Any] = Deferred(lambda d: cancelled.append(True))
        self.transport.setTor(_FakeTor(_Endpoint(connecting)))
        d = self.transport.dial(Multiaddr(ONION), self.factory, 45)
        self.clock.advance(44)
        self.assertNoResult(d)
        self.clock.advance(1)
        self.assertIn("no connection within 45 s", str(self.failureResultOf(d, DialError).value))
        self.assertEqual(cancelled, [True])

    def test_cancel(self) -> None:
        """
        Cancelling a dial cancels the stream being opened.
        """
        cancelled: list[bool] = []
        connecting: Deferred[Any] = Deferred(lambda d: cancelled.append(True))
        self.transport.setTor(_FakeTor(_Endpoint(connecting)))
        d = self.transport.dial(Multiaddr(ONION), self.factory, 45)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(cancelled, [True])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancelWaiting(self) -> None:
        """
        Cancelling a dial waiting for tor stops waiting.
        """
        d = self.transport.dial(Multiaddr(ONION), self.factory, 45)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.transport._waiting, [])

    def test_socksError(self) -> None:
        """
        A SOCKS error that will not change (connection refused: the
        service answered) fails the dial at once with L{DialError}
        carrying tor's reason.
        """
        from twisted.internet.defer import fail
        from txtorcon.socks import ConnectionRefusedError

        tor = _FakeTor(_Endpoint(fail(ConnectionRefusedError())))
        self.transport.setTor(tor)
        f = self.failureResultOf(self.transport.dial(Multiaddr(ONION), self.factory, 10), DialError)
        self.assertIn("over Tor", str(f.value))
        self.assertEqual(len(tor.calls), 1)

    def test_descriptorNotYetThere(self) -> None:
        """
        "Host unreachable" for an onion (its descriptor is not on the HSDir
        tor asked yet) is tried again after a pause, and the dial succeeds
        once tor can open the stream.
        """
        from twisted.internet.defer import fail
        from txtorcon.socks import HostUnreachableError

        proto = Protocol()
        results = [fail(HostUnreachableError()), fail(HostUnreachableError()), succeed(proto)]

        class Flaky:
            def connect(self, factory: Any) -> Deferred[Any]:
                return results.pop(0)

        tor = _FakeTor(Flaky())
        self.transport.setTor(tor)
        d = self.transport.dial(Multiaddr(ONION), self.factory, 10)
        self.assertNoResult(d)
        self.clock.advance(1.0)
        self.assertNoResult(d)
        self.clock.advance(2.0)
        self.assertIs(self.successResultOf(d), proto)
        self.assertEqual(len(tor.calls), 3)

    def test_retriesEndWithTheTimeout(self) -> None:
        """
        An onion tor never reaches fails the dial within its timeout, the
        error saying how many attempts were made and tor's last answer; a
        TCP address through an exit is not retried.
        """
        from twisted.internet.defer import fail
        from txtorcon.socks import HostUnreachableError

        class Never:
            def connect(self, factory: Any) -> Deferred[Any]:
                return fail(HostUnreachableError())

        tor = _FakeTor(Never())
        self.transport.setTor(tor)
        d = self.transport.dial(Multiaddr(ONION), self.factory, 10)
        self.clock.pump([1.0] * 40)
        f = self.failureResultOf(d, DialError)
        self.assertIn("attempts", str(f.value))
        self.assertGreater(len(tor.calls), 3)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        tor.calls.clear()
        self.failureResultOf(self.transport.dial(Multiaddr("/dns4/example.com/tcp/80"), self.factory, 10), DialError)
        self.assertEqual(len(tor.calls), 1)

    def test_socksEndpointGiven(self) -> None:
        """
        With a known SOCKS port, txtorcon is given an endpoint to it (which
        the transport can abort).
        """
        tor = _FakeTor(_Endpoint(succeed(Protocol())))
        self.transport.setTor(tor, "127.0.0.1:9050")
        self.successResultOf(self.transport.dial(Multiaddr(ONION), self.factory, 10))
        self.assertIsNotNone(tor.calls[0][2])


class _LoopTor:
    """
    A fake tor whose streams go straight to the given endpoint (the other
    node's onion target), whatever onion is asked for.
    """

    def __init__(self, endpoint: Any) -> None:
        self.endpoint = endpoint
        self.asked: list[tuple[str, int]] = []

    def stream_via(self, host: str, port: int, tls: bool = False, socks_endpoint: Any = None) -> Any:
        self.asked.append((host, port))
        return socks_endpoint if socks_endpoint is not None else self.endpoint


class EndToEndTests(TestCase):
    """
    Two real nodes on loopback, connected only through Tor transports whose
    "tor" leads straight to the other's onion target: the libp2p upgrade
    runs over the transport and the peer ID is checked.
    """

    @inlineCallbacks
    def _pair(self, unix: bool) -> Any:
        b = Node(reactor, Identity.generate(), [], transports=[TorTransport(reactor, "fallback")])
        yield b.startService()
        self.addCleanup(b.stopService)
        bt = b.transports[0]
        assert isinstance(bt, TorTransport)
        path = None
        if unix:
            directory = tempfile.mkdtemp(prefix="beamtor", dir="/tmp")
            self.addCleanup(shutil.rmtree, directory, True)
            path = os.path.join(directory, "onion.sock")
        target = yield bt.openTarget(path)
        bt.setOnion(Multiaddr(ONION))
        yield b.listen([Multiaddr(ONION)])
        self.assertIn(Multiaddr(ONION), b.listenAddrs)
        if unix:
            assert path is not None
            self.assertEqual(target, f"unix:{path}")
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
            endpoint: Any = UNIXClientEndpoint(reactor, path)
            socks = target
        else:
            host, port = target.split(":")
            self.assertEqual(host, "127.0.0.1")
            endpoint = TCP4ClientEndpoint(reactor, host, int(port))
            socks = target
        a = Node(reactor, Identity.generate(), [], transports=[TorTransport(reactor, "fallback")])
        yield a.startService()
        self.addCleanup(a.stopService)
        at = a.transports[0]
        assert isinstance(at, TorTransport)
        fake = _LoopTor(endpoint)
        at.setTor(fake, socks)
        return a, b, fake

    @inlineCallbacks
    def _connects(self, unix: bool) -> Any:
        a, b, fake = yield self._pair(unix)
        inbound: Deferred[Any] = Deferred()
        b.addConnectionObserver(lambda e, c: e == "connected" and not inbound.called and inbound.callback(c))
        conn = yield a.connect(Multiaddr(ONION).withPeerID(b.peerID))
        theirs = yield inbound.addTimeout(10, reactor)
        self.assertEqual(fake.asked, [("a" * 56 + ".onion", 4001)])
        self.assertEqual((conn.transport, conn.remotePeer, conn.remoteAddr),
                         ("tor", b.peerID, Multiaddr(ONION)))
        self.assertEqual((theirs.transport, theirs.remotePeer, theirs.direction), ("tor", a.peerID, "inbound"))
        self.assertEqual((theirs.remoteAddr, theirs.localAddr), (Multiaddr(ONION), Multiaddr(ONION)))
        rtts = yield a.ping(b.peerID, count=1)
        self.assertEqual(len(rtts), 1)

    def test_connectTCPTarget(self) -> None:
        """
        Over a loopback TCP target (an attached tor's): a full libp2p
        connection over the C{"tor"} transport, both ends named by the
        onion address on the listening side.
        """
        return self._connects(unix=False)

    def test_connectUnixTarget(self) -> None:
        """
        Over the UNIX socket target (a tor we launched), made 0600.
        """
        return self._connects(unix=True)

    @inlineCallbacks
    def test_wrongPeer(self) -> None:
        """
        The peer ID in the address is checked end to end: another node
        behind the onion fails the dial.
        """
        a, b, _ = yield self._pair(unix=False)
        wrong = Identity.generate().peerID
        d = a.connect(Multiaddr(ONION).withPeerID(wrong))
        yield self.assertFailure(d, PeerIDMismatch, DialError)

    @inlineCallbacks
    def test_refusedBeforeListening(self) -> None:
        """
        Until the node listens on the onion, the target refuses
        connections; stopping the onion listener closes the target.
        """
        t = TorTransport(reactor, "fallback")
        target = yield t.openTarget(None)
        host, port = target.split(":")
        lost: Deferred[None] = Deferred()

        class Watch(Protocol):
            def connectionLost(self, reason: Any = None) -> None:
                lost.callback(None)

        yield TCP4ClientEndpoint(reactor, host, int(port)).connect(Factory.forProtocol(Watch))
        yield lost.addTimeout(10, reactor)
        t.setOnion(Multiaddr(ONION))
        listener = yield t.listen(Multiaddr(ONION), Factory.forProtocol(Protocol))
        yield listener.stopListening()
        self.assertIsNone(t._target)
