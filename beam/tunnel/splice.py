"""
Joining a local TCP connection and a tunnel stream.

A L{Splice} owns two protocols: L{Splice.local}, connected to the TCP
connection (to the user's app on the client, to the service on the host),
and L{Splice.remote}, connected to the yamux stream (possibly through the
compression wrappers).  Once both are connected, L{Splice.start} joins
them:

  - I{Bytes} read on one side are written to the other, and counted.
  - I{Flow control}: each side's transport is registered as the streaming
    producer of the other, as Twisted's portforward does: when the TCP send
    buffer fills, the stream is paused (so its window closes and the remote
    writer stops); when the stream's send queue fills, the TCP socket stops
    being read.  The registered producers are thin proxies whose
    C{stopProducing} does nothing, so that the end of one side is handled
    here (FIN or RST on purpose) rather than by a transport closing its
    producer gracefully.
  - I{Half-close}: TCP end-of-file becomes a stream FIN, a stream FIN
    becomes C{shutdown(SHUT_WR)} on the TCP socket; the TCP connection is
    closed once both directions have ended.
  - I{Abort}: a TCP connection lost uncleanly resets the stream (RST), a
    stream reset (or its peer connection dying) aborts the TCP connection.
  - I{Idle timeouts}: once one direction has ended (a half-close), a
    tunnel in which no byte moved either way for C{halfClosedTimeout}
    seconds (5 minutes by default) is aborted on both sides, so an app
    that never finishes cannot hold a stream and a socket forever; an
    optional C{idleTimeout} does the same for any tunnel, half-closed or
    not (off by default: an idle interactive session is legitimate).
  - I{Teardown} happens exactly once, when both sides are gone: the stats
    are updated and C{onEnd} is called.

Before L{start} both sides are expected to be paused by their owner (the
client pauses the app's socket until the host said OK; the host pauses the
stream until the service accepted the connection), so no byte is lost or
reordered.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from beam.p2p.interfaces import IStreamTransport

__all__ = ["Splice", "TunnelStats", "HALF_CLOSED_TIMEOUT"]

#: Seconds a half-closed tunnel may go without moving a byte before it is
#: aborted.
HALF_CLOSED_TIMEOUT = 300.0

_log = Logger()


class TunnelStats:
    """
    Counters of one tunnel (or one exposed service).

    @ivar active: connections being carried now.
    @ivar total: connections carried since start.
    @ivar bytesIn: bytes that came out of the tunnel and were written to
        the local TCP connection.
    @ivar bytesOut: bytes read from the local TCP connection and sent into
        the tunnel.
    @ivar refused: connections the host refused (or, on a host, that it
        refused).
    @ivar failed: connections that could not be set up for another reason
        (host unreachable, service down, ...).
    """

    __slots__ = ("active", "total", "bytesIn", "bytesOut", "refused", "failed")

    def __init__(self) -> None:
        self.active = 0
        self.total = 0
        self.bytesIn = 0
        self.bytesOut = 0
        self.refused = 0
        self.failed = 0

    def asDict(self) -> dict[str, int]:
        """
        The counters, for status output.
        """
        return {name: getattr(self, name) for name in self.__slots__}

    def __repr__(self) -> str:
        return f"<TunnelStats {self.asDict()}>"


@implementer(IPushProducer)
class _Throttle:
    """
    The producer registered on one side's transport on behalf of the other
    side: pauses and resumes its reading, but leaves stopping to the splice.

    Pausing is lazy: it only marks the side paused, and the side stops
    reading when data actually arrives while marked (after passing that
    one chunk on).  A muxed connection pauses and resumes every stream's
    producer together whenever the connection's send buffer fills and
    drains; done eagerly, that is two epoll system calls per tunnelled
    socket per cycle, most of them for sockets with nothing to read.
    Lazily, only busy sockets pay, and memory stays bounded: at most one
    read's worth (64 KiB for TCP) per connection beyond the high-water mark.
    """

    def __init__(self, end: "_End") -> None:
        self._end = end

    def pauseProducing(self) -> None:
        self._end.throttled = True

    def resumeProducing(self) -> None:
        end = self._end
        end.throttled = False
        if end.readStopped:
            end.readStopped = False
            if not end.lost and not end.readClosed and end.transport is not None:
                end.transport.resumeProducing()

    def stopProducing(self) -> None:
        pass


@implementer(IHalfCloseableProtocol)
class _End(Protocol):
    """
    What both sides share.

    @ivar readClosed: our transport's input ended (EOF or FIN).
    @ivar writeClosed: we closed our transport's output.
    @ivar lost: our transport is gone.
    @ivar throttled: the other side's transport asked us to pause.
    @ivar readStopped: we paused our transport's reading for it.
    @ivar transport: the TCP connection, or the stream (possibly behind
        the compression wrappers).
    """

    transport: Optional[IStreamTransport]

    def __init__(self, splice: "Splice") -> None:
        self.splice = splice
        # Each end is made before the other exists: Splice.__init__ pairs
        # them right away, so no code ever sees the None.
        self.other: "_End" = None  # type: ignore[assignment]
        self.readClosed = False
        self.writeClosed = False
        self.lost = False
        self.lostReason: Optional[Failure] = None
        # The other side asked us to pause (see _Throttle), and whether we
        # did stop our transport's reading for it.
        self.throttled = False
        self.readStopped = False

    def _count(self, n: int) -> None:
        raise NotImplementedError()

    def _observe(self, observer: Any, data: bytes) -> None:
        """
        Show C{data}, just forwarded, to the splice's observer.
        """
        raise NotImplementedError()

    def dataReceived(self, data: bytes) -> None:
        other = self.other
        if other.lost or other.writeClosed or other.transport is None:
            return
        self._count(len(data))
        splice = self.splice
        if splice._watching:
            splice._lastActive = splice._clock.seconds()
        other.transport.write(data)
        if splice.observer is not None:
            self._observe(splice.observer, data)
        if self.throttled and not self.readStopped and not self.lost:
            self.readStopped = True
            assert self.transport is not None  # data arrives only while connected
            self.transport.pauseProducing()

    def readConnectionLost(self) -> None:
        if self.readClosed:
            return
        self.readClosed = True
        if self.splice.started:
            self.other.closeWrite()
            self.splice._halfClosed()

    def writeConnectionLost(self) -> None:
        pass

    def closeWrite(self) -> None:
        """
        The other side's input ended: end our output.
        """
        if self.lost or self.writeClosed or self.transport is None:
            return
        self.writeClosed = True
        self.transport.loseWriteConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.lost:
            return
        self.lost = True
        self.lostReason = reason
        self.splice._lost(self, reason)

    def end(self, clean: bool) -> None:
        """
        The other side is gone: close (cleanly, flushing) or abort ours.
        """
        if self.lost or self.transport is None:
            return
        if clean:
            self.transport.loseConnection()
        else:
            self.transport.abortConnection()


class _LocalEnd(_End):
    """
    The TCP side.  It pauses its socket as soon as it is connected; the
    splice resumes it.
    """

    def connectionMade(self) -> None:
        assert self.transport is not None  # set by makeConnection
        self.transport.pauseProducing()
        self.splice._localConnected()

    def _count(self, n: int) -> None:
        self.splice.stats.bytesOut += n

    def _observe(self, observer: Any, data: bytes) -> None:
        observer.fromLocal(data)

    def writeConnectionLost(self) -> None:
        # Our shutdown(SHUT_WR) went out.  Once input has ended too the
        # socket has nothing left to do.
        if self.readClosed and not self.lost:
            assert self.transport is not None  # a connected TCP transport said so
            self.transport.loseConnection()

    def readConnectionLost(self) -> None:
        super().readConnectionLost()
        if self.writeClosed and not self.lost:
            assert self.transport is not None  # a connected TCP transport said so
            self.transport.loseConnection()


class _StreamEnd(_End):
    """
    The stream side.  The stream ends by itself once FIN went both ways.
    """

    def _count(self, n: int) -> None:
        self.splice.stats.bytesIn += n

    def _observe(self, observer: Any, data: bytes) -> None:
        observer.fromRemote(data)


class Splice:
    """
    One tunnelled connection: a TCP connection joined to a stream.

    @ivar local: the protocol for the TCP connection.
    @ivar remote: the protocol for the stream.
    @ivar stats: counters updated as bytes flow (shared by a tunnel's
        connections).
    @ivar started: L{start} was called.
    @ivar ended: both sides are gone.
    @ivar observer: something that watches the bytes after they were
        forwarded (the HTTP inspector, L{beam.tunnel.inspect.http1}), or
        L{None}: C{fromRemote(data)} with what the stream side sent,
        C{fromLocal(data)} with what the TCP side sent, C{closed()} once
        the splice ended.  It must never raise; it stops watching by
        setting this attribute back to L{None}, after which it costs one
        attribute check per read.
    """

    def __init__(
        self,
        stats: Optional[TunnelStats] = None,
        onEnd: Optional[Callable[["Splice"], None]] = None,
        onLocalConnected: Optional[Callable[["Splice"], None]] = None,
        *,
        clock: Any = None,
        halfClosedTimeout: Optional[float] = HALF_CLOSED_TIMEOUT,
        idleTimeout: Optional[float] = None,
    ) -> None:
        """
        @param onEnd: called once when both sides are gone (after L{start}).
        @param onLocalConnected: called when the TCP connection is made
            (its reading already paused).
        @param clock: an C{IReactorTime} for the idle timeouts; without
            one there are none.
        @param halfClosedTimeout: seconds without a byte moving, once one
            direction has ended, before both sides are aborted (L{None}:
            never).
        @param idleTimeout: the same for a tunnel in any state (L{None},
            the default: never).
        """
        self.stats = stats if stats is not None else TunnelStats()
        self._onEnd = onEnd
        self._onLocalConnected = onLocalConnected
        self.local = _LocalEnd(self)
        self.remote = _StreamEnd(self)
        self.local.other = self.remote
        self.remote.other = self.local
        self.started = False
        self.ended = False
        self._clock = clock
        self.halfClosedTimeout = halfClosedTimeout
        self.idleTimeout = idleTimeout
        #: whether a timeout is armed (only then is activity timed)
        self._watching = False
        self._lastActive = 0.0
        self._timeout: Optional[float] = None
        self._timer: Any = None
        self.timedOut = False
        self.observer: Any = None

    def _localConnected(self) -> None:
        if self._onLocalConnected is not None:
            self._onLocalConnected(self)

    def start(self) -> None:
        """
        Both sides are connected: join them and resume both.  If one side
        ended or was lost in the meantime, that is propagated now.
        """
        if self.started:
            return
        self.started = True
        local, remote = self.local, self.remote
        self.stats.active += 1
        self.stats.total += 1
        if local.lost or remote.lost:
            lost = local if local.lost else remote
            self._lost(lost, lost.lostReason or Failure(ConnectionDone()))
            return
        self._arm(self.idleTimeout)
        # Started only once both sides are connected.
        assert local.transport is not None and remote.transport is not None
        remote.transport.registerProducer(_Throttle(local), True)
        local.transport.registerProducer(_Throttle(remote), True)
        if remote.readClosed:
            local.closeWrite()
        if local.readClosed:
            remote.closeWrite()
        if not local.lost and not local.readClosed:
            local.transport.resumeProducing()
        if not remote.lost:
            remote.transport.resumeProducing()
        if local.readClosed or remote.readClosed:
            self._halfClosed()

    # -- idle timeouts ---------------------------------------------------

    def _arm(self, timeout: Optional[float]) -> None:
        """
        Abort the tunnel once no byte moved for C{timeout} seconds (the
        shorter of this and a timeout already armed wins); L{None} changes
        nothing.
        """
        if timeout is None or self._clock is None or self.ended:
            return
        if self._timeout is not None and self._timeout <= timeout:
            return
        self._timeout = timeout
        self._watching = True
        self._lastActive = self._clock.seconds()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = self._clock.callLater(timeout, self._checkIdle)

    def _halfClosed(self) -> None:
        """
        One direction ended: from now on the half-closed timeout applies
        (the half-close itself counts as activity).
        """
        if self.ended or self.local.lost or self.remote.lost:
            return
        self._arm(self.halfClosedTimeout)

    def _checkIdle(self) -> None:
        """
        The timer is due: abort if nothing moved for the whole timeout,
        else wait for the rest of it.  (Bytes only note the time; the
        timer is moved here, not on every read.)
        """
        self._timer = None
        if self.ended or self._timeout is None:
            return
        idle = self._clock.seconds() - self._lastActive
        if idle < self._timeout:
            self._timer = self._clock.callLater(self._timeout - idle, self._checkIdle)
            return
        self.timedOut = True
        halfClosed = self.local.readClosed or self.remote.readClosed
        _log.info(
            "closing a {what} tunnel: no data either way for {t:g} s",
            what="half-closed" if halfClosed else "idle", t=self._timeout,
        )
        self.abort()

    def _stopTimer(self) -> None:
        self._watching = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def abort(self) -> None:
        """
        Abort both sides (e.g. the tunnel is being shut down).
        """
        for end in (self.local, self.remote):
            end.end(clean=False)

    def _lost(self, end: _End, reason: Failure) -> None:
        if not self.started:
            return
        other = end.other
        if not other.lost:
            # A clean end passes on as a clean close, unless the lost side
            # is the TCP connection and the stream may still bring bytes
            # that can no longer be delivered: that is a reset, as TCP
            # itself would answer.
            clean = reason.check(ConnectionDone) is not None
            if end is self.local and not other.readClosed:
                clean = False
            elif end is self.remote and end.readClosed:
                # Everything the stream carried, its FIN included, was
                # passed on to TCP; only its end was abrupt (the connection
                # went away, or a reset after the FIN): flush what TCP
                # still buffers for the app instead of dropping it.
                clean = True
            other.end(clean=clean)
        if self.local.lost and self.remote.lost and not self.ended:
            self.ended = True
            self._stopTimer()
            self.stats.active -= 1
            observer = self.observer
            if observer is not None:
                self.observer = None
                try:
                    observer.closed()
                except Exception:  # noqa: BLE001 - an observer must not break teardown
                    _log.failure("tunnel observer failed at the end")
            if self._onEnd is not None:
                try:
                    self._onEnd(self)
                except Exception:  # noqa: BLE001 - a callback must not break teardown
                    _log.failure("tunnel teardown callback failed")

