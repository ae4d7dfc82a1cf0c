"""
Tests for L{beam.testing.netlab}: each NAT type of the lab behaves as its
name says, the routers drop unsolicited traffic without a word, and the lab
leaves nothing behind.

These are the lab's own proofs, so they use real sockets inside the lab's
network namespaces (root only; the lab refuses clearly, never skips).
Small Python scripts run inside the hosts and print what they saw as JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from beam.testing.netlab import NatLab, namespacesWithPrefix, sweepLeftovers

#: Serves UDP and TCP on one port; answers every datagram and every
#: connection with the source "ip:port" it saw.
_ECHO = r"""
import select, socket, sys
port = int(sys.argv[1])
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", port))
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("0.0.0.0", port)); t.listen(16)
print("ready", flush=True)
while True:
    for s in select.select([u, t], [], [])[0]:
        if s is u:
            data, peer = u.recvfrom(2048)
            u.sendto(("%s:%d" % peer).encode(), peer)
        else:
            c, peer = t.accept(); c.sendall(("%s:%d" % peer).encode()); c.close()
"""

#: From one UDP socket bound to argv[1], ask each "ip:port" target what
#: source it saw; prints {target: "ip:port" or null}.
_UDP_PROBE = r"""
import json, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", int(sys.argv[1])))
s.settimeout(0.3)
seen = {}
for target in sys.argv[2:]:
    ip, port = target.split(":"); seen[target] = None
    for attempt in range(5):
        s.sendto(b"probe", (ip, int(port)))
        try:
            data, peer = s.recvfrom(2048)
        except socket.timeout:
            continue
        if "%s:%d" % peer == target:
            seen[target] = data.decode(); break
print(json.dumps(seen), flush=True)
"""

#: Bound to argv[1]: learn our mapping from echo server argv[2], print it,
#: then report every datagram from anyone else for argv[3] seconds.
_UDP_LISTEN = r"""
import json, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", int(sys.argv[1])))
ip, port = sys.argv[2].split(":")
s.settimeout(0.3)
for attempt in range(5):
    s.sendto(b"probe", (ip, int(port)))
    try:
        data, peer = s.recvfrom(2048); break
    except socket.timeout:
        pass
print(data.decode(), flush=True)
end = time.monotonic() + float(sys.argv[3]); got = []
while time.monotonic() < end:
    try:
        data, peer = s.recvfrom(2048)
    except socket.timeout:
        continue
    if data != b"probe" or "%s:%d" % peer != sys.argv[2]:
        got.append("%s:%d" % peer)
print(json.dumps(got), flush=True)
"""

#: Send a few datagrams to argv[1] from local port argv[2] (0: any).
_UDP_SEND = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", int(sys.argv[2])))
ip, port = sys.argv[1].split(":")
for i in range(5):
    s.sendto(b"hello", (ip, int(port))); time.sleep(0.1)
"""

#: Probe argv[1] ("ip:port") with TCP and with a connected UDP socket for
#: argv[2] seconds each: {"tcp": "connected"|"refused"|"timeout",
#: "udp": "answered"|"refused"|"timeout"}.  "refused" means the other end
#: answered with a RST or an ICMP error.
_PROBE_CLOSED = r"""
import json, socket, sys
ip, port = sys.argv[1].split(":"); wait = float(sys.argv[2]); out = {}
t = socket.socket(); t.settimeout(wait)
try:
    t.connect((ip, int(port))); out["tcp"] = "connected"
except ConnectionRefusedError:
    out["tcp"] = "refused"
except (socket.timeout, TimeoutError):
    out["tcp"] = "timeout"
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(wait); u.connect((ip, int(port)))
try:
    u.send(b"x"); u.recv(100); out["udp"] = "answered"
except ConnectionRefusedError:
    out["udp"] = "refused"
except (socket.timeout, TimeoutError):
    out["udp"] = "timeout"
print(json.dumps(out), flush=True)
"""

#: TCP with a listener and outgoing connections on one port argv[1]
#: (SO_REUSEADDR + SO_REUSEPORT, as Beam dials): connect to the echo
#: server argv[2], print the source it saw, then accept for argv[3] s and
#: print every peer that connected.
_TCP_LISTEN = r"""
import json, socket, sys, time
def sock():
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1); s.bind(("0.0.0.0", int(sys.argv[1]))); return s
l = sock(); l.listen(8); l.settimeout(0.2)
c = sock(); c.settimeout(3); ip, port = sys.argv[2].split(":"); c.connect((ip, int(port)))
print(c.recv(100).decode(), flush=True)
end = time.monotonic() + float(sys.argv[3]); got = []
while time.monotonic() < end:
    try:
        a, peer = l.accept(); got.append("%s:%d" % peer); a.close()
    except socket.timeout:
        pass
print(json.dumps(got), flush=True)
"""

#: TCP simultaneous open: bound to argv[1] (SO_REUSEADDR + SO_REUSEPORT),
#: after argv[5] s connect to argv[2] ("ip:port") within argv[3] s,
#: exchange argv[4]: prints {"ok": bool, "peer": what the other side
#: said, "error": ...}.
_SIMOPEN = r"""
import json, socket, sys, time
time.sleep(float(sys.argv[5]))
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1); s.bind(("0.0.0.0", int(sys.argv[1])))
s.settimeout(float(sys.argv[3])); ip, port = sys.argv[2].split(":")
try:
    s.connect((ip, int(port))); s.sendall(sys.argv[4].encode())
    print(json.dumps({"ok": True, "peer": s.recv(100).decode()}), flush=True)
except OSError as e:
    print(json.dumps({"ok": False, "error": repr(e)}), flush=True)
"""

#: UDP hole punch: from port argv[1], send argv[3] to argv[2] ("ip:port")
#: every 0.1 s until something arrives from there (answering it once) or
#: argv[4] s pass; prints {"ok": bool, "peer": what arrived}.
_UDP_PUNCH = r"""
import json, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", int(sys.argv[1])))
ip, port = sys.argv[2].split(":"); s.settimeout(0.1); end = time.monotonic() + float(sys.argv[4])
while time.monotonic() < end:
    s.sendto(sys.argv[3].encode(), (ip, int(port)))
    try:
        data, peer = s.recvfrom(100)
    except socket.timeout:
        continue
    if peer == (ip, int(port)):
        for i in range(3):
            s.sendto(sys.argv[3].encode(), (ip, int(port)))
        print(json.dumps({"ok": True, "peer": data.decode()}), flush=True); break
else:
    print(json.dumps({"ok": False}), flush=True)
"""

#: The port every echo server listens on.
ECHO_PORT = 3478


class LabTestCase(SynchronousTestCase):
    """
    A fresh lab for each test, closed at its end.
    """

    def setUp(self) -> None:
        self.lab = NatLab()
        self.addCleanup(self.lab.close)

    def python(self, host: Any, script: str, *args: object) -> subprocess.Popen[str]:
        """
        Start C{script} with C{args} in C{host}, its stdout a text pipe.
        """
        return host.run([sys.executable, "-c", script, *map(str, args)], stdout=subprocess.PIPE, text=True)

    def pythonOutput(self, host: Any, script: str, *args: object) -> Any:
        """
        Run C{script} with C{args} in C{host} to the end; its last output
        line, parsed as JSON.
        """
        out = host.check_output([sys.executable, "-c", script, *map(str, args)], text=True)
        return json.loads(out.strip().splitlines()[-1])

    def echo(self, host: Any) -> str:
        """
        Start an echo server in C{host}; return its "ip:port".
        """
        p = self.python(host, _ECHO, ECHO_PORT)
        assert p.stdout is not None
        self.assertEqual(p.stdout.readline().strip(), "ready")
        return f"{host.addr}:{ECHO_PORT}"


class MappingTests(LabTestCase):
    """
    How a NAT maps one local port when the host talks to two destinations.
    """

    def mappings(self, nat: str) -> tuple[Any, list[str]]:
        """
        A home of type C{nat} probes two public echo servers from local
        port 40000; return the host and the two sources they saw.
        """
        a, b = self.echo(self.lab.addPublic("a")), self.echo(self.lab.addPublic("b"))
        home = self.lab.addHome("home", nat=nat)
        seen = self.pythonOutput(home, _UDP_PROBE, 40000, a, b)
        return home, [seen[a], seen[b]]

    def test_endpointIndependent(self) -> None:
        """
        Full cone, port-restricted (masquerade) and double NAT map one
        local port to one public ip:port whatever the destination, and
        keep the port number; a double NAT's traffic comes from the
        carrier NAT's address.
        """
        for nat in ("fullcone", "portrestricted", "double"):
            home, seen = self.mappings(nat)
            self.assertEqual(seen, [f"{home.publicAddr}:40000"] * 2, nat)
            self.lab.close()
            self.lab = NatLab()
            self.addCleanup(self.lab.close)

    def test_doubleNAT(self) -> None:
        """
        Behind a double NAT the host's traffic comes from the carrier
        NAT's internet address, not its home router's (100.64/10) one.
        """
        home, seen = self.mappings("double")
        assert home.router is not None and home.router.upstream is not None
        self.assertTrue(home.router.wanAddr.startswith("100.64."))
        self.assertEqual(home.publicAddr, home.router.upstream.wanAddr)
        self.assertEqual(seen[0].split(":")[0], home.router.upstream.wanAddr)

    def test_symmetric(self) -> None:
        """
        A symmetric NAT (masquerade fully-random) maps one local port to a
        different public port for each destination.
        """
        home, seen = self.mappings("symmetric")
        self.assertNotIn(None, seen)
        ips = {s.split(":")[0] for s in seen}
        ports = {s.split(":")[1] for s in seen}
        self.assertEqual(ips, {home.publicAddr})
        self.assertEqual(len(ports), 2)


class FilteringTests(LabTestCase):
    """
    Who may send to a mapping: after the home host talks to public A, do
    packets from A's other port and from another host B reach it?
    """

    def reached(self, nat: str) -> dict[str, bool]:
        """
        Open a UDP mapping from a home of type C{nat} to A's echo server,
        then send to it from A on another port and from B; return which
        got through.
        """
        a, b = self.lab.addPublic("a"), self.lab.addPublic("b")
        aEcho = self.echo(a)
        home = self.lab.addHome("home", nat=nat)
        listener = self.python(home, _UDP_LISTEN, 40000, aEcho, 1.5)
        assert listener.stdout is not None
        mapping = listener.stdout.readline().strip()
        a.check_output([sys.executable, "-c", _UDP_SEND, mapping, "41000"])
        b.check_output([sys.executable, "-c", _UDP_SEND, mapping, str(ECHO_PORT)])
        got = json.loads(listener.stdout.readline())
        return {"otherPort": f"{a.addr}:41000" in got, "otherHost": f"{b.addr}:{ECHO_PORT}" in got}

    def test_fullCone(self) -> None:
        """
        A full-cone NAT lets anyone send to an open mapping.
        """
        self.assertEqual(self.reached("fullcone"), {"otherPort": True, "otherHost": True})

    def test_portRestricted(self) -> None:
        """
        A port-restricted NAT (masquerade) lets only the exact ip:port the
        host sent to answer: neither another port of the same host nor
        another host gets through.
        """
        self.assertEqual(self.reached("portrestricted"), {"otherPort": False, "otherHost": False})

    def test_symmetric(self) -> None:
        """
        A symmetric NAT filters like a port-restricted one.
        """
        self.assertEqual(self.reached("symmetric"), {"otherPort": False, "otherHost": False})

    def test_fullConeTCP(self) -> None:
        """
        Behind a full-cone NAT, once a host dials out from its listen port
        (SO_REUSEPORT, as Beam does), any public host can connect to that
        port; behind a port-restricted one nobody else can.
        """
        for nat, expected in (("fullcone", True), ("portrestricted", False)):
            a, b = self.lab.addPublic("a"), self.lab.addPublic("b")
            aEcho = self.echo(a)
            home = self.lab.addHome("home", nat=nat)
            listener = self.python(home, _TCP_LISTEN, 4001, aEcho, 2.5)
            assert listener.stdout is not None
            mapping = listener.stdout.readline().strip()
            self.assertEqual(mapping, f"{home.publicAddr}:4001")
            result = self.pythonOutput(b, _PROBE_CLOSED, mapping, 1)
            self.assertEqual(result["tcp"], "connected" if expected else "timeout", nat)
            got = json.loads(listener.stdout.readline())
            self.assertEqual(bool(got), expected, nat)
            self.lab.close()
            self.lab = NatLab()
            self.addCleanup(self.lab.close)


class SilentDropTests(LabTestCase):
    """
    Routers drop unsolicited inbound traffic without an answer, as home
    routers do, so a probe times out instead of being refused.
    """

    def test_silentDrop(self) -> None:
        """
        A TCP connect or a UDP datagram from the internet to a router's
        WAN address, or to a port with no mapping, times out (no RST, no
        ICMP); the same probes against a public host's closed port are
        refused, which shows the probe tells the two apart.
        """
        prober, public = self.lab.addPublic("prober"), self.lab.addPublic("public")
        homes = [self.lab.addHome(nat, nat=nat) for nat in ("fullcone", "portrestricted", "symmetric", "double")]
        probes = [self.python(prober, _PROBE_CLOSED, f"{public.addr}:9", 1)]
        probes += [self.python(prober, _PROBE_CLOSED, f"{h.publicAddr}:{port}", 1) for h in homes for port in (22, 40000)]
        results = [json.loads(p.communicate(timeout=30)[0]) for p in probes]
        self.assertEqual(results[0], {"tcp": "refused", "udp": "refused"})
        for r in results[1:]:
            self.assertEqual(r, {"tcp": "timeout", "udp": "timeout"})


class HolePunchTests(LabTestCase):
    """
    What DCUtR relies on: two hosts behind NATs connect by dialling each
    other at the same time from their listen ports.
    """

    def simultaneousOpen(self, natA: str, natB: str, lag: float = 0, wait: float = 6,
                         script: str = _SIMOPEN) -> list[Any]:
        """
        Homes of types C{natA} and C{natB} dial each other's public
        address at once (bob C{lag} seconds after alice) from ports 4001
        and 4002 (masquerade keeps the port, so the public port is the
        local one).
        """
        alice, bob = self.lab.addHome("alice", nat=natA), self.lab.addHome("bob", nat=natB)
        if script is _SIMOPEN:
            pa = self.python(alice, script, 4001, f"{bob.publicAddr}:4002", wait, "alice", 0)
            pb = self.python(bob, script, 4002, f"{alice.publicAddr}:4001", wait, "bob", lag)
        else:
            pa = self.python(alice, script, 4001, f"{bob.publicAddr}:4002", "alice", wait)
            pb = self.python(bob, script, 4002, f"{alice.publicAddr}:4001", "bob", wait)
        return [json.loads(p.communicate(timeout=30)[0]) for p in (pa, pb)]

    def test_portRestrictedBothSides(self) -> None:
        """
        TCP simultaneous open works between two port-restricted NATs
        (Linux masquerade on both sides), with no low-TTL trick: the
        first SYN is dropped silently by the far router, and the far
        host's own SYN then opens both mappings.
        """
        self.assertEqual(self.simultaneousOpen("portrestricted", "portrestricted"),
                         [{"ok": True, "peer": "bob"}, {"ok": True, "peer": "alice"}])

    def test_portRestrictedLateSide(self) -> None:
        """
        It works too when one side dials half a second late: the early
        side's first SYN dies silently at the far router, and the late
        side's SYN meets the early side's mapping (TCP simultaneous open
        on the early host, no low TTL needed because routers answer
        nothing).
        """
        self.assertEqual(self.simultaneousOpen("portrestricted", "portrestricted", lag=0.5),
                         [{"ok": True, "peer": "bob"}, {"ok": True, "peer": "alice"}])

    def test_symmetricDefeatsPunch(self) -> None:
        """
        Against a symmetric NAT, dialling the predicted port fails: the
        symmetric side's SYN leaves from a random port the other router
        has no mapping for.
        """
        results = self.simultaneousOpen("symmetric", "portrestricted", wait=2)
        self.assertEqual([r["ok"] for r in results], [False, False])

    def test_udpPunch(self) -> None:
        """
        UDP hole punching works between two port-restricted NATs with
        ordinary TTLs (the far router drops early packets silently).
        """
        self.assertEqual(self.simultaneousOpen("portrestricted", "portrestricted", wait=5, script=_UDP_PUNCH),
                         [{"ok": True, "peer": "bob"}, {"ok": True, "peer": "alice"}])

    def test_doubleAndFullCone(self) -> None:
        """
        Simultaneous open also works between a double NAT and a full-cone
        NAT.
        """
        self.assertEqual(self.simultaneousOpen("double", "fullcone"),
                         [{"ok": True, "peer": "bob"}, {"ok": True, "peer": "alice"}])


class LifecycleTests(SynchronousTestCase):
    """
    The lab tears down everything it built, and only that.
    """

    def test_closeRemovesEverything(self) -> None:
        """
        After L{NatLab.close} no namespace with the lab's prefix remains
        and the processes started in it are dead; closing again is
        harmless.
        """
        lab = NatLab()
        self.addCleanup(lab.close)
        lab.addPublic("relay")
        home = lab.addHome("alice", nat="double")
        sleeper = home.run(["sleep", "60"])
        self.assertEqual(len(namespacesWithPrefix(lab.prefix)), 5)
        lab.close()
        self.assertEqual(namespacesWithPrefix(lab.prefix), [])
        self.assertIsNotNone(sleeper.poll())
        lab.close()

    def test_parallelLabs(self) -> None:
        """
        Two labs in one process get distinct prefixes, so the same host
        names do not collide, and closing one leaves the other alone.
        """
        one, two = NatLab(), NatLab()
        self.addCleanup(one.close)
        self.addCleanup(two.close)
        self.assertNotEqual(one.prefix, two.prefix)
        one.addPublic("relay")
        two.addPublic("relay")
        one.close()
        self.assertEqual(len(namespacesWithPrefix(two.prefix)), 2)

    def test_sweepLeftovers(self) -> None:
        """
        Namespaces left by a lab whose process died are swept; those of a
        live process are kept.
        """
        dead = subprocess.Popen(["true"])
        dead.wait()
        stale, live = f"bl{dead.pid}x0-stale", NatLab()
        self.addCleanup(live.close)
        subprocess.run(["ip", "netns", "add", stale], check=True)
        self.addCleanup(subprocess.run, ["ip", "netns", "delete", stale], capture_output=True)
        self.assertIn(stale, sweepLeftovers())
        self.assertEqual(namespacesWithPrefix(f"bl{dead.pid}x0"), [])
        self.assertEqual(len(namespacesWithPrefix(live.prefix)), 1)
