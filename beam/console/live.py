"""
The live status of C{beam PORT} and C{beam connect} (issue 12): one
compact line, rewritten about twice a second on a terminal::

    ● 2 connections · ↓ 1.2 MiB (340 KiB/s) ↑ 20 KiB · direct

and the watch that ends the command when what it runs goes away: its
tunnel or forward removed (C{beam stop NAME}, the control API: exit
L{EXIT_STOPPED}), or the node it asked for it exited (exit
L{EXIT_NODE_GONE}).  Piped (or with C{--json}) there is no live line,
only the notice (an event with C{--json}) and the exit code.

The watch reads the same status the control API answers (C{tunnels},
C{forwards}, C{connections}, as C{GET /v1/status} renders them): from
the node in this process (L{daemonSource}) or over the control socket
(L{controlSource}), so both ways of running behave alike.

Drawing is a hand-rolled carriage-return line rather than C{rich.Live}:
it is one line, it must coexist with log lines on stderr, and without
escape codes (colour aside) it also works on C{TERM=dumb}.  Colour only
on a terminal, without C{NO_COLOR} and with a C{TERM} other than
C{dumb}, as L{beam.console.style} decides.
"""

from __future__ import annotations

import shutil
from collections import deque
from typing import Any, Callable, Optional, TextIO

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

__all__ = [
    "EXIT_NODE_GONE", "EXIT_STOPPED", "INTERVAL", "LiveStatus", "afterWrite", "aside", "beforeWrite",
    "controlSource", "daemonSource", "liveText", "size", "useColour",
]

#: Exit status when the tunnel or forward was stopped (TERM-CONTRACT).
EXIT_STOPPED = 3

#: Exit status when the node the command waited on went away.
EXIT_NODE_GONE = 4

#: Seconds between two looks at the status (and redraws).
INTERVAL = 0.5

#: Seconds of history the rates are computed over.
RATE_WINDOW = 2.0

#: Status answers: fires with the JSON-shaped status.
Source = Callable[[], "Deferred[dict[str, Any]]"]


def useColour(stream: Any) -> bool:
    """
    Colour only on a terminal, without C{NO_COLOR}, and not on
    C{TERM=dumb} (L{beam.console.style.useColour} decides).
    """
    from beam.console.style import useColour as styleUseColour

    return styleUseColour(stream)


def size(n: float) -> str:
    """
    A byte count the way people read it: C{512 B}, C{20 KiB}, C{1.2 MiB}.
    """
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            if unit == "B":
                return f"{int(value)} B"
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _pathText(conn: dict[str, Any]) -> str:
    """
    How a connection got there, as C{beam status} says it.
    """
    if conn.get("transport") == "tor":
        return "over Tor"
    if conn.get("path") == "relayed" or (conn.get("limited") and not conn.get("path")):
        relay = conn.get("relay")
        return f"relayed via {_short(relay)}" if relay else "relayed"
    return str(conn.get("path") or "direct")


def _short(peer: str) -> str:
    return peer if len(peer) <= 16 else peer[:8] + "…" + peer[-4:]


def _paths(connections: list[dict[str, Any]]) -> str:
    """
    The paths of C{connections}, summed up: C{direct}, or C{2 direct, 1
    relayed via 12D3KooW…abcd}.
    """
    counts: dict[str, int] = {}
    for conn in connections:
        text = _pathText(conn)
        counts[text] = counts.get(text, 0) + 1
    if len(counts) == 1:
        return next(iter(counts))
    return ", ".join(f"{n} {text}" for text, n in counts.items())


def liveText(kind: str, item: dict[str, Any], connections: list[dict[str, Any]],
             rates: tuple[float, float] = (0.0, 0.0), colour: bool = False) -> str:
    """
    The live line for C{item} (a tunnel's or forward's status, JSON-shaped).

    @param kind: C{"tunnel"} or C{"forward"}.
    @param connections: the node's peer connections (JSON-shaped): for a
        forward, the one to its host gives the path; for a tunnel, those
        carrying streams while it carries connections.
    @param rates: bytes per second in and out, lately.
    """
    stats = item.get("stats") or {}
    active = int(stats.get("active") or 0)
    bytesIn, bytesOut = int(stats.get("bytesIn") or 0), int(stats.get("bytesOut") or 0)
    state = str(item.get("state") or "connected") if kind == "forward" else "up"
    if kind == "forward":
        peer = item.get("peer_id")
        path = _paths([c for c in connections if c.get("peer_id") == peer])
    else:
        path = _paths([c for c in connections if int(c.get("streams") or 0) > 0]) if active else ""
    down = f"↓ {size(bytesIn)}" + (f" ({size(rates[0])}/s)" if rates[0] >= 1 else "")
    up = f"↑ {size(bytesOut)}" + (f" ({size(rates[1])}/s)" if rates[1] >= 1 else "")
    if state.startswith("unreachable"):
        mark, tone = "○", "33"
        head = state
    elif kind == "forward" and state != "connected":
        mark, tone = "○", "2"
        head = state + "…"
    else:
        mark, tone = ("●", "32") if active or kind == "forward" else ("○", "2")
        head = f"{active} connection{'' if active == 1 else 's'}"
    parts = [head, down + " " + up]
    if path and not state.startswith("unreachable"):
        parts.append(path)
    if colour:
        mark = f"\x1b[{tone}m{mark}\x1b[0m"
    return f"{mark} " + " · ".join(parts)


#: The live statuses whose line is on the terminal now: a log line (or
#: any other line) written meanwhile clears them first and redraws them
#: after (L{beforeWrite}, L{afterWrite}).
_drawn: list["LiveStatus"] = []


def beforeWrite() -> None:
    """
    Clear every live line now drawn, so that a line about to be written
    to the terminal starts at the left on an empty line rather than
    after the live line's text.  Call L{afterWrite} once it is written.
    Cheap and harmless when no live line is drawn (piped, no command
    watching), so every terminal line printer may call it.
    """
    for live in list(_drawn):
        live._clear()


def afterWrite() -> None:
    """
    Draw again the live lines L{beforeWrite} cleared, below the line just
    written, instead of leaving them blank until the next refresh.
    """
    for live in list(_drawn):
        live._redraw()


def aside(printLine: Callable[[str, str], None]) -> Callable[[str, str], None]:
    """
    C{printLine} (a C{KIND, MESSAGE} printer such as the log's) made to
    clear the live line before each line it prints and redraw it after.
    """
    def printAside(kind: str, message: str) -> None:
        beforeWrite()
        try:
            printLine(kind, message)
        finally:
            afterWrite()

    return printAside


def daemonSource(daemon: Any) -> Source:
    """
    The status of the node running in this process, shaped as C{GET
    /v1/status} answers it (only what the live line reads).
    """
    from beam.controlapi import asJSON
    from beam.p2p.host.status import nodeStatus

    def fetch() -> Deferred[dict[str, Any]]:
        node = nodeStatus(daemon.node)
        return succeed({
            "tunnels": asJSON(daemon.tunnels.status()),
            "forwards": asJSON(daemon.forwards.status()),
            "connections": asJSON(node.connections),
        })

    return fetch


def controlSource(client: Any) -> Source:
    """
    The status of the running node, over its control socket.
    """
    return lambda: client.request("GET", "/v1/status")


def _nodeGone(failure: Failure, stillRunning: Callable[[], bool]) -> bool:
    """
    Whether a failed status request means the node is gone: none listens
    on the control socket any more.
    """
    from beam.daemon.control.socket import NoNodeRunning

    if failure.check(NoNodeRunning):
        return True
    try:
        return not stillRunning()
    except Exception:
        return False


class LiveStatus:
    """
    Watches one tunnel or forward until it or the node goes away; on a
    terminal, shows the live line meanwhile.

    @ivar done: fires with the exit status once the watch ends
        (L{EXIT_STOPPED}, L{EXIT_NODE_GONE}); never while all is well.
    """

    def __init__(
        self,
        clock: Any,
        source: Source,
        kind: str,
        key: str,
        label: str,
        stream: TextIO,
        tty: bool,
        notify: Callable[[dict[str, Any], str], None],
        stillRunning: Callable[[], bool] = lambda: True,
        colour: Optional[bool] = None,
    ) -> None:
        """
        @param kind: C{"tunnel"} or C{"forward"}: which status section
            C{key} is in (C{"tunnels"}, C{"forwards"}, by C{name}).
        @param label: how the notice names it ("the tunnel 'web'").
        @param stream: where the live line goes (stdout).
        @param tty: whether to draw the live line at all.
        @param notify: says why the watch ended: the JSON event and the
            line of text (the command prints one or the other).
        @param stillRunning: whether a node still answers on the control
            socket (asked when a status request fails).
        """
        self.clock = clock
        self.source = source
        self.kind = kind
        self.key = key
        self.label = label
        self.stream = stream
        self.tty = tty
        self.notify = notify
        self.stillRunning = stillRunning
        self.colour = useColour(stream) if colour is None else colour
        self.done: Deferred[int] = Deferred()
        self._samples: deque[tuple[float, int, int]] = deque()
        self._shown = ""
        self._hidden = False
        self._timer: Any = None
        self._pending: Optional[Deferred[Any]] = None

    def start(self) -> Deferred[int]:
        """
        Look now, then every L{INTERVAL} seconds.
        """
        self._look()
        return self.done

    def stop(self) -> None:
        """
        Stop watching (Ctrl-C, the reactor stopping): end the live line so
        that what follows starts on its own line.
        """
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._endLine()

    def _endLine(self) -> None:
        if self in _drawn:
            _drawn.remove(self)
        if self._shown and not self._hidden:
            self.stream.write("\n")
            self.stream.flush()
        self._shown = ""
        self._hidden = False

    def _clear(self) -> None:
        """
        Blank the line drawn (spaces over it, back to its start): what is
        written next takes its place.
        """
        if self._shown and not self._hidden:
            self.stream.write("\r" + " " * _visibleLength(self._shown) + "\r")
            self.stream.flush()
            self._hidden = True

    def _redraw(self) -> None:
        """
        Draw the last line again after L{_clear}.
        """
        if self._shown and self._hidden:
            self._hidden = False
            self.stream.write("\r" + self._shown)
            self.stream.flush()

    def _look(self) -> None:
        self._timer = None
        if self.done.called:
            return
        try:
            d = self.source()
        except Exception:
            d = Deferred()
            d.errback(Failure())
        d.addCallbacks(self._got, self._failed)
        d.addErrback(lambda f: None)

    def _again(self) -> None:
        if not self.done.called:
            self._timer = self.clock.callLater(INTERVAL, self._look)

    def _got(self, status: dict[str, Any]) -> None:
        if self.done.called:
            return
        section = self.kind + "s"
        items = status.get(section)
        if isinstance(items, list):
            item = next((i for i in items if isinstance(i, dict) and str(i.get("name")) == self.key), None)
            if item is None:
                self._end(EXIT_STOPPED, "stopped",
                          f"{self.label} was stopped (beam stop, or removed through the control API)")
                return
            if self.tty:
                self._draw(item, [c for c in status.get("connections") or [] if isinstance(c, dict)])
        self._again()

    def _failed(self, failure: Failure) -> None:
        if self.done.called:
            return
        if _nodeGone(failure, self.stillRunning):
            self._end(EXIT_NODE_GONE, "node-gone", "the Beam node went away (its daemon exited)")
            return
        self._again()

    def _end(self, code: int, reason: str, text: str) -> None:
        self.stop()
        self.notify({"event": "stopped", "reason": reason, "name": self.key}, text)
        self.done.callback(code)

    def _rates(self, bytesIn: int, bytesOut: int) -> tuple[float, float]:
        now = self.clock.seconds()
        self._samples.append((now, bytesIn, bytesOut))
        while len(self._samples) > 2 and now - self._samples[1][0] >= RATE_WINDOW:
            self._samples.popleft()
        then, oldIn, oldOut = self._samples[0]
        if now - then <= 0:
            return (0.0, 0.0)
        return (max(0, bytesIn - oldIn) / (now - then), max(0, bytesOut - oldOut) / (now - then))

    def _draw(self, item: dict[str, Any], connections: list[dict[str, Any]]) -> None:
        stats = item.get("stats") or {}
        rates = self._rates(int(stats.get("bytesIn") or 0), int(stats.get("bytesOut") or 0))
        text = liveText(self.kind, item, connections, rates, colour=self.colour)
        width = shutil.get_terminal_size((80, 24)).columns - 1
        visible = _visibleLength(text)
        if visible > width > 10:
            text = _truncate(text, width)
            visible = width
        # Pad with spaces over what the last line left (no escape codes,
        # so that TERM=dumb works too).
        pad = 0 if self._hidden else max(0, _visibleLength(self._shown) - visible)
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()
        self._shown = text
        self._hidden = False
        if self not in _drawn:
            _drawn.append(self)


def _plain(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def _visibleLength(text: str) -> int:
    return len(_plain(text))


def _truncate(text: str, width: int) -> str:
    """
    C{text} cut to C{width} visible characters (colour kept whole).
    """
    out, seen, i = [], 0, 0
    while i < len(text) and seen < width - 1:
        if text.startswith("\x1b[", i):
            end = text.index("m", i) + 1
            out.append(text[i:end])
            i = end
            continue
        out.append(text[i])
        seen += 1
        i += 1
    return "".join(out) + "…"
