"""
The C{beam} command line.

Only this module (and L{beam.tap}) touches the global reactor.  Every
failure a user can cause prints one line, C{beam: <what went wrong>}, and
exits non-zero; tracebacks are for bugs.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence, TextIO

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.python.failure import Failure

from beam import __version__
from beam.errors import BeamError
from beam.home import loadOrCreateIdentity, resolveHome
from beam.multiaddr import Multiaddr

DEFAULT_LISTEN = ["/ip4/0.0.0.0/tcp/0"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="beam",
        description="Decentralized peer-to-peer tunnels for local apps.",
    )
    p.add_argument("--version", action="version", version=f"beam {__version__}")
    p.add_argument("--home", help="the node's home directory (default: $BEAM_HOME or ~/.local/share/beam)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("id", help="print this node's peer ID")
    s.add_argument("--json", action="store_true", help="print JSON")

    s = sub.add_parser("daemon", help="run a node in the foreground")
    s.add_argument("--listen", action="append", metavar="MULTIADDR",
                   help="address to listen on (repeatable; default /ip4/0.0.0.0/tcp/0)")
    s.add_argument("--json", action="store_true", help="print one JSON object per event")

    s = sub.add_parser("ping", help="ping any libp2p peer")
    s.add_argument("target", metavar="MULTIADDR", help="the peer's multiaddr, e.g. /ip4/127.0.0.1/tcp/4001/p2p/12D3KooW...")
    s.add_argument("--count", "-c", type=int, default=4, help="number of pings (default 4)")
    s.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each answer")
    s.add_argument("--json", action="store_true", help="print JSON")
    return p


class _Out:
    def __init__(self, stream: TextIO, asJSON: bool) -> None:
        self.stream = stream
        self.asJSON = asJSON

    def event(self, obj: dict[str, Any], text: str) -> None:
        self.stream.write((json.dumps(obj) if self.asJSON else text) + "\n")
        self.stream.flush()


def _parseListen(values: Sequence[str] | None) -> list[Multiaddr]:
    return [Multiaddr.fromString(v) for v in (values or DEFAULT_LISTEN)]


def cmdID(args: argparse.Namespace, out: _Out) -> int:
    ident = loadOrCreateIdentity(resolveHome(args.home))
    out.event({"peer_id": str(ident.peerID)}, str(ident.peerID))
    return 0


async def cmdDaemon(reactor: Any, args: argparse.Namespace, out: _Out) -> int:
    from beam.node import Node

    listen = _parseListen(args.listen)
    ident = loadOrCreateIdentity(resolveHome(args.home))
    node = Node(reactor, ident, listen)

    def observe(event: str, conn: Any) -> None:
        if out.asJSON:
            out.event({"event": event, "peer_id": str(conn.remotePeer),
                       "addr": str(conn.remoteAddr), "direction": conn.direction}, "")

    node.connectionObservers.append(observe)
    await node.startService()
    addrs = [str(a) for a in node.shareableAddrs()]
    out.event(
        {"event": "ready", "peer_id": str(node.peerID), "addrs": addrs},
        f"Beam node {node.peerID} listening on:\n" + "\n".join(f"  {a}" for a in addrs),
    )
    stopped: Deferred[None] = Deferred()
    reactor.addSystemEventTrigger("before", "shutdown", lambda: node.stopService())
    await stopped  # runs until the reactor is stopped (Ctrl-C, SIGTERM)
    return 0


async def cmdPing(reactor: Any, args: argparse.Namespace, out: _Out) -> int:
    from beam.node import Node

    target = Multiaddr.fromString(args.target)
    if args.count < 1:
        raise BeamError("--count must be at least 1")
    ident = loadOrCreateIdentity(resolveHome(args.home))
    node = Node(reactor, ident, [])
    await node.startService()
    try:
        conn = await node.connect(target)
        out.event(
            {"event": "connected", "peer_id": str(conn.remotePeer), "addr": str(conn.remoteAddr),
             "security": conn.security, "muxer": conn.muxer},
            f"PING {conn.remotePeer} via {conn.remoteAddr} ({conn.security}, {conn.muxer})",
        )
        rtts: list[float] = []
        for seq in range(1, args.count + 1):
            (rtt,) = await node.ping(conn.remotePeer, count=1, timeout=args.timeout)
            rtts.append(rtt)
            out.event({"event": "pong", "seq": seq, "rtt_ms": round(rtt * 1000, 3)},
                      f"seq={seq} time={rtt * 1000:.3f} ms")
        out.event(
            {"event": "summary", "count": len(rtts), "min_ms": round(min(rtts) * 1000, 3),
             "avg_ms": round(sum(rtts) / len(rtts) * 1000, 3), "max_ms": round(max(rtts) * 1000, 3)},
            f"{len(rtts)} pings: min/avg/max = {min(rtts)*1000:.3f}/{sum(rtts)/len(rtts)*1000:.3f}/{max(rtts)*1000:.3f} ms",
        )
    finally:
        await node.stopService()
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    """
    Entry point of the C{beam} console script.
    """
    args = _parser().parse_args(argv)
    if args.command is None:
        _parser().print_help()
        raise SystemExit(2)
    out = _Out(sys.stdout, getattr(args, "json", False))
    try:
        if args.command == "id":
            raise SystemExit(cmdID(args, out))
    except BeamError as e:
        sys.stderr.write(f"beam: {e}\n")
        raise SystemExit(1)

    from twisted.internet import reactor
    from twisted.internet.task import react

    commands = {"daemon": cmdDaemon, "ping": cmdPing}
    command = commands[args.command]
    exitCode = [0]

    def run(reactor: Any) -> Deferred[None]:
        d = ensureDeferred(command(reactor, args, out))

        def done(code: int) -> None:
            exitCode[0] = code

        def failed(f: Failure) -> None:
            if f.check(BeamError):
                sys.stderr.write(f"beam: {f.value}\n")
            else:
                sys.stderr.write(f"beam: unexpected error: {f.getTraceback()}\n")
            exitCode[0] = 1

        return d.addCallbacks(done, failed)

    try:
        react(run)
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    raise SystemExit(exitCode[0])
