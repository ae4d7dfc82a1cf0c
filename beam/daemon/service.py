"""
The Beam daemon: a node plus the services registered for every node.

L{BeamDaemon} is the L{MultiService} that C{beam 3000}, C{beam daemon},
C{beam connect} (when no node runs) and C{twistd beam} all run.  It only
assembles; what it runs is registered (L{beam.daemon.plugins}).  Its named
children, started in this order and stopped in the reverse one:

  - C{"control"}: the HTTP+JSON control socket (L{beam.daemon.control}), first,
    so a second daemon for the same home is detected before it binds ports;
  - C{"node"}: the libp2p node (L{beam.p2p.host.node.Node});
  - the built-in services (L{beam.daemon.builtins.BUILTINS}): C{"tor"},
    C{"nat"}, C{"tunnels"}, C{"kademlia"}, C{"names"}, C{"forwards"};
  - the services of installed plugins, by name, unless the configuration
    disables them.
  - C{"web"}: the dashboard (L{beam.daemon.web}), when C{web} is not off;
    C{/v1/web}.

Each service's control resource is mounted at C{/v1/<name>} of the control
socket and its status shown under C{"<name>"} in L{status}.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Optional, Sequence

from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred, fail, inlineCallbacks
from twisted.logger import Logger
from twisted.python.failure import Failure

from beam.daemon.config import Config
from beam.daemon.control.resource import ControlRoot, StatusResource
from beam.daemon.control.socket import ControlService
from beam.daemon.plugins import DaemonContext, IBeamService, checkServiceName, discoverPlugins
from beam.daemon.status import DaemonStatus, ServiceInfo
from beam.errors import BeamError
from beam.statemachine import Readiness
from beam.identity.keys import Identity
from beam.identity.multiaddr import Multiaddr
from beam.p2p.host.node import Node
from beam.p2p.host.status import nodeStatus
from beam.p2p.resources import NullResourceManager, ResourceManager
from beam.storage.home import readState, updateState
from beam.tunnel.host import TunnelSpecError

__all__ = ["BeamDaemon", "TunnelSpecError"]


class _Registered:
    """
    A registration and what became of it.
    """

    def __init__(self, entry: Any, origin: str, service: Optional[IService] = None,
                 failure: Optional[str] = None, disabled: bool = False) -> None:
        self.entry = entry
        self.origin = origin
        self.service = service
        self.failure = failure
        self.disabled = disabled
        self.name = str(getattr(entry, "name", "?"))
        self.description = str(getattr(entry, "description", "") or "")

    def info(self) -> ServiceInfo:
        if self.disabled:
            state = "disabled"
        elif self.failure is not None:
            state = f"failed: {self.failure}"
        else:
            state = "running" if self.service is not None and self.service.running else "stopped"
        return ServiceInfo(name=self.name, origin=self.origin, state=state, description=self.description)


class BeamDaemon(MultiService):
    """
    One node with the services registered for every node.

    @ivar node: the L{Node}.
    @ivar control: the L{ControlService}, or L{None} without a control socket.
    @ivar controlRoot: the control socket's resource tree.
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
        onStartFailure: Optional[Callable[[Any], Any]] = None,
        random: Callable[[int], bytes] = os.urandom,
        nodeOptions: Optional[dict[str, Any]] = None,
        serviceOptions: Optional[dict[str, dict[str, Any]]] = None,
        services: Optional[Sequence[IBeamService]] = None,
        plugins: Optional[Sequence[IBeamService]] = None,
    ) -> None:
        """
        @param services: the built-in registrations (default:
            L{BUILTINS<beam.daemon.builtins.BUILTINS>}).
        @param plugins: the plugins' registrations (default: those
            installed, as the configuration's C{[plugins]} allows).
        @param serviceOptions: extra keyword arguments for services, by
            name (e.g. C{{"kademlia": {"refreshInterval": 1}}}).
        """
        super().__init__()
        self.reactor = reactor
        self.home = Path(home)
        self.config = config
        self._rememberPort = rememberPort
        self._onShutdown = onShutdown
        self._onStartFailure = onStartFailure
        self._readiness = Readiness()
        self.controlRoot = ControlRoot(self)
        if control:
            self.control: Optional[ControlService] = ControlService(reactor, self.home, self.controlRoot)
            self.control.setName("control")
            self.control.setServiceParent(self)
        else:
            self.control = None
        listen, options = self._transports(self._listenAddrs(config.listen), self._nodeOptions(nodeOptions),
                                           nodeOptions or {})
        self.node = Node(reactor, identity, listen, **options)
        self.node.setName("node")
        self.node.setServiceParent(self)
        self._made: dict[str, IService] = {}
        self._registered: list[_Registered] = []
        self.context = DaemonContext(
            reactor=reactor, home=self.home, identity=identity, config=config, host=self.node,
            services=MappingProxyType(self._made), options=dict(serviceOptions or {}), random=random,
        )
        if services is None:
            from beam.daemon.builtins import BUILTINS

            services = BUILTINS
        for entry in services:
            self._register(entry, "builtin")
        disabled: Sequence[IBeamService] = ()
        if plugins is None:
            try:
                plugins, disabled = discoverPlugins(config.plugins, config.disabledPlugins)
            except Exception:
                self.log.failure("could not look for plugins")
                plugins = []
        for entry in disabled:
            self._registered.append(_Registered(entry, "plugin", disabled=True))
        for entry in plugins:
            try:
                self._register(entry, "plugin")
            except BeamError as e:
                self.log.error("plugin {name} was not loaded: {why}", name=getattr(entry, "name", entry), why=e)
                self._registered.append(_Registered(entry, "plugin", failure=_why(e)))
            except Exception as e:
                self.log.failure("plugin {name} could not be loaded", name=getattr(entry, "name", entry))
                self._registered.append(_Registered(entry, "plugin", failure=_why(e)))
        # The dashboard (issue 13) last: started after every service, stopped
        # before them, so it never shows a node half up or half down.
        from beam.daemon.config import WebConfig
        from beam.daemon.web import WebResource, WebService

        self.web = WebService(reactor, self, getattr(config, "web", None) or WebConfig(enabled=False), self.home)
        self.web.setName("web")
        self.web.setServiceParent(self)
        self.controlRoot.mount("web", WebResource(self.web))

    def _nodeOptions(self, given: Optional[dict[str, Any]]) -> dict[str, Any]:
        """
        The node's keyword arguments: the configuration's limits (a
        L{ResourceManager} logging refusals on the reactor's clock) and
        handshake timeout, then C{given} (a test's), which wins.
        """
        if self.config.limitsEnabled:
            resources: ResourceManager = ResourceManager(self.config.limits, clock=self.reactor)
        else:
            self.log.warn("[limits] enabled = false: no resource limits; do not let strangers reach this node")
            resources = NullResourceManager(clock=self.reactor)
        options: dict[str, Any] = {"resources": resources}
        if self.config.handshakeTimeout is not None:
            options["handshakeTimeout"] = self.config.handshakeTimeout
        options.update(given or {})
        return options

    def _transports(
        self, listen: list[Multiaddr], options: dict[str, Any], given: dict[str, Any],
    ) -> tuple[list[Multiaddr], dict[str, Any]]:
        """
        The node's listen addresses and transports for the configured Tor
        mode (C{[tor] mode}, read defensively: a configuration without a
        C{tor} section means C{"off"}):

          - C{"off"}: as configured (TCP);
          - C{"fallback"}: TCP, and the L{TorTransport
            <beam.p2p.transport.tor.TorTransport>} after it;
          - C{"always"}: the Tor transport only, and no TCP listener at all
            (the C{"tor"} service makes the node listen on its onion
            address once published).

        Transports a test gives in C{nodeOptions} win.
        """
        mode = getattr(getattr(self.config, "tor", None), "mode", "off")
        if mode == "off" or "transports" in given:
            return listen, options
        from beam.p2p.transport.tcp import TCPTransport
        from beam.p2p.transport.tor import TorTransport

        tor = TorTransport(self.reactor, mode)
        if mode == "always":
            if listen:
                self.log.info(
                    "Tor mode 'always': no TCP listener (the listen addresses {addrs} are ignored); "
                    "the node listens only on its onion service",
                    addrs=", ".join(str(a) for a in listen),
                )
            options["transports"] = [tor]
            return [], options
        options["transports"] = [TCPTransport(self.reactor), tor]
        return listen, options

    def _register(self, entry: IBeamService, origin: str) -> None:
        """
        Make the service, make it our child, mount its resource.
        """
        name = checkServiceName(entry.name)
        if name in self._made:
            raise BeamError(f"two services are named {name!r}")
        service = entry.makeService(self.context)
        service.setName(name)
        service.setServiceParent(self)
        self._made[name] = service
        reg = _Registered(entry, origin, service)
        self._registered.append(reg)
        if origin == "plugin":
            _isolate(service, reg, self.log)
        resource = entry.controlResource(service)
        if resource is None and entry.status(service) is not None:
            resource = StatusResource(name, lambda: entry.status(service))
        if resource is not None:
            self.controlRoot.mount(name, resource)
        if origin == "plugin":
            self.log.info("plugin service {name} loaded: {description}", name=name,
                          description=getattr(entry, "description", ""))

    # -- the services ----------------------------------------------------

    def service(self, name: str) -> Any:
        """
        The service registered as C{name}.

        @raise KeyError: none is.
        """
        return self._made[name]

    @property
    def tunnels(self) -> Any:
        """
        The L{TunnelHost<beam.tunnel.host.TunnelHost>}.
        """
        return self._made["tunnels"]

    @property
    def kademlia(self) -> Any:
        """
        The L{KademliaService<beam.dht.service.KademliaService>}.
        """
        return self._made["kademlia"]

    @property
    def names(self) -> Any:
        """
        The L{NameService<beam.names.service.NameService>}.
        """
        return self._made["names"]

    @property
    def forwards(self) -> Any:
        """
        The L{Forwards<beam.tunnel.forwards.Forwards>}.
        """
        return self._made["forwards"]

    def status(self) -> DaemonStatus:
        """
        The node's status and each service's.
        """
        sections = []
        for reg in self._registered:
            if reg.service is None:
                continue
            try:
                value = reg.entry.status(reg.service)
            except Exception:
                self.log.failure("the status of {name} failed", name=reg.name)
                continue
            if value is not None:
                sections.append((reg.name, value))
        sections.append(("web", self.web.status()))
        return DaemonStatus(
            node=nodeStatus(self.node),
            services=tuple(reg.info() for reg in self._registered),
            sections=tuple(sections),
            resources=self.node.resources.status(),
        )

    def shutdown(self) -> dict[str, Any]:
        """
        Stop the node soon (after this answer has gone out).
        """
        if self._onShutdown is not None:
            self.reactor.callLater(0, self._onShutdown)
        else:
            self.reactor.callLater(0, self.reactor.stop)
        return {"stopping": True}

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
        Start every child through L{MultiService.startService}, in order:
        the control socket (whose bind is synchronous: a second node for
        this home is detected before anything else starts), the node, the
        services.  A plugin's service that raises is logged and shown as
        failed; the others start.  What is asynchronous (the node's
        listeners, falling back from a remembered port that is taken, the
        configured tunnels and forwards) is reported by L{whenReady}.
        """
        self._readiness = Readiness()
        if self.control is not None:
            # Started first, and alone, so that a home another node serves
            # stops us before the node binds any port.
            self.control.startService()
            why = self.control.startFailure()
            if why is not None:
                self._readiness.begin(fail(why))
                self._reportStartFailure()
                return
        MultiService.startService(self)
        self._readiness.begin(self._finishStart())
        self._reportStartFailure()

    def _reportStartFailure(self) -> None:
        if self._onStartFailure is not None:
            self.whenReady().addErrback(self._onStartFailure)

    def whenReady(self) -> Deferred[None]:
        """
        Fires once the control socket and the listening ports are up and
        the configured tunnels and forwards exist; fails with why not
        (L{beam.daemon.control.NodeAlreadyRunning}, a listen failure...).
        """
        return self._readiness.when()

    def start(self) -> Deferred["BeamDaemon"]:
        """
        L{startService}, then L{whenReady}: what the CLI and the C{beam:}
        endpoints call.  Fires with the daemon.
        """
        self.startService()
        return self.whenReady().addCallback(lambda _: self)

    @inlineCallbacks
    def _finishStart(self) -> Any:
        try:
            yield self.node.whenListening()
        except BeamError:
            if self.node.configuredListenAddrs != list(self.config.listen):
                # The remembered port is taken: fall back to the configured one.
                yield self.node.stopService()
                self.node.configuredListenAddrs = list(self.config.listen)
                self.node.startService()
                yield self.node.whenListening()
            else:
                raise
        self._savePort()
        for tunnel in self.config.tunnels:
            self.tunnels.exposePort(tunnel.port, tunnel.name, tunnel.udp, tunnel.compress,
                                    list(tunnel.allow) if tunnel.allow else None, tunnel.secret)
        yield self._waitForTor()
        for fwd in self.config.forwards:
            yield self.forwards.start(fwd.address, fwd.port, fwd.bind, fwd.service, False, "tcp")

    @inlineCallbacks
    def _waitForTor(self) -> Any:
        """
        Wait until the C{"tor"} service published the onion service: in
        mode C{"always"} a failure fails the start (the node has no other
        way in or out); in C{"fallback"} it is logged and the node runs on
        without Tor.
        """
        tor: Any = self._made.get("tor")
        mode = getattr(tor, "mode", "off")
        if tor is None or mode == "off":
            return
        try:
            yield tor.whenReady()
        except Exception as e:
            if mode == "always":
                raise
            self.log.warn("Tor is not available ({why}): running without it", why=_why(e))

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

    def stopService(self) -> Deferred[None]:
        """
        Stop the children in reverse order: plugins' services, forwards,
        names, the DHT, tunnels, the node, the control socket.
        """
        return MultiService.stopService(self)


def _isolate(service: IService, reg: _Registered, log: Logger) -> None:
    """
    A plugin's service that fails to start (raises, or returns a failing
    Deferred) is logged and marked failed; L{MultiService.startService}
    goes on with the next child instead of stopping there.
    """
    start = service.startService

    def guarded() -> None:
        try:
            result = start()
        except Exception as e:
            log.failure("plugin service {name} failed to start", name=reg.name)
            reg.failure = _why(e)
            return
        if isinstance(result, Deferred):
            def failed(f: Failure) -> None:
                log.failure("plugin service {name} failed to start", failure=f, name=reg.name)
                reg.failure = _why(f.value)

            result.addErrback(failed)

    service.startService = guarded  # type: ignore[method-assign]


def _why(error: BaseException) -> str:
    return str(error) or type(error).__name__
