"""
The node's figures in the Prometheus text format, for C{GET /metrics} on
the dashboard's port (L{beam.daemon.web}).

Every scrape builds a private L{CollectorRegistry} holding one collector
(L{_DaemonCollector}) that reads the daemon's live values: its status, the
tunnels' and forwards' counters, the node's connections, the dialer's
counters (L{beam.p2p.host.dialer.DialStats}), the DHT's lookup histogram
(L{beam.stats.Histogram}) and the inspector's counters.  Nothing is
registered globally and nothing runs between scrapes: the services keep
plain integers, and only a scrape turns them into text.  That is also why
C{prometheus_client} is imported only when a scrape happens: the command
line never pays for it at start-up (see L{beam.test.test_cost}).

The metric names, their types and labels are listed in
C{docs/dashboard.md}; a tunnel's name is user input and goes into a label
value, which the library escapes (backslash, double quote, newline).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Optional

from twisted.logger import Logger

__all__ = ["CONTENT_TYPE", "PEER_PATHS", "metricsText"]

#: The C{Content-Type} of L{metricsText}'s answer: C{prometheus_client}'s
#: C{CONTENT_TYPE_LATEST} (a test checks they agree), spelled out here so
#: that naming it does not import the library.
CONTENT_TYPE = "text/plain; version=1.0.0; charset=utf-8"

#: The values of C{beam_peer_connections}'s C{path} label: every one is
#: exported (zero when unused) so a dashboard's series never vanish.
PEER_PATHS = ("direct", "holepunched", "relayed", "tor", "turn")

_DIRECTIONS = ("inbound", "outbound")

log = Logger()


def metricsText(daemon: Any) -> bytes:
    """
    The daemon's metrics now, in the Prometheus text exposition format.

    @param daemon: a L{BeamDaemon<beam.daemon.service.BeamDaemon>} (or
        anything with its C{status()}, C{service(name)} and C{node}).
    """
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_DaemonCollector(daemon))
    return generate_latest(registry)


def peerPath(path: str, transport: str) -> str:
    """
    The C{path} label of a connection from its status (L{beam.p2p.host.status.ConnectionStatus}):
    C{"tor"} for one over Tor, C{"holepunched"} for DCUtR's, C{"turn"}
    through a TURN server, C{"relayed"} through a circuit relay, else
    C{"direct"}.  Unknown paths count as direct ones, keeping the label's
    values bounded.
    """
    if transport == "tor":
        return "tor"
    normal = path.replace("-", "").replace("_", "")
    return normal if normal in PEER_PATHS else "direct"


class _DaemonCollector:
    """
    A custom collector (C{prometheus_client}'s C{Collector} protocol: one
    L{collect} method) over one daemon's live values.

    Each part reads one service; a service that is off (not made) is
    skipped, and one whose figures cannot be read is logged and skipped,
    so that a scrape always answers with what is known.
    """

    def __init__(self, daemon: Any) -> None:
        self.daemon = daemon

    def _service(self, name: str) -> Any:
        try:
            return self.daemon.service(name)
        except KeyError:
            return None

    def collect(self) -> Iterator[Any]:
        status = None
        try:
            status = self.daemon.status()
        except Exception:
            log.failure("metrics: the daemon's status failed")
        parts: list[Callable[[Any], Iterator[Any]]] = [
            self._info, self._tunnels, self._peers, self._dials, self._dht, self._relay, self._names,
            self._inspector,
        ]
        for part in parts:
            try:
                families = list(part(status))
            except Exception:
                log.failure("metrics: {part} failed", part=part.__name__)
                continue
            yield from families

    # -- the parts --------------------------------------------------------

    def _info(self, status: Any) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        from beam import __version__

        info = GaugeMetricFamily("beam_info", "This node's peer ID and Beam version (always 1).",
                                 labels=["peer_id", "version"])
        info.add_metric([str(self.daemon.node.peerID), __version__], 1)
        yield info

    def _tunnels(self, status: Any) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        rows: list[tuple[str, str, Any]] = []
        if status is not None:
            for role, section in (("host", "tunnels"), ("forward", "forwards")):
                try:
                    values = status.section(section)
                except KeyError:
                    continue
                rows.extend((role, str(v.name), v.stats) for v in values)
        labels = ["role", "tunnel"]
        traffic = CounterMetricFamily(
            "beam_tunnel_bytes_total",
            "Bytes carried by a tunnel (role host: a service this node exposes; forward: a local port leading "
            "to another node's tunnel); direction in: from the tunnel to the local TCP side, out: the reverse.",
            labels=labels + ["direction"])
        total = CounterMetricFamily("beam_tunnel_connections_total", "Connections a tunnel carried since start.",
                                    labels=labels)
        active = GaugeMetricFamily("beam_tunnel_connections_active", "Connections a tunnel carries now.",
                                   labels=labels)
        refused = CounterMetricFamily("beam_tunnel_refused_total",
                                      "Connections the host refused (access policy, unknown service, limits).",
                                      labels=labels)
        failed = CounterMetricFamily("beam_tunnel_failed_total",
                                     "Connections that could not be set up for another reason (host unreachable, "
                                     "service down).", labels=labels)
        for role, name, stats in rows:
            traffic.add_metric([role, name, "in"], stats.bytesIn)
            traffic.add_metric([role, name, "out"], stats.bytesOut)
            total.add_metric([role, name], stats.total)
            active.add_metric([role, name], stats.active)
            refused.add_metric([role, name], stats.refused)
            failed.add_metric([role, name], stats.failed)
        yield from (traffic, total, active, refused, failed)

    def _peers(self, status: Any) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        counts = {(p, d): 0 for p in PEER_PATHS for d in _DIRECTIONS}
        streams = 0
        connections = status.node.connections if status is not None else ()
        for conn in connections:
            key = (peerPath(conn.path, conn.transport), conn.direction if conn.direction in _DIRECTIONS else "outbound")
            counts[key] += 1
            streams += conn.streams
        peers = GaugeMetricFamily("beam_peer_connections",
                                  "Live peer connections, by how they got there and who dialled.",
                                  labels=["path", "direction"])
        for (path, direction), n in counts.items():
            peers.add_metric([path, direction], n)
        yield peers
        yield GaugeMetricFamily("beam_streams_open", "Streams open on all peer connections.", value=streams)

    def _dials(self, status: Any) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily

        from beam.p2p.host.dialer import DIAL_FAILURE_CAUSES

        stats = dialStats(self.daemon.node)
        attempts = CounterMetricFamily(
            "beam_dial_attempts_total",
            "Outbound dial attempts: one per address dialled (transport dial and upgrade), or per dial that had "
            "no address.", value=stats.attempts if stats is not None else 0)
        yield attempts
        failures = CounterMetricFamily("beam_dial_failures_total", "Failed dial attempts, by cause.",
                                       labels=["cause"])
        if stats is not None:
            for cause, n in stats.failures.items():
                failures.add_metric([cause], n)
        else:
            for cause in DIAL_FAILURE_CAUSES:
                failures.add_metric([cause], 0)
        yield failures

    def _dht(self, status: Any) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
        from prometheus_client.utils import floatToGoString

        kad = self._service("kademlia")
        if kad is None:
            return
        latency = kad.lookupLatency
        lookups = CounterMetricFamily(
            "beam_dht_lookups_total",
            "DHT lookups this node made (get, find closest peers, put), by result: failure when no peer "
            "answered (for a put: none took the record).", labels=["result"])
        lookups.add_metric(["success"], latency.count - kad.lookupFailures)
        lookups.add_metric(["failure"], kad.lookupFailures)
        yield lookups
        yield HistogramMetricFamily(
            "beam_dht_lookup_duration_seconds", "How long DHT lookups took, successful or not.",
            buckets=[(floatToGoString(bound), n) for bound, n in latency.cumulative()],
            sum_value=latency.sum)
        dht = kad.status()
        yield GaugeMetricFamily("beam_dht_routing_table_peers", "Peers in the DHT routing table.",
                                value=dht.routingTableSize)
        yield GaugeMetricFamily("beam_dht_records_stored", "DHT records this node holds (its own and others').",
                                value=dht.recordsHeld)

    def _relay(self, status: Any) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        nat = self._service("nat")
        hop = held = 0
        if nat is not None:
            relayService = getattr(nat, "relayService", None)
            if relayService is not None:
                hop = len(relayService.circuits)
            client = getattr(nat, "relayClient", None)
            if client is not None:
                held = len(client.reservations)
        connections = status.node.connections if status is not None else ()
        relayed = sum(1 for c in connections if peerPath(c.path, c.transport) == "relayed")
        circuits = GaugeMetricFamily(
            "beam_relay_circuits",
            "Relay circuits open now: hop, relayed by this node for others; client, this node's own peer "
            "connections through a relay.", labels=["role"])
        circuits.add_metric(["hop"], hop)
        circuits.add_metric(["client"], relayed)
        yield circuits
        yield GaugeMetricFamily("beam_relay_reservations",
                                "Reservations this node holds on relays (to be reachable while private).",
                                value=held)

    def _names(self, status: Any) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        names = self._service("names")
        if names is None:
            return
        yield GaugeMetricFamily("beam_names_registered", "Names this node registers and keeps published.",
                                value=len(names.registrations))

    def _inspector(self, status: Any) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        service = self._service("requests")
        if service is None:
            return
        st = service.status()
        yield CounterMetricFamily("beam_inspector_requests_total",
                                  "HTTP exchanges the inspector captured since start.",
                                  value=_number(st, "captured"))
        yield CounterMetricFamily("beam_inspector_evicted_total",
                                  "Captured exchanges dropped from the inspector's ring buffer to stay within its "
                                  "count and byte caps.", value=_number(st, "evicted"))
        yield CounterMetricFamily("beam_inspector_gave_up_total",
                                  "Tunnelled connections whose inspection stopped on malformed or oversized HTTP "
                                  "(their bytes still flowed untouched).", value=_number(st, "gaveUp"))
        yield CounterMetricFamily("beam_inspector_refused_total",
                                  "HTTP exchanges not captured because exchanges evicted while still in flight "
                                  "already held the inspector's whole budget.", value=_number(st, "refused"))
        yield GaugeMetricFamily("beam_inspector_bytes", "Bytes the inspector's captured exchanges hold now.",
                                value=_number(st, "bytes"))


def dialStats(node: Any) -> Optional[Any]:
    """
    The L{DialStats<beam.p2p.host.dialer.DialStats>} of C{node}'s dialer,
    or L{None} for a node without one (a test double).
    """
    dialer = getattr(node, "_dialer", None)
    return getattr(dialer, "stats", None)


def _number(value: Any, name: str) -> float:
    """
    The field C{name} of a status value (an attrs value or a dict), 0 when
    missing: the inspector's status is read by name only.
    """
    got = value.get(name, 0) if isinstance(value, dict) else getattr(value, name, 0)
    return got if isinstance(got, (int, float)) and not isinstance(got, bool) else 0
