"""
Yamux (C{/yamux/1.0.0}): many streams over one secure connection.

L{YamuxSession} is a Twisted protocol connected to the secure channel's
transport; each L{YamuxStream} is an ordinary Twisted transport (with
producer/consumer flow control) that a stream protocol is connected to with
L{YamuxStream.setProtocol}.  Three private modules hold the parts:

  - L{beam.p2p.muxer._yamux_frames}: the wire format (sans-IO codec);
  - L{beam.p2p.muxer._yamux_stream}: L{YamuxStream}, one stream's windows,
    queues and buffers;
  - L{beam.p2p.muxer._yamux_lifecycle}: the stream's lifecycle as a state
    machine (an enum of states and one transition table; drawn in
    C{docs/state-machines/yamux-stream.md}).

This module is the session: the protocol adapter, frame dispatch, stream
IDs, pings, go-away, and the session-wide flow control below.  Both names
are imported from here (C{from beam.p2p.muxer.yamux import YamuxSession,
YamuxStream}).

Flow control, the part that is easy to get wrong:

  - I{Receiving}: a stream grants its peer C{initialWindow} bytes.  Data that
    arrives while the stream's reader has paused it (or before a protocol is
    set) is buffered; credit is given back with a window update only for bytes
    actually handed to the protocol, batched until half a window is owed.  So
    C{window remaining + buffered + delivered-but-unacknowledged} is always
    the granted window: a stalled reader stalls the remote writer, and the
    buffer never exceeds the window.  A peer that overruns the window is
    cut off with a protocol-error go-away before its payload is buffered.
  - I{Growing the receive window}: one 256 KiB window in flight caps a
    stream at C{window / round-trip}, which on loopback between two busy
    event loops was ~30% below what the rest of the stack can move.  So a
    stream whose peer used up the whole window (the writer had to wait for
    us) while our reader kept up (nothing buffered, not paused) doubles its
    window with the next update, up to C{maxStreamWindow}.  "Used up" is
    judged from the peer's side: a yamux writer sends exactly up to its
    credit, so a window-limited peer stops at a byte count equal to one of
    the cumulative grants we recently sent (the newest ones may still be on
    their way); received data ending exactly there is the sign.  (A writer
    whose writes happen to end there too is taken as window-limited; the
    cost of that mistake is memory within the budget below.)  The growth of all
    streams of a session together is capped at C{windowBudget}, so the
    memory a peer can make us hold stays C{streams * initialWindow +
    windowBudget} at most, and a reader that pauses never grows.
  - I{Resource accounting}: a session given a L{ConnectionScope} (the
    node's; see L{beam.p2p.resources}) reserves every stream in it before
    the stream exists, in either direction, together with the memory of
    its receive window (what the peer may make us buffer on it), and each
    growth of that window; a growth that does not fit is simply not made.
    A SYN the scopes have no room for is answered with an RST (the spec's
    refusal), before anything of it is buffered, and the session carries
    on; an L{openStream} they have no room for raises
    L{StreamResourceLimitExceeded}.  A stream's scope (its
    C{resourceScope}) is released when the stream ends, however it ends.
  - I{How far}: a grown window is what a reader that stops holds (a tunnel
    whose local app stops reading after a fast start buffers the whole
    window), so the defaults are 4 MiB per stream and 8 MiB per session,
    twice OpenSSH's 2 MiB channel window; on loopback 2, 4 and 16 MiB moved
    the same within the noise, 1 MiB did not (C{docs/benchmarks.md},
    "Memory").  At 4 MiB one stream fills ~300 Mbit/s at 100 ms round trip.
  - I{Sending}: C{write} sends up to the send window in frames of at most
    C{maxFrameSize} and queues the rest.  A registered streaming producer is
    paused when the queue passes C{streamHighWater} and resumed below
    C{streamLowWater}; a pull producer is asked for more whenever the queue is
    low.  When the connection's transport pauses the session (its send buffer
    is full), all streams queue.
  - I{Session pause and resume cost what is busy, not what is open}: the
    transport pauses and resumes a busy session tens of thousands of times
    a minute, so neither may visit every stream (with 1,000 tunnelled
    connections that was 20 million visits, most of the run's time).
    Pausing only marks the session; a stream's producer is paused when it
    next writes (the write is queued), as a Twisted TCP transport pauses
    its producer only when a write finds the buffer full, so idle producers
    are never touched and each busy one gets ahead by one write at most.
    The session keeps the streams a resume has work for, in the order they
    started waiting: those with queued data and send window, those whose
    paused producer may go again, and pull producers waiting to be asked.
    A resume flushes them in that order, each stream that still has work
    going to the back, and stops as soon as the transport pauses again,
    so the next resume starts with the streams this one did not reach: every
    stream gets its turn (round-robin), none starves.
  - I{Control frames under backpressure}: stream data waits for the
    transport, but answers the peer provokes (ping ACKs, the ACK or RST of
    each SYN, window updates) cannot simply wait, and a peer that floods
    them without reading would grow the transport's buffer without bound.
    So while the transport has paused the session, at most one ping ACK is
    pending (a newer ping replaces an older unanswered one, which its
    sender sees as a lost ping; the ACK is sent on resume), and every control frame
    written or coalesced while paused counts against
    C{maxControlBacklog}; past it the session sends an internal-error
    go-away and aborts the connection (not C{loseConnection}, which would
    wait for a peer that does not read).  The count restarts whenever the
    transport drains, so what the session makes the transport hold is
    bounded by the transport's own high-water mark plus
    C{maxControlBacklog}.  We do not stop reading while paused instead:
    two peers that both send bulk data would each wait for the other to
    read, a deadlock; the windows already bound what a peer can send us.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from beam.errors import MuxerClosed, StreamLimitExceeded, StreamReset
from beam.p2p.resources import INBOUND, OUTBOUND, ConnectionScope, ResourceLimitExceeded, StreamScope
from beam.p2p.interfaces import IMuxerSession
from beam.p2p.muxer._yamux_frames import (
    DEFAULT_WINDOW,
    FLAG_ACK,
    FLAG_FIN,
    FLAG_RST,
    FLAG_SYN,
    GO_AWAY_INTERNAL_ERROR,
    GO_AWAY_NORMAL,
    GO_AWAY_PROTOCOL_ERROR,
    HEADER_LENGTH,
    MAX_UINT32,
    TYPE_DATA,
    TYPE_GO_AWAY,
    TYPE_PING,
    TYPE_WINDOW_UPDATE,
    Frame,
    FrameParser,
    YamuxProtocolError,
    encodeHeader,
)
from beam.p2p.muxer._yamux_stream import YamuxStream

__all__ = ["PROTOCOL_ID", "StreamResourceLimitExceeded", "YamuxProtocolError", "YamuxSession", "YamuxStream"]

#: The multistream-select protocol ID.
PROTOCOL_ID = "/yamux/1.0.0"

_log = Logger()


class StreamResourceLimitExceeded(StreamLimitExceeded, ResourceLimitExceeded):
    """
    The resource manager has no room for another stream on this
    connection.

    Both a L{StreamLimitExceeded} (what callers that open streams already
    handle) and a L{ResourceLimitExceeded} (naming the full scope and
    resource).
    """


@implementer(IPushProducer, IMuxerSession)
class YamuxSession(Protocol):
    """
    A yamux session over one connection.

    @ivar streams: the open streams by ID.
    @ivar isInitiator: we dialled; our streams get odd IDs, the peer's even.
    @ivar streamClosedObservers: callables taking no argument, each called
        once every time a stream of this session ends (FIN both ways,
        reset, or the session's loss), after the stream was removed from
        L{streams} and its protocol got C{connectionLost} (or had the reason
        kept for it), so L{streamCount} already excludes it.  The owner uses
        it to react to the last stream ending instead of polling.  Append
        and remove freely; an observer that raises is logged and the others
        still run.
    """

    def __init__(
        self,
        isInitiator: bool,
        onStream: Callable[[YamuxStream], None],
        clock: IReactorTime,
        *,
        maxStreams: int = 1024,
        initialWindow: int = DEFAULT_WINDOW,
        maxWindow: int = 16 * 1024 * 1024,
        maxFrameSize: int = 256 * 1024,
        streamHighWater: int = 64 * 1024,
        streamLowWater: int = 16 * 1024,
        maxStreamWindow: int = 4 * 1024 * 1024,
        windowBudget: int = 8 * 1024 * 1024,
        maxControlBacklog: int = 1024 * 1024,
        scope: ConnectionScope | None = None,
        wastedStreamBurst: int = 512,
        wastedStreamRate: float = 64.0,
    ) -> None:
        """
        @param onStream: called with each stream the peer opens, after it was
            accepted; call L{YamuxStream.setProtocol} on it (now or later;
            data is buffered, bounded by the window, until then).
        @param clock: times pings.
        @param maxStreams: open streams (both directions) beyond which we
            refuse to open or accept more.
        @param initialWindow: each stream's receive window; at least the
            spec's 256 KiB, which the peer assumes, and announced in the
            SYN/ACK when larger.
        @param maxWindow: the largest data frame we parse at all.
        @param maxFrameSize: the largest data frame we send.
        @param streamHighWater: queued bytes per stream above which its
            producer is paused.
        @param streamLowWater: queued bytes below which it is resumed.
        @param maxStreamWindow: how far a stream's receive window may grow
            while its peer is window-limited and its reader keeps up; equal
            to C{initialWindow} to never grow.
        @param windowBudget: the most all streams' windows together may
            grow beyond C{initialWindow}, bounding the memory a peer can make
            us hold.
        @param maxControlBacklog: bytes of control frames (ping ACKs,
            SYN ACKs and RSTs, window updates, ...) the session may write
            or owe while the transport keeps it paused, before it gives up
            on the peer: internal-error go-away and abort.
        @param wastedStreamBurst: how many streams the peer may waste
            at once before it is cut off: streams it opens and resets
            before any protocol was agreed on them.  That is the pattern
            of HTTP/2's "rapid reset" attack
            (CVE-2023-44487): each costs us a stream's setup and teardown
            and the peer next to nothing, and no limit on open streams
            stops it, since none stays open.  Past the budget the session
            sends a protocol-error go-away and closes.  SYNs we refuse
            (over a limit) do not count: a refusal costs us one RST (bounded
            by C{maxControlBacklog} for a peer that does not read), and an
            honest client that opens more streams than our limit (a forward
            with 1,000 concurrent connections) must not lose the streams
            we did accept.
        @param wastedStreamRate: how fast that budget refills, per second.
            An honest peer rarely wastes a stream (a client whose user
            closed a connection mid-setup), far below this.
        @param scope: the connection's resource scope, in which every
            stream and its receive window are reserved (see the module
            docstring); L{None} for no accounting beyond C{maxStreams}.
        """
        if not DEFAULT_WINDOW <= initialWindow <= min(maxWindow, MAX_UINT32):
            raise ValueError("initialWindow must be between 256 KiB and maxWindow")
        if not initialWindow <= maxStreamWindow <= min(maxWindow, MAX_UINT32):
            raise ValueError("maxStreamWindow must be between initialWindow and maxWindow")
        if windowBudget < 0:
            raise ValueError("windowBudget must not be negative")
        if maxControlBacklog < HEADER_LENGTH:
            raise ValueError("maxControlBacklog must hold at least one frame")
        self.isInitiator = isInitiator
        self._onStream = onStream
        self._clock = clock
        self.maxStreams = maxStreams
        self.initialWindow = initialWindow
        self.maxWindow = maxWindow
        self.maxFrameSize = maxFrameSize
        self.streamHighWater = streamHighWater
        self.streamLowWater = streamLowWater
        self.maxStreamWindow = maxStreamWindow
        self.windowBudget = windowBudget
        self.maxControlBacklog = maxControlBacklog
        self.scope = scope
        self.wastedStreamBurst = wastedStreamBurst
        self.wastedStreamRate = wastedStreamRate
        self._wasteTokens = float(wastedStreamBurst)
        self._wasteAt = clock.seconds()
        #: Streams the peer wasted (see C{wastedStreamBurst}) so far.
        self.wastedStreams = 0
        # Control bytes written or coalesced since the transport paused us.
        self._pausedControl = 0
        # The opaque value of the one ping ACK held while paused.
        self._pendingPingAck: int | None = None
        self._windowGrowth = 0
        self.streams: dict[int, YamuxStream] = {}
        # Streams a resume has work for, oldest first (see the module
        # docstring); an OrderedDict for O(1) pops from the front.
        self._waiting: OrderedDict[YamuxStream, None] = OrderedDict()
        self._nextStreamID = 1 if isInitiator else 2
        self._parser = FrameParser(self._checkData, maxDataLength=maxWindow)
        self._paused = False
        self._localGoAway = False
        self._remoteGoAway = False
        self._closing = False
        self._failed = False
        self._lost = False
        self._pings: dict[int, tuple[Deferred[float], float]] = {}
        self._nextPing = 0
        self._closedWaiters: list[Deferred[None]] = []
        self.streamClosedObservers: list[Callable[[], None]] = []
        self._parsing = False
        self._backlog: deque[bytes] = deque()

    # Public API.

    @property
    def acceptsStreams(self) -> bool:
        """
        Whether L{openStream} may open a stream now (short of
        C{maxStreams}): connected, not lost, not closing, not failed, and
        no go-away sent or received.  Read-only; once it turns False on a
        connected session it stays False.
        """
        return self._writable() and not (
            self._closing or self._failed or self._localGoAway or self._remoteGoAway
        )

    @property
    def streamCount(self) -> int:
        """
        How many streams are open (both directions, including ones
        half-closed).
        """
        return len(self.streams)

    def openStream(self) -> YamuxStream:
        """
        Open a stream to the peer (the SYN is sent at once; data may follow
        before the peer's ACK).

        @raise MuxerClosed: the session is closed or a go-away was sent or
            received.
        @raise StreamLimitExceeded: C{maxStreams} streams are open.
        @raise StreamResourceLimitExceeded: the resource manager has no room
            for the stream or its receive window.
        """
        if not self.acceptsStreams:
            raise MuxerClosed("the peer connection is closed to new streams")
        if len(self.streams) >= self.maxStreams:
            raise StreamLimitExceeded()
        streamID = self._nextStreamID
        if streamID > MAX_UINT32:
            raise MuxerClosed("the peer connection ran out of stream IDs")
        try:
            streamScope = self._reserveStream(OUTBOUND)
        except ResourceLimitExceeded as e:
            raise StreamResourceLimitExceeded(e.scope, e.resource, e.limit) from e
        self._nextStreamID += 2
        stream = YamuxStream(self, streamID, self.initialWindow, streamScope)
        self.streams[streamID] = stream
        self._sendControl(
            TYPE_WINDOW_UPDATE, FLAG_SYN, streamID, self.initialWindow - DEFAULT_WINDOW
        )
        return stream

    def ping(self) -> Deferred[float]:
        """
        Measure the round-trip time.

        @return: fires with the RTT in seconds, or fails with L{MuxerClosed}
            if the session ends first.
        """
        if not self._writable() or self._failed:
            return fail(MuxerClosed())
        opaque = self._nextPing
        self._nextPing = (opaque + 1) & MAX_UINT32

        def cancel(d: Deferred[float]) -> None:
            self._pings.pop(opaque, None)

        d: Deferred[float] = Deferred(cancel)
        self._pings[opaque] = (d, self._clock.seconds())
        self._sendControl(TYPE_PING, FLAG_SYN, 0, opaque)
        return d

    def goAway(self, code: int = GO_AWAY_NORMAL) -> None:
        """
        Tell the peer to open no more streams; existing ones continue.  We
        then refuse inbound streams and open none ourselves.
        """
        if self._localGoAway:
            return
        self._localGoAway = True
        self._sendControl(TYPE_GO_AWAY, 0, 0, code)

    def close(self) -> None:
        """
        End the session: send what the windows allow, a go-away, and lose the
        transport (which flushes its buffer).  Streams get C{connectionLost}
        with L{MuxerClosed} when the connection is gone, except those whose
        peer had finished sending: they first deliver what they hold.
        """
        if self._closing or self._lost or self.transport is None:
            return
        self._closing = True
        self._paused = False
        for stream in list(self._waiting):
            stream._flushSend()
        self.goAway(GO_AWAY_NORMAL)
        self._loseTransport()

    def _loseTransport(self) -> None:
        """
        Lose the transport.  We unregister as its producer first: Twisted's
        TLS layer (like a TCP transport with a pull producer) postpones
        C{loseConnection} until its producer is gone, which would otherwise
        keep the connection open forever.
        """
        unregister = getattr(self.transport, "unregisterProducer", None)
        if unregister is not None:
            unregister()
        self.transport.loseConnection()  # type: ignore[union-attr]  # only called while connected

    def whenClosed(self) -> Deferred[None]:
        """
        @return: fires with L{None} when the connection is gone.
        """
        if self._lost:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._closedWaiters.append(d)
        return d

    # Protocol

    def connectionMade(self) -> None:
        registerProducer = getattr(self.transport, "registerProducer", None)
        if registerProducer is not None:
            registerProducer(self, True)

    def dataReceived(self, data: bytes) -> None:
        """
        Parse and dispatch frames.  Never raises: a protocol violation sends
        a go-away (protocol error) and loses the connection.
        """
        if self._failed or self._lost:
            return
        if self._parsing:
            # A stream protocol fed us bytes from inside a callback: finish
            # the frames at hand first, so frames are handled in order.
            self._backlog.append(data)
            return
        self._parsing = True
        try:
            while True:
                for frame in self._parser.feed(data):
                    self._handleFrame(frame)
                    if self._failed or self._lost:
                        return
                if not self._backlog:
                    return
                data = self._backlog.popleft()
        except YamuxProtocolError as e:
            _log.warn(
                "Yamux protocol error from {peer}: {error}; closing",
                peer=self._peer(),
                error=str(e),
            )
            self._fail(GO_AWAY_PROTOCOL_ERROR)
        except Exception:  # noqa: BLE001 - never raise out of dataReceived
            _log.failure("Internal error in the yamux session with {peer}", peer=self._peer())
            self._fail(GO_AWAY_INTERNAL_ERROR)
        finally:
            self._parsing = False
            if self._failed or self._lost:
                self._backlog.clear()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._lost:
            return
        self._lost = True
        error = MuxerClosed(f"the peer connection is closed ({reason.getErrorMessage()})")
        for stream in list(self.streams.values()):
            stream._sessionLost(Failure(error))
        self.streams.clear()
        pings, self._pings = self._pings, {}
        for d, _ in pings.values():
            d.errback(Failure(MuxerClosed()))
        waiters, self._closedWaiters = self._closedWaiters, []
        for w in waiters:
            w.callback(None)

    # IPushProducer: the transport's send buffer filled or drained.

    def pauseProducing(self) -> None:
        """
        The connection is congested: hold all stream data.  Each stream's
        producer is paused when it next writes (see the module docstring),
        so this costs nothing per stream.
        """
        self._paused = True

    def resumeProducing(self) -> None:
        """
        The connection drained: send queued stream data and resume
        producers, stream by stream in the order they started waiting, until
        the connection is congested again.  A stream that still waits after
        its turn goes to the back; one resume takes at most as many turns as
        streams were waiting when it began.
        """
        self._paused = False
        self._pausedControl = 0
        if self._pendingPingAck is not None:
            opaque, self._pendingPingAck = self._pendingPingAck, None
            self._sendControl(TYPE_PING, FLAG_ACK, 0, opaque)
        waiting = self._waiting
        for _ in range(len(waiting)):
            if self._paused or not waiting:
                break
            stream, _ = waiting.popitem(last=False)
            stream._flushSend()

    def stopProducing(self) -> None:
        """
        The transport is going away; C{connectionLost} will follow.
        """

    # Internals.

    def _peer(self) -> Any:
        try:
            return self.transport.getPeer()  # type: ignore[union-attr]  # None raises, and is caught
        except Exception:  # noqa: BLE001 - only for a log message
            return None

    def _writable(self) -> bool:
        return self.transport is not None and not self._lost

    def _canSendData(self) -> bool:
        return not self._paused and self.transport is not None and not self._lost

    def _sendControl(self, ftype: int, flags: int, streamID: int, length: int) -> None:
        if self._writable():
            if self._paused and not self._chargeControl():
                return
            self.transport.write(encodeHeader(ftype, flags, streamID, length))  # type: ignore[union-attr]  # _writable

    def _chargeControl(self) -> bool:
        """
        Count one control frame written or coalesced while the transport
        has paused us; past C{maxControlBacklog}, give up on the peer.

        @return: whether the frame may still be sent.
        """
        if self._failed:
            return True  # our own final go-away
        self._pausedControl += HEADER_LENGTH
        if self._pausedControl <= self.maxControlBacklog:
            return True
        _log.warn(
            "Yamux peer {peer} does not read while it makes us answer"
            " ({bytes} bytes of control frames held); closing",
            peer=self._peer(),
            bytes=self._pausedControl,
        )
        self._fail(GO_AWAY_INTERNAL_ERROR, abort=True)
        return False

    def _answerPing(self, opaque: int) -> None:
        """
        Answer the peer's ping; while paused, hold only the newest answer.
        """
        if not self._paused:
            self._sendControl(TYPE_PING, FLAG_ACK, 0, opaque)
        elif self._chargeControl():
            self._pendingPingAck = opaque

    def _sendData(self, streamID: int, parts: list[bytes], n: int) -> None:
        self.transport.writeSequence(  # type: ignore[union-attr]  # callers checked _canSendData
            [encodeHeader(TYPE_DATA, 0, streamID, n), *parts]
        )

    def _reserveStream(self, direction: str) -> StreamScope | None:
        """
        Reserve a new stream and its receive window in our scope (nothing
        without one).

        @raise ResourceLimitExceeded: there is no room; nothing is held.
        @raise MuxerClosed: the scope was already released (the connection
            is ending).
        """
        scope = self.scope
        if scope is None:
            return None
        if scope.closed:
            raise MuxerClosed("the peer connection is closed to new streams")
        streamScope = scope.openStream(direction)
        try:
            streamScope.reserveMemory(self.initialWindow)
        except ResourceLimitExceeded:
            streamScope.done()
            raise
        return streamScope

    def _growWindow(self, current: int, stream: YamuxStream) -> int:
        """
        How much C{stream}, whose receive window is C{current}, may grow it
        by now (doubling, within C{maxStreamWindow}, what is left of the
        session's C{windowBudget}, and, with a resource scope, the memory
        its scopes have room for); the growth is reserved until the stream
        ends.
        """
        grow = min(current, self.maxStreamWindow - current, self.windowBudget - self._windowGrowth)
        if grow <= 0:
            return 0
        scope = stream.resourceScope
        if scope is not None and not scope.tryReserveMemory(grow):
            return 0
        self._windowGrowth += grow
        return grow

    def _forget(self, stream: YamuxStream) -> None:
        if self.streams.get(stream.streamID) is stream:
            del self.streams[stream.streamID]

    def _streamClosed(self, stream: YamuxStream) -> None:
        """
        C{stream} has ended and is forgotten: tell L{streamClosedObservers}.
        """
        for observer in list(self.streamClosedObservers):
            try:
                observer()
            except Exception:  # noqa: BLE001 - contain user code, log it
                _log.failure("Stream-closed observer failed after {stream!r}", stream=stream)

    def _fail(self, code: int, abort: bool = False) -> None:
        """
        Send a go-away with C{code} and end the connection: lose it (the
        go-away is flushed), or abort it when the peer does not read.
        """
        if self._failed:
            return
        self._failed = True
        self._pendingPingAck = None
        if self._writable():
            self._sendControl(TYPE_GO_AWAY, 0, 0, code)
            self._localGoAway = True
            if abort and hasattr(self.transport, "abortConnection"):
                unregister = getattr(self.transport, "unregisterProducer", None)
                if unregister is not None:
                    unregister()
                self.transport.abortConnection()  # type: ignore[union-attr]  # _writable
            else:
                self._loseTransport()

    def _wasted(self) -> None:
        """
        The peer wasted a stream (see C{wastedStreamBurst}): take a token,
        and cut the session off when there is none.
        """
        self.wastedStreams += 1
        now = self._clock.seconds()
        tokens = min(float(self.wastedStreamBurst), self._wasteTokens + (now - self._wasteAt) * self.wastedStreamRate)
        self._wasteAt = now
        if tokens < 1.0:
            if not self._failed:
                _log.warn(
                    "Peer {peer} opened and reset or overran {n} streams (a rapid-reset flood); closing the connection",
                    peer=self._peer(),
                    n=self.wastedStreams,
                )
            self._wasteTokens = tokens
            # Aborted if the peer does not read either: a flush would
            # never come.
            self._fail(GO_AWAY_PROTOCOL_ERROR, abort=self._paused)
            return
        self._wasteTokens = tokens - 1.0

    def _checkData(self, streamID: int, flags: int, length: int) -> None:
        """
        Refuse a data frame longer than the stream's remaining receive window
        before its payload is buffered.  Frames for unknown (new, or already
        closed) streams may carry at most a fresh window.
        """
        stream = self.streams.get(streamID)
        limit = self.initialWindow if stream is None else stream._recvWindow
        if length > limit:
            raise YamuxProtocolError(
                f"data frame of {length} bytes exceeds stream {streamID}'s window of {limit}"
            )

    def _handleFrame(self, frame: Frame) -> None:
        ftype = frame.type
        if ftype == TYPE_DATA or ftype == TYPE_WINDOW_UPDATE:
            self._handleStreamFrame(frame)
        elif ftype == TYPE_PING:
            if frame.flags & FLAG_SYN:
                self._answerPing(frame.length)
            elif frame.flags & FLAG_ACK:
                entry = self._pings.pop(frame.length, None)
                if entry is not None:
                    d, started = entry
                    d.callback(self._clock.seconds() - started)
        else:
            self._remoteGoAway = True
            if frame.length != GO_AWAY_NORMAL:
                _log.warn(
                    "Peer {peer} went away with error code {code}",
                    peer=self._peer(),
                    code=frame.length,
                )

    def _handleStreamFrame(self, frame: Frame) -> None:
        streamID = frame.streamID
        flags = frame.flags
        if streamID == 0:
            raise YamuxProtocolError("stream frame on stream 0")
        stream = self.streams.get(streamID)
        accepted = False
        if flags & FLAG_SYN:
            if stream is not None:
                raise YamuxProtocolError(f"SYN for open stream {streamID}")
            if (streamID & 1) == (1 if self.isInitiator else 0):
                raise YamuxProtocolError(f"peer opened stream {streamID} with our parity")
            if self._localGoAway or self._closing or len(self.streams) >= self.maxStreams:
                self._sendControl(TYPE_WINDOW_UPDATE, FLAG_RST, streamID, 0)
                return
            try:
                streamScope = self._reserveStream(INBOUND)
            except (ResourceLimitExceeded, MuxerClosed):
                # Refused (counted and logged by the resource manager):
                # the spec's refusal, and nothing of the stream is kept.
                self._sendControl(TYPE_WINDOW_UPDATE, FLAG_RST, streamID, 0)
                return
            stream = YamuxStream(self, streamID, self.initialWindow, streamScope)
            self.streams[streamID] = stream
            self._sendControl(
                TYPE_WINDOW_UPDATE, FLAG_ACK, streamID, self.initialWindow - DEFAULT_WINDOW
            )
            accepted = True
        if stream is None:
            # A late frame for a stream that is gone (e.g. we reset it):
            # its data was within the window we had granted; drop it.
            return
        if accepted:
            try:
                self._onStream(stream)
            except Exception:  # noqa: BLE001 - contain user code, log it
                _log.failure("onStream failed for {stream!r}; resetting it", stream=stream)
                stream.abortConnection()
        if frame.type == TYPE_WINDOW_UPDATE:
            stream._windowUpdate(frame.length)
        elif frame.length:
            stream._dataReceived(frame.payload)
        if flags & FLAG_FIN:
            stream._remoteFinReceived()
        if flags & FLAG_RST:
            early = stream.protocolId is None and (streamID & 1) == (0 if self.isInitiator else 1)
            stream._finish(Failure(StreamReset()))
            if early:
                self._wasted()
