"""
L{beam.daemon.service.BeamDaemon} in one process: daemons on loopback, their
services called directly and through the control socket.
"""

from __future__ import annotations

import json
import os
import socket
import stat
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from beam.daemon.config import Config, TunnelConfig, loadConfig
from beam.daemon.control import ControlClient, NodeAlreadyRunning
from beam.daemon.service import BeamDaemon, TunnelSpecError
from beam.errors import Conflict, DialError, NotFound
from beam.identity.keys import Identity
from beam.identity.multiaddr import Multiaddr
from beam.p2p.resources import NullResourceManager, ResourceManager, defaultLimits, unlimitedManager
from beam.tunnel.share import parseShareAddress

LOOPBACK = (Multiaddr.fromString("/ip4/127.0.0.1/tcp/0"),)


@inlineCallbacks
def _startDaemon(test, config: Config = Config(listen=LOOPBACK), home: Path | None = None, **kw):
    home = home or Path(test.mktemp())
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    kw.setdefault("plugins", ())
    daemon = BeamDaemon(reactor, home, kw.pop("identity", None) or Identity.generate(), config, **kw)
    yield daemon.start()
    test.addCleanup(daemon.stopService)
    return daemon


@implementer(IHalfCloseableProtocol)
class _Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)

    def readConnectionLost(self) -> None:
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass


def _roundTrip(port: int, payload: bytes = b"hello beam") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk


class DaemonTests(TestCase):
    """
    Tunnels, forwards and status through the daemon's control API.
    """

    timeout = 60

    def startDaemon(self, config: Config = Config(listen=LOOPBACK), home: Path | None = None, **kw):
        return _startDaemon(self, config, home, **kw)

    def echoService(self) -> int:
        port = reactor.listenTCP(0, Factory.forProtocol(_Echo), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port

    @inlineCallbacks
    def test_exposeAndConnect(self):
        """
        A tunnel exposed on one daemon is reached through a forward on
        another; status on both sides reports it with byte counts.
        """
        host = yield self.startDaemon()
        client = yield self.startDaemon()
        svc = self.echoService()
        tunnel = host.tunnels.exposePort(svc)
        self.assertEqual(tunnel.name, str(svc))
        self.assertTrue(tunnel.connect.startswith("beam connect beam://"))
        fwd = yield client.forwards.add(tunnel.share)
        port = int(fwd.listen.rsplit(":", 1)[1])
        got = yield _deferToThread(_roundTrip, port)
        self.assertEqual(got, b"hello beam")
        (hosted,) = host.status().section("tunnels")
        self.assertEqual(hosted.stats.total, 1)
        self.assertEqual(hosted.stats.bytesIn, len(b"hello beam"))
        cstatus = client.status()
        self.assertEqual(cstatus.section("forwards")[0].state, "connected")
        self.assertEqual(cstatus.node.connections[0].peerID, str(host.node.peerID))

    @inlineCallbacks
    def test_defaultServiceNamed(self):
        """
        A forward that asks for the host's default service (a multiaddr
        names none) reports the service the host opened, not "default":
        the host names it in its answer.
        """
        host = yield self.startDaemon()
        client = yield self.startDaemon()
        host.tunnels.exposePort(self.echoService(), name="web")
        target = str(host.node.listenAddrs[0].withPeerID(host.node.peerID))
        fwd = yield client.forwards.add(target)
        self.assertEqual(fwd.service, "web")
        (status,) = client.status().section("forwards")
        self.assertEqual(status.service, "web")

    @inlineCallbacks
    def test_probeRefusals(self):
        """
        A forward checks the host first: an unknown service, a peer not on
        the allow list, a missing secret and an unreachable host each fail
        with a clear one-line error, and leave no forward behind.  The
        first three read alike: a stranger learns nothing about private
        services.
        """
        host = yield self.startDaemon()
        client = yield self.startDaemon()
        svc = self.echoService()
        private = host.tunnels.exposePort(svc, name="private", allow=[Identity.generate().peerID])
        secret = host.tunnels.exposePort(self.echoService(), name="secret", secret=True)
        share = parseShareAddress(private.share)
        e = yield self.assertFailure(client.forwards.add(private.share), TunnelSpecError)
        onHost = f"that you may open on {host.node.peerID}"
        self.assertEqual(str(e), f"the host refused the tunnel: no service 'private' {onHost}")
        e = yield self.assertFailure(client.forwards.add(private.share, service="nope"), TunnelSpecError)
        self.assertEqual(str(e), f"the host refused the tunnel: no service 'nope' {onHost}")
        stripped = secret.share.split("#")[0]
        e = yield self.assertFailure(client.forwards.add(stripped), TunnelSpecError)
        self.assertEqual(str(e), f"the host refused the tunnel: no service 'secret' {onHost}")
        ok = yield client.forwards.add(secret.share)
        self.assertEqual(ok.service, "secret")
        dead = f"beam://{Identity.generate().peerID}@127.0.0.1:{_freePort()}/{share.service}"
        yield self.assertFailure(client.forwards.add(dead), DialError)
        self.assertEqual(list(client.forwards.byKey), [ok.name])

    @inlineCallbacks
    def test_probeBeforeListening(self):
        """
        A checked forward (C{beam connect}) listens only once the host
        answered: while a host that accepted TCP has not answered, its
        local port is closed (an app connecting there would only wait,
        then be closed, issue 12), and giving up leaves no forward.
        """
        from twisted.internet.defer import Deferred

        client = yield self.startDaemon()
        reached: Deferred[None] = Deferred()
        accepted: list = []

        class Silent(Protocol):
            def connectionMade(self) -> None:
                accepted.append(self.transport)
                if not reached.called:
                    reached.callback(None)

        hang = reactor.listenTCP(0, Factory.forProtocol(Silent), interface="127.0.0.1")
        self.addCleanup(hang.stopListening)
        local = _freePort()
        target = f"beam://{Identity.generate().peerID}@127.0.0.1:{hang.getHost().port}/web"
        adding = client.forwards.add(target, port=local)
        yield reached
        listening = yield _deferToThread(_accepts, local)
        self.assertFalse(listening, "the local port listens before the host answered")
        adding.cancel()
        yield adding.addErrback(lambda f: None)
        for transport in accepted:
            transport.abortConnection()
        self.assertEqual(client.forwards.byKey, {})

    @inlineCallbacks
    def test_conflictsAndRemoval(self):
        """
        Exposing a port twice is a conflict; removing by name or port works
        once and then reports not found.
        """
        host = yield self.startDaemon()
        svc = self.echoService()
        host.tunnels.exposePort(svc, name="web")
        self.assertRaises(Conflict, host.tunnels.exposePort, svc)
        self.assertRaises(Conflict, host.tunnels.exposePort, svc + 1 if svc < 65535 else svc - 1, name="web")
        self.assertEqual(host.tunnels.remove(str(svc)).name, "web")
        self.assertRaises(NotFound, host.tunnels.remove, "web")
        self.assertRaises(NotFound, host.forwards.remove, "1234")

    @inlineCallbacks
    def test_configTunnelsAndRememberedPort(self):
        """
        Tunnels in the configuration are exposed at start, and a restarted
        daemon listens on the port of its previous run.
        """
        home = Path(self.mktemp())
        ident = Identity.generate()
        svc = self.echoService()
        config = Config(listen=LOOPBACK, tunnels=(TunnelConfig(port=svc, name="web"),))
        first = yield self.startDaemon(config, home=home, identity=ident)
        self.assertEqual(list(first.tunnels.services), ["web"])
        port = first.node.listenAddrs[0].tcpTarget()[1]
        self.assertEqual(json.loads((home / "state.json").read_text())["listen_port"], port)
        self.assertEqual((home / "state.json").stat().st_mode & 0o777, 0o600)
        yield first.stopService()
        second = yield self.startDaemon(config, home=home, identity=ident)
        self.assertEqual(second.node.listenAddrs[0].tcpTarget()[1], port)

    @inlineCallbacks
    def test_secondDaemonRefused(self):
        """
        A second daemon for the same home fails to start with
        L{NodeAlreadyRunning} and does not bind anything.
        """
        home = Path(self.mktemp())
        yield self.startDaemon(home=home)
        second = BeamDaemon(reactor, home, Identity.generate(), Config(listen=LOOPBACK), plugins=())
        yield self.assertFailure(second.start(), NodeAlreadyRunning)
        yield second.stopService()
        self.assertEqual(second.node.listenAddrs, [])


def _freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _accepts(port: int) -> bool:
    """
    Whether something accepts TCP connections on 127.0.0.1:C{port}.
    """
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            return True
    except OSError:
        return False


def _deferToThread(f, *args):
    from twisted.internet.threads import deferToThread

    return deferToThread(f, *args)


class DaemonNameTests(TestCase):
    """
    Names through the daemon, on a small DHT of in-process daemons.
    """

    timeout = 60

    @inlineCallbacks
    def test_registerResolveAndRestart(self):
        """
        A name registered on one daemon resolves on another; after the owner
        restarts (same home, new port) it republishes the name by itself and
        resolvers see the new address.
        """
        seed = yield _startDaemon(self)
        boot = (seed.node.listenAddrs[0].withPeerID(seed.node.peerID),)
        ownerHome = Path(self.mktemp())
        ownerID = Identity.generate()
        config = Config(listen=LOOPBACK, bootstrap=boot)
        owner = yield _startDaemon(self, config, home=ownerHome, identity=ownerID,
                                              rememberPort=False)
        resolver = yield _startDaemon(self, config)
        yield owner.kademlia.whenBootstrapped()
        yield resolver.kademlia.whenBootstrapped()
        registered = yield owner.names.register("alice", ["web"])
        self.assertGreaterEqual(registered.storedOn, 2)
        found = yield resolver.names.resolve("alice")
        self.assertEqual(found.peerID, str(ownerID.peerID))
        self.assertEqual(found.services, ("web",))
        self.assertEqual(found.pin, "new")
        oldAddrs = found.addrs
        yield owner.stopService()
        owner2 = yield _startDaemon(self, config, home=ownerHome, identity=ownerID,
                                               rememberPort=False)
        yield owner2.kademlia.whenBootstrapped()
        for _ in range(50):
            if "alice" in owner2.names.registrations and owner2.names.registrations["alice"].record:
                break
            yield deferLater(reactor, 0.1, lambda: None)
        found2 = yield resolver.names.resolve("alice")
        self.assertEqual(found2.pin, "known")
        self.assertNotEqual(found2.addrs, oldAddrs)
        self.assertGreater(found2.seq, found.seq)


    @inlineCallbacks
    def test_privateServiceByName(self):
        """
        A name's record lists only the public services, yet an allowed peer
        reaches a private one by C{NAME/SERVICE}; a stranger asking the same
        gets the one-line answer it would get for a service that does not
        exist.
        """
        seed = yield _startDaemon(self)
        boot = (seed.node.listenAddrs[0].withPeerID(seed.node.peerID),)
        config = Config(listen=LOOPBACK, bootstrap=boot)
        owner = yield _startDaemon(self, config)
        friend = yield _startDaemon(self, config)
        for daemon in (owner, friend):
            yield daemon.kademlia.whenBootstrapped()
        owner.tunnels.exposePort(_freePort(), name="web")
        owner.tunnels.exposePort(_freePort(), name="priv", allow=[friend.node.peerID])
        yield owner.names.register("alice")
        found = yield friend.names.resolve("alice")
        self.assertEqual(found.services, ("web",))
        forward = yield friend.forwards.add("alice/priv", acceptNewKey=True)
        self.assertEqual(forward.service, "priv")
        e = yield self.assertFailure(seed.forwards.add("alice/priv", acceptNewKey=True), TunnelSpecError)
        self.assertEqual(str(e), f"the host refused the tunnel: no service 'priv' that you may open on {owner.node.peerID}")


class DaemonAssemblyTests(TestCase):
    """
    The daemon assembles its children from registrations and serves each
    one's resource and status on the control socket.
    """

    timeout = 60

    @inlineCallbacks
    def test_childrenInOrder(self):
        """
        The control socket, the node, then the built-in services in
        registration order are the daemon's named children, all running;
        each built-in reports its status under its name.
        """
        daemon = yield _startDaemon(self)
        self.assertEqual([s.name for s in daemon],
                         ["control", "node", "tor", "nat", "mdns", "tunnels", "requests", "kademlia", "pubsub", "names", "forwards", "dns", "web"])
        self.assertTrue(all(s.running for s in daemon))
        status = daemon.status()
        self.assertEqual([(i.name, i.origin, i.state) for i in status.services],
                         [(n, "builtin", "running") for n in ("tor", "nat", "mdns", "tunnels", "requests", "kademlia", "pubsub", "names", "forwards", "dns")])
        self.assertEqual([name for name, _ in status.sections],
                         ["tor", "nat", "mdns", "tunnels", "requests", "kademlia", "pubsub", "names", "forwards", "dns", "web"])
        self.assertEqual(status.section("kademlia").mode, "server")
        self.assertEqual(status.node.peerID, str(daemon.node.peerID))
        self.assertIs(daemon.service("kademlia"), daemon.kademlia)

    @inlineCallbacks
    def test_stopsServicesBeforeTheNode(self):
        """
        Stopping stops the services (last registered first) before the
        node and the control socket.
        """
        daemon = yield _startDaemon(self)
        order = []
        for child in daemon:
            stop = child.stopService
            child.stopService = lambda stop=stop, name=child.name: (order.append(name), stop())[1]
        yield daemon.stopService()
        self.assertEqual(order, ["web", "dns", "forwards", "names", "pubsub", "kademlia", "requests", "tunnels", "mdns", "nat", "tor", "node", "control"])

    @inlineCallbacks
    def test_controlSocket(self):
        """
        Through the real socket (mode 0600): GET /v1/status has the node's
        fields and every service's section; a tunnel added with POST
        /v1/tunnels shows up there and in GET /v1/tunnels; the network
        routes keep their shapes, at old and new places.
        """
        daemon = yield _startDaemon(self)
        self.assertEqual(stat.S_IMODE(os.stat(daemon.control.socketPath).st_mode), 0o600)
        client = ControlClient(reactor, daemon.home)
        status = yield client.request("GET", "/v1/status")
        self.assertEqual(set(status), {"peer_id", "addrs", "listen_addrs", "observed_addrs", "protocols",
                                       "connections", "services", "resources", "tunnels", "kademlia", "names",
                                       "forwards", "reachability", "confirmed_addrs", "candidate_addrs",
                                       "relay_addrs", "nat", "tor", "mdns", "pubsub", "dns", "web", "requests"})
        self.assertIn("/beam/tunnel/1.0.0", status["protocols"])
        tunnel = yield client.request("POST", "/v1/tunnels", {"port": 4242, "name": "web", "secret": True})
        self.assertEqual(set(tunnel), {"name", "port", "kind", "target", "compress", "private", "allow", "share",
                                       "connect", "stats"})
        self.assertEqual(set(tunnel["stats"]), {"active", "total", "bytesIn", "bytesOut", "refused", "failed"})
        self.assertIn("#", tunnel["share"])
        self.assertEqual((yield client.request("GET", "/v1/status"))["tunnels"], [tunnel])
        self.assertEqual((yield client.request("GET", "/v1/tunnels")), {"tunnels": [tunnel]})
        network = yield client.request("GET", "/v1/network/status")
        self.assertEqual(set(network), {"peer_id", "listen_addrs", "addrs", "observed_addrs", "connections",
                                        "names", "dht_mode", "routing_table_size", "records_held",
                                        "lookups", "lookup_failures", "lookup_p50_ms", "lookup_p95_ms",
                                        "reachability", "confirmed_addrs", "candidate_addrs", "relay_addrs",
                                        "connection_paths", "nat", "tor"})
        self.assertEqual((network["reachability"], network["nat"]["relay_mode"]), ("unknown", "default"))
        self.assertEqual(network["connections"], 0)
        routes = yield client.request("GET", "/v1/network/routes")
        self.assertEqual(routes, (yield client.request("GET", "/v1/kademlia/routes")))
        self.assertEqual(routes["size"], 0)
        self.assertEqual((yield client.request("GET", "/v1/network/peers")), {"peers": []})
        removed = yield client.request("DELETE", "/v1/tunnels/web")
        self.assertEqual(removed["name"], "web")
        self.assertEqual(daemon.tunnels.services, {})

    @inlineCallbacks
    def test_configuredLimits(self):
        """
        The node runs under the configuration's C{[limits]} (a resource
        manager on the reactor's clock, the handshake timeout), and GET
        /v1/status shows them with what the node holds and what was
        refused, under C{"resources"}.
        """
        home = Path(self.mktemp())
        home.mkdir(mode=0o700)
        (home / "config.toml").write_text(
            'listen = ["/ip4/127.0.0.1/tcp/0"]\n[limits]\nhandshake_timeout = 4\n'
            '[limits.peer]\nstreams_inbound = 7\n[limits.service.web]\nfd = 3\n'
        )
        config = loadConfig(home / "config.toml")
        daemon = yield _startDaemon(self, config, home=home)
        self.assertIsInstance(daemon.node.resources, ResourceManager)
        self.assertIs(daemon.node.resources.limits, config.limits)
        self.assertIs(daemon.node.resources.clock, reactor)
        self.assertEqual(daemon.node.handshakeTimeout, 4.0)
        self.assertEqual(daemon.status().resources, daemon.node.resources.status())
        status = yield ControlClient(reactor, home).request("GET", "/v1/status")
        resources = status["resources"]
        self.assertEqual(set(resources), {"enabled", "limits", "system", "transient", "peers", "protocols", "services",
                                          "refusals"})
        self.assertEqual(resources["limits"]["peer"]["streams_inbound"], 7)
        self.assertEqual(resources["limits"]["service"]["web"]["fd"], 3)
        self.assertEqual(resources["limits"]["system"]["fd"], defaultLimits().system.fd)
        self.assertEqual(resources["refusals"], {})
        self.assertIs(resources["enabled"], True)

    @inlineCallbacks
    def test_limitsDisabled(self):
        """
        C{[limits] enabled = false} runs the node with a
        L{NullResourceManager}, which status reports as not enabled, and
        its streams carry no scope.
        """
        home = Path(self.mktemp())
        home.mkdir(mode=0o700)
        (home / "config.toml").write_text('listen = ["/ip4/127.0.0.1/tcp/0"]\n[limits]\nenabled = false\n')
        daemon = yield _startDaemon(self, loadConfig(home / "config.toml"), home=home)
        self.assertIsInstance(daemon.node.resources, NullResourceManager)
        self.assertIs(daemon.status().resources["enabled"], False)

    @inlineCallbacks
    def test_nodeOptionsWin(self):
        """
        A caller's own node options (a test's resource manager) replace
        the configuration's.
        """
        manager = unlimitedManager()
        daemon = yield _startDaemon(self, nodeOptions={"resources": manager, "handshakeTimeout": 2.0})
        self.assertIs(daemon.node.resources, manager)
        self.assertEqual(daemon.node.handshakeTimeout, 2.0)

    @inlineCallbacks
    def test_tunnelChangesRepublishNames(self):
        """
        The name service hears of every tunnel exposed or withdrawn (its
        records list the services) and publishes our names again.
        """
        daemon = yield _startDaemon(self)
        self.assertIn(daemon.names.republishAll, daemon.tunnels.changeObservers)
        heard = []
        daemon.tunnels.changeObservers.append(lambda: heard.append(list(daemon.tunnels.services)))
        daemon.tunnels.exposePort(4242)
        daemon.tunnels.remove("4242")
        self.assertEqual(heard, [["4242"], []])

    @inlineCallbacks
    def test_recordsListOnlyPublicServices(self):
        """
        The services our name records list are the public ones: a tunnel
        with C{--allow} or C{--secret} is learned from its share address,
        not from the public record.
        """
        daemon = yield _startDaemon(self)
        daemon.tunnels.exposePort(4242)
        daemon.tunnels.exposePort(4243, allow=[Identity.generate().peerID])
        daemon.tunnels.exposePort(4244, secret=True)
        daemon.tunnels.exposePort(4245, name="web")
        self.assertEqual(list(daemon.names._services()), ["4242", "web"])

    @inlineCallbacks
    def test_shutdown(self):
        """
        POST /v1/shutdown answers, then calls C{onShutdown}.
        """
        called = []
        daemon = yield _startDaemon(self, onShutdown=lambda: called.append(True))
        answer = yield ControlClient(reactor, daemon.home).request("POST", "/v1/shutdown")
        self.assertEqual(answer, {"stopping": True})
        yield deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(called, [True])
