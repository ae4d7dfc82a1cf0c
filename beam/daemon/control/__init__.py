"""
The local control API: HTTP and JSON over a UNIX socket in the node's home.

  - L{socket<beam.daemon.control.socket>}: L{ControlService}, the 0600
    socket, one node per home;
  - L{resource<beam.daemon.control.resource>}: the daemon's own routes
    (status, shutdown, network) and the tree each service mounts its
    resource in, at C{/v1/<name>};
  - L{client<beam.daemon.control.client>}: L{ControlClient}, what the
    command line talks to a running node with.

The services' routes are theirs: L{beam.tunnel.resource} (C{/v1/tunnels},
C{/v1/forwards}), L{beam.names.resource} (C{/v1/names}),
L{beam.dht.resource} (C{/v1/kademlia}).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from beam._lazy import lazyExports

if TYPE_CHECKING:
    from beam.daemon.control.client import MAX_RESPONSE, ControlClient, ControlError
    from beam.daemon.control.socket import (
        CONTROL_SOCKET,
        ControlService,
        ControlSocketError,
        NodeAlreadyRunning,
        NoNodeRunning,
        controlSocketPath,
        nodeRunning,
    )

#: Where each name lives.  They are loaded on first use (PEP 562): a tunnel
#: command that only checks C{nodeRunning} does not load the HTTP client
#: (C{twisted.web.client}), which it needs only to talk to a running node.
_LAZY = {
    "MAX_RESPONSE": "client",
    "ControlClient": "client",
    "ControlError": "client",
    "CONTROL_SOCKET": "socket",
    "ControlService": "socket",
    "ControlSocketError": "socket",
    "NodeAlreadyRunning": "socket",
    "NoNodeRunning": "socket",
    "controlSocketPath": "socket",
    "nodeRunning": "socket",
}


__getattr__, __dir__ = lazyExports(__name__, {name: "." + module for name, module in _LAZY.items()})


__all__ = [
    "CONTROL_SOCKET",
    "MAX_RESPONSE",
    "ControlClient",
    "ControlError",
    "ControlService",
    "ControlSocketError",
    "NoNodeRunning",
    "NodeAlreadyRunning",
    "controlSocketPath",
    "nodeRunning",
]
