"""
The inspector's part of the control socket (the dashboard serves the same
tree under C{/api}).

Routes::

    GET    /v1/requests?method=&status=&path=&tunnel=&after=&limit=&wait=
                                    -> {"requests": [summary...], "status": InspectorStatus}
    DELETE /v1/requests             -> {"cleared": N, "status": InspectorStatus}
    GET    /v1/requests/ID          -> detail (404 once evicted)
    GET    /v1/requests/ID/curl     -> {"curl": "curl ..."}
    POST   /v1/requests/ID/replay   -> detail of the new exchange, 201
           {method?, path?, headers?: [[k, v]...], body?: str | body_base64?: str}

C{wait=N} (at most L{MAX_WAIT} seconds) makes C{GET /v1/requests} a long
poll: when nothing matches above C{after}, the answer waits until an
exchange that matches arrives or N seconds pass (C{beam requests
--follow}, the dashboard).  At most L{MAX_WAITERS} requests wait at once;
one more is answered at once (with what there is, possibly nothing), so
a client loop that polls cannot pile up held connections.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from twisted.internet.defer import Deferred
from twisted.web.resource import IResource

if TYPE_CHECKING:
    from twisted.web.server import Request

from beam.controlapi import BadRequest, JSONResource, readBody
from beam.errors import BeamError, NotFound

__all__ = ["MAX_LIMIT", "MAX_WAIT", "MAX_WAITERS", "RequestsResource"]

#: The longest a long poll waits (seconds).
MAX_WAIT = 30.0

#: How many long polls may wait at once.
MAX_WAITERS = 32

#: The most exchanges one answer lists.
MAX_LIMIT = 1000

CREATED = 201


def _query(request: Request, name: str) -> str | None:
    args: dict[bytes, list[bytes]] = request.args or {}
    values = args.get(name.encode("ascii"))
    if not values:
        return None
    try:
        text = values[-1].decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(f"query parameter {name!r} is not UTF-8") from None
    return text or None


def _number(request: Request, name: str, kind: Callable[[str], Any], low: float, high: float, default: Any) -> Any:
    text = _query(request, name)
    if text is None:
        return default
    try:
        value = kind(text)
    except ValueError:
        raise BadRequest(f"query parameter {name!r} must be a number, not {text!r}") from None
    if not low <= value <= high or value != value:
        raise BadRequest(f"query parameter {name!r} must be between {low:g} and {high:g}")
    return value


class _Waiter:
    """
    One held long poll: answers once a matching exchange arrives, the
    wait runs out, or the client goes away.
    """

    def __init__(self, owner: RequestsResource, request: Request, filters: dict[str, Any], wait: float) -> None:
        self.owner = owner
        self.filters = filters
        self.done: Deferred[dict[str, Any]] = Deferred()
        self.checking: Any = None
        clock = owner.clock
        self.unsubscribe: Callable[[], None] | None = owner.store.subscribe(self.changed)
        self.timer: Any = clock.callLater(wait, self.answer)
        owner.waiters.add(self)
        request.notifyFinish().addBoth(lambda _: self.answer())

    def changed(self, exchange: Any) -> None:
        # Called from inside the observer, on the tunnel's data path: only
        # note it, and look at the store on the next reactor turn (once for
        # any number of changes).
        if exchange.id > self.filters["after"] and self.checking is None and not self.done.called:
            self.checking = self.owner.clock.callLater(0, self.check)

    def check(self) -> None:
        self.checking = None
        if self.owner.store.list(**{**self.filters, "limit": 1}):
            self.answer()

    def answer(self) -> None:
        if self.done.called:
            return
        self.owner.waiters.discard(self)
        if self.unsubscribe is not None:
            self.unsubscribe()
            self.unsubscribe = None
        for call in (self.timer, self.checking):
            if call is not None and call.active():
                call.cancel()
        self.timer = self.checking = None
        self.done.callback(self.owner.listing(self.filters))


class RequestsResource(JSONResource):
    """
    C{/v1/requests} on an L{InspectorService<beam.tunnel.inspect.service.InspectorService>}.

    @ivar waiters: the long polls held now (at most L{MAX_WAITERS}).
    """

    def __init__(self, service: Any, reactor: Any = None) -> None:
        """
        @param service: has C{store} (the
            L{RequestStore<beam.tunnel.inspect.store.RequestStore>}) and
            C{tunnels} (the L{TunnelHost<beam.tunnel.host.TunnelHost>}).
        @param reactor: connects replays and times long polls (default: the
            store's clock, which in a node is its reactor).
        """
        super().__init__()
        self.service = service
        self.reactor = reactor if reactor is not None else service.store.clock
        self.waiters: set[_Waiter] = set()

    @property
    def store(self) -> Any:
        return self.service.store

    @property
    def clock(self) -> Any:
        return self.reactor

    def listing(self, filters: dict[str, Any]) -> dict[str, Any]:
        """
        The answer of C{GET /v1/requests} for C{filters}.
        """
        return {
            "requests": [e.summaryJSON() for e in self.store.list(**filters)],
            "status": self.store.status(),
        }

    def json_GET(self, request: Request) -> Any:
        filters = {
            "method": _query(request, "method"),
            "status": _query(request, "status"),
            "path": _query(request, "path"),
            "tunnel": _query(request, "tunnel"),
            "after": _number(request, "after", int, 0, 2**63, 0),
            "limit": _number(request, "limit", int, 1, MAX_LIMIT, 100),
        }
        wait = _number(request, "wait", float, 0, MAX_WAIT, 0.0)
        answer = self.listing(filters)
        if answer["requests"] or wait <= 0 or len(self.waiters) >= MAX_WAITERS:
            return answer
        return _Waiter(self, request, filters, wait).done

    def json_DELETE(self, request: Request) -> Any:
        cleared = len(self.store)
        self.store.clear()
        return {"cleared": cleared, "status": self.store.status()}

    def getChild(self, path: bytes, request: Request) -> IResource:
        if path == b"":
            return self
        try:
            text = path.decode("ascii")
            number = int(text) if text.isdigit() else 0
        except UnicodeDecodeError:
            number = 0
        if number <= 0:
            return _Missing(path.decode("utf-8", "replace"))
        return _ExchangeResource(self, number)


class _Missing(JSONResource):
    """
    C{/v1/requests/<not a number>}: 404 on any method.
    """

    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = key

    def json_GET(self, request: Request) -> Any:
        raise NotFound(f"no captured request {self.key}")

    json_POST = json_DELETE = json_GET

    def getChild(self, path: bytes, request: Request) -> IResource:
        return self


class _ExchangeResource(JSONResource):
    """
    C{/v1/requests/ID}: the detail, and the C{curl} and C{replay} children.
    """

    def __init__(self, owner: RequestsResource, id: int) -> None:
        super().__init__()
        self.owner = owner
        self.id = id

    def exchange(self) -> Any:
        return self.owner.store.get(self.id)

    def json_GET(self, request: Request) -> Any:
        return self.exchange().detailJSON(self.owner.store.bodyCap)

    def getChild(self, path: bytes, request: Request) -> IResource:
        if path == b"curl":
            return _CurlResource(self)
        if path == b"replay":
            return _ReplayResource(self)
        return super().getChild(path, request)


class _CurlResource(JSONResource):
    def __init__(self, item: _ExchangeResource) -> None:
        super().__init__()
        self.item = item

    def json_GET(self, request: Request) -> Any:
        from beam.tunnel.inspect.curl import curlCommand

        exchange = self.item.exchange()
        fallback = "localhost"
        try:
            tunnels = self.item.owner.service.tunnels
            if tunnels is None:
                raise NotFound("no tunnels")
            spec = tunnels.lookup(exchange.tunnel)
            fallback = f"[{spec.host}]:{spec.port}" if ":" in spec.host else f"{spec.host}:{spec.port}"
        except BeamError:
            pass
        return {"curl": curlCommand(exchange, fallback)}


class _ReplayResource(JSONResource):
    def __init__(self, item: _ExchangeResource) -> None:
        super().__init__()
        self.item = item

    def json_POST(self, request: Request) -> Any:
        from beam.tunnel.inspect.replay import editsFromJSON, replay

        edits = editsFromJSON(readBody(request))
        owner = self.item.owner
        original = self.item.exchange()
        d = replay(owner.reactor, owner.store, owner.service.tunnels, original, edits)

        def created(exchange: Any) -> Any:
            request.setResponseCode(CREATED)
            return exchange.detailJSON(owner.store.bodyCap)

        return d.addCallback(created)
