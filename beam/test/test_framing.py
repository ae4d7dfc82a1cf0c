"""
Tests for L{beam.encoding.framing}.
"""

from __future__ import annotations

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from beam.errors import DecodeError, MessageTooLarge, ProtocolError
from beam.encoding.framing import LengthPrefixedReader, encodeLengthPrefixed
from beam.encoding.varint import decode_uvarint, encode_uvarint


class FramingTests(SynchronousTestCase):
    """
    uvarint-length-prefixed messages.
    """

    def test_splitDelivery(self) -> None:
        """
        Messages split across arbitrary chunks come out whole and in order.
        """
        data = b"".join(encodeLengthPrefixed(m) for m in [b"a", b"", b"x" * 300])
        r = LengthPrefixedReader(1000)
        got: list[bytes] = []
        for i in range(len(data)):
            got += r.feed(data[i:i + 1])
        self.assertEqual(got, [b"a", b"", b"x" * 300])
        self.assertEqual(r.pending, 0)

    def test_oversizeRefusedBeforeBuffering(self) -> None:
        """
        A length over the limit is refused as soon as the prefix arrives.
        """
        r = LengthPrefixedReader(100)
        self.assertRaises(MessageTooLarge, r.feed, encode_uvarint(101))

    def test_varintLimits(self) -> None:
        """
        Overlong and non-minimal varints are refused.
        """
        self.assertRaises(DecodeError, decode_uvarint, b"\xff" * 10)
        self.assertRaises(DecodeError, decode_uvarint, b"\x80\x00")
        self.assertEqual(decode_uvarint(b"\xac\x02"), (300, 2))
        self.assertIsNone(decode_uvarint(b"\x80"))

    def test_truncatedAtEnd(self) -> None:
        """
        L{LengthPrefixedReader.finish} reports a message cut off by the end
        of the stream.
        """
        r = LengthPrefixedReader(100)
        r.feed(b"\x05ab")
        self.assertRaises(DecodeError, r.finish)

    @settings(deadline=None, max_examples=300)
    @given(st.binary(max_size=200))
    def test_fuzz(self, data: bytes) -> None:
        """
        Random bytes only ever raise L{ProtocolError} subclasses.
        """
        r = LengthPrefixedReader(64)
        try:
            r.feed(data)
        except ProtocolError:
            pass
        self.assertLessEqual(r.pending, 64 + 9)
