"""
A twisted.web site served over Beam, and fetched over Beam.

Serve a small site as the Beam service "web" (``beam:service=web``) and
print its share address::

    python docs/examples/beam_web.py serve [--home DIR] [--listen MULTIADDR] [--name NAME]

Fetch a page from it, from another process or machine, either with the
command line::

    beam connect <share address>          # prints: listening on 127.0.0.1:PORT -> ...
    curl http://127.0.0.1:PORT/

or with the client endpoint (``beam:<target>``) and twisted.web's Agent::

    python docs/examples/beam_web.py fetch <share address | NAME/web> [--home DIR]

The page greets the visitor by the peer ID its connection reports
(``request.getClientAddress()`` is the transport's ``getPeer()``, a
``BeamAddress``).  ``serve`` and ``fetch`` run their own nodes, each in its
``--home`` (by default two different directories under /tmp), so both can
run on one machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings

from twisted.internet.defer import ensureDeferred
from twisted.internet.endpoints import clientFromString, quoteStringArgument, serverFromString
from twisted.internet.task import react
from twisted.web.resource import Resource
from twisted.web.server import Site


class Hello(Resource):
    """
    One page, saying who asked.
    """

    isLeaf = True

    def render_GET(self, request):
        visitor = request.getClientAddress()  # a BeamAddress
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return f"Hello {visitor.peerID} over Beam service {visitor.service!r}!\n".encode()


def option(key: str, value: str | None) -> str:
    return f":{key}={quoteStringArgument(value)}" if value else ""


async def serve(reactor, args) -> None:
    description = "beam:service=web" + option("home", args.home) + option("listen", args.listen) \
        + option("name", args.name)
    port = await serverFromString(reactor, description).listen(Site(Hello()))
    print(f"serving {port.getHost()}", flush=True)
    print(f"share: {port.shareAddress}", flush=True)
    print(f"fetch with: beam connect {port.shareAddress}  (then curl the port it prints)", flush=True)
    await ensureDeferred(_forever())


async def _forever() -> None:
    from twisted.internet.defer import Deferred

    await Deferred()


async def fetch(reactor, args) -> None:
    from twisted.web.client import Agent, readBody
    from zope.interface import implementer
    from twisted.web.iweb import IAgentEndpointFactory

    endpoint = clientFromString(
        reactor, "beam:" + quoteStringArgument(args.target) + option("home", args.home)
        + option("listen", args.listen)
    )

    @implementer(IAgentEndpointFactory)
    class OverBeam:
        def endpointForURI(self, uri):
            return endpoint  # every URL goes to the Beam service

    # Twisted warns about readBody's transport for TCP connections too.
    warnings.filterwarnings("ignore", "Using readBody", DeprecationWarning)
    agent = Agent.usingEndpointFactory(reactor, OverBeam())
    response = await agent.request(b"GET", b"http://beam/" + args.path.lstrip("/").encode())
    body = await readBody(response)
    sys.stdout.write(body.decode())
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="serve the site as Beam service 'web'")
    s.add_argument("--home", default=tempfile.gettempdir() + "/beam-example-serve")
    s.add_argument("--listen", help="multiaddr to listen on (default: from the home, else all interfaces)")
    s.add_argument("--name", help="register this name in the DHT (needs bootstrap peers in the home's config)")
    f = sub.add_parser("fetch", help="fetch a page from a Beam 'web' service")
    f.add_argument("target", help="a share address, /.../p2p/PEER/web, or NAME/web")
    f.add_argument("--home", default=tempfile.gettempdir() + "/beam-example-fetch")
    f.add_argument("--listen", default="/ip4/127.0.0.1/tcp/0", help="multiaddr for the fetching node")
    f.add_argument("--path", default="/")
    args = parser.parse_args()
    command = serve if args.command == "serve" else fetch
    react(lambda reactor: ensureDeferred(command(reactor, args)))


if __name__ == "__main__":
    main()
