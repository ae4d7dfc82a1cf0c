"""
Hole punching: turning a relayed connection into a direct one.

 - L{dcutr}: DCUtR, Direct Connection Upgrade through Relay
   (C{/libp2p/dcutr}, libp2p/specs relay/DCUtR.md): the message codec, the
   CONNECT/SYNC exchange of both roles, and L{dcutr.HolePuncher}, the
   service that runs it for every relayed connection a node receives.

Wiring a node (after its L{RelayTransport<beam.p2p.relay.transport.RelayTransport>})::

    puncher = HolePuncher(node)      # serves /libp2p/dcutr, watches connections
    puncher.pathOf(conn)             # "direct", "hole-punched", "relayed via PEER"
    puncher.stop()                   # on shutdown
"""
