"""
The daemon's own routes on the control socket, and the tree the services'
resources are mounted in.

Every service mounts its resource at C{/v1/<name>} (see
L{beam.daemon.plugins}); the daemon itself answers::

    GET  /v1/status            -> the node's status, then each service's under its name
    POST /v1/shutdown          -> {"stopping": true}
    GET  /v1/network/status    -> peer ID, addresses, connection count, names, DHT figures
    GET  /v1/network/peers     -> {"peers": [ConnectionStatus...]}

and keeps three URLs from before services had their own places:
C{/v1/network/routes} and C{/v1/network/bootstrap} (now under
C{/v1/kademlia/}) and C{GET /v1/resolve/<name>} (now C{GET /v1/names/<name>}).

Failures answer C{{"error": "..."}}: 400 for malformed JSON or fields and
for any other L{BeamError<beam.errors.BeamError>}, 404 for unknown routes
and L{NotFound<beam.errors.NotFound>}, 405 for a known route with the wrong
method, 409 for L{Conflict<beam.errors.Conflict>}, 413 for oversized
bodies, and 500 (with the traceback logged, never sent) for bugs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    # Only annotations: twisted.web.server is the control socket's to
    # import, when it first serves (beam.daemon.control.socket).
    from twisted.web.server import Request

from beam.controlapi import Alias, JSONResource
from beam.daemon.status import networkJSON, statusJSON

__all__ = ["ControlRoot", "StatusResource"]


class _Get(JSONResource):
    def __init__(self, answer: Callable[[], Any]) -> None:
        super().__init__()
        self.answer = answer

    def json_GET(self, request: Request) -> Any:
        return self.answer()


class _Post(JSONResource):
    def __init__(self, answer: Callable[[], Any]) -> None:
        super().__init__()
        self.answer = answer

    def json_POST(self, request: Request) -> Any:
        return self.answer()


class StatusResource(JSONResource):
    """
    C{GET /v1/<name>} for a service that reports a status but offers no
    resource of its own: its status (a tuple of values as C{{name: [...]}}).
    """

    def __init__(self, name: str, status: Callable[[], Any]) -> None:
        super().__init__()
        self.name = name
        self.status = status

    def json_GET(self, request: Request) -> Any:
        value = self.status()
        return {self.name: value} if isinstance(value, (tuple, list)) else value


class ControlRoot(JSONResource):
    """
    The root of the control socket's tree, for one daemon.

    @ivar v1: C{/v1}, where L{mount} puts the services' resources.
    """

    def __init__(self, daemon: Any) -> None:
        super().__init__()
        self.v1 = v1 = JSONResource()
        self.putChild(b"v1", v1)
        v1.putChild(b"status", _Get(lambda: statusJSON(daemon.status())))
        v1.putChild(b"shutdown", _Post(daemon.shutdown))
        network = JSONResource()
        v1.putChild(b"network", network)
        network.putChild(b"status", _Get(lambda: networkJSON(daemon.status())))
        network.putChild(b"peers", _Get(lambda: {"peers": daemon.status().node.connections}))
        network.putChild(b"routes", Alias(v1, [b"kademlia", b"routes"]))
        network.putChild(b"bootstrap", Alias(v1, [b"kademlia", b"bootstrap"]))
        v1.putChild(b"resolve", Alias(v1, [b"names"], methods=["GET"]))

    def mount(self, name: str, resource: Any) -> None:
        """
        Serve C{resource} at C{/v1/<name>}.
        """
        self.v1.putChild(name.encode("ascii"), resource)
