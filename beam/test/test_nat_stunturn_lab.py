"""
STUN and TURN in the NAT lab (issue 9): real programs in network
namespaces behind real Linux NATs (L{beam.testing.netlab}, root only; the
lab refuses clearly and never skips), against our own STUN server and
Debian's C{coturn}.

 - L{StunClassificationTests}: C{python -m beam.p2p.nat.stunclient} in a
   home of every NAT type, against our L{StunServer
   <beam.p2p.nat.stunserver.StunServer>} and against coturn, each with
   RFC 5780's alternate address on a second public IP: mapping,
   filtering and the strategy they choose are what the lab's routers do.
 - L{DaemonStatusTests}: a C{beam daemon} with C{stun_servers} in its
   config shows that classification in C{beam network status}.
 - L{TurnTests}: C{beam PORT} behind a symmetric NAT with C{turn_servers}
   allocates a TCP relay (RFC 6062) on coturn, hands out the relayed
   address, and a client in another home fetches through the tunnel over
   TURN; with coturn enforcing permissions (the RFC's default) a stranger
   cannot get in by the relayed address alone, but with a circuit relay
   for the first contact it does, and the hole punch that follows ends
   on a connection through coturn (the host permits the stranger's IP
   once DCUtR tells it), as C{beam.p2p.nat.turntransport} documents.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any, Optional

from twisted.trial.unittest import SynchronousTestCase

from beam.testing.labbeam import BeamProcess, LabBeam, MiB, addPublicAddress, patternDigest, waitFor
from beam.testing.netlab import NAT_TYPES, Host, NatLab
from beam.testing.sysdeps import ensureCommands

#: The STUN/TURN port (RFC 8489) and RFC 5780's alternate port.
STUN_PORT = 3478
ALT_PORT = 3479
#: The lab loses nothing, so two transmissions 200 ms apart and 800 ms
#: of waiting tell an unanswered request quickly.
FAST = ["--rc", "2", "--rto", "0.2", "--rm", "4"]
#: What the lab's routers do, as RFC 5780 discovery sees it: (mapping,
#: filtering, strategy).
EXPECTED = {
    "none": ("none", "endpoint-independent", "direct"),
    "fullcone": ("endpoint-independent", "endpoint-independent", "direct"),
    "portrestricted": ("endpoint-independent", "address-and-port-dependent", "punch"),
    "symmetric": ("address-and-port-dependent", "address-and-port-dependent", "relay"),
    # Two masquerades, each keeping the port: the mapping stays stable.
    "double": ("endpoint-independent", "address-and-port-dependent", "punch"),
}
SHORT = {"none": "none", "fullcone": "full", "portrestricted": "pr", "symmetric": "sym", "double": "dbl"}
#: The download through the TURN tunnel.
SIZE = 1 * MiB
SEED = 9
LOCAL_PORT = 8080
TURN_USER, TURN_PASSWORD = "alice", "lab-secret"


def classify(host: Host, server: str) -> subprocess.Popen[str]:
    """
    Start the STUN client in C{host} against C{server} (C{IP:PORT}),
    printing its classification as JSON.
    """
    return host.run([sys.executable, "-m", "beam.p2p.nat.stunclient", server, "--json", *FAST],
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def answer(process: subprocess.Popen[str], what: str) -> dict[str, Any]:
    """
    What a L{classify} process printed; fails with its stderr.
    """
    out, err = process.communicate(timeout=30)
    if process.returncode != 0:
        raise AssertionError(f"{what}: the STUN client failed ({process.returncode}): {err}")
    value = json.loads(out)
    assert isinstance(value, dict), out
    return value


class _LabCase(SynchronousTestCase):
    """
    A NAT lab, its C{beam} processes, and STUN/TURN servers on public
    hosts with two addresses.
    """

    def setUp(self) -> None:
        self.started = time.monotonic()
        ensureCommands({"turnserver": "coturn"})
        self.lab = NatLab()
        self.addCleanup(self.lab.close)
        self.beams = LabBeam(self.lab)
        self.addCleanup(self.beams.close)

    def tearDown(self) -> None:
        print(f"\n{self.id()}: {time.monotonic() - self.started:.1f} s", file=sys.stderr)

    def stunServer(self, name: str) -> Host:
        """
        A public host C{name} with a second address running our STUN
        server on both (RFC 5780: other IP at L{ALT_PORT}).
        """
        host = self.lab.addPublic(name)
        alternate = addPublicAddress(host)
        p = self.beams.start(host, [sys.executable, "-m", "beam.p2p.nat.stunserver", f"{host.addr}:{STUN_PORT}",
                                    "--alternate", f"{alternate}:{ALT_PORT}"], f"{name}-stunserver")
        line = p.readLine(timeout=30)
        self.assertIn(f"other address ('{alternate}', {ALT_PORT})", line)
        return host

    def coturn(self, name: str, *options: str, alternate: bool = True) -> tuple[Host, BeamProcess, str]:
        """
        A public host C{name} running coturn on L{STUN_PORT} (and, with
        C{alternate}, on a second address at L{ALT_PORT}, so it answers
        RFC 5780's CHANGE-REQUEST), with C{options} in its configuration;
        the host, the process and coturn's log file.  Returns once coturn
        answers a binding request.
        """
        host = self.lab.addPublic(name)
        work = self.beams.newHome(name)
        lines = [f"listening-ip={host.addr}", f"listening-port={STUN_PORT}", f"alt-listening-port={ALT_PORT}",
                 f"relay-ip={host.addr}", "no-tls", "no-dtls", "no-cli", "simple-log",
                 f"log-file={work}/turn.log", f"pidfile={work}/turn.pid", f"userdb={work}/turndb", *options, ""]
        if alternate:
            lines.insert(1, f"listening-ip={addPublicAddress(host)}")
        config = os.path.join(work, "turnserver.conf")
        with open(config, "w") as f:
            f.write("\n".join(lines))
        p = self.beams.start(host, ["turnserver", "-c", config, "--no-stdout-log"], f"{name}-coturn")
        server = f"{host.addr}:{STUN_PORT}"
        def answers() -> bool:
            process = classify(host, server)
            process.communicate(timeout=30)
            return process.returncode == 0

        waitFor(answers, 30, f"coturn on {name} answering STUN")
        return host, p, os.path.join(work, "turn.log")


class StunClassificationTests(_LabCase):
    """
    The STUN client's classification behind each of the lab's NATs.
    """

    def test_everyNatType(self) -> None:
        """
        In a home of every NAT type the STUN client, asking our server and
        then coturn (each with an alternate address on a second public
        IP), finds the mapping and filtering the home router really
        does, the strategy that follows (none and full cone: direct;
        port-restricted and double: punch; symmetric: relay), and the
        home's public address.
        """
        ours = self.stunServer("stun")
        theirs, _, _ = self.coturn("coturn", "stun-only", "no-auth")
        hosts = {nat: self.lab.add(f"h{SHORT[nat]}", nat) for nat in NAT_TYPES}
        servers = {"beam": ours, "coturn": theirs}
        # Each home against each server, all at once (each run is on its
        # own socket, so the NATs keep them apart).
        running = {(nat, kind): classify(host, f"{server.addr}:{STUN_PORT}")
                   for nat, host in hosts.items() for kind, server in servers.items()}
        problems = []
        for (nat, kind), process in running.items():
            result = answer(process, f"{nat} home against {kind}")
            print(json.dumps({"nat": nat, "server": kind, **result}))
            got = (result["mapping"], result["filtering"], result["strategy"])
            if got != EXPECTED[nat]:
                problems.append(f"{nat} home against {kind}: {got}, expected {EXPECTED[nat]}")
            if result["publicAddr"][0] != hosts[nat].reachableAddr:
                problems.append(f"{nat} home against {kind}: public address {result['publicAddr']}, "
                                f"expected {hosts[nat].reachableAddr}")
            if result["server"] != [servers[kind].addr, STUN_PORT]:
                problems.append(f"{nat} home against {kind}: classified with {result['server']}")
        self.assertEqual(problems, [], "\n" + "\n".join(problems))


class DaemonStatusTests(_LabCase):
    """
    What the daemon learned from C{stun_servers}, in C{beam network
    status}.
    """

    def test_networkStatus(self) -> None:
        """
        A C{beam daemon} with C{stun_servers} naming our lab STUN server,
        in a full-cone home and in a port-restricted one: C{beam network
        status --json} shows the classification of each home's NAT under
        C{nat.nat} (with the public address STUN saw), and the text
        output says it in one line.
        """
        stun = self.stunServer("stun")
        homes = {}
        for nat in ("fullcone", "portrestricted"):
            host = self.lab.add(f"h{SHORT[nat]}", nat)
            home = self.beams.newHome(host.name)
            with open(f"{home}/config.toml", "w") as f:
                f.write(f'stun_servers = ["{stun.addr}:{STUN_PORT}"]\n')
            self.beams.beam(host, home, "daemon", "--listen", "/ip4/0.0.0.0/tcp/4001", label=f"{host.name}-daemon")
            homes[nat] = (host, home)

        for nat, (host, home) in homes.items():
            def classified(host: Host = host, home: str = home) -> Optional[dict[str, Any]]:
                try:
                    status = self.beams.json(host, home, "network", "status")
                except (AssertionError, ValueError):
                    return None  # the daemon is still starting
                section = status.get("nat") or {}
                return status if section.get("nat") or section.get("stun_error") else None

            status = waitFor(classified, 60, f"STUN classification in the {nat} home's status", step=0.5)
            behaviour = status["nat"]["nat"]
            print(json.dumps({"nat": nat, "status": behaviour}))
            self.assertIsNone(status["nat"]["stun_error"])
            self.assertEqual((behaviour["mapping"], behaviour["filtering"], behaviour["strategy"]), EXPECTED[nat])
            self.assertEqual(behaviour["publicAddr"][0], host.reachableAddr)
            self.assertEqual(behaviour["server"], [stun.addr, STUN_PORT])
            text = self.beams.run(host, home, "network", "status")
            self.assertEqual(text.returncode, 0, text.stderr)
            mapping, filtering, strategy = EXPECTED[nat]
            self.assertIn(f"NAT: {mapping} mapping, {filtering} filtering -> {strategy} "
                          f"(public {host.reachableAddr}:", text.stdout)


class TurnTests(_LabCase):
    """
    A TURN relay (RFC 8656, TCP allocations per RFC 6062) on coturn as a
    node's way in from behind a symmetric NAT.
    """

    def exposeBehindTurn(self, host: Host, coturn: Host, *flags: str) -> dict[str, Any]:
        """
        The lab web server and C{beam PORT} in C{host}, with
        C{stun_servers} and C{turn_servers} naming C{coturn} (and global
        C{flags}, such as C{--bootstrap}); started, not waited for.
        """
        web = self.beams.webServer(host, SIZE, SEED)
        home = self.beams.newHome(host.name)
        with open(f"{home}/config.toml", "w") as f:
            f.write(f'stun_servers = ["{coturn.addr}:{STUN_PORT}"]\n'
                    f'turn_servers = [{{url = "turn:{coturn.addr}:{STUN_PORT}", username = "{TURN_USER}", '
                    f'password = "{TURN_PASSWORD}"}}]\n')
        p = self.beams.beam(host, home, *flags, str(web), "--json", "--no-register", "--listen", "/ip4/0.0.0.0/tcp/4001",
                            label=f"{host.name}-expose")
        ready = p.readJSON(timeout=60)
        self.assertEqual(ready["event"], "ready", ready)
        return {"host": host, "home": home, "process": p, "peer": ready["peer_id"], "service": ready["name"],
                "coturn": coturn}

    def allocated(self, info: dict[str, Any], timeout: float) -> dict[str, Any]:
        """
        C{beam network status --json} of C{info}'s node once it holds a
        TURN allocation.
        """
        host, home = info["host"], info["home"]

        def check() -> Optional[dict[str, Any]]:
            status = self.beams.json(host, home, "network", "status")
            turn = (status.get("nat") or {}).get("turn") or {}
            return status if turn.get("state") == "allocated" else None

        return waitFor(check, timeout, f"a TURN allocation for {host.name}; log:\n{info['process'].tail()}", step=1)

    def shareThroughTurn(self, info: dict[str, Any], relayed: str) -> str:
        """
        The share address of C{info}'s tunnel in C{beam status --json},
        checked to carry the relayed address.
        """
        status = self.beams.json(info["host"], info["home"], "status")
        self.assertIn(f"{relayed}/p2p/{info['peer']}", status["addrs"])
        self.assertIn(relayed, status["relay_addrs"])
        shares = [t["share"] for t in status["tunnels"] if t["name"] == info["service"]]
        self.assertEqual(len(shares), 1, status["tunnels"])
        ip, port = relayed.split("/")[2], relayed.split("/")[4]
        self.assertIn(f"{ip}:{port}", shares[0])
        share = shares[0]
        assert isinstance(share, str)
        return share

    def connect(self, client: Host, target: str, deadline: float) -> tuple[BeamProcess, dict[str, Any], str]:
        """
        C{beam connect TARGET --port LOCAL_PORT} from a new home in
        C{client} with the fetcher polling the local port; the connect
        process, the fetcher's first event, and the client's home.
        """
        home = self.beams.newHome(f"{client.name}-client")
        fetcher = self.beams.fetcher(client, LOCAL_PORT, SIZE, deadline)
        p = self.beams.beam(client, home, "connect", target, "--port", str(LOCAL_PORT), "--json",
                            label=f"{client.name}-connect")
        first = fetcher.readJSON(timeout=deadline + 15)
        if first.get("event") == "usable":
            fetched = fetcher.readJSON(timeout=60)
            first["sha256_ok"] = fetched["error"] is None and fetched["sha256"] == patternDigest(SIZE, SEED)
            first["fetch_error"] = fetched["error"]
        return p, first, home

    def test_tunnelThroughTurn(self) -> None:
        """
        Two coturns on public hosts, both with long-term credentials and
        TCP relays: one lets any peer reach an allocation (C{server-relay},
        what a deployment that wants strangers to dial in must configure,
        as C{turntransport} says), the other enforces RFC 6062's
        permissions.  Behind a symmetric NAT, C{beam PORT} with
        C{turn_servers} naming each: both statuses show the STUN strategy
        "relay" and a TURN allocation on coturn's public address, which
        is among the node's addresses and in the tunnel's share address.
        A client in a port-restricted home connects with that share
        address to the first and fetches 1 MiB through the tunnel (the
        host sees it arrive over the TURN transport from the client's
        public address); the second lets no stranger in, and coturn logs
        why.
        """
        credentials = ["lt-cred-mech", f"user={TURN_USER}:{TURN_PASSWORD}", "realm=beam.test",
                       "min-port=49152", "max-port=65535"]
        openTurn, _, _ = self.coturn("turnopen", *credentials, "server-relay")
        strictTurn, _, strictLog = self.coturn("turnstrict", *credentials)
        hostOpen = self.lab.add("hsym", "symmetric")
        hostStrict = self.lab.add("hsym2", "symmetric")
        clientOpen = self.lab.add("cpr", "portrestricted")
        clientStrict = self.lab.add("cdbl", "double")
        infos = [self.exposeBehindTurn(hostOpen, openTurn), self.exposeBehindTurn(hostStrict, strictTurn)]
        t0 = time.monotonic()
        shares = []
        for info in infos:
            status = self.allocated(info, 90)
            nat = status["nat"]
            turn = nat["turn"]
            print(json.dumps({"host": info["host"].name, "allocated_after_s": round(time.monotonic() - t0, 1),
                              "nat": nat["nat"], "turn": turn}))
            self.assertEqual(nat["nat"]["strategy"], "relay", nat)
            self.assertEqual(turn["server"], f"turn:{info['coturn'].addr}:{STUN_PORT}")
            self.assertIsNone(turn["last_error"])
            relayed = turn["relayed_addr"]
            self.assertTrue(relayed.startswith(f"/ip4/{info['coturn'].addr}/tcp/"), relayed)
            self.assertNotIn(TURN_PASSWORD, json.dumps(status))
            shares.append(self.shareThroughTurn(info, relayed))

        # Through the TURN server that lets strangers in.
        process, first, _ = self.connect(clientOpen, shares[0], deadline=20)
        print(json.dumps({"client": clientOpen.name, "share": shares[0], **first}))
        self.assertEqual(first["event"], "usable",
                         f"beam connect log:\n{process.tail()}\nhost log:\n{infos[0]['process'].tail()}")
        self.assertTrue(first["sha256_ok"], first)
        peers = self.beams.json(hostOpen, infos[0]["home"], "network", "peers")["peers"]
        viaTurn = [p for p in peers if p["transport"] == "turn"]
        self.assertEqual(len(viaTurn), 1, peers)
        self.assertEqual(viaTurn[0]["direction"], "inbound")
        self.assertTrue(viaTurn[0]["remote_addr"].startswith(f"/ip4/{clientOpen.reachableAddr}/tcp/"), viaTurn)

        # A stranger cannot get in where permissions are enforced.
        process, first, _ = self.connect(clientStrict, shares[1], deadline=8)
        print(json.dumps({"client": clientStrict.name, "share": shares[1], **first}))
        self.assertEqual(first["event"], "unusable", first)
        refusals = waitFor(lambda: [line for line in open(strictLog, errors="replace")
                                    if "peer has no permission to connect" in line],
                           10, "coturn refusing the stranger")
        print(json.dumps({"coturn": refusals[-1].strip()}))
        peers = self.beams.json(hostStrict, infos[1]["home"], "network", "peers")["peers"]
        self.assertEqual([p for p in peers if p["transport"] == "turn"], [])

    def test_strangerThroughCircuitThenTurn(self) -> None:
        """
        coturn enforcing RFC 6062's permissions, and a public circuit relay
        (C{beam relay}).  Behind a symmetric NAT, C{beam PORT} with
        C{turn_servers} and the relay as bootstrap peer holds both a TURN
        allocation and a relay reservation.  A stranger in a double-NAT
        home (endpoint-independent mapping) runs C{beam connect} with the
        share address: its first contact goes through the circuit relay
        (the TURN address alone would be refused) and the 1 MiB fetch
        works; the hole punch that follows tells the host the stranger's
        public address, the host permits it on its allocation, and the
        stranger's punch dial to the relayed address (offered in the
        host's DCUtR CONNECT) gets through coturn: the host then holds a
        connection to the stranger over the TURN transport, from the
        stranger's public address.
        """
        credentials = ["lt-cred-mech", f"user={TURN_USER}:{TURN_PASSWORD}", "realm=beam.test",
                       "min-port=49152", "max-port=65535"]
        strictTurn, _, strictLog = self.coturn("turnstrict", *credentials)
        _, relayAddr = self.beams.relay(self.lab.addPublic("relay"))
        host = self.lab.add("hsym", "symmetric")
        client = self.lab.add("cdbl", "double")
        info = self.exposeBehindTurn(host, strictTurn, "--bootstrap", relayAddr)
        t0 = time.monotonic()
        relayed = self.allocated(info, 90)["nat"]["turn"]["relayed_addr"]

        def reserved() -> Optional[dict[str, Any]]:
            status = self.beams.json(host, info["home"], "status")
            return status if (status.get("nat") or {}).get("reservations") else None

        waitFor(reserved, 90, f"a relay reservation for {host.name}; log:\n{info['process'].tail()}", step=1)
        share = self.shareThroughTurn(info, relayed)
        print(json.dumps({"host": host.name, "ready_after_s": round(time.monotonic() - t0, 1), "relayed": relayed,
                          "share": share}))

        process, first, _ = self.connect(client, share, deadline=30)
        print(json.dumps({"client": client.name, **first}))
        self.assertEqual(first["event"], "usable",
                         f"beam connect log:\n{process.tail()}\nhost log:\n{info['process'].tail()}")
        self.assertTrue(first["sha256_ok"], first)

        def viaTurn() -> Optional[list[dict[str, Any]]]:
            peers = self.beams.json(host, info["home"], "network", "peers")["peers"]
            found = [p for p in peers if p["transport"] == "turn"]
            return found or None

        try:
            found = waitFor(viaTurn, 30, "a connection over TURN after the punch", step=1)
        except AssertionError as e:
            with open(strictLog, errors="replace") as f:
                coturnLog = f.read()[-3000:]
            raise AssertionError(f"{e}\nhost log:\n{info['process'].tail()}\nconnect log:\n{process.tail()}"
                                 f"\ncoturn log:\n{coturnLog}") from e
        print(json.dumps({"via_turn": found}))
        self.assertEqual(len(found), 1, found)
        self.assertTrue(found[0]["remote_addr"].startswith(f"/ip4/{client.reachableAddr}/tcp/"), found)
