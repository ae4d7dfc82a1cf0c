"""
AutoNAT v2's wire format (libp2p/specs C{autonat/autonat-v2.md}, r2).

Two protocols: the client asks a server to dial it back on
C{/libp2p/autonat/2/dial-request} (C{Message} protobufs, one of
C{DialRequest}, C{DialDataRequest}, C{DialDataResponse}, C{DialResponse}),
and the server proves the dial with the client's nonce on
C{/libp2p/autonat/2/dial-back} (one C{DialBack}, answered by one
C{DialBackResponse}).  Every message is a uvarint-length-prefixed protobuf
(L{beam.encoding.framing}).

The decoders here turn peer bytes into small frozen values and raise
L{AutoNATProtocolError} for anything malformed, so the stream protocols
only ever see well-formed messages.  Sizes are bounded before anything is
buffered: L{MAX_MESSAGE} for every message (the dial data the server asks
for arrives in many small messages, each within the bound).
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any, Union

import attr

from beam.errors import ProtocolError
from beam.proto import autonatv2_pb2 as pb

DIAL_REQUEST_PROTOCOL = "/libp2p/autonat/2/dial-request"
DIAL_BACK_PROTOCOL = "/libp2p/autonat/2/dial-back"

#: The largest message either side reads.  A request with a few dozen
#: addresses is a few hundred bytes; a C{DialDataResponse} carries at most
#: L{DIAL_DATA_CHUNK} bytes (we accept up to this bound).
MAX_MESSAGE = 8 * 1024
#: Most addresses a C{DialRequest} may list.
MAX_ADDRS = 64
#: The spec's limit on one C{DialDataResponse}'s C{data}: what we send.
DIAL_DATA_CHUNK = 4096


class AutoNATProtocolError(ProtocolError):
    """
    An AutoNAT peer sent a malformed or unexpected message.
    """


class ResponseStatus(IntEnum):
    """
    C{DialResponse.ResponseStatus}: whether the server served the request.
    """

    E_INTERNAL_ERROR = 0
    E_REQUEST_REJECTED = 100
    E_DIAL_REFUSED = 101
    OK = 200


class DialStatus(IntEnum):
    """
    C{DialStatus}: the outcome of the dial back, when the server dialled.
    """

    UNUSED = 0
    E_DIAL_ERROR = 100
    E_DIAL_BACK_ERROR = 101
    OK = 200


@attr.s(frozen=True, auto_attribs=True)
class DialRequest:
    """
    The addresses to check, most wanted first (raw multiaddr bytes: the
    server skips those it cannot parse), and the nonce the dial back must
    carry.
    """

    addrs: tuple[bytes, ...]
    nonce: int


@attr.s(frozen=True, auto_attribs=True)
class DialDataRequest:
    """
    The server will dial C{addrs[addrIdx]} once it has received
    C{numBytes} bytes of dial data (amplification protection).
    """

    addrIdx: int
    numBytes: int


@attr.s(frozen=True, auto_attribs=True)
class DialDataResponse:
    data: bytes


@attr.s(frozen=True, auto_attribs=True)
class DialResponse:
    """
    C{status} is a L{ResponseStatus} value and C{dialStatus} a
    L{DialStatus} value, or any other integer a newer peer sent (which the
    client must ignore).
    """

    status: int
    addrIdx: int = 0
    dialStatus: int = DialStatus.UNUSED


RequestMessage = Union[DialRequest, DialDataRequest, DialDataResponse, DialResponse]


def _parse(cls: Any, raw: bytes, what: str) -> Any:
    if len(raw) > MAX_MESSAGE:
        raise AutoNATProtocolError(f"AutoNAT {what} of {len(raw)} bytes exceeds {MAX_MESSAGE}")
    msg = cls()
    try:
        msg.ParseFromString(raw)
    except Exception as e:  # protobuf's DecodeError, or worse on odd input
        raise AutoNATProtocolError(f"malformed AutoNAT {what}: {e}") from None
    return msg


def encodeMessage(message: RequestMessage) -> bytes:
    """
    A C{Message} protobuf (without its length prefix) for the
    dial-request stream.
    """
    out = pb.Message()
    if isinstance(message, DialRequest):
        out.dialRequest.addrs.extend(message.addrs)
        out.dialRequest.nonce = message.nonce
    elif isinstance(message, DialDataRequest):
        out.dialDataRequest.addrIdx = message.addrIdx
        out.dialDataRequest.numBytes = message.numBytes
    elif isinstance(message, DialDataResponse):
        out.dialDataResponse.data = message.data
    else:
        out.dialResponse.status = int(message.status)
        out.dialResponse.addrIdx = message.addrIdx
        out.dialResponse.dialStatus = int(message.dialStatus)
    return bytes(out.SerializeToString())


def decodeMessage(raw: bytes) -> RequestMessage:
    """
    Parse one C{Message} of the dial-request stream.

    @raise AutoNATProtocolError: malformed, empty, too large, or a request
        listing more than L{MAX_ADDRS} addresses.
    """
    msg: Any = _parse(pb.Message, raw, "message")
    which = msg.WhichOneof("msg")
    if which == "dialRequest":
        req = msg.dialRequest
        if len(req.addrs) > MAX_ADDRS:
            raise AutoNATProtocolError(f"AutoNAT dial request lists more than {MAX_ADDRS} addresses")
        return DialRequest(tuple(bytes(a) for a in req.addrs), int(req.nonce))
    if which == "dialDataRequest":
        ddr = msg.dialDataRequest
        return DialDataRequest(int(ddr.addrIdx), int(ddr.numBytes))
    if which == "dialDataResponse":
        return DialDataResponse(bytes(msg.dialDataResponse.data))
    if which == "dialResponse":
        resp = msg.dialResponse
        return DialResponse(int(resp.status), int(resp.addrIdx), int(resp.dialStatus))
    raise AutoNATProtocolError("empty AutoNAT message")


def encodeDialBack(nonce: int) -> bytes:
    return bytes(pb.DialBack(nonce=nonce).SerializeToString())


def decodeDialBack(raw: bytes) -> int:
    """
    The nonce of a C{DialBack}.

    @raise AutoNATProtocolError: malformed or too large.
    """
    msg: Any = _parse(pb.DialBack, raw, "dial-back message")
    return int(msg.nonce)


def encodeDialBackResponse() -> bytes:
    return bytes(pb.DialBackResponse(status=pb.DialBackResponse.OK).SerializeToString())


def decodeDialBackResponse(raw: bytes) -> int:
    """
    The status of a C{DialBackResponse} (C{0} is OK, the only one defined).

    @raise AutoNATProtocolError: malformed or too large.
    """
    msg: Any = _parse(pb.DialBackResponse, raw, "dial-back response")
    return int(msg.status)


__all__ = [
    "AutoNATProtocolError",
    "DIAL_BACK_PROTOCOL",
    "DIAL_DATA_CHUNK",
    "DIAL_REQUEST_PROTOCOL",
    "DialDataRequest",
    "DialDataResponse",
    "DialRequest",
    "DialResponse",
    "DialStatus",
    "MAX_ADDRS",
    "MAX_MESSAGE",
    "ResponseStatus",
    "decodeDialBack",
    "decodeDialBackResponse",
    "decodeMessage",
    "encodeDialBack",
    "encodeDialBackResponse",
    "encodeMessage",
]
