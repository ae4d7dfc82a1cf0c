"""
Who may use an exposed service.

A service is I{public} (anyone who knows the host's peer ID and the
service name), or I{private}: admitted peers are listed by peer ID (which
the secure channel authenticated), and/or holders of a secret from the
share address are admitted.  When both are set, either one admits.
"""

from __future__ import annotations

import hmac
from typing import Iterable, Optional

import attrs

from beam.identity.keys import PeerID
from beam.tunnel.protocol import AccessDenied

__all__ = ["AccessPolicy", "PUBLIC"]


def _peerSet(peers: Optional[Iterable[PeerID]]) -> Optional[frozenset[PeerID]]:
    """
    C{attrs.converters.optional(frozenset)}, with types mypy can follow.
    """
    return None if peers is None else frozenset(peers)


@attrs.frozen
class AccessPolicy:
    """
    An access rule for one service.

    @ivar allow: the peers admitted by identity, or L{None} for no list.
    @ivar secret: the secret that admits its holder, or L{None}.
    """

    allow: Optional[frozenset[PeerID]] = attrs.field(default=None, converter=_peerSet)
    secret: Optional[bytes] = None

    @property
    def isPublic(self) -> bool:
        """
        Anyone is admitted.
        """
        return self.allow is None and not self.secret

    def check(self, peer: PeerID, secret: bytes = b"") -> None:
        """
        Admit C{peer} presenting C{secret}, or refuse.

        The secret is compared in constant time, so that timing does not
        reveal how much of a guess was right.

        @raise AccessDenied: with the reason, worded for the host's log
            only: the client gets the same answer as for a service that
            does not exist (L{beam.tunnel.host}).
        """
        if self.isPublic:
            return
        if self.allow is not None and peer in self.allow:
            return
        if self.secret and secret and hmac.compare_digest(self.secret, secret):
            return
        if self.secret and secret:
            raise AccessDenied("wrong secret")
        if self.allow is not None:
            raise AccessDenied("not on the allow list")
        raise AccessDenied("a secret is required")


#: The policy of a public service.
PUBLIC = AccessPolicy()
