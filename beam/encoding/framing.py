"""
uvarint-length-prefixed messages, the framing of identify, kad-dht and most
other libp2p protocols that carry protobufs over a stream.
"""

from __future__ import annotations

from beam.errors import DecodeError, MessageTooLarge
from beam.encoding.varint import decode_uvarint, encode_uvarint


def encodeLengthPrefixed(payload: bytes) -> bytes:
    """
    Prefix C{payload} with its length as a uvarint.
    """
    return encode_uvarint(len(payload)) + payload


class LengthPrefixedReader:
    """
    A sans-IO framer: L{feed} bytes, get back the complete messages.

    The announced length is checked against C{maxSize} before anything is
    buffered for it, so a peer cannot make us allocate more than
    C{maxSize} plus one varint.
    """

    def __init__(self, maxSize: int) -> None:
        self.maxSize = maxSize
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """
        @raise MessageTooLarge: a message announced more than C{maxSize} bytes.
        @raise DecodeError: a malformed length prefix.
        """
        self._buf += data
        out: list[bytes] = []
        offset = 0
        while True:
            header = decode_uvarint(self._buf, offset)
            if header is None:
                break
            length, start = header
            if length > self.maxSize:
                raise MessageTooLarge(
                    f"message of {length} bytes exceeds the limit of {self.maxSize}"
                )
            if len(self._buf) - start < length:
                break
            out.append(bytes(self._buf[start:start + length]))
            offset = start + length
        del self._buf[:offset]
        return out

    @property
    def pending(self) -> int:
        """
        Bytes held for an incomplete message.
        """
        return len(self._buf)

    def finish(self) -> None:
        """
        The stream ended: a partial message left behind is an error.

        @raise DecodeError: bytes of an incomplete message remain.
        """
        if self._buf:
            raise DecodeError("stream ended inside a message")
