"""
The errors a C{beam:} endpoint reports.

Parsers raise plain L{ValueError} (Twisted's rule: before any I/O).
C{listen()} and C{connect()} fail with L{beam.errors.BeamError}
subclasses whose text is written for a user; the ones a caller is most
likely to trap are re-exported here:

  - L{ServiceNotFound}: the host exposes no service of that name;
  - L{AccessDenied}: the service is private and we are not admitted;
  - L{ServiceUnavailable}: the host's service did not accept the connection;
  - L{TunnelRefused}: the base of those three (any refusal by the host);
  - L{HostUnreachable}: the host could not be reached (no address, dial
    failed, no answer in time, connection lost before its answer);
  - L{ServiceExists}: C{listen()} for a service name this node already
    exposes;
  - L{beam.names.service.NameNotFound}: a name did not resolve.
"""

from __future__ import annotations

from beam.errors import BeamError
from beam.tunnel import HostUnreachable, ServiceExists
from beam.tunnel.protocol import AccessDenied, ServiceNotFound, ServiceUnavailable, TunnelRefused

__all__ = [
    "AccessDenied",
    "HomeInUse",
    "HostUnreachable",
    "NodeOptionsConflict",
    "OwnService",
    "ServiceExists",
    "ServiceNotFound",
    "ServiceUnavailable",
    "TunnelRefused",
]


class HomeInUse(BeamError):
    """
    Another Beam node (a beam daemon, or another program's endpoints) already runs for this home directory.
    """


class NodeOptionsConflict(BeamError):
    """
    This process already runs a node for that home directory, with other options.
    """


class OwnService(BeamError):
    """
    That service is served by this process's own node: connect to it directly, or use another home for the client.
    """
