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
