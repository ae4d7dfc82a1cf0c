"""
The local control API: HTTP and JSON over a UNIX socket in the node's home.

A running node listens on C{<home>/control.sock}; the C{beam} command line
(and anyone with C{curl --unix-socket}) uses it to add and remove tunnels and
forwards and to ask for status, instead of starting a second node::

    curl --unix-socket ~/.local/share/beam/control.sock http://beam/v1/status

Why a UNIX socket: file permissions are the access control.  The socket is
created with mode 0600 (under a umask of 0o177, so it is never more open,
not even for the instant between C{bind()} and C{chmod()}) inside the 0700
home directory, so only the node's owner can connect; no token is needed.

Routes (request and response bodies are JSON objects)::

    GET    /v1/status                  -> api.status()
    POST   /v1/tunnels                 -> api.addTunnel(...)   201
           {port, name?, udp?, compress?, allow?: [peer id], secret?: bool | str}
    DELETE /v1/tunnels/<name-or-port>  -> api.removeTunnel(key)
    POST   /v1/forwards                -> api.addForward(...)  201
           {target, port?, bind?, service?, compress?}
    DELETE /v1/forwards/<name-or-port> -> api.removeForward(key)
    GET    /v1/network/peers           -> api.peers()
    POST   /v1/shutdown                -> api.shutdown()

Failures answer C{{"error": "..."}}: 400 for malformed JSON or fields and
for any other L{BeamError}, 404 for unknown routes and L{NotFound}, 405 for a
known route with the wrong method, 409 for L{Conflict}, 413 for oversized
bodies, and 500 (with the traceback logged, never sent) for bugs.

A second daemon for the same home is refused: the listener takes Twisted's
PID lock file (C{control.sock.lock}), and a socket left behind by a crashed
daemon (its lock is stale and connecting to it is refused) is replaced.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import socket
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from twisted.application.service import Service
from twisted.internet import error as netError
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.endpoints import UNIXClientEndpoint, UNIXServerEndpoint
from twisted.internet.interfaces import IConsumer, IListeningPort, IStreamClientEndpoint
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python import lockfile
from twisted.python.failure import Failure
from twisted.web.client import Agent, ResponseDone, ResponseNeverReceived
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import Interface, implementer

from beam.errors import BeamError, Conflict, InvalidPeerID, NotFound
from beam.identity.keys import PeerID

CONTROL_SOCKET = "control.sock"
MAX_BODY = 64 * 1024
MAX_RESPONSE = 16 * 1024 * 1024
# sun_path is 108 bytes on Linux and 104 on the BSDs, NUL included.
_MAX_SOCKET_PATH = 107 if sys.platform.startswith("linux") else 103


class ControlSocketError(BeamError):
    """
    The control socket cannot be set up.
    """


class NodeAlreadyRunning(ControlSocketError):
    """
    Another Beam node is already running for this home directory.
    """


class NoNodeRunning(BeamError):
    """
    No Beam node is running; start one with `beam daemon` or `beam PORT`.
    """


class ControlError(BeamError):
    """
    The running node refused the request.

    @ivar status: the HTTP status code the node answered with (0 when it
        did not answer at all).
    """

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


def controlSocketPath(home: Path | str) -> Path:
    """
    Where the control socket of the node with this home lives.
    """
    return Path(home) / CONTROL_SOCKET


class IControlAPI(Interface):
    """
    What the running node offers its control socket.

    Every method returns a JSON-able C{dict} or a L{Deferred} firing with
    one.  User errors are raised (or errbacked) as L{BeamError}s whose text
    is shown to the user: L{NotFound} becomes 404, L{Conflict} 409, any
    other L{BeamError} 400.  Arguments have already been type-checked.
    """

    def status() -> Any:
        """
        The node's peer ID, addresses, tunnels, forwards and connections.
        """

    def addTunnel(
        port: int,
        name: str | None,
        udp: bool,
        compress: bool,
        allow: list[PeerID] | None,
        secret: bool | str,
    ) -> Any:
        """
        Expose local C{port} to peers.  C{allow} L{None} means no allow
        list; C{secret} C{True} asks the node to generate one, a string is
        the secret to use.  The result should include the share address.
        """

    def removeTunnel(key: str) -> Any:
        """
        Stop exposing the tunnel named C{key} (or on port C{key}).
        """

    def addForward(
        target: str,
        port: int | None,
        bind: str | None,
        service: str | None,
        compress: bool,
        udp: bool,
    ) -> Any:
        """
        Listen locally and forward to C{target} (a share address or a
        multiaddr with C{/p2p/}); L{None} means the node's default.
        C{udp} forwards datagrams instead of TCP connections.
        """

    def removeForward(key: str) -> Any:
        """
        Stop the forward named C{key} (or listening on local port C{key}).
        """

    def peers() -> Any:
        """
        The connected peers.
        """

    def registerName(name: str, services: list[str]) -> Any:
        """
        Publish a signed name record for this node (and keep republishing it).
        """

    def withdrawName(name: str) -> Any:
        """
        Stop publishing C{name} and publish a short-lived empty record.
        """

    def resolveName(name: str, acceptNewKey: bool) -> Any:
        """
        Resolve C{name}: which peer, which addresses, how it was found.
        """

    def networkStatus() -> Any:
        """
        Peer ID, listen and observed addresses, DHT mode, routing-table size,
        records held.
        """

    def networkRoutes() -> Any:
        """
        The DHT routing table by bucket.
        """

    def networkBootstrap(addrs: list[str]) -> Any:
        """
        Join the DHT through C{addrs} (or the saved routing table and
        configured bootstrap peers when empty).
        """

    def shutdown() -> Any:
        """
        Stop the node.  The implementation must not stop the reactor before
        returning (schedule it, e.g. with C{reactor.callLater(0, ...)}), so
        the answer still reaches the caller.
        """


# -- request validation -----------------------------------------------------


class _BadRequest(BeamError):
    """
    The request is malformed.
    """


class _TooLarge(BeamError):
    """
    The request body is too large.
    """


_MISSING = object()


def _field(body: dict[str, Any], name: str, kinds: tuple[type, ...], default: Any = _MISSING) -> Any:
    value = body.get(name, _MISSING)
    if value is _MISSING or (value is None and default is not _MISSING):
        if default is _MISSING:
            raise _BadRequest(f"missing field {name!r}")
        return default
    # bool is an int subclass: a port of `true` is a mistake, not port 1.
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join({"str": "a string", "int": "an integer", "bool": "a boolean",
                             "list": "a list"}[k.__name__] for k in kinds)
        raise _BadRequest(f"field {name!r} must be {names}")
    return value


def _checkUnknown(body: dict[str, Any], known: set[str]) -> None:
    unknown = sorted(set(body) - known)
    if unknown:
        raise _BadRequest(f"unknown field(s): {', '.join(unknown)}")


def _port(body: dict[str, Any], name: str, required: bool) -> int | None:
    value = _field(body, name, (int,)) if required else _field(body, name, (int,), None)
    if value is not None and not 1 <= value <= 65535:
        raise _BadRequest(f"field {name!r} must be a port number between 1 and 65535")
    return value  # type: ignore[no-any-return]


def _tunnelArgs(body: dict[str, Any]) -> dict[str, Any]:
    _checkUnknown(body, {"port", "name", "udp", "compress", "allow", "secret"})
    allow = _field(body, "allow", (list,), None)
    peers: list[PeerID] | None = None
    if allow is not None:
        peers = []
        for entry in allow:
            if not isinstance(entry, str):
                raise _BadRequest("field 'allow' must be a list of peer IDs")
            try:
                peers.append(PeerID.fromString(entry))
            except InvalidPeerID as e:
                raise _BadRequest(f"field 'allow': {e}") from None
    name = _field(body, "name", (str,), None)
    if name is not None and not name:
        raise _BadRequest("field 'name' must not be empty")
    return {
        "port": _port(body, "port", required=True),
        "name": name,
        "udp": _field(body, "udp", (bool,), False),
        "compress": _field(body, "compress", (bool,), False),
        "allow": peers,
        "secret": _field(body, "secret", (bool, str), False),
    }


def _forwardArgs(body: dict[str, Any]) -> dict[str, Any]:
    _checkUnknown(body, {"target", "port", "bind", "service", "compress", "udp"})
    target = _field(body, "target", (str,))
    if not target.strip():
        raise _BadRequest("field 'target' must not be empty")
    bind = _field(body, "bind", (str,), None)
    if bind is not None:
        try:
            ipaddress.ip_address(bind)
        except ValueError:
            raise _BadRequest(f"field 'bind' must be an IP address, not {bind!r}") from None
    return {
        "target": target,
        "port": _port(body, "port", required=False),
        "bind": bind,
        "service": _field(body, "service", (str,), None),
        "compress": _field(body, "compress", (bool,), False),
        "udp": _field(body, "udp", (bool,), False),
    }


def _nameArgs(body: dict[str, Any]) -> dict[str, Any]:
    _checkUnknown(body, {"name", "services"})
    name = _field(body, "name", (str,))
    services = _field(body, "services", (list,), [])
    if not all(isinstance(s, str) for s in services):
        raise _BadRequest("field 'services' must be a list of service names")
    return {"name": name, "services": services}


def _bootstrapArgs(body: dict[str, Any]) -> dict[str, Any]:
    _checkUnknown(body, {"addrs"})
    addrs = _field(body, "addrs", (list,), [])
    if not all(isinstance(a, str) for a in addrs):
        raise _BadRequest("field 'addrs' must be a list of multiaddrs")
    return {"addrs": addrs}


def _flag(request: Request, name: bytes) -> bool:
    values = (request.args or {}).get(name, [])
    return bool(values) and values[-1] in (b"1", b"true", b"yes")


def _parseBody(request: Request) -> dict[str, Any]:
    raw = request.content.read(MAX_BODY + 1) if request.content is not None else b""
    if len(raw) > MAX_BODY:
        raise _TooLarge(f"request body larger than {MAX_BODY} bytes")
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise _BadRequest(f"malformed JSON: {e}") from None
    if not isinstance(body, dict):
        raise _BadRequest("the request body must be a JSON object")
    return body


# -- the HTTP resource ---------------------------------------------------------


class ControlResource(Resource):
    """
    Dispatches every request under C{/v1/} to the L{IControlAPI}.

    It is a leaf: routes are matched on the whole path here, in one table,
    rather than spread over a tree of child resources.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, api: IControlAPI) -> None:
        super().__init__()
        self.api = api

    def _routes(self, path: list[str]) -> dict[bytes, Callable[[Request], Any]] | None:
        api = self.api
        if path == ["v1", "status"]:
            return {b"GET": lambda r: api.status()}
        if path == ["v1", "network", "peers"]:
            return {b"GET": lambda r: api.peers()}
        if path == ["v1", "shutdown"]:
            return {b"POST": lambda r: api.shutdown()}
        if path == ["v1", "tunnels"]:
            return {b"POST": lambda r: api.addTunnel(**_tunnelArgs(_parseBody(r)))}
        if path == ["v1", "forwards"]:
            return {b"POST": lambda r: api.addForward(**_forwardArgs(_parseBody(r)))}
        if len(path) == 3 and path[:2] == ["v1", "tunnels"] and path[2]:
            return {b"DELETE": lambda r: api.removeTunnel(path[2])}
        if len(path) == 3 and path[:2] == ["v1", "forwards"] and path[2]:
            return {b"DELETE": lambda r: api.removeForward(path[2])}
        if path == ["v1", "names"]:
            return {b"POST": lambda r: api.registerName(**_nameArgs(_parseBody(r)))}
        if len(path) == 3 and path[:2] == ["v1", "names"] and path[2]:
            return {b"DELETE": lambda r: api.withdrawName(path[2])}
        if len(path) == 3 and path[:2] == ["v1", "resolve"] and path[2]:
            return {b"GET": lambda r: api.resolveName(path[2], _flag(r, b"accept_new_key"))}
        if path == ["v1", "network", "status"]:
            return {b"GET": lambda r: api.networkStatus()}
        if path == ["v1", "network", "routes"]:
            return {b"GET": lambda r: api.networkRoutes()}
        if path == ["v1", "network", "bootstrap"]:
            return {b"POST": lambda r: api.networkBootstrap(**_bootstrapArgs(_parseBody(r)))}
        return None

    def render(self, request: Request) -> Any:
        try:
            path = [unquote(seg.decode("utf-8", "strict")) for seg in request.postpath or ()]
        except UnicodeDecodeError:
            path = []
        while path and path[-1] == "":
            path.pop()
        routes = self._routes(path)
        if routes is None:
            return self._respond(request, 404, {"error": f"no such endpoint: {request.path.decode('latin-1')}"})
        method = request.method
        handler = routes.get(method)
        if handler is None:
            request.setHeader(b"allow", b", ".join(sorted(routes)))
            return self._respond(request, 405, {"error": f"{method.decode('latin-1')} is not allowed here; use {', '.join(m.decode() for m in sorted(routes))}"})
        success = 201 if method == b"POST" and path[-1] in ("tunnels", "forwards", "names") else 200
        finished = [False]
        request.notifyFinish().addBoth(lambda _: finished.__setitem__(0, True))

        def answer(result: Any) -> None:
            if finished[0]:
                return
            code, body = success, result
            if isinstance(result, Failure):
                code, body = self._failureBody(request, result)
            elif not isinstance(result, dict):
                self.log.error("control API returned {result!r}, not a dict", result=result)
                code, body = 500, {"error": "internal error; see the node's log"}
            try:
                encoded = self._encode(body)
            except (TypeError, ValueError):
                self.log.failure("control API result is not JSON-able")
                code, encoded = 500, self._encode({"error": "internal error; see the node's log"})
            self._write(request, code, encoded)

        maybeDeferred(handler, request).addBoth(answer).addErrback(
            lambda f: self.log.failure("answering a control request failed", f)
        )
        return NOT_DONE_YET

    def _failureBody(self, request: Request, failure: Failure) -> tuple[int, dict[str, Any]]:
        err = failure.value
        if isinstance(err, _TooLarge):
            return 413, {"error": str(err)}
        if isinstance(err, NotFound):
            return 404, {"error": str(err)}
        if isinstance(err, Conflict):
            return 409, {"error": str(err)}
        if isinstance(err, BeamError):
            return 400, {"error": str(err)}
        self.log.failure(
            "control request {method} {path} failed", failure,
            method=request.method.decode("latin-1"), path=request.path.decode("latin-1"),
        )
        return 500, {"error": "internal error; see the node's log"}

    @staticmethod
    def _encode(body: dict[str, Any]) -> bytes:
        return (json.dumps(body, allow_nan=False) + "\n").encode("utf-8")

    def _respond(self, request: Request, code: int, body: dict[str, Any]) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json")
        return self._encode(body)

    @staticmethod
    def _write(request: Request, code: int, encoded: bytes) -> None:
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json")
        request.write(encoded)
        request.finish()


class _QuietSite(Site):
    """
    A L{Site} without an access log: the operations are logged by the node
    itself, and a status poll every second should not flood the log.
    """

    noisy = False

    def log(self, request: Any) -> None:
        pass


# -- the service ----------------------------------------------------------------


def _checkStaleSocket(path: Path) -> None:
    """
    Make way for our socket: refuse if a node is answering on C{path},
    remove it if it is a crashed node's leftover.

    @raise NodeAlreadyRunning: a node answers, or holds the PID lock.
    @raise ControlSocketError: C{path} exists and is not a socket.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ControlSocketError(f"{path} exists and is not a socket; remove it if no Beam node uses it")
    if _canConnect(path):
        raise NodeAlreadyRunning(f"a Beam node is already running for {path.parent}")
    # Refused: either a crashed node's socket, or a node between bind() and
    # listen() right now; the second still holds a live PID lock.
    if lockfile.isLocked(str(path) + ".lock"):
        raise NodeAlreadyRunning(f"a Beam node is already running for {path.parent}")
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _canConnect(path: Path, timeout: float = 2.0) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        s.connect(os.fsencode(path))
    except OSError:
        return False
    finally:
        s.close()
    return True


def nodeRunning(home: Path | str) -> bool:
    """
    Whether a node is answering on C{home}'s control socket.  Blocking (it
    only connects to a local socket); meant for the command line to choose
    between talking to the running node and starting one in the foreground.
    """
    return _canConnect(controlSocketPath(home))


class ControlService(Service):
    """
    Serves the L{IControlAPI} on C{<home>/control.sock} while running.

    @ivar socketPath: the socket's path.
    @ivar port: the listening port while running.
    """

    log = Logger()
    name = "control"  # type: ignore[assignment]

    def __init__(self, reactor: Any, home: Path | str, api: IControlAPI) -> None:
        self.reactor = reactor
        self.home = Path(home)
        self.socketPath = controlSocketPath(self.home)
        self.api = api
        self.port: IListeningPort | None = None

    def startService(self) -> Deferred[None]:  # type: ignore[override]
        """
        Start listening.  The returned L{Deferred} fails with
        L{NodeAlreadyRunning} when another node serves this home, or
        L{ControlSocketError} when the socket cannot be created safely.
        """
        super().startService()
        try:
            self._prepare()
        except BeamError as e:
            self.running = False
            return fail(e)
        return self._listen()

    def _prepare(self) -> None:
        if len(os.fsencode(self.socketPath)) > _MAX_SOCKET_PATH:
            raise ControlSocketError(
                f"the control socket path {self.socketPath} is too long for a UNIX socket; "
                "use a shorter home directory"
            )
        try:
            self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            raise ControlSocketError(f"cannot create {self.home}: {e.strerror}") from None
        _checkStaleSocket(self.socketPath)

    def _listen(self) -> Deferred[None]:
        endpoint = UNIXServerEndpoint(self.reactor, str(self.socketPath), mode=0o600, wantPID=True)
        site = _QuietSite(ControlResource(self.api), timeout=60)
        # listenUNIX binds synchronously inside listen(), so the umask only
        # needs to cover this call.  The umask is process-wide; Beam creates
        # no files from other threads.
        old = os.umask(0o177)
        try:
            d = endpoint.listen(site)
        finally:
            os.umask(old)
        return d.addCallbacks(self._listening, self._listenFailed)

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
        mode = stat.S_IMODE(os.stat(self.socketPath).st_mode)
        if mode & 0o077:
            port.stopListening()
            self.port = None
            self.running = False
            raise ControlSocketError(f"{self.socketPath} was created with mode {mode:o}, not 600")
        if not self.running:  # stopService ran while we were starting
            self.port = None
            port.stopListening()
            return
        self.log.info("control API listening on {path}", path=str(self.socketPath))

    def _listenFailed(self, failure: Failure) -> Failure:
        self.running = False
        failure.trap(netError.CannotListenError)
        reason = failure.value.socketError
        if "Cannot acquire lock" in str(reason):
            return Failure(NodeAlreadyRunning(f"a Beam node is already running for {self.home}"))
        # Twisted keeps the PID lock it took when bind() then fails; it is
        # ours (a live holder would have failed the lock), so release it.
        lock = str(self.socketPath) + ".lock"
        try:
            if os.readlink(lock) == str(os.getpid()):
                os.remove(lock)
        except OSError:
            pass
        text = getattr(reason, "strerror", None) or str(reason)
        if getattr(reason, "errno", None) == errno.EADDRINUSE:
            return Failure(NodeAlreadyRunning(f"a Beam node is already running for {self.home}"))
        return Failure(ControlSocketError(f"cannot listen on {self.socketPath}: {text}"))

    def stopService(self) -> Deferred[None]:  # type: ignore[override]
        """
        Stop listening; the socket file and its lock are removed.
        """
        super().stopService()
        port, self.port = self.port, None
        if port is None:
            return succeed(None)
        return maybeDeferred(port.stopListening).addCallback(lambda _: None)


# -- the client -------------------------------------------------------------------


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
                self.transport.stopProducing()
            return
        self.data += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.tooLarge:
            self.done.errback(ControlError(f"the node's answer is larger than {self.limit} bytes"))
        elif reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(bytes(self.data))
        else:
            self.done.errback(ControlError(f"the node's answer was cut off: {reason.getErrorMessage()}"))
