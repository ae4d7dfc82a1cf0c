"""
The IP addresses of this machine's network interfaces, with no dependency.

A node listening on C{0.0.0.0} or C{::} shares one address per interface
address.  Resolving the host name is not a way to find them: an
C{/etc/hosts} line mapping the host name to C{127.0.0.1} (or Debian's
C{127.0.1.1}) hides every real interface.  So the kernel is asked:

  1. Linux: an C{RTM_GETADDR} dump over a netlink socket, what C{ip addr}
     reads (every address of both families, secondary ones included).  A
     netlink socket talks to the local kernel only; nothing goes on a wire.
  2. Where netlink is unavailable: for IPv6, C{/proc/net/if_inet6}; for
     IPv4, the C{SIOCGIFCONF} ioctl (Linux's C{struct ifreq} layout).
  3. Elsewhere (BSD, macOS, Windows), or when all of that fails, the old
     guess: the addresses the host name resolves to.

The parsers are pure functions of bytes or text, tested with canned input;
L{interfaceAddresses} is tested against the machine it runs on.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import sys
from typing import Callable, Iterable, Optional

__all__ = ["interfaceAddresses"]

# <linux/netlink.h>, <linux/rtnetlink.h>, <linux/if_addr.h>
_NLMSG_HDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_RTATTR = struct.Struct("=HH")  # len, type
_NLMSG_NOOP = 1
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_RTM_NEWADDR = 20
_RTM_GETADDR = 22
_NLM_F_REQUEST = 0x1
_NLM_F_DUMP = 0x300
_IFA_ADDRESS = 1
_IFA_LOCAL = 2
_IFA_FLAGS = 8
_IFA_F_DADFAILED = 0x08
_NETLINK_ROUTE = 0
_DUMP_SEQ = 0x6265616D  # "beam"; any value, echoed back by the kernel

# <linux/sockios.h>
_SIOCGIFCONF = 0x8912
_IFREQ_SIZE = 40 if struct.calcsize("P") == 8 else 32


def _align4(n: int) -> int:
    return (n + 3) & ~3


def parseAddressDump(data: bytes, family: int) -> list[str]:
    """
    The addresses of C{family} in a netlink C{RTM_GETADDR} dump.

    An IPv4 address is C{IFA_LOCAL} (on a point-to-point link
    C{IFA_ADDRESS} is the far end), an IPv6 one C{IFA_ADDRESS}; addresses
    whose duplicate address detection failed are left out.  Parsing stops
    at C{NLMSG_DONE}, and at anything malformed.

    @param data: the concatenated replies.
    @return: the addresses, in dump order, as text.
    """
    out: list[str] = []
    offset = 0
    while offset + _NLMSG_HDR.size <= len(data):
        length, kind, _, _, _ = _NLMSG_HDR.unpack_from(data, offset)
        if length < _NLMSG_HDR.size or offset + length > len(data):
            break
        if kind in (_NLMSG_DONE, _NLMSG_ERROR):
            break
        body = offset + _NLMSG_HDR.size
        end = offset + length
        offset += _align4(length)
        if kind != _RTM_NEWADDR or body + _IFADDRMSG.size > end:
            continue
        fam, _, flags, _, _ = _IFADDRMSG.unpack_from(data, body)
        if fam != family:
            continue
        attrs: dict[int, bytes] = {}
        pos = body + _IFADDRMSG.size
        while pos + _RTATTR.size <= end:
            alen, atype = _RTATTR.unpack_from(data, pos)
            if alen < _RTATTR.size or pos + alen > end:
                break
            attrs[atype] = data[pos + _RTATTR.size:pos + alen]
            pos += _align4(alen)
        if _IFA_FLAGS in attrs and len(attrs[_IFA_FLAGS]) == 4:
            (flags,) = struct.unpack("=I", attrs[_IFA_FLAGS])
        if flags & _IFA_F_DADFAILED:
            continue
        raw = attrs.get(_IFA_LOCAL) if family == socket.AF_INET else None
        raw = raw or attrs.get(_IFA_ADDRESS)
        size = 4 if family == socket.AF_INET else 16
        if raw is not None and len(raw) == size:
            out.append(socket.inet_ntop(family, raw))
    return out


def _netlinkAddresses(family: int) -> Optional[list[str]]:
    """
    Ask the kernel for its address table over netlink.

    @return: the addresses of C{family}, or L{None} if netlink cannot be
        used here.
    """
    netlink = getattr(socket, "AF_NETLINK", None)
    if netlink is None:
        return None
    try:
        sock = socket.socket(netlink, socket.SOCK_RAW, _NETLINK_ROUTE)
    except OSError:
        return None
    with sock:
        try:
            sock.settimeout(2.0)
            sock.bind((0, 0))
            request = _NLMSG_HDR.pack(
                _NLMSG_HDR.size + _IFADDRMSG.size, _RTM_GETADDR,
                _NLM_F_REQUEST | _NLM_F_DUMP, _DUMP_SEQ, 0,
            ) + _IFADDRMSG.pack(family, 0, 0, 0, 0)
            sock.sendall(request)
            chunks: list[bytes] = []
            for _ in range(10000):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                if _dumpFinished(chunk):
                    break
            else:
                return None
        except OSError:
            return None
    return parseAddressDump(b"".join(chunks), family)


def _dumpFinished(chunk: bytes) -> bool:
    """
    Whether one datagram of a netlink dump carries its end (C{NLMSG_DONE},
    or an C{NLMSG_ERROR}: then no more is coming).
    """
    offset = 0
    while offset + _NLMSG_HDR.size <= len(chunk):
        length, kind, _, _, _ = _NLMSG_HDR.unpack_from(chunk, offset)
        if kind in (_NLMSG_DONE, _NLMSG_ERROR):
            return True
        if length < _NLMSG_HDR.size:
            return True
        offset += _align4(length)
    return False


def parseIfInet6(text: str) -> list[str]:
    """
    The addresses listed in C{/proc/net/if_inet6} (one line per address:
    32 hex digits, interface index, prefix length, scope, flags, name).
    Malformed lines and addresses whose duplicate address detection failed
    are skipped.
    """
    out: list[str] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 5 or len(fields[0]) != 32:
            continue
        try:
            raw = bytes.fromhex(fields[0])
            flags = int(fields[4], 16)
        except ValueError:
            continue
        if flags & _IFA_F_DADFAILED:
            continue
        out.append(socket.inet_ntop(socket.AF_INET6, raw))
    return out


def parseIfconf(buffer: bytes, ifreqSize: int = _IFREQ_SIZE) -> list[str]:
    """
    The IPv4 addresses in a C{SIOCGIFCONF} result: an array of Linux
    C{struct ifreq} (a 16-byte name, then a C{sockaddr_in}).
    """
    out: list[str] = []
    for offset in range(0, len(buffer) - ifreqSize + 1, ifreqSize):
        entry = buffer[offset:offset + ifreqSize]
        (family,) = struct.unpack_from("=H", entry, 16)
        if family == socket.AF_INET:
            out.append(socket.inet_ntop(socket.AF_INET, entry[20:24]))
    return out


def _procInet6(path: str = "/proc/net/if_inet6") -> Optional[list[str]]:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return parseIfInet6(f.read())
    except OSError:
        return None


def _ifconfInet4() -> Optional[list[str]]:
    """
    The primary IPv4 address of each interface, by C{SIOCGIFCONF}; Linux
    only (other systems lay C{struct ifreq} out differently).
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        import array
        import fcntl
    except ImportError:
        return None
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    except OSError:
        return None
    with sock:
        size = 64 * _IFREQ_SIZE
        while size <= 1 << 20:
            buf = array.array("B", bytes(size))
            address, _ = buf.buffer_info()
            ifconf = struct.pack("iL", size, address)
            try:
                result = fcntl.ioctl(sock.fileno(), _SIOCGIFCONF, ifconf)
            except OSError:
                return None
            used, _ = struct.unpack("iL", result)
            if used < size:
                return parseIfconf(buf.tobytes()[:used])
            size *= 2
    return None


def _resolverAddresses(family: int) -> list[str]:
    """
    The last resort: what the host name resolves to.
    """
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, family, socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return []
    return [str(info[4][0]).split("%")[0] for info in infos]


def _clean(addresses: Iterable[str]) -> list[str]:
    """
    Parse, drop IPv6 link-local (it needs a zone a multiaddr cannot carry),
    unspecified addresses and duplicates; loopback first, otherwise in the
    kernel's order.
    """
    seen: set[str] = set()
    loop: list[str] = []
    other: list[str] = []
    for text in addresses:
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            continue
        if ip.is_unspecified or (ip.version == 6 and ip.is_link_local):
            continue
        canonical = str(ip)
        if canonical in seen:
            continue
        seen.add(canonical)
        (loop if ip.is_loopback else other).append(canonical)
    return loop + other


def interfaceAddresses(
    family: int,
    _sources: Optional[Iterable[Callable[[], Optional[list[str]]]]] = None,
) -> list[str]:
    """
    This machine's interface addresses of one family.

    Loopback comes first, then the rest in the kernel's order; IPv6
    link-local addresses (C{fe80::/10}) are left out, and no address is
    listed twice.  Never raises: when the kernel cannot be asked, the host
    name's addresses are the answer, and failing that an empty list.

    @param family: L{socket.AF_INET} or L{socket.AF_INET6}.
    @param _sources: a test seam: the callables to try in turn, each
        returning a list, or L{None} for "unavailable here".
    @return: addresses as text, e.g. C{["127.0.0.1", "192.0.2.2"]}.
    """
    if family not in (socket.AF_INET, socket.AF_INET6):
        raise ValueError(f"not an IP address family: {family!r}")
    if _sources is None:
        fallback = _procInet6 if family == socket.AF_INET6 else _ifconfInet4
        _sources = (
            lambda: _netlinkAddresses(family),
            fallback,
            lambda: _resolverAddresses(family),
        )
    for source in _sources:
        try:
            found = source()
        except Exception:  # noqa: BLE001 - an odd platform must not break listening
            found = None
        if found is not None:
            return _clean(found)
    return []
