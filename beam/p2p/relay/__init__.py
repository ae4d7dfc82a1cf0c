"""
Circuit relay v2 (libp2p/specs relay/circuit-v2.md): reachability for
nodes nobody can dial.

 - L{hop.RelayService}: the relay (reservations, circuits, limits);
 - L{client.RelayClient}: our reservations on relays, and the stop
   handler that takes the circuits they bring;
 - L{transport.RelayTransport}: C{/p2p-circuit} addresses as an
   L{ITransport<beam.p2p.interfaces.ITransport>}, whose connections are
   limited;
 - L{messages}: the wire; L{voucher}: signed reservation vouchers.

Wiring a node::

    transport = RelayTransport(node)
    node.transports.append(transport)
    client = RelayClient(node, transport)       # installs the stop handler
    client.reserve(relayAddr)                   # keeps it renewed
    service = RelayService(node, RelayLimits()) # a public node relays
    service.setServiceParent(node)              # or RelayLimits.open() for `beam relay`
"""
