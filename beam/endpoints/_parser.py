"""
The C{beam:} endpoint string parsers, found by Twisted through the plugin
in C{twisted/plugins/beam_endpoints.py}.

Server::

    beam:service=NAME[:home=DIR][:listen=MA[,MA...]][:bootstrap=MA[,MA...]]
         [:name=NAME][:allow=PEER[,PEER...]][:secret=TEXT][:compress=yes]
    beam:NAME[:...]                 (the service as the positional argument)

Client::

    beam:NAME/SERVICE[:home=DIR][:listen=...][:bootstrap=...][:secret=TEXT]
         [:compress=yes][:timeout=SECONDS][:service=SERVICE]
    beam:beam\\://PEER@HOST\\:PORT/SERVICE[#SECRET][:...]
    beam:/ip4/HOST/tcp/PORT/p2p/PEER/SERVICE[:...]

As everywhere in Twisted's endpoint syntax, a colon inside a value is
escaped with a backslash (L{twisted.internet.endpoints.quoteStringArgument}
does it), and a repeated keyword keeps only its last value, which is why
lists are comma-separated.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.interfaces import (
    IReactorCore,
    IStreamClientEndpoint,
    IStreamClientEndpointStringParserWithReactor,
    IStreamServerEndpoint,
    IStreamServerEndpointStringParser,
)
from twisted.plugin import IPlugin
from zope.interface import implementer

__all__ = ["BeamClientParser", "BeamServerParser"]

SERVER_OPTIONS = ("service", "home", "listen", "bootstrap", "name", "allow", "secret", "compress")
CLIENT_OPTIONS = ("service", "home", "listen", "bootstrap", "secret", "compress", "timeout")


def _checkKeywords(kind: str, kwargs: dict[str, object], known: tuple[str, ...]) -> None:
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        raise ValueError(
            f"beam: {kind} endpoint: unknown option(s) {', '.join(unknown)} "
            f"(known: {', '.join(known)})"
        )


@implementer(IPlugin, IStreamServerEndpointStringParser)
class BeamServerParser:
    """
    Parses C{beam:service=NAME...} into a L{BeamServerEndpoint}.
    """

    prefix = "beam"

    def parseStreamServer(self, reactor: IReactorCore, *args: object, **kwargs: object) -> IStreamServerEndpoint:
        """
        @raise ValueError: the description is not valid.
        """
        from beam.endpoints._endpoints import BeamServerEndpoint

        _checkKeywords("server", kwargs, SERVER_OPTIONS)
        if len(args) > 1:
            raise ValueError(
                "beam: server endpoint takes one positional argument, the service "
                "(escape a colon inside a value with a backslash)"
            )
        service = kwargs.pop("service", None)
        if args:
            if service is not None:
                raise ValueError("beam: server endpoint: give the service once, not both positionally and as service=")
            service = args[0]
        if not service:
            raise ValueError("beam: server endpoint needs a service name: beam:service=NAME")
        return BeamServerEndpoint(reactor, cast(str, service), **cast(dict[str, Any], kwargs))


@implementer(IPlugin, IStreamClientEndpointStringParserWithReactor)
class BeamClientParser:
    """
    Parses C{beam:TARGET...} into a L{BeamClientEndpoint}.
    """

    prefix = "beam"

    def parseStreamClient(self, reactor: IReactorCore, *args: object, **kwargs: object) -> IStreamClientEndpoint:
        """
        @raise ValueError: the description is not valid.
        """
        from beam.endpoints._endpoints import BeamClientEndpoint

        _checkKeywords("client", kwargs, CLIENT_OPTIONS)
        if len(args) != 1:
            raise ValueError(
                "beam: client endpoint takes one target: NAME/SERVICE, an escaped share address "
                "(beam\\://PEER@HOST\\:PORT/SERVICE) or /.../p2p/PEER/SERVICE"
                + (" (escape a colon inside a value with a backslash)" if len(args) > 1 else "")
            )
        return BeamClientEndpoint(reactor, cast(str, args[0]), **cast(dict[str, Any], kwargs))
