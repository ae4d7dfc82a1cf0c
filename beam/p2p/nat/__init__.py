"""
NAT traversal helpers that need no peer: STUN (RFC 8489) binding and NAT
behaviour discovery (RFC 5780).

 - L{beam.p2p.nat.stun}: the sans-IO message codec;
 - L{beam.p2p.nat.stunclient}: the client, with C{discover(reactor,
   servers)} returning a L{NatBehaviour}; C{python -m
   beam.p2p.nat.stunclient HOST:PORT --json} runs it from a shell (or a
   network namespace);
 - L{beam.p2p.nat.stunserver}: C{StunServer}, the binding server public
   nodes run, with RFC 5780's alternate address when given two IPs.

This module only holds the result type, so importing it stays cheap.
"""

from __future__ import annotations

from typing import Literal, Optional

import attrs

__all__ = ["Filtering", "Mapping", "NatBehaviour", "Strategy"]

#: How a NAT maps an inside address to outside ones (RFC 4787 section
#: 4.1): C{"none"} means the server saw our own address (no translation);
#: C{"dependent"} means "address- or port-dependent, not told apart" (from
#: two plain STUN servers, without RFC 5780).
Mapping = Literal[
    "none",
    "endpoint-independent",
    "address-dependent",
    "address-and-port-dependent",
    "dependent",
    "unknown",
]

#: Which outside endpoints may send to a mapping (RFC 4787 section 5);
#: a firewall without NAT filters too.
Filtering = Literal["endpoint-independent", "address-dependent", "address-and-port-dependent", "unknown"]

#: How peers should reach us: C{"direct"} (dial our public address),
#: C{"punch"} (hole punching can work: the mapping is stable), C{"relay"}
#: (the mapping changes per destination, or we do not know).
Strategy = Literal["direct", "punch", "relay"]


@attrs.frozen
class NatBehaviour:
    """
    What STUN learned about the NAT (or firewall) in front of us.

    @ivar mapping: the mapping behaviour.
    @ivar filtering: the filtering behaviour.
    @ivar publicAddr: our address as the (first) server saw it, (IP, port).
    @ivar server: the server whose answers the classification rests on.
    """

    mapping: Mapping
    filtering: Filtering
    publicAddr: Optional[tuple[str, int]]
    server: Optional[tuple[str, int]] = None

    @property
    def strategy(self) -> Strategy:
        """
        The connection strategy the behaviour allows: C{"direct"} when
        there is no translation (or it is endpoint-independent) and
        strangers may send to us; C{"punch"} when the mapping is stable
        but filtered, since a hole punch then opens the filter; C{"relay"}
        when each destination gets its own mapping (a symmetric NAT: the
        port a peer learns is not the one it must dial) or we do not know.
        """
        if self.mapping in ("none", "endpoint-independent"):
            return "direct" if self.filtering == "endpoint-independent" else "punch"
        return "relay"

    def toJSON(self) -> dict[str, object]:
        """
        The behaviour as JSON-ready values, for C{--json} outputs.
        """
        return {
            "mapping": self.mapping,
            "filtering": self.filtering,
            "publicAddr": None if self.publicAddr is None else list(self.publicAddr),
            "server": None if self.server is None else list(self.server),
            "strategy": self.strategy,
        }
