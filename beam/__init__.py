"""
Beam: decentralized, peer-to-peer tunnels for local apps, speaking libp2p.
"""

__version__ = "0.1.0"
