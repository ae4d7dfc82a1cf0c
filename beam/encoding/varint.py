"""
Unsigned LEB128 varints, as used by multiformats and length-prefixed
protobuf messages throughout libp2p.

The decoder refuses varints longer than 9 bytes (the multiformats limit) so a
hostile peer cannot make us loop over an endless run of continuation bits.
"""

from __future__ import annotations

from beam.errors import DecodeError

MAX_VARINT_BYTES = 9


def encode_uvarint(value: int) -> bytes:
    """
    Encode a non-negative integer as an unsigned varint.
    """
    if value < 0:
        raise ValueError("uvarint must be non-negative")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_uvarint(data: bytes | bytearray | memoryview, offset: int = 0) -> tuple[int, int] | None:
    """
    Decode an unsigned varint from C{data} at C{offset}.

    @return: C{(value, new_offset)}, or L{None} when C{data} ends before the
        varint does (the caller should wait for more bytes).
    @raise DecodeError: the varint is longer than L{MAX_VARINT_BYTES} or not
        minimally encoded.
    """
    result = 0
    shift = 0
    pos = offset
    end = len(data)
    while True:
        if pos >= end:
            if pos - offset >= MAX_VARINT_BYTES:
                raise DecodeError("varint too long")
            return None
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if byte == 0 and pos - offset > 1:
                raise DecodeError("varint not minimally encoded")
            return result, pos
        shift += 7
        if pos - offset >= MAX_VARINT_BYTES:
            raise DecodeError("varint too long")


def decode_uvarint_exact(data: bytes, offset: int = 0) -> tuple[int, int]:
    """
    Like L{decode_uvarint} but a truncated varint is an error, for parsing
    complete byte strings (multiaddrs, CIDs) rather than streams.
    """
    result = decode_uvarint(data, offset)
    if result is None:
        raise DecodeError("truncated varint")
    return result
