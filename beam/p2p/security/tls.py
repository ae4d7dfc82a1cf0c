"""
The libp2p TLS 1.3 secure channel, C{/tls/1.0.0} (libp2p specs, C{tls/tls.md}).

OpenSSL does the record layer and the handshake through Twisted's
L{TLSMemoryBIOProtocol}; what is ours is who we believe the peer to be.  Both
sides present a self-signed certificate carrying the libp2p extension (see
L{beam.p2p.security._tlscert}).  OpenSSL is told to demand a certificate and to
accept any, because no CA vouches for libp2p peers; when OpenSSL reports the
handshake complete we apply the libp2p rules ourselves, with injected time,
and only then create the upper protocol.  A peer that fails them is aborted
before a single plaintext byte reaches the upper layer.

The layering, bottom up::

    lower transport (TCP, MemoryTransport)
      <- _LowerTransport     notices TLS giving up mid-handshake
      <- TLSMemoryBIOProtocol (Twisted)     record layer
      <- _Plaintext          handshake listener, plaintext to the upper protocol
    TLSChannel               the ISecureChannel the upgrader sees
    TLSSecureTransport       the transport the upper protocol writes to

ALPN carries early muxer negotiation (specs C{inlined-muxer-negotiation.md}):
the client offers its muxers in preference order and then C{"libp2p"}; the
server picks the first it supports, and aborts the handshake when there is
none.  When a muxer ID wins, L{SecureInfo.earlyMuxer} names it.

Writes are not aggregated here (Twisted's C{BufferingTLSTransport} would need
a running reactor to flush); the muxer above should batch small frames with
C{writeSequence}.  Reads are: OpenSSL hands out at most one 16 KiB record
per call, so the plaintext of all the records that one read from the
socket completes is joined and given to the upper protocol in one
C{dataReceived} (a yamux session then parses a 64 KiB read once, not in
four pieces).
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any, Callable, Final, Optional, Sequence

from OpenSSL import SSL
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
    IProtocol,
    IReactorTime,
)
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from beam.errors import HandshakeFailed, InvalidCertificate, PeerIDMismatch, SecurityError, describe
from beam.identity.keys import Identity, PeerID, PublicKey
from beam.p2p.interfaces import IAbortableTransport
from beam.p2p.security._tlscert import CertifiedKey, makeCertificate, verifyCertificate
from beam.p2p.security.interfaces import ISecureChannel, ISecureTransport, SecureInfo

PROTOCOL_ID: Final = "/tls/1.0.0"
LIBP2P_ALPN: Final = b"libp2p"

_log = Logger()


class _NoCommonProtocol(SSL.Error):
    """
    Raised from the ALPN callback: OpenSSL then sends a fatal alert and
    pyOpenSSL re-raises this from the handshake call as an L{SSL.Error},
    which L{TLSMemoryBIOProtocol} already treats as a failed handshake.
    """


def _acceptAny(
    conn: SSL.Connection, cert: Any, errno: int, depth: int, ok: int
) -> bool:
    """
    Accept whatever certificate OpenSSL was shown: it is self-signed by
    design, and the libp2p rules (L{verifyCertificate}) are applied once the
    handshake completes, with our clock rather than OpenSSL's.
    """
    return True


@implementer(IOpenSSLClientConnectionCreator, IOpenSSLServerConnectionCreator)
class _ConnectionCreator:
    """
    Hands L{TLSMemoryBIOFactory} connections from one prepared context.
    """

    def __init__(self, context: SSL.Context) -> None:
        self._context = context

    def clientConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        return SSL.Connection(self._context, None)

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        return SSL.Connection(self._context, None)


@implementer(ISecureTransport)
class TLSTransport:
    """
    The libp2p TLS security protocol for one node.

    One certificate is made per instance (so per node start); its key never
    leaves memory.
    """

    protocolId = PROTOCOL_ID

    def __init__(
        self,
        identity: Identity,
        muxers: Sequence[str] = (),
        clock: IReactorTime | None = None,
        *,
        _certifiedKey: CertifiedKey | None = None,
    ) -> None:
        """
        @param identity: our libp2p identity, proven in the certificate.
        @param muxers: muxer protocol IDs in preference order, offered (as
            client) and accepted (as server) in ALPN; empty to always leave
            muxer selection to multistream-select.
        @param clock: the source of "now" for certificate validity; the
            wall clock when L{None}.
        @param _certifiedKey: a test seam: present this certificate instead
            of a fresh one.
        """
        self.identity = identity
        self.muxers = tuple(muxers)
        for m in self.muxers:
            if not m or m == LIBP2P_ALPN.decode() or len(m.encode()) > 255:
                raise ValueError(f"unusable muxer ID for ALPN: {m!r}")
        self._clock = clock
        self._alpn = [m.encode() for m in self.muxers] + [LIBP2P_ALPN]
        self._alpnSet = frozenset(self._alpn)
        self.certifiedKey = _certifiedKey or makeCertificate(identity, self.now())
        # TLSMemoryBIOFactory only uses its clock for BufferingTLSTransport,
        # which we do not use; an inert Clock keeps the global reactor out.
        inert = clock if clock is not None else Clock()
        self._factories = {
            isClient: TLSMemoryBIOFactory(
                _ConnectionCreator(self._makeContext(isClient)), isClient, Factory(), inert
            )
            for isClient in (True, False)
        }

    def now(self) -> datetime:
        """
        The current time as an aware UTC datetime.
        """
        seconds = self._clock.seconds() if self._clock is not None else time.time()
        return datetime.fromtimestamp(seconds, timezone.utc)

    def _makeContext(self, isClient: bool) -> SSL.Context:
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
        # No resumption: a resumed session carries no certificate to check.
        ctx.set_options(SSL.OP_NO_TICKET | SSL.OP_NO_RENEGOTIATION)
        ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        ctx.use_certificate(self.certifiedKey.certificate)
        ctx.use_privatekey(self.certifiedKey.privateKey)
        ctx.check_privatekey()
        # Servers MUST require client authentication.
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _acceptAny)
        if isClient:
            ctx.set_alpn_protos(self._alpn)
        else:
            ctx.set_alpn_select_callback(self._selectProtocol)
        return ctx

    def _selectProtocol(self, conn: SSL.Connection, offered: list[bytes]) -> bytes:
        """
        Honour the client's preference: the first offered protocol we speak.
        """
        for proto in offered:
            if proto in self._alpnSet:
                return proto
        # Shaped like OpenSSL's error queue, which Twisted inspects.
        raise _NoCommonProtocol([("beam", "ALPN", "no common application protocol")])

    def earlyMuxerFor(self, alpn: bytes | None) -> str | None:
        """
        The muxer an ALPN result selects, or L{None} for C{"libp2p"}/nothing.
        """
        if not alpn or alpn == LIBP2P_ALPN:
            return None
        name = alpn.decode("utf-8", "replace")
        return name if name in self.muxers else None

    def wrap(
        self,
        isInitiator: bool,
        expectedPeer: Optional[PeerID],
        upperFactory: Callable[[SecureInfo], IProtocol],
    ) -> "TLSChannel":
        return TLSChannel(
            self, self._factories[isInitiator], isInitiator, expectedPeer, upperFactory
        )


@implementer(IAbortableTransport)
class TLSSecureTransport:
    """
    The transport an upper protocol gets once the peer is verified.

    Writes are encrypted by the TLS layer; producer registration passes
    through it to the lower transport (so TCP back-pressure reaches the
    producer); pausing this transport pauses reading from the lower one.

    @ivar remotePeer: the verified peer ID.
    @ivar remotePublicKey: its libp2p public key.
    @ivar secureInfo: the whole L{SecureInfo}.
    """

    def __init__(
        self, tls: TLSMemoryBIOProtocol, lower: Any, info: SecureInfo, channel: "TLSChannel"
    ) -> None:
        self._tls = tls
        self._lower = lower
        self._channel = channel
        self.secureInfo = info
        self.remotePeer: PeerID = info.remotePeer
        self.remotePublicKey: PublicKey = info.remotePublicKey
        # Bound once: the write path is hot.
        self.write = tls.write
        self.writeSequence = tls.writeSequence

    @property
    def disconnecting(self) -> bool:
        return bool(self._tls.disconnecting)

    @property
    def negotiatedProtocol(self) -> bytes | None:
        return self._tls.negotiatedProtocol if self._tls.connected else None

    def loseConnection(self) -> None:
        """
        Send TLS close_notify, then close the lower transport at once
        (see L{TLSChannel._closeAfterNotify}).
        """
        if self._tls.connected:
            self._tls.loseConnection()
            self._channel._closeAfterNotify()

    def abortConnection(self) -> None:
        if self._tls.connected:
            self._tls.abortConnection()

    def getPeer(self) -> Any:
        return self._lower.getPeer()

    def getHost(self) -> Any:
        return self._lower.getHost()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._tls.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        # A close asked for while a producer was registered sends its
        # close_notify now.
        self._tls.unregisterProducer()
        self._channel._closeAfterNotify()

    def pauseProducing(self) -> None:
        self._lower.pauseProducing()

    def resumeProducing(self) -> None:
        self._lower.resumeProducing()

    def stopProducing(self) -> None:
        self.loseConnection()


@implementer(IAbortableTransport)
class _LowerTransport:
    """
    What L{TLSMemoryBIOProtocol} writes to: the lower transport, except that
    C{loseConnection} during the handshake (OpenSSL gave up: garbage, no
    certificate, no common ALPN) becomes a channel failure with an abort.
    """

    def __init__(self, lower: Any, channel: "TLSChannel") -> None:
        self._lower = lower
        self._channel = channel
        self.write = lower.write
        self.writeSequence = lower.writeSequence

    def loseConnection(self) -> None:
        self._channel._tlsLoseConnection()

    def abortConnection(self) -> None:
        self._lower.abortConnection()

    def getPeer(self) -> Any:
        return self._lower.getPeer()

    def getHost(self) -> Any:
        return self._lower.getHost()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._lower.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._lower.unregisterProducer()

    def pauseProducing(self) -> None:
        self._lower.pauseProducing()

    def resumeProducing(self) -> None:
        self._lower.resumeProducing()

    def stopProducing(self) -> None:
        self._lower.stopProducing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lower, name)


@implementer(IHandshakeListener)
class _Plaintext(Protocol):
    """
    The protocol L{TLSMemoryBIOProtocol} wraps: it hears about handshake
    completion and connection loss, and forwards plaintext.  Until the peer
    is verified there is no upper protocol and plaintext is dropped (it
    cannot be otherwise: verification is synchronous in
    L{handshakeCompleted}, which runs before any record is decrypted).
    """

    def __init__(self, channel: "TLSChannel") -> None:
        self._channel = channel

    def handshakeCompleted(self) -> None:
        self._channel._handshakeCompleted()

    def dataReceived(self, data: bytes) -> None:
        pass  # replaced by the upper protocol's dataReceived once verified

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._channel._tlsConnectionLost(reason)


@implementer(ISecureChannel)
class TLSChannel(Protocol):
    """
    One libp2p TLS connection; see L{ISecureChannel} for the contract.

    @ivar handshakeDone: fires with L{SecureInfo}, or fails with
        L{SecurityError}.
    @ivar secureTransport: the L{TLSSecureTransport} given to the upper
        protocol, once there is one.
    @ivar transport: the raw connection underneath.
    """

    transport: Optional[IAbortableTransport]

    def __init__(
        self,
        owner: TLSTransport,
        factory: TLSMemoryBIOFactory,
        isInitiator: bool,
        expectedPeer: Optional[PeerID],
        upperFactory: Callable[[SecureInfo], IProtocol],
    ) -> None:
        self.handshakeDone: Deferred[SecureInfo] = Deferred()
        self.isInitiator = isInitiator
        self.expectedPeer = expectedPeer
        self.secureTransport: TLSSecureTransport | None = None
        self._owner = owner
        self._upperFactory = upperFactory
        self._plain = _Plaintext(self)
        self._tls = TLSMemoryBIOProtocol(factory, self._plain)
        self._upper: IProtocol | None = None
        self._verified = False  # the peer passed; the upper protocol exists
        self._settled = False  # handshakeDone has fired
        self._tlsStarted = False
        self._tlsLost = False  # TLSMemoryBIOProtocol.connectionLost has run
        self._lowerLost = False
        self._aborted = False
        self._closeSent = False  # our close_notify is out; the lower side closes
        self._lowerReason: Failure | None = None
        # Plaintext decrypted during the current lower dataReceived.
        self._incoming: list[bytes] = []

    # -- IProtocol, facing the lower transport ------------------------------

    def connectionMade(self) -> None:
        try:
            self._tls.makeConnection(_LowerTransport(self.transport, self))
            self._tlsStarted = True
        except Exception:
            _log.failure("Could not start TLS")
            self._fail(HandshakeFailed("could not start TLS"))

    def dataReceived(self, data: bytes) -> None:
        # Nothing is read after an abort; OpenSSL also rejects empty writes.
        if not data or self._aborted or not self._tlsStarted or self._tlsLost or self._lowerLost:
            return
        try:
            self._tls.dataReceived(data)
            self._deliverIncoming()
        except Exception:
            # Our own code or the upper protocol broke; never let it unwind
            # into the reactor.
            _log.failure("Unexpected error on TLS connection from {peer}", peer=self._peer())
            if self._verified:
                self._abort()
            if not self._settled:
                self._fail(HandshakeFailed("internal error during TLS handshake"))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lowerLost = True
        self._lowerReason = reason
        if self._tlsStarted and not self._tlsLost:
            try:
                self._tls.connectionLost(reason)
            except Exception:
                _log.failure("Error while closing TLS connection")
        if not self._settled:
            self._fail(HandshakeFailed(
                f"connection lost during TLS handshake: {describe(reason)}"
            ))
        elif self._upper is not None and not self._tlsLost:
            self._tlsConnectionLost(reason)

    # -- callbacks from the TLS layer ---------------------------------------

    def _tlsLoseConnection(self) -> None:
        """
        The TLS layer wants the lower transport closed.
        """
        if self._lowerLost:
            return
        # Twisted records why TLS gave up (None after a clean close_notify
        # exchange).  Reading it is the only way to tell the two apart; if a
        # Twisted release renames it we merely lose detail and abort less.
        problem = getattr(self._tls, "_reason", None)
        why = describe(problem) if isinstance(problem, Failure) else "TLS error"
        if not self._verified:
            self._fail(HandshakeFailed(f"TLS handshake failed: {why}"))
        elif isinstance(problem, Failure):
            _log.info("TLS error from {peer}: {why}", peer=self._peer(), why=why)
            self._abort()
        else:
            assert self.transport is not None  # the TLS layer runs only once connected
            self.transport.loseConnection()

    def _closeAfterNotify(self) -> None:
        """
        Once our close_notify has been written, close the lower transport
        without waiting for the peer's.

        Twisted's TLS layer waits for the peer's close_notify before closing
        the connection underneath.  TLS 1.3 does not ask for that (RFC 8446,
        6.1: close_notify closes the sender's write side only), and
        js-libp2p (3.x, C{@libp2p/tls}) sends nothing back after ours, so
        every close towards it hung until the node's close timeout aborted
        it.  Go's C{tls.Conn.Close} and Beam's Noise channel close the
        connection at once; so do we.  The lower transport still flushes
        what is queued (the last records, then the close_notify) before it
        closes.

        Called after every request that may send the close_notify:
        C{loseConnection}, and C{unregisterProducer} (Twisted postpones the
        close_notify while a producer is registered).
        """
        if self._closeSent or self._lowerLost or self._aborted or self._tlsLost:
            return
        handle = self._tls.getHandle() if self._tls.connected else None
        if handle is None or not handle.get_shutdown() & SSL.SENT_SHUTDOWN:
            return
        self._closeSent = True
        assert self.transport is not None  # the TLS layer runs only once connected
        self.transport.loseConnection()

    def _handshakeCompleted(self) -> None:
        if self._settled:
            return
        try:
            info = self._verifyPeer()
        except SecurityError as e:
            self._fail(e)
            return
        except Exception:
            _log.failure("Unexpected error verifying TLS peer")
            self._fail(HandshakeFailed("internal error verifying the peer"))
            return
        try:
            upper = self._upperFactory(info)
        except Exception:
            _log.failure("upperFactory failed")
            self._fail(HandshakeFailed("could not create the upper protocol"))
            return
        self._verified = True
        self._upper = upper
        # Rebound on the instance on purpose: the decrypted records go
        # straight into the list, without a method call per record.
        self._plain.dataReceived = self._incoming.append  # type: ignore[method-assign,assignment]
        self.secureTransport = TLSSecureTransport(self._tls, self.transport, info, self)
        try:
            upper.makeConnection(self.secureTransport)
        except Exception:
            _log.failure("Upper protocol failed to start")
            self._fail(HandshakeFailed("the upper protocol failed to start"))
            return
        if not self._settled:
            self._settled = True
            self.handshakeDone.callback(info)

    def _verifyPeer(self) -> SecureInfo:
        conn = self._tls.getHandle()
        cert = conn.get_peer_certificate(as_cryptography=True)
        if cert is None:
            raise InvalidCertificate("peer sent no certificate")
        # OpenSSL's "chain" includes the peer's own certificate on the client
        # side but not on the server side.
        chain = conn.get_peer_cert_chain(as_cryptography=True) or []
        if len(chain) > (1 if self.isInitiator else 0):
            raise InvalidCertificate("peer sent more than one certificate")
        publicKey = verifyCertificate(cert, self._owner.now())
        peer = PeerID.fromPublicKey(publicKey)
        if self.expectedPeer is not None and peer != self.expectedPeer:
            raise PeerIDMismatch(f"expected peer {self.expectedPeer}, got {peer}")
        alpn = conn.get_alpn_proto_negotiated() or None
        return SecureInfo(peer, publicKey, PROTOCOL_ID, self._owner.earlyMuxerFor(alpn))

    def _deliverIncoming(self) -> None:
        """
        Give the upper protocol the plaintext collected so far, as one string.
        """
        incoming = self._incoming
        if not incoming:
            return
        data = incoming[0] if len(incoming) == 1 else b"".join(incoming)
        incoming.clear()
        if self._upper is not None and not self._aborted:
            self._upper.dataReceived(data)

    def _tlsConnectionLost(self, reason: Failure) -> None:
        if self._tlsLost:
            return
        lower = self._lowerReason
        if self._closeSent and lower is not None and lower.check(ConnectionDone):
            # We closed first and did not wait for the peer's close_notify,
            # so Twisted calls the end of input an unclean EOF; it was ours.
            reason = lower
        try:
            # Plaintext that arrived with the close still belongs to the peer.
            self._deliverIncoming()
        except Exception:
            _log.failure("Upper protocol failed on its last data")
        self._tlsLost = True
        upper, self._upper = self._upper, None
        if upper is not None:
            upper.connectionLost(reason)

    # -- failure --------------------------------------------------------------

    def _fail(self, err: SecurityError) -> None:
        """
        Settle C{handshakeDone} with C{err}, log it, abort the connection.
        """
        if self._settled:
            return
        self._settled = True
        _log.info(
            "TLS handshake with {peer} failed: {error}", peer=self._peer(), error=err
        )
        self._abort()
        self.handshakeDone.errback(Failure(err))

    def _abort(self) -> None:
        if self._lowerLost or self._aborted:
            return
        self._aborted = True
        if self._tlsStarted and not self._tlsLost and self._tls.connected:
            # Also marks the TLS layer aborted, so no further plaintext is
            # decrypted for anyone.
            try:
                self._tls.abortConnection()
                return
            except Exception:
                pass
        if self.transport is not None:
            self.transport.abortConnection()

    def _peer(self) -> Any:
        if self.transport is None:
            return None
        try:
            return self.transport.getPeer()
        except Exception:
            return None
