"""
C{twistd beam}: options and the service they assemble.

Options validate everything (raising L{usage.UsageError}); L{makeService}
only composes the daemon's L{MultiService} (see L{beam.daemon.service}).
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from beam.daemon.config import ConfigError, TunnelConfig, loadConfig, mergeOptions
from beam.errors import BeamError, InvalidMultiaddr, InvalidPeerID
from beam.storage.home import resolveHome
from beam.identity.keys import PeerID
from beam.identity.multiaddr import Multiaddr


#: twistd's own default for C{--pidfile}, which L{Options} moves to the home.
DEFAULT_TWISTD_PIDFILE = "twistd.pid"


class Options(usage.Options):
    """
    Options for C{twistd beam}.  Tunnels and listen addresses also come from
    C{config.toml} in the home directory; flags override it.
    """

    longdesc = (
        "twistd's pid file goes into the home directory (HOME/twistd.pid) unless --pidfile names "
        "another one before `beam` (an empty --pidfile= writes none), so no twistd.pid is left in the "
        "directory twistd ran from.  Besides twistd's own log, the node writes HOME/logs/beam.log, "
        "which `beam logs` prints."
    )
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
        # twistd's default pid file is twistd.pid in the working directory
        # (where it was left behind, a checkout included); ours lives in
        # the home.  twistd reads it after parsing us, before it starts.
        if self.parent is not None and self.parent.get("pidfile") == DEFAULT_TWISTD_PIDFILE:
            self.parent["pidfile"] = str(self["home"] / "twistd.pid")
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


def _logToFile(home: Any) -> None:
    """
    Also write the node's log to C{HOME/logs/beam.log} (what C{beam logs}
    prints), next to wherever twistd sends its own.
    """
    from twisted.logger import globalLogPublisher

    from beam.daemon.logs import RotatingLogFile, logFilePath, makeFileObserver

    try:
        globalLogPublisher.addObserver(makeFileObserver(RotatingLogFile(logFilePath(home))))
    except OSError as e:
        sys.stderr.write(f"beam: warning: cannot write {logFilePath(home)}: {e.strerror or e}\n")


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

    _logToFile(options["home"])
    daemon = BeamDaemon(reactor, options["home"], identity, options["config"], onStartFailure=failed)
    daemon.setName("beam")
    return daemon
