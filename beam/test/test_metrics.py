"""
Metrics (issue 13): L{beam.stats}' histogram and counters, the dialer's
failure causes, the DHT's lookup figures, names' republish times, and
L{beam.daemon.metrics.metricsText} read back with the Prometheus project's
own text-format parser, down to the bytes a real tunnel on loopback moved.
"""

from __future__ import annotations

import math
import socket
from pathlib import Path
from typing import Any

import attrs
from hypothesis import given, settings, strategies as st
from twisted.internet import error as netError, reactor
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks, succeed
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from beam.daemon.metrics import CONTENT_TYPE, metricsText, peerPath
from beam.daemon.status import DaemonStatus
from beam.dht.service import KademliaService, NoDHTPeers
from beam.errors import BeamError, DialError, HandshakeFailed, NegotiationFailed, NodeStopped, PeerIDMismatch
from beam.identity.keys import Identity
from beam.identity.multiaddr import Multiaddr
from beam.p2p.host.dialer import DIAL_FAILURE_CAUSES, dialFailureCause
from beam.p2p.host.status import ConnectionStatus, NodeStatus
from beam.stats import Counts, Histogram
from beam.test.memnodes import MemoryGrid
from beam.test.test_daemon import _deferToThread, _Echo, _freePort, _startDaemon
from beam.testing.labbeam import waitFor
from beam.tunnel.status import ForwardStatus, TrafficStatus, TunnelStatus

#: Every metric name the contract of issue 13 lists (families: a
#: counter's name without C{_total}, as the parser reports it).
FAMILIES = {
    "beam_tunnel_bytes", "beam_tunnel_connections", "beam_tunnel_connections_active", "beam_tunnel_refused",
    "beam_tunnel_failed", "beam_peer_connections", "beam_streams_open", "beam_dial_attempts",
    "beam_dial_failures", "beam_dht_lookups", "beam_dht_lookup_duration_seconds", "beam_dht_routing_table_peers",
    "beam_dht_records_stored", "beam_relay_circuits", "beam_relay_reservations", "beam_names_registered",
    "beam_info",
}


def parse(text: bytes) -> dict[str, Any]:
    """
    C{text} read by C{prometheus_client}'s parser: the families by name.
    """
    from prometheus_client.parser import text_string_to_metric_families

    return {f.name: f for f in text_string_to_metric_families(text.decode("utf-8"))}


def sample(families: dict[str, Any], name: str, **labels: str) -> float:
    """
    The value of the one sample called C{name} with exactly C{labels}.
    """
    family = name[: -len("_total")] if name.endswith("_total") else name
    for prefix in ("_bucket", "_count", "_sum"):
        if family.endswith(prefix) and family[: -len(prefix)] in families:
            family = family[: -len(prefix)]
    found = [s.value for s in families[family].samples if s.name == name and s.labels == labels]
    if len(found) != 1:
        raise AssertionError(f"{len(found)} samples {name}{labels} in {families[family].samples}")
    return float(found[0])


class HistogramTests(SynchronousTestCase):
    """
    L{Histogram}: fixed buckets, Prometheus' inclusive upper bounds, and a
    quantile estimate interpolated within a bucket.
    """

    def test_buckets(self) -> None:
        """
        A value equal to a bound falls in that bound's bucket; one above the
        last bound in the implicit +Inf one; the cumulative series ends with
        the count; the sum adds every value.
        """
        h = Histogram([0.1, 1.0])
        for v in [0.05, 0.1, 0.5, 1.0, 7.0]:
            h.observe(v)
        self.assertEqual(h.counts, [2, 2, 1])
        self.assertEqual(list(h.cumulative()), [(0.1, 2), (1.0, 4), (math.inf, 5)])
        self.assertEqual(h.count, 5)
        self.assertAlmostEqual(h.sum, 8.65)

    def test_quantile(self) -> None:
        """
        Quantiles interpolate linearly inside their bucket (from 0 for the
        first); one in the +Inf bucket is the highest finite bound; an empty
        histogram has none.
        """
        h = Histogram([1.0, 2.0, 4.0])
        self.assertIsNone(h.quantile(0.5))
        for v in [0.5, 1.5, 1.5, 3.0]:
            h.observe(v)
        self.assertEqual(h.quantile(0.25), 1.0)
        self.assertEqual(h.quantile(0.5), 1.5)
        self.assertEqual(h.quantile(0.75), 2.0)
        self.assertEqual(h.quantile(1.0), 4.0)
        h.observe(100.0)
        self.assertEqual(h.quantile(1.0), 4.0)
        self.assertRaises(ValueError, h.quantile, 1.5)

    def test_badBounds(self) -> None:
        """
        Bounds must be finite, present and strictly ascending; NaN
        observations are ignored rather than poisoning the sum.
        """
        for bad in [[], [1.0, 1.0], [2.0, 1.0], [1.0, math.inf], [math.nan]]:
            self.assertRaises(ValueError, Histogram, bad)
        h = Histogram([1.0])
        h.observe(math.nan)
        self.assertEqual((h.count, h.sum), (0, 0.0))

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.floats(min_value=0, max_value=1e4, allow_nan=False), max_size=50),
           st.floats(min_value=0, max_value=1))
    def test_quantileBounded(self, values: list[float], q: float) -> None:
        """
        Whatever is observed, the counts add up, and a quantile lies within
        the default bounds and never decreases as C{q} grows.
        """
        h = Histogram()
        for v in values:
            h.observe(v)
        self.assertEqual(sum(h.counts), len(values))
        self.assertEqual(list(h.cumulative())[-1][1], len(values))
        got = h.quantile(q)
        if not values:
            self.assertIsNone(got)
            return
        assert got is not None
        self.assertTrue(0.0 <= got <= h.bounds[-1])
        higher = h.quantile(min(1.0, q + 0.1))
        assert higher is not None
        self.assertGreaterEqual(higher, got - 1e-9)


class CountsTests(SynchronousTestCase):
    """
    L{Counts}: counters under a fixed set of keys.
    """

    def test_fallback(self) -> None:
        """
        Every key is there from the start; an unknown key counts under the
        fallback, or is a L{KeyError} without one.
        """
        c = Counts(["a", "other"], fallback="other")
        self.assertEqual(c.items(), [("a", 0), ("other", 0)])
        c.increment("a")
        c.increment("zzz", 2)
        self.assertEqual(c.asDict(), {"a": 1, "other": 2})
        self.assertEqual(c.total(), 3)
        self.assertRaises(KeyError, Counts(["a"]).increment, "b")
        self.assertRaises(ValueError, Counts, ["a"], fallback="b")


class DialCauseTests(SynchronousTestCase):
    """
    L{dialFailureCause} sorts a failed dial attempt into one of
    L{DIAL_FAILURE_CAUSES}.
    """

    def test_causes(self) -> None:
        """
        Twisted's connect errors, the upgrade's security errors and
        cancellation each have their cause; a connection that drops during
        the upgrade is a handshake failure; anything else is "other".
        """
        cases: list[tuple[BaseException, bool, str]] = [
            (netError.TimeoutError(), False, "timeout"),
            (netError.ConnectionRefusedError(), False, "refused"),
            (netError.NoRouteError(), False, "unreachable"),
            (netError.DNSLookupError(), False, "unreachable"),
            (netError.ConnectError(osError=113), False, "unreachable"),
            (HandshakeFailed("noise"), True, "handshake"),
            (NegotiationFailed("no muxer"), True, "handshake"),
            (netError.ConnectionDone(), True, "handshake"),
            (PeerIDMismatch("someone else"), True, "peer_id_mismatch"),
            (CancelledError(), False, "cancelled"),
            (netError.ConnectingCancelledError(None), False, "cancelled"),
            (NodeStopped(), True, "cancelled"),
            (DialError("odd"), False, "other"),
            (netError.ConnectionDone(), False, "other"),
        ]
        for exc, upgrading, cause in cases:
            self.assertEqual(dialFailureCause(Failure(exc), upgrading=upgrading), cause, repr(exc))
            self.assertIn(cause, DIAL_FAILURE_CAUSES)

    def test_dialStatsFromNode(self) -> None:
        """
        A node's dialer counts each address it dials, and a dial with no
        transport for its address as a failure for want of an address.
        """
        grid = MemoryGrid(self)
        node = grid.node()
        stats = node._dialer.stats
        f = grid.failure(node._dialer.dial(None, [Multiaddr.fromString("/ip4/127.0.0.1/udp/9/quic-v1")]), DialError)
        self.assertIn("no transport", f.getErrorMessage())
        self.assertEqual(stats.attempts, 1)
        self.assertEqual(stats.failures["no_address"], 1)
        other = grid.node()
        grid.result(node.connect(grid.addr(other)))
        self.assertEqual(stats.attempts, 2)
        self.assertEqual(stats.failures.total(), 1)


class _FakeKad:
    """
    Stands in for a L{KademliaNode}: lookups end when the test says.
    """

    def __init__(self) -> None:
        self.pending: list[Deferred[Any]] = []
        self.routingTable = attrs.make_class("RT", {"size": attrs.field(default=3)})()
        self.store: dict[bytes, bytes] = {}
        self.isServer = True

    def _later(self, *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.pending.append(d)
        return d

    closestPeers = getValue = putValue = _later


def _lookup(responders: tuple[str, ...] = ("p",)) -> Any:
    return attrs.make_class("LR", ["closest", "queries", "failures", "rounds", "responders"])(
        (), 1, 0, 1, responders)


class DHTLookupTests(SynchronousTestCase):
    """
    L{KademliaService} times every lookup it makes into its histogram and
    reports them in its status.
    """

    def setUp(self) -> None:
        self.grid = MemoryGrid(self)
        self.clock: Clock = self.grid.clock
        self.dht = KademliaService(self.clock, self.grid.node(), None, mode="server")
        self.kad = _FakeKad()
        self.dht.kad = self.kad  # type: ignore[assignment]

    def test_timedAndCounted(self) -> None:
        """
        A closest-peers lookup answered after 0.3 s, a put no peer took
        after 2 s and a get that nobody answered count as three lookups, two
        failed; the status has their count and quantiles in milliseconds.
        """
        self.assertEqual((self.dht.status().lookups, self.dht.status().lookupP50Ms), (0, None))
        d = self.dht.closestPeers(b"k")
        self.clock.advance(0.3)
        self.kad.pending.pop().callback(_lookup())
        self.assertEqual(self.successResultOf(d), [])
        put = self.dht.putValue(b"k", b"v")
        self.clock.advance(2)
        self.kad.pending.pop().callback(0)
        self.assertEqual(self.successResultOf(put), 0)
        get = self.dht.getValue(b"k")
        self.kad.pending.pop().errback(BeamError("every peer timed out"))
        self.failureResultOf(get)
        latency = self.dht.lookupLatency
        self.assertEqual(latency.count, 3)
        self.assertAlmostEqual(latency.sum, 2.3)
        status = self.dht.status()
        self.assertEqual((status.lookups, status.lookupFailures), (3, 2))
        self.assertIsNotNone(status.lookupP50Ms)
        self.assertIsNotNone(status.lookupP95Ms)
        assert status.lookupP50Ms is not None and status.lookupP95Ms is not None
        self.assertLessEqual(status.lookupP50Ms, status.lookupP95Ms)

    def test_noPeersAndNotFound(self) -> None:
        """
        A get with an empty routing table fails at once and counts as a
        failed lookup; a get whose peers answered without the record is a
        lookup that worked; one cancelled by the node stopping is not
        counted at all.
        """
        self.kad.routingTable.size = 0
        self.failureResultOf(self.dht.getValue(b"k"), NoDHTPeers)
        self.assertEqual((self.dht.lookupLatency.count, self.dht.lookupFailures), (1, 1))
        self.kad.routingTable.size = 3
        from beam.errors import NotFound

        missing = NotFound("no record")
        missing.result = _lookup()  # type: ignore[attr-defined]
        got = self.dht.getValue(b"k")
        self.kad.pending.pop().errback(missing)
        self.assertEqual(self.successResultOf(got)[0], None)
        self.assertEqual((self.dht.lookupLatency.count, self.dht.lookupFailures), (2, 1))
        d = self.dht.closestPeers(b"k")
        self.kad.pending.pop().errback(NodeStopped())
        self.failureResultOf(d, NodeStopped)
        self.assertEqual(self.dht.lookupLatency.count, 2)


class _NameDHT:
    """
    What L{NameService} needs of the DHT: every put is taken by two peers,
    and no name is held by anyone else.
    """

    def addValidator(self, namespace: str, validator: Any) -> None:
        pass

    def putValue(self, key: bytes, value: bytes) -> Deferred[int]:
        return succeed(2)

    def getValue(self, key: bytes) -> Deferred[tuple[None, dict[str, Any]]]:
        return succeed((None, {}))

    def whenBootstrapped(self) -> Deferred[None]:
        return succeed(None)


class NameTimesTests(SynchronousTestCase):
    """
    A registered name's status says when it was published and when it is
    due again.
    """

    def test_publishedAndNext(self) -> None:
        """
        C{publishedAt} is when the last publication ended and
        C{nextRepublish} when the republish timer fires; after the timer
        ran, both moved on by the interval; a stopped service has no next.
        """
        from beam.names.service import NameService

        clock = Clock()
        clock.advance(1_000_000)
        service = NameService(clock, Identity.generate(), _NameDHT(), Path(self.mktemp()),
                              lambda: [Multiaddr.fromString("/ip4/192.0.2.1/tcp/4001")], lambda: ["web"],
                              republishInterval=600)
        Path(service.home).mkdir(parents=True)
        service.startService()
        status = self.successResultOf(service.register("brave-otter-4821"))
        self.assertEqual((status.publishedAt, status.nextRepublish), (1_000_000, 1_000_600))
        clock.advance(600)
        (status,) = service.status()
        self.assertEqual((status.publishedAt, status.nextRepublish), (1_000_600, 1_001_200))
        service.stopService()
        (status,) = service.status()
        self.assertEqual((status.publishedAt, status.nextRepublish), (1_000_600, None))


class _FakeNode:
    peerID = "12D3KooWFake"


class _FakeDaemon:
    """
    A daemon as the collector sees it: a status and no services.
    """

    def __init__(self, status: DaemonStatus) -> None:
        self._status = status
        self.node = _FakeNode()
        self.services: dict[str, Any] = {}

    def status(self) -> DaemonStatus:
        return self._status

    def service(self, name: str) -> Any:
        return self.services[name]


class _FakeInspector:
    """
    The C{"requests"} service's part: a real store's status with set
    counters.
    """

    def status(self) -> Any:
        from twisted.internet.task import Clock

        from beam.tunnel.inspect.store import RequestStore

        store = RequestStore(Clock())
        store.captured, store.evicted, store.gaveUp, store.refused = 7, 2, 1, 3
        store._bytes = 4096
        return store.status()


class TextTests(SynchronousTestCase):
    """
    L{metricsText} from status values: what the parser reads back.
    """

    def daemon(self, tunnels: tuple[Any, ...] = (), forwards: tuple[Any, ...] = (),
               connections: tuple[ConnectionStatus, ...] = ()) -> _FakeDaemon:
        return _FakeDaemon(DaemonStatus(
            node=NodeStatus(peerID="12D3KooWFake", connections=connections),
            sections=(("tunnels", tunnels), ("forwards", forwards)),
        ))

    def test_contentType(self) -> None:
        """
        L{CONTENT_TYPE} is the library's latest text format, spelled out so
        that naming it imports nothing.
        """
        from prometheus_client import CONTENT_TYPE_LATEST

        self.assertEqual(CONTENT_TYPE, CONTENT_TYPE_LATEST)

    def test_labelsEscaped(self) -> None:
        """
        A tunnel name with quotes, backslashes, newlines and non-ASCII text
        (user input) reaches the parser intact, and cannot forge a series.
        """
        name = 'we"b\\x\nbeam_info{peer_id="evil"} 1\n\u00e9'
        tunnel = TunnelStatus(name=name, port=1, kind="tcp", target="127.0.0.1:1", compress=False, private=False,
                              share="s", connect="c", stats=TrafficStatus(bytesIn=5, bytesOut=6, total=1))
        text = metricsText(self.daemon(tunnels=(tunnel,)))
        families = parse(text)
        self.assertEqual(sample(families, "beam_tunnel_bytes_total", role="host", tunnel=name, direction="in"), 5)
        self.assertEqual(sample(families, "beam_tunnel_bytes_total", role="host", tunnel=name, direction="out"), 6)
        self.assertEqual(len(families["beam_info"].samples), 1)
        self.assertEqual(families["beam_info"].samples[0].labels["peer_id"], "12D3KooWFake")

    def test_everyFamilyHasHelp(self) -> None:
        """
        Without a DHT, names or inspector, the other families are there,
        each with HELP text; peer connections are counted by path and
        direction (every combination exported), streams summed, forwards
        under role "forward", and the dial counters are zero for a node
        without a dialer.
        """
        conns = (
            ConnectionStatus(peerID="a", direction="inbound", transport="tcp", limited=False, remoteAddr="",
                             localAddr="", security="", muxer="", streams=2),
            ConnectionStatus(peerID="b", direction="outbound", transport="tcp", limited=False, remoteAddr="",
                             localAddr="", security="", muxer="", streams=1, path="hole-punched"),
            ConnectionStatus(peerID="c", direction="outbound", transport="tor", limited=False, remoteAddr="",
                             localAddr="", security="", muxer="", streams=0),
            ConnectionStatus(peerID="d", direction="outbound", transport="relay", limited=True, remoteAddr="",
                             localAddr="", security="", muxer="", streams=0, path="relayed"),
        )
        fwd = ForwardStatus(name="8080", listen="127.0.0.1:8080", kind="tcp", peerID="p", service="web",
                            state="connected", stats=TrafficStatus(bytesIn=10, bytesOut=20, active=1, total=2))
        families = parse(metricsText(self.daemon(forwards=(fwd,), connections=conns)))
        expected = FAMILIES - {"beam_dht_lookups", "beam_dht_lookup_duration_seconds",
                               "beam_dht_routing_table_peers", "beam_dht_records_stored", "beam_names_registered"}
        self.assertLessEqual(expected, set(families))
        for family in families.values():
            self.assertTrue(family.documentation, family.name)
        self.assertEqual(sample(families, "beam_peer_connections", path="direct", direction="inbound"), 1)
        self.assertEqual(sample(families, "beam_peer_connections", path="holepunched", direction="outbound"), 1)
        self.assertEqual(sample(families, "beam_peer_connections", path="tor", direction="outbound"), 1)
        self.assertEqual(sample(families, "beam_peer_connections", path="relayed", direction="outbound"), 1)
        self.assertEqual(sample(families, "beam_peer_connections", path="direct", direction="outbound"), 0)
        self.assertEqual(len(families["beam_peer_connections"].samples), 10)
        self.assertEqual(sample(families, "beam_streams_open"), 3)
        self.assertEqual(sample(families, "beam_relay_circuits", role="client"), 1)
        self.assertEqual(sample(families, "beam_relay_circuits", role="hop"), 0)
        self.assertEqual(sample(families, "beam_tunnel_bytes_total", role="forward", tunnel="8080",
                                direction="out"), 20)
        self.assertEqual(sample(families, "beam_tunnel_connections_active", role="forward", tunnel="8080"), 1)
        self.assertEqual(sample(families, "beam_tunnel_connections_total", role="forward", tunnel="8080"), 2)
        self.assertEqual(sample(families, "beam_dial_attempts_total"), 0)
        self.assertEqual(sample(families, "beam_dial_failures_total", cause="refused"), 0)

    def test_inspector(self) -> None:
        """
        The inspector's counters come from the C{"requests"} service's
        status, read by field name.
        """
        daemon = self.daemon()
        daemon.services["requests"] = _FakeInspector()
        families = parse(metricsText(daemon))
        self.assertEqual(sample(families, "beam_inspector_requests_total"), 7)
        self.assertEqual(sample(families, "beam_inspector_evicted_total"), 2)
        self.assertEqual(sample(families, "beam_inspector_gave_up_total"), 1)
        self.assertEqual(sample(families, "beam_inspector_refused_total"), 3)
        self.assertEqual(sample(families, "beam_inspector_bytes"), 4096)

    def test_brokenPartSkipped(self) -> None:
        """
        A service whose figures cannot be read costs only its own metrics:
        the scrape still answers with the rest.
        """
        daemon = self.daemon()

        class Broken:
            def status(self) -> Any:
                raise RuntimeError("boom")

        daemon.services["requests"] = Broken()
        families = parse(metricsText(daemon))
        self.assertNotIn("beam_inspector_requests", families)
        self.assertIn("beam_info", families)
        self.flushLoggedErrors(RuntimeError)

    def test_peerPath(self) -> None:
        """
        Connection paths map onto the label's bounded set of values.
        """
        self.assertEqual(peerPath("hole-punched", "tcp"), "holepunched")
        self.assertEqual(peerPath("direct", "tor"), "tor")
        self.assertEqual(peerPath("turn", "turn"), "turn")
        self.assertEqual(peerPath("martian", "tcp"), "direct")


class LiveTests(TestCase):
    """
    Real daemons on loopback: the counters match what actually happened.
    """

    timeout = 60

    @inlineCallbacks
    def test_tunnelBytes(self):
        """
        N bytes sent through a real tunnel and echoed back show as N bytes
        in and N out on the host's tunnel and on the client's forward; the
        peer connection shows on both sides; a DHT lookup is in the
        histogram.
        """
        host = yield _startDaemon(self)
        client = yield _startDaemon(self)
        port = reactor.listenTCP(0, Factory.forProtocol(_Echo), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        tunnel = host.tunnels.exposePort(port.getHost().port, name="echo")
        fwd = yield client.forwards.add(tunnel.share)
        local = int(fwd.listen.rsplit(":", 1)[1])
        payload = bytes(range(256)) * 1000 + b"tail"
        got = yield _deferToThread(_sendAll, local, payload)
        self.assertEqual(got, payload)
        n = len(payload)

        def settled() -> bool:
            h = parse(metricsText(host))
            return sample(h, "beam_tunnel_connections_active", role="host", tunnel="echo") == 0

        yield _deferToThread(waitFor, settled, 10, "the host's tunnel connection closed", 0.05)
        h = parse(metricsText(host))
        self.assertEqual(sample(h, "beam_tunnel_bytes_total", role="host", tunnel="echo", direction="in"), n)
        self.assertEqual(sample(h, "beam_tunnel_bytes_total", role="host", tunnel="echo", direction="out"), n)
        self.assertEqual(sample(h, "beam_tunnel_connections_total", role="host", tunnel="echo"), 1)
        self.assertEqual(sample(h, "beam_peer_connections", path="direct", direction="inbound"), 1)
        c = parse(metricsText(client))
        name = fwd.name
        self.assertEqual(sample(c, "beam_tunnel_bytes_total", role="forward", tunnel=name, direction="out"), n)
        self.assertEqual(sample(c, "beam_tunnel_bytes_total", role="forward", tunnel=name, direction="in"), n)
        self.assertEqual(sample(c, "beam_peer_connections", path="direct", direction="outbound"), 1)
        self.assertGreaterEqual(sample(c, "beam_dial_attempts_total"), 1)
        self.assertEqual(sample(c, "beam_info", peer_id=str(client.node.peerID),
                                version=__import__("beam").__version__), 1)
        self.assertLessEqual(FAMILIES, set(c))
        try:
            client.service("requests")
        except KeyError:
            pass  # the inspector is not part of this daemon
        else:
            self.assertLessEqual({"beam_inspector_requests", "beam_inspector_evicted", "beam_inspector_gave_up",
                                  "beam_inspector_bytes"}, set(c))

        before = sample(c, "beam_dht_lookup_duration_seconds_count")
        try:
            yield client.kademlia.closestPeers(b"some key")
        except Exception:
            pass
        c = parse(metricsText(client))
        self.assertEqual(sample(c, "beam_dht_lookup_duration_seconds_count"), before + 1)
        self.assertEqual(sample(c, "beam_dht_lookups_total", result="success")
                         + sample(c, "beam_dht_lookups_total", result="failure"), before + 1)
        self.assertEqual(sample(c, 'beam_dht_lookup_duration_seconds_bucket', le="+Inf"), before + 1)
        self.assertEqual(client.kademlia.status().lookups, before + 1)

    @inlineCallbacks
    def test_refusedDial(self):
        """
        Dialling a closed loopback port counts one attempt and one failure
        whose cause is "refused".
        """
        daemon = yield _startDaemon(self)
        before = parse(metricsText(daemon))
        closed = Multiaddr.fromString(f"/ip4/127.0.0.1/tcp/{_freePort()}/p2p/{Identity.generate().peerID}")
        try:
            yield daemon.node.connect(closed)
        except DialError:
            pass
        else:
            self.fail("the dial to a closed port connected")
        after = parse(metricsText(daemon))
        self.assertEqual(sample(after, "beam_dial_attempts_total") - sample(before, "beam_dial_attempts_total"), 1)
        self.assertEqual(sample(after, "beam_dial_failures_total", cause="refused")
                         - sample(before, "beam_dial_failures_total", cause="refused"), 1)
        self.assertEqual(sum(s.value for s in after["beam_dial_failures"].samples)
                         - sum(s.value for s in before["beam_dial_failures"].samples), 1)


def _sendAll(port: int, payload: bytes) -> bytes:
    """
    Send C{payload} to 127.0.0.1:C{port} while reading the echo, then
    half-close and read the rest.
    """
    out = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.setblocking(True)
        view = memoryview(payload)
        while view:
            sent = s.send(view[:65536])
            view = view[sent:]
            s.settimeout(0.0)
            try:
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    out += chunk
            except BlockingIOError:
                pass
            s.settimeout(10)
        s.shutdown(socket.SHUT_WR)
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return bytes(out)
            out += chunk

