"""
Tunnels: local TCP and UDP services shared with peers over C{/beam/tunnel/1.0.0}
streams.
"""
