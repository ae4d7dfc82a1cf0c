"""
The control socket: HTTP and JSON over a UNIX socket in the node's home.

A running node listens on C{<home>/control.sock}; the C{beam} command line
(and anyone with C{curl --unix-socket}) uses it to add and remove tunnels and
forwards and to ask for status, instead of starting a second node::

    curl --unix-socket ~/.local/share/beam/control.sock http://beam/v1/status

Why a UNIX socket: file permissions are the access control.  The socket is
created with mode 0600 (under a umask of 0o177, so it is never more open,
not even for the instant between C{bind()} and C{chmod()}) inside the home
directory, which Beam creates 0700 and otherwise requires to be the owner's
and not writable by others, so only the node's owner can connect; no token
is needed.

What it serves is a C{twisted.web} resource tree (L{beam.daemon.control.resource}
builds the daemon's); this module only owns the socket.

A second daemon for the same home is refused: the listener takes Twisted's
PID lock file (C{control.sock.lock}), and a socket left behind by a crashed
daemon (its lock is stale and connecting to it is refused) is replaced.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from twisted.application.service import Service
from twisted.internet import error as netError
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.endpoints import UNIXServerEndpoint
from twisted.internet.interfaces import IAddress, IListeningPort
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python import lockfile
from twisted.python.failure import Failure
from twisted.web.resource import IResource

from beam.errors import BeamError
from beam.statemachine import Readiness
from beam.storage.fileutil import UnsafePath, ensurePrivateDirectory

if TYPE_CHECKING:
    # The control socket imports the HTTP server when it first serves.
    from twisted.web.server import Site

__all__ = [
    "CONTROL_SOCKET",
    "ControlService",
    "ControlSocketError",
    "NoNodeRunning",
    "NodeAlreadyRunning",
    "controlSocketPath",
    "nodeRunning",
]

CONTROL_SOCKET = "control.sock"
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


def controlSocketPath(home: Path | str) -> Path:
    """
    Where the control socket of the node with this home lives.
    """
    return Path(home) / CONTROL_SOCKET


def _quietSite(resource: IResource) -> Site:
    """
    A L{Site<twisted.web.server.Site>} serving C{resource}, without an
    access log: the operations are logged by the node itself, and a status
    poll every second should not flood the log.
    """
    from twisted.web.server import Site

    class _QuietSite(Site):
        noisy = False

        def log(self, request: Any) -> None:
            pass

    return _QuietSite(resource, timeout=60)


class LazySite(Factory):
    """
    A factory that builds its L{Site<twisted.web.server.Site>} with C{make}
    (and so imports C{twisted.web.server}, a few MiB that a tunnel command
    otherwise never uses) when the first client connects, then hands every
    connection to it: the control socket's and the dashboard's
    (L{beam.daemon.web}).
    """

    noisy = False

    def __init__(self, make: Callable[[], Site]) -> None:
        self.make = make
        self.site: Site | None = None

    def buildProtocol(self, addr: Optional[IAddress]) -> Any:
        if self.site is None:
            self.site = self.make()
            self.site.doStart()
        return self.site.buildProtocol(addr)

    def stopFactory(self) -> None:
        site, self.site = self.site, None
        if site is not None:
            site.doStop()


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
    Serves C{resource} on C{<home>/control.sock} while running.

    @ivar socketPath: the socket's path.
    @ivar port: the listening port while running.
    """

    log = Logger()
    name = "control"  # type: ignore[assignment]

    def __init__(self, reactor: Any, home: Path | str, resource: IResource) -> None:
        """
        @param resource: the root of what to serve (requests for
            C{http://beam/v1/status} reach its child C{v1}, then C{status}).
        """
        self.reactor = reactor
        self.home = Path(home)
        self.socketPath = controlSocketPath(self.home)
        self.resource = resource
        self.port: IListeningPort | None = None
        self._readiness = Readiness()

    def startService(self) -> Deferred[None]:
        """
        Start listening.  The returned L{Deferred} (and L{whenListening})
        fails with L{NodeAlreadyRunning} when another node serves this
        home, or L{ControlSocketError} when the socket cannot be created
        safely.  Binding a UNIX socket is synchronous, so the outcome is
        known when this returns (L{startFailure}): a parent can stop
        before starting anything else.
        """
        if self.running:
            # Started early by its parent (see BeamDaemon.startService),
            # then again by MultiService.startService.
            return self.whenListening()
        super().startService()
        try:
            self._prepare()
        except BeamError as e:
            self.running = False
            return self._readiness.begin(fail(e))
        return self._readiness.begin(self._listen())

    def whenListening(self) -> Deferred[None]:
        """
        The outcome of the last start (see L{Readiness}).
        """
        return self._readiness.when()

    def startFailure(self) -> Optional[BaseException]:
        """
        Why the last start failed, if it failed already.
        """
        result: list[BaseException] = []
        self.whenListening().addErrback(lambda f: result.append(f.value))
        return result[0] if result else None

    def _prepare(self) -> None:
        if len(os.fsencode(self.socketPath)) > _MAX_SOCKET_PATH:
            raise ControlSocketError(
                f"the control socket path {self.socketPath} is too long for a UNIX socket; "
                "use a shorter home directory"
            )
        try:
            # Creates a new home 0700; refuses (never chmods) an existing
            # one that another user owns or can write to.
            ensurePrivateDirectory(self.home, "home directory")
        except UnsafePath as e:
            raise ControlSocketError(str(e)) from None
        except OSError as e:
            raise ControlSocketError(f"cannot create {self.home}: {e.strerror}") from None
        _checkStaleSocket(self.socketPath)

    def _listen(self) -> Deferred[None]:
        endpoint = UNIXServerEndpoint(self.reactor, str(self.socketPath), mode=0o600, wantPID=True)
        resource = self.resource
        site = LazySite(lambda: _quietSite(resource))
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

    def stopService(self) -> Deferred[None]:
        """
        Stop listening; the socket file and its lock are removed.
        """
        super().stopService()
        port, self.port = self.port, None
        if port is None:
            return succeed(None)
        return maybeDeferred(port.stopListening).addCallback(lambda _: None)
