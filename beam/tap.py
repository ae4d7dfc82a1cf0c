"""
C{twistd beam}: options and the service they assemble.

Options validate everything (raising L{usage.UsageError}); L{makeService}
only composes the node's L{MultiService}.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from beam.errors import BeamError, InvalidMultiaddr
from beam.home import loadOrCreateIdentity, resolveHome
from beam.multiaddr import Multiaddr

DEFAULT_LISTEN = ("/ip4/0.0.0.0/tcp/0",)


class Options(usage.Options):
    """
    Options for C{twistd beam}.
    """

    synopsis = "[options]"
    optParameters = [
        ["home", None, None, "The node's home directory (default: $BEAM_HOME or the XDG data dir)."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    def opt_listen(self, value: str) -> None:
        """
        A multiaddr to listen on, e.g. /ip4/0.0.0.0/tcp/4001 (repeatable).
        """
        try:
            addr = Multiaddr.fromString(value)
        except InvalidMultiaddr as e:
            raise usage.UsageError(str(e)) from None
        if addr.tcpTarget() is None:
            raise usage.UsageError(f"cannot listen on {value}: only TCP multiaddrs are supported")
        self["listen"].append(addr)

    def postOptions(self) -> None:
        if not self["listen"]:
            self["listen"] = [Multiaddr.fromString(a) for a in DEFAULT_LISTEN]
        self["home"] = resolveHome(self["home"])


def makeService(options: Any) -> IService:
    """
    The node service: a L{beam.node.Node} (itself a L{MultiService}) named
    C{"node"}, whose children later layers join.
    """
    from twisted.internet import reactor

    from beam.node import Node

    try:
        identity = loadOrCreateIdentity(options["home"])
    except BeamError as e:
        raise SystemExit(f"beam: {e}") from None
    node = Node(reactor, identity, options["listen"])
    node.setName("node")
    return node
