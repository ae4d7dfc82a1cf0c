"""
Tests for L{beam.p2p.nat.turn} and L{beam.p2p.nat.turntransport}: the
codec with RFC 5769's MESSAGE-INTEGRITY vectors and fuzzing, the client's
state machine against a scripted server on a L{Clock}, and real loopback
runs against coturn: a node allocates a TCP relay (RFC 6062), another
dials the relayed address with plain TCP, and an echo stream runs over
Noise and yamux through the relay.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import struct
import subprocess
import tempfile
from typing import Any, Optional

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock, deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from beam.p2p.nat.stun import ErrorCode, InvalidStunMessage, MessageClass
from beam.p2p.nat.turn import (
    ALLOCATE,
    CONNECT,
    CONNECTION_ATTEMPT,
    CONNECTION_BIND,
    CREATE_PERMISSION,
    MAX_MESSAGE,
    MAX_PERMISSIONS,
    PERMISSION_REFRESH,
    REFRESH,
    TCP,
    StreamDecoder,
    TurnAllocationLost,
    TurnAuthError,
    TurnClient,
    TurnErrorResponse,
    TurnMessage,
    TurnTimeout,
    decode,
    encode,
    longTermKey,
    refreshDelay,
)

# RFC 5769 section 2.4: a request with long-term authentication.
LONG_TERM_REQUEST = bytes.fromhex(
    "000100602112a44278ad3433c6ad72c029da412e"
    "00060012e3839ee38388e383aae38383e382afe382b90000"
    "0015001c662f2f3439396b39353464364f4c33346f4c39465354767936347341"
    "0014000b6578616d706c652e6f726700"
    "00080014f67024656dd64a3e02b8e0712e85c9a28ca89666"
)
# RFC 5769 section 2.2: an IPv4 response, short-term password below.
IPV4_RESPONSE = bytes.fromhex(
    "0101003c2112a442b7e7a701bc34d686fa87dfae"
    "8022000b7465737420766563746f7220"
    "00200008 0001a147e112a643".replace(" ", "")
    + "000800142b91f599fd9e90c38c7489f92af9ba53f06be7d7"
    "80280004c07d4c96"
)
# RFC 5769 section 2.1: a request with odd padding bytes and ICE attributes.
SAMPLE_REQUEST = bytes.fromhex(
    "000100582112a442b7e7a701bc34d686fa87dfae"
    "802200105354554e207465737420636c69656e74"
    "002400046e0001ff"
    "80290008932ff9b151263b36"
    "000600096576746a3a68367659202020"
    "000800149aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a2"
    "80280004e57a3bcf"
)
SHORT_TERM_KEY = b"VOkJxbRl1RmTxUk/WvJxBt"
TID = bytes.fromhex("b7e7a701bc34d686fa87dfae")


class CodecTests(SynchronousTestCase):
    """
    L{encode}, L{decode} and L{StreamDecoder}.
    """

    def test_longTermVector(self) -> None:
        """
        RFC 5769's long-term request decodes, and its MESSAGE-INTEGRITY is
        HMAC-SHA1 with MD5("マトリックス:example.org:TheMatrIX").
        """
        m = decode(LONG_TERM_REQUEST)
        nonce = b"f//499k954d6OL34oL9FSTvy64sA"
        self.assertEqual((m.username, m.realm, m.nonce), ("マトリックス", "example.org", nonce))
        key = longTermKey("マトリックス", "example.org", "TheMatrIX")
        self.assertEqual(key, hashlib.md5("マトリックス:example.org:TheMatrIX".encode()).digest())
        self.assertTrue(m.verify(key))
        self.assertFalse(m.verify(longTermKey("マトリックス", "example.org", "TheMatrix")))
        # Encoding the same fields with the same key gives the same bytes.
        again = TurnMessage(
            MessageClass.REQUEST, 0x001, m.transactionID, username=m.username, nonce=m.nonce, realm=m.realm,
            fingerprint=False,
        )
        data = encode(again, key)
        # Our attribute order differs (REALM before NONCE); the HMAC is still ours and valid.
        self.assertTrue(decode(data).verify(key))

    def test_shortTermVectors(self) -> None:
        """
        RFC 5769's sample request and IPv4 response verify with the
        short-term password as key; the request's unknown
        comprehension-required PRIORITY is reported; a flipped bit fails
        the FINGERPRINT.
        """
        request = decode(SAMPLE_REQUEST)
        self.assertTrue(request.verify(SHORT_TERM_KEY))
        self.assertEqual(request.username, "evtj:h6vY")
        self.assertEqual(request.unknownRequired, (0x0024,))
        self.assertTrue(request.fingerprint)
        response = decode(IPV4_RESPONSE)
        self.assertTrue(response.verify(SHORT_TERM_KEY))
        self.assertEqual(response.xorMappedAddress, ("192.0.2.1", 32853))
        self.assertRaises(InvalidStunMessage, decode, IPV4_RESPONSE[:-1] + b"\x97")

    def test_integrityThenFingerprint(self) -> None:
        """
        Our MESSAGE-INTEGRITY covers the header with a length that counts
        it but not the FINGERPRINT after it (RFC 8489 section 14.5, as
        RFC 5769's responses show), and FINGERPRINT comes last.
        """
        import hmac as hmac_

        m = TurnMessage(MessageClass.SUCCESS, 0x001, TID, xorMappedAddress=("192.0.2.1", 32853), software="test vector")
        data = encode(m, SHORT_TERM_KEY)
        self.assertEqual(data[-32:-28], bytes.fromhex("00080014"))
        self.assertEqual(data[-8:-4], bytes.fromhex("80280004"))
        covered = data[:2] + struct.pack("!H", len(data) - 20 - 8) + data[4:-32]
        self.assertEqual(data[-28:-8], hmac_.new(SHORT_TERM_KEY, covered, hashlib.sha1).digest())
        self.assertTrue(decode(data).verify(SHORT_TERM_KEY))
        self.assertTrue(decode(data).fingerprint)

    def test_roundTrip(self) -> None:
        """
        Every TURN attribute survives encoding and decoding, IPv6 too.
        """
        m = TurnMessage(
            MessageClass.SUCCESS,
            ALLOCATE,
            TID,
            requestedTransport=TCP,
            lifetime=600,
            xorRelayedAddress=("203.0.113.7", 50000),
            xorMappedAddress=("2001:db8::1", 40000),
            xorPeerAddresses=(("198.51.100.2", 0), ("2001:db8::2", 0)),
            connectionID=0xDEADBEEF,
            username="alice",
            realm="beam.test",
            nonce=b"abc",
            software="beam",
            errorCode=ErrorCode(437, "Allocation Mismatch"),
            unknownAttributes=(0x7777,),
        )
        key = longTermKey("alice", "beam.test", "secret")
        decoded = decode(encode(m, key))
        self.assertEqual(attrsWithout(decoded), attrsWithout(m))
        self.assertTrue(decoded.verify(key))

    def test_afterIntegrityIgnored(self) -> None:
        """
        Attributes after MESSAGE-INTEGRITY (other than FINGERPRINT) are
        ignored: they are not covered by the HMAC.
        """
        data = encode(TurnMessage(MessageClass.SUCCESS, ALLOCATE, TID, fingerprint=False), b"k")
        extra = struct.pack("!HHI", 0x000D, 4, 99)
        data = data[:2] + struct.pack("!H", len(data) - 20 + 8) + data[4:] + extra
        m = decode(data)
        self.assertIsNone(m.lifetime)
        self.assertTrue(m.verify(b"k"))

    def test_sha256(self) -> None:
        """
        MESSAGE-INTEGRITY-SHA256 is read and checked with its key.
        """
        import hmac as hmac_

        body = encode(TurnMessage(MessageClass.SUCCESS, ALLOCATE, TID, lifetime=5, fingerprint=False))
        key = b"sha256 key"
        header = body[:2] + struct.pack("!H", len(body) - 20 + 36) + body[4:]
        mac = hmac_.new(key, header, hashlib.sha256).digest()
        data = header + struct.pack("!HH", 0x001C, 32) + mac
        m = decode(data)
        self.assertTrue(m.verifySha256(key))
        self.assertFalse(m.verifySha256(b"other"))
        self.assertFalse(m.verify(key))

    def test_strict(self) -> None:
        """
        Wrong sizes of TURN attributes, and oversized messages, are refused.
        """
        for attrType, value in [(0x000D, b"\0\0\0"), (0x002A, b"\0" * 5), (0x0019, b"\x06"), (0x0008, b"\0" * 19)]:
            attr = struct.pack("!HH", attrType, len(value)) + value + b"\0" * (-len(value) % 4)
            data = struct.pack("!HHI", 0x0103, len(attr), 0x2112A442) + TID + attr
            self.assertRaises(InvalidStunMessage, decode, data)
        self.assertRaises(ValueError, encode, TurnMessage(software="x" * 128, username="u" * 1500))

    def test_streamDecoder(self) -> None:
        """
        Messages are cut out of a byte stream however it is split, and a
        stream that is not STUN is refused as soon as its header shows it.
        """
        a = encode(TurnMessage(MessageClass.SUCCESS, ALLOCATE, lifetime=1))
        b = encode(TurnMessage(MessageClass.INDICATION, CONNECTION_ATTEMPT, connectionID=7))
        stream = a + b + b"raw"
        for cut in range(len(stream)):
            decoder = StreamDecoder()
            got = []
            for piece in (stream[:cut], stream[cut:]):
                decoder.feed(piece)
                while (m := decoder.next()) is not None:
                    got.append(m)
            self.assertEqual([m.method for m in got], [ALLOCATE, CONNECTION_ATTEMPT])
            self.assertEqual(decoder.buffer, b"raw")
        decoder = StreamDecoder()
        decoder.feed(b"GET / HTTP/1.1\r\n")
        self.assertRaises(InvalidStunMessage, decoder.next)
        decoder = StreamDecoder()
        decoder.feed(struct.pack("!HHI", 0x0101, MAX_MESSAGE, 0x2112A442))
        self.assertRaises(InvalidStunMessage, decoder.next)


def attrsWithout(m: TurnMessage) -> TurnMessage:
    """
    C{m} without the fields that only decoding fills.
    """
    import attrs

    return attrs.evolve(m, integrity=None, fingerprint=True, unknownRequired=())


class FuzzTests(SynchronousTestCase):
    """
    The decoders never fail other than with L{InvalidStunMessage}.
    """

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.tuples(st.sampled_from([0x0006, 0x0008, 0x000D, 0x0012, 0x0014, 0x0015, 0x0016, 0x0019,
                                              0x001C, 0x0020, 0x002A, 0x0009, 0x8022, 0x8028, 0x7F00]),
                              st.binary(max_size=40)), max_size=8),
           st.integers(0, 0x3FFF))
    def test_attributes(self, attributes: list[tuple[int, bytes]], kind: int) -> None:
        """
        Any sequence of TURN attributes with any values decodes or is
        refused as invalid.
        """
        body = b"".join(struct.pack("!HH", t, len(v)) + v + b"\0" * (-len(v) % 4) for t, v in attributes)
        data = struct.pack("!HHI", kind, len(body), 0x2112A442) + TID + body
        try:
            m = decode(data)
        except InvalidStunMessage:
            return
        m.verify(b"key")
        m.verifySha256(b"key")

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.binary(max_size=64), max_size=6))
    def test_stream(self, chunks: list[bytes]) -> None:
        """
        A client fed any bytes never raises and buffers at most one
        message.
        """
        client = TurnClient(Clock(), lambda data: None, "u", "p")
        for chunk in chunks:
            client.dataReceived(chunk)
        self.assertLessEqual(len(client._decoder.buffer), MAX_MESSAGE + 64)


# -- the client's state machine ------------------------------------------------------------------------


class FakeServer:
    """
    Scripted server side of one client: records requests, answers as told.
    """

    def __init__(self, clock: Clock, username: str = "alice", password: str = "secret") -> None:
        self.clock = clock
        self.sent: list[TurnMessage] = []
        self.client = TurnClient(clock, self.receive, username, password, timeout=5)
        self.key = longTermKey("alice", "beam.test", "secret")

    def receive(self, data: bytes) -> None:
        self.sent.append(decode(data))

    @property
    def last(self) -> TurnMessage:
        return self.sent[-1]

    def answer(self, cls: MessageClass = MessageClass.SUCCESS, key: Optional[bytes] = None, **fields: Any) -> None:
        """
        Answer the last request.
        """
        m = TurnMessage(cls, self.last.method, self.last.transactionID, **fields)
        self.client.dataReceived(encode(m, key))

    def challenge(self, nonce: bytes = b"n1", code: int = 401) -> None:
        self.answer(MessageClass.ERROR, errorCode=ErrorCode(code, "Unauthorized"), realm="beam.test", nonce=nonce)

    def allocate(self, lifetime: int = 600) -> Deferred[Any]:
        """
        Run ALLOCATE (through the challenge, the first time) to success.
        """
        d = self.client.allocate()
        if self.client.key is None:
            self.challenge()
        self.answer(key=self.key, xorRelayedAddress=("203.0.113.9", 50000), xorMappedAddress=("198.51.100.2", 4000),
                    lifetime=lifetime)
        return d


class ClientTests(SynchronousTestCase):
    """
    L{TurnClient} against a scripted server on a L{Clock}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.server = FakeServer(self.clock)
        self.client = self.server.client
        self.lost: list[TurnAllocationLost] = []
        self.client.onAllocationLost = self.lost.append

    def test_allocateChallenge(self) -> None:
        """
        The first ALLOCATE asks for TCP without credentials; after the
        401 it is sent again with USERNAME, REALM, NONCE and a
        MESSAGE-INTEGRITY made with MD5(alice:beam.test:secret).
        """
        d = self.server.allocate()
        first, second = self.server.sent
        self.assertEqual((first.method, first.requestedTransport, first.username, first.integrity),
                         (ALLOCATE, TCP, None, None))
        self.assertEqual((second.username, second.realm, second.nonce), ("alice", "beam.test", b"n1"))
        self.assertTrue(second.verify(self.server.key))
        allocation = self.successResultOf(d)
        self.assertEqual((allocation.relayed, allocation.mapped, allocation.lifetime),
                         (("203.0.113.9", 50000), ("198.51.100.2", 4000), 600))

    def test_forgedResponseDropped(self) -> None:
        """
        A success response to an authenticated request without our
        integrity is ignored; the request then times out.
        """
        d = self.client.allocate()
        self.server.challenge()
        self.server.answer(xorRelayedAddress=("203.0.113.66", 1), lifetime=600)
        self.server.answer(key=b"not the key", xorRelayedAddress=("203.0.113.66", 1), lifetime=600)
        self.assertNoResult(d)
        self.clock.advance(5)
        self.failureResultOf(d, TurnTimeout)

    def test_wrongPassword(self) -> None:
        """
        A second 401 with the same realm and nonce means the credentials
        are wrong: L{TurnAuthError}, saying so.
        """
        d = self.client.allocate()
        self.server.challenge()
        self.server.challenge()
        f = self.failureResultOf(d, TurnAuthError)
        self.assertIn("wrong username or password", str(f.value))

    def test_staleNonce(self) -> None:
        """
        438 (Stale Nonce) brings a new nonce; the request is sent again
        with it, and later requests use it.
        """
        self.server.allocate()
        d = self.client.refresh()
        self.server.answer(MessageClass.ERROR, errorCode=ErrorCode(438, "Stale Nonce"), realm="beam.test", nonce=b"n2")
        self.assertEqual(self.server.last.nonce, b"n2")
        self.server.answer(key=self.server.key, lifetime=300)
        self.assertEqual(self.successResultOf(d), 300)

    def test_staleNonceForever(self) -> None:
        """
        A server that answers 438 to every try makes the request fail
        after a few, instead of looping.
        """
        self.server.allocate()
        d = self.client.refresh()
        for i in range(5):
            if d.called:
                break
            self.server.answer(MessageClass.ERROR, errorCode=ErrorCode(438, "Stale Nonce"), realm="beam.test",
                               nonce=b"n%d" % i)
        self.failureResultOf(d, TurnErrorResponse)

    def test_refreshTiming(self) -> None:
        """
        A 600 s allocation is refreshed after 540 s; each success
        reschedules from the lifetime it grants.
        """
        self.server.allocate(600)
        count = len(self.server.sent)
        self.clock.advance(539)
        self.assertEqual(len(self.server.sent), count)
        self.clock.advance(1)
        self.assertEqual(self.server.last.method, REFRESH)
        self.server.answer(key=self.server.key, lifetime=100)
        self.assertEqual(refreshDelay(100), 50)
        self.clock.advance(50)
        self.assertEqual(self.server.last.method, REFRESH)
        self.assertEqual(len(self.server.sent), count + 2)
        self.assertEqual(self.lost, [])

    def test_expiry(self) -> None:
        """
        When refreshes go unanswered the client retries, and once the
        lifetime is over the allocation is lost.
        """
        self.server.allocate(120)
        self.clock.advance(60)
        self.assertEqual(self.server.last.method, REFRESH)
        self.clock.pump([5] * 12)
        self.assertGreater(sum(m.method == REFRESH for m in self.server.sent), 1)
        self.assertEqual(len(self.lost), 1)
        self.assertIn("expired", str(self.lost[0]))
        self.assertIsNone(self.client.allocation)

    def test_allocationMismatch(self) -> None:
        """
        437 to ALLOCATE fails it with the reason; 437 to REFRESH (the
        server forgot us) loses the allocation.
        """
        d = self.client.allocate()
        self.server.challenge()
        self.server.answer(MessageClass.ERROR, key=self.server.key, errorCode=ErrorCode(437, "Allocation Mismatch"))
        f = self.failureResultOf(d, TurnErrorResponse)
        self.assertEqual(f.value.code, 437)
        self.assertIn("allocation mismatch", str(f.value))
        self.server.allocate()
        refreshing = self.client.refresh()
        self.server.answer(MessageClass.ERROR, key=self.server.key, errorCode=ErrorCode(437, "Allocation Mismatch"))
        self.failureResultOf(refreshing, TurnErrorResponse)
        self.assertEqual(len(self.lost), 1)

    def test_noTcpRelay(self) -> None:
        """
        442 says the server does not relay TCP, naming coturn's option.
        """
        d = self.client.allocate()
        self.server.challenge()
        self.server.answer(MessageClass.ERROR, key=self.server.key, errorCode=ErrorCode(442, "Unsupported Transport"))
        self.assertIn("no-tcp-relay", str(self.failureResultOf(d, TurnErrorResponse).value))

    def test_permissions(self) -> None:
        """
        L{TurnClient.permit} installs new IPs at once (one
        XOR-PEER-ADDRESS each), refreshes all every 240 s, and keeps at
        most L{MAX_PERMISSIONS}.
        """
        self.server.allocate()
        d = self.client.permit(["198.51.100.7", "198.51.100.8"])
        self.assertEqual(self.server.last.method, CREATE_PERMISSION)
        self.assertEqual(self.server.last.xorPeerAddresses, (("198.51.100.7", 0), ("198.51.100.8", 0)))
        self.server.answer(key=self.server.key)
        self.successResultOf(d)
        self.successResultOf(self.client.permit(["198.51.100.7"]))
        self.assertEqual(self.server.last.method, CREATE_PERMISSION)
        count = len(self.server.sent)
        self.clock.advance(PERMISSION_REFRESH)
        self.assertEqual(len(self.server.sent), count + 1)
        self.server.answer(key=self.server.key)
        self.client.permit(f"10.0.{i // 256}.{i % 256}" for i in range(MAX_PERMISSIONS + 10))
        self.assertEqual(len(self.client.permitted), MAX_PERMISSIONS)
        self.assertNotIn("198.51.100.7", self.client.permitted)

    def test_connectionAttemptAndBind(self) -> None:
        """
        A CONNECTION-ATTEMPT indication is reported with its ID and peer;
        CONNECTION-BIND on a data connection (borrowing the control
        connection's nonce) hands over the bytes after its response.
        """
        self.server.allocate()
        attempts: list[tuple[int, Any]] = []
        self.client.onConnectionAttempt = lambda cid, peer: attempts.append((cid, peer))
        indication = TurnMessage(MessageClass.INDICATION, CONNECTION_ATTEMPT, connectionID=42,
                                 xorPeerAddresses=(("198.51.100.7", 5555),))
        self.client.dataReceived(encode(indication))
        self.assertEqual(attempts, [(42, ("198.51.100.7", 5555))])
        data = FakeServer(self.clock)
        data.client.shareCredentials(self.client)
        d = data.client.connectionBind(42)
        self.assertEqual((data.last.method, data.last.connectionID, data.last.nonce), (CONNECTION_BIND, 42, b"n1"))
        response = TurnMessage(MessageClass.SUCCESS, CONNECTION_BIND, data.last.transactionID)
        data.client.dataReceived(encode(response, data.key) + b"/multistream/1.0.0\n")
        self.assertEqual(self.successResultOf(d), b"/multistream/1.0.0\n")
        self.assertTrue(data.client.handedOver)

    def test_connect(self) -> None:
        """
        CONNECT names the peer and fires with the CONNECTION-ID; 447 says
        the server could not reach the peer.
        """
        self.server.allocate()
        d = self.client.connect(("198.51.100.7", 4001))
        self.assertEqual((self.server.last.method, self.server.last.xorPeerAddresses),
                         (CONNECT, (("198.51.100.7", 4001),)))
        self.server.answer(key=self.server.key, connectionID=9)
        self.assertEqual(self.successResultOf(d), 9)
        d = self.client.connect(("198.51.100.7", 4002))
        self.server.answer(MessageClass.ERROR, key=self.server.key, errorCode=ErrorCode(447, "Connection Timeout"))
        self.assertIn("could not connect", str(self.failureResultOf(d, TurnErrorResponse).value))

    def test_connectionLost(self) -> None:
        """
        Losing the control connection fails pending requests and loses
        the allocation; garbage on the stream counts as losing it.
        """
        self.server.allocate()
        d = self.client.refresh()
        self.client.dataReceived(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        self.failureResultOf(d)
        self.assertEqual(len(self.lost), 1)
        self.assertTrue(self.client.closed)

    def test_release(self) -> None:
        """
        L{TurnClient.release} sends REFRESH with LIFETIME 0 and stops the
        refresh timer.
        """
        self.server.allocate()
        d = self.client.release()
        self.assertEqual((self.server.last.method, self.server.last.lifetime), (REFRESH, 0))
        self.server.answer(key=self.server.key, lifetime=0)
        self.successResultOf(d)
        self.assertEqual(self.clock.getDelayedCalls(), [])


# -- coturn on loopback ------------------------------------------------------------------------------------------


def freeTCPPort() -> int:
    """
    A TCP port free on 127.0.0.1 right now.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Echo(Protocol):
    """
    Collects what comes back on an echo stream.
    """

    def __init__(self) -> None:
        self.data = b""
        self.got: Deferred[bytes] = Deferred()
        self.want = 0

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if len(self.data) >= self.want and not self.got.called:
            self.got.callback(self.data)

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        if not self.got.called:
            self.got.errback(reason)


class CoturnTests(TestCase):
    """
    Beam nodes through coturn (Debian's C{coturn}) with a TCP relay on
    loopback.
    """

    timeout = 40

    def startCoturn(self) -> int:
        """
        Run turnserver on 127.0.0.1 with user alice/secret, TCP relays on
        127.0.0.1 (loopback peers allowed); kill it by PID at cleanup.
        """
        from beam.testing.sysdeps import ensureCommands

        ensureCommands({"turnserver": "coturn"})
        port = freeTCPPort()
        work = tempfile.mkdtemp(prefix="beam-coturn-")
        config = os.path.join(work, "turnserver.conf")
        lines = [
            "listening-ip=127.0.0.1",
            "relay-ip=127.0.0.1",
            f"listening-port={port}",
            "min-port=40000",
            "max-port=60000",
            "lt-cred-mech",
            "user=alice:secret",
            "realm=beam.test",
            "allow-loopback-peers",
            "no-udp",
            "no-tls",
            "no-dtls",
            "no-cli",
            "simple-log",
            f"log-file={work}/turn.log",
            f"pidfile={work}/turn.pid",
            f"userdb={work}/turndb",
            "",
        ]
        with open(config, "w") as f:
            f.write("\n".join(lines))
        process = subprocess.Popen(
            ["turnserver", "-c", config, "--no-stdout-log"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=work,
        )

        def stop() -> None:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGTERM)
                try:
                    process.wait(5)
                except subprocess.TimeoutExpired:
                    os.kill(process.pid, signal.SIGKILL)
                    process.wait()
            import shutil

            shutil.rmtree(work, ignore_errors=True)

        self.addCleanup(stop)
        return port

    @inlineCallbacks
    def waitReady(self, port: int) -> Any:
        """
        Wait until coturn accepts TCP connections.
        """
        from twisted.internet import reactor

        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            yield deferLater(reactor, 0.05, lambda: None)
        raise AssertionError("coturn never listened")

    @inlineCallbacks
    def startNodes(self) -> Any:
        from twisted.internet import reactor

        from beam.identity.keys import Identity
        from beam.p2p.host.node import Node

        nodes = [Node(reactor, Identity.generate(), ["/ip4/127.0.0.1/tcp/0"]) for _ in range(2)]
        for n in nodes:
            yield n.startService()
            self.addCleanup(n.stopService)
        return nodes

    @inlineCallbacks
    def test_echoThroughTcpRelay(self) -> Any:
        """
        A allocates a TCP relay on coturn; B dials the relayed address
        with plain TCP; Noise, yamux and an echo stream work through it,
        and A sees an inbound, unlimited connection over the TURN
        transport.
        """
        from beam.p2p.nat.turntransport import TurnTransport
        from beam.p2p.protocols.echo import ECHO_PROTOCOL

        port = self.startCoturn()
        yield self.waitReady(port)
        a, b = yield self.startNodes()
        turn = TurnTransport(a, ("127.0.0.1", port), "alice", "secret")
        changes: list[Any] = []
        turn.addAddressObserver(lambda old, new: changes.append((old, new)))
        listener = yield turn.start()
        self.addCleanup(turn.stop)
        relayed = turn.relayedAddr()
        assert relayed is not None
        self.assertEqual(listener.addr, relayed)
        self.assertEqual(changes, [(None, relayed)])
        self.assertTrue(str(relayed).startswith("/ip4/127.0.0.1/tcp/"))
        yield turn.permit(["127.0.0.1"])
        conn = yield b.connect(relayed.withPeerID(a.peerID))
        self.assertFalse(conn.limited)
        echo = Echo()
        echo.want = 11
        proto = yield b.openStream(a.peerID, [ECHO_PROTOCOL], lambda: echo)
        proto.transport.write(b"over coturn")
        got = yield echo.got
        self.assertEqual(got, b"over coturn")
        inbound = [c for c in a.liveConnections() if c.remotePeer == b.peerID]
        self.assertEqual([(c.transport, c.direction) for c in inbound], [("turn", "inbound")])
        self.assertEqual(inbound[0].remoteAddr.tcpTarget()[0], "127.0.0.1")

    @inlineCallbacks
    def test_inboundHonoursPunchRole(self) -> Any:
        """
        A connection arriving through the allocation is built like one
        arriving at a listener (C{Node.inboundUpgrading}): while a hole
        punch expects B's source address (coturn reports B's address and
        its dial's source port, B's listen port) A answers as initiator,
        and B, dialling the relayed address as responder (its DCUtR role),
        completes the handshake; without that, both would wait as
        responders.  (A's connection then counts as outbound, its
        handshake role, as a punched one accepted by a listener does.)
        """
        from beam.p2p.holepunch.dcutr import HolePuncher
        from beam.p2p.nat.turntransport import TurnTransport

        port = self.startCoturn()
        yield self.waitReady(port)
        a, b = yield self.startNodes()
        turn = TurnTransport(a, ("127.0.0.1", port), "alice", "secret")
        yield turn.start()
        self.addCleanup(turn.stop)
        relayed = turn.relayedAddr()
        assert relayed is not None
        yield turn.permit(["127.0.0.1"])
        bport = b.listenAddrs[0].tcpTarget()[1]
        self.addCleanup(a.expectInboundAsInitiator("127.0.0.1", bport, b.peerID))
        puncher = HolePuncher(b)
        self.addCleanup(puncher.stop)
        conn = yield puncher.dialOne(a.peerID, relayed, asClient=False)
        self.assertEqual(conn.remotePeer, a.peerID)
        self.assertFalse(conn.limited)
        # As for a punched connection accepted by a listener, the
        # direction follows the role: A ran it as the initiator.
        ours = [c for c in a.liveConnections() if c.remotePeer == b.peerID]
        self.assertEqual([(c.transport, c.direction, c.limited) for c in ours], [("turn", "outbound", False)])

    @inlineCallbacks
    def test_noPermission(self) -> Any:
        """
        Without a permission for the peer's IP (and with autoPermit off)
        coturn does not let the peer in (RFC 6062): the dial fails.
        """
        from beam.errors import DialError
        from beam.p2p.nat.turntransport import TurnTransport

        port = self.startCoturn()
        yield self.waitReady(port)
        a, b = yield self.startNodes()
        b.dialTimeout = 3
        turn = TurnTransport(a, ("127.0.0.1", port), "alice", "secret", autoPermit=False)
        yield turn.start()
        self.addCleanup(turn.stop)
        relayed = turn.relayedAddr()
        assert relayed is not None
        d = b.connect(relayed.withPeerID(a.peerID))
        yield self.assertFailure(d, DialError)  # closed or reset by coturn
        self.assertEqual(a.liveConnections(), [])

    @inlineCallbacks
    def test_wrongPassword(self) -> Any:
        """
        Wrong credentials fail C{start} with one line that says so.
        """
        from beam.errors import DialError
        from beam.p2p.nat.turntransport import TurnTransport

        port = self.startCoturn()
        yield self.waitReady(port)
        (a, _) = yield self.startNodes()
        turn = TurnTransport(a, ("127.0.0.1", port), "alice", "wrong")
        e = yield self.assertFailure(turn.start(), DialError)
        self.assertIn("wrong username or password", str(e))
        yield turn.stop()

    @inlineCallbacks
    def test_dialThroughConnect(self) -> Any:
        """
        L{TurnTransport.dial} opens a TCP connection from the relayed
        address (CONNECT, then CONNECTION-BIND): a plain TCP echo server
        sees coturn's relay and echoes through it.
        """
        from twisted.internet import reactor
        from twisted.internet.protocol import Factory

        from beam.identity.multiaddr import Multiaddr
        from beam.p2p.nat.turntransport import TurnTransport

        class EchoServer(Protocol):
            def dataReceived(self, data: bytes) -> None:
                assert self.transport is not None
                self.transport.write(data)

        port = self.startCoturn()
        yield self.waitReady(port)
        (a, _) = yield self.startNodes()
        serverFactory: Any = Factory.forProtocol(EchoServer)
        server = reactor.listenTCP(0, serverFactory, interface="127.0.0.1")
        self.addCleanup(server.stopListening)
        turn = TurnTransport(a, ("127.0.0.1", port), "alice", "secret")
        yield turn.start()
        self.addCleanup(turn.stop)
        echo = Echo()
        echo.want = 4
        target = Multiaddr.fromString(f"/ip4/127.0.0.1/tcp/{server.getHost().port}")  # type: ignore[attr-defined]
        proto = yield turn.dial(target, Factory.forProtocol(lambda: echo), 10)
        self.assertIs(proto, echo)
        assert echo.transport is not None
        self.assertEqual(turn.multiaddrOf(echo.transport.getPeer()), target)
        echo.transport.write(b"ping")
        got = yield echo.got
        self.assertEqual(got, b"ping")
        echo.transport.loseConnection()

    @inlineCallbacks
    def test_reallocateAfterLoss(self) -> Any:
        """
        When the control connection drops, the allocation is reported
        lost and a new one is made (after L{RETRY_DELAYS}[0] seconds);
        observers see both changes.
        """
        from beam.p2p.nat.turntransport import TurnTransport

        port = self.startCoturn()
        yield self.waitReady(port)
        (a, _) = yield self.startNodes()
        turn = TurnTransport(a, ("127.0.0.1", port), "alice", "secret")
        back: Deferred[Any] = Deferred()
        changes: list[Any] = []

        def observe(old: Any, new: Any) -> None:
            changes.append((old, new))
            if old is None and len(changes) == 3 and not back.called:
                back.callback(new)

        turn.addAddressObserver(observe)
        yield turn.start()
        self.addCleanup(turn.stop)
        first = turn.relayedAddr()
        assert turn._controlProto is not None and turn._controlProto.transport is not None
        turn._controlProto.transport.abortConnection()  # type: ignore[attr-defined]
        second = yield back
        self.assertEqual(changes, [(None, first), (first, None), (None, second)])
        self.assertIsNotNone(turn.allocation)
