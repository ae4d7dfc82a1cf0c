"""
Robustness of L{beam.dht.service} against strangers (issue 8): answers
respect backpressure, and addresses a peer gives about others are filtered
and dialled at a bounded rate.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from beam.dht.addrfilter import DialLimiter, addrScope, filterAddrs, filterMessage
from beam.dht.messages import Message, MessageType, PeerInfo, encodeMessage
from beam.dht.service import (
    KAD_PROTOCOL,
    MAX_PIPELINED,
    MAX_REQUESTS_PER_STREAM,
    STALL_TIMEOUT,
    KademliaService,
    _KadServer,
)
from beam.encoding.framing import encodeLengthPrefixed
from beam.errors import BeamError
from beam.identity.multiaddr import Multiaddr
from beam.test.dhtutil import ToyValidator, fakePeer, toyValue
from beam.test.memnodes import MemoryGrid

KEY = b"/toy/big"


def _ma(text: str) -> Multiaddr:
    return Multiaddr.fromString(text)


class _Greedy(Protocol):
    """
    A client that sends requests and reads answers only when told to.
    """

    def __init__(self, read: bool = False) -> None:
        self.read = read
        self.received = 0
        self.lost: Optional[Failure] = None

    def connectionMade(self) -> None:
        if not self.read:
            self.transport.pauseProducing()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        self.lost = reason


class ServerBackpressureTests(SynchronousTestCase):
    """
    L{_KadServer} stops answering, and reading, while its answers are
    unread, and resets a stream held that way or abused.
    """

    def setUp(self) -> None:
        self.grid = MemoryGrid(self)
        self.server = self.grid.node()
        self.dht = KademliaService(
            self.grid.clock, self.server, None, mode="server", validators={"toy": ToyValidator()}
        )
        self.dht.startService()
        self.addCleanup(self.dht.stopService)
        # One record of ~7.6 KB, as in the attack.
        value = toyValue("x" * 7600, 1, self.grid.clock.seconds() + 3600)
        self.assertTrue(self.dht.store.put(KEY, value))
        self.answerSize = len(value)
        self.servers: list[_KadServer] = []

        def build() -> _KadServer:
            s = _KadServer(self.dht)
            self.servers.append(s)
            return s

        self.server.removeStreamHandler(KAD_PROTOCOL)
        self.server.setStreamHandler(KAD_PROTOCOL, build)
        self.attacker = self.grid.node()
        self.grid.result(self.attacker.connect(self.grid.addr(self.server)))
        self.get = encodeLengthPrefixed(encodeMessage(Message(MessageType.GET_VALUE, KEY)))

    def _open(self, client: _Greedy) -> Any:
        self.grid.result(self.attacker.openStream(self.server.peerID, [KAD_PROTOCOL], lambda: client))
        self.assertEqual(len(self.servers), 1)
        return client.transport

    def test_unreadAnswersBounded(self) -> None:
        """
        A peer that sends 1,000 GETs for a 7.6 KB record and never reads
        gets only a window's worth of answers: the server pauses, holds
        under 256 KiB unsent, and resets the stream after C{STALL_TIMEOUT}.
        """
        client = _Greedy()
        stream = self._open(client)
        for i in range(1000):
            stream.write(self.get)
            if i % 20 == 0:
                self.grid.settle()
        self.grid.settle()
        server = self.servers[0]
        self.assertTrue(server._paused)
        queued = server.transport._queued  # type: ignore[union-attr]
        self.assertLess(queued, 256 * 1024)
        # Answered only what fits the peer's window and our queue: well
        # under the 7.6 MB that answering all 1,000 would take.
        self.assertLess(server._answered * self.answerSize, 1024 * 1024)
        self.assertIsNone(client.lost)
        self.grid.advance(STALL_TIMEOUT + 1)
        self.assertIsNotNone(client.lost)
        self.assertEqual(server.transport._queued, 0)  # type: ignore[union-attr]

    def test_slowReaderServedInFull(self) -> None:
        """
        A peer that stops reading for a while, then reads, gets every
        answer, and its stream is not reset.
        """
        client = _Greedy()
        stream = self._open(client)
        n = 200
        for _ in range(n):
            stream.write(self.get)
            self.grid.settle()
        self.assertTrue(self.servers[0]._paused)
        self.grid.advance(STALL_TIMEOUT / 2)
        stream.resumeProducing()
        self.grid.settle()
        self.assertIsNone(client.lost)
        self.assertEqual(self.servers[0]._answered, n)
        self.assertGreater(client.received, n * self.answerSize)
        self.grid.advance(STALL_TIMEOUT * 2)
        self.assertIsNone(client.lost)

    def test_tooManyPipelined(self) -> None:
        """
        A peer that sends more than C{MAX_PIPELINED} requests at once has
        its stream reset.
        """
        client = _Greedy(read=True)
        stream = self._open(client)
        stream.write(self.get * (MAX_PIPELINED + 1))
        self.grid.settle()
        self.assertIsNotNone(client.lost)

    def test_requestsPerStreamBounded(self) -> None:
        """
        After C{MAX_REQUESTS_PER_STREAM} answers the stream is reset.
        """
        client = _Greedy(read=True)
        stream = self._open(client)
        ping = encodeLengthPrefixed(encodeMessage(Message(MessageType.PING)))
        for _ in range(MAX_REQUESTS_PER_STREAM):
            stream.write(ping)
            self.grid.settle()
        self.assertIsNone(client.lost)
        stream.write(ping)
        self.grid.settle()
        self.assertIsNotNone(client.lost)
        self.assertEqual(self.servers[0]._answered, MAX_REQUESTS_PER_STREAM)


class AddrFilterTests(SynchronousTestCase):
    """
    L{filterAddrs} keeps an address only if the answering peer's own
    connection is on that kind of network.
    """

    def test_scopes(self) -> None:
        """
        Addresses are classed as public, private, loopback, invalid or other.
        """
        cases = {
            "/ip4/8.8.8.8/tcp/1": "public",
            "/ip6/2001:4860::1/tcp/1": "public",
            "/ip4/10.1.2.3/tcp/1": "private",
            "/ip4/192.168.1.1/tcp/1": "private",
            "/ip4/172.16.0.1/tcp/1": "private",
            "/ip4/169.254.1.1/tcp/1": "private",
            "/ip4/100.64.0.1/tcp/1": "private",
            "/ip6/fd00::1/tcp/1": "private",
            "/ip6/fe80::1/tcp/1": "private",
            "/ip4/127.0.0.1/tcp/1": "loopback",
            "/ip6/::1/tcp/1": "loopback",
            "/ip6/::ffff:127.0.0.1/tcp/1": "loopback",
            "/ip6/::ffff:10.0.0.1/tcp/1": "private",
            "/dns4/localhost/tcp/1": "loopback",
            "/ip4/0.0.0.0/tcp/1": "invalid",
            "/ip6/::/tcp/1": "invalid",
            "/ip4/224.0.0.1/tcp/1": "invalid",
            "/ip4/240.0.0.1/tcp/1": "invalid",
            "/dns4/example.com/tcp/1": "other",
            "/memory/5": "other",
            # Documentation ranges: TEST-NET-1 and -3 play the Internet
            # (in examples and the NAT lab), TEST-NET-2 a home LAN.
            "/ip4/203.0.113.9/tcp/1": "public",
            "/ip4/192.0.2.9/tcp/1": "public",
            "/ip4/198.51.100.9/tcp/1": "private",
        }
        self.assertEqual({a: addrScope(_ma(a)) for a in cases}, cases)

    def test_publicPeerTellsOnlyPublic(self) -> None:
        """
        A peer reached over a public address can give public IP addresses
        only: loopback, private and unspecified ones are dropped, and so are
        DNS names, which could resolve to any of those.
        """
        addrs = [_ma(a) for a in (
            "/ip4/127.0.0.1/tcp/22", "/ip4/10.0.0.1/tcp/80", "/ip4/0.0.0.0/tcp/1",
            "/ip4/1.2.3.4/tcp/4001", "/dns4/example.com/tcp/4001", "/ip6/fe80::1/tcp/2",
        )]
        kept = filterAddrs(addrs, _ma("/ip4/5.6.7.8/tcp/4001"))
        self.assertEqual([str(a) for a in kept], ["/ip4/1.2.3.4/tcp/4001"])
        self.assertEqual(filterAddrs(addrs, None), kept)
        # From a LAN or loopback peer, names are kept (it may give private
        # addresses anyway).
        for via in ("/ip4/192.168.1.2/tcp/4001", "/ip4/127.0.0.1/tcp/4001"):
            self.assertIn("/dns4/example.com/tcp/4001", [str(a) for a in filterAddrs(addrs, _ma(via))])
        self.assertEqual([str(a) for a in filterAddrs([_ma("/memory/7")], None)], ["/memory/7"])

    def test_privatePeerTellsPrivate(self) -> None:
        """
        A peer on the LAN may give LAN addresses, not loopback ones.
        """
        addrs = [_ma("/ip4/127.0.0.1/tcp/22"), _ma("/ip4/192.168.0.9/tcp/4001")]
        kept = filterAddrs(addrs, _ma("/ip4/192.168.0.2/tcp/4001"))
        self.assertEqual([str(a) for a in kept], ["/ip4/192.168.0.9/tcp/4001"])

    def test_loopbackPeerTellsAll(self) -> None:
        """
        A peer on this very host may give loopback addresses (a local test
        network), but never unspecified ones.
        """
        addrs = [_ma("/ip4/127.0.0.1/tcp/22"), _ma("/ip4/10.0.0.1/tcp/1"), _ma("/ip4/0.0.0.0/tcp/1")]
        kept = filterAddrs(addrs, _ma("/ip4/127.0.0.1/tcp/4001"))
        self.assertEqual([str(a) for a in kept], ["/ip4/127.0.0.1/tcp/22", "/ip4/10.0.0.1/tcp/1"])

    def test_filterMessage(self) -> None:
        """
        L{filterMessage} filters every closer peer's addresses and keeps the
        rest of the message.
        """
        msg = Message(MessageType.FIND_NODE, b"k", closerPeers=(
            PeerInfo(fakePeer(1), (_ma("/ip4/127.0.0.1/tcp/1"), _ma("/ip4/1.1.1.1/tcp/1"))),
            PeerInfo(fakePeer(2), (_ma("/ip4/127.0.0.1/tcp/2"),)),
        ))
        out = filterMessage(msg, _ma("/ip4/9.9.9.9/tcp/1"))
        self.assertEqual(out.key, b"k")
        self.assertEqual([p.addrs for p in out.closerPeers], [(_ma("/ip4/1.1.1.1/tcp/1"),), ()])
        plain = Message(MessageType.PING)
        self.assertIs(filterMessage(plain, None), plain)


class DialLimiterTests(SynchronousTestCase):
    """
    L{DialLimiter} is a token bucket per C{host:port}.
    """

    def test_bucket(self) -> None:
        """
        C{burst} dials to one target pass, the next is refused until
        C{1/rate} seconds passed; another target has its own bucket, and
        the peer ID does not make a target different.
        """
        clock = Clock()
        limiter = DialLimiter(clock, burst=2, rate=0.5)
        a = _ma("/ip4/127.0.0.1/tcp/22")
        b = _ma("/ip4/127.0.0.1/tcp/23")
        self.assertEqual([limiter.allow(a), limiter.allow(a), limiter.allow(a)], [True, True, False])
        self.assertFalse(limiter.allow(a.withPeerID(fakePeer(3))))
        self.assertTrue(limiter.allow(b))
        clock.advance(2.0)
        self.assertTrue(limiter.allow(a))
        self.assertFalse(limiter.allow(a))
        self.assertEqual(limiter.refused, 3)

    def test_boundedTargets(self) -> None:
        """
        The limiter remembers at most C{maxTargets} targets.
        """
        clock = Clock()
        limiter = DialLimiter(clock, burst=1, rate=0.001, maxTargets=10)
        for port in range(1, 100):
            self.assertTrue(limiter.allow(_ma(f"/ip4/1.2.3.4/tcp/{port}")))
        self.assertLessEqual(len(limiter._buckets), 10)


class ServiceSSRFTests(SynchronousTestCase):
    """
    Through L{KademliaService}: a peer's answer cannot make us dial
    loopback, and dials to one target are rate-limited.
    """

    def setUp(self) -> None:
        self.grid = MemoryGrid(self)
        self.node = self.grid.node()
        self.dht = KademliaService(self.grid.clock, self.node, None, mode="server")

    def test_answerFiltered(self) -> None:
        """
        Closer peers in an answer received over a public connection lose
        their loopback addresses before the lookup sees them.
        """
        peer = self.grid.node()
        evil = Message(MessageType.FIND_NODE, b"k", closerPeers=(
            PeerInfo(fakePeer(1), (_ma("/ip4/127.0.0.1/tcp/22"),)),
        ))

        class Evil(Protocol):
            def dataReceived(self, data: bytes) -> None:
                self.transport.write(encodeLengthPrefixed(encodeMessage(evil)))  # type: ignore[union-attr]

        peer.setStreamHandler(KAD_PROTOCOL, Evil)
        self.grid.result(self.node.connect(self.grid.addr(peer)))
        conn = self.node.connectionTo(peer.peerID)
        assert conn is not None
        # As if the peer were reached over the Internet.
        conn.remoteAddr = _ma("/ip4/5.6.7.8/tcp/4001")
        answer = self.grid.result(self.dht.request(PeerInfo(peer.peerID), Message(MessageType.FIND_NODE, b"k")))
        self.assertEqual(answer.closerPeers, (PeerInfo(fakePeer(1), ()),))

    def test_dialsRateLimited(self) -> None:
        """
        Twenty peers said to be at one address cause at most a handful of
        dials there; the rest fail at once without dialling.
        """
        listener = self.grid.silentListener()
        target = listener.addr
        results = []
        for i in range(20):
            # Only TCP addresses learned from the DHT reach the peer store;
            # a memory one stands in for 127.0.0.1:22 here.
            self.node.peerStore.addAddrs(fakePeer(i), [target], "user")
            results.append(self.dht.request(PeerInfo(fakePeer(i), (target,)), Message(MessageType.PING)))
        self.grid.settle()
        refused = [d for d in results if d.called]
        for d in refused:
            self.assertIn("too many DHT dials", str(self.grid.failure(d, BeamError).value))
        self.assertEqual(len(refused), 20 - self.dht.dialLimiter.burst)
        self.assertEqual(len(listener.protocols), self.dht.dialLimiter.burst)
        pending = [d for d in results if not d.called]
        self.grid.advance(self.dht.timeout + 1)
        # The dials that went out time out; their failures are consumed
        # here (left unhandled, they were reported against a later test).
        for d in pending:
            self.grid.failure(d)
