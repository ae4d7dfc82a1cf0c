"""
The endpoint objects: L{BeamServerEndpoint} exposes a factory as a Beam
service, L{BeamClientEndpoint} connects to one.  Both check their
arguments when constructed (raising L{ValueError}) and reach the network
only in C{listen()} / C{connect()}, through the process's shared
L{BeamNode} for their home (or the node they were given).
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Optional, Union, cast

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from zope.interface import implementer

from beam.endpoints._address import BeamAddress
from beam.endpoints._node import BeamNode, launchOrReuse
from beam.endpoints._options import (
    AddrsArg,
    NodeOptions,
    parseBool,
    parseName,
    parsePeerIDs,
    parseSecret,
    parseService,
    parseTarget,
    parseTimeout,
)
from beam.identity.keys import PeerID
from beam.tunnel.access import PUBLIC, AccessPolicy

__all__ = ["BeamClientEndpoint", "BeamListeningPort", "BeamServerEndpoint"]

PathArg = Union[str, "os.PathLike[str]", None]


@implementer(IListeningPort)
class BeamListeningPort:
    """
    A factory exposed as a Beam service, as returned by
    L{BeamServerEndpoint.listen}.

    @ivar node: the L{BeamNode} serving it.
    @ivar service: the service name.
    @ivar factory: the factory.
    """

    def __init__(
        self, node: BeamNode, service: str, factory: IProtocolFactory, policy: AccessPolicy, compress: bool
    ) -> None:
        self.node = node
        self.service = service
        self.factory = factory
        self.policy = policy
        self.compress = compress
        self._spec: Any = None

    def __repr__(self) -> str:
        state = "serving" if self._spec is not None else "stopped"
        return f"<BeamListeningPort {self.getHost()} {state}>"

    @property
    def listening(self) -> bool:
        """
        The service is exposed.
        """
        return self._spec is not None

    def startListening(self) -> None:
        """
        Expose the service (done by L{BeamServerEndpoint.listen}; again
        after L{stopListening}).

        @raise beam.tunnel.ServiceExists: the node exposes a service of
            that name.
        """
        if self._spec is not None:
            return
        self._spec = self.node.serve(self.service, self.factory, self.policy, self.compress)
        self.factory.doStart()

    def stopListening(self) -> Deferred[None]:
        """
        Withdraw the service: new tunnels to it are refused
        (L{beam.tunnel.ServiceNotFound}); connections already open go on.
        """
        spec, self._spec = self._spec, None
        if spec is not None:
            self.node.unserve(spec)
            self.factory.doStop()
        return succeed(None)

    def loseConnection(self) -> Deferred[None]:
        """
        The same as L{stopListening}, as for Twisted's own ports.
        """
        return self.stopListening()

    def getHost(self) -> BeamAddress:
        """
        This node and the service.
        """
        return BeamAddress(self.node.peerID, self.service)

    @property
    def shareAddress(self) -> Any:
        """
        The service's L{beam.tunnel.share.ShareAddress}, with its secret:
        C{beam connect <it>} reaches the service, and so does a client
        endpoint C{beam:<it>} (colons escaped).
        """
        return self.node.shareAddress(self.service)


@implementer(IStreamServerEndpoint)
class BeamServerEndpoint:
    """
    Expose a Twisted factory as a Beam service.

    The string form is C{beam:service=NAME[:OPTION=VALUE...]} (see
    L{beam.endpoints}).
    """

    def __init__(
        self,
        reactor: Any,
        service: str,
        *,
        node: Optional[BeamNode] = None,
        home: PathArg = None,
        listen: AddrsArg = None,
        bootstrap: AddrsArg = None,
        name: Optional[str] = None,
        allow: Union[str, Iterable[Union[str, PeerID]], None] = None,
        secret: Union[str, bytes, None] = None,
        compress: Union[bool, str] = False,
    ) -> None:
        """
        @param service: the service name clients ask for.
        @param node: a running L{BeamNode} to serve on; by default the
            process's node for C{home}, launched if need be (see
            L{beam.endpoints.launchNode} for C{home}, C{listen} and
            C{bootstrap}, which must then be left out).
        @param name: a name to register for the node in the DHT, so that
            clients can reach the service as C{NAME/SERVICE}.
        @param allow: admit only these peers (peer IDs; a list or
            comma-separated text).
        @param secret: admit holders of this secret (given with
            C{secret=} on the client, or carried in the share address).
            With both C{allow} and C{secret}, either admits.
        @param compress: let clients that offer it use lz4.
        @raise ValueError: an argument is not valid.
        """
        self.reactor = reactor
        self.service = parseService(service)
        self.options = NodeOptions.fromArgs(home, listen, bootstrap)
        if node is not None and self.options != NodeOptions():
            raise ValueError("give either node= or home=/listen=/bootstrap=, not both")
        self.node = node
        self.name = parseName(name) if name else None
        allowed = parsePeerIDs(allow)
        secretBytes = parseSecret(secret)
        self.policy = PUBLIC if allowed is None and secretBytes is None else AccessPolicy(
            allow=cast(Any, allowed), secret=secretBytes
        )
        self.compress = parseBool(compress, "compress")

    def __repr__(self) -> str:
        return f"<BeamServerEndpoint service={self.service}>"

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        """
        Launch or reuse the node, expose the service, and register the
        name if one was given.

        @return: fires with a L{BeamListeningPort}, or fails with
            L{beam.tunnel.ServiceExists} (the node already exposes a
            service of that name), L{beam.endpoints.HomeInUse},
            L{beam.endpoints.NodeOptionsConflict}, a name registration
            error, or why the node could not start.
        """
        return Deferred.fromCoroutine(self._listen(factory))

    async def _listen(self, factory: IProtocolFactory) -> IListeningPort:
        node = self.node if self.node is not None else await launchOrReuse(self.reactor, self.options)
        port = BeamListeningPort(node, self.service, factory, self.policy, self.compress)
        port.startListening()
        if self.name is not None and not node.hasName(self.name):
            try:
                await node.registerName(self.name)
            except BaseException:
                await port.stopListening()
                raise
        return port


@implementer(IStreamClientEndpoint)
class BeamClientEndpoint:
    """
    Connect to a Beam service: by name (C{NAME/SERVICE}, resolved in the
    DHT), by share address, or by C{/p2p/} multiaddr and service.

    The string form is C{beam:TARGET[:OPTION=VALUE...]} (see
    L{beam.endpoints}).
    """

    def __init__(
        self,
        reactor: Any,
        target: str,
        *,
        service: Optional[str] = None,
        node: Optional[BeamNode] = None,
        home: PathArg = None,
        listen: AddrsArg = None,
        bootstrap: AddrsArg = None,
        secret: Union[str, bytes, None] = None,
        compress: Union[bool, str] = False,
        timeout: Union[float, str] = 30.0,
    ) -> None:
        """
        @param target: C{NAME}, C{NAME/SERVICE}, a share address
            (C{beam://PEER@HOST:PORT/SERVICE[#SECRET]}), or a multiaddr
            ending in C{/p2p/PEER}, optionally followed by C{/SERVICE}.
            No service means the host's default (first exposed) one.
        @param service: the service, overriding the target's.
        @param node: a running L{BeamNode} to connect from; by default the
            process's node for C{home} (see L{beam.endpoints.launchNode}).
        @param secret: the service's secret (overriding the share
            address's).
        @param compress: offer lz4 compression (the host decides).
        @param timeout: seconds for the whole connection attempt.
        @raise ValueError: an argument is not valid.
        """
        self.reactor = reactor
        self.target = parseTarget(target, service)
        self.options = NodeOptions.fromArgs(home, listen, bootstrap)
        if node is not None and self.options != NodeOptions():
            raise ValueError("give either node= or home=/listen=/bootstrap=, not both")
        self.node = node
        self.secret = parseSecret(secret)
        self.compress = parseBool(compress, "compress")
        self.timeout = parseTimeout(timeout)

    def __repr__(self) -> str:
        return f"<BeamClientEndpoint {self.target.text}>"

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        """
        Launch or reuse the node, open a tunnel, and connect a protocol
        from C{protocolFactory} (built with the host's L{BeamAddress}).

        @return: fires with the protocol, or fails with
            L{beam.tunnel.ServiceNotFound}, L{beam.tunnel.AccessDenied}
            (or another L{beam.tunnel.TunnelRefused}),
            L{beam.endpoints.HostUnreachable}, L{beam.endpoints.OwnService},
            a name resolution error
            (L{beam.names.service.NameNotFound}, ...), or why the node
            could not start.  Cancelling it abandons the attempt.
        """
        return Deferred.fromCoroutine(self._connect(protocolFactory))

    async def _connect(self, factory: IProtocolFactory) -> IProtocol:
        node = self.node if self.node is not None else await launchOrReuse(self.reactor, self.options)
        protocol: IProtocol = await node.connect(
            self.target, factory, secret=self.secret, compress=self.compress, timeout=self.timeout
        )
        return protocol
