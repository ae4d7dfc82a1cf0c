"""
The resource manager: who may hold how much of the node.

Every node is exposed to strangers, so nothing a peer can make us hold may
grow without bound, and no single peer, protocol or service may take the
share everyone else needs.  In the spirit of go-libp2p's resource manager,
the node's resources are accounted in nested I{scopes}::

    system ─┬─ transient            connections still in the handshake
            ├─ peer <id>            everything one authenticated peer holds
            │   └─ connection       one connection (its streams, its buffers)
            │       └─ stream       one stream
            ├─ protocol <id>        all streams speaking one protocol
            └─ service <name>       all streams into one tunnel service

Each scope has a L{BaseLimit} (connections and streams by direction, file
descriptors, bytes of memory) and a L{Usage}.  A reservation made in a
scope is made at once in all of its ancestors, and only if every one of
them has room: a stream's file descriptor counts against the stream's
peer, its service and the whole node.  A refused reservation raises
L{ResourceLimitExceeded}, naming the scope and resource that were full, so
the caller can answer with its protocol's refusal (a yamux stream reset or
go-away, a closed connection, a DHT error); the refusal is counted and
logged at most once per interval, so a flood does not also flood the log.

What is reserved, and by whom:

 - B{connections and fds}: the node reserves an inbound connection in the
   transient scope when it is accepted (with a per-source cap) and moves it
   to its peer's scope once the security handshake proved who the peer is;
 - B{streams}: the muxer reserves each stream in its connection's scopes
   when it is opened or accepted, and the node adds the protocol's scope
   once multistream-select agreed on one;
 - B{memory}: the muxer reserves each stream's receive window (what the
   peer may make us buffer) and any growth of it;
 - B{tunnel fds}: the tunnel host reserves the file descriptor of the local
   connection it opens for a stream, in the stream's scopes and its
   service's.

Peers in the allow list (the peers a tunnel was explicitly opened to, for
example) are held to L{Limits.allowedPeer} instead of L{Limits.peer}.

The module is sans-IO: time comes from the injected clock, and nothing here
touches a socket.  L{defaultLimits} derives defaults from the process's
file-descriptor limit and the machine's memory; L{limitsFromTable} applies
the C{[limits]} table of C{config.toml}.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any, Optional

import attr
from twisted.logger import Logger

from beam.errors import BeamError

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

#: What "no limit" is stored as: larger than anything we could count.
UNLIMITED = 1 << 62

INBOUND = "inbound"
OUTBOUND = "outbound"

#: The memory the yamux spec lets a peer send before any window update:
#: reserved for every stream when it opens.
STREAM_WINDOW = 256 * KiB


class ResourceLimitExceeded(BeamError):
    """
    A reservation would take a scope past its limit.

    @ivar scope: the full scope's name (C{"system"}, C{"peer 12D3..."},
        C{"protocol /ipfs/kad/1.0.0"}, ...).
    @ivar resource: which of its resources (C{"streams_inbound"},
        C{"memory"}, ...).
    @ivar limit: that resource's limit in that scope.
    """

    def __init__(self, scope: str, resource: str, limit: int) -> None:
        super().__init__(f"{scope}: {resource} limit ({limit}) reached")
        self.scope = scope
        self.resource = resource
        self.limit = limit


# -- limits ----------------------------------------------------------------

#: The keys of a limit table in C{config.toml}, and the attribute each sets.
LIMIT_KEYS: dict[str, str] = {
    "conns": "conns",
    "conns_inbound": "connsInbound",
    "conns_outbound": "connsOutbound",
    "streams": "streams",
    "streams_inbound": "streamsInbound",
    "streams_outbound": "streamsOutbound",
    "fd": "fd",
    "memory": "memory",
}


@attr.s(frozen=True, auto_attribs=True, kw_only=True)
class BaseLimit:
    """
    The most one scope may hold of each resource.  The totals
    (C{conns}, C{streams}) bound both directions together.
    """

    conns: int = UNLIMITED
    connsInbound: int = UNLIMITED
    connsOutbound: int = UNLIMITED
    streams: int = UNLIMITED
    streamsInbound: int = UNLIMITED
    streamsOutbound: int = UNLIMITED
    fd: int = UNLIMITED
    memory: int = UNLIMITED

    def asJSON(self) -> dict[str, Optional[int]]:
        """
        The limit as C{config.toml} spells it; L{None} for unlimited.
        """
        return {key: _show(getattr(self, name)) for key, name in LIMIT_KEYS.items()}

    def scaled(self, factor: int) -> BaseLimit:
        """
        This limit with every finite value multiplied by C{factor}.
        """
        return BaseLimit(
            **{name: value if value >= UNLIMITED else min(UNLIMITED, value * factor) for name, value in self._items()}
        )

    def _items(self) -> Iterable[tuple[str, int]]:
        for name in LIMIT_KEYS.values():
            yield name, getattr(self, name)


def _show(value: int) -> Optional[int]:
    return None if value >= UNLIMITED else value


@attr.s(frozen=True, auto_attribs=True, kw_only=True)
class Limits:
    """
    The limits of every scope.

    @ivar system: the whole node.
    @ivar transient: inbound connections that have not finished the
        security handshake (an unauthenticated flood fills this, not
        C{system}'s connections).
    @ivar transientPerSource: the most of those from one source (one IPv4
        address, one IPv6 /64; loopback exempt), like OpenSSH's
        C{MaxStartups} per address.
    @ivar connsPerSource: the most inbound connections, in the handshake or
        established, from one source (loopback exempt), like go-libp2p's
        per-subnet connection limit: one address cannot fill the node's
        connections with throwaway keys.
    @ivar peer: each authenticated peer, all its connections together.
    @ivar allowedPeer: the same for peers in the allow list.
    @ivar connection: each connection.
    @ivar stream: each stream.
    @ivar protocolDefault: each protocol without an entry in C{protocols}.
    @ivar protocols: limits for named protocol IDs.
    @ivar serviceDefault: each tunnel service without an entry in
        C{services}.
    @ivar services: limits for named tunnel services.
    """

    system: BaseLimit
    transient: BaseLimit
    transientPerSource: int
    connsPerSource: int = 32
    peer: BaseLimit
    allowedPeer: BaseLimit
    connection: BaseLimit
    stream: BaseLimit
    protocolDefault: BaseLimit = BaseLimit()
    protocols: Mapping[str, BaseLimit] = attr.ib(factory=dict)
    serviceDefault: BaseLimit = BaseLimit()
    services: Mapping[str, BaseLimit] = attr.ib(factory=dict)

    def protocol(self, protocolId: str) -> BaseLimit:
        return self.protocols.get(protocolId, self.protocolDefault)

    def service(self, name: str) -> BaseLimit:
        return self.services.get(name, self.serviceDefault)

    def asJSON(self) -> dict[str, Any]:
        """
        The limits as the C{[limits]} table of C{config.toml} spells them.
        """
        out: dict[str, Any] = {}
        for key, name in _SCOPE_KEYS.items():
            out[key] = getattr(self, name).asJSON()
        out["transient"]["per_source"] = self.transientPerSource
        out["system"]["conns_per_source"] = _show(self.connsPerSource)
        out["protocol"] = {"default": self.protocolDefault.asJSON()}
        out["protocol"].update({p: lim.asJSON() for p, lim in sorted(self.protocols.items())})
        out["service"] = {"default": self.serviceDefault.asJSON()}
        out["service"].update({s: lim.asJSON() for s, lim in sorted(self.services.items())})
        return out


#: The C{[limits]} sub-tables naming one scope each.
_SCOPE_KEYS = {
    "system": "system",
    "transient": "transient",
    "peer": "peer",
    "allowed_peer": "allowedPeer",
    "connection": "connection",
    "stream": "stream",
}


def processFDLimit() -> int:
    """
    The process's soft limit on open file descriptors (1,024 under
    systemd's defaults), or 1,024 where it cannot be read.
    """
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return 1024
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return 1 << 20
    return int(soft)


def physicalMemory() -> int:
    """
    The machine's memory in bytes, or 1 GiB where it cannot be read.
    """
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return GiB


def defaultLimits(fdLimit: Optional[int] = None, memory: Optional[int] = None) -> Limits:
    """
    Limits for a node in a process allowed C{fdLimit} descriptors on a
    machine with C{memory} bytes (both read from the system when not
    given).

    A quarter of the descriptors stays free for what is not a peer's doing
    (listeners, the control socket, logs, the key file); the node may use
    an eighth of the memory for buffers a peer can fill (between 64 MiB and
    1 GiB).  One stranger may take at most a sixteenth of the descriptors
    and an eighth of that memory; allowed peers four times that.
    """
    if fdLimit is None:
        fdLimit = processFDLimit()
    if memory is None:
        memory = physicalMemory()
    fd = max(32, fdLimit * 3 // 4)
    mem = min(GiB, max(64 * MiB, memory // 8))
    conns = max(16, min(1024, fd // 2))
    streams = max(256, min(16384, mem // STREAM_WINDOW))
    peer = BaseLimit(
        conns=8,
        connsInbound=8,
        connsOutbound=8,
        streams=max(64, min(1024, streams // 4)),
        streamsInbound=max(32, min(256, streams // 8)),
        streamsOutbound=max(64, min(1024, streams // 4)),
        fd=max(8, fd // 16),
        memory=max(16 * MiB, mem // 8),
    )
    return Limits(
        system=BaseLimit(
            conns=conns,
            connsInbound=conns,
            connsOutbound=conns,
            streams=streams,
            streamsInbound=streams,
            streamsOutbound=streams,
            fd=fd,
            memory=mem,
        ),
        # Inbound and outbound handshakes have a share each, so a flood
        # of unauthenticated inbound connections never stops our own dials.
        transient=BaseLimit(
            conns=128,
            connsInbound=64,
            connsOutbound=64,
            fd=128,
            memory=16 * MiB,
        ),
        transientPerSource=8,
        peer=peer,
        allowedPeer=BaseLimit(
            conns=peer.conns * 2,
            connsInbound=peer.connsInbound * 2,
            connsOutbound=peer.connsOutbound * 2,
            streams=min(streams, peer.streams * 4),
            streamsInbound=min(streams, peer.streamsInbound * 4),
            streamsOutbound=min(streams, peer.streamsOutbound * 4),
            fd=max(peer.fd, fd // 4),
            memory=min(mem, peer.memory * 4),
        ),
        connection=BaseLimit(streams=1024, memory=peer.memory),
        stream=BaseLimit(streams=1, memory=16 * MiB),
    )


_SIZE = re.compile(r"^\s*(\d+)\s*([KMG]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": KiB, "m": MiB, "g": GiB}


def parseSize(value: object) -> int:
    """
    A byte count from C{config.toml}: an integer, or a string such as
    C{"64MiB"}, C{"512 KiB"}, C{"1G"} (binary units).

    @raise ValueError: for anything else, or a negative count.
    """
    if isinstance(value, bool):
        raise ValueError("must be a number of bytes or a size such as \"64MiB\"")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must not be negative")
        return value
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m is not None:
            unit = (m.group(2) or "").lower()[:1]
            return int(m.group(1)) * _UNITS[unit]
    raise ValueError("must be a number of bytes or a size such as \"64MiB\"")


def _parseLimit(where: str, table: object, base: BaseLimit, problems: list[str], extra: Iterable[str] = ()) -> BaseLimit:
    if not isinstance(table, dict):
        problems.append(f"{where}: must be a table")
        return base
    changes: dict[str, int] = {}
    for key, value in table.items():
        if key in extra:
            continue
        name = LIMIT_KEYS.get(key)
        if name is None:
            problems.append(f"{where}: unknown key {key!r} (known: {', '.join(LIMIT_KEYS)})")
            continue
        try:
            if key == "memory":
                changes[name] = parseSize(value)
            else:
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise ValueError("must be a whole number, 0 or more")
                changes[name] = value
        except ValueError as e:
            problems.append(f"{where}.{key}: {e}")
    return attr.evolve(base, **changes)


def limitsFromTable(table: Mapping[str, Any], base: Limits) -> tuple[Limits, list[str]]:
    """
    Apply the C{[limits]} table of C{config.toml} to C{base}.  Every key
    is optional; a scope's table overrides only the resources it names::

        [limits.system]
        fd = 4096
        memory = "512MiB"
        conns_per_source = 16         # inbound connections per address
        [limits.peer]
        streams_inbound = 64
        [limits.transient]
        conns = 32
        per_source = 4
        [limits.service.web]          # one tunnel service
        fd = 256
        [limits.protocol."/ipfs/kad/1.0.0"]
        streams_inbound = 512

    Allowed peers never get less than strangers: each resource of
    C{allowed_peer} is at least C{peer}'s (raising C{[limits.peer]} alone
    raises both).

    @return: the new limits and the problems found, as C{"limits.KEY:
        message"} lines (the limits ignore what was wrong).
    """
    problems: list[str] = []
    changes: dict[str, Any] = {}
    for key, value in table.items():
        if key in _SCOPE_KEYS:
            name = _SCOPE_KEYS[key]
            extra = {"transient": ("per_source",), "system": ("conns_per_source",)}.get(key, ())
            changes[name] = _parseLimit(f"limits.{key}", value, getattr(base, name), problems, extra)
            if key == "transient" and isinstance(value, dict) and "per_source" in value:
                n = value["per_source"]
                if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                    problems.append("limits.transient.per_source: must be a whole number, 1 or more")
                else:
                    changes["transientPerSource"] = n
            if key == "system" and isinstance(value, dict) and "conns_per_source" in value:
                n = value["conns_per_source"]
                if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                    problems.append("limits.system.conns_per_source: must be a whole number, 1 or more")
                else:
                    changes["connsPerSource"] = n
        elif key in ("protocol", "service"):
            if not isinstance(value, dict):
                problems.append(f"limits.{key}: must be a table of tables")
                continue
            named = dict(base.protocols if key == "protocol" else base.services)
            default = base.protocolDefault if key == "protocol" else base.serviceDefault
            # The default first: a named table inherits what it does not
            # name from the default, wherever the file puts the default.
            for sub, subTable in sorted(value.items(), key=lambda item: item[0] != "default"):
                if sub == "default":
                    default = _parseLimit(f"limits.{key}.default", subTable, default, problems)
                else:
                    named[sub] = _parseLimit(f"limits.{key}.{sub}", subTable, named.get(sub, default), problems)
            if key == "protocol":
                changes["protocols"] = named
                changes["protocolDefault"] = default
            else:
                changes["services"] = named
                changes["serviceDefault"] = default
        else:
            known = ", ".join([*_SCOPE_KEYS, "protocol", "service"])
            problems.append(f"limits: unknown key {key!r} (known: {known})")
    limits = attr.evolve(base, **changes)
    floor = {name: max(value, getattr(limits.peer, name)) for name, value in limits.allowedPeer._items()}
    return attr.evolve(limits, allowedPeer=BaseLimit(**floor)), problems


# -- usage and scopes ------------------------------------------------------


@attr.s(auto_attribs=True, slots=True)
class Usage:
    """
    What one scope holds now.
    """

    connsInbound: int = 0
    connsOutbound: int = 0
    streamsInbound: int = 0
    streamsOutbound: int = 0
    fd: int = 0
    memory: int = 0

    def isEmpty(self) -> bool:
        return not (
            self.connsInbound or self.connsOutbound or self.streamsInbound or self.streamsOutbound or self.fd or self.memory
        )

    def asJSON(self) -> dict[str, int]:
        return {
            "conns_inbound": self.connsInbound,
            "conns_outbound": self.connsOutbound,
            "streams_inbound": self.streamsInbound,
            "streams_outbound": self.streamsOutbound,
            "fd": self.fd,
            "memory": self.memory,
        }


#: What a reservation asks of each scope: (attribute, amount) pairs.
_Ask = tuple[tuple[str, int], ...]


def _conn(direction: str) -> _Ask:
    return (("connsInbound" if direction == INBOUND else "connsOutbound", 1),)


def _stream(direction: str) -> _Ask:
    return (("streamsInbound" if direction == INBOUND else "streamsOutbound", 1),)


class _Scope:
    """
    One scope's limit and usage.  Only the manager and the connection and
    stream scopes change it.
    """

    __slots__ = ("name", "limit", "usage", "table", "key")

    def __init__(self, name: str, limit: BaseLimit, table: Optional[dict[Any, _Scope]] = None, key: Any = None) -> None:
        self.name = name
        self.limit = limit
        self.usage = Usage()
        # Where the manager keeps it (peer, protocol and service scopes),
        # so that forgetting it is one dictionary deletion.
        self.table = table
        self.key = key

    def check(self, ask: _Ask) -> Optional[tuple[str, int]]:
        """
        The first resource C{ask} would take past the limit, as (config
        key, limit), or L{None} when all fit.
        """
        u, lim = self.usage, self.limit
        # The totals count both directions of the ask at once (a
        # connection moving to its peer brings streams of both).
        conns = sum(n for field, n in ask if n > 0 and field in ("connsInbound", "connsOutbound"))
        streams = sum(n for field, n in ask if n > 0 and field in ("streamsInbound", "streamsOutbound"))
        for field, n in ask:
            if n <= 0:
                continue
            if field == "connsInbound":
                if u.connsInbound + n > lim.connsInbound:
                    return "conns_inbound", lim.connsInbound
                if u.connsInbound + u.connsOutbound + conns > lim.conns:
                    return "conns", lim.conns
            elif field == "connsOutbound":
                if u.connsOutbound + n > lim.connsOutbound:
                    return "conns_outbound", lim.connsOutbound
                if u.connsInbound + u.connsOutbound + conns > lim.conns:
                    return "conns", lim.conns
            elif field == "streamsInbound":
                if u.streamsInbound + n > lim.streamsInbound:
                    return "streams_inbound", lim.streamsInbound
                if u.streamsInbound + u.streamsOutbound + streams > lim.streams:
                    return "streams", lim.streams
            elif field == "streamsOutbound":
                if u.streamsOutbound + n > lim.streamsOutbound:
                    return "streams_outbound", lim.streamsOutbound
                if u.streamsInbound + u.streamsOutbound + streams > lim.streams:
                    return "streams", lim.streams
            elif field == "fd":
                if u.fd + n > lim.fd:
                    return "fd", lim.fd
            elif field == "memory":
                if u.memory + n > lim.memory:
                    return "memory", lim.memory
        return None

    def add(self, ask: _Ask, sign: int) -> None:
        u = self.usage
        for field, n in ask:
            value = getattr(u, field) + sign * n
            if value < 0:
                raise AssertionError(f"{self.name}: {field} released more than was reserved")
            setattr(u, field, value)


class ResourceManager:
    """
    The node's resource accounting (see the module docstring).

    @ivar limits: the L{Limits} in force.
    @ivar system: the whole node's scope.
    @ivar transient: the scope of connections still in the handshake.
    @ivar refusals: refused reservations since the node was made, by
        C{"KIND RESOURCE"} (for example C{"peer streams_inbound"}).
    """

    log = Logger()

    #: Whether streams are accounted and limits enforced (L{False} only
    #: for L{NullResourceManager}).
    enforcing = True

    def __init__(
        self,
        limits: Optional[Limits] = None,
        *,
        clock: Any = None,
        logInterval: float = 10.0,
    ) -> None:
        """
        @param limits: the limits; L{defaultLimits} when not given.
        @param clock: an C{IReactorTime} for the refusal log's interval
            (without one every refusal is logged).
        @param logInterval: refusals are logged at most once per this many
            seconds, with the count since the last line.
        """
        self.limits = limits if limits is not None else defaultLimits()
        self.clock = clock
        self.logInterval = logInterval
        self.system = _Scope("system", self.limits.system)
        self.transient = _Scope("transient", self.limits.transient)
        self._peers: dict[Any, _Scope] = {}
        self._protocols: dict[str, _Scope] = {}
        self._services: dict[str, _Scope] = {}
        # Inbound connections by source: still in the handshake, and all.
        self._pendingSources: dict[Any, int] = {}
        self._sources: dict[Any, int] = {}
        self._allowed: dict[Any, set[str]] = {}
        self.refusals: Counter[str] = Counter()
        self._unlogged = 0
        self._lastLog: Optional[float] = None
        self.openConnections: set[ConnectionScope] = set()

    # -- configuration ---------------------------------------------------

    def setLimits(self, limits: Limits) -> None:
        """
        Put new limits in force.  What is already held stays held; only
        new reservations see the new limits.
        """
        self.limits = limits
        self.system.limit = limits.system
        self.transient.limit = limits.transient
        for peer, scope in self._peers.items():
            scope.limit = self._peerLimit(peer)
        for pid, scope in self._protocols.items():
            scope.limit = limits.protocol(pid)
        for name, scope in self._services.items():
            scope.limit = limits.service(name)

    def allow(self, peer: Any, tag: str) -> None:
        """
        Hold C{peer} to L{Limits.allowedPeer} until every C{tag} given
        here was L{disallow}ed (a tunnel's allow list, a forward's host).
        """
        self._allowed.setdefault(peer, set()).add(tag)
        scope = self._peers.get(peer)
        if scope is not None:
            scope.limit = self.limits.allowedPeer

    def disallow(self, peer: Any, tag: str) -> None:
        tags = self._allowed.get(peer)
        if tags is None:
            return
        tags.discard(tag)
        if not tags:
            del self._allowed[peer]
            scope = self._peers.get(peer)
            if scope is not None:
                scope.limit = self.limits.peer

    def isAllowed(self, peer: Any) -> bool:
        return peer in self._allowed

    def _peerLimit(self, peer: Any) -> BaseLimit:
        return self.limits.allowedPeer if peer in self._allowed else self.limits.peer

    # -- scopes ----------------------------------------------------------

    def peerScope(self, peer: Any) -> _Scope:
        scope = self._peers.get(peer)
        if scope is None:
            scope = self._peers[peer] = _Scope(f"peer {peer}", self._peerLimit(peer), self._peers, peer)
        return scope

    def protocolScope(self, protocolId: str) -> _Scope:
        scope = self._protocols.get(protocolId)
        if scope is None:
            scope = self._protocols[protocolId] = _Scope(
                f"protocol {protocolId}", self.limits.protocol(protocolId), self._protocols, protocolId
            )
        return scope

    def serviceScope(self, name: str) -> _Scope:
        scope = self._services.get(name)
        if scope is None:
            scope = self._services[name] = _Scope(f"service {name}", self.limits.service(name), self._services, name)
        return scope

    def _forget(self, scope: _Scope) -> None:
        """
        Drop a peer, protocol or service scope that holds nothing, so a
        stream of throwaway peer IDs does not grow the manager.
        """
        if scope.table is None or not scope.usage.isEmpty():
            return
        if scope.table.get(scope.key) is scope:
            del scope.table[scope.key]

    def reserve(self, scopes: Iterable[_Scope], ask: _Ask) -> None:
        """
        Reserve C{ask} in every one of C{scopes}, or in none of them.

        @raise ResourceLimitExceeded: when one has no room (counted and
            logged; the others are unchanged).
        """
        scopes = list(scopes)
        for scope in scopes:
            full = scope.check(ask)
            if full is not None:
                self._refuse(scope, *full)
        for scope in scopes:
            scope.add(ask, 1)

    def fits(self, scopes: Iterable[_Scope], ask: _Ask) -> bool:
        """
        Whether C{ask} would fit in every one of C{scopes} (nothing is
        reserved, nothing counted).
        """
        return all(scope.check(ask) is None for scope in scopes)

    def release(self, scopes: Iterable[_Scope], ask: _Ask) -> None:
        for scope in scopes:
            scope.add(ask, -1)

    def _refuse(self, scope: _Scope, resource: str, limit: int) -> None:
        kind = scope.name.split(" ", 1)[0]
        self.refusals[f"{kind} {resource}"] += 1
        self._unlogged += 1
        now = self.clock.seconds() if self.clock is not None else None
        if now is None or self._lastLog is None or now - self._lastLog >= self.logInterval:
            self.log.warn(
                "resource limit: {scope}: {resource} limit ({limit}) reached; refused {count} time(s) since the last report",
                scope=scope.name,
                resource=resource,
                limit=limit,
                count=self._unlogged,
            )
            self._unlogged = 0
            self._lastLog = now
        raise ResourceLimitExceeded(scope.name, resource, limit)

    # -- connections -----------------------------------------------------

    def openConnection(self, direction: str, *, useFD: bool = True, source: Any = None) -> ConnectionScope:
        """
        Reserve a new connection in the transient scope (and the system's)
        until L{ConnectionScope.setPeer} moves it to its peer.

        @param direction: L{INBOUND} or L{OUTBOUND}.
        @param useFD: whether it holds a file descriptor (a TCP socket
            does; an in-memory or relayed connection does not).
        @param source: for an inbound connection, its L{sourceKey}
            (L{None} exempts it from the per-source cap: loopback).
        @raise ResourceLimitExceeded: when there is no room.
        """
        if source is not None and direction == INBOUND:
            if self._pendingSources.get(source, 0) >= self.limits.transientPerSource:
                self._refuse(
                    _Scope(f"transient source {source}", self.limits.transient),
                    "per_source",
                    self.limits.transientPerSource,
                )
            if self._sources.get(source, 0) >= self.limits.connsPerSource:
                self._refuse(
                    _Scope(f"system source {source}", self.limits.system),
                    "conns_per_source",
                    self.limits.connsPerSource,
                )
        scope = ConnectionScope(self, direction, useFD, source)
        self.reserve([self.transient, self.system], scope._base)
        if source is not None and direction == INBOUND:
            _count(self._pendingSources, source, 1)
            _count(self._sources, source, 1)
        self.openConnections.add(scope)
        return scope

    def _releasePending(self, source: Any) -> None:
        _count(self._pendingSources, source, -1)

    def _releaseSource(self, source: Any) -> None:
        _count(self._sources, source, -1)

    # -- status ----------------------------------------------------------

    def status(self, top: int = 5) -> dict[str, Any]:
        """
        The limits, what the node, the transient scope, the busiest peers,
        each protocol and service hold, and the refusals: for
        C{beam status --json}.
        """

        def weight(item: tuple[Any, _Scope]) -> tuple[int, int, int]:
            u = item[1].usage
            return (u.streamsInbound + u.streamsOutbound, u.fd, u.memory)

        busiest = sorted(self._peers.items(), key=weight, reverse=True)[:top]
        return {
            "enabled": self.enforcing,
            "limits": self.limits.asJSON(),
            "system": self.system.usage.asJSON(),
            "transient": self.transient.usage.asJSON(),
            "peers": {
                "count": len(self._peers),
                "allowed": len(self._allowed),
                "busiest": [{"peer": str(p), **s.usage.asJSON()} for p, s in busiest],
            },
            "protocols": {p: s.usage.asJSON() for p, s in sorted(self._protocols.items())},
            "services": {n: s.usage.asJSON() for n, s in sorted(self._services.items())},
            "refusals": dict(sorted(self.refusals.items())),
        }


def _count(table: dict[Any, int], key: Any, delta: int) -> None:
    left = table.get(key, 0) + delta
    if left > 0:
        table[key] = left
    else:
        table.pop(key, None)


class ConnectionScope:
    """
    What one connection holds: itself (and its descriptor), its streams and
    its buffers, counted in the transient scope until L{setPeer} and in its
    peer's scope after.  Call L{done} exactly once when the connection
    ends, whatever happened; it releases everything left (streams still
    open included).

    @ivar peer: the authenticated peer, once known.
    """

    def __init__(self, manager: ResourceManager, direction: str, useFD: bool, source: Any) -> None:
        self.manager = manager
        self.direction = direction
        # The source key counted against the per-source caps (inbound
        # only), and whether it still counts as a pending handshake.
        self.source = source if direction == INBOUND else None
        self._pending = self.source is not None
        self.peer: Any = None
        self._base: _Ask = _conn(direction) + ((("fd", 1),) if useFD else ())
        self.own = _Scope("connection", manager.limits.connection)
        self._owner: _Scope = manager.transient
        self.memory = 0
        self.streams: set[StreamScope] = set()
        self.closed = False

    def chain(self) -> list[_Scope]:
        """
        The scopes a reservation of this connection's goes into: its own,
        its peer's (or the transient scope) and the system's.
        """
        return [self.own, self._owner, self.manager.system]

    def setPeer(self, peer: Any) -> None:
        """
        The handshake proved who the peer is: move the connection (and
        whatever it holds) from the transient scope to the peer's.

        @raise ResourceLimitExceeded: when the peer has no room for one
            more connection; the caller closes it (and calls L{done}).
        """
        if self.closed:
            raise AssertionError("setPeer on a finished connection scope")
        m = self.manager
        target = m.peerScope(peer)
        # Everything the connection's own scope holds (its streams, their
        # descriptors, its and their memory) moves with it: they were
        # counted in the transient scope and are released from the peer's.
        u = self.own.usage
        held = self._base + (
            ("streamsInbound", u.streamsInbound),
            ("streamsOutbound", u.streamsOutbound),
            ("fd", u.fd),
            ("memory", u.memory),
        )
        try:
            m.reserve([target], held)
        except ResourceLimitExceeded:
            m._forget(target)
            raise
        self._owner.add(held, -1)
        self._owner = target
        self.peer = peer
        if self._pending:
            m._releasePending(self.source)
            self._pending = False

    @property
    def isTransient(self) -> bool:
        return self.peer is None

    def reserveMemory(self, n: int) -> None:
        """
        Reserve C{n} bytes for this connection's buffers.

        @raise ResourceLimitExceeded: when there is no room.
        """
        if self.closed:
            raise AssertionError("reserveMemory on a finished connection scope")
        self.manager.reserve(self.chain(), (("memory", n),))
        self.memory += n

    def tryReserveMemory(self, n: int) -> bool:
        """
        Reserve C{n} bytes if they fit, without counting a refusal: for
        optional growth, such as a larger window.  A finished connection
        has no room (what it reserved would never be released).
        """
        if self.closed:
            return False
        chain = self.chain()
        if not self.manager.fits(chain, (("memory", n),)):
            return False
        self.manager.reserve(chain, (("memory", n),))
        self.memory += n
        return True

    def releaseMemory(self, n: int) -> None:
        if n > self.memory:
            raise AssertionError("connection released more memory than it reserved")
        self.manager.release(self.chain(), (("memory", n),))
        self.memory -= n

    def openStream(self, direction: str) -> StreamScope:
        """
        Reserve a stream on this connection (in the connection's, the
        peer's and the system's scopes).

        @raise ResourceLimitExceeded: when one has no room; the muxer
            refuses the stream (a reset).
        """
        if self.closed:
            raise AssertionError("openStream on a finished connection scope")
        ask = _stream(direction)
        self.manager.reserve(self.chain(), ask)
        stream = StreamScope(self, direction)
        stream.own.add(ask, 1)
        self.streams.add(stream)
        return stream

    def done(self) -> None:
        """
        The connection ended: release it and everything it still holds.
        Calling it again does nothing.
        """
        if self.closed:
            return
        for stream in list(self.streams):
            stream.done()
        if self.memory:
            self.releaseMemory(self.memory)
        m = self.manager
        self.closed = True
        self._owner.add(self._base, -1)
        m.system.add(self._base, -1)
        if self._pending:
            m._releasePending(self.source)
            self._pending = False
        if self.source is not None:
            m._releaseSource(self.source)
            self.source = None
        if self._owner is not m.transient:
            m._forget(self._owner)
        m.openConnections.discard(self)


class StreamScope:
    """
    What one stream holds: the stream itself, its buffers, and (for a
    tunnel stream) the local connection's descriptor.  Counted in its
    connection's scopes, and in its protocol's and service's once they are
    set.  Call L{done} once when the stream ends.
    """

    def __init__(self, connection: ConnectionScope, direction: str) -> None:
        self.connection = connection
        self.direction = direction
        self.own = _Scope("stream", connection.manager.limits.stream)
        self.protocol: Optional[str] = None
        self.service: Optional[str] = None
        self._edges: list[_Scope] = []
        self.memory = 0
        self.fd = 0
        self.closed = False

    def chain(self) -> list[_Scope]:
        return [self.own, *self.connection.chain(), *self._edges]

    def _held(self) -> _Ask:
        return _stream(self.direction) + (("fd", self.fd), ("memory", self.memory))

    def _join(self, scope: _Scope) -> None:
        m = self.connection.manager
        try:
            m.reserve([scope], self._held())
        except ResourceLimitExceeded:
            m._forget(scope)
            raise
        self._edges.append(scope)

    def setProtocol(self, protocolId: str) -> None:
        """
        Multistream-select agreed on C{protocolId}: count the stream in its
        scope too.

        @raise ResourceLimitExceeded: when the protocol has no room (the
            caller resets the stream).
        """
        if self.protocol is not None or self.closed:
            raise AssertionError("setProtocol twice or on a finished stream scope")
        self._join(self.connection.manager.protocolScope(protocolId))
        self.protocol = protocolId

    def setService(self, name: str) -> None:
        """
        The stream is a tunnel into service C{name}: count it there too.

        @raise ResourceLimitExceeded: when the service has no room.
        """
        if self.service is not None or self.closed:
            raise AssertionError("setService twice or on a finished stream scope")
        self._join(self.connection.manager.serviceScope(name))
        self.service = name

    def reserveMemory(self, n: int) -> None:
        """
        @raise ResourceLimitExceeded: when there is no room.
        """
        if self.closed:
            raise AssertionError("reserveMemory on a finished stream scope")
        self.connection.manager.reserve(self.chain(), (("memory", n),))
        self.memory += n

    def tryReserveMemory(self, n: int) -> bool:
        """
        Reserve C{n} bytes if they fit, without counting a refusal.  A
        finished stream has no room.
        """
        if self.closed:
            return False
        chain = self.chain()
        m = self.connection.manager
        if not m.fits(chain, (("memory", n),)):
            return False
        m.reserve(chain, (("memory", n),))
        self.memory += n
        return True

    def releaseMemory(self, n: int) -> None:
        if n > self.memory:
            raise AssertionError("stream released more memory than it reserved")
        self.connection.manager.release(self.chain(), (("memory", n),))
        self.memory -= n

    def reserveFD(self) -> None:
        """
        Reserve a file descriptor (the local connection a tunnel stream
        opens), released by L{releaseFD} or L{done}.

        @raise ResourceLimitExceeded: when there is no room.
        """
        if self.closed:
            raise AssertionError("reserveFD on a finished stream scope")
        self.connection.manager.reserve(self.chain(), (("fd", 1),))
        self.fd += 1

    def releaseFD(self) -> None:
        if not self.fd:
            raise AssertionError("stream released a descriptor it did not reserve")
        self.connection.manager.release(self.chain(), (("fd", 1),))
        self.fd -= 1

    def done(self) -> None:
        """
        The stream ended: release it and all it holds.  Calling it again
        does nothing.
        """
        if self.closed:
            return
        self.closed = True
        m = self.connection.manager
        m.release(self.chain(), self._held())
        self.memory = self.fd = 0
        for scope in self._edges:
            m._forget(scope)
        self._edges = []
        self.connection.streams.discard(self)


def unlimitedLimits() -> Limits:
    """
    Limits that never refuse anything.
    """
    free = BaseLimit()
    return Limits(
        system=free,
        transient=free,
        transientPerSource=UNLIMITED,
        connsPerSource=UNLIMITED,
        peer=free,
        allowedPeer=free,
        connection=free,
        stream=free,
    )


def unlimitedManager() -> ResourceManager:
    """
    A manager that accounts everything and never refuses: for tests and
    tools that measure something else.
    """
    return ResourceManager(unlimitedLimits())


class NullResourceManager(ResourceManager):
    """
    No resource management (C{[limits] enabled = false}, like kubo's
    C{Swarm.ResourceMgr.Enabled = false}): nothing is refused, and streams
    are not accounted at all (the node gives its muxer no scope), only
    connections, once each.  It exists to measure what the manager costs
    (C{bench/bench_tunnel.py}); a node that strangers can reach must not
    run with it.
    """

    enforcing = False

    def __init__(self, *, clock: Any = None) -> None:
        super().__init__(unlimitedLimits(), clock=clock)


__all__ = [
    "BaseLimit",
    "ConnectionScope",
    "INBOUND",
    "Limits",
    "OUTBOUND",
    "ResourceLimitExceeded",
    "ResourceManager",
    "NullResourceManager",
    "StreamScope",
    "Usage",
    "defaultLimits",
    "limitsFromTable",
    "parseSize",
    "unlimitedLimits",
    "unlimitedManager",
]
