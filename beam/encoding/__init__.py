"""
Bytes on the wire: varints, base58, length-prefixed framing.
"""
