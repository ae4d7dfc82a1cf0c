"""
Stream multiplexers (yamux).
"""
