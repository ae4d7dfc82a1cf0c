"""
The host: the node service, its connection pool, dialer and peerstore.
"""
