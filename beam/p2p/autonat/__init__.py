"""
AutoNAT v2 (libp2p/specs C{autonat/autonat-v2.md}): which of our addresses
can others dial?

 - L{AutoNATServer}: serve C{/libp2p/autonat/2/dial-request} (dial a
   client back, from a separate dialer, within rate limits and the spec's
   amplification protection);
 - L{AutoNATClient}: ask connected servers about the node's candidate
   addresses and record the proven verdicts in its address book
   (C{node.addresses}), which sets the node's reachability.

Both are services to add as children of the node::

    AutoNATServer(node).setServiceParent(node)
    AutoNATClient(node).setServiceParent(node)

The wire format is in L{beam.p2p.autonat.messages}.
"""

from __future__ import annotations

from beam.p2p.autonat.client import AutoNATClient, AutoNATRequestFailed
from beam.p2p.autonat.messages import (
    DIAL_BACK_PROTOCOL,
    DIAL_REQUEST_PROTOCOL,
    AutoNATProtocolError,
    DialStatus,
    ResponseStatus,
)
from beam.p2p.autonat.server import AutoNATServer, NodeDialBacker, RateLimiter

__all__ = [
    "AutoNATClient",
    "AutoNATProtocolError",
    "AutoNATRequestFailed",
    "AutoNATServer",
    "DIAL_BACK_PROTOCOL",
    "DIAL_REQUEST_PROTOCOL",
    "DialStatus",
    "NodeDialBacker",
    "RateLimiter",
    "ResponseStatus",
]
