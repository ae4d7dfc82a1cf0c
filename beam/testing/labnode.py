"""
A small Beam node for the NAT lab's hole punching tests (issue 9): TCP and
circuit relay v2, a relay service (C{--relay-service}) or a reservation on
a relay (C{--reserve ADDR}), a L{HolePuncher}, and the echo protocol.

It speaks JSON lines: commands on stdin, events on stdout, so a test in
the root namespace can drive three of them inside the lab's hosts and
assert on what each one saw::

    python -m beam.testing.labnode --port 4001 [--relay-service] [--reserve ADDR] [--dial-timeout S]

Events: C{{"event": "ready", "peer", "addrs"}}, C{"reserved"},
C{"connected"}/C{"disconnected"} (each connection: C{limited},
C{remote}, C{direction}, C{path}), the puncher's C{"attempt"},
C{"synced"}, C{"punched"} and C{"failed"}, C{"log"} (warnings and the
hole punch lines), and the answers to commands.

Commands: C{{"cmd": "dial", "addr"}} (connect, answer C{"dialled"});
C{{"cmd": "identify", "addr"}}; C{{"cmd": "echo", "peer", "data"}} (open
an echo stream, answer C{"echoed"} with the connection it went over);
C{{"cmd": "conns"}}; C{{"cmd": "quit"}}.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Optional

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

from beam.errors import describe
from beam.identity.keys import Identity, PeerID
from beam.identity.multiaddr import Multiaddr
from beam.p2p.connection import PeerConnection
from beam.p2p.holepunch.dcutr import HolePuncher
from beam.p2p.protocols.echo import ECHO_PROTOCOL


def emit(event: str, **fields: Any) -> None:
    """
    One JSON line on stdout.
    """
    sys.stdout.write(json.dumps({"event": event, **fields}, default=str) + "\n")
    sys.stdout.flush()


class _EchoClient(Protocol):
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.got = b""
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.data)

    def dataReceived(self, data: bytes) -> None:
        self.got += data
        if len(self.got) >= len(self.data) and not self.done.called:
            self.done.callback(self.got)
            assert self.transport is not None
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        if not self.done.called:
            self.done.errback(reason)


class LabNode:
    """
    The node and its command loop.
    """

    def __init__(self, reactor: Any, args: argparse.Namespace) -> None:
        from beam.p2p.host.node import Node
        from beam.p2p.relay.client import RelayClient
        from beam.p2p.relay.hop import RelayLimits, RelayService
        from beam.p2p.relay.transport import RelayTransport

        self.reactor = reactor
        self.node = Node(reactor, Identity.generate(), [f"/ip4/0.0.0.0/tcp/{args.port}"],
                         idleTimeout=args.idle_timeout)
        self.relayTransport = RelayTransport(self.node)
        self.node.transports.append(self.relayTransport)
        self.relayService: Optional[RelayService] = None
        if args.relay_service:
            self.relayService = RelayService(self.node, RelayLimits())
            self.relayService.setServiceParent(self.node)
        self.client = RelayClient(self.node, self.relayTransport)
        self.puncher = HolePuncher(self.node, dialTimeout=args.dial_timeout)
        self.puncher.addObserver(lambda event, peer, details: emit(event, peer=str(peer), **details))
        self.node.addConnectionObserver(self._connectionEvent)
        self.reserve = args.reserve

    def describeConn(self, conn: PeerConnection) -> dict[str, Any]:
        return {
            "peer": str(conn.remotePeer),
            "limited": conn.limited,
            "remote": str(conn.remoteAddr),
            "direction": conn.direction,
            "path": self.puncher.pathOf(conn),
            "closed": conn.closed,
        }

    def _connectionEvent(self, event: str, conn: PeerConnection) -> None:
        if event in ("connected", "disconnected"):
            emit(event, **self.describeConn(conn))

    def start(self) -> Deferred[Any]:
        d: Deferred[Any] = self.node.startService()

        def listening(_: Any) -> Any:
            emit("ready", peer=str(self.node.peerID), addrs=[str(a) for a in self.node.addresses.listenAddrs()])
            if self.reserve:
                return self.client.reserve(Multiaddr(self.reserve)).addCallbacks(
                    lambda r: emit("reserved", addrs=[str(a) for a in r.circuitAddrs()],
                                   observed={str(a): n for a, n in self.node.addresses.observed().items()}),
                    lambda f: emit("error", what="reserve", reason=describe(f)),
                )
            return None

        return d.addCallback(listening)

    def command(self, line: str) -> None:
        try:
            cmd = json.loads(line)
            name = cmd["cmd"]
        except (ValueError, KeyError, TypeError):
            emit("error", what="command", reason=f"bad command {line!r}")
            return
        if name == "dial":
            self.node.connect(cmd["addr"]).addCallbacks(
                lambda c: emit("dialled", **self.describeConn(c)),
                lambda f: emit("error", what="dial", reason=describe(f)),
            )
        elif name == "identify":
            self.node.identifyPeer(cmd["addr"]).addCallbacks(
                lambda info: emit("identified", observed=str(info.observedAddr),
                                  ours={str(a): n for a, n in self.node.addresses.observed().items()}),
                lambda f: emit("error", what="identify", reason=describe(f)),
            )
        elif name == "echo":
            data = cmd.get("data", "hello").encode()
            peer = PeerID.fromString(cmd["peer"])
            client = _EchoClient(data)

            def opened(proto: Any) -> Deferred[Any]:
                conn = proto.transport.connection
                info = self.describeConn(conn)
                return client.done.addCallback(lambda got: emit("echoed", ok=got == data, **info))

            self.node.openStream(peer, ECHO_PROTOCOL, lambda: client).addCallback(opened).addErrback(
                lambda f: emit("error", what="echo", reason=describe(f))
            )
        elif name == "conns":
            conns = [c for c in self.node._allConnections]  # the lab's view of every connection
            emit("conns", conns=[self.describeConn(c) for c in conns])
        elif name == "quit":
            self.node.stopService().addBoth(lambda _: self.reactor.stop())
        else:
            emit("error", what="command", reason=f"unknown command {name!r}")


class _Stdin(Protocol):
    def __init__(self, lab: LabNode) -> None:
        self.lab = lab
        self.buf = b""

    def dataReceived(self, data: bytes) -> None:
        self.buf += data
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            if line.strip():
                self.lab.command(line.decode())

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        self.lab.node.stopService().addBoth(lambda _: self.lab.reactor.stop())


def _logObserver(event: dict[str, Any]) -> None:
    from twisted.logger import LogLevel, formatEvent

    level = event.get("log_level")
    text = formatEvent(event)
    if level in (LogLevel.warn, LogLevel.error, LogLevel.critical) or "hole punch" in text:
        emit("log", level=getattr(level, "name", str(level)), text=text)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m beam.testing.labnode")
    parser.add_argument("--port", type=int, default=4001)
    parser.add_argument("--relay-service", action="store_true")
    parser.add_argument("--reserve", default=None, help="a relay's multiaddr with /p2p")
    parser.add_argument("--dial-timeout", type=float, default=5.0)
    parser.add_argument("--idle-timeout", type=float, default=300.0)
    args = parser.parse_args(argv)

    from twisted.internet import reactor, stdio
    from twisted.logger import ILogObserver
    from zope.interface import provider

    globalLogPublisher.addObserver(provider(ILogObserver)(_logObserver))
    lab = LabNode(reactor, args)
    stdio.StandardIO(_Stdin(lab))

    def failed(f: Failure) -> None:
        emit("error", what="start", reason=describe(f))
        reactor.stop()

    reactor.callWhenRunning(lambda: lab.start().addErrback(failed))
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
