"""
C{twistd beam}: options and the service they assemble.

Options validate everything (raising L{usage.UsageError}); L{makeService}
only composes the daemon's L{MultiService} (see L{beam.daemon.service}).
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from beam.daemon.config import ConfigError, TunnelConfig, loadConfig, mergeOptions
from beam.errors import BeamError, InvalidMultiaddr, InvalidPeerID
from beam.storage.home import resolveHome
from beam.identity.keys import PeerID
from beam.identity.multiaddr import Multiaddr


class Options(usage.Options):
    """
    Options for C{twistd beam}.  Tunnels and listen addresses also come from
    C{config.toml} in the home directory; flags override it.
    """

    synopsis = "[--port PORT [--name NAME] [--udp] [--compress] [--allow PEER]... [--secret]] [--listen MULTIADDR]..."
    optParameters = [
        ["home", None, None, "The node's home directory (default: $BEAM_HOME or the XDG data dir)."],
        ["port", "p", None, "Expose this local port.", int],
        ["name", None, None, "Service name of the exposed port (default: the port number)."],
    ]
    optFlags = [
        ["udp", None, "The exposed service is UDP."],
        ["compress", None, "Allow lz4 compression."],
        ["secret", None, "Require a secret (printed in the share address)."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["allow"] = []

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

    def opt_allow(self, value: str) -> None:
        """
        Admit only this peer ID to the exposed port (repeatable).
        """
        try:
            self["allow"].append(PeerID.fromString(value))
        except InvalidPeerID as e:
            raise usage.UsageError(str(e)) from None

    def postOptions(self) -> None:
        self["home"] = resolveHome(self["home"])
        port = self["port"]
        if port is not None and not 0 < port < 65536:
            raise usage.UsageError(f"--port must be between 1 and 65535, not {port}")
        if port is None and (self["name"] or self["allow"] or self["secret"] or self["udp"] or self["compress"]):
            raise usage.UsageError("--name, --udp, --compress, --allow and --secret need --port")
        tunnels = []
        if port is not None:
            tunnels.append(TunnelConfig(
                port=port, name=self["name"], udp=bool(self["udp"]), compress=bool(self["compress"]),
                allow=tuple(self["allow"]) or None, secret=bool(self["secret"]),
            ))
        try:
            self["config"] = mergeOptions(
                loadConfig(self["home"] / "config.toml"), listen=self["listen"], tunnels=tunnels
            )
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None


def makeService(options: Any) -> IService:
    """
    The daemon: control socket, node, tunnel host and the configured
    tunnels and forwards, as named children of one L{MultiService}.
    """
    from twisted.internet import reactor

    from beam.daemon.service import BeamDaemon
    from beam.storage.home import loadOrCreateIdentity

    try:
        identity = loadOrCreateIdentity(options["home"])
    except BeamError as e:
        raise SystemExit(f"beam: {e}") from None
    def failed(f: Any) -> None:
        # twistd has no other way to hear about it.
        daemon.log.critical("beam could not start: {why}", why=f.getErrorMessage())
        reactor.callLater(0, reactor.stop)

    daemon = BeamDaemon(reactor, options["home"], identity, options["config"], onStartFailure=failed)
    daemon.setName("beam")
    return daemon
