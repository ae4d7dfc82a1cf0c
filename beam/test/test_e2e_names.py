"""
End-to-end tests of names over the DHT, with real processes on loopback.

A grid of C{beam daemon} processes (20 for the issue's scenario), each with
its own temporary C{--home}, joins through the first two; every other
C{beam} command (C{register}, C{resolve}, C{connect}, C{network ...},
C{stop}) is its own process talking to a running node over its control
socket, or (C{beam PORT}, C{beam resolve} with no node) running one in the
foreground, exactly as a user would run them.

The attacks are made by a bare libp2p client of our own: this module run
as C{python -m beam.test.test_e2e_names kad SPEC} starts a listen-nowhere
L{beam.p2p.host.node.Node}, opens C{/beam/kad/1.0.0} streams to the daemons and
sends them raw C{GET_VALUE}/C{PUT_VALUE} requests crafted in the test
(forged and replayed name records), printing one JSON line per answer or
refusal (a stream reset).

Nothing sleeps a fixed time: every wait polls a condition with a deadline,
and every process is killed when its test ends.
"""

from __future__ import annotations

import http.client
import json
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from beam.identity.keys import Identity
from beam.identity.multiaddr import Multiaddr
from beam.names.record import (
    DOMAIN,
    PAYLOAD_TYPE,
    dhtKey,
    makeRecord,
    openRecord,
    signRecord,
)
from beam.proto import envelope_pb2, names_pb2
from beam.test.test_e2e_tunnel import (
    BIN,
    LOOPBACK,
    Child,
    E2EMixin,
    beamRun,
    echo,
    waitUntil,
)
from beam.encoding.varint import encode_uvarint

GRID = 20
"""Daemons in the issue's scenario."""

SMALL_GRID = 6
"""Daemons for the tests about one command, where the size does not matter."""

OWNER = 5
CLIENT = 17


# -- a raw kad-dht client (run in its own process) ---------------------------


def kadTool(spec: dict[str, Any]) -> None:
    """
    Send each request of C{spec["requests"]} (C{addr}: a multiaddr with
    C{/p2p/}; C{type}: C{"GET_VALUE"} or C{"PUT_VALUE"}; C{key} and
    C{value} in hex) on its own C{/beam/kad/1.0.0} stream, all at once, and
    print one JSON line per request, in order: C{{"addr", "answered",
    "record" (hex or null), "error"}}.  A holder that refuses a record
    resets the stream without answering: C{answered} is false.
    """
    from twisted.internet.defer import DeferredList, ensureDeferred
    from twisted.internet.protocol import Protocol
    from twisted.internet.task import react

    from beam.dht.messages import (
        Message,
        MessageType,
        Record,
        decodeMessage,
        encodeMessage,
    )
    from beam.dht.service import KAD_PROTOCOL, MAX_KAD_MESSAGE
    from beam.encoding.framing import LengthPrefixedReader, encodeLengthPrefixed
    from beam.p2p.host.node import Node

    class OneRequest(Protocol):
        def __init__(self, request: bytes) -> None:
            from twisted.internet.defer import Deferred

            self.request = request
            self.reader = LengthPrefixedReader(MAX_KAD_MESSAGE)
            self.answer: Deferred[Message] = Deferred()

        def connectionMade(self) -> None:
            self.transport.write(self.request)

        def dataReceived(self, data: bytes) -> None:
            frames = self.reader.feed(data)
            if frames and not self.answer.called:
                self.answer.callback(decodeMessage(frames[0]))
                self.transport.loseConnection()

        def connectionLost(self, reason: Any = None) -> None:
            if not self.answer.called:
                self.answer.errback(RuntimeError(f"stream closed without an answer: {reason.getErrorMessage()}"))

    async def one(reactor: Any, node: Node, req: dict[str, Any]) -> dict[str, Any]:
        addr = Multiaddr.fromString(req["addr"])
        key = bytes.fromhex(req["key"])
        kind = MessageType[req["type"]]
        record = Record(key, bytes.fromhex(req["value"])) if req.get("value") else None
        proto = OneRequest(encodeLengthPrefixed(encodeMessage(Message(kind, key, record))))
        result: dict[str, Any] = {"addr": req["addr"], "answered": False, "record": None, "error": None}
        try:
            await node.connect(addr)
            await node.openStream(addr.peerID(), [KAD_PROTOCOL], lambda: proto)
            answer = await proto.answer.addTimeout(10, reactor)
        except Exception as e:  # noqa: BLE001 - reported to the test
            result["error"] = f"{type(e).__name__}: {e}"
            return result
        result["answered"] = True
        if answer.record is not None:
            result["record"] = answer.record.value.hex()
        return result

    async def run(reactor: Any) -> None:
        node = Node(reactor, Identity.generate(), [])
        await node.startService()
        try:
            results = await DeferredList(
                [ensureDeferred(one(reactor, node, r)) for r in spec["requests"]], consumeErrors=True
            )
            for ok, value in results:
                print(json.dumps(value if ok else {"answered": False, "error": str(value.value)}), flush=True)
        finally:
            await node.stopService()

    react(lambda reactor: ensureDeferred(run(reactor)))


def kad(testCase: Any, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """
    Run L{kadTool} in a child process; its results, one per request.
    """
    out = subprocess.run(
        [sys.executable, "-m", "beam.test.test_e2e_names", "kad", json.dumps({"requests": requests})],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=90, check=False,
    )
    testCase.assertEqual(out.returncode, 0, out.stderr)
    results = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    testCase.assertEqual(len(results), len(requests), out.stderr)
    return results


def envelope(payload: bytes, identity: Identity) -> bytes:
    """
    A signed envelope (libp2p RFC 0002, domain C{beam-name-record}) around
    C{payload}, with C{identity}'s key and signature, whatever the payload
    says: how an attacker with a key of its own would build one.
    """
    domain = DOMAIN.encode()
    signed = b"".join([
        encode_uvarint(len(domain)), domain,
        encode_uvarint(len(PAYLOAD_TYPE)), PAYLOAD_TYPE,
        encode_uvarint(len(payload)), payload,
    ])
    return envelope_pb2.Envelope(
        public_key=identity.publicKey.toProtobuf(), payload_type=PAYLOAD_TYPE, payload=payload,
        signature=identity.sign(signed),
    ).SerializeToString(deterministic=True)


# -- the grid ---------------------------------------------------------------


def controlGet(home: str, path: str, timeout: float = 10) -> Any:
    """
    GET C{path} from the node serving C{home} over its control socket
    (cheaper than a C{beam} process, for polling); L{None} if it does not
    answer yet.
    """

    class Conn(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(str(Path(home) / "control.sock"))

    conn = Conn("beam", timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        return json.loads(body) if resp.status == 200 else None
    except OSError:
        return None
    finally:
        conn.close()


def beamRunMany(calls: Sequence[tuple[str, Sequence[str]]], timeout: float = 60) -> list[subprocess.CompletedProcess[str]]:
    """
    Run several short C{beam --home HOME ARGS...} commands at once.
    """
    procs = [
        subprocess.Popen(
            [str(BIN / "beam"), "--home", home, *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for home, args in calls
    ]
    results = []
    for p, (home, args) in zip(procs, calls):
        try:
            stdout, stderr = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            stdout, stderr = p.communicate()
        results.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return results


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def plain(addr: str) -> str:
    """
    C{addr} without its C{/p2p/...} part.
    """
    return str(Multiaddr.fromString(addr).withoutPeerID())


class Grid:
    """
    C{n} C{beam daemon} processes on loopback: the first starts alone, the
    second joins through it, and the rest start all at once, joining
    through both.

    @ivar homes: each node's home.
    @ivar daemons: each node's L{Child}.
    @ivar peers: each node's peer ID.
    @ivar addrs: each node's first shareable address (with C{/p2p/}).
    """

    def __init__(self, case: NamesMixin, n: int) -> None:
        self.case = case
        self.homes = [case.newHome() for _ in range(n)]
        self.daemons: list[Child] = [None] * n  # type: ignore[list-item]
        self.peers: list[str] = [""] * n
        self.addrs: list[str] = [""] * n
        self.start(0)
        self.start(1)
        for i in range(2, n):
            self.daemons[i] = self.spawn(i)
        for i in range(2, n):
            self.ready(i)

    def bootstrap(self, i: int) -> list[str]:
        flags = []
        for j in (0, 1):
            if j != i and self.addrs[j]:
                flags += ["--bootstrap", self.addrs[j]]
        return flags

    def spawn(self, i: int, listen: str = LOOPBACK) -> Child:
        return Child(
            self.case,
            [str(BIN / "beam"), "--home", self.homes[i], *self.bootstrap(i), "daemon", "--json", "--listen", listen],
            f"node{i}",
        )

    def ready(self, i: int) -> dict[str, Any]:
        event = self.daemons[i].readJSON(timeout=60)
        self.case.assertEqual(event["event"], "ready")
        self.peers[i] = event["peer_id"]
        self.addrs[i] = event["addrs"][0]
        return event

    def start(self, i: int, listen: str = LOOPBACK) -> dict[str, Any]:
        self.daemons[i] = self.spawn(i, listen)
        return self.ready(i)

    def waitJoined(self, timeout: float = 60) -> None:
        """
        Poll until every node has a routing table, and the first knows
        every other node.
        """
        n = len(self.homes)

        def joined() -> bool:
            for i, home in enumerate(self.homes):
                status = controlGet(home, "/v1/network/status")
                want = n - 1 if i == 0 else 1
                if status is None or status["routing_table_size"] < want:
                    return False
            return True

        waitUntil(joined, timeout, f"{n} DHT nodes joined", step=0.2)

    def node(self, peerID: str) -> int:
        return self.peers.index(peerID)


class NamesMixin(E2EMixin):
    """
    A grid, a service exposed on one of its nodes, and C{beam} helpers.
    """

    def beam(self, home: str, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        """
        Run C{beam --home HOME ARGS...}; with C{ok}, check it succeeded.
        """
        out = beamRun(*args, home=home)
        if ok:
            self.assertEqual(out.returncode, 0, f"beam {' '.join(args)}: {out.stderr}")  # type: ignore[attr-defined]
        return out

    def beamJSON(self, home: str, *args: str) -> Any:
        return json.loads(self.beam(home, *args, "--json").stdout)

    def fails(self, home: str, *args: str) -> str:
        """
        Run a command that must fail with one C{beam: ...} line and exit
        status 1; that line.
        """
        out = self.beam(home, *args, ok=False)
        self.assertEqual(out.returncode, 1, out.stdout + out.stderr)  # type: ignore[attr-defined]
        lines = out.stderr.splitlines()
        self.assertEqual(len(lines), 1, out.stderr)  # type: ignore[attr-defined]
        self.assertTrue(lines[0].startswith("beam: "), lines[0])  # type: ignore[attr-defined]
        self.assertNotIn("Traceback", out.stderr)  # type: ignore[attr-defined]
        return lines[0]

    def exposeOn(self, home: str, port: int, name: str = "web") -> Child:
        """
        C{beam PORT --no-register --name NAME} against the running node of
        C{home}: the tunnel lives as long as this process.
        """
        child = Child(
            self, [str(BIN / "beam"), "--home", home, str(port), "--no-register", "--name", name, "--json"],
            "expose",
        )
        ready = child.readJSON()
        self.assertEqual(ready["event"], "ready")  # type: ignore[attr-defined]
        self.assertIsNone(ready["registered"])  # type: ignore[attr-defined]
        self.assertTrue(ready["connect"].startswith("beam connect beam://"), ready)  # type: ignore[attr-defined]
        return child

    def connectFrom(self, home: str, target: str, *flags: str) -> tuple[Child, int, dict[str, Any]]:
        """
        C{beam connect TARGET --json} against the running node of C{home}.
        """
        child = Child(self, [str(BIN / "beam"), "--home", home, "connect", target, "--json", *flags], "connect")
        ready = child.readJSON(timeout=60)
        self.assertEqual(ready["event"], "ready")  # type: ignore[attr-defined]
        host, port = ready["listen"].rsplit(":", 1)
        self.assertEqual(host, "127.0.0.1")  # type: ignore[attr-defined]
        return child, int(port), ready

    def aliceGrid(self, n: int = GRID) -> tuple[Grid, Child, int, dict[str, Any]]:
        """
        A joined grid of C{n} with the echo service exposed as C{web} on
        node L{OWNER}, which has registered C{alice}.
        """
        t0 = time.monotonic()
        grid = Grid(self, n)
        grid.waitJoined()
        print(f"\n{n} daemons up and joined in {time.monotonic() - t0:.1f} s")
        _svc, svcPort = self.service()
        expose = self.exposeOn(grid.homes[OWNER], svcPort)
        registered = self.beamJSON(grid.homes[OWNER], "register", "alice")
        self.assertEqual(registered["event"], "registered")  # type: ignore[attr-defined]
        self.assertEqual(registered["name"], "alice")  # type: ignore[attr-defined]
        self.assertEqual(registered["peer_id"], grid.peers[OWNER])  # type: ignore[attr-defined]
        self.assertEqual(registered["services"], ["web"])  # type: ignore[attr-defined]
        self.assertEqual(registered["addrs"], [plain(grid.addrs[OWNER])])  # type: ignore[attr-defined]
        self.assertIsNone(registered["error"])  # type: ignore[attr-defined]
        # Every node is among the 20 nearest to the key: most must hold it.
        self.assertGreaterEqual(registered["stored_on"], n // 2, registered)  # type: ignore[attr-defined]
        return grid, expose, svcPort, registered


# -- tests -------------------------------------------------------------------


class RegisterResolveConnectTests(NamesMixin, SynchronousTestCase):
    """
    The issue's scenario: 20 daemons, a name registered on one, resolved
    and connected through from another.
    """

    def test_registerResolveConnect(self) -> None:
        """
        With 20 daemons joined through the first two (each reporting a
        routing table in C{beam network status --json}), C{beam register
        alice} on node 5 stores the record on most of them; from node 17
        C{beam resolve alice --json} finds node 5's peer ID, address and
        service in the DHT, with the lookup's cost; C{beam connect alice}
        and C{beam connect alice/web} both carry an echo to node 5's
        service; C{beam network routes/peers --json} describe real peers
        of the grid.
        """
        grid, _expose, _svcPort, registered = self.aliceGrid()
        everyone = set(grid.peers)

        # Every node answers `beam network status --json` with a routing table.
        statuses = beamRunMany([(h, ["network", "status", "--json"]) for h in grid.homes])
        for i, out in enumerate(statuses):
            self.assertEqual(out.returncode, 0, out.stderr)
            status = json.loads(out.stdout)
            self.assertEqual(status["peer_id"], grid.peers[i])
            self.assertEqual(status["dht_mode"], "server")
            self.assertGreaterEqual(status["routing_table_size"], 1, status)
            self.assertEqual(status["listen_addrs"], [plain(grid.addrs[i])])
        ownerStatus = json.loads(statuses[OWNER].stdout)
        self.assertEqual([n["name"] for n in ownerStatus["names"]], ["alice"])

        resolved = self.beamJSON(grid.homes[CLIENT], "resolve", "alice")
        self.assertEqual(resolved["name"], "alice")
        self.assertEqual(resolved["peer_id"], grid.peers[OWNER])
        self.assertEqual(resolved["addrs"], [plain(grid.addrs[OWNER])])
        self.assertEqual(resolved["services"], ["web"])
        self.assertEqual(resolved["seq"], registered["seq"])
        # Gossip may have brought alice's record to node 17 already (the
        # LAN step is idle: the grid listens on loopback only).
        self.assertIn(resolved["source"], ("dht", "gossip"))
        self.assertEqual(resolved["steps"][-1]["step"], resolved["source"])
        self.assertEqual(resolved["steps"][-1]["outcome"], "hit")
        self.assertEqual(resolved["pin"], "new")
        if resolved["source"] == "dht":
            self.assertGreaterEqual(resolved["queried"], 1)
            self.assertGreaterEqual(resolved["rounds"], 1)
        self.assertGreaterEqual(resolved["elapsed_ms"], 0)
        text = self.beam(grid.homes[CLIENT], "resolve", "alice").stdout
        self.assertIn(f"alice -> {grid.peers[OWNER]}", text)
        # Resolved a moment ago: the cache, or gossip's record again.
        self.assertRegex(text, r"found via (cache|gossip) in [0-9.]+ ms \(")
        self.assertIn("key known", text)

        port = freePort()
        _c1, local, ready = self.connectFrom(grid.homes[CLIENT], "alice", "--port", str(port))
        self.assertEqual(local, port)
        self.assertEqual(ready["peer_id"], grid.peers[OWNER])
        self.assertEqual(echo(local, b"hello alice"), b"hello alice")
        _c2, local2, ready2 = self.connectFrom(grid.homes[CLIENT], "alice/web")
        self.assertEqual(ready2["service"], "web")
        self.assertEqual(echo(local2, b"hello web"), b"hello web")

        routes = self.beamJSON(grid.homes[CLIENT], "network", "routes")
        self.assertEqual(routes["k"], 20)
        inBuckets = [p for b in routes["buckets"] for p in b["peers"]]
        self.assertEqual(routes["size"], len(inBuckets))
        self.assertGreaterEqual(routes["size"], 1)
        for p in inBuckets:
            self.assertIn(p["peer_id"], everyone - {grid.peers[CLIENT]})
            self.assertEqual(p["addrs"], [plain(grid.addrs[grid.node(p["peer_id"])])])
        self.assertEqual(len({b["index"] for b in routes["buckets"]}), len(routes["buckets"]))
        self.assertTrue(all(0 <= b["index"] < 256 for b in routes["buckets"]))

        peers = self.beamJSON(grid.homes[CLIENT], "network", "peers")["peers"]
        connected = {p["peer_id"] for p in peers}
        self.assertIn(grid.peers[OWNER], connected)
        self.assertTrue(connected <= everyone - {grid.peers[CLIENT]}, connected)
        for p in peers:
            # Inbound connections come from the dialler's ephemeral port.
            if p["direction"] == "outbound":
                self.assertEqual(p["remote_addr"], plain(grid.addrs[grid.node(p["peer_id"])]), p)
            self.assertEqual(p["security"], "/noise")
        self.assertNoTracebacks(*grid.daemons)


class OwnerMovesTests(NamesMixin, SynchronousTestCase):
    """
    The owner of a name restarts elsewhere; clients follow its record.
    """

    def laptop(self, grid: Grid) -> str:
        """
        A running node that listens nowhere (C{listen = []} in its
        configuration), so it is a DHT client: it is in no routing table
        and no other node ever dials it.
        """
        home = self.newHome()
        config = Path(home) / "config.toml"
        config.write_text("listen = []\n")
        config.chmod(0o600)
        node = Child(self, [str(BIN / "beam"), "--home", home, "--bootstrap", grid.addrs[0], "daemon", "--json"],
                     "laptop")
        self.assertEqual(node.readJSON(timeout=60)["addrs"], [])
        waitUntil(lambda: (controlGet(home, "/v1/network/status") or {}).get("routing_table_size"), 30,
                  "the laptop's routing table")
        self.assertEqual(controlGet(home, "/v1/network/status")["dht_mode"], "client")
        self.laptopNode = node
        return home

    def test_ownerRestartsOnANewPort(self) -> None:
        """
        Node 5 stops and starts again with the same home on another port
        and registers C{alice} again (a higher sequence number, the new
        address).  The forwards to C{alice} started before, on node 17 and
        on a DHT client that no node ever dials (so it must find node 5
        itself), re-resolve the name when their dials fail and carry echoes
        to the new address; the client's own connection goes to the new
        port; a fresh C{beam resolve alice} gives the new address.
        """
        grid, expose, svcPort, registered = self.aliceGrid()
        laptop = self.laptop(grid)
        forwards = []
        for home in (grid.homes[CLIENT], laptop):
            _c, local, _ = self.connectFrom(home, "alice")
            self.assertEqual(echo(local, b"before"), b"before")
            forwards.append((home, local))

        self.assertIn(grid.daemons[OWNER].signal(signal.SIGTERM), (0, -signal.SIGTERM))
        expose.kill()
        newPort = freePort()
        newAddr = f"/ip4/127.0.0.1/tcp/{newPort}"
        old = grid.addrs[OWNER]
        grid.start(OWNER, newAddr)
        self.assertEqual(plain(grid.addrs[OWNER]), newAddr)
        self.assertNotEqual(plain(old), newAddr)
        self.exposeOn(grid.homes[OWNER], svcPort)
        again = self.beamJSON(grid.homes[OWNER], "register", "alice")
        self.assertEqual(again["addrs"], [newAddr])
        self.assertGreater(again["seq"], registered["seq"])
        self.assertGreaterEqual(again["stored_on"], GRID // 2, again)

        moved = time.monotonic()
        for home, local in forwards:
            waitUntil(lambda port=local: echo(port, b"after", timeout=10) == b"after", 90,
                      "the forward following alice")
            (fwd,) = self.beamJSON(home, "status")["forwards"]
            self.assertEqual((fwd["peer_id"], fwd["state"]), (grid.peers[OWNER], "connected"))
        print(f"\nforwards reconnected {time.monotonic() - moved:.1f} s after the new record")
        (conn,) = [c for c in self.beamJSON(laptop, "status")["connections"] if c["peer_id"] == grid.peers[OWNER]]
        self.assertEqual((conn["direction"], conn["remote_addr"]), ("outbound", newAddr))
        self.assertIn("host unreachable", self.laptopNode.log())

        for home, pin in ((grid.homes[CLIENT], "known"), (laptop, "known")):
            resolved = self.beamJSON(home, "resolve", "alice")
            self.assertEqual(resolved["peer_id"], grid.peers[OWNER])
            self.assertEqual(resolved["addrs"], [newAddr])
            self.assertEqual(resolved["seq"], again["seq"])
            self.assertEqual(resolved["pin"], pin)
        self.assertNoTracebacks(*grid.daemons, self.laptopNode)


class AttackTests(NamesMixin, SynchronousTestCase):
    """
    Records that must not be believed, sent straight to the holders.
    """

    def getAll(self, grid: Grid) -> list[dict[str, Any]]:
        key = dhtKey("alice").hex()
        return kad(self, [{"addr": a, "type": "GET_VALUE", "key": key} for a in grid.addrs])

    def putAll(self, grid: Grid, value: bytes, name: str = "alice") -> list[dict[str, Any]]:
        key = dhtKey(name).hex()
        return kad(self, [{"addr": a, "type": "PUT_VALUE", "key": key, "value": value.hex()} for a in grid.addrs])

    def assertAllRefused(self, results: list[dict[str, Any]], what: str) -> None:
        for r in results:
            self.assertFalse(r["answered"], f"{what} accepted by {r['addr']}")
            self.assertIn("without an answer", r["error"], r)

    def test_forgedAndReplayedRecords(self) -> None:
        """
        Every node refuses (resets the stream on) a C{PUT_VALUE} of: a
        record for C{alice} validly signed by another key (the name is
        taken), node 5's record redirected to another address (its
        signature no longer verifies), and a record naming node 5 signed
        by another key; every node keeps serving node 5's record and
        C{beam resolve alice} still gives node 5.  After node 5
        republishes with a higher sequence number, the old record it
        signed is refused too, and resolving gives the newer one.  The
        same client's PUT of a valid record for a free name is accepted,
        so the refusals are the holders' judgement, not the client's.
        """
        grid, _expose, _svcPort, registered = self.aliceGrid()
        now = time.time()

        held = self.getAll(grid)
        genuine = bytes.fromhex(held[0]["record"])
        record = openRecord(genuine, now, expectedName="alice")
        self.assertEqual((str(record.peer), record.seq), (grid.peers[OWNER], registered["seq"]))
        holders = [r for r in held if r["record"] == genuine.hex()]
        self.assertGreaterEqual(len(holders), GRID // 2, held)

        mallory = Identity.generate()
        elsewhere = [Multiaddr.fromString("/ip4/127.0.0.1/tcp/9")]
        claim = signRecord(mallory, makeRecord(mallory, "alice", elsewhere, ["web"], now=now))
        env = envelope_pb2.Envelope.FromString(genuine)
        payload = names_pb2.NameRecord.FromString(env.payload)
        del payload.addrs[:]
        payload.addrs.append(elsewhere[0].toBytes())
        payload.seq += 1
        redirected = envelope_pb2.Envelope(
            public_key=env.public_key, payload_type=env.payload_type,
            payload=payload.SerializeToString(), signature=env.signature,
        ).SerializeToString()
        wrongKey = envelope(payload.SerializeToString(), mallory)

        for what, value in [("a claim by another key", claim), ("a redirected record", redirected),
                            ("node 5's record signed by another key", wrongKey)]:
            self.assertAllRefused(self.putAll(grid, value), what)
        self.assertEqual([r["record"] for r in self.getAll(grid)], [r["record"] for r in held])
        resolved = self.beamJSON(grid.homes[CLIENT], "resolve", "alice")
        self.assertEqual((resolved["peer_id"], resolved["seq"]), (grid.peers[OWNER], registered["seq"]))
        self.assertEqual(resolved["addrs"], [plain(grid.addrs[OWNER])])

        # The control: the same client, a valid record for a free name.
        free = signRecord(mallory, makeRecord(mallory, "mallory", elsewhere, now=now))
        accepted = self.putAll(grid, free, "mallory")
        self.assertTrue(all(r["answered"] and r["record"] == free.hex() for r in accepted), accepted)
        self.assertEqual(self.beamJSON(grid.homes[CLIENT], "resolve", "mallory")["peer_id"], str(mallory.peerID))

        # Replay: node 5 moves on to a higher seq; its old record is refused.
        newer = self.beamJSON(grid.homes[OWNER], "register", "alice")
        self.assertGreater(newer["seq"], registered["seq"])

        def seqs() -> list[int | None]:
            return [
                openRecord(bytes.fromhex(r["record"]), time.time()).seq if r["record"] else None
                for r in self.getAll(grid)
            ]

        waitUntil(lambda: seqs().count(newer["seq"]) >= len(holders), 30, "the newer record on the holders")
        before = seqs()
        self.assertAllRefused(self.putAll(grid, genuine), "a replayed older record")
        self.assertEqual(seqs(), before)
        self.assertNotIn(registered["seq"], before)
        resolved = self.beamJSON(grid.homes[CLIENT], "resolve", "alice")
        self.assertEqual((resolved["peer_id"], resolved["seq"]), (grid.peers[OWNER], newer["seq"]))
        self.assertNoTracebacks(*grid.daemons)


class NameCLITests(NamesMixin, SynchronousTestCase):
    """
    What the name commands say when they cannot do what was asked.
    """

    def test_errorsAndPins(self) -> None:
        """
        Registering a name another key holds, resolving a name nobody
        holds and using an invalid name each fail with one line and exit
        status 1.  When C{known_names.json} pins C{alice} to another peer,
        C{beam resolve alice} and C{beam connect alice} refuse with the
        key-changed warning; C{--accept-new-key} accepts the new key,
        after which the name resolves as known.  A home with no running
        node resolves through the DHT in the foreground.
        """
        grid, _expose, _svcPort, _registered = self.aliceGrid(SMALL_GRID)
        other, client = grid.homes[2], grid.homes[3]

        line = self.fails(other, "register", "alice")
        self.assertIn("owned by another key", line)
        self.assertIn(grid.peers[OWNER], line)
        self.assertEqual(controlGet(other, "/v1/network/status")["names"], [])

        line = self.fails(client, "resolve", "nosuchname")
        found = re.fullmatch(r"beam: no record for the name 'nosuchname' was found \(asked (\d+) peers\)", line)
        self.assertIsNotNone(found, line)
        self.assertGreaterEqual(int(found.group(1)), 1)  # type: ignore[union-attr]

        for args in (["resolve", "Not_A_Name!"], ["register", "bad_name."], ["connect", "under_score"]):
            self.assertIn("invalid name", self.fails(client, *args))

        self.assertEqual(self.beamJSON(client, "resolve", "alice")["pin"], "new")
        pins = Path(client) / "known_names.json"
        self.assertEqual(json.loads(pins.read_text())["names"], {"alice": grid.peers[OWNER]})
        pins.write_text(json.dumps({"version": 1, "names": {"alice": grid.peers[2]}}))
        changed = f"the key for alice changed from {grid.peers[2]} to {grid.peers[OWNER]}"
        line = self.fails(client, "resolve", "alice")
        self.assertIn(changed, line)
        self.assertIn("--accept-new-key", line)
        self.assertIn(changed, self.fails(client, "connect", "alice"))
        self.assertEqual(json.loads(pins.read_text())["names"], {"alice": grid.peers[2]})

        accepted = self.beamJSON(client, "resolve", "alice", "--accept-new-key")
        self.assertEqual((accepted["peer_id"], accepted["pin"]), (grid.peers[OWNER], "accepted"))
        self.assertEqual(json.loads(pins.read_text())["names"], {"alice": grid.peers[OWNER]})
        self.assertEqual(self.beamJSON(client, "resolve", "alice")["pin"], "known")

        pins.write_text(json.dumps({"version": 1, "names": {"alice": grid.peers[2]}}))
        _c, local, ready = self.connectFrom(client, "alice", "--accept-new-key")
        self.assertEqual(ready["peer_id"], grid.peers[OWNER])
        self.assertEqual(echo(local, b"accepted"), b"accepted")

        # No node running for this home: `beam resolve` joins as a DHT client.
        lone = self.newHome()
        resolved = self.beamJSON(lone, "--bootstrap", grid.addrs[0], "resolve", "alice")
        self.assertEqual((resolved["peer_id"], resolved["source"]), (grid.peers[OWNER], "dht"))
        self.assertFalse((Path(lone) / "control.sock").exists())

    def test_beamPortRegistersItsName(self) -> None:
        """
        C{beam PORT} on a node with DHT peers registers the home's
        memorable name (kept in C{state.json}) and its share line is
        C{beam connect <name>}, which works from another node.
        """
        grid = Grid(self, SMALL_GRID)
        grid.waitJoined()
        _svc, svcPort = self.service()
        home = self.newHome()
        host = Child(
            self,
            [str(BIN / "beam"), "--home", home, "--bootstrap", grid.addrs[0], "--bootstrap", grid.addrs[1],
             str(svcPort), "--json", "--listen", LOOPBACK],
            "host",
        )
        ready = host.readJSON(timeout=60)
        self.assertEqual(ready["event"], "ready")
        registered = ready["registered"]
        name = json.loads((Path(home) / "state.json").read_text())["name"]
        self.assertRegex(name, r"^[a-z]+-[a-z]+-\d{4}$")
        self.assertEqual(registered["name"], name)
        self.assertEqual(registered["peer_id"], ready["peer_id"])
        self.assertEqual(registered["services"], [str(svcPort)])
        self.assertGreater(registered["stored_on"], 1)
        self.assertEqual(ready["connect"], f"beam connect {name}")
        self.assertTrue(ready["connect_share"].startswith("beam connect beam://"), ready)

        command = ready["connect"].split()
        self.assertEqual(command[:2], ["beam", "connect"])
        _c, local, fwd = self.connectFrom(grid.homes[CLIENT % SMALL_GRID], *command[2:])
        self.assertEqual(fwd["peer_id"], ready["peer_id"])
        self.assertEqual(echo(local, b"by name"), b"by name")

    def test_stopWithdrawsTheName(self) -> None:
        """
        C{beam stop alice} on the owner withdraws the name: the owner no
        longer lists it, and resolving it elsewhere soon reports that it
        was withdrawn.
        """
        grid, _expose, _svcPort, _registered = self.aliceGrid(SMALL_GRID)
        client = grid.homes[3]
        self.assertEqual(self.beamJSON(client, "resolve", "alice")["peer_id"], grid.peers[OWNER])

        stopped = self.beamJSON(grid.homes[OWNER], "stop", "alice")
        self.assertEqual((stopped["event"], stopped["kind"], stopped["name"]), ("stopped", "name", "alice"))
        self.assertEqual(controlGet(grid.homes[OWNER], "/v1/network/status")["names"], [])

        def withdrawn() -> str | None:
            out = self.beam(client, "resolve", "alice", ok=False)
            return out.stderr if out.returncode == 1 else None

        line = waitUntil(withdrawn, 30, "alice withdrawn")
        self.assertEqual(line.strip(), "beam: the name 'alice' was withdrawn by its owner")
        self.assertIn("no tunnel, forward or name 'alice'", self.fails(grid.homes[OWNER], "stop", "alice"))


if __name__ == "__main__":
    if sys.argv[1:2] == ["kad"] and len(sys.argv) == 3:
        kadTool(json.loads(sys.argv[2]))
    else:
        sys.exit("usage: python -m beam.test.test_e2e_names kad SPEC_JSON")
