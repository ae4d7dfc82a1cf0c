"""
The share line: what C{beam PORT} tells its user to run on the other side
(issue 12).

The line must work when pasted as it is, so it carries every flag the
other side needs, and nothing in it may be mangled by a shell:

  - C{--udp} for a UDP tunnel: the host refuses a client that asks for
    another kind (L{beam.tunnel.host.TunnelHost._handle}).
  - C{--compress} for a tunnel that allows compression: compression is
    negotiated, but only ever offered by the client, and only when it was
    started with C{--compress} (L{beam.tunnel.client}); without the flag
    the tunnel silently runs uncompressed.
  - C{--tor} when every address in the share address is an onion service
    (a host running Tor C{always}): only a node with Tor can dial it, and
    C{beam connect --tor} is what starts one (docs/tor.md).
  - the service: the share address names it; by name, C{NAME/SERVICE}
    unless the tunnel is the node's only one (a name alone reaches the
    host's first service).
  - the secret stays in the share address's fragment (C{#...}), never in a
    flag; such a tunnel is always shared by address.

Share addresses are shell-quoted when they hold a character a shell
treats specially: C{#} (a glob operator in zsh's C{extendedglob}) and the
brackets of an IPv6 address (a character class in every shell; zsh even
refuses the command when nothing matches).
"""

from __future__ import annotations

import shlex
from typing import Any, Optional

__all__ = ["connectFlags", "connectCommand", "ShareLines", "shareLines"]


def _onlyOnion(share: str) -> bool:
    """
    Whether every address of share address C{share} is an onion service.
    """
    from beam.errors import BeamError
    from beam.tunnel.share import parseShareAddress

    try:
        addrs = parseShareAddress(share).addrs
    except BeamError:
        return False
    return bool(addrs) and all(a.isOnion() for a in addrs)


def connectFlags(tunnel: dict[str, Any]) -> list[str]:
    """
    The C{beam connect} flags the other side of C{tunnel} (the control
    API's JSON for one tunnel: C{kind}, C{compress}, C{share}) needs.
    """
    flags = []
    if tunnel.get("kind") == "udp":
        flags.append("--udp")
    if tunnel.get("compress"):
        flags.append("--compress")
    if _onlyOnion(tunnel["share"]):
        flags.append("--tor")
    return flags


def connectCommand(target: str, flags: list[str]) -> str:
    """
    C{beam connect TARGET FLAGS...}, quoted for any POSIX shell, zsh and
    fish.
    """
    return " ".join(["beam", "connect", shlex.quote(target), *flags])


class ShareLines:
    """
    What C{beam PORT} says once its tunnel is up.

    @ivar byShare: the command with the share address (always works).
    @ivar byName: the command with the node's name, or L{None} when the
        name is not published on other peers or the tunnel has a secret.
    @ivar text: the lines for a person.
    """

    def __init__(self, byShare: str, byName: Optional[str], text: str) -> None:
        self.byShare = byShare
        self.byName = byName
        self.text = text

    @property
    def command(self) -> str:
        """
        The command to run on the other side: by name when there is one.
        """
        return self.byName or self.byShare


def shareLines(tunnel: dict[str, Any], registered: Optional[dict[str, Any]] = None, tunnels: int = 1) -> ShareLines:
    """
    The share line of C{tunnel} (the control API's JSON for one tunnel).

    @param registered: the node's name registration (C{name},
        C{stored_on}), if any: the command is by name when the name is
        stored on other peers, since then it resolves from anywhere.
    @param tunnels: how many tunnels the node exposes: with more than one,
        the name needs the service.
    """
    flags = connectFlags(tunnel)
    byShare = connectCommand(tunnel["share"], flags)
    byName = None
    secret = "#" in tunnel["share"]
    if registered is not None and registered.get("stored_on", 0) > 0 and not secret:
        target = registered["name"] if tunnels == 1 else f"{registered['name']}/{tunnel['name']}"
        byName = connectCommand(target, flags)
    access = "private" if tunnel["private"] else "public"
    text = (
        f"Sharing {tunnel['kind']} {tunnel['target']} as {tunnel['name']!r} ({access}).\n"
        f"On the other side run:\n\n    {byName or byShare}\n\n"
    )
    if byName:
        text += f"(or, without the DHT: {byShare})\n"
    return ShareLines(byShare, byName, text)
