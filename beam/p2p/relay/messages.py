"""
The wire of circuit relay v2: protocol IDs, status codes, the hop and stop
messages (uvarint-length-prefixed protobufs of L{beam.proto.circuitv2_pb2},
exactly as libp2p/specs relay/circuit-v2.md has them, so js-libp2p and
go-libp2p peers understand us), their checked decoders, and
L{FramedProtocol}: the stream protocol that reads one message at a time
and then hands the very same stream over to raw bytes (the relayed
connection).

Everything a peer sends is bounded: a message announcing more than
L{MAX_MESSAGE} bytes is refused before anything is buffered for it, and a
message that does not parse, lacks its type, or names an invalid peer ID
is a L{RelayMessageError}.
"""

from __future__ import annotations

import enum
from typing import Any, Optional, Union

import attrs
from twisted.internet.interfaces import IHalfCloseableProtocol, IProtocol
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from beam.encoding.framing import encodeLengthPrefixed
from beam.encoding.varint import decode_uvarint
from beam.errors import BeamError, DecodeError, DialError, MessageTooLarge, ProtocolError
from beam.identity.keys import PeerID
from beam.identity.multiaddr import Multiaddr
from beam.proto import circuitv2_pb2 as pb

HOP_PROTOCOL = "/libp2p/circuit/relay/0.2.0/hop"
STOP_PROTOCOL = "/libp2p/circuit/relay/0.2.0/stop"

#: The largest hop or stop message we read or write (a reservation with a
#: voucher and a dozen addresses is well under 1 KiB).
MAX_MESSAGE = 4096
#: The most relay addresses taken from, or put into, one message.
MAX_ADDRS = 16

HopMessage = pb.HopMessage
StopMessage = pb.StopMessage


class Status(enum.IntEnum):
    """
    The spec's status codes.
    """

    UNUSED = 0
    OK = 100
    RESERVATION_REFUSED = 200
    RESOURCE_LIMIT_EXCEEDED = 201
    PERMISSION_DENIED = 202
    CONNECTION_FAILED = 203
    NO_RESERVATION = 204
    MALFORMED_MESSAGE = 400
    UNEXPECTED_MESSAGE = 401


#: One line per refusal, in the words the CLI prints.
STATUS_WORDS = {
    Status.RESERVATION_REFUSED: "the relay refused the reservation",
    Status.RESOURCE_LIMIT_EXCEEDED: "the relay is at a resource limit",
    Status.PERMISSION_DENIED: "the relay denied permission",
    Status.CONNECTION_FAILED: "the relay could not reach the peer",
    Status.NO_RESERVATION: "the peer holds no reservation on the relay",
    Status.MALFORMED_MESSAGE: "the relay could not parse our message",
    Status.UNEXPECTED_MESSAGE: "the relay did not expect our message",
}


class RelayError(BeamError):
    """
    Something about a relay went wrong.
    """


class RelayMessageError(ProtocolError, RelayError):
    """
    A relay message was oversized, malformed or unexpected; the stream it
    came on is reset.
    """


class RelayRefused(DialError, RelayError):
    """
    The relay (or, for a stop, the target) answered with a status other
    than OK.  A L{DialError}: the dialler tries its next address.

    @ivar status: the L{Status} it answered.
    """

    def __init__(self, status: int, who: str = "the relay") -> None:
        self.status = status
        try:
            words = STATUS_WORDS[Status(status)]
        except (ValueError, KeyError):
            words = "the relay refused"
        if who != "the relay":
            words = words.replace("the relay", who, 1)
        name = Status(status).name if status in Status._value2member_map_ else str(status)
        super().__init__(f"{words} ({name})")


@attrs.frozen
class Limit:
    """
    The limits of one relayed connection: C{duration} seconds and C{data}
    bytes in each direction; 0 means none.
    """

    duration: int = 0
    data: int = 0

    @property
    def unlimited(self) -> bool:
        return not self.duration and not self.data

    def toProto(self) -> pb.Limit:
        return pb.Limit(duration=self.duration, data=self.data)

    @classmethod
    def fromProto(cls, msg: Any, present: bool) -> Optional["Limit"]:
        """
        The limit in C{msg} (L{None} when the message carried none: the
        relay applies no limit).
        """
        if not present:
            return None
        return cls(duration=int(msg.duration), data=int(msg.data))


# -- decoding --------------------------------------------------------------

def _parse(message: Any, data: bytes, what: str) -> None:
    if len(data) > MAX_MESSAGE:
        raise RelayMessageError(f"{what} of {len(data)} bytes exceeds the limit of {MAX_MESSAGE}")
    try:
        message.ParseFromString(bytes(data))
    except Exception as e:  # protobuf's DecodeError, and others on odd input
        raise RelayMessageError(f"malformed {what}: {e}") from None
    if not message.HasField("type"):
        raise RelayMessageError(f"{what} without a type")
    if message.type not in message.Type.values():
        raise RelayMessageError(f"{what} of unknown type {message.type}")
    if message.HasField("peer"):
        peerOf(message, what)
    if message.type == message.STATUS and not message.HasField("status"):
        raise RelayMessageError(f"{what} STATUS without a status")


def decodeHop(data: bytes) -> pb.HopMessage:
    """
    A hop message from its bytes (the length prefix already removed).

    @raise RelayMessageError: oversized, malformed, no or unknown type,
        an invalid peer ID, a STATUS without status.
    """
    message = pb.HopMessage()
    _parse(message, data, "hop message")
    return message


def decodeStop(data: bytes) -> pb.StopMessage:
    """
    A stop message from its bytes; as L{decodeHop}.
    """
    message = pb.StopMessage()
    _parse(message, data, "stop message")
    return message


def peerOf(message: Any, what: str = "relay message") -> PeerID:
    """
    The peer ID in C{message.peer}.

    @raise RelayMessageError: none, or not a valid peer ID.
    """
    if not message.HasField("peer") or not message.peer.HasField("id"):
        raise RelayMessageError(f"{what} names no peer")
    try:
        return PeerID(message.peer.id)
    except BeamError as e:
        raise RelayMessageError(f"{what} names an invalid peer ID: {e}") from None


def addrsOf(raw: Any) -> list[Multiaddr]:
    """
    The valid multiaddrs among C{raw} (bytes each), at most L{MAX_ADDRS};
    the invalid ones are skipped (a peer's address list is advice).
    """
    out: list[Multiaddr] = []
    for item in list(raw)[:MAX_ADDRS]:
        try:
            out.append(Multiaddr.fromBytes(bytes(item)))
        except BeamError:
            continue
    return out


def frame(message: Union[pb.HopMessage, pb.StopMessage]) -> bytes:
    """
    C{message} length-prefixed, ready to write.
    """
    data = message.SerializeToString(deterministic=True)
    if len(data) > MAX_MESSAGE:
        raise ValueError(f"relay message of {len(data)} bytes exceeds {MAX_MESSAGE}")
    return encodeLengthPrefixed(data)


def hopStatus(status: Status, limit: Optional[Limit] = None, reservation: Optional[pb.Reservation] = None) -> bytes:
    """
    A framed hop STATUS.
    """
    msg = pb.HopMessage(type=pb.HopMessage.STATUS, status=int(status))
    if limit is not None and not limit.unlimited:
        msg.limit.CopyFrom(limit.toProto())
    if reservation is not None:
        msg.reservation.CopyFrom(reservation)
    return frame(msg)


def stopStatus(status: Status) -> bytes:
    """
    A framed stop STATUS.
    """
    return frame(pb.StopMessage(type=pb.StopMessage.STATUS, status=int(status)))


# -- the stream protocol ------------------------------------------------------

@implementer(IHalfCloseableProtocol)
class FramedProtocol(Protocol):
    """
    A stream that starts with length-prefixed relay messages and may then
    become a raw byte stream: subclasses get each message in
    L{messageReceived} and, once the exchange is done, call L{handOver}
    with the protocol that takes the rest of the stream (the connection
    upgrade on an endpoint, the other half of the circuit on the relay).

    A message over L{MAX_MESSAGE} bytes or a bad length prefix resets the
    stream and calls L{failed}; so does the stream ending in a message.
    """

    maxSize = MAX_MESSAGE

    def __init__(self) -> None:
        self._buf = bytearray()
        self.upper: Optional[IProtocol] = None
        self._stopped = False

    # -- subclass API ---------------------------------------------------

    def messageReceived(self, data: bytes) -> None:
        """
        One complete message (override).
        """

    def failed(self, reason: Failure) -> None:
        """
        The exchange failed before L{handOver} (override): the stream ended
        or sent something bad.
        """

    def handOver(self, upper: IProtocol) -> bytes:
        """
        From now on the stream's bytes go to C{upper}, and its end too.

        @return: bytes that arrived after the last message (the caller
            gives them to C{upper} once it is connected).
        """
        self.upper = upper
        leftover, self._buf = bytes(self._buf), bytearray()
        return leftover

    def reject(self, reason: BaseException, answer: bytes = b"") -> None:
        """
        Write C{answer} (a status), reset the stream and fail with
        C{reason}.
        """
        if self._stopped:
            return
        self._stopped = True
        # Nothing more is read from this stream: what it sent goes now.
        self._buf = bytearray()
        if self.transport is not None:
            if answer:
                self.transport.write(answer)
            self.transport.abortConnection()  # type: ignore[attr-defined]  # streams are abortable
        self.failed(Failure(reason))

    # -- Protocol -------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.upper is not None:
            self.upper.dataReceived(data)
            return
        if self._stopped:
            return
        self._buf += data
        while self.upper is None and not self._stopped:
            try:
                header = decode_uvarint(self._buf)
            except DecodeError as e:
                self.reject(RelayMessageError(f"bad relay message length: {e}"))
                return
            if header is None:
                return
            length, start = header
            if length > self.maxSize:
                self.reject(MessageTooLarge(f"relay message of {length} bytes exceeds the limit of {self.maxSize}"))
                return
            if len(self._buf) - start < length:
                return
            message = bytes(self._buf[start:start + length])
            del self._buf[:start + length]
            self.messageReceived(message)

    def readConnectionLost(self) -> None:
        upper = self.upper
        if upper is not None:
            if IHalfCloseableProtocol.providedBy(upper):
                upper.readConnectionLost()
            elif self.transport is not None:
                self.transport.loseConnection()
        # Before the hand-over a FIN changes nothing: the peer may half-close
        # after its request and still wait for our answer; a stream that
        # never completes its message is ended by its owner's timeout.

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.upper is not None:
            self.upper.connectionLost(reason)
            return
        if not self._stopped:
            self._stopped = True
            self.failed(reason)
