"""
Tests for port mapping (issue 9): the NAT-PMP codec and client, the UPnP
client's handling of miniupnpc, and L{PortMapper}'s life cycle.  The real
gateway (miniupnpd in the NAT lab) is L{PortMapLabTests}.
"""

from __future__ import annotations

import struct
from typing import Any, Optional

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from beam.identity.multiaddr import Multiaddr
from beam.p2p.nat import natpmp
from beam.p2p.nat.natpmp import (
    ExternalAddressResponse,
    MapResponse,
    NatPmpClient,
    NatPmpError,
    NatPmpRefused,
    NatPmpTimeout,
    decodeResponse,
    defaultGateway,
    encodeExternalAddressRequest,
    encodeMapRequest,
)
from beam.p2p.nat.portmap import (
    FIRST_RETRY,
    REMOVE_TIMEOUT,
    Mapped,
    NatPmpBackend,
    PortMapper,
    UpnpBackend,
    isBehindAnotherNat,
)
from beam.p2p.nat.upnp import UpnpClient, UpnpError

reactor: Any = _reactor


def mapAnswer(op: int = 2, result: int = 0, epoch: int = 7, internal: int = 4001, external: int = 4001,
              lifetime: int = 7200) -> bytes:
    return struct.pack("!BBHIHHI", 0, 128 + op, result, epoch, internal, external, lifetime)


def externalAnswer(address: bytes = bytes([203, 0, 113, 9]), result: int = 0, epoch: int = 7) -> bytes:
    return struct.pack("!BBHI4s", 0, 128, result, epoch, address)


class CodecTests(SynchronousTestCase):
    """
    The NAT-PMP messages of RFC 6886.
    """

    def test_requests(self) -> None:
        """
        Requests are laid out as in sections 3.2 and 3.3; a deletion is a
        mapping request with lifetime and external port 0.
        """
        self.assertEqual(encodeExternalAddressRequest(), b"\x00\x00")
        self.assertEqual(encodeMapRequest("tcp", 4001, 4002, 7200),
                         bytes.fromhex("0002 0000 0fa1 0fa2 00001c20".replace(" ", "")))
        self.assertEqual(encodeMapRequest("udp", 53, 0, 0)[:2], b"\x00\x01")
        self.assertRaises(ValueError, encodeMapRequest, "tcp", 0, 1, 1)
        self.assertRaises(ValueError, encodeMapRequest, "tcp", 1, 70000, 1)

    def test_answers(self) -> None:
        """
        Both answers decode to their fields.
        """
        self.assertEqual(decodeResponse(externalAnswer()), ExternalAddressResponse(0, 7, "203.0.113.9"))
        self.assertEqual(decodeResponse(mapAnswer(external=5000, lifetime=60)),
                         MapResponse("tcp", 0, 7, 4001, 5000, 60))
        self.assertEqual(decodeResponse(mapAnswer(op=1)).transport, "udp")

    def test_shortErrors(self) -> None:
        """
        A failure answer may stop after the epoch (its other fields are
        undefined); a success answer may not.
        """
        self.assertEqual(decodeResponse(mapAnswer(result=2)[:8]), MapResponse("tcp", 2, 7, 0, 0, 0))
        self.assertEqual(decodeResponse(externalAnswer(result=3)[:8]).result, 3)
        self.assertRaises(NatPmpError, decodeResponse, mapAnswer()[:15])
        self.assertRaises(NatPmpError, decodeResponse, externalAnswer()[:11])

    def test_rejects(self) -> None:
        """
        Other versions (PCP's 2), requests, unknown opcodes, fragments and
        oversized datagrams are refused with L{NatPmpError}.
        """
        for bad in [b"", b"\x00", b"\x02\x80\x00\x01" + bytes(20), b"\x00\x02" + bytes(10),
                    b"\x00\x85\x00\x00" + bytes(12), externalAnswer() + bytes(2000)]:
            self.assertRaises(NatPmpError, decodeResponse, bad)

    @settings(max_examples=500, deadline=None)
    @given(st.binary(max_size=64))
    def test_fuzz(self, data: bytes) -> None:
        """
        Any datagram decodes or raises L{NatPmpError}, nothing else.
        """
        try:
            decodeResponse(data)
        except NatPmpError:
            pass

    def test_defaultGateway(self) -> None:
        """
        The default gateway is read from C{/proc/net/route}'s
        little-endian hex; routes without a gateway, down routes and
        garbage are skipped.
        """
        table = (
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
            "eth0\t00000000\t00000000\t0001\t0\t0\t0\t00000000\t0\t0\t0\n"
            "junk\n"
            "eth0\tzzzz\t0101A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
            "eth0\t00000000\t0164A8C0\t0002\t0\t0\t0\t00000000\t0\t0\t0\n"
            "eth0\t0064A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
            "eth0\t00000000\t016433C6\t0003\t0\t0\t100\t00000000\t0\t0\t0\n"
        )
        self.assertEqual(defaultGateway(table), "198.51.100.1")
        self.assertIsNone(defaultGateway(table.splitlines()[0]))
        self.assertIsNone(natpmp.readDefaultGateway("/nonexistent/route"))


class FakeUdp:
    """
    A connected UDP transport that records what is written.
    """

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes, addr: object = None) -> None:
        self.written.append(data)


class ClientTests(SynchronousTestCase):
    """
    L{NatPmpClient} on a clock and a fake socket.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.client = NatPmpClient(self.clock)
        self.udp = FakeUdp()
        self.client.transport = self.udp  # type: ignore[assignment]

    def test_retransmitsThenTimesOut(self) -> None:
        """
        A request is resent after 250 ms, then 500 ms, 1 s (RFC 6886
        section 3.1), and fails with L{NatPmpTimeout} after its last wait.
        """
        d = self.client.externalAddress()
        self.assertEqual(len(self.udp.written), 1)
        for delay, sent in [(0.25, 2), (0.5, 3), (1.0, 4)]:
            self.clock.advance(delay - 0.01)
            self.assertEqual(len(self.udp.written), sent - 1)
            self.clock.advance(0.01)
            self.assertEqual(len(self.udp.written), sent)
        self.assertNoResult(d)
        self.clock.advance(2.0)
        self.failureResultOf(d, NatPmpTimeout)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_answer(self) -> None:
        """
        The matching answer fires the request; garbage and answers to
        another opcode are ignored; the epoch is kept.
        """
        d = self.client.addMapping("tcp", 4001, 4001, 7200)
        self.client.datagramReceived(b"\x01\x02garbage", ("198.51.100.1", 5351))
        self.client.datagramReceived(externalAnswer(), ("198.51.100.1", 5351))
        self.assertNoResult(d)
        self.client.datagramReceived(mapAnswer(epoch=99), ("198.51.100.1", 5351))
        self.assertEqual(self.successResultOf(d).externalPort, 4001)
        self.assertEqual(self.client.epoch, 99)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_refused(self) -> None:
        """
        A non-zero result fails the request with L{NatPmpRefused} naming
        the result.
        """
        d = self.client.addMapping("tcp", 4001, 4001, 7200)
        self.client.datagramReceived(mapAnswer(result=2)[:8], ("198.51.100.1", 5351))
        failure = self.failureResultOf(d, NatPmpRefused)
        self.assertEqual(failure.value.code, 2)
        self.assertIn("refused", str(failure.value))

    def test_oneAtATime(self) -> None:
        """
        A second request waits until the first is answered.
        """
        first = self.client.externalAddress()
        second = self.client.removeMapping("tcp", 4001)
        self.assertEqual(len(self.udp.written), 1)
        self.client.datagramReceived(externalAnswer(), ("198.51.100.1", 5351))
        self.successResultOf(first)
        self.assertEqual(self.udp.written[1], encodeMapRequest("tcp", 4001, 0, 0))
        self.client.datagramReceived(mapAnswer(external=0, lifetime=0), ("198.51.100.1", 5351))
        self.successResultOf(second)

    def test_portUnreachable(self) -> None:
        """
        ICMP port unreachable fails the request at once.
        """
        d = self.client.externalAddress()
        self.client.connectionRefused()
        self.failureResultOf(d, NatPmpError)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class FakeGateway(DatagramProtocol):
    """
    A NAT-PMP gateway on loopback that grants every mapping (on
    C{offset} + the suggested port) and remembers them.
    """

    noisy = False

    def __init__(self, offset: int = 0, refuse: int = 0, silent: bool = False) -> None:
        self.offset, self.refuse, self.silent = offset, refuse, silent
        self.mappings: dict[int, int] = {}
        self.requests: list[bytes] = []

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.requests.append(data)
        if self.silent:
            return
        if data == b"\x00\x00":
            self.transport.write(externalAnswer(), addr)
            return
        _, op, _, internal, external, lifetime = struct.unpack("!BBHHHI", data)
        if self.refuse:
            self.transport.write(mapAnswer(op=op, result=self.refuse)[:8], addr)
            return
        if lifetime == 0:
            self.mappings.pop(internal, None)
            self.transport.write(mapAnswer(op=op, internal=internal, external=0, lifetime=0), addr)
            return
        granted = self.mappings.setdefault(internal, external + self.offset)
        self.transport.write(mapAnswer(op=op, internal=internal, external=granted, lifetime=lifetime), addr)


class LoopbackTests(TestCase):
    """
    The NAT-PMP backend against a fake gateway on 127.0.0.1.
    """

    def gateway(self, **kwargs: Any) -> tuple[FakeGateway, int]:
        gw = FakeGateway(**kwargs)
        port = reactor.listenUDP(0, gw, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return gw, port.getHost().port

    async def test_mapAndRemove(self) -> None:
        """
        The backend asks for the external address and the mapping, and
        removing it deletes it on the gateway.
        """
        gw, port = self.gateway(offset=10)
        backend = NatPmpBackend(reactor, "127.0.0.1", port)
        self.addCleanup(backend.close)
        mapped = await backend.map(4001, 4001, 600)
        self.assertEqual(mapped, Mapped("natpmp", "203.0.113.9", 4011, 600))
        self.assertEqual(gw.mappings, {4001: 4011})
        await backend.unmap(4001, 4011)
        self.assertEqual(gw.mappings, {})

    async def test_portMapperOverLoopback(self) -> None:
        """
        A L{PortMapper} with the NAT-PMP backend reports the mapped
        address and removes the mapping when stopped.
        """
        gw, port = self.gateway()
        seen: list[Optional[Multiaddr]] = []
        got = Deferred[None]()
        mapper = PortMapper(reactor, 4001, backends=[NatPmpBackend(reactor, "127.0.0.1", port)],
                            onAddress=lambda a: (seen.append(a), got.callback(None) if not got.called else None))
        mapper.startService()
        await got
        self.assertEqual(seen, [Multiaddr.fromString("/ip4/203.0.113.9/tcp/4001")])
        self.assertEqual(mapper.status()["protocol"], "natpmp")
        await mapper.stopService()
        self.assertEqual(gw.mappings, {})
        self.assertEqual(seen[-1], None)

    async def test_silentGateway(self) -> None:
        """
        A gateway that never answers fails with L{NatPmpTimeout} after
        the client's few attempts.
        """
        gw, port = self.gateway(silent=True)
        backend = NatPmpBackend(reactor, "127.0.0.1", port, initialTimeout=0.01, attempts=3)
        self.addCleanup(backend.close)
        with self.assertRaises(NatPmpTimeout):
            await backend.map(4001, 4001, 600)
        self.assertEqual(len(gw.requests), 3)

    async def test_refusingGateway(self) -> None:
        """
        A gateway that refuses makes the mapping fail with the result
        code's meaning.
        """
        gw, port = self.gateway(refuse=2)
        backend = NatPmpBackend(reactor, "127.0.0.1", port)
        self.addCleanup(backend.close)
        with self.assertRaises(NatPmpRefused):
            await backend.map(4001, 4001, 600)


class FakeBackend:
    """
    A port mapping backend whose answers the test decides.
    """

    def __init__(self, name: str = "natpmp", ip: str = "203.0.113.9") -> None:
        self.name = name
        self.ip = ip
        self.calls: list[tuple[str, int, int, int]] = []
        self.pending: list[Deferred[Mapped]] = []
        self.fail: Optional[Exception] = None
        self.auto = True
        self.unmapped: list[int] = []
        self.unmapResult: Deferred[None] = succeed(None)
        self.closed = False

    def map(self, internalPort: int, externalPort: int, lifetime: int) -> Deferred[Mapped]:
        self.calls.append(("map", internalPort, externalPort, lifetime))
        if self.fail is not None:
            from twisted.internet.defer import fail

            return fail(self.fail)
        if self.auto:
            return succeed(Mapped(self.name, self.ip, externalPort, lifetime))  # type: ignore[arg-type]
        d: Deferred[Mapped] = Deferred()
        self.pending.append(d)
        return d

    def unmap(self, internalPort: int, externalPort: int) -> Deferred[None]:
        self.unmapped.append(externalPort)
        return self.unmapResult

    def close(self) -> None:
        self.closed = True


class PortMapperTests(SynchronousTestCase):
    """
    L{PortMapper}'s life cycle on a clock with fake backends.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.seen: list[Optional[Multiaddr]] = []

    def mapper(self, *backends: FakeBackend, **kwargs: Any) -> PortMapper:
        m = PortMapper(self.clock, 4001, backends=list(backends), onAddress=self.seen.append,  # type: ignore[arg-type]
                       **kwargs)
        m.startService()
        self.clock.advance(0)
        return m

    def test_maps(self) -> None:
        """
        Starting maps the listen port on the same external port and
        reports C{/ip4/EXT/tcp/PORT}; the status says how.
        """
        b = FakeBackend()
        m = self.mapper(b, lifetime=600)
        self.assertEqual(b.calls, [("map", 4001, 4001, 600)])
        self.assertEqual(self.seen, [Multiaddr.fromString("/ip4/203.0.113.9/tcp/4001")])
        self.assertEqual(m.status(), {"state": "mapped", "protocol": "natpmp", "internalPort": 4001,
                                      "externalAddr": "/ip4/203.0.113.9/tcp/4001", "expiresIn": 600.0,
                                      "lastError": None})

    def test_fallsBack(self) -> None:
        """
        When the first protocol fails the next is tried.
        """
        first, second = FakeBackend(), FakeBackend("upnp")
        first.fail = NatPmpTimeout("no answer")
        m = self.mapper(first, second)
        self.assertEqual(m.status()["protocol"], "upnp")
        self.assertEqual(len(self.seen), 1)

    def test_allFail(self) -> None:
        """
        When every protocol fails, the status says why and mapping is
        tried again later, less often each time.
        """
        a, b = FakeBackend(), FakeBackend("upnp")
        a.fail, b.fail = NatPmpTimeout("no answer"), UpnpError("no UPnP device answered on the LAN")
        m = self.mapper(a, b)
        self.assertEqual(m.status()["state"], "failed")
        self.assertEqual(m.status()["lastError"], "natpmp: no answer; upnp: no UPnP device answered on the LAN")
        self.assertEqual(self.seen, [])
        self.clock.advance(FIRST_RETRY)
        self.assertEqual(len(a.calls), 2)
        self.clock.advance(FIRST_RETRY)
        self.assertEqual(len(a.calls), 2)
        a.fail = None
        self.clock.advance(FIRST_RETRY)
        self.assertEqual(len(a.calls), 3)
        self.assertEqual(m.status()["state"], "mapped")

    def test_renewsAtHalfLife(self) -> None:
        """
        The mapping is renewed at half its lifetime, asking for the port
        the gateway gave; a new external port is reported.
        """
        b = FakeBackend()
        self.mapper(b, lifetime=600)
        self.clock.advance(299)
        self.assertEqual(len(b.calls), 1)
        b.ip = "203.0.113.10"
        self.clock.advance(1)
        self.assertEqual(b.calls[1], ("map", 4001, 4001, 600))
        self.assertEqual(self.seen[-1], Multiaddr.fromString("/ip4/203.0.113.10/tcp/4001"))
        self.clock.advance(300)
        self.assertEqual(len(b.calls), 3)
        self.assertEqual(len(self.seen), 2)

    def test_renewalFailsUntilExpiry(self) -> None:
        """
        A failed renewal is retried; when the mapping expires the address
        is withdrawn and mapping starts over.
        """
        b = FakeBackend()
        m = self.mapper(b, lifetime=120)
        b.fail = NatPmpTimeout("no answer")
        self.clock.advance(60)
        self.assertEqual(len(b.calls), 2)
        self.assertIn("renewing", m.status()["lastError"])
        self.assertEqual(len(self.seen), 1)
        for _ in range(10):
            self.clock.advance(30)
        self.assertEqual(self.seen[-1], None)
        self.assertIn(m.status()["state"], ("failed", "mapping"))

    def test_stopRemoves(self) -> None:
        """
        Stopping removes the mapping, withdraws the address, closes the
        backends and leaves no timer.
        """
        b = FakeBackend()
        m = self.mapper(b)
        d = m.stopService()
        self.successResultOf(d)
        self.assertEqual(b.unmapped, [4001])
        self.assertEqual(self.seen[-1], None)
        self.assertTrue(b.closed)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(m.status()["state"], "stopped")

    def test_stopWithSilentGateway(self) -> None:
        """
        A gateway that does not answer the removal delays stopping by at
        most L{REMOVE_TIMEOUT}, and the status says so.
        """
        b = FakeBackend()
        b.unmapResult = Deferred()
        m = self.mapper(b)
        d = m.stopService()
        self.assertNoResult(d)
        self.clock.advance(REMOVE_TIMEOUT)
        self.successResultOf(d)
        self.assertIn("did not answer", m.status()["lastError"])

    def test_stopWhileMapping(self) -> None:
        """
        Stopping while a request is out cancels it; nothing is reported.
        """
        b = FakeBackend()
        b.auto = False
        m = self.mapper(b)
        self.successResultOf(m.stopService())
        self.assertEqual(self.seen, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_doubleNat(self) -> None:
        """
        A gateway whose external address is private or carrier-grade NAT
        space maps, but the address is not reported: no stranger could
        use it.
        """
        m = self.mapper(FakeBackend(ip="100.64.0.2"))
        self.assertEqual(self.seen, [])
        self.assertIn("not public", m.status()["lastError"])
        self.assertTrue(isBehindAnotherNat("192.168.1.1"))
        self.assertFalse(isBehindAnotherNat("203.0.113.5"))
        self.assertTrue(isBehindAnotherNat("not an address"))

    def test_badArguments(self) -> None:
        """
        A port out of range or an unknown protocol is refused at once.
        """
        self.assertRaises(ValueError, PortMapper, self.clock, 0)
        self.assertRaises(ValueError, PortMapper, self.clock, 1, protocols=["pcp"])  # type: ignore[list-item]


class FakeMiniupnpc:
    """
    What L{UpnpClient} uses of C{miniupnpc.UPnP}, with scripted errors
    (miniupnpc raises plain L{Exception} with the UPnP error's name).
    """

    def __init__(self, devices: int = 1) -> None:
        self.devices = devices
        self.lanaddr = "198.51.100.2"
        self.added: list[tuple[Any, ...]] = []
        self.deleted: list[tuple[int, str]] = []
        self.addErrors: list[str] = []

    def discover(self) -> int:
        return self.devices

    def selectigd(self) -> str:
        return "http://198.51.100.1:5000/ctl/IPConn"

    def externalipaddress(self) -> str:
        return "203.0.113.9"

    def addportmapping(self, *args: Any) -> bool:
        if self.addErrors:
            raise Exception(self.addErrors.pop(0))
        self.added.append(args)
        return True

    def addanyportmapping(self, *args: Any) -> int:
        self.added.append(("any", *args))
        return 40001

    def deleteportmapping(self, port: int, proto: str) -> bool:
        self.deleted.append((port, proto))
        return True


def inline(f: Any, *args: Any) -> Deferred[Any]:
    from twisted.internet.defer import maybeDeferred

    return maybeDeferred(f, *args)


class UpnpTests(SynchronousTestCase):
    """
    L{UpnpClient} and L{UpnpBackend} over a fake miniupnpc, calls inline.
    """

    def client(self, fake: FakeMiniupnpc) -> UpnpClient:
        return UpnpClient(None, runInThread=inline, factory=lambda delay: fake)

    def test_map(self) -> None:
        """
        The backend discovers the gateway, maps our LAN address's port for
        the lifetime and removes it by external port.
        """
        fake = FakeMiniupnpc()
        backend = UpnpBackend(None, self.client(fake))
        mapped = self.successResultOf(backend.map(4001, 4001, 600))
        self.assertEqual(mapped, Mapped("upnp", "203.0.113.9", 4001, 600))
        self.assertEqual(fake.added, [(4001, "TCP", "198.51.100.2", 4001, "beam", "", 600)])
        self.successResultOf(backend.unmap(4001, 4001))
        self.assertEqual(fake.deleted, [(4001, "TCP")])

    def test_conflictAndPermanent(self) -> None:
        """
        A taken port gets any port (IGDv2); a gateway with permanent
        leases only gets lifetime 0.
        """
        fake = FakeMiniupnpc()
        client = self.client(fake)
        self.successResultOf(client.discover())
        fake.addErrors = ["ConflictInMappingEntry"]
        self.assertEqual(self.successResultOf(client.addMapping("tcp", 4001, 4001, 600)), 40001)
        fake.addErrors = ["OnlyPermanentLeasesSupported"]
        self.assertEqual(self.successResultOf(client.addMapping("tcp", 4001, 4001, 600)), 4001)
        self.assertEqual(fake.added[-1][-1], 0)

    def test_errors(self) -> None:
        """
        No device, no discovery yet, and gateway errors become
        L{UpnpError} naming the action, with long texts cut.
        """
        self.failureResultOf(self.client(FakeMiniupnpc(devices=0)).discover(), UpnpError)
        client = self.client(FakeMiniupnpc())
        self.failureResultOf(client.externalAddress(), UpnpError)
        self.successResultOf(client.discover())
        fake = client._upnp
        fake.addErrors = ["x" * 5000]
        failure = self.failureResultOf(client.addMapping("tcp", 1, 1, 1), UpnpError)
        self.assertIn("AddPortMapping", str(failure.value))
        self.assertLess(len(str(failure.value)), 300)

    def test_missingLibrary(self) -> None:
        """
        Without miniupnpc the error says which package to install.
        """
        def factory(delay: int) -> Any:
            raise UpnpError("UPnP port mapping needs the miniupnpc package")

        client = UpnpClient(None, runInThread=inline, factory=factory)
        self.assertIn("miniupnpc", str(self.failureResultOf(client.discover(), UpnpError).value))


_SERVE = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(8)
print("listening", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(b"home\\n")
    c.close()
"""

_CONNECT = """
import socket, sys
try:
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)
    print("ok:" + c.recv(100).decode().strip())
except OSError as e:
    print("fail:" + type(e).__name__)
"""


def _readLine(process: Any, timeout: float = 20) -> str:
    import select

    ready, _, _ = select.select([process.stdout], [], [], timeout)
    if not ready:
        raise AssertionError(f"no output within {timeout} s")
    return str(process.stdout.readline())


class PortMapLabTests(SynchronousTestCase):
    """
    Port mapping against miniupnpd on a home router of the NAT lab
    (root only; the lab refuses clearly, never skips): NAT-PMP and UPnP
    each map the home host's listen port, a public host reaches the
    listener through the router's WAN address, and stopping removes the
    mapping so the same connection attempt fails.
    """

    def test_miniupnpd(self) -> None:
        """
        Both protocols map, forward and unmap on a real gateway.
        """
        import json
        import subprocess
        import sys

        from beam.testing.labgateway import startMiniupnpd, startStunServer
        from beam.testing.netlab import NatLab

        lab = NatLab()
        self.addCleanup(lab.close)
        public = lab.addPublic("pub")
        home = lab.addHome("home", "portrestricted")
        assert home.router is not None
        gateway = startMiniupnpd(lab, home.router, startStunServer(lab))
        server = home.run([sys.executable, "-c", _SERVE, "4001"], stdout=subprocess.PIPE, text=True)
        self.assertEqual(_readLine(server).strip(), "listening")

        def connect(port: int) -> str:
            out = public.check_output([sys.executable, "-c", _CONNECT, home.router.wanAddr, str(port)], text=True)
            return str(out).strip()

        # Nothing is forwarded before a mapping exists.
        self.assertEqual(connect(4001), "fail:TimeoutError")
        for protocol in ("natpmp", "upnp"):
            mapper = home.run([sys.executable, "-m", "beam.p2p.nat.portmap", "4001", "--protocol", protocol,
                               "--lifetime", "600"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            event = json.loads(_readLine(mapper))
            self.assertEqual((event["event"], event["protocol"]), ("address", protocol), (event, gateway.logText()))
            self.assertEqual(event["externalAddr"], f"/ip4/{home.router.wanAddr}/tcp/4001")
            self.assertEqual(gateway.mappings(), [("tcp", 4001, home.addr, 4001)])
            self.assertEqual(connect(4001), "ok:home")
            mapper.stdin.close()
            events = [json.loads(line) for line in mapper.stdout]
            self.assertEqual(mapper.wait(timeout=10), 0)
            self.assertEqual(events[-1]["event"], "stopped")
            self.assertIsNone(events[-1]["lastError"])
            self.assertEqual(gateway.mappings(), [])
            self.assertEqual(connect(4001), "fail:TimeoutError")
