"""
twistd plugin: C{twistd beam} runs a Beam node (see L{beam.tap}).
"""

from twisted.application.service import ServiceMaker

beam = ServiceMaker(
    "Beam",
    "beam.tap",
    "Run a Beam node: decentralized peer-to-peer tunnels for local apps.",
    "beam",
)
