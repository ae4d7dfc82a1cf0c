"""
Who a peer is and where it is: ed25519 keys, peer IDs, multiaddrs.
"""
