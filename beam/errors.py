"""
The one exception hierarchy of Beam.

Every error a user can meet derives from L{BeamError}.  The first line of an
error's docstring is what the command line prints when no more specific message
was given, so write it for a user, not for a developer.

L{describe} turns any exception or Failure (Beam's, Twisted's, the OS's,
however wrapped) into the one plain line a user should read.
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


class TorError(BeamError):
    """
    Tor could not be started, or the onion service could not be published.
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


# -- one line for a user ----------------------------------------------------------
#
# Everything below turns whatever a Deferred failed with into words for the
# command line.  Twisted's own texts ("Connection was closed cleanly.") are
# fine in a log, but a Failure's str() is a traceback dump, and wrappers
# (Failure around Failure, DeferredList's FirstError, twisted.web's
# ResponseFailed) print their contents' reprs.  The imports are local:
# this module sits below everything and must stay cheap to import.

_MAX_DEPTH = 16


def rootCause(error: object) -> BaseException:
    """
    The exception that really happened: C{error} itself, or what a
    L{Failure<twisted.python.failure.Failure>} (however deeply nested),
    a L{FirstError<twisted.internet.defer.FirstError>}, or a
    C{twisted.web} C{ResponseFailed} (its first reason) carries.
    """
    from twisted.internet.defer import FirstError
    from twisted.python.failure import Failure

    current: object = error
    for _ in range(_MAX_DEPTH):
        if isinstance(current, Failure):
            current = current.value
        elif isinstance(current, FirstError):
            current = current.subFailure
        # Duck-typed (twisted.web's ResponseFailed and its kin carry a list
        # of Failures in .reasons), so mypy cannot see the attribute.
        elif (
            not isinstance(current, BeamError)
            and isinstance(getattr(current, "reasons", None), list)
            and current.reasons  # type: ignore[attr-defined]
        ):
            current = current.reasons[0]  # type: ignore[attr-defined]
        else:
            break
    if isinstance(current, BaseException):
        return current
    return BeamError(str(current))


def _plainWords() -> list[tuple[type[BaseException], str]]:
    """
    Words for the exceptions users meet, most specific first.
    """
    import asyncio

    from twisted.internet import defer, error

    return [
        (error.ConnectionDone, "the connection was closed"),
        (error.ConnectionAborted, "the connection was aborted"),
        (error.ConnectionLost, "the connection was lost"),
        (error.ConnectionClosed, "the connection was closed"),
        (error.ConnectionRefusedError, "the connection was refused"),
        (ConnectionRefusedError, "the connection was refused"),
        (error.TCPTimedOutError, "the connection timed out"),
        (error.TimeoutError, "the connection timed out"),
        (error.NoRouteError, "no route to the host"),
        (error.DNSLookupError, "the host name could not be resolved"),
        (error.ConnectingCancelledError, "connecting was cancelled"),
        (defer.TimeoutError, "timed out"),
        (TimeoutError, "timed out"),
        (defer.CancelledError, "cancelled"),
        (asyncio.CancelledError, "cancelled"),
        (ConnectionResetError, "the connection was reset"),
        (BrokenPipeError, "the connection was closed"),
    ]


def _qualifiedName(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _scrub(text: str) -> str:
    """
    Replace Failure reprs embedded in a message (and the C{FirstError[...]}
    or list brackets around them) by their plain words.
    """
    import re

    if "Failure" not in text:
        return text
    words = {_qualifiedName(cls): plain for cls, plain in reversed(_plainWords())}
    mark = "\x00"

    def replace(match: "re.Match[str]") -> str:
        plain = words.get(match.group("cls"), match.group("msg").strip().rstrip("."))
        return mark + plain + mark

    # str(Failure): "[Failure instance: Traceback...: <class 'X'>: msg\n...]"
    text = re.sub(
        r"\[Failure instance: Traceback[^<]*<class '(?P<cls>[^']+)'>: (?P<msg>[^\n\]]*)[^\]]*\]",
        replace, text,
    )
    # repr(Failure): "<twisted.python.failure.Failure X: msg>"
    text = re.sub(r"<twisted\.python\.failure\.Failure (?P<cls>[\w.]+): (?P<msg>[^>]*)>", replace, text)
    replaced = f"{mark}[^{mark}]*{mark}"

    def joined(match: "re.Match[str]") -> str:
        # A failure without a message (twisted.web's _DataLoss) says nothing.
        items = [item for item in re.findall(f"{mark}([^{mark}]*){mark}", match.group(1)) if item]
        return ", ".join(items)

    # FirstError[#0, <failure>] and [<failure>, <failure>] (ResponseFailed)
    text = re.sub(rf"FirstError\[#\d+, ({replaced})\]", joined, text)
    text = re.sub(rf"\[((?:{replaced}(?:, )?)+)\]", joined, text)
    return text.replace(mark + mark, "; ").replace(mark, "")


def _oneLine(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return "; ".join(lines)


def describe(error: object) -> str:
    """
    One plain line saying what went wrong, for a user to read.

    Takes an exception or a L{Failure<twisted.python.failure.Failure>}
    (nested ones, C{FirstError} and C{ResponseFailed} are unwrapped, see
    L{rootCause}).  A L{BeamError} says its own message; connection
    errors, timeouts and DNS failures become plain words ("the connection
    was closed", "the connection was refused", ...); an L{OSError} its
    C{strerror} (and file name); anything else its message, or its
    docstring's first line when it has none.  Never a traceback or a
    repr: use this wherever an error reaches the command line, the
    control API or a status value.
    """
    from twisted.internet import error as netError

    cause = rootCause(error)
    if isinstance(cause, BeamError):
        return _oneLine(_scrub(str(cause))) or type(cause).__name__
    for cls, plain in _plainWords():
        if isinstance(cause, cls):
            if isinstance(cause, netError.DNSLookupError) and cause.args:
                detail = _oneLine(" ".join(str(a) for a in cause.args)).rstrip(".")
                return f"{plain} ({detail})" if detail else plain
            return plain
    if isinstance(cause, netError.CannotListenError):
        why = cause.socketError
        reason = getattr(why, "strerror", None) or _oneLine(str(why)) or "cannot listen"
        return f"cannot listen on {cause.interface or '*'}:{cause.port}: {reason}"
    if isinstance(cause, netError.ConnectError):
        words = _oneLine(" ".join(str(a) for a in cause.args if a)).rstrip(".")
        if not words and isinstance(cause.osError, int):
            import os

            words = os.strerror(cause.osError)
        return f"could not connect: {words}" if words else "could not connect"
    if isinstance(cause, OSError) and cause.strerror:
        return f"{cause.strerror}: {cause.filename}" if cause.filename else str(cause.strerror)
    text = _oneLine(_scrub(str(cause))).rstrip(".")
    if text:
        return text
    doc = (type(cause).__doc__ or "").strip().splitlines()
    return doc[0].strip().rstrip(".") if doc else type(cause).__name__
