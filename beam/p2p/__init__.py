"""
One peer connection, bottom-up: transports, security, muxer, multistream, the host.
"""
