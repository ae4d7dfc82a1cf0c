"""
An isolated flat LAN for the mDNS tests (issue 11): N hosts on one bridge,
multicast on, no router, no default route, addresses from 198.51.100.0/24
(TEST-NET-2, "private" for Beam's address scopes).  Root only; built with
L{beam.testing.netlab}'s namespaces (so L{LabBeam} runs C{beam} in its
hosts, and the leftover sweep and teardown are the NAT lab's).

Topology::

          switch namespace: bridge br0 (multicast snooping off: every
          port gets every multicast frame, like a plain switch)
        +---------+---------+-- ... --+
       h1        h2        h3        hN      198.51.100.(10+i)/24, eth0

Each host has only its subnet route plus C{224.0.0.0/4 dev eth0}: a
program that sends multicast without choosing an interface (js's
C{multicast-dns} does) needs a route to the group, which on a real LAN the
default route provides.
"""

from __future__ import annotations

import ipaddress
from typing import Optional

from beam.testing.netlab import HOMES, Host, NatLab, NatLabError, _run

__all__ = ["FlatLan"]


class FlatLan(NatLab):
    """
    A L{NatLab} whose bridge is one LAN segment; add hosts with
    L{addLanHost}.
    """

    def __init__(self, prefix: Optional[str] = None) -> None:
        super().__init__(prefix)
        self._nextLan = 10
        try:
            _run(["ip", "-n", self.internet, "link", "set", "br0", "type", "bridge", "mcast_snooping", "0"],
                 "switching multicast snooping off on the LAN's bridge")
        except BaseException:
            self.close()
            raise

    def addLanHost(self, name: str) -> Host:
        """
        Add a host on the LAN, with the next address of 198.51.100.0/24.
        """
        self._checkOpen()
        if self._nextLan > 250:
            raise NatLabError("the LAN (198.51.100.0/24) is full")
        addr = str(HOMES[self._nextLan])
        self._nextLan += 1
        ns = self._namespace(name)
        self._plug(ns, "eth0", addr, HOMES.prefixlen)
        _run(["ip", "-n", ns, "route", "add", str(ipaddress.ip_network("224.0.0.0/4")), "dev", "eth0"],
             f"routing multicast in {ns}")
        host = Host(lab=self, name=name, ns=ns, addr=addr, nat="none")
        self.hosts[name] = host
        return host
