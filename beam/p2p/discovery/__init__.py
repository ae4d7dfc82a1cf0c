"""
Peer discovery without the DHT: L{beam.p2p.discovery.mdns}, libp2p's
multicast DNS discovery on the local network (and Beam names answered
there).
"""
