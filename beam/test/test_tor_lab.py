"""
The issue's Tor proof in the NAT lab (issue 10): real C{beam} processes
and real C{tor} processes in network namespaces behind real Linux NATs
(L{beam.testing.netlab} and L{beam.testing.tornet}; root only, never
skipped).

Topology (one for the whole module: the private Tor network takes 40-60 s
to become ready)::

    public "tor"    TorNetwork: 3 directory authorities, 3 relays
    public "seed"   beam daemon, DHT server, tor "fallback" (launches its
                    own tor): an IP address and an onion address
    home "host"     behind a symmetric NAT, no relay anywhere: beam PORT
                    --tor (mode always, launches its own tor), serving the
                    lab's web server; bootstrap: the seed's onion address
    home "client"   behind a port-restricted NAT: beam connect NAME --tor,
                    attached to a client tor of the network ([tor]
                    control); bootstrap: the seed's onion address

Nothing of the host is reachable by IP: the client can reach it only
through its onion service.  The timings (network ready, host start to
ready, connect to first byte, 16 MiB throughput) are printed as one JSON
line at the end (run with C{pytest -s} to see it).
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, ClassVar, Optional

from twisted.trial.unittest import SynchronousTestCase

from beam.testing.labbeam import BeamProcess, LabBeam, MiB, patternDigest
from beam.testing.netlab import Host, NatLab
from beam.testing.tornet import TorClient, TorNetwork

#: The download through every tunnel.
SIZE = 16 * MiB
SEED = 10
#: The local port of every forward (each client runs in its own namespace).
LOCAL_PORT = 8080
#: Seconds the private network has to become ready.
NETWORK_TIMEOUT = 180
#: Seconds a node has to bootstrap its tor and publish its onion service
#: (written into its config.toml as [tor] bootstrap_timeout).
TOR_TIMEOUT = 150
#: Seconds a forward has to carry its first request.
CONNECT_DEADLINE = 90

_ONION = re.compile(r"/onion3/[a-z2-7]{56}:\d+")


def _toml(value: Any) -> str:
    """
    C{value} (a string, a number, or a list of strings) as TOML: JSON's
    strings and arrays of plain ASCII are TOML's too.
    """
    return json.dumps(value)


def torConfig(mode: str, *, options: Optional[dict[str, list[str]]] = None, control: Optional[str] = None,
              extra: str = "") -> str:
    """
    A C{config.toml} with a C{[tor]} table: C{options} for a tor the node
    launches (L{TorNetwork.clientOptions}), or C{control} to attach.
    """
    lines = [extra, "[tor]", f"mode = {_toml(mode)}", f"bootstrap_timeout = {TOR_TIMEOUT}"]
    if control is not None:
        lines.append(f"control = {_toml(control)}")
    if options:
        lines.append("[tor.options]")
        lines += [f"{name} = {_toml(values)}" for name, values in options.items()]
    return "\n".join(lines) + "\n"


def onionOf(addrs: list[str]) -> list[str]:
    """
    The C{/onion3} addresses among C{addrs}, without C{/p2p/...}.
    """
    return [m.group(0) for a in addrs for m in [_ONION.search(a)] if m]


def shareForm(onion: str) -> str:
    """
    How a share address writes the multiaddr C{/onion3/HOST:PORT}:
    C{HOST.onion:PORT}.
    """
    host, _, port = onion[len("/onion3/"):].partition(":")
    return f"{host}.onion:{port}"


def ipAddrs(text: str) -> list[str]:
    """
    Every C{/ip4}, C{/ip6} or C{/dns*} address part in C{text}.
    """
    return re.findall(r"/(?:ip4|ip6|dns|dns4|dns6)/[^/\s\"]+", text)


def evidence(p: BeamProcess) -> str:
    """
    What C{p} said on stdout (the rest of it once it exited: an error
    line) and the end of its log, for a failure message.
    """
    out = list(p.lines)
    if not p.alive() and p.proc.stdout is not None and not p.proc.stdout.closed:
        try:
            out.append(p.proc.stdout.read().decode(errors="replace"))
        except (OSError, ValueError):
            pass
    return f"{p.label} (exit {p.proc.poll()}) stdout:\n" + "\n".join(out) + f"\n{p.label} log:\n{p.tail()}"


def _tcpConnections(host: Host) -> list[dict[str, Any]]:
    """
    Every TCP connection in C{host}'s namespace that is not listening, from
    C{ss -tanpH}: state, local and peer address and port, and the PIDs of
    the processes that hold it.
    """
    out = host.check_output(["ss", "-tanpH"], text=True, timeout=20)
    rows = []
    for line in out.splitlines():
        fields = line.split()
        if len(fields) < 5 or fields[0] == "LISTEN":
            continue
        local, peer = fields[3], fields[4]
        rows.append({
            "state": fields[0],
            "local": local.rpartition(":")[0].strip("[]"),
            "peer": peer.rpartition(":")[0].strip("[]"),
            "peer_port": peer.rpartition(":")[2],
            "pids": [int(p) for p in re.findall(r"pid=(\d+)", line)],
            "line": line.strip(),
        })
    return rows


class TorLabTests(SynchronousTestCase):
    """
    A host that nothing can reach by IP serves over Tor only; a client
    reaches it through its onion service, by name and by share address.
    """

    lab: ClassVar[NatLab]
    beams: ClassVar[LabBeam]
    network: ClassVar[TorNetwork]
    workdir: ClassVar[str]
    torHost: ClassVar[Host]
    seedHost: ClassVar[Host]
    hostHost: ClassVar[Host]
    clientHost: ClassVar[Host]
    clientTor: ClassVar[TorClient]
    seed: ClassVar[BeamProcess]
    seedAddr: ClassVar[str]
    seedPeer: ClassVar[str]
    webPort: ClassVar[int]
    hostHome: ClassVar[str]
    host: ClassVar[BeamProcess]
    hostReady: ClassVar[dict[str, Any]]
    hostOnion: ClassVar[str]
    timings: ClassVar[dict[str, Any]]
    started: ClassVar[float]

    @classmethod
    def setUpClass(cls) -> None:
        cls.started = time.monotonic()
        cls.timings = {}
        cls.lab = NatLab()
        cls.beams = LabBeam(cls.lab)
        cls.workdir = tempfile.mkdtemp(prefix="beam-torlab-")
        try:
            cls._build()
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def _build(cls) -> None:
        lab = cls.lab
        cls.torHost = lab.addPublic("tor")
        cls.seedHost = lab.addPublic("seed")
        cls.hostHost = lab.addHome("host", "symmetric")
        cls.clientHost = lab.addHome("client", "portrestricted")
        cls.network = TorNetwork(cls.workdir, host=cls.torHost)
        cls.network.start(timeout=NETWORK_TIMEOUT)
        cls.timings["network_ready_s"] = round(cls.network.readyAfter or 0, 1)
        options = cls.network.clientOptions()

        # The seed: a public DHT server with an IP and an onion address.
        # It starts its tor while the client's tor joins the network.
        seedHome = cls.beams.newHome("seed")
        with open(f"{seedHome}/config.toml", "w") as f:
            f.write(torConfig("fallback", options=options,
                              extra='relay = "off"\nlisten = ["/ip4/0.0.0.0/tcp/4001"]'))
        t0 = time.monotonic()
        cls.seed = cls.beams.beam(cls.seedHost, seedHome, "daemon", "--json", label="seed-daemon")
        cls.seed.home = seedHome  # type: ignore[attr-defined]
        cls.clientTor = cls.network.addClient("client", host=cls.clientHost)
        ready = cls.seed.readJSON(timeout=TOR_TIMEOUT + 30)
        if ready.get("event") != "ready":
            raise AssertionError(f"seed: {ready}; log:\n{cls.seed.tail()}")
        onions = onionOf(ready["addrs"])
        if not onions:
            status = cls.beams.json(cls.seedHost, seedHome, "status")
            raise AssertionError(f"the seed has no onion address: {ready['addrs']}; tor: {status.get('tor')}; "
                                 f"log:\n{cls.seed.tail()}")
        cls.seedPeer = ready["peer_id"]
        cls.seedAddr = f"{onions[0]}/p2p/{cls.seedPeer}"
        cls.timings["seed_ready_s"] = round(time.monotonic() - t0, 1)

        # The host: behind a symmetric NAT, Tor only.
        cls.webPort = cls.beams.webServer(cls.hostHost, SIZE, SEED)
        cls.hostHome = cls.beams.newHome("host")
        with open(f"{cls.hostHome}/config.toml", "w") as f:
            f.write(torConfig("always", options=options))
        cls.startHost("host_ready_s")
        cls.hostOnion = cls.hostReadyOnion()

    @classmethod
    def startHost(cls, timing: str) -> None:
        """
        C{beam PORT --tor} in the host's home; wait for its ready line
        (the onion service published, the name registered).
        """
        t0 = time.monotonic()
        cls.host = cls.beams.beam(cls.hostHost, cls.hostHome, "--bootstrap", cls.seedAddr, str(cls.webPort),
                                  "--tor", "--json", label="host-expose")
        ready = cls.host.readJSON(timeout=TOR_TIMEOUT + 60)
        if ready.get("event") != "ready":
            raise AssertionError(f"host: {ready}; log:\n{cls.host.tail()}")
        cls.timings[timing] = round(time.monotonic() - t0, 1)
        cls.hostReady = ready

    @classmethod
    def hostReadyOnion(cls) -> str:
        onions = onionOf(cls.hostReady["addrs"])
        if len(onions) != 1:
            raise AssertionError(f"host: not one onion address: {cls.hostReady}")
        return onions[0]

    @classmethod
    def tearDownClass(cls) -> None:
        print(json.dumps({"tor_lab_timings": cls.timings,
                          "module_s": round(time.monotonic() - cls.started, 1)}))
        network = getattr(cls, "network", None)
        try:
            cls.beams.close()
        finally:
            try:
                if network is not None:
                    network.close()
            finally:
                cls.lab.close()
                shutil.rmtree(cls.workdir, ignore_errors=True)

    def setUp(self) -> None:
        self.t0 = time.monotonic()

    def tearDown(self) -> None:
        print(f"\n{self.id()}: {time.monotonic() - self.t0:.1f} s", file=sys.stderr)

    # -- helpers ---------------------------------------------------------

    def clientConfig(self) -> str:
        """
        A new client home attached to the client tor of the network.
        """
        home = self.beams.newHome("client")
        with open(f"{home}/config.toml", "w") as f:
            f.write(torConfig("always", control=self.clientTor.control))
        return home

    def connect(self, target: str, timing: Optional[str] = None) -> dict[str, Any]:
        """
        C{beam connect TARGET --tor --port LOCAL_PORT --json} from a new
        home in the client, with the fetcher polling the local port from
        just before: the ready line, when the tunnel first answered, and
        the 16 MiB download.
        """
        home = self.clientConfig()
        fetcher = self.beams.fetcher(self.clientHost, LOCAL_PORT, SIZE, CONNECT_DEADLINE)
        # Let the fetcher's interpreter come up, so that its first poll is
        # not what we time.
        time.sleep(0.5)
        t0 = time.monotonic()
        p = self.beams.beam(self.clientHost, home, "--bootstrap", self.seedAddr, "connect", target, "--tor",
                            "--port", str(LOCAL_PORT), "--json", label="client-connect")
        self.addCleanup(p.kill)
        self.addCleanup(fetcher.kill)
        usable = fetcher.readJSON(timeout=CONNECT_DEADLINE + 30)
        self.assertEqual(usable.get("event"), "usable",
                         f"no answer through the tunnel; {evidence(p)}\n{evidence(self.host)}")
        ready = p.readJSON(timeout=10)
        self.assertEqual(ready.get("event"), "ready", ready)
        fetched = fetcher.readJSON(timeout=180)
        self.assertIsNone(fetched["error"], f"{fetched}; beam connect log:\n{p.tail()}")
        self.assertEqual(fetched["bytes"], SIZE)
        self.assertEqual(fetched["sha256"], patternDigest(SIZE, SEED))
        result = {"process": p, "home": home, "ready": ready, "usable_s": round(usable["at"] - t0, 1),
                  "mib_s": round(fetched["bytes"] / MiB / max(fetched["seconds"], 1e-6), 2)}
        if timing is not None:
            self.timings[f"{timing}_connect_to_first_byte_s"] = result["usable_s"]
            self.timings[f"{timing}_16mib_mib_s"] = result["mib_s"]
        return result

    def smallGet(self) -> bytes:
        """
        One plain HTTP GET of C{/} through the client's forward.
        """
        code = ("import urllib.request; import sys; "
                f"sys.stdout.buffer.write(urllib.request.urlopen('http://127.0.0.1:{LOCAL_PORT}/', "
                "timeout=30).read())")
        out: bytes = self.clientHost.check_output([sys.executable, "-c", code], timeout=60)
        return out

    def torStatus(self, host: Host, home: str) -> dict[str, Any]:
        status: dict[str, Any] = self.beams.json(host, home, "status")
        return status

    # -- tests -----------------------------------------------------------

    def test_byName(self) -> None:
        """
        The client connects by the name the host registered: a small HTTP
        GET and 16 MiB with a matching SHA-256 come through; both sides'
        C{beam status} show Tor ready, the host's onion the one it
        advertises, and their connection to each other runs over Tor.
        """
        registered = self.hostReady.get("registered") or {}
        self.assertGreater(registered.get("stored_on", 0), 0, self.hostReady)
        name = registered["name"]
        result = self.connect(name, timing="by_name")
        self.assertIn(b"hello through the NAT lab", self.smallGet())
        hostStatus = self.torStatus(self.hostHost, self.hostHome)
        clientStatus = self.torStatus(self.clientHost, result["home"])
        for side, status in (("host", hostStatus), ("client", clientStatus)):
            tor = status.get("tor") or {}
            self.assertEqual(tor.get("state"), "ready", f"{side}: {tor}")
            self.assertEqual(tor.get("mode"), "always", f"{side}: {tor}")
            self.assertGreaterEqual(tor.get("connections", 0), 1, f"{side}: {tor}")
        self.assertEqual(hostStatus["tor"]["onion"], self.hostOnion)
        self.assertTrue(hostStatus["tor"]["launched"])
        self.assertFalse(clientStatus["tor"]["launched"])
        hostPeer = self.hostReady["peer_id"]
        clientPeer = clientStatus["peer_id"]
        toHost = [c for c in clientStatus["connections"] if c["peer_id"] == hostPeer]
        toClient = [c for c in hostStatus["connections"] if c["peer_id"] == clientPeer]
        self.assertTrue(toHost, clientStatus["connections"])
        self.assertTrue(toClient, hostStatus["connections"])
        self.assertEqual({c["transport"] for c in toHost + toClient}, {"tor"}, toHost + toClient)
        # The client reached the host at the onion it advertises; the host
        # never learns where its client is (both ends are its onion).
        self.assertIn(self.hostOnion, [onionOf([c["remote_addr"]])[0] for c in toHost if onionOf([c["remote_addr"]])],
                      toHost)
        self.assertEqual(ipAddrs(json.dumps(toClient)), [], toClient)

    def test_byShareAddress(self) -> None:
        """
        The share address C{beam PORT --json} printed holds the host's
        onion address and no IP address, and the client connects with it.
        """
        share = self.hostReady["share"]
        self.assertIn(f"@{shareForm(self.hostOnion)}/", share)
        self.assertEqual(ipAddrs(share), [], share)
        self.connect(share, timing="by_share")
        self.assertIn(b"hello through the NAT lab", self.smallGet())

    def test_alwaysOpensNoDirectTcp(self) -> None:
        """
        While a client connects and downloads, every established TCP
        connection of the host's C{beam} goes to 127.0.0.1 (its tor), and
        every TCP connection in the host's namespace goes to the Tor
        network or to loopback: none to the client, the seed, or their
        NATs.  The host's status and share address list no IP address.
        """
        self.assertIn(f"@{shareForm(self.hostOnion)}/", self.hostReady["share"])
        samples: list[list[dict[str, Any]]] = []
        home = self.clientConfig()
        fetcher = self.beams.fetcher(self.clientHost, LOCAL_PORT, SIZE, CONNECT_DEADLINE)
        self.addCleanup(fetcher.kill)
        time.sleep(0.5)
        p = self.beams.beam(self.clientHost, home, "--bootstrap", self.seedAddr, "connect",
                            self.hostReady["share"], "--tor", "--port", str(LOCAL_PORT), "--json",
                            label="client-connect")
        self.addCleanup(p.kill)
        deadline = time.monotonic() + CONNECT_DEADLINE + 180
        while fetcher.alive() and time.monotonic() < deadline:
            samples.append(_tcpConnections(self.hostHost))
            time.sleep(0.3)
        usable = fetcher.readJSON(timeout=10)
        self.assertEqual(usable.get("event"), "usable", f"{self.hostReady}\n{evidence(p)}")
        fetched = fetcher.readJSON(timeout=10)
        self.assertEqual(fetched["sha256"], patternDigest(SIZE, SEED), fetched)
        samples.append(_tcpConnections(self.hostHost))

        allowed = {self.network.address, "127.0.0.1", "::1", "::ffff:127.0.0.1"}
        forbidden = {self.clientHost.addr, self.clientHost.reachableAddr, self.seedHost.addr}
        hostPid = self.host.pid
        beamPeers: set[str] = set()
        bad = []
        for sample in samples:
            for row in sample:
                if hostPid in row["pids"]:
                    beamPeers.add(row["peer"])
                    if row["peer"] not in ("127.0.0.1", "::1", "::ffff:127.0.0.1"):
                        bad.append(f"host beam: {row['line']}")
                if row["peer"] not in allowed:
                    bad.append(f"host namespace: {row['line']}")
                if row["peer"] in forbidden:
                    bad.append(f"to the client or the seed: {row['line']}")
        established = sum(1 for s in samples for r in s if r["state"] == "ESTAB")
        print(json.dumps({"socket_samples": len(samples), "established_seen": established,
                          "host_beam_peers": sorted(beamPeers)}))
        self.assertGreaterEqual(len(samples), 3)
        self.assertEqual(bad, [], "\n" + "\n".join(sorted(set(bad))))
        # The host's tor talks to the network: the samples saw real traffic.
        self.assertTrue(any(r["peer"] == self.network.address and r["state"] == "ESTAB"
                            for s in samples for r in s), samples[-1])
        status = self.torStatus(self.hostHost, self.hostHome)
        for key in ("addrs", "listen_addrs", "confirmed_addrs", "candidate_addrs", "relay_addrs",
                    "observed_addrs"):
            self.assertEqual(ipAddrs(json.dumps(status.get(key) or [])), [], f"{key}: {status.get(key)}")
        self.assertEqual(onionOf(status["addrs"]), [self.hostOnion], status["addrs"])
        self.assertEqual(ipAddrs(json.dumps(status.get("tunnels") or [])), [], status.get("tunnels"))
        self.assertEqual(ipAddrs(" ".join(self.hostReady["addrs"]) + self.hostReady["share"]), [], self.hostReady)

    def test_restartKeepsOnion(self) -> None:
        """
        The host is stopped and started again with the same home: the same
        onion address (status and share address), and a new C{beam
        connect} from the client reaches it and downloads.
        """
        before = self.hostOnion
        self.host.proc.send_signal(signal.SIGTERM)
        try:
            self.host.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.host.kill()
        self.host.kill()
        self.startHost("restart_host_ready_s")
        self.assertEqual(self.hostReadyOnion(), before)
        status = self.torStatus(self.hostHost, self.hostHome)
        self.assertEqual(status["tor"]["onion"], before)
        self.assertIn(f"@{shareForm(before)}/", self.hostReady["share"])
        self.connect(self.hostReady["share"], timing="after_restart")
