"""
A UPnP-IGD and NAT-PMP gateway in the NAT lab: miniupnpd (Debian's
C{miniupnpd-nftables}) on a lab router, for the port-mapping test
(issue 9).

Three things make miniupnpd work on a lab router:

 - miniupnpd refuses to map anything when its WAN address is private or
   reserved, and the lab's Internet is a documentation range (which
   miniupnpd counts as reserved; C{ext_ip=} refuses it too).  Its way out
   is C{ext_perform_stun}: it asks a STUN server (RFC 5780 CHANGE-REQUEST,
   four answers) whether inbound traffic reaches it unfiltered, and then
   takes the STUN-reported address as its public one.  So the lab gets a
   STUN server with two addresses (L{startStunServer}, Beam's own), and
   the router's input chain accepts that server's answers;
 - miniupnpd's nftables backend adds its rules to chains that must
   exist: a table C{inet miniupnpd} with C{prerouting_miniupnpd} (its
   C{dnat} rules), C{postrouting_miniupnpd} and C{miniupnpd} (filter),
   jumped to from base chains;
 - the lab router's forward chain drops what it did not see go out, so
   it gets C{ct status dnat accept} (forward what a mapping translated),
   as a router with UPnP does.

L{MiniUpnpd.mappings} lists the DNAT rules miniupnpd holds, read from
nftables: the gateway's own view of the mappings.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from beam.testing.netlab import Host, NatLab, NatLabError, Router, _run
from beam.testing.sysdeps import ensureCommands

__all__ = ["MiniUpnpd", "StunServerHost", "startMiniupnpd", "startStunServer"]

#: How long a daemon may take to start listening.
_START_TIMEOUT = 15.0

#: A DNAT rule as C{nft list} prints miniupnpd's: the protocol as a raw
#: IPv4 header match (C{@nh,72,8 0x6}) or by name.
_DNAT = re.compile(r"(?:@nh,72,8 (0x[0-9a-f]+) th|\b(tcp|udp)) dport (\d+) dnat (?:ip )?to ([\d.]+):(\d+)")
_PROTOCOLS = {"0x6": "tcp", "0x11": "udp"}


@dataclass
class StunServerHost:
    """
    Beam's STUN server on a public lab host with a second address.
    """

    host: Host
    addrs: tuple[str, str]
    port: int
    process: subprocess.Popen[Any] = field(repr=False)


def _waitForUdp(ns: str, port: int, process: subprocess.Popen[Any], what: str) -> None:
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise NatLabError(f"{what} exited with status {process.returncode}")
        out = subprocess.run(["ip", "netns", "exec", ns, "ss", "-Hlun", f"sport = :{port}"],
                             capture_output=True, text=True, timeout=10, check=False).stdout
        if out.strip():
            return
        time.sleep(0.05)
    raise NatLabError(f"{what} did not listen on UDP port {port} within {_START_TIMEOUT:.0f} s")


def startStunServer(lab: NatLab, name: str = "stun", port: int = 3478) -> StunServerHost:
    """
    Add a public host C{name} with two addresses and run Beam's STUN
    server there (RFC 5780: answers from the other address and port on
    request), as miniupnpd's STUN check needs.
    """
    host = lab.addPublic(name)
    second = lab._internetAddr()
    _run(["ip", "-n", host.ns, "addr", "add", f"{second}/24", "dev", "eth0"], f"adding a second address to {name}")
    process = host.run([sys.executable, "-m", "beam.p2p.nat.stunserver", f"{host.addr}:{port}",
                        "--alternate", f"{second}:{port + 1}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _waitForUdp(host.ns, port, process, "the lab's STUN server")
    return StunServerHost(host=host, addrs=(host.addr, second), port=port, process=process)


#: miniupnpd's chains, created before it starts (its nft_init.sh, in a
#: table of our own name so nothing else in the router is touched).
_CHAINS = """
table inet miniupnpd {
  chain forward { type filter hook forward priority 0; policy accept; jump miniupnpd; }
  chain miniupnpd { }
  chain prerouting { type nat hook prerouting priority -100; policy accept; jump prerouting_miniupnpd; }
  chain postrouting { type nat hook postrouting priority 100; policy accept; jump postrouting_miniupnpd; }
  chain prerouting_miniupnpd { }
  chain postrouting_miniupnpd { }
}
"""


@dataclass
class MiniUpnpd:
    """
    A running miniupnpd on a lab router.

    @ivar log: the path of its log (debug output).
    """

    router: Router
    process: subprocess.Popen[Any] = field(repr=False)
    directory: str
    log: str

    def mappings(self) -> list[tuple[str, int, str, int]]:
        """
        The port mappings the gateway holds: (protocol, external port,
        internal address, internal port), read from its DNAT chain.
        """
        out = subprocess.run(["ip", "netns", "exec", self.router.ns, "nft", "list", "chain", "inet", "miniupnpd",
                              "prerouting_miniupnpd"], capture_output=True, text=True, timeout=10, check=False).stdout
        return [(m[2] or _PROTOCOLS.get(m[1], m[1]), int(m[3]), m[4], int(m[5])) for m in _DNAT.finditer(out)]

    def logText(self) -> str:
        try:
            with open(self.log, errors="replace") as f:
                return f.read()[-20000:]
        except OSError:
            return ""

    def stop(self) -> None:
        """
        Stop miniupnpd (by PID): it removes its rules when it exits.
        """
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def startMiniupnpd(lab: NatLab, router: Router, stun: StunServerHost, *, natpmp: bool = True,
                   upnp: bool = True, minLifetime: int = 120, maxLifetime: int = 86400) -> MiniUpnpd:
    """
    Run miniupnpd on C{router} (a home router of the lab), serving
    NAT-PMP/PCP and UPnP-IGD on its LAN, with its nftables backend, taking
    its public address from C{stun}.  The lab's teardown kills it with
    the router's namespace; L{MiniUpnpd.stop} stops it earlier.
    """
    ensureCommands({"miniupnpd": "miniupnpd-nftables", "ss": "iproute2"})
    stunAddrs = ", ".join(stun.addrs)
    rules = (
        _CHAINS
        # miniupnpd's STUN check: the answers from the other address and
        # port are new connections to the router itself.
        + f"insert rule ip beamlab input iifname \"wan\" ip saddr {{ {stunAddrs} }} udp sport "
        f"{{ {stun.port}, {stun.port + 1} }} accept\n"
        # Forward what a mapping translated.
        + "insert rule ip beamlab forward iifname \"wan\" oifname \"lan\" ct status dnat accept\n"
    )
    _run(["ip", "netns", "exec", router.ns, "nft", "-f", "-"], f"preparing miniupnpd's nftables chains in {router.ns}",
         stdin=rules)
    directory = tempfile.mkdtemp(prefix="beam-miniupnpd-")
    lanNet = router.lanAddr.rsplit(".", 1)[0]
    config = "\n".join([
        "ext_ifname=wan",
        "listening_ip=lan",
        "http_port=0",
        f"enable_natpmp={'yes' if natpmp else 'no'}",
        f"enable_upnp={'yes' if upnp else 'no'}",
        "ext_perform_stun=yes",
        f"ext_stun_host={stun.addrs[0]}",
        f"ext_stun_port={stun.port}",
        "secure_mode=yes",
        "system_uptime=yes",
        "notify_interval=60",
        "clean_ruleset_interval=600",
        f"min_lifetime={minLifetime}",
        f"max_lifetime={maxLifetime}",
        "uuid=3a5a6b1e-9f1d-4c37-8a2b-bea70000f00d",
        "upnp_table_name=miniupnpd",
        "upnp_nat_table_name=miniupnpd",
        "upnp_forward_chain=miniupnpd",
        "upnp_nat_chain=prerouting_miniupnpd",
        "upnp_nat_postrouting_chain=postrouting_miniupnpd",
        f"allow 1024-65535 {lanNet}.0/24 1024-65535",
        "deny 0-65535 0.0.0.0/0 0-65535",
        "",
    ])
    confPath = os.path.join(directory, "miniupnpd.conf")
    with open(confPath, "w") as f:
        f.write(config)
    logPath = os.path.join(directory, "miniupnpd.log")
    with open(logPath, "w") as log:
        process = subprocess.Popen(
            ["ip", "netns", "exec", router.ns, "miniupnpd", "-d", "-f", confPath,
             "-P", os.path.join(directory, "miniupnpd.pid")],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    lab._track(process)
    daemon = MiniUpnpd(router=router, process=process, directory=directory, log=logPath)
    try:
        _waitForUdp(router.ns, 5351, process, "miniupnpd")
        # Its STUN check runs before it serves; it says how it went.
        deadline = time.monotonic() + _START_TIMEOUT
        while "Listening for NAT-PMP/PCP" not in daemon.logText() and "HTTP listening" not in daemon.logText():
            if time.monotonic() > deadline or process.poll() is not None:
                raise NatLabError("miniupnpd did not start serving")
            time.sleep(0.05)
        if "Port forwarding is now disabled" in daemon.logText() or "Port forwarding is impossible" in daemon.logText():
            raise NatLabError("miniupnpd disabled port forwarding (its STUN check failed)")
    except NatLabError as e:
        daemon.stop()
        raise NatLabError(f"{e}; its log:\n{daemon.logText()[-4000:]}") from None
    return daemon
