"""
A captured request as a C{curl} command line (C{beam requests curl ID},
C{GET /v1/requests/ID/curl}, the dashboard's "Copy as curl").

The command is for a shell (bash, zsh, sh): every argument is quoted with
L{shlex.quote}, so whatever a peer put in a header or body is text to
curl and never a shell word.  The URL is built from the captured C{Host}
header (the person replays against their app as the client reached it);
C{Content-Length} and C{Transfer-Encoding} are left to curl, which
computes them for the body it sends (the captured body is stored
de-chunked).  A body that is not UTF-8 text, or holds a NUL byte (which no
shell argument can carry), is left out with a comment saying so; so is a
body cut at the capture cap.
"""

from __future__ import annotations

import shlex
from typing import Any

__all__ = ["curlCommand"]

#: Headers curl derives from the URL and the body it sends.
_DERIVED = {"host", "content-length", "transfer-encoding"}


def _textBody(body: bytes) -> str | None:
    """
    C{body} as text a shell argument can carry, or L{None}.
    """
    if b"\x00" in body:
        return None
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _header(name: str, value: str) -> str:
    # curl drops a header given as "Name:" and sends "Name;" as an empty one.
    return f"{name};" if value == "" else f"{name}: {value}"


def curlCommand(exchange: Any, fallbackHost: str = "localhost") -> str:
    """
    The C{curl} command that sends C{exchange}'s request again.

    @param exchange: a captured L{Exchange<beam.tunnel.inspect.store.Exchange>}.
    @param fallbackHost: the authority for the URL when the request had no
        C{Host} header (HTTP/1.0): the tunnel's local service, C{host:port}.
    """
    request = exchange.request
    headers: list[tuple[str, str]] = list(request.headers)
    host = next((v.strip() for k, v in headers if k.lower() == "host"), "") or fallbackHost
    target: str = exchange.target or "/"
    if target.lower().startswith(("http://", "https://")):
        url = target
    elif target.startswith("/"):
        url = f"http://{host}{target}"
    else:
        # "*" (OPTIONS) or an authority (CONNECT): not a URL curl can send
        # as is; the nearest thing is the root of the host.
        url = f"http://{host}/"
    method: str = exchange.method or "GET"
    words = ["curl"]
    notes: list[str] = []
    if method == "HEAD":
        words.append("--head")
    elif method != "GET" or request.body:
        words += ["-X", method]
    if exchange.version == "HTTP/1.0":
        words.append("--http1.0")
    if any(c in url for c in "[]{}"):
        # curl would read brackets and braces as its URL globbing.
        words.append("--globoff")
    if "/./" in url or "/../" in url or url.endswith(("/.", "/..")):
        words.append("--path-as-is")
    words.append(url)
    hasType = False
    for name, value in headers:
        lower = name.lower()
        if lower in _DERIVED:
            continue
        if lower == "content-type":
            hasType = True
        words += ["-H", _header(name, value)]
    body: bytes = request.body
    if request.truncated:
        notes.append(f"# the request body ({request.size} bytes) was cut at the capture cap "
                     f"({len(body)} bytes kept); it is not included")
    elif body:
        text = _textBody(body)
        if text is None:
            kind = next((v for k, v in headers if k.lower() == "content-type"), "") or "no type"
            notes.append(f"# the request body is binary ({len(body)} bytes, {kind}); it is not included")
        else:
            if not hasType:
                # curl would add "application/x-www-form-urlencoded"; the
                # captured request had no type.
                words += ["-H", "Content-Type:"]
            # --data-raw, unlike --data-binary, never reads "@file".
            words += ["--data-raw", text]
    command = " ".join(shlex.quote(w) for w in words)
    return "\n".join([*notes, command])
