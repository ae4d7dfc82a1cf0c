"""
The wire of C{/beam/tunnel/1.0.0}, sans-IO.

A tunnel stream opens with one uvarint-length-prefixed L{TunnelRequest}
from the client and one uvarint-length-prefixed L{TunnelResponse} from the
host; after an OK the stream carries the tunnelled bytes.  This module only
encodes and parses those two messages (with size limits checked before
anything is buffered) and maps refusal codes to user-facing errors; it
never touches a transport.
"""

from __future__ import annotations

from typing import Generic, Optional, Sequence, TypeVar

import attrs
from google.protobuf.message import DecodeError as _PBDecodeError

from beam.errors import BeamError, DecodeError, MessageTooLarge, ProtocolError
from beam.encoding.framing import encodeLengthPrefixed
from beam.proto import tunnel_pb2
from beam.encoding.varint import decode_uvarint

__all__ = [
    "TUNNEL_PROTOCOL",
    "MAX_MESSAGE_SIZE",
    "KINDS",
    "TunnelRequest",
    "TunnelResponse",
    "InvalidTunnelMessage",
    "TunnelRefused",
    "ServiceNotFound",
    "AccessDenied",
    "ServiceNotOpenable",
    "ServiceUnavailable",
    "BadTunnelRequest",
    "TunnelBusy",
    "BUSY",
    "encodeRequest",
    "encodeResponse",
    "decodeRequest",
    "decodeResponse",
    "RequestReader",
    "ResponseReader",
    "refusalFor",
    "chooseCompression",
]

#: The multistream-select protocol ID of tunnel streams.
TUNNEL_PROTOCOL = "/beam/tunnel/1.0.0"

#: Largest request or response we accept (the announced length is checked
#: before buffering).
MAX_MESSAGE_SIZE = 4096

#: Tunnel kinds, by their wire value.
KINDS = {tunnel_pb2.TCP: "tcp", tunnel_pb2.UDP: "udp"}
_KIND_VALUES = {name: value for value, name in KINDS.items()}

#: The status of L{TunnelBusy}: a resource limit (the asking peer's, the
#: service's or the node's) is reached.  proto3 enums are open, so an
#: older client that does not know it shows it as a plain refusal with the
#: host's message.
BUSY = tunnel_pb2.BUSY

#: Limits on request fields, so that a request stays meaningful.
MAX_SERVICE_NAME = 255
MAX_SECRET = 1024
MAX_COMPRESSIONS = 8
MAX_COMPRESSION_NAME = 32


class InvalidTunnelMessage(ProtocolError):
    """
    The peer sent a malformed tunnel request or response.
    """


# -- refusals ------------------------------------------------------------


class TunnelRefused(BeamError):
    """
    The host refused the tunnel.

    @cvar status: the wire status code this refusal travels as.
    """

    status: int = tunnel_pb2.BAD_REQUEST


class ServiceNotFound(TunnelRefused):
    """
    The host exposes no service of that name.
    """

    status = tunnel_pb2.NOT_FOUND


class AccessDenied(TunnelRefused):
    """
    The host does not let you use this service.
    """

    status = tunnel_pb2.FORBIDDEN


class ServiceUnavailable(TunnelRefused):
    """
    The host could not reach the service it exposes.
    """

    status = tunnel_pb2.UNAVAILABLE


class BadTunnelRequest(TunnelRefused):
    """
    The host did not understand the tunnel request.
    """

    status = tunnel_pb2.BAD_REQUEST


class TunnelBusy(TunnelRefused):
    """
    The host is over a resource limit (too many tunnel connections from
    this peer, to this service, or in all): try again once some of yours
    have closed.  A forward queues its connection and retries.
    """

    status = BUSY


class ServiceNotOpenable(ServiceNotFound, AccessDenied):
    """
    The host has no service of that name that you may open: it does not
    exist, or it is private and you are not admitted.  A host answers both
    alike (C{NOT_FOUND}, one message) so that strangers learn nothing about
    private services; this is what a C{NOT_FOUND} answer raises, and it is
    both a L{ServiceNotFound} and an L{AccessDenied}.
    """

    status = tunnel_pb2.NOT_FOUND


_REFUSALS: dict[int, type[TunnelRefused]] = {
    cls.status: cls for cls in (ServiceNotOpenable, AccessDenied, ServiceUnavailable, BadTunnelRequest, TunnelBusy)
}


# -- messages ------------------------------------------------------------


@attrs.frozen
class TunnelRequest:
    """
    What the client asks for.

    @ivar service: the service name; C{""} asks for the host's default.
    @ivar kind: C{"tcp"} or C{"udp"}.
    @ivar compression: compression methods offered, in order of preference.
    @ivar secret: the access secret from the share address, C{b""} if none.
    @ivar probe: only ask whether a tunnel I{would} be accepted (access,
        service, kind); the host answers and closes the stream without
        touching the local service.  C{beam connect} probes once at start
        so that a refusal is a clear error there and then.
    """

    service: str = ""
    kind: str = "tcp"
    compression: tuple[str, ...] = ()
    secret: bytes = b""
    probe: bool = False


@attrs.frozen
class TunnelResponse:
    """
    The host's answer.

    @ivar status: a C{tunnel_pb2.Status} value; C{OK} is 0.
    @ivar message: why, when not OK (shown to the user).
    @ivar compression: the method chosen from the offer, C{""} for none.
    @ivar service: on OK, the service the host opened (its real name when
        the request asked for the default); C{""} from hosts that do not
        say.
    """

    status: int = tunnel_pb2.OK
    message: str = ""
    compression: str = ""
    service: str = ""

    @property
    def ok(self) -> bool:
        return self.status == tunnel_pb2.OK

    @classmethod
    def refusing(cls, error: TunnelRefused) -> "TunnelResponse":
        """
        The response that carries C{error} to the client.
        """
        return cls(status=error.status, message=str(error))


def refusalFor(response: TunnelResponse) -> TunnelRefused:
    """
    The error a refusing response stands for (a status we do not know is
    a plain L{TunnelRefused}).
    """
    cls = _REFUSALS.get(response.status, TunnelRefused)
    message = response.message or (cls.__doc__ or "").strip().splitlines()[0]
    return cls(message)


def encodeRequest(request: TunnelRequest) -> bytes:
    """
    The length-prefixed wire form of C{request}.

    @raise ValueError: a field exceeds its limit or the kind is unknown (a
        programming error, so not a L{BeamError}).
    """
    _checkRequest(request, ValueError)
    msg = tunnel_pb2.TunnelRequest(
        service=request.service,
        kind=_KIND_VALUES[request.kind],
        compression=list(request.compression),
        secret=request.secret,
        probe=request.probe,
    )
    return encodeLengthPrefixed(msg.SerializeToString())


def encodeResponse(response: TunnelResponse) -> bytes:
    """
    The length-prefixed wire form of C{response}; an over-long message is
    shortened so the response always fits.
    """
    text = response.message
    while len(text.encode("utf-8")) > MAX_MESSAGE_SIZE // 2:
        text = text[: len(text) // 2]
    service = response.service if len(response.service.encode("utf-8")) <= MAX_SERVICE_NAME else ""
    msg = tunnel_pb2.TunnelResponse(
        status=response.status, message=text, compression=response.compression[:MAX_COMPRESSION_NAME],
        service=service,
    )
    return encodeLengthPrefixed(msg.SerializeToString())


def _checkRequest(request: TunnelRequest, error: type[Exception]) -> None:
    if request.kind not in _KIND_VALUES:
        raise error(f"unknown tunnel kind {request.kind!r}")
    if len(request.service.encode("utf-8")) > MAX_SERVICE_NAME:
        raise error(f"service name longer than {MAX_SERVICE_NAME} bytes")
    if len(request.secret) > MAX_SECRET:
        raise error(f"secret longer than {MAX_SECRET} bytes")
    if len(request.compression) > MAX_COMPRESSIONS:
        raise error(f"more than {MAX_COMPRESSIONS} compression methods offered")
    for name in request.compression:
        if not name or len(name) > MAX_COMPRESSION_NAME:
            raise error("bad compression method name")


def decodeRequest(payload: bytes) -> TunnelRequest:
    """
    Parse a request body (without its length prefix).

    @raise InvalidTunnelMessage: not a valid request.
    """
    msg = tunnel_pb2.TunnelRequest()
    try:
        msg.ParseFromString(payload)
    except (_PBDecodeError, ValueError, UnicodeDecodeError) as e:
        raise InvalidTunnelMessage(f"undecodable tunnel request: {e}") from None
    kind = KINDS.get(msg.kind)
    if kind is None:
        raise InvalidTunnelMessage(f"unknown tunnel kind {msg.kind}")
    request = TunnelRequest(
        service=msg.service,
        kind=kind,
        compression=tuple(msg.compression),
        secret=bytes(msg.secret),
        probe=msg.probe,
    )
    _checkRequest(request, InvalidTunnelMessage)
    return request


def decodeResponse(payload: bytes) -> TunnelResponse:
    """
    Parse a response body (without its length prefix).

    @raise InvalidTunnelMessage: not a valid response.
    """
    msg = tunnel_pb2.TunnelResponse()
    try:
        msg.ParseFromString(payload)
    except (_PBDecodeError, ValueError, UnicodeDecodeError) as e:
        raise InvalidTunnelMessage(f"undecodable tunnel response: {e}") from None
    if len(msg.compression) > MAX_COMPRESSION_NAME:
        raise InvalidTunnelMessage("bad compression method name")
    if len(msg.service.encode("utf-8")) > MAX_SERVICE_NAME:
        raise InvalidTunnelMessage(f"service name longer than {MAX_SERVICE_NAME} bytes")
    return TunnelResponse(status=int(msg.status), message=msg.message, compression=msg.compression,
                          service=msg.service)


_M = TypeVar("_M")


class _OneMessageReader(Generic[_M]):
    """
    A sans-IO reader of the one length-prefixed message that opens a
    tunnel stream.  L{feed} returns the message once it is complete; bytes
    that followed it are kept in L{leftover} (they belong to the tunnel).

    @ivar message: the parsed message, once complete.
    @ivar leftover: bytes that arrived after the message.
    """

    def __init__(self, maxSize: int = MAX_MESSAGE_SIZE) -> None:
        self.maxSize = maxSize
        self._buf = bytearray()
        self._error: Optional[ProtocolError] = None
        self.message: Optional[_M] = None
        self.leftover = b""

    def _decode(self, payload: bytes) -> _M:
        raise NotImplementedError()

    def feed(self, data: bytes) -> Optional[_M]:
        """
        @return: the message when it is complete (once), else L{None}.
        @raise ProtocolError: the bytes are not a valid message (oversize
            lengths are refused before they are buffered); every later
            call raises the same error.
        """
        if self._error is not None:
            raise self._error
        if self.message is not None:
            self.leftover += data
            return None
        self._buf += data
        try:
            header = decode_uvarint(self._buf)
            if header is None:
                return None
            length, start = header
            if length > self.maxSize:
                raise MessageTooLarge(
                    f"tunnel message of {length} bytes exceeds the limit of {self.maxSize}"
                )
            if len(self._buf) - start < length:
                return None
            self.message = self._decode(bytes(self._buf[start:start + length]))
        except ProtocolError as e:
            self._error = e
            self._buf = bytearray()
            raise
        self.leftover = bytes(self._buf[start + length:])
        self._buf = bytearray()
        return self.message

    def finish(self) -> None:
        """
        The stream ended.

        @raise DecodeError: it ended before the message was complete.
        """
        if self.message is None:
            raise DecodeError("the stream ended before the tunnel message was complete")


class RequestReader(_OneMessageReader[TunnelRequest]):
    """
    Reads the client's L{TunnelRequest} (host side).
    """

    def _decode(self, payload: bytes) -> TunnelRequest:
        return decodeRequest(payload)


class ResponseReader(_OneMessageReader[TunnelResponse]):
    """
    Reads the host's L{TunnelResponse} (client side).
    """

    def _decode(self, payload: bytes) -> TunnelResponse:
        return decodeResponse(payload)


def chooseCompression(offered: Sequence[str], allowed: Sequence[str]) -> str:
    """
    The first offered method that we allow, or C{""}.
    """
    for name in offered:
        if name in allowed:
            return name
    return ""
