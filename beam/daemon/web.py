"""
The local dashboard's web server (issue 13): the dashboard page and its
static files, the daemon's control API under C{/api}, live updates as
Server-Sent Events at C{/api/events}, and Prometheus metrics at
C{/metrics}, on C{127.0.0.1:4040} by default (the next free port up to
+19 when that one is taken).

Security model (docs/security.md, "The dashboard"): the page can replay
requests into the user's services and stop the node, so

  - it listens on loopback unless C{web_allow_remote} (config) or
    C{--web-allow-remote} allowed another address, and then warns;
  - every request's C{Host} must name this server (C{127.0.0.1:P},
    C{localhost:P}, C{[::1]:P} or the bound address): a DNS-rebinding page
    (C{evil.example} resolving to 127.0.0.1) sends its own name and is
    refused;
  - an C{Origin} header, when present, must be this server's own, and a
    browser's C{Sec-Fetch-Site} must be C{same-origin} or C{none} (typed or
    opened from the terminal): other sites' pages, and other local ports,
    are refused;
  - C{/api} needs the per-node token (C{<home>/web-token}, 0600, kept
    across restarts) as the C{beam_token_<port>} cookie (HttpOnly, SameSite=Strict),
    an C{X-Beam-Token} header or C{Authorization: Bearer}; anything but
    GET and HEAD needs the header (a cookie alone could be a cross-site
    form's), so state never changes on a cookie;
  - the token reaches the browser through C{beam dashboard}'s URL
    (C{/?token=T}, answered with the cookie and a redirect to C{/} so it
    leaves the address bar) and reaches the page's script only through a
    C{<meta name="beam-token">} tag written into the page for a request
    that already carries it;
  - request bodies are bounded (the control API's C{MAX_BODY}), the live
    clients too (16, and one whose unsent data passes 1 MiB is dropped);
  - every answer says C{X-Content-Type-Options: nosniff},
    C{X-Frame-Options: DENY}, C{Referrer-Policy: no-referrer} and a
    C{Content-Security-Policy} allowing only this origin.

C{twisted.web.server} is imported when the first client connects, not
before (a tunnel command that nobody browses never loads it).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import re
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional
from urllib.parse import parse_qs

import attrs
from twisted.application.service import Service
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.web.resource import IResource, Resource
from zope.interface import implementer

from beam.controlapi import MAX_BODY, JSONResource
from beam.errors import BeamError
from beam.daemon.control.socket import LazySite

if TYPE_CHECKING:
    from twisted.web.server import Request, Site

    from beam.daemon.config import WebConfig

__all__ = [
    "CSP",
    "EVENT_CLIENTS",
    "EVENT_CLIENT_BUFFER",
    "PORT_ATTEMPTS",
    "TOKEN_FILE",
    "WebResource",
    "WebService",
    "WebStatus",
    "loadToken",
]

#: The token's file in the node's home.
TOKEN_FILE = "web-token"
#: Ports tried: the configured one and the next 19.
PORT_ATTEMPTS = 20
#: Live-update clients at once.
EVENT_CLIENTS = 16
#: Unsent bytes a live-update client may have before it is dropped.
EVENT_CLIENT_BUFFER = 1 << 20
#: Seconds between status events, and between keep-alive comments.
STATUS_INTERVAL = 1.0
PING_INTERVAL = 15.0
#: Only this origin: no inline script, nothing fetched elsewhere, no framing.
CSP = ("default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
       "form-action 'self'; frame-ancestors 'none'")
#: The dashboard's static files (a plain folder; package data).
WEBUI = Path(__file__).resolve().parent / "webui"
_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".svg": b"image/svg+xml",
    ".png": b"image/png",
    ".ico": b"image/x-icon",
    ".json": b"application/json",
    ".txt": b"text/plain; charset=utf-8",
}
_STATIC_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")
_PLACEHOLDER = (b"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Beam</title></head>\n"
                b"<body><p>The Beam dashboard's files are missing from this installation.</p></body></html>\n")


#: How long a browser stays logged in (seconds): 30 days.
COOKIE_MAX_AGE = 30 * 24 * 3600


def loadToken(home: Path, random: Callable[[int], bytes] = os.urandom) -> str:
    """
    The node's dashboard token: C{<home>/web-token}, made (32 random bytes,
    base64url, mode 0600) when missing, malformed or readable by others
    (then it may have leaked, and a new one is made).
    """
    import base64

    from beam.storage.fileutil import atomicWrite

    path = Path(home) / TOKEN_FILE
    try:
        st = os.stat(path)
        text = path.read_text("ascii").strip()
        if _TOKEN.fullmatch(text) and not st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            return text
    except (OSError, UnicodeDecodeError):
        pass
    token = base64.urlsafe_b64encode(random(32)).rstrip(b"=").decode("ascii")
    atomicWrite(path, token.encode("ascii") + b"\n", 0o600)
    return token


@attrs.frozen
class WebStatus:
    """
    The dashboard, as the status's C{"web"} section shows it (the URL never
    carries the token).

    @ivar url: where it is, or L{None} when off or not listening.
    @ivar error: why it is not listening, if so.
    @ivar clients: live-update (Server-Sent Events) clients.
    """

    enabled: bool
    url: Optional[str] = None
    host: Optional[str] = None
    port: Optional[int] = None
    allowRemote: bool = False
    clients: int = 0
    error: Optional[str] = None


def _hostText(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _isLoopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _makeSite(root: IResource) -> Site:
    """
    A quiet L{Site} whose requests refuse bodies over L{MAX_BODY}.
    """
    from twisted.web.server import Request, Site

    class _BoundedRequest(Request):
        """
        A request whose body may not pass L{MAX_BODY}: a larger declared
        C{Content-Length}, or a chunked body that grows past it, is answered
        413 and the connection closed before more is read.
        """

        _received = 0
        _refused = False

        def gotLength(self, length: Optional[int]) -> None:
            if length is not None and length > MAX_BODY:
                self._refuse()
                length = 0
            super().gotLength(length)

        def handleContentChunk(self, data: bytes) -> None:
            if self._refused:
                return
            self._received += len(data)
            if self._received > MAX_BODY:
                self._refuse()
                return
            super().handleContentChunk(data)

        def _refuse(self) -> None:
            if self._refused:
                return
            self._refused = True
            transport = self.channel.transport if self.channel is not None else None
            if transport is not None:
                body = json.dumps({"error": f"request body larger than {MAX_BODY} bytes"}).encode() + b"\n"
                transport.write(b"HTTP/1.1 413 Payload Too Large\r\ncontent-type: application/json\r\n"
                                b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
                transport.loseConnection()

        def process(self) -> None:
            if self._refused:
                return
            super().process()

    class _QuietSite(Site):
        noisy = False

        def log(self, request: Any) -> None:
            pass

    return _QuietSite(root, requestFactory=_BoundedRequest, timeout=60)


class WebService(Service):
    """
    The dashboard's server, a child of the L{BeamDaemon
    <beam.daemon.service.BeamDaemon>} (started after its services, stopped
    before them).

    @ivar token: the node's token (once started).
    @ivar port: the port it listens on, or L{None}.
    @ivar error: why it does not listen, if so.
    @ivar events: the live-update clients' hub.
    """

    log = Logger()

    def __init__(self, reactor: Any, daemon: Any, config: WebConfig, home: Path,
                 random: Callable[[int], bytes] = os.urandom, attempts: int = PORT_ATTEMPTS) -> None:
        self.reactor = reactor
        self.daemon = daemon
        self.config = config
        self.home = Path(home)
        self.random = random
        self.attempts = attempts
        self.token: Optional[str] = None
        self.port: Optional[int] = None
        self.error: Optional[str] = None
        self._listening: Any = None
        self.events = _EventHub(self)
        self.root = _Root(self)

    # -- addresses -----------------------------------------------------------

    @property
    def url(self) -> Optional[str]:
        """
        The dashboard's URL (no token), or L{None} when it does not listen.
        A wildcard bind is shown as loopback, which reaches it too.
        """
        if self.port is None:
            return None
        host = self.config.host
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        return f"http://{_hostText(host, self.port)}/"

    def loginURL(self) -> str:
        """
        The URL that logs a browser in (C{/?token=...}).

        @raise BeamError: the dashboard is off or not listening.
        """
        if not self.config.enabled:
            raise BeamError("the dashboard is off (web = \"off\" in config.toml, or --web off)")
        if self.url is None or self.token is None:
            raise BeamError(f"the dashboard is not listening: {self.error or 'not started'}")
        return f"{self.url}?token={self.token}"

    @property
    def cookieName(self) -> bytes:
        """
        The login cookie's name, C{beam_token_<port>}: browsers send a
        host's cookies to every port of it, so two nodes' dashboards on one
        machine (C{beam 3000} and a C{beam connect} with its own home) each
        need their own, or logging into one would log out of the other.
        """
        return b"beam_token_%d" % (self.port or 0)

    def allowedHost(self, host: bytes) -> bool:
        """
        Whether a request's C{Host} header names this server: loopback
        names with our port, the bound address, or (with C{allowRemote})
        any IP address with our port.
        """
        if self.port is None:
            return False
        try:
            text = host.decode("ascii").strip().lower()
        except UnicodeDecodeError:
            return False
        port = str(self.port)
        allowed = {f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}",
                   _hostText(self.config.host, self.port).lower()}
        if text in allowed:
            return True
        if self.config.allowRemote:
            name, sep, given = text.rpartition(":")
            if sep and given == port:
                if name.startswith("[") and name.endswith("]"):
                    name = name[1:-1]
                try:
                    ipaddress.ip_address(name)
                    return True
                except ValueError:
                    return False
        return False

    def validToken(self, given: Optional[bytes]) -> bool:
        if given is None or self.token is None:
            return False
        return hmac.compare_digest(given.strip(), self.token.encode("ascii"))

    # -- lifecycle -----------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        if not self.config.enabled:
            return
        try:
            self.token = loadToken(self.home, self.random)
        except OSError as e:
            self.error = f"cannot keep the token in {self.home / TOKEN_FILE}: {e.strerror or e}"
            self.log.warn("dashboard: {why}; running without it", why=self.error)
            return
        self._listen()

    def _listen(self) -> None:
        host, first = self.config.host, self.config.port
        factory = LazySite(lambda: _makeSite(self.root))
        last: Optional[Exception] = None
        for port in range(first, min(first + self.attempts, 65536)):
            try:
                self._listening = self.reactor.listenTCP(port, factory, interface=host)
            except CannotListenError as e:
                last = e
                continue
            except Exception as e:  # noqa: BLE001 - reported; the node runs without it
                last = e
                break
            self.port = self._listening.getHost().port
            self.error = None
            if port != first:
                self.log.info("dashboard: {first} is taken; using {port}", first=_hostText(host, first), port=port)
            self.log.info("dashboard on {url}", url=self.url)
            if not _isLoopback(host):
                self.log.warn(
                    "the dashboard listens on {where}, which is not a loopback address: anyone who can reach "
                    "it and has the token (beam dashboard) can see captured requests and replay them",
                    where=_hostText(host, self.port))
            return
        from beam.p2p.transport.tcp import listenFailureReason

        why = listenFailureReason(last) if last is not None else "no port to try"
        last_port = min(first + self.attempts, 65536) - 1
        self.error = f"cannot listen on {_hostText(host, first)}..{last_port}: {why}"
        self.log.warn("dashboard: {why}; running without it", why=self.error)

    def stopService(self) -> Any:
        super().stopService()
        self.events.closeAll()
        listening, self._listening = self._listening, None
        self.port = None
        if listening is not None:
            return listening.stopListening()
        return None

    def status(self) -> WebStatus:
        return WebStatus(
            enabled=self.config.enabled, url=self.url,
            host=self.config.host if self.config.enabled else None, port=self.port,
            allowRemote=self.config.allowRemote, clients=len(self.events.clients), error=self.error,
        )


# -- the guard and the tree ------------------------------------------------------


def _setSecurityHeaders(request: Request) -> None:
    request.setHeader(b"x-content-type-options", b"nosniff")
    request.setHeader(b"x-frame-options", b"DENY")
    request.setHeader(b"referrer-policy", b"no-referrer")
    request.setHeader(b"content-security-policy", CSP.encode("ascii"))


class _Refusal(Resource):
    """
    A JSON error answer (a refused request, an unknown path).
    """

    isLeaf = True

    def __init__(self, code: int, why: str) -> None:
        super().__init__()
        self.code = code
        self.why = why

    def render(self, request: Request) -> bytes:
        request.setResponseCode(self.code)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps({"error": self.why}).encode("utf-8") + b"\n"


def _guard(web: WebService, request: Request) -> Optional[_Refusal]:
    """
    The checks every request passes: its Host, its Origin, its
    Sec-Fetch-Site.  L{None} when it passes, else the refusal.
    """
    host = request.getHeader(b"host")
    if host is None or not web.allowedHost(host.encode("latin-1") if isinstance(host, str) else host):
        return _Refusal(403, "foreign Host: use http://127.0.0.1:PORT/ (or localhost)")
    origin = request.getHeader(b"origin")
    if origin is not None:
        wanted = b"http://" + (host.encode("latin-1") if isinstance(host, str) else host).strip().lower()
        given = origin.encode("latin-1") if isinstance(origin, str) else origin
        if given.strip().lower() != wanted:
            return _Refusal(403, "foreign Origin: the dashboard answers only its own pages")
    site = request.getHeader(b"sec-fetch-site")
    if site is not None:
        value = site.encode("latin-1") if isinstance(site, str) else site
        if value.strip().lower() not in (b"same-origin", b"none"):
            return _Refusal(403, "cross-site request refused")
    return None


def _givenToken(web: WebService, request: Request, headerOnly: bool = False) -> Optional[bytes]:
    header = request.getHeader(b"x-beam-token")
    if header is not None:
        return header.encode("latin-1") if isinstance(header, str) else header
    auth = request.getHeader(b"authorization")
    if auth is not None:
        raw = auth.encode("latin-1") if isinstance(auth, str) else auth
        scheme, _, value = raw.strip().partition(b" ")
        if scheme.lower() == b"bearer" and value:
            return value.strip()
    if headerOnly:
        return None
    return request.getCookie(web.cookieName)


class _Root(Resource):
    """
    C{/}: the guard for every request, then the page, C{/static/},
    C{/api/}, C{/metrics}.
    """

    def __init__(self, web: WebService) -> None:
        super().__init__()
        self.web = web
        self.index = _Index(web)
        self.static = _Static()
        self.api = _Api(web)
        self.metrics = _Metrics(web)

    def getChildWithDefault(self, path: bytes, request: Request) -> IResource:
        _setSecurityHeaders(request)
        refused = _guard(self.web, request)
        if refused is not None:
            return refused
        if path == b"":
            return self.index
        if path == b"static":
            return self.static
        if path == b"api":
            return self.api
        if path == b"metrics":
            return self.metrics
        return _Refusal(404, "no such page")

    def render(self, request: Request) -> bytes:
        # Reached only without a path segment, which HTTP never sends.
        return _Refusal(404, "no such page").render(request)


class _Index(Resource):
    """
    C{GET /}: the dashboard's page, with the token in a meta tag for a
    request that carries it; C{GET /?token=T} logs in (cookie, redirect).
    """

    isLeaf = True

    def __init__(self, web: WebService) -> None:
        super().__init__()
        self.web = web

    def render_HEAD(self, request: Request) -> bytes:
        return self.render_GET(request)

    def render_GET(self, request: Request) -> bytes:
        if request.postpath not in ([], [b""]):
            return _Refusal(404, "no such page").render(request)
        query = parse_qs(request.uri.partition(b"?")[2].decode("latin-1"))
        request.setHeader(b"cache-control", b"no-store")
        if "token" in query:
            given = query["token"][-1].encode("latin-1")
            if not self.web.validToken(given):
                return _Refusal(403, "wrong token: run `beam dashboard` for the right URL").render(request)
            # Persistent (the token outlives restarts), so the plain URL the
            # browser remembers keeps working; HttpOnly keeps it from scripts.
            request.addCookie(self.web.cookieName, given, path=b"/", httpOnly=True, sameSite="strict",
                              max_age=str(COOKIE_MAX_AGE).encode("ascii"))
            request.setResponseCode(303)
            request.setHeader(b"location", b"/")
            return b""
        try:
            page = (WEBUI / "index.html").read_bytes()
        except OSError:
            page = _PLACEHOLDER
        token = _givenToken(self.web, request)
        if self.web.validToken(token) and self.web.token is not None:
            meta = b'<meta name="beam-token" content="' + self.web.token.encode("ascii") + b'">'
            at = page.lower().find(b"</head>")
            page = page[:at] + meta + b"\n" + page[at:] if at >= 0 else meta + b"\n" + page
        request.setHeader(b"content-type", _TYPES[".html"])
        return page


class _Static(Resource):
    """
    C{GET /static/NAME}: a file of the dashboard's folder, if its name is
    plain and its type known; nothing else (no listing, no subfolders).
    """

    isLeaf = True

    def render_HEAD(self, request: Request) -> bytes:
        return self.render_GET(request)

    def render_GET(self, request: Request) -> bytes:
        postpath = request.postpath or []
        if len(postpath) != 1:
            return _Refusal(404, "no such file").render(request)
        try:
            name = postpath[0].decode("ascii")
        except UnicodeDecodeError:
            return _Refusal(404, "no such file").render(request)
        kind = _TYPES.get(os.path.splitext(name)[1].lower())
        if not _STATIC_NAME.fullmatch(name) or ".." in name or kind is None:
            return _Refusal(404, "no such file").render(request)
        path = WEBUI / name
        try:
            if not stat.S_ISREG(os.lstat(path).st_mode):
                raise FileNotFoundError(name)
            data = path.read_bytes()
        except OSError:
            return _Refusal(404, "no such file").render(request)
        request.setHeader(b"content-type", kind)
        request.setHeader(b"cache-control", b"no-cache")
        return data


class _Api(Resource):
    """
    C{/api/...}: the token, then C{/api/events} or the control tree.
    """

    def __init__(self, web: WebService) -> None:
        super().__init__()
        self.web = web

    def _check(self, request: Request) -> Optional[_Refusal]:
        request.setHeader(b"cache-control", b"no-store")
        method = request.method
        if method in (b"GET", b"HEAD"):
            if not self.web.validToken(_givenToken(self.web, request)):
                return _Refusal(401, "the dashboard token is missing or wrong: run `beam dashboard`")
        elif not self.web.validToken(_givenToken(self.web, request, headerOnly=True)):
            return _Refusal(401, "changes need the token in the X-Beam-Token header")
        return None

    def getChildWithDefault(self, path: bytes, request: Request) -> IResource:
        refused = self._check(request)
        if refused is not None:
            return refused
        if path == b"events":
            return _Events(self.web)
        return self.web.daemon.controlRoot.getChildWithDefault(path, request)

    def render(self, request: Request) -> bytes:
        refused = self._check(request)
        return (refused or _Refusal(404, "no such endpoint: /api")).render(request)


class _Metrics(Resource):
    """
    C{GET /metrics}: Prometheus's text format (L{beam.daemon.metrics}),
    without the token (a scraper has none); 503 until that module exists.
    """

    isLeaf = True

    def __init__(self, web: WebService) -> None:
        super().__init__()
        self.web = web

    def render_GET(self, request: Request) -> bytes:
        try:
            from beam.daemon import metrics
        except ImportError:
            return _Refusal(503, "metrics are not available in this version").render(request)
        try:
            body = metrics.metricsText(self.web.daemon)
        except Exception:
            self.web.log.failure("the metrics failed")
            return _Refusal(500, "internal error; see the node's log").render(request)
        request.setHeader(b"content-type", str(metrics.CONTENT_TYPE).encode("latin-1"))
        request.setHeader(b"cache-control", b"no-store")
        return bytes(body)


# -- Server-Sent Events -------------------------------------------------------


class _Events(Resource):
    """
    C{GET /api/events}: a live-update client (L{_EventHub}).
    """

    isLeaf = True

    def __init__(self, web: WebService) -> None:
        super().__init__()
        self.web = web

    def render_GET(self, request: Request) -> Any:
        if len(self.web.events.clients) >= EVENT_CLIENTS:
            return _Refusal(503, f"too many live clients (at most {EVENT_CLIENTS})").render(request)
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-accel-buffering", b"no")
        self.web.events.add(request)
        return 1  # NOT_DONE_YET


@implementer(IPushProducer)
class _EventClient:
    """
    One live-update client: writes while the connection takes them, keeps
    at most L{EVENT_CLIENT_BUFFER} bytes while it does not, and is dropped
    past that.
    """

    def __init__(self, hub: _EventHub, request: Request) -> None:
        self.hub = hub
        self.request = request
        self.paused = False
        self.pending: list[bytes] = []
        self.pendingBytes = 0
        self.closed = False

    def send(self, data: bytes) -> None:
        if self.closed:
            return
        if self.paused:
            if self.pendingBytes + len(data) > EVENT_CLIENT_BUFFER:
                self.hub.drop(self, "it did not read its events (over 1 MiB unsent)")
                return
            self.pending.append(data)
            self.pendingBytes += len(data)
            return
        self._write(data)

    def _write(self, data: bytes) -> None:
        try:
            self.request.write(data)
        except Exception:  # noqa: BLE001 - the connection went away under us
            self.hub.remove(self)

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        pending, self.pending, self.pendingBytes = self.pending, [], 0
        for data in pending:
            if self.paused or self.closed:
                # Paused again: keep the rest, in order.
                self.pending.append(data)
                self.pendingBytes += len(data)
            else:
                self._write(data)

    def stopProducing(self) -> None:
        self.hub.remove(self)


class _EventHub:
    """
    The live-update clients: a status event every second and a comment
    every 15 s to each, and each request event the inspector's store
    reports, while any client is connected (nothing runs without one).
    """

    def __init__(self, web: WebService) -> None:
        self.web = web
        self.clients: list[_EventClient] = []
        self.dropped = 0
        self._loop: Any = None
        self._ticks = 0
        self._unsubscribe: Optional[Callable[[], None]] = None

    def add(self, request: Request) -> None:
        client = _EventClient(self, request)
        self.clients.append(client)
        request.registerProducer(client, True)
        request.notifyFinish().addBoth(lambda _: self.remove(client))
        client.send(b"retry: 2000\n\n")
        self._sendStatus([client])
        if self._loop is None:
            from twisted.internet.task import LoopingCall

            self._ticks = 0
            self._loop = LoopingCall(self._tick)
            self._loop.clock = self.web.reactor
            self._loop.start(STATUS_INTERVAL, now=False)
            self._subscribe()

    def _subscribe(self) -> None:
        try:
            store = self.web.daemon.service("requests").store
        except (KeyError, AttributeError):
            return
        if store is None or not hasattr(store, "subscribe"):
            return
        self._unsubscribe = store.subscribe(self._exchange)

    def _exchange(self, exchange: Any) -> None:
        try:
            data = json.dumps(exchange.summaryJSON(), allow_nan=False)
        except Exception:
            self.web.log.failure("an exchange could not be sent to the dashboard")
            return
        self.broadcast(b"event: request\ndata: " + data.encode("utf-8") + b"\n\n")

    def _sendStatus(self, clients: list[_EventClient]) -> None:
        from beam.daemon.status import statusJSON

        try:
            data = json.dumps(statusJSON(self.web.daemon.status()), allow_nan=False)
        except Exception:
            self.web.log.failure("the status could not be sent to the dashboard")
            return
        event = b"event: status\ndata: " + data.encode("utf-8") + b"\n\n"
        for client in list(clients):
            client.send(event)

    def _tick(self) -> None:
        self._ticks += 1
        self._sendStatus(self.clients)
        if self._ticks % round(PING_INTERVAL / STATUS_INTERVAL) == 0:
            self.broadcast(b": ping\n\n")

    def broadcast(self, data: bytes) -> None:
        for client in list(self.clients):
            client.send(data)

    def drop(self, client: _EventClient, why: str) -> None:
        self.dropped += 1
        self.web.log.info("dashboard: dropped a live client: {why}", why=why)
        self.remove(client)
        transport = getattr(client.request.channel, "transport", None)
        if transport is not None:
            transport.abortConnection()

    def remove(self, client: _EventClient) -> None:
        if client.closed:
            return
        client.closed = True
        client.pending, client.pendingBytes = [], 0
        if client in self.clients:
            self.clients.remove(client)
        if not self.clients:
            self._stop()

    def _stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        unsubscribe, self._unsubscribe = self._unsubscribe, None
        if unsubscribe is not None:
            try:
                unsubscribe()
            except Exception:
                self.web.log.failure("unsubscribing from the inspector failed")

    def closeAll(self) -> None:
        for client in list(self.clients):
            request = client.request
            self.remove(client)
            try:
                request.unregisterProducer()
                request.finish()
            except Exception:
                pass
        self._stop()


# -- the control socket's /v1/web --------------------------------------------------


class WebResource(JSONResource):
    """
    C{/v1/web} on the control socket: C{GET} the dashboard's status,
    C{GET /v1/web/login} the URL that logs a browser in (C{beam
    dashboard}); the socket is the owner's only, so it may hand out the
    token.
    """

    def __init__(self, web: WebService) -> None:
        super().__init__()
        self.web = web
        self.putChild(b"login", _Login(web))

    def json_GET(self, request: Request) -> Any:
        return self.web.status()


class _Login(JSONResource):
    def __init__(self, web: WebService) -> None:
        super().__init__()
        self.web = web

    def json_GET(self, request: Request) -> Any:
        return {"url": self.web.loginURL(), "dashboard": self.web.url}
