"""
Replaying a captured request against the tunnel's local service
(C{POST /v1/requests/ID/replay}, C{beam requests replay ID}).

The replay is a new TCP connection from this node to the service the
tunnel exposes (the same C{host:port} the tunnel's own connections reach),
carrying the captured request as is or edited.  Its bytes go through an
L{HTTPObserver<beam.tunnel.inspect.http1.HTTPObserver>} of the store just
like a tunnelled connection's, so the replay is captured as a new exchange
(source C{"replay"}, C{replayOf} the original) and its response is parsed,
capped and shown exactly as any other.

It is bounded: one request per connection, the connection closed as soon
as the response is complete (or the observer gives up on it), and aborted
after L{REPLAY_TIMEOUT} seconds whatever happens; the response is held
only by the observer, whose capture is capped at the store's C{bodyCap}.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientFactory, Protocol, connectionDone
from twisted.python.failure import Failure

from beam.errors import BeamError, Conflict, describe

__all__ = ["REPLAY_TIMEOUT", "ReplayEdits", "ReplayFailed", "buildRequest", "editsFromJSON", "replay"]

#: Seconds a replay may take, from connecting to the end of the response.
REPLAY_TIMEOUT = 30.0

#: Seconds to wait for the local service to accept the connection.
CONNECT_TIMEOUT = 10.0

#: The peer an exchange made by a replay names.
REPLAY_PEER = "local"

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_TARGET = re.compile(r"[\x21-\x7e]+\Z")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_MAX_HEADERS = 100


class ReplayFailed(BeamError):
    """
    The replay did not get a complete response (the service could not be
    reached, closed the connection early, or took too long).
    """


class BadReplay(BeamError):
    """
    The edits asked for are not a valid HTTP/1.1 request.
    """


@attrs.frozen
class ReplayEdits:
    """
    What to change in the captured request; L{None} keeps the captured value.

    @ivar headers: the complete header list that replaces the captured one
        (C{Content-Length} is recomputed anyway).
    @ivar body: the new body (bytes).
    """

    method: str | None = None
    path: str | None = None
    headers: tuple[tuple[str, str], ...] | None = None
    body: bytes | None = None


def editsFromJSON(body: dict[str, Any]) -> ReplayEdits:
    """
    The edits of a C{POST /v1/requests/ID/replay} body
    (C{{"method", "path", "headers": [[k, v]...], "body" | "body_base64"}}).

    @raise BadReplay: a field is unknown or malformed.
    """
    unknown = sorted(set(body) - {"method", "path", "headers", "body", "body_base64"})
    if unknown:
        raise BadReplay(f"unknown field(s): {', '.join(unknown)}")

    def text(name: str) -> str | None:
        value = body.get(name)
        if value is not None and not isinstance(value, str):
            raise BadReplay(f"field {name!r} must be a string")
        return value

    method, path = text("method"), text("path")
    if method is not None and not _TOKEN.match(method):
        raise BadReplay(f"field 'method' is not an HTTP method: {method!r}")
    if path is not None and not _TARGET.match(path):
        raise BadReplay("field 'path' must be a request target without spaces or control characters")
    headers: tuple[tuple[str, str], ...] | None = None
    raw = body.get("headers")
    if raw is not None:
        if not isinstance(raw, list) or len(raw) > _MAX_HEADERS:
            raise BadReplay(f"field 'headers' must be a list of at most {_MAX_HEADERS} [name, value] pairs")
        pairs = []
        for pair in raw:
            if (not isinstance(pair, list) or len(pair) != 2
                    or not all(isinstance(p, str) for p in pair)):
                raise BadReplay("field 'headers' must be a list of [name, value] pairs of strings")
            name, value = pair
            if not _TOKEN.match(name):
                raise BadReplay(f"not a header name: {name!r}")
            if _BAD_VALUE.search(value):
                raise BadReplay(f"the value of header {name} holds a control character")
            pairs.append((name, value.strip(" \t")))
        headers = tuple(pairs)
    if "body" in body and "body_base64" in body and body["body"] is not None and body["body_base64"] is not None:
        raise BadReplay("give 'body' or 'body_base64', not both")
    data: bytes | None = None
    if body.get("body") is not None:
        data = (text("body") or "").encode("utf-8")
    elif body.get("body_base64") is not None:
        encoded = text("body_base64") or ""
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise BadReplay("field 'body_base64' is not base64") from None
    return ReplayEdits(method=method, path=path, headers=headers, body=data)


def buildRequest(exchange: Any, edits: ReplayEdits | None = None) -> bytes:
    """
    The bytes of the request to send: the captured one with C{edits}.
    The body goes with a C{Content-Length} computed here (the captured
    body is stored de-chunked; an edited one has a new length), in place
    of the captured C{Content-Length}/C{Transfer-Encoding}.

    @raise Conflict: the captured body is incomplete (cut at the capture
        cap, or still arriving) and no new body was given.
    """
    edits = edits or ReplayEdits()
    request = exchange.request
    body = edits.body
    if body is None:
        if request.truncated:
            raise Conflict(
                f"request #{exchange.id}'s body was cut at the capture cap ({len(request.body)} of "
                f"{request.size} bytes kept), so it cannot be replayed as is; give a body to send instead")
        if not request.complete:
            raise Conflict(f"request #{exchange.id}'s body is still arriving; replay it once it is complete")
        body = bytes(request.body)
    method = edits.method or exchange.method
    target = edits.path or exchange.target
    version = exchange.version if exchange.version in ("HTTP/1.0", "HTTP/1.1") else "HTTP/1.1"
    headers = list(edits.headers if edits.headers is not None else request.headers)
    out: list[tuple[str, str]] = []
    framed = False
    for name, value in headers:
        if name.lower() in ("content-length", "transfer-encoding"):
            if not framed:
                framed = True
                out.append(("Content-Length", str(len(body))))
            continue
        out.append((name, value))
    if not framed and (body or method.upper() in ("POST", "PUT", "PATCH")):
        out.append(("Content-Length", str(len(body))))
    head = f"{method} {target} {version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in out) + "\r\n"
    return head.encode("latin-1", "replace") + body


class _ReplayProtocol(Protocol):
    """
    Sends the request, feeds both directions to the observer, and closes
    as soon as the exchange is no longer open.
    """

    def __init__(self, replayer: _Replayer) -> None:
        self.replayer = replayer

    def connectionMade(self) -> None:
        self.replayer.connected(self)

    def dataReceived(self, data: bytes) -> None:
        self.replayer.received(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.replayer.lost(reason)


class _Factory(ClientFactory):
    def __init__(self, replayer: _Replayer) -> None:
        self.replayer = replayer

    def buildProtocol(self, addr: Any) -> _ReplayProtocol:
        return _ReplayProtocol(self.replayer)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.replayer.fail(ReplayFailed(f"could not reach the local service at {self.replayer.where}: "
                                        f"{describe(reason)}"))


class _Replayer:
    """
    One replay in flight.
    """

    def __init__(self, reactor: Any, store: Any, original: Any, data: bytes, where: str, timeout: float) -> None:
        self.reactor = reactor
        self.store = store
        self.original = original
        self.data = data
        self.where = where
        self.done: Deferred[Any] = Deferred()
        self.observer: Any = None
        self.exchange: Any = None
        self.protocol: _ReplayProtocol | None = None
        self.timer = reactor.callLater(timeout, self.timedOut, timeout)

    def connected(self, protocol: _ReplayProtocol) -> None:
        self.protocol = protocol
        if self.done.called:
            protocol.transport.abortConnection()  # type: ignore[union-attr]
            return
        self.observer = self.store.observer(
            self.original.tunnel, REPLAY_PEER, source="replay", replayOf=self.original.id)
        self.observer.onExchange = self.gotExchange
        protocol.transport.write(self.data)  # type: ignore[union-attr]
        self.observer.fromRemote(self.data)
        if self.exchange is None:
            self.abort("the replayed request was not captured")
            protocol.transport.abortConnection()  # type: ignore[union-attr]
            return
        self.check()

    def gotExchange(self, exchange: Any) -> None:
        # One request per connection: the first exchange is the replay.
        if self.exchange is None:
            self.exchange = exchange

    def received(self, data: bytes) -> None:
        if self.done.called:
            return
        if self.observer is not None:
            self.observer.fromLocal(data)
        self.check()

    def check(self) -> None:
        """
        Finish once the exchange is no longer open, and close the connection.
        """
        if self.exchange is None or self.exchange.state == "open" or self.done.called:
            return
        self.ended()
        if self.protocol is not None and self.protocol.transport is not None:
            self.protocol.transport.loseConnection()

    def ended(self) -> None:
        """
        The exchange is complete (the answer) or aborted (a failure that
        says why; the exchange is kept).
        """
        exchange = self.exchange
        if exchange.state == "complete":
            self.finish()
        else:
            self.fail(ReplayFailed(f"the replay's response could not be read: {exchange.error} "
                                   f"(kept as #{exchange.id})"))

    def lost(self, reason: Failure) -> None:
        if self.observer is not None:
            # A response read until the close is complete now; anything
            # still open is aborted.
            self.observer.closed()
            self.observer = None
        if self.done.called:
            return
        if self.exchange is not None and self.exchange.state == "complete":
            self.finish()
            return
        self.abort(f"the local service at {self.where} closed the connection before the response was complete")

    def timedOut(self, timeout: float) -> None:
        self.timer = None
        self.abort(f"no complete response from {self.where} within {timeout:g} s")
        if self.protocol is not None and self.protocol.transport is not None:
            self.protocol.transport.abortConnection()  # type: ignore[attr-defined]

    def abort(self, why: str) -> None:
        if self.done.called:
            return
        if self.exchange is not None:
            if self.exchange.state == "open":
                self.exchange.state = "aborted"
                self.exchange.error = why
                self.store.changed(self.exchange)
            elif self.exchange.error:
                why = f"{why}: {self.exchange.error}"
            why += f" (kept as #{self.exchange.id})"
        self.fail(ReplayFailed(why))

    def fail(self, error: BaseException) -> None:
        self.cancelTimer()
        if not self.done.called:
            self.done.errback(Failure(error))

    def finish(self) -> None:
        self.cancelTimer()
        if not self.done.called:
            self.done.callback(self.exchange)

    def cancelTimer(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None


def replay(
    reactor: Any, store: Any, tunnels: Any, original: Any, edits: ReplayEdits | None = None,
    timeout: float = REPLAY_TIMEOUT,
) -> Deferred[Any]:
    """
    Send C{original}'s request (with C{edits}) to its tunnel's local
    service over a new connection.

    @param reactor: connects (C{IReactorTCP}) and times (C{IReactorTime}).
    @param store: the L{RequestStore<beam.tunnel.inspect.store.RequestStore>}
        that captures the replay.
    @param tunnels: the L{TunnelHost<beam.tunnel.host.TunnelHost>} that
        knows where the tunnel's service listens.
    @return: a L{Deferred} firing with the new exchange once its response
        is complete (or aborted by the observer), or failing with
        L{ReplayFailed} (L{Conflict} before any connection when the
        captured body is incomplete).
    """
    from twisted.internet.defer import fail

    try:
        data = buildRequest(original, edits)
        if tunnels is None:
            raise ReplayFailed("this node exposes no tunnels to replay requests to")
        spec = tunnels.lookup(original.tunnel)
        if spec.serve is not None or spec.kind != "tcp":
            raise ReplayFailed(f"tunnel {original.tunnel!r} is not served on a local TCP port; "
                               f"its requests cannot be replayed")
    except BeamError as e:
        return fail(e)
    where = f"[{spec.host}]:{spec.port}" if ":" in spec.host else f"{spec.host}:{spec.port}"
    replayer = _Replayer(reactor, store, original, data, where, timeout)
    reactor.connectTCP(spec.host, spec.port, _Factory(replayer), timeout=min(CONNECT_TIMEOUT, timeout))
    return replayer.done
