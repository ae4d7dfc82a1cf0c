"""
UDP over tunnel streams.

A stream carries datagrams framed as a 2-byte big-endian length followed by
that many bytes (0 to 65535; an empty datagram is a valid datagram)::

    length (2 bytes, big-endian) | datagram (length bytes)

There is nothing to negotiate and no invalid frame: the framing cannot
fail, and a reader holds at most one partial frame (65,537 bytes).

I{Client side} (L{UDPClientForwarder}): a local UDP socket; each client
address that sends us a datagram gets a I{session}, which is one tunnel
stream.  Datagrams that arrive while the stream is being opened are queued
like a socket's receive buffer (bounded; the oldest are dropped first).
I{Host side} (L{UDPHostProtocol}): the protocol of one tunnel stream, which
talks to the service through a connected UDP socket of its own, so each
remote client looks to the service like a distinct local client, as behind
a NAT.

Both sides end a session after C{idleTimeout} seconds without a datagram
either way (by closing the stream, which ends the other side too), and a
closed stream ends the session.  UDP may drop, so neither side ever
buffers without bound: while the stream's send queue is full (it pauses us
as its producer) datagrams headed into the tunnel are dropped and counted.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, cast

import attrs
from twisted.internet.abstract import isIPv6Address
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred, succeed
from twisted.internet.error import MessageLengthError
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IProtocol,
    IPushProducer,
    IReactorTime,
    IReactorUDP,
)
from twisted.internet.protocol import DatagramProtocol, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from beam.errors import BeamError
from beam.p2p.interfaces import IStreamTransport

__all__ = [
    "MAX_DATAGRAM",
    "DatagramFramer",
    "DatagramTooLarge",
    "UDPClientForwarder",
    "UDPHostProtocol",
    "UDPStats",
    "encodeDatagram",
]

_log = Logger()

#: The largest datagram the framing carries.
MAX_DATAGRAM = 0xFFFF
#: Default bound of the queue of a session whose stream is not open yet.
MAX_QUEUE = 64
MAX_QUEUE_BYTES = 256 * 1024


class DatagramTooLarge(BeamError, ValueError):
    """
    The datagram is too large to send through a tunnel (at most 65535 bytes).
    """


def encodeDatagram(datagram: bytes) -> bytes:
    """
    Frame one datagram for a stream.

    @raise DatagramTooLarge: it is longer than L{MAX_DATAGRAM}.
    """
    n = len(datagram)
    if n > MAX_DATAGRAM:
        raise DatagramTooLarge(f"a datagram of {n} bytes is too large for a tunnel")
    return n.to_bytes(2, "big") + datagram


class DatagramFramer:
    """
    Sans-IO reader of framed datagrams.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._offset = 0

    @property
    def buffered(self) -> int:
        """
        Bytes of an incomplete frame held (at most 65,536).
        """
        return len(self._buffer) - self._offset

    def feed(self, data: bytes) -> list[bytes]:
        """
        Add received bytes.

        @return: the datagrams they complete, in order.
        """
        buf = self._buffer
        if self._offset:
            del buf[: self._offset]
            self._offset = 0
        buf += data
        out = []
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            n = (buf[pos] << 8) | buf[pos + 1]
            if end - pos - 2 < n:
                break
            out.append(bytes(buf[pos + 2 : pos + 2 + n]))
            pos += 2 + n
        self._offset = pos
        if pos == end:
            buf.clear()
            self._offset = 0
        return out


@attrs.define
class UDPStats:
    """
    Counters of UDP tunnelling, shared by the sessions of one forwarder or
    one exposed service.

    "To the stream" is the direction into the tunnel (from the local
    clients on the client side, from the service on the host side).

    @ivar sessionsActive: sessions open now.
    @ivar sessionsTotal: sessions ever started.
    @ivar sessionsFailed: sessions whose stream could not be opened.
    @ivar sessionsExpired: sessions closed for being idle.
    @ivar datagramsToStream: datagrams written to streams.
    @ivar bytesToStream: their payload bytes.
    @ivar datagramsFromStream: datagrams read from streams and sent.
    @ivar bytesFromStream: their payload bytes.
    @ivar dropsQueue: datagrams dropped from a full queue while a stream
        was being opened (or when it could not be).
    @ivar dropsBackpressure: datagrams dropped because the stream was full.
    @ivar dropsSessionLimit: datagrams dropped because a new client address
        found all session slots taken.
    @ivar dropsSend: datagrams the local socket refused to send.
    @ivar refused: ICMP port-unreachable reports from the service.
    @ivar traffic: the tunnel's or forward's
        L{TunnelStats<beam.tunnel.splice.TunnelStats>}, if any: its
        C{bytesIn} (out of the tunnel) and C{bytesOut} (into it) count the
        datagram bytes too, so that C{beam status} shows a UDP tunnel's
        traffic as it shows a TCP tunnel's.
    """

    sessionsActive: int = 0
    sessionsTotal: int = 0
    sessionsFailed: int = 0
    sessionsExpired: int = 0
    datagramsToStream: int = 0
    bytesToStream: int = 0
    datagramsFromStream: int = 0
    bytesFromStream: int = 0
    dropsQueue: int = 0
    dropsBackpressure: int = 0
    dropsSessionLimit: int = 0
    dropsSend: int = 0
    refused: int = 0
    traffic: Any = attrs.field(default=None, eq=False, repr=False)


class _IdleTimer:
    """
    Calls C{onExpire} once nothing called L{touch} for C{timeout} seconds.
    One delayed call, moved lazily: a busy session costs a clock read per
    datagram, not a reschedule.
    """

    def __init__(self, clock: IReactorTime, timeout: float, onExpire: Callable[[], None]) -> None:
        self._clock = clock
        self._timeout = timeout
        self._onExpire = onExpire
        self._last = clock.seconds()
        self._call: IDelayedCall | None = clock.callLater(timeout, self._check)

    def touch(self) -> None:
        self._last = self._clock.seconds()

    def cancel(self) -> None:
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def _check(self) -> None:
        idle = self._clock.seconds() - self._last
        if idle >= self._timeout:
            self._call = None
            self._onExpire()
        else:
            self._call = self._clock.callLater(self._timeout - idle, self._check)


def _sendDatagram(port: Any, datagram: bytes, addr: Any, stats: UDPStats) -> None:
    """
    Send on a UDP port, counting instead of raising when the kernel refuses
    (buffer full, message too long, ...): UDP is allowed to drop.
    """
    try:
        if addr is None:
            port.write(datagram)
        else:
            port.write(datagram, addr)
    except (OSError, MessageLengthError) as e:
        stats.dropsSend += 1
        _log.debug("UDP send of {n} bytes failed: {e}", n=len(datagram), e=e)
        return
    stats.datagramsFromStream += 1
    stats.bytesFromStream += len(datagram)
    if stats.traffic is not None:
        stats.traffic.bytesIn += len(datagram)


@implementer(IPushProducer)
class _StreamSide(Protocol):
    """
    What both sides share: the stream protocol part that frames datagrams
    into the stream, drops them while the stream pauses us, and expires.

    @ivar transport: the tunnel stream (possibly behind the compression
        wrappers).
    """

    transport: IStreamTransport | None

    def __init__(self, clock: IReactorTime, idleTimeout: float, stats: UDPStats) -> None:
        self._clock = clock
        self._idleTimeout = idleTimeout
        self.stats = stats
        self._framer = DatagramFramer()
        self._streamPaused = False
        self._timer: _IdleTimer | None = None
        self._ended = False

    def _startTimer(self) -> None:
        self._timer = _IdleTimer(self._clock, self._idleTimeout, self._expired)

    def _touch(self) -> None:
        if self._timer is not None:
            self._timer.touch()

    def _expired(self) -> None:
        self.stats.sessionsExpired += 1
        self._close()

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.loseConnection()

    def _toStream(self, datagram: bytes) -> None:
        if self._streamPaused:
            self.stats.dropsBackpressure += 1
            return
        try:
            frame = encodeDatagram(datagram)
        except DatagramTooLarge:  # pragma: no cover - sockets are read with 65535
            self.stats.dropsSend += 1
            return
        self.stats.datagramsToStream += 1
        self.stats.bytesToStream += len(datagram)
        if self.stats.traffic is not None:
            self.stats.traffic.bytesOut += len(datagram)
        assert self.transport is not None  # datagrams are queued until the stream is connected
        self.transport.write(frame)

    def _endTimer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # IPushProducer: the stream tells us when its send queue is full.

    def pauseProducing(self) -> None:
        self._streamPaused = True

    def resumeProducing(self) -> None:
        self._streamPaused = False

    def stopProducing(self) -> None:
        pass


class _ClientSession(_StreamSide):
    """
    One client address's session: the protocol of its stream.
    """

    def __init__(self, forwarder: UDPClientForwarder, address: tuple[str, int]) -> None:
        super().__init__(forwarder._reactor, forwarder.idleTimeout, forwarder.stats)
        self._forwarder = forwarder
        self.address = address
        self._queue: deque[bytes] = deque()
        self._queuedBytes = 0
        self._opening: Deferred[Any] | None = None
        self._startTimer()

    def __repr__(self) -> str:
        return f"<UDP session {self.address[0]}:{self.address[1]}>"

    def open(self) -> None:
        d = maybeDeferred(self._forwarder._openStream, self)
        self._opening = d
        d.addCallbacks(self._opened, self._openFailed)

    def _opened(self, result: Any) -> None:
        self._opening = None

    def _openFailed(self, reason: Failure) -> None:
        self._opening = None
        dropped = len(self._queue)
        self._queue.clear()
        self._queuedBytes = 0
        if self._ended:
            return
        self.stats.sessionsFailed += 1
        self.stats.dropsQueue += dropped
        _log.warn(
            "UDP session from {client} could not open a tunnel stream: {why}",
            client=f"{self.address[0]}:{self.address[1]}",
            why=reason.getErrorMessage(),
        )
        self._end()

    def datagramFromClient(self, datagram: bytes) -> None:
        if self._ended:
            return
        self._touch()
        if self.transport is None:
            self._queue.append(datagram)
            self._queuedBytes += len(datagram)
            while len(self._queue) > self._forwarder.maxQueue or (
                self._queuedBytes > self._forwarder.maxQueueBytes
            ):
                self._queuedBytes -= len(self._queue.popleft())
                self.stats.dropsQueue += 1
            return
        self._toStream(datagram)

    def connectionMade(self) -> None:
        assert self.transport is not None  # set by makeConnection
        if self._ended:
            self.transport.loseConnection()
            return
        self.transport.registerProducer(self, True)
        queue, self._queue = self._queue, deque()
        self._queuedBytes = 0
        for datagram in queue:
            self._toStream(datagram)

    def dataReceived(self, data: bytes) -> None:
        if self._ended:
            return
        self._touch()
        port = self._forwarder.port
        for datagram in self._framer.feed(data):
            _sendDatagram(port, datagram, self.address, self.stats)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._end()

    def _close(self) -> None:
        """
        End the session: close its stream, or give up opening it.
        """
        transport = self.transport
        opening = self._opening
        self._end()
        if transport is not None:
            transport.loseConnection()
        elif opening is not None:
            opening.addErrback(lambda f: f.trap(CancelledError))
            opening.cancel()

    def _end(self) -> None:
        if self._ended:
            return
        self._ended = True
        self._endTimer()
        self._forwarder._sessionEnded(self)


class _ClientPort(DatagramProtocol):
    def __init__(self, forwarder: UDPClientForwarder) -> None:
        self._forwarder = forwarder

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        try:
            self._forwarder._datagramFromClient(datagram, addr)
        except Exception:  # noqa: BLE001 - never raise into the reactor
            _log.failure("Internal error forwarding a UDP datagram from {addr}", addr=addr)


class UDPClientForwarder:
    """
    The client side of a UDP tunnel: a local UDP socket whose clients each
    get a tunnel stream.

    @ivar sessions: the open sessions by client address.
    @ivar stats: the L{UDPStats}.
    @ivar port: the listening port, after L{startListening}.
    """

    def __init__(
        self,
        reactor: Any,
        openStream: Callable[[IProtocol], Deferred[IProtocol]],
        bind: str = "127.0.0.1",
        port: int = 0,
        idleTimeout: float = 60.0,
        maxSessions: int = 1024,
        maxQueue: int = MAX_QUEUE,
        maxQueueBytes: int = MAX_QUEUE_BYTES,
        traffic: Any = None,
    ) -> None:
        """
        @param reactor: an L{IReactorUDP} and L{IReactorTime}.
        @param openStream: called with a new session's protocol; opens a
            tunnel stream, negotiates it, then calls the protocol's
            C{makeConnection} with the stream and fires, or fails (the
            session then ends and its queued datagrams are dropped).
        @param bind: the local address to listen on.
        @param port: the local port (0 picks one).
        @param idleTimeout: seconds without a datagram either way after
            which a session's stream is closed.
        @param maxSessions: sessions beyond which datagrams from new client
            addresses are dropped.
        @param maxQueue: datagrams queued per session while its stream
            opens; the oldest are dropped beyond it (and beyond
            C{maxQueueBytes}).
        @param traffic: the forward's C{TunnelStats}, also counting the
            datagram bytes (L{UDPStats.traffic}).
        """
        self._reactor = reactor
        self._openStream = openStream
        self.bind = bind
        self.requestedPort = port
        self.idleTimeout = idleTimeout
        self.maxSessions = maxSessions
        self.maxQueue = maxQueue
        self.maxQueueBytes = maxQueueBytes
        self.sessions: dict[Any, _ClientSession] = {}
        self.stats = UDPStats(traffic=traffic)
        self.port: IListeningPort | None = None
        self._limitLogged = False

    def startListening(self) -> IListeningPort:
        """
        Listen.

        @raise twisted.internet.error.CannotListenError: the address is in
            use or not ours.
        """
        udp: IReactorUDP = self._reactor
        self.port = udp.listenUDP(
            self.requestedPort, _ClientPort(self), interface=self.bind, maxPacketSize=MAX_DATAGRAM
        )
        return self.port

    def stopListening(self) -> Deferred[None]:
        """
        Stop listening and close every session.

        @return: fires when the socket is closed.
        """
        for session in list(self.sessions.values()):
            session._close()
        port, self.port = self.port, None
        if port is None:
            return succeed(None)
        # stopListening returns a Deferred or None; maybeDeferred makes
        # both a Deferred[None], which its overloads cannot say of a union.
        return cast("Deferred[None]", maybeDeferred(port.stopListening))

    def _datagramFromClient(self, datagram: bytes, addr: Any) -> None:
        session = self.sessions.get(addr)
        if session is None:
            if len(self.sessions) >= self.maxSessions:
                self.stats.dropsSessionLimit += 1
                if not self._limitLogged:
                    self._limitLogged = True
                    _log.warn(
                        "UDP forwarder on {bind}: all {n} sessions in use; dropping "
                        "datagrams from new clients",
                        bind=self.bind,
                        n=self.maxSessions,
                    )
                return
            session = _ClientSession(self, addr)
            self.sessions[addr] = session
            self.stats.sessionsTotal += 1
            self.stats.sessionsActive = len(self.sessions)
            session.datagramFromClient(datagram)
            session.open()
        else:
            session.datagramFromClient(datagram)

    def _sessionEnded(self, session: _ClientSession) -> None:
        if self.sessions.get(session.address) is session:
            del self.sessions[session.address]
            self.stats.sessionsActive = len(self.sessions)
            self._limitLogged = False


class _ServiceSocket(DatagramProtocol):
    def __init__(self, owner: UDPHostProtocol) -> None:
        self._owner = owner

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self._owner._fromService(datagram)

    def connectionRefused(self) -> None:
        self._owner.stats.refused += 1


class UDPHostProtocol(_StreamSide):
    """
    The host side of a UDP tunnel: the protocol of one stream, relaying
    between it and the service through a connected UDP socket.

    ICMP "port unreachable" answers (the service is down) are counted in
    L{UDPStats.refused}, not fatal: the service may come back, as it may
    for a local UDP client.

    @ivar stats: the L{UDPStats} (pass one to share it between the streams
        of one service).
    """

    def __init__(
        self,
        reactor: Any,
        host: str,
        port: int,
        idleTimeout: float = 60.0,
        stats: UDPStats | None = None,
    ) -> None:
        """
        @param reactor: an L{IReactorUDP} and L{IReactorTime}.
        @param host: the service's IP address (a literal; no name lookup).
        @param port: the service's UDP port.
        """
        super().__init__(reactor, idleTimeout, stats if stats is not None else UDPStats())
        self._reactor = reactor
        self.host = host
        self.port = port
        self._socket: _ServiceSocket | None = None
        self._listening: IListeningPort | None = None
        self._socketClosed = False
        self._closeWaiters: list[Deferred[None]] = []

    def openSocket(self) -> None:
        """
        Open the connected UDP socket now, so that a host can report a
        failure in its tunnel response; C{makeConnection} does it
        otherwise.  Does nothing if it is open.  (If the stream then never
        gets connected, call C{connectionLost} to close the socket.)

        @raise twisted.internet.error.CannotListenError: no socket.
        @raise twisted.internet.error.InvalidAddressError: C{host} is not
            an IP address.
        """
        if self._listening is not None:
            return
        interface = "::" if isIPv6Address(self.host) else ""
        sock = _ServiceSocket(self)
        listening = self._reactor.listenUDP(
            0, sock, interface=interface, maxPacketSize=MAX_DATAGRAM
        )
        try:
            assert sock.transport is not None  # listenUDP connected it
            sock.transport.connect(self.host, self.port)
        except Exception:
            listening.stopListening()
            raise
        self._socket = sock
        self._listening = listening
        self.stats.sessionsTotal += 1
        self.stats.sessionsActive += 1

    def whenClosed(self) -> Deferred[None]:
        """
        @return: fires once the service socket is closed (after the stream
            ended).
        """
        if self._socketClosed:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._closeWaiters.append(d)
        return d

    def _onSocketClosed(self, result: object) -> None:
        self._socketClosed = True
        waiters, self._closeWaiters = self._closeWaiters, []
        for d in waiters:
            d.callback(None)

    def connectionMade(self) -> None:
        assert self.transport is not None  # set by makeConnection
        try:
            self.openSocket()
        except Exception as e:  # noqa: BLE001 - report, then reset the stream
            _log.warn(
                "Cannot open a UDP socket to {host}:{port}: {e}",
                host=self.host,
                port=self.port,
                e=e,
            )
            self.transport.abortConnection()
            return
        self.transport.registerProducer(self, True)
        self._startTimer()

    def dataReceived(self, data: bytes) -> None:
        if self._ended or self._socket is None:
            return
        self._touch()
        port = self._socket.transport
        for datagram in self._framer.feed(data):
            _sendDatagram(port, datagram, None, self.stats)

    def _fromService(self, datagram: bytes) -> None:
        if self._ended or self.transport is None:
            # The socket was opened early and the stream is not ours yet.
            self.stats.dropsQueue += 1
            return
        self._touch()
        self._toStream(datagram)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._ended:
            return
        self._ended = True
        self._endTimer()
        listening, self._listening = self._listening, None
        if listening is None:
            self._onSocketClosed(None)
            return
        self.stats.sessionsActive -= 1
        maybeDeferred(listening.stopListening).addBoth(self._onSocketClosed)
