"""
Self-test of the JavaScript interop peer and its Python driver.

Two js-libp2p peers talk to each other through L{beam.test.jspeer}: if this
passes, a failing interop test points at Beam, not at the harness.  These
tests use real processes and loopback TCP, so they are trial
L{TestCase}s returning Deferreds (trial spins the global reactor itself, also
under plain pytest).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from beam.identity.keys import Identity, PeerID
from beam.test.jsdht import (
    DHT_PROTOCOL,
    JSDHT,
    nameInOrder,
    nameKey,
    seqPayload,
    signEnvelope,
    sortByDistance,
)
from beam.test.jspeer import (
    ECHO_PROTOCOL,
    JSPeer,
    JSPeerCommandFailed,
    JSPeerError,
    echoPayload,
    interopAvailable,
    requireInterop,
)

PING_PROTOCOL = "/ipfs/ping/1.0.0"
# js-libp2p 3 sends its connection's remoteAddr as the observed address, and
# that carries the observed peer's /p2p/ suffix.
LOOPBACK_TCP = re.compile(r"^/ip4/127\.0\.0\.1/tcp/\d+(/p2p/(?P<peerId>\w+))?$")


def assertObservedLoopback(case: TestCase, observed: str, peerId: str) -> None:
    """
    Check that C{observed} is a loopback TCP multiaddr, naming C{peerId} if
    it names a peer at all.
    """
    match = LOOPBACK_TCP.match(observed)
    case.assertIsNotNone(match, f"{observed!r} is not a loopback TCP address")
    assert match is not None
    if match.group("peerId") is not None:
        case.assertEqual(match.group("peerId"), peerId)
TEN_MIB = 10 * 1024 * 1024


class JSPeerTestCase(TestCase):
    """
    Start JS peers that are stopped again when the test ends.
    """

    timeout = 60

    def setUp(self) -> None:
        requireInterop(self)

    @defer.inlineCallbacks
    def startPeer(self, security: str, **kw: Any) -> Any:
        peer = yield JSPeer.start(reactor, security=security, **kw)
        self.addCleanup(peer.stop)
        return peer


class TwoPeersTests(JSPeerTestCase):
    """
    A noise-only peer dials, pings, identifies and echoes to a noise+TLS peer.
    """

    @defer.inlineCallbacks
    def test_dialPingIdentifyEcho(self) -> Any:
        """
        A dial negotiates noise and yamux; ping gives round-trip times;
        identify reports the echo and ping protocols and a loopback observed
        address; 10 MiB echo back unchanged; the listener sees the inbound
        peer connect and identify.
        """
        a, b = yield defer.gatherResults(
            [self.startPeer("noise"), self.startPeer("both", seed=b"\x07" * 32)]
        )

        dialled = yield a.dial(b.addr)
        self.assertEqual(dialled["peerId"], b.peerId)
        self.assertEqual(dialled["encryption"], "/noise")
        self.assertEqual(dialled["multiplexer"], "/yamux/1.0.0")
        self.assertEqual(dialled["direction"], "outbound")

        pinged = yield a.ping(b.addr, count=3)
        self.assertEqual(len(pinged["rtts"]), 3)
        for rtt in pinged["rtts"]:
            self.assertGreaterEqual(rtt, 0)

        info = yield a.identify(b.addr)
        self.assertEqual(info["peerId"], b.peerId)
        self.assertIn(ECHO_PROTOCOL, info["protocols"])
        self.assertIn(PING_PROTOCOL, info["protocols"])
        assertObservedLoopback(self, info["observedAddr"], a.peerId)
        self.assertIn(b.addr.rsplit("/p2p/", 1)[0], info["listenAddrs"])
        self.assertTrue(info["agentVersion"].startswith("js-libp2p/"), info["agentVersion"])
        self.assertEqual(info["protocolVersion"], "ipfs/0.1.0")

        echoed = yield a.echo(b.addr, TEN_MIB)
        self.assertEqual(echoed["sent"], TEN_MIB)
        self.assertEqual(echoed["received"], TEN_MIB)
        self.assertEqual(echoed["sha256Received"], echoed["sha256Sent"])
        self.assertEqual(echoed["sha256Sent"], hashlib.sha256(echoPayload(TEN_MIB)).hexdigest())

        connected = yield b.waitForEvent("peer:connect", lambda e: e["peerId"] == a.peerId)
        self.assertEqual(connected["direction"], "inbound")
        identified = yield b.waitForEvent("identify", lambda e: e["peerId"] == a.peerId)
        self.assertIn(ECHO_PROTOCOL, identified["protocols"])
        assertObservedLoopback(self, identified["observedAddr"], b.peerId)

        listed = yield b.peers()
        self.assertIn(a.peerId, [p["peerId"] for p in listed["peers"]])


class SecurityTests(JSPeerTestCase):
    """
    The --security flag selects what is negotiated, and only that.
    """

    @defer.inlineCallbacks
    def test_tlsOnly(self) -> Any:
        """
        Two TLS-only peers negotiate /tls/1.0.0, ping, identify and echo.
        """
        a, b = yield defer.gatherResults([self.startPeer("tls"), self.startPeer("tls")])
        dialled = yield a.dial(b.addr)
        self.assertEqual(dialled["encryption"], "/tls/1.0.0")
        self.assertEqual(dialled["multiplexer"], "/yamux/1.0.0")
        pinged = yield a.ping(b.addr, count=1)
        self.assertEqual(len(pinged["rtts"]), 1)
        info = yield a.identify(b.addr)
        self.assertIn(ECHO_PROTOCOL, info["protocols"])
        assertObservedLoopback(self, info["observedAddr"], a.peerId)
        echoed = yield a.echo(b.addr, 1024 * 1024 + 17, seed=3)
        self.assertEqual(echoed["received"], 1024 * 1024 + 17)
        self.assertEqual(echoed["sha256Received"], echoed["sha256Sent"])
        self.assertEqual(
            echoed["sha256Sent"], hashlib.sha256(echoPayload(1024 * 1024 + 17, 3)).hexdigest()
        )

    @defer.inlineCallbacks
    def test_preferenceOrder(self) -> Any:
        """
        A peer offering tls before noise gets TLS from a peer that has both.
        """
        a, b = yield defer.gatherResults([self.startPeer("tls,noise"), self.startPeer("both")])
        dialled = yield a.dial(b.addr)
        self.assertEqual(dialled["encryption"], "/tls/1.0.0")

    @defer.inlineCallbacks
    def test_noCommonEncrypter(self) -> Any:
        """
        A noise-only peer cannot dial a TLS-only peer; the command fails
        with the JS error and the peer stays usable.
        """
        a, b = yield defer.gatherResults([self.startPeer("noise"), self.startPeer("tls")])
        failure = yield self.assertFailure(a.dial(b.addr, timeout=15), JSPeerCommandFailed)
        self.assertFalse(failure.reply["ok"])
        self.assertTrue(failure.reply["error"])
        listed = yield a.peers()
        self.assertEqual(listed["peers"], [])


class DriverTests(JSPeerTestCase):
    """
    The Python side of the protocol: ids, errors, identities, shutdown.
    """

    @defer.inlineCallbacks
    def test_seedIsDeterministic(self) -> Any:
        """
        The same seed gives the same peer ID, the one Beam derives from that
        seed; the ready addresses are loopback TCP multiaddrs ending in it.
        """
        seed = bytes(range(32))
        a, b = yield defer.gatherResults(
            [self.startPeer("noise", seed=seed), self.startPeer("noise", seed=seed.hex())]
        )
        self.assertEqual(a.peerId, b.peerId)
        self.assertEqual(a.peerId, str(Identity.fromSeed(seed).peerID))
        for addr in a.addrs:
            self.assertRegex(addr, r"^/ip4/127\.0\.0\.1/tcp/\d+/p2p/" + a.peerId + "$")

    @defer.inlineCallbacks
    def test_errorsAreReported(self) -> Any:
        """
        An unknown command and a refused non-loopback dial fail their own
        request only.
        """
        a = yield self.startPeer("noise")
        f = yield self.assertFailure(a.request({"cmd": "nonsense"}), JSPeerCommandFailed)
        self.assertIn("unknown command", str(f))
        f = yield self.assertFailure(a.dial("/ip4/192.0.2.1/tcp/4001"), JSPeerCommandFailed)
        self.assertIn("non-loopback", str(f))
        listed = yield a.peers()
        self.assertEqual(listed["peers"], [])

    @defer.inlineCallbacks
    def test_stopExitsCleanly(self) -> Any:
        """
        stop() makes the process exit with status 0; later requests fail
        at once and stopping again is harmless.
        """
        a = yield JSPeer.start(reactor, security="noise")
        yield a.stop()
        self.assertEqual(a.exitStatus, 0)
        yield self.assertFailure(a.peers(), Exception)
        yield a.stop()


class DHTTests(JSPeerTestCase):
    """
    Two or more js peers running kad-dht on /beam/kad/1.0.0 with the
    beam-name validator and selector: the harness Beam's DHT interop tests
    stand on.
    """

    @defer.inlineCallbacks
    def startDHT(self, mode: str = "--dht", *extra: str, **kw: Any) -> Any:
        peer = yield self.startPeer("noise", extraArgs=[mode, *extra], **kw)
        return peer, JSDHT(peer)

    @defer.inlineCallbacks
    def test_bootstrapClosestPutGet(self) -> Any:
        """
        A server peer bootstraps from another, a client from that one; the
        servers list /beam/kad/1.0.0 in identify and enter routing tables,
        the client does not serve the protocol; the client's closest-peers
        lookup finds both servers ordered by SHA-256 XOR distance and finds
        a peer's address; a correctly signed beam-name record put by the
        client lands on both servers and a fresh client gets it back.
        """
        (a, dhtA), (b, dhtB), (c, dhtC) = yield defer.gatherResults(
            [self.startDHT(), self.startDHT(), self.startDHT("--dht-client")]
        )
        booted = yield dhtB.bootstrap([a.addr])
        self.assertEqual(booted["dialled"], [a.peerId])
        self.assertEqual(booted["peers"], [a.peerId])
        identified = yield b.waitForEvent("identify", lambda e: e["peerId"] == a.peerId)
        self.assertIn(DHT_PROTOCOL, identified["protocols"])
        yield a.waitForEvent("dht:peer:add", lambda e: e["peerId"] == b.peerId)

        booted = yield dhtC.bootstrap([b.addr], selfLookup=True)
        # the self-lookup through b may already have taught c about a
        self.assertIn(b.peerId, booted["peers"])
        self.assertLessEqual(set(booted["peers"]), {a.peerId, b.peerId})
        table = yield dhtC.routingTable()
        self.assertEqual(table["mode"], "client")
        identified = yield b.waitForEvent("identify", lambda e: e["peerId"] == c.peerId)
        self.assertNotIn(DHT_PROTOCOL, identified["protocols"])
        table = yield dhtB.routingTable()
        self.assertEqual((table["mode"], table["peers"]), ("server", [a.peerId]))

        # c knows b for sure, so a must be closer to the key for c to
        # follow b's answer to it (js only follows closer peers)
        raw = {p: PeerID.fromString(p).bytes for p in (a.peerId, b.peerId)}
        name = nameInOrder([raw[a.peerId], raw[b.peerId]])
        key = nameKey(name)
        closest = yield dhtC.closest(key)
        self.assertEqual(closest["peers"], [a.peerId, b.peerId])
        self.assertEqual(closest["peers"], sortByDistance(key, raw.items()))
        self.assertEqual(sorted(closest["queried"]), sorted(raw))
        self.assertEqual(closest["errors"], [])

        found = yield dhtC.findPeer(a.peerId)
        self.assertEqual(found["peerId"], a.peerId)
        self.assertIn(a.addr.rsplit("/p2p/", 1)[0], found["addrs"])

        record = signEnvelope(Identity.generate(), seqPayload(1))
        put = yield dhtC.put(key, record)
        self.assertEqual(sorted(put["storedOn"]), sorted(raw))
        for dht in (dhtA, dhtB):
            stored = yield dht.getLocal(key)
            self.assertEqual(stored, record)

        _d, dhtD = yield self.startDHT("--dht-client")
        yield dhtD.bootstrap([a.addr])
        value, sender, errors = yield dhtD.get(f"/beam-name/{name}")
        self.assertEqual(value, record)
        self.assertIn(sender, raw)
        self.assertEqual(errors, [])

    @defer.inlineCallbacks
    def test_validatorRefusesBadRecords(self) -> Any:
        """
        Records with a bad signature, the wrong signing domain or payload
        type, an unparsable envelope, or a key that is not a valid name are
        refused by a server (not stored) and by a getter.
        """
        (a, dhtA), (_b, dhtB) = yield defer.gatherResults(
            [self.startDHT(), self.startDHT("--dht-client")]
        )
        yield dhtB.bootstrap([a.addr])
        ident = Identity.generate()
        good = signEnvelope(ident, seqPayload(1))
        tampered = bytearray(good)
        tampered[-1] ^= 1
        cases = [
            ("alice", bytes(tampered)),
            ("alice", signEnvelope(ident, seqPayload(1), domain=b"libp2p-routing-state")),
            ("alice", signEnvelope(ident, seqPayload(1), payloadType=b"/other/1")),
            ("alice", b"\x0a\x05hello"),
            ("Alice", good),
            ("a..b", good),
            ("x" * 64, good),
        ]
        for name, value in cases:
            put = yield dhtB.put(nameKey(name), value)
            self.assertEqual(put["storedOn"], [], name)
            self.assertTrue(put["errors"], name)
            yield self.assertFailure(dhtA.getLocal(nameKey(name)), JSPeerCommandFailed)
            yield self.assertFailure(dhtB.get(nameKey(name)), JSPeerCommandFailed)
        put = yield dhtB.put(nameKey("ok.name-1"), good)
        self.assertEqual(put["storedOn"], [a.peerId])

    @defer.inlineCallbacks
    def test_selectorPrefersHighestSeq(self) -> Any:
        """
        With --name-seq-field 1, a getter that finds seq 1 on one server
        and seq 2 on another returns seq 2 and corrects the stale server.
        """
        args = ("--name-seq-field", "1")
        (a, dhtA), (b, dhtB), (_c, dhtC) = yield defer.gatherResults(
            [self.startDHT("--dht", *args), self.startDHT("--dht", *args),
             self.startDHT("--dht-client", *args)]
        )
        ident = Identity.generate()
        old, new = (signEnvelope(ident, seqPayload(n)) for n in (1, 2))
        key = nameKey("alice")
        # neither server knows another, so each put only stores locally
        yield dhtA.put(key, old)
        yield dhtB.put(key, new)
        yield dhtC.bootstrap([a.addr, b.addr], minPeers=2)
        value, sender, _ = yield dhtC.get(key)
        self.assertEqual((value, sender), (new, b.peerId))
        corrected = yield dhtA.getLocal(key)
        self.assertEqual(corrected, new)

    @defer.inlineCallbacks
    def test_dhtFlags(self) -> Any:
        """
        Without a DHT flag the DHT commands fail; --dht with --dht-client
        is refused at start.
        """
        a = yield self.startPeer("noise")
        f = yield self.assertFailure(JSDHT(a).routingTable(), JSPeerCommandFailed)
        self.assertIn("not enabled", str(f))
        f = yield self.assertFailure(
            JSPeer.start(reactor, extraArgs=["--dht", "--dht-client"]), JSPeerError
        )
        self.assertIn("exclude each other", str(f))


class RequireInteropTests(SynchronousTestCase):
    """
    Missing interop tooling skips locally and fails under CI.
    """

    def test_availableDoesNothing(self) -> None:
        """
        When everything is installed, requireInterop returns quietly.
        """
        self.assertIsNone(requireInterop(self, available=lambda: None, environ={"CI": "true"}))

    def test_missingSkipsWithoutCI(self) -> None:
        """
        Without CI a missing install raises SkipTest with the reason.
        """
        from unittest import SkipTest

        exc = self.assertRaises(
            SkipTest, requireInterop, self, available=lambda: "no node", environ={}
        )
        self.assertEqual(str(exc), "no node")

    def test_missingFailsUnderCI(self) -> None:
        """
        Under CI a missing install fails the test instead of skipping it.
        """
        exc = self.assertRaises(
            self.failureException,
            requireInterop,
            self,
            available=lambda: "no node",
            environ={"CI": "true"},
        )
        self.assertIn("no node", str(exc))

    def test_interopAvailableReasons(self) -> None:
        """
        interopAvailable names a missing node binary and a missing
        node_modules directory.
        """
        reason = interopAvailable(which=lambda name: None)
        self.assertIsNotNone(reason)
        assert reason is not None
        self.assertIn("node", reason)
        if interopAvailable() is None:
            from pathlib import Path

            reason = interopAvailable(interopDir=Path(self.mktemp()))
            self.assertIsNotNone(reason)
            assert reason is not None
            self.assertIn("npm ci --prefix interop", reason)

    def test_echoPayloadIsDeterministic(self) -> None:
        """
        The echo payload is reproducible, seed-dependent and prefix-stable
        (a shorter payload is a prefix of a longer one).
        """
        self.assertEqual(echoPayload(100), echoPayload(100))
        self.assertNotEqual(echoPayload(100, 1), echoPayload(100, 0))
        self.assertEqual(echoPayload(1000)[:100], echoPayload(100))
        self.assertEqual(len(echoPayload(70000)), 70000)
