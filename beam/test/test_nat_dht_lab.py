"""
The DHT in the NAT lab (issue 9): real C{beam} processes behind real Linux
NATs (L{beam.testing.netlab}; root only, never skipped).  Nodes that
cannot be dialled from outside must stay DHT clients, so routing tables
hold only peers and addresses anyone can reach, and lookups never wait on
a peer that cannot answer.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from beam.test.test_nat_matrix import SHORT, _LabCase
from beam.testing.netlab import Host

#: Addresses no one outside a home can dial.
UNREACHABLE = [ipaddress.ip_network(n) for n in ("198.51.100.0/24", "100.64.0.0/10", "127.0.0.0/8")]


def unreachable(addr: str) -> bool:
    """
    Whether the multiaddr C{addr} is a home's, a carrier's or loopback.
    """
    parts = addr.split("/")
    if len(parts) < 3 or parts[1] != "ip4":
        return False
    ip = ipaddress.ip_address(parts[2])
    return any(ip in net for net in UNREACHABLE)


class DHTLabTests(_LabCase):
    """
    Two relays, hosts of four NAT types, clients behind NATs.
    """

    def test_privateNodesStayClients(self) -> None:
        """
        After hosts of each NAT type ran C{beam PORT} and one-shot C{beam
        connect} nodes ran behind port-restricted, symmetric and double
        NATs: every node that is not public is a DHT client; no routing
        table (relays' and hosts') lists such a node, or a home's,
        carrier's or loopback address; a lookup from a node behind a
        symmetric NAT finds the name in about the time a public node's
        lookup takes.
        """
        self.startRelays(2)
        hosts: dict[str, dict[str, Any]] = {}
        clients: dict[str, Host] = {}
        for nat in ("none", "portrestricted", "symmetric", "double"):
            host = self.lab.add(f"h{SHORT[nat]}", nat)
            info = self.startHost(host, f"host-{SHORT[nat]}")
            info["host"] = host
            hosts[nat] = info
        unreachablePeers = {info["peer"]: f"{nat} host" for nat, info in hosts.items()
                            if info["reachability"] != "public"}
        for nat in ("none", "portrestricted", "symmetric", "double"):
            client = clients[nat] = self.lab.add(f"c{SHORT[nat]}", nat)
            row = self.connect(client, "host-none")
            self.assertTrue(row["connected"], row)
            if nat != "none":
                unreachablePeers[self.beams.json(client, row["home"], "id")["peer_id"]] = f"{nat} client"
            row["process"].kill()

        nodes = [(h, p.home, h.name) for h, p, _ in self.relays]  # type: ignore[attr-defined]
        nodes += [(info["host"], info["home"], info["host"].name) for info in hosts.values()]
        bad = []
        sizes: dict[str, int] = {}
        modes: dict[str, tuple[str, str]] = {}
        for host, home, label in nodes:
            status = self.beams.json(host, home, "network", "status")
            modes[label] = (status["reachability"], status["dht_mode"])
            if status["reachability"] != "public" and status["dht_mode"] != "client":
                bad.append(f"{label}: reachability {status['reachability']} but a DHT {status['dht_mode']}")
            routes = self.beams.json(host, home, "network", "routes")
            listed = [peer for bucket in routes["buckets"] for peer in bucket["peers"]]
            self.assertEqual(len(listed), routes["size"], routes)
            sizes[label] = routes["size"]
            for peer in listed:
                wrong = [a for a in peer["addrs"] if unreachable(a)]
                if wrong:
                    bad.append(f"{label}: {peer['peer_id']} listed with unreachable {wrong}")
                if peer["peer_id"] in unreachablePeers:
                    bad.append(f"{label}: {unreachablePeers[peer['peer_id']]} {peer['peer_id']} in the routing "
                               f"table with {peer['addrs']} (it cannot be dialled: it should be a DHT client)")
        lookups = {}
        for nat in ("none", "symmetric"):
            home = self.beams.newHome(f"resolve-{SHORT[nat]}")
            lookups[nat] = self.beams.json(clients[nat], home, *self.bootstrapFlags(), "resolve", "host-pr")
        print(json.dumps({"routing_table_sizes": sizes, "reachability_and_dht_mode": modes,
                          "lookups": {n: {k: r.get(k) for k in ("elapsed_ms", "queried", "source")}
                                      for n, r in lookups.items()}}))
        self.assertEqual(bad, [], "\n" + "\n".join(bad))
        # The relays know each other and the public host: the check above
        # looked at real tables.
        for _, _, label in nodes[:2]:
            self.assertGreaterEqual(sizes[label], 2, sizes)
        for resolved in lookups.values():
            self.assertEqual(resolved["peer_id"], hosts["portrestricted"]["peer"], resolved)
        # As fast as a public node's lookup: no waiting on peers that cannot
        # answer (that cost 5-12 s when private nodes served the DHT).
        self.assertLessEqual(lookups["symmetric"]["elapsed_ms"], 3 * lookups["none"]["elapsed_ms"] + 1000, lookups)
