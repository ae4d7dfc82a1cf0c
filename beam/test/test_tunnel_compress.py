"""
Tests for L{beam.tunnel.compress}: the lz4 framing of tunnel streams.
"""

from __future__ import annotations

import json
import os
import random
from typing import Any

import lz4.block
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IPushProducer,
    ITransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from beam.errors import ProtocolError
from beam.p2p.muxer.yamux import YamuxSession, YamuxStream
from beam.testing import MemoryTransport, Pump
from beam.tunnel.compress import (
    CHUNK,
    MAX_FRAME,
    MIN_COMPRESS,
    CompressingTransport,
    CompressionError,
    Compressor,
    DecompressingProtocol,
    Decompressor,
    wrapCompressed,
)


def textBody(size: int = 200_000) -> bytes:
    """
    A JSON API response followed by an HTML page, like tunnelled web
    traffic, of about C{size} bytes.
    """
    rng = random.Random(7)
    words = ["alpha", "beta", "gamma", "delta", "status", "active", "user", "page"]
    items = []
    while sum(map(len, items)) < size // 2:
        items.append(
            json.dumps(
                {
                    "id": rng.randrange(10**6),
                    "name": " ".join(rng.choice(words) for _ in range(3)),
                    "email": f"user{rng.randrange(10**4)}@example.com",
                    "active": rng.random() < 0.5,
                }
            )
        )
    html = []
    while sum(map(len, html)) < size // 2:
        html.append(
            f'<div class="row"><a href="/item/{rng.randrange(10**5)}">'
            f"{rng.choice(words)} {rng.choice(words)}</a></div>\n"
        )
    return ("[" + ",".join(items) + "]\n<html><body>" + "".join(html)).encode()


def roundTrip(writes: list[bytes]) -> tuple[bytes, Compressor]:
    comp = Compressor()
    dec = Decompressor()
    wire = b"".join(comp.compress(w) for w in writes)
    return dec.feed(wire), comp


class CodecTests(SynchronousTestCase):
    """
    The sans-IO L{Compressor} and L{Decompressor}.
    """

    def test_roundTripKinds(self) -> None:
        """
        Random, text, mixed and empty writes all decode to what was
        written, and the wire byte counts match what was produced.
        """
        text = textBody(100_000)
        rnd = os.urandom(100_000)
        for writes in ([rnd], [text], [text, rnd, text[:5000], rnd[:70], b""], [b""], []):
            out, comp = roundTrip(writes)
            self.assertEqual(out, b"".join(writes))
            self.assertEqual(comp.bytesIn, sum(map(len, writes)))

    def test_emptyWriteNoFrame(self) -> None:
        """
        An empty write produces no bytes at all.
        """
        comp = Compressor()
        self.assertEqual(comp.compress(b""), b"")
        self.assertEqual(comp.bytesOut, 0)

    def test_thresholdSizes(self) -> None:
        """
        Writes just under, at and above the compression threshold and the
        chunk size round-trip; under the threshold they go raw even when
        compressible, at it they are compressed.
        """
        for n in (1, MIN_COMPRESS - 1, MIN_COMPRESS, MIN_COMPRESS + 1,
                  CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, MAX_FRAME + 1):
            data = b"a" * n
            comp = Compressor()
            wire = comp.compress(data)
            self.assertEqual(Decompressor().feed(wire), data, n)
            if n < MIN_COMPRESS:
                self.assertEqual(wire[0], 0, n)
                self.assertEqual(len(wire), n + 4)
            else:
                self.assertEqual(wire[0], 1, n)
                tail = n % CHUNK
                short = 1 if 0 < tail < MIN_COMPRESS else 0
                self.assertEqual(comp.framesRaw, short, n)
                self.assertEqual(comp.framesCompressed, -(-n // CHUNK) - short, n)

    def test_rawFrameLayout(self) -> None:
        """
        A raw frame is a zero type byte, a 3-byte big-endian length and
        the payload.
        """
        self.assertEqual(Compressor().compress(b"hi"), b"\x00\x00\x00\x02hi")

    def test_lz4FrameLayout(self) -> None:
        """
        An lz4 frame is type 1, the 3-byte block length, the 3-byte
        original length and an lz4 block without a size prefix.
        """
        data = b"abcd" * 100
        wire = Compressor().compress(data)
        self.assertEqual(wire[0], 1)
        clen = int.from_bytes(wire[1:4], "big")
        self.assertEqual(int.from_bytes(wire[4:7], "big"), 400)
        self.assertEqual(len(wire), 7 + clen)
        self.assertEqual(lz4.block.decompress(wire[7:], uncompressed_size=400), data)

    def test_manySmallWrites(self) -> None:
        """
        Thousands of tiny writes each become their own frame at once (no
        hidden buffering) and decode in order.
        """
        comp = Compressor()
        dec = Decompressor()
        for i in range(3000):
            piece = str(i).encode()
            self.assertEqual(dec.feed(comp.compress(piece)), piece)

    def test_oneByteAtATime(self) -> None:
        """
        Frames fed one byte at a time decode to the same bytes, and only
        complete frames produce output.
        """
        data = [textBody(20_000), os.urandom(3000), b"x" * 10]
        comp = Compressor()
        wire = b"".join(comp.compress(d) for d in data)
        dec = Decompressor()
        out = bytearray()
        for i in range(len(wire)):
            out += dec.feed(wire[i : i + 1])
        self.assertEqual(bytes(out), b"".join(data))
        self.assertEqual(dec.buffered, 0)
        self.assertEqual(dec.bytesIn, len(wire))
        self.assertEqual(dec.bytesOut, len(out))

    def test_randomNearlyFree(self) -> None:
        """
        On random data nearly every frame is raw, few chunks are even
        probed, and the overhead stays under 0.5%.
        """
        comp = Compressor()
        dec = Decompressor()
        total = 0
        for _ in range(400):
            data = os.urandom(16 * 1024)
            total += len(data)
            self.assertEqual(dec.feed(comp.compress(data)), data)
        self.assertEqual(comp.framesCompressed, 0)
        self.assertLess(comp.probes, 20)
        self.assertLess(comp.bytesOut, total * 1.005)

    def test_reprobeFindsText(self) -> None:
        """
        After backing off on random data, the encoder probes again and
        compresses text once it appears.
        """
        comp = Compressor()
        for _ in range(50):
            comp.compress(os.urandom(4096))
        text = textBody(4096 * 200)
        wire = b"".join(comp.compress(text[i : i + 4096]) for i in range(0, len(text), 4096))
        self.assertGreater(comp.framesCompressed, 150)
        self.assertLess(len(wire), len(text) / 2)

    def test_textCompresses(self) -> None:
        """
        A JSON/HTML body shrinks more than three times.
        """
        text = textBody()
        out, comp = roundTrip([text[i : i + 16384] for i in range(0, len(text), 16384)])
        self.assertEqual(out, text)
        self.assertGreater(comp.bytesIn / comp.bytesOut, 3)

    def test_unknownType(self) -> None:
        """
        An unknown frame type is a L{CompressionError}, a protocol error.
        """
        dec = Decompressor()
        e = self.assertRaises(CompressionError, dec.feed, b"\x07\x00\x00\x01a")
        self.assertIsInstance(e, ProtocolError)

    def test_oversizeRefusedFromHeader(self) -> None:
        """
        Frames announcing more than the maximum are refused from the header
        alone, before their payload arrives.
        """
        for header in (
            b"\x00" + (MAX_FRAME + 1).to_bytes(3, "big"),
            b"\x01\x00\x00\x10" + (MAX_FRAME + 1).to_bytes(3, "big"),
            b"\x01" + (0xFFFFFF).to_bytes(3, "big") + (1000).to_bytes(3, "big"),
        ):
            self.assertRaises(CompressionError, Decompressor().feed, header)
        # The largest legal frame is accepted.
        self.assertEqual(
            Decompressor().feed(b"\x00" + MAX_FRAME.to_bytes(3, "big") + b"z" * MAX_FRAME),
            b"z" * MAX_FRAME,
        )

    def test_malformedLengths(self) -> None:
        """
        An lz4 frame with an empty block, or a block longer than its
        original size, is refused.
        """
        for header in (b"\x01\x00\x00\x00\x00\x00\x05", b"\x01\x00\x00\x06\x00\x00\x05"):
            self.assertRaises(CompressionError, Decompressor().feed, header)

    def test_corruptBlock(self) -> None:
        """
        A corrupt lz4 block, or one that decodes to fewer bytes than its
        header says, is refused.
        """
        self.assertRaises(
            CompressionError, Decompressor().feed, b"\x01\x00\x00\x04\x00\x01\x00\xff\xff\xff\xff"
        )
        short = lz4.block.compress(b"q" * 300, store_size=False)
        frame = b"\x01" + len(short).to_bytes(3, "big") + (400).to_bytes(3, "big") + short
        self.assertRaises(CompressionError, Decompressor().feed, frame)

    def test_errorIsSticky(self) -> None:
        """
        After an error the decoder refuses everything, even valid frames.
        """
        dec = Decompressor()
        self.assertRaises(CompressionError, dec.feed, b"\x09")
        self.assertRaises(CompressionError, dec.feed, b"\x00\x00\x00\x01a")

    def test_pullOneFrameAtATime(self) -> None:
        """
        C{push}/C{pull} decode one frame per call, so a paused reader holds
        only undecoded input.
        """
        comp = Compressor()
        dec = Decompressor()
        dec.push(comp.compress(b"one") + comp.compress(b"two" * 100) + comp.compress(b"th"))
        self.assertEqual(dec.pull(), b"one")
        self.assertEqual(dec.pull(), b"two" * 100)
        self.assertEqual(dec.pull(), b"th")
        self.assertIsNone(dec.pull())


@settings(deadline=None, max_examples=200)
@given(st.binary(max_size=2000))
def test_garbageRaisesOnlyOurError(data: bytes) -> None:
    """
    Arbitrary bytes fed to a decoder either decode or raise
    L{CompressionError}, never anything else.
    """
    dec = Decompressor()
    try:
        dec.feed(data)
    except CompressionError:
        pass


@settings(deadline=None, max_examples=200)
@given(st.binary(min_size=8, max_size=3000), st.integers(min_value=0), st.integers(0, 255))
def test_bitFlipsRaiseOnlyOurError(data: bytes, where: int, xor: int) -> None:
    """
    Valid frames with one corrupted byte decode (possibly wrongly; there
    is no checksum, the secure channel already authenticates) or raise
    L{CompressionError}.
    """
    wire = bytearray(Compressor().compress(data * 3))
    wire[where % len(wire)] ^= xor
    try:
        Decompressor().feed(bytes(wire))
    except CompressionError:
        pass


@settings(deadline=None, max_examples=200)
@given(
    st.lists(
        st.one_of(st.binary(max_size=300), st.text(max_size=400).map(lambda s: s.encode() * 3)),
        max_size=20,
    ),
    st.integers(min_value=1, max_value=50),
)
def test_roundTripProperty(writes: list[bytes], split: int) -> None:
    """
    Any sequence of writes, its frames fed back in pieces of any size,
    decodes to their concatenation.
    """
    comp = Compressor()
    wire = b"".join(comp.compress(w) for w in writes)
    dec = Decompressor()
    out = b"".join(dec.feed(wire[i : i + split]) for i in range(0, len(wire), split))
    assert out == b"".join(writes)
    assert dec.buffered == 0


class Recorder(Protocol):
    """
    An application protocol recording what it gets.
    """

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.lost: list[Failure] = []

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.append(reason)

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)


@implementer(IHalfCloseableProtocol)
class HalfRecorder(Recorder):
    """
    A half-closeable recorder.
    """

    readLost = 0
    writeLost = 0

    def readConnectionLost(self) -> None:
        self.readLost += 1

    def writeConnectionLost(self) -> None:
        self.writeLost += 1


class StreamPair:
    """
    A yamux session pair over a L{Pump}, with one stream whose ends are
    compressed with L{wrapCompressed} and talk through C{client}/C{server}.
    """

    def __init__(self, protocolClass: Any = HalfRecorder) -> None:
        self.accepted: list[YamuxStream] = []
        clock = Clock()
        self.clientSession = YamuxSession(True, self.accepted.append, clock)
        self.serverSession = YamuxSession(False, self.accepted.append, clock)
        self.pump = Pump(self.clientSession, self.serverSession).connect()
        self.clientStream = self.clientSession.openStream()
        self.client = protocolClass()
        self.clientStream.setProtocol(DecompressingProtocol(self.client))
        self.flush()
        self.serverStream = self.accepted[0]
        self.server = protocolClass()
        self.serverStream.setProtocol(DecompressingProtocol(self.server))

    def flush(self) -> None:
        self.pump.flush()


class AdapterTests(SynchronousTestCase):
    """
    L{DecompressingProtocol} and L{CompressingTransport} on yamux streams.
    """

    def test_bothWays(self) -> None:
        """
        Both ends write through compressing transports; each reads exactly
        what the other wrote, and text travels compressed.
        """
        pair = StreamPair()
        text = textBody(50_000)
        pair.client.transport.write(text)
        pair.server.transport.writeSequence([b"hello ", b"world"])
        pair.flush()
        self.assertEqual(pair.server.data, text)
        self.assertEqual(pair.client.data, b"hello world")
        stats = pair.clientStream.protocol.stats
        self.assertEqual(stats.rawSent, len(text))
        self.assertGreater(stats.sendRatio, 3)
        self.assertEqual(stats.rawReceived, 11)
        self.assertEqual(stats.wireReceived, 15)

    def test_innerTransport(self) -> None:
        """
        The inner protocol's transport is a L{CompressingTransport}
        providing the transport interfaces and exposing the stream's other
        attributes.
        """
        pair = StreamPair()
        t = pair.client.transport
        self.assertIsInstance(t, CompressingTransport)
        self.assertTrue(ITransport.providedBy(t))
        self.assertTrue(IPushProducer.providedBy(t))
        self.assertEqual(t.streamID, pair.clientStream.streamID)
        self.assertEqual(t.getPeer(), pair.clientStream.getPeer())
        self.assertEqual(t.getHost(), pair.clientStream.getHost())
        self.assertRaises(AttributeError, getattr, t, "noSuchThing")

    def test_halfClose(self) -> None:
        """
        A write-side close reaches the other application as
        readConnectionLost after all the data; it can still answer, and
        both end with ConnectionDone once it closes too.
        """
        pair = StreamPair()
        pair.client.transport.write(b"request" * 50)
        pair.client.transport.loseWriteConnection()
        pair.flush()
        self.assertEqual(pair.server.data, b"request" * 50)
        self.assertEqual(pair.server.readLost, 1)
        self.assertEqual(pair.server.lost, [])
        pair.server.transport.write(b"response")
        pair.server.transport.loseConnection()
        pair.flush()
        self.assertEqual(pair.client.data, b"response")
        self.assertEqual(pair.client.readLost, 1)
        for p in (pair.client, pair.server):
            self.assertEqual(len(p.lost), 1)
            p.lost[0].trap(ConnectionDone)

    def test_plainInnerClosedOnFin(self) -> None:
        """
        A plain (not half-closeable) inner protocol has the stream closed
        for it when the peer's FIN arrives, as a plain stream protocol does.
        """
        pair = StreamPair(protocolClass=Recorder)
        pair.client.transport.write(b"bye")
        pair.client.transport.loseConnection()
        pair.flush()
        self.assertEqual(pair.server.data, b"bye")
        pair.server.lost[0].trap(ConnectionDone)
        pair.client.lost[0].trap(ConnectionDone)

    def test_abortIsReset(self) -> None:
        """
        abortConnection on the compressing transport resets the stream;
        the other application sees a non-clean connectionLost.
        """
        pair = StreamPair()
        pair.client.transport.abortConnection()
        pair.flush()
        pair.client.lost[0].trap(ConnectionAborted)
        self.assertEqual(len(pair.server.lost), 1)
        self.assertIsNone(pair.server.lost[0].check(ConnectionDone))

    def test_corruptAborts(self) -> None:
        """
        Corrupt frames from the peer are logged and the stream is reset;
        the inner protocol gets only the good data before them and a
        non-clean connectionLost; no exception escapes.
        """
        pair = StreamPair()
        pair.clientStream.write(Compressor().compress(b"good") + b"\x05garbage")
        pair.flush()
        self.assertEqual(pair.server.data, b"good")
        self.assertEqual(len(pair.server.lost), 1)
        pair.server.lost[0].trap(ConnectionAborted)
        self.assertEqual(len(pair.client.lost), 1)
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_finInsideFrameAborts(self) -> None:
        """
        Input ending in the middle of a frame is corrupt: the stream is
        reset instead of reporting a clean end.
        """
        pair = StreamPair()
        pair.clientStream.write(b"\x00\x00\x00\x10abc")
        pair.clientStream.loseWriteConnection()
        pair.flush()
        self.assertEqual(pair.server.readLost, 0)
        pair.server.lost[0].trap(ConnectionAborted)

    def test_pauseHoldsDecodedFrames(self) -> None:
        """
        When the application pauses its transport, frames already received
        wait (the stream is paused too); resuming delivers them in order,
        and the FIN only after them.
        """
        pair = StreamPair()
        pair.server.transport.pauseProducing()
        pair.flush()
        for i in range(5):
            pair.client.transport.write(b"%d" % i * 100)
        pair.client.transport.loseWriteConnection()
        pair.flush()
        self.assertEqual(pair.server.data, b"")
        self.assertEqual(pair.server.readLost, 0)
        pair.server.transport.resumeProducing()
        pair.flush()
        self.assertEqual(pair.server.data, b"".join(b"%d" % i * 100 for i in range(5)))
        self.assertEqual(pair.server.readLost, 1)

    def test_pauseMidChunk(self) -> None:
        """
        An application that pauses from inside dataReceived gets no more
        frames of the same stream chunk until it resumes.
        """
        pair = StreamPair()

        def dataReceived(data: bytes) -> None:
            pair.server.chunks.append(data)
            pair.server.transport.pauseProducing()

        pair.server.dataReceived = dataReceived  # type: ignore[method-assign]
        comp = Compressor()
        pair.clientStream.write(comp.compress(b"a") + comp.compress(b"b") + comp.compress(b"c"))
        pair.flush()
        self.assertEqual(pair.server.chunks, [b"a"])
        self.assertTrue(pair.serverStream._readPaused)
        pair.server.transport.resumeProducing()
        self.assertEqual(pair.server.chunks, [b"a", b"b"])
        pair.server.transport.resumeProducing()
        pair.server.transport.resumeProducing()
        self.assertEqual(pair.server.chunks, [b"a", b"b", b"c"])
        self.assertFalse(pair.serverStream._readPaused)

    def test_producerPassThrough(self) -> None:
        """
        registerProducer/unregisterProducer and stopProducing reach the
        stream.
        """
        pair = StreamPair()
        t = pair.client.transport

        @implementer(IPushProducer)
        class P:
            def pauseProducing(self) -> None: ...
            def resumeProducing(self) -> None: ...
            def stopProducing(self) -> None: ...

        producer = P()
        t.registerProducer(producer, True)
        self.assertIs(pair.clientStream._producer, producer)
        t.unregisterProducer()
        self.assertIsNone(pair.clientStream._producer)
        t.stopProducing()
        self.assertTrue(pair.clientStream.disconnecting)


class WrapTests(SynchronousTestCase):
    """
    L{wrapCompressed} on an already connected transport.
    """

    def test_wrapConnected(self) -> None:
        """
        wrapCompressed connects the inner protocol at once; two wrapped
        ends over a L{Pump} exchange data, and a clean close reaches both.
        """
        a, b = Recorder(), Recorder()
        outer = [Protocol(), Protocol()]
        pump = Pump(outer[0], outer[1]).connect()
        pa = wrapCompressed(pump.clientTransport, a)
        pb = wrapCompressed(pump.serverTransport, b)
        pump.client, pump.server = pa, pb
        self.assertIsNotNone(a.transport)
        a.transport.write(textBody(10_000))
        b.transport.write(b"ok")
        pump.flush()
        self.assertEqual(b.data, textBody(10_000))
        self.assertEqual(a.data, b"ok")
        a.transport.loseConnection()
        pump.flush()
        a.lost[0].trap(ConnectionDone)
        b.lost[0].trap(ConnectionDone)

    def test_noCompressionAfterClose(self) -> None:
        """
        Writes after the transport started disconnecting are dropped
        without being compressed or counted.
        """
        t = MemoryTransport()
        p = wrapCompressed(t, Recorder())
        p.inner.transport.loseConnection()  # type: ignore[attr-defined]
        p.inner.transport.write(b"late")  # type: ignore[attr-defined]
        self.assertEqual(p.stats.rawSent, 0)
        self.assertEqual(t.take(), b"")
