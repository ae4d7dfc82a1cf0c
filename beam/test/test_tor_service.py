"""
Tests for L{beam.daemon.tor}: the C{"tor"} service, with a fake txtorcon
(no tor runs): launching and attaching, bootstrap progress, the onion
service's key, stalled uploads, failures and stopping.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Optional

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from beam.daemon.config import TorConfig
from beam.daemon.tor import TorService, TorState, _retryConnect, controlEndpointString
from beam.errors import DialError, TorError
from beam.identity.multiaddr import Multiaddr
from beam.p2p.transport.tor import TorTransport

HOST = "c" * 56
KEY = "ED25519-V3:" + "k" * 86

STATUS_KEYS = {"mode", "state", "progress", "summary", "launched", "control", "socks", "onion", "error",
               "connections"}


class FakeProtocol:
    """
    txtorcon's control protocol: C{get_info} answers from C{info}.
    """

    def __init__(self) -> None:
        self.info = {
            "status/bootstrap-phase": 'NOTICE BOOTSTRAP PROGRESS=100 TAG=done SUMMARY="Done"',
            "status/circuit-established": "1",
            "net/listeners/socks": '"127.0.0.1:9050"',
        }

    def get_info(self, key: str) -> Deferred[dict[str, str]]:
        return succeed({key: self.info[key]})


class FakeOnion:
    def __init__(self, ports: list[str], key: Optional[str]) -> None:
        self.ports = set(ports)
        self.hostname = HOST + ".onion"
        self.private_key = key or KEY
        self.removed = False

    def remove(self) -> Deferred[None]:
        self.removed = True
        return succeed(None)


class FakeConfig:
    def __init__(self) -> None:
        self.EphemeralOnionServices: list[FakeOnion] = []


class FakeTor:
    """
    txtorcon's C{Tor}: each C{create_onion_service} adds the onion at once
    (as ADD_ONION does) and returns a Deferred the test fires (the upload).
    """

    def __init__(self) -> None:
        self.protocol = FakeProtocol()
        self.config = FakeConfig()
        self.creates: list[dict[str, Any]] = []
        self.uploads: list[Deferred[Any]] = []
        self.quits = 0
        self.autoUpload = True

    def get_config(self) -> Deferred[FakeConfig]:
        return succeed(self.config)

    def create_onion_service(self, ports: list[str], **kw: Any) -> Deferred[Any]:
        self.creates.append(dict(kw, ports=ports))
        onion = FakeOnion(ports, kw.get("private_key"))
        self.config.EphemeralOnionServices.append(onion)
        d: Deferred[Any] = Deferred()
        self.uploads.append(d)
        if self.autoUpload:
            d.callback(onion)
        return d

    def quit(self) -> Deferred[None]:
        self.quits += 1
        return succeed(None)


class FakeProcess:
    def __init__(self, exitsOn: str = "TERM") -> None:
        self.pid: Optional[int] = 4242
        self.signals: list[str] = []
        self.exitsOn = exitsOn

    def signalProcess(self, signal: str) -> None:
        self.signals.append(signal)
        if signal in (self.exitsOn, "KILL"):
            self.pid = None


class FakeHost:
    def __init__(self) -> None:
        self.transports: list[Any] = []
        self.listened: list[Multiaddr] = []
        self.connections: list[Any] = []

    def listen(self, addrs: list[Multiaddr]) -> Deferred[None]:
        self.listened.extend(addrs)
        return succeed(None)

    def liveConnections(self) -> list[Any]:
        return self.connections


class Reactor(MemoryReactorClock):
    """
    A memory reactor that can "spawn" fake processes.
    """

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[FakeProcess] = []
        self.nextProcess = FakeProcess()

    def spawnProcess(self, *args: Any, **kw: Any) -> FakeProcess:  # type: ignore[override]
        self.spawned.append(self.nextProcess)
        return self.nextProcess


class ServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = Reactor()
        self.home = Path(tempfile.mkdtemp(prefix="bt", dir="/tmp"))
        self.addCleanup(__import__("shutil").rmtree, self.home, True)
        self.host = FakeHost()
        self.tor = FakeTor()
        self.launches: list[dict[str, Any]] = []
        self.launchResult: Optional[Deferred[Any]] = None

    def launch(self, reactor: Any, **kw: Any) -> Deferred[Any]:
        self.launches.append(kw)
        reactor.spawnProcess(None, "tor")
        kw["progress_updates"](45, "loading_descriptors", "Loading relay descriptors")
        if self.launchResult is not None:
            return self.launchResult
        return succeed(self.tor)

    def service(self, **kw: Any) -> TorService:
        options = kw.pop("options", {})
        config = TorConfig(**{"mode": "fallback", "binary": "/usr/sbin/tor", **kw})
        return TorService(self.reactor, self.host, self.home, config, launch=self.launch,
                          connect=self.connect, **options)

    def connect(self, reactor: Any, endpoint: Any) -> Deferred[Any]:
        self.endpoint = endpoint
        return succeed(self.tor)

    def test_off(self) -> None:
        """
        In mode C{"off"} the service does nothing: no transport, ready at
        once, a two-key status.
        """
        s = TorService(self.reactor, self.host, self.home, TorConfig())
        s.startService()
        self.successResultOf(s.whenReady())
        self.assertEqual(s.status(), {"mode": "off", "state": "off"})
        self.assertEqual(self.host.transports, [])
        self.successResultOf(s.stopService())

    def test_launchPublishes(self) -> None:
        """
        Launching: tor is launched with the data directory (0700), the
        binary and a progress callback; once bootstrapped the onion service
        is created on the UNIX socket target and the node listens on its
        address; the status says so with exactly the contract's keys.
        """
        s = self.service()
        [transport] = self.host.transports
        self.assertIsInstance(transport, TorTransport)
        self.assertIs(s.transport, transport)
        s.startService()
        ready = s.whenReady()
        self.successResultOf(ready)
        [kw] = self.launches
        self.assertEqual(kw["data_directory"], str(self.home / "tor" / "data"))
        self.assertEqual(kw["tor_binary"], "/usr/sbin/tor")
        self.assertEqual(stat.S_IMODE(os.stat(self.home / "tor" / "data").st_mode), 0o700)
        self.assertEqual(stat.S_IMODE(os.stat(self.home / "tor").st_mode), 0o700)
        [create] = self.tor.creates
        sock = os.path.realpath(self.home / "tor" / "onion.sock")
        self.assertEqual(create["ports"], [f"4001 unix:{sock}"])
        self.assertEqual((create["version"], create["private_key"], create["detach"]), (3, None, False))
        onion = Multiaddr(f"/onion3/{HOST}:4001")
        self.assertEqual(self.host.listened, [onion])
        self.assertEqual(transport.onion, onion)
        status = s.status()
        self.assertEqual(set(status), STATUS_KEYS)
        self.assertEqual(
            {k: status[k] for k in ("mode", "state", "progress", "launched", "socks", "onion", "error",
                                    "connections")},
            {"mode": "fallback", "state": "ready", "progress": 100, "launched": True, "socks": "127.0.0.1:9050",
             "onion": str(onion), "error": None, "connections": 0},
        )
        self.assertIs(transport.tor, self.tor)

    def test_keyKept(self) -> None:
        """
        The key tor made on the first run is saved (0600, directory 0700)
        and given again on the next run: the onion address stays the same.
        """
        s = self.service()
        s.startService()
        self.successResultOf(s.whenReady())
        key = self.home / "tor" / "onion_v3_key"
        self.assertEqual(key.read_text().strip(), KEY)
        self.assertEqual(stat.S_IMODE(os.stat(key).st_mode), 0o600)
        self.successResultOf(s.stopService())
        self.host.transports = []
        again = self.service()
        again.startService()
        self.successResultOf(again.whenReady())
        self.assertEqual(self.tor.creates[-1]["private_key"], KEY)
        self.assertEqual(again.status()["onion"], f"/onion3/{HOST}:4001")

    def test_progress(self) -> None:
        """
        While tor bootstraps the state is C{"bootstrapping"} with tor's
        percentage, and dials wait saying so.
        """
        self.launchResult = Deferred()
        s = self.service()
        self.assertEqual(s.state, TorState.STOPPED)
        s.startService()
        self.assertEqual((s.state, s.progress), (TorState.BOOTSTRAPPING, 45))
        self.assertEqual(s.status()["summary"], "Loading relay descriptors")
        self.assertEqual(s.transport._notReady, "Tor is still starting (45 %)")
        self.launchResult.callback(self.tor)
        self.assertEqual(s.state, TorState.READY)

    def test_waitsForCircuit(self) -> None:
        """
        Bootstrapped but without a circuit yet: the service waits before
        publishing.
        """
        self.tor.protocol.info["status/circuit-established"] = "0"
        s = self.service()
        s.startService()
        self.assertEqual(s.state, TorState.BOOTSTRAPPING)
        self.assertEqual(self.tor.creates, [])
        self.tor.protocol.info["status/circuit-established"] = "1"
        self.reactor.advance(1)
        self.assertEqual(s.state, TorState.READY)

    def test_stalledUpload(self) -> None:
        """
        A descriptor upload that stalls makes the service remove the onion
        service (keeping the key tor made) and create it again, with the
        same key and a longer wait.
        """
        self.tor.autoUpload = False
        s = self.service(options={"uploadStall": 30.0})
        s.startService()
        self.assertEqual(s.state, TorState.PUBLISHING)
        [first] = self.tor.config.EphemeralOnionServices
        self.reactor.advance(29)
        self.assertFalse(first.removed)
        self.reactor.advance(1)
        self.assertTrue(first.removed)
        self.assertNotIn(first, self.tor.config.EphemeralOnionServices)
        self.assertEqual(len(self.tor.creates), 2)
        self.assertEqual(self.tor.creates[1]["private_key"], KEY)
        self.assertEqual((self.home / "tor" / "onion_v3_key").read_text().strip(), KEY)
        self.reactor.advance(59)
        self.assertEqual(len(self.tor.creates), 2)
        self.tor.uploads[1].callback(FakeOnion([], KEY))
        self.successResultOf(s.whenReady())
        self.assertEqual(s.state, TorState.READY)

    def test_publishTimeout(self) -> None:
        """
        An onion service never published within C{bootstrapTimeout} fails
        the start with L{TorError}.
        """
        self.tor.autoUpload = False
        s = self.service(bootstrapTimeout=100.0, options={"uploadStall": 30.0})
        s.startService()
        ready = s.whenReady()
        self.reactor.advance(30)
        self.reactor.advance(60)
        self.reactor.advance(10)
        f = self.failureResultOf(ready, TorError)
        self.assertIn("not published within 100 s", str(f.value))
        self.assertEqual(s.state, TorState.FAILED)

    def test_launchFails(self) -> None:
        """
        A launch that fails fails L{whenReady} with L{TorError}; the status
        says C{"failed"} with the reason, dials fail at once, and the tor
        process launch spawned is ended.
        """
        self.launchResult = fail(RuntimeError("Tor exited with error-code 1"))
        process = self.reactor.nextProcess = FakeProcess(exitsOn="never")
        s = self.service()
        s.startService()
        ready = s.whenReady()
        self.assertEqual(s.status()["state"], "failed")
        self.assertNoResult(ready)  # until the process is gone
        for _ in range(120):
            self.reactor.advance(0.1)
        f = self.failureResultOf(ready, TorError)
        self.assertIn("Tor exited with error-code 1", str(f.value))
        status = s.status()
        self.assertEqual(status["state"], "failed")
        self.assertIn("error-code 1", status["error"])
        d = s.transport.dial(Multiaddr(f"/onion3/{HOST}:4001"), None, 10)
        self.assertIn("Tor is not running", str(self.failureResultOf(d, DialError).value))
        self.assertEqual(process.signals, ["TERM", "KILL"])
        self.assertIsNone(process.pid)

    def test_noBinary(self) -> None:
        """
        With no tor to launch, the start fails saying how to get one.
        """
        s = self.service()
        s.binary = None
        import beam.daemon.tor as module

        self.patch(module, "_findTor", lambda: None)
        s.startService()
        self.assertIn("install tor", str(self.failureResultOf(s.whenReady(), TorError).value))

    def test_extraOptions(self) -> None:
        """
        The configured torrc options reach launch() in a TorConfig (which
        puts them on tor's command line): single values as values, repeated
        options as lists.
        """
        s = self.service()
        s.options = (("TestingTorNetwork", ("1",)), ("DirAuthority", ("a 1", "b 2")))
        s.startService()
        config = self.launches[0]["_tor_config"]
        args = list(config.config_args())
        self.assertIn(("TestingTorNetwork", "1"), args)
        self.assertIn(("DirAuthority", "a 1"), args)
        self.assertIn(("DirAuthority", "b 2"), args)

    def test_launchGetsRetryingConnector(self) -> None:
        """
        launch() is given the control socket in the data directory and a
        connector of ours for it (L{_retryConnect}: txtorcon's own
        connects once, which can be before the socket exists).
        """
        s = self.service()
        s.startService()
        [kw] = self.launches
        path = os.path.join(os.path.realpath(self.home / "tor" / "data"), "control.socket")
        self.assertEqual(kw["control_port"], f"unix:{path}")
        self.assertTrue(callable(kw["connection_creator"]))

    def test_attach(self) -> None:
        """
        Attaching: connects to the control endpoint, reads tor's SOCKS
        port, waits for bootstrap, and targets 127.0.0.1 (a system tor
        cannot open our socket); nothing is launched.
        """
        self.tor.protocol.info["status/bootstrap-phase"] = (
            'NOTICE BOOTSTRAP PROGRESS=50 TAG=loading_descriptors SUMMARY="Loading relay descriptors"')
        self.tor.protocol.info["net/listeners/socks"] = '"127.0.0.1:9150"'
        s = self.service(control="tcp:host=127.0.0.1:port=9051")
        s.startService()
        self.assertEqual((s.state, s.progress), (TorState.BOOTSTRAPPING, 50))
        self.assertEqual(self.endpoint._port, 9051)
        self.tor.protocol.info["status/bootstrap-phase"] = 'NOTICE BOOTSTRAP PROGRESS=100 TAG=done SUMMARY="Done"'
        self.reactor.advance(1)
        self.successResultOf(s.whenReady())
        self.assertEqual(self.launches, [])
        status = s.status()
        self.assertEqual((status["launched"], status["socks"], status["control"]),
                         (False, "127.0.0.1:9150", "tcp:host=127.0.0.1:port=9051"))
        self.assertEqual(s.transport.socks, "127.0.0.1:9150")
        self.assertTrue(self.tor.creates[0]["ports"][0].startswith("4001 0.0.0.0:")
                        or self.tor.creates[0]["ports"][0].startswith("4001 127.0.0.1:"))

    def test_bootstrapTimeout(self) -> None:
        """
        A tor that does not bootstrap within C{bootstrapTimeout} fails the
        start, saying where it was.
        """
        self.tor.protocol.info["status/bootstrap-phase"] = (
            'NOTICE BOOTSTRAP PROGRESS=50 TAG=loading_descriptors SUMMARY="Loading relay descriptors"')
        s = self.service(control="tcp:host=127.0.0.1:port=9051", bootstrapTimeout=20.0)
        s.startService()
        ready = s.whenReady()
        self.reactor.advance(10)
        self.assertNoResult(ready)
        self.reactor.advance(10)
        f = self.failureResultOf(ready, TorError)
        self.assertIn("not ready within 20 s", str(f.value))
        self.assertIn("Loading relay descriptors", str(f.value))
        self.assertEqual(self.tor.quits, 1)

    def test_stopLaunched(self) -> None:
        """
        Stopping removes the onion service, closes the target, quits tor
        and makes sure the launched process is gone.
        """
        process = self.reactor.nextProcess = FakeProcess()
        s = self.service()
        s.startService()
        self.successResultOf(s.whenReady())
        onion = self.tor.config.EphemeralOnionServices[-1]
        d = s.stopService()
        self.successResultOf(d)
        self.assertEqual(self.tor.quits, 1)
        self.assertEqual(process.signals, ["TERM"])
        self.assertIsNone(s.transport._target)
        self.assertEqual(s.status()["state"], "stopped")
        self.assertIsNone(s.status()["onion"])
        del onion

    def test_stopAttached(self) -> None:
        """
        Stopping an attached service removes our onion service and closes
        the control connection; no process is signalled.
        """
        s = self.service(control="unix:path=/run/tor/control")
        s.startService()
        self.successResultOf(s.whenReady())
        removed = s._onionService
        self.successResultOf(s.stopService())
        self.assertTrue(removed.removed)
        self.assertEqual(self.tor.quits, 1)
        self.assertEqual(self.reactor.spawned, [])

    def test_stopWhileLaunching(self) -> None:
        """
        Stopping while tor is still launching ends the spawned process
        (SIGTERM, SIGKILL if it lingers).
        """
        self.launchResult = Deferred()
        process = self.reactor.nextProcess = FakeProcess(exitsOn="never")
        s = self.service()
        s.startService()
        d = s.stopService()
        self.assertNoResult(d)
        for _ in range(120):
            self.reactor.advance(0.1)
        self.successResultOf(d)
        self.assertEqual(process.signals, ["TERM", "KILL"])
        self.assertEqual(s.state, TorState.STOPPED)

    def test_connectionsCounted(self) -> None:
        """
        The status counts open connections over the C{"tor"} transport.
        """
        s = self.service()
        self.host.connections = [type("C", (), {"transport": t})() for t in ("tor", "tcp", "tor")]
        self.assertEqual(s.status()["connections"], 2)


class ControlConnectTests(SynchronousTestCase):
    """
    Connecting to a launched tor's control socket waits for it to appear:
    txtorcon tries once, when tor says it opens it, which can be before
    the socket exists.
    """

    def test_retriesUntilConnected(self) -> None:
        """
        Connection failures are retried every step until one succeeds.
        """
        clock = Clock()
        attempts: list[int] = []

        def connect() -> Deferred[Any]:
            attempts.append(1)
            if len(attempts) < 3:
                return fail(ConnectError("No such file or directory"))
            return succeed("protocol")

        d = _retryConnect(clock, connect, wait=5.0, step=0.1)
        self.assertNoResult(d)
        clock.advance(0.1)
        self.assertNoResult(d)
        clock.advance(0.1)
        self.assertEqual(self.successResultOf(d), "protocol")
        self.assertEqual(len(attempts), 3)

    def test_givesUp(self) -> None:
        """
        After C{wait} seconds of failures the last failure is the result.
        """
        clock = Clock()
        d = _retryConnect(clock, lambda: fail(ConnectError("refused")), wait=1.0, step=0.1)
        clock.pump([0.1] * 20)
        self.failureResultOf(d, ConnectError)

    def test_otherErrorsAreNotRetried(self) -> None:
        """
        Anything but a connection failure ends it at once.
        """
        clock = Clock()
        calls: list[int] = []

        def connect() -> Deferred[Any]:
            calls.append(1)
            return fail(ValueError("bad"))

        self.failureResultOf(_retryConnect(clock, connect, wait=5.0), ValueError)
        self.assertEqual(len(calls), 1)


class ControlEndpointTests(SynchronousTestCase):
    def test_forms(self) -> None:
        """
        The short forms of a control endpoint become Twisted endpoint
        strings.
        """
        self.assertEqual(controlEndpointString("9051"), "tcp:host=127.0.0.1:port=9051")
        self.assertEqual(controlEndpointString("127.0.0.1:9051"), "tcp:host=127.0.0.1:port=9051")
        self.assertEqual(controlEndpointString("unix:/run/tor/control"), "unix:/run/tor/control")
        self.assertEqual(controlEndpointString("unix:path=/x"), "unix:path=/x")


class DaemonWiringTests(SynchronousTestCase):
    """
    How L{BeamDaemon<beam.daemon.service.BeamDaemon>} builds its node for
    each Tor mode.
    """

    def daemon(self, mode: str) -> Any:
        from beam.daemon.config import Config
        from beam.daemon.service import BeamDaemon
        from beam.identity.keys import Identity

        home = Path(tempfile.mkdtemp(prefix="bd", dir="/tmp"))
        self.addCleanup(__import__("shutil").rmtree, home, True)
        config = Config(listen=(Multiaddr("/ip4/127.0.0.1/tcp/0"),), tor=TorConfig(mode=mode))
        return BeamDaemon(MemoryReactorClock(), home, Identity.generate(), config, control=False, plugins=())

    def test_always(self) -> None:
        """
        Mode C{"always"}: the node's only transport is Tor's and it has no
        listen address; the C{"tor"} service is made first and uses that
        transport.
        """
        d = self.daemon("always")
        [transport] = d.node.transports[:1]
        self.assertIsInstance(transport, TorTransport)
        self.assertFalse(any(t.name == "tcp" for t in d.node.transports))
        self.assertEqual(d.node.configuredListenAddrs, [])
        self.assertIs(d.service("tor").transport, transport)
        self.assertEqual(d._registered[0].name, "tor")

    def test_fallback(self) -> None:
        """
        Mode C{"fallback"}: TCP first, then Tor; the listen addresses stay.
        """
        d = self.daemon("fallback")
        names = [t.name for t in d.node.transports]
        self.assertEqual(names[:2], ["tcp", "tor"])
        self.assertEqual(len(d.node.configuredListenAddrs), 1)

    def test_off(self) -> None:
        """
        Mode C{"off"}: no Tor transport; the service's status says off.
        """
        d = self.daemon("off")
        self.assertFalse(any(t.name == "tor" for t in d.node.transports))
        self.assertEqual(dict(d.status().sections)["tor"], {"mode": "off", "state": "off"})
