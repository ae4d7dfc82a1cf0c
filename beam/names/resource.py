"""
The name service's part of the control socket::

    GET    /v1/names         -> {"names": [NameStatus...]}   (ours)
    POST   /v1/names         -> NameStatus 201   {name, services?: [service]}
    GET    /v1/names/<name>  -> NameResolution   (?accept_new_key=1 to accept a changed key)
    DELETE /v1/names/<name>  -> NameStatus       (withdrawn)

The daemon also serves the lookup at its older place, C{/v1/resolve/<name>}.
A resolution says which step answered (C{"source"}: cache, mdns, gossip or
dht) and lists every step tried with its time and outcome::

    "steps": [{"step": "pin", "ms": 0.1, "outcome": "miss"},
              {"step": "cache", "ms": 0.0, "outcome": "miss"},
              {"step": "mdns", "ms": 12.1, "outcome": "hit"}]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.web.resource import IResource
if TYPE_CHECKING:
    # Only annotations: twisted.web.server is the control socket's to
    # import, when it first serves (beam.daemon.control.socket).
    from twisted.web.server import Request

from beam.controlapi import BadRequest, JSONResource, checkUnknown, childKey, field, queryFlag, readBody

__all__ = ["NamesResource"]


class _Name(JSONResource):
    def __init__(self, names: Any, name: str) -> None:
        super().__init__()
        self.names = names
        self.name = name

    def json_GET(self, request: Request) -> Any:
        return self.names.resolve(self.name, queryFlag(request, b"accept_new_key"))

    def json_DELETE(self, request: Request) -> Any:
        return self.names.withdraw(self.name)


class NamesResource(JSONResource):
    """
    C{/v1/names} on a L{NameService<beam.names.service.NameService>}.
    """

    def __init__(self, names: Any) -> None:
        super().__init__()
        self.names = names

    def json_GET(self, request: Request) -> Any:
        return {"names": self.names.status()}

    def json_POST(self, request: Request) -> Any:
        body = readBody(request)
        checkUnknown(body, {"name", "services"})
        name = field(body, "name", (str,))
        services = field(body, "services", (list,), [])
        if not all(isinstance(s, str) for s in services):
            raise BadRequest("field 'services' must be a list of service names")

        def created(status: Any) -> Any:
            request.setResponseCode(201)
            return status

        return self.names.register(name, services).addCallback(created)

    def getChild(self, path: bytes, request: Request) -> IResource:
        key = childKey(path)
        if not key:
            return super().getChild(path, request)
        return _Name(self.names, key)
