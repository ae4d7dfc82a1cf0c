"""
Optional lz4 compression of a tunnel stream.

A tunnel whose request asked for C{compression = "lz4"} carries, in each
direction, a sequence of frames instead of raw connection bytes::

    raw frame:  0x00 | length (3 bytes, big-endian) | payload (length bytes)
    lz4 frame:  0x01 | clen (3 bytes, big-endian) | rlen (3 bytes, big-endian)
                     | lz4 block (clen bytes) that decompresses to rlen bytes

The two directions are independent and frames carry no state between them
(each lz4 frame is a self-contained lz4 I{block}, no dictionary), so a
decoder can start anywhere a frame starts and a lost peer can never make us
hold more than one frame.  Limits a decoder enforces, from the header alone
and so before anything is allocated: a raw frame's length and an lz4
frame's C{rlen} are at most L{MAX_FRAME} (256 KiB), and
C{0 < clen <= rlen}, because an encoder sends a chunk raw whenever lz4 does
not make it smaller.  A zero-length raw frame is valid and means nothing;
any other type byte is an error.

Why lz4 I{block} and not lz4 I{frame}: measured on 16-64 KiB chunks both run
at the same speed (several GB/s compressing, more decompressing), but a
block costs 7 header bytes instead of the frame format's 15-19, and
C{lz4.block.decompress(..., uncompressed_size=rlen)} bounds the output
explicitly, which is the property we need from untrusted input.

The encoder (L{Compressor}) never buffers: each C{write} becomes complete
frames at once, so compression adds no latency to an interactive session.
Writes are cut into chunks of at most L{CHUNK} (64 KiB); chunks shorter
than L{MIN_COMPRESS} are sent raw, and a chunk is sent compressed only if
that saves at least 1/16 of it.  After L{MISS_LIMIT} consecutive chunks
that did not shrink (encrypted or already compressed data), the encoder
stops trying for a number of chunks that doubles with each further miss (up
to L{MAX_SKIP}) and re-probes after each pause, so random data costs little
more than the 4-byte raw header per chunk.

L{DecompressingProtocol} and L{CompressingTransport} put this under an
ordinary protocol; L{wrapCompressed} sets up both directions on a stream.
"""

from __future__ import annotations

from typing import Any

import attrs
import lz4.block
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol, IProtocol
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from beam.errors import ProtocolError
from beam.p2p.interfaces import IStreamTransport

__all__ = [
    "CHUNK",
    "MAX_FRAME",
    "MIN_COMPRESS",
    "CompressingTransport",
    "CompressionError",
    "CompressionStats",
    "Compressor",
    "DecompressingProtocol",
    "Decompressor",
    "wrapCompressed",
]

_log = Logger()

#: Frame type bytes.
TYPE_RAW = 0x00
TYPE_LZ4 = 0x01
#: Header sizes of the two frame types.
RAW_HEADER = 4
LZ4_HEADER = 7
#: The largest payload (decompressed) a frame may carry.
MAX_FRAME = 256 * 1024
#: The largest chunk the encoder puts in one frame.
CHUNK = 64 * 1024
#: Chunks shorter than this are never compressed: the gain cannot pay for
#: the call and the header.
MIN_COMPRESS = 64
#: Consecutive incompressible chunks after which the encoder backs off.
MISS_LIMIT = 3
#: The first and the largest number of chunks skipped while backing off.
FIRST_SKIP = 4
MAX_SKIP = 1024


class CompressionError(ProtocolError):
    """
    The peer sent corrupt compressed tunnel data.
    """


@attrs.frozen
class CompressionStats:
    """
    What compression did on one stream, for reports.

    @ivar rawSent: bytes the application wrote.
    @ivar wireSent: bytes put on the stream for them.
    @ivar wireReceived: bytes read from the stream.
    @ivar rawReceived: bytes handed to the application for them.
    """

    rawSent: int
    wireSent: int
    wireReceived: int
    rawReceived: int

    @property
    def sendRatio(self) -> float:
        """
        C{rawSent / wireSent}: above 1 is a gain, below 1 the overhead.
        """
        return self.rawSent / self.wireSent if self.wireSent else 1.0


def _u24(n: int) -> bytes:
    return n.to_bytes(3, "big")


class Compressor:
    """
    The sans-IO encoder: bytes in, frames out, nothing held back.

    @ivar bytesIn: application bytes given to L{compress}.
    @ivar bytesOut: frame bytes returned.
    @ivar framesRaw: raw frames emitted.
    @ivar framesCompressed: lz4 frames emitted.
    @ivar probes: chunks we tried to compress.
    """

    def __init__(
        self,
        chunkSize: int = CHUNK,
        minCompress: int = MIN_COMPRESS,
    ) -> None:
        if not 0 < chunkSize <= MAX_FRAME:
            raise ValueError(f"chunkSize must be between 1 and {MAX_FRAME}")
        self.chunkSize = chunkSize
        self.minCompress = minCompress
        self.bytesIn = 0
        self.bytesOut = 0
        self.framesRaw = 0
        self.framesCompressed = 0
        self.probes = 0
        self._misses = 0
        self._skip = 0
        self._nextSkip = FIRST_SKIP

    def compress(self, data: bytes) -> bytes:
        """
        Encode C{data} as complete frames (empty for empty C{data}).
        """
        n = len(data)
        if not n:
            return b""
        self.bytesIn += n
        if n <= self.chunkSize:
            out = self._frame(data)
        else:
            view = memoryview(data)
            step = self.chunkSize
            out = b"".join(self._frame(view[i : i + step]) for i in range(0, n, step))
        self.bytesOut += len(out)
        return out

    def _frame(self, chunk: bytes | memoryview) -> bytes:
        n = len(chunk)
        if n >= self.minCompress:
            if self._skip:
                self._skip -= 1
            else:
                self.probes += 1
                packed = lz4.block.compress(chunk, store_size=False)
                if len(packed) + (LZ4_HEADER - RAW_HEADER) <= n - (n >> 4):
                    self._misses = 0
                    self._nextSkip = FIRST_SKIP
                    self.framesCompressed += 1
                    return b"".join(
                        (bytes((TYPE_LZ4,)), _u24(len(packed)), _u24(n), packed)
                    )
                self._miss()
        self.framesRaw += 1
        return b"".join((bytes((TYPE_RAW,)), _u24(n), chunk))

    def _miss(self) -> None:
        """
        A probe did not pay: after L{MISS_LIMIT} in a row, skip a growing
        number of chunks; every miss after that (the re-probes) doubles it.
        """
        self._misses += 1
        if self._misses >= MISS_LIMIT:
            self._skip = self._nextSkip
            self._nextSkip = min(self._nextSkip * 2, MAX_SKIP)


class Decompressor:
    """
    The sans-IO decoder.

    Use L{feed} to decode everything at hand, or L{push} and L{pull} to
    take one frame at a time (so a paused reader holds only undecoded
    input, never a pile of decompressed bytes).  After an error every
    further call raises it again: the stream is beyond repair.

    @ivar bytesIn: frame bytes received.
    @ivar bytesOut: decoded bytes returned.
    """

    def __init__(self, maxFrame: int = MAX_FRAME) -> None:
        self.maxFrame = maxFrame
        self.bytesIn = 0
        self.bytesOut = 0
        self._buffer = bytearray()
        self._offset = 0
        self._error: CompressionError | None = None

    @property
    def buffered(self) -> int:
        """
        Bytes received but not decoded yet.
        """
        return len(self._buffer) - self._offset

    def feed(self, data: bytes) -> bytes:
        """
        Decode C{data} (which may hold any part of any number of frames).

        @return: the payload of every frame completed by it.
        @raise CompressionError: corrupt or oversized frame.
        """
        self.push(data)
        out = []
        while (payload := self.pull()) is not None:
            out.append(payload)
        return b"".join(out)

    def push(self, data: bytes) -> None:
        """
        Add received bytes, without decoding them yet.
        """
        if self._error is not None:
            raise self._error
        if self._offset and self._offset >= len(self._buffer) // 2:
            del self._buffer[: self._offset]
            self._offset = 0
        self._buffer += data
        self.bytesIn += len(data)

    def pull(self) -> bytes | None:
        """
        Decode the next frame.

        @return: its payload, or L{None} if it is not complete yet.
        @raise CompressionError: the next frame is corrupt or too large
            (detected from its header before its payload arrived).
        """
        if self._error is not None:
            raise self._error
        try:
            return self._pull()
        except CompressionError as e:
            self._error = e
            self._buffer = bytearray()
            self._offset = 0
            raise

    def _pull(self) -> bytes | None:
        buf = self._buffer
        start = self._offset
        have = len(buf) - start
        if not have:
            return None
        ftype = buf[start]
        if ftype == TYPE_RAW:
            if have < RAW_HEADER:
                return None
            n = int.from_bytes(buf[start + 1 : start + 4], "big")
            if n > self.maxFrame:
                raise CompressionError(f"raw frame of {n} bytes exceeds {self.maxFrame}")
            if have < RAW_HEADER + n:
                return None
            payload = bytes(buf[start + RAW_HEADER : start + RAW_HEADER + n])
            self._offset = start + RAW_HEADER + n
        elif ftype == TYPE_LZ4:
            if have < LZ4_HEADER:
                return None
            clen = int.from_bytes(buf[start + 1 : start + 4], "big")
            rlen = int.from_bytes(buf[start + 4 : start + 7], "big")
            if rlen > self.maxFrame:
                raise CompressionError(f"lz4 frame of {rlen} bytes exceeds {self.maxFrame}")
            if not 0 < clen <= rlen:
                raise CompressionError(f"lz4 frame of {clen} bytes for {rlen} is malformed")
            if have < LZ4_HEADER + clen:
                return None
            block = memoryview(buf)[start + LZ4_HEADER : start + LZ4_HEADER + clen]
            try:
                payload = lz4.block.decompress(block, uncompressed_size=rlen)
            except lz4.block.LZ4BlockError as e:
                raise CompressionError(f"corrupt lz4 frame: {e}") from None
            finally:
                block.release()
            if len(payload) != rlen:
                raise CompressionError(
                    f"lz4 frame decompressed to {len(payload)} bytes, not {rlen}"
                )
            self._offset = start + LZ4_HEADER + clen
        else:
            raise CompressionError(f"unknown compression frame type {ftype:#04x}")
        self.bytesOut += len(payload)
        return payload


@implementer(IStreamTransport)
class CompressingTransport:
    """
    The transport an application protocol sees on a compressed stream:
    writes are compressed, everything else is the stream's.

    Attributes it does not define (C{disconnecting}, a stream's
    C{streamID}, ...) are looked up on the wrapped transport.

    @ivar compressor: the L{Compressor}, for its statistics.
    """

    def __init__(
        self,
        transport: Any,
        compressor: Compressor | None = None,
        reader: DecompressingProtocol | None = None,
    ) -> None:
        """
        @param transport: the stream (an L{ITransport}, L{IConsumer} and
            L{IPushProducer}).
        @param reader: the L{DecompressingProtocol} reading the same
            stream, which then handles pause and resume so that frames it
            already holds wait too.
        """
        self._transport = transport
        self.compressor = compressor or Compressor()
        self._reader = reader

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_transport":
            raise AttributeError(name)
        return getattr(self._transport, name)

    def __repr__(self) -> str:
        return f"<CompressingTransport {self._transport!r}>"

    # ITransport

    def write(self, data: bytes) -> None:
        if not data or getattr(self._transport, "disconnecting", False):
            return
        self._transport.write(self.compressor.compress(data))

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        self._transport.loseConnection()

    def loseWriteConnection(self) -> None:
        """
        Half-close.  Nothing needs flushing first: the compressor holds
        nothing back.
        """
        self._transport.loseWriteConnection()

    def abortConnection(self) -> None:
        self._transport.abortConnection()

    def getPeer(self) -> Any:
        return self._transport.getPeer()

    def getHost(self) -> Any:
        return self._transport.getHost()

    # IConsumer: a producer writing to us is throttled by the stream.

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._transport.unregisterProducer()

    # IPushProducer: the reading side.

    def pauseProducing(self) -> None:
        if self._reader is not None:
            self._reader._pauseReading()
        else:
            self._transport.pauseProducing()

    def resumeProducing(self) -> None:
        if self._reader is not None:
            self._reader._resumeReading()
        else:
            self._transport.resumeProducing()

    def stopProducing(self) -> None:
        self._transport.stopProducing()


@implementer(IProtocol, IHalfCloseableProtocol)
class DecompressingProtocol:
    """
    The protocol connected to a compressed stream: decodes what arrives and
    hands it to C{inner}, which is connected to a L{CompressingTransport}
    of the same stream.

    A corrupt frame is logged and the stream aborted (the inner protocol
    then gets C{connectionLost} with the stream's abort reason).  The end of
    input is forwarded as C{readConnectionLost} if C{inner} is
    half-closeable; otherwise the stream is closed, as a stream does for a
    plain protocol.  Input ending in the middle of a frame is corrupt.

    @ivar inner: the application protocol.
    @ivar decompressor: the L{Decompressor}, for its statistics.
    @ivar innerTransport: the L{CompressingTransport} C{inner} writes to.
    """

    transport: Any = None
    connected = 0

    def __init__(self, inner: IProtocol, decompressor: Decompressor | None = None) -> None:
        self.inner = inner
        self.decompressor = decompressor or Decompressor()
        self.innerTransport: CompressingTransport | None = None
        self._paused = False
        self._delivering = False
        self._readLostPending = False
        self._halted = False
        self._lostReason: Failure | None = None
        self._lostForwarded = False

    @property
    def stats(self) -> CompressionStats:
        """
        Raw and wire byte counts of both directions.
        """
        comp = self.innerTransport.compressor if self.innerTransport is not None else None
        return CompressionStats(
            rawSent=comp.bytesIn if comp else 0,
            wireSent=comp.bytesOut if comp else 0,
            wireReceived=self.decompressor.bytesIn,
            rawReceived=self.decompressor.bytesOut,
        )

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport
        self.connected = 1
        self.innerTransport = CompressingTransport(transport, reader=self)
        self.inner.makeConnection(self.innerTransport)

    def connectionMade(self) -> None:
        """
        Nothing to do (L{IProtocol} asks for it): L{makeConnection}
        connects C{inner}, which gets its own C{connectionMade}.
        """

    def dataReceived(self, data: bytes) -> None:
        if self._halted:
            return
        self.decompressor.push(data)
        self._deliver()

    def readConnectionLost(self) -> None:
        self._readLostPending = True
        self._deliver()

    def writeConnectionLost(self) -> None:
        if IHalfCloseableProtocol.providedBy(self.inner):
            self.inner.writeConnectionLost()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        Forward the end of the stream, after the frames already received if
        it ended cleanly (even if our reader is paused: what the peer sent
        is delivered, not silently dropped), or at once if it was aborted.
        """
        if self._lostReason is not None:
            return
        self.connected = 0
        self._lostReason = reason
        if not reason.check(ConnectionDone):
            self._halted = True
        self._deliver()

    # Flow control, called by our CompressingTransport.

    def _pauseReading(self) -> None:
        self._paused = True
        if self._lostReason is None:
            self.transport.pauseProducing()

    def _resumeReading(self) -> None:
        self._paused = False
        self._deliver()
        if not self._paused and self._lostReason is None:
            self.transport.resumeProducing()

    def _deliver(self) -> None:
        """
        Hand decoded frames to C{inner} until it pauses us or input runs
        out; then forward the end of input if it came and all was read, and
        the end of the stream if it came.  Re-entrant calls (C{inner}
        closing the stream from C{dataReceived}) leave the work to the
        outer call, so C{connectionLost} always comes last.
        """
        if self._delivering:
            return
        self._delivering = True
        try:
            dec = self.decompressor
            while not self._halted and (not self._paused or self._lostReason is not None):
                try:
                    payload = dec.pull()
                except CompressionError as e:
                    self._fail(str(e))
                    break
                if payload is None:
                    break
                if payload:
                    self.inner.dataReceived(payload)
            if (
                self._readLostPending
                and not self._paused
                and not self._halted
                and self._lostReason is None
            ):
                self._readLostPending = False
                if dec.buffered:
                    self._fail(f"input ended inside a frame ({dec.buffered} bytes left)")
                elif IHalfCloseableProtocol.providedBy(self.inner):
                    self.inner.readConnectionLost()
                else:
                    self.transport.loseConnection()
        finally:
            self._delivering = False
        if self._lostReason is not None and not self._lostForwarded:
            self._lostForwarded = True
            self.inner.connectionLost(self._lostReason)

    def _fail(self, why: str) -> None:
        self._halted = True
        _log.warn(
            "Corrupt compressed data on {transport!r}: {why}; aborting it",
            transport=self.transport,
            why=why,
        )
        if self._lostReason is None:
            self.transport.abortConnection()


def wrapCompressed(transport: Any, inner: IProtocol) -> DecompressingProtocol:
    """
    Compress a connected stream in both directions.

    C{inner} is connected at once to a L{CompressingTransport} of
    C{transport}.  The returned protocol must get C{transport}'s events
    from now on: a handshake protocol that read the tunnel response
    forwards C{dataReceived} (starting with any bytes that followed the
    response), C{readConnectionLost} and C{connectionLost} to it.  (To
    connect a fresh stream instead, use
    C{stream.setProtocol(DecompressingProtocol(inner))}.)

    @param transport: the stream.
    @param inner: the application protocol, not yet connected.
    @return: the L{DecompressingProtocol} reading C{transport}.
    """
    proto = DecompressingProtocol(inner)
    proto.makeConnection(transport)
    return proto
