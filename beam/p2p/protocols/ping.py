"""
ping (C{/ipfs/ping/1.0.0}): the dialer sends 32 random bytes, the listener
echoes them, the dialer times the round trip.  Several pings may share one
stream.
"""

from __future__ import annotations

import os
from typing import Callable, Optional

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure

from beam.errors import BeamError, ProtocolError
from beam.p2p.interfaces import IStreamTransport

PING_PROTOCOL = "/ipfs/ping/1.0.0"
PING_SIZE = 32


class PingMismatch(ProtocolError):
    """
    The peer answered a ping with different bytes.
    """


class PingResponder(Protocol):
    """
    Echo everything back.  The stream is registered as its own producer, so
    a peer that pings faster than it reads the answers is slowed down by
    flow control rather than buffered without bound.
    """

    transport: Optional[IStreamTransport]

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.registerProducer(self.transport, True)

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def readConnectionLost(self) -> None:
        assert self.transport is not None
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        try:
            assert self.transport is not None
            self.transport.unregisterProducer()
        except Exception:
            pass


class PingClient(Protocol):
    """
    The dialer side: L{ping} sends one probe and fires with the round-trip
    time in seconds.
    """

    transport: Optional[IStreamTransport]

    def __init__(self, clock: IReactorTime, random: Callable[[int], bytes] = os.urandom) -> None:
        self._clock = clock
        self._random = random
        self._buf = b""
        self._waiting: tuple[bytes, float, Deferred[float]] | None = None
        self._closed: BeamError | None = None

    def ping(self) -> Deferred[float]:
        """
        Send one ping; only one may be outstanding at a time.
        """
        if self._closed is not None:
            return fail(self._closed)
        if self._waiting is not None:
            raise RuntimeError("a ping is already outstanding")
        payload = self._random(PING_SIZE)
        d: Deferred[float] = Deferred()
        self._waiting = (payload, self._clock.seconds(), d)
        assert self.transport is not None  # a client is handed out once its stream is open
        self.transport.write(payload)
        return d

    def dataReceived(self, data: bytes) -> None:
        self._buf += data
        if self._waiting is None:
            if self._buf:
                self._abort(PingMismatch("unsolicited ping data"))
            return
        if len(self._buf) < PING_SIZE:
            return
        payload, started, d = self._waiting
        answer, self._buf = self._buf[:PING_SIZE], self._buf[PING_SIZE:]
        self._waiting = None
        if answer != payload:
            self._abort(PingMismatch("the peer echoed different bytes"))
            d.errback(Failure(PingMismatch("the peer echoed different bytes")))
            return
        d.callback(self._clock.seconds() - started)

    def _abort(self, error: BeamError) -> None:
        self._closed = error
        assert self.transport is not None  # called from dataReceived
        abort = getattr(self.transport, "abortConnection", self.transport.loseConnection)
        abort()

    def close(self) -> None:
        """
        Finish: close our side of the stream.
        """
        assert self.transport is not None
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._closed is None:
            self._closed = BeamError("the ping stream closed")
        if self._waiting is not None:
            d = self._waiting[2]
            self._waiting = None
            d.errback(Failure(self._closed))
