"""
The one exception hierarchy of Beam.

Every error a user can meet derives from L{BeamError}.  The first line of an
error's docstring is what the command line prints when no more specific message
was given, so write it for a user, not for a developer.
"""

from __future__ import annotations


class BeamError(Exception):
    """
    Something went wrong in Beam.
    """

    def __str__(self) -> str:
        if self.args:
            return " ".join(str(a) for a in self.args)
        doc = (type(self).__doc__ or "").strip().splitlines()
        return doc[0] if doc else type(self).__name__


class ProtocolError(BeamError):
    """
    A peer sent bytes that do not follow the protocol.
    """


class MessageTooLarge(ProtocolError):
    """
    A peer announced a message larger than we accept.
    """


class DecodeError(ProtocolError):
    """
    A message could not be decoded.
    """


class InvalidMultiaddr(BeamError, ValueError):
    """
    That is not a valid multiaddr.
    """


class InvalidPeerID(BeamError, ValueError):
    """
    That is not a valid peer ID.
    """


class InvalidKey(BeamError):
    """
    The key is malformed or of an unsupported type.
    """


class SecurityError(BeamError):
    """
    The secure channel could not be established.
    """


class HandshakeFailed(SecurityError):
    """
    The security handshake with the peer failed.
    """


class PeerIDMismatch(SecurityError):
    """
    The peer answered with a different peer ID than the one we dialled.
    """


class NegotiationFailed(ProtocolError):
    """
    The peer does not support any of the protocols we offered.
    """


class StreamReset(BeamError):
    """
    The stream was reset by the peer.
    """


class MuxerClosed(BeamError):
    """
    The peer connection is closed.
    """


class StreamLimitExceeded(BeamError):
    """
    Too many streams are open on this connection.
    """


class ConnectionLimitExceeded(BeamError):
    """
    Too many peer connections are open.
    """


class DialError(BeamError):
    """
    Could not connect to the peer.
    """


class NodeStopped(BeamError):
    """
    The node stopped before the operation finished.
    """


class PingTimeout(BeamError):
    """
    The peer did not answer the ping in time.
    """


class DecryptionFailed(SecurityError, ProtocolError):
    """
    A message from the peer failed authentication, so the connection was closed.
    """


class InvalidCertificate(HandshakeFailed):
    """
    The peer's TLS certificate does not prove its libp2p identity.
    """


class UnexpectedMessage(ProtocolError):
    """
    The peer sent a message that makes no sense at this point of the protocol.
    """


class TooManyProposals(ProtocolError):
    """
    The peer proposed too many protocols that we do not support.
    """


class NotFound(BeamError):
    """
    There is no such thing on this node.
    """


class Conflict(BeamError):
    """
    That conflicts with something already set up on this node.
    """


class InvalidDHTMessage(DecodeError):
    """
    A peer sent a malformed DHT message.
    """


class InvalidRecord(BeamError):
    """
    The record is not valid.
    """


class RecordRefused(BeamError):
    """
    The record was not stored: the store is full, the sender is over its quota, or a better record is held.
    """
