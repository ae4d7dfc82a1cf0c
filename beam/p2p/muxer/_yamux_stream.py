"""
One yamux stream as a Twisted transport: L{YamuxStream}.

The stream and its L{beam.p2p.muxer.yamux.YamuxSession} are one unit split
across two files: the session parses frames and owns the connection, the
stream keeps one stream's windows, queues and buffers, and each calls the
other's underscored methods (private to this package, not to the file).
The flow-control design is described in L{beam.p2p.muxer.yamux}.

The stream's lifecycle (open, half-closed either way, closed, reset) is the
state machine of L{beam.p2p.muxer._yamux_lifecycle}: C{self._state} is a
L{StreamState}, and every lifecycle event goes through L{_advance}, which
looks it up in the transition table.  Writes and data frames only read an
attribute of the current state, so the machine costs nothing per byte.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.interfaces import (
    IConsumer,
    IHalfCloseableProtocol,
    IProtocol,
    IPushProducer,
    ITransport,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from beam.p2p.muxer._yamux_frames import (
    DEFAULT_WINDOW,
    FLAG_FIN,
    FLAG_RST,
    MAX_UINT32,
    TYPE_WINDOW_UPDATE,
    YamuxProtocolError,
)
from beam.p2p.muxer._yamux_lifecycle import (
    IGNORE,
    VIOLATION,
    StreamInput,
    StreamState,
    transition,
)

if TYPE_CHECKING:
    from beam.p2p.muxer.yamux import YamuxSession
    from beam.p2p.resources import StreamScope

__all__ = ["StreamInput", "StreamState", "YamuxStream"]

_log = Logger()

_CLOSED = StreamState.CLOSED
_DONE = StreamState.DONE


@implementer(ITransport, IConsumer, IPushProducer)
class YamuxStream:
    """
    One yamux stream, as a Twisted transport.

    @ivar streamID: the yamux stream ID (odd if the initiator opened it).
    @ivar session: the L{YamuxSession} carrying it.
    @ivar protocol: the connected protocol, or L{None} until L{setProtocol}.
    @ivar protocolId: slot for the negotiated protocol name (set by the node).
    @ivar connection: slot for the owning peer connection (set by the node).
    @ivar resourceScope: the stream's L{StreamScope} in the resource
        manager, or L{None} when its session does no accounting.  It holds
        the stream and its receive window until the stream ends (released
        then, however it ends); the node adds the negotiated protocol to
        it, and a tunnel its service and its local descriptor.
    """

    protocolId: str | None = None
    connection: Any = None
    #: Set when the session was lost while the peer's FIN waited to be
    #: delivered (see L{_sessionLost}); a class default, so it costs an open
    #: stream nothing.
    _sessionLostReason: Failure | None = None

    def __init__(
        self, session: YamuxSession, streamID: int, recvWindow: int, resourceScope: StreamScope | None = None
    ) -> None:
        self.streamID = streamID
        self.session = session
        self.resourceScope = resourceScope
        self.protocol: IProtocol | None = None
        # The lifecycle (see _yamux_lifecycle); the flags below are flow
        # control and re-entrancy guards, orthogonal to it.
        self._state = StreamState.OPEN
        # Sending.
        self._sendWindow = DEFAULT_WINDOW
        # The queues exist only while they hold something: an empty deque
        # costs ~740 bytes, and the three a stream had were 2.2 of the 2.7
        # KiB an open stream cost (2.2 MiB per 1,000 tunnelled connections).
        self._sendQueue: deque[bytes | memoryview] | None = None
        self._queued = 0
        self._producer: Any = None
        self._streaming = True
        self._producerPaused = False
        self._pulling = False
        self._writes = 0
        # Receiving.
        self._recvMax = recvWindow
        self._recvWindow = recvWindow
        self._unacked = 0
        self._recvBuffer: deque[bytes] | None = None
        self._buffered = 0
        self._readPaused = False
        self._draining = False
        # The peer used up our whole window since the last update.
        self._exhausted = False
        # Bytes received and credit granted since the stream opened, and the
        # last few grant totals (see the session module's docstring).
        self._received = 0
        self._granted = recvWindow
        self._pastGrants: tuple[int, ...] = ()
        # Why the stream ended, kept for a protocol set after the end.
        self._lostReason: Failure | None = None

    def __repr__(self) -> str:
        return f"<YamuxStream {self.streamID}>"

    @property
    def state(self) -> StreamState:
        """
        Where the stream is in its lifecycle (read-only; for status and
        tests).
        """
        return self._state

    @property
    def disconnecting(self) -> bool:
        """
        Twisted's flag: True once L{loseConnection} was called or the stream
        ended (our direction no longer takes writes).
        """
        return not self._state.sending

    def _advance(self, event: StreamInput) -> bool:
        """
        Feed C{event} to the lifecycle machine.

        @return: True if it was taken (the state may have changed), False
            if the table ignores it here.
        @raise YamuxProtocolError: the peer broke the protocol (data after
            its FIN).
        @raise IllegalTransition: our own code is wrong.
        """
        state = self._state
        outcome = transition(state, event)
        if outcome is IGNORE:
            return False
        if outcome is VIOLATION:
            raise YamuxProtocolError(
                f"{event.value} on stream {self.streamID} in state {state.name} (after its FIN)"
            )
        self._state = outcome  # type: ignore[assignment]  # a StreamState: IGNORE, VIOLATION handled above
        return True

    # Connecting a protocol.

    def setProtocol(self, protocol: IProtocol) -> None:
        """
        Connect C{protocol} to this stream: call its C{makeConnection}, then
        deliver what arrived before it was set (data, end of input, or the
        stream's end).
        """
        self.protocol = protocol
        protocol.makeConnection(self)
        if self._state is _CLOSED:
            reason, self._lostReason = self._lostReason, None
            if reason is not None:
                self._callLost(reason)
            return
        self._drain()

    # ITransport

    def write(self, data: bytes) -> None:
        """
        Send C{data}, queueing what the send window does not allow yet.
        Writes after L{loseConnection} or the stream's end are ignored, as
        Twisted transports do.
        """
        # WRITE is accepted exactly where the state is "sending" (checked
        # against the table at import): no table lookup per write.
        if not self._state.sending or not data:
            return
        if type(data) is not bytes:
            data = bytes(data)
        self._writes += 1
        n = len(data)
        session = self.session
        if (
            not self._queued
            and n <= self._sendWindow
            and n <= session.maxFrameSize
            and session._canSendData()
        ):
            self._sendWindow -= n
            session._sendData(self.streamID, [data], n)
            return
        if session._lost:
            # The connection is gone; the stream lives on only to deliver
            # what it received (see _sessionLost).
            return
        queue = self._sendQueue
        if queue is None:
            queue = self._sendQueue = deque()
        queue.append(data)
        self._queued += n
        self._flushSend()

    def writeSequence(self, data: Any) -> None:
        """
        Send the concatenation of C{data}.
        """
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        """
        Close our side: send FIN once the queued data has been sent.  Incoming
        data is still delivered until the peer's FIN, after which the
        protocol's C{connectionLost} gets L{ConnectionDone}.
        """
        if self._advance(StreamInput.CLOSE) and not self._queued:
            self._sendFin()

    def loseWriteConnection(self) -> None:
        """
        Half-close: the same as L{loseConnection}, since a yamux FIN closes
        only our direction either way.
        """
        self.loseConnection()

    def abortConnection(self) -> None:
        """
        Reset the stream: send RST, drop everything queued, and give the
        protocol L{ConnectionAborted}.
        """
        self._end(StreamInput.RESET, Failure(ConnectionAborted()), sendReset=True)

    def getPeer(self) -> Any:
        """
        The address of the connection carrying this stream.
        """
        return self.session.transport.getPeer()  # type: ignore[union-attr]  # streams live on connected sessions

    def getHost(self) -> Any:
        """
        Our address on the connection carrying this stream.
        """
        return self.session.transport.getHost()  # type: ignore[union-attr]  # streams live on connected sessions

    # IConsumer

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        """
        Register a producer writing to this stream; it is paused while our
        queue is full or the connection is congested.
        """
        if self._producer is not None:
            raise RuntimeError(f"{self!r} already has a producer registered")
        if self._state is _CLOSED:
            producer.stopProducing()
            return
        self._producer = producer
        self._streaming = streaming
        self._producerPaused = False
        self._updateProducer()

    def unregisterProducer(self) -> None:
        """
        Forget the registered producer.
        """
        self._producer = None
        self._track()

    # IPushProducer: the reading side.

    def pauseProducing(self) -> None:
        """
        Stop delivering data; it is buffered, and since no credit is given
        back for buffered bytes the peer stops after one window.
        """
        self._readPaused = True

    def resumeProducing(self) -> None:
        """
        Deliver buffered data and resume delivering.
        """
        self._readPaused = False
        self._drain()

    def stopProducing(self) -> None:
        """
        Our consumer is gone: close our side, as a TCP transport does.
        """
        self.loseConnection()

    # Sending internals.

    def _flushSend(self) -> None:
        """
        Send as much of the queue as the window and the connection allow,
        then the FIN if one is due, then adjust the producer.
        """
        session = self.session
        queue = self._sendQueue
        maxFrame = session.maxFrameSize
        while self._queued and self._sendWindow > 0 and session._canSendData():
            assert queue is not None  # something is queued
            n = min(self._sendWindow, self._queued, maxFrame)
            parts: list[bytes] = []
            need = n
            while need:
                head = queue[0]
                size = len(head)
                if size <= need:
                    queue.popleft()
                    parts.append(head if type(head) is bytes else bytes(head))
                    need -= size
                else:
                    view = head if isinstance(head, memoryview) else memoryview(head)
                    parts.append(bytes(view[:need]))
                    queue[0] = view[need:]
                    need = 0
            self._queued -= n
            self._sendWindow -= n
            session._sendData(self.streamID, parts, n)
        if not self._queued:
            self._sendQueue = None
            if self._state.finQueued:
                self._sendFin()
        self._updateProducer()

    def _sendFin(self) -> None:
        """
        Our queue is empty and our FIN was waiting: send it.
        """
        self._advance(StreamInput.FIN_DUE)
        self.session._sendControl(TYPE_WINDOW_UPDATE, FLAG_FIN, self.streamID, 0)
        self._maybeFinish()

    def _windowUpdate(self, delta: int) -> None:
        """
        The peer granted C{delta} more bytes: send what waited for them.
        """
        if self._sendWindow + delta > MAX_UINT32:
            raise YamuxProtocolError(f"window update overflows stream {self.streamID}'s window")
        if not self._advance(StreamInput.WINDOW):
            return
        self._sendWindow += delta
        if delta:
            self._flushSend()

    def _updateProducer(self) -> None:
        """
        Pause or resume the registered producer to match the queue and the
        connection's state (with hysteresis between the water marks), then
        tell the session whether a resume has work for us.
        """
        producer = self._producer
        if producer is not None and self._state is not _CLOSED:
            session = self.session
            if not self._streaming:
                self._pullMore()
            elif self._producerPaused:
                if not session._paused and self._queued <= session.streamLowWater:
                    self._producerPaused = False
                    producer.resumeProducing()
            elif session._paused or self._queued > session.streamHighWater:
                self._producerPaused = True
                producer.pauseProducing()
        self._track()

    def _needsResume(self) -> bool:
        """
        Whether the session's next resume has work for us: queued data the
        send window allows (only the connection holds it back), or a
        producer that a resume may set going (a streaming one we paused, a
        pull one) while our queue is low.  Data blocked by the send window
        waits for a window update instead, which flushes it.
        """
        if self._state is _CLOSED:
            return False
        if self._queued and self._sendWindow > 0:
            return True
        if self._producer is None or self._queued > self.session.streamLowWater:
            return False
        return self._producerPaused or not self._streaming

    def _track(self) -> None:
        """
        Keep our place in the session's set of streams waiting for a
        resume: join at the back when we start waiting, keep the place
        while we do, leave when we stop.
        """
        waiting = self.session._waiting
        if self._needsResume():
            if self not in waiting:
                waiting[self] = None
        else:
            waiting.pop(self, None)

    def _pullMore(self) -> None:
        """
        Ask a non-streaming producer for more while our queue is low; it stops
        when the window fills, the connection congests, or it writes nothing.
        """
        if self._pulling:
            return
        self._pulling = True
        session = self.session
        try:
            while (
                self._producer is not None
                and not self._streaming
                and self._state is not _CLOSED
                and not session._paused
                and session._writable()
                and self._queued <= session.streamLowWater
            ):
                before = self._writes
                self._producer.resumeProducing()
                if self._writes == before:
                    break
        finally:
            self._pulling = False

    # Receiving internals.

    def _dataReceived(self, payload: bytes) -> None:
        """
        A data frame arrived: deliver it, or buffer it while the reader is
        paused, behind buffered data, or not yet set.
        """
        n = len(payload)
        self._recvWindow -= n
        self._received += n
        if not self._recvWindow or self._received in self._pastGrants:
            self._exhausted = True
        # DATA stays put exactly where the state is "receiving"; elsewhere
        # the table refuses it (after the peer's FIN) or drops it (ended).
        if not self._state.receiving:
            self._advance(StreamInput.DATA)
            return
        if self.protocol is None or self._readPaused or self._recvBuffer:
            buffer = self._recvBuffer
            if buffer is None:
                buffer = self._recvBuffer = deque()
            buffer.append(payload)
            self._buffered += n
            # Our reader is behind: the window is not what limits the peer.
            self._exhausted = False
        else:
            self._deliver(payload)

    def _deliver(self, payload: bytes) -> None:
        try:
            self.protocol.dataReceived(payload)  # type: ignore[union-attr]  # callers checked it is set
        except Exception:  # noqa: BLE001 - contain user code, log it
            _log.failure("Stream {stream!r} protocol failed; resetting it", stream=self)
            self.abortConnection()
            return
        self._consumed(len(payload))

    def _consumed(self, n: int) -> None:
        """
        C{n} bytes reached the protocol: owe the peer that much credit, and
        pay it once half a window is owed (fewer, bigger updates).  No
        credit once the peer's direction is closed or the stream ended.
        """
        if not self._state.receiving:
            return
        self._unacked += n
        if self._unacked >= self._recvMax // 2:
            delta, self._unacked = self._unacked, 0
            if self._exhausted:
                self._exhausted = False
                if not self._readPaused and not self._recvBuffer:
                    grow = self.session._growWindow(self._recvMax, self)
                    self._recvMax += grow
                    delta += grow
            self._recvWindow += delta
            self._pastGrants = (*self._pastGrants[-2:], self._granted)
            self._granted += delta
            self.session._sendControl(TYPE_WINDOW_UPDATE, 0, self.streamID, delta)

    def _drain(self) -> None:
        if self._draining:
            return
        self._draining = True
        try:
            buffer = self._recvBuffer
            while (
                buffer
                and not self._readPaused
                and self._state is not _CLOSED
                and self.protocol is not None
            ):
                chunk = buffer.popleft()
                self._buffered -= len(chunk)
                self._deliver(chunk)
        finally:
            self._draining = False
        if not self._buffered:
            self._recvBuffer = None
        self._maybeDeliverFin()

    def _remoteFinReceived(self) -> None:
        """
        A frame carried the FIN flag (after its data, if any).
        """
        if self._advance(StreamInput.REMOTE_FIN):
            self._maybeDeliverFin()

    def _maybeDeliverFin(self) -> None:
        """
        Tell the protocol its input ended, once everything before the FIN
        was delivered.
        """
        if (
            not self._state.finPending
            or self.protocol is None
            or self._readPaused
            or self._recvBuffer
        ):
            return
        self._advance(StreamInput.FIN_DELIVERED)
        if IHalfCloseableProtocol.providedBy(self.protocol):
            try:
                self.protocol.readConnectionLost()
            except Exception:  # noqa: BLE001 - contain user code, log it
                _log.failure("Stream {stream!r} protocol failed; resetting it", stream=self)
                self.abortConnection()
                return
        else:
            self.loseConnection()
        self._maybeFinish()
        if self._sessionLostReason is not None:
            # The connection went away before: the peer's data is all
            # delivered now, so the stream ends (cleanly above, if our FIN
            # had gone out; with why the connection ended otherwise).
            self._finish(self._sessionLostReason)

    # Ending.

    def _maybeFinish(self) -> None:
        """
        Both FINs are through: the stream ends normally.
        """
        if self._state is _DONE:
            self._end(StreamInput.FINISH, Failure(ConnectionDone()))

    def _sessionLost(self, reason: Failure) -> None:
        """
        The session's connection is gone.  What the peer sent before its FIN
        is ours already: a stream whose FIN arrived but still waits to be
        delivered (behind buffered data, a paused reader, or a protocol not
        set yet) keeps it, and delivers it and then the FIN as its reader
        takes them; only then does it end (see L{_maybeDeliverFin}).  Any
        other stream ends now with C{reason}.
        """
        if not self._state.finPending:
            self._finish(reason)
            return
        self._sessionLostReason = reason
        # Nothing queued can be sent any more.
        self._sendQueue = None
        self._queued = 0

    def _finish(self, reason: Failure) -> None:
        """
        The stream was reset by the peer or lost with its session: end it
        with C{reason} (nothing if it already ended).
        """
        self._end(StreamInput.RESET, reason)

    def _end(self, event: StreamInput, reason: Failure, sendReset: bool = False) -> None:
        """
        End the stream through C{event} (C{RESET} or C{FINISH}): send RST
        if asked, forget it, drop its buffers, stop its producer, give the
        protocol C{connectionLost} (now, or when it is set), and tell the
        session's observers.  Nothing happens if it already ended.
        """
        if not self._advance(event):
            return
        session = self.session
        if sendReset:
            session._sendControl(TYPE_WINDOW_UPDATE, FLAG_RST, self.streamID, 0)
        session._forget(self)
        session._waiting.pop(self, None)
        session._windowGrowth -= self._recvMax - session.initialWindow
        self._recvMax = session.initialWindow
        if self.resourceScope is not None:
            # Releases the stream, its window and anything else reserved
            # in its scope (a tunnel's descriptor); once only.
            self.resourceScope.done()
        self._sendQueue = None
        self._queued = 0
        self._recvBuffer = None
        self._buffered = 0
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.stopProducing()
            except Exception:  # noqa: BLE001 - contain user code, log it
                _log.failure("Producer of {stream!r} failed to stop", stream=self)
        if self.protocol is None:
            self._lostReason = reason
        else:
            self._callLost(reason)
        session._streamClosed(self)

    def _callLost(self, reason: Failure) -> None:
        try:
            self.protocol.connectionLost(reason)  # type: ignore[union-attr]  # caller checked it is set
        except Exception:  # noqa: BLE001 - contain user code, log it
            _log.failure("connectionLost of {stream!r} failed", stream=self)
