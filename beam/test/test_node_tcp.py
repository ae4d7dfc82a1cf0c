"""
Tests for what L{beam.p2p.host.node.Node} does to the TCP sockets of its peer
connections.
"""

from __future__ import annotations

import socket

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import TestCase

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
