"""
Beam over Tor (issue 10) on a private Tor network on this machine's
loopback, next to a direct connection and a plain Beam tunnel in the same
run.

Run it from the repository root (Debian's C{tor} package must be
installed: C{beam.testing.tornet} says how if it is not)::

    .venv/bin/python bench/bench_tor.py                  # 16 MiB each way
    .venv/bin/python bench/bench_tor.py --size-mib 64 --json
    .venv/bin/python bench/bench_tor.py --contenders direct,beam-tor

What it starts, all on 127.0.0.1 and all stopped at the end:

  - a private Tor network (L{beam.testing.tornet.TorNetwork}: three
    directory authorities, three relays, C{TestingTorNetwork 1}) and one
    client tor of it (C{addClient}) for the connecting side;
  - the service of C{bench_tunnel.py} (C{--serve}: threads, blocking
    sockets);
  - the contenders, between this process (the client) and the service:
      - C{direct}: straight to the service;
      - C{beam}: C{beam --home H1 SVC} and C{beam --home H2 connect SHARE
        --port P}, over TCP on loopback;
      - C{beam-tor}: C{beam --home H3 SVC --tor} launching its own tor,
        whose C{config.toml} carries the network's client options in
        C{[tor.options]}, and C{beam --home H4 connect SHARE --tor
        --tor-control CONTROL --port P} attached to the network's client
        tor.  Every byte goes client tor -> relays -> rendezvous <- relays
        <- the host's tor: six hops between the two tors, the usual for an
        onion service.

Both Beam hosts run with C{--no-register} (no DHT here to store a name on:
registering would only add a wait that has nothing to do with Tor), and
the C{beam} pair with C{--listen /ip4/127.0.0.1/tcp/0} as in
C{bench_tunnel.py}.  The C{beam-tor} host listens on nothing but its onion
(mode C{always}).

Metrics, with the client code of C{bench_tunnel.py} (imported, unchanged):

  1. start-up of each Beam pair: seconds from starting the host process to
     its share address (C{host ready}: for C{beam-tor} that is launching
     tor, bootstrapping on the private network and publishing the onion),
     from starting C{beam connect} to its first echoed byte through the
     forward (C{connect}), and the sum, from starting the host to the
     first successful fetch through a client (C{reachable});
  2. bulk throughput, download and upload, of incompressible data
     (C{--size-mib}, default 16), count and CRC checked;
  3. 64-byte round trips over one open connection (p50/p99);
  4. new connections through the established tunnel: C{connect()} to the
     first echoed byte (p50/p99).

Each metric is also given as a ratio to C{direct} and to C{beam}.  The
private network runs on the same two cores as everything else, so its
figures are a floor for Tor's overhead in CPU, not a prediction of the real
Tor network (where latency between relays dominates).

This is a benchmark, not a test: nothing asserts times.  It takes a
minute or two, most of it Tor starting.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(1, ROOT)

import bench_tunnel as bt  # noqa: E402  (this directory's benchmark: its client code)

MIB = bt.MIB
CONTENDERS = ("direct", "beam", "beam-tor")
LABELS = {"direct": "direct TCP", "beam": "beam (TCP)", "beam-tor": "beam over Tor"}


def firstEcho(port: int, timeout: float = 120.0, proc: Optional[subprocess.Popen] = None) -> float:
    """
    Connect to C{port}, send an echo request with one byte and wait for the
    byte to come back; the monotonic time it did.  A forward that is not
    listening yet, or whose dial fails (the connection is closed), is
    retried until C{timeout}, or until C{proc} (the forward's process)
    exits.
    """
    request = bt._HEADER.pack(b"E", b"R", 0) + b"x"
    deadline = time.monotonic() + timeout
    last: Optional[BaseException] = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the forward's process exited ({proc.returncode}) before an echo: {last}")
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=max(1.0, deadline - time.monotonic()))
        except OSError as e:
            last = e
            time.sleep(0.02)
            continue
        try:
            sock.sendall(request)
            if sock.recv(1) == b"x":
                return time.monotonic()
            last = RuntimeError("connection closed before the echo")
        except OSError as e:
            last = e
        finally:
            sock.close()
        time.sleep(0.1)
    raise RuntimeError(f"no echo through 127.0.0.1:{port} within {timeout:.0f} s: {last}")


class BeamPair(bt.Beam):
    """
    Two C{beam} processes as in C{bench_tunnel.py}, timed from the host's
    start to the first echoed byte through the client's forward; with
    C{tor}, the host launches its own tor on the private network and the
    client attaches to the network's client tor at C{torControl}.
    """

    def __init__(self, servicePort: int, workdir: str, tag: str,
                 torOptions: Optional[dict[str, list[str]]] = None,
                 torControl: Optional[str] = None, timeout: float = 300.0) -> None:
        super().__init__(servicePort, workdir)
        self.tag = tag
        self.torOptions = torOptions
        self.torControl = torControl
        self.timeout = timeout

    def _beam(self, home: str, args: list[str], name: str) -> subprocess.Popen:
        proc = super()._beam(home, args, name)
        tor = " --tor" if self.torOptions is not None else ""
        self.names[proc.pid] = {"host": f"beam PORT{tor} (host)", "client": f"beam connect{tor} (client)"}[name]
        return proc

    def _writeTorConfig(self, home: str) -> None:
        """
        C{[tor.options]}: the private network's client options, so the tor
        the host launches joins it (and no other network).
        """
        assert self.torOptions is not None
        os.makedirs(home, mode=0o700, exist_ok=True)
        lines = ["[tor.options]"]
        for name, values in self.torOptions.items():
            lines.append(f"{name} = " + (json.dumps(values[0]) if len(values) == 1 else json.dumps(values)))
        path = os.path.join(home, "config.toml")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.chmod(path, 0o600)

    def start(self) -> int:
        tor = self.torOptions is not None
        h1 = os.path.join(self.workdir, f"{self.tag}-host")
        h2 = os.path.join(self.workdir, f"{self.tag}-client")
        self.homes = {"host": h1, "client": h2}
        if tor:
            self._writeTorConfig(h1)
            hostArgs = ["--tor"]
            clientArgs = ["--tor", "--tor-control", str(self.torControl)]
        else:
            listen = ["--listen", "/ip4/127.0.0.1/tcp/0"]
            hostArgs, clientArgs = listen, listen
        t0 = time.monotonic()
        host = self._beam(h1, [str(self.servicePort), *hostArgs, "--no-register", "--json"], "host")
        ready = json.loads(bt._readLine(host, self.timeout, f"{self.tag} (host)"))
        t1 = time.monotonic()
        self.info["share"] = ready["share"]
        self.info["addrs"] = ready.get("addrs")
        if tor and not any("/onion3/" in a for a in ready.get("addrs") or []):
            raise RuntimeError(f"{self.tag}: the host shares no /onion3 address: {ready.get('addrs')}")
        t2 = time.monotonic()
        port, t3, t4 = self._connect(h2, ready["share"], clientArgs, t2 + self.timeout)
        self.info["startup"] = {
            "hostReadyS": t1 - t0,
            "clientReadyS": t3 - t2,
            "connectS": t4 - t2,
            "reachableS": t4 - t0,
            "connectAttempts": len(self.info["connectFailures"]) + 1,
        }
        return port

    def _connect(self, home: str, share: str, args: list[str], deadline: float) -> tuple[int, float, float]:
        """
        Start C{beam connect} until its forward echoes a byte, by
        C{deadline}: a client whose connect fails (it prints an error and
        exits: over Tor, say, when the onion's descriptor has not reached
        the directory it asks) is started again a second later, and every
        failure is kept in C{info["connectFailures"]}, so the time to
        connect counts them.

        @return: the forward's port, when the client said it was ready,
            and when the first byte came back.
        """
        failures = self.info.setdefault("connectFailures", [])
        while True:
            port = bt._freePort()
            client = self._beam(home, ["connect", share, "--port", str(port), *args, "--json"], "client")
            try:
                line = bt._readLine(client, max(1.0, deadline - time.monotonic()), f"{self.tag} (beam connect)")
                event = json.loads(line)
                if event.get("event") != "ready":
                    raise RuntimeError(line.strip())
                ready = time.monotonic()
                return port, ready, firstEcho(port, max(1.0, deadline - time.monotonic()), client)
            except (RuntimeError, ValueError) as e:
                bt._stop(client)
                self.procs.remove(client)
                try:
                    with open(os.path.join(self.workdir, f"{self.tag}-client.log")) as f:
                        logTail = f.read().splitlines()[-5:]
                except OSError:
                    logTail = []
                failures.append({"afterS": time.monotonic() - deadline + self.timeout, "error": str(e)[-500:],
                                 "logTail": logTail})
                if time.monotonic() + 1 >= deadline:
                    raise RuntimeError(f"{self.tag}: beam connect failed {len(failures)} time(s), "
                                       f"last: {e}") from e
                time.sleep(1)

    def transportOf(self) -> list[str]:
        """
        The transports of the client's peer connections (C{beam status
        --json}), to show the tunnel really ran over Tor.
        """
        done = subprocess.run([*self._cli(), "--home", self.homes["client"], "status", "--json"],
                              capture_output=True, text=True, timeout=60, cwd=ROOT, stdin=subprocess.DEVNULL)
        lines = done.stdout.strip().splitlines()
        if done.returncode or not lines:
            return []
        status = json.loads(lines[-1])
        conns = status.get("connections") or status.get("peers") or []
        out = []
        for c in conns if isinstance(conns, list) else []:
            if isinstance(c, dict) and c.get("transport"):
                out.append(str(c["transport"]))
        return out


def measure(port: int, opts: argparse.Namespace) -> dict[str, Any]:
    """
    Every traffic metric through C{port}, with C{bench_tunnel.py}'s client
    functions.
    """
    size = opts.size_mib * MIB
    pattern = bt.randomPattern()
    return {
        "downloadMiBps": bt.download(port, size, pattern),
        "uploadMiBps": bt.upload(port, size, pattern),
        "rtt": bt.roundTrips(port, opts.round_trips, warmup=opts.warmup),
        "setup": bt.connectionSetup(port, opts.connections),
    }


def ratio(value: Optional[float], base: Optional[float]) -> Optional[float]:
    return value / base if value is not None and base else None


#: Rows of the table: label, how to get the value from a result, format,
#: whether the row applies to C{direct}.
def _rows(opts: argparse.Namespace) -> list[tuple[str, str, Callable[[dict], Optional[float]], str]]:
    s = lambda key: (lambda r: (r.get("startup") or {}).get(key))  # noqa: E731
    return [
        ("host ready s (start to share address)", "hostReadyS", s("hostReadyS"), ".2f"),
        ("connect s (beam connect to first echoed byte)", "connectS", s("connectS"), ".2f"),
        ("reachable s (host start to first fetch)", "reachableS", s("reachableS"), ".2f"),
        ("beam connect attempts", "connectAttempts", s("connectAttempts"), ".0f"),
        (f"download MiB/s ({opts.size_mib} MiB)", "downloadMiBps", lambda r: r["downloadMiBps"], ".1f"),
        (f"upload MiB/s ({opts.size_mib} MiB)", "uploadMiBps", lambda r: r["uploadMiBps"], ".1f"),
        ("64 B round trip p50 ms", "rttP50ms", lambda r: r["rtt"]["p50"] / 1000, ".3f"),
        ("64 B round trip p99 ms", "rttP99ms", lambda r: r["rtt"]["p99"] / 1000, ".3f"),
        ("new connection p50 ms", "setupP50ms", lambda r: r["setup"]["p50"], ".2f"),
        ("new connection p99 ms", "setupP99ms", lambda r: r["setup"]["p99"], ".2f"),
    ]


def summary(results: dict[str, dict], opts: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """
    Each metric per contender with its ratios to C{direct} and C{beam}.
    """
    out: dict[str, dict[str, Any]] = {}
    for _, key, get, _ in _rows(opts):
        row: dict[str, Any] = {}
        base = {b: get(results[b]) if b in results else None for b in ("direct", "beam")}
        for n, r in results.items():
            v = get(r)
            row[n] = {"value": v, "vsDirect": ratio(v, base["direct"]) if n != "direct" else None,
                      "vsBeam": ratio(v, base["beam"]) if n not in ("direct", "beam") else None}
        out[key] = row
    return out


def _fmtRatio(r: float) -> str:
    """
    A ratio with two decimals, or four when it is small (Tor's throughput
    against loopback's).
    """
    return f"{r:.2f}" if r >= 0.1 else f"{r:.4f}"


def table(results: dict[str, dict], opts: argparse.Namespace) -> str:
    names = [n for n in CONTENDERS if n in results]
    rows = ["| metric | " + " | ".join(LABELS[n] for n in names) + " |", "|---|" + "---:|" * len(names)]
    summ = summary(results, opts)
    for label, key, _, fmt in _rows(opts):
        cells = []
        for n in names:
            c = summ[key][n]
            if c["value"] is None:
                cells.append("-")
                continue
            text = format(c["value"], fmt)
            extra = [f"{_fmtRatio(c[k])}× {w}" for k, w in (("vsDirect", "direct"), ("vsBeam", "beam"))
                     if c[k] is not None and key != "connectAttempts"]
            cells.append(text + (f" ({', '.join(extra)})" if extra else ""))
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _leftovers(workdir: str) -> list[int]:
    """
    PIDs of processes still running whose command line names C{workdir}
    (a tor launched by a Beam host that did not stop it, say).
    """
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != os.getpid() and workdir in bt._cmdline(int(name)):
            out.append(int(name))
    return out


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=16, help="MiB per bulk transfer, each way (default 16)")
    parser.add_argument("--round-trips", type=int, default=500, help="64-byte round trips (default 500)")
    parser.add_argument("--warmup", type=int, default=20, help="round trips not counted first (default 20)")
    parser.add_argument("--connections", type=int, default=50, help="sequential new connections (default 50)")
    parser.add_argument("--contenders", default=",".join(CONTENDERS),
                        help="comma-separated subset of " + ",".join(CONTENDERS))
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds each Beam process may take to start and connect (default 300)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    opts = parser.parse_args(argv)
    names = [n.strip() for n in opts.contenders.split(",") if n.strip()]
    for n in names:
        if n not in CONTENDERS:
            parser.error(f"unknown contender {n!r}")

    def log(line: str) -> None:
        if not opts.json:
            print(line, file=sys.stderr, flush=True)

    from beam.testing.tornet import TorNetwork

    # Short: tor's UNIX sockets under it must fit in sun_path.
    workdir = tempfile.mkdtemp(prefix="bbt-", dir="/tmp")
    service = subprocess.Popen([sys.executable, os.path.abspath(bt.__file__), "--serve"],
                               stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    network: Optional[TorNetwork] = None
    contenders: dict[str, bt.Contender] = {}
    results: dict[str, dict] = {}
    load = [os.getloadavg()[0]]
    tornet: dict[str, Any] = {}
    leftovers: list[int] = []
    try:
        servicePort = int(bt._readLine(service, 30, "the service").split(":")[-1])
        if "beam-tor" in names:
            log("starting the private Tor network ...")
            network = TorNetwork(os.path.join(workdir, "net"))
            network.start()
            tornet["readyS"] = network.readyAfter
            log(f"  ready after {network.readyAfter:.1f} s; adding the client's tor ...")
            t = time.monotonic()
            client = network.addClient("bc")
            tornet["clientTorReadyS"] = time.monotonic() - t
            log(f"  client tor ready after {tornet['clientTorReadyS']:.1f} s")
        for n in names:
            if n == "direct":
                contenders[n] = bt.Direct(servicePort, workdir)
            elif n == "beam":
                contenders[n] = BeamPair(servicePort, workdir, "beam", timeout=opts.timeout)
            else:
                assert network is not None
                contenders[n] = BeamPair(servicePort, workdir, "beam-tor", torOptions=network.clientOptions(),
                                         torControl=client.control, timeout=opts.timeout)
            log(f"starting {n} ...")
            port = contenders[n].start()
            info = contenders[n].info
            if "startup" in info:
                st = info["startup"]
                log(f"  host ready {st['hostReadyS']:.2f} s, connect {st['connectS']:.2f} s, "
                    f"reachable {st['reachableS']:.2f} s")
            for failure in info.get("connectFailures", []):
                log(f"  beam connect failed after {failure['afterS']:.1f} s: {failure['error']}")
                for line in failure["logTail"]:
                    log(f"    {line[:200]}")
            log(f"measuring {n} ...")
            r = measure(port, opts)
            if isinstance(contenders[n], BeamPair):
                info["clientTransports"] = contenders[n].transportOf()  # type: ignore[attr-defined]
            r["startup"] = info.get("startup")
            r["info"] = info
            results[n] = r
            log(f"  down {r['downloadMiBps']:.1f} MiB/s, up {r['uploadMiBps']:.1f} MiB/s, "
                f"rtt p50 {r['rtt']['p50'] / 1000:.3f} ms, new connection p50 {r['setup']['p50']:.2f} ms")
    finally:
        for contender in reversed(list(contenders.values())):
            contender.stop()
        if network is not None:
            network.close()
        bt._stop(service)
        time.sleep(1)
        leftovers = _leftovers(workdir)
        for pid in leftovers:
            try:
                os.kill(pid, 9)
            except OSError:
                pass
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(workdir, ignore_errors=True)
    load.append(os.getloadavg()[0])
    info = bt.machine()
    if opts.json:
        print(json.dumps({"date": datetime.date.today().isoformat(), "machine": info, "options": vars(opts),
                          "loadavg": load, "tornet": tornet, "results": results,
                          "summary": summary(results, opts), "leftoverPids": leftovers}, indent=2))
        return 0
    tor = subprocess.run(["tor", "--version"], capture_output=True, text=True).stdout.splitlines()
    print(f"{opts.size_mib} MiB each way, {opts.round_trips} round trips, {opts.connections} new connections; "
          f"{info['cpus']} CPUs ({info['cpu']}), Python {info['python']}, Twisted {info['twisted']}"
          + (f", {tor[0].strip().rstrip('.')}" if tor else "")
          + f"; load average {load[0]:.1f} before, {load[1]:.1f} after")
    if tornet:
        print(f"private Tor network (3 authorities, 3 relays) ready after {tornet['readyS']:.1f} s, "
              f"the client's tor after {tornet['clientTorReadyS']:.1f} s more")
    for n in names:
        for failure in results[n]["info"].get("connectFailures", []):
            print(f"{n}: beam connect failed after {failure['afterS']:.1f} s (started again): {failure['error']}")
        ts = results[n]["info"].get("clientTransports")
        if ts:
            print(f"{n}: the client's connections: {', '.join(ts)}")
    print()
    print(table(results, opts))
    if leftovers:
        print(f"\nwarning: processes left running after the stop, killed: {leftovers}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
