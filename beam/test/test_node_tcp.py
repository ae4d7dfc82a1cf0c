"""
Tests for what L{beam.p2p.host.node.Node} does to the TCP sockets of its peer
connections.
"""

from __future__ import annotations

import socket

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
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
        conn = yield a.connect(addrOf(b))
        for _ in range(200):
            if a.peerID in b.connections:
                break
            yield deferLater(reactor, 0.01, lambda: None)
        for c in (conn, b.connections[a.peerID]):
            sock = c.rawTransport.getHandle()
            self.assertTrue(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
