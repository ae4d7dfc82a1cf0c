"""
C{beam requests} in the terminal: one line per captured HTTP exchange,
and the detail of one (issue 13).

A line reads C{#12  GET  /api/users?x=1  200 OK  12 ms  3000  (↻ #7)}: the
id, method, target, status, duration, the tunnel it came through, and the
exchange it replays, if any.  On a colour terminal (L{beam.console.style})
the status is green (2xx), cyan (3xx), yellow (4xx) or red (5xx and
aborted exchanges); a pipe gets the same text without escapes.

Everything shown came from a peer (targets, headers, bodies): control
characters are replaced before printing (see L{clean}), so a request
cannot move the cursor or retitle the terminal.  C{rich} is imported only
when colouring.
"""

from __future__ import annotations

import json
import re
from typing import IO, Any

from beam.console.style import makeConsole, useColour

__all__ = ["RequestPrinter", "clean", "detailText", "summaryLine"]

#: The longest target shown on a summary line (the detail shows all of it).
MAX_TARGET = 100

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean(text: str) -> str:
    """
    C{text} with control characters (other than tab and newline) shown as
    C{\\xNN}, so peer-supplied text cannot drive the terminal.
    """
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _statusText(s: dict[str, Any]) -> str:
    if s.get("state") == "aborted":
        return "aborted" + (f" ({s['error']})" if s.get("error") else "")
    if s.get("status") is None:
        return "pending"
    text = f"{s['status']} {s.get('reason') or ''}".rstrip()
    if s.get("upgrade"):
        text += f" ⇄ {s['upgrade']}"
    return text


def _statusStyle(s: dict[str, Any]) -> str:
    status = s.get("status")
    if s.get("state") == "aborted":
        return "bold red"
    if status is None:
        return "dim"
    return {2: "green", 3: "cyan", 4: "yellow", 5: "bold red"}.get(status // 100, "")


def _parts(s: dict[str, Any]) -> list[tuple[str, str]]:
    target = clean(str(s.get("path") or ""))
    if len(target) > MAX_TARGET:
        target = target[: MAX_TARGET - 1] + "…"
    parts = [
        (f"#{s['id']}", "bold"),
        (clean(str(s.get("method") or "")), "bold"),
        (target, ""),
        (clean(_statusText(s)), _statusStyle(s)),
    ]
    if s.get("duration_ms") is not None:
        parts.append((f"{s['duration_ms']:.0f} ms", "dim"))
    parts.append((clean(str(s.get("tunnel") or "")), "dim"))
    if s.get("replay_of") is not None:
        parts.append((f"(↻ #{s['replay_of']})", "magenta"))
    return parts


def summaryLine(s: dict[str, Any]) -> str:
    """
    One exchange summary (the control API's JSON) as a plain line.
    """
    return "  ".join(text for text, _ in _parts(s))


def _messageLines(title: str, msg: dict[str, Any] | None) -> list[str]:
    if msg is None:
        return [f"{title}: (none yet)"]
    lines = [f"{title}:"]
    lines += [f"  {clean(k)}: {clean(v)}" for k, v in msg.get("headers") or []]
    size, captured = msg.get("size", 0), msg.get("captured", 0)
    kind = msg.get("kind")
    if kind == "empty":
        lines.append("  (no body)")
        return lines
    note = f"{size} bytes"
    if msg.get("truncated"):
        note += f", first {captured} captured"
    if not msg.get("complete"):
        note += ", incomplete"
    if kind == "binary" or msg.get("text") is None:
        lines.append(f"  (binary body: {note}, {clean(msg.get('content_type') or 'no type')})")
        return lines
    lines.append(f"  ({kind} body: {note})")
    lines += ["  " + clean(line) for line in str(msg["text"]).splitlines()]
    return lines


def detailText(d: dict[str, Any]) -> str:
    """
    One exchange in detail (the control API's detail JSON) as text: the
    summary line, then the request and the response with headers and
    their rendered bodies.
    """
    lines = [summaryLine(d), f"  {clean(d.get('http_version') or '')} from {clean(d.get('peer') or 'unknown')}"]
    if d.get("error"):
        lines.append(f"  error: {clean(d['error'])}")
    lines += _messageLines("request", d.get("request"))
    lines += _messageLines("response", d.get("response"))
    return "\n".join(lines)


class RequestPrinter:
    """
    Prints exchange summaries on C{stream}: JSON objects, or lines
    (coloured on a colour terminal).
    """

    def __init__(self, stream: IO[str], asJSON: bool) -> None:
        self.stream = stream
        self.asJSON = asJSON
        self.colour = not asJSON and useColour(stream)
        self._console: Any = None

    def summary(self, s: dict[str, Any]) -> None:
        if self.asJSON:
            self.stream.write(json.dumps(s) + "\n")
        elif self.colour:
            from rich.text import Text

            if self._console is None:
                self._console = makeConsole(self.stream)
            line = Text()
            for i, (text, style) in enumerate(_parts(s)):
                if i:
                    line.append("  ")
                line.append(text, style=style or None)
            self._console.print(line, soft_wrap=True)
        else:
            self.stream.write(summaryLine(s) + "\n")
        self.stream.flush()

    def text(self, text: str) -> None:
        """
        A plain message (nothing with C{--json}).
        """
        if not self.asJSON:
            self.stream.write(text + "\n")
            self.stream.flush()
