"""
The tunnels' part of the control socket.

Routes (bodies are JSON objects)::

    GET    /v1/tunnels                 -> {"tunnels": [TunnelStatus...]}
    POST   /v1/tunnels                 -> TunnelStatus  201
           {port, name?, udp?, compress?, allow?: [peer id], secret?: bool | str}
    DELETE /v1/tunnels/<name-or-port>  -> TunnelStatus
    GET    /v1/forwards                -> {"forwards": [ForwardStatus...]}
    POST   /v1/forwards                -> ForwardStatus 201
           {target, port?, bind?, service?, compress?, udp?, tor?}
    DELETE /v1/forwards/<port>         -> ForwardStatus
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any

from twisted.web.resource import IResource

if TYPE_CHECKING:
    # Only annotations: twisted.web.server (~4 MiB) is the control socket's
    # to import, when it serves.
    from twisted.web.server import Request

from beam.controlapi import BadRequest, JSONResource, checkUnknown, childKey, field, portField, readBody
from beam.errors import InvalidPeerID
from beam.identity.keys import PeerID

__all__ = ["ForwardsResource", "TunnelsResource", "forwardArgs", "tunnelArgs"]

CREATED = 201


def tunnelArgs(body: dict[str, Any]) -> dict[str, Any]:
    """
    The arguments of L{TunnelHost.exposePort<beam.tunnel.host.TunnelHost.exposePort>}
    from a C{POST /v1/tunnels} body.

    @raise BadRequest: a field is missing, unknown or malformed.
    """
    checkUnknown(body, {"port", "name", "udp", "compress", "allow", "secret"})
    allow = field(body, "allow", (list,), None)
    peers: list[PeerID] | None = None
    if allow is not None:
        peers = []
        for entry in allow:
            if not isinstance(entry, str):
                raise BadRequest("field 'allow' must be a list of peer IDs")
            try:
                peers.append(PeerID.fromString(entry))
            except InvalidPeerID as e:
                raise BadRequest(f"field 'allow': {e}") from None
    name = field(body, "name", (str,), None)
    if name is not None and not name:
        raise BadRequest("field 'name' must not be empty")
    return {
        "port": portField(body, "port", required=True),
        "name": name,
        "udp": field(body, "udp", (bool,), False),
        "compress": field(body, "compress", (bool,), False),
        "allow": peers,
        "secret": field(body, "secret", (bool, str), False),
    }


def forwardArgs(body: dict[str, Any]) -> dict[str, Any]:
    """
    The arguments of L{Forwards.add<beam.tunnel.forwards.Forwards.add>}
    from a C{POST /v1/forwards} body.

    @raise BadRequest: a field is missing, unknown or malformed.
    """
    checkUnknown(body, {"target", "port", "bind", "service", "compress", "udp", "tor"})
    target = field(body, "target", (str,))
    if not target.strip():
        raise BadRequest("field 'target' must not be empty")
    bind = field(body, "bind", (str,), None)
    if bind is not None:
        try:
            ipaddress.ip_address(bind)
        except ValueError:
            raise BadRequest(f"field 'bind' must be an IP address, not {bind!r}") from None
    args = {
        "target": target,
        "port": portField(body, "port", required=False),
        "bind": bind,
        "service": field(body, "service", (str,), None),
        "compress": field(body, "compress", (bool,), False),
        "udp": field(body, "udp", (bool,), False),
    }
    if field(body, "tor", (bool,), False):
        # Dial the host only at its onion addresses (beam connect --tor);
        # passed only when asked for.
        args["tor"] = True
    return args


class _Item(JSONResource):
    """
    C{DELETE /v1/<collection>/<key>}: calls C{remove(key)}.
    """

    def __init__(self, remove: Any, key: str) -> None:
        super().__init__()
        self._remove = remove
        self.key = key

    def json_DELETE(self, request: Request) -> Any:
        return self._remove(self.key)


class TunnelsResource(JSONResource):
    """
    C{/v1/tunnels} on a L{TunnelHost<beam.tunnel.host.TunnelHost>}.
    """

    def __init__(self, host: Any) -> None:
        super().__init__()
        self.host = host

    def json_GET(self, request: Request) -> Any:
        return {"tunnels": self.host.status()}

    def json_POST(self, request: Request) -> Any:
        status = self.host.exposePort(**tunnelArgs(readBody(request)))
        request.setResponseCode(CREATED)
        return status

    def getChild(self, path: bytes, request: Request) -> IResource:
        key = childKey(path)
        if not key:
            return super().getChild(path, request)
        return _Item(self.host.remove, key)


class ForwardsResource(JSONResource):
    """
    C{/v1/forwards} on a L{Forwards<beam.tunnel.forwards.Forwards>}.
    """

    def __init__(self, forwards: Any) -> None:
        super().__init__()
        self.forwards = forwards

    def json_GET(self, request: Request) -> Any:
        return {"forwards": self.forwards.status()}

    def json_POST(self, request: Request) -> Any:
        d = self.forwards.add(**forwardArgs(readBody(request)))

        def created(status: Any) -> Any:
            request.setResponseCode(CREATED)
            return status

        return d.addCallback(created)

    def getChild(self, path: bytes, request: Request) -> IResource:
        key = childKey(path)
        if not key:
            return super().getChild(path, request)
        return _Item(self.forwards.remove, key)
