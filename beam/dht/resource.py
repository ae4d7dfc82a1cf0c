"""
The DHT's part of the control socket::

    GET  /v1/kademlia            -> DHTStatus
    GET  /v1/kademlia/routes     -> RoutesStatus
    POST /v1/kademlia/bootstrap  -> {routing_table_size, rounds, queried}
         {addrs?: [multiaddr with /p2p/]}   (empty: saved table and configured peers)

The daemon also serves the last two at their older places,
C{/v1/network/routes} and C{/v1/network/bootstrap}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # Only annotations: twisted.web.server is the control socket's to
    # import, when it first serves (beam.daemon.control.socket).
    from twisted.web.server import Request

from beam.controlapi import BadRequest, JSONResource, checkUnknown, field, readBody
from beam.errors import InvalidMultiaddr
from beam.identity.multiaddr import Multiaddr

__all__ = ["DHTResource"]


class _Routes(JSONResource):
    def __init__(self, dht: Any) -> None:
        super().__init__()
        self.dht = dht

    def json_GET(self, request: Request) -> Any:
        return self.dht.routes()


class _Bootstrap(JSONResource):
    def __init__(self, dht: Any, defaults: Any) -> None:
        super().__init__()
        self.dht = dht
        self.defaults = defaults

    def json_POST(self, request: Request) -> Any:
        body = readBody(request)
        checkUnknown(body, {"addrs"})
        addrs = field(body, "addrs", (list,), [])
        parsed = []
        for a in addrs:
            if not isinstance(a, str):
                raise BadRequest("field 'addrs' must be a list of multiaddrs")
            try:
                ma = Multiaddr.fromString(a)
            except InvalidMultiaddr as e:
                raise BadRequest(f"invalid bootstrap address {a!r}: {e}") from None
            if ma.peerID() is None:
                raise BadRequest(f"bootstrap address {a} must end in /p2p/<peer ID>")
            parsed.append(ma)
        return self.dht.bootstrap(parsed or list(self.defaults()))


class DHTResource(JSONResource):
    """
    C{/v1/kademlia} on a L{KademliaService<beam.dht.service.KademliaService>}.
    """

    def __init__(self, dht: Any) -> None:
        super().__init__()
        self.dht = dht
        self.putChild(b"routes", _Routes(dht))
        self.putChild(b"bootstrap", _Bootstrap(dht, lambda: dht.bootstrapAddrs))

    def json_GET(self, request: Request) -> Any:
        return self.dht.status()
