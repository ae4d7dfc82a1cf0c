"""
A NAT lab: a small Internet with home routers, built from Linux network
namespaces, veth pairs, a bridge and nftables, for the NAT-traversal tests
(issue 9).  Root only; see C{docs/nat-traversal.md}, "The lab".

Topology::

                        internet namespace  (bridge br0, no address)
                 203.0.113.0/24: the "public Internet"
      +-------------+----------------+-----------------+
      |             |                |                 |
    relay       alice-gw (WAN)    bob-gw (WAN)      carol-cgn (WAN)
    (none)       nftables NAT      nftables NAT      masquerade
                    |                |                 | 100.64.N.0/24
                  alice             bob              carol-gw (WAN 100.64.N.2)
              198.51.100.x/28   198.51.100.y/28        |
                                                     carol  198.51.100.z/28

Every interface lives inside a lab namespace: veths are created directly
in their namespaces, so the root namespace's links, addresses and routes
are never touched, and nothing can leave the lab.  Namespace names are
C{<prefix>-<name>}; the default prefix C{bl<pid>x<n>} names the owning
process, so parallel test processes never collide and a new lab removes
what crashed earlier runs left behind (only when their process is gone).

NAT types (the router's nftables rules are in L{_routerRules}):

  - C{"none"}: a public host, directly on the internet, no firewall;
  - C{"fullcone"}: endpoint-independent mapping and filtering: C{snat} to
    the WAN address (the source port is kept), and inbound packets to a
    port the host has sent from (a dynamic set, refreshed by every
    outbound packet, 5 min) are C{dnat}ed to the host;
  - C{"portrestricted"}: Linux C{masquerade}: endpoint-independent
    mapping (port kept), address-and-port-dependent filtering;
  - C{"symmetric"}: C{masquerade fully-random}: a new random port per
    destination;
  - C{"double"}: a port-restricted home router whose WAN is on a carrier
    network (100.64.0.0/10) behind a carrier NAT, itself a masquerade on
    the internet.

Every router drops unsolicited inbound traffic silently (no ICMP, no RST),
as home routers do.
"""

from __future__ import annotations

import errno
import ipaddress
import itertools
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from beam.errors import BeamError
from beam.testing.sysdeps import ensureCommands

__all__ = ["NAT_TYPES", "Host", "NatLab", "NatLabError", "Router"]

#: The NAT types L{NatLab.add} knows.
NAT_TYPES = ("none", "fullcone", "portrestricted", "symmetric", "double")

#: The lab's Internet (TEST-NET-3: public for Beam's addrScope).
INTERNET = ipaddress.ip_network("203.0.113.0/24")
#: Home LANs (TEST-NET-2: private for Beam's addrScope), one /28 per home.
HOMES = ipaddress.ip_network("198.51.100.0/24")
#: Carrier-grade NAT space (RFC 6598), one /24 per carrier.
CARRIER = ipaddress.ip_network("100.64.0.0/10")

#: How long one setup command may take.
_COMMAND_TIMEOUT = 20

#: Lab namespaces whose prefix names their process: C{bl<pid>x<n>-<name>}
#: (the default) or C{bl<pid>-<name>}.
_OURS = re.compile(r"^bl(\d+)(?:x\d+)?-")

_labNumbers = itertools.count()


class NatLabError(BeamError):
    """
    The NAT lab could not be built: this machine lacks something it needs.
    """


@dataclass
class Router:
    """
    A NAT router (a home router or a carrier NAT).

    @ivar ns: its namespace.
    @ivar nat: its NAT type (C{"fullcone"}, C{"portrestricted"} or
        C{"symmetric"}; a double NAT is two port-restricted routers).
    @ivar wanAddr: its address on its upstream network.
    @ivar lanAddr: its address on the network behind it.
    @ivar upstream: the carrier NAT in front of it, if any.
    """

    name: str
    ns: str
    nat: str
    wanAddr: str
    lanAddr: str
    upstream: Optional[Router] = None


@dataclass
class Host:
    """
    A machine in the lab.

    @ivar ns: its network namespace.
    @ivar addr: its own IPv4 address.
    @ivar publicAddr: the address the internet sees its traffic come
        from (its outermost router's WAN address), or L{None} for a
        public host (then it is L{addr}).
    @ivar nat: its NAT type, one of L{NAT_TYPES}.
    @ivar router: its home router, or L{None} for a public host.
    """

    lab: NatLab = field(repr=False)
    name: str
    ns: str
    addr: str
    nat: str
    publicAddr: Optional[str] = None
    router: Optional[Router] = None

    @property
    def reachableAddr(self) -> str:
        """
        The address others on the internet send to for this host: its
        public address, or its own when it is public.
        """
        return self.publicAddr or self.addr

    def argv(self, argv: Sequence[str]) -> list[str]:
        """
        C{argv} wrapped to run inside this host's namespace.
        """
        return ["ip", "netns", "exec", self.ns, *argv]

    def run(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """
        Start C{argv} inside this host; L{NatLab.close} kills it (by PID)
        if it still runs.  Keyword arguments go to L{subprocess.Popen}.
        """
        return self.lab._track(subprocess.Popen(self.argv(argv), **kwargs))

    def check_output(self, argv: Sequence[str], timeout: float = 30, **kwargs: Any) -> Any:
        """
        Run C{argv} inside this host to completion and return its output
        (L{subprocess.check_output}, with a timeout so a hung test ends).
        """
        return subprocess.check_output(self.argv(argv), timeout=timeout, **kwargs)


def _run(argv: Sequence[str], what: str, stdin: Optional[str] = None) -> None:
    """
    Run one setup command; a failure becomes a L{NatLabError} that says
    which part of the kernel or which tool let us down.
    """
    try:
        done = subprocess.run(list(argv), input=stdin, capture_output=True, text=True,
                              timeout=_COMMAND_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise NatLabError(f"NAT lab: {what} failed: {' '.join(argv)}: {e}") from e
    if done.returncode != 0:
        raise NatLabError(f"NAT lab: {what} failed: {' '.join(argv)}: {done.stderr.strip()}")


def pidAlive(pid: int) -> bool:
    """
    Whether process C{pid} exists (ours or not).
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _listNamespaces() -> list[str]:
    try:
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                             timeout=_COMMAND_TIMEOUT, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    # Lines look like "name" or "name (id: 3)".
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _deleteNamespace(ns: str) -> None:
    """
    Kill whatever still runs in C{ns} and delete it (a namespace lives
    on, unnamed, while a process holds it).
    """
    try:
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                              timeout=_COMMAND_TIMEOUT, check=False).stdout.split()
    except (OSError, subprocess.TimeoutExpired):
        pids = []
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ValueError, OSError):
            pass
    subprocess.run(["ip", "netns", "delete", ns], capture_output=True, timeout=_COMMAND_TIMEOUT, check=False)


def namespacesWithPrefix(prefix: str) -> list[str]:
    """
    The namespaces that exist now and belong to a lab with C{prefix}.
    """
    return [ns for ns in _listNamespaces() if ns.startswith(prefix + "-")]


def sweepLeftovers() -> list[str]:
    """
    Delete the namespaces of labs whose process died without closing
    them: names C{bl<pid>x<n>-...} or C{bl<pid>-...} whose C{pid} is gone.

    @return: the namespaces deleted.
    """
    swept = []
    for ns in _listNamespaces():
        m = _OURS.match(ns)
        if m and not pidAlive(int(m.group(1))):
            _deleteNamespace(ns)
            swept.append(ns)
    return swept


def _routerRules(nat: str, wanAddr: str, hostAddr: str) -> str:
    """
    The nftables ruleset of a router: interface C{wan} faces the
    internet (or the carrier), C{lan} the home.

    Inbound traffic that is neither a reply nor (for full cone) sent to a
    mapped port is dropped without an answer, in C{input} and
    C{forward} alike.
    """
    if nat == "fullcone":
        # Endpoint-independent filtering: any outside address may use a
        # mapping, so remember which (protocol, port) the host has sent
        # from and forward inbound packets to such ports.  snat keeps the
        # source port (one host behind), which makes the mapping
        # endpoint-independent too.
        mapped = (
            "  set mapped { type inet_proto . inet_service; flags dynamic, timeout; timeout 5m; }\n"
            "  chain track { type filter hook prerouting priority mangle; policy accept;\n"
            f"    iifname \"lan\" ip saddr {hostAddr} meta l4proto {{ tcp, udp }}"
            " update @mapped { meta l4proto . th sport timeout 5m }\n"
            "  }\n"
            "  chain inbound { type nat hook prerouting priority dstnat; policy accept;\n"
            f"    iifname \"wan\" ip daddr {wanAddr} meta l4proto . th dport @mapped dnat to {hostAddr}\n"
            "  }\n"
        )
        outbound = f"snat to {wanAddr}"
        allowMapped = "    ct status dnat accept\n"
    elif nat == "portrestricted":
        mapped, outbound, allowMapped = "", "masquerade", ""
    elif nat == "symmetric":
        mapped, outbound, allowMapped = "", "masquerade fully-random", ""
    else:
        raise NatLabError(f"unknown router NAT type {nat!r}")
    return (
        "table ip beamlab {\n"
        f"{mapped}"
        "  chain outbound { type nat hook postrouting priority srcnat; policy accept;\n"
        f"    oifname \"wan\" {outbound}\n"
        "  }\n"
        "  chain input { type filter hook input priority filter; policy drop;\n"
        "    iif \"lo\" accept\n"
        "    ct state invalid drop\n"
        "    ct state established,related accept\n"
        "    iifname \"lan\" accept\n"
        "  }\n"
        "  chain forward { type filter hook forward priority filter; policy drop;\n"
        "    ct state invalid drop\n"
        "    ct state established,related accept\n"
        "    iifname \"lan\" oifname \"wan\" accept\n"
        f"{allowMapped}"
        "  }\n"
        "}\n"
    )


#: Sysctls of every lab namespace: no IPv6 (no DAD or router
#: solicitations to wait for or to leak), forwarding where routing.
_SYSCTLS = ["net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"]


class NatLab:
    """
    A lab Internet with public hosts and homes behind NATs.

    Use L{add} (or L{addPublic}, L{addHome}) to add machines, L{Host.run}
    to start programs in them, and L{close} (idempotent) to tear it all
    down.  Root only.

    @ivar prefix: the prefix of every namespace of this lab.
    @ivar hosts: the hosts by name.
    @ivar routers: the routers by name.
    """

    def __init__(self, prefix: Optional[str] = None) -> None:
        if os.geteuid() != 0:
            raise NatLabError("the NAT lab needs root (network namespaces and nftables)")
        if not sys.platform.startswith("linux"):
            raise NatLabError("the NAT lab needs Linux network namespaces")
        ensureCommands({"nft": "nftables", "ip": "iproute2"})
        sweepLeftovers()
        self.prefix = prefix or f"bl{os.getpid()}x{next(_labNumbers)}"
        self.hosts: dict[str, Host] = {}
        self.routers: dict[str, Router] = {}
        self._namespaces: list[str] = []
        self._processes: list[subprocess.Popen[Any]] = []
        self._nextPublic = 2
        self._nextHome = 0
        self._nextCarrier = 0
        self._nextPort = 0
        self._closed = False
        self.internet = self._namespace("internet")
        try:
            _run(["ip", "-n", self.internet, "link", "add", "br0", "type", "bridge"], "creating the internet's bridge")
            _run(["ip", "-n", self.internet, "link", "set", "br0", "up"], "bringing the internet's bridge up")
        except BaseException:
            self.close()
            raise

    # -- building --------------------------------------------------------

    def _namespace(self, name: str, *, forward: bool = False) -> str:
        ns = f"{self.prefix}-{name}"
        if ns in self._namespaces:
            raise NatLabError(f"the lab already has a machine named {name!r}")
        try:
            done = subprocess.run(["ip", "netns", "add", ns], capture_output=True, text=True,
                                  timeout=_COMMAND_TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise NatLabError(f"NAT lab: network namespaces unavailable (ip netns add {ns}): {e}") from e
        if done.returncode != 0:
            raise NatLabError(f"NAT lab: network namespaces unavailable (ip netns add {ns}): {done.stderr.strip()}")
        self._namespaces.append(ns)
        sysctls = _SYSCTLS + (["net.ipv4.ip_forward=1"] if forward else [])
        _run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", *sysctls], f"setting sysctls in {ns}")
        _run(["ip", "-n", ns, "link", "set", "lo", "up"], f"bringing up lo in {ns}")
        return ns

    def _internetAddr(self) -> str:
        if self._nextPublic > 254:
            raise NatLabError("the lab's internet (203.0.113.0/24) is full")
        addr = str(INTERNET[self._nextPublic])
        self._nextPublic += 1
        return addr

    def _plug(self, ns: str, ifname: str, addr: str, prefixlen: int) -> None:
        """
        Connect C{ns} to the internet's bridge through a veth pair whose
        ends are created directly inside the two namespaces.
        """
        port = f"p{self._nextPort}"
        self._nextPort += 1
        _run(["ip", "-n", self.internet, "link", "add", port, "type", "veth", "peer", "name", ifname, "netns", ns],
             "creating a veth pair (veth driver)")
        _run(["ip", "-n", self.internet, "link", "set", port, "master", "br0", "up"], "bridging a veth")
        self._address(ns, ifname, addr, prefixlen)

    def _address(self, ns: str, ifname: str, addr: str, prefixlen: int, gateway: Optional[str] = None) -> None:
        _run(["ip", "-n", ns, "addr", "add", f"{addr}/{prefixlen}", "dev", ifname], f"addressing {ifname} in {ns}")
        _run(["ip", "-n", ns, "link", "set", ifname, "up"], f"bringing up {ifname} in {ns}")
        if gateway is not None:
            _run(["ip", "-n", ns, "route", "add", "default", "via", gateway], f"routing {ns}")

    def _link(self, nsA: str, ifA: str, nsB: str, ifB: str) -> None:
        _run(["ip", "-n", nsA, "link", "add", ifA, "type", "veth", "peer", "name", ifB, "netns", nsB],
             "creating a veth pair (veth driver)")

    def _firewall(self, ns: str, rules: str) -> None:
        _run(["ip", "netns", "exec", ns, "nft", "-f", "-"],
             f"loading nftables rules in {ns} (kernel modules nf_tables, nft_nat, nft_masq, nft_ct)", stdin=rules)

    def _router(self, name: str, nat: str, wanAddr: str, wanPrefix: int, wanGateway: Optional[str],
                lanAddr: str, lanPrefix: int, hostAddr: str, upstream: Optional[Router] = None) -> Router:
        ns = self._namespace(name, forward=True)
        if upstream is None:
            self._plug(ns, "wan", wanAddr, wanPrefix)
            if wanGateway is None:
                _run(["ip", "-n", ns, "route", "add", "default", "dev", "wan"], f"routing {ns}")
        else:
            self._link(upstream.ns, "lan", ns, "wan")
            self._address(upstream.ns, "lan", upstream.lanAddr, wanPrefix)
            self._address(ns, "wan", wanAddr, wanPrefix, gateway=wanGateway)
        self._firewall(ns, _routerRules(nat, wanAddr, hostAddr))
        router = Router(name=name, ns=ns, nat=nat, wanAddr=wanAddr, lanAddr=lanAddr, upstream=upstream)
        self.routers[name] = router
        return router

    def add(self, name: str, nat: str = "none") -> Host:
        """
        Add a host with NAT type C{nat} (one of L{NAT_TYPES}).
        """
        if nat == "none":
            return self.addPublic(name)
        return self.addHome(name, nat)

    def addPublic(self, name: str) -> Host:
        """
        Add a public host directly on the internet (NAT type C{"none"}).
        """
        self._checkOpen()
        ns = self._namespace(name)
        addr = self._internetAddr()
        self._plug(ns, "eth0", addr, INTERNET.prefixlen)
        # Everything is on one link; a default route lets programs that
        # ask the kernel for "the" outgoing address find it.
        _run(["ip", "-n", ns, "route", "add", "default", "dev", "eth0"], f"routing {ns}")
        host = Host(lab=self, name=name, ns=ns, addr=addr, nat="none")
        self.hosts[name] = host
        return host

    def addHome(self, name: str, nat: str = "portrestricted") -> Host:
        """
        Add a home: a router C{<name>-gw} of NAT type C{nat} on the
        internet (behind a carrier NAT C{<name>-cgn} when C{nat} is
        C{"double"}), with the host C{name} behind it.
        """
        self._checkOpen()
        if nat not in NAT_TYPES or nat == "none":
            raise NatLabError(f"unknown NAT type {nat!r}; one of {', '.join(NAT_TYPES[1:])}")
        if self._nextHome >= HOMES.num_addresses // 16:
            raise NatLabError("the lab's home networks (198.51.100.0/24, one /28 each) are full")
        lan = ipaddress.ip_network(f"{HOMES[16 * self._nextHome]}/28")
        self._nextHome += 1
        gwLan, hostAddr = str(lan[1]), str(lan[2])
        upstream = None
        if nat == "double":
            carrierNet = ipaddress.ip_network(f"{CARRIER[256 * self._nextCarrier]}/24")
            self._nextCarrier += 1
            cgnWan = self._internetAddr()
            upstream = self._router(f"{name}-cgn", "portrestricted", cgnWan, INTERNET.prefixlen, None,
                                    str(carrierNet[1]), carrierNet.prefixlen, str(carrierNet[2]))
            router = self._router(f"{name}-gw", "portrestricted", str(carrierNet[2]), carrierNet.prefixlen,
                                  str(carrierNet[1]), gwLan, lan.prefixlen, hostAddr, upstream=upstream)
            publicAddr = cgnWan
        else:
            wan = self._internetAddr()
            router = self._router(f"{name}-gw", nat, wan, INTERNET.prefixlen, None, gwLan, lan.prefixlen, hostAddr)
            publicAddr = wan
        ns = self._namespace(name)
        self._link(router.ns, "lan", ns, "eth0")
        self._address(router.ns, "lan", gwLan, lan.prefixlen)
        self._address(ns, "eth0", hostAddr, lan.prefixlen, gateway=gwLan)
        host = Host(lab=self, name=name, ns=ns, addr=hostAddr, nat=nat, publicAddr=publicAddr, router=router)
        self.hosts[name] = host
        return host

    def _checkOpen(self) -> None:
        if self._closed:
            raise NatLabError("this NAT lab is closed")

    # -- processes and teardown ------------------------------------------

    def _track(self, process: subprocess.Popen[Any]) -> subprocess.Popen[Any]:
        self._processes.append(process)
        return process

    def close(self) -> None:
        """
        Kill the processes started with L{Host.run} that still run (by
        PID), then delete every namespace of the lab (their veths and the
        bridge go with them).  Safe to call more than once.
        """
        self._closed = True
        processes, self._processes = self._processes, []
        for p in processes:
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGKILL)
                except OSError as e:
                    if e.errno != errno.ESRCH:
                        raise
        for p in processes:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        namespaces, self._namespaces = self._namespaces, []
        for ns in reversed(namespaces):
            _deleteNamespace(ns)

    def __enter__(self) -> NatLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _main(argv: Sequence[str]) -> int:
    """
    Build a lab by hand: C{python -m beam.testing.netlab relay:none
    alice:portrestricted ...}; it prints the hosts and waits for Ctrl-C,
    then tears the lab down.
    """
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    lab = NatLab()
    try:
        started = time.monotonic()
        for spec in argv or ["relay:none", "alice:portrestricted"]:
            name, _, nat = spec.partition(":")
            lab.add(name, nat or "none")
        print(f"lab {lab.prefix} built in {time.monotonic() - started:.2f} s")
        for host in lab.hosts.values():
            seen = f" (seen as {host.publicAddr})" if host.publicAddr else ""
            print(f"  {host.name:12} {host.nat:15} {host.addr}{seen}   ip netns exec {host.ns} ...")
        print("Ctrl-C tears it down")
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
    finally:
        lab.close()
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
