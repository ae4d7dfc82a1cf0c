"""
multistream-select 1.0: agreeing on a protocol for a connection or stream.

Specs: multiformats/multistream-select README and libp2p/specs
C{connections/README.md} ("Protocol Negotiation").  Every message is an
unsigned varint length, then that many bytes of UTF-8 ending in C{"\\n"}
(the newline counts in the length).  Both sides first send the header
C{/multistream/1.0.0}; the dialer then proposes protocols one at a time and
the listener echoes the one it accepts or answers C{na}.  A dialer may also
send C{ls}, answered by one message whose payload is the supported
protocols, each itself a length-prefixed, newline-terminated message,
followed by a final newline.

The wire work is sans-IO: L{MultistreamDialer} and L{MultistreamListener}
take bytes in C{feed()} and return the bytes to send, never touching a
transport.  L{MultistreamProtocol} is the thin Twisted adapter that runs
either on any transport (a TCP connection, a secure channel, a yamux
stream) and hands over to the chosen protocol.

As the spec recommends, the dialer pipelines the header with its first
proposal and the listener answers the header together with its first
response, so a successful negotiation takes one round trip.
"""

from __future__ import annotations

from typing import Callable, Collection, Optional, Sequence, Union

from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from beam.errors import (
    DecodeError,
    MessageTooLarge,
    NegotiationFailed,
    ProtocolError,
    TooManyProposals,
    UnexpectedMessage,
)
from beam.encoding.varint import decode_uvarint, encode_uvarint

PROTOCOL_ID = "/multistream/1.0.0"
"""The multistream-select header."""

NA = "na"
LS = "ls"

MAX_MESSAGE = 1024
"""The largest message length (payload with its newline) we accept, as
go-multistream; a longer one is refused as soon as its varint is read."""

MAX_FAILED_PROPOSALS = 32
"""How many unsupported proposals (and C{ls} requests) a listener answers
before it gives up on the peer."""


def encodeMessage(text: str) -> bytes:
    """
    Frame one multistream message: varint length, UTF-8 text, newline.

    @raise ValueError: the message would exceed L{MAX_MESSAGE}, so no
        conforming peer would read it.
    """
    payload = text.encode("utf-8") + b"\n"
    if len(payload) > MAX_MESSAGE:
        raise ValueError(f"multistream message longer than {MAX_MESSAGE} bytes")
    return encode_uvarint(len(payload)) + payload


def encodeProtocolList(protocols: Sequence[str]) -> bytes:
    """
    Frame the answer to C{ls}: one message whose payload is each protocol as
    an embedded message, then the final newline (the format of the spec's
    "ls example in detail" and go-multistream's former C{Ls}).

    Protocols that would push the answer past L{MAX_MESSAGE} are left out,
    since a peer would refuse the whole answer otherwise.
    """
    inner = bytearray()
    for proto in protocols:
        try:
            entry = encodeMessage(proto)
        except ValueError:
            continue
        if len(inner) + len(entry) + 1 > MAX_MESSAGE:
            break
        inner += entry
    payload = bytes(inner) + b"\n"
    return encode_uvarint(len(payload)) + payload


def decodeProtocolList(payload: bytes) -> list[str]:
    """
    Parse the payload of an C{ls} answer (without its final newline, as
    L{MultistreamDialer} and friends deliver message payloads).

    @raise DecodeError: the payload is not a list of embedded messages.
    """
    out = []
    off = 0
    while off < len(payload):
        header = decode_uvarint(payload, off)
        if header is None:
            raise DecodeError("truncated protocol list")
        length, off = header
        end = off + length
        if length == 0 or end > len(payload) or payload[end - 1:end] != b"\n":
            raise DecodeError("malformed protocol list entry")
        out.append(_decodeText(payload[off:end - 1]))
        off = end
    return out


def _decodeText(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError("multistream message is not UTF-8") from None


class _MessageReader:
    """
    Split a byte stream into message payloads.

    Only an incomplete message is ever buffered, and it is refused as soon
    as its length exceeds L{MAX_MESSAGE}, so memory stays bounded.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next(self) -> Optional[bytes]:
        """
        The next payload without its newline, or L{None} if incomplete.

        @raise ProtocolError: the message is oversized or malformed.
        """
        header = decode_uvarint(self._buffer)
        if header is None:
            return None
        length, off = header
        if length > MAX_MESSAGE:
            raise MessageTooLarge(
                f"multistream message of {length} bytes (the limit is {MAX_MESSAGE})"
            )
        if length == 0:
            raise DecodeError("empty multistream message (it must end with a newline)")
        if len(self._buffer) < off + length:
            return None
        payload = bytes(self._buffer[off:off + length])
        del self._buffer[:off + length]
        if payload[-1:] != b"\n":
            raise DecodeError("multistream message does not end with a newline")
        return payload[:-1]

    def rest(self) -> bytes:
        data = bytes(self._buffer)
        self._buffer.clear()
        return data


class _Negotiator:
    """
    What dialer and listener share: feeding, the outcome, and remembering a
    failure so that a broken negotiation stays broken.

    @ivar done: negotiation finished successfully.
    @ivar result: the protocol agreed on (for a lazy dialer, the protocol
        assumed from the start).
    @ivar leftover: bytes that followed the final negotiation message; they
        belong to the chosen protocol.
    """

    def __init__(self) -> None:
        self._reader = _MessageReader()
        self._error: Optional[ProtocolError] = None
        self.done = False
        self.result: Optional[str] = None
        self.leftover = b""

    def start(self) -> bytes:
        raise NotImplementedError()

    def feed(self, data: bytes) -> list[bytes]:
        """
        Take bytes from the peer.

        @return: the messages to send, in order (write them together).
        @raise ProtocolError: the peer broke the protocol, or negotiation
            failed (L{NegotiationFailed}, L{TooManyProposals}); every later
            call raises the same error.
        """
        if self._error is not None:
            raise self._error
        if self.done:
            self.leftover += data
            return []
        self._reader.feed(data)
        out: list[bytes] = []
        try:
            while not self.done:
                payload = self._reader.next()
                if payload is None:
                    break
                self._handle(_decodeText(payload), out)
        except ProtocolError as e:
            self._error = e
            self.result = None
            raise
        if self.done:
            self.leftover = self._reader.rest()
        return out

    def _handle(self, message: str, out: list[bytes]) -> None:
        raise NotImplementedError()

    def _succeed(self, protocol: str) -> None:
        self.done = True
        self.result = protocol


class MultistreamDialer(_Negotiator):
    """
    The initiator's side: propose C{protocols} in order of preference until
    the listener accepts one.

    With C{lazy=True} (one protocol only) the caller may assume the protocol
    as soon as L{start} returns and send its own data right after the
    opening bytes, saving a round trip; L{feed} must still be given the
    listener's bytes until L{done}, to check the acceptance and strip it.
    """

    def __init__(self, protocols: Sequence[str], lazy: bool = False) -> None:
        super().__init__()
        self.protocols = list(protocols)
        if not self.protocols:
            raise ValueError("propose at least one protocol")
        if lazy and len(self.protocols) != 1:
            raise ValueError("lazy negotiation proposes exactly one protocol")
        for proto in self.protocols:
            encodeMessage(proto)  # too long to send is a programming error
        self.lazy = lazy
        self._index = 0
        self._started = False
        self._headerSeen = False

    def start(self) -> bytes:
        """
        The opening bytes: the header and the first proposal, pipelined.
        """
        if self._started:
            raise RuntimeError("start() was already called")
        self._started = True
        if self.lazy:
            self.result = self.protocols[0]
        return encodeMessage(PROTOCOL_ID) + encodeMessage(self.protocols[0])

    def feed(self, data: bytes) -> list[bytes]:
        if not self._started:
            raise RuntimeError("call start() before feed()")
        return super().feed(data)

    def _handle(self, message: str, out: list[bytes]) -> None:
        if not self._headerSeen:
            if message != PROTOCOL_ID:
                raise UnexpectedMessage(
                    f"the peer does not speak {PROTOCOL_ID} (it sent {message[:64]!r})"
                )
            self._headerSeen = True
            return
        proposed = self.protocols[self._index]
        if message == proposed:
            self._succeed(proposed)
        elif message == NA:
            self._index += 1
            if self._index >= len(self.protocols):
                raise NegotiationFailed(
                    "the peer supports none of the protocols we offered: "
                    + ", ".join(self.protocols)
                )
            out.append(encodeMessage(self.protocols[self._index]))
        else:
            raise UnexpectedMessage(
                f"the peer answered {message[:64]!r} to our proposal of {proposed!r}"
            )


class MultistreamListener(_Negotiator):
    """
    The responder's side: answer the header, echo the first supported
    proposal, answer C{na} to the others and C{ls} with our protocols.

    @param supported: the protocols we accept, or a predicate deciding.
    @param listProtocols: what to answer to C{ls}; by default the
        C{supported} collection (nothing when C{supported} is a predicate).
    @param maxFailures: unsupported proposals and C{ls} requests answered
        before L{TooManyProposals} ends a peer that just keeps talking.
    """

    def __init__(
        self,
        supported: Union[Callable[[str], bool], Collection[str]],
        listProtocols: Optional[Callable[[], list[str]]] = None,
        maxFailures: int = MAX_FAILED_PROPOSALS,
    ) -> None:
        super().__init__()
        self._isSupported: Callable[[str], bool]
        if callable(supported):
            self._isSupported = supported
            default: list[str] = []
        else:
            ordered = list(supported)
            accepted = frozenset(ordered)
            self._isSupported = accepted.__contains__
            default = ordered
        self._listProtocols = listProtocols or (lambda: list(default))
        self.maxFailures = maxFailures
        self.failures = 0
        self._headerSeen = False

    def start(self) -> bytes:
        """
        Nothing: the listener sends its header together with its first
        answer, once the dialer's header has arrived.
        """
        return b""

    def _handle(self, message: str, out: list[bytes]) -> None:
        if not self._headerSeen:
            if message != PROTOCOL_ID:
                raise UnexpectedMessage(
                    f"the peer does not speak {PROTOCOL_ID} (it sent {message[:64]!r})"
                )
            self._headerSeen = True
            out.append(encodeMessage(PROTOCOL_ID))
            return
        if message != LS and self._isSupported(message):
            out.append(encodeMessage(message))
            self._succeed(message)
            return
        self.failures += 1
        if self.failures > self.maxFailures:
            raise TooManyProposals(
                f"the peer made {self.failures} proposals we do not support"
            )
        if message == LS:
            out.append(encodeProtocolList(self._listProtocols()))
        else:
            out.append(encodeMessage(NA))


Negotiator = Union[MultistreamDialer, MultistreamListener]


class MultistreamProtocol(Protocol):
    """
    Run a negotiator on a transport, then hand over.

    On success C{onSelected(protocolId, leftover)} is called once, after
    our final negotiation message is written; it installs the chosen
    protocol (which must receive C{leftover} first).  On any failure,
    including the connection closing first, C{onFailed(failure)} is called
    once and the transport is aborted.  Exactly one of the two is called,
    at most once; C{dataReceived} never raises.
    """

    log = Logger()

    def __init__(
        self,
        negotiator: Negotiator,
        onSelected: Callable[[str, bytes], None],
        onFailed: Callable[[Failure], None],
    ) -> None:
        self.negotiator = negotiator
        self._onSelected = onSelected
        self._onFailed = onFailed
        self.finished = False

    def connectionMade(self) -> None:
        opening = self.negotiator.start()
        if opening:
            assert self.transport is not None  # set by makeConnection
            self.transport.write(opening)

    def dataReceived(self, data: bytes) -> None:
        if self.finished:
            self._afterFinish(data)
            return
        try:
            replies = self.negotiator.feed(data)
        except ProtocolError:
            self._fail(Failure())
            return
        except Exception:
            self.log.failure("multistream negotiator failed unexpectedly")
            self._fail(Failure())
            return
        if replies:
            assert self.transport is not None  # data arrives only while connected
            self.transport.write(b"".join(replies))
        if self.negotiator.done:
            self.finished = True
            protocol = self.negotiator.result
            assert protocol is not None
            try:
                self._onSelected(protocol, self.negotiator.leftover)
            except Exception:
                self.log.failure("installing protocol {protocol} failed", protocol=protocol)
                self._abort()

    def _afterFinish(self, data: bytes) -> None:
        # Normally the transport (or a delegating parent) sends nothing more
        # our way once the chosen protocol is installed.  If the caller
        # installed it with transport.protocol, pass on what still arrives.
        nxt = getattr(self.transport, "protocol", None)
        if self.negotiator.done and nxt is not None and nxt is not self:
            nxt.dataReceived(data)
        elif self.negotiator.done:
            self.log.warn(
                "dropping {n} bytes that arrived after {protocol} was chosen but not installed",
                n=len(data), protocol=self.negotiator.result,
            )

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        if self.finished:
            return
        self.finished = True
        self._callFailed(reason)

    def _fail(self, failure: Failure) -> None:
        if self.finished:
            return
        self.finished = True
        self.log.info(
            "multistream-select with {peer} failed: {reason}",
            peer=self._peer(),
            reason=failure.getErrorMessage(),
        )
        self._abort()
        self._callFailed(failure)

    def _callFailed(self, failure: Failure) -> None:
        try:
            self._onFailed(failure)
        except Exception:
            self.log.failure("multistream failure callback raised")

    def _abort(self) -> None:
        if self.transport is None:
            return
        abort = getattr(self.transport, "abortConnection", None)
        if abort is not None:
            abort()
        else:
            self.transport.loseConnection()

    def _peer(self) -> object:
        if self.transport is None:
            return None
        try:
            return self.transport.getPeer()
        except Exception:
            return None


__all__ = [
    "PROTOCOL_ID",
    "MAX_MESSAGE",
    "MAX_FAILED_PROPOSALS",
    "encodeMessage",
    "encodeProtocolList",
    "decodeProtocolList",
    "MultistreamDialer",
    "MultistreamListener",
    "MultistreamProtocol",
    "Negotiator",
]
