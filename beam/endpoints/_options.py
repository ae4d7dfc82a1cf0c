"""
The values C{beam:} endpoints take, checked without any I/O.

Every function here raises L{ValueError} with a message naming the
option, so that a bad endpoint string fails in C{serverFromString} /
C{clientFromString}, before a node is launched.  Lists (C{listen},
C{bootstrap}, C{allow}) are comma-separated, since Twisted's endpoint
syntax keeps only the last of repeated keywords.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable, Optional, Union

import attrs

from beam.errors import InvalidMultiaddr, InvalidPeerID
from beam.identity.keys import PeerID
from beam.identity.multiaddr import Multiaddr

__all__ = [
    "NodeOptions",
    "Target",
    "parseBool",
    "parseMultiaddrs",
    "parsePeerIDs",
    "parseSecret",
    "parseService",
    "parseTarget",
    "parseTimeout",
]

#: A service name: what share addresses and name records can carry.
_SERVICE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_TRUE = ("yes", "true", "on", "1")
_FALSE = ("no", "false", "off", "0")
MAX_SECRET = 1024

AddrsArg = Union[str, Iterable[Union[str, Multiaddr]], None]


def parseService(text: str, option: str = "service") -> str:
    """
    A service name: a letter or digit, then up to 62 letters, digits,
    C{_}, C{.} or C{-}.
    """
    if not isinstance(text, str) or not _SERVICE.match(text):
        raise ValueError(
            f"{option}={text!r} is not a service name: use up to 63 letters, digits, '_', '.' or '-', "
            f"starting with a letter or digit"
        )
    return text


def _split(value: AddrsArg) -> list[Union[str, Multiaddr]]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return list(value)


def parseMultiaddrs(value: AddrsArg, option: str, *, listen: bool) -> Optional[tuple[Multiaddr, ...]]:
    """
    Multiaddrs from a comma-separated string or a sequence; L{None} when
    none were given.

    @param listen: addresses to listen on (C{/ip4} or C{/ip6} with C{/tcp},
        no C{/p2p}); otherwise peers to dial, which must end in
        C{/p2p/<peer ID>}.
    """
    items = _split(value)
    if not items:
        return None
    out = []
    for item in items:
        try:
            ma = item if isinstance(item, Multiaddr) else Multiaddr.fromString(item)
        except InvalidMultiaddr as e:
            raise ValueError(f"{option}: {e}") from None
        if listen:
            if ma.peerID() is not None:
                raise ValueError(f"{option}: {ma} is an address to listen on: leave out /p2p/...")
            if not _listenable(ma):
                raise ValueError(f"{option}: cannot listen on {ma}: need /ip4 or /ip6 with /tcp")
        elif ma.peerID() is None:
            raise ValueError(f"{option}: {ma} must end in /p2p/<peer ID>")
        out.append(ma)
    return tuple(out)


def _listenable(ma: Multiaddr) -> bool:
    from beam.p2p.transport.tcp import TCPTransport

    return bool(TCPTransport(None).canListen(ma))


def parsePeerIDs(value: Union[str, Iterable[Union[str, PeerID]], None], option: str = "allow") -> Optional[
    frozenset[PeerID]
]:
    """
    Peer IDs from a comma-separated string or a sequence; L{None} when
    none were given.
    """
    items = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else list(value or ())
    if not items:
        return None
    out = set()
    for item in items:
        try:
            out.add(item if isinstance(item, PeerID) else PeerID.fromString(item))
        except InvalidPeerID as e:
            raise ValueError(f"{option}: {e}") from None
    return frozenset(out)


def parseSecret(value: Union[str, bytes, None], option: str = "secret") -> Optional[bytes]:
    """
    The access secret: text (used as its UTF-8 bytes) or bytes; L{None}
    for none.  Share addresses carry it base32-encoded.
    """
    if value is None or value == "" or value == b"":
        return None
    raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    if len(raw) > MAX_SECRET:
        raise ValueError(f"{option}: longer than {MAX_SECRET} bytes")
    return raw


def parseBool(value: Union[str, bool], option: str) -> bool:
    """
    C{yes}/C{no}, C{true}/C{false}, C{on}/C{off}, C{1}/C{0}.
    """
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{option}={value!r}: expected yes or no")


def parseTimeout(value: Union[str, float], option: str = "timeout") -> float:
    """
    A positive number of seconds.
    """
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{option}={value!r}: expected a number of seconds") from None
    if not 0 < seconds < float("inf"):
        raise ValueError(f"{option}={value!r}: expected a positive number of seconds")
    return seconds


def parseName(text: str, option: str = "name") -> str:
    """
    A Beam name (C{alice}, C{alice.home}), normalised.
    """
    from beam.names.record import InvalidName, normalizeName

    try:
        return normalizeName(text)
    except InvalidName as e:
        raise ValueError(f"{option}: {e}") from None


@attrs.frozen
class NodeOptions:
    """
    Which node serves an endpoint, and how it is launched if this process
    does not run it yet (see L{beam.endpoints.launchNode}).

    @ivar home: its home directory (identity, state, control socket), or
        L{None} for the default L{defaultHome}.
    @ivar listen: addresses to listen on, or L{None} for the home's
        C{config.toml}, else C{/ip4/0.0.0.0/tcp/0}.
    @ivar bootstrap: DHT peers to join through, or L{None} for the
        home's C{config.toml}.
    """

    home: Optional[Path] = None
    listen: Optional[tuple[Multiaddr, ...]] = None
    bootstrap: Optional[tuple[Multiaddr, ...]] = None

    @classmethod
    def fromArgs(
        cls,
        home: Union[str, os.PathLike[str], None] = None,
        listen: AddrsArg = None,
        bootstrap: AddrsArg = None,
    ) -> "NodeOptions":
        """
        Options from strings (as in endpoint strings) or values.

        @raise ValueError: one is not valid.
        """
        if home is not None and not isinstance(home, (str, os.PathLike)):
            raise ValueError(f"home={home!r}: expected a directory")
        return cls(
            home=Path(home).expanduser() if home else None,
            listen=parseMultiaddrs(listen, "listen", listen=True),
            bootstrap=parseMultiaddrs(bootstrap, "bootstrap", listen=False),
        )

    def homePath(self) -> Path:
        """
        The home directory, absolute (the key under which this process
        shares one node between its endpoints).
        """
        return Path(os.path.abspath(self.home if self.home is not None else defaultHome()))


def defaultHome() -> Path:
    """
    The home of the endpoints' node when none is given: C{endpoints/}
    inside the command line's home (C{$BEAM_HOME}, else
    C{$XDG_DATA_HOME/beam}, else C{~/.local/share/beam}).

    It is a home of its own, with its own identity, so that a program
    using C{beam:} endpoints and a C{beam daemon} run side by side.
    """
    from beam.storage.home import resolveHome

    return resolveHome() / "endpoints"


@attrs.frozen
class Target:
    """
    What a client endpoint connects to: a share address (or a C{/p2p/}
    multiaddr, turned into one), or a name to resolve.

    @ivar text: as given, for messages.
    @ivar share: the parsed L{beam.tunnel.share.ShareAddress}, or L{None}
        for a name.
    @ivar name: the name to resolve, or L{None}.
    @ivar service: the service asked for (C{""}: the host's default).
    """

    text: str
    share: object = None
    name: Optional[str] = None
    service: str = ""


def _splitMultiaddr(text: str) -> tuple[str, str]:
    """
    C{/ip4/.../p2p/ID/SERVICE} into the multiaddr and the service.
    """
    marker = text.rfind("/p2p/")
    if marker < 0:
        return text, ""
    head, _, tail = text[marker + len("/p2p/"):].partition("/")
    return text[: marker + len("/p2p/") + len(head)], tail


def parseTarget(text: str, service: Optional[str] = None) -> Target:
    """
    A client endpoint's target: C{NAME}, C{NAME/SERVICE}, a share address
    (C{beam://PEER@HOST:PORT/SERVICE[#SECRET]}) or a multiaddr ending in
    C{/p2p/PEER}, optionally followed by C{/SERVICE}.

    @param service: the C{service=} option; it wins over one in C{text}.
    """
    from beam.tunnel.share import InvalidShareAddress, parseShareAddress

    if service is not None:
        parseService(service)
    if not isinstance(text, str) or not text.strip():
        raise ValueError("a beam: client endpoint needs a target: NAME/SERVICE, a beam:// share address "
                         "or a /p2p/ multiaddr")
    text = text.strip()
    if text.startswith(("beam://", "/")):
        address = text
        if text.startswith("/"):
            address, inText = _splitMultiaddr(text)
            if inText:
                parseService(inText)
                service = service or inText
        try:
            share = parseShareAddress(address)
        except InvalidShareAddress as e:
            raise ValueError(f"{text}: {e}") from None
        if service:
            share = attrs.evolve(share, service=service)
        return Target(text=text, share=share, service=share.service)
    name, _, inText = text.partition("/")
    if inText:
        parseService(inText)
    return Target(text=text, name=parseName(name, "target"), service=service or inText)
