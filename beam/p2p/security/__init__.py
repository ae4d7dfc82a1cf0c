"""
Secure channels: Noise XX and TLS 1.3, as libp2p specifies them.
"""
