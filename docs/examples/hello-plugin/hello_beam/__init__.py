"""
An example Beam plugin: a service that every node with this package
installed runs (registered in C{twisted/plugins/hello_beam_plugin.py}).

  - the protocol: a peer opens a stream with C{/hello/1.0.0}, writes its
    name and a newline, and reads C{"<greeting>, <name>!\\n"};
  - its status (C{beam status}, C{GET /v1/status} under C{"hello"}):
    the greeting and how many peers were greeted;
  - its control resource, at C{/v1/hello}: C{GET} the status, C{POST
    {"greeting": "..."}} to change the greeting.

It uses only Beam's public seams: the L{IHost} the daemon hands it, a
frozen attrs status value, and L{beam.controlapi.JSONResource}.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.protocol import Protocol

from beam.controlapi import BadRequest, JSONResource, checkUnknown, field, readBody

PROTOCOL = "/hello/1.0.0"
MAX_NAME = 64


@attrs.frozen
class HelloStatus:
    protocol: str
    greeting: str
    greeted: int


class HelloProtocol(Protocol):
    """
    One inbound stream: read a name, answer, close.
    """

    def __init__(self, service: HelloService) -> None:
        self.service = service
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if b"\n" not in self.buffer and len(self.buffer) <= MAX_NAME:
            return
        name = self.buffer.split(b"\n", 1)[0][:MAX_NAME].decode("utf-8", "replace").strip() or "stranger"
        self.service.greeted += 1
        self.transport.write(f"{self.service.greeting}, {name}!\n".encode())
        self.transport.loseConnection()


class HelloResource(JSONResource):
    def __init__(self, service: HelloService) -> None:
        super().__init__()
        self.service = service

    def json_GET(self, request: Any) -> Any:
        return self.service.status()

    def json_POST(self, request: Any) -> Any:
        body = readBody(request)
        checkUnknown(body, {"greeting"})
        greeting = field(body, "greeting", (str,))
        if not greeting.strip() or len(greeting) > MAX_NAME:
            raise BadRequest("the greeting must be 1 to 64 characters")
        self.service.greeting = greeting
        return self.service.status()


class HelloService(Service):
    def __init__(self, host: Any, greeting: str = "hello") -> None:
        self.host = host
        self.greeting = greeting
        self.greeted = 0

    def startService(self) -> None:
        super().startService()
        self.host.setStreamHandler(PROTOCOL, lambda: HelloProtocol(self))

    def stopService(self) -> None:
        super().stopService()
        self.host.removeStreamHandler(PROTOCOL)

    def status(self) -> HelloStatus:
        return HelloStatus(protocol=PROTOCOL, greeting=self.greeting, greeted=self.greeted)

    def controlResource(self) -> HelloResource:
        return HelloResource(self)


def makeService(context: Any) -> HelloService:
    """
    Called by the daemon (the plugin names it): the service, not started.
    """
    return HelloService(context.host)
