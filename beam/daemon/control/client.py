"""
L{ControlClient}: talks to the running node over its control socket.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from twisted.internet import error as netError
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.interfaces import IConsumer, IStreamClientEndpoint
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import Agent, ResponseDone, ResponseNeverReceived
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer
from zope.interface import implementer

from beam.daemon.control.socket import NoNodeRunning, controlSocketPath
from beam.errors import BeamError, describe

__all__ = ["ControlClient", "ControlError", "MAX_RESPONSE"]

MAX_RESPONSE = 16 * 1024 * 1024


class ControlError(BeamError):
    """
    The running node refused the request.

    @ivar status: the HTTP status code the node answered with (0 when it
        did not answer at all).
    """

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


@implementer(IAgentEndpointFactory)
class _UNIXEndpointFactory:
    def __init__(self, reactor: Any, path: Path) -> None:
        self.reactor = reactor
        self.path = path

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:
        return UNIXClientEndpoint(self.reactor, str(self.path), timeout=10)


@implementer(IBodyProducer)
class _BytesProducer:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.length = len(data)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self.data)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class ControlClient:
    """
    Talks to the running node of C{home} over its control socket.
    """

    def __init__(self, reactor: Any, home: Path | str, timeout: float = 30.0) -> None:
        self.reactor = reactor
        self.home = Path(home)
        self.socketPath = controlSocketPath(self.home)
        self.timeout = timeout
        self._agent = Agent.usingEndpointFactory(reactor, _UNIXEndpointFactory(reactor, self.socketPath))

    def _noNode(self) -> NoNodeRunning:
        return NoNodeRunning(
            f"no Beam node is running for {self.home}; start one with `beam daemon` or `beam PORT`"
        )

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Deferred[dict[str, Any]]:
        """
        Send one request, e.g. C{request("POST", "/v1/tunnels", {"port": 3000})}.

        @return: a L{Deferred} firing with the node's JSON answer, or failing
            with L{NoNodeRunning} when no node listens, or L{ControlError}
            (with the node's own error text and C{status}) on a non-2xx
            answer.
        """
        if not self.socketPath.exists():
            return fail(self._noNode())
        producer = None
        headers = Headers({b"accept": [b"application/json"]})
        if body is not None:
            producer = _BytesProducer(json.dumps(body).encode("utf-8"))
            headers.setRawHeaders(b"content-type", [b"application/json"])
        d = self._agent.request(method.encode("ascii"), b"http://beam" + path.encode("utf-8"), headers, producer)
        d.addTimeout(self.timeout, self.reactor)
        return d.addCallbacks(self._gotResponse, self._requestFailed)

    def _requestFailed(self, failure: Failure) -> Failure:
        if failure.check(netError.ConnectError):
            return Failure(self._noNode())
        if failure.check(ResponseNeverReceived):
            return Failure(ControlError("the node closed the connection without answering"))
        if failure.check(DeferredTimeout, netError.TimeoutError, netError.ConnectingCancelledError):
            return Failure(ControlError(f"the node did not answer within {self.timeout:g} seconds"))
        return failure

    def _gotResponse(self, response: Any) -> Deferred[dict[str, Any]]:
        def parse(raw: bytes) -> dict[str, Any]:
            try:
                body = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                body = None
            if not isinstance(body, dict):
                raise ControlError(f"the node answered {response.code} with something that is not a JSON object",
                                   response.code)
            if not 200 <= response.code < 300:
                raise ControlError(str(body.get("error") or f"the node answered {response.code}"), response.code)
            return body

        collector = _BodyCollector(MAX_RESPONSE)
        response.deliverBody(collector)
        return collector.done.addCallback(parse)


class _BodyCollector(Protocol):
    """
    Collects a response body of at most C{limit} bytes (a status with a
    thousand tunnels is a few hundred KiB; anything near the limit is a bug
    that must not exhaust the CLI's memory).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.tooLarge = False
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        if self.tooLarge:
            return
        if len(self.data) + len(data) > self.limit:
            self.tooLarge = True
            self.data = bytearray()
            if self.transport is not None:
                self.transport.stopProducing()  # type: ignore[attr-defined]
            return
        self.data += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.tooLarge:
            self.done.errback(ControlError(f"the node's answer is larger than {self.limit} bytes"))
        elif reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(bytes(self.data))
        else:
            self.done.errback(ControlError(f"the node's answer was cut off: {describe(reason)}"))
