"""
Tests for L{beam.p2p.resources}: the resource manager's limits, its
accounting in nested scopes, and that nothing leaks whatever order
connections and streams are opened, refused, reset and closed in.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Optional, cast

import attr
from hypothesis import HealthCheck, given, settings, strategies as st
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, Logger
from twisted.trial.unittest import SynchronousTestCase

from beam.errors import BeamError
from beam.p2p.resources import (
    GiB,
    INBOUND,
    KiB,
    MiB,
    OUTBOUND,
    STREAM_WINDOW,
    UNLIMITED,
    BaseLimit,
    ConnectionScope,
    Limits,
    ResourceLimitExceeded,
    ResourceManager,
    StreamScope,
    Usage,
    defaultLimits,
    limitsFromTable,
    parseSize,
    unlimitedManager,
)

FIELDS = ("connsInbound", "connsOutbound", "streamsInbound", "streamsOutbound", "fd", "memory")

FREE = BaseLimit()


def _limits(**overrides: Any) -> Limits:
    """
    Unlimited limits except for C{overrides}.
    """
    base = Limits(
        system=FREE,
        transient=FREE,
        transientPerSource=UNLIMITED,
        connsPerSource=UNLIMITED,
        peer=FREE,
        allowedPeer=FREE,
        connection=FREE,
        stream=FREE,
    )
    return attr.evolve(base, **overrides)


def _manager(
    limits: Limits, clock: Any = None, logInterval: float = 10.0
) -> tuple[ResourceManager, list[dict[str, Any]]]:
    """
    A manager whose log lines are collected in the returned list.
    """
    events: list[dict[str, Any]] = []
    m = ResourceManager(limits, clock=clock, logInterval=logInterval)
    m.log = Logger(observer=cast(ILogObserver, events.append))
    return m, events


def _usage(scope: Any) -> dict[str, int]:
    u: Usage = scope.usage
    return {f: getattr(u, f) for f in FIELDS}


def _zero(**values: int) -> dict[str, int]:
    out = dict.fromkeys(FIELDS, 0)
    out.update(values)
    return out


# -- limits ------------------------------------------------------------------


class DefaultLimitsTests(SynchronousTestCase):
    """
    L{defaultLimits} derives every scope's limits from the descriptor limit
    and the machine's memory.
    """

    def test_fd1024(self) -> None:
        """
        With systemd's default of 1,024 descriptors, a quarter stays free
        (768 for the node), half of those may be connections, and one peer
        gets a sixteenth (48).
        """
        lim = defaultLimits(fdLimit=1024, memory=8 * GiB)
        self.assertEqual(lim.system.fd, 768)
        self.assertEqual(lim.system.conns, 384)
        self.assertEqual(lim.peer.fd, 48)
        self.assertEqual(lim.allowedPeer.fd, 192)
        self.assertEqual(lim.transient.conns, 128)
        self.assertEqual((lim.transient.connsInbound, lim.transient.connsOutbound), (64, 64))
        self.assertEqual(lim.transientPerSource, 8)

    def test_fewDescriptors(self) -> None:
        """
        A tiny descriptor limit is clamped up so the node can still work:
        at least 32 descriptors, 16 connections, 8 per peer.
        """
        lim = defaultLimits(fdLimit=10, memory=8 * GiB)
        self.assertEqual(lim.system.fd, 32)
        self.assertEqual(lim.system.conns, 16)
        self.assertEqual(lim.peer.fd, 8)

    def test_manyDescriptors(self) -> None:
        """
        Connections are capped at 1,024 however many descriptors there are.
        """
        lim = defaultLimits(fdLimit=1 << 20, memory=8 * GiB)
        self.assertEqual(lim.system.fd, (1 << 20) * 3 // 4)
        self.assertEqual(lim.system.conns, 1024)

    def test_memoryScales(self) -> None:
        """
        The node may use an eighth of the memory; streams are how many
        initial windows fit in it; a peer gets an eighth of that memory.
        """
        lim = defaultLimits(fdLimit=1024, memory=4 * GiB)
        self.assertEqual(lim.system.memory, 512 * MiB)
        self.assertEqual(lim.system.streams, 512 * MiB // STREAM_WINDOW)
        self.assertEqual(lim.peer.memory, 64 * MiB)
        self.assertEqual(lim.allowedPeer.memory, 256 * MiB)
        self.assertEqual(lim.connection.memory, lim.peer.memory)

    def test_memoryClamps(self) -> None:
        """
        The node's memory is between 64 MiB and 1 GiB, a peer's at least
        16 MiB, and streams between 256 and 16,384.
        """
        small = defaultLimits(fdLimit=1024, memory=100 * MiB)
        self.assertEqual(small.system.memory, 64 * MiB)
        self.assertEqual(small.system.streams, 256)
        self.assertEqual(small.peer.memory, 16 * MiB)
        big = defaultLimits(fdLimit=1024, memory=1024 * GiB)
        self.assertEqual(big.system.memory, GiB)
        self.assertEqual(big.system.streams, GiB // STREAM_WINDOW)
        self.assertLessEqual(big.system.streams, 16384)

    def test_allowedWithinSystem(self) -> None:
        """
        An allowed peer gets at least what any peer gets and never more
        than the whole node.
        """
        for fd, memory in [(10, 100 * MiB), (1024, 4 * GiB), (1 << 20, 1024 * GiB)]:
            lim = defaultLimits(fdLimit=fd, memory=memory)
            for name in ("conns", "streams", "streamsInbound", "streamsOutbound", "fd", "memory"):
                self.assertGreaterEqual(getattr(lim.allowedPeer, name), getattr(lim.peer, name), name)
                self.assertLessEqual(getattr(lim.allowedPeer, name), getattr(lim.system, name), name)

    def test_fromSystem(self) -> None:
        """
        Without arguments the limits are read from the process and the
        machine, and are finite.
        """
        lim = defaultLimits()
        self.assertLess(lim.system.fd, UNLIMITED)
        self.assertGreaterEqual(lim.system.memory, 64 * MiB)


class ParseSizeTests(SynchronousTestCase):
    """
    L{parseSize} reads byte counts in binary units.
    """

    def test_sizes(self) -> None:
        """
        Integers and strings with an optional binary unit are byte counts.
        """
        cases = {
            0: 0,
            1234: 1234,
            "64MiB": 64 * MiB,
            "512 KiB": 512 * KiB,
            "1G": GiB,
            "2gb": 2 * GiB,
            "10B": 10,
            "7": 7,
        }
        for text, expected in cases.items():
            self.assertEqual(parseSize(text), expected, text)

    def test_bad(self) -> None:
        """
        Booleans, negatives, floats and unknown units are refused.
        """
        for bad in [True, -1, 1.5, "lots", "-5MiB", "5TiB", None, ""]:
            self.assertRaises(ValueError, parseSize, bad)


class LimitsFromTableTests(SynchronousTestCase):
    """
    L{limitsFromTable} applies the C{[limits]} table of C{config.toml}.
    """

    def setUp(self) -> None:
        self.base = defaultLimits(fdLimit=1024, memory=8 * GiB)

    def test_empty(self) -> None:
        """
        An empty table changes nothing.
        """
        self.assertEqual(limitsFromTable({}, self.base), (self.base, []))

    def test_everyKey(self) -> None:
        """
        Every key of every scope's table sets its limit; what a table does
        not name keeps its old value.
        """
        table = {
            "conns": 1,
            "conns_inbound": 2,
            "conns_outbound": 3,
            "streams": 4,
            "streams_inbound": 5,
            "streams_outbound": 6,
            "fd": 7,
            "memory": 8,
        }
        for key, name in [
            ("system", "system"),
            ("transient", "transient"),
            ("peer", "peer"),
            ("allowed_peer", "allowedPeer"),
            ("connection", "connection"),
            ("stream", "stream"),
        ]:
            lim, problems = limitsFromTable({key: table}, self.base)
            self.assertEqual(problems, [])
            expected = BaseLimit(
                conns=1, connsInbound=2, connsOutbound=3, streams=4, streamsInbound=5, streamsOutbound=6, fd=7, memory=8
            )
            if name == "allowedPeer":
                # never less than a stranger gets
                expected = BaseLimit(
                    **{n: max(v, getattr(self.base.peer, n)) for n, v in attr.asdict(expected).items()}
                )
            self.assertEqual(getattr(lim, name), expected)
            lim, problems = limitsFromTable({key: {"fd": 300}}, self.base)
            self.assertEqual(getattr(lim, name), attr.evolve(getattr(self.base, name), fd=300))

    def test_memorySizes(self) -> None:
        """
        Memory may be written with a unit.
        """
        lim, problems = limitsFromTable({"system": {"memory": "64MiB"}, "peer": {"memory": "512 KiB"}}, self.base)
        self.assertEqual(problems, [])
        self.assertEqual(lim.system.memory, 64 * MiB)
        self.assertEqual(lim.peer.memory, 512 * KiB)

    def test_badValues(self) -> None:
        """
        A bad value is a problem named C{limits.SCOPE.KEY} and changes
        nothing; the rest of the table still applies.
        """
        lim, problems = limitsFromTable(
            {
                "peer": {"fd": -1, "streams": "many", "conns": True, "memory": "lots", "conns_inbound": 3},
                "system": {"memory": 1.5},
            },
            self.base,
        )
        self.assertEqual(lim.peer, attr.evolve(self.base.peer, connsInbound=3))
        self.assertEqual(lim.system, self.base.system)
        prefixes = sorted(p.split(":", 1)[0] for p in problems)
        self.assertEqual(
            prefixes,
            [
                "limits.peer.conns",
                "limits.peer.fd",
                "limits.peer.memory",
                "limits.peer.streams",
                "limits.system.memory",
            ],
        )

    def test_sizeOnlyForMemory(self) -> None:
        """
        A size string is only a memory value: counts must be integers.
        """
        lim, problems = limitsFromTable({"system": {"fd": "64MiB"}}, self.base)
        self.assertEqual(lim, self.base)
        self.assertEqual(len(problems), 1)
        self.assertTrue(problems[0].startswith("limits.system.fd: "), problems)

    def test_badKeys(self) -> None:
        """
        Unknown keys, at the top or in a scope, and scopes that are not
        tables are problems naming where they were.
        """
        lim, problems = limitsFromTable(
            {"sytem": {"fd": 1}, "peer": {"fds": 1}, "stream": 5, "protocol": 3, "service": {"web": []}}, self.base
        )
        self.assertEqual(attr.evolve(lim, services={}), self.base)
        self.assertEqual(lim.service("web"), self.base.serviceDefault)
        self.assertEqual(len(problems), 5, problems)
        self.assertTrue(any(p.startswith("limits: unknown key 'sytem'") for p in problems), problems)
        self.assertTrue(any(p.startswith("limits.peer: unknown key 'fds'") for p in problems), problems)
        self.assertIn("limits.stream: must be a table", problems)
        self.assertIn("limits.protocol: must be a table of tables", problems)
        self.assertIn("limits.service.web: must be a table", problems)

    def test_perSource(self) -> None:
        """
        C{per_source} in the transient table sets the per-source cap; it
        must be a whole number of 1 or more.
        """
        lim, problems = limitsFromTable({"transient": {"per_source": 4, "conns": 32}}, self.base)
        self.assertEqual(problems, [])
        self.assertEqual(lim.transientPerSource, 4)
        self.assertEqual(lim.transient.conns, 32)
        for bad in [0, -1, "4", True]:
            lim, problems = limitsFromTable({"transient": {"per_source": bad}}, self.base)
            self.assertEqual(lim.transientPerSource, self.base.transientPerSource)
            self.assertEqual(problems, ["limits.transient.per_source: must be a whole number, 1 or more"])

    def test_connsPerSource(self) -> None:
        """
        C{conns_per_source} in the system table caps all inbound
        connections from one source; it must be a whole number of 1 or
        more.
        """
        lim, problems = limitsFromTable({"system": {"conns_per_source": 5, "fd": 9}}, self.base)
        self.assertEqual(problems, [])
        self.assertEqual((lim.connsPerSource, lim.system.fd), (5, 9))
        self.assertEqual(lim.asJSON()["system"]["conns_per_source"], 5)
        for bad in [0, "5", False]:
            lim, problems = limitsFromTable({"system": {"conns_per_source": bad}}, self.base)
            self.assertEqual(lim.connsPerSource, self.base.connsPerSource)
            self.assertEqual(problems, ["limits.system.conns_per_source: must be a whole number, 1 or more"])

    def test_allowedPeerFloor(self) -> None:
        """
        Raising C{[limits.peer]} alone raises the allowed peers' limits
        too: an allowed peer never gets less than a stranger.
        """
        lim, problems = limitsFromTable({"peer": {"fd": 10_000}, "allowed_peer": {"memory": 1}}, self.base)
        self.assertEqual(problems, [])
        self.assertEqual(lim.allowedPeer.fd, 10_000)
        self.assertEqual(lim.allowedPeer.memory, self.base.peer.memory)

    def test_perSourceOnlyTransient(self) -> None:
        """
        C{per_source} means nothing in another scope's table.
        """
        lim, problems = limitsFromTable({"peer": {"per_source": 4}}, self.base)
        self.assertEqual(lim, self.base)
        self.assertEqual(len(problems), 1)
        self.assertTrue(problems[0].startswith("limits.peer: unknown key 'per_source'"))

    def test_protocolAndService(self) -> None:
        """
        C{protocol} and C{service} hold a C{default} table and tables for
        named protocols and services; a named table inherits what it does
        not name from the default, wherever the default is written.
        """
        for order in (["/kad", "default"], ["default", "/kad"]):
            tables = {"default": {"streams": 10, "fd": 3}, "/kad": {"streams_inbound": 5}}
            lim, problems = limitsFromTable({"protocol": {k: tables[k] for k in order}}, self.base)
            self.assertEqual(problems, [])
            self.assertEqual(lim.protocolDefault, BaseLimit(streams=10, fd=3))
            self.assertEqual(lim.protocol("/kad"), BaseLimit(streams=10, fd=3, streamsInbound=5))
            self.assertEqual(lim.protocol("/other"), lim.protocolDefault)
        lim, problems = limitsFromTable({"service": {"web": {"fd": "256"}, "ssh": {"fd": 2}}}, self.base)
        self.assertEqual(problems, ["limits.service.web.fd: must be a whole number, 0 or more"])
        self.assertEqual(lim.service("ssh"), BaseLimit(fd=2))
        self.assertEqual(lim.service("web"), BaseLimit())
        self.assertEqual(lim.service("other"), BaseLimit())

    def test_asJSON(self) -> None:
        """
        L{Limits.asJSON} spells the limits as the table does, with
        L{None} for unlimited.
        """
        lim, _ = limitsFromTable({"protocol": {"/kad": {"fd": 1}}, "service": {"default": {"memory": 5}}}, self.base)
        out = lim.asJSON()
        self.assertEqual(out["system"]["fd"], 768)
        self.assertEqual(out["transient"]["per_source"], 8)
        self.assertEqual(out["stream"]["conns"], None)
        self.assertEqual(out["protocol"]["/kad"]["fd"], 1)
        self.assertEqual(out["service"]["default"]["memory"], 5)


# -- accounting --------------------------------------------------------------


class ReserveTests(SynchronousTestCase):
    """
    Reservations succeed in every scope of their chain or in none.
    """

    def test_allOrNothing(self) -> None:
        """
        A stream refused by the system scope is not left counted in the
        connection or the peer it was tried in.
        """
        m, _ = _manager(_limits(system=BaseLimit(streams=1)))
        c = m.openConnection(OUTBOUND)
        c.setPeer("p")
        c.openStream(OUTBOUND)
        e = self.assertRaises(ResourceLimitExceeded, c.openStream, INBOUND)
        self.assertEqual((e.scope, e.resource, e.limit), ("system", "streams", 1))
        self.assertEqual(_usage(c.own), _zero(streamsOutbound=1))
        self.assertEqual(_usage(m.peerScope("p")), _zero(connsOutbound=1, fd=1, streamsOutbound=1))
        self.assertEqual(_usage(m.system), _zero(connsOutbound=1, fd=1, streamsOutbound=1))

    def test_isBeamError(self) -> None:
        """
        A refusal is a L{BeamError} whose message names scope, resource
        and limit.
        """
        e = ResourceLimitExceeded("peer x", "fd", 3)
        self.assertIsInstance(e, BeamError)
        self.assertEqual(str(e), "peer x: fd limit (3) reached")

    def _atLimit(self, limits: Limits, make: Any, scope: str, resource: str, limit: int) -> None:
        m, _ = _manager(limits)
        c = m.openConnection(OUTBOUND)
        c.setPeer("p")
        for _ in range(limit):
            make(m, c)
        e = self.assertRaises(ResourceLimitExceeded, make, m, c)
        self.assertEqual((e.scope, e.resource, e.limit), (scope, resource, limit))

    def test_connectionLimits(self) -> None:
        """
        Inbound, outbound and total connections are refused at exactly the
        limit, naming the scope and the resource.
        """
        for limit, direction, resource in [
            (BaseLimit(connsInbound=3), INBOUND, "conns_inbound"),
            (BaseLimit(connsOutbound=3), OUTBOUND, "conns_outbound"),
            (BaseLimit(conns=3), INBOUND, "conns"),
            (BaseLimit(conns=3), OUTBOUND, "conns"),
            (BaseLimit(fd=3), OUTBOUND, "fd"),
        ]:
            for scopeName in ("system", "transient"):
                m, _ = _manager(_limits(**{scopeName: limit}))
                for _ in range(3):
                    m.openConnection(direction)
                # without a descriptor a connection does not count against fd
                if resource != "fd":
                    e = self.assertRaises(ResourceLimitExceeded, m.openConnection, direction)
                    self.assertEqual((e.scope, e.resource, e.limit), (scopeName, resource, 3))
                else:
                    m.openConnection(direction, useFD=False)
                    e = self.assertRaises(ResourceLimitExceeded, m.openConnection, direction)
                    self.assertEqual((e.scope, e.resource, e.limit), (scopeName, "fd", 3))
                self.assertEqual(len(m.openConnections), 3 + (resource == "fd"))

    def test_mixedTotal(self) -> None:
        """
        The total connection limit counts both directions together.
        """
        m, _ = _manager(_limits(system=BaseLimit(conns=2)))
        m.openConnection(INBOUND)
        m.openConnection(OUTBOUND)
        for direction in (INBOUND, OUTBOUND):
            e = self.assertRaises(ResourceLimitExceeded, m.openConnection, direction)
            self.assertEqual(e.resource, "conns")

    def test_peerConnectionLimit(self) -> None:
        """
        A peer's connection limit refuses the connection that would pass
        it when the handshake names the peer.
        """
        m, _ = _manager(_limits(peer=BaseLimit(connsInbound=1)))
        m.openConnection(INBOUND).setPeer("p")
        c = m.openConnection(INBOUND)
        e = self.assertRaises(ResourceLimitExceeded, c.setPeer, "p")
        self.assertEqual((e.scope, e.resource, e.limit), ("peer p", "conns_inbound", 1))

    def test_streamLimits(self) -> None:
        """
        Inbound, outbound and total streams are refused at exactly the
        limit in each scope a stream counts in.
        """
        for scopeName, scopeKey in [("system", "system"), ("peer p", "peer"), ("connection", "connection")]:
            for limit, direction, resource in [
                (BaseLimit(streamsInbound=4), INBOUND, "streams_inbound"),
                (BaseLimit(streamsOutbound=4), OUTBOUND, "streams_outbound"),
                (BaseLimit(streams=4), INBOUND, "streams"),
                (BaseLimit(streams=4), OUTBOUND, "streams"),
            ]:
                self._atLimit(
                    _limits(**{scopeKey: limit}),
                    lambda m, c, d=direction: c.openStream(d),
                    scopeName,
                    resource,
                    4,
                )

    def test_fdLimits(self) -> None:
        """
        A stream's descriptors are refused at exactly the limit of the
        stream, its peer or the system (the connection's own descriptor
        counts in the peer and the system).
        """
        m, _ = _manager(_limits(stream=BaseLimit(fd=2)))
        s = m.openConnection(OUTBOUND).openStream(OUTBOUND)
        s.reserveFD()
        s.reserveFD()
        e = self.assertRaises(ResourceLimitExceeded, s.reserveFD)
        self.assertEqual((e.scope, e.resource, e.limit), ("stream", "fd", 2))
        self.assertEqual(s.fd, 2)
        m, _ = _manager(_limits(peer=BaseLimit(fd=3)))
        c = m.openConnection(OUTBOUND)
        c.setPeer("p")
        s = c.openStream(OUTBOUND)
        s.reserveFD()
        s.reserveFD()
        e = self.assertRaises(ResourceLimitExceeded, s.reserveFD)
        self.assertEqual((e.scope, e.resource, e.limit), ("peer p", "fd", 3))

    def test_memoryLimits(self) -> None:
        """
        Memory is refused at exactly the limit of the stream, connection,
        peer or system.
        """
        for scopeName, scopeKey in [
            ("stream", "stream"),
            ("connection", "connection"),
            ("peer p", "peer"),
            ("system", "system"),
        ]:
            m, _ = _manager(_limits(**{scopeKey: BaseLimit(memory=1000)}))
            c = m.openConnection(OUTBOUND)
            c.setPeer("p")
            s = c.openStream(INBOUND)
            s.reserveMemory(600)
            s.reserveMemory(400)
            e = self.assertRaises(ResourceLimitExceeded, s.reserveMemory, 1)
            self.assertEqual((e.scope, e.resource, e.limit), (scopeName, "memory", 1000))
            self.assertEqual(s.memory, 1000)
            s.releaseMemory(1)
            s.reserveMemory(1)

    def test_releaseTooMuch(self) -> None:
        """
        Releasing what was not reserved is a programming error, and
        changes nothing.
        """
        m = unlimitedManager()
        c = m.openConnection(OUTBOUND)
        s = c.openStream(OUTBOUND)
        c.reserveMemory(10)
        self.assertRaises(AssertionError, c.releaseMemory, 11)
        self.assertRaises(AssertionError, s.releaseMemory, 1)
        self.assertRaises(AssertionError, s.releaseFD)
        self.assertEqual(_usage(m.system), _zero(connsOutbound=1, fd=1, streamsOutbound=1, memory=10))


class RefusalLogTests(SynchronousTestCase):
    """
    Refusals are counted by kind and logged at most once per interval.
    """

    def _full(self, clock: Any) -> tuple[ResourceManager, list[dict[str, Any]], ConnectionScope]:
        m, events = _manager(_limits(peer=BaseLimit(streamsInbound=0)), clock=clock, logInterval=10)
        c = m.openConnection(OUTBOUND)
        c.setPeer("p")
        return m, events, c

    def test_counted(self) -> None:
        """
        Each refusal counts in L{ResourceManager.refusals} under
        C{"KIND RESOURCE"}.
        """
        m, _, c = self._full(Clock())
        for _ in range(3):
            self.assertRaises(ResourceLimitExceeded, c.openStream, INBOUND)
        self.assertEqual(m.refusals, Counter({"peer streams_inbound": 3}))
        self.assertEqual(m.status()["refusals"], {"peer streams_inbound": 3})

    def test_oncePerInterval(self) -> None:
        """
        The first refusal is logged; the next ones are not until the
        interval has passed, when one line reports how many there were.
        """
        clock = Clock()
        m, events, c = self._full(clock)
        self.assertRaises(ResourceLimitExceeded, c.openStream, INBOUND)
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0]["count"], 1)
        self.assertEqual(events[0]["scope"], "peer p")
        self.assertEqual(events[0]["resource"], "streams_inbound")
        for _ in range(5):
            clock.advance(1)
            self.assertRaises(ResourceLimitExceeded, c.openStream, INBOUND)
        self.assertEqual(len(events), 1)
        clock.advance(5)
        self.assertRaises(ResourceLimitExceeded, c.openStream, INBOUND)
        self.assertEqual(len(events), 2)
        self.assertEqual(events[1]["count"], 6)
        self.assertEqual(m.refusals["peer streams_inbound"], 7)

    def test_noClock(self) -> None:
        """
        Without a clock every refusal is logged.
        """
        m, events, c = self._full(None)
        for _ in range(3):
            self.assertRaises(ResourceLimitExceeded, c.openStream, INBOUND)
        self.assertEqual([e["count"] for e in events], [1, 1, 1])

    def test_tryReserveMemoryNotCounted(self) -> None:
        """
        L{ConnectionScope.tryReserveMemory} and
        L{StreamScope.tryReserveMemory} answer L{False} when there is no
        room, without counting or logging a refusal, and reserve nothing.
        """
        m, events = _manager(_limits(system=BaseLimit(memory=100)))
        c = m.openConnection(OUTBOUND)
        s = c.openStream(OUTBOUND)
        self.assertTrue(c.tryReserveMemory(60))
        self.assertFalse(c.tryReserveMemory(41))
        self.assertFalse(s.tryReserveMemory(41))
        self.assertTrue(s.tryReserveMemory(40))
        self.assertEqual((c.memory, s.memory, m.system.usage.memory), (60, 40, 100))
        self.assertEqual(m.refusals, Counter())
        self.assertEqual(events, [])


class TransientTests(SynchronousTestCase):
    """
    Inbound connections wait in the transient scope, with a cap per source,
    until the handshake names their peer.
    """

    def test_perSource(self) -> None:
        """
        A source may hold at most C{transientPerSource} inbound transient
        connections; other sources, outbound connections and exempt
        (source L{None}) connections are not affected.
        """
        m, _ = _manager(_limits(transientPerSource=2))
        m.openConnection(INBOUND, source="a")
        m.openConnection(INBOUND, source="a")
        e = self.assertRaises(ResourceLimitExceeded, m.openConnection, INBOUND, source="a")
        self.assertEqual((e.scope, e.resource, e.limit), ("transient source a", "per_source", 2))
        self.assertEqual(m.refusals, Counter({"transient per_source": 1}))
        m.openConnection(INBOUND, source="b")
        m.openConnection(OUTBOUND, source="a")
        m.openConnection(INBOUND)
        self.assertEqual(m.transient.usage.connsInbound, 4)

    def test_connsPerSource(self) -> None:
        """
        A source may hold at most C{connsPerSource} inbound connections,
        in the handshake or established; ending one frees its place.
        """
        m, _ = _manager(_limits(connsPerSource=2, transientPerSource=2))
        a = m.openConnection(INBOUND, source="a")
        a.setPeer("p")
        m.openConnection(INBOUND, source="a").setPeer("q")
        e = self.assertRaises(ResourceLimitExceeded, m.openConnection, INBOUND, source="a")
        self.assertEqual((e.scope, e.resource, e.limit), ("system source a", "conns_per_source", 2))
        self.assertEqual(m.refusals, Counter({"system conns_per_source": 1}))
        m.openConnection(INBOUND, source="b")
        m.openConnection(INBOUND)
        m.openConnection(OUTBOUND, source="a")
        a.done()
        m.openConnection(INBOUND, source="a")

    def test_perSourceReleasedBySetPeer(self) -> None:
        """
        Once the handshake named the peer, the connection no longer counts
        against its source.
        """
        m, _ = _manager(_limits(transientPerSource=1))
        c = m.openConnection(INBOUND, source="a")
        self.assertRaises(ResourceLimitExceeded, m.openConnection, INBOUND, source="a")
        c.setPeer("p")
        m.openConnection(INBOUND, source="a")
        c.done()
        self.assertRaises(ResourceLimitExceeded, m.openConnection, INBOUND, source="a")

    def test_perSourceReleasedByDone(self) -> None:
        """
        A connection that ends in the handshake no longer counts against
        its source, and the source is forgotten.
        """
        m, _ = _manager(_limits(transientPerSource=1))
        c = m.openConnection(INBOUND, source="a")
        c.done()
        self.assertEqual((m._sources, m._pendingSources), ({}, {}))
        m.openConnection(INBOUND, source="a")

    def test_perSourceRefusedBySystem(self) -> None:
        """
        A connection the system refuses does not count against its source.
        """
        m, _ = _manager(_limits(system=BaseLimit(conns=0), transientPerSource=1))
        self.assertRaises(ResourceLimitExceeded, m.openConnection, INBOUND, source="a")
        self.assertEqual((m._sources, m._pendingSources), ({}, {}))
        self.assertEqual(m.openConnections, set())

    def test_setPeerMoves(self) -> None:
        """
        L{ConnectionScope.setPeer} moves the connection, its descriptor,
        its memory and its streams from the transient scope to the peer's;
        the system's usage does not change.
        """
        m = unlimitedManager()
        c = m.openConnection(INBOUND, source="a")
        c.reserveMemory(100)
        s = c.openStream(INBOUND)
        s.reserveMemory(50)
        s.reserveFD()
        before = _usage(m.system)
        self.assertTrue(c.isTransient)
        c.setPeer("p")
        self.assertFalse(c.isTransient)
        self.assertEqual(c.peer, "p")
        self.assertEqual(_usage(m.transient), _zero())
        moved = _zero(connsInbound=1, fd=2, streamsInbound=1, memory=150)
        self.assertEqual(_usage(m.peerScope("p")), moved)
        self.assertEqual(_usage(m.system), before)
        s.done()
        c.done()
        self.assertEqual(_usage(m.system), _zero())
        self.assertEqual(m._peers, {})

    def test_setPeerTotalBothDirections(self) -> None:
        """
        A connection moving to its peer with streams in both directions is
        refused when together they pass the peer's total, even though each
        direction alone would fit.
        """
        m, _ = _manager(_limits(peer=BaseLimit(streams=3)))
        c = m.openConnection(OUTBOUND)
        for direction in (INBOUND, INBOUND, OUTBOUND, OUTBOUND):
            c.openStream(direction)
        e = self.assertRaises(ResourceLimitExceeded, c.setPeer, "p")
        self.assertEqual((e.scope, e.resource, e.limit), ("peer p", "streams", 3))
        self.assertTrue(c.isTransient)
        self.assertEqual(m._peers, {})

    def test_setPeerRefused(self) -> None:
        """
        A refused L{ConnectionScope.setPeer} leaves the connection where it
        was: in the transient scope, counted against its source, and the
        peer's scope it made is forgotten.
        """
        m, _ = _manager(_limits(peer=BaseLimit(memory=10), transientPerSource=2))
        c = m.openConnection(INBOUND, source="a")
        c.reserveMemory(11)
        transient, system = _usage(m.transient), _usage(m.system)
        e = self.assertRaises(ResourceLimitExceeded, c.setPeer, "p")
        self.assertEqual((e.scope, e.resource), ("peer p", "memory"))
        self.assertTrue(c.isTransient)
        self.assertEqual((_usage(m.transient), _usage(m.system)), (transient, system))
        self.assertEqual(m._peers, {})
        self.assertEqual((m._sources, m._pendingSources), ({"a": 1}, {"a": 1}))
        c.done()
        self.assertEqual((_usage(m.transient), _usage(m.system)), (_zero(), _zero()))
        self.assertEqual((m._sources, m._pendingSources), ({}, {}))

    def test_setPeerRefusedKeepsBusyPeer(self) -> None:
        """
        A refused L{ConnectionScope.setPeer} does not forget a peer scope
        that still holds the peer's other connections.
        """
        m, _ = _manager(_limits(peer=BaseLimit(conns=1)))
        first = m.openConnection(OUTBOUND)
        first.setPeer("p")
        c = m.openConnection(OUTBOUND)
        self.assertRaises(ResourceLimitExceeded, c.setPeer, "p")
        self.assertEqual(_usage(m._peers["p"]), _zero(connsOutbound=1, fd=1))

    def test_setPeerOnFinished(self) -> None:
        """
        Naming the peer of a finished connection is a programming error.
        """
        c = unlimitedManager().openConnection(OUTBOUND)
        c.done()
        self.assertRaises(AssertionError, c.setPeer, "p")


class AllowTests(SynchronousTestCase):
    """
    Peers in the allow list are held to L{Limits.allowedPeer}.
    """

    def test_allowDisallow(self) -> None:
        """
        L{ResourceManager.allow} switches a peer (already connected or not)
        to the allowed limits until every tag was disallowed.
        """
        m, _ = _manager(_limits(peer=BaseLimit(streams=1), allowedPeer=BaseLimit(streams=3)))
        c = m.openConnection(OUTBOUND)
        c.setPeer("p")
        c.openStream(OUTBOUND)
        self.assertRaises(ResourceLimitExceeded, c.openStream, OUTBOUND)
        m.allow("p", "tunnel")
        m.allow("p", "forward")
        self.assertTrue(m.isAllowed("p"))
        c.openStream(OUTBOUND)
        m.disallow("p", "tunnel")
        self.assertTrue(m.isAllowed("p"))
        c.openStream(OUTBOUND)
        m.disallow("p", "forward")
        self.assertFalse(m.isAllowed("p"))
        e = self.assertRaises(ResourceLimitExceeded, c.openStream, OUTBOUND)
        self.assertEqual(e.limit, 1)
        m.disallow("p", "forward")
        m.disallow("q", "tunnel")

    def test_allowBeforeConnecting(self) -> None:
        """
        A peer allowed before it connects gets the allowed limits when its
        scope is made, and keeps the allow list entry when the scope is
        forgotten.
        """
        m, _ = _manager(_limits(peer=BaseLimit(conns=1), allowedPeer=BaseLimit(conns=2)))
        m.allow("p", "t")
        for _ in range(2):
            m.openConnection(OUTBOUND).setPeer("p")
        c = m.openConnection(OUTBOUND)
        self.assertRaises(ResourceLimitExceeded, c.setPeer, "p")
        for conn in list(m.openConnections):
            conn.done()
        self.assertEqual(m._peers, {})
        self.assertEqual(m.status()["peers"]["allowed"], 1)


class StreamScopeTests(SynchronousTestCase):
    """
    Streams count in their protocol's and service's scopes once known.
    """

    def test_protocolAndService(self) -> None:
        """
        A stream's count, descriptors and memory join its protocol and
        service scopes, and later reservations count there too.
        """
        m = unlimitedManager()
        s = m.openConnection(OUTBOUND).openStream(INBOUND)
        s.reserveMemory(10)
        s.setProtocol("/tunnel")
        self.assertEqual(_usage(m.protocolScope("/tunnel")), _zero(streamsInbound=1, memory=10))
        s.setService("web")
        s.reserveFD()
        self.assertEqual(_usage(m.serviceScope("web")), _zero(streamsInbound=1, memory=10, fd=1))
        self.assertEqual(_usage(m.protocolScope("/tunnel")), _zero(streamsInbound=1, memory=10, fd=1))
        self.assertRaises(AssertionError, s.setProtocol, "/other")
        self.assertRaises(AssertionError, s.setService, "ssh")
        s.done()
        self.assertEqual((m._protocols, m._services), ({}, {}))

    def test_setProtocolRefused(self) -> None:
        """
        A stream its protocol refuses stays counted only where it was, and
        may still be given another protocol (or be reset).
        """
        m, _ = _manager(_limits(protocols={"/full": BaseLimit(streams=0)}))
        c = m.openConnection(OUTBOUND)
        s = c.openStream(OUTBOUND)
        s.reserveMemory(5)
        e = self.assertRaises(ResourceLimitExceeded, s.setProtocol, "/full")
        self.assertEqual((e.scope, e.resource), ("protocol /full", "streams"))
        self.assertEqual(m._protocols, {})
        self.assertIsNone(s.protocol)
        self.assertEqual(_usage(m.system), _zero(connsOutbound=1, fd=1, streamsOutbound=1, memory=5))
        s.setProtocol("/ok")
        self.assertEqual(_usage(m._protocols["/ok"]), _zero(streamsOutbound=1, memory=5))

    def test_setServiceRefused(self) -> None:
        """
        A stream its service refuses stays in its protocol's scope and not
        in the service's.
        """
        m, _ = _manager(_limits(serviceDefault=BaseLimit(memory=4)))
        s = m.openConnection(OUTBOUND).openStream(INBOUND)
        s.setProtocol("/tunnel")
        s.reserveMemory(5)
        e = self.assertRaises(ResourceLimitExceeded, s.setService, "web")
        self.assertEqual((e.scope, e.resource, e.limit), ("service web", "memory", 4))
        self.assertEqual(m._services, {})
        self.assertIsNone(s.service)
        self.assertEqual(_usage(m._protocols["/tunnel"]), _zero(streamsInbound=1, memory=5))
        s.done()
        self.assertEqual((m._protocols, m._services), ({}, {}))

    def test_serviceLimitWithoutProtocol(self) -> None:
        """
        A named service's limit applies to its streams; other services use
        the default.
        """
        m, _ = _manager(_limits(services={"ssh": BaseLimit(streams=1)}))
        c = m.openConnection(OUTBOUND)
        c.openStream(OUTBOUND).setService("ssh")
        self.assertRaises(ResourceLimitExceeded, c.openStream(OUTBOUND).setService, "ssh")
        c.openStream(OUTBOUND).setService("web")

    def test_busyScopesKept(self) -> None:
        """
        A protocol scope is forgotten only when its last stream ends.
        """
        m = unlimitedManager()
        c = m.openConnection(OUTBOUND)
        a, b = c.openStream(OUTBOUND), c.openStream(OUTBOUND)
        a.setProtocol("/x")
        b.setProtocol("/x")
        a.done()
        self.assertIn("/x", m._protocols)
        b.done()
        self.assertNotIn("/x", m._protocols)


class DoneTests(SynchronousTestCase):
    """
    L{ConnectionScope.done} and L{StreamScope.done} release everything,
    once.
    """

    def test_connectionDone(self) -> None:
        """
        Ending a connection ends its open streams and releases their
        descriptors and memory, its own memory, and itself; doing it again
        does nothing.
        """
        m = unlimitedManager()
        c = m.openConnection(INBOUND, source="a")
        c.setPeer("p")
        c.reserveMemory(7)
        streams = [c.openStream(d) for d in (INBOUND, OUTBOUND, INBOUND)]
        for i, s in enumerate(streams):
            s.reserveMemory(i)
            s.reserveFD()
            s.setProtocol(f"/p{i}")
            s.setService("web")
        streams[0].done()
        c.done()
        c.done()
        self.assertTrue(all(s.closed for s in streams))
        self.assertEqual(c.streams, set())
        for scope in (m.system, m.transient, c.own, *(s.own for s in streams)):
            self.assertEqual(_usage(scope), _zero(), scope.name)
        self.assertEqual((m._peers, m._protocols, m._services, m._sources, m._pendingSources), ({}, {}, {}, {}, {}))
        self.assertEqual(m.openConnections, set())

    def test_streamDoneTwice(self) -> None:
        """
        Ending a stream twice releases it once.
        """
        m = unlimitedManager()
        c = m.openConnection(OUTBOUND)
        s = c.openStream(INBOUND)
        other = c.openStream(INBOUND)
        s.reserveMemory(3)
        s.done()
        s.done()
        self.assertEqual(_usage(m.system), _zero(connsOutbound=1, fd=1, streamsInbound=1))
        other.done()

    def test_noReservationAfterDone(self) -> None:
        """
        A finished stream or connection reserves nothing more (what it
        reserved would never be released): C{tryReserveMemory} answers
        L{False}; the other reservations and L{ConnectionScope.openStream}
        are programming errors.
        """
        m = unlimitedManager()
        c = m.openConnection(OUTBOUND)
        s = c.openStream(OUTBOUND)
        c.setPeer("p")
        c.done()
        self.assertFalse(s.tryReserveMemory(1))
        self.assertFalse(c.tryReserveMemory(1))
        self.assertRaises(AssertionError, s.reserveMemory, 1)
        self.assertRaises(AssertionError, s.reserveFD)
        self.assertRaises(AssertionError, c.reserveMemory, 1)
        self.assertRaises(AssertionError, c.openStream, OUTBOUND)
        self.assertRaises(AssertionError, s.setProtocol, "/x")
        self.assertEqual(_usage(m.system), _zero())
        self.assertEqual(m._peers, {})

    def test_throwawayPeers(self) -> None:
        """
        Peer, protocol and service scopes are forgotten when they hold
        nothing, so connections from a thousand throwaway peer IDs leave
        the manager as small as it was.
        """
        m = unlimitedManager()
        for i in range(1000):
            c = m.openConnection(INBOUND, source=f"s{i}")
            c.setPeer(f"peer{i}")
            s = c.openStream(INBOUND)
            s.setProtocol(f"/proto/{i}")
            s.setService(f"svc{i}")
            c.done()
        self.assertEqual((m._peers, m._protocols, m._services, m._sources), ({}, {}, {}, {}))
        self.assertEqual(m.status()["peers"]["count"], 0)


class ManagerTests(SynchronousTestCase):
    """
    Limits changing at run time, and the status report.
    """

    def test_setLimits(self) -> None:
        """
        New limits apply to new reservations in every existing scope; what
        is held stays held.
        """
        m, _ = _manager(_limits())
        c = m.openConnection(OUTBOUND)
        c.setPeer("p")
        m.allow("q", "t")
        q = m.openConnection(OUTBOUND)
        q.setPeer("q")
        s = c.openStream(OUTBOUND)
        s.setProtocol("/x")
        s.setService("web")
        for _ in range(2):
            c.openStream(OUTBOUND)
        m.setLimits(
            _limits(
                system=BaseLimit(memory=100),
                transient=BaseLimit(conns=0),
                peer=BaseLimit(streams=2),
                allowedPeer=BaseLimit(streams=5),
                protocolDefault=BaseLimit(fd=0),
                serviceDefault=BaseLimit(memory=0),
            )
        )
        self.assertEqual(m.system.usage.streamsOutbound, 3)
        self.assertRaises(ResourceLimitExceeded, c.openStream, OUTBOUND)
        self.assertRaises(ResourceLimitExceeded, m.openConnection, INBOUND)
        self.assertRaises(ResourceLimitExceeded, s.reserveFD)
        e = self.assertRaises(ResourceLimitExceeded, s.reserveMemory, 1)
        self.assertEqual(e.scope, "service web")
        self.assertRaises(ResourceLimitExceeded, q.reserveMemory, 101)
        for _ in range(5):
            q.openStream(OUTBOUND)
        self.assertRaises(ResourceLimitExceeded, q.openStream, OUTBOUND)

    def test_status(self) -> None:
        """
        L{ResourceManager.status} reports the limits, the system's and
        transient scopes' usage, the busiest peers, each protocol and
        service, and the refusals.
        """
        m, _ = _manager(_limits(peer=BaseLimit(streamsInbound=2)))
        m.allow("x", "t")
        conns = []
        for i, n in enumerate([1, 0, 2]):
            c = m.openConnection(OUTBOUND)
            c.setPeer(f"p{i}")
            conns.append(c)
            for _ in range(n):
                c.openStream(INBOUND).setProtocol("/kad")
        conns[0].streams.copy().pop().setService("web")
        self.assertRaises(ResourceLimitExceeded, conns[2].openStream, INBOUND)
        m.openConnection(INBOUND, useFD=False)
        status = m.status(top=2)
        self.assertEqual(set(status), {"enabled", "limits", "system", "transient", "peers", "protocols", "services", "refusals"})
        self.assertEqual(status["limits"]["peer"]["streams_inbound"], 2)
        self.assertEqual(
            status["system"],
            {
                "conns_inbound": 1,
                "conns_outbound": 3,
                "streams_inbound": 3,
                "streams_outbound": 0,
                "fd": 3,
                "memory": 0,
            },
        )
        self.assertEqual(status["transient"]["conns_inbound"], 1)
        self.assertEqual(status["transient"]["fd"], 0)
        self.assertEqual(status["peers"]["count"], 3)
        self.assertEqual(status["peers"]["allowed"], 1)
        self.assertEqual([p["peer"] for p in status["peers"]["busiest"]], ["p2", "p0"])
        self.assertEqual(status["peers"]["busiest"][0]["streams_inbound"], 2)
        self.assertEqual(status["protocols"]["/kad"]["streams_inbound"], 3)
        self.assertEqual(status["services"], {"web": _zeroJSON(streams_inbound=1)})
        self.assertEqual(status["refusals"], {"peer streams_inbound": 1})

    def test_defaultManager(self) -> None:
        """
        A manager made without limits uses L{defaultLimits}.
        """
        self.assertEqual(ResourceManager().limits, defaultLimits())


def _zeroJSON(**values: int) -> dict[str, int]:
    out = dict.fromkeys(["conns_inbound", "conns_outbound", "streams_inbound", "streams_outbound", "fd", "memory"], 0)
    out.update(values)
    return out


# -- random sequences ----------------------------------------------------------

#: Small limits, so that random sequences are refused often, at every scope.
SMALL = Limits(
    system=BaseLimit(
        conns=6, connsInbound=4, connsOutbound=4, streams=10, streamsInbound=6, streamsOutbound=6, fd=10, memory=20000
    ),
    transient=BaseLimit(conns=4, connsInbound=3, connsOutbound=3, streams=4, fd=4, memory=8000),
    transientPerSource=2,
    connsPerSource=3,
    peer=BaseLimit(
        conns=2, connsInbound=2, connsOutbound=2, streams=4, streamsInbound=3, streamsOutbound=3, fd=4, memory=8000
    ),
    allowedPeer=BaseLimit(
        conns=3, connsInbound=3, connsOutbound=3, streams=6, streamsInbound=5, streamsOutbound=5, fd=6, memory=12000
    ),
    connection=BaseLimit(streams=3, memory=6000),
    stream=BaseLimit(fd=2, memory=3000),
    protocolDefault=BaseLimit(streams=3, streamsInbound=2, streamsOutbound=2, fd=2, memory=5000),
    protocols={"/b": BaseLimit(streams=1)},
    serviceDefault=BaseLimit(streams=2, fd=2),
    services={"ssh": BaseLimit(fd=1, memory=2000)},
)

PEERS = ["p0", "p1", "p2"]
SOURCES = ["s0", "s1", None]
PROTOCOLS = ["/a", "/b"]
SERVICES = ["web", "ssh"]
TAGS = ["t0", "t1"]
AMOUNTS = [0, 1, 500, 1000, 2500, 4000]

OPS = [
    "open",
    "setPeer",
    "openStream",
    "setProtocol",
    "setService",
    "connMemory",
    "connTryMemory",
    "connRelease",
    "streamMemory",
    "streamTryMemory",
    "streamRelease",
    "reserveFD",
    "releaseFD",
    "streamDone",
    "connDone",
    "allow",
    "disallow",
]

_TOTALS = {
    "connsInbound": ("connsInbound", "conns"),
    "connsOutbound": ("connsOutbound", "conns"),
    "streamsInbound": ("streamsInbound", "streams"),
    "streamsOutbound": ("streamsOutbound", "streams"),
    "fd": ("fd",),
    "memory": ("memory",),
}


def _value(usage: dict[str, int], limitName: str) -> int:
    if limitName == "conns":
        return usage["connsInbound"] + usage["connsOutbound"]
    if limitName == "streams":
        return usage["streamsInbound"] + usage["streamsOutbound"]
    return usage[limitName]


@attr.s(auto_attribs=True, eq=False)
class _MStream:
    """
    The test's own record of what a stream holds.
    """

    scope: StreamScope
    direction: str
    memory: int = 0
    fd: int = 0
    protocol: Optional[str] = None
    service: Optional[str] = None
    edges: list[tuple[str, str]] = attr.ib(factory=list)

    def held(self) -> dict[str, int]:
        return _zero(**{_dir("streams", self.direction): 1, "fd": self.fd, "memory": self.memory})


@attr.s(auto_attribs=True, eq=False)
class _MConn:
    """
    The test's own record of what a connection holds.
    """

    scope: ConnectionScope
    direction: str
    useFD: bool
    source: Any
    peer: Any = None
    memory: int = 0
    streams: list[_MStream] = attr.ib(factory=list)

    def base(self) -> dict[str, int]:
        return _zero(**{_dir("conns", self.direction): 1, "fd": int(self.useFD)})

    def inner(self) -> dict[str, int]:
        out = _zero(memory=self.memory)
        for s in self.streams:
            _addTo(out, s.held())
        return out


def _dir(kind: str, direction: str) -> str:
    return kind + ("Inbound" if direction == INBOUND else "Outbound")


def _addTo(out: dict[str, int], more: dict[str, int]) -> None:
    for f in FIELDS:
        out[f] += more[f]


class _Model:
    """
    Runs random operations on a manager with small limits while keeping
    its own account of every live connection and stream, and checks after
    each step that the manager's usage is what that account adds up to,
    that it refuses exactly what would not fit, and that nothing is
    negative or over its limit.
    """

    def __init__(self, test: SynchronousTestCase) -> None:
        self.test = test
        self.m, self.events = _manager(SMALL, clock=Clock())
        self.conns: list[_MConn] = []
        self.allowed: dict[str, set[str]] = {}
        self.refusals = 0

    # -- the expected state --

    def expected(self) -> dict[Any, dict[str, int]]:
        out: dict[Any, dict[str, int]] = {("system",): _zero(), ("transient",): _zero()}

        def add(key: Any, usage: dict[str, int]) -> None:
            _addTo(out.setdefault(key, _zero()), usage)

        for c in self.conns:
            owner = ("transient",) if c.peer is None else ("peer", c.peer)
            for key in (("system",), owner):
                add(key, c.base())
                add(key, c.inner())
            add(("conn", c), c.inner())
            for s in c.streams:
                add(("stream", s), s.held())
                if s.protocol is not None:
                    add(("protocol", s.protocol), s.held())
                if s.service is not None:
                    add(("service", s.service), s.held())
        return out

    def limit(self, key: Any) -> BaseLimit:
        kind = key[0]
        if kind == "peer":
            return SMALL.allowedPeer if key[1] in self.allowed else SMALL.peer
        if kind == "conn":
            return SMALL.connection
        if kind == "stream":
            return SMALL.stream
        if kind == "protocol":
            return SMALL.protocol(key[1])
        if kind == "service":
            return SMALL.service(key[1])
        limit: BaseLimit = getattr(SMALL, kind)
        return limit

    def scopeName(self, key: Any) -> str:
        return {"conn": "connection", "stream": "stream"}.get(key[0]) or " ".join(key)

    def actual(self) -> dict[Any, dict[str, int]]:
        m = self.m
        out: dict[Any, dict[str, int]] = {("system",): _usage(m.system), ("transient",): _usage(m.transient)}
        out.update({("peer", p): _usage(s) for p, s in m._peers.items()})
        out.update({("protocol", p): _usage(s) for p, s in m._protocols.items()})
        out.update({("service", n): _usage(s) for n, s in m._services.items()})
        for c in self.conns:
            out[("conn", c)] = _usage(c.scope.own)
            for s in c.streams:
                out[("stream", s)] = _usage(s.scope.own)
        return out

    def full(self, keys: list[Any], ask: dict[str, int]) -> Optional[tuple[Any, set[str]]]:
        """
        The first of C{keys} where C{ask} does not fit, and which of its
        limits it would pass; L{None} when it fits everywhere.
        """
        expected = self.expected()
        for key in keys:
            usage = expected.get(key, _zero())
            after = dict(usage)
            _addTo(after, ask)
            lim = self.limit(key)
            over = {
                name for f in FIELDS if ask[f] > 0 for name in _TOTALS[f] if _value(after, name) > getattr(lim, name)
            }
            if over:
                return key, over
        return None

    # -- running --

    def attempt(self, predicted: Optional[tuple[Any, set[str]]], action: Any, counts: bool = True) -> bool:
        """
        Run C{action}, which the model predicted to be refused by
        C{predicted} (or to succeed); check the manager agreed.
        """
        before = sum(self.m.refusals.values())
        try:
            action()
        except ResourceLimitExceeded as e:
            self.test.assertIsNotNone(predicted, f"refused unexpectedly: {e}")
            assert predicted is not None
            key, over = predicted
            self.test.assertEqual(e.scope, self.scopeName(key))
            self.test.assertIn(LIMIT_NAMES[e.resource], over)
            self.test.assertEqual(sum(self.m.refusals.values()), before + 1)
            return False
        self.test.assertIsNone(predicted, "should have been refused")
        self.test.assertEqual(sum(self.m.refusals.values()), before)
        return True

    def step(self, op: str, a: int, b: int) -> None:
        conns = [c for c in self.conns]
        streams = [s for c in self.conns for s in c.streams]
        if op == "open":
            direction = (INBOUND, OUTBOUND)[a % 2]
            source = SOURCES[b % 3]
            useFD = bool((a // 2) % 2)
            ask = _zero(**{_dir("conns", direction): 1, "fd": int(useFD)})
            predicted = self.full([("transient",), ("system",)], ask)
            if direction == INBOUND and source is not None:
                inbound = [c for c in conns if c.source == source and c.direction == INBOUND]
                if sum(1 for c in inbound if c.peer is None) >= SMALL.transientPerSource:
                    predicted = (("transient", "source", source), {"per_source"})
                elif len(inbound) >= SMALL.connsPerSource:
                    predicted = (("system", "source", source), {"conns_per_source"})
            made: list[ConnectionScope] = []
            if self.attempt(
                predicted, lambda: made.append(self.m.openConnection(direction, useFD=useFD, source=source))
            ):
                self.conns.append(_MConn(made[0], direction, useFD, source))
        elif op == "setPeer":
            transient = [c for c in conns if c.peer is None]
            if not transient:
                return
            c = transient[a % len(transient)]
            peer = PEERS[b % len(PEERS)]
            ask = c.base()
            _addTo(ask, c.inner())
            if self.attempt(self.full([("peer", peer)], ask), lambda: c.scope.setPeer(peer)):
                c.peer = peer
        elif op == "openStream":
            if not conns:
                return
            c = conns[a % len(conns)]
            direction = (INBOUND, OUTBOUND)[b % 2]
            ask = _zero(**{_dir("streams", direction): 1})
            made2: list[StreamScope] = []
            if self.attempt(self.full(self.connChain(c), ask), lambda: made2.append(c.scope.openStream(direction))):
                c.streams.append(_MStream(made2[0], direction))
        elif op in ("setProtocol", "setService"):
            attrName = "protocol" if op == "setProtocol" else "service"
            free = [s for s in streams if getattr(s, attrName) is None]
            if not free:
                return
            s = free[a % len(free)]
            names = PROTOCOLS if op == "setProtocol" else SERVICES
            name = names[b % len(names)]
            method = s.scope.setProtocol if op == "setProtocol" else s.scope.setService
            if self.attempt(self.full([(attrName, name)], s.held()), lambda: method(name)):
                setattr(s, attrName, name)
                s.edges.append((attrName, name))
        elif op in ("connMemory", "connTryMemory"):
            if not conns:
                return
            c = conns[a % len(conns)]
            n = AMOUNTS[b % len(AMOUNTS)]
            predicted = self.full(self.connChain(c), _zero(memory=n))
            if op == "connMemory":
                ok = self.attempt(predicted, lambda: c.scope.reserveMemory(n))
            else:
                before = sum(self.m.refusals.values())
                ok = c.scope.tryReserveMemory(n)
                self.test.assertEqual(ok, predicted is None)
                self.test.assertEqual(sum(self.m.refusals.values()), before)
            if ok:
                c.memory += n
        elif op in ("streamMemory", "streamTryMemory"):
            if not streams:
                return
            s = streams[a % len(streams)]
            n = AMOUNTS[b % len(AMOUNTS)]
            predicted = self.full(self.streamChain(s), _zero(memory=n))
            if op == "streamMemory":
                ok = self.attempt(predicted, lambda: s.scope.reserveMemory(n))
            else:
                before = sum(self.m.refusals.values())
                ok = s.scope.tryReserveMemory(n)
                self.test.assertEqual(ok, predicted is None)
                self.test.assertEqual(sum(self.m.refusals.values()), before)
            if ok:
                s.memory += n
        elif op == "connRelease":
            held = [c for c in conns if c.memory]
            if held:
                c = held[a % len(held)]
                n = 1 + b % c.memory
                c.scope.releaseMemory(n)
                c.memory -= n
        elif op == "streamRelease":
            held2 = [s for s in streams if s.memory]
            if held2:
                s = held2[a % len(held2)]
                n = 1 + b % s.memory
                s.scope.releaseMemory(n)
                s.memory -= n
        elif op == "reserveFD":
            if not streams:
                return
            s = streams[a % len(streams)]
            if self.attempt(self.full(self.streamChain(s), _zero(fd=1)), s.scope.reserveFD):
                s.fd += 1
        elif op == "releaseFD":
            withFD = [s for s in streams if s.fd]
            if withFD:
                s = withFD[a % len(withFD)]
                s.scope.releaseFD()
                s.fd -= 1
        elif op == "streamDone":
            if not streams:
                return
            s = streams[a % len(streams)]
            s.scope.done()
            if b % 4 == 0:
                s.scope.done()
            for c in conns:
                if s in c.streams:
                    c.streams.remove(s)
        elif op == "connDone":
            if not conns:
                return
            c = conns[a % len(conns)]
            c.scope.done()
            if b % 4 == 0:
                c.scope.done()
            self.conns.remove(c)
        elif op == "allow":
            peer = PEERS[a % len(PEERS)]
            tag = TAGS[b % len(TAGS)]
            self.m.allow(peer, tag)
            self.allowed.setdefault(peer, set()).add(tag)
        elif op == "disallow":
            peer = PEERS[a % len(PEERS)]
            tag = TAGS[b % len(TAGS)]
            self.m.disallow(peer, tag)
            tags = self.allowed.get(peer, set())
            tags.discard(tag)
            if not tags:
                self.allowed.pop(peer, None)
        else:
            raise AssertionError(op)

    def owner(self, c: _MConn) -> Any:
        return ("transient",) if c.peer is None else ("peer", c.peer)

    def connChain(self, c: _MConn) -> list[Any]:
        return [("conn", c), self.owner(c), ("system",)]

    def streamChain(self, s: _MStream) -> list[Any]:
        c = next(c for c in self.conns if s in c.streams)
        return [("stream", s), *self.connChain(c), *s.edges]

    def check(self, before: dict[Any, dict[str, int]]) -> None:
        """
        The invariants: the manager's usage is the model's, nothing is
        negative, nothing that grew is past its limit, no scope is over
        even the most generous limit it could have.
        """
        expected = self.expected()
        actual = self.actual()
        # scopes that hold nothing are not kept (but system and transient are)
        expected = {
            k: v for k, v in expected.items() if k[0] in ("system", "transient", "conn", "stream") or any(v.values())
        }
        self.test.assertEqual(actual, expected)
        for key, usage in actual.items():
            lim = self.limit(key)
            for f in FIELDS:
                self.test.assertGreaterEqual(usage[f], 0)
                for name in _TOTALS[f]:
                    value = _value(usage, name)
                    grew = value > _value(before.get(key, _zero()), name)
                    if grew:
                        self.test.assertLessEqual(value, getattr(lim, name), (key, name))
                    ceiling = SMALL.allowedPeer if key[0] == "peer" else lim
                    self.test.assertLessEqual(value, getattr(ceiling, name), (key, name))
        inbound = [c for c in self.conns if c.source is not None and c.direction == INBOUND]
        self.test.assertEqual(self.m._pendingSources, dict(Counter(c.source for c in inbound if c.peer is None)))
        self.test.assertEqual(self.m._sources, dict(Counter(c.source for c in inbound)))
        self.test.assertEqual(self.m.openConnections, {c.scope for c in self.conns})

    def run(self, ops: list[tuple[str, int, int]]) -> None:
        for op, a, b in ops:
            before = self.actual()
            self.step(op, a, b)
            self.check(before)
        # close everything, some streams first, then the connections
        for i, c in enumerate(list(self.conns)):
            if i % 2:
                for s in list(c.streams):
                    s.scope.done()
                    c.streams.remove(s)
            c.scope.done()
            self.conns.remove(c)
        m = self.m
        self.test.assertEqual(_usage(m.system), _zero())
        self.test.assertEqual(_usage(m.transient), _zero())
        self.test.assertEqual(
            (m._peers, m._protocols, m._services, m._sources, m._pendingSources), ({}, {}, {}, {}, {})
        )
        self.test.assertEqual(m.openConnections, set())


#: The limit attribute each refusal's resource name stands for.
LIMIT_NAMES = {
    "conns": "conns",
    "conns_inbound": "connsInbound",
    "conns_outbound": "connsOutbound",
    "streams": "streams",
    "streams_inbound": "streamsInbound",
    "streams_outbound": "streamsOutbound",
    "fd": "fd",
    "memory": "memory",
    "per_source": "per_source",
    "conns_per_source": "conns_per_source",
}

#: Opening is drawn more often than closing, so the limits are reached.
_op = st.tuples(
    st.sampled_from([*OPS, "open", "open", "setPeer", "openStream", "openStream"]),
    st.integers(0, 1000),
    st.integers(0, 1000),
)


class RandomSequenceTests(SynchronousTestCase):
    """
    Random sequences of opens, reservations, refusals, resets and closes
    never leak and never pass a limit.
    """

    def test_noLeak(self) -> None:
        """
        At least 10,000 random operations, in 100 sequences against small
        limits (so refusals happen at every scope): after each one the
        manager's usage in every scope is what the live connections and
        streams add up to, refusals are exactly what would not fit, and
        once everything is closed nothing is left.
        """
        lengths: list[int] = []

        @settings(
            max_examples=100,
            database=None,
            derandomize=True,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(ops=st.lists(_op, min_size=100, max_size=130))
        def run(ops: list[tuple[str, int, int]]) -> None:
            lengths.append(len(ops))
            _Model(self).run(ops)

        run()
        self.assertGreaterEqual(sum(lengths), 10000)
