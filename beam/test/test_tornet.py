"""
Tests for L{beam.testing.tornet}: the private Tor network the Tor
transport's tests run on (issue 10) starts within a bounded time, client
tors join it, onion services work on it, and it leaves no tor behind.

These are real-part tests: real C{tor} processes (Debian's C{tor} package,
installed by L{beam.testing.sysdeps} on a fresh machine; never skipped).
One network on loopback serves the first class; the second builds the
topology the end-to-end tests use: the network in a NAT-lab public host, a
client in a home behind a NAT.  Both together take well under three
minutes here.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from typing import ClassVar, Optional

from twisted.trial.unittest import SynchronousTestCase

from beam.testing import tornet
from beam.testing.tornet import TorClient, TorControl, TorNetwork, TorNetworkError

#: The longest any network here may take to become ready (the facts file
#: measured 22-34 s on this machine); a bound, not an expectation.
START_TIMEOUT = 180


def _report(what: str, seconds: float) -> None:
    """
    Print a measured time (visible with C{pytest -s}) for the issue's
    figures; tests never assert absolute times.
    """
    print(f"tornet: {what}: {seconds:.1f} s", file=sys.stderr)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


class _EchoServer:
    """
    A TCP echo server on 127.0.0.1 in a thread: the onion service's
    target.
    """

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(60)
                try:
                    while data := conn.recv(4096):
                        conn.sendall(data)
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


def _socksConnect(socks: str, host: str, port: int, timeout: float = 90) -> socket.socket:
    """
    A connection to C{host:port} through the SOCKS5 proxy C{socks}.

    @raise OSError: when the proxy refuses, with its reply code.
    """
    ip, _, socksPort = socks.rpartition(":")
    s = socket.create_connection((ip, int(socksPort)), timeout=timeout)
    try:
        s.sendall(b"\x05\x01\x00")
        if s.recv(2) != b"\x05\x00":
            raise OSError("the SOCKS proxy wants authentication")
        name = host.encode("ascii")
        s.sendall(b"\x05\x01\x00\x03" + bytes([len(name)]) + name + struct.pack("!H", port))
        reply = b""
        while len(reply) < 10:
            more = s.recv(10 - len(reply))
            if not more:
                raise OSError("the SOCKS proxy closed the connection")
            reply += more
        if reply[1] != 0:
            raise OSError(f"SOCKS reply {reply[1]}")
    except BaseException:
        s.close()
        raise
    return s


def _recvExactly(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        more = s.recv(n - len(data))
        if not more:
            break
        data += more
    return data


def _torrcOptions(path: str) -> set[str]:
    with open(path) as f:
        return {line.split()[0] for line in f if line.strip()}


class LoopbackNetworkTests(SynchronousTestCase):
    """
    One private Tor network on 127.0.0.1 for the class (starting one takes
    tens of seconds).
    """

    network: ClassVar[TorNetwork]
    workdir: ClassVar[str]
    clients: ClassVar[dict[str, TorClient]]

    @classmethod
    def setUpClass(cls) -> None:
        cls.workdir = tempfile.mkdtemp(prefix="beam-tornet-")
        cls.network = TorNetwork(cls.workdir)
        cls.clients = {}
        try:
            cls.network.start(timeout=START_TIMEOUT)
        except BaseException:
            shutil.rmtree(cls.workdir, ignore_errors=True)
            raise
        assert cls.network.readyAfter is not None
        _report("loopback network: start to ready", cls.network.readyAfter)

    @classmethod
    def tearDownClass(cls) -> None:
        pids = cls.network.pids()
        cls.network.close()
        shutil.rmtree(cls.workdir, ignore_errors=True)
        left = [pid for pid in pids if not _gone(pid)]
        assert not left, f"tor processes left running: {left}"

    def client(self, name: str) -> TorClient:
        """
        The class's client C{name}, started on first use.
        """
        if name not in self.clients:
            started = time.monotonic()
            self.clients[name] = self.network.addClient(name)
            _report(f"addClient({name!r})", time.monotonic() - started)
        return self.clients[name]

    def test_ready(self) -> None:
        """
        The network became ready within the bound, with every authority
        and relay running, and its client options name its three
        authorities and the options the facts file found necessary.
        """
        readyAfter = self.network.readyAfter
        assert readyAfter is not None
        self.assertLess(readyAfter, START_TIMEOUT)
        self.assertEqual(len(self.network.fingerprints), 6)
        for pid in self.network.pids():
            self.assertFalse(_gone(pid), f"tor {pid} exited")
        options = self.network.clientOptions()
        self.assertEqual(options["TestingTorNetwork"], ["1"])
        self.assertEqual(len(options["DirAuthority"]), 3)
        for line in options["DirAuthority"]:
            self.assertIn(" 127.0.0.1:", line)
            self.assertIn("v3ident=", line)
        for name in ("FetchDirInfoEarly", "FetchDirInfoExtraEarly", "PathsNeededToBuildCircuits",
                     "LearnCircuitBuildTimeout", "CircuitBuildTimeout"):
            self.assertIn(name, options)

    def test_addClient(self) -> None:
        """
        A client from L{TorNetwork.addClient} has a circuit and finished
        bootstrapping; its control endpoint takes cookie authentication;
        its torrc holds nothing beyond the client options but its own
        files, ports and name.
        """
        client = self.client("alice")
        self.assertTrue(client.control.startswith("unix:path="))
        self.assertTrue(client.socks.startswith("127.0.0.1:"))
        with client.controller() as control:
            self.assertEqual(control.getinfo("status/circuit-established"), "1")
            self.assertIn("PROGRESS=100", control.getinfo("status/bootstrap-phase"))
        extra = _torrcOptions(os.path.join(client.dataDir, "torrc")) - set(self.network.clientOptions())
        self.assertEqual(extra, {"DataDirectory", "SocksPort", "ControlSocket", "CookieAuthentication", "Log",
                                 "PidFile", "SafeLogging", "ShutdownWaitLength", "Nickname",
                                 "__OwningControllerProcess"})

    def test_clientOptionsAlone(self) -> None:
        """
        A tor given only L{TorNetwork.clientOptions}, a DataDirectory, a
        SOCKS port and a control port, on its command line as txtorcon's
        launch passes them (no torrc at all), bootstraps on the network
        and builds a circuit.
        """
        dataDir = os.path.join(self.workdir, "bare")
        os.makedirs(dataDir, mode=0o700)
        ports = []
        for _ in range(2):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            ports.append(s)
        socksPort, controlPort = (s.getsockname()[1] for s in ports)
        for s in ports:
            s.close()
        argv = ["tor", "-f", "/dev/null/non-existent-on-purpose", "--ignore-missing-torrc",
                "DataDirectory", dataDir, "SocksPort", f"127.0.0.1:{socksPort}",
                "ControlPort", f"127.0.0.1:{controlPort}"]
        for name, values in self.network.clientOptions().items():
            for value in values:
                # txtorcon's TorConfig.config_args: one name-value pair
                # per value, names without dashes.
                argv += [name, value]
        started = time.monotonic()
        with open(os.path.join(dataDir, "stdout.log"), "wb") as log:
            tor = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 120
            control: Optional[TorControl] = None
            while control is None:
                try:
                    control = TorControl.open(f"tcp:host=127.0.0.1:port={controlPort}")
                except TorNetworkError:
                    self.assertIsNone(tor.poll(), "tor exited")
                    self.assertLess(time.monotonic(), deadline, "tor's control port never opened")
                    time.sleep(0.5)
            with control:
                while control.getinfo("status/circuit-established") != "1":
                    self.assertIsNone(tor.poll(), "tor exited")
                    if time.monotonic() > deadline:
                        with open(os.path.join(dataDir, "stdout.log")) as f:
                            self.fail(f"no circuit within 120 s; log:\n{f.read()[-3000:]}")
                    time.sleep(0.5)
            _report("bare client (clientOptions only): start to circuit", time.monotonic() - started)
        finally:
            tor.kill()
            tor.wait(timeout=10)

    def test_onionService(self) -> None:
        """
        An onion service added with C{ADD_ONION} on one client publishes
        its descriptor, and another client reaches a local echo server
        through it over SOCKS5: onion services work on this network.
        """
        echo = _EchoServer()
        self.addCleanup(echo.close)
        service = self.client("alice")
        visitor = self.client("bob")
        started = time.monotonic()
        with service.controller(timeout=30) as control:
            control.request("SETEVENTS HS_DESC")
            lines = control.request(f"ADD_ONION NEW:ED25519-V3 Flags=DiscardPK Port=80,127.0.0.1:{echo.port}")
            serviceId = next(line.partition("=")[2] for line in lines if line.startswith("ServiceID="))
            control.waitEvent(lambda event: event.startswith(f"HS_DESC UPLOADED {serviceId} "), 120)
            _report("ADD_ONION to first descriptor upload", time.monotonic() - started)
            s = _socksConnect(visitor.socks, f"{serviceId}.onion", 80)
            with s:
                s.sendall(b"hello through tor")
                self.assertEqual(_recvExactly(s, 17), b"hello through tor")
            _report("ADD_ONION to echo through the onion", time.monotonic() - started)


class NatLabNetworkTests(SynchronousTestCase):
    """
    The topology of the Beam end-to-end tests: the Tor network in a public
    host of the NAT lab, a client tor in a home behind a NAT.
    """

    def test_networkInPublicHostClientBehindNat(self) -> None:
        """
        A network started in the NAT lab's public host listens on that
        host's internet address; a client tor in a home behind a
        port-restricted NAT joins it and builds a circuit; closing the
        network leaves none of its tors running.
        """
        from beam.testing.netlab import INTERNET, NatLab

        lab = NatLab()
        self.addCleanup(lab.close)
        public = lab.addPublic("tor")
        home = lab.addHome("alice")
        workdir = tempfile.mkdtemp(prefix="beam-tornet-")
        self.addCleanup(shutil.rmtree, workdir, True)
        network = TorNetwork(workdir, host=public)
        self.addCleanup(network.close)
        network.start(timeout=START_TIMEOUT)
        assert network.readyAfter is not None
        _report("NAT-lab network: start to ready", network.readyAfter)
        self.assertIn(ipaddress.ip_address(network.address), INTERNET)
        for line in network.clientOptions()["DirAuthority"]:
            self.assertIn(f" {public.addr}:", line)
        started = time.monotonic()
        client = network.addClient("alice", host=home)
        _report("NAT-lab client behind NAT: addClient", time.monotonic() - started)
        self.assertEqual(client.socks.rpartition(":")[0], home.addr)
        with client.controller() as control:
            self.assertEqual(control.getinfo("status/circuit-established"), "1")
        pids = network.pids()
        self.assertIn(client.pid, pids)
        network.close()
        network.close()
        left = [pid for pid in pids if not _gone(pid)]
        self.assertEqual(left, [])


class FailureTests(SynchronousTestCase):
    """
    A network that is not ready in time fails loudly and cleans up.
    """

    def test_startTimeout(self) -> None:
        """
        When the network is not ready within C{timeout}, L{TorNetwork.start}
        raises L{TorNetworkError} with the ends of the tors' logs, and none
        of its tors is left running.
        """
        workdir = tempfile.mkdtemp(prefix="beam-tornet-")
        self.addCleanup(shutil.rmtree, workdir, True)
        network = TorNetwork(workdir, relays=1)
        error = self.assertRaises(TorNetworkError, network.start, 0.5)
        self.assertIn("not ready in time", str(error))
        self.assertIn("--- auth0", str(error))
        self.assertIn("notice.log", str(error))
        pids = network.pids()
        self.assertEqual([pid for pid in pids if not _gone(pid)], [])
        network.close()

    def test_sweepLeftovers(self) -> None:
        """
        L{tornet.sweepLeftovers} kills a process registered by a network
        whose owner died, but only while its command line still names the
        torrc it was registered with, and forgets the entry.
        """
        torrc = os.path.join(tempfile.mkdtemp(prefix="beam-tornet-"), "torrc")
        self.addCleanup(shutil.rmtree, os.path.dirname(torrc), True)
        orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", torrc])
        stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        self.addCleanup(stranger.kill)
        self.addCleanup(orphan.kill)
        dead = subprocess.Popen(["true"])
        dead.wait()
        os.makedirs(tornet.REGISTRY, exist_ok=True)
        entries = [os.path.join(tornet.REGISTRY, f"{dead.pid}-{p.pid}") for p in (orphan, stranger)]
        for entry in entries:
            with open(entry, "w") as f:
                f.write(torrc)
        killed = tornet.sweepLeftovers()
        self.assertIn(orphan.pid, killed)
        self.assertNotIn(stranger.pid, killed)
        self.assertEqual(orphan.wait(timeout=10), -9)
        self.assertIsNone(stranger.poll())
        self.assertEqual([e for e in entries if os.path.exists(e)], [])
