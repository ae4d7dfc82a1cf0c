"""
Tests for what L{beam.p2p.host.node.Node} does to the TCP sockets of its peer
connections, and for its port reuse (loopback only).
"""

from __future__ import annotations

import socket
from typing import Any
from unittest import SkipTest

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.trial.unittest import TestCase

from beam.errors import DialError
from beam.identity.keys import Identity
from beam.p2p.host.node import Node
from beam.p2p.transport.tcp import REUSEPORT_DEFAULT, TCPTransport
from beam.test.nodeutil import addrOf, startNode


class NoDelayTests(TestCase):
    """
    Peer connections turn off Nagle's algorithm, so that small frames of
    one stream do not wait for the peer to acknowledge those of another.
    """

    @inlineCallbacks
    def test_bothEnds(self) -> None:
        """
        The dialler's and the listener's sockets of a connection between two
        nodes both have C{TCP_NODELAY} set.
        """
        a = yield startNode(self)
        b = yield startNode(self)
        inbound: Deferred[object] = Deferred()
        b.addConnectionObserver(lambda event, c: event == "connected" and not inbound.called and inbound.callback(c))
        conn = yield a.connect(addrOf(b))
        theirs = yield inbound.addTimeout(10, reactor)
        for c in (conn, theirs):
            sock = c.rawTransport.getHandle()
            self.assertTrue(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


class DescriptorAccountingTests(TestCase):
    """
    A TCP connection holds a file descriptor, which the resource manager
    counts on both ends while it is open.
    """

    @inlineCallbacks
    def test_fdCounted(self) -> None:
        """
        Each end of a loopback TCP connection counts one descriptor in its
        node's system scope, and none is left once it closed.
        """
        a = yield startNode(self)
        b = yield startNode(self)
        inbound: Deferred[object] = Deferred()
        b.addConnectionObserver(lambda event, c: event == "connected" and not inbound.called and inbound.callback(c))
        conn = yield a.connect(addrOf(b))
        theirs = yield inbound.addTimeout(10, reactor)
        self.assertEqual(a.resources.status()["system"]["fd"], 1)
        self.assertEqual(b.resources.status()["system"]["fd"], 1)
        closed = [conn.whenClosed(), theirs.whenClosed()]  # type: ignore[attr-defined]
        conn.close()
        for d in closed:
            yield d.addTimeout(10, reactor)
        self.assertEqual(a.resources.status()["system"]["fd"], 0)
        self.assertEqual(b.resources.status()["system"]["fd"], 0)


def _inboundFrom(node: Any, peer: Any) -> Deferred[Any]:
    """
    Fires with C{node}'s connection from C{peer} once it is registered.
    """
    found: Deferred[Any] = Deferred()

    def seen(event: str, conn: Any) -> None:
        if event == "connected" and conn.remotePeer == peer and not found.called:
            found.callback(conn)

    existing = node.connectionTo(peer)
    if existing is not None:
        found.callback(existing)
    else:
        node.addConnectionObserver(seen)
    return found.addTimeout(10, reactor)


def _port(addr: Any) -> int:
    target = addr.tcpTarget()
    assert target is not None
    return int(target[1])


class PortReuseTests(TestCase):
    """
    Outgoing dials leave from the listen port (C{SO_REUSEPORT}), so a NAT
    with endpoint-independent mapping shows every peer the same address,
    the one that leads back to the listener; and fall back to a random port
    when that one is taken.
    """

    def setUp(self) -> None:
        if not REUSEPORT_DEFAULT:
            raise SkipTest("port reuse is on by default only on Linux")

    @inlineCallbacks
    def test_dialFromListenPort(self) -> Any:
        """
        A node listening on 127.0.0.1:P dials from P: the other side sees
        it at port P, and the observed address it reports back is recorded
        (it names a listen port, so it may be useful).
        """
        a = yield startNode(self)
        b = yield startNode(self)
        conn = yield a.connect(addrOf(b))
        theirs = yield _inboundFrom(b, a.peerID)
        listenPort = _port(a.listenAddrs[0])
        self.assertEqual(_port(theirs.observedRemote), listenPort)
        self.assertEqual(_port(conn.localAddr), listenPort)
        yield conn.identified
        self.assertIn(a.listenAddrs[0], a.observedAddrs)

    @inlineCallbacks
    def test_wildcardListen(self) -> Any:
        """
        A node listening on 0.0.0.0:P dials from 0.0.0.0:P (the kernel picks
        the source address).
        """
        a = yield startNode(self, listen=["/ip4/0.0.0.0/tcp/0"])
        b = yield startNode(self)
        yield a.connect(addrOf(b))
        theirs = yield _inboundFrom(b, a.peerID)
        self.assertEqual(_port(theirs.observedRemote), _port(a.listenAddrs[0]))

    @inlineCallbacks
    def test_simultaneousDials(self) -> Any:
        """
        Two dials at once to different peers both leave from the listen
        port and both work.
        """
        a = yield startNode(self)
        b = yield startNode(self)
        c = yield startNode(self)
        conns = yield DeferredList([a.connect(addrOf(b)), a.connect(addrOf(c))], fireOnOneErrback=True)
        listenPort = _port(a.listenAddrs[0])
        for (ok, conn), other in zip(conns, (b, c)):
            self.assertTrue(ok)
            self.assertEqual(_port(conn.localAddr), listenPort)
            theirs = yield _inboundFrom(other, a.peerID)
            self.assertEqual(_port(theirs.observedRemote), listenPort)

    @inlineCallbacks
    def test_fallbackWhenTaken(self) -> Any:
        """
        When a connection from our listen port to the same destination
        already exists (same four-tuple), the dial is made again from a
        random port and works; the observed address it brings back names
        no listen port and is not recorded.
        """
        a = yield startNode(self)
        b = yield startNode(self)
        listenPort = _port(a.listenAddrs[0])
        squatter = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(squatter.close)
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        squatter.bind(("127.0.0.1", listenPort))
        squatter.connect(("127.0.0.1", _port(b.listenAddrs[0])))
        conn = yield a.connect(addrOf(b))
        self.assertNotEqual(_port(conn.localAddr), listenPort)
        self.assertEqual(a.transports[0].reuseFallbacks, 1)
        yield conn.identified
        self.assertEqual(a.observedAddrs, {})

    @inlineCallbacks
    def test_portInUseStillRefused(self) -> Any:
        """
        C{SO_REUSEPORT} on the listener does not let a second node listen
        on a port one already listens on.
        """
        a = yield startNode(self)
        node = Node(reactor, Identity.generate(), [str(a.listenAddrs[0])])
        self.addCleanup(node.stopService)
        error = yield self.assertFailure(node.startService(), DialError)
        self.assertIn("the port is already in use", str(error))

    @inlineCallbacks
    def test_switchedOff(self) -> Any:
        """
        With C{reuseport=False} the node dials from a random port.
        """
        a = yield startNode(self, transports=[TCPTransport(reactor, reuseport=False)])
        b = yield startNode(self)
        conn = yield a.connect(addrOf(b))
        self.assertNotEqual(_port(conn.localAddr), _port(a.listenAddrs[0]))
