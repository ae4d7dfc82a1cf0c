"""
Throughput of one yamux stream over Noise and over TLS, against a plain
Twisted TCP relay, on loopback.

Run it from the repository root::

    .venv/bin/python bench/bench_stack.py                 # 1 GiB per case
    .venv/bin/python bench/bench_stack.py --size-mib 256 --json
    .venv/bin/python bench/bench_stack.py --profile /tmp/prof   # cProfile dumps

Every case moves the same bytes from a sender (this process) to a receiver
in I{another} process, so that the two ends do not share one event loop (and
one core).  The cases:

  - C{noise}, C{tls}: two Beam nodes (L{beam.p2p.host.node.Node}) speaking only that
    security protocol; the sender opens one stream with the protocol
    C{/beam/bench/1.0.0} and writes to it as a registered push producer, so
    yamux windows and TCP back-pressure pause and resume it as they would a
    tunnelled socket.
  - C{relay}: the baseline.  The sender writes to a trivial Twisted relay
    process, which forwards every byte to a sink process with the usual
    producer/consumer coupling: the least a Python process can do per byte
    that it relays.  Beam's cost is reported as a ratio to this.
  - C{tcp}: the sender writes straight to the sink (no middle process); an
    upper bound for context.

On every case the wire payload is an 8-byte big-endian length followed by
that many bytes of a fixed pseudo-random pattern.  The receiver keeps a
running CRC-32 (C{zlib}, several GB/s, so it costs little) and, once it has
every byte, answers with one JSON line: the count, the CRC and the CPU time
it spent.  The sender's clock runs from its first write to that answer, and
the answer's CRC must match the one the sender computed before starting.

This is a benchmark, not a test: it opens real sockets and takes a while.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import random
import resource
import select
import struct
import subprocess
import sys
import time
import zlib
from typing import Any, Callable, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import reactor as _reactor  # noqa: E402
from twisted.internet.defer import Deferred, ensureDeferred  # noqa: E402
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint  # noqa: E402
from twisted.internet.protocol import Factory, Protocol  # noqa: E402
from twisted.internet.task import deferLater  # noqa: E402
from twisted.python.failure import Failure  # noqa: E402
from zope.interface import implementer  # noqa: E402
from twisted.internet.interfaces import IPushProducer  # noqa: E402

reactor: Any = _reactor

BENCH_PROTOCOL = "/beam/bench/1.0.0"
MIB = 1024 * 1024
#: The pattern repeats every this many bytes; its CRC is computed per block.
PATTERN_SIZE = 4 * MIB
MODES = ("noise", "tls", "relay", "tcp")
_HEADER = struct.Struct(">Q")


def cpuSeconds() -> float:
    """
    User plus system CPU time of this process so far.
    """
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def makePattern() -> bytes:
    """
    A fixed pseudo-random block, the same in every run.
    """
    return random.Random(0xBEA).randbytes(PATTERN_SIZE)


def expectedCrc(pattern: bytes, size: int) -> int:
    """
    The CRC-32 of the first C{size} bytes of the repeated pattern.
    """
    crc = 0
    full, rest = divmod(size, len(pattern))
    for _ in range(full):
        crc = zlib.crc32(pattern, crc)
    return zlib.crc32(pattern[:rest], crc)


# -- the receiving end ---------------------------------------------------------


class Sink(Protocol):
    """
    Count and checksum an 8-byte-length-prefixed payload; answer with a JSON
    line once it is complete.
    """

    def __init__(self, onDone: Callable[[], None], profile: Optional[str]) -> None:
        self.onDone = onDone
        self.profilePath = profile
        self.profiler: Optional[cProfile.Profile] = None
        self.expected: Optional[int] = None
        self.header = b""
        self.received = 0
        self.crc = 0
        self.startCpu = 0.0
        self.startWall = 0.0
        self.answered = False

    def dataReceived(self, data: bytes) -> None:
        if self.expected is None:
            self.header += data
            if len(self.header) < 8:
                return
            (self.expected,) = _HEADER.unpack_from(self.header)
            data = self.header[8:]
            self.startCpu = cpuSeconds()
            self.startWall = time.perf_counter()
            if self.profilePath:
                self.profiler = cProfile.Profile()
                self.profiler.enable()
        self.received += len(data)
        self.crc = zlib.crc32(data, self.crc)
        if self.received >= self.expected and not self.answered:
            self.answered = True
            if self.profiler is not None:
                self.profiler.disable()
                self.profiler.dump_stats(self.profilePath)
            answer = {
                "bytes": self.received,
                "crc32": self.crc,
                "cpu": cpuSeconds() - self.startCpu,
                "seconds": time.perf_counter() - self.startWall,
            }
            self.transport.write(json.dumps(answer).encode() + b"\n")

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.onDone()


def _announce(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _stopSoon() -> None:
    if reactor.running:
        reactor.callLater(0.05, reactor.stop)


def serveNode(security: str, profile: Optional[str]) -> None:
    """
    Run a Beam node with a sink handler for one transfer, then exit.
    """
    from beam.identity.keys import Identity
    from beam.p2p.host.node import Node

    identity = Identity.generate()
    node = Node(reactor, identity, ["/ip4/127.0.0.1/tcp/0"], securities=[_security(security, identity)])

    def done() -> None:
        node.stopService().addBoth(lambda _: _stopSoon())

    node.setStreamHandler(BENCH_PROTOCOL, lambda: Sink(done, profile))

    def started(_: Any) -> None:
        _announce("LISTEN " + str(node.listenAddrs[0].withPeerID(node.peerID)))

    node.startService().addCallbacks(started, lambda f: (f.printTraceback(), reactor.stop()))
    reactor.run()


def serveSink(profile: Optional[str]) -> None:
    """
    A plain TCP sink for one transfer.
    """
    factory = Factory.forProtocol(lambda: Sink(_stopSoon, profile))
    d = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    d.addCallback(lambda port: _announce(f"LISTEN 127.0.0.1:{port.getHost().port}"))
    reactor.run()


class _RelaySide(Protocol):
    """
    One side of the relay: bytes in are written to the other side, whose
    transport is this side's producer (as C{twisted.protocols.portforward}).
    """

    peer: Optional["_RelaySide"] = None
    stats: Optional[dict] = None

    def dataReceived(self, data: bytes) -> None:
        self.peer.transport.write(data)  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.loseConnection()
            self.peer.peer = None
        if self.stats is not None and "end" not in self.stats:
            self.stats["end"] = cpuSeconds()
            _announce("STATS " + json.dumps({"cpu": self.stats["end"] - self.stats["start"]}))
            _stopSoon()


def serveRelay(target: str, profile: Optional[str]) -> None:
    """
    Accept one connection and relay it, both ways, to C{target}.
    """
    host, port = target.rsplit(":", 1)
    stats: dict = {}
    profiler = cProfile.Profile() if profile else None

    class Inbound(_RelaySide):
        def connectionMade(self) -> None:
            stats["start"] = cpuSeconds()
            self.stats = stats
            if profiler is not None:
                profiler.enable()
            self.transport.pauseProducing()
            outbound = _RelaySide()
            outbound.peer = self
            self.peer = outbound
            d = TCP4ClientEndpoint(reactor, host, int(port)).connect(
                Factory.forProtocol(lambda: outbound)
            )
            d.addCallbacks(self._connected, lambda f: self.transport.abortConnection())

        def _connected(self, outbound: _RelaySide) -> None:
            outbound.transport.registerProducer(self.transport, True)
            self.transport.registerProducer(outbound.transport, True)
            self.transport.resumeProducing()

        def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
            if profiler is not None:
                profiler.disable()
                profiler.dump_stats(profile)
            super().connectionLost(reason)

    factory = Factory.forProtocol(Inbound)
    d = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    d.addCallback(lambda p: _announce(f"LISTEN 127.0.0.1:{p.getHost().port}"))
    reactor.run()


# -- the sending end -----------------------------------------------------------


@implementer(IPushProducer)
class Sender(Protocol):
    """
    Write the header and C{size} bytes of the pattern as a push producer:
    write while not paused, yielding to the reactor every C{burst} bytes so
    that window updates and acknowledgements are read in between.
    """

    def __init__(self, size: int, pattern: bytes, chunk: int, burst: int = 4 * MIB) -> None:
        self.size = size
        self.chunks = [pattern[i:i + chunk] for i in range(0, len(pattern), chunk)]
        self.burst = burst
        self.sent = 0
        self.paused = False
        self.pumping = False
        self.scheduled = False
        self.reply = b""
        self.done: Deferred[dict] = Deferred()
        self.startWall = 0.0
        self.startCpu = 0.0
        self.pauses = 0

    def connectionMade(self) -> None:
        self.transport.registerProducer(self, True)
        self.startCpu = cpuSeconds()
        self.startWall = time.perf_counter()
        self.transport.write(_HEADER.pack(self.size))
        self._pump()

    def _pump(self) -> None:
        self.scheduled = False
        if self.pumping:
            return
        self.pumping = True
        try:
            write = self.transport.write
            chunks = self.chunks
            n = len(chunks)
            index = (self.sent // len(chunks[0])) % n if chunks else 0
            budget = self.burst
            while not self.paused and self.sent < self.size and budget > 0:
                piece = chunks[index]
                left = self.size - self.sent
                if len(piece) > left:
                    piece = piece[:left]
                self.sent += len(piece)
                budget -= len(piece)
                index = index + 1 if index + 1 < n else 0
                write(piece)
        finally:
            self.pumping = False
        if self.sent >= self.size:
            self.transport.unregisterProducer()
        elif not self.paused and not self.scheduled:
            self.scheduled = True
            reactor.callLater(0, self._pump)

    # IPushProducer
    def pauseProducing(self) -> None:
        if not self.paused:
            self.pauses += 1
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        if not self.pumping and not self.scheduled:
            self._pump()

    def stopProducing(self) -> None:
        self.paused = True

    def dataReceived(self, data: bytes) -> None:
        self.reply += data
        if b"\n" in self.reply and not self.done.called:
            wall = time.perf_counter() - self.startWall
            cpu = cpuSeconds() - self.startCpu
            answer = json.loads(self.reply.split(b"\n", 1)[0])
            self.done.callback({"wall": wall, "senderCpu": cpu, "answer": answer, "pauses": self.pauses})

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if not self.done.called:
            self.done.errback(reason)


def _security(name: str, identity: Any) -> Any:
    from beam.p2p.security.noise import NoiseTransport
    from beam.p2p.security.tls import TLSTransport
    from beam.p2p.upgrade import YAMUX_PROTOCOL

    if name == "noise":
        return NoiseTransport(identity, muxers=[YAMUX_PROTOCOL])
    if name == "tls":
        return TLSTransport(identity, muxers=[YAMUX_PROTOCOL], clock=reactor)
    raise ValueError(name)


class Child:
    """
    A serving subprocess of this script, which announces its address.
    """

    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), *args],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.address = self._line("LISTEN ", 30.0)

    def _line(self, prefix: str, timeout: float) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], deadline - time.monotonic())
            if not ready:
                break
            line = self.proc.stdout.readline()
            if not line:
                break
            if line.startswith(prefix):
                return line[len(prefix):].strip()
        self.kill()
        raise RuntimeError(f"benchmark child {self.proc.args!r} did not say {prefix!r}")

    async def finish(self, expect: Optional[str] = None, timeout: float = 30.0) -> Optional[str]:
        """
        Wait (without blocking the reactor) for the child to exit; return the
        payload of its C{expect} line, if asked for.
        """
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            await deferLater(reactor, 0.02, lambda: None)
        if self.proc.poll() is None:
            self.kill()
            raise RuntimeError("benchmark child did not exit")
        out = self.proc.stdout.read() if self.proc.stdout else ""
        if expect is not None:
            for line in out.splitlines():
                if line.startswith(expect):
                    return line[len(expect):].strip()
        return None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _profArgs(profileDir: Optional[str], name: str) -> list[str]:
    return ["--profile", os.path.join(profileDir, name)] if profileDir else []


def _profiled(profileDir: Optional[str], name: str) -> Optional[cProfile.Profile]:
    if not profileDir:
        return None
    p = cProfile.Profile()
    p.enable()
    return p


def _dump(p: Optional[cProfile.Profile], profileDir: Optional[str], name: str) -> None:
    if p is not None and profileDir:
        p.disable()
        p.dump_stats(os.path.join(profileDir, name))


async def runNode(security: str, size: int, pattern: bytes, chunk: int, profileDir: Optional[str]) -> dict:
    from beam.identity.keys import Identity
    from beam.p2p.host.node import Node

    child = Child(["--serve", security, *_profArgs(profileDir, f"{security}-receiver.prof")])
    identity = Identity.generate()
    node = Node(reactor, identity, [], securities=[_security(security, identity)])
    try:
        await node.startService()
        await node.connect(child.address)
        sender = Sender(size, pattern, chunk)
        prof = _profiled(profileDir, "")
        await node.openStream(child.address, [BENCH_PROTOCOL], lambda: sender)
        result = await sender.done
        _dump(prof, profileDir, f"{security}-sender.prof")
        sender.transport.loseConnection()
        result["receiverCpu"] = result["answer"]["cpu"]
        return result
    finally:
        await node.stopService()
        await child.finish()


async def runRelay(size: int, pattern: bytes, chunk: int, profileDir: Optional[str], direct: bool) -> dict:
    sink = Child(["--serve", "sink", *_profArgs(profileDir, "relay-sink.prof" if not direct else "tcp-sink.prof")])
    relay = None
    target = sink.address
    try:
        if not direct:
            relay = Child(["--serve", "relay", "--target", sink.address, *_profArgs(profileDir, "relay-relay.prof")])
            target = relay.address
        host, port = target.rsplit(":", 1)
        sender = Sender(size, pattern, chunk)
        prof = _profiled(profileDir, "")
        await TCP4ClientEndpoint(reactor, host, int(port)).connect(Factory.forProtocol(lambda: sender))
        result = await sender.done
        _dump(prof, profileDir, ("tcp" if direct else "relay") + "-sender.prof")
        sender.transport.loseConnection()
        result["receiverCpu"] = result["answer"]["cpu"]
        if relay is not None:
            stats = await relay.finish("STATS ")
            result["relayCpu"] = json.loads(stats)["cpu"] if stats else None
        return result
    finally:
        if relay is not None:
            await relay.finish()
        await sink.finish()


class _Count(Protocol):
    def __init__(self) -> None:
        self.received = 0
        self.crc = 0

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        self.crc = zlib.crc32(data, self.crc)


def inProcess(layer: str, size: int, pattern: bytes, chunk: int) -> dict:
    """
    Move C{size} bytes through one yamux stream over C{layer} (C{"noise"},
    C{"tls"} or C{"plain"}: yamux straight on the memory transport) with both
    ends in this process and no sockets (L{beam.testing.Pump}): the pure
    cost of our Python and the ciphers, both ends added up.
    """
    from twisted.internet.task import Clock

    from beam.identity.keys import Identity
    from beam.p2p.muxer.yamux import YamuxSession
    from beam.testing import Pump

    clock = Clock()
    accepted: list[Any] = []
    sink = _Count()

    def onStream(stream: Any) -> None:
        accepted.append(stream)
        stream.setProtocol(sink)

    client = YamuxSession(True, lambda s: None, clock)
    server = YamuxSession(False, onStream, clock)
    if layer == "plain":
        pump = Pump(client, server).connect()
    else:
        a, b = Identity.generate(), Identity.generate()
        clock.advance(time.time())
        ca = _security(layer, a) if layer == "noise" else _tlsFor(a, clock)
        cb = _security(layer, b) if layer == "noise" else _tlsFor(b, clock)
        pump = Pump(ca.wrap(True, None, lambda info: client), cb.wrap(False, None, lambda info: server))
        pump.connect()
    stream = client.openStream()
    stream.setProtocol(Protocol())
    pump.flush()
    chunks = [pattern[i:i + chunk] for i in range(0, len(pattern), chunk)]
    startCpu, startWall = cpuSeconds(), time.perf_counter()
    sent = 0
    i = 0
    while sent < size:
        for _ in range(16):
            piece = chunks[i % len(chunks)]
            i += 1
            stream.write(piece)
            sent += len(piece)
            if sent >= size:
                break
        pump.flush()
    pump.flush()
    wall = time.perf_counter() - startWall
    return {"wall": wall, "cpu": cpuSeconds() - startCpu, "bytes": sink.received, "crc32": sink.crc,
            "mibps": sink.received / MIB / wall}


def _tlsFor(identity: Any, clock: Any) -> Any:
    from beam.p2p.security.tls import TLSTransport
    from beam.p2p.upgrade import YAMUX_PROTOCOL

    return TLSTransport(identity, muxers=[YAMUX_PROTOCOL], clock=clock)


def machine() -> dict:
    from benchutil import cpuModel

    model = cpuModel()
    import cryptography
    import OpenSSL
    import twisted

    return {
        "cpus": os.cpu_count(),
        "cpu": model or platform.processor(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "system": platform.platform(),
        "twisted": twisted.__version__,
        "cryptography": cryptography.__version__,
        "pyOpenSSL": OpenSSL.__version__,
        "openssl": OpenSSL.SSL.SSLeay_version(OpenSSL.SSL.SSLEAY_VERSION).decode(),
        "reactor": type(reactor).__name__,
    }


def table(results: dict, size: int) -> str:
    base = results.get("relay", {}).get("mibps")
    rows = [
        "| case | MiB/s | MB/s | vs relay | sender CPU s | receiver CPU s | relay CPU s | wall s | MiB/s of all runs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for mode in MODES:
        r = results.get(mode)
        if r is None:
            continue
        ratio = f"{r['mibps'] / base:.2f}" if base else "-"
        relayCpu = f"{r['relayCpu']:.2f}" if r.get("relayCpu") is not None else "-"
        rows.append(
            f"| {mode} | {r['mibps']:.0f} | {r['mbps']:.0f} | {ratio} | {r['senderCpu']:.2f} "
            f"| {r['receiverCpu']:.2f} | {relayCpu} | {r['wall']:.2f} "
            f"| {', '.join(f'{x:.0f}' for x in r['runsMibps'])} |"
        )
    return "\n".join(rows)


async def runAll(opts: argparse.Namespace) -> dict:
    size = opts.size_mib * MIB
    pattern = makePattern()
    crc = expectedCrc(pattern, size)
    results: dict = {}
    for mode in opts.modes:
        runs = []
        for _ in range(opts.repeat):
            if mode in ("noise", "tls"):
                r = await runNode(mode, size, pattern, opts.chunk, opts.profile)
            else:
                r = await runRelay(size, pattern, opts.chunk, opts.profile, direct=(mode == "tcp"))
            answer = r.pop("answer")
            if answer["bytes"] != size or answer["crc32"] != crc:
                raise RuntimeError(f"{mode}: receiver got {answer['bytes']} bytes with CRC "
                                   f"{answer['crc32']:#x}, expected {size} with {crc:#x}")
            r["verified"] = True
            r["bytes"] = size
            r["mibps"] = size / MIB / r["wall"]
            r["mbps"] = size / 1e6 / r["wall"]
            if not opts.json:
                print(f"{mode}: {r['mibps']:.0f} MiB/s ({r['wall']:.2f} s, sender CPU {r['senderCpu']:.2f} s, "
                      f"receiver CPU {r['receiverCpu']:.2f} s)", file=sys.stderr)
            runs.append(r)
        # The median run stands for the mode; all speeds are kept.
        runs.sort(key=lambda r: r["mibps"])
        r = dict(runs[len(runs) // 2])
        r["runsMibps"] = [round(x["mibps"], 1) for x in runs]
        results[mode] = r
    base = results.get("relay", {}).get("mibps")
    if base:
        for r in results.values():
            r["vsRelay"] = r["mibps"] / base
    return results


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--size-mib", type=int, default=1024, help="MiB to move per case (default 1024)")
    parser.add_argument("--chunk", type=int, default=65536, help="bytes per sender write (default 65536)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of " + ",".join(MODES))
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per case; the median run is reported (default 1)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--profile", metavar="DIR", help="write cProfile dumps of each end into DIR")
    parser.add_argument("--in-process", action="store_true",
                        help="instead, time both ends in one process over memory transports (no sockets)")
    parser.add_argument("--serve", choices=["noise", "tls", "sink", "relay"], help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)

    if opts.serve:
        prof = opts.profile
        if opts.serve in ("noise", "tls"):
            serveNode(opts.serve, prof)
        elif opts.serve == "sink":
            serveSink(prof)
        else:
            serveRelay(opts.target, prof)
        return 0

    opts.modes = [m.strip() for m in opts.modes.split(",") if m.strip()]
    for m in opts.modes:
        if m not in MODES:
            parser.error(f"unknown mode {m!r}")
    if opts.profile:
        os.makedirs(opts.profile, exist_ok=True)
    if opts.in_process:
        size = opts.size_mib * MIB
        pattern = makePattern()
        crc = expectedCrc(pattern, size)
        rows = {}
        for layer in ("plain", "noise", "tls"):
            r = inProcess(layer, size, pattern, opts.chunk)
            if r["bytes"] != size or r["crc32"] != crc:
                raise RuntimeError(f"in-process {layer}: wrong bytes or CRC")
            rows[layer] = r
        if opts.json:
            print(json.dumps({"machine": machine(), "sizeMiB": opts.size_mib, "inProcess": rows}, indent=2))
        else:
            print(f"In one process, no sockets, {opts.size_mib} MiB through one yamux stream "
                  f"(both ends' CPU together):")
            print()
            print("| layer under yamux | MiB/s | CPU s |")
            print("|---|---:|---:|")
            for layer, r in rows.items():
                print(f"| {layer} | {r['mibps']:.0f} | {r['cpu']:.2f} |")
        return 0
    outcome: dict = {}

    def run() -> Deferred[None]:
        d = ensureDeferred(runAll(opts))

        def ok(results: dict) -> None:
            outcome["results"] = results

        def bad(f: Failure) -> None:
            outcome["error"] = f

        d.addCallbacks(ok, bad)
        d.addBoth(lambda _: reactor.stop())
        return d

    reactor.callWhenRunning(run)
    reactor.run()
    if "error" in outcome:
        outcome["error"].printTraceback()
        return 1
    results = outcome["results"]
    if opts.json:
        print(json.dumps({"machine": machine(), "sizeMiB": opts.size_mib, "chunk": opts.chunk,
                          "repeat": opts.repeat, "results": results}, indent=2))
    else:
        info = machine()
        print(f"{opts.size_mib} MiB per run, {opts.repeat} run(s) per case (median shown), "
              f"{opts.chunk}-byte writes; {info['cpus']} CPUs ({info['cpu']}), "
              f"{info['implementation']} {info['python']}, Twisted {info['twisted']}, "
              f"cryptography {info['cryptography']}, pyOpenSSL {info['pyOpenSSL']} ({info['openssl']}), "
              f"{info['reactor']}")
        print()
        print(table(results, opts.size_mib * MIB))
    return 0


if __name__ == "__main__":
    sys.exit(main())
