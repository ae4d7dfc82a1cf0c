"""
Tests for L{beam.p2p.transport._netif}: the parsers on canned kernel
output, the choice among sources, and L{interfaceAddresses} on this
machine's real interfaces.
"""

from __future__ import annotations

import ipaddress
import shutil
import socket
import struct
import subprocess
import sys
from typing import Optional

from twisted.trial.unittest import SynchronousTestCase

from beam.p2p.transport import _netif
from beam.p2p.transport._netif import (
    interfaceAddresses,
    parseAddressDump,
    parseIfconf,
    parseIfInet6,
)


def attr(kind: int, value: bytes) -> bytes:
    """
    One netlink route attribute, padded to 4 bytes.
    """
    raw = struct.pack("=HH", 4 + len(value), kind) + value
    return raw + b"\0" * (-len(raw) % 4)


def message(kind: int, body: bytes) -> bytes:
    """
    One netlink message.
    """
    return struct.pack("=IHHII", 16 + len(body), kind, 2, 1, 0) + body


def newaddr(family: int, *attrs: bytes, flags: int = 0) -> bytes:
    """
    An C{RTM_NEWADDR} message.
    """
    return message(20, struct.pack("=BBBBI", family, 24, flags, 0, 1) + b"".join(attrs))


def v4(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET, text)


def v6(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6, text)


DONE = message(3, struct.pack("=i", 0))


class AddressDumpTests(SynchronousTestCase):
    """
    L{parseAddressDump} reads a netlink C{RTM_GETADDR} dump.
    """

    def test_bothFamilies(self) -> None:
        """
        Each address of the asked family is listed in dump order; the
        other family's are skipped.
        """
        dump = (
            newaddr(socket.AF_INET, attr(1, v4("127.0.0.1")), attr(2, v4("127.0.0.1")),
                    attr(3, b"lo\0"))
            + newaddr(socket.AF_INET6, attr(1, v6("::1")))
            + newaddr(socket.AF_INET, attr(2, v4("192.0.2.2")), attr(1, v4("192.0.2.2")))
            + newaddr(socket.AF_INET6, attr(1, v6("2001:db8::5")))
            + DONE
        )
        self.assertEqual(parseAddressDump(dump, socket.AF_INET), ["127.0.0.1", "192.0.2.2"])
        self.assertEqual(parseAddressDump(dump, socket.AF_INET6), ["::1", "2001:db8::5"])

    def test_pointToPoint(self) -> None:
        """
        For IPv4 the local address (C{IFA_LOCAL}) is ours; C{IFA_ADDRESS}
        is the far end of a point-to-point link.
        """
        dump = newaddr(socket.AF_INET, attr(1, v4("10.8.0.1")), attr(2, v4("10.8.0.2")))
        self.assertEqual(parseAddressDump(dump, socket.AF_INET), ["10.8.0.2"])

    def test_dadFailedSkipped(self) -> None:
        """
        An address whose duplicate address detection failed, flagged in the
        header or in C{IFA_FLAGS}, is not listed.
        """
        dump = (
            newaddr(socket.AF_INET6, attr(1, v6("2001:db8::1")), flags=0x08)
            + newaddr(socket.AF_INET6, attr(1, v6("2001:db8::2")), attr(8, struct.pack("=I", 0x08)))
            + newaddr(socket.AF_INET6, attr(1, v6("2001:db8::3")), attr(8, struct.pack("=I", 0x80)))
        )
        self.assertEqual(parseAddressDump(dump, socket.AF_INET6), ["2001:db8::3"])

    def test_stopsAtDoneAndMalformed(self) -> None:
        """
        Parsing stops at C{NLMSG_DONE}, at an error message, and at a
        truncated or nonsensical length; a message without an address or
        with one of the wrong size is skipped.
        """
        a = newaddr(socket.AF_INET, attr(2, v4("192.0.2.1")))
        b = newaddr(socket.AF_INET, attr(2, v4("192.0.2.9")))
        self.assertEqual(parseAddressDump(a + DONE + b, socket.AF_INET), ["192.0.2.1"])
        self.assertEqual(parseAddressDump(a + message(2, b"\0" * 20) + b, socket.AF_INET),
                         ["192.0.2.1"])
        self.assertEqual(parseAddressDump(a + b[:-3], socket.AF_INET), ["192.0.2.1"])
        self.assertEqual(parseAddressDump(a + struct.pack("=IHHII", 3, 20, 0, 0, 0), socket.AF_INET),
                         ["192.0.2.1"])
        odd = newaddr(socket.AF_INET, attr(3, b"eth0\0")) + newaddr(socket.AF_INET, attr(2, b"\1\2"))
        self.assertEqual(parseAddressDump(odd + a, socket.AF_INET), ["192.0.2.1"])
        self.assertEqual(parseAddressDump(b"", socket.AF_INET), [])


class ProcAndIoctlParserTests(SynchronousTestCase):
    """
    The fallbacks' parsers: C{/proc/net/if_inet6} and C{SIOCGIFCONF}.
    """

    def test_ifInet6(self) -> None:
        """
        Each well-formed line gives its address; malformed lines and
        addresses whose duplicate address detection failed are skipped.
        """
        text = (
            "fd000000000000000000000000000002 04 40 00 82     eth0\n"
            "00000000000000000000000000000001 01 80 10 80       lo\n"
            "20010db8000000000000000000000009 04 40 00 08     eth0\n"
            "zz000000000000000000000000000001 01 80 10 80       lo\n"
            "short 01 80 10 80 lo\n"
            "\n"
        )
        self.assertEqual(parseIfInet6(text), ["fd00::2", "::1"])

    def test_ifconf(self) -> None:
        """
        Each C{struct ifreq} holding an IPv4 C{sockaddr_in} gives its
        address; other families are skipped, as is a trailing partial entry.
        """
        def ifreq(name: bytes, family: int, addr: bytes) -> bytes:
            entry = name.ljust(16, b"\0") + struct.pack("=HH", family, 0) + addr
            return entry.ljust(40, b"\0")

        buffer = (
            ifreq(b"lo", socket.AF_INET, v4("127.0.0.1"))
            + ifreq(b"odd", socket.AF_INET6, b"\0" * 4)
            + ifreq(b"eth0", socket.AF_INET, v4("192.0.2.2"))
            + b"\0" * 10
        )
        self.assertEqual(parseIfconf(buffer, 40), ["127.0.0.1", "192.0.2.2"])


class SourceChoiceTests(SynchronousTestCase):
    """
    L{interfaceAddresses} takes the first source that answers and cleans
    its answer.
    """

    def test_firstAnsweringSource(self) -> None:
        """
        A source answering L{None} (unavailable) or raising is passed over;
        the first list is the answer, even an empty one.
        """
        def boom() -> Optional[list[str]]:
            raise OSError("no netlink here")

        calls: list[str] = []

        def later() -> Optional[list[str]]:
            calls.append("later")
            return ["192.0.2.7"]

        self.assertEqual(
            interfaceAddresses(socket.AF_INET, _sources=[boom, lambda: None, lambda: ["192.0.2.1"], later]),
            ["192.0.2.1"],
        )
        self.assertEqual(calls, [])
        self.assertEqual(interfaceAddresses(socket.AF_INET, _sources=[lambda: [], later]), [])
        self.assertEqual(interfaceAddresses(socket.AF_INET, _sources=[lambda: None]), [])

    def test_cleaned(self) -> None:
        """
        Loopback comes first, then the others in the source's order;
        IPv6 link-local, unspecified, unparsable and repeated addresses are
        dropped; IPv6 is written canonically.
        """
        raw = [
            "2001:DB8:0::1", "fe80::1", "febf::2", "::1", "2001:db8::1", "::", "nonsense",
            "fd00::2",
        ]
        self.assertEqual(
            interfaceAddresses(socket.AF_INET6, _sources=[lambda: raw]),
            ["::1", "2001:db8::1", "fd00::2"],
        )
        self.assertEqual(
            interfaceAddresses(
                socket.AF_INET,
                _sources=[lambda: ["192.0.2.2", "127.0.0.1", "192.0.2.2", "0.0.0.0", "127.0.1.1"]],
            ),
            ["127.0.0.1", "127.0.1.1", "192.0.2.2"],
        )

    def test_badFamily(self) -> None:
        """
        A family other than IPv4 or IPv6 is a programming error.
        """
        self.assertRaises(ValueError, interfaceAddresses, socket.AF_UNIX)


def ipAddr() -> Optional[dict[int, set[str]]]:
    """
    The addresses C{ip -o addr} lists, by family, or L{None} without
    C{ip}.
    """
    ip = shutil.which("ip")
    if ip is None:
        return None
    try:
        out = subprocess.run([ip, "-o", "addr"], capture_output=True, text=True,
                             timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found: dict[int, set[str]] = {socket.AF_INET: set(), socket.AF_INET6: set()}
    for line in out.splitlines():
        fields = line.split()
        if "dadfailed" in fields:
            continue
        for key, family in (("inet", socket.AF_INET), ("inet6", socket.AF_INET6)):
            if key in fields:
                text = fields[fields.index(key) + 1].split("/")[0]
                ip_ = ipaddress.ip_address(text)
                if not (ip_.version == 6 and ip_.is_link_local):
                    found[family].add(str(ip_))
    return found


class ThisMachineTests(SynchronousTestCase):
    """
    L{interfaceAddresses} on the machine running the tests.
    """

    def test_wellFormed(self) -> None:
        """
        Every address parses as an address of the asked family; none is
        IPv6 link-local or listed twice; loopback addresses come first.
        """
        for family, version in ((socket.AF_INET, 4), (socket.AF_INET6, 6)):
            found = interfaceAddresses(family)
            parsed = [ipaddress.ip_address(a) for a in found]
            self.assertEqual({p.version for p in parsed} - {version}, set())
            self.assertEqual(len(set(found)), len(found))
            self.assertFalse([p for p in parsed if p.version == 6 and p.is_link_local])
            loops = [p.is_loopback for p in parsed]
            self.assertEqual(loops, sorted(loops, reverse=True), found)

    def test_loopbackPresent(self) -> None:
        """
        127.0.0.1 is listed when the loopback interface carries it, ::1
        when the kernel lists it in C{/proc/net/if_inet6}.
        """
        found = ipAddr()
        if found is not None and "127.0.0.1" in found[socket.AF_INET]:
            self.assertIn("127.0.0.1", interfaceAddresses(socket.AF_INET))
        try:
            with open("/proc/net/if_inet6") as f:
                hasV6Loopback = any(line.startswith("0" * 31 + "1") for line in f)
        except OSError:
            hasV6Loopback = False
        if hasV6Loopback:
            self.assertIn("::1", interfaceAddresses(socket.AF_INET6))
        if found is None and not hasV6Loopback:
            raise self.skipTest("neither ip nor /proc/net/if_inet6 to compare with")

    def test_matchesIpCommand(self) -> None:
        """
        The addresses are those C{ip -o addr} shows (IPv6 link-local
        aside), whatever the host name resolves to.
        """
        found = ipAddr()
        if found is None:
            raise self.skipTest("no ip command")
        for family in (socket.AF_INET, socket.AF_INET6):
            self.assertEqual(set(interfaceAddresses(family)), found[family])

    def test_fallbacksAgree(self) -> None:
        """
        On Linux the fallbacks agree with netlink: C{/proc/net/if_inet6}
        lists the same IPv6 addresses, and C{SIOCGIFCONF} only addresses
        netlink lists too (it shows one IPv4 address per interface).
        """
        if not sys.platform.startswith("linux"):
            raise self.skipTest("Linux only")
        netlink4 = _netif._netlinkAddresses(socket.AF_INET)
        netlink6 = _netif._netlinkAddresses(socket.AF_INET6)
        if netlink4 is None or netlink6 is None:
            raise self.skipTest("no netlink here")
        proc = _netif._procInet6()
        if proc is not None:
            self.assertEqual(set(proc), set(netlink6))
        ifconf = _netif._ifconfInet4()
        if ifconf is not None:
            self.assertTrue(ifconf, "SIOCGIFCONF found nothing")
            self.assertLessEqual(set(ifconf), set(netlink4))
