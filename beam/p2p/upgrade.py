"""
Turning a raw TCP connection into a libp2p peer connection.

The layers, bottom up (libp2p/specs connections/README.md)::

    TCP  ->  multistream-select (security)  ->  Noise | TLS
         ->  multistream-select (muxer)     ->  yamux  ->  streams

Each stage is an ordinary Twisted protocol.  A TCP connection's protocol
is fixed for its life, so L{UpgradingProtocol} is a small delegating
protocol whose inner protocol changes as the stages complete; the secure
channel does the same one level up with L{_MuxerStage}.  Bytes that arrive
with the last message of one stage belong to the next and are passed on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional, Sequence

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, IProtocol, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from beam.errors import BeamError, ConnectionLimitExceeded, HandshakeFailed, MuxerClosed, describe
from beam.identity.keys import PeerID
from beam.p2p.interfaces import IAbortableTransport
from beam.p2p.multistream import MultistreamDialer, MultistreamListener, MultistreamProtocol
from beam.p2p.security.interfaces import ISecureTransport, SecureInfo

if TYPE_CHECKING:
    from beam.p2p.connection import PeerConnection

YAMUX_PROTOCOL = "/yamux/1.0.0"


class _Delegating(Protocol):
    """
    A protocol that forwards everything to a replaceable inner protocol.

    @ivar transport: the raw connection (TCP, the memory pipe) or, one
        level up, the secure channel.
    """

    transport: Optional[IAbortableTransport]
    inner: Optional[IProtocol] = None

    def setInner(self, inner: IProtocol, leftover: bytes = b"") -> None:
        assert self.transport is not None  # only called once connected
        self.inner = inner
        inner.makeConnection(self.transport)
        if leftover:
            inner.dataReceived(leftover)

    def dataReceived(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.dataReceived(data)

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        if self.inner is not None:
            self.inner.connectionLost(reason)


class UpgradingProtocol(_Delegating):
    """
    The protocol of one TCP connection, from accept/connect to a
    L{PeerConnection}.

    L{done} fires with the L{PeerConnection} once security and the muxer
    are negotiated, or fails (and the TCP connection is aborted) on any
    error or after C{handshakeTimeout} seconds.
    """

    log = Logger()

    def __init__(
        self,
        *,
        clock: IReactorTime,
        securities: Sequence[ISecureTransport],
        isInitiator: bool,
        expectedPeer: Optional[PeerID],
        makeConnection: Callable[["UpgradingProtocol", SecureInfo, object], "PeerConnection"],
        handshakeTimeout: float,
        onConnected: Callable[["UpgradingProtocol"], bool] | None = None,
        address: object = None,
    ) -> None:
        """
        @param address: the address dialled (a L{Multiaddr}), named when
            the handshake times out; without it, the raw connection's
            peer address is.
        """
        self.clock = clock
        self.securities = {s.protocolId: s for s in securities}
        self.securityOrder = [s.protocolId for s in securities]
        self.isInitiator = isInitiator
        self.expectedPeer = expectedPeer
        self._makePeerConnection = makeConnection
        self.handshakeTimeout = handshakeTimeout
        self._onConnected = onConnected
        self.done: Deferred[PeerConnection] = Deferred()
        self.finished = False
        self.info: Optional[SecureInfo] = None
        self._timer: Optional[IDelayedCall] = None
        self.address = address
        self._heard = False

    def dataReceived(self, data: bytes) -> None:
        self._heard = True
        super().dataReceived(data)

    def connectionMade(self) -> None:
        if self._onConnected is not None and not self._onConnected(self):
            # Not logged here: the node counts refusals and logs them at
            # most once per interval (a flood must not flood the log).
            self._fail(Failure(ConnectionLimitExceeded(
                "the node refused the connection (stopping, or at a connection limit)"
            )), quiet=True)
            return
        self._timer = self.clock.callLater(self.handshakeTimeout, self._timedOut)
        negotiator: MultistreamDialer | MultistreamListener
        if self.isInitiator:
            negotiator = MultistreamDialer(self.securityOrder)
        else:
            negotiator = MultistreamListener(list(self.securityOrder))
        self.setInner(MultistreamProtocol(negotiator, self._securitySelected, self._fail))

    def _timedOut(self) -> None:
        self._timer = None
        self._fail(Failure(HandshakeFailed(self._timeoutText())))
        assert self.transport is not None  # the timer starts in connectionMade
        self.transport.abortConnection()

    def _timeoutText(self) -> str:
        """
        Why the upgrade timed out, in words a person can act on: which
        address, and whether the other side said nothing at all (a port
        that accepts TCP but is not a libp2p node, or a stalled one) or
        stopped halfway.
        """
        where = self._where()
        within = f"within {self.handshakeTimeout:g} s"
        if not self.isInitiator:
            return f"the peer{where} connected but did not finish the libp2p handshake {within}"
        if self._heard:
            return f"the host{where} started the libp2p handshake but did not finish it {within}"
        return f"the host{where} accepted the connection but did not answer the libp2p handshake {within}"

    def _where(self) -> str:
        if self.address is not None:
            return f" at {self.address}"
        peer = self.transport.getPeer() if self.transport is not None else None
        if isinstance(peer, IPv4Address):
            return f" at /ip4/{peer.host}/tcp/{peer.port}"
        if isinstance(peer, IPv6Address):
            return f" at /ip6/{peer.host}/tcp/{peer.port}"
        return ""

    def _securitySelected(self, protocolId: str, leftover: bytes) -> None:
        security = self.securities[protocolId]
        channel = security.wrap(self.isInitiator, self.expectedPeer, self._makeMuxerStage)
        channel.handshakeDone.addErrback(self._fail)
        self.setInner(channel, leftover)

    def _makeMuxerStage(self, info: SecureInfo) -> IProtocol:
        self.info = info
        return _MuxerStage(self, info)

    def _muxerReady(self, stage: "_MuxerStage", secureTransport: object) -> "PeerConnection":
        assert self.info is not None
        return self._makePeerConnection(self, self.info, secureTransport)

    def _succeed(self, conn: "PeerConnection") -> None:
        if self.finished:
            return
        self.finished = True
        self._cancelTimer()
        self.done.callback(conn)

    def _fail(self, failure: Failure, quiet: bool = False) -> None:
        if self.finished:
            return
        self.finished = True
        self._cancelTimer()
        if not quiet:
            self.log.info(
                "connection with {peer} failed during upgrade: {reason}",
                peer=self.transport.getPeer() if self.transport else None,
                reason=describe(failure),
            )
        if self.transport is not None:
            self.transport.abortConnection()
        self.done.errback(failure)

    def _cancelTimer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        super().connectionLost(reason)
        if not self.finished:
            if reason.check(BeamError) is None:
                reason = Failure(HandshakeFailed(
                    f"the peer closed the connection during the handshake ({describe(reason)})"
                ))
            self._fail(reason)


class _MuxerStage(_Delegating):
    """
    The protocol over the secure channel: negotiate yamux (unless the
    security handshake already agreed on it), then hand over to the session.
    """

    log = Logger()

    def __init__(self, upgrading: UpgradingProtocol, info: SecureInfo) -> None:
        self.upgrading = upgrading
        self.info = info

    def connectionMade(self) -> None:
        if self.info.earlyMuxer == YAMUX_PROTOCOL:
            self._selected(YAMUX_PROTOCOL, b"")
            return
        negotiator: MultistreamDialer | MultistreamListener
        if self.upgrading.isInitiator:
            negotiator = MultistreamDialer([YAMUX_PROTOCOL])
        else:
            negotiator = MultistreamListener([YAMUX_PROTOCOL])
        self.setInner(MultistreamProtocol(negotiator, self._selected, self.upgrading._fail))

    def _selected(self, protocolId: str, leftover: bytes) -> None:
        if self.upgrading.finished:
            return
        try:
            conn = self.upgrading._muxerReady(self, self.transport)
            self.setInner(conn.session)
        except ConnectionLimitExceeded:
            # The node refused the finished connection (counted and
            # logged there, at most once per interval).
            self.upgrading._fail(Failure(), quiet=True)
            return
        except Exception:
            # Our bug, not the peer's: say so (rather than letting the
            # secure channel report a vague handshake failure) and drop
            # only this connection.
            failure = Failure()
            self.log.failure("setting up the connection with {peer} failed", failure=failure,
                             peer=self.upgrading.transport.getPeer() if self.upgrading.transport else None)
            self.upgrading._fail(failure)
            return
        self.upgrading._succeed(conn)
        if leftover:
            conn.session.dataReceived(leftover)


__all__ = ["UpgradingProtocol", "YAMUX_PROTOCOL", "MuxerClosed"]
