"""
Tests for L{beam.p2p.security.noise} and L{beam.p2p.security._noise_state}.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from typing import Any, List, Optional, Sequence, Tuple

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IConsumer, IPushProducer, ITransport
from twisted.internet.protocol import Protocol
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from beam.errors import (
    DecryptionFailed,
    HandshakeFailed,
    PeerIDMismatch,
    SecurityError,
)
from beam.identity.keys import Identity
from beam.proto import noise_pb2
from beam.p2p.security._noise_state import (
    MAX_NONCE,
    PROTOCOL_NAME,
    CipherState,
    HandshakeXX,
    SymmetricState,
    hkdf2,
    nonceBytes,
    publicBytes,
)
from beam.p2p.security.interfaces import ISecureChannel, ISecureTransport, SecureInfo
from beam.p2p.security.noise import (
    MAX_MESSAGE,
    MAX_PLAINTEXT,
    FrameReader,
    NoiseChannel,
    NoiseSession,
    NoiseTransport,
    decodePayload,
    encodePayload,
    selectMuxer,
)
from beam.testing import MemoryTransport, Pump

ALICE = Identity.fromSeed(b"\x01" * 32)
BOB = Identity.fromSeed(b"\x02" * 32)
CAROL = Identity.fromSeed(b"\x03" * 32)

# The Noise_XX_25519_ChaChaPoly_SHA256 vector of the public-domain cacophony
# test suite (as shipped in snow's tests/vectors/cacophony.txt).
CACOPHONY_XX = {
    "prologue": "4a6f686e2047616c74",
    "init_static": "e61ef9919cde45dd5f82166404bd08e38bceb5dfdfded0a34c8df7ed542214d1",
    "init_ephemeral": "893e28b9dc6ca8d611ab664754b8ceb7bac5117349a4439a6b0569da977c464a",
    "resp_static": "4a3acbfdb163dec651dfa3194dece676d437029c62a408b4c5ea9114246e4893",
    "resp_ephemeral": "bbdb4cdbd309f1a1f2e1456967fe288cadd6f712d65dc7b7793d5e63da6b375b",
    "handshake_hash": "c8e5f64e846193be2a834104c2a009868d6c9f3bd3c186299888b488b2f1f58e",
    "messages": [
        ("4c756477696720766f6e204d69736573",
         "ca35def5ae56cec33dc2036731ab14896bc4c75dbb07a61f879f8e3afa4c7944"
         "4c756477696720766f6e204d69736573"),
        ("4d757272617920526f746862617264",
         "95ebc60d2b1fa672c1f46a8aa265ef51bfe38e7ccb39ec5be34069f14480884381cbad1f"
         "276e038c48378ffce2b65285e08d6b68aaa3629a5a8639392490e5b9bd5269c2f1e4f4"
         "88ed8831161f19b7815528f8982ffe09be9b5c412f8a0db50f8814c7194e83f23dbd8d"
         "162c9326ad"),
        ("462e20412e20486179656b",
         "c7195ffacac1307ff99046f219750fc47693e23c3cb08b89c2af808b444850a80ae475"
         "b9df0f169ae80a89be0865b57f58c9fea0d4ec82a286427402f113e4b6ae769a1d9594"
         "1d49b25030"),
        ("4361726c204d656e676572", "96763ed773f8e47bb3712f0e29b3060ffc956ffc146cee53d5e1df"),
        ("4a65616e2d426170746973746520536179",
         "3e40f15f6f3a46ae446b253bf8b1d9ffb6ed9b174d272328ff91a7e2e5c79c07f5"),
        ("457567656e2042f6686d20766f6e2042617765726b",
         "eb3f3515110702e047a6c9da4478b6ead94873c11c0f2d710ddb3f09fce024b3a58502ae3f"),
    ],
}


def _x(hexKey: str) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(bytes.fromhex(hexKey))


def _frames(wire: bytes) -> List[bytes]:
    """
    Split captured wire bytes into frame bodies (the test's own framer).
    """
    out, off = [], 0
    while off < len(wire):
        (size,) = struct.unpack_from(">H", wire, off)
        out.append(wire[off + 2:off + 2 + size])
        off += 2 + size
    assert off == len(wire), "wire bytes end inside a frame"
    return out


class Recorder(Protocol):
    """
    An upper protocol that records what it is given.
    """

    def __init__(self, info: SecureInfo, writeOnConnect: bytes = b"") -> None:
        self.info = info
        self.received: List[bytes] = []
        self.lost: List[Failure] = []
        self.writeOnConnect = writeOnConnect

    def connectionMade(self) -> None:
        if self.writeOnConnect:
            self.transport.write(self.writeOnConnect)

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self.lost.append(reason)

    def data(self) -> bytes:
        return b"".join(self.received)


class Side:
    """
    One channel and what it produced, for assertions.
    """

    def __init__(self, channel: NoiseChannel) -> None:
        self.channel = channel
        self.uppers: List[Recorder] = []
        self.results: List[Any] = []
        channel.handshakeDone.addBoth(self.results.append)

    @property
    def upper(self) -> Recorder:
        assert len(self.uppers) == 1
        return self.uppers[0]

    def failure(self) -> Failure:
        assert len(self.results) == 1 and isinstance(self.results[0], Failure), self.results
        return self.results[0]

    def info(self) -> SecureInfo:
        assert len(self.results) == 1 and isinstance(self.results[0], SecureInfo), self.results
        return self.results[0]


def makeSide(
    transport: NoiseTransport,
    isInitiator: bool,
    expectedPeer: Any = None,
    writeOnConnect: bytes = b"",
) -> Side:
    holder: List[Side] = []

    def factory(info: SecureInfo) -> Recorder:
        upper = Recorder(info, writeOnConnect)
        holder[0].uppers.append(upper)
        return upper

    side = Side(transport.wrap(isInitiator, expectedPeer, factory))
    holder.append(side)
    return side


def fixedSide(
    isInitiator: bool,
    identity: Identity,
    seed: int,
    muxers: Sequence[str] = (),
    expectedPeer: Any = None,
) -> Side:
    """
    A channel whose static and ephemeral keys are fixed, so that its
    handshake messages are the same on every run.
    """
    static = X25519PrivateKey.from_private_bytes(bytes([seed]) * 32)
    ephemeral = X25519PrivateKey.from_private_bytes(bytes([seed + 100]) * 32)
    payload = encodePayload(identity, publicBytes(static), muxers)
    hs = HandshakeXX(isInitiator, static, ephemeralKey=ephemeral)
    session = NoiseSession(isInitiator, static, payload, muxers, expectedPeer, handshake=hs)
    holder: List[Side] = []

    def factory(info: SecureInfo) -> Recorder:
        upper = Recorder(info)
        holder[0].uppers.append(upper)
        return upper

    side = Side(NoiseChannel(session, factory))
    holder.append(side)
    return side


def connectedPair(
    clientMuxers: Sequence[str] = (),
    serverMuxers: Sequence[str] = (),
    expectedPeer: Any = BOB.peerID,
    chunk: Optional[int] = None,
) -> Tuple[Side, Side, Pump]:
    client = makeSide(NoiseTransport(ALICE, clientMuxers), True, expectedPeer)
    server = makeSide(NoiseTransport(BOB, serverMuxers), False)
    pump = Pump(client.channel, server.channel)
    server.channel.makeConnection(pump.serverTransport)
    client.channel.makeConnection(pump.clientTransport)
    pump.flush(chunk=chunk)
    return client, server, pump


class NoisePrimitiveTests(SynchronousTestCase):
    """
    Known-answer tests of the Noise state objects.
    """

    def test_hkdfMatchesNoiseDefinition(self) -> None:
        """
        L{hkdf2} computes Noise's HKDF with two outputs exactly as the Noise
        specification defines it with HMAC-SHA256.
        """
        ck, ikm = bytes(range(32)), b"input key material" * 3
        temp = hmac.new(ck, ikm, hashlib.sha256).digest()
        out1 = hmac.new(temp, b"\x01", hashlib.sha256).digest()
        out2 = hmac.new(temp, out1 + b"\x02", hashlib.sha256).digest()
        self.assertEqual(hkdf2(ck, ikm), (out1, out2))
        temp = hmac.new(ck, b"", hashlib.sha256).digest()
        out1 = hmac.new(temp, b"\x01", hashlib.sha256).digest()
        self.assertEqual(hkdf2(ck, b"")[0], out1)

    def test_initialState(self) -> None:
        """
        The 32-byte protocol name is used as the initial handshake hash and
        chaining key without hashing, and an empty prologue is still mixed
        into the hash.
        """
        self.assertEqual(len(PROTOCOL_NAME), 32)
        sym = SymmetricState()
        self.assertEqual(sym.h, PROTOCOL_NAME)
        self.assertEqual(sym.ck, PROTOCOL_NAME)
        hs = HandshakeXX(True, X25519PrivateKey.generate())
        self.assertEqual(hs.handshakeHash, hashlib.sha256(PROTOCOL_NAME).digest())

    def test_longProtocolNameIsHashed(self) -> None:
        """
        A protocol name longer than the hash is hashed, per Noise 5.2.
        """
        name = b"Noise_XXpsk3_25519_ChaChaPoly_SHA256"
        self.assertEqual(SymmetricState(name).h, hashlib.sha256(name).digest())

    def test_nonceLayout(self) -> None:
        """
        Transport nonces are four zero bytes then the 64-bit little-endian
        counter, which starts at zero and counts messages.
        """
        self.assertEqual(nonceBytes(1), b"\x00" * 4 + b"\x01" + b"\x00" * 7)
        self.assertEqual(nonceBytes(2**64 - 2), b"\x00" * 4 + b"\xfe" + b"\xff" * 7)
        key = bytes(range(32))
        cipher = CipherState(key)
        aead = ChaCha20Poly1305(key)
        for n in range(3):
            expected = aead.encrypt(b"\x00" * 4 + n.to_bytes(8, "little"), b"msg", b"ad")
            self.assertEqual(cipher.encryptWithAd(b"ad", b"msg"), expected)
        self.assertEqual(cipher.n, 3)

    def test_noKeyPassesThrough(self) -> None:
        """
        A cipher without a key returns the plaintext, as before the first DH.
        """
        self.assertEqual(CipherState().encryptWithAd(b"h", b"clear"), b"clear")
        self.assertEqual(CipherState().decryptWithAd(b"h", b"clear"), b"clear")

    def test_nonceExhaustion(self) -> None:
        """
        The nonce 2**64-1 is reserved: the last usable one is 2**64-2, after
        which both sealing and opening refuse.
        """
        key = bytes(32)
        sender, receiver = CipherState(key), CipherState(key)
        sender.n = receiver.n = MAX_NONCE - 1
        ct = sender.encryptWithAd(None, b"last")
        self.assertEqual(receiver.decryptWithAd(None, ct), b"last")
        self.assertRaises(SecurityError, sender.encryptWithAd, None, b"more")
        self.assertRaises(SecurityError, receiver.decryptWithAd, None, ct)

    def test_failedDecryptKeepsNonce(self) -> None:
        """
        A message that fails authentication raises L{DecryptionFailed} and does
        not advance the nonce.
        """
        sender, receiver = CipherState(bytes(32)), CipherState(bytes(32))
        ct = sender.encryptWithAd(None, b"data")
        tampered = bytes([ct[0] ^ 1]) + ct[1:]
        self.assertRaises(DecryptionFailed, receiver.decryptWithAd, None, tampered)
        self.assertEqual(receiver.n, 0)
        self.assertEqual(receiver.decryptWithAd(None, ct), b"data")

    def test_cacophonyVector(self) -> None:
        """
        The XX handshake and transport messages reproduce the cacophony test
        vector byte for byte, including the final handshake hash.
        """
        v = CACOPHONY_XX
        prologue = bytes.fromhex(v["prologue"])
        init = HandshakeXX(True, _x(v["init_static"]), prologue, _x(v["init_ephemeral"]))
        resp = HandshakeXX(False, _x(v["resp_static"]), prologue, _x(v["resp_ephemeral"]))
        messages = [(bytes.fromhex(p), bytes.fromhex(c)) for p, c in v["messages"]]
        for i, (payload, ciphertext) in enumerate(messages[:3]):
            writer, reader = (init, resp) if i % 2 == 0 else (resp, init)
            self.assertEqual(writer.writeMessage(payload), ciphertext)
            self.assertEqual(reader.readMessage(ciphertext), payload)
        self.assertTrue(init.complete and resp.complete)
        self.assertEqual(init.handshakeHash.hex(), v["handshake_hash"])
        self.assertEqual(resp.handshakeHash.hex(), v["handshake_hash"])
        self.assertEqual(init.remoteStatic, publicBytes(_x(v["resp_static"])))
        self.assertEqual(resp.remoteStatic, publicBytes(_x(v["init_static"])))
        (iSend, iRecv), (rSend, rRecv) = init.split(), resp.split()
        for i, (payload, ciphertext) in enumerate(messages[3:], 3):
            send, recv = (iSend, rRecv) if i % 2 == 0 else (rSend, iRecv)
            self.assertEqual(send.encryptWithAd(None, payload), ciphertext)
            self.assertEqual(recv.decryptWithAd(None, ciphertext), payload)

    def test_outOfTurn(self) -> None:
        """
        Writing or reading a handshake message out of turn is refused.
        """
        hs = HandshakeXX(False, X25519PrivateKey.generate())
        self.assertRaises(HandshakeFailed, hs.writeMessage, b"")
        self.assertRaises(HandshakeFailed, hs.split)
        init = HandshakeXX(True, X25519PrivateKey.generate())
        self.assertRaises(HandshakeFailed, init.readMessage, b"\x00" * 32)


class FrameReaderTests(SynchronousTestCase):
    """
    Tests for L{FrameReader}.
    """

    def _drain(self, reader: FrameReader) -> List[bytes]:
        out = []
        while True:
            view = reader.nextFrame()
            if view is None:
                return out
            out.append(bytes(view))
            view.release()

    def test_splitInput(self) -> None:
        """
        Frames split at every possible byte boundary come out whole and in
        order, and nothing is returned for a partial frame.
        """
        bodies = [b"", b"a", b"x" * 300, b"y" * MAX_MESSAGE]
        wire = b"".join(struct.pack(">H", len(b)) + b for b in bodies)
        for step in (1, 2, 7, 301, len(wire)):
            reader = FrameReader()
            got: List[bytes] = []
            for i in range(0, len(wire), step):
                reader.feed(wire[i:i + step])
                got.extend(self._drain(reader))
            self.assertEqual(got, bodies)
            self.assertEqual(reader.buffered(), 0)

    def test_consumedBytesAreDropped(self) -> None:
        """
        After draining, only the partial frame stays buffered, so memory is
        bounded by one frame plus the last input.
        """
        reader = FrameReader()
        reader.feed((struct.pack(">H", 1000) + b"z" * 1000) * 50 + b"\x00\x10abc")
        self.assertEqual(len(self._drain(reader)), 50)
        self.assertEqual(reader.buffered(), 5)
        self.assertEqual(len(reader._buf), 5)


class PayloadTests(SynchronousTestCase):
    """
    Tests for the libp2p handshake payload.
    """

    static = publicBytes(X25519PrivateKey.from_private_bytes(b"\x05" * 32))

    def test_roundTrip(self) -> None:
        """
        An encoded payload decodes to the signer's key, peer ID and muxers.
        """
        encoded = encodePayload(ALICE, self.static, ["/yamux/1.0.0", "/mplex/6.7.0"])
        remote = decodePayload(encoded, self.static)
        self.assertEqual(remote.publicKey, ALICE.publicKey)
        self.assertEqual(remote.peerID, ALICE.peerID)
        self.assertEqual(remote.muxers, ("/yamux/1.0.0", "/mplex/6.7.0"))

    def test_wireLayout(self) -> None:
        """
        The payload is identity_key (field 1), identity_sig (field 2), then
        extensions (field 4) whose stream_muxers are field 2, and the
        signature covers C{noise-libp2p-static-key:} plus the static key.
        """
        encoded = encodePayload(ALICE, self.static, ["/yamux/1.0.0"])
        key = ALICE.publicKey.toProtobuf()
        sig = ALICE.sign(b"noise-libp2p-static-key:" + self.static)
        ext = b"\x12\x0c/yamux/1.0.0"
        expected = (
            b"\x0a" + bytes([len(key)]) + key
            + b"\x12" + bytes([len(sig)]) + sig
            + b"\x22" + bytes([len(ext)]) + ext
        )
        self.assertEqual(encoded, expected)
        self.assertNotIn(b"\x22", encodePayload(ALICE, self.static)[-2:])
        self.assertFalse(
            noise_pb2.NoiseHandshakePayload.FromString(
                encodePayload(ALICE, self.static)
            ).HasField("extensions")
        )

    def test_unknownFieldsIgnored(self) -> None:
        """
        Unknown fields and extensions (webtransport cert hashes, fields from
        the future) do not disturb decoding.
        """
        encoded = encodePayload(ALICE, self.static, ["/yamux/1.0.0"])
        msg = noise_pb2.NoiseHandshakePayload.FromString(encoded)
        msg.extensions.webtransport_certhashes.append(b"\x12\x20" + b"h" * 32)
        extra = msg.SerializeToString() + b"\x2a\x03abc" + b"\xc0\x3e\x01"
        remote = decodePayload(extra, self.static)
        self.assertEqual(remote.muxers, ("/yamux/1.0.0",))
        self.assertEqual(remote.peerID, ALICE.peerID)

    def test_badSignature(self) -> None:
        """
        A signature over another static key, or a corrupted one, is refused.
        """
        other = publicBytes(X25519PrivateKey.from_private_bytes(b"\x06" * 32))
        self.assertRaises(HandshakeFailed, decodePayload, encodePayload(ALICE, other), self.static)
        msg = noise_pb2.NoiseHandshakePayload.FromString(encodePayload(ALICE, self.static))
        msg.identity_sig = bytes([msg.identity_sig[0] ^ 1]) + msg.identity_sig[1:]
        self.assertRaises(HandshakeFailed, decodePayload, msg.SerializeToString(), self.static)
        msg.identity_key = BOB.publicKey.toProtobuf()
        msg.identity_sig = ALICE.sign(b"noise-libp2p-static-key:" + self.static)
        self.assertRaises(HandshakeFailed, decodePayload, msg.SerializeToString(), self.static)

    def test_missingOrMalformed(self) -> None:
        """
        A payload without key or signature, with a malformed key, or that is
        not protobuf at all is refused with L{HandshakeFailed}.
        """
        full = noise_pb2.NoiseHandshakePayload.FromString(encodePayload(ALICE, self.static))
        for field in ("identity_key", "identity_sig"):
            msg = noise_pb2.NoiseHandshakePayload()
            msg.CopyFrom(full)
            msg.ClearField(field)
            self.assertRaises(HandshakeFailed, decodePayload, msg.SerializeToString(), self.static)
        msg.CopyFrom(full)
        msg.identity_key = b"\x08\x01\x12\x03abc"
        self.assertRaises(HandshakeFailed, decodePayload, msg.SerializeToString(), self.static)
        for garbage in (b"", b"\xff\xff\xff", b"\x0a\x50short"):
            self.assertRaises(HandshakeFailed, decodePayload, garbage, self.static)

    def test_selectMuxer(self) -> None:
        """
        The early muxer is the initiator's first choice that the responder
        supports; none when either side lists nothing or they share nothing.
        """
        self.assertEqual(
            selectMuxer(["/yamux/1.0.0", "/mplex/6.7.0"], ["/mplex/6.7.0", "/yamux/1.0.0"]),
            "/yamux/1.0.0",
        )
        self.assertEqual(selectMuxer(["/a", "/b"], ["/b"]), "/b")
        self.assertIsNone(selectMuxer(["/a"], ["/b"]))
        self.assertIsNone(selectMuxer([], ["/b"]))
        self.assertIsNone(selectMuxer(["/a"], []))


class NoiseChannelTests(SynchronousTestCase):
    """
    Tests of the Twisted channel, over L{Pump}.
    """

    def test_interfaces(self) -> None:
        """
        L{NoiseTransport} provides L{ISecureTransport} with protocol ID
        C{/noise} and makes L{ISecureChannel}s.
        """
        transport = NoiseTransport(ALICE)
        self.assertTrue(verifyObject(ISecureTransport, transport))
        self.assertEqual(transport.protocolId, "/noise")
        channel = transport.wrap(True, None, Recorder)
        self.assertTrue(ISecureChannel.providedBy(channel))

    def test_handshake(self) -> None:
        """
        Both sides learn each other's authenticated peer ID and key; each
        upper protocol is built from the L{SecureInfo} and connected to an
        encrypted transport carrying C{remotePeer} and C{remotePublicKey}.
        """
        client, server, pump = connectedPair()
        cInfo, sInfo = client.info(), server.info()
        self.assertEqual(cInfo.remotePeer, BOB.peerID)
        self.assertEqual(cInfo.remotePublicKey, BOB.publicKey)
        self.assertEqual(sInfo.remotePeer, ALICE.peerID)
        self.assertEqual(sInfo.remotePublicKey, ALICE.publicKey)
        self.assertEqual((cInfo.protocolId, sInfo.protocolId), ("/noise", "/noise"))
        self.assertIsNone(cInfo.earlyMuxer)
        for side, peer in ((client, BOB), (server, ALICE)):
            upper = side.upper
            self.assertIs(upper.info, side.info())
            self.assertEqual(upper.transport.remotePeer, peer.peerID)
            self.assertEqual(upper.transport.remotePublicKey, peer.publicKey)
            self.assertTrue(verifyObject(ITransport, upper.transport))
            self.assertTrue(verifyObject(IConsumer, upper.transport))
            self.assertTrue(verifyObject(IPushProducer, upper.transport))
            self.assertFalse(pump.clientTransport.aborted or pump.serverTransport.aborted)
        self.assertEqual(
            client.upper.transport.getHandshakeHash(), server.upper.transport.getHandshakeHash()
        )
        self.assertEqual(upper.transport.getPeer(), pump.serverTransport.getPeer())

    def test_handshakeMessageSizes(self) -> None:
        """
        The wire carries three length-prefixed messages: a bare 32-byte
        ephemeral key, then the responder's and the initiator's payloads.
        """
        client = makeSide(NoiseTransport(ALICE), True)
        server = makeSide(NoiseTransport(BOB), False)
        ct, st_ = MemoryTransport(), MemoryTransport()
        server.channel.makeConnection(st_)
        self.assertEqual(st_.buffer, b"")
        client.channel.makeConnection(ct)
        msg1 = ct.take()
        self.assertEqual(msg1[:2], b"\x00\x20")
        self.assertEqual(len(msg1), 34)
        server.channel.dataReceived(msg1)
        msg2 = st_.take()
        payload = len(encodePayload(BOB, b"\x00" * 32))
        self.assertEqual(_frames(msg2)[0].__len__(), 32 + 48 + payload + 16)
        client.channel.dataReceived(msg2)
        msg3 = ct.take()
        self.assertEqual(len(_frames(msg3)[0]), 48 + payload + 16)
        server.channel.dataReceived(msg3)
        self.assertEqual(server.info().remotePeer, ALICE.peerID)

    def test_earlyMuxer(self) -> None:
        """
        When both list muxers, both sides agree on the initiator's first
        choice that the responder supports; otherwise on none.
        """
        cases = [
            (["/yamux/1.0.0", "/mplex/6.7.0"], ["/mplex/6.7.0", "/yamux/1.0.0"], "/yamux/1.0.0"),
            (["/x", "/mplex/6.7.0"], ["/yamux/1.0.0", "/mplex/6.7.0"], "/mplex/6.7.0"),
            (["/yamux/1.0.0"], [], None),
            ([], ["/yamux/1.0.0"], None),
            (["/a"], ["/b"], None),
        ]
        for cm, sm, expected in cases:
            client, server, _ = connectedPair(cm, sm)
            self.assertEqual(client.info().earlyMuxer, expected, (cm, sm))
            self.assertEqual(server.info().earlyMuxer, expected, (cm, sm))

    def test_dataBothWays(self) -> None:
        """
        Data written on either encrypted transport arrives at the other upper
        protocol, and nothing on the wire is plaintext.
        """
        client, server, pump = connectedPair()
        client.upper.transport.write(b"hello bob")
        self.assertNotIn(b"hello bob", bytes(pump.clientTransport.buffer))
        server.upper.transport.writeSequence([b"hello ", b"alice"])
        pump.flush()
        self.assertEqual(server.upper.data(), b"hello bob")
        self.assertEqual(client.upper.data(), b"hello alice")

    def test_largeWriteSplitsIntoFrames(self) -> None:
        """
        A write larger than one message is sealed into maximum-size frames
        (65519 plaintext bytes, 65535 on the wire) and reassembled in order.
        """
        client, server, pump = connectedPair()
        data = bytes(range(256)) * 1000  # 256000 bytes
        client.upper.transport.write(data)
        frames = _frames(bytes(pump.clientTransport.buffer))
        self.assertEqual([len(f) for f in frames], [MAX_MESSAGE] * 3 + [len(data) - 3 * MAX_PLAINTEXT + 16])
        pump.flush()
        self.assertEqual(server.upper.data(), data)
        server.upper.transport.write(data[::-1])
        pump.flush()
        self.assertEqual(client.upper.data(), data[::-1])

    def test_writeSequenceCoalesces(self) -> None:
        """
        Many small pieces passed to C{writeSequence} share frames instead of
        costing a message each.
        """
        client, server, pump = connectedPair()
        client.upper.transport.writeSequence([b"p" * 100] * 1000)
        self.assertEqual(len(_frames(bytes(pump.clientTransport.buffer))), 2)
        client.upper.transport.write(b"")
        self.assertEqual(len(_frames(bytes(pump.clientTransport.buffer))), 2)
        pump.flush()
        self.assertEqual(server.upper.data(), b"p" * 100000)

    def test_chunkedDelivery(self) -> None:
        """
        Handshake and data survive being delivered seven bytes at a time.
        """
        client, server, pump = connectedPair(chunk=7)
        self.assertEqual(client.info().remotePeer, BOB.peerID)
        self.assertEqual(server.info().remotePeer, ALICE.peerID)
        data = b"0123456789" * 20000
        client.upper.transport.write(data)
        server.upper.transport.write(b"back")
        pump.flush(chunk=7)
        self.assertEqual(server.upper.data(), data)
        self.assertEqual(client.upper.data(), b"back")

    def test_earlyDataWithFinalMessage(self) -> None:
        """
        Data the initiator writes as soon as its upper protocol starts travels
        in the same chunk as the final handshake message and is delivered.
        """
        client = makeSide(NoiseTransport(ALICE), True, BOB.peerID, writeOnConnect=b"early!")
        server = makeSide(NoiseTransport(BOB), False)
        ct, st_ = MemoryTransport(), MemoryTransport()
        server.channel.makeConnection(st_)
        client.channel.makeConnection(ct)
        server.channel.dataReceived(ct.take())
        client.channel.dataReceived(st_.take())
        chunk = ct.take()
        self.assertEqual(len(_frames(chunk)), 2)  # msg3 and one transport message
        server.channel.dataReceived(chunk)
        self.assertEqual(server.upper.data(), b"early!")

    def test_severalFramesInOneChunk(self) -> None:
        """
        Several transport messages arriving in one chunk, or split across
        chunks, are all delivered in order.
        """
        client, server, pump = connectedPair()
        for piece in (b"a", b"b" * 70000, b"c"):
            server.upper.transport.write(piece)
        pump.flush(chunk=1000)
        self.assertEqual(client.upper.data(), b"a" + b"b" * 70000 + b"c")
        self.assertEqual(len(client.upper.received), 4)

    def test_peerIDMismatch(self) -> None:
        """
        When the responder is not the peer we dialled, the initiator fails
        with L{PeerIDMismatch}, aborts before sending its own payload, and no
        upper protocol is built on either side.
        """
        with capturedLogs() as events:
            client, server, pump = connectedPair(expectedPeer=CAROL.peerID)
        client.failure().trap(PeerIDMismatch)
        self.assertTrue(pump.clientTransport.aborted)
        self.assertEqual(client.uppers, [])
        self.assertEqual(server.uppers, [])
        server.failure().trap(HandshakeFailed)
        self.assertTrue(any("failed" in str(e.get("log_format")) and e.get("role") == "initiator" for e in events))

    def test_tamperedCiphertext(self) -> None:
        """
        A transport message altered in flight aborts the connection, logs
        why, and the upper protocol loses its connection with
        L{DecryptionFailed}.
        """
        client, server, pump = connectedPair()
        client.upper.transport.write(b"secret")
        pump.clientTransport.buffer[5] ^= 0x40
        with capturedLogs() as events:
            pump.flush()
        self.assertTrue(pump.serverTransport.aborted)
        self.assertEqual(server.upper.received, [])
        self.assertEqual(len(server.upper.lost), 1)
        server.upper.lost[0].trap(DecryptionFailed)
        self.assertTrue(any(e.get("log_level").name == "warn" for e in events))
        self.assertEqual(len(client.upper.lost), 1)

    def test_shortTransportFrame(self) -> None:
        """
        A transport message shorter than a tag is refused.
        """
        client, server, pump = connectedPair()
        server.channel.dataReceived(b"\x00\x03abc")
        self.assertTrue(pump.serverTransport.aborted)

    def test_replayedFrame(self) -> None:
        """
        Replaying a transport message fails, since the nonce moved on.
        """
        client, server, pump = connectedPair()
        client.upper.transport.write(b"once")
        wire = bytes(pump.clientTransport.buffer)
        pump.flush()
        server.channel.dataReceived(wire)
        self.assertTrue(pump.serverTransport.aborted)
        self.assertEqual(server.upper.data(), b"once")

    def test_badSignatureRefused(self) -> None:
        """
        A responder whose payload is signed over another static key is
        refused by the initiator with L{HandshakeFailed}.
        """
        bad = NoiseTransport(BOB)
        bad._payload = encodePayload(BOB, publicBytes(X25519PrivateKey.generate()))
        client = makeSide(NoiseTransport(ALICE), True, BOB.peerID)
        server = makeSide(bad, False)
        pump = Pump(client.channel, server.channel).connect()
        client.failure().trap(HandshakeFailed)
        self.assertTrue(pump.clientTransport.aborted)
        self.assertEqual(client.uppers, [])
        self.assertIn("signature", client.failure().getErrorMessage())

    def test_badInitiatorSignatureRefused(self) -> None:
        """
        The responder likewise refuses an initiator whose signature is bad.
        """
        bad = NoiseTransport(ALICE)
        bad._payload = encodePayload(ALICE, publicBytes(X25519PrivateKey.generate()))
        client = makeSide(bad, True, BOB.peerID)
        server = makeSide(NoiseTransport(BOB), False)
        pump = Pump(client.channel, server.channel).connect()
        server.failure().trap(HandshakeFailed)
        self.assertTrue(pump.serverTransport.aborted)
        self.assertEqual(server.uppers, [])

    def test_malformedPayloadRefused(self) -> None:
        """
        A payload that is not a handshake payload fails the handshake.
        """
        bad = NoiseTransport(BOB)
        bad._payload = b"\xff\xff\xff"
        client = makeSide(NoiseTransport(ALICE), True, BOB.peerID)
        pump = Pump(client.channel, makeSide(bad, False).channel).connect()
        client.failure().trap(HandshakeFailed)
        self.assertTrue(pump.clientTransport.aborted)

    def test_garbageFirstMessage(self) -> None:
        """
        The responder refuses a first message that is not exactly a 32-byte
        ephemeral key, including an oversize 65535-byte frame, and a
        low-order (all-zero) ephemeral key.
        """
        for body in (b"", b"x" * 31, b"x" * 33, b"x" * MAX_MESSAGE, b"\x00" * 32):
            server = makeSide(NoiseTransport(BOB), False)
            transport = MemoryTransport()
            server.channel.makeConnection(transport)
            with capturedLogs():
                server.channel.dataReceived(struct.pack(">H", len(body)) + body + b"more")
            server.failure().trap(HandshakeFailed)
            self.assertTrue(transport.aborted)
            self.assertEqual(transport.buffer, b"")
            server.channel.dataReceived(b"ignored after failure")

    def test_garbageSecondMessage(self) -> None:
        """
        The initiator refuses a second message that is too short, too long
        for its content, or random.
        """
        for body in (b"", b"y" * 95, b"y" * 200, b"z" * MAX_MESSAGE):
            client = makeSide(NoiseTransport(ALICE), True)
            transport = MemoryTransport()
            client.channel.makeConnection(transport)
            client.channel.dataReceived(struct.pack(">H", len(body)) + body)
            client.failure().trap(HandshakeFailed)
            self.assertTrue(transport.aborted)

    def test_connectionLostDuringHandshake(self) -> None:
        """
        If the connection closes mid-handshake, C{handshakeDone} errbacks with
        L{HandshakeFailed}.
        """
        client = makeSide(NoiseTransport(ALICE), True)
        client.channel.makeConnection(MemoryTransport())
        client.channel.connectionLost(Failure(ConnectionDone()))
        client.failure().trap(HandshakeFailed)

    def test_cancelAborts(self) -> None:
        """
        Cancelling C{handshakeDone} (a timeout, say) aborts the connection.
        """
        client = makeSide(NoiseTransport(ALICE), True)
        transport = MemoryTransport()
        client.channel.makeConnection(transport)
        client.channel.handshakeDone.cancel()
        self.assertTrue(transport.aborted)
        self.assertEqual(len(client.results), 1)

    def test_connectionLossPropagates(self) -> None:
        """
        When the lower transport closes, each upper protocol's
        C{connectionLost} is called with the reason.
        """
        client, server, pump = connectedPair()
        server.upper.transport.loseConnection()
        self.assertTrue(pump.serverTransport.disconnecting)
        pump.flush()
        self.assertEqual(len(client.upper.lost), 1)
        client.upper.lost[0].trap(ConnectionDone)
        self.assertEqual(len(server.upper.lost), 1)
        client.upper.transport.write(b"after close")  # dropped, no error
        self.assertEqual(pump.clientTransport.buffer, b"")

    def test_abortConnection(self) -> None:
        """
        C{abortConnection} on the encrypted transport aborts the lower one.
        """
        client, server, pump = connectedPair()
        client.upper.transport.abortConnection()
        self.assertTrue(pump.clientTransport.aborted)

    def test_producerPassthrough(self) -> None:
        """
        A producer registered on the encrypted transport is registered on the
        lower transport (so its back-pressure reaches it), and pausing the
        encrypted transport pauses reading from the lower one.
        """
        client, server, pump = connectedPair()
        pump.clientTransport.highWater = 1000

        class Producer:
            paused = 0
            resumed = 0

            def pauseProducing(self) -> None:
                self.paused += 1

            def resumeProducing(self) -> None:
                self.resumed += 1

            def stopProducing(self) -> None:
                pass

        producer = Producer()
        secure = client.upper.transport
        secure.registerProducer(producer, True)
        self.assertIs(pump.clientTransport.producer, producer)
        self.assertTrue(pump.clientTransport.streaming)
        secure.write(b"w" * 5000)
        self.assertEqual(producer.paused, 1)
        pump.flush()
        self.assertEqual(producer.resumed, 1)
        secure.unregisterProducer()
        self.assertIsNone(pump.clientTransport.producer)
        secure.pauseProducing()
        self.assertTrue(pump.clientTransport.paused)
        server.upper.transport.write(b"held")
        pump.flush()
        self.assertEqual(client.upper.received, [])
        secure.resumeProducing()
        pump.flush()
        self.assertEqual(client.upper.data(), b"held")

    def test_sendNonceExhaustion(self) -> None:
        """
        When the send nonce runs out, the write is refused and the connection
        aborted rather than a nonce reused.
        """
        client, server, pump = connectedPair()
        client.channel.session._send.n = MAX_NONCE - 1
        client.upper.transport.write(b"last")
        self.assertFalse(pump.clientTransport.aborted)
        with capturedLogs() as events:
            client.upper.transport.write(b"one too many")
        self.assertTrue(pump.clientTransport.aborted)
        self.assertTrue(events)

    def test_upperErrorsDoNotEscape(self) -> None:
        """
        An upper protocol that raises from C{dataReceived} is logged and the
        connection aborted; the exception does not reach the transport.
        """
        client, server, pump = connectedPair()

        def boom(data: bytes) -> None:
            raise RuntimeError("upper bug")

        server.upper.dataReceived = boom  # type: ignore[method-assign]
        client.upper.transport.write(b"x")
        pump.flush()
        self.assertTrue(pump.serverTransport.aborted)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_handshakeDoneListenerMayClose(self) -> None:
        """
        If a C{handshakeDone} callback closes the connection (a peer gater,
        say), no upper protocol is built.
        """
        client = makeSide(NoiseTransport(ALICE), True, BOB.peerID)
        server = makeSide(NoiseTransport(BOB), False)
        server.channel.handshakeDone.addCallback(
            lambda info: server.channel.transport.loseConnection()
        )
        Pump(client.channel, server.channel).connect()
        self.assertEqual(server.uppers, [])

    def test_oversizeMuxerList(self) -> None:
        """
        A muxer list too large for a handshake message is refused up front.
        """
        self.assertRaises(ValueError, NoiseTransport, ALICE, ["/m" * 1000] * 40)


# Deterministic transcripts for the fuzz tests.
def _transcript() -> Tuple[bytes, bytes, bytes]:
    client = fixedSide(True, ALICE, 1, ["/yamux/1.0.0"], BOB.peerID)
    server = fixedSide(False, BOB, 2, ["/yamux/1.0.0"])
    ct, st_ = MemoryTransport(), MemoryTransport()
    server.channel.makeConnection(st_)
    client.channel.makeConnection(ct)
    msg1 = ct.take()
    server.channel.dataReceived(msg1)
    msg2 = st_.take()
    client.channel.dataReceived(msg2)
    msg3 = ct.take()
    server.channel.dataReceived(msg3)
    assert client.results and server.results
    assert isinstance(server.results[0], SecureInfo)
    return msg1, msg2, msg3


MSG1, MSG2, MSG3 = _transcript()


@st.composite
def mutated(draw: Any, original: bytes) -> bytes:
    kind = draw(st.sampled_from(["flip", "truncate", "append", "random", "insert"]))
    data = bytearray(original)
    if kind == "flip":
        i = draw(st.integers(0, len(data) - 1))
        data[i] ^= draw(st.integers(1, 255))
    elif kind == "truncate":
        del data[draw(st.integers(0, len(data) - 1)):]
    elif kind == "append":
        data += draw(st.binary(min_size=1, max_size=100))
    elif kind == "insert":
        i = draw(st.integers(0, len(data)))
        data[i:i] = draw(st.binary(min_size=1, max_size=10))
    else:
        return draw(st.binary(max_size=300))
    return bytes(data)


def _feed(side: Side, transport: MemoryTransport, data: bytes, chunk: int) -> None:
    for i in range(0, len(data), chunk):
        side.channel.dataReceived(data[i:i + chunk])  # must never raise


def _checkClean(side: Side, transport: MemoryTransport) -> None:
    """
    Either the handshake failed with a L{SecurityError} and the transport
    was aborted, or it has not finished, or (only for untouched handshake
    bytes) it succeeded.
    """
    if not side.results:
        assert not transport.aborted
        return
    result = side.results[0]
    if isinstance(result, Failure):
        assert result.check(SecurityError), result
        assert transport.aborted


class NoiseFuzzTests(SynchronousTestCase):
    """
    Random and mutated handshake bytes never raise and fail cleanly.
    """

    @settings(deadline=None, max_examples=150)
    @given(data=st.binary(max_size=400), chunk=st.integers(1, 64))
    def test_randomBytesToResponder(self, data: bytes, chunk: int) -> None:
        """
        Random bytes fed to a responder, in random chunks, never raise.
        """
        with capturedLogs():
            server = makeSide(NoiseTransport(BOB), False)
            transport = MemoryTransport()
            server.channel.makeConnection(transport)
            _feed(server, transport, data, chunk)
            _checkClean(server, transport)
            self.assertFalse(server.results and isinstance(server.results[0], SecureInfo))

    @settings(deadline=None, max_examples=150)
    @given(data=mutated(MSG2), chunk=st.integers(1, 400))
    def test_mutatedSecondMessage(self, data: bytes, chunk: int) -> None:
        """
        A mutated message 2 makes the initiator fail cleanly, unless the
        mutation left the message intact (bytes appended after it).
        """
        with capturedLogs():
            client = fixedSide(True, ALICE, 1, ["/yamux/1.0.0"], BOB.peerID)
            transport = MemoryTransport()
            client.channel.makeConnection(transport)
            self.assertEqual(transport.take(), MSG1)
            _feed(client, transport, data, chunk)
            _checkClean(client, transport)
            if client.results and isinstance(client.results[0], SecureInfo):
                self.assertTrue(data.startswith(MSG2))
                self.assertEqual(client.results[0].remotePeer, BOB.peerID)
            if data == MSG2:
                self.assertTrue(client.results)

    @settings(deadline=None, max_examples=150)
    @given(data=mutated(MSG3), chunk=st.integers(1, 400))
    def test_mutatedThirdMessage(self, data: bytes, chunk: int) -> None:
        """
        A mutated message 3 makes the responder fail cleanly, unless the
        mutation left the message intact.
        """
        with capturedLogs():
            server = fixedSide(False, BOB, 2, ["/yamux/1.0.0"])
            transport = MemoryTransport()
            server.channel.makeConnection(transport)
            server.channel.dataReceived(MSG1)
            self.assertEqual(transport.take(), MSG2)
            _feed(server, transport, data, chunk)
            _checkClean(server, transport)
            if server.results and isinstance(server.results[0], SecureInfo):
                self.assertTrue(data.startswith(MSG3))
                self.assertEqual(server.results[0].earlyMuxer, "/yamux/1.0.0")
