"""
The C{"tor"} service: runs (or attaches to) tor and publishes the node's
onion service.

Modes (C{[tor] mode}, C{config.tor.mode}):

  - C{"off"}: the service exists and does nothing;
  - C{"fallback"}: the node keeps its TCP transport; this service starts
    tor, publishes C{/onion3/<ours>:<port>} as one more listen address
    and lets the L{TorTransport<beam.p2p.transport.tor.TorTransport>}
    dial onion addresses.  If tor fails the node runs on without it;
  - C{"always"}: the node's only transport is Tor's (the daemon builds it
    so); a failure here fails the daemon's start.

What happens on start, each step bounded by C{bootstrapTimeout} counted
from the start (L{TorService._run}):

  1. B{launch} our own tor (C{txtorcon.launch}: DataDirectory
     C{<home>/tor/data}, the configured binary and extra torrc options) or
     B{attach} to a running one (C{txtorcon.connect} on C{[tor] control});
  2. wait until tor has bootstrapped (100 %) and built a circuit, showing
     its progress in L{status} and the log;
  3. open the local target the onion service points at (a UNIX socket
     C{<home>/tor/onion.sock} for a tor we launched, else
     C{127.0.0.1:<random port>}: a system tor runs as another user);
  4. create the v3 onion service with our key (C{<home>/tor/onion_v3_key},
     0600, written atomically; made by tor on the first run and kept, so
     the address survives restarts) and wait for its descriptor upload.
     Right after bootstrap an upload may stall for minutes; the service is
     then removed and created again, with a growing wait;
  5. make the node listen on the onion address.

Stopping removes the onion service, closes the target, and ends a tor we
launched (SIGTERM through txtorcon, then SIGKILL if it has not exited
within C{killAfter}: tor can deadlock on SIGTERM).  A tor we attached to
keeps running; only our (ephemeral) onion service goes.

txtorcon is imported only when a mode other than C{"off"} starts.
"""

from __future__ import annotations

import os
import re
import shutil
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Optional

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks, maybeDeferred, succeed
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import IReactorCore, IReactorProcess, IReactorTCP, IReactorTime, IReactorUNIX
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from beam.errors import TorError, describe
from beam.identity.multiaddr import Multiaddr
from beam.statemachine import IGNORE, ILLEGAL, Readiness, StateMachine
from beam.storage.fileutil import atomicWrite

__all__ = ["TorService", "TorState", "controlEndpointString"]

#: The longest path a UNIX socket may have on Linux (108 with the NUL);
#: a home deeper than that gets a loopback TCP target instead.
_MAX_UNIX_PATH = 100


class TorState(Enum):
    OFF = "off"
    STOPPED = "stopped"
    #: Launching tor, or connecting to its control port.
    STARTING = "starting"
    #: Tor runs and is bootstrapping.
    BOOTSTRAPPING = "bootstrapping"
    #: Creating the onion service and waiting for its descriptor upload.
    PUBLISHING = "publishing"
    READY = "ready"
    FAILED = "failed"


class TorInput(Enum):
    START = "start"
    #: We talk to tor (first bootstrap event of a launched tor; attached).
    CONNECTED = "connected"
    BOOTSTRAPPED = "bootstrapped"
    PUBLISHED = "published"
    FAIL = "fail"
    STOP = "stop"


def _table() -> dict[tuple[TorState, TorInput], Any]:
    S, I = TorState, TorInput  # noqa: E741
    t: dict[tuple[TorState, TorInput], Any] = {}
    for i in I:
        t[S.OFF, i] = IGNORE
        # Late events of a run that was stopped or failed are ignored.
        t[S.STOPPED, i] = IGNORE
        t[S.FAILED, i] = IGNORE
    t[S.STOPPED, I.START] = S.STARTING
    t[S.FAILED, I.START] = ILLEGAL
    t[S.FAILED, I.STOP] = S.STOPPED
    for s in (S.STARTING, S.BOOTSTRAPPING, S.PUBLISHING, S.READY):
        t[s, I.START] = ILLEGAL
        t[s, I.FAIL] = S.FAILED
        t[s, I.STOP] = S.STOPPED
    t[S.STARTING, I.CONNECTED] = S.BOOTSTRAPPING
    t[S.STARTING, I.BOOTSTRAPPED] = S.PUBLISHING
    t[S.STARTING, I.PUBLISHED] = ILLEGAL
    t[S.BOOTSTRAPPING, I.CONNECTED] = IGNORE
    t[S.BOOTSTRAPPING, I.BOOTSTRAPPED] = S.PUBLISHING
    t[S.BOOTSTRAPPING, I.PUBLISHED] = ILLEGAL
    t[S.PUBLISHING, I.CONNECTED] = IGNORE
    t[S.PUBLISHING, I.BOOTSTRAPPED] = IGNORE
    t[S.PUBLISHING, I.PUBLISHED] = S.READY
    t[S.READY, I.CONNECTED] = IGNORE
    t[S.READY, I.BOOTSTRAPPED] = IGNORE
    t[S.READY, I.PUBLISHED] = IGNORE
    return t


TOR_MACHINE = StateMachine("tor", TorState, TorInput, _table())


def controlEndpointString(control: str) -> str:
    """
    A Twisted client endpoint string for a tor control port given as
    C{unix:/path}, C{unix:path=/path}, C{tcp:host=H:port=P}, C{H:P} or
    C{P}.
    """
    control = control.strip()
    if control.isdigit():
        return f"tcp:host=127.0.0.1:port={control}"
    if control.startswith(("unix:", "tcp:", "tcp6:")):
        return control
    host, sep, port = control.rpartition(":")
    if sep and port.isdigit():
        host = host.strip("[]")
        return f"tcp:host={host.replace(':', chr(92) + ':')}:port={port}"
    return control


def _bootstrapPhase(text: str) -> tuple[int, str]:
    """
    Progress and summary from C{GETINFO status/bootstrap-phase}
    (C{NOTICE BOOTSTRAP PROGRESS=100 TAG=done SUMMARY="Done"}).
    """
    progress = re.search(r"PROGRESS=(\d+)", text)
    summary = re.search(r'SUMMARY="((?:[^"\\]|\\.)*)"', text)
    return (int(progress.group(1)) if progress else 0, summary.group(1) if summary else "")


#: Seconds a launched tor's control socket has to appear once tor said it
#: opens it.
CONTROL_CONNECT_WAIT = 15.0


@inlineCallbacks
def _retryConnect(clock: IReactorTime, connect: Callable[[], Deferred[Any]], wait: float,
                  step: float = 0.1) -> Any:
    """
    C{connect()}, again every C{step} seconds while it fails with a
    L{ConnectError} (the socket does not exist yet, or nothing listens on
    it yet), for at most C{wait} seconds.
    """
    deadline = clock.seconds() + wait
    while True:
        try:
            result = yield connect()
        except ConnectError:
            if clock.seconds() + step > deadline:
                raise
            yield deferLater(clock, step, lambda: None)
            continue
        return result


def _cancelPending(d: Deferred[Any]) -> None:
    if not d.called:
        d.cancel()


def _firePending(d: Deferred[None]) -> None:
    if not d.called:
        d.callback(None)


def _findTor() -> Optional[str]:
    found = shutil.which("tor")
    if found is not None:
        return found
    return "/usr/sbin/tor" if os.path.exists("/usr/sbin/tor") else None


@implementer(IReactorCore, IReactorTime, IReactorProcess, IReactorTCP, IReactorUNIX)
class _SpawnRecorder:
    """
    The reactor as C{txtorcon.launch} sees it: everything is the real
    reactor's, but the processes it spawns are remembered.  launch() gives
    us its tor only once tor has bootstrapped; stopping before that (or a
    launch that failed half-way) must still end that process, by PID.
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self.processes: list[Any] = []

    def spawnProcess(self, *args: Any, **kwargs: Any) -> Any:
        process = self._reactor.spawnProcess(*args, **kwargs)
        self.processes.append(process)
        return process

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)


class _LogLines:
    """
    A file-like sink for a launched tor's stdout/stderr: each line goes to
    our log (debug: tor's own notices are chatty).
    """

    def __init__(self, log: Logger, stream: str) -> None:
        self._log = log
        self._stream = stream

    def write(self, data: Any) -> None:
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
        for line in text.splitlines():
            if line.strip():
                self._log.debug("tor {stream}: {line}", stream=self._stream, line=line)


class TorService(Service):
    """
    See the module docstring.

    @ivar state: a L{TorState}.
    @ivar transport: the node's L{TorTransport<beam.p2p.transport.tor.TorTransport>}
        (L{None} in mode C{"off"}).
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        host: Any,
        home: Path | str,
        config: Any,
        *,
        launch: Optional[Callable[..., Any]] = None,
        connect: Optional[Callable[..., Any]] = None,
        uploadStall: float = 60.0,
        pollInterval: float = 1.0,
        killAfter: float = 5.0,
    ) -> None:
        """
        @param config: the node's C{TorConfig} (C{mode}, C{control},
            C{binary}, C{dataDir}, C{port}, C{options},
            C{bootstrapTimeout}), or L{None} for mode C{"off"}.
        @param launch: C{txtorcon.launch} (tests give a fake).
        @param connect: C{txtorcon.connect} (tests give a fake).
        @param uploadStall: seconds to wait for the first descriptor upload
            before creating the onion service again; doubled each time.
        @param pollInterval: seconds between questions to tor while
            waiting for it to bootstrap.
        @param killAfter: seconds a launched tor gets to exit on SIGTERM
            before SIGKILL; also the bound of each step of stopping.
        """
        self.reactor = reactor
        self.host = host
        self.home = Path(home)
        self.mode: str = getattr(config, "mode", "off") if config is not None else "off"
        self.control: Optional[str] = getattr(config, "control", None)
        self.binary: Optional[str] = getattr(config, "binary", None)
        dataDir = getattr(config, "dataDir", None)
        self.dataDir = Path(dataDir) if dataDir else self.home / "tor" / "data"
        self.port: int = int(getattr(config, "port", 4001))
        self.options: tuple[tuple[str, tuple[str, ...]], ...] = tuple(getattr(config, "options", ()) or ())
        self.bootstrapTimeout: float = float(getattr(config, "bootstrapTimeout", 300.0))
        self._launch = launch
        self._connect = connect
        self.uploadStall = uploadStall
        self.pollInterval = pollInterval
        self.killAfter = killAfter
        self.state = TorState.OFF if self.mode == "off" else TorState.STOPPED
        self.progress = 0
        self.summary = ""
        self.error: Optional[str] = None
        self.socks: Optional[str] = None
        self.onion: Optional[Multiaddr] = None
        self.launched = False
        self.tor: Any = None
        self._onionService: Any = None
        self._spawns: Optional[_SpawnRecorder] = None
        self._deadline = 0.0
        self._running: Optional[Deferred[None]] = None
        self._readiness = Readiness()
        self.transport: Any = None
        if self.mode != "off":
            self.transport = self._findTransport()

    @property
    def keyPath(self) -> Path:
        """
        Where the onion service's key is kept.
        """
        return self.home / "tor" / "onion_v3_key"

    def _findTransport(self) -> Any:
        from beam.p2p.transport.tor import TorTransport

        transports = getattr(self.host, "transports", None)
        if transports is not None:
            for t in transports:
                if isinstance(t, TorTransport):
                    return t
        transport = TorTransport(self.reactor, self.mode)
        if transports is not None:
            transports.append(transport)
        return transport

    # -- state -------------------------------------------------------------

    def _move(self, event: TorInput) -> Any:
        outcome = TOR_MACHINE.next(self.state, event)
        if isinstance(outcome, TorState):
            self.state = outcome
        return outcome

    def _live(self) -> bool:
        return self.state in (TorState.STARTING, TorState.BOOTSTRAPPING, TorState.PUBLISHING)

    def status(self) -> dict[str, Any]:
        """
        The C{"tor"} section of C{beam status --json}.
        """
        if self.mode == "off":
            return {"mode": "off", "state": "off"}
        connections = 0
        live = getattr(self.host, "liveConnections", None)
        if callable(live):
            connections = sum(1 for c in live() if getattr(c, "transport", None) == "tor")
        return {
            "mode": self.mode,
            "state": self.state.value,
            "progress": self.progress,
            "summary": self.summary,
            "launched": self.launched,
            "control": self.control,
            "socks": self.socks,
            "onion": str(self.onion) if self.onion is not None else None,
            "error": self.error,
            "connections": connections,
        }

    def whenReady(self) -> Deferred[None]:
        """
        Fires once the onion service is published (at once in mode
        C{"off"}), or fails with L{TorError} saying why not.
        """
        if self.mode == "off":
            return succeed(None)
        d: Deferred[None] = self._readiness.when()
        return d

    # -- lifecycle -----------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        if self.mode == "off":
            return
        self._move(TorInput.START)
        self.progress = 0
        self.summary = "starting tor" if self.control is None else f"connecting to tor at {self.control}"
        self.error = None
        self._deadline = self.reactor.seconds() + self.bootstrapTimeout
        self.transport.setStarting("Tor is still starting")
        self._running = self._run()
        self._readiness.begin(self._running)

    @inlineCallbacks
    def _run(self) -> Any:
        try:
            if self.control is None:
                tor = yield self._launchTor()
            else:
                tor = yield self._attachTor()
            self.tor = tor
            self._move(TorInput.CONNECTED)
            yield self._bounded(self._waitBootstrapped(tor), "bootstrapping")
            self.socks = yield self._bounded(self._readSocks(tor), "asking tor for its SOCKS port")
            self.transport.setTor(tor, self.socks)
            self._move(TorInput.BOOTSTRAPPED)
            self.progress = 100
            self.summary = "publishing the onion service"
            self.log.info("tor is ready (SOCKS {socks}); publishing the onion service", socks=self.socks)
            target = yield self.transport.openTarget(self._unixTarget())
            onion = yield self._publish(tor, target)
            self._onionService = onion
            addr = Multiaddr.fromString(f"/onion3/{onion.hostname[:-len('.onion')]}:{self.port}")
            self.onion = addr
            self.transport.setOnion(addr)
            listen = getattr(self.host, "listen", None)
            if callable(listen):
                yield listen([addr])
            # Nothing else notices a new listener: identify pushes and the
            # name records follow the address book's change observers.
            book = getattr(self.host, "addresses", None)
            if book is not None:
                book.listenAddrsChanged()
            self._move(TorInput.PUBLISHED)
            self.summary = "onion service published"
            self.log.info("onion service published at {addr}", addr=addr)
        except Exception as e:
            if not self._live():
                # Stopped meanwhile: that is not a failure.
                raise TorError("the Tor service stopped before the onion service was published") from e
            why = e if isinstance(e, TorError) else TorError(self._explain(e))
            self.error = str(why)
            self._move(TorInput.FAIL)
            self.summary = "failed"
            self.transport.setFailed(f"Tor is not running: {why}")
            self.log.error("Tor failed: {why}", why=why)
            yield self._teardown()
            raise why

    def _explain(self, error: BaseException) -> str:
        if isinstance(error, CancelledError):
            return f"Tor was not ready within {self.bootstrapTimeout:g} s ({self.summary})"
        return describe(error)

    def _remaining(self) -> float:
        return max(0.0, self._deadline - self.reactor.seconds())

    def _bounded(self, d: Deferred[Any], what: str) -> Deferred[Any]:
        """
        C{d}, failing with L{TorError} if the start's deadline passes first.
        """
        def late(f: Failure) -> Failure:
            f.trap(CancelledError)
            if not self._live():
                return f
            return Failure(TorError(
                f"Tor was not ready within {self.bootstrapTimeout:g} s ({what}; {self.summary})"
            ))

        timer = self.reactor.callLater(self._remaining(), lambda: _cancelPending(d))

        def done(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            return result

        return d.addBoth(done).addErrback(late)

    # -- launching and attaching -----------------------------------------------

    def _launchTor(self) -> Deferred[Any]:
        launch = self._launch
        if launch is None:
            import txtorcon

            launch = txtorcon.launch
        binary = self.binary or _findTor()
        if binary is None:
            raise TorError("no tor binary: install tor (Debian: apt install tor) or set [tor] binary")
        torDir = self.home / "tor"
        torDir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(torDir, 0o700)
        self.dataDir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.dataDir, 0o700)
        self.launched = True
        self._spawns = _SpawnRecorder(self.reactor)
        self.log.info("launching tor ({binary}, data in {dir})", binary=binary, dir=self.dataDir)
        control: dict[str, Any] = {}
        controlPath = os.path.join(os.path.realpath(self.dataDir), "control.socket")
        if len(controlPath) <= _MAX_UNIX_PATH:
            # The socket launch() would use anyway, with a connector that
            # waits for it (see _retryConnect).
            control = dict(control_port=f"unix:{controlPath}",
                           connection_creator=self._controlConnector(controlPath))
        return self._bounded(maybeDeferred(
            launch, self._spawns,
            progress_updates=self._progressed,
            data_directory=str(self.dataDir),
            tor_binary=binary,
            timeout=self.bootstrapTimeout,
            stdout=_LogLines(self.log, "stdout"),
            stderr=_LogLines(self.log, "stderr"),
            _tor_config=self._torConfig(),
            **control,
        ), "launching tor")

    def _controlConnector(self, path: str) -> Callable[[], Deferred[Any]]:
        """
        What launch() calls to connect to the control socket of the tor it
        started: txtorcon connects once, as soon as tor prints "Opening
        Control listener", which on a busy machine comes before the socket
        exists; that one failure left launch() waiting until its timeout.
        """
        from twisted.internet.endpoints import UNIXClientEndpoint
        from txtorcon import TorProtocolFactory

        endpoint = UNIXClientEndpoint(self.reactor, path)
        return lambda: _retryConnect(self.reactor, lambda: endpoint.connect(TorProtocolFactory()),
                                     CONTROL_CONNECT_WAIT)

    def _torConfig(self) -> Any:
        """
        A txtorcon C{TorConfig} holding the configured extra torrc options,
        or L{None} without any.  txtorcon's launch() has no public way to
        pass arbitrary options at start, and some (C{TestingTorNetwork},
        C{DirAuthority}...) can only be set when tor starts, not by
        SETCONF later; launch() takes such a config as C{_tor_config} and
        puts each of its options on tor's command line, which is what we
        need.
        """
        if not self.options:
            return None
        from txtorcon import TorConfig

        config = TorConfig()
        for name, values in self.options:
            vals = [str(v) for v in values]
            setattr(config, name, vals if len(vals) != 1 else vals[0])
        return config

    def _progressed(self, percent: Any, tag: Any, summary: Any) -> None:
        """
        txtorcon's bootstrap progress of a tor we launched.
        """
        if not self._live():
            return
        self._move(TorInput.CONNECTED)
        self._noteProgress(int(float(percent)), str(summary))

    def _noteProgress(self, percent: int, summary: str) -> None:
        changed = percent != self.progress
        self.progress = max(0, min(100, percent))
        self.summary = summary
        if self.state is TorState.BOOTSTRAPPING:
            self.transport.setStarting(f"Tor is still starting ({self.progress} %)")
        if changed:
            self.log.info("tor bootstrap {percent} %: {summary}", percent=self.progress, summary=summary)

    @inlineCallbacks
    def _attachTor(self) -> Any:
        connect = self._connect
        if connect is None:
            import txtorcon

            connect = txtorcon.connect
        from twisted.internet.endpoints import clientFromString

        assert self.control is not None
        description = controlEndpointString(self.control)
        self.log.info("attaching to tor at {control}", control=description)
        try:
            endpoint = clientFromString(self.reactor, description)
        except (ValueError, TypeError, KeyError) as e:
            raise TorError(f"[tor] control {self.control!r} is not an endpoint: {e}") from e
        try:
            tor = yield self._bounded(maybeDeferred(connect, self.reactor, endpoint), "connecting to tor")
        except TorError:
            raise
        except Exception as e:
            raise TorError(f"cannot attach to tor at {self.control}: {describe(e)}") from e
        self._move(TorInput.CONNECTED)
        return tor

    @inlineCallbacks
    def _waitBootstrapped(self, tor: Any) -> Any:
        """
        Until tor reports 100 % and has built a circuit (the first is
        not quite enough: an onion service created before any circuit
        exists waits for one).
        """
        while True:
            info = yield tor.protocol.get_info("status/bootstrap-phase")
            percent, summary = _bootstrapPhase(str(info.get("status/bootstrap-phase", "")))
            if self.state is TorState.BOOTSTRAPPING or percent != self.progress:
                self._noteProgress(percent, summary or self.summary)
            if percent >= 100:
                info = yield tor.protocol.get_info("status/circuit-established")
                if str(info.get("status/circuit-established", "")).strip() == "1":
                    return
                self.summary = "waiting for a circuit"
            yield self._sleep(self.pollInterval)

    def _sleep(self, seconds: float) -> Deferred[None]:
        d: Deferred[None] = Deferred(lambda d: call.cancel() if call.active() else None)
        call = self.reactor.callLater(seconds, lambda: _firePending(d))
        return d

    @inlineCallbacks
    def _readSocks(self, tor: Any) -> Any:
        info = yield tor.protocol.get_info("net/listeners/socks")
        listeners = str(info.get("net/listeners/socks", "")).split()
        for listener in listeners:
            listener = listener.strip('"')
            if listener:
                return listener
        raise TorError("tor has no SOCKS port (set SocksPort in its torrc)")

    # -- the onion service -------------------------------------------------------

    def _unixTarget(self) -> Optional[str]:
        """
        The UNIX socket path for the target, when tor can use it: a tor we
        launched runs as us; the path must fit a socket address.
        """
        if not self.launched:
            return None
        path = os.path.realpath(self.home / "tor" / "onion.sock")
        if len(path) > _MAX_UNIX_PATH:
            self.log.info("the home's path is too long for a UNIX socket: the onion service targets 127.0.0.1")
            return None
        return path

    def _readKey(self) -> Optional[str]:
        try:
            key = self.keyPath.read_text().strip()
        except FileNotFoundError:
            return None
        return key or None

    def _saveKey(self, key: str) -> None:
        if self._readKey() == key:
            return
        keyDir = self.keyPath.parent
        keyDir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(keyDir, 0o700)
        atomicWrite(self.keyPath, key.encode("ascii") + b"\n", mode=0o600)
        self.log.info("saved the onion service's key in {path}", path=self.keyPath)

    @inlineCallbacks
    def _publish(self, tor: Any, target: str) -> Any:
        """
        Create the onion service and wait for one descriptor upload;
        create it again (same key) when the upload stalls.
        """
        ports = [f"{self.port} {target}"]
        stall = self.uploadStall
        attempt = 0
        while True:
            attempt += 1
            key = self._readKey()

            def progressed(percent: Any, tag: Any, description: Any) -> None:
                if self.state is TorState.PUBLISHING:
                    self.summary = f"publishing the onion service: {description}"

            creating = maybeDeferred(
                tor.create_onion_service, ports, private_key=key, version=3,
                progress=progressed, await_all_uploads=False, detach=False,
            )
            wait = min(stall, self._remaining())
            timer = self.reactor.callLater(wait, lambda: _cancelPending(creating))
            try:
                onion = yield creating
            except CancelledError:
                if not self._live():
                    raise
                yield self._abandonOnion(tor, ports)
                if self._remaining() <= 0:
                    raise TorError(
                        f"the onion service was not published within {self.bootstrapTimeout:g} s "
                        f"({attempt} attempt(s): no descriptor upload)"
                    ) from None
                self.log.warn("the onion service's descriptor was not uploaded within {s:g} s: creating it again",
                              s=wait)
                stall *= 2
                continue
            except Exception as e:
                if not self._live():
                    raise
                yield self._abandonOnion(tor, ports)
                if self._remaining() <= 0:
                    raise TorError(f"could not publish the onion service: {describe(e)}") from e
                self.log.warn("publishing the onion service failed ({why}); trying again", why=describe(e))
                yield self._sleep(min(self.pollInterval * 2 ** attempt, self._remaining(), 30.0))
                continue
            finally:
                if timer.active():
                    timer.cancel()
            if onion.private_key:
                self._saveKey(str(onion.private_key))
            return onion

    @inlineCallbacks
    def _abandonOnion(self, tor: Any, ports: list[str]) -> Any:
        """
        An onion service whose creation we gave up on may exist in tor all
        the same (ADD_ONION was answered, the upload stalled): keep its key
        if we had none (a first run), and remove it, so that the next
        attempt can create it again on the same address.
        """
        try:
            config = yield tor.get_config()
            pending = [o for o in list(getattr(config, "EphemeralOnionServices", []) or [])
                       if sorted(getattr(o, "ports", ())) == sorted(ports) and getattr(o, "hostname", None)]
        except Exception as e:
            self.log.debug("could not look for the abandoned onion service: {why}", why=describe(e))
            return
        for onion in pending:
            if onion.private_key and self._readKey() is None:
                self._saveKey(str(onion.private_key))
            try:
                yield maybeDeferred(onion.remove)
            except Exception as e:
                self.log.debug("removing the abandoned onion service failed: {why}", why=describe(e))
            try:
                config.EphemeralOnionServices.remove(onion)
            except (ValueError, AttributeError):
                pass

    # -- stopping --------------------------------------------------------------------

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self.mode == "off" or self.state is TorState.STOPPED:
            return succeed(None)
        self._move(TorInput.STOP)
        self.summary = "stopped"
        self.transport.setFailed("Tor is not running (the Tor service stopped)")
        running, self._running = self._running, None
        if running is not None and not running.called:
            running.addErrback(lambda f: None)
            running.cancel()
        self._readiness.reset()
        return self._teardown()

    @inlineCallbacks
    def _teardown(self) -> Any:
        """
        Remove the onion service, close the target, end the control
        connection and a tor we launched; each step bounded in time.
        """
        onion, self._onionService = self._onionService, None
        tor, self.tor = self.tor, None
        self.onion = None
        if self.transport is not None:
            self.transport.setOnion(None)
            yield self.transport.closeTarget()
        if onion is not None and tor is not None:
            yield self._quietly(maybeDeferred(onion.remove), "removing the onion service")
        if tor is not None:
            yield self._quietly(maybeDeferred(tor.quit), "closing the control connection")
        spawns, self._spawns = self._spawns, None
        if spawns is not None:
            for process in spawns.processes:
                yield self._endProcess(process)

    @inlineCallbacks
    def _quietly(self, d: Deferred[Any], what: str) -> Any:
        timer = self.reactor.callLater(self.killAfter, lambda: _cancelPending(d))
        try:
            yield d
        except Exception as e:
            self.log.debug("{what} failed: {why}", what=what, why=describe(e))
        finally:
            if timer.active():
                timer.cancel()

    @inlineCallbacks
    def _endProcess(self, process: Any) -> Any:
        """
        SIGTERM, then SIGKILL if the process has not exited within
        C{killAfter}; waits (boundedly) until it has.
        """
        for signal in ("TERM", "KILL"):
            if getattr(process, "pid", None) is None:
                return
            try:
                process.signalProcess(signal)
            except Exception:
                return
            waited = 0.0
            while getattr(process, "pid", None) is not None and waited < self.killAfter:
                yield self._sleep(0.1)
                waited += 0.1
            if getattr(process, "pid", None) is not None and signal == "TERM":
                self.log.warn("tor (pid {pid}) did not exit on SIGTERM: killing it", pid=process.pid)


def makeTor(context: Any) -> Any:
    """
    The built-in C{"tor"} service (see L{beam.daemon.builtins}).
    """
    return TorService(context.reactor, context.host, context.home, getattr(context.config, "tor", None),
                      **context.optionsFor("tor"))

