"""
The contract every secure channel (Noise, TLS) fulfils, so the connection
upgrader can treat them alike.

A secure transport is chosen by multistream-select under its L{protocolId}.
L{ISecureTransport.wrap} returns a L{SecureChannel}: a Twisted protocol that
the upgrader connects to the raw (TCP) transport.  The channel runs the
handshake, checks the remote peer ID, then builds the upper protocol (the
muxer negotiation) with C{upperFactory(info)} and connects it to an
encrypted transport.
"""

from __future__ import annotations

from typing import Callable, Optional

import attr
from twisted.internet.interfaces import IProtocol
from zope.interface import Attribute, Interface

from beam.identity.keys import PeerID, PublicKey


@attr.s(frozen=True, auto_attribs=True)
class SecureInfo:
    """
    What a completed handshake established.

    @ivar remotePeer: the authenticated peer ID of the other side.
    @ivar remotePublicKey: its public key.
    @ivar protocolId: the security protocol used (C{/noise}, C{/tls/1.0.0}).
    @ivar earlyMuxer: a muxer agreed inside the handshake (Noise extensions
        or TLS ALPN), or L{None} when multistream-select must pick one.
    """

    remotePeer: PeerID
    remotePublicKey: PublicKey
    protocolId: str
    earlyMuxer: Optional[str] = None


class ISecureChannel(IProtocol):
    """
    A protocol on the raw transport that secures it.

    Contract:
      - C{makeConnection(lower)} starts the handshake (the initiator writes
        its first message at once).
      - C{handshakeDone} fires with L{SecureInfo} once the peer is
        authenticated, or errbacks with L{beam.errors.SecurityError}
        (L{beam.errors.PeerIDMismatch} when C{expectedPeer} was not met);
        on failure the lower transport is aborted and the reason logged.
      - On success the channel calls C{upperFactory(info)} and connects the
        returned protocol to an encrypted transport that provides
        C{ITransport}, C{IConsumer} (C{registerProducer} passes through to
        the lower transport, so TCP back-pressure reaches the upper layer)
        and C{IPushProducer} (pausing it pauses reading from the lower
        transport), and carries C{remotePeer} and C{remotePublicKey}
        attributes.  Bytes that arrived together with the last handshake
        message are delivered, not lost.
      - Connection loss of the lower transport is passed to the upper
        protocol's C{connectionLost}.
      - C{dataReceived} never raises: malformed input is logged and the
        lower transport is aborted.
    """

    handshakeDone = Attribute("Deferred[SecureInfo]")


class ISecureTransport(Interface):
    """
    A factory of secure channels for one security protocol.
    """

    protocolId = Attribute("The multistream protocol ID, e.g. '/noise'.")

    def wrap(
        isInitiator: bool,
        expectedPeer: Optional[PeerID],
        upperFactory: Callable[[SecureInfo], IProtocol],
    ) -> ISecureChannel:
        """
        Make a channel for one connection.

        @param isInitiator: we dialled (Noise initiator / TLS client).
        @param expectedPeer: the peer ID we dialled, if known; a different
            authenticated peer fails the handshake with
            L{beam.errors.PeerIDMismatch}.
        @param upperFactory: builds the protocol that runs over the secure
            channel once the peer is known.
        """
