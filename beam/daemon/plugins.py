"""
How a service joins every Beam node: the registration seam.

A node's services (the DHT, names, tunnels, forwards, and whatever a
plugin adds) are each registered as one L{IBeamService}: a name and a
C{makeService(context)} that builds a Twisted L{IService} from the
daemon's L{DaemonContext}.  The daemon makes them in order (a later one
may use an earlier one, by name), runs them as its named children, mounts
each one's control resource at C{/v1/<name>} of the control socket, and
shows each one's status under C{"<name>"} in C{beam status --json}.

Two registrations cover nearly every case, each one line:

  - L{BeamService}C{(name, "package.module.makeService", description)}:
    the named function is imported only when the daemon starts (like
    Twisted's C{ServiceMaker}) and returns the service.  If the service
    has a C{status()} method (returning a frozen L{attrs} value, or a
    tuple of them) it is shown in status; if it has C{controlResource()}
    (returning a L{beam.controlapi.JSONResource}, or any
    C{twisted.web} resource) it is mounted.
  - L{BeamProtocol}C{(name, protocolID, "package.module.Protocol")}:
    serves one stream protocol; each inbound stream that negotiates
    C{protocolID} gets a new C{Protocol()}.

The built-in services are registered in L{beam.daemon.builtins}; other
packages register theirs with a Twisted plugin: a file in a
C{twisted/plugins/} directory of their distribution (no C{__init__.py}
there) holding such an object, found with L{twisted.plugin.getPlugins}::

    # twisted/plugins/hello_beam.py
    from beam.daemon.plugins import BeamService
    hello = BeamService("hello", "hello_beam.makeService", "answers /hello/1.0.0")

The configuration can switch plugins off (C{[plugins] enabled = false},
or C{disable = ["hello"]}).  A plugin that fails to load, to build its
service or to start is logged and reported in status; the node runs on.
"""

from __future__ import annotations

import os
import re
import types
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any, Optional, Union

import attrs
from twisted.application.service import IService, Service
from twisted.logger import Logger
from twisted.plugin import IPlugin
from twisted.python.reflect import namedAny
from zope.interface import Attribute, Interface, implementer

from beam.errors import BeamError

__all__ = [
    "BeamProtocol",
    "BeamService",
    "DaemonContext",
    "IBeamService",
    "InvalidServiceName",
    "ProtocolService",
    "ProtocolStatus",
    "checkServiceName",
    "discoverPlugins",
]

log = Logger()

#: A service's name: its key in status, its place in the control API.
SERVICE_NAME = re.compile(r"^[a-z][a-z0-9-]{0,31}$")

#: Names a service cannot take: the daemon's own routes and status keys.
RESERVED = frozenset({
    "v1", "status", "shutdown", "network", "resolve", "services", "control", "node",
    "addrs", "connections", "protocols", "resources",
})


class InvalidServiceName(BeamError):
    """
    That is not a valid service name.
    """


def checkServiceName(name: Any) -> str:
    """
    @return: C{name}, when it can name a service.
    @raise InvalidServiceName: it cannot.
    """
    if not isinstance(name, str) or not SERVICE_NAME.match(name):
        raise InvalidServiceName(
            f"service name {name!r} must be 1-32 lower-case letters, digits or '-', starting with a letter"
        )
    if name in RESERVED:
        raise InvalidServiceName(f"service name {name!r} is reserved for the daemon itself")
    return name


class IBeamService(Interface):
    """
    One service every Beam node runs (see the module docstring).
    """

    name = Attribute(
        "The service's name (see L{SERVICE_NAME}): its name among the daemon's children, "
        "its key in status, and its control resource's place, /v1/<name>."
    )
    description = Attribute("One line for humans: what it does.")

    def makeService(context: DaemonContext) -> IService:
        """
        Build the service (not started: the daemon starts it, after the
        node listens, and stops it before the node).
        """

    def status(service: IService) -> Any:
        """
        The service's status: a frozen L{attrs} value, or a tuple of them,
        or L{None} for none.
        """

    def controlResource(service: IService) -> Any:
        """
        The C{twisted.web} resource to mount at C{/v1/<name>}, or L{None}.
        """


@attrs.frozen
class DaemonContext:
    """
    What a service is built from.

    @ivar reactor: the reactor (the only one services may use).
    @ivar home: the node's home directory (for the service's own files).
    @ivar identity: the node's L{Identity<beam.identity.keys.Identity>}.
    @ivar config: the node's L{Config<beam.daemon.config.Config>}.
    @ivar host: the node, an L{IHost<beam.p2p.interfaces.IHost>}: set and
        remove stream handlers, open streams, watch connections.
    @ivar services: the services made so far, by name (read-only).
    @ivar options: extra keyword arguments per service name (tests use
        them to shorten timers).
    @ivar random: where randomness comes from (C{random(n)} gives n bytes).
    """

    reactor: Any
    home: Path
    identity: Any
    config: Any
    host: Any
    services: Mapping[str, IService] = attrs.field(factory=lambda: types.MappingProxyType({}))
    options: Mapping[str, Mapping[str, Any]] = attrs.field(factory=dict)
    random: Callable[[int], bytes] = os.urandom

    def service(self, name: str) -> Any:
        """
        The service registered as C{name}.

        @raise LookupError: none was (yet): registration order matters.
        """
        try:
            return self.services[name]
        except KeyError:
            raise LookupError(f"no service named {name!r} was made before this one") from None

    def optionsFor(self, name: str) -> dict[str, Any]:
        """
        The extra keyword arguments given for the service C{name}.
        """
        return dict(self.options.get(name, {}))


def _resolve(target: Union[str, Callable[..., Any]]) -> Callable[..., Any]:
    return namedAny(target) if isinstance(target, str) else target


@implementer(IPlugin, IBeamService)
class BeamService:
    """
    Registers a service built by a factory function; see the module
    docstring.
    """

    def __init__(self, name: str, factory: Union[str, Callable[[DaemonContext], IService]],
                 description: str = "") -> None:
        """
        @param factory: C{makeService(context) -> IService}, or its dotted
            name (imported when first needed).
        """
        self.name = checkServiceName(name)
        self.factory = factory
        self.description = description

    def __repr__(self) -> str:
        return f"<BeamService {self.name!r}>"

    def makeService(self, context: DaemonContext) -> IService:
        return _resolve(self.factory)(context)

    def status(self, service: IService) -> Any:
        status = getattr(service, "status", None)
        return status() if callable(status) else None

    def controlResource(self, service: IService) -> Any:
        resource = getattr(service, "controlResource", None)
        return resource() if callable(resource) else None


@attrs.frozen
class ProtocolStatus:
    """
    A protocol served by a L{ProtocolService}.

    @ivar streams: inbound streams it was given since start.
    """

    protocol: str
    streams: int = 0


class ProtocolService(Service):
    """
    Serves one stream protocol on a host while running.

    @ivar streams: inbound streams handed to the protocol so far.
    """

    def __init__(self, host: Any, protocolID: str, handler: Callable[[], Any]) -> None:
        self.host = host
        self.protocolID = protocolID
        self.handler = handler
        self.streams = 0

    def _newStream(self) -> Any:
        self.streams += 1
        return self.handler()

    def startService(self) -> None:
        super().startService()
        self.host.setStreamHandler(self.protocolID, self._newStream)

    def stopService(self) -> None:
        super().stopService()
        if self.host.hasStreamHandler(self.protocolID):
            self.host.removeStreamHandler(self.protocolID)

    def status(self) -> ProtocolStatus:
        return ProtocolStatus(protocol=self.protocolID, streams=self.streams)


@implementer(IPlugin, IBeamService)
class BeamProtocol(BeamService):
    """
    Registers one stream protocol: every node serves C{protocolID}, each
    inbound stream getting a new protocol from C{handler()}.
    """

    def __init__(self, name: str, protocolID: str, handler: Union[str, Callable[[], Any]],
                 description: str = "") -> None:
        """
        @param handler: a protocol class (or any callable returning a
            protocol), or its dotted name (imported when first needed).
        """
        super().__init__(name, self._make, description or f"serves {protocolID}")
        self.protocolID = protocolID
        self.handler = handler

    def __repr__(self) -> str:
        return f"<BeamProtocol {self.name!r} {self.protocolID}>"

    def _make(self, context: DaemonContext) -> IService:
        return ProtocolService(context.host, self.protocolID, _resolve(self.handler))


def discoverPlugins(
    enabled: bool = True, disabled: Collection[str] = (), package: Optional[types.ModuleType] = None,
) -> tuple[list[IBeamService], list[IBeamService]]:
    """
    The installed plugins, by name: those to run, and those the
    configuration disables.

    @param package: where to look (default: every C{twisted/plugins/}
        directory on C{sys.path}).
    """
    if not enabled:
        return [], []
    from twisted.plugin import getPlugins

    found = sorted(getPlugins(IBeamService, package), key=lambda p: str(getattr(p, "name", "")))
    active = [p for p in found if getattr(p, "name", None) not in disabled]
    skipped = [p for p in found if getattr(p, "name", None) in disabled]
    return active, skipped
