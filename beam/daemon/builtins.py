"""
The services every node runs, registered the way a plugin registers its
own (L{beam.daemon.plugins}): one entry each, made in this order.

  - C{"tor"}: L{TorService<beam.daemon.tor.TorService>}, Tor (launched or
    attached) and the node's onion service, in modes C{"fallback"} and
    C{"always"}; does nothing in mode C{"off"} (L{beam.daemon.tor});
  - C{"nat"}: L{NatService}, NAT traversal: AutoNAT, relay reservations
    while private, a relay (and AutoNAT and STUN servers) while public,
    STUN discovery (L{beam.daemon.nat});
  - C{"mdns"}: L{MdnsService<beam.p2p.discovery.mdns.MdnsService>},
    libp2p mDNS discovery on the LAN (peers found are dialled) and Beam
    names answered there; present but doing nothing with C{mdns = false}
    or in Tor mode C{"always"};
  - C{"tunnels"}: L{TunnelHost}, exposing local services over
    C{/beam/tunnel/1.0.0}; C{/v1/tunnels};
  - C{"requests"}: the HTTP inspector's store of exchanges seen through
    the tunnels (C{[inspect]}); C{/v1/requests};
  - C{"kademlia"}: L{KademliaService}, the DHT on C{/beam/kad/1.0.0};
    C{/v1/kademlia};
  - C{"pubsub"}: L{GossipSub<beam.p2p.pubsub.GossipSub>}, gossipsub v1.1
    (C{/meshsub/1.1.0}); the names service gossips name records on it
    (topic C{beam-names}); present but doing nothing with C{gossip = false};
  - C{"names"}: L{NameService}, publishing our names in the DHT (again
    whenever the tunnels change; the record lists only public services,
    private ones are learned from their share address), and again whenever
    the node's shareable addresses change (a relay reservation, an address
    AutoNAT confirmed), and resolving others'; C{/v1/names};
  - C{"forwards"}: L{Forwards}, local ports leading to other nodes'
    tunnels, resolving names through C{"names"}; C{/v1/forwards};
  - C{"dns"}: L{DnsService<beam.daemon.dns.DnsService>}, the local DNS
    server answering C{NAME.beam} with a loopback address per name and
    service, listening there and forwarding into the tunnel; C{/v1/dns}.

To add a built-in service, write its module (the service, with
C{status()} and, if it takes commands, C{controlResource()}) and add one
line to L{BUILTINS}.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService

from beam.daemon.plugins import BeamService, DaemonContext

__all__ = ["BUILTINS"]


def makeTor(context: DaemonContext) -> IService:
    from beam.daemon.tor import makeTor as make

    return make(context)


def makeNat(context: DaemonContext) -> IService:
    from beam.daemon.nat import NatService

    config = context.config
    return NatService(
        context.reactor, context.host, relayMode=config.relayMode, relayLimits=config.relayLimits,
        bootstrap=config.bootstrap, stunServers=config.stunServers, stunServer=config.stunServer,
        portMapping=config.portMapping, turnServers=config.turnServers, torMode=config.tor.mode,
        **context.optionsFor("nat"),
    )


def makeMdns(context: DaemonContext) -> IService:
    from beam.p2p.discovery.mdns import makeMdns as make

    return make(context)


def makeTunnels(context: DaemonContext) -> IService:
    from beam.tunnel.host import TunnelHost

    return TunnelHost(context.reactor, context.host, random=context.random, **context.optionsFor("tunnels"))


def makeRequests(context: DaemonContext) -> IService:
    from beam.daemon.config import InspectConfig
    from beam.tunnel.inspect.service import InspectorService
    from beam.tunnel.inspect.store import RequestStore

    config = getattr(context.config, "inspect", None) or InspectConfig()
    store = RequestStore(
        context.reactor, maxRequests=config.maxRequests, maxBytes=config.maxBytes, bodyCap=config.bodyCap,
    )
    store.enabled = config.enabled
    return InspectorService(store, context.services.get("tunnels"))


def makeKademlia(context: DaemonContext) -> IService:
    from beam.dht.service import KademliaService

    return KademliaService(
        context.reactor, context.host, context.home, bootstrapAddrs=context.config.bootstrap,
        **context.optionsFor("kademlia"),
    )


def makePubsub(context: DaemonContext) -> IService:
    from beam.p2p.pubsub.service import makePubsub as make

    return make(context)


def makeNames(context: DaemonContext) -> IService:
    from beam.names.service import NameService

    host = context.host
    tunnels = context.service("tunnels")

    def recordAddrs() -> list:
        # What a stranger anywhere can use first (confirmed, relay), then
        # the listen addresses, loopback last: a resolver tries them in
        # order.
        return [a.withoutPeerID() for a in _shareable(host)]

    # The LAN and gossip steps of a lookup, and where our records go
    # besides the DHT; a switched-off service is skipped by the resolver.
    names = NameService(
        context.reactor, context.identity, context.service("kademlia"), context.home,
        addrs=recordAddrs, services=lambda: tunnels.publicServices, mdns=context.services.get("mdns"),
        **context.optionsFor("names"),
    )
    pubsub: Any = context.services.get("pubsub")
    if pubsub is not None and getattr(pubsub, "enabled", True):
        from beam.names.gossip import NameGossip

        names.attachGossip(NameGossip(pubsub, names.validateGossip, names.gossipReceived))
    tunnels.changeObservers.append(names.republishAll)
    nat: Any = context.services.get("nat")
    if nat is not None:
        nat.watchAddrs(lambda: tuple(recordAddrs()), lambda: names.republishAll() if names.running else None)
    return names


def _shareable(host: Any) -> list:
    """
    The host's addresses for strangers: L{Node.shareableAddrs
    <beam.p2p.host.node.Node.shareableAddrs>}, or for a host without an
    address book every address, loopback last.
    """
    shareable = getattr(host, "shareableAddrs", None)
    if callable(shareable):
        return list(shareable())
    return sorted(host.advertisedAddrs(), key=lambda a: a.isLoopback())


def makeForwards(context: DaemonContext) -> IService:
    from beam.tunnel.forwards import Forwards

    names: Any = context.services.get("names")
    return Forwards(context.reactor, context.host, resolver=names.resolve if names is not None else None)


def makeDns(context: DaemonContext) -> IService:
    from beam.daemon.dns import makeDns as make

    return make(context)


#: The built-in services, in the order they are made and started.
BUILTINS = (
    BeamService("tor", makeTor, "Tor: launches or attaches to tor and publishes the node's onion service"),
    BeamService("nat", makeNat, "NAT traversal: AutoNAT, relay reservations, relaying when public, STUN"),
    BeamService("mdns", makeMdns, "finds peers on the LAN by multicast DNS and answers Beam names there"),
    BeamService("tunnels", makeTunnels, "exposes local services to peers (/beam/tunnel/1.0.0)"),
    BeamService("requests", makeRequests, "the HTTP inspector: requests seen through exposed tunnels"),
    BeamService("kademlia", makeKademlia, "the DHT (/beam/kad/1.0.0)"),
    BeamService("pubsub", makePubsub, "gossipsub v1.1 (/meshsub/1.1.0): name records spread to connected peers"),
    BeamService("names", makeNames, "publishes this node's names in the DHT and resolves others'"),
    BeamService("forwards", makeForwards, "local ports leading to other nodes' tunnels"),
    BeamService("dns", makeDns, "answers NAME.beam on loopback with an address forwarding into its tunnel"),
)
