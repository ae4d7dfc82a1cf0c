"""
Plugins (L{beam.daemon.plugins}): a separate package adds a service to
every node with one file in its C{twisted/plugins/}.

The example package of C{docs/examples/hello-plugin/} is "installed" by
copying it into a temporary directory: in process, that directory's
C{twisted/plugins} joins C{twisted.plugins.__path__} (what Twisted does
at import for every C{sys.path} entry); for the real C{beam} processes it
is put on C{PYTHONPATH}, as an installed package would be on C{sys.path}.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import twisted.plugins
from twisted.application.service import Service
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from beam.cli import statusText
from beam.daemon.config import Config
from beam.daemon.control import ControlClient, ControlError
from beam.daemon.plugins import BeamProtocol, BeamService, IBeamService, InvalidServiceName, discoverPlugins
from beam.daemon.service import BeamDaemon
from beam.identity.keys import Identity
from beam.identity.multiaddr import Multiaddr
from beam.p2p.host.node import Node

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "docs" / "examples" / "hello-plugin"
BIN = Path(sys.executable).parent
LOOPBACK = (Multiaddr.fromString("/ip4/127.0.0.1/tcp/0"),)


def installExample(testCase: TestCase) -> Path:
    """
    Copy the example plugin package into a new directory (short, for the
    control socket's path) and return it: C{<dir>/hello_beam/} and
    C{<dir>/twisted/plugins/hello_beam_plugin.py}.
    """
    root = Path(tempfile.mkdtemp(prefix="beamplug-"))
    testCase.addCleanup(shutil.rmtree, root, True)
    shutil.copytree(EXAMPLE / "hello_beam", root / "hello_beam")
    (root / "twisted" / "plugins").mkdir(parents=True)
    shutil.copy(EXAMPLE / "twisted" / "plugins" / "hello_beam_plugin.py", root / "twisted" / "plugins")
    return root


def installInProcess(testCase: TestCase) -> Path:
    """
    Make the example visible to this process's L{getPlugins}.
    """
    root = installExample(testCase)
    sys.path.insert(0, str(root))
    twisted.plugins.__path__.append(str(root / "twisted" / "plugins"))

    def uninstall() -> None:
        sys.path.remove(str(root))
        twisted.plugins.__path__.remove(str(root / "twisted" / "plugins"))
        for name in [m for m in sys.modules if m == "hello_beam" or m.startswith("hello_beam.")
                     or m == "twisted.plugins.hello_beam_plugin"]:
            del sys.modules[name]

    testCase.addCleanup(uninstall)
    return root


def shortHome(testCase: TestCase) -> Path:
    home = Path(tempfile.mkdtemp(prefix="beamhome-"))
    os.chmod(home, 0o700)
    testCase.addCleanup(shutil.rmtree, home, True)
    return home


class _Collect(Protocol):
    """
    Writes C{line} once connected, collects the answer until the stream ends.
    """

    def __init__(self, line: bytes) -> None:
        self.line = line
        self.data = b""
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.line)

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        if not self.done.called:
            self.done.callback(self.data)


@inlineCallbacks
def ask(testCase: TestCase, addr: str, protocol: str, line: bytes) -> Any:
    """
    Open a stream to C{addr} with C{protocol} from a fresh node, write
    C{line}, and return everything the other side wrote before closing.
    """
    node = Node(reactor, Identity.generate(), [])
    yield node.startService()
    testCase.addCleanup(node.stopService)
    collector = _Collect(line)
    yield node.openStream(Multiaddr.fromString(addr), [protocol], lambda: collector)
    answer = yield collector.done
    return answer


class _Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)
        self.transport.loseConnection()


class _Failing(Service):
    def startService(self) -> None:
        raise RuntimeError("cannot start")


@implementer(IBeamService)
class _BadName:
    name = "Not A Name"
    description = ""

    def makeService(self, context: Any) -> Any:
        raise AssertionError("never made")

    def status(self, service: Any) -> Any:
        return None

    def controlResource(self, service: Any) -> Any:
        return None


class PluginDaemonTests(TestCase):
    """
    A daemon runs what plugins register, next to its built-in services.
    """

    timeout = 60

    @inlineCallbacks
    def startDaemon(self, config: Config = Config(listen=LOOPBACK), **kw: Any) -> Any:
        daemon = BeamDaemon(reactor, shortHome(self), Identity.generate(), config, **kw)
        yield daemon.start()
        self.addCleanup(daemon.stopService)
        return daemon

    @inlineCallbacks
    def test_examplePluginServedAndShown(self) -> Any:
        """
        The example plugin, found by L{getPlugins}, runs as the daemon's
        child C{"hello"} after the built-ins (and before the dashboard,
        which starts last): its protocol is served to other nodes, its
        status is in C{GET /v1/status} (and C{beam status}'s text) under
        its name, and its resource answers at C{/v1/hello}.
        """
        installInProcess(self)
        daemon = yield self.startDaemon()
        self.assertEqual([s.name for s in daemon][-3:], ["dns", "hello", "web"])
        self.assertTrue(daemon.node.hasStreamHandler("/hello/1.0.0"))
        addr = str(daemon.node.advertisedAddrs()[0])
        answer = yield ask(self, addr, "/hello/1.0.0", b"alice\n")
        self.assertEqual(answer, b"hello, alice!\n")
        client = ControlClient(reactor, daemon.home)
        status = yield client.request("GET", "/v1/status")
        self.assertEqual(status["hello"], {"protocol": "/hello/1.0.0", "greeting": "hello", "greeted": 1})
        self.assertIn({"name": "hello", "origin": "plugin", "state": "running",
                       "description": "greets peers on /hello/1.0.0"}, status["services"])
        changed = yield client.request("POST", "/v1/hello", {"greeting": "hi"})
        self.assertEqual(changed["greeting"], "hi")
        answer = yield ask(self, addr, "/hello/1.0.0", b"bob\n")
        self.assertEqual(answer, b"hi, bob!\n")
        e = yield self.assertFailure(client.request("POST", "/v1/hello", {"greeting": ""}), ControlError)
        self.assertEqual(e.status, 400)
        text = statusText((yield client.request("GET", "/v1/status")))
        self.assertIn("  hello        running  (greets peers on /hello/1.0.0)", text)
        self.assertIn("hello:\n  protocol: /hello/1.0.0\n  greeting: hi\n  greeted: 2", text)

    @inlineCallbacks
    def test_disabledByConfiguration(self) -> Any:
        """
        C{[plugins] disable = ["hello"]} leaves the plugin out (shown as
        disabled); C{enabled = false} leaves every plugin out.
        """
        installInProcess(self)
        daemon = yield self.startDaemon(Config(listen=LOOPBACK, disabledPlugins=("hello",)))
        self.assertNotIn("hello", [s.name for s in daemon])
        self.assertFalse(daemon.node.hasStreamHandler("/hello/1.0.0"))
        (info,) = [s for s in daemon.status().services if s.name == "hello"]
        self.assertEqual((info.origin, info.state), ("plugin", "disabled"))
        daemon = yield self.startDaemon(Config(listen=LOOPBACK, plugins=False))
        self.assertEqual([s.name for s in daemon.status().services],
                         ["tor", "nat", "mdns", "tunnels", "requests", "kademlia", "pubsub", "names", "forwards", "dns"])
        self.assertEqual(discoverPlugins(enabled=False), ([], []))

    @inlineCallbacks
    def test_protocolPlugin(self) -> Any:
        """
        L{BeamProtocol} serves one protocol with a new protocol instance
        per stream, and reports how many streams it served.
        """
        daemon = yield self.startDaemon(plugins=[BeamProtocol("echo2", "/x/echo/1.0.0", _Echo)])
        addr = str(daemon.node.advertisedAddrs()[0])
        self.assertEqual((yield ask(self, addr, "/x/echo/1.0.0", b"ping")), b"ping")
        status = daemon.status().section("echo2")
        self.assertEqual((status.protocol, status.streams), ("/x/echo/1.0.0", 1))
        body = yield ControlClient(reactor, daemon.home).request("GET", "/v1/echo2")
        self.assertEqual(body, {"protocol": "/x/echo/1.0.0", "streams": 1})
        yield daemon.stopService()
        self.assertFalse(daemon.node.hasStreamHandler("/x/echo/1.0.0"))

    @inlineCallbacks
    def test_brokenPluginsDoNotStopTheNode(self) -> Any:
        """
        A plugin whose service cannot be made or started, one with an
        invalid name and one taking a built-in's name are each logged and
        reported as failed; the node and the other services run.
        """
        def cannotMake(context: Any) -> Any:
            raise RuntimeError("cannot make")

        daemon = yield self.startDaemon(plugins=[
            BeamService("unmade", cannotMake), BeamService("unstarted", lambda c: _Failing()),
            _BadName(), BeamService("tunnels", lambda c: Service()),
        ])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)
        states = {s.name: s.state for s in daemon.status().services if s.origin == "plugin"}
        self.assertEqual(states, {
            "unmade": "failed: cannot make",
            "unstarted": "failed: cannot start",
            "Not A Name": "failed: service name 'Not A Name' must be 1-32 lower-case letters, digits or '-', "
                          "starting with a letter",
            "tunnels": "failed: two services are named 'tunnels'",
        })
        self.assertTrue(daemon.tunnels.running)
        self.assertTrue(daemon.node.listenAddrs)

    def test_serviceNames(self) -> None:
        """
        A registration's name must be short, lower-case, and not one the
        daemon uses itself.
        """
        for name in ["", "Hello", "1x", "a_b", "x" * 33, "status", "network", "addrs"]:
            self.assertRaises(InvalidServiceName, BeamService, name, "x.y")
        self.assertEqual(BeamService("gossip-2", "x.y").name, "gossip-2")


class InstalledPluginTests(TestCase):
    """
    Real C{beam} processes with the example package on C{PYTHONPATH}.
    """

    timeout = 90

    def test_realDaemonServesPlugin(self) -> Any:
        """
        C{beam daemon} loads the plugin at start: another node gets the
        plugin's answer on C{/hello/1.0.0}, and C{beam status --json}
        shows the plugin's status and its entry among the services.
        """
        root = installExample(self)
        home = str(shortHome(self))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
        proc = subprocess.Popen(
            [str(BIN / "beam"), "--home", home, "daemon", "--json", "--listen", "/ip4/127.0.0.1/tcp/0"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        self.addCleanup(lambda: proc.poll() is None and (proc.kill(), proc.wait()))
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        self.assertEqual(ready["event"], "ready", ready)

        d = ask(self, ready["addrs"][0], "/hello/1.0.0", b"carol\n")

        def check(answer: bytes) -> None:
            self.assertEqual(answer, b"hello, carol!\n")
            out = subprocess.run([str(BIN / "beam"), "--home", home, "status", "--json"],
                                 capture_output=True, text=True, timeout=30, env=env)
            self.assertEqual(out.returncode, 0, out.stderr)
            status = json.loads(out.stdout)
            self.assertEqual(status["hello"], {"protocol": "/hello/1.0.0", "greeting": "hello", "greeted": 1})
            self.assertIn({"name": "hello", "origin": "plugin", "state": "running",
                           "description": "greets peers on /hello/1.0.0"}, status["services"])
            text = subprocess.run([str(BIN / "beam"), "--home", home, "status"],
                                  capture_output=True, text=True, timeout=30, env=env)
            self.assertIn("greeted: 1", text.stdout)

        return d.addCallback(check)
