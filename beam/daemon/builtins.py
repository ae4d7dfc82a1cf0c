"""
The services every node runs, registered the way a plugin registers its
own (L{beam.daemon.plugins}): one entry each, made in this order.

  - C{"tunnels"}: L{TunnelHost}, exposing local services over
    C{/beam/tunnel/1.0.0}; C{/v1/tunnels};
  - C{"kademlia"}: L{KademliaService}, the DHT on C{/beam/kad/1.0.0};
    C{/v1/kademlia};
  - C{"names"}: L{NameService}, publishing our names in the DHT (again
    whenever the tunnels change; the record lists only public services,
    private ones are learned from their share address) and resolving
    others'; C{/v1/names};
  - C{"forwards"}: L{Forwards}, local ports leading to other nodes'
    tunnels, resolving names through C{"names"}; C{/v1/forwards}.

To add a built-in service, write its module (the service, with
C{status()} and, if it takes commands, C{controlResource()}) and add one
line to L{BUILTINS}.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService

from beam.daemon.plugins import BeamService, DaemonContext

__all__ = ["BUILTINS"]


def makeTunnels(context: DaemonContext) -> IService:
    from beam.tunnel.host import TunnelHost

    return TunnelHost(context.reactor, context.host, random=context.random, **context.optionsFor("tunnels"))


def makeKademlia(context: DaemonContext) -> IService:
    from beam.dht.service import KademliaService

    return KademliaService(
        context.reactor, context.host, context.home, bootstrapAddrs=context.config.bootstrap,
        **context.optionsFor("kademlia"),
    )


def makeNames(context: DaemonContext) -> IService:
    from beam.names.service import NameService

    host = context.host
    tunnels = context.service("tunnels")

    def recordAddrs() -> list:
        # Non-loopback addresses first: a resolver tries them in order.
        return sorted((a.withoutPeerID() for a in host.advertisedAddrs()), key=lambda a: a.isLoopback())

    names = NameService(
        context.reactor, context.identity, context.service("kademlia"), context.home,
        addrs=recordAddrs, services=lambda: tunnels.publicServices, **context.optionsFor("names"),
    )
    tunnels.changeObservers.append(names.republishAll)
    return names


def makeForwards(context: DaemonContext) -> IService:
    from beam.tunnel.forwards import Forwards

    names: Any = context.services.get("names")
    return Forwards(context.reactor, context.host, resolver=names.resolve if names is not None else None)


#: The built-in services, in the order they are made and started.
BUILTINS = (
    BeamService("tunnels", makeTunnels, "exposes local services to peers (/beam/tunnel/1.0.0)"),
    BeamService("kademlia", makeKademlia, "the DHT (/beam/kad/1.0.0)"),
    BeamService("names", makeNames, "publishes this node's names in the DHT and resolves others'"),
    BeamService("forwards", makeForwards, "local ports leading to other nodes' tunnels"),
)
