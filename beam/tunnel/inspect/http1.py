"""
A sans-IO observer of the HTTP/1.x exchanges on one tunnelled connection.

L{HTTPObserver} is handed copies of the bytes a L{beam.tunnel.splice.Splice}
has just forwarded: L{HTTPObserver.fromRemote} the request direction (what
the peer sent into the tunnel), L{HTTPObserver.fromLocal} the response
direction (what the local service answered).  It never writes, delays or
changes a byte: it only parses, and stores what it recognises.

Framing follows RFC 9112: keep-alive and pipelining (requests queue until
their responses arrive); requests with C{Transfer-Encoding: chunked} or
C{Content-Length} bodies; responses without a body (to HEAD, 1xx, 204,
304), chunked, sized, or read until the connection closes; C{100 Continue}
and other interim responses skipped; a C{101} (WebSocket) or a C{2xx} to
C{CONNECT} ends inspection of the connection, the exchange marked with its
C{upgrade}.

Costs and bounds.  Inside a body the parser does counter arithmetic and
appends at most C{bodyCap} bytes per message; it walks a chunk by index
and never copies the chunk data it does not keep.  Heads are bounded
(L{MAX_HEAD} bytes, L{MAX_LINE} per line, L{MAX_FIELDS} fields), and so is
the queue of pipelined requests (L{MAX_PENDING}).  Anything malformed or
over a bound makes the observer give up on the connection (the exchange in
progress is aborted with the reason); a connection that does not start
with an HTTP/1.x request line is I{not HTTP}.  Either way, and on any
unexpected exception, the observer detaches itself from the splice so the
rest of the connection costs nothing.
"""

from __future__ import annotations

import re
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Optional

from twisted.logger import Logger

from beam.tunnel.inspect.store import EXCHANGE_OVERHEAD, Exchange, InspectorFull, Message

if TYPE_CHECKING:
    from beam.tunnel.inspect.store import RequestStore

__all__ = ["HTTPObserver", "MAX_FIELDS", "MAX_HEAD", "MAX_LINE", "MAX_PENDING"]

#: Bytes of one message head (request or status line and header fields).
MAX_HEAD = 64 * 1024
#: Bytes of one line of a head (or of a chunk-size line).
MAX_LINE = 16 * 1024
#: Header fields in one head (trailer fields count too).
MAX_FIELDS = 100
#: Requests waiting for their responses (pipelining).
MAX_PENDING = 100

_log = Logger()

_TCHARS = rb"!#$%&'*+\-.^_`|~0-9A-Za-z"
_REQUEST_LINE = re.compile(rb"([" + _TCHARS + rb"]+) ([^\x00-\x20\x7f]+) (HTTP/1\.[0-9])\r?\n\Z")
_STATUS_LINE = re.compile(rb"(HTTP/1\.[0-9]) ([0-9]{3})(?: ([^\r\n]*))?\r?\n\Z")
_FIELD_LINE = re.compile(rb"([" + _TCHARS + rb"]+):[ \t]*([^\r\n]*?)[ \t]*\r?\n\Z")
#: What the first bytes of a request line may look like: optional empty
#: lines, then a method (a token) and a space, or the start of one.
_METHOD_PREFIX = re.compile(rb"[\r\n]*[" + _TCHARS + rb"]{1,24}(?: |\Z)|[\r\n]*\Z")
_HEX = frozenset(b"0123456789abcdefABCDEF")

# The fast path (a whole head in one piece, CRLF line ends, no folding):
# the head is decoded once (latin-1, so every byte maps to the character of
# the same code and these patterns mean what the bytes patterns above mean)
# and matched in a few C calls instead of a method call and a match per line.
_STCHARS = _TCHARS.decode("ascii")
_FAST_REQUEST = re.compile("([" + _STCHARS + r"]+) ([^\x00-\x20\x7f]+) (HTTP/1\.[0-9])\r\n")
_FAST_STATUS = re.compile(r"(HTTP/1\.[0-9]) ([0-9]{3})(?: ([^\r\n]*))?\r\n")
#: The field lines of a head, all well-formed with CRLF ends, at most
#: L{MAX_FIELDS} (checked, not decoded: L{Message.headers} decodes them
#: when read).
#: Possessive (nothing to backtrack into: a name has no colon, a value no
#: CR), which makes it about 40 % quicker.
_FAST_FIELDS = re.compile("(?:[" + _STCHARS + r"]++:[^\r\n]*+\r\n){0,%d}+" % MAX_FIELDS)
#: The only fields framing needs, found in checked field lines (from the
#: LF that ends the start line), their values as L{Message.headers} has
#: them (without the whitespace around); a match stops before its CRLF,
#: so the next one can start with the LF.
_FRAMING_FIELDS = re.compile(r"(?ai)\n(content-length|transfer-encoding|upgrade):[ \t]*([^\r\n]*?)[ \t]*(?=\r\n)")
#: The whole() paths' check: the start line and the field lines in one
#: match, the same as L{_FAST_REQUEST} (or L{_FAST_STATUS}) and then
#: L{_FAST_FIELDS} (a start line can end in only one place), one regex
#: call less; the empty group 4 marks where the fields start.
_WHOLE_REQUEST = re.compile(_FAST_REQUEST.pattern + "()" + _FAST_FIELDS.pattern)
_WHOLE_STATUS = re.compile(_FAST_STATUS.pattern + "()" + _FAST_FIELDS.pattern)

# Parser states (one parser per direction).
_HEAD = 0          # reading a start line and header fields, line by line
_LENGTH = 1        # a body of known length: `remaining` bytes to go
_CHUNK_SIZE = 2    # a chunk-size line
_CHUNK_DATA = 3    # `remaining` bytes of chunk data
_CHUNK_END = 4     # the CRLF after chunk data
_TRAILER = 5       # trailer fields after the last chunk, until an empty line
_UNTIL_CLOSE = 6   # a response body that ends with the connection
_WAIT = 7          # requests: an upgrade or CONNECT awaits its answer
_STOPPED = 8


def _plainLength(fields: list[tuple[str, str]]) -> int:
    """
    For the quick path: the body length when C{fields} (the framing
    fields L{_FRAMING_FIELDS} found) are exactly one plain Content-Length
    (the only 14-letter name it finds), else -1 (anything else, such as
    chunked, an upgrade or an odd length, goes the line-by-line way).
    """
    if len(fields) != 1:
        return -1
    name, value = fields[0]
    if len(name) != 14 or not (0 < len(value) <= 18 and value.isascii() and value.isdigit()):
        return -1
    return int(value)


class _GiveUp(Exception):
    """
    The bytes are not HTTP we can follow; the message says why.
    """


class _Parser:
    """
    One direction's framing state.  Subclasses say what a head means.

    @ivar msg: the message whose body is being read.
    @ivar body: its captured bytes so far (at most the cap).
    """

    __slots__ = (
        "observer", "state", "line", "lines", "headSize", "remaining", "msg", "body", "cap", "exchange",
        "upgrade",
    )

    def __init__(self, observer: "HTTPObserver") -> None:
        self.observer = observer
        self.state = _HEAD
        self.line = bytearray()
        self.lines: list[bytes] = []
        self.headSize = 0
        self.remaining = 0
        self.msg: Optional[Message] = None
        self.body = bytearray()
        self.cap = observer.store.bodyCap
        self.exchange: Optional[Exchange] = None
        #: the message being read has an Upgrade field (set by _framing)
        self.upgrade = False

    def feed(self, data: bytes) -> None:
        pos = 0
        end = len(data)
        while pos < end:
            state = self.state
            if state == _HEAD and not self.line and not self.lines:
                # The fast path: the whole head is here (searched for
                # within MAX_LINE bytes, so no line and no head can be over
                # its bound).  Anything unusual (a bare LF, folding, a
                # malformed line, too many fields) is left to the
                # line-by-line path below, which decides.
                headEnd = data.find(b"\r\n\r\n", pos, pos + MAX_LINE)
                if headEnd > pos and self._wholeHead(data[pos:headEnd + 2].decode("latin-1")):
                    pos = headEnd + 4
                    continue
            if state == _LENGTH or state == _CHUNK_DATA:
                take = end - pos
                remaining = self.remaining
                if take >= remaining and state == _LENGTH and not self.body and remaining <= self.cap:
                    # The fast path: all of the body is here and fits the
                    # cap; keep it as a slice, no buffer.
                    msg = self.msg
                    assert msg is not None
                    msg.size += remaining
                    self.remaining = 0
                    pos += remaining
                    self._bodyEnded(data[pos - remaining:pos])
                    continue
                if take > remaining:
                    take = remaining
                self._bodyBytes(data, pos, take)
                pos += take
                remaining -= take
                self.remaining = remaining
                if not remaining:
                    if state == _LENGTH:
                        self._bodyEnded()
                    else:
                        self.state = _CHUNK_END
            elif state == _UNTIL_CLOSE:
                self._bodyBytes(data, pos, end - pos)
                return
            elif state == _WAIT:
                self._waiting(data, pos)
                return
            elif state == _STOPPED:
                return
            elif state == _CHUNK_END and not self.line and data.startswith(b"\r\n", pos):
                # The fast path between chunks: no line buffer, no call.
                pos += 2
                self.state = _CHUNK_SIZE
            elif state == _CHUNK_SIZE and not self.line and 0 <= (newline := data.find(b"\n", pos, pos + 64)):
                text = data[pos:newline].split(b";", 1)[0].strip()
                if not text or len(text) > 15 or not _HEX.issuperset(text):
                    raise _GiveUp("a malformed chunk size")
                pos = newline + 1
                size = int(text, 16)
                if size:
                    self.remaining = size
                    self.state = _CHUNK_DATA
                else:
                    self.state = _TRAILER
            else:
                newline = data.find(b"\n", pos)
                if newline < 0:
                    self._partialLine(data, pos, end)
                    return
                newline += 1
                line = self.line
                if line:
                    if len(line) + newline - pos > MAX_LINE:
                        raise _GiveUp(f"a line longer than {MAX_LINE} bytes")
                    line += data[pos:newline]
                    whole = bytes(line)
                    line.clear()
                else:
                    if newline - pos > MAX_LINE:
                        raise _GiveUp(f"a line longer than {MAX_LINE} bytes")
                    whole = data[pos:newline]
                pos = newline
                self._lineReceived(whole)

    def _partialLine(self, data: bytes, pos: int, end: int) -> None:
        if len(self.line) + end - pos > MAX_LINE:
            raise _GiveUp(f"a line longer than {MAX_LINE} bytes")
        self.line += data[pos:end]
        if self.state == _CHUNK_END and self.line.strip(b"\r"):
            raise _GiveUp("chunk data longer than its size")

    def _lineReceived(self, line: bytes) -> None:
        state = self.state
        if state == _HEAD:
            if not self.lines and line in (b"\r\n", b"\n"):
                return  # empty lines before a start line are allowed
            self.headSize += len(line)
            if self.headSize > MAX_HEAD:
                raise _GiveUp(f"a head larger than {MAX_HEAD} bytes")
            if line in (b"\r\n", b"\n"):
                lines, self.lines, self.headSize = self.lines, [], 0
                self._head(lines)
                return
            if len(self.lines) > MAX_FIELDS:
                raise _GiveUp(f"more than {MAX_FIELDS} header fields")
            self.lines.append(line)
        elif state == _CHUNK_SIZE:
            text = line.split(b";", 1)[0].strip()
            if not text or len(text) > 15 or not _HEX.issuperset(text):
                raise _GiveUp("a malformed chunk size")
            size = int(text, 16)
            if size:
                self.remaining = size
                self.state = _CHUNK_DATA
            else:
                self.state = _TRAILER
        elif state == _CHUNK_END:
            if line not in (b"\r\n", b"\n"):
                raise _GiveUp("chunk data longer than its size")
            self.state = _CHUNK_SIZE
        elif state == _TRAILER:
            if line in (b"\r\n", b"\n"):
                self.headSize = 0
                self._bodyEnded()
                return
            self.headSize += len(line)
            if self.headSize > MAX_HEAD:
                raise _GiveUp(f"trailer fields larger than {MAX_HEAD} bytes")
            if _FIELD_LINE.match(line) is None:
                raise _GiveUp("a malformed trailer field")

    def _fields(self, lines: list[bytes]) -> list[tuple[str, str]]:
        headers: list[tuple[str, str]] = []
        for raw in lines:
            if raw[:1] in (b" ", b"\t") and headers:
                # obsolete line folding: part of the previous value
                name, value = headers[-1]
                headers[-1] = (name, (value + " " + raw.strip().decode("latin-1")).strip())
                continue
            m = _FIELD_LINE.match(raw)
            if m is None:
                raise _GiveUp("a malformed header field")
            headers.append((m.group(1).decode("latin-1"), m.group(2).decode("latin-1")))
        return headers

    def _framing(self, message: Message, untilClose: bool, fields: list[tuple[str, str]]) -> None:
        """
        Read the body C{message}'s headers announce; C{untilClose}: a
        message without length information runs until the connection
        closes (responses), else it has no body (requests).

        @param fields: its header fields, or only those framing needs
            (Content-Length, Transfer-Encoding, Upgrade), in order.
        """
        encodings: list[str] = []
        lengths: set[str] = set()
        upgrade = False
        for k, value in fields:
            # Compare lengths first: most fields are none of these three.
            n = len(k)
            if n == 17 and k.lower() == "transfer-encoding":
                encodings.extend(v.strip().lower() for v in value.split(",") if v.strip())
            elif n == 14 and k.lower() == "content-length":
                lengths.add(value.strip())
            elif n == 7 and k.lower() == "upgrade":
                upgrade = True
        self.upgrade = upgrade
        self.msg = message
        if self.body:
            self.body = bytearray()
        if not fields:
            if untilClose:
                self.state = _UNTIL_CLOSE
                return
            self._bodyEnded()
            return
        if encodings:
            if encodings[-1] == "chunked":
                self.state = _CHUNK_SIZE
                return
            if not untilClose:
                raise _GiveUp("a request body with an unknown transfer coding")
            self.state = _UNTIL_CLOSE
            return
        if lengths:
            if len(lengths) > 1:
                raise _GiveUp("conflicting Content-Length fields")
            (text,) = lengths
            if "," in text:
                values = {v.strip() for v in text.split(",")}
                if len(values) > 1:
                    raise _GiveUp("conflicting Content-Length values")
                (text,) = values
            if not (text.isascii() and text.isdigit()) or len(text) > 18:
                raise _GiveUp(f"a malformed Content-Length {text[:40]!r}")
            length = int(text)
            if length:
                self.remaining = length
                self.state = _LENGTH
                return
            self._bodyEnded()
            return
        if untilClose:
            self.state = _UNTIL_CLOSE
            return
        self._bodyEnded()

    def _quickFraming(self, message: Message, untilClose: bool, fields: list[tuple[str, str]]) -> None:
        """
        L{_framing} for the fields the fast path found, with the usual
        cases (no body-related field, or one plain Content-Length) done
        here.
        """
        if len(fields) == 1:
            name, text = fields[0]
            if len(name) == 14 and 0 < len(text) <= 18 and text.isascii() and text.isdigit():
                # One Content-Length (the only 14-letter name found), plain.
                self.upgrade = False
                self.msg = message
                if self.body:
                    self.body = bytearray()
                length = int(text)
                if length:
                    self.remaining = length
                    self.state = _LENGTH
                else:
                    self._bodyEnded()
                return
        elif not fields:
            self.upgrade = False
            self.msg = message
            if self.body:
                self.body = bytearray()
            if untilClose:
                self.state = _UNTIL_CLOSE
            else:
                self._bodyEnded()
            return
        self._framing(message, untilClose, fields)

    def _bodyBytes(self, data: bytes, pos: int, n: int) -> None:
        msg = self.msg
        assert msg is not None
        msg.size += n
        body = self.body
        room = self.cap - len(body)
        if room > 0:
            if n <= room:
                if pos == 0 and n == len(data):
                    body += data
                else:
                    body += data[pos:pos + n]
                return
            body += data[pos:pos + room]
        if not msg.truncated:
            msg.truncated = True
            self.observer.store.truncated += 1

    def keepBody(self) -> None:
        """
        Put what was captured of the body in flight into its message.
        """
        if self.msg is not None:
            self.msg.body = bytes(self.body)

    def _head(self, lines: list[bytes]) -> None:
        raise NotImplementedError()

    def _wholeHead(self, text: str) -> bool:
        """
        The fast path: C{text} is a whole head (latin-1), each line ending
        with CRLF, without the empty line that ends it.  Act on it as
        L{_head} would and return C{True}; or return C{False}, having
        changed nothing, when it is not the plain case, for the
        line-by-line path to handle (and give up on, if it must).
        """
        raise NotImplementedError()

    def _bodyEnded(self, body: Optional[bytes] = None) -> None:
        """
        The message ended; C{body}: its captured body when it did not go
        through the C{body} buffer.
        """
        raise NotImplementedError()

    def _waiting(self, data: bytes, pos: int) -> None:
        raise NotImplementedError()

    def _takeBody(self, body: Optional[bytes]) -> tuple[Message, Exchange]:
        """
        The message being read ended: it keeps C{body} (the whole body,
        when the quick path has it at hand) or what was captured so far;
        the message and its exchange.
        """
        msg = self.msg
        exchange = self.exchange
        assert msg is not None and exchange is not None
        msg.complete = True
        if body is None:
            msg.body = bytes(self.body)
            self.body = bytearray()
        else:
            msg.body = body
        self.msg = None
        return msg, exchange


class _RequestParser(_Parser):
    """
    The request direction: each head starts an exchange.

    @ivar held: bytes that came while a CONNECT or an upgrade awaited its
        answer (parsed once the answer turns out not to switch protocols).
    """

    __slots__ = ("held",)

    def __init__(self, observer: "HTTPObserver") -> None:
        super().__init__(observer)
        self.held = bytearray()

    def _partialLine(self, data: bytes, pos: int, end: int) -> None:
        if self.state == _HEAD and not self.lines and not self.observer.seenHTTP:
            prefix = (bytes(self.line) + data[pos:pos + 40])[:40]
            if _METHOD_PREFIX.match(prefix) is None:
                raise _GiveUp("not an HTTP/1.x request")
        super()._partialLine(data, pos, end)

    def _lineReceived(self, line: bytes) -> None:
        if self.state == _HEAD and not self.lines and line not in (b"\r\n", b"\n"):
            if _REQUEST_LINE.match(line) is None:
                raise _GiveUp("a malformed request line" if self.observer.seenHTTP else "not an HTTP/1.x request")
            self.observer.seenHTTP = True
        super()._lineReceived(line)

    def _head(self, lines: list[bytes]) -> None:
        m = _REQUEST_LINE.match(lines[0])
        if m is None:
            raise _GiveUp("a malformed request line")
        if len(self.observer.pending) >= MAX_PENDING:
            raise _GiveUp(f"more than {MAX_PENDING} requests waiting for responses")
        method, target, version = m.group(1, 2, 3)
        headers = self._fields(lines[1:])
        message = Message(headers=headers, headerCost=sum([len(line) for line in lines[1:]]))
        self._request(method.decode("latin-1"), target.decode("latin-1"), version.decode("latin-1"), message, headers)

    def _wholeHead(self, text: str) -> bool:
        m = _FAST_REQUEST.match(text)
        if m is None:
            return False
        start = m.end()
        if _FAST_FIELDS.fullmatch(text, start) is None or len(self.observer.pending) >= MAX_PENDING:
            return False
        method, target, version = m.group(1, 2, 3)
        message = Message(rawHead=text, headerCost=len(text) - start)
        self._request(method, target, version, message, _FRAMING_FIELDS.findall(text, start - 1), True)
        return True

    def whole(self, data: bytes) -> bool:
        """
        The quickest path, for the usual case: C{data} is exactly one
        whole request, a plain head and a C{Content-Length} body (or none)
        within the cap.  Act on it as L{feed} would, in one go, and return
        C{True}; or return C{False}, having changed nothing, for L{feed}.
        Called only in the C{_HEAD} state with nothing buffered.
        """
        headEnd = data.find(b"\r\n\r\n", 0, MAX_LINE)
        if headEnd <= 0:
            return False
        text = data[:headEnd + 2].decode("latin-1")
        m = _WHOLE_REQUEST.fullmatch(text)
        if m is None:
            return False
        start = m.end(4)
        fields = _FRAMING_FIELDS.findall(text, start - 1)
        length = _plainLength(fields) if fields else 0
        if length < 0 or headEnd + 4 + length != len(data) or length > self.cap:
            return False
        observer = self.observer
        method, target, version = m.group(1, 2, 3)
        if len(observer.pending) >= MAX_PENDING or method.upper() == "CONNECT":
            return False
        store = observer.store
        headerCost = len(text) - start
        # Positional (attrs' __init__ is much quicker so): headers, body,
        # size, truncated, complete, rawHead, headerCost.
        message = Message(None, data[headEnd + 4:] if length else b"", length, False, True, text, headerCost)
        # tunnel, peer, started, method, target, version, request,
        # response, status, reason, duration, state, upgrade, replayOf,
        # source.
        exchange = Exchange(
            observer.tunnel, observer.peer, store.wallClock(), method, target, version, message,
            None, None, "", None, "open", None, observer.replayOf, observer.source,
        )
        observer.seenHTTP = True
        self.exchange = exchange
        self.upgrade = False
        observer.pending.append((exchange, store.clock.seconds()))
        # What Exchange.measure would say, known already.
        store.add(exchange, EXCHANGE_OVERHEAD + len(target) + length + headerCost)
        if observer.onExchange is not None:
            observer.onExchange(exchange)
        return True

    def _request(
        self, method: str, target: str, version: str, message: Message, fields: list[tuple[str, str]],
        quick: bool = False,
    ) -> None:
        """
        A request head: start an exchange with C{message}, framed by
        C{fields} (all of them, or with C{quick} only those framing needs).
        """
        observer = self.observer
        store = observer.store
        exchange = Exchange(
            tunnel=observer.tunnel, peer=observer.peer, started=store.wallClock(),
            method=method, target=target, version=version, request=message, source=observer.source,
            replayOf=observer.replayOf,
        )
        observer.seenHTTP = True
        self.exchange = exchange
        observer.pending.append((exchange, store.clock.seconds()))
        store.add(exchange)
        if observer.onExchange is not None:
            observer.onExchange(exchange)
        if quick:
            self._quickFraming(message, False, fields)
        else:
            self._framing(message, False, fields)

    def _bodyEnded(self, body: Optional[bytes] = None) -> None:
        msg, exchange = self._takeBody(body)
        if exchange.state != "open":
            # The response came first (an early error answer, say).
            self.observer.store.changed(exchange)
        elif msg.body:
            # Count the body now (the exchange may never be told of again:
            # an upgrade before its answer stops the observer).
            self.observer.store.recount(exchange)
        if exchange.method.upper() == "CONNECT" or (
            self.upgrade and msg.header("upgrade") and "upgrade" in msg.header("connection").lower()
            and exchange.state == "open"
        ):
            self.state = _WAIT
        else:
            self.state = _HEAD

    def _waiting(self, data: bytes, pos: int) -> None:
        if len(self.held) + len(data) - pos > MAX_HEAD:
            raise _GiveUp("too many bytes sent before the answer to an upgrade")
        self.held += data[pos:]

    def resume(self) -> None:
        """
        The awaited answer did not switch protocols: go on parsing
        requests, starting with the bytes held meanwhile.
        """
        if self.state != _WAIT:
            return
        self.state = _HEAD
        held, self.held = bytes(self.held), bytearray()
        if held:
            self.feed(held)


class _ResponseParser(_Parser):
    """
    The response direction: each head answers the oldest pending request.

    @ivar unaccounted: an exchange whose response head the store has not
        been told of yet: without subscribers that waits until the end of
        the bytes at hand (L{HTTPObserver.fromLocal}), by when the response
        has often ended too, which tells the store once instead of twice.
    """

    __slots__ = ("started", "unaccounted")

    def __init__(self, observer: "HTTPObserver") -> None:
        super().__init__(observer)
        self.started = 0.0
        self.unaccounted: Optional[Exchange] = None

    def _partialLine(self, data: bytes, pos: int, end: int) -> None:
        if not self.observer.seenHTTP:
            raise _GiveUp("the service spoke first")
        if self.state == _HEAD and not self.lines and len(self.line) < 8:
            prefix = (bytes(self.line) + data[pos:pos + 8])[:8]
            if not b"HTTP/1.".startswith(prefix[:7]):
                raise _GiveUp("a malformed status line")
        super()._partialLine(data, pos, end)

    def _lineReceived(self, line: bytes) -> None:
        if not self.observer.seenHTTP:
            raise _GiveUp("the service spoke first")
        if self.state == _HEAD and not self.lines and _STATUS_LINE.match(line) is None:
            raise _GiveUp("a malformed status line")
        super()._lineReceived(line)

    def _head(self, lines: list[bytes]) -> None:
        m = _STATUS_LINE.match(lines[0])
        if m is None:
            raise _GiveUp("a malformed status line")
        if not self.observer.pending:
            raise _GiveUp("a response without a request")
        status = int(m.group(2))
        headers = self._fields(lines[1:])
        self._response(
            status, (m.group(3) or b"").decode("latin-1"), None, headers,
            sum([len(line) for line in lines[1:]]), headers,
        )

    def _wholeHead(self, text: str) -> bool:
        observer = self.observer
        if not observer.seenHTTP or not observer.pending:
            return False
        m = _FAST_STATUS.match(text)
        if m is None:
            return False
        start = m.end()
        if _FAST_FIELDS.fullmatch(text, start) is None:
            return False
        self._response(
            int(m.group(2)), m.group(3) or "", text, None, len(text) - start,
            _FRAMING_FIELDS.findall(text, start - 1), True,
        )
        return True

    def whole(self, data: bytes) -> bool:
        """
        The quickest path, for the usual case: C{data} is exactly one
        whole final response with a plain head and a C{Content-Length}
        body within the cap, to a request that is neither HEAD nor
        CONNECT, and nobody subscribes to the store (they hear of the head
        and of the end separately).  Act on it as L{feed} would, in one
        go, and return C{True}; or return C{False}, having changed
        nothing, for L{feed}.  Called only in the C{_HEAD} state with
        nothing buffered.
        """
        observer = self.observer
        store = observer.store
        if not observer.pending or store._subscribers or observer.request.state == _WAIT:
            return False
        headEnd = data.find(b"\r\n\r\n", 0, MAX_LINE)
        if headEnd <= 0:
            return False
        text = data[:headEnd + 2].decode("latin-1")
        m = _WHOLE_STATUS.fullmatch(text)
        if m is None:
            return False
        start = m.end(4)
        status = int(m.group(2))
        if status < 200 or status == 204 or status == 304:
            return False
        length = _plainLength(_FRAMING_FIELDS.findall(text, start - 1))
        if length < 0 or headEnd + 4 + length != len(data) or length > self.cap:
            return False
        exchange, started = observer.pending[0]
        method = exchange.method.upper()
        if method == "HEAD" or method == "CONNECT":
            return False
        # Positional: see _RequestParser.whole.
        headerCost = len(text) - start
        exchange.response = Message(None, data[headEnd + 4:], length, False, True, text, headerCost)
        exchange.status = status
        exchange.reason = reason = m.group(3) or ""
        observer.pending.popleft()
        exchange.duration = max(0.0, store.clock.seconds() - started)
        exchange.state = "complete"
        self.exchange = None
        if exchange.request.complete:
            # The request was counted whole: only the response adds to it.
            store.changed(exchange, exchange.cost + len(reason) + length + headerCost)
        else:
            store.changed(exchange)
        return True

    def _response(
        self, status: int, reason: str, rawHead: Optional[str], headers: Optional[list[tuple[str, str]]],
        headerCost: int, fields: list[tuple[str, str]], quick: bool = False,
    ) -> None:
        """
        A response head: C{rawHead} (not decoded yet) or C{headers} (the
        line-by-line path's), what its fields cost, and the C{fields}
        framing needs (all of them, or only the few that matter).
        """
        if 100 <= status < 200 and status != 101:
            return  # 100 Continue, 103 Early Hints: the final answer follows
        observer = self.observer
        exchange, started = observer.pending[0]
        message = Message(headers=headers, rawHead=rawHead, headerCost=headerCost)
        exchange.response = message
        exchange.status = status
        exchange.reason = reason
        self.exchange = exchange
        self.started = started
        method = exchange.method.upper()
        if status == 101 or (method == "CONNECT" and 200 <= status < 300):
            if status == 101:
                wanted = message.header("upgrade").strip().lower()
                exchange.upgrade = "websocket" if "websocket" in wanted else (wanted or "unknown")
            else:
                exchange.upgrade = "connect"
            message.complete = True
            self._finish(exchange)
            observer.detach()
            return
        store = observer.store
        if store._subscribers:
            store.changed(exchange)
        else:
            self.unaccounted = exchange
        request = observer.request
        if request.state == _WAIT and request.exchange is exchange:
            request.resume()
        if method == "HEAD" or status in (204, 304) or (method == "CONNECT" and status < 300):
            self.msg = message
            self.body = bytearray()
            self._bodyEnded()
            return
        if quick:
            self._quickFraming(message, True, fields)
        else:
            self._framing(message, True, fields)

    def _finish(self, exchange: Exchange) -> None:
        observer = self.observer
        observer.pending.popleft()
        exchange.duration = max(0.0, observer.store.clock.seconds() - self.started)
        exchange.state = "complete"
        self.exchange = None
        self.unaccounted = None
        observer.store.changed(exchange)

    def _bodyEnded(self, body: Optional[bytes] = None) -> None:
        msg, exchange = self._takeBody(body)
        self.state = _HEAD
        self._finish(exchange)

    def _waiting(self, data: bytes, pos: int) -> None:
        raise AssertionError("responses never wait")


class HTTPObserver:
    """
    Watches both directions of one tunnelled connection (see the module
    docstring); the splice calls L{fromRemote}, L{fromLocal} and L{closed}.

    @ivar store: where exchanges go.
    @ivar splice: the splice whose C{observer} this is (set by L{attach});
        detaching sets its C{observer} to L{None}.
    @ivar pending: exchanges whose response has not ended, oldest first,
        with the clock time their request head was seen.
    @ivar seenHTTP: a request line was seen: failures from now on are
        C{gaveUp}, before it C{notHTTP}.
    @ivar stopped: the observer detached (or the connection closed).
    @ivar onExchange: called with each exchange the observer creates (for a
        replay that wants its own).
    """

    def __init__(
        self,
        store: "RequestStore",
        tunnel: str,
        peer: str,
        *,
        source: str = "tunnel",
        replayOf: Optional[int] = None,
    ) -> None:
        self.store = store
        self.tunnel = tunnel
        self.peer = peer
        self.source = source
        self.replayOf = replayOf
        self.splice: Any = None
        self.pending: deque[tuple[Exchange, float]] = deque()
        self.seenHTTP = False
        self.stopped = False
        self.onExchange: Optional[Callable[[Exchange], None]] = None
        self.request = _RequestParser(self)
        self.response = _ResponseParser(self)

    def attach(self, splice: Any) -> None:
        """
        Watch C{splice}: become its C{observer}.
        """
        self.splice = splice
        splice.observer = self

    def detach(self) -> None:
        """
        Stop watching: from now on the splice does not call us.
        """
        self.stopped = True
        self.request.state = self.response.state = _STOPPED
        splice = self.splice
        if splice is not None and getattr(splice, "observer", None) is self:
            splice.observer = None

    def fromRemote(self, data: bytes) -> None:
        """
        Bytes of the request direction (the peer's, through the tunnel).
        """
        if self.stopped:
            return
        try:
            request = self.request
            if request.state != _HEAD or request.line or request.lines or not request.whole(data):
                request.feed(data)
        except _GiveUp as e:
            self._giveUp(str(e))
        except InspectorFull as e:
            self._giveUp(str(e), counted=True)
        except Exception:  # noqa: BLE001 - the tunnel must never suffer from the inspector
            _log.failure("the HTTP inspector failed; it stops watching this connection")
            self._giveUp("internal error in the inspector")

    def fromLocal(self, data: bytes) -> None:
        """
        Bytes of the response direction (the local service's).
        """
        if self.stopped:
            return
        try:
            response = self.response
            if response.state != _HEAD or response.line or response.lines or not response.whole(data):
                response.feed(data)
            exchange = response.unaccounted
            if exchange is not None:
                response.unaccounted = None
                self.store.changed(exchange)
        except _GiveUp as e:
            self._giveUp(str(e))
        except InspectorFull as e:
            self._giveUp(str(e), counted=True)
        except Exception:  # noqa: BLE001 - the tunnel must never suffer from the inspector
            _log.failure("the HTTP inspector failed; it stops watching this connection")
            self._giveUp("internal error in the inspector")

    def closed(self) -> None:
        """
        The connection ended: a body read until close is complete; what is
        still pending is aborted.
        """
        if self.stopped:
            return
        try:
            response = self.response
            if response.state == _UNTIL_CLOSE and response.exchange is not None:
                response._bodyEnded()
            self._abortAll("the connection closed before the response ended")
        except Exception:  # noqa: BLE001
            _log.failure("the HTTP inspector failed at the end of a connection")
        self.detach()

    def _giveUp(self, reason: str, counted: bool = False) -> None:
        """
        Stop inspecting this connection, aborting what is pending; counted
        as given up (or not HTTP) unless the store counted it already
        (C{counted}: it refused the exchange).
        """
        store = self.store
        if counted:
            pass
        elif self.seenHTTP:
            store.gaveUp += 1
        else:
            store.notHTTP += 1
        try:
            self._abortAll(reason)
        except Exception:  # noqa: BLE001
            _log.failure("the HTTP inspector failed while giving up")
        self.detach()

    def _abortAll(self, reason: str) -> None:
        """
        Abort every exchange not ended yet, keeping the bodies captured so
        far.
        """
        self.request.keepBody()
        self.response.keepBody()
        self.response.unaccounted = None  # every pending exchange is told of below
        exchanges = [ex for ex, _ in self.pending]
        current = self.request.exchange
        if current is not None and current not in exchanges and not current.request.complete:
            exchanges.append(current)
        self.pending.clear()
        for exchange in exchanges:
            if exchange.state == "open":
                exchange.state = "aborted"
                exchange.error = reason
            elif exchange.error is None and not exchange.request.complete:
                exchange.error = f"request: {reason}"
            self.store.changed(exchange)
