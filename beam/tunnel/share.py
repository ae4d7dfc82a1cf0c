"""
Share addresses: the one line C{beam 3000} prints and C{beam connect}
accepts.

Format::

    beam://<peer ID>@<host>:<port>[,<host>:<port>...]/<service>[#<secret>]

IPv6 hosts go in brackets (C{[::1]:4001}); DNS names are allowed.  A Tor
onion service is C{<56 base32 characters>.onion:<port>} (multiaddr
C{/onion3/<56 characters>:<port>}), the form Tor users know.  An
address through a relay (circuit relay v2, for a host behind a NAT) is
C{relay:<relay peer ID>@<host>:<port>}: the relay's address, which the
dialler asks to connect it to the peer (multiaddr
C{/ip4/HOST/tcp/PORT/p2p/RELAY/p2p-circuit/p2p/PEER}).  The
service is a name (C{web}, C{3000}); empty means "the host's default
service".  The secret, when the tunnel requires one, is base32 without
padding; it sits in the fragment so that nothing that ever treats the
line as a URL sends it anywhere.

C{beam connect} also accepts a plain multiaddr ending in C{/p2p/<id>},
which carries one address and no service or secret.
"""

from __future__ import annotations

import base64
import ipaddress
import re
from collections.abc import Sequence
from typing import Optional

import attr

from beam.errors import BeamError, InvalidMultiaddr, InvalidPeerID
from beam.identity.keys import PeerID
from beam.identity.multiaddr import Multiaddr

SCHEME = "beam://"
MAX_SHARE_LENGTH = 4096
_SERVICE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,62})$")


class InvalidShareAddress(BeamError, ValueError):
    """
    That is not a valid share address.
    """


@attr.s(frozen=True, auto_attribs=True)
class ShareAddress:
    """
    Where and how to reach one exposed service.
    """

    peer: PeerID
    addrs: tuple[Multiaddr, ...] = ()
    service: str = ""
    secret: Optional[bytes] = None

    def __str__(self) -> str:
        hosts = []
        for addr in self.addrs:
            relay = _circuitRelay(addr)
            if relay is not None:
                relayPeer, relayAddr = relay
                hostPort = _hostPortText(relayAddr)
                if hostPort is not None:
                    hosts.append(f"{RELAY_PREFIX}{relayPeer}@{hostPort}")
                continue
            hostPort = _hostPortText(addr)
            if hostPort is not None:
                hosts.append(hostPort)
        text = f"{SCHEME}{self.peer}@{','.join(hosts)}/{self.service}"
        if self.secret:
            text += "#" + encodeSecret(self.secret)
        return text

    def dialAddrs(self) -> list[Multiaddr]:
        """
        The addresses to dial, each with our C{/p2p/} suffix.
        """
        return [a.withoutPeerID().withPeerID(self.peer) for a in self.addrs]


RELAY_PREFIX = "relay:"
_CIRCUIT = "/p2p-circuit"


def _hostPortText(addr: Multiaddr) -> Optional[str]:
    comps = addr.withoutPeerID().components()
    if len(comps) == 1 and comps[0][0] == "onion3" and comps[0][1] is not None:
        onion, _, onionPort = comps[0][1].partition(":")
        return f"{onion}.onion:{onionPort}"
    target = addr.tcpTarget()
    if target is None:
        return None
    host, port, family = target
    return f"[{host}]:{port}" if family == "ip6" else f"{host}:{port}"


def _circuitRelay(addr: Multiaddr) -> Optional[tuple[PeerID, Multiaddr]]:
    """
    For C{<relay addr>/p2p/RELAY/p2p-circuit[/p2p/PEER]}: the relay's peer
    ID and its address (without C{/p2p}); L{None} for any other address.
    """
    text = str(addr)
    at = text.rfind(_CIRCUIT)
    if at < 0:
        return None
    try:
        relayAddr = Multiaddr.fromString(text[:at])
    except InvalidMultiaddr:
        return None
    relay = relayAddr.peerID()
    if relay is None:
        return None
    return relay, relayAddr.withoutPeerID()


def isRelayed(addr: Multiaddr) -> bool:
    """
    Whether C{addr} leads through a relay (C{/p2p-circuit}).
    """
    return _CIRCUIT in str(addr)


def encodeSecret(secret: bytes) -> str:
    return base64.b32encode(secret).decode("ascii").rstrip("=").lower()


def decodeSecret(text: str) -> bytes:
    try:
        return base64.b32decode(text.upper() + "=" * (-len(text) % 8))
    except (ValueError, TypeError):
        raise InvalidShareAddress("the secret in the share address is not valid base32") from None


def _hostPort(text: str) -> Multiaddr:
    if text.startswith(RELAY_PREFIX):
        relayText, sep, where = text[len(RELAY_PREFIX):].partition("@")
        if not sep:
            raise InvalidShareAddress(f"bad address {text!r}: expected relay:RELAY_PEER_ID@HOST:PORT")
        try:
            relay = PeerID.fromString(relayText)
        except InvalidPeerID as e:
            raise InvalidShareAddress(f"bad relay in {text!r}: {e}") from None
        if where.startswith(RELAY_PREFIX):
            raise InvalidShareAddress(f"bad address {text!r}: a relay cannot be reached through another relay")
        return Multiaddr.fromString(f"{_hostPort(where)}/p2p/{relay}{_CIRCUIT}")
    if text.startswith("["):
        end = text.find("]:")
        if end < 0:
            raise InvalidShareAddress(f"bad address {text!r}: expected [IPv6]:PORT")
        host, port = text[1:end], text[end + 2:]
    else:
        host, sep, port = text.rpartition(":")
        if not sep or not host:
            raise InvalidShareAddress(f"bad address {text!r}: expected HOST:PORT")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidShareAddress(f"bad port in {text!r}")
    if host.lower().endswith(".onion"):
        # Only Tor can reach it: never a DNS name to resolve.
        try:
            return Multiaddr.fromString(f"/onion3/{host[:-len('.onion')].lower()}:{int(port)}")
        except InvalidMultiaddr as e:
            raise InvalidShareAddress(f"bad onion address {text!r}: {e}") from None
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        proto = "dns"
    else:
        proto = "ip6" if ip.version == 6 else "ip4"
    try:
        return Multiaddr.fromString(f"/{proto}/{host}/tcp/{int(port)}")
    except InvalidMultiaddr as e:
        raise InvalidShareAddress(f"bad address {text!r}: {e}") from None


def parseShareAddress(text: str, service: str | None = None) -> ShareAddress:
    """
    Parse a share address or a C{/p2p/} multiaddr.

    @param service: the service to use when the text names none (a
        multiaddr never does); a service in the text wins.
    @raise InvalidShareAddress: with what is wrong, for the CLI to print.
    """
    text = text.strip()
    if len(text) > MAX_SHARE_LENGTH:
        raise InvalidShareAddress("share address too long")
    if text.startswith("/"):
        try:
            ma = Multiaddr.fromString(text)
        except InvalidMultiaddr as e:
            raise InvalidShareAddress(f"invalid multiaddr: {e}") from None
        peer = ma.peerID()
        if peer is None:
            raise InvalidShareAddress("the multiaddr must end in /p2p/<peer ID>")
        return ShareAddress(peer=peer, addrs=(ma.withoutPeerID(),), service=service or "")
    if not text.startswith(SCHEME):
        raise InvalidShareAddress(
            "expected a share address (beam://PEER@HOST:PORT/SERVICE) or a multiaddr ending in /p2p/PEER"
        )
    rest = text[len(SCHEME):]
    rest, _, fragment = rest.partition("#")
    who, sep, where = rest.partition("@")
    if not sep:
        raise InvalidShareAddress("share address lacks '@' between peer ID and addresses")
    try:
        peer = PeerID.fromString(who)
    except InvalidPeerID as e:
        raise InvalidShareAddress(str(e)) from None
    hostsText, _, svc = where.partition("/")
    addrs = tuple(_hostPort(h) for h in hostsText.split(",") if h)
    if svc and not _SERVICE.match(svc):
        raise InvalidShareAddress(f"invalid service name {svc!r}")
    secret = decodeSecret(fragment) if fragment else None
    return ShareAddress(peer=peer, addrs=addrs, service=svc or (service or ""), secret=secret)


#: What C{beam connect} says when a host behind a NAT cannot be reached.
BEHIND_NAT = "the host is behind a NAT and no relay is reachable"
#: ... and when a relay says the host holds no reservation on it (yet).
NO_RESERVATION = "no relay reservation yet"


def unreachableReason(addrs: Sequence[Multiaddr], why: str) -> Optional[str]:
    """
    Why a host at C{addrs} could not be dialled, in the words of a NAT, if
    its addresses say that is the cause; L{None} otherwise (the dial
    error, C{why}, says it best).

      - a relay answered that the host holds no reservation on it
        (C{NO_RESERVATION}): L{NO_RESERVATION} (the host may be
        reserving right now);
      - the host lists no public address, only private (LAN) ones and
        perhaps relay ones, none of which worked: L{BEHIND_NAT}.

    A host on loopback only, or with a public address, is not judged: a
    refused connection there means the host is down, not behind a NAT.

    @param why: the dial error, as L{describe<beam.errors.describe>} put it.
    """
    from beam.p2p.host.addrs import addrScope

    direct = [a for a in addrs if not isRelayed(a)]
    relayed = [a for a in addrs if isRelayed(a)]
    if relayed and "NO_RESERVATION" in why:
        return f"{NO_RESERVATION}: the host is not reserved on its relay ({_firstRelay(relayed)}); try again shortly"
    scopes = {addrScope(a) for a in direct}
    if "public" in scopes or "other" in scopes:
        return None
    if "private" not in scopes and not relayed:
        return None
    shown = ", ".join(_hostPortText(a) or str(a) for a in direct[:3]) or "none"
    if relayed:
        return f"{BEHIND_NAT} (relay {_firstRelay(relayed)} did not connect us)"
    return f"{BEHIND_NAT} (it lists only private addresses: {shown})"


def _firstRelay(relayed: Sequence[Multiaddr]) -> str:
    found = [_circuitRelay(a) for a in relayed]
    peers = [str(r[0]) for r in found if r is not None]
    return ", ".join(dict.fromkeys(peers)) or "unknown"
