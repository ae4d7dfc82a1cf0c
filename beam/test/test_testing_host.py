"""
The public fake host (L{beam.testing.host.FakeHost}) behaves as a node
does, as far as services can tell.
"""

from __future__ import annotations

from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from beam.errors import DialError, NegotiationFailed
from beam.identity.keys import Identity
from beam.p2p.interfaces import IHost, IPeerConnection
from beam.p2p.protocols.echo import ECHO_PROTOCOL, EchoProtocol
from beam.p2p.transport.memory import flush
from beam.testing.host import FakeHost


class Collect(Protocol):
    def __init__(self) -> None:
        self.data = b""

    def dataReceived(self, data: bytes) -> None:
        self.data += data


class FakeHostTests(SynchronousTestCase):
    """
    L{FakeHost} provides L{IHost} and scripts dials and streams.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.host = FakeHost(self.clock)
        self.peer = Identity.generate().peerID

    def test_provides(self) -> None:
        """
        The fake provides the whole of L{IHost}; its connections
        L{IPeerConnection}.
        """
        verifyObject(IHost, self.host)
        verifyObject(IPeerConnection, self.host.up(self.peer))

    def test_scriptedDials(self) -> None:
        """
        A dial waits until the test settles it; "connected" reaches
        observers before the dial's result; a failed dial fails with
        L{DialError}; a cancelled one is counted.
        """
        events: list[str] = []
        self.host.addConnectionObserver(lambda e, c: events.append(e))
        d = self.host.connect(self.peer)
        self.assertNoResult(d)
        d.addCallback(lambda c: events.append("dialled"))
        self.host.dialSucceeds()
        self.assertEqual(events, ["connected", "dialled"])
        self.host.down(self.peer)
        self.assertEqual(events[-1], "disconnected")
        self.failureResultOf(self._failed(), DialError)
        d = self.host.connect(self.peer)
        d.cancel()
        self.failureResultOf(d)
        self.assertEqual(self.host.cancelledDials, 1)

    def _failed(self) -> object:
        d = self.host.connect(self.peer)
        self.host.dialFails()
        return d

    def test_streamsToRemoteHandlers(self) -> None:
        """
        A stream opened to a protocol the remote serves is paired with
        the remote's protocol over in-memory pipes; an unserved protocol
        fails with L{NegotiationFailed}.
        """
        self.host.autoConnect = True
        self.host.serveRemote(self.peer, ECHO_PROTOCOL, EchoProtocol)
        got = Collect()
        proto = self.successResultOf(self.host.openStream(self.peer, ["/nope", ECHO_PROTOCOL], lambda: got))
        proto.transport.write(b"hi")
        flush(self.clock)
        self.assertEqual(got.data, b"hi")
        self.assertEqual(proto.transport.connection.remotePeer, self.peer)
        self.assertEqual(self.host.opened[0][:2], (self.peer, ECHO_PROTOCOL))
        f: Failure = self.failureResultOf(self.host.openStream(self.peer, "/nope", Collect), NegotiationFailed)
        self.assertIn("/nope", str(f.value))

    def test_tagsAndHandlers(self) -> None:
        """
        Keep-alive tags and stream handlers are recorded as a node would.
        """
        self.host.protect(self.peer, "a")
        self.host.protect(self.peer, "b")
        self.host.unprotect(self.peer, "a")
        self.assertEqual(self.host.tags, {self.peer: {"b"}})
        self.host.unprotect(self.peer, "b")
        self.assertEqual(self.host.tags, {})
        self.host.setStreamHandler("/x", Collect)
        self.assertTrue(self.host.hasStreamHandler("/x"))
        self.assertEqual(self.host.protocols, ["/x"])
        self.host.removeStreamHandler("/x")
        self.assertFalse(self.host.hasStreamHandler("/x"))
