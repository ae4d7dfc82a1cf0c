"""
The captured HTTP exchanges of a node: a bounded ring buffer, and their
JSON forms for the control API and the dashboard.

Memory is bounded twice: by the number of exchanges kept
(C{maxRequests}) and by the bytes their heads and captured bodies hold
(C{maxBytes}, each exchange counted with a fixed overhead of
L{EXCHANGE_OVERHEAD} bytes for its objects).  The oldest go first.  Bodies
are captured up to C{bodyCap} bytes each by the observer; the rest is only
counted.
"""

from __future__ import annotations

import base64
import codecs
import json
import re
import time
import zlib
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable, Optional
from urllib.parse import parse_qsl

import attrs
from twisted.logger import Logger

from beam.errors import NotFound

if TYPE_CHECKING:
    from beam.tunnel.inspect.http1 import HTTPObserver

__all__ = [
    "EXCHANGE_OVERHEAD", "Exchange", "InspectorFull", "InspectorStatus", "Message", "RequestStore", "renderBody",
]

#: Bytes an exchange is charged for beyond its heads and bodies (its
#: Python objects).
EXCHANGE_OVERHEAD = 512

#: A message's header cost is fixed (see L{Message.cost}).
_FIXED = object()

_TCHARS = "!#$%&'*+\\-.^_`|~0-9A-Za-z"
#: One well-formed field line (CRLF), the value without the whitespace
#: around it: decodes a message's C{rawHead}, whose field lines the
#: observer checked (every one is one match; a start line never matches:
#: a method or C{HTTP/1.x} is followed by a space or a slash, not a colon).
_FIELDS = re.compile("(?m)^([" + _TCHARS + r"]+):[ \t]*([^\r\n]*?)[ \t]*\r\n")

_log = Logger()


@attrs.define(eq=False)
class Message:
    """
    One request or response as captured.

    A message the HTTP observer parsed on its fast path keeps its head as
    it came (C{rawHead}, latin-1 text): the tunnel's data path
    only frames, and the C{headers} list is built the first time something
    reads it (the JSON forms, filters, curl, replay), then cached.

    @ivar headers: the header fields in order, names as sent (latin-1).
    @ivar body: the first bytes of the body (at most the store's
        C{bodyCap}), de-chunked; filled in when the message ends (or the
        exchange is aborted).
    @ivar size: body bytes seen (de-chunked), captured or not.
    @ivar truncated: C{body} holds only the first C{bodyCap} bytes.
    @ivar complete: the whole message was seen.
    @ivar rawHead: the head as received (the start line, then field lines
        that each end with CRLF and are well-formed: the observer checked),
        not decoded yet; L{None} once C{headers} is built, or when the
        message was made with its C{headers}.
    """

    # Made with positional arguments on the observer's quickest path: keep
    # the fields' order, or change it there too.
    _headers: Optional[list[tuple[str, str]]] = attrs.field(default=None, alias="headers")
    body: bytes = b""
    size: int = 0
    truncated: bool = False
    complete: bool = False
    rawHead: Optional[str] = attrs.field(default=None, repr=False)
    #: what the header fields cost: given (the field lines' length, for a
    #: parsed message: fixed), or -1 to sum the fields; a sum is kept with
    #: the list (and its length) it was computed from, since the store
    #: measures an exchange several times (a new field list, or a longer
    #: one, is summed again)
    _headerCost: int = attrs.field(default=-1, repr=False, alias="headerCost")
    _headerCount: int = attrs.field(default=-1, init=False, repr=False)
    _headerList: Any = attrs.field(default=None, init=False, repr=False)

    @property
    def headers(self) -> list[tuple[str, str]]:
        headers = self._headers
        if headers is None:
            raw = self.rawHead
            headers = self._headers = [] if raw is None else _FIELDS.findall(raw)
            self.rawHead = None
        return headers

    @headers.setter
    def headers(self, value: list[tuple[str, str]]) -> None:
        self._headers = value
        self.rawHead = None
        self._headerList = None
        self._headerCost = -1

    def header(self, name: str, default: str = "") -> str:
        """
        The value of the first header field called C{name} (any case).
        """
        lower = name.lower()
        for key, value in self.headers:
            if key.lower() == lower:
                return value
        return default

    @property
    def contentType(self) -> str:
        return self.header("content-type")

    def cost(self) -> int:
        """
        Bytes this message holds, for the store's byte bound: its body and
        its header fields (parsed: the field lines' length as received;
        given as a list: names and values plus 4 bytes per field, the same
        for C{"Name: value\\r\\n"} lines).
        """
        headerList = self._headerList
        if headerList is not _FIXED:
            if headerList is None and self._headerCost >= 0:
                self._headerList = _FIXED
            else:
                headers = self.headers
                if headers is not headerList or len(headers) != self._headerCount:
                    self._headerCost = sum([len(k) + len(v) for k, v in headers]) + 4 * len(headers)
                    self._headerList = headers
                    self._headerCount = len(headers)
        return len(self.body) + self._headerCost

    def asJSON(self, bodyCap: int) -> dict[str, Any]:
        """
        The contract's C{MSG} object.
        """
        out: dict[str, Any] = {
            "headers": [[k, v] for k, v in self.headers],
            "size": self.size,
            "captured": len(self.body),
            "truncated": self.truncated,
            "complete": self.complete,
            "content_type": self.contentType,
        }
        out.update(renderBody(self, bodyCap))
        out["base64"] = base64.b64encode(self.body).decode("ascii")
        return out


def _decoded(message: Message, bodyCap: int) -> bytes:
    """
    The captured body, gzip/deflate decoded when the whole body was
    captured and it decodes within C{bodyCap * 4} bytes; else as captured.
    """
    body = message.body
    encoding = message.header("content-encoding").strip().lower()
    if not body or encoding not in ("gzip", "x-gzip", "deflate") or message.truncated or not message.complete:
        return body
    limit = max(bodyCap, 1) * 4
    attempts = [16 + zlib.MAX_WBITS] if encoding != "deflate" else [zlib.MAX_WBITS, -zlib.MAX_WBITS]
    for wbits in attempts:
        try:
            d = zlib.decompressobj(wbits)
            out = d.decompress(body, limit)
            if d.unconsumed_tail or len(out) >= limit:
                return body  # bigger than we are willing to show
            return out
        except zlib.error:
            continue
    return body


def _mediaType(contentType: str) -> tuple[str, str]:
    """
    The media type (lower case) and the charset parameter of a
    Content-Type value.
    """
    parts = contentType.split(";")
    media = parts[0].strip().lower()
    charset = ""
    for p in parts[1:]:
        k, _, v = p.partition("=")
        if k.strip().lower() == "charset":
            charset = v.strip().strip('"').lower()
    return media, charset


def _asText(body: bytes, charset: str, partial: bool) -> Optional[str]:
    """
    C{body} as text, or L{None} when it is not text: it does not decode,
    or holds control characters other than tab, CR, LF (and FF).  A body
    cut short may end inside a character: that tail is dropped.
    """
    try:
        decoder = codecs.getincrementaldecoder(charset or "utf-8")()
    except LookupError:
        decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        text = decoder.decode(body, final=not partial)
    except UnicodeDecodeError:
        return None
    for ch in text:
        if ch < " " and ch not in "\t\r\n\f":
            return None
        if ch == "\x7f":
            return None
    return text


def renderBody(message: Message, bodyCap: int) -> dict[str, Any]:
    """
    How the dashboard shows a body: C{kind} (C{"empty"}, C{"json"},
    C{"form"}, C{"text"}, C{"binary"}), C{text} (JSON pretty-printed,
    form fields as C{"k = v"} lines, text decoded; L{None} for binary) and
    C{form} (the fields, or L{None}).
    """
    if not message.body:
        return {"kind": "empty" if message.size == 0 else "binary", "text": None, "form": None}
    body = _decoded(message, bodyCap)
    partial = message.truncated or not message.complete
    if body is not message.body:
        partial = False
    media, charset = _mediaType(message.contentType)
    if "json" in media and not partial:
        try:
            value = json.loads(body.decode(charset or "utf-8"))
        except (ValueError, LookupError):
            pass
        else:
            return {"kind": "json", "text": json.dumps(value, indent=2, ensure_ascii=False), "form": None}
    if media == "application/x-www-form-urlencoded":
        text = _asText(body, charset or "utf-8", partial)
        if text is not None:
            fields = parse_qsl(text, keep_blank_values=True)
            return {
                "kind": "form",
                "text": "\n".join(f"{k} = {v}" for k, v in fields),
                "form": [[k, v] for k, v in fields],
            }
    text = _asText(body, charset, partial)
    if text is not None:
        return {"kind": "text", "text": text, "form": None}
    return {"kind": "binary", "text": None, "form": None}


@attrs.define(eq=False)
class Exchange:
    """
    One HTTP request and its response, as seen through a tunnel (or made
    by a replay).

    @ivar id: 1, 2, ... per store (0 until added).
    @ivar tunnel: the exposed service's name.
    @ivar peer: the peer that opened the tunnel (text), or C{""}.
    @ivar started: wall-clock time (epoch seconds) the request head was seen.
    @ivar status: the response's status code, L{None} while pending.
    @ivar duration: seconds from the request head to the response's end.
    @ivar state: C{"open"}, C{"complete"} or C{"aborted"}.
    @ivar upgrade: C{"websocket"}, C{"connect"} (or another protocol a
        101 switched to): the connection stopped being HTTP here.
    @ivar replayOf: the exchange this one replays.
    @ivar source: C{"tunnel"} or C{"replay"}.
    @ivar error: why the exchange was aborted.
    """

    # The HTTP observer's quickest path makes exchanges and messages with
    # positional arguments (much quicker than keywords): keep the fields'
    # order, or change it there too.
    tunnel: str = ""
    peer: str = ""
    started: float = 0.0
    method: str = ""
    target: str = ""
    version: str = "HTTP/1.1"
    request: Message = attrs.field(factory=Message)
    response: Optional[Message] = None
    status: Optional[int] = None
    reason: str = ""
    duration: Optional[float] = None
    state: str = "open"
    upgrade: Optional[str] = None
    replayOf: Optional[int] = None
    source: str = "tunnel"
    error: Optional[str] = None
    id: int = 0
    #: what the store charged for it (bytes), kept to adjust its total
    cost: int = 0
    #: evicted while still open: its observer still holds it, so the
    #: store still counts it (L{RequestStore.inFlight})
    orphan: bool = False

    def measure(self) -> int:
        """
        Bytes this exchange holds, for the store's byte bound.
        """
        # Message.cost, inlined for the usual (fixed header cost) case.
        request = self.request
        if request._headerList is _FIXED:
            total = EXCHANGE_OVERHEAD + len(self.target) + len(self.reason) + len(request.body) + request._headerCost
        else:
            total = EXCHANGE_OVERHEAD + len(self.target) + len(self.reason) + request.cost()
        response = self.response
        if response is not None:
            if response._headerList is _FIXED:
                total += len(response.body) + response._headerCost
            else:
                total += response.cost()
        return total

    def summaryJSON(self) -> dict[str, Any]:
        """
        The contract's summary object.
        """
        return {
            "id": self.id,
            "tunnel": self.tunnel,
            "peer": self.peer,
            "started": self.started,
            "method": self.method,
            "path": self.target,
            "http_version": self.version,
            "status": self.status,
            "reason": self.reason,
            "duration_ms": None if self.duration is None else round(self.duration * 1000.0, 3),
            "state": self.state,
            "upgrade": self.upgrade,
            "replay_of": self.replayOf,
            "source": self.source,
            "error": self.error,
            "request_size": self.request.size,
            "response_size": self.response.size if self.response is not None else 0,
            "request_type": self.request.contentType,
            "response_type": self.response.contentType if self.response is not None else "",
        }

    def detailJSON(self, bodyCap: int = 64 << 10) -> dict[str, Any]:
        """
        The summary plus both messages with their rendered bodies.

        @param bodyCap: the store's body cap (bounds gzip/deflate decoding
            to four times it).
        """
        out = self.summaryJSON()
        out["request"] = self.request.asJSON(bodyCap)
        out["response"] = self.response.asJSON(bodyCap) if self.response is not None else None
        return out


@attrs.frozen
class InspectorStatus:
    """
    The inspector's counters (status section C{"requests"}).

    @ivar kept: exchanges in the store now; C{bytes} what they hold.
    @ivar captured: exchanges ever captured.
    @ivar evicted: dropped to stay within C{maxRequests}/C{maxBytes}.
    @ivar gaveUp: connections whose inspection stopped on malformed or
        oversized HTTP.
    @ivar notHTTP: tunnelled connections that were not HTTP/1.x.
    @ivar truncated: bodies cut at C{bodyCap}.
    @ivar refused: exchanges not captured because those evicted while
        still in flight already held C{maxBytes} or C{maxRequests} (their
        connections stop being inspected; the bytes flow on untouched).
    """

    enabled: bool
    kept: int
    bytes: int
    maxRequests: int
    maxBytes: int
    bodyCap: int
    captured: int
    evicted: int
    gaveUp: int
    notHTTP: int
    truncated: int
    refused: int = 0


def _statusMatches(status: Optional[int], wanted: str) -> bool:
    wanted = wanted.strip().lower()
    if wanted == "pending":
        return status is None
    if status is None:
        return False
    if len(wanted) == 3 and wanted.endswith("xx") and wanted[0].isdigit():
        return status // 100 == int(wanted[0])
    try:
        return status == int(wanted)
    except ValueError:
        return False


class InspectorFull(Exception):
    """
    The store refuses a new exchange: those evicted while still in flight
    hold its whole budget (L{RequestStore.add}).
    """


class RequestStore:
    """
    The captured exchanges: a ring buffer bounded by count and bytes.

    @ivar enabled: capture at all (a host attaches no observer otherwise).
    @ivar clock: an C{IReactorTime}, for durations.
    """

    def __init__(
        self,
        clock: Any,
        maxRequests: int = 500,
        maxBytes: int = 16 << 20,
        bodyCap: int = 64 << 10,
        wallClock: Callable[[], float] = time.time,
    ) -> None:
        self.clock = clock
        self.wallClock = wallClock
        self.enabled = True
        self.maxRequests = maxRequests
        self.maxBytes = maxBytes
        self.bodyCap = bodyCap
        self._exchanges: OrderedDict[int, Exchange] = OrderedDict()
        self._nextID = 1
        self._bytes = 0
        self._subscribers: list[Callable[[Exchange], None]] = []
        self.captured = 0
        self.evicted = 0
        self.gaveUp = 0
        self.notHTTP = 0
        self.truncated = 0
        self.refused = 0
        # Exchanges evicted (or cleared) while still open: their observers
        # hold them until they end, so they still cost memory; counted
        # here (count, bytes) until then, and bounded like the store.
        self._orphans = 0
        self._orphanBytes = 0

    def observer(
        self, tunnel: str, peer: str, *, source: str = "tunnel", replayOf: Optional[int] = None,
    ) -> "HTTPObserver":
        """
        A new observer for one tunnelled connection, capturing into this
        store.
        """
        from beam.tunnel.inspect.http1 import HTTPObserver

        return HTTPObserver(self, tunnel, peer, source=source, replayOf=replayOf)

    # -- reading ---------------------------------------------------------

    def get(self, id: int) -> Exchange:
        """
        @raise NotFound: no such exchange (never captured, or evicted).
        """
        try:
            return self._exchanges[id]
        except KeyError:
            raise NotFound(f"no captured request {id}") from None

    def list(
        self,
        *,
        method: Optional[str] = None,
        status: Optional[str] = None,
        path: Optional[str] = None,
        tunnel: Optional[str] = None,
        after: int = 0,
        limit: int = 100,
    ) -> list[Exchange]:
        """
        The newest C{limit} exchanges that match, in id order.

        @param method: exact, any case.
        @param status: C{"200"}, a class C{"4xx"}, or C{"pending"}.
        @param path: a substring of the request target.
        @param tunnel: the tunnel's name, exact.
        @param after: only ids above this one.
        """
        wantMethod = method.upper() if method else None
        out: list[Exchange] = []
        if limit <= 0:
            return out
        for ex in reversed(self._exchanges.values()):
            if ex.id <= after:
                break
            if wantMethod is not None and ex.method.upper() != wantMethod:
                continue
            if status and not _statusMatches(ex.status, status):
                continue
            if path and path not in ex.target:
                continue
            if tunnel and ex.tunnel != tunnel:
                continue
            out.append(ex)
            if len(out) >= limit:
                break
        out.reverse()
        return out

    def __len__(self) -> int:
        return len(self._exchanges)

    def status(self) -> InspectorStatus:
        return InspectorStatus(
            enabled=self.enabled, kept=len(self._exchanges), bytes=self._bytes,
            maxRequests=self.maxRequests, maxBytes=self.maxBytes, bodyCap=self.bodyCap,
            captured=self.captured, evicted=self.evicted, gaveUp=self.gaveUp,
            notHTTP=self.notHTTP, truncated=self.truncated, refused=self.refused,
        )

    # -- changing --------------------------------------------------------

    def clear(self) -> None:
        """
        Forget every exchange (counters stay; exchanges still in flight
        are no longer kept).
        """
        for exchange in self._exchanges.values():
            if exchange.state == "open":
                self._orphaned(exchange)
        self._exchanges.clear()
        self._bytes = 0

    @property
    def inFlight(self) -> tuple[int, int]:
        """
        Exchanges no longer kept but still open (count, bytes): what the
        observers hold beyond the store's own bounds.
        """
        return self._orphans, self._orphanBytes

    def _orphaned(self, exchange: Exchange) -> None:
        exchange.orphan = True
        self._orphans += 1
        self._orphanBytes += exchange.cost

    def _unkept(self, exchange: Exchange) -> None:
        """
        An exchange that is not kept changed: if it was evicted while open,
        follow its cost until it ends.
        """
        if not exchange.orphan:
            return
        if exchange.state == "open":
            cost = exchange.measure()
            self._orphanBytes += cost - exchange.cost
            exchange.cost = cost
        else:
            exchange.orphan = False
            self._orphans -= 1
            self._orphanBytes -= exchange.cost

    def add(self, exchange: Exchange, cost: int = -1) -> Exchange:
        """
        Keep a new exchange: it gets the next id; the oldest are evicted
        as needed; subscribers hear of it.

        @param cost: what L{Exchange.measure} says, when the caller knows
            it already (the observer's quickest path), else -1.

        @raise InspectorFull: the exchanges evicted while still in flight
            (a peer that pipelines, or never lets its responses end)
            already hold as much as the whole store may: nothing more is
            captured until they end.
        """
        if self._orphanBytes >= self.maxBytes or self._orphans >= self.maxRequests:
            self.refused += 1
            raise InspectorFull(
                f"{self._orphans} requests still in flight hold {self._orphanBytes} bytes "
                f"beyond the inspector's buffer; not capturing more until they end"
            )
        exchange.id = self._nextID
        self._nextID += 1
        self.captured += 1
        if cost < 0:
            cost = exchange.measure()
        exchange.cost = cost
        self._bytes += cost
        exchanges = self._exchanges
        exchanges[exchange.id] = exchange
        if len(exchanges) > self.maxRequests or self._bytes > self.maxBytes:
            if len(exchanges) == self.maxRequests + 1:
                # The usual eviction, once the store is full: the oldest.
                _, old = exchanges.popitem(last=False)
                self._bytes -= old.cost
                self.evicted += 1
                if old.state == "open":
                    self._orphaned(old)
            if self._bytes > self.maxBytes:
                self._evict()
        if self._subscribers:
            self._notify(exchange)
        return exchange

    def changed(self, exchange: Exchange, cost: int = -1) -> None:
        """
        An exchange got its response head, a body, or ended: account for
        its size and tell the subscribers.  An exchange no longer kept
        (evicted, cleared) is ignored.

        @param cost: what L{Exchange.measure} says now, when the caller
            knows it already (the observer's quickest path), else -1.
        """
        if self.recount(exchange, cost) and self._subscribers:
            self._notify(exchange)

    def recount(self, exchange: Exchange, cost: int = -1) -> bool:
        """
        Account for an exchange's size again, without telling the
        subscribers (a request body ended: nothing they show changed).

        @param cost: as for L{changed}.
        @return: whether the exchange is kept.
        """
        exchanges = self._exchanges
        if exchanges.get(exchange.id) is not exchange:
            if exchange.orphan:
                self._unkept(exchange)
            return False
        if cost < 0:
            cost = exchange.measure()
        self._bytes += cost - exchange.cost
        exchange.cost = cost
        if len(exchanges) > self.maxRequests or self._bytes > self.maxBytes:
            self._evict()
        return True

    def _evict(self) -> None:
        exchanges = self._exchanges
        while exchanges and (len(exchanges) > self.maxRequests or self._bytes > self.maxBytes):
            _, old = exchanges.popitem(last=False)
            self._bytes -= old.cost
            self.evicted += 1
            if old.state == "open":
                self._orphaned(old)

    def subscribe(self, fn: Callable[[Exchange], None]) -> Callable[[], None]:
        """
        Call C{fn(exchange)} for every new or changed exchange (request
        head seen, response head seen, complete or aborted).  A subscriber
        that raises is logged and removed.

        @return: a function that unsubscribes C{fn}.
        """
        self._subscribers.append(fn)

        def unsubscribe() -> None:
            try:
                self._subscribers.remove(fn)
            except ValueError:
                pass

        return unsubscribe

    def _notify(self, exchange: Exchange) -> None:
        if not self._subscribers:
            return
        for fn in list(self._subscribers):
            try:
                fn(exchange)
            except Exception:  # noqa: BLE001 - one bad subscriber must not stop capture
                _log.failure("an inspector subscriber failed; it is removed")
                try:
                    self._subscribers.remove(fn)
                except ValueError:
                    pass
