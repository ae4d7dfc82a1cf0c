"""
The Beam daemon: a node plus everything users ask of it.

L{BeamDaemon} is the L{MultiService} that C{beam 3000}, C{beam daemon},
C{beam connect} (when no node runs) and C{twistd beam} all run.  Its named
children, started in this order:

  - C{"control"}: the HTTP+JSON control socket (L{beam.daemon.control}), first,
    so a second daemon for the same home is detected before it binds ports;
  - C{"node"}: the libp2p node (L{beam.p2p.host.node.Node});
  - C{"tunnels"}: the tunnel host (L{beam.tunnel.host.TunnelHost}), a
    child of the node;
and the forwards (L{beam.tunnel.client.TunnelForward}), kept by local
port and stopped first.

It implements L{IControlAPI}, so the CLI and C{curl --unix-socket} drive
it the same way.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks, maybeDeferred
from twisted.logger import Logger
from zope.interface import implementer

from beam.daemon.config import Config
from beam.dht.service import KademliaService
from beam.names.service import NameService
from beam.daemon.control import ControlService, IControlAPI
from beam.errors import BeamError, Conflict, NotFound
from beam.storage.home import readState, updateState
from beam.identity.keys import Identity, PeerID
from beam.identity.multiaddr import Multiaddr
from beam.p2p.host.node import Node
from beam.p2p.transport.tcp import listenFailureReason
from beam.tunnel.share import ShareAddress, parseShareAddress
from beam.tunnel.access import PUBLIC, AccessPolicy
from beam.tunnel.client import TunnelForward
from beam.tunnel.host import ServiceSpec, TunnelHost
from beam.tunnel.protocol import TunnelRefused

SECRET_BYTES = 16


class TunnelSpecError(BeamError):
    """
    That tunnel cannot be set up.
    """


@implementer(IControlAPI)
class BeamDaemon(MultiService):
    """
    One node with its tunnels, forwards and control socket.

    @ivar node: the L{Node}.
    @ivar tunnels: the L{TunnelHost}.
    @ivar forwards: the forwards by key (their local port, as text).
    @ivar secrets: the generated or given secret of each private tunnel.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        home: Path,
        identity: Identity,
        config: Config,
        *,
        control: bool = True,
        rememberPort: bool = True,
        onShutdown: Optional[Callable[[], Any]] = None,
        random: Callable[[int], bytes] = os.urandom,
        nodeOptions: Optional[dict[str, Any]] = None,
        dhtOptions: Optional[dict[str, Any]] = None,
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.home = Path(home)
        self.config = config
        self._random = random
        self._rememberPort = rememberPort
        self._onShutdown = onShutdown
        self.forwards: dict[str, TunnelForward] = {}
        self.secrets: dict[str, bytes] = {}
        if control:
            self.control: Optional[ControlService] = ControlService(reactor, self.home, self)
            self.control.setName("control")
            self.control.setServiceParent(self)
        else:
            self.control = None
        self.node = Node(reactor, identity, self._listenAddrs(config.listen), **(nodeOptions or {}))
        self.node.setName("node")
        self.node.setServiceParent(self)
        self.tunnels = TunnelHost(reactor, self.node)
        self.tunnels.setServiceParent(self.node)
        self.kademlia = KademliaService(
            reactor, self.node, self.home, bootstrapAddrs=config.bootstrap, **(dhtOptions or {})
        )
        self.kademlia.setServiceParent(self.node)
        self.names = NameService(
            reactor, identity, self.kademlia, self.home,
            addrs=self._recordAddrs, services=lambda: list(self.tunnels.services),
        )
        self.names.setName("names")
        self.names.setServiceParent(self)

    # -- lifecycle -------------------------------------------------------

    def _listenAddrs(self, configured: Sequence[Multiaddr]) -> list[Multiaddr]:
        """
        Reuse the port of the last run when the configuration leaves the
        port to the system (C{/tcp/0}), so share addresses survive a
        restart.
        """
        if not self._rememberPort:
            return list(configured)
        port = readState(self.home).get("listen_port")
        out = []
        for addr in configured:
            target = addr.tcpTarget()
            if target is not None and target[1] == 0 and isinstance(port, int) and 0 < port < 65536:
                proto = "ip6" if target[2] == "ip6" else "ip4"
                addr = Multiaddr.fromString(f"/{proto}/{target[0]}/tcp/{port}")
            out.append(addr)
        return out

    def startService(self) -> None:
        """
        Start as a twistd service: failures to start are logged and stop
        the reactor (twistd has no other way to hear about them).
        """
        d = self.start()

        def failed(f: Any) -> None:
            self.log.critical("beam could not start: {why}", why=f.getErrorMessage())
            self.reactor.callLater(0, self.reactor.stop)

        d.addErrback(failed)

    @inlineCallbacks
    def start(self) -> Any:
        """
        Start every child; fires once the control socket and the listening
        ports are up and the configured tunnels and forwards exist.

        @raise beam.daemon.control.NodeAlreadyRunning: another node serves this home.
        """
        # Children are started one by one (not by MultiService), each
        # waited for, so a failure stops the sequence with its own error.
        self.running = 1
        if self.control is not None:
            yield self.control.startService()
        try:
            yield self.node.startService()
        except BeamError:
            if self.node.configuredListenAddrs != list(self.config.listen):
                # The remembered port is taken: fall back to the configured one.
                yield self.node.stopService()
                self.node.configuredListenAddrs = list(self.config.listen)
                yield self.node.startService()
            else:
                raise
        self._savePort()
        self.names.startService()
        for tunnel in self.config.tunnels:
            self.addTunnel(tunnel.port, tunnel.name, tunnel.udp, tunnel.compress,
                           list(tunnel.allow) if tunnel.allow else None, tunnel.secret)
        for fwd in self.config.forwards:
            yield self._startForward(fwd.address, fwd.port, fwd.bind, fwd.service, False, "tcp")
        return self

    def _savePort(self) -> None:
        if not self._rememberPort:
            return
        for addr in self.node.listenAddrs:
            target = addr.tcpTarget()
            if target is not None:
                try:
                    updateState(self.home, listen_port=target[1])
                except OSError as e:
                    self.log.warn("could not save the listen port: {why}", why=e)
                return

    def stopService(self) -> Deferred[None]:  # type: ignore[override]
        """
        Stop the forwards, then the children (node, then control socket).
        """
        forwards = [maybeDeferred(f.stopService) for f in self.forwards.values()]
        self.forwards = {}
        d = DeferredList(forwards, consumeErrors=True)
        return d.addCallback(lambda _: MultiService.stopService(self))

    # -- sharing ---------------------------------------------------------

    def _recordAddrs(self) -> list[Multiaddr]:
        """
        The addresses our name records carry: non-loopback first.
        """
        return sorted(
            (a.withoutPeerID() for a in self.node.advertisedAddrs()), key=lambda a: a.isLoopback()
        )

    def shareAddress(self, name: str) -> ShareAddress:
        """
        The share address of the tunnel C{name}: our addresses (loopback
        last), the service and its secret.
        """
        addrs = sorted(
            (a.withoutPeerID() for a in self.node.advertisedAddrs()),
            key=lambda a: a.isLoopback(),
        )
        return ShareAddress(
            peer=self.node.peerID, addrs=tuple(addrs), service=name, secret=self.secrets.get(name)
        )

    # -- IControlAPI -----------------------------------------------------

    def addTunnel(
        self,
        port: int,
        name: Optional[str] = None,
        udp: bool = False,
        compress: bool = False,
        allow: Optional[list[PeerID]] = None,
        secret: bool | str = False,
        host: str = "127.0.0.1",
    ) -> dict[str, Any]:
        """
        Expose C{port} on C{host} (by default this machine's loopback).
        """
        kind = "udp" if udp else "tcp"
        if isinstance(secret, str) and secret:
            secretBytes: Optional[bytes] = secret.encode("utf-8")
        elif secret is True:
            secretBytes = self._random(SECRET_BYTES)
        else:
            secretBytes = None
        policy = PUBLIC if allow is None and secretBytes is None else AccessPolicy(
            allow=frozenset(allow) if allow is not None else None, secret=secretBytes
        )
        try:
            spec = ServiceSpec.forPort(port, name, kind=kind, host=host, policy=policy, compress=compress)
        except ValueError as e:
            raise TunnelSpecError(str(e)) from None
        for existing in self.tunnels.services.values():
            if existing.port == port and existing.kind == kind and existing.host == spec.host:
                raise Conflict(f"{kind} port {port} is already exposed as {existing.name!r}")
        if spec.name in self.tunnels.services:
            raise Conflict(f"a tunnel named {spec.name!r} already exists")
        self.tunnels.expose(spec)
        if secretBytes is not None:
            self.secrets[spec.name] = secretBytes
        self.names.republishAll()
        described = self._describeTunnel(spec)
        self.log.info(
            "exposing {kind} {where} as {name}; on the other side run: {connect}",
            kind=kind, where=spec.where, name=spec.name, connect=described["connect"],
        )
        return described

    def _describeTunnel(self, spec: ServiceSpec) -> dict[str, Any]:
        share = self.shareAddress(spec.name)
        stats = self.tunnels.stats.get(spec.name)
        return {
            "name": spec.name,
            "port": spec.port,
            "kind": spec.kind,
            "target": spec.where,
            "compress": spec.compress,
            "private": not spec.policy.isPublic,
            "allow": sorted(str(p) for p in spec.policy.allow) if spec.policy.allow is not None else None,
            "share": str(share),
            "connect": f"beam connect {share}" + (" --udp" if spec.kind == "udp" else ""),
            "stats": stats.asDict() if stats is not None else {},
        }

    def _findTunnel(self, key: str) -> ServiceSpec:
        spec = self.tunnels.services.get(key)
        if spec is not None:
            return spec
        for spec in self.tunnels.services.values():
            if str(spec.port) == key:
                return spec
        raise NotFound(f"no tunnel named or on port {key}")

    def removeTunnel(self, key: str) -> dict[str, Any]:
        spec = self._findTunnel(key)
        described = self._describeTunnel(spec)
        self.tunnels.unexpose(spec.name)
        self.secrets.pop(spec.name, None)
        self.names.republishAll()
        self.log.info("stopped exposing {where} ({name})", where=spec.where, name=spec.name)
        return described

    def addForward(
        self,
        target: str,
        port: Optional[int] = None,
        bind: Optional[str] = None,
        service: Optional[str] = None,
        compress: bool = False,
        udp: bool = False,
    ) -> Deferred[dict[str, Any]]:
        """
        Listen on C{bind}:C{port} and forward to C{target}, after checking
        that the host is reachable and accepts us.
        """
        d = self.resolveTarget(target, service)
        return d.addCallback(
            lambda share: self._startForward(
                share, port, bind, service, compress, "udp" if udp else "tcp", probe=True,
                name=None if target.startswith(("beam://", "/")) else target.partition("/")[0],
            )
        )

    @inlineCallbacks
    def _startForward(
        self,
        share: ShareAddress,
        port: Optional[int],
        bind: Optional[str],
        service: Optional[str],
        compress: bool,
        kind: str,
        probe: bool = False,
        name: Optional[str] = None,
    ) -> Any:
        """
        @param probe: first check that the host is reachable and would
            accept our tunnels, failing with a clear error if not (for
            C{beam connect}); forwards from the configuration file start
            regardless and keep retrying.
        """
        if service:
            share = ShareAddress(peer=share.peer, addrs=share.addrs, service=service, secret=share.secret)
        if share.peer == self.node.peerID:
            raise TunnelSpecError("that share address is this node's own: connect to the service directly")
        resolveAddrs = None
        if name is not None:
            def resolveAddrs() -> Deferred[Any]:
                return self.names.resolve(name).addCallback(
                    lambda r: [Multiaddr.fromString(a) for a in r["addrs"]]
                )
        fwd = TunnelForward.fromShare(
            self.reactor, self.node, share, kind=kind, localPort=port or 0,
            bind=bind or "127.0.0.1", compress=compress, resolveAddrs=resolveAddrs,
        )
        try:
            yield fwd.startService()
        except Exception as e:
            fwd.stopService()
            where = f"{bind or '127.0.0.1'}:{port or 0}"
            raise TunnelSpecError(f"cannot listen on {where}: {listenFailureReason(e)}") from None
        if probe:
            try:
                yield fwd.probe()
            except TunnelRefused as e:
                yield fwd.stopService()
                raise TunnelSpecError(f"the host refused the tunnel: {e}") from None
            except BaseException:
                yield fwd.stopService()
                raise
        key = str(fwd.localAddress.port)
        self.forwards[key] = fwd
        self.log.info("forwarding {bind}:{port} to {label}", bind=fwd.bind, port=key, label=fwd.label)
        return self._describeForward(key, fwd)

    def _describeForward(self, key: str, fwd: TunnelForward) -> dict[str, Any]:
        return {
            "name": key,
            "listen": f"{fwd.localAddress.host}:{fwd.localAddress.port}",
            "kind": fwd.kind,
            "peer_id": str(fwd.peer),
            "service": fwd.service,
            "state": fwd.state,
            "stats": fwd.stats.asDict(),
        }

    def removeForward(self, key: str) -> Deferred[dict[str, Any]]:
        fwd = self.forwards.get(key)
        if fwd is None:
            raise NotFound(f"no forward on local port {key}")
        described = self._describeForward(key, fwd)
        del self.forwards[key]
        self.log.info("stopped forwarding port {port}", port=key)
        return maybeDeferred(fwd.stopService).addCallback(lambda _: described)

    # -- names and the network ------------------------------------------

    def registerName(self, name: str, services: Optional[list[str]] = None) -> Deferred[dict[str, Any]]:
        return self.names.register(name, services or ())

    def withdrawName(self, name: str) -> Deferred[dict[str, Any]]:
        return self.names.withdraw(name)

    def resolveName(self, name: str, acceptNewKey: bool = False) -> Deferred[dict[str, Any]]:
        return self.names.resolve(name, acceptNewKey)

    def networkStatus(self) -> dict[str, Any]:
        node = self.node
        return {
            "peer_id": str(node.peerID),
            "listen_addrs": [str(a) for a in node.listenAddrs],
            "addrs": [str(a) for a in node.advertisedAddrs()],
            "observed_addrs": [str(a) for a in node.observedAddrs],
            "connections": len(node.connections),
            "names": [self.names.describe(r) for r in self.names.registrations.values()],
            **self.kademlia.status(),
        }

    def networkRoutes(self) -> dict[str, Any]:
        return self.kademlia.routes()

    def networkBootstrap(self, addrs: Optional[list[str]] = None) -> Deferred[dict[str, Any]]:
        from beam.errors import InvalidMultiaddr

        parsed = []
        for a in addrs or []:
            try:
                ma = Multiaddr.fromString(a)
            except InvalidMultiaddr as e:
                raise TunnelSpecError(f"invalid bootstrap address {a!r}: {e}") from None
            if ma.peerID() is None:
                raise TunnelSpecError(f"bootstrap address {a} must end in /p2p/<peer ID>")
            parsed.append(ma)
        return self.kademlia.bootstrap(parsed or list(self.config.bootstrap))

    @inlineCallbacks
    def resolveTarget(self, target: str, service: Optional[str] = None, acceptNewKey: bool = False) -> Any:
        """
        A share address, a /p2p/ multiaddr, or a name (C{NAME} or
        C{NAME/SERVICE}) as a L{ShareAddress}.
        """
        if target.startswith(("beam://", "/")):
            return parseShareAddress(target, service)
        name, _, svc = target.partition("/")
        resolved = yield self.names.resolve(name, acceptNewKey)
        return ShareAddress(
            peer=PeerID.fromString(resolved["peer_id"]),
            addrs=tuple(Multiaddr.fromString(a) for a in resolved["addrs"]),
            service=service or svc or "",
        )

    def status(self) -> dict[str, Any]:
        node = self.node
        return {
            "peer_id": str(node.peerID),
            "addrs": [str(a) for a in node.advertisedAddrs()],
            "observed_addrs": [str(a) for a in node.observedAddrs],
            "tunnels": [self._describeTunnel(s) for s in self.tunnels.services.values()],
            "forwards": [self._describeForward(k, f) for k, f in self.forwards.items()],
            "connections": [c.describe() for c in node.connections.values()],
            "names": [self.names.describe(r) for r in self.names.registrations.values()],
        }

    def peers(self) -> dict[str, Any]:
        return {"peers": [c.describe() for c in self.node.connections.values()]}

    def shutdown(self) -> dict[str, Any]:
        if self._onShutdown is not None:
            self.reactor.callLater(0, self._onShutdown)
        else:
            self.reactor.callLater(0, self.reactor.stop)
        return {"stopping": True}
