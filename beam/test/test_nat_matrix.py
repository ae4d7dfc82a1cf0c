"""
The issue's proof in the NAT lab (issue 9): real C{beam} processes in
network namespaces behind real Linux NATs (L{beam.testing.netlab}, root
only; the lab refuses clearly and never skips), driven as a user would
drive them (L{beam.testing.labbeam}).

 - L{PairTableTests}: for every pair of host NAT type x client NAT type
   (5 x 5, 15 distinct pairs), C{beam PORT} in one home, C{beam connect
   NAME} in another; an HTTP fetch and 64 MiB with a matching SHA-256
   through the tunnel, the time from C{beam connect} to the first answer,
   and the path the connection ended on.
 - L{RelayFaultTests}: the relay a tunnel runs through dies, and the
   forward comes back through the other relay on the same local port; a
   relay at its limits refuses and the host reserves on the next one.

Each row of the pair table is printed as a JSON line (run with C{pytest
-s} to see it); C{docs/nat-traversal.md}, "Measured: the pair table",
holds a real run.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Optional

from twisted.trial.unittest import SynchronousTestCase

from beam.testing.labbeam import BeamProcess, LabBeam, MiB, patternDigest, waitFor
from beam.testing.netlab import NAT_TYPES, Host, NatLab

#: The download through every tunnel.
SIZE = 64 * MiB
SEED = 9
#: The local port of every forward (each client home is its own namespace).
LOCAL_PORT = 8080
#: The issue's targets.
USABLE_WITHIN = 5.0
BACK_WITHIN = 10.0
#: The pairs that may stay relayed: TCP hole punching cannot get a
#: symmetric NAT through a port-restricted, symmetric or double NAT.
MAY_STAY_RELAYED = {
    frozenset({"symmetric", "portrestricted"}),
    frozenset({"symmetric"}),
    frozenset({"symmetric", "double"}),
}
#: How long a pair's path may take to settle after the download (a hole
#: punch starts as soon as the relayed connection exists).
PATH_SETTLE = 10.0

SHORT = {"none": "none", "fullcone": "full", "portrestricted": "pr", "symmetric": "sym", "double": "dbl"}


def pairs() -> list[tuple[str, str]]:
    """
    The 15 distinct pairs (host type, client type) of the five NAT types.
    """
    return [(h, c) for i, h in enumerate(NAT_TYPES) for c in NAT_TYPES[i:]]


def bestPath(status: dict[str, Any], peer: str) -> tuple[Optional[str], Optional[str]]:
    """
    The best path among the live connections to C{peer} in C{beam status
    --json}: direct, then hole-punched, then relayed (with its relay).
    """
    rank = {"direct": 0, "hole-punched": 1, "relayed": 2}
    found = [(rank.get(c["path"], 3), c["path"], c.get("relay")) for c in status.get("connections", [])
             if c["peer_id"] == peer]
    if not found:
        return None, None
    _, path, relay = min(found)
    return path, relay


class _LabCase(SynchronousTestCase):
    """
    A NAT lab with public relays running C{beam relay}.
    """

    def setUp(self) -> None:
        self.started = time.monotonic()
        self.lab = NatLab()
        self.addCleanup(self.lab.close)
        self.beams = LabBeam(self.lab)
        self.addCleanup(self.beams.close)
        self.relays: list[tuple[Host, BeamProcess, str]] = []

    def tearDown(self) -> None:
        print(f"\n{self.id()}: {time.monotonic() - self.started:.1f} s", file=sys.stderr)

    def startRelays(self, n: int, config: Optional[dict[int, str]] = None) -> list[str]:
        """
        C{n} public hosts running C{beam relay}, each bootstrapping from
        the first; their addresses.  C{config} gives some a C{config.toml}.
        """
        addrs: list[str] = []
        for i in range(n):
            host = self.lab.addPublic(f"relay{i}")
            extra: list[str] = []
            if addrs:
                extra = ["--bootstrap", addrs[0]]
            home = self.beams.newHome(f"relay{i}")
            if config and i in config:
                with open(f"{home}/config.toml", "w") as f:
                    f.write(config[i])
            p = self.beams.beam(host, home, *extra, "relay", "--json", "--listen", "/ip4/0.0.0.0/tcp/4001",
                                label=f"relay{i}")
            ready = p.readJSON(timeout=60)
            self.assertEqual(ready["event"], "ready", ready)
            p.home = home  # type: ignore[attr-defined]
            addr = f"/ip4/{host.addr}/tcp/4001/p2p/{ready['peer_id']}"
            self.relays.append((host, p, addr))
            addrs.append(addr)
        return addrs

    def bootstrapFlags(self) -> list[str]:
        flags: list[str] = []
        for _, _, addr in self.relays:
            flags += ["--bootstrap", addr]
        return flags

    def startHost(self, host: Host, name: str) -> dict[str, Any]:
        """
        The web server and C{beam PORT} for it in C{host}; once the node is
        reachable (public, or holding a relay reservation), C{beam register
        NAME}.  What happened, with the seconds it took.
        """
        web = self.beams.webServer(host, SIZE, SEED)
        home = self.beams.newHome(f"{host.name}-host")
        t0 = time.monotonic()
        p = self.beams.beam(host, home, *self.bootstrapFlags(), str(web), "--json", "--listen",
                            "/ip4/0.0.0.0/tcp/4001", label=f"{host.name}-expose")
        ready = p.readJSON(timeout=60)
        self.assertEqual(ready["event"], "ready", ready)

        def reachable() -> Optional[dict[str, Any]]:
            status = self.beams.json(host, home, "status")
            nat = status.get("nat") or {}
            if status.get("reachability") == "public" or nat.get("reservations"):
                return status
            return None

        status = waitFor(reachable, 90, f"{host.name} ({host.nat}) public or holding a reservation", step=0.5)
        reachableAfter = time.monotonic() - t0
        registered = self.beams.json(host, home, "register", name)
        self.assertEqual(registered["event"], "registered", registered)
        self.assertGreater(registered["stored_on"], 0, registered)
        return {"process": p, "home": home, "peer": ready["peer_id"], "name": name,
                "reachable_after": round(reachableAfter, 1), "reachability": status.get("reachability"),
                "reservations": len((status.get("nat") or {}).get("reservations") or []),
                "addrs": registered["addrs"]}

    def connect(self, client: Host, name: str, deadline: float = 30) -> dict[str, Any]:
        """
        C{beam connect NAME --port LOCAL_PORT --json} from a new home in
        C{client}, with the fetcher polling the local port from just
        before: when the tunnel first answered, the 64 MiB download, and
        the path the connection to the host ended on.
        """
        home = self.beams.newHome(f"{client.name}-client")
        fetcher = self.beams.fetcher(client, LOCAL_PORT, SIZE, deadline)
        # The fetcher polls from its start; give its interpreter a moment
        # to come up so its first poll is not what we time.
        time.sleep(0.5)
        t0 = time.monotonic()
        p = self.beams.beam(client, home, *self.bootstrapFlags(), "connect", name, "--port", str(LOCAL_PORT),
                            "--json", label=f"{client.name}-connect-{name}")
        row: dict[str, Any] = {"connected": False, "usable_s": None, "path": None, "relay": None,
                               "mib_s": None, "sha256_ok": False, "process": p, "home": home, "error": None}
        try:
            usable = fetcher.readJSON(timeout=deadline + 15)
        except AssertionError as e:
            row["error"] = str(e)
            return row
        if usable.get("event") != "usable":
            row["error"] = f"no answer through the tunnel within {deadline:g} s; beam connect log:\n{p.tail()}"
            return row
        row["connected"] = True
        row["usable_s"] = round(usable["at"] - t0, 2)
        fetched = fetcher.readJSON(timeout=180)
        row["sha256_ok"] = fetched["error"] is None and fetched["sha256"] == patternDigest(SIZE, SEED)
        row["fetch_error"] = fetched["error"]
        row["mib_s"] = round(fetched["bytes"] / MiB / max(fetched["seconds"], 1e-6), 1)
        return row

    def pathTo(self, client: Host, home: str, peer: str, settle: float) -> tuple[Optional[str], Optional[str]]:
        """
        The path to C{peer} in the client's C{beam status --json}, waiting
        up to C{settle} seconds for a relayed one to turn direct.
        """
        end = time.monotonic() + settle
        while True:
            path, relay = bestPath(self.beams.json(client, home, "status"), peer)
            if path in ("direct", "hole-punched") or time.monotonic() > end:
                return path, relay
            time.sleep(0.5)


class PairTableTests(_LabCase):
    """
    The 15 pairs.
    """

    def test_pairTable(self) -> None:
        """
        Two public relays (C{beam relay}); a host of each NAT type runs the
        web server, C{beam PORT} for it and, once reachable, C{beam
        register host-TYPE}; for each of the 15 pairs a new home in a
        client of the other type runs C{beam connect host-TYPE}.  Every
        pair connects, answers within 5 s of C{beam connect}, carries 64
        MiB with a matching SHA-256, and ends on a direct or hole-punched
        path unless it is one of the three pairs TCP cannot punch.
        """
        self.startRelays(2)
        hosts: dict[str, dict[str, Any]] = {}
        clients: dict[str, Host] = {}
        for nat in NAT_TYPES:
            clients[nat] = self.lab.add(f"c{SHORT[nat]}", nat)
        for nat in NAT_TYPES:
            host = self.lab.add(f"h{SHORT[nat]}", nat)
            info = self.startHost(host, f"host-{SHORT[nat]}")
            info["host"] = host
            hosts[nat] = info
            print(json.dumps({"host": nat, **{k: info[k] for k in
                                              ("reachable_after", "reachability", "reservations", "addrs")}}))

        rows = []
        for hostNat, clientNat in pairs():
            info = hosts[hostNat]
            client = clients[clientNat]
            row = self.connect(client, info["name"])
            if row["connected"]:
                row["path"], row["relay"] = self.pathTo(client, row["home"], info["peer"], PATH_SETTLE)
            process = row.pop("process")
            row.pop("home")
            if not row["connected"] or not row["sha256_ok"]:
                row["evidence"] = {"connect": process.tail(1500), "host": info["process"].tail(1500)}
            process.kill()
            row = {"host": hostNat, "client": clientNat, **row}
            print(json.dumps(row))
            rows.append(row)

        problems = []
        for row in rows:
            pair = f"{row['host']} host x {row['client']} client"
            if not row["connected"]:
                problems.append(f"{pair}: did not connect: {row['error']}")
                continue
            if not row["sha256_ok"]:
                problems.append(f"{pair}: 64 MiB arrived wrong: {row.get('fetch_error')}")
            if row["usable_s"] > USABLE_WITHIN:
                problems.append(f"{pair}: usable after {row['usable_s']} s (target {USABLE_WITHIN:g} s)")
            if row["path"] not in ("direct", "hole-punched") and \
                    frozenset({row["host"], row["client"]}) not in MAY_STAY_RELAYED:
                problems.append(f"{pair}: ended {row['path']} (via {row['relay']}), "
                                f"where TCP hole punching is possible")
        self.assertEqual(problems, [], "\n" + "\n".join(problems))


class RelayFaultTests(_LabCase):
    """
    What a tunnel through a relay survives.
    """

    def test_relayDiesMidTunnel(self) -> None:
        """
        A symmetric host (holding reservations on both relays) and a
        port-restricted client (a pair that stays relayed): the relay the
        tunnel runs through is killed mid-tunnel, and within 10 s the same
        local port answers again, through the other relay or directly.
        """
        self.startRelays(2)
        host = self.lab.add("hsym", "symmetric")
        client = self.lab.add("cpr", "portrestricted")
        info = self.startHost(host, "host-sym")
        waitFor(lambda: len((self.beams.json(host, info["home"], "status").get("nat") or {})
                            .get("reservations") or []) == 2,
                60, "reservations on both relays")
        self.beams.json(host, info["home"], "register", info["name"])
        row = self.connect(client, info["name"])
        self.assertTrue(row["connected"], row)
        self.assertTrue(row["sha256_ok"], row)
        path, relay = bestPath(self.beams.json(client, row["home"], "status"), info["peer"])
        self.assertEqual(path, "relayed")
        dying = [(h, p) for h, p, a in self.relays if a.endswith(f"/p2p/{relay}")]
        self.assertEqual(len(dying), 1, (relay, [a for _, _, a in self.relays]))
        fetcher = self.beams.fetcher(client, LOCAL_PORT, 1 * MiB, 30)
        self.assertEqual(fetcher.readJSON(timeout=30)["event"], "usable")
        fetcher.kill()
        killed = time.monotonic()
        dying[0][1].kill()
        fetcher = self.beams.fetcher(client, LOCAL_PORT, 1 * MiB, 30)
        back = fetcher.readJSON(timeout=45)
        connect = row["process"]
        self.assertEqual(back["event"], "usable", f"not back; beam connect log:\n{connect.tail()}\n"
                                                   f"host log:\n{info['process'].tail()}")
        after = back["at"] - killed
        newPath, newRelay = bestPath(self.beams.json(client, row["home"], "status"), info["peer"])
        print(json.dumps({"fault": "relay died", "back_after_s": round(after, 2), "path": newPath,
                          "relay": newRelay}))
        self.assertTrue(connect.alive(), connect.tail())
        self.assertNotEqual(newRelay, relay)
        self.assertLessEqual(after, BACK_WITHIN, f"back after {after:.1f} s; beam connect log:\n{connect.tail()}")

    def test_relayAtItsLimits(self) -> None:
        """
        The first relay takes one reservation; a second private host is
        refused there with the spec's status and reserves on the other.
        """
        self.startRelays(2, config={0: "[relay]\nmode = \"open\"\nmax_reservations = 1\n"})
        first, second = self.relays[0][2], self.relays[1][2]
        a = self.lab.add("hpr", "portrestricted")
        infoA = self.startHost(a, "host-a")
        waitFor(lambda: {r["relay"] for r in (self.beams.json(a, infoA["home"], "status").get("nat") or {})
                         .get("reservations") or []} == {first.rsplit("/", 1)[1], second.rsplit("/", 1)[1]},
                60, "host A on both relays")
        b = self.lab.add("hdbl", "double")
        infoB = self.startHost(b, "host-b")
        refusal = waitFor(lambda: infoB["process"].grep("could not reserve on relay"), 60,
                          "host B refused by the full relay")
        print(json.dumps({"fault": "relay full", "log": refusal}))
        self.assertIn(first.rsplit("/", 1)[1], refusal[0])
        self.assertTrue("RESERVATION_REFUSED" in refusal[0] or "RESOURCE_LIMIT_EXCEEDED" in refusal[0], refusal)
        reservations = (self.beams.json(b, infoB["home"], "status").get("nat") or {}).get("reservations") or []
        self.assertEqual([r["relay"] for r in reservations], [second.rsplit("/", 1)[1]])
