"""
A private Tor network for the Tor transport's tests (issue 10): three
directory authorities and three relays (C{TestingTorNetwork 1}, voting
every 10 s), on loopback or inside one host of the NAT lab, plus client
tors that join it.

Nothing here talks to the real Tor network: every tor gets the network's
own C{DirAuthority} lines, so it knows no other directory.

Why "ready" takes more than "Bootstrapped 100%" (see
C{TOR-TESTNET-FACTS.md}): for about 30 s after start relays keep joining
the consensus, and an onion service created then can stall for minutes.
L{TorNetwork.start} therefore runs a client tor of its own and returns only
once that client knows every relay's microdescriptor, has a circuit, and
has seen one more consensus arrive.  The harness speaks just enough of
Tor's control protocol for that (L{TorControl}); Beam itself uses txtorcon.

Every tor is stopped by PID (SIGTERM, SIGKILL a few seconds later: tor can
deadlock on SIGTERM).  Tors left by a test process that crashed are killed
by the next network (a registry of PIDs under C{/tmp/beam-tornet}), and
every tor also exits by itself soon after its owner is gone
(C{__OwningControllerProcess}).

From a shell: C{python -m beam.testing.tornet --workdir D} starts a
network, prints the client options as JSON and waits for Ctrl-C.
"""

from __future__ import annotations

import argparse
import atexit
import binascii
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence, TypeVar

from beam.errors import BeamError
from beam.testing.netlab import pidAlive
from beam.testing.sysdeps import ensureCommands

if TYPE_CHECKING:
    from beam.testing.netlab import Host

__all__ = ["TorClient", "TorControl", "TorControlError", "TorNetwork", "TorNetworkError"]

_T = TypeVar("_T")

#: Where every network records the tors it runs, so that a later network
#: can kill those of a process that died without closing its own.
REGISTRY = "/tmp/beam-tornet"

#: Seconds between SIGTERM and SIGKILL when stopping a tor.
STOP_GRACE = 3.0

#: tor's environment: without these glibc lets each relay grow from ~50
#: to ~130 MiB in 15 minutes (facts file, "Memory").
_MALLOC_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": "131072"}

#: The longest UNIX socket path we use (sun_path is 108 bytes).
_MAX_SOCKET_PATH = 100

#: Voting every 10 s with 2 s vote and distribution delays: the network is
#: usable within about 30 s, and a new consensus comes every 10 s.
_AUTHORITY_OPTIONS: list[tuple[str, str]] = [
    ("AuthoritativeDirectory", "1"),
    ("V3AuthoritativeDirectory", "1"),
    ("TestingV3AuthInitialVotingInterval", "10"),
    ("TestingV3AuthInitialVoteDelay", "2"),
    ("TestingV3AuthInitialDistDelay", "2"),
    ("TestingV3AuthVotingStartOffset", "0"),
    ("V3AuthVotingInterval", "10"),
    ("V3AuthVoteDelay", "2"),
    ("V3AuthDistDelay", "2"),
    # With 2, one late fetch leaves an onion service without a live
    # consensus, and it stops uploading its descriptor.
    ("V3AuthNIntervalsValid", "3"),
    # Without these no relay gets the HSDir (or Guard) flag for hours.
    ("TestingDirAuthVoteGuard", "*"),
    ("TestingDirAuthVoteHSDir", "*"),
    ("TestingDirAuthVoteExit", "*"),
    ("TestingMinExitFlagThreshold", "0"),
    ("TestingMinFastFlagThreshold", "0"),
]

#: What every tor of the network (relay or client) needs to build circuits
#: promptly on a small, busy network.
_CIRCUIT_OPTIONS: list[tuple[str, str]] = [
    ("PathsNeededToBuildCircuits", "0.67"),
    # A timeout learnt on loopback is too short once the machine is busy.
    ("LearnCircuitBuildTimeout", "0"),
    ("CircuitBuildTimeout", "30"),
]

#: Prints N free TCP ports of an address (run inside a lab host, whose
#: namespace the harness cannot bind in itself).
_FREE_PORTS = r"""
import socket, sys
socks = []
for i in range(int(sys.argv[2])):
    s = socket.socket(); s.bind((sys.argv[1], 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
"""


class TorNetworkError(BeamError):
    """
    The private Tor network could not be started or did not become ready.
    """


class TorControlError(TorNetworkError):
    """
    A tor refused a control command, or its control connection failed.
    """


# -- a minimal control-protocol client -------------------------------------


def _parseControl(control: str) -> tuple[int, Any]:
    """
    The socket family and address of a Twisted client endpoint string
    C{"unix:path=/p"} or C{"tcp:host=IP:port=N"}.
    """
    kind, _, rest = control.partition(":")
    params = dict(part.partition("=")[::2] for part in rest.split(":"))
    if kind == "unix" and "path" in params:
        return socket.AF_UNIX, params["path"]
    if kind == "tcp" and "host" in params and "port" in params:
        return socket.AF_INET, (params["host"], int(params["port"]))
    raise TorControlError(f"not a control endpoint this harness understands: {control!r}")


class TorControl:
    """
    A blocking control connection to one tor: just enough of the control
    protocol (AUTHENTICATE, GETINFO, any command, asynchronous events) for
    readiness checks and smoke tests.  Beam itself uses txtorcon.

    @ivar events: asynchronous event lines received and not yet consumed
        by L{waitEvent}, oldest first.
    """

    def __init__(self, sock: socket.socket, timeout: float = 10.0) -> None:
        self._sock = sock
        self._sock.settimeout(timeout)
        self._buf = b""
        self.events: list[str] = []

    @classmethod
    def open(cls, control: str, cookiePath: Optional[str] = None, timeout: float = 10.0) -> TorControl:
        """
        Connect to C{control} (an endpoint string, as L{TorClient.control})
        and authenticate with the cookie file C{cookiePath}, or with none.

        @raise TorControlError: when the connection or the
            authentication fails.
        """
        family, address = _parseControl(control)
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(address)
        except OSError as e:
            sock.close()
            raise TorControlError(f"cannot connect to tor's control port {control}: {e}") from e
        conn = cls(sock, timeout)
        try:
            if cookiePath is None:
                conn.request("AUTHENTICATE")
            else:
                with open(cookiePath, "rb") as f:
                    cookie = f.read()
                conn.request("AUTHENTICATE " + binascii.hexlify(cookie).decode("ascii"))
        except BaseException:
            conn.close()
            raise
        return conn

    def close(self) -> None:
        """
        Close the connection (ephemeral onions created on it go too).
        """
        self._sock.close()

    def __enter__(self) -> TorControl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _line(self) -> str:
        while b"\r\n" not in self._buf:
            try:
                data = self._sock.recv(65536)
            except OSError as e:
                raise TorControlError(f"tor's control connection failed: {e}") from e
            if not data:
                raise TorControlError("tor closed its control connection")
            self._buf += data
        line, _, self._buf = self._buf.partition(b"\r\n")
        return line.decode("utf-8", "replace")

    def _reply(self) -> tuple[str, list[str]]:
        """
        One whole reply: its status code and its lines (a data block
        C{"+"} line is joined with its data by newlines).
        """
        lines: list[str] = []
        while True:
            line = self._line()
            if len(line) < 4:
                raise TorControlError(f"malformed control reply line {line!r}")
            code, sep, text = line[:3], line[3], line[4:]
            if sep == "+":
                data = []
                while True:
                    more = self._line()
                    if more == ".":
                        break
                    data.append(more[1:] if more.startswith(".") else more)
                text = text + "\n" + "\n".join(data)
            lines.append(text)
            if sep == " ":
                return code, lines

    def _commandReply(self) -> tuple[str, list[str]]:
        while True:
            code, lines = self._reply()
            if code != "650":
                return code, lines
            self.events.extend(lines)

    def request(self, command: str) -> list[str]:
        """
        Send C{command} and return its reply's lines.

        @raise TorControlError: unless tor answered 250.
        """
        try:
            self._sock.sendall(command.encode("utf-8") + b"\r\n")
        except OSError as e:
            raise TorControlError(f"tor's control connection failed: {e}") from e
        code, lines = self._commandReply()
        if code != "250":
            raise TorControlError(f"tor refused {command.split()[0]}: {code} {' '.join(lines)}")
        return lines

    def getinfo(self, key: str) -> str:
        """
        The value of one C{GETINFO} key.
        """
        for line in self.request(f"GETINFO {key}"):
            name, sep, value = line.partition("=")
            if sep and name == key:
                return value.lstrip("\n")
        raise TorControlError(f"tor's GETINFO reply lacks {key}")

    def waitEvent(self, predicate: Callable[[str], bool], timeout: float) -> str:
        """
        The first asynchronous event line (after C{SETEVENTS}) that
        satisfies C{predicate}, waiting up to C{timeout} seconds.

        @raise TorControlError: when none came in time.
        """
        deadline = time.monotonic() + timeout
        while True:
            while self.events:
                event = self.events.pop(0)
                if predicate(event):
                    return event
            left = deadline - time.monotonic()
            if left <= 0:
                raise TorControlError(f"no such event from tor within {timeout:g} s")
            self._sock.settimeout(left)
            try:
                code, lines = self._reply()
            except TorControlError as e:
                if isinstance(e.__cause__, socket.timeout):
                    continue
                raise
            if code == "650":
                self.events.extend(lines)


# -- processes -------------------------------------------------------------


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def sweepLeftovers() -> list[int]:
    """
    Kill the tors of networks whose process died without closing them
    (their entries in L{REGISTRY}); a PID is only killed while its command
    line still names the torrc it was started with.

    @return: the PIDs killed.
    """
    killed: list[int] = []
    try:
        entries = os.listdir(REGISTRY)
    except OSError:
        return killed
    for entry in entries:
        owner, _, pid = entry.partition("-")
        if not (owner.isdigit() and pid.isdigit()) or pidAlive(int(owner)):
            continue
        path = os.path.join(REGISTRY, entry)
        try:
            with open(path) as f:
                torrc = f.read().strip()
        except OSError:
            continue
        if torrc and torrc in _cmdline(int(pid)):
            try:
                os.kill(int(pid), signal.SIGKILL)
                killed.append(int(pid))
            except OSError:
                pass
        try:
            os.unlink(path)
        except OSError:
            pass
    return killed


def _stop(processes: Sequence[subprocess.Popen[Any]], grace: float = STOP_GRACE) -> None:
    """
    SIGTERM every process still running, SIGKILL those that still run
    C{grace} seconds later, and reap them all.
    """
    for p in processes:
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGTERM)
            except OSError:
                pass
    deadline = time.monotonic() + grace
    for p in processes:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for p in processes:
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGKILL)
            except OSError:
                pass
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


def _tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class _Tor:
    """
    One tor process of the network (authority, relay or client).
    """

    name: str
    dataDir: str
    torrc: str
    process: subprocess.Popen[Any]

    @property
    def log(self) -> str:
        return os.path.join(self.dataDir, "notice.log")

    @property
    def stderr(self) -> str:
        return os.path.join(self.dataDir, "stderr.log")

    def describe(self, lines: int = 15) -> str:
        """
        The state and the end of the logs of this tor, for errors.
        """
        code = self.process.poll()
        state = "running" if code is None else f"exited with {code}"
        text = f"--- {self.name} (pid {self.process.pid}, {state}): {self.log}\n{_tail(self.log, lines)}"
        if os.path.exists(self.stderr) and os.path.getsize(self.stderr):
            text += f"\n--- {self.name} stderr:\n{_tail(self.stderr, lines)}"
        return text


@dataclass
class TorClient:
    """
    A client tor that joined the network, bootstrapped and with a circuit.

    @ivar control: its control socket as a Twisted client endpoint string
        (C{"unix:path=..."}), which Beam's C{[tor] control} accepts; it
        authenticates with the cookie in L{cookiePath} (readable by the
        user running the tests).
    @ivar socks: its SOCKS port, C{"ip:port"} (on the address of the host
        it runs in: reachable from that host only).
    @ivar pid: its process ID.
    @ivar dataDir: its DataDirectory (its log is C{notice.log} there).
    @ivar host: the NAT-lab host it runs in, or L{None}.
    """

    name: str
    control: str
    socks: str
    pid: int
    dataDir: str
    cookiePath: str
    host: Optional[Host] = field(default=None, repr=False)

    def controller(self, timeout: float = 10.0) -> TorControl:
        """
        A new authenticated control connection to this tor.
        """
        return TorControl.open(self.control, self.cookiePath, timeout)


_open: weakref.WeakSet[TorNetwork] = weakref.WeakSet()


def _closeAll() -> None:
    for network in list(_open):
        network.close()


atexit.register(_closeAll)


class TorNetwork:
    """
    A private Tor network: L{start} it, give client tors L{clientOptions}
    (or start them with L{addClient}), and L{close} it (also as a context
    manager: leaving the C{with} block closes it; entering does not start
    it).

    @ivar address: the address every tor of the network listens on.
    @ivar fingerprints: the identity fingerprints of every authority and
        relay, by nickname, once L{start} made their keys.
    @ivar readyAfter: seconds L{start} took, once it returned.
    """

    def __init__(self, workdir: str, host: Optional[Host] = None, address: Optional[str] = None,
                 authorities: int = 3, relays: int = 3) -> None:
        """
        @param workdir: where every tor keeps its DataDirectory, torrc and
            logs (created if missing).
        @param host: a L{beam.testing.netlab} host whose network namespace
            runs every tor, or L{None} for this machine's loopback.
        @param address: the address the network listens on; by default
            127.0.0.1, or the host's address when C{host} is given.
        """
        if authorities < 1:
            raise TorNetworkError("a Tor network needs at least one directory authority")
        self.workdir = os.path.abspath(workdir)
        self.host = host
        self.address = address or (host.addr if host is not None else "127.0.0.1")
        self.authorities = authorities
        self.relays = relays
        self.fingerprints: dict[str, str] = {}
        self.readyAfter: Optional[float] = None
        self._dirAuthorities: list[str] = []
        self._tors: list[_Tor] = []
        self._clients: dict[str, TorClient] = {}
        self._probe: Optional[TorClient] = None
        self._socketDir: Optional[str] = None
        self._ownSocketDir = False
        self._started = False
        self._closed = False
        _open.add(self)

    # -- options ---------------------------------------------------------

    def clientOptions(self) -> dict[str, list[str]]:
        """
        The torrc options a client tor needs to join this network, each
        option name with its values (C{DirAuthority} has one per
        authority): what Beam's C{[tor.options]} takes.  With these, a
        C{DataDirectory}, a C{SocksPort} and a C{ControlPort}, a tor
        bootstraps on this network and on no other.
        """
        if not self._dirAuthorities:
            raise TorNetworkError("start the network first: its authorities' keys do not exist yet")
        options: dict[str, list[str]] = {
            "TestingTorNetwork": ["1"],
            "DirAuthority": list(self._dirAuthorities),
            "FetchDirInfoEarly": ["1"],
            "FetchDirInfoExtraEarly": ["1"],
        }
        for name, value in _CIRCUIT_OPTIONS:
            options[name] = [value]
        return options

    def _common(self, name: str, dataDir: str) -> list[tuple[str, str]]:
        return [
            ("DataDirectory", dataDir),
            ("PidFile", os.path.join(dataDir, "pid")),
            ("Log", f"notice file {os.path.join(dataDir, 'notice.log')}"),
            ("SafeLogging", "0"),
            ("ShutdownWaitLength", "0"),
            ("Nickname", name),
            # Exit by itself soon after the test process is gone.
            ("__OwningControllerProcess", str(os.getpid())),
        ]

    # -- building --------------------------------------------------------

    def _checkOpen(self) -> None:
        if self._closed:
            raise TorNetworkError("this Tor network is closed")

    def _freePorts(self, address: str, count: int, host: Optional[Host]) -> list[int]:
        """
        C{count} distinct TCP ports free on C{address} now (bound to port
        0 together, then released), in C{host}'s namespace or here.
        """
        if host is not None:
            try:
                out = host.check_output([sys.executable, "-c", _FREE_PORTS, address, str(count)], text=True)
            except (OSError, subprocess.SubprocessError) as e:
                raise TorNetworkError(f"cannot find free ports on {address} in {host.name}: {e}") from e
            return [int(p) for p in out.split()]
        socks = []
        try:
            for _ in range(count):
                s = socket.socket()
                s.bind((address, 0))
                socks.append(s)
            return [s.getsockname()[1] for s in socks]
        except OSError as e:
            raise TorNetworkError(f"cannot find free ports on {address}: {e}") from e
        finally:
            for s in socks:
                s.close()

    def _dataDir(self, name: str) -> str:
        path = os.path.join(self.workdir, name)
        if os.path.exists(path):
            raise TorNetworkError(f"{path} exists already: give each network and client its own name and workdir")
        os.makedirs(path, mode=0o700)
        os.chmod(path, 0o700)
        return path

    def _socketPath(self, name: str) -> str:
        """
        Where C{name}'s control socket goes: in the workdir when its path
        fits in a UNIX socket address, else in a short private directory
        under the system's temporary directory (removed by L{close}).
        """
        if self._socketDir is None:
            candidate = os.path.join(self.workdir, "sockets")
            if len(candidate) + 40 <= _MAX_SOCKET_PATH:
                os.makedirs(candidate, mode=0o700, exist_ok=True)
                self._socketDir = candidate
            else:
                self._socketDir = tempfile.mkdtemp(prefix="beam-tor-")
                self._ownSocketDir = True
            # tor accepts a control socket only in a private directory.
            os.chmod(self._socketDir, 0o700)
        path = os.path.join(self._socketDir, f"{name}.sock")
        if len(path) > _MAX_SOCKET_PATH:
            raise TorNetworkError(f"the name {name!r} is too long for a control socket path")
        return path

    def _writeTorrc(self, dataDir: str, options: Sequence[tuple[str, str]]) -> str:
        path = os.path.join(dataDir, "torrc")
        with open(path, "w") as f:
            for name, value in options:
                f.write(f"{name} {value}\n")
        return path

    def _emptyDefaults(self) -> str:
        # An explicit empty defaults file: a system's torrc-defaults must
        # not change this network.
        path = os.path.join(self.workdir, "torrc-defaults")
        if not os.path.exists(path):
            open(path, "w").close()
        return path

    def _spawn(self, name: str, dataDir: str, torrc: str, host: Optional[Host]) -> _Tor:
        argv = ["tor", "--defaults-torrc", self._emptyDefaults(), "-f", torrc]
        env = {**os.environ, **_MALLOC_ENV}
        with open(os.path.join(dataDir, "stderr.log"), "ab") as err:
            kwargs: dict[str, Any] = dict(stdin=subprocess.DEVNULL, stdout=err, stderr=err, env=env,
                                          start_new_session=True)
            try:
                if host is not None:
                    # ip netns exec execs tor: the PID is tor's.
                    process = host.run(argv, **kwargs)
                else:
                    process = subprocess.Popen(argv, **kwargs)
            except OSError as e:
                raise TorNetworkError(f"cannot start tor for {name}: {e}") from e
        tor = _Tor(name=name, dataDir=dataDir, torrc=torrc, process=process)
        self._tors.append(tor)
        os.makedirs(REGISTRY, exist_ok=True)
        with open(os.path.join(REGISTRY, f"{os.getpid()}-{process.pid}"), "w") as f:
            f.write(torrc)
        return tor

    def _makeKeys(self, names: Sequence[str], dirPorts: dict[str, int]) -> None:
        """
        Make the authorities' v3 keys (C{tor-gencert}, with an empty
        passphrase on stdin) and every relay identity, and learn the
        fingerprints, all in parallel.
        """
        running: list[tuple[str, subprocess.Popen[Any]]] = []
        for name in names:
            dataDir = os.path.join(self.workdir, name)
            if name in dirPorts:
                keys = os.path.join(dataDir, "keys")
                os.makedirs(keys, mode=0o700, exist_ok=True)
                # An empty passphrase, read from stdin (fd 0).
                passphrase = os.path.join(keys, "passphrase")
                with open(passphrase, "w") as f:
                    f.write("\n")
                with open(passphrase, "rb") as stdin:
                    gencert = subprocess.Popen(
                        ["tor-gencert", "--create-identity-key", "--passphrase-fd", "0", "-m", "12",
                         "-a", f"{self.address}:{dirPorts[name]}",
                         "-i", os.path.join(keys, "authority_identity_key"),
                         "-s", os.path.join(keys, "authority_signing_key"),
                         "-c", os.path.join(keys, "authority_certificate")],
                        stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=dataDir)
                running.append((f"tor-gencert for {name}", gencert))
            running.append((f"tor --list-fingerprint for {name}", subprocess.Popen(
                ["tor", "--list-fingerprint", "--quiet", "--defaults-torrc", self._emptyDefaults(),
                 "-f", self._emptyDefaults(), "--DataDirectory", dataDir, "--Nickname", name, "--ORPort", "1"],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)))
        for what, p in running:
            try:
                out, _ = p.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                out, _ = p.communicate()
            if p.returncode != 0:
                raise TorNetworkError(f"{what} failed ({p.returncode}): {out.decode('utf-8', 'replace')[-2000:]}")
        for name in names:
            dataDir = os.path.join(self.workdir, name)
            with open(os.path.join(dataDir, "fingerprint")) as f:
                self.fingerprints[name] = f.read().split()[1]

    def _v3ident(self, name: str) -> str:
        with open(os.path.join(self.workdir, name, "keys", "authority_certificate")) as f:
            for line in f:
                if line.startswith("fingerprint "):
                    return line.split()[1]
        raise TorNetworkError(f"{name}'s authority certificate has no fingerprint")

    def start(self, timeout: float = 180) -> None:
        """
        Start the network and return once it is really ready: a client tor
        of the harness knows every relay's microdescriptor, has a circuit,
        and has seen one more consensus arrive after that.

        @raise TorNetworkError: when it is not ready within C{timeout}
            seconds (with the ends of the tors' logs) or could not start;
            the network is closed then.
        """
        self._checkOpen()
        if self._started:
            raise TorNetworkError("this Tor network was started already")
        self._started = True
        started = time.monotonic()
        deadline = started + timeout
        try:
            ensureCommands({"tor": "tor", "tor-gencert": "tor"})
            sweepLeftovers()
            os.makedirs(self.workdir, exist_ok=True)
            auths = [f"auth{i}" for i in range(self.authorities)]
            relays = [f"relay{i}" for i in range(self.relays)]
            ports = iter(self._freePorts(self.address, 2 * len(auths) + len(relays), self.host))
            orPorts = {name: next(ports) for name in auths + relays}
            dirPorts = {name: next(ports) for name in auths}
            dataDirs = {name: self._dataDir(name) for name in auths + relays}
            self._makeKeys(auths + relays, dirPorts)
            self._dirAuthorities = [
                f"{name} orport={orPorts[name]} v3ident={self._v3ident(name)} "
                f"{self.address}:{dirPorts[name]} {self.fingerprints[name]}"
                for name in auths
            ]
            for name in auths + relays:
                options = [("TestingTorNetwork", "1"), *self._common(name, dataDirs[name])]
                options += [("DirAuthority", line) for line in self._dirAuthorities]
                options += [
                    ("SocksPort", "0"),
                    ("Address", self.address),
                    ("ORPort", f"{self.address}:{orPorts[name]}"),
                    # Relays here cannot test their own reachability
                    # usefully; publish at once.
                    ("AssumeReachable", "1"),
                    # Onion services need no exit; a single exit logs
                    # errors every second.
                    ("ExitRelay", "0"),
                    ("ExitPolicy", "reject *:*"),
                    ("ContactInfo", "beam tornet test network"),
                    *_CIRCUIT_OPTIONS,
                ]
                if name in dirPorts:
                    options += [("DirPort", f"{self.address}:{dirPorts[name]}"), *_AUTHORITY_OPTIONS]
                self._spawn(name, dataDirs[name], self._writeTorrc(dataDirs[name], options), self.host)
            self._probe = self._startClient("probe", self.host)
            self._waitReady(self._probe, deadline, newConsensus=True)
        except BaseException as e:
            report = self.describe() if isinstance(e, TorNetworkError) else ""
            self.close()
            if report:
                raise TorNetworkError(f"{e}\n{report}") from e
            raise
        self.readyAfter = time.monotonic() - started

    def describe(self, lines: int = 15) -> str:
        """
        The state and log ends of every tor of the network, for errors.
        """
        return "\n".join(tor.describe(lines) for tor in self._tors)

    # -- clients ---------------------------------------------------------

    def _startClient(self, name: str, host: Optional[Host]) -> TorClient:
        address = host.addr if host is not None else (self.address if self.host is None else self.host.addr)
        dataDir = self._dataDir(name)
        socketPath = self._socketPath(name)
        (socksPort,) = self._freePorts(address, 1, host)
        options = list(self._common(name, dataDir))
        for option, values in self.clientOptions().items():
            options += [(option, value) for value in values]
        options += [
            ("SocksPort", f"{address}:{socksPort}"),
            ("ControlSocket", socketPath),
            ("CookieAuthentication", "1"),
        ]
        tor = self._spawn(name, dataDir, self._writeTorrc(dataDir, options), host)
        return TorClient(name=name, control=f"unix:path={socketPath}", socks=f"{address}:{socksPort}",
                         pid=tor.process.pid, dataDir=dataDir,
                         cookiePath=os.path.join(dataDir, "control_auth_cookie"), host=host)

    def addClient(self, name: str, host: Optional[Host] = None, timeout: float = 120) -> TorClient:
        """
        Start a client tor named C{name} on this network, in C{host}'s
        namespace (by default where the network runs) and return it once
        it knows every relay and has a circuit.

        It runs with exactly L{clientOptions} plus its DataDirectory, SOCKS
        port, control socket (cookie authentication), log and PID file.

        @raise TorNetworkError: when it is not usable within C{timeout}
            seconds (with the end of its log); it is stopped then.
        """
        self._checkOpen()
        if self._probe is None:
            raise TorNetworkError("start the network before adding clients")
        if name in self._clients or name == "probe" or name in self.fingerprints:
            raise TorNetworkError(f"this network already has a tor named {name!r}")
        client = self._startClient(name, host if host is not None else self.host)
        try:
            self._waitReady(client, time.monotonic() + timeout, newConsensus=False)
        except TorNetworkError as e:
            tor = self._torOf(client)
            report = tor.describe(30)
            _stop([tor.process])
            raise TorNetworkError(f"{e}\n{report}") from e
        self._clients[name] = client
        return client

    @property
    def clients(self) -> dict[str, TorClient]:
        """
        The clients added with L{addClient}, by name.
        """
        return dict(self._clients)

    def pids(self) -> list[int]:
        """
        The PIDs of every tor this network started (running or not).
        """
        return [tor.process.pid for tor in self._tors]

    def _torOf(self, client: TorClient) -> _Tor:
        return next(tor for tor in self._tors if tor.process.pid == client.pid)

    def _waitReady(self, client: TorClient, deadline: float, newConsensus: bool) -> None:
        """
        Wait until C{client} knows a microdescriptor for every authority
        and relay and has a circuit, and (C{newConsensus}) until one more
        consensus arrived after that.
        """
        tor = self._torOf(client)
        state = {"waiting for": "its control socket"}

        def check() -> Optional[TorControl]:
            if os.path.exists(client.cookiePath) and os.path.exists(client.control.partition("path=")[2]):
                try:
                    return TorControl.open(client.control, client.cookiePath)
                except TorControlError:
                    return None
            return None

        control = self._poll(tor, deadline, state, check)
        try:
            def known() -> Optional[bool]:
                missing = []
                for name, fingerprint in self.fingerprints.items():
                    try:
                        control.getinfo(f"md/id/{fingerprint}")
                    except TorControlError:
                        missing.append(name)
                if missing:
                    progress = control.getinfo("status/bootstrap-phase")
                    state["waiting for"] = f"microdescriptors of {', '.join(missing)} ({progress})"
                    return None
                if control.getinfo("status/circuit-established") != "1":
                    state["waiting for"] = "a circuit"
                    return None
                return True

            self._poll(tor, deadline, state, known)
            if newConsensus:
                first = control.getinfo("consensus/valid-after")
                state["waiting for"] = f"a consensus after the one valid from {first}"

                def arrived() -> Optional[bool]:
                    return True if control.getinfo("consensus/valid-after") != first else None

                self._poll(tor, deadline, state, arrived)
        finally:
            control.close()

    def _poll(self, client: _Tor, deadline: float, state: dict[str, str], check: Callable[[], Optional[_T]]) -> _T:
        """
        Call C{check} every half second until it returns something other
        than None, while every tor runs and before C{deadline}.
        """
        while True:
            for tor in self._tors:
                if tor.process.poll() is not None and (tor in self._networkTors() or tor is client):
                    raise TorNetworkError(f"{tor.name}'s tor exited ({tor.process.returncode}) "
                                          f"while {client.name} was waiting for {state['waiting for']}")
            result = check()
            if result is not None:
                return result
            if time.monotonic() >= deadline:
                raise TorNetworkError(f"the Tor network was not ready in time: {client.name} "
                                      f"was still waiting for {state['waiting for']}")
            time.sleep(0.5)

    def _networkTors(self) -> list[_Tor]:
        return [tor for tor in self._tors if tor.name in self.fingerprints or tor.name == "probe"]

    # -- teardown ----------------------------------------------------------

    def close(self) -> None:
        """
        Stop every tor of the network and its clients by PID: SIGTERM, then
        SIGKILL those still running after L{STOP_GRACE} seconds.  Safe to
        call more than once; also called at exit.
        """
        if self._closed:
            return
        self._closed = True
        _open.discard(self)
        _stop([tor.process for tor in self._tors])
        for tor in self._tors:
            try:
                os.unlink(os.path.join(REGISTRY, f"{os.getpid()}-{tor.process.pid}"))
            except OSError:
                pass
        if self._ownSocketDir and self._socketDir is not None:
            shutil.rmtree(self._socketDir, ignore_errors=True)

    def __enter__(self) -> TorNetwork:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _main(argv: Sequence[str]) -> int:
    """
    C{python -m beam.testing.tornet --workdir D}: start a network on
    loopback, print its client options as one line of JSON, and wait for
    Ctrl-C (or SIGTERM), then stop it.
    """
    parser = argparse.ArgumentParser(prog="python -m beam.testing.tornet", description=_main.__doc__)
    parser.add_argument("--workdir", required=True, help="a new or empty directory for the tors' files")
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--timeout", type=float, default=180)
    parser.add_argument("--client", action="append", default=[], help="also start a client tor with this name")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    network = TorNetwork(args.workdir, address=args.address)
    try:
        network.start(args.timeout)
        print(json.dumps(network.clientOptions()), flush=True)
        print(f"ready in {network.readyAfter:.1f} s", file=sys.stderr)
        for name in args.client:
            client = network.addClient(name)
            print(f"client {name}: socks {client.socks}, control {client.control}", file=sys.stderr)
        print("Ctrl-C stops it", file=sys.stderr, flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
    finally:
        network.close()
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
