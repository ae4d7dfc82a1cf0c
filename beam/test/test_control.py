"""
Tests for L{beam.daemon.control}: the control socket, the daemon's routes
and each service's resource, over a real UNIX socket, with fake services.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, inlineCallbacks, succeed
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from beam.controlapi import JSONResource
from beam.daemon.control import (
    ControlClient,
    ControlError,
    ControlService,
    ControlSocketError,
    NodeAlreadyRunning,
    NoNodeRunning,
    nodeRunning,
)
from beam.daemon.control.resource import ControlRoot, StatusResource
from beam.daemon.status import DaemonStatus, ServiceInfo, statusJSON
from beam.dht.resource import DHTResource
from beam.dht.status import DHTStatus, RoutesStatus
from beam.errors import BeamError, Conflict, NotFound
from beam.identity.keys import Identity, PeerID
from beam.names.resource import NamesResource
from beam.names.status import NameStatus
from beam.p2p.host.status import NodeStatus
from beam.tunnel.resource import ForwardsResource, TunnelsResource


class _Recorder:
    """
    Records calls; C{results[name]} overrides what a method returns (a
    value, a Deferred, or an exception instance to raise).
    """

    def __init__(self, calls: list[tuple[str, Any]], results: dict[str, Any]) -> None:
        self.calls = calls
        self.results = results

    def _answer(self, name: str, args: Any) -> Any:
        self.calls.append((name, args))
        result = self.results.get(name, {"ok": name})
        if isinstance(result, BaseException):
            raise result
        return result


class FakeTunnels(_Recorder):
    def exposePort(self, port: int, name: Any, udp: bool, compress: bool, allow: Any, secret: Any) -> Any:
        return self._answer("addTunnel", dict(port=port, name=name, udp=udp, compress=compress,
                                              allow=allow, secret=secret))

    def remove(self, key: str) -> Any:
        return self._answer("removeTunnel", key)

    def status(self) -> Any:
        return self._answer("tunnels", None)


class FakeForwards(_Recorder):
    def add(self, target: str, port: Any, bind: Any, service: Any, compress: bool, udp: bool) -> Any:
        return succeed(None).addCallback(lambda _: self._answer(
            "addForward", dict(target=target, port=port, bind=bind, udp=udp, service=service, compress=compress)))

    def remove(self, key: str) -> Any:
        return self._answer("removeForward", key)

    def status(self) -> Any:
        return ()


class FakeNames(_Recorder):
    def register(self, name: str, services: list[str]) -> Any:
        result = self._answer("registerName", dict(name=name, services=services))
        return result if isinstance(result, Deferred) else succeed(result)

    def withdraw(self, name: str) -> Any:
        return self._answer("withdrawName", dict(name=name))

    def resolve(self, name: str, acceptNewKey: bool) -> Any:
        return self._answer("resolveName", dict(name=name, acceptNewKey=acceptNewKey))

    def status(self) -> Any:
        return (NameStatus(name="alice", peerID="12D3", storedOn=3),)


class FakeDHT(_Recorder):
    bootstrapAddrs = ["/configured"]

    def status(self) -> Any:
        return DHTStatus(mode="server", routingTableSize=7, recordsHeld=2)

    def routes(self) -> Any:
        return self._answer("networkRoutes", None)

    def bootstrap(self, addrs: list[Any]) -> Any:
        return self._answer("networkBootstrap", dict(addrs=[str(a) for a in addrs]))


class FakeDaemon(_Recorder):
    """
    What L{ControlRoot} needs of a daemon, with fake services mounted.
    """

    def __init__(self) -> None:
        super().__init__([], {})
        self.tunnels = FakeTunnels(self.calls, self.results)
        self.forwards = FakeForwards(self.calls, self.results)
        self.names = FakeNames(self.calls, self.results)
        self.dht = FakeDHT(self.calls, self.results)
        self.root = ControlRoot(self)
        self.root.mount("tunnels", TunnelsResource(self.tunnels))
        self.root.mount("forwards", ForwardsResource(self.forwards))
        self.root.mount("names", NamesResource(self.names))
        self.root.mount("kademlia", DHTResource(self.dht))

    def status(self) -> Any:
        result = self._answer("status", None)
        if isinstance(result, DaemonStatus):
            return result
        return DaemonStatus(
            node=NodeStatus(peerID="12D3", addrs=("/ip4/192.0.2.1/tcp/1/p2p/12D3",),
                            listenAddrs=("/ip4/0.0.0.0/tcp/1",)),
            services=(ServiceInfo(name="names", origin="builtin", state="running"),),
            sections=(("names", self.names.status()), ("kademlia", self.dht.status())),
        )

    def shutdown(self) -> Any:
        return self._answer("shutdown", None)


def _shortHome(testCase: TestCase) -> Path:
    # mktemp() paths are too long for sun_path; use a short private dir.
    home = Path(tempfile.mkdtemp(prefix="beamctl-"))
    os.chmod(home, 0o700)
    testCase.addCleanup(shutil.rmtree, home, True)
    return home


def _deadPID() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


class ControlRouteTests(TestCase):
    """
    Every route, through a real socket, with the L{ControlClient}: the
    daemon's own and each service's resource, over fake services.
    """

    @inlineCallbacks
    def setUp(self) -> Any:
        self.home = _shortHome(self)
        self.daemon = FakeDaemon()
        self.calls = self.daemon.calls
        self.results = self.daemon.results
        self.service = ControlService(reactor, self.home, self.daemon.root)
        yield self.service.startService()
        self.addCleanup(self.service.stopService)
        self.client = ControlClient(reactor, self.home)

    @inlineCallbacks
    def assertControlError(self, d: Deferred[Any], status: int, text: str) -> Any:
        try:
            yield d
        except ControlError as e:
            self.assertEqual(e.status, status)
            self.assertIn(text, str(e))
        else:
            self.fail(f"expected a ControlError {status}")

    @inlineCallbacks
    def test_status(self) -> Any:
        """
        GET /v1/status answers the node's fields at the top level, the
        services list, and each service's status under its name.
        """
        result = yield self.client.request("GET", "/v1/status")
        self.assertEqual(result, statusJSON(self.daemon.status()))
        self.assertEqual(result["peer_id"], "12D3")
        self.assertEqual(result["addrs"], ["/ip4/192.0.2.1/tcp/1/p2p/12D3"])
        self.assertEqual(result["services"], [{"name": "names", "origin": "builtin", "state": "running",
                                               "description": ""}])
        self.assertEqual(result["names"][0]["stored_on"], 3)
        self.assertEqual(result["kademlia"], {"dht_mode": "server", "routing_table_size": 7, "records_held": 2,
                                              "lookups": 0, "lookup_failures": 0, "lookup_p50_ms": None,
                                              "lookup_p95_ms": None})

    @inlineCallbacks
    def test_deferredResult(self) -> Any:
        """
        A handler may return a Deferred; the answer waits for it.
        """
        later: Deferred[dict[str, Any]] = Deferred()
        self.results["registerName"] = later
        d = self.client.request("POST", "/v1/names", {"name": "alice"})
        reactor.callLater(0.01, later.callback, {"name": "alice"})
        self.assertEqual((yield d), {"name": "alice"})

    @inlineCallbacks
    def test_addTunnelAllFields(self) -> Any:
        """
        POST /v1/tunnels passes typed arguments (peer IDs parsed) to the
        tunnel host, and answers 201.
        """
        peer = Identity.generate().peerID
        out, err, _ = yield self._curl("-X", "POST", "-d", f'{{"port": 3000, "name": "web", "udp": true, '
                                       f'"compress": true, "allow": ["{peer}"], "secret": true}}',
                                       "http://beam/v1/tunnels")
        self.assertEqual((out, err), (b'{"ok": "addTunnel"}\n', b"201"))
        self.assertEqual(self.calls, [("addTunnel", dict(
            port=3000, name="web", udp=True, compress=True, allow=[peer], secret=True))])
        self.assertIsInstance(self.calls[0][1]["allow"][0], PeerID)

    @inlineCallbacks
    def test_addTunnelDefaults(self) -> Any:
        """
        Only the port is required; the rest default (no allow list, no
        secret), and null means the default.
        """
        yield self.client.request("POST", "/v1/tunnels", {"port": 8080, "name": None})
        self.assertEqual(self.calls, [("addTunnel", dict(
            port=8080, name=None, udp=False, compress=False, allow=None, secret=False))])

    @inlineCallbacks
    def test_addTunnelStringSecret(self) -> Any:
        """
        A string secret is passed through as the secret to use.
        """
        yield self.client.request("POST", "/v1/tunnels", {"port": 1, "secret": "hunter2"})
        self.assertEqual(self.calls[0][1]["secret"], "hunter2")

    @inlineCallbacks
    def test_addTunnelBadFields(self) -> Any:
        """
        Malformed fields answer 400 naming the problem, and the service is
        not called.
        """
        cases = [
            ({}, "missing field 'port'"),
            ({"port": "80"}, "'port' must be an integer"),
            ({"port": True}, "'port' must be an integer"),
            ({"port": 0}, "between 1 and 65535"),
            ({"port": 65536}, "between 1 and 65535"),
            ({"port": 80, "udp": "yes"}, "'udp' must be a boolean"),
            ({"port": 80, "allow": ["nope"]}, "invalid peer ID"),
            ({"port": 80, "allow": "x"}, "'allow' must be a list"),
            ({"port": 80, "allow": [1]}, "list of peer IDs"),
            ({"port": 80, "name": ""}, "must not be empty"),
            ({"port": 80, "prot": 81}, "unknown field(s): prot"),
        ]
        for body, text in cases:
            yield self.assertControlError(self.client.request("POST", "/v1/tunnels", body), 400, text)
        self.assertEqual(self.calls, [])

    @inlineCallbacks
    def test_malformedJSON(self) -> Any:
        """
        A body that is not JSON, or not a JSON object, answers 400.
        """
        out, err, _ = yield self._curl("-X", "POST", "-d", "{nope", "http://beam/v1/tunnels")
        self.assertIn(b'"malformed JSON', out)
        self.assertIn(b"400", err)
        yield self.assertControlError(self.client.request("POST", "/v1/forwards", [1]),  # type: ignore[arg-type]
                                      400, "must be a JSON object")

    @inlineCallbacks
    def test_listTunnelsAndRemove(self) -> Any:
        """
        GET /v1/tunnels lists them; DELETE /v1/tunnels/<key> passes the
        (percent-decoded) key, with or without a trailing slash.
        """
        self.results["tunnels"] = ()
        self.assertEqual((yield self.client.request("GET", "/v1/tunnels")), {"tunnels": []})
        yield self.client.request("DELETE", "/v1/tunnels/web")
        yield self.client.request("DELETE", "/v1/tunnels/3000/")
        yield self.client.request("DELETE", "/v1/tunnels/my%20app")
        self.assertEqual(self.calls, [("tunnels", None), ("removeTunnel", "web"), ("removeTunnel", "3000"),
                                      ("removeTunnel", "my app")])

    @inlineCallbacks
    def test_addForward(self) -> Any:
        """
        POST /v1/forwards passes the target and optional fields, and
        answers 201 once the forward is up.
        """
        yield self.client.request("POST", "/v1/forwards", {"target": "beam://x@h:1/web"})
        out, err, _ = yield self._curl("-X", "POST", "-d", '{"target": "t", "port": 8080, "bind": "::1", '
                                       '"service": "web", "compress": true}', "http://beam/v1/forwards")
        self.assertEqual(err, b"201")
        self.assertEqual(self.calls, [
            ("addForward", dict(target="beam://x@h:1/web", port=None, bind=None, service=None, compress=False,
                                udp=False)),
            ("addForward", dict(target="t", port=8080, bind="::1", service="web", compress=True, udp=False)),
        ])

    @inlineCallbacks
    def test_nameRoutes(self) -> Any:
        """
        POST /v1/names registers (201), DELETE withdraws, GET
        /v1/names/<name> resolves, and so does its older place,
        GET /v1/resolve/<name>, which cannot delete.
        """
        out, err, _ = yield self._curl("-X", "POST", "-d", '{"name": "alice", "services": ["web"]}',
                                       "http://beam/v1/names")
        self.assertEqual(err, b"201")
        yield self.client.request("DELETE", "/v1/names/alice")
        yield self.client.request("GET", "/v1/names/bob?accept_new_key=1")
        yield self.client.request("GET", "/v1/resolve/bob")
        yield self.assertControlError(self.client.request("DELETE", "/v1/resolve/bob"), 405, "use GET")
        listed = yield self.client.request("GET", "/v1/names")
        self.assertEqual(listed["names"][0]["name"], "alice")
        self.assertEqual(self.calls, [
            ("registerName", dict(name="alice", services=["web"])),
            ("withdrawName", dict(name="alice")),
            ("resolveName", dict(name="bob", acceptNewKey=True)),
            ("resolveName", dict(name="bob", acceptNewKey=False)),
        ])
        e = yield self.assertFailure(
            self.client.request("POST", "/v1/names", {"name": "x", "services": [1]}), ControlError
        )
        self.assertEqual(e.status, 400)

    @inlineCallbacks
    def test_networkRoutes(self) -> Any:
        """
        /v1/network/status combines the node's addresses, our names and
        the DHT's figures (the shape from before services had their own
        routes); routes and bootstrap reach the DHT at their old and new
        places; a bootstrap address without /p2p/ is refused.
        """
        network = yield self.client.request("GET", "/v1/network/status")
        self.assertEqual(network, {
            "peer_id": "12D3", "listen_addrs": ["/ip4/0.0.0.0/tcp/1"], "addrs": ["/ip4/192.0.2.1/tcp/1/p2p/12D3"],
            "observed_addrs": [], "connections": 0, "names": [asName("alice")],
            "dht_mode": "server", "routing_table_size": 7, "records_held": 2, "lookups": 0, "lookup_failures": 0,
            "lookup_p50_ms": None, "lookup_p95_ms": None,
            "reachability": "unknown", "confirmed_addrs": [], "candidate_addrs": [], "relay_addrs": [],
            "connection_paths": {},
        })
        self.results["networkRoutes"] = RoutesStatus(k=20, size=0)
        self.assertEqual((yield self.client.request("GET", "/v1/network/routes")),
                         {"k": 20, "size": 0, "buckets": []})
        yield self.client.request("GET", "/v1/kademlia/routes")
        peer = Identity.generate().peerID
        yield self.client.request("POST", "/v1/network/bootstrap", {"addrs": [f"/ip4/127.0.0.1/tcp/1/p2p/{peer}"]})
        yield self.client.request("POST", "/v1/kademlia/bootstrap")
        self.assertEqual((yield self.client.request("GET", "/v1/kademlia")),
                         {"dht_mode": "server", "routing_table_size": 7, "records_held": 2, "lookups": 0,
                          "lookup_failures": 0, "lookup_p50_ms": None, "lookup_p95_ms": None})
        yield self.assertControlError(
            self.client.request("POST", "/v1/network/bootstrap", {"addrs": ["/ip4/127.0.0.1/tcp/1"]}),
            400, "must end in /p2p/")
        self.assertEqual(self.calls[-4:], [
            ("networkRoutes", None),
            ("networkRoutes", None),
            ("networkBootstrap", dict(addrs=[f"/ip4/127.0.0.1/tcp/1/p2p/{peer}"])),
            ("networkBootstrap", dict(addrs=["/configured"])),
        ])

    @inlineCallbacks
    def test_addForwardBadFields(self) -> Any:
        """
        A missing target, a bind that is not an IP or a bad port answer 400.
        """
        for body, text in [({}, "missing field 'target'"), ({"target": " "}, "must not be empty"),
                           ({"target": "t", "bind": "example.com"}, "must be an IP address"),
                           ({"target": "t", "port": -1}, "between 1 and 65535")]:
            yield self.assertControlError(self.client.request("POST", "/v1/forwards", body), 400, text)
        self.assertEqual(self.calls, [])

    @inlineCallbacks
    def test_removeForwardPeersShutdown(self) -> Any:
        """
        DELETE /v1/forwards/<key>, GET /v1/network/peers and POST
        /v1/shutdown reach the forwards, the node's status and the daemon.
        """
        yield self.client.request("DELETE", "/v1/forwards/8080")
        self.assertEqual((yield self.client.request("GET", "/v1/network/peers")), {"peers": []})
        self.assertEqual((yield self.client.request("POST", "/v1/shutdown")), {"ok": "shutdown"})
        self.assertEqual([c[0] for c in self.calls], ["removeForward", "status", "shutdown"])

    @inlineCallbacks
    def test_unknownRouteAndMethod(self) -> Any:
        """
        Unknown paths answer 404 (JSON, naming the path); a known path
        with the wrong method 405, naming the right ones.
        """
        yield self.assertControlError(self.client.request("GET", "/v1/nope"), 404, "no such endpoint: /v1/nope")
        yield self.assertControlError(self.client.request("GET", "/"), 404, "no such endpoint")
        yield self.assertControlError(self.client.request("GET", "/v1"), 404, "no such endpoint")
        yield self.assertControlError(self.client.request("GET", "/v1/tunnels/x/y"), 404, "no such endpoint")
        yield self.assertControlError(self.client.request("DELETE", "/v1/tunnels/"), 405, "use GET, POST")
        yield self.assertControlError(self.client.request("POST", "/v1/status"), 405, "use GET")
        self.assertEqual(self.calls, [])

    @inlineCallbacks
    def test_errorMapping(self) -> Any:
        """
        L{NotFound} answers 404, L{Conflict} 409 and any other L{BeamError}
        400, each with the error's text; a failed Deferred maps the same.
        """
        self.results["removeTunnel"] = NotFound("no tunnel named 'web'")
        yield self.assertControlError(self.client.request("DELETE", "/v1/tunnels/web"), 404, "no tunnel named 'web'")
        self.results["addTunnel"] = Conflict("port 3000 is already exposed")
        yield self.assertControlError(self.client.request("POST", "/v1/tunnels", {"port": 3000}), 409,
                                      "port 3000 is already exposed")
        self.results["resolveName"] = fail(BeamError("no DHT peers"))
        yield self.assertControlError(self.client.request("GET", "/v1/names/x"), 400, "no DHT peers")

    @inlineCallbacks
    def test_bugIs500WithoutTraceback(self) -> Any:
        """
        An unexpected exception answers 500 with a generic message; the
        traceback is logged, not sent.
        """
        self.results["status"] = RuntimeError("secret internals")
        try:
            yield self.client.request("GET", "/v1/status")
        except ControlError as e:
            self.assertEqual(e.status, 500)
            self.assertNotIn("secret internals", str(e))
            self.assertNotIn("Traceback", str(e))
            self.assertIn("see the node's log", str(e))
        else:
            self.fail("no error")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    @inlineCallbacks
    def test_nonDictResultIs500(self) -> Any:
        """
        An answer that is not a JSON object, or has something without a
        JSON form in it, is a bug: 500.
        """
        self.results["removeTunnel"] = ["not", "a", "dict"]
        yield self.assertControlError(self.client.request("DELETE", "/v1/tunnels/x"), 500, "internal error")
        self.results["removeTunnel"] = {"x": object()}
        yield self.assertControlError(self.client.request("DELETE", "/v1/tunnels/x"), 500, "internal error")
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 2)

    @inlineCallbacks
    def test_bodyTooLarge(self) -> Any:
        """
        A body over 64 KiB answers 413 without calling the service.
        """
        yield self.assertControlError(
            self.client.request("POST", "/v1/tunnels", {"port": 1, "name": "x" * 70000}), 413, "larger than")
        self.assertEqual(self.calls, [])

    @inlineCallbacks
    def test_mountedStatusResource(self) -> Any:
        """
        A service with a status and no resource of its own answers
        GET /v1/<name> with its status (a tuple as a list under its name).
        """
        self.daemon.root.mount("one", StatusResource("one", lambda: DHTStatus(mode="client")))
        self.daemon.root.mount("many", StatusResource("many", lambda: (DHTStatus(mode="client"),)))
        self.assertEqual((yield self.client.request("GET", "/v1/one"))["dht_mode"], "client")
        self.assertEqual((yield self.client.request("GET", "/v1/many"))["many"][0]["dht_mode"], "client")

    def _curl(self, *args: str) -> Deferred[tuple[bytes, bytes, int]]:
        curl = shutil.which("curl")
        if curl is None:
            self.skipTest("curl is not installed")
        return getProcessOutputAndValue(
            curl, ["-sS", "-w", "%{stderr}%{http_code}", "--unix-socket", str(self.service.socketPath), *args],
            env={"PATH": os.environ.get("PATH", "")})

    @inlineCallbacks
    def test_curl(self) -> Any:
        """
        The documented curl command works: GET status and POST a tunnel.
        """
        out, err, code = yield self._curl("http://beam/v1/status")
        self.assertEqual((err, code), (b"200", 0))
        self.assertTrue(out.startswith(b'{"peer_id": "12D3"'))
        out, err, code = yield self._curl("-X", "POST", "-H", "content-type: application/json",
                                          "-d", '{"port": 3000, "name": "web"}', "http://beam/v1/tunnels")
        self.assertEqual((out, err, code), (b'{"ok": "addTunnel"}\n', b"201", 0))
        self.assertEqual(self.calls[-1][1]["port"], 3000)


def asName(name: str) -> dict[str, Any]:
    return {"name": name, "peer_id": "12D3", "services": [], "addrs": [], "seq": None, "expires": None,
            "stored_on": 3, "error": None, "published_at": None, "next_republish": None}


class _Hello(JSONResource):
    def json_GET(self, request: Any) -> Any:
        return {"ok": "status"}


def _root() -> Any:
    root = JSONResource()
    v1 = JSONResource()
    root.putChild(b"v1", v1)
    v1.putChild(b"status", _Hello())
    return root


class ControlServiceTests(TestCase):
    """
    The socket's lifecycle: permissions, stale sockets, a second daemon.
    """

    def setUp(self) -> None:
        self.home = _shortHome(self)

    @inlineCallbacks
    def startService(self, home: Path | None = None) -> Any:
        service = ControlService(reactor, home or self.home, _root())
        yield service.startService()
        self.addCleanup(service.stopService)
        return service

    @inlineCallbacks
    def test_socketMode600(self) -> Any:
        """
        The socket is mode 0600 and the home directory stays 0700.
        """
        service = yield self.startService()
        self.assertTrue(stat.S_ISSOCK(os.stat(service.socketPath).st_mode))
        self.assertEqual(stat.S_IMODE(os.stat(service.socketPath).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(self.home).st_mode), 0o700)
        self.assertEqual(service.socketPath, self.home / "control.sock")

    @inlineCallbacks
    def test_umaskRestored(self) -> Any:
        """
        The restrictive umask is only in effect while binding.
        """
        old = os.umask(0o022)
        self.addCleanup(os.umask, old)
        yield self.startService()
        self.assertEqual(os.umask(0o022), 0o022)

    @inlineCallbacks
    def test_createsMissingHome(self) -> Any:
        """
        A missing home directory is created 0700.
        """
        home = self.home / "sub"
        yield self.startService(home)
        self.assertEqual(stat.S_IMODE(os.stat(home).st_mode), 0o700)

    @inlineCallbacks
    def test_stopRemovesSocketAndLock(self) -> Any:
        """
        Stopping removes the socket and its lock; C{nodeRunning} follows.
        """
        service = ControlService(reactor, self.home, _root())
        self.assertFalse(nodeRunning(self.home))
        yield service.startService()
        self.assertTrue(nodeRunning(self.home))
        yield service.stopService()
        self.assertFalse(nodeRunning(self.home))
        self.assertFalse(os.path.lexists(service.socketPath))
        self.assertFalse(os.path.lexists(str(service.socketPath) + ".lock"))

    @inlineCallbacks
    def test_secondServiceRefused(self) -> Any:
        """
        A second service for the same home fails with L{NodeAlreadyRunning}
        and leaves the first one serving.
        """
        yield self.startService()
        second = ControlService(reactor, self.home, _root())
        e = yield self.assertFailure(second.startService(), NodeAlreadyRunning)
        self.assertIn(str(self.home), str(e))
        self.assertFalse(second.running)
        result = yield ControlClient(reactor, self.home).request("GET", "/v1/status")
        self.assertEqual(result, {"ok": "status"})

    @inlineCallbacks
    def test_liveLockRefused(self) -> Any:
        """
        A node that holds the PID lock but has no socket yet (it is
        starting) also makes a second start fail.
        """
        os.symlink(str(os.getpid()), str(self.home / "control.sock.lock"))
        second = ControlService(reactor, self.home, _root())
        yield self.assertFailure(second.startService(), NodeAlreadyRunning)
        self.assertTrue(os.path.lexists(self.home / "control.sock.lock"))

    def _leaveStaleSocket(self) -> Path:
        path = self.home / "control.sock"
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(path))
        s.close()
        return path

    @inlineCallbacks
    def test_staleSocketReplaced(self) -> Any:
        """
        A crashed node's socket (refusing connections, dead PID in the
        lock) is replaced, and the new service answers.
        """
        self._leaveStaleSocket()
        os.symlink(str(_deadPID()), str(self.home / "control.sock.lock"))
        self.assertFalse(nodeRunning(self.home))
        yield self.startService()
        result = yield ControlClient(reactor, self.home).request("GET", "/v1/status")
        self.assertEqual(result, {"ok": "status"})

    @inlineCallbacks
    def test_staleSocketWithoutLockReplaced(self) -> Any:
        """
        A leftover socket with no lock file at all is replaced too.
        """
        self._leaveStaleSocket()
        yield self.startService()
        self.assertTrue(nodeRunning(self.home))

    @inlineCallbacks
    def test_notASocketRefused(self) -> Any:
        """
        A regular file where the socket goes is left alone and reported.
        """
        (self.home / "control.sock").write_text("precious")
        e = yield self.assertFailure(ControlService(reactor, self.home, _root()).startService(),
                                     ControlSocketError)
        self.assertIn("not a socket", str(e))
        self.assertEqual((self.home / "control.sock").read_text(), "precious")

    @inlineCallbacks
    def test_pathTooLong(self) -> Any:
        """
        A home whose socket path does not fit in sun_path fails clearly.
        """
        home = self.home / ("x" * 120)
        e = yield self.assertFailure(ControlService(reactor, home, _root()).startService(),
                                     ControlSocketError)
        self.assertIn("too long", str(e))


class ControlClientTests(TestCase):
    """
    The client when no node is there.
    """

    @inlineCallbacks
    def test_noSocket(self) -> Any:
        """
        With no socket file the client fails with L{NoNodeRunning} naming
        the home and how to start a node.
        """
        home = _shortHome(self)
        e = yield self.assertFailure(ControlClient(reactor, home).request("GET", "/v1/status"), NoNodeRunning)
        self.assertIn(str(home), str(e))
        self.assertIn("beam daemon", str(e))

    @inlineCallbacks
    def test_refusingSocket(self) -> Any:
        """
        A stale socket file that refuses connections is also
        L{NoNodeRunning}, and C{nodeRunning} says False.
        """
        home = _shortHome(self)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(home / "control.sock"))
        s.close()
        self.assertFalse(nodeRunning(home))
        yield self.assertFailure(ControlClient(reactor, home).request("GET", "/v1/status"), NoNodeRunning)

    def test_controlErrorStatus(self) -> None:
        """
        L{ControlError} prints the node's text and keeps the status.
        """
        e = ControlError("no tunnel named 'web'", 404)
        self.assertEqual((str(e), e.status), ("no tunnel named 'web'", 404))
        self.assertIsInstance(e, BeamError)
