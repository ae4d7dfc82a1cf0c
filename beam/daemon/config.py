"""
The node's configuration file, C{<home>/config.toml}.

Everything in it can also be given on the command line; the file is for
what a node should do every time it starts.  A missing file means all
defaults.  Schema (every key optional)::

    # Addresses to listen on: /ip4 or /ip6 with /tcp.
    listen = ["/ip4/0.0.0.0/tcp/4001", "/ip6/::/tcp/4001"]
    # Peers to connect to at start: multiaddrs ending in /p2p/<peer ID>.
    bootstrap = ["/ip4/192.0.2.7/tcp/4001/p2p/12D3KooW..."]
    # "text" (one readable line per event) or "json" (one object per line).
    log_format = "text"

    # A local service exposed to peers; repeat the table for more.
    [[tunnel]]
    port = 3000               # required, 1-65535
    name = "web"              # DNS-label-like: letters, digits, '-', <= 63
    udp = false
    compress = false          # lz4 on the tunnel's streams
    allow = ["12D3KooW..."]   # only these peers (absent: everyone)
    secret = false            # true: generate one; or "a string" to use

    # A remote service made reachable on a local port.
    [[forward]]
    target = "beam://12D3KooW...@192.0.2.7:4001/web"   # or /.../p2p/<id>
    port = 8080               # local port (absent: let the node choose)
    bind = "127.0.0.1"        # an IP address
    service = "web"           # when target names none

    # NAT traversal (docs/nat-traversal.md).  "default": relay the spec's
    # short, small circuits (enough to coordinate a hole punch) once
    # AutoNAT finds this node public; "open": relay whole tunnels, whether
    # or not the node is public (what `beam relay` runs); "off": relay for
    # no one.  Reserving on others' relays is not affected.
    relay = "default"
    stun_servers = ["stun.example.org:3478"]   # classify our NAT at start
    stun_server = true        # answer STUN on UDP at the listen port once public
    port_mapping = false      # true: map the TCP listen port on the home
                              # gateway (NAT-PMP, then UPnP-IGD)
    # TURN servers (RFC 8656/6062 TCP allocations) to be reachable through
    # while the node is private; the password is never logged or shown.
    turn_servers = [{url = "turn:turn.example.org:3478", username = "me", password = "..."}]

    # Instead of `relay = "..."`, a table with the operator's limits.
    [relay]
    mode = "open"
    max_reservations = 128
    max_reservations_per_ip = 8
    max_circuits = 16
    max_circuits_per_peer = 4
    reservation_ttl = 3600    # seconds
    duration = 0              # seconds a circuit may last (0: no cap)
    data = 0                  # bytes each way per circuit (0: no cap)
    requests_per_minute = 30
    request_burst = 16
    bandwidth = "10MiB"       # per second, all circuits together (absent or 0: no cap)
    circuit_bandwidth = "2MiB"  # per second, each circuit (absent or 0: no cap)

    # Tor (docs/tor.md).  "off" (default); "fallback": publish an onion
    # address and dial onions only when direct and relayed paths fail;
    # "always": listen and dial only through Tor (no IP address advertised
    # or dialled).  `tor = "always"` is short for a [tor] with only a mode.
    [tor]
    mode = "always"
    control = "unix:/run/tor/control"  # attach to a running tor's control
                              # port/socket ("127.0.0.1:9051", "9051", or a
                              # Twisted endpoint); absent: launch our own tor
    binary = "/usr/sbin/tor"  # the tor to launch (absent: `tor` on PATH)
    data_dir = "/path"        # launched tor's DataDirectory (absent: <home>/tor/data)
    port = 4001               # the onion service's port (/onion3/...:PORT)
    bootstrap_timeout = 300   # seconds for tor to bootstrap and publish
    [tor.options]             # extra torrc lines for a launched tor:
    TestingTorNetwork = 1     # a string, number, boolean (1/0) or a list
    DirAuthority = ["auth0 orport=5000 ...", "auth1 ..."]   # of strings

    # Names on the LAN and by gossip (docs/names.md, docs/dns.md).
    mdns = true               # find peers and answer Beam names on the LAN
    gossip = true             # spread name records on the beam-names topic
    [dns]                     # the local DNS server for NAME.beam
    enabled = true
    bind = "127.0.0.1"        # a loopback address
    port = 5380               # taken: a warning, the node runs without it
    addresses = "127.77.0.0/16"   # loopback addresses handed to NAME.beam

    # The dashboard, HTTP inspector and /metrics (docs/dashboard.md).
    web = "127.0.0.1:4040"    # "off" (or false): none; taken: the next free port
    web_allow_remote = false  # true: allow a non-loopback web address (prints a warning)
    [inspect]                 # the HTTP inspector of exposed tunnels
    enabled = true            # false: capture nothing (inspect = false is short)
    max_requests = 500        # requests kept (oldest dropped first)
    max_bytes = "16MiB"       # captured heads and bodies kept, in all
    body_cap = "64KiB"        # of each request and response body

    # Services that installed packages add to every node (Twisted plugins
    # providing beam.daemon.plugins.IBeamService).
    [plugins]
    enabled = true            # false: load none
    disable = ["hello"]       # load all but these (by service name)

    # What peers may make the node hold (beam.p2p.resources; defaults are
    # derived from the file-descriptor limit and memory, and shown by
    # `beam status --json` under "resources"; docs/security.md).  A
    # scope's table overrides only the resources it names: conns,
    # conns_inbound, conns_outbound, streams, streams_inbound,
    # streams_outbound, fd, memory (bytes, or "64MiB").
    [limits]
    handshake_timeout = 15    # seconds a new connection has to authenticate
    enabled = true            # false: no resource manager (benchmarks only!)
    [limits.system]           # the whole node
    fd = 4096
    memory = "512MiB"
    conns_per_source = 32     # inbound connections from one address
    [limits.transient]        # connections still in the handshake
    conns = 64
    per_source = 8            # of those, from one IPv4 address / IPv6 /64
    [limits.peer]             # each peer (allowed_peer: peers in an allow list)
    streams_inbound = 64
    [limits.connection]       # also: stream
    memory = "32MiB"
    [limits.service.web]      # one tunnel service (service.default: each)
    fd = 256
    [limits.protocol."/beam/kad/1.0.0"]   # one protocol (protocol.default: each)
    streams_inbound = 512

Unknown keys are errors, so a typo (C{comprees = true}) is reported instead
of silently ignored.  Problems are reported all at once, each as
C{config.toml:LINE: message}.  TOML parsers do not keep line numbers for
values, so L{_Locator} finds them by scanning the text for the table header
and the C{key =} line; it is right for ordinary hand-written files and falls
back to the table's or file's name otherwise.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
import tomllib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import attr

from beam.errors import BeamError, InvalidMultiaddr, InvalidPeerID
from beam.identity.keys import PeerID
from beam.identity.multiaddr import Multiaddr
from beam.p2p.resources import Limits, defaultLimits, limitsFromTable, parseSize
from beam.tunnel.share import InvalidShareAddress, ShareAddress, parseShareAddress

CONFIG_FILE = "config.toml"
DEFAULT_LISTEN = ("/ip4/0.0.0.0/tcp/0",)
DEFAULT_BIND = "127.0.0.1"
LOG_FORMATS = ("text", "json")
_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


class ConfigError(BeamError):
    """
    The configuration file is not valid.

    @ivar problems: one C{"config.toml:LINE: message"} line per problem.
    """

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__(*problems)
        self.problems = list(problems)

    def __str__(self) -> str:
        return "\n".join(self.problems)


@attr.s(frozen=True, auto_attribs=True, kw_only=True)
class TunnelConfig:
    """
    One C{[[tunnel]]}: a local service to expose.

    @ivar allow: the peers admitted, or L{None} for no allow list.
    @ivar secret: C{False} for none, C{True} to generate one, or the secret.
    """

    port: int
    name: str | None = None
    udp: bool = False
    compress: bool = False
    allow: tuple[PeerID, ...] | None = None
    secret: bool | str = False


@attr.s(frozen=True, auto_attribs=True, kw_only=True)
class ForwardConfig:
    """
    One C{[[forward]]}: a remote service on a local port.

    @ivar target: the text as written.
    @ivar address: C{target} parsed, with C{service} applied when the
        target names none.
    """

    target: str
    address: ShareAddress
    port: int | None = None
    bind: str = DEFAULT_BIND
    service: str | None = None


def _defaultListen() -> tuple[Multiaddr, ...]:
    return tuple(Multiaddr.fromString(a) for a in DEFAULT_LISTEN)


@attr.s(frozen=True, auto_attribs=True, kw_only=True)
class TurnServerConfig:
    """
    One entry of C{turn_servers}: a TURN server and its long-term
    credentials.  The password is left out of C{repr} so it never reaches
    a log line.
    """

    url: str
    host: str
    port: int
    username: str
    password: str = attr.ib(repr=False)


#: What C{[tor] mode} may say: no Tor; Tor as a last resort; only Tor.
TOR_MODES = ("off", "fallback", "always")


@attr.s(frozen=True, auto_attribs=True, kw_only=True)
class DnsConfig:
    """
    C{[dns]}: the local DNS server answering C{NAME.beam} (issue 11; the
    names are shared with the DNS service).

    @ivar enabled: whether the node runs it.
    @ivar bind: the loopback address it listens on (UDP and TCP).
    @ivar port: its port.
    @ivar addresses: the loopback network whose addresses are handed out
        to C{NAME.beam} and C{SERVICE.NAME.beam}, one per name and
        service, on which the node listens and forwards into the tunnel.
    """

    enabled: bool = True
    bind: str = "127.0.0.1"
    port: int = 5380
    addresses: str = "127.77.0.0/16"


#: The dashboard's default address (ngrok's inspector is on the same port).
DEFAULT_WEB = "127.0.0.1:4040"


@attr.s(frozen=True, auto_attribs=True, kw_only=True)
class WebConfig:
    """
    C{web}: the local dashboard, HTTP inspector and C{/metrics} (issue 13,
    L{beam.daemon.web}).

    @ivar enabled: whether the node serves them.
    @ivar host: the address to bind (loopback unless C{allowRemote}).
    @ivar port: the first port to try; when it is taken the next free one
        is used (and printed).
    @ivar allowRemote: a non-loopback C{host} was asked for explicitly.
    """

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 4040
    allowRemote: bool = False

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@attr.s(frozen=True, auto_attribs=True, kw_only=True)
class InspectConfig:
    """
    C{[inspect]}: the HTTP inspector of exposed tunnels (issue 13).

    @ivar enabled: capture HTTP/1.1 exchanges at all (C{inspect = false}:
        no byte of a tunnel is looked at and nothing is kept).
    @ivar maxRequests: exchanges kept; the oldest go first.
    @ivar maxBytes: bytes of captured heads and bodies kept, in all.
    @ivar bodyCap: bytes kept of each request or response body.
    """

    enabled: bool = True
    maxRequests: int = 500
    maxBytes: int = 16 * 1024 * 1024
    bodyCap: int = 64 * 1024


def parseWebAddress(text: str, allowRemote: bool = False) -> WebConfig:
    """
    C{web} or C{--web}: C{"off"}, C{"HOST:PORT"}, C{"[V6]:PORT"}, C{"PORT"}
    (on 127.0.0.1) or C{"HOST"} (port 4040).

    @raise ValueError: unparseable, a bad port, or a non-loopback host
        without C{allowRemote}.
    """
    text = text.strip()
    if text.lower() in ("off", "false", "no", "none"):
        return WebConfig(enabled=False)
    host, port = "127.0.0.1", 4040
    if text.isdigit():
        port = int(text)
    elif text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"{text!r} is not HOST:PORT")
        host = text[1:end]
        rest = text[end + 1:]
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                raise ValueError(f"{text!r} is not [ADDRESS]:PORT")
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, _, portText = text.partition(":")
        if not portText.isdigit():
            raise ValueError(f"{text!r} is not HOST:PORT")
        port = int(portText)
    elif text:
        host = text
    else:
        raise ValueError("an empty address")
    if not 0 < port < 65536:
        raise ValueError(f"port must be between 1 and 65535, not {port}")
    if host == "localhost":
        host = "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address") from None
    if not address.is_loopback and not allowRemote:
        raise ValueError(
            f"{host} is not a loopback address: the dashboard can replay requests into your services, "
            "so serving it to the network needs web_allow_remote = true (or --web-allow-remote)"
        )
    return WebConfig(host=str(address), port=port, allowRemote=allowRemote)


@attr.s(frozen=True, auto_attribs=True, kw_only=True)
class TorConfig:
    """
    C{[tor]}: whether and how the node uses Tor (issue 10; the names are
    shared with L{beam.daemon.tor}).

    @ivar mode: one of L{TOR_MODES}.
    @ivar control: a Twisted client endpoint string of a running tor's
        control port or socket to attach to (C{"unix:path=..."} or
        C{"tcp:host=...:port=..."}, short forms normalised by
        L{normaliseControl}); L{None} to launch our own tor.
    @ivar binary: the tor to launch; L{None} for C{tor} on C{PATH}.
    @ivar dataDir: a launched tor's C{DataDirectory}; L{None} for
        C{<home>/tor/data}.
    @ivar port: the onion service's virtual port.
    @ivar options: extra torrc options for a launched tor, each name with
        its values (an option such as C{DirAuthority} is repeated).
    @ivar bootstrapTimeout: seconds tor has to bootstrap and publish the
        onion service.
    """

    mode: str = "off"
    control: str | None = None
    binary: str | None = None
    dataDir: str | None = None
    port: int = 4001
    options: tuple[tuple[str, tuple[str, ...]], ...] = ()
    bootstrapTimeout: float = 300.0


@attr.s(frozen=True, auto_attribs=True, kw_only=True)
class Config:
    """
    A validated configuration; C{Config()} is the defaults.

    @ivar limits: the resource limits (C{[limits]} applied to
        L{defaultLimits}).
    @ivar handshakeTimeout: seconds an inbound connection has to finish
        the security handshake; L{None} for the node's default.
    @ivar limitsEnabled: C{[limits] enabled}: L{False} runs the node
        with no resource manager (to measure what it costs; never on a
        node strangers can reach).
    """

    listen: tuple[Multiaddr, ...] = attr.ib(factory=_defaultListen)
    bootstrap: tuple[Multiaddr, ...] = ()
    logFormat: str = "text"
    tunnels: tuple[TunnelConfig, ...] = ()
    forwards: tuple[ForwardConfig, ...] = ()
    plugins: bool = True
    disabledPlugins: tuple[str, ...] = ()
    limits: Limits = attr.ib(factory=defaultLimits)
    handshakeTimeout: float | None = None
    limitsEnabled: bool = True
    relayMode: str = "default"
    relayLimits: dict[str, int | float] = attr.ib(factory=dict)
    stunServers: tuple[str, ...] = ()
    stunServer: bool = True
    portMapping: bool = False
    turnServers: tuple[TurnServerConfig, ...] = ()
    tor: TorConfig = attr.ib(factory=TorConfig)
    mdns: bool = True
    gossip: bool = True
    dns: DnsConfig = attr.ib(factory=DnsConfig)
    web: WebConfig = attr.ib(factory=WebConfig)
    inspect: InspectConfig = attr.ib(factory=InspectConfig)


#: What C{relay} may say.
RELAY_MODES = ("off", "default", "open")

#: The C{[relay]} limit keys, with the L{RelayLimits
#: <beam.p2p.relay.hop.RelayLimits>} field each sets, and its bounds.
RELAY_LIMIT_KEYS: dict[str, tuple[str, int, int]] = {
    "max_reservations": ("maxReservations", 1, 1_000_000),
    "max_reservations_per_ip": ("maxReservationsPerIP", 1, 1_000_000),
    "max_circuits": ("maxCircuits", 1, 1_000_000),
    "max_circuits_per_peer": ("maxCircuitsPerPeer", 1, 1_000_000),
    "reservation_ttl": ("reservationTTL", 60, 86_400),
    "duration": ("duration", 0, 86_400 * 365),
    "data": ("data", 0, 2**62),
    "requests_per_minute": ("requestsPerMinute", 1, 1_000_000),
    "request_burst": ("requestBurst", 1, 1_000_000),
}

#: The C{[relay]} byte rates (bytes per second, both directions counted,
#: written as sizes: C{"10MiB"}, C{"512KiB/s"}, C{1048576}), with the
#: L{RelayLimits} field each sets.  0 means no cap, as for C{data}.
RELAY_RATE_KEYS: dict[str, str] = {
    "bandwidth": "bandwidth",
    "circuit_bandwidth": "circuitBandwidth",
}

#: The smallest byte rate a relay may be given: below it a circuit could
#: not carry a hole-punch handshake in reasonable time.
MIN_RELAY_RATE = 1024

#: The most STUN servers C{stun_servers} may list.
MAX_STUN_SERVERS = 8

#: The most TURN servers C{turn_servers} may list (the node allocates on
#: the first that works).
MAX_TURN_SERVERS = 4

#: The keys of a C{turn_servers} entry.
_TURN_KEYS = {"url", "username", "password"}


#: The C{[limits]} keys that are not a scope's table.
_LIMITS_SCALARS = {"handshake_timeout", "enabled"}

#: The longest C{handshake_timeout} accepted: a slot held longer than this
#: by an unauthenticated stranger is a slot lost.
MAX_HANDSHAKE_TIMEOUT = 300.0


# -- finding lines -------------------------------------------------------------

_PART = r"""(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')"""
_HEADER = re.compile(rf"""^\s*(\[\[?)\s*({_PART}(?:\s*\.\s*{_PART})*)\s*\]\]?\s*(?:#.*)?$""")
_PARTS = re.compile(_PART)
_KEY = re.compile(r"""^\s*([A-Za-z0-9_-]+|"[^"]*"|'[^']*')\s*(?:\.[^=]*)?=""")

Context = tuple[str, int]
_TOP: Context = ("", 0)


class _Locator:
    """
    Best-effort line numbers for keys and values of a TOML text.

    A context is C{("", 0)} for the top level, or C{(table, n)} for the
    n-th (0-based) C{[[table]]} or the C{[table]}.  Lines inside multi-line
    strings are skipped.
    """

    def __init__(self, source: str) -> None:
        self.lines = source.splitlines()
        self.headers: dict[Context, int] = {}
        self.keys: dict[tuple[Context, str], int] = {}
        self.spans: dict[Context, tuple[int, int]] = {}
        counts: dict[str, int] = {}
        context, start = _TOP, 1
        inString: str | None = None
        for number, line in enumerate(self.lines, start=1):
            if inString is not None:
                if line.count(inString) % 2 == 1:
                    inString = None
                continue
            header = _HEADER.match(line)
            if header:
                self.spans.setdefault(context, (start, number - 1))
                # [a."b.c"] is table "a.b.c": dotted, quotes dropped.
                name = ".".join(part.strip("\"'") for part in _PARTS.findall(header.group(2)))
                if header.group(1) == "[[":
                    index = counts.get(name, 0)
                    counts[name] = index + 1
                else:
                    index = 0
                context, start = (name, index), number
                self.headers.setdefault(context, number)
                continue
            key = _KEY.match(line)
            if key:
                self.keys.setdefault((context, key.group(1).strip("\"'")), number)
            for quote in ('"""', "'''"):
                if line.count(quote) % 2 == 1:
                    inString = quote
        self.spans.setdefault(context, (start, len(self.lines)))

    def line(self, context: Context, key: str | None = None, value: str | None = None) -> int | None:
        """
        The line of C{key} in C{context} (or of the C{value} string
        literal after it, for list items), else of the context's header.
        """
        if key is not None:
            found = self.keys.get((context, key))
            if found is not None:
                if value is not None:
                    _, end = self.spans.get(context, (found, len(self.lines)))
                    for number in range(found, end + 1):
                        text = self.lines[number - 1]
                        if f'"{value}"' in text or f"'{value}'" in text:
                            return number
                return found
        header = self.headers.get(context)
        if header is None and context != _TOP:
            # e.g. a dotted key `tunnel.port = 1` at the top level.
            return self.keys.get((_TOP, context[0]))
        return header

    def pathLine(self, path: str) -> int | None:
        """
        The line of the value at the dotted C{path} (C{"limits.peer.fd"}),
        however the file spells it: under the deepest C{[table]} header
        that is a prefix of it, as a (dotted) key of that table or of the
        top level, else that header's line.  Parts may contain dots
        (C{limits.protocol./beam/kad/1.0.0.fd}), so keys are matched as
        prefixes rather than split.
        """
        tables = sorted((c for c in self.headers if c[1] == 0), key=lambda c: len(c[0]), reverse=True)
        for context in [*tables, _TOP]:
            name = context[0]
            if name:
                if path == name:
                    return self.headers[context]
                if not path.startswith(name + "."):
                    continue
                rest = path[len(name) + 1:]
            else:
                rest = path
            keys = [k for (c, k) in self.keys if c == context and (rest == k or rest.startswith(k + "."))]
            if keys:
                return self.keys[(context, max(keys, key=len))]
            if name:
                return self.headers[context]
        return None


class _Problems:
    def __init__(self, fileName: str, locator: _Locator) -> None:
        self.fileName = fileName
        self.locator = locator
        self.items: list[tuple[int, str]] = []

    def add(self, message: str, context: Context = _TOP, key: str | None = None,
            value: str | None = None) -> None:
        line = self.locator.line(context, key, value)
        where = f"{self.fileName}:{line}" if line is not None else self.fileName
        self.items.append((line or 0, f"{where}: {message}"))

    def addAt(self, message: str, line: int | None) -> None:
        where = f"{self.fileName}:{line}" if line is not None else self.fileName
        self.items.append((line or 0, f"{where}: {message}"))

    def sorted(self) -> list[str]:
        return [text for _, text in sorted(self.items, key=lambda item: item[0])]


# -- validation ----------------------------------------------------------------

_TOP_KEYS = {"listen", "bootstrap", "log_format", "tunnel", "forward", "plugins", "limits", "relay",
             "stun_servers", "stun_server", "port_mapping", "turn_servers", "tor", "mdns", "gossip", "dns",
             "web", "web_allow_remote", "inspect"}
_INSPECT_KEYS = {"enabled", "max_requests", "max_bytes", "body_cap"}
_DNS_KEYS = {"enabled", "bind", "port", "addresses"}
_TOR_KEYS = {"mode", "control", "binary", "data_dir", "port", "bootstrap_timeout", "options"}
_PLUGINS_KEYS = {"enabled", "disable"}
_TUNNEL_KEYS = {"port", "name", "udp", "compress", "allow", "secret"}
_FORWARD_KEYS = {"target", "port", "bind", "service"}


def _typeName(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", str: "a string", list: "a list",
            dict: "a table", float: "a number"}.get(type(value), type(value).__name__)


def _isInt(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _relayRate(value: object) -> int | None:
    """
    A C{[relay]} byte rate: a size (L{parseSize}), optionally ending in
    C{"/s"}; 0 (no cap) or at least L{MIN_RELAY_RATE}.  L{None} if it is
    neither.
    """
    if isinstance(value, str) and value.rstrip().lower().endswith("/s"):
        value = value.rstrip()[:-2]
    try:
        rate = parseSize(value)
    except ValueError:
        return None
    if rate and rate < MIN_RELAY_RATE:
        return None
    return rate


class _Validator:
    def __init__(self, data: dict[str, Any], problems: _Problems) -> None:
        self.data = data
        self.p = problems

    def multiaddrs(self, key: str, listen: bool) -> tuple[Multiaddr, ...]:
        value = self.data[key]
        if not isinstance(value, list):
            self.p.add(f"{key} must be a list of multiaddr strings, not {_typeName(value)}", key=key)
            return ()
        out = []
        for item in value:
            if not isinstance(item, str):
                self.p.add(f"{key} entries must be strings, not {_typeName(item)}", key=key)
                continue
            try:
                ma = Multiaddr.fromString(item)
                if listen:
                    _checkListenable(ma)
                elif ma.peerID() is None:
                    raise InvalidMultiaddr(f"{item} must end in /p2p/<peer ID>")
            except InvalidMultiaddr as e:
                self.p.add(f"{key}: {e}", key=key, value=item)
                continue
            out.append(ma)
        return tuple(out)

    def tables(self, key: str) -> list[tuple[Context, dict[str, Any]]]:
        value = self.data[key]
        if isinstance(value, dict):
            self.p.add(f"[{key}] must be written [[{key}]] (there can be several)", (key, 0))
            return []
        if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
            self.p.add(f"{key} must be a list of [[{key}]] tables", key=key)
            return []
        return [((key, i), t) for i, t in enumerate(value)]

    def unknown(self, table: dict[str, Any], known: set[str], context: Context, what: str) -> None:
        for key in sorted(set(table) - known):
            if context == _TOP and isinstance(table[key], dict):
                self.p.add(f"unknown table [{key}]", (key, 0))
            else:
                self.p.add(f"unknown key {key!r} in {what} (expected one of: {', '.join(sorted(known))})",
                           context, key)

    def port(self, table: dict[str, Any], context: Context, required: bool) -> int | None:
        if "port" not in table:
            if required:
                self.p.add("port is required", context)
            return None
        value = table["port"]
        if not _isInt(value) or not 1 <= value <= 65535:
            self.p.add(f"port must be a number from 1 to 65535, not {value!r}", context, "port")
            return None
        return value

    def flag(self, table: dict[str, Any], key: str, context: Context) -> bool:
        value = table.get(key, False)
        if not isinstance(value, bool):
            self.p.add(f"{key} must be true or false, not {value!r}", context, key)
            return False
        return value

    def label(self, table: dict[str, Any], key: str, context: Context) -> str | None:
        value = table.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not _LABEL.match(value):
            self.p.add(f"{key} must be 1-63 letters, digits or '-' (not starting or ending with '-'), "
                       f"not {value!r}", context, key)
            return None
        return value

    def tunnel(self, context: Context, table: dict[str, Any]) -> TunnelConfig | None:
        self.unknown(table, _TUNNEL_KEYS, context, "[[tunnel]]")
        before = len(self.p.items)
        port = self.port(table, context, required=True)
        name = self.label(table, "name", context)
        udp = self.flag(table, "udp", context)
        compress = self.flag(table, "compress", context)
        allow: tuple[PeerID, ...] | None = None
        if "allow" in table:
            value = table["allow"]
            if not isinstance(value, list):
                self.p.add(f"allow must be a list of peer IDs, not {_typeName(value)}", context, "allow")
            elif not value:
                self.p.add("allow is empty, which would admit no one; remove it to admit everyone",
                           context, "allow")
            else:
                peers = []
                for item in value:
                    try:
                        if not isinstance(item, str):
                            raise InvalidPeerID(f"allow entries must be peer ID strings, not {_typeName(item)}")
                        peers.append(PeerID.fromString(item))
                    except InvalidPeerID as e:
                        self.p.add(str(e), context, "allow", item if isinstance(item, str) else None)
                allow = tuple(peers)
        secret = table.get("secret", False)
        if not isinstance(secret, (bool, str)) or secret == "":
            self.p.add("secret must be true, false or a non-empty string", context, "secret")
            secret = False
        if port is None or len(self.p.items) > before:
            return None
        return TunnelConfig(port=port, name=name, udp=udp, compress=compress, allow=allow, secret=secret)

    def forward(self, context: Context, table: dict[str, Any]) -> ForwardConfig | None:
        self.unknown(table, _FORWARD_KEYS, context, "[[forward]]")
        before = len(self.p.items)
        port = self.port(table, context, required=False)
        service = self.label(table, "service", context)
        bind = table.get("bind", DEFAULT_BIND)
        try:
            if not isinstance(bind, str):
                raise ValueError
            ipaddress.ip_address(bind)
        except ValueError:
            self.p.add(f"bind must be an IP address such as \"127.0.0.1\", not {bind!r}", context, "bind")
        target = table.get("target")
        address = None
        if target is None:
            self.p.add("target is required", context)
        elif not isinstance(target, str):
            self.p.add(f"target must be a string, not {_typeName(target)}", context, "target")
        else:
            try:
                address = parseShareAddress(target, service)
            except InvalidShareAddress as e:
                self.p.add(f"target: {e}", context, "target")
        if address is None or len(self.p.items) > before:
            return None
        assert isinstance(target, str)
        return ForwardConfig(target=target, address=address, port=port, bind=bind, service=service)

    def plugins(self) -> dict[str, Any]:
        value = self.data["plugins"]
        context = ("plugins", 0)
        if not isinstance(value, dict):
            self.p.add(f"plugins must be a [plugins] table, not {_typeName(value)}", key="plugins")
            return {}
        self.unknown(value, _PLUGINS_KEYS, context, "[plugins]")
        out: dict[str, Any] = {"plugins": self.flag(value, "enabled", context) if "enabled" in value else True}
        disable = value.get("disable", [])
        if not isinstance(disable, list) or not all(isinstance(n, str) for n in disable):
            self.p.add("disable must be a list of plugin service names", context, "disable")
        else:
            out["disabledPlugins"] = tuple(disable)
        return out

    def limits(self) -> dict[str, Any]:
        """
        The C{[limits]} table: its scalars here, its scopes' tables by
        L{limitsFromTable}, whose C{"limits.KEY: message"} problems are
        placed at the line that KEY is on.
        """
        value = self.data["limits"]
        context = ("limits", 0)
        if not isinstance(value, dict):
            self.p.addAt(f"limits must be one [limits] table, not {_typeName(value)}",
                         self.p.locator.pathLine("limits"))
            return {}
        out: dict[str, Any] = {}
        base = defaultLimits()
        scopes = set(base.asJSON())
        known = scopes | _LIMITS_SCALARS
        table = {}
        for key, item in value.items():
            if key in scopes:
                table[key] = item
            elif key not in known:
                self.p.addAt(f"limits: unknown key {key!r} (expected one of: {', '.join(sorted(known))})",
                             self.p.locator.pathLine(f"limits.{key}"))
        if "handshake_timeout" in value:
            timeout = value["handshake_timeout"]
            if (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                    or not 0 < timeout <= MAX_HANDSHAKE_TIMEOUT):
                self.p.add(f"handshake_timeout must be a number of seconds above 0 and at most "
                           f"{MAX_HANDSHAKE_TIMEOUT:g}, not {timeout!r}", context, "handshake_timeout")
            else:
                out["handshakeTimeout"] = float(timeout)
        if "enabled" in value:
            out["limitsEnabled"] = self.flag(value, "enabled", context)
        limits, problems = limitsFromTable(table, base)
        for problem in problems:
            where, _, message = problem.partition(": ")
            unknown = _UNKNOWN_KEY.match(message)
            path = f"{where}.{unknown.group(1)}" if unknown else where
            self.p.addAt(problem, self.p.locator.pathLine(path))
        out["limits"] = limits
        return out

    def relay(self) -> dict[str, Any]:
        """
        C{relay = "MODE"}, or a C{[relay]} table with C{mode} and the
        operator's limits (L{RELAY_LIMIT_KEYS}).
        """
        value = self.data["relay"]
        out: dict[str, Any] = {}
        if isinstance(value, str):
            if value not in RELAY_MODES:
                self.p.add(f"relay must be \"off\", \"default\" or \"open\", not {value!r}", key="relay")
            else:
                out["relayMode"] = value
            return out
        if not isinstance(value, dict):
            self.p.add(f"relay must be \"off\", \"default\", \"open\" or a [relay] table, "
                       f"not {_typeName(value)}", key="relay")
            return out
        context = ("relay", 0)
        self.unknown(value, {"mode", *RELAY_LIMIT_KEYS, *RELAY_RATE_KEYS}, context, "[relay]")
        mode = value.get("mode", "default")
        if mode not in RELAY_MODES:
            self.p.add(f"mode must be \"off\", \"default\" or \"open\", not {mode!r}", context, "mode")
        else:
            out["relayMode"] = mode
        limits: dict[str, int | float] = {}
        for key, (field, low, high) in RELAY_LIMIT_KEYS.items():
            if key not in value:
                continue
            item = value[key]
            if not _isInt(item) or not low <= item <= high:
                self.p.add(f"{key} must be a whole number from {low} to {high}, not {item!r}", context, key)
                continue
            limits[field] = float(item) if field == "reservationTTL" else item
        for key, field in RELAY_RATE_KEYS.items():
            if key not in value:
                continue
            rate = _relayRate(value[key])
            if rate is None:
                self.p.add(f"{key} must be bytes per second such as \"10MiB\" (0 for no cap, else at least "
                           f"{MIN_RELAY_RATE}), not {value[key]!r}", context, key)
            elif rate:
                limits[field] = rate
        out["relayLimits"] = limits
        return out

    def stunServers(self) -> tuple[str, ...]:
        value = self.data["stun_servers"]
        if not isinstance(value, list):
            self.p.add(f"stun_servers must be a list of \"host:port\" strings, not {_typeName(value)}",
                       key="stun_servers")
            return ()
        if len(value) > MAX_STUN_SERVERS:
            self.p.add(f"stun_servers lists {len(value)} servers; at most {MAX_STUN_SERVERS} are asked",
                       key="stun_servers")
            return ()
        from beam.p2p.nat.stunclient import parseServer

        out = []
        for item in value:
            if not isinstance(item, str):
                self.p.add(f"stun_servers entries must be strings, not {_typeName(item)}", key="stun_servers")
                continue
            try:
                host, port = parseServer(item)
                if not host or not 0 < port < 65536:
                    raise ValueError(item)
            except ValueError:
                self.p.add(f"stun_servers: {item!r} is not HOST, HOST:PORT or [IPv6]:PORT",
                           key="stun_servers", value=item)
                continue
            out.append(item)
        return tuple(out)

    def turnServers(self) -> tuple[TurnServerConfig, ...]:
        """
        C{turn_servers}: a list of C{{url = "turn:HOST:PORT", username,
        password}} tables (inline or C{[[turn_servers]]}).  Problems name
        the URL or the key, never the password.
        """
        value = self.data["turn_servers"]
        if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
            self.p.add("turn_servers must be a list of {url = \"turn:HOST:PORT\", username = \"...\", "
                       "password = \"...\"} tables", key="turn_servers")
            return ()
        if len(value) > MAX_TURN_SERVERS:
            self.p.add(f"turn_servers lists {len(value)} servers; at most {MAX_TURN_SERVERS} are used",
                       key="turn_servers")
            return ()
        out = []
        for index, table in enumerate(value):
            context = ("turn_servers", index)
            self.unknown(table, _TURN_KEYS, context, "a turn_servers entry")
            before = len(self.p.items)
            url = table.get("url")
            where: tuple[str, int] | None = None
            if url is None:
                self.p.add(f"turn_servers entry #{index + 1}: url is required", context, "url")
            elif not isinstance(url, str):
                self.p.add(f"turn_servers: url must be a string, not {_typeName(url)}", context, "url")
            else:
                try:
                    where = parseTurnURL(url)
                except ValueError as e:
                    self.p.add(f"turn_servers: {e}", context, "url", url)
            for key in ("username", "password"):
                item = table.get(key)
                if item is None:
                    self.p.add(f"turn_servers entry #{index + 1}: {key} is required", context, key)
                elif not isinstance(item, str) or not item or len(item) > 512:
                    # Never echo the value: it may be the password.
                    self.p.add(f"turn_servers: {key} must be a non-empty string of at most 512 characters",
                               context, key)
            if len(self.p.items) > before or where is None:
                continue
            assert isinstance(url, str)
            out.append(TurnServerConfig(url=url, host=where[0], port=where[1],
                                        username=table["username"], password=table["password"]))
        return tuple(out)

    def tor(self) -> TorConfig:
        """
        C{tor = "MODE"}, or a C{[tor]} table (L{TorConfig}).
        """
        value = self.data["tor"]
        modes = ", ".join(f'"{m}"' for m in TOR_MODES)
        if isinstance(value, str):
            if value not in TOR_MODES:
                self.p.add(f"tor must be {modes}, not {value!r}", key="tor")
                return TorConfig()
            return TorConfig(mode=value)
        if not isinstance(value, dict):
            self.p.add(f"tor must be {modes} or a [tor] table, not {_typeName(value)}", key="tor")
            return TorConfig()
        context = ("tor", 0)
        self.unknown(value, _TOR_KEYS, context, "[tor]")
        kw: dict[str, Any] = {}
        # No mode: off, so that the table can hold how to reach tor while
        # `--tor` says when to use it.
        mode = value.get("mode", "off")
        if mode not in TOR_MODES:
            self.p.add(f"mode must be {modes}, not {mode!r}", context, "mode")
        else:
            kw["mode"] = mode
        if "control" in value:
            control = value["control"]
            try:
                if not isinstance(control, str):
                    raise ValueError(f"must be a string, not {_typeName(control)}")
                kw["control"] = normaliseControl(control)
            except ValueError as e:
                self.p.add(f"control {e}", context, "control")
        for key, field in (("binary", "binary"), ("data_dir", "dataDir")):
            if key not in value:
                continue
            item = value[key]
            if not isinstance(item, str) or not item or "\0" in item:
                self.p.add(f"{key} must be a path, not {item!r}", context, key)
            else:
                kw[field] = item
        if "port" in value:
            port = self.port(value, context, required=False)
            if port is not None:
                kw["port"] = port
        if "bootstrap_timeout" in value:
            timeout = value["bootstrap_timeout"]
            if (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                    or not 0 < timeout <= MAX_TOR_BOOTSTRAP_TIMEOUT):
                self.p.add(f"bootstrap_timeout must be a number of seconds above 0 and at most "
                           f"{MAX_TOR_BOOTSTRAP_TIMEOUT:g}, not {timeout!r}", context, "bootstrap_timeout")
            else:
                kw["bootstrapTimeout"] = float(timeout)
        if "options" in value:
            kw["options"] = self.torOptions(value["options"])
        if "control" in kw:
            # What only a launched tor uses would be silently ignored.
            for key in ("options", "binary", "data_dir"):
                if key in value:
                    self.p.addAt(f"{key} applies only to a tor that Beam launches, not to one it attaches to "
                                 "with control", self.p.locator.pathLine(f"tor.{key}"))
        return TorConfig(**kw)

    def torOptions(self, value: Any) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """
        C{[tor.options]} (or an inline table): torrc option names with a
        string, a number, a boolean (written 1 or 0) or a list of strings
        (the option repeated).  No value may hold a line break: each
        becomes one torrc line.
        """
        if not isinstance(value, dict):
            self.p.addAt(f"options must be a [tor.options] table, not {_typeName(value)}",
                         self.p.locator.pathLine("tor.options"))
            return ()
        out = []
        for name, item in value.items():
            where = self.p.locator.pathLine(f"tor.options.{name}")
            if not _TOR_OPTION.match(name):
                self.p.addAt(f"tor option names are letters, digits and '_', not {name!r}", where)
                continue
            if name.lower() in _TOR_OPTIONS_OF_OURS:
                self.p.addAt(f"tor option {name} is set by Beam ({_TOR_OPTIONS_OF_OURS[name.lower()]})", where)
                continue
            items = item if isinstance(item, list) else [item]
            if not items:
                self.p.addAt(f"tor option {name} has no value", where)
                continue
            values: list[str] = []
            for one in items:
                text = _torOptionValue(one, inList=isinstance(item, list))
                if text is None:
                    self.p.addAt(f"tor option {name} must be a string, a number, true/false or a list of "
                                 f"strings, each on one line, not {one!r}", where)
                    break
                values.append(text)
            else:
                out.append((name, tuple(values)))
        return tuple(out)

    def config(self) -> Config:
        d = self.data
        self.unknown(d, _TOP_KEYS, _TOP, "the top level")
        kw: dict[str, Any] = {}
        if "listen" in d:
            kw["listen"] = self.multiaddrs("listen", listen=True)
        if "bootstrap" in d:
            kw["bootstrap"] = self.multiaddrs("bootstrap", listen=False)
        if "log_format" in d:
            fmt = d["log_format"]
            if fmt not in LOG_FORMATS:
                self.p.add(f"log_format must be \"text\" or \"json\", not {fmt!r}", key="log_format")
            else:
                kw["logFormat"] = fmt
        tunnels = []
        if "tunnel" in d:
            names: dict[str, int] = {}
            ports: dict[tuple[int, bool], int] = {}
            for index, (context, table) in enumerate(self.tables("tunnel")):
                tunnel = self.tunnel(context, table)
                if tunnel is None:
                    continue
                if tunnel.name is not None:
                    if tunnel.name in names:
                        self.p.add(f"tunnel name {tunnel.name!r} is already used by tunnel "
                                   f"#{names[tunnel.name] + 1}", context, "name")
                        continue
                    names[tunnel.name] = index
                key = (tunnel.port, tunnel.udp)
                if key in ports:
                    self.p.add(f"{'UDP' if tunnel.udp else 'TCP'} port {tunnel.port} is already exposed by "
                               f"tunnel #{ports[key] + 1}", context, "port")
                    continue
                ports[key] = index
                tunnels.append(tunnel)
        kw["tunnels"] = tuple(tunnels)
        forwards = []
        if "forward" in d:
            local: dict[tuple[str, int], int] = {}
            for index, (context, table) in enumerate(self.tables("forward")):
                forward = self.forward(context, table)
                if forward is None:
                    continue
                if forward.port is not None:
                    where = (forward.bind, forward.port)
                    if where in local:
                        self.p.add(f"local port {forward.port} is already used by forward #{local[where] + 1}",
                                   context, "port")
                        continue
                    local[where] = index
                forwards.append(forward)
        kw["forwards"] = tuple(forwards)
        if "plugins" in d:
            kw.update(self.plugins())
        if "limits" in d:
            kw.update(self.limits())
        if "relay" in d:
            kw.update(self.relay())
        if "stun_servers" in d:
            kw["stunServers"] = self.stunServers()
        if "stun_server" in d:
            kw["stunServer"] = self.flag(d, "stun_server", _TOP)
        if "port_mapping" in d:
            kw["portMapping"] = self.flag(d, "port_mapping", _TOP)
        if "turn_servers" in d:
            kw["turnServers"] = self.turnServers()
        if "tor" in d:
            kw["tor"] = self.tor()
        for flagKey in ("mdns", "gossip"):
            if flagKey in d:
                kw[flagKey] = self.flag(d, flagKey, _TOP)
        if "dns" in d:
            kw["dns"] = self.dns()
        if "web" in d or "web_allow_remote" in d:
            kw["web"] = self.web()
        if "inspect" in d:
            kw["inspect"] = self.inspect()
        return Config(**kw)

    def web(self) -> WebConfig:
        """
        C{web} (an address, C{"off"} or a boolean) and C{web_allow_remote}.
        """
        d = self.data
        allowRemote = bool(self.flag(d, "web_allow_remote", _TOP)) if "web_allow_remote" in d else False
        value = d.get("web", True)
        if isinstance(value, bool):
            return WebConfig(enabled=value, allowRemote=allowRemote)
        if not isinstance(value, str):
            self.p.add(f"web must be an address such as \"{DEFAULT_WEB}\", \"off\" or a boolean, "
                       f"not {_typeName(value)}", key="web")
            return WebConfig()
        try:
            return parseWebAddress(value, allowRemote)
        except ValueError as e:
            self.p.add(f"web: {e}", key="web")
            return WebConfig()

    def inspect(self) -> InspectConfig:
        """
        The C{[inspect]} table (L{InspectConfig}); C{inspect = false} is
        short for a table saying C{enabled = false}.
        """
        value = self.data["inspect"]
        if isinstance(value, bool):
            return InspectConfig(enabled=value)
        if not isinstance(value, dict):
            self.p.add(f"inspect must be true, false or an [inspect] table, not {_typeName(value)}",
                       key="inspect")
            return InspectConfig()
        context = ("inspect", 0)
        self.unknown(value, _INSPECT_KEYS, context, "[inspect]")
        kw: dict[str, Any] = {}
        if "enabled" in value:
            kw["enabled"] = self.flag(value, "enabled", context)
        bounds = {"max_requests": ("maxRequests", 1, 100_000), "max_bytes": ("maxBytes", 0, 1 << 32),
                  "body_cap": ("bodyCap", 0, 16 << 20)}
        for key, (field, low, high) in bounds.items():
            if key not in value:
                continue
            raw = value[key]
            try:
                number = parseSize(raw) if isinstance(raw, str) else raw
                if isinstance(number, bool) or not isinstance(number, int) or not low <= number <= high:
                    raise ValueError
                kw[field] = number
            except ValueError:
                self.p.add(f"{key} must be a whole number from {low} to {high} (or a size such as \"64KiB\"), "
                           f"not {raw!r}", context, key)
        return InspectConfig(**kw)

    def dns(self) -> DnsConfig:
        """
        The C{[dns]} table (L{DnsConfig}); C{dns = false} is short for a
        table saying C{enabled = false}.
        """
        value = self.data["dns"]
        if isinstance(value, bool):
            return DnsConfig(enabled=value)
        if not isinstance(value, dict):
            self.p.add(f"dns must be true, false or a [dns] table, not {_typeName(value)}", key="dns")
            return DnsConfig()
        context = ("dns", 0)
        self.unknown(value, _DNS_KEYS, context, "[dns]")
        kw: dict[str, Any] = {}
        if "enabled" in value:
            kw["enabled"] = self.flag(value, "enabled", context)
        if "port" in value:
            port = self.port(value, context, required=False)
            if port is not None:
                kw["port"] = port
        if "bind" in value:
            bind = value["bind"]
            try:
                if not isinstance(bind, str) or not ipaddress.ip_address(bind).is_loopback:
                    raise ValueError
                kw["bind"] = bind
            except ValueError:
                self.p.add(f"bind must be a loopback address (the server answers this machine only), "
                           f"not {bind!r}", context, "bind")
        if "addresses" in value:
            net = value["addresses"]
            try:
                if not isinstance(net, str):
                    raise ValueError
                network = ipaddress.ip_network(net, strict=True)
                if not network.is_loopback or network.num_addresses < 4:
                    raise ValueError
                kw["addresses"] = str(network)
            except ValueError:
                self.p.add(f"addresses must be a loopback network such as \"127.77.0.0/16\" (at least 4 "
                           f"addresses), not {net!r}", context, "addresses")
        return DnsConfig(**kw)


#: The longest C{[tor] bootstrap_timeout} accepted.
MAX_TOR_BOOTSTRAP_TIMEOUT = 3600.0

_TOR_OPTION = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")

#: torrc options Beam sets itself, (lower-cased) with where to set them.
_TOR_OPTIONS_OF_OURS = {
    "datadirectory": "use [tor] data_dir",
    "controlport": "it launches tor with its own control port",
    "hiddenservicedir": "the onion service is made through the control port",
    "hiddenserviceport": "use [tor] port",
}


def _torOptionValue(value: object, inList: bool) -> str | None:
    """
    One value of a C{[tor.options]} option as torrc text: a string (on
    one line), or, unless in a list, a number or a boolean (C{1}/C{0});
    L{None} for anything else.
    """
    if isinstance(value, str):
        return None if any(c in value for c in "\r\n\0") else value
    if inList:
        return None
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (int, float)):
        return str(value)
    return None


def normaliseControl(text: str) -> str:
    """
    A tor control endpoint as a Twisted client endpoint string: the short
    forms C{"unix:/run/tor/control"} (or just C{"/run/tor/control"}),
    C{"127.0.0.1:9051"}, C{"[::1]:9051"} and C{"9051"} (on 127.0.0.1)
    become C{"unix:path=..."} and C{"tcp:host=...:port=..."}; C{unix:}
    and C{tcp:} endpoint strings are kept as written.

    @raise ValueError: it is none of these; the message says what is
        expected.
    """
    expected = ("must be a control socket (\"unix:/run/tor/control\") or port (\"127.0.0.1:9051\", "
                f"\"9051\"), not {text!r}")
    text = text.strip()
    if text.startswith("/"):
        text = "unix:" + text
    if text.startswith("unix:") and not text.startswith("unix:path="):
        path = text[len("unix:"):]
        if not path or ":" in path:
            raise ValueError(expected)
        text = "unix:path=" + path
    elif not text.startswith(("unix:", "tcp:")):
        host, sep, port = text.rpartition(":")
        if not sep:
            host = "127.0.0.1"
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        try:
            number = int(port)
        except ValueError:
            raise ValueError(expected) from None
        if not 0 < number < 65536 or not host or any(c in host for c in "/=\\ \t[]"):
            raise ValueError(expected)
        text = f"tcp:host={host.replace(':', chr(92) + ':')}:port={number}"
    from twisted.internet.endpoints import clientFromString

    try:
        clientFromString(None, text)
    except (ValueError, TypeError, KeyError):
        raise ValueError(expected) from None
    return text


#: TURN's default port (RFC 8656).
TURN_PORT = 3478


def parseTurnURL(url: str) -> tuple[str, int]:
    """
    C{"turn:HOST"}, C{"turn:HOST:PORT"} or C{"turn:[V6]:PORT"}, with an
    optional C{?transport=tcp} (RFC 7065), as (host, port).  C{turns:}
    (TLS) and UDP-only transports are refused: Beam allocates over TCP
    (RFC 6062).

    @raise ValueError: saying what is wrong.
    """
    from beam.p2p.nat.stunclient import parseServer

    scheme, sep, rest = url.partition(":")
    if not sep or scheme.lower() not in ("turn", "turns"):
        raise ValueError(f"{url!r} is not a turn:HOST:PORT URL")
    if scheme.lower() == "turns":
        raise ValueError(f"{url!r}: turns: (TURN over TLS) is not supported; use turn:")
    rest, _, query = rest.partition("?")
    if query and query.lower() != "transport=tcp":
        raise ValueError(f"{url!r}: only ?transport=tcp is supported (Beam allocates TCP relays)")
    try:
        host, port = parseServer(rest, TURN_PORT)
    except ValueError:
        raise ValueError(f"{url!r} is not a turn:HOST:PORT URL") from None
    if any(c in host for c in "/@ \t"):
        raise ValueError(f"{url!r} is not a turn:HOST:PORT URL")
    return host, port


_UNKNOWN_KEY = re.compile(r"""^unknown key ['"](.*?)['"] """)


_SYNTAX_LINE = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")

MAX_CONFIG_BYTES = 1024 * 1024
"""
The largest C{config.toml} Beam reads; a real one is a few kilobytes.
"""

MAX_CONFIG_DEPTH = 32
"""
How deeply tables and arrays may nest in C{config.toml}; Beam's own
settings use three levels.
"""


def _depth(data: dict[str, Any]) -> int:
    """
    How deeply C{data}'s tables and arrays nest (C{data} itself is 1),
    walked without recursion; stops counting past L{MAX_CONFIG_DEPTH}.
    """
    deepest = 1
    pending: list[tuple[Any, int]] = [(data, 1)]
    while pending:
        value, depth = pending.pop()
        deepest = max(deepest, depth)
        if deepest > MAX_CONFIG_DEPTH:
            break
        children = value.values() if isinstance(value, dict) else value
        pending.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def _readBounded(path: Path) -> bytes:
    """
    Read at most L{MAX_CONFIG_BYTES} plus one byte of C{path}.
    """
    with open(path, "rb") as f:
        return f.read(MAX_CONFIG_BYTES + 1)


def _load(path: Path) -> tuple[Config, list[str]]:
    name = path.name
    try:
        raw = _readBounded(path)
    except FileNotFoundError:
        return Config(), []
    except OSError as e:
        return Config(), [f"{name}: cannot read {path}: {e.strerror}"]
    if len(raw) > MAX_CONFIG_BYTES:
        return Config(), [f"{name}: {path} is larger than {MAX_CONFIG_BYTES // 1024 // 1024} MiB; "
                          "Beam refuses to read it"]
    try:
        source = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        return Config(), [f"{name}:{line}: not valid UTF-8"]
    data: dict[str, Any] | None
    try:
        data = tomllib.loads(source)
    except tomllib.TOMLDecodeError as e:
        message = str(e)
        match = _SYNTAX_LINE.search(message)
        if match:
            message = message[: match.start()]
            return Config(), [f"{name}:{match.group(1)}: {message} (column {match.group(2)})"]
        return Config(), [f"{name}: {message}"]
    except RecursionError:
        data = None
    if data is None or _depth(data) > MAX_CONFIG_DEPTH:
        return Config(), [f"{name}: {path} nests tables or arrays more than {MAX_CONFIG_DEPTH} "
                          "levels deep; Beam refuses to read it"]
    problems = _Problems(name, _Locator(source))
    config = _Validator(data, problems).config()
    if any(isinstance(t.secret, str) for t in config.tunnels):
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except OSError:
            mode = 0
        if mode & 0o077:
            problems.items.append((0, (f"{name}: contains a tunnel secret but is readable by other users "
                                       f"(mode {mode:o}); run: chmod 600 {path}")))
    return config, problems.sorted()


def loadConfig(path: Path | str) -> Config:
    """
    Read and validate the configuration; a missing file gives the defaults.

    @raise ConfigError: listing every problem found.
    """
    config, problems = _load(Path(path))
    if problems:
        raise ConfigError(problems)
    return config


def checkConfig(path: Path | str) -> list[str]:
    """
    The problems C{beam config check} reports; empty when the file is valid
    (or absent).
    """
    return _load(Path(path))[1]


# -- command-line flags ----------------------------------------------------------------


def _checkListenable(ma: Multiaddr) -> None:
    """
    @raise InvalidMultiaddr: no transport of the daemon can listen on C{ma}.
    """
    from beam.p2p.transport.tcp import TCPTransport

    if not TCPTransport(None).canListen(ma):
        raise InvalidMultiaddr(f"cannot listen on {ma}: need /ip4 or /ip6 with /tcp")


def _flagAddrs(flag: str, values: Iterable[Multiaddr | str], listen: bool) -> tuple[Multiaddr, ...]:
    out, problems = [], []
    for value in values:
        try:
            ma = value if isinstance(value, Multiaddr) else Multiaddr.fromString(value)
            if listen:
                _checkListenable(ma)
            elif ma.peerID() is None:
                raise InvalidMultiaddr(f"{ma} must end in /p2p/<peer ID>")
            out.append(ma)
        except InvalidMultiaddr as e:
            problems.append(f"{flag}: {e}")
    if problems:
        raise ConfigError(problems)
    return tuple(out)


def mergeOptions(config: Config, **flags: Any) -> Config:
    """
    Combine the file's configuration with command-line flags; flags win.

    The rule: a flag that was not given (L{None}, or an empty list) leaves
    the file's value alone.  C{listen}, C{bootstrap} and C{logFormat}
    I{replace} the file's value (C{--listen} given twice means exactly those
    two addresses).  C{tunnels} and C{forwards} (sequences of
    L{TunnelConfig} / L{ForwardConfig}) are I{added} to the file's: a
    command-line tunnel replaces a file tunnel with the same name or the
    same port and protocol, and a command-line forward replaces a file
    forward on the same local port and bind address, so C{beam 3000
    --compress} overrides the file's C{[[tunnel]] port = 3000}.

    C{torMode} (C{--tor}) and C{torControl} (C{--tor-control}) replace
    the file's C{[tor] mode} and C{control}, keeping its other settings.
    C{web} (C{--web ADDR|off}) replaces C{web}; C{webAllowRemote}
    (C{--web-allow-remote}, true only) allows a non-loopback one, given
    there or in the file; C{inspect} (C{--no-inspect}: L{False}) turns
    the inspector off.

    @param flags: any of C{listen}, C{bootstrap} (multiaddrs or their
        text), C{logFormat}, C{tunnels}, C{forwards}, C{torMode},
        C{torControl}.
    @raise ConfigError: a flag's value is invalid.
    @raise TypeError: an unknown flag name (a programming error).
    """
    unknown = set(flags) - {"listen", "bootstrap", "logFormat", "tunnels", "forwards", "torMode", "torControl",
                            "web", "webAllowRemote", "inspect"}
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(sorted(unknown))}")
    changes: dict[str, Any] = {}
    if flags.get("listen"):
        changes["listen"] = _flagAddrs("--listen", flags["listen"], listen=True)
    if flags.get("bootstrap"):
        changes["bootstrap"] = _flagAddrs("--bootstrap", flags["bootstrap"], listen=False)
    if flags.get("logFormat") is not None:
        if flags["logFormat"] not in LOG_FORMATS:
            raise ConfigError([f"--log-format must be text or json, not {flags['logFormat']!r}"])
        changes["logFormat"] = flags["logFormat"]
    if flags.get("tunnels"):
        new = tuple(flags["tunnels"])
        kept = tuple(
            t for t in config.tunnels
            if not any((t.name is not None and t.name == n.name) or (t.port, t.udp) == (n.port, n.udp)
                       for n in new)
        )
        changes["tunnels"] = kept + new
    if flags.get("forwards"):
        newForwards = tuple(flags["forwards"])
        keptForwards = tuple(
            f for f in config.forwards
            if f.port is None or not any((f.bind, f.port) == (n.bind, n.port) for n in newForwards)
        )
        changes["forwards"] = keptForwards + newForwards
    tor: dict[str, Any] = {}
    if flags.get("torMode") is not None:
        if flags["torMode"] not in TOR_MODES:
            raise ConfigError([f"--tor must be {', '.join(TOR_MODES)}, not {flags['torMode']!r}"])
        tor["mode"] = flags["torMode"]
    if flags.get("torControl"):
        try:
            tor["control"] = normaliseControl(flags["torControl"])
        except ValueError as e:
            raise ConfigError([f"--tor-control {e}"]) from None
    if tor:
        changes["tor"] = attr.evolve(config.tor, **tor)
    allowRemote = bool(flags.get("webAllowRemote")) or config.web.allowRemote
    if flags.get("web") is not None:
        try:
            changes["web"] = parseWebAddress(str(flags["web"]), allowRemote)
        except ValueError as e:
            raise ConfigError([f"--web: {e}"]) from None
    elif allowRemote and not config.web.allowRemote:
        changes["web"] = attr.evolve(config.web, allowRemote=True)
    if flags.get("inspect") is False:
        changes["inspect"] = attr.evolve(config.inspect, enabled=False)
    return attr.evolve(config, **changes)
