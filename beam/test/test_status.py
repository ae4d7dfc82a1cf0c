"""
Status values: one rendering to JSON (L{beam.controlapi.asJSON}), read
back where the JSON arrives (L{beam.controlapi.fromJSON}), and the
command line's text made from them (L{beam.cli.statusText},
L{beam.cli.networkText}).
"""

from __future__ import annotations

from typing import Any, Optional

import attrs
from twisted.trial.unittest import SynchronousTestCase

from beam.cli import networkText, statusText
from beam.controlapi import asJSON, fromJSON, jsonField
from beam.controlapi.values import UnreadableStatus
from beam.daemon.status import DaemonStatus, ServiceInfo, networkJSON, statusJSON
from beam.dht.status import BucketStatus, DHTStatus, RoutesStatus, RouteStatus
from beam.identity.keys import Identity
from beam.names.status import NameResolution, NameStatus
from beam.p2p.host.status import ConnectionStatus, NodeStatus
from beam.p2p.resources import (
    GiB,
    INBOUND,
    OUTBOUND,
    MiB,
    ResourceLimitExceeded,
    ResourceManager,
    defaultLimits,
)
from beam.tunnel.status import ForwardStatus, TrafficStatus, TunnelStatus

PEER = "12D3KooWPeer"

CONNECTION = ConnectionStatus(
    peerID=PEER, direction="outbound", transport="tcp", limited=False, remoteAddr="/ip4/192.0.2.9/tcp/4001",
    localAddr="/ip4/192.0.2.1/tcp/5555", security="/noise", muxer="/yamux/1.0.0", streams=2, agent="beam/0.1.0",
)
NODE = NodeStatus(peerID="12D3KooWSelf", addrs=("/ip4/192.0.2.1/tcp/4001/p2p/12D3KooWSelf",),
                  listenAddrs=("/ip4/0.0.0.0/tcp/4001",), protocols=("/ipfs/ping/1.0.0",), connections=(CONNECTION,))
TUNNEL = TunnelStatus(
    name="web", port=3000, kind="tcp", target="127.0.0.1:3000", compress=False, private=True, allow=(PEER,),
    share="beam://12D3KooWSelf@192.0.2.1:4001/web", connect="beam connect beam://12D3KooWSelf@192.0.2.1:4001/web",
    stats=TrafficStatus(active=1, total=3, bytesIn=2048, bytesOut=100),
)
FORWARD = ForwardStatus(name="8080", listen="127.0.0.1:8080", kind="tcp", peerID=PEER, service="",
                        state="connected", stats=TrafficStatus(total=1))
NAME = NameStatus(name="alice", peerID="12D3KooWSelf", services=("web",), addrs=("/ip4/192.0.2.1/tcp/4001",),
                  seq=7, expires=1700000000.5, storedOn=4)


@attrs.frozen
class _Inner:
    countOfThings: int
    legacyName: str = jsonField("legacy-name", default="x")


@attrs.frozen
class _Outer:
    peerID: str
    inner: _Inner
    items: tuple[_Inner, ...] = ()
    maybe: Optional[_Inner] = None
    ratio: float = 0.0


class JSONTests(SynchronousTestCase):
    """
    L{asJSON} and L{fromJSON}.
    """

    def test_keys(self) -> None:
        """
        Field names become snake-case keys (C{peerID} -> C{peer_id});
        L{jsonField} keeps an older key.
        """
        value = _Outer(peerID="p", inner=_Inner(countOfThings=2), items=(_Inner(1, "y"),))
        self.assertEqual(asJSON(value), {
            "peer_id": "p", "inner": {"count_of_things": 2, "legacy-name": "x"},
            "items": [{"count_of_things": 1, "legacy-name": "y"}], "maybe": None, "ratio": 0.0,
        })

    def test_roundTrip(self) -> None:
        """
        What L{asJSON} makes, L{fromJSON} turns back into an equal value,
        for every status value of Beam's services.
        """
        routes = RoutesStatus(k=20, size=1, buckets=(BucketStatus(
            index=255, peers=(RouteStatus(peerID=PEER, addrs=("/ip4/192.0.2.9/tcp/4001",), lastSeen=12.5),),
            replacements=1),))
        resolution = NameResolution(name="bob", peerID=PEER, addrs=("/ip4/192.0.2.9/tcp/4001",), seq=3,
                                    expires=1.5, source="dht", pin="known", elapsedMs=12.25, queried=9, rounds=2)
        for value in [NODE, TUNNEL, FORWARD, NAME, resolution, DHTStatus(mode="client"), routes,
                      _Outer(peerID="p", inner=_Inner(1), maybe=_Inner(2), ratio=1.5),
                      ServiceInfo(name="hello", origin="plugin", state="running")]:
            self.assertEqual(fromJSON(type(value), asJSON(value)), value)

    def test_fromJSONIsTolerant(self) -> None:
        """
        Unknown keys are ignored (a newer node may send more), missing
        ones take their default, and integers are accepted as floats.
        """
        value = fromJSON(_Outer, {"peer_id": "p", "inner": {"count_of_things": 1, "new": True}, "ratio": 2,
                                  "added_later": [1]})
        self.assertEqual(value, _Outer(peerID="p", inner=_Inner(1), ratio=2.0))
        self.assertIsInstance(value.ratio, float)

    def test_fromJSONRefusesWrongShapes(self) -> None:
        """
        A missing required key or a value of the wrong kind is
        L{UnreadableStatus}, naming where.
        """
        e = self.assertRaises(UnreadableStatus, fromJSON, _Outer, {"inner": {"count_of_things": 1}})
        self.assertIn("missing 'peer_id'", str(e))
        e = self.assertRaises(UnreadableStatus, fromJSON, _Outer, {"peer_id": "p", "inner": {"count_of_things": "1"}})
        self.assertIn("_Outer.inner.count_of_things: expected int", str(e))
        self.assertRaises(UnreadableStatus, fromJSON, _Outer, {"peer_id": "p", "inner": [], "items": []})
        self.assertRaises(UnreadableStatus, fromJSON, _Outer, {"peer_id": "p", "inner": {"count_of_things": 1},
                                                               "items": {}})
        self.assertRaises(UnreadableStatus, fromJSON, _Outer, ["not", "an", "object"])

    def test_strict(self) -> None:
        """
        Something with no settled JSON form (a L{PeerID}, an object, NaN,
        a non-string key) is a L{TypeError}, not silently turned to text.
        """
        for bad in [Identity.generate().peerID, object(), float("nan"), {1: "x"}, _Outer(peerID=object(),
                                                                                          inner=_Inner(1))]:
            self.assertRaises(TypeError, asJSON, bad)

    def test_shapesKept(self) -> None:
        """
        The JSON of tunnels, forwards, names and connections keeps the
        keys the control socket answered before the values existed.
        """
        self.assertEqual(set(asJSON(TUNNEL)), {"name", "port", "kind", "target", "compress", "private", "allow",
                                               "share", "connect", "stats"})
        self.assertEqual(asJSON(TUNNEL.stats), {"active": 1, "total": 3, "bytesIn": 2048, "bytesOut": 100,
                                                "refused": 0, "failed": 0})
        self.assertEqual(set(asJSON(FORWARD)), {"name", "listen", "kind", "peer_id", "service", "state", "stats"})
        self.assertEqual(set(asJSON(NAME)), {"name", "peer_id", "services", "addrs", "seq", "expires", "stored_on",
                                             "error", "published_at", "next_republish"})
        self.assertEqual(set(asJSON(CONNECTION)), {"peer_id", "direction", "transport", "limited", "remote_addr",
                                                   "local_addr", "security", "muxer", "streams", "agent", "path",
                                                   "relay"})
        self.assertEqual(asJSON(DHTStatus(mode="server", routingTableSize=3, recordsHeld=1)),
                         {"dht_mode": "server", "routing_table_size": 3, "records_held": 1, "lookups": 0,
                          "lookup_failures": 0, "lookup_p50_ms": None, "lookup_p95_ms": None})


def _daemonStatus() -> DaemonStatus:
    return DaemonStatus(
        node=NODE,
        services=(ServiceInfo("tunnels", "builtin", "running"), ServiceInfo("kademlia", "builtin", "running"),
                  ServiceInfo("names", "builtin", "running"), ServiceInfo("forwards", "builtin", "running"),
                  ServiceInfo("hello", "plugin", "running", "greets peers"),
                  ServiceInfo("broken", "plugin", "failed: cannot start")),
        sections=(("tunnels", (TUNNEL,)), ("kademlia", DHTStatus(mode="server", routingTableSize=12, recordsHeld=3)),
                  ("names", (NAME,)), ("forwards", (FORWARD,)),
                  ("hello", {"greeting": "hi", "greeted": 2, "peers": ["a", "b"], "last": None})),
    )


class TextTests(SynchronousTestCase):
    """
    C{beam status} and C{beam network} as text, from the JSON the control
    socket answers.
    """

    def test_status(self) -> None:
        """
        The node, its tunnels (with their share addresses), forwards,
        connections, names and DHT figures, then plugins and each
        plugin's own section, key by key.
        """
        self.assertEqual(statusText(statusJSON(_daemonStatus())).splitlines(), [
            "peer 12D3KooWSelf",
            "  /ip4/192.0.2.1/tcp/4001/p2p/12D3KooWSelf",
            "tunnels:",
            "  web          tcp 127.0.0.1:3000        private  active 1 total 3 in 2.0 KiB out 100 B",
            "    beam://12D3KooWSelf@192.0.2.1:4001/web",
            "forwards:",
            f"  127.0.0.1:8080        -> {PEER}/default [connected] active 0 total 1 in 0 B out 0 B",
            "reachability: unknown",
            "connections: 1",
            f"  {PEER} outbound direct /ip4/192.0.2.9/tcp/4001 /noise streams 2",
            "names:",
            "  alice        seq 7, expired, stored on 4 peers",
            "DHT: server, 12 peers in the routing table, 3 records held",
            "plugins:",
            "  hello        running  (greets peers)",
            "  broken       failed: cannot start",
            "hello:",
            "  greeting: hi",
            "  greeted: 2",
            "  peers: a, b",
            "  last: none",
        ])

    def test_dashboardLookupsRepublish(self) -> None:
        """
        Issue 13's figures in the text: the dashboard's URL (never the
        token) or why it is off, the DHT's lookups with their success and
        latency, and when each name is published again.
        """
        status = statusJSON(_daemonStatus())
        status["kademlia"].update({"lookups": 20, "lookup_failures": 5, "lookup_p50_ms": 41.2,
                                   "lookup_p95_ms": 250.0})
        status["names"][0]["next_republish"] = 1000.0 + 3 * 3600
        status["web"] = {"enabled": True, "url": "http://127.0.0.1:4041/", "clients": 2}
        lines = statusText(status, now=1000.0).splitlines()
        self.assertIn("DHT: server, 12 peers in the routing table, 3 records held, 20 lookups (75 % answered, "
                      "p50 41 ms, p95 250 ms)", lines)
        self.assertTrue(any(line.startswith("  alice ") and line.endswith(", republished in 3h00m") for line in lines),
                        lines)
        self.assertIn("Dashboard: http://127.0.0.1:4041/ (2 watching; beam dashboard prints the login link)",
                      lines)
        status["web"] = {"enabled": False}
        self.assertIn("Dashboard: off", statusText(status, now=1000.0).splitlines())
        status["web"] = {"enabled": True, "url": None, "error": "ports 4040-4059 are all taken"}
        self.assertIn("Dashboard: not listening: ports 4040-4059 are all taken",
                      statusText(status, now=1000.0).splitlines())

    def test_statusOfABareNode(self) -> None:
        """
        A node without services' sections still reads well.
        """
        text = statusText(statusJSON(DaemonStatus(node=NodeStatus(peerID="12D3KooWSelf"))))
        self.assertEqual(text.splitlines(), ["peer 12D3KooWSelf", "tunnels: none", "forwards: none",
                                             "reachability: unknown", "connections: 0"])

    def test_resources(self) -> None:
        """
        The resource manager's status is the JSON's C{"resources"} as it
        was given, and one line of the text: connections, streams and
        descriptors of both directions, memory, and all refusals summed.
        An answer without it (an older node) has no such line.
        """
        # No connection in the handshake from a given source: three refusals.
        manager = ResourceManager(attrs.evolve(defaultLimits(fdLimit=1024, memory=GiB), transientPerSource=0))
        connection = manager.openConnection(INBOUND)
        connection.setPeer(PEER)
        connection.reserveMemory(4 * MiB)
        connection.openStream(INBOUND)
        connection.openStream(OUTBOUND)
        for _ in range(3):
            self.assertRaises(ResourceLimitExceeded, manager.openConnection, INBOUND, source="192.0.2.9")
        resources = manager.status()
        status = attrs.evolve(_daemonStatus(), resources=resources)
        rendered = statusJSON(status)
        self.assertEqual(rendered["resources"], resources)
        self.assertEqual(rendered["resources"]["limits"]["peer"]["streams_inbound"],
                         defaultLimits(fdLimit=1024, memory=GiB).peer.streamsInbound)
        lines = statusText(rendered).splitlines()
        self.assertEqual(lines[lines.index(f"  {PEER} outbound direct /ip4/192.0.2.9/tcp/4001 /noise streams 2") + 1],
                         "resources: 1 conns, 2 streams, 1 fds, 4.0 MiB; 3 refusals")
        self.assertNotIn("resources", statusJSON(_daemonStatus()))
        self.assertFalse(any(line.startswith("resources:") for line in statusText(statusJSON(_daemonStatus()))
                             .splitlines()))

    def test_network(self) -> None:
        """
        C{beam network status}, C{peers} and C{routes}.
        """
        status = _daemonStatus()
        self.assertEqual(networkText("status", networkJSON(status)).splitlines(), [
            "peer 12D3KooWSelf",
            "listen: /ip4/0.0.0.0/tcp/4001",
            "observed: none",
            "reachability: unknown",
            "connections: 1 (1 direct)",
            "DHT: server, 12 peers in the routing table, 3 records held",
            "names: alice",
        ])
        self.assertEqual(networkText("peers", {"peers": asJSON(NODE.connections)}),
                         f"{PEER} outbound direct /ip4/192.0.2.9/tcp/4001 /noise streams 2 beam/0.1.0")
        self.assertEqual(networkText("peers", {"peers": []}), "no peers connected")
        routes = RoutesStatus(k=20, size=1, buckets=(BucketStatus(
            index=255, peers=(RouteStatus(peerID=PEER, addrs=("/ip4/192.0.2.9/tcp/4001",)),)),))
        self.assertEqual(networkText("routes", asJSON(routes)).splitlines(), [
            "1 peers (k = 20)", "bucket 255: 1 peers, 0 replacements", f"  {PEER} /ip4/192.0.2.9/tcp/4001"])
        self.assertEqual(networkText("bootstrap", {"routing_table_size": 5}),
                         "bootstrapped: 5 peers in the routing table")


RELAY = "12D3KooWRelay"
RELAYED = attrs.evolve(
    CONNECTION, limited=True, remoteAddr=f"/ip4/192.0.2.7/tcp/4001/p2p/{RELAY}/p2p-circuit",
    path="relayed", relay=RELAY,
)
NAT: dict[str, Any] = {
    "reachability": "private", "confirmed_addrs": [], "relay_addrs": [f"/ip4/192.0.2.7/tcp/4001/p2p/{RELAY}/p2p-circuit"],
    "nat": {"mapping": "endpoint-independent", "filtering": "address-and-port-dependent",
            "publicAddr": ["203.0.113.9", 5000], "server": ["192.0.2.1", 3478], "strategy": "punch"},
    "stun_error": None,
    "reservations": [{"relay": RELAY, "expires": 1700003600, "expires_in": 3540,
                      "addrs": [f"/ip4/192.0.2.7/tcp/4001/p2p/{RELAY}/p2p-circuit"]}],
    "reserving": [], "relay_mode": "default",
    "relay_service": {"open": True, "limits": {}, "reservations": [{"peer": PEER, "expires": 1}], "circuits": [],
                      "refusals": {}, "relayedBytes": 2048},
    "autonat_server": False, "stun_server": ["192.0.2.1:4001"], "stun_server_error": None,
}


class NATTextTests(SynchronousTestCase):
    """
    Reachability, NAT behaviour, reservations, the relay service and each
    connection's path in C{beam status} and C{beam network status}.
    """

    def _status(self) -> DaemonStatus:
        node = attrs.evolve(NODE, connections=(CONNECTION, RELAYED), reachability="private",
                            relayAddrs=tuple(NAT["relay_addrs"]))
        return DaemonStatus(node=node, services=(ServiceInfo("nat", "builtin", "running"),),
                            sections=(("nat", NAT),))

    def test_status(self) -> None:
        """
        C{beam status} shows the reachability, what STUN found, each
        reservation with its expiry, the relay service, the STUN server,
        and per connection whether it is direct or relayed via which
        relay; C{--json} has it all under C{"nat"} and per connection.
        """
        rendered = statusJSON(self._status())
        self.assertEqual(rendered["reachability"], "private")
        self.assertEqual(rendered["nat"]["reservations"][0]["relay"], RELAY)
        self.assertEqual([(c["path"], c["relay"]) for c in rendered["connections"]],
                         [("direct", None), ("relayed", RELAY)])
        lines = statusText(rendered).splitlines()
        start = lines.index("reachability: private")
        self.assertEqual(lines[start:start + 9], [
            "reachability: private",
            "NAT: endpoint-independent mapping, address-and-port-dependent filtering -> punch (public 203.0.113.9:5000)",
            "relay reservations:",
            f"  {RELAY} expires in 59m00s",
            f"    /ip4/192.0.2.7/tcp/4001/p2p/{RELAY}/p2p-circuit",
            "relay service: open (whole tunnels), 1 reservations, 0 circuits, 2.0 KiB relayed",
            "STUN server: 192.0.2.1:4001",
            "connections: 2",
            f"  {PEER} outbound direct /ip4/192.0.2.9/tcp/4001 /noise streams 2",
        ])
        self.assertIn(f"  {PEER} outbound relayed via {RELAY} /ip4/192.0.2.7/tcp/4001/p2p/{RELAY}/p2p-circuit "
                      "/noise streams 2", lines)
        self.assertFalse(any(line.startswith("nat:") for line in lines), "laid out, not dumped key by key")

    def test_network(self) -> None:
        """
        C{beam network status} has the same NAT lines and counts
        connections by path.
        """
        network = networkJSON(self._status())
        self.assertEqual((network["reachability"], network["connection_paths"]),
                         ("private", {"direct": 1, "relayed": 1}))
        lines = networkText("status", network).splitlines()
        self.assertIn("reachability: private", lines)
        self.assertIn("connections: 2 (1 direct, 1 relayed)", lines)
        self.assertIn(f"  {RELAY} expires in 59m00s", lines)

    def test_connectionPath(self) -> None:
        """
        A connection through a relay is relayed via the peer named before
        C{/p2p-circuit}; one that says its own path (DCUtR's
        hole-punched) keeps it.
        """
        from beam.p2p.host.status import connectionPath

        class Conn:
            limited = True
            remoteAddr = f"/ip4/192.0.2.7/tcp/4001/p2p/{RELAY}/p2p-circuit/p2p/{PEER}"

        self.assertEqual(connectionPath(Conn()), ("relayed", RELAY))
        punched = Conn()
        punched.limited = False
        punched.remoteAddr = "/ip4/203.0.113.5/tcp/4001"
        punched.path = "hole-punched"  # type: ignore[attr-defined]
        self.assertEqual(connectionPath(punched), ("hole-punched", None))
        viaTurn = Conn()
        viaTurn.limited = False
        viaTurn.remoteAddr = "/ip4/203.0.113.5/tcp/50123"
        viaTurn.transport = "turn"  # type: ignore[attr-defined]
        self.assertEqual(connectionPath(viaTurn), ("turn", None))


class NATTraversalTextTests(SynchronousTestCase):
    """
    Port mapping, TURN and hole punching in C{beam status}.
    """

    def _lines(self, **extra: Any) -> list[str]:
        nat = {**NAT, **extra}
        status = DaemonStatus(node=attrs.evolve(NODE, reachability="private"),
                              services=(ServiceInfo("nat", "builtin", "running"),), sections=(("nat", nat),))
        return statusText(statusJSON(status)).splitlines()

    def test_mappedAndAllocated(self) -> None:
        """
        A port mapping shows its external address, protocol and expiry; a
        TURN allocation its relayed address, server and expiry; hole
        punching its counts and the last failure's one line.
        """
        lines = self._lines(
            port_mapping={"state": "mapped", "protocol": "nat-pmp", "internal_port": 4001,
                          "external_addr": "/ip4/203.0.113.50/tcp/4001", "expires_in": 3000.0, "last_error": None},
            turn={"server": "turn:192.0.2.30:3478", "state": "allocated", "relayed_addr": "/ip4/192.0.2.30/tcp/50000",
                  "expires_in": 590, "last_error": None},
            hole_punching={"active": 0, "punched": 2, "failed": 1,
                           "last_failure": f"hole punch failed, staying on relay via {RELAY}"},
        )
        self.assertIn("port mapping: /ip4/203.0.113.50/tcp/4001 via nat-pmp, expires in 50m00s", lines)
        self.assertIn("TURN: /ip4/192.0.2.30/tcp/50000 on turn:192.0.2.30:3478, expires in 9m50s", lines)
        self.assertIn("hole punching: 2 punched, 1 failed, 0 under way", lines)
        self.assertIn(f"  last: hole punch failed, staying on relay via {RELAY}", lines)

    def test_failures(self) -> None:
        """
        A mapping or allocation that failed shows its state and error in
        one line; nothing is shown for what is not configured.
        """
        lines = self._lines(
            port_mapping={"state": "failed", "protocol": None, "external_addr": None, "expires_in": None,
                          "last_error": "nat-pmp: no answer; upnp: no gateway found"},
            turn={"server": None, "state": "idle", "relayed_addr": None, "expires_in": None,
                  "last_error": "turn:192.0.2.30:3478: 401 Unauthorized"},
            hole_punching={"active": 0, "punched": 0, "failed": 0, "last_failure": None},
        )
        self.assertIn("port mapping: failed (nat-pmp: no answer; upnp: no gateway found)", lines)
        self.assertIn("TURN: idle (turn:192.0.2.30:3478: 401 Unauthorized)", lines)
        self.assertFalse(any(line.startswith("hole punching") for line in lines))
        plain = self._lines(port_mapping=None, turn=None, hole_punching=None)
        self.assertFalse(any(line.startswith(("port mapping", "TURN")) for line in plain))


class DiscoveryStatusTests(SynchronousTestCase):
    """
    C{beam status} lays out the LAN (mDNS), gossip and DNS sections in one
    line each (issue 12: they used to be dumped key by key, sixty lines of
    counters); C{--json} keeps them whole.
    """

    def test_laidOut(self) -> None:
        """
        Running services get their one-line summaries (the DNS server's
        names under it); none is dumped key by key.
        """
        status = DaemonStatus(
            node=NODE,
            services=(ServiceInfo("mdns", "builtin", "running"), ServiceInfo("pubsub", "builtin", "running"),
                      ServiceInfo("dns", "builtin", "running")),
            sections=(
                ("mdns", {"enabled": True, "idle": False, "error": None, "interfaces": ["198.51.100.10"],
                          "peers": 3, "found": [], "counters": {"packets": 12}}),
                ("pubsub", {"enabled": True, "peers": 4, "mesh": {"beam-names": 2}, "counters": {"rpcs": 9}}),
                ("dns", {"enabled": True, "listening": "127.0.0.1:5380", "queries": 5, "allocations": [
                    {"host": "alice.beam", "address": "127.77.0.1", "peer_id": PEER, "ports": [3000]}]}),
            ),
        )
        rendered = statusJSON(status)
        self.assertEqual(rendered["pubsub"]["counters"], {"rpcs": 9})
        lines = statusText(rendered).splitlines()
        self.assertIn("LAN (mDNS): 3 peers found on 198.51.100.10", lines)
        self.assertIn("gossip: 4 peers, 2 in the beam-names mesh", lines)
        start = lines.index("DNS: NAME.beam answered on 127.0.0.1:5380, 1 names:")
        self.assertEqual(lines[start + 1], "  alice.beam -> 127.77.0.1 (3000)")
        self.assertFalse(any("counters" in line or line.startswith(("mdns", "pubsub", "dns:")) for line in lines))

    def test_off(self) -> None:
        """
        Services switched off say so, with the reason when there is one.
        """
        status = DaemonStatus(
            node=NODE,
            services=(ServiceInfo("mdns", "builtin", "running"), ServiceInfo("pubsub", "builtin", "running"),
                      ServiceInfo("dns", "builtin", "running")),
            sections=(("mdns", {"enabled": False, "reason": "tor mode always"}), ("pubsub", {"enabled": False}),
                      ("dns", {"enabled": True, "listening": None, "error": "port 5380 is taken"})),
        )
        lines = statusText(statusJSON(status)).splitlines()
        self.assertIn("LAN (mDNS): off (tor mode always)", lines)
        self.assertIn("gossip: off", lines)
        self.assertIn("DNS: not running: port 5380 is taken", lines)
