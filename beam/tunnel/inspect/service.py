"""
The daemon's C{"requests"} service: the HTTP inspector's store, wired to
the tunnel host, with its status and its control resource (C{/v1/requests}).
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.application.service import Service

from beam.tunnel.inspect.store import InspectorStatus, RequestStore

__all__ = ["InspectorService"]


class InspectorService(Service):
    """
    Owns the L{RequestStore} of captured HTTP exchanges.

    With the inspector disabled the store still exists (empty, C{enabled}
    false, so the API and status can say so) but the tunnel host is given
    none: no byte of any tunnel is looked at.

    @ivar store: the captured exchanges.
    @ivar tunnels: the L{beam.tunnel.host.TunnelHost} whose TCP tunnels
        are inspected (or L{None}).
    """

    name = "requests"  # type: ignore[assignment]

    def __init__(self, store: RequestStore, tunnels: Optional[Any] = None) -> None:
        self.store = store
        self.tunnels = tunnels
        if tunnels is not None:
            tunnels.inspector = store if store.enabled else None

    def status(self) -> InspectorStatus:
        """
        The inspector's counters (status section C{"requests"}).
        """
        return self.store.status()

    def controlResource(self) -> Any:
        """
        C{/v1/requests}: list, show, replay, clear
        (L{beam.tunnel.inspect.resource}, imported when first needed).
        """
        from beam.tunnel.inspect.resource import RequestsResource

        return RequestsResource(self)
