"""
The yamux wire format, with no I/O: frame encoding and an incremental parser.

Every yamux frame starts with a 12-byte big-endian header::

    version (u8, always 0) | type (u8) | flags (u16) | stream ID (u32) | length (u32)

Only data frames carry a payload (of C{length} bytes); for the other types
the length field is a value: a window delta, a ping's opaque number, a
go-away error code.

The parser is fed whatever the transport delivers and yields complete
L{Frame}s.  It refuses a data frame's announced length I{before} buffering
any of its payload (through a caller-supplied check, which the session uses to
enforce the stream's receive window), so a peer cannot make us allocate more
than we granted.  Partial frames accumulate in one C{bytearray}; a payload
that arrives whole is sliced straight out of the delivered bytes, so the cost
per byte is one copy and the parser is linear in its input however the bytes
are chunked.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from typing import NamedTuple

from beam.errors import ProtocolError

VERSION = 0

TYPE_DATA = 0
TYPE_WINDOW_UPDATE = 1
TYPE_PING = 2
TYPE_GO_AWAY = 3

FLAG_SYN = 0x1
FLAG_ACK = 0x2
FLAG_FIN = 0x4
FLAG_RST = 0x8

GO_AWAY_NORMAL = 0
GO_AWAY_PROTOCOL_ERROR = 1
GO_AWAY_INTERNAL_ERROR = 2

HEADER_LENGTH = 12

#: Every stream starts with this window in both directions (spec).
DEFAULT_WINDOW = 256 * 1024

MAX_UINT32 = 2**32 - 1

_HEADER = struct.Struct(">BBHII")


class YamuxProtocolError(ProtocolError):
    """
    The peer broke the yamux protocol.
    """


class Frame(NamedTuple):
    """
    One decoded yamux frame.

    @ivar type: one of the C{TYPE_*} constants.
    @ivar flags: a bitmask of the C{FLAG_*} constants (unknown bits kept).
    @ivar streamID: the stream addressed, 0 for the session.
    @ivar length: the header's length field: payload size for data frames,
        otherwise the delta, opaque value or error code.
    @ivar payload: the data frame's bytes; empty for other types.
    """

    type: int
    flags: int
    streamID: int
    length: int
    payload: bytes = b""


def encodeHeader(ftype: int, flags: int, streamID: int, length: int) -> bytes:
    """
    Encode a frame header.  A data frame's payload follows it separately, so
    that callers can hand both to C{writeSequence} without joining them.
    """
    return _HEADER.pack(VERSION, ftype, flags, streamID, length)


def encodeFrame(frame: Frame) -> bytes:
    """
    Encode a whole frame (header and payload) as one byte string; meant for
    control frames and tests, not the data fast path.
    """
    return encodeHeader(frame.type, frame.flags, frame.streamID, frame.length) + frame.payload


#: Signature of the data-length check: C{(streamID, flags, length)}; raises
#: L{YamuxProtocolError} to refuse the frame before its payload is buffered.
DataCheck = Callable[[int, int, int], None]


class FrameParser:
    """
    Turn a byte stream into L{Frame}s.

    @ivar maxDataLength: an absolute cap on a data frame's length, checked
        before C{checkData}.
    """

    def __init__(
        self,
        checkData: DataCheck | None = None,
        maxDataLength: int = 16 * 1024 * 1024,
    ) -> None:
        self._checkData = checkData
        self.maxDataLength = maxDataLength
        # A partial header, or a partial payload once _pending is set.
        self._partial = bytearray()
        # The header (type, flags, streamID, length) of a data frame whose
        # payload has not fully arrived.
        self._pending: tuple[int, int, int, int] | None = None

    @property
    def buffered(self) -> int:
        """
        How many bytes of incomplete frames are held.
        """
        return len(self._partial)

    def _header(self, raw: bytes | bytearray, offset: int) -> tuple[int, int, int, int]:
        version, ftype, flags, streamID, length = _HEADER.unpack_from(raw, offset)
        if version != VERSION:
            raise YamuxProtocolError(f"unsupported yamux version {version}")
        if ftype > TYPE_GO_AWAY:
            raise YamuxProtocolError(f"unknown yamux frame type {ftype}")
        if ftype == TYPE_DATA:
            if length > self.maxDataLength:
                raise YamuxProtocolError(f"data frame of {length} bytes is too large")
            if self._checkData is not None:
                self._checkData(streamID, flags, length)
        return ftype, flags, streamID, length

    def feed(self, data: bytes) -> Iterator[Frame]:
        """
        Add bytes and yield every frame they complete.

        This is a generator: each header is checked (and C{checkData} called)
        only when iteration reaches it, so the caller's state reflects all the
        frames before it.  Raises L{YamuxProtocolError} on malformed input;
        the parser is then unusable.
        """
        if not isinstance(data, bytes):
            data = bytes(data)
        view = memoryview(data)
        partial = self._partial
        offset = 0
        end = len(data)
        while True:
            pending = self._pending
            if pending is None:
                if partial:
                    take = min(HEADER_LENGTH - len(partial), end - offset)
                    partial += view[offset : offset + take]
                    offset += take
                    if len(partial) < HEADER_LENGTH:
                        return
                    header = self._header(partial, 0)
                    del partial[:]
                else:
                    if end - offset < HEADER_LENGTH:
                        if offset < end:
                            partial += view[offset:]
                        return
                    header = self._header(data, offset)
                    offset += HEADER_LENGTH
                ftype, flags, streamID, length = header
                if ftype != TYPE_DATA or length == 0:
                    yield Frame(ftype, flags, streamID, length)
                    continue
                self._pending = pending = header
            length = pending[3]
            if not partial and end - offset >= length:
                payload = data[offset : offset + length]
                offset += length
            else:
                take = min(length - len(partial), end - offset)
                partial += view[offset : offset + take]
                offset += take
                if len(partial) < length:
                    return
                payload = bytes(partial)
                del partial[:]
            self._pending = None
            yield Frame(pending[0], pending[1], pending[2], length, payload)
