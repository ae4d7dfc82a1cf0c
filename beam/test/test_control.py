"""
Tests for L{beam.daemon.control}: the control API over a real UNIX socket.
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
from twisted.internet.defer import Deferred, fail, inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from beam.daemon.control import (
    ControlClient,
    ControlError,
    ControlService,
    ControlSocketError,
    IControlAPI,
    NodeAlreadyRunning,
    NoNodeRunning,
    nodeRunning,
)
from beam.errors import BeamError, Conflict, NotFound
from beam.identity.keys import Identity, PeerID


@implementer(IControlAPI)
class FakeAPI:
    """
    Records calls; C{results[name]} overrides what a method returns (a
    value, a Deferred, or an exception instance to raise).
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.results: dict[str, Any] = {}

    def _answer(self, name: str, args: Any) -> Any:
        self.calls.append((name, args))
        result = self.results.get(name, {"ok": name})
        if isinstance(result, BaseException):
            raise result
        return result

    def status(self) -> Any:
        return self._answer("status", None)

    def addTunnel(self, port: int, name: Any, udp: bool, compress: bool, allow: Any, secret: Any) -> Any:
        return self._answer("addTunnel", dict(port=port, name=name, udp=udp, compress=compress,
                                              allow=allow, secret=secret))

    def removeTunnel(self, key: str) -> Any:
        return self._answer("removeTunnel", key)

    def addForward(self, target: str, port: Any, bind: Any, service: Any, compress: bool, udp: bool) -> Any:
        return self._answer("addForward", dict(target=target, port=port, bind=bind, udp=udp,
                                               service=service, compress=compress))

    def removeForward(self, key: str) -> Any:
        return self._answer("removeForward", key)

    def peers(self) -> Any:
        return self._answer("peers", None)

    def shutdown(self) -> Any:
        return self._answer("shutdown", None)

    def registerName(self, name: str, services: list[str]) -> Any:
        return self._answer("registerName", dict(name=name, services=services))

    def withdrawName(self, name: str) -> Any:
        return self._answer("withdrawName", dict(name=name))

    def resolveName(self, name: str, acceptNewKey: bool) -> Any:
        return self._answer("resolveName", dict(name=name, acceptNewKey=acceptNewKey))

    def networkStatus(self) -> Any:
        return self._answer("networkStatus", None)

    def networkRoutes(self) -> Any:
        return self._answer("networkRoutes", None)

    def networkBootstrap(self, addrs: list[str]) -> Any:
        return self._answer("networkBootstrap", dict(addrs=addrs))


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
    Every route, through a real socket, with the L{ControlClient}.
    """

    @inlineCallbacks
    def setUp(self) -> Any:
        self.home = _shortHome(self)
        self.api = FakeAPI()
        self.service = ControlService(reactor, self.home, self.api)
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

    def test_fakeProvidesInterface(self) -> None:
        """
        The fake used here really provides L{IControlAPI}, so the tests
        exercise the interface the node must implement.
        """
        self.assertTrue(verifyObject(IControlAPI, self.api))

    @inlineCallbacks
    def test_status(self) -> Any:
        """
        GET /v1/status answers with the API's dict.
        """
        self.api.results["status"] = {"peer_id": "x", "tunnels": [1, 2]}
        result = yield self.client.request("GET", "/v1/status")
        self.assertEqual(result, {"peer_id": "x", "tunnels": [1, 2]})

    @inlineCallbacks
    def test_deferredResult(self) -> Any:
        """
        An API method may return a Deferred; the answer waits for it.
        """
        later: Deferred[dict[str, Any]] = Deferred()
        self.api.results["peers"] = later
        d = self.client.request("GET", "/v1/network/peers")
        reactor.callLater(0.01, later.callback, {"peers": ["a"]})
        self.assertEqual((yield d), {"peers": ["a"]})

    @inlineCallbacks
    def test_addTunnelAllFields(self) -> Any:
        """
        POST /v1/tunnels passes typed arguments (peer IDs parsed) to
        addTunnel.
        """
        peer = Identity.generate().peerID
        result = yield self.client.request("POST", "/v1/tunnels", {
            "port": 3000, "name": "web", "udp": True, "compress": True,
            "allow": [str(peer)], "secret": True,
        })
        self.assertEqual(result, {"ok": "addTunnel"})
        self.assertEqual(self.api.calls, [("addTunnel", dict(
            port=3000, name="web", udp=True, compress=True, allow=[peer], secret=True))])
        self.assertIsInstance(self.api.calls[0][1]["allow"][0], PeerID)

    @inlineCallbacks
    def test_addTunnelDefaults(self) -> Any:
        """
        Only the port is required; the rest default (no allow list, no
        secret), and null means the default.
        """
        yield self.client.request("POST", "/v1/tunnels", {"port": 8080, "name": None})
        self.assertEqual(self.api.calls, [("addTunnel", dict(
            port=8080, name=None, udp=False, compress=False, allow=None, secret=False))])

    @inlineCallbacks
    def test_addTunnelStringSecret(self) -> Any:
        """
        A string secret is passed through as the secret to use.
        """
        yield self.client.request("POST", "/v1/tunnels", {"port": 1, "secret": "hunter2"})
        self.assertEqual(self.api.calls[0][1]["secret"], "hunter2")

    @inlineCallbacks
    def test_addTunnelBadFields(self) -> Any:
        """
        Malformed fields answer 400 naming the problem, and the API is not
        called.
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
        self.assertEqual(self.api.calls, [])

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
    def test_removeTunnel(self) -> Any:
        """
        DELETE /v1/tunnels/<key> passes the (percent-decoded) key.
        """
        yield self.client.request("DELETE", "/v1/tunnels/web")
        yield self.client.request("DELETE", "/v1/tunnels/3000/")
        yield self.client.request("DELETE", "/v1/tunnels/my%20app")
        self.assertEqual(self.api.calls, [("removeTunnel", "web"), ("removeTunnel", "3000"),
                                          ("removeTunnel", "my app")])

    @inlineCallbacks
    def test_addForward(self) -> Any:
        """
        POST /v1/forwards passes the target and optional fields.
        """
        yield self.client.request("POST", "/v1/forwards", {"target": "beam://x@h:1/web"})
        yield self.client.request("POST", "/v1/forwards", {
            "target": "t", "port": 8080, "bind": "::1", "service": "web", "compress": True})
        self.assertEqual(self.api.calls, [
            ("addForward", dict(target="beam://x@h:1/web", port=None, bind=None, service=None, compress=False, udp=False)),
            ("addForward", dict(target="t", port=8080, bind="::1", service="web", compress=True, udp=False)),
        ])

    @inlineCallbacks
    def test_nameAndNetworkRoutes(self) -> Any:
        """
        The name and network routes reach their API methods with their
        arguments; POST /v1/names answers 201.
        """
        yield self.client.request("POST", "/v1/names", {"name": "alice", "services": ["web"]})
        yield self.client.request("DELETE", "/v1/names/alice")
        yield self.client.request("GET", "/v1/resolve/bob?accept_new_key=1")
        yield self.client.request("GET", "/v1/resolve/bob")
        yield self.client.request("GET", "/v1/network/status")
        yield self.client.request("GET", "/v1/network/routes")
        yield self.client.request("POST", "/v1/network/bootstrap", {"addrs": ["/ip4/127.0.0.1/tcp/1"]})
        self.assertEqual(self.api.calls, [
            ("registerName", dict(name="alice", services=["web"])),
            ("withdrawName", dict(name="alice")),
            ("resolveName", dict(name="bob", acceptNewKey=True)),
            ("resolveName", dict(name="bob", acceptNewKey=False)),
            ("networkStatus", None),
            ("networkRoutes", None),
            ("networkBootstrap", dict(addrs=["/ip4/127.0.0.1/tcp/1"])),
        ])
        e = yield self.assertFailure(
            self.client.request("POST", "/v1/names", {"name": "x", "services": [1]}), ControlError
        )
        self.assertEqual(e.status, 400)

    @inlineCallbacks
    def test_addForwardBadFields(self) -> Any:
        """
        A missing target, a bind that is not an IP or a bad port answer 400.
        """
        for body, text in [({}, "missing field 'target'"), ({"target": " "}, "must not be empty"),
                           ({"target": "t", "bind": "example.com"}, "must be an IP address"),
                           ({"target": "t", "port": -1}, "between 1 and 65535")]:
            yield self.assertControlError(self.client.request("POST", "/v1/forwards", body), 400, text)
        self.assertEqual(self.api.calls, [])

    @inlineCallbacks
    def test_removeForwardPeersShutdown(self) -> Any:
        """
        DELETE /v1/forwards/<key>, GET /v1/network/peers and POST
        /v1/shutdown reach their API methods.
        """
        yield self.client.request("DELETE", "/v1/forwards/8080")
        self.assertEqual((yield self.client.request("GET", "/v1/network/peers")), {"ok": "peers"})
        self.assertEqual((yield self.client.request("POST", "/v1/shutdown")), {"ok": "shutdown"})
        self.assertEqual([c[0] for c in self.api.calls], ["removeForward", "peers", "shutdown"])

    @inlineCallbacks
    def test_unknownRouteAndMethod(self) -> Any:
        """
        Unknown paths answer 404; a known path with the wrong method 405.
        """
        yield self.assertControlError(self.client.request("GET", "/v1/nope"), 404, "no such endpoint")
        yield self.assertControlError(self.client.request("GET", "/"), 404, "no such endpoint")
        yield self.assertControlError(self.client.request("DELETE", "/v1/tunnels/"), 405, "use POST")
        yield self.assertControlError(self.client.request("POST", "/v1/status"), 405, "use GET")
        self.assertEqual(self.api.calls, [])

    @inlineCallbacks
    def test_errorMapping(self) -> Any:
        """
        L{NotFound} answers 404, L{Conflict} 409 and any other L{BeamError}
        400, each with the error's text; a failed Deferred maps the same.
        """
        self.api.results["removeTunnel"] = NotFound("no tunnel named 'web'")
        yield self.assertControlError(self.client.request("DELETE", "/v1/tunnels/web"), 404, "no tunnel named 'web'")
        self.api.results["addTunnel"] = Conflict("port 3000 is already exposed")
        yield self.assertControlError(self.client.request("POST", "/v1/tunnels", {"port": 3000}), 409,
                                      "port 3000 is already exposed")
        self.api.results["addForward"] = fail(BeamError("bad share address"))
        yield self.assertControlError(self.client.request("POST", "/v1/forwards", {"target": "x"}), 400,
                                      "bad share address")

    @inlineCallbacks
    def test_bugIs500WithoutTraceback(self) -> Any:
        """
        An unexpected exception answers 500 with a generic message; the
        traceback is logged, not sent.
        """
        self.api.results["status"] = RuntimeError("secret internals")
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
        A result that is not a JSON-able dict is a bug: 500.
        """
        self.api.results["status"] = ["not", "a", "dict"]
        yield self.assertControlError(self.client.request("GET", "/v1/status"), 500, "internal error")
        self.api.results["status"] = {"x": object()}
        yield self.assertControlError(self.client.request("GET", "/v1/status"), 500, "internal error")
        self.flushLoggedErrors(TypeError)

    @inlineCallbacks
    def test_bodyTooLarge(self) -> Any:
        """
        A body over 64 KiB answers 413 without calling the API.
        """
        yield self.assertControlError(
            self.client.request("POST", "/v1/tunnels", {"port": 1, "name": "x" * 70000}), 413, "larger than")
        self.assertEqual(self.api.calls, [])

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
        self.api.results["status"] = {"peer_id": "12D3"}
        out, err, code = yield self._curl("http://beam/v1/status")
        self.assertEqual((out, err, code), (b'{"peer_id": "12D3"}\n', b"200", 0))
        out, err, code = yield self._curl("-X", "POST", "-H", "content-type: application/json",
                                          "-d", '{"port": 3000, "name": "web"}', "http://beam/v1/tunnels")
        self.assertEqual((out, err, code), (b'{"ok": "addTunnel"}\n', b"201", 0))
        self.assertEqual(self.api.calls[-1][1]["port"], 3000)


class ControlServiceTests(TestCase):
    """
    The socket's lifecycle: permissions, stale sockets, a second daemon.
    """

    def setUp(self) -> None:
        self.home = _shortHome(self)

    @inlineCallbacks
    def startService(self, home: Path | None = None) -> Any:
        service = ControlService(reactor, home or self.home, FakeAPI())
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
        service = ControlService(reactor, self.home, FakeAPI())
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
        second = ControlService(reactor, self.home, FakeAPI())
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
        second = ControlService(reactor, self.home, FakeAPI())
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
        e = yield self.assertFailure(ControlService(reactor, self.home, FakeAPI()).startService(),
                                     ControlSocketError)
        self.assertIn("not a socket", str(e))
        self.assertEqual((self.home / "control.sock").read_text(), "precious")

    @inlineCallbacks
    def test_pathTooLong(self) -> Any:
        """
        A home whose socket path does not fit in sun_path fails clearly.
        """
        home = self.home / ("x" * 120)
        e = yield self.assertFailure(ControlService(reactor, home, FakeAPI()).startService(),
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
