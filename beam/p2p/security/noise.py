"""
The libp2p Noise secure channel (C{/noise}), per libp2p/specs C{noise/README.md}.

Layers, from the wire up:

  - L{FrameReader}: the 2-byte big-endian length framing of every Noise
    message, as a sans-IO buffer that never copies more than it must (a
    gigabyte passes through it on a bulk transfer).
  - L{NoiseSession}: the sans-IO libp2p handshake (XX with signed
    C{NoiseHandshakePayload}s and early muxer negotiation) and the transport
    encryption, on top of L{beam.p2p.security._noise_state}.
  - L{NoiseChannel}: the thin Twisted protocol adapter that fulfils
    L{ISecureChannel}; L{NoiseSecureTransport} is the encrypted transport the
    upper protocol sees.
  - L{NoiseTransport}: the L{ISecureTransport} the upgrader selects.
"""

from __future__ import annotations

import struct
from typing import Callable, Final, Iterable, List, Optional, Sequence, Tuple

import attr
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IProducer, IProtocol
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from beam.errors import (
    BeamError,
    DecryptionFailed,
    HandshakeFailed,
    InvalidKey,
    PeerIDMismatch,
    SecurityError,
)
from beam.identity.keys import Identity, PeerID, PublicKey
from beam.proto import noise_pb2
from beam.p2p.security._noise_state import (
    DHLEN,
    TAGLEN,
    CipherState,
    HandshakeXX,
    publicBytes,
)
from beam.p2p.interfaces import IAbortableTransport
from beam.p2p.security.interfaces import ISecureChannel, ISecureTransport, SecureInfo

__all__ = [
    "PROTOCOL_ID",
    "MAX_MESSAGE",
    "MAX_PLAINTEXT",
    "NoiseTransport",
    "NoiseChannel",
    "NoiseSecureTransport",
    "NoiseSession",
    "FrameReader",
    "encodePayload",
    "decodePayload",
    "selectMuxer",
]

PROTOCOL_ID: Final = "/noise"
#: The largest Noise message, and so the largest frame body.
MAX_MESSAGE: Final = 65535
#: The most plaintext one transport message carries.
MAX_PLAINTEXT: Final = MAX_MESSAGE - TAGLEN
STATIC_KEY_SIGNATURE_PREFIX: Final = b"noise-libp2p-static-key:"

_LENGTH: Final = struct.Struct(">H")
#: Consumed bytes are dropped from the front of the receive buffer at least
#: this often, so a long burst of frames does not pin memory.
_COMPACT_AT: Final = 1 << 20

# Sizes of the three XX messages without payload ciphertext.
_MSG1_SIZE: Final = DHLEN
_MSG2_MIN: Final = DHLEN + (DHLEN + TAGLEN) + TAGLEN
_MSG3_MIN: Final = (DHLEN + TAGLEN) + TAGLEN

_log = Logger()


def _frame(message: bytes) -> bytes:
    return _LENGTH.pack(len(message)) + message


class FrameReader:
    """
    Split a byte stream into length-prefixed Noise messages.

    Frames are read in place by moving an offset, and the consumed prefix is
    dropped once per drained buffer (or every L{_COMPACT_AT} bytes), so the
    cost is linear in the bytes received.  When nothing is pending, a
    received C{bytes} object is used as the buffer as is, without copying;
    it is copied into a C{bytearray} only when a partial frame must wait for
    more input.  The 2-byte prefix caps every frame at 65535 bytes, so at
    most one partial frame (plus whatever one C{feed} brought) is held.
    """

    __slots__ = ("_buf", "_off")

    def __init__(self) -> None:
        self._buf: bytes | bytearray = b""
        self._off = 0

    def feed(self, data: bytes) -> None:
        buf, off = self._buf, self._off
        if off >= len(buf):
            self._buf = data if isinstance(data, bytes) else bytes(data)
            self._off = 0
        elif isinstance(buf, bytes):
            self._buf = bytearray(memoryview(buf)[off:])
            self._buf += data
            self._off = 0
        else:
            buf += data

    def buffered(self) -> int:
        """
        How many received bytes are not yet returned as frames.
        """
        return len(self._buf) - self._off

    def nextFrame(self) -> Optional[memoryview]:
        """
        The next complete frame body, or L{None} when more bytes are needed.

        The result is a view into the buffer: the caller must C{release()}
        it before calling L{feed} or L{nextFrame} again.
        """
        buf, off = self._buf, self._off
        if off >= _COMPACT_AT and isinstance(buf, bytearray):
            del buf[:off]
            off = self._off = 0
        end = len(buf)
        if end - off >= 2:
            size = (buf[off] << 8) | buf[off + 1]
            start = off + 2
            if end - start >= size:
                self._off = start + size
                return memoryview(buf)[start:start + size]
        if off:
            if off >= end:
                self._buf = b""
            elif isinstance(buf, bytes):
                self._buf = bytearray(memoryview(buf)[off:])
            else:
                del buf[:off]
            self._off = 0
        return None


def encodePayload(identity: Identity, staticPublic: bytes, muxers: Sequence[str] = ()) -> bytes:
    """
    Our signed C{NoiseHandshakePayload}: the identity key, its signature over
    C{"noise-libp2p-static-key:" || static key}, and our muxers (omitted when
    there are none).
    """
    payload = noise_pb2.NoiseHandshakePayload(
        identity_key=identity.publicKey.toProtobuf(),
        identity_sig=identity.sign(STATIC_KEY_SIGNATURE_PREFIX + staticPublic),
    )
    if muxers:
        payload.extensions.stream_muxers.extend(muxers)
    return payload.SerializeToString()


@attr.s(frozen=True, auto_attribs=True)
class RemotePayload:
    """
    What a verified handshake payload told us about the peer.
    """

    publicKey: PublicKey
    peerID: PeerID
    muxers: Tuple[str, ...]


def decodePayload(data: bytes, remoteStatic: bytes) -> RemotePayload:
    """
    Parse and verify the peer's handshake payload against the static key it
    used in the handshake.  Unknown fields and extensions are ignored.

    @raise HandshakeFailed: the payload is malformed, lacks the key or the
        signature, or the signature does not verify.
    """
    msg = noise_pb2.NoiseHandshakePayload()
    try:
        msg.ParseFromString(data)
        muxers = tuple(msg.extensions.stream_muxers) if msg.HasField("extensions") else ()
    except Exception as e:  # protobuf's DecodeError, and unicode errors
        raise HandshakeFailed(f"malformed Noise handshake payload: {e}") from None
    if not msg.HasField("identity_key") or not msg.HasField("identity_sig"):
        raise HandshakeFailed("Noise handshake payload lacks the identity key or signature")
    try:
        key = PublicKey.fromProtobuf(msg.identity_key)
        peer = key.peerID()
    except (InvalidKey, BeamError, ValueError) as e:
        raise HandshakeFailed(f"peer sent an unusable identity key: {e}") from None
    if not key.verify(msg.identity_sig, STATIC_KEY_SIGNATURE_PREFIX + remoteStatic):
        raise HandshakeFailed("the peer's signature over its Noise static key is invalid")
    return RemotePayload(key, peer, muxers)


def selectMuxer(initiatorMuxers: Sequence[str], responderMuxers: Sequence[str]) -> Optional[str]:
    """
    The early muxer of the inlined-muxer-negotiation spec: the first of the
    initiator's muxers that the responder also lists.

    L{None} when either side listed none, and also when they share none: the
    spec says the handshake then fails, but go-libp2p and js-libp2p fall back
    to multistream-select, which is what L{None} asks the upgrader to do.
    """
    if not initiatorMuxers or not responderMuxers:
        return None
    theirs = set(responderMuxers)
    for muxer in initiatorMuxers:
        if muxer in theirs:
            return muxer
    return None


class NoiseSession:
    """
    One side of a libp2p Noise session, without I/O.

    Feed received bytes with L{feed}; during the handshake call
    L{advanceHandshake} for the frames to send, until L{info} is set; then
    take decrypted messages with L{nextPlaintext} and seal outgoing data with
    L{encrypt}.  Every method raises a L{SecurityError} (or
    L{ProtocolError}) subclass on bad input; the session must then be
    dropped.
    """

    def __init__(
        self,
        isInitiator: bool,
        staticKey: X25519PrivateKey,
        payload: bytes,
        muxers: Sequence[str] = (),
        expectedPeer: Optional[PeerID] = None,
        handshake: Optional[HandshakeXX] = None,
    ) -> None:
        """
        @param payload: our encoded, signed handshake payload (see
            L{encodePayload}); it is the same for every session of one
            static key, so it is signed once.
        @param handshake: a prepared handshake state, for known-answer tests.
        """
        self.isInitiator = isInitiator
        self._payload = payload
        self._muxers = tuple(muxers)
        self._expectedPeer = expectedPeer
        self._hs: Optional[HandshakeXX] = handshake or HandshakeXX(isInitiator, staticKey)
        self._reader = FrameReader()
        self._send: Optional[CipherState] = None
        self._recv: Optional[CipherState] = None
        self._remote: Optional[RemotePayload] = None
        self.info: Optional[SecureInfo] = None
        self.handshakeHash: Optional[bytes] = None

    def start(self) -> List[bytes]:
        """
        The frames to send when the connection is made: the initiator's
        C{-> e} (with the empty payload libp2p prescribes), nothing for the
        responder.
        """
        if not self.isInitiator:
            return []
        assert self._hs is not None
        return [_frame(self._hs.writeMessage(b""))]

    def feed(self, data: bytes) -> None:
        self._reader.feed(data)

    def advanceHandshake(self) -> List[bytes]:
        """
        Process the handshake frames received so far.

        @return: frames to send to the peer.
        @raise SecurityError: the handshake failed.
        """
        out: List[bytes] = []
        while self.info is None:
            view = self._reader.nextFrame()
            if view is None:
                break
            try:
                message = bytes(view)
            finally:
                view.release()
            self._handshakeMessage(message, out)
        return out

    def _handshakeMessage(self, message: bytes, out: List[bytes]) -> None:
        hs = self._hs
        assert hs is not None
        if hs.step == 0:
            # -> e: libp2p sends no payload in the first message (and
            # rust-libp2p refuses one), so anything else is not a peer of ours.
            if len(message) != _MSG1_SIZE:
                raise HandshakeFailed(
                    f"first Noise handshake message has {len(message)} bytes, not {_MSG1_SIZE}"
                )
            hs.readMessage(message)
            out.append(_frame(hs.writeMessage(self._payload)))
            return
        minimum = _MSG2_MIN if self.isInitiator else _MSG3_MIN
        if len(message) < minimum:
            raise HandshakeFailed("Noise handshake message too short")
        remote = decodePayload(hs.readMessage(message), self._remoteStatic(hs))
        if self._expectedPeer is not None and remote.peerID != self._expectedPeer:
            raise PeerIDMismatch(
                f"dialled {self._expectedPeer} but the peer is {remote.peerID}"
            )
        if self.isInitiator:
            out.append(_frame(hs.writeMessage(self._payload)))
            muxer = selectMuxer(self._muxers, remote.muxers)
        else:
            muxer = selectMuxer(remote.muxers, self._muxers)
        self._send, self._recv = hs.split()
        self.handshakeHash = hs.handshakeHash
        self._remote = remote
        self._hs = None  # drop the ephemeral and handshake secrets
        self.info = SecureInfo(
            remotePeer=remote.peerID,
            remotePublicKey=remote.publicKey,
            protocolId=PROTOCOL_ID,
            earlyMuxer=muxer,
        )

    @staticmethod
    def _remoteStatic(hs: HandshakeXX) -> bytes:
        assert hs.remoteStatic is not None
        return hs.remoteStatic

    def nextPlaintext(self) -> Optional[bytes]:
        """
        Decrypt the next complete transport message, if one has arrived.

        @raise DecryptionFailed: it did not authenticate.
        @raise SecurityError: the receive nonce is exhausted.
        """
        recv = self._recv
        assert recv is not None, "handshake not complete"
        view = self._reader.nextFrame()
        if view is None:
            return None
        try:
            if len(view) < TAGLEN:
                raise DecryptionFailed("Noise transport message shorter than its tag")
            return recv.decryptWithAd(None, view)
        finally:
            view.release()

    def encrypt(self, data: bytes) -> List[bytes]:
        """
        Seal C{data} into as few maximum-size transport messages as fit.

        @return: alternating length prefixes and ciphertexts, for
            C{writeSequence}.
        @raise SecurityError: the send nonce is exhausted.
        """
        send = self._send
        assert send is not None, "handshake not complete"
        size = len(data)
        if size <= MAX_PLAINTEXT:
            ct = send.encryptWithAd(None, data)
            return [_LENGTH.pack(len(ct)), ct]
        out: List[bytes] = []
        pack = _LENGTH.pack
        with memoryview(data) as view:
            for start in range(0, size, MAX_PLAINTEXT):
                ct = send.encryptWithAd(None, view[start:start + MAX_PLAINTEXT])
                out.append(pack(len(ct)))
                out.append(ct)
        return out


@implementer(IAbortableTransport)
class NoiseSecureTransport:
    """
    The encrypted transport the upper protocol writes to.

    Producer registration and pausing pass straight through to the lower
    transport: encryption is synchronous and buffers nothing, so the lower
    transport's back-pressure is exactly ours.

    @ivar remotePeer: the authenticated peer ID.
    @ivar remotePublicKey: its public key.
    @ivar info: the whole L{SecureInfo}.
    """

    def __init__(self, channel: "NoiseChannel", info: SecureInfo) -> None:
        self._channel = channel
        self.info = info
        self.remotePeer = info.remotePeer
        self.remotePublicKey = info.remotePublicKey

    @property
    def _lower(self) -> IAbortableTransport:
        lower = self._channel.transport
        assert lower is not None  # made only once the channel is connected
        return lower

    @property
    def disconnecting(self) -> bool:
        return bool(getattr(self._lower, "disconnecting", False)) or self._channel.closed

    # ITransport
    def write(self, data: bytes) -> None:
        if not data:
            return
        channel = self._channel
        if channel.closed:
            return
        try:
            frames = channel.session.encrypt(data)
        except BeamError as e:
            channel.fail(e)
            return
        self._lower.writeSequence(frames)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        # Joining first coalesces many small writes into full frames.
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        self._lower.loseConnection()

    def abortConnection(self) -> None:
        self._channel.abortLower()

    def getPeer(self) -> IAddress:
        return self._lower.getPeer()

    def getHost(self) -> IAddress:
        return self._lower.getHost()

    def getHandshakeHash(self) -> Optional[bytes]:
        """
        The final Noise handshake hash, which channel-binding protocols use.
        """
        return self._channel.session.handshakeHash

    # IConsumer
    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        self._lower.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._lower.unregisterProducer()

    # IPushProducer
    def pauseProducing(self) -> None:
        self._lower.pauseProducing()

    def resumeProducing(self) -> None:
        self._lower.resumeProducing()

    def stopProducing(self) -> None:
        self._lower.stopProducing()


@implementer(ISecureChannel)
class NoiseChannel(Protocol):
    """
    The Twisted adapter of a L{NoiseSession}; see L{ISecureChannel} for the
    contract.

    @ivar handshakeDone: fires with L{SecureInfo}, or errbacks with a
        L{SecurityError}.  Cancelling it aborts the connection.
    @ivar upper: the upper protocol, once built.
    @ivar transport: the raw connection underneath.
    """

    transport: Optional[IAbortableTransport]

    def __init__(
        self,
        session: NoiseSession,
        upperFactory: Callable[[SecureInfo], IProtocol],
    ) -> None:
        self.session = session
        self._upperFactory = upperFactory
        self.handshakeDone: Deferred[SecureInfo] = Deferred(self._cancel)
        self.upper: Optional[IProtocol] = None
        self.secureTransport: Optional[NoiseSecureTransport] = None
        self.remotePeer: Optional[PeerID] = None
        self.remotePublicKey: Optional[PublicKey] = None
        self._established = False
        self._error: Optional[BaseException] = None
        self._lost = False

    @property
    def closed(self) -> bool:
        return self._error is not None or self._lost

    def connectionMade(self) -> None:
        try:
            frames = self.session.start()
        except BeamError as e:
            self.fail(e)
            return
        if frames:
            assert self.transport is not None  # set by makeConnection
            self.transport.writeSequence(frames)

    def dataReceived(self, data: bytes) -> None:
        if self.closed:
            return
        session = self.session
        try:
            session.feed(data)
            if not self._established:
                frames = session.advanceHandshake()
                if frames:
                    assert self.transport is not None  # data arrives only while connected
                    self.transport.writeSequence(frames)
                if session.info is None:
                    return
                self._established = True
                self._handshakeComplete(session.info)
            while self.upper is not None and not self.closed:
                plaintext = session.nextPlaintext()
                if plaintext is None:
                    break
                if plaintext:
                    self._deliver(plaintext)
        except BeamError as e:
            self.fail(e)
        except Exception as e:  # a bug; still never raise at the transport
            _log.failure("Unexpected error in the Noise channel")
            self.fail(HandshakeFailed(f"internal error: {e}"))

    def _handshakeComplete(self, info: SecureInfo) -> None:
        self.remotePeer = info.remotePeer
        self.remotePublicKey = info.remotePublicKey
        self.handshakeDone.callback(info)
        if self.closed or getattr(self.transport, "disconnecting", False):
            return  # someone listening to handshakeDone closed the connection
        secure = NoiseSecureTransport(self, info)
        try:
            upper = self._upperFactory(info)
            self.upper = upper
            self.secureTransport = secure
            upper.makeConnection(secure)
        except Exception:
            _log.failure("The protocol over the Noise channel failed to start")
            self.abortLower()

    def _deliver(self, plaintext: bytes) -> None:
        assert self.upper is not None
        try:
            self.upper.dataReceived(plaintext)
        except Exception:
            _log.failure("The protocol over the Noise channel raised from dataReceived")
            self.abortLower()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = True
        if not self.handshakeDone.called:
            self._error = self._error or HandshakeFailed(
                "the connection closed during the Noise handshake"
            )
            _log.info(
                "Noise handshake with {peer} ended: {reason}",
                peer=self._peerAddress(),
                reason=reason.getErrorMessage(),
            )
            self.handshakeDone.errback(Failure(self._error))
        upper, self.upper = self.upper, None
        if upper is not None:
            if isinstance(self._error, BeamError):
                reason = Failure(self._error)
            upper.connectionLost(reason)

    def fail(self, error: BaseException) -> None:
        """
        Log why the session failed, abort the lower transport, and errback
        L{handshakeDone} if it is still pending.
        """
        if self._error is not None:
            return
        self._error = error
        _log.warn(
            "Noise {role} channel with {peer} failed: {reason}",
            role="initiator" if self.session.isInitiator else "responder",
            peer=self._peerAddress(),
            reason=str(error),
        )
        self.abortLower()
        if not self.handshakeDone.called:
            if not isinstance(error, SecurityError):
                error = HandshakeFailed(str(error))
            self.handshakeDone.errback(Failure(error))

    def abortLower(self) -> None:
        transport = self.transport
        if transport is None:
            return
        abort = getattr(transport, "abortConnection", None)
        if abort is not None:
            abort()
        else:
            transport.loseConnection()

    def _cancel(self, d: Deferred[SecureInfo]) -> None:
        # Errback with CancelledError (the Deferred does that after us), and
        # close: a half-done handshake is worth nothing.
        self._error = self._error or HandshakeFailed("Noise handshake cancelled")
        self.abortLower()

    def _peerAddress(self) -> object:
        try:
            return self.transport.getPeer() if self.transport is not None else None
        except Exception:
            return None


@implementer(ISecureTransport)
class NoiseTransport:
    """
    The C{/noise} security transport of one node.

    One static X25519 key serves all sessions of this object (the spec allows
    it), so the identity signature over it is computed once, not per
    connection.
    """

    protocolId = PROTOCOL_ID

    def __init__(
        self,
        identity: Identity,
        muxers: Sequence[str] = (),
        *,
        staticKey: Optional[X25519PrivateKey] = None,
    ) -> None:
        """
        @param muxers: the stream muxers we offer in the handshake, most
            preferred first; empty to leave the choice to multistream-select.
        @param staticKey: the Noise static key; a fresh one by default.
        @raise ValueError: the muxer list does not fit in a handshake message.
        """
        self.identity = identity
        self.muxers = tuple(muxers)
        self._staticKey = staticKey if staticKey is not None else X25519PrivateKey.generate()
        self._payload = encodePayload(identity, publicBytes(self._staticKey), self.muxers)
        if len(self._payload) + _MSG2_MIN > MAX_MESSAGE:
            raise ValueError("too many muxers to fit in a Noise handshake message")

    def wrap(
        self,
        isInitiator: bool,
        expectedPeer: Optional[PeerID],
        upperFactory: Callable[[SecureInfo], IProtocol],
    ) -> NoiseChannel:
        session = NoiseSession(
            isInitiator, self._staticKey, self._payload, self.muxers, expectedPeer
        )
        return NoiseChannel(session, upperFactory)
