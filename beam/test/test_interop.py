"""
Interoperability with a real js-libp2p 3.x node (interop/peer.mjs).

Beam dials js and js dials Beam, over Noise and over TLS, with yamux:
ping round-trips, identify reports the right peer ID, protocols and
observed address, and a C{/beam/echo/1.0.0} stream carries 10 MiB both
ways intact.  Under CI these tests fail rather than skip when the js
peer is not installed.
"""

from __future__ import annotations

import hashlib
import time

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from beam.p2p.protocols.echo import ECHO_PROTOCOL
from beam.p2p.protocols.identify import IDENTIFY_PROTOCOL
from beam.identity.keys import Identity, PeerID
from beam.identity.multiaddr import Multiaddr
from beam.p2p.protocols.ping import PING_PROTOCOL
from beam.p2p.security.noise import NoiseTransport
from beam.p2p.security.tls import TLSTransport
from beam.test.jspeer import JSPeer, requireInterop
from beam.test.nodeutil import EchoClient, addrOf, randomPayload, startNode
from beam.p2p.upgrade import YAMUX_PROTOCOL

TEN_MIB = 10 * 1024 * 1024
SECURITY_IDS = {"noise": "/noise", "tls": "/tls/1.0.0"}


class InteropMixin:
    security = "noise"

    def setUp(self):
        requireInterop(self)

    @inlineCallbacks
    def startBoth(self):
        js = yield JSPeer.start(reactor, security=self.security)
        self.addCleanup(js.stop)
        ident = Identity.generate()
        if self.security == "noise":
            securities = [NoiseTransport(ident, muxers=[YAMUX_PROTOCOL])]
        else:
            securities = [TLSTransport(ident, muxers=[YAMUX_PROTOCOL], clock=reactor)]
        node = yield startNode(self, identity=ident, securities=securities)
        return js, node

    @inlineCallbacks
    def test_beamDialsJS(self):
        """
        Beam dials js: the connection is authenticated to js's peer ID with
        the expected security and yamux; ping round-trips; identify reports
        js's key, protocols and our loopback observed address; 10 MiB
        echo through a js stream handler comes back intact; and js's own
        identify of us reports Beam's protocols.
        """
        js, node = yield self.startBoth()
        conn = yield node.connect(Multiaddr.fromString(js.addr))
        self.assertEqual(conn.remotePeer, PeerID.fromString(js.peerId))
        self.assertEqual(conn.security, SECURITY_IDS[self.security])
        self.assertEqual(conn.muxer, YAMUX_PROTOCOL)

        rtts = yield node.ping(conn.remotePeer, count=3)
        self.assertEqual(len(rtts), 3)

        info = yield node.identifyPeer(conn.remotePeer)
        self.assertEqual(info.publicKey.peerID(), conn.remotePeer)
        for p in (PING_PROTOCOL, IDENTIFY_PROTOCOL, ECHO_PROTOCOL):
            self.assertIn(p, info.protocols)
        self.assertTrue(info.agentVersion.startswith("js-libp2p"), info.agentVersion)
        host, port, _ = info.observedAddr.tcpTarget()
        self.assertEqual(host, "127.0.0.1")
        self.assertEqual(port, conn.localAddr.tcpTarget()[1])

        payload, digest = randomPayload(TEN_MIB)
        client = EchoClient(payload)
        yield node.openStream(conn.remotePeer, ECHO_PROTOCOL, lambda: client)
        echoed = yield client.done
        self.assertEqual(len(echoed), TEN_MIB)
        self.assertEqual(hashlib.sha256(echoed).hexdigest(), digest)

        ev = yield js.waitForEvent(
            "identify", lambda e: e.get("peerId") == str(node.peerID), timeout=20
        )
        self.assertIn(ECHO_PROTOCOL, ev["protocols"])
        self.assertIn(PING_PROTOCOL, ev["protocols"])

    @inlineCallbacks
    def test_jsDialsBeam(self):
        """
        js dials Beam: js sees our peer ID and the expected security; its
        pings are answered; its identify reports our peer ID, protocols
        and its own loopback observed address; its 10 MiB echo stream to
        our handler comes back intact.
        """
        js, node = yield self.startBoth()
        addr = str(addrOf(node))
        dialled = yield js.dial(addr)
        self.assertEqual(dialled["peerId"], str(node.peerID))
        self.assertEqual(dialled["encryption"], SECURITY_IDS[self.security])
        self.assertEqual(dialled["multiplexer"], YAMUX_PROTOCOL)

        pinged = yield js.ping(addr, count=3)
        self.assertEqual(len(pinged["rtts"]), 3)

        ident = yield js.identify(addr)
        self.assertEqual(ident["peerId"], str(node.peerID))
        for p in (PING_PROTOCOL, IDENTIFY_PROTOCOL, ECHO_PROTOCOL):
            self.assertIn(p, ident["protocols"])
        self.assertTrue(ident["agentVersion"].startswith("beam/"))
        observed = Multiaddr.fromString(ident["observedAddr"])
        self.assertEqual(observed.tcpTarget()[0], "127.0.0.1")
        self.assertIn(str(addrOf(node, withPeer=False)), [
            str(Multiaddr.fromString(a).withoutPeerID()) for a in ident["listenAddrs"]
        ])

        echoed = yield js.echo(addr, TEN_MIB, timeout=120)
        self.assertEqual(echoed["sent"], TEN_MIB)
        self.assertEqual(echoed["received"], TEN_MIB)
        self.assertEqual(echoed["sha256Sent"], echoed["sha256Received"])

        # The connection js opened is the one Beam pooled for that peer.
        jsPeer = PeerID.fromString(js.peerId)
        self.assertEqual(node.connections[jsPeer].direction, "inbound")

    @inlineCallbacks
    def closeFromBeam(self, inbound):
        """
        Connect (js dials when C{inbound}), then stop the Beam node and
        return how long the stop took; js must see the disconnect.
        """
        js, node = yield self.startBoth()
        if inbound:
            yield js.dial(str(addrOf(node)))
        else:
            yield node.connect(Multiaddr.fromString(js.addr))
        jsPeer = PeerID.fromString(js.peerId)
        yield node.ping(jsPeer, count=1)
        started = time.monotonic()
        yield node.stopService()
        took = time.monotonic() - started
        yield js.waitForEvent(
            "peer:disconnect", lambda e: e.get("peerId") == str(node.peerID), timeout=10
        )
        return took, node

    @inlineCallbacks
    def test_closeOutboundPromptly(self):
        """
        Stopping Beam with a connection it dialled to js closes that
        connection at once (well under a second, never the node's 5 s
        close timeout that aborts a connection which will not close), and
        js sees the peer disconnect.
        """
        took, node = yield self.closeFromBeam(inbound=False)
        self.assertLess(took, min(1.0, node.closeTimeout / 2))

    @inlineCallbacks
    def test_closeInboundPromptly(self):
        """
        Stopping Beam with a connection js dialled to it closes promptly
        too, and js sees the peer disconnect.
        """
        took, node = yield self.closeFromBeam(inbound=True)
        self.assertLess(took, min(1.0, node.closeTimeout / 2))

    @inlineCallbacks
    def test_jsHangsUpPromptly(self):
        """
        When js hangs up the connection, Beam's side of it is closed within
        a second: the connection is gone from the node's pool.
        """
        js, node = yield self.startBoth()
        conn = yield node.connect(Multiaddr.fromString(js.addr))
        yield node.ping(conn.remotePeer, count=1)
        closed = conn.whenClosed()
        started = time.monotonic()
        yield js.request({"cmd": "hangup", "addr": str(addrOf(node))})
        yield withTimeout(closed, 5)
        self.assertLess(time.monotonic() - started, 1.0)
        self.assertNotIn(conn.remotePeer, node.connections)


def withTimeout(d, seconds):
    """
    C{d}, failing with a timeout after C{seconds} of the real reactor.
    """
    return d.addTimeout(seconds, reactor)


class NoiseInteropTests(InteropMixin, TestCase):
    """
    Beam and js-libp2p over Noise XX and yamux.
    """

    security = "noise"
    timeout = 120


class TLSInteropTests(InteropMixin, TestCase):
    """
    Beam and js-libp2p over TLS 1.3 and yamux.
    """

    security = "tls"
    timeout = 120


class DefaultStackInteropTests(TestCase):
    """
    With its default stack (Noise preferred, TLS offered) Beam agrees on
    Noise with a js node that offers both.
    """

    timeout = 120

    def setUp(self):
        requireInterop(self)

    @inlineCallbacks
    def test_defaultNegotiation(self):
        """
        A default Beam node and a js node offering both protocols settle on
        Noise in both directions.
        """
        js = yield JSPeer.start(reactor, security="both")
        self.addCleanup(js.stop)
        node = yield startNode(self)
        conn = yield node.connect(Multiaddr.fromString(js.addr))
        self.assertEqual(conn.security, "/noise")
        other = yield JSPeer.start(reactor, security="tls,noise")
        self.addCleanup(other.stop)
        dialled = yield other.dial(str(addrOf(node)))
        self.assertEqual(dialled["encryption"], "/tls/1.0.0")
